"""The ``config.yaml`` copy beside a checkpoint: read with bounded work, compared, warned about.

The copy is for people; the config embedded in ``model.safetensors`` is the authority. So
whatever is wrong with the copy (too big, not a regular file, not UTF-8, YAML that does not
parse, unsafe tags, aliases, values the safe loader refuses) is the same warning as a copy
that says something else, never an error. The work is bounded before it is done: the file
is ``stat``-ed before it is opened and read up to ``MAX_COPY_BYTES``; its YAML events are
scanned (``modelfactory._bounded``: iteratively, no recursion) for depth, size and aliases
before anything is constructed, with the safe loader (libyaml's ``CSafeLoader`` when
available), and a value the loader cannot construct is one more reason for the warning.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

from .._bounded import OverBound, check_yaml, read_capped

__all__ = ["MAX_COPY_BYTES", "compare_copy", "read_copy"]

MAX_COPY_BYTES = 1 << 20  # 1 MiB: a GPT-2 config's copy is about 3 KB
MAX_COPY_DEPTH = 200  # as deep as a config may nest (modelfactory._spec.MAX_DEPTH)
MAX_COPY_EVENTS = 200_000  # YAML nodes (scalars, sequences, mappings)


class _Unusable(Exception):
    """The copy cannot be compared; the message says why (it ends up in the warning)."""


def read_copy(copy: Path | None) -> bytes | None:
    """``config.yaml``'s bytes, read with bounded work (``None``: no copy, or one that
    cannot be read so; :func:`compare_copy` then says why)."""
    if copy is None:
        return None
    try:
        return _read_bounded(copy)
    except _Unusable:
        return None


def compare_copy(
    copy: Path, config: dict[str, Any], file: Path, sha256: Any = None, data: bytes | None = None
) -> None:
    """Warn when ``config.yaml`` says something else than the embedded config, or cannot be
    read with bounded work. A copy whose bytes still have the digest recorded at save time
    is not parsed. ``data``: the copy's bytes as read together with the checkpoint (a save
    landing in between would otherwise pair one save's weights with the next one's copy)."""
    try:
        data = _read_bounded(copy) if data is None else data
        if isinstance(sha256, str) and hashlib.sha256(data).hexdigest() == sha256:
            return
        same = _parse(data) == config
        reason = ""
    except _Unusable as e:
        same, reason = False, f" ({e})"
    if not same:
        warnings.warn(
            f"{copy} differs from the config embedded in {file}; using the embedded one{reason}",
            stacklevel=3,
        )


def _read_bounded(copy: Path) -> bytes:
    """The bytes of a regular file of at most ``MAX_COPY_BYTES`` (``stat`` first, so a FIFO,
    a device or a directory is never read, and a huge file is not read at all)."""
    try:
        return read_capped(copy, MAX_COPY_BYTES)
    except OverBound as e:
        raise _Unusable(str(e)) from e
    except OSError as e:
        raise _Unusable(f"cannot read it: {e.strerror or e}") from e


def _parse(data: bytes) -> Any:
    """The copy's YAML with the safe loader, once its events show it is small, shallow and
    free of aliases (which could make the comparison exponential)."""
    import yaml  # only for a copy whose digest changed: off the usual load path

    try:
        text = data.decode("utf-8")
        check_yaml(text, max_depth=MAX_COPY_DEPTH, max_nodes=MAX_COPY_EVENTS, aliases=False)
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OverBound as e:
        raise _Unusable(str(e)) from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise _Unusable(f"not readable YAML: {type(e).__name__}") from e
    except Exception as e:
        # A constructor of the safe loader failed on a value (a 5000-digit int, a malformed
        # !!timestamp raises AttributeError): the copy holds nothing to compare.
        raise _Unusable(f"holds a value the safe loader refuses: {type(e).__name__}") from e
