"""Composition blocks (``modelfactory/blocks.py``), built from configs and in Python:
Sequential's children (numbered or named, checked), Parallel, Residual, Repeat
(independent copies, names that keep them distinct and small, the factory it takes in
Python, its ``first`` copy), and ``build_options``, with which a user's block takes a
factory as Repeat does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory.blocks import Parallel, Repeat, Residual, Sequential
from modelfactory.errors import (
    ConfigError,
)

from .conftest import RELU, lin, seq


def test_list_children_are_numbered_and_mapping_children_named():
    listed = mf.build(seq(lin(20, 256), RELU, lin(256, 10)))
    named = mf.build(seq(hidden=lin(20, 256), act=RELU, out=lin(256, 10)))
    assert [n for n, _ in listed.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [n for n, _ in named.named_parameters()] == [
        "hidden.weight",
        "hidden.bias",
        "out.weight",
        "out.bias",
    ]
    assert isinstance(named.hidden, nn.Linear) and named.hidden.out_features == 256
    assert named(torch.rand(2, 20)).shape == (2, 10)


def test_repeat_makes_independent_copies_with_different_values():
    m = mf.build(
        {"_target_": "modelfactory.blocks.Repeat", "n": 3, "name": "b{i}", "block": lin(4, 4)}
    )
    assert [n for n, _ in m.named_children()] == ["b0", "b1", "b2"]
    assert m.b0 is not m.b1 and m.b0.weight is not m.b1.weight
    assert not torch.equal(m.b0.weight, m.b1.weight)
    assert not torch.equal(m.b1.weight, m.b2.weight)
    assert sum(p.numel() for p in m.parameters()) == 3 * (16 + 4)


def test_repeat_in_python_takes_a_factory_not_a_module():
    r = Repeat(2, lambda i: nn.Linear(3, 3))
    assert r[0] is not r[1]
    with pytest.raises(TypeError, match="callable returning a fresh module"):
        Repeat(2, nn.Linear(3, 3))


def test_parallel_concatenates_and_sums():
    cat = mf.build({"_target_": "modelfactory.blocks.Parallel", "branches": [lin(4, 3), lin(4, 5)]})
    assert isinstance(cat, Parallel) and cat(torch.rand(2, 4)).shape == (2, 8)
    add = Parallel({"a": nn.Identity(), "b": nn.Identity()}, combine="sum")
    x = torch.rand(2, 4)
    assert torch.equal(add(x), 2 * x)


def test_residual_adds_input():
    r = Residual(nn.Identity())
    x = torch.rand(3)
    assert torch.equal(r(x), 2 * x)


def test_sequential_rejects_bad_children():
    with pytest.raises(TypeError, match=r"layers\['0'\] is a int"):
        Sequential([1])
    with pytest.raises(ValueError, match=r"contain no '\.'"):
        Sequential({"a.b": nn.Identity()})


@pytest.mark.parametrize("name", ["to", "forward", "training", "_modules"])
def test_child_names_taken_by_nn_module_are_config_errors_naming_the_attribute(name: str):
    for cfg in (
        seq(**{name: RELU}),
        {"_target_": "modelfactory.blocks.Parallel", "branches": {name: RELU, "b": RELU}},
    ):
        with pytest.raises(
            ConfigError,
            match=f"child name '{name}' is taken by an attribute "
            f"of nn.Module \\(nn.Module.{name}\\)",
        ) as e:
            mf.build(cfg)
        assert e.value.paths == ["model"]
    with pytest.raises(ConfigError, match=f"name '{name}' is taken"):
        mf.build({**REPEAT, "n": 1, "name": "{i!s:.0}" + name})


def test_repeat_first_copy_differs_and_the_others_keep_their_values() -> None:
    block = lin(4, 4)
    plain = {"_target_": "modelfactory.blocks.Repeat", "n": 3, "block": block}
    first = {**plain, "first": lin(2, 4, bias=False)}
    a, b = mf.build(seq(plain, lin(4, 1))), mf.build(seq(first, lin(4, 1)))
    assert b[0][0].in_features == 2 and b[0][0].bias is None
    for i in (1, 2):  # copies 1.. draw what they draw without `first`
        assert torch.equal(a[0][i].weight, b[0][i].weight)
    assert b(torch.ones(1, 2)).shape == (1, 1)
    one = mf.build({**first, "n": 1})
    assert len(one) == 1 and one[0].in_features == 2
    with pytest.raises(TypeError, match=r"first must be an nn\.Module"):
        Repeat(2, lambda i: nn.Linear(2, 2), first="x")  # type: ignore[arg-type]


def test_build_options_make_a_user_block_take_a_factory() -> None:
    def tower(depth: int) -> dict:
        return {"_target_": "tests.user_blocks.Tower", "depth": depth, "layer": lin(4, 4)}

    two, three = mf.build(tower(2)), mf.build(tower(3))
    assert len(three) == 3 and two[0].weight is not two[1].weight
    for i in range(2):  # growing the tower keeps the layers it had
        assert torch.equal(two[i].weight, three[i].weight)


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
