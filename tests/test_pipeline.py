"""The pipeline's hand-offs and the defects found in review (each test failed before)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory._record import record_of
from modelfactory.errors import ArgumentError, BuildError, CheckpointError, ConfigError, TieError
from tests.conftest import RELU, lin, seq


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


def test_summary_of_an_unmaterialized_lazy_model(composed) -> None:
    model = mf.build(composed(["model=lazy_mlp", "input_shape=null"]))
    text = mf.summary(model)
    assert "0.weight  uninitialized" in text
    assert "total params: 0" in text and "uninitialized (lazy): 4" in text


def test_save_mismatch_names_the_live_model_and_the_config_right_way_round(tmp_path) -> None:
    model = mf.build({"model": seq(lin(20, 256), RELU, lin(256, 10)), "input_shape": [2, 20]})
    model[2] = nn.Linear(256, 5)
    with pytest.raises(CheckpointError) as e:
        mf.save(model, tmp_path / "c")
    assert "shape: '2.weight' is [5, 256] in the model, [10, 256] in its config" in str(e.value)


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


LOAD_IN_FRESH_PROCESS = """
import sys, json
import modelfactory as mf
model = mf.load(sys.argv[1])
heavy = ["torch._dynamo", "sympy", "hydra", "omegaconf", "yaml"]  # yaml: only for a changed copy
print(json.dumps({"loaded": [m for m in heavy if m in sys.modules],
                  "tied": model.head.weight is model.embed.tok.weight}))
"""


def test_a_fresh_load_imports_neither_dynamo_sympy_hydra_omegaconf_nor_yaml(tmp_path: Path) -> None:
    cfg = {
        "model": {
            "_target_": "modelfactory.blocks.Sequential",
            "layers": {
                "embed": {
                    "_target_": "modelfactory.layers.TokenPositionEmbedding",
                    "vocab_size": 16,
                    "d_model": 8,
                    "max_len": 8,
                },
                "head": lin(8, 16, bias=False),
            },
        },
        "tie": {"groups": [["embed.tok.weight", "head.weight"]]},
        "input_shape": [1, 4],
        "input_dtype": "long",
    }
    mf.save(mf.build(cfg), tmp_path / "ckpt")
    out = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(out.stdout) == {"loaded": [], "tied": True}


def test_build_options_make_a_user_block_take_a_factory() -> None:
    def tower(depth: int) -> dict:
        return {"_target_": "tests.user_blocks.Tower", "depth": depth, "layer": lin(4, 4)}

    two, three = mf.build(tower(2)), mf.build(tower(3))
    assert len(three) == 3 and two[0].weight is not two[1].weight
    for i in range(2):  # growing the tower keeps the layers it had
        assert torch.equal(two[i].weight, three[i].weight)
