"""Shared by the tests of directory saves and failed saves: a small model (``CFG``) whose
weights shard at ``SHARD`` bytes, an old checkpoint, and the check that it stayed as it
was."""

from __future__ import annotations

from pathlib import Path

import modelfactory as mf

from .conftest import RELU, lin, seq

CFG = {"model": seq(lin(64, 64), RELU, lin(64, 64), RELU, lin(64, 8)), "input_shape": [2, 64]}
SHARD = 17_000  # bytes: a 64x64 float32 weight and its bias per shard


def old_checkpoint(tmp_path: Path, size: int | None) -> tuple[Path, dict[str, bytes]]:
    """The seed-0 ``CFG`` saved to ``tmp_path / "c"`` (sharded at ``size``); its files' bytes."""
    d = tmp_path / "c"
    mf.save(mf.build(CFG, seed=0), d, max_shard_size=size)
    return d, {p.name: p.read_bytes() for p in d.iterdir()}


def assert_untouched(d: Path, before: dict[str, bytes]) -> None:
    """``d`` holds exactly the files of ``before``, bit for bit, and loads as the seed-0 model."""
    assert sorted(p.name for p in d.iterdir()) == sorted(before)  # no temporary file left
    assert all((d / n).read_bytes() == b for n, b in before.items())
    assert mf.config_of(mf.load(d))["seed"] == 0
