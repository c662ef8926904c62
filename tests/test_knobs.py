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
    with pytest.raises(ConfigError) as e:
        mf.build({**cfg, "widht": 7, "zzz": 1})
    assert e.value.paths == ["widht", "zzz"]
    assert "did you mean 'width'?" in e.value.problems[0][1]
    assert "no ${zzz} is left" in e.value.problems[1][1]
    assert "override a knob itself, not every use of it" in str(e.value).splitlines()[0]


def test_a_knob_whose_only_use_was_overridden_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError) as e:
        mf.build(compose(["model=gpt_small", "model.layers.blocks.n=3"]))
    assert e.value.paths == ["n_layer"]
    model = mf.build(compose(["model=gpt_small", "n_layer=3", "device.device=meta"]))
    assert len(model.blocks) == 3


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
    assert record_of(loaded).knobs == {**GPT_SMALL, "d_model": 32, "n_head": 2}
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
