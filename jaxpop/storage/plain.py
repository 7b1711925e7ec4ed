"""A population state as plain data, and the checks every decoded record passes.

The encoding builds only registered record classes, but it cannot know what their
fields should hold: a hostile or damaged file can decode into a ``Checkpoint`` whose
step is a string or an ``ActiveWorker`` list of ints. :func:`state_from_plain` and
:func:`check_changes` accept only what a controller writes and raise ``ValueError``
naming the field otherwise (storage turns that into a ``CorruptLogError`` naming the
file), so nothing ill-typed ever reaches the core.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from jaxpop.core import Changes, PopulationState
from jaxpop.history import History
from jaxpop.records import ActiveWorker, Checkpoint

__all__ = ["check_changes", "state_from_plain", "state_to_plain"]

_STATE_FIELDS = ("workers", "mutator_state", "key", "num_events", "checkpoints")


def state_to_plain(state: PopulationState) -> dict[str, Any]:
    """The whole state as plain data (what a snapshot stores)."""
    return {
        "workers": state.workers,
        "mutator_state": state.mutator_state,
        "key": state.key,
        "num_events": state.num_events,
        "checkpoints": tuple(state.history.checkpoints()),
    }


def _fail(where: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{where} is not {what}: {type(value).__name__} {value!r:.80}")


def _int(value: Any, where: str, *, low: int | None = None) -> int:
    if type(value) is not int or (low is not None and value < low):
        raise _fail(where, "an int" if low is None else f"an int >= {low}", value)
    return value


def _real(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(where, "a real number", value)
    return value


def _generation_id(value: Any, where: str) -> str:
    if type(value) is not str or not value:
        raise _fail(where, "a generation id (a non-empty str)", value)
    return value


def _tuple(value: Any, where: str) -> tuple:
    if type(value) is not tuple:
        raise _fail(where, "a tuple", value)
    return value


def _check_checkpoint(c: Any, where: str) -> None:
    if type(c) is not Checkpoint:
        raise _fail(where, "a Checkpoint", c)
    _generation_id(c.generation_id, f"{where}.generation_id")
    _int(c.step, f"{where}.step")
    if c.value is not None and type(c.value) is not float:
        raise _fail(f"{where}.value", "None or a float", c.value)
    if c.parent is not None:
        parent = _tuple(c.parent, f"{where}.parent")
        if len(parent) != 2:
            raise _fail(f"{where}.parent", "(generation_id, step)", parent)
        _generation_id(parent[0], f"{where}.parent[0]")
        _int(parent[1], f"{where}.parent[1]")
    _real(c.time, f"{where}.time")


def _check_worker(w: Any, where: str, history: History) -> None:
    if type(w) is not ActiveWorker:
        raise _fail(where, "an ActiveWorker", w)
    _generation_id(w.generation_id, f"{where}.generation_id")
    _int(w.step, f"{where}.step")
    if w.generation_id not in history:
        raise ValueError(f"{where} is assigned to {w.generation_id!r}, which has no checkpoint")


def state_from_plain(plain: Any) -> PopulationState:
    """Inverse of :func:`state_to_plain`, for decoded data: checks every field.

    Raises:
      ValueError: ``plain`` is not what :func:`state_to_plain` makes; the message names
        the first bad field.
    """
    if type(plain) is not dict or tuple(plain) != _STATE_FIELDS:
        keys = tuple(plain) if type(plain) is dict else type(plain).__name__
        raise ValueError(f"the state is not a map of {_STATE_FIELDS} (got {keys!r:.200})")
    checkpoints = _tuple(plain["checkpoints"], "checkpoints")
    for i, c in enumerate(checkpoints):
        _check_checkpoint(c, f"checkpoints[{i}]")
    history = History().add_all(checkpoints)
    if history.num_checkpoints != len(checkpoints):
        raise ValueError("checkpoints holds the same (generation_id, step) twice")
    workers = _tuple(plain["workers"], "workers")
    if not workers:
        raise ValueError("workers is empty: a population has at least one worker")
    for i, w in enumerate(workers):
        _check_worker(w, f"workers[{i}]", history)
    key = plain["key"]
    if type(key) is not np.ndarray or key.dtype != np.uint32 or key.ndim != 1 or not key.size:
        raise _fail("key", "a raw PRNG key (a 1-d uint32 numpy array)", key)
    return PopulationState(
        workers=workers,
        mutator_state=plain["mutator_state"],
        key=key,
        history=history,
        num_events=_int(plain["num_events"], "num_events", low=0),
    )


def check_changes(changes: Any, population_size: int) -> Changes:
    """``changes`` if it is a well-formed :class:`Changes` for this population.

    Raises:
      ValueError: naming the first bad field.
    """
    if type(changes) is not Changes:
        raise _fail("the record", "a Changes record", changes)
    for i, c in enumerate(_tuple(changes.checkpoints, "checkpoints")):
        _check_checkpoint(c, f"checkpoints[{i}]")
    for i, pair in enumerate(_tuple(changes.workers, "workers")):
        if type(pair) is not tuple or len(pair) != 2:
            raise _fail(f"workers[{i}]", "(worker_id, ActiveWorker)", pair)
        index = _int(pair[0], f"workers[{i}][0]", low=0)
        if index >= population_size:
            raise ValueError(
                f"workers[{i}] names worker {index} of a population of {population_size}"
            )
        if type(pair[1]) is not ActiveWorker:
            raise _fail(f"workers[{i}][1]", "an ActiveWorker", pair[1])
        _generation_id(pair[1].generation_id, f"workers[{i}][1].generation_id")
        _int(pair[1].step, f"workers[{i}][1].step")
    _int(changes.num_events, "num_events", low=1)
    _real(changes.now, "now")
    return changes
