"""benchmarks/schedule_eval.py with few calls: each schedule has its figure."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))

import schedule_eval


def test_each_schedule_is_timed():
    rows = schedule_eval.measure(leaves=2, calls=3, repeats=1)
    assert [r["schedule"] for r in rows] == ["curriculum_linear", "curriculum_cosine", "piecewise"]
    assert rows[0]["us_per_call"] > 0 and rows[1]["us_per_call"] > 0
    assert rows[2]["us_per_call"] >= 0  # (a piecewise call may round to 0.0 µs)
    # (the schedules measured are mid-ramp: their values move between the ends)
    assert 0.0 < float(schedule_eval.make("curriculum_linear", 2)(5_000)["h1"]) < 2.0
