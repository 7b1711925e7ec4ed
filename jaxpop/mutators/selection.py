"""Selection: which member of a population each member should copy.

Each selection maps a PRNG key and scores, shape ``(n,)``, to the member each member
copies (itself to keep going), ``int32[n]``: :func:`truncation`, :func:`tournament` and
:func:`copy_best` (every member copies the best), jittable; each has a numpy twin for
host controllers (:data:`HOST_SELECTIONS`). ``docs/mutators.md#selection`` gives the
rules they share: direction, non-finite scores rank worst, only a strictly better
member is copied, and the ``where`` mask.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxpop.types import Mode

__all__ = [
    "HOST_SELECTIONS",
    "HostRng",
    "Mode",
    "SelectionFn",
    "best_member",
    "canonical_scores",
    "device_scores",
    "fraction_as_float",
    "in_bottom",
    "num_in_quantile",
    "quantile_size",
    "sort_key",
    "tournament",
    "tournament_host",
    "tournament_parent",
    "truncation",
    "copy_best",
    "copy_best_host",
    "truncation_host",
    "truncation_parent",
    "truncation_top",
    "winner_take_all",
    "winner_take_all_host",
]

#: ``(key, scores) -> indices``: a selection with its options bound, scores lower-is-better.
SelectionFn = Callable[[jax.Array, jax.Array], jax.Array]


class HostRng(Protocol):
    """The random source of a host selection: ``random.Random`` or ``HostRandom``.

    A conforming object has ``randrange(n)``, returning a uniform int in ``[0, n)``.
    """

    def randrange(self, n: int, /) -> int: ...


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f'mode must be "min" (lower is better) or "max", got {mode!r}')


def canonical_scores(scores: jax.Array, mode: Mode = "min") -> jax.Array:
    """``scores`` as a float array to minimise, with every non-finite entry ``+inf``.

    With ``mode="max"`` the scores are negated first; NaN, ``+inf`` and ``-inf`` become
    ``+inf`` in both modes.

    >>> import numpy as np
    >>> canonical_scores(np.array([2.0, np.nan, -np.inf]), mode="max")
    Array([-2., inf, inf], dtype=float32)
    """
    _check_mode(mode)
    scores = jnp.asarray(scores)
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(
            f"scores must be a non-empty vector with one score per member, shape (n,), got "
            f"shape {scores.shape}"
            + (
                " (one score of shape (1,) per member? return a scalar score)"
                if scores.ndim == 2 and scores.shape[1] == 1
                else " (vmap over populations instead)"
                if scores.ndim > 1
                else ""
            )
        )
    if jnp.issubdtype(scores.dtype, jnp.complexfloating) or scores.dtype == bool:
        raise TypeError(f"scores must be real numbers, got {scores.dtype}")
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    if mode == "max":
        scores = -scores
    return jnp.where(jnp.isfinite(scores), scores, jnp.inf)


def device_scores(scores: Any, dtype: Any = None) -> Any:
    """Host scores as a device selection must see them to order them as the host does.

    A selection computes in ``dtype`` (default: JAX's float type for them, float32
    unless x64 is enabled), where finite scores past +-3.4e38 become inf (as if the run
    had diverged) and distinct scores can become equal (``1.0`` and ``1.0 + 1e-9``;
    ints past 2**24; subnormals, which XLA flushes to zero). When the cast keeps every
    distinct finite score distinct and finite, ``scores`` is returned as it is (ints
    cast to ``dtype``: JAX would wrap an int64 past 2**31 to int32); else their ranks
    in ``dtype`` (0 for the lowest; NaN for a non-finite score, which ranks last in
    every selection), which order the members exactly as the scores do, in either mode.
    Host scores of ``dtype`` itself are checked as well (their subnormals), and numpy
    ``bfloat16`` scores are read as float32 (by default computed in float32).
    A JAX array already of ``dtype`` (by default: a float one of its own) is returned
    as it is; one of another dtype (float64 under x64 for float32, int32) is read as
    host scores are, or, while traced, decided the same way on the device.

    >>> device_scores(np.array([3.0, 1e39, np.nan, 1.0])).tolist()
    [1.0, 2.0, nan, 0.0]
    >>> device_scores(np.array([3.0, 1.0])).tolist()  # float32 orders them: unchanged
    [3.0, 1.0]
    """
    if isinstance(scores, jax.Array):
        floating = jnp.issubdtype(scores.dtype, jnp.floating)
        if scores.ndim != 1 or not (floating or jnp.issubdtype(scores.dtype, jnp.integer)):
            return scores  # (canonical_scores says what is wrong with them)
        if dtype is None:  # (ints: JAX's float, as for host ones)
            dtype = scores.dtype if floating else jax.dtypes.canonicalize_dtype(np.float32)
        if scores.dtype == dtype:
            return scores
        if isinstance(scores, jax.core.Tracer):
            return _device_ranks(scores, dtype)
    host = np.asarray(scores)
    widened = host.dtype.kind == "V" and jnp.issubdtype(host.dtype, jnp.floating)
    if widened:  # bfloat16 (and ml_dtypes' other floats): exact in float32, read as it
        host = host.astype(np.float32)
    if host.ndim != 1 or host.dtype.kind not in "iuf":
        return scores  # (canonical_scores says what is wrong with them)
    if dtype is None:
        dtype = jax.dtypes.canonicalize_dtype(host.dtype if host.dtype.kind == "f" else np.float32)
    # (scores already of dtype are checked too: their subnormals would become zero)
    finite = np.isfinite(host)
    ordered = np.sort(host[finite])
    rises = ordered[1:] > ordered[:-1]  # between distinct scores
    info = jnp.finfo(dtype)  # (numpy's knows no bfloat16)
    if not ordered.size or max(abs(float(ordered[0])), abs(float(ordered[-1]))) <= float(info.max):
        cast = ordered.astype(dtype).astype(np.float64)  # (exact: compared in float64)
        cast[np.abs(cast) < float(info.tiny)] = 0  # XLA flushes subnormals to zero
        if np.all(cast[1:][rises] > cast[:-1][rises]):
            return scores if host.dtype.kind == "f" and not widened else host.astype(dtype)
    distinct = ordered[np.concatenate([[True], rises])]
    ranks = np.full(host.shape, np.nan, dtype)
    ranks[finite] = np.searchsorted(distinct, host[finite])
    return ranks


def _device_ranks(scores: jax.Array, dtype: Any) -> jax.Array:
    """:func:`device_scores` of traced scores, decided on the device as on the host: the
    scores cast to ``dtype`` where that keeps every distinct finite score distinct and
    finite; else their ranks (0 for the lowest finite score, one more for each distinct
    higher one, NaN for a non-finite one)."""
    finite = jnp.isfinite(scores)
    keyed = scores
    if jnp.issubdtype(scores.dtype, jnp.floating):
        keyed = jnp.where(finite, scores, jnp.inf)  # (after every finite one)
    ordered = jnp.sort(keyed)
    rises = ordered[1:] > ordered[:-1]
    dense = jnp.cumsum(jnp.concatenate([jnp.zeros(1, jnp.int32), rises.astype(jnp.int32)]))
    ranks = jnp.where(finite, dense[jnp.searchsorted(ordered, keyed)].astype(dtype), jnp.nan)
    cast = ordered.astype(dtype)
    cast = jnp.where(jnp.abs(cast) < jnp.finfo(dtype).tiny, 0, cast)  # (XLA flushes them)
    held = jnp.isfinite(ordered)
    keeps = jnp.all(~held | jnp.isfinite(cast)) & jnp.all(
        ~(rises & held[1:]) | (cast[1:] > cast[:-1])
    )
    return jnp.where(keeps, scores.astype(dtype), ranks)


def _keeps_host_order(select: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``select`` (a jitted selection), given :func:`device_scores` of host scores."""

    @functools.wraps(select)
    def selection(key: jax.Array, scores: jax.Array, **options: Any) -> jax.Array:
        return select(key, device_scores(scores), **options)

    for name in ("lower", "trace", "eval_shape", "clear_cache"):  # the jitted API
        setattr(selection, name, getattr(select, name))
    return selection


def num_in_quantile(n: int, quantile_fraction: float) -> int:
    """How many members the top (and the bottom) ``quantile_fraction`` of ``n`` holds.

    ``ceil(n * quantile_fraction - 1e-9)`` (the tolerance: ``10 * 0.3`` is 3 members,
    not 4), but at most ``n // 2`` so that the top and the bottom never overlap: 0 for
    one member, 1 for two, 1 for four at the default 0.25.

    >>> num_in_quantile(4, 0.25), num_in_quantile(10, 0.25), num_in_quantile(1, 0.25)
    (1, 3, 0)
    """
    if isinstance(quantile_fraction, bool) or not isinstance(
        quantile_fraction, (float, numbers.Real)
    ):
        raise TypeError(
            f"quantile_fraction must be a number in [0, 0.5], got "
            f"{type(quantile_fraction).__name__}: {quantile_fraction!r:.40}"
        )
    if not 0.0 <= quantile_fraction <= 0.5:
        raise ValueError(f"quantile_fraction must be in [0, 0.5], got {quantile_fraction}")
    # the tolerance keeps e.g. 10 * 0.3 == 3.0000000000000004 from rounding up to 4
    return min(math.ceil(n * fraction_as_float(quantile_fraction) - 1e-9), n // 2)


@functools.lru_cache(maxsize=1024, typed=True)  # (typed: np.float32(0.1) is not 0.1000000015)
def quantile_size(n: int, quantile_fraction: float) -> int:
    """:func:`num_in_quantile`, remembered: for the host mutators' hot path, which ask
    it at every decision with a fraction their constructor checked.

    >>> quantile_size(10, 0.25), quantile_size(10, np.float32(0.1))
    (3, 1)
    """
    return num_in_quantile(n, quantile_fraction)


def sort_key(score: float | None, mode: str = "min") -> float:
    """A score as a host mutator's sort key: lower is better (``-score`` under
    ``mode="max"``), ``inf`` for a non-finite score (it ranks after every finite one),
    NaN for none (it takes no part).

    >>> sort_key(0.5, "max"), sort_key(float("nan")), sort_key(None)
    (-0.5, inf, nan)
    """
    if score is None:
        return math.nan
    if not math.isfinite(score):
        return math.inf
    return -score if mode == "max" else score


def fraction_as_float(fraction: float) -> float:
    """A fraction as a Python float; a lower-precision numpy float by its shortest
    decimal, the number its user wrote (``np.float32(0.1)`` is 0.1, not
    0.10000000149..., which would put 2 of 10 members in a 10% quantile).

    >>> fraction_as_float(np.float32(0.1)), fraction_as_float(0.25)
    (0.1, 0.25)
    """
    if isinstance(fraction, np.floating) and np.finfo(fraction.dtype).bits < 64:
        return float(np.format_float_positional(fraction, unique=True))
    return float(fraction)


def _ranks(better: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """Rank of each member (0 = best), ties broken by the lower index; members outside
    ``where`` rank after every member inside it."""
    # both sorts are stable: ties keep the index order
    order = jnp.argsort(better, stable=True) if where is None else jnp.lexsort((better, ~where))
    n = better.shape[0]
    return jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))


def _where(where: jax.Array | None, n: int) -> jax.Array | None:
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.shape != (n,) or where.dtype != jnp.bool_:
        raise ValueError(
            f"where must be a bool array of shape ({n},), got {where.dtype}{where.shape}"
        )
    return where


@_keeps_host_order
@functools.partial(jax.jit, static_argnames=("mode",))
def copy_best(
    key: jax.Array, scores: jax.Array, *, mode: Mode = "min", where: jax.Array | None = None
) -> jax.Array:
    """Every member strictly worse than the best copies the best.

    The best is the first member (lowest index) with the best finite score; members
    tied with it keep going; if no score is finite, nobody copies. ``key`` is unused
    (it is there so that every selection has the same signature).

    Args:
      key: a PRNG key (unused).
      scores: shape ``(n,)``.
      mode: ``"min"`` or ``"max"``.
      where: ``bool[n]``, the members that take part (``None``: all).

    Returns:
      ``int32[n]``: the member each member copies (itself to keep going).
    """
    del key
    better = canonical_scores(scores, mode)
    n = better.shape[0]
    where = _where(where, n)
    candidates = better if where is None else jnp.where(where, better, jnp.inf)
    best = jnp.argmin(candidates)
    copies = better > candidates[best]  # false when the best is +inf
    if where is not None:
        copies &= where
    return jnp.where(copies, best, jnp.arange(n)).astype(jnp.int32)


@_keeps_host_order
@functools.partial(jax.jit, static_argnames=("quantile_fraction", "mode"))
def truncation(
    key: jax.Array,
    scores: jax.Array,
    *,
    quantile_fraction: float = 0.25,
    mode: Mode = "min",
    where: jax.Array | None = None,
) -> jax.Array:
    """Truncation selection: the bottom ``quantile_fraction`` copies from the top.

    Members are ranked by score (ties by lower index). ``k = num_in_quantile(n,
    quantile_fraction)`` members form the top and ``k`` the bottom. Each member of the
    bottom copies a member drawn uniformly (with its own subkey) from the top members
    whose score is strictly better than its own; a bottom member with no such top
    member (a tie with the top, or no finite score in the top) keeps going, as does
    every member outside the bottom.

    Args:
      key: a PRNG key (raw ``uint32[2]`` or typed).
      scores: shape ``(n,)``.
      quantile_fraction: in ``[0, 0.5]``; Ray Tune's and the default 0.25; the PBT
        paper used 0.2.
      mode: ``"min"`` or ``"max"``.
      where: ``bool[n]``, the members that take part (``None``: all); ``k`` is then
        counted from the number of members that take part.

    Returns:
      ``int32[n]``: the member each member copies (itself to keep going).
    """
    better = canonical_scores(scores, mode)
    n = better.shape[0]
    where = _where(where, n)
    rank = _ranks(better, where)
    if where is None:
        k: int | jax.Array = num_in_quantile(n, quantile_fraction)
        if k == 0:  # static: depends on the population size only
            return jnp.arange(n, dtype=jnp.int32)
        top = rank < k
        bottom = rank >= n - k
    else:  # k depends on how many take part: look it up in a table made at trace time
        m = jnp.sum(where)
        k = jnp.asarray([num_in_quantile(j, quantile_fraction) for j in range(n + 1)])[m]
        top = where & (rank < k)
        bottom = where & (rank >= m - k)
    # allowed[i, j]: member i may copy member j
    allowed = bottom[:, None] & top[None, :] & (better[None, :] < better[:, None])
    logits = jnp.where(allowed, 0.0, -jnp.inf)
    draws = jax.vmap(jax.random.categorical)(jax.random.split(key, n), logits)
    return jnp.where(allowed.any(axis=1), draws, jnp.arange(n)).astype(jnp.int32)


@_keeps_host_order
@functools.partial(jax.jit, static_argnames=("mode",))
def tournament(
    key: jax.Array, scores: jax.Array, *, mode: Mode = "min", where: jax.Array | None = None
) -> jax.Array:
    """Binary tournament: each member meets one other member and copies it if worse.

    Member ``i``'s opponent is drawn uniformly from the ``n - 1`` other members (with
    ``i``'s own subkey); ``i`` copies it when the opponent's score is strictly better.
    So ``i`` copies with probability ``(number of strictly better members) / (n - 1)``,
    each of those equally likely.

    Args:
      key: a PRNG key (raw ``uint32[2]`` or typed).
      scores: shape ``(n,)``.
      mode: ``"min"`` or ``"max"``.
      where: ``bool[n]``, the members that take part (``None``: all); opponents are
        drawn from the other members that take part.

    Returns:
      ``int32[n]``: the member each member copies (itself to keep going).
    """
    better = canonical_scores(scores, mode)
    n = better.shape[0]
    where = _where(where, n)
    own = jnp.arange(n, dtype=jnp.int32)
    if n < 2:  # static
        return own
    keys = jax.random.split(key, n)
    if where is None:
        offsets = jax.vmap(lambda k: jax.random.randint(k, (), 1, n))(keys)
        opponent = (own + offsets) % n
        return jnp.where(better[opponent] < better, opponent, own).astype(jnp.int32)
    # the same draw among the m members that take part: i's position among them, plus
    # an offset in [1, m), wraps around to the opponent's position
    m = jnp.sum(where)
    members = jnp.argsort(~where, stable=True)  # the members that take part, first
    position = jnp.cumsum(where) - 1
    offsets = jax.vmap(lambda k: jax.random.randint(k, (), 1, jnp.maximum(m, 2)))(keys)
    opponent = members[(position + offsets) % jnp.maximum(m, 1)].astype(jnp.int32)
    copies = where & (m >= 2) & (better[opponent] < better)
    return jnp.where(copies, opponent, own).astype(jnp.int32)


# -- numpy twins, for host controllers ---------------------------------------------------
def _host_scores(scores: np.ndarray, mode: Mode) -> np.ndarray:
    """:func:`canonical_scores` in numpy (float64: exact for host values)."""
    _check_mode(mode)
    raw = np.asarray(scores)
    if raw.dtype.kind not in "iuf":  # (as the device refuses them: a complex score lost
        # its imaginary part, a bool was 0 / 1, a string was parsed)
        raise TypeError(f"scores must be real numbers, got {raw.dtype} scores")
    if raw.dtype.kind in "iu" and raw.ndim == 1:
        # (int64 past 2**53 are ties in float64: their exact order, as dense ranks)
        raw = np.unique(raw, return_inverse=True)[1].reshape(raw.shape)
    better = raw.astype(np.float64)
    if better.ndim != 1 or better.shape[0] == 0:
        raise ValueError(
            f"scores must be a non-empty vector with one score per member, shape (n,), got "
            f"shape {better.shape}"
        )
    if mode == "max":
        better = -better
    return np.where(np.isfinite(better), better, np.inf)


def _deciding(n: int, members: Sequence[int] | None) -> Sequence[int]:
    return range(n) if members is None else members


def truncation_host(
    rng: HostRng,
    scores: np.ndarray,
    *,
    quantile_fraction: float = 0.25,
    mode: Mode = "min",
    parents: np.ndarray | None = None,
    members: Sequence[int] | None = None,
) -> np.ndarray:
    """:func:`truncation` on the host: the bottom ``quantile_fraction`` copies from the top.

    Args:
      rng: draws each copier's parent with ``randrange`` (a ``random.Random`` or
        :class:`jaxpop.mutators._host_random.HostRandom`).
      scores, quantile_fraction, mode: as :func:`truncation`.
      parents: ``bool[n]``, which members may be copied (``None``: all). The top is
        the ``k`` best members it allows, while the bottom is still counted over
        everyone.
      members: decide for these members only (``None``: all); the others keep going.

    >>> import random
    >>> scores = np.array([0.1, 0.9, 0.5, 0.3])
    >>> truncation_host(random.Random(0), scores, quantile_fraction=0.25).tolist()
    [0, 0, 2, 3]
    >>> truncation_host(random.Random(0), scores, quantile_fraction=0.25,
    ...                 parents=np.array([False, True, True, True])).tolist()
    [0, 3, 2, 3]
    """
    better = _host_scores(scores, mode)
    n = better.shape[0]
    k = num_in_quantile(n, quantile_fraction)
    out = np.arange(n)
    if k == 0:
        return out
    top = None
    for i in _deciding(n, members):
        if not in_bottom(better, i, k):
            continue  # counted, so that a member outside the bottom costs no sort
        if top is None:
            top = truncation_top(better, k, parents)
        out[i] = truncation_parent(rng, better, top, i)
    return out


def tournament_host(
    rng: HostRng,
    scores: np.ndarray,
    *,
    mode: Mode = "min",
    members: Sequence[int] | None = None,
) -> np.ndarray:
    """:func:`tournament` on the host: each member copies one drawn opponent if better.

    >>> import random
    >>> tournament_host(random.Random(0), np.array([0.1, 0.9, 0.5, 0.3])).tolist()
    [0, 3, 3, 3]
    """
    better = _host_scores(scores, mode)
    n = better.shape[0]
    out = np.arange(n)
    if n < 2:
        return out
    for i in _deciding(n, members):
        out[i] = tournament_parent(rng, better, i)
    return out


def copy_best_host(
    rng: HostRng | None,
    scores: np.ndarray,
    *,
    mode: Mode = "min",
    parents: np.ndarray | None = None,
    members: Sequence[int] | None = None,
) -> np.ndarray:
    """:func:`copy_best` on the host: everyone strictly worse copies the best (of
    the members the ``bool[n]`` mask ``parents`` allows; ``None``: all).

    >>> copy_best_host(None, np.array([0.4, 0.1, 0.7]), mode="min").tolist()
    [1, 1, 1]
    """
    del rng
    better = _host_scores(scores, mode)
    n = better.shape[0]
    out = np.arange(n)
    best = best_member(better, None if parents is None else np.asarray(parents, bool))
    if best is None:
        return out
    for i in _deciding(n, members):
        if better[i] > better[best]:
            out[i] = best
    return out


# -- one member's decision: the host twins decide member by member with these, and a host
# mutator that decides for one member (an asynchronous PBT decision) calls them directly.
# ``better`` is lower-is-better; +inf (a non-finite score) ranks after every finite score
# and NaN (a member with no score, in a mutator's own sort keys) after those. The
# deciding member's own score is never NaN.
def in_bottom(better: np.ndarray, i: int, k: int) -> bool:
    """Whether member ``i`` is among the ``k`` last in the order by score, ties by the
    lower index (a stable sort), found by counting: no sort.

    >>> better = np.array([0.1, 0.9, np.inf, np.nan])  # NaN: no score, ranks last
    >>> [in_bottom(better, i, 2) for i in range(3)]
    [False, False, True]
    """
    b = better[i]
    place = np.count_nonzero(better < b) + np.count_nonzero(better[:i] == b)
    return bool(place >= better.shape[0] - k)


def truncation_top(better: np.ndarray, k: int, parents: np.ndarray | None) -> np.ndarray:
    """The ``k`` best members (ties by the lower index) that the ``bool[n]`` mask
    ``parents`` allows (``None``: all), best first.

    >>> truncation_top(np.array([0.5, 0.1, 0.1, 0.3]), 2, None).tolist()
    [1, 2]
    >>> truncation_top(np.array([0.5, 0.1, 0.1, 0.3]), 2, np.array([1, 0, 1, 1], bool)).tolist()
    [2, 3]
    """
    order = np.argsort(better, kind="stable")
    if parents is not None:
        order = order[np.asarray(parents, bool)[order]]
    return order[:k]


def truncation_parent(rng: HostRng, better: np.ndarray, top: np.ndarray, i: int) -> int:
    """The member of ``top`` that member ``i`` copies, drawn uniformly (in ``top``'s
    order) from those strictly better than ``i``; ``i`` itself when there is none."""
    allowed = top[better[top] < better[i]]
    return int(allowed[rng.randrange(allowed.size)]) if allowed.size else i


def tournament_parent(rng: HostRng, better: np.ndarray, i: int) -> int:
    """Member ``i``'s opponent, drawn from the ``n - 1`` others, if strictly better; else ``i``."""
    n = better.shape[0]
    if n < 2:
        return i
    opponent = (i + 1 + rng.randrange(n - 1)) % n
    return opponent if better[opponent] < better[i] else i


def best_member(better: np.ndarray, parents: Any) -> int | None:
    """The best member that the ``bool[n]`` mask ``parents`` allows (the first, on a
    tie; ``None``: all); ``None`` if it allows none.

    >>> best_member(np.array([0.5, 0.1, 0.1]), None), best_member(np.array([0.5, 0.1]), [1, 0])
    (1, 0)
    """
    if parents is not None:
        parents = np.asarray(parents, bool)
    candidates = better if parents is None else better[parents]
    if not candidates.size:
        return None
    first = int(np.argmax(candidates == np.fmin.reduce(candidates)))  # fmin skips NaN
    return first if parents is None else int(np.flatnonzero(parents)[first])


#: The host twins by the names ``PopulationBasedTraining(selection=...)`` takes.
HOST_SELECTIONS: dict[str, Callable[..., np.ndarray]] = {
    "truncation": truncation_host,
    "tournament": tournament_host,
    "copy_best": copy_best_host,
}


def winner_take_all(key: jax.Array, scores: jax.Array, **kwargs) -> jax.Array:
    """Deprecated name of :func:`copy_best` ("winner take all" names only the seed's
    :class:`jaxpop.mutators.WinnerTakeAllGenetic`)."""
    _renamed("selection.winner_take_all", "selection.copy_best")
    return copy_best(key, scores, **kwargs)


def winner_take_all_host(rng: HostRng | None, scores: np.ndarray, **kwargs) -> np.ndarray:
    """Deprecated name of :func:`copy_best_host`."""
    _renamed("selection.winner_take_all_host", "selection.copy_best_host")
    return copy_best_host(rng, scores, **kwargs)


def _renamed(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)
