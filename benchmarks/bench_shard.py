"""Save and load of a model over 2 GB: one file vs shards of 500 MB, time and peak RSS.

The model: 12 blocks of ``Linear(1600, 14000)`` + ``Linear(14000, 1600)``, float32
(538M parameters, 2.15 GB). Each measurement runs in a fresh process; imports, the build
(for saves) and a load of a tiny checkpoint of the same kind (for loads, to import the
code paths) happen before the timer. Peak RSS growth is VmHWM (reset through
``/proc/self/clear_refs``) minus VmRSS at the start of the timed span. A load touches every
weight once inside the timer (a sum), so a memory-mapped load pays for its reads too. The
files are read from the page cache (they were just written): this measures modelfactory,
not the disk.

    python benchmarks/bench_shard.py [--repeat 3] [--dir /tmp/bench_shard]

Needs about 2.2 GB of RAM per process and 4.3 GB of disk. Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

WIDTH, HIDDEN, BLOCKS = 1600, 14000, 12
LAYOUTS = {"single file": None, "shards of 500MB": "500MB"}


def config(width: int, hidden: int, blocks: int) -> dict:
    block = {
        "_target_": "modelfactory.blocks.Sequential",
        "layers": [
            {"_target_": "torch.nn.Linear", "in_features": width, "out_features": hidden},
            {"_target_": "torch.nn.Linear", "in_features": hidden, "out_features": width},
        ],
    }
    init = {"rules": [{"params": "*", "fn": {"_target_": "torch.nn.init.zeros_"}}]}
    model = {"_target_": "modelfactory.blocks.Repeat", "n": blocks, "block": block}
    return {"model": model, "init": init}


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _timed(work) -> dict[str, float]:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    rss0 = _kib("VmRSS")
    t = time.perf_counter()
    work()
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_rss_growth_mib": (_kib("VmHWM") - rss0) / 1024}


def child(action: str, target: Path, size: str | None, mmap: bool) -> dict[str, float]:
    """One measurement, in a fresh process."""
    import torch

    import modelfactory as mf
    import modelfactory.checkpoint

    torch.set_num_threads(2)
    if action == "save":
        model = mf.build(config(WIDTH, HIDDEN, BLOCKS))
        shutil.rmtree(target, ignore_errors=True)
        return _timed(lambda: mf.save(model, target, max_shard_size=size))
    tiny = target.with_name(target.name + "-tiny")
    mf.save(mf.build(config(8, 16, 2)), tiny, max_shard_size=size and 200)
    mf.load(tiny, mmap=mmap)

    def load() -> None:
        model = mf.load(target, mmap=mmap)
        for p in model.parameters():  # every weight read once
            p.sum()

    return _timed(load)


def run(action: str, target: Path, size: str | None, mmap: bool = False) -> dict[str, float]:
    args = [action, str(target), size or "-", str(int(mmap))]
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_shard"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        action, target, size, mmap = a.child
        print(json.dumps(child(action, Path(target), None if size == "-" else size, mmap == "1")))
        return
    gb = BLOCKS * 2 * (WIDTH * HIDDEN + (WIDTH + HIDDEN)) * 4 / 1e9
    print(f"model: {BLOCKS} blocks of Linear({WIDTH}, {HIDDEN}) + Linear({HIDDEN}, {WIDTH}), "
          f"float32, {gb:.2f} GB; medians of {a.repeat} fresh processes")  # fmt: skip
    rows = []
    for name, size in LAYOUTS.items():
        target = a.dir / name.replace(" ", "_")
        runs = {
            "save": [run("save", target, size) for _ in range(a.repeat)],
            "load": [run("load", target, size) for _ in range(a.repeat)],
            "load mmap=True": [run("load", target, size, mmap=True) for _ in range(a.repeat)],
        }
        files = sorted(p.name for p in target.iterdir())
        for action, results in runs.items():
            s = statistics.median(r["seconds"] for r in results)
            m = statistics.median(r["peak_rss_growth_mib"] for r in results)
            rows.append((name, action, s, m))
        print(f"{name}: {len(files)} files ({', '.join(files[:2])}{', ...' * (len(files) > 2)})")
    print("\n| layout | action | time (s) | peak RSS growth (MiB) |\n|---|---|---|---|")
    for name, action, s, m in rows:
        print(f"| {name} | {action} | {s:.2f} | {m:,.0f} |")
    shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
