"""Checkpoints written by earlier versions keep loading, bit for bit, forever.

``tests/data/v1_*`` were written by modelfactory 0.1.0 (format version 1) before the
pipeline redesign; each holds the model's sample output at save time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory._config import normalize
from modelfactory._sample import run_sample, sample_input

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["v1_gpt", "v1_lazy_fixed"])
def test_v1_checkpoint_loads_bit_exactly(name: str) -> None:
    model = mf.load(DATA / name)
    expected = mf.load_tensors(DATA / name / "expected_output.safetensors")["output"]
    bc = normalize(mf.config_of(model))
    out = run_sample(model, sample_input(bc, torch.device("cpu")))
    assert torch.equal(out.reshape(expected.shape), expected)
    assert mf.verify(DATA / name).tensors > 0


def test_v1_ties_and_modes_come_back() -> None:
    gpt = mf.load(DATA / "v1_gpt")
    assert gpt.head.weight is gpt.embed.tok.weight
    mixed = mf.load(DATA / "v1_lazy_fixed")
    assert isinstance(mixed.lazy, torch.nn.Linear) and mixed.lazy.in_features == 6
    assert not mixed.bn.training and mixed.fixed.training
    assert mixed.fixed.rand_weight.shape == (20, 20)
