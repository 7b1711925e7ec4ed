"""MLflow: a parent run for the population, a nested run per worker.

:class:`MlflowLogger` follows MLflow's own convention for nested runs: each worker's run
carries the tag ``mlflow.parentRunId`` of the population's run, so the MLflow UI shows
the workers folded under the population. Everything goes through ``MlflowClient`` with
explicit run ids (no fluent "active run", which is per thread), so threads and Ray
actors share one population.

* Parent run (``run_name`` = the population's name): the config as params, the metric
  ``exploits/count`` at each exploit's step, the artifact ``exploits.json`` (one record
  per exploit: source, hyperparameters before and after), and at the end the metric
  ``best/value``, the tags ``best.worker`` / ``best.generation_id`` / ``best.step``,
  and the artifacts ``best/schedule.json`` (``jaxpop.schedules`` JSON: replay it with
  :func:`jaxpop.schedules.from_json`), ``best/lineage.json`` and ``best/summary.json``.
* Worker runs (``worker-<id>``): the starting hyperparameters as params (MLflow params
  cannot change), and by step the metrics ``eval/value``, ``eval/<metric>`` and
  ``hparams/<name>`` (the hyperparameters in force, so exploits show as jumps); the tag
  ``jaxpop.generation_id`` follows the worker's generation.

The tracking URI is MLflow's to resolve (``MLFLOW_TRACKING_URI``; since MLflow 3.7 the
default is ``sqlite:///mlflow.db``, which needs the full ``mlflow`` package; a ``file:``
store needs ``MLFLOW_ALLOW_FILE_STORE=true`` on MLflow >= 3.7), a relative path in it
made absolute when the logger is made (:func:`resolve_tracking_uri`), as is the experiment
(``MLFLOW_EXPERIMENT_NAME``, else ``Default``). Needs ``pip install 'jaxpop[mlflow]'``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import posixpath
import re
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from jaxpop.core import check_step
from jaxpop.logging.base import (
    BestMember,
    check_worker_id,
    clean_name,
    exploit_record,
    lineage_records,
    renamed,
    require,
    worker_scalars,
)
from jaxpop.mutators import ExploitEvent
from jaxpop.report.data import flatten_hparams

__all__ = ["MlflowLogger", "resolve_tracking_uri"]

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for a nested run
WORKER_TAG = "jaxpop.worker"
_PARAM_LIMIT = 500  # characters of a param value every MLflow version accepts
_CUT = "…"  # ends a param value cut to MLflow's limit
_BATCH = 100  # params per log_batch call (MLflow's limit)
_log = logging.getLogger("jaxpop")


def _strict(value: Any) -> Any:
    """Non-finite floats as strings: strict JSON for the artifacts."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _strict_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: _strict(v) for k, v in row.items()} for row in rows]


def _now_ms() -> int:
    return int(time.time() * 1000)


#: What MLflow takes in a metric or param name on every platform (its own check adds
#: ":" off Windows): other characters become "_".
_INVALID_KEY_CHARACTERS = re.compile(r"[^/\w.\- ]")
_KEY_LIMIT = 230  # MLflow's is 250: room for "hparams/" and "-<hash>" (base.clean_name)


def _path_not_unique(name: str) -> bool:
    """MLflow's own rule (``mlflow.utils.validation.path_not_unique``; this copy where an
    MLflow does not have it): a name is refused unless it is a path that resolves to
    itself and does not start with ``/``, ``.`` alone or ``..``."""
    try:
        from mlflow.utils.validation import path_not_unique
    except ImportError:
        norm = posixpath.normpath(name)
        return norm != name or norm == "." or norm.startswith(("..", "/"))
    return bool(path_not_unique(name))


def _key(name: str) -> str:
    """A param's name as MLflow takes it: its characters, at most 250 of them, and a
    path MLflow's rule takes (:func:`_path_not_unique`: a name with an empty, ``.`` or
    ``..`` part is made one part, its ``/`` s as ``_``; one that then starts with ``..``
    or is ``.`` starts with ``_``). MLflow refuses any other name, and the whole batch
    of a call with it."""
    clean = _INVALID_KEY_CHARACTERS.sub("_", name)[:_KEY_LIMIT]
    if _path_not_unique(clean):
        clean = clean.replace("/", "_")
        if _path_not_unique(clean):  # ("", "." or a name starting with "..")
            clean = "_" + clean
    return clean


#: ``sqlite:///<path>`` with a relative path (``sqlite:////<path>`` is an absolute one).
_SQLITE_RELATIVE = re.compile(r"^(sqlite(?:\+\w+)?:///)(?!/)([^?]+)(.*)$", re.DOTALL)


def resolve_tracking_uri(uri: str) -> str:
    """``uri`` with a relative path in it made absolute against the working directory:
    a path (``mlruns``, ``./mlruns``), a ``file:`` URI (``file:mlruns``) or a SQLite
    one (``sqlite:///mlflow.db``); any other URI as it is. (A copy of the logger, or a
    rerun, started in another directory must open the same store.)

    >>> import os
    >>> resolve_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{os.getcwd()}/mlflow.db"
    True
    >>> resolve_tracking_uri("http://localhost:5000")
    'http://localhost:5000'
    """
    sqlite = _SQLITE_RELATIVE.match(uri)
    if sqlite is not None:
        scheme, path, rest = sqlite.groups()
        absolute = os.path.abspath(path)
        if path == ":memory:" or any(c in absolute for c in "?#%"):
            return uri  # (a sqlite URL cannot hold such a path: left as it was given)
        return f"{scheme}{absolute}{rest}"
    if uri.startswith("file:") and not uri.startswith("file:/"):
        # (escaped: a "#", "?" or "%xx" in the directory's name is part of the path)
        path = urllib.parse.unquote(uri[len("file:") :])  # (a URI's path is escaped)
        return pathlib.Path(os.path.abspath(path)).as_uri()
    if uri in ("", "databricks") or re.match(r"^[A-Za-z][\w+.-]*:", uri):
        return uri  # (MLflow's "databricks", or a URI: http:, databricks://, ...)
    return os.path.abspath(uri)  # (a path)


def _refused_for_good(error: Exception) -> bool:
    """Whether MLflow refused a request in a way no retry changes: an ``MlflowException``
    whose HTTP status is a 4xx (``INVALID_PARAMETER_VALUE`` is 400), but for 401, 403
    (credentials can be renewed), 409, 429 and 499 (a conflict, a limit or a cancel
    passes). A connection error or a 5xx may succeed later. (MLflow's REST client gives
    a status it does not map, a proxy's 413 among them, as a 500.)"""
    status = getattr(error, "get_http_status_code", None)
    if not callable(status):
        return False
    try:
        code = int(status())
    except Exception:
        return False
    return 400 <= code < 500 and code not in (401, 403, 409, 429, 499)


def _param_limit() -> int:
    """The longest param value the installed MLflow takes (500 where it does not say)."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    except ImportError:
        return _PARAM_LIMIT
    return int(MAX_PARAM_VAL_LENGTH)


def _param_value(value: Any, limit: int) -> tuple[str, bool]:
    """``str(value)`` as a param value: cut to ``limit`` characters, the last one
    ``…``, when longer; and whether it was cut."""
    text = str(value)
    if len(text) <= limit:
        return text, False
    return text[: limit - len(_CUT)] + _CUT, True


def _param_key(name: str) -> str:
    """A param's name in MLflow: ``name`` if MLflow takes it, else cleaned by
    :func:`_key` and ending in a hash of it (:func:`~jaxpop.logging.base.clean_name`)."""
    return clean_name(name, _key)


def _metric_key(key: str) -> str:
    """A metric's name (``eval/value``, ``hparams/<name>``) in MLflow: the part after its
    prefix named as a param (:func:`_param_key`), so ``hparams/<name>`` matches the
    param."""
    prefix, _, name = key.partition("/")
    return f"{prefix}/{_param_key(name)}"


_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class MlflowLogger:
    """A :class:`~jaxpop.logging.RunLogger` writing MLflow runs (see the module docstring).

    Args:
      name: the parent run's name (default ``"population"``).
      tracking_uri: where MLflow stores runs (default: MLflow's resolution); a relative
        path in it is made absolute here (:func:`resolve_tracking_uri`).
      experiment: the experiment's name (default: ``MLFLOW_EXPERIMENT_NAME``, else
        MLflow's ``Default``); created if missing.
      parent_run_id: attach to this existing parent run instead of creating one (for
        example to continue a resumed population in the same MLflow run: the exploits
        it already holds, in ``exploits.json`` and ``exploits/count``, are not logged
        again; the run is left to its owner to end).
      config: the population's config (e.g. the command line), logged as the parent
        run's params.
      tags: extra tags for the parent run.
      artifact_every_s: ``exploits.json`` is rewritten at most this often while the run
        goes on, and always at :meth:`log_best` and :meth:`close`.

    The parent run is created here, so every pickled copy (a Ray worker actor) nests
    its workers under the same one; only the logger that created it ends it (or a copy
    of it that logs the best member: a driver resumed from its pickle). A worker's
    run is found again by its tags (a restarted actor continues its run). Thread-safe.

    Raises:
      ImportError: mlflow is not installed (the message names ``jaxpop[mlflow]``).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        parent_run_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        artifact_every_s: float = 30.0,
    ):
        mlflow = require("mlflow", "mlflow", "MLflow")
        self.tracking_uri = resolve_tracking_uri(tracking_uri or mlflow.get_tracking_uri())
        self.artifact_every_s = float(artifact_every_s)
        self._setup()
        client = self._client
        if parent_run_id is None:
            experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
            found = client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id if found is not None else client.create_experiment(experiment)
            )
            parent = client.create_run(
                self.experiment_id,
                run_name=name or "population",
                tags={"jaxpop.role": "population", **(tags or {})},
            )
            self.parent_run_id = parent.info.run_id
            self._owner = self._created = True
            self._log_params(self.parent_run_id, dict(config or {}))
        else:
            parent = client.get_run(parent_run_id)  # raises if there is no such run
            self.experiment_id, self.parent_run_id = parent.info.experiment_id, parent_run_id
            self._take_logged_exploits()

    def _setup(self) -> None:
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        self._lock = threading.RLock()
        self._runs: dict[int, str] = {}
        self._generations: dict[int, str | None] = {}  # the tag each worker's run holds
        self._params: dict[int, dict[str, Any]] = {}  # a new run's params not sent yet
        self._exploits: list[dict[str, Any]] = []
        # exploits an earlier logger of an attached parent run logged (by generation id),
        # and how many more it counted than exploits.json lists: not logged again
        self._logged: set[Any] = set()
        self._counted_unlisted = 0
        self._written = 0  # exploit rows in the last exploits.json
        self._written_at = 0.0
        # rows the logger this is a copy of had not written (within artifact_every_s):
        # written by the copy that logs the best member (a resumed driver's), never by
        # a worker's copy (its rows may be older than the file by then)
        self._inherited_unwritten = False
        self._owner = False  # (it created the parent run, or is a copy that logged the best)
        self._created = False  # (it, or the logger it is a copy of, created the parent run)
        self._closed = False
        self._warned_cut = False  # (a param value cut to MLflow's limit)

    def _take_logged_exploits(self) -> None:
        """Takes up the exploits an earlier logger logged to the parent run (a resumed
        population's new ``Loggers`` feeds the history's exploits again): their rows of
        ``exploits.json``, and how many ``exploits/count`` reached, which may be past the
        rows (the file is written every ``artifact_every_s``). The feed gives exploits in
        the history's order, so the ones past the rows are the next that are not in them."""
        history = self._client.get_metric_history(self.parent_run_id, "exploits/count")
        counted = int(max((m.value for m in history), default=0))
        if not counted:
            return
        rows: list[dict[str, Any]] = []
        ours = _PROGRESS_BAR not in os.environ  # (no tqdm bar, unless the user asks one)
        if ours:
            os.environ[_PROGRESS_BAR] = "false"
        try:
            with tempfile.TemporaryDirectory() as scratch:
                path = self._client.download_artifacts(self.parent_run_id, "exploits.json", scratch)
                with open(path) as f:
                    rows = json.load(f)
        except Exception:  # (none written yet: every exploit counted is past the rows)
            rows = []
        finally:
            if ours:
                os.environ.pop(_PROGRESS_BAR, None)
        self._exploits, self._written = list(rows), len(rows)
        self._logged = {row.get("generation_id") for row in rows}
        self._counted_unlisted = max(counted - len(rows), 0)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
            "artifact_every_s": self.artifact_every_s,
            # the rows of exploits.json so far: a copy that logs exploits (a driver's
            # resumed from a pickle) rewrites the file with them, not without
            "exploits": list(self._exploits),
            # (rows this copy inherited unwritten stay so in its own copies, until written)
            "written": 0 if self._inherited_unwritten else self._written,
            "created": self._created,
            # params a transient failure kept: a copy (a rerun, a restarted actor) sends them
            "params": {worker: dict(params) for worker, params in self._params.items()},
            # the exploits an earlier logger of an attached parent run logged (a pickled
            # driver's copy would log them again)
            "logged": sorted(self._logged, key=str),
            "counted_unlisted": self._counted_unlisted,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        require("mlflow", "mlflow", "MLflow")
        state = dict(state)
        exploits = state.pop("exploits", [])  # (none in a pickle from before they were kept)
        written = state.pop("written", len(exploits))
        created = state.pop("created", False)
        params = state.pop("params", {})
        logged = state.pop("logged", [])  # (none in a pickle from before they were kept)
        counted_unlisted = state.pop("counted_unlisted", 0)
        self.__dict__.update(state)
        # a copy ends the parent run only if it logs the best member of a run its original
        # created (a resumed driver's); it writes exploits.json only once it logs an exploit
        self._setup()
        self._exploits, self._written, self._created = list(exploits), len(exploits), created
        self._inherited_unwritten = written < len(exploits)
        self._params.update({worker: dict(kept) for worker, kept in params.items()})
        self._logged, self._counted_unlisted = set(logged), counted_unlisted

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Logs ``params`` (cleaned names), taking each param out of the dict once it is
        sent; a value longer than MLflow takes is cut, ends in ``…``, and is warned
        about (once per logger).

        A batch that fails (whatever the error: MLflow gives a proxy's 413 as a 500) is
        sent again a param at a time, once. Params MLflow then refuses for good
        (:func:`_refused_for_good`: a name or value it never takes) are taken out too,
        with one warning naming them, so only those are lost. A param whose request may
        succeed later (the service down) raises, leaving it and the params not sent
        after it in ``params``."""
        from mlflow.entities import Param

        named = renamed({str(k): v for k, v in params.items()}, _param_key)
        origin = dict(zip(named, params, strict=True))  # a cleaned name's key in params
        limit, items, cut = _param_limit(), [], []
        for name, value in named.items():
            text, was_cut = _param_value(value, limit)
            items.append(Param(name, text))
            if was_cut:
                cut.append(name)
        if cut and not self._warned_cut:
            self._warned_cut = True
            _log.warning(
                "jaxpop: MLflow takes param values of at most %d characters: %s cut "
                "(ending in '…'; warned once)",
                limit,
                ", ".join(cut),
            )
        refused: list[tuple[str, Exception]] = []
        try:
            for start in range(0, len(items), _BATCH):
                batch = items[start : start + _BATCH]
                try:
                    self._client.log_batch(run_id, params=batch)
                except Exception as e:
                    if len(batch) > 1:  # (one param, or the batch's size, refused it)
                        self._log_params_alone(run_id, batch, params, origin, refused)
                        continue
                    if not _refused_for_good(e):
                        raise
                    refused.append((batch[0].key, e))
                for item in batch:
                    params.pop(origin[item.key])
        finally:
            for key, _ in refused:
                params.pop(origin[key], None)
            if refused:
                _log.warning(
                    "jaxpop: MLflow refused the params %s of run %s (%s): not sent again",
                    ", ".join(repr(key) for key, _ in refused),
                    run_id,
                    "; ".join(f"{type(e).__name__}: {e}" for _, e in refused),
                )

    def _log_params_alone(
        self,
        run_id: str,
        batch: list[Any],
        params: dict[str, Any],
        origin: dict[str, str],
        refused: list[tuple[str, Exception]],
    ) -> None:
        """Sends the params of a failed ``batch`` a request each, taking each one sent or
        refused for good (added to ``refused``) out of ``params``; raises at the first
        that may succeed later."""
        for item in batch:
            try:
                self._client.log_batch(run_id, params=[item])
            except Exception as error:
                if not _refused_for_good(error):
                    raise
                refused.append((item.key, error))
            params.pop(origin[item.key])

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this MlflowLogger (run {self.parent_run_id}) is closed")

    def worker_run_id(self, worker_id: int) -> str | None:
        """The id of worker ``worker_id``'s nested run (``None`` if it has none yet)."""
        with self._lock:
            if worker_id in self._runs:
                return self._runs[worker_id]
            found = self._client.search_runs(
                [self.experiment_id],
                filter_string=(
                    f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' "
                    f"and tags.`{WORKER_TAG}` = '{worker_id}'"
                ),
                max_results=1,
            )
            if found:
                self._runs[worker_id] = found[0].info.run_id
            return self._runs.get(worker_id)

    # -- the RunLogger calls ----------------------------------------------------------
    def log_worker(
        self,
        worker_id: int,
        step: int,
        value: float,
        hparams: Any = None,
        *,
        metrics: Mapping[str, float] | None = None,
        generation_id: str | None = None,
    ) -> None:
        """Logs ``eval/value``, ``eval/<metric>`` and ``hparams/<name>`` at ``step`` to
        the worker's nested run (created on its first call, with the hyperparameters as
        params).

        The metrics go out even when the params fail: params MLflow refuses for good
        are dropped with a warning naming them; after a failure that may pass (a
        connection error, a 5xx) they are kept for the next call, and a
        ``RuntimeError`` saying so is raised once the metrics are logged."""
        from mlflow.entities import Metric, RunTag

        worker_id = check_worker_id(worker_id)
        scalars = worker_scalars(value, hparams, metrics)
        with self._lock:
            self._check_open()
            run_id = self.worker_run_id(worker_id)
            if run_id is None:
                run = self._client.create_run(
                    self.experiment_id,
                    run_name=f"worker-{worker_id}",
                    tags={PARENT_TAG: self.parent_run_id, WORKER_TAG: str(worker_id)},
                )
                run_id = self._runs[worker_id] = run.info.run_id
                if hparams is not None:  # (the starting ones: sent until a request succeeds)
                    self._params[worker_id] = dict(flatten_hparams(hparams))
            params_error: Exception | None = None
            if worker_id in self._params:  # (the metrics go out even when these fail)
                try:
                    self._log_params(run_id, self._params[worker_id])
                except Exception as e:  # kept: sent again with the next call
                    params_error = e
                if not self._params[worker_id]:
                    del self._params[worker_id]
            now, step = _now_ms(), check_step(step)
            tags = []
            if generation_id is not None and self._generations.get(worker_id) != generation_id:
                tags.append(RunTag("jaxpop.generation_id", str(generation_id)))
            named = renamed(scalars, _metric_key)
            batch = [Metric(k, float(v), now, step) for k, v in named.items()]
            self._client.log_batch(run_id, metrics=batch, tags=tags)
            if generation_id is not None:  # (only once the tag is sent: else sent again)
                self._generations[worker_id] = generation_id
            if params_error is not None:
                failed = params_error
                raise RuntimeError(
                    f"MLflow did not take worker {worker_id}'s params "
                    f"({type(failed).__name__}: {failed}); its evaluation was logged, the "
                    "params are sent again with its next call"
                ) from failed

    def log_exploit(self, event: ExploitEvent) -> None:
        """Logs ``exploits/count`` at the exploit's step and adds it to ``exploits.json``."""
        with self._lock:
            self._check_open()
            if event.generation_id in self._logged:  # (an earlier logger's: listed)
                return
            self._exploits.append(exploit_record(event))
            if self._counted_unlisted:  # (an earlier logger's: counted, not yet listed)
                self._counted_unlisted -= 1
                return
            self._client.log_metric(
                self.parent_run_id,
                "exploits/count",
                len(self._exploits),
                timestamp=_now_ms(),
                step=int(event.step),
            )
            if time.monotonic() - self._written_at >= self.artifact_every_s:
                self._write_exploits()

    def _write_exploits(self, *, inherited: bool = False) -> None:
        """Writes ``exploits.json`` if rows were added since it was last written (or,
        with ``inherited``, if the logger this is a copy of had rows it never wrote)."""
        current = self._written == len(self._exploits) and self._written
        if current and not (inherited and self._inherited_unwritten):
            return
        self._client.log_dict(self.parent_run_id, _strict_rows(self._exploits), "exploits.json")
        self._written, self._written_at = len(self._exploits), time.monotonic()
        self._inherited_unwritten = False

    def log_best(self, best: BestMember) -> None:
        """Logs ``best/value``, the ``best.*`` tags and the ``best/`` artifacts (the
        replayable schedule among them) to the parent run, and ``exploits.json``."""
        checkpoint = best.checkpoint
        with self._lock:
            self._check_open()
            self._write_exploits(inherited=True)
            self._owner = self._created  # the run's end: a resumed driver's copy ends it
            run_id = self.parent_run_id
            self._client.log_metric(
                run_id, "best/value", best.value, timestamp=_now_ms(), step=checkpoint.step
            )
            for key, value in (
                ("best.worker", best.worker),
                ("best.generation_id", checkpoint.generation_id),
                ("best.step", checkpoint.step),
            ):
                self._client.set_tag(run_id, key, str(value))
            summary = {
                "worker": best.worker,
                "worker_run_id": None if best.worker is None else self.worker_run_id(best.worker),
                "generation_id": checkpoint.generation_id,
                "step": checkpoint.step,
                "value": _strict(best.value),
                "mode": best.mode,
                "hyperparameters": {
                    k: _strict(v) for k, v in flatten_hparams(checkpoint.meta_params).items()
                },
            }
            self._client.log_dict(run_id, summary, "best/summary.json")
            lineage = _strict_rows(lineage_records(best.lineage))
            self._client.log_dict(run_id, lineage, "best/lineage.json")
            try:
                document = best.schedule.to_json(indent=1)
            except (TypeError, ValueError) as e:  # hyperparameters JSON cannot hold
                self._client.set_tag(
                    run_id, "best.schedule_error", _param_value(e, _PARAM_LIMIT)[0]
                )
            else:
                self._client.log_text(run_id, document + "\n", "best/schedule.json")

    def close(self) -> None:
        """Writes ``exploits.json`` if it changed, ends the worker runs this logger
        opened in this process, and the parent run if this logger created it, or is a
        copy of the one that did and logged the best member (a driver resumed from its
        pickle).
        Idempotent. If ``exploits.json`` cannot be written, the worker runs are still
        ended and the error raised; the parent run stays open, and the next
        ``close()`` writes it again and ends it. Params a transient failure kept and no
        later call sent are named in a warning."""
        with self._lock:
            if self._closed:
                return
            for worker_id, unsent in sorted(self._params.items()):
                _log.warning(
                    "jaxpop: MLflow never got the params %s of worker %d (run %s): a "
                    "request for them failed and no later call of the worker sent them",
                    ", ".join(repr(name) for name in unsent),
                    worker_id,
                    self._runs.get(worker_id, "not looked up"),
                )
            self._params.clear()  # (warned once)
            error: Exception | None = None
            if self._exploits:
                try:
                    self._write_exploits()
                except Exception as e:  # the worker runs are ended all the same
                    error = e
            for worker_id, run_id in list(self._runs.items()):
                self._client.set_terminated(run_id)
                del self._runs[worker_id]
            if error is not None:
                raise error  # the parent run stays open: the next close() writes again
            self._closed = True
            if self._owner:
                self._client.set_terminated(self.parent_run_id)

    def __repr__(self) -> str:
        return f"MlflowLogger(parent_run_id={self.parent_run_id!r}, uri={self.tracking_uri!r})"
