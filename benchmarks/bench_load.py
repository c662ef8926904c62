"""Restore time and memory of a GPT-2-sized checkpoint (~124M parameters, fp32).

Each measurement runs in a fresh process. Imports, config composition and the first
``normal_`` on ``meta`` (which imports ``torch._dynamo``) happen before the timer; inside
it, the model is restored and every weight is read once (mmap defers reads, so a restore
that touches nothing would look free). Peak RSS growth is measured over the same span.

    python benchmarks/bench_load.py [--repeat 3] [--model gpt2]

Methods:
    mf.load      modelfactory.load(dir)
    bare         safetensors load_file + build_skeleton on meta + load_state_dict(assign=True)
                 + re-tie: the least any safetensors restore of this model must do
    torch.load   build(cfg) (full init) + torch.load(state_dict, weights_only=True)
                 + load_state_dict
    hf           transformers GPT2LMHeadModel.from_pretrained (only if installed)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("mf.load", "bare", "torch.load", "hf")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(method: str, workdir: Path, model: str) -> dict[str, float]:
    """One measurement (runs in a fresh process)."""
    import torch
    from safetensors.torch import load_file

    import modelfactory as mf
    import modelfactory.checkpoint  # mf.load's import, outside the timer
    from modelfactory._record import record_of
    from modelfactory.configs import compose
    from modelfactory.factory import build_skeleton
    from modelfactory.tie import apply_ties, check_ties

    if method == "hf":
        from transformers import GPT2LMHeadModel  # optional, never a dependency
    cfg = compose([f"model={model}"])
    from modelfactory._config import normalize

    plain = normalize(cfg).resolved  # what a checkpoint stores: knobs applied, no ${...}
    torch.empty(1, device="meta").normal_()  # warm torch._dynamo's import
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    rss0 = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    if method == "mf.load":
        net = mf.load(workdir / "mf")
    elif method == "bare":
        tensors = load_file(workdir / "mf" / "model.safetensors")
        net = build_skeleton(plain)
        net.load_state_dict(tensors, strict=False, assign=True)
        apply_ties(net, record_of(net).ties)
        check_ties(net, record_of(net).ties)
    elif method == "torch.load":
        net = mf.build(plain)
        net.load_state_dict(torch.load(workdir / "state.pt", weights_only=True))
    else:
        net = GPT2LMHeadModel.from_pretrained(workdir / "hf")
    restore = time.perf_counter() - t0
    total = sum(float(t.sum()) for t in [*net.parameters(), *net.buffers()])
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "restore": restore,
        "rss_growth": (_rss_kib("VmHWM") - rss0) * 1024,
        "checksum": total,
    }


def prepare(workdir: Path, model: str) -> dict[str, int]:
    """Write the checkpoints every method reads; return their sizes in bytes."""
    import torch

    import modelfactory as mf
    from modelfactory.configs import compose

    net = mf.build(compose([f"model={model}"]))
    file = mf.save(net, workdir / "mf")
    torch.save(net.state_dict(), workdir / "state.pt")
    sizes = {"mf.load": file.stat().st_size, "torch.load": (workdir / "state.pt").stat().st_size}
    sizes["bare"] = sizes["mf.load"]
    if _has_transformers():
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(GPT2Config()).save_pretrained(workdir / "hf")
        sizes["hf"] = (workdir / "hf" / "model.safetensors").stat().st_size
    for path in workdir.rglob("*"):  # into the page cache, the same for every method
        if path.is_file():
            path.read_bytes()
    return sizes


def _has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def run(method: str, workdir: Path, model: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, "--workdir", str(workdir), "--model", model],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--child", choices=METHODS)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workdir, args.model)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sizes = prepare(workdir, args.model)
        methods = [m for m in METHODS if m in sizes]
        results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for _ in range(args.repeat):  # interleaved, so background load hits every method alike
            for m in methods:
                results[m].append(run(m, workdir, args.model))
    sums = {m: {round(r["checksum"], 3) for r in rs} for m, rs in results.items()}

    def stat(m: str, key: str, how=statistics.median) -> float:
        return how(r[key] for r in results[m])

    print(f"model={args.model}, {args.repeat} fresh processes per method (interleaved), imports")
    print("excluded; 'total' = restore + read every weight once; 'restore' = before the read\n")
    print(
        f"{'method':<11}{'total med s':>12}{'x bare':>7}{'total min s':>12}{'x bare':>7}"
        f"{'restore med s':>14}{'peak RSS +MB':>13}{'x file':>7}"
    )
    for m in methods:
        med, low = stat(m, "seconds"), stat(m, "seconds", min)
        rss = stat(m, "rss_growth")
        print(
            f"{m:<11}{med:>12.3f}{med / stat('bare', 'seconds'):>7.2f}{low:>12.3f}"
            f"{low / stat('bare', 'seconds', min):>7.2f}{stat(m, 'restore'):>14.3f}"
            f"{rss / 2**20:>13.0f}{rss / sizes[m]:>7.2f}"
        )
    print(f"\nfile size: {sizes['mf.load'] / 2**20:.0f} MB (safetensors)")
    if len(sums["mf.load"] | sums["bare"] | sums["torch.load"]) != 1:
        print("WARNING: methods disagree on the weights' checksum", sums)
    if "hf" not in sizes:
        print("hf: transformers is not installed; row left out")


if __name__ == "__main__":
    main()
