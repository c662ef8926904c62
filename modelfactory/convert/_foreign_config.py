"""The foreign config file (``config.json``): written on export, checked on import."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._bounded import excerpt, read_capped
from ..errors import CheckpointError
from ._file import as_conversion
from ._rules import Conversion, Expr, fail, shape_of

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB, as a config.yaml copy; a Hugging Face config.json is ~1 KB


def _evaluate(value: Any, model: nn.Module, state: Mapping[str, torch.Tensor]) -> Any:
    """A config value for ``model``; raises ``LookupError`` naming what the model lacks."""
    if not isinstance(value, Expr):
        return value
    if value.kind == "value":
        return value.arg
    if value.kind == "count":
        return len(
            {tuple(sorted(f.items())) for k in state if (f := value.arg.match(k)) is not None}
        )
    if value.kind == "attr":
        owner, _, attr = value.arg.rpartition(".")
        try:
            got = getattr(model.get_submodule(owner), attr)
        except AttributeError as e:
            raise LookupError(f"the model has no {value.arg!r} ({e})") from e
        if isinstance(got, tuple):
            got = list(got)
        if not isinstance(got, (int, float, str, bool, list, type(None))):
            raise LookupError(f"{value.arg!r} is a {type(got).__name__}, not a JSON value")
        return got
    if value.arg not in state:
        raise LookupError(f"the model has no tensor {value.arg!r}")
    t = state[value.arg]
    if value.kind == "dtype":
        return str(t.dtype).removeprefix("torch.")
    if not -t.dim() <= value.dim < t.dim():
        raise LookupError(f"{value.arg!r} is {shape_of(t)}, it has no dim {value.dim}")
    return t.shape[value.dim] + value.offset


def foreign_config(
    model: nn.Module, conversion: Conversion | str | os.PathLike[str]
) -> dict[str, Any]:
    """The foreign config (``config.json``) that :func:`export_dir` writes for ``model``.

    Works on a model built on the ``meta`` device too (it reads shapes and attributes).

    Raises:
        CheckpointError: one error listing each value the model cannot give (a tensor or
            attribute a ``config.values`` entry names that the model does not have).
    """
    conv = as_conversion(conversion)
    return config_for(model, conv, conv.config_values, conv.file)


def config_for(model: nn.Module, conv: Conversion, keys: Any, source: object) -> dict[str, Any]:
    state = model.state_dict()
    out, problems = {}, []
    for key in keys:
        try:
            out[key] = _evaluate(conv.config_values[key], model, state)
        except LookupError as e:
            problems.append(f"convert.config.values.{key}: {e}")
    fail(
        source, f"cannot compute the config of {conv.name!r} ({conv.file}) for the model", problems
    )
    return out


def check_config(
    path: str | os.PathLike[str], model: nn.Module, conversion: Conversion | str | os.PathLike[str]
) -> None:
    """Compare a foreign directory's config file with the model, for the ``config.check`` keys.

    Tensor shapes cannot tell a wrong head count or activation; this can. Keys the file
    does not have, and a directory without the file, are not checked.

    Raises:
        CheckpointError: the file is not a JSON object, or one error listing each key whose
            value differs from what the model gives.
    """
    conv = as_conversion(conversion)
    if conv.config_file is None or not conv.config_check:
        return
    file = Path(path) / conv.config_file
    if not file.is_file():
        return
    try:  # bounded work: a FIFO, a huge file or deep nesting is refused
        foreign = json.loads(read_capped(file, MAX_CONFIG_BYTES).decode("utf-8"))
    except (OSError, ValueError) as e:  # ValueError: OverBound, not UTF-8, not JSON
        raise CheckpointError(file, f"not a readable JSON file ({e})") from e
    except RecursionError as e:
        raise CheckpointError(file, "not a readable JSON file (it nests too deeply)") from e
    if not isinstance(foreign, dict):
        raise CheckpointError(file, f"expected a JSON object, got {type(foreign).__name__}")
    keys = [k for k in conv.config_check if k in foreign]
    want = config_for(model, conv, keys, file)
    problems = [
        f"{k}: {excerpt(foreign[k])} in the file, {excerpt(want[k])} for the model"
        for k in keys
        if foreign[k] != want[k]
    ]
    fail(file, "the config does not fit the model", problems)
