"""``${mf.calc:...}``: arithmetic in configs, safe, exact, and not needed to load a checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import modelfactory as mf
from modelfactory.configs import compose
from modelfactory.errors import ArgumentError, ConfigError
from modelfactory.resolvers import CALC, calc, register

from .conftest import lin


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4 * 768", 3072),
        ("768 / 12", 64),
        ("(224 / 16) ** 2", 196),
        ("7 // 2 + 7 % 2 - -1", 5),
        ("1.0 / 4", 0.25),
        ("2 ** 0.5 * 0", 0.0),
        (12, 12),
        (1e-5, 1e-5),
    ],
)
def test_values(text: str | int | float, value: int | float) -> None:
    got = calc(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("768 / 7", "768 / 7 is not a whole number"),
        ("1 / 0", "divides by zero"),
        ("1 // 0", "by zero"),
        ("2 ** 100000", "too large"),
        ("10.0 ** 400", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("d_model * 4", "'d_model' is a name"),
        ("__import__('os').system('true')", "is not allowed"),
        ("(1).__class__", "is not allowed"),
        ("[1, 2]", "is not allowed"),
        ("True + 1", "True is not a number"),
        ("'4' * 2", "'4' is not a number"),
        ("4 *", "is not an arithmetic expression"),
        ("1" + "+1" * 600, "characters (at most 1000)"),
    ],
)
def test_refusals(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        calc(text)


def test_deep_nesting_is_a_value_error_not_a_recursion_error() -> None:
    for text in ("-" * 990 + "1", "(" * 490 + "1" + ")" * 490):
        with pytest.raises(ValueError, match=r"nests too deeply|not an arithmetic expression"):
            calc(text)


def test_the_resolver_in_a_config() -> None:
    register()
    register()  # idempotent
    cfg = OmegaConf.create(
        {
            "d": 96,
            "p": 16,
            "i": 224,
            "ff": "${mf.calc:4 * ${d}}",
            "n": "${mf.calc:'(${i} / ${p}) ** 2'}",
            "two": "${mf.calc:${d}, 2}",
        }
    )
    assert cfg.ff == 384 and cfg.n == 196
    with pytest.raises(Exception, match="takes one expression, got 2 arguments"):
        _ = cfg.two


def test_a_derived_knob_follows_its_knob_and_can_be_overridden() -> None:
    model = mf.build(compose(["model=gpt_small", "d_model=32", "device.device=meta"]))
    assert model.blocks[0].mlp.body.fc.out_features == 128
    model = mf.build(compose(["model=gpt_small", "d_ff=100", "device.device=meta"]))
    assert model.blocks[0].mlp.body.fc.out_features == 100


def test_a_size_that_does_not_divide_is_an_error_naming_where() -> None:
    """An arithmetic knob's uses disagree: llama's head size is d_model / n_head."""
    with pytest.raises(ConfigError) as e:
        mf.build(compose(["model=llama", "d_model=100", "n_head=3"]))
    assert e.value.paths[0] == "head_dim"  # the knob that computes it, then each of its uses
    assert all("100 / 3 is not a whole number" in m for _, m in e.value.problems)
    with pytest.raises(ArgumentError, match="does not divide image_size 30x30") as e:
        mf.build(compose(["model=vit", "image_size=30", "patch_size=8"]))
    assert e.value.path == "model.layers.embed"


def test_a_head_count_that_disagrees_with_the_projections_is_an_error() -> None:
    with pytest.raises(ArgumentError, match="n_head=4 must be a positive multiple of n_kv_head=3"):
        mf.build(compose(["model=llama", "n_kv_head=3"]))
    with pytest.raises(ArgumentError, match="q_proj gives 64 features, not a multiple of n_head"):
        mf.build(compose(["model=vit", "n_head=5"]))


def test_checkpoints_store_resolved_values_and_load_without_the_resolver(tmp_path: Path) -> None:
    model = mf.build(compose(["model=gpt_small", "n_layer=1"]))
    file = mf.save(model, tmp_path / "ckpt")
    assert "mf.calc" not in (tmp_path / "ckpt" / "config.yaml").read_text()
    assert "mf.calc" not in str(mf.config_of(model))
    OmegaConf.clear_resolver(CALC)
    try:
        back = mf.load(file)
    finally:
        register()
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys() and all(want[k].equal(got[k]) for k in want)


def test_a_plain_dict_with_calc_builds() -> None:
    cfg = {"w": 8, "model": lin("${w}", "${mf.calc:2 * ${w}}")}
    assert mf.build(cfg).out_features == 16
