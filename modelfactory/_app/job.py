"""One job of the app: build a model (or restore / verify a checkpoint) and describe it.

The sample-output checksum, defined once here so every run, sweep and restore agrees:
the model runs in ``eval`` mode under ``no_grad`` on the seeded sample input
(``input_shape`` / ``input_dtype`` / ``seed`` of the config); every output tensor
(a tuple, list or dict output is taken in order) is moved to the CPU, made contiguous
and its raw bytes (native byte order) are fed to one SHA-256; ``sum`` is the float64
sum of all output elements, a short human check.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import modelfactory as mf

from .. import device as devices
from .._config import BUILD_KEYS, normalize, to_plain
from .._knobs import close_key, referenced_top_keys
from .._record import record_of
from .._sample import run_sample, sample_input
from ..checkpoint._bounds import check_sample_pass
from ..checkpoint.read import load_model
from ..errors import ConfigError
from .progress import Spinner, step_bar

if TYPE_CHECKING:
    from . import train as training

__all__ = [
    "APP_KEYS",
    "ERROR_FILE",
    "METRICS_FILE",
    "RESTORE_OVERRIDES",
    "SUMMARY_FILE",
    "build_job",
    "check_overrides",
    "checksum",
    "format_checksum",
    "restore_job",
    "restore_placement",
    "sample_output",
    "verify_job",
]

log = logging.getLogger("modelfactory")

METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.txt"
ERROR_FILE = "error.json"


APP_KEYS = ("restore", "verify", "trusted", "train", "plan", "mesh", "max_shard_size")


def build_config(cfg: Any) -> Any:
    """The app's config without the app's own keys (``APP_KEYS``): what
    :func:`modelfactory.build` gets.

    A ``DictConfig`` stays one (unresolved), so the knobs it holds keep their meaning:
    ``build`` tells them from typos (a key added with ``+seeed=3`` must not pass silently).
    """
    from omegaconf import OmegaConf

    keys = [k for k in cfg if k not in APP_KEYS]
    if OmegaConf.is_dict(cfg):
        return OmegaConf.masked_copy(cfg, keys)
    return {k: cfg[k] for k in keys}


def _tensors(out: Any) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for x in out:
            yield from _tensors(x)
    elif isinstance(out, dict):
        for x in out.values():
            yield from _tensors(x)


def checksum(output: Any) -> dict[str, Any]:
    """SHA-256 of the raw bytes of every tensor in ``output``, and their float64 sum.

    Args:
        output: a tensor, or a (nested) tuple, list or dict of tensors.

    Returns:
        ``{"sha256": hex digest, "sum": float, "shapes": [...], "dtypes": [...]}``.
    """
    digest = hashlib.sha256()
    total = 0.0
    shapes, dtypes = [], []
    for t in _tensors(output):
        t = t.detach().to("cpu").contiguous()
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        total += t.double().sum().item() if t.numel() else 0.0
        shapes.append(list(t.shape))
        dtypes.append(str(t.dtype).removeprefix("torch."))
    return {"sha256": digest.hexdigest(), "sum": total, "shapes": shapes, "dtypes": dtypes}


def format_checksum(c: dict[str, Any] | None) -> str:
    """One line: ``checksum sha256=<64 hex> sum=<float>``."""
    if c is None:
        return "checksum: none (no sample input: no input_shape in the config, or a meta model)"
    return f"checksum: sha256={c['sha256']} sum={c['sum']:.9g} shape={c['shapes']}"


def sample_output(model: nn.Module, cfg: dict[str, Any]) -> tuple[torch.Tensor, Any] | None:
    """The seeded sample input of ``cfg`` and the model's output on it (``eval``, no grad).

    Returns ``None`` when the config has no ``input_shape``.
    """
    bc = normalize(cfg)
    if bc.input_shape is None or _on_meta(model):
        return None
    first = next(iter(model.parameters()), None)
    dev = first.device if first is not None else devices.resolve_device(bc.device)
    x = sample_input(bc, dev)
    return x, run_sample(model, x)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _describe(
    model: nn.Module, cfg: dict[str, Any], out_dir: Path | None = None
) -> tuple[dict[str, Any] | None, Any]:
    """Log the summary and checksum; return the checksum and the sample input.

    The summary also goes to ``summary.txt`` in ``out_dir``; in a sweep it is logged at
    debug level only, so the console shows each job's checksum, not every table.
    """
    text = mf.summary(model)
    if out_dir is not None:
        (out_dir / SUMMARY_FILE).write_text(text + "\n")
    log.log(logging.DEBUG if _in_sweep() else logging.INFO, "%s", text)
    sample = sample_output(model, cfg)
    c = checksum(sample[1]) if sample is not None else None
    log.info("%s", format_checksum(c))
    return c, (sample[0] if sample is not None else None)


def build_job(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """Build, describe, save the checkpoint and ``metrics.json`` into ``out_dir``.

    With ``train`` set, the model is trained *after* the checkpoint is saved: the checkpoint
    is the model at initialization (what ``restore=`` prints the checksum of), and the
    training record (loss per step, coordinate check) goes to ``metrics.json`` only.

    Args:
        cfg: the app's composed config; all but the app's own keys reach
            :func:`modelfactory.build`.
        out_dir: the Hydra run (or job) directory.

    Returns:
        The metrics written to ``metrics.json``: the init report, the checksum and, with
        ``train`` set, the ``train`` record.
    """
    train = cfg.get("train")  # resolved alone: build resolves the rest of the config once
    tc = _train_config(to_plain(train) if train is not None else None)
    model = mf.build(build_config(cfg))
    built = mf.config_of(model)
    if tc is not None and built.get("input_shape") is None:
        raise ConfigError([("input_shape", "train needs the sample input_shape of the model")])
    c, x = _describe(model, built, out_dir)
    if _on_meta(model):
        log.info("device meta: a skeleton without values, so no checksum and no checkpoint")
        (out_dir / METRICS_FILE).write_text(json.dumps({"checksum": None}, indent=1))
        return {"checksum": None}
    with Spinner(f"saving checkpoint to {out_dir}"):
        mf.save(model, out_dir, max_shard_size=cfg.get("max_shard_size"))
    metrics: dict[str, Any] = {"checksum": c}
    if x is not None:
        metrics.update(mf.init_report(model, x))
    if tc is not None:
        metrics["train"] = _train(model, tc, int(built["seed"]), x)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    log.info("checkpoint and %s written to %s", METRICS_FILE, out_dir)
    return metrics


def _train_config(node: Any) -> training.TrainConfig | None:
    """The ``train`` group's settings; ``None`` (``train=none``) imports no training code."""
    if node is None:
        return None
    from . import train as training

    return training.parse_train(node)


def _train(
    model: nn.Module, tc: training.TrainConfig, seed: int, sample: torch.Tensor
) -> dict[str, Any]:
    from . import train as training

    with step_bar(tc.steps + 1, f"train={tc.task}", in_sweep=_in_sweep()) as bar:
        record = training.train(model, tc, seed, sample, bar)
    losses = record["loss"]
    if record["diverged"]:
        d = record["diverged"]
        log.warning("training diverged: loss %s at step %d of %d", d["loss"], d["step"], tc.steps)
    else:
        log.info(
            "trained %d steps (%s, %s lr=%g): loss %.4g -> %.4g",
            tc.steps,
            record["task"],
            tc.optimizer,
            tc.lr,
            losses[0],
            losses[-1],
        )
    return record


def check_overrides(cfg: Any, overrides: list[str]) -> None:
    """Refuse an override that names a top-level key nothing uses: a typo typed on the
    command line (``+d_modle=128``), which :func:`modelfactory.build` would ignore.

    Args:
        cfg: the app's composed config.
        overrides: the task overrides as typed (``HydraConfig.get().overrides.task``).

    Raises:
        ConfigError: naming each such key, with the closest key that is used.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    top = {ov.key_or_group.split(".")[0] for ov in parsed if not ov.is_delete()}
    # A key not in the config is a group's name (its options may live elsewhere: _global_).
    typed = [k for k in sorted(top) if k in cfg and k not in (*BUILD_KEYS, *APP_KEYS)]
    if not typed:
        return
    used = referenced_top_keys(OmegaConf.to_container(cfg, resolve=False))
    unused = [k for k in typed if k not in used]
    if not unused:
        return
    knobs = sorted(k for k in used if k in cfg and k not in (*BUILD_KEYS, *APP_KEYS))
    keys = (*BUILD_KEYS, *APP_KEYS, *knobs)
    problems = []
    for k in unused:
        hint = close_key(k, keys)
        did = f" (did you mean {hint!r}?)" if hint else ""
        problems.append(
            (
                k,
                f"nothing in the config uses this key{did}; an override names a config key "
                f"({', '.join((*BUILD_KEYS, *APP_KEYS))}) or a knob of the model "
                f"({', '.join(knobs) or 'it has none'})",
            )
        )
    raise ConfigError(problems, header="An override names a top-level key that nothing uses:")


# What may come with restore=: the model comes from the checkpoint, only its placement
# (and which targets to trust) from the command line.
RESTORE_OVERRIDES = ("restore", "trusted", "device", "device.device", "device.dtype")
RESTORE_OVERRIDES += ("mesh", "mesh.size", "mesh.units")  # restore sharded (_app/sharded.py)


def restore_placement(cfg: Any, overrides: list[str]) -> dict[str, str]:
    """The ``device`` / ``dtype`` a restore honours, from the command line's overrides.

    Args:
        cfg: the app's composed config.
        overrides: the task overrides as typed (``HydraConfig.get().overrides.task``).

    Returns:
        ``{"device": ..., "dtype": ...}`` for what was overridden (``device=bf16`` sets both).

    Raises:
        ConfigError: naming each override a restore cannot honour (``model=...``, ``seed=``,
            ``device.map``): the architecture and values come from the checkpoint alone.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [ov.key_or_group for ov in OverridesParser.create().parse_overrides(list(overrides))]
    refused = [k for k in keys if k not in RESTORE_OVERRIDES]
    if "device" in keys and cfg.device.get("map") is not None:
        refused.append("device.map")
    if refused:
        raise ConfigError(
            [(k, "this override cannot apply to a restore") for k in refused],
            header="restore= rebuilds the model from the checkpoint alone; only device=, "
            "device.device=, device.dtype= and trusted= apply to it:",
        )
    placement = {}
    if "device" in keys or "device.device" in keys:
        placement["device"] = str(cfg.device.device)
    if "device" in keys or "device.dtype" in keys:
        placement["dtype"] = str(cfg.device.dtype)
    return placement


def restore_job(
    path: str,
    trusted: list[str] | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any] | None:
    """Load a checkpoint and log the same summary and checksum as the run that saved it.

    Args:
        path: a checkpoint directory or its ``model.safetensors``.
        trusted: extra ``_target_`` prefixes the checkpoint's config may name.
        device: where to place the model (``None``: the CPU).
        dtype: a floating dtype to cast the model to (``None``: as saved).

    Returns:
        The checksum (``None`` when the saved config has no ``input_shape``).
    """
    with Spinner(f"loading {path}"):
        # the sample pass below runs for real: bound it before any weight is read
        model = load_model(path, device, dtype, list(trusted or []), checks=(check_sample_pass,))
    cfg = mf.config_of(model)
    knobs = record_of(model).knobs
    shown = ", ".join(f"{k}={v}" for k, v in knobs.items())
    log.info("restored %s%s", path, f" (knobs: {shown})" if shown else "")
    return _describe(model, cfg)[0] if cfg is not None else None


def verify_job(path: str) -> Any:
    """Recompute a checkpoint's content digest and compare it with the stored one.

    Returns:
        What :func:`modelfactory.verify` returns; it raises on a mismatch.
    """
    with Spinner(f"verifying {path}"):
        result = mf.verify(path)
    log.info(
        "verified %s: OK, %d tensors (%s bytes) match the digests stored at save time",
        result.file,
        result.tensors,
        f"{result.nbytes:,}",
    )
    return result
