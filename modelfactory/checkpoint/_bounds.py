"""Bounds on the work a checkpoint can ask for, checked before the work is done.

A checkpoint is untrusted input: a file of a few bytes can describe a tensor of shape
``[2**63, 0]`` or a config that builds millions of modules. Each check here refuses such a
file with a ``CheckpointError`` naming the file and the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from .._targets import TargetNotFound, locate
from ..blocks import Repeat
from ..errors import BuildError, CheckpointError

__all__ = [
    "MAX_BLOCKS",
    "MAX_INPUT_ELEMENTS",
    "MAX_ITEMS",
    "MAX_SAMPLE_WORK",
    "MAX_TENSOR_EXTENT",
    "check_shapes",
    "check_size",
]

# A tensor's sizes, and the product of its non-zero sizes (its strides), are int64.
MAX_TENSOR_EXTENT = 2**63 - 1
# What a config may build: GPT-2 is about 200 blocks. A block is a module built, counted
# where it is really built: Repeat copies, the layers TransformerEncoder deep-copies, the
# modules a target makes itself (an LSTM's layers, whose construction is quadratic).
MAX_BLOCKS = 50_000
# Config values (list items, mapping entries, scalars), counted once per copy built.
MAX_ITEMS = 1_000_000
# The sample input a restored config may ask for (elements of ``input_shape``) ...
MAX_INPUT_ELEMENTS = 2**28
# ... and the sample pass's work: blocks x input elements.
MAX_SAMPLE_WORK = 2**32
_CAP = max(MAX_BLOCKS, MAX_ITEMS) + 1


def check_shapes(file: object, index: Mapping[str, tuple[str, Iterable[int]]]) -> None:
    """Every tensor shape in a file's header must be one torch can make (``[2**63, 0]``
    holds no data, yet no tensor has it)."""
    for name, (_, shape) in index.items():
        extent = 1
        for n in shape:
            extent *= max(n, 1)
        if extent > MAX_TENSOR_EXTENT:
            raise CheckpointError(
                file,
                f"tensor {name!r} has shape {_short(shape)}: its sizes multiply past "
                "2**63 - 1, more than any tensor can have",
            )


def _short(v: Any) -> str:
    text = str(list(v))
    return text if len(text) <= 80 else text[:77] + "..."


def check_size(cfg: dict[str, Any], file: object) -> None:
    """Refuse a config that builds more than ``MAX_BLOCKS`` blocks or ``MAX_ITEMS`` values
    (copies counted), or whose sample input or pass is too big. Runs after the targets are
    checked, so it may import them."""
    try:
        blocks, items = _cost(cfg.get("model"), {})
    except RecursionError as e:
        raise CheckpointError(file, "the embedded config nests too deeply") from e
    if blocks > MAX_BLOCKS:
        raise CheckpointError(
            file,
            f"the embedded config builds more than the {MAX_BLOCKS:,} blocks a checkpoint may "
            "hold (Repeat copies, copies made inside targets and their own layers counted); "
            "refusing to build it",
        )
    if items > MAX_ITEMS:
        raise CheckpointError(
            file,
            f"the embedded config holds more than the {MAX_ITEMS:,} values a checkpoint may "
            "hold (counted once per copy built); refusing to build it",
        )
    shape = cfg.get("input_shape")
    if shape is None:
        return
    if not (isinstance(shape, list) and all(_is_int(n) and n >= 0 for n in shape)):
        raise CheckpointError(
            file, f"input_shape: expected a list of positive integers, got {shape!r:.80}"
        )
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise CheckpointError(
            file,
            f"input_shape {shape!r:.80} asks for more than the {MAX_INPUT_ELEMENTS:,} input "
            "elements a checkpoint may ask for; refusing it",
        )
    if elements * max(blocks, 1) > MAX_SAMPLE_WORK:
        raise CheckpointError(
            file,
            f"input_shape {shape!r:.80} through {blocks:,} blocks is more than the "
            f"{MAX_SAMPLE_WORK:,} block x input elements a sample pass may cost; refusing it",
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _cost(v: Any, classes: dict[str, Any]) -> tuple[int, int]:
    """``(blocks, values)`` that ``v`` builds, each capped just above its bound."""
    if isinstance(v, list):
        blocks, items = 0, 1
        for x in v:
            b, i = _cost(x, classes)
            blocks, items = min(blocks + b, _CAP), min(items + i, _CAP)
        return blocks, items
    if not isinstance(v, dict):
        return 0, 1
    cls = _class_of(v.get("_target_"), classes)
    copies = _copies(cls, v) if cls is not None else {}
    blocks, items = _own_blocks(cls, v), 1
    args = v.get("_args_")
    for k, x in v.items():
        if k == "_target_":
            continue
        if k == "_args_" and isinstance(args, list):
            parts = [(copies.get(i, 1), a) for i, a in enumerate(args)]
        else:
            parts = [(copies.get(k, 1), x)]
        for n, part in parts:
            b, i = _cost(part, classes)
            blocks, items = min(blocks + n * b, _CAP), min(items + n * i, _CAP)
    return blocks, items


def _class_of(name: Any, classes: dict[str, Any]) -> type | None:
    if not isinstance(name, str):
        return None
    if name not in classes:
        try:
            obj = locate(name)
        except TargetNotFound:
            obj = None
        classes[name] = obj if isinstance(obj, type) else None
    return classes[name]


def _arg(node: dict[str, Any], key: str, index: int, default: Any) -> Any:
    args = node.get("_args_")
    if key in node:
        return node[key]
    return args[index] if isinstance(args, list) and len(args) > index else default


def _count(v: Any) -> int:
    return v if _is_int(v) and v > 0 else 1


def _copies(cls: type, node: dict[str, Any]) -> dict[Any, int]:
    """How many times each argument (by keyword, or position in ``_args_``) is built:
    ``Repeat`` builds its block ``n`` times, ``TransformerEncoder`` deep-copies its layer."""
    if issubclass(cls, Repeat):
        n = _count(_arg(node, "n", 0, 1))
        return {"block": n, 1: n}
    for base, key in (
        (nn.TransformerEncoder, "encoder_layer"),
        (nn.TransformerDecoder, "decoder_layer"),
    ):
        if issubclass(cls, base):
            n = _count(_arg(node, "num_layers", 1, 1))
            return {key: 1 + n * _DEEPCOPY, 0: 1 + n * _DEEPCOPY}
    return {}


_DEEPCOPY = 3  # a deep copy of a layer costs about three constructions of it


def _own_blocks(cls: type | None, node: dict[str, Any]) -> int:
    """The blocks a target builds itself: 1, or what its own layers cost."""
    if cls is None:
        return int("_target_" in node)
    for base, cost in _OWN_COSTS:
        if issubclass(cls, base):
            return min(cost(node), _CAP)
    return 1


def _rnn(node: dict[str, Any]) -> int:
    layers = _count(_arg(node, "num_layers", 2, 1)) * (
        2 if _arg(node, "bidirectional", 6, False) is True else 1
    )
    return max(4 * layers, layers * layers // 20)  # RNNBase's setup is quadratic in layers


def _transformer(node: dict[str, Any]) -> int:
    enc = _count(_arg(node, "num_encoder_layers", 2, 6))
    dec = _count(_arg(node, "num_decoder_layers", 3, 6))
    return 1 + 13 * _DEEPCOPY * (enc + dec)


_OWN_COSTS: list[tuple[type, Callable[[dict[str, Any]], int]]] = [
    (nn.RNNBase, _rnn),
    (nn.Transformer, _transformer),
    (nn.TransformerEncoderLayer, lambda _: 10),
    (nn.TransformerDecoderLayer, lambda _: 13),
    (nn.MultiheadAttention, lambda _: 2),
]


# What load(strict=False) may create beyond what the file holds: it builds the model for real.
MAX_FILL_ELEMENTS = 2**26


def check_fill(file: object, expected: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """``load(strict=False)`` builds the model for real to fill what the file lacks: refuse
    when that would create more than ``MAX_FILL_ELEMENTS`` elements the file does not hold
    (a strict load creates none: every tensor comes from the file). ``expected`` and
    ``found`` map names to ``(dtype, shape)``."""
    missing = 0
    for name, (_, shape) in expected.items():
        stored = found.get(name)
        if stored is None or tuple(stored[1]) != tuple(shape):
            missing += math.prod(shape)
    if missing > MAX_FILL_ELEMENTS:
        raise CheckpointError(
            file,
            f"load(strict=False) would create {missing:,} elements the file does not hold, "
            f"more than the {MAX_FILL_ELEMENTS:,} a load may create; refusing it",
        )


def check_sample_pass(config: dict[str, Any], file: object) -> None:
    """Before a restore runs the sample input for real: run it on ``meta`` (no memory) and
    refuse when the activations add up to more than ``MAX_SAMPLE_WORK`` elements. A forward
    that cannot run on ``meta`` keeps the static bound of :func:`check_size`."""
    import torch

    from .._config import normalize
    from .._lazy import is_meta_limitation
    from .._sample import sample_input
    from ..factory import build_skeleton

    bc = normalize(config)
    if bc.input_shape is None:
        return
    try:
        model = build_skeleton(config)
    except BuildError as e:  # a constructor that reads values: the static bound holds
        if is_meta_limitation(e.__cause__):
            return
        raise CheckpointError(file, f"the embedded config does not build:\n{e}") from e
    total = [0]

    def count(_mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(sample_input(bc, torch.device("meta")))
    except Exception:  # a forward that reads values cannot run on meta: the static bound holds
        return
    finally:
        for h in handles:
            h.remove()
    if total[0] > MAX_SAMPLE_WORK:
        raise CheckpointError(
            file,
            f"the sample pass of input_shape {bc.input_shape} would compute {total[0]:,} "
            f"activation elements, more than the {MAX_SAMPLE_WORK:,} a restore may; refusing it",
        )
