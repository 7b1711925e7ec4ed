"""Unit and scenario tests of the seed's three mutators."""

import functools
import math
import types
import warnings

import numpy as np
import pytest

from conftest import FakeClock, apply, fresh_state
from jaxpop import PopulationController
from jaxpop.events import Ask, Eval
from jaxpop.mutators import (
    PB2,
    BranchingSingleMachine,
    FirePBT,
    FixedSchedule,
    MultipleFrequenciesPBT,
    WinnerTakeAllGenetic,
    WinnerTakeAllState,
    explore,
)
from jaxpop.mutators.base import Mutator, call_mutate_fn, takes_key
from jaxpop.mutators.pbt import PopulationBasedTraining
from jaxpop.schedules import piecewise


# -- takes_key ------------------------------------------------------------------------
def test_takes_key_tells_seed_and_keyed_forms_apart():
    assert not takes_key(lambda m: m, 1)
    assert takes_key(lambda m, key: m, 1)
    assert takes_key(lambda m, k: m, 1)
    assert not takes_key(lambda m, scale=0.1: m, 1)
    assert takes_key(lambda m, scale=0.1, key=None: m, 1)
    assert takes_key(lambda *a, key: a[0], 1)

    # *args says neither: a decorator's wrapper without functools.wraps is read through
    # the function it wraps (a seed-form one was handed a key, and every round raised);
    # with nothing to read through, the seed's form, with a warning
    def plain(fn):
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    assert not takes_key(plain(lambda m: m), 1)
    assert takes_key(plain(lambda m, key: m), 1)
    assert takes_key(plain(plain(lambda m, d, i, key: m)), 3)
    with pytest.warns(UserWarning, match="cannot tell whether it wants a PRNG key"):
        assert not takes_key(lambda *a: a[0], 1)
    assert not takes_key(lambda m, d, i: m, 3)
    assert takes_key(lambda m, d, i, key: m, 3)
    assert not takes_key(dict, 1)

    # a keyword-only key (a partial binding an argument before it by keyword): it was
    # not seen, the function was called without it, and the run failed at its first round
    def scaled(meta, scale, key):
        return {"h": meta["h"] * scale + float(np.asarray(key)[1] % 2)}

    def kw_only(meta, *, key):
        return {"h": meta["h"] + float(np.asarray(key)[1] % 2)}

    for fn in (functools.partial(scaled, scale=0.5), kw_only):
        assert takes_key(fn, 1)
        key = np.array([0, 3], np.uint32)
        assert call_mutate_fn(fn, True, ({"h": 2.0},), key) == fn({"h": 2.0}, key=key)
        mutator = WinnerTakeAllGenetic(fn, steps_per_exploit=10)
        state, _ = _wta_round(mutator, [0.3, 0.1, 0.2])
        assert all(w.step == 10 for w in state.workers)  # (the round ran, with keys)


# -- WinnerTakeAllGenetic --------------------------------------------------------------
def _wta_round(mutator, values, steps=(10, 10, 10)):
    state = fresh_state([{"h": float(i)} for i in range(len(values))], mutator)
    gens = [w.generation_id for w in state.workers]
    for i, (gen, value, step) in enumerate(zip(gens, values, steps, strict=True)):
        state, _ = apply(state, Eval(f"p{i}", i, gen, step, value), 1.0 + i, mutator)
    return state, gens


@pytest.mark.parametrize("keep_winner", [False, True])
def test_wta_waits_for_every_worker_then_copies_the_best(keep_winner):
    m = WinnerTakeAllGenetic(
        lambda meta: {"h": meta["h"] + 100.0}, steps_per_exploit=10, keep_winner=keep_winner
    )
    state = fresh_state([{"h": 0.0}, {"h": 1.0}, {"h": 2.0}], m)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("p0", 0, gens[0], 10, 3.0), 1.0, m)
    state, _ = apply(state, Eval("p1", 1, gens[1], 10, 1.0), 1.0, m)
    assert [w.generation_id for w in state.workers] == gens  # worker 2 not ready yet
    state, _ = apply(state, Eval("p2", 2, gens[2], 5, 0.0), 1.0, m)  # not far enough
    assert [w.generation_id for w in state.workers] == gens
    state, _ = apply(state, Eval("p2", 2, gens[2], 10, 2.0), 1.0, m)
    assert state.mutator_state == WinnerTakeAllState(num_exploits=1, num_decisions=3, num_copies=2)
    for i, w in enumerate(state.workers):
        assert w.generation_id not in gens and w.params == "p1" and w.step == 10
        kept = keep_winner and i == 1  # the seed mutates the winner too
        assert w.meta_params == ({"h": 1.0} if kept else {"h": 101.0})
        assert state.history.branch_point(w.generation_id) == (gens[1], 10)


def test_wta_average_over_samples_vs_latest():
    def run(average):
        m = WinnerTakeAllGenetic(
            lambda meta: meta, steps_per_exploit=20, average_over_samples=average
        )
        state = fresh_state([{"h": 0.0}, {"h": 1.0}], m)
        g0, g1 = (w.generation_id for w in state.workers)
        # worker 0: 0.0 then 3.0 (mean 1.5, latest 3.0), both at or past its interval;
        # worker 1: 2.0, whose report completes the round
        for gen, wid, values in ((g0, 0, (0.0, 3.0)), (g1, 1, (2.0,))):
            for step, v in zip((20, 30), values, strict=False):
                state, _ = apply(state, Eval(f"p{wid}", wid, gen, step, v), 1.0, m)
        return state.workers[0].params

    assert run(True) == "p0"
    assert run(False) == "p1"


def test_wta_scores_only_the_values_reported_past_the_interval():
    # worker 0 settles slowly after a copy (100.0 at step 5) but is better once past its
    # interval; the seed counts only values at or after start + steps_per_exploit
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
    state = fresh_state([{"h": 0.0}, {"h": 1.0}], m)
    g0, g1 = (w.generation_id for w in state.workers)
    for wid, gen, step, value in ((0, g0, 5, 100.0), (0, g0, 10, 1.0), (1, g1, 10, 2.0)):
        state, _ = apply(state, Eval(f"p{wid}", wid, gen, step, value), 1.0, m)
    assert state.mutator_state.num_exploits == 1
    assert all(w.params == "p0" for w in state.workers)


@pytest.mark.parametrize(
    "seconds, start",
    [(60, 1000.0), (np.float32(60.0), 1.7e9), (np.float16(60.0), 1.7e9)],
    ids=["int", "float32 at a unix time", "float16 at a unix time"],
)
def test_wta_by_seconds(seconds, start):
    # a numpy float32 interval made the times it was added to float32 (1.7e9 + 60 s
    # rounded to 1.7e9: a round at every report), a float16 one inf (review)
    clock = FakeClock(start)
    m = WinnerTakeAllGenetic(lambda meta: meta, seconds_per_exploit=seconds)
    pop = PopulationController([{"h": 0.0}, {"h": 1.0}], m, clock=clock)
    gens = [w.generation_id for w in pop.active_workers]
    clock.advance(30)
    pop.set_eval(0, gens[0], 5, "a", 1.0)
    pop.set_eval(1, gens[1], 5, "b", 0.5)
    assert pop.state.mutator_state.num_exploits == 0
    clock.advance(31)
    pop.set_eval(0, gens[0], 9, "a", 1.0)
    assert pop.state.mutator_state.num_exploits == 0
    pop.set_eval(1, gens[1], 9, "b", 0.5)
    assert pop.state.mutator_state.num_exploits == 1
    assert all(w.params == "b" for w in pop.active_workers)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_wta_nan_or_inf_never_wins(bad):
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
    state, _ = _wta_round(m, [5.0, bad, 7.0])
    assert all(w.params == "p0" for w in state.workers)


def test_wta_all_non_finite_copies_nobody():
    m = WinnerTakeAllGenetic(lambda meta: {"h": meta["h"] + 0.5}, steps_per_exploit=10)
    state, _ = _wta_round(m, [math.nan, math.inf, math.nan])
    for i, w in enumerate(state.workers):
        assert w.params == f"p{i}" and w.meta_params == {"h": i + 0.5}


def test_wta_keyed_mutate_fn_is_reproducible_from_seed():
    def mutate(meta, key):
        return {"h": meta["h"] + float(np.random.default_rng(key).normal())}

    def final(seed):
        m = WinnerTakeAllGenetic(mutate, steps_per_exploit=10)
        state = fresh_state([{"h": 0.0}] * 3, m, seed=seed)
        for step in (10, 20, 30):
            for i, w in enumerate(state.workers):
                state, _ = apply(state, Eval(None, i, w.generation_id, step, float(i)), 1.0, m)
        return [w.meta_params["h"] for w in state.workers]

    assert final(0) == final(0)
    assert final(0) != final(1)
    assert len(set(final(0))) > 1  # different workers got different keys


def test_wta_never_mutates_the_winner_meta_params():
    def mutate(meta):
        meta["h"] += 1  # a careless user function...
        return meta

    m = WinnerTakeAllGenetic(mutate, steps_per_exploit=10)
    state, gens = _wta_round(m, [1.0, 0.0, 2.0])
    # ...changes only the copies it returns, never the winner's recorded hparams
    assert state.history[gens[1]][10].meta_params == {"h": 1.0}
    assert [w.meta_params for w in state.workers] == [{"h": 2.0}] * 3


def test_wta_requires_an_interval():
    with pytest.raises(ValueError, match="exactly one of steps_per_exploit and seconds"):
        WinnerTakeAllGenetic(lambda m: m)
    with pytest.raises(ValueError, match="exactly one"):  # the seed refuses both too
        WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10, seconds_per_exploit=60.0)
    with pytest.raises(TypeError, match="keep_winner must be a bool"):
        WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10, keep_winner="yes")
    with pytest.raises(ValueError, match="positive"):
        WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=0)


def test_wta_convergence_three_workers():
    """3 workers, score = h**2, starting at h = 1: |h| falls well below its start."""

    def mutate(meta, key):
        return {"h": meta["h"] + 0.2 * float(np.random.default_rng(key).normal())}

    m = WinnerTakeAllGenetic(mutate, steps_per_exploit=10)
    pop = PopulationController([{"h": 1.0}] * 3, m, seed=3)
    steps = [0, 0, 0]
    gens = [None, None, None]
    for _ in range(60):
        for i in range(3):
            data = pop.maybe_get_worker_data(i, gens[i], steps[i], None, None)
            if data is not None:
                gens[i], steps[i] = data.generation_id, data.step
            steps[i] += 10
            pop.set_eval(i, gens[i], steps[i], None, pop.history.meta_params(gens[i])["h"] ** 2)
    best = min(abs(w.meta_params["h"]) for w in pop.active_workers)
    assert pop.state.mutator_state.num_exploits >= 50
    assert best < 0.3


# -- FixedSchedule ----------------------------------------------------------------------
A, B, C = {"lr": 1.0}, {"lr": 0.5}, {"lr": 0.1}


def _follow(pop, worker_id, steps, eval_every=None):
    """Runs a worker through ``steps`` steps, returning the meta_params used at each."""
    gen, meta, params, used = None, None, 0, []
    step = 0
    while step < steps:
        data = pop.maybe_get_worker_data(worker_id, gen, step, params, meta)
        if data is not None:
            gen, meta, step = data.generation_id, data.meta_params, data.step
            params = data.params if data.params is not None else 0
        used.append((step, meta))
        params += 1
        step += 1
        if eval_every and step % eval_every == 0:
            pop.set_eval(worker_id, gen, step, params, 1.0)
    return used


def test_fixed_schedule_on_ask_follows_schedule_exactly():
    m = FixedSchedule({0: A, 10: B, 30: C}, on_ask=True)
    pop = PopulationController([{"lr": 99.0}], m)
    used = _follow(pop, 0, 40)
    assert [m for s, m in used] == [A] * 10 + [B] * 20 + [C] * 10
    assert [s for s, _ in used] == list(range(40))
    assert pop.state.mutator_state == (3,)


def test_fixed_schedule_applies_a_change_at_the_eval_of_its_step_as_the_seed():
    # the eval at step k starts the change for k; the worker gets it at its next ask, so
    # the update from step k to k + 1 uses it (the step-0 point waits for the first eval)
    pop = PopulationController([{"lr": 99.0}], FixedSchedule({0: A, 10: B, 30: C}))
    used = _follow(pop, 0, 40, eval_every=1)
    assert [m for s, m in used] == [{"lr": 99.0}] + [A] * 9 + [B] * 20 + [C] * 10
    assert [s for s, _ in used] == list(range(40))
    assert pop.state.mutator_state == (3,)
    gen = pop.active_workers[0].generation_id
    assert pop.maybe_get_worker_data(0, gen, 40, 0, C) is None  # an ask changes nothing


@pytest.mark.parametrize("on_ask", [False, True])
def test_fixed_schedule_never_starts_a_generation_from_an_eval_sent_without_params(on_ask):
    """A worker that saves at 10 and evaluates at 15 without params: the change due at
    15 handed it ``params=None`` ("initialise fresh parameters"), even when its ask
    brought its params: its training restarted from scratch, silently."""
    pop = PopulationController([{"lr": 0.1}], FixedSchedule({15: {"lr": 0.01}}, on_ask=on_ask))
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    pop.set_eval(0, gen, 10, "saved-10", 0.9)
    pop.set_eval(0, gen, 15, None, 0.8)
    live = np.arange(3.0)  # what the worker holds at step 15
    new = pop.maybe_get_worker_data(0, gen, 15, live, None)
    if on_ask:  # the ask brings its params: the new generation starts from them
        assert (new.meta_params, new.step) == ({"lr": 0.01}, 15)
        np.testing.assert_array_equal(new.params, live)
        assert new.params is not live  # the controller's own copy, read-only
        live[0] = 7.0
        assert pop.history[new.generation_id][15].params[0] == 0.0
        assert pop.history[gen][15].params is None  # what the history recorded stays
    else:  # it waits for the next evaluation with params
        assert new is None and pop.active_workers[0].generation_id == gen
        new = pop.set_eval_and_ask(0, gen, 20, "saved-20", 0.7)
        assert (new.params, new.meta_params, new.step) == ("saved-20", {"lr": 0.01}, 20)


def test_fixed_schedule_goes_by_where_the_worker_is_not_an_abandoned_later_step():
    """After a restart moved the worker back from an evaluation without params (step 15)
    to 10, the change due at 12 waited for an eval with params past 15 (review)."""
    pop = PopulationController([{"lr": 0.1}], FixedSchedule({12: {"lr": 0.01}}))
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    pop.set_eval(0, gen, 10, "a10", 1.0)
    pop.set_eval(0, gen, 15, None, 0.9)
    assert pop.maybe_get_worker_data(0, None, 0, None, None).step == 10  # a restart
    new = pop.set_eval_and_ask(0, gen, 12, "a12", 0.8)
    assert (new.params, new.meta_params, new.step) == ("a12", {"lr": 0.01}, 12)


def test_fixed_schedule_on_ask_leaves_a_change_at_an_eval_without_params_to_the_ask():
    """A loop that sends params at its asks only: the change due at its eval without
    params was applied there, with ``params=None`` (review)."""
    pop = PopulationController([{"lr": 0.1}], FixedSchedule({15: {"lr": 0.01}}, on_ask=True))
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    pop.set_eval(0, gen, 15, None, 0.8)
    assert pop.active_workers[0].generation_id == gen
    new = pop.maybe_get_worker_data(0, gen, 15, "live-15", None)
    assert (new.params, new.meta_params, new.step) == ("live-15", {"lr": 0.01}, 15)


def test_fixed_schedule_changes_a_worker_that_never_sends_params_at_its_eval():
    pop = PopulationController([{"lr": 0.1}], FixedSchedule({15: {"lr": 0.01}}))
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    pop.set_eval(0, gen, 10, None, 0.9)
    new = pop.set_eval_and_ask(0, gen, 15, None, 0.8)
    assert (new.params, new.meta_params, new.step) == (None, {"lr": 0.01}, 15)


def test_fixed_schedule_takes_string_steps_as_the_seed():
    m = FixedSchedule({"0": A, "10": B})
    assert m.describe() == m.describe()
    pop = PopulationController([A], m)
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 10, "p10", 1.0)
    assert pop.active_workers[0].meta_params == B
    with pytest.raises(ValueError, match="distinct"):
        FixedSchedule({"10": A, 10: B})
    with pytest.raises(ValueError, match="'ten'"):
        FixedSchedule({"ten": A})


def test_fixed_schedule_with_evals_only_switches_at_eval_steps():
    pop = PopulationController([A], FixedSchedule({0: A, 10: B, 30: C}))
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 5, "p5", 1.0)
    assert pop.active_workers[0].meta_params == A
    pop.set_eval(0, pop.active_workers[0].generation_id, 12, "p12", 1.0)
    w = pop.active_workers[0]
    assert w.meta_params == B and w.step == 12 and w.params == "p12"


def test_fixed_schedule_before_first_point_uses_initial_and_skips_to_latest_point():
    pop = PopulationController([{"lr": 7.0}], FixedSchedule({10: B, 20: C}, on_ask=True))
    used = _follow(pop, 0, 5)
    assert all(m == {"lr": 7.0} for _, m in used)
    gen = pop.active_workers[0].generation_id
    data = pop.maybe_get_worker_data(0, gen, 25, "p25", {"lr": 7.0})
    assert data.meta_params == C and data.step == 25 and data.params == "p25"
    assert pop.history.branch_point(data.generation_id) == (gen, 25)


def test_fixed_schedule_keeps_progress_in_state_not_in_schedule():
    schedule = {0: A, 10: B}
    m = FixedSchedule(schedule, on_ask=True)
    pop = PopulationController([A, A], m)
    _follow(pop, 0, 15)
    assert schedule == {0: A, 10: B}
    assert pop.state.mutator_state == (2,)  # worker 1 has not started
    _follow(pop, 1, 3)
    assert pop.state.mutator_state == (2, 1)


def _schedule_script(mutator, draws, n, *, branch_every):
    """The states of a random event script: reports past change points (with and without
    params, repeated steps, another worker's generation), asks (old generations too),
    lost checkpoints and finished workers, sometimes going back to an older state."""
    from jaxpop.events import Finish, Missing

    state = fresh_state([{"lr": 0.1 * (i + 1)} for i in range(n)], mutator)
    states = [state]
    for t, (code, w, b) in enumerate(draws):
        w %= n
        if branch_every and t % branch_every == branch_every - 1 and len(states) > 2:
            state = states[-3]
        worker = state.workers[w]
        gen, step = worker.generation_id, worker.step
        params = None if b % 3 == 0 else f"p{w}@{step + b % 7}"
        if code <= 3:
            event = Eval(params, w, gen, step + b % 7, float(b % 5))
        elif code == 4:
            event = Ask(params, None, w, gen, step + b % 4)
        elif code == 5:
            other = state.workers[(w + 1) % n]
            event = Eval("x", w, other.generation_id, other.step + 2, 1.0)
        elif code == 6:
            old = list(state.history)[b % len(state.history)]
            event = Ask(None, None, w, old, state.history.latest(old).step + 1)
        elif code == 7:
            event = Missing(w, gen, step)
        else:
            event = Finish(w)
        try:
            state, _ = apply(state, event, float(t + 1), mutator)
        except ValueError:  # a lost checkpoint that held no params: nothing to load
            assert isinstance(event, Missing)
        states.append(state)
    return states


@pytest.mark.parametrize("on_ask", [False, True])
@pytest.mark.parametrize("every", [None, 3])
def test_fixed_schedule_from_its_kept_view_equals_one_read_afresh(on_ask, every, monkeypatch):
    """An update looks only at the workers its kept view says a change is due for; on
    random event scripts (branching back to older states too) every state equals that
    of a mutator that looks at every worker afresh at every call."""
    import random

    from jaxpop.mutators import _views

    schedule = {0: A, 4: B, 9: C, 15: {"lr": 0.0}} if every is None else (lambda s: {"lr": s // 5})
    n = 4
    for seed in range(25):
        rng = random.Random(seed)
        draws = [(rng.randrange(10), rng.randrange(100), rng.randrange(100)) for _ in range(60)]
        branch_every = (0, 5, 8)[seed % 3]
        make = lambda: FixedSchedule(schedule, every, on_ask=on_ask)  # noqa: E731
        kept = _schedule_script(make(), draws, n, branch_every=branch_every)
        with monkeypatch.context() as patch:
            patch.setattr(_views.Views, "view", _views.Views.build)
            fresh = _schedule_script(make(), draws, n, branch_every=branch_every)
        for t, (a, b) in enumerate(zip(kept, fresh, strict=True)):
            assert (a.workers, a.mutator_state) == (b.workers, b.mutator_state), (seed, t)
            assert a.history == b.history, (seed, t)
        assert sum(kept[-1].mutator_state) > n  # points were passed


def test_fixed_schedule_copies_values_as_they_enter():
    """A mapping's values (and a callable's arrays) were the user's objects: editing them
    later rewrote the history in memory, not the journal (review)."""
    b = {"lr": 0.01}
    pop = PopulationController([{"lr": 0.1}], FixedSchedule({0: {"lr": 0.1}, 10: b}))
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    new = pop.set_eval_and_ask(0, gen, 10, "p10", 0.5)
    b["lr"] = 999.0
    assert new.meta_params == {"lr": 0.01} == pop.active_workers[0].meta_params
    assert pop.history.meta_params(new.generation_id) == {"lr": 0.01}
    shared = np.array([1.0, 2.0])
    schedule = lambda s: {"w": shared if s >= 5 else np.zeros(2)}  # noqa: E731
    pop = PopulationController([{"w": np.zeros(2)}], FixedSchedule(schedule, every=5))
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    new = pop.set_eval_and_ask(0, gen, 5, "p5", 0.5)
    shared[:] = 9.0
    stored = pop.history.meta_params(new.generation_id)["w"]
    np.testing.assert_array_equal(stored, [1.0, 2.0])
    assert not stored.flags.writeable
    # a Piecewise's value trees too (they were taken as they were: helper-242)
    b = {"lr": 0.2}
    schedule = piecewise({0: {"lr": 0.1}, 5: b})
    pop = PopulationController([{"lr": 0.1}], FixedSchedule(schedule))
    b["lr"] = 999.0
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    assert pop.set_eval_and_ask(0, gen, 5, "p5", 0.5).meta_params == {"lr": 0.2}


@pytest.mark.parametrize(
    "schedule",
    [
        {0: {"lr": 0.1}, 10: {"lr": 0.01}},
        piecewise({0: {"lr": 0.1}, 10: {"lr": 0.01}}),
        FixedSchedule(lambda t: {"lr": 0.1 if t < 10 else 0.01}, every=5),
    ],
)
def test_fixed_schedule_changes_a_worker_at_its_own_evaluation_not_anothers(schedule):
    """Another worker's evaluation started a generation for a worker that had asked at
    step 0 and trained on without reporting: at its stale assignment (step 0, fresh
    params), so its next ask sent it back there to initialise afresh, its training lost
    (helper-242)."""
    mutator = schedule if isinstance(schedule, FixedSchedule) else FixedSchedule(schedule)
    start = {"lr": 0.5} if isinstance(schedule, FixedSchedule) else {"lr": 0.1}
    pop = PopulationController([start, start], mutator, seed=0)
    g0 = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    g1 = pop.maybe_get_worker_data(1, None, 0, None, None).generation_id
    pop.set_eval(0, g0, 1, "w0@1", 0.5)  # worker 1 trains steps 0-3 meanwhile
    assert pop.maybe_get_worker_data(1, g1, 3, "w1@3", start) is None  # keep going
    assert pop.active_workers[1].generation_id == g1
    # its own evaluation passes the point at 0: a generation from its own params there
    new = pop.set_eval_and_ask(1, g1, 3, "w1@3", 0.4)
    assert (new.params, new.step, new.meta_params) == ("w1@3", 3, {"lr": 0.1})
    first = pop.history.first(new.generation_id)
    assert (first.step, first.params, first.parent) == (3, "w1@3", (g1, 3))


@pytest.mark.parametrize("every", [None, 1, 3, 5])
def test_fixed_schedule_on_a_grid_keeps_the_initial_entry_until_the_first_point(every):
    """With ``every``, a mapping was called as a Piecewise, which gives its first value
    before its first step: {10: b} applied b from step 1 (review)."""
    pop = PopulationController([{"lr": 0.1}], FixedSchedule({10: {"lr": 0.01}}, every=every))
    used = _follow(pop, 0, 16, eval_every=1)
    first = 10 if every is None else -(-10 // every) * every  # the grid point at or past 10
    assert [m["lr"] for _, m in used] == [0.1] * first + [0.01] * (16 - first)
    assert len(pop.history) == 2  # one change: no generation before it


def _sent_back(pop):
    """Worker 0 evaluates at 5 and 10 (a change point: a new generation), then cannot
    load step 10's params: checkpoint_missing sends it back to step 5."""
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    pop.set_eval(0, gen, 5, "p5", 1.0)
    gen = pop.set_eval_and_ask(0, gen, 10, "p10", 1.0).generation_id
    return pop.checkpoint_missing(0, gen, 10, exists=lambda p: p != "p10")


@pytest.mark.parametrize("on_ask", [False, True])
@pytest.mark.parametrize("every", [None, 5])
def test_a_worker_sent_back_before_a_point_trains_those_steps_as_scheduled(on_ask, every):
    """checkpoint_missing sent a worker back from step 10 (lr 0.01 from there) to step 5
    with lr 0.01, and the schedule never gave it 0.1 again: steps 5 to 9 were trained
    with the later value, silently (review)."""
    schedule = {10: {"lr": 0.01}, 20: {"lr": 0.001}}
    if every is not None:
        schedule = piecewise({0: {"lr": 0.1}, **schedule})
    pop = PopulationController([{"lr": 0.1}], FixedSchedule(schedule, every, on_ask=on_ask))
    back = _sent_back(pop)  # (the reply: the ask hook sees the worker where it is sent)
    assert (back.step, back.params, back.meta_params) == (5, "p5", {"lr": 0.1})
    assert pop.maybe_get_worker_data(0, back.generation_id, 5, "p5", back.meta_params) is None
    gen, used = back.generation_id, []
    for step in range(6, 13):
        data = pop.set_eval_and_ask(0, gen, step, f"q{step}", 1.0)
        used.append((step, pop.active_workers[0].meta_params["lr"]))
        gen = data.generation_id if data is not None else gen
    assert used == [(s, 0.1) for s in range(6, 10)] + [(s, 0.01) for s in range(10, 13)]


def test_a_worker_sent_back_that_reports_at_once_trained_as_scheduled():
    """Corrected only at the next ask or eval, a worker that trained on from the reply
    and reported at the point again had trained steps 5 to 9 with the later value
    (review): the reply itself gives the value in force."""
    pop = PopulationController([{"lr": 0.1}], FixedSchedule({10: {"lr": 0.01}}))
    back = _sent_back(pop)
    new = pop.set_eval_and_ask(0, back.generation_id, 10, "r10", 1.0)
    assert pop.history[back.generation_id][10].meta_params == {"lr": 0.1}
    assert (new.step, new.params, new.meta_params) == (10, "r10", {"lr": 0.01})
    assert pop.state.mutator_state == (1,)


@pytest.mark.parametrize("on_ask", [False, True])
def test_a_worker_a_restart_sends_back_before_a_point_trains_as_scheduled(on_ask):
    """A restart onto params another worker reported missing (a handle both held) sends
    the worker back through the ask's own step back, which skipped the ask hook: it
    trained steps 5 to 10 with the later value (review)."""
    schedule = FixedSchedule({10: {"lr": 0.01}}, on_ask=on_ask)
    pop = PopulationController([{"lr": 0.1}, {"lr": 0.1}], schedule, seed=1)
    gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in (0, 1)]
    pop.set_eval(0, gens[0], 5, "w0p5", 1.0)
    for i in (0, 1):
        gens[i] = pop.set_eval_and_ask(i, gens[i], 10, "shared/ckpt-10", 1.0).generation_id
    pop.checkpoint_missing(1, gens[1], 10, exists=lambda p: p != "shared/ckpt-10")
    restart = pop.maybe_get_worker_data(0, None, 0, None, None)
    assert (restart.step, restart.params, restart.meta_params) == (5, "w0p5", {"lr": 0.1})


def test_a_stale_ask_does_not_send_a_worker_back_in_the_schedule():
    """An ask at a step before the worker's (a stale one) was taken for a send-back: it
    recorded a checkpoint before its generation's start and a new generation (review)."""
    pop = PopulationController([{"lr": 0.1}], FixedSchedule({10: {"lr": 0.01}}, on_ask=True))
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    new = pop.set_eval_and_ask(0, gen, 10, "p10", 1.0)
    before = pop.state
    pop.maybe_get_worker_data(0, new.generation_id, 4, "p4", new.meta_params)
    assert pop.state.history == before.history and pop.state.mutator_state == (1,)
    assert tuple(pop.active_workers) == before.workers


@pytest.mark.parametrize("bad", [{}, {-1: A}, {1.5: A}, [(0, A)]])
def test_fixed_schedule_rejects_bad_schedules(bad):
    with pytest.raises(ValueError):
        FixedSchedule(bad)


# -- BranchingSingleMachine -------------------------------------------------------------
def test_branching_phases_and_directions():
    calls = []

    def mutate(meta, direction, phase_index):
        calls.append((meta["h"], direction, phase_index))
        return {"h": meta["h"] + (1.0 if direction == "pos" else -1.0)}

    m = BranchingSingleMachine(mutate, exploit_steps=10, explore_steps=5)
    state = fresh_state([{"h": 0.0}], m)
    g0 = state.workers[0].generation_id

    def ev(state, step, value):
        gen = state.workers[0].generation_id
        return apply(state, Eval(f"p{step}@{gen}", 0, gen, step, value), 1.0, m)[0]

    state = ev(state, 10, 5.0)  # exploit phase over: the centre trains on from (g0, 10)
    assert state.mutator_state.phase == "center" and calls == []
    assert state.workers[0].generation_id == g0
    state = ev(state, 15, 3.0)  # centre done -> pos branch from the branch point
    assert state.mutator_state.phase == "pos" and calls == [(0.0, "pos", 0)]
    pos_gen = state.workers[0].generation_id
    assert state.workers[0].meta_params == {"h": 1.0} and state.workers[0].step == 10
    state = ev(state, 15, 2.0)  # pos done -> neg branch from the same branch point
    assert state.mutator_state.phase == "neg" and calls[-1] == (0.0, "neg", 0)
    neg = state.workers[0]
    assert neg.meta_params == {"h": -1.0} and neg.step == 10 and neg.params == f"p10@{g0}"
    assert state.history.branch_point(neg.generation_id) == (g0, 10)
    state = ev(state, 15, 4.0)  # neg worse, pos best of three -> continue pos from its end
    w = state.workers[0]
    assert (w.generation_id, w.step, w.meta_params) == (pos_gen, 15, {"h": 1.0})
    assert state.mutator_state.phase == "exploit"
    assert state.mutator_state.phase_index == 1 and state.mutator_state.phase_start == 15
    # the worker (still on neg) asks: it gets pos back; its neg params are kept
    state, reply = apply(state, Ask("neg17", None, 0, neg.generation_id, 17), 2.0, m)
    assert reply.worker.generation_id == pos_gen
    assert state.history[neg.generation_id][17].params == "neg17"
    state = ev(state, 25, 1.0)  # the next explore's centre
    state = ev(state, 30, 1.0)  # centre done: the pos branch, with phase index 1
    assert calls[-1] == (1.0, "pos", 1)


@pytest.mark.parametrize(
    ("center", "pos", "neg", "winner"),
    [
        (1.0, 1.0, 1.0, "center"),
        (2.0, 1.0, 1.0, "pos"),
        (0.5, 1.0, 0.0, "neg"),
        (math.nan, math.nan, math.nan, "center"),
        (math.nan, 3.0, math.inf, "pos"),
    ],
)
def test_branching_keeps_the_best_of_centre_and_both_branches(center, pos, neg, winner):
    # the unperturbed hyperparameters can win, and win ties (the seed's nanargmin order)
    m = BranchingSingleMachine(lambda meta, d, i: {"h": d}, exploit_steps=2, explore_steps=2)
    state = fresh_state([{"h": "center"}], m)
    for step, value in ((2, 0.0), (4, center), (4, pos), (4, neg)):
        gen = state.workers[0].generation_id
        state, _ = apply(state, Eval(f"{gen}@{step}", 0, gen, step, value), 1.0, m)
    w = state.workers[0]
    assert w.meta_params == {"h": winner} and w.step == 4
    assert state.mutator_state.phase == "exploit"


def test_branching_ends_a_phase_only_where_a_worker_that_saves_can_be_sent_back():
    """A worker that evaluates every step and saves every third: the branches started
    from an evaluation without params ("initialise fresh parameters"), and the winner
    resumed from one; each phase now ends at the first evaluation past it that holds
    params."""
    m = BranchingSingleMachine(lambda meta, d, i: {"h": d}, exploit_steps=2, explore_steps=2)
    state = fresh_state([{"h": "center"}], m)
    g0 = state.workers[0].generation_id

    def ev(state, step, value):
        gen = state.workers[0].generation_id
        params = f"{gen}@{step}" if step % 3 == 0 or step == 1 else None
        return apply(state, Eval(params, 0, gen, step, value), 1.0, m)[0]

    state = ev(state, 1, 1.0)
    state = ev(state, 2, 1.0)  # past the exploit phase, nothing to branch from yet
    assert state.mutator_state.phase == "exploit"
    state = ev(state, 3, 1.0)  # the branch point holds params
    assert state.mutator_state.branch == (g0, 3)
    state = ev(state, 5, 0.5)  # the centre: its end holds no params, it trains on
    assert state.mutator_state.phase == "center"
    state = ev(state, 6, 0.4)
    pos = state.workers[0]
    assert state.mutator_state.phase == "pos" and (pos.params, pos.step) == (f"{g0}@3", 3)
    state = ev(state, 5, 0.1)
    state = ev(state, 6, 0.2)  # pos ends at 6, with params: it wins; neg starts
    state = ev(state, 5, 0.9)
    state = ev(state, 6, 0.9)
    w = state.workers[0]
    assert (w.generation_id, w.step, w.params) == (pos.generation_id, 6, f"{pos.generation_id}@6")


def test_branching_from_before_the_first_save_starts_its_branches_at_that_save():
    """A worker whose first save comes after the exploit phase: the branch point was an
    evaluation without params (the worker looked like one that never saves), and the
    branches started from it with ``params=None`` (review). They start from the centre's
    first save after it, and the centre trains ``explore_steps`` from there."""
    m = BranchingSingleMachine(lambda meta, d, i: {"h": d}, exploit_steps=2, explore_steps=2)
    state = fresh_state([{"h": "center"}], m)
    g0 = state.workers[0].generation_id
    for step, params in ((2, None), (3, "g0@3"), (4, None)):
        state, _ = apply(state, Eval(params, 0, g0, step, 1.0), 1.0, m)
    assert state.mutator_state.phase == "center"  # the branch point came at 2
    assert state.mutator_state.branch == (g0, 3)
    state, _ = apply(state, Eval("g0@5", 0, g0, 5, 0.5), 1.0, m)
    pos = state.workers[0]
    assert state.mutator_state.phase == "pos" and (pos.params, pos.step) == ("g0@3", 3)


def test_branching_at_the_optimum_stays_there():
    # with h already optimal, neither mutation is better: h never leaves 0.0
    def mutate(meta, direction, phase_index):
        return {"h": meta["h"] + (0.1 if direction == "pos" else -0.1)}

    m = BranchingSingleMachine(mutate, exploit_steps=2, explore_steps=2)
    pop = PopulationController([{"h": 0.0}], m)
    gen, step, meta, used = None, 0, None, []
    for _ in range(60):
        data = pop.maybe_get_worker_data(0, gen, step, None, meta)
        if data is not None:
            gen, step, meta = data.generation_id, data.step, data.meta_params
        step += 1
        pop.set_eval(0, gen, step, None, meta["h"] ** 2)
        if pop.state.mutator_state.phase == "exploit":
            used.append(pop.active_workers[0].meta_params["h"])
    assert pop.state.mutator_state.phase_index >= 5
    assert set(used) == {0.0}


def test_branching_descends_a_quadratic():
    def mutate(meta, direction, phase_index):
        return {"h": meta["h"] + (0.25 if direction == "pos" else -0.25)}

    m = BranchingSingleMachine(mutate, exploit_steps=4, explore_steps=4)
    pop = PopulationController([{"h": 3.0}], m)
    gen, step, meta = None, 0, None
    for _ in range(400):
        data = pop.maybe_get_worker_data(0, gen, step, None, meta)
        if data is not None:
            gen, step, meta = data.generation_id, data.step, data.meta_params
        step += 1
        if step % 2 == 0:
            pop.set_eval(0, gen, step, None, (meta["h"] - 1.0) ** 2)
    assert abs(pop.active_workers[0].meta_params["h"] - 1.0) <= 0.25


def test_branching_keyed_mutate_fn_receives_a_key():
    seen = []

    def mutate(meta, direction, phase_index, key):
        seen.append(np.asarray(key).shape)
        return meta

    m = BranchingSingleMachine(mutate, exploit_steps=1, explore_steps=1)
    state = fresh_state([{}], m)
    for step in (1, 2):  # the exploit phase, then the centre
        state, _ = apply(state, Eval(None, 0, state.workers[0].generation_id, step, 1.0), 1.0, m)
    assert seen == [(2,)]


def test_branching_rejects_populations_and_bad_steps():
    m = BranchingSingleMachine(lambda m, d, i: m, 1, 1)
    state = fresh_state([{}, {}], m)
    with pytest.raises(ValueError, match="exactly one worker"):
        apply(state, Eval(None, 0, state.workers[0].generation_id, 1, 1.0), 1.0, m)
    with pytest.raises(ValueError, match="exploit_steps"):
        BranchingSingleMachine(lambda m, d, i: m, 0, 1)


def _perturb(meta, key):
    return {"h": meta["h"] + float(np.random.default_rng(key).normal())}


def _branch(meta, direction, phase):
    return {"h": meta["h"] + (0.5 if direction == "pos" else -0.5) / (phase + 1)}


@pytest.mark.parametrize(
    "make",
    [
        lambda: WinnerTakeAllGenetic(_perturb, 3),
        lambda: BranchingSingleMachine(_branch, 3, 2),
        lambda: FixedSchedule({0: {"h": 1.0}, 6: {"h": 2.0}}),
        lambda: FixedSchedule(lambda step: {"h": float(step // 4)}, every=2),
        lambda: PopulationBasedTraining(
            perturbation_interval=2, hyperparam_space={"h": explore.uniform(-5.0, 5.0)}
        ),
    ],
    ids=["wta", "branching", "fixed", "fixed-callable", "pbt"],
)
def test_seed_mutators_survive_cloudpickle(make):
    """Shipping a mutator to another process (Ray, multiprocessing) keeps its type and
    behaviour, although the seed classes' ``__new__`` takes their own arguments."""
    cloudpickle = pytest.importorskip("cloudpickle")
    mutator = make()
    copy = cloudpickle.loads(cloudpickle.dumps(mutator))
    assert type(copy) is type(mutator) and len(copy) == len(mutator)

    def run(m):
        n = 1 if isinstance(m, BranchingSingleMachine) else 2
        pop = PopulationController([{"h": float(i)} for i in range(n)], m, seed=3)
        gens, steps = [None] * n, [0] * n
        for _ in range(8):
            for i in range(n):
                data = pop.maybe_get_worker_data(i, gens[i], steps[i], None, None)
                if data is not None:
                    gens[i], steps[i] = data.generation_id, data.step
                steps[i] += 2
                pop.set_eval(i, gens[i], steps[i], None, abs(pop.history.meta_params(gens[i])["h"]))
        return [(c.generation_id, c.step, c.meta_params) for c in pop.history.checkpoints()]

    assert run(copy) == run(make())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps_per_exploit": math.nan}, ValueError, "steps_per_exploit must be a finite int"),
        ({"steps_per_exploit": math.inf}, ValueError, "steps_per_exploit must be a finite int"),
        ({"steps_per_exploit": 2.5}, ValueError, "steps_per_exploit must be a finite int"),
        ({"steps_per_exploit": True}, TypeError, "steps_per_exploit must be an int"),
        ({"steps_per_exploit": "10"}, TypeError, "steps_per_exploit must be an int"),
        ({"seconds_per_exploit": math.nan}, ValueError, "seconds_per_exploit must be a finite"),
        ({"seconds_per_exploit": -1.0}, ValueError, "seconds_per_exploit must be positive"),
        ({"steps_per_exploit": 5, "mutate_fn": None}, TypeError, "mutate_fn must be a function"),
        ({"steps_per_exploit": 5, "average_over_samples": "yes"}, TypeError, "average_over"),
    ],
)
def test_wta_refuses_bad_arguments_naming_them(kwargs, error, match):
    kwargs = {"mutate_fn": lambda m: m, **kwargs}
    with pytest.raises(error, match=match):
        WinnerTakeAllGenetic(**kwargs)


def test_wta_takes_a_whole_float_steps_per_exploit_as_an_int():
    assert WinnerTakeAllGenetic(lambda m: m, 10.0).config["steps_per_exploit"] == 10.0


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((None, 1, 1), TypeError, "mutate_fn must be a function"),
        ((lambda m, d, i: m, math.inf, 1), ValueError, "exploit_steps must be a finite int"),
        ((lambda m, d, i: m, 1, math.nan), ValueError, "explore_steps must be a finite int"),
        ((lambda m, d, i: m, None, 1), TypeError, "exploit_steps must be an int"),
        ((lambda m, d, i: m, 1, -2), ValueError, "explore_steps must be positive"),
    ],
)
def test_branching_refuses_bad_arguments_naming_them(args, error, match):
    with pytest.raises(error, match=match):
        BranchingSingleMachine(*args)


class _Perturb:
    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, meta):
        return meta

    def method(self, meta):
        return meta


def test_describe_tells_configurations_apart_and_equal_ones_alike():
    import functools

    import jax

    def describe(mutate_fn, steps=10):
        return WinnerTakeAllGenetic(mutate_fn, steps).describe()

    assert describe(_Perturb(0.5)) != describe(_Perturb(50.0))  # a callable object
    assert describe(_Perturb(0.5).method) != describe(_Perturb(50.0).method)  # bound method
    assert describe(_Perturb(0.5)) == describe(_Perturb(0.5))
    assert describe(abs, np.int64(10)) == describe(abs, 10)  # numpy scalars are numbers
    keyed = functools.partial(lambda meta, base: meta, base=jax.random.key(0))
    assert describe(keyed)["config"]["mutate_fn"]["keywords"]  # a typed key: its data
    big = functools.partial(lambda meta, table: meta, table=np.arange(1000))
    other = functools.partial(lambda meta, table: meta, table=np.arange(1000) + 1)
    assert describe(big) != describe(other)  # large arrays: by a digest of their bytes
    assert describe(big) == describe(functools.partial(big.func, table=np.arange(1000)))


def test_exploits_copy_the_latest_evaluated_checkpoint_that_has_params():
    from jaxpop import PopulationBasedTraining, PopulationController
    from jaxpop.mutators import explore

    pbt = PopulationBasedTraining(  # the loser rewinds from 10 to the saved step 5
        perturbation_interval=10,
        hyperparam_space={"h": explore.uniform(0.0, 9.0)},
        allow_rewind=True,
    )
    pop = PopulationController([{"h": 1.0}, {"h": 2.0}], pbt, seed=1)
    gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in (0, 1)]
    pop.set_eval(0, gens[0], 5, "saved@5", 0.2)  # the winner saves at 5 ...
    pop.set_eval(0, gens[0], 10, None, 0.1)  # ... and evaluates at 10 without saving
    pop.set_eval(1, gens[1], 10, "loser@10", 5.0)
    data = pop.maybe_get_worker_data(1, gens[1], 10, "loser@10", None)
    assert data is not None and data.params == "saved@5" and data.step == 5
    assert pop.history.first(data.generation_id).parent == (gens[0], 5)
    # with no saved params at all (the seed's loops), the latest evaluation is copied
    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10)
    pop = PopulationController([{"h": 1.0}, {"h": 2.0}], wta, seed=1)
    gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in (0, 1)]
    pop.set_eval(0, gens[0], 10, None, 0.1)
    pop.set_eval(1, gens[1], 10, None, 5.0)
    data = pop.maybe_get_worker_data(1, gens[1], 10, None, None)
    assert data.params is None and data.step == 10


def test_a_wta_round_waits_for_a_worker_that_saves_to_save_past_its_interval():
    """A worker that saves at 5 and evaluates at 10 without params: the round copied its
    checkpoint at 5, behind the interval; with rounds shorter than the save interval,
    every round sent the population back to the same start (review). The round waits
    for its save at 12 and copies that."""
    from jaxpop import PopulationController

    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10)
    pop = PopulationController([{"h": 1.0}, {"h": 2.0}], wta, seed=1)
    gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in (0, 1)]
    pop.set_eval(0, gens[0], 5, "saved@5", 0.2)
    pop.set_eval(0, gens[0], 10, None, 0.1)
    pop.set_eval(1, gens[1], 10, "loser@10", 5.0)
    assert pop.maybe_get_worker_data(1, gens[1], 10, "loser@10", None) is None  # no round
    pop.set_eval(0, gens[0], 12, "saved@12", 0.15)  # scored by the mean at and past 10
    data = pop.maybe_get_worker_data(1, gens[1], 10, "loser@10", None)
    assert data is not None and data.params == "saved@12" and data.step == 12
    assert pop.history.first(data.generation_id).parent == (gens[0], 12)
    # by the clock too: the save must come at or after the interval's time
    wta = WinnerTakeAllGenetic(lambda m: m, seconds_per_exploit=10.0)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("a@5", 0, gens[0], 5, 0.1), 5.0, wta)
    state, _ = apply(state, Eval(None, 0, gens[0], 6, 0.1), 11.0, wta)
    state, _ = apply(state, Eval("b@6", 1, gens[1], 6, 5.0), 11.0, wta)
    assert state.mutator_state.num_exploits == 0
    state, _ = apply(state, Eval("a@7", 0, gens[0], 7, 0.1), 12.0, wta)
    assert state.mutator_state.num_exploits == 1
    assert [w.params for w in state.workers] == ["a@7", "a@7"]


def test_a_wta_round_waits_at_most_one_more_interval_for_the_best_workers_save():
    """A worker that saves only on improvement, saved at 5, and is best past 10 without
    saving again: the round waited for its save forever (review). It waits until the
    worker has reported a second interval (20), then copies the best-scoring worker that
    saved past its interval, with a warning. If none did, it never copies a save from
    before the interval (that sent the population back to the start it had trained
    from, for good with saves rarer than two intervals): it waits for the first save
    past an interval, the workers training on."""
    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10)

    def run(others):
        state = fresh_state([{"h": float(i)} for i in range(1 + len(others))], wta)
        gens = [w.generation_id for w in state.workers]
        state, _ = apply(state, Eval("a@5", 0, gens[0], 5, 0.2), 1.0, wta)
        for i, events in enumerate(others, 1):
            for params, step, value in events:
                state, _ = apply(state, Eval(params, i, gens[i], step, value), 1.0, wta)
        for step in (10, 15):
            state, _ = apply(state, Eval(None, 0, gens[0], step, 0.1), 2.0, wta)
            assert state.mutator_state.num_exploits == 0, step
        return state, gens

    # worker 2 (1.0) saved at 3 only; worker 1 (5.0) saved at its interval
    state, _ = run([[("b@10", 10, 5.0)], [("c@3", 3, 2.0), (None, 10, 1.0)]])
    with pytest.warns(RuntimeWarning, match="best worker saved no params at or past its"):
        state, _ = apply(state, Eval(None, 0, state.workers[0].generation_id, 20, 0.1), 3, wta)
    assert {(w.params, w.step) for w in state.workers} == {("b@10", 10)}
    # evaluations sparser than the interval: its first one past it is not waited out
    state = fresh_state([{"h": 0.0}, {"h": 1.0}], wta)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("a@5", 0, gens[0], 5, 0.2), 1.0, wta)
    state, _ = apply(state, Eval("b@10", 1, gens[1], 10, 5.0), 1.0, wta)
    state, _ = apply(state, Eval(None, 0, gens[0], 25, 0.1), 2.0, wta)
    assert state.mutator_state.num_exploits == 0
    with pytest.warns(RuntimeWarning, match="best worker saved no params"):
        state, _ = apply(state, Eval(None, 0, gens[0], 40, 0.1), 3.0, wta)
    assert {(w.params, w.step) for w in state.workers} == {("b@10", 10)}
    # a worker that never sends params is copied too (the copiers start fresh)
    state, _ = run([[(None, 10, 1.0)]])
    with pytest.warns(RuntimeWarning, match="best worker saved no params"):
        state, _ = apply(state, Eval(None, 0, state.workers[0].generation_id, 20, 0.1), 3, wta)
    assert {(w.params, w.step) for w in state.workers} == {(None, 10)}
    # none did: the round waits, then copies the first save past an interval
    for saver, expected in ((0, ("a@25", 25)), (1, ("c@25", 25))):
        state, gens = run([[("c@3", 3, 2.0), (None, 10, 1.0)]])
        for step in (20, 22):
            with pytest.warns(RuntimeWarning, match="no worker with a finite score has saved"):
                state, _ = apply(state, Eval(None, 0, gens[0], step, 0.1), 3.0, wta)
        assert state.mutator_state.num_exploits == 0
        worker, value = (0, 0.1) if saver == 0 else (1, 1.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state, _ = apply(state, Eval(expected[0], worker, gens[worker], 25, value), 4, wta)
        assert len(caught) == (saver == 1)  # worker 1 is not the best: warned
        assert state.mutator_state.num_exploits == 1
        assert {(w.params, w.step) for w in state.workers} == {expected}


def test_a_wta_round_never_copies_a_save_from_before_the_interval():
    """Saves every 25 steps, rounds every 10, evaluations every 5: a round that gave up
    waiting copied the best worker's save from before its interval, the start the
    population had just trained from, and every round did so again: no worker ever got
    past step 45 (review). Each round now copies a save at or past its interval, and the
    population moves on through every save."""
    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    local = [[w.generation_id, w.step] for w in state.workers]
    furthest, t = 0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # best without a save: warned
        for _ in range(60):
            for i in range(2):
                local[i][1] += 5
                generation_id, step = local[i]
                params = f"w{i}@{step}" if step % 25 == 0 else None
                t += 1.0
                state, _ = apply(state, Eval(params, i, generation_id, step, 1 / step + i), t, wta)
                furthest = max(furthest, step)
                for j, w in enumerate(state.workers):
                    if w.generation_id != local[j][0]:
                        assert w.step >= local[j][1] - 10  # never behind one interval
                        local[j] = [w.generation_id, w.step]
    assert furthest >= 250 and state.mutator_state.num_exploits >= 9


def test_a_wta_round_with_no_finite_score_restarts_each_worker_from_its_own_save():
    """Every score NaN: each worker mutates its own hyperparameters from its own save
    past the interval, which the round waits for (it restarted each from its own save
    before the interval, the population never passing its second save: review); one
    that diverged and stopped saving goes back to its latest save once it has waited
    out a second interval (it stalled every round for good: review)."""
    wta = WinnerTakeAllGenetic(lambda m: {"h": m["h"] + 1}, steps_per_exploit=10)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("a@5", 0, gens[0], 5, math.nan), 1.0, wta)
    state, _ = apply(state, Eval(None, 0, gens[0], 10, math.nan), 1.0, wta)
    state, _ = apply(state, Eval("b@10", 1, gens[1], 10, math.nan), 1.0, wta)
    state, _ = apply(state, Eval(None, 1, gens[1], 12, math.nan), 1.0, wta)
    assert state.mutator_state.num_exploits == 0  # worker 0 has saved only at 5
    state, _ = apply(state, Eval("a@15", 0, gens[0], 15, math.nan), 1.0, wta)
    assert [(w.params, w.step, w.meta_params) for w in state.workers] == [
        ("a@15", 15, {"h": 2.0}),
        ("b@10", 10, {"h": 3.0}),
    ]
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("b@20", 1, gens[1], 20, math.nan), 1.0, wta)
    for step in (25, 30):  # worker 0 has stopped saving: waited out at 35
        state, _ = apply(state, Eval(None, 0, gens[0], step, math.nan), 1.0, wta)
    assert state.mutator_state.num_exploits == 1
    state, _ = apply(state, Eval(None, 0, gens[0], 35, math.nan), 1.0, wta)
    assert [(w.params, w.step, w.meta_params) for w in state.workers] == [
        ("a@15", 15, {"h": 3.0}),
        ("b@20", 20, {"h": 4.0}),
    ]


def test_a_wta_round_never_sends_a_diverged_save_to_anyone():
    """Workers that diverged and kept saving (the flagship loop saves at every
    evaluation): the no-finite-score round restarted each from its own NaN save, round
    after round, though each held a finite save; and a best worker whose latest save
    was NaN (a finite evaluation without params after it) had that save copied to every
    worker (hostile test). Each goes back to its latest save with a finite value (then,
    in the generation that started there, to that start), and a NaN save is never
    copied."""
    wta = WinnerTakeAllGenetic(lambda m: {"h": m["h"] / 2}, steps_per_exploit=10)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    for step in (5, 10):
        for i in (0, 1):
            value = 0.5 if step < 10 else math.nan
            gen = state.workers[i].generation_id
            state, _ = apply(state, Eval(f"w{i}@{step}", i, gen, step, value), 1.0, wta)
    assert [(w.params, w.step) for w in state.workers] == [("w0@5", 5), ("w1@5", 5)]
    starts = [w.generation_id for w in state.workers]
    for i in (0, 1):  # diverged again past the interval (15), still saving
        state, _ = apply(state, Eval(f"v{i}@15", i, starts[i], 15, math.nan), 2.0, wta)
    assert state.mutator_state.num_exploits == 2
    assert [(w.params, w.step, w.meta_params) for w in state.workers] == [
        ("w0@5", 5, {"h": 0.25}),
        ("w1@5", 5, {"h": 0.5}),
    ]
    # the best's latest save is NaN: never copied; the save past it is
    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10, average_over_samples=False)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("a@10", 0, gens[0], 10, math.nan), 1.0, wta)
    state, _ = apply(state, Eval(None, 0, gens[0], 11, 0.1), 1.0, wta)
    state, _ = apply(state, Eval("b@10", 1, gens[1], 10, 1.0), 1.0, wta)
    assert state.mutator_state.num_exploits == 0  # waits for worker 0's finite save
    state, _ = apply(state, Eval("a@12", 0, gens[0], 12, 0.1), 1.0, wta)
    assert {w.params for w in state.workers} == {"a@12"}


def test_a_wta_round_copies_the_winners_finite_save_and_the_collection_keeps_it():
    """The best worker saved 0.2 past its interval, then a NaN save: the round looked at
    its latest save only, waited and then copied a worse worker; and what a worker that
    diverged goes back to was not among the handles a collection keeps, so a collection
    before the round sent it to a fresh start (review)."""
    from jaxpop.checkpointing import retained_handles

    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10, average_over_samples=False)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("a@10", 0, gens[0], 10, 0.3), 1.0, wta)
    state, _ = apply(state, Eval("a@12", 0, gens[0], 12, math.nan), 1.0, wta)
    state, _ = apply(state, Eval(None, 0, gens[0], 13, 0.2), 1.0, wta)
    assert "a@10" in retained_handles(state, keep_best=0)
    state, _ = apply(state, Eval("b@10", 1, gens[1], 10, 1.0), 1.0, wta)
    assert state.mutator_state.num_exploits == 1
    assert {(w.params, w.step) for w in state.workers} == {("a@10", 10)}
    # with no finite score each goes back to its finite save: kept until then
    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    gens = [w.generation_id for w in state.workers]
    for i in (0, 1):
        state, _ = apply(state, Eval(f"w{i}@5", i, gens[i], 5, 0.5), 1.0, wta)
    state, _ = apply(state, Eval("w0@10", 0, gens[0], 10, math.nan), 1.0, wta)
    assert {"w0@5", "w1@5"} <= retained_handles(state, keep_best=0)


def test_a_wta_round_does_not_wait_for_a_worker_that_stopped_saving_unless_it_is_best():
    """Worker 1 saved at 5 and diverged (NaN, no params since): the round waited for it
    to save past its interval, forever (review). Only the best worker's save is awaited;
    a NaN is never best."""
    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("b@5", 1, gens[1], 5, 1.0), 1.0, wta)
    state, _ = apply(state, Eval(None, 1, gens[1], 10, float("nan")), 2.0, wta)
    state, _ = apply(state, Eval("a@10", 0, gens[0], 10, 0.5), 3.0, wta)
    assert state.mutator_state.num_exploits == 1
    assert [w.params for w in state.workers] == ["a@10", "a@10"]


def test_a_wta_round_does_not_stall_on_a_never_saving_worker_that_copied_a_save():
    """A worker that never sends params copied a saver's checkpoint: its new generation's
    start holds params, so it read as a worker that saves, and once it was best its
    round waited for a save that never comes (review). After a second interval the round
    copies the best worker that saved past its interval."""
    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("a@10", 0, gens[0], 10, 0.5), 1.0, wta)
    state, _ = apply(state, Eval(None, 1, gens[1], 10, 1.0), 2.0, wta)
    assert state.mutator_state.num_exploits == 1
    gens = [w.generation_id for w in state.workers]  # both start from a@10
    state, _ = apply(state, Eval("a@20", 0, gens[0], 20, 0.5), 3.0, wta)
    state, _ = apply(state, Eval(None, 1, gens[1], 20, 0.1), 4.0, wta)  # best, no params
    assert state.mutator_state.num_exploits == 1  # waits for its save past 20
    with pytest.warns(RuntimeWarning, match="saved no params"):
        state, _ = apply(state, Eval(None, 1, gens[1], 30, 0.1), 5.0, wta)
    assert state.mutator_state.num_exploits == 2
    assert [(w.params, w.step) for w in state.workers] == [("a@20", 20)] * 2


# -- decision counts --------------------------------------------------------------------
def test_every_builtin_mutator_counts_decisions_and_copies_in_one_form():
    from jaxpop.mutators import DecisionCounts, decision_counts

    wta = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
    state, _ = _wta_round(wta, [1.0, 0.0, 2.0])
    assert decision_counts(wta, state.mutator_state) == DecisionCounts(3, 2)
    assert decision_counts(wta, {"num_exploits": 4}) == DecisionCounts(0, 0)  # an old run
    pop = PopulationController([A], FixedSchedule({0: A, 10: B}))
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 12, "p12", 1.0)
    assert pop.decision_counts == DecisionCounts(2, 0) and pop.decision_counts.copy_rate == 0
    branching = BranchingSingleMachine(lambda m, d, i: m, 1, 1)
    assert decision_counts(branching, branching.init()).copy_rate != 0.0  # NaN: none yet
    with pytest.raises(TypeError, match="does not count"):
        decision_counts(Mutator(lambda: (), lambda *a: (*a[:2], ())), ())


# -- finished and gone workers ------------------------------------------------------------
def test_wta_stops_waiting_for_a_finished_worker_and_never_copies_it():
    from jaxpop.events import Finish

    m = WinnerTakeAllGenetic(lambda meta: {"h": meta["h"] + 100.0}, steps_per_exploit=10)
    state = fresh_state([{"h": 0.0}, {"h": 1.0}, {"h": 2.0}], m)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("p0", 0, gens[0], 10, 3.0), 1.0, m)
    state, _ = apply(state, Eval("p2", 2, gens[2], 5, 0.0), 1.0, m)  # best so far, done
    state, _ = apply(state, Eval("p1", 1, gens[1], 10, 1.0), 1.0, m)
    assert state.mutator_state.num_exploits == 0  # waits for worker 2
    state, reply = apply(state, Finish(2), 2.0, m)
    assert reply.worker.status == "finished" and reply.changes is not None
    assert state.mutator_state.num_exploits == 1  # the round goes on without it
    assert state.workers[2].generation_id == gens[2]  # keeps its assignment
    assert all(w.params == "p1" for w in state.workers[:2])  # worker 2 (0.0) never won
    # a finished worker that reports again is active again
    state, _ = apply(state, Eval("p2b", 2, gens[2], 12, 0.5), 3.0, m)
    assert state.workers[2].status == "active"


def _searching_mutators(space):
    from jaxpop.mutators import FirePBT, MultipleFrequenciesPBT
    from jaxpop.mutators.pb2 import PB2

    return {
        "pbt": PopulationBasedTraining(perturbation_interval=5, hyperparam_space=space),
        "pb2": PB2(perturbation_interval=5, hyperparam_space=space),
        "fire": FirePBT(
            perturbation_interval=5,
            sub_population_sizes=(4, 4),
            num_evaluators=2,
            max_eval_steps=20,
            hyperparam_space=space,
        ),
        "mf_pbt": MultipleFrequenciesPBT(t_ready=5, hyperparam_space=space, frequencies=(1, 2)),
    }


@pytest.mark.parametrize("name", ["pbt", "pb2", "fire", "mf_pbt"])
def test_a_nan_hyperparameter_in_the_initial_population_is_refused_naming_the_member(name):
    """Copying a member whose hyperparameter is NaN can never be explored: before, every
    later decision that chose it raised, refusing the reporting worker's evaluation."""
    space = {"lr": explore.uniform(0.0, 1.0)}
    mutator = _searching_mutators(space)[name]
    population = [{"lr": 0.5}] * 10
    with pytest.raises(ValueError, match=r"initial_population\[3\]: meta_params\['lr'\] is NaN"):
        PopulationController([*population[:3], {"lr": math.nan}, *population[4:]], mutator)
    with pytest.raises(TypeError, match=r"initial_population\[0\]"):
        PopulationController([{"lr": "fast"}, *population[1:]], mutator)
    with pytest.raises(KeyError, match=r"initial_population\[9\]: meta_params\['lr'\] is missing"):
        PopulationController([*population[:9], {"rate": 0.5}], mutator)
    # out of the space is fine: copies are clipped into it
    PopulationController([{"lr": 5.0}, *population[1:]], mutator)


def test_the_population_check_passes_what_explore_can_move_and_skips_a_resume(tmp_path):
    space = {"opt": explore.choice(["adam", "sgd"]), "lr": explore.uniform(0.0, 1.0)}
    m = PopulationBasedTraining(perturbation_interval=5, hyperparam_space=space)
    # a value not in its choice's list is redrawn when explored: accepted
    PopulationController([{"opt": "rmsprop", "lr": 0.5}] * 4, m)
    # a resumed run's stored state wins over initial_population: not checked again
    log_dir = str(tmp_path / "run")
    PopulationController([{"opt": "adam", "lr": 0.5}] * 4, m, log_dir=log_dir).close()
    with PopulationController([{"opt": "adam", "lr": math.nan}] * 4, m, log_dir=log_dir) as pop:
        assert pop.active_workers[0].meta_params["lr"] == 0.5
    with pytest.raises(ValueError, match="is NaN"):
        PopulationController([{"opt": "adam", "lr": math.nan}] * 4, m, log_dir=str(tmp_path / "b"))


@pytest.mark.parametrize(
    "factors", [np.array([0.8, 1.2]), (f for f in (0.8, 1.2)), [np.float32(0.8), 1.2]]
)
def test_perturbation_factors_may_be_any_iterable_of_numbers(factors):
    space = {"lr": explore.uniform(0.0, 1.0)}
    m = PopulationBasedTraining(
        perturbation_interval=5, hyperparam_space=space, perturbation_factors=factors
    )
    assert m.describe()["config"]["perturbation_factors"] is not None


def test_the_ask_hook_sees_an_int_step_and_a_str_generation_id():
    for to_id, step in ((np.str_, 12), (str, 12.0), (str, np.int64(12))):
        schedule = FixedSchedule({0: {"lr": 0.1}, 10: {"lr": 0.01}}, on_ask=True)
        pop = PopulationController([{"lr": 0.1}], schedule)
        gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
        # the hook starts the step-10 value's generation from the worker's step 12 (it
        # failed on np.str_ / 12.0 / np.int64, which it was handed as they came)
        new = pop.maybe_get_worker_data(0, to_id(gen), step, "params", None)
        assert (new.meta_params, type(new.generation_id), type(new.step)) == (
            {"lr": 0.01},
            str,
            int,
        )
        assert new.step == 12 and pop.history.branch_point(new.generation_id) == (gen, 12)


def _halve(meta_params):
    return {"lr": meta_params["lr"] / 2}


def _decaying(step):
    return {"lr": 0.1 / (1 + step)}


def _branch_lr(meta_params, direction, phase_index):
    return {"lr": meta_params["lr"] * (1.5 if direction == "pos" else 0.5)}


_SPACE = {"lr": explore.log_uniform(1e-4, 1.0)}
_PICKLED = {
    "pbt": lambda: PopulationBasedTraining(perturbation_interval=2, hyperparam_space=_SPACE),
    "pb2": lambda: PB2(perturbation_interval=2, hyperparam_space=_SPACE),
    "fire": lambda: FirePBT(
        perturbation_interval=2,
        sub_population_sizes=(3, 3),
        num_evaluators=2,
        max_eval_steps=4,
        hyperparam_space=_SPACE,
    ),
    "mf_pbt": lambda: MultipleFrequenciesPBT(
        t_ready=2, hyperparam_space=_SPACE, frequencies=(1, 2)
    ),
    "wta": lambda: WinnerTakeAllGenetic(_halve, steps_per_exploit=2),
    "fixed": lambda: FixedSchedule({0: {"lr": 0.1}, 4: {"lr": 0.05}}),
    "fixed_every": lambda: FixedSchedule(_decaying, every=3),
    "fixed_piecewise": lambda: FixedSchedule(piecewise({0: {"lr": 0.1}, 4: {"lr": 0.05}})),
    "branching": lambda: BranchingSingleMachine(_branch_lr, 2, 2),
}


@pytest.mark.parametrize("name", sorted(_PICKLED))
def test_every_mutator_pickles_and_the_copy_decides_as_the_original(name):
    """``multiprocessing`` ships a mutator with pickle (Ray with cloudpickle): each
    built-in mutator pickles (no local functions in it) and the copy makes the same
    decisions as the original on the same reports."""
    import pickle

    def run(mutator):
        n = 1 if name == "branching" else 8  # (BranchingSingleMachine drives one worker)
        population = [{"lr": 0.01 * (i + 1)} for i in range(n)]
        pop = PopulationController(population, mutator, seed=1, clock=lambda: 0.0)
        for step in range(1, 9):
            for i in range(n):
                work = pop.active_workers[i]
                pop.maybe_get_worker_data(i, work.generation_id, work.step, None, None)
                value = math.sin(7.0 * i + 3.0 * step) + 0.1 * step
                pop.set_eval(i, work.generation_id, step, f"p{i}@{step}", value)
        return pop.history, pop.active_workers, pop.decision_counts

    made = _PICKLED[name]
    original, copied = run(made()), run(pickle.loads(pickle.dumps(made())))
    assert original[0] == copied[0] and original[1] == copied[1]
    assert original[2] == copied[2]


def test_branching_single_machine_refuses_a_population_where_it_enters():
    """A controller of two workers with BranchingSingleMachine is refused when it is
    built (it failed only at the first report)."""
    from jaxpop import PopulationController
    from jaxpop.mutators import BranchingSingleMachine

    mutator = BranchingSingleMachine(lambda meta: meta, exploit_steps=5, explore_steps=5)
    with pytest.raises(ValueError, match="drives exactly one worker, got 2"):
        PopulationController([{"lr": 0.1}, {"lr": 0.2}], mutator)
    PopulationController([{"lr": 0.1}], mutator)  # one worker: fine


def test_a_mutate_fn_that_edits_an_object_hparam_in_place_cannot_change_the_history():
    """Hyperparameters held in an object that is not a pytree (a ``SimpleNamespace``)
    were handed to ``mutate_fn`` as they were: editing it in place changed the winner's
    recorded hparams, and every copier shared the one object, mutated once per copier."""
    import types

    def mutate_fn(m):
        m.lr = m.lr * 0.5
        return m

    pop = PopulationController(
        [types.SimpleNamespace(lr=0.1), types.SimpleNamespace(lr=0.2)],
        WinnerTakeAllGenetic(mutate_fn, steps_per_exploit=10),
    )
    a = pop.maybe_get_worker_data(0, None, 0, None, None)
    b = pop.maybe_get_worker_data(1, None, 0, None, None)
    pop.set_eval(0, a.generation_id, 10, "a10", 0.5)
    pop.set_eval(1, b.generation_id, 10, "b10", 0.3)  # worker 1 wins
    assert pop.history[b.generation_id][10].meta_params.lr == 0.2
    assert [w.meta_params.lr for w in pop.active_workers] == [0.1, 0.1]
    assert pop.active_workers[0].meta_params is not pop.active_workers[1].meta_params


@pytest.mark.parametrize("kind", ["pbt", "pbt_synch", "mf_pbt"])
def test_a_save_whose_value_is_not_finite_is_never_copied(kind):
    # worker 0 saved params as it diverged (NaN), then reported its best value without
    # params: it ranks first, but what copying it gives is that diverged save
    from jaxpop.mutators import MultipleFrequenciesPBT

    space = {"lr": explore.log_uniform(1e-4, 1.0)}
    if kind == "mf_pbt":
        m = MultipleFrequenciesPBT(t_ready=10, hyperparam_space=space, frequencies=(1, 2))
    else:
        m = PopulationBasedTraining(
            perturbation_interval=10, hyperparam_space=space, synch=kind == "pbt_synch"
        )
    copied = []
    for seed in range(4):  # (a synchronous round's copiers draw their parents)
        pop = PopulationController([{"lr": 0.001 * (i + 1)} for i in range(8)], m, seed=seed)
        gens = [w.generation_id for w in pop.active_workers]
        pop.set_eval(0, gens[0], 5, "diverged", math.nan)
        pop.set_eval(0, gens[0], 12, None, 0.0)
        for i in range(1, 8):
            pop.set_eval(i, gens[i], 10, f"p{i}@10", float(i))
        copied += [
            pop.history.get_checkpoint(*pop.history.branch_point(w.generation_id))
            for w in pop.active_workers
            if w.generation_id not in gens
        ]
    assert copied, "nobody copied: the test shows nothing"
    assert all(c.params != "diverged" and math.isfinite(c.value) for c in copied), copied


def test_fire_never_copies_a_member_with_nothing_that_may_be_copied():
    # (with its only save diverged, its copiers were sent to its start: fresh params at
    # step 0)
    from jaxpop.mutators import FirePBT

    m = FirePBT(
        perturbation_interval=10,
        sub_population_sizes=(4, 2),
        num_evaluators=1,
        max_eval_steps=1000,
        hyperparam_space={"lr": explore.log_uniform(1e-4, 1.0)},
        quantile_fraction=0.25,
    )
    pop = PopulationController([{"lr": 0.01 * (i + 1)} for i in range(7)], m, seed=0)
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 5, "diverged", math.nan)
    pop.set_eval(0, gens[0], 10, None, 0.01)  # best, without params
    for i, value in ((1, 0.2), (2, 0.3), (3, 0.9)):
        pop.set_eval(i, gens[i], 10, f"w{i}@10", value)
    for i in range(4):
        worker = pop.active_workers[i]
        assert worker.params != "diverged"
        assert worker.step == 10, (i, worker)  # nobody was sent back to a fresh start


@pytest.mark.parametrize("synch", [True, False])
def test_a_pbt_member_with_nothing_that_may_be_copied_ranks_last(synch):
    # (it ranked first by its evaluation without params: a copier that drew it kept going)
    space = {"lr": explore.log_uniform(1e-4, 1.0)}
    m = PopulationBasedTraining(
        perturbation_interval=10, hyperparam_space=space, synch=synch, allow_rewind=True
    )
    pop = PopulationController([{"lr": 0.01 * (i + 1)} for i in range(4)], m, seed=0)
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 5, "diverged", math.nan)
    for i, value in ((1, 0.2), (2, 0.3), (3, 0.9)):
        pop.set_eval(i, gens[i], 10, f"w{i}@10", value)
    pop.set_eval(0, gens[0], 10, None, 0.01)  # best, without params: its decision
    assert pop.active_workers[0].params in ("w1@10", "w2@10")  # it ranks last: it copies
    assert all(w.params != "diverged" for w in pop.active_workers)


def test_the_window_mean_is_within_an_ulp_and_equal_values_average_to_themselves():
    """A window of seven equal values averaged below them (fsum of v / n rounded each
    term) and lost an exact tie to a window of one."""
    import random
    from fractions import Fraction

    import numpy as np

    from jaxpop.mutators.base import window_mean

    rng = random.Random(1)
    for _ in range(2000):
        values = [rng.random() * 10 ** rng.randint(-3, 3) for _ in range(rng.randint(1, 9))]
        exact = float(sum(map(Fraction, values)) / len(values))
        assert abs(window_mean(values) - exact) <= math.ulp(exact)
        assert window_mean([values[0]] * len(values)) == values[0]
    assert window_mean([1.7e308, 1.7e308, 1.6e308]) > 1.6e308  # (no overflow on the way)
    float32s = [np.float32(0.1), np.float32(0.2), np.float32(0.7)]  # (divided in float64)
    exact = float(sum(Fraction(float(v)) for v in float32s) / 3)
    assert abs(window_mean(float32s) - exact) <= math.ulp(exact)


def test_takes_key_reads_through_wrappers_by_the_names_of_parameters_only():
    """A wrapper may pass on more arguments than it gets: reading the wrapped function's
    arity handed a seed-form function a key (every round raised); a keyword-only key
    behind a wrapper was passed positionally; a cycle of closures recursed without end
    (helper-128)."""

    def adds(extra):  # a decorator that passes its own argument on
        def decorate(fn):
            def wrapper(*args):
                return fn(*args, extra)

            return wrapper

        return decorate

    @adds(0.5)
    def scaled(meta, scale):  # the seed's form, behind it
        return {"h": meta["h"] * scale}

    def plain(fn):
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    @plain
    def kw_only(meta, *, key):
        return {"h": meta["h"] + float(np.asarray(key)[1] % 2)}

    def a(*args):
        return b(*args)

    def b(*args):
        return a(*args)

    with pytest.warns(UserWarning, match="cannot tell"):
        assert not takes_key(scaled, 1)  # (an arity through a wrapper says nothing)
    assert takes_key(kw_only, 1) and takes_key(functools.partial(plain(kw_only)), 1)
    key = np.array([0, 3], np.uint32)
    assert call_mutate_fn(kw_only, True, ({"h": 2.0},), key) == {"h": 3.0}
    with pytest.warns(UserWarning, match="cannot tell"):
        assert not takes_key(a, 1)  # (not a RecursionError)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not takes_key(plain(lambda meta: meta), 1)  # certain: no warning
        state, _ = _wta_round(WinnerTakeAllGenetic(kw_only, 10), [0.3, 0.1, 0.2])
        assert all(w.step == 10 for w in state.workers)  # (the round ran, with its key)
    with pytest.warns(UserWarning, match="cannot tell"):
        mutator = WinnerTakeAllGenetic(scaled, 10)
    state, _ = _wta_round(mutator, [0.3, 0.1, 0.2])  # called the seed's way: it runs
    assert all(w.step == 10 for w in state.workers)


def test_a_mutation_functions_result_keeps_its_order_and_objects_its_argument_is_a_copy():
    """Containers and arrays of a result are copied (key order kept); other objects keep
    their identity (a choice between objects: ``meta["act"] in CHOICES``), and one whose
    copy would raise never fails a round. The argument is a deep copy, an object
    array's elements included (helper-128, helper-129)."""

    class Handle:
        def __deepcopy__(self, memo):
            raise RuntimeError("cannot be copied")

    note, handle = types.SimpleNamespace(x=1), Handle()
    out = call_mutate_fn(
        lambda meta: {"wd": 0.1, "lr": 0.2, "h": handle, "n": note, "a": np.ones(2)},
        False,
        ({"h": 1.0},),
        np.zeros(2, np.uint32),
    )
    assert list(out) == ["wd", "lr", "h", "n", "a"]  # (the function's order, not sorted)
    assert out["h"] is handle and out["n"] is note and not out["a"].flags.writeable
    boxed = np.empty(1, object)
    boxed[0] = {"width": 1}
    seen = []

    def edits(meta):
        seen.append(meta)
        meta["b"][0]["width"] = 999
        return meta

    call_mutate_fn(edits, False, ({"b": boxed, "n": note},), np.zeros(2, np.uint32))
    assert boxed[0] == {"width": 1} and seen[0]["n"] is not note  # (the history's, intact)


def test_a_keyword_only_key_behind_a_wrapper_without_kwargs_is_not_passed_by_name():
    def args_only(fn):
        def wrapper(*args):
            return fn(*args)

        return wrapper

    @args_only
    def mutate(meta, *, key=None):
        return meta

    with pytest.warns(UserWarning, match="cannot tell"):
        assert not takes_key(mutate, 1)
    assert call_mutate_fn(mutate, False, ({"h": 1.0},), np.zeros(2, np.uint32)) == {"h": 1.0}


def test_a_mutator_told_whether_its_function_takes_a_key_calls_it_so():
    # what no signature tells: a seed-era adapter that supplies its own key (*args,
    # closing over a keyed function: read as keyed, so handed a second key, it raised
    # every round), and a wrapper closing over a function and a logger (the seed's form
    # with a warning, so a keyed function behind it raised every round)
    def keyed(meta, key):
        return {"h": meta["h"] + float(np.asarray(key)[1] % 3)}

    def adapter(*args):
        return keyed(*args, np.array([0, 7], np.uint32))

    calls = []

    def logged(fn):
        def wrapper(*args):
            calls.append(len(args))
            return fn(*args)

        return wrapper

    keyed_and_logged = logged(keyed)  # (its closure holds fn and calls)

    for fn, given in ((adapter, False), (keyed_and_logged, True)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # told: no warning
            wta = WinnerTakeAllGenetic(fn, steps_per_exploit=10, mutate_fn_takes_key=given)
        assert wta.config["mutate_fn_takes_key"] is given
        state, gens = _wta_round(wta, [0.3, 0.1, 0.2])
        assert all(w.step == 10 and w.generation_id not in gens for w in state.workers)
        pbt = PopulationBasedTraining(
            perturbation_interval=10, custom_explore_fn=fn, custom_explore_fn_takes_key=given
        )
        state = fresh_state([{"h": 0.0}, {"h": 1.0}], pbt)
        for i, value in ((1, 0.1), (0, 0.9)):  # worker 0, the worse, copies
            gen = state.workers[i].generation_id
            state, _ = apply(state, Eval(f"p{i}", i, gen, 10, value), 1.0, pbt)
        assert state.workers[0].params == "p1"

    branching = []

    def branch(*args):  # (meta, direction, phase_index[, key])
        branching.append(len(args))
        return args[0]

    for given, arity in ((True, 4), (False, 3)):
        branching.clear()
        m = BranchingSingleMachine(branch, 1, 1, mutate_fn_takes_key=given)
        state = fresh_state([{}], m)
        for step in (1, 2):
            gen = state.workers[0].generation_id
            state, _ = apply(state, Eval(None, 0, gen, step, 1.0), 1.0, m)
        assert branching == [arity]  # (the "pos" branch's start)
    assert calls and set(calls) == {2}  # the logged wrapper got the key

    # said to take a key, a function with no parameter for it takes it in **kwargs (a
    # positional key raised: helper-133); one with a free positional slot there
    def in_kwargs(meta, **kw):
        return {"h": meta["h"] + float(np.asarray(kw["key"])[1] % 3)}

    def second(meta, extra, **kw):
        assert not kw
        return {"h": meta["h"] + float(np.asarray(extra)[1] % 3)}

    for fn in (in_kwargs, second):
        wta = WinnerTakeAllGenetic(fn, steps_per_exploit=10, mutate_fn_takes_key=True)
        state, gens = _wta_round(wta, [0.3, 0.1, 0.2])
        assert all(w.generation_id not in gens for w in state.workers)

    for bad in ("yes", 1, 0.0):
        with pytest.raises(TypeError, match="True, False or None"):
            WinnerTakeAllGenetic(keyed, steps_per_exploit=1, mutate_fn_takes_key=bad)
        with pytest.raises(TypeError, match="True, False or None"):
            BranchingSingleMachine(keyed, 1, 1, mutate_fn_takes_key=bad)
        with pytest.raises(TypeError, match="True, False or None"):
            PopulationBasedTraining(
                perturbation_interval=1, custom_explore_fn=keyed, custom_explore_fn_takes_key=bad
            )
    with pytest.raises(ValueError, match="custom_explore_fn, which was not given"):
        PopulationBasedTraining(
            perturbation_interval=1,
            hyperparam_space={"h": explore.uniform(0.0, 1.0)},
            custom_explore_fn_takes_key=True,
        )
    # the warning names the way out
    with pytest.warns(UserWarning, match="mutate_fn_takes_key"):
        WinnerTakeAllGenetic(lambda *a: a[0], steps_per_exploit=1)
