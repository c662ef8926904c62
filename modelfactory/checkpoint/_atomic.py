"""Files that are never seen half-written, and reads that see one version of a file.

``atomic_write`` goes through a temporary file in the same directory, fsyncs and
renames; ``read_one_version`` retries a read that opens a file more than once until the file
stayed the same file throughout (a save landing between two opens would mix two
checkpoints).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CheckpointError

__all__ = [
    "atomic_write",
    "atomic_write_or_fail",
    "checked_first",
    "identity",
    "missing",
    "overtaken",
    "read_one_version",
    "regular",
    "remove_orphans",
    "sync_dir",
    "sync_file",
    "temp_for",
    "unchanged",
    "vanished",
    "was_overtaken",
]

# A writer's temporary file is removed by a later save only when its pid is dead here AND it
# has not been touched for this long: on a shared filesystem the pid may be another host's.
ORPHAN_AGE_S = 600
# A read that a save keeps overtaking is tried again this many times (a save of a small
# model can land faster than a loaded copy is read on a busy machine) before giving up.
READ_ATTEMPTS = 10
T = TypeVar("T")
H = TypeVar("H")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over ``path``.

    A crash or kill at any moment leaves ``path`` as it was, or complete.
    """
    _remove_orphans(path)
    tmp = temp_for(path)
    try:
        write(tmp)
        sync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)  # make the rename itself durable


def atomic_write_or_fail(path: Path, write: Callable[[Path], None]) -> None:
    """:func:`atomic_write`, an OS error (disk full, permissions) a ``CheckpointError``
    naming ``path``."""
    try:
        atomic_write(path, write)
    except OSError as e:
        raise CheckpointError(path, f"cannot write ({e})") from e


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of earlier saves to ``path`` that a killed writer left behind."""
    remove_orphans(path.parent, lambda final: final == path.name)


TEMP = re.compile(r"\.(?P<final>.+)\.(?P<pid>\d+)-[^./]*\.tmp")


def temp_for(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.PID-TOKEN.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def remove_orphans(directory: Path, owned: Callable[[str], bool]) -> None:
    """Delete the temporary files in ``directory`` of killed writers of files ``owned`` names.

    Conservative: the file must be untouched for ``ORPHAN_AGE_S`` seconds and its pid dead in
    this pid namespace (on a shared filesystem a pid alone could be another host's writer).
    """
    stale = time.time() - ORPHAN_AGE_S
    for tmp in directory.glob(".*.tmp"):
        m = TEMP.fullmatch(tmp.name)
        if m is None or not owned(m["final"]):
            continue
        try:
            old = tmp.stat().st_mtime < stale
        except FileNotFoundError:  # its writer finished or another save removed it
            continue
        if old and not _alive(int(m["pid"])):
            tmp.unlink(missing_ok=True)


def sync_dir(directory: Path) -> None:
    """Make renames and removals in ``directory`` durable."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_one_version(file: Path, read: Callable[[], T]) -> T:
    """``read()``, which opens ``file`` more than once, retried until ``file`` stayed the same
    file throughout: a save (an atomic rename) landing between two opens would otherwise mix
    one checkpoint's document with another's tensors, a model that was never saved."""
    if not regular(file):
        if os.path.lexists(file):
            raise CheckpointError(file, "not a regular file (a directory, a FIFO or a device)")
        raise missing(file)
    for _ in range(READ_ATTEMPTS):
        try:
            fh = open(file, "rb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise CheckpointError(file, f"cannot open it ({e})") from e
        with fh:  # held open, so no new file can get its inode number meanwhile
            before = identity(os.fstat(fh.fileno()))
            try:
                result = read()
            except CheckpointError:
                if unchanged(file, before):
                    raise
                continue  # the error may come from the mix: read again
            if unchanged(file, before):
                return result
    raise overtaken(file)


def checked_first(
    file: Path,
    first: Callable[[], H],
    check: Callable[[H], Any] | None,
    rest: Callable[[H | None, Any], T | None],
) -> T:
    """``rest(header, check(header))`` with ``header = first()``: a read whose header the
    caller checks before the rest of the file is read (a refusal reads nothing more).

    The check runs between two reads, not inside one that must see one version of the
    file: it may take a while (a config built on ``meta``), and a save landing meanwhile
    would make every attempt start over. ``rest`` reads the header again with the rest and
    returns ``None`` when it is another save's than the one checked; then that one is
    checked. Without a ``check``, ``rest(None, None)`` alone.
    """
    for _ in range(READ_ATTEMPTS):
        header = first() if check is not None else None
        result = rest(header, check(header) if check is not None else None)
        if result is not None:
            return result
    raise overtaken(file)


def missing(file: Path) -> CheckpointError:
    """The error for a checkpoint file that is not there, its cause a ``FileNotFoundError``
    (as when one found a moment ago cannot be opened: a save renamed it away)."""
    error = CheckpointError(file, "no such checkpoint file")
    error.__cause__ = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(file))
    return error


class _SavesKeptLanding(Exception):
    """The cause of :func:`overtaken`'s error."""


def overtaken(file: Path, what: str = "it") -> CheckpointError:
    """The error for a read of ``file`` that saves overtook ``READ_ATTEMPTS`` times in a row;
    :func:`was_overtaken` tells it (a reader that can hold saves off tries once more so)."""
    error = CheckpointError(
        file,
        f"{what} changed while being read, {READ_ATTEMPTS} times in a row: another process "
        "keeps saving to it; read it once that is done",
    )
    error.__cause__ = _SavesKeptLanding()
    return error


def was_overtaken(error: CheckpointError) -> bool:
    return isinstance(error.__cause__, _SavesKeptLanding)


def vanished(error: CheckpointError) -> bool:
    """Whether ``error`` says the file it names is not there (it may have been, a moment
    before: a reader that found it races a save switching files)."""
    return isinstance(error.__cause__, FileNotFoundError)


def regular(file: Path) -> bool:
    """Whether ``file`` is a regular file (symlinks followed). A name the system refuses to
    look up (longer than a file name may be) is a ``CheckpointError`` naming it."""
    try:
        return stat.S_ISREG(os.stat(file).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:  # ENAMETOOLONG, ELOOP, EACCES
        raise CheckpointError(file, f"cannot look it up ({e.strerror or e})") from e


def identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def unchanged(file: Path, before: tuple[int, ...]) -> bool:
    try:
        return identity(os.stat(file)) == before
    except OSError:
        return False
