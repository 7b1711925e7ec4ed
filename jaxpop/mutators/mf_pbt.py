"""``MultipleFrequenciesPBT``: sub-populations that evolve at different frequencies.

MF-PBT (Doulazmi et al. 2025, arXiv 2506.03225, Section 3) splits the population into
sub-populations that evolve every ``frequencies[k] * t_ready`` steps and lets better
members migrate between them, asymmetrically: hyperparameters only flow from a slower
sub-population into a faster one. :func:`plan` is the decision rule (pure ``jax.numpy``,
used by the host mutator and by :func:`jaxpop.vectorized_mf.mf_pbt_round` on device);
``docs/pbt.md`` describes the algorithm and the choices the paper leaves open.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpop import encoding
from jaxpop.history import History, check_mode
from jaxpop.keys import split_key
from jaxpop.mutators import _views
from jaxpop.mutators import explore as explore_lib
from jaxpop.mutators._subpopulations import (
    check_sizes,
    dense_ranks,
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
from jaxpop.records import ActiveWorker
from jaxpop.types import MutatorResult, RawKey, Workers

__all__ = [
    "MFPBTState",
    "MultipleFrequenciesPBT",
    "Plan",
    "check_frequencies",
    "check_layout",
    "evolving",
    "plan",
    "sub_population_of",
]

#: The paper's brackets are quarters of a sub-population (Section 3).
_BRACKETS = 4


class MFPBTState(NamedTuple):
    """:class:`MultipleFrequenciesPBT`'s state (journaled with the run).

    Attributes:
      round: the last round decided: every worker had reported an evaluation at or
        past step ``round * t_ready`` in its current generation.
      num_decisions: active members of evolving sub-populations, summed over rounds.
      num_exploits: bottom-bracket members that copied a top-bracket member.
      num_migrations: third-bracket members replaced by a better member of another
        sub-population.
      missed: the workers a round was played without (finished or gone then), still
        behind it: one that comes back is not waited for, and ranks last (it copies,
        if its bracket does), until it copies or catches up.
    """

    round: int = 0
    num_decisions: int = 0
    num_exploits: int = 0
    num_migrations: int = 0
    missed: tuple[int, ...] = ()


encoding.register_record(MFPBTState, "jaxpop.MFPBTState")


class Plan(NamedTuple):
    """One MF-PBT round's decisions, for every member ``i`` of the population.

    Attributes:
      parents: ``int32[N]``, whose weights ``i`` continues from (``i``: keeps its own).
      hparams_from: ``int32[N]``, whose hyperparameters ``i`` takes.
      explore: ``bool[N]``, whether those hyperparameters are then explored (only the
        bottom bracket's copies of the top bracket are; migrants are not).
    """

    parents: jax.Array
    hparams_from: jax.Array
    explore: jax.Array


def sub_population_of(member: int, population_size: int, num_sub_populations: int) -> int:
    """The sub-population of ``member``: members ``[k * n, (k + 1) * n)`` form number ``k``.

    >>> sub_population_of(9, 16, 4)
    2
    """
    return member // (population_size // num_sub_populations)


def evolving(round_index: Any, frequencies: Sequence[int]) -> jax.Array:
    """``bool[M]``: which sub-populations evolve after round ``round_index`` (from 1).

    Sub-population ``k`` evolves every ``frequencies[k]``-th round (Section 3: every
    ``delta_k * t_ready`` steps). Works on a traced ``round_index`` of an integer dtype;
    a concrete one must be a whole number >= 1 (round 0, counted from 0, would evolve
    every sub-population; 2.5 none; ``True`` read as round 1) and is taken as jax's int
    (or unsigned int, past it); a frequency past the round's integer type is refused (it
    would wrap around).

    >>> evolving(10, (1, 10, 25)).tolist()
    [True, True, False]
    """
    index = _check_round_index(round_index)
    bound = jnp.iinfo(index.dtype).max
    if any(f > bound for f in frequencies):
        raise ValueError(
            f"frequencies {tuple(frequencies)!r} do not fit the round index's {index.dtype} "
            f"(at most {bound}; enable jax_enable_x64 for int64)"
        )
    return index % jnp.asarray(frequencies, index.dtype) == 0


def _check_round_index(round_index: Any) -> jax.Array:
    """``round_index`` as a jax integer scalar, or a clear error."""
    dtype = getattr(round_index, "dtype", None)
    if isinstance(round_index, (bool, np.bool_)) or (
        dtype is not None and jnp.issubdtype(dtype, jnp.bool_)
    ):
        raise TypeError(f"round_index must be an integer (counting from 1), got {round_index!r}")
    if dtype is None and not isinstance(round_index, numbers.Integral):
        raise TypeError(
            f"round_index must be an integer (counting from 1), got "
            f"{type(round_index).__name__}: {round_index!r:.40}"
        )
    if dtype is not None and (not jnp.issubdtype(dtype, jnp.integer) or jnp.ndim(round_index)):
        raise TypeError(
            f"round_index must be an integer scalar (counting from 1), got an array of "
            f"{dtype} with shape {jnp.shape(round_index)}"
        )
    if isinstance(round_index, jax.core.Tracer):
        return round_index
    value = int(round_index)
    if value < 1:
        raise ValueError(
            f"round_index counts the rounds completed from 1, got {value} (a loop counting "
            "from 0 is one round out of step with the frequencies)"
        )
    # jax's int (int32 without x64), or its unsigned int past it (jnp.asarray of a numpy
    # int64 would wrap it around)
    for dtype in map(jax.dtypes.canonicalize_dtype, (np.int64, np.uint64)):
        if value <= jnp.iinfo(dtype).max:
            return jnp.asarray(value, dtype)
    raise ValueError(
        f"round_index {value} does not fit jax's integer types (enable jax_enable_x64 for 64 bits)"
    )


def _check_plan(ranks: jax.Array, evolving: jax.Array, m: Any, active: jax.Array | None) -> None:
    """:func:`plan`'s arguments, checked by their shapes (static under ``jit``): a
    wrong-sized ``evolving`` was broadcast (one flag for every sub-population)."""
    if isinstance(m, (bool, np.bool_)) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"num_sub_populations must be an int >= 1, got {m!r:.40}")
    if ranks.ndim != 1 or ranks.shape[0] < m or ranks.shape[0] % m:
        raise ValueError(
            f"ranks must be (N,) with N a multiple of num_sub_populations={m}, got shape "
            f"{ranks.shape}"
        )
    flags = evolving.dtype == bool or jnp.issubdtype(evolving.dtype, jnp.integer)  # (0 / 1)
    if evolving.shape != (m,) or not flags:
        raise ValueError(
            f"evolving must be bool[{m}] (one flag per sub-population), got "
            f"{evolving.dtype}{list(evolving.shape)}"
        )
    if active is not None and active.shape != ranks.shape:
        raise ValueError(
            f"active must be bool{list(ranks.shape)} (one flag per member), got shape "
            f"{active.shape}"
        )


@functools.partial(jax.jit, static_argnames=("num_sub_populations",))
def plan(
    ranks: jax.Array,
    evolving: jax.Array,
    *,
    num_sub_populations: int,
    active: jax.Array | None = None,
) -> Plan:
    """MF-PBT's exploit and asymmetric migration for one round (Section 3).

    Sub-population ``k`` holds members ``[k * n, (k + 1) * n)``, ordered by evolution
    frequency: a lower ``k`` evolves more often. In each evolving sub-population the
    members are ranked (lower ``ranks`` is better; ties by the lower index) and cut into
    four brackets of ``q = n // 4``: ``B1`` (the best ``q``), ``B2``, ``B3`` (the ``q``
    just above the last) and ``B4`` (the worst ``q``).

    * Exploit: the ``j``-th best of ``B4`` copies the weights and hyperparameters of the
      ``j``-th best of ``B1``, then explores them.
    * Migration: ``B3``, best first, meets the members of all *other* sub-populations,
      best first (by the same ``ranks``): while the best migrant not yet taken is better
      than the ``B3`` member, the member takes its weights and that migrant is used up.
      Hyperparameters go one way only: a member takes the migrant's when the migrant
      comes from a slower sub-population (higher ``k``); from a faster one it keeps the
      weights only and takes the hyperparameters of its own sub-population's best.
      Migrants are not explored.

    Everything is decided from the ranks before the round (a member that is replaced
    may still be copied, from its checkpoint before the round). Only strictly better
    members are copied; a non-finite rank is never copied.

    Members that are not ``active`` (finished or gone workers) take no part: the
    brackets are cut among a sub-population's active members (``B1`` and ``B4`` of
    ``q`` each while they fit without overlapping, else of half the active members,
    rounded down; ``B3`` the ``q`` just above ``B4``, fewer where it would reach into
    ``B1``), and an inactive member is never copied, migrated or replaced.

    Args:
      ranks: ``(N,)``, lower is better (scores or exact ranks; only their order counts).
      evolving: ``bool[M]``, which sub-populations evolve (:func:`evolving`).
      num_sub_populations: ``M``; ``N`` must be a multiple of it.
      active: ``bool[N]``, the members taking part; ``None``: all of them.

    Returns:
      a :class:`Plan`.
    """
    ranks, evolving, m = jnp.asarray(ranks), jnp.asarray(evolving), num_sub_populations
    active = None if active is None else jnp.asarray(active)
    _check_plan(ranks, evolving, m, active)
    size = ranks.shape[0]
    taking_part = jnp.ones(size, bool) if active is None else active.astype(bool)
    ranks = jnp.where(~jnp.isfinite(ranks) | ~taking_part, jnp.inf, ranks)  # (-inf too)
    evolving = evolving.astype(bool)
    n = size // m
    q = n // _BRACKETS  # the brackets' size when every member takes part
    members = jnp.arange(size, dtype=jnp.int32)
    sub = members // n
    # best first, the members taking no part last (NaN sorts after inf)
    sort_keys = jnp.where(taking_part, ranks, jnp.nan).reshape(m, n)
    order = jnp.argsort(sort_keys, axis=1, stable=True).astype(jnp.int32)
    order = order + (jnp.arange(m, dtype=jnp.int32) * n)[:, None]  # member ids, best first
    counts = taking_part.reshape(m, n).sum(axis=1, dtype=jnp.int32)
    q_k = jnp.minimum(q, counts // 2)  # B1 and B4 among those taking part, disjoint
    j = jnp.arange(q, dtype=jnp.int32)
    in_bracket = j[None, :] < q_k[:, None]  # (M, q): whether B1's and B4's j-th exist
    # B3: the q_k just above B4, fewer if they would reach into B1 (all active: q_k)
    q3_k = jnp.clip(counts - 2 * q_k, 0, q_k)
    in_third = j[None, :] < q3_k[:, None]

    def bracket(start: jax.Array) -> jax.Array:  # the members from column ``start`` on
        columns = jnp.clip(start[:, None] + j[None, :], 0, n - 1)
        return jnp.take_along_axis(order, columns, axis=1)

    top, third, bottom = order[:, :q], bracket(counts - q_k - q3_k), bracket(counts - q_k)
    parents, hparams_from, explore = members, members, jnp.zeros(size, bool)
    # exploit: B4[j] <- B1[j]; a bracket's missing places write nowhere (past the end)
    copies = evolving[:, None] & in_bracket & (ranks[top] < ranks[bottom])
    targets = jnp.where(in_bracket, bottom, size).reshape(-1)
    sources = jnp.where(copies, top, bottom).reshape(-1)
    parents = parents.at[targets].set(sources, mode="drop")
    hparams_from = hparams_from.at[targets].set(sources, mode="drop")
    explore = explore.at[targets].set(copies.reshape(-1), mode="drop")
    if m == 1 or q == 0:  # static: no other sub-population to migrate from
        return Plan(parents, hparams_from, explore)
    # migration into B3: a greedy merge of B3 (best first) with the others (best first)
    position = jnp.zeros(size, jnp.int32).at[jnp.argsort(ranks, stable=True)].set(members)

    def migrate(
        k: jax.Array, third_k: jax.Array, in_third_k: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        # best first (int32 under x64 too: scattered into the int32 plan)
        outside = jnp.argsort(position + size * (sub == k))[: size - n].astype(jnp.int32)

        def meet(taken: jax.Array, place: tuple) -> tuple[jax.Array, tuple]:
            member, exists = place
            migrant = outside[taken]
            moves = evolving[k] & exists & (ranks[migrant] < ranks[member])
            return taken + moves, (jnp.where(moves, migrant, member), moves)

        _, (migrant, moves) = jax.lax.scan(meet, jnp.int32(0), (third_k, in_third_k))
        return migrant, moves

    migrant, moves = jax.vmap(migrate)(jnp.arange(m, dtype=jnp.int32), third, in_third)
    own_best = jnp.broadcast_to(order[:, :1], third.shape)
    from_slower = sub[migrant] > jnp.arange(m, dtype=jnp.int32)[:, None]
    hparams = jnp.where(moves & ~from_slower, own_best, migrant)
    targets = jnp.where(in_third, third, size).reshape(-1)
    parents = parents.at[targets].set(migrant.reshape(-1), mode="drop")
    hparams_from = hparams_from.at[targets].set(hparams.reshape(-1), mode="drop")
    return Plan(parents, hparams_from, explore)


def check_frequencies(frequencies: Any) -> tuple[int, ...]:
    """``frequencies`` as a tuple of positive ints, strictly increasing, or a clear error
    (a decreasing one would send the fast sub-populations' hyperparameters to the slow)."""
    freqs = check_sizes("frequencies", frequencies, minimum=1)
    if any(a >= b for a, b in itertools.pairwise(freqs)):
        raise ValueError(
            f"frequencies must be strictly increasing (one sub-population per "
            f"frequency, the fastest first), got {freqs!r}"
        )
    return freqs


def check_layout(population_size: int, frequencies: Sequence[int]) -> int:
    """The sub-population size for ``population_size`` members, or a ``ValueError``.

    The population splits into ``len(frequencies)`` sub-populations of equal size, each
    of at least 4 members (one per bracket).
    """
    m = len(frequencies)
    n = population_size // m
    if population_size % m or n < _BRACKETS:
        raise ValueError(
            f"MultipleFrequenciesPBT needs a population that splits into {m} equal "
            f"sub-populations (one per frequency) of at least {_BRACKETS} members (one "
            f"per bracket), got {population_size} workers; use a multiple of {m} that is "
            f">= {_BRACKETS * m}"
        )
    return n


def _rank_score(history: History, generation_id: str) -> float | None:
    """A member's score for a round's ranking (:func:`member_score`); ``None`` (it ranks
    last and is never copied) for a member with nothing that may be copied: its only
    saves have values that are not finite (:func:`jaxpop.mutators.base.copy_source`)."""
    score = member_score(history, generation_id)
    if score is None or not math.isfinite(score):
        return score
    return None if nothing_to_copy(history, generation_id) else score


def _behind(view: _views.View, state: MFPBTState) -> list[int]:
    """The workers that missed a round and, back, are still behind the rounds played
    (not waited for; they rank last)."""
    rounds = view["round"]
    return [i for i in state.missed if i < len(rounds) and rounds[i] < state.round]


def _completed_round(view: _views.View, behind: list[int]) -> int | None:
    """The last round every active worker has finished (an evaluation at or past
    ``round * t_ready`` in its current generation), or ``None`` before the first.
    Finished and gone workers are not waited for, nor those ``behind``."""
    rounds = view["round"]
    if behind:
        rounds = rounds.copy()
        rounds[behind] = math.inf
    completed = rounds.min()
    return None if completed < 0 or completed == math.inf else int(completed)


def _missed(
    view: _views.View, active: np.ndarray, behind: list[int], copied: np.ndarray, completed: int
) -> tuple[int, ...]:
    """After round ``completed``: the workers not active, and those ``behind`` that did
    not copy and have not caught up."""
    rounds = view["round"]
    still = {i for i in behind if not copied[i] and rounds[i] < completed}
    return tuple(i for i in range(len(active)) if not active[i] or i in still)


def _keeping(views: _views.Views, view: _views.View, state: MFPBTState) -> MFPBTState:
    """Keeps ``view`` for the next call, which gets ``state`` (its entries do not depend
    on the state) and a history made from this call's by the core's adds."""
    view.moved_on(state, view.workers, view.history)
    views.keep(view)
    return state


def _round_entry(
    t_ready: int, state: Any, history: History, worker_id: int, worker: ActiveWorker
) -> tuple[float]:
    """The last round the worker finished: ``inf`` if it is not active (not waited
    for), -1 before its current generation's first evaluation."""
    if not worker.is_active:
        return (math.inf,)
    latest = history.latest_evaluated(worker.generation_id)
    return (-1.0 if latest is None else float(latest.step // t_ready),)


def _evolving_between(done: int, completed: int, frequencies: Sequence[int]) -> np.ndarray:
    """Which sub-populations have a round in ``(done, completed]`` (workers that report
    rarely can finish several rounds at once; a sub-population then evolves once)."""
    # (a multiple of f in the range: O(1), where a loop over the rounds jumped took
    # minutes for a worker far ahead and a huge frequency)
    return np.asarray([completed // f > done // f for f in frequencies])


def _counts(state: MFPBTState) -> DecisionCounts:
    return DecisionCounts(state.num_decisions, state.num_exploits + state.num_migrations)


class MultipleFrequenciesPBT(Mutator):
    """Multiple-Frequencies PBT (Doulazmi et al. 2025, arXiv 2506.03225).

    The workers form ``len(frequencies)`` sub-populations of equal size (workers
    ``[k * n, (k + 1) * n)`` are sub-population ``k``, with ``n >= 4``). Rounds are
    synchronous: round ``r`` is over once every worker has reported an evaluation at or
    past step ``r * t_ready`` in its current generation; then every sub-population ``k``
    with ``r % frequencies[k] == 0`` evolves by :func:`plan` (exploit within it,
    asymmetric migration into it), ranking the members by their latest values.

    Args:
      t_ready: the base interval, in steps (the paper's ``t_ready``; jaxpop PBT's
        ``perturbation_interval``).
      hyperparam_space: the explore space (see :mod:`jaxpop.mutators.explore`): the
        bounds a run may reach (explored and migrated values are clipped to it; the
        authors' code bounds only the first draw).
      frequencies: the paper's ``delta_k``: sub-population ``k`` evolves every
        ``frequencies[k] * t_ready`` steps; strictly increasing positive ints. Default
        ``(1, 10, 25, 50)``, the paper's.
      perturbation_factors: a copied hyperparameter is multiplied by one of these
        (clipped to the space). Default ``(0.8, 1.25)``, the paper's.
      resample_probability: per hyperparameter, the probability of a fresh draw
        instead of a perturbation. Default 0 (the paper only perturbs).
      mode: ``"min"`` (lower values are better) or ``"max"``.
    """

    __slots__ = ()
    #: what the recorded state is in (its round counts t_ready steps): see ``describe``
    _state_options = ("t_ready",)

    @records_config
    def __new__(
        cls,
        *,
        t_ready: int,
        hyperparam_space: Any,
        frequencies: Sequence[int] = (1, 10, 25, 50),
        perturbation_factors: Sequence[float] = (0.8, 1.25),
        resample_probability: float = 0.0,
        mode: Literal["min", "max"] = "min",
    ):
        interval = check_number("t_ready", t_ready, integer=True)
        freqs = check_frequencies(frequencies)
        if hyperparam_space is None:
            raise ValueError("MultipleFrequenciesPBT needs a hyperparam_space to explore")
        explore_lib.validate_space(hyperparam_space)
        factors = check_factors(perturbation_factors)
        p = check_probability("resample_probability", resample_probability)
        mode = check_mode(mode)
        update = functools.partial(
            _update,
            views=_views.Views(functools.partial(_round_entry, interval), {"round": np.float64}),
            t_ready=interval,
            frequencies=freqs,
            space=hyperparam_space,
            factors=factors,
            resample_probability=p,
            mode=mode,
        )
        prepare = functools.partial(_prepare, frequencies=freqs)
        return super().__new__(
            cls,
            MFPBTState,
            update,
            None,
            prepare,
            mode=mode,
            counts=_counts,
            check_population=functools.partial(check_in_space, hyperparam_space),
        )


def _prepare(population_size: int, *, frequencies: tuple[int, ...]) -> None:
    """Checks the layout before any worker is answered and compiles :func:`plan`."""
    check_layout(population_size, frequencies)
    m = len(frequencies)
    everyone = np.ones(population_size, bool)
    plan(
        np.zeros(population_size, np.float32),
        np.ones(m, bool),
        num_sub_populations=m,
        active=everyone,
    )


def _update(
    state: MFPBTState,
    workers: Workers,
    history: History,
    now: float,
    key: RawKey,
    *,
    views: _views.Views,
    t_ready: int,
    frequencies: tuple[int, ...],
    space: Any,
    factors: tuple[float, ...],
    resample_probability: float,
    mode: str,
) -> MutatorResult:
    size = len(workers)
    n = check_layout(size, frequencies)
    view = views.view(state, workers, history)  # each worker's last round, kept between calls
    behind = _behind(view, state)
    completed = _completed_round(view, behind)
    if completed is None or completed <= state.round:
        return _keeping(views, view, state), workers, ()
    moving = _evolving_between(state.round, completed, frequencies)
    active = np.asarray([w.is_active for w in workers])
    if not moving.any():
        missed = _missed(view, active, behind, np.zeros(size, bool), completed)
        return _keeping(views, view, state._replace(round=completed, missed=missed)), workers, ()
    scores = [_rank_score(history, w.generation_id) for w in workers]
    for late in behind:  # (ranks last, never copied: its score is of a round long gone)
        scores[late] = None
    ranks = dense_ranks(scores, mode)
    decided = plan(
        ranks.astype(np.float32), moving, num_sub_populations=len(frequencies), active=active
    )
    parents, hparams_from, explore = (np.asarray(a) for a in decided)
    keys = split_key(key, size)
    new_workers, new_checkpoints = list(workers), []
    for i in np.flatnonzero(parents != np.arange(size)):
        source = copy_source(history, workers[parents[i]].generation_id)
        assert source is not None  # a completed round: every parent has, see _rank_score
        meta = history.meta_params(workers[hparams_from[i]].generation_id)
        if explore[i]:
            meta = explore_meta(
                keys[i],
                space,
                meta,
                resample_probability=resample_probability,
                perturbation_factors=factors,
            )
        else:  # a migrant's hyperparameters as they are, inside the space (as every copy)
            meta = explore_lib.clip(space, meta)
        new_workers[i], start = start_generation(source, meta, key, int(i), now)
        new_checkpoints.append(start)
    copied = parents != np.arange(size)
    new_state = MFPBTState(
        round=completed,
        num_decisions=state.num_decisions + int(active.reshape(-1, n)[moving].sum()),
        num_exploits=state.num_exploits + int((copied & explore).sum()),
        num_migrations=state.num_migrations + int((copied & ~explore).sum()),
        missed=_missed(view, active, behind, copied, completed),
    )
    return (
        _keeping(views, view, new_state),
        tuple(new_workers),
        tuple(new_checkpoints),
    )
