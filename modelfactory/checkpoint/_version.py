"""Format versions of the metadata document, and the upgraders that read old ones.

A document of an older version is rewritten, one version at a time, by the upgrader
registered for its version, until it is of the version this code writes; readers only
ever see current documents. A newer version is refused: its meaning is unknown here.

Versions:
    1. modelfactory 0.1.0: single-file checkpoints; ``knobs`` optional.
    2. sharded checkpoints (the document lives in ``model.safetensors.index.json`` and
       lists its ``shards``); ``knobs`` (models) and ``shards`` always present.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = ["FORMAT_VERSION", "UPGRADERS", "check_version", "upgrade"]

FORMAT_VERSION = 2

Doc = dict[str, Any]


def _v1_to_v2(doc: Doc) -> Doc:
    """Version 1 had no sharded files, and models saved before knobs existed have none."""
    out = {**doc, "format_version": 2, "shards": []}
    if doc.get("kind") == "model":
        out.setdefault("knobs", {})
    return out


# version -> function rewriting a document of that version into one of the next version
UPGRADERS: dict[int, Callable[[Doc], Doc]] = {1: _v1_to_v2}


def check_version(file: Path, version: int) -> None:
    """Refuse a version newer than this code reads (or one no upgrader starts from)."""
    if version > FORMAT_VERSION:
        raise CheckpointError(
            file,
            f"format version {version} is newer than this modelfactory reads "
            f"({FORMAT_VERSION}); upgrade modelfactory",
        )


def upgrade(file: Path, doc: Doc) -> Doc:
    """``doc`` (already checked: digest, integer version) rewritten to ``FORMAT_VERSION``.

    Raises:
        CheckpointError: a version newer than this code reads, or an old version that no
            registered upgrader reads.
    """
    version = doc["format_version"]
    check_version(file, version)
    while version < FORMAT_VERSION:
        step = UPGRADERS.get(version)
        if step is None:
            raise CheckpointError(
                file,
                f"format version {version} cannot be read: no upgrader from version {version} "
                f"to {version + 1} (this modelfactory writes version {FORMAT_VERSION})",
            )
        doc = step(doc)
        if not doc["format_version"] > version:  # a registry bug, never a file's fault
            raise RuntimeError(f"the upgrader from format version {version} did not upgrade")
        version = doc["format_version"]
    return doc
