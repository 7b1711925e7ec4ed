"""benchmarks/overhead/decisions.py on the smallest population: every mutator decides in
it (every search copies too), and each row reports the figures the table prints."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))

from overhead import decisions


def test_every_mutator_decides_and_is_timed_per_decision():
    rows = decisions.run(rounds=2, values=[0.3, 0.9, 0.1, 0.5, 0.7], sizes=(8,))
    assert {row["mutator"] for row in rows} == set(decisions.mutators())
    for row in rows:
        assert row["decisions"] > 0, row["mutator"]
        # a schedule never copies; every search does, on these values
        assert (row["copies"] > 0) == (row["mutator"] != "fixed_schedule"), row["mutator"]
        assert row["us_per_decision"] > 0 and row["us_per_eval_median"] > 0, row["mutator"]
    decisions.print_table(rows)
