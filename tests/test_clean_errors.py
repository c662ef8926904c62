"""Inputs that used to end in a bare RecursionError / OverflowError / ValueError / TypeError:
each is now a modelfactory error naming its config path or file and what was expected."""

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
from modelfactory.errors import (
    CheckpointError,
    ConfigError,
    ModelFactoryError,
    TieError,
    UntrustedTargetError,
)

from .checkpoint_helpers import raw_file, rewrite
from .cli_helpers import run
from .conftest import RELU, lin, seq


def _deep_list(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


UNFLATTEN = {"_target_": "torch.nn.Unflatten", "dim": 1}


@pytest.mark.parametrize("form", ["dict", "yaml file"])  # OmegaConf cannot hold 400 levels
def test_lists_400_deep_are_a_config_error_with_the_path(form: str, tmp_path: Path):
    cfg: Any = {"model": {**UNFLATTEN, "unflattened_size": _deep_list(400)}}
    if form == "yaml file":
        path = tmp_path / "deep.yaml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        cfg = str(path)
    with pytest.raises(ConfigError, match=r"nests deeper than 200 levels") as e:
        mf.build(cfg)
    if form == "dict":
        assert e.value.paths[0].startswith("model.unflattened_size.0.0.0")


def test_lists_400_deep_in_a_checkpoint_are_a_checkpoint_error(tmp_path: Path):
    good = mf.save(mf.build(seq(lin(4, 2))), tmp_path / "good.safetensors")
    node = {**UNFLATTEN, "unflattened_size": _deep_list(400)}
    bad = rewrite(good, tmp_path / "bad.safetensors", lambda d: d["config"].update(model=node))
    with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*nests deep"):
        mf.load(bad)


FLEXIBLE = {"_target_": "tests.user_blocks.Flexible", "_recursive_": False, "width": 2}


@pytest.mark.parametrize("depth", [250, 600])  # 600: a RecursionError while constructing
def test_deep_plain_values_under_recursive_false_are_config_and_checkpoint_errors(
    depth: int, tmp_path: Path
):
    with pytest.raises(ConfigError, match=r"model\.extra: config nests deeper than 200 levels"):
        mf.build({"model": {**FLEXIBLE, "extra": _deep_list(depth)}})
    good = mf.save(mf.build({"model": {**FLEXIBLE, "extra": [1]}}), tmp_path / "good.safetensors")
    node = {**FLEXIBLE, "extra": _deep_list(depth)}
    bad = rewrite(good, tmp_path / "bad.safetensors", lambda d: d["config"].update(model=node))
    with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*model\.extra: config nests"):
        mf.load(bad, trusted=["tests.*"])


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**40])
def test_a_seed_torch_cannot_take_is_a_config_error(seed: int):
    with pytest.raises(
        ConfigError, match=r"seed: expected an integer from -2\*\*63 to 2\*\*64 - 1"
    ):
        mf.build({"model": lin(2, 2), "seed": seed, "input_shape": [1, 2]})


def test_the_extreme_seeds_torch_takes_still_build():
    for seed in (-(2**63), 2**64 - 1):
        mf.build({"model": lin(2, 2), "seed": seed, "input_shape": [1, 2]})


def _error_of(make: Any) -> tuple[type, str]:
    with pytest.raises(ModelFactoryError) as e:
        make()
    return type(e.value), str(e.value)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("seed", "3"),
        ("seed", 1.5),
        ("seed", 2**64),
        ("seed", True),
        ("device", 5),
        ("device", "cuda:7"),
        ("dtype", "int8"),
        ("dtype", torch.int32),
    ],
)
def test_build_keywords_are_checked_as_the_config_keys(keyword: str, value: Any):
    cfg = {"model": lin(2, 2), "input_shape": [1, 2]}
    key = {"seed": ("seed",), "device": ("device", "device"), "dtype": ("device", "dtype")}
    in_config = {**cfg, "seed": value} if keyword == "seed" else {**cfg, key[keyword][0]: {}}
    if keyword != "seed":
        in_config["device"][key[keyword][1]] = value
    assert _error_of(lambda: mf.build(cfg, **{keyword: value})) == _error_of(
        lambda: mf.build(in_config)
    )


def test_build_keywords_that_fit_land_in_the_config_as_its_keys():
    model = mf.build({"model": lin(2, 2)}, seed=7, device=torch.device("cpu"), dtype="float64")
    assert model.weight.dtype == torch.float64
    assert mf.config_of(model)["seed"] == 7
    assert mf.config_of(model)["device"] == {"device": "cpu", "dtype": "float64"}


def test_a_dtype_name_and_the_dtype_give_one_load_error(tmp_path: Path):
    path = mf.save(mf.build(seq(lin(4, 2))), tmp_path / "m.safetensors")
    by_name = _error_of(lambda: mf.load(path, dtype="int8"))
    assert by_name == _error_of(lambda: mf.load(path, dtype=torch.int8))
    assert by_name[0] is CheckpointError and "expected a floating dtype" in by_name[1]


def test_a_huge_seed_on_the_command_line_is_one_paragraph_exit_2(tmp_path: Path):
    r = run(tmp_path, "model=mlp", f"seed={2**64}")
    assert r.returncode == 2, r.stderr
    text = (r.stdout + r.stderr).strip()
    assert "Traceback" not in text
    assert "seed: expected an integer from -2**63 to 2**64 - 1" in text
    error = [line for line in text.splitlines() if "error" in line]
    assert error and error[0].split("modelfactory: error: ", 1)[1]


@pytest.mark.parametrize("lazy", [False, True])
def test_an_input_shape_past_int64_is_a_config_error(lazy: bool):
    first = {"_target_": "torch.nn.LazyLinear", "out_features": 2} if lazy else lin(4, 2)
    with pytest.raises(ConfigError, match=r"input_shape: .*more elements than a tensor can hold"):
        mf.build({"model": first, "input_shape": [2**62, 4]})


@pytest.mark.parametrize(
    ("shape", "expected"),
    [([2**63, 0], r"'w'.*2\*\*63 - 1"), ([2**40, 2**40, 0], "overflow"), ([0, 2**64], "usize")],
)
def test_a_header_shape_no_tensor_can_have_is_a_checkpoint_error(
    shape: list[int], expected: str, tmp_path: Path
):
    bad = raw_file(
        tmp_path / "shape.safetensors",
        {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}},
        b"",
    )
    for read in (mf.load, mf.load_tensors, mf.verify):
        with pytest.raises(CheckpointError, match=rf"shape\.safetensors.*{expected}"):
            read(bad)


NESTED = seq(seq(RELU))


@pytest.mark.parametrize(
    "group",
    [["0", "0.0"], ["0.0", "0"], ["*"], ["0", "0.*"]],
    ids=["outer first", "inner first", "glob", "glob inside"],
)
def test_a_module_tied_into_itself_is_a_tie_error(group: list[str]):
    with pytest.raises(
        TieError, match=r"tie\.groups\.0: cannot tie '0' with '0\.0', which lies inside"
    ):
        mf.build({"model": NESTED, "tie": {"groups": [group]}})


def test_ties_of_two_groups_that_close_a_loop_are_a_tie_error():
    # a.0 becomes b, b.0 becomes a: each group alone is fine, together a contains itself.
    model = seq(a=seq(seq(RELU)), b=seq(seq(RELU)))
    with pytest.raises(TieError, match=r"contains itself"):
        mf.build({"model": model, "tie": {"groups": [["b", "a.0"], ["a", "b.0"]]}})


def test_an_alias_that_shadows_a_stored_tensor_is_refused(tmp_path: Path):
    good = mf.save(mf.build(seq(lin(4, 4), lin(4, 4))), tmp_path / "good.safetensors")
    bad = rewrite(
        good, tmp_path / "bad.safetensors", lambda d: d.update(aliases={"1.weight": "0.weight"})
    )
    for read in (mf.load, mf.load_tensors, mf.verify):
        with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*'aliases'.*1\.weight"):
            read(bad)


REPEAT = {"_target_": "modelfactory.blocks.Repeat", "n": 11, "block": lin(2, 2)}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("b{{i}}", r"must contain '\{i\}'"),
        ("b{i!s:.1}", "gives copy 10 the name 'b1' of copy 1"),
        ("b", r"must contain '\{i\}'"),
        ("b{j}", r"must contain '\{i\}'"),
        ("b{i", "not a format string"),
        ("b{i:200000000}", "longer than 256 characters"),
        ("b{i:.300f}", "longer than 256 characters"),
        ("b{i:{i}}", "longer than 256 characters"),
        ("x" * 300 + "{i}", "longer than 256 characters"),
    ],
)
def test_repeat_names_whose_copies_would_not_be_distinct_or_small_are_config_errors(
    name: str, expected: str
):
    with pytest.raises(ConfigError, match=expected) as e:
        mf.build({**REPEAT, "name": name})
    assert e.value.paths == ["model"]


def test_repeat_names_with_a_format_still_work():
    model = mf.build({**REPEAT, "n": 3, "name": "block_{i:02d}"})
    assert [n for n, _ in model.named_children()] == ["block_00", "block_01", "block_02"]


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
