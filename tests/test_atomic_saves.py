"""Atomic saves under SIGKILL, and byte-identical saves across processes.

A writer is killed at chosen points, not at chosen times (a busy machine moves every moment):
before each write of a file's bytes, each fsync and each rename it makes, saving a lone
``.safetensors`` file and a checkpoint directory. Whatever point, the target reads as the
old checkpoint or the new one, bit for bit; the old one until the commit point (the rename
of the file; the journal of the directory's set), the new one after it.

A killed writer's temporary file is removed by a later save once it is old, and only a dead
writer's: a live pid may be a writer on another host sharing the directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory.checkpoint import _atomic

from .checkpoint_helpers import build_model

ROOT = Path(__file__).resolve().parents[1]
CFG = {
    "model": {
        "_target_": "modelfactory.blocks.Sequential",
        "layers": [
            {"_target_": "torch.nn.Linear", "in_features": 64, "out_features": 256},
            {"_target_": "torch.nn.ReLU"},
            {"_target_": "torch.nn.Linear", "in_features": 256, "out_features": 64},
        ],
    },
    "input_shape": [2, 64],
}
STEPS = ("write", "fsync", "replace")  # a chunk of a file's bytes, os.fsync, os.replace

# A zygote: imports once, saves the seed-0 model to `first`; then for each input line forks
# a writer that saves the seed-1 model to the target and kills itself just before the k-th
# call of one step.
ZYGOTE = f"""
import os, signal, sys
import torch
torch.set_num_threads(1)
import modelfactory as mf
from modelfactory.checkpoint import _writer
models = {{s: mf.build({CFG!r}, seed=s) for s in (0, 1)}}
mf.save(models[0], sys.argv[1])
print("ready", flush=True)

class Writes:  # a file whose writes go through `killing`
    def __init__(self, f, wrap):
        self.f, self.write = f, wrap(f.write)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()

for line in sys.stdin:
    target, step, k = line.split()
    pid = os.fork()
    if pid == 0:
        calls = []
        def killing(original):
            def call(*args, **kw):
                calls.append(1)
                if len(calls) == int(k):
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(*args, **kw)
            return call
        if step == "write":
            _writer.open = lambda *a, **kw: Writes(open(*a, **kw), killing)
        else:
            setattr(os, step, killing(getattr(os, step)))
        mf.save(models[1], target)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("killed" if os.WIFSIGNALED(status) else "finished", flush=True)
"""


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The old checkpoints, seed 0, saved by this process: a directory and a lone file."""
    base = tmp_path_factory.mktemp("old")
    model = mf.build(CFG, seed=0)
    return {
        "dir": mf.save(model, base / "ckpt").parent,
        "file": mf.save(model, base / "x.safetensors"),
    }


def _fresh(old: dict[str, Path], kind: str, dst: Path) -> Path:
    """A copy of the old checkpoint of ``kind`` in the new directory ``dst``: the target."""
    if kind == "dir":
        return Path(shutil.copytree(old["dir"], dst))
    dst.mkdir()
    return Path(shutil.copy(old["file"], dst / old["file"].name))


def test_a_save_killed_at_any_point_leaves_the_old_checkpoint_or_the_new(
    old: dict[str, Path], tmp_path: Path
) -> None:
    expected = {s: mf.build(CFG, seed=s).state_dict() for s in (0, 1)}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"}
    proc = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, str(tmp_path / "first")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    seen = {(kind, step): [] for kind in ("file", "dir") for step in STEPS}
    try:
        assert proc.stdout.readline().strip() == "ready"
        # Byte-identical across processes: the zygote saved the same seed-0 model.
        for name in ("model.safetensors", "config.yaml"):
            assert (tmp_path / "first" / name).read_bytes() == (old["dir"] / name).read_bytes()
        for kind, step in seen:
            for k in range(1, 50):
                target = _fresh(old, kind, tmp_path / f"{kind}-{step}-{k}")
                proc.stdin.write(f"{target} {step} {k}\n")
                proc.stdin.flush()
                if proc.stdout.readline().strip() == "finished":
                    break
                seen[kind, step].append(_read_one(target, expected))
    finally:
        proc.kill()
        proc.wait()
    print(seen)
    for kind in ("file", "dir"):
        writes, fsyncs, renames = (seen[kind, step] for step in STEPS)
        assert writes and set(writes) == {0}, kind  # every byte is written before the commit
        for points in (fsyncs, renames):  # the old checkpoint, then the new one
            assert points[0] == 0 and points == sorted(points), (kind, seen)
        assert fsyncs[-1] == 1, kind  # the last fsync makes the committed rename durable
        _orphans_are_removed_once_old(tmp_path / f"{kind}-write-1", kind)


def _read_one(target: Path, expected: dict[int, dict[str, torch.Tensor]]) -> int:
    """The target reads as exactly the old or the new checkpoint (config.yaml included: no
    warning); returns its seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = mf.load(target)
    seed = mf.config_of(model)["seed"]
    state = model.state_dict()
    assert state.keys() == expected[seed].keys()
    assert all(torch.equal(state[k], v) for k, v in expected[seed].items())
    return seed


def _orphans_are_removed_once_old(directory: Path, kind: str) -> None:
    """A killed writer's temporary file is removed by a later save once it is old enough (a
    fresh one could be a live writer's on another host)."""
    leftovers = list(directory.glob(".*.tmp"))
    assert leftovers, "the kill inside the first write left no temporary file"
    old_enough = time.time() - _atomic.ORPHAN_AGE_S - 60
    for tmp in leftovers:
        os.utime(tmp, (old_enough, old_enough))
    target = directory if kind == "dir" else next(directory.glob("*.safetensors"))
    mf.save(mf.build(CFG, seed=2), target)
    assert not list(directory.glob(".*.tmp"))


def test_save_removes_only_old_temporary_files_of_dead_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pid that is not alive here may be a live writer on another host sharing the
    directory: its temporary file goes only once it is also old."""
    live, dead = 1000, 2000
    monkeypatch.setattr(_atomic, "_alive", lambda pid: pid == live)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    old = os.path.getmtime(ckpt) - _atomic.ORPHAN_AGE_S - 60
    tmps = {
        (pid, age): ckpt / f".model.safetensors.{pid}-{age}0000000.tmp"
        for pid in (live, dead)
        for age in ("old", "new")
    }
    for (_, age), tmp in tmps.items():
        tmp.write_bytes(b"partial")
        if age == "old":
            os.utime(tmp, (old, old))
    mf.save(build_model("mlp"), ckpt)
    assert {k for k, tmp in tmps.items() if tmp.exists()} == {
        (live, "old"),
        (live, "new"),
        (dead, "new"),
    }
