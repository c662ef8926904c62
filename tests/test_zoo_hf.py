"""The zoo equals Hugging Face, both ways, through the shipped conversions.

For each of ``llama``, ``bert``, ``vit`` and ``resnet18``: a tiny random reference saved with
``save_pretrained`` loads into the zoo model (composed with knob overrides to the same sizes)
with ``mf.load_weights(convert=)``; a random zoo model saved with ``mf.save(convert=)`` loads
with ``from_pretrained``. Outputs agree within 1e-5 (BERT's on a padded batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory.configs import compose


@dataclass(frozen=True)
class Case:
    hf_class: str
    hf_config: tuple[str, dict[str, Any]]  # config class, its arguments
    overrides: str  # the zoo model at the same sizes (knob overrides, space-separated)
    inputs: Callable[[], tuple[tuple, dict]]  # args, keyword inputs (the same for both)
    hf_output: Callable[[Any], torch.Tensor]
    hf_kwargs: dict[str, Any] = field(default_factory=dict)  # for the class's constructor


def _ids(vocab: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randint(1, vocab, shape, generator=torch.Generator().manual_seed(3))


def _pixels(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(3))


def _bert_inputs() -> tuple[tuple, dict]:
    ids = _ids(100, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 3:] = 0, 0  # a padded batch
    ids = ids.masked_fill(mask == 0, 0)
    types = (torch.arange(12) >= 6).long().expand(3, 12)
    return (ids,), {"attention_mask": mask, "token_type_ids": types}


CASES = {
    "llama": Case(
        "LlamaForCausalLM",
        (
            "LlamaConfig",
            dict(
                vocab_size=100,
                hidden_size=32,
                intermediate_size=40,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=32,
                rope_theta=500000.0,
                rms_norm_eps=1e-5,
            ),
        ),
        "vocab_size=100 d_model=32 d_ff=40 n_layer=2 n_head=4 n_kv_head=2 max_len=32"
        " rope_theta=500000.0 norm_eps=1e-5",
        lambda: ((_ids(100, (2, 12)),), {}),
        lambda out: out.logits,
    ),
    "bert": Case(
        "BertModel",
        (
            "BertConfig",
            dict(
                vocab_size=100,
                hidden_size=32,
                intermediate_size=40,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=24,
                type_vocab_size=2,
                layer_norm_eps=1e-12,
            ),
        ),
        "vocab_size=100 d_model=32 d_ff=40 n_layer=2 n_head=4 max_len=24",
        _bert_inputs,
        lambda out: out.last_hidden_state,
        {"add_pooling_layer": False},
    ),
    "vit": Case(
        "ViTForImageClassification",
        (
            "ViTConfig",
            dict(
                hidden_size=32,
                intermediate_size=40,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=16,
                patch_size=4,
                num_channels=2,
                num_labels=5,
            ),
        ),
        "image_size=16 patch_size=4 channels=2 d_model=32 d_ff=40 n_layer=2 n_head=4 num_classes=5",
        lambda: ((_pixels((2, 2, 16, 16)),), {}),
        lambda out: out.logits,
    ),
    "resnet18": Case(
        "ResNetForImageClassification",
        (
            "ResNetConfig",
            dict(
                layer_type="basic",
                depths=[2, 2, 2, 2],
                hidden_sizes=[64, 128, 256, 512],
                embedding_size=64,
                num_channels=2,
                num_labels=7,
            ),
        ),
        "num_classes=7 channels=2",
        lambda: ((_pixels((1, 2, 32, 32)),), {}),
        lambda out: out.logits,
    ),
}


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and norm statistic random (norm scales near 1, weights scaled by their
    fan-in), so that a swapped, transposed or dropped tensor shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            norm = "Norm" in type(module).__name__
            for name, t in [
                *module.named_parameters(recurse=False),
                *module.named_buffers(recurse=False),
            ]:
                if not t.is_floating_point():
                    continue
                if name == "running_var":
                    t.uniform_(0.5, 1.5, generator=gen)
                elif norm and name == "weight":
                    t.normal_(1.0, 0.1, generator=gen)
                elif t.dim() >= 2:
                    t.normal_(0.0, (t.numel() / t.shape[0]) ** -0.5, generator=gen)
                else:
                    t.normal_(0.0, 0.1, generator=gen)
    return model


@pytest.fixture(scope="module")
def references(transformers: Any, tmp_path_factory: pytest.TempPathFactory) -> Callable:
    """``references(name)``: a saved tiny random Hugging Face model (made once per module)."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            case = CASES[name]
            config = getattr(transformers, case.hf_config[0])(**case.hf_config[1])
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model = getattr(transformers, case.hf_class)(config, **case.hf_kwargs)
            made[name] = tmp_path_factory.mktemp(f"hf_{name}")
            randomize(model, seed=0).save_pretrained(made[name])
        return made[name]

    return get


def hf_run(transformers: Any, name: str, path: Path) -> torch.Tensor:
    case = CASES[name]
    cls = getattr(transformers, case.hf_class)
    model, info = cls.from_pretrained(path, output_loading_info=True, **case.hf_kwargs)
    assert {k: v for k, v in info.items() if v} == {}  # nothing missing, unexpected, mismatched
    args, kwargs = case.inputs()
    with torch.no_grad():
        return case.hf_output(model.eval()(*args, **kwargs))


def mf_run(model: nn.Module, name: str) -> torch.Tensor:
    args, kwargs = CASES[name].inputs()
    with torch.no_grad():
        return model.eval()(*args, **kwargs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hugging_face_weights_load_into_the_zoo_model(
    name: str, transformers: Any, references: Callable
) -> None:
    model = mf.build(compose([f"model={name}", *CASES[name].overrides.split()]))
    assert (
        mf.load_weights(model, references(name), convert=f"hf_{name.removesuffix('18')}") is model
    )
    want, got = hf_run(transformers, name, references(name)), mf_run(model, name)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_zoo_model_exports_what_from_pretrained_loads(
    name: str, transformers: Any, tmp_path: Path
) -> None:
    model = randomize(mf.build(compose([f"model={name}", *CASES[name].overrides.split()])), seed=1)
    mf.save(model, tmp_path, convert=f"hf_{name.removesuffix('18')}")
    want, got = mf_run(model, name), hf_run(transformers, name, tmp_path)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
