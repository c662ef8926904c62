"""What a plain run of the command leaves out (the modules only sweeps, training and
pictures need), what it leaves as it was (Hydra's methods; a caller's sys.path and
environment), and the one start-up measure it keeps: the collector paused while it imports
(modelfactory._app.startup)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .cli_helpers import run

# Runs the console script's run() in a fresh process: the collector's state and whether
# Hydra's methods are its own when the job starts, and what was imported.
PLAIN_RUN = """
import json, sys
from hydra._internal.hydra import Hydra
methods = ("compose_config", "get_mode", "run", "multirun")
own = {name: getattr(Hydra, name) for name in methods}
import gc
import modelfactory.cli as cli
from modelfactory._app.startup import COLLECTOR
collector, replaced = [], []  # the collector's state when the job starts: on, torch frozen
started = COLLECTOR.started
def recording():
    started()
    if not collector:  # the job's call (run calls it again as it ends)
        collector.append([gc.isenabled(), "torch" in sys.modules, gc.get_freeze_count() > 100_000])
        replaced.extend(name for name in methods if getattr(Hydra, name) is not own[name])
COLLECTOR.started = recording
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
print(json.dumps({"replaced": replaced, "loaded": loaded, "collector": collector}))
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


def test_a_plain_run_replaces_nothing_of_hydras_and_imports_nothing_it_does_not_use(
    tmp_path: Path,
) -> None:
    """And runs its job with the collector on: paused while Hydra and torch are imported, what
    they made frozen (modelfactory._app.startup), then back on, as after the command."""
    assert plain_run(tmp_path, "hydra.run.dir=outputs/plain") == {
        "replaced": [],
        "loaded": [],
        "collector": [[True, True, True], [True]],
    }
    assert (tmp_path / "outputs/plain/model.safetensors").is_file()


# main() in a process of the caller's, and run() sweeping: the collector is left alone, and on
# while the sweep runs (its jobs may run in a launcher's processes); main() leaves the caller's
# sys.path and environment as they were.
COLLECTOR = """
import gc, json, os, sys
import modelfactory.cli as cli
from modelfactory._app.callbacks import SweepReport
seen = []  # the collector's state once the sweep has started, before its jobs
start = SweepReport.on_multirun_start
def starting(self, *args, **kwargs):
    start(self, *args, **kwargs)
    seen.append(gc.isenabled())
SweepReport.on_multirun_start = starting
path, environ = list(sys.path), dict(os.environ)
sys.argv = ["modelfactory", *sys.argv[1:]]
getattr(cli, os.environ["ENTRY"])()
kept = {"path": sys.path == path, "environ": dict(os.environ) == environ}
print(json.dumps({"sweeping": seen, "frozen": gc.get_freeze_count(), "on": gc.isenabled(), **kept}))
"""


@pytest.mark.parametrize(
    ("entry", "args", "frozen"),
    [("main", ["hydra.run.dir=outputs/p"], False), ("run", ["-m", "seed=0,1"], True)],
)
def test_the_collector_is_left_alone_in_process_and_on_while_sweeping(
    tmp_path: Path, entry: str, args: list[str], frozen: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    out = subprocess.run(
        [sys.executable, "-c", COLLECTOR, *args, "hydra.sweep.dir=outputs/s"],
        cwd=tmp_path,
        env={**env, "ENTRY": entry},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["on"] and bool(got["frozen"]) is frozen
    assert got["sweeping"] == ([True] if entry == "run" else [])
    assert got["path"] and got["environ"]  # HYDRA_FULL_ERROR unset again, no cwd on sys.path


def test_a_hydra_mode_override_still_chooses_the_mode(tmp_path: Path) -> None:
    r = run(tmp_path, "hydra.mode=MULTIRUN", "seed=0,1", "hydra.sweep.dir=outputs/s")
    assert r.returncode == 0, r.stderr
    assert sorted(p.parent.name for p in (tmp_path / "outputs/s").glob("*/model.safetensors")) == [
        "0",
        "1",
    ]


SWEEPING_EXPERIMENT = """\
# @package _global_
hydra:
  mode: MULTIRUN
  sweeper:
    params:
      seed: 0,1
"""


def test_an_experiment_file_that_sets_hydra_mode_sweeps(tmp_path: Path) -> None:
    """As under Hydra: a config reached through hydra.searchpath may choose the mode."""
    (tmp_path / "mine/experiment").mkdir(parents=True)
    (tmp_path / "mine/experiment/sweep.yaml").write_text(SWEEPING_EXPERIMENT)
    search = f"hydra.searchpath=[file://{tmp_path / 'mine'}]"
    r = run(tmp_path, search, "+experiment=sweep", "hydra.sweep.dir=outputs/s")
    assert r.returncode == 0, r.stderr
    assert sorted(p.parent.name for p in (tmp_path / "outputs/s").glob("*/model.safetensors")) == [
        "0",
        "1",
    ]
