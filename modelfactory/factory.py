"""``build``: config -> initialized, tied, placed ``nn.Module``.

config --normalize--> BuildConfig --plan (validate everything)--> Plan
  --skeleton on meta (ties, device map, lazy dry run)--> --construct (seeded)-->
  --init rules--> --ties--> --device hooks--> model + BuildRecord
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from . import device as devices
from ._config import BuildConfig, normalize, without_overlaps
from ._construct import ROOT, Allocations, Built, Context, SkipInit, construct, record_paths
from ._lazy import (
    dry_run,
    eager_tree,
    has_lazy,
    has_uninitialized,
    is_meta_limitation,
    materialize_lazy,
)
from ._record import BuildRecord, attach
from ._sample import sample_input, traced
from ._seeding import DrawFrom, Streams, borrowed_defaults, may_borrow_defaults, mix, root_key
from ._spec import Node, is_plain, parse_node
from .errors import BuildError, ConfigError, DeviceError, TieError
from .init import Rule, apply_rules, parse_rules
from .tie import apply_ties, check_ties, resolve_groups, validate_groups

__all__ = ["build", "build_skeleton", "configured", "meta_build"]

META = torch.device("meta")


def build(
    cfg: Any, *, device: str | None = None, dtype: str | None = None, seed: int | None = None
) -> nn.Module:
    """A model from a config, in this process (:func:`modelfactory.build` is the front door:
    it also builds sharded over a mesh)."""
    # The model tree is parsed as the caller gave it, with a snapshot for the record instead
    # of a private copy made first (1/8 of the cost). Unless it parses cleanly and holds plain
    # data only, it goes through the copy, as for every other entry point: that reports the
    # mistakes, and turns what JSON changes (a tuple, an integer key) as before.
    bc = configured(cfg, device=device, dtype=dtype, seed=seed, borrow=True)
    plan = _borrowed_plan(bc) if bc.model_snapshot is not None else None
    if bc.model_snapshot is not None and plan is None:
        bc = configured(cfg, device=device, dtype=dtype, seed=seed)
    return attach(*_build(bc, plan))


def _borrowed_plan(bc: BuildConfig) -> Plan | None:
    """The plan of a config whose model tree is the caller's own, if it parses without a
    mistake and holds plain data only (else ``None``: the copy decides)."""
    try:
        plan = _plan(bc)
    except Exception:  # a mistake, or what only the copy makes plain (mixed key types)
        return None
    return plan if is_plain(plan.spec) else None


def configured(
    cfg: Any,
    *,
    device: str | None = None,
    dtype: str | None = None,
    seed: int | None = None,
    borrow: bool = False,
) -> BuildConfig:
    """The checked config of a build: the keywords are checked as the config keys they
    replace, and interpolations that do not resolve are reported with the model's other
    problems (when the model is planned). ``borrow``: see :func:`normalize`."""
    bc = normalize(cfg, collect=True, seed=seed, device=device, dtype=dtype, borrow=borrow)
    bc.resolved = {
        **bc.resolved,
        "seed": bc.seed,
        "device": {**bc.resolved.get("device", {}), "device": bc.device, "dtype": bc.dtype},
    }
    return bc


def build_skeleton(
    cfg: Any, shapes: Mapping[str, Sequence[int]] | None = None, *, max_bytes: int | None = None
) -> nn.Module:
    """The architecture alone on the ``meta`` device: no memory and no init at all.

    Args:
        cfg: as for :func:`build`.
        shapes: stored tensor shapes by ``state_dict`` key; lazy layers are materialized to
            them (no dry run, ``input_shape`` is not used) before ties are resolved.
        max_bytes: a model whose constructors cannot run on ``meta`` (one reads a tensor's
            value) is built on the CPU instead, its init skipped, allocating at most this
            many bytes; ``None``: no such fallback (the error is raised).

    Raises:
        ConfigError: the config is not well-formed.
        BuildError: a constructor failed, or the CPU fallback would pass ``max_bytes``.
    """
    bc = replace(normalize(cfg), device="meta", device_map=None, input_shape=None)
    plan = _plan(bc)
    model, records = _skeleton_modules(plan, bc, max_bytes)
    if shapes is not None:
        materialize_lazy(model, shapes)
    ties = resolve_groups(model, bc.tie_groups) if bc.tie_groups else []
    apply_ties(model, ties)
    check_ties(model, ties)
    return attach(model, BuildRecord(bc.resolved, ties, record_paths(records), bc.knobs))


def _skeleton_modules(
    plan: Plan, bc: BuildConfig, max_bytes: int | None
) -> tuple[nn.Module, list[Built]]:
    """The spec's modules on ``meta``, or on the CPU with init skipped and at most
    ``max_bytes`` allocated when a constructor needs real values."""
    try:
        return _construct(plan, bc, Context(META, seed_streams=False))
    except BuildError as e:
        if max_bytes is None or not is_meta_limitation(e.__cause__):
            raise
    cpu = torch.device("cpu")
    with SkipInit(everywhere=True), Allocations(max_bytes):
        return _construct(plan, replace(bc, device="cpu"), Context(cpu, seed_streams=False))


def meta_build(bc: BuildConfig) -> tuple[Plan, nn.Module, list[Built], list]:
    """What a build of ``bc`` makes, on ``meta`` (no memory, no init): the validated plan, with
    each lazy node rewritten as its eager twin where every lazy node has one, the model (lazy
    layers materialized by the build's dry run; ties not applied), its records and its
    resolved ties. Shared by :mod:`modelfactory.planning` and the sharded build."""
    plan = _plan(bc)
    lazy = bc.input_shape is not None and has_lazy(plan.spec)
    skeleton = _skeleton(plan, bc, lazy)
    if lazy:
        eager, _ = _eager_plan(plan, bc, skeleton)
        if eager is not plan:
            plan, skeleton = eager, _construct(eager, bc, Context(META, seed_streams=False))
    ties = resolve_groups(skeleton[0], bc.tie_groups) if bc.tie_groups else []
    return plan, *skeleton, ties


@dataclass(frozen=True)
class Plan:
    """A validated config: the model spec and every section parsed."""

    spec: Node
    rules: list[Rule]
    target: torch.device
    dtype: torch.dtype
    dmap: Any


def _plan(bc: BuildConfig) -> Plan:
    """Validate every section; raise one error listing all problems."""
    problems: list[tuple[str, str]] = []
    spec = None
    if not isinstance(bc.model, dict) or "_target_" not in bc.model:
        problems.append((ROOT, f"expected a mapping with a '_target_' key, got {bc.model!r}"))
    else:
        spec = parse_node(bc.model, ROOT, ROOT, problems, 0)
    rules = parse_rules(bc.init_rules, problems)
    classes = {ConfigError} if problems else set()
    tie_problems = validate_groups(bc.tie_groups)
    if tie_problems:
        problems += tie_problems
        classes.add(TieError)
    target = _checked(devices.resolve_device, bc.device, "device.device", problems, classes)
    dtype = _checked(devices.parse_dtype, bc.dtype, "device.dtype", problems, classes)
    dmap = _checked(devices.parse_map, bc.device_map, "device.map", problems, classes)
    _checked(devices.parse_dtype, bc.input_dtype, "input_dtype", problems, classes)
    if dtype is not None and not dtype.is_floating_point:
        problems.append(("device.dtype", f"expected a floating dtype for parameters, got {dtype}"))
        classes.add(ConfigError)
    if bc.problems:  # interpolations that did not resolve: reported with the rest
        problems = without_overlaps(bc.problems, problems)
        classes = {ConfigError}
    if problems:
        # One kind of problem keeps its class (a missing device is a DeviceError).
        raise (classes.pop() if len(classes) == 1 else ConfigError)(problems)
    return Plan(spec, rules, target, dtype, dmap)


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


def _build(bc: BuildConfig, plan: Plan | None = None) -> tuple[nn.Module, BuildRecord]:
    """The whole pipeline (from ``plan``, when ``bc`` is already planned); returns the model
    and its record."""
    plan = plan if plan is not None else _plan(bc)
    lazy = bc.input_shape is not None and has_lazy(plan.spec)
    skeleton = _skeleton(plan, bc, lazy) if bc.tie_groups or plan.dmap or lazy else None
    ties = resolve_groups(skeleton[0], bc.tie_groups) if bc.tie_groups else []
    if lazy and plan.target.type != "meta":
        plan, skeleton = _eager_plan(plan, bc, skeleton)
    node_devices = _node_devices(*skeleton, plan.dmap) if plan.dmap else {}
    ctx = Context(plan.target, seed_streams=True, node_devices=node_devices)
    model, records = _construct(plan, bc, ctx)
    if bc.input_shape is not None and has_uninitialized(model):
        _materializing_run(model, bc, plan.target, records)
    if plan.rules:
        apply_rules(model, plan.rules, records, root_key(bc.seed))
    apply_ties(model, ties)
    check_ties(model, ties)
    if plan.dmap:
        devices.place_hooks(model, _mapping(model, plan.dmap))
    return model, BuildRecord(bc.record_config(), ties, record_paths(records), bc.knobs)


def _construct(plan: Plan, bc: BuildConfig, ctx: Context) -> tuple[nn.Module, list[Built]]:
    """Construct the spec's modules on ``ctx.device``; a ``meta`` build runs no init."""
    on_meta = ctx.device.type == "meta"
    # On meta nothing draws: the mode is needed there only for a dtype other than the default,
    # or for blocks device.map puts elsewhere.
    routed = not on_meta or plan.dtype != torch.get_default_dtype() or bool(ctx.node_devices)
    if routed and not ctx.node_devices and may_borrow_defaults(ctx.device):
        # no other thread: the same values, faster
        with borrowed_defaults(plan.dtype) as ctx.streams:
            model = construct(plan.spec, root_key(bc.seed), ctx)
    else:
        with (
            DrawFrom(ctx.streams, plan.dtype) if routed else nullcontext(),
            torch.device(ctx.device) if ctx.device.type != "cpu" else nullcontext(),
            SkipInit() if on_meta else nullcontext(),
        ):
            model = construct(plan.spec, root_key(bc.seed), ctx)
    if not isinstance(model, nn.Module):
        raise BuildError(
            ROOT, f"{plan.spec.target_name} returned a {type(model).__name__}, not an nn.Module"
        )
    return model, ctx.records


def _skeleton(plan: Plan, bc: BuildConfig, lazy: bool) -> tuple[nn.Module, list[Built]]:
    """The architecture on ``meta`` (no init), lazy layers materialized by a dry run."""
    skeleton = _construct(plan, bc, Context(META, seed_streams=False))
    if not lazy:
        return skeleton
    with DrawFrom(Streams()):  # a forward run on the CPU must not draw from the global RNG
        return dry_run(
            skeleton,
            lambda: _construct(plan, bc, Context(torch.device("cpu"), seed_streams=False)),
            lambda dev: sample_input(bc, dev),
        )


def _eager_plan(
    plan: Plan, bc: BuildConfig, skeleton: tuple[nn.Module, list[Built]]
) -> tuple[Plan, tuple[nn.Module, list[Built]]]:
    """Re-plan from the config with each lazy node rewritten as its eager twin (the plan is
    unchanged when some lazy node has none); the skeleton follows the new plan."""
    tree = eager_tree(bc.model, skeleton[1])
    if tree is None or tree is bc.model:
        return plan, skeleton
    problems: list[tuple[str, str]] = []
    spec = parse_node(tree, ROOT, ROOT, problems, 0)
    if problems:  # the twin of a well-formed lazy node is well-formed
        raise ConfigError(
            problems, header="Internal error: the eager twin config is not well-formed:"
        )
    plan = replace(plan, spec=spec)
    if plan.dmap:  # device.map needs the stream keys of the new plan's nodes
        skeleton = _construct(plan, bc, Context(META, seed_streams=False))
    return plan, skeleton


def _materializing_run(
    model: nn.Module, bc: BuildConfig, target: torch.device, records: list[Built]
) -> None:
    """One real, seeded run in eval mode for lazy layers with no eager twin (user-defined,
    or ``Repeat`` copies that saw different sizes)."""
    streams = Streams()
    streams.seed(target, mix(root_key(bc.seed), "lazy"))
    was_training = model.training
    model.eval()  # must not move BatchNorm's running statistics
    try:
        with DrawFrom(streams):
            traced(model, sample_input(bc, target), record_paths(records), "materializing")
    finally:
        model.train(was_training)


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
