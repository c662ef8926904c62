"""``summary``: a table of every parameter of a model."""

from __future__ import annotations

from torch import nn
from torch.nn.parameter import is_lazy

from .tie import tied_names

__all__ = ["summary"]


def summary(model: nn.Module) -> str:
    """A table: name, shape, dtype, device, #params and what each parameter is tied with.

    A shared parameter is listed once, under its first name, and counted once in the totals.
    A lazy layer's parameters that are not materialized yet read ``uninitialized`` and are
    not counted (their size is not known until the first forward).
    """
    ties = tied_names(model)
    rows = [("name", "shape", "dtype", "device", "params", "tied with")]
    total = trainable = lazy = 0
    for name, p in model.named_parameters():
        if is_lazy(p):
            lazy += 1
            shape, count = "uninitialized", "?"
        else:
            n = p.numel()
            total += n
            trainable += n if p.requires_grad else 0
            shape, count = "x".join(map(str, p.shape)) or "scalar", f"{n:,}"
        tied = ", ".join(ties.get(name, [])) or "-"
        rows.append((name, shape, _dtype(p), str(p.device), count, tied))
    buffers = sum(b.numel() for b in model.buffers() if not is_lazy(b))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    aligns = ["<", "<", "<", "<", ">", "<"]
    lines = [
        "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, aligns, widths, strict=True)).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("-" * len(lines[0]))
    lines.append(
        f"total params: {total:,}   trainable: {trainable:,}   buffers: {buffers:,}   "
        f"modules: {sum(1 for _ in model.modules()):,}"
        + (f"   uninitialized (lazy): {lazy:,}" if lazy else "")
    )
    return "\n".join(lines)


def _dtype(p: nn.Parameter) -> str:
    return str(p.dtype).removeprefix("torch.")
