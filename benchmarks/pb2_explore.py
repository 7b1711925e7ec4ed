"""PB2's explore latency: one GP fit and UCB search, next to PBT's explore.

What is timed: one call of :class:`jaxpop.mutators.pb2.PB2Explorer` (what a copying
worker's decision adds under ``PB2``): read the reward changes from the history (the
``window`` most recent, 128 by default), fit the time-varying GP (marginal likelihood
over the 24-point grid), and maximise the UCB over 256 random and 64 local candidates,
with every worker's hyperparameters as pending points. Against it, in the same run:
:func:`jaxpop.mutators.explore.explore` on the same hyperparameters (PBT's explore).

The history: a population (``--population``, default 16) trains the toy problem of
``benchmarks/pbt_toy.py`` (its best learning rate moves during training) under
asynchronous PBT (interval 5 steps, one evaluation per step, workers in a random order
each round) in a mixed space -- ``lr`` in ``uniform(1e-4, 0.02)`` (the one the toy
uses), ``wd`` in ``log_uniform(1e-6, 1e-2)`` and ``opt`` in ``choice`` of three -- until
the history holds ``--observations`` reward changes (intervals of at least 5 steps; by
default 500, then 2,000, then 8,000). PBT rather than PB2 builds it, so that the first
PB2 call of the run is the one that compiles. At each size, for the best worker's
latest checkpoint as the copied one:

* ``first_ms``: the first explorer call of the process at these shapes (tracing and XLA
  compilation included; a ``PB2`` mutator does this in the controller's start-up,
  ``Mutator.prepare``, not at the first copy). Only the first size has one;
* ``pb2``: ``--repeats`` calls, each with a new key: min, median and 90th percentile;
* ``data``: the part of it that reads the reward changes from the history (the rest is
  the jitted fit and search and the decoding);
* ``pbt``: PBT's explore, the same statistics.

Run on a shared machine, medians move with the load: compare the columns within a run.

Usage (from the repo root)::

    python benchmarks/pb2_explore.py [--population 16] [--observations 500,2000,8000]
                                     [--repeats 50]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import common
import jax
import numpy as np
from pbt_toy import train_iteration

from jaxpop import PopulationController
from jaxpop.mutators import explore
from jaxpop.mutators.pb2 import PB2Explorer, reward_changes
from jaxpop.mutators.pbt import PopulationBasedTraining

INTERVAL = 5
SPACE = {
    "lr": explore.uniform(1e-4, 0.02),
    "wd": explore.log_uniform(1e-6, 1e-2),
    "opt": explore.choice(["adam", "sgd", "momentum"]),
}


def grow(pop: PopulationController, workers: dict, rng: np.random.Generator, target: int) -> int:
    """Trains rounds of the toy problem until the history holds ``target`` reward
    changes; returns how many it holds."""
    n = pop.state.population_size
    while True:
        for _ in range(25):
            for i in rng.permutation(n):
                gen, step, score, meta = workers.get(i, (None, None, None, None))
                data = pop.maybe_get_worker_data(i, gen, step, score, meta)
                if data is not None:
                    gen, step, meta = data.generation_id, data.step, data.meta_params
                    score = 0.0 if data.params is None else data.params
                score = train_iteration(score, meta["lr"], rng)
                step += 1
                pop.set_eval(int(i), gen, step, score, score)
                workers[i] = (gen, step, score, meta)
        count = len(reward_changes(pop.history, min_interval=INTERVAL))
        if count >= target:
            return count


def timings(fn: Callable[[int], Any], repeats: int) -> dict[str, float]:
    """Milliseconds of ``fn(k)`` for ``k`` in ``range(repeats)``: min, median, p90."""
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        fn(k)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "min": times[0],
        "median": statistics.median(times),
        "p90": times[int(0.9 * (len(times) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--population", type=common.positive_int, default=16)
    parser.add_argument(
        "--observations",
        default="500,2000,8000",
        help="reward changes in the history at each stage, comma separated (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=common.positive_int, default=50)
    args = parser.parse_args()
    sizes = common.int_list(parser, "--observations", args.observations)  # (grown in order)

    rng = np.random.default_rng(0)
    keys = jax.random.split(jax.random.key(0), args.population)
    initial = [explore.sample(jax.random.key_data(k), SPACE) for k in keys]
    mutator = PopulationBasedTraining(
        perturbation_interval=INTERVAL, hyperparam_space=SPACE, mode="max"
    )
    pop = PopulationController(initial, mutator, seed=0)
    explorer = PB2Explorer(SPACE, min_interval=INTERVAL)
    workers: dict = {}
    stages = []
    for target in sizes:
        count = grow(pop, workers, rng, target)
        history, active = pop.history, pop.active_workers
        best = max(range(args.population), key=lambda i: workers[i][2])
        source = history.latest_loadable(active[best].generation_id)

        def pb2(k: int, history=history, source=source, active=active) -> Any:
            return explorer(np.array([1, k], np.uint32), source, history, active)

        def data(k: int, history=history) -> Any:
            return reward_changes(history, window=explorer.window, min_interval=INTERVAL)

        def pbt(k: int, source=source) -> Any:
            return explore.explore(np.array([2, k], np.uint32), SPACE, source.meta_params)

        stage: dict[str, Any] = {
            "observations": count,
            "generations": len(history),
            "checkpoints": history.num_checkpoints,
        }
        if not stages:
            start = time.perf_counter()
            pb2(10**6)
            stage["first_ms"] = (time.perf_counter() - start) * 1e3
            pbt(10**6)
        stage["pb2"] = timings(pb2, args.repeats)
        stage["data"] = timings(data, args.repeats)
        stage["pbt"] = timings(pbt, args.repeats)
        # (the ratio the README promises: PB2's explore against PBT's, same run)
        pbt_median = stage["pbt"]["median"]
        stage["pb2_x_pbt"] = round(stage["pb2"]["median"] / pbt_median, 1) if pbt_median else None
        stages.append(stage)

    print(
        json.dumps(
            {
                "benchmark": "pb2_explore",
                "population": args.population,
                "window": explorer.window,
                "space": sorted(SPACE),
                "repeats": args.repeats,
                "stages": stages,
                **common.environment(),
            }
        )
    )
    print()
    print(f"population {args.population}, window {explorer.window}, ms per explore call")
    head = f"{'changes':>8} {'ckpts':>7} {'first':>8}"
    head += "".join(
        f" {name + ' ' + s:>13}" for name in ("pb2", "data", "pbt") for s in ("min", "med")
    )
    head += f" {'pb2 p90':>8} {'pb2/pbt':>8}"
    print(head)
    for s in stages:
        first = f"{s['first_ms']:8.0f}" if "first_ms" in s else f"{'':>8}"
        row = f"{s['observations']:8d} {s['checkpoints']:7d} {first}"
        for name in ("pb2", "data", "pbt"):
            row += f" {s[name]['min']:13.2f} {s[name]['median']:13.2f}"
        ratio = "-" if s["pb2_x_pbt"] is None else f"{s['pb2_x_pbt']:.1f}"
        row += f" {s['pb2']['p90']:8.2f} {ratio:>8}"
        print(row)


if __name__ == "__main__":
    main()
