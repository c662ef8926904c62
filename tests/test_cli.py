"""The ``modelfactory`` command, run as a user runs it: the console script, in a fresh
directory, by subprocess. Tiny models keep each run to about the cost of its imports."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory._app import job, plot, report
from modelfactory._app.progress import SweepProgress

from .cli_helpers import CHECKSUM, ROOT, checksums, docs_text, run, sweep_rows

SWEEP = ["model=stack", "block=d2l_block1", "init=normal,xavier", "seed=0,1"]


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("main")
    return cwd, run(cwd, "model=rgnet", "hydra.run.dir=outputs/rgnet")


@pytest.fixture(scope="module")
def basic_sweep(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess]:
    return sweep_in(tmp_path_factory.mktemp("sweep"), SWEEP)


def sweep_in(cwd: Path, overrides: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
    """``modelfactory -m OVERRIDES`` in ``cwd``; returns its sweep directory and the run."""
    return cwd / "outputs/sweep", run(cwd, "-m", *overrides, "hydra.sweep.dir=outputs/sweep")


def test_main_job_writes_loadable_checkpoint_and_metrics(main_run) -> None:
    cwd, r = main_run
    assert r.returncode == 0, r.stderr
    run_dir = cwd / "outputs/rgnet"
    [(printed, _)] = CHECKSUM.findall(r.stdout)
    assert "total params" in r.stdout  # the summary
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "config.yaml").is_file()
    m = json.loads((run_dir / job.METRICS_FILE).read_text())
    assert m["checksum"]["sha256"] == printed
    assert {w["name"] for w in m["weights"]} >= {"1.weight", "0.block 0.0.weight"}
    assert [a["depth"] for a in m["activations"]] == list(range(len(m["activations"])))
    model = mf.load(run_dir)
    _x, y = job.sample_output(model, mf.config_of(model))
    assert job.checksum(y)["sha256"] == printed
    assert (run_dir / "modelfactory.log").read_text().count(printed) == 1


def test_restore_prints_the_same_checksum_and_verify_checks_the_digest(main_run) -> None:
    cwd, first = main_run
    [(saved, _)] = CHECKSUM.findall(first.stdout)
    r = run(cwd, "restore=outputs/rgnet", "hydra.run.dir=outputs/restored")
    assert r.returncode == 0, r.stderr
    assert f"metrics.json written to {cwd / 'outputs/restored'}" in r.stdout
    assert CHECKSUM.findall(r.stdout) == CHECKSUM.findall(first.stdout)
    assert saved in r.stdout and "total params" in r.stdout

    bad = cwd / "outputs/bad"
    shutil.copytree(cwd / "outputs/rgnet", bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-2] ^= 0xFF  # flip a byte of the last tensor's data
    (bad / "model.safetensors").write_bytes(bytes(data))
    ok = run(cwd, "verify=outputs/rgnet", "hydra.run.dir=outputs/v1")
    ko = run(cwd, "verify=outputs/bad", "hydra.run.dir=outputs/v2")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    assert f"metrics.json written to {cwd / 'outputs/v1'}" in ok.stdout
    assert ko.returncode == 1
    assert "does not match the digest" in ko.stdout + ko.stderr
    assert "Traceback" not in ko.stdout + ko.stderr


def test_sweep_2x2_writes_checkpoints_and_report(basic_sweep) -> None:
    sweep_dir, r = basic_sweep
    assert r.returncode == 0, r.stderr
    assert sorted(p.parent.name for p in sweep_dir.glob("*/model.safetensors")) == list("0123")
    rows = sweep_rows(sweep_dir)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"}
    assert [row["init"] for row in rows] == ["normal", "normal", "xavier", "xavier"]
    assert any(k.startswith("act_std[") for k in rows[0]) and "weight_std[0.0.weight]" in rows[0]
    png = (sweep_dir / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert "sweep report (4 jobs)" in r.stdout + r.stderr
    # each job's printed checksum is the one in the report
    assert sorted(checksums(r.stdout)) == sorted(row["checksum_sha256"] for row in rows)
    # not a terminal: no progress display
    assert "\r" not in r.stderr and "jobs done" not in r.stderr


def test_joblib_launcher_gives_the_same_checksums(basic_sweep, tmp_path: Path) -> None:
    sweep_dir, _ = basic_sweep
    r = run(
        tmp_path,
        "-m",
        *SWEEP,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweep.dir=outputs/sweep",
    )
    assert r.returncode == 0, r.stderr
    got = sweep_rows(tmp_path / "outputs/sweep")
    want = sweep_rows(sweep_dir)
    assert [(g["overrides"], g["checksum_sha256"]) for g in got] == [
        (w["overrides"], w["checksum_sha256"]) for w in want
    ]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the 'ray' extra")
def test_ray_launcher_on_local_ray_gives_the_same_checksums(basic_sweep, tmp_path: Path) -> None:
    sweep_dir, _ = basic_sweep
    r = run(tmp_path, "-m", *SWEEP, "hydra/launcher=ray_local", "hydra.sweep.dir=outputs/sweep")
    assert r.returncode == 0, r.stderr
    got = sweep_rows(tmp_path / "outputs/sweep")
    want = sweep_rows(sweep_dir)
    assert [g["checksum_sha256"] for g in got] == [w["checksum_sha256"] for w in want]


def test_sweep_with_failed_jobs_reports_the_others_and_names_the_failures(tmp_path: Path) -> None:
    r = run(tmp_path, "-m", "model=rgnet", "seed=0,x", "hydra.sweep.dir=outputs/s")
    assert r.returncode == 1
    rows = sweep_rows(tmp_path / "outputs/s")
    assert [row["status"] for row in rows] == ["ok", "failed"]
    assert "seed: expected an integer" in rows[1]["error"]
    assert (tmp_path / "outputs/s/sweep.png").stat().st_size > 0
    assert re.search(r"job 1 \(model=rgnet seed=x\) failed: .*seed", r.stdout + r.stderr)
    assert "1 of 2 jobs failed" in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("override", "key", "code"),
    [
        ("modle=rgnet", "modle", 2),  # Hydra: not a key of the config
        ("model=rgnet +model.layers.0.nn=3", "model.layers.0.nn", 2),  # build: bad keyword
        ("model=nope", "model/nope", 2),  # Hydra: no such option
        ("model=rgnet model.layers.1.in_features=5", "model.layers.1", 1),  # shape: the config path
        ("+seeed=3", "seeed", 2),  # a typo added with + must not pass silently
        ("model.layers.0.out_features=abc", "model.layers.0.out_features", 2),  # a wrong type
        ("model=lazy_mlp input_shape=null", "lazy layers are not materialized", 1),
        ("train=teacher train.lr=-1", "train.lr", 2),  # a training setting, checked first
        ("train.steps=5", "train.steps", 2),  # no train= group chosen: nothing to set
    ],
)
def test_bad_config_is_one_paragraph_naming_the_key(
    tmp_path: Path, override: str, key: str, code: int
) -> None:
    r = run(tmp_path, *override.split(), "hydra.run.dir=outputs/x/run")
    assert r.returncode == code, r.stdout + r.stderr
    text = (r.stdout + r.stderr).strip()
    message = text[text.index("modelfactory: error:") :]
    assert "\n\n" not in message and "Traceback" not in text
    assert key in message
    # a config error leaves no run directory (nor the parent it made); a failed build keeps its
    # directory and log
    assert (tmp_path / "outputs").exists() == (code == 1)


def test_a_huge_seed_on_the_command_line_is_one_paragraph_exit_2(tmp_path: Path):
    r = run(tmp_path, "model=mlp", f"seed={2**64}")
    assert r.returncode == 2, r.stderr
    text = (r.stdout + r.stderr).strip()
    assert "Traceback" not in text
    assert "seed: expected an integer from -2**63 to 2**64 - 1" in text
    error = [line for line in text.splitlines() if "error" in line]
    assert error and error[0].split("modelfactory: error: ", 1)[1]


README_EXAMPLES = [
    "modelfactory model=rgnet",
    "modelfactory model=stack block=conv_bn_relu n=3",
    "modelfactory init=xavier tie=none device=auto seed=3",
    "modelfactory model=gpt_small",
]


@pytest.mark.parametrize("command", README_EXAMPLES[1:])  # model=rgnet: main_run above
def test_documented_examples_run(tmp_path: Path, command: str) -> None:
    r = run(tmp_path, *command.split()[1:], "hydra.run.dir=outputs/x")
    assert r.returncode == 0, r.stderr
    assert len(CHECKSUM.findall(r.stdout)) == 1
    assert mf.load(tmp_path / "outputs/x") is not None


def test_documented_examples_are_in_the_docs() -> None:
    text = docs_text()
    for command in README_EXAMPLES:
        assert command in text


def test_checksum_is_sha256_of_the_output_bytes() -> None:
    y = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # not contiguous
    c = job.checksum(y)
    assert c["sha256"] == hashlib.sha256(y.contiguous().numpy().tobytes()).hexdigest()
    assert c["sum"] == 15.0 and c["shapes"] == [[3, 2]]
    pair = job.checksum((y, {"b": torch.ones(2, dtype=torch.bfloat16)}))
    assert pair["dtypes"] == ["float32", "bfloat16"] and pair["sha256"] != c["sha256"]


def test_progress_counts_finished_jobs_and_is_silent_off_a_terminal(tmp_path: Path) -> None:
    for i, marker in enumerate([job.METRICS_FILE, job.ERROR_FILE, None]):
        (tmp_path / str(i)).mkdir()
        if marker:
            (tmp_path / str(i) / marker).write_text("{}")
    stream = io.StringIO()  # not a TTY
    p = SweepProgress(tmp_path, 3, (job.METRICS_FILE, job.ERROR_FILE), stream=stream)
    assert p.done() == 2
    stdout = sys.stdout
    p.start()
    assert sys.stdout is stdout  # nothing drawn, so stdout is left alone
    p.stop()
    assert stream.getvalue() == ""


def test_report_reads_jobs_in_order(basic_sweep) -> None:
    sweep_dir, _ = basic_sweep
    jobs = report.collect(sweep_dir)
    assert [j.num for j in jobs] == [0, 1, 2, 3] and all(j.ok for j in jobs)
    assert "init=xavier seed=1" in report.table(jobs)


def test_meta_device_builds_a_skeleton_without_checksum_or_checkpoint(tmp_path: Path) -> None:
    r = run(tmp_path, "model=lazy_mlp", "device.device=meta", "hydra.run.dir=outputs/meta")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "checksum: none" in out and "no checkpoint" in out
    assert not (tmp_path / "outputs/meta/model.safetensors").exists()


TRAIN_SWEEP = [*SWEEP, "train=teacher", "train.steps=4"]


@pytest.fixture(scope="module")
def train_sweep(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess]:
    return sweep_in(tmp_path_factory.mktemp("train"), TRAIN_SWEEP)


def test_sweep_2x2_with_training_writes_loss_curves_and_the_final_loss(train_sweep) -> None:
    sweep_dir, r = train_sweep
    assert r.returncode == 0, r.stderr
    rows = sweep_rows(sweep_dir)
    assert [row["status"] for row in rows] == ["ok"] * 4
    for row in rows:
        t = json.loads((sweep_dir / row["job"] / job.METRICS_FILE).read_text())["train"]
        assert len(t["loss"]) == 5 and t["coord"]["steps"] == [0, 1, 2, 3, 4]
        assert float(row["final_loss"]) == t["final_loss"] == t["loss"][-1]
        assert set(t["coord"]["mean_abs"]) == set(t["coord"]["modules"]) >= {"0.0", "3.3"}
    # the printed table ranks the jobs by final loss
    table = r.stdout[r.stdout.index("sweep report") :].splitlines()[3:7]
    by_loss = sorted(rows, key=lambda row: float(row["final_loss"]))
    assert [line.split()[1] for line in table] == [row["job"] for row in by_loss]
    assert (sweep_dir / "sweep.png").stat().st_size > 10_000
    assert "\r" not in r.stderr  # not a terminal: no bars


def test_training_is_bit_reproducible_from_the_config_alone(train_sweep) -> None:
    from modelfactory._app.train import parse_train, train
    from modelfactory.configs import compose

    sweep_dir, _ = train_sweep
    want = json.loads((sweep_dir / "3" / job.METRICS_FILE).read_text())["train"]
    overrides = [o for o in TRAIN_SWEEP if "," not in o] + ["init=xavier", "seed=1"]
    cfg = compose(overrides, config_name="app")
    model = mf.build(job.build_config(cfg))
    x, _ = job.sample_output(model, job.build_config(cfg))
    got = train(model, parse_train(dict(cfg.train)), 1, x)
    assert [struct.pack("<d", v) for v in got["loss"]] == [
        struct.pack("<d", v) for v in want["loss"]
    ]
    assert got["coord"] == want["coord"]


def test_the_checkpoint_of_a_training_job_is_the_model_at_init(train_sweep) -> None:
    sweep_dir, _ = train_sweep
    metrics = json.loads((sweep_dir / "0" / job.METRICS_FILE).read_text())
    assert job.restore_job(str(sweep_dir / "0"))["sha256"] == metrics["checksum"]["sha256"]
    restored = mf.load(sweep_dir / "0")
    fresh = mf.build(str(sweep_dir / "0" / "config.yaml"))  # built again: not trained
    for (name, a), (_, b) in zip(
        restored.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_diverging_job_is_reported_and_the_sweep_succeeds(tmp_path: Path) -> None:
    # a token model: train=lm reads the text that ships with the installed package
    r = run(
        tmp_path,
        "-m",
        "model=gpt_small",
        "train=lm",
        "train.optimizer=sgd",
        "train.lr=0.1,1e6",
        "train.steps=4",
        "hydra.sweep.dir=outputs/s",
    )
    assert r.returncode == 0, r.stderr
    rows = sweep_rows(tmp_path / "outputs/s")
    assert [row["status"] for row in rows] == ["ok", "diverged"]
    ok = json.loads((tmp_path / "outputs/s/0" / job.METRICS_FILE).read_text())["train"]
    assert ok["task"] == "lm" and float(rows[0]["final_loss"]) == ok["loss"][-1] < ok["loss"][0]
    assert rows[1]["final_loss"] in ("nan", "inf")
    assert re.search(r"job 1 \(.*train.lr=1000000.0.*\) diverged: loss (nan|inf) at step", r.stdout)
    assert (tmp_path / "outputs/s/sweep.png").stat().st_size > 10_000


def test_train_none_leaves_the_job_files_as_they_were(main_run) -> None:
    cwd, _ = main_run
    run_dir = cwd / "outputs/rgnet"
    assert set(json.loads((run_dir / job.METRICS_FILE).read_text())) == {
        "checksum",
        "weights",
        "activations",
    }
    assert {p.name for p in run_dir.iterdir()} == {
        ".hydra",
        "config.yaml",
        "metrics.json",
        "model.safetensors",
        "modelfactory.log",
        "summary.txt",
    }


def test_documented_width_sweep_plots_the_coordinate_check_vs_the_width(tmp_path: Path) -> None:
    examples = ROOT / "docs/examples"
    r = run(
        tmp_path,
        "-m",
        "--config-dir",
        str(examples),
        "model=wide_mlp",
        "train=teacher",
        "train.steps=2",
        "block.layers.fc.out_features=16,32",
        "hydra.sweep.dir=outputs/w",
    )
    assert r.returncode == 0, r.stderr
    jobs = report.collect(tmp_path / "outputs/w")
    _, varying = report.describe_sweep(jobs)
    assert plot.width_key(jobs, varying) == "block.layers.fc.out_features"
    assert "--config-dir docs/examples model=wide_mlp" in docs_text()
