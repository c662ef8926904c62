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

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._app.startup import COLLECTOR
from .configs import compose_error_text, conf_dir
from .errors import ConfigError, ModelFactoryError, UntrustedTargetError

if TYPE_CHECKING:
    from omegaconf import DictConfig

# Hydra and OmegaConf are imported by main, once run() paused the collector (_app.startup).

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


def _task(cfg: DictConfig) -> dict[str, Any] | None:
    """One job. In a multirun, a failure is recorded in the job dir (``error.json``) and the
    job returns normally, so the other jobs and the sweep report still run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ._app import job  # and torch with it

    COLLECTOR.started()

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
        log.info("%s written to %s", job.METRICS_FILE, out_dir)
        return metrics
    except Exception as e:
        if _verbose(cfg) or not (isinstance(e, ModelFactoryError) or hc.mode == RunMode.MULTIRUN):
            raise  # a bug, not bad input: keep the traceback
        text = _cli_text(e)
        log.error("%s", _one_paragraph(f"modelfactory: error: {text}"))
        if not isinstance(e, ModelFactoryError):
            log.debug("%s", traceback.format_exc())
        if hc.mode == RunMode.MULTIRUN:
            (out_dir / job.ERROR_FILE).write_text(
                json.dumps({"error": text, "type": type(e).__name__})
            )
            return None
        if isinstance(e, ConfigError):  # nothing ran: leave no run directory behind
            _discard_run_dir(out_dir, f"{hc.job.name}.log")
        raise SystemExit(2 if isinstance(e, ConfigError) else 1) from e


# What Hydra writes into a run directory before the job runs.
_HYDRA_FILES = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}


def _discard_run_dir(out_dir: Path, log_name: str) -> None:
    """Remove the run directory of a run that a config error stopped before it did anything,
    and the parents it left empty (``outputs/DATE``), when it holds Hydra's files alone: a
    directory of the user's own (``hydra.run.dir=.``) is left as it is."""
    files = {str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if not p.is_dir()}
    if not files <= {*_HYDRA_FILES, log_name}:
        return
    for name in files:
        (out_dir / name).unlink(missing_ok=True)
    stop = Path.cwd().resolve()
    for folder in [out_dir / ".hydra", out_dir, *out_dir.parents]:
        if folder.resolve() == stop or stop not in folder.resolve().parents:
            break
        try:
            folder.rmdir()  # only an empty one
        except OSError:
            break


def _hydra_error(e: Exception) -> str:
    lines = [f"modelfactory: error: the config does not compose: {compose_error_text(e)}"]
    lines.append("(add hydra.verbose=true for a traceback; --help lists the config groups)")
    return _one_paragraph("\n".join(lines))


# The fix an UntrustedTargetError names, as the command line spells it.
TRUST_FIX = "Add 'trusted=[mypkg.*]' to the command line, only for files you trust."


def _cli_text(e: Exception) -> str:
    """An error's message with the command line's spelling where Python's would mislead."""
    if isinstance(e, UntrustedTargetError):
        return str(UntrustedTargetError(e.file, e.reason, fix=TRUST_FIX))
    return str(e)


def main() -> None:
    """The ``modelfactory`` command, arguments from ``sys.argv`` (the console script runs it
    through :func:`run`).

    Like ``python -m`` and ``python script.py``, the command imports modules from the current
    directory: a ``_target_: myblocks.MyBlock`` finds ``./myblocks.py``. Called in a process
    of the caller's, it leaves ``sys.path`` and ``os.environ`` as they were.
    """
    path, full_error = list(sys.path), os.environ.get("HYDRA_FULL_ERROR")
    try:
        if os.getcwd() not in sys.path:  # a console script's sys.path[0] is its bin/ directory
            sys.path.insert(0, os.getcwd())
        # Let Hydra's own errors (a bad override, an unknown option) reach us, so that they
        # are reported in one paragraph like ours instead of with Hydra's multi-part message.
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
        _app()
    finally:
        sys.path[:] = path
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _app() -> None:
    import hydra
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .resolvers import register

    register()  # ${mf.calc:...} resolves in Hydra's job too (--cfg job --resolve, the app)

    app = hydra.main(config_path=str(conf_dir()), config_name=APP_CONFIG, version_base="1.3")(_task)
    from ._app.sharded import quiet_ranks

    try:
        with quiet_ranks():
            app()
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as e:  # YAML: a group file
        if _verbose():
            raise
        sys.stderr.write(_hydra_error(e) + "\n")
        raise SystemExit(2) from None


def run() -> None:
    """The ``modelfactory`` console script: :func:`main` in a process of its own, the cyclic
    collector paused while it starts (``modelfactory._app.startup``)."""
    with COLLECTOR.paused():
        main()


if __name__ == "__main__":
    run()
