"""Checkpoints that restore their own architecture, safely and bit-exactly, in one process
(``modelfactory.api`` is the front door; ``distributed`` and ``convert`` build on this).

``write`` holds ``save_model`` and ``save_tensors``; ``read`` holds ``load_model``,
``copy_weights``, ``load_tensors`` and ``verify``. The private modules below them:

- ``_rebuild``: the one order of a load (header, version, trust, bounds, then weights);
- ``_trust``: which targets a checkpoint may name; ``_bounds``: the work a file may ask for;
- ``_format``: the file's metadata document and header; ``_schema``: the document's shape;
  ``_version``: format versions and their upgraders;
- ``_writer``: the aligned safetensors writer; ``_reader``: reads into owned memory;
- ``_shards``: sharded sets and their index; ``_commit``: switching a set of files as one;
- ``_atomic``: atomic writes and stable reads; ``_config_copy``: the ``config.yaml`` copy;
- ``_state``: a model's state beyond ``state_dict`` (aliases, buffers, modes).
"""

from __future__ import annotations

from .read import Verified, copy_weights, load_model, load_tensors, verify
from .write import save_model, save_tensors

__all__ = [
    "Verified",
    "copy_weights",
    "load_model",
    "load_tensors",
    "save_model",
    "save_tensors",
    "verify",
]
