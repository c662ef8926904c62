"""Accept a config in any of its forms and resolve it once, at the boundary.

Past this module the core sees only plain Python (dicts, lists, scalars),
never a ``DictConfig``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ._spec import MAX_DEPTH
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


def to_plain(cfg: Any) -> Any:
    """DictConfig, dict or YAML path -> plain, fully resolved Python containers."""
    if isinstance(cfg, (str, os.PathLike)):
        return _load_yaml(cfg)
    if type(cfg).__module__.startswith("omegaconf"):
        return _resolve(cfg, "config")
    if isinstance(cfg, dict):
        # A private copy (the caller may edit their dict after build; the model keeps this
        # config and save writes it), made through JSON at C speed; the text also tells
        # whether anything needs OmegaConf's interpolation.
        try:
            text = json.dumps(cfg)
        except RecursionError as e:
            raise ConfigError([("", f"config nests deeper than {MAX_DEPTH} levels")]) from e
        except (TypeError, ValueError):  # values JSON cannot hold (a torch.dtype object)
            return _resolve(cfg, "config") if _has_interpolation(cfg) else copy.deepcopy(cfg)
        return _resolve(cfg, "config") if "${" in text else json.loads(text)
    raise ConfigError(
        [("", f"expected a DictConfig, a dict or a YAML path, got {type(cfg).__name__}")]
    )


def _has_interpolation(tree: Any) -> bool:
    """Whether any string holds ``${...}``; also refuses trees nested beyond ``MAX_DEPTH``.

    Iterative, so that a hostile, deeply nested config cannot exhaust Python's stack.
    """
    found = False
    stack = [(tree, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError([("", f"config nests deeper than {MAX_DEPTH} levels")])
        if isinstance(v, str):
            found = found or "${" in v
        elif isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
    return found


def _resolve(cfg: Any, where: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        raise ConfigError(
            [(key, f"{type(e).__name__}: {getattr(e, 'msg', e)}")],
            header=f"Cannot resolve {where}:",
        ) from e


def _load_yaml(path: str | os.PathLike) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError as e:
        raise ConfigError([(str(path), "no such config file")]) from e
    except (OmegaConfBaseException, ValueError, OSError) as e:
        raise ConfigError([(str(path), f"not a readable YAML config: {e}")]) from e
    except Exception as e:  # yaml's own parser errors
        raise ConfigError([(str(path), f"not valid YAML: {e}")]) from e
    return _resolve(loaded, str(path))


def normalize(cfg: Any) -> BuildConfig:
    """Check the top level of a full config (or wrap a bare model node) and fill defaults."""
    plain = to_plain(cfg)
    if isinstance(plain, dict) and "_target_" in plain and "model" not in plain:
        plain = {"model": plain}
    if not isinstance(plain, dict) or "model" not in plain:
        raise ConfigError(
            [("", "expected a full config with a 'model' key, or a model node with '_target_'")]
        )
    expected = ", ".join(BUILD_KEYS)
    problems = [
        (str(k), f"unknown top-level key; expected one of {expected}")
        for k in plain
        if k not in BUILD_KEYS
    ]
    defaults = json.loads(json.dumps(DEFAULTS))  # fresh: nothing shared between models
    full = {**defaults, **{k: v for k, v in plain.items() if v is not None or k == "input_shape"}}
    seed, shape = full["seed"], full["input_shape"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(("seed", f"expected an integer, got {seed!r}"))
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
    if problems:
        raise ConfigError(problems)
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
    )


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
