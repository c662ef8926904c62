"""A model's weights from and into a foreign directory: what ``mf.load_weights(convert=)``
and ``mf.save(convert=)`` do."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ..errors import CheckpointError
from ._dirs import export_dir, read_foreign_dir
from ._file import as_conversion
from ._foreign_config import check_config
from ._rules import WEIGHTS, Conversion
from ._states import import_state

Conversionish = Conversion | str | os.PathLike[str]


def load_converted(
    model: nn.Module,
    path: str | os.PathLike[str],
    conversion: Conversionish,
    *,
    prefix_map: dict[str, str] | None = None,
    strict: bool = True,
) -> nn.Module:
    """Copy a foreign directory's tensors into ``model`` in place, renamed by ``conversion``.

    The model keeps its device, dtype and ties; dtypes are cast. With ``strict`` every
    converted tensor must land on a same-shaped tensor of the model and every tensor of the
    model must get one, and the directory's config file must agree with the model on the
    conversion's ``config.check`` keys. ``strict=False`` copies what fits; a file that does
    not follow the conversion is an error either way.

    Raises:
        CheckpointError: one error listing each tensor that does not fit (or the config
            keys that differ), naming the directory; or ``prefix_map`` was given too.
    """
    directory = Path(path)
    if prefix_map is not None:
        raise CheckpointError(
            directory,
            "load_weights(convert=...) does not take prefix_map; to fill part of a model, "
            "pass that submodule: mf.load_weights(model.encoder, path, convert=...)",
        )
    conv = as_conversion(conversion)
    own = model.state_dict(keep_vars=True)
    lazy = [k for k, t in own.items() if is_lazy(t)]
    if strict and lazy:
        raise CheckpointError(
            directory,
            f"the model has lazy layers not materialized ({', '.join(lazy[:5])}); build it "
            "with input_shape set (or run one forward) before loading weights into it",
        )
    tensors = read_foreign_dir(directory)
    state = import_state(tensors, conv, model=model if strict else None, source=directory)
    if strict:
        check_config(directory if directory.is_dir() else directory.parent, model, conv)
    with torch.no_grad():
        for key, t in state.items():
            if key in own and not is_lazy(own[key]) and own[key].shape == t.shape:
                own[key].copy_(t)
    return model


def save_converted(
    model: nn.Module, path: str | os.PathLike[str], conversion: Conversionish, *, cfg: Any = None
) -> Path:
    """Write ``model`` as a foreign directory (weights and config file); returns the weights
    file. See :func:`modelfactory.convert.export_dir`.

    Raises:
        CheckpointError: ``cfg`` given (a foreign directory has no place for it), a path
            that names a ``.safetensors`` file, or what ``export_dir`` raises.
    """
    directory = Path(path)
    if cfg is not None:
        raise CheckpointError(
            directory,
            "save(convert=...) does not take cfg: a foreign directory stores no modelfactory "
            "config (its config file is computed from the model)",
        )
    if directory.suffix == ".safetensors" or directory.is_file():
        raise CheckpointError(
            directory,
            f"save(convert=...) writes a directory ({WEIGHTS} and the conversion's config "
            "file); give a directory path",
        )
    return export_dir(model, directory, conversion) / WEIGHTS
