"""``jaxpop.logging``: the RunLogger interface, the exploit feed, the fan-out, TensorBoard."""

import doctest
import importlib
import logging
import math
import os
import pickle
import sys
import time
import warnings

import numpy as np
import pytest

import jaxpop.logging
from conftest import FakeClock
from jaxpop import History, PopulationController, report
from jaxpop.logging import base
from jaxpop.mutators import WinnerTakeAllGenetic, exploit_events
from jaxpop.schedules import best_final, from_json, from_lineage

WORKERS = 3


def _mutate(meta, key):
    rng = np.random.default_rng(key)
    return {**meta, "log_lr": meta["log_lr"] + 0.5 * float(rng.normal())}


def simulate(logs, n=WORKERS, evals=6, *, clock=None, sync_every=1):
    """A small PBT run (WinnerTakeAllGenetic every 20 steps) whose simulated workers
    log each evaluation to ``logs``; the driver syncs exploits every ``sync_every``
    evaluations and finishes at the end. Returns ``(state, logged, best)`` where
    ``logged[i]`` lists worker ``i``'s ``(step, value, meta_params, generation_id)``."""
    initial = [{"log_lr": -2.0 - i, "opt": {"b1": 0.9}, "name": "sgd"} for i in range(n)]
    mutator = WinnerTakeAllGenetic(_mutate, steps_per_exploit=20)
    pop = PopulationController(initial, mutator, seed=0, clock=clock or time.time)
    gens, steps, logged = [None] * n, [0] * n, [[] for _ in range(n)]
    for t in range(n * evals):
        i = t % n
        data = pop.maybe_get_worker_data(i, gens[i], steps[i], None, None)
        if data is not None:
            gens[i], steps[i] = data.generation_id, data.step
        steps[i] += 10
        meta = pop.history.meta_params(gens[i])
        value = (meta["log_lr"] + 3) ** 2 + 10 / steps[i]
        pop.set_eval(i, gens[i], steps[i], None, value)
        logs.log_worker(
            i, steps[i], value, meta, metrics={"accuracy": 1 / (1 + value)}, generation_id=gens[i]
        )
        logged[i].append((steps[i], value, meta, gens[i]))
        if t % sync_every == 0:
            logs.sync(pop.history)
    state = pop.state
    best = logs.finish(state)
    return state, logged, best


def wta_rounds(population, steps):
    """Each of four workers reports at each of ``steps``: a WinnerTakeAllGenetic round."""
    for step in steps:
        for i in range(4):
            gen = population.active_workers[i].generation_id
            population.set_eval(i, gen, step, None, float((3 * i + step) % 5))


class Recorder:
    """A RunLogger that records every call."""

    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def log_worker(self, worker_id, step, value, hparams=None, *, metrics=None, generation_id=None):
        self.calls.append(("worker", worker_id, step, value, generation_id))
        if self.fail == "worker":
            raise RuntimeError("boom")

    def log_exploit(self, event):
        self.calls.append(("exploit", event))
        if self.fail == "exploit":
            raise ConnectionError("backend down")

    def log_best(self, best):
        self.calls.append(("best", best))

    def close(self):
        self.calls.append(("close",))
        if self.fail == "close":
            raise OSError("cannot close")

    def of(self, kind):
        return [c[1:] for c in self.calls if c[0] == kind]


def test_the_docstring_examples_run():
    assert doctest.testmod(jaxpop.logging).failed == 0
    assert doctest.testmod(base).failed == 0


def test_a_logger_sees_every_evaluation_each_exploit_once_and_the_best_member():
    recorder = Recorder()
    logs = jaxpop.logging.Loggers([recorder])
    assert isinstance(recorder, jaxpop.logging.RunLogger) and isinstance(logs, base.RunLogger)
    state, logged, best = simulate(logs)
    assert [(w, s, v, g) for w, s, v, g in recorder.of("worker")] == [
        (t % WORKERS, *logged[t % WORKERS][t // WORKERS][:2], logged[t % WORKERS][t // WORKERS][3])
        for t in range(WORKERS * 6)
    ]
    events = exploit_events(state.history)
    assert len(events) >= 3
    assert [e for (e,) in recorder.of("exploit")] == events  # each once, in creation order
    assert recorder.of("best") == [(best,)] and recorder.calls[-1] == ("close",)
    # the best member is the best final checkpoint, its schedule the replayable one
    assert best.checkpoint == best_final(state.history)
    assert best.schedule == from_lineage(state.history)
    assert from_json(best.schedule.to_json()) == best.schedule
    assert best.lineage[-1] == best.checkpoint and best.lineage[0].parent is None
    member = report.build(state).members[best.worker]
    assert best.checkpoint.ref in {c.ref for c in member.lineage}
    assert best.mode == "min" and best.value == best.checkpoint.value


def test_best_member_from_a_history_or_before_any_evaluation():
    state, _, best = simulate(jaxpop.logging.Loggers([]))
    from_history = jaxpop.logging.best_member(state.history)
    assert from_history.worker is None and from_history.checkpoint == best.checkpoint
    assert jaxpop.logging.best_member(History()) is None
    with pytest.raises(TypeError, match="PopulationState or a History"):
        jaxpop.logging.best_member({"history": state.history})


def test_the_exploit_feed_hands_out_each_event_once_even_at_one_instant():
    clock = FakeClock()  # never advanced: every event at one instant
    feed = jaxpop.logging.ExploitFeed()
    logs = jaxpop.logging.Loggers([])
    state, _, _ = simulate(logs, clock=clock, sync_every=WORKERS)
    events = exploit_events(state.history)
    first = feed.new(state.history)
    assert first == events and feed.new(state.history) == []
    copy = pickle.loads(pickle.dumps(feed))  # plain data: a driver restarted with it
    assert copy.new(state.history) == []
    assert jaxpop.logging.ExploitFeed().new(state.history) == events


def test_the_exploit_feed_hands_out_an_exploit_older_than_one_handed_out():
    # (it kept only events at most 1 s older than the newest handed out: an exploit
    # recorded after the clock stepped back, or a mutator's checkpoint keeping its
    # source's time, was never logged)
    clock = FakeClock()
    mutator = WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] / 2}, steps_per_exploit=10)
    pop = PopulationController([{"lr": 1.0}, {"lr": 2.0}], mutator, clock=clock)
    feed, handed = jaxpop.logging.ExploitFeed(), []
    for step in (10, 20, 30):
        for w in (0, 1):
            worker = pop.active_workers[w]
            pop.set_eval(w, worker.generation_id, step, f"p{w}@{step}", 0.1 * (w + 1))
        handed += feed.new(pop.history)
        clock.advance(-5.0)  # the clock steps back between rounds
    assert handed == exploit_events(pop.history) and len(handed) == 6
    assert feed.new(pop.history) == []
    old = pickle.loads(pickle.dumps(feed))
    old.__setstate__({"seen": [e.generation_id for e in handed[:2]], "since": 1.0})  # older
    assert old.new(pop.history) == handed[2:]


def test_every_logger_gets_each_call_even_when_one_fails():
    failing, other = Recorder(fail="worker"), Recorder(fail="close")
    logs = jaxpop.logging.Loggers([failing, other])
    with pytest.raises(RuntimeError, match="boom"):
        logs.log_worker(0, 10, 1.0, {"lr": 0.1})
    assert other.of("worker") == [(0, 10, 1.0, None)]
    with pytest.raises(OSError, match="cannot close"):
        logs.close()
    assert failing.calls[-1] == other.calls[-1] == ("close",)
    with pytest.raises(TypeError, match="not a RunLogger"):
        jaxpop.logging.Loggers([object()])


def _after_one_round() -> PopulationController:
    """Four workers after a WinnerTakeAllGenetic round: three exploits."""
    from jaxpop.mutators import WinnerTakeAllGenetic

    pop = PopulationController(
        [{"log_lr": -2.0 - i} for i in range(4)],
        WinnerTakeAllGenetic(_mutate, steps_per_exploit=10),
        seed=0,
    )
    for i in range(4):
        pop.set_eval(i, pop.active_workers[i].generation_id, 10, None, float(i))
    return pop


def test_a_failing_backend_costs_the_others_no_exploit():
    """``sync`` hands every new exploit to every logger even when one raises on the
    first (the first error is raised after the last event): the healthy backend logs
    them all, and the failing one was offered each."""
    pop = _after_one_round()
    expected = exploit_events(pop.history)
    assert len(expected) > 1
    failing, healthy = Recorder(fail="exploit"), Recorder()
    logs = jaxpop.logging.Loggers([failing, healthy])
    with pytest.raises(ConnectionError, match="backend down"):
        logs.sync(pop.history)
    assert healthy.of("exploit") == failing.of("exploit") == [(e,) for e in expected]
    # finishing: the best member and the close reach every logger all the same
    failing, healthy = Recorder(fail="exploit"), Recorder()
    with pytest.raises(ConnectionError, match="backend down"):
        jaxpop.logging.Loggers([failing, healthy]).finish(pop.state)
    assert len(healthy.of("best")) == len(failing.of("best")) == 1
    assert healthy.calls[-1] == failing.calls[-1] == ("close",)


def test_a_ctrl_c_in_sync_leaves_the_exploits_not_tried_yet_to_the_next_sync():
    # every exploit of the sync was marked handed out before any was logged: a Ctrl-C
    # (a slow request interrupted) lost the rest, which finish() never offered again
    pop = _after_one_round()
    expected = exploit_events(pop.history)
    assert len(expected) > 2

    class Interrupted(Recorder):
        def log_exploit(self, event):
            super().log_exploit(event)
            if len(self.of("exploit")) == 1:
                raise KeyboardInterrupt

    backend = Interrupted()
    logs = jaxpop.logging.Loggers([backend])
    with pytest.raises(KeyboardInterrupt):
        logs.sync(pop.history)
    # the one interrupted is not sent again (as a failed one), the others are
    assert logs.sync(pop.history) == expected[1:]
    assert backend.of("exploit") == [(e,) for e in expected]


def test_with_errors_warn_a_failing_backend_is_a_warning_and_the_others_log_on(caplog):
    pop = _after_one_round()
    failing, healthy = Recorder(fail="exploit"), Recorder()
    logs = jaxpop.logging.Loggers([failing, healthy], errors="warn")
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        assert logs.sync(pop.history) == exploit_events(pop.history)  # nothing raised
        logs.log_worker(0, 20, 1.0)
        assert logs.finish(pop.state) is not None
    assert "Recorder.log_exploit failed (the run goes on): ConnectionError" in caplog.text
    assert len(healthy.of("exploit")) == len(exploit_events(pop.history))
    assert healthy.calls[-1] == ("close",) and len(healthy.of("best")) == 1
    restored = pickle.loads(pickle.dumps(logs))
    assert restored.errors == "warn"
    for bad in ("ignore", None):
        with pytest.raises(ValueError, match='errors must be "raise" or "warn"'):
            jaxpop.logging.Loggers([], errors=bad)
        with pytest.raises(ValueError, match='errors must be "raise" or "warn"'):
            jaxpop.logging.make_loggers([], errors=bad)


def test_the_cnn_example_trains_on_when_a_logging_backend_fails(tmp_path, monkeypatch):
    """A backend failing once (a full disk) ended the flagship example at step 20 of
    300: the driver's sync raised out of its wait and closed the controller under the
    training threads. Its loggers warn instead."""
    from examples import population_cnn
    from examples.simple_cnn import train as simple_cnn

    made = population_cnn.make_loggers

    def with_a_failing_backend(args, name):
        logs = made(args, name)
        logs.loggers = (Recorder(fail="exploit"), *logs.loggers)
        return logs

    monkeypatch.setattr(population_cnn, "make_loggers", with_a_failing_backend)
    monkeypatch.setattr(population_cnn, "SYNC_EVERY_S", 0.05)
    argv = ["--steps", "40", "--workers", "2", "--eval-every", "10", "--steps-per-exploit", "10"]
    summary = simple_cnn.main([*argv, "--no-progress", "--log-dir", str(tmp_path)])
    assert summary["exploit_events"] >= 1
    assert [m.step for m in jaxpop.report.load(tmp_path).members] == [40, 40]


def test_backend_names_and_clear_errors(monkeypatch, tmp_path):
    assert jaxpop.logging.parse_backends(["wandb,mlflow", "wandb"]) == ["wandb", "mlflow"]
    assert jaxpop.logging.parse_backends(None) == []
    with pytest.raises(ValueError, match="unknown logger 'neptune'"):
        jaxpop.logging.make_loggers("neptune")
    with pytest.raises(TypeError, match="strings"):
        jaxpop.logging.parse_backends([1])
    with pytest.raises(ValueError, match="needs log_dir"):
        jaxpop.logging.make_loggers(["tensorboard"])
    for module, extra in (("wandb", "jaxpop[wandb]"), ("mlflow", "jaxpop[mlflow]")):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
            jaxpop.logging.make_loggers([module], log_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing was created


def test_the_core_imports_no_logging_library():
    import subprocess

    code = (
        "import sys, jaxpop, jaxpop.logging, jaxpop.report; "
        "names = ('wandb', 'mlflow', 'tensorboardX', 'tensorflow'); "
        "bad = [n for n in names if sys.modules.get(n) is not None]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- TensorBoard ----------------------------------------------------------------------
def _texts(directory):
    """``{tag: [(step, text)]}`` of the text summaries in a directory's event files."""
    import glob
    import os
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        data, offset = open(path, "rb").read(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.tensor.string_val:
                    text = value.tensor.string_val[0].decode()
                    out.setdefault(value.tag, []).append((event.step, text))
    return out


def test_tensorboard_logger_writes_workers_exploits_and_the_best_schedule(tmp_path):
    pytest.importorskip("tensorboardX")
    from test_tensorboard import _events

    logs = jaxpop.logging.make_loggers(["tensorboard"], log_dir=tmp_path)
    state, logged, best = simulate(logs)
    root = tmp_path / "tensorboard"
    assert sorted(p.name for p in root.iterdir()) == [
        "population",
        *(f"worker-{i}" for i in range(WORKERS)),
    ]
    for i in range(WORKERS):
        scalars = _events(root / f"worker-{i}")
        values = [(s, v) for s, tag, v in scalars if tag == "eval/value"]
        assert values == [(s, pytest.approx(v)) for s, v, _, _ in logged[i]]
        lrs = [v for _, tag, v in scalars if tag == "hparams/log_lr"]
        assert lrs == [pytest.approx(m["log_lr"]) for _, _, m, _ in logged[i]]
        assert {tag for _, tag, _ in scalars} >= {"eval/accuracy", "hparams/opt.b1"}
    population = _events(root / "population")
    events = exploit_events(state.history)
    counts = [(s, v) for s, tag, v in population if tag == "exploits/count"]
    assert counts == [(e.step, float(k + 1)) for k, e in enumerate(events)]
    assert [(s, v) for s, tag, v in population if tag == "best/value"] == [
        (best.checkpoint.step, pytest.approx(best.value))
    ]
    texts = _texts(root / "population")
    lines = texts["exploits"]  # (at the exploit's number: TensorBoard keeps one per step)
    assert [step for step, _ in lines] == list(range(1, len(events) + 1))
    assert all(
        e.generation_id in text and e.source[0] in text
        for e, (_, text) in zip(events, lines, strict=True)
    )
    ((step, text),) = texts["best/schedule"]
    document = text.split("```json\n")[1].split("\n```")[0]
    assert step == best.checkpoint.step and from_json(document) == best.schedule
    with pytest.raises(RuntimeError, match="closed"):
        logs.log_worker(0, 100, 1.0)


def test_an_exploit_line_lists_only_the_hyperparameters_that_changed(tmp_path):
    """A NaN that stayed NaN was listed as changed ("wd: nan -> nan"; hostile review,
    helper-132), and an array compared element by element."""
    pytest.importorskip("tensorboardX")
    from jaxpop.mutators import ExploitEvent

    logger = jaxpop.logging.make_loggers(["tensorboard"], log_dir=tmp_path)
    before = {"lr": 0.2, "wd": math.nan, "betas": np.array([0.9, 0.99])}
    after = {"lr": 0.1, "wd": math.nan, "betas": np.array([0.9, 0.99])}
    logger.log_exploit(ExploitEvent("g1", ("g0", 10), 10, 1.0, before, after, 0.3))
    logger.close()
    ((_, text),) = _texts(tmp_path / "tensorboard" / "population")["exploits"]
    assert "lr: 0.2 -> 0.1" in text and "wd" not in text and "betas" not in text


def test_a_pickled_tensorboard_logger_writes_on_in_the_same_directories(tmp_path):
    pytest.importorskip("tensorboardX")
    from test_tensorboard import _events

    logger = jaxpop.logging.TensorBoardLogger(tmp_path)
    logger.log_worker(0, 10, 0.5, {"lr": 0.1})
    copy = pickle.loads(pickle.dumps(jaxpop.logging.Loggers([logger])))  # as Ray ships it
    copy.log_worker(0, 20, 0.25, {"lr": 0.2})
    copy.close()
    logger.close()
    assert sorted(s for s, tag, _ in _events(tmp_path / "worker-0") if tag == "eval/value") == [
        10,
        20,
    ]


def test_a_pickled_logger_made_with_a_relative_directory_writes_where_it_was_made(
    tmp_path, monkeypatch
):
    # the docs' make_loggers(..., log_dir="runs/pbt") kept the path relative: a copy in
    # a Ray actor started in another working directory wrote its workers there
    pytest.importorskip("tensorboardX")
    (tmp_path / "driver").mkdir()
    (tmp_path / "actor").mkdir()
    monkeypatch.chdir(tmp_path / "driver")
    logs = jaxpop.logging.make_loggers(["tensorboard"], log_dir="runs/pbt")
    logs.log_worker(0, 10, 0.5, {"lr": 0.1})
    copy = pickle.loads(pickle.dumps(logs))
    monkeypatch.chdir(tmp_path / "actor")
    copy.log_worker(1, 10, 0.25, {"lr": 0.2})
    copy.close()
    logs.close()
    assert sorted(os.listdir(tmp_path / "driver/runs/pbt/tensorboard")) == ["worker-0", "worker-1"]
    assert os.listdir(tmp_path / "actor") == []


def test_a_tensorboard_table_cell_holding_a_bar_or_a_line_break_stays_one_cell():
    from jaxpop.logging.tensorboard import _markdown

    text = _markdown(["step", "act", "lr"], [[0, "relu|gelu", 0.1], [1, "a\nb", None]])
    assert text.splitlines()[2:] == ["| 0 | relu\\|gelu | 0.1 |", "| 1 | a b |  |"]


def test_loggers_check_values_and_steps_as_the_controller_does(tmp_path):
    # "0.5" was logged as 0.5 and step 2.5 as 2
    pytest.importorskip("tensorboardX")
    from test_tensorboard import _events

    logger = jaxpop.logging.TensorBoardLogger(tmp_path)
    with pytest.raises(TypeError, match="value must be a real number"):
        logger.log_worker(0, 10, "0.5")
    with pytest.raises(TypeError, match=r"metrics\['acc'\] must be a real number"):
        logger.log_worker(0, 10, 0.5, metrics={"acc": "0.9"})
    with pytest.raises(ValueError, match="may not be named 'value'"):  # (it replaced 0.5)
        logger.log_worker(0, 10, 0.5, metrics={"value": 0.9})
    for step, error in ((2.5, TypeError), ("3", TypeError), (True, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="step"):
            logger.log_worker(0, step, 0.5)
    logger.log_worker(0, 20.0, np.float32(0.25), metrics={"diverged": False})  # all fine
    import jax.numpy as jnp

    nan = jnp.isnan(jnp.float32(1.0))  # a jax bool, and a bfloat16 metric: as before
    logger.log_worker(0, 30, 0.5, metrics={"diverged": nan, "half": jnp.bfloat16(0.25)})
    logger.close()
    scalars = _events(tmp_path / "worker-0")
    assert [(s, tag) for s, tag, _ in scalars][:2] == [(20, "eval/value"), (20, "eval/diverged")]
    assert {(tag, v) for s, tag, v in scalars if s == 30} >= {
        ("eval/diverged", 0.0),
        ("eval/half", 0.25),
    }


def test_jaxpop_tensorboard_still_works_and_says_it_moved():
    # Another test (the doctest walk) may have imported it already: the package then
    # holds it as an attribute and `from jaxpop import tensorboard` would not re-run it.
    sys.modules.pop("jaxpop.tensorboard", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tensorboard = importlib.import_module("jaxpop.tensorboard")
    assert any(
        issubclass(w.category, DeprecationWarning) and "jaxpop.logging" in str(w.message)
        for w in caught
    )
    assert tensorboard.TensorBoardWriter is jaxpop.logging.TensorBoardWriter
    assert tensorboard.writers is jaxpop.logging.tensorboard.writers


# -- the examples' --log ---------------------------------------------------------------
def test_the_cnn_example_logs_to_each_backend_it_is_given(tmp_path, monkeypatch):
    import importlib.util

    from examples.simple_cnn import train as simple_cnn

    backends = [
        name
        for name, module in (
            ("tensorboard", "tensorboardX"),
            ("wandb", "wandb"),
            ("mlflow", "mlflow"),
        )
        if importlib.util.find_spec(module) is not None
    ]
    if not backends:
        pytest.skip("no logging library is installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    argv = ["--steps", "20", "--workers", "2", "--eval-every", "10", "--steps-per-exploit", "10"]
    argv += ["--no-progress", "--log-dir", str(tmp_path / "run"), "--log", *backends]
    summary = simple_cnn.main(argv)
    assert summary["exploit_events"] >= 1
    run = tmp_path / "run"
    if "tensorboard" in backends:
        assert sorted(os.listdir(run / "tensorboard")) == ["population", "worker-0", "worker-1"]
    if "wandb" in backends:
        offline = [d for d in os.listdir(run / "wandb") if d.startswith("offline-run-")]
        assert len(offline) == 3  # two workers and the population
    if "mlflow" in backends:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
        runs = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert parent.info.run_name == "simple_cnn" and parent.data.params["workers"] == "2"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.run_name for r in children) == ["worker-0", "worker-1"]
        assert {"best.worker", "best.generation_id", "best.step"} <= set(parent.data.tags)


def test_the_cnn_examples_take_log_flags():
    import argparse

    from examples import population_cnn

    parser = argparse.ArgumentParser()
    population_cnn.add_flags(parser, steps=1, workers=1, log_dir="x")
    args = population_cnn.parse(
        parser, ["--log", "wandb", "mlflow", "--log", "wandb", "--tensorboard"]
    )
    assert args.log == ["wandb", "mlflow", "tensorboard"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--log", "neptune"])


def test_a_hyperparameter_named_like_a_table_column_keeps_a_column_of_its_own():
    """``best/lineage`` and ``best/schedule`` put the hyperparameters after their own
    columns in one dict: a bare scalar (named ``value``) showed as every checkpoint's
    score, and a hyperparameter named ``step`` as every row's step (hostile review,
    helper-183)."""
    from jaxpop.records import Checkpoint
    from jaxpop.schedules import piecewise

    lineage = [
        Checkpoint(None, 0.1, "g0", None, None, 0, 1.0),
        Checkpoint("p", 0.1, "g0", 0.5, ("g0", 0), 10, 2.0),
        Checkpoint("q", 0.2, "g1", 0.25, ("g0", 10), 20, 3.0),
    ]
    assert base.lineage_records(lineage) == [
        {"step": 0, "generation_id": "g0", "value": None, "hparams.value": 0.1},
        {"step": 10, "generation_id": "g0", "value": 0.5, "hparams.value": 0.1},
        {"step": 20, "generation_id": "g1", "value": 0.25, "hparams.value": 0.2},
    ]
    named = [c.replace(meta_params={"lr": c.meta_params, "step": 7}) for c in lineage]
    assert [(r["step"], r["hparams.step"], r["lr"]) for r in base.lineage_records(named)] == [
        (0, 7, 0.1),
        (10, 7, 0.1),
        (20, 7, 0.2),
    ]
    schedule = piecewise({0: {"step": 1, "hparams.step": 2}, 30: {"step": 3, "hparams.step": 4}})
    assert base.schedule_records(schedule) == [
        {"step": 0, "hparams.step:2": 1, "hparams.step": 2},
        {"step": 30, "hparams.step:2": 3, "hparams.step": 4},
    ]
