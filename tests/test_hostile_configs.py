"""Fuzzing config validation: every wrong config raises modelfactory's own error with a path.

None may escape as a bare KeyError/TypeError/AttributeError from inside torch or omegaconf.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelfactory as mf
from modelfactory.errors import BuildError, ConfigError, ModelFactoryError

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
