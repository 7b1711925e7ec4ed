"""``FirePBT``: Faster Improvement Rate PBT, sub-populations that optimise for the long term.

FIRE PBT (Dalibard & Jaderberg 2021, arXiv 2109.13800, Section 3) trains sub-populations
``P1, ..., Pn`` and a few *evaluators*. ``P1`` is PBT on the task's score. A member of a
later ``Pi`` is ranked by an improvement-rate fitness: an evaluator trains a copy of its
weights with the hyperparameters of ``P(i-1)``'s best member, and evaluator curves are
compared where they reach the same performance. An evaluator that beats that best
member's own curve hands its weights over to it. Finished and gone workers
(``ActiveWorker.status``) take no part. ``docs/pbt.md`` describes the algorithm, every
choice the paper leaves open, and where the rules were checked: the paper's own text was
not at hand; the abstract and a public re-implementation's quotations of Section 3 were.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any, Literal, NamedTuple

import numpy as np

from jaxpop import encoding
from jaxpop.history import History, check_mode
from jaxpop.mutators import _views
from jaxpop.mutators import explore as explore_lib
from jaxpop.mutators import selection as selection_lib
from jaxpop.mutators._host_random import HostRandom
from jaxpop.mutators._subpopulations import (
    check_population_size,
    check_sizes,
    explore_meta,
    member_score,
)
from jaxpop.mutators.base import (
    DecisionCounts,
    Mutator,
    check_factors,
    check_in_space,
    check_number,
    check_probability,
    copy_source,
    nothing_to_copy,
    records_config,
    start_generation,
)
from jaxpop.records import ActiveWorker, Checkpoint, with_replaced
from jaxpop.types import Mode, MutatorResult, RawKey, Workers

__all__ = [
    "Curve",
    "Evaluation",
    "FirePBT",
    "FireState",
    "binomial_p_value",
    "evaluator_verdict",
    "fire_fitness",
    "improvement",
    "improvements",
    "overlap",
]


class Evaluation(NamedTuple):
    """One evaluator's task: train ``member``'s weights with ``child``'s hyperparameters.

    Attributes:
      member: the evaluated member (the paper's ``rho_parent``), of a sub-population
        ``Pi`` with ``i >= 2``.
      member_generation: its generation when the evaluation started.
      child: the best member of ``P(i-1)`` then (the paper's ``rho_child``): whose
        hyperparameters the evaluator trains with, and whose curve it must beat.
      child_generation: the child's generation then.
      generation: the evaluator's own generation (its curve's evaluations).
      step: where the evaluator started (the step of the member's copied checkpoint).
      checked: the step of the evaluator's latest evaluation judged so far.
    """

    member: int
    member_generation: str
    child: int
    child_generation: str
    generation: str
    step: int
    checked: int


class FireState(NamedTuple):
    """:class:`FirePBT`'s state (plain data, journaled with the run).

    Attributes:
      last_decision: ``{worker: (generation_id, step)}``, each member's latest
        decision (as in PBT: a member is ready ``perturbation_interval`` steps later).
      curves: ``{member: generation ids}``, the generations whose evaluations form the
        member's training curve since its last exploit (a hand-over prepends the
        evaluator's generation). A member not listed: its current generation.
      evaluations: ``{evaluator worker: Evaluation}``, the evaluators at work.
      evaluated: ``{member: (member generation, evaluator generation)}``, the latest
        evaluation of each member's current weights (its FIRE fitness curve).
      last_evaluation: ``{member: step}``, where its latest evaluation started (a
        copy or a hand-over counts as one, at its new generation's start).
      num_decisions: member decisions plus evaluator verdicts.
      num_exploits: members that copied a better member of their sub-population.
      num_handovers: evaluators whose weights were handed over to their child.
      num_evaluations: evaluations started.
      evaluation_order: ``{member: n}``, the order in which the members' latest
        evaluations started, as ``last_evaluation`` counts them (1 for the first, one
        more for each later one): the evaluators' queue, the member evaluated longest
        ago first, whatever its workers' speeds. A run recorded before this field has
        none: its members count, by step, as evaluated before any listed here.
    """

    last_decision: dict
    curves: dict
    evaluations: dict
    evaluated: dict
    last_evaluation: dict
    num_decisions: int = 0
    num_exploits: int = 0
    num_handovers: int = 0
    num_evaluations: int = 0
    evaluation_order: dict = {}  # noqa: RUF012  (never changed in place: _Step.own copies)


def _init() -> FireState:
    return FireState({}, {}, {}, {}, {})


encoding.register_record(Evaluation, "jaxpop.FireEvaluation")
encoding.register_record(FireState, "jaxpop.FireState")


# -- curves and the improvement-rate comparison (Section 3) --------------------------------
class Curve(NamedTuple):
    """A training curve: ``values[j]`` (higher is better) evaluated at ``steps[j]``."""

    steps: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, points: Sequence[tuple[int, float]], mode: str = "max") -> Curve:
        """A curve from ``(step, value)`` points; ``mode="min"`` negates the values.

        >>> Curve.of([(0, 3.0), (10, 2.0)], mode="min").values.tolist()
        [-3.0, -2.0]
        """
        steps = np.asarray([s for s, _ in points], dtype=np.int64)
        values = np.asarray([v for _, v in points], dtype=np.float64)
        return cls(steps, -values if mode == "min" else values)

    def __len__(self) -> int:
        return len(self.steps)


class Overlap(NamedTuple):
    """Where two curves reach the same performance: ``a`` from ``a_start``, ``b`` from
    ``b_start`` (steps), for ``length`` steps on both."""

    a_start: int
    b_start: int
    length: int


def overlap(a: Curve, b: Curve) -> Overlap | None:
    """Aligns two curves at equal performance, ``None`` where one never reaches the other.

    The curve that starts lower is followed until its best-so-far value (the smoothing
    jaxpop uses: a running maximum) reaches the other's first value; from there both are
    compared over the same number of steps, as many as both have.

    >>> a = Curve.of([(0, 1.0), (10, 2.0), (20, 3.0)])
    >>> b = Curve.of([(100, 2.0), (110, 2.5)])
    >>> overlap(a, b)
    Overlap(a_start=10, b_start=100, length=10)
    """
    best_a, best_b = np.maximum.accumulate(a.values), np.maximum.accumulate(b.values)
    if best_a[0] < best_b[0]:
        i, j = int(np.searchsorted(best_a, best_b[0])), 0
    else:
        i, j = 0, int(np.searchsorted(best_b, best_a[0]))
    if i == len(a) or j == len(b):
        return None
    a0, b0 = int(a.steps[i]), int(b.steps[j])
    return Overlap(a0, b0, min(int(a.steps[-1]) - a0, int(b.steps[-1]) - b0))


def _window(curve: Curve, start: int, length: int) -> np.ndarray:
    return (curve.steps >= start) & (curve.steps <= start + length)


def improvement(a: Curve, b: Curve) -> float:
    """How much better ``a`` improves than ``b`` from equal performance (the paper's
    comparison of two members' improvement rates; antisymmetric).

    Over the :func:`overlap`, the best value ``a`` reaches minus the best ``b`` reaches.
    Curves that never meet: the gap between them, positive for the one entirely ahead.

    >>> slow = Curve.of([(0, 1.0), (10, 1.5), (20, 2.0)])
    >>> fast = Curve.of([(50, 1.0), (60, 2.0), (70, 3.0)])
    >>> improvement(fast, slow), improvement(slow, fast)
    (1.0, -1.0)
    """
    if not (len(a) and len(b)):
        raise ValueError("improvement compares curves of at least one point each")
    ours, theirs = _compared(a, b)
    # (beyond a float's range: +-inf, as IEEE rounds; + 0.0: a tie is +0.0 either way, so
    # improvement(b, a) is exactly 0.0 - improvement(a, b))
    return (ours - theirs) + 0.0


def _compared(a: Curve, b: Curve) -> tuple[float, float]:
    """The values of ``a`` and ``b`` whose difference is :func:`improvement`."""
    shared = overlap(a, b)
    if shared is None:
        if a.values[0] > b.values[0]:  # b never reaches a's first value: a stays ahead
            return float(a.values[0]), float(np.max(b.values))
        return float(np.max(a.values)), float(b.values[0])  # a never reaches b's: behind
    in_a = _window(a, shared.a_start, shared.length)
    in_b = _window(b, shared.b_start, shared.length)
    return float(np.max(a.values[in_a])), float(np.max(b.values[in_b]))


def binomial_p_value(a: Curve, b: Curve) -> float:
    """One-sided binomial test that ``a`` is better than ``b`` where they overlap.

    Each point of ``a`` in the :func:`overlap` is compared with ``b``'s latest value at
    the same distance from its start; the p-value is ``P(X >= wins)`` for ``X ~
    Binomial(points, 1/2)``. Curves that never meet: 0 when ``a`` is ahead, else 1.

    >>> a = Curve.of([(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0)])
    >>> b = Curve.of([(0, 1.0), (1, 1.1), (2, 1.2), (3, 1.3)])
    >>> binomial_p_value(a, b)  # 3 wins of 4 (the first point ties)
    0.3125
    """
    shared = overlap(a, b)
    if shared is None:
        return 0.0 if improvement(a, b) > 0 else 1.0
    in_a = _window(a, shared.a_start, shared.length)
    offsets = a.steps[in_a] - shared.a_start
    at = np.searchsorted(b.steps, shared.b_start + offsets, side="right") - 1
    wins = int(np.sum(a.values[in_a] > b.values[at]))
    trials = int(in_a.sum())
    if trials > _EXACT_TRIALS:  # (the exact sum costs seconds past a few thousand points)
        from scipy.special import bdtrc  # (P(X > k): here P(X >= wins))

        return float(bdtrc(wins - 1, trials, 0.5)) if wins > 0 else 1.0
    tail = sum(math.comb(trials, j) for j in range(wins, trials + 1))
    return tail / 2**trials


#: Up to this many aligned points the binomial tail is summed exactly; past it, from
#: the regularized incomplete beta function (scipy): about 1e-11 relative for ordinary
#: tails, a few 1e-6 near the bottom of float64's range (no decision moves).
_EXACT_TRIALS = 512


Verdict = Literal["success", "stop", "continue"]


def evaluator_verdict(
    evaluator: Curve, child: Curve, elapsed: int, *, max_eval_steps: int, p_stat: float
) -> Verdict:
    """What becomes of an evaluation after ``elapsed`` steps (the paper's criteria, as
    quoted in the note of ``docs/pbt.md``; the paper's own text was not at hand).

    * ``"success"``: the evaluator improves faster than the child
      (:func:`improvement` > 0) and significantly so (:func:`binomial_p_value` <
      ``p_stat``): its weights are handed over to the child.
    * ``"stop"``: the curves overlap but the test is hopeless (p-value above
      ``p_stat + max(0, 1 - elapsed / max_eval_steps)``, a bar that falls to ``p_stat``
      at ``max_eval_steps``); or they do not overlap (or have fewer than 2 points) and
      ``elapsed >= max_eval_steps``; or the evaluator's curve has a non-finite value
      (it diverged).
    * ``"continue"``: otherwise. So ``max_eval_steps`` is no hard limit for curves that
      overlap: past it, one goes on while its p-value stays at most ``p_stat`` without
      an improvement yet -- but not past ``2 * max_eval_steps`` (jaxpop's bound, where
      the quoted rules leave none: an evaluator that wins the aligned points but never
      reaches a spike of the child's best score went on for good, holding its evaluator
      and every member waiting for one).

    >>> child = Curve.of([(10 * j, 1.0 + 0.1 * j) for j in range(12)])
    >>> faster = Curve.of([(10 * j, 1.0 + j) for j in range(12)])  # 11 wins of 12
    >>> evaluator_verdict(faster, child, 110, max_eval_steps=200, p_stat=0.01)
    'success'
    >>> evaluator_verdict(child, faster, 110, max_eval_steps=200, p_stat=0.01)
    'stop'
    """
    if not max_eval_steps > 0 or not 0.0 < p_stat <= 1.0:  # (also refuses NaN)
        raise ValueError(
            f"evaluator_verdict needs max_eval_steps > 0 and p_stat in (0, 1], got "
            f"{max_eval_steps!r} and {p_stat!r}"
        )
    if not np.all(np.isfinite(evaluator.values)):
        return "stop"
    child = Curve(child.steps[np.isfinite(child.values)], child.values[np.isfinite(child.values)])
    if len(evaluator) >= 2 and len(child) >= 2:
        p = binomial_p_value(evaluator, child)
        if p < p_stat and improvement(evaluator, child) > 0:
            return "success"
        if overlap(evaluator, child) is not None and elapsed < 2 * max_eval_steps:
            bar = p_stat + max(0.0, 1.0 - elapsed / max_eval_steps)
            return "stop" if p > bar else "continue"
    return "stop" if elapsed >= max_eval_steps else "continue"


def fire_fitness(curves: Sequence[Curve | None]) -> list[float | None]:
    """The FIRE fitness of each member of a sub-population from its evaluator curve.

    A member's fitness is the sum of its :func:`improvement` over every other member
    with a curve: higher is better. ``None`` (no curve, or one of fewer than 2 points):
    no fitness, the member takes no part in selection; a curve with a non-finite value
    (a diverged run): NaN, which ranks last.

    >>> slow = Curve.of([(0, 1.0), (10, 1.5), (20, 2.0)])
    >>> fast = Curve.of([(50, 1.0), (60, 2.0), (70, 3.0)])
    >>> fire_fitness([slow, fast, None])
    [-1.0, 1.0, None]
    """

    def rows(asked: list[tuple[int, list[int]]]) -> list[list[float]]:
        return [[improvement(curves[i], curves[j]) for j in others] for i, others in asked]  # type: ignore[arg-type]

    return _fitness(curves, rows)[0].fitness


def improvements(a: Curve, others: Sequence[Curve]) -> np.ndarray:
    """``[improvement(a, b) for b in others]``, computed at once over the curves padded to
    one length (some twenty numpy calls instead of ten per curve): the same numbers.

    >>> slow = Curve.of([(0, 1.0), (10, 1.5), (20, 2.0)])
    >>> fast = Curve.of([(50, 1.0), (60, 2.0), (70, 3.0)])
    >>> improvements(fast, [slow, fast]).tolist()
    [1.0, 0.0]
    """
    m = len(others)
    if m == 0:
        return np.zeros(0)
    sizes = sorted(len(b) for b in others)
    if len(a) == 0 or sizes[0] == 0:
        raise ValueError("improvements compares curves of at least one point each")
    lengths = np.array([len(b) for b in others])
    # padding every curve to the longest costs m x its length: curves much longer than
    # the others (an evaluation that ran on) are compared one by one instead, as is a
    # long ``a`` (its windows are m x its length too)
    limit = 4 * sizes[m // 2] + 16
    if len(a) > limit:
        return np.array([improvement(a, b) for b in others])
    if sizes[-1] > limit:
        out = np.empty(m)
        long, short = np.flatnonzero(lengths > limit), np.flatnonzero(lengths <= limit)
        out[long] = [improvement(a, others[k]) for k in long.tolist()]
        if short.size:  # (a smaller set: its own median, at most one more split each time)
            out[short] = improvements(a, [others[k] for k in short.tolist()])
        return out
    return _padded_improvements([a], others)[0]


def _improvement_block(rows: Sequence[Curve], others: Sequence[Curve]) -> np.ndarray:
    """``[improvements(a, others) for a in rows]`` as one ``len(rows) x len(others)``
    array, computed at once over the curves padded to one length where no curve is much
    longer than the others' median (else row by row): the same numbers."""
    m = len(others)
    if not rows or m == 0:
        return np.zeros((len(rows), m))
    limit = 4 * sorted(len(b) for b in others)[m // 2] + 16  # (as improvements())
    lengths = [len(c) for c in (*rows, *others)]
    if len(rows) == 1 or max(lengths) > limit or min(lengths) == 0:
        return np.stack([improvements(a, others) for a in rows])  # (which says what is wrong)
    return _padded_improvements(rows, others)


def _padded_improvements(rows: Sequence[Curve], others: Sequence[Curve]) -> np.ndarray:
    """:func:`_improvement_block` over padded curves: row ``r`` against column ``k``."""

    def padded(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        lengths = np.array([len(c) for c in curves])
        valid = np.arange(lengths.max()) < lengths[:, None]
        steps = np.zeros(valid.shape, np.int64)
        values = np.full(valid.shape, -np.inf)
        steps[valid] = np.concatenate([c.steps for c in curves])
        values[valid] = np.concatenate([c.values for c in curves])
        return lengths, valid, steps, values

    a_len, a_valid, a_steps, a_values = padded(rows)
    b_len, b_valid, b_steps, b_values = padded(others)
    r, k = np.arange(len(rows))[:, None], np.arange(len(others))[None, :]
    # overlap(): the curve that starts lower is followed until its best-so-far value
    # reaches the other's first value (a searchsorted on a running maximum: a count)
    a0, b0 = a_values[:, :1], b_values[:, 0][None, :]
    a_lower = a0 < b0
    a_best = np.maximum.accumulate(a_values, axis=1)
    i = np.where(a_lower, np.count_nonzero((a_best[:, :, None] < b0) & a_valid[:, :, None], 1), 0)
    below = (np.maximum.accumulate(b_values, axis=1)[None] < a0[:, :, None]) & b_valid[None]
    j = np.where(a_lower, 0, np.count_nonzero(below, axis=2))
    meet = (i < a_len[:, None]) & (j < b_len[None, :])
    a_start = a_steps[r, np.minimum(i, a_len[:, None] - 1)]
    b_start = b_steps[k, np.minimum(j, b_len[None, :] - 1)]
    length = np.minimum(
        a_steps[r, a_len[:, None] - 1] - a_start, b_steps[k, b_len[None, :] - 1] - b_start
    )
    ours = _window_max(a_valid[:, None], a_steps[:, None], a_values[:, None], a_start, length)
    theirs = _window_max(b_valid[None], b_steps[None], b_values[None], b_start, length)
    # curves that never meet: the one ahead keeps its first value against the other's best
    ahead = a0 > b0
    a_max, b_max = a_values.max(axis=1)[:, None], b_values.max(axis=1)[None, :]
    ours = np.where(meet, ours, np.where(ahead, a0, a_max))
    theirs = np.where(meet, theirs, np.where(ahead, b_max, b0))
    with np.errstate(over="ignore", invalid="ignore"):  # (as improvement(): IEEE's)
        return (ours - theirs) + 0.0


def _window_max(
    valid: np.ndarray, steps: np.ndarray, values: np.ndarray, start: np.ndarray, length: np.ndarray
) -> np.ndarray:
    """The best value of each padded curve from step ``start`` for ``length`` steps."""
    inside = valid & (steps >= start[:, :, None]) & (steps <= (start + length)[:, :, None])
    return np.max(np.where(inside, values, -np.inf), axis=2)


def _fitness(
    curves: Sequence[Curve | None],
    rows: Callable[[list[tuple[int, list[int]]]], Sequence[Sequence[float] | np.ndarray]],
    known: _Known | None = None,
    changed: Sequence[bool] | None = None,
) -> tuple[_Known, list[int] | None]:
    """:func:`fire_fitness`, with ``rows([(i, others), ...])`` the improvements of each
    curve ``i`` over each curve of its ``others``, all asked at once; with the matrix of
    improvements and which curves take part, and the positions whose fitness was
    computed (``None``: all).

    ``known``: those of a call whose curves differ from these only where ``changed`` is
    true (elsewhere the same curve, or none, at the same position; both or neither are
    given): only the pairs with
    a changed curve are asked again, and where no changed curve takes part, now or
    then, only the changed positions' fitness is computed (every other row is as it
    was). Either way the matrix holds the improvement of ``i`` over ``j`` at ``[i, j]``
    and ``0.0`` minus it at ``[j, i]`` (which is the improvement of ``j`` over ``i``, to
    the bit: a difference of the same two values either way, a tie +0.0) for every two
    members that take part, zeros elsewhere, and a fitness is the sum of its member's
    row, correctly rounded (:func:`_row_sum`): the same numbers whatever was known.
    """
    n = len(curves)
    valid = [c if c is not None and len(c) >= 2 else None for c in curves]
    if known is None or changed is None:
        known, changed, matrix = None, [True] * n, np.zeros((n, n))
    else:
        matrix = known.matrix.copy()
    part = [
        valid[i] is not None and bool(np.all(np.isfinite(valid[i].values)))  # type: ignore[union-attr]
        if changed[i]
        else known.part[i]  # type: ignore[union-attr]
        for i in range(n)
    ]
    taking_part = [i for i in range(n) if part[i]]
    if known is not None:
        # a changed position's row and column are computed again below where its new
        # curve takes part, and stay zero where it does not (an unchanged curve takes
        # part as before, so its other entries stand)
        redo = [i for i in range(n) if changed[i]]
        matrix[redo, :] = 0.0
        matrix[:, redo] = 0.0
    # (a pair with a changed curve of a lower index is done at that one)
    asked = [
        (i, others)
        for i in taking_part
        if changed[i]
        for others in ([j for j in taking_part if j != i and not (changed[j] and j < i)],)
        if others
    ]
    for (i, others), row in zip(asked, rows(asked) if asked else (), strict=True):
        values = np.asarray(row, np.float64)
        matrix[i, others] = values
        matrix[others, i] = 0.0 - values
    refreshed: list[int] | None = None
    if known is None or any(changed[i] and (part[i] or known.part[i]) for i in range(n)):
        fitness: list[float | None] = [None] * n
        todo: Sequence[int] = range(n)
    else:  # no entry of an unchanged row moved
        fitness = list(known.fitness)
        todo = refreshed = [i for i in range(n) if changed[i]]
    for i in todo:
        if valid[i] is None:
            fitness[i] = None
        else:
            fitness[i] = _row_sum(matrix[i].tolist(), i, valid) if part[i] else math.nan
    return _Known(matrix, fitness, part), refreshed


class _Known(NamedTuple):
    """A sub-population's last computed fitness (see :func:`_fitness`)."""

    matrix: np.ndarray  # of improvements: [i, j] of i over j
    fitness: list[float | None]
    part: list[bool]  # whether each position's curve takes part


def _row_sum(row: list[float], i: int, curves: Sequence[Curve | None]) -> float:
    """The exact sum of a fitness row, rounded to a float (+-inf beyond a float's range).

    An improvement itself beyond a float's range (+-inf in the row: values near
    +-1.8e308) counts at its exact value, from ``curves``, so no row sums inf and -inf,
    and the result does not depend on the order of the terms.
    """
    try:
        rounded = math.fsum(row)
        if math.isfinite(rounded):  # (no inf in the row: a finite sum of finite terms)
            return rounded
    except (OverflowError, ValueError):  # partial sums past a float; inf and -inf
        pass
    total = Fraction(0)
    for j, value in enumerate(row):
        if math.isfinite(value):
            total += Fraction(value)
        else:  # the improvement of i over j, beyond a float: from its two values
            ours, theirs = _compared(curves[i], curves[j])  # type: ignore[arg-type]
            total += Fraction(ours) - Fraction(theirs)
    try:
        return float(total)
    except OverflowError:
        return math.inf if total > 0 else -math.inf


def _fitness_key(fitness: float | None) -> float:
    """A fitness as a sort key (lower first): a fitness past a float (an infinite sum
    of improvements, :func:`_row_sum`) ranks first or last among the finite ones, not
    as a non-finite score, which ranks last whatever its sign; NaN and ``None`` last."""
    if fitness is not None and math.isinf(fitness):
        fitness = math.copysign(_FLOAT_MAX, fitness)
    return selection_lib.sort_key(fitness, "max")


_FLOAT_MAX = float(np.finfo(np.float64).max)


class _Memo:
    """What a :class:`FirePBT` remembers between calls: fitness, by the curves' contents
    (a curve is known by a 128-bit BLAKE2b digest of its steps and values, so a changed
    curve is a new one). A sub-population's fitness is a sum over every pair of its
    members' curves, and between two decisions most curves, and so most pairs, are
    unchanged: the last matrix of improvements of each sub-population is kept, and only
    the rows and columns of the curves that changed are computed again. The ranking of
    a fitness's sort keys (what a truncation bisects) is kept with them. Nothing that
    holds checkpoints (and so params) is kept, and a key is 16 bytes whatever the
    curve's length.
    """

    _FITNESS = 64  # fitness lists kept (and as many rankings)

    def __init__(self) -> None:
        # curves' keys -> their fitness and its sort keys
        self._fitness: dict[tuple[Any, ...], tuple[list[float | None], np.ndarray]] = {}
        # sub-population (its first member) -> the keys, matrix of improvements and sort
        # keys of its last computed fitness
        self._matrices: dict[int, tuple[tuple[Any, ...], _Known, np.ndarray]] = {}
        # id of kept sort keys -> them and their ranking
        self._rankings: dict[int, tuple[np.ndarray, _Ranking]] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Memo, ())  # a pickled mutator starts with an empty memo

    def _keep(self, table: dict, key: Any, value: Any, size: int) -> None:
        with self._lock:
            table[key] = value
            while len(table) > size:
                del table[next(iter(table))]

    def fitness(
        self, curves: Sequence[Curve | None], keys: tuple[bytes | None, ...], slot: int
    ) -> list[float | None]:
        """:func:`fire_fitness` of sub-population ``slot``'s curves; ``keys``: each
        curve's :func:`_digest` (``None`` for no curve).

        The same curves as a kept fitness: that fitness. Else, from the slot's last
        computed matrix, only the rows and columns of the positions whose key changed are
        computed again, a few rows at once (:func:`_improvement_rows`)."""
        return list(self._known(curves, keys, slot)[0])

    def sort_keys(
        self, curves: Sequence[Curve | None], keys: tuple[bytes | None, ...], slot: int
    ) -> np.ndarray:
        """:meth:`fitness` as read-only sort keys (:func:`selection.sort_key
        <jaxpop.mutators.selection.sort_key>` under ``"max"``: ``-fitness``, ``inf`` for
        a non-finite one, NaN for none), kept with it."""
        return self._known(curves, keys, slot)[1]

    def ranking(self, sort_keys: np.ndarray) -> _Ranking:
        """:func:`_ranking` of sort keys :meth:`sort_keys` gave, kept with them."""
        kept = self._rankings.get(id(sort_keys))
        if kept is None or kept[0] is not sort_keys:
            kept = (sort_keys, _ranking(sort_keys))
            self._keep(self._rankings, id(sort_keys), kept, self._FITNESS)
        return kept[1]

    def _known(
        self, curves: Sequence[Curve | None], keys: tuple[bytes | None, ...], slot: int
    ) -> tuple[list[float | None], np.ndarray]:
        known = self._fitness.get(keys)
        if known is None:
            last = self._matrices.get(slot)
            start = changed = None
            if last is not None and len(last[0]) == len(keys):
                start, changed = last[1], [a != b for a, b in zip(keys, last[0], strict=True)]
            rows = functools.partial(_improvement_rows, curves)
            computed, refreshed = _fitness(curves, rows, start, changed)
            fitness = computed.fitness
            if refreshed is None or last is None:
                order = np.array([_fitness_key(f) for f in fitness], np.float64)
            else:  # (the other positions' fitness is as it was: their keys too)
                order = last[2].copy()
                for i in refreshed:
                    order[i] = _fitness_key(fitness[i])
            order.setflags(write=False)
            known = (fitness, order)
            with self._lock:
                self._matrices[slot] = (keys, computed, order)
            self._keep(self._fitness, keys, known, self._FITNESS)
        return known


#: the padded elements (rows x columns x points) one :func:`_improvement_block` may
#: compare: its arrays are that large, so long curves are compared a few rows at a time
_BLOCK_ELEMENTS = 1 << 20


def _improvement_rows(
    curves: Sequence[Curve | None], asked: list[tuple[int, list[int]]]
) -> list[np.ndarray]:
    """``rows`` for :func:`_fitness`: the rows asked, a few at a time (at most
    ``_BLOCK_ELEMENTS`` padded elements each), each batch one :func:`_improvement_block`
    of its rows' curves against the curves of all their ``others``."""
    used = {i for i, _ in asked}.union(*(others for _, others in asked))
    points = max(len(curves[k]) for k in used)  # type: ignore[arg-type]
    out: list[np.ndarray] = []
    batch: list[tuple[int, list[int]]] = []
    columns: set[int] = set()
    for i, others in asked:
        wider = columns.union(others)
        if batch and (len(batch) + 1) * len(wider) * points > _BLOCK_ELEMENTS:
            out += _batch_rows(curves, batch, columns)
            batch, wider = [], set(others)
        batch.append((i, others))
        columns = wider
    return out + _batch_rows(curves, batch, columns)


def _batch_rows(
    curves: Sequence[Curve | None], batch: list[tuple[int, list[int]]], columns: set[int]
) -> list[np.ndarray]:
    order = sorted(columns)
    where = {j: k for k, j in enumerate(order)}
    block = _improvement_block([curves[i] for i, _ in batch], [curves[j] for j in order])  # type: ignore[misc]
    return [block[r, [where[j] for j in others]] for r, (_, others) in enumerate(batch)]


def _digest(curve: Curve) -> bytes:
    """A curve's steps then values (as many of each, 8 bytes each: one way to split)."""
    digest = hashlib.blake2b(curve.steps.tobytes(), digest_size=16)
    digest.update(curve.values.tobytes())
    return digest.digest()


# -- the mutator ----------------------------------------------------------------------------
class _Config(NamedTuple):
    interval: int
    sizes: tuple[int, ...]
    num_evaluators: int
    space: Any
    quantile_fraction: float
    resample_probability: float
    factors: tuple[float, ...]
    max_eval_steps: int
    p_stat: float
    mode: Mode
    num_members: int  # (the next two: from sizes, computed once by _config)
    sub_populations: tuple[range, ...]  # each sub-population's members

    def sub_population(self, member: int) -> range:
        for members in self.sub_populations:
            if member < members.stop:
                return members
        raise IndexError(member)


def _config(sizes: tuple[int, ...], **options: Any) -> _Config:
    """A :class:`_Config` with its layout computed from ``sizes``."""
    starts = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    ranges = tuple(range(a, b) for a, b in itertools.pairwise(starts))
    return _Config(sizes=sizes, num_members=starts[-1], sub_populations=ranges, **options)


class FirePBT(Mutator):
    """Faster Improvement Rate PBT (Dalibard & Jaderberg 2021, arXiv 2109.13800).

    Workers ``0 .. sizes[0] - 1`` are ``P1``, the next ``sizes[1]`` are ``P2``, and so
    on; the last ``num_evaluators`` workers are the evaluators. A member is ready
    ``perturbation_interval`` steps after its last decision, and then, against its own
    sub-population, copies a better member by truncation selection and explores (PBT's
    exploit and explore): in ``P1`` ranked by score, in a later ``Pi`` by
    :func:`fire_fitness` over evaluator curves. An idle evaluator takes the member of
    ``P2 .. Pn`` whose last evaluation started longest ago (one never evaluated first;
    a copy or a hand-over counts as just evaluated), among those with weights to load,
    and trains its weights with the hyperparameters of the best member of the
    sub-population before it;
    :func:`evaluator_verdict` ends the evaluation, handing the weights over to that
    member on success.

    A finished or gone worker (``ActiveWorker.status``) takes no part: it is never
    copied, ranked, evaluated or handed weights over, an evaluator that is not active
    is given no member, and an evaluation whose evaluator, member or child stops being
    active ends at once.

    Args:
      perturbation_interval: steps between a member's decisions (the paper's ready
        interval, as in PBT).
      sub_population_sizes: sizes of ``P1, ..., Pn``: at least two sub-populations of
        at least 2 members.
      num_evaluators: how many workers are evaluators, between 1 and the number of
        members of ``P2 .. Pn``.
      max_eval_steps: the paper's ``max_eval_steps``: the bar for stopping an
        evaluation whose curve overlaps the child's falls from 1 + ``p_stat`` to
        ``p_stat`` over this many steps; one whose curve does not overlap stops here,
        one whose curve does at twice this many (jaxpop's bound: :func:`evaluator_verdict`).
      hyperparam_space: the explore space (see :mod:`jaxpop.mutators.explore`).
      p_stat: significance of the binomial test that decides a hand-over, in ``(0, 1]``.
        Default 0.01.
      quantile_fraction: truncation selection within a sub-population: the bottom
        fraction copies from the top fraction. Default 0.25.
      resample_probability, perturbation_factors: the explore step, as in
        :class:`~jaxpop.mutators.pbt.PopulationBasedTraining` (defaults 0.25 and
        ``(0.8, 1.2)``).
      mode: ``"min"`` (lower values are better) or ``"max"``.
    """

    __slots__ = ()
    #: what the recorded state is keyed by (the workers' roles): see ``describe``
    _state_options = ("sub_population_sizes", "num_evaluators")

    @records_config
    def __new__(
        cls,
        *,
        perturbation_interval: int,
        sub_population_sizes: Sequence[int],
        num_evaluators: int,
        max_eval_steps: int,
        hyperparam_space: Any,
        p_stat: float = 0.01,
        quantile_fraction: float = 0.25,
        resample_probability: float = 0.25,
        perturbation_factors: Sequence[float] = (0.8, 1.2),
        mode: Literal["min", "max"] = "min",
    ):
        interval = check_number("perturbation_interval", perturbation_interval, integer=True)
        sizes = check_sizes("sub_population_sizes", sub_population_sizes, minimum=2)
        if len(sizes) < 2:
            raise ValueError(
                "FirePBT needs at least two sub-populations (P1, judged by score, and one "
                f"or more judged by improvement rate), got sub_population_sizes={sizes!r}"
            )
        evaluators = check_number("num_evaluators", num_evaluators, integer=True)
        if evaluators > sum(sizes[1:]):
            raise ValueError(
                f"num_evaluators must be at most the {sum(sizes[1:])} members of P2..Pn "
                f"(each evaluator evaluates a different member), got {evaluators}"
            )
        if hyperparam_space is None:
            raise ValueError("FirePBT needs a hyperparam_space to explore")
        explore_lib.validate_space(hyperparam_space)
        selection_lib.num_in_quantile(4, quantile_fraction)  # validates the fraction
        config = _config(
            sizes,
            interval=interval,
            num_evaluators=evaluators,
            space=hyperparam_space,
            quantile_fraction=selection_lib.fraction_as_float(quantile_fraction),
            resample_probability=check_probability("resample_probability", resample_probability),
            factors=check_factors(perturbation_factors),
            max_eval_steps=check_number("max_eval_steps", max_eval_steps, integer=True),
            p_stat=_check_p_stat(p_stat),
            mode=check_mode(mode),
        )
        views = _views.Views(functools.partial(_entry, config), _COLUMNS, order_by="rank")
        update = functools.partial(_update, config=config, views=views, memo=_Memo())
        prepare = functools.partial(_prepare, config=config)
        return super().__new__(
            cls,
            _init,
            update,
            None,
            prepare,
            mode=config.mode,
            counts=_counts,
            check_population=functools.partial(check_in_space, hyperparam_space),
        )


def _check_p_stat(p_stat: Any) -> float:
    why = "a hand-over needs a p-value below p_stat, and no p-value is below 0"
    try:
        p = check_probability("p_stat", p_stat)
    except ValueError:  # (its range is (0, 1], not [0, 1])
        raise ValueError(f"p_stat must be in (0, 1], got {p_stat!r:.40}: {why}") from None
    except TypeError:
        raise TypeError(f"p_stat must be a number in (0, 1], got {p_stat!r:.40}") from None
    if p == 0.0:
        raise ValueError(f"p_stat must be in (0, 1], got 0: {why}")
    return p


def _counts(state: FireState) -> DecisionCounts:
    return DecisionCounts(state.num_decisions, state.num_exploits + state.num_handovers)


def _check_layout(config: _Config, population_size: int) -> None:
    if population_size == config.num_members + config.num_evaluators:
        return  # (the message below is built only for a population that does not fit)
    check_population_size(
        "FirePBT",
        config.num_members + config.num_evaluators,
        population_size,
        f"sub-populations of {list(config.sizes)} and {config.num_evaluators} evaluators",
    )


def _prepare(population_size: int, *, config: _Config) -> None:
    _check_layout(config, population_size)


class _Step:
    """The mutable scratch of one update: the state's dicts and the workers, each copied
    when the update first changes it (:meth:`own`; most updates change one or two), so
    an unchanged dict is shared by the state and the next (never changed in place)."""

    def __init__(
        self,
        state: FireState,
        workers: Workers,
        history: History,
        now: float,
        key: RawKey,
        memo: _Memo,
        view: _views.View,
    ):
        self.state, self.history, self.now, self.key = state, history, now, key
        self.memo, self.view = memo, view  # the view: of the update's arguments
        self.old_workers = workers
        self.workers: Sequence[ActiveWorker] = workers  # (a list once one starts)
        self.checkpoints: list[Checkpoint] = []
        # read here, changed through own()
        self.last_decision: dict[int, tuple[str, int]] = state.last_decision
        self.curves: dict[int, tuple[str, ...]] = state.curves
        self.evaluations: dict[int, Evaluation] = state.evaluations
        self.evaluated: dict[int, tuple[str, str]] = state.evaluated
        self.last_evaluation: dict[int, int] = state.last_evaluation
        self.evaluation_order: dict[int, int] = state.evaluation_order
        self._owned: set[str] = set()  # the dicts copied so far
        self.counts = [state.num_decisions, state.num_exploits, state.num_handovers]
        self.counts.append(state.num_evaluations)
        self.changed = False
        # _assign's cache, by sub-population: an assignment forgets its member's
        self.best: dict[int, int | None] = {}
        self.decided: set[int] = set()  # the members whose last decision changed
        self.started: set[int] = set()  # the workers that started a generation
        self.scored: _Scored = view.memo[_Scored]  # (_Scored.bring_up_to_date puts it there)

    def own(self, name: str) -> dict:
        """The step's own copy of the state's dict ``name`` (one of :class:`FireState`'s
        six), to change: copied at the update's first change."""
        if name not in self._owned:
            self._owned.add(name)
            setattr(self, name, dict(getattr(self, name)))
        return getattr(self, name)

    def set_evaluation(self, evaluator: int, task: Evaluation | None) -> None:
        """Sets (``None``: ends) ``evaluator``'s evaluation."""
        evaluations = self.own("evaluations")
        if task is None:
            del evaluations[evaluator]
        else:
            evaluations[evaluator] = task
        self.changed = True

    def keys(self, member: int) -> np.ndarray:
        """Member ``member``'s selection and explore keys, ``uint32[2, 2]`` (hashed from
        the event's key: no dispatch, see :mod:`jaxpop.mutators._host_random`)."""
        return HostRandom(self.key, stream=member).raw_keys(2)

    def decision(self, member: int, generation_id: str, at: int) -> None:
        """Records ``member``'s decision at step ``at`` of ``generation_id``."""
        self.own("last_decision")[member] = (generation_id, at)
        self.decided.add(member)

    def start(self, index: int, worker: int, source: Checkpoint, meta: Any) -> Checkpoint:
        """Worker ``worker`` starts a new generation from ``source`` with ``meta``."""
        workers = self.workers if isinstance(self.workers, list) else list(self.workers)
        workers[worker], first = start_generation(source, meta, self.key, index, self.now)
        self.workers = workers
        self.started.add(worker)
        self.scored.forget(worker)
        self.checkpoints.append(first)
        self.history = self.history.add(first)  # later steps of this update see it
        self.changed = True
        return first

    def mark_evaluated(self, member: int, at: int) -> None:
        """``member``'s latest evaluation starts now, at step ``at``: it goes to the end
        of the evaluators' queue."""
        self.own("last_evaluation")[member] = at
        order = self.own("evaluation_order")
        order[member] = max(order.values(), default=0) + 1

    def forget_evaluated(self, member: int) -> None:
        """``member`` is no longer evaluated (or not as it was)."""
        if member in self.evaluated:
            del self.own("evaluated")[member]
        self.scored.forget(member)

    def result(self) -> MutatorResult:
        if not self.changed:
            return self.state, self.old_workers, ()
        decisions, exploits, handovers, evaluations = self.counts
        state = FireState(
            self.last_decision,
            self.curves,
            self.evaluations,
            self.evaluated,
            self.last_evaluation,
            decisions,
            exploits,
            handovers,
            evaluations,
            self.evaluation_order,
        )
        started = sorted(self.started)
        workers = with_replaced(self.old_workers, [(i, self.workers[i]) for i in started])
        return state, workers, tuple(self.checkpoints)


def _update(
    state: FireState,
    workers: Workers,
    history: History,
    now: float,
    key: RawKey,
    *,
    config: _Config,
    views: _views.Views,
    memo: _Memo,
) -> MutatorResult:
    _check_layout(config, len(workers))
    # kept between calls: which members are ready, their scores, which have a curve of
    # their own (the _COLUMNS) and the curves of evaluations (view.derived). Only the
    # ready can decide (judging can only make a member unready, by handing weights over)
    view = views.view(state, workers, history)
    _Scored.bring_up_to_date(view, config.num_members)
    _Curves.bring_up_to_date(view, config.mode)
    step = _Step(state, workers, history, now, key, memo, view)
    for evaluator in _to_judge(config, state, view.touched, len(workers)):
        _judge(step, config, evaluator)
    for member in view["ready"].nonzero()[0].tolist():
        _decide(step, config, member)
    _assign(step, config)
    result = step.result()
    # the next call's history is made from this one by the core's adds; the workers that
    # started a generation are read again when the view is next used. A member that
    # decided and kept going is no longer ready (its interval starts at its evaluation,
    # and perturbation_interval >= 1), and nothing else of its entry changed (its score
    # and curve are its generation's): written in place, not read again
    view.moved_on(result[0], workers, history)
    view.reassigned(result[1], sorted(step.started))
    for member in step.decided - step.started:
        view["ready"][member] = False
    # a bound on what the view keeps: entries whose generation got no checkpoint since
    # (evaluations no member holds now) pile up; clearing drops the live ones too, which
    # are read again when next needed
    if len(view.derived) > 2 * len(workers):
        view.derived.clear()
    view.memo[_Curves].bound(2 * len(workers))
    views.keep(view)
    return result


def _to_judge(config: _Config, state: FireState, touched: set[int] | None, size: int) -> list[int]:
    """The evaluators at work whose evaluation may end now, in id order.

    A verdict changes only with a new evaluation of the evaluator's own (its generation
    got a checkpoint) or when its evaluator, member or child is reassigned or stops being
    active (its assignment was replaced): either way that worker is one the view read
    again (``touched``; ``None`` when the view read every worker). A hand-over earlier
    in the same update changes no other evaluation's verdict: it reassigns an active
    child, which matters only once that evaluation has a new evaluation of its own.
    """
    evaluators = range(config.num_members, size)
    if touched is None:
        return sorted(e for e in state.evaluations if e in evaluators)
    return sorted(
        e
        for e, task in state.evaluations.items()
        if (e in touched or task.member in touched or task.child in touched) and e in evaluators
    )


#: The columns of FirePBT's view: whether a member is ready, its member_score as a sort
#: key (``key``: see :func:`_sort_keys`; NaN for none, or not active), whether it is
#: active with a curve of its own (``curve``: 1 yes, 0 no, -1 a curve over several
#: generations, read when needed: it reads generations other than the member's own,
#: which the view does not follow), whether a worker (member or evaluator) is active, and
#: ``rank``: a P1 member's ``key``, NaN for every other worker, kept sorted in the view's
#: ``order`` (P1's ranking: a P1 decision's truncation by bisection, see :func:`_order`),
#: and ``saves``: whether the worker's generation holds params (:meth:`History.saves`:
#: whether the run saves at all, see :func:`_loadable`).
_COLUMNS = {
    "ready": bool,
    "key": np.float64,
    "curve": np.int8,
    "active": bool,
    "rank": np.float64,
    "saves": bool,
}


def _entry(
    config: _Config, state: FireState, history: History, worker_id: int, worker: ActiveWorker
) -> tuple[bool, float, int, bool, float, bool]:
    saves = history.saves(worker.generation_id)
    if worker_id >= config.num_members:  # an evaluator
        return False, math.nan, 0, worker.is_active, math.nan, saves
    if not worker.is_active:
        return False, math.nan, 0, False, math.nan, saves
    # _ready, member_score and _has_curve, sharing their read of the latest evaluation
    generation_id = worker.generation_id
    latest = history.latest_evaluated(generation_id)
    if latest is None:
        ready, score = False, member_score(history, generation_id)
    else:
        ready = _ready_at(config, state.last_decision, history, worker_id, generation_id, latest)
        score = latest.value
        if latest.params is None and nothing_to_copy(history, generation_id):
            score = math.nan  # (its saves diverged): last, never copied
    if len(_stored_generations(state.curves, worker_id, worker)) > 1:
        curve = -1
    else:  # its own generation's curve: whether it has evaluated
        curve = 0 if latest is None else 1
    key = selection_lib.sort_key(score, config.mode)
    return ready, key, curve, True, key if worker_id < config.sizes[0] else math.nan, saves


def _ready(
    config: _Config,
    last_decision: Mapping[int, tuple[str, int]],
    history: History,
    member: int,
    worker: ActiveWorker,
) -> Checkpoint | None:
    """The member's latest evaluation if it is active and ``perturbation_interval``
    steps past its last decision (or its generation's start), else ``None``."""
    if not worker.is_active:
        return None
    latest = history.latest_evaluated(worker.generation_id)
    if latest is None:
        return None
    ready = _ready_at(config, last_decision, history, member, worker.generation_id, latest)
    return latest if ready else None


def _ready_at(
    config: _Config,
    last_decision: Mapping[int, tuple[str, int]],
    history: History,
    member: int,
    generation_id: str,
    latest: Checkpoint,
) -> bool:
    """Whether ``latest``, the member's latest evaluation, is ``perturbation_interval``
    steps past its last decision (or its generation's start)."""
    marker = last_decision.get(member)
    since = (
        marker[1]
        if marker is not None and marker[0] == generation_id
        else history.first(generation_id).step
    )
    return latest.step - since >= config.interval


# -- evaluators ---------------------------------------------------------------------------
def _curve_generations(step: _Step, member: int) -> tuple[str, ...]:
    return _stored_generations(step.curves, member, step.workers[member])


def _stored_generations(
    curves: Mapping[int, tuple[str, ...]], member: int, worker: ActiveWorker
) -> tuple[str, ...]:
    """The generations of a member's own curve: those stored for its current generation
    (a hand-over's child continues the evaluator's curve), else that generation."""
    stored = curves.get(member)
    return stored if stored and stored[-1] == worker.generation_id else (worker.generation_id,)


def _curve(history: History, generations: Sequence[str], mode: str) -> Curve:
    """The evaluations of ``generations``, each up to where the next one starts."""
    points: list[tuple[int, float]] = []
    for i, generation in enumerate(generations):
        end = history.first(generations[i + 1]).step if i + 1 < len(generations) else None
        points += [
            (c.step, c.value)
            for c in history.evaluated(generation)
            if c.value is not None  # (always: evaluated)
            and (end is None or c.step <= end)
            and (not points or c.step > points[-1][0])
        ]
    return Curve.of(points, mode)


def _has_curve(history: History, generations: Sequence[str]) -> bool:
    """Whether :func:`_curve` of ``generations`` has a point, without building it."""
    for i, generation in enumerate(generations):
        if i + 1 == len(generations):
            return history.latest_evaluated(generation) is not None
        evaluated = history.evaluated(generation)
        if evaluated and evaluated[0].step <= history.first(generations[i + 1]).step:
            return True
    return False


class _Growing:
    """One curve kept as its last generation reports: its points in arrays with room to
    append. A :class:`Curve` handed out is a read-only view of the first points, which
    appends (past its end) never change."""

    __slots__ = ("_curve", "_size", "_steps", "_values")

    _curve: Curve | None

    def __init__(self, curve: Curve):
        size = len(curve)
        self._steps = np.empty(max(16, 2 * size), np.int64)
        self._values = np.empty(len(self._steps), np.float64)
        self._steps[:size], self._values[:size] = curve.steps, curve.values
        self._size, self._curve = size, None

    @property
    def last_step(self) -> int | None:
        return int(self._steps[self._size - 1]) if self._size else None

    def append(self, step: int, value: float) -> None:
        """One point past the last (``value`` signed as the curve's: higher is better)."""
        size = self._size
        if size == len(self._steps):  # (new arrays: views handed out keep the old ones)
            self._steps = np.concatenate([self._steps, np.empty(size, np.int64)])
            self._values = np.concatenate([self._values, np.empty(size, np.float64)])
        self._steps[size], self._values[size] = step, value
        self._size, self._curve = size + 1, None

    def curve(self) -> Curve:
        if self._curve is None:
            steps, values = self._steps[: self._size], self._values[: self._size]
            steps.flags.writeable = values.flags.writeable = False
            self._curve = Curve(steps, values)
        return self._curve


class _Curves:
    """The curves :func:`_judge` compares, kept with the view from call to call and
    brought up to date from the checkpoints added since: a point past a curve's last,
    in its last generation, is appended (a report as it trains: O(1)); any other
    checkpoint of one of its generations drops it, to be read again. Rebuilding every
    curve at every report cost O(its length): 1 ms at 1,000-5,000 points, 6 ms past
    5,000 (helper-196)."""

    __slots__ = ("_by_generation", "_kept")

    def __init__(self) -> None:
        self._kept: dict[tuple[str, ...], _Growing] = {}
        self._by_generation: dict[str, set[tuple[str, ...]]] = {}

    @staticmethod
    def bring_up_to_date(view: _views.View, mode: str) -> None:
        curves = view.memo.get(_Curves)
        added = view.added_checkpoints
        if curves is None or added is None:  # (a view read afresh: the history may differ)
            view.memo[_Curves] = _Curves()
            return
        for checkpoint in added:
            generation_id = checkpoint.generation_id
            for key in list(curves._by_generation.get(generation_id, ())):
                kept = curves._kept[key]
                last = kept.last_step
                if key[-1] != generation_id or (last is not None and checkpoint.step <= last):
                    curves._drop(key)  # (an earlier point may have changed, or the end)
                elif checkpoint.value is not None:
                    kept.append(
                        checkpoint.step, -checkpoint.value if mode == "min" else checkpoint.value
                    )

    @staticmethod
    def curve(step: _Step, generations: tuple[str, ...], mode: str) -> Curve:
        """:func:`_curve` of ``generations`` in the update's history, kept while that is
        the view's (this update has added nothing yet)."""
        if step.history is not step.view.history:
            return _curve(step.history, generations, mode)
        curves: _Curves = step.view.memo[_Curves]
        kept = curves._kept.get(generations)
        if kept is None:
            kept = curves._kept[generations] = _Growing(_curve(step.history, generations, mode))
            for generation_id in generations:
                curves._by_generation.setdefault(generation_id, set()).add(generations)
        return kept.curve()

    def bound(self, size: int) -> None:
        """Forgets every curve once more than ``size`` are kept (those no evaluation
        compares any more pile up; the live ones are read again when next needed)."""
        if len(self._kept) > size:
            self._kept.clear()
            self._by_generation.clear()

    def _drop(self, key: tuple[str, ...]) -> None:
        del self._kept[key]
        for generation_id in set(key):
            keys = self._by_generation[generation_id]
            keys.discard(key)
            if not keys:
                del self._by_generation[generation_id]


def _judge(step: _Step, config: _Config, evaluator: int) -> None:
    """Checks an evaluator's evaluation against the paper's criteria after it reports.

    An evaluation also ends, at once, when its evaluator, member or child is no longer
    active (finished or gone): a finished worker is never copied (nor handed weights
    over, which would start it again), and nothing waits for one.
    """
    task = step.evaluations.get(evaluator)
    if task is None:
        return
    history = step.history
    runner = step.workers[evaluator]
    if runner.generation_id != task.generation or not runner.is_active:
        step.set_evaluation(evaluator, None)  # reassigned elsewhere, or finished or gone
        return
    if not (step.workers[task.member].is_active and step.workers[task.child].is_active):
        verdict: Verdict = "stop"
    else:
        latest = history.latest_evaluated(task.generation)
        if latest is None or latest.step <= task.checked:
            return
        lost = (
            step.workers[task.member].generation_id != task.member_generation
            or step.workers[task.child].generation_id != task.child_generation
        )
        if _unfounded(history, task):  # measured a network not the member's: no fitness
            lost = True
            if step.evaluated.get(task.member, (None, None))[1] == task.generation:
                step.forget_evaluated(task.member)
        if lost:
            verdict = "stop"
        else:
            verdict = evaluator_verdict(
                _Curves.curve(step, (task.generation,), config.mode),
                _Curves.curve(step, _curve_generations(step, task.child), config.mode),
                latest.step - task.step,
                max_eval_steps=config.max_eval_steps,
                p_stat=config.p_stat,
            )
        if verdict == "continue":
            step.set_evaluation(evaluator, task._replace(checked=latest.step))
            return
    step.set_evaluation(evaluator, None)
    step.counts[0] += 1
    if verdict == "success":  # hand-over: the child continues from the evaluator's weights
        source = _source(history, task.generation)
        meta = history.meta_params(task.child_generation)
        first = step.start(task.child, task.child, source, meta)
        step.own("curves")[task.child] = (task.generation, first.generation_id)
        step.decision(task.child, first.generation_id, first.step)
        step.forget_evaluated(task.child)
        # new weights: it counts as just evaluated in the evaluators' queue, as a copy
        step.mark_evaluated(task.child, first.step)
        step.counts[2] += 1


def _assign(step: _Step, config: _Config) -> None:
    """Each idle, active evaluator, in id order, takes the active member evaluated
    longest ago that can be evaluated (finished and gone workers neither evaluate nor
    are evaluated): one that is not being evaluated and whose previous sub-population
    has a best member (the child)."""
    if len(step.evaluations) >= config.num_evaluators:
        return  # every evaluator is at work
    # without a child in any sub-population no member can be evaluated: no idle evaluator
    # or queue to read. The children found now are those of before any assignment; those
    # of P2 .. P(n-1) are found again below, in the queue's order, as an assignment
    # changes the fitness of its member's sub-population (P1's, by the task's score, stays)
    previous = config.sub_populations[:-1]
    if all(_best(step, config, members) is None for members in previous):
        return
    # (an evaluator's status does not change in an update: the view's column holds)
    active = step.view["active"][config.num_members :].tolist()
    evaluators = range(config.num_members, config.num_members + len(active))
    idle = [e for e in itertools.compress(evaluators, active) if e not in step.evaluations]
    if not idle:
        return
    for members in previous[1:]:
        step.best.pop(members.start, None)
    # the queue is the same for every idle evaluator but for the members taken before
    # it, so one pass over it serves them all (a member passed over had no child then:
    # it is looked at again at the next update); an assignment forgets the cached best
    # of its member's sub-population, whose fitness it changed (see _evaluate)
    queue = _queue(step, config)
    for evaluator in idle:
        for member, source in queue:
            child = _best(step, config, _previous(config, member))
            if child is not None:
                _evaluate(step, config, evaluator, member, source, child)
                break
        else:
            return  # no member left to evaluate


def _queue(step: _Step, config: _Config) -> Iterator[tuple[int, Checkpoint]]:
    """The members of ``P2 .. Pn`` an evaluator may take, with what it would copy: those
    active, not being evaluated and with a loadable checkpoint, never evaluated first,
    then in the order their latest evaluations started (``evaluation_order``; a run
    recorded before it: its members by the step theirs started, before the others),
    then by id.

    The members are ordered now (from ``last_evaluation``: dict reads) and each one's
    checkpoint is read only when the iteration reaches it, from the update's history as
    it is when this is called, and its workers (an assignment on the way changes
    nothing a later member's entry reads: it starts an evaluator's generation, past the
    members). Most updates take the first member or two of all of ``P2 .. Pn``.

    A member whose generation has no evaluation has nothing to load: the view's ``curve``
    column says so (0) as of the update's start, and only the members it does not rule
    out are read. (A member that started a generation in this update has nothing to load
    either, whatever its column says: its new generation has no evaluation yet.)"""
    busy = {task.member for task in step.evaluations.values()}
    last = step.last_evaluation
    start, stop = config.sizes[0], config.num_members
    has = step.view["curve"][start:stop].tolist()
    free = [m for m in itertools.compress(range(start, stop), has) if m not in busy]
    sequence = step.evaluation_order
    # (a stable sort of ids in order: ties by id)
    order = [m for m in free if m not in last]
    order += sorted([m for m in free if m in last and m not in sequence], key=last.__getitem__)
    order += sorted([m for m in free if m in sequence], key=sequence.__getitem__)
    run_saves = bool(step.view["saves"].any())  # (as of the update's start)
    return _loadable(step.history, step.workers, order, run_saves)


def _loadable(
    history: History, workers: Sequence[ActiveWorker], members: list[int], run_saves: bool
) -> Iterator[tuple[int, Checkpoint]]:
    """Each of ``members`` that is active and has a loadable checkpoint, with it.

    A checkpoint without params is a fresh start, which measures nothing of the
    member's weights: it is taken only where no worker of the run holds params
    (``run_saves`` false: where every copy is a fresh start too); else the member waits
    for a save of its own (an evaluator trained from scratch, and its curve was taken
    for the member's fitness). A member whose worker never sends params, in a run whose
    other workers do, is so never evaluated: an evaluator has nothing of it to load."""
    for member in members:
        worker = workers[member]
        if worker.is_active:
            source = copy_source(history, worker.generation_id)
            if source is not None and (source.params is not None or not run_saves):
                yield member, source


def _unfounded(history: History, task: Evaluation) -> bool:
    """Whether an evaluation began from no weights (a fresh start) while its member now
    has some to load: the evaluation measures a network that is not the member's."""
    if history.first(task.generation).params is not None:
        return False
    if not history.saves(task.member_generation):  # (O(1): a run that never saves)
        return False
    source = copy_source(history, task.member_generation)
    return source is not None and source.params is not None


def _evaluate(
    step: _Step, config: _Config, evaluator: int, member: int, source: Checkpoint, child: int
) -> None:
    """``evaluator`` starts training ``member``'s weights (``source``) with ``child``'s
    hyperparameters."""
    child_generation = step.workers[child].generation_id
    first = step.start(
        config.num_members + evaluator,
        evaluator,
        source,
        step.history.meta_params(child_generation),
    )
    member_generation = step.workers[member].generation_id
    generation, at = first.generation_id, first.step
    task = Evaluation(member, member_generation, child, child_generation, generation, at, at)
    step.set_evaluation(evaluator, task)
    step.own("evaluated")[member] = (member_generation, first.generation_id)
    step.scored.forget(member)
    step.best.pop(config.sub_population(member).start, None)  # its fitness changed
    step.mark_evaluated(member, first.step)
    step.counts[3] += 1


def _starts(config: _Config) -> list[int]:
    """The first member of each sub-population."""
    return [members.start for members in config.sub_populations]


def _previous(config: _Config, member: int) -> range:
    """The sub-population before ``member``'s (whose best member is the child)."""
    return config.sub_population(config.sub_population(member).start - 1)


def _best(step: _Step, config: _Config, members: range) -> int | None:
    """The best active member of a sub-population among those with a curve of their own
    (by the sub-population's own score; by the task's score while none has a fitness)."""
    if members.start in step.best:
        return step.best[members.start]
    order = _order(step, members)
    if order is not None:  # P1, ranked in the view: no sort of its members
        best = _best_ranked(step, order, members)
        step.best[members.start] = best
        return best
    eligible = _with_curves(step, members)
    best = None
    if eligible:
        keys = _sort_keys(step, config, members).tolist()
        if all(math.isnan(keys[m - members.start]) for m in eligible):
            keys = _member_keys(step, config, members).tolist()  # no fitness yet: the task's
        # the best finite score; ties: the lower worker id
        finite = [(keys[m - members.start], m) for m in eligible]
        finite = [(k, m) for k, m in finite if math.isfinite(k)]
        best = min(finite)[1] if finite else None
    step.best[members.start] = best
    return best


def _best_ranked(step: _Step, order: list[tuple[int, float, int]], members: range) -> int | None:
    """:func:`_best` of P1 (``members``) from the view's order of its keys (see
    :func:`_order`): the first member with a finite key and a curve of its own (the
    order's ties are by id, as ``_best``'s; a worker with a non-finite key, or of
    another sub-population, comes after every finite one)."""
    curve = step.view["curve"][: members.stop].tolist()
    if not any(curve):
        return None  # (no member has a curve: no walk over the order)
    for tier, _, member in order:
        if tier != 0:
            return None
        has = curve[member]
        if has == 1 or (has == -1 and _has_own_curve(step, member)):
            return member
    return None


def _with_curves(step: _Step, members: range) -> list[int]:
    """The active members of a sub-population with a curve of their own, in id order:
    from the view's ``curve`` column, read afresh for a curve over several generations
    and for the members that started a generation in this update (the view's entries
    are those of before it)."""
    start, started = members.start, step.started
    column = step.view["curve"][start : members.stop]
    known = column.tolist()
    out = [
        start + j
        for j in column.nonzero()[0].tolist()  # (0: no curve)
        if start + j not in started and (known[j] == 1 or _has_own_curve(step, start + j))
    ]
    # a generation started in this update has no evaluation yet: a member that started
    # one has a curve only if it continues an evaluator's (a hand-over's child)
    fresh = [
        m
        for m in started
        if m in members and len(step.curves.get(m, ())) > 1 and _has_own_curve(step, m)
    ]
    return sorted(out + fresh) if fresh else out


def _has_own_curve(step: _Step, member: int) -> bool:
    """Whether a member is active with a curve of its own, read afresh."""
    if not step.workers[member].is_active:
        return False
    return _has_curve(step.history, _curve_generations(step, member))


def _source(history: History, generation_id: str) -> Checkpoint:
    """The checkpoint to copy from a generation: its :func:`copy_source`, or (before it
    reports, or with nothing that may be copied) the checkpoint it started from."""
    source = copy_source(history, generation_id)
    if source is not None:
        return source
    parent = history.branch_point(generation_id)
    found = None if parent is None else history.get_checkpoint(*parent)
    return found if found is not None else history.first(generation_id)


# -- members --------------------------------------------------------------------------------
def _member_keys(step: _Step, config: _Config, members: range) -> np.ndarray:
    """Each member's :func:`member_score` as a sort key (see :func:`_sort_keys`): kept
    in the view between calls, read again for a member that started a generation in
    this update (the only ones whose score can have changed since the view was brought
    up to date: a new generation's first checkpoint changes no other member's score)."""
    keys = step.view["key"][members.start : members.stop]
    started = [m for m in step.started if m in members]  # (active: they just started)
    if started:
        keys = keys.copy()
        for m in started:
            score = member_score(step.history, step.workers[m].generation_id)
            keys[m - members.start] = selection_lib.sort_key(score, config.mode)
    return keys


def _sort_keys(step: _Step, config: _Config, members: range) -> np.ndarray:
    """Each member's selection score as a sort key, lower is better: ``P1`` by the
    task's score, a later sub-population by :func:`fire_fitness` (higher is better),
    a non-finite score ``inf`` (it ranks last) and NaN for a member with none (a
    finished or gone member, or one without a fitness): it takes no part (never
    copied, not compared with)."""
    if members.start == 0:
        return _member_keys(step, config, members)
    curves, keys = step.scored.curves(step, config, members)
    return step.memo.sort_keys(curves, keys, members.start)


class _Scored:
    """Each member of ``P2 .. Pn``'s evaluation curve and its digest (what its fitness
    is computed from), kept in the view's memo between calls and read again only for a
    member whose entry may have changed: one whose assignment was replaced or that
    started a generation, whose evaluation started or ended, or whose evaluation's
    generation got a checkpoint (:attr:`View.added`). A view read afresh starts empty.
    """

    __slots__ = ("_by_generation", "_entries", "_lists")

    def __init__(self) -> None:
        # member -> (evaluation's generation, curve, digest), or None: no curve
        self._entries: dict[int, tuple[str, Curve, bytes] | None] = {}
        self._by_generation: dict[str, set[int]] = {}  # evaluation -> its members
        # sub-population start -> (curves, digests, members to read again)
        self._lists: dict[int, tuple[list, list, set[int]]] = {}

    @staticmethod
    def bring_up_to_date(view: _views.View, num_members: int) -> None:
        """Forgets what changed since the view's kept memo (the view's own columns are
        already up to date)."""
        scored = view.memo.get(_Scored)
        if scored is None or view.touched is None:
            view.memo[_Scored] = _Scored()
            return
        for i in view.touched:
            if i < num_members:
                scored.forget(i)
        for generation_id in view.added or ():
            for member in list(scored._by_generation.get(generation_id, ())):
                scored.forget(member)

    def forget(self, member: int) -> None:
        """``member``'s entry is read again when next needed."""
        old = self._entries.pop(member, None)
        if old is not None:
            members = self._by_generation[old[0]]
            members.discard(member)
            if not members:
                del self._by_generation[old[0]]
        for start, (_, _, redo) in self._lists.items():
            if start <= member:  # (a member past this slot's end is never asked for)
                redo.add(member)

    def curves(
        self, step: _Step, config: _Config, members: range
    ) -> tuple[list[Curve | None], tuple[bytes | None, ...]]:
        """The curves of a sub-population's members and their digests (``None``: no
        curve): the evaluation of the member's current generation, if it is active."""
        kept = self._lists.get(members.start)
        if kept is None:
            kept = self._lists[members.start] = (
                [None] * len(members),
                [None] * len(members),
                set(members),
            )
        curves, digests, redo = kept
        for m in redo:
            if m not in members:
                continue
            if m not in self._entries:
                self._entries[m] = entry = _evaluation_entry(step, config, m)
                if entry is not None:
                    self._by_generation.setdefault(entry[0], set()).add(m)
            entry = self._entries[m]
            curves[m - members.start] = None if entry is None else entry[1]
            digests[m - members.start] = None if entry is None else entry[2]
        redo.clear()
        return curves, tuple(digests)


def _evaluation_entry(step: _Step, config: _Config, member: int) -> tuple[str, Curve, bytes] | None:
    """A member's evaluation (its generation, curve and digest), ``None`` when it has
    none: not evaluated since it started its generation, or not active."""
    evaluated, worker = step.evaluated.get(member), step.workers[member]
    if evaluated is None or not worker.is_active or evaluated[0] != worker.generation_id:
        return None
    curve, digest = _evaluation_curve(step, evaluated[1], config.mode)
    return evaluated[1], curve, digest


def _evaluation_curve(step: _Step, generation: str, mode: str) -> tuple[Curve, bytes]:
    """The curve of an evaluation's generation and its :func:`_digest`, kept with the
    view until the generation gets a checkpoint (see ``View.derived``): most curves a
    fitness reads are those of evaluations that ended, unchanged from call to call."""
    known = step.view.derived.get(generation)
    if known is None:
        curve = _curve(step.history, (generation,), mode)
        known = step.view.derived[generation] = (curve, _digest(curve))
    return known


def _decide(step: _Step, config: _Config, member: int) -> None:
    """A ready member exploits and explores within its sub-population, or keeps going
    (a finished or gone member decides nothing)."""
    history = step.history
    worker = step.workers[member]
    latest = _ready(config, step.last_decision, history, member, worker)
    if latest is None:
        return
    step.changed = True
    step.decision(member, worker.generation_id, latest.step)
    members = config.sub_population(member)
    order = _order(step, members)
    better: Sequence[int] | np.ndarray | None
    if order is not None:  # (P1: a member's index in its sub-population is its id)
        entry = step.view.place(member)
        if entry[0] == _NO_SCORE[0]:
            return  # no score: it keeps going and takes no part
        better = _ranked_candidates(order, entry, config.quantile_fraction)
    else:
        keys = _sort_keys(step, config, members)
        me = member - members.start
        if math.isnan(keys[me]):
            return  # no fitness yet: it keeps going and takes no part
        # (a later sub-population's keys are the memo's, kept; P1's are read afresh here)
        ranking = _ranking(keys) if members.start == 0 else step.memo.ranking(keys)
        better = _sorted_candidates(ranking, me, float(keys[me]), config.quantile_fraction)
    step.counts[0] += 1
    if better is None:
        return
    # (the keys are hashed only for a member that copies: most keep going)
    select_key, explore_key = step.keys(member)
    parent = _draw(select_key, better)
    source = _source(history, step.workers[members.start + parent].generation_id)
    meta = explore_meta(
        explore_key,
        config.space,
        source.meta_params,
        resample_probability=config.resample_probability,
        perturbation_factors=config.factors,
    )
    first = step.start(member, member, source, meta)
    step.own("curves")[member] = (first.generation_id,)
    step.decision(member, first.generation_id, first.step)
    step.forget_evaluated(member)
    step.mark_evaluated(member, first.step)
    step.counts[1] += 1


def _truncation(key: RawKey, keys: np.ndarray, me: int, fraction: float) -> int | None:
    """Truncation selection for member ``me`` among the members with a score (sort keys
    as :func:`_sort_keys` gives them: lower is better, NaN for none): in the bottom
    ``fraction`` it copies a member drawn uniformly from the top ``fraction`` that is
    strictly better (ties by the lower id, as a rank); otherwise (or with none such)
    ``None``. A later sub-population's decision draws from the same
    :func:`_sorted_candidates`, of a ranking kept with its fitness."""
    if math.isnan(keys[me]):
        return None  # no score: it takes no part
    better = _sorted_candidates(_ranking(keys), me, float(keys[me]), fraction)
    return None if better is None else _draw(key, better)


class _Ranking(NamedTuple):
    """The positions of sort keys that have one (NaN: none), by key then position
    (``+inf`` after every finite key), and their keys in that order (lists: a decision
    bisects them)."""

    ids: list[int]
    keys: list[float]


def _ranking(keys: np.ndarray) -> _Ranking:
    if len(keys) <= 32:  # (a sort of Python pairs: the cheaper below about 32)
        pairs = sorted((k, j) for j, k in enumerate(keys.tolist()) if k == k)
        return _Ranking([j for _, j in pairs], [k for k, _ in pairs])
    scored = np.flatnonzero(keys == keys)
    ranked = keys[scored]
    order = np.argsort(ranked, kind="stable")  # (ties stay in position order)
    return _Ranking(scored[order].tolist(), ranked[order].tolist())


def _sorted_candidates(
    ranking: _Ranking, me: int, mine: float, fraction: float
) -> list[int] | None:
    """The members a truncation draws from, best first (``None``: position ``me``, of
    sort key ``mine``, not NaN, copies no one): bisections in a :class:`_Ranking`, no
    sort. It is in the bottom if at least ``n - k`` members rank before it (those
    better, then those tied with a lower position); it copies one of the first
    ``min(k, m)``, ``m`` being those strictly better."""
    ids, keys = ranking
    n = len(keys)
    k = selection_lib.quantile_size(n, fraction)
    if k == 0:
        return None
    better = bisect.bisect_left(keys, mine)
    tied = bisect.bisect_right(keys, mine, better)
    if bisect.bisect_left(ids, me, better, tied) < n - k:  # (its place in the ranking)
        return None
    better = min(k, better)
    return ids[:better] if better else None


#: Where the entries of the workers without a score begin in a view's order (see
#: :func:`jaxpop.mutators._views.order_entry`: NaN keys sort last).
_NO_SCORE = (2, -math.inf, -1)


def _order(step: _Step, members: range) -> list[tuple[int, float, int]] | None:
    """P1's ranking, from the view's order of the ``rank`` column, for a decision in
    ``members``; ``None`` for a later sub-population (ranked by fitness), or when a P1
    member started a generation in this update (its key changed since the view's)."""
    if members.start != 0 or any(m < members.stop for m in step.started):
        return None
    return step.view.order


def _ranked_candidates(
    order: list[tuple[int, float, int]], entry: tuple[int, float, int], fraction: float
) -> list[int] | None:
    """:func:`_sorted_candidates` from the view's sorted order of P1's keys (``entry``:
    the member's place in it; the workers without a key come last): bisections instead
    of a sort. The member is in the bottom if at least ``n - k`` entries precede its
    own; it copies one of the first ``min(k, m)``, ``m`` being the members strictly
    better than it (those before its key's first place)."""
    n = bisect.bisect_left(order, _NO_SCORE)  # the members taking part
    k = selection_lib.quantile_size(n, fraction)
    if k == 0 or bisect.bisect_left(order, entry) < n - k:
        return None
    better = min(k, bisect.bisect_left(order, (entry[0], entry[1], -1)))
    return [entry[2] for entry in order[:better]] if better else None  # (entry[2]: its id)


def _draw(key: RawKey, better: Sequence[int] | np.ndarray) -> int:
    """One of ``better``, drawn uniformly with ``key``."""
    return int(better[HostRandom(key).randrange(len(better))])
