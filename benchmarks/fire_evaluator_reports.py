"""FirePBT's evaluator reports as evaluations grow long: curves kept against rebuilt.

An evaluator's report judges its evaluation from two curves: the evaluation's and the
child's (the member it may hand its weights to). FirePBT keeps them with its view and
appends the points reported since; the ``afresh`` variant builds both from the history
at every report, as FirePBT did before (the same mutator, its ``_Curves.curve`` replaced
by a read of the history: the decisions are the same, only the time differs).

The run: an in-memory controller of ``--workers`` (default 8: sub-populations of 3 and
3 members, 2 evaluators), interval ``--interval`` steps (50), ``max_eval_steps`` so large
that only the paper's test ends an evaluation, every worker reporting the learning curve
of ``benchmarks/overhead/decisions.py`` (:func:`curve_value`, noise 0.02) once per round,
for ``--rounds`` rounds (2,000). Timed: each ``set_eval`` of an evaluator that is
evaluating, in ``--buckets`` (5) consecutive groups of rounds: the median per group.

Usage (from the repo root)::

    python benchmarks/fire_evaluator_reports.py [--workers 8] [--rounds 2000]
        [--interval 50] [--buckets 5]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import common
import numpy as np
from overhead.decisions import curve_value

from jaxpop import PopulationController
from jaxpop.mutators import FirePBT, explore, fire

VARIANTS = ("kept", "afresh")


def run(workers: int, rounds: int, interval: int, buckets: int, variant: str) -> dict:
    """One variant's run: per bucket of rounds, the number of evaluator reports timed and
    their median µs; with the run's evaluation and hand-over counts."""
    kept = fire._Curves.__dict__["curve"]  # (the staticmethod itself, to put back)
    if variant == "afresh":  # (what every report did before: both curves from the history)
        fire._Curves.curve = staticmethod(
            lambda step, generations, mode: fire._curve(step.history, generations, mode)
        )
    try:
        members = 3 * workers // 8
        mutator = FirePBT(
            perturbation_interval=interval,
            sub_population_sizes=(members, members),
            num_evaluators=workers - 2 * members,
            max_eval_steps=10**9,
            hyperparam_space={"lr": explore.log_uniform(1e-4, 1.0)},
        )
        rates = [1e-4 * 10 ** (4 * i / max(workers - 1, 1)) for i in range(workers)]
        pop = PopulationController([{"lr": lr} for lr in rates], mutator, seed=0)
        rng = np.random.default_rng(0)
        times: list[list[float]] = [[] for _ in range(buckets)]
        for r in range(rounds):
            for i in range(workers):
                work = pop.active_workers[i]
                step, value = curve_value(work, 0.02 * float(rng.normal()))
                judged = i >= 2 * members and i in pop.state.mutator_state.evaluations
                t0 = time.perf_counter()
                pop.set_eval(i, work.generation_id, step, None, value)
                seconds = time.perf_counter() - t0
                if judged:  # (an evaluator evaluating when it reports: its report is judged)
                    times[r * buckets // rounds].append(seconds)
        state = pop.state.mutator_state
    finally:
        fire._Curves.curve = kept
    return {
        "reports": [len(t) for t in times],
        "us_median": [round(statistics.median(t) * 1e6, 1) if t else None for t in times],
        "evaluations": state.num_evaluations,
        "handovers": state.num_handovers,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=common.positive_int, default=8)
    parser.add_argument("--rounds", type=common.positive_int, default=2000)
    parser.add_argument("--interval", type=common.positive_int, default=50)
    parser.add_argument("--buckets", type=common.positive_int, default=5)
    args = parser.parse_args(argv)
    if args.workers < 6:  # (3 * 6 // 8 = 2: the least a sub-population holds)
        parser.error("--workers must be at least 6 (two sub-populations of 2 and evaluators)")
    if args.rounds < args.buckets:
        parser.error(f"--rounds must be at least --buckets ({args.buckets})")
    rows = {v: run(args.workers, args.rounds, args.interval, args.buckets, v) for v in VARIANTS}
    last = [rows[v]["us_median"][-1] for v in VARIANTS]
    result = {
        "benchmark": "fire_evaluator_reports",
        **vars(args),
        "variants": rows,
        "afresh_over_kept_last_bucket": round(last[1] / last[0], 2) if all(last) else None,
        **common.environment(),
    }
    print(json.dumps(result, separators=(",", ":")))
    print()
    print(
        f"median us of an evaluating evaluator's set_eval, {args.workers} workers, interval "
        f"{args.interval}, per {args.rounds // args.buckets} rounds"
    )
    for variant in VARIANTS:
        row = rows[variant]
        cells = " ".join(f"{'-' if us is None else us:>8}" for us in row["us_median"])
        print(
            f"{variant:<8}{cells}   ({sum(row['reports'])} reports, {row['evaluations']} "
            f"evaluations, {row['handovers']} hand-overs)"
        )
    print(f"last bucket: afresh over kept {result['afresh_over_kept_last_bucket']}x")


if __name__ == "__main__":
    main()
