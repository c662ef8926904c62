"""Keyword inputs through composition: which block takes which keyword.

See :mod:`modelfactory.blocks` for what a user sees; :func:`route` is public there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from ._targets import signature_of

__all__ = ["Inputs", "route", "routes", "taken", "taken_by_all"]

Inputs = frozenset[str] | None  # the keyword inputs a block takes; None: every keyword


def route(module: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword inputs out of ``inputs`` that ``module`` takes.

    A block takes what its ``keyword_inputs()`` method returns if it has one, else the
    keywords its ``forward`` names after the input (every keyword with ``**kwargs``).
    A container of your own passes keyword inputs on as these blocks do::

        def keyword_inputs(self):  # what the children take, together
            return union_of_children_inputs  # a frozenset of names, or None for all

        def forward(self, x, **inputs):
            for child in self.children():
                x = child(x, **route(child, inputs))
            return x
    """
    if not inputs:
        return {}
    names = taken(module)
    return dict(inputs) if names is None else {k: v for k, v in inputs.items() if k in names}


_FORWARD_INPUTS: dict[Any, Inputs] = {}


def taken(module: nn.Module) -> Inputs:
    """The keyword inputs ``module`` takes (``None``: every keyword)."""
    declared = getattr(module, "keyword_inputs", None)
    if callable(declared):
        return declared()
    forward = module.forward
    fn = getattr(forward, "__func__", None)  # the class's function: its answer is cached
    if fn is not None and fn in _FORWARD_INPUTS:
        return _FORWARD_INPUTS[fn]
    sig = signature_of(fn if fn is not None else forward)
    skip = 2 if fn is not None else 1  # self (of the function), and the input x
    names = None if sig.accepts_var_kw else frozenset(_keywords(sig, skip))
    if fn is not None:
        _FORWARD_INPUTS[fn] = names
    return names


def _keywords(sig: Any, skip: int) -> list[str]:
    positional = sig.positional[:skip]
    return [n for n in sig.names if n not in positional]


def taken_by_all(children: Iterable[nn.Module]) -> Inputs:
    """The keyword inputs some of ``children`` takes (``None``: every keyword)."""
    names: set[str] = set()
    for child in children:
        names_of_child = taken(child)
        if names_of_child is None:
            return None
        names |= names_of_child
    return frozenset(names)


def routes(
    owner: nn.Module, children: Iterable[nn.Module], inputs: Mapping[str, Any]
) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Each child with the keyword inputs it takes; raises for a keyword none takes."""
    children = list(children)
    if not inputs:
        return [(child, {}) for child in children]
    out, used = [], set()
    for child in children:
        given = route(child, inputs)
        used.update(given)
        out.append((child, given))
    unused = sorted(set(inputs) - used)
    if unused:
        all_taken = taken_by_all(children)
        known = "any keyword" if all_taken is None else ", ".join(sorted(all_taken)) or "none"
        raise TypeError(
            f"{type(owner).__name__}.forward() got keyword input(s) {', '.join(unused)} that "
            f"no block inside takes (they take: {known}); a block takes the keywords its "
            "forward() names"
        )
    return out
