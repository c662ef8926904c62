"""Crafted small files on the newer surfaces (the switch journal, another tool's directory, a
foreign config.json, conversion files, a YAML config): each is refused with a modelfactory
error naming the file, in bounded time and memory, never a RecursionError, a hang or a
message that quotes an expanded value.

The cases run in one fresh process (imports once); each reports its error, its CPU time and
its peak memory (the kernel's high-water mark reset before it), one line as it ends, so a case
that hangs shows as the one that never reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import modelfactory as mf

from .checkpoint_helpers import rewrite
from .conftest import lin

ROOT = Path(__file__).resolve().parents[1]
DEEP = "[" * 100_000 + "]" * 100_000  # 200 KB: under every size cap
CPU_SECONDS = 5.0  # per case; the cases take milliseconds, the unbounded ones minutes
PEAK_MB = 200  # growth of the high-water mark over the process's size before the case
MESSAGE_CHARS = 2_000

CONVERSION = """\
renames:
  - {from: "w", to: "weight"}
  - {from: "b", to: "bias"}
config:
  file: config.json
  values: {n: {shape: weight, dim: 0}}
  check: [n]
"""


def _bomb(levels: int) -> str:
    """A YAML alias bomb: ``a{levels-1}`` expands to 10**levels scalars."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _indented(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def _deep(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


def _foreign(d: Path, shards: dict[str, str] | None = None, **files: str) -> Path:
    """A ``save_pretrained``-like directory for ``CONVERSION`` (a Linear(2, 2))."""
    d.mkdir(parents=True)
    if shards is None:
        save_file({"w": torch.zeros(2, 2), "b": torch.zeros(2)}, d / "model.safetensors")
    elif shards:
        weight_map = {"w": next(iter(shards)), "b": next(iter(shards))}
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        for name, kind in shards.items():
            if kind == "fifo":
                os.mkfifo(d / name)
            elif kind == "directory":
                (d / name).mkdir()
            elif kind == "device":
                (d / name).symlink_to("/dev/zero")
    for name, text in files.items():
        (d / name.replace("_", ".")).write_text(text)
    return d


LONG = "s" * 300 + ".safetensors"  # longer than a file name may be (255 bytes)


def _foreign_dirs(tmp: Path) -> dict[str, Path]:
    """Foreign directories with a hostile index, config.json or shard."""
    d = {
        "deep_index": _foreign(tmp / "deep_index", shards={}),
        "deep_config": _foreign(tmp / "deep_config", config_json=DEEP),
        "big_config": _foreign(tmp / "big_config", config_json=" " * (2 << 20) + "{}"),
        "fifo": _foreign(tmp / "fifo", shards={"a.safetensors": "fifo"}),
        "device": _foreign(tmp / "device", shards={"a.safetensors": "device"}),
        "directory": _foreign(tmp / "directory", shards={"a.safetensors": "directory"}),
        "long": _foreign(tmp / "long", shards={LONG: "absent"}),
    }
    (d["deep_index"] / "model.safetensors.index.json").write_text(DEEP)
    return d


def _craft(tmp: Path) -> dict[str, tuple[str, str]]:
    """Each case: (Python expression run in the child, the file its error must name)."""
    conv = tmp / "lin.yaml"
    conv.write_text(CONVERSION)
    ckpt, d = tmp / "journal", _foreign_dirs(tmp)
    mf.save(mf.build({"model": lin(2, 2)}), ckpt)
    (ckpt / ".modelfactory-switch.json").write_text(DEEP)
    deep_conv = tmp / "deep_conversion.yaml"
    deep_conv.write_text(f"renames: {DEEP}\n")
    plain = _foreign(tmp / "plain")
    bombs = {}
    for levels in (4, 10):  # 10**4 nodes (under the cap: excerpts), 10**10 (refused)
        bombs[levels] = tmp / f"bomb{levels}.yaml"
        rules = f"renames: [{{from: w, to: weight}}]\nignore: *a{levels - 1}\n"
        bombs[levels].write_text(f"x:\n{_indented(_bomb(levels))}{rules}")
    build_bomb = tmp / "bomb_config.yaml"
    build_bomb.write_text(f"model: {json.dumps(lin(2, 2))}\nx:\n{_indented(_bomb(10))}")
    flexible = {"_target_": "tests.user_blocks.Flexible", "_recursive_": False, "width": 2}
    deep_plain = tmp / "deep_plain.yaml"
    deep_plain.write_text(f'model: {json.dumps(flexible)[:-1]}, "extra": {DEEP}}}\n')
    good = mf.save(mf.build({"model": {**flexible, "extra": [1]}}), tmp / "flexible.safetensors")
    node = {**flexible, "extra": _deep(900)}  # as deep as the JSON writer goes
    deep_ckpt = rewrite(
        good, tmp / "deep_plain.safetensors", lambda d: d["config"].update(model=node)
    )

    def weights(directory: Path, conversion: Path = conv) -> str:
        return f"mf.load_weights(model, {str(directory)!r}, convert={str(conversion)!r})"

    def call(fn: str, path: Path, extra: str = "") -> str:
        return f"mf.{fn}({str(path)!r}{extra})"

    index, shard = "model.safetensors.index.json", "a.safetensors"
    return {
        "journal, load": (call("load", ckpt), ".modelfactory-switch.json"),
        "journal, save": (f"mf.save(model, {str(ckpt)!r})", ".modelfactory-switch.json"),
        "foreign index": (weights(d["deep_index"]), index),
        "foreign index, load_tensors": (call("load_tensors", d["deep_index"]), index),
        "foreign config.json": (weights(d["deep_config"]), "config.json"),
        "foreign config.json over 1 MiB": (weights(d["big_config"]), "config.json"),
        "conversion file, load": (weights(plain, deep_conv), deep_conv.name),
        "conversion file, save": (
            f"mf.save(model, {str(tmp / 'out')!r}, convert={str(deep_conv)!r})",
            deep_conv.name,
        ),
        "alias bomb, 10**4 in a conversion": (weights(plain, bombs[4]), bombs[4].name),
        "alias bomb, 10**10 in a conversion": (weights(plain, bombs[10]), bombs[10].name),
        "alias bomb in mf.build's file": (call("build", build_bomb), build_bomb.name),
        "shard that is a FIFO": (weights(d["fifo"]), shard),
        "shard that is a device": (weights(d["device"]), shard),
        "shard that is a directory": (weights(d["directory"]), shard),
        "shard name too long, native": (call("load_tensors", d["long"]), LONG),
        "shard name too long, convert=": (weights(d["long"]), LONG),
        "deep plain value, YAML config": (call("build", deep_plain), deep_plain.name),
        "deep plain value, checkpoint": (
            call("load", deep_ckpt, ", trusted=['tests.*']"),
            deep_ckpt.name,
        ),
    }


# One line of JSON per case: its error, CPU seconds and peak memory growth.
RUNNER = """
import json, os, resource, sys, time
import modelfactory as mf
model = mf.build({"model": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}})
def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024
for name, code in json.loads(sys.argv[1]).items():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark starts again from here
    before, cpu = rss("VmRSS"), time.process_time()
    try:
        eval(code)
        error = None
    except BaseException as e:
        error = {"type": type(e).__name__, "ours": isinstance(e, mf.ModelFactoryError),
                 "message": str(e)[:20_000], "length": len(str(e))}
    seconds, peak = time.process_time() - cpu, rss("VmHWM") - before
    print(json.dumps({"case": name, "error": error, "cpu": seconds, "peak_mb": peak}), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, str]]:
    cases = _craft(tmp_path_factory.mktemp("bounded"))
    assert sorted(cases) == sorted(NAMES)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = json.dumps({name: expr for name, (expr, _) in cases.items()})
    try:
        out = subprocess.run(
            [sys.executable, "-c", RUNNER, code],
            capture_output=True, text=True, env=env, timeout=240, cwd=ROOT,
        ).stdout  # fmt: skip
    except subprocess.TimeoutExpired as e:  # a case hung: the others still report
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else e.stdout or ""
    lines = [line for line in out.splitlines() if line.startswith('{"case"')]
    reports = {r["case"]: r for r in map(json.loads, lines)}
    return {name: (reports.get(name, {}), file) for name, (_, file) in cases.items()}


NAMES = [
    "journal, load",
    "journal, save",
    "foreign index",
    "foreign index, load_tensors",
    "foreign config.json",
    "foreign config.json over 1 MiB",
    "conversion file, load",
    "conversion file, save",
    "alias bomb, 10**4 in a conversion",
    "alias bomb, 10**10 in a conversion",
    "alias bomb in mf.build's file",
    "shard that is a FIFO",
    "shard that is a device",
    "shard that is a directory",
    "shard name too long, native",
    "shard name too long, convert=",
    "deep plain value, YAML config",
    "deep plain value, checkpoint",
]


@pytest.mark.parametrize("case", NAMES)
def test_a_crafted_file_is_a_clean_error_in_bounded_work(
    case: str, outcomes: dict[str, tuple[dict, str]]
) -> None:
    report, file = outcomes[case]
    assert report, f"{case}: did not finish (hung, or the process died)"
    error = report["error"]
    assert error is not None, f"{case}: no error"
    assert error["ours"], f"{case}: {error['type']}: {error['message'][:300]}"
    assert file in error["message"], f"{case}: the error does not name {file}: {error['message']}"
    assert error["length"] <= MESSAGE_CHARS, f"{case}: a {error['length']:,}-character message"
    assert report["cpu"] < CPU_SECONDS, f"{case}: {report['cpu']:.1f} s of CPU"
    assert report["peak_mb"] < PEAK_MB, f"{case}: {report['peak_mb']:.0f} MB more at its peak"
    if "shard that is" in case:
        assert "not a regular file" in error["message"]
    if "too long" in case:
        assert "cannot look it up (File name too long)" in error["message"]
