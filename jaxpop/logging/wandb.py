"""Weights & Biases: one W&B run per worker, grouped under the population.

:class:`WandbLogger` follows W&B's own conventions for a population (as Ray Tune's
``WandbLoggerCallback`` does for trials): every worker is a run of ``job_type="worker"``
named ``worker-<id>`` in one ``group``, so the W&B UI groups the population and can
overlay or aggregate its curves. A run's config holds the worker's current
hyperparameters (``hparams``, flattened with dotted names) and ``generation_id``,
updated (``allow_val_change=True``) whenever an exploit hands the worker new ones.
Metrics are logged against a ``step`` metric of their own (``define_metric``), since an
exploit can move a worker back to the step of the checkpoint it copied.

A run of ``job_type="population"`` in the same group holds what belongs to the whole
population: the ``exploits`` table (one row per exploit: source, hyperparameters before
and after), and at the end the best member's ``best/schedule`` and ``best/lineage``
tables, its summary (``best/value``, ``best/worker``, ...), and ``best_schedule.json``
(``jaxpop.schedules`` JSON, replayable with :func:`jaxpop.schedules.from_json`).

Offline use is W&B's own: ``WANDB_MODE=offline`` (or ``mode="offline"``) writes
everything under ``<dir>/wandb/offline-run-*`` and ``wandb sync`` uploads it later.
Needs ``pip install 'jaxpop[wandb]'`` (wandb >= 0.19.10, for several runs in one
process: ``reinit="create_new"``).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jaxpop.core import check_step
from jaxpop.logging.base import (
    BestMember,
    check_worker_id,
    exploit_record,
    lineage_records,
    require,
    schedule_records,
    table,
    worker_scalars,
)
from jaxpop.mutators import ExploitEvent
from jaxpop.report.data import flatten_hparams

__all__ = ["WandbLogger"]

_STEP_METRICS = ("eval/*", "hparams/*", "exploits/*")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "jaxpop"


def _json_safe(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Non-finite floats as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON)."""
    return {
        k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in flat.items()
    }


class WandbLogger:
    """A :class:`~jaxpop.logging.RunLogger` writing W&B runs (see the module docstring).

    Args:
      group: the W&B group of the population (default: ``jaxpop-<time>-<random>``).
      project, entity: the W&B project and entity (default: W&B's own resolution,
        ``WANDB_PROJECT`` / ``WANDB_ENTITY``).
      dir: where W&B writes its local files (``<dir>/wandb``); created if missing.
      mode: ``"online"``, ``"offline"`` or ``"disabled"`` (default: W&B's resolution,
        ``WANDB_MODE``).
      config: extra config for every run (e.g. the command line), under ``population``.
      tags: W&B tags for every run.
      table_every_s: the exploits table is logged again (W&B ``MUTABLE`` table) at most
        this often while the run goes on, and always at :meth:`log_best` and
        :meth:`close`.
      init_kwargs: more arguments for ``wandb.init``.

    Worker runs open on a worker's first :meth:`log_worker`, the population run on the
    first exploit or :meth:`log_best`. Run ids derive from the group and a token drawn
    here, so a pickled copy (a Ray worker actor, restarted or not) resumes the same
    worker run (``resume="allow"``). Thread-safe.

    Raises:
      ImportError: wandb is not installed (the message names ``jaxpop[wandb]``).
    """

    def __init__(
        self,
        group: str | None = None,
        *,
        project: str | None = None,
        entity: str | None = None,
        dir: str | os.PathLike | None = None,
        mode: str | None = None,
        config: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        table_every_s: float = 30.0,
        init_kwargs: Mapping[str, Any] | None = None,
    ):
        require("wandb", "wandb", "W&B")
        self.group = group or f"jaxpop-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        self._options: dict[str, Any] = {
            "group": self.group,
            "project": project,
            "entity": entity,
            # (absolute: a pickled copy, in a Ray actor started elsewhere, writes here too)
            "dir": None if dir is None else os.path.abspath(os.fspath(dir)),
            "mode": mode,
            "config": dict(config or {}),
            "tags": None if tags is None else list(tags),
            "table_every_s": float(table_every_s),
            "init_kwargs": dict(init_kwargs or {}),
            "token": secrets.token_hex(4),
        }
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.RLock()
        self._runs: dict[int, Any] = {}
        self._failed: dict[str, int] = {}  # failed wandb.init calls per run (pickled)
        self._hparams: dict[int, tuple[Any, Any]] = {}
        self._population: Any = None
        self._exploits: list[dict[str, Any]] = []
        self._published = 0  # exploit rows in the last logged table
        self._published_at = 0.0
        # rows the logger this is a copy of had not logged (within table_every_s): logged
        # by the copy that logs the best member (a resumed driver's), never by a
        # worker's copy (its rows may be older than the run's table by then)
        self._inherited_unpublished = False
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        # the exploits table's rows so far: a copy that logs exploits (a driver's resumed
        # from a pickle) logs the table with them, not without (it is replaced each time)
        # and the failed starts per run: a copy (a rerun, a restarted actor) logs on to
        # the run its original last started (<id>-r<n>), not back to <id>
        return {
            **self._options,
            "exploits": list(self._exploits),
            # (rows this copy inherited unlogged stay so in its own copies, until logged)
            "published": 0 if self._inherited_unpublished else self._published,
            "failed": dict(self._failed),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        options = dict(state)
        exploits = options.pop("exploits", [])  # (none in a pickle from before they were kept)
        published = options.pop("published", len(exploits))
        failed = options.pop("failed", {})
        self._options, self.group = options, options["group"]
        self._setup()
        self._failed.update(failed)
        # (logged whole again once this copy logs an exploit, or the best member if its
        # original had rows to log: a worker's copy does neither)
        self._exploits, self._published = list(exploits), len(exploits)
        self._inherited_unpublished = published < len(exploits)

    # -- runs ---------------------------------------------------------------------------
    def run_id(self, worker_id: int) -> str:
        """The W&B run id of worker ``worker_id``'s run (after a failed start by this
        logger, or by the logger it was pickled from, the id of the next start:
        ``<id>-r<n>``)."""
        return self._run_id(f"w{worker_id}")

    def _run_id(self, key: str) -> str:
        run_id = f"{_slug(self.group)}-{self._options['token']}-{key}"
        failed = self._failed.get(key, 0)
        return f"{run_id}-r{failed}" if failed else run_id

    def _init(self, key: str, **kwargs: Any) -> Any:
        """Starts (or resumes) run ``key`` (``w<worker id>`` or ``population``).

        A failed ``wandb.init`` (the service down) leaves its run id taken in W&B's
        service process for good: every later start with it failed ("run ID ... is in
        use"), and that worker logged nothing more. The next start after a failure uses
        a new id (``<id>-r<n>``): the worker's later evaluations go to a run of the
        same name."""
        wandb = require("wandb", "wandb", "W&B")
        options = self._options
        if options["dir"] is not None:
            os.makedirs(options["dir"], exist_ok=True)
        run_id = self._run_id(key)
        try:
            run = wandb.init(
                project=options["project"],
                entity=options["entity"],
                dir=options["dir"],
                mode=options["mode"],
                group=self.group,
                tags=options["tags"],
                reinit="create_new",  # one run per worker, side by side in one process
                id=run_id,
                resume="allow",
                **{"settings": wandb.Settings(console="off"), **options["init_kwargs"], **kwargs},
            )
        except Exception as e:
            self._failed[key] = self._failed.get(key, 0) + 1
            raise RuntimeError(
                f"wandb.init of run {run_id} failed ({type(e).__name__}: {e}); the next "
                f"call starts it again as run {self._run_id(key)}"
            ) from e
        run.define_metric("step")
        for pattern in _STEP_METRICS:
            run.define_metric(pattern, step_metric="step")
        return run

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this WandbLogger (group {self.group!r}) is closed")

    def _population_run(self) -> Any:
        if self._population is None:
            self._population = self._init(
                "population",
                name="population",
                job_type="population",
                config={"population": self._options["config"]},
            )
        return self._population

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
        """Logs ``step``, ``eval/value``, ``eval/<metric>`` and ``hparams/<name>`` to
        the worker's run; updates its config when its hyperparameters changed."""
        worker_id = check_worker_id(worker_id)
        flat = {} if hparams is None else _json_safe(flatten_hparams(hparams))
        scalars = worker_scalars(value, hparams, metrics)
        with self._lock:
            self._check_open()
            run = self._runs.get(worker_id)
            if run is None:
                run = self._runs[worker_id] = self._init(
                    f"w{worker_id}",
                    name=f"worker-{worker_id}",
                    job_type="worker",
                    config={
                        "worker_id": worker_id,
                        "generation_id": generation_id,
                        "hparams": flat,
                        "population": self._options["config"],
                    },
                )
                self._hparams[worker_id] = (flat, generation_id)
            elif self._hparams.get(worker_id) != (flat, generation_id):
                run.config.update(
                    {"hparams": flat, "generation_id": generation_id}, allow_val_change=True
                )
                self._hparams[worker_id] = (flat, generation_id)
            run.log({"step": check_step(step), **scalars})

    def log_exploit(self, event: ExploitEvent) -> None:
        """Adds a row to the ``exploits`` table and logs ``exploits/count`` at its step."""
        with self._lock:
            self._check_open()
            self._exploits.append(exploit_record(event))
            run = self._population_run()
            run.log({"step": int(event.step), "exploits/count": len(self._exploits)})
            if time.monotonic() - self._published_at >= self._options["table_every_s"]:
                self._publish_exploits()

    def _publish_exploits(self, *, inherited: bool = False) -> None:
        """Logs the exploits table if rows were added since it was last logged (or, with
        ``inherited``, if the logger this is a copy of had rows it never logged)."""
        current = self._published == len(self._exploits) and self._published
        if current and not (inherited and self._inherited_unpublished):
            return
        wandb = require("wandb", "wandb", "W&B")
        columns, data = table(self._exploits, finite_only=True)
        if not columns:
            columns = ["step", "generation_id", "source_generation", "source_step"]
        # (mixed types: a hyperparameter False in one generation and 0.05 in the next;
        # refused, every later publish failed, log_best and close with it)
        exploits = wandb.Table(
            columns=columns, data=data, log_mode="MUTABLE", allow_mixed_types=True
        )
        self._population_run().log({"exploits": exploits})
        self._published, self._published_at = len(self._exploits), time.monotonic()
        self._inherited_unpublished = False

    def log_best(self, best: BestMember) -> None:
        """Logs the best member's summary, the exploits table, the ``best/schedule`` and
        ``best/lineage`` tables and ``best_schedule.json`` to the population run (the
        summary first: a table that fails to log raises with the summary logged)."""
        wandb = require("wandb", "wandb", "W&B")
        with self._lock:
            self._check_open()
            run = self._population_run()
            checkpoint = best.checkpoint
            # the summary first: a table that fails to log (an upload, a value W&B
            # refuses) costs the tables, not the best member's summary
            run.summary.update(
                {
                    "best/value": best.value,
                    "best/step": checkpoint.step,
                    "best/generation_id": checkpoint.generation_id,
                    "best/worker": best.worker,
                    "best/worker_run_id": None if best.worker is None else self.run_id(best.worker),
                    "best/hparams": _json_safe(flatten_hparams(checkpoint.meta_params)),
                }
            )
            self._publish_exploits(inherited=True)
            tables = {}
            for name, rows in (
                ("best/schedule", schedule_records(best.schedule)),
                ("best/lineage", lineage_records(best.lineage)),
            ):
                columns, data = table(rows, finite_only=True)
                tables[name] = wandb.Table(columns=columns, data=data, allow_mixed_types=True)
            run.log(tables)
            try:
                document = best.schedule.to_json(indent=1)
            except (TypeError, ValueError) as e:  # hyperparameters JSON cannot hold
                run.summary["best/schedule_error"] = str(e)
                return
            path = os.path.join(run.dir, "best_schedule.json")
            with open(path, "w") as f:
                f.write(document + "\n")
            run.save(path, base_path=run.dir, policy="end")

    def close(self) -> None:
        """Logs the exploits table if it changed, then finishes every run this logger
        opened in this process. Idempotent. If the table cannot be logged, the worker
        runs are still finished and the error raised; the population run stays open,
        and the next ``close()`` logs the table again and finishes it."""
        error: Exception | None = None
        with self._lock:
            if self._closed:
                return
            if self._exploits:
                try:
                    self._publish_exploits()
                except Exception as e:  # the worker runs are finished all the same
                    error = e
            runs = list(self._runs.values())
            self._runs.clear()
            if error is None:
                self._closed = True
                if self._population is not None:
                    runs.append(self._population)
        for run in runs:
            run.finish()
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return f"WandbLogger(group={self.group!r})"
