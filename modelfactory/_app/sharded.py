"""The command's plan (``plan=true``) and its sharded jobs (``mesh=fsdp``, under torchrun).

``modelfactory plan=true ...`` prints what the config costs (:func:`modelfactory.plan`)
and builds nothing. ``torchrun --nproc-per-node N -m modelfactory.cli mesh=fsdp ...``
builds the model sharded over the N processes (each builds its own shard), runs the
sample forward pass on all of them, and saves the checkpoint collectively; rank 0 prints
the summary and the checksum (the same checksum as a run in one process) and writes the
run directory. The other ranks log nothing and write no run directory of their own
(:func:`quiet_ranks`). ``mesh=fsdp`` without torchrun is a mesh of one process.

Kept light at import: the command imports it before torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["plan_job", "quiet_ranks", "sharded_job"]

log = logging.getLogger("modelfactory")

# Hydra settings for the ranks other than 0 of a torchrun job: no run directory, no log
# file, warnings and errors only.
_QUIET = (
    "hydra.run.dir=.",
    "hydra.output_subdir=null",
    "hydra.job_logging.root.handlers=[console]",
    "~hydra.job_logging.handlers.file",
    "hydra.job_logging.root.level=WARNING",
)


@contextlib.contextmanager
def quiet_ranks() -> Iterator[None]:
    """Under torchrun (``RANK`` set), every rank but 0 runs with :data:`_QUIET` appended to
    its command line: rank 0 alone makes the run directory and prints."""
    if os.environ.get("RANK", "0") == "0":
        yield
        return
    argv = sys.argv
    sys.argv = [*argv, *_QUIET]
    try:
        yield
    finally:
        sys.argv = argv


def _mesh_config(cfg: Any) -> dict[str, Any]:
    from .._config import to_plain

    mesh = cfg.get("mesh")
    return {} if mesh is None else dict(to_plain(mesh))


def plan_job(cfg: Any) -> dict[str, Any]:
    """Log the plan of the config as a table; returns it as a dict. With ``mesh=fsdp`` the
    plan has a row per rank for ``mesh.size`` (or the job's world size) ranks."""
    import modelfactory as mf

    from .job import build_config

    mesh = _mesh_config(cfg)
    ranks = mesh.get("size") or (int(os.environ.get("WORLD_SIZE", 1)) if mesh else None)
    plan = mf.plan(build_config(cfg), world_size=ranks, max_shard_size=cfg.get("max_shard_size"))
    if os.environ.get("RANK", "0") == "0":
        log.info("%s", plan.table())
    return asdict(plan)


def _mesh(mesh_cfg: dict[str, Any], device: str) -> tuple[Any, bool]:
    """The job's mesh: over every process of the torchrun job (a process group made here
    when none exists: from torchrun's environment, else of this process alone), on the
    device type of ``device.device``. Returns ``(mesh, whether the group was made here)``."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from ..device import resolve_device
    from ..errors import ConfigError

    kind = resolve_device(device, "device.device").type
    if kind == "meta":
        raise ConfigError([("device.device", "a sharded model needs real devices, not meta")])
    made = not dist.is_initialized()
    if made and "RANK" in os.environ:  # torchrun's rendezvous variables
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    elif made:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if kind == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    size = mesh_cfg.get("size") or dist.get_world_size()
    if size != dist.get_world_size():
        raise ConfigError(
            [("mesh.size", f"{size} ranks, but the job has {dist.get_world_size()} processes")]
        )
    return init_device_mesh(kind, (size,)), made


def sharded_job(cfg: Any, out_dir: Path, restore: str | None = None) -> dict[str, Any] | None:
    """Build (or with ``restore``, load) the model sharded over the job's processes, run the
    sample forward pass on all of them and, building, save collectively. Rank 0 logs the
    summary and checksum and writes ``metrics.json`` (and, building, ``summary.txt``);
    returns the metrics there (``None`` on the other ranks)."""
    import torch.distributed as dist

    import modelfactory as mf

    from ..checkpoint._bounds import check_sample_pass
    from ..distributed import load_sharded
    from .job import (
        METRICS_FILE,
        SUMMARY_FILE,
        build_config,
        checksum,
        format_checksum,
        sample_output,
    )

    mesh_cfg = _mesh_config(cfg)
    mesh, made = _mesh(mesh_cfg, str(cfg.device.device))
    units = mesh_cfg.get("units", "repeat")
    try:
        if restore is None:
            model = mf.build(build_config(cfg), mesh=mesh, fsdp_units=units)
        else:
            trusted = list(cfg.get("trusted") or [])
            # the sample pass below runs for real: bound it before any weight is read
            checks = (check_sample_pass,)
            model = load_sharded(restore, mesh, fsdp_units=units, trusted=trusted, checks=checks)
        first = dist.get_rank() == 0
        if first:
            text = mf.summary(model) + f"\nsharded over {mesh.size()} ranks (FSDP2 units: {units})"
            if restore is None:
                (out_dir / SUMMARY_FILE).write_text(text + "\n")
            log.info("%s", text)
        sample = sample_output(model, mf.config_of(model))  # every rank: a collective
        c = checksum(sample[1]) if sample is not None else None
        if restore is None:
            mf.save(model, out_dir, max_shard_size=cfg.get("max_shard_size"))
        if not first:
            return None
        log.info("%s", format_checksum(c))
        metrics = {"checksum": c, "world_size": mesh.size()}
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        if restore is None:
            log.info("checkpoint and %s written to %s", METRICS_FILE, out_dir)
        return metrics
    finally:
        if made:
            dist.destroy_process_group()
