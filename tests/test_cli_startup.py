"""What a plain run of the command leaves out: the second composition Hydra makes only to
read ``hydra.mode``, and the modules only sweeps, training and pictures need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfactory.cli import mode_is_unset
from modelfactory.configs import conf_dir

from .test_cli import run

# Runs the app's main in a fresh process, counting Hydra's compositions.
PLAIN_RUN = """
import json, sys
from hydra._internal.hydra import Hydra
composed = []
compose = Hydra.compose_config
def counting(self, *args, **kwargs):
    composed.append(kwargs.get("run_mode"))
    return compose(self, *args, **kwargs)
Hydra.compose_config = counting
import gc
import modelfactory.cli as cli
collector = []  # the collector's state when the job starts: on, with torch frozen
started = cli._COLLECTOR.started
def recording():
    started()
    if not collector:  # the job's call (main calls it again as it ends)
        collector.append([gc.isenabled(), "torch" in sys.modules, gc.get_freeze_count() > 100_000])
cli._COLLECTOR.started = recording
sys.argv = ["modelfactory", *sys.argv[1:]]
try:
    cli.run()
except SystemExit as e:
    assert not e.code, e.code
collector.append([gc.isenabled()])
# (no tqdm here: `import torch` imports it, through torch.hub)
extras = ["matplotlib", "transformers", "modelfactory._app.train",
          "modelfactory._app.tasks", "modelfactory._app.plot", "modelfactory.convert"]
loaded = [m for m in extras if m in sys.modules]
print(json.dumps({"composed": len(composed), "loaded": loaded, "collector": collector}))
"""


def plain_run(cwd: Path, *args: str, **env: str) -> dict[str, Any]:
    """:data:`PLAIN_RUN` in a fresh process, in ``cwd``, with ``env`` added: what it prints."""
    environ = {**os.environ, **env}
    environ.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_RUN, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_plain_run_composes_once_and_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    """And runs its job with the collector on: paused while Hydra and torch are imported, what
    they made frozen (cli._StartupCollector), then back on, as after the command."""
    assert plain_run(tmp_path, "hydra.run.dir=outputs/plain") == {
        "composed": 1,
        "loaded": [],
        "collector": [[True, True, True], [True]],
    }
    assert (tmp_path / "outputs/plain/model.safetensors").is_file()


# main() in a process of the caller's, and run() sweeping: the collector is left alone, and on
# while the sweep runs (its jobs may run in a launcher's processes); only run() keeps
# compositions.
COLLECTOR = """
import gc, json, os, sys
from hydra._internal.hydra import Hydra
import modelfactory.cli as cli
seen = []
multirun = Hydra.multirun
Hydra.multirun = lambda self, *a, **k: seen.append(gc.isenabled()) or multirun(self, *a, **k)
sys.argv = ["modelfactory", *sys.argv[1:]]
getattr(cli, os.environ["ENTRY"])()
print(json.dumps({"sweeping": seen, "frozen": gc.get_freeze_count(), "on": gc.isenabled()}))
"""


@pytest.mark.parametrize(
    ("entry", "args", "frozen"),
    [("main", ["hydra.run.dir=outputs/p"], False), ("run", ["-m", "seed=0,1"], True)],
)
def test_the_collector_is_left_alone_in_process_and_on_while_sweeping(
    tmp_path: Path, entry: str, args: list[str], frozen: bool
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", COLLECTOR, *args, "hydra.sweep.dir=outputs/s"],
        cwd=tmp_path,
        env={**os.environ, "ENTRY": entry, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["on"] and bool(got["frozen"]) is frozen
    assert got["sweeping"] == ([True] if entry == "run" else [])
    # and only the console script keeps compositions (a caller may register configs in code)
    assert (tmp_path / "cache/modelfactory/compose").is_dir() is frozen


@pytest.mark.parametrize(
    ("argv", "unset"),
    [
        ([], True),
        (["-m", "seed=0,1", "model=rgnet"], True),
        (["hydra.mode=MULTIRUN", "seed=0,1"], False),
        (["+hydra.mode=RUN"], False),
        (["--config-dir", "conf", "model=mine"], False),
        (["-cd=conf"], False),
        (["--config-name", "other"], False),
        (["-cp", "elsewhere"], False),
    ],
)
def test_mode_is_unset_unless_the_command_line_may_set_it(argv: list[str], unset: bool) -> None:
    assert mode_is_unset(argv) is unset


def test_a_hydra_mode_override_still_chooses_the_mode(tmp_path: Path) -> None:
    r = run(tmp_path, "hydra.mode=MULTIRUN", "seed=0,1", "hydra.sweep.dir=outputs/s")
    assert r.returncode == 0, r.stderr
    assert sorted(p.parent.name for p in (tmp_path / "outputs/s").glob("*/model.safetensors")) == [
        "0",
        "1",
    ]


def _sets_mode(node: Any, package: list[str]) -> bool:
    if not isinstance(node, dict):
        return False
    if package == ["hydra"] and "mode" in node:
        return True
    return any(_sets_mode(v, [*package, str(k)]) for k, v in node.items())


def test_no_shipped_config_sets_hydra_mode() -> None:
    """What lets a plain run skip Hydra's mode probe (modelfactory.cli._no_mode_probe)."""
    for file in conf_dir().rglob("*.yaml"):
        doc = yaml.safe_load(file.read_text())
        parts = file.relative_to(conf_dir()).parts
        package = ["hydra", *parts[1:-1]] if parts[0] == "hydra" else []
        assert not _sets_mode(doc, package), file
