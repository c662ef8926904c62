"""The parts a conversion is made of: name patterns, renames, ties, config expressions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_FIELD = re.compile(r"\{([A-Za-z_]\w*)\}")


@dataclass(frozen=True)
class Pattern:
    """A tensor name with ``{placeholder}`` parts.

    A placeholder matches a non-empty run of characters inside one name segment: an index
    (``h.{i}.attn`` on ``h.11.attn``) or a word (``{p}`` on ``weight``, ``running_mean``).
    It ends at the next ``.`` or at the first character of the text that follows it in the
    pattern (``{p}_proj`` takes ``q`` from ``q_proj``), so every name has at most one way to
    match: the compiled expression never backtracks more than once per character, whatever
    the name. Placeholders must be separated by text (``{a}{b}`` has no single reading).
    """

    text: str
    fields: frozenset[str]
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Compile ``text``; raises ``ValueError`` saying what is wrong with it."""
        parts = _FIELD.split(text)
        literals, names = parts[0::2], parts[1::2]
        if any("{" in p or "}" in p for p in literals):
            raise ValueError(f"{text!r}: braces must enclose a placeholder name such as {{i}}")
        if len(set(names)) != len(names):
            raise ValueError(f"{text!r}: a placeholder appears twice")
        for a, b, between in zip(names, names[1:], literals[1:], strict=False):
            if not between:
                raise ValueError(
                    f"{text!r}: placeholders {{{a}}} and {{{b}}} touch; separate them with "
                    "text (such as '.' or '_') so that a name splits one way only"
                )
        regex = re.escape(literals[0]) + "".join(
            f"(?P<{n}>[^.{re.escape(lit[:1])}]+)" + re.escape(lit)
            for n, lit in zip(names, literals[1:], strict=True)
        )
        return cls(text, frozenset(names), re.compile(regex))

    def match(self, name: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(name)
        return m.groupdict() if m else None

    def fill(self, values: Mapping[str, str]) -> str:
        return _FIELD.sub(lambda m: values[m.group(1)], self.text)


@dataclass(frozen=True)
class Rename:
    foreign: Pattern
    native: Pattern
    transpose: bool = False


@dataclass(frozen=True)
class Tie:
    foreign: Pattern
    native: Pattern | None
    source: Rename  # the rename whose foreign name is this tie's ``same_as``


@dataclass(frozen=True)
class Expr:
    """A config value read off the model: ``kind`` is shape, count, attr, dtype or value."""

    kind: str
    arg: Any
    dim: int = 0
    offset: int = 0


@dataclass(frozen=True)
class Conversion:
    """A validated conversion file (see the module docstring for its schema)."""

    name: str
    file: Path
    renames: tuple[Rename, ...]
    ties: tuple[Tie, ...] = ()
    ignore: tuple[Pattern, ...] = ()
    optional_prefix: str = ""
    description: str = ""
    config_file: str | None = None
    config_values: Mapping[str, Any] = field(default_factory=dict)
    config_check: tuple[str, ...] = ()


def shape_of(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def fail(source: object, what: str, problems: list[str]) -> None:
    if problems:
        raise CheckpointError(source, f"{what}:\n  " + "\n  ".join(problems))
