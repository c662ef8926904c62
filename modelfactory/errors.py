"""The one error hierarchy of modelfactory.

Every error names where the problem is (a config path such as
``model.layers.2.out_features`` or a file) and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


class ModelFactoryError(Exception):
    """Base class of every error modelfactory raises on bad input.

    Every subclass pickles with its type, message and attributes (a sweep job's error
    travels back from a launcher's process), whatever its constructor takes.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type[ModelFactoryError], args: tuple, state: dict[str, Any]) -> Exception:
    """An unpickled error: made without calling its constructor, as it was."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(ModelFactoryError, ValueError):
    """A config is not well-formed; ``problems`` lists ``(path, message)`` pairs."""

    def __init__(self, problems: Iterable[tuple[str, str]], header: str | None = None) -> None:
        self.problems = list(problems)
        if header is None:
            header = (
                "Config is not well-formed:"
                if len(self.problems) == 1
                else f"Config is not well-formed, found {len(self.problems)} problems:"
            )
        lines = [header] + [f"  {path or '<root>'}: {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.problems]


class BuildError(ModelFactoryError, RuntimeError):
    """Constructing or running a block failed; names the config path that built it."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class ArgumentError(ConfigError, BuildError):
    """A block's constructor refused the values its config node gave it (a negative size,
    an empty list): a config mistake found while constructing, so it is both a
    :class:`ConfigError` and a :class:`BuildError`; ``path`` names the node."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.problems = [(path, message)]
        Exception.__init__(self, f"Config is not well-formed:\n  {path}: {message}")


class TieError(ConfigError):
    """A ``tie`` group cannot be applied (unknown path, shape or dtype mismatch)."""


class DeviceError(ConfigError):
    """A requested device does not exist or cannot hold the model."""


class CheckpointError(ModelFactoryError, OSError):
    """A checkpoint file is missing, corrupt, incompatible or does not match the model."""

    def __init__(self, file: object, message: str) -> None:
        self.file = str(file)
        super().__init__(f"{self.file}: {message}")


class UntrustedTargetError(CheckpointError):
    """A checkpoint's config names a ``_target_`` outside the trusted prefixes.

    ``reason`` is the message without its last sentence, ``fix``, which says how to trust a
    prefix as a caller of ``load`` does (the command line spells it its own way).
    """

    FIX = "Pass trusted=['mypkg.*'] to load(), only for files you trust."

    def __init__(self, file: object, reason: str, fix: str = FIX) -> None:
        self.reason, self.fix = reason, fix
        super().__init__(file, f"{reason} {fix}")


def path_join(base: str, key: object) -> str:
    """Join a config path and a key the way error messages show it."""
    return f"{base}.{key}" if base else str(key)


def dotted(key: str) -> str:
    """OmegaConf's ``layers[0].out_features`` as validation names it: ``layers.0.out_features``."""
    return re.sub(r"\[([^\]]*)\]", r".\1", key).lstrip(".")


def value_kind(v: Any) -> str:
    """A value as an error names it: ``null``, ``int 3``, ``str 'relu'``, ``list``."""
    scalar = isinstance(v, (str, int, float, bool))
    return "null" if v is None else type(v).__name__ + (f" {v!r}" if scalar else "")
