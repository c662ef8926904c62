"""The zoo's Llama against Hugging Face's: building it, and loading it in a fresh process.

    python benchmarks/bench_zoo.py [--repeat 3] [--size 1b|tiny]

Build: ``mf.build(compose(["model=llama", <TinyLlama-1.1B's sizes>]))`` with its default
init (``init=transformer``: N(0, 0.02) weights, as Hugging Face's) against
``LlamaForCausalLM(config)`` with the same sizes, whose constructor runs the same init.
Both allocate and fill every parameter on the CPU; each figure is the minimum over
``--repeat`` rounds, run interleaved in this one process.

Load: the same weights saved twice, with ``mf.save`` and with ``mf.save(convert="hf_llama")``;
then ``mf.load(dir)``, ``mf.load(dir, mmap=True)`` and ``LlamaForCausalLM.from_pretrained(dir)``,
each in a fresh Python process that imports what it needs, restores the model and reads every
weight once (mmap defers reads), timed from outside (process start to exit). Medians over
``--repeat`` interleaved runs. ``from_pretrained`` keeps the weights memory-mapped from the file
(no copy), as ``mmap=True`` does; ``mf.load``'s default reads them into memory of its own (the
file may then change or go), which costs a copy of the whole file.

Goals (issue 19): building at most 1.0x Hugging Face's constructor; loading at least 2x
faster than ``from_pretrained``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# TinyLlama-1.1B: 1.10B parameters, untied head.
SIZES = {
    "1b": dict(vocab_size=32000, d_model=2048, n_layer=22, n_head=32, n_kv_head=4, d_ff=5632),
    "tiny": dict(vocab_size=512, d_model=128, n_layer=2, n_head=4, n_kv_head=2, d_ff=344),
}
HF_NAMES = {
    "vocab_size": "vocab_size",
    "d_model": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "d_ff": "intermediate_size",
}
MAX_LEN, ROPE_THETA, NORM_EPS = 2048, 10000.0, 1e-6

LOAD_MF = """
import sys, modelfactory as mf
m = mf.load(sys.argv[1], mmap=sys.argv[2] == "mmap")
print(sum(float(t.sum()) for t in m.state_dict().values()))
"""
LOAD_HF = """
import sys
from transformers import LlamaForCausalLM
m = LlamaForCausalLM.from_pretrained(sys.argv[1])
print(sum(float(t.sum()) for t in m.state_dict().values()))
"""


def overrides(size: str) -> list[str]:
    knobs = {**SIZES[size], "max_len": MAX_LEN, "rope_theta": ROPE_THETA, "norm_eps": NORM_EPS}
    return ["model=llama", *(f"{k}={v}" for k, v in knobs.items())]


def hf_config(size: str) -> Any:  # a LlamaConfig (transformers is imported lazily)
    from transformers import LlamaConfig

    kw = {HF_NAMES[k]: v for k, v in SIZES[size].items()}
    return LlamaConfig(
        **kw,
        max_position_embeddings=MAX_LEN,
        rope_theta=ROPE_THETA,
        rms_norm_eps=NORM_EPS,
        tie_word_embeddings=False,
    )


def bench_build(size: str, repeat: int) -> dict[str, float]:
    import torch
    from transformers import LlamaForCausalLM

    import modelfactory as mf
    from modelfactory.configs import compose

    cfg, config = compose(overrides(size)), hf_config(size)
    with torch.device("meta"):
        torch.nn.Linear(2, 2)  # warm torch._dynamo's import (first init on meta)
    cases = {"mf.build": lambda: mf.build(cfg), "hf": lambda: LlamaForCausalLM(config)}
    best = dict.fromkeys(cases, float("inf"))
    params = 0
    for _ in range(repeat):
        for name, fn in cases.items():  # interleaved: load spikes hit both alike
            gc.collect()
            t = time.perf_counter()
            model = fn()
            best[name] = min(best[name], time.perf_counter() - t)
            params = sum(p.numel() for p in model.parameters())
            del model
    best["params"] = params
    return best


def bench_load(size: str, repeat: int, workdir: Path) -> dict[str, list[float]]:
    import modelfactory as mf
    from modelfactory.configs import compose

    model = mf.build(compose(overrides(size)))
    mf.save(model, workdir / "mf")
    mf.save(model, workdir / "hf", convert="hf_llama")
    del model
    gc.collect()
    for path in workdir.rglob("*"):  # into the page cache, the same for both
        if path.is_file():
            path.read_bytes()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs = {
        "mf.load": (LOAD_MF, workdir / "mf", "copy"),
        "mf.load(mmap=True)": (LOAD_MF, workdir / "mf", "mmap"),
        "hf": (LOAD_HF, workdir / "hf", ""),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    sums: dict[str, set[str]] = {name: set() for name in runs}
    for _ in range(repeat):
        for name, (code, path, how) in runs.items():
            t = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", code, str(path), how],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            )
            times[name].append(time.perf_counter() - t)
            sums[name].add(f"{float(out.stdout.split()[-1]):.4e}")
    if len(set().union(*sums.values())) != 1:
        print(f"WARNING: the loaded weights differ: {sums}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    build = bench_build(args.size, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        load = bench_load(args.size, args.repeat, Path(tmp))
    hf_load = statistics.median(load["hf"])
    print(f"model=llama, {build['params'] / 1e9:.2f}B parameters ({args.size}), fp32, CPU")
    print(f"{'case':44s} {'modelfactory':>13s} {'transformers':>13s} {'ratio':>7s}  goal")
    ratio = build["mf.build"] / build["hf"]
    print(
        f"{'build with init (best of ' + str(args.repeat) + ')':44s} {build['mf.build']:12.2f}s "
        f"{build['hf']:12.2f}s {ratio:6.2f}x  <= 1.0x (mf / hf)"
    )
    for name in ("mf.load", "mf.load(mmap=True)"):
        mf_load = statistics.median(load[name])
        case = f"whole-process {name} (median of {args.repeat})"
        print(
            f"{case:44s} {mf_load:12.2f}s {hf_load:12.2f}s {hf_load / mf_load:6.2f}x  "
            ">= 2x faster (hf / mf)"
        )


if __name__ == "__main__":
    main()
