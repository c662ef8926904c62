"""The build record: what a built (or loaded) model carries about how it was made.

Build returns the record explicitly; the model holds exactly one, read through
:func:`config_of` (public) and :func:`record_of` (save, the app, sample runs).
No other stage stores state on the model.
"""

from __future__ import annotations

import copy
import marshal
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["BuildRecord", "attach", "config_of", "record_of"]

_ATTR = "_modelfactory_record"


class Snapshot:
    """A full config whose model tree is kept as ``marshal`` bytes of plain data, loaded when
    first read: a build that parsed the caller's own tree copies it only if asked."""

    __slots__ = ("model", "template")

    def __init__(self, template: dict[str, Any], model: bytes) -> None:
        self.template, self.model = template, model  # template: the config but its model

    def load(self) -> dict[str, Any]:
        # Format 4 keeps a subtree used twice as one object; written again in format 2, which
        # has no references, it is read back as two, as a JSON copy has them.
        model = marshal.loads(marshal.dumps(marshal.loads(self.model), 2))
        return {**self.template, "model": model}


class BuildRecord:
    """How a model was made.

    Attributes:
        config: the resolved full config (plain data) that builds the architecture.
        ties: the resolved tie groups, ``(kind, [source, other, ...])`` each.
        paths: ``id(module) -> config path`` of every module a config node built, for
            error messages (a module replaced later is named by its module path instead).
        knobs: the config's knobs (top-level keys its interpolations used, ``d_model``),
            already applied in ``config``; kept for people (the checkpoint shows them).
    """

    __slots__ = ("_config", "knobs", "paths", "ties")

    def __init__(
        self,
        config: dict[str, Any] | Snapshot,
        ties: list[tuple[str, list[str]]] | None = None,
        paths: Mapping[int, str] | None = None,
        knobs: Mapping[str, Any] | None = None,
    ) -> None:
        self._config = config
        self.ties = ties if ties is not None else []
        self.paths = paths if paths is not None else {}
        self.knobs = knobs if knobs is not None else {}

    @property
    def config(self) -> dict[str, Any]:
        if type(self._config) is Snapshot:
            self._config = self._config.load()
        return self._config

    def __getstate__(self) -> dict[str, Any]:
        # the state of the dataclass a record was: earlier versions unpickle it, and it takes
        # every pickle protocol
        return {"config": self.config, "ties": self.ties, "paths": self.paths, "knobs": self.knobs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._config = state["config"]
        self.ties, self.paths, self.knobs = state["ties"], state["paths"], state["knobs"]


def attach(model: nn.Module, record: BuildRecord) -> nn.Module:
    """Give ``model`` its record (replacing any earlier one); returns ``model``."""
    model.__dict__[_ATTR] = record  # not a submodule, parameter or buffer: plain __dict__
    return model


def record_of(model: nn.Module) -> BuildRecord | None:
    """The record of a model modelfactory built or loaded, else ``None``."""
    record = model.__dict__.get(_ATTR)
    return record if isinstance(record, BuildRecord) else None


def config_of(model: nn.Module) -> dict[str, Any] | None:
    """The resolved config a model was built from (a copy), or ``None`` for other models.

    For a loaded model it is the checkpoint's config, with ``device`` saying where the
    model was placed. ``modelfactory.build(config_of(model))`` rebuilds the architecture.
    """
    record = record_of(model)
    return copy.deepcopy(record.config) if record is not None else None
