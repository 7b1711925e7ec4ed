"""Cheap, reproducible randomness for host-mode decisions, drawn from a raw key.

A host decision (which member to copy, how to perturb its hyperparameters) needs a
handful of uniform numbers from the event's raw key. ``jax.random`` costs a dispatch and
a device-to-host copy per call, and seeding ``random.Random`` or a numpy ``Generator``
costs ~10-40 µs; hashing the key with a counter (BLAKE2b, eight 64-bit words per call)
costs about a microsecond and gives the same numbers in every process and on every
platform. The device path keeps ``jax.random`` (it runs inside ``jit``).
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from jaxpop.types import RawKey

__all__ = ["HostRandom"]

_WORDS = struct.Struct("<8Q")
_SCALE = 2.0**-53


class HostRandom:
    """Uniform draws in ``[0, 1)`` from ``(key, stream)``: the same sequence everywhere.

    >>> rng = HostRandom(np.array([0, 42], np.uint32), stream=3)
    >>> u = rng.random()
    >>> 0.0 <= u < 1.0 and u == HostRandom(np.array([0, 42], np.uint32), stream=3).random()
    True
    """

    __slots__ = ("_buffer", "_counter", "_prefix")

    def __init__(self, key: RawKey, stream: int = 0):
        self._prefix = np.asarray(key, np.uint32).tobytes() + int(stream).to_bytes(
            8, "little", signed=True
        )
        self._counter = 0
        self._buffer: list[int] = []

    def _word(self) -> int:
        if not self._buffer:
            block = self._prefix + self._counter.to_bytes(8, "little")
            self._counter += 1
            self._buffer = list(_WORDS.unpack(hashlib.blake2b(block, digest_size=64).digest()))
            self._buffer.reverse()
        return self._buffer.pop()

    def random(self) -> float:
        """One uniform float in ``[0, 1)`` (53 random bits)."""
        return (self._word() >> 11) * _SCALE

    def randrange(self, n: int) -> int:
        """A uniform integer in ``[0, n)`` (``n`` at most ``2**53``)."""
        if not 0 < n <= 2**53:
            raise ValueError(f"randrange needs 0 < n <= 2**53, got {n}")
        return min(int(self.random() * n), n - 1)

    def raw_keys(self, num: int) -> np.ndarray:
        """``num`` raw keys, ``uint32[num, 2]`` (for functions that take a jax key)."""
        words = [self._word() for _ in range(num)]
        return np.array([(w >> 32, w & 0xFFFFFFFF) for w in words], np.uint32).reshape(num, 2)

    def uniforms(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float64 array of uniforms in ``[0, 1)`` of ``shape``."""
        size = int(np.prod(shape, dtype=np.int64))
        if size > 64:  # a seeded numpy generator is cheaper past a few dozen draws
            return np.random.Generator(np.random.PCG64(self._word())).random(shape)
        return np.fromiter((self.random() for _ in range(size)), np.float64, size).reshape(shape)
