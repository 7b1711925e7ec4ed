"""Controller overhead: microseconds per ``maybe_get_worker_data`` and ``set_eval`` call.

Five sections, chosen with ``--modes`` (default: all), each in its own module of
``benchmarks/overhead/`` whose docstring says how it measures:

* ``memory`` (``overhead/memory.py``): the in-memory controller against a plain-Python
  one (``overhead/baselines.py``), at history sizes ``--sizes``; the ratio;
* ``process`` and ``fsync`` (``overhead/durable.py``): the durable controller,
  ``PopulationController(..., log_dir=..., durability=mode)``, per call (compaction
  included) and its start-up (restore) time;
* ``seed`` (``overhead/seed.py``): the seed's storage design (pickle the whole state,
  rewrite one file per event) at ``--seed-sizes``, against the durable figures;
* ``decisions`` (``overhead/decisions.py``): the latency of a ``set_eval`` that decides,
  for PBT and winner-take-all, in populations of 8, 64 and 256.

All but ``decisions`` drive 8 workers round robin through the seed's worker loop
(``overhead/driver.py``) on two workloads (``--variants``): ``no_exploit`` and
``exploit``.

Usage (from the repo root)::

    python benchmarks/controller_overhead.py [--modes memory,process,fsync,seed,decisions]
        [--sizes 1000,10000,100000] [--calls 2000] [--repeats 5] [--fsync-calls 200]
        [--durable-repeats 3] [--seed-sizes 800,3200,10000,100000] [--seed-calls 200]
        [--decision-rounds 20] [--variants no_exploit,exploit] [--tmpdir DIR]

Prints one JSON line with every figure, then one table per section.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import common
import numpy as np
from overhead import decisions, durable, memory, seed
from overhead.driver import VARIANTS, WORKERS, drive, make_population, new_cursors

from jaxpop import PopulationController

MODES = ("memory", "process", "fsync", "seed", "decisions")  # the sections, in order


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="sections to run, comma separated: memory (in-memory controller), process and "
        "fsync (durable controller), seed (the seed's pickle-and-rewrite design), decisions "
        "(latency of a deciding set_eval) (default: %(default)s)",
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
    args.sizes = common.int_list(parser, "--sizes", args.sizes)
    args.seed_sizes = common.int_list(parser, "--seed-sizes", args.seed_sizes, allow_empty=True)
    counts = (args.calls, args.repeats, args.fsync_calls, args.durable_repeats, args.seed_calls)
    if min(*counts, args.decision_rounds) <= 0:
        parser.error(
            "--calls, --repeats, --fsync-calls, --durable-repeats, --seed-calls and "
            "--decision-rounds must be positive"
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


def warm_up(values: Sequence[float], durable_modes: bool, tmpdir: str | None) -> None:
    """Compiles what jaxpop compiles once per process (its event-key blocks) and, for the
    durable modes, runs the encoding and storage paths once."""
    for subject in memory.make_subjects(VARIANTS["exploit"]):
        drive(subject.controller, subject.cursors, 0, 1000, values)
    if durable_modes:
        population, mutator = make_population(VARIANTS["exploit"])
        with tempfile.TemporaryDirectory(prefix="jaxpop-bench-warm-", dir=tmpdir) as log_dir:
            with PopulationController(population, mutator, log_dir=log_dir) as c:
                drive(c, new_cursors(), 0, 1500, values)
            with PopulationController(population, mutator, log_dir=log_dir):
                pass


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    values = [float(v) for v in np.random.default_rng(0).random(4096)]
    durable_modes = [m for m in args.modes if m in durable.MODES]
    run_seed = "seed" in args.modes and bool(args.seed_sizes)
    warm_up(values, bool(durable_modes), args.tmpdir)
    section_seconds = {}

    def timed(section: str, fn, *fn_args):
        t0 = time.perf_counter()
        out = fn(*fn_args)
        section_seconds[section] = round(time.perf_counter() - t0, 2)
        return out

    result: dict[str, Any] = {
        "benchmark": "controller_overhead",
        "workers": WORKERS,
        "modes": args.modes,
        "calls": args.calls,
        "repeats": args.repeats,
        "sizes": args.sizes,
        "results": [],  # the in-memory section
    }
    if "memory" in args.modes:
        result["results"] = timed(
            "memory", memory.run, args.variants, args.sizes, args.calls, args.repeats, values
        )
    if durable_modes:
        sizes = {name: args.sizes for name in args.variants}
        if run_seed and seed.VARIANT in sizes:  # jaxpop at the seed's sizes too
            sizes[seed.VARIANT] = sorted(set(args.sizes) | set(args.seed_sizes))
        calls = {"process": args.calls, "fsync": args.fsync_calls}
        result["durable"] = timed(
            "durable",
            durable.run,
            args.variants,
            sizes,
            durable_modes,
            calls,
            args.durable_repeats,
            values,
            args.tmpdir,
        )
    if "decisions" in args.modes:
        result["decisions"] = timed(
            "decisions", decisions.run, args.decision_rounds, values, args.tmpdir
        )
    if run_seed:
        result["seed"] = timed(
            "seed",
            seed.run,
            args.seed_sizes,
            args.seed_calls,
            args.durable_repeats,
            values,
            args.tmpdir,
        )
    result.update(
        {
            "section_seconds": section_seconds,
            "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **common.environment(),
        }
    )
    print(json.dumps(result, separators=(",", ":")))
    if result["results"]:
        memory.print_table(result)
    if durable_modes:
        durable.print_tables(result["durable"])
    if run_seed:
        seed.print_table(result)
    if "decisions" in result:
        decisions.print_table(result["decisions"])
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
