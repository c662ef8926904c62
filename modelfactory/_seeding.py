"""Where every random number of a build comes from: the one home of seeding.

A build is a function of config + seed. Each module gets a 64-bit stream key,
``mix(parent key, node component)``, starting from ``root_key(seed)``; a key
seeds the generator that module's construction (PyTorch's default init) or its
init rules draw from. Keys are derived with a fast hash (``blake2b``), never by
reseeding per node with ``torch.manual_seed`` (~100 us a call).

PyTorch's default init draws from the device's *default* generator unless given
one, and modules take no generator. A build never touches the global generators
(nor ``torch.set_default_dtype``), so builds in several threads cannot disturb each
other or the caller: it runs the constructors under :class:`DrawFrom`, a torch function
mode (per thread, like ``torch.device(...)``) that hands every random op without an
explicit ``generator`` the build's private generator for that device (:class:`Streams`),
and every floating factory without a ``dtype`` the build's dtype. A private CPU (or CUDA)
generator seeded with a key draws exactly what the default one would: values are those
of a build that reseeded the default generator. Limits: a random op that takes no
``generator`` (``dropout``) still draws from the global generator, and a Python float
promoted into an integer tensor still takes the global default dtype.

The fast path: a CPU build in a process with no other Python thread (nobody can observe
the state it borrows) seeds the default CPU generator per node and sets the default dtype,
inside ``torch.random.fork_rng`` and a restore of the dtype (:func:`borrowed_defaults`): the same
values, without routing every torch call through the mode.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = [
    "RANDOM_FILLS",
    "DrawFrom",
    "Streams",
    "borrowed_defaults",
    "may_borrow_defaults",
    "mix",
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


def sample_generator(seed: int) -> torch.Generator:
    """The private CPU generator the seeded sample input is drawn from."""
    return torch.Generator().manual_seed(int(seed))


class Streams:
    """A build's private generators, one per device (never the global ones)."""

    def __init__(self) -> None:
        self._generators: dict[torch.device, torch.Generator] = {}
        self._last: tuple[torch.device, torch.Generator | None] | None = None

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The generator for ``device`` (``None`` on ``meta``, which draws nothing)."""
        if device.type == "meta":
            return None
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        return gen

    def seed(self, device: torch.device, key: int) -> None:
        """Start ``device``'s stream at ``key``."""
        last = self._last  # a build seeds one device object, once per module: no lookup
        if last is not None and last[0] is device:
            gen = last[1]
        else:
            gen = self.generator(device)
            self._last = (device, gen)
        if gen is not None:
            gen.manual_seed(key)


T = torch.Tensor
# Tensor methods that fill a tensor in place with random values.
RANDOM_FILLS = (
    *(T.uniform_, T.normal_, T.bernoulli_, T.exponential_, T.geometric_, T.log_normal_),
    *(T.cauchy_, T.random_),
)
_RANDOM = frozenset(
    (
        *RANDOM_FILLS,
        *(T.bernoulli, T.multinomial, torch.rand, torch.randn),
        *(torch.randint, torch.randperm, torch.normal, torch.bernoulli, torch.multinomial),
        *(torch.poisson, torch.rand_like, torch.randn_like, torch.randint_like),
    )
)
# Factories whose result takes the default dtype when none is given ...
_FLOAT_FACTORIES = frozenset(
    (
        *(torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.rand, torch.randn),
        *(torch.eye, torch.linspace, torch.logspace, torch.scalar_tensor),
    )
)
# ... and those whose result does so only for floating data (``torch.tensor([1.5])``).
_VALUE_FACTORIES = frozenset((torch.tensor, torch.as_tensor, torch.full, torch.arange))


def _takes_generator(fn: Any) -> bool:
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# torch.nn.init functions pass their ``generator`` down to the ops they call (which this
# mode does not see: a mode is off while it handles a call), so they get it themselves.
_RANDOM = _RANDOM | {
    f for f in vars(torch.nn.init).values() if inspect.isfunction(f) and _takes_generator(f)
}


def _device_of(args: tuple, kwargs: dict[str, Any]) -> torch.device:
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v.device
    device = kwargs.get("device")
    return torch.device(device) if device is not None else torch.device("cpu")


class DrawFrom(TorchFunctionMode):
    """Random ops without a ``generator`` draw from ``streams``; with ``dtype``, floating
    factories without a ``dtype`` make ``dtype`` tensors (what ``set_default_dtype`` would
    do, for this thread and this build only)."""

    def __init__(self, streams: Streams, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.streams = streams
        self.dtype = dtype if dtype != torch.get_default_dtype() else None
        self._watched = _RANDOM | (_FLOAT_FACTORIES | _VALUE_FACTORIES if self.dtype else set())

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in self._watched:  # the hot path: tensor methods, most ops
            return func(*args, **kwargs)
        if kwargs.get("generator") is None and func in _RANDOM:
            gen = self.streams.generator(_device_of(args, kwargs))
            if gen is not None:
                kwargs = {**kwargs, "generator": gen}
        if self.dtype is not None and kwargs.get("dtype") is None:
            if func in _FLOAT_FACTORIES:
                return func(*args, **{**kwargs, "dtype": self.dtype})
            if func in _VALUE_FACTORIES:
                out = func(*args, **kwargs)
                # Data that has a dtype of its own (a tensor, an array) keeps it.
                typed = any(hasattr(a, "dtype") for a in args)
                if out.dtype == torch.get_default_dtype() and not typed:
                    return func(*args, **{**kwargs, "dtype": self.dtype})
                return out
        return func(*args, **kwargs)


def may_borrow_defaults(device: torch.device) -> bool:
    """Whether a CPU build may take the fast path: no other Python thread exists (none can
    see the process-wide state it borrows), so it need not route every torch call through
    :class:`DrawFrom` (about 13 us per ``Linear``)."""
    return device.type == "cpu" and threading.active_count() == 1


class _DefaultStreams(Streams):
    """The CPU default generator, seeded per node as :class:`Streams` would be: it draws
    exactly what a private generator with the same key draws."""

    def generator(self, device: torch.device) -> torch.Generator | None:
        return torch.default_generator if device.type == "cpu" else super().generator(device)


@contextmanager
def borrowed_defaults(dtype: torch.dtype) -> Iterator[Streams]:
    """The single-threaded fast path of a CPU build: constructors draw from the default
    generator and make ``dtype`` tensors by default; the caller's RNG state and default
    dtype are restored afterwards. Only when :func:`may_borrow_defaults`."""
    old = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        if dtype != old:
            torch.set_default_dtype(dtype)
        try:
            yield _DefaultStreams()
        finally:
            torch.set_default_dtype(old)
