"""The small training tasks of ``train=``: data made from a seed, or shipped with the package.

Nothing is downloaded. Each task makes batches from a ``torch.Generator`` it is given (the
job's batch stream) and fixes the task itself (the teacher's weights) from ``data_seed``,
so every job of a sweep learns the same task and a job is bit-reproducible.

- ``teacher``: regress the output of a fixed random network on N(0, 1) inputs (float models);
- ``lm``: next-byte prediction on a bundled public-domain text (token models, vocab >= 256);
- ``image``: which of ``n_classes`` orientations a noisy grating has (``(B, C, H, W)`` models).
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources
from typing import Protocol

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["TASKS", "Task", "corpus", "make_task"]

TASKS = ("auto", "teacher", "lm", "image")
BYTES = 256  # byte-level tokens: every model with a vocabulary of 256 or more can read them


class Task(Protocol):
    name: str

    def batch(self, gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` inputs (on the model's device) and their targets, drawn from ``gen``."""
        ...

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A scalar float32 loss of the model's output against the targets."""
        ...


@cache
def corpus() -> bytes:
    """The bundled text: William Shakespeare, *Coriolanus*, Act I (public domain), 16 KB."""
    return resources.files("modelfactory._app").joinpath("data/corpus.txt").read_bytes()


class Teacher:
    """MSE against ``tanh(x W1) W2`` of a fixed random two-layer network (width 64)."""

    name = "teacher"

    def __init__(
        self, x_shape: tuple[int, ...], y_shape: tuple[int, ...], dtype: torch.dtype, seed: int
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        d_in, d_out, hidden = math.prod(x_shape), math.prod(y_shape), 64
        self.w1 = torch.randn(d_in, hidden, generator=gen) / math.sqrt(d_in)
        self.w2 = torch.randn(hidden, d_out, generator=gen) / math.sqrt(hidden)
        self.x_shape, self.y_shape, self.dtype = x_shape, y_shape, dtype

    def batch(self, gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(size, *self.x_shape, generator=gen)
        y = torch.tanh(x.reshape(size, -1) @ self.w1) @ self.w2
        return x.to(self.dtype), y.reshape(size, *self.y_shape)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out.float(), target.to(out.device))


class NextByte:
    """Cross-entropy of next-byte prediction on windows of the bundled text."""

    name = "lm"

    def __init__(self, seq_len: int) -> None:
        self.data = torch.frombuffer(bytearray(corpus()), dtype=torch.uint8).long()
        self.seq_len = seq_len

    def batch(self, gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.data) - self.seq_len, (size, 1), generator=gen)
        window = self.data[starts + torch.arange(self.seq_len + 1)]
        return window[:, :-1], window[:, 1:]

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = out.float().reshape(-1, out.shape[-1])
        return F.cross_entropy(logits, target.reshape(-1).to(out.device))


class Gratings:
    """Classify the orientation of a sine grating (``n_classes`` angles in [0, pi)) in noise."""

    name = "image"

    def __init__(self, x_shape: tuple[int, ...], n_classes: int, dtype: torch.dtype) -> None:
        self.x_shape, self.n_classes, self.dtype = x_shape, n_classes, dtype
        _, h, w = x_shape
        self.yy, self.xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")

    def batch(self, gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, self.n_classes, (size,), generator=gen)
        theta = (labels.float() * math.pi / self.n_classes)[:, None, None]
        phase = (torch.rand(size, generator=gen) * 2 * math.pi)[:, None, None]
        wave = torch.sin(2 * math.pi * 4 * (self.xx * theta.cos() + self.yy * theta.sin()) + phase)
        noise = 0.5 * torch.randn(size, *self.x_shape, generator=gen)
        return (wave[:, None] + noise).to(self.dtype), labels

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), target.to(out.device))


def _auto(input_dtype: torch.dtype, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> str:
    if not input_dtype.is_floating_point:
        return "lm"
    return "image" if len(x_shape) == 3 and len(out_shape) == 2 else "teacher"


def make_task(
    name: str,
    input_shape: list[int],
    input_dtype: torch.dtype,
    out: torch.Tensor,
    data_seed: int,
) -> Task:
    """The task ``name`` for a model with sample input ``input_shape`` and sample output ``out``.

    Raises:
        ConfigError: the model's input or output does not fit the task (path ``train.task``).
    """
    x_shape, out_shape = tuple(input_shape[1:]), tuple(out.shape)
    if name == "auto":
        name = _auto(input_dtype, x_shape, out_shape)
    problem = None
    if not out.is_floating_point() or not out_shape or out_shape[0] != input_shape[0]:
        problem = f"needs a float output with the batch dimension first, got {list(out_shape)}"
    elif name == "lm" and (input_dtype.is_floating_point or len(out_shape) != 3):
        problem = f"needs token ids in and (batch, seq, vocab) logits out, got {list(out_shape)}"
    elif name == "lm" and out_shape[-1] < BYTES:
        problem = f"reads bytes: the model's vocabulary must be >= {BYTES}, got {out_shape[-1]}"
    elif name == "image" and (len(x_shape) != 3 or len(out_shape) != 2):
        problem = f"needs (batch, C, H, W) in and (batch, classes) out, got {list(out_shape)}"
    elif name == "teacher" and not input_dtype.is_floating_point:
        problem = "needs float inputs; token models train with train=lm"
    if problem is not None:
        raise ConfigError([("train.task", f"{name}: {problem}")])
    if name == "lm":
        return NextByte(seq_len=int(input_shape[-1]))
    if name == "image":
        return Gratings(x_shape, out_shape[-1], out.dtype)
    return Teacher(x_shape, out_shape[1:], out.dtype, data_seed)
