"""The shape of a checkpoint's metadata document, checked once when a file is opened.

Every field a reader uses is checked here, so readers can trust what they get; a
hostile file gets one error listing each field that is not what ``save`` writes.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["is_count", "schema_problems", "short"]


def is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_entry(v: Any) -> bool:
    """``[dtype, shape, digest]`` as :func:`write` lists a tensor."""
    return (
        isinstance(v, list)
        and len(v) == 3
        and isinstance(v[0], str)
        and isinstance(v[1], list)
        and all(is_count(n) and n >= 0 for n in v[1])
        and isinstance(v[2], str)
    )


def short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def schema_problems(doc: dict[str, Any]) -> list[str]:
    """One line per field of the document that is missing or not what :func:`write` writes;
    every field a reader uses is checked here, once, so readers can trust its shape."""
    out: list[str] = []

    def expect(field: str, ok: bool, what: str) -> None:
        if not ok:
            out.append(f"field {field!r}: expected {what}, got {short(doc.get(field))}")

    tensors = doc.get("tensors")
    expect(
        "tensors",
        isinstance(tensors, dict) and all(_is_entry(v) for v in tensors.values()),
        "a mapping name -> [dtype, shape, digest]",
    )
    stored = tensors if isinstance(tensors, dict) else {}
    aliases = doc.get("aliases", {})
    expect(
        "aliases",
        isinstance(aliases, dict)
        and all(isinstance(v, str) and v in stored for v in aliases.values()),
        "a mapping name -> name of a stored tensor",
    )
    shadowing = sorted(set(aliases) & set(stored)) if isinstance(aliases, dict) else []
    if shadowing:  # the alias would silently replace the stored tensor of that name
        out.append(
            f"field 'aliases': expected names other than the stored tensors', got "
            f"{short(shadowing)}, which would replace stored tensors"
        )
    for field in ("nonpersistent", "eval", "shards"):
        expect(field, _is_names(doc.get(field, [])), "a list of names")
    knobs = doc.get("knobs", {})  # optional: checkpoints written before knobs have none
    expect("knobs", isinstance(knobs, dict), "a mapping knob name -> value")
    kind = doc.get("kind")
    expect("kind", kind in ("model", "tensors"), "'model' or 'tensors'")
    if kind == "model":
        config = doc.get("config")
        ok = isinstance(config, dict) and isinstance(config.get("model"), dict)
        expect("config", ok, "a mapping with a 'model' entry")
    elif kind == "tensors":
        keys, container = doc.get("keys"), doc.get("container")
        names = {*stored, *(aliases if isinstance(aliases, dict) else {})}
        ok = _is_names(keys) and all(k in names for k in keys)
        expect("keys", ok, "a list of the names of stored tensors")
        ok = container in ("list", "tuple", "dict") or (
            container == "tensor" and isinstance(keys, list) and len(keys) == 1
        )
        expect("container", ok, "'tensor' (with one key), 'list', 'tuple' or 'dict'")
    return out
