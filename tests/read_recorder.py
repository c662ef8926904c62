"""Counting what a reader reads: ``safe_open`` wrapped to record each tensor or slice read,
and the byte ranges of the file those reads cover."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


class Recorder:
    """``safe_open`` that records every read: ``(file, key, box)``, ``box`` ``None`` for a
    whole tensor."""

    def __init__(self, real: Any) -> None:
        self.real, self.reads = real, []

    def __call__(self, file: Any, *args: Any, **kwargs: Any) -> Any:
        recorder, handle = self, self.real(file, *args, **kwargs)

        class Handle:
            def __enter__(self) -> Any:
                self.f = handle.__enter__()
                return self

            def __exit__(self, *exc: Any) -> Any:
                return handle.__exit__(*exc)

            def get_tensor(self, key: str) -> torch.Tensor:
                recorder.reads.append((str(file), key, None))
                return self.f.get_tensor(key)

            def get_slice(self, key: str) -> Any:
                piece = self.f.get_slice(key)

                class Slice:
                    def __getitem__(self, box: Any) -> torch.Tensor:
                        rows = [(s.start, s.stop) for s in box]
                        recorder.reads.append((str(file), key, rows))
                        return piece[box]

                return Slice()

        return Handle()


def byte_ranges(reads: list) -> list[tuple[str, str, int, int]]:
    """``(file name, key, first byte, end byte)`` in the file of each read (a read of rows
    of a row-major tensor is one range; any other box would not be, and is refused)."""
    out = []
    for file, key, box in reads:
        data = Path(file).read_bytes()
        n = int.from_bytes(data[:8], "little")
        entry = json.loads(data[8 : 8 + n])[key]
        start, end = entry["data_offsets"]
        base = 8 + n
        if box is None:
            out.append((Path(file).name, key, base + start, base + end))
            continue
        shape = entry["shape"]
        assert all(b == (0, s) for b, s in zip(box[1:], shape[1:], strict=True)), box
        row = (end - start) // max(shape[0], 1)
        out.append(
            (Path(file).name, key, base + start + box[0][0] * row, base + start + box[0][1] * row)
        )
    return out
