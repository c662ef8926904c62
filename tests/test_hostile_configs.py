"""Config validation under hostile input: every wrong config raises modelfactory's own error
with a path. Fuzzed mutations of a base config, and the edges: configs nested hundreds of
levels deep (a dict, a YAML file, plain values under ``_recursive_: false``, a checkpoint's
config), seeds torch cannot take, build and load keywords checked as the config keys, an
input shape past int64, a huge flat config.

None may escape as a bare KeyError/TypeError/AttributeError from inside torch or omegaconf,
nor as a RecursionError or OverflowError.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelfactory as mf
from modelfactory.errors import (
    BuildError,
    CheckpointError,
    ConfigError,
    ModelFactoryError,
)

from .checkpoint_helpers import rewrite
from .conftest import RELU, lin, seq

# A path the message must name: a dotted config path at the start of a problem line.
PATH = re.compile(
    r"^\s*(model|init|tie|device|seed|input_shape|input_dtype|typo|<root>)[\w.\[\] -]*:", re.M
)


def base() -> dict[str, Any]:
    return {
        "model": seq(
            lin(6, 8),
            RELU,
            {"_target_": "modelfactory.blocks.Repeat", "n": 2, "block": lin(8, 8)},
            lin(8, 3),
        ),
        "init": {
            "rules": [
                {"params": "*weight", "fn": {"_target_": "torch.nn.init.normal_", "std": 0.1}}
            ]
        },
        "tie": {"groups": []},
        "device": {"device": "cpu", "dtype": "float32"},
        "seed": 0,
        "input_shape": [2, 6],
    }


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


def layer_paths(cfg: dict) -> list[list[Any]]:
    return [["model", "layers", 0], ["model", "layers", 2, "block"], ["model", "layers", 3]]


def get(cfg: dict, path: list[Any]) -> Any:
    for k in path:
        cfg = cfg[k]
    return cfg


MUTATIONS = {}


def mutation(fn):
    MUTATIONS[fn.__name__] = fn
    return fn


@mutation
def bad_target(cfg, data):
    node = get(cfg, data.draw(st.sampled_from(layer_paths(cfg))))
    node["_target_"] = data.draw(
        st.one_of(
            st.text(max_size=20),
            junk,
            st.just("torch.nn.NoSuchLayer"),
            st.just("os.path"),
            st.just("math.pi"),
        )
    )


@mutation
def unknown_keyword(cfg, data):
    node = get(cfg, data.draw(st.sampled_from(layer_paths(cfg))))
    name = data.draw(
        identifiers.filter(
            lambda s: s not in {"in_features", "out_features", "bias", "device", "dtype"}
        )
    )
    node[name] = data.draw(junk)


@mutation
def missing_keyword(cfg, data):
    node = get(cfg, data.draw(st.sampled_from(layer_paths(cfg))))
    del node[data.draw(st.sampled_from(["in_features", "out_features"]))]


@mutation
def wrong_type(cfg, data):
    node = get(cfg, data.draw(st.sampled_from(layer_paths(cfg))))
    node[data.draw(st.sampled_from(["in_features", "out_features"]))] = data.draw(
        st.one_of(
            st.text(min_size=1, max_size=5),
            st.lists(st.integers(), min_size=1, max_size=2),
            st.integers(-100, -1),
            st.none(),
            st.floats(0.1, 0.9),
        )
    )


@mutation
def interpolation_cycle(cfg, data):
    node = get(cfg, ["model", "layers", 0])
    node["in_features"] = data.draw(
        st.sampled_from(
            ["${model.layers.0.in_features}", "${nowhere.at.all}", "${oc.env:MF_SURELY_UNSET_VAR}"]
        )
    )


@mutation
def bad_repeat(cfg, data):
    cfg["model"]["layers"][2]["n"] = data.draw(
        st.one_of(st.integers(-5, 0), st.text(max_size=3), st.none(), st.just(True))
    )


@mutation
def empty_sequential(cfg, data):
    cfg["model"]["layers"] = data.draw(st.sampled_from([[], {}]))


@mutation
def incompatible_tie(cfg, data):
    cfg["tie"]["groups"] = [
        data.draw(
            st.sampled_from(
                [["0.weight", "3.weight"], ["0", "3"], ["0.weight", "nowhere"], ["*zzz*"]]
            )
        )
    ]


@mutation
def rule_matching_nothing(cfg, data):
    cfg["init"]["rules"].append(
        {
            "params": data.draw(st.sampled_from(["*nothing", "x.*", "9.weight"])),
            "fn": {"_target_": "torch.nn.init.zeros_"},
        }
    )


@mutation
def bad_rule(cfg, data):
    cfg["init"]["rules"][0] = data.draw(
        st.one_of(
            junk,
            st.just({"params": "*"}),
            st.just({"params": 3, "fn": {"_target_": "torch.nn.init.zeros_"}}),
            st.just({"params": "*", "fn": {"_target_": "torch.nn.Linear"}}),
            st.just({"params": "*", "fn": {"_target_": "torch.nn.init.normal_", "std": "wide"}}),
        )
    )


@mutation
def missing_device(cfg, data):
    cfg["device"]["device"] = data.draw(
        st.one_of(
            st.integers(1, 64).map(lambda i: f"cuda:{i}"),
            st.sampled_from(["gpu", "tpu:0", "cpu:1", ""]),
        )
    )


@mutation
def bad_dtype(cfg, data):
    cfg["device"]["dtype"] = data.draw(
        st.sampled_from(["float13", "int64", "long", "", "torch.int8"])
    )


@mutation
def bad_top_level(cfg, data):
    # (a key that is not a build key, "typo", is a sibling nothing uses: build ignores it)
    key = data.draw(st.sampled_from(["seed", "input_shape", "model", "init", "tie", "device"]))
    values = st.one_of(
        st.text(min_size=1, max_size=4), st.lists(st.text(max_size=2), min_size=1, max_size=2)
    )
    if key != "seed":  # any integer is a valid seed
        values = st.one_of(values, st.integers(-3, -1))
    cfg[key] = data.draw(values)


@mutation
def shape_that_does_not_fit(cfg, data):
    cfg["model"]["layers"][3]["in_features"] = data.draw(st.integers(9, 20))
    cfg["model"]["layers"].insert(0, {"_target_": "torch.nn.LazyLinear", "out_features": 6})


RUNTIME_MUTATIONS = {"shape_that_does_not_fit"}


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(MUTATIONS)), data=st.data())
def test_wrong_configs_raise_our_error_with_a_path(name, data):
    cfg = base()
    MUTATIONS[name](cfg, data)
    snapshot = copy.deepcopy(cfg)
    # A config mistake is a ConfigError, found before anything is built; only a shape that
    # does not fit shows when the sample input runs (a BuildError naming the block).
    expected = BuildError if name in RUNTIME_MUTATIONS else ConfigError
    with pytest.raises(expected) as e:
        mf.build(cfg)
    assert PATH.search(str(e.value)), f"{name}: no config path in:\n{e.value}"
    assert cfg == snapshot


def test_the_unmutated_base_config_builds():
    assert mf.build(base())(__import__("torch").rand(2, 6)).shape == (2, 3)


def test_deeply_nested_config_is_a_clear_error():
    node: dict[str, Any] = lin(2, 2)
    for _ in range(400):
        node = {"_target_": "modelfactory.blocks.Residual", "body": node}
    with pytest.raises(ModelFactoryError, match="nests deeper than"):
        mf.build(node)


def test_a_huge_flat_config_is_validated_quickly_and_reports_every_problem():
    layers = [lin(4, 4, bogus=i) for i in range(2000)]
    with pytest.raises(ModelFactoryError) as e:
        mf.build(seq(*layers))
    assert len(e.value.problems) == 2000


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


@pytest.mark.parametrize("lazy", [False, True])
def test_an_input_shape_past_int64_is_a_config_error(lazy: bool):
    first = {"_target_": "torch.nn.LazyLinear", "out_features": 2} if lazy else lin(4, 2)
    with pytest.raises(ConfigError, match=r"input_shape: .*more elements than a tensor can hold"):
        mf.build({"model": first, "input_shape": [2**62, 4]})
