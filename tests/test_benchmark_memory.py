"""benchmarks/overhead/memory.py at small sizes: each variant is timed from a snapshot of
the controller (a controller cannot be copied: the section failed at its first timing)
and both subjects reach each size with the same history."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))

from overhead import memory


def test_the_memory_section_times_both_subjects_at_each_size(monkeypatch):
    # (its full collections before each timing took seconds in a test process's heap)
    monkeypatch.setattr(memory.gc, "collect", lambda *args: 0)
    rows = memory.run(["no_exploit", "exploit"], [40, 80], calls=8, repeats=1, values=[0.3, 0.9])
    assert [(row["variant"], row["target_size"]) for row in rows] == [
        ("no_exploit", 40),
        ("no_exploit", 80),
        ("exploit", 40),
        ("exploit", 80),
    ]
    for row in rows:
        assert row["jaxpop"]["checkpoints"] == row["baseline"]["checkpoints"] >= row["target_size"]
        assert row["jaxpop"]["us_per_pair"] > 0 and row["ratio_pair"] > 0
