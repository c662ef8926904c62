"""Finding a checkpoint's files and reading them: one file or a sharded set, whatever path
names it (the directory, its ``model.safetensors``, its index, any ``.safetensors`` file),
with the caller's check of the document between the header and the weights."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..errors import CheckpointError
from . import _format as fmt
from ._atomic import (
    checked_first,
    identity,
    missing,
    read_one_version,
    vanished,
    was_overtaken,
)
from ._commit import recover, settled
from ._config_copy import read_copy
from ._shards import INDEX_FILE, Check, read_sharded, workers

__all__ = ["checkpoint_paths", "find_and_read", "read_any", "stored_bytes"]

T = TypeVar("T")


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(file, config.yaml copy or None)`` for a checkpoint directory, its
    ``model.safetensors`` or index, or any ``.safetensors`` file. A switch that an
    interrupted save left half done is completed first."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if path.is_dir() or path.name in (fmt.MODEL_FILE, INDEX_FILE):
        recover(directory)
    if path.is_dir():
        path = path / (INDEX_FILE if (path / INDEX_FILE).is_file() else fmt.MODEL_FILE)
    elif path.name not in (fmt.MODEL_FILE, INDEX_FILE):
        return path, None
    copy = directory / fmt.CONFIG_FILE
    # Whatever is there (a directory, a FIFO, a dangling link) is the copy's problem:
    # compare_copy warns.
    return path, copy if copy.exists() or copy.is_symlink() else None


def find_and_read(
    path: str | os.PathLike, read: Callable[[Path], T]
) -> tuple[Path, Path | None, T]:
    """``(file, config.yaml copy, read(file))`` for a checkpoint ``path``. In a directory the
    file is found again when a save switched layouts between finding it and reading it
    (one file to shards, or back: the file found is gone, or was when it was opened).
    Once that has happened twice, or saves overtook the read of one file again and again,
    saves wait to switch while the file is found and read."""
    held = False
    for attempt in range(_UNLOCKED + 1):
        held = held or attempt == _UNLOCKED
        with settled(Path(path)) if held else contextlib.nullcontext():
            file, copy = checkpoint_paths(path)
            try:
                return file, copy, read(file)
            except CheckpointError as e:
                gone = vanished(e) or not file.exists()
                if held or not (gone or was_overtaken(e)) or not Path(path).is_dir():
                    raise
                held = was_overtaken(e)  # the next attempt holds saves off
    raise AssertionError("unreachable")


_UNLOCKED = 2  # layout switches a directory read retries before it holds saves off


def stored_bytes(header: fmt.Header) -> int:
    """The bytes on disk of a checkpoint's weight files (its shards, for an index): what its
    tensors can hold at most, whatever its document says."""
    doc = header.doc or {}
    files = [header.file.with_name(s) for s in doc.get("shards", [])] or [header.file]
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError:  # a shard gone: reading it reports that
            continue
    return total


def _identity(file: Path) -> tuple[int, ...]:
    """The identity of the file at ``file`` now; one a save renamed away is a
    ``CheckpointError`` that says it vanished (the reader finds the checkpoint again)."""
    try:
        return identity(os.stat(file))
    except FileNotFoundError as e:
        raise missing(file) from e


def read_any(
    file: Path,
    *,
    require: str | None = None,
    mmap: bool | None = True,
    copy: Path | None = None,
    check: Check | None = None,
) -> tuple[fmt.Header, dict[str, torch.Tensor]]:
    """A single file or a sharded set, by ``file``'s name; ``header.copy`` holds the bytes
    of ``copy`` (``config.yaml``) as read with that version of the checkpoint. With
    ``mmap=None`` only headers are read: the tensors are ``meta`` stand-ins.

    ``check(header)`` runs once the header and its document are read and checked, before
    any tensor data is read (a refusal reads none); what it returns is ``header.checked``.
    A save that lands before the weights are read is checked in turn (``checked_first``).
    """
    if file.name.endswith(".index.json"):
        return read_sharded(file, require=require, mmap=mmap, copy=copy, check=check)

    def first() -> fmt.Header:  # the header alone, and the file it was read from
        def once() -> fmt.Header:
            header = fmt.read_header(file, require=require)
            header.ident = _identity(file)  # as opened: read_one_version checks it stayed so
            return header

        return read_one_version(file, once)

    def rest(
        checked_header: fmt.Header | None, checked: object
    ) -> tuple[fmt.Header, dict[str, torch.Tensor]] | None:
        def once() -> tuple[fmt.Header, dict[str, torch.Tensor]] | None:
            if checked_header is None:
                header = fmt.read_header(file, require=require)
            elif _identity(file) == checked_header.ident:
                header = checked_header  # the very file whose header was checked
            else:
                return None  # another save than the one checked: check that one first
            header.checked = checked
            if mmap is None:
                tensors = fmt.stand_ins(header.index)
            else:
                tensors = fmt.read_tensors(file, mmap, workers(2**30))
            header.copy = read_copy(copy)  # a save renames the copy after the file
            return header, tensors

        return read_one_version(file, once)

    return checked_first(file, first, check, rest)
