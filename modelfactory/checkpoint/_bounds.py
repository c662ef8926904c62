"""Bounds on the work a checkpoint can ask for, checked before the work is done.

A checkpoint is untrusted input: a file of a few bytes can describe a tensor of shape
``[2**63, 0]`` or a config that builds millions of modules. Each check here refuses such a
file with a ``CheckpointError`` naming the file and the bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import CheckpointError

__all__ = ["MAX_TENSOR_EXTENT", "check_shapes"]

# A tensor's sizes, and the product of its non-zero sizes (its strides), are int64.
MAX_TENSOR_EXTENT = 2**63 - 1


def check_shapes(file: object, index: Mapping[str, tuple[str, Iterable[int]]]) -> None:
    """Every tensor shape in a file's header must be one torch can make (``[2**63, 0]``
    holds no data, yet no tensor has it)."""
    for name, (_, shape) in index.items():
        extent = 1
        for n in shape:
            extent *= max(n, 1)
        if extent > MAX_TENSOR_EXTENT:
            raise CheckpointError(
                file,
                f"tensor {name!r} has shape {_short(shape)}: its sizes multiply past "
                "2**63 - 1, more than any tensor can have",
            )


def _short(v: Any) -> str:
    text = str(list(v))
    return text if len(text) <= 80 else text[:77] + "..."
