"""The checkpoint file format: one-copy tensor tables, the metadata document, the header.

A modelfactory file is an ordinary safetensors file whose metadata holds ONE
key, ``modelfactory``, a JSON document (one key, because safetensors writes
its metadata mapping in a random order and saves must be byte-identical).
That document carries the format version, what the file holds, and a digest
of every tensor plus one of the document itself: the format has no checksum
of its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import CheckpointError
from ._atomic import atomic_write_or_fail, missing, read_one_version
from ._bounds import check_shapes
from ._reader import read_owned
from ._schema import is_count, schema_problems, short
from ._version import FORMAT_VERSION, check_version, upgrade
from ._writer import PAD_PREFIX, dtype_name, dtype_of, unsupported, write_file

META_KEY = "modelfactory"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def tensor_digest(t: torch.Tensor) -> str:
    """Hash of a tensor's bytes as stored (contiguous, little-endian)."""
    data = t.detach().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data).hexdigest()


def _doc_digest(doc: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in doc.items() if k != "digest"}, separators=(",", ":"))
    return hashlib.blake2b(body.encode(), digest_size=16).hexdigest()


def dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each shared tensor once: ``(stored, aliases)`` with ``aliases[name] = stored name``.

    Identical views of one storage (tied weights, a module used twice) become aliases;
    other overlaps are copied, since safetensors cannot store them.
    """
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in tensors.items():
        if t.device.type == "meta":
            raise ValueError(f"tensor {name!r} is on the meta device: it holds no values")
        t = t.detach().to("cpu")
        if t.numel() == 0:
            stored[name] = t.contiguous()
            continue
        ptr = t.untyped_storage().data_ptr()
        view = (ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        if not t.is_contiguous():
            t = t.contiguous()
        elif ptr in storages:  # another view of a storage already stored
            t = t.clone()
        storages.add(ptr)
        stored[name] = t
    return stored, aliases


def complete(path: Path, tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the format version, a digest of every tensor and one of itself.

    Raises:
        CheckpointError: a dtype safetensors cannot store, or a reserved name.
    """
    problems = unsupported([*tensors, *doc.get("aliases", {})], tensors)
    if problems:
        raise CheckpointError(path, "cannot save:\n  " + "\n  ".join(problems))
    doc = {
        "format_version": FORMAT_VERSION,
        "shards": [],
        **doc,
        "tensors": {
            k: [str(t.dtype).removeprefix("torch."), list(t.shape), tensor_digest(t)]
            for k, t in sorted(tensors.items())
        },
    }
    doc["digest"] = _doc_digest(doc)
    return doc


def doc_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def write(path: Path, tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> None:
    """Atomically write ``tensors`` with ``doc`` (completed with version and digests).

    Raises:
        CheckpointError: a dtype safetensors cannot store, a reserved name, or an OS error.
    """
    meta = {META_KEY: doc_text(complete(path, tensors, doc))}
    atomic_write_or_fail(path, lambda tmp: write_file(tmp, tensors, meta))


@dataclass
class Header:
    """What a file's header says: its document, and the tensor index safetensors checked."""

    file: Path
    doc: dict[str, Any] | None  # None: a plain safetensors file
    index: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape)
    meta: dict[str, str] = field(default_factory=dict)  # the file's metadata, as stored
    copy: bytes | None = None  # config.yaml's bytes, when read with the same version of file
    checked: Any = None  # what a reader's check of this header returned, before any weight
    ident: tuple[int, ...] | None = None  # the file it was read from (``_atomic.identity``)


def read_header(file: Path, *, require: str | None = None) -> Header:
    """Open ``file``, check its header and modelfactory document.

    Args:
        file: a ``.safetensors`` file.
        require: the ``kind`` the document must have (``"model"``); ``None`` also accepts
            plain safetensors files.

    Raises:
        CheckpointError: missing, truncated or corrupt file, a document that is not
            modelfactory's, or a newer format version.
    """
    if not file.is_file():
        raise missing(file)
    try:
        with safe_open(file, framework="pt") as f:
            meta = f.metadata() or {}
            index = {}
            names = [k for k in f.keys() if not k.startswith(PAD_PREFIX)]  # noqa: SIM118
            for k in names:
                s = f.get_slice(k)
                index[k] = (s.get_dtype(), tuple(s.get_shape()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # Runtime: vanished
        raise CheckpointError(file, f"not a readable safetensors file ({e})") from e
    check_shapes(file, index)
    if META_KEY not in meta:
        if require is None:
            return Header(file, None, index, meta)
        raise CheckpointError(
            file,
            "not a modelfactory checkpoint: its metadata has no 'modelfactory' entry (saved by "
            "another tool?); read its tensors with load_tensors() or load_weights()",
        )
    doc = parse_doc(file, meta[META_KEY], require)
    check_index(file, doc, index)
    return Header(file, doc, index, meta)


def parse_doc(file: Path, text: str, require: str | None) -> dict[str, Any]:
    """The document stored in ``file``, checked (version, digest, fields) and upgraded to
    the current format version."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise CheckpointError(file, f"corrupt modelfactory metadata: not JSON ({e})") from e
    except RecursionError as e:
        raise CheckpointError(file, "modelfactory metadata nests too deeply to be a config") from e
    version = doc.get("format_version") if isinstance(doc, dict) else None
    if not is_count(version) or version < 1:
        raise CheckpointError(
            file,
            f"corrupt modelfactory metadata: 'format_version' must be an integer >= 1, "
            f"got {short(version)}",
        )
    check_version(file, version)
    if doc.get("digest") != _doc_digest(doc):
        raise CheckpointError(file, "corrupt modelfactory metadata: its digest does not match")
    doc = upgrade(file, doc)
    problems = schema_problems(doc)
    if problems:
        raise CheckpointError(file, "corrupt modelfactory metadata:\n  " + "\n  ".join(problems))
    if require is not None and doc["kind"] != require:
        raise CheckpointError(
            file, f"holds {doc['kind']!r}, not a {require}; use load_tensors() for it"
        )
    return doc


def check_index(file: Path, doc: dict[str, Any], index: dict) -> None:
    """The tensors the document lists are the tensors the file's header holds."""
    listed = {k: (v[0], tuple(v[1])) for k, v in doc["tensors"].items()}
    seen = {k: (dtype_name(d), s) for k, (d, s) in index.items()}
    if listed != seen:
        diff = sorted(set(listed.items()) ^ set(seen.items()))
        raise CheckpointError(
            file, f"tensor index does not match its metadata: {', '.join(k for k, _ in diff[:5])}"
        )


def stand_ins(index: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """A ``meta`` tensor of each stored tensor's shape and dtype (from a checked header)."""
    return {k: torch.empty(s, dtype=dtype_of(d), device="meta") for k, (d, s) in index.items()}


def read_tensors(file: Path, mmap: bool = True, threads: int = 1) -> dict[str, torch.Tensor]:
    """All tensors of ``file``: memory-mapped (pages are read when first touched), or with
    ``mmap=False`` copied into memory of their own (the file may change afterwards), by
    ``threads`` threads at once."""
    if not mmap:
        return read_owned(file, threads)
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(file, f"cannot read tensors ({e})") from e
    return {k: t for k, t in tensors.items() if not k.startswith(PAD_PREFIX)}


def read(
    file: Path, *, require: str | None = None, mmap: bool = True
) -> tuple[Header, dict[str, torch.Tensor]]:
    """The header and the tensors of ``file``, both read from the same version of it."""
    return read_one_version(
        file, lambda: (read_header(file, require=require), read_tensors(file, mmap))
    )


def first_bad_tensor(header: Header, listed: dict[str, list] | None = None) -> str | None:
    """The first tensor (in file order) whose bytes do not match the stored digest
    (``listed``: name -> ``[dtype, shape, digest]``, by default the file's own document)."""
    if listed is None:
        listed = (header.doc or {}).get("tensors", {})
    try:
        with safe_open(header.file, framework="pt") as f:
            for k in _file_order(header.file, list(listed)):
                if tensor_digest(f.get_tensor(k)) != listed[k][2]:
                    return k
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(header.file, f"cannot read tensors ({e})") from e
    return None


def _file_order(file: Path, names: list[str]) -> list[str]:
    """``names`` sorted by where their data starts in the file."""
    with open(file, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        index = json.loads(fh.read(n))
    return sorted(names, key=lambda k: index[k]["data_offsets"][0])


def versions() -> dict[str, str]:
    import safetensors

    from .. import __version__

    return {
        "modelfactory": __version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
    }
