"""``mf.plan``: its numbers against a real build, a real forward pass and a real save."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import modelfactory as mf
from modelfactory._config import normalize
from modelfactory._sample import sample_input
from modelfactory.configs import compose
from modelfactory.planning import flop_counter

GPT = ["model=gpt_small", "vocab_size=37", "d_model=24", "d_ff=40", "max_len=16", "n_layer=2"]
CONFIGS = {
    "gpt": GPT,
    "gpt_bf16": [*GPT, "device.dtype=bfloat16"],
    "mlp": ["model=mlp", "input_shape=[3,20]"],
    "lazy": ["model=lazy_mlp"],
    "resnet": [
        "model=resnet",
        "width1=4",
        "width2=6",
        "depth1=1",
        "depth2=1",
        "input_shape=[1,3,8,8]",
    ],
    "shared": ["model=shared_mlp"],
}


def unique(tensors: Any) -> list[torch.Tensor]:
    return list({id(t): t for t in tensors}.values())


def nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """What autograd saves for the backward pass in a real forward, parameters left out."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())


@pytest.fixture(scope="module")
def gpt() -> Any:
    return compose(GPT)


@pytest.fixture(scope="module", params=list(CONFIGS))
def planned(request: pytest.FixtureRequest) -> tuple[str, Any, mf.Plan, torch.nn.Module]:
    cfg = compose(CONFIGS[request.param])
    return request.param, cfg, mf.plan(cfg), mf.build(cfg)


def test_parameters_and_bytes_equal_a_real_build(planned: tuple) -> None:
    """Each parameter once (the tied head, the shared layer), in the config's dtype."""
    name, _, plan, model = planned
    params, buffers = unique(model.parameters()), unique(model.buffers())
    assert plan.params == sum(p.numel() for p in params)
    assert plan.param_bytes == nbytes(params)
    assert (plan.buffers, plan.buffer_bytes) == (sum(b.numel() for b in buffers), nbytes(buffers))
    assert plan.dtype == ("bfloat16" if name == "gpt_bf16" else "float32")
    assert plan.device_bytes == {"cpu": plan.param_bytes + plan.buffer_bytes}
    if name.startswith("gpt"):
        every_name = model.named_parameters(remove_duplicate=False)
        assert plan.params < sum(p.numel() for _, p in every_name)


def test_flops_equal_flop_counter_mode_on_a_real_forward(planned: tuple) -> None:
    _, cfg, plan, model = planned
    x = sample_input(normalize(cfg), torch.device("cpu"))
    with flop_counter() as counter:
        out = model(x)
        forward = counter.get_total_flops()
        out.sum().backward()
    assert (plan.flops, plan.train_flops) == (forward, counter.get_total_flops())
    assert plan.flops > 0 and plan.train_flops > 2 * plan.flops
    model.zero_grad(set_to_none=True)
    real = saved_bytes(model, x)
    if plan.dtype == "float32":
        assert plan.activation_bytes == real
    else:  # torch's meta LayerNorm keeps float32 statistics, its CPU kernel bfloat16 ones
        assert 0 < plan.activation_bytes - real < 0.02 * real


def test_without_attention_the_count_is_torch_s_own() -> None:
    """``flop_counter`` only adds the CPU flash attention kernel torch has no formula for."""
    cfg = compose(CONFIGS["mlp"])
    model = mf.build(cfg)
    with FlopCounterMode(display=False) as counter:
        model(sample_input(normalize(cfg), torch.device("cpu")))
    assert mf.plan(cfg).flops == counter.get_total_flops()


def test_bytes_per_device_follow_device_map(gpt: Any) -> None:
    cfg = compose([*GPT, "+device.map={blocks: meta}"])
    plan = mf.plan(cfg)
    model = mf.build(gpt)
    blocks = nbytes(unique(model.blocks.parameters()))
    assert plan.device_bytes == {"cpu": plan.param_bytes - blocks, "meta": blocks}


def test_a_plan_for_devices_this_machine_lacks() -> None:
    """A plan is made before building, maybe on another machine: ``cuda:1`` on a laptop."""
    plan = mf.plan(compose([*GPT, "device=cuda", "+device.map={blocks: cuda:1}"]))
    assert set(plan.device_bytes) == {"cuda", "cuda:1"}
    with pytest.raises(mf.DeviceError, match=r"device.map.blocks: unknown device 'cdua:1'"):
        mf.plan(compose([*GPT, "+device.map={blocks: cdua:1}"]))


def test_files_are_a_real_save_s(tmp_path: Any, gpt: Any) -> None:
    cfg = gpt
    plan = mf.plan(cfg, max_shard_size="10KB")
    index = mf.save(mf.build(cfg), tmp_path, max_shard_size="10KB")
    weight_map = json.loads(index.read_text())["weight_map"]
    stored = mf.load_tensors(tmp_path)
    per_file: dict[str, int] = {}
    for key, file in weight_map.items():
        per_file[file] = per_file.get(file, 0) + stored[key].nbytes
    assert plan.files == sorted(per_file.items())
    assert mf.plan(cfg, max_shard_size="1GB").files == [("model.safetensors", plan.param_bytes)]


def test_table_and_what_is_not_known(gpt: Any) -> None:
    text = str(mf.plan(gpt, world_size=4, max_shard_size="10KB"))
    for row in ("parameters", "forward FLOPs at 2x16", "activations saved", "per rank of 4"):
        assert row in text
    assert "model-00001-of-" in text
    fixed = {"_target_": "modelfactory.layers.FixedHiddenMLP"}
    values = mf.plan({"model": fixed, "input_shape": [2, 20]})  # its forward reads values
    assert values.flops is None and "does not run on meta" in values.notes[0]
    bare = mf.plan({"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2})
    assert (bare.params, bare.flops) == (8, None) and "no input_shape" in bare.notes[0]


def test_bad_arguments_are_config_errors(gpt: Any) -> None:
    with pytest.raises(mf.ConfigError, match="world_size: expected a positive integer"):
        mf.plan(gpt, world_size=0)
    with pytest.raises(mf.ConfigError, match="max_shard_size"):
        mf.plan(gpt, max_shard_size="lots")
