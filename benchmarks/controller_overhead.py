"""Controller overhead: microseconds per ``maybe_get_worker_data`` and ``set_eval`` call.

Four sections, chosen with ``--modes`` (default: all four): ``memory`` (the in-memory
controller against a plain-Python one), ``process`` and ``fsync`` (the durable
controller, ``PopulationController(..., log_dir=..., durability=mode)``, and its
start-up time) and ``seed`` (the seed's storage design, for comparison).

**memory.** An in-memory ``PopulationController`` with 8 workers is driven round robin
-- a worker asks for its data (``maybe_get_worker_data``), "trains" one step and reports
an evaluation (``set_eval``) -- until its history holds about N checkpoints. Then
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

**process, fsync.** The same workloads and driver, with a ``log_dir`` (under
``--tmpdir``). ``copy.copy`` cannot snapshot a controller with a ``log_dir`` (the copy
would share its files), so the history is built in one base ``log_dir`` in ``"process"``
mode (with the default compaction policy: its ``build`` figures are a sustained run,
background snapshots included), the controller is closed at each size N and the closed
``log_dir`` is the snapshot: every repeat (``--durable-repeats``) copies it
(``shutil.copytree``, untimed), then

1. times the construction of a controller on the copy with ``durability=mode``: the
   start-up (restore) time (files in the page cache);
2. times ``--calls`` pairs (``--fsync-calls`` in ``"fsync"`` mode: one disk flush per
   state-changing call) continuing from N, so the history grows N -> N + calls, each
   call timed on its own; compaction is off (``compact_after=2**62``), so this is the
   cost of the journal alone (``journal``), the same work in every repeat;
3. starts one compaction (a snapshot of the whole state, O(N), written by a background
   thread) and keeps driving pairs until it is written: ``cmp_s`` is what it added to
   the callers' time (elapsed minus those pairs at the ``journal`` rate), contention
   for the GIL included. This step reaches into the controller's private ``Store``
   (``_compact``, ``_snapshot_thread``) to start the compaction at a known moment.

The policy compacts once every ``max(compact_after, N)`` journal records, so its share
per pair is ``compact`` = ``cmp_s`` / ``max(compact_after, N)`` * (journal records per
pair), and ``us/pair`` = ``journal`` + ``compact`` is the sustained cost per pair.
Figures are the best repeat; ``max``/``p99`` are single-call latencies (``cmp_max_ms``:
the slowest call while a compaction ran). The ``build`` table is a check: us/pair
while the base ``log_dir`` grew, compactions as they came, and ``snapshot_s``, one
snapshot of that state written in the foreground with nothing else running (with the
private ``storage.store._write_snapshot``, what the background thread runs).

**seed.** The seed (``learned_optimization.population``) kept its state in a dict of
dicts and, on every event, pickled the whole state and rewrote it to a file (write a
temporary file, rename it over ``population.state``; no fsync). ``SeedPickleController``
does that on top of the plain-Python controller above (``rewrite``: one pickle and one
file per state-changing call); ``exact`` also pickles the state twice on every ask, as
the seed did to detect whether its mutator's ``get_worker_data`` hook changed anything.
Workload ``exploit``; sizes ``--seed-sizes`` (800 and 3,200 are the sizes the issue
quotes for the seed: 0.6 ms/call and 3.7 ms/call); the history is built without saving
(the state is the same) and each timing is ``--seed-calls`` pairs or fewer, so that one
timing takes about a second (each pair costs O(N)), best of ``--durable-repeats``;
``exact`` is skipped where a pair would cost more than 0.1 s. Start-up: reading and
unpickling the file. jaxpop's durable figures at the same sizes come from the durable
section (which, for ``exploit``, also runs at the seed sizes when ``seed`` is among the
modes).

Usage (from the repo root)::

    python benchmarks/controller_overhead.py [--modes memory,process,fsync,seed]
        [--sizes 1000,10000,100000] [--calls 2000] [--repeats 5] [--fsync-calls 200]
        [--durable-repeats 3] [--seed-sizes 800,3200,10000,100000] [--seed-calls 200]
        [--tmpdir DIR]

Prints one JSON line with every figure, then one table per section.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import math
import os
import pickle  # only in SeedPickleController: the seed's design, the baseline for storage
import re
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import common
import numpy as np

from jaxpop import population as pop_mod
from jaxpop import storage
from jaxpop.mutators import (
    PopulationBasedTraining,
    WinnerTakeAllGenetic,
    explore,
    winner_take_all_genetic,
)

WORKERS = 8
PARAMS = "ckpt/handle"  # what workers pass as params: a handle, the same object every time
VARIANTS = {"no_exploit": 10**12, "exploit": 50}  # name -> steps_per_exploit
MODES = ("memory", "process", "fsync", "seed", "decisions")  # the sections, in order
DECISION_SIZES = (8, 64, 256)  # population sizes of the "decisions" section
DURABLE_MODES = ("process", "fsync")
SEED_VARIANT = "exploit"  # the seed baseline's workload
NO_COMPACTION = 2**62  # compact_after during timed windows: nothing but the journal
# the controller's default compaction threshold, as the policy's minimum interval
COMPACT_AFTER = inspect.signature(pop_mod.PopulationController).parameters["compact_after"].default
SEED_SECONDS_PER_TIMING = 1.0  # seed timings use fewer pairs than --seed-calls past this
SEED_MIN_CALLS = 10
SEED_EXACT_MAX_PAIR_S = 0.1  # skip the seed's exact variant where a pair costs more


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

    Same protocol and same winner-take-all rule (score: the mean of the values the
    worker's current generation reported at or past its interval; every worker gets
    ``mutate_fn`` of the winner's hyperparameters and starts a new generation from the
    winner's latest evaluated checkpoint). No randomness, no validation, no warnings, no snapshots.
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
            steps = self.history[worker.generation_id]
            since = next(iter(steps)) + self._steps_per_exploit
            values = [c.value for c in steps.values() if c.value is not None and c.step >= since]
            mean = math.fsum(values) / len(values)
            scores.append(mean if math.isfinite(mean) else math.inf)
        best = int(np.argmin(scores))
        winner, now = latest[best], time.time()
        for i in range(len(self.workers)):
            meta_params = self._mutate_fn(winner.meta_params)
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


class SeedPickleController(DictController):
    """The seed's storage design: pickle the whole state, rewrite one file, on every event.

    ``save`` does what the seed's ``save_state`` did: pickle ``(workers, history,
    mutator state)``, write it to a fresh temporary file in ``log_dir`` and rename that
    over ``population.state`` (no fsync). It runs after every call that changes the
    state (a ``set_eval``; an ask that stores the worker's last params). With
    ``compare_on_ask`` every ask also pickles the state twice, as the seed did around
    its mutator's ``get_worker_data`` hook to see whether anything changed (for
    winner-take-all nothing does). Saving is off while ``log_dir`` is ``None`` (to build
    a history quickly: the state is the same). Single-threaded use only (the save runs
    outside the lock; the seed's ran inside, which costs the same here).
    """

    log_dir: str | None = None
    compare_on_ask = False
    STATE_FILE = "population.state"

    def state_bytes(self) -> bytes:
        return pickle.dumps((self.workers, self.history, self.num_exploits, self._num_ids))

    def save(self) -> None:
        if self.log_dir is None:
            return
        content = self.state_bytes()
        tmp = os.path.join(self.log_dir, f"population_tmp_{uuid.uuid4()}.state")
        with open(tmp, "wb") as f:
            f.write(content)
        os.replace(tmp, os.path.join(self.log_dir, self.STATE_FILE))

    @classmethod
    def load(cls, log_dir: str) -> tuple[Any, ...]:
        """What the seed's ``load_state`` did: read the file and unpickle it."""
        with open(os.path.join(log_dir, cls.STATE_FILE), "rb") as f:
            return pickle.loads(f.read())

    def maybe_get_worker_data(self, worker_id, generation_id, step, params, meta_params):
        if self.compare_on_ask and self.log_dir is not None:
            before, after = self.state_bytes(), self.state_bytes()
            if before != after:
                self.save()
        num_checkpoints = self.num_checkpoints
        worker = super().maybe_get_worker_data(worker_id, generation_id, step, params, meta_params)
        if self.num_checkpoints != num_checkpoints:
            self.save()
        return worker

    def set_eval(self, worker_id, generation_id, step, params, value):
        if generation_id not in self.history:
            return
        super().set_eval(worker_id, generation_id, step, params, value)
        self.save()


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


def make_population(steps_per_exploit: int):
    population = [{"lr": 1e-3 * (i + 1)} for i in range(WORKERS)]
    mutator = winner_take_all_genetic.WinnerTakeAllGenetic(
        mutate_fn, steps_per_exploit=steps_per_exploit
    )
    return population, mutator


def make_subjects(steps_per_exploit: int) -> list[Subject]:
    population, mutator = make_population(steps_per_exploit)
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


# -- the durable modes: a log_dir, "process" or "fsync" ------------------------------------
_SNAPSHOT_FILE = re.compile(r"^snapshot-(\d{8})\.jpsnap$")  # docs/storage.md's documented names
_JOURNAL_FILE = re.compile(r"^journal-(\d{8})\.jpjournal$")
_FRAME_HEADER = struct.Struct("<II")  # payload length, CRC-32


def log_dir_files(log_dir: str) -> dict[str, Any]:
    """The newest snapshot and journal segment numbers, the journal records a restore
    replays (frames after the newest snapshot, headers excluded) and the bytes in all."""
    snapshots, journals, total = [], [], 0
    for name in os.listdir(log_dir):
        total += os.path.getsize(os.path.join(log_dir, name))
        if match := _SNAPSHOT_FILE.match(name):
            snapshots.append(int(match.group(1)))
        elif match := _JOURNAL_FILE.match(name):
            journals.append(int(match.group(1)))
    snapshot = max(snapshots)
    records = 0
    for seq in journals:
        if seq >= snapshot:
            with open(os.path.join(log_dir, f"journal-{seq:08d}.jpjournal"), "rb") as f:
                data = f.read()
            offset = frames = 0
            while offset + _FRAME_HEADER.size <= len(data):
                offset += _FRAME_HEADER.size + _FRAME_HEADER.unpack_from(data, offset)[0]
                frames += 1
            records += max(frames - 1, 0)
    return {
        "snapshot": snapshot,
        "journal": max(journals, default=snapshot),
        "records": records,
        "bytes": total,
    }


def controller_shape(controller) -> dict[str, int]:
    return {
        "checkpoints": controller.history.num_checkpoints,
        "generations": len(controller.history),
        "exploit_rounds": controller.state.mutator_state["num_exploits"],
    }


def time_snapshot(state, scratch: str, repeats: int) -> tuple[float, int]:
    """Best seconds to write one snapshot of ``state`` as a compaction does (encode,
    write, fsync, rename, fsync the directory), and its size in bytes."""
    best, size = math.inf, 0
    for r in range(repeats):
        os.makedirs(scratch, exist_ok=True)
        gc.collect()
        t0 = time.perf_counter()
        storage.store._write_snapshot(scratch, r, state, None)  # what the background thread runs
        best = min(best, time.perf_counter() - t0)
        size = os.path.getsize(os.path.join(scratch, f"snapshot-{r:08d}.jpsnap"))
        shutil.rmtree(scratch)
        if best > 0.2:  # large: one is enough
            break
    return best, size


def drive_through_compaction(controller, cursors, start: int, values, latencies: list):
    """Starts a compaction now, as the policy does when the journal is due one, and keeps
    driving pairs (8 at a time) until its snapshot is written. Returns (seconds, pairs).

    Reaches into the controller's ``Store`` (``_compact``, ``_snapshot_thread``): the
    policy would start this compaction only every ``max(compact_after, N)`` records.
    """
    store = controller._store
    pairs = 0
    t0 = time.perf_counter()
    store._compact(controller.state)  # opens a new segment, starts the snapshot thread
    thread = store._snapshot_thread
    while thread is not None and thread.is_alive():
        drive_timed(controller, cursors, start + pairs, WORKERS, values, latencies)
        pairs += WORKERS
    return time.perf_counter() - t0, pairs


def time_durable_mode(
    mode, base, root, population, mutator, cursors, start, calls, repeats, values
) -> dict:
    """Restores copies of the closed ``base`` log_dir in ``mode``; on each, times the
    start-up, ``calls`` pairs with compaction off, then one compaction while driving
    (see the module docstring)."""
    restores, pairs, asks, evals, latencies, records, after = [], [], [], [], [], 0, 0
    extras, compaction_pairs, compaction_latencies = [], [], []
    for r in range(repeats):
        work = os.path.join(root, f"{mode}-{r}")
        shutil.copytree(base, work)
        gc.collect()
        t0 = time.perf_counter()
        controller = pop_mod.PopulationController(
            population,
            mutator,
            log_dir=work,
            durability=mode,
            compact_after=NO_COMPACTION,
        )
        restores.append(time.perf_counter() - t0)
        try:
            run_cursors = copy.deepcopy(cursors)
            events = controller.state.num_events
            gc.collect()
            lat: list[float] = []
            loop, in_ask, in_eval = drive_timed(controller, run_cursors, start, calls, values, lat)
            pairs.append(loop / calls * 1e6)
            asks.append(in_ask / calls * 1e6)
            evals.append(in_eval / calls * 1e6)
            latencies.extend(lat)
            records = controller.state.num_events - events
            after = controller.history.num_checkpoints
            gc.collect()
            seconds, driven = drive_through_compaction(
                controller, run_cursors, start + calls, values, compaction_latencies
            )
            # what the compaction added to the time the callers spent
            extras.append(seconds - driven * loop / calls)
            compaction_pairs.append(driven)
        finally:
            controller.close()
        shutil.rmtree(work)
    best = min(pairs)
    extra = min(extras)
    return {
        "calls": calls,
        "checkpoints_after": after,
        "restore_s": round(min(restores), 4),
        "restore_s_median": round(statistics.median(restores), 4),
        "us_per_pair_journal": round(best, 2),
        "us_per_pair_journal_median": round(statistics.median(pairs), 2),
        "us_per_ask": round(min(asks), 2),
        "us_per_eval": round(min(evals), 2),
        "records_per_pair": round(records / calls, 4),
        **latency_stats(latencies),
        "compaction": {
            "extra_s": round(extra, 4),
            "extra_s_median": round(statistics.median(extras), 4),
            "pairs_meanwhile": compaction_pairs[extras.index(extra)],
            **latency_stats(compaction_latencies),
        },
    }


def run_durable_variant(
    name, steps_per_exploit, sizes, modes, calls_by_mode, repeats, values, tmpdir
) -> list[dict]:
    population, mutator = make_population(steps_per_exploit)
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"jaxpop-bench-{name}-", dir=tmpdir) as root:
        base = os.path.join(root, "base")
        cursors, done = new_cursors(), 0
        for size in sizes:
            # Grow the base log_dir to `size` checkpoints in "process" mode, compactions
            # as the default policy makes them, then close it: that is the snapshot.
            controller = pop_mod.PopulationController(
                population, mutator, log_dir=base, durability="process"
            )
            first_segment = log_dir_files(base)["journal"]
            first, lat = done, []
            gc.collect()
            t0 = time.perf_counter()
            while controller.history.num_checkpoints < size:
                drive_timed(controller, cursors, done, WORKERS, values, lat)
                done += WORKERS
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            controller.close()  # waits for a snapshot being written
            close_s = time.perf_counter() - t0
            files = log_dir_files(base)
            shape, state = controller_shape(controller), controller.state
            del controller
            snapshot_s, snapshot_bytes = time_snapshot(state, os.path.join(root, "scratch"), 3)
            del state
            interval = max(COMPACT_AFTER, shape["checkpoints"])
            row = {
                "variant": name,
                "steps_per_exploit": steps_per_exploit,
                "target_size": size,
                "pairs_driven": done,
                **shape,
                "log_dir": {
                    "bytes": files["bytes"],
                    "journal_records_to_replay": files["records"],
                },
                "build": {
                    "pairs": done - first,
                    "us_per_pair": round(build_s / max(done - first, 1) * 1e6, 2),
                    "compactions": files["journal"] - first_segment,
                    "close_s": round(close_s, 4),
                    **latency_stats(lat),
                },
                "snapshot": {
                    "seconds": round(snapshot_s, 4),
                    "bytes": snapshot_bytes,
                    "every_records": interval,
                },
            }
            del lat
            for mode in modes:
                figures = time_durable_mode(
                    mode,
                    base,
                    root,
                    population,
                    mutator,
                    cursors,
                    done,
                    calls_by_mode[mode],
                    repeats,
                    values,
                )
                extra = max(figures["compaction"]["extra_s"], 0.0)
                share = extra * 1e6 / interval * figures["records_per_pair"]
                total = figures["us_per_pair_journal"] + share
                figures = {
                    "us_per_pair": round(total, 2),
                    "us_per_call": round(total / 2, 2),
                    "us_per_pair_compaction": round(share, 2),
                    **figures,
                }
                row[mode] = figures
            rows.append(row)
            gc.collect()
    return rows


# -- the seed's design: pickle everything, rewrite one file, every event -------------------
def time_seed_impl(base, cursors, start, calls, repeats, compare_on_ask, values, root):
    pairs, latencies = [], []
    for r in range(repeats):
        controller = base.clone()
        controller.compare_on_ask = compare_on_ask
        controller.log_dir = os.path.join(root, f"seed-{int(compare_on_ask)}-{r}")
        os.makedirs(controller.log_dir)
        controller.save()  # the file exists before the window, as it would
        gc.collect()
        lat: list[float] = []
        loop, _, _ = drive_timed(controller, copy.deepcopy(cursors), start, calls, values, lat)
        pairs.append(loop / calls * 1e6)
        latencies.extend(lat)
        shutil.rmtree(controller.log_dir)
    best = min(pairs)
    return {
        "calls": calls,
        "us_per_pair": round(best, 1),
        "us_per_call": round(best / 2, 1),
        "us_per_pair_median": round(statistics.median(pairs), 1),
        **latency_stats(latencies),
    }


def run_seed(sizes, max_calls, repeats, values, tmpdir) -> list[dict]:
    steps_per_exploit = VARIANTS[SEED_VARIANT]
    population = [{"lr": 1e-3 * (i + 1)} for i in range(WORKERS)]
    base = SeedPickleController(population, mutate_fn, steps_per_exploit)  # not saving
    cursors, done, rows = new_cursors(), 0, []
    with tempfile.TemporaryDirectory(prefix="jaxpop-bench-seed-", dir=tmpdir) as root:
        for size in sizes:
            while base.num_checkpoints < size:
                drive(base, cursors, done, WORKERS, values)
                done += WORKERS
            t0 = time.perf_counter()
            state_bytes = len(base.state_bytes())
            pickle_s = time.perf_counter() - t0
            row: dict[str, Any] = {
                "variant": SEED_VARIANT,
                "target_size": size,
                "pairs_driven": done,
                "checkpoints": base.num_checkpoints,
                "generations": len(base.history),
                "state_bytes": state_bytes,
                "pickle_s": round(pickle_s, 5),
            }
            for impl, compare_on_ask in (("rewrite", False), ("exact", True)):
                per_pair = pickle_s * (3 if compare_on_ask else 1) + 1e-4  # an estimate
                if compare_on_ask and per_pair > SEED_EXACT_MAX_PAIR_S:
                    row[impl] = None  # skipped: too slow to be worth the time
                    continue
                calls = max(SEED_MIN_CALLS, min(max_calls, int(SEED_SECONDS_PER_TIMING / per_pair)))
                row[impl] = time_seed_impl(
                    base, cursors, done, calls, repeats, compare_on_ask, values, root
                )
            # start-up: the seed's load_state (read + unpickle)
            log_dir = os.path.join(root, "restore")
            os.makedirs(log_dir)
            saver = base.clone()
            saver.log_dir = log_dir
            saver.save()
            restores = []
            for _ in range(repeats):
                gc.collect()
                t0 = time.perf_counter()
                SeedPickleController.load(log_dir)
                restores.append(time.perf_counter() - t0)
            shutil.rmtree(log_dir)
            row["restore_s"] = round(min(restores), 4)
            rows.append(row)
            gc.collect()
    return rows


def _int_list(parser, flag: str, text: str, allow_empty: bool = False) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        parser.error(f"{flag} must be comma separated ints, got {text!r}")
    if (not values and not allow_empty) or (values and values[0] <= 0):
        parser.error(f"{flag} must be positive")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="sections to run, comma separated: memory (in-memory controller), process and "
        "fsync (durable controller), seed (the seed's pickle-and-rewrite design) "
        "(default: %(default)s)",
    )
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
    parser.add_argument(
        "--fsync-calls",
        type=int,
        default=200,
        help='pairs per timing in "fsync" mode (default: %(default)s)',
    )
    parser.add_argument(
        "--durable-repeats",
        type=int,
        default=3,
        help="restores and timings per size and durable mode; the best counts "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed-sizes",
        default="800,3200,10000,100000",
        help="history sizes for the seed's design, comma separated (default: %(default)s)",
    )
    parser.add_argument(
        "--seed-calls",
        type=int,
        default=200,
        help="at most this many pairs per seed timing (fewer where a pair is slow; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--decision-rounds",
        type=int,
        default=20,
        help='timed rounds (every worker reports once) per size in "decisions" '
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--tmpdir",
        default=None,
        help="where the log_dirs go (default: the system's temporary directory); the "
        "fsync figures depend on its disk",
    )
    args = parser.parse_args(argv)
    args.sizes = _int_list(parser, "--sizes", args.sizes)
    args.seed_sizes = _int_list(parser, "--seed-sizes", args.seed_sizes, allow_empty=True)
    if min(args.calls, args.repeats, args.fsync_calls, args.durable_repeats, args.seed_calls) <= 0:
        parser.error(
            "--calls, --repeats, --fsync-calls, --durable-repeats and --seed-calls must be positive"
        )
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}, got {unknown}")
    modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    unknown = sorted(modes - set(MODES))
    if unknown or not modes:
        parser.error(f"--modes: choose from {', '.join(MODES)}, got {unknown}")
    args.modes = [m for m in MODES if m in modes]
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


def print_durable_tables(result: dict) -> None:
    durable = result["durable"]
    calls = ", ".join(f"{m} {n}" for m, n in durable["calls"].items())
    print()
    print(
        f"durable controller: {WORKERS} workers, log_dir in {durable['filesystem']};\npairs per "
        f"timing: {calls}; best of {durable['repeats']} restores and timings; 'size' = "
        "checkpoints at the start of a timing"
    )
    header = (
        f"{'workload':<11}{'size':>8}  {'mode':<8}{'restore_s':>10}{'us/pair':>9}"
        f"{'us/call':>9}{'journal':>9}{'compact':>9}{'us/ask':>8}{'us/eval':>9}"
        f"{'max_us':>8}{'p99_us':>8}{'cmp_s':>7}{'cmp_max_ms':>11}{'rec/pair':>9}"
        f"{'ckpts after':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in durable["results"]:
        for mode in durable["modes"]:
            fig, cmp = row[mode], row[mode]["compaction"]
            print(
                f"{row['variant']:<11}{row['checkpoints']:>8}  {mode:<8}{fig['restore_s']:>10.3f}"
                f"{fig['us_per_pair']:>9.1f}{fig['us_per_call']:>9.1f}"
                f"{fig['us_per_pair_journal']:>9.1f}{fig['us_per_pair_compaction']:>9.1f}"
                f"{fig['us_per_ask']:>8.1f}{fig['us_per_eval']:>9.1f}{fig['max_call_us']:>8.0f}"
                f"{fig['p99_call_us']:>8.0f}{cmp['extra_s']:>7.3f}"
                f"{cmp['max_call_us'] / 1000:>11.1f}{fig['records_per_pair']:>9.3f}"
                f"{fig['checkpoints_after']:>12}"
            )
    print()
    print(
        "restore_s: seconds to construct a controller on a copy of the closed log_dir (best);\n"
        "us/pair = journal + compact; journal: one maybe_get_worker_data + one set_eval with "
        "compaction off\n(best repeat); cmp_s: time one compaction (snapshot of this size) "
        "added to callers that kept\ncalling while it ran (best repeat); compact = cmp_s / "
        "max(compact_after, size) * rec/pair, the\namortized cost of compaction; us/call = "
        "us/pair / 2; us/ask, us/eval: journal only, each call\ntimed alone; max_us, p99_us: "
        "single-call latencies, compaction off; cmp_max_ms: slowest call\nwhile a compaction "
        "ran; rec/pair: journal records per pair; ckpts after: checkpoints at the end\nof a "
        "journal timing (each repeat starts again at 'size')."
    )
    header = (
        f"{'workload':<11}{'size':>8}{'gens':>7}{'build us/pair':>15}{'build max_ms':>14}"
        f"{'compactions':>13}{'snapshot_s':>12}{'snapshot_MB':>13}{'log_dir_MB':>12}"
        f"{'to replay':>11}"
    )
    print()
    print(
        'building each log_dir ("process" mode, default compaction policy, from the previous size):'
    )
    print(header)
    print("-" * len(header))
    for row in durable["results"]:
        build, snap = row["build"], row["snapshot"]
        print(
            f"{row['variant']:<11}{row['checkpoints']:>8}{row['generations']:>7}"
            f"{build['us_per_pair']:>15.1f}{build['max_call_us'] / 1000:>14.1f}"
            f"{build['compactions']:>13}{snap['seconds']:>12.3f}"
            f"{snap['bytes'] / 2**20:>13.2f}{row['log_dir']['bytes'] / 2**20:>12.2f}"
            f"{row['log_dir']['journal_records_to_replay']:>11}"
        )
    print()
    print(
        "build us/pair: sustained cost while growing the history, background snapshots "
        "included; build max_ms:\nthe slowest single call meanwhile; compactions: "
        "snapshots started meanwhile; snapshot_s: one\nsnapshot of this state written in "
        "the foreground (encode, write, fsync, rename); to replay:\njournal records a "
        "restore of this log_dir replays after loading its snapshot."
    )


def print_seed_table(result: dict) -> None:
    seed = result["seed"]
    jaxpop_rows = {
        row["target_size"]: row
        for row in result.get("durable", {}).get("results", [])
        if row["variant"] == seed["variant"]
    }
    print()
    print(
        f"the seed's design (pickle the whole state, rewrite one file per event, no fsync) "
        f"against jaxpop,\nworkload {seed['variant']}, {WORKERS} workers, microseconds per "
        f"call (ask or eval), best of {seed['repeats']}"
    )
    header = (
        f"{'size':>7}{'gens':>6}{'state_KB':>10}{'calls':>7}{'rewrite':>10}{'max_ms':>8}"
        f"{'exact':>10}{'jaxpop p':>10}{'jaxpop f':>10}{'rewrite/p':>11}{'rewrite/f':>11}"
        f"{'seed restore_s':>16}{'jaxpop restore_s':>18}"
    )
    print(header)
    print("-" * len(header))

    def fmt(value, spec: str, width: int, suffix: str = "") -> str:
        return f"{'-':>{width}}" if value is None else f"{format(value, spec) + suffix:>{width}}"

    for row in seed["results"]:
        rewrite, exact = row["rewrite"], row["exact"]
        jp = jaxpop_rows.get(row["target_size"], {})
        process, fsync = jp.get("process"), jp.get("fsync")
        p_call = process and process["us_per_call"]
        f_call = fsync and fsync["us_per_call"]
        restore = process["restore_s"] if process else (fsync and fsync["restore_s"])
        print(
            f"{row['checkpoints']:>7}{row['generations']:>6}{row['state_bytes'] / 1024:>10.0f}"
            f"{rewrite['calls']:>7}{rewrite['us_per_call']:>10.0f}"
            f"{rewrite['max_call_us'] / 1000:>8.1f}"
            f"{fmt(exact and exact['us_per_call'], '.0f', 10)}{fmt(p_call, '.1f', 10)}"
            f"{fmt(f_call, '.1f', 10)}"
            f"{fmt(p_call and rewrite['us_per_call'] / p_call, '.0f', 11, 'x')}"
            f"{fmt(f_call and rewrite['us_per_call'] / f_call, '.1f', 11, 'x')}"
            f"{row['restore_s']:>16.4f}{fmt(restore, '.4f', 18)}"
        )
    print()
    print(
        "rewrite: one pickle + file rewrite per state-changing call (the design); exact: "
        "also two pickles per\nask, as the seed did (-: skipped, a pair would take over "
        f"{SEED_EXACT_MAX_PAIR_S:g} s); calls: pairs per timing (fewer where a pair\nis "
        'slow); max_ms: slowest rewrite call; jaxpop p / f: jaxpop\'s us/call in "process" / '
        '"fsync" mode\nat the same size (durable table); rewrite/p, rewrite/f: seed rewrite / '
        "jaxpop; restore_s: seconds to\nload the state again (seed: read + unpickle; jaxpop: "
        'construct a controller, "process").'
    )


def filesystem_of(path: str) -> str:
    """The device and type of the file system that holds ``path`` (Linux), for the record."""
    path, best = os.path.realpath(path), ("", "unknown", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, kind = line.split()[:3]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[0]):
                    best = (mount, kind, device)
    except OSError:
        return path
    return f"{path} ({best[1]} on {best[2]})" if best[2] else path


def warm_up(values: Sequence[float], durable: bool, tmpdir: str | None) -> None:
    """Compiles what jaxpop compiles once per process (its event-key blocks) and, for the
    durable modes, runs the encoding and storage paths once."""
    for subject in make_subjects(VARIANTS["exploit"]):
        drive(subject.controller, subject.cursors, 0, 1000, values)
    if durable:
        population, mutator = make_population(VARIANTS["exploit"])
        with tempfile.TemporaryDirectory(prefix="jaxpop-bench-warm-", dir=tmpdir) as log_dir:
            with pop_mod.PopulationController(population, mutator, log_dir=log_dir) as c:
                drive(c, new_cursors(), 0, 1500, values)
            with pop_mod.PopulationController(population, mutator, log_dir=log_dir) as c:
                pass


def _decision_mutators() -> dict[str, Any]:
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


def run_decisions(sizes: Sequence[int], rounds: int, values: Sequence[float]) -> list[dict]:
    """Median latency of a ``set_eval`` that makes a decision, per mutator and population.

    Every worker reports at every step with an interval of 1, so each PBT ``set_eval``
    decides for its worker (and the winner-take-all round ends at each step's last
    report); asks are timed too. In-memory controllers; the first round is a warm-up.
    """
    rows = []
    for name, make in _decision_mutators().items():
        for n in sizes:
            pop = pop_mod.PopulationController(
                [{"lr": 1e-3 * (1 + i % 7)} for i in range(n)], make()
            )
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
            rows.append(
                {
                    "mutator": name,
                    "population": n,
                    "evals": len(evals),
                    "us_per_eval_median": round(statistics.median(evals) * 1e6, 2),
                    "us_per_eval_p99": round(float(np.quantile(evals, 0.99)) * 1e6, 2),
                    "us_per_ask_median": round(statistics.median(asks) * 1e6, 2),
                    "us_per_keep_median": _median_us(keeps),
                    "us_per_copy_median": _median_us(copies),
                    "decisions": counts.decisions,
                    "copies": counts.copies,
                }
            )
    return rows


def _median_us(seconds: Sequence[float]) -> float | None:
    return round(statistics.median(seconds) * 1e6, 2) if seconds else None


def print_decisions_table(rows: Sequence[dict]) -> None:
    print()
    print("decisions: median us per set_eval that decides (interval 1), in memory;")
    print("keep / copy: the medians of the decisions that kept going / that copied")
    header = f"{'mutator':<16}{'pop':>6}{'evals':>8}{'eval med':>10}{'eval p99':>10}"
    header += f"{'keep':>8}{'copy':>8}{'ask med':>9}{'copies':>8}"
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
            f"{keep:>8}{copy_:>8}{r['us_per_ask_median']:>9.1f}{r['copies']:>8}"
        )


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    values = [float(v) for v in np.random.default_rng(0).random(4096)]
    durable_modes = [m for m in args.modes if m in DURABLE_MODES]
    run_seed_section = "seed" in args.modes and bool(args.seed_sizes)
    warm_up(values, bool(durable_modes), args.tmpdir)
    section_seconds = {}
    results = []
    if "memory" in args.modes:
        t0 = time.perf_counter()
        for name in args.variants:
            results.extend(
                run_variant(name, VARIANTS[name], args.sizes, args.calls, args.repeats, values)
            )
            gc.collect()
        section_seconds["memory"] = round(time.perf_counter() - t0, 2)
    result: dict[str, Any] = {
        "benchmark": "controller_overhead",
        "workers": WORKERS,
        "modes": args.modes,
        "calls": args.calls,
        "repeats": args.repeats,
        "sizes": args.sizes,
        "results": results,  # the in-memory section
    }
    if durable_modes:
        t0 = time.perf_counter()
        calls = {"process": args.calls, "fsync": args.fsync_calls}
        rows = []
        for name in args.variants:
            sizes = args.sizes
            if name == SEED_VARIANT and run_seed_section:  # jaxpop at the seed's sizes too
                sizes = sorted(set(sizes) | set(args.seed_sizes))
            rows.extend(
                run_durable_variant(
                    name,
                    VARIANTS[name],
                    sizes,
                    durable_modes,
                    calls,
                    args.durable_repeats,
                    values,
                    args.tmpdir,
                )
            )
        result["durable"] = {
            "modes": durable_modes,
            "calls": {m: calls[m] for m in durable_modes},
            "repeats": args.durable_repeats,
            "compact_after": COMPACT_AFTER,
            "filesystem": filesystem_of(args.tmpdir or tempfile.gettempdir()),
            "results": rows,
        }
        section_seconds["durable"] = round(time.perf_counter() - t0, 2)
    if "decisions" in args.modes:
        t0 = time.perf_counter()
        result["decisions"] = run_decisions(DECISION_SIZES, args.decision_rounds, values)
        section_seconds["decisions"] = round(time.perf_counter() - t0, 2)
    if run_seed_section:
        t0 = time.perf_counter()
        result["seed"] = {
            "variant": SEED_VARIANT,
            "max_calls": args.seed_calls,
            "repeats": args.durable_repeats,
            "results": run_seed(
                args.seed_sizes, args.seed_calls, args.durable_repeats, values, args.tmpdir
            ),
        }
        section_seconds["seed"] = round(time.perf_counter() - t0, 2)
    result.update(
        {
            "section_seconds": section_seconds,
            "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **common.environment(),
        }
    )
    print(json.dumps(result, separators=(",", ":")))
    if results:
        print_table(result)
    if durable_modes:
        print_durable_tables(result)
    if run_seed_section:
        print_seed_table(result)
    if "decisions" in result:
        print_decisions_table(result["decisions"])
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
