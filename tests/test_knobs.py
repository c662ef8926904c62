"""Knobs: top-level keys that interpolations use; told apart from typos; kept by checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import modelfactory as mf
from modelfactory._knobs import referenced_top_keys, references
from modelfactory._record import record_of
from modelfactory.configs import compose
from modelfactory.errors import CheckpointError, ConfigError

from .checkpoint_helpers import assert_same, rewrite_doc
from .conftest import lin

DATA = Path(__file__).parent / "data"
GPT_SMALL = {
    "vocab_size": 256,
    "d_model": 64,
    "n_layer": 2,
    "n_head": 4,
    "max_len": 64,
    "d_ff": 256,
}


@pytest.mark.parametrize(
    ("text", "refs"),
    [
        ("${d_model}", ((0, "d_model"),)),
        ("${a.b}x${c}", ((0, "c"), (0, "a"))),
        ("${..width}", ((2, "width"),)),
        ("${oc.decode:${n}}", ((0, "n"),)),  # inside a resolver's arguments
        ("${oc.env:HOME}", ()),  # a resolver, no node
        ("${a[0]}", ((0, "a"),)),
        ("not ${ closed", ()),  # OmegaConf reports it when resolving
    ],
)
def test_references_are_read_with_omegaconf_grammar(text: str, refs: tuple) -> None:
    assert references(text) == refs


def test_relative_references_reach_the_right_top_level_key() -> None:
    tree = {"model": {"a": {"b": "${..x}", "c": "${...top}"}}, "shape": ["${w}"]}
    assert referenced_top_keys(tree) == {"model", "top", "w"}
    assert referenced_top_keys({"b": "${...k}"}, where=("model", "a")) == {"k"}


def test_shipped_model_knobs_are_recorded() -> None:
    model = mf.build(compose(["model=gpt_small", "device.device=meta"]))
    assert dict(record_of(model).knobs) == GPT_SMALL
    assert "d_model" not in mf.config_of(model)  # the config is the resolved build config


def test_knobs_in_plain_dicts_and_unused_keys() -> None:
    cfg = {"width": 6, "model": lin("${width}", 2), "input_shape": [1, "${width}"]}
    model = mf.build(cfg)
    assert model.in_features == 6 and dict(record_of(model).knobs) == {"width": 6}
    unused = mf.build({**cfg, "widht": 7, "zzz": 1})  # siblings nothing uses: ignored
    assert dict(record_of(unused).knobs) == {"width": 6}
    assert "widht" not in mf.config_of(unused)


def test_a_knob_whose_only_use_was_overridden_is_no_longer_a_knob() -> None:
    cfg = compose(["model=gpt_small", "model.layers.blocks.n=3", "device.device=meta"])
    model = mf.build(cfg)
    assert len(model.blocks) == 3 and "n_layer" not in record_of(model).knobs
    model = mf.build(compose(["model=gpt_small", "n_layer=3", "device.device=meta"]))
    assert len(model.blocks) == 3 and record_of(model).knobs["n_layer"] == 3


def test_compose_then_replace_the_model_builds() -> None:
    cfg = compose(["model=mlp"])  # the everyday Hydra habit: compose, then swap cfg.model
    cfg.model = {"_target_": "torch.nn.Linear", "in_features": 20, "out_features": 3}
    model = mf.build(cfg)
    assert model.weight.shape == (3, 20) and mf.config_of(model)["input_shape"] == [2, 20]
    gpt = compose(["model=gpt_small"])
    gpt.model = lin(4, 2)  # the replaced model's knobs (d_model, n_layer, ...) are left unused
    gpt.input_shape, gpt.input_dtype, gpt.tie = [1, 4], "float32", {"groups": []}
    assert mf.build(gpt).in_features == 4


def test_a_misspelled_interpolation_gets_a_hint_and_comes_with_the_other_mistakes(
    tmp_path: Path,
) -> None:
    file = tmp_path / "two_mistakes.yaml"
    file.write_text(
        "width: 8\n"
        "model:\n"
        "  _target_: modelfactory.blocks.Sequential\n"
        "  layers:\n"
        "    - {_target_: torch.nn.Linear, in_features: 4, out_features: '${widht}'}\n"
        "    - {_target_: torch.nn.Linear, in_features: '${width}', out_featurez: 2}\n"
    )
    with pytest.raises(ConfigError) as e:
        mf.build(file)
    assert e.value.paths == [
        "model.layers.0.out_features",
        "model.layers.1.out_featurez",
        "model.layers.1.out_features",
    ]
    assert "'widht' not found (did you mean 'width'?)" in e.value.problems[0][1]
    assert "(did you mean 'out_features'?)" in e.value.problems[1][1]
    with pytest.raises(ConfigError, match=r"'a\.wdth' not found \(did you mean 'a\.width'\?\)"):
        mf.build({"a": {"width": 2}, "model": lin("${a.wdth}", 2)})  # a key of a nested node


def test_building_a_node_records_the_root_knobs_it_uses() -> None:
    cfg = OmegaConf.create({"w": 3, "unused": 1, "model": lin("${w}", "${w}")})
    assert dict(record_of(mf.build(cfg.model)).knobs) == {"w": 3}


def test_checkpoint_keeps_knobs_and_config_yaml_still_builds(tmp_path: Path) -> None:
    model = mf.build(compose(["model=gpt_small", "d_model=32", "n_head=2"]))
    mf.save(model, tmp_path / "a")
    header = (tmp_path / "a/config.yaml").read_text().splitlines()[1]
    assert header.startswith("# Built with the knobs (already applied below): vocab_size=256")
    assert "d_model=32" in header
    loaded = mf.load(tmp_path / "a")
    assert record_of(loaded).knobs == {**GPT_SMALL, "d_model": 32, "n_head": 2, "d_ff": 128}
    assert_same(model, loaded)
    mf.save(loaded, tmp_path / "b")  # a loaded model keeps them
    assert record_of(mf.load(tmp_path / "b")).knobs == record_of(loaded).knobs
    again = mf.build(tmp_path / "a/config.yaml")  # the copy builds as it is (knobs in a comment)
    assert again.embed.tok.weight.shape == (256, 32)


@pytest.mark.parametrize("name", ["v1_gpt", "v1_lazy_fixed"])
def test_checkpoints_written_before_knobs_have_none(name: str) -> None:
    assert record_of(mf.load(DATA / name)).knobs == {}


def test_knobs_that_are_not_a_mapping_are_a_corrupt_file(tmp_path: Path) -> None:
    mf.save(mf.build({"model": lin(2, 2)}), tmp_path)
    rewrite_doc(tmp_path / "model.safetensors", knobs=[1, 2])
    with pytest.raises(CheckpointError, match="field 'knobs': expected a mapping"):
        mf.load(tmp_path)
