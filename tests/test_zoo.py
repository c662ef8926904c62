"""Every shipped model config builds and runs a forward pass of the right shape, and gives
the sample-output checksum it gave before the models declared their knobs."""

from __future__ import annotations

import pytest
import torch

import modelfactory as mf
from modelfactory._app import job
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

# The `modelfactory` checksum of every shipped model at its default knobs, computed before
# the model files declared their knobs: interpolation must resolve to the very same tree.
CHECKSUMS = {
    "centered": "c159fddaed04ad3b9531a1b9614f613f8fea989fdc327387c0cb7b9bf68a509b",
    "chimera": "194f7f2d0d7931b1a8171cfd0024f031f990d9c58932b895a4213e0c8add18cb",
    "dense": "e1c52511543a7f456853ace5a7b07784f53f38049cce3eaff5b8bac7f43134b1",
    "fixed_hidden_mlp": "e9d6b6f80c46d6d95b07c73aed01de958425eb33fc4aa309d1f89a1afb875f8a",
    "gpt2": "37fb1443f733cddf6191f5e42b8c86b2a5e8a58b1d264dcf9a8cfa3db0dd6472",
    "gpt_small": "9865dcd5111d5b66016c5df80d00c7320ff28d84ed43bb81cbcb799e3e00adbb",
    "lazy_mlp": "350c5a9435752d6019b6a9df1f6a6f96eab43382d4c657461298477c6fc5c558",
    "mlp": "350c5a9435752d6019b6a9df1f6a6f96eab43382d4c657461298477c6fc5c558",
    "mlp_named": "d2a4b2dfe975664a745f875b57f62704d6790ce0af1978bd3066e6dc52a2a4b4",
    "my_sequential": "98392d387f9f766dc3858eb590b9175f8ee283c1e04684ae0c39aca0b7de0309",
    "nest_mlp": "408d32bb7a7bf3686026390b06be0dd18257f46f0f6027e1286b598238ee1ccb",
    "parallel": "eaa246b89fcbe37a4d52dbc023cdb58bdf51f84130c6aa0c96e660aa66e7e12a",
    "resnet": "6a0c2636e5aa8df5b883b0645aad2246b011d3dc821babb781b2a309312a9143",
    "rgnet": "4ea7276ee0ea9883be3ed676379bbf1072a4a6d6b1989151721ca5edd7920c88",
    "shared_mlp": "b94feb64d148b5402b81544940e1bf0ae85bf8c61f8e3cb323fb354529526504",
    "stack": "3cb3f239f234eaee092681775c38feed7d42175063673e23bdeb44e2ffa7f80d",
}


def test_every_model_config_has_an_expected_shape():
    assert sorted(EXPECTED) == model_names() == sorted(CHECKSUMS)


@pytest.mark.parametrize("name", model_names())
def test_model_config_builds_and_runs(name, composed):
    cfg = composed([f"model={name}"])
    model = mf.build(cfg)
    _x, out = job.sample_output(model, mf.config_of(model))  # eval mode: before the train run
    assert job.checksum(out)["sha256"] == CHECKSUMS[name]
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
    cfg = composed(["model=stack", f"block={block}", "n=3"])
    model = mf.build(cfg)
    assert len(model) == 3 and model[0] is not model[1]
    assert model(sample_input(normalize(cfg), torch.device("cpu"))).shape == shape


def test_gpt2_config_is_gpt2_sized(composed):
    model = mf.build(composed(["model=gpt2"]), device="meta")
    assert 124_000_000 < sum(p.numel() for p in model.parameters()) < 125_000_000
    assert model.embed.tok.weight is model.head.weight
