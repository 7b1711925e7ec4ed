"""PB2's read of recent reward changes as the run's generations grow.

A PB2 explore reads the ``window`` most recent reward changes from the history
(:func:`jaxpop.mutators.pb2.reward_changes`): it visits generations by their latest
step, newest first, and stops once no older one can enter the window. Finding that
order needs every generation's latest step; a history keeps it once asked
(:meth:`jaxpop.history.History.by_latest_step`), and the histories ``add`` makes from it
keep it up to date, each add moving one entry.

The history: ``--lineages`` workers (default 64) under asynchronous copies, each
generation evaluated 4 times, 5 steps apart, then copied by a new generation that starts
from a recent one's latest checkpoint (``--generations`` of them in all: 1,000, 10,000
and 50,000 by default; a 64-worker PBT run that copies a quarter of its decisions at an
interval of 5 steps makes ~10,000 generations in ~40,000 evaluations). At each size:

* ``afresh_ms``: ``reward_changes(window=128, min_interval=5)`` on the same checkpoints
  in a history that has not been asked before (it sorts every generation by its latest
  step; what every call cost before the order was kept);
* ``kept_ms``: the same call on a history one add past the last one asked, as at each
  decision of a run;
* ``add_us`` / ``add_kept_us``: one ``History.add`` (an evaluation at a new step) to a
  history without, and with, the order kept.

Each figure is the median of ``--repeats`` calls. Run on a shared machine, compare the
columns within a run.

Usage (from the repo root)::

    python benchmarks/reward_changes_scaling.py [--generations 1000,10000,50000]
        [--lineages 64] [--repeats 20]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import common
import numpy as np

from jaxpop.history import History
from jaxpop.mutators.pb2 import reward_changes
from jaxpop.records import Checkpoint

EVALS, INTERVAL, WINDOW = 4, 5, 128


def synthetic(generations: int, lineages: int, seed: int = 0) -> History:
    """``generations`` generations: the first ``lineages`` from scratch, each later one
    copied from the latest checkpoint of one of the ``lineages`` made before it; each
    evaluated ``EVALS`` times, ``INTERVAL`` steps apart."""
    rng = np.random.default_rng(seed)
    history, made = History(), []
    for g in range(generations):
        generation_id, meta = f"g{g}", {"lr": float(rng.uniform(1e-4, 1e-1))}
        parent, step = None, 0
        if g >= lineages:
            source = made[int(rng.integers(len(made) - lineages, len(made)))]
            parent, step = source, source[1]
        checkpoints = [Checkpoint(None, meta, generation_id, None, parent, step, 0.0)]
        for k in range(1, EVALS + 1):
            below = (generation_id, step + (k - 1) * INTERVAL)
            value = float(rng.uniform())
            checkpoints.append(
                Checkpoint(None, meta, generation_id, value, below, step + k * INTERVAL, 0.0)
            )
        history = history.add_all(checkpoints)
        made.append((generation_id, step + EVALS * INTERVAL))
    return history


def _median_us(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def measure(generations: int, lineages: int, repeats: int) -> dict:
    history = synthetic(generations, lineages)
    newest = [g for _, _, g in list(history.by_latest_step())[:lineages]]
    evals = [  # an evaluation at a new step for one of the newest generations, per repeat
        history.continuation(g, history.latest(g).step + INTERVAL, None, 0.5, 0.0)
        for g in (newest[i % len(newest)] for i in range(repeats))
    ]

    def afresh(i: int) -> None:  # (with_mode makes a history that was never asked)
        reward_changes(fresh[i], window=WINDOW, min_interval=INTERVAL)

    fresh = [history.with_mode("max").with_mode("min") for _ in range(repeats)]
    afresh_us = _median_us(afresh, repeats)
    kept = [history.add(c) for c in evals]  # (each made by an add from an asked one)
    kept_us = _median_us(
        lambda i: reward_changes(kept[i], window=WINDOW, min_interval=INTERVAL), repeats
    )
    unasked = history.with_mode("max").with_mode("min")
    add_us = _median_us(lambda i: unasked.add(evals[i]), repeats)
    add_kept_us = _median_us(lambda i: history.add(evals[i]), repeats)
    return {
        "generations": generations,
        "checkpoints": history.num_checkpoints,
        "afresh_ms": round(afresh_us / 1e3, 3),
        "kept_ms": round(kept_us / 1e3, 3),
        "afresh_over_kept": round(afresh_us / kept_us, 1),
        "add_us": round(add_us, 2),
        "add_kept_us": round(add_kept_us, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generations", default="1000,10000,50000")
    parser.add_argument("--lineages", type=common.positive_int, default=64)
    parser.add_argument("--repeats", type=common.positive_int, default=20)
    args = parser.parse_args(argv)
    sizes = common.int_list(parser, "--generations", args.generations)
    if sizes[0] <= args.lineages:
        parser.error(f"--generations must be more than --lineages ({args.lineages})")
    rows = [measure(g, args.lineages, args.repeats) for g in sizes]
    result = {
        "benchmark": "reward_changes_scaling",
        "lineages": args.lineages,
        "repeats": args.repeats,
        "window": WINDOW,
        "rows": rows,
        **common.environment(),
    }
    print(json.dumps(result, separators=(",", ":")))
    print()
    print(f"reward_changes(window={WINDOW}, min_interval={INTERVAL}), median of {args.repeats}")
    header = f"{'generations':>12}{'checkpoints':>13}{'afresh ms':>11}{'kept ms':>9}"
    header += f"{'ratio':>8}{'add us':>9}{'add kept us':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['generations']:>12}{r['checkpoints']:>13}{r['afresh_ms']:>11.2f}"
            f"{r['kept_ms']:>9.3f}{r['afresh_over_kept']:>7.1f}x{r['add_us']:>9.2f}"
            f"{r['add_kept_us']:>13.2f}"
        )


if __name__ == "__main__":
    main()
