"""benchmarks/reward_changes_scaling.py at a small size: every figure is measured."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))

import reward_changes_scaling


def test_the_synthetic_history_is_what_the_docstring_says():
    history = reward_changes_scaling.synthetic(40, lineages=8)
    assert len(history) == 40 and history.num_checkpoints == 40 * 5
    copies = [g for g in history if history.first(g).parent is not None]
    assert len(copies) == 32  # (every generation past the first 8 copies one before it)


def test_a_short_run_prints_a_row_per_size(capsys):
    reward_changes_scaling.main(["--generations", "300,100", "--lineages", "8", "--repeats", "3"])
    line = capsys.readouterr().out.splitlines()[0]
    rows = json.loads(line)["rows"]
    assert [r["generations"] for r in rows] == [100, 300]
    for row in rows:
        figures = [row[k] for k in ("afresh_ms", "kept_ms", "add_us", "add_kept_us")]
        assert all(math.isfinite(x) and x > 0 for x in figures), row


def test_sizes_not_above_the_lineages_are_a_usage_error():
    with pytest.raises(SystemExit):
        reward_changes_scaling.main(["--generations", "8", "--lineages", "8"])
