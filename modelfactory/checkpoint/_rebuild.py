"""A model rebuilt from its checkpoint, in the one order every read path keeps.

1. the header and its document (read and bounded by ``_format`` / ``_shards``);
2. the format version and the document's schema (``_format.parse_doc``);
3. the trust of every target the config names (``_trust``);
4. the config's bounds (blocks, values, the sample input; the sample pass for ``restore=``),
   and the architecture on ``meta`` with the stored shapes, which the stored tensors must fit;
5. only then the weights, assigned into that architecture.

Steps 2 to 4 run in :func:`prepare`, on the header alone: any refusal there reads no tensor
data. :func:`assemble` is step 5's second half, once the weights are read.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._record import attach, record_of
from ..errors import CheckpointError
from ..tie import apply_ties, check_ties
from . import _state
from ._bounds import check_fill
from ._commit import recover
from ._config_copy import compare_copy, read_copy
from ._files import stored_bytes
from ._format import Header
from ._trust import check_config
from ._writer import dtype_named

__all__ = ["Prepared", "assemble", "prepare"]

# A check of the trusted config, run before any weight is read (``restore=`` bounds its
# sample pass with one).
ConfigCheck = Callable[[dict[str, Any], Path], None]


@dataclass
class Prepared:
    """What a checkpoint's header allows, before its weights are read."""

    config: dict[str, Any]
    skeleton: nn.Module  # the architecture, on meta (or its constructors' CPU fallback)
    expected: dict[str, Any]  # name -> (dtype, shape) the architecture wants
    problems: list[str]  # what the stored tensors do not fit (only with strict=False)


def prepare(
    header: Header, trusted: tuple[str, ...], strict: bool, checks: Iterable[ConfigCheck] = ()
) -> Prepared:
    """Steps 2 to 4 on a checked header: trust, bounds, ``checks``, the architecture and
    the fit of the stored tensors (strict: every mismatch is refused here).

    Raises:
        UntrustedTargetError: a target outside the trusted prefixes (nothing imported).
        CheckpointError: a bound passed, a config that does not build, tensors that do not
            fit (strict).
    """
    doc, file = header.doc or {}, header.file
    config = doc["config"]
    check_config(config, file, trusted)
    for check in checks:
        check(config, file)
    stored = _stored(doc)
    nonpersistent = doc.get("nonpersistent", [])
    shapes = {k: shape for k, (_, shape) in stored.items()}
    skeleton = _state.skeleton(config, shapes, file, stored_bytes(header))
    _state.check_nonpersistent(skeleton, nonpersistent, file)
    expected = _state.wanted_signature(skeleton, nonpersistent)
    problems = _state.mismatches(expected, stored)
    if problems and strict:
        raise CheckpointError(
            file,
            f"does not fit the model its config builds ({len(problems)} problems; "
            "load(strict=False) to load what fits):\n  " + "\n  ".join(problems),
        )
    if problems:
        check_fill(file, expected, stored)
    return Prepared(config, skeleton, expected, problems)


def _stored(doc: dict[str, Any]) -> dict[str, tuple[torch.dtype | None, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor the document lists, aliases included."""
    out = {k: (dtype_named(v[0]), tuple(v[1])) for k, v in doc["tensors"].items()}
    out.update({alias: out[source] for alias, source in doc.get("aliases", {}).items()})
    return out


def assemble(
    prepared: Prepared, tensors: dict[str, torch.Tensor], doc: dict[str, Any], file: Path
) -> nn.Module:
    """The prepared architecture with the stored tensors in it, ties and modes restored."""
    nonpersistent, aliases = doc.get("nonpersistent", []), doc.get("aliases", {})
    model = prepared.skeleton
    if prepared.problems:
        warnings.warn(
            f"{file}: loading what fits:\n  " + "\n  ".join(prepared.problems), stacklevel=4
        )
        record = record_of(model)
        model = _state.model_with_what_fits(
            model, prepared.config, tensors, prepared.expected, nonpersistent, aliases
        )
        if record_of(model) is None:
            attach(model, record)
    else:
        _state.assign(model, tensors, nonpersistent, aliases)
    _state.check_filled(model, file)
    ties = record_of(model).ties
    apply_ties(model, ties)
    check_ties(model, ties)
    _state.restore_modes(model, doc.get("eval", []))
    return model


def compare_with_copy(header: Header, copy: Path | None) -> None:
    """Warn when the ``config.yaml`` copy beside the file says something else than the
    embedded config (the authority)."""
    if copy is None:
        return
    doc, data = header.doc or {}, header.copy
    sha256 = doc.get("config_yaml_sha256")
    if data is not None and hashlib.sha256(data).hexdigest() != sha256:
        # new weights may have been read just before their save renamed the copy:
        # wait for a switch in progress, then look at the copy again
        recover(copy.parent)
        data = read_copy(copy)
    compare_copy(copy, doc["config"], header.file, sha256, data)
