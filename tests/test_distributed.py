"""Sharded build, save, load and the command over a DeviceMesh (FSDP2, gloo, CPU).

One process group of three ranks starts for the whole module (one spawned process
imports torch and forks the ranks: about 5 s of CPU on 2 cores, against about 12 s for
three spawned ranks);
every check runs inside it, on a mesh of 3 ranks and one of 2, and records what it saw
(``tests/distributed_checks.py``); the tests assert on the records. Uneven shapes: a
vocabulary of 37 rows, an MLP of 40.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory.configs import compose

from . import distributed_checks as checks

WORLD = 3
MESHES = ("3", "2")


@pytest.fixture(scope="module")
def group_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    """Spawn the group once, run every check, return the run directory and each rank's
    records."""
    out = tmp_path_factory.mktemp("group")
    args = (WORLD, str(out), checks.composed())
    starter = mp.get_context("spawn").Process(target=checks.start, args=args)
    starter.start()
    starter.join(timeout=300)
    if starter.is_alive():
        starter.kill()
        pytest.fail("the process group did not finish in 300 s")
    assert starter.exitcode == 0, "a rank failed: its traceback is in the captured stderr"
    return out, {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)}


@pytest.fixture(scope="module")
def seen(group_run: tuple[Path, dict[int, dict]]) -> dict[int, dict]:
    return group_run[1]


def ranks_of(size: str) -> range:
    return range(int(size))


def built(size: str) -> list[str]:
    return [n for n in [*checks.CONFIGS, "masked"] if size == "3" or n in checks.ON_TWO]


@pytest.mark.parametrize("size", MESHES)
def test_build_gathers_one_process_values_and_forward(seen: dict, size: str) -> None:
    for name in built(size):
        for rank in ranks_of(size):
            got = seen[rank][f"build/{size}/{name}"]
            assert got["bad"] == [], f"{name}, rank {rank}: these differ: {got['bad']}"
            assert got["forward_equal"], f"{name}, rank {rank}"
            assert got["params"] == got["ref_params"]


@pytest.mark.parametrize("size", MESHES)
def test_ties_stay_one_parameter(seen: dict, size: str) -> None:
    for rank in ranks_of(size):
        assert seen[rank][f"build/{size}/gpt"]["ties"] == [True]  # embed.tok.weight is head.weight
        assert seen[rank][f"build/{size}/shared"]["ties"] == [True]  # module 2 is module 4
        for name in checks.SAVED:
            assert all(seen[rank][f"load/{size}/{name}/sharded"]["ties"])


@pytest.mark.parametrize("size", MESHES)
def test_plan_rank_bytes_are_what_each_rank_holds(seen: dict, size: str) -> None:
    """The plan, made here in one process with nothing allocated, says what each rank
    of a real sharded build holds (FSDP2's padded rows, buffers whole)."""
    for name in built(size):
        cfg = compose(checks.CONFIGS[name]) if name != "masked" else checks.MASKED
        planned = mf.plan(cfg, world_size=int(size)).rank_bytes
        for rank in ranks_of(size):
            assert planned == seen[rank][f"build/{size}/{name}"]["local_bytes"], (name, rank)


@pytest.mark.parametrize("size", MESHES)
@pytest.mark.parametrize("name", list(checks.SAVED))
def test_sharded_save_writes_the_one_process_files(seen: dict, size: str, name: str) -> None:
    save = seen[0][f"build/{size}/{name}"]["save"]
    for layout in ("single", "sharded"):
        assert save[layout]["files"] and save[layout]["same_tensors"], layout
        assert save[layout]["same_bytes"], layout  # saves are deterministic: byte for byte
    assert save["sharded"]["written"] == "model.safetensors.index.json"
    for rank in ranks_of(size):  # every rank returns the file rank 0 wrote
        assert (
            seen[rank][f"build/{size}/{name}"]["save"]["single"]["written"] == "model.safetensors"
        )


@pytest.mark.parametrize("size", MESHES)
@pytest.mark.parametrize("name", list(checks.SAVED))
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_load_reads_only_each_ranks_rows(seen: dict, size: str, name: str, layout: str) -> None:
    """Each rank's reads are its rows (buffers whole); together the ranks read every stored
    parameter byte exactly once, and no rank read the file."""
    records = [seen[rank][f"load/{size}/{name}/{layout}"] for rank in ranks_of(size)]
    buffers = set(records[0]["buffers"])
    covered: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for rank, got in enumerate(records):
        assert got["bad"] == [], f"rank {rank}: {got['bad']}"
        assert got["read_bytes"] == got["rows_bytes"], f"rank {rank} read more than its rows"
        for file, key, start, end in got["ranges"]:
            if key in buffers:
                continue
            covered[(file, key)].append((start, end))
        assert got["read_bytes"] < got["file_bytes"], f"rank {rank} read the whole file"
    for (_, key), spans in covered.items():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), f"{key}: ranks overlap"
    stored = sum(e - s for spans in covered.values() for s, e in spans)
    buffer_bytes = sum(e - s for file, key, s, e in records[0]["ranges"] if key in buffers)
    assert stored + buffer_bytes == records[0]["file_bytes"]
    for got in records:  # buffers: whole, on every rank
        assert {key for _, key, _, _ in got["ranges"] if key in buffers} == buffers


@pytest.mark.parametrize("size", MESHES)
def test_load_casts_as_one_process(seen: dict, size: str) -> None:
    for rank in ranks_of(size):
        assert seen[rank][f"load_bf16/{size}"] == []


def test_an_untrusted_checkpoint_is_refused_before_any_read(seen: dict) -> None:
    for rank in range(WORLD):
        got = seen[rank]["untrusted"]
        assert "tests.io_targets.MaskedLinear" in got["error"] and got["reads"] == 0, got
        assert got["bad"] == []  # trusted: the values and the non-persistent mask


def test_old_checkpoints_load_sharded(seen: dict) -> None:
    for rank in range(WORLD):
        got = seen[rank]["old_checkpoints"]
        assert len(got) >= 4 and all(bad == [] for bad in got.values()), got


@pytest.mark.parametrize("size", MESHES)
def test_load_weights_into_a_sharded_model(seen: dict, size: str) -> None:
    for rank in ranks_of(size):
        got = seen[rank][f"load_weights/{size}"]
        assert got["before"] > 0 and got["bad"] == []


def test_command_under_ranks_prints_the_one_process_checksum(
    group_run: tuple[Path, dict[int, dict]],
) -> None:
    """``mesh=fsdp`` on 3 ranks: rank 0 writes the run directory, whose checksum and
    checkpoint are a one-process run's; the other ranks write nothing."""
    out, seen = group_run
    run_dir = out / "cli_run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD
    from modelfactory._app.job import checksum, sample_output

    model = mf.build(compose(checks.CONFIGS["gpt"]))
    assert (
        metrics["checksum"]["sha256"]
        == checksum(sample_output(model, mf.config_of(model))[1])["sha256"]
    )
    assert "sharded over 3 ranks" in (run_dir / "summary.txt").read_text()
    assert torch.equal(
        mf.load(run_dir).state_dict()["blocks.1.mlp.body.fc.weight"],
        model.state_dict()["blocks.1.mlp.body.fc.weight"],
    )
    for rank in range(1, WORLD):
        assert seen[rank]["cli"]["cwd"] == [], f"rank {rank} wrote {seen[rank]['cli']['cwd']}"
    restored = json.loads((out / "cli_restore" / "metrics.json").read_text())  # restore=, sharded
    assert restored["checksum"] == metrics["checksum"] and restored["world_size"] == WORLD


def test_command_plan_prints_the_table_and_builds_nothing(
    group_run: tuple[Path, dict[int, dict]],
) -> None:
    out, seen = group_run
    files = seen[0]["cli"]["cwd"]
    assert not any(f.endswith((".safetensors", "metrics.json")) for f in files), files
    log = next(f for f in files if f.endswith("modelfactory.log"))
    text = (out / "cwd0" / log).read_text()
    plan = mf.plan(compose(checks.CONFIGS["gpt"]), world_size=3, max_shard_size="10KB")
    assert plan.table() in text
    assert "per rank of 3 (FSDP2)" in text and "model-00001-of-" in text


def test_a_destroyed_process_group_is_a_clear_error(seen: dict) -> None:
    for what in ("build", "load"):
        message = seen[0]["errors"][what]
        assert message.startswith("DeviceError"), message
        assert "process group is not initialized" in message
        assert "init_process_group" in message


def test_mesh_must_be_a_device_mesh() -> None:
    with pytest.raises(mf.DeviceError, match=r"expected a torch.distributed DeviceMesh, got str"):
        mf.build({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}, mesh="cpu")


def test_a_cuda_mesh_gives_each_rank_its_current_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path, on a machine without one: the device is the rank's current GPU."""
    from modelfactory.distributed._mesh import device_of

    with pytest.raises(mf.DeviceError, match="the mesh is on 'cuda', which this process has none"):
        device_of("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert device_of("cuda") == torch.device("cuda", 3)
    assert device_of("cpu") == torch.device("cpu")


def test_device_does_not_combine_with_a_mesh() -> None:
    with pytest.raises(mf.DeviceError, match="device: a sharded model's device is the mesh's"):
        mf.build(
            {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2},
            mesh=object(),
            device="cpu",
        )
