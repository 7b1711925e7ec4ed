"""A population state as plain data, and the checks every decoded record passes.

The encoding builds only registered record classes, but it cannot know what their
fields should hold: a hostile or damaged file can decode into a ``Checkpoint`` whose
step is a string or an ``ActiveWorker`` list of ints. :func:`state_from_plain` and
:func:`redo_checked` accept only what a controller writes and raise ``ValueError``
naming the field otherwise (storage turns that into a ``CorruptLogError`` naming the
file), so nothing ill-typed ever reaches the core.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from jaxpop.core import MAX_EVENTS, Changes, PopulationState, redo
from jaxpop.history import History
from jaxpop.keys import root_key
from jaxpop.records import check_active_worker, check_checkpoint
from jaxpop.storage.delta import StateDelta, applied

__all__ = ["redo_checked", "state_from_plain", "state_to_plain"]

_STATE_FIELDS = ("workers", "mutator_state", "key", "num_events", "checkpoints", "mode")
_STATE_FIELDS_V2 = _STATE_FIELDS[:-1]  # storage versions 1 and 2: every run was "min"
_MAX_EVENTS = MAX_EVENTS  # (a state may hold them all: no further one is applied)


def state_to_plain(state: PopulationState) -> dict[str, Any]:
    """The whole state as plain data (what a snapshot stores)."""
    return {
        "workers": state.workers,
        "mutator_state": state.mutator_state,
        "key": state.key,
        "num_events": state.num_events,
        "checkpoints": tuple(state.history.checkpoints()),
        "mode": state.history.mode,
    }


def _fail(where: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{where} is not {what}: {type(value).__name__} {value!r:.80}")


def _tuple(value: Any, where: str) -> tuple:
    if type(value) is not tuple:
        raise _fail(where, "a tuple", value)
    return value


def state_from_plain(plain: Any) -> PopulationState:
    """Inverse of :func:`state_to_plain`, for decoded data: checks every field.

    Raises:
      ValueError: ``plain`` is not what :func:`state_to_plain` makes; the message names
        the first bad field.
    """
    if type(plain) is not dict or tuple(plain) not in (_STATE_FIELDS, _STATE_FIELDS_V2):
        keys = tuple(plain) if type(plain) is dict else type(plain).__name__
        raise ValueError(f"the state is not a map of {_STATE_FIELDS} (got {keys!r:.200})")
    mode = plain.get("mode", "min")
    if mode not in ("min", "max") or type(mode) is not str:
        raise _fail("mode", '"min" or "max"', mode)
    checkpoints = _tuple(plain["checkpoints"], "checkpoints")
    for i, c in enumerate(checkpoints):
        check_checkpoint(c, f"checkpoints[{i}]")
    history = History(mode="max" if mode == "max" else "min").add_all(checkpoints)
    if history.num_checkpoints != len(checkpoints):
        raise ValueError("checkpoints holds the same (generation_id, step) twice")
    _check_parents(checkpoints, history, "checkpoints")
    workers = _tuple(plain["workers"], "workers")
    if not workers:
        raise ValueError("workers is empty: a population has at least one worker")
    for i, w in enumerate(workers):
        check_active_worker(w, f"workers[{i}]")
        if w.generation_id not in history:
            raise ValueError(
                f"workers[{i}] is assigned to {w.generation_id!r}, which has no checkpoint"
            )
    key = plain["key"]
    shape = root_key(0).shape  # the raw key of jax's default PRNG implementation
    if type(key) is not np.ndarray or key.dtype != np.uint32 or key.shape != shape:
        raise _fail("key", f"a raw PRNG key (a uint32 numpy array of shape {shape})", key)
    num_events = _count(plain["num_events"], "num_events", low=0)
    if num_events > _MAX_EVENTS:
        raise ValueError(f"num_events is {num_events}, past {_MAX_EVENTS} events")
    return PopulationState(
        workers=workers,
        mutator_state=plain["mutator_state"],
        key=key,
        history=history,
        num_events=num_events,
    )


def _check_parents(checkpoints: tuple, history: History, where: str) -> None:
    for i, c in enumerate(checkpoints):
        if c.parent is not None and history.get_checkpoint(*c.parent) is None:
            raise ValueError(f"{where}[{i}].parent {c.parent} is not in the history")


def _count(value: Any, where: str, *, low: int) -> int:
    if type(value) is not int or value < low:
        raise _fail(where, f"an int >= {low}", value)
    return value


def redo_checked(state: PopulationState, changes: Any) -> PopulationState:
    """:func:`jaxpop.core.redo` of decoded ``changes``, after checking every field.

    Raises:
      ValueError: ``changes`` is not a well-formed :class:`Changes` that can follow
        ``state``; the message names the first bad field.
    """
    if type(changes) is not Changes:
        raise _fail("the record", "a Changes record", changes)
    for i, c in enumerate(_tuple(changes.checkpoints, "checkpoints")):
        check_checkpoint(c, f"checkpoints[{i}]")
    for i, pair in enumerate(_tuple(changes.workers, "workers")):
        if type(pair) is not tuple or len(pair) != 2:
            raise _fail(f"workers[{i}]", "(worker_id, ActiveWorker)", pair)
        index = _count(pair[0], f"workers[{i}][0]", low=0)
        if index >= state.population_size:
            raise ValueError(
                f"workers[{i}] names worker {index} of a population of {state.population_size}"
            )
        check_active_worker(pair[1], f"workers[{i}][1]")
    if _count(changes.num_events, "num_events", low=1) > _MAX_EVENTS:
        raise ValueError(f"num_events is {changes.num_events}, past {_MAX_EVENTS} events")
    if isinstance(changes.now, bool) or not isinstance(changes.now, (float, numbers.Real)):
        raise _fail("now", "a real number", changes.now)
    if type(changes.mutator_state) is StateDelta:  # (storage version 4: see storage.delta)
        mutator_state = applied(state.mutator_state, changes.mutator_state)
        changes = changes.with_mutator_state(mutator_state)
    state = redo(state, changes)
    _check_parents(changes.checkpoints, state.history, "checkpoints")
    for i, worker in changes.workers:
        if worker.generation_id not in state.history:
            raise ValueError(f"worker {i} is assigned to a generation with no checkpoint")
    return state
