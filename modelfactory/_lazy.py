"""Lazy layers: the one home of everything about them.

With ``input_shape``, a lazy model is materialized by a *dry run*: a skeleton on
``meta`` runs the sample input (no memory, no compute), or, when the forward reads
values (data-dependent control flow cannot run on ``meta``), runs it once for real
on the CPU. Each lazy node that saw its input (``LazyLinear(256)`` fed 20 features)
is then rewritten in the config as the eager node it stands for
(``Linear(20, 256)``), and the model is built from the rewritten config, so a lazy
model gets exactly the values, stream keys and sibling ordinals of its eager twin.

A saved model has no lazy layers left, so at load time its stored tensor shapes
give every lazy layer's input size (:func:`materialize_lazy`), with no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _LazyNormBase
from torch.nn.modules.conv import _LazyConvXdMixin
from torch.nn.modules.lazy import LazyModuleMixin

from ._construct import ROOT, Built, record_paths
from ._sample import traced
from ._spec import Node
from ._targets import qualified_name, signature_of
from .errors import BuildError, path_join

__all__ = [
    "dry_run",
    "eager_tree",
    "has_lazy",
    "has_uninitialized",
    "is_meta_limitation",
    "materialize_lazy",
]


def has_lazy(spec: Any) -> bool:
    """Whether a spec names a lazy layer anywhere."""
    if isinstance(spec, Node):
        if isinstance(spec.target, type) and issubclass(spec.target, LazyModuleMixin):
            return True
        return any(has_lazy(a) for a in spec.args) or any(has_lazy(v) for v in spec.kwargs.values())
    if isinstance(spec, list):
        return any(has_lazy(x) for x in spec)
    if isinstance(spec, dict):
        return any(has_lazy(x) for x in spec.values())
    return False


def has_uninitialized(model: nn.Module) -> bool:
    return any(
        isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules()
    )


def dry_run(
    skeleton: tuple[nn.Module, list[Built]],
    build_on_cpu: Callable[[], tuple[nn.Module, list[Built]]],
    sample: Callable[[torch.device], torch.Tensor],
) -> tuple[nn.Module, list[Built]]:
    """Materialize a ``meta`` skeleton's lazy layers by running it on the sample input.

    When the forward reads values (data-dependent control flow cannot run on ``meta``), a
    skeleton is built on the CPU with ``build_on_cpu`` and run once for real instead.
    Returns the materialized skeleton and its records.
    """
    model, records = skeleton
    try:
        traced(model, sample(torch.device("meta")), record_paths(records), "dry run on meta")
        return model, records
    except BuildError as e:
        if not is_meta_limitation(e.__cause__):
            raise
    model, records = build_on_cpu()
    model.eval()
    traced(model, sample(torch.device("cpu")), record_paths(records), "sample run on cpu")
    return model, records


def is_meta_limitation(e: BaseException | None) -> bool:
    """Whether ``e`` says an operation needs real values (it cannot run on ``meta``)."""
    text = f"{type(e).__name__}: {e}".lower()
    hints = ("meta", "data-dependent", "item()", "cannot be converted", "boolean value of tensor")
    return any(s in text for s in hints)


def _eager_twin(record: Built) -> tuple[str, dict[str, Any]] | None:
    """``(eager target, the arguments the lazy node lacked)``, or ``None`` without a twin."""
    cls = type(record.module)
    if isinstance(record.module, LazyModuleMixin) or record.node.args:
        return None  # no cls_to_become, or positional arguments we cannot re-map safely
    missing = {
        name: getattr(record.module, name)
        for name in signature_of(cls).required
        if name not in record.node.kwargs and hasattr(record.module, name)
    }
    if any(r not in record.node.kwargs and r not in missing for r in signature_of(cls).required):
        return None
    return qualified_name(cls), missing


def eager_tree(tree: dict[str, Any], records: list[Built]) -> dict[str, Any] | None:
    """The model tree with every lazy node rewritten as its eager twin.

    ``None`` when some lazy node has no twin, or when the copies of one node (under a
    ``Repeat``) saw different input sizes and so have no single eager config.
    """
    rewrites: dict[str, tuple[str, dict[str, Any]]] = {}
    for r in records:
        target = r.node.target
        if not (isinstance(target, type) and issubclass(target, LazyModuleMixin)):
            continue
        twin = _eager_twin(r)
        if twin is None or rewrites.setdefault(r.node.path, twin) != twin:
            return None
    return _rewrite(tree, ROOT, rewrites) if rewrites else tree


def _rewrite(v: Any, path: str, rewrites: dict[str, tuple[str, dict[str, Any]]]) -> Any:
    if isinstance(v, dict):
        out = {
            k: x if k == "_target_" else _rewrite(x, path_join(path, k), rewrites)
            for k, x in v.items()
        }
        if path in rewrites and "_target_" in v:
            target, missing = rewrites[path]
            out.update(missing, _target_=target)
        return out
    if isinstance(v, list):
        return [_rewrite(x, path_join(path, i), rewrites) for i, x in enumerate(v)]
    return v


def materialize_lazy(model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> nn.Module:
    """Give each uninitialized lazy layer the input size its stored tensors imply (in place)."""
    for name, module in model.named_modules():
        if not isinstance(module, LazyModuleMixin) or not module.has_uninitialized_params():
            continue
        probe = _probe(module, f"{name}." if name else "", shapes)
        if probe is not None:
            with torch.no_grad():
                module._infer_parameters(module, (probe,))
    return model


def _probe(
    module: nn.Module, prefix: str, shapes: Mapping[str, Sequence[int]]
) -> torch.Tensor | None:
    """A ``meta`` input whose channel/feature size matches the stored tensors, or ``None``."""
    weight = shapes.get(prefix + "weight")
    if isinstance(module, nn.LazyLinear) and weight is not None and len(weight) == 2:
        return torch.empty(1, weight[1], device="meta")
    if isinstance(module, _LazyConvXdMixin) and weight is not None and len(weight) >= 3:
        channels = weight[0] if module.transposed else weight[1] * module.groups
        spatial = [1] * module._get_num_spatial_dims()
        return torch.empty(1, channels, *spatial, device="meta")
    if isinstance(module, _LazyNormBase):
        size = weight if weight is not None else shapes.get(prefix + "running_mean")
        if size is not None and len(size) == 1:
            return torch.empty(1, size[0], device="meta")
    return None
