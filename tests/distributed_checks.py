"""What tests/test_distributed.py checks, run inside one process group.

Three ranks (gloo, CPU) start once (:func:`start`); every check runs on a mesh of all
three and on one of ranks 0 and 1 (rank 2 waits), and records what it saw in
``rank<N>.json``; the tests assert on those records. Shapes are uneven on purpose
(37 rows over 2 and 3 ranks).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist

from .read_recorder import Recorder, byte_ranges

CONFIGS = {
    "gpt": [
        "model=gpt_small",
        *("vocab_size=37", "d_model=24", "n_head=4", "d_ff=40", "max_len=16", "n_layer=3"),
        "input_shape=[2,8]",
    ],
    "lazy": ["model=lazy_mlp", "init=xavier"],
    "bf16": ["model=mlp", "init=per_block", "device.dtype=bfloat16"],
    "shared": ["model=shared_mlp"],
    "resnet": [
        "model=resnet",
        *("width1=5", "width2=7", "depth1=1", "depth2=1", "input_shape=[1,3,4,4]"),
    ],
}
# A user's class (not trusted by default), with a non-persistent buffer drawn at construction.
MASKED = {
    "model": {
        "_target_": "modelfactory.blocks.Repeat",
        "n": 2,
        "block": {"_target_": "tests.io_targets.MaskedLinear", "features": 5},
    },
    "input_shape": [2, 5],
}
SAVED = {"gpt": "1KB", "resnet": None}  # saved and loaded: name -> max_shard_size
ON_TWO = ("gpt", "shared", "resnet")  # built on the mesh of 2 ranks too (all on the mesh of 3)


def composed() -> dict[str, dict[str, Any]]:
    """Each config of :data:`CONFIGS`, composed (by the test process: Hydra's composition
    costs about 0.3 s a config, in each rank) as plain data with its knobs."""
    from omegaconf import OmegaConf

    from modelfactory.configs import compose

    out = {n: OmegaConf.to_container(compose(o), resolve=False) for n, o in CONFIGS.items()}
    return {**out, "masked": MASKED}


def start(world: int, out: str, configs: dict[str, dict[str, Any]]) -> None:
    """In a fresh (spawned) process: import what every rank needs, once, then fork the
    ranks, which so start in milliseconds instead of importing torch, DTensor and Hydra
    again (about 3.5 s of CPU a rank). This process has run no torch op (no thread pool to
    inherit), which is what makes the fork safe."""
    import hydra  # noqa: F401  (the command's check)
    import torch.distributed.fsdp
    import torch.distributed.tensor  # noqa: F401
    import torch.multiprocessing as mp

    import modelfactory.cli
    import modelfactory.distributed.build
    import modelfactory.distributed.load
    import modelfactory.distributed.save  # noqa: F401

    mp.start_processes(main, args=(world, out, configs), nprocs=world, start_method="fork")


def main(rank: int, world: int, out: str, configs: dict[str, dict[str, Any]]) -> None:
    """One rank: start the group, run every check, write ``rank<N>.json``."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    store = f"file://{out}/store"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))  # fmt: skip
    meshes = {"3": init_device_mesh("cpu", (world,)), "2": DeviceMesh("cpu", [0, 1])}
    seen: dict[str, Any] = {}
    out_dir = Path(out)
    if rank == 0:
        _save_references(out_dir, configs)
    dist.barrier()
    for size, mesh in meshes.items():
        if mesh.get_coordinate() is None:
            continue
        for name, cfg in configs.items():
            if size == "3" or name in ON_TWO:
                seen[f"build/{size}/{name}"] = check_build(cfg, mesh, out_dir, name)
        for name in SAVED:
            for layout in ("single", "sharded"):
                seen[f"load/{size}/{name}/{layout}"] = check_load(
                    out_dir / f"ref_{name}_{layout}", mesh
                )
        seen[f"load_weights/{size}"] = check_load_weights(configs["gpt"], out_dir, mesh)
        seen[f"load_bf16/{size}"] = check_load_cast(out_dir / "ref_gpt_sharded", mesh)
        if size == "3":
            seen["old_checkpoints"] = check_old_checkpoints(mesh)
            seen["untrusted"] = check_untrusted(out_dir / "ref_masked", mesh)
    seen["cli"] = check_cli(rank, out_dir)
    dist.barrier()
    dist.destroy_process_group()
    seen["errors"] = check_errors(configs["lazy"], meshes["3"], out_dir)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(seen))


def _save_references(out: Path, configs: dict[str, dict[str, Any]]) -> None:
    """One-process checkpoints: what sharded saves must equal, what sharded loads read."""
    import modelfactory as mf

    for name, limit in SAVED.items():
        model = mf.build(configs[name])
        mf.save(model, out / f"ref_{name}_single")
        mf.save(model, out / f"ref_{name}_sharded", max_shard_size=limit or "2KB")
    mf.save(mf.build(MASKED), out / "ref_masked")


def _all_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**model.state_dict(), **dict(model.named_buffers())}


def _gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return {
        k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in _all_tensors(model).items()
    }


def _different(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ in value or dtype, or that only one side has."""
    bad = sorted(set(a) ^ set(b))
    return bad + [
        k for k in a if k in b and (a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k]))
    ]


def _sample(model: torch.nn.Module) -> torch.Tensor:
    import modelfactory as mf
    from modelfactory._config import normalize
    from modelfactory._sample import sample_input

    return sample_input(normalize(mf.config_of(model)), torch.device("cpu"))


def _local_bytes(model: torch.nn.Module) -> int:
    """What this rank holds: each parameter's local storage (FSDP2 pads it) and the buffers."""
    from torch.distributed.tensor import DTensor

    params = {id(p): p for p in model.parameters()}.values()
    total = sum(
        p.to_local().untyped_storage().nbytes() if isinstance(p, DTensor) else p.nbytes
        for p in params
    )
    return total + sum(b.nbytes for b in model.buffers())


def _rows_bytes(model: torch.nn.Module) -> int:
    """This rank's rows of each parameter (no padding) and the buffers."""
    from torch.distributed.tensor import DTensor

    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.to_local().nbytes if isinstance(p, DTensor) else p.nbytes for p in params)
    return total + sum(b.nbytes for b in model.buffers())


def check_build(cfg: dict[str, Any], mesh: Any, out: Path, name: str) -> dict[str, Any]:
    """Gathered values, ties, forward, bytes per rank; the collective save of it."""
    import modelfactory as mf
    from modelfactory.distributed import resharded

    ref = mf.build(cfg)
    model = mf.build(cfg, mesh=mesh)
    seen = {"bad": _different(_gathered(model), _all_tensors(ref))}
    ties = mf.config_of(model) and _record_ties(model)
    seen["ties"] = ties
    seen["params"] = len({id(p) for p in model.parameters()})
    seen["ref_params"] = len({id(p) for p in ref.parameters()})
    x = _sample(ref)
    ref.eval()
    model.eval()
    with torch.no_grad():
        seen["forward_equal"] = torch.equal(ref(x), model(x))
    model.train()  # as the one-process model is saved
    seen["local_bytes"] = _local_bytes(resharded(model))
    if name in SAVED:
        seen["save"] = check_save(model, out, name, mesh)
    return seen


def _record_ties(model: torch.nn.Module) -> list[bool]:
    """For each tie of the build record: whether all its names are one object now."""
    from modelfactory._record import record_of

    out = []
    for kind, names in record_of(model).ties:
        get = model.get_submodule if kind == "module" else model.get_parameter
        out.append(all(get(n) is get(names[0]) for n in names))
    return out


def check_save(model: torch.nn.Module, out: Path, name: str, mesh: Any) -> dict[str, Any]:
    """The sharded save, one file and shards, against the one-process save."""
    import modelfactory as mf

    seen: dict[str, Any] = {}
    for layout, limit in (("single", None), ("sharded", SAVED[name] or "2KB")):
        target = out / f"saved_{mesh.size()}_{name}_{layout}"
        written = mf.save(model, target, max_shard_size=limit)
        ref = out / f"ref_{name}_{layout}"
        seen[layout] = {"written": str(written.relative_to(target))}
        if dist.get_rank() == 0:
            files = sorted(p.name for p in ref.iterdir())
            seen[layout]["files"] = files == sorted(p.name for p in target.iterdir())
            seen[layout]["same_bytes"] = all(
                (ref / f).read_bytes() == (target / f).read_bytes() for f in files
            )
            a = _file_tensors(ref)
            seen[layout]["same_tensors"] = not _different(_file_tensors(target), a)
            seen[layout]["n"] = len(a)
    return seen


def _file_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every stored tensor of a checkpoint directory, as safetensors reads them (the 64-byte
    alignment padding left out)."""
    out: dict[str, torch.Tensor] = {}
    for f in directory.glob("*.safetensors"):
        out.update(safetensors.torch.load_file(f))
    return {k: v for k, v in out.items() if not k.startswith("__modelfactory_pad__")}


def check_load(path: Path, mesh: Any) -> dict[str, Any]:
    """``load(mesh=...)``: values equal to the file; the byte ranges this rank read."""
    import modelfactory as mf
    from modelfactory.distributed import load as loading

    real = loading.safe_open
    loading.safe_open = recorder = Recorder(real)
    try:
        model = mf.load(path, mesh=mesh)
    finally:
        loading.safe_open = real
    stored = mf.load_tensors(path)  # every name, tied ones too
    gathered = _gathered(model)
    ranges = byte_ranges(recorder.reads)
    return {
        "bad": _different(gathered, stored),
        "ties": _record_ties(model),
        "ranges": ranges,
        "read_bytes": sum(e - s for *_, s, e in ranges),
        "rows_bytes": _rows_bytes(model),
        "file_bytes": sum(t.nbytes for t in _file_tensors(path).values()),
        "buffers": sorted(n for n, _ in model.named_buffers()),
    }


def check_load_cast(path: Path, mesh: Any) -> list[str]:
    """``load(mesh=..., dtype=...)`` against a one-process ``load(dtype=...)``."""
    import modelfactory as mf

    sharded = mf.load(path, mesh=mesh, dtype="bfloat16")
    return _different(_gathered(sharded), _all_tensors(mf.load(path, dtype="bfloat16")))


def check_old_checkpoints(mesh: Any) -> dict[str, list[str]]:
    """Every checkpoint kept in ``tests/data`` (older format versions, lazy layers, shards)
    loads sharded with a one-process load's values."""
    import modelfactory as mf

    data = Path(__file__).parent / "data"
    return {
        d.name: _different(_gathered(mf.load(d, mesh=mesh)), _all_tensors(mf.load(d)))
        for d in sorted(data.iterdir())
    }


def check_untrusted(path: Path, mesh: Any) -> dict[str, Any]:
    """A checkpoint naming a class outside the trusted prefixes: refused before any tensor
    is read; trusted, it loads with a one-process load's values."""
    import modelfactory as mf
    from modelfactory.distributed import load as loading

    real = loading.safe_open
    loading.safe_open = recorder = Recorder(real)
    try:
        mf.load(path, mesh=mesh)
        error = "no error"
    except mf.UntrustedTargetError as e:
        error = str(e)
    finally:
        loading.safe_open = real
    trusted = mf.load(path, mesh=mesh, trusted=["tests.*"])
    bad = _different(_gathered(trusted), _all_tensors(mf.load(path, trusted=["tests.*"])))
    return {"error": error, "reads": len(recorder.reads), "bad": bad}


def check_load_weights(cfg: dict[str, Any], out: Path, mesh: Any) -> dict[str, Any]:
    """``load_weights`` (from the sharded checkpoint) into a sharded model of another seed."""
    import modelfactory as mf

    model = mf.build(cfg, seed=1, mesh=mesh)
    stored = mf.load_tensors(out / "ref_gpt_single")
    before = _different(_gathered(model), stored)
    mf.load_weights(model, out / "ref_gpt_sharded", mesh=mesh)
    return {"before": len(before), "bad": _different(_gathered(model), stored)}


def check_cli(rank: int, out: Path) -> dict[str, Any]:
    """The command as under torchrun (``RANK`` set): each rank builds its shard, rank 0
    writes the run directory; ranks run in directories of their own, which stay empty but
    for rank 0's plan run (``plan=true``, in ``outputs/``)."""
    from modelfactory import cli

    cwd = out / f"cwd{rank}"
    cwd.mkdir()
    os.chdir(cwd)
    os.environ["RANK"] = str(rank)
    argv = sys.argv
    try:
        if rank == 0:  # the plan: no collective, nothing built
            plan = ["plan=true", "mesh.size=3", "max_shard_size=10KB"]
            sys.argv = ["modelfactory", "mesh=fsdp", *CONFIGS["gpt"], *plan]
            cli.main()
        sys.argv = ["modelfactory", "mesh=fsdp", *CONFIGS["gpt"], f"hydra.run.dir={out}/cli_run"]
        cli.main()
        restore = [f"restore={out}/cli_run", f"hydra.run.dir={out}/cli_restore"]
        sys.argv = ["modelfactory", "mesh=fsdp", *restore]
        cli.main()
    finally:
        sys.argv = argv
    return {"cwd": sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file())}


def check_errors(cfg: dict[str, Any], mesh: Any, out: Path) -> dict[str, str]:
    """After the group is destroyed: a build and a load over the old mesh."""
    import modelfactory as mf

    seen = {}
    for what, call in (
        ("build", lambda: mf.build(cfg, mesh=mesh)),
        ("load", lambda: mf.load(out / "ref_gpt_single", mesh=mesh)),
    ):
        try:
            call()
            seen[what] = "no error"
        except mf.ModelFactoryError as e:
            seen[what] = f"{type(e).__name__}: {e}"
    return seen
