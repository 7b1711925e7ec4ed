"""jaxpop.schedules: schedule callables, curricula, FixedSchedule(callable), replay, export."""

from __future__ import annotations

import bisect
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mutator_registry import MUTATORS, NAMES
from test_properties import OPS, SETTINGS, Checker, check_run, population

from conftest import FakeClock
from jaxpop import PopulationController, WinnerTakeAllGenetic
from jaxpop import schedules as S
from jaxpop.history import History
from jaxpop.hparams import get_hparams, make_optimizer, set_hparams
from jaxpop.mutators import FixedSchedule
from jaxpop.records import Checkpoint

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `examples` is a top-level package of the repo, not installed
    sys.path.insert(0, str(ROOT))

A, B, C, D, E = ({"lr": v} for v in (1.0, 0.5, 0.1, 0.05, 0.01))


def close(x, y):
    return np.allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=1e-6, atol=1e-6)


def leaves_close(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        close(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# -- piecewise ----------------------------------------------------------------------------
def test_piecewise_at_its_boundaries_returns_the_stored_objects():
    p = S.piecewise({10: B, 0: A, 30: C})  # any order
    assert p.steps == (0, 10, 30) and p.values == (A, B, C)
    expected = {0: A, 1: A, 9: A, 10: B, 29: B, 30: C, 31: C, 10**9: C}
    for step, value in expected.items():
        assert p(step) is value
    assert p(np.int64(10)) is B and p(jnp.asarray(30)) is C and p(9.5) is A
    late = S.piecewise([(5, B), (7, C)])  # before the first point: the first value
    assert late(0) is B and late(6) is B and late(7) is C
    assert p.as_dict() == {0: A, 10: B, 30: C} and len(p) == 3
    assert p == S.piecewise({0: A, 10: B, 30: C}) and p != S.piecewise({0: A, 10: B})
    assert hash(p) == hash(S.piecewise({0: {"x": 1}, 10: B, 30: C}))


@pytest.mark.parametrize(
    "bad", [{}, {-1: A}, {1.5: A}, {True: A}, [(0, A), (0, B)], "abc", 3, [(0, A, 1)]]
)
def test_piecewise_rejects_bad_points(bad):
    with pytest.raises(ValueError):
        S.piecewise(bad)


def test_piecewise_is_immutable():
    p = S.piecewise({0: A})
    with pytest.raises(AttributeError):
        p.steps = (1,)


# -- per-leaf optax schedules ---------------------------------------------------------------
def test_per_leaf_follows_each_optax_schedule_and_keeps_constants():
    lr = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=10, decay_steps=100)
    hue = optax.linear_schedule(0.0, 0.3, transition_steps=50, transition_begin=20)
    s = S.per_leaf({"learning_rate": lr, "aug": {"hue": hue, "name": "crop"}, "b1": 0.9})
    for step in (0, 1, 10, 20, 21, 45, 70, 100, 500):  # start, change points, past the end
        out = s(step)
        assert close(out["learning_rate"], lr(step)) and close(out["aug"]["hue"], hue(step))
        assert out["b1"] == 0.9 and out["aug"]["name"] == "crop"
    assert close(s(10)["learning_rate"], 1e-2) and close(s(100)["learning_rate"], 0.0)
    assert close(s(20)["aug"]["hue"], 0.0) and close(s(70)["aug"]["hue"], 0.3)
    assert close(s(10**6)["aug"]["hue"], 0.3)


# -- curricula ------------------------------------------------------------------------------
POINTS = {10: {"hue": 0.0, "crop": 0.2, "mode": "a"}, 110: {"hue": 1.0, "crop": 0.2, "mode": "b"}}


def test_linear_curriculum_at_its_boundaries():
    c = S.curriculum(POINTS, kind="linear")
    for step, hue in {0: 0.0, 10: 0.0, 11: 0.01, 60: 0.5, 109: 0.99, 110: 1.0, 500: 1.0}.items():
        out = c(step)
        assert close(out["hue"], hue), (step, out)
        assert out["crop"] == 0.2 and type(out["crop"]) is float  # unchanged: held exactly
        assert out["mode"] == ("a" if step < 110 else "b")  # non-numeric: held per segment


def test_cosine_curriculum_is_half_a_cosine():
    c = S.curriculum(POINTS, kind="cosine")
    for step in (0, 10, 35, 60, 85, 110, 200):
        t = min(max(step - 10, 0), 100) / 100
        assert close(c(step)["hue"], 0.5 * (1 - math.cos(math.pi * t))), step
    assert close(c(60)["hue"], 0.5) and close(c(35)["hue"], (1 - math.cos(math.pi / 4)) / 2)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_segment_longer_than_int32_counts_and_jits(kind):
    """optax counts in int32: a segment of 2**40 steps is counted in fractions of it, on
    the host at any step and under jit with a traced step (int32 or float32)."""
    length = 2**40
    c = S.curriculum({0: {"lr": 1.0}, length: {"lr": 0.0}}, kind=kind)

    def expected(t):  # t: the fraction of the segment done
        return 1.0 - t if kind == "linear" else 0.5 * (1 + math.cos(math.pi * t))

    for step in (0, 5, 2**31, length // 4, length // 2, length - 1, length, 2**50):
        assert close(c(step)["lr"], expected(min(step / length, 1.0))), step
    jitted = jax.jit(c)
    assert close(jitted(5)["lr"], 1.0)  # an int32 step never reaches the segment's end
    assert close(jitted(jnp.float32(length // 2))["lr"], expected(0.5))
    assert close(jitted(jnp.float32(2**41))["lr"], 0.0)


def test_step_curriculum_and_mixed_kinds():
    pts = {0: {"s": 0.0}, 10: {"s": 1.0}, 20: {"s": 3.0}, 30: {"s": 2.0}}
    c = S.curriculum(pts, kind="step")
    assert [c(t)["s"] for t in (0, 9, 10, 19, 20, 29, 30, 99)] == [0, 0, 1, 1, 3, 3, 2, 2]
    mixed = S.curriculum(pts, kind=["linear", "step", "cosine"])
    assert close(mixed(5)["s"], 0.5) and close(mixed(10)["s"], 1.0)
    assert mixed(15)["s"] == 1.0 and close(mixed(20)["s"], 3.0)
    assert close(mixed(25)["s"], 2.5) and mixed(30)["s"] == 2.0 and mixed(31)["s"] == 2.0


def test_curriculum_with_one_point_is_constant_and_arrays_interpolate():
    assert S.curriculum({5: A})(0) is A and S.curriculum({5: A})(99) is A
    c = S.curriculum({0: {"w": np.zeros(3)}, 10: {"w": np.arange(3.0)}})
    assert close(c(5)["w"], [0.0, 0.5, 1.0])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn])
def test_low_precision_float_leaves_ramp(dtype, kind):
    # bfloat16 and float8 are numpy kind "V": they were held at the first point's value
    c = S.curriculum({0: {"a": dtype(0)}, 10: {"a": dtype(1)}}, kind=kind)
    assert float(S.to_host(c(5))["a"]) == pytest.approx(0.5)
    jitted = S.curriculum({0: {"a": jnp.zeros((), dtype)}, 10: {"a": jnp.ones((), dtype)}})
    assert float(jax.jit(jitted)(jnp.int32(5))["a"]) == pytest.approx(0.5)


def test_int_ends_ramp_as_floats_and_a_step_that_is_no_number_is_refused():
    # 0 -> 1 written with ints is a ramp (a probability), not a step at the midpoint
    c = S.curriculum({0: {"p": 0, "lr": 0.1}, 100: {"p": 1, "lr": 0.2}})
    assert S.to_host(c(50))["p"] == pytest.approx(0.5)
    # a NaN step was answered with the last point's values; inf has no place either
    for step in (math.nan, math.inf, np.float32(np.nan)):
        with pytest.raises(ValueError, match="finite"):
            c(step)


@pytest.mark.parametrize(
    "points, kind",
    [
        ({0: {"a": 1.0}, 10: {"b": 1.0}}, "linear"),  # different keys
        ({0: {"a": 1.0}, 10: {"a": 2.0}}, "quadratic"),
        ({0: {"a": 1.0}, 10: {"a": 2.0}}, ["linear", "step"]),
        ({}, "linear"),
    ],
)
def test_curriculum_rejects_bad_input(points, kind):
    with pytest.raises(ValueError):
        S.curriculum(points, kind)


def test_an_int_a_float32_cannot_hold_is_refused_in_a_ramped_leaf():
    """Under jit a ramped leaf comes back in the ramp's float32 at every step, its held
    ints too: 16,777,217 before the first point came back as 16,777,216, 20,000,001 held
    between equal points as 20,000,000, while the host gave them as given (hostile
    review, helper-291). Refused; held alone (kind="step"), such an int is exact."""
    for points, kind in (
        ({5: {"n": 16_777_217}, 10: {"n": 33_554_435}}, "linear"),
        ({0: {"n": 100}, 10: {"n": 20_000_001}, 20: {"n": 20_000_001}}, "linear"),
        ({0: {"n": 100}, 10: {"n": 200}, 20: {"n": 20_000_001}}, ["linear", "step"]),
        ({0: {"n": np.array([1, 2**31 - 1])}, 10: {"n": np.array([2, 3])}}, "cosine"),
        # (2**53 + 1: a float64 rounds it to 2**53 too, helper-294)
        (
            {0: {"n": np.array([2**53 + 1, 0], np.int64)}, 10: {"n": np.zeros(2, np.int64)}},
            "linear",
        ),
    ):
        with pytest.raises(ValueError, match="an int a float32 does not hold exactly"):
            S.curriculum(points, kind)
    held = S.curriculum({5: {"n": 16_777_217}, 10: {"n": 33_554_435}}, kind="step")
    assert int(jax.jit(held)(jnp.int32(0))["n"]) == 16_777_217
    fine = S.curriculum({0: {"n": 16_777_216, "lr": 0.1}, 10: {"n": 2**30, "lr": 0.2}})
    assert int(jax.jit(fine)(jnp.int32(10))["n"]) == 2**30 == S.to_host(fine(10))["n"]


def test_int_ends_of_any_size_ramp_without_wrapping_and_unrepresentable_ends_are_refused():
    # int32 arithmetic (or an int64 held as int32 without x64) wrapped around: the ramp
    # from 0 to 2**40 was 0.0 at its middle (np.int64) or raised jax's OverflowError
    for end in (2**40, np.int64(2**40), np.array([2**40])):
        c = S.curriculum({0: {"a": 0}, 100: {"a": end}})
        assert close(S.to_host(c(50))["a"], 2**39)
        assert S.to_host(c(100))["a"] is end or np.array_equal(c(100)["a"], end)  # held
    # (2**31 - 128: the largest int32 a float32 holds exactly; their difference wraps)
    extremes = S.curriculum({0: {"a": np.int32(-(2**31))}, 100: {"a": np.int32(2**31 - 128)}})
    assert abs(S.to_host(extremes(50))["a"]) < 1.0  # (was 2**31: the difference wrapped)
    up = S.curriculum({0: {"a": np.uint8(10)}, 100: {"a": np.uint8(200)}}, kind="cosine")
    assert close(S.to_host(up(50))["a"], 105.0)  # (uint8 200 - 10 ... 10 - 200 wrapped)
    big = 2**70  # past int64, within float32: ramps; held (step), it is returned exactly
    assert close(S.to_host(S.curriculum({0: {"a": 0}, 10: {"a": big}})(5))["a"], big / 2)
    assert S.curriculum({0: {"a": big}, 10: {"a": 1}}, kind="step")(5)["a"] == big
    for end in (2**200, 2**2000, 1e300, np.float64(-1e300)):  # no float32 holds them
        with pytest.raises(ValueError, match="range"):
            S.curriculum({0: {"a": 0.0}, 10: {"a": end}})
    with pytest.raises(ValueError, match="difference"):  # each fits; their difference not
        S.curriculum({0: {"a": -3e38}, 10: {"a": 3e38}})
    # under jit a held value must fit the dtype JAX holds it in (it wrapped to 0)
    held = S.curriculum({0: {"a": np.int64(2**40), "b": 0.0}, 10: {"a": np.int64(2**40), "b": 1.0}})
    assert held(5)["a"] == 2**40
    with pytest.raises(ValueError, match="does not fit in int32"):
        jax.jit(held)(5)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_ramp_to_or_from_inf_returns_each_points_value_at_its_point(kind):
    inf = math.inf
    for start, end in [(0.0, inf), (-inf, inf), (1.0, -inf), (1.0, math.nan)]:
        c = S.curriculum({10: {"a": start}, 20: {"a": end}}, kind=kind)
        for f in (c, jax.jit(c)):
            at = {t: float(S.to_host(f(t))["a"]) for t in (0, 10, 15, 20, 30)}
            # at its first point the ramp gave inf - inf = NaN (or 1 - NaN)
            assert S.tree_equal(at[0], float(start)) and S.tree_equal(at[10], float(start))
            assert S.tree_equal(at[20], float(end)) and S.tree_equal(at[30], float(end))
    # in between, a finite and an infinite end: the infinite value, either way (optax's
    # arithmetic gave NaN toward inf and inf from it); between -inf and inf: NaN
    between = {
        (0.0, inf): inf,
        (inf, 0.0): inf,
        (1.0, -inf): -inf,
        (-inf, 1.0): -inf,
        (-inf, inf): math.nan,
        (1.0, math.nan): math.nan,
    }
    for (start, end), expected in between.items():
        c = S.curriculum({0: {"a": start}, 10: {"a": end}}, kind=kind)
        for f in (c, jax.jit(c)):
            assert S.tree_equal(float(S.to_host(f(5))["a"]), expected), (start, end)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize(
    "start, end, length",
    [
        (1e-8, 1.0, 2**25),  # linear: step 1 gave 0.0, below both ends
        (1e-3, 3.0, 1_000_000),  # cosine: steps 1-3 gave 0.00099993, below the start
        (1e-6, 1.0, 100_000),  # cosine: 1.3% off at step 1
        (-0.2098, -1.0, 2**31 + 5),  # (counted in fractions: past int32)
        (3.0, 1e-3, 1_000_000),
    ],
)
def test_a_long_ramp_starts_at_its_start_and_stays_between_its_ends(kind, start, end, length):
    """optax's arithmetic, (a - b) * (1 - w) + b, rounds a small start away once 1 - w
    rounds to 1: the first steps of a long segment left the range of its ends (found by
    helper-159). A ramp is counted from its start and kept between its ends."""
    c = S.curriculum({0: {"a": start}, length: {"a": end}}, kind=kind)
    low, high = np.float32(min(start, end)), np.float32(max(start, end))
    steps = [1, 2, 3, 10, length // 2, length - 1]
    for f, at in ((c, steps), (jax.jit(c), [t for t in steps if t < 2**31])):  # (int32)
        values = [float(S.to_host(f(t))["a"]) for t in at]
        assert all(low <= v <= high for v in values), values
        # the first steps move by about (end - start) * their share of the way
        share = 1 / length if kind == "linear" else (math.pi / 2 / length) ** 2
        expected = start + (end - start) * share
        assert values[0] == pytest.approx(expected, rel=1e-3, abs=1e-12)
        ordered = values if end > start else values[::-1]
        assert ordered == sorted(ordered)


# -- composition ----------------------------------------------------------------------------
def test_join_counts_steps_from_each_boundary_like_optax():
    parts = [optax.constant_schedule(1.0), optax.linear_schedule(1.0, 0.0, 10), lambda t: 5.0 + t]
    ours = S.join([S.per_leaf({"x": p}) for p in parts], [10, 30])
    theirs = optax.join_schedules(parts, [10, 30])
    steps = jnp.arange(0, 50)
    for step in (0, 9, 10, 15, 20, 29, 30, 31, 49):
        assert close(ours(step)["x"], theirs(step)), step
    assert close(jax.jit(jax.vmap(ours))(steps)["x"], theirs(steps))
    host = S.join([S.constant("warm"), S.constant("main")], [3])  # on the host: any leaves
    assert [host(t) for t in (0, 2, 3, 9)] == ["warm", "warm", "main", "main"]


def test_join_and_merge_reject_bad_input():
    with pytest.raises(ValueError):
        S.join([S.constant(A), S.constant(B)], [])
    with pytest.raises(ValueError):
        S.join([S.constant(A), S.constant(B), S.constant(C)], [5, 5])
    with pytest.raises(ValueError):
        S.merge(S.constant({"a": 1}), S.constant({"a": 2}))(0)
    with pytest.raises(TypeError):
        S.merge(S.constant({"a": 1}), S.constant(3))(0)


def test_merge_joins_dicts():
    s = S.merge(S.per_leaf({"lr": optax.linear_schedule(1.0, 0.0, 10)}), S.constant({"b": 2}))
    out = s(5)
    assert set(out) == {"lr", "b"} and close(out["lr"], 0.5) and out["b"] == 2


# -- jit ------------------------------------------------------------------------------------
def schedule_kinds():
    return {
        "piecewise": S.piecewise({0: {"lr": 1.0, "w": 0.0}, 7: {"lr": 0.5, "w": 2.0}}),
        "per_leaf": S.per_leaf(
            {"lr": optax.warmup_cosine_decay_schedule(0.0, 1.0, 5, 40), "w": 0.25}
        ),
        "linear": S.curriculum({3: {"lr": 0.0, "w": 1.0}, 23: {"lr": 1.0, "w": 1.0}}),
        "cosine": S.curriculum({0: {"lr": 2.0, "w": 0.0}, 30: {"lr": 1.0, "w": 3.0}}, "cosine"),
        "step": S.curriculum({0: {"lr": 2.0, "w": 0.0}, 9: {"lr": 1.0, "w": 3.0}}, "step"),
        "joined": S.join(
            [
                S.piecewise({0: {"lr": 1.0, "w": 0.0}}),
                S.curriculum({0: {"lr": 1.0, "w": 0.0}, 10: {"lr": 0.0, "w": 1.0}}),
            ],
            [12],
        ),
    }


@pytest.mark.parametrize("name", sorted(schedule_kinds()))
def test_every_kind_is_jittable_with_a_traced_step(name):
    schedule = schedule_kinds()[name]
    steps = jnp.arange(50)
    batched = jax.jit(jax.vmap(schedule))(steps)
    one = jax.jit(schedule)
    for step in range(50):
        host = schedule(step)
        assert leaves_close(jax.tree.map(lambda x, i=step: x[i], batched), host), step
        if step % 7 == 0:
            assert leaves_close(one(jnp.int32(step)), host), step


def test_a_schedule_in_a_jitted_step_feeds_inject_hyperparams_without_recompiling():
    schedule = S.merge(
        S.per_leaf({"learning_rate": optax.warmup_cosine_decay_schedule(0.0, 0.1, 5, 40)}),
        S.curriculum({0: {"b1": 0.5}, 10: {"b1": 0.9}, 30: {"b1": 0.8}}, kind=["cosine", "step"]),
    )
    tx = make_optimizer(optax.adam, S.to_host(schedule(0)))
    traces = []

    @jax.jit
    def train_step(params, opt_state, step):
        traces.append(1)  # runs only while tracing
        opt_state = set_hparams(opt_state, schedule(step))
        updates, opt_state = tx.update(params, opt_state, params)  # grad of 0.5 * |p|^2
        return optax.apply_updates(params, updates), opt_state

    params = jnp.ones(3)
    opt_state = tx.init(params)
    for step in range(45):
        params, opt_state = train_step(params, opt_state, jnp.asarray(step, jnp.int32))
        expected = schedule(step)
        held = get_hparams(opt_state)
        assert leaves_close({k: held[k] for k in expected}, expected), step
    assert len(traces) == 1


def test_non_numeric_leaves_under_jit_raise_a_clear_error():
    s = S.piecewise({0: {"mode": "a"}, 5: {"mode": "b"}})
    with pytest.raises(TypeError, match="numeric"):
        jax.jit(s)(3)


def test_a_step_that_is_nan_in_any_dtype_is_refused_on_the_host():
    p = S.piecewise({0: A, 10: B})
    nans = [np.longdouble("nan"), np.longdouble("inf"), jnp.asarray(np.nan, jnp.bfloat16)]
    for schedule in (p, S.join([S.constant(A), S.constant(B)], [10]), S.curriculum({0: A, 10: B})):
        for step in nans:  # a longdouble NaN was answered with the last piece
            with pytest.raises(ValueError, match="finite"):
                schedule(step)
    assert p(np.longdouble(9.5)) is A and p(np.longdouble(10)) is B
    assert S.host_step(np.longdouble(2.5)) == 2.5 and type(S.host_step(np.longdouble(2))) is float
    for step in (True, np.complex64(1), jnp.asarray(True)):
        with pytest.raises(TypeError, match="real number"):
            p(step)


@pytest.mark.parametrize(
    "dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.int8, jnp.uint8, jnp.int32, jnp.uint32]
)
def test_a_step_picks_the_same_piece_on_the_host_and_under_jit_in_every_dtype(dtype):
    """Steps next to boundaries that the dtype cannot all hold exactly: a float32 step
    16777216.0 is before a boundary at 16777217 (under jit it was rounded onto it), a
    uint32 step past 2**31 raised OverflowError, and a boundary past the dtype is never
    reached."""
    bounds = [0, 3, 100, 255, 256, 2049, 65505, 2**24 + 1, 2**31 + 5, 2**32 + 7, 2**40 + 1]
    p = S.piecewise({b: {"i": i} for i, b in enumerate(bounds)})
    j = S.join([S.constant({"i": i}) for i in range(len(bounds))], bounds[1:])
    c = S.curriculum({b: {"i": float(i)} for i, b in enumerate(bounds)}, kind="step")
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        near = {b + d for b in bounds for d in (-1, 0, 1)} | {int(info.max), int(info.min)}
        steps = [s for s in near if info.min <= s <= info.max]
    else:
        near = {float(b) + d for b in bounds for d in (-1.0, -0.5, 0.0, 0.5, 1.0)}
        with np.errstate(over="ignore"):  # (past float16's range: inf, left out)
            steps = sorted({float(x) for x in np.asarray(sorted(near), dtype)})
        steps = [s for s in steps if math.isfinite(s)]
    host_steps = np.asarray(steps, dtype)  # the host gets the same (rounded) values
    jitted = {name: jax.jit(jax.vmap(f)) for name, f in (("p", p), ("j", j), ("c", c))}
    for name, schedule in (("p", p), ("j", j), ("c", c)):
        traced = jitted[name](host_steps)["i"]
        for k, step in enumerate(host_steps):
            expected = schedule(step)["i"]
            assert expected == bisect.bisect_right(bounds, math.floor(float(step))) - 1 or (
                float(step) < 0 and expected == 0
            ), (name, step)
            assert int(traced[k]) == expected, (name, dtype, step)


def test_a_traced_nan_step_gets_the_last_piece_and_a_bool_is_refused():
    p = S.piecewise({0: {"i": 0}, 10: {"i": 1}, 20: {"i": 2}})
    j = S.join([S.constant({"i": 0}), S.constant({"i": 1}), S.constant({"i": 2})], [10, 20])
    for schedule in (p, j):
        assert int(jax.jit(schedule)(jnp.float32(np.nan))["i"]) == 2
        with pytest.raises(TypeError, match="real number"):
            jax.jit(schedule)(jnp.asarray(True))
    with pytest.raises(ValueError, match="below 0"):  # the steps counted from it overflow
        jax.jit(S.join([S.constant(0), S.constant(1)], [-5]))(jnp.uint32(3))


def test_piecewise_with_traced_values_or_a_vector_step_runs_under_jit_and_vmap():
    """A Piecewise built from traced values (inside vmap over a learning rate) raised
    JAX's TracerArrayConversionError, and a vector step under jit raised from
    lax.full_like (review): both worked before the searchsorted path."""

    def scheduled(lr, step):
        return S.piecewise({0: {"lr": lr}, 10: {"lr": lr / 10}})(step)["lr"]

    out = jax.vmap(scheduled)(jnp.asarray([0.1, 0.2]), jnp.asarray([3, 12]))
    np.testing.assert_allclose(np.asarray(out), [0.1, 0.02], rtol=1e-6)
    assert float(jax.jit(scheduled)(jnp.float32(0.1), jnp.int32(12))) == pytest.approx(0.01)
    p = S.piecewise({0: {"lr": 0.1, "w": np.float32(1.0)}, 10: {"lr": 0.2, "w": np.float32(2)}})
    out = jax.jit(p)(jnp.arange(0, 20, 5))
    np.testing.assert_allclose(np.asarray(out["lr"]), [0.1, 0.1, 0.2, 0.2], rtol=1e-6)
    assert np.asarray(out["w"]).tolist() == [1.0, 1.0, 2.0, 2.0]


def test_a_ramp_starts_exactly_at_its_first_value():
    """(a - b) + b rounded a small start away: a ramp from 1e-8 to 1 gave 0.0 at its
    first step, on the host and under jit (review)."""
    for kind in ("linear", "cosine"):
        c = S.curriculum({0: {"x": 1e-8}, 100: {"x": 1.0}}, kind=kind)
        for out in (c(0), jax.jit(c)(jnp.int32(0))):
            assert float(out["x"]) == pytest.approx(1e-8, rel=1e-6), kind
        assert float(c(100)["x"]) == 1.0


def test_piecewise_with_thousands_of_points_compiles_in_well_under_a_second():
    """One searchsorted over the points: a chain of 4,000 where's took ~20 s to compile."""
    n = 4000
    p = S.piecewise({10 * i: {"lr": 1.0 / (i + 1), "w": np.full(2, i, np.int32)} for i in range(n)})
    start = time.perf_counter()
    out = jax.block_until_ready(jax.jit(p)(jnp.int32(12_345)))
    elapsed = time.perf_counter() - start
    assert float(out["lr"]) == pytest.approx(1 / 1235) and out["w"].tolist() == [1234, 1234]
    assert elapsed < 5.0, elapsed  # (~0.2 s here; the bound leaves room for a slow machine)
    steps = jnp.asarray([0, 9, 10, 39_990, 39_999, 40_000, 10**9], jnp.int32)
    batched = jax.jit(jax.vmap(p))(steps)
    for k, step in enumerate(steps.tolist()):
        assert leaves_close(jax.tree.map(lambda x, k=k: x[k], batched), p(step)), step
    weak = jax.jit(S.piecewise({0: {"lr": 0.1}, 5: {"lr": 1}}))(jnp.int32(7))["lr"]
    assert weak.dtype == jnp.float32 and weak.weak_type  # as a where of Python numbers


# -- helpers -----------------------------------------------------------------------------------
def test_to_host_and_tree_equal():
    out = S.to_host({"a": jnp.float32(0.5), "b": jnp.arange(2), "c": np.float32(1), "d": "x"})
    assert type(out["a"]) is float and out["a"] == 0.5
    assert isinstance(out["b"], np.ndarray) and out["c"].dtype == np.float32 and out["d"] == "x"
    assert S.tree_equal({"a": [1.0, float("nan")]}, {"a": [1.0, float("nan")]})
    assert not S.tree_equal({"a": 1}, {"a": 1.0})
    assert not S.tree_equal({"a": (1,)}, {"a": [1]})
    assert not S.tree_equal(np.zeros(2, np.float32), np.zeros(2))
    assert S.tree_equal(np.arange(3), np.arange(3)) and not S.tree_equal({"a": 1}, {"b": 1})


def test_tree_equal_and_to_host_on_plain_values_as_on_any_pytree():
    """The direct paths for Python scalars and flat dicts (no ``jax.tree`` walk) answer
    as the general one: types differ, -0.0 is not 0.0, NaN is NaN, keys in JAX's order."""
    same = [0.5, -0.0, math.nan, math.inf, 1, 2**70, True, "x", None, {"lr": math.nan, "o": None}]
    for value in same:
        assert S.tree_equal(value, value) and S.tree_equal([value], [value])
    differ = [
        (0.0, -0.0),
        (1, 1.0),
        (1, True),
        (0, False),
        ("1", 1),
        (None, 0.0),
        (math.nan, 1.0),
        ({"lr": 0.0}, {"lr": -0.0}),
        ({"lr": 1}, {"lr": True}),
        ({"a": None}, {"a": 0}),
        ({"a": 1.0}, {"a": 1.0, "b": 1.0}),
        ({"a": 1.0}, {"a": np.float64(1.0)}),
    ]
    for a, b in differ:
        assert not S.tree_equal(a, b) and not S.tree_equal(b, a), (a, b)
    flat = {"wd": 0.1, "lr": 2, "name": "adam", "off": None, "z": 1j}
    out = S.to_host(flat)
    assert out == flat and out is not flat and list(out) == list(jax.tree.map(lambda x: x, flat))
    assert all(out[k] is flat[k] for k in flat)
    nested = S.to_host({"b": {"x": jnp.float32(1.5)}, "a": 1})  # (the general path)
    assert list(nested) == ["a", "b"] and type(nested["b"]["x"]) is float


def test_a_jitted_join_counts_float32_steps_past_2_24_from_the_exact_boundary():
    """float32 holds 16777217 as 16777216: a traced step was counted from there, a whole
    step ahead of the host's count, so a ramp after such a point ran a step ahead under
    jit (hostile review, helper-205); now the rounding is taken off the count."""
    ramp = S.join(
        [S.constant({"c": jnp.float32(-1)}), lambda s: {"c": jnp.asarray(s, jnp.float32)}],
        [16777217],
    )
    curriculum = S.curriculum({0: {"a": 0.0}, 16777217: {"a": 1.0}, 16777227: {"a": 2.0}})
    steps = np.array([16777216, 16777218, 16777220, 16777224, 16777228], np.float32)
    for schedule in (ramp, curriculum):
        traced = S.to_host(jax.jit(jax.vmap(schedule))(steps))
        for i, step in enumerate(steps):
            host = S.to_host(schedule(step))
            assert {k: float(v[i]) for k, v in traced.items()} == host, (step, host)
    # a boundary float32 holds exactly is counted from as before (no correction)
    exact = S.join([S.constant({"c": 0.0}), lambda s: {"c": s}], [16777216])
    assert float(jax.jit(exact)(np.float32(16777220.0))["c"]) == 4.0
    # a negative one is counted from where the dtype holds it, as before: there the count
    # is a sum that rounds, and a correction after it rounded twice (helper-207)
    behind = S.join([S.constant({"c": np.float16(0)}), lambda s: {"c": s}], [-2049])
    for step in (np.float16(1.5), np.float16(1.0009766)):
        assert jax.jit(behind)(step)["c"] == step - np.float16(-2049), step
    # one below the step dtype's range cannot be counted from: said, not OverflowError
    far = S.join([S.constant({"c": 0.0}), lambda s: {"c": s}], [-100001])
    assert S.to_host(far(np.float16(3.0))) == {"c": 100004.0}  # (the host counts exactly)
    with pytest.raises(ValueError, match="below the range of float16"):
        jax.jit(far)(jnp.float16(3.0))
    for boundary in (-(10**400), -(2**1100)):  # (past float64's range too)
        with pytest.raises(ValueError, match="below the range of float16"):
            jax.jit(S.join([S.constant({"c": 0.0}), S.constant({"c": 1.0})], [boundary]))(
                jnp.float16(3.0)
            )
    # bfloat16 (ml_dtypes) takes no int past int64: such a boundary within its range works
    wide = S.join(
        [S.constant({"c": 0.0}), S.constant({"c": 1.0}), S.constant({"c": 2.0})], [-(2**64), 10]
    )
    assert float(jax.jit(wide)(jnp.bfloat16(20.0))["c"]) == 2.0 == wide(jnp.bfloat16(20.0))["c"]
    # ... nor a rounding past int64, and its host steps past 2**63 are placed (int()
    # wrapped them to -2**63: the first piece; helper-210)
    far_up = S.join([S.constant({"c": 0.0}), lambda t: {"c": t}], [2**72 + 2**63])
    step = jnp.bfloat16(2.0**73)
    assert float(jax.jit(far_up)(step)["c"]) == float(jnp.bfloat16(2.0**73 - 2**72 - 2**63))
    pieces = S.join([S.constant({"c": 0}), S.constant({"c": 1})], [100])
    assert (
        pieces(jnp.bfloat16(2.0**63))["c"] == 1 == int(jax.jit(pieces)(jnp.bfloat16(2.0**63))["c"])
    )
    # one float16 rounds to its lowest finite value is counted from as before (helper-208)
    edge = S.join(
        [S.constant({"c": 0.0}), S.constant({"c": 1.0}), S.constant({"c": 2.0})], [-65505, 10]
    )
    assert float(jax.jit(edge)(np.float16(20.0))["c"]) == 2.0


def test_tabulate_keeps_only_changes():
    c = S.curriculum({0: {"h": 0.0}, 4: {"h": 1.0}}, kind="linear")
    t = S.tabulate(c, 12, every=2)
    assert t.steps == (0, 2, 4) and [v["h"] for v in t.values] == [0.0, 0.5, 1.0]
    assert all(type(v["h"]) is float for v in t.values)
    # start=0.5 was cut to 0, stop=9.5 to 9: a table of steps not asked for
    for bad in ({"start": 0.5}, {"stop": 9.5}, {"start": True}):
        with pytest.raises(TypeError, match="must be an int"):
            S.tabulate(c, **{"stop": 12, **bad})
    assert S.tabulate(c, np.int64(12), start=np.int32(4)).steps == (4,)
    assert S.tabulate(c, jnp.asarray(12), start=jnp.asarray(4)).steps == (4,)  # (a pop.step)


# -- FixedSchedule with a callable ---------------------------------------------------------------
def follow(pop, steps, worker_id=0, eval_every=None):
    """A worker that asks every step; returns the meta_params it trained each step with."""
    gen, meta, params, used, step = None, None, (), [], 0
    while step < steps:
        data = pop.maybe_get_worker_data(worker_id, gen, step, params, meta)
        if data is not None:
            gen, meta, step = data.generation_id, data.meta_params, data.step
            params = () if data.params is None else data.params
        used.append(meta)
        params = (*params, meta)  # the parameters remember what trained them
        step += 1
        if eval_every and step % eval_every == 0:
            pop.set_eval(worker_id, gen, step, params, 1.0)
    return used, params


def test_fixed_schedule_every_k_reevaluates_on_the_grid_and_skips_unchanged_values():
    calls = []

    def schedule(step):
        calls.append(step)
        return {"lr": jnp.float32(1.0 if step < 10 else 0.5), "name": "sgd"}

    mutator = FixedSchedule(schedule, every=4, on_ask=True)
    pop = PopulationController([{"lr": 1.0, "name": "sgd"}], mutator)
    used, _ = follow(pop, 20)
    # evaluated at 0, 4, 8 (unchanged), 12 (the grid point at or below 10 ... 12), 16
    assert sorted(set(calls)) == [0, 4, 8, 12, 16]
    assert [m["lr"] for m in used] == [1.0] * 12 + [0.5] * 8
    assert all(type(m["lr"]) is float for m in used)  # jax scalars became Python floats
    assert len(pop.history) == 2  # one change, one new generation
    assert pop.state.mutator_state == (5,)  # 0, 4, 8, 12, 16 passed


def test_fixed_schedule_callable_first_grid_point_and_evals_only():
    s = S.piecewise({0: A, 10: B, 30: C})
    pop = PopulationController([{"lr": 99.0}], FixedSchedule(s, every=5, on_ask=True))
    used, _ = follow(pop, 40)
    assert used == [A] * 10 + [B] * 20 + [C] * 10
    evals_only = PopulationController([A], FixedSchedule(s, every=5))
    gen = evals_only.active_workers[0].generation_id
    evals_only.set_eval(0, gen, 12, "p12", 1.0)  # past 10: the grid point 10 applies
    w = evals_only.active_workers[0]
    assert w.meta_params == B and w.step == 12 and w.params == "p12"


@pytest.mark.parametrize("every", [0, -3, 1.5, True, "2"])
def test_fixed_schedule_rejects_bad_every(every):
    with pytest.raises(ValueError):
        FixedSchedule(lambda step: A, every=every)


def test_fixed_schedule_callable_restarts_exactly(tmp_path):
    schedule = S.curriculum({0: {"lr": 1.0}, 30: {"lr": 0.0}}, kind="cosine")

    def run(log_dir, restart_at):
        gen, meta, step, used = None, None, 0, []
        pop = PopulationController([{"lr": 1.0}], FixedSchedule(schedule, every=3), log_dir, seed=0)
        while step < 40:
            if step == restart_at:  # the controller restarts; the worker keeps going
                pop.close()
                pop = PopulationController(
                    [{"lr": 1.0}], FixedSchedule(schedule, every=3), log_dir, seed=0
                )
            data = pop.maybe_get_worker_data(0, gen, step, None, meta)
            if data is not None:
                gen, meta, step = data.generation_id, data.meta_params, data.step
            used.append(meta)
            step += 1
            if step % 5 == 0:
                pop.set_eval(0, gen, step, None, float(step))
        state = pop.state
        pop.close()
        return used, state

    used, state = run(tmp_path / "a", restart_at=None)
    used_r, state_r = run(tmp_path / "b", restart_at=17)
    assert used == used_r and state.mutator_state == state_r.mutator_state == (14,)
    contents = [(c.ref, c.parent, c.meta_params, c.value) for c in state.history.checkpoints()]
    assert contents == [
        (c.ref, c.parent, c.meta_params, c.value) for c in state_r.history.checkpoints()
    ]
    assert all(isinstance(v, int) for v in state.mutator_state)


@SETTINGS
@given(
    n=st.integers(1, 3),
    every=st.integers(1, 4),
    period=st.integers(1, 6),
    restarts=st.booleans(),
    ops=OPS,
)
def test_fixed_schedule_callable_properties(n, every, period, restarts, ops):
    """The core's invariants (tests/test_properties.py) hold for the callable form."""

    def schedule(step):
        return {"h": float((step // period) % 3)}

    checker = Checker(strict_chain=not restarts)
    check_run(FixedSchedule(schedule, every=every), population(n), ops, checker, restarts=restarts)


# -- replay ----------------------------------------------------------------------------------
def build(entries):
    """A History from ``(gen, step, meta, value, parent)`` rows, with params as a
    controller records them for workers that save: a root has none (fresh parameters), a
    copy holds its source's, any other checkpoint its own handle ``"gen@step"``."""
    history = History()
    for gen, step, meta, value, parent in entries:
        if parent is None:
            params = None
        elif parent[0] != gen:  # a copy: its source's params (None: fresh parameters)
            source = history.get_checkpoint(*parent)
            params = None if source is None else source.params
        else:
            params = f"{gen}@{step}"
        history = history.add(Checkpoint(params, meta, gen, value, parent, step, 0.0))
    return history


def hand_built_lineage():
    """Three roots; four exploits, one copying mid-generation, two back to an old meta."""
    nan = float("nan")
    rows = [
        ("r0", 0, A, None, None), ("r1", 0, B, None, None), ("r2", 0, C, None, None),
        ("r0", 10, A, 3.0, ("r0", 0)), ("r1", 10, B, 2.0, ("r1", 0)),
        ("r2", 10, C, 0.001, ("r2", 0)),
        ("r0", 20, A, 3.0, ("r0", 10)), ("r1", 20, B, 1.0, ("r1", 10)),
        ("g3", 20, D, None, ("r1", 20)),  # exploit 1: copies r1 at 20, new lr D
        ("g3", 30, D, 0.9, ("g3", 20)), ("g3", 40, D, 0.8, ("g3", 30)),
        ("g4", 30, E, None, ("g3", 30)),  # exploit 2: copies g3 mid-way (g3 goes on to 40)
        ("g4", 40, E, None, ("g4", 30)),  # recorded by an ask, without a value
        ("g4", 50, E, 0.7, ("g4", 40)),
        ("g5", 50, B, None, ("g4", 50)),  # exploit 3: back to an old lr
        ("g5", 60, B, 0.6, ("g5", 50)), ("g5", 70, B, 0.5, ("g5", 60)),
        ("g6", 70, B, None, ("g5", 70)),  # exploit 4: same lr as its source
        ("g6", 80, B, 0.4, ("g6", 70)),
        ("r0", 80, A, nan, ("r0", 20)), ("g7", 80, A, 0.45, ("r0", 20)),
    ]  # fmt: skip
    return build(rows)


def test_from_lineage_of_a_hand_built_lineage_with_several_exploits():
    h = hand_built_lineage()
    best = S.best_final(h)  # final step 80: g6 (0.4) beats g7 (0.45) and r0 (NaN)
    assert best.ref == ("g6", 80)
    schedule = S.from_lineage(h)
    assert schedule.as_dict() == {0: B, 20: D, 30: E, 50: B}
    trajectory = [B] * 20 + [D] * 10 + [E] * 20 + [B] * 30
    assert [schedule(t) for t in range(80)] == trajectory
    # the copied member's own later history (g3 at 30..40) is not in g4's schedule
    assert S.from_lineage(h, "g4").as_dict() == {0: B, 20: D, 30: E}
    assert S.from_lineage(h, "g3").as_dict() == {0: B, 20: D}
    assert S.from_lineage(h, "g3", step=20).as_dict() == {0: B, 20: D}
    assert S.from_lineage(h, "r1", step=10).as_dict() == {0: B}
    assert S.from_lineage(h, "g7").as_dict() == {0: A}  # copied with the same lr: one piece
    # replay: a fresh single worker trains with exactly that trajectory
    pop = PopulationController([schedule(0)], FixedSchedule(schedule))
    used, params = follow(pop, 80, eval_every=10)
    assert used == trajectory and list(params) == trajectory
    final = pop.active_workers[0].generation_id
    assert S.from_lineage(pop.history, final) == schedule


def test_best_final_ranks_nan_and_inf_last_and_needs_an_evaluation():
    inf, nan = float("inf"), float("nan")
    h = build([("a", 0, A, None, None), ("b", 0, B, None, None), ("c", 0, C, None, None)])
    with pytest.raises(ValueError, match="no evaluated"):
        S.best_final(h)
    with pytest.raises(ValueError, match="no evaluated"):
        S.from_lineage(h)
    h = h.add_all(
        Checkpoint(None, meta, gen, value, (gen, 0), 5, 0.0)
        for gen, meta, value in (("a", A, nan), ("b", B, inf), ("c", C, 1e9))
    )
    assert S.best_final(h).generation_id == "c"
    h = h.add(Checkpoint(None, C, "c", nan, ("c", 5), 6, 0.0))  # c diverges at step 6
    assert S.best_final(h).ref == ("c", 5)  # its step-6 NaN does not hide its finite 1e9
    # both members finite at step 10 diverge at step 20: the best at step 10 (the last
    # finite step), not the first created at step 20 (it was, with NaN)
    both = build(
        [
            ("x", 0, A, None, None),
            ("y", 0, B, None, None),
            ("x", 10, A, 0.9, ("x", 0)),
            ("y", 10, B, 0.1, ("y", 0)),
            ("x", 20, A, nan, ("x", 10)),
            ("y", 20, B, nan, ("y", 10)),
        ]
    )
    assert S.best_final(both).ref == ("y", 10)
    assert S.from_lineage(both).values[-1] == B
    only = build([("x", 0, A, nan, None)])  # nothing finite at all: the NaN counts
    assert S.best_final(only).ref == ("x", 0)
    # a member that diverged at a later step never wins over a finite value
    h = h.add(Checkpoint(None, A, "a", 0.5, ("a", 0), 4, 0.0))
    h = h.add(Checkpoint(None, A, "a", 0.7, ("a", 4), 5, 0.0))  # (replaces a's NaN)
    assert S.best_final(h).ref == ("a", 5)
    assert S.from_lineage(h).values[-1] == A
    tie = build(
        [
            ("x", 0, A, None, None),
            ("y", 0, B, None, None),
            ("x", 3, A, 1.0, ("x", 0)),
            ("y", 3, B, 1.0, ("y", 0)),
        ]
    )
    assert S.best_final(tie).generation_id == "x"  # a tie: the first created


def test_from_lineage_errors():
    h = hand_built_lineage()
    with pytest.raises(KeyError):
        S.from_lineage(h, "nope")
    with pytest.raises(KeyError):
        S.from_lineage(h, "g3", step=25)
    with pytest.raises(ValueError, match="generation_id"):
        S.from_lineage(h, step=10)
    backwards = build([("a", 0, A, None, None), ("a", 10, A, 1.0, ("a", 0))]).add(
        Checkpoint(None, B, "b", 1.0, ("a", 10), 5, 0.0)
    )
    with pytest.raises(ValueError, match="back in steps"):
        S.from_lineage(backwards, "b")


def test_from_lineage_copies_the_meta_params_it_returns():
    w = np.zeros(2)  # a writable array, as a hand-built history may hold
    h = build(
        [("a", 0, {"lr": 0.1, "w": w}, None, None), ("a", 10, {"lr": 0.1, "w": w}, 1.0, ("a", 0))]
    )
    schedule = S.from_lineage(h, "a")
    schedule.values[0]["lr"] = 99.0  # an edit of the schedule ...
    schedule.values[0]["w"][0] = 5.0
    assert [c.meta_params["lr"] for c in h.checkpoints()] == [0.1, 0.1]  # ... stays there
    assert w.tolist() == [0.0, 0.0]
    again = S.from_lineage(h, "a")
    h.latest("a").meta_params["lr"] = 7.0  # and an edit of the history stays there
    assert again.values[0]["lr"] == 0.1
    controller = PopulationController([{"lr": 0.1}, {"lr": 0.2}], FixedSchedule({5: A}))
    gen = controller.active_workers[0].generation_id
    controller.set_eval(0, gen, 5, "p", 1.0)
    S.from_lineage(controller.history, gen).values[0]["lr"] = -1.0
    assert all(c.meta_params["lr"] in (0.1, 0.2, 1.0) for c in controller.history.checkpoints())


def test_from_lineage_begins_where_a_copy_handed_no_params_started_fresh():
    """A copy of an evaluation sent without params is handed params=None: its worker
    initialises fresh parameters there. The schedule began at the root, with the
    hyperparameters of steps the member's parameters never trained."""
    mutator = WinnerTakeAllGenetic(lambda meta: {"lr": meta["lr"] / 2}, steps_per_exploit=10)
    controller = PopulationController([{"lr": 0.1}, {"lr": 0.2}], mutator)
    for worker, value in [(0, 0.5), (1, 0.3)]:  # no params yet: the round copies without
        generation_id = controller.active_workers[worker].generation_id
        controller.set_eval(worker, generation_id, 10, None, value)
    copy = controller.active_workers[1]
    assert copy.params is None and copy.step == 10  # "initialise fresh parameters"
    controller.set_eval(1, copy.generation_id, 20, "p20", 0.2)
    schedule = S.from_lineage(controller.history)
    assert schedule.as_dict() == {10: {"lr": 0.1}}  # (was {0: {'lr': 0.2}, 10: ...})
    # the next round copies it with its params: the copies' schedules begin at 10 too
    controller.set_eval(0, controller.active_workers[0].generation_id, 20, "p20-0", 0.6)
    later = controller.active_workers[0]
    assert later.params == "p20" and later.meta_params == {"lr": 0.05}
    controller.set_eval(0, later.generation_id, 30, "p30", 0.05)
    assert S.from_lineage(controller.history).as_dict() == {10: {"lr": 0.1}, 20: {"lr": 0.05}}
    # by hand: a root's copy at its step that holds params is no fresh start; one without is
    h = History()
    for checkpoint in [
        Checkpoint(None, A, "r", None, None, 0, 0.0),
        Checkpoint(None, A, "r", 1.0, ("r", 0), 10, 0.0),  # evaluated without params
        Checkpoint(None, B, "g", None, ("r", 10), 10, 0.0),  # copied: fresh at 10
        Checkpoint("g15", B, "g", 0.5, ("g", 10), 15, 0.0),
        Checkpoint(None, C, "h", None, ("g", 15), 15, 0.0),  # source's params marked gone
        Checkpoint("g15", D, "k", None, ("h", 15), 15, 0.0),  # ... a copy of it holds them
        Checkpoint("k20", D, "k", 0.1, ("k", 15), 20, 0.0),
    ]:
        h = h.add(checkpoint)
    assert S.from_lineage(h, "g").as_dict() == {10: B}
    assert S.from_lineage(h, "k").as_dict() == {10: B, 15: D}
    assert S.from_lineage(h, "r").as_dict() == {0: A}


# -- random lineages from real mutators ---------------------------------------------------------
H_VALUES = (0.0, 1.0, 2.0)


def run_population(mutator, n, order, values, eval_every, seed):
    """Simulated workers whose params are the tuple of meta_params that trained them."""
    clock = FakeClock()  # a second a move (a mutator may decide by the clock)
    meta = [{"h": H_VALUES[i % 3]} for i in range(n)]
    pop = PopulationController(meta, mutator, seed=seed, clock=clock)
    sims = [{"gen": None, "step": 0, "params": (), "meta": None} for _ in range(n)]
    for i, w in enumerate(order):
        clock.advance(1.0)
        w %= n
        sim = sims[w]
        data = pop.maybe_get_worker_data(w, sim["gen"], sim["step"], sim["params"], sim["meta"])
        if data is not None:
            sim.update(gen=data.generation_id, step=data.step, meta=data.meta_params)
            sim["params"] = () if data.params is None else data.params
        sim["params"] = (*sim["params"], sim["meta"])
        sim["step"] += 1
        if sim["step"] % eval_every == 0:
            pop.set_eval(w, sim["gen"], sim["step"], sim["params"], values[i % len(values)])
    return pop


@pytest.mark.parametrize("name", NAMES)  # every mutator of tests/mutator_registry.py
@settings(SETTINGS, max_examples=5)
@given(
    n=st.integers(0, 2),
    k=st.integers(1, 4),
    eval_every=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    order=st.lists(st.integers(0, 3), min_size=20, max_size=160),
    values=st.lists(
        st.floats(-5, 5) | st.sampled_from([float("nan"), float("inf")]), min_size=1, max_size=20
    ),
)
def test_from_lineage_matches_every_checkpoints_real_trajectory(
    name, n, k, eval_every, seed, order, values
):
    spec = MUTATORS[name]
    n = spec.sizes[n % len(spec.sizes)]
    pop = run_population(spec.make(k), n, order, values, eval_every, seed)
    history = pop.history
    checked = 0
    for c in history.checkpoints():  # each checkpoint's params record what trained it
        if c.params is None:
            continue
        schedule = S.from_lineage(history, c.generation_id, step=c.step)
        assert [schedule(t) for t in range(c.step)] == list(c.params), c.ref
        assert schedule.values[-1] == c.meta_params
        assert S.from_json(schedule.to_json()) == schedule
        checked += 1
    if not any(c.value is not None for c in history.checkpoints()):
        return
    best = S.best_final(history)
    schedule = S.from_lineage(history)
    replay = PopulationController([schedule(0)], FixedSchedule(schedule, on_ask=True))
    used, params = follow(replay, best.step)
    assert params == best.params and used == list(best.params)
    assert S.from_lineage(replay.history, replay.active_workers[0].generation_id) == schedule


# -- export ----------------------------------------------------------------------------------
def test_json_round_trip_of_awkward_values_and_csv():
    meta = {
        "lr": 0.1,
        "n": 3,
        "big": 2**70,
        "flags": [True, None, "s"],
        "betas": (0.9, 0.999),
        "odd": float("nan"),
        "neg": float("-inf"),
        "zero": -0.0,
        "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
        "bf": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
        "i8": np.int8(-3),
        "u": np.array(7, dtype=np.uint64),
        "keys": {1: "one", (2, "b"): 2.5, "__jaxpop__": 0},
        "jax": jnp.ones(2, jnp.int32),
    }
    s = S.piecewise({0: meta, 5: {**meta, "lr": 0.2}})
    text = s.to_json()
    json.loads(text)  # strict JSON: no NaN / Infinity literals
    assert "NaN" not in text and "Infinity" not in text
    back = S.from_json(text)
    as_numpy = {**meta, "jax": np.ones(2, np.int32)}  # a jax.Array reads back as numpy
    assert back == S.piecewise({0: as_numpy, 5: {**as_numpy, "lr": 0.2}})
    assert back.values[0]["bf"].dtype == ml_dtypes.bfloat16 and back.values[0]["zero"] == 0.0
    assert math.copysign(1.0, back.values[0]["zero"]) == -1.0
    assert back.values[0]["u"].shape == () and back.values[0]["u"].dtype == np.uint64
    csv_text = S.piecewise({0: {"lr": 0.1, "opt": {"b1": 0.9}}, 10: {"lr": 0.2}}).to_csv()
    assert csv_text.splitlines() == ["step,lr,opt.b1", "0,0.1,0.9", "10,0.2,"]


def test_json_errors():
    with pytest.raises(TypeError, match=r"values\[0\]\['f'\]"):
        S.piecewise({0: {"f": object()}}).to_json()
    with pytest.raises(ValueError, match="format"):
        S.from_json('{"points": []}')
    with pytest.raises(ValueError, match="version"):
        S.from_json('{"format": "jaxpop.schedules.piecewise", "version": 99, "points": []}')
    with pytest.raises(ValueError):
        S.from_json("not json")
    with pytest.raises(ValueError, match="tag"):
        S.from_json(
            '{"format": "jaxpop.schedules.piecewise", "version": 1, '
            '"points": [[0, {"__jaxpop__": "pickle"}]]}'
        )
    head = '{"format": "jaxpop.schedules.piecewise", "version": 1, "points": [[0, '
    for value, match in (  # what to_json never writes (a journal could not hold it either)
        ('{"__jaxpop__": "ndarray", "dtype": "object", "shape": [1], "data": [1]}', "object"),
        ('{"__jaxpop__": "scalar", "dtype": "datetime64[s]", "value": 1}', "datetime"),
        ('{"__jaxpop__": "scalar", "dtype": "int8", "value": 300}', "malformed"),
        ("[" * 100_000 + "]" * 100_000, "nested|not a JSON"),
    ):
        with pytest.raises(ValueError, match=match):
            S.from_json(head + value + "]]}")


def test_json_that_to_json_never_writes_is_refused_not_read_as_another_schedule():
    """Duplicate keys (the last one was taken), bare NaN / Infinity and 1e400 (read as
    floats, 1e400 as inf) came back as a schedule other than the document's (hostile
    review, helper-291)."""
    head = '{"format": "jaxpop.schedules.piecewise", "version": 1, "points": '
    for body, match in (
        ('[[0, {"lr": 0.1, "lr": 0.2}]]}', "'lr' appears twice"),
        ('[[0, 1]], "points": [[0, 2]]}', "'points' appears twice"),
        ('[[0, {"__jaxpop__": "dict", "items": [[1, "a"], [1, "b"]]}]]}', "one key twice"),
        ('[[0, {"lr": 1e400}]]}', "past a float's range"),
        ('[[0, {"lr": NaN}]]}', "NaN"),
        ('[[0, {"lr": -Infinity}]]}', "Infinity"),
    ):
        with pytest.raises(ValueError, match=match):
            S.from_json(head + body)
    # and what it cannot write faithfully is refused at export
    with pytest.raises(TypeError, match="masked array"):
        S.piecewise({0: {"a": np.ma.array([1.0, 2.0], mask=[False, True])}}).to_json()
    for key in (math.nan, (1, math.nan)):
        with pytest.raises(TypeError, match="read back unequal"):
            S.piecewise({0: {key: 6}}).to_json()
    odd_keys = {0: {1: "a", (2, 3): "b", None: "c", math.inf: "d", np.int64(4): "e"}}
    assert S.from_json(S.piecewise(odd_keys).to_json()) == S.piecewise(odd_keys)


def test_tree_equal_compares_a_masked_arrays_mask():
    # (its data alone was compared: a report with another mask was taken for a repeat
    # and dropped, helper-296)
    a = np.ma.array([1.0, 2.0], mask=[False, True])
    assert S.tree_equal(a, np.ma.array([1.0, 2.0], mask=[False, True]))
    assert not S.tree_equal(a, np.ma.array([1.0, 2.0], mask=[True, False]))
    assert not S.tree_equal(a, np.array([1.0, 2.0]))
    assert not S.tree_equal(np.array([1.0, 2.0]), a)


def test_json_keeps_a_nans_sign_and_payload():
    negative = -float("nan")
    payload = np.array([0xFFC00001], np.uint32).view(np.float32)  # a NaN with a payload
    schedule = S.piecewise({0: {"a": negative, "b": payload, "c": float("nan")}})
    back = S.from_json(schedule.to_json())(0)
    assert math.copysign(1.0, back["a"]) == -1.0 and math.isnan(back["c"])
    assert back["b"].view(np.uint32).tolist() == [0xFFC00001]


LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=2, max_side=3),
    ),
)
TREES = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=4) | st.integers(-3, 3), inner, max_size=3),
    ),
    max_leaves=10,
)


@settings(SETTINGS, max_examples=60)
@given(points=st.dictionaries(st.integers(0, 10**6), TREES, min_size=1, max_size=4))
def test_json_round_trip_is_exact(points):
    schedule = S.piecewise(points)
    assert S.from_json(schedule.to_json()) == schedule
    assert S.Piecewise.from_json(schedule.to_json(indent=2)) == schedule


def run_saving_late(mutator, n, order, values, eval_every, save_after, seed):
    """As :func:`run_population`, but each worker sends ``params=None`` (asking and
    evaluating) before step ``save_after``, and its params are the ``(step, meta)`` pairs
    trained since they were last initialised: at a ``params=None`` assignment (fresh).
    Sent back to an evaluation without params in the middle of a generation (fresh too,
    which no checkpoint records), they start with ``("?", None)``."""
    clock = FakeClock()
    meta = [{"h": H_VALUES[i % 3]} for i in range(n)]
    pop = PopulationController(meta, mutator, seed=seed, clock=clock)
    sims = [{"gen": None, "step": 0, "params": (), "meta": None} for _ in range(n)]
    for i, w in enumerate(order):
        clock.advance(1.0)
        w %= n
        sim = sims[w]
        sent = sim["params"] if sim["step"] >= save_after else None
        data = pop.maybe_get_worker_data(w, sim["gen"], sim["step"], sent, sim["meta"])
        if data is not None:
            sim.update(gen=data.generation_id, step=data.step, meta=data.meta_params)
            if data.params is not None:
                sim["params"] = data.params
            elif pop.history.first(data.generation_id).step == data.step:
                sim["params"] = ()
            else:
                sim["params"] = (("?", None),)
        sim["params"] = (*sim["params"], (sim["step"], sim["meta"]))
        sim["step"] += 1
        if sim["step"] % eval_every == 0:
            sent = sim["params"] if sim["step"] >= save_after else None
            pop.set_eval(w, sim["gen"], sim["step"], sent, values[i % len(values)])
    return pop


@pytest.mark.parametrize("name", NAMES)
@settings(SETTINGS, max_examples=5)
@given(
    n=st.integers(0, 2),
    k=st.integers(1, 4),
    eval_every=st.integers(1, 3),
    save_after=st.integers(0, 12),
    seed=st.integers(0, 2**16),
    order=st.lists(st.integers(0, 3), min_size=20, max_size=160),
    values=st.lists(st.floats(-5, 5), min_size=1, max_size=20),
)
def test_from_lineage_begins_where_a_real_members_parameters_were_initialised(
    name, n, k, eval_every, save_after, seed, order, values
):
    """Workers that send no params at first: a copy of such an evaluation starts fresh,
    and the schedule of a member descended from it begins there (it began at 0)."""
    spec = MUTATORS[name]
    n = spec.sizes[n % len(spec.sizes)]
    pop = run_saving_late(spec.make(k), n, order, values, eval_every, save_after, seed)
    for c in pop.history.checkpoints():
        trained = list(c.params or ())
        if not trained or trained[0][0] == "?":
            continue
        schedule = S.from_lineage(pop.history, c.generation_id, step=c.step)
        assert schedule.steps[0] == trained[0][0], c.ref
        assert [(t, schedule(t)) for t, _ in trained] == trained, c.ref
        assert schedule.values[-1] == c.meta_params


# -- the example -------------------------------------------------------------------------------
def test_replay_example_reproduces_the_searched_member(tmp_path, capsys):
    from examples.synthetic import replay

    result = replay.main(["--steps", "320", "--no-progress", "--export", str(tmp_path)])
    assert result["same_schedule"] and result["same_steps"]
    assert result["replay_loss"] == result["search_loss"]  # same targets, noise and init
    assert result["steps"] < result["search_steps"]  # the losing branches are not replayed
    assert result["compilations"] == 1
    assert S.from_json((tmp_path / "schedule.json").read_text()) == result["schedule"]
    assert (tmp_path / "schedule.csv").read_text().startswith("step,target\n0,0.0\n")
    out = capsys.readouterr().out
    assert f"replay: eval loss                     = {result['replay_loss']:.6f}" in out


def test_python_dash_m_runs_the_replay_example():
    proc = subprocess.run(
        [sys.executable, "-m", "examples.synthetic.replay", "--no-progress", "--steps", "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "at every step: True" in proc.stdout
    assert "search: best final member's eval loss" in proc.stdout


@pytest.mark.parametrize(
    "parts",
    [
        {0: {"n": 100000}, 10: {"n": np.int8(1)}},  # int8 under jit: -96
        {0: {"n": -1}, 10: {"n": np.uint32(5)}},  # uint32: 4294967295
        {0: {"lr": 1e10}, 10: {"lr": np.float16(0.5)}},  # float16: inf
    ],
)
def test_a_traced_schedule_never_wraps_a_value_its_dtype_cannot_hold(parts):
    schedules = [
        S.piecewise(parts),
        S.join([S.constant(v) for v in parts.values()], list(parts)[1:]),
        S.curriculum(parts, kind="step"),
    ]
    for schedule in schedules:
        host = schedule(0)
        assert host == parts[0]  # on the host, as given
        with pytest.raises(ValueError, match="cannot hold"):
            jax.jit(schedule)(0)
    # a join selects part by part: a third part's wider type does not save the first
    chain = {**parts, 20: {k: np.float32(1) for k in parts[0]}}
    for schedule in (S.join([S.constant(v) for v in chain.values()], [10, 20]),):
        with pytest.raises(ValueError, match="cannot hold"):
            jax.jit(schedule)(0)
    # a concrete jax array is checked as a number is (3e9 in uint32 beside an int32 part)
    big = S.join(
        [S.constant({"n": jnp.asarray(3_000_000_000, jnp.uint32)}), S.constant({"n": np.int32(1)})],
        [10],
    )
    with pytest.raises(ValueError, match="cannot hold"):
        jax.jit(big)(0)
    # rounding to the narrower float is JAX's promotion, kept: 0.1 in float16
    mixed = S.piecewise({0: {"lr": 0.1}, 10: {"lr": np.float16(0.5)}})
    assert float(jax.jit(mixed)(0)["lr"]) == float(np.float16(0.1))


@pytest.mark.parametrize(
    "value",
    [
        '{"__jaxpop__": "scalar", "dtype": "bool", "value": "false"}',  # was True
        '{"__jaxpop__": "ndarray", "dtype": "int32", "shape": [1], "data": [0.7]}',  # [0]
        '{"__jaxpop__": "ndarray", "dtype": "int32", "shape": [1], "data": ["7"]}',  # [7]
        '{"__jaxpop__": "ndarray", "dtype": "int8", "shape": [1], "data": [300]}',
        '{"__jaxpop__": "ndarray", "dtype": "int32", "shape": [1], "data": [true]}',
        '{"__jaxpop__": "scalar", "dtype": "float16", "value": 1e10}',  # inf
        '{"__jaxpop__": "float", "value": "nan", "bits": "3ff0000000000000"}',  # 1.0
        '{"__jaxpop__": "float", "value": "1.5"}',
        '{"__jaxpop__": "tuple", "items": "abc"}',  # ('a', 'b', 'c')
    ],
)
def test_a_hand_edited_json_value_is_refused_rather_than_coerced(value):
    document = '{"format": "jaxpop.schedules.piecewise", "version": 1, "points": [[0, {"a": %s}]]}'
    with pytest.raises(ValueError, match="malformed"):
        S.from_json(document % value)


def test_a_json_schedule_of_version_true_is_refused():
    with pytest.raises(ValueError, match="version True"):
        S.from_json('{"format": "jaxpop.schedules.piecewise", "version": true, "points": []}')


def test_zero_and_negative_zero_are_different_hyperparameters():
    """tree_equal(0.0, -0.0) was True: a member that trained with t=-0.0 from step 10
    replayed 0.0 (1 / t: inf instead of -inf), and tabulate merged the change away."""
    from jaxpop.schedules import tabulate, tree_equal

    assert not tree_equal(0.0, -0.0) and tree_equal(-0.0, -0.0)
    assert not tree_equal(np.array([0.0, 1.0]), np.array([-0.0, 1.0]))
    assert not tree_equal(np.array([0.0], ml_dtypes.bfloat16), np.array([-0.0], ml_dtypes.bfloat16))
    assert not tree_equal(np.complex64(complex(0.0, -0.0)), np.complex64(0.0))
    assert tree_equal(np.array([np.nan, -0.0, 2.0]), np.array([np.nan, -0.0, 2.0]))
    table = tabulate(lambda step: {"t": 0.0 if step < 10 else -0.0}, 20)
    assert math.copysign(1.0, table(15)["t"]) == -1.0


def test_tabulate_from_a_start_between_samples_is_what_fixed_schedule_trains():
    """tabulate(start=5, every=10) sampled 5, 15, 25 where FixedSchedule(every=10)
    trains with the samples at 0, 10, 20: every step differed."""
    from jaxpop.schedules import tabulate

    table = tabulate(lambda step: {"lr": float(step)}, 40, start=5, every=10)
    assert [table(step)["lr"] for step in (5, 9, 10, 19, 20, 39)] == [0, 0, 10, 10, 20, 30]
    assert tabulate(lambda step: {"lr": float(step)}, 40, start=10, every=10)(10)["lr"] == 10


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_ramp_between_narrow_floats_is_a_float32_ramp_on_the_host_and_in_jit(dtype, kind):
    """A bfloat16 ramp computed in bfloat16 on the host and in float32 under jit: a
    FixedSchedule recorded values 3e-3 off what a jitted step trained with."""
    ramp = S.curriculum({0: {"x": dtype(0.0)}, 3000: {"x": dtype(1.0)}}, kind=kind)
    wide = S.curriculum({0: {"x": np.float32(0.0)}, 3000: {"x": np.float32(1.0)}}, kind=kind)
    host, traced = ramp(1234)["x"], jax.jit(ramp)(jnp.int32(1234))["x"]
    assert float(host) == float(traced) == pytest.approx(float(wide(1234)["x"]), rel=1e-6)


def test_to_csv_refuses_two_leaves_of_one_column_name():
    # {"opt.lr": 0.1, "opt": {"lr": 0.2}} wrote one opt.lr column holding 0.1: 0.2 lost
    for value in ({"opt.lr": 0.1, "opt": {"lr": 0.2}}, {"b": (5.0,), "b.0": 6.0}):
        with pytest.raises(ValueError, match="both named"):
            S.piecewise({0: value}).to_csv()
    assert S.piecewise({0: {"opt": {"lr": 0.2}}}).to_csv() == "step,opt.lr\n0,0.2\n"


def test_the_json_document_refuses_what_would_come_back_as_another_type():
    # a numpy str or a str enum came back a plain str; longdouble came back rounded
    import enum

    class Kind(str, enum.Enum):
        A = "a"

    for value in (np.str_("x"), Kind.A, np.longdouble(1) / 3, np.ones(2, np.longdouble)):
        with pytest.raises(TypeError, match="cannot export"):
            S.piecewise({0: {"v": value}}).to_json()


def test_tree_equal_tells_apart_dict_keys_that_compare_equal():
    # keys were compared with ==: 1, 1.0 and True were one key, and from_lineage merged
    # a generation that trained with {1.0: 0.1} into one with {1: 0.1} (hostile review,
    # helper-135)
    from jaxpop.records import Checkpoint

    tree_equal = S.tree_equal
    assert not tree_equal({1: 0.1}, {1.0: 0.1}) and not tree_equal({1: 0.1}, {True: 0.1})
    assert not tree_equal({0.0: 1}, {-0.0: 1}) and not tree_equal({"a": 1}, {np.str_("a"): 1})
    assert tree_equal({1: 0.1, "a": {2.5: 1}}, {"a": {2.5: 1}, 1: 0.1})
    h = History()
    for g, (step, key) in enumerate(((0, 1), (10, 1.0))):
        parent = None if g == 0 else ("g0", step)
        h = h.add(Checkpoint(None, {"sched": {key: 0.1}}, f"g{g}", 1.0, parent, step, 0.0))
        h = h.add(Checkpoint(None, {"sched": {key: 0.1}}, f"g{g}", 1.0, parent, step + 10, 0.0))
    schedule = S.from_lineage(h, "g1")
    assert type(next(iter(schedule(15)["sched"]))) is float


def test_curriculum_names_a_bad_kind_and_a_leaf_whose_shapes_differ():
    """kind=None raised "'NoneType' object is not iterable", and array leaves of two
    shapes numpy's broadcast error, naming neither leaf nor step (helper-159)."""
    points = {0: {"a": 0.0}, 10: {"a": 1.0}}
    with pytest.raises(TypeError, match=r"kind must be one of .* got NoneType"):
        S.curriculum(points, kind=None)
    with pytest.raises(ValueError, match=r"unknown kind \[1\]"):
        S.curriculum(points, kind=[1])
    shapes = {0: {"w": {"a": np.zeros(2)}}, 5: {"w": {"a": np.ones(3)}}}
    with pytest.raises(
        ValueError, match=r"\['w'\]\['a'\] has shape \(2,\) at step 0 and \(3,\) at step 5"
    ):
        S.curriculum(shapes)
    # (1,) to (3,) broadcasts, (3,) to (2,) does not: named too, with its segment's steps
    chain = {0: {"a": np.zeros(1)}, 10: {"a": np.ones(3)}, 20: {"a": np.ones(2) * 2}}
    with pytest.raises(
        ValueError, match=r"\['a'\] has shape \(3,\) at step 10 and \(2,\) at step 20"
    ):
        S.curriculum(chain)
    broadcast = S.curriculum({0: {"a": np.zeros(1)}, 10: {"a": np.ones(3)}})  # (still taken)
    np.testing.assert_allclose(S.to_host(broadcast(5))["a"], [0.5, 0.5, 0.5])
    # a held value may change its shape at a point: nothing is interpolated (the check's
    # first version refused these, helper-160)
    grows = S.curriculum(
        {0: {"widths": np.array([64, 64])}, 10: {"widths": np.array([64, 64, 128])}}, kind="step"
    )
    assert S.to_host(grows(12))["widths"].tolist() == [64, 64, 128]
    mixed = S.curriculum(
        {0: {"w": np.zeros(2)}, 10: {"w": np.zeros(1)}, 20: {"w": np.ones(3)}},
        kind=["step", "linear"],
    )
    np.testing.assert_allclose(S.to_host(mixed(15))["w"], [0.5, 0.5, 0.5])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_ramp_between_python_floats_is_weakly_typed_as_the_values_around_it(kind):
    """A ramp made its values strongly typed float32 (the held values around it are
    Python floats): a bfloat16 computation scaled by it became float32 during ramps only,
    and a jitted step given its values compiled again when a ramp ended (helper-160)."""
    c = S.curriculum({0: {"s": 0.0}, 100: {"s": 1.0}}, kind=kind)
    x = jnp.ones(2, jnp.bfloat16)
    for step in (0, 50, 150):
        assert (x * c(step)["s"]).dtype == jnp.bfloat16, step
    assert jax.jit(lambda t: x * c(t)["s"])(jnp.int32(50)).dtype == jnp.bfloat16
    traces = []

    @jax.jit
    def scaled(s):
        traces.append(1)
        return x * s

    for step in range(0, 200, 10):
        scaled(c(step)["s"])
    assert len(traces) == 1


def test_a_ramp_counts_a_python_int_step_of_any_size_exactly():
    """A step past float32's range became inf (NaN of the way), a length past float64's
    an OverflowError (helper-160)."""
    huge = S.curriculum({0: {"x": 0.0}, 2**200: {"x": 1.0}})
    assert S.to_host(huge(2**130))["x"] == pytest.approx(2.0**-70)
    assert S.to_host(huge(2**199))["x"] == pytest.approx(0.5)
    past = S.curriculum({0: {"x": 0.0}, 2**1100: {"x": 1.0}})
    assert S.to_host(past(4))["x"] == 0.0 and S.to_host(past(2**1100))["x"] == 1.0


def test_a_curriculum_on_the_host_gives_fresh_jax_values_in_the_ramps_shape():
    """helper-161, of the first numpy host path: a cosine ramp called with a Python step
    inside jit raised TracerArrayConversionError; step 0 handed out the curriculum's own
    start array (an in-place edit changed every later value, jitted ones too) in its own
    shape (not the ramp's); to_host gave numpy float32s that json cannot write."""
    c = S.curriculum(
        {0: {"batch": 32, "w": 0.0, "lr": 0.1}, 100: {"batch": 256, "w": np.ones(3), "lr": 0.01}},
        kind="cosine",
    )
    assert float(jax.jit(lambda: c(50)["lr"])()) == pytest.approx(0.055, rel=1e-6)
    first = c(0)
    assert first["w"].shape == (3,)
    # jax arrays (nothing to edit in place), fresh at each call
    assert isinstance(first["batch"], jax.Array) and isinstance(first["w"], jax.Array)
    assert c(0)["batch"] is not first["batch"]
    assert float(c(50)["batch"]) == float(jax.jit(lambda t: c(t)["batch"])(50)) == 144.0
    host = S.to_host(c(50))
    assert type(host["batch"]) is float and type(host["lr"]) is float
    json.dumps({k: v for k, v in host.items() if k != "w"})


def test_a_held_value_whose_shape_changes_is_named_when_traced():
    c = S.curriculum({0: {"w": np.zeros(2)}, 10: {"w": np.ones(3)}}, kind="step")
    assert c(5)["w"].shape == (2,) and c(15)["w"].shape == (3,)  # on the host, as given
    with pytest.raises(
        ValueError, match=r"\['w'\] has shapes \[.*\(2,\).*\(3,\)\].*do not broadcast"
    ):
        jax.jit(c)(5)


def test_a_ramp_takes_a_traced_array_of_steps_and_float_steps_past_float32():
    """helper-162: a traced array of steps raised "full must be called with scalar
    fill_value" (the weak type was kept for an array too); a float step or segment past
    float32's range gave NaN, and every host call of such a segment warned."""
    c = S.curriculum({0: {"lr": 0.1}, 10: {"lr": 0.01}})
    np.testing.assert_allclose(
        jax.jit(c)(jnp.arange(0, 12, 3))["lr"], [0.1, 0.073, 0.046, 0.019], rtol=1e-6
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        huge = S.curriculum({0: {"x": 0.0}, 2**200: {"x": 1.0}})
        for step in (2**199, float(2**199)):
            assert S.to_host(huge(step))["x"] == 0.5
        assert S.to_host(huge(5))["x"] == 0.0
        long = S.curriculum({0: {"x": 0.0}, 2**130: {"x": 1.0}})
        assert S.to_host(long(2.0**129))["x"] == S.to_host(long(2**129))["x"] == 0.5


def test_a_non_numeric_held_leaf_is_named_as_not_numeric_when_traced():
    schedule = S.join([S.constant({"k": range(2)}), S.constant({"k": range(3)})], [3])
    with pytest.raises(TypeError, match="leaves must be numeric"):
        jax.jit(schedule)(5)


def _document(value) -> str:
    points = [[0, {"lr": 0.1}], [10, {"lr": value}]]
    return json.dumps({"format": "jaxpop.schedules.piecewise", "version": 1, "points": points})


def test_a_nan_written_without_its_bits_still_reads_as_a_nan():
    # jaxpop wrote a NaN as {"value": "nan"} (same version) before the bits were added:
    # those files (the loggers' best_schedule.json) were refused
    nan = {"__jaxpop__": "float", "value": "nan"}
    assert math.isnan(S.from_json(_document(nan)).as_dict()[10]["lr"])
    array = {"__jaxpop__": "ndarray", "dtype": "float32", "shape": [2], "data": [1.0, nan]}
    assert np.isnan(S.from_json(_document(array)).as_dict()[10]["lr"]).tolist() == [False, True]
    with pytest.raises(ValueError, match="only as inf, -inf or NaN"):
        S.from_json(_document({"__jaxpop__": "float", "value": "1.5"}))


@pytest.mark.parametrize("field, value", [("dtype", None), ("shape", None), ("shape", [-1])])
def test_a_damaged_array_dtype_or_shape_is_an_error_not_another_value(field, value):
    # "dtype": null read a uint64 2**64-1 as a float64 (rounded); "shape": null or [-1]
    # flattened a (2, 2) array
    array = {"__jaxpop__": "ndarray", "dtype": "float32", "shape": [2, 2], "data": [1.0] * 4}
    with pytest.raises(ValueError, match="malformed 'ndarray' value"):
        S.from_json(_document({**array, field: value}))
    assert S.from_json(_document(array)).as_dict()[10]["lr"].shape == (2, 2)


@pytest.mark.filterwarnings("ignore::UserWarning")  # (checkpoint_missing says what it did)
def test_a_step_rerun_and_then_missing_is_no_fresh_start_of_the_steps_trained_from_it():
    # after step 10 was rerun, (A, 20)'s parent is the kept old (A, 10); once that one's
    # params were reported missing, from_lineage read it as a generation's fresh start:
    # the schedule began at step 10, not 0
    mutator = WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] / 2}, steps_per_exploit=10)
    c = PopulationController([{"lr": 0.1}, {"lr": 0.2}], mutator, seed=0)
    a = c.maybe_get_worker_data(0, None, 0, None, None).generation_id
    b = c.maybe_get_worker_data(1, None, 0, None, None).generation_id
    c.set_eval(0, a, 10, "A10", 0.1)
    copy = c.set_eval_and_ask(1, b, 10, "B10", 0.9)  # worker 1 copies (A, 10)
    c.set_eval(0, a, 20, "A20", 0.05)
    c.set_eval(0, a, 10, "A10-rerun", 0.08)  # worker 0 reran step 10
    c.checkpoint_missing(1, copy.generation_id, copy.step)  # "A10" is gone
    assert [x.params for x in c.history.lineage(a, 20)] == [None, None, "A20"]
    assert S.from_lineage(c.history, a, step=20).as_dict() == {0: {"lr": 0.1}}
