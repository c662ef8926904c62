"""Several files of a checkpoint directory switched as one set: all old, or all new.

A save to a directory writes every file of the new set (shards, index or
``model.safetensors``, ``config.yaml``) under a temporary name and fsyncs it. Then,
holding the directory's lock (``flock`` on the directory itself, so no lock file is
left), it writes the journal ``.modelfactory-switch.json`` atomically, which is the commit
point: the journal lists the renames (temporary -> final) and the old files that are
not part of the new set. It carries them out (weights, then removals, then
``config.yaml``) and deletes the journal.

A kill before the journal leaves the old set (plus temporary files that a later save
removes); a kill after it leaves the journal, and the next save or load carries it out
to the end (roll forward): every step can be done twice. Renames put shards in place
before the index, and removals take the old index away before its shards, so a reader
that does not wait on the lock still finds a complete set; shards also carry the id of
their set, and the copy is renamed last, so a reader notices a set that changed under it
and reads again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CheckpointError
from ._atomic import TEMP, atomic_write, remove_orphans, sync_dir, sync_file, temp_for

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent writers are not serialized there
    fcntl = None  # type: ignore[assignment]

__all__ = ["JOURNAL", "is_member", "locked", "recover", "settled", "write_set"]

JOURNAL = ".modelfactory-switch.json"
_MEMBER = re.compile(r"model\.safetensors(\.index\.json)?|model-\d{5}-of-\d{5}\.safetensors")
_JOURNAL_MAX = 1 << 20


def is_member(name: str) -> bool:
    """A file name that belongs to a checkpoint set (model file, index or shard)."""
    return _MEMBER.fullmatch(name) is not None


def _owned(name: str) -> bool:
    return is_member(name) or name in ("config.yaml", JOURNAL)


def _rank(name: str) -> int:
    """Rename order: shards, then the file readers look for first, then the copy."""
    return 0 if name.startswith("model-") else 2 if name == "config.yaml" else 1


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s exclusive lock (released when the process dies, too)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as e:
        raise CheckpointError(directory, f"cannot open the checkpoint directory ({e})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def settled(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s shared lock with no switch pending: saves to it wait to switch
    until the block ends (they write their files meanwhile). For a reader that a writer
    saving without pause keeps outrunning. Without ``flock`` (Windows), or where the
    directory cannot be opened, nothing is held.
    """
    while True:
        recover(directory)
        try:
            fd = os.open(directory, os.O_RDONLY) if fcntl is not None else None
        except OSError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
            # a journal now is a save killed after recover looked (a live one holds the
            # lock while it has one): finish it, or recover would wait on this very lock
            if fd is None or not os.path.lexists(directory / JOURNAL):
                yield
                return
        finally:
            if fd is not None:
                os.close(fd)


def write_set(directory: Path, files: dict[str, Callable[[Path], None]]) -> None:
    """Write ``files`` (final name -> function writing that file's bytes to a given path)
    into ``directory`` as one set, replacing the checkpoint set that is there.

    Raises:
        CheckpointError: naming the file that could not be written (disk full, no
            permission) or replaced (a directory in its place); the old set is then as it was.
    """
    temps = {name: temp_for(directory / name) for name in files}
    committed = False
    try:
        for name, write in files.items():
            _write_synced(temps[name], write, directory / name)
        with locked(directory):
            _finish(directory)
            _check_targets(directory, files)
            remove_orphans(directory, _owned)
            plan = _plan(directory, temps)
            try:
                atomic_write(directory / JOURNAL, lambda tmp: tmp.write_text(json.dumps(plan)))
            except OSError as e:
                raise CheckpointError(directory / JOURNAL, f"cannot write ({e})") from e
            committed = True
            try:
                _apply(directory, plan)
            except OSError as e:
                raise CheckpointError(
                    directory,
                    f"the save is committed but its switch stopped ({e}); the next load or "
                    "save of this directory completes it",
                ) from e
    finally:
        if not committed:
            for tmp in temps.values():
                tmp.unlink(missing_ok=True)


def _write_synced(tmp: Path, write: Callable[[Path], None], final: Path) -> None:
    try:
        write(tmp)
        sync_file(tmp)
    except OSError as e:  # disk full, read-only directory: name the file
        raise CheckpointError(final, f"cannot write ({e})") from e


def _check_targets(directory: Path, files: dict[str, Callable[[Path], None]]) -> None:
    """Refuse, before the commit point, a final name that a rename could not replace."""
    for name in files:
        target = directory / name
        if target.exists() and not target.is_file():
            raise CheckpointError(
                target,
                "is not a regular file (a directory?), so a save cannot replace it; "
                "move it away and save again",
            )


def _plan(directory: Path, temps: dict[str, Path]) -> dict[str, list]:
    stale = [p.name for p in directory.iterdir() if is_member(p.name) and p.name not in temps]
    return {
        "renames": [[temps[n].name, n] for n in sorted(temps, key=lambda n: (_rank(n), n))],
        # the index first: without it readers look for model.safetensors, not for shards
        "remove": sorted(stale, key=lambda n: (not n.endswith(".json"), n)),
    }


def _apply(directory: Path, plan: dict[str, list]) -> None:
    """Carry out a journal's plan; safe to repeat after a kill at any step.

    The copy (``config.yaml``) goes last, after the old files are removed: a reader that
    sees the new copy then always finds the file it read the weights from replaced or gone.
    """
    weights = [r for r in plan["renames"] if _rank(r[1]) < 2]
    for tmp, final in weights:
        _rename_if_there(directory, tmp, final)
    sync_dir(directory)
    for name in plan["remove"]:
        _remove(directory / name)
    for tmp, final in plan["renames"]:
        if _rank(final) == 2:
            _rename_if_there(directory, tmp, final)
    _remove(directory / JOURNAL)
    sync_dir(directory)


def _rename_if_there(directory: Path, tmp: str, final: str) -> None:
    if os.path.lexists(directory / tmp):  # else renamed already, by a run killed after it
        _rename(directory / tmp, directory / final)


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def recover(directory: Path) -> None:
    """Finish the switch an interrupted save left in ``directory`` (waiting for a save that
    is switching right now); nothing to do when there is no journal.

    Raises:
        CheckpointError: the journal is corrupt, or the switch cannot be completed here
            (a read-only directory).
    """
    if os.path.lexists(directory / JOURNAL):
        with locked(directory):
            _finish(directory)


def _finish(directory: Path) -> None:
    """Roll a journal forward; the caller holds the lock."""
    journal = directory / JOURNAL
    try:
        with open(journal, "rb") as fh:
            text = fh.read(_JOURNAL_MAX + 1)
    except FileNotFoundError:
        return
    except OSError as e:
        raise CheckpointError(journal, f"cannot read this interrupted save's journal ({e})") from e
    plan = _parse(journal, text)
    try:
        _apply(directory, plan)
    except OSError as e:
        raise CheckpointError(
            journal,
            f"a save was interrupted and cannot be completed here ({e}); load it once where "
            "the directory is writable",
        ) from e


def _parse(journal: Path, text: bytes) -> dict[str, list]:
    """The journal's plan; only names of checkpoint files and their temporaries pass."""
    try:
        plan = json.loads(text) if len(text) <= _JOURNAL_MAX else None
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's stack
        plan = None
    ok = isinstance(plan, dict) and set(plan) == {"renames", "remove"}
    if ok:
        renames, remove = plan["renames"], plan["remove"]
        ok = isinstance(renames, list) and isinstance(remove, list)
        ok = ok and all(_is_rename(r) for r in renames) and all(_is_name(n) for n in remove)
    if not ok:
        raise CheckpointError(
            journal,
            "corrupt journal of an interrupted save: expected {'renames': [[temporary, "
            "final], ...], 'remove': [checkpoint file, ...]}; delete it if no save is running",
        )
    return plan


def _is_name(name: object) -> bool:
    return isinstance(name, str) and is_member(name)


def _is_rename(r: object) -> bool:
    if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)):
        return False
    m = TEMP.fullmatch(r[0])
    return m is not None and m["final"] == r[1] and _owned(r[1]) and r[1] != JOURNAL
