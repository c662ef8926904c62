"""Every read path refuses before it reads a weight: header, format version, trust of every
target and the config's bounds are decided from the header alone (``checkpoint/_rebuild``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelfactory as mf
from modelfactory.checkpoint import _format, _shards
from modelfactory.errors import CheckpointError, UntrustedTargetError

from .checkpoint_helpers import rewrite_doc
from .conftest import lin, seq

ROOT = Path(__file__).resolve().parent.parent
# Four tests.io_targets.MaskedLinear(4096), a user class: 268 MB of weights.
BIG = {
    "_target_": "modelfactory.blocks.Repeat",
    "n": 4,
    "block": {"_target_": "tests.io_targets.MaskedLinear", "features": 4096},
}

# In a fresh process: load each checkpoint untrusted; report the error, the seconds, the
# peak RSS growth (VmHWM, reset first) and the bytes read from files (/proc/self/io rchar).
REFUSE = """
import json, sys, time, modelfactory as mf
def status(key):
    for line in open("/proc/self/" + ("io" if key == "rchar" else "status")):
        if line.startswith(key):
            return int(line.split()[1]) * (1 if key == "rchar" else 1024)
mf.load(sys.argv[1])  # imports and code paths, on a small trusted model
out = []
for path in sys.argv[2:]:
    for mmap in (False, True):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM back to the current RSS
        rss, read, start = status("VmRSS"), status("rchar"), time.perf_counter()
        try:
            mf.load(path, mmap=mmap)
            error = None
        except mf.UntrustedTargetError as e:
            error = str(e)
        seconds = time.perf_counter() - start
        grown, bytes_read = status("VmHWM") - rss, status("rchar") - read
        out.append({"path": path, "mmap": mmap, "error": error, "seconds": seconds,
                    "grown": grown, "read": bytes_read})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One checkpoint of a user class, over 256 MiB, as one file and as shards."""
    where = tmp_path_factory.mktemp("big")
    model = mf.build(BIG)
    paths = {
        "single": mf.save(model, where / "single"),
        "sharded": mf.save(model, where / "sharded", max_shard_size="64MB"),
        "small": mf.save(mf.build(lin(2, 2)), where / "small"),
    }
    assert paths["single"].stat().st_size > 256 * 2**20
    assert len(list((where / "sharded").glob("model-*.safetensors"))) >= 4
    return paths


def test_an_untrusted_checkpoint_is_refused_before_its_weights_are_read(big):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [str(big["small"]), str(big["single"]), str(big["sharded"])]
    r = subprocess.run(
        [sys.executable, "-c", REFUSE, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.splitlines()[-1])
    assert len(results) == 4
    for case in results:
        assert "'tests.io_targets.MaskedLinear' is not under a trusted prefix" in case["error"]
        assert case["path"].endswith(("model.safetensors", "index.json")), case
        assert case["read"] < 64 * 2**20, case  # the header, not 268 MB of weights
        assert case["grown"] < 64 * 2**20, case
        assert case["seconds"] < 0.3, case


def _no_weights(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Make every weight read fail the test; returns the files it was asked for."""
    asked: list[Path] = []

    def refuse(file: Path, *args, **kwargs):
        asked.append(file)
        raise AssertionError(f"weights of {file} read before the checks")

    monkeypatch.setattr(_format, "read_tensors", refuse)
    monkeypatch.setattr(_shards.fmt, "read", lambda file, **kw: refuse(file))
    return asked


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_every_refusal_before_the_weights(
    layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trust, the config's bounds, a config that does not build and tensors that do not fit
    (strict) are all refused from the header alone."""
    size = "300B" if layout == "sharded" else None
    file = mf.save(mf.build(seq(lin(8, 8), lin(8, 8))), tmp_path / "c", max_shard_size=size)
    doc = json.loads(_format.read_header(file).meta["modelfactory"]) if size is None else None
    cases = {
        "untrusted": ({"model": {"_target_": "os.system", "_args_": ["true"]}}, "not under a"),
        "too many blocks": (
            {"model": {"_target_": "modelfactory.blocks.Repeat", "n": 10**6, "block": lin(8, 8)}},
            "more than the 50,000 blocks",
        ),
        "does not build": ({"model": lin(8, -1)}, "does not build"),
        "does not fit": ({"model": seq(lin(8, 8), lin(8, 9))}, "does not fit"),
    }
    asked = _no_weights(monkeypatch)
    for name, (config, message) in cases.items():
        if doc is not None:
            monkeypatch.undo()
            rewrite_doc(file, config={**doc["config"], **config})
            asked = _no_weights(monkeypatch)
            target = file
        else:
            target = _rewrite_index(file, config)
        with pytest.raises(CheckpointError, match=message) as e:
            mf.load(target)
        assert isinstance(e.value, UntrustedTargetError) == (name == "untrusted"), name
    assert asked == []


def _rewrite_index(index: Path, config: dict) -> Path:
    """The sharded checkpoint with the index's document naming ``config`` (digest redone;
    the shards' set digest no longer matches, which only a read of a shard would find)."""
    text = json.loads(index.read_text())
    doc = json.loads(text["metadata"]["modelfactory"])
    doc["config"] = {**doc["config"], **config}
    doc["digest"] = _format._doc_digest(doc)
    text["metadata"]["modelfactory"] = _format.doc_text(doc)
    index.write_text(json.dumps(text))
    return index
