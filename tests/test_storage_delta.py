"""Mutator states journaled as changes (jaxpop.storage.delta, storage version 4): exact
rebuilds through the encoding, refusals of what does not fit, journals that do not grow
with the population, and a damaged change named by the file it is in."""

import math
import os
import random
from typing import NamedTuple

import numpy as np
import pytest

from conftest import FakeClock
from jaxpop import PopulationController, encoding, storage
from jaxpop.core import Changes
from jaxpop.mutators import FirePBT, PopulationBasedTraining, WinnerTakeAllGenetic, explore
from jaxpop.mutators.fire import Evaluation, FireState
from jaxpop.mutators.pbt import PBTState
from jaxpop.storage import frames
from jaxpop.storage.delta import StateDelta, applied, delta

SPACE = {"lr": explore.log_uniform(1e-4, 1.0)}


def _changed(rng: random.Random, state):
    """A random next state, built as the mutators build theirs: a changed dict is a copy
    (entries added, changed to new objects or to (), None or a record, removed, or
    deleted and added again, which moves them to the end), an unchanged one the same
    object; counters move on."""
    values = []
    for value in state:
        if type(value) is dict and rng.random() < 0.6:
            new = dict(value)
            for _ in range(rng.randrange(4)):
                key = rng.randrange(12)
                roll = rng.random()
                if roll < 0.2 and key in new:
                    del new[key]
                elif roll < 0.3 and key in new:  # deleted and added again: now last
                    value_again = new.pop(key)
                    new[key] = value_again if rng.random() < 0.5 else (f"h{key}", 1)
                elif roll < 0.35:
                    new[key] = ()  # (an empty tuple: the same object as any other)
                elif roll < 0.45:
                    new[key] = Evaluation(key, "m", 1, "c", "g", key, key)
                else:
                    new[key] = (f"g{rng.randrange(99)}", rng.randrange(50))
            value = new
        elif type(value) is dict and rng.random() < 0.1:
            value = {}  # replaced whole
        elif type(value) is int and rng.random() < 0.5:
            value += rng.randrange(1, 3)
        values.append(value)
    return type(state)(*values)


@pytest.mark.parametrize("start", [PBTState(), FireState({}, {}, {}, {}, {})])
def test_a_state_rebuilt_from_its_change_is_the_state(start):
    rng = random.Random(0)
    before, checked = start, 0
    for _ in range(400):
        after = _changed(rng, before)
        written = encoding.decode(encoding.encode(delta(before, after)))
        assert type(written) is StateDelta
        rebuilt = applied(before, written)
        assert type(rebuilt) is type(after) and rebuilt == after
        for old, new in zip(rebuilt, after, strict=True):
            assert type(old) is type(new)
            if type(new) is dict:
                assert list(old) == list(new)  # the same order: the same encoding
        assert encoding.encode(rebuilt) == encoding.encode(after)
        checked += rebuilt != before
        before = after  # (the writer's next base: what it journaled)
    assert checked > 300
    # the same state again: every field the same
    assert delta(before, before).fields == ((),) * len(before)


class _Point(NamedTuple):
    x: float


encoding.register_record(_Point, "tests.delta.Point")


@pytest.mark.parametrize("change", ["remove", "change", "tuple", "record"])
def test_a_dict_changed_at_a_key_not_equal_to_itself_is_written_whole(change):
    """A NaN key is found again only as the same object, which decoding never gives: a
    change removing one could not be replayed (the log_dir did not reopen), one
    changing its value replayed to a dict holding both (hostile review, helper-279; a
    record holding NaN, helper-280)."""
    before = PBTState(1, 0, {math.nan: 1, 0: 2, (1, math.nan): 3, _Point(math.nan): 4})
    nan, pair, point = (k for k in before.last_decision if k != 0)  # (the state's own)
    new = dict(before.last_decision)
    if change == "remove":
        del new[nan]
    elif change == "change":
        new[nan] = 5
    else:
        new[pair if change == "tuple" else point] = 5
    after = before._replace(last_decision=new)
    written = encoding.decode(encoding.encode(delta(before, after)))
    rebuilt = applied(encoding.decode(encoding.encode(before)), written)  # (as replayed)
    assert encoding.encode(rebuilt) == encoding.encode(after)
    assert len(rebuilt.last_decision) == len(after.last_decision)
    # a change at other keys of such a dict is still written as a change
    other = before._replace(last_decision={**before.last_decision, 7: 1})
    assert len(delta(before, other).fields[2]) == 2  # (changed, removed)


def test_only_jaxpops_own_states_are_written_as_changes():
    """A user's state may change in place, which a change found by identity would
    miss: it (and anything else but jaxpop's listed states) is written whole."""
    from jaxpop.mutators.winner_take_all_genetic import WinnerTakeAllState

    before = WinnerTakeAllState(1, 2, 3)
    assert delta(before, before._replace(num_exploits=2)) == WinnerTakeAllState(2, 2, 3)
    assert delta({"a": 1}, {"a": 2}) == {"a": 2}
    assert delta(PBTState(), None) is None and delta(None, PBTState()) == PBTState()
    fire = FireState({}, {}, {}, {}, {})
    assert delta(PBTState(), fire) is fire  # another type: whole


def test_a_change_that_does_not_fit_the_state_it_follows_is_refused():
    pbt = PBTState(1, 0, {0: ("g", 3)}, None)
    with pytest.raises(ValueError, match="cannot follow a WinnerTakeAllState"):
        from jaxpop.mutators.winner_take_all_genetic import WinnerTakeAllState

        applied(WinnerTakeAllState(), StateDelta(((),)))
    with pytest.raises(ValueError, match="1 fields cannot follow a PBTState of 5"):
        applied(pbt, StateDelta(((),)))
    with pytest.raises(ValueError, match="6 fields cannot follow a PBTState of 5"):
        applied(pbt, StateDelta(((),) * 6))
    with pytest.raises(ValueError, match="unknown number"):
        applied(pbt, StateDelta(None))
    with pytest.raises(ValueError, match="removes the key 5"):
        applied(pbt, StateDelta(((), (), ({}, (5,)), ())))
    with pytest.raises(ValueError, match=r"PBTState\.num_decisions: a dict's change \("):
        applied(pbt, StateDelta((({}, ()), (), (), ())))
    with pytest.raises(ValueError, match=r"PBTState\.start_time: a field's change is"):
        applied(pbt, StateDelta(((), (), (), (1, 2, 3))))
    with pytest.raises(ValueError, match="a field's change is"):
        applied(pbt, StateDelta(((), (), (), [1])))
    assert applied(pbt, StateDelta(((), (), ({1: ("h", 4)}, (0,)), ()))) == PBTState(
        1, 0, {1: ("h", 4)}, None
    )


def test_a_change_journaled_before_a_field_was_added_keeps_its_default():
    # PBTState.missed came after PBT states were journaled as changes of their 4 fields
    before = PBTState(2, 1, {0: ("g", 3)}, None, missed=(1,))
    assert applied(before, StateDelta(((3,), (), (), ()))) == before._replace(num_decisions=3)
    assert applied(before, StateDelta(((), (), (), (), ((),)))) == before._replace(missed=())


def _encoded(state):
    return encoding.encode(storage.state_to_plain(state))


def _run(log_dir, mutator, n, rounds=3, **kw):
    pop = PopulationController(
        [{"lr": 1e-3 * (1 + i % 7)} for i in range(n)], mutator, log_dir, **kw
    )
    rng = np.random.default_rng(0)
    for step in range(1, rounds + 1):
        for i in range(n):
            w = pop.active_workers[i]
            pop.maybe_get_worker_data(i, w.generation_id, w.step, None, None)
            pop.set_eval(i, w.generation_id, step, None, float(rng.uniform()))
    return pop


def _records(log_dir):
    """The decoded records of every journal segment, in order."""
    out = []
    for name in sorted(os.listdir(log_dir)):
        if name.startswith("journal-"):
            good, _ = frames.read_frames(os.path.join(log_dir, name), newest=True)
            # (the first frame of a segment is its header)
            out += [encoding.decode(f.payload) for f in good[1:]]
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda n: PopulationBasedTraining(perturbation_interval=1, hyperparam_space=SPACE),
        lambda n: FirePBT(
            perturbation_interval=1,
            sub_population_sizes=(3 * n // 8, 3 * n // 8),
            num_evaluators=n // 4,
            max_eval_steps=3,
            hyperparam_space=SPACE,
        ),
    ],
    ids=["pbt", "fire"],
)
def test_journal_bytes_per_decision_do_not_grow_with_the_population(tmp_path, make):
    """Journaled whole, PBT's and FIRE's states grow with the population, and so did
    every journal record of a decision (and its time to encode): 6 KB per event at 256
    workers. As changes, a decision's record is as large at 96 workers as at 8."""
    per_event = {}
    for n in (8, 96):
        log_dir = tmp_path / str(n)
        pop = _run(log_dir, make(n), n, compact_after=10**9)
        state = pop.state
        pop.close()
        records = _records(log_dir)
        assert records and all(type(r) is Changes for r in records)
        assert any(type(r.mutator_state) is StateDelta for r in records)
        journal = sum(
            os.path.getsize(log_dir / name)
            for name in os.listdir(log_dir)
            if name.startswith("journal-")
        )
        per_event[n] = journal / state.num_events
        restored = PopulationController(
            [{"lr": 1e-3 * (1 + i % 7)} for i in range(n)], make(n), log_dir
        )
        assert restored.state.mutator_state == state.mutator_state
        assert restored.state.workers == state.workers
        restored.close()
    assert per_event[96] < 1.3 * per_event[8], per_event


@pytest.mark.parametrize("sizes", [(3, 3), (3, 2, 2)])
@pytest.mark.parametrize("reopen_every", [1, 3, 11])
def test_a_fire_run_reopened_anywhere_restores_the_state_it_acknowledged(
    tmp_path, reopen_every, sizes
):
    """FIRE on learning curves (evaluations start, continue and end: its dicts gain,
    change and lose entries), journaled as changes, compacted every 5 records and
    reopened every few events, ends in the state of the same run kept in memory, to the
    byte (an evaluation that ends and the one its evaluator takes next, in one update,
    delete a key and add it again: the rebuilt dict keeps the live one's order)."""

    def make():
        return FirePBT(
            perturbation_interval=1,
            sub_population_sizes=sizes,
            num_evaluators=2,
            max_eval_steps=2,
            hyperparam_space=SPACE,
        )

    def controller(log_dir, clock):
        lrs = [1e-4 * 10 ** (4 * i / (n - 1)) for i in range(n)]
        kw = {} if log_dir is None else {"compact_after": 5}
        return PopulationController(
            [{"lr": lr} for lr in lrs], make(), log_dir, 0, clock=clock, **kw
        )

    n = sum(sizes) + 2

    def event(pop, t, rng):
        i = t % n
        w = pop.active_workers[i]
        pop.maybe_get_worker_data(i, w.generation_id, w.step, None, None)
        value = abs(np.log10(w.meta_params["lr"]) + 2) + 1 / (w.step + 1) + 0.05 * rng.normal()
        pop.set_eval(i, w.generation_id, w.step + 1, {"w": t}, float(value))

    clock, reference = FakeClock(), None
    reference = controller(None, clock)
    rng = np.random.default_rng(1)
    for t in range(160):
        clock.advance(1.0)
        event(reference, t, rng)
    clock, rng = FakeClock(), np.random.default_rng(1)
    pop = controller(tmp_path, clock)
    for t in range(160):
        if t % reopen_every == 0:
            pop.close()
            pop = controller(tmp_path, clock)
        clock.advance(1.0)
        event(pop, t, rng)
    pop.close()
    restored = controller(tmp_path, clock)
    assert reference.state.mutator_state.num_evaluations > 3
    assert any(type(r.mutator_state) is StateDelta for r in _records(tmp_path)) or (
        reopen_every == 1  # (each segment then holds one record, from its own snapshot)
    )
    assert _encoded(restored.state) == _encoded(reference.state)  # (dict order too)
    restored.close()


@pytest.mark.parametrize("make", ["pbt", "fire"])
def test_a_loaded_state_is_the_base_of_the_records_after_it(tmp_path, make):
    """``load_state`` installs a saved state (a snapshot and a new segment): the records
    after it are changes from the loaded state, not from the one before it, so the run
    reopened later is the run as it went on from the loaded state (a record written from
    the stale state would leave a counter equal by identity to the stale one's, a small
    int, at the loaded value, or remove a key the loaded state does not hold)."""

    def mutator():
        if make == "pbt":
            return PopulationBasedTraining(perturbation_interval=1, hyperparam_space=SPACE)
        return FirePBT(
            perturbation_interval=1,
            sub_population_sizes=(3, 3),
            num_evaluators=2,
            max_eval_steps=2,
            hyperparam_space=SPACE,
        )

    n = 8
    lrs = [{"lr": 1e-4 * 10 ** (4 * i / (n - 1))} for i in range(n)]
    for seed in range(6):
        log_dir = tmp_path / str(seed)
        clock, rng = FakeClock(), np.random.default_rng(seed)
        pop = PopulationController(lrs, mutator(), log_dir, clock=clock)

        def run(events, start, pop=pop, clock=clock, rng=rng):
            for t in range(start, start + events):
                clock.advance(1.0)
                i = t % n
                w = pop.active_workers[i]
                pop.maybe_get_worker_data(i, w.generation_id, w.step, None, None)
                value = float(rng.uniform())
                pop.set_eval(i, w.generation_id, w.step + 1, {"w": t}, value)

        run(10 + seed, 0)
        saved = pop.serialized_state()
        run(3, 20)
        assert pop.load_state(saved)
        run(1 + seed % 3, 30)
        live = _encoded(pop.state)
        pop.close()
        reopened = PopulationController(lrs, mutator(), log_dir, clock=clock)
        assert _encoded(reopened.state) == live, seed
        reopened.close()


def test_a_user_state_is_journaled_whole(tmp_path):
    pop = _run(tmp_path, WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=1), 4)
    pop.close()
    assert not any(type(r.mutator_state) is StateDelta for r in _records(tmp_path))


def test_a_change_that_does_not_fit_is_a_corrupt_log_naming_the_record(tmp_path):
    pop = _run(
        tmp_path, PopulationBasedTraining(perturbation_interval=1, hyperparam_space=SPACE), 4
    )
    state = pop.state
    pop.close()
    journal = sorted(n for n in os.listdir(tmp_path) if n.startswith("journal-"))[-1]
    path = os.path.join(tmp_path, journal)
    offset = os.path.getsize(path)
    bad = Changes((), (), StateDelta(((),)), state.num_events + 1, 0.0)
    with open(path, "ab") as f:
        f.write(frames.frame(encoding.encode(bad)))
    with pytest.raises(storage.CorruptLogError, match=rf"{journal}.*offset {offset}.*1 fields"):
        PopulationController(
            [{"lr": 1e-3}] * 4,
            PopulationBasedTraining(perturbation_interval=1, hyperparam_space=SPACE),
            tmp_path,
        )
