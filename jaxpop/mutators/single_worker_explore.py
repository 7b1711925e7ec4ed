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

from collections.abc import Callable
from typing import Any

import numpy as np

from jaxpop.history import History
from jaxpop.mutators.base import (
    DecisionCounts,
    Mutator,
    MutatorResult,
    Workers,
    call_mutate_fn,
    check_callable,
    check_number,
    rank_value,
    records_config,
    start_generation,
    takes_key,
)
from jaxpop.records import ActiveWorker

__all__ = ["BranchingSingleMachine"]

_EXPLOIT, _CENTER, _POS, _NEG = "exploit", "center", "pos", "neg"


class BranchingSingleMachine(Mutator):
    """Single-worker explore/exploit by branching (the seed's, by name and arguments).

    Args:
      mutate_fn: ``mutate_fn(meta_params, direction, phase_index) -> meta_params`` with
        ``direction`` ``"pos"`` or ``"neg"``; or the same with a fourth ``key`` argument
        to receive a raw PRNG key (see :func:`jaxpop.mutators.base.takes_key`).
      exploit_steps: steps trained with the chosen hyperparameters between explores.
      explore_steps: steps trained on each branch before the branches are compared.

    The phases advance on evaluations: the worker must report an evaluation at (or
    past) the end of each phase. The centre continues the exploit phase's generation;
    each mutated branch is its own generation; the winner's generation continues into
    the next exploit phase. A branch is scored by its latest evaluation at or past its
    end; NaN and infinite values rank last. The state is plain data: ``{"phase",
    "phase_index", "phase_start", "branch", "center", "pos"}``, where ``branch``,
    ``center`` and ``pos`` are ``(generation_id, step)`` references (the branch point,
    and the ends of the branches trained so far). This mutator drives a population of
    exactly one worker.

    Differences from the seed, on purpose: the first phase is an exploit phase (the
    seed starts by exploring from step 0); NaN never wins (the seed's ``nanargmin``
    raises when all three are NaN); the comparison takes each branch's latest value at
    or past its end rather than requiring one at exactly that step.
    """

    __slots__ = ()

    @records_config
    def __new__(cls, mutate_fn: Callable[..., Any], exploit_steps: int, explore_steps: int):
        check_callable("mutate_fn", mutate_fn)
        exploit_steps = check_number("exploit_steps", exploit_steps, integer=True)
        explore_steps = check_number("explore_steps", explore_steps, integer=True)
        wants_key = takes_key(mutate_fn, 3)

        def init():
            return {
                "phase": _EXPLOIT,
                "phase_index": 0,
                "phase_start": 0,
                "branch": None,
                "center": None,
                "pos": None,
            }

        def update(
            state: Any, workers: Workers, history: History, now: float, key: np.ndarray
        ) -> MutatorResult:
            if len(workers) != 1:
                raise ValueError(
                    f"BranchingSingleMachine drives exactly one worker, got {len(workers)}; "
                    "use WinnerTakeAllGenetic for a population"
                )
            latest = history.latest_evaluated(workers[0].generation_id)
            if latest is None:
                return state, workers, ()
            phase, index = state["phase"], state["phase_index"]
            if phase == _EXPLOIT:
                if latest.step < state["phase_start"] + exploit_steps:
                    return state, workers, ()
                # the branch point; the centre trains on from it with the same hparams
                return {**state, "phase": _CENTER, "branch": latest.ref}, workers, ()
            branch = history.get_checkpoint(*state["branch"])
            if latest.step < branch.step + explore_steps:
                return state, workers, ()
            if phase in (_CENTER, _POS):
                direction, slot = (_POS, "center") if phase == _CENTER else (_NEG, "pos")
                meta = call_mutate_fn(
                    mutate_fn, wants_key, (branch.meta_params, direction, index), key
                )
                worker, start = start_generation(branch, meta, key, 0, now)
                new_state = {**state, "phase": direction, slot: latest.ref}
                return new_state, (worker,), (start,)
            ends = [state.get("center"), state["pos"]]  # no centre in a run of jaxpop < 0.2
            branches = [history.get_checkpoint(*ref) for ref in ends if ref is not None]
            branches.append(latest)
            winner = min(branches, key=lambda c: rank_value(c.value))  # ties: the first
            new_state = {
                "phase": _EXPLOIT,
                "phase_index": index + 1,
                "phase_start": winner.step,
                "branch": None,
                "center": None,
                "pos": None,
            }
            if winner is latest:
                return new_state, workers, ()
            worker = ActiveWorker(
                winner.params, winner.meta_params, winner.generation_id, winner.step
            )
            return new_state, (worker,), ()

        return super().__new__(cls, init, update, counts=_counts)


def _counts(state: Any) -> DecisionCounts:
    """One decision per explore phase decided; one worker never copies another."""
    return DecisionCounts(state["phase_index"], 0)
