"""The W&B logger, offline: one run per worker in a group, config updates, tables.

Everything is read back from the offline run directories W&B writes
(``<dir>/wandb/offline-run-*``): each run's ``.wandb`` transaction log (LevelDB log
framing around protobuf ``Record`` s, parsed here with ``wandb.proto``) and its files.
``WANDB_MODE=offline``: nothing leaves the machine.
"""

import glob
import importlib.util
import json
import os
import pickle
import struct
import time

import pytest
from test_logging import WORKERS, simulate, wta_rounds

import jaxpop.logging
from jaxpop.logging.base import exploit_record, lineage_records, schedule_records
from jaxpop.mutators import exploit_events
from jaxpop.report import flatten_hparams
from jaxpop.schedules import from_json

# (a mark, not importorskip: W&B is imported only by the test process that runs these)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="no wandb")

_BLOCK, _HEADER = 32768, 7


def _records(path):
    """The protobuf records of a ``.wandb`` file (LevelDB log format, W&B header)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    offset, chunks, pending = _HEADER, [], b""
    while offset + _HEADER <= len(data):
        left = _BLOCK - offset % _BLOCK
        if left < _HEADER:  # the block's trailer
            offset += left
            continue
        _checksum, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0:  # zero padding at the end of a block
            offset += left
            continue
        chunk = data[offset + _HEADER : offset + _HEADER + length]
        offset += _HEADER + length
        if kind == 1:  # FULL
            chunks.append(chunk)
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        else:  # LAST
            chunks.append(pending + chunk)
    records = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def _key(item):
    return ".".join(item.nested_key) if item.nested_key else item.key


class _Run:
    """What one offline run recorded."""

    def __init__(self, directory):
        self.dir = directory
        (path,) = glob.glob(os.path.join(directory, "*.wandb"))
        self.history, self.config_updates, self.metrics, self.summary = [], [], [], {}
        for record in _records(path):
            kind = record.WhichOneof("record_type")
            if kind == "exit":
                self.exited = True
            elif kind == "run":
                self.run = record.run
                self.config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
            elif kind == "history":
                row = {_key(i): json.loads(i.value_json) for i in record.history.item}
                self.history.append({k: v for k, v in row.items() if not k.startswith("_")})
            elif kind == "config":
                update = {u.key: json.loads(u.value_json) for u in record.config.update}
                self.config_updates.append(update)
                self.config.update(update)
            elif kind == "metric":
                self.metrics.append(record.metric)
            elif kind == "summary":
                for u in record.summary.update:
                    self.summary[_key(u)] = json.loads(u.value_json)

    def table(self, name):
        """The rows of the newest version of the logged table ``name``."""
        pattern = os.path.join(self.dir, "files", "media", "table", f"{name}_*.table.json")
        newest = max(glob.glob(pattern), key=lambda p: int(p.rsplit("_", 2)[-2]))
        document = json.load(open(newest))
        return [dict(zip(document["columns"], row, strict=True)) for row in document["data"]]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B offline, with every directory it uses under ``tmp_path``."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _runs(log_dir, timeout_s=30.0):
    """Every offline run in ``log_dir`` by name (see `_finished_runs`)."""
    return {r.run.display_name: r for r in _finished_runs(log_dir, timeout_s)}


def _finished_runs(log_dir, timeout_s=30.0):
    """Every offline run in ``log_dir``, once each one's transaction log holds its run
    and exit records: W&B's service process may still be writing the file when
    ``run.finish()`` has returned (seen on a loaded machine, and in CI)."""
    from google.protobuf.message import DecodeError  # (wandb's dependency)

    deadline = time.monotonic() + timeout_s
    while True:
        dirs = sorted(glob.glob(os.path.join(log_dir, "wandb", "offline-run-*")))
        try:
            runs = [_Run(d) for d in dirs]
            complete = all(hasattr(r, "run") and hasattr(r, "exited") for r in runs)
        except (ValueError, AssertionError, DecodeError):  # a log not there, or torn, yet
            if time.monotonic() > deadline:
                raise
            complete = False
        if complete or time.monotonic() > deadline:
            return runs
        time.sleep(0.1)


def test_one_run_per_worker_grouped_with_exploits_and_the_best_schedule(offline):
    logs = jaxpop.logging.make_loggers(
        ["wandb"], log_dir=offline, name="pbt", config={"workers": WORKERS}
    )
    (logger,) = logs.loggers
    state, logged, best = simulate(logs)
    runs = _runs(offline)
    assert set(runs) == {"population", *(f"worker-{i}" for i in range(WORKERS))}
    assert logger.group.startswith("pbt-")
    for name, run in runs.items():  # one group; W&B's job_type tells workers apart
        assert run.run.run_group == logger.group
        assert run.run.job_type == ("population" if name == "population" else "worker")
        assert run.config["population"] == {"workers": WORKERS}
    for i in range(WORKERS):
        run = runs[f"worker-{i}"]
        assert run.run.run_id == logger.run_id(i)
        # metrics against a step metric of their own: an exploit may move a worker back
        assert {(m.glob_name, m.step_metric) for m in run.metrics if m.glob_name} >= {
            ("eval/*", "step"),
            ("hparams/*", "step"),
        }
        assert [(h["step"], h["eval/value"]) for h in run.history] == [
            (s, pytest.approx(v)) for s, v, _, _ in logged[i]
        ]
        assert [h["hparams/log_lr"] for h in run.history] == [
            pytest.approx(m["log_lr"]) for _, _, m, _ in logged[i]
        ]
        assert all("eval/accuracy" in h for h in run.history)
        # config: the hyperparameters in force, updated at each exploit
        first = logged[i][0]
        assert run.config["worker_id"] == i
        changes = [
            (flatten_hparams(m), g)
            for k, (_, _, m, g) in enumerate(logged[i])
            if k and g != logged[i][k - 1][3]
        ]
        assert [(u["hparams"], u["generation_id"]) for u in run.config_updates] == changes
        assert run.config["hparams"] == flatten_hparams(logged[i][-1][2])
        assert run.config["generation_id"] == logged[i][-1][3]
        assert first[3] != logged[i][-1][3] or not changes
    assert any(runs[f"worker-{i}"].config_updates for i in range(WORKERS))
    events = exploit_events(state.history)
    population = runs["population"]
    rows = population.table("exploits")
    expected = [exploit_record(e) for e in events]
    assert [r["generation_id"] for r in rows] == [e.generation_id for e in events]
    assert rows == [{k: r.get(k) for k in rows[0]} for r in expected]  # before/after each
    assert [h["exploits/count"] for h in population.history if "exploits/count" in h] == list(
        range(1, len(events) + 1)
    )
    assert population.table("best/schedule") == schedule_records(best.schedule)
    assert population.table("best/lineage") == [
        {k: pytest.approx(v) if isinstance(v, float) else v for k, v in r.items()}
        for r in lineage_records(best.lineage)
    ]
    summary = population.summary
    assert summary["best/value"] == pytest.approx(best.value)
    assert (summary["best/worker"], summary["best/step"]) == (best.worker, best.checkpoint.step)
    assert summary["best/worker_run_id"] == logger.run_id(best.worker)
    document = open(os.path.join(population.dir, "files", "best_schedule.json")).read()
    assert from_json(document) == best.schedule  # the replayable schedule, as a file


def test_a_pickled_logger_continues_the_same_worker_run(offline):
    logger = jaxpop.logging.WandbLogger("g", dir=offline, project="p")
    logger.log_worker(0, 10, 0.5, {"lr": 0.1}, generation_id="a")
    copy = pickle.loads(pickle.dumps(logger))  # a Ray actor's copy, or a restarted one
    assert (copy.group, copy.run_id(0)) == ("g", logger.run_id(0))
    logger.close()
    copy.log_worker(0, 20, 0.25, {"lr": 0.1}, generation_id="a")
    copy.close()
    copy.close()  # idempotent
    runs = _finished_runs(offline)
    assert {r.run.run_id for r in runs} == {logger.run_id(0)}  # resumed, not a new run
    assert sorted(h["step"] for r in runs for h in r.history) == [10, 20]
    with pytest.raises(RuntimeError, match="closed"):
        copy.log_worker(0, 30, 0.1)


def test_a_close_that_cannot_log_the_exploits_table_finishes_the_workers_and_can_be_retried(
    offline, monkeypatch
):
    """The exploits table failing to upload at close: the worker runs are finished all
    the same and the error raised; the population run stays open, and a second
    close() logs the table and finishes it (the table was lost, every run left open)."""
    from jaxpop.logging.wandb import WandbLogger
    from jaxpop.mutators import ExploitEvent

    class FakeRun:
        def __init__(self, name):
            self.name, self.logged, self.finished = name, [], 0

        def log(self, data):
            self.logged.append(data)

        def finish(self):
            self.finished += 1

    runs = {}

    def fake_init(self, key, **kwargs):
        run = runs[kwargs["name"]] = FakeRun(kwargs["name"])
        return run

    monkeypatch.setattr(WandbLogger, "_init", fake_init)
    logger = WandbLogger(group="g", dir=str(offline), table_every_s=1e9)
    logger.log_worker(0, 10, 0.5, {"lr": 0.1})
    logger.log_exploit(ExploitEvent("g1", ("g0", 10), 10, 0.0, {"lr": 0.1}, {"lr": 0.2}, 0.5))
    published = []

    def flaky():
        if not published:
            published.append("failed")
            raise ConnectionError("upload failed")
        published.append("table")

    monkeypatch.setattr(logger, "_publish_exploits", flaky)
    with pytest.raises(ConnectionError, match="upload failed"):
        logger.close()
    assert runs["worker-0"].finished == 1 and runs["population"].finished == 0
    logger.close()
    assert published == ["failed", "table"]
    assert runs["worker-0"].finished == 1 and runs["population"].finished == 1
    logger.close()  # closed: nothing more
    assert runs["population"].finished == 1


def test_log_best_logs_the_summary_before_a_table_that_fails(offline, monkeypatch):
    """The exploits table failing at log_best (an upload, a value W&B refuses) cost the
    best member's summary: it was published first, and its error left the summary out."""
    from jaxpop import PopulationController
    from jaxpop.logging.base import best_member
    from jaxpop.logging.wandb import WandbLogger
    from jaxpop.mutators import WinnerTakeAllGenetic

    class FakeRun:
        def __init__(self):
            self.summary, self.dir = {}, str(offline)

        def log(self, data):
            pass

        def finish(self):
            pass

    monkeypatch.setattr(WandbLogger, "_init", lambda self, key, **kwargs: FakeRun())
    population = PopulationController(
        [{"lr": 0.1 * (i + 1)} for i in range(4)],
        WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] * 1.1}, steps_per_exploit=10),
    )
    wta_rounds(population, (10, 20))
    logger = WandbLogger(group="g", dir=str(offline))

    def refused(**kwargs):
        raise ConnectionError("upload failed")

    monkeypatch.setattr(logger, "_publish_exploits", refused)
    best = best_member(population.state)
    with pytest.raises(ConnectionError, match="upload failed"):
        logger.log_best(best)
    summary = logger._population_run().summary
    assert summary["best/value"] == best.value
    assert summary["best/generation_id"] == best.checkpoint.generation_id


def test_a_driver_resumed_from_its_pickle_logs_the_exploits_table_whole(offline):
    """The exploits table is replaced each time it is logged: a Loggers resumed from its
    pickle (as the docs advise) logged a table of the exploits since the pickle only."""
    from jaxpop import PopulationController
    from jaxpop.mutators import WinnerTakeAllGenetic

    population = PopulationController(
        [{"lr": 0.1 * (i + 1)} for i in range(4)],
        WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] * 1.1}, steps_per_exploit=10),
    )
    logs = jaxpop.logging.make_loggers(["wandb"], log_dir=offline, name="pbt")
    wta_rounds(population, (10, 20))
    before = logs.sync(population.history)
    saved = pickle.dumps(logs)  # kept by the driver, which then crashes
    logs.close()  # (the crashed process's runs end; this process goes on as the new one)
    wta_rounds(population, (30, 40))
    resumed = pickle.loads(saved)
    resumed.finish(population.state)
    events = exploit_events(population.history)
    assert len(before) >= 2 and len(events) > len(before)
    populations = [r for r in _finished_runs(offline) if r.run.display_name == "population"]
    rows = populations[-1].table("exploits")
    assert [r["generation_id"] for r in rows] == [e.generation_id for e in events]
    # a worker's copy (made mid-run, as a Ray task gets one) logs no population run
    worker_copy = pickle.loads(pickle.dumps(resumed))
    worker_copy.log_worker(0, 50, 0.5, {"lr": 0.1})
    worker_copy.close()
    again = [r for r in _finished_runs(offline) if r.run.display_name == "population"]
    assert len(again) == len(populations)


def test_a_resumed_driver_logs_the_exploits_its_original_had_not_logged(offline):
    """The table is logged at most every table_every_s: a copy resumed from its pickle
    took every row as logged, so its finish, with no exploit since, left the rows of
    the last 30 s out of the table for good (hostile review, helper-183)."""
    from jaxpop import PopulationController
    from jaxpop.mutators import WinnerTakeAllGenetic

    population = PopulationController(
        [{"lr": 0.1 * (i + 1)} for i in range(4)],
        WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] * 1.1}, steps_per_exploit=10),
    )
    logs = jaxpop.logging.make_loggers(["wandb"], log_dir=offline, name="pbt")
    wta_rounds(population, (10, 20))
    events = logs.sync(population.history)  # the first logged at once, the rest kept
    saved = pickle.dumps(logs)  # kept by the driver, which then crashes
    logs.close()  # (the crashed process's runs end: this process goes on as the new one)
    assert len(events) >= 2
    # (pickled again by the rerun before its finish: the copy of a copy logs them too)
    pickle.loads(pickle.dumps(pickle.loads(saved))).finish(population.state)
    populations = [r for r in _finished_runs(offline) if r.run.display_name == "population"]
    rows = populations[-1].table("exploits")
    assert [r["generation_id"] for r in rows] == [e.generation_id for e in events]


def test_a_pickled_copy_logs_on_to_the_run_a_failed_start_moved_a_worker_to(offline, monkeypatch):
    """The count of failed starts was not pickled: after a failed ``wandb.init`` a worker
    logged to ``<id>-r1``, and a copy (a rerun from ``loggers.pickle``, a restarted
    actor) went back to ``<id>``, splitting its curve over two runs."""
    import wandb

    logger = jaxpop.logging.WandbLogger("g", dir=offline, project="p")
    real, started = wandb.init, []

    def flaky(*args, **kwargs):
        started.append(kwargs["id"])
        if len(started) == 1:
            raise wandb.errors.CommError("service down")
        return real(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", flaky)
    with pytest.raises(RuntimeError, match=r"again as run .*-r1"):
        logger.log_worker(0, 1, 0.5, {"lr": 0.1})
    logger.log_worker(0, 2, 0.4, {"lr": 0.1})
    copy = pickle.loads(pickle.dumps(logger))
    logger.close()
    assert copy.run_id(0) == logger.run_id(0) == f"{started[0]}-r1"
    copy.log_worker(0, 3, 0.3, {"lr": 0.1})
    copy.close()
    assert started == [started[0], f"{started[0]}-r1", f"{started[0]}-r1"]
    runs = _finished_runs(offline)
    assert {r.run.run_id for r in runs} == {f"{started[0]}-r1"}
    assert sorted(h["step"] for r in runs for h in r.history) == [2, 3]


def test_a_hyperparameter_whose_type_changes_at_an_exploit_is_logged_with_the_best(offline):
    # "warmup": False, then 0.05 once explored: W&B refused the exploits table's rows
    # ("Data row contained incompatible types"), and every later publish with them: the
    # best member was never logged and the population run never finished
    from jaxpop import PopulationController
    from jaxpop.mutators import WinnerTakeAllGenetic

    pop = PopulationController(
        [{"lr": 0.1, "warmup": False}, {"lr": 0.2, "warmup": False}],
        WinnerTakeAllGenetic(lambda m: {"lr": m["lr"] * 1.1, "warmup": 0.05}, steps_per_exploit=10),
        seed=0,
    )
    logs = jaxpop.logging.make_loggers(
        ["wandb"], log_dir=offline, name="pbt", wandb={"table_every_s": 0.0}
    )
    for step in (10, 20):
        for i in range(2):
            gen = pop.active_workers[i].generation_id
            pop.set_eval(i, gen, step, None, float(i + step))
        logs.sync(pop.history)
    best = logs.finish(pop.state)
    run = _runs(offline)["population"]
    assert run.summary["best/value"] == best.value == 20.0
    rows = run.table("exploits")
    assert [(row["before.warmup"], row["after.warmup"]) for row in rows] == [
        (False, 0.05),
        (False, 0.05),
        (0.05, 0.05),
        (0.05, 0.05),
    ]
