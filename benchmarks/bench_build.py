"""Build speed: modelfactory.build vs the same modules written by hand (and Hydra's instantiate).

Run by hand: ``python benchmarks/bench_build.py``. Each figure is the minimum of 7 runs in
this one process (the machine is shared and noisy); ratios are measured side by side.

Goals (issues 2 and 3): GPT-2-sized model with its init <= 1.05-1.1x by hand; a 200-block
deep MLP config (Linear 64->64 + ReLU per block) <= 1.3-1.5x by hand; building either on
``meta`` takes milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import modelfactory as mf
from modelfactory.blocks import Repeat, Residual, Sequential
from modelfactory.configs import compose
from modelfactory.layers import CausalSelfAttention, TokenPositionEmbedding


def best_of(fns: dict[str, Callable[[], object]], n: int = 7) -> dict[str, float]:
    """Minimum time of each function over ``n`` rounds, run interleaved so that load spikes
    on a shared machine hit every case alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(n):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def deep_block() -> dict:
    """Linear 64->64, ReLU: one block of the deep MLP."""
    return {
        "_target_": "torch.nn.Sequential",
        "_args_": [
            {"_target_": "torch.nn.Linear", "in_features": 64, "out_features": 64},
            {"_target_": "torch.nn.ReLU"},
        ],
    }


def deep_config(n: int = 200) -> dict:
    """The deep MLP written out: n blocks (the same tree Hydra's instantiate gets)."""
    return {"_target_": "torch.nn.Sequential", "_args_": [deep_block() for _ in range(n)]}


def deep_repeat_config(n: int = 200) -> dict:
    """The same model written the modelfactory way: one block, repeated."""
    return {"_target_": "modelfactory.blocks.Repeat", "n": n, "block": deep_block()}


def deep_by_hand(n: int = 200) -> nn.Module:
    return nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.ReLU()) for _ in range(n)])


def gpt_by_hand(
    vocab: int = 50257, d: int = 768, n: int = 12, heads: int = 12, max_len: int = 1024
) -> nn.Module:
    def block(_i: int) -> nn.Module:
        attn = Residual(Sequential({"ln": nn.LayerNorm(d), "mha": CausalSelfAttention(d, heads)}))
        mlp = Residual(
            Sequential(
                {
                    "ln": nn.LayerNorm(d),
                    "fc": nn.Linear(d, 4 * d),
                    "act": nn.GELU(approximate="tanh"),
                    "proj": nn.Linear(4 * d, d),
                }
            )
        )
        return Sequential({"attn": attn, "mlp": mlp})

    model = Sequential(
        {
            "embed": TokenPositionEmbedding(vocab, d, max_len),
            "blocks": Repeat(n, block),
            "ln_f": nn.LayerNorm(d),
            "head": nn.Linear(d, vocab, bias=False),
        }
    )
    model.head.weight = model.embed.tok.weight
    return model


def main() -> None:
    torch.set_num_threads(2)
    # Warm-ups: the first meta-device init imports torch._dynamo (~1.5 s).
    with torch.device("meta"):
        nn.Linear(2, 2)
    deep = deep_config()
    deep_mf = {"model": deep}
    gpt_cfg = compose(["model=gpt2"])
    mf.build(deep)
    init_rules = {
        "rules": [
            {
                "modules": ["Linear"],
                "params": "*weight",
                "fn": {"_target_": "torch.nn.init.normal_", "std": 0.01},
            },
            {"modules": ["Linear"], "params": "*bias", "fn": {"_target_": "torch.nn.init.zeros_"}},
        ]
    }

    def hand_init() -> None:
        m = deep_by_hand()
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.normal_(mod.weight, std=0.01)
                    nn.init.zeros_(mod.bias)

    dc = OmegaConf.create(deep)
    rep_mf = {"model": deep_repeat_config()}
    t = best_of(
        {
            "hand": deep_by_hand,
            "mf": lambda: mf.build(deep_mf),
            "mf_repeat": lambda: mf.build(rep_mf),
            "hand_init": hand_init,
            "mf_init": lambda: mf.build({**deep_mf, "init": init_rules}),
            "mf_repeat_init": lambda: mf.build({**rep_mf, "init": init_rules}),
            "meta": lambda: mf.build(deep_mf, device="meta"),
        },
        n=15,
    )
    t_hydra = best_of({"hydra": lambda: instantiate(dc)}, n=3)["hydra"]
    rows = [
        ("deep 200 blocks: by hand", t["hand"], 1.0),
        ("deep 200 blocks: mf.build", t["mf"], t["mf"] / t["hand"]),
        ("deep 200 blocks: mf.build, Repeat config", t["mf_repeat"], t["mf_repeat"] / t["hand"]),
        ("deep 200 blocks: hydra instantiate", t_hydra, t_hydra / t["hand"]),
        ("deep + normal/zeros init: by hand", t["hand_init"], 1.0),
        ("deep + normal/zeros init: mf.build", t["mf_init"], t["mf_init"] / t["hand_init"]),
        (
            "deep + init: mf.build, Repeat config",
            t["mf_repeat_init"],
            t["mf_repeat_init"] / t["hand_init"],
        ),
        ("deep on meta: mf.build", t["meta"], t["meta"] / t["hand"]),
    ]
    g = best_of(
        {
            "hand": gpt_by_hand,
            "mf": lambda: mf.build(gpt_cfg),
            "meta": lambda: mf.build(gpt_cfg, device="meta"),
        }
    )
    rows += [
        ("GPT-2 124M: by hand", g["hand"], 1.0),
        ("GPT-2 124M: mf.build (tied head)", g["mf"], g["mf"] / g["hand"]),
        ("GPT-2 124M on meta: mf.build", g["meta"], g["meta"] / g["hand"]),
    ]
    print(f"{'case':42s} {'best':>12s} {'ratio':>8s}")
    for name, t, r in rows:
        print(f"{name:42s} {t * 1e3:10.2f}ms {r:7.2f}x")


if __name__ == "__main__":
    main()
