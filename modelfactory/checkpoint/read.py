"""Reading checkpoints, in one process: ``load_model`` (the model, rebuilt from its
embedded config), ``copy_weights`` (tensors into an existing model), ``load_tensors`` and
``verify``. The public ``load`` and ``load_weights`` (``modelfactory.api``) call the first
two, or the sharded and converting readers.

``load_model`` reads the header, checks the config's targets against the trusted prefixes
before anything is imported, checks the config's bounds and rebuilds the architecture on
``meta`` with no init, all before any weight is read (``_rebuild``); then it assigns the
tensors (read into memory of their own, or memory-mapped with ``mmap=True``), re-applies
ties and places the model. Every reader takes a single file or a sharded directory
(``_shards``). Only tensors and JSON are read back: no Python object is ever deserialized.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from .._record import BuildRecord, attach, record_of
from ..device import parse_dtype, resolve_device
from ..errors import CheckpointError
from ..tie import check_ties
from . import _format as fmt
from . import _state
from ._atomic import read_one_version
from ._files import checkpoint_paths, find_and_read, read_any
from ._rebuild import ConfigCheck, assemble, compare_with_copy, prepare
from ._shards import INDEX_FILE, verify_sharded
from ._trust import parse_trusted

__all__ = [
    "Verified",
    "copy_of",
    "copy_weights",
    "float_dtype",
    "landing_tensors",
    "load_model",
    "load_tensors",
    "verify",
]

Pathish = str | os.PathLike


def load_model(
    path: Pathish,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trusted: tuple[str, ...] | list[str] = (),
    strict: bool = True,
    *,
    mmap: bool = False,
    checks: tuple[ConfigCheck, ...] = (),
) -> nn.Module:
    """:func:`modelfactory.load` in one process, with ``checks`` of the trusted config run
    before any weight is read (``restore=`` bounds its sample pass with one); see
    ``_rebuild`` for the order."""
    cast = float_dtype(dtype, path)
    target = resolve_device(device if device is not None else "cpu", "device")
    prefixes = parse_trusted(trusted, path)

    check = functools.partial(prepare, trusted=prefixes, strict=strict, checks=checks)

    def read(f: Path) -> tuple[fmt.Header, dict[str, torch.Tensor]]:
        return read_any(f, require="model", mmap=mmap, copy=copy_of(f), check=check)

    file, copy, (header, stored) = find_and_read(path, read)
    doc = header.doc or {}
    compare_with_copy(header, copy)
    tensors = _with_aliases(stored, doc.get("aliases", {}))
    model = assemble(header.checked, tensors, doc, file)
    config, ties = header.checked.config, record_of(model).ties
    _place(model, ties, cast, target)
    device_cfg = {**config.get("device", {}), "device": str(target)}
    if cast is not None:
        device_cfg["dtype"] = str(cast).removeprefix("torch.")
    knobs = doc.get("knobs", {})  # absent in checkpoints written before knobs existed
    record = BuildRecord({**config, "device": device_cfg}, ties, record_of(model).paths, knobs)
    return attach(model, record)


def copy_of(file: Path) -> Path | None:
    """The ``config.yaml`` beside a checkpoint's ``model.safetensors`` or index."""
    copy = file.with_name(fmt.CONFIG_FILE)
    return copy if file.name in (fmt.MODEL_FILE, INDEX_FILE) and copy.is_file() else None


def _place(
    model: nn.Module,
    ties: list[tuple[str, list[str]]],
    cast: torch.dtype | None,
    target: torch.device,
) -> None:
    """Cast and move the loaded model; the moves must not break its ties."""
    if cast is not None:
        model.to(cast)
    if target.type != "cpu":
        model.to(target)
    if cast is not None or target.type != "cpu":
        check_ties(model, ties)


def copy_weights(
    model: nn.Module,
    path: Pathish,
    prefix_map: dict[str, str] | None = None,
    strict: bool = True,
) -> nn.Module:
    """:func:`modelfactory.load_weights` of a modelfactory or safetensors checkpoint into a
    model of this process: the stored tensors copied in place. Returns ``model``."""
    file, _, (header, stored) = find_and_read(path, read_any)
    own = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, t in landing_tensors(own, file, header.doc, stored, prefix_map, strict).items():
            own[key].copy_(t)
    return model


def landing_tensors(
    own: dict[str, torch.Tensor],
    file: Path,
    doc: dict[str, Any] | None,
    stored: dict[str, torch.Tensor],
    prefix_map: dict[str, str] | None,
    strict: bool,
) -> dict[str, torch.Tensor]:
    """``copy_weights``' choice: the model's key -> the stored tensor (or ``meta`` stand-in)
    that lands on it, renamed by ``prefix_map``; (strict) every problem raised together."""
    doc = doc or {}
    tensors = _with_aliases(stored, doc.get("aliases", {}))
    for key in doc.get("nonpersistent", []):
        tensors.pop(key, None)
    mapping = {"": ""} if prefix_map is None else dict(prefix_map)
    chosen = _renamed(tensors, mapping)
    problems = _weight_problems(own, chosen, mapping)
    if strict and problems:
        raise CheckpointError(file, "tensors do not fit the model:\n  " + "\n  ".join(problems))
    return {
        k: t
        for k, t in chosen.items()
        if k in own and not is_lazy(own[k]) and own[k].shape == t.shape
    }


def _renamed(tensors: dict[str, torch.Tensor], mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    """The stored tensors under a mapped prefix, renamed by the longest prefix that covers them."""
    chosen: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        src = max((p for p in mapping if key.startswith(p)), key=len, default=None)
        if src is not None:
            chosen[mapping[src] + key[len(src) :]] = t
    return chosen


def _weight_problems(
    own: dict[str, torch.Tensor], chosen: dict[str, torch.Tensor], mapping: dict[str, str]
) -> list[str]:
    """One line per chosen tensor that does not land, and per covered model tensor left out."""
    problems = [f"uninitialized (lazy): {k!r}" for k in chosen if k in own and is_lazy(own[k])]
    if problems:
        return problems
    covered = {k: v for k, v in own.items() if any(k.startswith(d) for d in mapping.values())}
    sigs = {k: (v.dtype, tuple(v.shape)) for k, v in chosen.items()}
    own_sigs = {k: (sigs.get(k, (v.dtype,))[0], tuple(v.shape)) for k, v in covered.items()}
    return _state.mismatches(own_sigs, sigs)


class Verified(NamedTuple):
    """What :func:`verify` checked."""

    file: Path
    tensors: int
    nbytes: int


def load_tensors(path: Pathish) -> torch.Tensor | list | tuple | dict:
    """Load what :func:`save_tensors` saved (memory-mapped), in its container type.

    A plain safetensors file (or a model checkpoint) gives a dict name -> tensor.

    Raises:
        CheckpointError: a missing or corrupt file.
    """
    _, _, (header, stored) = find_and_read(path, read_any)
    doc = header.doc or {}
    tensors = _with_aliases(stored, doc.get("aliases", {}))
    if doc.get("kind") != "tensors":
        return tensors
    items = [tensors[k] for k in doc["keys"]]
    container = doc.get("container")
    if container == "tensor":
        return items[0]
    if container in ("list", "tuple"):
        return items if container == "list" else tuple(items)
    return dict(zip(doc["keys"], items, strict=True))


def verify(path: Pathish) -> Verified:
    """Recompute every digest stored at save time and compare.

    Args:
        path: a checkpoint directory (single-file or sharded), its index, or a
            ``.safetensors`` file written by modelfactory.

    Returns:
        The file (the index of a sharded checkpoint), how many tensors and bytes were
        checked.

    Raises:
        CheckpointError: naming the first tensor (in file order) whose bytes changed, or
            what else is wrong with the file.
    """
    return find_and_read(path, _verify_file)[2]


def _verify_file(file: Path) -> Verified:
    if file.name.endswith(".index.json"):
        return Verified(file, *verify_sharded(file))
    return read_one_version(file, lambda: _verify_once(file))


def _verify_once(file: Path) -> Verified:
    header = fmt.read_header(file)
    if header.doc is None:
        raise CheckpointError(file, "has no modelfactory digests to verify (saved by another tool)")
    bad = fmt.first_bad_tensor(header)
    if bad is not None:
        raise CheckpointError(
            file, f"tensor {bad!r} does not match the digest stored at save time: corrupt data"
        )
    return Verified(file, len(header.index), file.stat().st_size)


def _with_aliases(
    stored: dict[str, torch.Tensor], aliases: dict[str, str]
) -> dict[str, torch.Tensor]:
    """Every name the file holds: the stored tensors plus their aliases (same objects)."""
    return {**stored, **{alias: stored[source] for alias, source in aliases.items()}}


def float_dtype(dtype: str | torch.dtype | None, path: Pathish) -> torch.dtype | None:
    """``load``'s ``dtype`` argument: ``None`` or a floating dtype (``nn.Module.to`` casts
    only floating tensors, and refuses other dtypes). The checkpoint file is looked up
    only to name it in the error."""
    if dtype is None:
        return None
    # A name of any torch dtype ('int8') is the dtype itself, refused as torch.int8 is.
    named = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else None
    cast = named if isinstance(named, torch.dtype) else parse_dtype(dtype, "dtype")
    if not cast.is_floating_point:
        name = str(cast).removeprefix("torch.")
        raise CheckpointError(
            checkpoint_paths(path)[0],
            f"load(dtype={dtype if isinstance(dtype, str) else name!r}): expected a floating "
            f"dtype such as 'float32' or 'bfloat16', got {name}",
        )
    return cast
