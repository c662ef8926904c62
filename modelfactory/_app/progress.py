"""Terminal progress: a spinner for long loads/saves, tqdm bars for sweep jobs and training.

All of them draw on stderr only when it is a terminal, and draw nothing at all otherwise
(logs, CI, pipes, tests stay clean). The spinner redraws one line in place (``\\r``) from a
daemon thread; the bars are tqdm's, and while the jobs bar is shown the console's log lines
are printed above it (see :class:`SweepProgress`).
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["Spinner", "SweepProgress", "is_tty", "step_bar"]

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


class _AboveBars(io.TextIOBase):
    """Stands in for ``sys.stdout`` while bars are drawn: each write clears the bars of
    ``bars`` first and redraws them after, so log lines never land inside a bar."""

    def __init__(self, out: TextIO, bars: TextIO) -> None:
        self._out, self._bars = out, bars

    def write(self, s: str) -> int:
        with tqdm.external_write_mode(file=self._bars):
            n = self._out.write(s)
            self._out.flush()
        return n

    def flush(self) -> None:
        self._out.flush()

    def isatty(self) -> bool:
        return is_tty(self._out)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)


class SweepProgress:
    """A ``sweep: done/total jobs`` bar, read from the job directories (works with any
    launcher that shares the file system: the jobs may run in other processes).

    While it is shown, ``sys.stdout`` is a stand-in that prints the console's log lines
    above the bars (the jobs' log handlers are set up after it starts, and pick it up);
    :meth:`stop` puts the real one back.
    """

    def __init__(
        self,
        sweep_dir: Path,
        total: int | None,
        markers: tuple[str, ...],
        stream: TextIO | None = None,
    ) -> None:
        self.sweep_dir, self.total, self.markers = sweep_dir, total, markers
        self._stream = stream or sys.stderr
        self._bar: Any = None
        self._stdout: TextIO | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def done(self) -> int:
        """Jobs that have finished (their directory holds a marker file)."""
        return count_done(self.sweep_dir, self.markers)

    def start(self) -> None:
        """Start drawing (only on a terminal)."""
        if not is_tty(self._stream):
            return
        self._bar = tqdm(total=self.total, desc="sweep", unit="job", leave=False, file=self._stream)
        self._stdout, sys.stdout = sys.stdout, _AboveBars(sys.stdout, self._stream)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            done = self.done()
            if done != self._bar.n:
                self._bar.update(done - self._bar.n)

    def stop(self) -> None:
        """Stop and erase the bar."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._bar.close()
        if self._stdout is not None:
            sys.stdout, self._stdout = self._stdout, None


@contextlib.contextmanager
def step_bar(total: int, desc: str, in_sweep: bool = False) -> Iterator[Any]:
    """A tqdm bar for training steps on a terminal (under the jobs bar in a sweep), or
    ``None``: off a terminal, and in sweeps whose jobs may run in other processes (only
    the basic launcher runs them here, where the bars can share the terminal)."""
    show = is_tty() and (not in_sweep or _basic_launcher())
    if not show:
        yield None
        return
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


def _basic_launcher() -> bool:
    from hydra.core.hydra_config import HydraConfig

    target = str(HydraConfig.get().launcher.get("_target_", ""))
    return target.endswith("BasicLauncher")
