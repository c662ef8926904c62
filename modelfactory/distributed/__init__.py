"""Models larger than one process: built, loaded and saved sharded over a ``DeviceMesh``.

PyTorch's FSDP2 (``fully_shard``), ``DTensor`` and ``DeviceMesh`` are the engine; what
this package adds is modelfactory's guarantee across ranks: a model built with
``mf.build(cfg, mesh=mesh)`` holds, gathered, exactly the values ``mf.build(cfg)``
gives in one process, whatever the world size; ``mf.load(path, mesh=mesh)`` reads each
rank's rows of the file and nothing else; ``mf.save`` of a sharded model writes the file
a one-process save writes. See ``docs/distributed.md``.

- :mod:`.build`: the sharded build (meta, ``fully_shard``, each node's values filled in);
- :mod:`.load`: ``load`` and ``load_weights`` reading each rank's rows (``get_slice``);
- :mod:`.save`: the collective save;
- :mod:`._units`: which modules are FSDP2 units; :mod:`._mesh`: the mesh and its checks.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from torch import nn

__all__ = [
    "build_sharded",
    "is_sharded",
    "load_sharded",
    "load_weights_sharded",
    "mesh_of",
    "resharded",
    "save_sharded",
]

# torch.distributed.tensor takes about 0.6 s to import: only a sharded model needs it.
_EXPORTS = {
    "build_sharded": "build",
    "load_sharded": "load",
    "load_weights_sharded": "load",
    "save_sharded": "save",
    "mesh_of": "_mesh",
    "resharded": "_mesh",
}


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` is sharded with FSDP2 (``fully_shard``). Cheap for other models:
    nothing is sharded before ``torch.distributed.fsdp`` is imported, and this does not
    import it."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and any(isinstance(m, fsdp.FSDPModule) for m in model.modules())


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
