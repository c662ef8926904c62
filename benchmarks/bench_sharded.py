"""Build and load a model about 4x larger than one rank may hold, sharded over N processes.

The model: ``--blocks`` blocks of ``Linear(width, hidden)`` + ``Linear(hidden, width)``,
float32, PyTorch's default init (by default 32 blocks of 1024 x 4096: 268M parameters,
1.0 GiB). Each of ``--ranks`` processes (gloo, CPU) may grow by ``--limit`` MiB of
resident memory beyond what it holds after its imports, by default a quarter of the
model: a watchdog thread kills a process that goes over, and the peak (VmHWM) is checked
after each step too. (Resident memory, not ``RLIMIT_DATA`` or ``RLIMIT_AS``: safetensors
maps the whole file, privately, which those count though it holds no memory.) First the
plan of the model is printed (nothing built), and that of Llama-3-70B (the zoo's llama at
its public sizes), with its time and memory; then, in each rank:

- build: ``mf.build(cfg, mesh=mesh)``; two parameters are checked against the
  checkpoint that one process (no limit) wrote beforehand, bit for bit;
- load: ``mf.load(ckpt, mesh=mesh)`` of that checkpoint, each rank reading its rows.

Per rank: time and peak RSS growth (VmHWM, reset through ``/proc/self/clear_refs``, minus
VmRSS at the start; what the step before freed is collected and given back to the system
first). For scale, one process builds the same model under the same limit.
Imports and a tiny sharded build and load happen before the timers.

    python benchmarks/bench_sharded.py [--ranks 6] [--limit 256] [--dir /tmp/bench_sharded]

Needs about 2.5 GB of RAM for the one-process checkpoint writer, then ``ranks x`` about
450 MB. Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any


def config(width: int, hidden: int, blocks: int) -> dict[str, Any]:
    block = {
        "_target_": "modelfactory.blocks.Sequential",
        "layers": [
            {"_target_": "torch.nn.Linear", "in_features": width, "out_features": hidden},
            {"_target_": "torch.nn.Linear", "in_features": hidden, "out_features": width},
        ],
    }
    return {"model": {"_target_": "modelfactory.blocks.Repeat", "n": blocks, "block": block}}


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Watchdog:
    """Kills this process (exit 3) when its resident memory grows more than ``mib`` past the
    start of the step being timed."""

    def __init__(self, mib: int) -> None:
        self.mib = mib
        self.cap = _kib("VmRSS") + mib * 1024
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            if _kib("VmRSS") > self.cap:
                os.write(2, b"watchdog: over the memory limit\n")
                os._exit(3)
            time.sleep(0.002)

    def timed(self, work: Any) -> tuple[Any, dict[str, Any]]:
        """``work()``, its time and peak RSS growth (memory freed before is given back to
        the system first, so that the growth is this step's)."""
        gc.collect()  # a sharded model holds reference cycles (FSDP2's hooks)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
        rss0 = _kib("VmRSS")
        self.cap = rss0 + self.mib * 1024
        t = time.perf_counter()
        out = work()
        seconds = time.perf_counter() - t
        peak = (_kib("VmHWM") - rss0) / 1024
        return out, {"s": seconds, "peak_mib": peak, "within": peak <= self.mib}


def rank_main(rank: int, world: int, a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from safetensors import safe_open
    from torch.distributed.device_mesh import init_device_mesh

    import modelfactory as mf

    torch.set_num_threads(1)
    store = f"file://{a.dir}/store"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    mf.load(a.dir / "tiny", mesh=mesh)  # imports and first-use costs, before the timers
    mf.build(config(8, 16, 2), mesh=mesh)
    watchdog = Watchdog(a.limit)
    cfg = config(a.width, a.hidden, a.blocks)
    model, build = watchdog.timed(lambda: mf.build(cfg, mesh=mesh))
    with safe_open(a.dir / "ckpt" / "model.safetensors", framework="pt") as f:
        for name in ("0.0.weight", f"{a.blocks - 1}.1.bias"):  # one process's values
            assert torch.equal(model.get_parameter(name).full_tensor(), f.get_tensor(name))
    del model
    model, load = watchdog.timed(lambda: mf.load(a.dir / "ckpt", mesh=mesh))
    del model
    (a.dir / f"rank{rank}.json").write_text(json.dumps({"build": build, "load": load}))
    dist.barrier()
    dist.destroy_process_group()


def one_process(a: argparse.Namespace) -> None:
    import modelfactory as mf

    mf.build(config(8, 16, 2))
    _, result = Watchdog(a.limit).timed(lambda: mf.build(config(a.width, a.hidden, a.blocks)))
    (a.dir / "one.json").write_text(json.dumps(result))


# Llama-3-70B (the zoo's llama at its public sizes: 70.6B parameters): what plans "in
# seconds, in under 1 GB".
BIG = ["model=llama", "n_layer=80", "d_model=8192", "n_head=64", "n_kv_head=8", "d_ff=28672"]
BIG += ["vocab_size=128256", "max_len=8192", "rope_theta=500000", "norm_eps=1e-5"]
BIG += ["input_shape=[1,8192]", "device.dtype=bfloat16"]


def plan_big(out: Path) -> None:
    """In a fresh process: the plan of :data:`BIG`, its time and the process's peak RSS."""
    import modelfactory as mf
    from modelfactory.configs import compose

    cfg = compose(BIG)
    t = time.perf_counter()
    plan = mf.plan(cfg, world_size=64)
    seconds = time.perf_counter() - t
    out.write_text(json.dumps({"s": seconds, "rss_mib": _kib("VmHWM") / 1024, "table": str(plan)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=6)
    parser.add_argument("--limit", type=int, default=256, help="MiB per rank")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_sharded"))
    a = parser.parse_args()
    import torch.multiprocessing as mp

    import modelfactory as mf

    cfg = config(a.width, a.hidden, a.blocks)
    t = time.perf_counter()
    plan = mf.plan(cfg, world_size=a.ranks)
    print(f"plan ({time.perf_counter() - t:.2f} s, nothing built):\n{plan}\n")
    model_mib, shard = (plan.param_bytes + plan.buffer_bytes) / 2**20, plan.rank_bytes / 2**20
    print(f"model {model_mib:,.0f} MiB = {model_mib / a.limit:.1f}x the per-rank limit of "
          f"{a.limit} MiB; each of {a.ranks} ranks holds {shard:,.0f} MiB")  # fmt: skip
    shutil.rmtree(a.dir, ignore_errors=True)
    a.dir.mkdir(parents=True)
    big = mp.get_context("spawn").Process(target=plan_big, args=(a.dir / "big.json",))
    big.start()
    big.join()
    r = json.loads((a.dir / "big.json").read_text())
    print(f"\n{' '.join(BIG)}: planned in {r['s']:.1f} s, process peak RSS {r['rss_mib']:,.0f} MiB "
          f"(imports included)\n{r['table']}\n")  # fmt: skip
    t = time.perf_counter()
    whole = mf.build(cfg)
    print(f"one process, no limit: built in {time.perf_counter() - t:.2f} s")
    mf.save(whole, a.dir / "ckpt")  # what the ranks load
    del whole
    mf.save(mf.build(config(8, 16, 2)), a.dir / "tiny")
    one = mp.get_context("spawn").Process(target=one_process, args=(a,))
    one.start()
    one.join()
    seen = "killed by the watchdog" if one.exitcode == 3 else f"exit {one.exitcode}"
    if one.exitcode == 0:
        seen = "built, peak {peak_mib:,.0f} MiB".format(
            **json.loads((a.dir / "one.json").read_text())
        )
    print(f"one process, same limit: {seen}\n")
    mp.start_processes(rank_main, args=(a.ranks, a), nprocs=a.ranks, start_method="spawn")
    print("| rank | build (s) | build: peak RSS growth (MiB) | load (s) | load: peak (MiB) |")
    print("|---|---|---|---|---|")
    for rank in range(a.ranks):
        r = json.loads((a.dir / f"rank{rank}.json").read_text())
        b, ld = r["build"], r["load"]
        cells = [f"{x['peak_mib']:,.0f}" + ("" if x["within"] else " OVER") for x in (b, ld)]
        print(f"| {rank} | {b['s']:.2f} | {cells[0]} | {ld['s']:.2f} | {cells[1]} |")
    shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
