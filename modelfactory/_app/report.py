"""The sweep report: gather every job of a multirun and write ``sweep.csv``, ``sweep.png``
and a short text table. Reads only the files the jobs wrote, so it works with every
launcher (the jobs may have run in other processes or on other machines)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .job import ERROR_FILE, METRICS_FILE

__all__ = ["JobResult", "collect", "table", "write_csv", "write_png"]


@dataclass
class JobResult:
    """What one job of a sweep left in its directory."""

    num: int
    dir: Path
    overrides: list[str]
    init: str
    metrics: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.metrics is not None and self.error is None

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or "(no overrides)"

    @property
    def act_std(self) -> list[float]:
        return [a["std"] for a in (self.metrics or {}).get("activations", [])]


def _read_job(hydra_dir: Path) -> JobResult:
    from omegaconf import OmegaConf

    job_dir = hydra_dir.parent
    overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    hydra_cfg = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices)
    num = hydra_cfg.job.get("num")
    result = JobResult(
        num=int(num) if isinstance(num, int) else -1,
        dir=job_dir,
        overrides=overrides,
        init=str((choices or {}).get("init", "?")),
    )
    if (job_dir / ERROR_FILE).is_file():
        result.error = json.loads((job_dir / ERROR_FILE).read_text()).get("error", "failed")
    elif (job_dir / METRICS_FILE).is_file():
        result.metrics = json.loads((job_dir / METRICS_FILE).read_text())
    else:
        result.error = "no result written (the job crashed or is still running; see its log)"
    return result


def collect(sweep_dir: Path) -> list[JobResult]:
    """Every job directory under ``sweep_dir`` (one with ``.hydra/overrides.yaml``), by job
    number."""
    jobs = [_read_job(p.parent) for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda j: (j.num, str(j.dir)))


def _columns(jobs: list[JobResult]) -> tuple[list[str], list[str]]:
    acts: dict[str, None] = {}
    weights: dict[str, None] = {}
    for j in jobs:
        for a in (j.metrics or {}).get("activations", []):
            acts[f"act_std[{a['depth']}:{a['name']}]"] = None
        for w in (j.metrics or {}).get("weights", []):
            weights[f"weight_std[{w['name']}]"] = None
            weights[f"weight_mean[{w['name']}]"] = None
    return list(acts), list(weights)


def write_csv(jobs: list[JobResult], path: Path) -> Path:
    """One row per job: number, overrides, status, checksum, then per-layer statistics
    (activation std by depth, weight std and mean by parameter)."""
    act_cols, weight_cols = _columns(jobs)
    head = ["job", "overrides", "init", "status", "checksum_sha256", "output_sum", "error"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=head + act_cols + weight_cols)
        w.writeheader()
        for j in jobs:
            c = (j.metrics or {}).get("checksum") or {}
            row: dict[str, Any] = {
                "job": j.num,
                "overrides": j.label,
                "init": j.init,
                "status": "ok" if j.ok else "failed",
                "checksum_sha256": c.get("sha256", ""),
                "output_sum": c.get("sum", ""),
                "error": (j.error or "").replace("\n", " | "),
            }
            for a in (j.metrics or {}).get("activations", []):
                row[f"act_std[{a['depth']}:{a['name']}]"] = a["std"]
            for p in (j.metrics or {}).get("weights", []):
                row[f"weight_std[{p['name']}]"] = p["std"]
                row[f"weight_mean[{p['name']}]"] = p["mean"]
            w.writerow(row)
    return path


_STYLES = ["-", "--", ":", "-."]


def write_png(jobs: list[JobResult], path: Path, title: str = "") -> Path:
    """Activation std through depth (left) and weight std per parameter (right), one line
    per job, coloured by init, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ok = [j for j in jobs if j.ok]
    common = set.intersection(*(set(j.overrides) for j in ok)) if ok else set()
    inits = sorted({j.init for j in ok})
    floor = min((s for j in ok for s in j.act_std if s > 0), default=1.0) / 10
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(inits)}
    seen: dict[str, int] = {}
    fig, (ax_a, ax_w) = plt.subplots(1, 2, figsize=(13, 5.2), width_ratios=[3, 2])
    for j in ok:
        k = seen[j.init] = seen.get(j.init, -1) + 1
        style = {"color": colours[j.init], "ls": _STYLES[k % 4], "lw": 1.6, "alpha": 0.9}
        ys = [max(s, floor) for s in j.act_std]
        label = " ".join(o for o in j.overrides if o not in common) or j.label
        ax_a.plot(range(len(ys)), ys, marker=".", label=label, **style)
        wstd = [w["std"] for w in j.metrics.get("weights", []) if len(w["shape"]) > 1]
        ax_w.plot(range(len(wstd)), [max(s, 1e-12) for s in wstd], marker="o", ms=3, **style)
    ax_a.set(
        xlabel="depth (leaf module, in forward order)",
        ylabel="activation std (log; 0 is drawn at the bottom)",
    )
    ax_a.set_title("activation std through depth, sample input")
    ax_w.set(xlabel="weight matrix / kernel index (forward order)", ylabel="weight std (log)")
    ax_w.set_title("weight std per layer")
    for ax in (ax_a, ax_w):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    if ok:
        ax_a.legend(title="job (colour = init)", fontsize=7, title_fontsize=8, loc="best")
    failed = [j for j in jobs if not j.ok]
    note = (
        f"   ({len(failed)} failed: jobs {', '.join(str(j.num) for j in failed)})" if failed else ""
    )
    head = " ".join(dict.fromkeys(x for x in (title, *sorted(common)) if x))
    fig.suptitle(f"{head}   {len(ok)} jobs{note}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def table(jobs: list[JobResult]) -> str:
    """A short text table: job, overrides, status, activation std at the first and last
    layer, and the checksum prefix."""
    rows = [("job", "overrides", "status", "act std first", "act std last", "checksum")]
    for j in jobs:
        a = j.act_std
        c = (j.metrics or {}).get("checksum") or {}
        rows.append(
            (
                str(j.num),
                j.label,
                "ok" if j.ok else "FAILED",
                _fmt(a[0] if a else None),
                _fmt(a[-1] if a else None),
                c.get("sha256", "")[:12] or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
