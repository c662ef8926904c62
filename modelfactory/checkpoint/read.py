"""Checkpoints that restore their own architecture, safely and bit-exactly.

``save`` writes ``model.safetensors`` (the checkpoint: tensors plus the resolved
config, format version, ties, library versions and digests in its metadata)
and ``config.yaml`` (a copy of the config for people, written first). ``load``
checks the config's targets, rebuilds the architecture on ``meta`` with no
init, assigns the memory-mapped tensors, re-applies ties and places the model.
Only tensors and JSON are read back: no Python object is ever deserialized.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from torch import nn
from torch.nn.parameter import is_lazy

from . import _safefile as sf
from . import _state
from ._trust import check_config, parse_trusted
from .device import parse_dtype, resolve_device
from .errors import CheckpointError, ModelFactoryError
from .factory import CONFIG_ATTR, TIES_ATTR
from .tie import apply_ties, check_ties

__all__ = ["Verified", "load", "load_tensors", "load_weights", "save", "save_tensors", "verify"]

MODEL_FILE, CONFIG_FILE = sf.MODEL_FILE, sf.CONFIG_FILE
Pathish = str | os.PathLike


def save(model: nn.Module, path: Pathish, *, cfg: Any = None) -> Path:
    """Save ``model`` with its architecture, atomically.

    Args:
        model: a model made by :func:`modelfactory.build` (it carries its config), or any
            model together with ``cfg``.
        path: a directory (gets ``model.safetensors`` and ``config.yaml``), or a file name
            ending in ``.safetensors`` (the file alone; its embedded config suffices).
        cfg: the config that builds ``model``'s architecture; defaults to the one ``build``
            kept on the model.

    Returns:
        The ``.safetensors`` file written.

    Raises:
        CheckpointError: no config, a config that is not plain data, lazy layers not
            materialized, broken ties, a model that no longer matches its config, or a
            ``path`` that is an existing file not named ``*.safetensors``.
    """
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / MODEL_FILE
    if file != path and path.exists() and not path.is_dir():
        raise CheckpointError(
            path,
            "exists and is not a directory; save to a directory (it gets model.safetensors "
            "and config.yaml) or to a file name ending in .safetensors",
        )
    config = _state.config_of(model, cfg, file)
    _state.check_plain(config, file)
    lazy = _state.lazy_names(model)
    if lazy:
        raise CheckpointError(
            file,
            f"lazy layers are not materialized ({', '.join(lazy[:5])}): their shapes are not "
            "known yet; build with input_shape set (or run one forward) before saving",
        )
    tensors, nonpersistent = _state.collect(model)
    config = _state.with_dtype(config, tensors)
    skeleton = _state.skeleton(config, {k: t.shape for k, t in tensors.items()}, file)
    problems = _state.mismatches(
        _state.expected(skeleton, nonpersistent), _state.signature(tensors)
    )
    if problems:
        raise CheckpointError(
            file,
            "the model no longer matches the config it was built from; pass cfg= describing "
            "it:\n  " + "\n  ".join(problems),
        )
    ties = skeleton.__dict__[TIES_ATTR]
    try:
        check_ties(model, ties)
        stored, aliases = sf.dedupe(tensors)
    except (ModelFactoryError, ValueError) as e:
        raise CheckpointError(file, f"cannot save: {e}") from e
    doc = {
        "kind": "model",
        "config": config,
        "ties": [[kind, names] for kind, names in ties],
        "aliases": aliases,
        "nonpersistent": nonpersistent,
        "eval": _state.eval_modules(model),
        "versions": sf.versions(),
    }
    _make_parent(file)
    if file.name == MODEL_FILE and file.parent == path:
        text = "# A copy for people: the config embedded in model.safetensors is the authority.\n"
        text += yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
        # Its digest lets load skip parsing an untouched copy.
        doc["config_yaml_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        sf.atomic_write(path / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    sf.write(file, stored, doc)
    return file


def load(
    path: Pathish,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trusted: tuple[str, ...] | list[str] = (),
    strict: bool = True,
) -> nn.Module:
    """Rebuild a saved model from its checkpoint alone.

    The model comes back in the train/eval mode of each module at save time; its outputs
    equal the saved model's bit for bit on the same device type and dtype.

    Args:
        path: a checkpoint directory or its ``.safetensors`` file.
        device: where to place the model (``cpu``, ``cuda:1``, ``auto``...); ``None`` means
            the CPU, whatever device the model was saved from.
        dtype: cast floating parameters and buffers after loading (``"bfloat16"``).
        trusted: extra ``_target_`` prefixes the checkpoint's config may name
            (``["mypkg.*"]``); ``torch.nn`` and ``modelfactory`` are always allowed.
        strict: every tensor must match the rebuilt architecture in name, shape and dtype.
            With ``strict=False`` mismatches are warned about: unexpected tensors are
            ignored, dtype mismatches cast, and missing or mis-shaped ones keep the
            config's seeded initialization.

    Returns:
        The model, with ties restored as identity.

    Raises:
        UntrustedTargetError: the config names a target outside the trusted prefixes.
        CheckpointError: a missing or corrupt file, (strict) tensors that do not fit, or a
            ``dtype`` that is not floating.
    """
    file, copy = sf.checkpoint_paths(path)
    cast = _float_dtype(dtype, file)
    header, stored = sf.read(file, require="model")
    doc = header.doc or {}
    config = doc["config"]
    check_config(config, file, parse_trusted(trusted, file))
    if copy is not None:
        sf.compare_copy(copy, config, file, doc.get("config_yaml_sha256"))
    target = resolve_device(device if device is not None else "cpu", "device")
    nonpersistent, aliases = doc.get("nonpersistent", []), doc.get("aliases", {})
    tensors = _with_aliases(stored, aliases)
    model = _state.skeleton(config, {k: t.shape for k, t in tensors.items()}, file)
    _state.check_nonpersistent(model, nonpersistent, file)
    expected = _state.expected(model, nonpersistent)
    problems = _state.mismatches(expected, _state.signature(tensors))
    if problems and strict:
        raise CheckpointError(
            file,
            f"does not fit the model its config builds ({len(problems)} problems; "
            "load(strict=False) to load what fits):\n  " + "\n  ".join(problems),
        )
    if problems:
        warnings.warn(f"{file}: loading what fits:\n  " + "\n  ".join(problems), stacklevel=2)
        model = _state.fit(model, config, tensors, expected, nonpersistent, aliases)
    else:
        _state.assign(model, tensors, nonpersistent, aliases)
    _state.check_filled(model, file)
    ties = model.__dict__[TIES_ATTR]
    apply_ties(model, ties)
    check_ties(model, ties)
    _state.restore_modes(model, doc.get("eval", []))
    if cast is not None:
        model.to(cast)
    if target.type != "cpu":
        model.to(target)
    if cast is not None or target.type != "cpu":
        check_ties(model, ties)  # dtype and device moves must not have broken them
    device_cfg = {**config.get("device", {}), "device": str(target)}
    if cast is not None:
        device_cfg["dtype"] = str(cast).removeprefix("torch.")
    model.__dict__[CONFIG_ATTR] = {**config, "device": device_cfg}
    return model


def load_weights(
    model: nn.Module,
    path: Pathish,
    prefix_map: dict[str, str] | None = None,
    strict: bool = True,
) -> nn.Module:
    """Copy stored tensors into an existing model, in place (keeps its device, dtype, ties).

    Args:
        model: the model to fill.
        path: a checkpoint directory or any ``.safetensors`` file.
        prefix_map: ``{"0.": "encoder."}`` uses only the stored tensors under a listed prefix,
            renamed to the model's prefix. ``None`` uses every tensor under its own name.
        strict: every used tensor must land on a same-shaped parameter or buffer, and every
            model tensor under a target prefix (all of them without ``prefix_map``) must
            get one. Dtypes are cast.

    Returns:
        ``model``.

    Raises:
        CheckpointError: (strict) tensors that do not fit, listed together.
    """
    file, _ = sf.checkpoint_paths(path)
    header, stored = sf.read(file)
    doc = header.doc or {}
    tensors = _with_aliases(stored, doc.get("aliases", {}))
    for key in doc.get("nonpersistent", []):
        tensors.pop(key, None)
    mapping = {"": ""} if prefix_map is None else dict(prefix_map)
    chosen: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        src = max((p for p in mapping if key.startswith(p)), key=len, default=None)
        if src is not None:
            chosen[mapping[src] + key[len(src) :]] = t
    own = model.state_dict(keep_vars=True)
    covered = {k: v for k, v in own.items() if any(k.startswith(d) for d in mapping.values())}
    problems = [f"uninitialized (lazy): {k!r}" for k in chosen if k in own and is_lazy(own[k])]
    sigs = {k: (v.dtype, tuple(v.shape)) for k, v in chosen.items()}
    own_sigs = {k: (sigs.get(k, (v.dtype,))[0], tuple(v.shape)) for k, v in covered.items()}
    problems += _state.mismatches(own_sigs, sigs) if not problems else []
    if strict and problems:
        raise CheckpointError(file, "tensors do not fit the model:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for key, t in chosen.items():
            if key in own and not is_lazy(own[key]) and own[key].shape == t.shape:
                own[key].copy_(t)
    return model


def save_tensors(obj: torch.Tensor | list | tuple | dict, path: Pathish) -> Path:
    """Save a tensor, a list/tuple of tensors or a dict str -> tensor, atomically.

    Args:
        obj: what to save; :func:`load_tensors` gives back the same container type.
        path: the ``.safetensors`` file to write.

    Returns:
        The file written.

    Raises:
        CheckpointError: ``obj`` is not one of those containers of tensors.
    """
    path = Path(path)
    if isinstance(obj, torch.Tensor):
        container, named = "tensor", {"tensor": obj}
    elif isinstance(obj, (list, tuple)):
        container, named = type(obj).__name__, {str(i): t for i, t in enumerate(obj)}
    elif isinstance(obj, dict):
        container, named = "dict", dict(obj)
    else:
        raise CheckpointError(
            path, f"expected a tensor, a list or a dict of tensors, got {type(obj).__name__}"
        )
    bad = [k for k, t in named.items() if not isinstance(k, str) or not isinstance(t, torch.Tensor)]
    if bad:
        raise CheckpointError(
            path,
            f"every entry must be a tensor under a string key; not: {', '.join(map(repr, bad))}",
        )
    try:
        stored, aliases = sf.dedupe(named)
    except ValueError as e:
        raise CheckpointError(path, f"cannot save: {e}") from e
    doc = {"kind": "tensors", "container": container, "keys": list(named), "aliases": aliases}
    _make_parent(path)
    sf.write(path, stored, {**doc, "versions": sf.versions()})
    return path


def load_tensors(path: Pathish) -> torch.Tensor | list | tuple | dict:
    """Load what :func:`save_tensors` saved (memory-mapped), in its container type.

    A plain safetensors file (or a model checkpoint) gives a dict name -> tensor.

    Raises:
        CheckpointError: a missing or corrupt file.
    """
    file, _ = sf.checkpoint_paths(path)
    header, stored = sf.read(file)
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


class Verified(NamedTuple):
    """What :func:`verify` checked."""

    file: Path
    tensors: int
    nbytes: int


def verify(path: Pathish) -> Verified:
    """Recompute every digest stored at save time and compare.

    Args:
        path: a checkpoint directory or a ``.safetensors`` file written by modelfactory.

    Returns:
        The file, how many tensors and bytes were checked.

    Raises:
        CheckpointError: naming the first tensor (in file order) whose bytes changed, or
            what else is wrong with the file.
    """
    file, _ = sf.checkpoint_paths(path)
    return sf.stable(file, lambda: _verify_once(file))


def _verify_once(file: Path) -> Verified:
    header = sf.read_header(file)
    if header.doc is None:
        raise CheckpointError(file, "has no modelfactory digests to verify (saved by another tool)")
    bad = sf.first_bad_tensor(header)
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


def _float_dtype(dtype: str | torch.dtype | None, file: Path) -> torch.dtype | None:
    """``load``'s ``dtype`` argument: ``None`` or a floating dtype (``nn.Module.to`` casts
    only floating tensors, and refuses other dtypes)."""
    if dtype is None:
        return None
    cast = parse_dtype(dtype, "dtype")
    if not cast.is_floating_point:
        raise CheckpointError(
            file,
            f"load(dtype={dtype!r}): expected a floating dtype such as 'float32' or "
            f"'bfloat16', got {str(cast).removeprefix('torch.')}",
        )
    return cast


def _make_parent(file: Path) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a path component is a file, or no permission
        raise CheckpointError(file, f"cannot create its directory ({e})") from e
