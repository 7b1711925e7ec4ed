"""The direction of "better" (``mode``) is recorded with the run and honoured everywhere."""

from __future__ import annotations

import glob
import math
import os
import struct

import numpy as np
import pytest

from jaxpop import PopulationController, encoding, report, schedules, storage
from jaxpop.checkpointing import ParamStore, retained_handles
from jaxpop.history import History
from jaxpop.mutators import PopulationBasedTraining, WinnerTakeAllGenetic
from jaxpop.mutators import explore as ex
from jaxpop.mutators.base import Mutator
from jaxpop.storage import frames

# Worker i reports these values at steps 1 and 2; with "max", worker 2 is best.
_VALUES = {0: (1.0, 2.0), 1: (3.0, math.nan), 2: (5.0, 9.0)}


def _pbt(mode: str = "max") -> PopulationBasedTraining:
    # an interval past the run: no exploit moves anyone, so the ranking alone is tested
    return PopulationBasedTraining(
        perturbation_interval=1000, hyperparam_space={"h": ex.uniform(0.0, 10.0)}, mode=mode
    )


def _run(mode: str = "max", log_dir: str | None = None, store: ParamStore | None = None):
    pop = PopulationController([{"h": float(i)} for i in range(3)], _pbt(mode), log_dir)
    for i, values in _VALUES.items():
        gen = pop.maybe_get_worker_data(i, None, 0, None, None).generation_id
        for step, value in enumerate(values, start=1):
            params = f"w{i}s{step}"
            if store is not None:
                params = store.save(gen, step, {"w": np.full(2, value)})
            pop.set_eval(i, gen, step, params, value)
    return pop


def test_the_history_ranks_values_by_its_mode():
    assert History().rank(2.0) < History().rank(3.0)
    assert History(mode="max").rank(3.0) < History(mode="max").rank(2.0)
    for mode in ("min", "max"):
        for worst in (None, math.nan, math.inf, -math.inf):
            assert History(mode=mode).rank(worst) == math.inf
    with pytest.raises(ValueError, match=r'"min".*"max"'):
        History(mode="maximize")
    # a str subclass (np.str_, read from a config array) is the plain str
    assert type(History(mode=np.str_("max")).mode) is str


def test_the_controller_records_its_mutators_mode():
    assert _run("max").history.mode == "max"
    assert _run("min").history.mode == "min"
    assert PopulationController([{}], WinnerTakeAllGenetic(abs, 10)).history.mode == "min"
    with pytest.raises(ValueError, match="mode"):
        PopulationController([{}], Mutator(lambda: (), lambda *a: (*a[:2], ()), mode="up"))


def test_best_final_and_replay_take_the_highest_in_a_max_run():
    pop = _run("max")
    best = schedules.best_final(pop.history)
    assert best.value == 9.0  # not 2.0, the lowest (NaN never wins either way)
    assert schedules.from_lineage(pop.history)(0) == {"h": 2.0}
    assert schedules.best_final(_run("min").history).value == 2.0


def test_gc_keep_best_keeps_the_highest_in_a_max_run():
    pop = _run("max")
    state = pop.state._with(workers=())  # no live worker: only keep_best retains
    assert retained_handles(state, keep_best=2) == {"w2s2", "w2s1"}
    assert retained_handles(_run("min").state._with(workers=()), keep_best=1) == {"w0s1"}


def test_gc_does_not_delete_the_best_checkpoint_of_a_max_run(tmp_path):
    with ParamStore(str(tmp_path / "store"), async_save=False) as store:
        pop = _run("max", store=store)
        best = pop.history[pop.active_workers[2].generation_id][2].params
        store.collect_garbage(pop.state._with(workers=()), keep_best=1)
        assert store.handles() == [best]


def test_the_report_names_the_highest_member_of_a_max_run(tmp_path):
    pop = _run("max", str(tmp_path / "run"))
    pop.close()
    built = report.load(str(tmp_path / "run"))
    assert built.state.history.mode == "max"
    assert built.best.worker == 2 and built.best.value == 9.0
    assert report.summary(built)["mode"] == "max"


def test_the_mode_survives_a_restart_and_a_mutator_of_another_mode_is_refused(tmp_path):
    log_dir = str(tmp_path / "run")
    _run("max", log_dir).close()
    assert storage.read_state(log_dir).history.mode == "max"
    with PopulationController([{"h": 0.0}] * 3, _pbt("max"), log_dir) as pop:
        assert pop.history.mode == "max"
    with pytest.raises(storage.RunMismatchError, match="mode"):
        PopulationController([{"h": 0.0}] * 3, _pbt("min"), log_dir)
    with PopulationController([{"h": 0.0}] * 3, _pbt("min"), log_dir, reconfigure=True) as pop:
        assert pop.history.mode == "min"
    assert storage.read_state(log_dir).history.mode == "min"


def test_a_mode_read_from_a_numpy_array_is_taken_and_journaled(tmp_path):
    # np.str_("max") was refused; taken raw it would not journal (numpy.str_)
    from jaxpop.mutators import FirePBT, MultipleFrequenciesPBT, PopulationBasedTraining
    from jaxpop.mutators import explore as ex

    space = {"lr": ex.uniform(0.1, 0.5)}
    made = (
        (
            PopulationBasedTraining(
                perturbation_interval=1, hyperparam_space=space, mode=np.str_("max")
            ),
            4,
        ),
        (
            FirePBT(
                perturbation_interval=1,
                sub_population_sizes=(2, 2),
                num_evaluators=1,
                max_eval_steps=3,
                hyperparam_space=space,
                mode=np.str_("max"),
            ),
            5,
        ),
        (
            MultipleFrequenciesPBT(
                t_ready=1, hyperparam_space=space, frequencies=(1, 2), mode=np.str_("max")
            ),
            8,
        ),
    )
    from jaxpop.mutators import Mutator

    custom = Mutator(lambda: None, lambda s, w, h, now, key: (s, w, ()), mode=np.str_("max"))
    made = (*made, (custom, 2))  # a mutator of one's own keeps its mode as given: journaled
    for i, (mutator, n) in enumerate(made):
        assert mutator.mode == "max"
        pop = PopulationController([{"lr": 0.2}] * n, mutator, log_dir=tmp_path / str(i))
        assert pop.history.mode == "max"
        pop.close()


def test_a_custom_mutator_describes_its_mode():
    noop = Mutator(lambda: (), lambda s, w, h, now, key: (s, w, ()))
    assert "mode" not in noop.describe()["config"]
    assert noop._replace(mode="max").describe()["config"]["mode"] == "max"


def test_a_version_2_log_dir_of_a_max_run_reads_as_max(tmp_path):
    log_dir = str(tmp_path / "run")
    _run("max", log_dir).close()
    for path in glob.glob(os.path.join(log_dir, "*.jpsnap")):  # as version 2 wrote it
        data = open(path, "rb").read()
        parts, offset = [], 0
        while offset < len(data):
            length = struct.unpack_from("<I", data, offset)[0]
            parts.append(encoding.decode(data[offset + 8 : offset + 8 + length]))
            offset += 8 + length
        header, state = parts
        header["storage_version"] = 2
        del state["mode"]
        rewritten = frames.frame(encoding.encode(header)) + frames.frame(encoding.encode(state))
        open(path, "wb").write(rewritten)
    assert storage.read_state(log_dir).history.mode == "max"  # from the recorded PBT config


def test_histories_of_different_modes_are_not_equal():
    assert History() == History() and History(mode="max") == History(mode="max")
    assert History(mode="max") != History()


def test_a_run_recorded_before_an_option_existed_resumes_with_its_default():
    from jaxpop.storage.run import differences

    new = _pbt("min").describe()
    old = {"kind": new["kind"], "config": dict(new["config"])}
    for added in ("allow_rewind", "hold", "explorer"):  # options this version added
        del old["config"][added]
    run = {"population_size": 3, "mutator": new}
    assert differences({"population_size": 3, "mutator": old}, run) == []
    changed = _pbt("min")._replace(config={**_pbt("min").config, "allow_rewind": True})
    lines = differences(
        {"population_size": 3, "mutator": old},
        {"population_size": 3, "mutator": changed.describe()},
    )
    assert lines and "allow_rewind" in lines[0]  # set away from its default: a difference
    wta = WinnerTakeAllGenetic(abs, 10).describe()
    before = {
        "kind": wta["kind"],
        "config": {k: v for k, v in wta["config"].items() if k != "keep_winner"},
    }
    assert (
        differences(
            {"population_size": 2, "mutator": before}, {"population_size": 2, "mutator": wta}
        )
        == []
    )


def test_winner_take_all_and_branching_decide_by_their_mode():
    """Both took the lowest value whatever their mode (set by _replace, the history
    recorded "max"): the report, the GC and the rounds disagreed on which is best."""
    from jaxpop.mutators import BranchingSingleMachine

    for mode, winner in (("max", 2), ("min", 0)):
        wta = WinnerTakeAllGenetic(lambda m: m, 1, mode=mode)
        assert wta.mode == mode and wta.describe()["config"]["mode"] == mode
        pop = PopulationController([{"h": float(i)} for i in range(3)], wta)
        gens = [w.generation_id for w in pop.active_workers]
        for i in range(3):
            pop.set_eval(i, gens[i], 1, f"p{i}", float(i))
        assert {pop.history.first(w.generation_id).parent for w in pop.active_workers} == {
            (gens[winner], 1)
        }

    def branch(meta, direction, phase):
        return {"h": meta["h"] + (1.0 if direction == "pos" else -1.0)}

    for mode, kept in (("max", 2.0), ("min", 0.0)):
        pop = PopulationController([{"h": 1.0}], BranchingSingleMachine(branch, 1, 1, mode=mode))
        work = pop.maybe_get_worker_data(0, None, 0, None, None)
        for _ in range(4):  # exploit, then the centre, pos and neg branches
            step = work.step + 1
            value = work.meta_params["h"]  # (the value is the hyperparameter)
            reply = pop.set_eval_and_ask(0, work.generation_id, step, f"p{step}", value)
            work = reply or work.replace(step=step)
        assert pop.active_workers[0].meta_params["h"] == kept
    with pytest.raises(ValueError, match="mode"):
        WinnerTakeAllGenetic(lambda m: m, 1, mode="maximum")


def test_a_mode_set_by_replace_is_refused_as_it_would_not_change_the_decisions():
    # WTA built for min, _replace(mode="max"): the history ranked by max, the rounds by min
    with pytest.raises(ValueError, match="build it with mode='max'"):
        PopulationController(
            [{"h": 1.0}], WinnerTakeAllGenetic(lambda m: m, 1)._replace(mode="max")
        )
    PopulationController([{"h": 1.0}], WinnerTakeAllGenetic(lambda m: m, 1, mode="max"))


def test_a_fixed_schedule_takes_the_run_s_mode():
    """FixedSchedule had no mode: a replay of a mode="max" run's schedule ranked
    accuracies as losses, its report naming the worst member best and StopWhen(value=)
    ending at a worse accuracy (helper-257)."""
    from jaxpop import StopWhen
    from jaxpop.mutators import FixedSchedule

    schedule = {0: {"lr": 0.1}, 10: {"lr": 0.01}}
    pop = PopulationController([{"lr": 0.1}] * 3, FixedSchedule(schedule, mode="max"))
    for worker, value in enumerate([0.30, 0.95, 0.60]):
        gen = pop.maybe_get_worker_data(worker, None, 0, None, None).generation_id
        pop.set_eval(worker, gen, 1, f"p{worker}", value)
    assert pop.history.mode == "max"
    assert report.summary(report.build(pop.state))["best"]["worker"] == 1
    one = PopulationController(
        [{"lr": 0.1}], FixedSchedule(schedule, mode="max"), stop_when=StopWhen(value=0.9)
    )
    gen = one.maybe_get_worker_data(0, None, 0, None, None).generation_id
    one.set_eval(0, gen, 1, "p", 0.2)
    assert not one.done
    one.set_eval(0, gen, 2, "p", 0.93)
    assert one.done
    with pytest.raises(ValueError, match="mode"):
        FixedSchedule(schedule, mode="up")
