"""Checkpoints give back what was saved: every shipped config bit for bit (ties as identity,
lazy layers eager, buffers, modes), the file alone, deterministic bytes, load's dtype and
device, a fresh process that loads without the heavy imports, what save refuses because it
could not come back, partial reuse (load_weights), tensor containers (save_tensors,
load_tensors) and verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import modelfactory as mf
from modelfactory._config import normalize
from modelfactory.configs import model_names
from modelfactory.errors import (
    CheckpointError,
    UntrustedTargetError,
)

from .checkpoint_helpers import assert_same, build_model, header_of, rewrite_doc, sample_of
from .conftest import RELU, lin, seq

# gpt2 (124M parameters) only in float32, and marked slow (about 5 s): deselect with -m "not slow"
ROUND_TRIPS = [
    pytest.param(n, dt, marks=[pytest.mark.slow] if n == "gpt2" else [])
    for dt in ("float32", "bfloat16")
    for n in model_names()
    if not (n == "gpt2" and dt == "bfloat16")
]


@pytest.mark.parametrize(("name", "dtype"), ROUND_TRIPS)
def test_round_trip_every_shipped_config(name: str, dtype: str, tmp_path: Path) -> None:
    model = build_model(name, dtype=dtype)
    file = mf.save(model, tmp_path / "ckpt")
    assert file == tmp_path / "ckpt" / "model.safetensors"
    assert (tmp_path / "ckpt" / "config.yaml").is_file()
    restored = mf.load(tmp_path / "ckpt")
    assert_same(model, restored)
    assert mf.config_of(restored)["model"] == mf.config_of(model)["model"]


def test_ties_come_back_as_identity(tmp_path: Path) -> None:
    shared = build_model("shared_mlp")
    mf.save(shared, tmp_path / "s")
    back = mf.load(tmp_path / "s")
    assert back[2] is back[4]
    gpt = build_model("gpt_small")
    mf.save(gpt, tmp_path / "g")
    back = mf.load(tmp_path / "g")
    assert back.embed.tok.weight is back.head.weight
    # stored once: the file has no second copy of the tied tensors
    stored = safetensors.torch.load_file(tmp_path / "g" / "model.safetensors")
    assert "head.weight" not in stored and "embed.tok.weight" in stored
    assert "4.weight" not in safetensors.torch.load_file(tmp_path / "s" / "model.safetensors")


def test_lazy_layers_come_back_eager_without_a_dry_run(tmp_path: Path) -> None:
    model = build_model("lazy_mlp")
    mf.save(model, tmp_path / "c")
    cfg = json.loads(header_of(tmp_path / "c" / "model.safetensors")["modelfactory"])["config"]
    cfg["input_shape"] = [2, 999]  # would break a dry run: the stored shapes must win
    rewrite_doc(tmp_path / "c" / "model.safetensors", config=cfg)
    back = mf.load(tmp_path / "c" / "model.safetensors")
    assert type(back[0]) is nn.Linear and back[0].in_features == 20
    assert_same(model, back)


def test_unmaterialized_lazy_model_is_refused(tmp_path: Path) -> None:
    model = mf.build({"model": seq({"_target_": "torch.nn.LazyLinear", "out_features": 3})})
    with pytest.raises(CheckpointError, match="input_shape"):
        mf.save(model, tmp_path / "lazy")
    assert not (tmp_path / "lazy" / "model.safetensors").exists()


def test_fixed_hidden_buffer_and_modes_restored(tmp_path: Path) -> None:
    model = build_model("fixed_hidden_mlp")
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
    model = build_model("rgnet")
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
    model = build_model("mlp")
    mf.save(model, tmp_path / "m")
    back = mf.load(tmp_path / "m", device="auto", dtype="bfloat16")
    assert back[0].weight.dtype == torch.bfloat16 and back[0].weight.device.type in ("cpu", "cuda")
    assert mf.config_of(back)["device"]["dtype"] == "bfloat16"


def test_restored_model_trains(tmp_path: Path) -> None:
    model = build_model("gpt_small")
    mf.save(model, tmp_path / "g")
    back = mf.load(tmp_path / "g")
    before = back.head.weight.detach().clone()
    back(sample_of(back)).sum().backward()
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
    a, b = build_model("gpt_small"), build_model("gpt_small")
    mf.save(a, tmp_path / "a")
    mf.save(b, tmp_path / "b")
    for name in ("model.safetensors", "config.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


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
    mf.save(build_model("gpt_small", seed=1), tmp_path / "g")
    model = build_model("gpt_small")
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


def test_load_dtype_must_be_floating(saved: Path) -> None:
    with pytest.raises(CheckpointError, match=r"model\.safetensors: load\(dtype='long'\)"):
        mf.load(saved, dtype="long")


def test_save_mismatch_names_the_live_model_and_the_config_right_way_round(tmp_path) -> None:
    model = mf.build({"model": seq(lin(20, 256), RELU, lin(256, 10)), "input_shape": [2, 20]})
    model[2] = nn.Linear(256, 5)
    with pytest.raises(CheckpointError) as e:
        mf.save(model, tmp_path / "c")
    assert "shape: '2.weight' is [5, 256] in the model, [10, 256] in its config" in str(e.value)


LOAD_IN_FRESH_PROCESS = """
import sys, json
import modelfactory as mf
model = mf.load(sys.argv[1])
heavy = ["torch._dynamo", "sympy", "hydra", "omegaconf", "yaml"]  # yaml: only for a changed copy
print(json.dumps({"loaded": [m for m in heavy if m in sys.modules],
                  "tied": model.head.weight is model.embed.tok.weight}))
"""


def test_a_fresh_load_imports_neither_dynamo_sympy_hydra_omegaconf_nor_yaml(tmp_path: Path) -> None:
    cfg = {
        "model": {
            "_target_": "modelfactory.blocks.Sequential",
            "layers": {
                "embed": {
                    "_target_": "modelfactory.layers.TokenPositionEmbedding",
                    "vocab_size": 16,
                    "d_model": 8,
                    "max_len": 8,
                },
                "head": lin(8, 16, bias=False),
            },
        },
        "tie": {"groups": [["embed.tok.weight", "head.weight"]]},
        "input_shape": [1, 4],
        "input_dtype": "long",
    }
    mf.save(mf.build(cfg), tmp_path / "ckpt")
    out = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(out.stdout) == {"loaded": [], "tied": True}
