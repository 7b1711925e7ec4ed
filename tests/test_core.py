"""Unit tests of the pure transitions on hand-made states."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import apply, fresh_state, noop_mutator
from jaxpop import core
from jaxpop.events import Ask, Eval, Finish, Missing
from jaxpop.mutators.base import Mutator, start_generation
from jaxpop.records import ActiveWorker, Checkpoint


def test_init_makes_one_generation_per_member():
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], noop_mutator(), now=5.0)
    assert state.population_size == 2 and state.num_events == 0
    ids = [w.generation_id for w in state.workers]
    assert len(set(ids)) == 2 and list(state.history) == ids
    for w, meta in zip(state.workers, [{"h": 1.0}, {"h": 2.0}], strict=True):
        assert w.params is None and w.step == 0 and w.meta_params == meta
        root = state.history[w.generation_id][0]
        assert root.value is None and root.parent is None and root.time == 5.0


@pytest.mark.parametrize("bad", [[], (), iter([])])
def test_init_rejects_empty_population(bad):
    with pytest.raises(ValueError, match="empty"):
        fresh_state(bad, noop_mutator())


def test_init_rejects_a_mapping():
    with pytest.raises(TypeError, match="sequence"):
        fresh_state({"h": 1.0}, noop_mutator())


def test_same_seed_same_generation_ids_other_seed_other_ids():
    a = fresh_state([{}, {}], noop_mutator(), seed=1)
    b = fresh_state([{}, {}], noop_mutator(), seed=1)
    c = fresh_state([{}, {}], noop_mutator(), seed=2)
    assert [w.generation_id for w in a.workers] == [w.generation_id for w in b.workers]
    assert a.workers[0].generation_id != c.workers[0].generation_id


def test_every_64_bit_seed_is_its_own_run_and_other_seeds_are_refused():
    from jaxpop.keys import root_key

    # JAX without x64 keeps a seed's low 32 bits: 2**32 was the run of seed 0
    seeds = [0, 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40, 2**63, 2**64 - 1]
    keys = {tuple(root_key(s).tolist()) for s in seeds}
    assert len(keys) == len(seeds)
    assert root_key(0).tolist() == [0, 0] and root_key(7).tolist() == [0, 7]  # as before
    assert root_key(np.uint64(2**40)).tolist() == root_key(2**40).tolist()
    assert root_key(-1).tolist() == root_key(2**32 - 1).tolist()  # modulo 2**32, as JAX
    with jax.enable_x64(True):  # (JAX with x64 extended the sign: the run of 2**64 - 1)
        assert root_key(-1).tolist() == [0, 2**32 - 1]
        assert root_key(-(2**31)).tolist() == root_key(2**31).tolist()
        assert root_key(2**40 + 3).tolist() == [2**8, 3]
    for seed in (2**64, -(2**31) - 1):
        with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*31, 2\*\*64\)"):
            root_key(seed)
    for seed in (1.0, True, "1", math.nan):
        with pytest.raises(TypeError, match="seed must be an int"):
            root_key(seed)
    assert root_key(None).tolist() != root_key(None).tolist()  # a random seed: a run of its own
    # another default key implementation: a clear error, not JAX's key-shape error at
    # the first ask (nor a healthy log_dir called corrupt)
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        with pytest.raises(RuntimeError, match="jax_default_prng_impl is 'rbg'"):
            root_key(0)
    finally:
        jax.config.update("jax_default_prng_impl", "threefry2x32")


def test_ask_without_generation_returns_assignment_and_changes_nothing():
    m = noop_mutator()
    state = fresh_state([{"h": 1.0}], m)
    for gen in (None, ""):
        new, reply = apply(state, Ask(None, None, 0, gen, 0), 1.0, m)
        assert new is state and reply.worker == state.workers[0] and reply.warning is None


def test_ask_with_current_generation_returns_none():
    m = noop_mutator()
    state = fresh_state([{"h": 1.0}], m)
    gen = state.workers[0].generation_id
    new, reply = apply(state, Ask("p", {"h": 1.0}, 0, gen, 7), 1.0, m)
    assert new is state and reply.worker is None


def test_ask_with_unknown_generation_resyncs_with_warning():
    m = noop_mutator()
    state = fresh_state([{"h": 1.0}], m)
    new, reply = apply(state, Ask("p", {}, 0, "nope", 3), 1.0, m)
    assert new is state and reply.worker == state.workers[0]
    assert "nope" in reply.warning


def _reassign_mutator():
    """Moves worker 0 to a new generation from its latest evaluated checkpoint."""

    def update(s, workers, history, now, key):
        if s:
            return s, workers, ()
        source = history.latest_evaluated(workers[0].generation_id)
        worker, start = start_generation(source, {"h": 5.0}, key, 0, now)
        return True, (worker, *workers[1:]), (start,)

    return Mutator(init=lambda: False, update=update)


def test_replaced_worker_gets_new_assignment_and_its_last_params_are_kept():
    m = _reassign_mutator()
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], m)
    old_gen = state.workers[0].generation_id
    state, reply = apply(state, Eval("p10", 0, old_gen, 10, 0.5), 1.0, m)
    assert reply.checkpoint.ref == (old_gen, 10) and reply.checkpoint.parent == (old_gen, 0)
    new_gen = state.workers[0].generation_id
    assert new_gen != old_gen
    start = state.history[new_gen][10]
    assert start.parent == (old_gen, 10) and start.params == "p10" and start.value is None
    assert state.workers[0].params == "p10" and state.workers[0].step == 10
    # the worker trained on to step 13 before asking: those params are kept first
    before = state
    state, reply = apply(state, Ask("p13", {"h": 1.0}, 0, old_gen, 13), 2.0, m)
    assert reply.worker == state.workers[0] and reply.worker.generation_id == new_gen
    kept = state.history[old_gen][13]
    assert kept.params == "p13" and kept.value is None and kept.parent == (old_gen, 10)
    assert state.num_events == before.num_events + 1
    assert (old_gen, 13) not in {c.ref for c in before.history.checkpoints()}
    # asking again at an already-stored step stores nothing new
    again, reply = apply(state, Ask("p13", {"h": 1.0}, 0, old_gen, 13), 3.0, m)
    assert again is state and reply.worker.generation_id == new_gen


def test_report_records_checkpoint_with_generation_meta_params():
    m = noop_mutator()
    state = fresh_state([{"h": 1.0}], m)
    gen = state.workers[0].generation_id
    new, reply = apply(state, Eval("p", 0, gen, 10, 0.25), 4.0, m)
    c = new.history[gen][10]
    assert c == reply.checkpoint
    assert (c.params, c.meta_params, c.value, c.parent, c.step, c.time) == (
        "p",
        {"h": 1.0},
        0.25,
        (gen, 0),
        10,
        4.0,
    )
    assert new.num_events == 1 and state.history.get_checkpoint(gen, 10) is None
    # re-reporting the same step replaces value and params but keeps the parent
    newer, _ = apply(new, Eval("q", 0, gen, 10, 0.125), 5.0, m)
    c2 = newer.history[gen][10]
    assert (c2.params, c2.value, c2.parent, c2.time) == ("q", 0.125, (gen, 0), 5.0)
    assert newer.history.num_checkpoints == new.history.num_checkpoints


def test_a_report_or_ask_before_its_generation_started_records_nothing():
    """A generation copied at step 10 cannot hold a step-4 checkpoint: a stale report
    there is ignored with a warning (it became the generation's first checkpoint, with
    a parent at step 10: exploit events, the interval and from_lineage went wrong), and
    a stale ask with a generation that is not the worker's is resynced to its assignment
    without recording one (an ask with its own generation keeps going, as the seed's)."""
    m = _reassign_mutator()
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], m)
    gen = state.workers[0].generation_id
    state, _ = apply(state, Eval("p", 0, gen, 10, 0.5), 1.0, m)
    copied = state.workers[0]
    assert copied.generation_id != gen and copied.step == 10
    new, reply = apply(state, Eval("q", 0, copied.generation_id, 4, 0.1), 2.0, m)
    assert new is state and reply.checkpoint is None and "before the generation" in reply.warning
    new, reply = apply(state, Ask("q", None, 1, copied.generation_id, 4), 2.0, m)
    assert new is state and reply.worker == state.workers[1] and "stale ask" in reply.warning
    new, reply = apply(state, Ask("q", None, 0, copied.generation_id, 4), 2.0, m)
    assert new is state and reply.worker is None  # its own generation: keep going
    assert state.history.first(copied.generation_id).step == 10


def test_a_report_or_ask_into_another_workers_generation_is_ignored_with_warning():
    """Worker 1 reporting (or asking) with worker 0's generation id (mixed-up ids, an
    actor restarted under another id): its params were recorded as worker 0's, in worker
    0's generation, and the next round copied them to everyone (hostile test)."""
    m = noop_mutator()
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], m)
    gen = state.workers[0].generation_id
    new, reply = apply(state, Eval("w1-params", 1, gen, 12, 0.01), 1.0, m)
    assert new is state and reply.checkpoint is None and "worker 0 holds" in reply.warning
    new, reply = apply(state, Ask("w1-params", None, 1, gen, 12), 1.0, m)
    assert reply.worker == state.workers[1] and "worker 0 holds" in reply.warning
    assert new.history.get_checkpoint(gen, 12) is None  # nothing recorded
    new, reply = apply(state, Eval("p", 0, gen, 12, 0.5), 1.0, m)  # its own: recorded
    assert reply.warning is None and new.history.get_checkpoint(gen, 12).params == "p"


@pytest.mark.parametrize("gen", [None, "", "never-made"])
def test_report_for_unknown_generation_is_ignored_with_warning(gen):
    m = noop_mutator()
    state = fresh_state([{"h": 1.0}], m)
    new, reply = apply(state, Eval("p", 0, gen, 10, 0.25), 4.0, m)
    assert new is state and reply.checkpoint is None and "never made" in reply.warning


@pytest.mark.parametrize("event_type", ["ask", "eval"])
@pytest.mark.parametrize("worker_id", [-1, 2, 100])
def test_worker_id_out_of_range_raises_value_error_naming_range(event_type, worker_id):
    m = noop_mutator()
    state = fresh_state([{}, {}], m)
    gen = state.workers[0].generation_id
    event = (
        Ask(None, None, worker_id, gen, 0)
        if event_type == "ask"
        else Eval(None, worker_id, gen, 0, 1.0)
    )
    with pytest.raises(ValueError, match=r"0 to 1"):
        apply(state, event, 1.0, m)


@pytest.mark.parametrize("value", ["0.5", None, [1.0], np.ones(3), True, object()])
def test_non_numeric_value_raises_type_error(value):
    with pytest.raises(TypeError, match="real number"):
        core.as_value(value)


@pytest.mark.parametrize(
    "value, expected",
    [
        (1, 1.0),
        (np.float32(0.5), 0.5),
        (np.array([2.0]), 2.0),
        (np.int64(3), 3.0),
        (jnp.bfloat16(0.25), 0.25),  # (numpy files bfloat16 under kind "V": was refused)
        (np.array([0.5], jnp.bfloat16), 0.5),
    ],
)
def test_numeric_values_become_floats(value, expected):
    out = core.as_value(value)
    assert type(out) is float and out == expected


def test_nan_and_inf_values_are_stored():
    m = noop_mutator()
    state = fresh_state([{}], m)
    gen = state.workers[0].generation_id
    state, _ = apply(state, Eval(None, 0, gen, 1, math.nan), 1.0, m)
    state, _ = apply(state, Eval(None, 0, gen, 2, -math.inf), 1.0, m)
    assert math.isnan(state.history[gen][1].value) and state.history[gen][2].value == -math.inf


def test_mutator_must_return_existing_generations():
    def update(s, workers, history, now, key):
        return s, (workers[0].replace(generation_id="ghost"),), ()

    m = Mutator(init=lambda: None, update=update)
    state = fresh_state([{}], m)
    with pytest.raises(ValueError, match="ghost"):
        apply(state, Eval(None, 0, state.workers[0].generation_id, 1, 1.0), 1.0, m)


def test_mutator_may_not_replace_checkpoints():
    def update(s, workers, history, now, key):
        return s, workers, (history.latest(workers[0].generation_id),)

    m = Mutator(init=lambda: None, update=update)
    state = fresh_state([{}], m)
    with pytest.raises(ValueError, match="already in the history"):
        apply(state, Eval(None, 0, state.workers[0].generation_id, 1, 1.0), 1.0, m)


def _adds_checkpoints(*parents):
    """A mutator whose first update adds one checkpoint per parent, in order: generation
    ``"new{i}"`` at step 0, copied from ``parents[i]``."""

    def update(s, workers, history, now, key):
        if s:
            return s, workers, ()
        meta = workers[0].meta_params
        added = [Checkpoint(None, meta, f"new{i}", None, p, 0, now) for i, p in enumerate(parents)]
        return 1, workers, tuple(added)

    return Mutator(init=lambda: 0, update=update)


def test_a_new_checkpoint_whose_parent_is_not_in_the_history_is_refused(tmp_path):
    from jaxpop import PopulationController

    m = _adds_checkpoints(("nowhere", 3))
    state = fresh_state([{}], m)
    with pytest.raises(ValueError, match=r"parent \('nowhere', 3\), which is not in the history"):
        apply(state, Eval(None, 0, state.workers[0].generation_id, 1, 1.0), 1.0, m)
    # durable: refused before it is journaled (it was, and then the run could not resume)
    with PopulationController([{}], m, str(tmp_path)) as pop:
        gen = pop.active_workers[0].generation_id
        with pytest.raises(ValueError, match="not in the history"):
            pop.set_eval(0, gen, 1, "p", 1.0)
    with PopulationController([{}], m, str(tmp_path)) as again:
        assert again.state.num_events == 0  # the eval was not recorded
        assert again.history.get_checkpoint(gen, 1) is None


def test_a_new_checkpoint_may_copy_one_added_with_it(tmp_path):
    from jaxpop import PopulationController

    m = _adds_checkpoints(("new1", 0), None)  # new0 copies new1, added after it
    with PopulationController([{}], m, str(tmp_path)) as pop:
        pop.set_eval(0, pop.active_workers[0].generation_id, 1, "p", 1.0)
        assert pop.history.first("new0").parent == ("new1", 0)
    with PopulationController([{}], m, str(tmp_path)) as again:  # the journal replays it
        assert again.history.first("new0").parent == ("new1", 0)


def test_event_keys_differ_per_event_and_are_reproducible():
    m = noop_mutator()
    state = fresh_state([{}], m)
    gen = state.workers[0].generation_id
    keys = []
    for i in range(3):
        keys.append(core.event_key(state))
        state, _ = apply(state, Eval(None, 0, gen, i + 1, 1.0), 1.0, m)
    assert len({tuple(k) for k in keys}) == 3
    again = fresh_state([{}], m)
    assert np.array_equal(core.event_key(again), keys[0])


def test_transition_rejects_unknown_events():
    m = noop_mutator()
    with pytest.raises(TypeError, match="unknown event"):
        apply(fresh_state([{}], m), ("ask",), 1.0, m)


@pytest.mark.parametrize(
    "step",
    [
        *(True, np.bool_(False), math.inf, -math.inf, math.nan, 2.5, "3", None),
        # (a bool array was step 1, a complex 12+0j step 12: helper-198)
        *(np.array(True), jnp.array(True), 12 + 0j, np.complex128(12)),
        *(np.array(True, dtype=object), np.timedelta64(12), np.datetime64(12, "s")),
    ],
)
def test_a_step_that_is_not_a_whole_number_is_refused_and_changes_nothing(step):
    state = fresh_state([{}, {}], noop_mutator())
    gen = state.workers[0].generation_id
    for event in (Eval("p", 0, gen, step, 1.0), Ask("p", None, 0, gen, step)):
        with pytest.raises(TypeError, match="step must be an int"):
            core.transition(state, event, 0.0, core.event_key(state), mutator=noop_mutator())


@pytest.mark.parametrize("step", [-1, -(2**62), 2**63, 2**64, np.uint64(2**63)])
def test_a_step_outside_int64_or_negative_is_refused_and_changes_nothing(step):
    state = fresh_state([{}, {}], noop_mutator())
    gen = state.workers[0].generation_id
    for event in (Eval("p", 0, gen, step, 1.0), Ask("p", None, 0, gen, step)):
        with pytest.raises(ValueError, match=r"step must be .* in \[0, 2\*\*63\)"):
            core.transition(state, event, 0.0, core.event_key(state), mutator=noop_mutator())
    _, reply = apply(state, Eval("p", 0, gen, 2**63 - 1, 1.0), 0.0, noop_mutator())
    assert reply.checkpoint.step == 2**63 - 1


def test_a_generation_id_is_a_str_or_none():
    state = fresh_state([{}], noop_mutator())
    gen = state.workers[0].generation_id
    # a str subclass (np.str_, as read from a numpy array) is stored as a str
    state, reply = apply(state, Eval("p", 0, np.str_(gen), 3, 1.0), 0.0, noop_mutator())
    assert type(reply.checkpoint.generation_id) is str
    assert type(state.workers[0].generation_id) is str
    for bad in ([gen], {"id": gen}, 7, b"abc"):
        for event in (Eval("p", 0, bad, 4, 1.0), Ask("p", None, 0, bad, 4)):
            with pytest.raises(TypeError, match="generation_id must be a str"):
                apply(state, event, 0.0, noop_mutator())


def test_a_whole_float_step_is_taken_as_an_int():
    state = fresh_state([{}], noop_mutator())
    gen = state.workers[0].generation_id
    _, reply = apply(state, Eval("p", 0, gen, np.float64(5.0), 1.0), 0.0, noop_mutator())
    assert reply.checkpoint.step == 5 and type(reply.checkpoint.step) is int


@pytest.mark.parametrize(
    "value",
    [10**400, -(10**400), np.longdouble("1e400"), np.array([np.longdouble("-1e400")])],
)
def test_a_value_too_large_for_a_float_is_a_value_error_naming_it(value):
    if np.finfo(np.longdouble).max <= np.finfo(np.float64).max and not isinstance(value, int):
        pytest.skip("this platform's long double is a float64")
    with pytest.raises(ValueError, match="too large for a float"):
        core.as_value(value)
    assert core.as_value(10**300) == 1e300
    assert core.as_value(np.longdouble("inf")) == math.inf  # (a diverged run, as reported)


@pytest.mark.parametrize("value", [True, np.bool_(True), np.array([True]), "1.0", None, [1.0]])
def test_a_value_that_is_not_a_real_number_is_a_type_error(value):
    with pytest.raises(TypeError, match="must be a real number"):
        core.as_value(value)


# -- a worker whose params are gone --------------------------------------------------
def _missing_state():
    """Worker 0 reported "a1" (step 1) and "a2" (step 2) on its root generation."""
    mutator = noop_mutator()
    state = fresh_state([{"h": 1}, {"h": 2}], mutator)
    gen = state.workers[0].generation_id
    for step, handle in ((1, "a1"), (2, "a2")):
        state, _ = apply(state, Eval(handle, 0, gen, step, float(step)), 0.0, mutator)
    return state, gen, mutator


def test_missing_params_step_back_in_the_workers_own_generation():
    state, gen, mutator = _missing_state()
    assert state.workers[0].params == "a2"
    new, reply = apply(state, Missing(0, gen, 2), 1.0, mutator)
    assert (reply.worker.params, reply.worker.generation_id, reply.worker.step) == ("a1", gen, 1)
    assert new.workers[0] == reply.worker and new.history[gen][2].params is None
    # the lost evaluation after the point it went back to is set aside: it never ranks
    # the worker as its latest (it continues from step 1)
    assert new.history[gen][2].value is None
    assert new.history.latest_evaluated(gen).step == 1
    assert core.redo(state, reply.changes) == new  # journaled like any event
    # "a1" goes too: back to a fresh start at the root
    new, reply = apply(new, Missing(0, gen, 1), 2.0, mutator)
    assert (reply.worker.params, reply.worker.generation_id, reply.worker.step) == (None, gen, 0)


def test_missing_sets_aside_the_evaluations_sent_without_params_after_the_point_too():
    """An evaluation sent with ``params=None`` (the worker evaluates more often than it
    saves) after the point the worker goes back to belongs to the abandoned timeline
    too; kept, it ranked the worker as its latest (a winner on a value of a run that no
    longer exists)."""
    state, gen, mutator = _missing_state()
    state, _ = apply(state, Eval(None, 0, gen, 3, 0.01), 0.0, mutator)
    state, _ = apply(state, Eval("a4", 0, gen, 4, 4.0), 0.0, mutator)
    new, reply = apply(state, Missing(0, gen, 4), 1.0, mutator)
    assert (reply.worker.params, reply.worker.step) == ("a2", 2)
    assert new.history[gen][3].value is None and new.history[gen][4].value is None
    assert new.history.latest_evaluated(gen).step == 2
    assert "1 checkpoint(s) holding params that are gone" in reply.warning
    assert core.redo(state, reply.changes) == new


def test_missing_leaves_the_evaluations_of_another_worker_on_the_generation_alone():
    """Worker 1 joins worker 0's generation and evaluates at 15 (without params) and 20;
    worker 0 then goes back from step 10: the set-aside is bounded by worker 0's own run
    (a first version wiped worker 1's values, params intact included). A mutator can no
    longer put two workers on one generation (the core refuses it); a journal written
    before may hold such a state, made by hand here."""
    m = noop_mutator()
    state = fresh_state([{"lr": 0.1}, {"lr": 0.2}], m)
    gen = state.workers[0].generation_id
    state, _ = apply(state, Eval("a10", 0, gen, 10, 5.0), 0.0, m)
    state = state._with(workers=(state.workers[0], state.workers[0]))
    for event in (Eval(None, 1, gen, 15, 0.5),):
        state, _ = apply(state, event, 0.0, m)
    state, _ = apply(state, Eval("b20", 1, gen, 20, 0.4), 0.0, m)
    state, _ = apply(state, Missing(0, gen, 10), 1.0, m)
    assert [state.history[gen][s].value for s in (15, 20)] == [0.5, 0.4]
    assert state.history.latest_evaluated(gen).step == 20


def test_a_step_reported_again_after_going_back_has_the_new_run_as_its_parent():
    """A replaced checkpoint kept the parent of the run that was abandoned: 10 -> 20,
    back to 10, then 15 and 20 again gave 20 the parent 10 (lineage 0, 10, 20)."""
    mutator = noop_mutator()
    state = fresh_state([{"h": 1}], mutator)
    gen = state.workers[0].generation_id
    for step in (10, 20):
        state, _ = apply(state, Eval(f"a{step}", 0, gen, step, 1.0), 0.0, mutator)
    state, _ = apply(state, Missing(0, gen, 20), 1.0, mutator)  # back to step 10
    for step in (15, 20):
        state, _ = apply(state, Eval(f"b{step}", 0, gen, step, 0.5), 2.0, mutator)
    assert state.history[gen][20].parent == (gen, 15)
    assert [c.step for c in state.history.lineage(gen, 20)] == [0, 10, 15, 20]
    # the same step reported again in the same run keeps its parent
    state, _ = apply(state, Eval("c20", 0, gen, 20, 0.4), 3.0, mutator)
    assert state.history[gen][20].parent == (gen, 15)


def test_a_stale_missing_report_gets_the_current_assignment_and_changes_nothing():
    state, gen, mutator = _missing_state()
    new, reply = apply(state, Missing(0, gen, 1), 1.0, mutator)  # it is on step 2 now
    assert new is state and reply.changes is None
    assert reply.worker == state.workers[0] and "no longer its assignment" in reply.warning


def test_no_ask_is_answered_with_params_another_worker_reported_missing():
    # after a round both workers started from "p1-10"; worker 0 reported it missing, and
    # worker 1's restart (or resync) was still told to load "p1-10"
    from jaxpop import PopulationController, WinnerTakeAllGenetic

    wta = WinnerTakeAllGenetic(lambda mp: {"lr": mp["lr"] / 2}, steps_per_exploit=10)
    # (a handle that is a path too: only str handles were matched across copies)
    for ask_with, handle in ((None, str), ("unknown-generation", str), (None, pathlib.Path)):
        pop = PopulationController([{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}], wta)
        g = [w.generation_id for w in pop.active_workers]
        for i, value in enumerate((0.5, 0.3, 0.4)):
            pop.set_eval(i, g[i], 10, handle(f"p{i}-10"), value)
        sent = pop.maybe_get_worker_data(0, g[0], 10, handle("p0-10"), None)
        assert sent.params == handle("p1-10")
        pop.checkpoint_missing(0, sent.generation_id, sent.step)
        reply = pop.maybe_get_worker_data(1, ask_with, 0, None, None)
        assert reply is not None and reply.params != handle("p1-10")
        assert pop.active_workers[1] == reply and not any(
            c.params == handle("p1-10") for gen in pop.history for c in pop.history[gen].values()
        )
        # a worker that keeps training on it (it loaded the params before) goes on
        assert (
            pop.maybe_get_worker_data(2, pop.active_workers[2].generation_id, 12, None, None)
            is None
        )


def test_missing_params_of_an_assignment_that_has_none_is_an_error():
    mutator = noop_mutator()
    state = fresh_state([{"h": 1}], mutator)
    with pytest.raises(ValueError, match="params=None"):
        apply(state, Missing(0, state.workers[0].generation_id, 0), 1.0, mutator)


def _unsaved_state():
    """Worker 0 saved "a10" at step 10, then evaluated at step 15 without params (it
    evaluates more often than it saves): its assignment is (gen, 15, params=None)."""
    mutator = noop_mutator()
    state = fresh_state([{"h": 1}, {"h": 2}], mutator)
    gen = state.workers[0].generation_id
    state, _ = apply(state, Eval("a10", 0, gen, 10, 1.0), 0.0, mutator)
    state, _ = apply(state, Eval(None, 0, gen, 15, 0.5), 0.0, mutator)
    assert (state.workers[0].params, state.workers[0].step) == (None, 15)
    return state, gen, mutator


@pytest.mark.parametrize("generation_id", [None, ""])
def test_a_restart_from_an_evaluation_sent_without_params_resumes_from_the_last_saved(
    generation_id,
):
    """A worker that restarted was answered ``params=None`` at step 15: it initialised
    fresh parameters and went on as if it were step 15 of its generation."""
    state, gen, mutator = _unsaved_state()
    new, reply = apply(state, Ask(None, None, 0, generation_id, 0), 1.0, mutator)
    assert (reply.worker.params, reply.worker.generation_id, reply.worker.step) == (
        "a10",
        gen,
        10,
    )
    assert "it resumes from" in reply.warning and new.workers[0] == reply.worker
    # the evaluation of the run that was lost is set aside: it never ranks the worker
    assert new.history[gen][15].value is None and new.history.latest_evaluated(gen).step == 10
    assert core.redo(state, reply.changes) == new  # journaled like any event
    # worker 1 (at its generation's start, params None: "initialise fresh") is unchanged
    same, reply = apply(new, Ask(None, None, 1, None, 0), 2.0, mutator)
    assert same is new and reply.worker.params is None and reply.warning is None


def test_a_finished_worker_asking_with_no_generation_keeps_its_last_evaluation():
    """Stepping back is for a worker that goes on: a finished one that asks again (a
    restarted process after the run's end) lost the run's final value (review)."""
    state, gen, mutator = _unsaved_state()
    state, _ = apply(state, Finish(0), 0.5, mutator)
    new, reply = apply(state, Ask(None, None, 0, None, 0), 1.0, mutator)
    assert new is state and reply.worker.status == "finished"
    assert state.history.latest_evaluated(gen).step == 15


def test_checkpoint_missing_of_an_evaluation_sent_without_params_steps_back_too():
    state, gen, mutator = _unsaved_state()  # (it was a ValueError: no way out)
    new, reply = apply(state, Missing(0, gen, 15), 1.0, mutator)
    assert (reply.worker.params, reply.worker.step) == ("a10", 10)
    assert new.workers[0] == reply.worker and new.history[gen][15].value is None


def test_a_worker_that_never_sends_params_gets_its_assignment_as_it_is():
    """A loop that keeps its params in memory (``params=None`` throughout, as some of
    the seed's do) and asks with no generation at every step: its assignment stands."""
    mutator = noop_mutator()
    state = fresh_state([{"h": 1}], mutator)
    gen = state.workers[0].generation_id
    for step in (10, 15):
        state, _ = apply(state, Eval(None, 0, gen, step, 1.0), 0.0, mutator)
    new, reply = apply(state, Ask(None, None, 0, None, 0), 1.0, mutator)
    assert new is state and reply.warning is None
    assert (reply.worker.params, reply.worker.generation_id, reply.worker.step) == (None, gen, 15)
    with pytest.raises(ValueError, match="params=None"):  # nothing to load: as before
        apply(state, Missing(0, gen, 15), 1.0, mutator)


def test_a_copy_whose_params_are_gone_starts_from_an_ancestor_with_its_own_hparams():
    state, gen, _ = _missing_state()
    parent = state.history[gen][2]
    worker, first = start_generation(parent, {"h": 9}, np.array([7, 7], np.uint32), 0, 1.0)

    def copy_once(s, workers, history, now, key):  # worker 1 copies "a2" once
        if s:
            return s, workers, ()
        return 1, (workers[0], worker), (first,)

    mutator = Mutator(init=lambda: 0, update=copy_once)
    state = state._with(mutator_state=0)
    state, _ = apply(state, Eval(None, 1, state.workers[1].generation_id, 1, 5.0), 1.0, mutator)
    assert state.workers[1].params == "a2"
    new, reply = apply(state, Missing(1, first.generation_id, 2), 2.0, mutator)
    w = reply.worker
    assert (w.params, w.step, w.meta_params) == ("a1", 1, {"h": 9})
    assert w.generation_id not in state.history  # a new generation, from gen's step 1
    assert new.history.first(w.generation_id).parent == (gen, 1)
    assert new.history[first.generation_id][2].params is None  # the copy's start, and
    assert new.history[gen][2].params is None  # the original, hold the lost handle no more
    # worker 0 was sent "a2" too: it learns it with a report of its old assignment
    assert new.workers[0].params == "a2"
    new, reply = apply(new, Missing(0, gen, 99), 3.0, mutator)
    assert (reply.worker.params, reply.worker.step) == ("a1", 1)


def test_missing_in_memory_params_are_matched_by_position_after_a_restart(tmp_path):
    # a journal decodes params into new objects: the lost checkpoint is found by its
    # place in the history, not by identity, so a reopened controller never answers
    # with the same params
    from jaxpop import PopulationController

    log_dir = str(tmp_path / "run")
    pop = PopulationController([{"h": 1.0}], noop_mutator(), log_dir)
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    pop.set_eval(0, gen, 1, {"path": "a1"}, 0.5)
    pop.set_eval(0, gen, 2, {"path": "a2"}, 0.4)
    pop.close()
    with PopulationController([{"h": 1.0}], noop_mutator(), log_dir) as pop:
        out = pop.checkpoint_missing(0, gen, 2)
        assert (out.params, out.step) == ({"path": "a1"}, 1)
        assert pop.history[gen][2].params is None


@pytest.mark.parametrize("generation_id", [None, True, 123, np.array([1, 2])])
def test_missing_refuses_a_generation_id_that_is_not_a_str(generation_id):
    state, _, mutator = _missing_state()
    with pytest.raises(TypeError, match="generation_id must be the str"):
        apply(state, Missing(0, generation_id, 2), 1.0, mutator)


def test_a_mutator_that_changes_a_workers_hparams_without_a_new_generation_is_refused():
    """The worker was told ``lr=999`` while its generation's checkpoints (and so replay
    and reports) said ``lr=0.1``; equal values made apart pass."""

    def update(state, workers, history, now, key):
        w = workers[0]
        return state, (w.replace(meta_params={"lr": float(state)}),), ()

    for lr, ok in ((999.0, False), (0.1, True)):
        m = Mutator(lambda lr=lr: lr, update)
        state = fresh_state([{"lr": 0.1}], m)
        gen = state.workers[0].generation_id
        if ok:
            new, _ = apply(state, Eval("p", 0, gen, 1, 0.5), 1.0, m)
            assert new.workers[0].meta_params == {"lr": 0.1}
        else:
            with pytest.raises(ValueError, match=r"hyperparameters never change"):
                apply(state, Eval("p", 0, gen, 1, 0.5), 1.0, m)


def test_a_mutator_may_not_add_a_checkpoint_with_other_hparams_to_a_generation():
    def update(state, workers, history, now, key):
        w = workers[0]
        if state:
            return state, workers, ()
        late = Checkpoint(
            w.params, {"lr": 9.0}, w.generation_id, None, (w.generation_id, 1), 2, now
        )
        return 1, workers, (late,)

    m = Mutator(lambda: 0, update)
    state = fresh_state([{"lr": 0.1}], m)
    gen = state.workers[0].generation_id
    with pytest.raises(ValueError, match=r"new checkpoint .* hyperparameters never change"):
        apply(state, Eval("p", 0, gen, 1, 0.5), 1.0, m)


def test_hparams_decoded_apart_from_a_journal_are_the_same_hparams(tmp_path):
    """A record holding an array (or NaN) compares unequal to its copy decoded apart
    (``==`` of arrays is ambiguous, NaN is not NaN): the encodings decide (review)."""
    import dataclasses

    from jaxpop import PopulationController, encoding

    @dataclasses.dataclass
    class Hp:
        lr: float
        mask: np.ndarray

    encoding.register_record(Hp, "test_core.Hp")

    def update(state, workers, history, now, key):  # back to the generation's start
        w, first = workers[0], history.first(workers[0].generation_id)
        if state or history.latest_evaluated(w.generation_id).step < 20:
            return state, workers, ()
        back = w.replace(params=first.params, step=first.step, meta_params=first.meta_params)
        return 1, (back,), ()

    hp = [Hp(math.nan, np.ones(2))]
    with PopulationController(hp, Mutator(lambda: 0, update), str(tmp_path)) as c:
        gen = c.maybe_get_worker_data(0, None, 0, None, None).generation_id
        c.set_eval(0, gen, 10, "p10", 1.0)
    with PopulationController(hp, Mutator(lambda: 0, update), str(tmp_path)) as c:  # resumed
        c.set_eval(0, gen, 20, "p20", 0.5)
        assert c.active_workers[0].step == 0


@pytest.mark.parametrize("step, parent_step", [(-1, 1), (2**63, 1), (3, -2)])
def test_a_mutator_that_returns_a_checkpoint_at_a_step_no_worker_can_send_is_refused(
    step, parent_step
):
    def update(state, workers, history, now, key):
        start = Checkpoint(None, {"lr": 0.5}, "new", None, (gen, parent_step), step, now)
        return state, workers, (start,)

    m = Mutator(lambda: 0, update)
    state = fresh_state([{"lr": 0.1}], m)
    gen = state.workers[0].generation_id
    with pytest.raises(ValueError, match=r"new checkpoint 0 .* a step outside \[0, 2\*\*63\)"):
        apply(state, Eval("p", 0, gen, 1, 0.5), 1.0, m)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"status": "asleep"}, r"mutator\.update's worker 1\.status is not one of"),
        ({"step": 2.0}, r"mutator\.update's worker 1\.step is not an int"),
        ({"generation_id": ""}, r"mutator\.update's worker 1\.generation_id is not a generation"),
        # a step no worker can send: it was journaled, then the worker's own call refused
        ({"step": -1}, r"mutator\.update assigned worker 1 step -1, outside \[0, 2\*\*63\)"),
        ({"step": 2**63}, r"assigned worker 1 step 9223372036854775808, outside"),
    ],
)
def test_a_mutator_that_returns_an_ill_formed_worker_is_refused_naming_it(bad, match):
    """The records a mutator returns are checked as storage reads them, the message
    naming the worker and the field (built only when a check fails)."""

    def update(state, workers, history, now, key):
        return state, (workers[0], workers[1].replace(**bad)), ()

    m = Mutator(lambda: 0, update)
    state = fresh_state([{"lr": 0.1}, {"lr": 0.2}], m)
    gen = state.workers[0].generation_id
    with pytest.raises(ValueError, match=match):
        apply(state, Eval("p", 0, gen, 1, 0.5), 1.0, m)


def _two_workers_evaluated(update):
    m = Mutator(lambda: 0, update)
    state = fresh_state([{"lr": 0.1}, {"lr": 0.2}], m)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval("p0", 0, gens[0], 10, 1.0), 1.0, m)
    return m, state, gens


def test_a_mutator_that_puts_two_workers_on_one_generation_is_refused():
    """Both workers on one new generation (or one on another's): accepted, then the
    second worker's reports were recorded over the first's, without a word
    (helper-215). Two workers swapping generations still each hold one."""

    def both_on_a_new_one(state, workers, history, now, key):
        if state or history.latest_evaluated(workers[1].generation_id) is None:
            return state, workers, ()
        source = history.latest(workers[0].generation_id)
        worker, first = start_generation(source, {"lr": 0.3}, key, 0, now)
        return 1, (worker, worker), (first,)

    def onto_the_others(state, workers, history, now, key):
        if state or history.latest_evaluated(workers[1].generation_id) is None:
            return state, workers, ()
        return 1, (workers[0], workers[0]), ()

    def swapped(state, workers, history, now, key):
        if state or history.latest_evaluated(workers[1].generation_id) is None:
            return state, workers, ()
        return 1, (workers[1], workers[0]), ()

    for update, ok in ((both_on_a_new_one, False), (onto_the_others, False), (swapped, True)):
        m, state, gens = _two_workers_evaluated(update)
        event = Eval("p1", 1, gens[1], 10, 2.0)
        if ok:
            new, _ = apply(state, event, 1.0, m)
            assert [w.generation_id for w in new.workers] == [gens[1], gens[0]]
        else:
            with pytest.raises(ValueError, match=r"assigned workers 0 and 1 the same generation"):
                apply(state, event, 1.0, m)


def test_a_mutator_that_assigns_params_other_than_recorded_is_refused():
    """An assignment at a recorded checkpoint whose params are not that checkpoint's: a
    restart loaded them while the history said the worker trained from others
    (helper-215). Equal params made apart pass."""

    def update(state, workers, history, now, key):
        w = workers[0]
        if state or history.latest_evaluated(w.generation_id) is None:
            return state, workers, ()
        return 1, (w.replace(params=key_params), workers[1]), ()

    for key_params, ok in (("other", False), ({"w": np.arange(3.0)}, True)):
        m = Mutator(lambda: 0, update)
        state = fresh_state([{"lr": 0.1}, {"lr": 0.2}], m)
        gen = state.workers[0].generation_id
        event = Eval({"w": np.arange(3.0)}, 0, gen, 10, 1.0)
        if ok:
            new, _ = apply(state, event, 1.0, m)
            assert new.workers[0].params is key_params
        else:
            with pytest.raises(ValueError, match=r"assigned worker 0 params 'other' at"):
                apply(state, event, 1.0, m)


@pytest.mark.parametrize("result", [None, (0, ()), 5, "abcd"])
def test_a_mutator_result_of_another_shape_is_refused_naming_the_shape(result):
    """``None`` raised "Value after * must be an iterable", a pair "missing 1 required
    positional argument" (helper-215)."""
    m = Mutator(lambda: 0, lambda state, workers, history, now, key: result)
    state = fresh_state([{"lr": 0.1}], m)
    gen = state.workers[0].generation_id
    with pytest.raises(TypeError, match=r"mutator\.update returned .*\(state, workers, new_chec"):
        apply(state, Eval("p", 0, gen, 1, 0.5), 1.0, m)
    as_list = Mutator(lambda: 0, lambda state, workers, history, now, key: [state, workers, []])
    new, _ = apply(fresh_state([{"lr": 0.1}], as_list), Eval("p", 0, gen, 1, 0.5), 1.0, as_list)
    assert new.history.get_checkpoint(gen, 1) is not None  # (any sequence of three)


def test_a_worker_assigned_before_its_generations_start_is_refused():
    """A mutator (a seed-style Mutate, say) started a generation at step 10 and sent a
    worker to its step 0: accepted, then every report the worker sent below step 10 was
    dropped as stale, with only a warning, and asking again changed nothing (hostile
    review, helper-174)."""

    def update(state, workers, history, now, key):
        if state:
            return state, workers, ()
        source = history.latest(workers[0].generation_id)
        worker, start = start_generation(source, {"lr": 9.0}, key, 0, now)
        return 1, (worker.replace(step=source.step - 5), workers[1]), (start,)

    m = Mutator(lambda: 0, update)
    state = fresh_state([{"lr": 0.1}, {"lr": 0.2}], m)
    gen = state.workers[0].generation_id
    with pytest.raises(ValueError, match=r"assigned worker 0 step 5 of generation .* first "):
        apply(state, Eval("p", 0, gen, 10, 0.5), 1.0, m)


def test_an_evaluation_without_params_at_a_recorded_step_keeps_the_params_recorded_there():
    """A copy that evaluates at its start before training (``params=None``: it holds
    what it loaded) replaced its start's params by ``None``: the history then said its
    generation never saves, and a copy of it initialised fresh parameters (review)."""
    from jaxpop import PopulationBasedTraining, PopulationController
    from jaxpop.mutators import explore

    pbt = PopulationBasedTraining(
        perturbation_interval=10, hyperparam_space={"h": explore.uniform(0.0, 9.0)}
    )
    pop = PopulationController([{"h": 1.0}, {"h": 2.0}], pbt, seed=1)
    gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in (0, 1)]
    pop.set_eval(1, gens[1], 10, "p1@10", 0.1)
    pop.set_eval(0, gens[0], 10, "p0@10", 5.0)
    copy = pop.maybe_get_worker_data(0, gens[0], 10, "p0@10", None)
    assert (copy.params, copy.step) == ("p1@10", 10)
    pop.set_eval(0, copy.generation_id, 10, None, 0.3)  # evaluates what it loaded
    start = pop.history.get_checkpoint(copy.generation_id, 10)
    assert (start.params, start.value) == ("p1@10", 0.3)
    assert pop.history.saves(copy.generation_id)
    assert pop.history.latest_loadable(copy.generation_id) == start
    assert pop.history.first(copy.generation_id).parent == (gens[1], 10)
    # the same report again is a repeat; a later step's None is recorded as None
    before = pop.history
    pop.set_eval(0, copy.generation_id, 10, None, 0.3)
    assert pop.history is before
    pop.set_eval(0, copy.generation_id, 12, None, 0.2)
    assert pop.history.get_checkpoint(copy.generation_id, 12).params is None


def test_an_evaluation_without_params_at_a_copys_start_after_a_restore_moves_nothing():
    """After a restore the worker's assigned params and the history's are equal but not
    the same object: an evaluation with ``params=None`` at the copy's start read as "its
    assigned step anew, with params" and journaled a reassignment to the same place."""
    from jaxpop import WinnerTakeAllGenetic

    wta = WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=10)
    state = fresh_state([{"h": 1.0}, {"h": 2.0}], wta)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Eval(np.ones(2), 0, gens[0], 10, 0.5), 1.0, wta)
    state, _ = apply(state, Eval(np.zeros(2), 1, gens[1], 10, 1.0), 2.0, wta)
    assert state.mutator_state.num_exploits == 1
    copies = tuple(w.replace(params=np.copy(w.params)) for w in state.workers)
    restored = state._with(workers=copies)
    worker = restored.workers[1]
    new, reply = apply(restored, Eval(None, 1, worker.generation_id, worker.step, 0.7), 3.0, wta)
    assert reply.changes.workers == ()
    assert new.workers[1] is worker
    # with params, the report is a restart from them: the worker's assignment follows
    new, reply = apply(restored, Eval(np.ones(2), 1, worker.generation_id, 10, 0.7), 3.0, wta)
    assert [i for i, _ in reply.changes.workers] == [1]
    assert new.workers[1].params is not worker.params


def test_changes_with_another_mutator_state_are_those_dataclasses_replace_makes():
    import dataclasses

    from jaxpop.core import Changes

    c = Changes((), ((0, ActiveWorker(None, {"lr": 0.1}, "g", 3)),), {"n": 1}, 7, 2.5)
    other = c.with_mutator_state({"n": 2})
    assert other == dataclasses.replace(c, mutator_state={"n": 2}) and other is not c
    assert c.mutator_state == {"n": 1} and type(other) is Changes


def test_a_step_back_after_an_ask_hook_that_started_a_generation_takes_a_fresh_id():
    """An ask's step-back (its worker's assignment reported missing) made its new
    generation from the event's key at index 0, as an ask hook may have just done: the
    two got one id, the hook's generation replaced in the history and two workers
    assigned the same generation."""
    from jaxpop import PopulationController

    hooked = []  # (once: the ask's hook is called again where the step-back sent it)

    def ask(state, workers, history, event, now, key):
        if event.worker_id != 1 or hooked:
            return state, workers, ()
        hooked.append(key)
        worker, first = start_generation(
            history.latest(workers[0].generation_id), {"lr": 0.5}, key, 0, now
        )
        return state, (worker, *workers[1:]), (first,)

    def update(count, workers, history, now, key):  # the second report: 1 copies 0
        if count != 1:
            return count + 1, workers, ()
        worker, first = start_generation(
            history.latest(workers[0].generation_id), {"lr": 0.2}, key, 1, now
        )
        return count + 1, (workers[0], worker), (first,)

    pop = PopulationController(
        [{"lr": 0.1}, {"lr": 0.2}], Mutator(init=int, update=update, ask=ask), seed=0
    )
    g0, g1 = (w.generation_id for w in pop.active_workers)
    pop.set_eval(0, g0, 10, "params/0", 0.4)
    pop.set_eval(1, g1, 10, "params/1", 0.5)
    copied = pop.active_workers[1]
    assert copied.params == "params/0"
    pop.checkpoint_missing(0, g0, 10)  # gone for worker 1's assignment too
    reply = pop.maybe_get_worker_data(1, g1, 10, None, None)  # to load its copy
    workers = pop.active_workers
    assert reply is not None and reply.generation_id == workers[1].generation_id
    assert workers[0].generation_id != workers[1].generation_id
    assert pop.history.first(workers[0].generation_id).meta_params == {"lr": 0.5}
    assert pop.history.first(workers[1].generation_id).meta_params == {"lr": 0.2}


@pytest.mark.parametrize(
    "key, error",
    [
        (np.array([0, 0, 7, 9], np.uint32), TypeError),  # (rbg's layout: read as [0, 0])
        (np.array([0.9, 0.2]), TypeError),  # (cut to [0, 0]: seed 0's run)
        (np.array([True, False]), TypeError),
        (np.array([[0, 1]], np.uint32), TypeError),
        (jax.random.key(0), TypeError),
        (np.array([-1, 0]), ValueError),
        ([2**32, 0], ValueError),
    ],
)
def test_a_malformed_root_key_is_refused(key, error):
    from jaxpop import keys

    with pytest.raises(error):
        core.init([{"lr": 1.0}], noop_mutator(), key=key, now=0.0)
    with pytest.raises(error):
        keys.event_key(key, 3)
    with pytest.raises(error):
        keys.new_generation_id(key)
    with pytest.raises(error):
        keys.split_key(key, 2)


def test_a_root_key_of_other_integers_is_the_same_key():
    from jaxpop import keys

    state = core.init([{"lr": 1.0}], noop_mutator(), key=np.array([3, 4], np.int64), now=0.0)
    assert state.key.dtype == np.uint32 and state.key.tolist() == [3, 4]
    assert (keys.event_key([3, 4], 5) == keys.event_key(np.array([3, 4], np.uint32), 5)).all()
    with pytest.raises(ValueError, match="index"):
        keys.new_generation_id(state.key, -1)
