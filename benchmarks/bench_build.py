"""Build speed: modelfactory.build vs the same modules written by hand (and Hydra's instantiate).

Run by hand: ``python benchmarks/bench_build.py``. Each figure is the minimum of several
runs in this one process (40 for the deep MLP, 7 by default; the machine is shared and
noisy), the cases of a table run interleaved; ratios are measured side by side.

Goals (issues 2, 3 and 21): GPT-2-sized model with its init <= 1.05-1.1x by hand; a
200-block deep MLP config (Linear 64->64 + ReLU per block, 601 modules) written out <= 1.3x
by hand; building either on ``meta`` takes milliseconds.
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


INIT_RULES = {
    "rules": [
        {
            "modules": ["Linear"],
            "params": "*weight",
            "fn": {"_target_": "torch.nn.init.normal_", "std": 0.01},
        },
        {"modules": ["Linear"], "params": "*bias", "fn": {"_target_": "torch.nn.init.zeros_"}},
    ]
}


def hand_init() -> nn.Module:
    """The deep MLP by hand, with the init of :data:`INIT_RULES`."""
    m = deep_by_hand()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.01)
                nn.init.zeros_(mod.bias)
    return m


def deep_rows() -> list[tuple[str, float, float]]:
    """The deep MLP (200 blocks: 601 modules) written out, as a Repeat, with init rules."""
    deep = deep_config()
    deep_mf, rep_mf = {"model": deep}, {"model": deep_repeat_config()}
    mf.build(deep)
    t = best_of(
        {
            "hand": deep_by_hand,
            "mf": lambda: mf.build(deep_mf),
            "mf_repeat": lambda: mf.build(rep_mf),
            "hand_init": hand_init,
            "mf_init": lambda: mf.build({**deep_mf, "init": INIT_RULES}),
            "mf_repeat_init": lambda: mf.build({**rep_mf, "init": INIT_RULES}),
            "meta": lambda: mf.build(deep_mf, device="meta"),
        },
        n=40,  # ~10 s: enough rounds that the minimum settles on a shared, noisy machine
    )
    t_hydra = best_of({"hydra": lambda: instantiate(OmegaConf.create(deep))}, n=3)["hydra"]
    hand, hand_init_s = t["hand"], t["hand_init"]
    return [
        ("deep 200 blocks: by hand", hand, 1.0),
        ("deep 200 blocks: mf.build", t["mf"], t["mf"] / hand),
        ("deep 200 blocks: mf.build, Repeat config", t["mf_repeat"], t["mf_repeat"] / hand),
        ("deep 200 blocks: hydra instantiate", t_hydra, t_hydra / hand),
        ("deep + normal/zeros init: by hand", hand_init_s, 1.0),
        ("deep + normal/zeros init: mf.build", t["mf_init"], t["mf_init"] / hand_init_s),
        (
            "deep + init: mf.build, Repeat config",
            t["mf_repeat_init"],
            t["mf_repeat_init"] / hand_init_s,
        ),
        ("deep on meta: mf.build", t["meta"], t["meta"] / hand),
    ]


def gpt_rows() -> list[tuple[str, float, float]]:
    gpt_cfg = compose(["model=gpt2"])
    g = best_of(
        {
            "hand": gpt_by_hand,
            "mf": lambda: mf.build(gpt_cfg),
            "meta": lambda: mf.build(gpt_cfg, device="meta"),
        }
    )
    return [
        ("GPT-2 124M: by hand", g["hand"], 1.0),
        ("GPT-2 124M: mf.build (tied head)", g["mf"], g["mf"] / g["hand"]),
        ("GPT-2 124M on meta: mf.build", g["meta"], g["meta"] / g["hand"]),
    ]


def scaling() -> list[str]:
    """``Sequential`` of n ``Linear(16, 16)`` nodes, n from 10 to 10,000: time per node by
    hand and with ``mf.build``, and what modelfactory adds per node (it must stay flat)."""
    lin = {"_target_": "torch.nn.Linear", "in_features": 16, "out_features": 16}
    lines = [f"{'nodes':>7s} {'by hand':>12s} {'mf.build':>12s} {'ratio':>7s} {'added':>12s}"]
    for n in (10, 100, 1_000, 10_000):
        cfg = {"model": {"_target_": "torch.nn.Sequential", "_args_": [lin] * n}}
        mf.build(cfg)
        t = best_of(
            {
                "hand": lambda n=n: nn.Sequential(*[nn.Linear(16, 16) for _ in range(n)]),
                "mf": lambda cfg=cfg: mf.build(cfg),
            },
            n=max(5, 3000 // n),
        )
        hand, built = t["hand"] / n * 1e6, t["mf"] / n * 1e6
        lines.append(
            f"{n:7,d} {hand:9.1f} us {built:9.1f} us {built / hand:6.2f}x {built - hand:9.1f} us"
        )
    return lines


def main() -> None:
    torch.set_num_threads(2)
    # Warm-ups: the first meta-device init imports torch._dynamo (~1.5 s).
    with torch.device("meta"):
        nn.Linear(2, 2)
    rows = deep_rows() + gpt_rows()
    print(f"{'case':42s} {'best':>12s} {'ratio':>8s}")
    for name, t, r in rows:
        print(f"{name:42s} {t * 1e3:10.2f}ms {r:7.2f}x")
    print("\nper node, Linear(16, 16) nodes in one Sequential (best of each):")
    print("\n".join(scaling()))


if __name__ == "__main__":
    main()
