"""Foreign directories on disk: reading ``save_pretrained`` output, writing one."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint._atomic import atomic_write_or_fail, read_one_version
from ..checkpoint._shards import weight_map
from ..errors import CheckpointError
from ._file import as_conversion
from ._foreign_config import config_for
from ._rules import INDEX, WEIGHTS, Conversion, fail
from ._states import export_state


def read_foreign_dir(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the tensors of a ``save_pretrained`` directory (or of one ``.safetensors`` file).

    ``model.safetensors`` is read if present, else ``model.safetensors.index.json`` and
    the shards its ``weight_map`` names. Only safetensors: pickled ``pytorch_model.bin``
    files are not read.

    Raises:
        CheckpointError: no weights there, an unreadable file, a bad index, or shards that
            disagree with their index.
    """
    directory = Path(path)
    if directory.is_file():
        return _load(directory)
    if (directory / WEIGHTS).is_file():
        return _load(directory / WEIGHTS)
    if not (directory / INDEX).is_file():
        raise CheckpointError(
            directory,
            f"no {WEIGHTS} or {INDEX} here (a save_pretrained directory with safetensors "
            "weights is expected; pickled pytorch_model.bin files are not read)",
        )
    return _read_shards(directory / INDEX)


def _load(file: Path) -> dict[str, torch.Tensor]:
    """A foreign file's tensors, read as a checkpoint file is: only a regular file (a FIFO, a
    device or a directory is refused, never opened), and one version of it."""

    def read() -> dict[str, torch.Tensor]:
        try:
            return load_file(file)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(file, f"not a readable safetensors file ({e})") from e

    return read_one_version(file, read)


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    wmap = weight_map(index)  # bounded as a checkpoint's index; plain shard names
    tensors, problems = {}, []
    for shard in sorted(set(wmap.values())):
        for name, t in _load(index.parent / shard).items():
            if wmap.get(name) != shard:
                problems.append(f"{name!r} is in {shard}, the index says {wmap.get(name)}")
            tensors.setdefault(name, t)
    problems += [
        f"{k!r}: the index lists it in {v}, which lacks it"
        for k, v in wmap.items()
        if k not in tensors
    ]
    fail(index, "shards do not match the index", problems)
    return tensors


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two tensors on one storage (``save_file`` refuses those)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def export_dir(
    model: nn.Module, path: str | os.PathLike[str], conversion: Conversion | str | os.PathLike[str]
) -> Path:
    """Write a model as a foreign directory (for ``hf_gpt2``: what ``from_pretrained`` loads).

    Writes ``model.safetensors`` (foreign names, ``format: pt`` metadata) and the
    conversion's config file (``config.json``), each atomically. Everything is computed
    before anything is written.

    Args:
        model: a built model with real (not meta, not lazy) tensors.
        path: the directory; created if missing.
        conversion: a :class:`Conversion`, a shipped name or a YAML path.

    Returns:
        The directory.

    Raises:
        CheckpointError: meta or lazy tensors, a model that does not fit the conversion
            (one error listing each tensor), or a file that cannot be written.
    """
    conv = as_conversion(conversion)
    directory = Path(path)
    state = model.state_dict()
    bad = [k for k, t in state.items() if t.is_meta or nn.parameter.is_lazy(t)]
    if bad:
        raise CheckpointError(
            directory, f"no values to write for {', '.join(bad[:5])} (meta or lazy)"
        )
    tensors = _unshared(export_state(state, conv, source=directory))
    config = config_for(model, conv, conv.config_values, directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(directory, f"cannot create the directory ({e})") from e
    atomic_write_or_fail(
        directory / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    if conv.config_file is not None:
        text = json.dumps(config, indent=2) + "\n"
        atomic_write_or_fail(
            directory / conv.config_file, lambda tmp: tmp.write_text(text, encoding="utf-8")
        )
    return directory
