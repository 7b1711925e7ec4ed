"""The MLflow logger against a local file store: a parent run, nested worker runs.

No server: the tracking URI is a ``file:`` directory under ``tmp_path`` (MLflow >= 3.7
keeps that store behind ``MLFLOW_ALLOW_FILE_STORE=true``), read back with
``MlflowClient``.
"""

import importlib.util
import json
import pickle
import re

import pytest
from test_logging import WORKERS, simulate, wta_rounds

import jaxpop.logging
from jaxpop.logging.base import exploit_record, lineage_records
from jaxpop.logging.mlflow import _param_key
from jaxpop.mutators import exploit_events
from jaxpop.report import flatten_hparams
from jaxpop.schedules import from_json

# (a mark, not importorskip: MLflow is imported only by the test process that runs these)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="no mlflow")


@pytest.fixture
def store(monkeypatch, tmp_path):
    """A local file store's tracking URI; MLflow's own env settings cleared."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    return (tmp_path / "mlruns").as_uri()


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact(client, run_id, path, tmp_path):
    local = client.download_artifacts(run_id, path, str(tmp_path / "downloads"))
    with open(local) as f:
        return f.read()


def test_a_parent_run_with_a_nested_run_per_worker(store, tmp_path):
    logs = jaxpop.logging.make_loggers(
        ["mlflow"],
        name="pbt",
        config={"workers": WORKERS, "steps": 60},
        mlflow={"tracking_uri": store, "experiment": "jaxpop-test"},
    )
    (logger,) = logs.loggers
    state, logged, best = simulate(logs)
    client = _client(store)
    experiment = client.get_experiment_by_name("jaxpop-test")
    parent = client.get_run(logger.parent_run_id)
    assert parent.info.run_name == "pbt" and parent.info.status == "FINISHED"
    assert parent.data.params == {"workers": str(WORKERS), "steps": "60"}
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{logger.parent_run_id}'",
    )
    by_name = {run.info.run_name: run for run in children}
    assert set(by_name) == {f"worker-{i}" for i in range(WORKERS)}  # nested, MLflow's way
    for i in range(WORKERS):
        run = by_name[f"worker-{i}"]
        assert run.info.status == "FINISHED" and run.info.run_id == logger.worker_run_id(i)
        assert run.data.params == {k: str(v) for k, v in flatten_hparams(logged[i][0][2]).items()}
        values = client.get_metric_history(run.info.run_id, "eval/value")
        assert [(m.step, m.value) for m in values] == [
            (s, pytest.approx(v)) for s, v, _, _ in logged[i]
        ]
        lrs = client.get_metric_history(run.info.run_id, "hparams/log_lr")
        assert [m.value for m in lrs] == [pytest.approx(m["log_lr"]) for _, _, m, _ in logged[i]]
        assert len(client.get_metric_history(run.info.run_id, "eval/accuracy")) == len(logged[i])
        assert run.data.tags["jaxpop.generation_id"] == logged[i][-1][3]
    events = exploit_events(state.history)
    counts = client.get_metric_history(logger.parent_run_id, "exploits/count")
    assert [(m.step, m.value) for m in counts] == [(e.step, k + 1) for k, e in enumerate(events)]
    exploits = json.loads(_artifact(client, logger.parent_run_id, "exploits.json", tmp_path))
    assert exploits == [exploit_record(e) for e in events] and len(events) >= 3
    schedule = _artifact(client, logger.parent_run_id, "best/schedule.json", tmp_path)
    assert from_json(schedule) == best.schedule  # jaxpop.schedules JSON: replayable
    summary = json.loads(_artifact(client, logger.parent_run_id, "best/summary.json", tmp_path))
    assert summary["worker"] == best.worker and summary["step"] == best.checkpoint.step
    assert summary["worker_run_id"] == by_name[f"worker-{best.worker}"].info.run_id
    lineage = json.loads(_artifact(client, logger.parent_run_id, "best/lineage.json", tmp_path))
    assert lineage == lineage_records(best.lineage)
    tags = parent.data.tags
    assert (tags["best.worker"], tags["best.step"]) == (str(best.worker), str(best.checkpoint.step))
    (value,) = client.get_metric_history(logger.parent_run_id, "best/value")
    assert value.value == pytest.approx(best.value)


def test_a_pickled_copy_nests_under_the_same_parent_and_leaves_it_running(store):
    logger = jaxpop.logging.MlflowLogger("pop", tracking_uri=store)
    logger.log_worker(0, 10, 0.5, {"lr": 0.1})
    copy = pickle.loads(pickle.dumps(logger))  # what a Ray worker actor gets
    copy.log_worker(0, 20, 0.25, {"lr": 0.2})  # finds worker 0's run by its tags
    copy.log_worker(1, 20, 0.75, {"lr": 0.3})
    copy.close()
    client = _client(store)
    assert client.get_run(logger.parent_run_id).info.status == "RUNNING"  # not the copy's
    run_id = logger.worker_run_id(0)
    assert copy.worker_run_id(0) == run_id
    history = client.get_metric_history(run_id, "eval/value")
    assert [(m.step, m.value) for m in history] == [(10, 0.5), (20, 0.25)]
    assert client.get_run(copy.worker_run_id(1)).data.tags["mlflow.parentRunId"] == (
        logger.parent_run_id
    )
    logger.close()
    assert client.get_run(logger.parent_run_id).info.status == "FINISHED"
    attached = jaxpop.logging.MlflowLogger(tracking_uri=store, parent_run_id=logger.parent_run_id)
    attached.log_worker(2, 5, 1.0)
    attached.close()
    assert client.get_run(attached.worker_run_id(2)).data.tags["mlflow.parentRunId"] == (
        logger.parent_run_id
    )
    with pytest.raises(RuntimeError, match="closed"):
        attached.log_worker(2, 6, 1.0)


def test_a_driver_resumed_from_its_pickle_keeps_every_exploit_and_ends_the_parent_run(store):
    """The docs advise pickling the Loggers to log each exploit once after a crash: the
    resumed copy wrote exploits.json with the exploits since the pickle only, counted
    exploits/count from 1 again, and never ended the parent run (RUNNING for good)."""
    from jaxpop import PopulationController
    from jaxpop.mutators import WinnerTakeAllGenetic

    population = PopulationController(
        [{"lr": 0.1 * (i + 1)} for i in range(4)],
        WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] * 1.1}, steps_per_exploit=10),
    )
    logs = jaxpop.logging.make_loggers(["mlflow"], name="pbt", mlflow={"tracking_uri": store})
    wta_rounds(population, (10, 20))
    before = logs.sync(population.history)
    saved = pickle.dumps(logs)  # kept by the driver, which then crashes (no close)
    wta_rounds(population, (30, 40))
    resumed = pickle.loads(saved)
    resumed.finish(population.state)
    events = exploit_events(population.history)
    assert len(before) >= 2 and len(events) > len(before)
    client = _client(store)
    parent_id = resumed.loggers[0].parent_run_id
    local = client.download_artifacts(parent_id, "exploits.json")
    with open(local) as f:
        assert json.load(f) == [exploit_record(e) for e in events]
    counts = client.get_metric_history(parent_id, "exploits/count")
    assert sorted(m.value for m in counts) == list(range(1, len(events) + 1))
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_a_resumed_driver_writes_the_exploits_its_original_had_not_written(store):
    """exploits.json is written at most every artifact_every_s: a copy resumed from its
    pickle took every row as written, so its finish, with no exploit since, left the
    rows of the last 30 s out of the file for good (hostile review, helper-183)."""
    from jaxpop import PopulationController
    from jaxpop.mutators import WinnerTakeAllGenetic

    population = PopulationController(
        [{"lr": 0.1 * (i + 1)} for i in range(4)],
        WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] * 1.1}, steps_per_exploit=10),
    )
    logs = jaxpop.logging.make_loggers(["mlflow"], name="pbt", mlflow={"tracking_uri": store})
    wta_rounds(population, (10, 20))
    events = logs.sync(population.history)  # the first written at once, the rest kept
    saved = pickle.dumps(logs)  # kept by the driver, which then crashes (no close)
    parent_id = logs.loggers[0].parent_run_id

    def rows():
        with open(_client(store).download_artifacts(parent_id, "exploits.json")) as f:
            return json.load(f)

    assert len(events) >= 2 and len(rows()) < len(events)
    worker_copy = pickle.loads(saved)  # a worker's copy writes no exploits.json
    worker_copy.close()
    assert len(rows()) < len(events)
    # the rerun pickles its loggers again before its finish (a finish that failed, say,
    # and one more rerun): the copy of a copy still writes them (helper-185)
    pickle.loads(pickle.dumps(pickle.loads(saved))).finish(population.state)
    assert rows() == [exploit_record(e) for e in events]


def test_hyperparameter_names_mlflow_refuses_are_cleaned_and_nothing_is_lost(store):
    """A name outside MLflow's characters (or an empty, ``..``, ``/abs`` or over-long
    one) failed the worker run's params and then every batch with its metric: the run
    logged no evaluation at all."""
    names = ["", "x" * 300, "a,b", "a=b", "a_b", "..", "a/../b", "/abs", "new\nline", "β₁", "é😀"]
    logger = jaxpop.logging.MlflowLogger("pop", tracking_uri=store)
    for step in (10, 20):
        logger.log_worker(0, step, 0.5 + step, {name: float(i) for i, name in enumerate(names)})
    logger.close()
    run = _client(store).get_run(logger.worker_run_id(0))
    history = _client(store).get_metric_history(run.info.run_id, "eval/value")
    assert [(m.step, m.value) for m in history] == [(10, 10.5), (20, 20.5)]
    params = run.data.params
    # none lost: a valid name is kept, a cleaned one ends in a hash of the original
    assert params == {_param_key(name): str(float(i)) for i, name in enumerate(names)}
    assert params["a_b"] == "4.0" and params["β₁"] == "9.0"
    for name, start in (("a,b", "a_b"), ("/abs", "_abs"), ("a/../b", "a_.._b"), ("", "_")):
        assert re.fullmatch(rf"{re.escape(start)}-[0-9a-f]{{8}}", _param_key(name))
    assert sorted(m for m in run.data.metrics if m.startswith("hparams/")) == sorted(
        f"hparams/{name}" for name in params
    )


def test_a_worker_copy_made_mid_run_and_an_attached_logger_leave_the_parent_to_its_owner(store):
    """A copy made after exploits were logged (a Ray task started mid-run) rewrote
    exploits.json with its out-of-date rows when it closed; and a logger attached to the
    user's own run with parent_run_id= ended it at finish."""
    from jaxpop import PopulationController
    from jaxpop.mutators import WinnerTakeAllGenetic

    population = PopulationController(
        [{"lr": 0.1 * (i + 1)} for i in range(4)],
        WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] * 1.1}, steps_per_exploit=10),
    )
    logs = jaxpop.logging.make_loggers(["mlflow"], name="pbt", mlflow={"tracking_uri": store})
    wta_rounds(population, (10, 20))
    logs.sync(population.history)
    worker_copy = pickle.loads(pickle.dumps(logs))
    worker_copy.log_worker(0, 25, 0.5, {"lr": 0.1})
    wta_rounds(population, (30, 40))
    logs.finish(population.state)
    worker_copy.close()
    client = _client(store)
    parent_id = logs.loggers[0].parent_run_id
    with open(client.download_artifacts(parent_id, "exploits.json")) as f:
        assert len(json.load(f)) == len(exploit_events(population.history))
    users = client.create_run(client.get_run(parent_id).info.experiment_id).info.run_id
    attached = jaxpop.logging.Loggers(
        [jaxpop.logging.MlflowLogger(tracking_uri=store, parent_run_id=users)]
    )
    attached.finish(population.state)
    assert client.get_run(users).info.status == "RUNNING"  # the user's to end


@pytest.mark.parametrize("listed", [True, False])
def test_a_logger_attached_to_a_resumed_runs_parent_logs_no_exploit_twice(store, listed):
    """A new Loggers over a resumed population logs the history's exploits again: one
    attached with parent_run_id= to the run it continues counted exploits/count from 1
    again and listed them twice (helper-244). ``listed``: exploits.json was written
    before the driver died (else only the count was: it is written every
    artifact_every_s)."""
    from jaxpop import PopulationController
    from jaxpop.mutators import WinnerTakeAllGenetic

    population = PopulationController(
        [{"lr": 0.1 * (i + 1)} for i in range(4)],
        WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] * 1.1}, steps_per_exploit=10),
    )
    every = 0.0 if listed else 1e9
    first = jaxpop.logging.make_loggers(
        ["mlflow"], mlflow={"tracking_uri": store, "artifact_every_s": every}
    )
    wta_rounds(population, (10, 20))
    before = first.sync(population.history)  # (the driver then dies: no close)
    parent_id = first.loggers[0].parent_run_id
    wta_rounds(population, (30,))
    resumed = jaxpop.logging.make_loggers(
        ["mlflow"], mlflow={"tracking_uri": store, "parent_run_id": parent_id}
    )
    # (kept pickled, as the docs advise: the copy knows what the run held too)
    resumed = pickle.loads(pickle.dumps(resumed))
    resumed.finish(population.state)
    events = exploit_events(population.history)
    assert len(before) >= 2 and len(events) > len(before)
    client = _client(store)
    counts = client.get_metric_history(parent_id, "exploits/count")
    assert sorted(m.value for m in counts) == list(range(1, len(events) + 1))
    with open(client.download_artifacts(parent_id, "exploits.json")) as f:
        assert json.load(f) == [exploit_record(e) for e in events]
