"""``sweep.png``: the picture of a sweep, one line per job, coloured by init.

With training (``train=...``), side by side: the loss per step, the coordinate check
(mean |activation| of a few modules, spread over depth, per step, or per value of a width
when the sweep varies a numeric setting such as ``d_model``) and the activation std at
init through depth. Without training: activation std through depth and weight std per
layer. The legend sits below the panels, the axes name modules, and the title says what
the jobs share and what the sweep varies.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .report import JobResult, describe_sweep

__all__ = ["coord_modules", "draw", "figure", "width_key"]

_STYLES = ["-", "--", ":", "-."]
_MAX_COORD = 4  # modules in the coordinate check
_MAX_TICKS = 40  # module names on the depth axis


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def width_key(jobs: list[JobResult], varying: list[str]) -> str | None:
    """The first varying override with numeric values in every job (not ``seed`` and not a
    ``train.*`` setting): the x axis of the coordinate check, as a width is in muP's."""
    for key in varying:
        if key == "seed" or key.startswith(("train.", "hydra.")):
            continue
        values = [_number(j.params.get(key)) for j in jobs]
        if all(v is not None for v in values) and len(set(values)) > 1:
            return key
    return None


def coord_modules(jobs: list[JobResult], n: int = _MAX_COORD) -> list[str]:
    """Up to ``n`` modules every trained job recorded, spread evenly from first to last."""
    lists = [(j.train or {}).get("coord", {}).get("modules", []) for j in jobs]
    common = [m for m in lists[0] if all(m in other for other in lists[1:])] if lists else []
    if len(common) <= n:
        return common
    return [common[round(i * (len(common) - 1) / (n - 1))] for i in range(n)]


def _styles(
    jobs: list[JobResult], varying: list[str], key: str | None
) -> dict[int, dict[str, Any]]:
    """Colour = init; shade = the width (light = narrow) when the sweep varies one; line
    style = the other settings that vary (seed 0 solid, seed 1 dashed, ...)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    inits = sorted({j.init for j in jobs})
    colours = {name: to_rgb(colormaps["tab10"](i % 10)) for i, name in enumerate(inits)}
    widths = sorted({_number(j.params.get(key)) for j in jobs}) if key else []
    others = [k for k in varying if k not in ("init", key)]
    combos = list(dict.fromkeys(tuple(j.params.get(k) for k in others) for j in jobs))
    styles = {}
    for j in jobs:
        colour = colours[j.init]
        if key:
            shade = 0.3 + 0.7 * widths.index(_number(j.params.get(key))) / max(1, len(widths) - 1)
            colour = tuple(1 - shade * (1 - c) for c in colour)
        ls = _STYLES[combos.index(tuple(j.params.get(k) for k in others)) % len(_STYLES)]
        styles[j.num] = {"color": colour, "ls": ls, "lw": 1.6, "alpha": 0.9}
    return styles


def _log_y(ax: Any) -> None:
    """Log scale with plain numbers (0.8, not 8 x 10^-1), and labelled minor ticks where a
    range of one or two decades would otherwise show a single number; a range narrower than
    half a decade stays linear."""
    from matplotlib.ticker import FuncFormatter, LogLocator, ScalarFormatter

    lo, hi = ax.dataLim.intervaly
    decades = math.log10(hi / lo) if 0 < lo <= hi < math.inf else 0.0
    if decades < 0.5:  # a narrow range reads better on a linear axis (and 0 has no log)
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        return
    ax.set_yscale("log")
    subs = range(1, 10) if decades < 1.2 else (1, 2, 5) if decades < 3 else (1,)

    def label(v: float, _pos: int) -> str:
        mantissa = round(v / 10 ** math.floor(math.log10(v) + 1e-9), 6) if v > 0 else 0
        return f"{v:.3g}" if any(math.isclose(mantissa, s) for s in subs) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))
    # minor ticks only where they are labelled: no tick without a number
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=[s for s in subs if s != 1] or [1.0]))


def _label(j: JobResult, varying: list[str]) -> str:
    text = " ".join(f"{k}={j.params[k]}" for k in varying if k in j.params) or j.label
    if j.diverged:
        text += f"  (diverged at step {j.train['diverged']['step']})"
    return text


def _loss_panel(ax: Any, jobs: list[JobResult], styles: dict[int, dict[str, Any]]) -> None:
    for j in jobs:
        ys = [math.nan if v is None else v for v in j.train["loss"]]
        ax.plot(range(len(ys)), ys, **styles[j.num])
        if j.diverged and len(ys) > 1:  # the last finite loss, marked: the next was NaN/inf
            ax.plot(len(ys) - 2, ys[-2], "X", ms=9, color=styles[j.num]["color"])
    _log_y(ax)
    t = jobs[0].train
    same = all(
        {k: j.train.get(k) for k in ("task", "optimizer", "lr", "batch_size")}
        == {k: t.get(k) for k in ("task", "optimizer", "lr", "batch_size")}
        for j in jobs
    )
    how = f"{t['task']}, {t['optimizer']} lr={t['lr']:g}, batch {t['batch_size']}" if same else ""
    ax.set_title(f"training loss ({how})" if how else "training loss", fontsize=10)
    ax.set(xlabel="step (updates done)", ylabel="loss")
    _integer_x(ax)
    ax.grid(True, which="both", alpha=0.3)


def _coord_panel(
    fig: Any, jobs: list[JobResult], styles: dict[int, dict[str, Any]], varying: list[str]
) -> None:
    modules = coord_modules(jobs)
    key = width_key(jobs, varying)
    cols = 2 if len(modules) > 1 else 1
    rows = max(1, math.ceil(len(modules) / cols))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True).ravel()
    last = min(len(j.train["coord"]["steps"]) for j in jobs) - 1
    for ax, module in zip(axes, modules, strict=False):
        if key is None:
            for j in jobs:
                c = j.train["coord"]
                ys = [math.nan if v is None else v for v in c["mean_abs"][module]]
                ax.plot(c["steps"], ys, **styles[j.num])
            _integer_x(ax)
        else:
            _by_width(ax, jobs, styles, module, key, last)
        kind = jobs[0].train["coord"].get("types", {}).get(module)
        ax.set_title(f"{module} ({kind})" if kind else module, fontsize=8)
        _log_y(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[len(modules) :]:
        ax.set_visible(False)
    for ax in axes[max(0, len(modules) - cols) : len(modules)]:  # lowest drawn, per column
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("step" if key is None else f"{key} (log scale)", fontsize=8)
    what = "per step" if key is None else f"vs {key}: solid after step {last}, dashed at step 0"
    fig.suptitle(f"coordinate check: mean |activation| {what}", fontsize=10)
    fig.supylabel("mean |output| of the module", fontsize=8)


def _by_width(
    ax: Any,
    jobs: list[JobResult],
    styles: dict[int, dict[str, Any]],
    module: str,
    key: str,
    last: int,
) -> None:
    """One line per group of jobs that differ only in ``key`` (seeds averaged)."""
    from matplotlib.ticker import NullLocator

    groups: dict[tuple[str, ...], list[JobResult]] = {}
    for j in jobs:
        rest = tuple(
            o for o in j.overrides if o.partition("=")[0].lstrip("+~") not in (key, "seed")
        )
        groups.setdefault(rest, []).append(j)
    for members in groups.values():
        widths = sorted({_number(j.params[key]) for j in members})
        style = styles[max(members, key=lambda j: _number(j.params[key])).num]  # full colour
        for step, extra in ((last, {}), (0, {"ls": "--", "lw": 1.0, "alpha": 0.5})):
            ys = []
            for w in widths:
                vals = [
                    j.train["coord"]["mean_abs"][module][step]
                    for j in members
                    if _number(j.params[key]) == w
                ]
                vals = [v for v in vals if v is not None]
                ys.append(sum(vals) / len(vals) if vals else math.nan)
            ax.plot(widths, ys, marker="o", ms=3, **{**style, **extra})
    ax.set_xscale("log", base=2)
    all_widths = sorted({_number(j.params[key]) for j in jobs})
    ax.set_xticks(all_widths, [f"{w:g}" for w in all_widths], minor=False)  # not 2^k
    ax.xaxis.set_minor_locator(NullLocator())


def _integer_x(ax: Any) -> None:
    """Steps are whole numbers: no ticks at 2.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _depth_panel(ax: Any, jobs: list[JobResult], styles: dict[int, dict[str, Any]]) -> None:
    floor = min((s for j in jobs for s in j.act_std if s > 0), default=1.0) / 10
    for j in jobs:
        ax.plot(
            range(len(j.act_std)), [max(s, floor) for s in j.act_std], marker=".", **styles[j.num]
        )
    longest = max(jobs, key=lambda j: len(j.act_std))
    names = [a["name"] for a in longest.metrics.get("activations", [])]
    same = all(
        [a["name"] for a in j.metrics.get("activations", [])] == names[: len(j.act_std)]
        for j in jobs
    )
    _name_ticks(ax, names)
    ax.set_title("activation std at init, by depth (sample input)", fontsize=10)
    ax.set_ylabel("activation std (0 is drawn at the bottom)")
    depth = "module output, by depth (input first)"
    ax.set_xlabel(depth if same else f"{depth}: names of job {longest.num}, architectures differ")
    _log_y(ax)
    ax.grid(True, which="both", alpha=0.3)


def _weight_panel(ax: Any, jobs: list[JobResult], styles: dict[int, dict[str, Any]]) -> None:
    names: list[str] = []
    for j in jobs:
        mats = [w for w in j.metrics.get("weights", []) if len(w["shape"]) > 1]
        ax.plot(
            range(len(mats)),
            [max(w["std"], 1e-12) for w in mats],
            marker="o",
            ms=3,
            **styles[j.num],
        )
        names = max(names, [w["name"] for w in mats], key=len)
    _name_ticks(ax, names)
    ax.set_title("weight std per layer (matrices and kernels)", fontsize=10)
    ax.set_xlabel("parameter, by depth")
    ax.set_ylabel("weight std")
    _log_y(ax)
    ax.grid(True, which="both", alpha=0.3)


def _name_ticks(ax: Any, names: list[str]) -> None:
    every = max(1, math.ceil(len(names) / _MAX_TICKS))
    ticks = list(range(0, len(names), every))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=7)


def _title(jobs: list[JobResult], title: str) -> str:
    shared, varying = describe_sweep(jobs)
    counts = [f"{k} ({len({j.params.get(k) for j in jobs})})" for k in varying]
    over = f" over {' x '.join(counts)}" if counts else ""
    failed = [j.num for j in jobs if not j.ok]
    diverged = [j.num for j in jobs if j.diverged]
    notes = [f"{len(diverged)} diverged"] if diverged else []
    notes += [f"{len(failed)} failed (jobs {', '.join(map(str, failed))})"] if failed else []
    head = " ".join(dict.fromkeys(x for x in (title, shared) if x))
    tail = f"   [{'; '.join(notes)}]" if notes else ""
    return f"{head}   {len(jobs)} jobs{over}{tail}".strip()


def figure(jobs: list[JobResult], title: str = "") -> Any:
    """The sweep's picture as a matplotlib ``Figure`` (see the module docstring).

    A ``Figure`` made directly, not through ``pyplot``: no global figure state, no display.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ran = [j for j in jobs if j.ok]
    _, varying = describe_sweep(jobs)
    trained = [j for j in ran if j.train]
    styles = _styles(ran, varying, width_key(trained, varying) if trained else None)
    fig = Figure(figsize=(19, 7.5) if trained else (14, 6.5), layout="constrained")
    if trained:
        left, mid, right = fig.subfigures(1, 3, width_ratios=[1, 1.2, 1.2])
        _loss_panel(left.subplots(), trained, styles)
        _coord_panel(mid, trained, styles, varying)
        _depth_panel(right.subplots(), ran, styles)
    else:
        ax_a, ax_w = fig.subplots(1, 2, width_ratios=[3, 2])
        if ran:
            _depth_panel(ax_a, ran, styles)
            _weight_panel(ax_w, ran, styles)
    if ran:
        handles = [Line2D([], [], **styles[j.num], label=_label(j, varying)) for j in ran]
        by_init = len({j.init for j in ran}) > 1  # one colour says nothing otherwise
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(4, len(handles)),
            fontsize=8,
            title="job (colour = init)" if by_init else "job",
            title_fontsize=8,
            frameon=False,
        )
    fig.suptitle(_title(jobs, title), fontsize=12)
    return fig


def draw(jobs: list[JobResult], path: Path, title: str = "") -> Path:
    """``sweep.png``: write the sweep's picture (:func:`figure`) to ``path`` as a PNG."""
    figure(jobs, title).savefig(path, dpi=90)
    return path
