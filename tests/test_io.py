"""Persistence: save/load round trips, ties, safety, bad files, partial reuse, tensors, verify."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import modelfactory as mf
from modelfactory._config import normalize
from modelfactory._sample import sample_input
from modelfactory.checkpoint import _atomic
from modelfactory.checkpoint import _format as _safefile
from modelfactory.configs import compose, model_names
from modelfactory.errors import CheckpointError, UntrustedTargetError

from .conftest import RELU, lin, seq


def _sample(model: nn.Module) -> torch.Tensor:
    bc = normalize(mf.config_of(model))
    x = sample_input(bc, torch.device("cpu"))
    if x.is_floating_point():
        x = x.to(next(model.parameters()).dtype)
    return x


def assert_same(a: nn.Module, b: nn.Module) -> None:
    """Same classes, tensors (bit for bit, same dtype), modes and outputs."""
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k
    assert [m.training for m in a.modules()] == [m.training for m in b.modules()]
    x = _sample(a)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.dtype == yb.dtype
    assert torch.equal(ya, yb)


def _build(name: str, **kw: Any) -> nn.Module:
    return mf.build(compose([f"model={name}"]), **kw)


# gpt2 (124M parameters) only in float32, and marked slow (about 5 s): deselect with -m "not slow"
ROUND_TRIPS = [
    pytest.param(n, dt, marks=[pytest.mark.slow] if n == "gpt2" else [])
    for dt in ("float32", "bfloat16")
    for n in model_names()
    if not (n == "gpt2" and dt == "bfloat16")
]


@pytest.mark.parametrize(("name", "dtype"), ROUND_TRIPS)
def test_round_trip_every_shipped_config(name: str, dtype: str, tmp_path: Path) -> None:
    model = _build(name, dtype=dtype)
    file = mf.save(model, tmp_path / "ckpt")
    assert file == tmp_path / "ckpt" / "model.safetensors"
    assert (tmp_path / "ckpt" / "config.yaml").is_file()
    restored = mf.load(tmp_path / "ckpt")
    assert_same(model, restored)
    assert mf.config_of(restored)["model"] == mf.config_of(model)["model"]


def test_ties_come_back_as_identity(tmp_path: Path) -> None:
    shared = _build("shared_mlp")
    mf.save(shared, tmp_path / "s")
    back = mf.load(tmp_path / "s")
    assert back[2] is back[4]
    gpt = _build("gpt_small")
    mf.save(gpt, tmp_path / "g")
    back = mf.load(tmp_path / "g")
    assert back.embed.tok.weight is back.head.weight
    # stored once: the file has no second copy of the tied tensors
    stored = safetensors.torch.load_file(tmp_path / "g" / "model.safetensors")
    assert "head.weight" not in stored and "embed.tok.weight" in stored
    assert "4.weight" not in safetensors.torch.load_file(tmp_path / "s" / "model.safetensors")


def test_lazy_layers_come_back_eager_without_a_dry_run(tmp_path: Path) -> None:
    model = _build("lazy_mlp")
    mf.save(model, tmp_path / "c")
    cfg = json.loads(_header(tmp_path / "c" / "model.safetensors")["modelfactory"])["config"]
    cfg["input_shape"] = [2, 999]  # would break a dry run: the stored shapes must win
    _rewrite(tmp_path / "c" / "model.safetensors", config=cfg)
    back = mf.load(tmp_path / "c" / "model.safetensors")
    assert type(back[0]) is nn.Linear and back[0].in_features == 20
    assert_same(model, back)


def test_unmaterialized_lazy_model_is_refused(tmp_path: Path) -> None:
    model = mf.build({"model": seq({"_target_": "torch.nn.LazyLinear", "out_features": 3})})
    with pytest.raises(CheckpointError, match="input_shape"):
        mf.save(model, tmp_path / "lazy")
    assert not (tmp_path / "lazy" / "model.safetensors").exists()


def test_fixed_hidden_buffer_and_modes_restored(tmp_path: Path) -> None:
    model = _build("fixed_hidden_mlp")
    model.linear.eval()
    mf.save(model, tmp_path / "f")
    back = mf.load(tmp_path / "f")
    assert torch.equal(back.rand_weight, model.rand_weight)
    assert back.training and not back.linear.training
    assert_same(model, back)


def test_non_persistent_buffer_restored(tmp_path: Path) -> None:
    cfg = {"model": seq({"_target_": "tests.io_targets.MaskedLinear"}), "input_shape": [2, 4]}
    model = mf.build(cfg)
    assert "0.mask" not in model.state_dict()
    mf.save(model, tmp_path / "m")
    with pytest.raises(UntrustedTargetError):
        mf.load(tmp_path / "m")
    back = mf.load(tmp_path / "m", trusted=["tests.io_targets.*"])
    assert torch.equal(back[0].mask, model[0].mask)
    assert_same(model, back)


def test_file_alone_restores_and_is_plain_safetensors(tmp_path: Path) -> None:
    model = _build("rgnet")
    file = mf.save(model, tmp_path / "rgnet.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["rgnet.safetensors"]
    plain = safetensors.torch.load_file(file)
    padding = {k for k in plain if k.startswith("__modelfactory_pad__.")}
    assert set(plain) - padding == set(model.state_dict())
    assert_same(model, mf.load(file))


def test_tensors_are_aligned_so_unaligned_kernels_cannot_differ(tmp_path: Path) -> None:
    # a batch-1 Linear runs gemv, which rounds differently on unaligned weights
    model = mf.build({"model": lin(5, 5), "seed": 1, "input_shape": [1, 5]})
    mf.save(model, tmp_path / "l")
    back = mf.load(tmp_path / "l")
    assert all(t.data_ptr() % 64 == 0 for t in back.state_dict().values())
    assert_same(model, back)


def test_dtype_and_device_arguments(tmp_path: Path) -> None:
    model = _build("mlp")
    mf.save(model, tmp_path / "m")
    back = mf.load(tmp_path / "m", device="auto", dtype="bfloat16")
    assert back[0].weight.dtype == torch.bfloat16 and back[0].weight.device.type in ("cpu", "cuda")
    assert mf.config_of(back)["device"]["dtype"] == "bfloat16"


def test_restored_model_trains(tmp_path: Path) -> None:
    model = _build("gpt_small")
    mf.save(model, tmp_path / "g")
    back = mf.load(tmp_path / "g")
    before = back.head.weight.detach().clone()
    back(_sample(back)).sum().backward()
    torch.optim.SGD(back.parameters(), lr=0.1).step()
    assert not torch.equal(before, back.head.weight)
    # the file is untouched (copy-on-write mapping)
    assert_same(model, mf.load(tmp_path / "g"))


def test_model_not_built_by_modelfactory_needs_cfg(tmp_path: Path) -> None:
    plain = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))
    with pytest.raises(CheckpointError, match="cfg="):
        mf.save(plain, tmp_path / "p")
    cfg = {
        "model": {"_target_": "torch.nn.Sequential", "_args_": [lin(20, 256), RELU, lin(256, 10)]}
    }
    mf.save(plain, tmp_path / "p", cfg={**cfg, "input_shape": [2, 20]})
    assert_same(plain_with(plain, cfg), mf.load(tmp_path / "p"))
    with pytest.raises(CheckpointError, match="no longer matches"):
        mf.save(plain, tmp_path / "q", cfg={"model": seq(lin(20, 256), RELU, lin(256, 9))})


def plain_with(model: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    from modelfactory._record import BuildRecord, attach

    return attach(model, BuildRecord(normalize({**cfg, "input_shape": [2, 20]}).resolved))


def test_save_is_deterministic(tmp_path: Path) -> None:
    a, b = _build("gpt_small"), _build("gpt_small")
    mf.save(a, tmp_path / "a")
    mf.save(b, tmp_path / "b")
    for name in ("model.safetensors", "config.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# --- safety ------------------------------------------------------------------------------


def _malicious(tmp_path: Path, config: dict[str, Any]) -> Path:
    """A checkpoint of an mlp whose embedded config was replaced."""
    mf.save(_build("mlp"), tmp_path / "evil")
    file = tmp_path / "evil" / "model.safetensors"
    _rewrite(file, config=config)
    return file


@pytest.mark.parametrize(
    "where",
    ["model", "nested", "raw", "init"],
)
def test_untrusted_target_is_never_called(where: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    model: dict[str, Any] = {
        "model": evil,
        "nested": seq(lin(20, 256), {"_target_": "torch.nn.Sequential", "_args_": [evil]}),
        "raw": {**seq(lin(20, 256)), "_recursive_": False, "extra": [{"x": evil}]},
        "init": seq(lin(20, 256)),
    }[where]
    init = {"rules": [{"params": "*", "fn": evil}]} if where == "init" else {"rules": []}
    file = _malicious(tmp_path, {"model": model, "init": init, "input_shape": [2, 20]})
    with pytest.raises(UntrustedTargetError, match=r"os\.system") as info:
        mf.load(file)
    assert str(file) in str(info.value) and "_target_" in str(info.value)
    assert not marker.exists()
    # trusting the prefix is not enough: the target must be an nn.Module class
    with pytest.raises(UntrustedTargetError, match=r"not an nn\.Module class|not under"):
        mf.load(file, trusted=["os.*"])
    assert not marker.exists()


def test_trusted_prefix_loads_only_module_classes(tmp_path: Path) -> None:
    file = _malicious(
        tmp_path,
        {"model": {"_target_": "tests.io_targets.make_linear", "features": 4}},
    )
    with pytest.raises(UntrustedTargetError, match=r"not an nn\.Module class"):
        mf.load(file, trusted=["tests.io_targets.*"])


@pytest.mark.parametrize(
    "target",
    [
        "torch.nn.modules.module.torch.save",
        "modelfactory.checkpoint.write.save_tensors",
        "builtins.eval",
    ],
)
def test_targets_reached_through_attributes_are_refused(target: str, tmp_path: Path) -> None:
    file = _malicious(tmp_path, {"model": {"_target_": target, "_args_": ["x"]}})
    with pytest.raises(UntrustedTargetError):
        mf.load(file)


def test_interpolations_are_refused(tmp_path: Path) -> None:
    file = _malicious(tmp_path, {"model": {**lin(20, 256), "out_features": "${oc.env:HOME}"}})
    with pytest.raises(CheckpointError, match="interpolation"):
        mf.load(file)


# --- bad files ---------------------------------------------------------------------------


def _header(file: Path) -> dict[str, Any]:
    data = file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])["__metadata__"]


def _rewrite(file: Path, drop: tuple[str, ...] = (), **doc_changes: Any) -> None:
    """Rewrite a checkpoint with a changed document (digests recomputed)."""
    doc = json.loads(_header(file)["modelfactory"])
    tensors = {k: v.clone() for k, v in _safefile.read_tensors(file).items() if k not in drop}
    keep = {k: v for k, v in doc.items() if k not in ("format_version", "tensors", "digest")}
    _safefile.write(file, tensors, {**keep, **doc_changes})
    file.with_name("config.yaml").unlink(missing_ok=True)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    mf.save(_build("mlp"), tmp_path / "m")
    return tmp_path / "m" / "model.safetensors"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint") as info:
        mf.load(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


@pytest.mark.parametrize("cut", [4, 100, -1000, -1])
def test_truncated_file(saved: Path, cut: int) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as info:
        mf.load(saved)
    assert str(saved) in str(info.value)


def test_flipped_header_bytes_are_caught(saved: Path) -> None:
    data = saved.read_bytes()
    n = int.from_bytes(data[:8], "little")
    original = mf.load(saved)
    for i in range(0, 8 + n, 7):
        bad = bytearray(data)
        bad[i] ^= 0x01
        saved.write_bytes(bytes(bad))
        try:
            back = mf.load(saved)
        except CheckpointError as e:
            assert str(saved) in str(e), i
        else:  # only the name of a padding entry changed: the model is intact
            assert_same(original, back)
    saved.write_bytes(data)
    assert_same(original, mf.load(saved))


def test_not_a_modelfactory_file(tmp_path: Path) -> None:
    file = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a modelfactory checkpoint"):
        mf.load(file)
    assert torch.equal(mf.load_tensors(file)["w"], torch.ones(2))


def test_newer_format_version(saved: Path) -> None:
    doc = json.loads(_header(saved)["modelfactory"])
    doc["format_version"] = 99
    tensors = safetensors.torch.load_file(saved)
    safetensors.torch.save_file(tensors, saved, metadata={"modelfactory": json.dumps(doc)})
    with pytest.raises(CheckpointError, match="format version 99 is newer"):
        mf.load(saved)


def test_mismatches_reported_together(saved: Path) -> None:
    doc = json.loads(_header(saved)["modelfactory"])
    cfg = doc["config"]
    cfg["model"]["layers"][2]["out_features"] = 11
    cfg["model"]["layers"].append(lin(11, 3))
    _rewrite(saved, drop=("0.bias",), config=cfg)
    with pytest.raises(CheckpointError) as info:
        mf.load(saved)
    msg = str(info.value)
    assert str(saved) in msg
    for part in (
        "missing: '0.bias'",
        "missing: '3.weight'",
        "shape: '2.weight'",
        "shape: '2.bias'",
    ):
        assert part in msg
    with pytest.warns(UserWarning, match="loading what fits"):
        back = mf.load(saved, strict=False)
    assert back[2].out_features == 11 and back[0].bias.device.type == "cpu"


def test_dtype_mismatch_is_reported(saved: Path) -> None:
    doc = json.loads(_header(saved)["modelfactory"])
    doc["config"]["device"]["dtype"] = "float64"
    _rewrite(saved, config=doc["config"])
    with pytest.raises(CheckpointError, match=r"dtype: '0\.weight' is float32 in the file"):
        mf.load(saved)


def test_config_copy_disagreement_warns_and_embedded_wins(saved: Path) -> None:
    copy = saved.with_name("config.yaml")
    copy.write_text(copy.read_text().replace("out_features: 10", "out_features: 12"))
    with pytest.warns(UserWarning, match="config.yaml differs"):
        back = mf.load(saved.parent)
    assert back[2].out_features == 10


# --- partial reuse, tensors, verify ------------------------------------------------------


def test_load_weights_reuses_first_layers(saved: Path) -> None:
    old = mf.load(saved)
    new = mf.build(
        {"model": seq(encoder=lin(20, 256), act=RELU, out=lin(256, 3)), "input_shape": [2, 20]},
        seed=7,
    )
    out_before = new.out.weight.detach().clone()
    mf.load_weights(new, saved, prefix_map={"0.": "encoder."})
    assert torch.equal(new.encoder.weight, old[0].weight)
    assert torch.equal(new.encoder.bias, old[0].bias)
    assert torch.equal(new.out.weight, out_before)
    with pytest.raises(CheckpointError, match=r"shape: 'out\.weight'"):
        mf.load_weights(new, saved, prefix_map={"2.": "out."})
    with pytest.raises(CheckpointError, match="unexpected"):
        mf.load_weights(new, saved)


def test_load_weights_full_model_keeps_ties(tmp_path: Path) -> None:
    mf.save(_build("gpt_small", seed=1), tmp_path / "g")
    model = _build("gpt_small")
    mf.load_weights(model, tmp_path / "g")
    assert model.embed.tok.weight is model.head.weight
    assert_same(model, mf.load(tmp_path / "g"))


@pytest.mark.parametrize(
    "obj",
    [
        torch.arange(4.0),
        [torch.arange(3), torch.ones(2, 2, dtype=torch.bfloat16)],
        (torch.zeros(0), torch.tensor(1.5)),
        {"weight": torch.randn(3, 2).t(), "b": torch.ones(1)},
    ],
)
def test_save_tensors_round_trip(obj: Any, tmp_path: Path) -> None:
    mf.save_tensors(obj, tmp_path / "x.safetensors")
    back = mf.load_tensors(tmp_path / "x.safetensors")
    assert type(back) is type(obj)
    items, got = _entries(obj), _entries(back)
    assert [k for k, _ in items] == [k for k, _ in got]
    for (_, a), (_, b) in zip(items, got, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def _entries(obj: Any) -> list[tuple[Any, torch.Tensor]]:
    if isinstance(obj, dict):
        return list(obj.items())
    return [(None, obj)] if isinstance(obj, torch.Tensor) else list(enumerate(obj))


def test_save_tensors_shared_and_bad_input(tmp_path: Path) -> None:
    x = torch.arange(6.0)
    mf.save_tensors([x, x], tmp_path / "x.safetensors")
    a, b = mf.load_tensors(tmp_path / "x.safetensors")
    assert a is b and torch.equal(a, x)
    with pytest.raises(CheckpointError, match="expected a tensor"):
        mf.save_tensors(3, tmp_path / "y.safetensors")
    with pytest.raises(CheckpointError, match="every entry"):
        mf.save_tensors({"a": 1}, tmp_path / "y.safetensors")


def test_verify_names_the_corrupt_tensor(saved: Path) -> None:
    ok = mf.verify(saved.parent)
    assert ok.tensors == 4 and ok.file == saved
    data = bytearray(saved.read_bytes())
    n = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8 : 8 + n])["2.weight"]["data_offsets"]
    data[8 + n + (start + end) // 2] ^= 0x10
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"'2\.weight'") as info:
        mf.verify(saved)
    assert str(saved) in str(info.value)


def test_no_warnings_on_a_clean_round_trip(saved: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mf.load(saved.parent)


# --- reads that race a save, writes that cannot be done ---------------------------------


def _two_saves(tmp_path: Path) -> tuple[Path, Path, nn.Module]:
    """``ckpt.safetensors`` (seed 0) and, beside it, a save of the same architecture with
    seed 1 ready to be renamed over it: the configs differ only in their seed."""
    cfg = {"model": seq(lin(4, 8), RELU, lin(8, 2)), "input_shape": [1, 4]}
    file = mf.save(mf.build(cfg, seed=0), tmp_path / "ckpt.safetensors")
    new = mf.build(cfg, seed=1)
    return file, mf.save(new, tmp_path / "new.safetensors"), new


# reader -> the function it calls second, after reading the document
READERS = {
    "load": "read_tensors",
    "load_weights": "read_tensors",
    "load_tensors": "read_tensors",
    "verify": "first_bad_tensor",
}


def _assert_reads_as(reader: str, file: Path, new: nn.Module) -> None:
    """``reader`` sees ``new``, document and tensors alike."""
    if reader == "load":
        back = mf.load(file)
        assert mf.config_of(back)["seed"] == 1
        assert_same(new, back)
    elif reader == "load_weights":
        back = mf.load_weights(mf.build(mf.config_of(new), seed=5), file)
        assert_same(new, back)
    elif reader == "load_tensors":
        back = mf.load_tensors(file)
        assert back.keys() == new.state_dict().keys()
        assert all(torch.equal(t, new.state_dict()[k]) for k, t in back.items())
    else:
        assert mf.verify(file).tensors == 4


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_save_landing_between_two_reads_is_never_mixed(
    reader: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document is read, then the file is replaced, then the tensors are read: the result
    must be the new checkpoint entirely (never the old config with the new weights)."""
    file, new_file, new = _two_saves(tmp_path)
    second_read = READERS[reader]
    original = getattr(_safefile, second_read)
    calls = []

    def replaced_first(*args: Any) -> Any:
        if not calls:
            os.replace(new_file, file)
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(_safefile, second_read, replaced_first)
    _assert_reads_as(reader, file, new)
    assert len(calls) == 2  # the mixed read was noticed and done again


def test_a_file_that_keeps_changing_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file, new_file, _ = _two_saves(tmp_path)
    original = _safefile.read_tensors

    def replaced_every_time(f: Path) -> dict[str, torch.Tensor]:
        os.link(file, new_file.with_name("spare.safetensors"))  # a new inode each time
        os.replace(new_file, file)
        os.replace(new_file.with_name("spare.safetensors"), new_file)
        return original(f)

    monkeypatch.setattr(_safefile, "read_tensors", replaced_every_time)
    with pytest.raises(CheckpointError, match="changed while being read"):
        mf.load(file)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"z": torch.ones(2, dtype=torch.complex128)}, "complex128"),
        ({"f8": torch.zeros(2).to(torch.float8_e4m3fnuz)}, "float8_e4m3fnuz"),
        ({"__modelfactory_pad__.1": torch.ones(2)}, "reserved"),
        ({"a": (x := torch.ones(2)), "__modelfactory_pad__.1": x}, "reserved"),
    ],
    ids=["complex128", "float8_e4m3fnuz", "pad name", "pad alias"],
)
def test_save_tensors_refuses_what_it_cannot_store(obj: dict, match: str, tmp_path: Path) -> None:
    file = tmp_path / "x.safetensors"
    with pytest.raises(CheckpointError, match=rf"(?s)x\.safetensors.*{match}"):
        mf.save_tensors(obj, file)
    assert not list(tmp_path.iterdir())


def test_save_to_an_existing_file_that_is_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.bin"
    path.write_text("keep me")
    with pytest.raises(CheckpointError, match=r"ckpt\.bin: exists and is not a directory"):
        mf.save(_build("mlp"), path)
    assert path.read_text() == "keep me"


def test_load_dtype_must_be_floating(saved: Path) -> None:
    with pytest.raises(CheckpointError, match=r"model\.safetensors: load\(dtype='long'\)"):
        mf.load(saved, dtype="long")


def test_config_that_is_not_plain_data_is_refused_at_save(tmp_path: Path) -> None:
    model = mf.build({"model": lin(2, 3, dtype=torch.float64), "input_shape": [1, 2]})
    with pytest.raises(CheckpointError, match=r"(?s)plain YAML/JSON.*model\.dtype.*torch\.dtype"):
        mf.save(model, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_save_removes_only_old_temporary_files_of_dead_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pid that is not alive here may be a live writer on another host sharing the
    directory: its temporary file goes only once it is also old."""
    live, dead = 1000, 2000
    monkeypatch.setattr(_atomic, "_alive", lambda pid: pid == live)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    old = os.path.getmtime(ckpt) - _atomic.ORPHAN_AGE_S - 60
    tmps = {
        (pid, age): ckpt / f".model.safetensors.{pid}-{age}0000000.tmp"
        for pid in (live, dead)
        for age in ("old", "new")
    }
    for (_, age), tmp in tmps.items():
        tmp.write_bytes(b"partial")
        if age == "old":
            os.utime(tmp, (old, old))
    mf.save(_build("mlp"), ckpt)
    assert {k for k, tmp in tmps.items() if tmp.exists()} == {
        (live, "old"),
        (live, "new"),
        (dead, "new"),
    }
