"""Reading a safetensors file's tensors into memory this process owns (no mapping).

A memory-mapped tensor reads the file whenever its pages are touched: a file
overwritten in place later changes the model's weights, and one truncated makes the
process die of ``SIGBUS``. Here each tensor gets its own allocation (64-byte aligned,
like the file's tensors) and the bytes are read into it with ``readinto``, which
releases the GIL, so several files can be read in parallel threads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from ._writer import PAD_PREFIX, dtype_of

__all__ = ["read_owned"]


def read_owned(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``file`` (padding entries left out), copied into fresh memory.

    The header was checked by safetensors already (``read_header``); this reads it again
    from the same open file, so header and bytes come from one version of the file.
    """
    try:
        with open(file, "rb", buffering=0) as fh:
            n = int.from_bytes(fh.read(8), "little")
            index = json.loads(fh.read(n))
            base = 8 + n
            out = {}
            for name, entry in index.items():
                if name == "__metadata__" or name.startswith(PAD_PREFIX):
                    continue
                t = torch.empty(entry["shape"], dtype=dtype_of(entry["dtype"]))
                start, end = entry["data_offsets"]
                _read_into(fh, base + start, t, end - start)
                out[name] = t
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(file, f"cannot read tensors ({e})") from e
    return out


def _read_into(fh, offset: int, t: torch.Tensor, nbytes: int) -> None:
    if nbytes != t.numel() * t.element_size():
        raise ValueError(f"{nbytes} bytes stored for a tensor of {t.numel()} elements")
    if not nbytes:
        return
    view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    fh.seek(offset)
    done = 0
    while done < nbytes:  # one read returns at most about 2 GiB on Linux
        got = fh.readinto(view[done:])
        if not got:
            raise ValueError(f"file ends {nbytes - done} bytes before a tensor's end")
        done += got
