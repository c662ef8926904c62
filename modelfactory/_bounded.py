"""Reading files that may be hostile with work bounded before it is done.

``read_capped``: the bytes of a regular file up to a size cap (``stat``-ed first: a FIFO, a
device or a directory is never read, a huge file not read at all). ``check_yaml``: what a
YAML text expands to, measured on the parser's events (iteratively, no recursion; an alias
counts as the whole node it repeats, at every use) before anything is constructed, so an
alias bomb or a text nested 100,000 deep is refused in time linear in its length.
``excerpt``: a value quoted in an error message, bounded however large the value is.
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path
from typing import Any

__all__ = ["MAX_YAML_NODES", "OverBound", "check_yaml", "excerpt", "read_capped"]

# Nodes a YAML config or conversion file may expand to: OmegaConf builds about 5,000 nodes a
# second on a busy 2-core machine, and a GPT-2 config has about 100.
MAX_YAML_NODES = 50_000


class OverBound(ValueError):
    """A file is beyond a bound (or not a regular file); the message says which."""


def read_capped(file: Path, limit: int) -> bytes:
    """The bytes of the regular file ``file``, at most ``limit`` of them.

    Raises:
        OverBound: not a regular file (a FIFO, a device, a directory), or larger than ``limit``.
        OSError: it cannot be read.
    """
    if not stat.S_ISREG(os.stat(file).st_mode):
        raise OverBound("not a regular file")
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)  # the file opened may not be the one stat-ed
        if not stat.S_ISREG(info.st_mode):
            raise OverBound("not a regular file")
        if info.st_size > limit:
            raise OverBound(f"larger than {limit:,} bytes, not read")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:  # grew after the stat
        raise OverBound(f"larger than {limit:,} bytes, not read")
    return b"".join(chunks)


def check_yaml(text: str, *, max_depth: int, max_nodes: int, aliases: bool = True) -> None:
    """Refuse a YAML text that nests deeper than ``max_depth`` levels or expands to more than
    ``max_nodes`` nodes (scalars, lists, mappings; aliases counted at each use). Syntax
    errors are ``yaml.YAMLError`` s, as the loader's.

    Raises:
        OverBound: saying which bound (or ``uses YAML aliases`` when ``aliases`` is false).
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, levels) of its node
    opened: list[list[Any]] = []  # per open collection: [anchor, nodes before it, levels below]
    nodes = 0
    for event in yaml.parse(text, Loader=loader):
        levels = 0  # of the node just completed or repeated, itself included
        if isinstance(event, yaml.CollectionStartEvent):
            opened.append([event.anchor, nodes, 0])
            nodes += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before, below = opened.pop()
            levels = below + 1
            if anchor is not None:
                anchored[anchor] = (nodes - before, levels)
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor is not None:
                anchored[event.anchor] = (1, 0)
        elif isinstance(event, yaml.AliasEvent):
            if not aliases:
                raise OverBound("uses YAML aliases")
            size, levels = anchored.get(event.anchor, (1, 0))  # unknown: the loader says so
            nodes += size
        if opened and levels > opened[-1][2]:
            opened[-1][2] = levels
        if len(opened) + levels > max_depth:
            raise OverBound(f"nests deeper than {max_depth} levels")
        if nodes > max_nodes:
            raise OverBound(
                f"holds more than {max_nodes:,} YAML nodes (an alias counts at each use)"
            )


_EXCERPT = reprlib.Repr()
_EXCERPT.maxlevel, _EXCERPT.maxstring, _EXCERPT.maxother = 2, 100, 100
_EXCERPT.maxlist = _EXCERPT.maxtuple = _EXCERPT.maxdict = _EXCERPT.maxset = 3


def excerpt(value: Any) -> str:
    """``repr(value)`` cut short (three items per level, two levels, long strings
    shortened): its cost and length are bounded whatever ``value`` holds."""
    return _EXCERPT.repr(value)
