"""A corpus of crafted checkpoints: none executes anything; each fails naming the file."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import modelfactory as mf
from modelfactory.checkpoint import _format as _safefile
from modelfactory.checkpoint import _state
from modelfactory.errors import (
    CheckpointError,
    ModelFactoryError,
    UntrustedTargetError,
)

from .checkpoint_helpers import raw_file, rewrite
from .conftest import RELU, lin, seq


@pytest.fixture
def good(tmp_path: Path) -> Path:
    model = mf.build({"model": seq(lin(4, 8), RELU, lin(8, 2)), "input_shape": [1, 4]})
    return mf.save(model, tmp_path / "good.safetensors")


MARKER = "mf_hostile_marker"


def marker_cmd(tmp: Path) -> str:
    return f"touch {tmp / MARKER}"


def hostile_models(tmp: Path) -> dict[str, Callable[[dict], None]]:
    cmd = marker_cmd(tmp)

    def set_model(node: dict) -> Callable[[dict], None]:
        return lambda doc: doc["config"].__setitem__("model", node)

    def in_layer(node: dict) -> Callable[[dict], None]:
        return lambda doc: doc["config"]["model"]["layers"].__setitem__(1, node)

    return {
        "os.system": set_model({"_target_": "os.system", "command": cmd}),
        "builtins.eval": in_layer(
            {"_target_": "builtins.eval", "_args_": [f"__import__('os').system('{cmd}')"]}
        ),
        "subprocess.Popen": in_layer({"_target_": "subprocess.Popen", "args": cmd, "shell": True}),
        "torch.load": in_layer({"_target_": "torch.load", "f": str(tmp / "x.pt")}),
        "trusted module reaching os": in_layer(
            {"_target_": "modelfactory.checkpoint.read.os.system", "_args_": [cmd]}
        ),
        "torch.nn reaching torch.load": in_layer(
            {"_target_": "torch.nn.functional.torch.load", "f": "x"}
        ),
        "hidden in _args_": in_layer(
            {
                "_target_": "torch.nn.Sequential",
                "_args_": [{"_target_": "os.system", "_args_": [cmd]}],
            }
        ),
        "partial callable": in_layer({"_target_": "os.system", "_partial_": True}),
        "recursive false": in_layer(
            {
                "_target_": "torch.nn.Identity",
                "_recursive_": False,
                "x": {"_target_": "os.system", "command": cmd},
            }
        ),
        "in an interpolation": in_layer({"_target_": "${oc.create:{_target_: os.system}}"}),
        "env resolver": in_layer(
            {"_target_": "torch.nn.Linear", "in_features": "${oc.env:HOME}", "out_features": 2}
        ),
        "init fn": lambda doc: doc["config"].__setitem__(
            "init", {"rules": [{"params": "*", "fn": {"_target_": "os.system", "command": cmd}}]}
        ),
        "init fn in torch.nn but not an initializer": lambda doc: doc["config"].__setitem__(
            "init",
            {
                "rules": [
                    {
                        "params": "*",
                        "fn": {
                            "_target_": "torch.nn.functional.torch.save",
                            "f": str(tmp / MARKER),
                        },
                    }
                ]
            },
        ),
    }


@pytest.mark.parametrize("case", sorted(hostile_models(Path("/x"))))
def test_untrusted_targets_are_refused_and_never_called(case: str, good: Path, tmp_path: Path):
    bad = rewrite(good, tmp_path / "bad.safetensors", hostile_models(tmp_path)[case])
    with pytest.raises(CheckpointError) as e:
        mf.load(bad)
    assert str(bad) in str(e.value)
    assert not (tmp_path / MARKER).exists()


def test_untrusted_target_error_is_specific(good: Path, tmp_path: Path):
    bad = rewrite(good, tmp_path / "bad.safetensors", hostile_models(tmp_path)["os.system"])
    with pytest.raises(UntrustedTargetError, match=r"model\._target_.*os\.system"):
        mf.load(bad)
    with pytest.raises(UntrustedTargetError):
        mf.load(bad, trusted=["os.*"])  # trusted, but not an nn.Module class: still refused
    assert not (tmp_path / MARKER).exists()


def test_huge_and_deeply_nested_configs_fail_fast(good: Path, tmp_path: Path):
    def deep(doc: dict) -> None:
        node: dict = {"_target_": "torch.nn.Identity"}
        for _ in range(5000):
            node = {"_target_": "modelfactory.blocks.Residual", "body": node}
        doc["config"]["model"] = node

    def wide(doc: dict) -> None:
        doc["config"]["model"] = {
            "_target_": "modelfactory.blocks.Sequential",
            "layers": [{"_target_": "torch.nn.Identity"}] * 200_000,
        }

    for name, mutate in (("deep", deep), ("wide", wide)):
        bad = rewrite(good, tmp_path / f"{name}.safetensors", mutate) if name == "wide" else None
        if bad is None:  # json.dumps itself refuses 5000 levels; write the text by hand
            text = (
                '{"_target_":"modelfactory.blocks.Residual","body":' * 5000
                + '{"_target_":"torch.nn.Identity"}'
                + "}" * 5000
            )
            raw = json.dumps({"format_version": 1, "kind": "model", "config": {"model": "@@"}})
            bad = tmp_path / "deep.safetensors"
            save_file(load_file(good), bad, metadata={"modelfactory": raw.replace('"@@"', text)})
        t = time.process_time()  # this process's CPU: a busy machine does not stretch it
        with pytest.raises(CheckpointError) as e:
            mf.load(bad)
        assert time.process_time() - t < 30  # bounded: a clear error, not a hang
        assert str(bad) in str(e.value)
        assert ("more than the 50,000" if name == "wide" else "nests too deep") in str(e.value)


def test_header_claiming_more_data_than_the_file_has(tmp_path: Path):
    bad = raw_file(
        tmp_path / "short.safetensors",
        {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}},
        b"\0" * 16,
    )
    for fn in (mf.load, mf.load_tensors, mf.verify):
        with pytest.raises(CheckpointError, match=r"short\.safetensors"):
            fn(bad)


def test_overlapping_tensor_offsets(tmp_path: Path):
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    bad = raw_file(tmp_path / "overlap.safetensors", header, b"\0" * 24)
    for fn in (mf.load, mf.load_tensors):
        with pytest.raises(CheckpointError, match=r"overlap\.safetensors"):
            fn(bad)


def test_header_length_beyond_the_file(tmp_path: Path):
    bad = tmp_path / "len.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match=r"len\.safetensors"):
        mf.load(bad)


def test_wrong_dtype_is_a_clear_error(good: Path, tmp_path: Path):
    tensors = {k: v.double() for k, v in load_file(good).items()}
    bad = tmp_path / "f64.safetensors"
    with open(good, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        doc = json.loads(json.loads(f.read(n))["__metadata__"]["modelfactory"])
    doc["tensors"] = {
        k: ["float64", v[1], _safefile.tensor_digest(tensors[k])] for k, v in doc["tensors"].items()
    }
    doc.pop("digest")
    doc["digest"] = _safefile._doc_digest(doc)
    save_file(tensors, bad, metadata={"modelfactory": json.dumps(doc)})
    with pytest.raises(CheckpointError, match=r"(?s)f64\.safetensors.*0\.weight.*float64.*float32"):
        mf.load(bad)


def test_garbage_and_empty_files(tmp_path: Path):
    for name, data in (
        ("empty", b""),
        ("garbage", b"\xff" * 100),
        ("text", b"hello world, not a file"),
    ):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(ModelFactoryError, match=f"{name}.safetensors"):
            mf.load(bad)


# --- a well-digested document whose fields have the wrong shape ---------------------------


def _set(**fields: Any) -> Callable[[dict], None]:
    return lambda doc: doc.update(fields)


def _drop_digest(doc: dict) -> None:
    doc["tensors"]["0.bias"] = doc["tensors"]["0.bias"][:2]


BAD_FIELDS: dict[str, tuple[Callable[[dict], None], str]] = {
    "aliases list": (_set(aliases=["x"]), "aliases"),
    "aliases number": (_set(aliases=5), "aliases"),
    "alias of nothing": (_set(aliases={"x": "nope"}), "aliases"),
    "alias to a list": (_set(aliases={"x": ["0.bias"]}), "aliases"),
    "nonpersistent number": (_set(nonpersistent=5), "nonpersistent"),
    "eval number": (_set(eval=5), "eval"),
    "tensors list": (_set(tensors=[]), "tensors"),
    "tensors entry number": (_set(tensors={"0.bias": 1}), "tensors"),
    "entry without digest": (_drop_digest, "tensors"),
    "format_version true": (_set(format_version=True), "format_version"),
    "format_version negative": (_set(format_version=-5), "format_version"),
    "format_version text": (_set(format_version="1"), "format_version"),
    "kind number": (_set(kind=5), "kind"),
    "config list": (_set(config=[]), "config"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_malformed_fields_are_checkpoint_errors_naming_the_field(
    case: str, good: Path, tmp_path: Path
):
    mutate, field = BAD_FIELDS[case]
    bad = rewrite(good, tmp_path / "bad.safetensors", mutate)
    target = mf.build({"model": seq(lin(4, 8), RELU, lin(8, 2))})
    readers = {
        "load": mf.load,
        "load_tensors": mf.load_tensors,
        "load_weights": lambda f: mf.load_weights(target, f),
        "verify": mf.verify,
    }
    for name, read in readers.items():
        with pytest.raises(CheckpointError) as e:
            read(bad)
        assert str(bad) in str(e.value), name
        assert repr(field) in str(e.value), name


@pytest.fixture
def tensors_file(tmp_path: Path) -> Path:
    return mf.save_tensors([torch.ones(2), torch.zeros(3)], tmp_path / "t.safetensors")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda doc: doc.pop("keys"), "keys"),
        (_set(keys=["0", "nope"]), "keys"),
        (_set(keys="01"), "keys"),
        (_set(container="tensor"), "container"),  # two keys: which one?
        (_set(container="set"), "container"),
    ],
)
def test_malformed_tensors_documents(
    mutate: Callable[[dict], Any], field: str, tensors_file: Path, tmp_path: Path
):
    bad = rewrite(tensors_file, tmp_path / "bad.safetensors", mutate)
    with pytest.raises(CheckpointError, match=rf"(?s)bad\.safetensors.*'{field}'"):
        mf.load_tensors(bad)


def test_nonpersistent_naming_a_parameter_is_refused(good: Path, tmp_path: Path):
    bad = rewrite(good, tmp_path / "bad.safetensors", _set(nonpersistent=["0.weight"]))
    with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*not buffers.*'0\.weight'"):
        mf.load(bad)


def test_tensors_left_on_meta_are_refused(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The last line of defence, should a document slip past the nonpersistent check."""
    bad = rewrite(good, tmp_path / "bad.safetensors", _set(nonpersistent=["0.weight"]))
    monkeypatch.setattr(_state, "check_nonpersistent", lambda *a: None)
    with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*'0\.weight'.*meta"):
        mf.load(bad)


def test_knob_names_and_values_from_a_file_cannot_add_lines_to_a_resaved_copy(
    good: Path, tmp_path: Path
):
    """Names are data: the knobs' header comment of config.yaml stays one comment line."""
    knobs = {"width": 8, "evil\nseed: 99": 1, "para\u2029graph": "a\nb", "nel\x85x": [1]}
    bad = rewrite(good, tmp_path / "knobs.safetensors", lambda d: d.update(knobs=knobs))
    model = mf.load(bad)
    mf.save(model, tmp_path / "again")
    text = (tmp_path / "again/config.yaml").read_text()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert len(comments) == 2 and "width=8" in comments[1] and '"evil\\nseed: 99"=1' in comments[1]
    assert yaml.safe_load(text) == mf.config_of(model)  # no key added, none changed
    assert mf.load(tmp_path / "again").state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    ("shape", "expected"),
    [([2**63, 0], r"'w'.*2\*\*63 - 1"), ([2**40, 2**40, 0], "overflow"), ([0, 2**64], "usize")],
)
def test_a_header_shape_no_tensor_can_have_is_a_checkpoint_error(
    shape: list[int], expected: str, tmp_path: Path
):
    bad = raw_file(
        tmp_path / "shape.safetensors",
        {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}},
        b"",
    )
    for read in (mf.load, mf.load_tensors, mf.verify):
        with pytest.raises(CheckpointError, match=rf"shape\.safetensors.*{expected}"):
            read(bad)


def test_an_alias_that_shadows_a_stored_tensor_is_refused(tmp_path: Path):
    good = mf.save(mf.build(seq(lin(4, 4), lin(4, 4))), tmp_path / "good.safetensors")
    bad = rewrite(
        good, tmp_path / "bad.safetensors", lambda d: d.update(aliases={"1.weight": "0.weight"})
    )
    for read in (mf.load, mf.load_tensors, mf.verify):
        with pytest.raises(CheckpointError, match=r"(?s)bad\.safetensors.*'aliases'.*1\.weight"):
            read(bad)
