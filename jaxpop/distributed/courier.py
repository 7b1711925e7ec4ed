"""The seed's server helpers, served by Ray: ``start_courier_server``, ``get_courier_client``.

learned_optimization serves a controller to other processes with courier; jaxpop serves
it as a named Ray actor (:mod:`jaxpop.distributed.ray`) under the same names, which
:mod:`jaxpop.population` re-exports, so a seed program that uses them runs unchanged
once Ray is installed (``pip install "jaxpop[ray]"``). ``docs/ray.md`` has the details.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import inspect
import logging
import math
import numbers
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxpop.storage.atomic import missing_dirs, remove_dirs

if TYPE_CHECKING:
    from jaxpop.distributed.ray import PopulationClient
    from jaxpop.population import PopulationController

__all__ = [
    "DEFAULT_NAMESPACE",
    "CourierServer",
    "get_courier_client",
    "start_courier_server",
    "uniquify_server_name",
]

logger = logging.getLogger("jaxpop")

#: The Ray namespace the helpers use (that of :mod:`jaxpop.distributed.ray`).
DEFAULT_NAMESPACE = "jaxpop"


def _ray() -> Any:
    """``jaxpop.distributed.ray``, with Ray started (or joined) in this process."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "start_courier_server and get_courier_client serve the controller with Ray, "
            'which is not installed: pip install "jaxpop[ray]"'
        ) from e
    from jaxpop.distributed import ray as jaxpop_ray

    if not ray.is_initialized():
        # joins the cluster of RAY_ADDRESS or of `ray start` on this machine, if any;
        # otherwise starts one for this process
        ray.init()
    return jaxpop_ray


def uniquify_server_name(shared_str: str | bytes | os.PathLike, name: str) -> str:
    """A server name that is the same in every process that knows ``shared_str``.

    As the seed's: the first 20 hex digits of ``shared_str``'s SHA-256 (of its UTF-8
    bytes), ``"__"``, then ``name``; a run's directory makes a good ``shared_str``: a
    path (``str``, ``bytes`` or ``os.PathLike``) is hashed as the file system names it
    (a folder name that is no UTF-8, which the seed's could not encode, included).

    >>> uniquify_server_name("abc", "population_controller")
    'ba7816bf8f01cfea4141__population_controller'
    """
    if isinstance(shared_str, str):  # (os.fsencode: a name's own bytes, escapes undone)
        data = shared_str.encode("utf-8", "surrogateescape")
    elif isinstance(shared_str, (bytes, os.PathLike)):
        data = os.fsencode(shared_str)
    else:
        raise TypeError(f"shared_str must be a str or a path, got {type(shared_str).__name__}")
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:20]}__{name}"


class _HandedOver:
    """Stands in for the storage of a controller handed over to a server.

    The controller checks its storage before every call that changes its state, so
    its calls raise, naming the server, instead of changing a copy nobody reads.
    """

    def __init__(self, name: str, namespace: str | None):
        self.server = name
        self._message = (
            f"this PopulationController was handed over to the server {name!r} "
            f"(start_courier_server); its state lives there now: call it through "
            f"get_courier_client({name!r}"
            + ("" if namespace == DEFAULT_NAMESPACE else f", namespace={namespace!r}")
            + ") or the server's .client"
        )

    def check_open(self, *args: Any, **kwargs: Any) -> None:
        from jaxpop.storage import SupersededError

        raise SupersededError(self._message)

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self.check_open()


_EXIT_WAIT_S = 10.0  # at exit, how long to wait for the actor to release the directory


class CourierServer:
    """A controller served by :func:`start_courier_server` (the seed's ``courier.Server``).

    It runs from the moment it is returned until :meth:`Stop` (or until this process
    exits: the controller actor belongs to it).

    Attributes:
      name, namespace: the controller actor's name and Ray namespace.
      client: the owning :class:`~jaxpop.distributed.ray.PopulationClient`.
      log_dir: where the served controller keeps its state.
    """

    def __init__(self, client: PopulationClient, temp_dir: str | None, *, detached: bool = False):
        self.client = client
        self.name = client.name
        self.namespace = client.namespace
        self.log_dir = client.log_dir
        # the actor this server started: the client may come to follow another one (a
        # new server on this run, after this one's actor died), which is not this one's
        self._actor = client.actor
        self._stopped = threading.Event()
        self._cleanup = None if temp_dir is None else functools.partial(_remove_unused, temp_dir)
        # the actor's process, which Stop lets exit (and release the directory's lock)
        self._pid = None if temp_dir is None else client.info()["pid"]
        if self._cleanup is not None and not detached:  # a detached actor outlives us
            # (a Stop: removing the directory while the actor still holds its lock would
            # be refused; this runs before ray.init's own exit hook, registered earlier)
            atexit.register(self._stop_at_exit)

    def Stop(self) -> None:  # the seed's name
        """Ends the controller actor (after its writes) and releases its ``log_dir``.

        A ``log_dir`` that :func:`start_courier_server` made for a controller without
        one is removed, unless a controller runs on it (this server's actor died and
        the run was served again there: that server is its own to stop). Idempotent.
        """
        if self._stopped.is_set():
            return
        import ray

        served_again = self._served_again()
        if self.client.actor._actor_id == self._actor._actor_id:
            self.client.shutdown()
        else:  # the client follows another server's actor now: only this one's is ended
            ray.kill(self._actor, no_restart=True)
        if self._cleanup is not None:
            atexit.unregister(self._stop_at_exit)
            if not served_again:
                # the actor just ended holds the directory's lock until its process
                # exits (killed while its mutator was busy: the directory was left, with
                # a false warning); a run served there again holds it for good
                _wait_for_exit(self._pid, _EXIT_WAIT_S)
            self._cleanup()
        self._stopped.set()

    def _served_again(self) -> bool:
        """Whether the name serves another actor than this server's (a new server)."""
        import ray

        try:
            named = ray.get_actor(self.name, namespace=self.namespace)
        except ValueError:
            return False
        return named._actor_id != self._actor._actor_id

    def _stop_at_exit(self) -> None:
        import ray

        try:
            if ray.is_initialized():  # (else Ray ended the actor: a call would start Ray)
                self.Stop()
        except Exception as error:  # (reported; the interpreter goes on exiting)
            print(f"jaxpop: stopping {self!r} at exit failed: {error}", file=sys.stderr)
        finally:
            if not self._stopped.is_set() and self._cleanup is not None:
                # (after ray.shutdown() a cluster ends this driver's actor a moment later)
                self._cleanup(wait_s=_EXIT_WAIT_S)

    def Join(self, timeout: float | None = None) -> bool:  # the seed's name
        """Waits until the server stops (:meth:`Stop`, from another thread, or its actor
        is gone for good); whether it did within ``timeout`` seconds (``None`` or
        ``inf``: forever; 0: whether it has)."""
        if timeout is not None:  # (a numpy float16 deadline past 65504 s of uptime: inf)
            if isinstance(timeout, (bool, np.timedelta64)) or not isinstance(timeout, numbers.Real):
                raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r:.40}")
            if not float(timeout) >= 0:
                raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r:.40}")
            timeout = None if float(timeout) == math.inf else float(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            step = 1.0 if deadline is None else min(1.0, max(deadline - time.monotonic(), 0.0))
            if self._stopped.wait(step):
                return True
            if (deadline is None or time.monotonic() < deadline) and self._actor_gone():
                return True
        return self._stopped.is_set()

    def _actor_gone(self) -> bool:
        """Whether this server's actor is gone for good: its name is free or another's
        (a new server on the run), or it died with no restart left (Ray keeps a dead
        actor's name until it is killed: the name alone never said so)."""
        import ray

        try:
            ray.get_actor(self.name, namespace=self.namespace)
        except ValueError:
            return True
        if self._served_again():
            return True
        try:
            ray.get(self._actor.info.remote(), timeout=0.5)
        except ray.exceptions.ActorDiedError:
            return True
        except ray.exceptions.RayError:  # busy, or restarting
            return False
        return False

    def __enter__(self) -> CourierServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.Stop()

    def __repr__(self) -> str:
        return f"CourierServer(name={self.name!r}, log_dir={self.log_dir!r})"


def _wait_for_exit(pid: int | None, wait_s: float) -> None:
    """Waits, ``wait_s`` seconds at most, for the local process ``pid`` to end."""
    deadline = time.monotonic() + wait_s
    while pid is not None and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:  # (gone; or not ours to signal: not waited for)
            return
        time.sleep(0.05)


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _lock_unused(path: str, busy: str, wait_s: float = 0.0) -> int | None:
    """A descriptor of the directory ``path`` that holds the lock a
    :class:`jaxpop.storage.Store` takes on it (an ``flock``; close it to release), or
    ``None``: the directory is gone, or a controller holds it for ``wait_s`` more
    seconds (logged: ``busy``, with ``%s`` for the path)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                logger.warning(busy, path)
                return None
            time.sleep(0.1)


def _remove_unused(path: str, wait_s: float = 0.0) -> None:
    """Removes the directory ``path`` unless a controller runs on it (then it is left,
    with a warning), waiting ``wait_s`` seconds for one ending."""
    fd = _lock_unused(
        path,
        "jaxpop: not removing %s: a controller runs on it (the run was served again "
        "there); remove it once that controller is stopped",
        wait_s,
    )
    if fd is None:
        return
    try:
        _remove(path)  # (under the lock: no controller starts on it meanwhile)
    finally:
        os.close(fd)


def start_courier_server(
    name: str,
    population: PopulationController,
    *,
    log_dir: str | os.PathLike | None = None,
    namespace: str | None = DEFAULT_NAMESPACE,
    **serve_options: Any,
) -> CourierServer:
    """Serves ``population`` to every process as the Ray actor ``name`` (the seed's helper).

    The controller moves into the actor (Ray's actors run in their own processes): the
    actor resumes exactly the state ``population`` has when this is called, from a
    ``log_dir``, which also lets Ray restart it (see :func:`jaxpop.distributed.ray.serve`):

    * ``population`` has a ``log_dir``: it is closed (its writes finished, the lock
      released) and the actor resumes its run on that same ``log_dir``.
    * it has none (the seed's examples): its state is written to ``log_dir`` if one is
      given (a directory without a jaxpop run), else to a new temporary directory that
      :meth:`CourierServer.Stop` (or the end of this process, unless ``detached``)
      removes.

    From then on ``population`` is the server's: its calls that change the state raise
    :class:`jaxpop.storage.SupersededError` naming the server (use
    :func:`get_courier_client` or ``server.client``), and its views (``history``,
    ``active_workers``) show the state as it was handed over. If the actor cannot be
    started, a ``population`` that had a ``log_dir`` stays closed (a new controller on
    that ``log_dir`` resumes the run) and one that had none is left as it was, and so
    is the ``log_dir`` given for it (what was written there is removed): serving can be
    tried again.

    >>> server = start_courier_server("population", population)  # doctest: +SKIP
    >>> get_courier_client("population").set_eval(0, gen_id, 10, path, 0.3)  # doctest: +SKIP

    Args:
      name: the server's name; :func:`get_courier_client` reaches it by that name from
        any process of the Ray cluster.
      population: an in-process :class:`jaxpop.PopulationController`.
      log_dir: for a controller without one, where the served controller keeps its state.
      namespace: the actor's Ray namespace.
      serve_options: more :func:`jaxpop.distributed.ray.serve` options
        (``max_restarts``, ``detached``, ``timeout_s``, ...). The served controller
        takes ``population``'s own ``stop_when``, ``gone_after_s``, ``clock`` and (with
        a ``log_dir``) ``durability`` and ``compact_after``, unless given here.

    Raises:
      ImportError: Ray is not installed (``pip install "jaxpop[ray]"``).
      TypeError: ``population`` is not an in-process ``PopulationController``.
      ValueError: a server ``name`` is running already, ``population`` was handed over
        already, or ``log_dir`` conflicts with the controller's own.
      FileExistsError: ``log_dir`` already holds a jaxpop run.
    """
    jaxpop_ray = _ray()
    import ray

    from jaxpop.population import PopulationController

    if isinstance(population, jaxpop_ray.PopulationClient):
        raise TypeError(
            f"population is already served (as {population.name!r}): reach it with "
            f"get_courier_client({population.name!r})"
        )
    if not isinstance(population, PopulationController):
        raise TypeError(
            f"population must be a PopulationController, got {type(population).__name__}"
        )
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        pass  # the name is free
    else:
        # an actor dead for good keeps its name until it is killed: freed, the run is
        # served again there (as a dead server's client advises)
        if not jaxpop_ray._free_if_dead(name, namespace, timeout_s=0.5):  # (busy: alive)
            raise ValueError(
                f"a server named {name!r} is running already (namespace {namespace!r}): "
                f"reach it with get_courier_client({name!r}), or stop it first"
            )
    own = population.log_dir
    if own is not None and log_dir is not None and os.path.abspath(log_dir) != os.path.abspath(own):
        raise ValueError(
            f"population keeps its state in {own}; it is served there (drop log_dir={log_dir!r})"
        )
    # The controller's storage is where it checks, under its lock, before each change:
    # standing in for it stops the controller changing its state from here on.
    with population._lock:
        original, state = population._store, population.state
        if isinstance(original, _HandedOver):
            raise ValueError(
                f"population was handed over to the server {original.server!r} already: "
                f"reach it with get_courier_client({original.server!r})"
            )
        population._store = _HandedOver(name, namespace)  # type: ignore[assignment]  # a stand-in
    serve_options = {**_settings(population, original), **serve_options}  # (given ones win)
    temp_dir = None
    # a run written to the given log_dir: (it, what it held, the folders made for it)
    written: tuple[str, set[str] | None, list[str]] | None = None
    try:
        if original is not None:  # it has a log_dir: the actor resumes the run there
            target = own
            original.close()
        else:
            if log_dir is None:
                target = temp_dir = tempfile.mkdtemp(prefix="jaxpop-courier-")
            else:
                # (as Store takes it: "new/../out" is "out", made without "new")
                target = os.path.abspath(os.fspath(log_dir))
                before = set(os.listdir(target)) if os.path.isdir(target) else None
                # (set first: a write that fails part way, its lock file made, is undone)
                written = (target, before, missing_dirs(target))
            _write_state(target, state, population.mutator)
        client = jaxpop_ray.serve(
            [w.meta_params for w in state.workers],
            population.mutator,
            log_dir=target,
            name=name,
            namespace=namespace,
            **serve_options,
        )
    except BaseException as error:
        from jaxpop.storage import LogDirInUseError

        population._store = original  # closed, if it had a log_dir
        if temp_dir is not None:
            _remove(temp_dir)
        elif written is not None and not isinstance(error, LogDirInUseError):
            _unwrite(*written)  # (the controller still holds the state: try again)
        raise
    logger.info("jaxpop: serving the controller as %r, its state in %s", name, target)
    return CourierServer(client, temp_dir, detached=bool(serve_options.get("detached")))


def _settings(population: PopulationController, store: Any) -> dict[str, Any]:
    """The controller's own settings, as :func:`jaxpop.distributed.ray.serve` options:
    the served controller behaves as ``population`` did (its run ends, its silent workers
    are declared gone, its journal is as durable)."""
    settings: dict[str, Any] = {
        "gone_after_s": population._gone_after_s,
        "stop_when": population._stop_when,
    }
    clock = population._clock
    if clock is not time.time:
        import ray

        try:
            ray.cloudpickle.dumps(clock)
        except Exception as e:  # it cannot go to the actor: the actor's time.time serves
            logger.warning(
                "jaxpop: the controller's clock cannot be sent to the server (%s); the "
                "served controller uses time.time (pass clock= to choose another)",
                e,
            )
        else:
            settings["clock"] = clock
    if store is not None:
        settings["durability"] = store.durability
        settings["compact_after"] = store.compact_after
    return settings


def _write_state(log_dir: str, state: Any, mutator: Any) -> None:
    """Makes ``log_dir`` hold ``state`` as a run that a controller resumes."""
    from jaxpop import storage

    run = storage.run.describe_run(state.population_size, mutator)
    store = storage.Store(log_dir, run=run)
    try:
        if store.load() is not None:
            raise FileExistsError(
                f"{log_dir} already holds a jaxpop run: a controller without a log_dir is "
                "served from an empty directory"
            )
        store.start(state)
    finally:
        store.close()


def _unwrite(log_dir: str, before: set[str] | None, made: list[str]) -> None:
    """Removes what :func:`_write_state` wrote to ``log_dir`` (which held ``before``;
    ``None``: it did not exist, nor did the folders ``made`` for it) for a server that
    did not start, so serving can be tried again there; left, with a warning, if a
    controller holds its lock."""
    fd = _lock_unused(
        log_dir,
        "jaxpop: the server did not start, and a controller holds %s: the state written "
        "there is left (a controller on it resumes the run)",
    )
    if fd is None:
        return
    try:
        if before is None:
            _remove(log_dir)
            remove_dirs(made)  # (those above it: log_dir itself is gone)
        else:
            for name in set(os.listdir(log_dir)) - before:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(log_dir, name))
    finally:
        os.close(fd)


def get_courier_client(
    name: str,
    *,
    namespace: str | None = DEFAULT_NAMESPACE,
    wait_s: float = 60.0,
    timeout_s: float | None = 120.0,
) -> PopulationClient:
    """A client of the server ``name``, from any process of the Ray cluster (the seed's helper).

    The client has the controller's synchronous API (``maybe_get_worker_data``,
    ``set_eval``, ``report``, ``history``, ...; see
    :class:`jaxpop.distributed.ray.PopulationClient`) and, as a courier client,
    ``client.futures.<method>(...)``, which returns a ``concurrent.futures.Future``.

    Args:
      name, namespace: as given to :func:`start_courier_server`.
      wait_s: how long to wait for a server that is not up yet.
      timeout_s: how long one call waits for an answer (restarts included).

    Raises:
      ImportError: Ray is not installed (``pip install "jaxpop[ray]"``).
      jaxpop.distributed.ray.ControllerUnavailableError: no server ``name`` came up
        within ``wait_s``.
    """
    jaxpop_ray = _ray()
    client = jaxpop_ray.connect(name, namespace=namespace, timeout_s=timeout_s, wait_s=wait_s)
    return _client_class()(
        client.actor, name, namespace, timeout_s=client.timeout_s, log_dir=client.log_dir
    )


@functools.cache
def _client_class() -> type:
    """The courier client class (a subclass of ``PopulationClient``, which needs Ray)."""
    from jaxpop.distributed.ray import PopulationClient

    class CourierClient(PopulationClient):
        """A :class:`PopulationClient` with courier's ``futures``."""

        @property
        def futures(self) -> _Futures:
            """``client.futures.set_eval(...)``: the call, in the background; a Future."""
            return _Futures(self)

        def __reduce__(self) -> tuple[Any, ...]:
            args = (self.actor, self.name, self.namespace, self.timeout_s, self._log_dir)
            return _rebuild, args

    CourierClient.__module__ = __name__
    return CourierClient


def _rebuild(
    actor: Any,
    name: str,
    namespace: str | None,
    timeout_s: float | None,
    log_dir: str | None = None,
) -> Any:
    return _client_class()(actor, name, namespace, timeout_s=timeout_s, log_dir=log_dir)


class _Futures:
    """Each client method, called in a background thread: ``futures.set_eval(...)``."""

    def __init__(self, client: PopulationClient):
        self._client = client

    def __getattr__(self, method: str) -> Any:
        # looked up on the class first: a property (history, state) read through the
        # instance is itself the remote call, made here and waited for
        found = inspect.getattr_static(type(self._client), method, None)
        if method.startswith("_") or not inspect.isfunction(found):
            raise AttributeError(f"a courier client has no method {method!r}")
        call = getattr(self._client, method)

        def submit(*args: Any, **kwargs: Any) -> concurrent.futures.Future:
            return _executor().submit(call, *args, **kwargs)

        return submit


@functools.cache
def _executor() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="jaxpop-courier")
