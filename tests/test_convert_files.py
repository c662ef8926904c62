"""Conversion files: the shipped ones load, a user's own from a path (through ``convert`` and
through ``save``/``load_weights(convert=)``), errors per key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory import convert
from modelfactory.configs import compose
from modelfactory.errors import ConfigError

# A user's conversion for another family: Keras-style dense layers <-> model=mlp.
MLP_CONVERSION = """\
description: dense layers with (in, out) kernels <-> model=mlp
renames:
  - {from: "dense_{i}.kernel", to: "{i}.weight", transpose: true}
  - {from: "dense_{i}.bias", to: "{i}.bias"}
config:
  values:
    hidden: {shape: 0.weight, dim: 0}
    layers: {count: "{i}.weight"}
    framework: {value: {name: keras}}
"""


@pytest.mark.parametrize("name", convert.shipped_conversions())
def test_every_shipped_conversion_loads(name: str) -> None:
    conversion = convert.load_conversion(name)
    assert conversion.name == name and conversion.renames


def test_user_conversion_from_a_path(tmp_path: Path) -> None:
    (tmp_path / "dense.yaml").write_text(MLP_CONVERSION)
    model = mf.build(compose(["model=mlp", "init=xavier"]))
    convert.export_dir(model, tmp_path / "out", tmp_path / "dense.yaml")
    foreign = convert.read_foreign_dir(tmp_path / "out")
    assert sorted(foreign) == ["dense_0.bias", "dense_0.kernel", "dense_2.bias", "dense_2.kernel"]
    assert foreign["dense_0.kernel"].shape == (20, 256)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config == {"hidden": 256, "layers": 2, "framework": {"name": "keras"}}
    back = convert.import_state(foreign, str(tmp_path / "dense.yaml"), model=model)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_bad_conversion_file_names_each_key(tmp_path: Path) -> None:
    bad = textwrap.dedent("""\
        renames:
          - {from: "a.weight", to: "x.weight"}
          - {from: "b.{i}.weight", to: "y.weight"}
          - {from: "c.weight", to: "z.weight", transpos: true}
          - {from: "d.weight"}
        ties:
          - {from: "head", to: "h", same_as: "nope.weight"}
        config:
          values:
            n: {shape: x.weight, count: "x"}
    """)
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(ConfigError) as info:
        convert.load_conversion(tmp_path / "bad.yaml")
    assert str(tmp_path / "bad.yaml") in str(info.value).splitlines()[0]
    assert info.value.paths == [
        "convert.renames.1.to",
        "convert.renames.2.transpos",
        "convert.renames.3.to",
        "convert.ties.0.same_as",
        "convert.config.values.n",
    ]
    assert "did you mean 'transpose'?" in str(info.value)


def test_unknown_shipped_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown conversion 'hf_gtp2'; shipped: .*hf_gpt2, "):
        convert.load_conversion("hf_gtp2")


def test_user_conversion_path_through_the_public_api(tmp_path: Path) -> None:
    (tmp_path / "dense.yaml").write_text(MLP_CONVERSION)
    model = mf.build(compose(["model=mlp", "init=xavier"]))
    mf.save(model, tmp_path / "out", convert=tmp_path / "dense.yaml")
    assert "dense_0.kernel" in convert.read_foreign_dir(tmp_path / "out")
    fresh = mf.build(compose(["model=mlp", "seed=5"]))
    mf.load_weights(fresh, tmp_path / "out", convert=str(tmp_path / "dense.yaml"))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
