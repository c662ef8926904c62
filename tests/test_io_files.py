"""Checkpoint files: untrusted targets, bad and corrupt files, reads racing a save, writes
that cannot be done, temporary files of killed writers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import modelfactory as mf
from modelfactory.checkpoint import _atomic
from modelfactory.checkpoint import _format as _safefile
from modelfactory.errors import CheckpointError, UntrustedTargetError

from .checkpoint_helpers import assert_same, build_model, header_of, rewrite_doc
from .conftest import RELU, lin, seq

# --- safety ------------------------------------------------------------------------------


def _malicious(tmp_path: Path, config: dict[str, Any]) -> Path:
    """A checkpoint of an mlp whose embedded config was replaced."""
    mf.save(build_model("mlp"), tmp_path / "evil")
    file = tmp_path / "evil" / "model.safetensors"
    rewrite_doc(file, config=config)
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


def test_a_factory_function_restores_only_under_a_trusted_prefix(tmp_path: Path) -> None:
    target = {"_target_": "tests.io_targets.make_linear", "features": 4}
    model = mf.build({"model": target, "input_shape": [2, 4]})
    file = mf.save(model, tmp_path / "f")
    with pytest.raises(UntrustedTargetError, match=r"'tests\.io_targets\.make_linear' is not"):
        mf.load(file)  # by default only nn.Module classes under torch.nn and modelfactory
    loaded = mf.load(file, trusted=["tests.io_targets.*"])  # trusted: the function is called
    assert type(loaded) is nn.Linear
    assert_same(model, loaded)


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
    doc = json.loads(header_of(saved)["modelfactory"])
    doc["format_version"] = 99
    tensors = safetensors.torch.load_file(saved)
    safetensors.torch.save_file(tensors, saved, metadata={"modelfactory": json.dumps(doc)})
    with pytest.raises(CheckpointError, match="format version 99 is newer"):
        mf.load(saved)


def test_mismatches_reported_together(saved: Path) -> None:
    doc = json.loads(header_of(saved)["modelfactory"])
    cfg = doc["config"]
    cfg["model"]["layers"][2]["out_features"] = 11
    cfg["model"]["layers"].append(lin(11, 3))
    rewrite_doc(saved, drop=("0.bias",), config=cfg)
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
    doc = json.loads(header_of(saved)["modelfactory"])
    doc["config"]["device"]["dtype"] = "float64"
    rewrite_doc(saved, config=doc["config"])
    with pytest.raises(CheckpointError, match=r"dtype: '0\.weight' is float32 in the file"):
        mf.load(saved)


def test_config_copy_disagreement_warns_and_embedded_wins(saved: Path) -> None:
    copy = saved.with_name("config.yaml")
    copy.write_text(copy.read_text().replace("out_features: 10", "out_features: 12"))
    with pytest.warns(UserWarning, match="config.yaml differs"):
        back = mf.load(saved.parent)
    assert back[2].out_features == 10


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

    def replaced_every_time(f: Path, *args: Any) -> dict[str, torch.Tensor]:
        os.link(file, new_file.with_name("spare.safetensors"))  # a new inode each time
        os.replace(new_file, file)
        os.replace(new_file.with_name("spare.safetensors"), new_file)
        return original(f, *args)

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
        mf.save(build_model("mlp"), path)
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
    mf.save(build_model("mlp"), ckpt)
    assert {k for k, tmp in tmps.items() if tmp.exists()} == {
        (live, "old"),
        (live, "new"),
        (dead, "new"),
    }
