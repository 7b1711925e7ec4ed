"""The controller shell: seed API, errors, warnings, views, reproducibility."""

import collections
import functools
import logging
import math
import sys
from typing import Any

import numpy as np
import pytest

from conftest import FakeClock, assert_is_a_controller, noop_mutator
from jaxpop import ActiveWorker, Checkpoint, History, PopulationController, core
from jaxpop import population as pop_mod
from jaxpop.keys import root_key
from jaxpop.mutators import FixedSchedule, WinnerTakeAllGenetic


def test_seed_names_are_importable_from_population_module():
    assert pop_mod.Checkpoint is Checkpoint and pop_mod.ActiveWorker is ActiveWorker
    from jaxpop.mutators.fixed_schedule import FixedSchedule  # noqa: F401
    from jaxpop.mutators.single_worker_explore import BranchingSingleMachine  # noqa: F401
    from jaxpop.mutators.winner_take_all_genetic import WinnerTakeAllGenetic  # noqa: F401


def test_views():
    pop = PopulationController([{"h": 1.0}, {"h": 2.0}], noop_mutator())
    workers = pop.active_workers
    assert isinstance(workers, list) and all(isinstance(w, ActiveWorker) for w in workers)
    gen = workers[1].generation_id
    pop.set_eval(1, gen, 10, "p", 0.5)
    assert isinstance(pop.history, History)
    assert isinstance(pop.history[gen][10], Checkpoint) and pop.history[gen][10].value == 0.5
    assert pop.state.history is pop.history


def test_errors_are_specific_and_controller_stays_usable(caplog):
    pop = PopulationController([{"h": 1.0}, {"h": 2.0}], noop_mutator())
    gen = pop.active_workers[0].generation_id
    before = pop.state
    with pytest.raises(ValueError, match=r"worker ids are 0 to 1"):
        pop.maybe_get_worker_data(2, None, 0, None, None)
    with pytest.raises(ValueError, match=r"worker ids are 0 to 1"):
        pop.set_eval(-1, gen, 1, None, 1.0)
    with pytest.raises(TypeError, match="real number"):
        pop.set_eval(0, gen, 1, None, "low")
    with pytest.raises(TypeError, match="worker_id must be an int"):
        pop.set_eval("0", gen, 1, None, 1.0)
    assert pop.state is before
    pop.set_eval(0, gen, 1, None, 1.0)
    assert pop.history[gen][1].value == 1.0


def test_warnings_are_logged(caplog):
    pop = PopulationController([{"h": 1.0}], noop_mutator())
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        pop.set_eval(0, "nonexistent", 1, None, 1.0)
        assert pop.maybe_get_worker_data(0, "stale", 3, None, None) is not None
        pop.maybe_get_worker_data(0, None, 0, None, None)
        pop.maybe_get_worker_data(0, "", 0, None, None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "nonexistent" in messages[0] and "ignored" in messages[0]
    assert "stale" in messages[1] and "resyncing" in messages[1]


def test_nan_value_is_stored_and_never_wins():
    pop = PopulationController([{"h": 0.0}, {"h": 1.0}], WinnerTakeAllGenetic(lambda m: m, 10))
    g0, g1 = (w.generation_id for w in pop.active_workers)
    pop.set_eval(0, g0, 10, "nan-params", float("nan"))
    pop.set_eval(1, g1, 10, "good-params", 10.0)
    assert math.isnan(pop.history[g0][10].value)
    assert [w.params for w in pop.active_workers] == ["good-params"] * 2


def test_a_masked_or_time_value_is_refused_and_records_nothing():
    # (helper-315: np.ma.masked was recorded as 0.0, a best loss that won and met a
    # StopWhen target; a masked one-element array as its hidden data; np.timedelta64(5)
    # as 5.0)
    stop = core.StopWhen(value=0.01)
    pop = PopulationController(
        [{"h": 0.0}, {"h": 1.0}], WinnerTakeAllGenetic(lambda m: m, 10), stop_when=stop
    )
    g0 = pop.active_workers[0].generation_id
    before = pop.state
    for value in (np.ma.masked, np.ma.masked_array([0.7], mask=[True])):
        with pytest.raises(ValueError, match="set_eval value is masked"):
            pop.set_eval(0, g0, 10, None, value)
    for value in (np.timedelta64(5), np.timedelta64(5, "s"), np.array([5], "timedelta64[ns]")):
        with pytest.raises(TypeError, match="got a time"):
            pop.set_eval(0, g0, 10, None, value)
    assert pop.state is before and not pop.done
    with pytest.raises(TypeError, match="one-element"):  # (not one element: as unmasked)
        pop.set_eval(0, g0, 10, None, np.ma.masked_array([0.7, 0.1, 0.2], mask=[0, 1, 0]))
    pop.set_eval(0, g0, 10, None, np.ma.masked_array([0.7], mask=[False]))  # (nothing hidden)
    assert pop.history[g0][10].value == 0.7
    from jaxpop.logging.base import worker_scalars

    with pytest.raises(ValueError, match=r"metrics\['acc'\]: is masked"):
        worker_scalars(0.5, None, {"acc": np.ma.masked})


def test_constructor_arguments_a_typo_or_a_time_made_silent_are_refused(tmp_path, monkeypatch):
    # (helper-315: a timedelta64[ns] budget was taken as that many seconds, so a run of
    # "one hour" never ended on time; log_dir="" journaled into the current directory;
    # durability and compact_after were checked only with a log_dir)
    wta = WinnerTakeAllGenetic(lambda m: m, 10)
    with pytest.raises(TypeError, match="gone_after_s must be a number"):
        PopulationController([{"h": 0.0}], wta, gone_after_s=np.timedelta64(1, "h"))
    with pytest.raises(TypeError, match="StopWhen seconds must be a number"):
        core.StopWhen(seconds=np.timedelta64(3600, "ns"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="log_dir is empty"):
        PopulationController([{"h": 0.0}], wta, log_dir="")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="durability must be"):
        PopulationController([{"h": 0.0}], wta, durability="fsnyc")
    with pytest.raises(ValueError, match="compact_after must be at least 1"):
        PopulationController([{"h": 0.0}], wta, compact_after=-5)
    with pytest.raises(TypeError, match="clock must be a function"):
        PopulationController([{"h": 0.0}], wta, clock=5)
    with pytest.raises(TypeError, match="initial_population must be a sequence"):
        PopulationController(None, wta)
    with pytest.raises(TypeError, match="clock must return seconds"):
        PopulationController([{"h": 0.0}], wta, clock=lambda: np.timedelta64(5, "ns"))
    # what was taken before is still taken: a numpy int, a sequence by __getitem__ alone

    class OldStyle:
        def __getitem__(self, i):
            if i > 1:
                raise IndexError(i)
            return {"h": float(i)}

    assert len(PopulationController(OldStyle(), wta, compact_after=np.int64(5)).active_workers) == 2

    def broken():  # (its own TypeError is raised as it is, not "must be a sequence")
        yield {"h": 1e-3 * "x"}

    with pytest.raises(TypeError, match="can't multiply sequence"):
        PopulationController(broken(), wta)
    PopulationController([{"h": 0.0}], wta, log_dir=tmp_path / "run", compact_after=np.int64(5))


def test_log_dir_is_accepted(tmp_path):
    pop = PopulationController([{"h": 1.0}], noop_mutator(), log_dir=str(tmp_path))
    assert pop.log_dir == str(tmp_path)
    assert pop.maybe_get_worker_data(0, None, 0, None, None) is not None


def test_mutator_type_is_checked():
    with pytest.raises(TypeError, match="Mutator"):
        PopulationController([{}], object())


def test_whole_run_is_reproducible_from_seed():
    def mutate(meta, key):
        return {"h": meta["h"] + float(np.random.default_rng(key).normal())}

    def run(seed):
        pop = PopulationController([{"h": 0.0}] * 4, WinnerTakeAllGenetic(mutate, 5), seed=seed)
        gens, steps = [None] * 4, [0] * 4
        for _ in range(20):
            for i in range(4):
                data = pop.maybe_get_worker_data(i, gens[i], steps[i], None, None)
                if data:
                    gens[i], steps[i] = data.generation_id, data.step
                steps[i] += 5
                pop.set_eval(i, gens[i], steps[i], None, pop.history.meta_params(gens[i])["h"])
        return [(w.generation_id, w.meta_params["h"]) for w in pop.active_workers]

    assert run(7) == run(7)
    assert run(7) != run(8)


def _twin_runs(use_report: bool) -> tuple[list, PopulationController]:
    """Four WTA workers; each reports every 5 steps with report, or set_eval then ask."""

    def mutate(meta, key):
        return {"h": meta["h"] + float(np.random.default_rng(key).normal())}

    pop = PopulationController(
        [{"h": float(i)} for i in range(4)],
        WinnerTakeAllGenetic(mutate, 5),
        seed=0,
        clock=FakeClock(),
    )
    data = [pop.maybe_get_worker_data(i, None, 0, None, None) for i in range(4)]
    gens, steps = [d.generation_id for d in data], [0] * 4
    replies = []
    for _ in range(12):
        for i in range(4):
            steps[i] += 5
            args = (
                i,
                gens[i],
                steps[i],
                f"p{i}-{steps[i]}",
                abs(pop.history.meta_params(gens[i])["h"]),
            )
            if use_report:
                reply = pop.set_eval_and_ask(*args)
            else:
                pop.set_eval(*args)
                reply = pop.maybe_get_worker_data(*args[:4], None)
            replies.append(reply)
            if reply is not None:
                gens[i], steps[i] = reply.generation_id, reply.step
    return replies, pop


def test_set_eval_and_ask_is_set_eval_then_ask_in_one_call():
    replies, pop = _twin_runs(use_report=True)
    expected, twin = _twin_runs(use_report=False)
    assert replies == expected
    assert sum(r is not None for r in replies) >= 4  # exploits were answered by report
    assert list(pop.history.checkpoints()) == list(twin.history.checkpoints())
    assert pop.active_workers == twin.active_workers
    gen = pop.active_workers[0].generation_id
    before = pop.state
    with pytest.raises(TypeError, match="real number"):
        pop.set_eval_and_ask(0, gen, 1000, None, "low")
    assert pop.state is before


def test_the_controller_prepares_its_mutator_once_with_the_population_size(tmp_path):
    from jaxpop.mutators import Mutator

    calls = []
    base = noop_mutator()
    m = Mutator(base.init, base.update, prepare=calls.append)
    with PopulationController([{}] * 3, m, log_dir=tmp_path):
        assert calls == [3]
    with PopulationController([{}] * 3, m, log_dir=tmp_path):  # resumed: prepared again
        assert calls == [3, 3]


def test_a_failing_prepare_releases_the_log_dir(tmp_path):
    from jaxpop.mutators import Mutator

    def broken(population_size):
        raise RuntimeError("no compiler today")

    base = noop_mutator()
    with pytest.raises(RuntimeError, match="no compiler today") as info:
        PopulationController([{}] * 2, Mutator(base.init, base.update, prepare=broken), tmp_path)
    # the traceback keeps the half-built controller alive: its lock must be gone anyway
    assert info.tb is not None
    with PopulationController([{}] * 2, base, tmp_path) as pop:
        assert pop.maybe_get_worker_data(0, None, 0, None, None) is not None


def test_the_controller_has_the_api_worker_code_is_typed_against():
    assert_is_a_controller(PopulationController)


def test_callers_cannot_change_the_history_behind_the_controllers_back(tmp_path):
    from jaxpop import storage

    initial = [{"h": 1.0, "opt": {"b1": 0.9}}, {"h": 2.0, "opt": {"b1": 0.8}}]
    pop = PopulationController(initial, noop_mutator(), str(tmp_path))
    initial[0]["h"] = 99.0  # edits of what was passed in ...
    initial[1]["opt"]["b1"] = 0.0
    data = pop.maybe_get_worker_data(0, None, 0, None, None)
    params = {"w": np.arange(3.0)}
    pop.set_eval(0, data.generation_id, 5, params, 1.0)
    params["w"][0] = 42.0
    params["extra"] = 1
    data.meta_params["h"] = -1.0  # ... and of what came out
    again = pop.maybe_get_worker_data(0, None, 0, None, None)
    again.meta_params["opt"]["b1"] = 0.5
    stored = pop.history.get_checkpoint(data.generation_id, 5)
    assert stored.meta_params == {"h": 1.0, "opt": {"b1": 0.9}}
    assert pop.history.meta_params(pop.active_workers[1].generation_id)["opt"] == {"b1": 0.8}
    np.testing.assert_array_equal(stored.params["w"], [0.0, 1.0, 2.0])
    assert list(stored.params) == ["w"]
    with pytest.raises(ValueError, match="read-only"):
        stored.params["w"][1] = 7.0  # stored arrays refuse edits
    pop.close()
    on_disk = storage.read_state(tmp_path)
    assert repr(storage.state_to_plain(on_disk)) == repr(storage.state_to_plain(pop.state))
    # resumed from the journal (and from a snapshot), the stored arrays refuse edits too:
    # they came back writable and shared, so a worker's in-place edit changed what the
    # controller handed out next while the journal held the old values
    for compact_after in (None, 1):
        options = {} if compact_after is None else {"compact_after": compact_after}
        resumed = PopulationController(initial, noop_mutator(), str(tmp_path), **options)
        if compact_after:
            resumed.set_eval(1, resumed.active_workers[1].generation_id, 1, None, 2.0)
            resumed.close()
            resumed = PopulationController(initial, noop_mutator(), str(tmp_path))
        stored = resumed.history.get_checkpoint(data.generation_id, 5)
        with pytest.raises(ValueError, match="read-only"):
            stored.params["w"][1] = 7.0
        handed = resumed.maybe_get_worker_data(0, data.generation_id, 5, None, None)
        assert handed is None or not handed.params["w"].flags.writeable
        resumed.close()


def test_an_empty_container_of_another_pytree_type_is_copied_too():
    """An empty OrderedDict (or defaultdict) passed in was stored as the caller's own
    object (jax gives an empty node no leaves, read as "a leaf"): an edit after the
    report changed the history (helper-234)."""
    pop = PopulationController([{"h": 1.0}], noop_mutator())
    gen = pop.active_workers[0].generation_id
    params = {"w": 1.0, "opt": collections.OrderedDict(), "d": collections.defaultdict(list)}
    pop.set_eval(0, gen, 5, params, 0.5)
    params["opt"]["m"] = "edited"
    params["d"]["x"].append(1)
    stored = pop.history.get_checkpoint(gen, 5).params
    assert stored == {"w": 1.0, "opt": collections.OrderedDict(), "d": {}}
    assert type(stored["d"]) is collections.defaultdict and stored["d"].default_factory is list


def test_params_of_an_ndarray_subclass_are_copied_too():
    """A masked array or another ndarray subclass was stored as the caller's own object
    (only exact ndarrays were copied): the caller's edit changed the history (helper-158)."""

    class Tagged(np.ndarray):
        pass

    pop = PopulationController([{"h": 1.0}], noop_mutator())
    gen = pop.active_workers[0].generation_id
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])
    tagged = np.zeros(3).view(Tagged)
    pop.set_eval(0, gen, 1, {"m": masked, "t": tagged}, 1.0)
    masked[0], tagged[1] = 99.0, 7.0
    stored = pop.history.get_checkpoint(gen, 1).params
    assert type(stored["m"]) is np.ma.MaskedArray and type(stored["t"]) is Tagged
    np.testing.assert_array_equal(stored["m"].data, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(stored["t"], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="read-only"):
        stored["t"][0] = 1.0
    for edit in (  # a masked array's mask is stored read-only too (helper-160)
        lambda m: m.__setitem__(0, np.ma.masked),
        lambda m: m.mask.__setitem__(0, True),
    ):
        with pytest.raises(ValueError, match="read-only"):
            edit(stored["m"])
    assert stored["m"].mask.tolist() == [False, True, False]


def test_the_objects_in_an_object_array_are_copied_too():
    """A dict inside a ``dtype=object`` params array stayed the caller's: editing it after
    set_eval changed the history in memory (helper-215)."""
    pop = PopulationController([{"h": 1.0}], noop_mutator())
    gen = pop.active_workers[0].generation_id
    params = np.empty(2, dtype=object)
    params[0], params[1] = {"w": [1.0, 2.0]}, np.zeros(2)
    pop.set_eval(0, gen, 5, params, 1.0)
    params[0]["w"][0], params[1][0] = 999.0, 7.0
    stored = pop.history.get_checkpoint(gen, 5).params
    assert stored[0] == {"w": [1.0, 2.0]} and stored[1].tolist() == [0.0, 0.0]
    assert not stored.flags.writeable and not stored[1].flags.writeable


def test_what_a_reply_holds_and_structured_scalars_are_the_callers_own():
    """Hostile review, helper-293: a dict inside a stored object array was handed out
    itself (editing a reply's changed the history); a structured scalar (``arr[0]``, a
    view into the caller's array) and a structured array's object field were shared, in
    and out (helper-294)."""
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
    pop = PopulationController([{"h": 0.0}, {"h": 1.0}], m, seed=0)
    g0, g1 = (w.generation_id for w in pop.active_workers)
    objects = np.empty(1, dtype=object)
    objects[0] = {"k": 1}
    record = np.zeros(2, dtype=[("w", "f8"), ("n", "i8")])
    fields = np.empty(1, dtype=[("d", object), ("x", "f4")])
    fields[0]["d"] = {"k": 1}
    pop.set_eval(0, g0, 10, {"o": objects, "r": record[0], "f": fields}, 0.0)
    record[0]["w"], fields[0]["d"]["k"] = 42.0, 99
    copied = pop.set_eval_and_ask(1, g1, 10, "p1", 9.0)  # worker 1 copies worker 0
    copied.params["o"][0]["k"] = -7
    copied.params["r"]["w"] = -1.0
    copied.params["f"][0]["d"]["k"] = -7
    stored = pop.history.get_checkpoint(g0, 10).params
    assert stored["o"][0] == {"k": 1} and stored["r"]["w"] == 0.0
    assert stored["f"][0]["d"] == {"k": 1}


@pytest.mark.parametrize(
    "params",
    [
        lambda: {"w": np.ones(2, dtype=">f4")},  # (weights read from a big-endian file)
        lambda: {"n": np.longlong(5), "u": np.ulonglong(7)},
        lambda: {"w": np.ones(2), "rng": __import__("jax").random.key(0)},  # a typed key
    ],
)
def test_a_report_repeated_after_a_restart_is_a_repeat(params, tmp_path):
    """A report whose reply was lost, sent again to a controller resumed on the same
    log_dir (a Ray actor restarted), was taken as a new report when its params came
    back from the journal in another form (native byte order, np.int64) or could not be
    compared (a typed key, even without a restart): a new time, the mutator called
    again, a kept generation made (helper-295)."""
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=4)

    def controller():
        return PopulationController([{"h": 0.1}, {"h": 0.2}], m, log_dir=str(tmp_path))

    pop = controller()
    g0, g1 = (w.generation_id for w in pop.active_workers)
    pop.set_eval(0, g0, 4, params(), 0.1)
    pop.set_eval(1, g1, 4, params(), 0.9)  # (worker 1 copies worker 0's checkpoint)
    for restart in (False, True):
        if restart:
            pop.close()
            pop = controller()
        before = pop.state
        pop.set_eval(0, g0, 4, params(), 0.1)  # the resend
        assert pop.state.num_events == before.num_events and pop.history == before.history
    pop.close()


def test_params_compared_as_journaled_keep_other_params_apart(tmp_path):
    """The comparison as a journal gives params back keeps apart what the journal keeps
    apart: a tuple that reads like a typed key is another report (it was taken for a
    repeat and lost, helper-296); a rerun with equal params holding a typed key makes
    no kept generation (equal params: helper-296)."""
    import jax

    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=4)
    pop = PopulationController([{"h": 0.1}, {"h": 0.2}], m, log_dir=str(tmp_path))
    g0, g1 = (w.generation_id for w in pop.active_workers)
    pop.set_eval(0, g0, 4, {"k": jax.random.key(0)}, 0.1)
    lookalike = {"k": ("typed key", "threefry2x32", np.zeros(2, np.uint32))}
    pop.set_eval(0, g0, 4, lookalike, 0.1)
    assert type(pop.history.get_checkpoint(g0, 4).params["k"]) is tuple
    pop.set_eval(0, g0, 4, {"k": jax.random.key(0)}, 0.1)
    pop.set_eval(1, g1, 4, "p1", 0.9)  # (worker 1 copies worker 0's checkpoint)
    pop.set_eval(0, g0, 4, {"k": jax.random.key(0)}, 0.2)  # a rerun: equal params
    assert not any("~" in g for g in pop.history)
    pop.close()


def test_a_deleted_jax_array_is_refused_where_it_enters():
    """A donated (deleted) jax array was stored: the worker that copied it got an array
    that failed when used (helper-293)."""
    import jax
    import jax.numpy as jnp

    pop = PopulationController([{"h": 1.0}], noop_mutator())
    gen = pop.active_workers[0].generation_id
    params = {"w": jnp.ones(3)}
    jax.jit(lambda p: p, donate_argnums=0)(params)  # (donated: deleted on CPU too)
    if not params["w"].is_deleted():
        params["w"].delete()
    with pytest.raises(TypeError, match=r"deleted jax\.Array"):
        pop.set_eval(0, gen, 1, params, 1.0)
    assert pop.history.get_checkpoint(gen, 1) is None


def test_a_refused_call_does_not_count_as_hearing_from_the_worker(clock):
    """protocol.md: after any error the controller is unchanged. A call refused for a
    bad argument set the worker's last-heard time first: a silent worker was kept from
    being declared gone (helper-215)."""
    from jaxpop.mutators import WinnerTakeAllGenetic

    status = []
    for refused in (False, True):
        start = clock()
        m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
        pop = PopulationController([{"h": 0.0}, {"h": 1.0}], m, clock=clock, gone_after_s=100)
        gens = [w.generation_id for w in pop.active_workers]
        clock.advance(90)
        if refused:
            with pytest.raises(TypeError):
                pop.set_eval(0, gens[0], 3.5, "p", 1.0)  # (a step must be a whole number)
        clock.advance(60)
        pop.maybe_get_worker_data(1, gens[1], 0, None, None)  # any call applies gone_after_s
        status.append(pop.active_workers[0].status)
        assert clock() - start == 150
    assert status == ["gone", "gone"]


def test_a_call_taken_before_an_interrupt_while_compacting_counts_as_hearing_from_the_worker(
    tmp_path, clock
):
    """The undo of a raising call's last-heard times also ran after the call was taken
    (an interrupt while compacting keeps it): a worker that had just come back was
    declared gone again at the next call (helper-216)."""
    pop = PopulationController(
        [{"h": 0.0}, {"h": 1.0}], noop_mutator(), str(tmp_path), clock=clock, gone_after_s=100
    )
    gens = [w.generation_id for w in pop.active_workers]
    clock.advance(150)
    pop.maybe_get_worker_data(1, gens[1], 0, None, None)  # worker 0 is declared gone
    assert pop.active_workers[0].status == "gone"
    clock.advance(10)
    store = pop._store
    compact = store.compact_if_due

    def interrupted(state):
        store.compact_if_due = compact
        raise KeyboardInterrupt

    store.compact_if_due = interrupted
    with pytest.raises(KeyboardInterrupt):
        pop.maybe_get_worker_data(0, gens[0], 0, None, None)  # worker 0 is back
    assert pop.active_workers[0].status == "active"
    clock.advance(1)
    pop.maybe_get_worker_data(1, gens[1], 0, None, None)
    assert pop.active_workers[0].status == "active"
    pop.close()


def test_poll_applies_the_clock_with_no_worker_calling(tmp_path, clock):
    """done reads no clock: a driver waiting on it while every worker is hung waited for
    ever. poll() applies what a call would: the time budget, gone_after_s; journaled."""
    from jaxpop import StopWhen

    pop = PopulationController(
        [{"h": 0.0}, {"h": 1.0}],
        noop_mutator(),
        str(tmp_path / "a"),
        clock=clock,
        stop_when=StopWhen(seconds=100),
    )
    assert not pop.poll()
    clock.advance(150)
    assert not pop.done and pop.poll() and pop.done
    assert {w.status for w in pop.active_workers} == {"finished"}
    pop.close()
    silent = PopulationController(
        [{"h": 0.0}, {"h": 1.0}],
        noop_mutator(),
        str(tmp_path / "b"),
        clock=clock,
        gone_after_s=60,
    )
    clock.advance(30)
    assert not silent.poll()
    clock.advance(40)
    assert silent.poll() and {w.status for w in silent.active_workers} == {"gone"}
    silent.close()
    again = PopulationController([{"h": 0.0}, {"h": 1.0}], noop_mutator(), str(tmp_path / "b"))
    assert again.done  # (journaled)
    again.close()


def _calls_back(call):
    """A WinnerTakeAllGenetic whose mutate_fn calls ``call(controller)`` once; the
    controller is set on the returned list."""
    box = []

    def mutate(meta):
        if box and len(box) == 1:
            box.append(call(box[0]))
        return {"h": meta["h"] * 0.5}

    return box, WinnerTakeAllGenetic(mutate, steps_per_exploit=10)


@pytest.mark.parametrize("with_log_dir", [False, True])
def test_a_callback_that_calls_its_controller_is_refused_and_nothing_is_lost(
    tmp_path, with_log_dir
):
    """A mutator's function calling the controller (finish(2), say) had its call
    overwritten by the outer call's result without a log_dir, and with one the outer
    call was refused as "a journal that holds events its writer did not take"
    (helper-158). The inner call raises; the outer one fails as a whole, and the
    controller goes on."""
    box, mutator = _calls_back(lambda c: c.finish(2))
    log_dir = tmp_path / "run" if with_log_dir else None
    pop = PopulationController([{"h": 0.1}, {"h": 0.2}, {"h": 0.3}], mutator, log_dir=log_dir)
    box.append(pop)
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "p0", 0.5)
    pop.set_eval(1, gens[1], 10, "p1", 0.4)
    before = pop.state
    with pytest.raises(RuntimeError, match="called from inside one of its own calls"):
        pop.set_eval(2, gens[2], 10, "p2", 0.3)  # the round: mutate_fn runs
    assert pop.state is before
    assert [w.status for w in pop.active_workers] == ["active"] * 3
    box.pop()  # (the callback is done calling)
    pop.finish(2)  # the controller goes on
    pop.set_eval(1, gens[1], 11, "p1b", 0.4)
    assert pop.active_workers[2].status == "finished"
    pop.close()
    if with_log_dir:
        again = PopulationController([{"h": 0.1}, {"h": 0.2}, {"h": 0.3}], mutator, log_dir=log_dir)
        assert again.state.history.num_checkpoints == pop.state.history.num_checkpoints
        assert again.active_workers[2].status == "finished"
        again.close()


def test_checkpoint_missing_exists_that_calls_the_controller_is_refused():
    pop = PopulationController([{"h": 0.1}, {"h": 0.2}], noop_mutator())
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 3, "p3", 0.6)  # (exists is asked of the older params)
    pop.set_eval(0, gen, 5, "p5", 0.5)

    def exists(params):
        pop.finish(1)
        return False

    with pytest.raises(RuntimeError, match="called from inside one of its own calls"):
        pop.checkpoint_missing(0, gen, 5, exists=exists)
    assert [w.status for w in pop.active_workers] == ["active", "active"]
    assert pop.active_workers[0].step == 5  # nothing sent back


@pytest.mark.parametrize("with_log_dir", [False, True])
def test_a_controller_refuses_to_be_pickled_and_says_what_to_pass(tmp_path, with_log_dir):
    import copy
    import pickle

    log_dir = tmp_path / "run" if with_log_dir else None
    pop = PopulationController([{"h": 0.1}], noop_mutator(), log_dir=log_dir)
    with pytest.raises(TypeError, match=r"cannot be pickled or copied.*serialized_state"):
        pickle.dumps(pop)
    with pytest.raises(TypeError, match=r"cannot be pickled or copied"):
        copy.copy(pop)  # (a copy shared the lock, the log_dir's store and more)
    pop.close()


def test_meta_params_with_keys_jax_cannot_sort_are_refused_where_they_enter():
    with pytest.raises(TypeError, match=r"initial_population\[1\].*keys cannot be sorted"):
        PopulationController([{"a": 1.0}, {1: 0.1, "1": 0.2}], noop_mutator())
    mixed = collections.defaultdict(float, {1: 0.1, "1": 0.2})  # (sorted by the first walk)
    with pytest.raises(TypeError, match=r"initial_population\[0\].*keys cannot be sorted"):
        PopulationController([{"opt": mixed}], noop_mutator())

    def mutate(meta):
        return {1: meta["h"], "1": meta["h"]}

    pop = PopulationController([{"h": 1.0}, {"h": 2.0}], WinnerTakeAllGenetic(mutate, 1))
    gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in (0, 1)]
    pop.set_eval(0, gens[0], 1, None, 1.0)
    with pytest.raises(TypeError, match=r"mutator\.update returned has a dict whose keys cannot"):
        pop.set_eval(1, gens[1], 1, None, 2.0)


@pytest.mark.parametrize("with_log_dir", [False, True])
def test_values_that_hold_themselves_or_nest_too_deep_are_refused_by_name(tmp_path, with_log_dir):
    """A SystemError from jax's flatten, or a bare RecursionError, where the docs promise
    a ValueError (hostile reviews, helpers 230 and 231); the controller goes on."""
    cycle: list = []
    cycle.append(cycle)
    deep: Any = 0
    for _ in range(2 * sys.getrecursionlimit()):
        deep = [deep]
    holds_itself: dict = {"h": 1.0}
    holds_itself["self"] = holds_itself  # (jax's flatten of it broke the interpreter)
    subclass = collections.defaultdict(float, h=1.0)
    subclass["self"] = subclass  # (so did that of a dict subclass: helper-233)
    log_dir = tmp_path / "run" if with_log_dir else None
    for meta in ({"h": cycle}, {"h": deep}, holds_itself, {"opt": subclass}):
        with pytest.raises(ValueError, match=r"initial_population\[0\] is nested too deep"):
            PopulationController([meta], noop_mutator(), log_dir=log_dir)
    pop = PopulationController([{"h": 1.0, "opt": {"b": [1, 2]}}], noop_mutator(), log_dir=log_dir)
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    for value in (cycle, deep, subclass):
        with pytest.raises(ValueError, match=r"set_eval params is nested too deep, or holds"):
            pop.set_eval(0, gen, 5, value, 0.5)
    pop.set_eval(0, gen, 5, "params", 0.5)
    assert pop.history.num_checkpoints == 2
    pop.close()
    with pytest.raises(ValueError, match=r"schedule\[10\] is nested too deep, or holds"):
        FixedSchedule({0: {"h": 1.0}, 10: {"h": cycle}})


# -- workers that stop ----------------------------------------------------------------------
def test_a_finished_worker_is_journaled_and_a_round_goes_on_without_it(tmp_path):
    from jaxpop.mutators import WinnerTakeAllGenetic

    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
    pop = PopulationController([{"h": 0.0}, {"h": 1.0}], m, str(tmp_path))
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "a", 1.0)
    assert pop.decision_counts.decisions == 0  # waits for worker 1
    pop.finish(1)
    assert pop.decision_counts.decisions == 1 and pop.active_workers[1].status == "finished"
    pop.close()
    with PopulationController([{"h": 0.0}, {"h": 1.0}], m, str(tmp_path)) as again:
        assert again.active_workers[1].status == "finished"
        assert again.active_workers == pop.active_workers
        assert again.history == pop.history
    with pytest.raises(ValueError, match="out of range"):
        PopulationController([{"h": 0.0}], noop_mutator()).finish(3)


def test_a_silent_worker_is_declared_gone_and_comes_back_when_it_reports(clock, caplog):
    from jaxpop.mutators import WinnerTakeAllGenetic

    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
    pop = PopulationController([{"h": 0.0}, {"h": 1.0}], m, clock=clock, gone_after_s=60.0)
    gens = [w.generation_id for w in pop.active_workers]
    clock.advance(30)
    pop.set_eval(0, gens[0], 10, "a", 1.0)
    assert pop.decision_counts.decisions == 0
    clock.advance(40)  # worker 1 silent for 70 s
    pop.set_eval(0, gens[0], 11, "b", 1.0)
    assert pop.active_workers[1].status == "gone" and "declared gone" in caplog.text
    assert pop.decision_counts.decisions == 1  # the round went on without it
    gen1 = pop.active_workers[1].generation_id
    pop.set_eval(1, gen1, 12, "c", 0.5)
    assert pop.active_workers[1].status == "active"
    for bad in (0, -1.0, math.nan, True, "60"):
        with pytest.raises((TypeError, ValueError), match="gone_after_s"):
            PopulationController([{"h": 0.0}], m, gone_after_s=bad)


@pytest.mark.parametrize("kind", ["wta", "synch_pbt"])
def test_a_worker_back_after_missing_rounds_never_sends_the_population_back(tmp_path, kind):
    from jaxpop.mutators import PopulationBasedTraining
    from jaxpop.mutators import explore as ex

    def make():
        if kind == "wta":
            return WinnerTakeAllGenetic(lambda meta: dict(meta), steps_per_exploit=10)
        return PopulationBasedTraining(
            perturbation_interval=10,
            hyperparam_space={"lr": ex.uniform(0.01, 1.0)},
            synch=True,
            quantile_fraction=0.5,
        )

    n, clock = 4, FakeClock()

    def controller():
        population = [{"lr": 0.1}] * n
        return PopulationController(
            population, make(), str(tmp_path), seed=0, clock=clock, gone_after_s=100
        )

    pop = controller()
    late = n - 1
    late_gen = pop.active_workers[late].generation_id
    pop.set_eval(late, late_gen, 5, "late@5", 0.9)  # then silent: declared gone
    for step in (10, 20, 30):
        clock.advance(60)
        for i in range(late):
            pop.set_eval(i, pop.active_workers[i].generation_id, step, f"p{i}@{step}", 0.5 + i / 10)
    assert pop.active_workers[late].status == "gone"
    rounds = pop.decision_counts.decisions
    assert rounds >= 2 * late  # the rounds went on without it
    pop.close()
    pop = controller()  # (what it missed is journaled)
    clock.advance(1)
    pop.set_eval(late, late_gen, 10, "late@10", 0.01)  # back, with a score from step 10
    assert pop.active_workers[late].status == "active"
    clock.advance(1)
    for i in range(late):  # the next round: every other worker at step 40
        pop.set_eval(i, pop.active_workers[i].generation_id, 40, f"p{i}@40", 0.3 + i / 10)
    assert pop.decision_counts.decisions > rounds  # the round was played, with it
    workers = pop.active_workers
    assert all(w.step == 40 for w in workers), [(w.params, w.step) for w in workers]
    assert workers[late].params == "p0@40"  # it copied the round's best
    assert all(w.params != "late@10" for w in workers)
    pop.close()


def test_a_worker_back_after_missing_a_round_is_never_a_wta_rounds_fallback_winner():
    clock = FakeClock()
    m = WinnerTakeAllGenetic(lambda meta: dict(meta), steps_per_exploit=10)
    pop = PopulationController([{"lr": 0.1}] * 3, m, clock=clock, gone_after_s=100)
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(2, gens[2], 5, "late@5", 0.9)  # then silent
    clock.advance(60)
    pop.set_eval(0, gens[0], 5, "a5", 0.9)
    pop.set_eval(1, gens[1], 5, "b5", 0.9)
    clock.advance(60)
    pop.set_eval(0, gens[0], 10, "a10", 0.5)  # worker 2 is declared gone
    pop.set_eval(1, gens[1], 10, "b10", 0.6)  # a round without it
    pop.set_eval(2, gens[2], 10, "late@10", 0.01)  # back, with a saved step-10 score
    with pytest.warns(RuntimeWarning, match="the round waits"):
        for step in (20, 30):  # the best worker trains two intervals without saving
            for i in (0, 1):
                pop.set_eval(i, pop.active_workers[i].generation_id, step, None, 0.3 + i / 10)
    assert all(w.params != "late@10" or i == 2 for i, w in enumerate(pop.active_workers))
    assert [w.step for w in pop.active_workers] == [30, 30, 10]  # nobody was sent back


def test_a_report_after_the_run_is_over_is_recorded_and_decides_nothing(tmp_path):
    from jaxpop import StopWhen
    from jaxpop.mutators import exploit_events

    def controller(**kw):
        m = WinnerTakeAllGenetic(lambda meta: {"lr": meta["lr"] * 2}, steps_per_exploit=10)
        return PopulationController([{"lr": 0.1}] * 2, m, str(tmp_path), **kw)

    pop = controller(stop_when=StopWhen(value=0.1))
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 5, "a5", 0.05)  # the target: the run is over
    assert pop.done
    pop.set_eval(1, gens[1], 10, "b10", 0.5)  # a report that was in flight
    assert pop.done and pop.decision_counts.decisions == 0  # (a round was played after it)
    assert exploit_events(pop.history) == []
    assert pop.history.get_checkpoint(gens[1], 10).params == "b10"  # recorded
    worker = pop.active_workers[1]
    assert (worker.status, worker.generation_id, worker.step) == ("finished", gens[1], 10)
    state = pop.state
    pop.close()
    with controller(stop_when=StopWhen(value=0.1)) as again:
        assert again.state.workers == state.workers and again.history == state.history
    # without the stop, the documented rule: a report of its own wakes a finished worker
    with controller(stop_when=None, reconfigure=True) as free:
        free.set_eval(1, gens[1], 15, "b15", 0.5)
        assert free.active_workers[1].status == "active" and not free.done


def test_a_report_after_a_round_that_reached_the_target_keeps_the_run_over():
    from jaxpop import StopWhen

    m = WinnerTakeAllGenetic(lambda meta: dict(meta), steps_per_exploit=10)
    pop = PopulationController([{"lr": 0.1}] * 2, m, stop_when=StopWhen(value=0.1))
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(1, gens[1], 10, "b10", 0.5)
    pop.set_eval(0, gens[0], 10, "a10", 0.05)  # the target, and the round it completes
    assert pop.done and pop.decision_counts.decisions == 2
    moved = pop.active_workers[1]
    assert moved.generation_id != gens[1]  # no worker's latest evaluation is the target's
    pop.set_eval(1, moved.generation_id, 15, "b15", 0.4)
    assert pop.done and pop.active_workers[1].status == "finished"  # (it was active again)
    assert pop.decision_counts.decisions == 2


@pytest.mark.parametrize("call", ["ask", "eval_and_ask", "checkpoint_missing"])
def test_a_gone_worker_calling_after_the_run_is_over_is_told_to_stop(call):
    from jaxpop import StopWhen

    clock = FakeClock()
    m = WinnerTakeAllGenetic(lambda meta: dict(meta), steps_per_exploit=10)
    pop = PopulationController(
        [{"lr": 0.1}] * 3, m, stop_when=StopWhen(value=0.1), clock=clock, gone_after_s=100
    )
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(2, gens[2], 5, "c5", 0.9)  # then silent
    clock.advance(60)
    pop.set_eval(0, gens[0], 5, "a5", 0.9)
    clock.advance(60)
    pop.set_eval(1, gens[1], 10, "b10", 0.5)  # worker 2 is declared gone
    pop.set_eval(0, gens[0], 10, "a10", 0.05)  # the target, in a round that copies it
    assert pop.done and [w.status for w in pop.active_workers] == ["finished"] * 2 + ["gone"]
    decided = pop.decision_counts.decisions
    if call == "ask":
        told = pop.maybe_get_worker_data(2, gens[2], 5, None, None)
    elif call == "checkpoint_missing":
        told = pop.checkpoint_missing(2, gens[2], 5)
    else:
        told = pop.set_eval_and_ask(2, gens[2], 10, "c10", 0.6)
    assert told is not None and told.status == "finished"  # (it was woken: active)
    assert pop.done and pop.active_workers[2].status == "finished"
    pop.set_eval(2, gens[2], 15, "c15", 0.6)
    assert pop.done and pop.decision_counts.decisions == decided


def test_a_report_past_a_step_budget_keeps_its_worker_finished():
    from jaxpop import StopWhen
    from jaxpop.mutators import PopulationBasedTraining
    from jaxpop.mutators import explore as ex

    m = PopulationBasedTraining(  # asynchronous: a woken worker decided at once
        perturbation_interval=5, hyperparam_space={"lr": ex.uniform(0.01, 1.0)}
    )
    pop = PopulationController([{"lr": 0.1}] * 2, m, stop_when=StopWhen(step=20))
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 5, "a5", 1.0)
    pop.set_eval(1, gens[1], 20, "b20", 0.5)  # worker 1 spent its budget
    assert pop.active_workers[1].status == "finished" and not pop.done
    decided = pop.decision_counts.decisions
    pop.set_eval(1, pop.active_workers[1].generation_id, 25, "b25", 0.4)  # and reports again
    assert pop.active_workers[1].status == "finished"
    assert pop.decision_counts.decisions == decided


def test_a_report_past_a_time_budget_keeps_the_run_over():
    from jaxpop import StopWhen

    clock = FakeClock()
    m = WinnerTakeAllGenetic(lambda meta: dict(meta), steps_per_exploit=10)
    pop = PopulationController([{"lr": 0.1}] * 2, m, stop_when=StopWhen(seconds=100), clock=clock)
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 5, "a5", 1.0)
    clock.advance(200)
    pop.set_eval(1, gens[1], 10, "b10", 0.5)  # the budget ended the run at this call
    assert pop.done
    pop.set_eval(0, gens[0], 10, "a10", 0.9)  # (with 1, ready, it completed a round)
    assert pop.done and pop.history.get_checkpoint(gens[0], 10) is not None
    assert pop.decision_counts.decisions == 0


def test_stop_when_takes_numpy_numbers_as_python_s(clock):
    """StopWhen kept a numpy scalar, which computed in its own type (helper-254): a
    np.uint8 target under mode="max" negated to 166 (the run over at its first report),
    np.float32(0.25) reached by 0.25000001, a np.float32 step budget by a step below
    it, a np.float16 budget of 60000 s spent at 59985 s."""
    from jaxpop import StopWhen

    when = StopWhen(value=np.uint8(90), step=np.float32(5e7), seconds=np.float16(60000))
    assert (when.value, when.step, when.seconds) == (90, 50_000_000, 60000.0)
    assert [type(x) for x in (when.value, when.step, when.seconds)] == [int, int, float]
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10**9, mode="max")
    pop = PopulationController([{"lr": 0.1}], m, stop_when=when, clock=clock)
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 49_999_998, "p", 3.0)  # below the value and the step budget
    clock.advance(59_985)
    pop.set_eval(0, gen, 49_999_999, "p", 3.0)
    assert not pop.done
    pop.set_eval(0, gen, 50_000_000, "p", 3.0)
    assert pop.done
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10**9)
    pop = PopulationController([{"lr": 0.1}], m, stop_when=StopWhen(value=np.float32(0.25)))
    pop.set_eval(0, pop.active_workers[0].generation_id, 1, "p", 0.25000001)
    assert not pop.done


@pytest.mark.parametrize("after_s", [np.float32(60.0), np.float16(60.0)])
def test_expire_takes_a_numpy_number_of_seconds_as_python_s(after_s):
    """core.expire computed now - after_s in the scalar's type: at a unix time, a
    float32 cutoff on a 128 s grid, a float16 one inf (never gone) (helper-254)."""
    t0 = 1.7e9
    m = noop_mutator()
    state = core.init([{"lr": 0.1}], m, key=root_key(0), now=t0)
    for silent, gone in ((59.0, False), (61.0, True)):
        new, _ = core.expire(state, t0 + silent, core.event_key(state), after_s=after_s, mutator=m)
        assert (new.workers[0].status == "gone") is gone
    with pytest.raises(ValueError, match="after_s"):
        core.expire(state, t0, core.event_key(state), after_s=0.0, mutator=m)


def test_a_clock_stepping_back_does_not_reopen_a_run_its_time_budget_ended():
    """The budget was measured by each call's clock: set back under it (an NTP step),
    in-flight reports woke the finished workers and the mutator decided after the end,
    journaled (helper-256). It is measured by the latest time the clock gave."""
    from jaxpop import StopWhen

    clock = FakeClock(1000.0)
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=2)
    pop = PopulationController([{"lr": 0.1}] * 2, m, stop_when=StopWhen(seconds=10), clock=clock)
    gens = [w.generation_id for w in pop.active_workers]
    clock.now = 1011.0
    assert pop.poll()
    clock.now = 1004.0
    for i in (0, 1):
        pop.set_eval(i, gens[i], 2, f"p{i}", 0.5)
    assert pop.done and pop.decision_counts.decisions == 0
    assert pop.maybe_get_worker_data(0, gens[0], 2, None, None).status == "finished"
    assert pop.history[gens[0]][2].time == 1004.0  # (a report's time is the clock's)
    # a budget spent by load_state's reading of the clock counts too (review)
    clock.now = 1000.0
    again = PopulationController([{"lr": 0.1}] * 2, m, stop_when=StopWhen(seconds=10), clock=clock)
    gens = [again.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in range(2)]
    saved = again.serialized_state()
    clock.now = 1011.0
    again.load_state(saved)
    clock.now = 1004.0
    again.set_eval(0, gens[0], 2, "p0", 0.5)
    assert again.done and [w.status for w in again.active_workers] == ["finished"] * 2


def test_a_run_a_time_budget_ended_at_its_opening_stays_ended_if_the_clock_steps_back(tmp_path):
    """Opening a run, the budget was applied by a second reading of the clock, which the
    latest time was not updated with: a clock stepping back then reopened it (review)."""
    from jaxpop import StopWhen

    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=2)
    clock = FakeClock(1000.0)
    with PopulationController([{"lr": 0.1}] * 2, m, log_dir=tmp_path, clock=clock, seed=0) as pop:
        gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in range(2)]
    readings = iter([1009.0, 1011.0])  # at its construction, then as it applies the stop

    def stepping_back():
        return next(readings, 1005.0)

    pop = PopulationController(
        [{"lr": 0.1}] * 2, m, log_dir=tmp_path, clock=stepping_back, stop_when=StopWhen(seconds=10)
    )
    assert pop.done
    pop.set_eval(0, gens[0], 2, "p0", 0.5)
    assert pop.done and [w.status for w in pop.active_workers] == ["finished"] * 2
    pop.close()


def test_a_report_the_controller_ignores_does_not_finish_a_gone_worker(clock):
    """stays_done read an ignored call's own value and step as the run's: a gone
    worker's report on a generation the controller never made, or one another worker
    holds, finished it (for good, its loop told to stop) in a run that went on
    (helper-258). Such a call changes nothing; the worker's next call wakes it."""
    from jaxpop import StopWhen

    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10**6)
    for when, call in (
        (StopWhen(value=0.01), lambda pop, gens: ("deadbeefdeadbeef", 10, 0.001)),
        (StopWhen(step=100), lambda pop, gens: (gens[0], 150, 0.3)),  # worker 0's
    ):
        pop = PopulationController(
            [{"lr": 0.1}] * 3, m, stop_when=when, gone_after_s=50, clock=clock
        )
        gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in range(3)]
        clock.advance(60)
        pop.set_eval(0, gens[0], 10, "p0", 0.5)
        assert pop.poll() is False
        assert [w.status for w in pop.active_workers] == ["active", "gone", "gone"]
        pop.set_eval(2, *call(pop, gens)[:2], "x", call(pop, gens)[2])
        assert [w.status for w in pop.active_workers] == ["active", "gone", "gone"]
        assert pop.maybe_get_worker_data(2, gens[2], 0, None, None) is None  # woken
        assert pop.active_workers[2].status == "active" and not pop.done


def test_stop_when_finishes_workers_and_tells_them_at_their_next_ask(tmp_path, clock):
    from jaxpop import StopWhen

    pop = PopulationController(
        [{"h": 0.0}, {"h": 1.0}], noop_mutator(), str(tmp_path), stop_when=StopWhen(step=20)
    )
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 20, "a", 1.0)  # worker 0 used its budget
    assert pop.active_workers[0].status == "finished" and not pop.done
    told = pop.maybe_get_worker_data(0, gens[0], 20, "a", None)
    assert told is not None and told.status == "finished"  # stop
    assert pop.maybe_get_worker_data(1, gens[1], 5, None, None) is None  # keeps going
    pop.set_eval(1, gens[1], 25, "b", 2.0)
    assert pop.done
    pop.close()
    with PopulationController([{"h": 0.0}] * 2, noop_mutator(), str(tmp_path)) as again:
        assert again.done and [w.status for w in again.active_workers] == ["finished"] * 2
    # a target value ends the whole run; so does a time budget
    pop = PopulationController([{"h": 0.0}] * 2, noop_mutator(), stop_when=StopWhen(value=0.1))
    pop.set_eval(1, pop.active_workers[1].generation_id, 3, None, 0.05)
    assert pop.done
    pop = PopulationController(
        [{"h": 0.0}] * 2, noop_mutator(), clock=clock, stop_when=StopWhen(seconds=60)
    )
    clock.advance(61)
    pop.set_eval(0, pop.active_workers[0].generation_id, 3, None, 5.0)
    assert pop.done
    for bad in ({"step": -1}, {"step": 2.5}, {"value": math.nan}, {"seconds": -0.5}):
        with pytest.raises(ValueError, match="StopWhen"):
            StopWhen(**bad)
    with pytest.raises(TypeError, match="stop_when"):
        PopulationController([{"h": 0.0}], noop_mutator(), stop_when={"step": 3})


def test_a_target_reached_by_the_report_that_ends_a_round_stops_the_run():
    """The report that completes a WinnerTakeAllGenetic round moves every worker to a
    new generation (with no evaluation yet): the target it reached still ends the run."""
    from jaxpop import StopWhen
    from jaxpop.mutators import WinnerTakeAllGenetic

    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
    pop = PopulationController([{"h": 0.0}, {"h": 1.0}], m, stop_when=StopWhen(value=0.1))
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "a", 1.0)
    pop.set_eval(1, gens[1], 10, "b", 0.05)  # the target, and the round
    assert pop.decision_counts.decisions == 2  # (a round decides for every worker)
    assert all(w.generation_id not in gens for w in pop.active_workers)  # all moved on
    assert pop.done and [w.status for w in pop.active_workers] == ["finished"] * 2


def _held_rounds():
    """Synchronous PBT that holds a worker ready before the others (3 workers: the worst
    copies the best)."""
    from jaxpop.mutators import PopulationBasedTraining, explore

    return PopulationBasedTraining(
        perturbation_interval=10,
        hyperparam_space={"h": explore.uniform(0.0, 2.0)},
        synch=True,
        hold=True,
        quantile_fraction=0.34,
    )


def test_a_worker_that_keeps_asking_is_not_declared_gone(clock):
    """A worker is gone when it has not been heard from, by a report or an ask: one told
    to wait (a synchronous round with ``hold=True``) only asks, and stays alive, so the
    round it waits for is decided with it."""
    m = _held_rounds()
    pop = PopulationController([{"h": 0.5 * i} for i in range(3)], m, clock=clock, gone_after_s=5.0)
    gens = [w.generation_id for w in pop.active_workers]
    clock.advance(1)
    pop.set_eval(0, gens[0], 10, "w0", 0.9)  # the worst
    pop.set_eval(1, gens[1], 10, "w1", 0.1)  # the best
    for t in range(8):  # workers 0 and 1 wait (asking every second); worker 2 trains
        clock.advance(1)
        for i in (0, 1):
            told = pop.maybe_get_worker_data(i, gens[i], 10, f"w{i}", None)
            assert told is not None and told.status == "waiting"
        if t % 3 == 2:
            pop.set_eval(2, gens[2], 3 * (t + 1) // 3, "w2", 0.5)
    assert [w.status for w in pop.active_workers] == ["active"] * 3
    pop.set_eval(2, gens[2], 10, "w2", 0.5)  # the round, with all three
    assert pop.decision_counts == (3, 1)
    assert pop.history.branch_point(pop.active_workers[0].generation_id) == (gens[1], 10)
    # the pure function: a worker seen calling within after_s stays, however old its
    # newest checkpoint; the others go
    state = pop.state
    t = clock() + 100.0
    gone, changes = core.expire(
        state, t, core.event_key(state), after_s=5.0, mutator=m, seen={0: t - 4.0}
    )
    assert changes is not None and [w.status for w in gone.workers] == ["active", "gone", "gone"]
    clock.advance(6)  # now silent for 6 s: gone at the next call
    pop.set_eval(1, pop.active_workers[1].generation_id, 20, "w1", 0.1)
    assert [w.status for w in pop.active_workers] == ["gone", "active", "gone"]


def test_workers_waiting_when_a_run_stopped_are_not_gone_when_it_resumes(tmp_path, clock):
    """A controller that resumes has heard from no one yet: each worker has gone_after_s
    from then to call, so workers held waiting when the run stopped (their newest
    checkpoint long past) take part in the round decided by the first call."""

    def open_():
        population = [{"h": 0.5 * i} for i in range(3)]
        return PopulationController(
            population, _held_rounds(), tmp_path, clock=clock, gone_after_s=5.0
        )

    pop = open_()
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "w0", 0.9)
    pop.set_eval(1, gens[1], 10, "w1", 0.1)
    clock.advance(4)
    pop.set_eval(2, gens[2], 5, "w2", 0.5)
    pop.close()
    clock.advance(4)  # workers 0 and 1 reported 8 s ago (and asked since)
    pop = open_()
    pop.set_eval(2, gens[2], 10, "w2", 0.5)  # the first call: the round, with all three
    assert [w.status for w in pop.active_workers] == ["active"] * 3
    assert pop.decision_counts == (3, 1)
    pop.close()


def test_set_eval_and_ask_records_both_or_neither():
    """The eval and the ask of set_eval_and_ask are one call: if the ask fails (here the
    mutator's ask hook raises), the eval is not recorded either."""
    from jaxpop.mutators.base import Mutator

    def ask(state, workers, history, event, now, key):
        if event.step == 20:
            raise RuntimeError("the ask hook failed")
        return state, workers, ()

    m = Mutator(init=lambda: 0, update=lambda s, w, h, now, key: (s, w, ()), ask=ask)
    pop = PopulationController([{"h": 1.0}], m)
    gen = pop.active_workers[0].generation_id
    assert pop.set_eval_and_ask(0, gen, 10, "p10", 0.5) is None
    state = pop.state
    with pytest.raises(RuntimeError, match="ask hook failed"):
        pop.set_eval_and_ask(0, gen, 20, "p20", 0.4)
    assert pop.state is state and pop.history.get_checkpoint(gen, 20) is None


def test_a_gone_worker_that_asks_is_active_again(clock):
    pop = PopulationController([{"h": 0.0}] * 2, noop_mutator(), clock=clock, gone_after_s=10.0)
    gens = [w.generation_id for w in pop.active_workers]
    clock.advance(11)
    pop.set_eval(0, gens[0], 1, None, 1.0)
    assert pop.active_workers[1].status == "gone"
    assert pop.maybe_get_worker_data(1, gens[1], 0, None, None) is None  # keeps going
    assert pop.active_workers[1].status == "active"


# -- a call applied twice (a retry whose reply was lost) ---------------------------------------
def test_the_report_that_ended_the_run_sent_again_changes_nothing(clock):
    """The retry of the report that reached the target: the finished worker was made
    active, a WinnerTakeAllGenetic round was played with it alone (a copy, an lr it
    never trained), then it was finished again."""
    from jaxpop import StopWhen

    m = WinnerTakeAllGenetic(lambda meta: {"lr": meta["lr"] * 1.5}, steps_per_exploit=2)
    pop = PopulationController(
        [{"lr": 0.1}, {"lr": 0.2}], m, clock=clock, stop_when=StopWhen(value=0.5)
    )
    gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in (0, 1)]
    pop.set_eval(0, gens[0], 1, "w0-1", 1.0)
    told = pop.set_eval_and_ask(1, gens[1], 1, "w1-1", 0.4)  # the target: the run is over
    before = (pop.state.workers, list(pop.history.checkpoints()), pop.decision_counts)
    clock.advance(5)
    assert pop.set_eval_and_ask(1, gens[1], 1, "w1-1", 0.4) == told  # the retry
    assert told.status == "finished" and pop.done
    assert (pop.state.workers, list(pop.history.checkpoints()), pop.decision_counts) == before
    # a new evaluation of that step is no retry: it is recorded (and replaces the old)
    pop.set_eval(1, gens[1], 1, "w1-1b", 0.3)
    assert pop.history.get_checkpoint(gens[1], 1).value == 0.3


def test_a_report_sent_again_later_plays_no_round_a_timed_mutator_now_owes():
    clock = FakeClock()
    m = WinnerTakeAllGenetic(lambda meta: meta, seconds_per_exploit=5)
    pop = PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, clock=clock)
    gens = [w.generation_id for w in pop.active_workers]
    clock.advance(1)
    pop.set_eval(0, gens[0], 1, None, 1.0)
    pop.set_eval(1, gens[1], 1, None, 2.0)
    clock.advance(4.5)  # the retry comes past the interval
    pop.set_eval(1, gens[1], 1, None, 2.0)
    assert pop.decision_counts.decisions == 0
    assert pop.history.get_checkpoint(gens[1], 1).time == 1001.0  # its first time


def test_a_gone_worker_whose_report_is_sent_again_is_active_again(clock):
    pop = PopulationController([{"h": 0.0}] * 2, noop_mutator(), clock=clock, gone_after_s=10.0)
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(1, gens[1], 1, None, 1.0)
    clock.advance(11)
    pop.set_eval(0, gens[0], 1, None, 1.0)
    assert pop.active_workers[1].status == "gone"
    pop.set_eval(1, gens[1], 1, None, 1.0)  # the same report: it is alive
    assert pop.active_workers[1].status == "active"


# -- a rerun that replaces a checkpoint another generation copied ---------------------------
def _copied_then_rerun(log_dir=None, **kwargs):
    """Worker 1 copies worker 0's step 10 ("p0-10a", scored 0.1); then worker 0 reports
    step 10 again with other params ("p0-10b", 0.95): it retrained that step."""
    from jaxpop.mutators import PopulationBasedTraining, explore

    m = PopulationBasedTraining(
        perturbation_interval=10,
        hyperparam_space={"lr": explore.uniform(0, 10)},
        quantile_fraction=0.5,
    )
    pop = PopulationController(
        [{"lr": 1.0}, {"lr": 2.0}, {"lr": 3.0}], m, log_dir=log_dir, seed=0, **kwargs
    )
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "p0-10a", 0.1)
    pop.set_eval(2, gens[2], 10, "p2-10", 0.5)
    assert pop.set_eval_and_ask(1, gens[1], 10, "p1-10", 0.9).params == "p0-10a"  # a copy
    assert pop.set_eval_and_ask(0, gens[0], 10, "p0-10b", 0.95) is None  # the rerun
    return pop, gens


def _check_kept_for_the_copy(history, workers, gens):
    """The copy's start names a kept generation holding the params it loaded, with their
    value; worker 0's step 10 holds the rerun; the kept generation is no member and no
    exploit."""
    from jaxpop.history import is_kept
    from jaxpop.mutators import exploit_events

    copy = workers[1].generation_id
    assert workers[1].params == "p0-10a" and copy != gens[1]
    kept = history.get_checkpoint(*history.first(copy).parent)
    assert (kept.params, kept.value, kept.step, kept.parent) == ("p0-10a", 0.1, 10, (gens[0], 0))
    assert is_kept(kept.generation_id) and kept.generation_id.startswith(gens[0] + "~")
    assert list(history[kept.generation_id]) == [10]  # its one checkpoint
    rerun = history.get_checkpoint(gens[0], 10)
    assert (rerun.params, rerun.value, rerun.parent) == ("p0-10b", 0.95, (gens[0], 0))
    (event,) = exploit_events(history)
    assert (event.generation_id, event.source, event.source_value) == (copy, kept.ref, 0.1)
    assert all(w.generation_id != kept.generation_id for w in workers)
    return kept


def test_a_rerun_replacing_a_copied_checkpoint_keeps_the_copied_params_for_the_copy():
    """Worker 1 holds the params it copied ("p0-10a", 0.1) after worker 0 retrained and
    reported that step again ("p0-10b", 0.95): its lineage named the rerun's params, and
    it ranked (in PBT's selection, in ``jaxpop report``) by their 0.95."""
    from jaxpop.report import build

    pop, gens = _copied_then_rerun()
    kept = _check_kept_for_the_copy(pop.history, pop.active_workers, gens)
    members = build(pop.state).members
    assert [m.value for m in members] == [0.95, 0.1, 0.5]
    assert kept.generation_id not in {m.generation_id for m in members}
    lineage = [(c.generation_id, c.params) for c in members[1].lineage]
    assert lineage[-2:] == [(kept.generation_id, "p0-10a"), (members[1].generation_id, "p0-10a")]
    # PBT ranks worker 1 by 0.1: worker 2, now the worst, copies what worker 1 holds
    assert pop.set_eval_and_ask(2, gens[2], 20, "p2-20", 0.99).params == "p0-10a"
    assert pop.history.first(pop.active_workers[2].generation_id).parent == kept.ref


@pytest.mark.parametrize("compact_after", [1000, 1])
def test_a_kept_copied_checkpoint_is_journaled_and_restored(tmp_path, compact_after):
    from jaxpop import report

    pop, gens = _copied_then_rerun(str(tmp_path), compact_after=compact_after)
    history, workers = pop.history, pop.active_workers
    pop.close()
    with PopulationController([{"lr": 1.0}] * 3, pop.mutator, log_dir=str(tmp_path)) as again:
        assert again.history == history and again.active_workers == workers
        _check_kept_for_the_copy(again.history, again.active_workers, gens)
    loaded = report.load(str(tmp_path))
    _check_kept_for_the_copy(loaded.state.history, loaded.state.workers, gens)
    assert loaded.members[1].value == 0.1 and len(loaded.exploits) == 1


def test_a_rerun_of_a_step_nobody_copied_or_a_repeat_keeps_nothing():
    """Only the rerun of a copied step kept a generation (one); a rerun of a step nobody
    copied, a new value for the same params, and a repeat keep none."""
    pop, gens = _copied_then_rerun()
    generations = list(pop.history)
    assert len(generations) == 3 + 1 + 1  # the roots, the copy, and the kept one
    pop.set_eval(2, gens[2], 10, "p2-10b", 0.4)  # replaces params nobody copied
    assert pop.history.get_checkpoint(gens[2], 10).params == "p2-10b"
    pop.set_eval(0, gens[0], 10, "p0-10b", 0.9)  # the same params: a new value only
    pop.set_eval(0, gens[0], 10, "p0-10b", 0.9)  # a repeat
    assert list(pop.history) == generations


def test_a_second_rerun_of_a_copied_step_keeps_only_what_was_copied_since():
    """The copy already names the kept params; a second rerun keeps nothing more, unless
    a new copy of the step happened in between."""
    pop, gens = _copied_then_rerun()
    kept = pop.history.first(pop.active_workers[1].generation_id).parent
    generations = list(pop.history)
    pop.set_eval(0, gens[0], 10, "p0-10c", 0.3)
    assert list(pop.history) == generations
    assert pop.history.first(pop.active_workers[1].generation_id).parent == kept
    # worker 2 (the worst at step 20) copies worker 0's step 10 ("p0-10d", the best)
    pop.set_eval(0, gens[0], 10, "p0-10d", 0.01)
    assert pop.set_eval_and_ask(2, gens[2], 20, "p2-20", 0.99).params == "p0-10d"
    copy2 = pop.active_workers[2].generation_id
    assert pop.history.first(copy2).parent == (gens[0], 10)
    pop.set_eval(0, gens[0], 10, "p0-10e", 0.5)  # a third rerun: keeps "p0-10d" for copy2
    kept2 = pop.history.get_checkpoint(*pop.history.first(copy2).parent)
    assert kept2.ref != kept and (kept2.params, kept2.value) == ("p0-10d", 0.01)
    assert pop.history.first(pop.active_workers[1].generation_id).parent == kept
    assert len(pop.history) == len(generations) + 2  # copy2 and its kept source


def test_a_kept_save_without_a_value_gives_its_copies_no_value():
    """A kept checkpoint holds params of its own, trained from its parent at an earlier
    step: a copy of an unevaluated save (an ask's, started from by FixedSchedule with
    on_ask) ranked, after a rerun of that step, by the value of the step before
    (helper-231)."""
    from jaxpop.mutators import FixedSchedule, exploit_events
    from jaxpop.mutators.base import copied_value

    schedule = FixedSchedule({0: {"h": 0.0}, 3: {"h": 1.0}}, on_ask=True)
    pop = PopulationController([{"h": 0.0}], schedule, seed=0)
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    pop.set_eval(0, gen, 2, "p2", 0.5)
    pop.maybe_get_worker_data(0, gen, 3, "p3", {"h": 0.0})  # a save at the switch
    copy = pop.active_workers[0].generation_id
    assert pop.history.first(copy).parent == (gen, 3)
    pop.set_eval(0, gen, 3, "p3b", 0.7)  # step 3 retrained, reported late
    history = pop.history
    kept = history.get_checkpoint(*history.first(copy).parent)
    assert (kept.params, kept.value, kept.parent) == ("p3", None, (gen, 2))
    assert copied_value(history, history.first(copy)) is None
    assert [e.source_value for e in exploit_events(history) if e.generation_id == copy] == [None]


def test_a_mutator_may_not_name_a_generation_as_a_kept_one():
    """A kept generation's id holds "~" (only the controller makes one): a mutator's
    generation named so would be left out of the exploits as one."""
    from jaxpop.mutators.base import start_generation

    def update(state, workers, history, now, key):
        latest = history.latest(workers[0].generation_id)
        if latest.value is None or state:
            return state, workers, ()
        worker, start = start_generation(latest, {"h": 0.5}, key, 0, now)
        start = start.replace(generation_id="mine~1")
        return 1, (worker.replace(generation_id="mine~1"),), (start,)

    pop = PopulationController([{"h": 1.0}], noop_mutator()._replace(init=lambda: 0, update=update))
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    with pytest.raises(ValueError, match=r"'mine~1'.*names a kept generation"):
        pop.set_eval(0, gen, 10, "params", 0.5)
    assert pop.history.get_checkpoint(gen, 10) is None  # (the call changed nothing)


def test_no_worker_holds_or_reports_on_a_kept_generation(caplog):
    """A mutator's assignment to a kept generation, or a report on one, recorded a
    worker's checkpoints there (helper-232): refused, and ignored."""
    pop, _ = _copied_then_rerun()
    kept = pop.history.first(pop.active_workers[1].generation_id).parent
    events = pop.state.num_events
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        pop.set_eval(2, kept[0], 20, "p2-20", 0.3)
        assert "set_eval from worker 2" in caplog.text and "a kept generation" in caplog.text
        # an ask with it (read from the history, say) recorded a checkpoint there
        assert pop.maybe_get_worker_data(2, kept[0], 20, "p2-20", None) is not None
        assert "asked with generation" in caplog.text
    assert pop.state.num_events == events and list(pop.history[kept[0]]) == [10]
    first, state = pop.history.get_checkpoint(*kept), pop.state
    moved = (ActiveWorker(first.params, first.meta_params, kept[0], 10), *state.workers[1:])
    with pytest.raises(ValueError, match=r"worker 0 to the kept generation"):
        core._apply_mutator(state, state.mutator_state, moved, (), who="a mutator")
    more = first.replace(step=20, parent=kept)
    with pytest.raises(ValueError, match=r"checkpoint for .*~.*20\): a generation id holding"):
        core._apply_mutator(state, state.mutator_state, state.workers, (more,), who="a mutator")


def test_a_generation_a_worker_holds_records_its_reports_whatever_its_name():
    """A generation of a run recorded before kept generations took "~" (a mutator of
    one's own named it so), still held by its worker: its reports were ignored as a kept
    generation's, and the worker trained on with nothing recorded (helper-233)."""
    from jaxpop.events import Eval

    mutator = noop_mutator()
    state = core.init([{"h": 1.0}], mutator, key=root_key(0), now=0.0)
    start = Checkpoint(None, {"h": 1.0}, "mine~1", None, None, 0, 0.0)
    state = state._with(
        workers=(ActiveWorker(None, {"h": 1.0}, "mine~1", 0),), history=state.history.add(start)
    )
    key = core.event_key(state)
    state, reply = core.set_eval(state, Eval("p", 0, "mine~1", 10, 0.5), 1.0, key, mutator=mutator)
    assert reply.warning is None and list(state.history["mine~1"]) == [0, 10]
    assert state.workers[0].step == 10


def test_an_ask_the_stop_after_it_finishes_is_told_to_stop():
    """A FixedSchedule(on_ask=True) change at the ask of a worker not told yet that the
    run is over: it was answered "active" with the new hyperparameters (recorded
    "finished"), and trained on until its next call."""
    from jaxpop import StopWhen
    from jaxpop.mutators import FixedSchedule

    m = FixedSchedule({0: {"h": 0.0}, 3: {"h": 1.0}}, on_ask=True)
    pop = PopulationController([{"h": 0.0}] * 2, m, stop_when=StopWhen(value=0.5))
    gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in (0, 1)]
    pop.set_eval(0, gens[0], 1, "w0-1", 0.4)  # the run is over
    told = pop.maybe_get_worker_data(1, gens[1], 3, "w1-3", {"h": 0.0})
    assert told is not None and told.status == "finished" == pop.active_workers[1].status


def test_a_step_budget_reached_by_the_report_that_ends_a_round_finishes_every_worker():
    from jaxpop import StopWhen

    m = WinnerTakeAllGenetic(lambda meta: {"lr": meta["lr"] * 1.5}, steps_per_exploit=2)
    pop = PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, stop_when=StopWhen(step=2))
    gens = [pop.maybe_get_worker_data(i, None, 0, None, None).generation_id for i in (0, 1)]
    pop.set_eval_and_ask(0, gens[0], 2, "w0-2", 1.0)
    told = pop.set_eval_and_ask(1, gens[1], 2, "w1-2", 0.5)  # the budget, and the round
    assert told is not None and told.status == "finished"  # was "active": train on
    assert pop.done and [w.step for w in pop.active_workers] == [2, 2]


def test_a_gone_workers_repeated_report_keeps_its_time_and_counts_as_no_progress():
    """The retry of a gone worker's report was recorded anew, at the retry's time: PBT
    with time_attr="time" took it for an interval's progress and copied (review)."""
    from jaxpop.mutators import PopulationBasedTraining, explore

    clock = FakeClock()
    m = PopulationBasedTraining(
        perturbation_interval=5,
        hyperparam_space={"lr": explore.uniform(0.0, 1.0)},
        time_attr="time",
        quantile_fraction=0.5,
    )
    pop = PopulationController(
        [{"lr": 0.1 * (i + 1)} for i in range(4)], m, clock=clock, gone_after_s=3.0
    )
    gens = [w.generation_id for w in pop.active_workers]
    clock.advance(1)
    for i in range(4):
        pop.set_eval(i, gens[i], 1, f"p{i}", float(10 - i))  # worker 0 the worst
    clock.advance(6.5)
    for i in (1, 2, 3):
        pop.maybe_get_worker_data(i, gens[i], 1, None, None)
    assert pop.active_workers[0].status == "gone"
    pop.set_eval(0, gens[0], 1, "p0", 10.0)  # the retry
    assert pop.active_workers[0].status == "active" and pop.decision_counts.decisions == 0
    assert pop.history.get_checkpoint(gens[0], 1).time == 1001.0


def test_a_step_budget_counts_reports_not_starting_points_and_a_report_copied_back():
    from jaxpop import StopWhen
    from jaxpop.mutators import PopulationBasedTraining, explore

    pop = PopulationController([{"h": 0.0}] * 2, noop_mutator(), stop_when=StopWhen(step=0))
    pop.set_eval(0, pop.active_workers[0].generation_id, 0, None, 1.0)
    assert [w.status for w in pop.active_workers] == ["finished", "active"]  # both were
    # the report at the budget whose decision copied the worker back to step 40
    m = PopulationBasedTraining(
        perturbation_interval=20, hyperparam_space={"lr": explore.uniform(0.0, 1.0)}
    )
    pop = PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, stop_when=StopWhen(step=60))
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 40, "w0-40", 0.1)
    pop.set_eval(1, gens[1], 60, "w1-60", 9.0)  # the budget: it copies worker 0's step 40
    assert pop.active_workers[1].step == 40 and pop.active_workers[1].status == "finished"


def test_a_time_budget_is_checked_at_asks_that_change_nothing():
    """With synch=True, hold=True and a worker that crashed, the held worker was told to
    wait forever past the time budget (a hostile test): nothing but changes ran the stop."""
    from jaxpop import StopWhen
    from jaxpop.mutators import PopulationBasedTraining, explore

    clock = FakeClock()
    m = PopulationBasedTraining(
        perturbation_interval=10,
        hyperparam_space={"lr": explore.uniform(0.0, 1.0)},
        synch=True,
        hold=True,
    )
    pop = PopulationController(
        [{"lr": 0.1}, {"lr": 0.2}], m, clock=clock, stop_when=StopWhen(seconds=100)
    )
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "w0-10", 1.0)
    assert pop.maybe_get_worker_data(0, gens[0], 10, None, None).status == "waiting"
    clock.advance(150)
    told = pop.maybe_get_worker_data(0, gens[0], 10, None, None)
    assert told.status == "finished" and pop.done
    # a plain keep-going ask past the budget is told too
    pop = PopulationController(
        [{"h": 0.0}], noop_mutator(), clock=clock, stop_when=StopWhen(seconds=60)
    )
    clock.advance(61)
    told = pop.maybe_get_worker_data(0, pop.active_workers[0].generation_id, 3, None, None)
    assert told is not None and told.status == "finished"


def _two_at_step_zero(pop):
    """Both workers of ``pop`` evaluate their starting point (step 0)."""
    gens = [w.generation_id for w in pop.active_workers]
    for i, gen in enumerate(gens):
        pop.set_eval(i, gen, 0, f"p{i}", 1.0 + i)
    return gens


def test_a_time_budget_counts_from_the_run_start_across_resumes(tmp_path):
    """An evaluation at step 0 replaces the starting checkpoints (and their times): a
    resumed controller read the start from the history and counted the budget from that
    evaluation, 90 s late (a hostile test)."""
    from jaxpop import StopWhen

    clock = FakeClock(0.0)
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=1000)
    make = functools.partial(
        PopulationController,
        [{"lr": 0.1}, {"lr": 0.2}],
        m,
        str(tmp_path),
        clock=clock,
        stop_when=StopWhen(seconds=100),
    )
    pop = make()
    clock.advance(90)
    gens = _two_at_step_zero(pop)
    pop.close()
    clock.advance(30)  # 120 s after the run began
    with make() as again:
        again.set_eval(0, gens[0], 5, "p0-5", 0.9)
        assert again.done
    # a state loaded later counts from its run's start (its bytes carry it), live or
    # reopened, with a log_dir or without (a preemptible job's save and load)
    saved = PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, clock=FakeClock(0.0))
    blob = saved.serialized_state()
    clock.now = 50.0
    unsaved = make.func(*make.args[:2], clock=clock, stop_when=StopWhen(seconds=100))
    unsaved.load_state(blob)
    assert not unsaved.done
    clock.now = 1000.0
    later = tmp_path / "later"
    make = functools.partial(make.func, *make.args[:2], str(later), **make.keywords)
    pop = make()
    assert pop.maybe_get_worker_data(0, None, 0, None, None).status == "active"
    pop.load_state(blob)  # (a run that began at 0: over)
    assert pop.done
    pop.close()
    with make() as again:
        assert again.done
        assert again.maybe_get_worker_data(0, None, 0, None, None).status == "finished"
    assert unsaved.maybe_get_worker_data(0, None, 0, None, None).status == "finished"


def test_load_state_changes_nothing_when_its_stop_check_fails(tmp_path):
    """load_state applied stop_when after it had installed (and journaled) the loaded
    state: a failing stop left it loaded, though its docs say nothing changes
    (helper-120)."""
    from jaxpop import StopWhen

    clock = FakeClock(0.0)
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=1000)
    blob = PopulationController([{"lr": 0.1}], m, clock=FakeClock(0.0)).serialized_state()
    pop = PopulationController(
        [{"lr": 0.1}], m, str(tmp_path), clock=clock, stop_when=StopWhen(seconds=10)
    )
    before = pop.state
    clock.now = math.nan
    with pytest.raises(TypeError, match="clock"):
        pop.load_state(blob)
    assert pop.state is before
    pop.close()
    clock.now = 1.0
    with PopulationController([{"lr": 0.1}], m, str(tmp_path), clock=clock) as again:
        assert again.state.key.tolist() == before.key.tolist()


def test_a_run_whose_clock_once_gave_nan_still_opens(tmp_path):
    """A run recorded before the clock was checked, with NaN times and no recorded
    start, could no longer be opened (its fallback start was refused as not finite)
    (helper-120)."""
    from jaxpop import storage

    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=1000)
    store = storage.Store(str(tmp_path), run={"population_size": 1, "mutator": m.describe()})
    store.start(core.init([{"lr": 0.1}], m, key=root_key(0), now=math.nan))
    store.close()
    with PopulationController([{"lr": 0.1}], m, str(tmp_path), clock=FakeClock(7.0)):
        pass
    again = storage.Store(str(tmp_path))
    again.load()
    assert again.started == 7.0
    again.close()
    with pytest.raises(ValueError, match="started must be a finite"):
        storage.Store(str(tmp_path / "x")).start(
            core.init([{"lr": 0.1}], m, key=root_key(0), now=0.0), started=10**400
        )
    with pytest.raises(TypeError, match="clock"):
        PopulationController([{"lr": 0.1}], m, clock=lambda: 10**400)


def test_a_run_recorded_without_its_start_falls_back_to_its_history(tmp_path):
    """A log_dir written before jaxpop recorded the run's start: the earliest starting
    checkpoint is the start, recorded at the first resume."""
    from jaxpop import StopWhen, storage

    clock = FakeClock(0.0)
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=1000)
    store = storage.Store(str(tmp_path), run={"population_size": 2, "mutator": m.describe()})
    store.start(core.init([{"lr": 0.1}, {"lr": 0.2}], m, key=root_key(0), now=10.0))
    store.close()
    assert store.started is None
    clock.now = 100.0
    make = functools.partial(PopulationController, [{"lr": 0.1}] * 2, m, str(tmp_path), clock=clock)
    with make(stop_when=StopWhen(seconds=85)) as pop:
        assert pop.done  # 90 s after 10.0
    with make() as pop:
        _two_at_step_zero(pop)  # (the starting times are replaced; the start is not)
    again = storage.Store(str(tmp_path))
    again.load()
    assert again.started == 10.0
    again.close()


def test_a_stop_given_to_a_resumed_run_applies_at_once(tmp_path):
    """A stop_when given when a run is reopened, that the run already meets, was applied
    only at the next report: asks were told to keep going (a hostile test)."""
    from jaxpop import StopWhen

    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=1000)
    init = [{"lr": 0.1}, {"lr": 0.2}]
    with PopulationController(init, m, str(tmp_path)) as pop:
        gens = [w.generation_id for w in pop.active_workers]
        pop.set_eval(0, gens[0], 50, "p0", 0.01)
        pop.set_eval(1, gens[1], 50, "p1", 0.5)
    for when in (StopWhen(value=0.1), StopWhen(step=40)):
        pop = PopulationController(init, m, str(tmp_path), stop_when=when, reconfigure=True)
        assert pop.done
        assert pop.maybe_get_worker_data(1, gens[1], 50, None, None).status == "finished"
        assert pop.maybe_get_worker_data(1, None, 0, None, None).status == "finished"
        pop.close()
    with PopulationController(init, m, str(tmp_path)) as pop:  # (journaled)
        assert [w.status for w in pop.active_workers] == ["finished"] * 2
    # a target met by an evaluation no worker is on any more (a round copied past it)
    pop = PopulationController(init, m)
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "a", 0.05)
    blob = pop.serialized_state()
    pop = PopulationController(init, m, stop_when=StopWhen(value=0.1))
    pop.load_state(blob)
    assert pop.done


def test_the_clock_is_checked_at_construction_and_at_every_call():
    """A float NaN or inf from the clock was taken as a time (and a NaN start turned a
    time budget off); the construction's value was never checked (a hostile test)."""
    from jaxpop import StopWhen

    for bad in (math.nan, math.inf, True, "1"):
        with pytest.raises(TypeError, match="clock"):
            PopulationController([{"h": 0.0}], noop_mutator(), clock=lambda bad=bad: bad)
    clock = FakeClock(0.0)
    pop = PopulationController(
        [{"h": 0.0}], noop_mutator(), clock=clock, stop_when=StopWhen(seconds=10)
    )
    assert type(pop.history.first(pop.active_workers[0].generation_id).time) is float
    for bad in (math.nan, -math.inf):
        clock.now = bad
        with pytest.raises(TypeError, match="clock"):
            pop.set_eval(0, pop.active_workers[0].generation_id, 1, None, 1.0)
    clock.now = np.int64(5)
    pop.set_eval(0, pop.active_workers[0].generation_id, 1, None, 1.0)
    assert pop.history.latest(pop.active_workers[0].generation_id).time == 5.0
    for name, huge in (("value", 10**400), ("seconds", 10**400)):
        with pytest.raises(ValueError, match=f"StopWhen {name} must be a finite"):
            StopWhen(**{name: huge})
    with pytest.raises(ValueError, match="gone_after_s must be a finite"):
        PopulationController([{"h": 0.0}], noop_mutator(), gone_after_s=10**400)
    # a wrong type is a TypeError naming it ("True must be a finite number" said nothing
    # of what was wrong), and a step budget no worker can report is refused (helper-192)
    for name, bad in (("step", True), ("value", "0.1"), ("seconds", np.bool_(True))):
        with pytest.raises(TypeError, match=f"StopWhen {name} must be a number or None, got"):
            StopWhen(**{name: bad})
    with pytest.raises(ValueError, match=r"StopWhen step must be a whole number in \[0, 2\*\*63\)"):
        StopWhen(step=2**63)
    assert StopWhen(step=2**63 - 1).step == 2**63 - 1


@pytest.mark.parametrize("call", ["checkpoint_missing", "set_eval"])
def test_any_call_of_a_gone_worker_makes_it_active(call):
    """checkpoint_missing from a gone worker, or its report on the generation it had
    before a round moved it, left it gone: the reply said "gone" (a hostile test)."""
    clock = FakeClock(0.0)
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
    pop = PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, clock=clock, gone_after_s=30)
    a, b = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, a, 10, "a10", 0.5)
    pop.set_eval(1, b, 10, "b10", 0.3)  # a round: worker 0 copies b10
    moved = pop.active_workers[0]
    clock.advance(100)
    pop.set_eval(1, pop.active_workers[1].generation_id, 15, "b15", 0.2)
    assert pop.active_workers[0].status == "gone"
    if call == "checkpoint_missing":
        reply = pop.checkpoint_missing(0, moved.generation_id, moved.step)
        assert reply.status == "active"
    else:
        pop.set_eval(0, a, 15, "a15", 0.4)
        assert pop.history.get_checkpoint(a, 15).value == 0.4
    assert pop.active_workers[0].status == "active"


def test_a_run_stop_when_ended_goes_on_for_the_workers_reactivated(tmp_path):
    """A run a budget ended could not be extended: reopened with a larger budget, its
    workers were answered "finished" at every ask, and nothing could wake them."""
    from jaxpop import StopWhen

    clock = FakeClock(0.0)
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=20)
    init = [{"lr": 0.1}, {"lr": 0.2}]

    def reopen(**stop):
        return PopulationController(init, m, str(tmp_path), clock=clock, **stop)

    pop = reopen(stop_when=StopWhen(seconds=100))
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "p0", 0.5)
    clock.advance(150)
    pop.set_eval(1, gens[1], 10, "p1", 0.4)
    assert pop.done
    with pytest.raises(ValueError, match=r"cannot reactivate worker 0.*time budget"):
        pop.reactivate(0)  # the budget is spent: it would be finished again at once
    events = pop.state.num_events
    pop.close()
    pop = reopen(stop_when=StopWhen(seconds=300), reconfigure=True)
    assert pop.state.num_events == events  # (the refused call recorded nothing)
    assert pop.maybe_get_worker_data(0, gens[0], 10, None, None).status == "finished"
    pop.reactivate(0)
    pop.reactivate(0)  # an active worker: nothing changes
    told = pop.maybe_get_worker_data(0, gens[0], 10, None, None)
    assert told is None and pop.active_workers[0].status == "active" and not pop.done
    pop.reactivate(1)
    pop.set_eval(0, gens[0], 20, "p0-20", 0.3)
    assert pop.decision_counts.decisions == 0  # the round waits for worker 1 again
    pop.set_eval(1, gens[1], 20, "p1-20", 0.2)
    assert pop.decision_counts == (2, 1)  # and plays with it: worker 0 copies it
    pop.close()
    with reopen(stop_when=StopWhen(seconds=300), reconfigure=True) as again:  # journaled
        assert [w.status for w in again.active_workers] == ["active"] * 2
        clock.advance(200)  # 350 s after the run began: over again
        again.maybe_get_worker_data(0, None, 0, None, None)
        assert again.done
    # a gone worker comes back; a worker past its step budget, or a run past its target
    # value, stays over; a worker id out of range is refused as by finish
    pop = PopulationController(init, m, clock=clock, gone_after_s=10.0)
    clock.advance(20)
    pop.maybe_get_worker_data(0, None, 0, None, None)
    assert pop.active_workers[1].status == "gone"
    pop.reactivate(1)
    assert pop.active_workers[1].status == "active"
    for when, why in ((StopWhen(step=10), "step budget"), (StopWhen(value=0.45), "target")):
        pop = PopulationController(init, m, stop_when=when)
        gens = [w.generation_id for w in pop.active_workers]
        pop.set_eval(0, gens[0], 10, "p0", 0.4)
        assert pop.active_workers[0].status == "finished"
        with pytest.raises(ValueError, match=why):
            pop.reactivate(0)
    with pytest.raises(ValueError, match="out of range"):
        pop.reactivate(5)
    # an active worker of a run that is over is refused too (the stop after the call
    # finished it: it returned normally with the run ended); the driver's reactivate
    # of an active worker does not count as the worker heard from (helper-126)
    clock = FakeClock(0.0)
    pop = PopulationController(init, m, clock=clock, stop_when=StopWhen(seconds=10))
    clock.advance(11)
    with pytest.raises(ValueError, match="time budget"):
        pop.reactivate(0)
    assert pop.state.num_events == 0 and not pop.done
    pop = PopulationController(init, m, clock=clock, gone_after_s=10.0)
    clock.advance(8)
    pop.reactivate(0)  # active: nothing changes, its silence included
    clock.advance(3)
    pop.maybe_get_worker_data(1, None, 0, None, None)
    assert pop.active_workers[0].status == "gone"
    # one silent past gone_after_s is declared gone by the call itself, and reactivated:
    # it counts from now (helper-127)
    pop = PopulationController(init, m, clock=clock, gone_after_s=10.0)
    clock.advance(15)  # worker 0 active, silent past gone_after_s
    pop.reactivate(0)  # gone at this call's check, then reactivated: counts from now
    clock.advance(2)
    pop.maybe_get_worker_data(1, None, 0, None, None)
    assert pop.active_workers[0].status == "active"


def test_a_worker_of_another_run_is_unknown_unless_both_runs_share_a_seed(tmp_path, caplog):
    """Every run was seed 0 by default, so runs made the same generation ids: a worker
    left over from one run (its id kept in its own checkpoint) reported to a fresh run
    and was recorded as that run's, under the other run's hyperparameters, and its ask
    said keep going (a hostile test, helper-125)."""
    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=1000)
    with caplog.at_level(logging.INFO, "jaxpop"):
        old = PopulationController([{"lr": 0.1}], m, str(tmp_path / "a"))
        stale = old.active_workers[0].generation_id
        old.close()
        assert "a new run with seed" in caplog.text  # (the seed drawn: to run it again)
        caplog.clear()
        PopulationController([{"lr": 0.1}], m, str(tmp_path / "a")).close()
        assert "a new run with seed" not in caplog.text  # (resumed: its key is its own)
    new = PopulationController([{"lr": 0.5}], m, str(tmp_path / "b"))
    assert new.active_workers[0].generation_id != stale
    new.set_eval(0, stale, 120, "a/ckpt-120", 0.01)
    assert "never made" in caplog.text and new.history.num_checkpoints == 1
    told = new.maybe_get_worker_data(0, stale, 120, "a/ckpt-120", {"lr": 0.1})
    assert told is not None and told.meta_params == {"lr": 0.5}  # resynced
    # the same seed is the same run's randomness, ids included (documented)
    a, b = (PopulationController([{"lr": 0.1}], m, seed=7) for _ in range(2))
    assert a.active_workers == b.active_workers
    with pytest.raises(TypeError, match="seed must be an int or None"):
        PopulationController([{"lr": 0.1}], m, seed=1.5)


def _after_the_budget(tmp_path, resume, last):
    """Two WinnerTakeAllGenetic workers (rounds every 10 steps) under a 10 s budget:
    worker 0 reports at t=5, then ``last(controller, gens)`` runs at t=20, on the same
    controller or (``resume``) one opened on its log_dir then."""
    from jaxpop import StopWhen

    clock = FakeClock(0.0)
    options = {"seed": 0, "clock": clock, "stop_when": StopWhen(seconds=10)}
    args = ([{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}], WinnerTakeAllGenetic(lambda m: m, 10))
    log_dir = tmp_path / ("resumed" if resume else "live")
    pop = PopulationController(*args, log_dir=log_dir, **options)
    gens = [w.generation_id for w in pop.active_workers]
    clock.now = 5.0
    pop.set_eval(0, gens[0], 10, "a10", 0.5)
    pop.set_eval(1, gens[1], 10, "b10", 0.4)
    clock.now = 20.0
    if resume:
        pop.close()
        pop = PopulationController(*args, log_dir=log_dir, **options)
    last(pop, gens)
    pop.close()
    return [(w.generation_id, w.status) for w in pop.active_workers], pop.decision_counts


@pytest.mark.parametrize(
    "last",
    [
        lambda pop, gens: pop.set_eval(2, gens[2], 10, "c10", 0.3),  # the round's last report
        lambda pop, gens: pop.finish(2),  # the one the round waited for finishes
    ],
    ids=["report", "finish"],
)
def test_a_call_after_the_time_budget_plays_no_round_live_as_after_a_resume(tmp_path, last):
    """The budget was checked only after a call's event: the first call past it still
    decided a round (worker 0 was copied over onto a generation it never trained),
    while a controller resumed at that moment ended the run first (helper-164)."""
    live = _after_the_budget(tmp_path, False, last)
    assert live == _after_the_budget(tmp_path, True, last)
    workers, counts = live
    assert counts.decisions == 0 and all(status == "finished" for _, status in workers)


def test_load_state_gives_every_worker_gone_after_s_from_then():
    """gone_after_s counted from the controller's start, not from load_state: a load
    later than gone_after_s declared every other worker gone at the first call, and a
    round was decided without them (helper-164)."""
    clock = FakeClock(1000.0)
    args = ([{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}], WinnerTakeAllGenetic(lambda m: m, 10))
    saved = PopulationController(*args, seed=0, clock=clock).serialized_state()
    pop = PopulationController(*args, seed=1, clock=clock, gone_after_s=60)
    clock.now = 1100.0
    assert pop.load_state(saved)
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 10, "p0", 0.5)
    assert [w.status for w in pop.active_workers] == ["active"] * 3
    assert pop.decision_counts.decisions == 0


def test_a_load_state_whose_clock_fails_changes_nothing(tmp_path):
    """load_state read the clock (for gone_after_s) after it had made the loaded state
    the run's and journaled it: a failing clock raised with the load done (helper-166);
    then it read the clock at every load, failing loads that need no time (helper-167)."""
    clock = FakeClock(1000.0)
    args = ([{"lr": 0.1}, {"lr": 0.2}], WinnerTakeAllGenetic(lambda m: m, 10))
    saved = PopulationController(*args, seed=0, clock=clock).serialized_state()
    pop = PopulationController(*args, seed=1, clock=clock, gone_after_s=60, log_dir=tmp_path)
    plain = PopulationController(*args, seed=2, clock=clock)  # (no stop_when, no gone_after_s)
    before = pop.state
    clock.now = math.nan
    with pytest.raises(TypeError, match="clock"):
        pop.load_state(saved)
    assert pop.state is before
    pop.close()
    from jaxpop import storage

    assert storage.read_state(tmp_path).workers == before.workers
    assert plain.load_state(saved)  # a controller that needs no time reads no clock
    assert [w.generation_id for w in plain.active_workers] == [
        w.generation_id
        for w in PopulationController(*args, seed=0, clock=FakeClock()).active_workers
    ]


def test_a_rerun_step_keeps_the_old_params_for_the_later_steps_trained_from_them(tmp_path):
    # worker 0 reports step 10, then 20 (trained from it), then step 10 again with other
    # params: (A, 20) and worker 1's copy of it named the rerun's params in their lineage,
    # which they were never trained from; the old (A, 10) is kept for them now
    mutator = WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] / 2}, steps_per_exploit=20)
    clock = iter(range(1, 100)).__next__
    c = PopulationController(
        [{"lr": 0.1}, {"lr": 0.2}], mutator, seed=0, clock=clock, log_dir=tmp_path
    )
    a = c.maybe_get_worker_data(0, None, 0, None, None).generation_id
    b = c.maybe_get_worker_data(1, None, 0, None, None).generation_id
    c.set_eval(0, a, 10, "A10", 0.5)
    c.set_eval(0, a, 20, "A20", 0.1)
    copy = c.set_eval_and_ask(1, b, 20, "B20", 0.9).generation_id  # copies (A, 20)
    c.set_eval(0, a, 10, "A10-rerun", 0.45)

    def lineage(controller, *ref):
        return [checkpoint.params for checkpoint in controller.history.lineage(*ref)]

    assert lineage(c, a, 10) == [None, "A10-rerun"]
    assert lineage(c, a, 20) == [None, "A10", "A20"]
    assert lineage(c, copy) == [None, "A10", "A20", "A20"]
    # the worker goes on from its rerun: step 20 again, then 30
    c.set_eval(0, a, 20, "A20-rerun", 0.05)
    c.set_eval(0, a, 30, "A30", 0.04)
    assert lineage(c, a, 30) == [None, "A10-rerun", "A20-rerun", "A30"]
    assert lineage(c, copy) == [None, "A10", "A20", "A20"]
    assert lineage(c, a, 10) == [None, "A10-rerun"]
    c.close()
    resumed = PopulationController([{"lr": 0.1}, {"lr": 0.2}], mutator, log_dir=tmp_path)
    assert resumed.history == c.history  # (journaled and replayed)
    resumed.close()
