"""Running a model on its sample input while building: tracing failures to config paths,
materializing lazy layers, and turning lazy nodes into their eager twins.

A lazy node that saw its input (``LazyLinear(256)`` fed 20 features) is rewritten in
the config as the eager node it stands for (``Linear(20, 256)``), and the model is
built from the rewritten config, so a lazy model gets exactly the values, stream keys
and sibling ordinals of its eager twin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from ._construct import ROOT, Built
from ._spec import Node
from ._targets import qualified_name, signature_of
from .errors import BuildError, ModelFactoryError, path_join

__all__ = ["dry_run", "eager_tree", "has_lazy", "has_uninitialized", "run_sample", "traced"]

# On a built model: id of each module a config node built -> that node's config path (for
# error messages only: a module replaced later is simply named by its module path).
PATHS_ATTR = "_modelfactory_paths"


def traced(model: nn.Module, x: torch.Tensor, paths: dict[int, str], what: str) -> Any:
    """``model(x)`` under ``no_grad``; a failure names the path of the innermost failing block."""
    stack: list[str] = []
    handles = []

    def enter(mod: nn.Module, _args: Any) -> None:
        stack.append(paths[id(mod)])

    def leave(_mod: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()  # returns None: a forward hook's return value would replace the output

    for m in model.modules():
        if id(m) in paths:
            handles.append(m.register_forward_pre_hook(enter))
            handles.append(m.register_forward_hook(leave))
    try:
        with torch.no_grad():
            return model(x)
    except ModelFactoryError:
        raise
    except Exception as e:
        raise BuildError(
            stack[-1] if stack else ROOT,
            f"{what} with input_shape {list(x.shape)} failed: {type(e).__name__}: {e}",
        ) from e
    finally:
        for h in handles:
            h.remove()


def run_sample(model: nn.Module, x: torch.Tensor, what: str = "the sample forward pass") -> Any:
    """``model(x)`` in ``eval`` mode (mode restored after) under ``no_grad``.

    Raises:
        BuildError: naming the config path of the innermost block that failed (for models
            :func:`modelfactory.build` made), else its module name.
    """
    built = model.__dict__.get(PATHS_ATTR, {})
    paths = {
        id(m): built.get(id(m)) or f"module {n or '<root>'!r} ({type(m).__name__})"
        for n, m in model.named_modules()
    }
    was_training = model.training
    model.eval()  # a materializing or sample run must not move BatchNorm's running stats
    try:
        return traced(model, x, paths, what)
    finally:
        model.train(was_training)


def record_paths(records: list[Built]) -> dict[int, str]:
    return {id(r.module): r.node.path for r in records}


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
    build_on: Callable[[torch.device], tuple[nn.Module, list[Built]]],
    sample: Callable[[torch.device], torch.Tensor],
) -> list[Built]:
    """Materialize a skeleton's lazy layers by running it: on ``meta`` (no memory, no
    compute), or, when the forward reads values (data-dependent control flow cannot run on
    ``meta``), once for real on the CPU. Returns the records of the materialized skeleton."""
    meta = torch.device("meta")
    skeleton, records = build_on(meta)
    try:
        traced(skeleton, sample(meta), record_paths(records), "dry run on meta")
        return records
    except BuildError as e:
        if not _is_meta_limitation(e.__cause__):
            raise
    cpu = torch.device("cpu")
    skeleton, records = build_on(cpu)
    skeleton.eval()
    traced(skeleton, sample(cpu), record_paths(records), "sample run on cpu")
    return records


def _is_meta_limitation(e: BaseException | None) -> bool:
    text = f"{type(e).__name__}: {e}".lower()
    hints = ("meta", "data-dependent", "item()", "cannot be converted", "boolean value of tensor")
    return any(s in text for s in hints)


def _twin(record: Built) -> tuple[str, dict[str, Any]] | None:
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
        twin = _twin(r)
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
