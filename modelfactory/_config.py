"""The top level of a config: build keys, knobs, defaults, section checks.

The forms a config comes in are resolved to plain data by ``_resolve``; past this
module the core sees only plain Python (dicts, lists, scalars), never a ``DictConfig``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ._knobs import close_key
from ._resolve import Resolved, model_in_model, resolve
from .errors import ConfigError, path_join

BUILD_KEYS = ("model", "block", "init", "tie", "device", "seed", "input_shape", "input_dtype")
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "init": {"rules": []},
    "tie": {"groups": []},
    "device": {"device": "cpu", "dtype": "float32"},
    "input_shape": None,
    "input_dtype": "float32",
}
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
MAX_ELEMENTS = 2**63 - 1  # a tensor's element count is an int64


@dataclass
class BuildConfig:
    """A resolved, checked full config."""

    model: dict[str, Any]
    seed: int = 0
    init_rules: list[Any] = field(default_factory=list)
    tie_groups: list[Any] = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "float32"
    device_map: Any = None
    input_shape: list[int] | None = None
    input_dtype: str = "float32"
    resolved: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)  # for people: the checkpoint shows them


def to_plain(cfg: Any) -> Any:
    """Any accepted form of a config -> plain, fully resolved Python containers."""
    return resolve(cfg).tree


def normalize(cfg: Any, *, seed: Any = None, device: Any = None, dtype: Any = None) -> BuildConfig:
    """Check the top level of a full config (or wrap a bare model node) and fill defaults.

    Top-level keys beyond ``BUILD_KEYS`` are knobs when an interpolation uses them (their
    values are kept in ``knobs``), else errors naming the key. ``seed``, ``device`` and
    ``dtype`` (``build``'s keywords), when not ``None``, replace ``seed``, ``device.device``
    and ``device.dtype`` before anything is checked: they are checked as those keys are.
    """
    r = resolve(cfg)
    plain = r.tree
    if isinstance(plain, dict) and "_target_" in plain and "model" not in plain:
        plain = {"model": plain}
    if not isinstance(plain, dict) or "model" not in plain:
        raise ConfigError(
            [("", "expected a full config with a 'model' key, or a model node with '_target_'")]
        )
    plain = _with_keywords(plain, seed, {"device": device, "dtype": dtype})
    problems: list[tuple[str, str]] = []
    knobs = _knobs(plain, r, problems)
    problems += model_in_model(plain)
    defaults = json.loads(json.dumps(DEFAULTS))  # fresh: nothing shared between models
    given = {k: v for k, v in plain.items() if k in BUILD_KEYS}
    full = {**defaults, **{k: v for k, v in given.items() if v is not None or k == "input_shape"}}
    seed, shape = full["seed"], full["input_shape"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(("seed", f"expected an integer, got {seed!r}"))
    elif not SEED_MIN <= seed <= SEED_MAX:  # what torch.Generator.manual_seed takes
        problems.append(("seed", f"expected an integer from -2**63 to 2**64 - 1, got {seed}"))
    init = _section(full, "init", ("rules",), problems)
    tie = _section(full, "tie", ("groups",), problems)
    dev = _section(full, "device", ("device", "dtype", "map"), problems)
    rules = _listed(init, "init.rules", "a list of rules", problems)
    groups = _listed(tie, "tie.groups", "a list of groups (lists of paths)", problems)
    if shape is not None and (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        problems.append(("input_shape", f"expected a list of positive integers, got {shape!r}"))
    elif shape is not None and math.prod(shape) > MAX_ELEMENTS:
        problems.append(
            ("input_shape", f"{shape} has more elements than a tensor can hold (2**63 - 1)")
        )
    if problems:
        raise ConfigError(problems, header=_header(problems))
    return BuildConfig(
        model=full["model"],
        seed=seed,
        init_rules=rules,
        tie_groups=groups,
        device=str(dev.get("device", "cpu")),
        dtype=str(dev.get("dtype", "float32")),
        device_map=dev.get("map"),
        input_shape=shape,
        input_dtype=str(full["input_dtype"]),
        resolved={k: full[k] for k in BUILD_KEYS if k in full},
        knobs=knobs,
    )


def _with_keywords(plain: dict[str, Any], seed: Any, placement: dict[str, Any]) -> dict[str, Any]:
    """``plain`` with ``build``'s keywords in place (a new dict: the tree is the caller's)."""
    placement = {k: v for k, v in placement.items() if v is not None}
    if seed is None and not placement:
        return plain
    out = {**plain, **({"seed": seed} if seed is not None else {})}
    section = out.get("device")
    if placement and (section is None or isinstance(section, dict)):  # else _section says so
        out["device"] = {**(section or {}), **placement}
    return out


def _knobs(plain: dict[str, Any], r: Resolved, problems: list[tuple[str, str]]) -> dict[str, Any]:
    """The knobs among the top-level keys; any other key that is not a build key is a problem."""
    knobs = {k: v for k, v in r.knobs.items() if k not in BUILD_KEYS}
    for k in plain:
        if k in r.used and k not in BUILD_KEYS:
            knobs[k] = plain[k]
        elif k not in BUILD_KEYS:
            problems.append((str(k), unknown_key(str(k), r.used)))
    return knobs


def unknown_key(key: str, knobs: Any = (), also: tuple[str, ...] = ()) -> str:
    """The message for a top-level key that is neither a build key nor a used knob."""
    options = (*BUILD_KEYS, *also)
    hint = close_key(key, [*options, *knobs])
    did = f" (did you mean {hint!r}?)" if hint else ""
    return (
        f"unknown top-level key{did}; expected one of {', '.join(options)}, or a knob that "
        f"an interpolation uses, and no ${{{key}}} is left"
    )


KNOB_RULE = (
    "(a top-level key is a knob only while some interpolation uses it: override a knob "
    "itself, not every use of it (n_layer=4, not model.layers.blocks.n=4), and build from "
    "the DictConfig, not from a copy resolved with OmegaConf.to_container(resolve=True))"
)


def _header(problems: list[tuple[str, str]]) -> str | None:
    """The usual header, plus the knob rule when a top-level key may be a knob that lost its
    uses (no "did you mean" for it)."""
    lost = any(m.startswith("unknown top-level key;") for _, m in problems)
    if not lost:
        return None
    n = len(problems)
    head = "Config is not well-formed" + (f", found {n} problems" if n > 1 else "")
    return f"{head} {KNOB_RULE}:"


def _section(
    full: dict[str, Any], name: str, allowed: tuple[str, ...], problems: list[tuple[str, str]]
) -> dict[str, Any]:
    """``full[name]`` if it is a mapping with only ``allowed`` keys (problems noted)."""
    sec = full[name]
    if not isinstance(sec, dict):
        problems.append((name, f"expected a mapping with keys {', '.join(allowed)}, got {sec!r}"))
        return {}
    problems += [
        (path_join(name, k), f"unknown key; expected one of {', '.join(allowed)}")
        for k in sec
        if k not in allowed
    ]
    return sec


def _listed(sec: dict[str, Any], path: str, what: str, problems: list[tuple[str, str]]) -> list:
    value = sec.get(path.rpartition(".")[2]) or []
    if not isinstance(value, list):
        problems.append((path, f"expected {what}, got {value!r}"))
        return []
    return value
