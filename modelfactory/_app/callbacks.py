"""The Hydra ``Callback`` that writes the sweep report when a multirun ends.

Configured in ``conf/app.yaml`` under ``hydra.callbacks``; it runs in the parent
process with every launcher, and reads only what the jobs wrote in the sweep dir.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from .progress import SweepProgress

__all__ = ["SweepReport", "count_jobs"]

log = logging.getLogger("modelfactory.sweep")


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper makes of the overrides (``None`` if unknown)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        params = OmegaConf.select(config, "hydra.sweeper.params") or {}
        args = [f"{k}={v}" for k, v in params.items()]
        args += list(OmegaConf.select(config, "hydra.overrides.task") or [])
        sizes: dict[str, int] = {}
        for ov in OverridesParser.create().parse_overrides(args):
            n = len(list(ov.sweep_string_iterator())) if ov.is_discrete_sweep() else 1
            sizes[ov.get_key_element()] = n
        return math.prod(sizes.values())
    except Exception:  # an unusual sweeper syntax: progress just shows no total
        return None


class SweepReport(Callback):
    """Writes ``sweep.csv``, ``sweep.png`` and logs a short table in the sweep directory.

    A sweep whose jobs partly failed still gets a report for the jobs that succeeded; the
    failures are named, and the command then exits with status 1.

    Args:
        csv: file name of the table, in the sweep directory.
        png: file name of the plot, in the sweep directory.
        progress: show ``jobs done/total`` on a terminal while the sweep runs.
    """

    def __init__(
        self, csv: str = "sweep.csv", png: str = "sweep.png", progress: bool = True
    ) -> None:
        self.csv, self.png, self.progress = csv, png, progress
        self._progress: SweepProgress | None = None
        self._total: int | None = None
        self._t0 = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Launchers serialize the callbacks to their workers; the display stays in the parent.
        return {**self.__dict__, "_progress": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Count the jobs and start the progress display (and the collector, when the command
        paused it while starting: ``startup``)."""
        # Imported here, not at the top: Hydra instantiates this callback in every plain run
        # too, where the display (tqdm) is never used.
        from .job import ERROR_FILE, METRICS_FILE
        from .progress import SweepProgress
        from .startup import COLLECTOR

        COLLECTOR.started()  # the jobs may run in a launcher's processes: collect here again

        self._t0 = time.perf_counter()
        self._total = count_jobs(config)
        if self.progress:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            self._progress = SweepProgress(sweep_dir, self._total, (METRICS_FILE, ERROR_FILE))
            self._progress.start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Gather the jobs, write the report, name the failures."""
        from hydra.core.utils import configure_log

        from . import plot, report

        if self._progress is not None:
            self._progress.stop()
        jobs_seconds = time.perf_counter() - self._t0
        t0 = time.perf_counter()
        # The basic launcher leaves the last job's logging in place; report as the sweep.
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = report.collect(sweep_dir)
        csv_path = report.write_csv(jobs, sweep_dir / self.csv)
        png_path = plot.draw(jobs, sweep_dir / self.png)  # matplotlib only now
        log.info("sweep report (%d jobs):\n%s", len(jobs), report.table(jobs))
        log.info(
            "wrote %s and %s (jobs %.2f s, report %.2f s)",
            csv_path,
            png_path,
            jobs_seconds,
            time.perf_counter() - t0,
        )
        for j in jobs:
            if j.diverged:
                d = j.train["diverged"]
                log.warning(
                    "job %d (%s) diverged: loss %s at step %d", j.num, j.label, d["loss"], d["step"]
                )
        failed = [j for j in jobs if not j.ok]
        missing = (self._total or 0) - len(jobs)
        for j in failed:
            why = " ".join(ln.strip() for ln in (j.error or "failed").splitlines())
            log.error("job %d (%s) failed: %s  [%s]", j.num, j.label, why[:300], j.dir)
        if missing > 0:
            log.error("%d of %d jobs left no directory (never started)", missing, self._total)
        if failed or missing > 0:
            log.error(
                "%d of %d jobs failed; the report covers the %d that succeeded",
                len(failed) + max(missing, 0),
                len(jobs) + max(missing, 0),
                len(jobs) - len(failed),
            )
            raise SystemExit(1)
