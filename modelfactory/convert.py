"""Other people's weights: foreign checkpoints <-> modelfactory parameter names.

A conversion is data, not code: a YAML file of renames, transposes and ties. Shipped ones
live in ``conf/convert/`` (``hf_gpt2``: Hugging Face GPT-2 <-> ``model=gpt2``); a user
writes one for another model family and passes its path. ``from`` is always the foreign
name, ``to`` the modelfactory name; importing goes from -> to, exporting to -> from.

Schema (paths in error messages read ``convert.renames.3.to``)::

    description: str                  optional, for people
    optional_prefix: str              optional, e.g. "transformer.": a foreign name that
                                      matches no rule is tried again with it prepended
    renames:                          required, a non-empty list
      - from: FOREIGN                 e.g. "transformer.h.{i}.attn.c_attn.weight"
        to: NATIVE                    e.g. "blocks.{i}.attn.body.mha.qkv.weight"
        transpose: bool               optional (false): a 2-D tensor is stored transposed
    ties:                             optional: foreign names that are another tensor
      - from: FOREIGN                 e.g. "lm_head.weight"; never written, checked if read
        to: NATIVE | null             the native name given the same tensor on import
        same_as: FOREIGN              the ``from`` of a rename (the tie's source)
    ignore: [FOREIGN, ...]            optional: foreign tensors dropped on import (buffers)
    config:                           optional: the foreign config file export_dir writes
      file: str                       default "config.json"
      values: {key: VALUE}            VALUE is a literal, or one of these mappings, read
                                      off the model being exported:
                                        {shape: NATIVE_NAME, dim: D, offset: K}  (K default 0)
                                        {count: NATIVE_PATTERN}  distinct {i} values
                                        {attr: dotted.module.path.attribute}
                                        {dtype: NATIVE_NAME}     e.g. "float32"
                                        {value: LITERAL}         a literal mapping
      check: [key, ...]               keys of the file's config that must equal the model's
                                      on import (what tensor shapes cannot tell)

Placeholders such as ``{i}`` match a decimal index; ``from`` and ``to`` (and ``same_as``)
name the same placeholders. A conversion is one-to-one: rules that would produce one name
twice, and tensors no rule matches, are errors, reported together.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from modelfactory.errors import CheckpointError, ConfigError

__all__ = [
    "Conversion",
    "check_against",
    "check_config",
    "export_dir",
    "export_state",
    "foreign_config",
    "import_state",
    "load_conversion",
    "read_foreign_dir",
    "shipped_conversions",
]

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_FIELD = re.compile(r"\{([A-Za-z_]\w*)\}")
# A config value that is a mapping is an expression: its kind -> the other keys it takes.
_EXPRESSIONS = {
    "shape": {"dim", "offset"},
    "count": set(),
    "attr": set(),
    "dtype": set(),
    "value": set(),
}
_MISSING = object()


@dataclass(frozen=True)
class Pattern:
    """A tensor name with ``{placeholder}`` parts that match decimal indices."""

    text: str
    fields: frozenset[str]
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Compile ``text``; raises ``ValueError`` saying what is wrong with it."""
        parts = _FIELD.split(text)
        literals, names = parts[0::2], parts[1::2]
        if any("{" in p or "}" in p for p in literals):
            raise ValueError(f"{text!r}: braces must enclose a placeholder name such as {{i}}")
        if len(set(names)) != len(names):
            raise ValueError(f"{text!r}: a placeholder appears twice")
        regex = re.escape(literals[0]) + "".join(
            f"(?P<{n}>[0-9]+)" + re.escape(lit) for n, lit in zip(names, literals[1:], strict=True)
        )
        return cls(text, frozenset(names), re.compile(regex))

    def match(self, name: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(name)
        return m.groupdict() if m else None

    def fill(self, values: Mapping[str, str]) -> str:
        return _FIELD.sub(lambda m: values[m.group(1)], self.text)


@dataclass(frozen=True)
class Rename:
    foreign: Pattern
    native: Pattern
    transpose: bool = False


@dataclass(frozen=True)
class Tie:
    foreign: Pattern
    native: Pattern | None
    source: Rename  # the rename whose foreign name is this tie's ``same_as``


@dataclass(frozen=True)
class Expr:
    """A config value read off the model: ``kind`` is shape, count, attr, dtype or value."""

    kind: str
    arg: Any
    dim: int = 0
    offset: int = 0


@dataclass(frozen=True)
class Conversion:
    """A validated conversion file (see the module docstring for its schema)."""

    name: str
    file: Path
    renames: tuple[Rename, ...]
    ties: tuple[Tie, ...] = ()
    ignore: tuple[Pattern, ...] = ()
    optional_prefix: str = ""
    description: str = ""
    config_file: str | None = None
    config_values: Mapping[str, Any] = field(default_factory=dict)
    config_check: tuple[str, ...] = ()


# -- loading and validating a conversion file -----------------------------------------------


def _shipped_dir() -> Path:
    # conf/ ships inside the installed package, or sits at the top of a checkout.
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf" / "convert", here.parent / "conf" / "convert"):
        if candidate.is_dir():
            return candidate
    return here / "conf" / "convert"


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
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
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
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append((f"{path}.{key}", f"unknown key{hint}; expected one of {_or(allowed)}"))
    for key in sorted(required - node.keys()):
        problems.append((f"{path}.{key}", "missing required key"))
    return True


def _or(names: set[str]) -> str:
    return ", ".join(sorted(names))


def _pattern(node: Any, path: str, problems: list, fields: frozenset | None = None) -> Any:
    if node is _MISSING:  # _keys has reported it
        return None
    if not isinstance(node, str) or not node:
        problems.append((path, f"expected a tensor name (a non-empty string), got {node!r}"))
        return None
    try:
        pattern = Pattern.parse(node)
    except ValueError as e:
        problems.append((path, str(e)))
        return None
    if fields is not None and pattern.fields != fields:
        want = ", ".join(f"{{{f}}}" for f in sorted(fields)) or "none"
        problems.append((path, f"{node!r} must use the same placeholders as 'from' ({want})"))
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
                    (f"{path}.{side}", f"{text!r} is already renames.{seen[side][text]}")
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
            problems.append((f"{path}.same_as", f"{source.text!r} is not the 'from' of a rename"))
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
        problems.append(("convert.config.file", f"expected a plain file name, got {file!r}"))
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
            problems.append((f"convert.config.check.{n}", f"{key!r} is not a key of config.values"))
    return {"config_file": file, "config_values": parsed, "config_check": tuple(map(str, check))}


def _parse_value(node: Any, path: str, problems: list) -> Any:
    if not isinstance(node, dict):
        return node  # a literal
    kinds = [k for k in node if k in _EXPRESSIONS]
    if len(kinds) != 1:
        problems.append(
            (path, f"expected exactly one of {_or(set(_EXPRESSIONS))}, got {sorted(node)}")
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
        problems.append((f"{path}.{kind}", f"expected a dotted name, got {arg!r}"))
    return Expr(kind, arg, node.get("dim", 0), node.get("offset", 0))


# -- renaming tensors -----------------------------------------------------------------------


def _as_conversion(conversion: Conversion | str | os.PathLike[str]) -> Conversion:
    return conversion if isinstance(conversion, Conversion) else load_conversion(conversion)


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


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
        problems.append(f"transpose: {name!r} is {_shape(t)}; rule {rule.foreign.text!r} wants 2-D")
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


def _fail(source: object, what: str, problems: list[str]) -> None:
    if problems:
        raise CheckpointError(source, f"{what}:\n  " + "\n  ".join(problems))


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
    conv = _as_conversion(conversion)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    renamed: dict[
        str, tuple[str, str]
    ] = {}  # foreign name as the rules spell it -> (given, native)
    tied, problems = [], []
    for name, t in tensors.items():
        hit = _classify(conv, name)
        if hit is None:
            problems.append(f"unexpected: {name!r} {_shape(t)} matches no rule of {conv.name!r}")
        elif isinstance(hit[1], Rename):
            key, rule, fields = hit
            native = rule.native.fill(fields)
            _put(out, origin, native, _orient(t, rule, name, problems), name, problems)
            renamed.setdefault(key, (name, native))
        elif isinstance(hit[1], Tie):
            tied.append((name, hit[1], hit[2]))
    for tie in conv.ties:  # the native tie exists whether or not the file repeats the tensor
        for key, (name, native) in renamed.items():
            fields = tie.source.foreign.match(key)
            if fields is not None and tie.native is not None and native in out:
                _put(out, origin, tie.native.fill(fields), out[native], name, problems)
    for name, tie, fields in tied:
        source_key = tie.source.foreign.fill(fields)
        if source_key not in renamed:
            problems.append(f"tie: {name!r} is {source_key!r}, which is not among the tensors")
        elif not _same(tensors[name], tensors[renamed[source_key][0]]):
            given = renamed[source_key][0]
            problems.append(
                f"tie: {name!r} {_shape(tensors[name])} differs from {given!r} "
                f"{_shape(tensors[given])}; {conv.name!r} holds them to be one tensor"
            )
    if model is not None:
        problems += _fit_problems(out, model)
    _fail(source, f"tensors do not fit conversion {conv.name!r} ({conv.file})", problems)
    return out


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
    conv = _as_conversion(conversion)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []
    for name, t in state.items():
        hit = _match_native(conv, name)
        if hit is None:
            problems.append(f"unexpected: {name!r} {_shape(t)} matches no rule of {conv.name!r}")
        elif isinstance(hit[0], Tie):
            src = hit[0].source.native.fill(hit[1])
            if src not in state or not _same(t, state[src]):
                problems.append(f"tie: {name!r} is not tied to {src!r}; {conv.name!r} needs it")
        else:
            key = hit[0].foreign.fill(hit[1])
            _put(out, origin, key, _orient(t, hit[0], name, problems), name, problems)
    _fail(source, f"the model does not fit conversion {conv.name!r} ({conv.file})", problems)
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
    _fail(source, "tensors do not fit the model", _fit_problems(converted, model))


def _fit_problems(converted: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    own = model.state_dict()
    problems = [
        f"missing: {k!r} {_shape(t)} (the model has it, the converted tensors lack it)"
        for k, t in own.items()
        if k not in converted
    ]
    problems += [
        f"unexpected: {k!r} {_shape(t)} (converted, not in the model)"
        for k, t in converted.items()
        if k not in own
    ]
    return problems + [
        f"shape: {k!r} is {_shape(converted[k])} in the file, {_shape(t)} in the model"
        for k, t in own.items()
        if k in converted and not nn.parameter.is_lazy(t) and converted[k].shape != t.shape
    ]


# -- the foreign config file ----------------------------------------------------------------


def _evaluate(value: Any, model: nn.Module, state: Mapping[str, torch.Tensor]) -> Any:
    """A config value for ``model``; raises ``LookupError`` naming what the model lacks."""
    if not isinstance(value, Expr):
        return value
    if value.kind == "value":
        return value.arg
    if value.kind == "count":
        return len(
            {tuple(sorted(f.items())) for k in state if (f := value.arg.match(k)) is not None}
        )
    if value.kind == "attr":
        owner, _, attr = value.arg.rpartition(".")
        try:
            got = getattr(model.get_submodule(owner), attr)
        except AttributeError as e:
            raise LookupError(f"the model has no {value.arg!r} ({e})") from e
        if isinstance(got, tuple):
            got = list(got)
        if not isinstance(got, (int, float, str, bool, list, type(None))):
            raise LookupError(f"{value.arg!r} is a {type(got).__name__}, not a JSON value")
        return got
    if value.arg not in state:
        raise LookupError(f"the model has no tensor {value.arg!r}")
    t = state[value.arg]
    if value.kind == "dtype":
        return str(t.dtype).removeprefix("torch.")
    if not -t.dim() <= value.dim < t.dim():
        raise LookupError(f"{value.arg!r} is {_shape(t)}, it has no dim {value.dim}")
    return t.shape[value.dim] + value.offset


def foreign_config(
    model: nn.Module, conversion: Conversion | str | os.PathLike[str]
) -> dict[str, Any]:
    """The foreign config (``config.json``) that :func:`export_dir` writes for ``model``.

    Works on a model built on the ``meta`` device too (it reads shapes and attributes).

    Raises:
        CheckpointError: one error listing each value the model cannot give (a tensor or
            attribute a ``config.values`` entry names that the model does not have).
    """
    conv = _as_conversion(conversion)
    return _config_for(model, conv, conv.config_values, conv.file)


def _config_for(model: nn.Module, conv: Conversion, keys: Any, source: object) -> dict[str, Any]:
    state = model.state_dict()
    out, problems = {}, []
    for key in keys:
        try:
            out[key] = _evaluate(conv.config_values[key], model, state)
        except LookupError as e:
            problems.append(f"convert.config.values.{key}: {e}")
    _fail(
        source, f"cannot compute the config of {conv.name!r} ({conv.file}) for the model", problems
    )
    return out


def check_config(
    path: str | os.PathLike[str], model: nn.Module, conversion: Conversion | str | os.PathLike[str]
) -> None:
    """Compare a foreign directory's config file with the model, for the ``config.check`` keys.

    Tensor shapes cannot tell a wrong head count or activation; this can. Keys the file
    does not have, and a directory without the file, are not checked.

    Raises:
        CheckpointError: the file is not a JSON object, or one error listing each key whose
            value differs from what the model gives.
    """
    conv = _as_conversion(conversion)
    if conv.config_file is None or not conv.config_check:
        return
    file = Path(path) / conv.config_file
    if not file.is_file():
        return
    try:
        foreign = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(file, f"not a readable JSON file ({e})") from e
    if not isinstance(foreign, dict):
        raise CheckpointError(file, f"expected a JSON object, got {type(foreign).__name__}")
    keys = [k for k in conv.config_check if k in foreign]
    want = _config_for(model, conv, keys, file)
    problems = [
        f"{k}: {foreign[k]!r} in the file, {want[k]!r} for the model"
        for k in keys
        if foreign[k] != want[k]
    ]
    _fail(file, "the config does not fit the model", problems)


# -- directories ----------------------------------------------------------------------------


def read_foreign_dir(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the tensors of a ``save_pretrained`` directory (or of one ``.safetensors`` file).

    ``model.safetensors`` is read if present, else ``model.safetensors.index.json`` and
    the shards its ``weight_map`` names. Only safetensors: pickled ``pytorch_model.bin``
    files are not read.

    Raises:
        CheckpointError: no weights there, an unreadable file, a bad index, or shards that
            disagree with their index.
    """
    directory = Path(path)
    if directory.is_file():
        return _load(directory)
    if (directory / WEIGHTS).is_file():
        return _load(directory / WEIGHTS)
    if not (directory / INDEX).is_file():
        raise CheckpointError(
            directory,
            f"no {WEIGHTS} or {INDEX} here (a save_pretrained directory with safetensors "
            "weights is expected; pickled pytorch_model.bin files are not read)",
        )
    return _read_shards(directory / INDEX)


def _load(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(file, f"not a readable safetensors file ({e})") from e


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(index, f"not an index with a 'weight_map' ({e!r})") from e
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(index, "'weight_map' must map tensor names to shard file names")
    tensors, problems = {}, []
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in {".", ".."}:
            raise CheckpointError(index, f"shard {shard!r} is not a file name in this directory")
        for name, t in _load(index.parent / shard).items():
            if weight_map.get(name) != shard:
                problems.append(f"{name!r} is in {shard}, the index says {weight_map.get(name)}")
            tensors.setdefault(name, t)
    problems += [
        f"{k!r}: the index lists it in {v}, which lacks it"
        for k, v in weight_map.items()
        if k not in tensors
    ]
    _fail(index, "shards do not match the index", problems)
    return tensors


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two tensors on one storage (``save_file`` refuses those)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def _atomic(target: Path, write: Callable[[Path], None]) -> None:
    """Write ``target`` through a temporary file beside it: the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise CheckpointError(target, f"cannot write ({e})") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_dir(
    model: nn.Module, path: str | os.PathLike[str], conversion: Conversion | str | os.PathLike[str]
) -> Path:
    """Write a model as a foreign directory (for ``hf_gpt2``: what ``from_pretrained`` loads).

    Writes ``model.safetensors`` (foreign names, ``format: pt`` metadata) and the
    conversion's config file (``config.json``), each atomically. Everything is computed
    before anything is written.

    Args:
        model: a built model with real (not meta, not lazy) tensors.
        path: the directory; created if missing.
        conversion: a :class:`Conversion`, a shipped name or a YAML path.

    Returns:
        The directory.

    Raises:
        CheckpointError: meta or lazy tensors, a model that does not fit the conversion
            (one error listing each tensor), or a file that cannot be written.
    """
    conv = _as_conversion(conversion)
    directory = Path(path)
    state = model.state_dict()
    bad = [k for k, t in state.items() if t.is_meta or nn.parameter.is_lazy(t)]
    if bad:
        raise CheckpointError(
            directory, f"no values to write for {', '.join(bad[:5])} (meta or lazy)"
        )
    tensors = _unshared(export_state(state, conv, source=directory))
    config = _config_for(model, conv, conv.config_values, directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(directory, f"cannot create the directory ({e})") from e
    _atomic(directory / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    if conv.config_file is not None:
        text = json.dumps(config, indent=2) + "\n"
        _atomic(directory / conv.config_file, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return directory
