"""Trusted prefixes that name code which is not importable here."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelfactory as mf
from modelfactory.errors import CheckpointError, UntrustedTargetError

from .checkpoint_helpers import rewrite
from .conftest import lin, seq


def test_trusted_but_missing_package_says_to_install_it(tmp_path: Path):
    good = mf.save(mf.build(seq(lin(2, 2))), tmp_path / "good.safetensors")
    bad = rewrite(
        good,
        tmp_path / "mine.safetensors",
        lambda doc: doc["config"]["model"]["layers"][0].__setitem__("_target_", "nopkg_xyz.Scale"),
    )
    with pytest.raises(UntrustedTargetError):
        mf.load(bad)  # not trusted: refused before any import
    with pytest.raises(CheckpointError) as e:
        mf.load(bad, trusted=["nopkg_xyz.*"])
    assert not isinstance(e.value, UntrustedTargetError)
    assert "model.layers.0._target_: cannot import 'nopkg_xyz.Scale'" in str(e.value)
    assert "Install the package that provides them, or put it on PYTHONPATH" in str(e.value)
