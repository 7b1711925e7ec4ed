"""The seed-compatible ``PopulationController``: a thin, thread-safe shell over the core.

The controller adds exactly four things to the pure transitions of :mod:`jaxpop.core`:
a lock (many worker threads may call it at once), a clock (``now`` for each event), a
seeded root key (each event gets its own key, see :mod:`jaxpop.keys`) and durable
storage (:mod:`jaxpop.storage`). Every decision is made by
:func:`jaxpop.core.transition`.

The records ``Checkpoint`` and ``ActiveWorker``, the state ``PopulationState`` and the
seed's extension points (``Mutate``, ``IntKeyDict``, ``make_gen_id``, ``GenerationID``,
``MutateState``, from :mod:`jaxpop.seed`) are re-exported here, where the seed's users
look for them; so are its server helpers (``start_courier_server``,
``get_courier_client``, ``uniquify_server_name``, served by Ray: see
:mod:`jaxpop.distributed.courier`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import operator
import os
import secrets
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from jaxpop import core, storage
from jaxpop import seed as seed_lib
from jaxpop.boundary import copy_out
from jaxpop.core import PopulationState
from jaxpop.distributed.courier import (
    get_courier_client,
    start_courier_server,
    uniquify_server_name,
)
from jaxpop.events import Ask, Eval, Event, Finish, Missing, Reactivate, _ask, _eval
from jaxpop.history import History, start_time
from jaxpop.keys import root_key
from jaxpop.mutators.base import (
    DecisionCounts,
    Mutator,
    check_callable,
    check_number,
    decision_counts,
    is_finite,
)
from jaxpop.records import ACTIVE, GONE, ActiveWorker, Checkpoint
from jaxpop.seed import GenerationID, IntKeyDict, Mutate, MutateState, SeedMutator, make_gen_id
from jaxpop.storage import run as run_lib

__all__ = [
    "ActiveWorker",
    "Checkpoint",
    "Controller",
    "GenerationID",
    "IntKeyDict",
    "Mutate",
    "MutateState",
    "PopulationController",
    "PopulationState",
    "SeedMutator",
    "get_courier_client",
    "make_gen_id",
    "start_courier_server",
    "uniquify_server_name",
]

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
        step: int | None,
        params: Any,
        meta_params: Any,
    ) -> ActiveWorker | None: ...

    def set_eval(
        self, worker_id: int, generation_id: str, step: int, params: Any, value: float
    ) -> None: ...

    def set_eval_and_ask(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
        meta_params: Any = None,
    ) -> ActiveWorker | None: ...

    def checkpoint_missing(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        *,
        exists: Callable[[Any], bool] | None = None,
    ) -> ActiveWorker: ...

    def finish(self, worker_id: int) -> None: ...

    def reactivate(self, worker_id: int) -> None: ...

    @property
    def active_workers(self) -> list[ActiveWorker]: ...

    @property
    def history(self) -> History: ...

    @property
    def state(self) -> PopulationState: ...


class PopulationController:
    """Hands out work to a population of workers and records what they report.

    Args:
      initial_population: one ``meta_params`` pytree per worker; the population size is
        its length.
      mutator: how the population changes: a jaxpop ``Mutator`` (for example
        ``WinnerTakeAllGenetic``) or an instance of a seed-style :class:`Mutate`
        subclass (run through :class:`SeedMutator`). ``mutate=`` (the seed's name)
        is accepted instead; pass exactly one of the two.
      log_dir: a directory to keep the state in, durably (``None``: in memory only).
        Every state-changing call is journaled there before it returns; a controller
        created on a ``log_dir`` that holds a run continues that run exactly where it
        stopped (the stored state wins over ``initial_population`` and ``seed``; the
        population size and the mutator, see :meth:`Mutator.describe`, must be those
        the run was started with); one that holds no run but the file
        :meth:`save_state` writes (copied there) starts from that state, as the seed's
        controller does (:meth:`load_state`; ``seed`` is not used, and a file that
        cannot be loaded raises ``ValueError``). A new controller on the ``log_dir`` of a
        live one in this process (a re-run notebook cell) takes the run over, and the
        older one's calls then raise :class:`~jaxpop.storage.SupersededError`. See
        :mod:`jaxpop.storage`. Parameters that workers pass to ``set_eval`` are stored
        too: with a ``log_dir`` pass small handles (paths) rather than large pytrees.
      seed: seeds the run's root PRNG key (an int in ``[-2**31, 2**64)``; every seed
        in ``[0, 2**64)`` its own run: :func:`jaxpop.keys.root_key`). Given the same
        seed, mutators that use their key (not numpy's global random state) make the
        same decisions for the same sequence of calls, and the same generation ids: a
        worker of one run that reports to another run of its seed is taken for that
        run's. ``None`` (default): a random seed, so each run's ids are its own (as the
        seed's uuids): a worker of another run is refused as unknown.
      durability: ``"process"`` (each record reaches the OS before the call returns:
        survives the death of this process) or ``"fsync"`` (each record is also flushed
        to disk: survives a machine crash, at the cost of one disk flush per call).
      compact_after: the minimum number of journaled events between two snapshots.
      clock: returns the current time in seconds; ``time.time`` by default. Tests pass
        a fake clock.
      reconfigure: resume a ``log_dir`` whose run was started with a mutator of the
        same kind but another configuration (say, a new ``steps_per_exploit``); the
        new configuration is recorded from then on. Without it, that is refused.
      gone_after_s: declare a worker ``"gone"`` when it has not been heard from for this
        many seconds: no call of its own (an ask or an eval) and no newer checkpoint (its
        last report, or the start of the generation it was sent to), checked at every
        call; a controller that starts or resumes counts every worker as heard from then.
        The mutators stop waiting for it and never copy it, until it calls again. A
        worker told to wait (``status == "waiting"``) stays alive by asking. ``None``
        (default): never. See :meth:`finish`.
      stop_when: a :class:`jaxpop.StopWhen` (a target value, a step budget per worker,
        a time budget): checked after every call, it finishes the workers that are done
        (their next ask is answered with their assignment, status ``"finished"``);
        :attr:`done` says when no worker is active any more. A run it ended goes on
        when reopened with a condition it no longer meets (a larger budget): then
        :meth:`reactivate` the workers that are to go on.

    Raises:
      storage.LogDirInUseError: a live controller in another process holds ``log_dir``.
      storage.CorruptLogError: ``log_dir`` holds damaged files (never silently reset).
      storage.RunMismatchError: ``log_dir`` holds a run started with another population
        size or mutator; the message says what differs.
      storage.SeedStateError: ``log_dir`` holds learned_optimization's pickled
        ``population.state`` and no jaxpop run; migrate it first
        (:func:`jaxpop.storage.migrate_seed_state`).

    All methods are safe to call from many threads at once. Call :meth:`close` (or use
    the controller as a context manager) to release ``log_dir``; a controller that is
    garbage collected releases it too. ``docs/protocol.md`` states what each call does.

    >>> from jaxpop import PopulationController, WinnerTakeAllGenetic
    >>> mutator = WinnerTakeAllGenetic(lambda meta: {"lr": meta["lr"] / 2}, steps_per_exploit=10)
    >>> controller = PopulationController([{"lr": 0.1}, {"lr": 0.2}], mutator, seed=0)
    >>> a = controller.maybe_get_worker_data(0, None, 0, None, None)  # worker 0 starts
    >>> a.params, a.meta_params, a.step
    (None, {'lr': 0.1}, 0)
    >>> b = controller.maybe_get_worker_data(1, None, 0, None, None)
    >>> controller.set_eval(0, a.generation_id, 10, "params-a10", 0.5)
    >>> new = controller.set_eval_and_ask(1, b.generation_id, 10, "params-b10", 0.3)
    >>> new.params, new.meta_params, new.step  # the round: each copies the best, mutated
    ('params-b10', {'lr': 0.1}, 10)
    >>> controller.maybe_get_worker_data(0, a.generation_id, 10, "params-a10", None).params
    'params-b10'
    """

    def __init__(
        self,
        initial_population: Sequence[Any],
        mutator: Mutator | Mutate | None = None,
        log_dir: str | None = None,
        seed: int | None = None,
        *,
        mutate: Mutator | Mutate | None = None,
        durability: storage.Durability = "process",
        compact_after: int = 1000,
        clock: Callable[[], float] = time.time,
        reconfigure: bool = False,
        gone_after_s: float | None = None,
        stop_when: core.StopWhen | None = None,
    ):
        if gone_after_s is not None:
            gone_after_s = check_number("gone_after_s", gone_after_s)
        check_callable("clock", clock)
        if isinstance(log_dir, (str, os.PathLike)) and not os.fspath(log_dir):
            raise ValueError(  # (the current directory was journaled into)
                "log_dir is empty: give a directory path, or None to keep the run in memory"
            )
        # (checked with or without a log_dir: a typo in either was taken silently)
        storage.check_durability(durability)
        compact_after = storage.check_compact_after(compact_after)
        if stop_when is not None and not isinstance(stop_when, core.StopWhen):
            raise TypeError(f"stop_when must be a jaxpop.StopWhen, got {type(stop_when).__name__}")
        self._gone_after_s = gone_after_s
        self._stop_when = stop_when
        if (mutator is None) == (mutate is None):
            raise TypeError(
                "PopulationController takes one mutator: pass mutator= (or mutate=, the "
                "seed's name), not " + ("both" if mutator is not None else "neither")
            )
        given = mutator if mutate is None else mutate
        assert given is not None  # exactly one of the two: checked above
        self._mutate = given
        mutator = SeedMutator(self._mutate) if isinstance(self._mutate, Mutate) else self._mutate
        if not isinstance(mutator, Mutator):
            raise TypeError(
                "mutator must be a jaxpop Mutator (e.g. WinnerTakeAllGenetic(...)) or a "
                f"jaxpop.population.Mutate subclass's instance, got {type(mutator).__name__}"
            )
        built = (mutator.config or {}).get("mode", mutator.mode)
        if built != mutator.mode:  # (_replace(mode=...) changes what the history records)
            raise ValueError(
                f"this {type(mutator).__name__} was built with mode={built!r} but says "
                f"mode={mutator.mode!r} (set by _replace?), which does not change how it "
                f"decides: build it with mode={mutator.mode!r} instead"
            )
        self._mutator = mutator
        self._reconfigure = reconfigure
        self._clock = clock
        self._lock = threading.RLock()
        self._in_call = False  # (a call is being applied: see _enter_call)
        _CONTROLLERS.add(self)  # (a forked child's copy gets a lock of its own)
        self.log_dir = log_dir
        now = _as_time(clock())
        # the latest time the clock gave: a time budget is spent by it, so that a clock
        # stepping back (an NTP correction) does not make a run it ended go on
        self._latest = now
        drawn = seed is None  # (each run its own ids: a worker of another run is unknown here)
        if drawn:
            seed = secrets.randbits(64)
        state = core.init(initial_population, mutator, key=root_key(seed), now=now)
        # when the run began, for a time budget: now, or what its log_dir recorded
        self._start = now
        self._run = run_lib.describe_run(state.population_size, mutator)
        self._store: storage.Store | None = None
        if log_dir is not None:
            storage.seed_state.check_not_seed_run(log_dir)  # a seed run: refuse, say how to migrate
            store = storage.Store(
                log_dir,
                run=self._run,
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
                    state = storage.seed_state.adopt_migrated_state(
                        self._in_mode(restored), mutator
                    )
                    # (a run recorded before jaxpop kept its start: its earliest record)
                    self._start = _run_start(store.started, restored.history, now)
                else:
                    core.check_population([w.meta_params for w in state.workers], mutator)
                    # a log_dir that holds only a saved state (copied there, as a seed
                    # user copies population.state): the run goes on from it, as the
                    # seed's controller loads it
                    where = os.path.join(store.log_dir, seed_lib.STATE_FILE)
                    saved = store.read_file(seed_lib.STATE_FILE)
                    if saved is not None:
                        try:
                            state, self._start = self._state_to_load(
                                saved, where, f"remove or rename {where}, or use another log_dir"
                            )
                        except storage.RunMismatchError:
                            raise  # (it says what differs, and what to do)
                        except ValueError as e:
                            raise ValueError(
                                f"{log_dir} holds no run but a saved state that cannot be "
                                f"loaded ({e}); a controller there starts from it: remove "
                                "or rename it to start a fresh run"
                            ) from e
                        logger.info("jaxpop: %s holds no journal: starting from %s", log_dir, where)
                store.start(state, started=self._start)
            except BaseException:
                store.close()
                raise
            self._store = store
            weakref.finalize(self, store.close)
            drawn = drawn and restored is None and saved is None
        else:
            core.check_population([w.meta_params for w in state.workers], mutator)
        if drawn:  # (a run started here, not one resumed or loaded)
            logger.info("jaxpop: a new run with seed %d (drawn: seed=None)", seed)
        self._state = state
        # when each worker last called, in memory only (with gone_after_s). A controller
        # just started (or resumed) has heard from no one yet: every worker has
        # gone_after_s from now to call (workers held waiting when a run was stopped
        # would otherwise be gone at its first call)
        self._seen: dict[int, float] = {}
        if gone_after_s is not None:
            self._seen = dict.fromkeys(range(state.population_size), _as_time(clock()))
        try:
            if mutator.prepare is not None:
                mutator.prepare(state.population_size)
            self._stop_if_over()
        except BaseException:
            self.close()
            raise

    # -- the seed's API -------------------------------------------------------------
    def maybe_get_worker_data(
        self,
        worker_id: int,
        generation_id: str | None,
        step: int | None,
        params: Any,
        meta_params: Any,
    ) -> ActiveWorker | None:
        """Returns new work for ``worker_id``, or ``None`` if it should keep going.

        ``generation_id`` is what the worker is training now (``None`` or ``""`` if it
        has nothing yet). When this returns an ``ActiveWorker``, the worker loads its
        ``params`` (``None``: fresh initialisation), trains with its ``meta_params``,
        and continues at its ``step`` under its ``generation_id``.

        ``step=None`` (accepted, as by the seed) means "not known": the controller
        takes the worker's assigned step if ``generation_id`` is the generation it is
        assigned, else the latest step it recorded for ``generation_id`` (for one it
        never made, the worker's assigned step), so nothing new is recorded for it; a
        mutator's ``ask`` hook is given that step too, never ``None``.
        """
        with self._lock:  # step=None is resolved against the state the ask meets
            if step is None:
                step = self._known_step(worker_id, generation_id)
            reply = self._apply(_ask(params, meta_params, worker_id, generation_id, step))
        return _copy_out(reply.worker)

    def set_eval(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
    ) -> None:
        """Records the evaluation ``value`` of ``params`` at ``step``.

        Lower values are better, unless the mutator's ``mode`` is ``"max"``
        (``history.mode``).

        Raises ``TypeError`` if ``value`` is not a real number (``ValueError`` for one
        no float holds, such as ``10**400``). A NaN or infinite value is stored but never
        wins a selection. An evaluation for a generation this controller never made, a
        kept one, another worker's, or at a step before its generation started is logged
        as a warning and ignored (``docs/protocol.md#eval``).
        """
        event = _eval(params, worker_id, generation_id, step, core.as_value(value))
        self._apply(event)

    def set_eval_and_ask(
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
        ``meta_params`` is passed on to the mutator's ``ask`` hook, as the
        ask's would be. The two are recorded together: if the call raises, neither was.
        """
        # one call: the eval and the ask are journaled together, all or nothing
        value = core.as_value(value)  # (checked before anything is recorded)
        reply = self._apply(
            _eval(params, worker_id, generation_id, step, value),
            _ask(params, meta_params, worker_id, generation_id, step),
        )
        return _copy_out(reply.worker)

    def report(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
        meta_params: Any = None,
    ) -> ActiveWorker | None:
        """Deprecated name of :meth:`set_eval_and_ask` ("report" now names only the run
        report, :mod:`jaxpop.report`)."""
        _warn_report_renamed()
        return self.set_eval_and_ask(worker_id, generation_id, step, params, value, meta_params)

    def checkpoint_missing(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        *,
        exists: Callable[[Any], bool] | None = None,
    ) -> ActiveWorker:
        """The worker could not load its assignment's ``params``; returns where to go instead.

        Call it when loading the ``params`` of the assignment ``(generation_id, step)``
        fails because they are gone (:class:`jaxpop.checkpointing.MissingCheckpointError`:
        deleted, or never finished). The controller records that those params are gone
        (every checkpoint holding them gets ``params=None``, so no exploit hands them out
        again) and moves the worker to the newest checkpoint of its lineage that still
        has params -- in its own generation, or a new generation with the same
        hyperparameters started from an ancestor's checkpoint -- or, if none has, to a
        fresh start (``params=None``) at the root of its lineage.

        Args:
          worker_id, generation_id, step: the worker and the assignment it could not load.
          exists: ``params -> bool``, whether a checkpoint's params can still be loaded
            (``ParamStore.exists``). The controller then skips, and marks missing, the
            older checkpoints of the lineage that are gone too (garbage collection
            deletes most of them), so one call finds the newest that exists. Called
            under the controller's lock. ``None``: only the assignment's params are
            taken to be gone, and each further missing one costs another call.

        The answer never holds params known to be missing, so a worker that loads what
        it is given always gets out::

            while True:
                try:
                    state = store.restore(data.params, target)
                    break
                except MissingCheckpointError:
                    data = controller.checkpoint_missing(
                        worker_id, data.generation_id, data.step, exists=store.exists
                    )

        A worker that was reassigned after it was sent ``(generation_id, step)`` gets
        its current assignment (or, if another worker already reported that one's params
        missing, the way out from it). The mutator decides nothing, but its ask hook
        (:attr:`Mutator.ask <jaxpop.mutators.Mutator.ask>`) sees the worker ask at where
        it is sent, as at its next ask (a ``FixedSchedule`` gives a worker sent back
        before a change point the hyperparameters in force there).

        Raises:
          ValueError: the assignment has ``params=None`` (nothing to load: initialise).
          TypeError: ``generation_id`` is not a str.
        """
        event = Missing(worker_id, generation_id, step, exists)
        worker = _copy_out(self._apply(event).worker)
        assert worker is not None  # a missing checkpoint always gets an assignment
        return worker

    def serialized_state(self) -> bytes:
        """The whole state (and what run it is) as bytes, in jaxpop's safe encoding.

        What :meth:`load_state` takes back. Unlike the seed's (a pickle, and ``None``
        without a ``log_dir``), it is always bytes, and decoding it never runs code.
        """
        return seed_lib.state_to_bytes(self._state, {**self._run, "started": self._start})

    def save_state(self) -> None:
        """Writes :meth:`serialized_state` to ``log_dir/population.jpstate``, atomically.

        Without a ``log_dir``, does nothing (as the seed). The run itself never needs
        it: every call is journaled in the ``log_dir`` before it returns.
        """
        if self._store is not None:  # (it has a log_dir): in the directory it locked
            with self._lock:
                self._store.write_file(seed_lib.STATE_FILE, self.serialized_state())

    def load_state(self, data: bytes | None = None) -> bool:
        """Makes a saved state this controller's state; whether there was one to load.

        Reads ``data`` (bytes from :meth:`serialized_state`) or, if it is ``None``, the
        file :meth:`save_state` wrote in ``log_dir`` (``False`` if there is none, or no
        ``log_dir``, as the seed). With a ``log_dir``, the loaded state is made durable
        there before this returns, and the run continues from it, with a new random root
        key: the generation ids made after the state was saved (by this controller, or
        by a process that crashed) are never made again, and a worker still on one is
        refused as unknown.

        Raises:
          ValueError: the bytes are damaged or not a saved state; the message names
            them. Nothing changes.
          storage.RunMismatchError: the state is of a run with another population size
            or mutator (or configuration, unless ``reconfigure``). Nothing changes.
          OSError: the file cannot be read (or is no regular file). Nothing changes.
        """
        with self._lock:
            self._enter_call()  # (applying a stop calls the mutator)
            try:
                return self._load_state_locked(data)
            finally:
                self._in_call = False

    def _load_state_locked(self, data: bytes | None) -> bool:
        where = "the bytes passed to load_state"
        if data is None:
            if self._store is None:  # (no log_dir)
                return False
            data = self._store.read_file(seed_lib.STATE_FILE)
            if data is None:
                return False
            where = os.path.join(self._store.log_dir, seed_lib.STATE_FILE)
        state, start = self._state_to_load(data, where, "load a state this run saved")
        # a stop it already meets is applied before anything is written, so that
        # nothing changes on failure (the clock's too: read only if needed)
        timed = self._stop_when is not None or self._gone_after_s is not None
        now = _as_time(self._clock()) if timed else None
        latest = self._latest if now is None else max(now, self._latest)
        state, _ = self._stopped(state, start, latest)
        if self._store is not None:
            self._store.check_open()
            self._store.replace(state, started=start)
        self._state, self._start, self._latest = state, start, latest
        if now is not None and self._gone_after_s is not None:  # (heard from now, as a start)
            self._seen = dict.fromkeys(range(state.population_size), now)
        return True

    def _state_to_load(
        self, data: bytes, where: str, elsewhere: str
    ) -> tuple[PopulationState, float]:
        """The state saved as ``data`` (read from ``where``), checked against this run
        (``elsewhere``: what a mismatch's message advises instead),
        with a new random root key (see :meth:`load_state`), and when its run began (as
        its bytes say; a state saved before jaxpop wrote it: this run's start)."""
        state, run = seed_lib.state_from_bytes(data, where)
        run_lib.check_resume(
            where,
            run,
            self._run,
            state.population_size,
            self._reconfigure,
            recorded_in="in the saved state",
            elsewhere=elsewhere,
        )
        return _rekeyed(self._in_mode(state)), run.get("started", self._start)

    # -- read-only views ------------------------------------------------------------
    @property
    def active_workers(self) -> list[ActiveWorker]:
        """The current assignment of every worker, indexed by worker id.

        A new list at each call, as the seed's (editing the list changes nothing here),
        of the controller's own records: read them, never edit a ``meta_params`` or
        ``params`` in them in place, which would change the live run and not its
        journal (copying every assignment at each call would cost O(population)). The
        replies of ``maybe_get_worker_data`` and ``set_eval_and_ask`` are copies.
        """
        return list(self._state.workers)

    @property
    def history(self) -> History:
        """Every checkpoint: ``controller.history[generation_id][step]``.

        The controller's own records, not copies: read them, never edit the
        ``meta_params`` or ``params`` they hold (see :attr:`active_workers`)."""
        return self._state.history

    @property
    def state(self) -> PopulationState:
        """The whole immutable state (a snapshot; later calls do not change it)."""
        return self._state

    @property
    def mutator(self) -> Mutator:
        """The jaxpop ``Mutator`` deciding (a :class:`SeedMutator` for a ``Mutate``)."""
        return self._mutator

    @property
    def done(self) -> bool:
        """Whether the run is over: no worker is active (all finished, or gone). Reads
        no clock: a spent time budget or a silent worker counts from the next call (or
        :meth:`poll`)."""
        return not any(w.is_active for w in self._state.workers)

    def poll(self) -> bool:
        """Applies what the clock says now, as every call does, and returns :attr:`done`:
        a spent ``stop_when`` time budget ends the run, workers not heard from for
        ``gone_after_s`` are declared gone (journaled as any change). For a driver that
        waits for the run to end while no worker calls (all of them hung or dead), where
        ``done`` would wait on."""
        self._apply()
        return self.done

    @property
    def decision_counts(self) -> DecisionCounts:
        """How many decisions the mutator made, and how many copied another member.

        Raises ``TypeError`` for a mutator that does not count (a seed-style ``Mutate``).
        """
        return decision_counts(self._mutator, self._state.mutator_state)

    @property
    def mutate(self) -> Mutator | Mutate:
        """The mutator as it was passed (the seed's name): a ``Mutate`` stays one."""
        return self._mutate

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Finishes background writes and releases ``log_dir``. Idempotent."""
        with self._lock:
            if self._store is not None:
                self._store.close()

    def __enter__(self) -> PopulationController:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "a PopulationController cannot be pickled or copied (it holds a lock, and "
            "with a log_dir the directory's): serve it to other processes "
            "(jaxpop.distributed.ray.serve or population.start_courier_server) and pass "
            "the client, which pickles; or pass controller.serialized_state() and "
            "load_state() it in a new controller"
        )

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the shell ------------------------------------------------------------------
    def _in_mode(self, state: PopulationState) -> PopulationState:
        """A stored ``state`` with this mutator's mode (another only if reconfigured:
        ``describe()`` holds the mode, so resuming checked it)."""
        if state.history.mode == self._mutator.mode:
            return state
        return state._with(history=state.history.with_mode(self._mutator.mode))

    def _known_step(self, worker_id: Any, generation_id: Any) -> int:
        """The step a worker that asks with ``step=None`` is taken to be at: where it
        was sent in its assigned generation (a later step of that generation may be
        left from a run it abandoned when it was sent back)."""
        history, workers = self._state.history, self._state.workers
        i = _worker_index(worker_id, len(workers))  # (a numpy int too)
        if i is None:
            return 0  # (the core refuses the worker id)
        assigned = workers[i]
        if generation_id == assigned.generation_id or not (
            isinstance(generation_id, str) and generation_id in history
        ):
            return assigned.step
        return history.latest(generation_id).step

    def finish(self, worker_id: int) -> None:
        """Worker ``worker_id`` is done: the population stops waiting for it.

        Its status becomes ``"finished"`` (``active_workers[worker_id].status``): the
        mutators leave it out (a synchronous round or a WinnerTakeAllGenetic round goes on
        without it; it is never copied), and its checkpoints stay in the history and
        the report. A new report from it later makes it active again (not the repeat
        of one recorded), unless ``stop_when`` says the run, or this worker, is over.
        Journaled like every call.
        """
        self._apply(Finish(worker_id))

    def reactivate(self, worker_id: int) -> None:
        """Worker ``worker_id``, finished (or gone), takes part again: its status becomes
        ``"active"``, its next ask is answered as an active worker's, and the mutators
        wait for it, compare it and copy it again. Nothing changes for an active worker.

        To go on with a run ``stop_when`` ended: reopen it (same ``log_dir``) with a
        ``stop_when`` it no longer meets (a larger budget, or none), then reactivate
        each worker that is to train on; a worker whose loop has ended (it called
        :meth:`finish`) is better left finished (a synchronous round would wait for
        it). Journaled like every call.

        At a step budget, whether the worker used it is read from its assignment: one
        that a report's decision copied back below the budget (``allow_rewind``) may go
        on from there.

        Raises:
          ValueError: ``stop_when`` says the run, or this worker, is over (the worker
            would be finished again at once), whatever its status; nothing is recorded.
        """
        self._apply(Reactivate(worker_id))

    def _apply(self, *events: Event) -> core.Reply:
        """Applies one call's ``events`` (an eval and the ask after it, say) with what
        they bring about (silent workers declared gone before each, a stop after each),
        then journals them in one append: the call is recorded whole or not at all.
        Returns the last event's reply."""
        gone: list[int] = []
        said: list[str] = []  # the replies' warnings
        with self._lock:
            self._enter_call()
            try:
                reply = self._apply_locked(events, gone, said)
            finally:
                self._in_call = False
        if gone:
            logger.warning(
                "jaxpop: workers %s declared gone (not heard from for %ss)",
                gone,
                self._gone_after_s,
            )
        for warning in said:
            logger.warning(warning)
        return reply

    def _enter_call(self) -> None:
        """Marks a call as being applied (the lock held); refuses one made from inside
        another by the same thread (the lock is reentrant): a mutator's function, the
        clock or ``checkpoint_missing``'s ``exists`` calling the controller would have
        its call overwritten by the outer one's result (or, with a log_dir, the outer
        one refused by the journal)."""
        if self._in_call:
            raise RuntimeError(
                "the controller was called from inside one of its own calls (by a "
                "mutator's function, the clock, or checkpoint_missing's exists=): the "
                "inner call's change would be lost; call it after the outer call returns"
            )
        self._in_call = True

    def _apply_locked(
        self, events: tuple[Event, ...], gone: list[int], said: list[str]
    ) -> core.Reply:
        """:meth:`_apply`'s work, under the lock; the workers declared gone and the
        replies' warnings go to ``gone`` and ``said``. A call that raises leaves the
        controller as it was, the times workers were last heard from included (a refused
        call kept a silent worker from being declared gone)."""
        undo: list[tuple[int, float | None]] = []  # (worker, when last heard from before)
        before = self._state
        try:
            return self._apply_events(events, gone, said, undo)
        except BaseException:
            if self._state is not before:  # taken (an interrupt while compacting): it stands
                raise
            for i, when in reversed(undo):
                if when is None:
                    self._seen.pop(i, None)
                else:
                    self._seen[i] = when
            raise

    def _apply_events(
        self,
        events: tuple[Event, ...],
        gone: list[int],
        said: list[str],
        undo: list[tuple[int, float | None]],
    ) -> core.Reply:
        """:meth:`_apply_locked`'s work; each change to ``_seen`` noted in ``undo``."""
        if self._store is not None:
            self._store.check_open()
        state, now = self._state, self._clock()
        if type(now) is not float or now - now != 0.0:  # (not finite: NaN or inf)
            now = _as_time(now)
        pending: list[core.Changes] = []
        when = self._stop_when
        latest = max(now, self._latest)  # (what the time budget is measured by)
        if when is not None and when.seconds is not None and latest - self._start >= when.seconds:
            # the time budget is spent: the run ends before this call's events, as a
            # controller opened now ends it, so that none of them plays a round (a late
            # report, a finish or a worker declared gone decided one, live only)
            state, changes = self._stop(state, latest, self._start)
            if changes is not None:  # (with the events: a call refused records nothing)
                pending.append(changes)
        reply = core.Reply()  # (a poll's: no event)
        if not events and self._gone_after_s is not None:  # a poll: the silent are gone
            state = self._expire(state, now, pending, gone)
        for event in events:
            if type(event) is Reactivate:
                self._refuse_if_over(state, event, latest)
            if self._gone_after_s is not None:
                i = _worker_index(event.worker_id, state.population_size)
                reactivating = type(event) is Reactivate
                if i is not None and not reactivating:  # a worker that calls is alive
                    undo.append((i, self._seen.get(i)))
                    self._seen[i] = now
                state = self._expire(state, now, pending, gone)
                # one reactivated counts from now (the driver's call on an active
                # one says nothing of it)
                if i is not None and reactivating and state.workers[i].status != ACTIVE:
                    undo.append((i, self._seen.get(i)))
                    self._seen[i] = now
            # a call in flight when the run ended (say) wakes no one, decides nothing
            over = (
                when is not None
                and isinstance(event, (Eval, Ask, Missing))
                and core.stays_done(state, event, latest, when, self._start)
            )
            if over and state.workers[operator.index(event.worker_id)].status == GONE:
                finish = Finish(operator.index(event.worker_id))  # done, not gone
                state, reply = core.finish(
                    state, finish, now, core.event_key(state), mutator=self._mutator
                )
                if reply.changes is not None:
                    pending.append(reply.changes)
            key = core.event_key(state)
            if over and type(event) is Eval:
                state, reply = core.set_eval(
                    state, event, now, key, mutator=self._mutator, wake=False
                )
            else:  # (a finished worker's ask is answered "finished", its Missing too)
                state, reply = core.transition(state, event, now, key, mutator=self._mutator)
            if reply.warning is not None:
                said.append(reply.warning)
            if reply.changes is not None:
                pending.append(reply.changes)
            # (a call that changed nothing can only reach a time budget)
            if when is not None and (reply.changes is not None or when.seconds is not None):
                checkpoint = reply.checkpoint
                state, changes = self._stop(
                    state,
                    latest,
                    self._start,
                    added=() if reply.changes is None else reply.changes.checkpoints,
                    reported=None
                    if checkpoint is None or checkpoint.value is None
                    else (operator.index(event.worker_id), checkpoint.step),
                )
                if changes is not None:
                    pending.append(changes)
                    if isinstance(event, (Ask, Missing)):
                        reply = _told_to_stop(reply, event, changes)
        if pending:
            self._take(state, pending)
        self._latest = latest
        return reply

    def _expire(
        self, state: PopulationState, now: float, pending: list[core.Changes], gone: list[int]
    ) -> PopulationState:
        """``state`` with the workers silent past ``gone_after_s`` declared gone; their
        changes go to ``pending``, their ids to ``gone``."""
        assert self._gone_after_s is not None
        state, changes = core.expire(
            state,
            now,
            core.event_key(state),
            after_s=self._gone_after_s,
            seen=self._seen,
            mutator=self._mutator,
        )
        if changes is not None:
            pending.append(changes)
            gone += [j for j, w in changes.workers if w.status == GONE]
        return state

    def _refuse_if_over(self, state: PopulationState, event: Reactivate, now: float) -> None:
        """Refuses to reactivate a worker ``stop_when`` would finish again at once."""
        when = self._stop_when
        i = _worker_index(event.worker_id, state.population_size)
        if when is None or i is None:
            return  # (a bad worker id is refused by the event)
        why = core.over_for(state, i, now, when, self._start)
        if why is not None:
            raise ValueError(
                f"cannot reactivate worker {i}: the run's stop_when ({when}) says the run "
                f"or the worker is over ({why}); reopen the run with a stop_when it does "
                "not meet yet (a larger budget, or none) to go on"
            )

    def _stop_if_over(self) -> None:
        """Applies ``stop_when`` to a resumed run (a condition given now may already
        hold), journaling what it finishes."""
        with self._lock:
            if self._stop_when is None:
                return
            latest = max(_as_time(self._clock()), self._latest)
            state, changes = self._stopped(self._state, self._start, latest)
            if changes is not None:
                self._take(state, [changes])
            self._latest = latest

    def _stopped(
        self, state: PopulationState, start: float, now: float
    ) -> tuple[PopulationState, core.Changes | None]:
        """``state`` with ``stop_when`` applied to everything it recorded (the run's
        calls so far were not checked against this condition), and the changes, at
        ``now`` (the latest time the clock gave: the caller keeps it as such once the
        changes are taken)."""
        when = self._stop_when
        if when is None:
            return state, None
        return self._stop(
            state,
            now,
            start,
            added=tuple(state.history.checkpoints()) if when.value is not None else (),
        )

    def _stop(
        self, state: PopulationState, now: float, start: float, **recorded: Any
    ) -> tuple[PopulationState, core.Changes | None]:
        """:func:`jaxpop.core.stop` with this controller's ``stop_when`` (set) and
        mutator; ``recorded``: what the call just recorded (``added``, ``reported``)."""
        assert self._stop_when is not None
        key = core.event_key(state)
        return core.stop(
            state, now, key, when=self._stop_when, mutator=self._mutator, start=start, **recorded
        )

    def _take(self, new_state: PopulationState, changes: list[core.Changes]) -> None:
        """Journals ``changes`` in one append, then makes ``new_state`` the state."""
        if self._store is not None:
            self._store.write(*changes)  # if this raises, nothing was journaled
        self._state = new_state  # taken before compacting: an interrupt there keeps it
        if self._store is not None:
            self._store.compact_if_due(new_state)


def _rekeyed(loaded: PopulationState) -> PopulationState:
    """``loaded`` with a new random root key. Ids come from (root key, event index): a
    state loaded with its own key would make again the ids this controller -- or a
    crashed one, or one that loaded it before -- made after the state was saved, for
    other assignments, and a worker still on one would have its reports recorded there.
    With a new key such ids are unknown (their reports are ignored, with a warning)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.blake2b(np.asarray(loaded.key, np.uint32).tobytes() + salt, digest_size=8)
    key = np.frombuffer(digest.digest(), np.uint32).copy()
    return PopulationState(
        loaded.workers, loaded.mutator_state, key, loaded.history, loaded.num_events
    )


def _told_to_stop(reply: core.Reply, event: Ask | Missing, stopped: core.Changes) -> core.Reply:
    """An ask's (or checkpoint_missing's) reply, with the assignment the stop that
    followed it gave the worker (``"finished"``) if it finished it: the worker stops now,
    not at its next call."""
    i = operator.index(event.worker_id)  # (the event applied: a valid worker id)
    for j, worker in stopped.workers:
        if j == i:
            return reply._replace(worker=worker)
    return reply


def _worker_index(worker_id: Any, population_size: int) -> int | None:
    """``worker_id`` as a worker's index, ``None`` if it names none (the core says why)."""
    if isinstance(worker_id, bool):
        return None
    try:
        i = operator.index(worker_id)
    except TypeError:
        return None
    return i if 0 <= i < population_size else None


def _warn_report_renamed() -> None:
    warnings.warn(
        "report(...) is deprecated: the same call is set_eval_and_ask(...)",
        DeprecationWarning,
        stacklevel=3,
    )


def _copy_out(worker: ActiveWorker | None) -> ActiveWorker | None:
    """A reply the worker may edit without changing the history (see jaxpop.boundary)."""
    if worker is None:
        return None
    return ActiveWorker(
        copy_out(worker.params),
        copy_out(worker.meta_params),
        worker.generation_id,
        worker.step,
        worker.status,
    )


def _run_start(recorded: float | None, history: History, now: float) -> float:
    """When a resumed run began: as its ``log_dir`` recorded it; else (recorded before
    jaxpop kept it) its earliest checkpoint's time, if finite (a clock once gave NaN or
    inf), else ``now``."""
    if recorded is not None:
        return recorded
    earliest = start_time(history)
    return earliest if math.isfinite(earliest) else now


# every controller of this process, for _after_fork_in_child
_CONTROLLERS: weakref.WeakSet[PopulationController] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child's copies of the controllers start with a lock of their own: one
    held by another thread of the parent at the fork (a call in flight) would never be
    released here, and every call would wait for good instead of being answered (with a
    log_dir: refused, as a child may not write its parent's run)."""
    for controller in list(_CONTROLLERS):
        controller._lock = threading.RLock()
        controller._in_call = False


os.register_at_fork(after_in_child=_after_fork_in_child)


def _as_time(now: Any) -> float:
    if (
        isinstance(now, (numbers.Real, np.floating, np.integer))
        and not isinstance(now, (bool, np.timedelta64))  # (a count of its unit, not seconds)
        and is_finite(now)  # (False for an int past float64's range too)
    ):
        return float(now)
    raise TypeError(f"the controller's clock must return seconds as a finite float, got {now!r}")
