"""Terminal progress: a spinner for long loads/saves, bars for sweep jobs and training steps.

All are tqdm displays on stderr, drawn only when it is a terminal and not at all otherwise
(logs, CI, pipes, tests stay clean). tqdm stacks them on their own lines; while the jobs
bar is shown the console's log lines print above the bars (see :class:`SweepProgress`).
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from collections.abc import Iterator
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


class Spinner:
    """``with Spinner("saving ckpt/"):`` shows ``saving ckpt/ | 1.3s`` if it takes > ``delay``.

    Drawn as a one-line tqdm display, so it takes its own line below any bars and log lines
    print above it.
    """

    def __init__(self, label: str, delay: float = 0.5, stream: TextIO | None = None) -> None:
        self.label = label
        self._stream = stream or sys.stderr
        self._delay = delay
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _render(self, n: int) -> str:
        return f"{self.label} {_FRAMES[n % 4]} {time.perf_counter() - self._t0:.1f}s"

    def _loop(self) -> None:
        if self._stop.wait(self._delay):
            return
        line = tqdm(bar_format="{desc}", leave=False, file=self._stream, desc=self._render(0))
        n = 0
        while not self._stop.wait(0.1):
            n += 1
            line.set_description_str(self._render(n))
        line.close()

    def __enter__(self) -> Spinner:
        self._t0 = time.perf_counter()
        if is_tty(self._stream):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def count_done(sweep_dir: Path, markers: tuple[str, ...]) -> int:
    """Job directories under ``sweep_dir`` that hold one of the ``markers`` files."""
    if not sweep_dir.is_dir():
        return 0
    return sum(
        1 for d in sweep_dir.iterdir() if d.is_dir() and any((d / m).exists() for m in markers)
    )


class _AboveBars(io.TextIOBase):
    """Stands in for ``sys.stdout`` while bars are drawn: whole lines are written with the
    bars of ``bars`` cleared first and redrawn after, so log lines never land in a bar."""

    def __init__(self, out: TextIO, bars: TextIO) -> None:
        self._out, self._bars = out, bars
        self._pending = ""  # a line not finished yet: a redrawn bar would overwrite it

    def write(self, s: str) -> int:
        head, newline, self._pending = (self._pending + s).rpartition("\n")
        if newline:
            with tqdm.external_write_mode(file=self._bars):
                self._out.write(head + newline)
                self._out.flush()
        return len(s)

    def flush(self) -> None:
        self._out.flush()

    def close_line(self) -> None:
        """Write what is left of an unfinished line (the bars are gone by then)."""
        if self._pending:
            self._out.write(self._pending)
            self._out.flush()
            self._pending = ""

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
        self._proxy: _AboveBars | None = None
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
        self._proxy = _AboveBars(sys.stdout, self._stream)
        self._stdout, sys.stdout = sys.stdout, self._proxy
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
        if self._stdout is not None and self._proxy is not None:
            self._proxy.close_line()
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
