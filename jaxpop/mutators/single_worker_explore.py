"""``BranchingSingleMachine``: one worker alternates exploit and two-branch explore phases.

The worker trains with its current hyperparameters for ``exploit_steps`` (the exploit
phase). From the checkpoint where that phase ended (the branch point) it then trains
the ``"pos"`` branch, ``mutate_fn(meta_params, "pos", phase_index)``, for
``explore_steps``; goes back to the branch point and trains the ``"neg"`` branch,
``mutate_fn(meta_params, "neg", phase_index)``, for ``explore_steps``; and continues its
next exploit phase from the end of whichever branch reported the better (lower) value.
``phase_index`` counts explore phases from 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from jaxpop.history import History
from jaxpop.mutators.base import (
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

_EXPLOIT, _POS, _NEG = "exploit", "pos", "neg"


class BranchingSingleMachine(Mutator):
    """Single-worker explore/exploit by branching (the seed's, by name and arguments).

    Args:
      mutate_fn: ``mutate_fn(meta_params, direction, phase_index) -> meta_params`` with
        ``direction`` ``"pos"`` or ``"neg"``; or the same with a fourth ``key`` argument
        to receive a raw PRNG key (see :func:`jaxpop.mutators.base.takes_key`).
      exploit_steps: steps trained with the chosen hyperparameters between explores.
      explore_steps: steps trained on each branch before the branches are compared.

    The phases advance on evaluations: the worker must report an evaluation at (or
    past) the end of each phase. Each branch is its own generation; the winning branch's
    generation continues into the next exploit phase (a tie keeps ``"neg"``, the branch
    already running). NaN and infinite values rank last. The state is plain data:
    ``{"phase", "phase_index", "phase_start", "branch", "pos"}``, where ``branch`` and
    ``pos`` are ``(generation_id, step)`` references. This mutator drives a population of
    exactly one worker.
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
                meta = call_mutate_fn(mutate_fn, wants_key, (latest.meta_params, _POS, index), key)
                worker, start = start_generation(latest, meta, key, 0, now)
                new_state = {**state, "phase": _POS, "branch": latest.ref}
                return new_state, (worker,), (start,)
            branch = history.get_checkpoint(*state["branch"])
            if latest.step < branch.step + explore_steps:
                return state, workers, ()
            if phase == _POS:
                meta = call_mutate_fn(mutate_fn, wants_key, (branch.meta_params, _NEG, index), key)
                worker, start = start_generation(branch, meta, key, 1, now)
                new_state = {**state, "phase": _NEG, "pos": latest.ref}
                return new_state, (worker,), (start,)
            pos = history.get_checkpoint(*state["pos"])
            winner = pos if rank_value(pos.value) < rank_value(latest.value) else latest
            new_state = {
                "phase": _EXPLOIT,
                "phase_index": index + 1,
                "phase_start": winner.step,
                "branch": None,
                "pos": None,
            }
            if winner is latest:
                return new_state, workers, ()
            worker = ActiveWorker(
                winner.params, winner.meta_params, winner.generation_id, winner.step
            )
            return new_state, (worker,), ()

        return super().__new__(cls, init, update)
