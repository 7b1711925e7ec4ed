"""Section ``decisions``: the latency of a ``set_eval`` that makes a decision.

In-memory controllers of 8, 64 and 256 workers, for every built-in mutator that decides
for a population: PBT (asynchronous truncation and tournament selection, and a
synchronous round), ``WinnerTakeAllGenetic``, ``FirePBT`` (two sub-populations of 3/8
of the workers each and a quarter of evaluators), ``MultipleFrequenciesPBT`` (two
sub-populations, frequencies 1 and 2) and a ``FixedSchedule`` whose value changes at
every step (each report starts a generation; it never copies), and two floors: mutators
with no logic of their own that count a decision per report and keep going
(``floor_keep``) or start a generation from the reporter's evaluation (``floor_copy``):
what any decision costs through the controller. PB2 decides as PBT does;
its explore, a GP fit, is timed by ``benchmarks/pb2_explore.py``.
Every worker reports at every step with an interval of 1, so each
asynchronous PBT ``set_eval`` decides for its worker (and a round ends at each step's
last report); the asks are timed too, in the same loop, as the reference a decision is
compared with (``eval/ask``). ``us_per_decision`` is the median, over the ``set_eval`` s
that decided, of each one's time divided by the decisions it made: a round decides for
many workers in one call; ``us_per_keep_median`` and ``us_per_copy_median`` are the
medians of the deciding ``set_eval`` s that copied nothing and of those that copied
(one that made no decision is in neither). ``--decision-rounds`` timed rounds (every
worker reports once) follow one untimed warm-up round; ``decisions`` and ``copies``
count the timed rounds'. The values are uniform noise.

On noise, FIRE's evaluators barely work: a P1 member copies at almost every report (the
score a copy keeps, its parent's, beats a fresh draw), so P1 has no member with a curve
of its own to hand to an evaluator. The row ``fire_curves`` times the same FirePBT on
learning curves instead (:func:`curve_value`: a loss that falls with the step, lowest
for a learning rate of 1e-2, plus noise; each worker reports the step after its own),
where evaluations run, end and hand weights over; its ``by_kind`` gives the median of
the deciding ``set_eval`` s of P1 members, of the later sub-populations' members and of
the evaluators (judging an evaluation that ended, then handing the evaluator a new one).
The rows ``pbt_truncation+log``, ``fire+log`` and ``fire_curves+log`` time the same
decisions on a durable controller (a ``log_dir`` in a temporary directory,
``durability="process"``): each deciding ``set_eval`` also journals its changes.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxpop import PopulationController
from jaxpop.mutators import (
    FirePBT,
    FixedSchedule,
    MultipleFrequenciesPBT,
    PopulationBasedTraining,
    WinnerTakeAllGenetic,
    explore,
)
from jaxpop.mutators.base import DecisionCounts, Mutator, start_generation
from jaxpop.records import ActiveWorker, with_replaced

SIZES = (8, 64, 256)  # population sizes
DURABLE = ("pbt_truncation", "fire")  # also timed with a log_dir (rows "<name>+log")


def mutators() -> dict[str, Callable[[int], Any]]:
    """Name -> ``population size -> a new mutator`` that decides at every step."""
    space = {"lr": explore.log_uniform(1e-4, 1.0)}
    return {
        "pbt_truncation": lambda n: PopulationBasedTraining(
            perturbation_interval=1, hyperparam_space=space
        ),
        "pbt_tournament": lambda n: PopulationBasedTraining(
            perturbation_interval=1, hyperparam_space=space, selection="tournament"
        ),
        "pbt_synch": lambda n: PopulationBasedTraining(
            perturbation_interval=1, hyperparam_space=space, synch=True
        ),
        "wta": lambda n: WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=1),
        "fire": lambda n: FirePBT(
            perturbation_interval=1,
            sub_population_sizes=(3 * n // 8, 3 * n // 8),
            num_evaluators=n // 4,
            max_eval_steps=3,
            hyperparam_space=space,
        ),
        "mf_pbt": lambda n: MultipleFrequenciesPBT(
            t_ready=1, hyperparam_space=space, frequencies=(1, 2)
        ),
        # a schedule that changes at every step: each report starts a generation
        "fixed_schedule": lambda n: FixedSchedule(_decaying_lr, every=1),
        # the floors: what a decision costs through the controller with no logic of its
        # own, counting one decision per report and keeping going, or copying itself
        "floor_keep": lambda n: Mutator(init=int, update=_count, counts=_kept),
        "floor_copy": lambda n: Mutator(
            init=int, update=functools.partial(_copy_reporter, n), counts=_copied
        ),
    }


def _count(count, workers, history, now, key):
    return count + 1, workers, ()


def _kept(count: int) -> DecisionCounts:
    return DecisionCounts(count, 0)


def _copied(count: int) -> DecisionCounts:
    return DecisionCounts(count, count)


def _copy_reporter(n, count, workers, history, now, key):
    """Starts a generation from the reporter's evaluation, with its hyperparameters: the
    reporter of the benchmark's ``count``-th report is worker ``count % n`` (they report
    in turn)."""
    i = count % n
    worker, start = start_generation(
        history.latest_evaluated(workers[i].generation_id), workers[i].meta_params, key, i, now
    )
    return count + 1, with_replaced(workers, [(i, worker)]), (start,)


def _decaying_lr(step: int) -> dict[str, float]:
    return {"lr": 1.0 / (1 + step)}


def curve_value(worker: ActiveWorker, noise: float) -> tuple[int, float]:
    """A learning curve: the step after the worker's and its loss there, lowest for a
    learning rate of 1e-2 and falling with the step, ``noise`` added."""
    step = worker.step + 1
    return step, abs(math.log10(worker.meta_params["lr"]) + 2) + 1.0 / step + noise


def _fire_kind(n: int) -> Callable[[int], str]:
    """Worker id -> which part of the benchmark's FirePBT of ``n`` workers it is in."""
    p1 = 3 * n // 8
    return lambda i: "P1" if i < p1 else "later" if i < 2 * p1 else "evaluators"


def _median_us(seconds: Sequence[float]) -> float | None:
    return round(statistics.median(seconds) * 1e6, 2) if seconds else None


def time_decisions(
    mutator,
    n: int,
    rounds: int,
    values: Sequence[float],
    *,
    curves: bool = False,
    kind_of: Callable[[int], str] | None = None,
    log_dir: str | None = None,
) -> dict[str, Any]:
    """One row: ``rounds`` timed rounds of ``n`` workers, each asking then reporting.

    ``curves``: each worker reports :func:`curve_value` (``values`` are its noise, and
    the first learning rates span 1e-4 to 1) instead of ``values`` at the round's step.
    ``kind_of``: worker id -> a group; the row's ``by_kind`` gives each group's deciding
    ``set_eval`` s (their count and median µs). ``log_dir``: a durable controller
    (``durability="process"``, no compaction in the timed rounds) journaling there."""
    if curves:
        lrs = [1e-4 * 10 ** (4 * i / max(n - 1, 1)) for i in range(n)]
    else:
        lrs = [1e-3 * (1 + i % 7) for i in range(n)]
    durable = {} if log_dir is None else {"log_dir": log_dir, "compact_after": 10**9}
    pop = PopulationController([{"lr": lr} for lr in lrs], mutator, seed=0, **durable)
    evals, keeps, copies, asks, v = [], [], [], [], 0
    per_decision = []  # each deciding set_eval's time over the decisions it made
    by_kind: dict[str, list[float]] = {}
    warm = pop.decision_counts  # (replaced by the counts after the untimed first round)
    for step in range(1, rounds + 2):
        if step == 2:
            warm = pop.decision_counts
        for i in range(n):
            work = pop.active_workers[i]
            at, value = step, values[v % len(values)]
            if curves:
                at, value = curve_value(work, value)
            before = pop.decision_counts
            t0 = time.perf_counter()
            pop.maybe_get_worker_data(i, work.generation_id, work.step, None, None)
            t1 = time.perf_counter()
            pop.set_eval(i, work.generation_id, at, None, value)
            t2 = time.perf_counter()
            v += 1
            if step > 1:
                asks.append(t1 - t0)
                evals.append(t2 - t1)
                after = pop.decision_counts
                if after.decisions > before.decisions:  # (keep: it decided, and kept going)
                    (copies if after.copies > before.copies else keeps).append(t2 - t1)
                    per_decision.append((t2 - t1) / (after.decisions - before.decisions))
                    if kind_of is not None:
                        by_kind.setdefault(kind_of(i), []).append(t2 - t1)
    counts = pop.decision_counts
    num_events = pop.state.num_events
    pop.close()
    journal = {}
    if log_dir is not None:  # (no compaction: every record since the start is there)
        names = [name for name in os.listdir(log_dir) if name.startswith("journal-")]
        size = sum(os.path.getsize(os.path.join(log_dir, name)) for name in names)
        journal = {"journal_bytes_per_event": round(size / num_events)}
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
        "us_per_decision": _median_us(per_decision),
        "decisions": counts.decisions - warm.decisions,  # (in the timed rounds)
        "copies": counts.copies - warm.copies,
        **journal,
        **(
            {}
            if kind_of is None
            else {
                "by_kind": {
                    kind: {"decided": len(times), "us_median": _median_us(times)}
                    for kind, times in sorted(by_kind.items())
                }
            }
        ),
    }


def run(
    rounds: int,
    values: Sequence[float],
    tmpdir: str | None = None,
    sizes: Sequence[int] = SIZES,
) -> list[dict]:
    """One row per mutator and population size, then FirePBT's on learning curves
    (``fire_curves``, timed by kind of decision): its noise is ``values`` scaled to a
    standard deviation of about 0.05 (uniform values: 0.17 times them, centred). The
    ``+log`` rows' log_dirs go in ``tmpdir`` (``None``: the system's temporary
    directory)."""
    rows = [
        {"mutator": name, **time_decisions(make(n), n, rounds, values)}
        for name, make in mutators().items()
        for n in sizes
    ]
    noise = [0.17 * (x - 0.5) for x in values]
    make_fire = mutators()["fire"]
    rows += [
        {
            "mutator": "fire_curves",
            **time_decisions(make_fire(n), n, rounds, noise, curves=True, kind_of=_fire_kind(n)),
        }
        for n in sizes
    ]
    for name in DURABLE:  # the same decisions, journaled
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="jaxpop-bench-dec-", dir=tmpdir) as log_dir:
                row = time_decisions(mutators()[name](n), n, rounds, values, log_dir=log_dir)
            rows.append({"mutator": f"{name}+log", **row})
    for n in sizes:  # FIRE's evaluations starting and ending, journaled
        with tempfile.TemporaryDirectory(prefix="jaxpop-bench-dec-", dir=tmpdir) as log_dir:
            row = time_decisions(
                make_fire(n), n, rounds, noise, curves=True, kind_of=_fire_kind(n), log_dir=log_dir
            )
        rows.append({"mutator": "fire_curves+log", **row})
    return rows


def print_table(rows: Sequence[dict]) -> None:
    print()
    print("decisions (interval 1; in memory, the +log rows with a log_dir): eval med / p99:")
    print("every set_eval's time (deciding or not), us;")
    print("keep / copy: the medians of the deciding set_evals that copied nothing / copied;")
    print("per dec.: median of (a deciding set_eval's time / the decisions it made);")
    print("eval/ask: median set_eval over median ask, in the same loop")
    header = f"{'mutator':<16}{'pop':>6}{'evals':>8}{'eval med':>10}{'eval p99':>10}"
    header += f"{'keep':>8}{'copy':>8}{'per dec.':>9}{'ask med':>9}{'eval/ask':>10}{'copies':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        keep, copy_, per = (
            _us(r[name]) for name in ("us_per_keep_median", "us_per_copy_median", "us_per_decision")
        )
        print(
            f"{r['mutator']:<16}{r['population']:>6}{r['evals']:>8}"
            f"{r['us_per_eval_median']:>10.1f}{r['us_per_eval_p99']:>10.1f}"
            f"{keep:>8}{copy_:>8}{per:>9}{r['us_per_ask_median']:>9.1f}"
            f"{r['eval_over_ask']:>9.1f}x{r['copies']:>8}"
        )
    kinds = [r for r in rows if "by_kind" in r]
    if kinds:
        print()
        print("fire_curves by kind: median us of the deciding set_evals (how many)")
        for r in kinds:
            parts = [
                f"{kind} {_us(k['us_median'])} ({k['decided']})" for kind, k in r["by_kind"].items()
            ]
            print(f"{r['mutator']:<16}{r['population']:>6} workers: " + ", ".join(parts))
    _print_journals(rows)


def _print_journals(rows: Sequence[dict]) -> None:
    journaled = [r for r in rows if "journal_bytes_per_event" in r]
    if journaled:
        print()
        print("+log rows: journal bytes per event applied")
        for r in journaled:
            print(f"  {r['mutator']:<20}{r['population']:>6}{r['journal_bytes_per_event']:>8}")


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
