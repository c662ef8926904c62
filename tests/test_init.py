"""Initializer rules, and the reproducibility of every build."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory.errors import ConfigError
from modelfactory.init import d2l_mixture_, init_report

from .conftest import RELU, lazy_then_fixed_hidden, lin, seq


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k, v in wb.items():
        assert torch.equal(wa[k], v), k


def test_normal_init_with_zero_bias(composed):
    m = mf.build(composed(["model=mlp", "init=normal"]))
    w = m[0].weight
    assert abs(w.std().item() - 0.01) < 0.001 and abs(w.mean().item()) < 0.001
    assert torch.equal(m[0].bias, torch.zeros(256)) and torch.equal(m[2].bias, torch.zeros(10))


def test_constant_init(composed):
    m = mf.build(composed(["model=mlp", "init=constant"]))
    assert torch.equal(m[0].weight, torch.ones(256, 20)) and torch.equal(m[2].bias, torch.zeros(10))


def test_xavier_on_one_block_and_42_on_another(composed):
    m = mf.build(composed(["model=mlp", "init=per_block"]))
    bound = (6 / (20 + 256)) ** 0.5
    w0 = m[0].weight
    assert w0.abs().max() <= bound and w0.abs().max() > 0.9 * bound
    assert torch.equal(m[2].weight, torch.full((10, 256), 42.0))


def test_d2l_mixture(composed):
    m = mf.build(composed(["model=mlp", "init=d2l_mixture"]))
    w = m[0].weight.detach()
    zeros = (w == 0).float().mean().item()
    assert 0.45 < zeros < 0.55
    nz = w[w != 0].abs()
    assert nz.min() >= 5 and nz.max() <= 10
    assert 0.4 < (w > 0).float().mean().item() / (1 - zeros) < 0.6


def test_d2l_mixture_function_uses_the_generator():
    a = d2l_mixture_(torch.empty(100), generator=torch.Generator().manual_seed(1))
    b = d2l_mixture_(torch.empty(100), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_later_rules_override_earlier_ones_and_module_classes_match_bases():
    rules = [
        {
            "params": "*",
            "modules": ["Module"],
            "fn": {"_target_": "torch.nn.init.constant_", "val": 1.0},
        },
        {
            "params": "*bias",
            "modules": ["Linear"],
            "fn": {"_target_": "torch.nn.init.constant_", "val": 2.0},
        },
    ]
    m = mf.build(
        {
            "model": seq(lin(3, 4), {"_target_": "torch.nn.LayerNorm", "normalized_shape": 4}),
            "init": {"rules": rules},
        }
    )
    assert torch.equal(m[0].weight, torch.ones(4, 3)) and torch.equal(
        m[0].bias, torch.full((4,), 2.0)
    )
    assert torch.equal(m[1].bias, torch.ones(4))


def test_rule_matching_nothing_is_an_error_unless_optional():
    rule = {"params": "*nothing*", "fn": {"_target_": "torch.nn.init.zeros_"}}
    cfg = {
        "model": seq(lin(3, 4)),
        "init": {"rules": [{"params": "*weight", "fn": {"_target_": "torch.nn.init.ones_"}}, rule]},
    }
    with pytest.raises(ConfigError, match=r"init\.rules\.1: matched no parameter"):
        mf.build(cfg)
    rule["optional"] = True
    assert torch.equal(mf.build(cfg)[0].weight, torch.ones(4, 3))


def test_bad_rules_are_reported_with_paths():
    cfg = {
        "model": lin(2, 2),
        "init": {
            "rules": [
                {"params": "*", "fn": {"_target_": "torch.nn.init.normal_", "stdd": 1}},
                {"fn": {"_target_": "torch.nn.init.zeros_"}},
                {"params": "*", "fn": "zeros"},
            ]
        },
    }
    with pytest.raises(ConfigError) as e:
        mf.build(cfg)
    assert e.value.paths == ["init.rules.0.fn.stdd", "init.rules.1", "init.rules.2.fn"]


def test_same_seed_same_values_other_seed_differs(composed):
    a = weights(mf.build(composed(["model=gpt_small", "seed=3"])))
    b = weights(mf.build(composed(["model=gpt_small", "seed=3"])))
    c = weights(mf.build(composed(["model=gpt_small", "seed=4"])))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.tok.weight"], c["embed.tok.weight"])
    assert not torch.equal(a["blocks.1.mlp.body.fc.weight"], c["blocks.1.mlp.body.fc.weight"])


@pytest.mark.parametrize(
    "init", [[], [{"params": "*weight", "fn": {"_target_": "torch.nn.init.normal_"}}]]
)
def test_appending_prepending_or_reordering_blocks_leaves_others_unchanged(init):
    base = [lin(20, 30), RELU, lin(30, 10)]
    ref = mf.build({"model": seq(*base), "init": {"rules": init}})
    appended = mf.build({"model": seq(*base, lin(10, 5)), "init": {"rules": init}})
    prepended = mf.build({"model": seq(lin(20, 20), *base), "init": {"rules": init}})
    reordered = mf.build({"model": seq(base[2], base[1], base[0]), "init": {"rules": init}})
    for other, (i, j) in ((appended, (0, 2)), (prepended, (1, 3)), (reordered, (2, 0))):
        assert torch.equal(ref[0].weight, other[i].weight)
        assert torch.equal(ref[2].weight, other[j].weight)
        assert torch.equal(ref[2].bias, other[j].bias)


def test_a_block_that_draws_nothing_gets_init_values_from_its_own_stream():
    # Building such a block needs no stream key, so the build derives it only when init asks;
    # a device map makes the build derive every key up front: the values must agree.
    gain = {"_target_": "tests.user_blocks.Gain", "width": 6}
    rules = {"rules": [{"params": "*gain", "fn": {"_target_": "torch.nn.init.normal_"}}]}
    model = seq(gain, RELU, gain)
    plain = mf.build({"model": model, "init": rules})
    mapped = mf.build({"model": model, "init": rules, "device": {"map": {"0": "cpu"}}})
    assert not torch.equal(plain[0].gain, torch.ones(6))
    assert not torch.equal(plain[0].gain, plain[2].gain)  # identical siblings: own streams
    assert torch.equal(plain[0].gain, mapped[0].gain)
    assert torch.equal(plain[2].gain, mapped[2].gain)


def test_repeat_copies_keep_their_values_when_n_grows():
    def rep(n: int) -> nn.Module:
        return mf.build({"_target_": "modelfactory.blocks.Repeat", "n": n, "block": lin(4, 4)})

    small, big = rep(2), rep(5)
    assert torch.equal(small[0].weight, big[0].weight) and torch.equal(
        small[1].weight, big[1].weight
    )


@pytest.mark.parametrize("init", ["default", "xavier"])
def test_lazy_and_eager_twins_get_the_same_values(init, composed):
    lazy = mf.build(composed(["model=lazy_mlp", f"init={init}", "seed=5"]))
    eager = mf.build(composed(["model=mlp", f"init={init}", "seed=5"]))
    assert_same_weights(lazy, eager)


def test_modules_that_init_outside_reset_parameters_are_initialized_on_every_path():
    # nn.MultiheadAttention initializes in _reset_parameters, not reset_parameters.
    layer = {
        "_target_": "torch.nn.TransformerEncoderLayer",
        "d_model": 8,
        "nhead": 2,
        "dim_feedforward": 16,
        "batch_first": True,
    }
    direct = mf.build(layer)
    lazy = mf.build(
        {
            "model": seq({"_target_": "torch.nn.LazyLinear", "out_features": 8}, layer),
            "input_shape": [2, 3, 8],
        }
    )
    again = mf.build(layer)
    for m in (direct.self_attn, lazy[1].self_attn):
        assert torch.equal(m.in_proj_bias, torch.zeros(24)) and torch.equal(
            m.out_proj.bias, torch.zeros(8)
        )
        assert torch.isfinite(m.in_proj_weight).all() and m.in_proj_weight.std() > 0.1
        assert m.in_proj_weight.abs().max() <= (6 / (8 + 24)) ** 0.5
    assert torch.equal(direct.self_attn.in_proj_weight, again.self_attn.in_proj_weight)
    assert torch.equal(direct.norm1.weight, torch.ones(8))
    fixed = mf.build({"_target_": "modelfactory.layers.FixedHiddenMLP"})
    assert fixed.rand_weight.min() >= 0 and fixed.rand_weight.max() < 1


def test_build_leaves_the_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    mf.build(seq(lin(5, 5), lin(5, 5)))
    assert torch.equal(torch.rand(3), expected)


def test_init_report_gives_weight_stats_and_activation_std_by_depth(composed):
    m = mf.build(composed(["model=mlp", "init=normal"]))
    report = init_report(m, torch.rand(4, 20))
    assert [w["name"] for w in report["weights"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert abs(report["weights"][0]["std"] - 0.01) < 0.002
    assert [a["name"] for a in report["activations"]] == ["0", "1", "2"]
    assert report["activations"][2]["std"] < report["activations"][0]["std"]


def test_a_lazy_layer_and_its_eager_sibling_get_independent_values():
    eager_layer = lin(8, 8)
    lazy = mf.build(
        {
            "model": seq({"_target_": "torch.nn.LazyLinear", "out_features": 8}, eager_layer),
            "input_shape": [2, 8],
        }
    )
    eager = mf.build({"model": seq(eager_layer, eager_layer), "input_shape": [2, 8]})
    assert not torch.equal(lazy[0].weight, lazy[1].weight)
    assert_same_weights(lazy, eager)


def test_tuple_and_list_arguments_give_the_same_stream_and_lazy_conv_matches_eager():
    conv = {
        "_target_": "torch.nn.Conv2d",
        "in_channels": 3,
        "out_channels": 4,
        "kernel_size": [3, 3],
    }
    as_tuple = {**conv, "kernel_size": (3, 3)}
    lazy = {"_target_": "torch.nn.LazyConv2d", "out_channels": 4, "kernel_size": (3, 3)}
    a = mf.build({"model": seq(conv), "input_shape": [1, 3, 8, 8]})
    b = mf.build({"model": seq(as_tuple), "input_shape": [1, 3, 8, 8]})
    c = mf.build({"model": seq(lazy), "input_shape": [1, 3, 8, 8]})
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[0].weight, c[0].weight)


def test_nested_blocks_in_an_init_function_are_an_error():
    rule = {
        "params": "weight",
        "fn": {
            "_target_": "torch.nn.init.orthogonal_",
            "gain": {"_target_": "torch.nn.init.calculate_gain", "nonlinearity": "relu"},
        },
    }
    with pytest.raises(
        ConfigError, match=r"init\.rules\.0\.fn: an init function's arguments must be plain"
    ):
        mf.build({"model": lin(4, 4), "init": {"rules": [rule]}})


def test_init_functions_without_a_generator_are_seeded_too():
    cfg = {
        "model": lin(6, 6),
        "init": {"rules": [{"params": "weight", "fn": {"_target_": "tests.user_blocks.noisy_"}}]},
    }
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a, b = mf.build(cfg), mf.build(cfg)
    assert torch.equal(torch.rand(3), expected)  # the global RNG is untouched
    assert torch.equal(a.weight, b.weight) and abs(a.weight.std().item() - 1) < 0.5


def test_materializing_runs_leave_rng_and_batchnorm_statistics_alone():
    # the fixed-hidden MLP cannot run on meta: the dry run falls back to the CPU
    fallback = lazy_then_fixed_hidden()
    # a lazy layer hidden inside a user block has no eager twin: one real run
    hidden = {
        "model": seq(
            {"_target_": "torch.nn.BatchNorm1d", "num_features": 4},
            {"_target_": "tests.user_blocks.LazyHead", "out_features": 3},
        ),
        "input_shape": [8, 4],
    }
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    mf.build(fallback)
    m = mf.build(hidden)
    assert torch.equal(torch.rand(3), expected)
    assert m[1].fc.weight.shape == (3, 4) and m.training
    assert torch.equal(m[0].running_mean, torch.zeros(4)) and m[0].num_batches_tracked == 0
    assert torch.equal(mf.build(hidden)[1].fc.weight, m[1].fc.weight)
