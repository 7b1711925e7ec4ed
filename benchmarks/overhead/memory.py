"""Section ``memory``: the in-memory controller against a plain-Python one, per call.

An in-memory ``PopulationController`` with 8 workers is driven round robin until its
history holds about N checkpoints (``--sizes``). Then ``--calls`` ask/report pairs are
timed at that size, best of ``--repeats``. Two workloads (``--variants``), both with
``WinnerTakeAllGenetic``:

* ``no_exploit``: ``steps_per_exploit=10**12``, so nobody ever exploits and the 8
  generations just grow (N/8 checkpoints each);
* ``exploit``: ``steps_per_exploit=50``, so every 50 evaluations per worker (every 400
  pairs) all workers are compared and start new generations (about N/50 of them).

The same protocol is timed, in the same run and interleaved with jaxpop, on
``baselines.DictController`` (a dict of dicts for the history, a list of assignments, a
lock, the same winner-take-all rule): timings on a shared machine are noisy, so compare
the jaxpop/baseline ratios.

Every repeat starts from the same state: jaxpop's state is persistent (immutable), so a
new controller given it is an O(1) snapshot (a controller itself cannot be copied); the
baseline is copied container by container, outside the timed region. So during each
repeat the history grows from N to N + calls. ``us/pair`` times the whole loop (the
driver's own bookkeeping included, the same for both); ``us/ask`` and ``us/eval`` come
from a second pass that times each call on its own.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from jaxpop import PopulationController
from overhead.baselines import DictController
from overhead.driver import (
    VARIANTS,
    WORKERS,
    controller_shape,
    drive,
    drive_timed,
    make_population,
    mutate_fn,
    new_cursors,
)


class Subject:
    """A controller being built up, with its workers' cursors and figures."""

    def __init__(self, name: str, controller, snapshot: Callable, shape: Callable):
        self.name = name
        self.controller = controller
        self.cursors = new_cursors()
        self._snapshot, self._shape = snapshot, shape
        self.build_seconds = 0.0  # time spent growing the history to the current size

    def snapshot(self):
        return self._snapshot(self.controller), copy.deepcopy(self.cursors)

    def shape(self) -> dict[str, int]:
        return self._shape(self.controller)


def make_subjects(steps_per_exploit: int) -> list[Subject]:
    """jaxpop's in-memory controller and the baseline, in that order."""
    population, mutator = make_population(steps_per_exploit)
    jaxpop_controller = PopulationController(population, mutator, seed=0)
    baseline = DictController(population, mutate_fn, steps_per_exploit)

    def fork(controller: PopulationController) -> PopulationController:
        # (a controller cannot be copied; its state is immutable, so a new controller
        # given it is independent of the first: O(1))
        twin = PopulationController(population, mutator, seed=0)
        twin._state = controller.state
        return twin

    return [
        Subject("jaxpop", jaxpop_controller, fork, controller_shape),
        Subject("baseline", baseline, DictController.clone, DictController.shape),
    ]


def time_at_size(subjects: list[Subject], start: int, calls: int, repeats: int, values):
    """Times ``calls`` pairs from the subjects' current state, ``repeats`` times each."""
    pair: dict[str, list[float]] = {s.name: [] for s in subjects}
    ask: dict[str, list[float]] = {s.name: [] for s in subjects}
    evals: dict[str, list[float]] = {s.name: [] for s in subjects}
    for r in range(repeats):
        order = subjects if r % 2 == 0 else subjects[::-1]  # interleave against drift
        for subject in order:
            controller, cursors = subject.snapshot()
            gc.collect()
            t0 = time.perf_counter()
            drive(controller, cursors, start, calls, values)
            pair[subject.name].append((time.perf_counter() - t0) / calls * 1e6)
        for subject in order:
            controller, cursors = subject.snapshot()
            gc.collect()
            _, in_ask, in_eval = drive_timed(controller, cursors, start, calls, values)
            ask[subject.name].append(in_ask / calls * 1e6)
            evals[subject.name].append(in_eval / calls * 1e6)
    out = {}
    for subject in subjects:
        name = subject.name
        best = min(pair[name])
        out[name] = {
            **subject.shape(),
            "us_per_pair": round(best, 3),
            "us_per_call": round(best / 2, 3),
            "us_per_pair_median": round(statistics.median(pair[name]), 3),
            "us_per_ask": round(min(ask[name]), 3),
            "us_per_eval": round(min(evals[name]), 3),
        }
    return out


def run_variant(name, sizes, calls, repeats, values) -> list[dict]:
    """One row per size: jaxpop's and the baseline's figures and their ratios."""
    steps_per_exploit = VARIANTS[name]
    subjects = make_subjects(steps_per_exploit)
    jaxpop_subject = subjects[0]
    done = 0  # pairs driven so far (the same sequence for every subject)
    rows = []
    for size in sizes:
        # Grow jaxpop's history to `size` checkpoints, then drive the baseline through
        # exactly the same pairs.
        t0 = time.perf_counter()
        first = done
        while jaxpop_subject.shape()["checkpoints"] < size:
            drive(jaxpop_subject.controller, jaxpop_subject.cursors, done, WORKERS, values)
            done += WORKERS
        jaxpop_subject.build_seconds = time.perf_counter() - t0
        for subject in subjects[1:]:
            t0 = time.perf_counter()
            drive(subject.controller, subject.cursors, first, done - first, values)
            subject.build_seconds = time.perf_counter() - t0
        timings = time_at_size(subjects, done, calls, repeats, values)
        jp, base = timings["jaxpop"], timings["baseline"]
        rows.append(
            {
                "variant": name,
                "steps_per_exploit": steps_per_exploit,
                "target_size": size,
                "pairs_driven": done,
                "jaxpop": jp,
                "baseline": base,
                "ratio_pair": round(jp["us_per_pair"] / base["us_per_pair"], 2),
                "ratio_ask": round(jp["us_per_ask"] / base["us_per_ask"], 2),
                "ratio_eval": round(jp["us_per_eval"] / base["us_per_eval"], 2),
                # us per pair while growing the history from the previous size to this one
                "build_us_per_pair": {
                    s.name: round(s.build_seconds / max(done - first, 1) * 1e6, 3) for s in subjects
                },
            }
        )
    return rows


def run(variants: Sequence[str], sizes, calls, repeats, values) -> list[dict]:
    rows = []
    for name in variants:
        rows.extend(run_variant(name, sizes, calls, repeats, values))
        gc.collect()
    return rows


def print_table(result: dict[str, Any]) -> None:
    header = (
        f"{'workload':<11}{'size':>8}  {'impl':<9}{'gens':>7}{'ckpts':>9}"
        f"{'us/pair':>10}{'us/call':>9}{'median':>9}{'us/ask':>9}{'us/eval':>9}"
        f"{'build':>8}"
    )
    print()
    print(
        f"controller overhead: {WORKERS} workers, {result['calls']} pairs per timing, "
        f"best of {result['repeats']}; 'size' = checkpoints at the start of a timing"
    )
    print(header)
    print("-" * len(header))
    for row in result["results"]:
        for impl in ("jaxpop", "baseline"):
            fig = row[impl]
            print(
                f"{row['variant']:<11}{row['target_size']:>8}  {impl:<9}{fig['generations']:>7}"
                f"{fig['checkpoints']:>9}{fig['us_per_pair']:>10.2f}{fig['us_per_call']:>9.2f}"
                f"{fig['us_per_pair_median']:>9.2f}{fig['us_per_ask']:>9.2f}"
                f"{fig['us_per_eval']:>9.2f}{row['build_us_per_pair'][impl]:>8.2f}"
            )
        print(
            f"{'':<19}  {'ratio':<9}{'':>16}{row['ratio_pair']:>9.1f}x{'':>18}"
            f"{row['ratio_ask']:>8.1f}x{row['ratio_eval']:>8.1f}x"
        )
    print()
    print(
        "us/pair: one maybe_get_worker_data + one set_eval (best repeat); us/call = "
        "us/pair / 2;\nmedian: median repeat's us/pair; us/ask, us/eval: each call timed "
        "alone; build: us/pair while\ngrowing the history from the previous size to this one; "
        "ratio: jaxpop / baseline."
    )
