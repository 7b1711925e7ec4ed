"""Every renamed public name still works, and says what it is called now (issue 18's one
vocabulary: docs/glossary.md)."""

import importlib
import sys
import warnings

import numpy as np
import pytest

from jaxpop import PopulationController, core
from jaxpop.events import Eval
from jaxpop.mutators import (
    PB2,
    Mutator,
    PopulationBasedTraining,
    WinnerTakeAllGenetic,
    explore,
    selection,
)
from jaxpop.storage.run import RunMismatchError

SPACE = {"lr": explore.log_uniform(1e-4, 1.0)}


def _noop_update(state, workers, history, now, key):
    return state, workers, ()


def _one_warning(caught, *words, at_caller=True):
    found = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(found) == 1, [str(w.message) for w in found]
    for word in words:
        assert word in str(found[0].message)
    if at_caller:  # it names the line that used the old name (else filters hide it)
        assert found[0].filename == __file__, found[0].filename


def test_controller_report_is_set_eval_and_ask_and_warns():
    make = lambda: PopulationController(  # noqa: E731
        [{"lr": 1.0}, {"lr": 2.0}], WinnerTakeAllGenetic(lambda m: m, steps_per_exploit=1)
    )
    old, new = make(), make()
    for pop in (old, new):
        for i in range(2):
            pop.maybe_get_worker_data(i, None, None, None, None)
    replies = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, value in enumerate((3.0, 1.0)):
            gen = old.active_workers[i].generation_id
            replies.append(old.report(i, gen, 1, None, value))
    assert sum(issubclass(w.category, DeprecationWarning) for w in caught) == 2
    assert "set_eval_and_ask" in str(caught[0].message)
    for i, value in enumerate((3.0, 1.0)):
        gen = new.active_workers[i].generation_id
        reply = new.set_eval_and_ask(i, gen, 1, None, value)
        assert (reply is None) == (replies[i] is None)
    assert old.decision_counts == new.decision_counts
    assert [w.meta_params for w in old.active_workers] == [
        w.meta_params for w in new.active_workers
    ]


def test_core_report_is_core_set_eval_and_warns():
    mutator = Mutator(lambda: 0, _noop_update)
    state = core.init([{"a": 1}], mutator, key=np.zeros(2, np.uint32), now=0.0)
    event = Eval(None, 0, state.workers[0].generation_id, 1, 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old, _ = core.report(state, event, 1.0, core.event_key(state), mutator=mutator)
    _one_warning(caught, "core.set_eval")
    new, _ = core.set_eval(state, event, 1.0, core.event_key(state), mutator=mutator)
    assert old.history.latest_evaluated(event.generation_id).value == 0.5
    assert new.history.latest_evaluated(event.generation_id).value == 0.5


def test_the_mutator_ask_hook_keeps_its_old_name_with_a_warning():
    def hook(state, workers, history, ask, now, key):
        return state, workers, ()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mutator = Mutator(lambda: 0, _noop_update, get_worker_data=hook)
    _one_warning(caught, "ask=")
    assert mutator.ask is hook
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mutator.get_worker_data is hook
    _one_warning(caught, "Mutator.ask")
    with pytest.raises(TypeError, match="twice"), pytest.warns(DeprecationWarning):
        Mutator(lambda: 0, _noop_update, ask=hook, get_worker_data=hook)
    # a run recorded before the rename describes the hook by its old name, and resumes
    assert "get_worker_data" in Mutator(lambda: 0, _noop_update, hook).describe()["config"]


def test_selection_winner_take_all_is_copy_best_and_warns():
    scores = np.array([0.4, 0.1, 0.7, 0.1])
    key = np.zeros(2, np.uint32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = selection.winner_take_all(key, scores)
        old_host = selection.winner_take_all_host(None, scores)
    assert sum(issubclass(w.category, DeprecationWarning) for w in caught) == 2
    assert "copy_best" in str(caught[0].message)
    np.testing.assert_array_equal(old, selection.copy_best(key, scores))
    np.testing.assert_array_equal(old_host, selection.copy_best_host(None, scores))
    assert old.tolist() == [1, 1, 1, 3]


def test_pbt_selection_winner_take_all_is_copy_best_and_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PopulationBasedTraining(
            perturbation_interval=1, hyperparam_space=SPACE, selection="winner_take_all"
        )
    _one_warning(caught, '"copy_best"')
    with warnings.catch_warnings(record=True) as caught:  # through PB2: at this line too
        warnings.simplefilter("always")
        PB2(perturbation_interval=1, hyperparam_space=SPACE, selection="winner_take_all")
    _one_warning(caught, '"copy_best"')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PopulationBasedTraining(
            perturbation_interval=1, hyperparam_space=SPACE, selection="copy_best"
        )


def test_a_run_started_with_an_old_option_value_resumes_with_the_new_one(tmp_path):
    def make(selection):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            mutator = PopulationBasedTraining(
                perturbation_interval=1, hyperparam_space=SPACE, selection=selection
            )
        return PopulationController([{"lr": 0.1}, {"lr": 0.2}], mutator, log_dir=str(tmp_path))

    for old, new in (("winner_take_all", "copy_best"), ("copy_best", "winner_take_all")):
        pop = make(old)
        pop.maybe_get_worker_data(0, None, None, None, None)
        pop.close()
        make(new).close()  # no RunMismatchError
    with pytest.raises(RunMismatchError, match="selection"):
        make("tournament")


@pytest.mark.parametrize(("old", "new"), [("jaxpop.schedules.core", "jaxpop.schedules.base")])
def test_moved_modules_still_import_and_say_where_they_went(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    # an import's warning points into importlib's frames, whatever the stacklevel
    _one_warning(caught, new.rsplit(".", 1)[0], at_caller=False)
    target = importlib.import_module(new)
    for name in module.__all__:
        assert getattr(module, name) is getattr(target, name)


# -- mutator states: records now, dicts before --------------------------------------------
def _drive(state, mutator, steps):
    from conftest import apply

    for step in steps:
        for i, worker in enumerate(state.workers):
            value = float((i * 7 + step) % 5)
            event = Eval(f"p{i}@{step}", i, worker.generation_id, step, value)
            state, _ = apply(state, event, float(step), mutator)
    return state


@pytest.mark.parametrize(
    "make",
    [
        lambda: PopulationBasedTraining(perturbation_interval=2, hyperparam_space=SPACE),
        lambda: WinnerTakeAllGenetic(lambda m, key: m, steps_per_exploit=2),
    ],
    ids=["pbt", "wta"],
)
def test_a_run_recorded_with_a_dict_state_goes_on_as_with_the_record(make):
    from conftest import fresh_state

    mutator = make()
    state = _drive(fresh_state([{"lr": 0.01 * (i + 1)} for i in range(4)], mutator), mutator, [2])
    record = state.mutator_state
    assert type(record).__name__.endswith("State") and hasattr(record, "_asdict")
    as_dict = {k: (dict(v) if isinstance(v, dict) else v) for k, v in record._asdict().items()}
    old = state.replace(mutator_state=as_dict)
    new_from_record = _drive(state, mutator, [4, 6])
    new_from_dict = _drive(old, mutator, [4, 6])
    assert new_from_dict.mutator_state == new_from_record.mutator_state
    assert [w.generation_id for w in new_from_dict.workers] == [
        w.generation_id for w in new_from_record.workers
    ]
    assert mutator.counts(as_dict) == mutator.counts(record)


def test_mutator_state_records_round_trip_through_the_encoding_and_warn_on_str_keys():
    from jaxpop import encoding
    from jaxpop.mutators import BranchingState, PBTState, WinnerTakeAllState

    for record in (
        PBTState(3, 1, {0: ("g", 10), 2: ("h", 4.5)}, None),
        WinnerTakeAllState(2, 6, 4),
        BranchingState("pos", 1, 10, ("g", 10), ("g", 12), None),
    ):
        back = encoding.decode(encoding.encode(record))
        assert type(back) is type(record) and back == record
        field = record._fields[1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert record[field] == getattr(record, field)
        _one_warning(caught, f"state.{field}")
        assert record[1] == getattr(record, field)  # still a tuple
        # the rest of what code written for the dict did: each warns, at the caller
        for read, expected in (
            (lambda r, f=field: r.get(f), getattr(record, field)),
            (lambda r: r.get("not_a_field", 7), 7),
            (lambda r, f=field: f in r, True),
            (lambda r: "not_a_field" in r, False),
            (lambda r: dict(r), record._asdict()),
            (lambda r: {**r}, record._asdict()),
        ):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert read(record) == expected
            # dict(state) warns for keys() and for each key it then reads
            assert caught and all(issubclass(w.category, DeprecationWarning) for w in caught)
            assert {w.filename for w in caught} == {__file__}
        with pytest.raises(KeyError), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            record["not_a_field"]
        assert getattr(record, field) in record  # a value's membership is the tuple's
