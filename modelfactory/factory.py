"""``build``: config -> initialized, tied, placed ``nn.Module``.

config --normalize--> BuildConfig --parse--> spec --construct--> modules
  (lazy: skeleton on meta -> dry run -> eager twins) --init--> --tie--> model
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from . import device as devices
from ._config import BuildConfig, normalize
from ._construct import ROOT, Built, Context, construct, mix, preserved_rng, root_key
from ._lazy import materialize_lazy
from ._spec import Node, _parse_node, own_digest
from ._targets import qualified_name, signature_of
from .errors import BuildError, ConfigError, ModelFactoryError
from .init import apply_rules, parse_rules
from .tie import apply_ties, check_ties, resolve_groups

__all__ = ["build", "build_skeleton", "run_sample", "sample_input"]

CONFIG_ATTR = "_modelfactory_config"
TIES_ATTR = "_modelfactory_ties"
PATHS_ATTR = "_modelfactory_paths"  # module name -> config path of the node that built it


def build(
    cfg: Any, *, device: str | None = None, dtype: str | None = None, seed: int | None = None
) -> nn.Module:
    """Build a model from a config.

    Args:
        cfg: a full config (``model``/``init``/``tie``/``device``/``seed``/...) or a bare model
            node, as a ``DictConfig``, a dict or a path to a YAML file. Not modified.
        device: overrides ``device.device``.
        dtype: overrides ``device.dtype``.
        seed: overrides ``seed``.

    Returns:
        The model, with every parameter initialized (lazy layers materialized when
        ``input_shape`` is given), ties applied and placed on its device. The resolved config
        is kept on the model, so :func:`modelfactory.save` can store it.

    Raises:
        ConfigError: the config is not well-formed (every problem listed with its path).
        BuildError: a block failed to construct or run on the sample input.
    """
    bc = normalize(cfg)
    if device is not None:
        bc.device = device
    if dtype is not None:
        bc.dtype = dtype
    if seed is not None:
        bc.seed = seed
    bc.resolved = {
        **bc.resolved,
        "seed": bc.seed,
        "device": {**bc.resolved.get("device", {}), "device": bc.device, "dtype": bc.dtype},
    }
    plan = _plan(bc)
    return _run(bc, plan, init=True)


def build_skeleton(cfg: Any, shapes: Mapping[str, Sequence[int]] | None = None) -> nn.Module:
    """The architecture alone on the ``meta`` device: no memory, no init (used by ``load``).

    Args:
        cfg: as for :func:`build`.
        shapes: stored tensor shapes by ``state_dict`` key; lazy layers are materialized to
            them (no dry run, ``input_shape`` is not used) before ties are resolved.
    """
    bc = normalize(cfg)
    bc.device, bc.device_map, bc.input_shape = "meta", None, None
    groups, bc.tie_groups = bc.tie_groups, []
    model = _run(bc, _plan(bc), init=False)
    if shapes is not None:
        materialize_lazy(model, shapes)
    ties = resolve_groups(model, groups) if groups else []
    apply_ties(model, ties)
    check_ties(model, ties)
    model.__dict__[TIES_ATTR] = ties
    return model


class _Plan:
    def __init__(
        self, spec: Node, rules: list, target: torch.device, dtype: torch.dtype, dmap: Any
    ) -> None:
        self.spec, self.rules, self.target, self.dtype, self.dmap = spec, rules, target, dtype, dmap


def _plan(bc: BuildConfig) -> _Plan:
    """Validate every section; raise one error listing all problems."""
    problems: list[tuple[str, str]] = []
    spec = None
    if not isinstance(bc.model, dict) or "_target_" not in bc.model:
        problems.append((ROOT, f"expected a mapping with a '_target_' key, got {bc.model!r}"))
    else:
        spec = _parse_node(bc.model, ROOT, ROOT, problems, 0)
    rules = parse_rules(bc.init_rules, problems)
    target = _checked(devices.resolve_device, bc.device, "device.device", problems)
    dtype = _checked(devices.parse_dtype, bc.dtype, "device.dtype", problems)
    dmap = _checked(devices.parse_map, bc.device_map, "device.map", problems)
    _checked(devices.parse_dtype, bc.input_dtype, "input_dtype", problems)
    if problems:
        raise ConfigError(problems)
    return _Plan(spec, rules, target, dtype, dmap)


def _checked(fn: Any, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """``fn(value, path)``, or ``None`` with its problems appended."""
    try:
        return fn(value, path)
    except ConfigError as e:
        problems += e.problems
        return None


@contextmanager
def _default_dtype(dtype: torch.dtype):
    if not dtype.is_floating_point:
        raise ConfigError(
            [("device.dtype", f"expected a floating dtype for parameters, got {dtype}")]
        )
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _construct(plan: _Plan, bc: BuildConfig, ctx: Context) -> tuple[nn.Module, list[Built]]:
    with (
        _default_dtype(plan.dtype),
        torch.device(ctx.device) if ctx.device.type != "cpu" else _null(),
    ):
        model = construct(plan.spec, root_key(bc.seed), ctx)
    if not isinstance(model, nn.Module):
        raise BuildError(
            ROOT, f"{plan.spec.target_name} returned a {type(model).__name__}, not an nn.Module"
        )
    return model, ctx.records


@contextmanager
def _null():
    yield


def _run(bc: BuildConfig, plan: _Plan, *, init: bool) -> nn.Module:
    target = plan.target
    needs_skeleton = bool(plan.dmap) or (bc.input_shape is not None and _has_lazy(plan.spec))
    node_devices: dict[int, torch.device] = {}
    substitutions: dict[int, Node] = {}
    if needs_skeleton and (target.type != "meta" or plan.dmap):
        skeleton, records = _construct(plan, bc, Context(torch.device("meta"), seed_streams=False))
        if bc.input_shape is not None:
            skeleton, records = _dry_run(skeleton, records, plan, bc)
            substitutions = _eager_twins(records)
        if plan.dmap:
            node_devices = _node_devices(skeleton, records, plan.dmap)
    used = sorted({target, *node_devices.values()}, key=str)
    with preserved_rng(used):
        ctx = Context(
            target, seed_streams=init, node_devices=node_devices, substitutions=substitutions
        )
        model, records = _construct(plan, bc, ctx)
        if bc.input_shape is not None and _has_uninitialized(model):
            # Lazy layers with no eager twin (user-defined): one real run, seeded.
            torch.default_generator.manual_seed(mix(root_key(bc.seed), "lazy"))
            _forward(model, records, sample_input(bc, target), "materializing lazy layers")
    if init and plan.rules:
        apply_rules(model, plan.rules, records, root_key(bc.seed))
    ties = resolve_groups(model, bc.tie_groups) if bc.tie_groups else []
    apply_ties(model, ties)
    check_ties(model, ties)
    if plan.dmap:
        devices.place_hooks(model, _mapping(model, plan.dmap))
    model.__dict__[CONFIG_ATTR] = bc.resolved
    model.__dict__[TIES_ATTR] = ties
    built = {id(r.module): r.node.path for r in records}
    model.__dict__[PATHS_ATTR] = {
        n: built[id(m)] for n, m in model.named_modules() if id(m) in built
    }
    return model


def _has_lazy(spec: Any) -> bool:
    if isinstance(spec, Node):
        if isinstance(spec.target, type) and issubclass(spec.target, LazyModuleMixin):
            return True
        return any(_has_lazy(a) for a in spec.args) or any(
            _has_lazy(v) for v in spec.kwargs.values()
        )
    if isinstance(spec, list):
        return any(_has_lazy(x) for x in spec)
    if isinstance(spec, dict):
        return any(_has_lazy(x) for x in spec.values())
    return False


def _has_uninitialized(model: nn.Module) -> bool:
    return any(
        isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules()
    )


def sample_input(bc: BuildConfig, device: torch.device) -> torch.Tensor:
    """A deterministic sample of ``input_shape`` on ``device``.

    Integer ``input_dtype``s (token ids) give zeros; floating ones give U(0, 1) values in
    the model's own dtype (``device.dtype``), so a bfloat16 model gets a bfloat16 sample.
    """
    dtype = devices.parse_dtype(bc.input_dtype, "input_dtype")
    if dtype.is_floating_point:
        dtype = devices.parse_dtype(bc.dtype, "device.dtype")
    shape = tuple(bc.input_shape or ())
    if device.type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(int(bc.seed))
    if dtype.is_floating_point:
        return torch.rand(shape, generator=gen).to(device=device, dtype=dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


def _forward(model: nn.Module, records: list[Built], x: torch.Tensor, what: str) -> Any:
    """Run ``model(x)`` while building; on failure name the config path of the failing block."""
    return _traced(model, x, {id(r.module): r.node.path for r in records}, what)


def run_sample(model: nn.Module, x: torch.Tensor) -> Any:
    """``model(x)`` in ``eval`` mode under ``no_grad``.

    Raises:
        BuildError: naming the config path of the innermost block that failed (for models
            :func:`build` made), else its module name.
    """
    by_name = model.__dict__.get(PATHS_ATTR, {})
    paths = {
        id(m): by_name.get(n) or f"module {n or '<root>'!r} ({type(m).__name__})"
        for n, m in model.named_modules()
    }
    was_training = model.training
    model.eval()
    try:
        return _traced(model, x, paths, "the sample forward pass")
    finally:
        model.train(was_training)


def _traced(model: nn.Module, x: torch.Tensor, paths: dict[int, str], what: str) -> Any:
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


def _dry_run(
    skeleton: nn.Module, records: list[Built], plan: _Plan, bc: BuildConfig
) -> tuple[nn.Module, list[Built]]:
    """Materialize lazy layers on ``meta``; fall back to one real CPU run when the forward
    reads values (data-dependent control flow cannot run on ``meta``)."""
    try:
        _forward(skeleton, records, sample_input(bc, torch.device("meta")), "dry run on meta")
        return skeleton, records
    except BuildError as e:
        if not _is_meta_limitation(e.__cause__):
            raise
    cpu, records = _construct(plan, bc, Context(torch.device("cpu"), seed_streams=False))
    _forward(cpu, records, sample_input(bc, torch.device("cpu")), "sample run on cpu")
    return cpu, records


def _is_meta_limitation(e: BaseException | None) -> bool:
    text = f"{type(e).__name__}: {e}".lower()
    return any(
        s in text
        for s in (
            "meta",
            "data-dependent",
            "item()",
            "cannot be converted",
            "boolean value of tensor",
        )
    )


def _eager_twins(records: list[Built]) -> dict[int, Node]:
    """For each materialized lazy layer, the eager node it stands for (``LazyLinear(256)`` that
    saw 20 features -> ``Linear(20, 256)``), keyed by the lazy instance's stream key, so the
    real build gets exactly the values of the eager model."""
    out = {}
    for r in records:
        node = r.node
        if not (isinstance(node.target, type) and issubclass(node.target, LazyModuleMixin)):
            continue
        cls = type(r.module)
        if isinstance(r.module, LazyModuleMixin):  # no cls_to_become: materialize in place
            continue
        kwargs = dict(node.kwargs)
        sig = signature_of(cls)
        for name in sig.required:
            if name not in kwargs and hasattr(r.module, name):
                kwargs[name] = getattr(r.module, name)
        if any(r not in kwargs for r in sig.required):
            continue
        digest = own_digest(qualified_name(cls), list(node.args), kwargs)
        twin = Node(
            path=node.path,
            target=cls,
            target_name=qualified_name(cls),
            component=f"{node.prefix}|{digest}{node.ordinal}",
            args=list(node.args),
            kwargs=kwargs,
            prefix=node.prefix,
            ordinal=node.ordinal,
        )
        out[r.key] = twin
    return out


def _node_devices(skeleton: nn.Module, records: list[Built], dmap: Any) -> dict[int, torch.device]:
    mapping = _mapping(skeleton, dmap)
    names = {id(m): n for n, m in skeleton.named_modules()}
    out = {}
    for r in records:
        name = names.get(id(r.module))
        if name is not None:
            dev = devices.device_for(name, mapping)
            if dev is not None:
                out[r.key] = dev
    return out


def _mapping(model: nn.Module, dmap: Any) -> dict[str, torch.device]:
    if dmap == "balanced":
        return devices.balanced_map(model, devices.try_all_gpus())
    return dict(dmap)
