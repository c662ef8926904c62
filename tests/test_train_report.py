"""The sweep report of training runs, on synthetic job results: ranking, the csv's final
loss, and what the picture shows (axes, legend placement, title, coordinate check mode)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg

from modelfactory._app import plot, report

MODULES = ["embed", "blocks.0", "blocks.1", "blocks.2", "head"]


def job(
    num: int,
    overrides: list[str],
    losses: list[float | None] | None,
    diverged: dict[str, Any] | None = None,
    width: float = 1.0,
) -> report.JobResult:
    params = dict(o.split("=", 1) for o in overrides)
    metrics: dict[str, Any] = {
        "checksum": {"sha256": f"{num:064x}", "sum": 1.0},
        "activations": [{"depth": i, "name": m, "std": 1.0 + i} for i, m in enumerate(MODULES)],
        "weights": [
            {"name": f"{m}.weight", "shape": [4, 4], "mean": 0.0, "std": 0.1} for m in MODULES
        ],
    }
    if losses is not None:
        steps = len(losses)
        metrics["train"] = {
            "task": "teacher",
            "optimizer": "adam",
            "lr": 0.001,
            "batch_size": 8,
            "loss": losses,
            "final_loss": losses[-1],
            "diverged": diverged,
            "coord": {
                "steps": list(range(steps)),
                "modules": MODULES,
                "types": dict.fromkeys(MODULES, "Linear"),
                "mean_abs": {
                    m: [width * (1 + i + s) for s in range(steps)] for i, m in enumerate(MODULES)
                },
            },
        }
    return report.JobResult(
        num=num,
        dir=Path(f"/sweep/{num}"),
        overrides=overrides,
        init=params.get("init", "?"),
        metrics=metrics,
        choices={"model": "wide", "train": "teacher"},
    )


def width_sweep() -> list[report.JobResult]:
    return [
        job(i, [f"d_model={w}", f"init={init}", "seed=0"], [1.0, 0.5, 0.1 * (i + 1)], width=w)
        for i, (w, init) in enumerate(
            [(64, "normal"), (64, "xavier"), (128, "normal"), (128, "xavier")]
        )
    ]


def test_jobs_rank_by_final_loss_then_diverged_untrained_failed(tmp_path: Path) -> None:
    jobs = [
        job(0, ["init=a"], [2.0, 1.5]),
        job(1, ["init=b"], [2.0, None], diverged={"step": 1, "loss": "nan"}),
        job(2, ["init=c"], [2.0, 0.5]),
        job(3, ["init=d"], None),
        report.JobResult(num=4, dir=tmp_path, overrides=["init=e"], init="e", error="boom"),
    ]
    assert [j.num for j in report.ranked(jobs)] == [2, 0, 1, 3, 4]
    assert [j.status for j in jobs] == ["ok", "diverged", "ok", "ok", "failed"]
    lines = report.table(jobs).splitlines()
    assert lines[0].split()[:2] == ["rank", "job"] and "final loss" in lines[0]
    assert lines[2].split()[:2] == ["1", "2"] and "0.5" in lines[2]
    assert "diverged" in lines[4] and "nan" in lines[4]
    rows = list(csv.DictReader(report.write_csv(jobs, tmp_path / "s.csv").open()))
    assert [r["final_loss"] for r in rows] == ["1.5", "nan", "0.5", "", ""]
    assert [r["status"] for r in rows] == ["ok", "diverged", "ok", "ok", "failed"]


def test_untrained_sweeps_keep_the_plain_table() -> None:
    text = report.table([job(0, ["init=a"], None)])
    assert "rank" not in text and "final loss" not in text and "act std first" in text


def test_width_key_is_a_numeric_setting_other_than_seed_and_training() -> None:
    jobs = width_sweep()
    _, varying = report.describe_sweep(jobs)
    assert varying == ["d_model", "init"]
    assert plot.width_key(jobs, varying) == "d_model"
    lr = [job(i, [f"train.lr={v}", f"seed={i}"], [1.0]) for i, v in enumerate([0.1, 0.2])]
    assert plot.width_key(lr, report.describe_sweep(lr)[1]) is None


def test_coord_modules_spread_from_first_to_last() -> None:
    assert plot.coord_modules(width_sweep(), 3) == ["embed", "blocks.1", "head"]


def _layout(fig: Any) -> tuple[list[Any], Any]:
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.get_axes() if ax.get_visible()]
    return axes, fig.legends[0].get_window_extent(renderer)


def test_width_sweep_picture_plots_the_coordinate_check_against_the_width() -> None:
    fig = plot.figure(width_sweep())
    axes, legend = _layout(fig)
    titles = [ax.get_title() for ax in axes]
    coord = [ax for ax in axes if ax.get_title().endswith("(Linear)")]
    assert titles[0].startswith("training loss (teacher, adam lr=0.001")
    assert [ax.get_title() for ax in coord] == [
        f"{m} (Linear)" for m in ["embed", "blocks.0", "blocks.2", "head"]
    ]
    assert {ax.get_xscale() for ax in coord} == {"log"}
    assert "d_model (log scale)" in {ax.get_xlabel() for ax in coord}
    assert [t.get_text() for t in coord[-1].get_xticklabels()] == ["64", "128"]  # not 2^6
    # the coordinate check is drawn from the data: at step 2, width 128 is twice width 64
    line = coord[0].get_lines()[0]
    assert list(line.get_xdata()) == [64, 128] and list(line.get_ydata()) == [3 * 64, 3 * 128]
    depth = axes[-1]
    assert [t.get_text() for t in depth.get_xticklabels()] == MODULES  # names, not indices
    assert not any(legend.overlaps(ax.get_window_extent()) for ax in axes)  # legend off the data
    title = fig._suptitle.get_text()
    assert (
        "model=wide train=teacher seed=0" in title and "4 jobs over d_model (2) x init (2)" in title
    )


def test_step_sweep_picture_marks_divergence_and_names_it_in_the_legend() -> None:
    jobs = [
        job(0, ["init=a"], [1.0, 0.5, 0.2]),
        job(1, ["init=b"], [1.0, 1e9, None], diverged={"step": 2, "loss": "inf"}),
    ]
    fig = plot.figure(jobs)
    axes, _ = _layout(fig)
    assert "step" in {ax.get_xlabel() for ax in axes[1:5]}
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["init=a", "init=b  (diverged at step 2)"]
    assert "1 diverged" in fig._suptitle.get_text()
    loss = axes[0]
    assert math.isnan(loss.get_lines()[1].get_ydata()[-1])  # the NaN step is a gap, not a point


def test_failed_jobs_are_named_in_the_title(tmp_path: Path) -> None:
    jobs = [
        job(0, ["seed=0"], [1.0, 0.5]),
        report.JobResult(num=1, dir=tmp_path, overrides=["seed=x"], init="?", error="bad"),
    ]
    path = plot.draw(jobs, tmp_path / "s.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert "1 failed (jobs 1)" in plot.figure(jobs)._suptitle.get_text()


def _drawn(fig: Any) -> Any:
    FigureCanvasAgg(fig).draw()  # tick labels exist once drawn
    return fig


def test_every_axis_is_labelled_and_every_y_tick_has_its_number() -> None:
    for jobs in (width_sweep(), [job(i, [f"seed={i}"], None) for i in range(2)]):
        fig = _drawn(plot.figure(jobs))
        for ax in (a for a in fig.get_axes() if a.get_visible()):
            shared = ax.get_shared_x_axes().get_siblings(ax)  # a column says it once
            assert any(a.get_xlabel() for a in shared), ax.get_title()
            if ax.get_yscale() == "log":
                lo, hi = ax.get_ylim()
                for tick in [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]:
                    if lo <= tick.get_loc() <= hi and tick.tick1line.get_visible():
                        assert tick.label1.get_text(), (ax.get_title(), tick.get_loc())
        depth = [a for a in fig.get_axes() if a.get_title().startswith("activation std")]
        assert depth[0].get_xlabel() == "module output, by depth (input first)"


def test_the_legend_names_the_colour_only_when_init_varies() -> None:
    varied = plot.figure(width_sweep()).legends[0].get_title().get_text()
    same = plot.figure([job(i, [f"seed={i}"], [1.0, 0.5]) for i in range(2)])
    assert varied == "job (colour = init)"
    assert same.legends[0].get_title().get_text() == "job"
