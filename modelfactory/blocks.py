"""Composition blocks: plain ``nn.Module``s that receive built children.

None of them knows about configs; modelfactory's factory builds their
children and passes them in, exactly as you would in Python::

    Sequential({"hidden": nn.Linear(20, 256), "act": nn.ReLU()})
    Repeat(4, lambda i: nn.Linear(8, 8))

Keyword inputs: ``model(x, attention_mask=m)`` gives each keyword to every block inside
that takes it, through any nesting of these blocks; a block that takes none gets ``x``
alone. A block takes the keywords its ``forward`` names after the input
(``def forward(self, x, attention_mask=None)``), every keyword with ``**kwargs``, or
what its method ``keyword_inputs()`` returns (a container of your own: see
:func:`route`). A keyword that no block inside takes is a ``TypeError``, as a misspelt
argument is in Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from string import Formatter
from typing import Any, TypeVar

import torch
from torch import nn

from ._inputs import Inputs, route, routes, taken, taken_by_all

__all__ = ["Parallel", "Repeat", "Residual", "Sequential", "build_options", "route"]

M = TypeVar("M", bound=type)


def build_options(
    *, factories: Sequence[str] = (), stream_ignore: Sequence[str] = (), draws: bool = True
) -> Callable[[M], M]:
    """Class decorator: how modelfactory builds a block of this class from config.

    Args:
        factories: arguments passed as factories instead of built modules: the config
            gives a block node, the class receives ``make(i) -> nn.Module`` that builds a
            fresh, independently seeded copy per call (``Repeat``'s ``block``).
        stream_ignore: arguments that are not part of the block's identity, so changing
            them keeps every child's random stream (``Repeat``'s ``n``: growing a stack
            keeps the values of the copies it had). Inherited by subclasses.
        draws: ``False`` when the constructor itself draws no random numbers (its children
            are seeded on their own), so the build skips reseeding for it. Applies to this
            exact class only, never to subclasses, which may draw.

    Example::

        @build_options(factories=("layer",), stream_ignore=("depth",), draws=False)
        class Tower(nn.Sequential):
            def __init__(self, depth: int, layer: Callable[[int], nn.Module]) -> None: ...
    """

    def mark(cls: M) -> M:
        cls._mf_factories = tuple(factories)
        cls._mf_stream_ignore = tuple(stream_ignore)
        cls._mf_draws_nothing = not draws
        return cls

    return mark


def _named(
    children: Sequence[nn.Module] | Mapping[str, nn.Module], what: str
) -> dict[str, nn.Module]:
    if isinstance(children, Mapping):
        named = {str(k): v for k, v in children.items()}
    elif isinstance(children, Sequence) and not isinstance(children, str):
        named = {str(i): v for i, v in enumerate(children)}
    else:
        raise TypeError(
            f"{what} must be a list or a mapping of modules, got {type(children).__name__}"
        )
    if not named:
        raise ValueError(f"{what} is empty; give at least one block")
    for name, child in named.items():
        if not isinstance(child, nn.Module):
            raise TypeError(f"{what}[{name!r}] is a {type(child).__name__}, not an nn.Module")
        _check_child_name(name, f"{what} child name")
    return named


# Attributes of the containers children are added to: torch's add_module refuses them.
TAKEN_NAMES = frozenset(dir(nn.Sequential())) | frozenset(dir(nn.ModuleDict()))


def _check_child_name(name: str, what: str) -> None:
    """Refuse the names torch's ``add_module`` refuses, saying why; ``what`` names the
    name in the message (``layers child name``)."""
    if "." in name or not name:
        raise ValueError(f"{what} {name!r} must be non-empty and contain no '.'")
    if name in TAKEN_NAMES:
        raise ValueError(
            f"{what} {name!r} is taken by an attribute of nn.Module "
            f"(nn.Module.{name}); choose another name"
        )


class _Chain(nn.Sequential):
    """Children in order, each given the keyword inputs it takes."""

    def forward(self, x: Any, **inputs: Any) -> Any:
        if not inputs:  # the common case: exactly nn.Sequential's loop
            for module in self:
                x = module(x)
            return x
        for module, given in routes(self, self, inputs):
            x = module(x, **given)
        return x

    def keyword_inputs(self) -> Inputs:
        """The keyword inputs some child takes (``None``: any)."""
        return taken_by_all(self)


@build_options(draws=False)  # builds nothing random itself (children are seeded)
class Sequential(_Chain):
    """Children in order; a mapping's keys become the children's names.

    Args:
        layers: a list of modules (named ``0``, ``1``, ...) or a mapping name -> module.
    """

    def __init__(self, layers: Sequence[nn.Module] | Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name, child in _named(layers, "layers").items():
            self.add_module(name, child)


@build_options(factories=("block",), stream_ignore=("n",), draws=False)
class Repeat(_Chain):
    """``n`` independent copies of a block, run in sequence; the first may differ.

    Args:
        n: how many copies, ``first`` included.
        block: a callable ``block(i) -> nn.Module`` called once per copy, so each copy has
            its own parameters. From a config, modelfactory passes a factory that builds the
            ``block`` node afresh (and independently seeded) for every ``i``.
        name: the child name of copy ``i``, a format string with ``{i}``.
        first: copy 0, when it differs from the others (a stage whose first block
            downsamples); ``block`` then makes copies ``1`` to ``n - 1``, each with the
            values it would have without ``first``.
    """

    def __init__(
        self,
        n: int,
        block: Callable[[int], nn.Module],
        name: str = "{i}",
        first: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if isinstance(block, nn.Module) or not callable(block):
            raise TypeError(
                "block must be a callable returning a fresh module per copy "
                "(e.g. lambda i: nn.Linear(8, 8)); a single module would be shared, not repeated"
            )
        if first is not None and not isinstance(first, nn.Module):
            raise TypeError(f"first must be an nn.Module, got {type(first).__name__}")
        names = _copy_names(name, n)
        for i in range(n):
            child = first if i == 0 and first is not None else block(i)
            if not isinstance(child, nn.Module):
                raise TypeError(f"block({i}) returned a {type(child).__name__}, not an nn.Module")
            self.add_module(names[i], child)


MAX_NAME = 256  # characters of a copy's name, and of the width a format may pad it to


def _copy_names(name: str, n: int) -> list[str]:
    """The child names of ``Repeat``'s copies: ``name`` formatted with ``i``; refuses a name
    that is not such a format, that could be huge (``{i:200000000}``), or whose copies would
    not be distinct (``b{{i}}`` is the literal ``b{i}`` for every copy)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string with '{{i}}', got {type(name).__name__}")
    try:
        fields = [(f, spec) for _, f, spec, _ in Formatter().parse(name) if f is not None]
    except ValueError as e:
        raise ValueError(f"name {name!r} is not a format string with '{{i}}': {e}") from e
    if not fields or any(f != "i" for f, _ in fields):
        raise ValueError(f"name must contain '{{i}}' (and no other field), got {name!r}")
    widths = [int(w) for _, spec in fields for w in re.findall(r"[0-9]+", spec or "")]
    if (
        len(name) > MAX_NAME
        or any(w > MAX_NAME for w in widths)
        or "{" in "".join(spec or "" for _, spec in fields)
    ):
        raise ValueError(
            f"name {name!r:.80} could give copies names longer than {MAX_NAME} characters"
        )
    names: dict[str, int] = {}
    for i in range(n):
        text = name.format(i=i)
        _check_child_name(text, f"copy {i}'s name")
        if text in names:
            raise ValueError(
                f"name {name!r} gives copy {i} the name {text!r} of copy {names[text]}; "
                "copies need distinct names"
            )
        names[text] = i
    return list(names)


@build_options(draws=False)
class Parallel(nn.Module):
    """Every branch on the same input; outputs combined by ``cat`` (along ``dim``) or ``sum``."""

    def __init__(
        self,
        branches: Sequence[nn.Module] | Mapping[str, nn.Module],
        combine: str = "cat",
        dim: int = -1,
    ) -> None:
        super().__init__()
        if combine not in ("cat", "sum"):
            raise ValueError(f"combine must be 'cat' or 'sum', got {combine!r}")
        self.combine, self.dim = combine, dim
        self.branches = nn.ModuleDict(_named(branches, "branches"))

    def forward(self, x: torch.Tensor, **inputs: Any) -> torch.Tensor:
        outs = [
            branch(x, **given) for branch, given in routes(self, self.branches.values(), inputs)
        ]
        if self.combine == "cat":
            return torch.cat(outs, dim=self.dim)
        total = outs[0]
        for o in outs[1:]:
            total = total + o
        return total

    def keyword_inputs(self) -> Inputs:
        """The keyword inputs some branch takes (``None``: any)."""
        return taken_by_all(self.branches.values())

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, dim={self.dim}"


@build_options(draws=False)
class Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        if not isinstance(body, nn.Module):
            raise TypeError(f"body must be an nn.Module, got {type(body).__name__}")
        self.body = body

    def forward(self, x: torch.Tensor, **inputs: Any) -> torch.Tensor:
        if not inputs:
            return x + self.body(x)
        ((body, given),) = routes(self, [self.body], inputs)
        return x + body(x, **given)

    def keyword_inputs(self) -> Inputs:
        """The keyword inputs the body takes (``None``: any)."""
        return taken(self.body)
