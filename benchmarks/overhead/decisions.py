"""Section ``decisions``: the latency of a ``set_eval`` that makes a decision.

In-memory controllers of 8, 64 and 256 workers, for PBT (truncation and tournament
selection) and ``WinnerTakeAllGenetic``. Every worker reports at every step with an
interval of 1, so each PBT ``set_eval`` decides for its worker (and the winner-take-all
round ends at each step's last report); the asks are timed too, in the same loop, as
the reference a decision is compared with (``eval/ask``). ``--decision-rounds`` timed
rounds (every worker reports once) follow one untimed warm-up round. The values are
uniform noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxpop import PopulationController
from jaxpop.mutators import PopulationBasedTraining, WinnerTakeAllGenetic, explore

SIZES = (8, 64, 256)  # population sizes


def mutators() -> dict[str, Callable[[], Any]]:
    """Name -> a new mutator that decides at every evaluation."""
    space = {"lr": explore.log_uniform(1e-4, 1.0)}
    return {
        "pbt_truncation": lambda: PopulationBasedTraining(
            perturbation_interval=1, hyperparam_space=space
        ),
        "pbt_tournament": lambda: PopulationBasedTraining(
            perturbation_interval=1, hyperparam_space=space, selection="tournament"
        ),
        "wta": lambda: WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=1),
    }


def _median_us(seconds: Sequence[float]) -> float | None:
    return round(statistics.median(seconds) * 1e6, 2) if seconds else None


def time_decisions(mutator, n: int, rounds: int, values: Sequence[float]) -> dict[str, Any]:
    """One row: ``rounds`` timed rounds of ``n`` workers, each asking then reporting."""
    pop = PopulationController([{"lr": 1e-3 * (1 + i % 7)} for i in range(n)], mutator)
    evals, keeps, copies, asks, v = [], [], [], [], 0
    for step in range(1, rounds + 2):
        for i in range(n):
            work = pop.active_workers[i]
            before = pop.decision_counts.copies
            t0 = time.perf_counter()
            pop.maybe_get_worker_data(i, work.generation_id, work.step, None, None)
            t1 = time.perf_counter()
            pop.set_eval(i, work.generation_id, step, None, values[v % len(values)])
            t2 = time.perf_counter()
            v += 1
            if step > 1:
                asks.append(t1 - t0)
                evals.append(t2 - t1)
                (copies if pop.decision_counts.copies > before else keeps).append(t2 - t1)
    counts = pop.decision_counts
    eval_median, ask_median = statistics.median(evals), statistics.median(asks)
    return {
        "population": n,
        "evals": len(evals),
        "us_per_eval_median": round(eval_median * 1e6, 2),
        "us_per_eval_p99": round(float(np.quantile(evals, 0.99)) * 1e6, 2),
        "us_per_ask_median": round(ask_median * 1e6, 2),
        "eval_over_ask": round(eval_median / ask_median, 1),
        "us_per_keep_median": _median_us(keeps),
        "us_per_copy_median": _median_us(copies),
        "decisions": counts.decisions,
        "copies": counts.copies,
    }


def run(rounds: int, values: Sequence[float], sizes: Sequence[int] = SIZES) -> list[dict]:
    """One row per mutator and population size."""
    return [
        {"mutator": name, **time_decisions(make(), n, rounds, values)}
        for name, make in mutators().items()
        for n in sizes
    ]


def print_table(rows: Sequence[dict]) -> None:
    print()
    print("decisions: median us per set_eval that decides (interval 1), in memory;")
    print("keep / copy: the medians of the decisions that kept going / that copied;")
    print("eval/ask: median set_eval over median ask, in the same loop")
    header = f"{'mutator':<16}{'pop':>6}{'evals':>8}{'eval med':>10}{'eval p99':>10}"
    header += f"{'keep':>8}{'copy':>8}{'ask med':>9}{'eval/ask':>10}{'copies':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        keep, copy_ = (
            "-" if x is None else f"{x:.1f}"
            for x in (r["us_per_keep_median"], r["us_per_copy_median"])
        )
        print(
            f"{r['mutator']:<16}{r['population']:>6}{r['evals']:>8}"
            f"{r['us_per_eval_median']:>10.1f}{r['us_per_eval_p99']:>10.1f}"
            f"{keep:>8}{copy_:>8}{r['us_per_ask_median']:>9.1f}"
            f"{r['eval_over_ask']:>9.1f}x{r['copies']:>8}"
        )
