"""Time and peak memory of loading the worst crafted checkpoints we could make (issue 13).

Each file is small; each load runs in a fresh process, and the whole process is measured:
wall time of ``mf.load`` (or of the restore job's sample-pass check) and the peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which includes importing torch). Every
case ends refused with a ``CheckpointError`` or loads within the bounds of
``docs/errors.md``; the table says which. Run by hand (not a test):

    python benchmarks/bench_hostile.py [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modelfactory as mf
from modelfactory.checkpoint import _format as fmt
from modelfactory.checkpoint._writer import write_file

ID = {"_target_": "torch.nn.Identity"}
REPEAT = "modelfactory.blocks.Repeat"
SEQ = "modelfactory.blocks.Sequential"
TE_LAYER = {"_target_": "torch.nn.TransformerEncoderLayer", "d_model": 8, "nhead": 2}


def _lin(i: int, o: int, **kw: Any) -> dict[str, Any]:
    return {"_target_": "torch.nn.Linear", "in_features": i, "out_features": o, **kw}


def _good(directory: Path) -> Path:
    model = mf.build({"model": {"_target_": SEQ, "layers": [_lin(4, 8), _lin(8, 2)]}})
    return mf.save(model, directory / "good" / "model.safetensors")


def _crafted(good: Path, dst: Path, mutate: Callable[[dict], None]) -> Path:
    """``good`` with its document changed (digests recomputed: only the content is hostile)."""
    header = json.loads(good.read_bytes()[8 : 8 + int.from_bytes(good.read_bytes()[:8], "little")])
    doc = json.loads(header["__metadata__"]["modelfactory"])
    mutate(doc)
    tensors = fmt.read_tensors(good)
    doc.pop("digest", None)
    doc["digest"] = fmt._doc_digest(doc)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_file(dst, {k: v.clone() for k, v in tensors.items()}, {"modelfactory": json.dumps(doc)})
    return dst


def _model(node: dict[str, Any], **config: Any) -> Callable[[dict], None]:
    return lambda doc: doc["config"].update(model=node, **config)


# name -> (document change, how the child loads it, what kind of copy beside it)
CASES: dict[str, tuple[Callable[[dict], None] | None, str, str]] = {
    "baseline (the good file)": (None, "load", ""),
    "Repeat 300,000 Identity": (
        _model({"_target_": REPEAT, "n": 300_000, "block": ID}),
        "load",
        "",
    ),
    "Repeat 49,000 Identity (under the bound)": (
        _model({"_target_": REPEAT, "n": 49_000, "block": ID}),
        "load",
        "",
    ),
    "Repeat 24,000 Linear(1,1), strict=False (builds for real)": (
        _model({"_target_": REPEAT, "n": 24_000, "block": _lin(1, 1)}),
        "nonstrict",
        "",
    ),
    "TransformerEncoder 1,600 layers (under the bound)": (
        _model(
            {
                "_target_": "torch.nn.TransformerEncoder",
                "encoder_layer": TE_LAYER,
                "num_layers": 1_600,
                "enable_nested_tensor": False,
            }
        ),
        "load",
        "",
    ),
    "TransformerEncoder 20,000 layers x Repeat 3": (
        _model(
            {
                "_target_": REPEAT,
                "n": 3,
                "block": {
                    "_target_": "torch.nn.TransformerEncoder",
                    "encoder_layer": TE_LAYER,
                    "num_layers": 20_000,
                },
            }
        ),
        "load",
        "",
    ),
    "LSTM 1,000 layers (at the bound)": (
        _model(
            {
                "_target_": "torch.nn.LSTM",
                "input_size": 1,
                "hidden_size": 1,
                "num_layers": 1_000,
            }
        ),
        "load",
        "",
    ),
    "LSTM 20,000 layers": (
        _model(
            {
                "_target_": "torch.nn.LSTM",
                "input_size": 1,
                "hidden_size": 1,
                "num_layers": 20_000,
            }
        ),
        "load",
        "",
    ),
    "Linear(20000, 20000, device=cpu)": (
        _model({"_target_": SEQ, "layers": [_lin(20000, 20000, device="cpu"), _lin(8, 2)]}),
        "load",
        "",
    ),
    "Linear(20000, 20000, device=cpu), strict=False": (
        _model({"_target_": SEQ, "layers": [_lin(20000, 20000, device="cpu"), _lin(8, 2)]}),
        "nonstrict",
        "",
    ),
    "Repeat name {i:200000000}": (
        _model({"_target_": REPEAT, "n": 4, "block": _lin(4, 4), "name": "{i:200000000}"}),
        "load",
        "",
    ),
    "900,000 config values": (
        _model({"_target_": "torch.nn.Unflatten", "dim": 1, "unflattened_size": [1] * 900_000}),
        "load",
        "",
    ),
    "Repeat 9,000 x 100-value list": (
        _model(
            {
                "_target_": REPEAT,
                "n": 9_000,
                "block": {
                    "_target_": "torch.nn.Unflatten",
                    "dim": 1,
                    "unflattened_size": [1] * 100,
                },
            }
        ),
        "load",
        "",
    ),
    "input_shape [2**24] through 300 blocks": (
        _model({"_target_": REPEAT, "n": 300, "block": ID}, input_shape=[2**24]),
        "load",
        "",
    ),
    "restore: input [2**25, 4], sample pass measured on meta": (
        _model({"_target_": SEQ, "layers": [_lin(4, 8), _lin(8, 2)]}, input_shape=[2**28 // 8, 4]),
        "restore",
        "",
    ),
    "untrusted torch.nn.attention.flex_attention.BlockMask": (
        _model(
            {
                "_target_": SEQ,
                "layers": [{"_target_": "torch.nn.attention.flex_attention.BlockMask"}],
            }
        ),
        "load",
        "",
    ),
    "config.yaml: billion laughs": (None, "load", "laughs"),
    "config.yaml: 8 GiB sparse file": (None, "load", "huge"),
    "config.yaml: 1 MiB, 100,000 levels deep": (None, "load", "deep"),
    "config.yaml: 1 MiB of 4000-digit ints": (None, "load", "ints"),
}


def _copy(kind: str, path: Path) -> None:
    if kind == "laughs":
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
        path.write_text("\n".join(lines) + "\n")
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(8 << 30)
    elif kind == "deep":
        half = (1 << 20) // 2 - 1
        path.write_text("[" * half + "]" * half)
    elif kind == "ints":
        line = "- " + "9" * 4000 + "\n"
        path.write_text(line * ((1 << 20) // len(line)))


CHILD = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import modelfactory as mf
from modelfactory._app import job
path, how = sys.argv[1], sys.argv[2]
t = time.perf_counter()
try:
    if how == "restore":
        model = mf.load(path)
        job.check_sample_pass(mf.config_of(model), path)
    else:
        mf.load(path, strict=how != "nonstrict")
    outcome = "loaded"
except mf.ModelFactoryError as e:
    outcome = "refused: " + str(e).split(chr(10))[0][len(path) + 2:][:70]
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak, "outcome": outcome}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run only the cases whose name contains this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        good = _good(Path(tmp))
        rows = []
        for i, (name, (mutate, how, copy)) in enumerate(CASES.items()):
            if args.only and args.only not in name:
                continue
            directory = Path(tmp) / f"case{i}"
            file = directory / fmt.MODEL_FILE
            if mutate is None:
                directory.mkdir()
                file.write_bytes(good.read_bytes())
            else:
                _crafted(good, file, mutate)
            if copy:
                _copy(copy, directory / fmt.CONFIG_FILE)
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            r = subprocess.run(
                [sys.executable, "-c", CHILD, str(file), how],
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
            )
            if r.returncode != 0:
                rows.append((name, float("nan"), float("nan"), f"CRASH {r.stderr[-200:]}"))
                continue
            out = json.loads(r.stdout.splitlines()[-1])
            rows.append((name, out["seconds"], out["peak_mib"], out["outcome"]))
            print(
                f"{name:<58} {out['seconds']:7.2f} s {out['peak_mib']:8.0f} MiB  {out['outcome']}"
            )
        worst_t = max(rows, key=lambda r: r[1])
        worst_m = max(rows, key=lambda r: r[2])
        print(f"\nworst time: {worst_t[1]:.2f} s ({worst_t[0]})")
        print(f"worst peak RSS: {worst_m[2]:.0f} MiB ({worst_m[0]})")


if __name__ == "__main__":
    main()
