"""Every ``>>>`` example in jaxpop's docstrings runs and prints what it shows.

The suite's command (README, ``.ci/run``) runs this module, so the examples are checked
in CI like any test. A module whose optional dependency is missing is skipped.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import jaxpop

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(jaxpop.__path__, "jaxpop.")
    if name != "jaxpop.__main__"
)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:  # an optional backend (ray, wandb, mlflow, ...)
        pytest.skip(f"{name}: {e}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_examples_are_found():
    attempted = 0
    for name in ("jaxpop.history", "jaxpop.mutators._host_random", "jaxpop.mutators.base"):
        attempted += doctest.testmod(importlib.import_module(name)).attempted
    assert attempted >= 3
