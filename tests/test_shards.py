"""Sharded checkpoints: Hugging Face's layout, round trips, every reader, the CLI, the
memory a load takes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch

import modelfactory as mf
from modelfactory._app import job
from modelfactory.checkpoint import _format as fmt
from modelfactory.checkpoint._shards import parse_size
from modelfactory.errors import CheckpointError

from .checkpoint_helpers import assert_same, build_model
from .cli_helpers import checksums, run

ROOT = Path(__file__).resolve().parents[1]
INDEX = "model.safetensors.index.json"


def shard_names(n: int) -> list[str]:
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


@pytest.fixture
def gpt() -> torch.nn.Module:
    return build_model("gpt_small")


@pytest.fixture
def sharded(gpt: torch.nn.Module, tmp_path: Path) -> Path:
    mf.save(gpt, tmp_path / "ckpt", max_shard_size="100KB")
    return tmp_path / "ckpt"


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (10, 10),
        ("10KB", 10_000),
        ("500MB", 500_000_000),
        ("2GB", 2_000_000_000),
        ("1GiB", 2**30),
        ("1.5kb", 1500),
        (" 64 ", 64),
    ],
)
def test_max_shard_size_accepts_bytes_and_units(size: int | str, expected: int) -> None:
    assert parse_size(size, Path("x")) == expected


@pytest.mark.parametrize("size", ["2 parsecs", "GB", "", 0, -5, True, 1.5, "-1MB"])
def test_max_shard_size_refuses_what_is_not_a_size(size: object, gpt, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"model\.safetensors: max_shard_size=.*'2GB'"):
        mf.save(gpt, tmp_path / "c", max_shard_size=size)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_sharded_layout_is_hugging_faces(sharded: Path, gpt: torch.nn.Module) -> None:
    index = json.loads((sharded / INDEX).read_text())
    names = shard_names(7)
    assert sorted(os.listdir(sharded)) == sorted([*names, INDEX, "config.yaml"])
    assert set(index) == {"metadata", "weight_map"}
    assert set(index["weight_map"].values()) == set(names)
    stored = {}
    for name in names:  # each shard is an ordinary safetensors file, under 100 KB of tensors
        part = safetensors.torch.load_file(sharded / name)
        tensors = {k: t for k, t in part.items() if not k.startswith("__modelfactory_pad__")}
        assert {k for k, s in index["weight_map"].items() if s == name} == set(tensors)
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        assert nbytes <= 100_000 or len(tensors) == 1
        meta = json.loads((sharded / name).read_bytes()[8:][: 2**20].split(b"}}", 1)[0] + b"}}")
        assert "modelfactory" not in meta.get("__metadata__", {})  # the document lives once
        stored.update(tensors)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in stored.values()
    )
    # the tied head is stored once, as the embedding
    assert "head.weight" not in index["weight_map"] and "embed.tok.weight" in stored
    state = gpt.state_dict()
    assert all(torch.equal(stored[k], state[k]) for k in stored)
    doc = json.loads(index["metadata"]["modelfactory"])
    assert doc["shards"] == names and doc["format_version"] == 2
    assert doc["aliases"] == {"head.weight": "embed.tok.weight"}


def test_sharded_round_trip_through_every_reader(sharded: Path, gpt: torch.nn.Module) -> None:
    for path in (sharded, sharded / INDEX):
        back = mf.load(path)
        assert_same(gpt, back)
        assert back.head.weight is back.embed.tok.weight
        assert mf.config_of(back)["model"] == mf.config_of(gpt)["model"]
    assert_same(gpt, mf.load(sharded, mmap=True))
    filled = mf.load_weights(build_model("gpt_small", seed=9), sharded)
    assert_same(gpt, filled)
    assert filled.head.weight is filled.embed.tok.weight
    tensors = mf.load_tensors(sharded)
    assert all(torch.equal(tensors[k], v) for k, v in gpt.state_dict().items())
    checked = mf.verify(sharded)
    assert checked.file == sharded / INDEX and checked.tensors == 28
    assert checked.nbytes == sum(f.stat().st_size for f in sharded.glob("model*"))


def test_shards_are_read_in_parallel_threads(
    sharded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads, original = set(), fmt.read
    # Two reads must be under way at once to pass the barrier (a busy machine only makes
    # one wait longer for the other; reads made one after another would time out).
    together, calls = threading.Barrier(2, timeout=60), itertools.count()

    def recording(*args, **kw):
        threads.add(threading.current_thread().name)
        if next(calls) < 2:  # the first two shards: read at the same time
            together.wait()
        return original(*args, **kw)

    monkeypatch.setattr(fmt, "read", recording)
    if (os.cpu_count() or 1) > 1:
        mf.load(sharded)
        assert len(threads) == 2 and all(t.startswith("modelfactory-shard") for t in threads)


def test_a_model_that_fits_one_shard_is_todays_single_file(gpt, tmp_path: Path) -> None:
    file = mf.save(gpt, tmp_path / "c", max_shard_size="2GB")
    assert file == tmp_path / "c" / "model.safetensors"
    assert sorted(os.listdir(tmp_path / "c")) == ["config.yaml", "model.safetensors"]
    plain = mf.save(gpt, tmp_path / "plain")
    assert file.read_bytes() == plain.read_bytes()


def test_switching_layouts_leaves_only_the_new_set(gpt, tmp_path: Path) -> None:
    d = tmp_path / "c"
    (d / "notes.txt").parent.mkdir()
    (d / "notes.txt").write_text("mine")
    for size, files in [
        ("100KB", [*shard_names(7), INDEX]),
        ("200KB", [*shard_names(3), INDEX]),
        (None, ["model.safetensors"]),
        ("200KB", [*shard_names(3), INDEX]),
    ]:
        mf.save(gpt, d, max_shard_size=size)
        assert sorted(os.listdir(d)) == sorted([*files, "config.yaml", "notes.txt"]), size
        assert_same(gpt, mf.load(d))


def test_sharded_save_to_a_file_name_is_refused(gpt, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"x\.safetensors: needs 7 shards .*directory"):
        mf.save(gpt, tmp_path / "x.safetensors", max_shard_size="100KB")
    mf.save(gpt, tmp_path / "y.safetensors", max_shard_size="2GB")  # one shard: fine
    assert_same(gpt, mf.load(tmp_path / "y.safetensors"))


def test_a_corrupt_shard_is_named(sharded: Path) -> None:
    shard = sharded / shard_names(7)[3]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"model-00004-of-00007\.safetensors: tensor '.*' does"
    ):
        mf.verify(sharded)


def test_a_missing_shard_or_one_of_another_save_is_refused(sharded: Path, gpt, tmp_path) -> None:
    other = tmp_path / "other"
    mf.save(build_model("gpt_small", seed=1), other, max_shard_size="100KB")
    name = shard_names(7)[2]
    (sharded / name).write_bytes((other / name).read_bytes())
    for read in (mf.load, mf.verify, mf.load_tensors):
        with pytest.raises(CheckpointError, match=rf"{name}: belongs to another save"):
            read(sharded)
    (sharded / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{name}: missing shard"):
        mf.load(sharded)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{nope", "not JSON"),
        ('{"weight_map": {}}', "not a modelfactory index"),
        ("[1]", "not a modelfactory index"),
    ],
)
def test_a_bad_index_is_a_clear_error(sharded: Path, text: str, match: str) -> None:
    (sharded / INDEX).write_text(text)
    with pytest.raises(CheckpointError, match=rf"{INDEX}: .*{match}"):
        mf.load(sharded)


def test_restore_and_verify_on_the_command_line_read_shards(sharded: Path, gpt) -> None:
    expected = job.checksum(job.sample_output(gpt, mf.config_of(gpt))[1])["sha256"]
    cwd = sharded.parent
    r = run(cwd, "restore=ckpt", "hydra.run.dir=out/r")
    assert r.returncode == 0, r.stderr
    assert checksums(r.stdout + r.stderr) == [expected]
    v = run(cwd, "verify=ckpt", "hydra.run.dir=out/v")
    assert v.returncode == 0, v.stderr
    assert "model.safetensors.index.json: OK, 28 tensors" in v.stdout + v.stderr


# A fresh process loads a 64 MB model (4 shards) and reports its peak RSS growth.
RSS = """
import sys, torch, modelfactory as mf
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            yield int(line.split()[1]) * 1024
path, small, mmap = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
mf.load(small, mmap=mmap)  # the imports and code paths, on a tiny model of the same kind
base = list(hwm())[1]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
model = mf.load(path, mmap=mmap)
print(list(hwm())[0] - base, sum(p.numel() * 4 for p in model.parameters()))
maps = open("/proc/self/maps").read()
print(int(any(part in maps for part in ("model-0000", "model.safetensors"))))
"""


@pytest.mark.parametrize("mmap", [False, True])
def test_peak_memory_of_a_load_is_one_copy(mmap: bool, tmp_path: Path) -> None:
    for name, width in (("big", 2048), ("small", 8)):
        block = {"_target_": "torch.nn.Linear", "in_features": width, "out_features": width}
        cfg = {"model": {"_target_": "modelfactory.blocks.Repeat", "n": 4, "block": block}}
        mf.save(mf.build(cfg), tmp_path / name, max_shard_size=(width + 1) * width * 4)
        assert len(list((tmp_path / name).glob("model-*"))) == 4
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", RSS, str(tmp_path / "big"), str(tmp_path / "small"), str(int(mmap))],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    growth, weights, mapped = map(int, r.stdout.split())
    print(f"mmap={mmap}: peak RSS growth {growth / 2**20:.1f} MiB for {weights / 2**20:.1f} MiB")
    assert growth < 1.3 * weights
    assert mapped == int(mmap)  # mmap=False keeps no mapping of the files


# Saves two models in turn into one directory, alternating layouts (3 shards, 2, one file).
WRITER = """
import sys, modelfactory as mf
from modelfactory.configs import compose
models = [mf.build(compose(["model=gpt_small", f"seed={s}"])) for s in (0, 1)]
sizes = ["100KB", "200KB", None]
for i in range(int(sys.argv[2])):
    mf.save(models[i % 2], sys.argv[1], max_shard_size=sizes[i % 3])
print("done", flush=True)
"""


def test_a_reader_racing_a_sharded_writer_sees_one_save_or_the_other(tmp_path: Path) -> None:
    models = [build_model("gpt_small", seed=s) for s in (0, 1)]
    states = [m.state_dict() for m in models]
    target = tmp_path / "shared"
    mf.save(models[0], target, max_shard_size="100KB")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), "30"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen, loads = set(), 0
    while writer.poll() is None or not loads:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # config.yaml always belongs to the same save
            back = mf.load(target).state_dict()
        match = [i for i, s in enumerate(states) if all(torch.equal(back[k], s[k]) for k in s)]
        assert len(match) == 1, "a load mixed two saves"
        seen.add(match[0])
        loads += 1
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0 and out.strip() == "done", err
    print(f"{loads} loads during 30 saves, saw seeds {seen}")


def test_another_tools_sharded_directory_reads_as_plain_tensors(tmp_path: Path) -> None:
    """save_pretrained's layout without modelfactory's document: load_tensors and
    load_weights read it; load and verify say what it is."""
    d = tmp_path / "hf"
    d.mkdir()
    parts = {
        "model-00001-of-00002.safetensors": {"a.weight": torch.ones(2, 3)},
        "model-00002-of-00002.safetensors": {
            "b.weight": torch.arange(4.0),
            "b.bias": torch.zeros(1),
        },
    }
    for name, tensors in parts.items():
        safetensors.torch.save_file(tensors, d / name, metadata={"format": "pt"})
    wmap = {k: name for name, tensors in parts.items() for k in tensors}
    (d / INDEX).write_text(json.dumps({"metadata": {"total_size": 40}, "weight_map": wmap}))
    tensors = mf.load_tensors(d)
    assert sorted(tensors) == ["a.weight", "b.bias", "b.weight"]
    assert torch.equal(tensors["b.weight"], torch.arange(4.0))
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2, bias=False)})
    mf.load_weights(model, d, prefix_map={"a.": "a."})
    assert torch.equal(model["a"].weight, torch.ones(2, 3))
    with pytest.raises(CheckpointError, match=rf"{INDEX}: not a modelfactory index"):
        mf.load(d)
    with pytest.raises(CheckpointError, match=rf"{INDEX}: has no modelfactory digests"):
        mf.verify(d)
