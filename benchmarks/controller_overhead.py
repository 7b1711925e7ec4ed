"""Controller overhead: microseconds per ``maybe_get_worker_data`` and ``set_eval`` call.

An in-memory ``PopulationController`` with 8 workers is driven round robin -- a worker
asks for its data (``maybe_get_worker_data``), "trains" one step and reports an
evaluation (``set_eval``) -- until its history holds about N checkpoints. Then
``--calls`` such ask/report pairs are timed at that size, best of ``--repeats``. Two
workloads, both with ``WinnerTakeAllGenetic``:

* ``no_exploit``: ``steps_per_exploit=10**12``, so nobody ever exploits and the 8
  generations just grow (N/8 checkpoints each);
* ``exploit``: ``steps_per_exploit=50``, so every 50 evaluations per worker (every 400
  pairs) all workers are compared and start new generations (about N/50 of them).

The same protocol is timed, in the same run and interleaved with jaxpop, on a minimal
mutable controller in plain Python (a dict of dicts for the history, a list of
assignments, a lock, the same winner-take-all rule): timings on a shared machine are
noisy, so compare the jaxpop/baseline ratios.

Every repeat starts from the same state: jaxpop's state is persistent (immutable), so
``copy.copy(controller)`` is an O(1) snapshot; the baseline is copied container by
container, outside the timed region. So during each repeat the history grows from N to
N + calls. ``us/pair`` times the whole loop (the driver's own bookkeeping included, the
same for both); ``us/ask`` and ``us/eval`` come from a second pass that times each call
on its own.

Usage (from the repo root)::

    python benchmarks/controller_overhead.py [--sizes 1000,10000,100000] [--calls 2000]
        [--repeats 5]

Prints one JSON line with every figure, then a table.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

import jaxpop
from jaxpop import population as pop_mod
from jaxpop.mutators import winner_take_all_genetic

WORKERS = 8
PARAMS = "ckpt/handle"  # what workers pass as params: a handle, the same object every time
VARIANTS = {"no_exploit": 10**12, "exploit": 50}  # name -> steps_per_exploit


def mutate_fn(meta_params: dict) -> dict:
    """The seed's form (no key), deterministic: both controllers make the same choices."""
    return {"lr": meta_params["lr"] * 1.1}


# -- the baseline: a minimal mutable controller in plain Python ----------------------------
class _Checkpoint(NamedTuple):
    params: Any
    meta_params: Any
    generation_id: str
    value: float | None
    parent: tuple[str, int] | None
    step: int
    time: float


class _Worker(NamedTuple):
    params: Any
    meta_params: Any
    generation_id: str
    step: int


class DictController:
    """The seed's controller, minimally: a dict of dicts, a list, a lock, in place.

    Same protocol and same winner-take-all rule (score: the mean of the values of the
    worker's current generation; winner keeps its hyperparameters, the others get
    ``mutate_fn`` of them; all start new generations from the winner's latest evaluated
    checkpoint). No randomness, no validation, no warnings, no snapshots.
    """

    def __init__(
        self,
        initial_population: Sequence[Any],
        mutate_fn: Callable[[Any], Any],
        steps_per_exploit: int,
    ):
        self._lock = threading.Lock()
        self._mutate_fn = mutate_fn
        self._steps_per_exploit = steps_per_exploit
        self._num_ids = 0
        self.history: dict[str, dict[int, _Checkpoint]] = {}
        self.workers: list[_Worker] = []
        self.num_checkpoints = 0
        self.num_exploits = 0
        now = time.time()
        for meta_params in initial_population:
            gen = self._new_id()
            self.history[gen] = {0: _Checkpoint(None, meta_params, gen, None, None, 0, now)}
            self.workers.append(_Worker(None, meta_params, gen, 0))
            self.num_checkpoints += 1

    def clone(self) -> DictController:
        """An independent copy (the checkpoints themselves are immutable and shared)."""
        new = copy.copy(self)
        new._lock = threading.Lock()
        new.history = {gen: dict(steps) for gen, steps in self.history.items()}
        new.workers = list(self.workers)
        return new

    def _new_id(self) -> str:
        self._num_ids += 1
        return f"{self._num_ids:016x}"

    def maybe_get_worker_data(self, worker_id, generation_id, step, params, meta_params):
        with self._lock:
            worker = self.workers[worker_id]
            if not generation_id:
                return worker
            if generation_id == worker.generation_id:
                return None
            steps = self.history.get(generation_id)
            if steps is not None and step not in steps:  # keep the worker's last params
                last = steps[next(reversed(steps))]
                steps[step] = _Checkpoint(
                    params,
                    last.meta_params,
                    generation_id,
                    None,
                    (generation_id, last.step),
                    step,
                    time.time(),
                )
                self.num_checkpoints += 1
            return worker

    def set_eval(self, worker_id, generation_id, step, params, value):
        value = float(value)
        with self._lock:
            steps = self.history.get(generation_id)
            if steps is None:
                return
            old = steps.get(step)
            if old is None:
                last = steps[next(reversed(steps))]
                steps[step] = _Checkpoint(
                    params,
                    last.meta_params,
                    generation_id,
                    value,
                    (generation_id, last.step),
                    step,
                    time.time(),
                )
                self.num_checkpoints += 1
            else:
                steps[step] = old._replace(params=params, value=value, time=time.time())
            self._update()

    @staticmethod
    def _latest_evaluated(steps: dict[int, _Checkpoint]) -> _Checkpoint | None:
        for step in reversed(steps):
            if steps[step].value is not None:
                return steps[step]
        return None

    def _update(self) -> None:
        latest = []
        for worker in self.workers:
            steps = self.history[worker.generation_id]
            checkpoint = self._latest_evaluated(steps)
            if checkpoint is None or checkpoint.step < next(iter(steps)) + self._steps_per_exploit:
                return
            latest.append(checkpoint)
        scores = []
        for worker in self.workers:
            values = [c.value for c in self.history[worker.generation_id].values()]
            mean = math.fsum(v for v in values if v is not None) / sum(
                v is not None for v in values
            )
            scores.append(mean if math.isfinite(mean) else math.inf)
        best = int(np.argmin(scores))
        winner, now = latest[best], time.time()
        for i in range(len(self.workers)):
            meta_params = winner.meta_params
            if i != best:
                meta_params = self._mutate_fn(meta_params)
            gen = self._new_id()
            start = _Checkpoint(
                winner.params,
                meta_params,
                gen,
                None,
                (winner.generation_id, winner.step),
                winner.step,
                now,
            )
            self.history[gen] = {winner.step: start}
            self.workers[i] = _Worker(winner.params, meta_params, gen, winner.step)
        self.num_checkpoints += len(self.workers)
        self.num_exploits += 1


# -- the driver: the seed's worker loop, round robin over the workers ---------------------
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


def drive_split(
    controller, cursors, start: int, num_pairs: int, values: Sequence[float]
) -> tuple[float, float]:
    """Like :func:`drive`, timing each call; returns (seconds in asks, seconds in evals)."""
    ask, report, n = controller.maybe_get_worker_data, controller.set_eval, len(values)
    clock = time.perf_counter
    in_ask = in_eval = 0.0
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
        in_eval += clock() - t2
        in_ask += t1 - t0
    return in_ask, in_eval


# -- one implementation under test ---------------------------------------------------------
class Subject:
    """A controller being built up, with its workers' cursors and figures."""

    def __init__(self, name: str, controller, snapshot, size, generations, exploits):
        self.name = name
        self.controller = controller
        self.cursors = new_cursors()
        self._snapshot, self._size, self._generations = snapshot, size, generations
        self._exploits = exploits
        self.build_seconds = 0.0  # time spent growing the history to the current size

    def snapshot(self):
        return self._snapshot(self.controller), copy.deepcopy(self.cursors)

    def shape(self) -> dict[str, int]:
        return {
            "checkpoints": self._size(self.controller),
            "generations": self._generations(self.controller),
            "exploit_rounds": self._exploits(self.controller),
        }


def make_subjects(steps_per_exploit: int) -> list[Subject]:
    population = [{"lr": 1e-3 * (i + 1)} for i in range(WORKERS)]
    mutator = winner_take_all_genetic.WinnerTakeAllGenetic(
        mutate_fn, steps_per_exploit=steps_per_exploit
    )
    jaxpop_controller = pop_mod.PopulationController(population, mutator, seed=0)
    baseline = DictController(population, mutate_fn, steps_per_exploit)
    return [
        Subject(
            "jaxpop",
            jaxpop_controller,
            copy.copy,  # O(1): the controller's state is immutable, so the copy is independent
            lambda c: c.history.num_checkpoints,
            lambda c: len(c.history),
            lambda c: c.state.mutator_state["num_exploits"],
        ),
        Subject(
            "baseline",
            baseline,
            DictController.clone,
            lambda c: c.num_checkpoints,
            lambda c: len(c.history),
            lambda c: c.num_exploits,
        ),
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
            in_ask, in_eval = drive_split(controller, cursors, start, calls, values)
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


def run_variant(name, steps_per_exploit, sizes, calls, repeats, values) -> list[dict]:
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="history sizes in checkpoints, comma separated (default: %(default)s)",
    )
    parser.add_argument(
        "--calls", type=int, default=2000, help="ask/report pairs per timing (default: 2000)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timings per size; the best counts (default: 5)"
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="workloads to run, comma separated (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes must be comma separated ints, got {args.sizes!r}")
    if not args.sizes or args.sizes[0] <= 0:
        parser.error("--sizes must be positive")
    if args.calls <= 0 or args.repeats <= 0:
        parser.error("--calls and --repeats must be positive")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}, got {unknown}")
    return args


def print_table(result: dict) -> None:
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


def warm_up(values: Sequence[float]) -> None:
    """Compiles what jaxpop compiles once per process (its event-key blocks)."""
    for subject in make_subjects(VARIANTS["exploit"]):
        drive(subject.controller, subject.cursors, 0, 1000, values)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    values = [float(v) for v in np.random.default_rng(0).random(4096)]
    warm_up(values)
    results = []
    for name in args.variants:
        results.extend(
            run_variant(name, VARIANTS[name], args.sizes, args.calls, args.repeats, values)
        )
        gc.collect()
    result = {
        "benchmark": "controller_overhead",
        "workers": WORKERS,
        "calls": args.calls,
        "repeats": args.repeats,
        "sizes": args.sizes,
        "results": results,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxpop": jaxpop.__version__,
        "machine": f"{platform.machine()}, {platform.system()}",
    }
    print(json.dumps(result, separators=(",", ":")))
    print_table(result)
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
