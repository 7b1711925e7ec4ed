"""benchmarks/gc_stalls.py with a short run: each bucket has its longest call."""

from __future__ import annotations

import gc
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))

import gc_stalls


def test_a_variant_reports_the_longest_call_of_each_bucket():
    try:
        row = gc_stalls.run_variant(evals=250, workers=4, freeze_every=100, bucket=100)
        assert gc.get_freeze_count() > 0  # (it froze what the run had built)
    finally:
        gc.unfreeze()
    assert len(row["longest_ms"]) == 3 and all(ms > 0 for ms in row["longest_ms"])
    assert row["checkpoints"] > 4 and row["freeze_ms"] >= 0 and row["seconds"] > 0
