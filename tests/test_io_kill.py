"""Atomic saves under SIGKILL, and byte-identical saves across processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import modelfactory as mf
from modelfactory.checkpoint import _atomic

ROOT = Path(__file__).resolve().parents[1]
CFG = {
    "model": {
        "_target_": "modelfactory.blocks.Sequential",
        "layers": [
            {"_target_": "torch.nn.Linear", "in_features": 1024, "out_features": 4096},
            {"_target_": "torch.nn.ReLU"},
            {"_target_": "torch.nn.Linear", "in_features": 4096, "out_features": 1024},
        ],
    },
    "input_shape": [2, 1024],
}

# A zygote: imports once, saves the seed-0 model to `first`, then on each input line forks
# a writer that saves the seed-0 and seed-1 models to `target` in turn, forever.
ZYGOTE = f"""
import os, sys
import torch
torch.set_num_threads(1)
import modelfactory as mf
cfg = {CFG!r}
target, first = sys.argv[1], sys.argv[2]
models = [mf.build(cfg, seed=s) for s in (0, 1)]
mf.save(models[0], first)
mf.save(models[0], target)
print("ready", flush=True)
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        i = 1
        while True:
            mf.save(models[i % 2], target)
            i += 1
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""

KILLS = 24


def test_killed_saves_leave_old_or_new_checkpoint(tmp_path: Path) -> None:
    target, first = tmp_path / "ckpt", tmp_path / "first"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"}
    proc = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, str(target), str(first)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    expected = {s: mf.build(CFG, seed=s).state_dict() for s in (0, 1)}
    rng = random.Random(0)
    seen_seeds, mid_write = set(), 0
    try:
        assert proc.stdout.readline().strip() == "ready"
        # Byte-identical across processes: this process saves the same model.
        mf.save(mf.build(CFG, seed=0), tmp_path / "mine")
        for name in ("model.safetensors", "config.yaml"):
            assert (tmp_path / "mine" / name).read_bytes() == (first / name).read_bytes()
        for i in range(KILLS):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            pid = int(proc.stdout.readline())
            if i % 2:  # at a random moment
                time.sleep(rng.uniform(0.0, 0.5))
            else:  # while it writes: soon after its temporary file appears
                _wait_for(lambda: any(target.glob(".model.safetensors.*.tmp")))
                time.sleep(rng.uniform(0.0, 0.01))
            os.kill(pid, signal.SIGKILL)
            assert proc.stdout.readline().strip() == "reaped"
            mid_write += any(target.glob(".*.tmp"))  # left for the next save to clean up
            with warnings.catch_warnings():
                # config.yaml switches with model.safetensors, as one set: never another's
                warnings.simplefilter("error")
                model = mf.load(target)
            seed = mf.config_of(model)["seed"]
            seen_seeds.add(seed)
            state = model.state_dict()
            assert all(torch.equal(state[k], v) for k, v in expected[seed].items())
    finally:
        proc.kill()
        proc.wait()
    # The killed writers' temporary files are removed by a later save once they are old
    # enough (a fresh one could be a live writer's on another host): age them, then save.
    leftovers = list(target.glob(".*.tmp"))
    old = time.time() - _atomic.ORPHAN_AGE_S - 60
    for tmp in leftovers:
        os.utime(tmp, (old, old))
    mf.save(model, target)
    assert not list(target.glob(".*.tmp"))
    print(f"{KILLS} kills, {mid_write} inside a write, checkpoints seen: seeds {seen_seeds}")
    assert mid_write > 0, "no kill landed inside a write"
    assert seen_seeds == {0, 1}


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)
