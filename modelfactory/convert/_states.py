"""Renaming whole states: foreign names -> modelfactory names (import) and back (export)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._file import as_conversion
from ._rules import Conversion, Pattern, Rename, Tie, fail, shape_of


def _classify(conv: Conversion, name: str) -> tuple[str, Any, dict[str, str]] | None:
    """The rule a foreign name falls under: ``(name as the rules spell it, rule, fields)``."""
    candidates = [name]
    if conv.optional_prefix and not name.startswith(conv.optional_prefix):
        candidates.append(conv.optional_prefix + name)
    for key in candidates:
        for rule in (*conv.renames, *conv.ties, *conv.ignore):
            pattern = rule if isinstance(rule, Pattern) else rule.foreign
            fields = pattern.match(key)
            if fields is not None:
                return key, rule, fields
    return None


def _orient(t: torch.Tensor, rule: Rename, name: str, problems: list[str]) -> torch.Tensor:
    if not rule.transpose:
        return t
    if t.dim() != 2:
        problems.append(
            f"transpose: {name!r} is {shape_of(t)}; rule {rule.foreign.text!r} wants 2-D"
        )
        return t
    return t.t().contiguous()


def _put(out: dict, origin: dict, key: str, t: torch.Tensor, name: str, problems: list) -> None:
    if key in out:
        problems.append(f"duplicate: {origin[key]!r} and {name!r} both become {key!r}")
    else:
        out[key], origin[key] = t, name


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """One tensor in value (shape-only on meta, where there are no values to compare)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return a.is_meta or b.is_meta or torch.equal(a, b.to(a.device))


def import_state(
    tensors: Mapping[str, torch.Tensor],
    conversion: Conversion | str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    source: object = "foreign tensors",
) -> dict[str, torch.Tensor]:
    """Rename foreign tensors to modelfactory names.

    Args:
        tensors: foreign name -> tensor (e.g. from :func:`read_foreign_dir`); not modified.
        conversion: a :class:`Conversion`, a shipped name or a YAML path.
        model: if given, the result is also checked against it as by
            :func:`check_against`, and every problem goes into the one error.
        source: the file or directory named in errors.

    Returns:
        modelfactory name -> tensor. Transposed tensors are new contiguous tensors, the
        others are the given ones. A tie's native name (``head.weight``) is the very tensor
        of its source (``embed.tok.weight``); the foreign tie itself is checked and dropped.

    Raises:
        CheckpointError: one error listing every tensor no rule matches, every name that
            two tensors would both become, every tie that does not hold and (with
            ``model``) every missing, unexpected or mis-shaped tensor.
    """
    conv = as_conversion(conversion)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []
    renamed, tied = _rename_foreign(conv, tensors, out, origin, problems)
    for tie in conv.ties:  # the native tie exists whether or not the file repeats the tensor
        for key, (name, native) in renamed.items():
            fields = tie.source.foreign.match(key)
            if fields is not None and tie.native is not None and native in out:
                _put(out, origin, tie.native.fill(fields), out[native], name, problems)
    problems += _tie_problems(conv, tensors, renamed, tied)
    if model is not None:
        problems += _fit_problems(out, model)
    fail(source, f"tensors do not fit conversion {conv.name!r} ({conv.file})", problems)
    return out


def _rename_foreign(
    conv: Conversion,
    tensors: Mapping[str, torch.Tensor],
    out: dict[str, torch.Tensor],
    origin: dict[str, str],
    problems: list[str],
) -> tuple[dict[str, tuple[str, str]], list[tuple[str, Tie, dict[str, str]]]]:
    """Put every renamed tensor into ``out``; returns the renames made (foreign name as the
    rules spell it -> (name given, native name)) and the foreign ties met."""
    renamed: dict[str, tuple[str, str]] = {}
    tied: list[tuple[str, Tie, dict[str, str]]] = []
    for name, t in tensors.items():
        hit = _classify(conv, name)
        if hit is None:
            problems.append(f"unexpected: {name!r} {shape_of(t)} matches no rule of {conv.name!r}")
        elif isinstance(hit[1], Rename):
            key, rule, fields = hit
            native = rule.native.fill(fields)
            _put(out, origin, native, _orient(t, rule, name, problems), name, problems)
            renamed.setdefault(key, (name, native))
        elif isinstance(hit[1], Tie):
            tied.append((name, hit[1], hit[2]))
    return renamed, tied


def _tie_problems(
    conv: Conversion,
    tensors: Mapping[str, torch.Tensor],
    renamed: dict[str, tuple[str, str]],
    tied: list[tuple[str, Tie, dict[str, str]]],
) -> list[str]:
    """A foreign tie the file repeats (``lm_head.weight``) must be its source's tensor."""
    problems = []
    for name, tie, fields in tied:
        source_key = tie.source.foreign.fill(fields)
        if source_key not in renamed:
            problems.append(f"tie: {name!r} is {source_key!r}, which is not among the tensors")
        elif not _same(tensors[name], tensors[renamed[source_key][0]]):
            given = renamed[source_key][0]
            problems.append(
                f"tie: {name!r} {shape_of(tensors[name])} differs from {given!r} "
                f"{shape_of(tensors[given])}; {conv.name!r} holds them to be one tensor"
            )
    return problems


def export_state(
    state: Mapping[str, torch.Tensor],
    conversion: Conversion | str | os.PathLike[str],
    *,
    source: object = "model state",
) -> dict[str, torch.Tensor]:
    """Rename modelfactory tensors to foreign names: the inverse of :func:`import_state`.

    Args:
        state: modelfactory name -> tensor (a ``state_dict()``); not modified.
        conversion: a :class:`Conversion`, a shipped name or a YAML path.
        source: the file or directory named in errors.

    Returns:
        foreign name -> tensor. Transposed tensors are new contiguous tensors, the others
        are the given ones (they may share memory: clone before ``save_file``). Ties are
        written once, under their source's name.

    Raises:
        CheckpointError: one error listing every tensor no rule's ``to`` matches, every
            name written twice, and every tie the model does not hold.
    """
    conv = as_conversion(conversion)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []
    for name, t in state.items():
        hit = _match_native(conv, name)
        if hit is None:
            problems.append(f"unexpected: {name!r} {shape_of(t)} matches no rule of {conv.name!r}")
        elif isinstance(hit[0], Tie):
            src = hit[0].source.native.fill(hit[1])
            if src not in state or not _same(t, state[src]):
                problems.append(f"tie: {name!r} is not tied to {src!r}; {conv.name!r} needs it")
        else:
            key = hit[0].foreign.fill(hit[1])
            _put(out, origin, key, _orient(t, hit[0], name, problems), name, problems)
    fail(source, f"the model does not fit conversion {conv.name!r} ({conv.file})", problems)
    return out


def _match_native(conv: Conversion, name: str) -> tuple[Any, dict[str, str]] | None:
    for rule in (*conv.ties, *conv.renames):
        pattern = rule.native
        fields = pattern.match(name) if pattern is not None else None
        if fields is not None:
            return rule, fields
    return None


def check_against(
    converted: Mapping[str, torch.Tensor], model: nn.Module, *, source: object = "converted tensors"
) -> None:
    """Check converted tensors against a model before ``load_state_dict(strict=True)``.

    Raises:
        CheckpointError: one error listing each missing, unexpected and mis-shaped tensor
            (a shape line names the tensor and both shapes).
    """
    fail(source, "tensors do not fit the model", _fit_problems(converted, model))


def _fit_problems(converted: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    own = model.state_dict()
    problems = [
        f"missing: {k!r} {shape_of(t)} (the model has it, the converted tensors lack it)"
        for k, t in own.items()
        if k not in converted
    ]
    problems += [
        f"unexpected: {k!r} {shape_of(t)} (converted, not in the model)"
        for k, t in converted.items()
        if k not in own
    ]
    return problems + [
        f"shape: {k!r} is {shape_of(converted[k])} in the file, {shape_of(t)} in the model"
        for k, t in own.items()
        if k in converted and not nn.parameter.is_lazy(t) and converted[k].shape != t.shape
    ]
