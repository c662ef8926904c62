"""Devices, dtypes and device maps (no GPU here: CUDA availability is faked where needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory import device as devices
from modelfactory.errors import ConfigError, DeviceError

from .conftest import RELU, lin, seq


@pytest.fixture
def two_fake_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_falls_back_to_cpu_here(composed):
    if torch.cuda.is_available():
        pytest.fail("this test expects a machine without a GPU")
    m = mf.build(composed(["model=mlp", "device=auto"]))
    assert {p.device.type for p in m.parameters()} == {"cpu"}
    assert devices.resolve_device("auto:3") == torch.device("cpu")
    assert devices.try_all_gpus() == [torch.device("cpu")]


def test_missing_cuda_device_is_a_clear_error(composed):
    with pytest.raises(
        ConfigError,
        match=r"device\.device: device 'cuda:10' does not exist here .*available: cpu, meta",
    ):
        mf.build(composed(["model=mlp", "device.device=cuda:10"]))
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        devices.resolve_device("gpu")


def test_fake_gpus_resolve(two_fake_gpus):
    assert devices.resolve_device("auto") == torch.device("cuda:0")
    assert devices.resolve_device("auto:1") == torch.device("cuda:1")
    assert devices.resolve_device("auto:2") == torch.device("cpu")
    assert devices.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match="available: cpu, meta, cuda:0, cuda:1"):
        devices.resolve_device("cuda:2")
    assert devices.try_all_gpus() == [torch.device("cuda:0"), torch.device("cuda:1")]


def test_bfloat16_model(composed):
    m = mf.build(composed(["model=gpt_small", "device=bf16"]))
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert m(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32  # restored after the build


def test_meta_device_builds_a_skeleton(composed):
    m = mf.build(composed(["model=gpt2"]), device="meta")
    assert {p.device.type for p in m.parameters()} == {"meta"}


def test_device_map_places_blocks_and_moves_activations():
    cfg = {
        "model": seq(lin(4, 8), RELU, lin(8, 2)),
        "device": {"device": "cpu", "dtype": "float32", "map": {"2": "meta"}},
    }
    m = mf.build(cfg)
    assert m[0].weight.device.type == "cpu" and m[2].weight.device.type == "meta"
    y = m(torch.rand(3, 4))  # the activation crosses to meta at block 2
    assert y.device.type == "meta" and y.shape == (3, 2)


def test_device_map_keeps_per_block_values():
    plain = mf.build({"model": seq(lin(4, 8), RELU, lin(8, 2))})
    mapped = mf.build(
        {
            "model": seq(lin(4, 8), RELU, lin(8, 2)),
            "device": {"device": "meta", "map": {"0": "cpu"}},
        }
    )
    assert torch.equal(plain[0].weight, mapped[0].weight) and mapped[2].weight.is_meta


def test_balanced_map_spreads_repeated_blocks_over_gpus(two_fake_gpus, composed):
    skeleton = mf.build(composed(["model=gpt_small", "n_layer=4"]), device="meta")
    plan = devices.balanced_map(skeleton, devices.try_all_gpus())
    cuda0, cuda1 = torch.device("cuda:0"), torch.device("cuda:1")
    assert plan[""] == cuda0
    assert [plan[f"blocks.{i}"] for i in range(4)] == [cuda0, cuda0, cuda1, cuda1]
    assert plan["ln_f"] == cuda1 and plan["head"] == cuda1
    assert devices.device_for("blocks.3.attn.body.mha", plan) == cuda1
    assert devices.device_for("embed.tok", plan) == cuda0


def test_balanced_without_gpus_is_all_cpu(composed):
    m = mf.build(composed(["model=gpt_small", "device=balanced"]))
    assert {p.device.type for p in m.parameters()} == {"cpu"}


def test_bad_dtype_and_map_are_config_errors():
    with pytest.raises(ConfigError) as e:
        mf.build({"model": lin(2, 2), "device": {"device": "cpu", "dtype": "float13", "map": 3}})
    assert e.value.paths == ["device.dtype", "device.map"]


def test_hooks_move_tensors_only_when_needed():
    m = nn.Sequential(nn.Linear(2, 2))
    handles = devices.place_hooks(m, {"0": torch.device("cpu")})
    x = torch.rand(1, 2)
    assert m(x).device.type == "cpu" and len(handles) == 1


def test_device_map_with_an_unknown_prefix_names_it():
    with pytest.raises(DeviceError, match=r"device\.map\.nope: 'nope' names no module"):
        mf.build({"model": seq(lin(2, 2)), "device": {"device": "cpu", "map": {"nope": "cpu"}}})


def test_a_missing_device_is_a_device_error(composed):
    with pytest.raises(DeviceError):
        mf.build(composed(["model=mlp", "device.device=cuda:3"]))
