"""modelfactory: declarative, config-driven PyTorch models.

Public API: :func:`build`, :func:`load`, :func:`load_weights` and :func:`save` (the front
door, :mod:`modelfactory.api`), :func:`config_of`, :func:`save_tensors`,
:func:`load_tensors`, :func:`verify`, :func:`summary`, :func:`init_report`, :func:`plan`
(a :class:`Plan`), :func:`build_skeleton` (the architecture on ``meta``, no init), and the
errors in :mod:`modelfactory.errors`. Sharded models: :mod:`modelfactory.distributed`;
other libraries' layouts: :mod:`modelfactory.convert`; blocks: :mod:`modelfactory.blocks`,
:mod:`modelfactory.modules`, :mod:`modelfactory.layers`.

Names are imported on first use so that ``import modelfactory`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build": "api",
    "build_skeleton": "factory",
    "summary": "summary",
    "init_report": "init",
    "config_of": "_record",
    "plan": "planning",
    "Plan": "planning",
    "save": "api",
    "load": "api",
    "load_weights": "api",
    "save_tensors": "checkpoint",
    "load_tensors": "checkpoint",
    "verify": "checkpoint",
    "ModelFactoryError": "errors",
    "ConfigError": "errors",
    "ArgumentError": "errors",
    "BuildError": "errors",
    "TieError": "errors",
    "DeviceError": "errors",
    "CheckpointError": "errors",
    "UntrustedTargetError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modelfactory' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
