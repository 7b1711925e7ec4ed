"""The longest controller call as the history grows: Python's full garbage collections.

A full collection walks every object the collector tracks, about two per checkpoint of
the history, so the call it lands on waits in proportion to the run's length (the
average per call stays flat: such collections grow rarer as the heap grows). A program
can take what it has built so far out of the collector's reach with ``gc.freeze()``.

Each variant runs in a fresh process (the collector's state is process-wide): an
in-memory ``PopulationController`` of ``--workers`` workers (``PopulationBasedTraining``,
interval 50 steps, one hyperparameter) driven through the seed's worker loop (ask, then
``set_eval`` with a string handle) for ``--evals`` evaluations:

* ``collector``: Python's defaults;
* ``freeze``: ``gc.freeze()`` after every ``--freeze-every`` evaluations.

Per variant: the longest ask + eval pair in each ``--bucket`` evaluations, the total wall
time, and the time spent in ``gc.freeze()``; then the ratio of the variants' longest
calls past the first bucket (where ``freeze`` has frozen something).

Usage (from the repo root)::

    python benchmarks/gc_stalls.py [--evals 250000] [--workers 64] [--freeze-every 10000]
        [--bucket 50000]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time

import common

VARIANTS = ("collector", "freeze")


def run_variant(evals: int, workers: int, freeze_every: int, bucket: int) -> dict:
    """One variant, in this process (``freeze_every=0``: the collector's defaults)."""
    import numpy as np

    from jaxpop import PopulationController
    from jaxpop.mutators import PopulationBasedTraining, explore

    mutator = PopulationBasedTraining(
        perturbation_interval=50, hyperparam_space={"h": explore.uniform(-10.0, 10.0)}
    )
    rng = np.random.default_rng(0)
    initial = [{"h": float(rng.uniform(-5, 5))} for _ in range(workers)]
    pop = PopulationController(initial, mutator, seed=0)
    gens, steps, metas = [None] * workers, [0] * workers, [None] * workers
    params: list = [None] * workers
    longest: list[float] = []
    frozen = 0.0
    started = time.perf_counter()
    for done in range(evals):
        w = done % workers
        t0 = time.perf_counter()
        new = pop.maybe_get_worker_data(w, gens[w], steps[w], params[w], metas[w])
        if new is not None:
            gens[w], metas[w], steps[w], params[w] = (
                new.generation_id,
                new.meta_params,
                new.step,
                new.params,
            )
        steps[w] += 10
        params[w] = f"w{w}-s{steps[w]}"
        value = (metas[w]["h"] - 1) ** 2 + 0.01 * float(rng.normal())
        pop.set_eval(w, gens[w], steps[w], params[w], value)
        seconds = time.perf_counter() - t0
        if done % bucket == 0:
            longest.append(0.0)
        longest[-1] = max(longest[-1], seconds)
        if freeze_every and (done + 1) % freeze_every == 0:
            t1 = time.perf_counter()
            gc.freeze()
            frozen += time.perf_counter() - t1
    return {
        "longest_ms": [round(1e3 * s, 2) for s in longest],
        "seconds": round(time.perf_counter() - started, 2),
        "freeze_ms": round(1e3 * frozen, 2),
        "checkpoints": pop.history.num_checkpoints,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--evals", type=common.positive_int, default=250_000)
    parser.add_argument("--workers", type=common.positive_int, default=64)
    parser.add_argument("--freeze-every", type=common.positive_int, default=10_000)
    parser.add_argument("--bucket", type=common.positive_int, default=50_000)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.evals <= args.bucket:  # (the figure is past the first bucket)
        parser.error(f"--evals must be more than --bucket ({args.bucket}), got {args.evals}")
    if args.child:  # one variant, its figures as a JSON line
        every = args.freeze_every if args.child == "freeze" else 0
        print(json.dumps(run_variant(args.evals, args.workers, every, args.bucket)))
        return
    flags = [f"--evals={args.evals}", f"--workers={args.workers}"]
    flags += [f"--freeze-every={args.freeze_every}", f"--bucket={args.bucket}"]
    rows = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, *flags, f"--child={variant}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows[variant] = json.loads(out.strip().splitlines()[-1])
    later = {v: max(rows[v]["longest_ms"][1:] or [0.0]) for v in VARIANTS}
    ratio = round(later["collector"] / later["freeze"], 1) if later["freeze"] else None
    result = {
        "benchmark": "gc_stalls",
        **{k: v for k, v in vars(args).items() if k != "child"},
        "variants": rows,
        "longest_after_first_bucket_ms": later,
        "collector_over_freeze": ratio,
        **common.environment(),
    }
    print(json.dumps(result, separators=(",", ":")))
    print()
    print(
        f"longest ask + eval (ms) per {args.bucket:,} evaluations, {args.workers} workers, "
        f"PBT, in memory; freeze: gc.freeze() every {args.freeze_every:,} evaluations"
    )
    for variant in VARIANTS:
        row = rows[variant]
        cells = " ".join(f"{ms:8.1f}" for ms in row["longest_ms"])
        print(
            f"{variant:<10} {cells}   total {row['seconds']:.1f} s, freeze "
            f"{row['freeze_ms']:.1f} ms, peak RSS {row['peak_rss_mib']:.0f} MiB"
        )
    print(f"longest past the first bucket: collector over freeze {ratio}x")


if __name__ == "__main__":
    main()
