"""The front door: ``build``, ``load``, ``load_weights`` and ``save``, as users call them.

Each checks what it was given and hands the work to the floor that does it: one process
(``factory``, ``checkpoint``), a mesh (``distributed``) or another library's layout
(``convert``). Those floors never call back up here, so no package imports another that
imports it (``tests/test_layout.py`` checks it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, DeviceError

__all__ = ["build", "load", "load_weights", "save"]

Pathish = str | os.PathLike


def build(
    cfg: Any,
    *,
    device: str | None = None,
    dtype: str | None = None,
    seed: int | None = None,
    mesh: Any = None,
    fsdp_units: Any = "repeat",
) -> nn.Module:
    """Build a model from a config.

    Args:
        cfg: a full config (``model``/``init``/``tie``/``device``/``seed``/...) or a bare model
            node, as a ``DictConfig``, a dict or a path to a YAML file. Not modified.
        device: overrides ``device.device`` (checked as that key is).
        dtype: overrides ``device.dtype`` (checked as that key is).
        seed: overrides ``seed`` (checked as that key is: an integer from -2**63 to
            2**64 - 1).
        mesh: a ``DeviceMesh``: build the model sharded over it with FSDP2, each rank
            allocating only its shard, the values those of a build in one process (see
            :mod:`modelfactory.distributed`); the mesh gives the device.
        fsdp_units: with ``mesh``, the modules ``fully_shard`` makes units of besides the
            root: ``"repeat"`` (each ``Repeat`` copy), ``"root"`` (none) or module-name globs.

    Returns:
        The model, with every parameter initialized (lazy layers materialized when
        ``input_shape`` is given), ties applied and placed on its device. It carries its
        build record: :func:`modelfactory.config_of` gives the resolved config, which
        :func:`modelfactory.save` stores.

    Raises:
        ConfigError: the config is not well-formed (every problem listed with its path).
        BuildError: a block failed to construct or run on the sample input.
    """
    from . import factory

    if mesh is None:
        return factory.build(cfg, device=device, dtype=dtype, seed=seed)
    if device is not None:
        raise DeviceError([("device", "a sharded model's device is the mesh's; leave it out")])
    from ._record import attach
    from .distributed import build_sharded

    bc = factory.configured(cfg, dtype=dtype, seed=seed)
    return attach(*build_sharded(bc, mesh, fsdp_units))


def load(
    path: Pathish,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trusted: tuple[str, ...] | list[str] = (),
    strict: bool = True,
    *,
    mmap: bool = False,
    mesh: Any = None,
    fsdp_units: Any = "repeat",
) -> nn.Module:
    """Rebuild a saved model from its checkpoint alone.

    The model comes back in the train/eval mode of each module at save time; its outputs
    equal the saved model's bit for bit on the same device type and dtype. Everything that
    can refuse the file (its header, format version, the trust of every target, the
    config's bounds, the fit of the stored shapes) is decided before any weight is read.

    Args:
        path: a checkpoint directory (single-file or sharded), its ``.safetensors`` file or
            its ``model.safetensors.index.json``.
        device: where to place the model (``cpu``, ``cuda:1``, ``auto``...); ``None`` means
            the CPU, whatever device the model was saved from.
        dtype: cast floating parameters and buffers after loading (``"bfloat16"``).
        trusted: extra ``_target_`` prefixes the checkpoint's config may name
            (``["mypkg.*"]``); ``torch.nn`` and ``modelfactory`` are always allowed. Trusting
            a prefix means running its code: what the file names under it is imported and
            called with the file's arguments.
        strict: every tensor must match the rebuilt architecture in name, shape and dtype.
            With ``strict=False`` mismatches are warned about: unexpected tensors are
            ignored, dtype mismatches cast, and missing or mis-shaped ones keep the
            config's seeded initialization.
        mmap: ``False`` (default): the weights are read into memory of their own (shards
            in parallel); the file may change afterwards. ``True``: they stay mapped from
            the file (no copy), which must then not change in place while the model lives
            (a truncated file kills the process with ``SIGBUS``; saves only rename).
        mesh: a ``DeviceMesh``: the model comes back sharded over it (FSDP2, as
            ``build(cfg, mesh=...)`` shards it, ``fsdp_units`` alike), each rank reading only
            its own rows of the file; the mesh gives the device (``device`` must be ``None``).
        fsdp_units: with ``mesh``, as for :func:`build`.

    Returns:
        The model, with ties restored as identity.

    Raises:
        UntrustedTargetError: the config names a target outside the trusted prefixes.
        CheckpointError: a missing or corrupt file, (strict) tensors that do not fit, or a
            ``dtype`` that is not floating.
    """
    if mesh is None:
        from .checkpoint.read import load_model

        return load_model(path, device, dtype, trusted, strict, mmap=mmap)
    from .distributed import load_sharded

    options = {"dtype": dtype, "trusted": trusted, "strict": strict, "fsdp_units": fsdp_units}
    return load_sharded(path, mesh, device=device, **options)


def load_weights(
    model: nn.Module,
    path: Pathish,
    prefix_map: dict[str, str] | None = None,
    strict: bool = True,
    *,
    convert: str | os.PathLike | None = None,
    mesh: Any = None,
) -> nn.Module:
    """Copy stored tensors into an existing model, in place (keeps its device, dtype, ties).

    Args:
        model: the model to fill.
        path: a checkpoint directory (single-file or sharded), its index, or any
            ``.safetensors`` file.
        prefix_map: ``{"0.": "encoder."}`` uses only the stored tensors under a listed prefix,
            renamed to the model's prefix. ``None`` uses every tensor under its own name.
        strict: every used tensor must land on a same-shaped parameter or buffer, and every
            model tensor under a target prefix (all of them without ``prefix_map``) must
            get one. Dtypes are cast.
        convert: a conversion (``"hf_gpt2"`` or a conversion YAML's path): ``path`` is then a
            foreign directory (``save_pretrained`` output, one file or sharded) whose tensor
            names are renamed (see ``docs/convert.md``); not with ``prefix_map``.
        mesh: the ``DeviceMesh`` a sharded model (``build(cfg, mesh=...)``) is sharded over;
            a sharded model is recognized without it. Each rank reads only its own rows.

    Returns:
        ``model``.

    Raises:
        CheckpointError: (strict) tensors that do not fit, listed together.
    """
    from .distributed import is_sharded

    if convert is not None:
        from .convert import load_converted

        return load_converted(model, path, convert, prefix_map=prefix_map, strict=strict)
    if mesh is not None or is_sharded(model):
        from .distributed import load_weights_sharded

        return load_weights_sharded(model, path, prefix_map, strict, mesh=mesh)
    from .checkpoint.read import copy_weights

    return copy_weights(model, path, prefix_map, strict)


def save(
    model: nn.Module,
    path: Pathish,
    *,
    cfg: Any = None,
    max_shard_size: int | str | None = None,
    convert: str | os.PathLike | None = None,
) -> Path:
    """Save ``model`` with its architecture, atomically.

    A save to a directory replaces the checkpoint there as one set (weights, index,
    ``config.yaml``): a crash or kill at any moment leaves the old set or the new one. A
    model sharded over a mesh (``build(cfg, mesh=...)``) is saved collectively: every rank
    calls ``save``, and rank 0 writes the files a one-process save writes.

    Args:
        model: a model made by :func:`modelfactory.build` (it carries its config), or any
            model together with ``cfg``.
        path: a directory (gets ``model.safetensors`` and ``config.yaml``), or a file name
            ending in ``.safetensors`` (the file alone; its embedded config suffices).
        cfg: the config that builds ``model``'s architecture; defaults to the one ``build``
            recorded (:func:`modelfactory.config_of`).
        max_shard_size: split the weights into shards of at most this many bytes (an int,
            or ``"2GB"``, ``"500MB"``, ``"10KB"``, ``"1GiB"``), written as Hugging Face's
            ``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json`` (a
            tensor bigger than that gets a shard of its own). A model that fits in one
            shard is saved as ``model.safetensors``. ``None``: one file.
        convert: a conversion (``"hf_gpt2"`` or a conversion YAML's path): write ``path`` as
            a foreign directory instead (for ``hf_gpt2``, what ``from_pretrained`` loads:
            ``model.safetensors`` and ``config.json``); see ``docs/convert.md``.

    Returns:
        The ``.safetensors`` file written, or the index of a sharded checkpoint.

    Raises:
        CheckpointError: no config, a config that would not rebuild the model (a live
            object, a class in ``__main__``), lazy layers not materialized, broken ties, a
            model that no longer matches its config, a ``path`` that is an existing file not
            named ``*.safetensors``, a sharded save to a file name, or a write that fails
            (disk full, read-only directory, a directory where a file goes), which leaves
            the old checkpoint as it was.
    """
    from .distributed import is_sharded

    def write(whole: nn.Module) -> Path:
        return _save_one(whole, path, cfg, max_shard_size, convert)

    if is_sharded(model):  # a collective: every rank of the mesh calls it
        from .distributed import save_sharded

        return save_sharded(model, path, write, cfg=cfg)
    return write(model)


def _save_one(model: nn.Module, path: Pathish, cfg: Any, max_shard_size: Any, convert: Any) -> Path:
    """:func:`save` of a model in this process: modelfactory's layout or a foreign one."""
    if convert is None:
        from .checkpoint.write import save_model

        return save_model(model, path, cfg=cfg, max_shard_size=max_shard_size)
    if max_shard_size is not None:
        raise CheckpointError(
            Path(path),
            "save(convert=...) writes the foreign layout as one weights file; "
            "max_shard_size is for modelfactory checkpoints (leave it out)",
        )
    from .convert import save_converted

    return save_converted(model, path, convert, cfg=cfg)
