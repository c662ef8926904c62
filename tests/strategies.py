"""Hypothesis strategies: random architecture configs from the shipped blocks and torch layers.

Every generated block maps ``(batch, w)`` to ``(batch, w)`` for one width ``w``, so any
block composes with any other; lazy layers learn ``w`` from ``input_shape``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from modelfactory.blocks import TAKEN_NAMES

BLOCKS = "modelfactory.blocks."


def leaf(w: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(
            lambda b: {
                "_target_": "torch.nn.Linear",
                "in_features": w,
                "out_features": w,
                "bias": b,
            },
            st.booleans(),
        ),
        st.just({"_target_": "torch.nn.LazyLinear", "out_features": w}),
        st.sampled_from(
            [
                {"_target_": "torch.nn.ReLU"},
                {"_target_": "torch.nn.Tanh"},
                {"_target_": "torch.nn.GELU"},
                {"_target_": "modelfactory.layers.CenteredLayer"},
            ]
        ),
        st.just({"_target_": "torch.nn.LayerNorm", "normalized_shape": w}),
        st.just({"_target_": "modelfactory.layers.MyLinear", "in_units": w, "units": w}),
        st.just(
            {
                "_target_": "torch.nn.Sequential",
                "_args_": [{"_target_": "torch.nn.Linear", "in_features": w, "out_features": w}],
            }
        ),
    )


def names(n: int) -> st.SearchStrategy[list[str]]:
    return st.lists(
        st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True).filter(
            lambda s: s not in TAKEN_NAMES
        ),
        min_size=n,
        max_size=n,
        unique=True,
    )


def block(w: int, depth: int = 3) -> st.SearchStrategy[dict[str, Any]]:
    if depth == 0:
        return leaf(w)
    inner = st.deferred(lambda: block(w, depth - 1))

    @st.composite
    def sequential(draw: st.DrawFn) -> dict[str, Any]:
        layers = draw(st.lists(inner, min_size=1, max_size=3))
        if draw(st.booleans()):
            return {"_target_": BLOCKS + "Sequential", "layers": layers}
        keys = draw(names(len(layers)))
        return {"_target_": BLOCKS + "Sequential", "layers": dict(zip(keys, layers, strict=True))}

    @st.composite
    def parallel(draw: st.DrawFn) -> dict[str, Any]:
        branches = draw(st.lists(inner, min_size=2, max_size=2))
        if draw(st.booleans()):
            return {"_target_": BLOCKS + "Parallel", "branches": branches, "combine": "sum"}
        cat = {"_target_": BLOCKS + "Parallel", "branches": branches, "combine": "cat", "dim": -1}
        return {
            "_target_": BLOCKS + "Sequential",
            "layers": [
                cat,
                {"_target_": "torch.nn.Linear", "in_features": 2 * w, "out_features": w},
            ],
        }

    return st.one_of(
        leaf(w),
        sequential(),
        st.builds(
            lambda n, b, nm: {"_target_": BLOCKS + "Repeat", "n": n, "block": b, "name": nm},
            st.integers(1, 3),
            inner,
            st.sampled_from(["{i}", "layer_{i}", "b{i}x"]),
        ),
        parallel(),
        st.builds(lambda b: {"_target_": BLOCKS + "Residual", "body": b}, inner),
    )


INIT_RULES = [
    {
        "params": "*weight",
        "modules": ["Linear"],
        "fn": {"_target_": "torch.nn.init.normal_", "std": 0.2},
    },
    {"params": "*bias", "fn": {"_target_": "torch.nn.init.zeros_"}, "optional": True},
    {
        "modules": ["LayerNorm"],
        "params": "*weight",
        "fn": {"_target_": "torch.nn.init.constant_", "val": 1.5},
        "optional": True,
    },
    {
        "modules": ["MyLinear"],
        "params": "*",
        "fn": {"_target_": "modelfactory.init.d2l_mixture_"},
        "optional": True,
    },
    {
        "params": "*weight",
        "fn": {"_target_": "torch.nn.init.uniform_", "a": -0.3, "b": 0.3},
        "optional": True,
    },
]


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A full config: a random model, random init rules, a dtype, a seed (ties come later)."""
    w = draw(st.integers(2, 6))
    model = draw(
        st.one_of(
            block(w),
            st.builds(
                lambda b: {"_target_": BLOCKS + "Sequential", "layers": b},
                st.lists(block(w), min_size=1, max_size=3),
            ),
        )
    )
    rules = draw(st.lists(st.sampled_from(INIT_RULES), max_size=3, unique_by=lambda r: str(r)))
    return {
        "model": model,
        "init": {"rules": [{**r, "optional": True} for r in rules]},
        "tie": {"groups": []},
        "device": {
            "device": "cpu",
            "dtype": draw(st.sampled_from(["float32", "float32", "bfloat16"])),
        },
        "seed": draw(st.integers(0, 2**31)),
        "input_shape": [draw(st.integers(1, 3)), w],
    }
