"""The seed's worker loop, round robin over 8 workers, and the population it drives.

A worker asks for its data (``maybe_get_worker_data``), "trains" one step and reports an
evaluation (``set_eval``): one *pair*. Every section drives its controllers with it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxpop.mutators import WinnerTakeAllGenetic

WORKERS = 8
PARAMS = "ckpt/handle"  # what workers pass as params: a handle, the same object every time
VARIANTS = {"no_exploit": 10**12, "exploit": 50}  # workload name -> steps_per_exploit


def mutate_fn(meta_params: dict) -> dict:
    """The seed's form (no key), deterministic: every controller makes the same choices."""
    return {"lr": meta_params["lr"] * 1.1}


def make_population(steps_per_exploit: int) -> tuple[list[dict], WinnerTakeAllGenetic]:
    """The 8 workers' initial hyperparameters and the winner-take-all mutator."""
    population = [{"lr": 1e-3 * (i + 1)} for i in range(WORKERS)]
    return population, WinnerTakeAllGenetic(mutate_fn, steps_per_exploit=steps_per_exploit)


def controller_shape(controller) -> dict[str, int]:
    """A jaxpop controller's history size, generations and exploit rounds."""
    return {
        "checkpoints": controller.history.num_checkpoints,
        "generations": len(controller.history),
        "exploit_rounds": controller.state.mutator_state.num_exploits,
    }


def new_cursors() -> list[list[Any]]:
    """Each worker's ``[generation_id, step, meta_params]``: nothing yet."""
    return [["", 0, None] for _ in range(WORKERS)]


def drive(controller, cursors, start: int, num_pairs: int, values: Sequence[float]) -> None:
    """Runs ask/report pairs ``start .. start + num_pairs - 1`` (pair i: worker i % 8)."""
    ask, report, n = controller.maybe_get_worker_data, controller.set_eval, len(values)
    for i in range(start, start + num_pairs):
        worker_id = i % WORKERS
        cursor = cursors[worker_id]
        new = ask(worker_id, cursor[0], cursor[1], PARAMS, cursor[2])
        if new is not None:
            cursor[0], cursor[1], cursor[2] = new.generation_id, new.step, new.meta_params
        cursor[1] += 1
        report(worker_id, cursor[0], cursor[1], PARAMS, values[i % n])


def drive_timed(
    controller,
    cursors,
    start: int,
    num_pairs: int,
    values: Sequence[float],
    latencies: list | None = None,
) -> tuple[float, float, float]:
    """Like :func:`drive`, timing each call (appending its seconds to ``latencies``).

    Returns (seconds for the whole loop, seconds in asks, seconds in evals).
    """
    ask, report, n = controller.maybe_get_worker_data, controller.set_eval, len(values)
    clock = time.perf_counter
    record = (lambda seconds: None) if latencies is None else latencies.append
    in_ask = in_eval = 0.0
    began = clock()
    for i in range(start, start + num_pairs):
        worker_id = i % WORKERS
        cursor = cursors[worker_id]
        t0 = clock()
        new = ask(worker_id, cursor[0], cursor[1], PARAMS, cursor[2])
        t1 = clock()
        if new is not None:
            cursor[0], cursor[1], cursor[2] = new.generation_id, new.step, new.meta_params
        cursor[1] += 1
        value = values[i % n]
        t2 = clock()
        report(worker_id, cursor[0], cursor[1], PARAMS, value)
        t3 = clock()
        record(t1 - t0)
        record(t3 - t2)
        in_ask += t1 - t0
        in_eval += t3 - t2
    return clock() - began, in_ask, in_eval


def latency_stats(latencies: Sequence[float]) -> dict[str, float]:
    """Single-call latencies in microseconds: the largest and the 99th percentile."""
    if not latencies:
        return {"max_call_us": 0.0, "p99_call_us": 0.0}
    array = np.asarray(latencies) * 1e6
    return {
        "max_call_us": round(float(array.max()), 1),
        "p99_call_us": round(float(np.percentile(array, 99)), 1),
    }
