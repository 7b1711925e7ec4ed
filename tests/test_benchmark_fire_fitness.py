"""benchmarks/fire_fitness.py on a small sub-population: each row has its figures."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))

import fire_fitness


def test_a_row_times_the_fresh_and_the_changed_fitness_and_its_memory():
    row = fire_fitness.measure(members=12, points=6, repeats=1)
    assert (row["members"], row["points"]) == (12, 6)
    assert row["fresh_ms"] > 0 and row["changed_ms"] > 0 and row["peak_mib"] > 0
