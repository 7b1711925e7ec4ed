"""``WinnerTakeAllGenetic``: every round, all workers copy the best one and mutate.

Each worker trains its generation for ``steps_per_exploit`` steps and/or
``seconds_per_exploit`` seconds. Once *every* worker has reported an evaluation past
that point, the workers are compared (by the mean of the values their current
generation reported, or by the latest one) and every worker starts a new generation
from the winner's latest evaluated checkpoint: the winner with its hyperparameters
unchanged, every other worker with ``mutate_fn(winner_meta_params)``.

This is the seed's simplified form of population based training; see
:mod:`jaxpop.mutators` for asynchronous, truncation and tournament variants.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxpop.history import History
from jaxpop.keys import split_key
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

__all__ = ["WinnerTakeAllGenetic"]


class WinnerTakeAllGenetic(Mutator):
    """Winner-take-all genetic mutator (the seed's, by name and arguments).

    Args:
      mutate_fn: ``mutate_fn(meta_params) -> meta_params``, or
        ``mutate_fn(meta_params, key) -> meta_params`` to receive a raw PRNG key (see
        :func:`jaxpop.mutators.base.takes_key` for how the two are told apart). Must not
        modify its argument.
      steps_per_exploit: a worker is ready once it reports an evaluation at least this
        many steps after its generation started.
      seconds_per_exploit: a worker is ready once it reports an evaluation at least this
        many seconds after its generation started. If both are given, either suffices.
      average_over_samples: score each worker by the mean of all values its current
        generation reported (``True``) or by its latest value (``False``).

    Differences from the seed, on purpose: NaN and infinite scores rank last, so such a
    worker never wins (if every worker's score is non-finite, nobody is copied and each
    worker mutates its own hyperparameters); the winner also starts a new generation
    (with unchanged hyperparameters) so that every round is a generation boundary in
    the lineage; the state counts the rounds (``{"num_exploits": n}``).
    """

    __slots__ = ()

    @records_config
    def __new__(
        cls,
        mutate_fn: Callable[..., Any],
        steps_per_exploit: int | None = None,
        seconds_per_exploit: float | None = None,
        average_over_samples: bool = True,
    ):
        if steps_per_exploit is None and seconds_per_exploit is None:
            raise ValueError(
                "WinnerTakeAllGenetic needs steps_per_exploit or seconds_per_exploit "
                "(how long each worker trains between exploits)"
            )
        check_callable("mutate_fn", mutate_fn)
        if steps_per_exploit is not None:
            steps_per_exploit = check_number("steps_per_exploit", steps_per_exploit, integer=True)
        if seconds_per_exploit is not None:
            seconds_per_exploit = check_number("seconds_per_exploit", seconds_per_exploit)
        if not isinstance(average_over_samples, (bool, np.bool_)):
            raise TypeError(f"average_over_samples must be a bool, got {average_over_samples!r}")
        wants_key = takes_key(mutate_fn, 1)

        def init():
            return {"num_exploits": 0}

        def is_ready(history: History, generation_id: str) -> bool:
            latest = history.latest_evaluated(generation_id)
            if latest is None:
                return False
            start = history.first(generation_id)
            by_steps = (
                steps_per_exploit is not None and latest.step >= start.step + steps_per_exploit
            )
            by_time = (
                seconds_per_exploit is not None and latest.time >= start.time + seconds_per_exploit
            )
            return by_steps or by_time

        def score(history: History, generation_id: str) -> float:
            if average_over_samples:
                values = [c.value for c in history.evaluated(generation_id)]
                if not all(map(math.isfinite, values)):
                    return math.inf
                return rank_value(math.fsum(v / len(values) for v in values))
            return rank_value(history.latest_evaluated(generation_id).value)

        def update(
            state: Any, workers: Workers, history: History, now: float, key: np.ndarray
        ) -> MutatorResult:
            if not all(is_ready(history, w.generation_id) for w in workers):
                return state, workers, ()
            scores = [score(history, w.generation_id) for w in workers]
            best = int(np.argmin(scores))
            keys = split_key(key, len(workers)) if wants_key else [key] * len(workers)
            new_workers, new_checkpoints = [], []
            for i, worker in enumerate(workers):
                if math.isinf(scores[best]):
                    source = history.latest_loadable(worker.generation_id)
                    meta = call_mutate_fn(mutate_fn, wants_key, (source.meta_params,), keys[i])
                else:
                    source = history.latest_loadable(workers[best].generation_id)
                    meta = source.meta_params
                    if i != best:
                        meta = call_mutate_fn(mutate_fn, wants_key, (meta,), keys[i])
                new_worker, start = start_generation(source, meta, key, i, now)
                new_workers.append(new_worker)
                new_checkpoints.append(start)
            new_state = {**state, "num_exploits": state["num_exploits"] + 1}
            return new_state, tuple(new_workers), tuple(new_checkpoints)

        return super().__new__(cls, init, update)
