"""The seed-compatible ``PopulationController``: a thin, thread-safe shell over the core.

The controller adds exactly four things to the pure transitions of :mod:`jaxpop.core`:
a lock (many worker threads may call it at once), a clock (``now`` for each event), a
seeded root key (each event gets its own key, see :mod:`jaxpop.keys`) and durable
storage (:mod:`jaxpop.storage`). Every decision is made by
:func:`jaxpop.core.transition`.

The records ``Checkpoint`` and ``ActiveWorker`` and the state ``PopulationState`` are
re-exported here, where the seed's users look for them.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from jaxpop import core, storage
from jaxpop.boundary import copy_out
from jaxpop.core import PopulationState
from jaxpop.events import Ask, Eval, Event, Missing
from jaxpop.history import History
from jaxpop.keys import root_key
from jaxpop.mutators.base import Mutator
from jaxpop.records import ActiveWorker, Checkpoint

__all__ = ["ActiveWorker", "Checkpoint", "Controller", "PopulationController", "PopulationState"]

logger = logging.getLogger("jaxpop")


class Controller(Protocol):
    """What worker code needs of a controller, wherever the controller runs.

    :class:`PopulationController` (in-process, workers in threads) and
    :class:`jaxpop.distributed.ray.PopulationClient` (a controller in a Ray actor) both
    have it: annotate a worker function's controller with this type and it runs in a
    thread or on a cluster unchanged. A static type only (no ``isinstance``: on a client
    every property is a round trip).
    """

    def maybe_get_worker_data(
        self,
        worker_id: int,
        generation_id: str | None,
        step: int,
        params: Any,
        meta_params: Any,
    ) -> ActiveWorker | None: ...

    def set_eval(
        self, worker_id: int, generation_id: str, step: int, params: Any, value: float
    ) -> None: ...

    def report(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
        meta_params: Any = None,
    ) -> ActiveWorker | None: ...

    def checkpoint_missing(self, worker_id: int, generation_id: str, step: int) -> ActiveWorker: ...

    @property
    def active_workers(self) -> tuple[ActiveWorker, ...]: ...

    @property
    def history(self) -> History: ...

    @property
    def state(self) -> PopulationState: ...


class PopulationController:
    """Hands out work to a population of workers and records what they report.

    Args:
      initial_population: one ``meta_params`` pytree per worker; the population size is
        its length.
      mutator: how the population changes (for example ``WinnerTakeAllGenetic``).
      log_dir: a directory to keep the state in, durably (``None``: in memory only).
        Every state-changing call is journaled there before it returns; a controller
        created on a ``log_dir`` that holds a run continues that run exactly where it
        stopped (the stored state wins over ``initial_population`` and ``seed``; the
        population size and the mutator, see :meth:`Mutator.describe`, must be those
        the run was started with). A new controller on the ``log_dir`` of a live one in
        this process (a re-run notebook cell) takes the run over, and the older one's
        calls then raise :class:`~jaxpop.storage.SupersededError`. See
        :mod:`jaxpop.storage`. Parameters that workers pass to ``set_eval`` are stored
        too: with a ``log_dir`` pass small handles (paths) rather than large pytrees.
      seed: seeds the run's root PRNG key. Given the same seed, mutators that use their
        key (not numpy's global random state) make the same decisions for the same
        sequence of calls.
      durability: ``"process"`` (each record reaches the OS before the call returns:
        survives the death of this process) or ``"fsync"`` (each record is also flushed
        to disk: survives a machine crash, at the cost of one disk flush per call).
      compact_after: the minimum number of journaled events between two snapshots.
      clock: returns the current time in seconds; ``time.time`` by default. Tests pass
        a fake clock.
      reconfigure: resume a ``log_dir`` whose run was started with a mutator of the
        same kind but another configuration (say, a new ``steps_per_exploit``); the
        new configuration is recorded from then on. Without it, that is refused.

    Raises:
      storage.LogDirInUseError: a live controller in another process holds ``log_dir``.
      storage.CorruptLogError: ``log_dir`` holds damaged files (never silently reset).
      storage.RunMismatchError: ``log_dir`` holds a run started with another population
        size or mutator; the message says what differs.

    All methods are safe to call from many threads at once. Call :meth:`close` (or use
    the controller as a context manager) to release ``log_dir``; a controller that is
    garbage collected releases it too.
    """

    def __init__(
        self,
        initial_population: Sequence[Any],
        mutator: Mutator,
        log_dir: str | None = None,
        seed: int = 0,
        *,
        durability: storage.Durability = "process",
        compact_after: int = 1000,
        clock: Callable[[], float] = time.time,
        reconfigure: bool = False,
    ):
        if not isinstance(mutator, Mutator):
            raise TypeError(
                "mutator must be a jaxpop Mutator (e.g. WinnerTakeAllGenetic(...)), "
                f"got {type(mutator).__name__}"
            )
        self._mutator = mutator
        self._clock = clock
        self._lock = threading.RLock()
        self.log_dir = log_dir
        state = core.init(initial_population, mutator, key=root_key(seed), now=clock())
        self._store: storage.Store | None = None
        if log_dir is not None:
            store = storage.Store(
                log_dir,
                run={"population_size": state.population_size, "mutator": mutator.describe()},
                reconfigure=reconfigure,
                durability=durability,
                compact_after=compact_after,
            )
            try:
                restored = store.load()
                if restored is not None:
                    logger.info(
                        "jaxpop: resuming %s at event %d (%d checkpoints)",
                        log_dir,
                        restored.num_events,
                        restored.history.num_checkpoints,
                    )
                    state = restored
                    if state.history.mode != mutator.mode:  # reconfigured (describe() holds it)
                        state = state._with(history=state.history.with_mode(mutator.mode))
                store.start(state)
            except BaseException:
                store.close()
                raise
            self._store = store
            weakref.finalize(self, store.close)
        self._state = state
        if mutator.prepare is not None:
            try:
                mutator.prepare(state.population_size)
            except BaseException:
                self.close()
                raise

    # -- the seed's API -------------------------------------------------------------
    def maybe_get_worker_data(
        self,
        worker_id: int,
        generation_id: str | None,
        step: int,
        params: Any,
        meta_params: Any,
    ) -> ActiveWorker | None:
        """Returns new work for ``worker_id``, or ``None`` if it should keep going.

        ``generation_id`` is what the worker is training now (``None`` or ``""`` if it
        has nothing yet). When this returns an ``ActiveWorker``, the worker loads its
        ``params`` (``None``: fresh initialisation), trains with its ``meta_params``,
        and continues at its ``step`` under its ``generation_id``.
        """
        event = Ask(params, meta_params, worker_id, generation_id, step)
        return _copy_out(self._apply(event).worker)

    def set_eval(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
    ) -> None:
        """Records the evaluation ``value`` (lower is better) of ``params`` at ``step``.

        Raises ``TypeError`` if ``value`` is not a real number. A NaN or infinite value
        is stored but never wins a selection. An evaluation for a generation this
        controller never made is logged as a warning and ignored.
        """
        event = Eval(params, worker_id, generation_id, step, core.as_value(value))
        self._apply(event)

    def report(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
        meta_params: Any = None,
    ) -> ActiveWorker | None:
        """``set_eval``, then ``maybe_get_worker_data`` for the same checkpoint, as one call.

        The loop "evaluate, report, ask what next" in one step, with no other worker's
        call in between: records ``value`` for ``params`` at ``step`` exactly as
        :meth:`set_eval` does, then answers exactly as :meth:`maybe_get_worker_data`
        would for a worker now at ``(generation_id, step)``: ``None`` to keep going,
        or its new assignment (when the mutator moved it on this report). Through
        :mod:`jaxpop.distributed.ray` it is one round trip instead of two.
        ``meta_params`` is passed on to the mutator's ``get_worker_data`` hook, as the
        ask's would be.
        """
        with self._lock:  # set_eval checks its arguments before anything is recorded
            self.set_eval(worker_id, generation_id, step, params, value)
            return self.maybe_get_worker_data(worker_id, generation_id, step, params, meta_params)

    def checkpoint_missing(self, worker_id: int, generation_id: str, step: int) -> ActiveWorker:
        """The worker could not load its assignment's ``params``; returns where to go instead.

        Call it when loading the ``params`` of the assignment ``(generation_id, step)``
        fails because they are gone (:class:`jaxpop.checkpointing.MissingCheckpointError`:
        deleted, or never finished). The controller records that those params are gone
        (every checkpoint holding them gets ``params=None``, so no exploit hands them out
        again) and moves the worker to the newest checkpoint of its lineage that still
        has params -- in its own generation, or a new generation with the same
        hyperparameters started from an ancestor's checkpoint -- or, if none has, to a
        fresh start (``params=None``) at the root of its lineage. The answer never holds
        the missing params, so a worker that loads what it is given always gets out::

            while True:
                try:
                    state = store.restore(data.params, target)
                    break
                except MissingCheckpointError:
                    data = controller.checkpoint_missing(worker_id, data.generation_id, data.step)

        A worker that was reassigned after it was sent ``(generation_id, step)`` gets
        its current assignment (or, if another worker already reported that one's params
        missing, the way out from it). The mutator is not consulted.

        Raises:
          ValueError: the assignment has ``params=None`` (nothing to load: initialise).
        """
        return _copy_out(self._apply(Missing(worker_id, generation_id, step)).worker)

    # -- read-only views ------------------------------------------------------------
    @property
    def active_workers(self) -> tuple[ActiveWorker, ...]:
        """The current assignment of every worker, indexed by worker id."""
        return self._state.workers

    @property
    def history(self) -> History:
        """Every checkpoint: ``controller.history[generation_id][step]``."""
        return self._state.history

    @property
    def state(self) -> PopulationState:
        """The whole immutable state (a snapshot; later calls do not change it)."""
        return self._state

    @property
    def mutator(self) -> Mutator:
        return self._mutator

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Finishes background writes and releases ``log_dir``. Idempotent."""
        with self._lock:
            if self._store is not None:
                self._store.close()

    def __enter__(self) -> PopulationController:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the shell ------------------------------------------------------------------
    def _apply(self, event: Event) -> core.Reply:
        with self._lock:
            if self._store is not None:
                self._store.check_open()
            state, now = self._state, self._clock()
            if type(now) is not float:
                now = _as_time(now)
            new_state, reply = core.transition(
                state, event, now, core.event_key(state), mutator=self._mutator
            )
            journaled = reply.changes is not None and self._store is not None
            if journaled:
                self._store.write(reply.changes)  # if this raises, nothing was journaled
            self._state = new_state  # taken before compacting: an interrupt there keeps it
            if journaled:
                self._store.compact_if_due(new_state)
        if reply.warning is not None:
            logger.warning(reply.warning)
        return reply


def _copy_out(worker: ActiveWorker | None) -> ActiveWorker | None:
    """A reply the worker may edit without changing the history (see jaxpop.boundary)."""
    if worker is None:
        return None
    return ActiveWorker(
        copy_out(worker.params), copy_out(worker.meta_params), worker.generation_id, worker.step
    )


def _as_time(now: Any) -> float:
    if isinstance(now, (numbers.Real, np.floating, np.integer)) and not isinstance(now, bool):
        now = float(now)
        if math.isfinite(now):
            return now
    raise TypeError(f"the controller's clock must return seconds as a finite float, got {now!r}")
