"""Conversion files: finding one (a shipped name or a path), reading and validating it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .._bounded import MAX_YAML_NODES, check_yaml, excerpt, read_capped
from .._knobs import close_key
from .._spec import MAX_DEPTH
from ..configs import conf_dir
from ..errors import ConfigError
from ._rules import Conversion, Expr, Pattern, Rename, Tie

# A config value that is a mapping is an expression: its kind -> the other keys it takes.
_EXPRESSIONS = {
    "shape": {"dim", "offset"},
    "count": set(),
    "attr": set(),
    "dtype": set(),
    "value": set(),
}
_MISSING = object()
MAX_CONVERSION_BYTES = 1 << 20  # 1 MiB, as a config.yaml copy; hf_gpt2.yaml is about 3 KB


def _shipped_dir() -> Path:
    return conf_dir() / "convert"


def shipped_conversions() -> list[str]:
    """The names of the conversions in ``conf/convert/`` (``["hf_gpt2", ...]``)."""
    return sorted(p.stem for p in _shipped_dir().glob("*.yaml"))


def load_conversion(name_or_path: str | os.PathLike[str]) -> Conversion:
    """Load and validate a conversion.

    Args:
        name_or_path: a shipped name (``"hf_gpt2"``) or the path to a YAML file (a name
            with a ``.yaml``/``.yml`` suffix or a directory separator is a path).

    Returns:
        The validated conversion.

    Raises:
        ConfigError: an unknown name, a missing or unreadable file, or a file that does
            not follow the schema; every problem is listed with its key
            (``convert.renames.3.to``) under a header naming the file.
    """
    text = os.fspath(name_or_path)
    file = Path(text)
    if file.suffix not in {".yaml", ".yml"} and "/" not in text and os.sep not in text:
        file = _shipped_dir() / f"{text}.yaml"
        if not file.is_file():
            shipped = ", ".join(shipped_conversions()) or "none"
            msg = f"unknown conversion {text!r}; shipped: {shipped}; or give a YAML file's path"
            raise ConfigError([("convert", msg)])
    try:  # bounded work: a FIFO, a huge file, an alias bomb or deep nesting is refused
        text = read_capped(file, MAX_CONVERSION_BYTES).decode("utf-8")
        check_yaml(text, max_depth=MAX_DEPTH, max_nodes=MAX_YAML_NODES)
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: OverBound, not UTF-8
        raise ConfigError([("convert", f"cannot read it ({e})")], header=f"{file}:") from e
    problems: list[tuple[str, str]] = []
    conversion = _parse(doc, file, problems)
    if conversion is None:  # None exactly when there are problems
        n = len(problems)
        header = f"{file}: conversion is not well-formed, found {n} problem{'s' * (n > 1)}:"
        raise ConfigError(problems, header=header)
    return conversion


def _keys(node: Any, path: str, allowed: set[str], required: set[str], problems: list) -> bool:
    """Check a mapping's keys; False when ``node`` is not a mapping at all."""
    if not isinstance(node, dict):
        problems.append((path, f"expected a mapping, got {type(node).__name__}"))
        return False
    for key in node:
        if key not in allowed:
            shown = str(key) if len(str(key)) <= 80 else f"{str(key)[:77]}..."
            close = close_key(shown, allowed)
            hint = f" (did you mean {close!r}?)" if close else ""
            problems.append(
                (f"{path}.{shown}", f"unknown key{hint}; expected one of {_or(allowed)}")
            )
    for key in sorted(required - node.keys()):
        problems.append((f"{path}.{key}", "missing required key"))
    return True


def _or(names: set[str]) -> str:
    return ", ".join(sorted(names))


def _pattern(node: Any, path: str, problems: list, fields: frozenset | None = None) -> Any:
    if node is _MISSING:  # _keys has reported it
        return None
    if not isinstance(node, str) or not node:
        problems.append((path, f"expected a tensor name (a non-empty string), got {excerpt(node)}"))
        return None
    try:
        pattern = Pattern.parse(node)
    except ValueError as e:
        problems.append((path, str(e)))
        return None
    if fields is not None and pattern.fields != fields:
        want = ", ".join(f"{{{f}}}" for f in sorted(fields)) or "none"
        problems.append(
            (path, f"{excerpt(node)} must use the same placeholders as 'from' ({want})")
        )
    return pattern


def _list(doc: dict, key: str, problems: list, *, required: bool = False) -> list:
    node = doc.get(key)
    if node is None and not required:  # absent, or a key left empty (`ties:`)
        return []
    if not isinstance(node, list) or (required and not node):
        problems.append((f"convert.{key}", f"expected a {'non-empty ' * required}list"))
        return []
    return node


def _parse(doc: Any, file: Path, problems: list) -> Conversion | None:
    top = {"description", "optional_prefix", "renames", "ties", "ignore", "config"}
    if not _keys(doc, "convert", top, {"renames"}, problems):
        return None
    for key in ("description", "optional_prefix"):
        if not isinstance(doc.get(key, ""), str):
            problems.append((f"convert.{key}", "expected a string"))
    renames = _parse_renames(_list(doc, "renames", problems, required=True), problems)
    by_from = {r.foreign.text: r for r in renames}
    ties = _parse_ties(_list(doc, "ties", problems), by_from, problems)
    ignore = [
        _pattern(p, f"convert.ignore.{n}", problems)
        for n, p in enumerate(_list(doc, "ignore", problems))
    ]
    config = _parse_config(doc.get("config", _MISSING), problems)
    if problems:
        return None
    return Conversion(
        name=file.stem,
        file=file,
        renames=tuple(renames),
        ties=tuple(ties),
        ignore=tuple(ignore),
        optional_prefix=doc.get("optional_prefix", ""),
        description=doc.get("description", ""),
        **config,
    )


def _parse_renames(nodes: list, problems: list) -> list[Rename]:
    renames, seen = [], {"from": {}, "to": {}}
    for n, node in enumerate(nodes):
        path = f"convert.renames.{n}"
        if not _keys(node, path, {"from", "to", "transpose"}, {"from", "to"}, problems):
            continue
        foreign = _pattern(node.get("from", _MISSING), f"{path}.from", problems)
        native = _pattern(
            node.get("to", _MISSING), f"{path}.to", problems, foreign and foreign.fields
        )
        if not isinstance(node.get("transpose", False), bool):
            problems.append((f"{path}.transpose", "expected true or false"))
        for side in ("from", "to"):
            text = node.get(side)
            if not isinstance(text, str):
                continue  # _pattern has reported it
            if text in seen[side]:
                problems.append(
                    (f"{path}.{side}", f"{excerpt(text)} is already renames.{seen[side][text]}")
                )
            seen[side].setdefault(text, n)
        if foreign and native:
            renames.append(Rename(foreign, native, node.get("transpose", False) is True))
    return renames


def _parse_ties(nodes: list, by_from: dict[str, Rename], problems: list) -> list[Tie]:
    ties = []
    for n, node in enumerate(nodes):
        path = f"convert.ties.{n}"
        if not _keys(node, path, {"from", "to", "same_as"}, {"from", "same_as"}, problems):
            continue
        foreign = _pattern(node.get("from", _MISSING), f"{path}.from", problems)
        fields = foreign and foreign.fields
        native = None
        if node.get("to") is not None:
            native = _pattern(node["to"], f"{path}.to", problems, fields)
        source = _pattern(node.get("same_as", _MISSING), f"{path}.same_as", problems, fields)
        if source and source.text not in by_from:
            problems.append(
                (f"{path}.same_as", f"{excerpt(source.text)} is not the 'from' of a rename")
            )
        elif foreign and source:
            ties.append(Tie(foreign, native, by_from[source.text]))
    return ties


def _parse_config(node: Any, problems: list) -> dict[str, Any]:
    if node is _MISSING:  # no foreign config file
        return {}
    if not _keys(node, "convert.config", {"file", "values", "check"}, set(), problems):
        return {}
    file = node.get("file", "config.json")
    if not isinstance(file, str) or not file or Path(file).name != file:
        problems.append(("convert.config.file", f"expected a plain file name, got {excerpt(file)}"))
    values = node.get("values", {})
    if not isinstance(values, dict):
        problems.append(("convert.config.values", "expected a mapping key -> value"))
        values = {}
    parsed = {
        str(k): _parse_value(v, f"convert.config.values.{k}", problems) for k, v in values.items()
    }
    check = node.get("check", [])
    if not isinstance(check, list):
        problems.append(("convert.config.check", "expected a list of keys of config.values"))
        check = []
    for n, key in enumerate(check):
        if not isinstance(key, str) or key not in parsed:
            problems.append(
                (f"convert.config.check.{n}", f"{excerpt(key)} is not a key of config.values")
            )
    return {"config_file": file, "config_values": parsed, "config_check": tuple(map(str, check))}


def _parse_value(node: Any, path: str, problems: list) -> Any:
    if not isinstance(node, dict):
        return node  # a literal
    kinds = [k for k in node if k in _EXPRESSIONS]
    if len(kinds) != 1:
        problems.append(
            (
                path,
                f"expected exactly one of {_or(set(_EXPRESSIONS))}, got "
                f"{excerpt(sorted(node, key=str))}",
            )
        )
        return None
    kind = kinds[0]
    _keys(node, path, {kind} | _EXPRESSIONS[kind], {kind}, problems)
    for key in ("dim", "offset"):
        if not isinstance(node.get(key, 0), int) or isinstance(node.get(key), bool):
            problems.append((f"{path}.{key}", "expected an integer"))
    arg = node[kind]
    if kind == "count":
        arg = _pattern(arg, f"{path}.count", problems)
    elif kind != "value" and (not isinstance(arg, str) or not arg):
        problems.append((f"{path}.{kind}", f"expected a dotted name, got {excerpt(arg)}"))
    return Expr(kind, arg, node.get("dim", 0), node.get("offset", 0))


def as_conversion(conversion: Conversion | str | os.PathLike[str]) -> Conversion:
    return conversion if isinstance(conversion, Conversion) else load_conversion(conversion)
