"""The loggers under faults a hostile review found: a killed process, a failed request,
names that clean alike, a rerun on the same log directory, a service down at a run's
start, values a backend cannot hold, and arguments the controller takes."""

import argparse
import errno
import logging
import os
import re
import time

import numpy as np
import pytest
from test_logging import Recorder, _after_one_round, wta_rounds
from test_tensorboard import _events

import jaxpop.logging
from conftest import run_python
from jaxpop import PopulationController
from jaxpop.mutators import ExploitEvent, FixedSchedule, exploit_events
from jaxpop.schedules import constant


@pytest.fixture
def mlflow_store(monkeypatch, tmp_path):
    """A local MLflow file store's tracking URI; MLflow's own env settings cleared."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    return (tmp_path / "mlruns").as_uri()


def _wandb_home(monkeypatch, tmp_path):
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


# -- TensorBoard ----------------------------------------------------------------------
def test_what_a_call_wrote_is_in_the_event_file_when_it_returns(tmp_path):
    """Evaluations stayed in a buffer until a write 30 s later: a killed process lost
    them, and the last one was never shown (hostile review)."""
    pytest.importorskip("tensorboardX")
    logger = jaxpop.logging.TensorBoardLogger(tmp_path)
    logger.log_worker(0, 10, 0.5, {"lr": 0.1})
    assert (10, "eval/value", 0.5) in _events(tmp_path / "worker-0")  # (read as another process)
    logger.log_exploit(ExploitEvent("g1", ("g0", 10), 10, 0.0, {"lr": 0.1}, {"lr": 0.2}, 0.5))
    assert (10, "exploits/count", 1.0) in _events(tmp_path / "population")
    logger.close()


def test_a_close_that_fails_for_one_writer_closes_the_others_and_raises(tmp_path):
    """One event file that could not be flushed at close left the other writers open
    (and a second close did nothing)."""
    pytest.importorskip("tensorboardX")
    logger = jaxpop.logging.TensorBoardLogger(tmp_path)
    for worker in range(3):
        logger.log_worker(worker, 10, 0.5 + worker, {"lr": 0.1})
    writers = dict(logger._writers)

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device")

    writers[0]._writer.close = full_disk
    with pytest.raises(OSError, match=r"No space left"):
        logger.close()
    assert writers[1]._closed and writers[2]._closed
    for worker in range(3):
        assert (10, "eval/value", 0.5 + worker) in _events(tmp_path / f"worker-{worker}")


def test_a_value_tensorboard_shows_as_another_number_is_written_with_a_warning(tmp_path, caplog):
    """TensorBoard keeps 32-bit floats: a finite 1e39 loss showed as inf, lr 1e-46 as 0
    and seed 100000001 as 100000000, without a word."""
    pytest.importorskip("tensorboardX")
    logger = jaxpop.logging.TensorBoardLogger(tmp_path)
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        for step in (1, 2):  # (warned once per tag)
            logger.log_worker(0, step, 1e39, {"seed": 100_000_001, "lr": 1e-46, "b1": 0.9})
    logger.close()
    warned = [r.getMessage() for r in caplog.records if "32-bit float" in r.getMessage()]
    assert len(warned) == 3
    for tag in ("eval/value", "hparams/seed", "hparams/lr"):
        assert sum(f" {tag} " in message for message in warned) == 1
    assert any("100000001" in m and "100000000" in m for m in warned)


def test_names_that_clean_alike_keep_their_tags_from_call_to_call(tmp_path, mlflow_store):
    """Cleaned names were numbered by the keys of one call: ``{"a b", "a_b", "a_b_2"}``
    wrote "a b" under ``a_b`` and "a_b" under ``a_b_2``, and ``lr_x`` moved to another
    tag in a call that also had ``lr x``."""
    pytest.importorskip("tensorboardX")
    logs = jaxpop.logging.make_loggers(
        ["tensorboard", "mlflow"], log_dir=tmp_path, mlflow={"tracking_uri": mlflow_store}
    )
    logs.log_worker(0, 1, 0.5, {"a b": 2.0, "a_b": 3.0, "a_b_2": 4.0})
    logs.log_worker(0, 2, 0.5, {"lr_x": 1.0})
    logs.log_worker(0, 3, 0.5, {"lr x": 5.0, "lr_x": 1.0})
    logs.close()
    scalars = _events(tmp_path / "tensorboard" / "worker-0")
    by_tag = {}
    for _, tag, value in scalars:
        by_tag.setdefault(tag, []).append(value)
    assert by_tag["hparams/a_b"] == [3.0] and by_tag["hparams/a_b_2"] == [4.0]
    assert by_tag["hparams/lr_x"] == [1.0, 1.0]
    (cleaned,) = [t for t in by_tag if t.startswith("hparams/a_b-")]
    assert by_tag[cleaned] == [2.0]
    (mlflow,) = [x for x in logs.loggers if isinstance(x, jaxpop.logging.MlflowLogger)]
    from mlflow.tracking import MlflowClient

    params = MlflowClient(tracking_uri=mlflow_store).get_run(mlflow.worker_run_id(0)).data.params
    assert params == {"a b": "2.0", "a_b": "3.0", "a_b_2": "4.0"}  # (MLflow takes spaces)


def test_a_key_equal_to_another_keys_cleaned_name_is_an_error_not_a_lost_value():
    from jaxpop.logging.base import clean_name, renamed

    def underscored(key):
        return key.replace(" ", "_")

    collides = clean_name("a b", underscored)
    with pytest.raises(ValueError, match=r"'a b'.*would both be logged as"):
        renamed({collides: 1.0, "a b": 2.0}, lambda k: clean_name(k, underscored))


# -- MLflow ---------------------------------------------------------------------------
def test_mlflow_sends_what_a_failed_request_did_not(mlflow_store):
    """After one failed request a worker's params were never sent, and after a failed
    request for an exploit the generation tag stayed the old one (hostile review)."""
    logger = jaxpop.logging.MlflowLogger("pbt", tracking_uri=mlflow_store)
    real, failures = logger._client.log_batch, []

    def flaky(run_id, metrics=(), params=(), tags=()):
        if failures:
            failures.pop()
            raise ConnectionError("service down")
        return real(run_id, metrics=metrics, params=params, tags=tags)

    logger._client.log_batch = flaky
    failures.append(1)  # worker 0: the params of its first evaluation
    with pytest.raises(RuntimeError, match=r"params \(ConnectionError: service down\)"):
        logger.log_worker(0, 1, 0.5, {"lr": 0.1}, generation_id="g0")
    logger.log_worker(0, 2, 0.4, {"lr": 0.1}, generation_id="g0")
    logger.log_worker(1, 1, 0.5, {"lr": 0.2}, generation_id="g1")
    failures.append(1)  # worker 1: the evaluation after an exploit
    with pytest.raises(ConnectionError):
        logger.log_worker(1, 2, 0.3, {"lr": 0.3}, generation_id="g2")
    logger.log_worker(1, 3, 0.2, {"lr": 0.3}, generation_id="g2")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store)
    zero, one = (client.get_run(logger.worker_run_id(w)).data for w in (0, 1))
    assert zero.params == {"lr": "0.1"} and zero.tags["jaxpop.generation_id"] == "g0"
    assert one.params == {"lr": "0.2"} and one.tags["jaxpop.generation_id"] == "g2"
    logger.close()


def test_a_long_mlflow_param_is_cut_at_mlflows_own_limit_and_marked(mlflow_store, caplog):
    """Values were cut at 500 characters without a mark, though MLflow took 6000."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    arch = ",".join(f"conv{i}:64" for i in range(100))  # 989 characters
    huge = "x" * (MAX_PARAM_VAL_LENGTH + 10)
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        logger = jaxpop.logging.MlflowLogger("pbt", tracking_uri=mlflow_store)
        logger.log_worker(0, 1, 0.5, {"arch": arch, "huge": huge})
    from mlflow.tracking import MlflowClient

    params = MlflowClient(tracking_uri=mlflow_store).get_run(logger.worker_run_id(0)).data.params
    assert params["arch"] == arch
    assert len(params["huge"]) == MAX_PARAM_VAL_LENGTH and params["huge"].endswith("…")
    assert any("huge" in r.getMessage() and "cut" in r.getMessage() for r in caplog.records)
    logger.close()


# -- W&B ------------------------------------------------------------------------------
_FAILED_WANDB_START = """
import os, sys, pytest, wandb, jaxpop.logging
tmp = sys.argv[1]
settings = wandb.Settings(console="off", init_timeout=1)
logger = jaxpop.logging.WandbLogger(
    "pbt", dir=tmp, mode="online", init_kwargs={"settings": settings}
)
first = logger.run_id(0)
with pytest.raises(RuntimeError, match=r"(?s)wandb\\.init of run .* failed .* again as run .*-r1"):
    logger.log_worker(0, 1, 0.5, {"lr": 0.1})
logger._options["mode"] = "offline"  # the service is back (offline: no network needed)
for step in (2, 3):
    logger.log_worker(0, step, 0.5, {"lr": 0.1})
logger.close()
assert logger.run_id(0) == f"{first}-r1"
runs = [p for p in os.listdir(os.path.join(tmp, "wandb")) if p.startswith("offline-run-")]
assert [p for p in runs if p.endswith(f"{first}-r1")], runs
"""


def test_a_worker_logs_on_after_a_failed_wandb_start(monkeypatch, tmp_path):
    """After a failed ``wandb.init`` (the service down) its run id stayed taken in W&B's
    service ("run ID ... is in use"): that worker logged nothing more. The next start
    uses a new id. (Online against a closed port for the failure, then offline: no
    network; in a process of its own, as the failed start leaves W&B's service process
    unusable for the W&B tests a pytest worker runs after it.)"""
    pytest.importorskip("wandb")
    _wandb_home(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    result = run_python(_FAILED_WANDB_START, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_populations_made_in_one_second_get_two_wandb_groups(monkeypatch):
    """The group was ``<name>-<time>-<pid % 10000>``: two populations started in the same
    second of one process shared it."""
    pytest.importorskip("wandb")
    monkeypatch.setattr(time, "strftime", lambda *args: "20260101-000000")
    a, b = (jaxpop.logging.make_loggers(["wandb"], name="pbt").loggers[0] for _ in range(2))
    assert a.group != b.group
    assert re.fullmatch(r"pbt-20260101-000000-[0-9a-f]{6}", a.group)


# -- arguments ------------------------------------------------------------------------
def test_a_numpy_worker_id_is_taken_as_the_controller_takes_it(tmp_path):
    """``np.int64(1)`` was refused: with errors="warn" every evaluation was dropped."""
    pytest.importorskip("tensorboardX")
    pop = PopulationController([{"lr": 0.1}] * 2, FixedSchedule(constant({"lr": 0.1})))
    worker = np.arange(2)[1]
    data = pop.maybe_get_worker_data(worker, None, 0, None, None)
    pop.set_eval(worker, data.generation_id, 10, None, 0.5)
    logger = jaxpop.logging.TensorBoardLogger(tmp_path)
    logger.log_worker(worker, 10, 0.5, data.meta_params)
    logger.close()
    assert (10, "eval/value", 0.5) in _events(tmp_path / "worker-1")
    for bad in (np.bool_(True), True, -1, np.int64(-1), 1.0):
        with pytest.raises(ValueError, match=r"worker_id must be a non-negative int"):
            jaxpop.logging.base.check_worker_id(bad)


def test_sync_and_finish_given_the_controller_say_what_to_pass():
    pop = _after_one_round()
    logs = jaxpop.logging.Loggers([])
    with pytest.raises(TypeError, match=r"Loggers\.sync takes a History.*pass its \.history"):
        logs.sync(pop)
    with pytest.raises(TypeError, match=r"Loggers\.finish takes a .*pass its \.state"):
        logs.finish(pop)
    # ... and a wrong argument closes nothing: the call made again as the message says
    # logs the best member (it closed every logger first, helper-244)
    recorder = Recorder()
    logs = jaxpop.logging.Loggers([recorder])
    with pytest.raises(TypeError):
        logs.finish(pop)
    assert recorder.calls == []
    assert logs.finish(pop.state) is not None
    assert [c[0] for c in recorder.calls][-2:] == ["best", "close"]


def test_finish_raises_its_first_failure_and_says_the_others():
    # a failing log_best dropped the sync's error, and a failing close replaced both
    pop = _after_one_round()
    failing = Recorder(fail="exploit")
    closing = Recorder(fail="close")
    logs = jaxpop.logging.Loggers([failing, closing])
    with pytest.raises(ConnectionError, match="backend down") as raised:
        logs.finish(pop.state)
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert "OSError: cannot close" in notes
    assert [c[0] for c in failing.calls][-2:] == ["best", "close"]  # (each step ran)


# -- a rerun on the same log directory ------------------------------------------------
def test_a_rerun_of_the_cnn_example_logs_no_exploit_twice(tmp_path):
    """Each run made new loggers, which logged every exploit of the history again:
    TensorBoard's ``exploits/count`` went 1..8, then 1..12 again."""
    pytest.importorskip("tensorboardX")
    from examples import population_cnn

    args = argparse.Namespace(log=["tensorboard"], log_dir=str(tmp_path))
    pop = _after_one_round()
    logs = population_cnn.make_loggers(args, "pbt")
    population_cnn.sync_loggers(logs, pop.history, args)
    logs.close()  # (the run is killed)
    first = len(exploit_events(pop.history))
    wta_rounds(pop, [20])  # (the rerun goes on)
    rerun = population_cnn.make_loggers(args, "pbt")
    population_cnn.sync_loggers(rerun, pop.history, args)
    rerun.close()
    total = len(exploit_events(pop.history))
    assert 0 < first < total
    population = _events(tmp_path / "tensorboard" / "population")
    counts = [v for _, tag, v in population if tag == "exploits/count"]
    assert sorted(counts) == [float(k) for k in range(1, total + 1)]  # (each once)


# -- MLflow params it refuses -----------------------------------------------------------
def _history(store, run_id, key="eval/value"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_a_name_mlflows_path_rule_refuses_is_cleaned_and_the_worker_logs_on(mlflow_store):
    """``..warmup`` passed the cleaning but MLflow refuses every name whose path starts
    with ``..``: the params were sent again before each evaluation, so the worker
    logged no evaluation at all (hostile review)."""
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import _validate_param_name

    logger = jaxpop.logging.MlflowLogger("pbt", tracking_uri=mlflow_store)
    hparams = {"lr": 0.1, "..warmup": 3, "a/../b": 1, ".": 2, "/abs": 4}
    for step in (1, 2, 3):
        logger.log_worker(0, step, 1.0 / step, hparams)
    run_id = logger.worker_run_id(0)
    assert _history(mlflow_store, run_id) == [(s, pytest.approx(1.0 / s)) for s in (1, 2, 3)]
    params = MlflowClient(tracking_uri=mlflow_store).get_run(run_id).data.params
    assert sorted(params.values()) == sorted(str(v) for v in hparams.values())
    for name in params:
        _validate_param_name(name)  # (raises for a name MLflow refuses)
    logger.close()


def test_params_mlflow_refuses_for_good_are_dropped_with_one_warning_and_metrics_go_out(
    mlflow_store, caplog
):
    """A param MLflow refuses whatever the retry (INVALID_PARAMETER_VALUE, a 400) was
    kept and sent again before every metrics batch: that worker logged nothing more."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.tracking import MlflowClient

    logger = jaxpop.logging.MlflowLogger("pbt", tracking_uri=mlflow_store)
    real, sent = logger._client.log_batch, []

    def server(run_id, metrics=(), params=(), tags=()):
        sent.append([p.key for p in params])
        if any(p.key == "bad" for p in params):
            raise MlflowException("the server refuses 'bad'", INVALID_PARAMETER_VALUE)
        return real(run_id, metrics=metrics, params=params, tags=tags)

    logger._client.log_batch = server
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        for step in (1, 2, 3):
            logger.log_worker(0, step, 1.0 / step, {"lr": 0.1, "bad": 1, "momentum": 0.9})
    run_id = logger.worker_run_id(0)
    assert _history(mlflow_store, run_id) == [(s, pytest.approx(1.0 / s)) for s in (1, 2, 3)]
    params = MlflowClient(tracking_uri=mlflow_store).get_run(run_id).data.params
    assert params == {"lr": "0.1", "momentum": "0.9"}  # (only the refused one is lost)
    assert sum("bad" in keys for keys in sent) == 2  # the batch, then alone: never again
    warnings = [r.getMessage() for r in caplog.records if "refused the params" in r.getMessage()]
    assert len(warnings) == 1 and "'bad'" in warnings[0] and "'lr'" not in warnings[0]
    logger.close()


def test_params_a_transient_failure_kept_go_out_later_and_the_metrics_at_once(mlflow_store):
    """A failure that may pass (a 503, a connection error) keeps the params for the next
    call; the evaluation of the call is logged all the same, and the error raised."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
    from mlflow.tracking import MlflowClient

    logger = jaxpop.logging.MlflowLogger("pbt", tracking_uri=mlflow_store)
    real, down = logger._client.log_batch, [MlflowException("down", TEMPORARILY_UNAVAILABLE)]

    def server(run_id, metrics=(), params=(), tags=()):
        if params and down:
            raise down.pop()
        return real(run_id, metrics=metrics, params=params, tags=tags)

    logger._client.log_batch = server
    with pytest.raises(RuntimeError, match=r"params \(MlflowException: down\).*logged.*again"):
        logger.log_worker(0, 1, 0.5, {"lr": 0.1})
    run_id = logger.worker_run_id(0)
    assert _history(mlflow_store, run_id) == [(1, 0.5)]
    assert MlflowClient(tracking_uri=mlflow_store).get_run(run_id).data.params == {}
    logger.log_worker(0, 2, 0.4, {"lr": 0.1})
    assert MlflowClient(tracking_uri=mlflow_store).get_run(run_id).data.params == {"lr": "0.1"}
    assert _history(mlflow_store, run_id) == [(1, 0.5), (2, pytest.approx(0.4))]
    logger.close()


# -- the loggers kept in --log-dir ------------------------------------------------------
def _example_args(log_dir, *backends):
    return argparse.Namespace(log=list(backends), log_dir=str(log_dir))


def _parent(logs):
    (mlflow,) = [x for x in logs.loggers if isinstance(x, jaxpop.logging.MlflowLogger)]
    return mlflow.parent_run_id, mlflow.tracking_uri


def test_kept_loggers_are_new_for_a_copied_or_moved_log_dir(tmp_path, capsys):
    """The kept loggers hold absolute folders: a copied --log-dir logged into the
    original run's, and a moved one into a folder no longer there (hostile review)."""
    pytest.importorskip("tensorboardX")
    import shutil

    from examples import population_cnn

    first = population_cnn.make_loggers(_example_args(tmp_path / "run", "tensorboard"), "pbt")
    first.close()
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    (tmp_path / "link").symlink_to(tmp_path / "run")
    capsys.readouterr()
    linked = population_cnn.make_loggers(_example_args(tmp_path / "link", "tensorboard"), "pbt")
    assert linked.loggers[0].log_dir == first.loggers[0].log_dir  # (the same folder)
    assert capsys.readouterr().err == ""
    for name in ("copy", "moved"):
        if name == "moved":
            os.rename(tmp_path / "run", tmp_path / "moved")
        logs = population_cnn.make_loggers(_example_args(tmp_path / name, "tensorboard"), "pbt")
        assert logs.loggers[0].log_dir == str(tmp_path / name / "tensorboard")
        err = capsys.readouterr().err
        assert "new loggers" in err and str(tmp_path / "run") in err and "copied or moved" in err
        logs.close()


def test_kept_loggers_are_new_for_another_tracking_uri_and_the_same_for_another_log_order(
    tmp_path, mlflow_store, monkeypatch, capsys
):
    """A rerun ignored a changed ``MLFLOW_TRACKING_URI`` (it logged to the store of the
    run before), and ``--log mlflow tensorboard`` after ``--log tensorboard mlflow``
    started new loggers that logged every exploit again (hostile review)."""
    pytest.importorskip("tensorboardX")
    from examples import population_cnn

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    first = population_cnn.make_loggers(_example_args(tmp_path, "tensorboard", "mlflow"), "pbt")
    first.close()
    capsys.readouterr()
    again = population_cnn.make_loggers(_example_args(tmp_path, "mlflow", "tensorboard"), "pbt")
    assert _parent(again) == _parent(first) and capsys.readouterr().err == ""
    other = (tmp_path / "other-store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    moved = population_cnn.make_loggers(_example_args(tmp_path, "mlflow", "tensorboard"), "pbt")
    assert _parent(moved)[1] == other and _parent(moved)[0] != _parent(first)[0]
    err = capsys.readouterr().err
    assert "new loggers" in err and f"MLFLOW_TRACKING_URI={mlflow_store}" in err and other in err
    moved.close()


def test_kept_loggers_that_cannot_be_read_say_what_to_do(tmp_path, mlflow_store, monkeypatch):
    """The message said only to delete the file, though the likely cause is a setting or
    a package the run before had."""
    pytest.importorskip("tensorboardX")
    from examples import population_cnn

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    args = _example_args(tmp_path, "mlflow")
    population_cnn.make_loggers(args, "pbt").close()
    import mlflow.tracking
    from mlflow.exceptions import MlflowException

    def refused(tracking_uri=None, **kwargs):  # (MLflow >= 3.7 without the setting; its
        # clients of a URI are cached for the process, so the refusal is made here)
        raise MlflowException(
            "The filesystem tracking backend (e.g., './mlruns') is in maintenance mode "
            "... set `MLFLOW_ALLOW_FILE_STORE=true` to opt out of this exception."
        )

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", refused)
    with pytest.raises(SystemExit, match=r"(?s)set MLFLOW_ALLOW_FILE_STORE.*delete the file"):
        population_cnn.make_loggers(args, "pbt")
    with open(tmp_path / population_cnn.LOGGERS_FILE, "wb") as f:
        f.write(b"cjaxpop_no_such_module\nLogger\n.")  # (a pickle of a package not here)
    with pytest.raises(SystemExit, match=r"(?s)package .* is missing: install it.*delete the file"):
        population_cnn.make_loggers(args, "pbt")


def test_params_a_proxy_refuses_as_a_batch_go_out_one_at_a_time(mlflow_store):
    """A proxy's 413 (too large a body) comes from MLflow's REST client as a 500, so the
    batch was taken for a transient failure, never split: no param was ever logged and
    every evaluation raised (hostile review)."""
    from mlflow.exceptions import MlflowException, get_error_code
    from mlflow.tracking import MlflowClient

    logger = jaxpop.logging.MlflowLogger("pbt", tracking_uri=mlflow_store)
    real, sent = logger._client.log_batch, []

    def proxy(run_id, metrics=(), params=(), tags=()):
        sent.append(len(params))
        if len(params) > 1:
            raise MlflowException("error code 413 != 200", error_code=get_error_code(413))
        return real(run_id, metrics=metrics, params=params, tags=tags)

    logger._client.log_batch = proxy
    for step in (1, 2):
        logger.log_worker(0, step, 0.5, {"lr": 0.1, "momentum": 0.9})
    params = MlflowClient(tracking_uri=mlflow_store).get_run(logger.worker_run_id(0)).data.params
    assert params == {"lr": "0.1", "momentum": "0.9"}
    assert [n for n in sent if n] == [2, 1, 1]  # (then never again)
    logger.close()


def test_params_kept_after_a_transient_failure_are_pickled_and_named_at_close(mlflow_store, caplog):
    """Params kept for the next call were not pickled (a rerun's kept loggers, a
    restarted actor never sent them) and close() ended the run without a word."""
    import pickle

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
    from mlflow.tracking import MlflowClient

    logger = jaxpop.logging.MlflowLogger("pbt", tracking_uri=mlflow_store)
    real = logger._client.log_batch

    def down(run_id, metrics=(), params=(), tags=()):
        if params:
            raise MlflowException("down", TEMPORARILY_UNAVAILABLE)
        return real(run_id, metrics=metrics, params=params, tags=tags)

    logger._client.log_batch = down
    with pytest.raises(RuntimeError, match=r"sent again"):
        logger.log_worker(0, 1, 0.5, {"lr": 0.1, "wd": 0.01})
    copy = pickle.loads(pickle.dumps(logger))
    copy.log_worker(0, 2, 0.4, {"lr": 0.1, "wd": 0.01})
    run = MlflowClient(tracking_uri=mlflow_store).get_run(logger.worker_run_id(0))
    assert run.data.params == {"lr": "0.1", "wd": "0.01"}
    copy.close()
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        logger.close()
        logger.close()
    warnings = [r.getMessage() for r in caplog.records if "never got the params" in r.getMessage()]
    assert len(warnings) == 1 and "'lr', 'wd'" in warnings[0] and "worker 0" in warnings[0]


def test_a_relative_tracking_uri_is_kept_absolute_so_a_rerun_elsewhere_is_not_lost(
    tmp_path, mlflow_store, monkeypatch, capsys
):
    """``MLFLOW_TRACKING_URI=mlruns`` was kept as written: a rerun from another working
    directory reused the kept loggers, whose client then opened another store, where
    the parent run is not (every MLflow call failed; hostile review)."""
    pytest.importorskip("tensorboardX")
    from examples import population_cnn
    from jaxpop.logging.mlflow import resolve_tracking_uri

    for where in ("a", "b"):
        (tmp_path / where).mkdir()
    args = _example_args(tmp_path / "run", "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    monkeypatch.chdir(tmp_path / "a")
    first = population_cnn.make_loggers(args, "pbt")
    first.close()
    assert _parent(first)[1] == str(tmp_path / "a" / "mlruns")
    capsys.readouterr()
    assert _parent(population_cnn.make_loggers(args, "pbt")) == _parent(first)  # (kept)
    monkeypatch.chdir(tmp_path / "b")
    again = population_cnn.make_loggers(args, "pbt")
    assert _parent(again)[1] == str(tmp_path / "b" / "mlruns")
    assert _parent(again)[0] != _parent(first)[0] and "new loggers" in capsys.readouterr().err
    again.log_worker(0, 1, 0.5)  # (errors="warn": would only warn)
    assert _history(_parent(again)[1], again.loggers[0].worker_run_id(0)) == [(1, 0.5)]
    again.close()
    cwd = str(tmp_path / "b")
    assert resolve_tracking_uri("file:mlruns") == f"file://{cwd}/mlruns"
    assert resolve_tracking_uri("./mlruns") == f"{cwd}/mlruns"
    assert resolve_tracking_uri("sqlite:///m.db?x=1") == f"sqlite:///{cwd}/m.db?x=1"
    for uri in ("sqlite:////abs/m.db", "file:///abs", "http://host:5000", "databricks"):
        assert resolve_tracking_uri(uri) == uri


@pytest.mark.parametrize(
    "kept",
    [0, ["tensorboard"], {"backends": ["tensorboard"]}, {"backends": 1, "loggers": None}],
)
def test_a_loggers_file_the_example_did_not_write_is_refused_with_a_message(tmp_path, kept):
    """A pickle of another kind ended in a TypeError from deep inside the reading
    (``0`` is not subscriptable), saying nothing of the file (hostile review)."""
    import pickle

    from examples import population_cnn

    (tmp_path / population_cnn.LOGGERS_FILE).write_bytes(pickle.dumps(kept))
    with pytest.raises(SystemExit, match=r"is not the loggers an example keeps .*delete the file"):
        population_cnn.make_loggers(_example_args(tmp_path, "tensorboard"), "pbt")


def test_kept_loggers_from_before_the_log_dir_was_kept_are_kept_by_their_own_folder(
    tmp_path, capsys
):
    """A loggers.pickle without the --log-dir beside them always gave new loggers,
    logging every exploit again, though TensorBoard's kept logger names its folder."""
    pytest.importorskip("tensorboardX")
    import pickle

    from examples import population_cnn

    args = _example_args(tmp_path / "run", "tensorboard")
    first = population_cnn.make_loggers(args, "pbt")
    first.log_exploit(ExploitEvent("g1", ("g0", 10), 10, 0.0, {"lr": 0.1}, {"lr": 0.2}, 0.5))
    population_cnn.keep_loggers(first, args.log, args.log_dir)
    first.close()
    path = tmp_path / "run" / population_cnn.LOGGERS_FILE
    kept = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps({"backends": kept["backends"], "loggers": kept["loggers"]}))
    capsys.readouterr()
    again = population_cnn.make_loggers(args, "pbt")
    assert again.loggers[0]._exploits == 1 and capsys.readouterr().err == ""
    again.close()
    os.rename(tmp_path / "run", tmp_path / "moved")  # (its folder gone: new loggers)
    moved = population_cnn.make_loggers(_example_args(tmp_path / "moved", "tensorboard"), "pbt")
    assert moved.loggers[0]._exploits == 0 and "copied or moved" in capsys.readouterr().err
    moved.close()


@pytest.mark.parametrize("folder", ["run#1", "p%41q", "a?b", "a b"])
def test_a_relative_file_uri_resolves_to_the_working_directory_whatever_its_name(
    monkeypatch, tmp_path, folder
):
    """A "#", "?" or "%xx" in the working directory's name went into the URI unescaped:
    MLflow read the store as another, sibling folder (review)."""
    pytest.importorskip("mlflow")
    from mlflow.utils.file_utils import local_file_uri_to_path

    from jaxpop.logging.mlflow import resolve_tracking_uri

    (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / folder)
    here = str(tmp_path / folder)
    assert local_file_uri_to_path(resolve_tracking_uri("file:mlruns")) == f"{here}/mlruns"
    assert local_file_uri_to_path(resolve_tracking_uri("file:my%20runs")) == f"{here}/my runs"
    sqlite = resolve_tracking_uri("sqlite:///m.db")
    assert sqlite in ("sqlite:///m.db", f"sqlite:///{here}/m.db")  # (as given if it cannot)
    assert "?" not in sqlite.split("m.db")[0] and "#" not in sqlite
