"""Checkpoints that restore their own architecture, safely and bit-exactly.

``write`` holds ``save`` and ``save_tensors``; ``read`` holds ``load``,
``load_weights``, ``load_tensors`` and ``verify``. The private modules below them:
``_format`` (the file's metadata document and header), ``_writer`` (the aligned
safetensors writer), ``_schema`` (the document's shape), ``_atomic`` (atomic
writes and stable reads), ``_state`` (a model's state beyond ``state_dict``) and
``_trust`` (which targets a checkpoint may name).
"""

from __future__ import annotations

from .read import Verified, load, load_tensors, load_weights, verify
from .write import save, save_tensors

__all__ = ["Verified", "load", "load_tensors", "load_weights", "save", "save_tensors", "verify"]
