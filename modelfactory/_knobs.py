"""Knobs: top-level keys of a config that its interpolations use.

A model file declares its hyperparameters once, as top-level keys (``d_model: 64``), and
uses them by interpolation (``in_features: ${d_model}``), so one override
(``d_model=128``) changes every use. A top-level key that is not a build key is a knob
iff some interpolation in the config references it; any other is a typo, and an error.

References are read with OmegaConf's own interpolation grammar, so relative ones
(``${..width}``) and interpolations nested in resolver arguments count too.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

__all__ = ["close_key", "referenced_top_keys"]

Path = tuple[Any, ...]


def referenced_top_keys(tree: Any, where: Path = ()) -> frozenset[str]:
    """Top-level keys that the interpolations in ``tree`` reference.

    Args:
        tree: plain, unresolved config data (``OmegaConf.to_container(resolve=False)``).
        where: the path of ``tree`` in its root config (``("model",)`` for ``cfg.model``),
            so that relative interpolations are followed to the right root key.
    """
    found: set[str] = set()
    stack: list[tuple[Path, Any]] = [(where, tree)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            if "${" in v:
                found.update(_top_key(path, dots, key) for dots, key in references(v))
        elif isinstance(v, dict):
            stack.extend(((*path, k), x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend(((*path, i), x) for i, x in enumerate(v))
    found.discard("")
    return frozenset(found)


def _top_key(path: Path, dots: int, key: str) -> str:
    """The root key that ``${<dots>key...}``, written at ``path``, refers to ("" if none)."""
    if dots == 0:
        return key
    container = path[:-1]  # ${.x} is a sibling: it lives in the value's own container
    up = dots - 1
    if up > len(container):
        return ""
    base = container[: len(container) - up]
    return str(base[0]) if base else key


@lru_cache(maxsize=8192)
def references(text: str) -> tuple[tuple[int, str], ...]:
    """``(leading dots, first key)`` of every node interpolation in ``text``.

    ``"${d_model}"`` -> ``((0, "d_model"),)``; ``"${..a.b}"`` -> ``((2, "a"),)``. A key that
    is itself an interpolation (``${${name}}``) contributes only the inner reference; a
    string OmegaConf cannot parse has none (resolving it reports the problem).
    """
    from antlr4 import TerminalNode
    from omegaconf.errors import GrammarParseError
    from omegaconf.grammar_parser import OmegaConfGrammarParser, parse

    try:
        tree = parse(text)
    except GrammarParseError:
        return ()
    out: list[tuple[int, str]] = []
    stack = [tree]
    while stack:
        ctx = stack.pop()
        if isinstance(ctx, OmegaConfGrammarParser.InterpolationNodeContext):
            ref = _node_reference(ctx, OmegaConfGrammarParser.ConfigKeyContext, TerminalNode)
            if ref is not None:
                out.append(ref)
        stack.extend(
            ctx.getChild(i)
            for i in range(ctx.getChildCount())
            if not isinstance(ctx.getChild(i), TerminalNode)
        )
    return tuple(out)


def _node_reference(ctx: Any, key_type: type, terminal: type) -> tuple[int, str] | None:
    """``(dots, first key)`` of one ``${...}`` node interpolation."""
    dots = 0
    for child in ctx.getChildren():
        if isinstance(child, key_type):
            key = child.getText()
            return None if "${" in key else (dots, key)
        if isinstance(child, terminal) and child.getText() == ".":
            dots += 1
    return None


def close_key(key: str, options: Iterable[str]) -> str | None:
    """The option closest to ``key`` (``d_modle`` -> ``d_model``), if any is close."""
    hit = difflib.get_close_matches(key, sorted(set(options)), n=1, cutoff=0.6)
    return hit[0] if hit else None
