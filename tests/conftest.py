from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import settings

from modelfactory.configs import compose

# Property tests: 200 generated cases in the default run; `--hypothesis-profile=slow` for 2,000.
settings.register_profile("ci", max_examples=200)
settings.register_profile("slow", max_examples=2000)


def pytest_configure(config: pytest.Config) -> None:
    # `pytest --hypothesis-profile=slow` wins; otherwise the suite runs the "ci" profile.
    settings.load_profile(config.getoption("hypothesis_profile", None) or "ci")


def lin(i: int, o: int, **kw: Any) -> dict[str, Any]:
    return {"_target_": "torch.nn.Linear", "in_features": i, "out_features": o, **kw}


RELU = {"_target_": "torch.nn.ReLU"}


def seq(*layers: Any, **named: Any) -> dict[str, Any]:
    return {
        "_target_": "modelfactory.blocks.Sequential",
        "layers": list(layers) if layers else named,
    }


def lazy_then_fixed_hidden() -> dict[str, Any]:
    """A lazy layer before D2L's fixed-hidden MLP, whose forward cannot run on meta."""
    return {
        "model": seq(
            {"_target_": "torch.nn.LazyLinear", "out_features": 20},
            {"_target_": "modelfactory.layers.FixedHiddenMLP"},
        ),
        "input_shape": [2, 20],
    }


@pytest.fixture
def mlp_cfg() -> dict[str, Any]:
    return {"model": seq(lin(20, 256), RELU, lin(256, 10)), "input_shape": [2, 20]}


@pytest.fixture(scope="module")
def transformers() -> Any:
    """transformers (the tests of conversions), imported once per process (it takes seconds)
    and never reaching for the hub."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        import transformers

        yield transformers


@pytest.fixture
def composed():
    """compose(["model=...", ...]) over the shipped conf/ (the real config, as users get it)."""
    return compose


def frozen(cfg: Any) -> Any:
    return copy.deepcopy(cfg)


@pytest.fixture
def saved(tmp_path):
    """An mlp checkpoint: ``model.safetensors`` in a directory with its ``config.yaml``."""
    import modelfactory as mf

    mf.save(mf.build(compose(["model=mlp"])), tmp_path / "m")
    return tmp_path / "m" / "model.safetensors"
