"""A vectorized population over several processes (``jax.distributed``): the host-side helpers.

Every process runs the same program (SPMD) on a mesh over all processes' devices; the
jitted steps and exploits need nothing from here. What differs from one process is the
host side, and these helpers cover it:

* :func:`is_lead_process` -- process 0, the one that records lineage and writes the
  journal (:func:`jaxpop.vectorized.record`, :class:`jaxpop.storage.Store`).
* :func:`to_host` -- host numpy copies of arrays sharded over the processes (per-member
  scores, an :class:`~jaxpop.vectorized.Exploit`), what ``record`` takes. Collective.
* :func:`broadcast_from_lead` -- small plain data (a snapshot handle read from the
  journal on resume) from process 0 to every process. Collective.
* :func:`on_lead` -- what process 0 does alone (record, journal), with a failure there
  made an error on every process (not a wait until a collective's timeout). Collective.
* :func:`initialize_cpu` -- ``jax.distributed.initialize`` with the settings a run of
  several processes on CPU needs (tests, CPU clusters).

Snapshots need nothing extra: :func:`jaxpop.vectorized.save_snapshot` and
:func:`~jaxpop.vectorized.restore_snapshot` with a :class:`jaxpop.checkpointing.ParamStore`
on a shared directory are collective Orbax saves and restores when
``jax.process_count() > 1``. "Collective" means every process calls it, in the same
order. ``docs/multihost.md`` shows a whole loop and the launch on GPU nodes and TPU pods.
"""

from __future__ import annotations

import contextlib
import errno
import json
import numbers
import re
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["broadcast_from_lead", "initialize_cpu", "is_lead_process", "on_lead", "to_host"]

T = TypeVar("T")


#: ``_alone.fn``: the name of the :func:`on_lead` ``fn`` this thread runs (process 0 alone)
_alone = threading.local()


def _refuse_alone(what: str) -> None:
    """A ``RuntimeError`` for a collective call made inside an :func:`on_lead` ``fn``:
    process 0 alone would make it, and the other processes pair it with their next
    collective (``on_lead``'s own broadcast: a wrong value there, then a hang)."""
    if getattr(_alone, "fn", None) is not None:
        raise RuntimeError(
            f"{what} is collective (every process calls it) but was called inside "
            f"on_lead({_alone.fn}), which runs on process 0 alone: the other processes "
            "would pair it with another collective (a wrong value, then a hang); call it "
            "before or after on_lead, on every process"
        )


def is_lead_process() -> bool:
    """Whether this is process 0: the process that records lineage and writes the journal.

    ``True`` in a program of one process.
    """
    return jax.process_index() == 0


def _spans_processes(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and not leaf.is_fully_addressable


def to_host(tree: Any) -> Any:
    """``tree`` with every array leaf as a whole host numpy array, on every process.

    A leaf sharded over several processes' devices is gathered from all of them
    (``jax.experimental.multihost_utils.process_allgather``); other array leaves are
    copied as they are (a typed PRNG key is refused by JAX: pass its
    ``jax.random.key_data``). Collective when some leaf spans processes: every process calls
    it with a tree of the same structure and shardings. Meant for small per-member
    arrays (scores, an ``Exploit``, the population without its train state)::

        scores_h, exploit_h = multihost.to_host((scores, exploit))
        light = multihost.to_host(pop.replace(train_state=None))  # for lineage_init
    """
    leaves, treedef = jax.tree.flatten(tree)
    spanning = [i for i, leaf in enumerate(leaves) if _spans_processes(leaf)]
    if spanning:
        _refuse_alone("to_host of arrays sharded over processes")
    gathered = (
        multihost_utils.process_allgather([leaves[i] for i in spanning], tiled=True)
        if spanning
        else []
    )
    whole = dict(zip(spanning, gathered, strict=True))
    out = [  # (copies: a numpy leaf, or a device array's read-only view, is not returned)
        np.array(whole.get(i, leaf)) if isinstance(leaf, (jax.Array, np.ndarray)) else leaf
        for i, leaf in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def broadcast_from_lead(value: Any = None) -> Any:
    """Process 0's ``value`` on every process (JSON data: ``str``, numbers, lists, dicts, ``None``;
    numpy scalars are sent as Python numbers, but a ``longdouble``, which no Python
    number holds).

    Collective: every process calls it; only process 0's ``value`` counts. For the few
    things only the lead knows, e.g. the snapshot handle it reads from the journal when a
    run resumes::

        handle = multihost.broadcast_from_lead(handle if multihost.is_lead_process() else None)

    In a program of one process it returns ``value`` (after the same JSON round trip: a
    tuple arrives as a list). A value process 0 cannot send is a ``TypeError`` on every
    process (they all still take part in the collective, so none waits forever); so is
    what JSON would bring back changed: a dict with a key that is not a ``str`` (``{0:
    "a"}`` became ``{"0": "a"}``), a ``str`` holding a surrogate pair (two code points
    became one; a lone surrogate, as in a name ``os.fsdecode`` made, arrives as sent).
    """
    _refuse_alone("broadcast_from_lead")
    data = np.zeros(0, np.int32)
    error: Exception | None = None
    if is_lead_process():
        try:
            _check_sendable(value)
            text = json.dumps(value, allow_nan=True, default=_plain_number)
        except Exception as e:  # (a RecursionError too: every process must hear of it)
            error = TypeError(
                f"broadcast_from_lead sends JSON data (str, numbers, lists, dicts, None); "
                f"got {type(value).__name__}: {e}"
            )
        else:
            data = np.frombuffer(text.encode(), np.uint8).astype(np.int32)
            if data.size >= 2**31:  # (its size is sent as an int32)
                error = ValueError(
                    f"broadcast_from_lead sends less than 2**31 bytes, got {data.size}"
                )
    # the size first, -1 when process 0's value cannot be sent: every process takes part
    # in both collectives or none, so a bad value is an error everywhere, never a hang
    size = -1 if error is not None else data.size
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(size, np.int32)))
    if error is not None:
        raise error
    if size < 0:
        raise TypeError(
            "broadcast_from_lead: process 0's value is not JSON data (its error says what)"
        )
    if not is_lead_process():
        data = np.zeros(size, np.int32)
    data = np.asarray(multihost_utils.broadcast_one_to_all(data))
    return json.loads(bytes(data.astype(np.uint8).tolist()).decode())


def on_lead(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)`` on process 0, with every process told whether it failed.

    Collective: every process calls it; only process 0 runs ``fn``. What process 0 does
    alone between collectives (recording lineage, writing the journal) can fail, and
    then the other processes waited in their next collective until JAX's distributed
    timeout (minutes), with an error naming no cause. Run it through ``on_lead`` and a
    failure is an error on every process at once: process 0 raises its own exception,
    the others a ``RuntimeError`` that quotes it. One small broadcast per call.

    Returns ``fn``'s result on process 0, ``None`` on the others (send what they need
    with :func:`broadcast_from_lead`). ``args`` are evaluated on every process before
    the call: what exists on process 0 alone (its journal, a round's changes) goes in a
    closure, which only process 0 calls (``log.append`` on another process's ``log =
    None`` failed there at once, and process 0 waited in the broadcast)::

        multihost.on_lead(lambda: log.append(changes, lineage))

    If telling the others fails as well (a process died), process 0 still raises its
    own exception (on Python 3.11+ with a note naming the broadcast's error).

    ``fn`` must make no collective call: :func:`broadcast_from_lead`, :func:`to_host`
    of sharded arrays, ``on_lead``, a snapshot's save or restore are refused there (a
    ``RuntimeError`` on every process); nor compute on arrays sharded over the
    processes (``jnp.max(scores)`` on the global scores waits for the others, which
    never join: hand ``fn`` host copies, :func:`to_host`'s, instead).
    """
    _refuse_alone("on_lead")
    result, failure, message = None, None, None
    name = getattr(fn, "__qualname__", type(fn).__name__)
    if is_lead_process():
        _alone.fn = name
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # (Ctrl-C too: the others must hear of it)
            failure, message = e, type(e).__name__
            with contextlib.suppress(BaseException):  # (a str() that raises: the type)
                message = _sendable_text(f"{message}: {e}")
        finally:
            _alone.fn = None
    said = None
    try:
        said = broadcast_from_lead(message)
    except Exception as e:
        if failure is None:
            raise
        # process 0's own error is what went wrong: the broadcast's goes in a note (raised
        # out here, not in this handler, its own __context__ stays fn's)
        with contextlib.suppress(Exception):  # (a str() that raises: no note)
            note = f"(telling the other processes failed too: {type(e).__name__}: {e})"
            failure.add_note(note)  # type: ignore[attr-defined]  # (Python 3.11+)
    if failure is not None:
        raise failure
    if said is not None:
        raise RuntimeError(f"process 0 failed in on_lead({name}): {said}")
    return result


def _check_sendable(value: Any) -> None:
    """Raises ``TypeError`` for what JSON would bring back changed: a dict key that is
    not a ``str``, or a ``str`` holding a surrogate pair (``"\\ud83d\\ude00"``, two code
    points, arrived as one)."""
    stack, seen = [value], set()
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            _check_text(x)
        elif isinstance(x, (dict, list, tuple)):
            if id(x) in seen:
                continue  # (a cycle: json.dumps refuses it)
            seen.add(id(x))
        if isinstance(x, dict):
            for key, item in x.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"a dict key {key!r:.40} ({type(key).__name__}) would arrive as a str"
                    )
                _check_text(key)
                stack.append(item)
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


#: a high surrogate then a low one: two code points JSON's escapes bring back as one (a
#: lone surrogate, as ``os.fsdecode`` makes of a name's undecodable bytes, comes back)
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _check_text(text: str) -> None:
    if _SURROGATE_PAIR.search(text):
        raise TypeError(
            f"a str holding a surrogate pair ({text!r:.40}) would arrive as one code point"
        )


def _sendable_text(text: str) -> str:
    """``text`` as :func:`broadcast_from_lead` can send it: a surrogate pair joined into
    its code point (an exception's message quoting a name), else escaped."""
    if not _SURROGATE_PAIR.search(text):
        return text
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError:  # (a lone surrogate too: every one escaped)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _plain_number(x: Any) -> Any:
    """A numpy scalar as its Python number (for ``json.dumps``); anything else refused."""
    if isinstance(x, np.generic) and not isinstance(x, (np.str_, np.bytes_, np.void)):
        item = x.item()
        if isinstance(item, (bool, int, float)):
            return item  # (a longdouble's item is a longdouble: no Python number holds it)
    raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable")


def _count(name: str, value: Any, least: int) -> int:
    """``value`` as an int of at least ``least`` (a whole float too), or the error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, float)):
        raise TypeError(f"{name} must be an int, got {value!r:.40}")
    if isinstance(value, float) and not value.is_integer():
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    number = int(value)
    if not least <= number < 2**31:
        raise ValueError(f"{name} must be in [{least}, 2**31), got {value!r:.40}")
    return number


def _port(coordinator_address: str) -> int:
    """The port of ``"host:port"``, or a ``ValueError`` saying the address needs one."""
    if not isinstance(coordinator_address, str):
        raise TypeError(f"coordinator_address must be a str, got {coordinator_address!r:.40}")
    _, colon, port = coordinator_address.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator_address must be 'host:port' (port 1 to 65535), got "
            f"{coordinator_address!r:.60}"
        )
    return int(port)


def _check_free(coordinator_address: str, port: int) -> None:
    """An ``OSError`` naming the address if process 0 cannot listen on ``port`` (taken
    by another program: JAX's coordinator then ended the process with SIGSEGV)."""
    try:
        probe = socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET)
    except OSError:  # (IPv6 disabled in the kernel: EAFNOSUPPORT)
        try:
            probe = socket.socket(socket.AF_INET)
        except OSError:  # (a check only: JAX's own error says what is wrong)
            return
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (TIME_WAIT is free)
        try:
            probe.bind(("", port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:  # (another trouble: JAX's own error says it)
                return
            raise OSError(
                err.errno,
                f"the coordinator's port {port} ({coordinator_address}) cannot be listened "
                f"on from process 0: {err.strerror} (another program holds it?)",
            ) from None


def initialize_cpu(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    local_devices: int = 1,
    initialization_timeout: int = 300,
) -> None:
    """``jax.distributed.initialize`` for processes that compute on CPU.

    Sets the platform to CPU, ``local_devices`` CPU devices in this process
    (``jax_num_cpu_devices``) and the gloo cross-process collectives
    (``jax_cpu_collectives_implementation``, without which a computation over devices of
    several processes fails on CPU), then joins the run. Call it first thing, before
    any other JAX call. On GPU and TPU call ``jax.distributed.initialize`` itself
    (``docs/multihost.md``).

    Args:
      coordinator_address: ``"host:port"`` of process 0, where it serves the coordinator.
      num_processes: how many processes take part.
      process_id: this process's index, ``0 .. num_processes - 1``.
      local_devices: CPU devices in each process.
      initialization_timeout: seconds to wait for every process to join before failing.

    Raises:
      TypeError, ValueError: an argument out of its range (an address without a port,
        ``process_id`` not below ``num_processes``, a timeout that is not a positive
        whole number), before JAX's configuration is changed.
      OSError: on process 0, the coordinator's port is taken (JAX's coordinator ended
        the process with a segmentation fault).
    """
    if isinstance(local_devices, (bool, np.bool_)) or not isinstance(
        local_devices, numbers.Integral
    ):
        raise TypeError(f"local_devices must be an int, got {local_devices!r:.40}")
    local_devices = int(local_devices)
    if not 1 <= local_devices < 2**31:  # (past int32, jax's CPU client failed to bind it)
        raise ValueError(f"local_devices must be in [1, 2**31), got {local_devices}")
    # (all checked before JAX's global config changes: a refused call changes nothing)
    num_processes = _count("num_processes", num_processes, 1)
    process_id = _count("process_id", process_id, 0)
    if process_id >= num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    initialization_timeout = _count("initialization_timeout", initialization_timeout, 1)
    port = _port(coordinator_address)
    if process_id == 0:  # (a busy port made JAX's coordinator crash the process: SIGSEGV)
        _check_free(coordinator_address, port)
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", local_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=initialization_timeout,
    )
