"""Checkpoints that change while in use. A checkpoint overwritten in place after loading
(``cp new old``, or written and truncated) changes nothing in a model loaded with the
default ``mmap=False`` (it owns its memory, read in parallel chunks) and does not crash the
process; ``mmap=True`` is zero-copy and promises nothing once the file changes. A save
landing between the two reads of one load is never mixed into it. Across processes: two
fresh processes write byte-identical files, writers save into one directory at once, and a
reader racing a writer sees one save or the other."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory._sample import run_sample, sample_input
from modelfactory.checkpoint import _files
from modelfactory.checkpoint import _format as _safefile
from modelfactory.configs import compose
from modelfactory.errors import CheckpointError

from .checkpoint_helpers import assert_same
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


def _two_saves(tmp_path: Path) -> tuple[Path, Path, nn.Module]:
    """``ckpt.safetensors`` (seed 0) and, beside it, a save of the same architecture with
    seed 1 ready to be renamed over it: the configs differ only in their seed."""
    cfg = {"model": seq(lin(4, 8), RELU, lin(8, 2)), "input_shape": [1, 4]}
    file = mf.save(mf.build(cfg, seed=0), tmp_path / "ckpt.safetensors")
    new = mf.build(cfg, seed=1)
    return file, mf.save(new, tmp_path / "new.safetensors"), new


# reader -> the function it calls second, after reading the document
READERS = {
    "load": "read_tensors",
    "load_weights": "read_tensors",
    "load_tensors": "read_tensors",
    "verify": "first_bad_tensor",
}


def _assert_reads_as(reader: str, file: Path, new: nn.Module) -> None:
    """``reader`` sees ``new``, document and tensors alike."""
    if reader == "load":
        back = mf.load(file)
        assert mf.config_of(back)["seed"] == 1
        assert_same(new, back)
    elif reader == "load_weights":
        back = mf.load_weights(mf.build(mf.config_of(new), seed=5), file)
        assert_same(new, back)
    elif reader == "load_tensors":
        back = mf.load_tensors(file)
        assert back.keys() == new.state_dict().keys()
        assert all(torch.equal(t, new.state_dict()[k]) for k, t in back.items())
    else:
        assert mf.verify(file).tensors == 4


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_save_landing_between_two_reads_is_never_mixed(
    reader: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document is read, then the file is replaced, then the tensors are read: the result
    must be the new checkpoint entirely (never the old config with the new weights)."""
    file, new_file, new = _two_saves(tmp_path)
    second_read = READERS[reader]
    original = getattr(_safefile, second_read)
    calls = []

    def replaced_first(*args: Any) -> Any:
        if not calls:
            os.replace(new_file, file)
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(_safefile, second_read, replaced_first)
    _assert_reads_as(reader, file, new)
    assert len(calls) == 2  # the mixed read was noticed and done again


def test_a_file_that_keeps_changing_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file, new_file, _ = _two_saves(tmp_path)
    original = _safefile.read_tensors

    def replaced_every_time(f: Path, *args: Any) -> dict[str, torch.Tensor]:
        os.link(file, new_file.with_name("spare.safetensors"))  # a new inode each time
        os.replace(new_file, file)
        os.replace(new_file.with_name("spare.safetensors"), new_file)
        return original(f, *args)

    monkeypatch.setattr(_safefile, "read_tensors", replaced_every_time)
    with pytest.raises(CheckpointError, match="changed while being read"):
        mf.load(file)


def test_a_directory_whose_layout_keeps_switching_is_read_with_saves_held_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read finds the file gone: a save switched one file to shards, or back. After two
    such retries the reader holds the directory's shared lock: the next save writes its files
    but waits to switch until the read is done, so a writer saving without pause cannot
    starve a reader (it did, under load, about one full run in ten)."""
    directory = tmp_path / "ckpt"
    models = [mf.build({**CFG, "seed": s}) for s in (0, 1)]
    mf.save(models[0], directory)
    find, saves = _files.checkpoint_paths, []

    def found_then_switched(path: Path) -> tuple[Path, Path | None]:
        found = find(path)
        shards = "100KB" if len(saves) % 2 == 0 else None
        kwargs = {"max_shard_size": shards}
        saves.append(
            threading.Thread(target=mf.save, args=(models[len(saves) % 2 - 1], path), kwargs=kwargs)
        )
        saves[-1].start()
        saves[-1].join(timeout=60 if len(saves) < 3 else 1)
        return found

    monkeypatch.setattr(_files, "checkpoint_paths", found_then_switched)
    back = mf.load(directory)
    assert len(saves) == 3
    assert not saves[0].is_alive() and not saves[1].is_alive()
    assert saves[2].is_alive()  # its switch waits for the read that holds the lock
    saves[2].join(timeout=60)
    assert not saves[2].is_alive()
    assert_same(back, models[0])  # the second save's (one file), read whole
    assert_same(mf.load(directory), models[1])  # then the third save switched


def run_python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen, timeout: float = 120) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return out


SAVE = """
import sys, modelfactory as mf
from modelfactory.configs import compose
model = mf.build(compose(sys.argv[2:]))
mf.save(model, sys.argv[1])
"""


def test_two_fresh_processes_write_byte_identical_checkpoints(tmp_path: Path):
    for overrides in (["model=gpt_small", "seed=3", "init=xavier"], ["model=resnet", "seed=1"]):
        procs = [run_python(SAVE, str(tmp_path / f"run{i}"), *overrides) for i in range(2)]
        for p in procs:
            finish(p)
        a, b = ((tmp_path / f"run{i}" / "model.safetensors").read_bytes() for i in range(2))
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), overrides
        assert (tmp_path / "run0" / "config.yaml").read_bytes() == (
            tmp_path / "run1" / "config.yaml"
        ).read_bytes()


def test_concurrent_writers_into_one_directory(tmp_path: Path):
    procs = [
        run_python(SAVE, str(tmp_path / f"ckpt{i}"), "model=mlp", f"seed={i}") for i in range(4)
    ]
    for p in procs:
        finish(p)
    for i in range(4):
        # the composed DictConfig, not a resolved copy: that keeps the model's knobs
        expected = mf.build(compose(["model=mlp", f"seed={i}"]))
        restored = mf.load(tmp_path / f"ckpt{i}")
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                expected.state_dict().values(), restored.state_dict().values(), strict=True
            )
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"ckpt{i}" for i in range(4)
    ]  # no temp files left


WRITER = """
import sys, modelfactory as mf
from modelfactory.configs import compose
models = [mf.build(compose(["model=gpt_small", f"seed={s}"])) for s in (0, 1)]
for i in range(int(sys.argv[2])):
    mf.save(models[i % 2], sys.argv[1])
"""


def test_a_reader_never_sees_a_mixed_or_partial_checkpoint(tmp_path: Path):
    from modelfactory.configs import compose

    target = tmp_path / "shared"
    cfgs = [compose(["model=gpt_small", f"seed={s}"]) for s in (0, 1)]
    models = [mf.build(c) for c in cfgs]
    mf.save(models[0], target)
    x = sample_input(
        __import__("modelfactory._config", fromlist=["normalize"]).normalize(cfgs[0]),
        torch.device("cpu"),
    )
    expected = [run_sample(m, x) for m in models]
    writer = run_python(WRITER, str(target), "40")
    seen = set()
    import warnings

    while writer.poll() is None or len(seen) == 0:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # config.yaml may lag one save behind: the embedded config wins
            y = run_sample(mf.load(target), x)
        match = [i for i, e in enumerate(expected) if torch.equal(y, e)]
        assert len(match) == 1, "a load returned neither the old nor the new checkpoint"
        seen.add(match[0])
        if writer.poll() is not None:
            break
    finish(writer)
    assert seen  # at least one load ran during the overwrites


def test_a_read_that_saves_keep_overtaking_is_tried_again_with_saves_held_off(tmp_path: Path):
    # Under load a writer saving without pause can overtake every attempt at reading one file;
    # the read is then tried once more holding the directory's shared lock, so that saves
    # wait to switch files until it is done (CI saw the ten attempts all overtaken).
    import fcntl

    from modelfactory.checkpoint._atomic import overtaken

    mf.save(
        mf.build({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}), tmp_path
    )
    attempts: list[bool] = []

    def read(file: Path) -> str:
        fd = os.open(tmp_path, os.O_RDONLY)
        try:  # does a save's exclusive lock wait now?
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            attempts.append(False)
        except BlockingIOError:
            attempts.append(True)
        finally:
            os.close(fd)
        if len(attempts) == 1:
            raise overtaken(file)
        return "read"

    assert _files.find_and_read(tmp_path, read)[2] == "read"
    assert attempts == [False, True]
