"""Module and parameter sharing from the tie group: identity, gradients, and the tie paths'
problems (reported with the config's others, found before the real model is built, a
module tied into itself or ties that close a loop)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory._record import record_of
from modelfactory.errors import (
    ConfigError,
    TieError,
)
from modelfactory.tie import check_ties

from .conftest import RELU, lin, seq


def test_shared_layer_is_one_module(composed):
    net = mf.build(composed(["model=shared_mlp"]))
    assert net[2] is net[4]
    with torch.no_grad():
        net[2].weight[0, 0] = 100.0
    assert net[4].weight[0, 0] == 100.0
    assert sum(p.numel() for p in net.parameters()) == (4 * 8 + 8) + (8 * 8 + 8) + (8 + 1)


def test_shared_gradients_are_the_sum_over_both_uses(composed):
    net = mf.build(composed(["model=shared_mlp", "seed=2"]))
    shared = net[2]
    ref = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 1)
    )
    ref.load_state_dict(net.state_dict())
    # Hand-made reference: two separate copies of the shared layer, gradients added.
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    for layer in (a, b):
        layer.load_state_dict(shared.state_dict())
    first, last = nn.Linear(4, 8), nn.Linear(8, 1)
    first.load_state_dict(net[0].state_dict())
    last.load_state_dict(net[6].state_dict())
    untied = nn.Sequential(first, nn.ReLU(), a, nn.ReLU(), b, nn.ReLU(), last)
    x = torch.rand(3, 4)
    net(x).sum().backward()
    untied(x).sum().backward()
    torch.testing.assert_close(shared.weight.grad, a.weight.grad + b.weight.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(shared.bias.grad, a.bias.grad + b.bias.grad, rtol=0, atol=1e-6)


def test_embedding_and_head_share_one_parameter(composed):
    m = mf.build(composed(["model=gpt_small"]))
    assert m.embed.tok.weight is m.head.weight
    names = [n for n, _ in m.named_parameters()]
    assert "head.weight" not in names  # counted once, under its first name
    table = mf.summary(m)
    assert (
        "embed.tok.weight" in table
        and "head.weight" in table.split("embed.tok.weight")[1].splitlines()[0]
    )
    untied = mf.build(composed(["model=gpt_small", "tie=none"]))
    assert untied.embed.tok.weight is not untied.head.weight
    n_tied = sum(p.numel() for p in m.parameters())
    assert sum(p.numel() for p in untied.parameters()) - n_tied == 256 * 64
    # the source keeps its values
    assert torch.equal(m.embed.tok.weight, untied.embed.tok.weight)


def test_cross_layer_glob_shares_attention_across_blocks(composed):
    m = mf.build(composed(["model=gpt_small", "tie=cross_layer"]))
    assert m.blocks[0].attn is m.blocks[1].attn
    assert m.blocks[0].mlp is not m.blocks[1].mlp
    assert m(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 256)


def test_parameter_tie_gradients_accumulate():
    cfg = {
        "model": seq(lin(4, 4, bias=False), RELU, lin(4, 4, bias=False)),
        "tie": {"groups": [["0.weight", "2.weight"]]},
    }
    m = mf.build(cfg)
    assert m[0].weight is m[2].weight
    x = torch.rand(2, 4)
    m(x).sum().backward()
    w = m[0].weight.detach().clone().requires_grad_(True)
    (torch.relu(x @ w.T) @ w.T).sum().backward()
    torch.testing.assert_close(m[0].weight.grad, w.grad)


def test_mismatched_shapes_name_both_paths_and_shapes():
    cfg = {"model": seq(lin(4, 8), lin(8, 2)), "tie": {"groups": [["0.weight", "1.weight"]]}}
    with pytest.raises(
        TieError,
        match=r"tie\.groups\.0: cannot tie '0\.weight' \(shape \[8, 4\], float32\) "
        r"with '1\.weight' \(shape \[2, 8\], float32\)",
    ):
        mf.build(cfg)


def test_unknown_paths_and_mixed_kinds_are_errors():
    cfg = {
        "model": seq(lin(4, 4), lin(4, 4)),
        "tie": {"groups": [["0", "nope"], ["0", "1.weight"], "x"]},
    }
    with pytest.raises(TieError) as e:
        mf.build(cfg)
    assert e.value.paths == ["tie.groups.2"]
    cfg["tie"]["groups"] = [["0", "nope"], ["0", "1.weight"]]
    with pytest.raises(TieError) as e:
        mf.build(cfg)
    assert e.value.paths == ["tie.groups.0.1", "tie.groups.1"]
    assert "'nope' names no module or parameter" in str(e.value)


def test_broken_ties_are_detected_by_identity(composed):
    m = mf.build(composed(["model=gpt_small"]))

    ties = record_of(m).ties
    check_ties(m, ties)
    m.head.weight = nn.Parameter(m.head.weight.detach().clone())  # what assign=True would do
    with pytest.raises(
        TieError, match=r"'head\.weight' is no longer the same object as 'embed\.tok\.weight'"
    ):
        check_ties(m, ties)


def test_tie_group_problems_are_reported_with_the_other_config_problems() -> None:
    cfg = {"model": seq(lin(4, 4), {"_target_": "torch.nn.Relu"}), "tie": {"groups": ["0"]}}
    with pytest.raises(ConfigError) as e:
        mf.build(cfg)
    assert e.value.paths == ["model.layers.1._target_", "tie.groups.0"]


def test_tie_paths_are_resolved_before_the_real_model_is_constructed(monkeypatch) -> None:
    from modelfactory import factory

    built_on: list[str] = []
    real = factory._construct

    def spy(plan, bc, ctx):
        built_on.append(ctx.device.type)
        return real(plan, bc, ctx)

    monkeypatch.setattr(factory, "_construct", spy)
    cfg = {"model": seq(lin(4, 4), lin(4, 4)), "tie": {"groups": [["0", "nope"]]}}
    with pytest.raises(TieError, match="'nope' names no module or parameter"):
        mf.build(cfg)
    assert built_on == ["meta"]  # only the no-init skeleton was built


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
