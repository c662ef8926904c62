"""A checkpoint overwritten in place after loading (``cp new old``, or written and truncated)
changes nothing in a model loaded with the default ``mmap=False`` and does not crash the
process; ``mmap=True`` is zero-copy and promises nothing once the file changes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import modelfactory as mf

from .conftest import RELU, lin, seq

ROOT = Path(__file__).resolve().parents[1]
CFG = {"model": seq(lin(256, 256), RELU, lin(256, 256)), "input_shape": [2, 256]}

# Loads, overwrites the file in place, then reads every weight: a SIGBUS shows as -7.
READER = """
import hashlib, shutil, sys, torch, modelfactory as mf
path, file, other, how, mmap = sys.argv[1:]
model = mf.load(path, mmap=mmap == "1")
if how == "cp":
    shutil.copyfile(other, file)  # what `cp new old` does: truncate, then write in place
else:
    data = open(other, "rb").read()[::-1]
    with open(file, "r+b") as f:
        f.write(data)
        f.truncate(4096)
h = hashlib.sha256()
for t in model.state_dict().values():
    h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
print(h.hexdigest())
"""


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _run(path: Path, file: Path, other: Path, how: str, mmap: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [str(path), str(file), str(other), how, str(int(mmap))]
    return subprocess.run(
        [sys.executable, "-c", READER, *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(params=["single", "sharded"])
def checkpoints(request, tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """(checkpoint dir, the file to overwrite, a file of another save, the saved digest)."""
    size = None if request.param == "single" else 300_000
    name = "model.safetensors" if size is None else "model-00001-of-00002.safetensors"
    model = mf.build(CFG, seed=0)
    mf.save(model, tmp_path / "old", max_shard_size=size)
    mf.save(mf.build(CFG, seed=1), tmp_path / "new", max_shard_size=size)
    return tmp_path / "old", tmp_path / "old" / name, tmp_path / "new" / name, _digest(model)


@pytest.mark.parametrize("how", ["cp", "write and truncate"])
def test_a_loaded_model_survives_its_file_being_overwritten(checkpoints, how: str) -> None:
    path, file, other, saved = checkpoints
    r = _run(path, file, other, how, mmap=False)
    assert r.returncode == 0, r.stderr  # a SIGBUS would be -7
    assert r.stdout.split() == [saved]  # the weights are the ones loaded, not the new file's
    assert file.read_bytes() != other.read_bytes() or how == "cp"


def test_mmap_true_is_zero_copy_and_sees_the_file_change(checkpoints) -> None:
    """The documented trade-off: mapped weights are the file's pages."""
    path, file, other, saved = checkpoints
    truncated = _run(path, file, other, "write and truncate", mmap=True)
    print(f"mmap=True, file truncated: return code {truncated.returncode}")
    assert truncated.returncode == -signal.SIGBUS or truncated.stdout.split() != [saved]


def test_loaded_tensors_own_their_memory(tmp_path: Path) -> None:
    mf.save(mf.build(CFG), tmp_path / "c")
    owned = mf.load(tmp_path / "c")
    mapped = mf.load(tmp_path / "c", mmap=True)
    (tmp_path / "c" / "model.safetensors").unlink()
    for t in owned.state_dict().values():
        assert t.untyped_storage().data_ptr() % 64 == 0  # aligned like the file's tensors
        t.add_(1)  # writable, private
    pairs = zip(owned.state_dict().values(), mapped.state_dict().values(), strict=True)
    assert all(torch.equal(a, b + 1) for a, b in pairs)


def test_owned_reads_in_parallel_chunks_are_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tensors split into many chunks read by several threads at once (os.preadv)."""
    from modelfactory.checkpoint import _reader

    monkeypatch.setattr(_reader, "CHUNK", 1000)  # a 256x256 float32 weight: 263 chunks
    model = mf.build(CFG, seed=2)
    mf.save(model, tmp_path / "c")
    assert _digest(mf.load(tmp_path / "c")) == _digest(model)
    owned = _reader.read_owned(tmp_path / "c" / "model.safetensors", threads=3)
    assert all(torch.equal(owned[k], v) for k, v in model.state_dict().items())
