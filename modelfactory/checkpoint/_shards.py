"""Sharded checkpoints, in the layout Hugging Face's ``save_pretrained`` writes.

A directory holds ``model-00001-of-0000N.safetensors`` shards (each an ordinary
safetensors file, 64-byte aligned like a single file) and
``model.safetensors.index.json``::

    {"metadata": {"total_size": BYTES, "modelfactory": "<the document, JSON text>"},
     "weight_map": {"blocks.0.weight": "model-00001-of-00002.safetensors", ...}}

The modelfactory document (config, ties, digests of every tensor, the list of
``shards``) lives once, in the index; each shard's metadata holds only
``{"format": "pt", "modelfactory_set": <the document's digest>}``, which binds it to
its index, so a shard of another save is never mixed in.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from . import _format as fmt
from ._atomic import READ_ATTEMPTS, checked_first, identity, overtaken, unchanged
from ._commit import JOURNAL, recover
from ._config_copy import read_copy
from ._schema import short

__all__ = [
    "INDEX_FILE",
    "Check",
    "parse_size",
    "plan",
    "read_sharded",
    "sharded_files",
    "verify_sharded",
    "weight_map",
    "workers",
]

INDEX_FILE = "model.safetensors.index.json"
SET_KEY = "modelfactory_set"
_PLAIN = re.compile(r"[^./\\][^/\\]*\.safetensors")  # a shard of another tool's index
INDEX_MAX = 100 * 2**20  # bytes; safetensors caps a header at 100 MB too
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_size(size: int | str, file: Path) -> int:
    """``max_shard_size`` in bytes: an int, or ``"2GB"``, ``"500MB"``, ``"10KB"``, ``"1GiB"``."""
    m = (
        re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", size)
        if isinstance(size, str)
        else None
    )
    if m and m[2].lower() in _UNITS:
        size = int(float(m[1]) * _UNITS[m[2].lower()])
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise CheckpointError(
            file,
            f"max_shard_size={size!r}: expected "
            "a positive number of bytes, as an int or a string like '2GB', '500MB', '10KB'",
        )
    return size


def shard_names(n: int) -> list[str]:
    """``model-00001-of-0000N.safetensors``, ... for ``n`` shards."""
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def plan(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in the model's order; a shard is closed before the tensor
    that would take it over ``max_bytes`` (a bigger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, t in tensors.items():
        if shards[-1] and used + _nbytes(t) > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += _nbytes(t)
    return shards


def sharded_files(
    directory: Path, tensors: dict[str, torch.Tensor], doc: dict[str, Any], groups: list[list[str]]
) -> dict[str, Callable[[Path], None]]:
    """Final name -> writer of each file of a sharded set (the shards, then the index)."""
    names = shard_names(len(groups))
    full = fmt.complete(directory / INDEX_FILE, tensors, {**doc, "shards": names})
    meta = {"format": "pt", SET_KEY: full["digest"]}
    files: dict[str, Callable[[Path], None]] = {}
    for name, group in zip(names, groups, strict=True):
        part = {k: tensors[k] for k in group}
        files[name] = lambda tmp, part=part: fmt.write_file(tmp, part, meta)
    index = {
        "metadata": {
            "total_size": sum(_nbytes(t) for t in tensors.values()),
            fmt.META_KEY: fmt.doc_text(full),
        },
        "weight_map": {
            k: name for name, group in zip(names, groups, strict=True) for k in sorted(group)
        },
    }
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    files[INDEX_FILE] = lambda tmp: tmp.write_text(text)
    return files


class _Changed(Exception):
    """The set changed while it was read (or is inconsistent): ``file`` and why."""

    def __init__(self, file: Path, why: str) -> None:
        self.file, self.why = file, why


def _index_doc(
    index_file: Path, fh: Any, require: str | None
) -> tuple[dict | None, dict[str, str]]:
    """The checked document and weight map of an open index file; with ``require=None`` the
    document of another tool's index is ``None``."""
    text = fh.read(INDEX_MAX + 1)
    if len(text) > INDEX_MAX:
        raise CheckpointError(index_file, f"is over {INDEX_MAX:,} bytes: not an index")
    try:
        index = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(index_file, f"not a readable index: not JSON ({e})") from e
    meta = index.get("metadata") if isinstance(index, dict) else None
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    ok_map = isinstance(wmap, dict) and all(isinstance(v, str) for v in wmap.values())
    if not isinstance(meta, dict) or not isinstance(meta.get(fmt.META_KEY), str):
        odd = [v for v in wmap.values() if not _PLAIN.fullmatch(v)] if ok_map else []
        if require is None and ok_map and not odd:
            return None, wmap  # another tool's index (save_pretrained): plain tensors
        if require is None and odd:
            raise CheckpointError(
                index_file, f"shard {short(odd[0])} is not a .safetensors file name beside it"
            )
        raise CheckpointError(
            index_file,
            "not a modelfactory index: expected 'metadata' with a 'modelfactory' entry (written "
            "by another tool?); read its shards with load_tensors() or load_weights()",
        )
    doc = fmt.parse_doc(index_file, meta[fmt.META_KEY], require)
    shards = doc["shards"]
    if not shards or shards != shard_names(len(shards)) or not ok_map:
        raise CheckpointError(
            index_file,
            f"corrupt index: expected shards named model-NNNNN-of-NNNNN.safetensors and a "
            f"'weight_map' name -> shard, got shards {short(shards)}",
        )
    if set(wmap) != set(doc["tensors"]) or not set(wmap.values()) <= set(shards):
        raise CheckpointError(
            index_file, "corrupt index: its 'weight_map' does not list the document's tensors"
        )
    return doc, wmap


def weight_map(index_file: Path) -> dict[str, str]:
    """The ``weight_map`` of an index, modelfactory's or another tool's (``save_pretrained``),
    read as a checkpoint's is: at most ``INDEX_MAX`` bytes, JSON nested too deeply refused,
    shards named by plain file names beside it.

    Raises:
        CheckpointError: naming the index.
    """
    try:
        fh = open(index_file, "rb")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise CheckpointError(index_file, f"cannot open it ({e})") from e
    with fh:
        return _index_doc(index_file, fh, None)[1]


def _in_set(file: Path, doc: dict | None, read: Callable[[], Any]) -> Any:
    """``read()`` of a shard, whose header (``read()[0]`` or ``read()``) must be of ``doc``'s
    set; a shard that is gone or of another save means the set changed under the reader."""
    try:
        result = read()
    except CheckpointError as e:
        if _gone(file):  # removed by a save switching sets: read the set again
            raise _Changed(file, "missing shard: expected by model.safetensors.index.json") from e
        raise
    header = result[0] if isinstance(result, tuple) else result
    if doc is not None and header.meta.get(SET_KEY) != doc["digest"]:
        raise _Changed(file, "belongs to another save than model.safetensors.index.json beside it")
    return result


def _gone(file: Path) -> bool:
    """No file there (a FIFO or a name too long is there, and wrong: not gone)."""
    try:
        os.lstat(file)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _read_shard(
    file: Path, doc: dict | None, wmap: dict[str, str], mmap: bool | None
) -> tuple[fmt.Header, dict[str, torch.Tensor]]:
    """A shard's header and (unless ``mmap`` is ``None``) its tensors."""
    if mmap is None:
        header, tensors = _in_set(file, doc, lambda: fmt.read_header(file)), {}
    else:
        header, tensors = _in_set(file, doc, lambda: fmt.read(file, mmap=mmap))
    if set(header.index) != {k for k, s in wmap.items() if s == file.name}:
        raise _Changed(file, "holds other tensors than model.safetensors.index.json says")
    return header, tensors


def _shards_of(doc: dict | None, wmap: dict[str, str]) -> list[str]:
    return doc["shards"] if doc is not None else sorted(set(wmap.values()))


def workers(tasks: int) -> int:
    """Threads for reading ``tasks`` files or chunks at once."""
    return min(tasks, os.cpu_count() or 1, 8)


def _each_shard(index_file: Path, names: list[str], work: Callable[[Path], Any]) -> list[Any]:
    """``work(shard file)`` for every shard, in parallel threads (reads release the GIL)."""
    files = [index_file.with_name(s) for s in names]
    threads = workers(len(files))
    if threads <= 1:
        return [work(f) for f in files]
    with ThreadPoolExecutor(threads, thread_name_prefix="modelfactory-shard") as pool:
        return list(pool.map(work, files))


def _read_consistent(index_file: Path, attempt: Callable[[Any], Any]) -> Any:
    """``attempt(open index)``, read again while the set changes under it (a save landing)."""
    for _ in range(READ_ATTEMPTS):
        try:
            fh = open(index_file, "rb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise CheckpointError(index_file, f"cannot open it ({e})") from e
        with fh:
            before = identity(os.fstat(fh.fileno()))
            try:
                result = attempt(fh)
            except _Changed as e:
                if unchanged(index_file, before) and not (index_file.parent / JOURNAL).exists():
                    raise CheckpointError(e.file, e.why) from None
                recover(index_file.parent)
                continue
            if unchanged(index_file, before):
                return result
    raise overtaken(index_file, "the set")


Check = Callable[[fmt.Header], Any]


def read_sharded(
    index_file: Path,
    *,
    require: str | None = None,
    mmap: bool | None = True,
    copy: Path | None = None,
    check: Check | None = None,
) -> tuple[fmt.Header, dict[str, torch.Tensor]]:
    """The document and every tensor of a sharded checkpoint, all of one save (and the bytes
    of its ``copy``, ``config.yaml``, renamed after the index by a save). ``check(header)``
    runs on the index's document before any shard is opened (see ``checked_first``); what
    it returns is the header's ``checked``. ``mmap=None`` reads the headers alone (every
    shard's checked, no tensor data read): the tensors returned are then ``meta`` tensors
    of the stored shapes and dtypes."""

    maps: dict[Any, dict[str, str]] = {}  # the index's weight map, by the file read

    def first() -> fmt.Header:  # the index's document alone, for the check
        def doc(fh: Any) -> fmt.Header:
            ident = identity(os.fstat(fh.fileno()))
            doc, maps[ident] = _index_doc(index_file, fh, require)
            return fmt.Header(index_file, doc, {}, ident=ident)

        return _read_consistent(index_file, doc)

    def rest(
        checked_doc: fmt.Header | None, checked: Any
    ) -> tuple[fmt.Header, dict[str, torch.Tensor]] | None:
        return _read_consistent(index_file, lambda fh: attempt(fh, checked_doc, checked))

    def attempt(
        fh: Any, checked_doc: fmt.Header | None, checked: Any
    ) -> tuple[fmt.Header, dict[str, torch.Tensor]] | None:
        if checked_doc is None:
            doc, wmap = _index_doc(index_file, fh, require)
        elif identity(os.fstat(fh.fileno())) == checked_doc.ident:
            doc, wmap = checked_doc.doc, maps[checked_doc.ident]  # the index checked
        else:
            return None  # another save than the one checked: check that one first
        parts = _each_shard(
            index_file, _shards_of(doc, wmap), lambda f: _read_shard(f, doc, wmap, mmap)
        )
        index = {k: v for header, _ in parts for k, v in header.index.items()}
        if doc is not None:
            fmt.check_index(index_file, doc, index)
        header = fmt.Header(index_file, doc, index, copy=read_copy(copy), checked=checked)
        if mmap is None:
            return header, fmt.stand_ins(index)
        return header, {k: t for _, ts in parts for k, t in ts.items()}

    return checked_first(index_file, first, check, rest)


def verify_sharded(index_file: Path) -> tuple[int, int]:
    """Recompute every shard's digests; returns ``(tensors, bytes)`` checked.

    Raises:
        CheckpointError: naming the shard and the first tensor whose bytes changed.
    """

    def check(file: Path, doc: dict, wmap: dict[str, str]) -> tuple[int, int]:
        header = _in_set(file, doc, lambda: fmt.read_header(file))
        listed = {k: doc["tensors"][k] for k, s in wmap.items() if s == file.name}
        bad = fmt.first_bad_tensor(header, listed)
        if bad is not None:
            raise CheckpointError(
                file, f"tensor {bad!r} does not match the digest stored at save time: corrupt data"
            )
        return len(listed), file.stat().st_size

    def attempt(fh: Any) -> tuple[int, int]:
        doc, wmap = _index_doc(index_file, fh, None)
        if doc is None:
            raise CheckpointError(
                index_file, "has no modelfactory digests to verify (saved by another tool)"
            )
        counts = _each_shard(index_file, doc["shards"], lambda f: check(f, doc, wmap))
        return sum(n for n, _ in counts), sum(b for _, b in counts) + index_file.stat().st_size

    return _read_consistent(index_file, attempt)
