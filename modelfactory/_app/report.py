"""The sweep report: gather every job of a multirun and write ``sweep.csv`` and a short text
table (``plot`` draws ``sweep.png`` from the same jobs). Reads only the files the jobs
wrote, so it works with every launcher (the jobs may have run in other processes or on
other machines)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .job import ERROR_FILE, METRICS_FILE

__all__ = ["JobResult", "collect", "describe_sweep", "ranked", "table", "write_csv"]


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
    choices: dict[str, Any] = field(default_factory=dict)  # Hydra's group choices

    @property
    def ok(self) -> bool:
        """The job ran to the end (a diverged training run is still a job that ran)."""
        return self.metrics is not None and self.error is None

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or "(no overrides)"

    @property
    def act_std(self) -> list[float]:
        return [a["std"] for a in (self.metrics or {}).get("activations", [])]

    @property
    def train(self) -> dict[str, Any] | None:
        """The ``train`` record of metrics.json (``None`` without training)."""
        return (self.metrics or {}).get("train")

    @property
    def diverged(self) -> bool:
        return bool(self.train and self.train.get("diverged"))

    @property
    def status(self) -> str:
        """``ok``, ``diverged`` (training reached a loss that is not finite) or ``failed``."""
        if not self.ok:
            return "failed"
        return "diverged" if self.diverged else "ok"

    @property
    def final_loss(self) -> float | None:
        """The loss after the last step; NaN or infinity for a diverged run."""
        if self.train is None:
            return None
        if self.diverged:
            return float(self.train["diverged"]["loss"])
        return self.train.get("final_loss")

    @property
    def params(self) -> dict[str, str]:
        """The overrides as ``{key: value}`` (``+``/``~`` prefixes dropped)."""
        return dict(_split(o) for o in self.overrides)


HEAD = [
    "job",
    "overrides",
    "init",
    "status",
    "final_loss",
    "checksum_sha256",
    "output_sum",
    "error",
]


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _read_job(hydra_dir: Path) -> JobResult:
    from omegaconf import OmegaConf

    job_dir = hydra_dir.parent
    overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    hydra_cfg = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices) or {}
    num = hydra_cfg.job.get("num")
    result = JobResult(
        num=int(num) if isinstance(num, int) else -1,
        dir=job_dir,
        overrides=overrides,
        init=str(choices.get("init", "?")),
        choices={k: v for k, v in choices.items() if not str(k).startswith("hydra")},
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


def describe_sweep(jobs: list[JobResult]) -> tuple[str, list[str]]:
    """What every job shares (``model=gpt_small train=lm``) and the keys that vary.

    Group choices that no override names (the default ``model=mlp``) count as shared
    settings when all jobs agree on them.
    """
    keys = list(dict.fromkeys(k for j in jobs for k in j.params))
    varying = [k for k in keys if len({j.params.get(k) for j in jobs}) > 1]
    shared = [f"{k}={jobs[0].params[k]}" for k in keys if k not in varying and jobs]
    groups = []
    for group in ("model", "train"):
        values = {str(j.choices.get(group)) for j in jobs}
        if jobs and group not in keys and len(values) == 1 and values - {"None", "none"}:
            groups.append(f"{group}={values.pop()}")
    return " ".join(groups + shared), varying


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
    """One row per job: number, overrides, status (``ok``, ``diverged``, ``failed``), final
    loss (empty without training; ``nan``/``inf`` when diverged), checksum, then per-layer
    statistics (activation std by depth, weight std and mean by parameter)."""
    act_cols, weight_cols = _columns(jobs)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEAD + act_cols + weight_cols)
        w.writeheader()
        for j in jobs:
            c = (j.metrics or {}).get("checksum") or {}
            loss = j.final_loss
            row: dict[str, Any] = {
                "job": j.num,
                "overrides": j.label,
                "init": j.init,
                "status": j.status,
                "final_loss": "" if loss is None else repr(loss),
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


def ranked(jobs: list[JobResult]) -> list[JobResult]:
    """Jobs by final loss (lowest first); then diverged runs, untrained jobs, failures."""

    def key(j: JobResult) -> tuple[int, float, int]:
        loss = j.final_loss
        if not j.ok:
            return (3, 0.0, j.num)
        if loss is None:
            return (2, 0.0, j.num)
        return (1, 0.0, j.num) if not math.isfinite(loss) else (0, loss, j.num)

    return sorted(jobs, key=key)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return str(x) if not math.isfinite(x) else f"{x:.4g}"


def table(jobs: list[JobResult]) -> str:
    """A short text table, ranked by final loss when the jobs trained: rank, job, overrides,
    status, loss at step 0 and at the end, activation std at the first and last layer, and
    the checksum prefix."""
    trained = any(j.train for j in jobs)
    head = ("job", "overrides", "status", "act std first", "act std last", "checksum")
    rows = [("rank", *head[:3], "loss start", "final loss", *head[3:]) if trained else head]
    for rank, j in enumerate(ranked(jobs) if trained else jobs, 1):
        a = j.act_std
        c = (j.metrics or {}).get("checksum") or {}
        losses = (j.train or {}).get("loss") or [None]
        cells = [str(j.num), j.label, j.status.upper() if j.status == "failed" else j.status]
        if trained:
            cells = [str(rank) if j.final_loss is not None else "-", *cells]
            cells += [_fmt(losses[0]), _fmt(j.final_loss)]
        cells += [_fmt(a[0] if a else None), _fmt(a[-1] if a else None)]
        rows.append((*cells, c.get("sha256", "")[:12] or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
