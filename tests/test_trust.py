"""Trust: what a checkpoint may make modelfactory import and call. A target outside the
trusted prefixes is refused before its module is imported and never called, and so is one
reached through attributes, or an interpolation; a trusted prefix must still name an
``nn.Module`` class (a function is refused without importing it), or a factory function the
caller trusted; a trusted target that is not importable here says to install it. (The
corpus of crafted checkpoints: ``test_hostile_checkpoints.py``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from torch import nn

import modelfactory as mf
from modelfactory.errors import (
    CheckpointError,
    UntrustedTargetError,
)

from .checkpoint_helpers import assert_same, build_model, rewrite, rewrite_doc
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


def _malicious(tmp_path: Path, config: dict[str, Any]) -> Path:
    """A checkpoint of an mlp whose embedded config was replaced."""
    mf.save(build_model("mlp"), tmp_path / "evil")
    file = tmp_path / "evil" / "model.safetensors"
    rewrite_doc(file, config=config)
    return file


@pytest.mark.parametrize(
    "where",
    ["model", "nested", "raw", "init"],
)
def test_untrusted_target_is_never_called(where: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    model: dict[str, Any] = {
        "model": evil,
        "nested": seq(lin(20, 256), {"_target_": "torch.nn.Sequential", "_args_": [evil]}),
        "raw": {**seq(lin(20, 256)), "_recursive_": False, "extra": [{"x": evil}]},
        "init": seq(lin(20, 256)),
    }[where]
    init = {"rules": [{"params": "*", "fn": evil}]} if where == "init" else {"rules": []}
    file = _malicious(tmp_path, {"model": model, "init": init, "input_shape": [2, 20]})
    with pytest.raises(UntrustedTargetError, match=r"os\.system") as info:
        mf.load(file)
    assert str(file) in str(info.value) and "_target_" in str(info.value)
    assert not marker.exists()
    # trusting the prefix is not enough: the target must be an nn.Module class
    with pytest.raises(UntrustedTargetError, match=r"not an nn\.Module class|not under"):
        mf.load(file, trusted=["os.*"])
    assert not marker.exists()


def test_a_factory_function_restores_only_under_a_trusted_prefix(tmp_path: Path) -> None:
    target = {"_target_": "tests.io_targets.make_linear", "features": 4}
    model = mf.build({"model": target, "input_shape": [2, 4]})
    file = mf.save(model, tmp_path / "f")
    with pytest.raises(UntrustedTargetError, match=r"'tests\.io_targets\.make_linear' is not"):
        mf.load(file)  # by default only nn.Module classes under torch.nn and modelfactory
    loaded = mf.load(file, trusted=["tests.io_targets.*"])  # trusted: the function is called
    assert type(loaded) is nn.Linear
    assert_same(model, loaded)


@pytest.mark.parametrize(
    "target",
    [
        "torch.nn.modules.module.torch.save",
        "modelfactory.checkpoint.write.save_tensors",
        "builtins.eval",
    ],
)
def test_targets_reached_through_attributes_are_refused(target: str, tmp_path: Path) -> None:
    file = _malicious(tmp_path, {"model": {"_target_": target, "_args_": ["x"]}})
    with pytest.raises(UntrustedTargetError):
        mf.load(file)


def test_interpolations_are_refused(tmp_path: Path) -> None:
    file = _malicious(tmp_path, {"model": {**lin(20, 256), "out_features": "${oc.env:HOME}"}})
    with pytest.raises(CheckpointError, match="interpolation"):
        mf.load(file)


def _load_in_subprocess(tmp_path: Path, target: str) -> dict[str, Any]:
    good = mf.save(mf.build(seq(lin(2, 2))), tmp_path / "good.safetensors")
    layer = {"_target_": target}
    bad = rewrite(
        good,
        tmp_path / "bad.safetensors",
        lambda d: d["config"]["model"]["layers"].__setitem__(0, layer),
    )
    script = textwrap.dedent(
        f"""
        import json, sys
        import modelfactory as mf
        from modelfactory.errors import UntrustedTargetError
        try:
            mf.load({str(bad)!r})
            error = None
        except UntrustedTargetError as e:
            error = str(e)
        watched = ("torch.nn.attention.", "torch._inductor", "torch._dynamo")
        loaded = sorted(m for m in sys.modules if m.startswith(watched))
        print(json.dumps({{"error": error, "loaded": loaded}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "target",
    [
        "torch.nn.attention.flex_attention.flex_attention",
        "torch.nn.attention.flex_attention.BlockMask",
    ],
)
def test_an_untrusted_target_is_refused_before_its_module_is_imported(target: str, tmp_path: Path):
    out = _load_in_subprocess(tmp_path, target)
    assert out["error"] is not None and "bad.safetensors" in out["error"]
    assert "model.layers.0._target_" in out["error"] and "nothing was imported" in out["error"]
    assert not [
        m for m in out["loaded"] if m.startswith(("torch.nn.attention.flex", "torch._inductor"))
    ]


def test_a_loaded_module_that_is_not_a_block_is_refused_without_importing(tmp_path: Path):
    good = mf.save(mf.build(seq(lin(2, 2))), tmp_path / "good.safetensors")
    layer = {"_target_": "torch.nn.functional.relu"}
    bad = rewrite(
        good,
        tmp_path / "bad.safetensors",
        lambda d: d["config"]["model"]["layers"].__setitem__(0, layer),
    )
    with pytest.raises(
        UntrustedTargetError,
        match=r"model\.layers\.0\._target_: 'torch\.nn\.functional\.relu' is a function",
    ):
        mf.load(bad)
