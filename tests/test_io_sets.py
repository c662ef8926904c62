"""A save to a directory switches its files (shards, index or model.safetensors,
config.yaml) as one set: killed at every step, the directory reads as the old set or the
new one; a save that fails leaves the old checkpoint and its config.yaml as they were."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory.checkpoint import _commit
from modelfactory.checkpoint import _format as fmt
from modelfactory.errors import CheckpointError

from .checkpoint_helpers import assert_same
from .conftest import RELU, lin, seq

ROOT = Path(__file__).resolve().parents[1]
CFG = {"model": seq(lin(64, 64), RELU, lin(64, 64), RELU, lin(64, 8)), "input_shape": [2, 64]}
SHARD = 17_000  # bytes: a 64x64 float32 weight and its bias per shard

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


# --- saves that fail --------------------------------------------------------------------


def _old_checkpoint(tmp_path: Path, size: int | None) -> tuple[Path, dict[str, bytes]]:
    d = tmp_path / "c"
    mf.save(mf.build(CFG, seed=0), d, max_shard_size=size)
    return d, {p.name: p.read_bytes() for p in d.iterdir()}


def _assert_untouched(d: Path, before: dict[str, bytes]) -> None:
    assert sorted(p.name for p in d.iterdir()) == sorted(before)  # no temporary file left
    assert all((d / n).read_bytes() == b for n, b in before.items())
    assert mf.config_of(mf.load(d))["seed"] == 0


def _fail_on_call(n: int, err: OSError, original):
    calls = []

    def failing(path, *args):
        calls.append(path)
        if len(calls) == n:
            with open(path, "wb") as f:
                f.write(b"partial")  # the disk filled up in the middle of the file
            raise err
        return original(path, *args)

    return failing


@pytest.mark.parametrize("old_size", [None, SHARD], ids=["old single", "old sharded"])
@pytest.mark.parametrize(
    ("new_size", "n", "name"),
    [(None, 1, "model.safetensors"), (SHARD, 2, "model-00002-of-00003.safetensors")],
    ids=["single", "sharded"],
)
def test_disk_full_raises_naming_the_file_and_keeps_the_old_checkpoint(
    old_size, new_size, n: int, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, before = _old_checkpoint(tmp_path, old_size)
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fmt, "write_file", _fail_on_call(n, full, fmt.write_file))
    with pytest.raises(CheckpointError, match=rf"c/{name}: cannot write .*No space left"):
        mf.save(mf.build(CFG, seed=1), d, max_shard_size=new_size)
    _assert_untouched(d, before)


def test_disk_full_on_a_lone_file_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = mf.save(mf.build(CFG, seed=0), tmp_path / "x.safetensors")
    before = file.read_bytes()
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fmt, "write_file", _fail_on_call(1, full, fmt.write_file))
    with pytest.raises(CheckpointError, match=r"x\.safetensors: cannot write .*No space left"):
        mf.save(mf.build(CFG, seed=1), file)
    assert file.read_bytes() == before and os.listdir(tmp_path) == ["x.safetensors"]


@pytest.mark.parametrize("size", [None, SHARD], ids=["single", "sharded"])
def test_a_read_only_directory_keeps_the_old_checkpoint(
    size, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, before = _old_checkpoint(tmp_path, size)
    if os.geteuid() != 0:  # the real thing (root writes through a read-only mode)
        d.chmod(0o555)
        try:
            with pytest.raises(CheckpointError, match=r"c/\S+: cannot write .*Permission denied"):
                mf.save(mf.build(CFG, seed=1), d, max_shard_size=size)
        finally:
            d.chmod(0o755)
        _assert_untouched(d, before)
    denied = PermissionError(errno.EACCES, "Permission denied")

    def refuse(path, *args, **kw):
        raise denied

    monkeypatch.setattr(fmt, "write_file", refuse)
    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(CheckpointError, match=r"c/\S+: cannot write .*Permission denied"):
        mf.save(mf.build(CFG, seed=1), d, max_shard_size=size)
    monkeypatch.undo()
    _assert_untouched(d, before)


@pytest.mark.parametrize("size", [None, SHARD], ids=["single", "sharded"])
def test_config_yaml_being_a_directory_keeps_the_old_checkpoint(size, tmp_path: Path) -> None:
    d = tmp_path / "c"
    mf.save(mf.build(CFG, seed=0), d / "model.safetensors")  # the file alone, no copy
    (d / "config.yaml").mkdir()
    (d / "config.yaml" / "mine.txt").write_text("keep")
    before = (d / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match=r"c/config\.yaml: is not a regular file"):
        mf.save(mf.build(CFG, seed=1), d, max_shard_size=size)
    assert sorted(os.listdir(d)) == ["config.yaml", "model.safetensors"]
    assert (d / "model.safetensors").read_bytes() == before
    assert (d / "config.yaml" / "mine.txt").read_text() == "keep"
    with pytest.warns(UserWarning, match=r"config\.yaml differs .* \(not a regular file\)"):
        loaded = mf.load(d)  # the copy is for people: a directory there is only a warning
    assert torch.equal(loaded[0].weight, mf.build(CFG, seed=0)[0].weight)


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
    d, before = _old_checkpoint(tmp_path, SHARD)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (d / _commit.JOURNAL).write_text(journal)
    for read in (mf.load, mf.verify):
        with pytest.raises(CheckpointError, match=r"modelfactory-switch\.json: corrupt journal"):
            read(d)
    assert victim.read_text() == "keep"
    (d / _commit.JOURNAL).unlink()
    _assert_untouched(d, before)


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
