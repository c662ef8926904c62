"""Overhead of the sweep report over the jobs themselves, for a 12-job sweep with training.

Runs the real console script once, in a fresh temporary directory:

    modelfactory -m model=rgnet init=normal,xavier,kaiming seed=0,1,2,3 train=teacher

The sweep's own log line gives, for that one run, the wall time of the jobs (from the
start of the multirun to its end) and of the report (collect + csv + png + table). Then
the report's parts are timed again in this process over the same sweep directory (each
once, matplotlib imported first), to show where the report's time goes.

A measurement, not a test: run ``python benchmarks/bench_report.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = ["model=rgnet", "init=normal,xavier,kaiming", "seed=0,1,2,3", "train=teacher"]
TIMES = re.compile(r"\(jobs ([\d.]+) s, report ([\d.]+) s\)")


def _cmd() -> list[str]:
    script = shutil.which("modelfactory", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "modelfactory.cli"]


def _sweep(cwd: Path, steps: int) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = ["-m", *SWEEP, f"train.steps={steps}", "hydra.sweep.dir=outputs/sweep"]
    r = subprocess.run([*_cmd(), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{r.stdout}\n{r.stderr}")
    found = TIMES.search(r.stdout + r.stderr)
    if found is None:
        raise SystemExit("the sweep's log has no '(jobs ... s, report ... s)' line")
    return float(found[1]), float(found[2])


def _parts(sweep_dir: Path) -> dict[str, float]:
    import matplotlib.figure  # noqa: F401  (imported once, as in the sweep's process)

    from modelfactory._app import plot, report

    times = {}
    t0 = time.perf_counter()
    jobs = report.collect(sweep_dir)
    times["collect"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report.write_csv(jobs, sweep_dir / "again.csv")
    times["csv"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plot.draw(jobs, sweep_dir / "again.png")
    times["png"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report.table(jobs)
    times["table"] = time.perf_counter() - t0
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per job")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        jobs_s, report_s = _sweep(Path(d), args.steps)
        parts = _parts(Path(d) / "outputs/sweep")
    print(f"12 jobs ({' '.join(SWEEP)} train.steps={args.steps}), {os.cpu_count()} cores")
    print(f"jobs    {jobs_s:7.2f} s   ({jobs_s / 12:.2f} s/job)")
    print(f"report  {report_s:7.2f} s   = {report_s / jobs_s:.1%} of the jobs' time")
    print(
        "report parts, again in this process: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items())
    )


if __name__ == "__main__":
    main()
