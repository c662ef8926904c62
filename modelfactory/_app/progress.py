"""Terminal progress: a spinner for long loads/saves, a jobs-done counter for sweeps.

Both draw on stderr only when it is a terminal, and draw nothing at all otherwise
(logs, CI, pipes, tests stay clean). They run in a daemon thread and redraw one line
in place (``\\r``), so they never add lines to the output.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TextIO

__all__ = ["Spinner", "SweepProgress", "is_tty"]

_FRAMES = "|/-\\"


def is_tty(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Ticker:
    """Redraw ``render()`` every ``interval`` seconds after ``delay``, in a daemon thread."""

    def __init__(
        self, render: Callable[[], str], delay: float, interval: float, stream: TextIO | None
    ) -> None:
        self._render, self._delay, self._interval = render, delay, interval
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    def start(self) -> None:
        if is_tty(self._stream):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        if self._stop.wait(self._delay):
            return
        while not self._stop.is_set():
            self._draw(self._render())
            self._stop.wait(self._interval)

    def _draw(self, text: str) -> None:
        # \r first so a log line printed meanwhile is not glued to the counter;
        # \r last so the next log line overwrites the counter instead of following it.
        self._stream.write(f"\r\x1b[K{text}\r")
        self._stream.flush()
        self._drawn = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self._drawn:
                self._stream.write("\r\x1b[K")
                self._stream.flush()


class Spinner:
    """``with Spinner("saving ckpt/"):`` shows ``saving ckpt/ | 1.3s`` if it takes > ``delay``."""

    def __init__(self, label: str, delay: float = 0.5, stream: TextIO | None = None) -> None:
        self.label = label
        self._t0 = 0.0
        self._n = 0
        self._ticker = _Ticker(self._render, delay, 0.1, stream)

    def _render(self) -> str:
        self._n += 1
        return f"{self.label} {_FRAMES[self._n % 4]} {time.perf_counter() - self._t0:.1f}s"

    def __enter__(self) -> Spinner:
        self._t0 = time.perf_counter()
        self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ticker.stop()


def count_done(sweep_dir: Path, markers: tuple[str, ...]) -> int:
    """Job directories under ``sweep_dir`` that hold one of the ``markers`` files."""
    if not sweep_dir.is_dir():
        return 0
    return sum(
        1 for d in sweep_dir.iterdir() if d.is_dir() and any((d / m).exists() for m in markers)
    )


class SweepProgress:
    """``jobs done/total`` for a sweep, read from the job directories (works with any launcher
    that shares the file system: the jobs may run in other processes)."""

    def __init__(
        self,
        sweep_dir: Path,
        total: int | None,
        markers: tuple[str, ...],
        stream: TextIO | None = None,
    ) -> None:
        self.sweep_dir, self.total, self.markers = sweep_dir, total, markers
        self._t0 = time.perf_counter()
        self._ticker = _Ticker(self._render, 0.3, 0.25, stream)

    def _render(self) -> str:
        done = count_done(self.sweep_dir, self.markers)
        of = f"/{self.total}" if self.total else ""
        return f"sweep: {done}{of} jobs done ({time.perf_counter() - self._t0:.0f}s)"

    def start(self) -> None:
        """Start drawing (only on a terminal)."""
        self._ticker.start()

    def stop(self) -> None:
        """Stop and erase the line."""
        self._ticker.stop()
