"""A save to a directory switches its files (shards, index or model.safetensors,
config.yaml) as one set, through a journal: killed at every step, the directory reads as
the old set or the new one; the next save, or a load, completes a switch that a kill left
half done; a crafted journal is refused and touches nothing."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import modelfactory as mf
from modelfactory.checkpoint import _commit
from modelfactory.errors import CheckpointError

from .checkpoint_helpers import assert_same
from .save_helpers import CFG, SHARD, assert_untouched, old_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# (old seed, old max_shard_size) -> (new seed, new max_shard_size)
TRANSITIONS = {
    "single to sharded": ((0, None), (1, SHARD)),
    "sharded to fewer shards": ((0, SHARD), (1, 2 * SHARD)),
    "sharded to single": ((0, SHARD), (1, None)),
    "single to single": ((0, None), (1, None)),
}

# Imports once, then for each input line forks a writer that saves into a directory and is
# SIGKILLed by itself at the k-th call of one step of the save.
ZYGOTE = f"""
import os, signal, sys
import torch
torch.set_num_threads(1)
import modelfactory as mf
from modelfactory.checkpoint import _commit, _format
models = {{s: mf.build({CFG!r}, seed=s) for s in (0, 1)}}
STEPS = {{  # step -> (module, name, kill after the call instead of before it)
    "write": (_format, "write_file", False),
    "journal": (_commit, "atomic_write", True),
    "rename": (_commit, "_rename", False),
    "remove": (_commit, "_remove", False),
}}
print("ready", flush=True)
for line in sys.stdin:
    target, seed, size, step, k = line.split()
    pid = os.fork()
    if pid == 0:
        module, name, after = STEPS[step]
        original, calls = getattr(module, name), []
        def killing(*args, **kw):
            calls.append(1)
            if len(calls) == int(k) and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            out = original(*args, **kw)
            if len(calls) == int(k):
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        setattr(module, name, killing)
        mf.save(models[int(seed)], target, max_shard_size=None if size == "-" else int(size))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("killed" if os.WIFSIGNALED(status) else "finished", flush=True)
"""


def _listing(d: Path) -> list[str]:
    """The checkpoint's files (temporary files of killed writers are hidden and left)."""
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, Path]:
    """Each (seed, max_shard_size) saved by this process: what the writer's sets look like."""
    base = tmp_path_factory.mktemp("sets")
    out = {}
    for old, new in TRANSITIONS.values():
        for seed, size in (old, new):
            if (seed, size) not in out:
                out[seed, size] = base / f"s{seed}-{size}"
                mf.save(mf.build(CFG, seed=seed), out[seed, size], max_shard_size=size)
    return out


def test_a_save_killed_at_any_step_leaves_the_old_set_or_the_new(
    templates: dict[tuple, Path], tmp_path: Path
) -> None:
    expected = {s: mf.build(CFG, seed=s) for s in (0, 1)}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"}
    proc = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    outcomes: dict[tuple[str, str], list[int]] = {}
    try:
        assert proc.stdout.readline().strip() == "ready"
        for name, (old, new) in TRANSITIONS.items():
            for step in ("write", "journal", "rename", "remove"):
                for k in range(1, 20):
                    target = tmp_path / f"{name}-{step}-{k}".replace(" ", "_")
                    shutil.copytree(templates[old], target)
                    size = "-" if new[1] is None else str(new[1])
                    proc.stdin.write(f"{target} {new[0]} {size} {step} {k}\n")
                    proc.stdin.flush()
                    if proc.stdout.readline().strip() == "finished":
                        break
                    seed = _check_one_set(target, templates, {old, new}, expected)
                    outcomes.setdefault((name, step), []).append(seed)
    finally:
        proc.kill()
        proc.wait()
    print({k: v for k, v in outcomes.items()})
    for name in TRANSITIONS:
        assert set(outcomes[name, "write"]) == {0}  # before the journal: the old set
        assert outcomes[name, "journal"] == [1]  # after it: rolled forward to the new one
        assert set(outcomes[name, "rename"]) == {1}
        assert set(outcomes[name, "remove"]) == {1}


def _check_one_set(
    target: Path, templates: dict[tuple, Path], allowed: set[tuple], expected: dict
) -> int:
    """The directory reads as exactly one of the ``allowed`` sets; returns its seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # config.yaml is the same set's copy: no warning
        model = mf.load(target)
    seed = mf.config_of(model)["seed"]
    (key,) = [k for k in allowed if k[0] == seed]
    assert_same(expected[seed], model)
    assert not (target / _commit.JOURNAL).exists()
    assert _listing(target) == _listing(templates[key])
    for name in _listing(target):
        assert (target / name).read_bytes() == (templates[key] / name).read_bytes(), name
    mf.verify(target)
    return seed


def test_a_save_after_a_kill_rolls_the_switch_forward_first(tmp_path: Path) -> None:
    """A journal left by a kill is carried out by the next save, then replaced by its own."""
    d = tmp_path / "c"
    models = [mf.build(CFG, seed=s) for s in (0, 1)]
    mf.save(models[0], d)
    original = _commit._rename

    def killed(*args):
        raise KeyboardInterrupt  # stands for the kill: the journal is written, nothing renamed

    _commit._rename = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            mf.save(models[1], d, max_shard_size=SHARD)
    finally:
        _commit._rename = original
    assert (d / _commit.JOURNAL).exists() and (d / "model.safetensors").exists()
    mf.save(models[0], d, max_shard_size=2 * SHARD)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert _listing(d) == ["config.yaml", *shards, "model.safetensors.index.json"]
    assert_same(models[0], mf.load(d))


@pytest.mark.parametrize(
    "journal",
    [
        '{"renames": [], "remove": ["../victim.txt"]}',
        '{"renames": [["x", "../victim.txt"]], "remove": []}',
        '{"renames": [[".config.yaml.1-a.tmp", "model.safetensors"]], "remove": []}',
        '{"renames": [], "remove": ["config.yaml"]}',
        "not json",
        '{"renames": [], "remove": [], "run": "rm -rf /"}',
    ],
)
def test_a_crafted_journal_is_refused_and_touches_nothing(journal: str, tmp_path: Path) -> None:
    d, before = old_checkpoint(tmp_path, SHARD)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (d / _commit.JOURNAL).write_text(journal)
    for read in (mf.load, mf.verify):
        with pytest.raises(CheckpointError, match=r"modelfactory-switch\.json: corrupt journal"):
            read(d)
    assert victim.read_text() == "keep"
    (d / _commit.JOURNAL).unlink()
    assert_untouched(d, before)


def test_a_switch_that_cannot_be_completed_is_an_error_naming_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill left a journal in a directory this reader cannot write to."""
    d = tmp_path / "c"
    mf.save(mf.build(CFG, seed=0), d)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(_commit, "_rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mf.save(mf.build(CFG, seed=1), d, max_shard_size=SHARD)

    def read_only(*args):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_commit, "_rename", read_only)
    with pytest.raises(CheckpointError, match=r"switch\.json: a save was interrupted .*Permission"):
        mf.load(d)
    monkeypatch.undo()
    assert mf.config_of(mf.load(d))["seed"] == 1  # where it can, the switch completes
