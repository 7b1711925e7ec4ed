"""benchmarks/fire_evaluator_reports.py with a short run: both variants decide alike."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))

import fire_evaluator_reports as bench

from jaxpop.mutators import fire


def test_the_variants_time_the_same_run_and_restore_the_kept_curves():
    kept = bench.run(workers=6, rounds=60, interval=5, buckets=3, variant="kept")
    afresh = bench.run(workers=6, rounds=60, interval=5, buckets=3, variant="afresh")
    assert isinstance(fire._Curves.__dict__["curve"], staticmethod)  # (put back as it was)
    assert fire._Curves.curve.__qualname__ == "_Curves.curve"
    assert kept["reports"] == afresh["reports"] and sum(kept["reports"]) > 10
    assert (kept["evaluations"], kept["handovers"]) == (afresh["evaluations"], afresh["handovers"])
    assert all(us is None or us > 0 for us in kept["us_median"] + afresh["us_median"])


def test_too_few_workers_or_rounds_are_usage_errors():
    for argv in (["--workers", "5"], ["--rounds", "2", "--buckets", "5"]):
        with pytest.raises(SystemExit):
            bench.main(argv)
