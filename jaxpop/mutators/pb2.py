"""PB2, Population Based Bandits: PBT whose explore step is a time-varying GP-UCB bandit.

PB2 (Parker-Holder, Nguyen and Roberts, NeurIPS 2020, arXiv 2002.02518) keeps PBT's
exploit (a bad member copies a good one's weights) and replaces its random explore by a
bandit: a Gaussian process over (time, reward level, hyperparameters) fitted to the
*reward change* each interval of training produced, and the copier's new
hyperparameters maximise the upper confidence bound (UCB) of the next change.
:func:`PB2` builds it as a :class:`~jaxpop.mutators.pbt.PopulationBasedTraining` with
``explorer=`` :class:`PB2Explorer`, so lineage, journal, replay, reports and decision
counts are PBT's.
:func:`reward_changes` is the data the bandit reads from the history. ``docs/pbt.md``
("PB2") says what jaxpop chose where the paper leaves a choice.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpop.history import History
from jaxpop.mutators import explore as explore_lib
from jaxpop.mutators.base import Workers, check_factors, check_number, copied_value
from jaxpop.mutators.pbt import PopulationBasedTraining
from jaxpop.records import Checkpoint, CheckpointRef

__all__ = ["PB2", "PB2Explorer", "RewardChange", "reward_changes"]

# The GP's hyperparameters are chosen by marginal likelihood over this grid (all
# combinations): squared-exponential lengthscale on [0, 1]-normalised hyperparameters and
# reward level, the time kernel's forgetting rate epsilon, and the noise variance of
# standardised targets (the signal variance is 1).
LENGTHSCALES = (0.1, 0.2, 0.4, 0.8)
EPSILONS = (0.01, 0.1, 0.3)
NOISES = (0.1, 0.5)
#: Correlation between two different values of one categorical hyperparameter.
CATEGORY_CORRELATION = 0.5
_GRID = np.array(
    [(ls, math.log1p(-eps), noise) for ls in LENGTHSCALES for eps in EPSILONS for noise in NOISES],
    dtype=np.float32,
)  # (lengthscale, log(1 - epsilon), noise) per row
_JITTER = 1e-5
_TOP_K = 8  # candidates whose neighbourhoods are searched in the second stage
_MAX_BETA = 1e30  # sqrt: 1e15, far inside float32
_MAX_WINDOW = 4096  # reward changes the GP sees
_MAX_CANDIDATES = 2**20  # points the UCB search scores in each stage (arrays of that many)
_LOCAL_SCALE = 0.05  # std of the local perturbations, in normalised units


# -- the data: reward changes read from the history ----------------------------------------
class RewardChange(NamedTuple):
    """One observation of the bandit: how fast a generation improved over one interval.

    Attributes:
      generation_id: the generation that trained over the interval.
      step: the interval's end (the step of its last evaluation): the GP's time.
      span: the interval's length in steps.
      meta_params: the hyperparameters it trained with.
      change: the improvement per step, ``(end value - start value) / span``, with the
        sign that makes larger better (negated when the history's mode is ``"min"``);
        ``-inf``, in either mode, for the interval in which a generation diverged (its
        end value, and every later one, NaN or infinite).
      start_value: the value the interval started from, as reported: the reward level
        the change was made from, an input of the bandit's model (as in the authors'
        code, where it is ``R_before``).
    """

    generation_id: str
    step: int
    span: int
    meta_params: Any
    change: float
    start_value: float = math.nan  # (a default: made with the five fields before it, NaN)


def _chunks(
    points: list[tuple[int, float]], min_interval: float
) -> list[tuple[int, int, float, float]]:
    """``(end, span, value change per step, start value)`` of intervals cut back from the
    newest point (the change of finite values is finite: ``(1.7e308 - -1.7e308) / 10``
    is computed as ``1.7e308 / 10 - -1.7e308 / 10``)."""
    out = []
    end_step, end_value = points[-1]
    for step, value in reversed(points[:-1]):
        span = end_step - step
        if span > 0 and span >= min_interval:
            rate = (end_value - value) / span
            if math.isinf(rate):  # the difference overflowed, the rate may not
                rate = end_value / span - value / span
            out.append((end_step, span, rate, value))
            end_step, end_value = step, value
    out.reverse()
    return out


def _is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _divergence(
    points: list[tuple[int, float | None]],
) -> tuple[list[tuple[int, float]], tuple[int, int, float, float] | None]:
    """The finite points of a generation (by step), and its diverged interval: ``(end,
    span, -inf, start value)`` from its last finite point to the first non-finite one
    after it, when its newest point is non-finite (``None`` otherwise, or when no point
    is finite: nothing to start from).

    A run that ended in NaN or inf must leave an observation, the worst one (such a
    value never wins a selection), or its hyperparameters look unexplored to the bandit,
    which then sends copies there. A non-finite value followed by finite ones is skipped.

    >>> _divergence([(0, 1.0), (4, float("nan")), (8, 2.0), (12, float("nan")), (16, None)])
    ([(0, 1.0), (8, 2.0)], (12, 4, -inf, 2.0))
    """
    finite = [(s, v) for s, v in points if v is not None and math.isfinite(v)]
    if not finite or _is_finite(points[-1][1]):
        return finite, None
    last = max(i for i, (_, v) in enumerate(points) if _is_finite(v))
    (start, value), end = finite[-1], points[last + 1][0]
    return finite, (end, end - start, -math.inf, value)


def _generation_changes(
    history: History,
    generation_id: str,
    sign: float,
    min_interval: float,
    limit: int | None,
    memo: dict[CheckpointRef, float | None],
) -> list[RewardChange]:
    """The newest ``limit`` (all: ``None``) reward changes of a generation, by step.

    Intervals are cut back from the newest finite evaluation, after the diverged
    interval if any (:func:`_divergence`), so reading only the newest part of a long
    generation (the evaluations since ``newest - reach``, ``reach`` doubled until
    ``limit`` changes are found) gives the same newest intervals as reading it all: a
    read that holds a finite value holds the last one and everything after it.
    """
    first = history.first(generation_id)
    newest = history.latest(generation_id).step
    start = None  # a copy's first interval starts from the copied checkpoint's value
    if first.value is None and first.parent is not None and first.parent[0] != generation_id:
        source = history.get_checkpoint(*first.parent)
        value = None if source is None else copied_value(history, source, memo)
        if source is not None and value is not None:
            start = (source.step, value)
    reach = None if limit is None else (limit + 1) * max(math.ceil(min_interval), 1)
    while True:
        since = None if reach is None or newest - reach <= first.step else newest - reach
        points = [(c.step, c.value) for c in history.evaluated(generation_id, min_step=since)]
        if since is None and start is not None and (not points or start[0] <= points[0][0]):
            points.insert(0, start)
        finite, diverged = _divergence(points)
        chunks = _chunks(finite, min_interval) if finite else []
        # (a rate past a float is dropped before the newest ``limit`` are counted: a
        # window of them is then the newest of all the finite ones)
        chunks = [
            (end, span, sign * rate, v) for end, span, rate, v in chunks if math.isfinite(rate)
        ]
        if diverged is not None:
            chunks.append(diverged)
        if since is None:  # the whole generation was read
            break
        assert limit is not None and reach is not None  # since is None without a limit
        if len(chunks) >= limit:
            break
        reach *= 2
    if limit is not None:
        chunks = chunks[-limit:]
    meta = first.meta_params
    return [
        RewardChange(generation_id, end, span, meta, change, start)
        for end, span, change, start in chunks
    ]


def reward_changes(
    history: History,
    *,
    window: int | None = None,
    min_interval: float = 0,
    where: Callable[[Any], bool] | None = None,
) -> list[RewardChange]:
    """The PB2 paper's reward changes (Sec. 3), read from ``history``: newest last.

    Each generation's evaluated checkpoints are cut into consecutive intervals of at
    least ``min_interval`` steps (0: between every two evaluations), back from its
    newest evaluation; an interval's change is the improvement of the value per step
    over it, and its ``start_value`` the value it started from. A copied generation's
    oldest interval may start at the checkpoint it copied (so the change measures its
    new hyperparameters from the copied weights). What is left at a generation's start,
    shorter than ``min_interval``, is not used.
    A generation whose newest value is NaN or infinite after a finite one diverged: it
    gives one more change, ``-inf`` (the worst, in either mode, as such a value never
    wins a selection), over the interval from its last finite value (or the copied
    checkpoint's) to the first non-finite one after it, whatever its length, so the
    bandit learns that its hyperparameters fail. Other non-finite values are skipped.
    The sign follows ``history.mode``: with ``"min"`` a falling value is a positive
    change.

    Args:
      history: the run's history.
      window: keep only the ``window`` most recent changes (largest end step; ties go to
        the later-created generation). Generations are visited newest end first
        (:meth:`~jaxpop.history.History.by_latest_step`) and the walk stops once no older
        one can enter the window, so the cost is the checkpoints of the generations read
        (the first call on a history, or one not made by adds from one already asked,
        also sorts every generation by its latest step).
      min_interval: the least length, in steps, of one interval.
      where: keep only generations whose ``meta_params`` pass this test (applied before
        the window).

    >>> from jaxpop.history import History
    >>> from jaxpop.records import Checkpoint
    >>> h = History(mode="max")
    >>> for step, value in [(0, 0.0), (5, 1.0), (10, 3.0)]:
    ...     h = h.add(Checkpoint(None, {"lr": 0.1}, "g", value, None, step, 0.0))
    >>> [(c.step, c.change) for c in reward_changes(h)]
    [(5, 0.2), (10, 0.4)]
    >>> for step, value in [(15, float("nan")), (20, float("nan"))]:  # it diverged at 15
    ...     h = h.add(Checkpoint(None, {"lr": 0.1}, "g", value, None, step, 0.0))
    >>> [(c.step, c.span, c.change) for c in reward_changes(h)]
    [(5, 5, 0.2), (10, 5, 0.4), (15, 5, -inf)]
    """
    if window is not None:
        window = check_number("window", window, integer=True)
    min_interval = check_number("min_interval", min_interval, inclusive=True)
    sign = -1.0 if history.mode == "min" else 1.0
    kept: list[tuple[int, int, RewardChange]] = []
    memo: dict[CheckpointRef, float | None] = {}  # (copied values, read once per chain)
    for bound, index, generation_id in history.by_latest_step():
        if window is not None and len(kept) >= window and bound < kept[window - 1][0]:
            break  # every later generation ends before the window's oldest change
        if where is not None and not where(history.first(generation_id).meta_params):
            continue
        for change in _generation_changes(history, generation_id, sign, min_interval, window, memo):
            kept.append((change.step, index, change))
        if window is not None and len(kept) >= window:
            kept.sort(key=lambda item: (item[0], item[1]), reverse=True)
            del kept[window:]
    kept.sort(key=lambda item: (item[0], item[1]))
    return [change for _, _, change in kept]


# -- hyperparameters as points of the unit cube ---------------------------------------------
_MISSING = object()


def _space_leaves(space: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """``(path, leaf)`` for every space leaf, in the space's order."""
    if explore_lib.is_space(space):
        return [(path, space)]
    if isinstance(space, Mapping):
        return [item for k, sub in space.items() for item in _space_leaves(sub, (*path, k))]
    return []  # a constant


def _value_at(meta: Any, path: tuple) -> Any:
    for k in path:
        if not isinstance(meta, Mapping) or k not in meta:
            return _MISSING
        meta = meta[k]
    return meta


def _with_value(meta: Any, path: tuple, value: Any) -> Any:
    """``meta`` with ``value`` at ``path``, each mapping of its own type (a
    ``FrozenDict`` stays one, as explore keeps it)."""
    if not path:
        return value
    out = dict(meta) if isinstance(meta, Mapping) else {}
    out[path[0]] = _with_value(out.get(path[0], {}), path[1:], value)
    return explore_lib._mapping_like(meta, out) if isinstance(meta, Mapping) else out


def _scalar(value: Any) -> float | None:
    """``value`` as a finite float if it is a real scalar, else ``None``."""
    if isinstance(value, (bool, np.bool_)) or value is _MISSING:
        return None
    if isinstance(value, numbers.Real) or (np.ndim(value) == 0 and hasattr(value, "dtype")):
        try:
            x = float(value)
        except (TypeError, ValueError, OverflowError):  # (an int past a float: no number)
            return None
        return x if math.isfinite(x) else None
    return None


def _choice_index(leaf: explore_lib.Choice, value: Any) -> int | None:
    if value is _MISSING:
        return None
    number = _scalar(value)
    exact = value if number is None else number
    if number is None and leaf.numeric and _is_int(value):
        number = _clamped(value)  # (an int past a float: nearest the largest, as clip)
    for i, v in enumerate(leaf.values):
        is_number = isinstance(v, numbers.Real) and not isinstance(v, bool)
        if is_number == (number is not None) and _same(v, exact):
            return i
    if leaf.numeric and number is not None:
        return int(np.argmin([abs(_clamped(v) - number) for v in leaf.values]))
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _clamped(value: Any) -> float:
    """``float(value)``, an int past a float's range as the largest float of its sign."""
    try:
        return float(value)
    except OverflowError:
        return sys.float_info.max if value > 0 else -sys.float_info.max


def _same(a: Any, b: Any) -> bool:
    """``a == b`` as one bool; ``False`` where it is none (arrays of several elements:
    explore says what is wrong with such a choice)."""
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _encode_number(leaf: Any, x: float) -> float:
    if isinstance(leaf, explore_lib.LogUniform):
        lo, hi = math.log(leaf.low), math.log(leaf.high)
        offset, span = (math.log(x) - lo if x > 0 else 0.0), hi - lo
    elif isinstance(leaf, explore_lib.RandInt):  # integer k owns the cell around (k + 0.5)
        offset, span = round(x) - leaf.low + 0.5, leaf.high - leaf.low
    else:  # halved, so that a span of +-1e308 does not overflow
        offset, span = x / 2 - leaf.low / 2, leaf.high / 2 - leaf.low / 2
    # (a span too narrow for floats, uniform(0, 5e-324) say, holds one point: the middle)
    return min(1.0, max(0.0, offset / span)) if span > 0 else 0.5


def _decode_number(leaf: Any, u: float) -> float | int:
    u = min(1.0, max(0.0, float(u)))
    if isinstance(leaf, explore_lib.LogUniform):
        lo, hi = math.log(leaf.low), math.log(leaf.high)
        return min(leaf.high, max(leaf.low, math.exp(lo + u * (hi - lo))))
    if isinstance(leaf, explore_lib.RandInt):
        return min(leaf.high - 1, max(leaf.low, leaf.low + math.floor(u * (leaf.high - leaf.low))))
    return min(leaf.high, max(leaf.low, leaf.low * (1 - u) + leaf.high * u))


class _Encoding(NamedTuple):
    numbers: tuple[tuple[tuple, Any], ...]  # (path, uniform/log_uniform/randint leaf)
    choices: tuple[tuple[tuple, explore_lib.Choice], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(leaf.values) for _, leaf in self.choices)

    def encode(self, meta: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """``(unit-cube coordinates, category indices)``, or ``None`` if ``meta`` does
        not hold a scalar in its space for every searched hyperparameter."""
        x = []
        for path, leaf in self.numbers:
            value = _scalar(_value_at(meta, path))
            if value is None:
                return None
            x.append(_encode_number(leaf, value))
        c = []
        for path, leaf in self.choices:
            index = _choice_index(leaf, _value_at(meta, path))
            if index is None:
                return None
            c.append(index)
        return np.asarray(x, np.float32), np.asarray(c, np.int32)

    def decode(self, meta: Any, x: np.ndarray, c: np.ndarray, kept: np.ndarray) -> Any:
        """``meta`` with the hyperparameters at ``(x, c)``; a coordinate equal to its
        entry in ``kept`` (``meta``'s own, as :meth:`encode` gave them) keeps ``meta``'s
        value exactly (float32 coordinates tell apart neither floats 1e-8 apart nor the
        integers of a randint wider than 2**24)."""
        for (path, leaf), u, u0 in zip(self.numbers, x, kept, strict=True):
            if u == u0:
                continue
            new: Any = _decode_number(leaf, u)
            old = _value_at(meta, path)
            if isinstance(old, (np.generic, np.ndarray, jax.Array)):
                # its type and dtype, as explore gives them, but a float for a float leaf
                dtype = old.dtype
                if not isinstance(leaf, explore_lib.RandInt) and not jnp.issubdtype(
                    dtype, jnp.floating
                ):
                    dtype = np.dtype(np.float64)  # (an int64 cut 4.74 to 4, as explore does not)
                if jnp.issubdtype(dtype, jnp.floating):  # (clip then keeps it in the space)
                    big = float(jnp.finfo(dtype).max)
                    new = min(big, max(-big, new))
                if isinstance(old, jax.Array):
                    new = jnp.asarray(new, dtype)
                else:
                    new = np.asarray(new).astype(dtype)
                    new = new[()] if isinstance(old, np.generic) else new
            meta = _with_value(meta, path, new)
        for (path, leaf), i in zip(self.choices, c, strict=True):
            new = _choice_like(_value_at(meta, path), leaf.values[int(i)])
            meta = _with_value(meta, path, new)
        return meta


def _choice_like(old: Any, value: Any) -> Any:
    """A choice's number with the type and dtype of the scalar it replaces (a numpy or
    jax one), as explore gives it (a jitted step sees one abstract value); the value
    itself where that dtype would change it (0.5 in an int32) or ``old`` is no number."""
    if (
        not isinstance(old, (np.generic, np.ndarray, jax.Array))
        or np.ndim(old) != 0
        or not jnp.issubdtype(old.dtype, jnp.number)
        or isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
    ):
        return value
    if jnp.issubdtype(old.dtype, jnp.integer):
        info = jnp.iinfo(old.dtype)
        whole = float(value)
        if not (whole.is_integer() and info.min <= whole <= info.max):
            return value
    if isinstance(old, jax.Array):
        return jnp.asarray(value, old.dtype)
    new = np.asarray(value).astype(old.dtype)
    return new[()] if isinstance(old, np.generic) else new


def _encoding(space: Any) -> _Encoding:
    leaves = _space_leaves(space)
    return _Encoding(
        tuple((p, leaf) for p, leaf in leaves if not isinstance(leaf, explore_lib.Choice)),
        tuple((p, leaf) for p, leaf in leaves if isinstance(leaf, explore_lib.Choice)),
    )


# -- the time-varying GP and its UCB, jitted --------------------------------------------------
def _draws(key: Any, num_candidates: int, num_local: int, dims: int, num_choices: int):
    """The search's randomness, drawn on the host from the key (``numpy``'s generator
    seeded with the raw key): uniform candidates, uniforms for their categories, and the
    steps of the local candidates around the best ``_TOP_K``."""
    rng = np.random.default_rng(np.asarray(key, np.uint32))
    return (
        rng.random((num_candidates, dims), np.float32),
        rng.random((num_candidates, num_choices), np.float32),
        (_LOCAL_SCALE * rng.standard_normal((_TOP_K, num_local // _TOP_K, dims))).astype(
            np.float32
        ),
    )


class _Geometry(NamedTuple):
    """What the kernel needs of every pair of points, computed once for all GP fits."""

    sq_distance: jax.Array  # squared distance of the unit-cube coordinates and levels
    mismatches: jax.Array  # number of categorical hyperparameters that differ
    time_gap: jax.Array  # |t - t'|, in intervals


def _geometry(xa, ca, ta, la, xb, cb, tb, lb) -> _Geometry:
    """The geometry of points ``(x, c, t, l)``: unit-cube coordinates, categories, time
    and reward level (in ``[0, 1]``, a coordinate of the squared exponential as the
    hyperparameters are)."""
    sq_distance = jnp.sum((xa[:, None, :] - xb[None, :, :]) ** 2, axis=-1)
    sq_distance = sq_distance + (la[:, None] - lb[None, :]) ** 2
    mismatches = jnp.sum(ca[:, None, :] != cb[None, :, :], axis=-1).astype(sq_distance.dtype)
    return _Geometry(sq_distance, mismatches, jnp.abs(ta[:, None] - tb[None, :]))


def _kernel(g: _Geometry, lengthscale, log_decay):
    """The paper's time-varying kernel (Sec. 4, TV-GP-UCB of Bogunovic et al. 2016):
    ``exp(-|z - z'|^2 / (2 l^2)) * (1 - epsilon) ** (|t - t'| / 2)`` (``z``: the
    hyperparameters' coordinates and the reward level), times
    ``CATEGORY_CORRELATION ** (number of differing categories)``. ``log_decay`` is
    ``log(1 - epsilon)``."""
    log_k = -0.5 * g.sq_distance / lengthscale**2 + 0.5 * log_decay * g.time_gap
    return jnp.exp(log_k + math.log(CATEGORY_CORRELATION) * g.mismatches)


def _gram(mask, k, noise):
    """``K + noise I`` over the valid points; padding rows are the identity."""
    both = mask[:, None] & mask[None, :]
    diagonal = jnp.where(mask, noise + _JITTER, 1.0)
    return jnp.where(both, k, 0.0) + jnp.diag(diagonal)


@functools.partial(jax.jit, static_argnames="sizes")
def _propose(draws, data, pending, start, sqrt_beta, *, sizes):
    """The UCB-maximising point: ``(x, c, (lengthscale, epsilon, noise))``.

    ``data = (x, c, t, l, y, mask)``: the padded observations (coordinates, categories,
    time in units of one interval relative to the end of the interval being chosen,
    the reward level each started from, change standardised by :func:`_standardised`,
    which rows hold data); ``pending = (xp, cp, pmask)``: the hyperparameters being
    trained now; ``start = (x0, c0, l0)``: the copied hyperparameters, one more
    candidate, and the copied weights' level. Candidates and pending points are at time
    0 and level ``l0``: the search is over the hyperparameters alone (as the authors'
    code fixes time and level to the copied agent's).
    """
    x, c, t, level, y, mask = data
    xp, cp, pmask = pending
    x0, c0, l0 = start
    dtype, w = x.dtype, x.shape[0]

    # all points the GP knows: the observations, then the pending points
    xz, cz = jnp.concatenate([x, xp]), jnp.concatenate([c, cp])
    tz = jnp.concatenate([t, jnp.zeros(xp.shape[0], dtype)])
    lz = jnp.concatenate([level, jnp.full(xp.shape[0], l0, dtype)])
    mz = jnp.concatenate([mask, pmask])
    gz = _geometry(xz, cz, tz, lz, xz, cz, tz, lz)
    g_data = jax.tree.map(lambda a: a[:w, :w], gz)

    def log_likelihood(params):
        gram = _gram(mask, _kernel(g_data, params[0], params[1]), params[2])
        chol = jnp.linalg.cholesky(gram)
        alpha = jax.scipy.linalg.cho_solve((chol, True), y)
        value = -0.5 * y @ alpha - jnp.sum(jnp.log(jnp.diagonal(chol)))
        return jnp.where(jnp.isfinite(value), value, -jnp.inf), alpha

    grid = jnp.asarray(_GRID)
    values, alphas = jax.vmap(log_likelihood)(grid)
    best = jnp.argmax(values)
    lengthscale, log_decay, noise = grid[best, 0], grid[best, 1], grid[best, 2]
    alpha = jnp.concatenate([alphas[best], jnp.zeros(xp.shape[0], dtype)])  # mean: data only

    # GP-BUCB: the pending points count as observed for the variance (not for the mean)
    chol_z = jnp.linalg.cholesky(_gram(mz, _kernel(gz, lengthscale, log_decay), noise))
    inverse_z = jax.scipy.linalg.cho_solve((chol_z, True), jnp.eye(mz.shape[0], dtype=dtype))

    def ucb(xs, cs):
        ts, ls = jnp.zeros(xs.shape[0], dtype), jnp.full(xs.shape[0], l0, dtype)
        g = _geometry(xs, cs, ts, ls, xz, cz, tz, lz)
        k = jnp.where(mz, _kernel(g, lengthscale, log_decay), 0.0)
        variance = jnp.maximum(1.0 - jnp.sum((k @ inverse_z) * k, axis=1), 1e-9)
        return k @ alpha + sqrt_beta * jnp.sqrt(variance)

    xs, u, step = draws
    sizes_array = jnp.asarray(sizes, jnp.int32)
    cs = jnp.minimum(jnp.floor(u * sizes_array).astype(jnp.int32), sizes_array - 1)
    xs, cs = xs.at[0].set(x0), cs.at[0].set(c0)
    scores = ucb(xs, cs)
    _, top = jax.lax.top_k(scores, _TOP_K)
    per = step.shape[1]
    xl = jnp.clip(xs[top][:, None, :] + step, 0.0, 1.0).reshape(_TOP_K * per, x.shape[1])
    cl = jnp.repeat(cs[top], per, axis=0)
    all_x, all_c = jnp.concatenate([xs, xl]), jnp.concatenate([cs, cl])
    all_scores = jnp.concatenate([scores, ucb(xl, cl)])
    i = jnp.argmax(jnp.where(jnp.isfinite(all_scores), all_scores, -jnp.inf))
    return all_x[i], all_c[i], (lengthscale, -jnp.expm1(log_decay), noise)


def _standardised(changes: np.ndarray) -> np.ndarray:
    """The GP's targets: the finite changes standardised and capped by
    :func:`_capped_scores`, and ``-_CAP``, the worst target, for a ``-inf`` change (a
    diverged interval: the statistics are the finite changes', which one infinite
    value would make NaN), as float32.

    >>> _standardised(np.array([5.0, 5.0, -np.inf])).tolist()
    [0.0, 0.0, -2.0]
    """
    finite = np.isfinite(changes)
    targets = np.full(len(changes), -_CAP, np.float32)
    targets[finite] = _capped_scores(changes[finite])
    return targets


def _capped_scores(changes: np.ndarray) -> np.ndarray:
    """``(changes - median) / (1.4826 * MAD)`` (MAD: the median absolute deviation from
    the median; 1.4826 makes it the standard deviation of normal data), capped to
    ``[-2, 2]``, as float32. Where the MAD is 0 (more than half the changes equal),
    ``(changes - mean) / std``, capped; zeros when all are equal.

    The authors' code and Ray Tune's standardise by the mean and standard deviation,
    then cap: jaxpop's median and MAD are those of the typical intervals, so one
    outlying interval (a loss jumping from 1 to 1e6) is capped alone instead of
    inflating the standard deviation and squashing every other target to one value.

    Computed in float64 on changes first divided by the largest magnitude, so no sum,
    square or quotient overflows whatever their size (in float32, a change past about
    1e19 squares to inf and the GP would see no data at all).

    >>> [round(float(z), 2) for z in _capped_scores(np.array([1e30, 2e30, 3e30, 4e30, 1e36]))]
    [-1.35, -0.67, 0.0, 0.67, 2.0]
    >>> _capped_scores(np.array([1e300, 1e300])).tolist()
    [0.0, 0.0]
    >>> float(_capped_scores(np.array([0.0] * 15 + [1.0])).max())  # (mean, std: 3.87 uncapped)
    2.0
    """
    largest = float(np.max(np.abs(changes), initial=0.0))
    if largest == 0.0:
        return np.zeros(len(changes), np.float32)
    scaled = changes / largest
    centred = scaled - np.median(scaled)
    scale = 1.4826 * float(np.median(np.abs(centred)))
    if scale == 0:  # (more than half the changes equal)
        centred = scaled - np.mean(scaled)
        scale = float(np.sqrt(np.mean(centred**2)))
    if scale == 0:
        return np.zeros(len(changes), np.float32)
    # (capped before the division: a tiny MAD would overflow it)
    return (np.clip(centred, -_CAP * scale, _CAP * scale) / scale).astype(np.float32)


_CAP = 2.0  # standardised changes are capped to [-_CAP, _CAP]


def _levels(starts: np.ndarray, source: float | None) -> tuple[np.ndarray, float]:
    """The observations' reward levels (the values their intervals started from) in
    ``[0, 1]`` over their range, and the copied weights' level on that scale, clipped
    into it (a copied member is often past every level seen: it is a best one; the
    model would extrapolate there). All zero when the levels are all one value or the
    copied one is unknown: the level then tells the model nothing.

    >>> _levels(np.array([0.0, 5.0, 10.0]), 12.0)
    (array([0. , 0.5, 1. ], dtype=float32), 1.0)
    """
    none = np.zeros(len(starts), np.float32), 0.0
    if not len(starts) or source is None or not math.isfinite(source):
        return none
    source = float(source)  # (a float32 one overflowed halving the range: level 0)
    lo, hi = float(np.min(starts)), float(np.max(starts))
    span = hi / 2 - lo / 2  # (halved: a span of +-1e308 does not overflow)
    if not span > 0:
        return none
    levels = np.clip((starts / 2 - lo / 2) / span, 0.0, 1.0).astype(np.float32)
    return levels, min(1.0, max(0.0, (source / 2 - lo / 2) / span))


# -- the explorer ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PB2Explorer:
    """PB2's explore step, for ``PopulationBasedTraining(explorer=...)``.

    Called as ``explorer(key, source, history, workers) -> meta_params``: reads the
    history's :func:`reward_changes` (the ``window`` most recent intervals of at least
    ``min_interval`` steps), fits the time-varying GP to them and returns the copied
    ``meta_params`` with every searched hyperparameter set to the UCB maximiser. Keys of
    ``meta_params`` the space does not name are kept.

    The model (PB2 paper, Sec. 4): inputs are the hyperparameters, each mapped to
    ``[0, 1]`` (log scale for ``log_uniform``; ``randint`` integer ``k`` to the centre of
    its cell), the reward level each interval started from (mapped to ``[0, 1]`` over
    the window's levels: the authors' code's ``R_before``; how fast a model improves
    depends on where it is in training), and time, in units of the median interval; the
    kernel is a squared-exponential over the hyperparameters and the level times the
    time-varying factor ``(1 - epsilon) ** (|t - t'| / 2)`` (TV-GP-UCB, Bogunovic et al.
    2016), so old intervals count less. Targets are centred on their median, scaled by
    ``1.4826 * MAD`` and capped to ``[-2, 2]`` (the authors' code and Ray Tune's scale
    by mean and standard deviation, then cap: one outlying interval then squashed every
    other target to one value); a diverged interval's ``-inf`` is the worst target, -2
    (:func:`_standardised`). Lengthscale, ``epsilon`` and noise maximise the
    marginal likelihood over a fixed grid (``LENGTHSCALES``, ``EPSILONS``, ``NOISES``).
    The search holds time at the present and the level at the copied checkpoint's value
    (clipped into the window's levels), and chooses the hyperparameters. Parallel
    selection (GP-BUCB of Desautels et al. 2014, which the paper uses for a batch):
    every active worker's current hyperparameters are added as pending points at the
    present time and the copied level, which shrinks the variance -- not the mean --
    around what is already being trained, so copiers spread out (a finished or gone
    worker's are not: nothing trains them; the copier's own are, as it is called before
    its new ones replace them). In an asynchronous run jaxpop takes every worker
    training now as the batch; the authors' code and Ray Tune's count only the
    configurations chosen since the data last moved. The UCB ``mu + sqrt(beta) sigma``
    is maximised over ``num_candidates`` first candidates, the copied hyperparameters and
    ``num_candidates - 1`` uniform random points, then ``num_local`` Gaussian
    perturbations of the best 8. Fit and search are one jitted function over fixed-size,
    masked buffers: it compiles once per run (population size and ``window``), in the
    controller's start-up (:meth:`prepare`).

    Categorical hyperparameters (``choice``) are inputs of the same GP through an overlap
    factor ``CATEGORY_CORRELATION ** (number of differing categories)`` and are chosen by
    the same UCB search (random categories for the random candidates, kept for the local
    ones): a simpler treatment than PB2-Mix's bandit over categories (Parker-Holder et
    al. 2021). ``randint`` values are searched as continuous coordinates, then rounded
    down into their cell and clipped.

    Fallback: with fewer than ``min_observations`` usable reward changes, or when a
    searched value of the copied ``meta_params`` is not a scalar (an array-valued
    hyperparameter), the step is PBT's :func:`jaxpop.mutators.explore.explore` with
    ``resample_probability`` and ``perturbation_factors``.

    Attributes:
      hyperparam_space: the space (:mod:`jaxpop.mutators.explore`).
      beta: the UCB's exploration weight (the paper's ``beta_t``, held constant; at
        most 1e30, as the UCB is computed in float32).
      window: how many of the most recent reward changes the GP sees (at most 4096:
        its memory grows as window**2, about 0.86 GiB at 2048).
      min_observations: below this many, explore like PBT.
      min_interval: the least length of one interval, in steps (:func:`PB2` sets it to
        the ``perturbation_interval`` when that is in steps).
      num_candidates: first candidates of the UCB search, the copied hyperparameters
        and ``num_candidates - 1`` random points (at most 2**20).
      num_local: local candidates around the best 8 (a multiple of 8, at most 2**20).
      resample_probability: the fallback's probability of a fresh draw.
      perturbation_factors: the fallback's perturbation factors.
    """

    hyperparam_space: Any
    beta: float = 2.0
    window: int = 128
    min_observations: int = 8
    min_interval: float = 0
    num_candidates: int = 256
    num_local: int = 64
    resample_probability: float = 0.25
    perturbation_factors: tuple[float, ...] = explore_lib.DEFAULT_FACTORS

    def __post_init__(self) -> None:
        if self.hyperparam_space is None:  # (a constant space: every copier's would be None)
            raise ValueError("PB2 needs a hyperparam_space to search")
        explore_lib.validate_space(self.hyperparam_space)
        object.__setattr__(self, "beta", check_number("beta", self.beta, inclusive=True))
        if self.beta > _MAX_BETA:  # (sqrt(beta) * sigma is computed in float32)
            raise ValueError(
                f"beta must be at most {_MAX_BETA:g}, got {self.beta!r}: the UCB is computed "
                "in float32, where a larger weight makes every candidate's bound inf (and "
                "the search keep the copied point)"
            )
        sizes = {  # stored as ints: they size arrays (128.0 passed the check, then failed)
            "window": check_number("window", self.window, integer=True),
            "min_observations": check_number(
                "min_observations", self.min_observations, integer=True, inclusive=True
            ),
            "num_candidates": check_number(
                "num_candidates", self.num_candidates, minimum=_TOP_K, inclusive=True, integer=True
            ),
            "num_local": check_number("num_local", self.num_local, integer=True, inclusive=True),
        }
        for name, size in sizes.items():
            object.__setattr__(self, name, int(size))
        if self.window > _MAX_WINDOW:
            raise ValueError(
                f"window must be at most {_MAX_WINDOW}, got {self.window}: the GP's "
                "memory grows as window**2 (about 200 bytes per pair of reward changes, "
                "measured: 0.26 GiB at 1024, 0.86 GiB at 2048)"
            )
        for name in ("num_candidates", "num_local"):
            if getattr(self, name) > _MAX_CANDIDATES:  # (2**40 failed at the controller's
                # start, as numpy's MemoryError for 4 TiB, naming nothing)
                raise ValueError(
                    f"{name} must be at most {_MAX_CANDIDATES}, got {getattr(self, name)}: "
                    "each explore scores that many points (arrays of that many, per dimension)"
                )
        if self.min_observations > self.window:  # the GP sees at most window changes
            raise ValueError(
                f"min_observations ({self.min_observations}) must be at most window "
                f"({self.window}): the bandit would never have enough data, and every "
                "explore would be PBT's"
            )
        min_interval = check_number("min_interval", self.min_interval, inclusive=True)
        object.__setattr__(self, "min_interval", min_interval)  # (Python's number)
        if self.num_local % _TOP_K:
            raise ValueError(f"num_local must be a multiple of {_TOP_K}, got {self.num_local}")
        object.__setattr__(self, "perturbation_factors", check_factors(self.perturbation_factors))
        # the fallback's arguments are checked by a dry run of explore's own checks
        explore_lib.explore(
            np.zeros(2, np.uint32),
            {},
            {},
            resample_probability=self.resample_probability,
            perturbation_factors=self.perturbation_factors,
        )

    @functools.cached_property
    def _encoding(self) -> _Encoding:
        return _encoding(self.hyperparam_space)

    def __call__(self, key: Any, source: Checkpoint, history: History, workers: Workers) -> Any:
        encoding = self._encoding
        meta = source.meta_params
        if not encoding.numbers and not encoding.choices:
            return explore_lib.clip(self.hyperparam_space, meta)
        point = encoding.encode(meta)  # None: a missing, NaN, array or unknown value
        data = self._data(history, encoding) if point is not None else []
        if len(data) < max(self.min_observations, 1):
            return self._fallback(key, meta)
        assert point is not None  # (no data without it)
        # (a source from elsewhere, as a direct call may give: its own value, if any)
        value = copied_value(history, source) if source.generation_id in history else source.value
        buffers, level = self._buffers(data, encoding, source.step, value)
        new_x, new_c, _ = _propose(
            self._draws(key),
            buffers,
            self._pending(workers, encoding),
            (*point, np.float32(level)),
            np.float32(math.sqrt(self.beta)),
            sizes=encoding.sizes,
        )
        new = encoding.decode(meta, np.asarray(new_x, np.float64), np.asarray(new_c), point[0])
        return explore_lib.clip(self.hyperparam_space, new)

    def prepare(self, population_size: int) -> None:
        """Compiles the GP fit and UCB search for this population size (no state)."""
        encoding = self._encoding
        if not encoding.numbers and not encoding.choices:
            return
        data = self._zeros(self.window, encoding)
        xp, cp, _, _, _, pmask = self._zeros(population_size, encoding)
        start = (data[0][0], data[1][0], np.float32(0.0))
        draws = self._draws(np.zeros(2, np.uint32))
        _propose(draws, data, (xp, cp, pmask), start, np.float32(1.0), sizes=encoding.sizes)

    def _draws(self, key: Any):
        if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        encoding = self._encoding
        return _draws(
            key, self.num_candidates, self.num_local, len(encoding.numbers), len(encoding.choices)
        )

    # -- pieces of __call__ ---------------------------------------------------------------
    def _data(self, history: History, encoding: _Encoding) -> list[tuple[RewardChange, Any]]:
        cache: dict[int, Any] = {}

        def encoded(meta: Any) -> Any:
            if id(meta) not in cache:
                cache[id(meta)] = (meta, encoding.encode(meta))  # meta kept alive with its id
            return cache[id(meta)][1]

        changes = reward_changes(
            history,
            window=self.window,
            min_interval=self.min_interval,
            where=lambda meta: encoded(meta) is not None,
        )
        return [(change, encoded(change.meta_params)) for change in changes]

    def _zeros(self, n: int, encoding: _Encoding):
        return (
            np.zeros((n, len(encoding.numbers)), np.float32),
            np.zeros((n, len(encoding.choices)), np.int32),
            np.zeros(n, np.float32),
            np.zeros(n, np.float32),
            np.zeros(n, np.float32),
            np.zeros(n, bool),
        )

    def _buffers(self, data, encoding: _Encoding, source_step: int, source_value: float | None):
        """The GP's padded observations ``(x, c, t, l, y, mask)``, and the copied weights'
        level (``source_value``'s, see :func:`_levels`)."""
        x, c, t, level, y, mask = self._zeros(self.window, encoding)
        unit = max(float(np.median([change.span for change, _ in data])), 1.0)
        for i, (change, (xi, ci)) in enumerate(data):
            x[i], c[i] = xi, ci
            # from the end of the interval being chosen for, source_step + unit (the
            # steps subtracted as ints: past 2**53 a float step loses the difference)
            t[i] = (change.step - source_step) / unit - 1.0
            mask[i] = True
        y[: len(data)] = _standardised(np.array([change.change for change, _ in data]))
        starts = np.array([change.start_value for change, _ in data], np.float64)
        level[: len(data)], source_level = _levels(starts, source_value)
        return (x, c, t, level, y, mask), source_level

    def _pending(self, workers: Workers, encoding: _Encoding):
        xp, cp, _, _, _, pmask = self._zeros(len(workers), encoding)
        for i, worker in enumerate(workers):
            if not worker.is_active:  # (a finished or gone worker trains nothing now)
                continue
            point = encoding.encode(worker.meta_params)
            if point is not None:
                xp[i], cp[i] = point
                pmask[i] = True
        return xp, cp, pmask

    def _fallback(self, key: Any, meta: Any) -> Any:
        return explore_lib.explore(
            key,
            self.hyperparam_space,
            meta,
            resample_probability=self.resample_probability,
            perturbation_factors=self.perturbation_factors,
        )


# -- the mutator -----------------------------------------------------------------------------
def PB2(
    *,
    perturbation_interval: float,
    hyperparam_space: Any,
    time_attr: Literal["step", "time"] = "step",
    mode: Literal["min", "max"] = "min",
    quantile_fraction: float = 0.25,
    beta: float = 2.0,
    window: int = 128,
    min_observations: int = 8,
    num_candidates: int = 256,
    num_local: int = 64,
    resample_probability: float = 0.25,
    perturbation_factors: Sequence[float] = explore_lib.DEFAULT_FACTORS,
    **options: Any,
) -> PopulationBasedTraining:
    """Population Based Bandits: PBT's exploit with a GP-UCB bandit as its explore.

    The PB2 paper's Algorithm 1 (Sec. 4): a ready worker in the bottom
    ``quantile_fraction`` copies a member of the top one (PBT's truncation, unchanged),
    and its new hyperparameters maximise the time-varying GP-UCB of the reward change per
    step, given the other workers' current hyperparameters (:class:`PB2Explorer`).

    Args:
      perturbation_interval, hyperparam_space, time_attr, mode, quantile_fraction: as in
        :class:`~jaxpop.mutators.pbt.PopulationBasedTraining` (Ray Tune's PB2 calls the
        space ``hyperparam_bounds``). With ``time_attr="step"``, an interval of the
        bandit's data lasts at least ``perturbation_interval`` steps (one decision
        period, the paper's time step).
      beta, window, min_observations, num_candidates, num_local: :class:`PB2Explorer`'s.
      resample_probability, perturbation_factors: the PBT explore used while there are
        fewer than ``min_observations`` reward changes.
      **options: any other ``PopulationBasedTraining`` option (``burn_in_period``,
        ``metric``, ``selection``, ``synch``, ``custom_explore_fn``, ...).

    Returns:
      a ``PopulationBasedTraining`` whose ``explorer`` is the :class:`PB2Explorer` and
      whose ``prepare`` also compiles the explorer, so the first copy does not wait for
      XLA.

    >>> from jaxpop.mutators import explore
    >>> space = {"lr": explore.log_uniform(1e-4, 1e-1), "batch": explore.choice([32, 64])}
    >>> mutator = PB2(perturbation_interval=50, hyperparam_space=space, mode="max")
    >>> type(mutator).__name__, mutator.config["explorer"].window
    ('PopulationBasedTraining', 128)
    """
    if "explorer" in options:
        raise TypeError("PB2 builds its own explorer; use PopulationBasedTraining(explorer=...)")
    # (checked here, not as the explorer's min_interval, an option the caller never named)
    perturbation_interval = check_number("perturbation_interval", perturbation_interval)
    factors = check_factors(perturbation_factors)  # (read once: an iterator, say)
    # (PBT records what it is given: an array as an array, as before; an iterator, read
    # here, as its values)
    given = factors if isinstance(perturbation_factors, Iterator) else perturbation_factors
    explorer = PB2Explorer(
        hyperparam_space,
        beta=beta,
        window=window,
        min_observations=min_observations,
        min_interval=perturbation_interval if time_attr == "step" else 0,
        num_candidates=num_candidates,
        num_local=num_local,
        resample_probability=resample_probability,
        perturbation_factors=factors,
    )
    return PopulationBasedTraining(
        perturbation_interval=perturbation_interval,
        hyperparam_space=hyperparam_space,
        time_attr=time_attr,
        mode=mode,
        quantile_fraction=quantile_fraction,
        resample_probability=resample_probability,
        perturbation_factors=given,
        explorer=explorer,
        **options,
    )
