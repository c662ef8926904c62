"""The top level of a config: build keys, knobs, defaults, section checks.

The forms a config comes in are resolved to plain data by ``_resolve``; past this
module the core sees only plain Python (dicts, lists, scalars), never a ``DictConfig``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ._record import Snapshot
from ._resolve import model_in_model, resolve
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
    # Interpolations that did not resolve (normalize(collect=True)): reported together with
    # the model's own problems, which the values they left as literal text do not add to.
    problems: list[tuple[str, str]] = field(default_factory=list)
    # normalize(borrow=True) on a config that needed no resolving: ``model`` (and
    # ``resolved["model"]``) is the caller's own tree, these bytes its snapshot.
    model_snapshot: bytes | None = None

    def record_config(self) -> dict[str, Any] | Snapshot:
        """The config a build record keeps: ``resolved``, a private copy; for a borrowed model
        tree, its snapshot (copied when first read)."""
        if self.model_snapshot is None:
            return self.resolved
        return Snapshot({**self.resolved, "model": None}, self.model_snapshot)  # model: loaded


def to_plain(cfg: Any) -> Any:
    """Any accepted form of a config -> plain, fully resolved Python containers."""
    return resolve(cfg).tree


def normalize(
    cfg: Any,
    *,
    collect: bool = False,
    seed: Any = None,
    device: Any = None,
    dtype: Any = None,
    borrow: bool = False,
) -> BuildConfig:
    """Check the top level of a full config (or wrap a bare model node) and fill defaults.

    Top-level keys beyond ``BUILD_KEYS`` are knobs when an interpolation uses them (their
    values are kept in ``knobs``); any other is ignored, as Hydra's ``instantiate`` ignores
    the siblings of the node it builds (the command line refuses an override of one).

    Args:
        cfg: the config, in any form :func:`modelfactory.build` takes.
        collect: interpolations that do not resolve go to ``problems`` instead of raising,
            to be reported with the model's other problems.
        seed, device, dtype: ``build``'s keywords, which replace ``seed``, ``device.device``
            and ``device.dtype`` (unless ``None``) and are checked as those keys are.
        borrow: see :func:`modelfactory._resolve.resolve`.
    """
    r = resolve(cfg, collect=collect, borrow=borrow)
    plain = r.tree
    if isinstance(plain, dict) and "_target_" in plain and "model" not in plain:
        plain = {"model": plain}
    if not isinstance(plain, dict) or "model" not in plain:
        expected = "expected a full config with a 'model' key, or a model node with '_target_'"
        raise ConfigError([("", expected)])
    plain = _with_keywords(plain, seed, {"device": device, "dtype": dtype})
    problems = model_in_model(plain)
    knobs = {k: v for k, v in r.knobs.items() if k not in BUILD_KEYS}
    knobs.update({k: v for k, v in plain.items() if k in r.used and k not in BUILD_KEYS})
    full = _filled(plain)
    seed, shape = full["seed"], full["input_shape"]
    problems += _seed_problems(seed)
    init = _section(full, "init", ("rules",), problems)
    tie = _section(full, "tie", ("groups",), problems)
    dev = _section(full, "device", ("device", "dtype", "map"), problems)
    rules = _listed(init, "init.rules", "a list of rules", problems)
    groups = _listed(tie, "tie.groups", "a list of groups (lists of paths)", problems)
    problems += _shape_problems(shape)
    if problems:
        raise ConfigError(without_overlaps(r.problems, problems))
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
        problems=r.problems,
        model_snapshot=r.model_snapshot,
    )


def _filled(plain: dict[str, Any]) -> dict[str, Any]:
    """The build keys of ``plain`` over fresh defaults (nothing shared between models); a
    ``null`` value takes the default, but for ``input_shape``."""
    given = {k: v for k, v in plain.items() if k in BUILD_KEYS}
    given = {k: v for k, v in given.items() if v is not None or k == "input_shape"}
    return {**json.loads(json.dumps(DEFAULTS)), **given}


def _seed_problems(seed: Any) -> list[tuple[str, str]]:
    if isinstance(seed, bool) or not isinstance(seed, int):
        return [("seed", f"expected an integer, got {seed!r}")]
    if not SEED_MIN <= seed <= SEED_MAX:  # what torch.Generator.manual_seed takes
        return [("seed", f"expected an integer from -2**63 to 2**64 - 1, got {seed}")]
    return []


def _shape_problems(shape: Any) -> list[tuple[str, str]]:
    out = []
    if shape is not None and (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        out.append(("input_shape", f"expected a list of positive integers, got {shape!r}"))
    elif shape is not None and math.prod(shape) > MAX_ELEMENTS:
        out.append(("input_shape", f"{shape} has more elements than a tensor can hold (2**63 - 1)"))
    return out


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


def without_overlaps(
    first: list[tuple[str, str]], then: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """``first`` and each problem of ``then`` whose path neither contains nor lies under a
    path of ``first`` (what an unresolved interpolation left as text fails again there)."""

    def parts(path: str) -> list[str]:
        return path.split(".") if path else []

    def overlaps(a: str, b: str) -> bool:
        n = min(len(parts(a)), len(parts(b)))
        return parts(a)[:n] == parts(b)[:n]

    return [*first, *(p for p in then if not any(overlaps(p[0], f) for f, _ in first))]


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
