"""How the console script runs Python's cyclic garbage collector in its own process.

Starting, the command imports Hydra, OmegaConf and torch: hundreds of thousands of long-lived
objects and almost no garbage. Each full collection during those imports walks everything
imported so far (about 0.2 s in all, on torch's import alone: ``benchmarks/bench_cold.py``,
``torch`` against ``torch-gc``), so the collector is off until the first job starts (torch is
in then) or a sweep starts (its jobs may run in a launcher's processes: the sweep report's
callback says so); then what is alive is frozen (:func:`gc.freeze`) and the collector back
on. Later collections skip the frozen objects, and so does the one the interpreter makes as
it exits (about 0.3 s otherwise). Only the console script, the process itself, does this:
frozen garbage is never freed, so ``modelfactory.cli.main`` called in a process of the
caller's leaves the collector alone. Nothing of Hydra's is replaced for it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["COLLECTOR", "StartupCollector"]


class StartupCollector:
    """The collector paused while the command starts; :meth:`started` ends the pause."""

    def __init__(self) -> None:
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The collector off inside the block (when it was on), frozen and on again after."""
        self._paused = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            self.started()
            gc.freeze()  # the process ends now: spare its last collection the walk

    def started(self) -> None:
        """The imports are done: freeze what they made and collect again (once; nothing
        when the collector was not paused here)."""
        if self._paused:
            gc.freeze()
            gc.enable()
            self._paused = False


COLLECTOR = StartupCollector()
