"""``build``: config -> initialized, tied, placed ``nn.Module``.

config --normalize--> BuildConfig --parse--> spec --construct--> modules
  (lazy: skeleton on meta -> dry run -> eager twins) --init--> --tie--> model
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from . import device as devices
from ._config import BuildConfig, normalize
from ._construct import ROOT, Built, Context, construct, mix, preserved_rng, root_key
from ._dryrun import (
    PATHS_ATTR,
    dry_run,
    eager_tree,
    has_lazy,
    has_uninitialized,
    record_paths,
    run_sample,
    traced,
)
from ._lazy import materialize_lazy
from ._spec import Node, parse_node
from .errors import BuildError, ConfigError, DeviceError
from .init import apply_rules, parse_rules
from .tie import apply_ties, check_ties, resolve_groups

__all__ = ["build", "build_skeleton", "run_sample", "sample_input"]

CONFIG_ATTR = "_modelfactory_config"
TIES_ATTR = "_modelfactory_ties"


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
        spec = parse_node(bc.model, ROOT, ROOT, problems, 0)
    rules = parse_rules(bc.init_rules, problems)
    classes = {ConfigError} if problems else set()
    target = _checked(devices.resolve_device, bc.device, "device.device", problems, classes)
    dtype = _checked(devices.parse_dtype, bc.dtype, "device.dtype", problems, classes)
    dmap = _checked(devices.parse_map, bc.device_map, "device.map", problems, classes)
    _checked(devices.parse_dtype, bc.input_dtype, "input_dtype", problems, classes)
    if problems:
        # One kind of problem keeps its class (a missing device is a DeviceError).
        raise (classes.pop() if len(classes) == 1 else ConfigError)(problems)
    return _Plan(spec, rules, target, dtype, dmap)


def _checked(
    fn: Any, value: Any, path: str, problems: list[tuple[str, str]], classes: set[type]
) -> Any:
    """``fn(value, path)``, or ``None`` with its problems and error class recorded."""
    try:
        return fn(value, path)
    except ConfigError as e:
        problems += e.problems
        classes.add(type(e))
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
        torch.device(ctx.device) if ctx.device.type != "cpu" else nullcontext(),
    ):
        model = construct(plan.spec, root_key(bc.seed), ctx)
    if not isinstance(model, nn.Module):
        raise BuildError(
            ROOT, f"{plan.spec.target_name} returned a {type(model).__name__}, not an nn.Module"
        )
    return model, ctx.records


def _run(bc: BuildConfig, plan: _Plan, *, init: bool) -> nn.Module:
    target = plan.target
    with preserved_rng(_devices_used(plan)):
        lazy = bc.input_shape is not None and has_lazy(plan.spec)
        if lazy and target.type != "meta":
            plan = _eager_plan(plan, bc)
        node_devices: dict[int, torch.device] = {}
        if plan.dmap:
            skeleton, records = _construct(plan, bc, Context(torch.device("meta"), False))
            node_devices = _node_devices(skeleton, records, plan.dmap)
        ctx = Context(target, seed_streams=init, node_devices=node_devices)
        model, records = _construct(plan, bc, ctx)
        if bc.input_shape is not None and has_uninitialized(model):
            # Lazy layers with no eager twin (user-defined, or Repeat copies that saw
            # different sizes): one real, seeded run in eval mode.
            torch.default_generator.manual_seed(mix(root_key(bc.seed), "lazy"))
            _materializing_run(model, sample_input(bc, target), records)
        if init and plan.rules:
            apply_rules(model, plan.rules, records, root_key(bc.seed))
    ties = resolve_groups(model, bc.tie_groups) if bc.tie_groups else []
    apply_ties(model, ties)
    check_ties(model, ties)
    if plan.dmap:
        devices.place_hooks(model, _mapping(model, plan.dmap))
    model.__dict__[CONFIG_ATTR] = bc.resolved
    model.__dict__[TIES_ATTR] = ties
    model.__dict__[PATHS_ATTR] = record_paths(records)
    return model


def _materializing_run(model: nn.Module, x: torch.Tensor, records: list[Built]) -> None:
    was_training = model.training
    model.eval()  # must not move BatchNorm's running statistics
    try:
        traced(model, x, record_paths(records), "materializing lazy layers")
    finally:
        model.train(was_training)


def _devices_used(plan: _Plan) -> list[torch.device]:
    """Every device whose global RNG a build may touch (restored afterwards)."""
    used = {plan.target, torch.device("cpu")}
    if isinstance(plan.dmap, dict):
        used.update(plan.dmap.values())
    elif plan.dmap == "balanced":
        used.update(devices.try_all_gpus())
    return sorted(used, key=str)


def _eager_plan(plan: _Plan, bc: BuildConfig) -> _Plan:
    """Materialize the lazy layers on a skeleton, then re-plan from the config with each lazy
    node rewritten as its eager twin (unchanged when some lazy node has none)."""
    records = dry_run(
        lambda dev: _construct(plan, bc, Context(dev, seed_streams=False)),
        lambda dev: sample_input(bc, dev),
    )
    tree = eager_tree(bc.model, records)
    if tree is None or tree is bc.model:
        return plan
    problems: list[tuple[str, str]] = []
    spec = parse_node(tree, ROOT, ROOT, problems, 0)
    if problems:  # the twin of a well-formed lazy node is well-formed
        raise ConfigError(
            problems, header="Internal error: the eager twin config is not well-formed:"
        )
    return _Plan(spec, plan.rules, plan.target, plan.dtype, plan.dmap)


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


def _node_devices(skeleton: nn.Module, records: list[Built], dmap: Any) -> dict[int, torch.device]:
    """The device of every node instance, from ``device.map`` over the skeleton's module names."""
    mapping = _mapping(skeleton, dmap)
    names = {id(m): n for n, m in skeleton.named_modules()}
    unknown = [p for p in mapping if p and p not in names.values()]
    if unknown:
        raise DeviceError(
            [(f"device.map.{p}", f"{p!r} names no module of the model") for p in unknown]
        )
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
