"""FIRE's fitness: time and peak memory of a sub-population's fitness, by size.

What is timed: ``FirePBT``'s memo computing the fitness of one sub-population of
``members`` evaluation curves of ``points`` points each (random walks at steps 10
apart, each starting at a random step): ``fresh_ms``, every pair of curves compared
(the first fitness of a sub-population); ``changed_ms``, the fitness again after 5 of
the curves changed (the usual case: only their rows and columns are computed again).
``peak_mib``: the peak of Python's traced allocations (numpy's arrays included) during
a fresh computation, in a run of its own (tracemalloc slows what it traces about
twice: the times are taken untraced). Best of ``--repeats`` runs each.

Usage (from the repo root)::

    python benchmarks/fire_fitness.py [--sizes 96x20,96x100,96x400,160x400] [--repeats 3]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from typing import Any

import numpy as np
from common import environment, positive_int

from jaxpop.mutators import fire
from jaxpop.mutators.fire import Curve

SIZES = "96x20,96x100,96x400,160x400"


def _curves(rng: np.random.Generator, members: int, points: int) -> list[Curve]:
    return [
        Curve(
            np.arange(points, dtype=np.int64) * 10 + int(rng.integers(0, 50)),
            np.cumsum(rng.normal(size=points)),
        )
        for _ in range(members)
    ]


def _keys(curves: list[Curve]) -> tuple[bytes, ...]:
    return tuple(fire._digest(c) for c in curves)


def measure(members: int, points: int, repeats: int) -> dict[str, Any]:
    """One row: fresh and 5-changed fitness of ``members`` curves of ``points`` points."""
    rng = np.random.default_rng(0)
    curves = _curves(rng, members, points)
    changed = list(curves)
    touched = list(range(0, min(5 * 7, members), 7))  # (5, spread out; fewer if few members)
    for i in touched:
        changed[i] = Curve(curves[i].steps, curves[i].values + 0.1)
    fresh, again = [], []
    for _ in range(repeats):  # timed without tracemalloc (it doubled the fresh times)
        memo = fire._Memo()
        keys = _keys(curves)  # (the digests outside the timed call, as for `again`)
        t0 = time.perf_counter()
        memo.fitness(curves, keys, 0)
        fresh.append(time.perf_counter() - t0)
        keys = _keys(changed)
        t0 = time.perf_counter()
        memo.fitness(changed, keys, 0)
        again.append(time.perf_counter() - t0)
    keys = _keys(curves)
    tracemalloc.start()  # the peak, in a run of its own
    fire._Memo().fitness(curves, keys, 0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "members": members,
        "points": points,
        "fresh_ms": round(min(fresh) * 1e3, 2),
        "changed": len(touched),
        "changed_ms": round(min(again) * 1e3, 2),
        "peak_mib": round(peak / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=SIZES, help="members x points, comma separated")
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="runs per size; the best counts"
    )
    args = parser.parse_args()
    sizes = []
    for size in args.sizes.split(","):
        try:
            members, points = (int(x) for x in size.split("x"))
        except ValueError:
            parser.error(f"--sizes: each size is MEMBERSxPOINTS (say 96x20), got {size!r}")
        if members <= 0 or points <= 0:
            parser.error(f"--sizes: members and points must be positive, got {size!r}")
        sizes.append((members, points))
    rows = [measure(m, p, args.repeats) for m, p in sizes]
    print(
        json.dumps(
            {"benchmark": "fire_fitness", "repeats": args.repeats, "rows": rows, **environment()}
        )
    )
    header = f"{'members':>8}{'points':>8}{'fresh ms':>10}{'changed':>9}{'changed ms':>12}"
    print(header + f"{'peak MiB':>10}")
    for r in rows:
        print(
            f"{r['members']:>8}{r['points']:>8}{r['fresh_ms']:>10.1f}{r['changed']:>9}"
            f"{r['changed_ms']:>12.2f}{r['peak_mib']:>10.1f}"
        )


if __name__ == "__main__":
    main()
