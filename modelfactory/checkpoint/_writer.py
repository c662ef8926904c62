"""A safetensors writer that aligns every tensor to 64 bytes in the file.

``safetensors.torch.save_file`` packs tensors back to back, so a memory-mapped
tensor can start at any 4-byte boundary, and some CPU kernels (``gemv``,
vectorized reductions) round differently on unaligned data: a restored model
would not be bit-exact. Here the header is padded with spaces and small
``uint8`` padding entries fill the gaps (the format forbids holes), so every
tensor starts 64-byte aligned when the file is mapped. The output is an
ordinary safetensors file, written in one streaming pass, byte-identical for
identical input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

__all__ = [
    "ALIGN",
    "PAD_PREFIX",
    "dtype_name",
    "dtype_named",
    "dtype_of",
    "unsupported",
    "write_file",
]

ALIGN = 64
PAD_PREFIX = "__modelfactory_pad__."

_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2", torch.uint16: "U16", torch.uint32: "U32",
    torch.uint64: "U64", torch.complex64: "C64",
}  # fmt: skip
_NAMES = {code: str(dt).removeprefix("torch.") for dt, code in _CODES.items()}
_DTYPES = {code: dt for dt, code in _CODES.items()}
_BY_NAME = {name: _DTYPES[code] for code, name in _NAMES.items()}


def dtype_name(code: str) -> str:
    """safetensors' dtype code (``"BF16"``) -> torch's name (``"bfloat16"``)."""
    return _NAMES.get(code, code)


def dtype_named(name: str) -> torch.dtype | None:
    """torch's name (``"bfloat16"``) -> the dtype, ``None`` for a name no stored dtype has."""
    return _BY_NAME.get(name)


def dtype_of(code: str) -> torch.dtype:
    """safetensors' dtype code (``"BF16"``) -> the torch dtype; ``ValueError`` if unknown."""
    if code not in _DTYPES:
        raise ValueError(f"unknown dtype {code!r}")
    return _DTYPES[code]


def unsupported(names: Iterable[str], tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """One line per name reserved for padding and per tensor whose dtype cannot be stored."""
    out = [
        f"name {k!r} is reserved for padding (it starts with {PAD_PREFIX!r}); rename it"
        for k in names
        if k.startswith(PAD_PREFIX)
    ]
    out += [
        f"tensor {k!r} has dtype {str(t.dtype).removeprefix('torch.')}, which safetensors "
        f"cannot store; convert it (supported: {', '.join(_NAMES.values())})"
        for k, t in tensors.items()
        if t.dtype not in _CODES
    ]
    return out


def write_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` (contiguous, on the CPU) in name order, each 64-byte aligned."""
    index: dict[str, dict] = {"__metadata__": metadata}
    chunks: list[torch.Tensor | int] = []  # a tensor, or a number of zero bytes
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if name.startswith(PAD_PREFIX):
            raise ValueError(f"tensor name {name!r} is reserved for padding")
        if t.dtype not in _CODES:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        gap = -offset % ALIGN
        if gap:
            index[f"{PAD_PREFIX}{len(index)}"] = _entry("U8", [gap], offset, gap)
            chunks.append(gap)
            offset += gap
        nbytes = t.numel() * t.element_size()
        index[name] = _entry(_CODES[t.dtype], list(t.shape), offset, nbytes)
        chunks.append(t)
        offset += nbytes
    header = json.dumps(index, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % ALIGN)  # data starts aligned too
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for chunk in chunks:
            if isinstance(chunk, int):
                f.write(bytes(chunk))
            elif chunk.numel():
                f.write(memoryview(chunk.reshape(-1).view(torch.uint8).numpy()))


def _entry(code: str, shape: list[int], offset: int, nbytes: int) -> dict:
    return {"dtype": code, "shape": shape, "data_offsets": [offset, offset + nbytes]}
