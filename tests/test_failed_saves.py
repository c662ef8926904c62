"""A save that cannot be done is a CheckpointError naming the file, and leaves what was there
(the old checkpoint and its config.yaml, bit for bit, and no temporary file): a full disk, a
read-only directory, a config.yaml that is a directory, a path that is not a checkpoint,
tensors or a config that safetensors or YAML cannot store."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory.checkpoint import _format as fmt
from modelfactory.errors import CheckpointError

from .checkpoint_helpers import build_model
from .conftest import lin
from .save_helpers import CFG, SHARD, assert_untouched, old_checkpoint


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"z": torch.ones(2, dtype=torch.complex128)}, "complex128"),
        ({"f8": torch.zeros(2).to(torch.float8_e4m3fnuz)}, "float8_e4m3fnuz"),
        ({"__modelfactory_pad__.1": torch.ones(2)}, "reserved"),
        ({"a": (x := torch.ones(2)), "__modelfactory_pad__.1": x}, "reserved"),
    ],
    ids=["complex128", "float8_e4m3fnuz", "pad name", "pad alias"],
)
def test_save_tensors_refuses_what_it_cannot_store(obj: dict, match: str, tmp_path: Path) -> None:
    file = tmp_path / "x.safetensors"
    with pytest.raises(CheckpointError, match=rf"(?s)x\.safetensors.*{match}"):
        mf.save_tensors(obj, file)
    assert not list(tmp_path.iterdir())


def test_save_to_an_existing_file_that_is_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.bin"
    path.write_text("keep me")
    with pytest.raises(CheckpointError, match=r"ckpt\.bin: exists and is not a directory"):
        mf.save(build_model("mlp"), path)
    assert path.read_text() == "keep me"


def test_config_that_is_not_plain_data_is_refused_at_save(tmp_path: Path) -> None:
    model = mf.build({"model": lin(2, 3, dtype=torch.float64), "input_shape": [1, 2]})
    with pytest.raises(CheckpointError, match=r"(?s)plain YAML/JSON.*model\.dtype.*torch\.dtype"):
        mf.save(model, tmp_path / "c")
    assert not (tmp_path / "c").exists()


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
    d, before = old_checkpoint(tmp_path, old_size)
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fmt, "write_file", _fail_on_call(n, full, fmt.write_file))
    with pytest.raises(CheckpointError, match=rf"c/{name}: cannot write .*No space left"):
        mf.save(mf.build(CFG, seed=1), d, max_shard_size=new_size)
    assert_untouched(d, before)


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
    d, before = old_checkpoint(tmp_path, size)
    if os.geteuid() != 0:  # the real thing (root writes through a read-only mode)
        d.chmod(0o555)
        try:
            with pytest.raises(CheckpointError, match=r"c/\S+: cannot write .*Permission denied"):
                mf.save(mf.build(CFG, seed=1), d, max_shard_size=size)
        finally:
            d.chmod(0o755)
        assert_untouched(d, before)
    denied = PermissionError(errno.EACCES, "Permission denied")

    def refuse(path, *args, **kw):
        raise denied

    monkeypatch.setattr(fmt, "write_file", refuse)
    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(CheckpointError, match=r"c/\S+: cannot write .*Permission denied"):
        mf.save(mf.build(CFG, seed=1), d, max_shard_size=size)
    monkeypatch.undo()
    assert_untouched(d, before)


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
