"""Per-job overhead of a sweep of 8 tiny models: basic launcher vs joblib vs 8 processes.

Each variant runs the real console script in a fresh temporary directory:

- basic:    ``modelfactory -m model=rgnet seed=0..7``          (one process, jobs in turn)
- joblib:   the same with ``hydra/launcher=joblib hydra.launcher.n_jobs=2``
- separate: 8 ``modelfactory model=rgnet seed=i`` launches, one after another

It reports wall time per job (min of ``--repeats`` runs) and the ratios. A measurement,
not a test: run ``python benchmarks/bench_sweep.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = 8


def _cmd() -> list[str]:
    script = shutil.which("modelfactory", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "modelfactory.cli"]


def _run(args: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    subprocess.run([*_cmd(), *args], cwd=cwd, env=env, check=True, capture_output=True)


def _time(variant: str) -> float:
    seeds = ",".join(str(i) for i in range(N))
    with tempfile.TemporaryDirectory() as d:
        cwd = Path(d)
        t0 = time.perf_counter()
        if variant == "basic":
            _run(["-m", "model=rgnet", f"seed={seeds}"], cwd)
        elif variant == "joblib":
            _run(
                [
                    "-m",
                    "model=rgnet",
                    f"seed={seeds}",
                    "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2",
                ],
                cwd,
            )
        else:
            for i in range(N):
                _run(["model=rgnet", f"seed={i}", f"hydra.run.dir=outputs/{i}"], cwd)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for variant in ("basic", "joblib", "separate"):
        results[variant] = min(_time(variant) for _ in range(args.repeats)) / N
    base = results["basic"]
    print(f"{N} tiny jobs (model=rgnet), min of {args.repeats}, {os.cpu_count()} cores")
    print(f"{'variant':<10} {'s/job':>8} {'vs basic':>9}")
    for variant, per_job in results.items():
        print(f"{variant:<10} {per_job:8.3f} {per_job / base:8.2f}x")


if __name__ == "__main__":
    main()
