"""The "Knobs" and "Your own model" examples of docs/config.md, run as a user runs them:
the console script in a fresh directory (``tests.cli_helpers.run``). Few and tiny: each run
costs about two seconds of imports."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory._app import job
from modelfactory.checkpoint import _format as fmt
from modelfactory.configs import compose, conf_dir
from modelfactory.errors import ConfigError, UntrustedTargetError

from .cli_helpers import CHECKSUM, command, docs_text, run, sweep_rows

KNOBS = "modelfactory model=gpt_small d_model=128 n_layer=4 n_head=8"
KNOB_SWEEP = "modelfactory -m model=gpt_small d_model=64,128 init=xavier,kaiming"

BLOCKS = '''\
import torch
from torch import nn


class Gated(nn.Module):
    """value(x) * sigmoid(gate(x))"""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.value = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x) * torch.sigmoid(self.gate(x))
'''

MINE = """\
# @package _global_
# conf/model/mine.yaml
width: 32
model:
  _target_: modelfactory.blocks.Sequential
  layers:
    inp: {_target_: torch.nn.Linear, in_features: 8, out_features: "${width}"}
    gated: {_target_: myblocks.Gated, width: "${width}"}
    out: {_target_: torch.nn.Linear, in_features: "${width}", out_features: 2}
input_shape: [4, 8]
"""


def checksum_of(r: subprocess.CompletedProcess) -> str:
    [(sha, _)] = CHECKSUM.findall(r.stdout)
    return sha


def test_the_docs_show_these_examples() -> None:
    text = docs_text()
    assert KNOBS in text and KNOB_SWEEP in text
    assert textwrap.indent(BLOCKS, "   ") in text  # "Your own model"
    assert textwrap.indent(MINE, "   ") in text


def test_the_docs_error_example_is_what_the_command_prints() -> None:
    text = docs_text()
    block = text[text.index("$ modelfactory model=mlp +model") :].split("```")[0].splitlines()
    args = shlex.split(block[0].removeprefix("$ modelfactory "))
    with pytest.raises(ConfigError) as e:
        mf.build(job.build_config(compose(args)))
    assert f"modelfactory: error: {e.value}".splitlines() == block[1:]


def test_knob_overrides_change_every_use_and_the_checkpoint_keeps_them(tmp_path: Path) -> None:
    r = run(tmp_path, *KNOBS.split()[1:], "hydra.run.dir=outputs/k")
    assert r.returncode == 0, r.stderr
    model = mf.load(tmp_path / "outputs/k")
    assert model.embed.tok.weight.shape == (256, 128) and len(model.blocks) == 4
    assert (
        model.blocks[3].attn.body.mha.n_heads == 8 and model.head.weight is model.embed.tok.weight
    )
    doc = fmt.read_header(tmp_path / "outputs/k/model.safetensors").doc
    assert doc["knobs"] == {
        "vocab_size": 256, "d_model": 128, "n_layer": 4, "n_head": 8, "max_len": 64, "d_ff": 512
    }  # fmt: skip
    # d_ff followed d_model (${mf.calc:4 * ${d_model}}); stored resolved: restores without them
    assert "${" not in json.dumps(doc["config"])
    assert "d_model=128" in (tmp_path / "outputs/k/config.yaml").read_text().splitlines()[1]
    built = mf.build(compose(KNOBS.split()[1:]))
    assert (
        checksum_of(r) == job.checksum(job.sample_output(built, mf.config_of(built))[1])["sha256"]
    )


def test_a_knob_typo_is_an_error_with_a_hint() -> None:
    overrides = ["model=gpt_small", "+d_modle=128", "seed=1"]
    with pytest.raises(ConfigError) as e:  # added with +: no interpolation uses it
        job.check_overrides(compose(overrides), overrides)
    assert e.value.paths == ["d_modle"]
    assert "nothing in the config uses this key (did you mean 'd_model'?)" in str(e.value)
    assert "a knob of the model (d_ff, d_model, max_len, n_head, n_layer" in str(e.value)
    job.check_overrides(compose([*overrides[:1], "d_model=32"]), ["d_model=32"])  # a knob
    with pytest.raises(ConfigError, match="did you mean 'd_model'") as e:
        compose(["model=gpt_small", "d_modle=128"])  # without +: Hydra's struct error
    assert e.value.paths == ["d_modle"]


def test_knob_sweep(tmp_path: Path) -> None:
    r = run(tmp_path, *KNOB_SWEEP.split()[1:], "hydra.sweep.dir=outputs/s")
    assert r.returncode == 0, r.stderr
    rows = sweep_rows(tmp_path / "outputs/s")
    assert [row["overrides"] for row in rows] == [
        f"model=gpt_small d_model={d} init={i}" for d in (64, 128) for i in ("xavier", "kaiming")
    ]
    widths = [mf.load(tmp_path / f"outputs/s/{n}").embed.tok.weight.shape[1] for n in range(4)]
    assert widths == [64, 64, 128, 128]


@pytest.fixture
def own_model(tmp_path: Path) -> Path:
    """A user's directory: a block module and a config folder with model/mine.yaml."""
    (tmp_path / "myblocks.py").write_text(BLOCKS)
    (tmp_path / "conf/model").mkdir(parents=True)
    (tmp_path / "conf/model/mine.yaml").write_text(MINE)
    return tmp_path


def test_own_model_run_and_restore_in_a_fresh_process(own_model: Path, monkeypatch) -> None:
    r = run(own_model, "--config-dir", "conf", "model=mine", "width=16", "hydra.run.dir=outputs/m")
    assert r.returncode == 0, r.stderr
    restored = run(
        own_model,
        "restore=outputs/m",
        "trusted=[myblocks.*]",
        "device.dtype=bfloat16",
        "hydra.run.dir=outputs/r",
    )
    assert restored.returncode == 0, restored.stderr
    assert "knobs: width=16" in restored.stdout
    refused = run(own_model, "restore=outputs/m", "hydra.run.dir=outputs/u")
    said = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "'myblocks.Gated' is not under a trusted prefix" in said
    assert "Add 'trusted=[mypkg.*]' to the command line" in said and "load()" not in said
    monkeypatch.syspath_prepend(str(own_model))
    with pytest.raises(UntrustedTargetError, match=r"myblocks\.Gated"):
        mf.load(own_model / "outputs/m")
    same = mf.load(own_model / "outputs/m", trusted=["myblocks.*"])
    assert job.checksum(job.sample_output(same, mf.config_of(same))[1])["sha256"] == checksum_of(r)
    bf16 = mf.load(own_model / "outputs/m", dtype="bfloat16", trusted=["myblocks.*"])
    out = job.sample_output(bf16, mf.config_of(bf16))[1]
    assert out.dtype == torch.bfloat16 and checksum_of(restored) == job.checksum(out)["sha256"]


def test_a_yaml_error_in_an_own_group_file_is_one_paragraph(own_model: Path) -> None:
    (own_model / "conf/model/mine.yaml").write_text("model:\n  _target_: [torch.nn.Linear\n")
    r = run(own_model, "--config-dir", "conf", "model=mine")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("modelfactory: error: the config does not compose: while parsing")
    assert "conf/model/mine.yaml" in r.stderr and len(r.stderr.splitlines()) == 2, r.stderr


def test_restore_honours_placement_overrides_and_refuses_the_others() -> None:
    cfg = compose(["device=bf16"], config_name="app")
    assert job.restore_placement(cfg, ["restore=x", "device=bf16"]) == {
        "device": "auto",
        "dtype": "bfloat16",
    }
    assert job.restore_placement(cfg, ["restore=x", "device.dtype=bfloat16"]) == {
        "dtype": "bfloat16"
    }
    with pytest.raises(
        ConfigError, match=re.escape("only device=, device.device=, device.dtype= and trusted=")
    ) as e:
        job.restore_placement(cfg, ["restore=x", "seed=3", "model=mlp", "+device.map=balanced"])
    assert e.value.paths == ["seed", "model", "device.map"]
    balanced = compose(["device=balanced"], config_name="app")
    with pytest.raises(ConfigError) as e:
        job.restore_placement(balanced, ["restore=x", "device=balanced"])
    assert e.value.paths == ["device.map"]


def test_a_model_file_without_the_global_package_line_says_so(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model/wrong.yaml").write_text(MINE.removeprefix("# @package _global_\n"))
    (tmp_path / "model/bare.yaml").write_text("_target_: torch.nn.Linear\nin_features: 3\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    assert mf.build(compose([search, "model=bare", "+model.out_features=2"])).out_features == 2
    with pytest.raises(ConfigError, match="needs '# @package _global_'") as e:
        mf.build(compose([search, "model=wrong"]))
    assert "model.model" in e.value.paths


def test_a_package_ships_config_groups_with_a_search_path_plugin(tmp_path: Path) -> None:
    site = tmp_path / "site"  # what `pip install` of the user's package puts on sys.path
    (site / "mymodels/conf/model").mkdir(parents=True)
    (site / "mymodels/__init__.py").write_text("")
    (site / "mymodels/conf/model/tiny.yaml").write_text(
        textwrap.dedent(
            """\
            # @package _global_
            width: 8
            model: {_target_: torch.nn.Linear, in_features: "${width}", out_features: 2}
            input_shape: [2, "${width}"]
            """
        )
    )
    plugin = site / "hydra_plugins/mymodels_searchpath"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(
        textwrap.dedent(
            """\
            from hydra.core.config_search_path import ConfigSearchPath
            from hydra.plugins.search_path_plugin import SearchPathPlugin


            class MyModelsSearchPath(SearchPathPlugin):
                def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
                    search_path.append(provider="mymodels", path="pkg://mymodels.conf")
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("HYDRA_FULL_ERROR", None)
    r = subprocess.run(
        [*command(), "model=tiny", "width=4", "hydra.run.dir=outputs/t"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert mf.load(tmp_path / "outputs/t").in_features == 4


def test_two_runs_started_in_the_same_second_get_their_own_directories() -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    dirs = []
    for _ in range(2):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose("app", return_hydra_config=True)
            dirs.append((str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)))
        assert not GlobalHydra.instance().is_initialized()
    assert dirs[0] != dirs[1]
    for run_dir, sweep_dir in dirs:
        assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", run_dir)
        assert re.fullmatch(r"outputs/multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", sweep_dir)


def test_compose_raises_modelfactory_errors() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'gpt_small'\?") as e:
        compose(["model=gpt_smal"])  # Hydra's MissingConfigException underneath
    assert "Available options in 'model':" in str(e.value) and "\t" not in str(e.value)
    with pytest.raises(ConfigError, match=re.escape("wrap it in a list: ['model=mlp']")):
        compose("model=mlp")
    with pytest.raises(ConfigError, match="no viable alternative"):
        compose(["seed=[1"])
