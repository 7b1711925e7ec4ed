"""A ``PopulationController`` served as a restartable Ray actor, and workers on Ray.

:func:`serve` starts the controller as a named Ray actor on a durable ``log_dir`` and
returns a :class:`PopulationClient`; :func:`connect` gives any process of the cluster a
client. The client has the controller's synchronous API, so worker code is the same in
threads and on a cluster; :func:`run_workers` / :func:`start_workers` run workers as
restartable actors. ``docs/ray.md`` covers the end of a run, restarts, retries (and why
repeating a call is safe), what travels over the wire, and running on a cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import numbers
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
import ray.exceptions

from jaxpop import core, storage
from jaxpop.core import PopulationState
from jaxpop.history import History
from jaxpop.mutators.base import Mutator
from jaxpop.population import PopulationController, _warn_report_renamed
from jaxpop.records import ActiveWorker

__all__ = [
    "DEFAULT_NAMESPACE",
    "ControllerUnavailableError",
    "PopulationClient",
    "WorkerError",
    "WorkerGroup",
    "connect",
    "run_workers",
    "serve",
    "start_workers",
]

DEFAULT_NAMESPACE = "jaxpop"

_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0
_DONE_POLL_S = 0.2  # how often WorkerGroup.wait(until_done=...) asks whether the run is over
#: actor id -> the handle serve() made, for owning clients dropped before shutdown: Ray
#: ends a non-detached actor once the handle that created it is gone (the handles that
#: connect() gets do not count), so the controller would end at once, not with the driver
_SERVED: dict[Any, Any] = {}
#: failures after which a call is sent again: the actor restarts, is unreachable, or the
#: reply was lost with its node
_RESEND = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
_NAME_RELEASE_S = 5.0  # how long shutdown waits for a killed actor to leave its name
_CLOSE_WAIT_S = 10.0  # how long shutdown waits for the controller to close cleanly
_MAX_TIMEOUT_S = 1e9  # about 31 years: Ray's waits take no more (past it: None, forever)


def _check_seconds(seconds: Any, what: str) -> float:
    """``seconds`` as a finite float >= 0, or a ``TypeError`` / ``ValueError`` naming
    ``what`` (NaN waited forever, ``None`` failed late inside an actor)."""
    if isinstance(seconds, (bool, np.bool_, np.timedelta64)) or not isinstance(
        seconds, numbers.Real
    ):  # (a timedelta64 is a count of its unit: ns taken as seconds)
        raise TypeError(f"{what} must be a number of seconds, got {seconds!r:.40}")
    try:
        as_float = float(seconds)
    except OverflowError:  # an int past float's range
        as_float = math.inf
    if not 0 <= as_float < math.inf:
        raise ValueError(f"{what} must be a finite number >= 0, got {seconds!r:.40}")
    return as_float


def _check_timeout(timeout_s: Any, what: str = "timeout_s") -> float | None:
    """``timeout_s`` as seconds: ``None`` or ``inf`` wait forever."""
    if timeout_s is None:
        return None
    if isinstance(timeout_s, (bool, np.bool_, np.timedelta64)) or not isinstance(
        timeout_s, numbers.Real
    ):
        raise TypeError(f"{what} must be a number of seconds or None, got {timeout_s!r:.40}")
    try:
        seconds = float(timeout_s)
    except OverflowError:  # an int past float's range: not a timeout either
        seconds = math.nan
    if seconds == math.inf:
        return None
    if not 0 < seconds <= _MAX_TIMEOUT_S:
        raise ValueError(
            f"{what} must be positive seconds, at most 1e9 (None or inf: forever), got "
            f"{timeout_s!r}"
        )
    return seconds


class ControllerUnavailableError(RuntimeError):
    """The controller actor did not answer within the client's ``timeout_s``, or is gone."""


class _NoAnswer(ControllerUnavailableError):
    """The controller gave no answer in time (restarting, waiting for its lock, busy)."""


class _NoRunError(ControllerUnavailableError):
    """A restarted controller found no run in its ``log_dir``."""


class WorkerError(RuntimeError):
    """A worker function raised, or its actor died with no restarts left.

    Attributes:
      worker_id: the worker that failed.
    """

    def __init__(self, message: str, worker_id: int):
        super().__init__(message)
        self.worker_id = worker_id


def _was_restarted() -> bool:
    with warnings.catch_warnings():  # Ray 2.60 warns about its own use of actor_id here
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _holds_run(log_dir: str) -> bool:
    """Whether ``log_dir`` holds a jaxpop run (a damaged one too: opening it says so)."""
    try:
        return storage.read_state(log_dir) is not None
    except FileNotFoundError:  # (no such directory)
        return False
    except Exception:
        return True


# -- the controller actor ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ControllerOptions:
    log_dir: str
    seed: int | None
    durability: storage.Durability
    compact_after: int
    lock_timeout_s: float
    gone_after_s: float | None = None
    stop_when: core.StopWhen | None = None


def _exit_is_an_error(method: Callable[..., Any]) -> Callable[..., Any]:
    """A controller call during which user code (a mutator) calls ``sys.exit``: an
    error for the caller, not a crash (Ray would restart the actor, the client send
    the call again, and exit it again, until the client's timeout)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any) -> Any:
        try:
            return method(self, *args)
        except SystemExit as e:
            if hasattr(e, "ray_terminate_msg"):  # Ray's own exit (SIGTERM): a restart
                raise
            raise RuntimeError(
                f"the controller's {method.__name__} called sys.exit({e.code!r})"
            ) from e

    return call


class _ControllerActor:
    """Builds a ``PopulationController`` inside the actor and answers for it.

    A controller that cannot be built (a damaged ``log_dir``, a population of another
    size, a lock that stays taken) is not an actor crash: every call then raises that
    error, so clients see it with its own type rather than an endless restart. (A lock
    is tried again at every call: the run goes on once whoever held it lets it go.)
    """

    def __init__(
        self,
        initial_population: list[Any],
        mutator: Mutator,
        clock: Callable[[], float] | None,
        options: _ControllerOptions,
    ):
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        self._controller: PopulationController | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._opening = threading.Lock()
        self._build = functools.partial(
            PopulationController,
            initial_population,
            mutator,
            options.log_dir,
            options.seed,
            durability=options.durability,
            compact_after=options.compact_after,
            gone_after_s=options.gone_after_s,
            stop_when=options.stop_when,
            **extra,
        )
        self._lock_timeout_s = options.lock_timeout_s
        # (once per incarnation: it reads the whole journal)
        self._no_run = _was_restarted() and not _holds_run(options.log_dir)
        self._open(time.monotonic() + options.lock_timeout_s)
        controller = self._controller
        self._info = {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "log_dir": options.log_dir,
            "restarted": _was_restarted(),
            "resumed_at_event": None if controller is None else controller.state.num_events,
            "started_at": time.time(),
        }

    def _open(self, deadline: float) -> None:
        """Builds the controller, waiting for ``log_dir``'s lock until ``deadline`` (a
        ``time.monotonic()``); else keeps the error its calls raise."""
        with self._opening:  # (an actor with max_concurrency > 1: one builder at a time)
            if self._controller is None:
                self._open_locked(deadline)

    def _open_locked(self, deadline: float) -> None:
        if self._no_run:
            # a new run here would take the restarted run's place: its acknowledged
            # evaluations lost (and, with a seed given, the same seed's generation ids
            # taking its workers' reports as if nothing happened)
            self._error = _NoRunError(
                f"the controller actor restarted on node "
                f"{ray.get_runtime_context().get_node_id()}, where its log_dir "
                f"{self._build.args[2]} holds no run: the log_dir must be storage every "
                "node sees (or pin the controller to one node); serve the run again "
                "where its log_dir is (serve under the name ends this actor)"
            )
            return
        while True:
            try:
                self._controller, self._error = self._build(), None
                return
            except storage.LogDirInUseError as e:
                if time.monotonic() >= deadline:
                    self._error = e
                    return
                time.sleep(0.2)
            except SystemExit as e:  # (a mutator's init or prepare): an error, not a crash
                if hasattr(e, "ray_terminate_msg"):  # Ray's own exit (SIGTERM): a restart
                    raise
                self._error = RuntimeError(
                    f"building the controller called sys.exit({e.code!r})"
                ).with_traceback(None)
                return
            except Exception as e:
                self._error = e
                return

    def start_afresh(self) -> None:
        """``serve``'s, when this actor restarted before it ever answered (killed while
        it was first built): nothing was acknowledged, so a new run is safe."""
        if isinstance(self._error, _NoRunError):
            self._no_run, self._error = False, None
            self._open(time.monotonic() + self._lock_timeout_s)

    def _get(self) -> PopulationController:
        if isinstance(self._error, storage.LogDirInUseError) and not self._closed:
            self._open(time.monotonic())  # once more: whoever held the lock may be gone
            if self._controller is not None and self._error is None:
                self._info["resumed_at_event"] = self._controller.state.num_events
        if self._error is not None:
            raise self._error.with_traceback(None)
        assert self._controller is not None
        if self._closed:
            raise ControllerUnavailableError(
                f"the controller on {self._info['log_dir']} was shut down; serve it again "
                "on the same log_dir to resume the run"
            )
        return self._controller

    @_exit_is_an_error
    def maybe_get_worker_data(
        self, worker_id: int, generation_id: str | None, step: int, params: Any, meta: Any
    ) -> ActiveWorker | None:
        return self._get().maybe_get_worker_data(worker_id, generation_id, step, params, meta)

    @_exit_is_an_error
    def set_eval(
        self, worker_id: int, generation_id: str, step: int, params: Any, value: float
    ) -> None:
        self._get().set_eval(worker_id, generation_id, step, params, value)

    @_exit_is_an_error
    def set_eval_and_ask(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
        meta: Any,
    ) -> ActiveWorker | None:
        return self._get().set_eval_and_ask(worker_id, generation_id, step, params, value, meta)

    @_exit_is_an_error
    def checkpoint_missing(
        self, worker_id: int, generation_id: str, step: int, exists: Any
    ) -> ActiveWorker:
        return self._get().checkpoint_missing(worker_id, generation_id, step, exists=exists)

    @_exit_is_an_error
    def finish(self, worker_id: int) -> None:
        self._get().finish(worker_id)

    @_exit_is_an_error
    def reactivate(self, worker_id: int) -> None:
        self._get().reactivate(worker_id)

    def active_workers(self) -> list[ActiveWorker]:
        return self._get().active_workers

    def done(self) -> bool:
        return self._get().done

    @_exit_is_an_error
    def poll(self) -> bool:
        return self._get().poll()

    def history(self) -> History:
        return self._get().history

    def state(self) -> PopulationState:
        return self._get().state

    def mutator(self) -> Mutator:
        return self._get().mutator

    def info(self) -> dict[str, Any]:
        controller = self._get()
        return {
            **self._info,
            "num_events": controller.state.num_events,
            "cpu_s": time.process_time(),
        }

    def close(self) -> None:
        self._closed = True
        if self._controller is not None:
            self._controller.close()


@functools.cache
def _controller_class() -> Any:
    return ray.remote(_ControllerActor)


# -- the client -------------------------------------------------------------------------
class PopulationClient:
    """A ``PopulationController`` behind a Ray actor, with the same synchronous API.

    Made by :func:`serve` (which *owns* the controller: its :meth:`close` ends it) or
    :func:`connect` (which does not). A client can be passed to Ray tasks and actors;
    the copies do not own the controller. Every method and property is one call to the
    actor (about a millisecond on one machine); ``docs/ray.md`` describes its retries.

    Attributes:
      name, namespace: the actor's name and Ray namespace.
      timeout_s: how long one call waits for an answer, restarts included, before it
        raises :class:`ControllerUnavailableError` (``None``: forever).
    """

    def __init__(
        self,
        actor: Any,
        name: str,
        namespace: str | None,
        *,
        timeout_s: float | None = 120.0,
        owner: bool = False,
        log_dir: str | None = None,
    ):
        self._actor = actor
        self.name = name
        self.namespace = namespace
        self.timeout_s = _check_timeout(timeout_s)
        self._owner = owner
        # the run this client serves: learned before its first call, and checked when the
        # name is found to name another actor (a run on another log_dir is not this one)
        self._log_dir: str | None = log_dir

    # -- the seed's API -------------------------------------------------------------
    def maybe_get_worker_data(
        self,
        worker_id: int,
        generation_id: str | None,
        step: int,
        params: Any,
        meta_params: Any,
    ) -> ActiveWorker | None:
        """As :meth:`jaxpop.PopulationController.maybe_get_worker_data`."""
        return self._call(
            "maybe_get_worker_data", worker_id, generation_id, step, params, meta_params
        )

    def set_eval(
        self, worker_id: int, generation_id: str, step: int, params: Any, value: float
    ) -> None:
        """As :meth:`jaxpop.PopulationController.set_eval`; returns once it is journaled."""
        value = core.as_value(value)  # a TypeError here, before anything is sent
        self._call("set_eval", worker_id, generation_id, step, params, value)

    def set_eval_and_ask(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
        meta_params: Any = None,
    ) -> ActiveWorker | None:
        """As :meth:`jaxpop.PopulationController.set_eval_and_ask`: ``set_eval`` and
        ``maybe_get_worker_data`` in one round trip. Safe to repeat, as both are."""
        value = core.as_value(value)
        return self._call(
            "set_eval_and_ask", worker_id, generation_id, step, params, value, meta_params
        )

    def report(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
        meta_params: Any = None,
    ) -> ActiveWorker | None:
        """Deprecated name of :meth:`set_eval_and_ask`."""
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
        """As :meth:`jaxpop.PopulationController.checkpoint_missing`; ``exists`` travels
        to the controller's actor and runs there (``ParamStore.exists`` works where the
        actor sees the store's directory: the store travels as a new store on it, and
        one unpickled where the directory does not exist raises ``FileNotFoundError``)."""
        return self._call("checkpoint_missing", worker_id, generation_id, step, exists)

    def finish(self, worker_id: int) -> None:
        """As :meth:`jaxpop.PopulationController.finish`."""
        self._call("finish", worker_id)

    def reactivate(self, worker_id: int) -> None:
        """As :meth:`jaxpop.PopulationController.reactivate`."""
        self._call("reactivate", worker_id)

    # -- read-only views ------------------------------------------------------------
    @property
    def active_workers(self) -> list[ActiveWorker]:
        """The current assignment of every worker, indexed by worker id."""
        return self._call("active_workers")

    @property
    def done(self) -> bool:
        """As :attr:`jaxpop.PopulationController.done`: no worker is active any more
        (all finished -- ``stop_when`` -- or gone), so the run is over."""
        return self._call("done")

    def poll(self) -> bool:
        """As :meth:`jaxpop.PopulationController.poll`: applies what the clock says now
        (a spent time budget, workers silent past ``gone_after_s``), then :attr:`done`."""
        return self._call("poll")

    @property
    def history(self) -> History:
        """Every checkpoint (a copy: transferred whole, O(history))."""
        return self._call("history")

    @property
    def state(self) -> PopulationState:
        """The whole immutable state (a copy: transferred whole, O(history))."""
        return self._call("state")

    @property
    def mutator(self) -> Mutator:
        """A copy of the controller's mutator."""
        return self._call("mutator")

    @property
    def log_dir(self) -> str:
        """The controller's ``log_dir`` (an absolute path)."""
        if self._log_dir is None:
            self._log_dir = self.info()["log_dir"]
        return self._log_dir

    @property
    def actor(self) -> Any:
        """The Ray actor handle (for ``ray.kill``, monitoring, ...)."""
        return self._actor

    def info(self) -> dict[str, Any]:
        """About the controller's current incarnation.

        ``pid``, ``node_id``, ``log_dir``, ``restarted`` (whether Ray restarted it),
        ``resumed_at_event`` (events it found in ``log_dir`` when it started),
        ``num_events`` (now), ``started_at`` (Unix time) and ``cpu_s`` (the CPU seconds
        its process has used: how busy the controller is).
        """
        return self._call("info")

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Ends the controller if this client owns it (see :meth:`shutdown`); idempotent.

        A client from :func:`connect`, or a copy passed to a task, owns nothing: its
        ``close`` does nothing.
        """
        if self._owner:
            self.shutdown()

    def shutdown(self) -> None:
        """Closes the controller (finishes its writes, releases ``log_dir``) and ends its
        actor for every client, whoever started it. Idempotent. A controller that does
        not close within 10 s (stuck in its mutator, say) is killed: its journal holds
        every call it acknowledged."""
        # a dead or unreachable controller: its lock went with its process
        # (a controller stuck in its mutator is killed after a while: timeout_s=None
        # would wait for good)
        wait_s = _CLOSE_WAIT_S if self.timeout_s is None else min(self.timeout_s, _CLOSE_WAIT_S)
        with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
            ray.get(self._actor.close.remote(), timeout=wait_s)
        _kill(self._actor, self.name, self.namespace)
        _SERVED.pop(self._actor._actor_id, None)
        self._owner = False

    def __enter__(self) -> PopulationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self, _served: dict[Any, Any] = _SERVED) -> None:
        # an owning client dropped before shutdown: its handle keeps the actor alive
        # until the driver exits (or a shutdown), as documented. (At interpreter exit
        # the module's globals may be gone: the dict is bound here, and nothing raises.)
        try:
            if self._owner:
                _served[self._actor._actor_id] = self._actor
        except Exception:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self._actor, self.name, self.namespace, self.timeout_s, self._log_dir)
        return _rebuild_client, args

    def __repr__(self) -> str:
        return f"PopulationClient(name={self.name!r}, namespace={self.namespace!r})"

    # -- calls and retries ----------------------------------------------------------
    def _call(self, method: str, *args: Any, until: float | None = None) -> Any:
        """Calls the controller's ``method``, resending it through restarts, for at most
        ``timeout_s`` (and until ``time.monotonic()`` reaches ``until``, if given)."""
        start = time.monotonic()
        deadline = None if self.timeout_s is None else start + self.timeout_s
        if until is not None:
            deadline = until if deadline is None else min(deadline, until)
        if self._log_dir is None and method != "info":
            # the run this client serves, learned before its first call (nothing it sends
            # can then land in another run: see _find_actor), within the call's time
            self._log_dir = self._call("info", until=deadline)["log_dir"]
        backoff = _FIRST_BACKOFF_S
        ref = self._remote(method).remote(*args)
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return ray.get(ref, timeout=remaining)
            except ray.exceptions.RayTaskError as e:  # the controller raised: no retry
                cause = getattr(e, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from e
                raise
            except ray.exceptions.GetTimeoutError as e:
                raise self._unavailable(method, start, e) from e
            except ray.exceptions.ActorDiedError as e:
                if getattr(e, "actor_init_failed", False):  # (Ray retries it for good)
                    raise ControllerUnavailableError(
                        f"the controller actor {self.name!r} (namespace "
                        f"{self.namespace!r}) could not be built (its arguments could not "
                        f"be unpickled there: a module its nodes cannot import?): {e}"
                    ) from e
                if not self._find_actor(deadline):
                    raise ControllerUnavailableError(
                        f"the controller actor {self.name!r} (namespace {self.namespace!r}) "
                        "died and is not coming back (max_restarts used up, killed without "
                        "restart, or its driver exited); serve it again on the same log_dir "
                        f"to resume the run. Ray said: {e}"
                    ) from e
                error: Exception = e
            except _RESEND as e:
                error = e
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise self._unavailable(method, start, error) from error
            pause = backoff if deadline is None else min(backoff, deadline - now)
            time.sleep(pause)
            backoff = min(2 * backoff, _MAX_BACKOFF_S)
            ref = self._remote(method).remote(*args)

    def _remote(self, method: str) -> Any:
        """The actor's ``method`` (a :class:`ControllerUnavailableError` if the actor
        under the name is of another kind)."""
        try:
            return getattr(self._actor, method)
        except AttributeError:
            raise ControllerUnavailableError(
                f"the actor named {self.name!r} (namespace {self.namespace!r}) is not a "
                f"jaxpop controller (it has no method {method!r})"
            ) from None

    def _find_actor(self, deadline: float | None) -> bool:
        """After Ray said the actor died (a restarting one is unavailable, not dead),
        looks the name up again: ``False`` if nothing serves it any more (the same dead
        actor under the name: Ray keeps its name until it is killed). Another actor
        under the name (a new ``serve``) is taken only if it serves this client's run
        (its ``log_dir``); another run's is a :class:`ControllerUnavailableError`."""
        try:
            actor = ray.get_actor(self.name, namespace=self.namespace)
        except ValueError:
            return False
        if actor._actor_id == self._actor._actor_id:
            return False
        if not hasattr(actor, "info"):  # (an actor of another kind took the name)
            raise ControllerUnavailableError(
                f"the controller actor {self.name!r} (namespace {self.namespace!r}) died, "
                "and the name now holds an actor that is not a jaxpop controller"
            )
        if self._log_dir is None:  # (whether it serves this client's run: unknown)
            raise ControllerUnavailableError(
                f"the controller actor {self.name!r} (namespace {self.namespace!r}) died "
                "before this client learned which run it serves, and the name now holds "
                "another actor, which may serve another run: connect to it again"
            )
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            theirs = ray.get(actor.info.remote(), timeout=remaining)["log_dir"]
        except ray.exceptions.RayError:
            return True  # not answering yet: the caller tries again, then asks again
        if theirs != self._log_dir and os.path.realpath(theirs) != os.path.realpath(self._log_dir):
            raise ControllerUnavailableError(
                f"the controller actor {self.name!r} (namespace {self.namespace!r}) died, "
                f"and the name now serves another run (log_dir {theirs!r}), not this "
                f"client's ({self._log_dir!r}): serve this run again on its log_dir"
            )
        self._actor = actor
        self._owner = False  # (another serve's actor: its close is its own client's)
        return True

    def _unavailable(self, method: str, start: float, error: BaseException) -> Exception:
        return _NoAnswer(
            f"no answer to {method} from the controller actor {self.name!r} (namespace "
            f"{self.namespace!r}) within {time.monotonic() - start:.1f} s (timeout_s="
            f"{self.timeout_s}): it is restarting, waiting for its log_dir's lock, or its "
            f"node is unreachable. Last error: {type(error).__name__}: {error}"
        )


def _rebuild_client(
    actor: Any,
    name: str,
    namespace: str | None,
    timeout_s: float | None,
    log_dir: str | None = None,
) -> PopulationClient:
    return PopulationClient(actor, name, namespace, timeout_s=timeout_s, log_dir=log_dir)


#: the actor options ``serve`` and ``start_workers`` set themselves -> what says them
#: there: ``actor_options`` may not (a name of its own, and clients looked up the other;
#: Ray's own retries, and a call was sent twice)
_SERVE_OWN = {
    "name": "name=",
    "namespace": "namespace=",
    "max_restarts": "max_restarts=",
    "max_task_retries": "nothing: the client resends each call itself",
    "lifetime": "detached=",
}
_WORKERS_OWN = {
    "name": "name=",
    "namespace": "namespace=",
    "max_restarts": "max_restarts=",
    "max_task_retries": "max_restarts= (a restarted worker runs its function again)",
}


def _checked_options(options: dict[str, Any] | None, own: dict[str, str], who: str) -> dict:
    """``actor_options`` (``{}`` for ``None``), refusing those ``who`` sets itself."""
    taken = sorted(set(options or {}) & set(own))
    if taken:
        raise ValueError(
            f"{who}'s actor_options may not set {taken}: {who} sets "
            + ", ".join(f"{k!r} (pass {own[k]})" for k in taken)
        )
    return dict(options or {})


def serve(
    initial_population: Sequence[Any],
    mutator: Mutator,
    *,
    log_dir: str | os.PathLike,
    name: str,
    namespace: str | None = DEFAULT_NAMESPACE,
    seed: int | None = None,
    durability: storage.Durability = "process",
    compact_after: int = 1000,
    clock: Callable[[], float] | None = None,
    gone_after_s: float | None = None,
    stop_when: core.StopWhen | None = None,
    max_restarts: int = -1,
    detached: bool = False,
    num_cpus: float = 0.0,
    lock_timeout_s: float = 60.0,
    timeout_s: float | None = 120.0,
    actor_options: dict[str, Any] | None = None,
    start_timeout_s: float | None = 300.0,
) -> PopulationClient:
    """Starts a ``PopulationController`` on ``log_dir`` as the Ray actor ``name``.

    Args:
      initial_population, mutator, seed, durability, compact_after: as for
        :class:`jaxpop.PopulationController`. A ``log_dir`` that already holds a run is
        resumed (the stored state wins, as in-process).
      log_dir: required: the controller's durable state, what a restarted actor resumes
        from. A path the node that runs the controller can write, with a working
        ``flock`` (a local disk of a pinned node, or a POSIX network filesystem); made
        absolute here.
      name: the actor's name, for :func:`connect`.
      namespace: its Ray namespace (``"jaxpop"``; ``None``: the current job's).
      clock: the controller's clock (``None``: ``time.time``), run inside the actor.
      gone_after_s, stop_when: as for :class:`jaxpop.PopulationController`: when a
        silent worker is declared gone, and when the run is over (a target value, a step
        budget, a time budget). Workers learn it from their asks (status
        ``"finished"``); the driver from :attr:`PopulationClient.done`, which
        ``run_workers(..., until_done=client)`` watches to end the worker actors.
      max_restarts: how often Ray restarts the actor after its process dies (``-1``:
        always).
      detached: keep the actor alive after this driver exits (end it with
        :meth:`PopulationClient.shutdown`); otherwise it ends with this driver (or at
        ``shutdown``), whether or not the driver keeps the returned client.
      num_cpus: CPUs the actor reserves (0: it never keeps a worker from scheduling).
      lock_timeout_s: how long a (re)started actor waits for ``log_dir``'s lock.
      timeout_s: the client's per-call timeout (see :class:`PopulationClient`), from
        the controller's first answer on.
      actor_options: more ``ActorClass.options`` (``resources``, ``scheduling_strategy``
        to pin the controller to a node, ``runtime_env``, ...; not those ``serve`` sets:
        ``name``, ``namespace``, ``max_restarts``, ``max_task_retries``, ``lifetime``).
      start_timeout_s: how long to wait for that first answer: the actor's scheduling,
        its process's start and imports, ``log_dir``'s lock (up to ``lock_timeout_s``)
        and the run's resume (``None``: forever). A start that takes longer raises
        :class:`ControllerUnavailableError` and ends the actor.

    Returns the owning client: once the controller is up, or raising what kept it from
    starting (``storage.LogDirInUseError``, ``storage.CorruptLogError``, ``ValueError``,
    ...); a name already in use raises ``ValueError``.
    """
    if not isinstance(mutator, Mutator):
        raise TypeError(
            "mutator must be a jaxpop Mutator (e.g. WinnerTakeAllGenetic(...)), "
            f"got {type(mutator).__name__}"
        )
    if log_dir is None or not os.fspath(log_dir):
        raise ValueError("serve needs a log_dir: a restarted controller resumes from it")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if stop_when is not None and not isinstance(stop_when, core.StopWhen):
        raise TypeError(f"stop_when must be a jaxpop.StopWhen, got {type(stop_when).__name__}")
    timeout_s = _check_timeout(timeout_s)  # (before the actor exists: none is left behind)
    start_timeout_s = _check_timeout(start_timeout_s, "start_timeout_s")
    lock_timeout_s = _check_seconds(lock_timeout_s, "lock_timeout_s")
    options = _ControllerOptions(
        os.path.abspath(os.fspath(log_dir)),
        seed,
        durability,
        compact_after,
        lock_timeout_s,
        gone_after_s,
        stop_when,
    )
    actor_kwargs: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "max_restarts": max_restarts,
        "max_task_retries": 0,  # the client resends, with its own deadline
        "num_cpus": num_cpus,
    }
    if detached:
        actor_kwargs["lifetime"] = "detached"
    actor_kwargs.update(_checked_options(actor_options, _SERVE_OWN, "serve"))
    for attempt in range(2):
        try:
            actor = (
                _controller_class()
                .options(**actor_kwargs)
                .remote(list(initial_population), mutator, clock, options)
            )
            break
        except ValueError as e:
            taken = getattr(ray.exceptions, "ActorAlreadyExistsError", None)
            if not (isinstance(e, taken) if taken else "already taken" in str(e)):
                raise
            # a controller dead for good keeps its name until it is killed: serving the
            # run again, as its clients are told to, frees it
            if attempt == 0 and _free_if_dead(name, namespace):
                continue
            raise ValueError(
                f"a Ray actor named {name!r} already exists in namespace {namespace!r}: use "
                f"connect({name!r}) to reach it, or shut it down first"
            ) from e
    # (the start is waited for apart from the calls: a short timeout_s, for calls, would
    # otherwise have to cover a process start and imports on a busy node)
    client = PopulationClient(actor, name, namespace, timeout_s=start_timeout_s, owner=True)
    until = None if start_timeout_s is None else time.monotonic() + start_timeout_s
    try:
        try:
            client._log_dir = client._call("info", until=until)["log_dir"]
        except _NoRunError:  # (restarted before its first answer: nothing acknowledged)
            left = None if until is None else max(until - time.monotonic(), 0.0)
            try:
                ray.get(actor.start_afresh.remote(), timeout=left)
            except ray.exceptions.GetTimeoutError as e:
                raise _NoAnswer(f"no answer to start_afresh: {e}") from e
            client._log_dir = client._call("info", until=until)["log_dir"]
    except BaseException as error:
        ray.kill(actor, no_restart=True)
        client._owner = False  # (nothing to keep alive)
        if isinstance(error, _NoAnswer):
            raise ControllerUnavailableError(
                f"the controller actor {name!r} (namespace {namespace!r}) did not start "
                f"within start_timeout_s={start_timeout_s} s: {error}"
            ) from error
        raise
    client.timeout_s = timeout_s
    return client


def _kill(actor: Any, name: str, namespace: str | None) -> None:
    """Kills ``actor`` (no restart) and waits, a few seconds at most, for its name to be
    free: a kill lands a moment later, and until then the name still finds the actor
    (a connect() or a serve() under it would reach one being killed)."""
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + _NAME_RELEASE_S
    while time.monotonic() < deadline:
        try:
            named = ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        if named._actor_id != actor._actor_id:
            return
        time.sleep(0.05)


def _free_if_dead(name: str, namespace: str | None, timeout_s: float = 10.0) -> bool:
    """Kills the actor ``name`` if it is dead for good (its restarts used up, or it
    could not be built) or serves no run (restarted where its log_dir holds none);
    whether it did. One that does not answer within ``timeout_s`` (busy, restarting) or
    is not a controller is left."""
    try:
        actor = ray.get_actor(name, namespace=namespace)
        ray.get(actor.info.remote(), timeout=timeout_s)
    except AttributeError:  # (another kind of actor under the name: alive, not ours)
        return False
    except ray.exceptions.ActorDiedError:
        _kill(actor, name, namespace)
        return True
    except ray.exceptions.RayTaskError as e:  # (a restart that found no run serves none)
        if isinstance(getattr(e, "cause", None), _NoRunError):
            _kill(actor, name, namespace)
            return True
        return False
    except (ValueError, ray.exceptions.RayError):  # gone already, or alive (restarting)
        return False
    return False


def connect(
    name: str,
    *,
    namespace: str | None = DEFAULT_NAMESPACE,
    timeout_s: float | None = 120.0,
    wait_s: float = 0.0,
) -> PopulationClient:
    """A client of the controller actor ``name``, from any process of the cluster.

    Args:
      name, namespace: as given to :func:`serve`.
      timeout_s: the client's per-call timeout (see :class:`PopulationClient`).
      wait_s: how long to wait for the actor to appear (workers started before it).

    The client learns the run the actor serves (its ``log_dir``) before it is returned,
    waiting for a controller still starting until ``wait_s`` is up, and ``timeout_s``
    at least.

    Raises :class:`ControllerUnavailableError` if no actor has that name by then, or
    its controller does not answer by then.
    """
    timeout_s = _check_timeout(timeout_s)
    deadline = time.monotonic() + _check_seconds(wait_s, "wait_s")
    while True:
        try:
            actor = ray.get_actor(name, namespace=namespace)
        except ValueError as e:
            if time.monotonic() >= deadline:
                raise ControllerUnavailableError(
                    f"no controller actor named {name!r} in namespace {namespace!r}; start "
                    "one with jaxpop.distributed.ray.serve(...)"
                ) from e
            time.sleep(0.2)
            continue
        # the run it serves, learned now: a controller that dies and whose name another
        # run's takes cannot then receive this client's calls. A controller still
        # starting (its name is there as soon as serve made the actor) is waited for
        # until wait_s is up, and timeout_s at least
        client = PopulationClient(actor, name, namespace, timeout_s=None)
        start = time.monotonic()
        until = None if timeout_s is None else max(deadline, start + timeout_s)
        try:
            client._log_dir = client._call("info", until=until)["log_dir"]
        except _NoAnswer as e:  # (its message named the learning call's timeout_s, None)
            raise _NoAnswer(
                f"connect({name!r}): no answer from the controller actor (namespace "
                f"{namespace!r}) within {time.monotonic() - start:.1f} s (wait_s={wait_s}, "
                f"timeout_s={timeout_s}): it is starting, restarting, waiting for its "
                f"log_dir's lock, or its node is unreachable. Last error: {e.__cause__!r}"
            ) from e.__cause__
        client.timeout_s = timeout_s
        return client


# -- workers ----------------------------------------------------------------------------
class _WorkerActor:
    """Runs one worker function; Ray calls ``run`` again after a restart."""

    def run(
        self, fn: Callable[..., Any], worker_id: int, args: tuple, kwargs: dict[str, Any]
    ) -> Any:
        try:
            result = fn(worker_id, *args, **kwargs)
        except SystemExit as e:  # raised by the function: an error, not a crash to restart
            if hasattr(e, "ray_terminate_msg"):  # Ray's own exit (SIGTERM): a restart
                raise
            raise RuntimeError(f"worker {worker_id}'s function called sys.exit({e.code!r})") from e
        if inspect.iscoroutine(result):  # (Ray failed to pickle it; its body never ran)
            result.close()
            raise TypeError(
                f"worker {worker_id}'s function {getattr(fn, '__name__', fn)!r} is a "
                "coroutine function (async def): a worker function is a plain function "
                "that runs to its end (run a coroutine inside it with asyncio.run)"
            )
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            # (Ray would stream it: the group's result was its first value, and the
            # function stopped there, silently)
            raise TypeError(
                f"worker {worker_id}'s function {getattr(fn, '__name__', fn)!r} is a "
                "generator: it would run only to its first yield; a worker function runs "
                "to its end and returns its result (report progress through the client)"
            )
        return result


@functools.cache
def _worker_class() -> Any:
    return ray.remote(_WorkerActor)


class WorkerGroup:
    """Worker functions running in Ray actors; made by :func:`start_workers`.

    Attributes:
      actors: the actor handles, indexed by worker id (``ray.kill(group.actors[i],
        no_restart=False)`` simulates a crash).
      max_restarts: as given to :func:`start_workers`.
      ended: the workers this group ended because the run was over (see :meth:`wait`).
    """

    def __init__(self, actors: Sequence[Any], refs: Sequence[Any], max_restarts: int):
        self.actors = tuple(actors)
        self._refs = list(refs)
        self.max_restarts = max_restarts
        self.ended: frozenset[int] = frozenset()
        self._done_since: float | None = None

    def wait(
        self,
        timeout_s: float | None = None,
        *,
        until_done: PopulationClient | None = None,
        grace_s: float = 60.0,
    ) -> list[Any]:
        """The worker functions' results, in worker order, once all have returned.

        With ``until_done`` (the controller's client), it also returns once the run is
        over (:attr:`PopulationClient.done`: every worker finished or gone): a worker
        that honours status ``"finished"`` returns at its next call; those still running
        ``grace_s`` seconds after the run was first seen over (and while it still is)
        are ended (no restart) and their result is ``None`` (listed in :attr:`ended`).
        So a worker function that trains forever, or past the run's end, does not keep
        the group alive. A gone worker that calls again in the grace period makes the run
        active again (unless the controller's ``stop_when`` ended it: then that worker is
        finished too): the run goes on, and so does the wait.

        Raises :class:`WorkerError` (after ending the other workers) as soon as one
        function raises or its actor dies with no restarts left, and ``TimeoutError`` if
        they are not all done within ``timeout_s``.
        """
        timeout_s = _check_timeout(timeout_s)
        grace_s = _check_seconds(grace_s, "grace_s")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        index = {ref: i for i, ref in enumerate(self._refs)}
        pending = [ref for i, ref in enumerate(self._refs) if i not in self.ended]
        results: list[Any] = [None] * len(self._refs)
        answered = False  # whether the controller answered this wait yet

        def collect(pending: list[Any], wait_s: float | None = 0.0) -> list[Any]:
            """Records the results in (waiting ``wait_s`` for one); returns the rest."""
            num = len(pending) if wait_s == 0.0 else 1
            ready, pending = ray.wait(pending, num_returns=num, timeout=wait_s)
            for ref in ready:
                results[index[ref]] = self._result(index[ref], ref)
            return pending

        while pending:
            if until_done is not None:
                pending = collect(pending)  # (results already in count before the run's)
                if not pending:
                    break
                try:
                    over = self._run_over(until_done, grace_s, deadline, answered)
                    answered = True
                except TimeoutError:  # (the workers may have ended while it was asked)
                    pending = collect(pending)
                    if not pending:
                        break
                    raise
                if over:
                    pending = collect(pending)
                    self.ended |= {index[ref] for ref in pending}
                    for ref in pending:
                        ray.kill(self.actors[index[ref]], no_restart=True)
                    break
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            poll = remaining
            if until_done is not None:
                poll = _DONE_POLL_S if remaining is None else min(remaining, _DONE_POLL_S)
            before = len(pending)
            pending = collect(pending, poll)
            if len(pending) == before and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(pending)} worker(s) still running after {timeout_s} s")
        return results

    def _run_over(
        self, client: PopulationClient, grace_s: float, deadline: float | None, answered: bool
    ) -> bool:
        """Whether the run has been over for ``grace_s`` (and still is); asked by
        ``deadline`` (a busy or restarting controller: ``TimeoutError`` then).
        ``answered``: the controller answered this wait before (then a question too near
        the deadline is not asked: cut short, it would read as no answer)."""
        # (the wait's deadline comes first: a call that finds no answer by then is the
        # wait's timeout, not the client's)
        first = deadline is not None and (
            client.timeout_s is None or deadline < time.monotonic() + client.timeout_s
        )
        given = None if deadline is None else deadline - time.monotonic()  # (to answer)
        if answered and given is not None and given < _DONE_POLL_S:
            return False  # (a question cut short is no answer: the wait's timeout says why)
        try:
            # poll, not done: the clock's conditions count with no worker calling (a time
            # budget spent, or every worker silent: hung, or dead, the run never ended)
            done = client._call("poll", until=deadline)
        except _NoAnswer as e:
            if given is not None and given < _DONE_POLL_S:
                return False  # (a wait too short for an answer: its timeout says so)
            if first:
                running = len(self._refs) - len(self.ended)
                raise TimeoutError(
                    f"worker(s) still running at the timeout, and the controller did not "
                    f"say whether the run is over ({running} worker(s) in the group)"
                ) from e
            raise
        if not done:
            self._done_since = None
            return False
        now = time.monotonic()
        if self._done_since is None:
            self._done_since = now
        return now - self._done_since >= grace_s

    def _result(self, i: int, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            self.shutdown()
            cause = getattr(e, "cause", None) or e
            raise WorkerError(f"worker {i} raised {cause!r}\n{e}", i) from cause
        except ray.exceptions.RayActorError as e:
            self.shutdown()
            raise WorkerError(
                f"worker {i}'s actor died with no restarts left (max_restarts="
                f"{self.max_restarts}): {e}",
                i,
            ) from e
        except ray.exceptions.RayError as e:  # (an exception Ray could not rebuild here, say)
            self.shutdown()
            raise WorkerError(f"worker {i} failed: {e!r}", i) from e

    def kill(self, worker_id: int, *, restart: bool = True) -> None:
        """Kills worker ``worker_id``'s process; Ray restarts it if ``restart`` and allowed."""
        ray.kill(self.actors[worker_id], no_restart=not restart)

    def shutdown(self) -> None:
        """Ends every worker actor (no restart). Idempotent."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def start_workers(
    fn: Callable[..., Any],
    num_workers: int,
    *,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    max_restarts: int = -1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    name: str | None = None,
    namespace: str | None = DEFAULT_NAMESPACE,
    actor_options: dict[str, Any] | None = None,
) -> WorkerGroup:
    """Starts ``fn(worker_id, *args, **kwargs)`` for ``worker_id`` in ``range(num_workers)``.

    Each call runs in its own Ray actor with ``max_restarts`` (``-1``: always). When an
    actor's process dies, Ray starts it again and calls ``fn`` again from the start with
    the same arguments (its local state is gone); a worker that begins by asking with
    generation ``None`` gets its slot back and resumes from its latest report. An
    exception raised by ``fn`` is not retried.

    Args:
      fn: the worker function; it and ``args``/``kwargs`` (a :class:`PopulationClient`
        among them, typically) are pickled with cloudpickle and shipped to the actors.
        It runs to its end and returns its result (a generator function is an error:
        the group's result would be its first value, its work stopped there; so is a
        coroutine function, ``async def``, whose body would never run).
      num_cpus, num_gpus: what each worker actor reserves.
      name: if given, the actors are named ``f"{name}-worker-{i}"`` in ``namespace``.
      actor_options: more ``ActorClass.options`` for every worker (not ``name``,
        ``namespace``, ``max_restarts``, ``max_task_retries``: the arguments above set
        them).
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
    _checked_options(actor_options, _WORKERS_OWN, "start_workers")  # (before any starts)
    args, kwargs = tuple(args), dict(kwargs or {})
    actors, refs = [], []
    try:
        for i in range(num_workers):
            options: dict[str, Any] = {
                "max_restarts": max_restarts,
                "max_task_retries": max_restarts,  # run fn again in the restarted actor
                "num_cpus": num_cpus,
                "num_gpus": num_gpus,
            }
            if name is not None:
                options.update(name=f"{name}-worker-{i}", namespace=namespace)
            options.update(_checked_options(actor_options, _WORKERS_OWN, "start_workers"))
            actor = _worker_class().options(**options).remote()
            actors.append(actor)
            refs.append(actor.run.remote(fn, i, args, kwargs))
    except BaseException:  # (a name taken, say): no worker runs that no group can stop
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        raise
    return WorkerGroup(actors, refs, max_restarts)


def run_workers(
    fn: Callable[..., Any],
    num_workers: int,
    *,
    timeout_s: float | None = None,
    until_done: PopulationClient | None = None,
    grace_s: float = 60.0,
    **options: Any,
) -> list[Any]:
    """:func:`start_workers`, then waits for the results (in worker order) and ends them.

    With ``until_done`` (the controller's client) it also returns once the run is over
    (every worker finished or gone, say by ``serve(..., stop_when=...)``), ending the
    workers still running ``grace_s`` later (their result: ``None``). ``options`` are
    :func:`start_workers`'s; see :meth:`WorkerGroup.wait`.
    """
    _check_timeout(timeout_s)  # (before anything starts)
    _check_seconds(grace_s, "grace_s")
    with start_workers(fn, num_workers, **options) as group:
        return group.wait(timeout_s, until_done=until_done, grace_s=grace_s)
