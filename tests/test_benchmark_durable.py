"""benchmarks/overhead/durable.py's snapshot timing on a small state: it writes a
snapshot as a compaction does (a smoke test of the private path it times)."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))

from overhead import durable

from jaxpop import PopulationController
from jaxpop.mutators import WinnerTakeAllGenetic


def test_a_snapshot_is_timed_as_a_compaction_writes_it(tmp_path):
    pop = PopulationController(
        [{"h": 0.0}, {"h": 1.0}], WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=5)
    )
    seconds, size = durable.time_snapshot(pop.state, str(tmp_path / "scratch"), repeats=2)
    assert 0 < seconds < 60 and size > 100
    assert not (tmp_path / "scratch").exists()  # it cleans up after itself
