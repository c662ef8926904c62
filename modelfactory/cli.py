"""The ``modelfactory`` command: a Hydra app over the Python API.

    modelfactory [OVERRIDES]                   build, print summary + checksum, save in outputs/
    modelfactory restore=PATH [device=...]     load a checkpoint, print the same summary + checksum
    modelfactory verify=PATH                   check a checkpoint's stored content digest
    modelfactory -m init=normal,xavier seed=0,1   sweep; sweep.csv + sweep.png in the sweep dir

Exit status: 0 on success, 2 for a config that does not compose or is not well-formed,
1 for any other handled failure (a build that fails, a bad checkpoint, failed sweep jobs).
Errors are one paragraph; ``hydra.verbose=true`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._app.patching import replaced
from .configs import compose_error_text, conf_dir
from .errors import ConfigError, ModelFactoryError

if TYPE_CHECKING:
    from omegaconf import DictConfig

# Hydra and OmegaConf are imported by main, once the collector is paused (_StartupCollector).

__all__ = ["main", "run"]

log = logging.getLogger("modelfactory")

APP_CONFIG = "app"  # conf/app.yaml: config.yaml + the app's keys and Hydra settings


def _one_paragraph(text: str) -> str:
    return "\n".join(line.rstrip() for line in str(text).splitlines() if line.strip())


def _verbose(cfg: DictConfig | None = None) -> bool:
    if cfg is not None:
        from hydra.core.hydra_config import HydraConfig

        return bool(HydraConfig.get().verbose)
    for arg in sys.argv[1:]:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "hydra.verbose" and value.lower() not in ("", "false", "null"):
            return True
    return False


class _StartupCollector:
    """How the console script runs Python's cyclic garbage collector in its own process.

    Starting, the command imports Hydra, OmegaConf and torch: hundreds of thousands of
    long-lived objects and almost no garbage (about 14,000 objects). Each full collection
    during those imports walks everything imported so far (about 0.2 s in all, on torch's
    import alone), so the collector is off until torch is in (or a sweep starts: its jobs
    may run in other processes); then what is alive is frozen (:func:`gc.freeze`) and the
    collector back on. Later collections skip the frozen objects, and so does the one
    the interpreter makes as it exits (about 0.3 s otherwise). Only :func:`run`, the process
    itself, does this: frozen garbage is never freed, so :func:`main` called in a process of
    the caller's leaves the collector alone.
    """

    def __init__(self) -> None:
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused = gc.isenabled()
        gc.disable()  # before Hydra is imported: its import is a third of the command's own
        from hydra._internal.hydra import Hydra

        multirun = Hydra.multirun

        def sweeping(hydra: Any, *args: Any, **kwargs: Any) -> Any:
            self.started()  # a sweep: its jobs may run elsewhere, this process needs it
            return multirun(hydra, *args, **kwargs)

        try:
            with replaced(Hydra, "multirun", sweeping):
                yield
        finally:
            self.started()
            gc.freeze()  # the process ends now: spare its last collection the walk

    def started(self) -> None:
        """The imports are done: freeze what they made and collect again (once)."""
        if self._paused:
            gc.freeze()
            gc.enable()
            self._paused = False


_COLLECTOR = _StartupCollector()


def _task(cfg: DictConfig) -> dict[str, Any] | None:
    """One job. In a multirun, a failure is recorded in the job dir (``error.json``) and the
    job returns normally, so the other jobs and the sweep report still run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ._app import job  # and torch with it

    _COLLECTOR.started()

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        if cfg.get("plan") or (cfg.get("mesh") is not None and not cfg.get("verify")):
            from ._app import sharded  # plan=true, mesh=fsdp (docs/distributed.md)

            restore = None if cfg.get("plan") else cfg.get("restore")
            if restore:
                job.restore_placement(cfg, list(hc.overrides.task))  # refuses model=...
            else:
                job.check_overrides(cfg, list(hc.overrides.task))
            if cfg.get("plan"):
                return sharded.plan_job(cfg)
            return sharded.sharded_job(cfg, out_dir, restore=restore)
        if cfg.get("restore"):
            placement = job.restore_placement(cfg, list(hc.overrides.task))
            checksum = job.restore_job(str(cfg.restore), list(cfg.trusted), **placement)
            metrics = {"checksum": checksum}
        elif cfg.get("verify"):
            job.verify_job(str(cfg.verify))
            metrics = {"checksum": None, "verified": str(cfg.verify)}
        else:
            job.check_overrides(cfg, list(hc.overrides.task))
            return job.build_job(cfg, out_dir)
        (out_dir / job.METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        return metrics
    except Exception as e:
        if _verbose(cfg) or not (isinstance(e, ModelFactoryError) or hc.mode == RunMode.MULTIRUN):
            raise  # a bug, not bad input: keep the traceback
        message = _one_paragraph(f"modelfactory: error: {e}")
        log.error("%s", message)
        if not isinstance(e, ModelFactoryError):
            log.debug("%s", traceback.format_exc())
        if hc.mode == RunMode.MULTIRUN:
            (out_dir / job.ERROR_FILE).write_text(
                json.dumps({"error": str(e), "type": type(e).__name__})
            )
            return None
        raise SystemExit(2 if isinstance(e, ConfigError) else 1) from e


def _hydra_error(e: Exception) -> str:
    lines = [f"modelfactory: error: the config does not compose: {compose_error_text(e)}"]
    lines.append("(add hydra.verbose=true for a traceback; --help lists the config groups)")
    return _one_paragraph("\n".join(lines))


# Command-line arguments after which the primary config may be the user's (and so may set
# ``hydra.mode``): Hydra's --config-dir, --config-name and --config-path, long and short.
_OWN_CONFIG_FLAGS = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


def mode_is_unset(argv: Sequence[str]) -> bool:
    """True when the composed config cannot set ``hydra.mode``: no shipped config sets it, and
    the command line neither overrides it nor brings configs of the user's."""
    return not any(arg.startswith(_OWN_CONFIG_FLAGS) or "hydra.mode" in arg for arg in argv)


@contextlib.contextmanager
def _no_mode_probe(argv: Sequence[str]) -> Iterator[None]:
    """Spare Hydra the composition it does only to read ``hydra.mode``.

    Hydra 1.3's ``Hydra.get_mode`` composes the whole config to read ``hydra.mode`` and
    throws it away; ``run``/``multirun`` then compose it again (hydra issue #3440). When
    :func:`mode_is_unset`, that probe can only answer ``None``, and ``None`` is what this
    gives without composing: ``-m`` alone picks the mode, exactly as before.
    """
    try:
        from hydra._internal.hydra import Hydra
    except ImportError:  # another Hydra layout: keep its own probe
        yield
        return
    if not mode_is_unset(argv):
        yield
        return
    with replaced(Hydra, "get_mode", lambda self, config_name, overrides: None):
        yield


def main() -> None:
    """The ``modelfactory`` command, arguments from ``sys.argv`` (the console script runs it
    through :func:`run`).

    Like ``python -m`` and ``python script.py``, the command imports modules from the current
    directory: a ``_target_: myblocks.MyBlock`` finds ``./myblocks.py``.
    """
    if os.getcwd() not in sys.path:  # a console script's sys.path[0] is its bin/ directory
        sys.path.insert(0, os.getcwd())
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .resolvers import register

    register()  # ${mf.calc:...} resolves in Hydra's job too (--cfg job --resolve, the app)

    app = hydra.main(config_path=str(conf_dir()), config_name=APP_CONFIG, version_base="1.3")(_task)
    # Let Hydra's own errors (a bad override, an unknown option) reach us, so that they are
    # reported in one paragraph like ours instead of with Hydra's multi-part message.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from ._app.sharded import quiet_ranks

    try:
        with _no_mode_probe(sys.argv[1:]), quiet_ranks():
            app()
    except (HydraException, OmegaConfBaseException) as e:
        if _verbose():
            raise
        sys.stderr.write(_hydra_error(e) + "\n")
        raise SystemExit(2) from None


def run() -> None:
    """The ``modelfactory`` console script: :func:`main` in a process of its own, the cyclic
    collector paused while it starts (:class:`_StartupCollector`) and compositions kept for
    the next run (``modelfactory._app.composition``; a caller of :func:`main` may register
    structured configs in code, which the cache could not see change)."""
    with _COLLECTOR.paused():
        from ._app import composition

        with composition.cached():
            main()


if __name__ == "__main__":
    run()
