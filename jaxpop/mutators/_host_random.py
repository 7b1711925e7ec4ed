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
_STREAM = struct.Struct("<q")
_COUNTER = struct.Struct("<Q")
_SCALE = 2.0**-53
_UINT32 = np.dtype(np.uint32)
_LITTLE_UINT32 = np.dtype("<u4")


class HostRandom:
    """Uniform draws in ``[0, 1)`` from ``(key, stream)``: the same sequence everywhere.

    >>> rng = HostRandom(np.array([0, 42], np.uint32), stream=3)
    >>> u = rng.random()
    >>> 0.0 <= u < 1.0 and u == HostRandom(np.array([0, 42], np.uint32), stream=3).random()
    True
    """

    __slots__ = ("_block", "_counter", "_next", "_prefix", "_words")

    def __init__(self, key: RawKey, stream: int = 0):
        if type(key) is np.ndarray and key.dtype is _UINT32:  # the usual case: no conversion
            key_bytes = key.tobytes()
        else:
            key_bytes = np.asarray(key, np.uint32).tobytes()
        if type(stream) is not int:
            stream = int(stream)
        try:
            self._prefix = key_bytes + _STREAM.pack(stream)
        except struct.error:
            raise OverflowError(
                f"stream must fit in 64 signed bits, got one of {stream.bit_length()} bits"
            ) from None
        self._counter = 0  # blocks hashed so far
        self._block = b""  # the last one's digest (eight little-endian 64-bit words),
        self._words: tuple[int, ...] = ()  # the same words as ints,
        self._next = 0  # of which the first _next are used

    def _refill(self) -> None:
        data = self._prefix + _COUNTER.pack(self._counter)
        self._counter += 1
        self._block = hashlib.blake2b(data).digest()  # blake2b's default: 64 bytes
        self._words = _WORDS.unpack(self._block)
        self._next = 0

    def _word(self) -> int:
        if self._next == len(self._words):
            self._refill()
        i = self._next
        self._next = i + 1
        return self._words[i]

    def random(self) -> float:
        """One uniform float in ``[0, 1)`` (53 random bits)."""
        if self._next == len(self._words):  # _word(), inlined: this is the hot path
            self._refill()
        i = self._next
        self._next = i + 1
        return (self._words[i] >> 11) * _SCALE

    def randrange(self, n: int) -> int:
        """A uniform integer in ``[0, n)`` (``n`` at most ``2**53``)."""
        if not 0 < n <= 2**53:
            raise ValueError(f"randrange needs 0 < n <= 2**53, got {n}")
        if self._next == len(self._words):  # _word(), inlined: this is the hot path
            self._refill()
        i = self._next
        self._next = i + 1
        return min(int((self._words[i] >> 11) * _SCALE * n), n - 1)  # random() * n

    def raw_keys(self, num: int) -> np.ndarray:
        """``num`` raw keys, ``uint32[num, 2]`` (for functions that take a jax key)."""
        if self._next == len(self._words):
            self._refill()
        i = self._next
        if type(num) is int and 0 < num <= len(self._words) - i:  # the usual case
            self._next = i + num
            # key k is word i + k's high 32 bits, then its low 32 bits: read in place from
            # the digest (a column stride of -4 bytes), then copied
            view = np.ndarray((num, 2), _LITTLE_UINT32, self._block, 8 * i + 4, (8, -4))
            return view.astype(np.uint32)
        words = [self._word() for _ in range(num)]
        return np.array([(w >> 32, w & 0xFFFFFFFF) for w in words], np.uint32).reshape(num, 2)

    def uniforms(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float64 array of uniforms in ``[0, 1)`` of ``shape``."""
        size = int(np.prod(shape, dtype=np.int64))
        if size > 64:  # a seeded numpy generator is cheaper past a few dozen draws
            return np.random.Generator(np.random.PCG64(self._word())).random(shape)
        return np.fromiter((self.random() for _ in range(size)), np.float64, size).reshape(shape)
