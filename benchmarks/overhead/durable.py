"""Sections ``process`` and ``fsync``: the durable controller, per call and at start-up.

The workloads and driver of the ``memory`` section, with a ``log_dir`` (under
``--tmpdir``): ``PopulationController(..., log_dir=..., durability=mode)``. ``copy.copy``
cannot snapshot a controller with a ``log_dir`` (the copy would share its files), so the
history is built in one base ``log_dir`` in ``"process"`` mode (with the default
compaction policy: its ``build`` figures are a sustained run, background snapshots
included), the controller is closed at each size N and the closed ``log_dir`` is the
snapshot: every repeat (``--durable-repeats``) copies it (``shutil.copytree``, untimed),
then

1. times the construction of a controller on the copy with ``durability=mode``: the
   start-up (restore) time (files in the page cache);
2. times ``--calls`` pairs (``--fsync-calls`` in ``"fsync"`` mode: one disk flush per
   state-changing call) continuing from N, so the history grows N -> N + calls, each
   call timed on its own; compaction is off (``compact_after=2**62``), so this is the
   cost of the journal alone (``journal``), the same work in every repeat;
3. starts one compaction (a snapshot of the whole state, O(N), written by a background
   thread) and keeps driving pairs until it is written: ``cmp_s`` is what it added to
   the callers' time (elapsed minus those pairs at the ``journal`` rate), contention
   for the GIL included: a difference of two timings, below zero when a small snapshot
   costs less than their noise (``compact`` counts it as 0). This step reaches into the
   controller's private ``Store`` (``_compact``, ``_snapshot_thread``) to start the
   compaction at a known moment.

The policy compacts once every ``max(compact_after, N)`` journal records, so its share
per pair is ``compact`` = ``cmp_s`` / ``max(compact_after, N)`` * (journal records per
pair), and ``us/pair`` = ``journal`` + ``compact`` is the sustained cost per pair.
Figures are the best repeat; ``max``/``p99`` are single-call latencies (``cmp_max_ms``:
the slowest call while a compaction ran). The ``build`` table is a check: us/pair
while the base ``log_dir`` grew, compactions as they came, and ``snapshot_s``, one
snapshot of that state written in the foreground with nothing else running (with the
private ``storage.store._write_snapshot``, what the background thread runs).
"""

from __future__ import annotations

import copy
import gc
import inspect
import math
import os
import re
import shutil
import statistics
import struct
import tempfile
import time
from typing import Any

import common

from jaxpop import PopulationController, storage
from overhead.driver import (
    VARIANTS,
    WORKERS,
    controller_shape,
    drive_timed,
    latency_stats,
    make_population,
    new_cursors,
)

MODES = ("process", "fsync")
NO_COMPACTION = 2**62  # compact_after during timed windows: nothing but the journal
# the controller's default compaction threshold, as the policy's minimum interval
COMPACT_AFTER = inspect.signature(PopulationController).parameters["compact_after"].default

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


def time_snapshot(state, scratch: str, repeats: int) -> tuple[float, int]:
    """Best seconds to write one snapshot of ``state`` as a compaction does (encode,
    write, fsync, rename, fsync the directory), and its size in bytes."""
    best, size = math.inf, 0
    for r in range(repeats):
        os.makedirs(scratch, exist_ok=True)
        fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)  # the directory a Store locks
        try:
            directory = storage.store._Directory(scratch, fd)
            gc.collect()
            t0 = time.perf_counter()
            storage.store._write_snapshot(directory, r, state, None)  # the background thread's
            best = min(best, time.perf_counter() - t0)
        finally:
            os.close(fd)
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


def time_mode(mode, base, root, population, mutator, cursors, start, calls, repeats, values):
    """Restores copies of the closed ``base`` log_dir in ``mode``; on each, times the
    start-up, ``calls`` pairs with compaction off, then one compaction while driving."""
    restores, pairs, asks, evals, latencies, records, after = [], [], [], [], [], 0, 0
    extras, compaction_pairs, compaction_latencies = [], [], []
    for r in range(repeats):
        work = os.path.join(root, f"{mode}-{r}")
        shutil.copytree(base, work)
        gc.collect()
        t0 = time.perf_counter()
        controller = PopulationController(
            population, mutator, log_dir=work, durability=mode, compact_after=NO_COMPACTION
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
    extra = min(extras)
    return {
        "calls": calls,
        "checkpoints_after": after,
        "restore_s": round(min(restores), 4),
        "restore_s_median": round(statistics.median(restores), 4),
        "us_per_pair_journal": round(min(pairs), 2),
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


def build_base(name, size, population, mutator, base, root, cursors, done, values):
    """Grows the base ``log_dir`` to ``size`` checkpoints in ``"process"`` mode (the
    default compaction policy), closes it and describes it: the build figures, one
    foreground snapshot of its state, the files a restore reads. Returns the row and the
    pairs driven so far."""
    controller = PopulationController(population, mutator, log_dir=base, durability="process")
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
    row = {
        "variant": name,
        "steps_per_exploit": VARIANTS[name],
        "target_size": size,
        "pairs_driven": done,
        **shape,
        "log_dir": {"bytes": files["bytes"], "journal_records_to_replay": files["records"]},
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
            "every_records": max(COMPACT_AFTER, shape["checkpoints"]),
        },
    }
    return row, done


def run_variant(name, sizes, modes, calls_by_mode, repeats, values, tmpdir) -> list[dict]:
    """One row per size: the base log_dir's build figures and each mode's."""
    population, mutator = make_population(VARIANTS[name])
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"jaxpop-bench-{name}-", dir=tmpdir) as root:
        base = os.path.join(root, "base")
        cursors, done = new_cursors(), 0
        for size in sizes:
            row, done = build_base(
                name, size, population, mutator, base, root, cursors, done, values
            )
            interval = row["snapshot"]["every_records"]
            for mode in modes:
                figures = time_mode(
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
                row[mode] = {
                    "us_per_pair": round(total, 2),
                    "us_per_call": round(total / 2, 2),
                    "us_per_pair_compaction": round(share, 2),
                    **figures,
                }
            rows.append(row)
            gc.collect()
    return rows


def run(variants, sizes_by_variant, modes, calls_by_mode, repeats, values, tmpdir) -> dict:
    """The section's result: its settings and one row per workload and size."""
    rows = []
    for name in variants:
        rows.extend(
            run_variant(name, sizes_by_variant[name], modes, calls_by_mode, repeats, values, tmpdir)
        )
    return {
        "modes": list(modes),
        "calls": {m: calls_by_mode[m] for m in modes},
        "repeats": repeats,
        "compact_after": COMPACT_AFTER,
        "filesystem": common.filesystem_of(tmpdir or tempfile.gettempdir()),
        "results": rows,
    }


def print_tables(durable: dict[str, Any]) -> None:
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
        "added to callers that kept\ncalling while it ran (best repeat; below 0: within the "
        "noise); compact = cmp_s / "
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
