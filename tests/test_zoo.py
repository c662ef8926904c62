"""Every shipped model config builds and runs a forward pass of the right shape."""

from __future__ import annotations

import pytest
import torch

import modelfactory as mf
from modelfactory._config import normalize
from modelfactory._sample import sample_input
from modelfactory.configs import model_names

EXPECTED = {
    "centered": (4, 128),
    "chimera": (),
    "dense": (2, 1),
    "fixed_hidden_mlp": (),
    "gpt2": (1, 16, 50257),
    "gpt_small": (2, 16, 256),
    "lazy_mlp": (2, 10),
    "mlp": (2, 10),
    "mlp_named": (2, 10),
    "my_sequential": (2, 10),
    "nest_mlp": (2, 16),
    "parallel": (2, 10),
    "resnet": (2, 10),
    "rgnet": (1, 1),
    "shared_mlp": (2, 1),
    "stack": (2, 64),
}


def test_every_model_config_has_an_expected_shape():
    assert sorted(EXPECTED) == model_names()


@pytest.mark.parametrize("name", model_names())
def test_model_config_builds_and_runs(name, composed):
    cfg = composed([f"model={name}"])
    model = mf.build(cfg)
    x = sample_input(normalize(cfg), torch.device("cpu"))
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == EXPECTED[name]
    assert torch.isfinite(y).all()
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(
    "block,shape",
    [("linear_relu", (2, 64)), ("conv_bn_relu", (2, 16, 8, 8)), ("d2l_block1", (1, 4))],
)
def test_stack_takes_its_block_from_the_block_group(block, shape, composed):
    cfg = composed(["model=stack", f"block={block}", "model.n=3"])
    model = mf.build(cfg)
    assert len(model) == 3 and model[0] is not model[1]
    assert model(sample_input(normalize(cfg), torch.device("cpu"))).shape == shape


def test_gpt2_config_is_gpt2_sized(composed):
    model = mf.build(composed(["model=gpt2"]), device="meta")
    assert 124_000_000 < sum(p.numel() for p in model.parameters()) < 125_000_000
    assert model.embed.tok.weight is model.head.weight
