"""Every shipped model config builds and runs a forward pass of the right shape, with the
parameters (names, dtypes, shapes, bytes) pinned at its default knobs and seed, and the
structure it promises (ResNet-18's stages downsample in their first block)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory._config import normalize
from modelfactory._sample import sample_input
from modelfactory.configs import compose, model_names

EXPECTED = {
    "bert": (2, 16, 64),
    "centered": (4, 128),
    "chimera": (),
    "dense": (2, 1),
    "fixed_hidden_mlp": (),
    "gpt2": (1, 16, 50257),
    "gpt_small": (2, 16, 256),
    "lazy_mlp": (2, 10),
    "llama": (2, 16, 256),
    "mlp": (2, 10),
    "mlp_named": (2, 10),
    "my_sequential": (2, 10),
    "nest_mlp": (2, 16),
    "parallel": (2, 10),
    "resnet": (2, 10),
    "resnet18": (1, 1000),
    "rgnet": (1, 1),
    "shared_mlp": (2, 1),
    "stack": (2, 64),
    "vit": (2, 10),
}

# A digest of every shipped model's parameters (names, dtypes, shapes, bytes) at its default
# knobs and seed: the config must keep building the very same tree with the same init. (The
# sample output's checksum is not pinned: float kernels differ between CPUs, AVX2 or AVX-512.)
CHECKSUMS = {
    "bert": "39df864577c75ea53c30c516cc52e436505b558a07b79e7f7e7e7fe00ae46990",
    "centered": "2ff2208fd6f00ea1203c38444f932185c8de56fe476db69170c9d17c5cf444ef",
    "chimera": "c6f11a2912d9238e8cd113131caadec8d667823a6c1c1356ec5cf1bf1b886048",
    "dense": "08e534130cda02a2b3dd6fb7dbd6933db5cd04c90fdc62b8126dce77f558d542",
    "fixed_hidden_mlp": "d610c8c06012c9c156beb99ff1921cd35e44efae13514935e76c2ce6cbe27e60",
    "gpt2": "5f9d829206596e527c8c054084e77ca99d26c6b2575363771d0c3bfd9f292e2b",
    "gpt_small": "97bf2c8ba67fc15e731e3c8d6b7ea06d1db2e0743685abd67fbc850ebbba47a3",
    "lazy_mlp": "3a6b42e55dd94dd789c5ce62e50b83ed0b536084757463cb2c4a11190f62d994",
    "llama": "2130e455080c396f0fc0312fa9a8c617b5cd9b75c818628a0463936780934483",
    "mlp": "3a6b42e55dd94dd789c5ce62e50b83ed0b536084757463cb2c4a11190f62d994",
    "mlp_named": "d707bbbd31cf9e6a15eea12c459addfbe62dbd88702682b04f6ae7d109501034",
    "my_sequential": "08e52fa5476b1839e90e93210a382b6be6feb721da5cfcd1730b94114139f6bc",
    "nest_mlp": "9aac56d3f1e37f15a024044e8400f3d8e4a57a9a07587fd7c5612ad58aecc2c1",
    "parallel": "d589082287763498aeb5a1a158471f588440d56b12525b3573976b536005b287",
    "resnet": "ee50f534762b7e1ce83957317c3c029cef19a4cca2defec1e01d087b9a3ba713",
    "resnet18": "e08bc6ed01aa45dacd3f3b1d981d211a7c1a7f9bae28e8de27695be77c0fd970",
    "rgnet": "0760208c7be85c10ac3ddab0e1af93a8daf5a73231d05564095d9f4905cf8789",
    "shared_mlp": "3fde1ae3e379f6cb934b2ff614a5f916ecc35e959b0a4fb9a7f6c4fa13691f83",
    "stack": "536e9a970557b0c2a062d3201527de5574a50da36bdedb1a0627f7310b4bfb52",
    "vit": "f1b435607ba300b9182471e6c00f2fc31d4bd31e6050e7ae2e163b1b6d18aedf",
}


def parameter_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        h.update(f"{key}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_every_model_config_has_an_expected_shape():
    assert sorted(EXPECTED) == model_names() == sorted(CHECKSUMS)


@pytest.mark.parametrize("name", model_names())
def test_model_config_builds_and_runs(name, composed):
    cfg = composed([f"model={name}"])
    model = mf.build(cfg)
    assert parameter_digest(model) == CHECKSUMS[name]
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


# The public sizes docs/zoo.md and the README give, with their parameter counts.
PUBLIC_SIZES = {
    "model=llama vocab_size=128256 d_model=4096 n_layer=32 n_head=32 n_kv_head=8 d_ff=14336"
    " max_len=8192 rope_theta=500000 norm_eps=1e-5": 8_030_261_248,  # Llama-3-8B
    "model=bert vocab_size=30522 d_model=768 n_layer=12 n_head=12 max_len=512": 108_891_648,
    "model=vit image_size=224 patch_size=16 d_model=768 n_layer=12 n_head=12"
    " num_classes=1000": 86_567_656,  # ViT-B/16
}


DOCS = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("overrides", sorted(PUBLIC_SIZES))
def test_public_sizes_have_their_parameter_counts(overrides, composed):
    model = mf.build(composed(overrides.split()), device="meta")
    count = PUBLIC_SIZES[overrides]
    assert sum(p.numel() for p in model.parameters()) == count
    zoo, readme = (DOCS / "docs" / "zoo.md").read_text(), (DOCS / "README.md").read_text()
    assert overrides in zoo and f"{count:,}" in zoo
    assert overrides.split(" ", 1)[1] in readme and f"{count:,}" in readme


def test_resnet18_stages_downsample_in_their_first_block() -> None:
    model = mf.build(compose(["model=resnet18"]), device="meta")
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert [model.stages[s][0].downsample is None for s in range(4)] == [True, False, False, False]
    assert all(model.stages[s][1].downsample is None for s in range(4))
