"""``FixedSchedule``: switch hyperparameters at fixed steps.

``FixedSchedule({0: a, 10: b, 30: c})`` trains with ``a`` from step 0, ``b`` from step 10
and ``c`` from step 30. Each change starts a new generation from the worker's parameters
at the step where it happened, so the history shows exactly which hyperparameters
trained which steps.
"""

from __future__ import annotations

import bisect
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxpop.events import Ask
from jaxpop.history import History
from jaxpop.mutators.base import Mutator, MutatorResult, Workers, start_generation
from jaxpop.records import Checkpoint

__all__ = ["FixedSchedule"]


class FixedSchedule(Mutator):
    """Changes every worker's hyperparameters at the steps of a ``{step: meta_params}`` map.

    A change takes effect when a worker first asks for its data (or reports an
    evaluation) at or past the change's step: the worker's parameters at that step
    become the start of a new generation with the scheduled ``meta_params``. Until the
    first scheduled step, a worker trains with its initial population entry. If a
    worker skips past several change points at once, it gets the latest of them.

    Differences from the seed, on purpose: the schedule itself is never modified; the
    progress (how many change points each worker has passed) lives in the mutator state,
    a tuple with one count per worker, so a restored run continues exactly.
    """

    __slots__ = ()

    def __new__(cls, schedule: Mapping[int, Any]):
        if not isinstance(schedule, Mapping) or not schedule:
            raise ValueError(
                "FixedSchedule takes a non-empty {step: meta_params} mapping, "
                f"got {schedule!r:.80}"
            )
        for step in schedule:
            if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
                raise ValueError(f"FixedSchedule steps must be ints >= 0, got {step!r}")
        steps = sorted(int(s) for s in schedule)
        values = [schedule[s] for s in steps]

        def init():
            return ()

        def advance(
            state: tuple[int, ...],
            workers: Workers,
            history: History,
            worker_id: int,
            at: Checkpoint,
            now: float,
            key: np.ndarray,
        ) -> MutatorResult:
            """Moves ``worker_id`` to the schedule entry in force at ``at.step``."""
            passed = state[worker_id] if worker_id < len(state) else 0
            due = bisect.bisect_right(steps, at.step)
            if due <= passed:
                return state, workers, ()
            new_checkpoints = []
            if history.get_checkpoint(at.generation_id, at.step) is None:
                new_checkpoints.append(at)
            worker, start = start_generation(at, values[due - 1], key, worker_id, now)
            new_checkpoints.append(start)
            new_state = list(state) + [0] * (worker_id + 1 - len(state))
            new_state[worker_id] = due
            new_workers = (*workers[:worker_id], worker, *workers[worker_id + 1 :])
            return tuple(new_state), new_workers, tuple(new_checkpoints)

        def update(state, workers, history, now, key):
            new_checkpoints = []
            for worker_id, worker in enumerate(workers):
                latest = history.latest(worker.generation_id)
                state, workers, added = advance(
                    state, workers, history, worker_id, latest, now, key
                )
                history = history.add_all(added)
                new_checkpoints.extend(added)
            return state, workers, tuple(new_checkpoints)

        def get_worker_data(state, workers, history, ask: Ask, now, key):
            assigned = workers[ask.worker_id]
            if ask.generation_id == assigned.generation_id:
                at = history.get_checkpoint(ask.generation_id, ask.step) or history.continuation(
                    ask.generation_id, ask.step, ask.params, None, now
                )
            else:  # the worker is about to receive its assignment: schedule from there
                at = history.get_checkpoint(
                    assigned.generation_id, assigned.step
                ) or history.latest(assigned.generation_id)
            return advance(state, workers, history, ask.worker_id, at, now, key)

        return super().__new__(cls, init, update, get_worker_data)
