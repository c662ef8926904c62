"""A plain run's composed config, kept for the next run of the same command line.

Hydra composes the config afresh in every process: YAML parsing, defaults lists, merges and
deep copies, about 0.1 s, a third of the command's own start-up. What it composes depends
only on the command line, the current directory, the search path, the config sources
(directories and packages of YAML files, and the structured configs that Hydra and its
plugins register in code) and the versions of the code doing it. So a composed config is
kept, pickled, beside what it was made from; a later run of the same command line takes it
when every source is as it was (each file, symlinks followed, compared as Python compares a
``.pyc`` with its ``.py``: size and modification time) and composes afresh otherwise. Not
kept: a composition that fails (an error always comes from Hydra itself), and one whose
defaults list calls a resolver (``- override model: ${oc.env:MODEL}``), whose value comes
from outside the sources.

The cache is ``$XDG_CACHE_HOME/modelfactory/compose`` (``~/.cache/modelfactory/compose``),
at most :data:`MAX_ENTRIES` files (the least recently used go), and is used only when that
directory is the user's own and writable by no one else.
``MODELFACTORY_COMPOSE_CACHE=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import logging
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .patching import replaced

log = logging.getLogger(__name__)

FORMAT = 1  # bump when an entry's layout changes
MAX_ENTRIES = 256
ENV_SWITCH = "MODELFACTORY_COMPOSE_CACHE"


def cache_dir() -> Path | None:
    """Where entries live, or None when the cache is off or the directory is not safe."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "modelfactory" / "compose"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
    except OSError:
        return None
    # Entries are pickles, and hold copied environment variables (hydra.job.env_copy): only
    # a directory of the user's own that nobody else can read or write.
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o077):
        log.debug("compose cache %s is not private: not used", folder)
        return None
    return folder


def _tree(root: Path) -> list[tuple[str, int, int]]:
    """Each file under ``root`` (through symlinks, as Hydra reads them): name, size, mtime."""
    rows, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            st = os.stat(os.path.join(folder, name))
            rows.append(
                (os.path.relpath(os.path.join(folder, name), root), st.st_size, st.st_mtime_ns)
            )
    return rows


def _source_state(schema: str, path: str) -> Any:
    """What a config source holds, cheaply; raises LookupError for a source it cannot tell."""
    if schema == "file":
        return _tree(Path(path))
    if schema == "pkg":
        root = importlib.resources.files(path.replace("/", "."))
        if not isinstance(root, Path):  # a zip, or another loader's resource
            raise LookupError(path)
        return _tree(root)
    if schema == "structured":  # registered by code: the key covers the code
        return None
    raise LookupError(f"{schema}://{path}")


def _code_state() -> list[Any]:
    """The code that composes and registers configs: versions, and Hydra plugins' files."""
    import hydra
    import omegaconf

    from .. import __file__ as package_file

    plugins = []
    for name, module in sorted(sys.modules.items()):
        if name.startswith("hydra_plugins.") and getattr(module, "__file__", None):
            st = os.stat(module.__file__)
            plugins.append((name, st.st_size, st.st_mtime_ns))
    return [FORMAT, sys.version, hydra.__version__, omegaconf.__version__, package_file, plugins]


def _key(config_name: str | None, overrides: list[str], task: str, how: dict[str, Any]) -> str:
    material = [_code_state(), config_name, list(overrides), os.getcwd(), task, sorted(how.items())]
    return hashlib.sha256(json.dumps(material, default=str).encode()).hexdigest()[:32]


def _state(sources: Iterable[tuple[str, str]], env_copy: Iterable[str]) -> dict[str, Any]:
    """What a composition read from outside the command line: its sources, as they are now,
    and the environment variables it copies (``hydra.job.env_copy``)."""
    return {
        "sources": [(schema, path, _source_state(schema, path)) for schema, path in sources],
        "env": {k: os.environ.get(k) for k in env_copy},
    }


def lookup(folder: Path, key: str) -> Any | None:
    """The config kept under ``key``, if every source it was composed from is unchanged."""
    from omegaconf import OmegaConf

    try:
        entry = pickle.loads((folder / f"{key}.pkl").read_bytes())
        cfg = entry.pop("cfg")
        if _state([(s, p) for s, p, _ in entry["sources"]], entry["env"]) != entry:
            return None
    except Exception:  # absent, unreadable, from other code, a source gone: compose afresh
        return None
    OmegaConf.clear_cache(cfg)  # nothing resolved in another run (${now:...}) is kept
    with contextlib.suppress(OSError):  # recently used: the last to be dropped
        os.utime(folder / f"{key}.pkl")
    return cfg


def store(folder: Path, key: str, cfg: Any) -> None:
    """Keep ``cfg`` under ``key`` (atomically), dropping the least recently used entries
    beyond :data:`MAX_ENTRIES`."""
    try:
        sources = [(s.schema, s.path) for s in cfg.hydra.runtime.config_sources]
        entry = pickle.dumps({**_state(sources, cfg.hydra.job.env_copy), "cfg": cfg})
    except Exception as e:  # a source it cannot tell, or a value that does not pickle
        log.debug("compose cache: not kept (%s)", e)
        return
    # Written through a temporary file and renamed, so no reader sees half an entry; not
    # fsynced (a lost entry is composed again), nor through checkpoint._atomic, whose
    # package imports torch, which `--help` and `--cfg job` never need.
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(entry)
        os.replace(tmp, folder / f"{key}.pkl")
        entries = sorted(folder.glob("*.pkl"), key=lambda p: p.stat().st_mtime_ns)
        for stale in entries[:-MAX_ENTRIES]:
            stale.unlink(missing_ok=True)
    except OSError as e:  # a cache that cannot be written only costs time
        log.debug("compose cache: not kept (%s)", e)
        tmp.unlink(missing_ok=True)


RESOLVER = re.compile(r"\$\{[^{}]*:")  # ${oc.env:X}, ${now:...}: not ${model}


@contextlib.contextmanager
def _watching_defaults() -> Iterator[list[str]]:
    """Lists each defaults-list interpolation with a resolver in it that Hydra resolves
    meanwhile (``- override model: ${oc.env:MODEL}``): its value comes from outside the
    config sources, so such a composition is not kept."""
    from hydra.core.default_element import InputDefault

    seen: list[str] = []
    resolve = InputDefault._resolve_interpolation_impl

    def watching(self: Any, known_choices: Any, val: str | None) -> str:
        if val is not None and RESOLVER.search(val):
            seen.append(val)
        return resolve(self, known_choices, val)

    with replaced(InputDefault, "_resolve_interpolation_impl", watching):
        yield seen


@contextlib.contextmanager
def cached() -> Iterator[None]:
    """Let Hydra's compositions come from the cache (``Hydra.compose_config``: a run's, a
    multirun's and the one it makes to read ``hydra.mode``; not a sweep's per-job ones)."""
    folder = cache_dir()
    try:
        import hydra._internal.hydra as hydra_impl
        from hydra.core.utils import JobRuntime, configure_log
    except ImportError:  # another Hydra layout: compose as it does
        folder = None
    if folder is None:
        yield
        return
    compose: Callable[..., Any] = hydra_impl.Hydra.compose_config

    def compose_config(
        self: Any, config_name: Any, overrides: Any, run_mode: Any, **kw: Any
    ) -> Any:
        if not kw.get("from_shell", True):  # hydra.compose() inside a job: not the command's
            return compose(self, config_name, overrides, run_mode, **kw)
        how = {k: v for k, v in kw.items() if k != "with_log_configuration"}
        how["run_mode"] = str(run_mode)  # a multirun's composition skips missing values
        how["search_path"] = [
            (e.provider, e.path) for e in self.config_loader.get_search_path().get_path()
        ]
        key = _key(config_name, overrides, str(JobRuntime.instance().get("name")), how)
        cfg = lookup(folder, key)
        if cfg is None:
            with _watching_defaults() as resolved:
                cfg = compose(self, config_name, overrides, run_mode, **kw)
            if not resolved:
                store(folder, key, cfg)
        elif kw.get("with_log_configuration"):  # what compose_config does beside composing
            configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
            hydra_impl.log = logging.getLogger(hydra_impl.__name__)
            self._print_debug_info(config_name, overrides, run_mode)
        return cfg

    with replaced(hydra_impl.Hydra, "compose_config", compose_config):
        yield
