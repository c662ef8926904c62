"""``train=``: a few seeded optimizer steps on a bundled task, and the coordinate check.

The loss at every step, and the mean absolute output of every module at steps ``0..k``
(the "coordinate check" of muP, Yang et al., as in the ``mup`` package's
``get_coord_data``), measured on the training batch of that step before its update.
Step ``s`` is the model after ``s`` updates: ``train.steps`` updates give
``train.steps + 1`` losses.

Reproducible to the bit on the same device type and thread count: batches come from a
``torch.Generator`` seeded with the job's ``seed``; dropout draws from the global RNG, so
training runs inside ``torch.random.fork_rng`` seeded with the same ``seed``, and the
caller's RNG state is left as it was.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from . import tasks

__all__ = ["OPTIMIZERS", "TrainConfig", "parse_train", "train"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` node of the app's config (``conf/train/*.yaml``)."""

    task: str
    steps: int
    lr: float
    optimizer: str
    batch_size: int
    coord_steps: int | None = None  # the coordinate check covers steps 0..coord_steps
    data_seed: int = 0  # fixes the task (the teacher's weights); the job's seed draws batches


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_train(node: Any) -> TrainConfig | None:
    """Check the ``train`` node and fill its defaults; ``None`` (``train=none``) means no training.

    Raises:
        ConfigError: every problem of the node at once, each with its path (``train.lr``).
    """
    if node is None:
        return None
    if not isinstance(node, dict):
        raise ConfigError([("train", f"expected a mapping or null, got {node!r}")])
    known = {f: None for f in TrainConfig.__dataclass_fields__}
    problems = [
        (f"train.{k}", f"unknown key; expected one of {', '.join(known)}")
        for k in node
        if k not in known
    ]
    missing = [k for k in ("task", "steps", "lr", "optimizer", "batch_size") if k not in node]
    problems += [
        (f"train.{k}", "missing (set it in conf/train/ or with +train.KEY=)") for k in missing
    ]
    checks = {
        "task": (lambda v: v in tasks.TASKS, f"one of {', '.join(tasks.TASKS)}"),
        "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
        "steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "lr": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "> 0"),
        "coord_steps": (lambda v: v is None or (_is_int(v) and v >= 0), "null or an integer >= 0"),
        "data_seed": (_is_int, "an integer"),
    }
    for key, (ok, expected) in checks.items():
        if key in node and not ok(node[key]):
            problems.append((f"train.{key}", f"expected {expected}, got {node[key]!r}"))
    if problems:
        raise ConfigError(problems)
    return TrainConfig(**{**node, "lr": float(node["lr"])})


class CoordCheck:
    """Forward hooks on every module: the mean absolute value of each output tensor.

    A module whose output is the very tensor an inner module returned (a ``Sequential``
    returns its last child's output) is not counted twice; a module called twice in one
    forward (a shared layer) gets ``name#2`` for its second output.
    """

    def __init__(self, model: nn.Module) -> None:
        self._names = {id(m): n or "(model)" for n, m in model.named_modules()}
        self._types = {n or "(model)": type(m).__name__ for n, m in model.named_modules()}
        self._modules = [m for m in model.modules()]
        self._handles: list[Any] = []
        self._seen: dict[int, torch.Tensor] = {}  # held, so that ids stay unique in a forward
        self._step: list[tuple[str, torch.Tensor]] = []
        self._calls: dict[str, int] = {}
        self.steps: list[list[tuple[str, torch.Tensor]]] = []
        self.active = True

    def _hook(self, module: nn.Module, _inp: Any, out: Any) -> None:
        if not (self.active and isinstance(out, torch.Tensor)) or id(out) in self._seen:
            return
        if out.is_floating_point() and out.numel():
            self._seen[id(out)] = out
            name = self._names[id(module)]
            calls = self._calls[name] = self._calls.get(name, 0) + 1
            self._step.append((f"{name}#{calls}" if calls > 1 else name, out.detach().abs().mean()))

    def end_step(self) -> None:
        """Close the current step: keep its values (if recording) and release the outputs."""
        if self.active:
            self.steps.append(self._step)
        self._step, self._seen, self._calls = [], {}, {}

    def __enter__(self) -> CoordCheck:
        self._handles = [m.register_forward_hook(self._hook) for m in self._modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()

    def result(self) -> dict[str, Any]:
        """``{"steps": [0..k], "modules": [names], "types": {name: class name},
        "mean_abs": {name: [value per step]}}``."""
        modules = [n for n, _ in self.steps[0]] if self.steps else []
        table = [
            dict(zip([n for n, _ in s], torch.stack([v for _, v in s]).tolist(), strict=True))
            if s
            else {}
            for s in self.steps
        ]
        return {
            "steps": list(range(len(self.steps))),
            "modules": modules,
            "types": {n: self._types[n.split("#")[0]] for n in modules},
            "mean_abs": {n: [_finite(row.get(n)) for row in table] for n in modules},
        }


def _finite(x: float | None) -> float | None:
    """JSON has no NaN or infinity: those are written as null."""
    return x if x is not None and math.isfinite(x) else None


def _steps(
    model: nn.Module,
    task: Any,
    tc: TrainConfig,
    opt: torch.optim.Optimizer,
    coord: CoordCheck,
    gen: torch.Generator,
    device: torch.device,
    k: int,
    losses: list[float | None],
    progress: Any,
) -> dict[str, Any] | None:
    """The training loop: appends each step's loss; returns where it diverged, if it did."""
    for step in range(tc.steps + 1):
        x, y = task.batch(gen, tc.batch_size)
        coord.active = step <= k
        with torch.set_grad_enabled(step < tc.steps):
            loss = task.loss(model(x.to(device)), y)
        coord.end_step()
        value = loss.item()
        losses.append(_finite(value))
        if progress is not None:
            progress.set_postfix(loss=f"{value:.4g}", refresh=False)
            progress.update(1)
        if not math.isfinite(value):
            return {"step": step, "loss": str(value)}
        if step < tc.steps:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return None


def train(
    model: nn.Module,
    tc: TrainConfig,
    seed: int,
    sample: torch.Tensor,
    progress: Any = None,
) -> dict[str, Any]:
    """Train ``model`` in place for ``tc.steps`` steps; return the ``train`` record of metrics.json.

    Args:
        model: a built model with values (not on ``meta``).
        tc: what :func:`parse_train` returned.
        seed: the job's seed (batches and dropout).
        sample: the job's sample input (the checksum's): its shape and dtype say what the
            model reads (batches have ``tc.batch_size`` rows instead), and the model's
            output on it fits the task to the model.
        progress: an optional ``tqdm``-like bar, advanced once per step.

    Returns:
        ``{**tc, "task", "loss": [...], "final_loss", "diverged", "coord"}``. A loss that
        is not finite stops training: ``diverged`` is then ``{"step", "loss"}`` and the
        loss list ends with ``null``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError([("train", "the model has no trainable parameters")])
    device = sample.device
    gen = torch.Generator().manual_seed(int(seed))
    losses: list[float | None] = []
    was_training = model.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        task = _probe_task(model, tc, sample)
        opt = OPTIMIZERS[tc.optimizer](params, lr=tc.lr)
        k = tc.steps if tc.coord_steps is None else min(tc.coord_steps, tc.steps)
        model.train()
        with CoordCheck(model) as coord:
            diverged = _steps(model, task, tc, opt, coord, gen, device, k, losses, progress)
    model.train(was_training)
    return {
        **asdict(tc),
        "task": task.name,
        "loss": losses,
        "final_loss": losses[-1],
        "diverged": diverged,
        "coord": coord.result(),
    }


def _probe_task(model: nn.Module, tc: TrainConfig, sample: torch.Tensor) -> tasks.Task:
    """The task, fitted to the model's output on ``sample`` (one forward in eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            [("train.task", f"needs a model that returns one tensor, got {type(out)}")]
        )
    return tasks.make_task(tc.task, list(sample.shape), sample.dtype, out, tc.data_seed)
