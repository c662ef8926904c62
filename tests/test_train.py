"""``train=``: the training loop, its tasks and the coordinate check, in-process on tiny models."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
import torch

import modelfactory as mf
from modelfactory._app import tasks
from modelfactory._app.train import TrainConfig, parse_train, train
from modelfactory.errors import ConfigError

from .conftest import RELU, lin, seq


def tc(**kw: Any) -> TrainConfig:
    base = {"task": "teacher", "steps": 4, "lr": 1e-2, "optimizer": "adam", "batch_size": 8}
    return parse_train({**base, **kw})


def sample(shape: list[int], dtype: str = "float32") -> torch.Tensor:
    """A sample input as the app makes one: U(0, 1) floats, or zeros for token ids."""
    if dtype != "float32":
        return torch.zeros(shape, dtype=torch.long)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def run(cfg: dict[str, Any], t: TrainConfig, seed: int = 0) -> dict[str, Any]:
    model = mf.build({**cfg, "seed": seed})
    return train(model, t, seed, sample(cfg["input_shape"], cfg.get("input_dtype", "float32")))


def bits(xs: list[float | None]) -> list[bytes | None]:
    return [None if x is None else struct.pack("<d", x) for x in xs]


def test_none_means_no_training_and_problems_are_reported_together() -> None:
    assert parse_train(None) is None
    with pytest.raises(ConfigError) as e:
        parse_train(
            {"task": "lm", "steps": -1, "lr": 0, "optimizer": "lion", "batch_size": 8, "stepz": 3}
        )
    assert set(e.value.paths) == {"train.stepz", "train.steps", "train.lr", "train.optimizer"}
    assert "one of sgd, adam, adamw" in str(e.value)
    with pytest.raises(ConfigError, match=r"train\.batch_size: missing"):
        parse_train({"task": "lm", "steps": 1, "lr": 1.0, "optimizer": "sgd"})


def test_same_seed_same_losses_to_the_bit_and_the_global_rng_is_untouched(mlp_cfg) -> None:
    cfg = {
        **mlp_cfg,
        "model": seq(lin(20, 64), {"_target_": "torch.nn.Dropout", "p": 0.5}, RELU, lin(64, 10)),
    }
    state = torch.random.get_rng_state()
    a, b = run(cfg, tc()), run(cfg, tc())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert bits(a["loss"]) == bits(b["loss"]) and a["coord"] == b["coord"]
    assert len(a["loss"]) == 5 and a["final_loss"] == a["loss"][-1] and a["diverged"] is None
    assert a["loss"][-1] < a["loss"][0]  # it learns
    c = run(cfg, tc(), seed=1)
    assert c["loss"] != a["loss"]  # another seed: another init, other batches, other dropout


def test_the_task_is_fixed_by_data_seed_not_by_the_job_seed(mlp_cfg) -> None:
    t0 = tasks.make_task("teacher", [2, 20], torch.float32, torch.zeros(2, 10), data_seed=0)
    t1 = tasks.make_task("teacher", [2, 20], torch.float32, torch.zeros(2, 10), data_seed=1)
    x, y = t0.batch(torch.Generator().manual_seed(5), 3)
    assert x.shape == (3, 20) and y.shape == (3, 10)
    assert not torch.equal(t1.batch(torch.Generator().manual_seed(5), 3)[1], y)
    assert torch.equal(t0.batch(torch.Generator().manual_seed(5), 3)[1], y)


def test_coordinate_check_names_modules_once_in_forward_order(composed) -> None:
    cfg = composed(["model=gpt_small"])
    model = mf.build(cfg)
    record = train(model, tc(task="lm", steps=2, batch_size=2), 0, sample([2, 16], "long"))
    coord = record["coord"]
    assert record["task"] == "lm" and coord["steps"] == [0, 1, 2]
    assert record["loss"][0] > record["loss"][1] > record["loss"][2]  # it learns the text
    assert coord["modules"][0] == "embed.tok" and coord["modules"][-1] == "head"
    # a Residual's output is new (the residual stream); a Sequential returns its last child's
    assert "blocks.0.attn" in coord["modules"] and "blocks.0" not in coord["modules"]
    assert coord["types"]["blocks.0.attn"] == "Residual"
    assert all(len(v) == 3 and all(x > 0 for x in v) for v in coord["mean_abs"].values())


def test_a_shared_module_is_counted_per_call(composed) -> None:
    model = mf.build(composed(["model=shared_mlp"]))
    assert model[2] is model[4]
    record = train(model, tc(steps=1), 0, sample([2, 4]))
    assert "2" in record["coord"]["modules"] and "2#2" in record["coord"]["modules"]


def test_coord_steps_limits_the_coordinate_check(mlp_cfg) -> None:
    record = run(mlp_cfg, tc(steps=6, coord_steps=2))
    assert record["coord"]["steps"] == [0, 1, 2] and len(record["loss"]) == 7


def test_divergence_stops_and_is_recorded_not_raised(mlp_cfg) -> None:
    record = run(mlp_cfg, tc(optimizer="sgd", lr=1e6, steps=20))
    d = record["diverged"]
    assert d is not None and d["loss"] in ("nan", "inf") and d["step"] < 20
    assert len(record["loss"]) == d["step"] + 1 and record["loss"][-1] is None
    assert record["final_loss"] is None and math.isfinite(record["loss"][0])


def test_image_task_trains_the_resnet(composed) -> None:
    cfg = composed(["model=resnet"])
    record = train(mf.build(cfg), tc(task="auto", steps=1, batch_size=4), 0, sample([2, 3, 32, 32]))
    assert record["task"] == "image" and len(record["loss"]) == 2
    assert record["loss"][0] == pytest.approx(math.log(10), rel=0.5)  # 10 classes, near chance


def test_gratings_are_labelled_by_orientation() -> None:
    t = tasks.Gratings((3, 8, 8), 4, torch.float32)
    x, y = t.batch(torch.Generator().manual_seed(0), 6)
    assert x.shape == (6, 3, 8, 8) and y.shape == (6,) and int(y.max()) < 4


@pytest.mark.parametrize(
    ("model", "task", "message"),
    [
        (
            seq(
                {"_target_": "torch.nn.Embedding", "num_embeddings": 16, "embedding_dim": 8},
                lin(8, 16),
            ),
            "lm",
            "vocabulary must be >= 256",
        ),
        (seq(lin(20, 4)), "lm", "token ids in"),
        (seq(lin(20, 4)), "image", "(batch, C, H, W)"),
    ],
)
def test_a_task_that_does_not_fit_the_model_names_train_task(model, task, message) -> None:
    long = task == "lm" and model["layers"][0]["_target_"].endswith("Embedding")
    cfg = {"model": model, "input_shape": [2, 5] if long else [2, 20]}
    x = sample(cfg["input_shape"], "long" if long else "float32")
    with pytest.raises(ConfigError, match=r"train\.task") as e:
        train(mf.build(cfg), tc(task=task), 0, x)
    assert message in str(e.value)


def test_the_corpus_ships_with_the_package() -> None:
    text = tasks.corpus()
    assert 8_000 < len(text) < 64_000 and max(text) < 128
    assert text.startswith(b"First Citizen:")
