"""Where every random number of a build comes from: the one home of seeding.

A build is a function of config + seed. Each module gets a 64-bit stream key,
``mix(parent key, node component)``, starting from ``root_key(seed)``; a key
seeds the generator that module's construction (PyTorch's default init) or its
init rules draw from. Keys are derived with a fast hash (``blake2b``), never by
reseeding per node with ``torch.manual_seed`` (~100 us a call).

PyTorch's default init draws from the device's *default* generator, so a build
reseeds it and restores it afterwards with ``torch.random.fork_rng``: building
leaves the global RNG as it found it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

__all__ = [
    "default_generator",
    "mix",
    "preserved_rng",
    "root_key",
    "sample_generator",
]


def mix(key: int, text: str) -> int:
    """Derive a child stream key (64 bits) from a parent key and a component."""
    data = key.to_bytes(8, "little") + text.encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def root_key(seed: int) -> int:
    """The stream key of the model's root node for ``seed``."""
    return mix(0, f"seed={int(seed)}")


def default_generator(device: torch.device) -> torch.Generator | None:
    """The generator PyTorch's default init draws from on ``device`` (``None`` on ``meta``)."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return None


@contextmanager
def preserved_rng(devices: Iterable[torch.device]) -> Iterator[None]:
    """Restore the CPU RNG and the RNG of every CUDA device in ``devices`` on exit."""
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    with torch.random.fork_rng(devices=cuda if torch.cuda.is_available() else []):
        yield


def sample_generator(seed: int) -> torch.Generator:
    """The private CPU generator the seeded sample input is drawn from."""
    return torch.Generator().manual_seed(int(seed))
