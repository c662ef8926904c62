"""The command's kept compositions (modelfactory/_app/composition.py): a second run of the
same command line takes the config the first one composed, writes the same run directory,
and composes afresh whenever a config source changed or the cache cannot be trusted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .test_cli_startup import plain_run

HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
MINE = """\
# @package _global_
width: {width}
model:
  _target_: modelfactory.blocks.Sequential
  layers:
    inp: {{_target_: torch.nn.Linear, in_features: 8, out_features: "${{width}}"}}
    out: {{_target_: torch.nn.Linear, in_features: "${{width}}", out_features: 2}}
input_shape: [4, 8]
"""


def cached_run(cwd: Path, cache: Path, *args: str, **env: str) -> dict[str, Any]:
    """One run of the console script's ``run`` in a fresh process (:func:`plain_run`), its
    compositions kept in ``cache``: how often Hydra composed, and the run directory's .hydra
    files (read before the next run rewrites them)."""
    got = plain_run(cwd, *args, "hydra.run.dir=outputs/run", XDG_CACHE_HOME=str(cache), **env)
    files = {name: (cwd / "outputs/run/.hydra" / name).read_text() for name in HYDRA_FILES}
    return {"composed": got["composed"], **files}


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "modelfactory/compose").glob("*.pkl"))


def test_a_second_run_takes_the_kept_config_and_writes_the_same_run_dir(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = cached_run(tmp_path, cache, "model=mlp", "init=xavier", "seed=3")
    assert first["composed"] == 1 and len(entries(cache)) == 1
    again = cached_run(tmp_path, cache, "model=mlp", "init=xavier", "seed=3")
    assert again == {**first, "composed": 0}
    assert "seed=3" in str(again["overrides.yaml"]) and "xavier" in str(again["config.yaml"])
    for private in [cache / "modelfactory/compose", *entries(cache)]:  # they hold env values
        assert private.stat().st_mode & 0o077 == 0, private
    other = cached_run(tmp_path, cache, "model=mlp", "init=xavier", "seed=4")
    assert other["composed"] == 1 and len(entries(cache)) == 2
    assert "seed: 4" in str(other["config.yaml"])


def test_an_edited_config_file_is_composed_afresh(tmp_path: Path) -> None:
    cache, mine = tmp_path / "cache", tmp_path / "conf/model/mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text(MINE.format(width=16))
    # With configs of the user's, Hydra also composes to read hydra.mode: twice a run.
    args = ("--config-dir", "conf", "model=mine")
    assert cached_run(tmp_path, cache, *args)["composed"] == 2
    assert cached_run(tmp_path, cache, *args)["composed"] == 0
    mine.write_text(MINE.format(width=32))
    edited = cached_run(tmp_path, cache, *args)
    assert edited["composed"] == 2 and "width: 32" in str(edited["config.yaml"])
    (mine.parent / "other.yaml").write_text(MINE.format(width=4))  # a new option in the group
    assert cached_run(tmp_path, cache, *args)["composed"] == 2


def test_a_copied_environment_variable_is_read_again(tmp_path: Path) -> None:
    cache, args = tmp_path / "cache", ("hydra.job.env_copy=[MF_TEST_VALUE]",)
    assert cached_run(tmp_path, cache, *args, MF_TEST_VALUE="a")["composed"] == 1
    assert cached_run(tmp_path, cache, *args, MF_TEST_VALUE="a")["composed"] == 0
    changed = cached_run(tmp_path, cache, *args, MF_TEST_VALUE="b")
    assert changed["composed"] == 1 and "MF_TEST_VALUE: b" in str(changed["hydra.yaml"])


@pytest.mark.parametrize("spoil", ["garbage", "shared", "off"])
def test_a_cache_that_cannot_be_trusted_is_not_used(tmp_path: Path, spoil: str) -> None:
    cache = tmp_path / "cache"
    first = cached_run(tmp_path, cache, "seed=1")
    env = {"MODELFACTORY_COMPOSE_CACHE": "0"} if spoil == "off" else {}
    if spoil == "garbage":
        entries(cache)[0].write_bytes(b"not a pickle")
    if spoil == "shared":
        (cache / "modelfactory/compose").chmod(0o755)  # others may read
    again = cached_run(tmp_path, cache, "seed=1", **env)
    assert again == first  # composed afresh, the same run directory
    if spoil == "garbage":  # and kept again, whole
        assert cached_run(tmp_path, cache, "seed=1")["composed"] == 0


def test_printing_the_config_keeps_it_without_importing_torch(tmp_path: Path) -> None:
    """``--cfg job`` needs no torch, with the cache cold or warm (keeping an entry must not
    import the checkpoint package, which imports torch)."""
    snippet = (
        "import sys; sys.argv = ['modelfactory', '--cfg', 'job', 'seed=5']\n"
        "from modelfactory.cli import run\n"
        "run()\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert "seed: 5" in out.stdout and out.stdout.splitlines()[-1] == "False"
    assert len(entries(tmp_path / "cache")) == 1


def test_another_search_path_is_another_composition(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for width in (16, 32):
        (tmp_path / f"conf{width}/model").mkdir(parents=True)
        (tmp_path / f"conf{width}/model/mine.yaml").write_text(MINE.format(width=width))
    first = cached_run(tmp_path, cache, "--config-dir", "conf16", "model=mine")
    other = cached_run(tmp_path, cache, "--config-dir", "conf32", "model=mine")
    assert "width: 16" in str(first["config.yaml"]) and "width: 32" in str(other["config.yaml"])
    assert other["composed"] == 2


def test_a_resolver_in_a_defaults_list_is_never_kept(tmp_path: Path) -> None:
    """``- override model: ${oc.env:MF_MODEL}``: its value comes from outside the sources."""
    cache, conf = tmp_path / "cache", tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "mine.yaml").write_text(
        "defaults:\n  - app\n  - override model: ${oc.env:MF_MODEL}\n  - _self_\n"
    )
    for width in (16, 32):
        (conf / f"model/w{width}.yaml").write_text(MINE.format(width=width))
    args = ("--config-dir", "conf", "--config-name", "mine")
    first = cached_run(tmp_path, cache, *args, MF_MODEL="w16")
    other = cached_run(tmp_path, cache, *args, MF_MODEL="w32")
    assert "width: 16" in str(first["config.yaml"]) and "width: 32" in str(other["config.yaml"])
    assert other["composed"] == 2 and entries(cache) == []


def test_a_config_file_reached_through_a_symlink_is_watched(tmp_path: Path) -> None:
    cache, real = tmp_path / "cache", tmp_path / "real/model/mine.yaml"
    real.parent.mkdir(parents=True)
    real.write_text(MINE.format(width=16))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/model").symlink_to(real.parent, target_is_directory=True)
    (tmp_path / "conf/loop").symlink_to(tmp_path / "conf", target_is_directory=True)
    args = ("--config-dir", "conf", "model=mine")
    assert cached_run(tmp_path, cache, *args)["composed"] == 2
    real.write_text(MINE.format(width=32))
    edited = cached_run(tmp_path, cache, *args)
    assert edited["composed"] == 2 and "width: 32" in str(edited["config.yaml"])
