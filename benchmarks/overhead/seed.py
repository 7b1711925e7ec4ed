"""Section ``seed``: the seed's storage design, per call and at start-up, against jaxpop.

The seed (``learned_optimization.population``) kept its state in a dict of dicts and, on
every event, pickled the whole state and rewrote it to a file (write a temporary file,
rename it over ``population.state``; no fsync). ``baselines.SeedPickleController`` does
that on top of the plain-Python controller (``rewrite``: one pickle and one file per
state-changing call); ``exact`` also pickles the state twice on every ask, as the seed
did to detect whether its mutator's ``get_worker_data`` hook changed anything.

Workload ``exploit``; sizes ``--seed-sizes`` (800 and 3,200 are the sizes the issue
quoted the seed's cost at); the history is built without saving (the state is the same)
and each timing is ``--seed-calls`` pairs or fewer, so that one timing takes about a
second (each pair costs O(N)), best of ``--durable-repeats``; ``exact`` is skipped where
a pair would cost more than 0.1 s. Start-up: reading and unpickling the file. jaxpop's
durable figures at the same sizes come from the durable sections (which, for
``exploit``, also run at the seed sizes when ``seed`` is among the modes).
"""

from __future__ import annotations

import copy
import gc
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from overhead.baselines import SeedPickleController
from overhead.driver import (
    VARIANTS,
    WORKERS,
    drive,
    drive_timed,
    latency_stats,
    make_population,
    mutate_fn,
    new_cursors,
)

VARIANT = "exploit"  # the seed baseline's workload
SECONDS_PER_TIMING = 1.0  # seed timings use fewer pairs than --seed-calls past this
MIN_CALLS = 10
EXACT_MAX_PAIR_S = 0.1  # skip the seed's exact variant where a pair costs more


def time_impl(base, cursors, start, calls, repeats, compare_on_ask, values, root) -> dict:
    """Times ``calls`` pairs on clones of ``base`` that save on every event."""
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


def time_restore(base, root, repeats) -> float:
    """Best seconds of the seed's ``load_state`` (read + unpickle) of ``base``'s state."""
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
    return min(restores)


def run(sizes, max_calls, repeats, values, tmpdir) -> dict:
    """The section's result: its settings and one row per size."""
    population, _ = make_population(VARIANTS[VARIANT])
    base = SeedPickleController(population, mutate_fn, VARIANTS[VARIANT])  # not saving
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
                "variant": VARIANT,
                "target_size": size,
                "pairs_driven": done,
                "checkpoints": base.num_checkpoints,
                "generations": len(base.history),
                "state_bytes": state_bytes,
                "pickle_s": round(pickle_s, 5),
            }
            for impl, compare_on_ask in (("rewrite", False), ("exact", True)):
                per_pair = pickle_s * (3 if compare_on_ask else 1) + 1e-4  # an estimate
                if compare_on_ask and per_pair > EXACT_MAX_PAIR_S:
                    row[impl] = None  # skipped: too slow to be worth the time
                    continue
                calls = max(MIN_CALLS, min(max_calls, int(SECONDS_PER_TIMING / per_pair)))
                row[impl] = time_impl(
                    base, cursors, done, calls, repeats, compare_on_ask, values, root
                )
            row["restore_s"] = round(time_restore(base, root, repeats), 4)
            rows.append(row)
            gc.collect()
    return {"variant": VARIANT, "max_calls": max_calls, "repeats": repeats, "results": rows}


def print_table(result: dict[str, Any]) -> None:
    """The seed's rows next to jaxpop's durable figures at the same sizes, if measured."""
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
        f"{EXACT_MAX_PAIR_S:g} s); calls: pairs per timing (fewer where a pair\nis "
        'slow); max_ms: slowest rewrite call; jaxpop p / f: jaxpop\'s us/call in "process" / '
        '"fsync" mode\nat the same size (durable table); rewrite/p, rewrite/f: seed rewrite / '
        "jaxpop; restore_s: seconds to\nload the state again (seed: read + unpickle; jaxpop: "
        'construct a controller, "process").'
    )
