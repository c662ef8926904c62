"""``summary``: a table of every parameter of a model."""

from __future__ import annotations

from torch import nn

from .tie import tied_names

__all__ = ["summary"]


def summary(model: nn.Module) -> str:
    """A table: name, shape, dtype, device, #params and what each parameter is tied with.

    A shared parameter is listed once, under its first name, and counted once in the totals.
    """
    ties = tied_names(model)
    rows = [("name", "shape", "dtype", "device", "params", "tied with")]
    total = trainable = 0
    for name, p in model.named_parameters():
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        rows.append(
            (
                name,
                "x".join(map(str, p.shape)) or "scalar",
                str(p.dtype).removeprefix("torch."),
                str(p.device),
                f"{n:,}",
                ", ".join(ties.get(name, [])) or "-",
            )
        )
    buffers = sum(b.numel() for b in model.buffers())
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
    )
    return "\n".join(lines)
