"""Host-side randomness: keys for events, key splitting and generation ids.

jaxpop passes randomness as *raw* PRNG keys: ``numpy.uint32`` arrays of shape ``(2,)``,
jax's classic ``PRNGKey`` layout. Such a key goes straight into ``jax.random``
functions (``jax.random.normal(key)``) and also seeds numpy
(``numpy.random.default_rng(key)``), so a mutation function can use either library.

The key of the ``i``-th state-changing event of a run is
``key_data(jax.random.fold_in(root, i))`` for the run's root key. That definition makes
every event's randomness a pure function of ``(seed, event index)``, so a journal of
events replays exactly. The controller computes these keys in vectorized blocks and
caches the current block, because one ``jax.random`` call costs tens of microseconds on
the host while a whole controller call should cost a few.
"""

from __future__ import annotations

import functools
import hashlib
import numbers
import operator
import secrets
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpop.types import GenerationId, RawKey

__all__ = ["as_raw_key", "event_key", "new_generation_id", "root_key", "split_key"]

# keys per cached block (8 KiB): one jitted call costs about as much for 1024 keys as for
# 256 (60-100 us on a CPU), so this amortises it to ~0.1 us per event
_BLOCK = 1024
_UINT32 = np.dtype(np.uint32)  # (compared by identity: a raw key's, checked at each call)


def root_key(seed: int | None) -> RawKey:
    """The raw root key (``uint32[2]``) of a run seeded with ``seed``.

    ``seed``: an int in ``[-2**31, 2**64)``, or ``None`` for a random one (a run of its
    own: the generation ids it makes are no other run's). JAX without x64 keeps only a seed's low
    32 bits, so ``2**32`` would be the run of ``0``: a seed past 32 bits gets its high
    bits as the key's first word, as JAX with x64 does (``[seed >> 32, seed % 2**32]``,
    threefry's layout), so the key is the same with or without x64. Seeds below
    ``2**32`` are JAX's own; a negative seed is taken modulo ``2**32`` (``-1`` is the
    run of ``2**32 - 1``), with or without x64 (JAX with x64 extends its sign into the
    high word instead). JAX's default key implementation must be threefry (a
    ``RuntimeError`` says so otherwise).

    >>> root_key(0), root_key(2**32 + 5)
    (array([0, 0], dtype=uint32), array([1, 5], dtype=uint32))
    """
    if seed is None:
        seed = secrets.randbits(64)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}: {seed!r:.40}")
    impl = jax.config.jax_default_prng_impl
    if impl != "threefry2x32":
        raise RuntimeError(
            f"jaxpop's keys are raw threefry keys (uint32[2]), but jax_default_prng_impl is "
            f"{impl!r}: leave it at 'threefry2x32' in the controller's process (a train "
            f"step may still make keys of its own with jax.random.key(seed, impl={impl!r}))"
        )
    seed = int(seed)
    if not -(2**31) <= seed < 2**64:
        raise ValueError(f"seed must be an int in [-2**31, 2**64), got {seed}")
    if seed < 0:
        seed += 2**32
    if seed < 2**32:
        return np.asarray(jax.random.key_data(jax.random.key(seed)), dtype=np.uint32)
    key = np.array(jax.random.key_data(jax.random.key(seed & 0xFFFFFFFF)), dtype=np.uint32)
    key[0] = seed >> 32  # threefry's [high word, low word]
    return key


def as_raw_key(key: Any, name: str = "key") -> RawKey:
    """``key`` as a raw key: a ``uint32`` numpy array of shape ``(2,)``.

    Integer arrays of that shape with values in ``[0, 2**32)`` are taken (converted);
    anything else is refused, since reading part of it would silently give another
    key's run (a key of 4 words, rbg's, read as its first 2; floats cut to ints).

    Raises:
      TypeError: a typed key (``jax.random.key(0)``: pass
        ``jax.random.key_data(key)``), not integers, or not of shape ``(2,)``.
      ValueError: a word outside ``[0, 2**32)``.

    >>> as_raw_key([0, 7])
    array([0, 7], dtype=uint32)
    """
    if type(key) is np.ndarray and key.dtype is _UINT32 and key.shape == (2,):
        return key
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError(
            f"{name} must be a raw key (uint32[2], jaxpop.keys.root_key(seed)), got a typed "
            f"key ({key.dtype}); pass jax.random.key_data(key) for a threefry key"
        )
    try:
        array = np.asarray(key)
    except Exception as e:
        raise TypeError(f"{name} must be a raw key (uint32[2]), got {type(key).__name__}") from e
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"{name} must be a raw key: an array of integers (uint32[2]), got {array.dtype}"
        )
    if array.shape != (2,):
        raise TypeError(
            f"{name} must be a raw key of threefry's shape (2,) (jaxpop.keys.root_key(seed)), "
            f"got one of shape {array.shape}"
        )
    if ((array < 0) | (array > 0xFFFFFFFF)).any():
        raise ValueError(f"{name}'s words must be in [0, 2**32), got {array.tolist()}")
    return array.astype(np.uint32)


@functools.partial(jax.jit, static_argnums=2)
def _fold_in_range(root: jax.Array, start: jax.Array, size: int) -> jax.Array:
    key = jax.random.wrap_key_data(root)
    indices = start + jnp.arange(size, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(key, i)))(indices)


@functools.lru_cache(maxsize=8)
def _key_block(root: tuple[int, int], block: int) -> np.ndarray:
    start = np.uint32(block * _BLOCK)
    keys = _fold_in_range(np.asarray(root, np.uint32), start, _BLOCK)
    keys = np.asarray(keys, dtype=np.uint32)
    keys.setflags(write=False)
    return keys


def event_key(root: RawKey, index: int) -> RawKey:
    """The raw key of event number ``index`` of the run whose root key is ``root``.

    Equal to ``jax.random.key_data(jax.random.fold_in(wrap_key_data(root), index))``
    but amortised over blocks of events. The returned array is read-only.

    >>> import jax
    >>> root = root_key(0)
    >>> (event_key(root, 3) == jax.random.fold_in(jax.random.PRNGKey(0), 3)).all()
    Array(True, dtype=bool)
    """
    if type(index) is not int:  # (3.7 was taken as event 3)
        index = _index(index, "event index")
    if not 0 <= index < 2**32:
        raise ValueError(f"event index must be in [0, 2**32), got {index}")
    if type(root) is not np.ndarray or root.dtype is not _UINT32 or root.shape != (2,):
        root = as_raw_key(root, "root")
    block, offset = divmod(index, _BLOCK)
    return _key_block((int(root[0]), int(root[1])), block)[offset]


_split = jax.jit(jax.random.split, static_argnums=1)


def split_key(key: RawKey, num: int) -> np.ndarray:
    """``num`` independent raw keys (shape ``(num, 2)``) derived from a raw ``key``.

    The same keys as ``jax.random.split(key, num)``, through a jitted call (a few
    microseconds on the host instead of ~100 for the eager call).
    """
    num = _index(num, "num")
    if not 0 <= num < 2**31:  # (jax aborts the process for 2**40)
        raise ValueError(f"split_key makes 0 to 2**31 - 1 keys, got num={num}")
    return np.asarray(_split(as_raw_key(key), num), dtype=np.uint32)


def new_generation_id(key: RawKey, index: int = 0) -> GenerationId:
    """A fresh generation id derived from a raw key (and an index, for several per key).

    Ids are 16 hex digits of a hash of the key, so they are reproducible from the run's
    seed and unique with overwhelming probability (the core still checks).

    >>> key = root_key(0)
    >>> new_generation_id(key), new_generation_id(key, 1)
    ('5250a507f994740e', 'eb82aaee034ca970')
    """
    if type(index) is not int:  # (1.5 and True gave index 1's id)
        index = _index(index, "index")
    if not 0 <= index < 2**64:
        raise ValueError(f"index must be in [0, 2**64), got {index}")
    data = as_raw_key(key).tobytes() + index.to_bytes(8, "little")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _index(value: Any, name: str) -> int:
    """``value`` as an int (an integer numpy scalar too), or ``TypeError``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got a bool: {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int, got {type(value).__name__}: {value!r:.40}"
        ) from None
