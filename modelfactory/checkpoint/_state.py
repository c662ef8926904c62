"""A model's saved state, beyond ``state_dict``: non-persistent buffers, aliases, modes.

``state_dict`` leaves out non-persistent buffers, and a model rebuilt on ``meta``
would have none of their values, so they are stored too (and listed). Loading
with ``assign=True`` gives every key its own ``Parameter``: aliases (two names
of one stored tensor) are made one object again here, before ties are checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ..errors import CheckpointError, ModelFactoryError, path_join
from ..factory import build, build_skeleton
from ..tie import owner

__all__ = [
    "assign",
    "check_filled",
    "check_nonpersistent",
    "check_restorable",
    "collect",
    "eval_modules",
    "lazy_names",
    "mismatches",
    "model_with_what_fits",
    "restore_modes",
    "signature",
    "skeleton",
    "wanted_signature",
    "with_dtype",
]


def collect(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state_dict`` plus non-persistent buffers; returns ``(tensors, nonpersistent names)``."""
    tensors = dict(model.state_dict())
    extra = []
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name in sorted(module._non_persistent_buffers_set):
            buf = module._buffers.get(name)
            key = f"{prefix}.{name}" if prefix else name
            if buf is not None and key not in tensors:
                tensors[key] = buf.detach()
                extra.append(key)
    return tensors, extra


def lazy_names(model: nn.Module) -> list[str]:
    """Parameters and buffers that are still uninitialized (lazy)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [n for n, t in named if is_lazy(t)]


def signature(
    tensors: Mapping[str, torch.Tensor],
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}


def mismatches(
    expected: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    found: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    *,
    found_in: str = "the file",
    expected_in: str = "the model",
) -> list[str]:
    """One line per missing, unexpected, shape- or dtype-mismatched key.

    ``found_in`` / ``expected_in`` say where each side comes from (``save`` compares the
    live model with what its config builds; ``load`` a file with the rebuilt model).
    """
    out = [
        f"missing: {k!r} (in {expected_in}, not in {found_in})" for k in expected if k not in found
    ]
    out += [
        f"unexpected: {k!r} (in {found_in}, not in {expected_in})"
        for k in found
        if k not in expected
    ]
    for k, (want_dtype, want_shape) in expected.items():  # in the model's order
        if k not in found:
            continue
        dtype, shape = found[k]
        if shape != want_shape:
            out.append(
                f"shape: {k!r} is {list(shape)} in {found_in}, {list(want_shape)} in {expected_in}"
            )
        elif dtype != want_dtype:
            have, want = _name(dtype), _name(want_dtype)
            out.append(f"dtype: {k!r} is {have} in {found_in}, {want} in {expected_in}")
    return out


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def assign(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    nonpersistent: Iterable[str],
    aliases: Mapping[str, str],
) -> nn.Module:
    """Put ``tensors`` into ``model`` without copying (``assign=True``), then re-join aliases."""
    extra = set(nonpersistent)
    model.load_state_dict(
        {k: t for k, t in tensors.items() if k not in extra}, strict=False, assign=True
    )
    for key in extra:
        if key in tensors:
            module, leaf = owner(model, key)
            module._buffers[leaf] = tensors[key]
    params = dict(model.named_parameters(remove_duplicate=False))
    for alias, source in aliases.items():
        if alias in params and source in params and params[alias] is not params[source]:
            module, leaf = owner(model, alias)
            setattr(module, leaf, params[source])
    return model


def check_nonpersistent(skeleton: nn.Module, names: Iterable[str], file: Path) -> None:
    """Only buffers may be listed as non-persistent (a parameter listed there would be left
    out of the load and stay on ``meta``)."""
    buffers = dict(skeleton.named_buffers(remove_duplicate=False))
    bad = [k for k in names if k not in buffers]
    if bad:
        raise CheckpointError(
            file,
            "corrupt modelfactory metadata: 'nonpersistent' lists names that are not buffers "
            f"of the model: {', '.join(map(repr, bad[:5]))}",
        )


def check_filled(model: nn.Module, file: Path) -> None:
    """After assigning, no parameter or buffer may still be a ``meta`` placeholder."""
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    empty = [k for k, t in named if t.device.type == "meta"]
    if empty:
        raise CheckpointError(
            file, f"holds no values for {', '.join(map(repr, empty[:5]))} (left on meta)"
        )


def eval_modules(model: nn.Module) -> list[str]:
    """Names of the modules in eval mode (the rest are in training mode)."""
    return [name for name, m in model.named_modules() if not m.training]


def restore_modes(model: nn.Module, in_eval: Iterable[str]) -> nn.Module:
    """Put each module back in the train/eval mode it was saved in."""
    in_eval = set(in_eval)
    for name, module in model.named_modules():
        module.training = name not in in_eval
    return model


_PLAIN = (str, int, float, bool, type(None))


def check_restorable(config: Any, file: Path) -> None:
    """A checkpoint's config must rebuild the model in another process, from the file
    alone: plain data (it is stored as JSON and copied as YAML) whose targets import by
    their dotted names.

    Raises:
        CheckpointError: listing each value that would not, by config path, with why.
    """
    bad: list[str] = []
    stack: list[tuple[str, Any]] = [("", config)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    bad.append(f"{path_join(path, k)}: a {type(k).__name__} key (keys are strings)")
                elif k == "_target_" and isinstance(x, str) and _unimportable(x):
                    bad.append(f"{path_join(path, k)}: {_unimportable(x)}")
                else:
                    stack.append((path_join(path, k), x))
        elif isinstance(v, list):
            stack += [(path_join(path, i), x) for i, x in enumerate(v)]
        elif not isinstance(v, _PLAIN):
            bad.append(f"{path or '<root>'}: {_live(v)}")
    if bad:
        raise CheckpointError(
            file,
            "cannot save: its config would not rebuild the model from the file (nothing was "
            "written); a config holds plain YAML/JSON data (strings, numbers, booleans, null, "
            "lists, mappings with string keys) and importable targets:\n  "
            + "\n  ".join(sorted(bad)),
        )


def _unimportable(target: str) -> str:
    """Why another process could not import ``target`` by its name ("" if it could)."""
    if target.split(".")[0] == "__main__":
        return (
            f"{target!r} is defined in __main__ (the script being run), which another process "
            "does not import; move it to a module"
        )
    if "<locals>" in target or "<lambda>" in target:
        return (
            f"{target!r} is a lambda or is defined inside a function; define it at the top "
            "of a module"
        )
    return ""


def _live(v: Any) -> str:
    """Why a value that is not plain data cannot be stored."""
    name = getattr(v, "__qualname__", None)
    if callable(v) and isinstance(name, str):
        where = f"{getattr(v, '__module__', None)}.{name}"
        why = _unimportable(where) or "its dotted name finds another object"
        return f"a {type(v).__name__} that no dotted name imports: {why}"
    text = repr(v)
    text = text if len(text) <= 80 else text[:77] + "..."
    return (
        f"a live {type(v).__module__}.{type(v).__qualname__} object ({text}); write it as "
        "plain data (dtype: 'float64', not torch.float64) or as a node with _target_ that "
        "builds it"
    )


def with_dtype(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The config, with ``device.dtype`` set to the model's floating dtype if it has one."""
    floats = {t.dtype for t in tensors.values() if t.dtype.is_floating_point}
    if len(floats) != 1:
        return config
    name = str(floats.pop()).removeprefix("torch.")
    return {**config, "device": {**config.get("device", {}), "dtype": name}}


# What a skeleton built on the CPU (its constructors cannot run on meta) may allocate, over
# the bytes its tensors take: what the rebuilt model holds before the stored tensors replace
# its own, and a margin for what constructors make besides.
FALLBACK_FACTOR, FALLBACK_MARGIN = 2, 64 * 2**20


def skeleton(config: dict[str, Any], shapes: dict[str, Any], file: Path, nbytes: int) -> nn.Module:
    """The architecture on ``meta``; init rules are not needed (nothing is initialized).

    A model whose constructors cannot run on ``meta`` is built on the CPU with init skipped,
    allocating at most about twice ``nbytes``, the bytes its tensors take.
    """
    limit = FALLBACK_FACTOR * nbytes + FALLBACK_MARGIN
    try:
        return build_skeleton({**config, "init": {"rules": []}}, shapes, max_bytes=limit)
    except ModelFactoryError as e:
        raise CheckpointError(file, f"the embedded config does not build:\n{e}") from e


def wanted_signature(skeleton: nn.Module, nonpersistent: list[str]) -> dict[str, Any]:
    """Name -> (dtype, shape) of every tensor the rebuilt architecture wants."""
    out = signature(skeleton.state_dict(keep_vars=True))
    buffers = dict(skeleton.named_buffers(remove_duplicate=False))
    out.update(signature({k: buffers[k] for k in nonpersistent if k in buffers}))
    return out


def model_with_what_fits(
    skeleton: nn.Module,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    expected: dict[str, Any],
    nonpersistent: list[str],
    aliases: dict[str, str],
) -> nn.Module:
    """Non-strict load: keep what fits (cast), and the config's seeded init for the rest."""
    fits = {
        k: t.to(expected[k][0])
        for k, t in tensors.items()
        if k in expected and tuple(t.shape) == expected[k][1]
    }
    if len(fits) == len(expected):
        return assign(skeleton, fits, nonpersistent, aliases)
    model = build({**config, "device": {**config.get("device", {}), "device": "cpu"}})
    with torch.no_grad():
        own = {**model.state_dict(keep_vars=True), **dict(model.named_buffers())}
        for k, t in fits.items():
            own[k].copy_(t)
    return model
