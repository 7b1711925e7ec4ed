"""The logging interface: :class:`RunLogger`, the records it takes, and the fan-out.

A logger sees three things: each worker's evaluations (:meth:`RunLogger.log_worker`),
each exploit once (:meth:`RunLogger.log_exploit`, fed by :class:`ExploitFeed`), and the
best final member with its replayable schedule (:meth:`RunLogger.log_best`, a
:class:`BestMember` from :func:`best_member`). :class:`Loggers` sends each call to
several loggers and adds the two calls a driver needs: :meth:`Loggers.sync` and
:meth:`Loggers.finish`. Nothing here imports a logging library.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np

from jaxpop.core import PopulationState, as_value
from jaxpop.history import History
from jaxpop.mutators import ExploitEvent, exploit_events
from jaxpop.records import Checkpoint
from jaxpop.report.data import flatten_hparams, numeric_hparams, with_hparams
from jaxpop.schedules import Piecewise, best_final, from_lineage
from jaxpop.schedules.replay import _best_member

__all__ = [
    "BestMember",
    "ExploitFeed",
    "Loggers",
    "RunLogger",
    "best_member",
    "check_errors",
    "check_worker_id",
    "clean_name",
    "exploit_record",
    "lineage_records",
    "renamed",
    "require",
    "schedule_records",
    "table",
    "worker_scalars",
]

_log = logging.getLogger("jaxpop")
_V = TypeVar("_V")


@runtime_checkable
class RunLogger(Protocol):
    """Where a population's story goes: one object per population, shared by workers.

    Implementations are thread-safe (the examples' workers are threads) and picklable
    (Ray ships one to each worker actor, which opens its own connections lazily).
    """

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
        """One evaluation of worker ``worker_id`` at ``step``: its ``value`` (what it
        reported to the controller), the ``hparams`` (``meta_params``) it trained with,
        extra ``metrics`` and its generation."""

    def log_exploit(self, event: ExploitEvent) -> None:
        """One exploit: a generation that started from another's checkpoint."""

    def log_best(self, best: BestMember) -> None:
        """The best final member and the schedule that replays it (end of a run)."""

    def close(self) -> None:
        """Flushes and ends what this logger opened in this process. Idempotent."""


class BestMember(NamedTuple):
    """The best final member of a run and how to replay it.

    Attributes:
      checkpoint: its evaluated checkpoint (:func:`jaxpop.schedules.best_final`).
      lineage: the checkpoints its parameters descend from, root first.
      schedule: the hyperparameters it trained with, step by step
        (:func:`jaxpop.schedules.from_lineage`; ``schedule.to_json()`` is the
        ``jaxpop.schedules`` JSON that :func:`jaxpop.schedules.from_json` reads back).
      worker: the best worker, whose trajectory ``checkpoint`` scores (``None`` when
        only a history was given).
      mode: ``"min"`` or ``"max"``: which values are better.
    """

    checkpoint: Checkpoint
    lineage: tuple[Checkpoint, ...]
    schedule: Piecewise
    worker: int | None
    mode: str

    @property
    def value(self) -> float:
        """The best member's evaluation: ``checkpoint.value``."""
        value = self.checkpoint.value
        assert value is not None  # the best member is an evaluated checkpoint
        return value


def best_member(source: PopulationState | History) -> BestMember | None:
    """The :class:`BestMember` of a run's state (or history); ``None`` before any
    evaluation.

    >>> from jaxpop import PopulationController
    >>> from jaxpop.mutators import FixedSchedule
    >>> from jaxpop.schedules import constant
    >>> pop = PopulationController([{"lr": 0.1}], FixedSchedule(constant({"lr": 0.1})))
    >>> best_member(pop.state) is None
    True
    >>> data = pop.maybe_get_worker_data(0, None, 0, None, None)
    >>> pop.set_eval(0, data.generation_id, 10, None, 0.5)
    >>> best = best_member(pop.state)
    >>> best.value, best.checkpoint.step, best.worker, best.schedule(5)
    (0.5, 10, 0, {'lr': 0.1})
    """
    state = source if isinstance(source, PopulationState) else None
    history = source.history if isinstance(source, PopulationState) else source
    if not isinstance(history, History):
        raise TypeError(
            f"best_member takes a PopulationState or a History, got {type(source).__name__}"
        )
    worker: int | None = None
    try:  # (given the state, its members are the workers, ranked as in jaxpop report)
        if state is None or state.population_size == 1:
            checkpoint = best_final(history)  # (one worker: its best branch)
            worker = None if state is None else 0
        else:
            worker, checkpoint = _best_member(history, state.workers)
    except ValueError:  # nothing evaluated yet
        return None
    lineage = tuple(history.lineage(checkpoint.generation_id, checkpoint.step))
    schedule = from_lineage(history, checkpoint.generation_id, step=checkpoint.step)
    return BestMember(checkpoint, lineage, schedule, worker, history.mode)


class ExploitFeed:
    """Hands out each exploit event of a growing history once, in creation order.

    >>> feed = ExploitFeed()
    >>> from jaxpop import History
    >>> feed.new(History())
    []

    A feed is plain data (the set of generation ids handed out), so it pickles with the
    :class:`Loggers` that holds it.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def new(self, history: History) -> list[ExploitEvent]:
        """The exploit events of ``history`` not handed out before (thread-safe).

        Found by generation id, not by time: an event whose first checkpoint is older
        than one handed out (a clock stepped back, or a mutator's checkpoint that kept
        its source's time) is handed out too. O(generations) set lookups; an event is
        built only for a generation not handed out before."""
        with self._lock:
            events = exploit_events(history, exclude=self._seen)
            self._seen.update(e.generation_id for e in events)
            return events

    def put_back(self, events: Iterable[ExploitEvent]) -> None:
        """Hands ``events`` out again at the next :meth:`new` (ones not logged after all)."""
        with self._lock:
            self._seen.difference_update(e.generation_id for e in events)

    def __getstate__(self) -> dict[str, Any]:
        return {"seen": sorted(self._seen)}

    def __setstate__(self, state: dict[str, Any]) -> None:  # (older pickles hold "since")
        self._seen, self._lock = set(state["seen"]), threading.Lock()


class Loggers:
    """Several :class:`RunLogger` s as one, plus what a driver calls.

    Every call goes to each logger in order; if some raise, the others are still
    called and the first error is raised after, or, with ``errors="warn"``, each error
    is logged as a warning (``logging.getLogger("jaxpop")``, naming the backend and the
    call) and nothing is raised: a run that should not end for a logging hiccup (a full
    disk, a service down) passes it. An exploit a backend failed to log is not sent to
    it again (nor one a Ctrl-C interrupted; the exploits that :meth:`sync` had not tried
    yet are logged by the next one, or by :meth:`finish`). :meth:`sync` logs the exploits that
    happened since the last call; :meth:`finish` logs the rest, the best member, and
    closes. A ``Loggers`` is itself a :class:`RunLogger` (and a context manager that
    closes it).

    >>> logs = Loggers([])
    >>> logs.sync(History())
    []
    >>> logs.finish(History()) is None
    True
    """

    errors: str = "raise"  # (a Loggers pickled before the option had none)

    def __init__(self, loggers: Iterable[RunLogger], *, errors: str = "raise"):
        self.loggers: tuple[RunLogger, ...] = tuple(loggers)
        for logger in self.loggers:
            if not isinstance(logger, RunLogger):
                raise TypeError(
                    f"{type(logger).__name__} is not a RunLogger: it needs log_worker, "
                    "log_exploit, log_best and close"
                )
        self.errors = check_errors(errors)
        self.feed = ExploitFeed()

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        error: BaseException | None = None
        for logger in self.loggers:
            try:
                getattr(logger, method)(*args, **kwargs)
            except Exception as e:  # the others still get the call
                if self.errors == "warn":
                    _log.warning(
                        "jaxpop: %s.%s failed (the run goes on): %s: %s",
                        type(logger).__name__,
                        method,
                        type(e).__name__,
                        e,
                    )
                else:
                    error = error or e
        if error is not None:
            raise error

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
        """See :meth:`RunLogger.log_worker`."""
        self._each(
            "log_worker",
            worker_id,
            step,
            value,
            hparams,
            metrics=metrics,
            generation_id=generation_id,
        )

    def log_exploit(self, event: ExploitEvent) -> None:
        """See :meth:`RunLogger.log_exploit`."""
        self._each("log_exploit", event)

    def log_best(self, best: BestMember) -> None:
        """See :meth:`RunLogger.log_best`."""
        self._each("log_best", best)

    def sync(self, history: History) -> list[ExploitEvent]:
        """Logs the exploits of ``history`` not logged before; returns them.

        A driver calls it now and then while the run goes on (each call reads the whole
        history once: O(generations)). Every event goes to every logger even if some
        raise (the first error is raised after the last event): a failing backend
        costs the others nothing.

        Raises:
          TypeError: ``history`` is not a :class:`~jaxpop.History` (a controller's is
            ``controller.history``).
        """
        _check_source(history, History, "sync", "history")
        events = self.feed.new(history)
        error: BaseException | None = None
        for index, event in enumerate(events):
            try:
                self.log_exploit(event)
            except Exception as e:  # the next events still go to every logger
                error = error or e
            except BaseException:  # (a Ctrl-C): the events not tried yet are offered again
                self.feed.put_back(events[index + 1 :])
                raise
        if error is not None:
            raise error
        return events

    def finish(self, source: PopulationState | History) -> BestMember | None:
        """The end of a run: :meth:`sync`, :meth:`log_best` (if anything was
        evaluated), then :meth:`close`. Returns the best member."""
        # (checked first: a wrong argument closes nothing, so the call can be made again)
        _check_source(source, (PopulationState, History), "finish", "state")
        history = source.history if isinstance(source, PopulationState) else source
        errors: list[Exception] = []  # a failing step: the next ones run all the same
        best = None
        try:
            try:
                self.sync(history)
            except Exception as e:
                errors.append(e)
            try:
                best = best_member(source)
                if best is not None:
                    self.log_best(best)
            except Exception as e:
                errors.append(e)
        finally:
            try:
                self.close()
            except Exception as e:
                errors.append(e)
        if errors:
            first = errors[0]  # (raised; the others said with it, as notes)
            notes = [f"Loggers.finish also failed: {type(e).__name__}: {e}" for e in errors[1:]]
            if notes:  # (Python 3.10 has no add_note: the attribute it writes)
                first.__notes__ = [*getattr(first, "__notes__", ()), *notes]  # type: ignore[attr-defined]
            raise first
        return best

    def close(self) -> None:
        """Closes every logger (see :meth:`RunLogger.close`)."""
        self._each("close")

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.loggers)

    def __repr__(self) -> str:
        return f"Loggers([{', '.join(type(x).__name__ for x in self.loggers)}])"


def _check_source(source: Any, kinds: type | tuple[type, ...], call: str, field: str) -> None:
    """A ``TypeError`` unless ``source`` is one of ``kinds``, naming what to pass."""
    if not isinstance(source, kinds):
        hint = f" (pass its .{field})" if hasattr(source, field) else ""
        names = " or a ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise TypeError(f"Loggers.{call} takes a {names}, got {type(source).__name__}{hint}")


# -- shared helpers for the backends --------------------------------------------------
def require(module: str, extra: str, what: str) -> ModuleType:
    """Imports ``module`` or raises an ``ImportError`` naming ``pip install 'jaxpop[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"jaxpop's {what} logger needs {module}: pip install 'jaxpop[{extra}]' "
            f"(or pip install {module})"
        ) from e


def check_worker_id(worker_id: Any) -> int:
    """``worker_id`` as an ``int`` if it is a non-negative integer (a numpy one too, as
    the controller takes; not a bool), else a ``ValueError``.

    >>> check_worker_id(np.int64(1))
    1
    """
    if isinstance(worker_id, (bool, np.bool_)) or not isinstance(worker_id, (int, np.integer)):
        raise ValueError(f"worker_id must be a non-negative int, got {worker_id!r}")
    if worker_id < 0:
        raise ValueError(f"worker_id must be a non-negative int, got {worker_id!r}")
    return int(worker_id)


def check_errors(errors: Any) -> str:
    """``errors`` if it is ``"raise"`` or ``"warn"`` (see :class:`Loggers`), else
    ``ValueError``."""
    if errors not in ("raise", "warn"):
        raise ValueError(f'errors must be "raise" or "warn", got {errors!r}')
    return errors


def renamed(items: Mapping[str, _V], name: Callable[[str], str]) -> dict[str, _V]:
    """``items`` under the names ``name`` gives their keys (a backend's
    :func:`clean_name`), in order.

    >>> underscored = lambda key: key.replace(" ", "_")
    >>> renamed({"lr x": 1.0, "lr_x": 2.0}, lambda key: clean_name(key, underscored))
    {'lr_x-daaca835': 1.0, 'lr_x': 2.0}

    Raises:
      ValueError: two keys would be written under one name (a key that is itself
        another's cleaned name, hash and all): no value replaces another.
    """
    out: dict[str, _V] = {}
    origin: dict[str, str] = {}
    for key, value in items.items():
        new = name(key)
        if new in out:
            raise ValueError(
                f"{key!r} and {origin[new]!r} would both be logged as {new!r}: rename one"
            )
        out[new], origin[new] = value, key
    return out


def clean_name(key: str, clean: Callable[[str], str]) -> str:
    """``key``'s name in a backend whose names ``clean`` makes valid: ``key`` itself if
    ``clean`` leaves it as it is, else ``clean(key)`` ending in ``-`` and eight hex
    digits of a hash of ``key``. The same in every call and every process, so a
    hyperparameter keeps its tag whatever the other keys of a call (``lr x`` was
    ``lr_x`` or ``lr_x_2`` as ``lr_x`` came with it or not).

    >>> clean_name("lr", str.lower), clean_name("LR", str.lower)
    ('lr', 'lr-195ffac0')
    """
    cleaned = clean(key)
    if cleaned == key:
        return key
    digest = hashlib.blake2s(key.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{cleaned}-{digest}"  # ("-" and hex digits: every backend takes them)


def worker_scalars(
    value: float, hparams: Any, metrics: Mapping[str, float] | None
) -> dict[str, float]:
    """``eval/value``, ``eval/<metric>`` and ``hparams/<name>`` (numeric, dotted names).

    ``value`` is checked as ``set_eval`` checks it, a metric as a number (a bool is
    0 or 1): ``"0.5"`` was logged as 0.5. A metric may not be named ``"value"``: its
    tag is the reported value's (it replaced it in every backend)."""
    scalars = {"eval/value": _number("value", value)}
    metrics = metrics or {}
    if "value" in metrics:
        raise ValueError(
            "a metric may not be named 'value': eval/value is the value reported with "
            f"set_eval ({value!r:.40}); rename the metric (say, 'eval_value')"
        )
    for name, metric in metrics.items():
        if isinstance(metric, (bool, np.bool_)) or (
            getattr(metric, "dtype", None) == np.bool_ and getattr(metric, "size", 0) == 1
        ):  # (a Python, numpy or jax bool, jnp.isnan(loss) say: 0 or 1)
            metric = int(np.asarray(metric).reshape(()))
        scalars[f"eval/{name}"] = _number(f"metrics[{name!r}]", metric)
    if hparams is not None:
        scalars.update((f"hparams/{k}", v) for k, v in numeric_hparams(hparams).items())
    return scalars


def _number(name: str, value: Any) -> float:
    try:
        return as_value(value)
    except ValueError as e:  # (too large, or masked: named as the metric, not set_eval's)
        raise ValueError(f"{name}: {str(e).removeprefix('set_eval value ')}") from None
    except TypeError:
        raise TypeError(
            f"{name} must be a real number (a float, an int, or a one-element numeric "
            f"array), got {type(value).__name__}: {value!r:.60}"
        ) from None


def _cell(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def exploit_record(event: ExploitEvent) -> dict[str, Any]:
    """An exploit as one flat row: ``step``, ``time``, ``generation_id``,
    ``source_generation``, ``source_step``, ``source_value``, then ``before.<name>`` and
    ``after.<name>`` per hyperparameter (flattened, dotted names)."""
    row: dict[str, Any] = {
        "step": event.step,
        "time": event.time,
        "generation_id": event.generation_id,
        "source_generation": event.source[0],
        "source_step": event.source[1],
        "source_value": event.source_value,
    }
    before = {} if event.meta_params_before is None else flatten_hparams(event.meta_params_before)
    after = flatten_hparams(event.meta_params_after)
    for name in dict.fromkeys([*before, *after]):
        row[f"before.{name}"] = before.get(name)
        row[f"after.{name}"] = after.get(name)
    return row


def schedule_records(schedule: Piecewise) -> list[dict[str, Any]]:
    """A schedule's pieces as rows: ``step`` (where it starts) and each hyperparameter
    (one named ``step`` as ``hparams.step``: see :func:`~jaxpop.report.data.with_hparams`)."""
    items = list(schedule.items())
    return with_hparams([{"step": step} for step, _ in items], [meta for _, meta in items])[1]


def lineage_records(lineage: Sequence[Checkpoint]) -> list[dict[str, Any]]:
    """A lineage's checkpoints as rows: ``step``, ``generation_id``, ``value`` and each
    hyperparameter (one named like those, a bare scalar's ``value`` among them, as
    ``hparams.<name>``: see :func:`~jaxpop.report.data.with_hparams`)."""
    rows = [{"step": c.step, "generation_id": c.generation_id, "value": c.value} for c in lineage]
    return with_hparams(rows, [c.meta_params for c in lineage])[1]


def table(
    rows: Sequence[Mapping[str, Any]], *, finite_only: bool = False
) -> tuple[list[str], list[list[Any]]]:
    """``(columns, data)`` of ``rows``: the union of their keys in first-seen order, a
    missing entry ``None``; ``finite_only``: NaN and infinities become ``None`` too."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    fix = _cell if finite_only else (lambda v: v)
    return columns, [[fix(row.get(c)) for c in columns] for row in rows]
