"""Shared by the checkpoint tests: building a shipped model, comparing two models, reading a
header, rewriting a checkpoint's document (in place, or into a crafted copy), a raw file."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import modelfactory as mf
from modelfactory._config import normalize
from modelfactory._sample import sample_input
from modelfactory.checkpoint import _format as fmt
from modelfactory.configs import compose


def sample_of(model: nn.Module) -> torch.Tensor:
    bc = normalize(mf.config_of(model))
    x = sample_input(bc, torch.device("cpu"))
    if x.is_floating_point():
        x = x.to(next(model.parameters()).dtype)
    return x


def assert_same(a: nn.Module, b: nn.Module) -> None:
    """Same classes, tensors (bit for bit, same dtype), modes and outputs."""
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k
    assert [m.training for m in a.modules()] == [m.training for m in b.modules()]
    x = sample_of(a)
    ya, yb = (_run(m, x) for m in (a, b))
    assert ya.dtype == yb.dtype
    assert torch.equal(ya, yb)


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, with the same dropout masks for every model (BERT's dropout is on in
    training mode)."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        return model(x)


def build_model(name: str, **kw: Any) -> nn.Module:
    return mf.build(compose([f"model={name}"]), **kw)


def header_of(file: Path) -> dict[str, Any]:
    data = file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])["__metadata__"]


def rewrite_doc(file: Path, drop: tuple[str, ...] = (), **doc_changes: Any) -> None:
    """Rewrite a checkpoint with a changed document (digests recomputed)."""
    doc = json.loads(header_of(file)["modelfactory"])
    tensors = {k: v.clone() for k, v in fmt.read_tensors(file).items() if k not in drop}
    keep = {k: v for k, v in doc.items() if k not in ("format_version", "tensors", "digest")}
    fmt.write(file, tensors, {**keep, **doc_changes})
    file.with_name("config.yaml").unlink(missing_ok=True)


def rewrite(src: Path, dst: Path, mutate: Callable[[dict], Any]) -> Path:
    """Copy ``src`` with its modelfactory document changed by ``mutate`` (digest recomputed,
    so only the content is hostile, not the bookkeeping)."""
    tensors = load_file(src)
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        doc = json.loads(json.loads(f.read(n))["__metadata__"]["modelfactory"])
    mutate(doc)
    doc.pop("digest", None)
    doc["digest"] = fmt._doc_digest(doc)
    save_file(tensors, dst, metadata={"modelfactory": json.dumps(doc)})
    return dst


def raw_file(dst: Path, header: dict, data: bytes) -> Path:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    dst.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return dst
