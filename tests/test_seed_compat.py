"""The seed's extension points and controller members: seed-style ``Mutate`` subclasses,
``mutate=``, ``serialized_state`` / ``save_state`` / ``load_state``, ``step=None``,
sorted ``keys()`` / ``values()``, ``active_workers`` as a list, module-level names."""

from __future__ import annotations

import os
import pickle
import threading
import time
import types

import numpy as np
import pytest

from conftest import noop_mutator
from jaxpop import encoding, storage
from jaxpop import population as pop_mod
from jaxpop.mutators import WinnerTakeAllGenetic


# -- seed-style mutators, written as the seed writes them --------------------------------
class CopyBest(pop_mod.Mutate):
    """Once every worker has trained ``interval`` steps, all restart from the best one's
    latest checkpoint, each with its hyperparameter scaled by its own factor."""

    def __init__(self, interval, factors=(1.0, 0.5, 0.8)):
        self._interval = interval
        self._factors = factors

    def init(self):
        return {"exploits": 0, "last_best": None}

    def update(self, state, current_workers, cache):
        state = {**state}
        latest = []
        for worker in current_workers:
            steps = cache[worker.generation_id]
            if steps.keys()[-1] - steps.keys()[0] < self._interval:
                return state, current_workers
            latest.append(steps.values()[-1])
        best = min(latest, key=lambda c: c.value)
        new_workers = []
        for i in range(len(current_workers)):
            gen = pop_mod.make_gen_id()
            meta = best.meta_params * self._factors[i % len(self._factors)]
            cache[gen] = pop_mod.IntKeyDict()
            cache[gen][best.step] = pop_mod.Checkpoint(
                params=best.params,
                meta_params=meta,
                generation_id=gen,
                value=None,
                parent=(best.generation_id, best.step),
                step=best.step,
                time=time.time(),
            )
            new_workers.append(pop_mod.ActiveWorker(best.params, meta, gen, best.step))
        state["exploits"] += 1
        state["last_best"] = best  # a Checkpoint in the state, as the seed's branching keeps
        return state, new_workers


def _train(pop, rounds, num_workers=3):
    """The seed's worker loop: ask with no generation, train a step, report meta**2."""
    data = None
    for _ in range(rounds):
        for i in range(num_workers):
            data = pop.maybe_get_worker_data(i, None, 0, None, None)
            pop.set_eval(
                i, data.generation_id, data.step + 1, f"p{data.step + 1}", data.meta_params**2
            )
    return data


def _new_generations(pop):
    firsts = [pop.history.first(g) for g in pop.history]
    return [c for c in firsts if c.parent is not None]


# -- the seed's small names --------------------------------------------------------------
class BranchAtBest(pop_mod.Mutate):
    """Starts a generation at its worker's best checkpoint, found with numpy (a numpy
    step and value, as numpy code yields them)."""

    def update(self, state, workers, cache):
        w = workers[0]
        checkpoints = cache[w.generation_id].values()
        values = np.array([np.inf if c.value is None else c.value for c in checkpoints])
        best = checkpoints[int(np.argmin(values))]
        if best.value is None or len(checkpoints) < 3:
            return state, workers
        step, gen = np.int64(best.step), pop_mod.make_gen_id()
        cache[gen] = pop_mod.IntKeyDict()
        cache[gen][step] = pop_mod.Checkpoint(
            generation_id=gen,
            params=best.params,
            meta_params={"lr": 0.5},
            parent=(best.generation_id, np.int64(best.step)),
            step=step,
            value=np.float64(values.min()),
            time=time.time(),
        )
        return state, [pop_mod.ActiveWorker(best.params, {"lr": 0.5}, gen, step)]


def test_a_seed_mutator_may_use_numpy_steps_and_values_as_the_seed_takes_them():
    # (helper-318: "new checkpoint 0.step is not an int: int64", "value is not None or
    # a float: float64"; the controller's own calls take numpy numbers)
    pop = pop_mod.PopulationController([{"lr": 1.0}], BranchAtBest())
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    for step in (1, 2):
        pop.set_eval(0, gen, step, f"p{step}", 3.0 - step)
    worker = pop.active_workers[0]
    assert (worker.step, type(worker.step), worker.params) == (2, int, "p2")
    start = pop.history.first(worker.generation_id)
    assert start.parent == (gen, 2) and type(start.parent[1]) is int
    assert (start.value, type(start.value)) == (1.0, float)
    # a value the controller's set_eval refuses is refused by name, not an OverflowError
    # (helper-320: float(10**400) raised from inside the cache; a longdouble became inf)
    from jaxpop import seed as seed_lib
    from jaxpop.records import check_checkpoint

    for value in (10**400, np.longdouble("1e400")):
        plain = seed_lib._plain_numbers(start.replace(value=value))
        with pytest.raises(ValueError, match="value is not None or a float"):
            check_checkpoint(plain, "a new checkpoint")


def test_a_mutate_fn_may_edit_a_numpy_hyperparameter_in_place():
    # (docs/migrating.md says p["lr"] *= 2 doubles each worker's rate once; on a numpy
    # lr it raised "output array is read-only" in every round, helper-318)
    def double(p):
        p["lr"] *= 2
        return p

    pop = pop_mod.PopulationController(
        [{"lr": np.array([0.1, 0.2])}] * 2, WinnerTakeAllGenetic(double, steps_per_exploit=10)
    )
    for i in range(2):
        pop.set_eval(i, pop.active_workers[i].generation_id, 10, f"p{i}", float(i))
    assert [w.meta_params["lr"].tolist() for w in pop.active_workers] == [[0.2, 0.4]] * 2
    assert pop.history.first(pop.active_workers[0].generation_id).parent is not None


def test_seed_module_names_are_exported_by_population():
    for name in ("make_gen_id", "GenerationID", "MutateState", "IntKeyDict", "Mutate"):
        assert name in pop_mod.__all__ and hasattr(pop_mod, name)
    assert pop_mod.GenerationID is str
    ids = {pop_mod.make_gen_id() for _ in range(50)}
    assert len(ids) == 50 and all(isinstance(i, str) and len(i) == 36 for i in ids)


def test_int_key_dict_keys_values_and_items_are_lists_sorted_by_key():
    steps = pop_mod.IntKeyDict()
    for step in (30, 0, 10):
        steps[step] = f"c{step}"
    assert isinstance(steps, dict)
    assert steps.keys() == [0, 10, 30] and steps.keys()[0] == 0
    assert steps.values() == ["c0", "c10", "c30"] and steps.values()[-1] == "c30"
    assert steps.items() == [(0, "c0"), (10, "c10"), (30, "c30")]


def test_history_generation_keys_values_items_are_sorted_lists_as_the_seeds():
    pop = pop_mod.PopulationController([1.0], noop_mutator())
    gen = pop.active_workers[0].generation_id
    for step in (20, 5, 10):
        pop.set_eval(0, gen, step, None, float(step))
    view = pop.history[gen]
    assert view.keys() == [0, 5, 10, 20] and view.keys()[0] == 0
    assert view.values()[-1] is pop.history.latest(gen)
    assert [c.step for c in view.values()] == [0, 5, 10, 20]
    assert view.items() == [(s, view[s]) for s in (0, 5, 10, 20)]


def test_active_workers_is_a_list_copy():
    pop = pop_mod.PopulationController([1.0, 2.0], noop_mutator())
    workers = pop.active_workers
    assert type(workers) is list and len(workers) == 2
    assert workers == list(pop.state.workers) and workers[1].meta_params == 2.0
    assert [w.meta_params for w in workers] == [1.0, 2.0]
    workers.pop()
    assert len(pop.active_workers) == 2


# -- the controller's members -------------------------------------------------------------
def test_mutate_keyword_and_attribute():
    mutate = CopyBest(2)
    pop = pop_mod.PopulationController([1.0] * 3, mutate=mutate)
    assert pop.mutate is mutate
    assert isinstance(pop.mutator, pop_mod.SeedMutator) and pop.mutator.mutate is mutate
    wta = WinnerTakeAllGenetic(lambda m: m, 2)
    assert pop_mod.PopulationController([1.0], mutate=wta).mutate is wta
    assert pop_mod.PopulationController([1.0], wta).mutate is wta


def test_exactly_one_mutator_is_required():
    with pytest.raises(TypeError, match="not both"):
        pop_mod.PopulationController([1.0], noop_mutator(), mutate=noop_mutator())
    with pytest.raises(TypeError, match="not neither"):
        pop_mod.PopulationController([1.0])
    with pytest.raises(TypeError, match="Mutate subclass"):
        pop_mod.PopulationController([1.0], mutate=object())


def test_step_none_is_accepted_and_records_nothing():
    pop = pop_mod.PopulationController([1.0] * 3, CopyBest(1))
    first = pop.maybe_get_worker_data(0, None, None, None, None)
    assert first == pop.active_workers[0]
    assert pop.maybe_get_worker_data(0, first.generation_id, None, None, None) is None
    _train(pop, 1)  # every worker moved to a new generation
    size = pop.history.num_checkpoints
    moved = pop.maybe_get_worker_data(0, first.generation_id, None, "p", 1.0)
    assert moved == pop.active_workers[0] and moved.generation_id != first.generation_id
    assert pop.history.num_checkpoints == size  # no checkpoint at a made-up step


# -- a seed-style mutator through the controller -------------------------------------------
def test_seed_style_mutator_runs_unchanged_in_memory():
    pop = pop_mod.PopulationController([1.0] * 3, CopyBest(2))
    data = _train(pop, 40)
    assert pop.state.mutator_state["exploits"] >= 10
    assert abs(data.meta_params) < 0.01  # the scaled copies of the best converge to 0
    for start in _new_generations(pop):
        parent = pop.history.get_checkpoint(*start.parent)
        assert parent is not None and parent.value is not None and start.step == parent.step
    best = pop.state.mutator_state["last_best"]
    assert (
        isinstance(best, pop_mod.Checkpoint) and best == pop.history[best.generation_id][best.step]
    )


def test_seed_style_mutator_with_log_dir_is_journaled_and_resumes(tmp_path):
    log_dir = str(tmp_path)
    with pop_mod.PopulationController([1.0] * 3, CopyBest(2), log_dir) as pop:
        _train(pop, 7)
        before = pop.state
    assert before.mutator_state["exploits"] >= 2
    with pop_mod.PopulationController([1.0] * 3, mutate=CopyBest(2), log_dir=log_dir) as again:
        state = again.state
        assert state.workers == before.workers and state.num_events == before.num_events
        assert state.mutator_state == before.mutator_state  # the Checkpoint in it round-trips
        assert list(state.history.checkpoints()) == list(before.history.checkpoints())
        _train(again, 4)
        assert again.state.mutator_state["exploits"] > before.mutator_state["exploits"]


def test_a_resumed_seed_mutator_must_be_configured_the_same(tmp_path):
    log_dir = str(tmp_path)
    pop_mod.PopulationController([1.0] * 3, CopyBest(2), log_dir).close()
    with pytest.raises(storage.RunMismatchError, match="_interval"):
        pop_mod.PopulationController([1.0] * 3, CopyBest(3), log_dir)

    class Other(CopyBest):
        pass

    with pytest.raises(storage.RunMismatchError, match=r"CopyBest in the log_dir, .*Other now"):
        pop_mod.PopulationController([1.0] * 3, Other(2), log_dir)
    pop_mod.PopulationController([1.0] * 3, CopyBest(3), log_dir, reconfigure=True).close()


def test_describe_gives_the_class_and_its_attributes_when_wrapped():
    mutate = CopyBest(2, factors=(1.0, 0.5))
    mutator = pop_mod.SeedMutator(mutate)
    description = mutator.describe()
    assert description == {
        "kind": "CopyBest",
        "config": {"_interval": 2, "_factors": (1.0, 0.5)},
    }
    mutate._interval = 99  # an instance edited later (the seed's FixedSchedule does)
    assert mutator.describe() == description
    assert pop_mod.SeedMutator(mutate).describe() == description  # as when first wrapped
    assert pop_mod.SeedMutator(CopyBest(2)).ask is None  # not overridden


def test_get_worker_data_hook_gets_the_seeds_arguments_and_may_add_generations():
    calls = []

    class FreshStart(pop_mod.Mutate):
        """Moves a worker that asks with no generation to a new one, once."""

        def init(self):
            return None

        def update(self, state, current_workers, cache):
            return state, current_workers

        def get_worker_data(
            self, active_workers, cache, worker_id, generation_id, step, params, meta_params
        ):
            calls.append((worker_id, generation_id, step, params, meta_params))
            worker = active_workers[worker_id]
            if generation_id is not None or worker.meta_params == 0.0:
                return active_workers
            gen = pop_mod.make_gen_id()
            start = cache[worker.generation_id].values()[-1]
            cache[gen] = pop_mod.IntKeyDict()
            cache[gen][start.step] = start.replace(
                generation_id=gen, meta_params=0.0, parent=start.ref, time=time.time()
            )
            workers = list(active_workers)
            workers[worker_id] = pop_mod.ActiveWorker(None, 0.0, gen, start.step)
            return workers

    pop = pop_mod.PopulationController([1.0, 2.0], FreshStart())
    data = pop.maybe_get_worker_data(1, None, 7, "params", {"m": 1})
    assert calls == [(1, None, 7, "params", {"m": 1})]
    assert data.meta_params == 0.0 and data.generation_id in pop.history
    assert pop.history.first(data.generation_id).parent is not None
    before = pop.state
    assert pop.maybe_get_worker_data(1, data.generation_id, 7, None, None) is None
    assert pop.state is before  # nothing changed: no event


def test_each_call_gets_a_private_copy_of_the_state():
    class Counts(pop_mod.Mutate):
        def init(self):
            return {"n": 0, "seen": []}

        def update(self, state, current_workers, cache):
            state["n"] += 1  # edited in place, as a careless seed mutator might
            state["seen"].append(len(cache))
            return state, current_workers

    pop = pop_mod.PopulationController([1.0], Counts())
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 1, None, 1.0)
    first = pop.state
    pop.set_eval(0, gen, 2, None, 1.0)
    assert first.mutator_state == {"n": 1, "seen": [1]}
    assert pop.state.mutator_state == {"n": 2, "seen": [1, 1]}


class SeedFixedSchedule(pop_mod.Mutate):
    """The seed's ``FixedSchedule``, as the seed wrote it: it deletes the entries of its
    own ``_schedule`` as it applies them."""

    def __init__(self, schedule):
        self._schedule = {k: v for k, v in schedule.items()}

    def init(self):
        return None

    def update(self, state, current_workers, cache):
        assert len(current_workers) == 1
        worker = current_workers[0]
        steps = cache[worker.generation_id]
        last_checkpoint = steps.values()[-1]
        for k, sched_v in sorted(self._schedule.items(), key=lambda k_v: int(k_v[0])):
            if int(k) <= int(last_checkpoint.step):
                genid = pop_mod.make_gen_id()
                worker = pop_mod.ActiveWorker(
                    last_checkpoint.params, sched_v, genid, last_checkpoint.step
                )
                checkpoint = pop_mod.Checkpoint(
                    generation_id=worker.generation_id,
                    params=worker.params,
                    meta_params=worker.meta_params,
                    parent=(last_checkpoint.generation_id, last_checkpoint.step),
                    step=worker.step,
                    value=None,
                    time=time.time(),
                )
                cache[worker.generation_id] = pop_mod.IntKeyDict()
                cache[worker.generation_id][worker.step] = checkpoint
                del self._schedule[k]
                return state, [worker]
        return state, current_workers


def test_a_seed_mutator_that_edits_itself_resumes_on_its_log_dir(tmp_path):
    # the seed's interruption pattern: a new controller on the same log_dir, the same
    # mutator object (which deleted the schedule entries it applied)
    mutate, seen = SeedFixedSchedule({3: 0.5, 8: 0.25}), []
    for _ in range(3):
        pop = pop_mod.PopulationController([1.0], mutate, log_dir=str(tmp_path))
        for _ in range(4):
            data = pop.maybe_get_worker_data(0, None, 0, None, None)
            pop.set_eval(0, data.generation_id, data.step + 1, None, data.meta_params)
            seen.append(pop.active_workers[0].meta_params)
    assert mutate._schedule == {}
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25]
    pop.close()
    # another process builds it anew with the same schedule: the same run
    again = pop_mod.PopulationController([1.0], SeedFixedSchedule({3: 0.5, 8: 0.25}), str(tmp_path))
    assert again.state.num_events == 12
    again.close()
    with pytest.raises(storage.RunMismatchError, match="_schedule"):
        pop_mod.PopulationController([1.0], SeedFixedSchedule({3: 0.1}), str(tmp_path))


def test_update_may_return_a_list_and_keep_int_key_dicts_in_its_state(tmp_path):
    class KeepsSteps(pop_mod.Mutate):
        """Returns ``[state, workers]`` (the seed unpacks either) and keeps a generation's
        IntKeyDict from the cache in its state."""

        def init(self):
            return {"steps": pop_mod.IntKeyDict()}

        def update(self, state, current_workers, cache):
            steps = cache[current_workers[0].generation_id]
            return [{"steps": steps, "last": [steps]}, current_workers]

    with pop_mod.PopulationController([1.0], KeepsSteps(), str(tmp_path)) as pop:
        gen = pop.active_workers[0].generation_id
        for step in (5, 2):
            pop.set_eval(0, gen, step, f"p{step}", 1.0)
        steps = pop.state.mutator_state["steps"]
        assert type(steps) is dict and list(steps) == [0, 2, 5]  # a plain dict, by step
        assert steps[5] == pop.history[gen][5]
        assert pop.state.mutator_state["last"] == [steps]
        state = pop.state.mutator_state
    with pop_mod.PopulationController([1.0], KeepsSteps(), str(tmp_path)) as again:
        assert again.state.mutator_state == state


def test_get_worker_data_sees_the_step_the_controller_resolved_for_step_none():
    steps = []

    class Records(pop_mod.Mutate):
        def update(self, state, current_workers, cache):
            return state, current_workers

        def get_worker_data(self, active_workers, cache, worker_id, generation_id, step, *_):
            steps.append(step)
            return active_workers

    pop = pop_mod.PopulationController([1.0, 1.0], Records())
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 7, None, 1.0)
    pop.maybe_get_worker_data(0, gen, None, None, None)  # the latest step recorded for gen
    pop.maybe_get_worker_data(1, None, None, None, None)  # worker 1's assigned step
    pop.maybe_get_worker_data(np.int64(0), None, None, None, None)  # (it was taken as 0)
    assert steps == [7, 0, 7]


def test_step_none_after_a_step_back_is_where_the_worker_was_sent():
    """A worker sent back to its last save (nothing to load at its later evaluation)
    asked with step=None: the controller took the abandoned run's later step, moved it
    there with the earlier step's params and a change of hyperparameters due only later
    (helper-215). It is the step it was sent to."""
    from jaxpop import FixedSchedule

    def controller():
        return pop_mod.PopulationController(
            [{"lr": 0.1}], FixedSchedule({0: {"lr": 0.1}, 15: {"lr": 0.01}}, on_ask=True), seed=0
        )

    replies = []
    for step in (None, 10):
        pop = controller()
        gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
        pop.set_eval(0, gen, 10, "params@10", 0.5)
        pop.set_eval(0, gen, 16, None, 0.4)  # evaluated, not saved
        back = pop.maybe_get_worker_data(0, None, 0, None, None)  # it restarts
        assert (back.generation_id, back.step, back.params) == (gen, 10, "params@10")
        generations = len(pop.history)
        replies.append(pop.maybe_get_worker_data(0, gen, step, back.params, back.meta_params))
        assert pop.active_workers[0].step == 10 and len(pop.history) == generations
    assert replies == [None, None]  # (it was the step-16 timeline's new generation)


# -- what jaxpop cannot represent is refused by name ----------------------------------------
class _Hostile(pop_mod.Mutate):
    def update(self, state, current_workers, cache):
        return self.act(state, list(current_workers), cache)


class DeletesGeneration(_Hostile):
    def act(self, state, workers, cache):
        del cache[workers[1].generation_id]
        return state, workers


class DeletesCheckpoint(_Hostile):
    def act(self, state, workers, cache):
        del cache[workers[0].generation_id][0]
        return state, workers


class ReplacesCheckpoint(_Hostile):
    def act(self, state, workers, cache):
        steps = cache[workers[0].generation_id]
        steps[0] = steps[0].replace(value=0.0)
        return state, workers


class ReturnsTwoWorkers(_Hostile):
    def act(self, state, workers, cache):
        return state, workers[:2]


class AssignsUnknownGeneration(_Hostile):
    def act(self, state, workers, cache):
        workers[2] = workers[2].replace(generation_id=pop_mod.make_gen_id())
        return state, workers


class AddsOrphan(_Hostile):
    def act(self, state, workers, cache):
        start = cache[workers[0].generation_id][0]
        cache["orphan"] = pop_mod.IntKeyDict(
            {0: start.replace(generation_id="orphan", parent=("x", 3))}
        )
        return state, workers


class StoresALock(_Hostile):
    def act(self, state, workers, cache):
        return {"lock": threading.Lock()}, workers


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (DeletesGeneration(), ValueError, r"DeletesGeneration.update deleted generation '\w+'"),
        (DeletesCheckpoint(), ValueError, r"deleted the checkpoint \('\w+', 0\)"),
        (ReplacesCheckpoint(), ValueError, r"replaced the checkpoint \('\w+', 0\)"),
        (ReturnsTwoWorkers(), ValueError, "returned 2 workers for a population of 3"),
        (
            AssignsUnknownGeneration(),
            ValueError,
            "assigned worker 2 to generation .* no checkpoint",
        ),
        (AddsOrphan(), ValueError, r"parent \('x', 3\) is not in the history"),
        (
            StoresALock(),
            TypeError,
            r"StoresALock.update returned a state jaxpop cannot store.*lock",
        ),
    ],
)
def test_what_jaxpop_cannot_represent_is_refused_and_nothing_is_recorded(
    tmp_path, mutate, error, match
):
    with pop_mod.PopulationController([1.0] * 3, mutate, str(tmp_path)) as pop:
        gen = pop.active_workers[0].generation_id
        before = pop.state
        with pytest.raises(error, match=match):
            pop.set_eval(0, gen, 1, None, 1.0)
        assert pop.state is before
    with pop_mod.PopulationController([1.0] * 3, mutate, str(tmp_path)) as again:
        assert again.state.num_events == 0  # nothing was journaled


def test_an_unencodable_initial_state_is_refused_at_construction():
    class LockInit(pop_mod.Mutate):
        def init(self):
            return threading.Lock()

    with pytest.raises(TypeError, match=r"LockInit.init\(\) returned a state jaxpop cannot store"):
        pop_mod.PopulationController([1.0], LockInit())


# -- serialized_state / save_state / load_state ---------------------------------------------
def test_serialized_state_is_safe_bytes_that_load_state_takes_back():
    pop = pop_mod.PopulationController([1.0] * 3, CopyBest(1))
    _train(pop, 2)
    data, saved = pop.serialized_state(), pop.state
    assert isinstance(data, bytes) and data.startswith(encoding.PREFIX)
    _train(pop, 3)
    assert pop.state.num_events > saved.num_events
    assert pop.load_state(data) is True
    assert pop.state.workers == saved.workers and pop.state.num_events == saved.num_events
    assert list(pop.state.history.checkpoints()) == list(saved.history.checkpoints())
    assert pop.state.mutator_state == saved.mutator_state
    _train(pop, 1)  # and it goes on from there


def test_save_and_load_state_without_log_dir_do_nothing():
    pop = pop_mod.PopulationController([1.0], noop_mutator())
    assert pop.save_state() is None
    assert pop.load_state() is False


def test_save_state_writes_atomically_and_load_state_rewinds_durably(tmp_path):
    log_dir = str(tmp_path)
    pop = pop_mod.PopulationController([1.0] * 3, CopyBest(1), log_dir, compact_after=2)
    assert pop.load_state() is False  # nothing saved yet
    _train(pop, 2)
    pop.save_state()
    saved = pop.state
    state_file = pop_mod.seed_lib.STATE_FILE
    assert state_file in os.listdir(log_dir)
    # no temporary of the state file (a background snapshot may be writing its own)
    assert not [n for n in os.listdir(log_dir) if n.startswith(state_file + ".tmp")]
    _train(pop, 3)
    assert pop.load_state() is True
    assert pop.state.workers == saved.workers
    _train(pop, 4)  # journaled after the loaded state, through compactions
    after = pop.state
    pop.close()
    with pop_mod.PopulationController([1.0] * 3, CopyBest(1), log_dir) as again:
        assert again.state.workers == after.workers and again.state.num_events == after.num_events
        assert list(again.state.history.checkpoints()) == list(after.history.checkpoints())


def test_a_rewound_run_never_makes_an_abandoned_generation_id_again(tmp_path):
    from jaxpop.mutators import WinnerTakeAllGenetic

    def mutator():
        return WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] * 10}, steps_per_exploit=10)

    pop = pop_mod.PopulationController([{"lr": 1.0}, {"lr": 2.0}], mutator(), str(tmp_path))
    gens = [w.generation_id for w in pop.active_workers]
    pop.save_state()
    saved = pop.state
    pop.set_eval(0, gens[0], 10, "a10", 0.1)
    pop.set_eval(1, gens[1], 10, "b10", 0.9)  # a round: worker 0 wins
    abandoned = pop.active_workers[0]
    assert abandoned.generation_id not in gens
    for _ in range(2):  # (twice: the second timeline's ids are abandoned too)
        assert pop.load_state()
        assert pop.state.workers == saved.workers and pop.history == saved.history
        assert not np.array_equal(pop.state.key, saved.key)  # a new root key
        pop.set_eval(1, gens[1], 10, "b10", 0.05)
        pop.set_eval(0, gens[0], 10, "a10", 0.9)  # the same events: worker 1 wins
        made = {w.generation_id for w in pop.active_workers}
        assert abandoned.generation_id not in made
        # worker 0 still trains the abandoned assignment and reports on it: ignored
        pop.set_eval(0, abandoned.generation_id, 20, "stale", 0.01)
        assert abandoned.generation_id not in pop.history
        abandoned = pop.active_workers[0]
    # loaded again before any new event (or by the next process, after a crash): the
    # key is new again, not the saved one (which makes the first timeline's ids again)
    keys = [pop.state.key]
    for _ in range(2):
        assert pop.load_state()
        keys.append(pop.state.key)
    assert len({tuple(k) for k in [saved.key, *keys]}) == 4
    state = pop.state
    pop.close()
    with pop_mod.PopulationController([{"lr": 1.0}] * 2, mutator(), str(tmp_path)) as again:
        assert np.array_equal(again.state.key, state.key) and again.history == state.history
        assert again.load_state()  # the seed's pattern: load_state at every start
        assert not np.array_equal(again.state.key, state.key)


@pytest.mark.parametrize(
    "damage",
    [lambda d: d[:-7], lambda d: d[:20] + b"\xff" + d[21:], lambda d: b"garbage"],
    ids=["truncated", "flipped", "garbage"],
)
def test_load_state_of_damaged_bytes_raises_and_changes_nothing(tmp_path, damage):
    log_dir = str(tmp_path)
    with pop_mod.PopulationController([1.0] * 3, CopyBest(1), log_dir) as pop:
        _train(pop, 2)
        good = pop.serialized_state()
        before = pop.state
        with pytest.raises(ValueError, match="not a valid jaxpop population state"):
            pop.load_state(damage(good))
        path = os.path.join(log_dir, pop_mod.seed_lib.STATE_FILE)
        with open(path, "wb") as f:
            f.write(damage(good))
        with pytest.raises(ValueError, match=f"{path} is not a valid jaxpop population state"):
            pop.load_state()
        assert pop.state is before


def test_load_state_refuses_every_single_byte_flip_of_a_saved_state():
    pop = pop_mod.PopulationController([1.0], CopyBest(1))
    _train(pop, 2, num_workers=1)
    good, before = pop.serialized_state(), pop.state
    for i in range(len(good)):
        damaged = bytearray(good)
        damaged[i] ^= 0xFF
        with pytest.raises(ValueError, match="not a valid jaxpop population state"):
            pop.load_state(bytes(damaged))
    assert pop.state is before
    assert pop.load_state(good) is True


def test_load_state_names_the_version_of_a_state_it_does_not_read():
    pop = pop_mod.PopulationController([1.0], noop_mutator())
    old = encoding.encode(
        {"format": "jaxpop.population_state", "version": 1, "run": {}, "state": {}}
    )
    with pytest.raises(ValueError, match="version 1; this jaxpop reads version 2"):
        pop.load_state(old)


def test_save_state_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    log_dir = str(tmp_path)
    with pop_mod.PopulationController([1.0], noop_mutator(), log_dir) as pop:
        pop.save_state()
        path = os.path.join(log_dir, pop_mod.seed_lib.STATE_FILE)
        saved = open(path, "rb").read()
        pop.set_eval(0, pop.active_workers[0].generation_id, 1, None, 1.0)

        def fail(src, dst, **kwargs):
            raise OSError("disk gone")

        monkeypatch.setattr(os, "replace", fail)
        with pytest.raises(OSError, match="disk gone"):
            pop.save_state()
        monkeypatch.undo()
        assert open(path, "rb").read() == saved
        assert not [n for n in os.listdir(log_dir) if ".tmp" in n]


def test_load_state_never_unpickles():
    pop = pop_mod.PopulationController([1.0], noop_mutator())
    with pytest.raises(ValueError, match="not a valid jaxpop population state"):
        pop.load_state(pickle.dumps(pop.state.workers))
    with pytest.raises(TypeError, match="must be bytes"):
        pop.load_state("text")


def test_load_state_refuses_another_runs_state():
    three = pop_mod.PopulationController([1.0] * 3, CopyBest(1)).serialized_state()
    two = pop_mod.PopulationController([1.0] * 2, CopyBest(1))
    before = two.state
    with pytest.raises(storage.RunMismatchError, match=r"population size: 3 .* 2 now"):
        two.load_state(three)
    other = pop_mod.PopulationController([1.0] * 3, CopyBest(5))
    with pytest.raises(storage.RunMismatchError, match="_interval"):
        other.load_state(three)
    assert two.state is before


# -- the seed's interruption pattern -----------------------------------------------------
def test_recreating_the_controller_on_its_log_dir_in_one_process_continues_the_run(
    tmp_path, caplog
):
    # the seed's loop: a new controller on the same log_dir every few rounds, the old one
    # neither closed nor dropped; each continues exactly where the last one stopped
    mutator = WinnerTakeAllGenetic(lambda h, key: h * 0.9, steps_per_exploit=1)
    controllers, events, exploits = [], 0, 0
    for _ in range(4):
        pop = pop_mod.PopulationController([1.0] * 3, mutator, log_dir=str(tmp_path))
        controllers.append(pop)  # still alive: the new one takes the log_dir over
        assert pop.state.num_events == events
        assert pop.state.mutator_state.num_exploits == exploits
        for _ in range(3):
            data = _train(pop, 1)
            pop.set_eval(2, "bad_gen_id", data.step + 1, None, 0.0)  # ignored, with a warning
        events, exploits = pop.state.num_events, pop.state.mutator_state.num_exploits
    assert exploits >= 8 and "bad_gen_id" in caplog.text
    assert pop.active_workers[0].meta_params < 0.9**8
    with pytest.raises(storage.SupersededError):
        _train(controllers[0], 1)


class _HalveInPlace(pop_mod.Mutate):
    """Seed-style: edits the last checkpoint's meta_params dict in place, then starts a
    generation with it (a common pattern in seed mutators)."""

    def update(self, state, workers, cache):
        w = workers[0]
        last = cache[w.generation_id].values()[-1]
        if last.value is None or last.step < 10:
            return state, workers
        meta = last.meta_params
        meta["lr"] = meta["lr"] * 0.5  # in place: on the mutator's copy
        gen = pop_mod.make_gen_id()
        cache[gen] = pop_mod.IntKeyDict()
        cache[gen][last.step] = pop_mod.Checkpoint(
            params=last.params,
            meta_params=meta,
            generation_id=gen,
            parent=(last.generation_id, last.step),
            step=last.step,
            value=None,
            time=time.time(),
        )
        return state, [pop_mod.ActiveWorker(last.params, meta, gen, last.step)]


def test_a_seed_mutator_editing_a_cached_checkpoint_in_place_never_changes_the_history(tmp_path):
    """The cache hands a Mutate copies of the stored checkpoints: editing one's dict in
    place changes its copy only; the history (live and journaled) keeps what the worker
    trained with, and the new generation gets the edited values."""
    for log_dir in (None, tmp_path / "run"):
        c = pop_mod.PopulationController([{"lr": 1.0}], _HalveInPlace(), log_dir=log_dir)
        g0 = c.active_workers[0].generation_id
        c.set_eval(0, g0, 10, "p10", 0.5)
        assert {s: ck.meta_params for s, ck in c.history[g0].items()} == {
            0: {"lr": 1.0},
            10: {"lr": 1.0},
        }
        assert c.active_workers[0].meta_params == {"lr": 0.5}
        c.close()
    reopened = pop_mod.PopulationController([{"lr": 1.0}], _HalveInPlace(), log_dir=log_dir)
    assert reopened.history[g0][0].meta_params == {"lr": 1.0}
    assert reopened.active_workers[0].meta_params == {"lr": 0.5}
    reopened.close()


def test_a_seed_mutator_editing_a_worker_in_place_is_refused_by_name():
    """A Mutate gets copies of the assignments too: one edited in place and returned as
    it was would silently change nothing, so it is refused, and nothing is recorded."""

    class EditWorker(pop_mod.Mutate):
        def update(self, state, workers, cache):
            workers[1].meta_params["lr"] = 9.0
            return state, workers

    c = pop_mod.PopulationController([{"lr": 1.0}, {"lr": 2.0}], EditWorker())
    g = c.active_workers[1].generation_id
    with pytest.raises(ValueError, match="edited worker 1's meta_params in place"):
        c.set_eval(1, g, 1, None, 0.5)
    assert [w.meta_params for w in c.active_workers] == [{"lr": 1.0}, {"lr": 2.0}]
    assert c.history[g][0].meta_params == {"lr": 2.0}


def test_a_seed_mutator_returning_the_workers_it_was_given_changes_nothing():
    """The copies a Mutate gets compare as unchanged when returned as they are, whatever
    their meta_params hold (a NaN, which is not equal to itself; a pytree node without
    ``__eq__``)."""
    import math

    class Keep(pop_mod.Mutate):
        def update(self, state, workers, cache):
            for g in list(cache):
                cache[g].values()[-1]
            return state, workers

    c = pop_mod.PopulationController([{"lr": math.nan, "x": [1, 2]}, 0.5], Keep())
    for i, w in enumerate(c.active_workers):
        c.set_eval(i, w.generation_id, 3, None, 1.0)
    assert [w.step for w in c.active_workers] == [3, 3]


class _EveryEval(pop_mod.Mutate):
    """Seed style: at every update, every worker starts a new generation from its latest
    checkpoint (its ``ActiveWorker`` s are made with the default status)."""

    def update(self, state, workers, cache):
        new = []
        for w in workers:
            last = cache[w.generation_id].values()[-1]
            gen = pop_mod.make_gen_id()
            cache[gen] = pop_mod.IntKeyDict()
            cache[gen][last.step] = pop_mod.Checkpoint(
                generation_id=gen,
                params=last.params,
                meta_params=last.meta_params,
                parent=(last.generation_id, last.step),
                step=last.step,
                value=None,
                time=time.time(),
            )
            new.append(pop_mod.ActiveWorker(last.params, last.meta_params, gen, last.step))
        return state, new


def test_a_seed_mutator_does_not_make_a_finished_worker_active_again():
    """``finish`` runs the mutator; a seed ``Mutate`` returns ``ActiveWorker`` s with the
    default status "active", which undid the finish: the worker's next ask got work."""
    c = pop_mod.PopulationController([{"lr": 0.1}, {"lr": 0.2}], _EveryEval())
    a = c.maybe_get_worker_data(0, None, 0, None, None)
    b = c.maybe_get_worker_data(1, None, 0, None, None)
    c.finish(1)
    c.set_eval(0, a.generation_id, 10, "a10", 0.5)
    assert [w.status for w in c.active_workers] == ["active", "finished"]
    assert c.maybe_get_worker_data(1, b.generation_id, 0, None, None).status == "finished"
    c.set_eval(1, c.active_workers[1].generation_id, 12, "b12", 0.4)  # its own call
    assert c.active_workers[1].status == "active"


def test_a_seed_mutator_handing_a_worker_another_workers_generation_is_refused():
    """Two workers on one generation record their reports over each other's (a report
    at a step the other reported replaced it, silently: helper-215); the seed let a
    Mutate do it, jaxpop refuses it by name, and the controller stays as it was."""

    class TakeWorkerOnes(pop_mod.Mutate):
        def update(self, state, workers, cache):
            return state, [workers[1], workers[1]]

    c = pop_mod.PopulationController([{"lr": 0.1}, {"lr": 0.2}], TakeWorkerOnes())
    c.maybe_get_worker_data(0, None, 0, None, None)
    c.maybe_get_worker_data(1, None, 0, None, None)
    before = c.state
    with pytest.raises(ValueError, match=r"assigned workers 0 and 1 the same generation"):
        c.finish(1)
    assert c.state is before and [w.status for w in c.active_workers] == ["active", "active"]


def test_a_seed_mutator_that_edits_a_generations_hparams_in_place_is_refused():
    """In the seed, editing a checkpoint's meta_params in place edited the history too;
    jaxpop's copy is private, so the worker trained with lr 999 while the history said
    0.1. Such a result is refused: a new generation carries new hyperparameters."""

    class EditInPlace(pop_mod.Mutate):
        def update(self, state, workers, cache):
            last = cache[workers[0].generation_id].values()[-1]
            if last.value is None:
                return state, workers
            meta = last.meta_params
            meta["lr"] = 999.0
            return state, [pop_mod.ActiveWorker(last.params, meta, last.generation_id, last.step)]

    c = pop_mod.PopulationController([{"lr": 0.1}], EditInPlace())
    a = c.maybe_get_worker_data(0, None, 0, None, None)
    with pytest.raises(ValueError, match="hyperparameters never change"):
        c.set_eval(0, a.generation_id, 10, "p10", 1.0)
    assert c.active_workers[0].meta_params == {"lr": 0.1}  # unchanged: usable


def test_a_seed_mutate_fn_behind_a_plain_decorator_or_keeping_its_result_works():
    """A decorator's wrapper without functools.wraps (``*args``) was handed a PRNG key
    the seed's one-argument mutate_fn could not take: the round that ended the first
    interval raised, and so did every later one. A mutate_fn that kept the dict it
    returned and edited it later changed the history (not the journal: a reopened run
    differed). Both found by a hostile test."""
    from jaxpop import PopulationController

    def logged(fn):
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    kept = []

    @logged
    def mutate_fn(meta):  # the seed's form
        kept.append({"lr": meta["lr"] * 0.5})
        return kept[-1]

    pop = PopulationController([{"lr": 0.1}, {"lr": 0.2}], WinnerTakeAllGenetic(mutate_fn, 10))
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "a", 0.3)
    pop.set_eval(1, gens[1], 10, "b", 0.1)  # the round: both take lr 0.2 * 0.5
    assert [w.meta_params for w in pop.active_workers] == [{"lr": 0.1}] * 2
    for meta in kept:
        meta["lr"] = 999.0
    assert [w.meta_params for w in pop.active_workers] == [{"lr": 0.1}] * 2
    assert all(c.meta_params["lr"] != 999.0 for c in pop.history.checkpoints())

    @logged
    def keyed(meta, key):  # jaxpop's form, behind the same decorator: given its key
        return {"lr": meta["lr"] + float(np.asarray(key)[1] % 2)}

    pop = PopulationController([{"lr": 0.1}, {"lr": 0.2}], WinnerTakeAllGenetic(keyed, 10))
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(0, gens[0], 10, "a", 0.3)
    pop.set_eval(1, gens[1], 10, "b", 0.1)
    assert pop.decision_counts == (2, 1)  # (the round ran, with keys)
    # what PBT's explorer returns is copied in too (helper-127)
    from jaxpop.mutators import PopulationBasedTraining

    results = []

    def explorer(key, source, history, workers):
        results.append({"lr": source.meta_params["lr"] * 2, "note": types.SimpleNamespace()})
        return results[-1]

    pbt = PopulationBasedTraining(perturbation_interval=1, explorer=explorer)
    pop = PopulationController([{"lr": 0.1}, {"lr": 0.2}], pbt)
    gens = [w.generation_id for w in pop.active_workers]
    pop.set_eval(1, gens[1], 1, "b", 0.1)
    pop.set_eval(0, gens[0], 1, "a", 0.9)  # bottom: copies worker 1
    assert results and pop.active_workers[0].meta_params["lr"] == 0.4
    results[-1]["lr"], results[-1]["note"].x = 999.0, 1
    assert pop.active_workers[0].meta_params["lr"] == 0.4
    assert pop.active_workers[0].meta_params["note"] is results[-1]["note"]  # (objects:
    # their identity kept, as a choice between objects needs; helper-129)


def test_a_log_dir_holding_only_a_saved_state_starts_from_it(tmp_path):
    """A seed user copies the state file into a new log_dir, as with the seed's
    population.state: the seed's constructor loads it; jaxpop started a fresh run
    there, silently (helper-125)."""
    import shutil

    from jaxpop import PopulationController
    from jaxpop.seed import STATE_FILE

    m = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
    with PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, str(tmp_path / "a")) as pop:
        gens = [w.generation_id for w in pop.active_workers]
        pop.set_eval(0, gens[0], 10, "p0", 0.3)
        pop.set_eval(1, gens[1], 10, "p1", 0.1)  # a round
        pop.save_state()
        saved = pop.state
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / STATE_FILE, tmp_path / "b" / STATE_FILE)
    for _ in range(2):  # (made durable there at once: the second one resumes the journal)
        with PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, str(tmp_path / "b")) as pop:
            assert pop.state.workers == saved.workers and pop.history == saved.history
            assert pop.decision_counts == (2, 1)
    # a saved state of another run is refused, and nothing is written
    (tmp_path / "c").mkdir()
    shutil.copy(tmp_path / "a" / STATE_FILE, tmp_path / "c" / STATE_FILE)
    with pytest.raises(storage.RunMismatchError):
        PopulationController([{"lr": 0.1}] * 3, m, str(tmp_path / "c"))
    assert set(os.listdir(tmp_path / "c")) <= {STATE_FILE, "lock"}  # (no run written)
    with PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, str(tmp_path / "c")) as pop:
        assert pop.history == saved.history
    # a damaged one says so, and how to start afresh; a folder of its name is no file
    # (helper-127: a directory read as "Is a directory: 5")
    (tmp_path / "d" / STATE_FILE).mkdir(parents=True)
    with pytest.raises(OSError, match="is not a regular file"):
        PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, str(tmp_path / "d"))
    (tmp_path / "e").mkdir()
    data = (tmp_path / "a" / STATE_FILE).read_bytes()
    (tmp_path / "e" / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="remove or rename it to start a fresh run"):
        PopulationController([{"lr": 0.1}, {"lr": 0.2}], m, str(tmp_path / "e"))


class _KeepsItsDict(pop_mod.Mutate):
    """Halves one dict it keeps on itself, in place, and hands it to every copy it makes
    (helper-158: the history held the mutator's dict, so its next edit rewrote it)."""

    def __init__(self):
        self.meta = {"lr": 1.0}

    def update(self, state, current_workers, cache):
        workers = list(current_workers)
        for i, w in enumerate(workers):
            steps = cache[w.generation_id]
            last = steps.values()[-1]
            if last.value is not None and last.step - steps.keys()[0] >= 10:
                self.meta["lr"] *= 0.5
                params = np.full(2, last.step, np.float32)  # (an array it keeps too)
                self.params = params
                gen = pop_mod.make_gen_id()
                cache[gen] = pop_mod.IntKeyDict()
                ref = (w.generation_id, last.step)
                cache[gen][last.step] = pop_mod.Checkpoint(
                    params, self.meta, gen, None, ref, last.step, 0.0
                )
                workers[i] = pop_mod.ActiveWorker(params, self.meta, gen, last.step)
        return state, workers


class _AdoptsTheAsk(pop_mod.Mutate):
    """Starts a generation with the meta_params a worker sends in its ask."""

    def update(self, state, current_workers, cache):
        return state, current_workers

    def get_worker_data(self, active_workers, cache, worker_id, generation_id, step, params, meta):
        if meta is None or generation_id is None:
            return active_workers
        gen = pop_mod.make_gen_id()
        cache[gen] = pop_mod.IntKeyDict()
        cache[gen][step] = pop_mod.Checkpoint(params, meta, gen, None, None, step, 0.0)
        out = list(active_workers)
        out[worker_id] = pop_mod.ActiveWorker(params, meta, gen, step)
        return out


def test_what_a_seed_mutator_returns_is_the_controllers_own_copy(tmp_path):
    for log_dir in (None, tmp_path / "run"):
        mutate = _KeepsItsDict()
        c = pop_mod.PopulationController([{"lr": 1.0}], mutate, log_dir=log_dir, seed=0)
        c.set_eval(0, c.active_workers[0].generation_id, 10, "p10", 0.5)
        g1 = c.active_workers[0].generation_id
        c.set_eval(0, g1, 20, "p20", 0.4)  # the mutator halves its dict again
        assert mutate.meta == {"lr": 0.25}
        assert c.history[g1][10].meta_params == {"lr": 0.5}
        mutate.params[:] = -1.0  # and edits the array it handed out
        np.testing.assert_array_equal(c.history[g1][10].params, [10.0, 10.0])
        # a new generation's start and its worker share the one copy made
        g2 = c.active_workers[0].generation_id
        assert c.active_workers[0].params is c.history[g2][20].params
        c.close()
    reopened = pop_mod.PopulationController([{"lr": 1.0}], _KeepsItsDict(), log_dir=log_dir)
    assert reopened.history[g1][10].meta_params == {"lr": 0.5}
    reopened.close()

    c = pop_mod.PopulationController([{"lr": 1.0}], _AdoptsTheAsk(), seed=0)
    first = c.maybe_get_worker_data(0, None, 0, None, None)
    mine = {"lr": 0.3}
    reply = c.maybe_get_worker_data(0, first.generation_id, 0, None, mine)
    mine["lr"] = 999.0  # the worker edits its own dict after the call
    assert c.history[reply.generation_id][0].meta_params == {"lr": 0.3}
    assert c.active_workers[0].meta_params == {"lr": 0.3}


class _ExploitsTheBest(pop_mod.Mutate):
    """Moves worker 1 onto worker 0's step-10 checkpoint (worker 0 is past it), read
    from the cache, as a new generation whose start names no parent."""

    def update(self, state, current_workers, cache):
        w0, w1 = current_workers
        if w1.step < 10 or w0.step < 20:  # (an older checkpoint than worker 0's own)
            return state, current_workers
        best = cache[w0.generation_id][10]
        gen = pop_mod.make_gen_id()
        cache[gen] = pop_mod.IntKeyDict()
        cache[gen][10] = pop_mod.Checkpoint(best.params, {"lr": 0.5}, gen, None, None, 10, 0.0)
        return state, [w0, pop_mod.ActiveWorker(best.params, {"lr": 0.5}, gen, 10)]


def test_params_a_seed_mutator_passes_on_from_the_cache_are_not_copied_again():
    """Stored params handed out by the cache are the controller's already: the first
    copying fix copied them again unless a parent named them (100 MB params took 277 ms
    instead of 20 per exploit; helper-160)."""
    c = pop_mod.PopulationController([{"lr": 0.1}, {"lr": 0.2}], _ExploitsTheBest(), seed=0)
    g0, g1 = (w.generation_id for w in c.active_workers)
    c.set_eval(0, g0, 10, {"w": np.ones(3)}, 0.1)
    c.set_eval(0, g0, 20, {"w": np.full(3, 2.0)}, 0.2)
    c.set_eval(1, g1, 10, {"w": np.zeros(3)}, 0.9)
    stored = c.history[g0][10].params
    assert c.active_workers[1].params is stored
    assert c.history[c.active_workers[1].generation_id][10].params is stored


def test_a_saved_state_of_another_run_is_said_to_be_one():
    """load_state's mismatch blamed "the log_dir" (there is none) and advised another
    one (helper-186)."""

    def controller(n):
        return pop_mod.PopulationController([1.0] * n, CopyBest(2), seed=0)

    with pytest.raises(storage.RunMismatchError) as info:
        controller(2).load_state(controller(3).serialized_state())
    message = str(info.value)
    assert "population size: 3 in the saved state, 2 now" in message
    assert "log_dir" not in message and "load a state this run saved" in message


def test_a_log_dir_holding_only_another_runs_saved_state_says_what_to_do(tmp_path):
    """A controller made on a log_dir holding only a saved state of another run was told
    to load another state (helper-187): it can remove or rename the file."""
    saved = pop_mod.PopulationController([1.0] * 3, CopyBest(2), seed=0).serialized_state()
    (tmp_path / "population.jpstate").write_bytes(saved)
    with pytest.raises(storage.RunMismatchError) as info:
        pop_mod.PopulationController([1.0] * 2, CopyBest(2), str(tmp_path))
    message = str(info.value)
    assert "population size: 3 in the saved state, 2 now" in message
    assert "remove or rename" in message and "load a state" not in message
