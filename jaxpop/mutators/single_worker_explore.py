"""``BranchingSingleMachine``: one worker compares its hyperparameters with two mutations.

The worker trains with its current hyperparameters for ``exploit_steps`` (the exploit
phase). Where that phase ended (the branch point) it trains three branches of
``explore_steps`` each, every one from the branch point: the *centre* (its
hyperparameters unchanged), then ``mutate_fn(meta_params, "pos", phase_index)``, then
``mutate_fn(meta_params, "neg", phase_index)``. It continues its next exploit phase from
the end of whichever of the three reported the best (lowest) value; the centre wins
ties, then ``"pos"``, as in the seed's ``nanargmin`` over ``[centre, pos, neg]``. So
hyperparameters already at their best stay there. ``phase_index`` counts explore
phases from 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from jaxpop import encoding
from jaxpop.history import History, check_mode
from jaxpop.mutators.base import (
    DecisionCounts,
    Mutator,
    MutatorResult,
    Workers,
    as_record,
    call_mutate_fn,
    check_callable,
    check_number,
    rank_value,
    reads_like_a_dict,
    records_config,
    start_generation,
    takes_key,
)
from jaxpop.records import ActiveWorker, Checkpoint, CheckpointRef

__all__ = ["BranchingSingleMachine", "BranchingState"]

_EXPLOIT, _CENTER, _POS, _NEG = "exploit", "center", "pos", "neg"


class BranchingSingleMachine(Mutator):
    """Single-worker explore/exploit by branching (the seed's, by name and arguments).

    Args:
      mutate_fn: ``mutate_fn(meta_params, direction, phase_index) -> meta_params`` with
        ``direction`` ``"pos"`` or ``"neg"``; or the same with a fourth ``key`` argument
        to receive a raw PRNG key (see :func:`jaxpop.mutators.base.takes_key`, and
        ``mutate_fn_takes_key`` to say it).
      exploit_steps: steps trained with the chosen hyperparameters between explores.
      explore_steps: steps trained on each branch before the branches are compared.
      mode: ``"min"`` (lower values are better, as in the seed) or ``"max"``.
      mutate_fn_takes_key: whether ``mutate_fn`` takes the key as its fourth argument
        (or as ``key=``, if that parameter is keyword-only or ``**kwargs`` is the only
        place for it); ``None`` (default): read
        from its signature.

    The phases advance on evaluations: the worker must report an evaluation at (or
    past) the end of each phase. The centre continues the exploit phase's generation;
    each mutated branch is its own generation; the winner's generation continues into
    the next exploit phase. A branch is scored by its latest evaluation at or past its
    end; NaN and infinite values rank last. A worker that saves (sends params) less
    often than it evaluates ends a phase at its first evaluation past the end that
    holds params: the branches start from the branch point's params, and the winner
    resumes from its branch's end (an evaluation without params is nothing to load).
    If its first save comes after the exploit phase ended, the branch point moves to
    that save (the centre trains ``explore_steps`` from there). The state is a
    :class:`BranchingState`. This mutator drives a population of exactly one worker.

    Differences from the seed, on purpose: the first phase is an exploit phase (the
    seed starts by exploring from step 0); NaN never wins (the seed's ``nanargmin``
    raises when all three are NaN); the comparison takes each branch's latest value at
    or past its end rather than requiring one at exactly that step.
    """

    __slots__ = ()

    @records_config
    def __new__(
        cls,
        mutate_fn: Callable[..., Any],
        exploit_steps: int,
        explore_steps: int,
        *,
        mode: Literal["min", "max"] = "min",
        mutate_fn_takes_key: bool | None = None,
    ):
        check_callable("mutate_fn", mutate_fn)
        exploit_steps = check_number("exploit_steps", exploit_steps, integer=True)
        explore_steps = check_number("explore_steps", explore_steps, integer=True)
        config = _Config(
            mutate_fn,
            takes_key(mutate_fn, 3, mutate_fn_takes_key),
            exploit_steps,
            explore_steps,
            check_mode(mode),
        )
        return super().__new__(
            cls,
            BranchingState,
            functools.partial(_update, config),
            counts=_counts,
            check_population=_check_one_worker,
            mode=config.mode,
        )


@reads_like_a_dict
class BranchingState(NamedTuple):
    """:class:`BranchingSingleMachine`'s state.

    Attributes:
      phase: ``"exploit"``, then the branch being trained: ``"center"``, ``"pos"``,
        ``"neg"``.
      phase_index: explore phases decided so far.
      phase_start: the step the current exploit phase started at.
      branch: the branch point, ``(generation_id, step)`` (``None`` while exploiting).
      center, pos: the ends of the branches trained so far (``None`` until then).
    """

    phase: str = _EXPLOIT
    phase_index: int = 0
    phase_start: int = 0
    branch: CheckpointRef | None = None
    center: CheckpointRef | None = None
    pos: CheckpointRef | None = None


encoding.register_record(BranchingState, "jaxpop.BranchingState")


class _Config(NamedTuple):
    mutate_fn: Callable[..., Any]
    wants_key: bool
    exploit_steps: int
    explore_steps: int
    mode: Literal["min", "max"]


def _as_state(state: Any) -> BranchingState:
    """``state`` as a record (runs recorded before it kept a dict; before jaxpop 0.2,
    without ``center``)."""
    return as_record(BranchingState, state)


def _checkpoint(history: History, ref: Any) -> Checkpoint:
    """The checkpoint a phase recorded (the history keeps every checkpoint it held)."""
    checkpoint = history.get_checkpoint(*ref)
    if checkpoint is None:
        raise ValueError(f"BranchingSingleMachine: its state names {ref!r}, not in the history")
    return checkpoint


def _loadable(history: History, checkpoint: Checkpoint) -> bool:
    """Whether a phase can end at ``checkpoint``: it holds params, or its generation's
    worker never sends any (``params=None`` there means "go on with what you hold")."""
    return checkpoint.params is not None or not history.saves(checkpoint.generation_id)


def _check_one_worker(population: Sequence[Any]) -> None:
    """Refuses a population (initial ``meta_params``, or workers) of several."""
    if len(population) != 1:
        raise ValueError(
            f"BranchingSingleMachine drives exactly one worker, got {len(population)}; "
            "use WinnerTakeAllGenetic for a population"
        )


def _update(
    config: _Config,
    state: Any,
    workers: Workers,
    history: History,
    now: float,
    key: np.ndarray,
) -> MutatorResult:
    _check_one_worker(workers)
    state = _as_state(state)
    latest = history.latest_evaluated(workers[0].generation_id)
    if latest is None or not _loadable(history, latest):
        return state, workers, ()
    if state.phase == _EXPLOIT:
        if latest.step < state.phase_start + config.exploit_steps:
            return state, workers, ()
        # the branch point; the centre trains on from it with the same hparams
        return state._replace(phase=_CENTER, branch=latest.ref), workers, ()
    branch = _checkpoint(history, state.branch)
    if state.phase == _CENTER and not _loadable(history, branch):
        # the exploit phase ended before the worker's first save (it looked like one that
        # never saves): the branches start from the centre's first save after it
        later = history.evaluated(branch.generation_id, min_step=branch.step)
        saved = next((c for c in later if c.params is not None), None)
        if saved is None:
            return state, workers, ()
        branch = saved
        state = state._replace(branch=branch.ref)
    if latest.step < branch.step + config.explore_steps:
        return state, workers, ()
    if state.phase in (_CENTER, _POS):
        direction, slot = (_POS, "center") if state.phase == _CENTER else (_NEG, "pos")
        meta = call_mutate_fn(
            config.mutate_fn,
            config.wants_key,
            (branch.meta_params, direction, state.phase_index),
            key,
        )
        worker, start = start_generation(branch, meta, key, 0, now)
        new_state = state._replace(phase=direction, **{slot: latest.ref})
        return new_state, (worker,), (start,)
    ends = [state.center, state.pos]  # no centre in a run of jaxpop < 0.2
    branches = [_checkpoint(history, ref) for ref in ends if ref is not None]
    branches.append(latest)
    winner = min(branches, key=lambda c: rank_value(c.value, config.mode))  # ties: the first
    new_state = BranchingState(phase_index=state.phase_index + 1, phase_start=winner.step)
    if winner is latest:
        return new_state, workers, ()
    worker = ActiveWorker(winner.params, winner.meta_params, winner.generation_id, winner.step)
    return new_state, (worker,), ()


def _counts(state: Any) -> DecisionCounts:
    """One decision per explore phase decided; one worker never copies another."""
    return DecisionCounts(_as_state(state).phase_index, 0)
