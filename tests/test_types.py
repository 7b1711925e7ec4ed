"""mypy finds no error in jaxpop/, with the ``[tool.mypy]`` configuration of pyproject.toml.

CI runs only pytest, so the type checker runs here: from scratch, as on CI's fresh
machine (no cache is read or written). Skipped without mypy (it is in the ``dev`` extra).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="needs mypy (dev extra)")
def test_mypy_finds_no_error_in_jaxpop():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", os.devnull],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"mypy on jaxpop/:\n{result.stdout}{result.stderr}"
