"""Shared test helpers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence

import jax
import pytest

from jaxpop import core
from jaxpop.keys import root_key
from jaxpop.mutators.base import Mutator

# XLA compiling is most of this suite's time on a few CPU cores. Compile with little
# optimization (LLVM -O0, no expensive passes) and with XLA:CPU's elemental emitters
# (they compile in half the time of its fusion emitters): the compile-heavy tests take
# half the CPU time or less. Here and in the processes the tests start (they inherit
# both variables); set either one yourself to override it. Every comparison in the
# suite is between programs compiled alike, and XLA:CPU does no fast math either way.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
_optimize_less = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true", "yes")
jax.config.update("jax_disable_most_optimizations", _optimize_less)
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):  # read at first use
    _flags = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false"
    os.environ["XLA_FLAGS"] = _flags.strip()


# -- scheduling --------------------------------------------------------------------------
# `--dist loadfile` hands whole files to the test processes in collection order, so a
# long file handed out near the end leaves the other process idle while it runs. The
# files that start Ray actors (a third of the suite's time) go first, then the other
# long ones, longest first (as measured under -n 2), so that the last files are short.
# A file missing here only runs later: the order changes no result.
_LONG_FILES = (
    "test_ray.py",
    "test_courier.py",
    "test_examples_cnn.py",
    "test_report.py",
    "test_properties.py",
    "test_vectorized.py",
    "test_checkpointing.py",
    "test_selection.py",
    "test_schedules.py",
    "test_multihost.py",
    "test_crash.py",
    "test_vectorized_round.py",
    "test_storage_faults.py",
    "test_explore.py",
    "test_search_quality.py",
    "test_types.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return _LONG_FILES.index(name) if name in _LONG_FILES else len(_LONG_FILES)

    items.sort(key=rank)  # (stable: the order within and among the other files is kept)


# -- counting traces and compilations (public jax APIs, not jit's private caches) --------
class TraceCounter:
    """``fn`` counting its traces: under ``jax.jit`` its body runs only while tracing."""

    def __init__(self, fn):
        self.fn, self.count = fn, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.fn(*args, **kwargs)


BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compilations():
    """Yields a list that gets one entry per XLA compilation in the block (public
    ``jax.monitoring`` events; cached executables compile nothing)."""
    seen = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def noop_mutator() -> Mutator:
    """A mutator that never changes anything."""
    return Mutator(init=lambda: (), update=lambda s, w, h, now, key: (s, w, ()))


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fresh_state(population, mutator, seed=0, now=0.0):
    return core.init(population, mutator, key=root_key(seed), now=now)


def apply(state, event, now, mutator):
    """Applies one event through the core with the state's own event key."""
    return core.transition(state, event, now, core.event_key(state), mutator=mutator)


def assert_is_a_controller(cls: type) -> None:
    """``cls`` has every member of :class:`jaxpop.Controller`, each of the same kind
    (property or method) and, for methods, with the same parameters."""
    import inspect

    from jaxpop import Controller

    members = sorted(n for n in vars(Controller) if not n.startswith("_"))
    assert members == [
        "active_workers",
        "checkpoint_missing",
        "finish",
        "history",
        "maybe_get_worker_data",
        "reactivate",
        "set_eval",
        "set_eval_and_ask",
        "state",
    ]
    for name in members:
        want, got = vars(Controller)[name], getattr(cls, name)
        if isinstance(want, property):
            assert isinstance(got, property), name
        else:
            assert list(inspect.signature(got).parameters) == list(
                inspect.signature(want).parameters
            ), name


class SimulatedWorkers:
    """Deterministic workers driven through a controller's seed protocol, round robin.

    A worker's params are its quality, a float that each round grows by ``gain(quality,
    lr)`` (``lr`` from its meta_params) over ``step`` steps; it reports the quality.
    """

    def __init__(self, n: int, gain):
        self.at = [None] * n
        self.gain = gain

    def run(self, pop, rounds: int, step: int = 5) -> None:
        for _ in range(rounds):
            for w, a in enumerate(self.at):
                if a is None:
                    a = pop.maybe_get_worker_data(w, None, None, None, None)
                else:
                    ask = (w, a.generation_id, a.step, a.params, a.meta_params)
                    a = pop.maybe_get_worker_data(*ask) or a
                quality = 0.0 if a.params is None else a.params
                quality += self.gain(quality, a.meta_params["lr"])
                pop.set_eval(w, a.generation_id, a.step + step, quality, quality)
                self.at[w] = a.replace(params=quality, step=a.step + step)


def run_python(
    code: str, *args: str, timeout: float = 120, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """``python -c code *args`` in a new process on the CPU (after ``prefix``, a command
    such as ``setpriv ... --``), its output captured as text."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
