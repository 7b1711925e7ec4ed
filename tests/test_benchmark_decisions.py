"""benchmarks/overhead/decisions.py on the smallest population: every mutator decides in
it (every search copies too), each row reports the figures the table prints, and
FirePBT on learning curves decides in each of its parts (evaluations run and end)."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))

from overhead import decisions


def test_every_mutator_decides_and_is_timed_per_decision():
    rows = decisions.run(rounds=2, values=[0.3, 0.9, 0.1, 0.5, 0.7], sizes=(8,))
    durable = {f"{name}+log" for name in (*decisions.DURABLE, "fire_curves")}
    assert {row["mutator"] for row in rows} == {*decisions.mutators(), "fire_curves", *durable}
    for row in rows:
        assert row["decisions"] > 0, row["mutator"]
        # a schedule (and the keeping floor) never copies; every search does, on these values
        assert (row["copies"] > 0) == (row["mutator"] not in ("fixed_schedule", "floor_keep"))
        assert row["us_per_decision"] > 0 and row["us_per_eval_median"] > 0, row["mutator"]
        if row["mutator"].startswith(("pbt_truncation", "pbt_tournament")):
            # each timed set_eval decides once; the untimed first round's are not counted
            assert row["decisions"] == row["evals"] == 16, row
    for row in rows:  # a durable row says how much it journaled
        assert ("journal_bytes_per_event" in row) == row["mutator"].endswith("+log")
        assert row.get("journal_bytes_per_event", 1) > 0
    for name in ("fire_curves", "fire_curves+log"):
        (curves,) = [row for row in rows if row["mutator"] == name]
        assert set(curves["by_kind"]) == {"P1", "later", "evaluators"}, name
        for kind in curves["by_kind"].values():
            assert kind["decided"] > 0 and kind["us_median"] > 0, name
    decisions.print_table(rows)
