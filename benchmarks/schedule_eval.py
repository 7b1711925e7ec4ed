"""The host cost of evaluating a schedule: what a worker loop or a ``FixedSchedule``
pays per call when it asks a schedule for the hyperparameters at a step.

Schedules of ``--leaves`` hyperparameters (Python floats), each called with a Python
int step in the middle of a segment, on the host (no ``jit``):

* ``curriculum_linear`` / ``curriculum_cosine``: :func:`jaxpop.schedules.curriculum`
  from one dict to another over 10,000 steps (the ramp's values are computed in numpy,
  one JAX call per leaf at the end);
* ``piecewise``: :func:`jaxpop.schedules.piecewise` with 8 points (a held value).

``us_per_call`` is the best of ``--repeats`` loops of ``--calls`` calls, divided by the
calls (the machine may be shared: compare rows within a run).

Usage (from the repo root)::

    python benchmarks/schedule_eval.py [--leaves 4] [--calls 300] [--repeats 5]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json

import common
import jax

from jaxpop import schedules


def make(name: str, leaves: int):
    start = {f"h{i}": 0.0 for i in range(leaves)}
    end = {f"h{i}": float(i + 1) for i in range(leaves)}
    if name == "piecewise":
        return schedules.piecewise({1000 * k: {**start, "h0": float(k)} for k in range(8)})
    return schedules.curriculum({0: start, 10_000: end}, kind=name.split("_")[1])


def measure(leaves: int, calls: int, repeats: int) -> list[dict]:
    """One row per schedule: its name and ``us_per_call``."""
    rows = []
    for name in ("curriculum_linear", "curriculum_cosine", "piecewise"):
        schedule = make(name, leaves)

        def loop(schedule=schedule):
            for _ in range(calls):
                schedule(5_000)

        seconds = common.best_of(loop, repeats)
        rows.append({"schedule": name, "us_per_call": round(seconds / calls * 1e6, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=common.positive_int, default=4)
    parser.add_argument("--calls", type=common.positive_int, default=300)
    parser.add_argument("--repeats", type=common.positive_int, default=5)
    args = parser.parse_args()
    rows = measure(args.leaves, args.calls, args.repeats)
    base = next(r["us_per_call"] for r in rows if r["schedule"] == "piecewise")
    for row in rows:  # (the ratio the README promises: against a piecewise, same run)
        row["x_piecewise"] = round(row["us_per_call"] / base, 1) if base > 0 else None
    result = {
        "benchmark": "schedule_eval",
        "config": vars(args),
        "rows": rows,
        **common.environment(jax),
    }
    print(json.dumps(result, separators=(",", ":")))
    print()
    print(f"host evaluation of a schedule of {args.leaves} leaves, at step 5,000")
    print(f"{'schedule':<20}{'us/call':>10}{'x piecewise':>13}")
    for row in rows:
        ratio = "-" if row["x_piecewise"] is None else f"{row['x_piecewise']:.1f}"
        print(f"{row['schedule']:<20}{row['us_per_call']:>10.1f}{ratio:>13}")


if __name__ == "__main__":
    main()
