"""Bounded work from small files: what a crafted checkpoint may make modelfactory build,
allocate or run is checked before the work is done, strict load or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import modelfactory as mf
import modelfactory.tie as tie_module
from modelfactory._app import job
from modelfactory.checkpoint import _format
from modelfactory.errors import (
    CheckpointError,
)

from .checkpoint_helpers import rewrite
from .conftest import RELU, lin, seq


@pytest.fixture
def good(tmp_path: Path) -> Path:
    model = mf.build({"model": seq(lin(4, 8), RELU, lin(8, 2)), "input_shape": [1, 4]})
    return mf.save(model, tmp_path / "good.safetensors")


def craft(good: Path, tmp_path: Path, model: dict[str, Any], **config: Any) -> Path:
    def mutate(doc: dict) -> None:
        doc["config"].update(model=model, **config)

    return rewrite(good, tmp_path / "bad.safetensors", mutate)


HUGE_ON_CPU = {**lin(20000, 20000), "device": "cpu"}
HUGE_POSITIONAL = {"_target_": "torch.nn.Linear", "_args_": [20000, 20000, True, "cpu"]}


@pytest.mark.parametrize("layer", [HUGE_ON_CPU, HUGE_POSITIONAL], ids=["keyword", "positional"])
def test_a_device_keyword_does_not_pull_the_skeleton_off_meta(layer: dict[str, Any]):
    skeleton = mf.build_skeleton(seq(layer, RELU))
    assert skeleton[0].weight.is_meta and skeleton[0].weight.shape == (20000, 20000)


@pytest.mark.parametrize("strict", [True, False])
def test_a_huge_layer_on_cpu_in_a_file_allocates_nothing_before_the_check(
    strict: bool, good: Path, tmp_path: Path
):
    bad = craft(good, tmp_path, seq(HUGE_ON_CPU, RELU, lin(8, 2)))
    script = textwrap.dedent(
        f"""
        import json, warnings
        import modelfactory as mf
        try:
            mf.load({str(bad)!r}, strict={strict})
            error = None
        except mf.CheckpointError as e:
            error = str(e)
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would start at the
        # peak of the test worker that started this process
        status = open("/proc/self/status").read().split("VmHWM:")[1]
        peak = int(status.split()[0]) * 1024
        print(json.dumps({{"error": error, "peak": peak}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["error"] and "bad.safetensors" in out["error"]
    expected = "does not fit" if strict else "more than the 67,108,864 a load may create"
    assert expected in out["error"]
    assert out["peak"] < 1.0e9  # the layer alone would be 1.6 GB


TE_LAYER = {"_target_": "torch.nn.TransformerEncoderLayer", "d_model": 8, "nhead": 2}
REPEAT = "modelfactory.blocks.Repeat"


@pytest.mark.parametrize(
    "model",
    [
        {
            "_target_": REPEAT,
            "n": 3,
            "block": {
                "_target_": "torch.nn.TransformerEncoder",
                "encoder_layer": TE_LAYER,
                "num_layers": 20_000,
            },
        },
        {"_target_": "torch.nn.TransformerEncoder", "_args_": [TE_LAYER, 100_000]},
        {"_target_": "torch.nn.LSTM", "input_size": 1, "hidden_size": 1, "num_layers": 20_000},
        {"_target_": "torch.nn.GRU", "_args_": [1, 1, 800, True, False, 0.0, True]},
        {"_target_": "torch.nn.Transformer", "d_model": 8, "nhead": 2, "num_encoder_layers": 5000},
        {
            "_target_": REPEAT,
            "n": 2000,
            "block": {"_target_": "torch.nn.RNN", "_args_": [1, 1, 30]},
        },
    ],
    ids=[
        "encoder in repeat",
        "encoder positional",
        "lstm",
        "bidirectional gru",
        "transformer",
        "rnns",
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_copies_made_inside_targets_count_towards_the_block_bound(
    model: dict[str, Any], strict: bool, good: Path, tmp_path: Path
):
    bad = craft(good, tmp_path, model)
    with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*more than the 50,000 blocks"):
        mf.load(bad, strict=strict)


def test_small_transformers_and_rnns_still_load(tmp_path: Path):
    cfg = {
        "model": seq(
            {
                "_target_": "torch.nn.TransformerEncoder",
                "encoder_layer": TE_LAYER,
                "num_layers": 2,
                "enable_nested_tensor": False,
            },
            {"_target_": "torch.nn.LSTM", "input_size": 8, "hidden_size": 4, "num_layers": 2},
        )
    }
    model = mf.build(cfg)
    back = mf.load(mf.save(model, tmp_path / "ok.safetensors"))
    assert torch.equal(back[1].weight_hh_l1, model[1].weight_hh_l1)


def test_values_copied_per_repeat_count_towards_the_value_bound(good: Path, tmp_path: Path):
    block = {"_target_": "torch.nn.Unflatten", "dim": 1, "unflattened_size": [1] * 100}
    bad = craft(good, tmp_path, {"_target_": REPEAT, "n": 40_000, "block": block})
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*1,000,000 values"):
            mf.load(bad, strict=strict)


def test_a_huge_repeat_name_width_is_refused_naming_the_file(good: Path, tmp_path: Path):
    bad = craft(
        good, tmp_path, {"_target_": REPEAT, "n": 4, "block": lin(4, 4), "name": "{i:200000000}"}
    )
    with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*longer than 256 characters"):
        mf.load(bad)


def test_the_sample_pass_is_bounded_blocks_times_input(good: Path, tmp_path: Path):
    deep = {"_target_": REPEAT, "n": 300, "block": {"_target_": "torch.nn.Identity"}}
    bad = craft(good, tmp_path, deep, input_shape=[2**24])
    with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*block x input elements"):
        mf.load(bad)


def test_restore_bounds_the_activations_of_the_sample_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    wide = mf.build({"model": seq(lin(4, 100_000), RELU), "input_shape": [1, 4]})
    file = mf.save(wide, tmp_path / "wide.safetensors")
    craft_doc = rewrite(
        file, tmp_path / "bad.safetensors", lambda d: d["config"].update(input_shape=[50_000, 4])
    )
    mf.load(craft_doc)  # loading holds only the file's weights ...

    def no_weights(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the weights were read before the sample pass was bounded")

    monkeypatch.setattr(_format, "read_tensors", no_weights)
    with pytest.raises(
        CheckpointError, match=r"(?s)bad\.safetensors.*activation elements.*4,294,967,296"
    ):
        job.restore_job(str(craft_doc))  # ... the sample pass would compute 10**10 elements


def test_tie_globs_are_resolved_in_linear_work(monkeypatch: pytest.MonkeyPatch):
    n = 3000
    model = mf.build_skeleton({"_target_": REPEAT, "n": n, "block": lin(4, 4)})
    calls = [0]
    real = tie_module.fnmatchcase

    def counting(name: str, pattern: str) -> bool:
        calls[0] += 1
        return real(name, pattern)

    monkeypatch.setattr(tie_module, "fnmatchcase", counting)
    patterns = ["*.weight", "*weight", "[0-9]*.weight"]
    resolved = tie_module.resolve_groups(model, [patterns])
    modules = len(dict(model.named_modules(remove_duplicate=False)))
    params = len(dict(model.named_parameters(remove_duplicate=False)))
    assert resolved[0][1] == [f"{i}.weight" for i in range(n)]
    assert calls[0] <= (modules + params) * len(patterns)


def _repeat(n: int, block: dict, *, positional: bool = False) -> dict:
    target = {"_target_": "modelfactory.blocks.Repeat"}
    return {**target, "_args_": [n, block]} if positional else {**target, "n": n, "block": block}


IDENTITY = {"_target_": "torch.nn.Identity"}


@pytest.mark.parametrize(
    "model",
    [
        _repeat(300_000, IDENTITY),
        _repeat(300_000, IDENTITY, positional=True),
        _repeat(300, _repeat(300, IDENTITY)),
        seq(_repeat(30_000, IDENTITY), _repeat(30_000, IDENTITY)),
    ],
    ids=["n", "positional n", "nested", "two"],
)
def test_repeat_copies_count_towards_the_block_limit(model: dict, good: Path, tmp_path: Path):
    bad = rewrite(good, tmp_path / "bad.safetensors", lambda doc: doc["config"].update(model=model))
    with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*more than the 50,000"):
        mf.load(bad)


def test_repeat_below_the_limit_still_loads(tmp_path: Path):
    model = mf.build({"model": _repeat(3, lin(4, 4)), "input_shape": [1, 4]})
    back = mf.load(mf.save(model, tmp_path / "r.safetensors"))
    assert torch.equal(back[2].weight, model[2].weight)


@pytest.mark.parametrize("shape", [[2**20, 2**20], [2**15] * 4, "big", [2, -1], [True]])
def test_restored_input_shape_is_bounded(shape: Any, good: Path, tmp_path: Path):
    bad = rewrite(
        good, tmp_path / "bad.safetensors", lambda doc: doc["config"].update(input_shape=shape)
    )
    with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*input_shape"):
        mf.load(bad)
