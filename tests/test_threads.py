"""``mf.build`` and ``mf.load`` from several threads at once: every result equals the one made
alone, and neither the default dtype nor the global RNG is touched, even for a moment."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory.configs import compose

from .checkpoint_helpers import rewrite_doc

BUILDS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "mlp f32": (["model=mlp"], {}),
    "gpt_small bf16 seed 3": (["model=gpt_small", "init=normal"], {"dtype": "bfloat16", "seed": 3}),
    "lazy_mlp f64 seed 1": (["model=lazy_mlp", "init=xavier"], {"dtype": "float64", "seed": 1}),
    "fixed_hidden_mlp f64": (["model=fixed_hidden_mlp"], {"dtype": "float64", "seed": 2}),
    "dense f64 d2l_mixture": (["model=dense", "init=d2l_mixture"], {"dtype": "float64"}),
    "rgnet f16 seed 7": (["model=rgnet", "init=kaiming"], {"dtype": "float16", "seed": 7}),
}


def digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(f"{k}:{v.dtype}:{list(v.shape)}".encode())
        h.update(v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def jobs(tmp_path: Path) -> dict[str, Callable[[], nn.Module]]:
    out: dict[str, Callable[[], nn.Module]] = {}
    for name, (overrides, kw) in BUILDS.items():
        cfg = compose(overrides)
        out[f"build {name}"] = lambda cfg=cfg, kw=kw: mf.build(cfg, **kw)
        saved = mf.save(mf.build(cfg, **kw), tmp_path / name.replace(" ", "_"))
        out[f"load {name}"] = lambda saved=saved: mf.load(saved)
    mlp_file = tmp_path / "mlp_f32" / "model.safetensors"
    out["load mlp f32 as float64"] = lambda: mf.load(mlp_file, dtype="float64")
    partial = mf.save(mf.build(compose(["model=lazy_mlp"]), seed=5), tmp_path / "partial")
    rewrite_doc(partial, drop=("2.bias",))  # strict=False builds it and keeps what fits
    out["load non-strict"] = lambda: mf.load(partial, strict=False)
    target = compose(["model=mlp"])  # compose() itself is not for threads (GlobalHydra)
    other = mf.save(mf.build(compose(["model=mlp", "num_outputs=5"]), seed=4), tmp_path / "o")
    out["load_weights non-strict"] = lambda: mf.load_weights(
        mf.build(target, seed=9), other, strict=False
    )
    return out


@pytest.mark.filterwarnings("ignore:.*loading what fits:UserWarning")
def test_builds_and_loads_in_threads_equal_those_made_alone(tmp_path: Path):
    work = jobs(tmp_path)
    dtype, rng = torch.get_default_dtype(), torch.get_rng_state()
    alone = {name: digest(make()) for name, make in work.items()}
    assert torch.get_default_dtype() == dtype and torch.equal(torch.get_rng_state(), rng)

    names = sorted(work)
    stop = threading.Event()
    wrong: list[str] = []
    counts: list[int] = []
    disturbed: list[str] = []

    def worker(order: list[str]) -> None:
        done = 0
        while not stop.is_set() or done < len(order):
            name = order[done % len(order)]
            try:
                got = digest(work[name]())
            except Exception as e:  # recorded, and asserted below
                wrong.append(f"{name}: {type(e).__name__}: {e}")
            else:
                if got != alone[name]:
                    wrong.append(name)
            done += 1
        counts.append(done)

    def watcher() -> None:  # the global state must never change, not only be restored
        while not stop.is_set():
            if torch.get_default_dtype() != dtype:
                disturbed.append(f"default dtype {torch.get_default_dtype()}")
            if not torch.equal(torch.get_rng_state(), rng):
                disturbed.append("global RNG state")
            time.sleep(0.0005)

    threads = [
        threading.Thread(target=worker, args=(names[i:] + names[:i],)) for i in (0, 3, 7)
    ] + [threading.Thread(target=watcher)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()
    assert not wrong, wrong[:10]
    assert not disturbed, sorted(set(disturbed))
    assert len(counts) == 3 and min(counts) >= len(names)
    assert torch.get_default_dtype() == dtype and torch.equal(torch.get_rng_state(), rng)


def test_a_build_leaves_the_global_rng_and_default_dtype_alone():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    mf.build(compose(["model=fixed_hidden_mlp", "init=normal"]), dtype="float64")
    mf.build(compose(["model=lazy_mlp"]), dtype="bfloat16")
    assert torch.get_default_dtype() == torch.float32
    assert torch.equal(torch.rand(5), expected)  # nothing drew from it


def test_a_model_built_in_another_dtype_has_that_dtype_everywhere():
    model = mf.build(compose(["model=fixed_hidden_mlp"]), dtype="float64")
    assert {t.dtype for t in (*model.parameters(), *model.buffers())} == {torch.float64}
    assert torch.tensor([1.5]).dtype == torch.float32  # outside the build: untouched


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_single_threaded_fast_path_builds_what_the_routed_path_builds(name, monkeypatch):
    """Alone, a CPU build borrows the default generator and dtype (restored after) instead
    of routing every torch call through DrawFrom; the values must be the same to the bit."""
    import modelfactory.factory as factory

    overrides, kw = BUILDS[name]
    cfg = compose(overrides)
    taken: list[bool] = []  # forced: another test may have left a thread running
    monkeypatch.setattr(
        factory, "may_borrow_defaults", lambda d: taken.append(d.type == "cpu") or taken[-1]
    )
    fast = digest(mf.build(cfg, **kw))
    assert True in taken
    monkeypatch.setattr(factory, "may_borrow_defaults", lambda d: False)
    assert digest(mf.build(cfg, **kw)) == fast
