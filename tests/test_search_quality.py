"""benchmarks/search_quality.py in its ``--quick`` form: it runs and reports every cell.

With the smallest population it takes (8, MF-PBT's layout; 16 by default): the same
code for every task and method, on half the members."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).parent.parent / "benchmarks" / "search_quality.py"
TASKS = {"moving", "trap", "digits"}
METHODS = {"random", "grid", "wta", "pbt_trunc", "pbt_tourn", "pb2", "fire", "mf_pbt"}
UNCOUNTED = {"random", "grid"}  # no search, so no decisions to count
QUICK_ARGS = [sys.executable, str(SCRIPT), "--quick", "--quiet", "--population", "8"]


def test_the_quick_benchmark_reports_finite_figures_for_every_task_and_method():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        # (an option given explicitly is kept: --quick's 150 replaced it)
        [*QUICK_ARGS, "--trap-steps", "100"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    first, *table = done.stdout.splitlines()
    result = json.loads(first)
    assert result["benchmark"] == "search_quality"
    assert result["config"]["quick"] is True
    seeds = result["config"]["seeds"]
    assert seeds == 2 and result["config"]["population"] == 8
    assert result["config"]["tasks"]["trap"]["steps"] == 100
    assert set(result["results"]) == TASKS
    for task, rows in result["results"].items():
        assert set(rows) == METHODS, task
        for method, row in rows.items():
            where = f"{task}/{method}"
            assert len(row["scores"]) == seeds, where
            names = ("median", "q1", "q3", "wall_s", "overhead_us_per_call")
            figures = [row[name] for name in names] + row["scores"]
            assert all(math.isfinite(x) for x in figures), (where, figures)
            assert row["q1"] <= row["median"] <= row["q3"], where
            assert row["wall_s"] > 0 and row["overhead_us_per_call"] > 0, where
            if method in UNCOUNTED:
                assert row["copy_rate"] is None, where
            else:
                assert row["decisions"] > 0, where
                assert 0.0 <= row["copy_rate"] <= 1.0, where
    # the readable table follows the JSON line and names every method
    text = "\n".join(table)
    assert all(method in text for method in METHODS)


def test_an_empty_list_of_methods_or_tasks_is_a_usage_error():
    # (an IndexError traceback for --methods ",", an empty table for --tasks ",": helper-287)
    for option in ("--methods", "--tasks"):
        done = subprocess.run(
            [*QUICK_ARGS, option, ","], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and f"{option} names no" in done.stderr, done.stderr
