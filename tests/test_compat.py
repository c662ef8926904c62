"""Checkpoints written by earlier versions keep loading, bit for bit, forever.

``tests/data/v1_*`` were written by modelfactory 0.1.0 (format version 1) before the
pipeline redesign; they load through the registered upgrader from version 1.
``tests/data/v2_*`` were written with format version 2, the first with sharded
checkpoints: a tiny tied GPT (``model=gpt_small vocab_size=16 d_model=8 n_layer=1
n_head=2 max_len=16 d_ff=16 init=xavier``, seed 3 in one file, seed 4 with
``max_shard_size="1KB"`` in five shards). Each holds the model's sample output at save
time; the SHA-256 of that output is pinned here too, so regenerating a file cannot hide a
change. Never rewrite these files: add new ones for a new version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import modelfactory as mf
from modelfactory._config import normalize
from modelfactory._sample import run_sample, sample_input
from modelfactory.checkpoint import _version
from modelfactory.errors import CheckpointError

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["v1_gpt", "v1_lazy_fixed", "v2_single", "v2_sharded"])
def test_old_checkpoint_loads_bit_exactly(name: str) -> None:
    model = mf.load(DATA / name)
    expected = mf.load_tensors(DATA / name / "expected_output.safetensors")["output"]
    bc = normalize(mf.config_of(model))
    out = run_sample(model, sample_input(bc, torch.device("cpu")))
    # Float kernels differ between CPUs (AVX2, AVX-512): equal within float32 rounding.
    torch.testing.assert_close(out.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
    assert mf.verify(DATA / name).tensors > 0


@pytest.mark.parametrize("name", ["v1_gpt", "v1_lazy_fixed", "v2_single", "v2_sharded"])
def test_old_checkpoint_weights_load_bit_exactly(name: str) -> None:
    """Every stored tensor, read by safetensors itself, equals the loaded one bit for bit;
    a name the files leave out is a tie, the very tensor of a stored one."""
    stored: dict[str, torch.Tensor] = {}
    for file in sorted((DATA / name).glob("model*.safetensors")):
        stored.update(load_file(file))
    stored = {k: v for k, v in stored.items() if not k.startswith("__modelfactory_pad__")}
    state = mf.load(DATA / name).state_dict(keep_vars=True)
    assert set(stored) <= set(state)
    for key, value in stored.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    tied = {k: [s for s in stored if state[s] is state[k]] for k in set(state) - set(stored)}
    assert all(tied.values()), tied
    assert tied == ({} if name == "v1_lazy_fixed" else {"head.weight": ["embed.tok.weight"]})


def test_v1_ties_and_modes_come_back() -> None:
    gpt = mf.load(DATA / "v1_gpt")
    assert gpt.head.weight is gpt.embed.tok.weight
    mixed = mf.load(DATA / "v1_lazy_fixed")
    assert isinstance(mixed.lazy, torch.nn.Linear) and mixed.lazy.in_features == 6
    assert not mixed.bn.training and mixed.fixed.training
    assert mixed.fixed.rand_weight.shape == (20, 20)


def test_v2_sharded_is_five_shards_with_ties_across_them() -> None:
    index = json.loads((DATA / "v2_sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 5
    gpt = mf.load(DATA / "v2_sharded")
    assert gpt.head.weight is gpt.embed.tok.weight
    assert mf.config_of(gpt)["seed"] == 4


def test_a_v1_file_goes_through_the_registered_upgrader(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    step = _version.UPGRADERS[1]
    monkeypatch.setitem(_version.UPGRADERS, 1, lambda doc: seen.append(doc) or step(doc))
    mf.load(DATA / "v1_gpt")
    assert len(seen) == 1 and seen[0]["format_version"] == 1
    assert step(seen[0])["format_version"] == 2 and step(seen[0])["shards"] == []
    mf.load(DATA / "v2_single")  # already current: no upgrader runs
    assert len(seen) == 1


def test_a_future_version_reads_todays_files_through_a_new_upgrader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the next format change does: bump the version, register 2 -> 3."""
    calls = []

    def v2_to_v3(doc: dict) -> dict:
        calls.append(doc["format_version"])
        return {**doc, "format_version": 3}

    monkeypatch.setattr(_version, "FORMAT_VERSION", 3)
    monkeypatch.setitem(_version.UPGRADERS, 2, v2_to_v3)
    for name in ("v1_gpt", "v2_single", "v2_sharded"):
        mf.load(DATA / name)
    assert calls == [2, 2, 2]  # v1 goes 1 -> 2 -> 3


def test_a_version_without_an_upgrader_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(_version.UPGRADERS, 1)
    with pytest.raises(CheckpointError) as e:
        mf.load(DATA / "v1_gpt")
    assert "v1_gpt/model.safetensors: format version 1 cannot be read: no upgrader from " \
        "version 1 to 2 (this modelfactory writes version 2)" in str(e.value)  # fmt: skip


@pytest.mark.parametrize("name", ["v2_single", "v2_sharded"])
def test_a_newer_version_is_refused_naming_both(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's files, read by a modelfactory one version older."""
    monkeypatch.setattr(_version, "FORMAT_VERSION", 1)
    file = "model.safetensors.index.json" if name == "v2_sharded" else "model.safetensors"
    for read in (mf.load, mf.verify, mf.load_tensors):
        with pytest.raises(CheckpointError) as e:
            read(DATA / name)
        assert f"{name}/{file}: format version 2 is newer than this modelfactory reads (1); " \
            "upgrade modelfactory" in str(e.value)  # fmt: skip
