"""Writing checkpoints, in one process: ``save_model`` (a model and its architecture) and
``save_tensors``. The public ``save`` (``modelfactory.api``) calls the first, or the
collective and converting writers.

``save_model`` writes ``model.safetensors`` (the checkpoint: tensors plus the resolved
config, format version, ties, library versions and digests in its metadata), or shards and
their index, and ``config.yaml`` (a copy of the config for people), all switched as one set
(``_commit``). Only tensors and JSON are written: no Python object is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._config import normalize
from .._record import record_of
from ..errors import CheckpointError, ModelFactoryError
from ..tie import check_ties
from . import _format as fmt
from . import _state
from ._commit import write_set
from ._shards import INDEX_FILE, parse_size, plan, sharded_files

__all__ = ["make_parent", "save_model", "save_tensors"]

Pathish = str | os.PathLike


def save_model(
    model: nn.Module, path: Pathish, *, cfg: Any = None, max_shard_size: int | str | None = None
) -> Path:
    """:func:`modelfactory.save` of a model in this process: every check, then one atomic
    write of the file, or of the directory's set (weights or shards and index, and
    ``config.yaml``). Returns the ``.safetensors`` file written, or the index."""
    path = Path(path)
    file = _target_file(path)
    config, knobs = _config_for(model, cfg, file)
    stored, doc = _contents(model, config, knobs, file)
    limit = None if max_shard_size is None else parse_size(max_shard_size, file)
    groups = plan(stored, limit) if limit is not None else [list(stored)]
    make_parent(file)
    if file.name != fmt.MODEL_FILE or file.parent != path:  # a file name: the file alone
        if len(groups) > 1:
            raise CheckpointError(
                file,
                f"needs {len(groups)} shards of max_shard_size={max_shard_size!r}: save a "
                "sharded checkpoint to a directory, not to a file name",
            )
        fmt.write(file, stored, doc)
        return file
    authority = fmt.MODEL_FILE if len(groups) == 1 else INDEX_FILE
    return _save_set(path, stored, doc, groups, _config_copy(doc["config"], knobs, authority))


def _contents(
    model: nn.Module, config: dict[str, Any], knobs: dict[str, Any], file: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors a checkpoint of ``model`` stores (each shared one once) and its document,
    once the model is checked against the config that rebuilds it."""
    _check_materialized(model, file)
    tensors, nonpersistent = _state.collect(model)
    config = _state.with_dtype(config, tensors)
    ties = _check_matches_config(model, config, tensors, nonpersistent, file)
    try:
        stored, aliases = fmt.dedupe(tensors)
    except ValueError as e:
        raise CheckpointError(file, f"cannot save: {e}") from e
    return stored, _model_doc(model, config, knobs, ties, aliases, nonpersistent)


def _save_set(
    directory: Path,
    stored: dict[str, torch.Tensor],
    doc: dict[str, Any],
    groups: list[list[str]],
    copy_text: str,
) -> Path:
    """Write the checkpoint files and ``config.yaml`` into ``directory`` as one set."""
    doc = {**doc, "config_yaml_sha256": hashlib.sha256(copy_text.encode()).hexdigest()}
    # config.yaml is written first (its temporary file), then all switch together
    files: dict[str, Callable[[Path], None]] = {
        fmt.CONFIG_FILE: lambda tmp: tmp.write_text(copy_text)
    }
    if len(groups) > 1:
        files.update(sharded_files(directory, stored, doc, groups))
        written = directory / INDEX_FILE
    else:
        written = directory / fmt.MODEL_FILE
        meta = {fmt.META_KEY: fmt.doc_text(fmt.complete(written, stored, doc))}
        files[fmt.MODEL_FILE] = lambda tmp: fmt.write_file(tmp, stored, meta)
    write_set(directory, files)
    return written


def _model_doc(
    model: nn.Module,
    config: dict[str, Any],
    knobs: dict[str, Any],
    ties: list[tuple[str, list[str]]],
    aliases: dict[str, str],
    nonpersistent: list[str],
) -> dict[str, Any]:
    """What a model checkpoint's document says besides the tensors."""
    doc = {
        "kind": "model",
        "config": config,
        "ties": [[kind, names] for kind, names in ties],
        "aliases": aliases,
        "nonpersistent": nonpersistent,
        "eval": _state.eval_modules(model),
        "versions": fmt.versions(),
    }
    if knobs:  # for people: the config above already has them applied
        doc["knobs"] = knobs
    return doc


def _target_file(path: Path) -> Path:
    """The ``.safetensors`` file a save to ``path`` writes."""
    file = path if path.suffix == ".safetensors" else path / fmt.MODEL_FILE
    if file != path and path.exists() and not path.is_dir():
        raise CheckpointError(
            path,
            "exists and is not a directory; save to a directory (it gets model.safetensors "
            "and config.yaml) or to a file name ending in .safetensors",
        )
    return file


def _config_for(model: nn.Module, cfg: Any, file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved full config to store (``cfg``, or the one the model's record holds) and
    its knobs."""
    knobs: Any = {}
    if cfg is None:
        record = record_of(model)
        if record is None:
            raise CheckpointError(
                file,
                f"this {type(model).__name__} was not made by modelfactory.build, so its "
                "architecture is unknown; pass cfg= (the config that builds it)",
            )
        cfg, knobs = record.config, record.knobs
    bc = normalize(cfg)
    config, knobs = bc.resolved, dict(knobs or bc.knobs)
    _state.check_restorable({**config, "knobs": knobs} if knobs else config, file)
    return config, knobs


def _check_materialized(model: nn.Module, file: Path) -> None:
    lazy = _state.lazy_names(model)
    if lazy:
        raise CheckpointError(
            file,
            f"lazy layers are not materialized ({', '.join(lazy[:5])}): their shapes are not "
            "known yet; build with input_shape set (or run one forward) before saving",
        )


def _check_matches_config(
    model: nn.Module,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    nonpersistent: list[str],
    file: Path,
) -> list[tuple[str, list[str]]]:
    """The config must still build this model (names, shapes, dtypes, ties); returns the
    resolved ties."""
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    skeleton = _state.skeleton(config, {k: t.shape for k, t in tensors.items()}, file, nbytes)
    problems = _state.mismatches(
        _state.wanted_signature(skeleton, nonpersistent),
        _state.signature(tensors),
        found_in="the model",
        expected_in="its config",
    )
    if problems:
        raise CheckpointError(
            file,
            "the model no longer matches the config it was built from; pass cfg= describing "
            "it:\n  " + "\n  ".join(problems),
        )
    ties = record_of(skeleton).ties
    try:
        check_ties(model, ties)
    except ModelFactoryError as e:
        raise CheckpointError(file, f"cannot save: {e}") from e
    return ties


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _config_copy(config: dict[str, Any], knobs: dict[str, Any], authority: str) -> str:
    """The text of ``config.yaml``: a copy for people, the knobs in its header comment, so
    the copy still builds as it is (load skips parsing a copy whose SHA-256 is unchanged)."""
    text = f"# A copy for people: the config embedded in {authority} is the authority.\n"
    if knobs:  # names and values are data (from a loaded file, too): quoted unless plain
        shown = ", ".join(
            f"{k if _PLAIN_NAME.fullmatch(str(k)) else json.dumps(str(k))}={json.dumps(v)}"
            for k, v in knobs.items()
        )
        text += f"# Built with the knobs (already applied below): {shown}\n"
    import yaml  # a save's work: kept off mf.load's imports

    return text + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


def save_tensors(obj: torch.Tensor | list | tuple | dict, path: Pathish) -> Path:
    """Save a tensor, a list/tuple of tensors or a dict str -> tensor, atomically.

    Args:
        obj: what to save; :func:`modelfactory.load_tensors` gives back the same container.
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
        stored, aliases = fmt.dedupe(named)
    except ValueError as e:
        raise CheckpointError(path, f"cannot save: {e}") from e
    doc = {"kind": "tensors", "container": container, "keys": list(named), "aliases": aliases}
    make_parent(path)
    fmt.write(path, stored, {**doc, "versions": fmt.versions()})
    return path


def make_parent(file: Path) -> None:
    """Create ``file``'s directory, or raise a ``CheckpointError`` naming it."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a path component is a file, or no permission
        raise CheckpointError(file, f"cannot create its directory ({e})") from e
