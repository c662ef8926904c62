"""The recursive factory: validation (every mistake reported with its path, before anything
is built), lazy layers, vanilla Hydra trees, the input config left alone, the one record a
built model carries (``config_of``), a skeleton that runs no init (the blocks themselves:
``test_blocks.py``)."""

from __future__ import annotations

import copy
import functools
import pickle
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.parameter import UninitializedParameter

import modelfactory as mf
from modelfactory._record import BuildRecord, record_of
from modelfactory.blocks import Residual
from modelfactory.errors import ArgumentError, BuildError, ConfigError

from .conftest import RELU, lazy_then_fixed_hidden, lin, seq


def test_vanilla_hydra_sequential_with_args_builds():
    cfg = {"_target_": "torch.nn.Sequential", "_args_": [lin(4, 8), RELU, lin(8, 2)]}
    m = mf.build(cfg)
    assert isinstance(m, nn.Sequential) and isinstance(m[1], nn.ReLU)
    assert m(torch.rand(5, 4)).shape == (5, 2)


def test_partial_targets_become_functools_partial():
    cfg = {"_target_": "modelfactory.blocks.Residual", "body": {"_target_": "torch.nn.Identity"}}
    assert isinstance(mf.build(cfg), Residual)
    from modelfactory._construct import Context, construct
    from modelfactory._spec import parse_node

    problems: list = []
    tree = {"_target_": "torch.nn.init.normal_", "_partial_": True, "std": 0.5}
    node = parse_node(tree, "x", "", problems, 0)
    assert problems == []
    fn = construct(node, 0, Context(torch.device("cpu")))
    assert isinstance(fn, functools.partial) and fn.keywords == {"std": 0.5}


def test_lazy_model_from_input_shape_has_only_real_parameters():
    cfg = {
        "model": seq(
            {"_target_": "torch.nn.LazyLinear", "out_features": 256},
            RELU,
            {"_target_": "torch.nn.LazyLinear", "out_features": 10},
        ),
        "input_shape": [2, 20],
    }
    m = mf.build(cfg)
    params = dict(m.named_parameters())
    assert not any(isinstance(p, UninitializedParameter) for p in params.values())
    assert params["0.weight"].shape == (256, 20) and params["2.weight"].shape == (10, 256)
    assert type(m[0]) is nn.Linear
    assert torch.isfinite(m(torch.rand(2, 20))).all()


def test_lazy_without_input_shape_stays_lazy_until_first_forward():
    m = mf.build(seq({"_target_": "torch.nn.LazyLinear", "out_features": 3}))
    assert isinstance(m[0].weight, UninitializedParameter)
    assert m(torch.rand(2, 7)).shape == (2, 3)
    assert m[0].weight.shape == (3, 7)


def test_lazy_model_whose_forward_reads_values_materializes_on_cpu():
    cfg = lazy_then_fixed_hidden()
    m = mf.build(cfg)
    assert m[0].weight.shape == (20, 20) and m[0].weight.device.type == "cpu"
    assert m(torch.rand(2, 20)).dim() == 0


def test_fixed_hidden_mlp_constant_is_a_persistent_buffer():
    m = mf.build({"_target_": "modelfactory.layers.FixedHiddenMLP"})
    sd = m.state_dict()
    assert "rand_weight" in sd and sd["rand_weight"].shape == (20, 20)
    assert not sd["rand_weight"].requires_grad
    assert "rand_weight" not in dict(m.named_parameters())
    out = m(torch.rand(2, 20))
    assert out.shape == () and out.abs() <= 1


def test_three_mistakes_are_reported_together_with_their_paths():
    cfg = {
        "model": seq(
            lin(20, 256, out_featurez=3),
            {"_target_": "torch.nn.Relu"},
            {"_target_": "torch.nn.Linear", "in_features": 256},
        )
    }
    with pytest.raises(ConfigError) as e:
        mf.build(cfg)
    msg = str(e.value)
    assert "model.layers.0.out_featurez: unexpected keyword for torch.nn.Linear" in msg
    assert "expected one of in_features, out_features, bias, device, dtype" in msg
    assert "model.layers.1._target_: cannot resolve 'torch.nn.Relu'" in msg
    assert "did you mean torch.nn.ReLU" in msg
    assert "model.layers.2.out_features: missing required argument for torch.nn.Linear" in msg
    assert e.value.paths == [
        "model.layers.0.out_featurez",
        "model.layers.1._target_",
        "model.layers.2.out_features",
    ]


def test_unknown_target_names_itself_and_its_path():
    with pytest.raises(
        ConfigError, match=r"model\.layers\.0\._target_: cannot resolve 'nopkg\.Layer'"
    ):
        mf.build(seq({"_target_": "nopkg.Layer"}))
    with pytest.raises(
        ConfigError, match=r"'torch\.nn' has no attribute 'Linearr'; did you mean torch\.nn\.Linear"
    ):
        mf.build({"_target_": "torch.nn.Linearr"})


def test_input_config_is_not_mutated(mlp_cfg, composed):
    before = copy.deepcopy(mlp_cfg)
    mf.build(mlp_cfg)
    assert mlp_cfg == before
    cfg = composed(["model=gpt_small"])
    snapshot = OmegaConf.to_container(cfg)
    mf.build(cfg)
    assert OmegaConf.to_container(cfg) == snapshot


def test_a_model_keeps_the_config_it_was_built_from_as_json_reads_it():
    # A plain dict's model tree is parsed as the caller gave it and kept as a snapshot; one
    # holding what JSON would change (a tuple, an integer key) goes through the JSON copy.
    cfg = seq(lin(4, 8), RELU)
    model = mf.build(cfg)
    cfg["layers"][0]["out_features"] = 99
    cfg["layers"].append(RELU)
    assert mf.config_of(model)["model"] == seq(lin(4, 8), RELU)
    assert mf.config_of(pickle.loads(pickle.dumps(model)))["model"] == seq(lin(4, 8), RELU)
    conv = {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 2}
    shaped = mf.build({**conv, "kernel_size": (3, 3)})
    assert mf.config_of(shaped)["model"]["kernel_size"] == [3, 3]
    keyed = mf.build({"_target_": "tests.user_blocks.Flexible", "width": 2, "table": {1: "a"}})
    assert keyed.options == {"table": {"1": "a"}}
    mixed = {"_target_": "tests.user_blocks.Flexible", "width": 2, "table": {1: "a", "b": 2}}
    assert mf.build(mixed).options == {"table": {"1": "a", "b": 2}}
    assert mf.config_of(mf.build({**RELU, "_args_": ()}))["model"]["_args_"] == []


def test_a_block_used_twice_is_two_blocks_in_the_config_a_model_keeps():
    block = lin(4, 4)  # one dict object, twice
    model = mf.build({"_target_": "torch.nn.Sequential", "_args_": [block, RELU, block]})
    config = mf.config_of(model)
    config["model"]["_args_"][0]["out_features"] = 8
    assert config["model"]["_args_"][2]["out_features"] == 4


def test_a_build_record_pickles_under_every_protocol_and_as_it_did():
    model = mf.build(lin(2, 3))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert mf.config_of(pickle.loads(pickle.dumps(model, protocol)))["model"] == lin(2, 3)

    class Earlier:  # what a record pickled as when it was a dataclass
        def __reduce__(self) -> tuple:
            state = {"config": {"model": lin(2, 3)}, "ties": [], "paths": {}, "knobs": {}}
            return object.__new__, (BuildRecord,), state

    earlier = pickle.loads(pickle.dumps(Earlier()))
    assert earlier.config == {"model": lin(2, 3)} and earlier.ties == []


def test_a_target_that_mutates_its_list_argument_cannot_alter_the_spec():
    class Greedy(nn.Module):
        def __init__(self, sizes: list) -> None:
            super().__init__()
            sizes.append(99)
            self.n = len(sizes)

    import types

    mod = types.ModuleType("greedy_mod")
    mod.Greedy = Greedy
    sys.modules["greedy_mod"] = mod
    try:
        m = mf.build(
            {
                "_target_": "modelfactory.blocks.Repeat",
                "n": 3,
                "block": {"_target_": "greedy_mod.Greedy", "sizes": [1, 2]},
            }
        )
    finally:
        del sys.modules["greedy_mod"]
    assert [b.n for b in m] == [3, 3, 3]


def test_bad_values_name_the_config_path():
    with pytest.raises(
        BuildError,
        match=r"model\.layers\.0: modelfactory\.blocks\.Repeat\(\.\.\.\) failed: "
        r"ValueError: n must be a positive integer",
    ):
        mf.build(seq({"_target_": "modelfactory.blocks.Repeat", "n": -1, "block": lin(2, 2)}))
    with pytest.raises(
        ConfigError, match=r"model\.layers\.0\.block: expected a block with '_target_'"
    ):
        mf.build(seq({"_target_": "modelfactory.blocks.Repeat", "n": 2, "block": 3}))
    with pytest.raises(BuildError, match=r"model: .*layers is empty"):
        mf.build(seq())


def test_shape_that_does_not_fit_names_the_block():
    cfg = {
        "model": seq(lin(20, 256), RELU, lin(128, 10)),
        "input_shape": [2, 20],
        "init": {"rules": []},
    }
    cfg["model"]["layers"].insert(0, {"_target_": "torch.nn.LazyLinear", "out_features": 20})
    with pytest.raises(BuildError, match=r"model\.layers\.3: .*input_shape \[2, 20\]"):
        mf.build(cfg)


def test_bad_sections_are_errors_and_unused_top_level_keys_are_ignored():
    with pytest.raises(ConfigError) as e:
        mf.build({"model": lin(2, 2), "seeed": 3, "init": {"rulez": []}, "input_shape": [0]})
    assert e.value.paths == ["init.rulez", "input_shape"]  # seeed: a sibling, as for Hydra
    model = mf.build({"model": lin(2, 2), "seeed": 3})
    assert "seeed" not in mf.config_of(model) and record_of(model).knobs == {}


def test_yaml_path_and_dictconfig_inputs(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text(
        "model:\n  _target_: torch.nn.Linear\n  in_features: ${width}\n  out_features: 3\n"
        "seed: 1\n".replace("${width}", "4")
    )
    m = mf.build(p)
    assert m.weight.shape == (3, 4)
    cfg = OmegaConf.create(
        {"w": 5, "model": {"_target_": "torch.nn.Linear", "in_features": "${w}", "out_features": 2}}
    )
    assert mf.build(cfg).in_features == 5  # `w` is a knob: an interpolation uses it
    model = mf.build(OmegaConf.merge(cfg, {"unused": 1}))  # a sibling nothing uses: ignored
    assert dict(record_of(model).knobs) == {"w": 5}
    m = mf.build(
        OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 5, "out_features": 2})
    )
    assert m.weight.shape == (2, 5)
    with pytest.raises(ConfigError, match="no such config file"):
        mf.build(tmp_path / "missing.yaml")


def test_parameter_access_like_d2l(composed):
    net = mf.build(composed(["model=rgnet"]))
    assert net.state_dict()["0.block 1.0.bias"].shape == (8,)
    assert net[0][1][0].bias is net.get_parameter("0.block 1.0.bias")
    assert net[1].weight.grad is None
    net(torch.rand(1, 4)).sum().backward()
    assert net[1].weight.grad is not None


def test_sample_forward_failure_names_the_config_path(composed):
    from modelfactory._sample import run_sample

    model = mf.build(composed(["model=rgnet", "model.layers.1.in_features=5"]))
    with pytest.raises(
        BuildError, match=r"^model\.layers\.1: the sample forward pass with input_shape \[1, 4\]"
    ):
        run_sample(model, torch.rand(1, 4))
    assert model.training  # mode restored


def test_wrong_scalar_types_are_caught_before_building():
    cfg = seq(
        lin(20, "abc"),
        {"_target_": "modelfactory.blocks.Repeat", "n": "3", "block": lin(2, 2)},
        lin(2, 2, bias=1),
        {"_target_": "torch.nn.Dropout", "p": 1},
    )
    with pytest.raises(ConfigError) as e:
        mf.build(cfg)
    assert e.value.paths == [
        "model.layers.0.out_features",
        "model.layers.1.n",
        "model.layers.2.bias",
    ]
    assert "model.layers.0.out_features: expected int for torch.nn.Linear, got 'abc'" in str(
        e.value
    )
    assert "model.layers.2.bias: expected bool for torch.nn.Linear, got 1" in str(e.value)


def test_editing_the_input_after_build_does_not_change_the_model_config():
    from modelfactory._config import DEFAULTS

    cfg = {"model": seq(lin(2, 3), {"_target_": "torch.nn.GELU", "approximate": "none"})}
    m = mf.build(cfg)
    cfg["model"]["layers"][1]["approximate"] = "tanh"
    kept = mf.config_of(m)
    assert kept["model"]["layers"][1]["approximate"] == "none"
    assert kept["init"] is not DEFAULTS["init"]


def test_a_node_without_keywords_reports_every_missing_argument() -> None:
    with pytest.raises(ConfigError) as e:
        mf.build({"_target_": "torch.nn.Linear"})
    assert e.value.paths == ["model.in_features", "model.out_features"]
    assert not isinstance(e.value, BuildError)


def test_two_bad_layers_are_both_reported() -> None:
    cfg = seq({"_target_": "torch.nn.Linear"}, {"_target_": "torch.nn.Linear", "in_features": 2})
    with pytest.raises(ConfigError) as e:
        mf.build(cfg)
    assert e.value.paths == [
        "model.layers.0.in_features",
        "model.layers.0.out_features",
        "model.layers.1.out_features",
    ]


def test_a_target_taking_kwargs_still_checks_its_required_arguments() -> None:
    with pytest.raises(ConfigError) as e:
        mf.build({"_target_": "tests.user_blocks.Flexible", "extra": 1})
    assert e.value.paths == ["model.width"]
    assert mf.build({"_target_": "tests.user_blocks.Flexible", "width": 3, "extra": 1}).width == 3


def test_a_constructor_refusing_its_values_is_a_config_error_with_the_path() -> None:
    with pytest.raises(ArgumentError) as e:
        mf.build(seq(lin(4, -1)))
    assert e.value.paths == ["model.layers.0"] and "negative dimension" in str(e.value)
    assert isinstance(e.value, ConfigError) and isinstance(e.value, BuildError)


def test_the_model_carries_one_record_and_config_of_is_a_copy() -> None:
    model = mf.build({"model": seq(lin(2, 3)), "seed": 4})
    own = [k for k in model.__dict__ if k.startswith("_modelfactory")]
    assert own == ["_modelfactory_record"]
    cfg = mf.config_of(model)
    assert cfg["seed"] == 4 and cfg["model"]["layers"][0]["out_features"] == 3
    cfg["seed"] = 5
    assert mf.config_of(model)["seed"] == 4
    assert record_of(model).paths[id(model[0])] == "model.layers.0"
    assert mf.config_of(nn.Linear(2, 2)) is None


def test_a_skeleton_runs_no_init() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func.__name__)
            return func(*args, **(kwargs or {}))

    cfg = seq(
        {"_target_": "torch.nn.Embedding", "num_embeddings": 9, "embedding_dim": 4}, lin(4, 3)
    )
    with Ops() as ops:
        skeleton = mf.build_skeleton(cfg)
    assert skeleton[0].weight.is_meta and skeleton[0].weight.shape == (9, 4)
    fills = [op for op in ops.seen if op.split(".")[0] in ("normal_", "uniform_", "fill_")]
    assert ops.seen and fills == []
