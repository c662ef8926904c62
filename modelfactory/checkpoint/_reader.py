"""Reading a safetensors file's tensors into memory this process owns (no mapping).

A memory-mapped tensor reads the file whenever its pages are touched: a file
overwritten in place later changes the model's weights, and one truncated makes the
process die of ``SIGBUS``. Here each tensor gets its own allocation (64-byte aligned,
like the file's tensors) and the bytes are read into it with ``readinto``, which
releases the GIL, so several files, or chunks of one, can be read in parallel threads.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ._writer import PAD_PREFIX, dtype_of

__all__ = ["read_owned"]


CHUNK = 64 * 2**20  # bytes per read task, so that threads share one big tensor


def read_owned(file: Path, threads: int = 1) -> dict[str, torch.Tensor]:
    """Every tensor of ``file`` (padding entries left out), copied into fresh memory, by
    ``threads`` threads reading chunks of it at once (``os.preadv``, which releases the GIL).

    The header was checked by safetensors already (``read_header``); this reads it again
    from the same open file, so header and bytes come from one version of the file.
    """
    try:
        with open(file, "rb", buffering=0) as fh:
            n = int.from_bytes(fh.read(8), "little")
            index = json.loads(fh.read(n))
            out, tasks = _allocate(index, 8 + n)
            if threads > 1 and hasattr(os, "preadv") and len(tasks) > 1:
                with ThreadPoolExecutor(threads, thread_name_prefix="modelfactory-read") as pool:
                    list(pool.map(lambda task: _read_into(fh, *task), tasks))
            else:
                for task in tasks:
                    _read_into(fh, *task)
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RuntimeError) as e:
        raise CheckpointError(file, f"cannot read tensors ({e})") from e
    return out


def _allocate(index: dict, base: int) -> tuple[dict[str, torch.Tensor], list[tuple]]:
    """An empty tensor per entry, and the reads that fill them: ``(buffer, file offset)``."""
    out, tasks = {}, []
    for name, entry in index.items():
        if name == "__metadata__" or name.startswith(PAD_PREFIX):
            continue
        t = torch.empty(entry["shape"], dtype=dtype_of(entry["dtype"]))
        start, end = entry["data_offsets"]
        if end - start != t.numel() * t.element_size():
            raise ValueError(f"{end - start} bytes stored for {name!r} of {t.numel()} elements")
        out[name] = t
        if t.numel():
            view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
            tasks += [(view[i : i + CHUNK], base + start + i) for i in range(0, len(view), CHUNK)]
    return out, tasks


def _read_into(fh: Any, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):  # one read returns at most about 2 GiB on Linux
        if hasattr(os, "preadv"):  # no shared file position: threads may read at once
            got = os.preadv(fh.fileno(), [view[done:]], offset + done)
        else:
            fh.seek(offset + done)
            got = fh.readinto(view[done:])
        if not got:
            raise ValueError(f"file ends {len(view) - done} bytes before a tensor's end")
        done += got
