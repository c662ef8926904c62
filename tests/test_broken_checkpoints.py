"""Checkpoints that are missing, damaged or out of step with their config: a missing path, a
truncated file, flipped header bytes, a plain safetensors file, a newer format version,
tensors that do not fit the config (reported together) or its dtype. Each is a
CheckpointError naming the file (crafted, hostile files: ``test_hostile_checkpoints.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

import modelfactory as mf
from modelfactory.errors import CheckpointError

from .checkpoint_helpers import assert_same, header_of, rewrite_doc
from .conftest import lin


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
