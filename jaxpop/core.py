"""The pure state machine of a population: ``PopulationState`` and its transitions.

Every decision the controller makes is one of the functions here, of the form
``(state, event, now, key, *, mutator) -> (state, reply)``: :func:`ask`,
:func:`set_eval`, :func:`missing` and :func:`finish`, dispatched by :func:`transition`.
They never mutate their inputs, never read a clock or a global random state, and return
the *same* state when an event changes nothing; otherwise the reply carries the
:class:`Changes` made, which :func:`redo` re-applies without running user code.
``docs/protocol.md`` states what a worker can rely on for each event.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxpop import encoding
from jaxpop.boundary import _flat, check_sortable_keys, copy_in
from jaxpop.events import Ask, Eval, Event, Finish, Missing, Reactivate
from jaxpop.history import KEPT_MARK, History, check_mode, is_kept, kept_from, start_time
from jaxpop.keys import as_raw_key, new_generation_id, split_key
from jaxpop.keys import event_key as _event_key
from jaxpop.mutators.base import (
    Mutator,
    MutatorResult,
    check_number,
    is_finite,
    start_generation,
)
from jaxpop.records import (
    ACTIVE,
    FINISHED,
    GONE,
    WAITING,
    ActiveWorker,
    Checkpoint,
    _active_worker,
    _well_formed,
    _well_formed_worker,
    _with_status,
    check_active_worker,
    check_checkpoint,
    forget_made,
    replaced,
    with_replaced,
)
from jaxpop.schedules.base import tree_equal

__all__ = [
    "Changes",
    "PopulationState",
    "Reply",
    "as_value",
    "ask",
    "event_key",
    "StopWhen",
    "expire",
    "finish",
    "init",
    "missing",
    "redo",
    "report",
    "same_hparams",
    "set_eval",
    "stays_done",
    "transition",
]


_KEEP = object()


@struct.dataclass
class StopWhen:
    """When a run (or a worker) is done; every condition given is checked after each call.

    Attributes:
      value: the run is over once a worker reports an evaluation at least this good
        (``<=`` it, or ``>=`` with ``mode="max"``), or any worker's latest evaluation
        is (say, after this stop was given to a resumed run).
      step: a worker is done once it has reported at or past this step (also when the
        decision that report brought copied it back), or copied a checkpoint at or past
        it (its lineage spent the budget): a budget of steps per worker; the run is over
        when every worker is.
      seconds: the run is over this many seconds after it began (a ``log_dir``
        records when, and so do the bytes of ``serialized_state``: a resumed run, or a
        saved state loaded with ``load_state``, counts from its run's first start), by
        the latest time the controller's clock gave (a clock stepping back does not
        reopen a run it ended).

    A done worker becomes ``"finished"`` (``ActiveWorker.status``): its next ask is
    answered with its assignment, status ``"finished"`` -- stop. (An ask that changes
    nothing is checked against ``seconds`` only: nothing else can have changed.) Once
    the run is over (or a worker, at ``step``), a report from a finished or gone worker
    is recorded without waking it: no decision follows (:func:`stays_done`). A run
    reopened with a condition it no longer meets goes on for the workers made active
    again (``PopulationController.reactivate``).

    >>> from jaxpop import PopulationController, StopWhen, WinnerTakeAllGenetic
    >>> mutator = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=100)
    >>> controller = PopulationController([{"lr": 0.1}], mutator, stop_when=StopWhen(value=0.1))
    >>> worker = controller.maybe_get_worker_data(0, None, 0, None, None)
    >>> controller.set_eval(0, worker.generation_id, 7, "params-7", 0.05)  # the target
    >>> controller.done
    True
    >>> controller.maybe_get_worker_data(0, worker.generation_id, 7, None, None).status
    'finished'
    """

    value: float | None = struct.field(pytree_node=False, default=None)
    step: int | None = struct.field(pytree_node=False, default=None)
    seconds: float | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self) -> None:
        for name in ("value", "step", "seconds"):
            x = getattr(self, name)
            if x is None:
                continue
            if (
                isinstance(x, (bool, np.bool_, np.timedelta64))  # (ns counted as seconds)
                or not isinstance(x, numbers.Real)
            ):
                raise TypeError(
                    f"StopWhen {name} must be a number or None, got {type(x).__name__}: {x!r:.40}"
                )
            if not is_finite(x):
                raise ValueError(
                    f"StopWhen {name} must be a finite number (within float64's range) or "
                    f"None, got {x!r:.40}"
                )
            # Python's number: a numpy scalar computes in its own type (a np.uint8 target
            # negated under mode="max" wrapped to 166, a np.float16 budget of seconds
            # rounded the time spent, a np.float32 step budget the step reported)
            plain = int(x) if isinstance(x, numbers.Integral) else float(x)
            object.__setattr__(self, name, plain)
        if self.step is not None and (
            self.step != int(self.step) or not 0 <= self.step < 2**63
        ):  # (a step no worker can report, 2**63 or more, would never end the run)
            raise ValueError(
                f"StopWhen step must be a whole number in [0, 2**63), got {self.step!r:.40}"
            )
        if self.step is not None:
            object.__setattr__(self, "step", int(self.step))
        if self.seconds is not None and self.seconds < 0:
            raise ValueError(f"StopWhen seconds must be >= 0, got {self.seconds!r}")


@struct.dataclass
class PopulationState:
    """Everything a population is: assignments, history, mutator state, randomness.

    Attributes:
      workers: the current assignment of each worker, indexed by worker id.
      mutator_state: the mutator's own state (plain data).
      key: the run's root PRNG key (raw ``uint32[2]``); event ``i`` uses
        ``event_key(state)`` at ``num_events == i``.
      history: every checkpoint recorded so far (see :class:`jaxpop.history.History`);
        a pytree child like the others, so ``jax.tree.map`` over a state reaches the
        params of every checkpoint as well as those of the current assignments.
      num_events: how many state-changing events have been applied.
    """

    workers: tuple[ActiveWorker, ...]
    mutator_state: Any
    key: np.ndarray
    history: History
    num_events: int = struct.field(pytree_node=False, default=0)

    @property
    def population_size(self) -> int:
        return len(self.workers)

    def _with(
        self,
        *,
        workers: tuple[ActiveWorker, ...] | None = None,
        mutator_state: Any = _KEEP,
        history: History | None = None,
        num_events: int | None = None,
    ) -> PopulationState:
        # ``replace`` without ``dataclasses.replace``'s overhead (this is the hot path)
        return _population_state(
            self.workers if workers is None else workers,
            self.mutator_state if mutator_state is _KEEP else mutator_state,
            self.key,
            self.history if history is None else history,
            self.num_events if num_events is None else num_events,
        )


# Hot-path constructors, as in jaxpop.records: filling a new instance's ``__dict__`` in
# field order builds the same record as the frozen dataclass's ``__init__`` (which sets
# each field through ``object.__setattr__``) in a third of the time.
def _population_state(
    workers: tuple[ActiveWorker, ...],
    mutator_state: Any,
    key: np.ndarray,
    history: History,
    num_events: int,
) -> PopulationState:
    """``PopulationState(workers, mutator_state, key, history, num_events)``."""
    state = object.__new__(PopulationState)
    fields = state.__dict__
    fields["workers"] = workers
    fields["mutator_state"] = mutator_state
    fields["key"] = key
    fields["history"] = history
    fields["num_events"] = num_events
    return state


@struct.dataclass
class Changes:
    """What one state-changing event did, as plain data.

    :func:`redo` applies it to the state the event was applied to and gives the state
    the event produced, without running any mutator or user code: this is what durable
    storage journals, so a journal replays exactly even when a user's mutation function
    is not deterministic.

    Attributes:
      checkpoints: the checkpoints the event added or replaced, in order.
      workers: ``(worker_id, ActiveWorker)`` for each assignment that changed.
      mutator_state: the mutator's state after the event.
      num_events: ``state.num_events`` after the event.
      now: the time the event was applied at.
    """

    checkpoints: tuple[Checkpoint, ...]
    workers: tuple[tuple[int, ActiveWorker], ...]
    mutator_state: Any
    num_events: int
    now: float

    def with_mutator_state(self, mutator_state: Any) -> Changes:
        """``self.replace(mutator_state=mutator_state)``, without ``dataclasses.replace``'s
        overhead (storage journals every event's state as a change from the last)."""
        return _changes(self.checkpoints, self.workers, mutator_state, self.num_events, self.now)


class Reply(NamedTuple):
    """What a transition answers.

    Attributes:
      worker: for ``ask``, the assignment to switch to, or ``None`` to keep going.
      checkpoint: for ``set_eval``, the checkpoint recorded (``None`` if ignored).
      warning: a message for the caller to log, or ``None``.
      changes: what the event changed (``None`` when it changed nothing).
    """

    worker: ActiveWorker | None = None
    checkpoint: Checkpoint | None = None
    warning: str | None = None
    changes: Changes | None = None


def _changes(
    checkpoints: tuple[Checkpoint, ...],
    workers: tuple[tuple[int, ActiveWorker], ...],
    mutator_state: Any,
    num_events: int,
    now: float,
) -> Changes:
    """``Changes(checkpoints, workers, mutator_state, num_events, now)`` (see
    :func:`_population_state`)."""
    changes = object.__new__(Changes)
    fields = changes.__dict__
    fields["checkpoints"] = checkpoints
    fields["workers"] = workers
    fields["mutator_state"] = mutator_state
    fields["num_events"] = num_events
    fields["now"] = now
    return changes


#: How many events a run can apply: event keys are folded in from a uint32 index.
MAX_EVENTS = 2**32


def event_key(state: PopulationState) -> np.ndarray:
    """The key of the next event applied to ``state``.

    A run that applied all of its :data:`MAX_EVENTS` events gets the last one's key:
    :func:`_finish` refuses any further event that would change its state.
    """
    return _event_key(state.key, min(state.num_events, MAX_EVENTS - 1))


def check_events_left(state: PopulationState) -> None:
    """Raises ``ValueError`` if ``state`` has applied the last event a run can number."""
    if state.num_events >= MAX_EVENTS:
        raise ValueError(
            f"this run has used all 2**32 events its keys can number (num_events is "
            f"{state.num_events}): no further change can be applied; start a new run"
        )


def init(
    initial_population: Iterable[Any], mutator: Mutator, *, key: np.ndarray, now: float
) -> PopulationState:
    """The state of a fresh population: one generation per initial ``meta_params``.

    Each worker starts at step 0 with ``params=None``; each generation's first
    checkpoint (no value, no parent) records its hyperparameters. The history ranks
    values the way ``mutator.mode`` says.
    """
    refused = TypeError(
        "initial_population must be a sequence with one meta_params per worker, "
        f"got a {type(initial_population).__name__}"
    )
    if isinstance(initial_population, (Mapping, str, bytes)):
        raise refused
    try:  # (not iterable: None, 3; a TypeError of its own items is theirs, raised as it is)
        items = iter(initial_population)
    except TypeError:
        raise refused from None
    population = list(items)
    if not population:
        raise ValueError(
            "initial_population is empty: pass one meta_params pytree per worker, "
            'e.g. [{"log_lr": -4.0}, {"log_lr": -3.0}]'
        )
    key = as_raw_key(key)
    workers, history = [], History(mode=check_mode(mutator.mode))
    for i, meta_params in enumerate(population):
        check_sortable_keys(meta_params, f"initial_population[{i}]")
        meta_params = copy_in(meta_params)
        generation_id = new_generation_id(key, i)
        workers.append(ActiveWorker(None, meta_params, generation_id, 0))
        history = history.add(Checkpoint(None, meta_params, generation_id, None, None, 0, now))
    return PopulationState(tuple(workers), mutator.init(), key, history, 0)


def check_population(initial_population: Sequence[Any], mutator: Mutator) -> None:
    """Raises the mutator's error for an initial population it cannot work with
    (``Mutator.check_population``; nothing for a mutator without one). A controller
    calls it when a run starts afresh, not when it resumes."""
    check = getattr(mutator, "check_population", None)
    if check is not None:
        check(list(initial_population))


def as_value(value: Any) -> float:
    """``value`` as a Python float, or ``TypeError`` if it is not a real number.

    Accepts ints, floats, numpy scalars and one-element numeric numpy or jax arrays.
    """
    if type(value) is float:
        return value
    if np.ma.isMaskedArray(value) and value.size == 1 and np.ma.getmaskarray(value).any():
        # (its hidden data, or 0.0 for np.ma.masked, was recorded: a best loss that won)
        raise ValueError(f"set_eval value is masked (no value): {value!r:.80}")
    if isinstance(value, (np.timedelta64, np.datetime64)) or _kind(value) in ("m", "M"):
        raise TypeError(  # (np.timedelta64(5) was recorded as 5.0)
            f"set_eval value must be a real number, got a time: {value!r:.80}"
        )
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        try:
            return _finite_if_finite(float(value), value)
        except OverflowError:
            raise _too_large(value) from None
    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(value, "size", None) == 1 and _real_dtype(dtype):
        scalar = np.asarray(value).reshape(())[()]
        return _finite_if_finite(float(scalar), scalar)
    raise TypeError(
        f"set_eval value must be a real number (a float, an int, or a one-element numeric "
        f"array), got {type(value).__name__}: {value!r:.80}"
    )


def _kind(value: Any) -> str | None:
    """The kind of ``value``'s dtype (a numpy or jax value's), ``None`` for another value."""
    return getattr(getattr(value, "dtype", None), "kind", None)


def _real_dtype(dtype: Any) -> bool:
    """Integers and floats, ``bfloat16`` and the other ``ml_dtypes`` floats included
    (numpy files those under kind ``"V"``)."""
    return np.dtype(dtype).kind in "fiu" or bool(jnp.issubdtype(dtype, jnp.floating))


def _finite_if_finite(converted: float, value: Any) -> float:
    """``converted``, unless a finite ``value`` (an ``np.longdouble`` past 1.8e308)
    became inf: then ``ValueError``, as for an int too large for a float."""
    if math.isinf(converted) and isinstance(value, np.generic) and np.isfinite(value):
        raise _too_large(value)
    return converted


def _too_large(value: Any) -> ValueError:
    return ValueError(
        f"set_eval value {value!r:.40} is too large for a float; report a float "
        "(math.inf if the run diverged: it is stored and never wins)"
    )


def _check_worker(state: PopulationState, worker_id: Any) -> int:
    if type(worker_id) is int and 0 <= worker_id < len(state.workers):
        return worker_id
    if isinstance(worker_id, bool) or not isinstance(worker_id, numbers.Integral):
        raise TypeError(f"worker_id must be an int, got {type(worker_id).__name__}: {worker_id!r}")
    if not 0 <= int(worker_id) < state.population_size:
        raise ValueError(
            f"worker_id {worker_id} is out of range: this population has "
            f"{state.population_size} workers, so worker ids are 0 to "
            f"{state.population_size - 1}"
        )
    return int(worker_id)


def _as_generation_id(generation_id: Any, who: str) -> str | None:
    """An event's generation id: a ``str`` (a ``str`` subclass such as ``np.str_``
    becomes one, as stored and journaled) or ``None``; else ``TypeError``."""
    if generation_id is None or type(generation_id) is str:
        return generation_id
    if isinstance(generation_id, str):
        return str(generation_id)
    raise TypeError(
        f"{who}: generation_id must be a str (the one the controller gave the worker) or "
        f"None, got {type(generation_id).__name__}: {generation_id!r:.40}"
    )


_MAX_STEP = 2**63 - 1  # steps are stored as int64 (journal, views, on-device records)


def check_step(step: Any) -> int:
    """``step`` as an ``int``: a whole number of training steps in ``[0, 2**63)`` (an
    integral float or numpy integer too), else the controller's ``TypeError`` (``2.5``,
    ``"3"``, a bool) or ``ValueError`` (negative, too large)."""
    return _check_step(step)


def _check_step(step: Any) -> int:
    if type(step) is int and 0 <= step <= _MAX_STEP:
        return step
    kind = getattr(getattr(step, "dtype", None), "kind", None)  # (a numpy or jax array's)
    if kind == "O" and getattr(step, "shape", None) == ():  # (a 0-d array of objects)
        return _check_step(step.item())
    if kind in ("m", "M"):  # (np.timedelta64(12) was step 12)
        raise TypeError(f"step must be an int, got a {step.dtype} value: {step!r:.40}")
    if isinstance(step, (bool, np.bool_)) or kind == "b":  # (np.array(True) was step 1)
        raise TypeError(f"step must be an int, got a bool: {step!r:.40}")
    if isinstance(step, (complex, np.complexfloating)) or kind == "c":  # (12+0j was 12)
        raise TypeError(f"step must be an int, got a complex number: {step!r:.40}")
    if not isinstance(step, numbers.Integral):
        try:
            as_int = int(step)
        except (TypeError, ValueError, OverflowError):
            as_int = None
        if as_int is None or as_int != step:
            raise TypeError(
                f"step must be an int (a whole number of training steps), got "
                f"{type(step).__name__}: {step!r:.40}"
            )
        step = as_int
    step = int(step)
    if not 0 <= step <= _MAX_STEP:
        raise ValueError(
            f"step must be a whole number of training steps in [0, 2**63), got {step!r:.40}"
        )
    return step


def _result(result: Any, who: str) -> tuple[Any, Any, Any]:
    """A mutator's ``(state, workers, new_checkpoints)``, or ``TypeError`` naming what it
    returned instead (``None`` raised "Value after * must be an iterable")."""
    if type(result) is tuple and len(result) == 3:  # (the usual case)
        return result
    try:
        items = tuple(result)
    except TypeError:
        items = None
    if items is None or len(items) != 3:
        raise TypeError(
            f"{who} returned {type(result).__name__} {result!r:.80}; a mutator returns "
            "(state, workers, new_checkpoints)"
        )
    return items


def _apply_mutator(
    state: PopulationState,
    mutator_state: Any,
    workers: Sequence[ActiveWorker],
    new_checkpoints: Sequence[Checkpoint],
    who: str,
) -> tuple[PopulationState, list[int]]:
    """Folds a mutator's result into ``state``, checking that it is consistent; with the
    ids of the workers whose assignment it replaced."""
    if mutator_state is state.mutator_state and workers is state.workers and not new_checkpoints:
        return state, []
    workers = tuple(workers)
    if len(workers) != state.population_size:
        raise ValueError(
            f"{who} returned {len(workers)} workers for a population of "
            f"{state.population_size}; a mutator must return one assignment per worker"
        )
    history = state.history
    for i, checkpoint in enumerate(new_checkpoints):
        # as storage reads it (the messages are built only for a record that fails)
        if not (type(checkpoint) is Checkpoint and _well_formed(checkpoint)):
            check_checkpoint(checkpoint, f"{who}'s new checkpoint {i}")
        parent = checkpoint.parent
        if not 0 <= checkpoint.step <= _MAX_STEP or (
            parent is not None and not 0 <= parent[1] <= _MAX_STEP
        ):  # (checked here, where records enter: a journal that holds one still resumes)
            raise ValueError(
                f"{who}'s new checkpoint {i} ({checkpoint.ref}, parent {parent}) has a step "
                "outside [0, 2**63), the steps a worker can send"
            )
        if not _flat(checkpoint.meta_params):
            check_sortable_keys(checkpoint.meta_params, f"the meta_params {who} returned")
        if history.get_checkpoint(checkpoint.generation_id, checkpoint.step) is not None:
            raise ValueError(
                f"{who} returned a checkpoint for {checkpoint.ref}, which is already in "
                "the history; a mutator may only add checkpoints, never replace them"
            )
        if is_kept(checkpoint.generation_id):
            raise ValueError(
                f"{who} returned a checkpoint for {checkpoint.ref}: a generation id holding "
                f"{KEPT_MARK!r} names a kept generation (jaxpop.history.is_kept), which only "
                "the controller makes and adds to; use jaxpop.keys.new_generation_id"
            )
        if checkpoint.generation_id in history:
            _check_same_hparams(
                checkpoint.meta_params,
                history,
                checkpoint.generation_id,
                who,
                f"a new checkpoint ({checkpoint.ref})",
            )
        history = history.add(checkpoint)
    for i, checkpoint in enumerate(new_checkpoints):  # (as a journal's replay checks them)
        parent = checkpoint.parent
        if parent is not None and history.get_checkpoint(*parent) is None:
            raise ValueError(
                f"{who}'s new checkpoint {i} ({checkpoint.ref}) has parent {parent}, which "
                "is not in the history; a checkpoint's parent is one recorded (or added "
                "with it)"
            )
    if len(new_checkpoints) > 1 or (  # (one: a loop only if it is its own parent)
        new_checkpoints and new_checkpoints[0].parent == new_checkpoints[0].ref
    ):
        _check_no_loop(new_checkpoints, who)
    changed = replaced(workers, state.workers)
    for i in changed:
        worker = workers[i]
        if not isinstance(worker, ActiveWorker):
            raise TypeError(f"{who} returned a {type(worker).__name__} for worker {i}")
        if not _well_formed_worker(worker):
            check_active_worker(worker, f"{who}'s worker {i}")
        if not 0 <= worker.step <= _MAX_STEP:
            raise ValueError(
                f"{who} assigned worker {i} step {worker.step}, outside [0, 2**63), the "
                "steps a worker can send"
            )
        if worker.generation_id not in history:
            raise ValueError(
                f"{who} assigned worker {i} to generation {worker.generation_id!r}, which "
                "has no checkpoint in the history; return its starting checkpoint too"
            )
        if is_kept(worker.generation_id):
            raise ValueError(
                f"{who} assigned worker {i} to the kept generation {worker.generation_id!r} "
                "(jaxpop.history.is_kept), which no worker holds: start a generation from "
                "its checkpoint instead"
            )
        start = history.first(worker.generation_id).step
        if worker.step < start:  # (its reports there would be ignored as stale, for good)
            raise ValueError(
                f"{who} assigned worker {i} step {worker.step} of generation "
                f"{worker.generation_id!r}, before the generation starts (its first "
                f"checkpoint is at step {start}): a worker trains on from a checkpoint of "
                "its generation; start the generation at the worker's step, or send the "
                f"worker to step {start}"
            )
        _check_same_hparams(worker.meta_params, history, worker.generation_id, who, f"worker {i}")
        at = history.get_checkpoint(worker.generation_id, worker.step)
        if (
            at is not None
            and at.params is not None
            and worker.params is not None
            and worker.params is not at.params
            and not _equal_params(worker.params, at.params)
        ):
            raise ValueError(
                f"{who} assigned worker {i} params {worker.params!r:.60} at {at.ref}, where "
                f"the history records {at.params!r:.60}: the worker would load other "
                "params than the history says it trained from; assign the checkpoint's "
                "params, or start a new generation (with its first checkpoint) for new ones"
            )
    if changed:
        _check_one_holder(workers, state, changed, who)
    if mutator_state is state.mutator_state and not new_checkpoints and not changed:
        return state, changed
    if not changed:
        workers = state.workers
    return state._with(workers=workers, mutator_state=mutator_state, history=history), changed


def _check_no_loop(new_checkpoints: Sequence[Checkpoint], who: str) -> None:
    """Raises unless the parent links among ``new_checkpoints`` end outside them: one
    that is its own parent (or a ring of them) would make its lineage loop."""
    parents = {c.ref: c.parent for c in new_checkpoints}
    if not any(parent in parents for parent in parents.values()):
        return  # (the usual case: every parent is a recorded checkpoint)
    ends: set[Any] = set()  # refs whose parents lead out of the new ones (walked once)
    for checkpoint in new_checkpoints:
        path, ref = {checkpoint.ref}, checkpoint.parent
        while ref in parents and ref not in ends:
            if ref in path:
                raise ValueError(
                    f"{who}'s new checkpoint {ref} descends from itself (its parents "
                    "among the checkpoints added with it loop back to it): its lineage "
                    "would never end"
                )
            path.add(ref)
            ref = parents[ref]
        ends.update(path)


def _check_same_hparams(
    meta_params: Any, history: History, generation_id: str, who: str, what: str
) -> None:
    """Raises unless ``meta_params`` are those ``generation_id``'s checkpoints record
    (:func:`same_hparams`)."""
    recorded = history.meta_params(generation_id)
    if not same_hparams(meta_params, recorded):
        raise ValueError(
            f"{who} gave {what} the meta_params {meta_params!r:.80} in generation "
            f"{generation_id!r}, whose checkpoints record {recorded!r:.80}: a generation's "
            "hyperparameters never change (the history would record other values than the "
            "worker trains with); start a new generation, with its first checkpoint, for "
            "new ones"
        )


def same_hparams(a: Any, b: Any) -> bool:
    """Whether two hyperparameter trees are one generation's: the same object (the usual
    case), equal (:func:`jaxpop.schedules.tree_equal`), or of the same encoding (records
    the journal decoded apart, holding arrays or NaN)."""
    if a is b or tree_equal(a, b):
        return True
    try:
        return encoding.encode(a) == encoding.encode(b)
    except (TypeError, ValueError):
        return False


def _finish(
    old: PopulationState,
    new: PopulationState,
    added: list[Checkpoint],
    now: float,
    workers: tuple[tuple[int, ActiveWorker], ...] | None = None,
) -> tuple[PopulationState, Changes | None]:
    """Counts the event and describes its changes, if it changed anything.

    ``workers``: the ``(worker_id, assignment)`` of each assignment that changed, when
    the caller knows them; ``None``: found by comparing ``new.workers`` with ``old``'s.
    """
    if new is old:
        return old, None
    check_events_left(old)
    num_events = old.num_events + 1
    new_workers, mutator_state = new.workers, new.mutator_state
    new = _population_state(new_workers, mutator_state, new.key, new.history, num_events)
    if workers is None:
        if new_workers is old.workers:
            workers = ()
        else:
            workers = tuple([(i, new_workers[i]) for i in replaced(new_workers, old.workers)])
    return new, _changes(tuple(added), workers, mutator_state, num_events, now)


def redo(state: PopulationState, changes: Changes) -> PopulationState:
    """Re-applies recorded :class:`Changes` to the state they were recorded on."""
    if changes.num_events != state.num_events + 1:
        raise ValueError(
            f"changes of event {changes.num_events - 1} cannot follow a state at event "
            f"{state.num_events}: events are missing or out of order"
        )
    workers = with_replaced(state.workers, changes.workers)
    forget_made()  # (records._LAST: nothing compares these, and no assignment is kept)
    return state._with(
        workers=workers,
        mutator_state=changes.mutator_state,
        history=state.history.add_all(changes.checkpoints),
        num_events=changes.num_events,
    )


def ask(
    state: PopulationState, event: Ask, now: float, key: np.ndarray, *, mutator: Mutator
) -> tuple[PopulationState, Reply]:
    """A worker asks for its data; ``docs/protocol.md#ask`` states the protocol."""
    worker_id = _check_worker(state, event.worker_id)
    step = _check_step(event.step)
    generation_id = _as_generation_id(event.generation_id, "maybe_get_worker_data")
    new = state
    added: list[Checkpoint] = []
    if mutator.ask is not None:
        if (
            worker_id is not event.worker_id
            or generation_id is not event.generation_id
            or step is not event.step
        ):  # the hook sees what is recorded: an int step, a str generation id
            event = dataclasses.replace(
                event, worker_id=worker_id, generation_id=generation_id, step=step
            )
        result = mutator.ask(state.mutator_state, state.workers, state.history, event, now, key)
        result = _result(result, "mutator.ask")
        if event.params is not None and any(c.params is event.params for c in result[2]):
            result = _own_params(result, event.params)
        new, _ = _apply_mutator(state, *result, who="mutator.ask")
        added.extend(result[2])
    assigned = new.workers[worker_id]
    if assigned.status == GONE:  # it asks: it is alive
        assigned = _with_status(assigned, ACTIVE)
        workers = new.workers
        new = new._with(workers=with_replaced(workers, [(worker_id, assigned)]))
    warning = None
    reply_worker: ActiveWorker | None
    restart = generation_id is None or generation_id == ""
    if generation_id is None or generation_id == "":  # (restart, spelled for mypy)
        reply_worker = assigned
    elif generation_id == assigned.generation_id:
        # keep going -- unless it is finished (told so: status "finished") or held
        reply_worker = None if assigned.status == ACTIVE else assigned
    elif generation_id not in new.history:
        reply_worker = assigned
        warning = (
            f"worker {worker_id} asked with generation {generation_id!r}, which this "
            f"controller never made; resyncing it to {assigned.generation_id!r}"
        )
    elif is_kept(generation_id):  # (not the worker's: no worker holds a kept one)
        reply_worker = assigned  # nothing recorded: a kept generation takes no checkpoint
        warning = (
            f"worker {worker_id} asked with generation {generation_id!r}, a kept generation "
            "no worker holds (jaxpop.history.is_kept); resyncing it to "
            f"{assigned.generation_id!r}"
        )
    elif step < new.history.first(generation_id).step:
        reply_worker = assigned  # a stale ask: resynced, nothing recorded
        warning = (
            f"worker {worker_id} asked with generation {generation_id!r} at step {step}, "
            "before that generation started: a stale ask; resyncing it to "
            f"{(assigned.generation_id, assigned.step)!r}"
        )
    elif (holder := _holder(new, worker_id, generation_id)) is not None:
        reply_worker = assigned  # nothing recorded: its params are not that worker's
        warning = (
            f"worker {worker_id} asked with generation {generation_id!r}, which worker "
            f"{holder} holds (mixed-up worker ids?); resyncing it to "
            f"{(assigned.generation_id, assigned.step)!r}"
        )
    else:
        reply_worker = assigned
        if new.history.get_checkpoint(generation_id, step) is None:
            params = copy_in(event.params, where="the params of the ask")
            last = new.history.continuation(generation_id, step, params, None, now)
            new = new._with(history=new.history.add(last))
            added.append(last)
    if reply_worker is assigned and assigned.status == ACTIVE:
        # told to load its assignment, where there is nothing to load: a restart's
        # evaluation sent without params, or params another worker reported missing; it
        # goes where checkpoint_missing would send it, the newest checkpoint of its
        # lineage with params (never to params known gone)
        at = (assigned.generation_id, assigned.step)
        if restart and _unsaved(new.history, assigned):
            why = f"asked with no generation (a restart) while its assignment {at} is an "
            why += "evaluation sent without params"
        elif _lost(new.history, assigned):
            why = f"is sent to its assignment {at}, whose params "
            why += f"{assigned.params!r:.200} were reported missing"
        else:
            why = None
        if why is not None:
            new, reply_worker, back, _ = _step_back(new, worker_id, now, key, None)
            added.extend(back)
            new, reply_worker = _asks_where_sent(new, worker_id, now, key, mutator, added)
            moved = f"worker {worker_id} {why}; it resumes from "
            moved += f"{(reply_worker.generation_id, reply_worker.step)}"
            warning = moved if warning is None else f"{warning}; {moved}"
            assigned = reply_worker
    if (reply_worker is None or reply_worker is assigned) and _held(mutator, new, worker_id):
        # held until the round is decided: one that keeps going, and one that restarted
        # or resyncs to its assignment (told to train, it went past the interval)
        reply_worker = _with_status(assigned, WAITING)
    new, changes = _finish(state, new, added, now)
    return new, Reply(worker=reply_worker, warning=warning, changes=changes)


def _held(mutator: Mutator, state: PopulationState, worker_id: int) -> bool:
    """Whether the mutator holds an active worker until its round is decided."""
    holds = mutator.holds
    return (
        holds is not None
        and state.workers[worker_id].status == ACTIVE
        and holds(state.mutator_state, state.workers, state.history, worker_id)
    )


def _own_params(result: MutatorResult, params: Any) -> MutatorResult:
    """An ask hook's result with the controller's own copy of the ``params`` the worker
    sent wherever it recorded them (a ``FixedSchedule(on_ask=True)`` starts a generation
    from them): the worker's objects stay the worker's, as for an eval."""
    mine = copy_in(params, where="the params of the ask")
    checkpoints = tuple(c.replace(params=mine) if c.params is params else c for c in result[2])
    workers = result[1]
    if any(w.params is params for w in workers):
        workers = tuple(w.replace(params=mine) if w.params is params else w for w in workers)
    return result[0], workers, checkpoints


def set_eval(
    state: PopulationState,
    event: Eval,
    now: float,
    key: np.ndarray,
    *,
    mutator: Mutator,
    wake: bool = True,
) -> tuple[PopulationState, Reply]:
    """A worker records an evaluation; ``docs/protocol.md#eval`` states the protocol.

    ``wake=False``: a finished or gone worker's evaluation is recorded, and the worker
    keeps its status and the mutator does not decide (:func:`stays_done`: the run, or the
    worker, is over).
    """
    worker_id = _check_worker(state, event.worker_id)
    step = _check_step(event.step)
    value = as_value(event.value)
    generation_id = _as_generation_id(event.generation_id, "set_eval")
    history = state.history
    if generation_id is None or generation_id == "" or generation_id not in history:
        return state, Reply(
            warning=(
                f"set_eval from worker {worker_id} for generation {generation_id!r}, which "
                "this controller never made; the evaluation was ignored (ask for the "
                "worker's data first with maybe_get_worker_data)"
            )
        )
    if is_kept(generation_id) and state.workers[worker_id].generation_id != generation_id:
        # (a worker's own generation of this name, from a mutator of a run recorded before
        # kept generations took "~", records as before)
        return state, Reply(
            warning=(
                f"set_eval from worker {worker_id} for generation {generation_id!r}, a kept "
                "generation no worker holds (jaxpop.history.is_kept); the evaluation was "
                "ignored"
            )
        )
    first = history.first(generation_id)
    if step < first.step:
        return state, Reply(
            warning=(
                f"set_eval from worker {worker_id} for generation {generation_id!r} at step "
                f"{step}, before the generation started (step {first.step}): a stale "
                "report; the evaluation was ignored (ask for the worker's data first with "
                "maybe_get_worker_data)"
            )
        )
    holder = _holder(state, worker_id, generation_id)
    if holder is not None:
        return state, Reply(
            warning=(
                f"set_eval from worker {worker_id} for generation {generation_id!r}, which "
                f"worker {holder} holds (mixed-up worker ids?); the evaluation was ignored "
                "(its params would have been recorded, and copied, as that worker's)"
            )
        )
    workers = state.workers
    assigned = workers[worker_id]
    advances = assigned.generation_id == generation_id and step > assigned.step
    existing = history.get_checkpoint(generation_id, step)
    params = copy_in(event.params, where="set_eval params")  # (the caller's stay the caller's)
    if params is None and existing is not None and not advances:
        # "params=None": the worker holds what it had there (a copy evaluating what it
        # loaded at its start); only a worker trained there anew says nothing about them
        params = existing.params
    # the report recorded already, again (a retry whose reply was lost): nothing new to
    # record (its later time would count as progress) or decide (a finished worker would
    # wake); only a gone worker is alive again, and the mutator decides with it
    repeat = existing is not None and not advances and _same_report(existing, params, value)
    if repeat and assigned.status != GONE:
        return state, Reply(checkpoint=existing)
    # trained from where the worker was sent, not from an abandoned earlier run
    resumed = advances and history.get_checkpoint(generation_id, assigned.step) is not None
    if resumed and existing is not None and _descends_from(history, assigned, existing):
        resumed = False  # (where it was sent descends from this step: a parent link back
        # to it would loop; it keeps its own)
    kept: list[Checkpoint] = []  # the replaced params, kept for the copies of them
    if existing is not None and repeat:
        checkpoint = existing
    elif existing is not None:  # existing.replace(params=params, value=value, time=now)
        kept = _keep_for_copies(history, existing, params, key)
        checkpoint = Checkpoint(
            params,
            existing.meta_params,
            existing.generation_id,
            value,
            (generation_id, assigned.step) if resumed else _own_parent(existing),
            existing.step,
            now,
        )
    elif resumed:
        parent = (generation_id, assigned.step)
        meta_params = history.meta_params(generation_id)
        checkpoint = Checkpoint(params, meta_params, generation_id, value, parent, step, now)
    else:
        checkpoint = history.continuation(generation_id, step, params, value, now)
    moved: tuple[tuple[int, ActiveWorker], ...] = ()  # the assignment this report changed
    wake = wake or assigned.status == ACTIVE
    if advances:  # the worker's assignment follows its progress (and it is active)
        status = ACTIVE if wake else assigned.status
        worker = _active_worker(params, assigned.meta_params, generation_id, step, status)
        moved = ((worker_id, worker),)
        workers = with_replaced(workers, moved)
    elif not wake:
        pass  # a done worker's report at (or behind) its assignment: recorded, no more
    elif assigned.generation_id == generation_id and (
        assigned.status != ACTIVE
        or (step == assigned.step and event.params is not None and params is not assigned.params)
    ):
        # a finished or gone worker reports again; or the worker reports its assigned
        # step anew, with params: a restart resumes from those (the history's)
        worker = _active_worker(
            assigned.params if step != assigned.step or params is None else params,
            assigned.meta_params,
            generation_id,
            assigned.step,
            ACTIVE,
        )
        moved = ((worker_id, worker),)
        workers = with_replaced(workers, moved)
    elif assigned.status == GONE:  # reporting on an earlier generation: it is alive
        moved = ((worker_id, _with_status(assigned, ACTIVE)),)
        workers = with_replaced(workers, moved)
    if not repeat:
        for added_checkpoint in (*kept, checkpoint):  # (one add each: see History.added_since)
            history = history.add(added_checkpoint)
    new = state._with(history=history, workers=workers)
    if wake:
        result = _result(
            mutator.update(new.mutator_state, new.workers, new.history, now, key), "mutator.update"
        )
        new, replaced_ids = _apply_mutator(new, *result, who="mutator.update")
    else:
        result, replaced_ids = (new.mutator_state, new.workers, ()), []
    # the assignments that changed: this report's and the mutator's
    changed = moved
    if replaced_ids:
        ids = set(replaced_ids)
        if moved:
            ids.add(worker_id)
        changed = tuple(
            [(i, new.workers[i]) for i in sorted(ids) if new.workers[i] is not state.workers[i]]
        )
    added = list(result[2]) if repeat else [*kept, checkpoint, *result[2]]
    new, changes = _finish(state, new, added, now, changed)
    return new, Reply(checkpoint=checkpoint, changes=changes)


# the index of a kept generation's fresh id, new_generation_id(key, _KEPT_INDEX): the
# largest new_generation_id takes, far past the worker (or member) index a mutator
# passes with the same event key, so the event's mutator never makes the same id (nor
# could it: no id new_generation_id makes holds KEPT_MARK)
_KEPT_INDEX = 2**64 - 1


def _keep_for_copies(
    history: History, existing: Checkpoint, params: Any, key: np.ndarray
) -> list[Checkpoint]:
    """Before a rerun's ``params`` replace ``existing`` (its generation's checkpoint at
    its step), the checkpoints that keep ``existing``'s params for the generations
    copied from it: ``existing`` as the one checkpoint of a new, kept generation
    (:func:`jaxpop.history.is_kept`), then each copy's start pointing at that instead.
    Empty when the params stay (no copy then holds params other than its parent's), or
    nothing was copied from ``existing``.

    The walk over every generation that finds the copies runs only here, once the params
    differ: a rerun replacing params, which is rare (``docs/protocol.md#eval``).
    """
    old = existing.params
    if old is None or old is params or _equal_params(old, params):
        return []
    ref = existing.ref
    copies = [
        first
        for generation_id in history
        if (first := history.first(generation_id)).parent == ref
        and generation_id != existing.generation_id
    ]
    # and the generation's own later checkpoints trained from it (a rerun of step 10
    # after step 20: (g, 20) descends from the old params, not the rerun's)
    copies += [c for c in history[existing.generation_id].values() if c.parent == ref]
    if not copies:
        return []
    kept_id = f"{existing.generation_id}{KEPT_MARK}{new_generation_id(key, _KEPT_INDEX)}"
    keeper = existing.replace(generation_id=kept_id)
    return [keeper, *[first.replace(parent=keeper.ref) for first in copies]]


def _own_parent(checkpoint: Checkpoint) -> tuple[str, int] | None:
    """The parent a rerun of ``checkpoint`` trains from: its own, or, where that was
    moved to a kept generation of ``checkpoint``'s (:func:`_keep_for_copies`: the step
    below was rerun), the generation's checkpoint at that step again (the rerun's)."""
    parent = checkpoint.parent
    if parent is not None and kept_from(parent[0]) == checkpoint.generation_id:
        return (checkpoint.generation_id, parent[1])
    return parent


def _descends_from(history: History, worker: ActiveWorker, checkpoint: Checkpoint) -> bool:
    """Whether the checkpoint a worker was sent to descends from ``checkpoint`` (walked
    only on a rare path: a report of a recorded step after the worker was sent back)."""
    start = history.get_checkpoint(worker.generation_id, worker.step)
    return start is not None and any(c.ref == checkpoint.ref for c in history.back_from(start))


def _same_report(existing: Checkpoint, params: Any, value: float) -> bool:
    """Whether an evaluation repeats the recorded ``existing``: the same value (NaN
    repeats NaN) and the same params."""
    old = existing.value
    if old is None or not (old == value or (old != old and value != value)):
        return False
    return existing.params is params or _equal_params(existing.params, params)


class _TypedKey:
    """A typed PRNG key as :func:`_as_journaled` compares it: its implementation and
    data (a key is no array numpy can compare; no user value equals one of these)."""

    __slots__ = ("data", "impl")

    def __init__(self, key: jax.Array):
        self.impl, self.data = str(jax.random.key_impl(key)), np.asarray(jax.random.key_data(key))

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is _TypedKey
            and self.impl == other.impl
            and self.data.shape == other.data.shape
            and bool(np.array_equal(self.data, other.data))
        )

    __hash__ = None  # type: ignore[assignment]


def _as_journaled(params: Any) -> Any:
    """``params`` in the form a journal gives them back (:mod:`jaxpop.encoding`): arrays
    in native byte order, numpy scalars as their dtype's own type (``np.longlong`` as
    ``np.int64``), typed PRNG keys as their implementation and data."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return _TypedKey(x)
        if isinstance(x, np.ndarray) and not x.dtype.isnative:
            return x.astype(x.dtype.newbyteorder("="))
        if isinstance(x, np.generic) and x.dtype.kind in "biufc":
            return np.dtype(x.dtype.str).type(x)
        return x

    return jax.tree.map(leaf, params)


def report(
    state: PopulationState, event: Eval, now: float, key: np.ndarray, *, mutator: Mutator
) -> tuple[PopulationState, Reply]:
    """Deprecated name of :func:`set_eval` ("report" now names only the run report)."""
    warnings.warn(
        "jaxpop.core.report is deprecated: use jaxpop.core.set_eval",
        DeprecationWarning,
        stacklevel=2,
    )
    return set_eval(state, event, now, key, mutator=mutator)


def _same_params(history: History, checkpoint: Checkpoint) -> list[Checkpoint]:
    """``checkpoint`` and the checkpoints it was copied from at the same step: a new
    generation's start holds its source's params (compared by position, not by value,
    so this holds for pytrees decoded from a journal too)."""
    chain = [checkpoint]
    while (parent := checkpoint.parent) is not None and parent[1] == checkpoint.step:
        source = history.get_checkpoint(*parent)
        if source is None or source in chain:
            break
        chain.append(source)
        checkpoint = source
    return chain


def missing(
    state: PopulationState, event: Missing, now: float, key: np.ndarray, *, mutator: Mutator
) -> tuple[PopulationState, Reply]:
    """A worker could not load its assignment (``docs/protocol.md#a-checkpoint-that-is-gone``)."""
    worker_id = _check_worker(state, event.worker_id)
    step = _check_step(event.step)
    if not isinstance(event.generation_id, str):
        raise TypeError(
            "checkpoint_missing: generation_id must be the str of the assignment that could "
            f"not be loaded, got {type(event.generation_id).__name__}: {event.generation_id!r:.40}"
        )
    history = state.history
    assigned = state.workers[worker_id]
    called = state
    if assigned.status == GONE:  # it calls: it is alive (as at an ask)
        assigned = _with_status(assigned, ACTIVE)
        state = state._with(workers=with_replaced(state.workers, [(worker_id, assigned)]))
    if (event.generation_id, step) != (assigned.generation_id, assigned.step) and not _lost(
        history, assigned
    ):
        state, changes = _finish(called, state, [], now)
        return state, Reply(
            worker=assigned,
            changes=changes,
            warning=(
                f"worker {worker_id} could not load {(event.generation_id, step)}, which is "
                f"no longer its assignment; sending it {(assigned.generation_id, assigned.step)}"
            ),
        )
    if assigned.params is None and not _unsaved(history, assigned):
        raise ValueError(
            f"checkpoint_missing: worker {worker_id}'s assignment "
            f"{(assigned.generation_id, assigned.step)} has params=None, which means "
            "'initialise fresh parameters': there is nothing to load"
        )
    new, worker, added, marked = _step_back(state, worker_id, now, key, event.exists)
    new, worker = _asks_where_sent(new, worker_id, now, key, mutator, added)
    new, changes = _finish(called, new, added, now)
    return new, Reply(
        worker=worker,
        changes=changes,
        warning=(
            f"worker {worker_id} could not load {assigned.params!r:.200} (the params of "
            f"{(assigned.generation_id, assigned.step)}); {marked} checkpoint(s) holding "
            "params that are gone are marked missing in the history, and the worker moved "
            f"to {(worker.generation_id, worker.step)}"
        ),
    )


def _asks_where_sent(
    state: PopulationState,
    worker_id: int,
    now: float,
    key: np.ndarray,
    mutator: Mutator,
    added: list[Checkpoint],
) -> tuple[PopulationState, ActiveWorker]:
    """``state`` after the mutator's ask hook saw a worker that :func:`_step_back` sent
    elsewhere ask there (the worker loads what it is sent, as it would an ask's answer:
    a ``FixedSchedule`` gives a worker sent back before a point the entry in force
    there), with its assignment; the checkpoints the hook added go to ``added``. The
    hook gets a key of its own: ``_step_back``'s new generation took the event's."""
    worker = state.workers[worker_id]
    if mutator.ask is None:
        return state, worker
    at = Ask(None, None, worker_id, worker.generation_id, worker.step)
    hook_key = split_key(key, 2)[1]
    result = mutator.ask(state.mutator_state, state.workers, state.history, at, now, hook_key)
    result = _result(result, "mutator.ask")
    new, _ = _apply_mutator(state, *result, who="mutator.ask")
    added.extend(result[2])
    return new, new.workers[worker_id]


def _equal_params(a: Any, b: Any) -> bool:
    """Whether two params (a handle, or a pytree) are the same: equal, array by array
    (a mutator made its assignment from the checkpoint's params, not the same object),
    or equal as a journal gives them back (:func:`_as_journaled`: a report repeated
    after a restart, whose params came back in native byte order, was taken as a new
    one: a new time, the mutator called again, a kept generation made; and params
    holding a typed key, which no comparison could read, always were)."""
    for same in (
        lambda: tree_equal(a, b),
        lambda: tree_equal(_as_journaled(a), _as_journaled(b)),
    ):
        try:
            if same():
                return True
        except Exception:  # (what cannot be compared is not known to be the same)
            pass
    return False


def _check_one_holder(
    workers: tuple[ActiveWorker, ...], state: PopulationState, changed: list[int], who: str
) -> None:
    """Raises ``ValueError`` if a mutator's result puts two workers on one generation:
    each would record its reports over the other's (and every report or ask would be
    refused as another worker's generation). Each generation has one holder before; only
    the changed assignments are checked, all of them in O(changes) unless one moves to a
    generation the history held already."""
    moved_to: dict[str, int] = {}  # generation -> the first changed worker sent there
    for i in changed:
        generation_id = workers[i].generation_id
        other = moved_to.setdefault(generation_id, i)
        if other == i:  # (the first: is another, unchanged, worker on it?)
            if (
                generation_id == state.workers[i].generation_id  # (it held it, alone)
                or generation_id not in state.history  # (new: no worker held it)
            ):
                continue
            on_it = (j for j, w in enumerate(workers) if w.generation_id == generation_id)
            other = next((j for j in on_it if j != i), i)
        if other != i:
            raise ValueError(
                f"{who} assigned workers {min(i, other)} and {max(i, other)} the same "
                f"generation {generation_id!r}: each worker trains a generation of its "
                "own (their reports would be recorded over each other's); start a new "
                "generation, with its first checkpoint, for each worker"
            )


def _holder(state: PopulationState, worker_id: int, generation_id: str) -> int | None:
    """Another worker whose assignment is ``generation_id``, when the worker's own is
    not: a report or ask there is another worker's (mixed-up ids), never recorded.
    O(population), only off the usual path (a report on the worker's own generation)."""
    workers = state.workers
    if workers[worker_id].generation_id == generation_id:
        return None
    return next(
        (i for i, w in enumerate(workers) if w.generation_id == generation_id and i != worker_id),
        None,
    )


def _lost(history: History, worker: ActiveWorker) -> bool:
    """Whether an assignment's params were reported missing: its checkpoint in the
    history holds none (``checkpoint_missing`` marked them) while it still does."""
    if worker.params is None:
        return False
    at = history.get_checkpoint(worker.generation_id, worker.step)
    return at is not None and at.params is None


def _unsaved(history: History, worker: ActiveWorker) -> bool:
    """Whether an assignment is an evaluation sent without params by a worker that saves
    (past its generation's start): nothing it can load. (``params=None`` at a
    generation's start, or from a worker that never sends params, means "initialise
    fresh parameters", or "go on with the params you hold".)"""
    gen = worker.generation_id
    return worker.params is None and worker.step > history.first(gen).step and history.saves(gen)


#: Params that name stored ones (a path, a key): equal ones are the same stored params,
#: so one reported missing is missing wherever a checkpoint holds it.
_HANDLES = (str, bytes, os.PathLike)


def _step_back(
    state: PopulationState,
    worker_id: int,
    now: float,
    key: np.ndarray,
    exists: Callable[[Any], bool] | None,
) -> tuple[PopulationState, ActiveWorker, list[Checkpoint], int]:
    """Moves a worker whose assignment's params cannot be loaded (gone, or never sent) to
    the newest checkpoint of its lineage that has params (``exists`` says which still
    do), or to a fresh start; with the checkpoints added and how many of them record
    params that are gone."""
    history = state.history
    assigned = state.workers[worker_id]
    at = history.get_checkpoint(assigned.generation_id, assigned.step)
    lost_refs: set = set()
    lost_handles: set[Any] = set()  # names of stored params: every copy holding one is lost

    def lose(checkpoint: Checkpoint | None, params: Any) -> None:
        if isinstance(params, _HANDLES):
            lost_handles.add(params)
        for c in _same_params(history, checkpoint) if checkpoint is not None else ():
            lost_refs.add(c.ref)

    def is_lost(checkpoint: Checkpoint) -> bool:
        params = checkpoint.params
        return checkpoint.ref in lost_refs or (
            isinstance(params, _HANDLES) and params in lost_handles
        )

    if assigned.params is not None:
        lose(at, assigned.params)
    start = at or history.previous(assigned.generation_id, assigned.step)
    found = None
    for checkpoint in reversed(history.lineage(*start.ref) if start is not None else ()):
        if checkpoint.params is None:
            if checkpoint.parent is None:  # a root: a fresh start
                found = checkpoint
                break
        elif not is_lost(checkpoint):
            if exists is None or exists(checkpoint.params):
                found = checkpoint
                break
            lose(checkpoint, checkpoint.params)  # gone too: skip it, and say so
    added = []
    # the worker goes back within its generation: the evaluations of its run after the
    # point it goes back to (their params lost, or never sent) are set aside (value None
    # too), so they never rank it as its latest
    back_to = (
        found.step if found is not None and found.generation_id == assigned.generation_id else None
    )
    marked = 0
    for checkpoint in history.checkpoints():  # O(history), once per call, on a rare event
        abandoned = (
            back_to is not None
            and checkpoint.generation_id == assigned.generation_id
            and checkpoint.step > back_to
        )
        if checkpoint.params is not None and is_lost(checkpoint):
            added.append(
                checkpoint.replace(params=None, value=None if abandoned else checkpoint.value)
            )
            marked += 1
        elif (
            abandoned
            and checkpoint.params is None
            and checkpoint.value is not None
            and checkpoint.step <= assigned.step
        ):  # an evaluation of the abandoned run sent without params
            added.append(checkpoint.replace(value=None))
    history = history.add_all(added)
    if found is not None and found.generation_id == assigned.generation_id:
        worker = ActiveWorker(
            found.params, assigned.meta_params, found.generation_id, found.step, assigned.status
        )
    else:  # from an ancestor's checkpoint (or from scratch) with its own hyperparameters
        root = found or Checkpoint(None, assigned.meta_params, "", None, None, 0, now)
        index = 0  # (the event's key may have made an id already: an ask hook's)
        while new_generation_id(key, index) in history:
            index += 1
        worker, first = start_generation(root, assigned.meta_params, key, index, now)
        if found is None:
            first = first.replace(parent=None)
        worker = worker.replace(status=assigned.status)
        history = history.add(first)
        added.append(first)
    workers = with_replaced(state.workers, [(worker_id, worker)])
    return state._with(workers=workers, history=history), worker, added, marked


def _set_status(
    state: PopulationState, changed: dict[int, str], now: float, key: np.ndarray, mutator: Mutator
) -> tuple[PopulationState, Changes | None]:
    """Gives workers a new status, then lets the mutator decide without them."""
    if not changed:
        return state, None
    workers = tuple(
        _with_status(w, changed[i]) if i in changed else w for i, w in enumerate(state.workers)
    )
    new = state._with(workers=workers)
    result = _result(
        mutator.update(new.mutator_state, new.workers, new.history, now, key), "mutator.update"
    )
    new, _ = _apply_mutator(new, *result, who="mutator.update")
    return _finish(state, new, list(result[2]), now)


def finish(
    state: PopulationState, event: Finish, now: float, key: np.ndarray, *, mutator: Mutator
) -> tuple[PopulationState, Reply]:
    """A worker is done: it is ``"finished"``, and the mutator goes on without it.

    Its assignment and checkpoints stay; it is never copied and never waited for. A
    worker that is finished already changes nothing.
    """
    return _give_status(state, event.worker_id, FINISHED, now, key, mutator)


def reactivate(
    state: PopulationState, event: Reactivate, now: float, key: np.ndarray, *, mutator: Mutator
) -> tuple[PopulationState, Reply]:
    """A finished or gone worker is ``"active"`` again, and the mutator decides with it
    (it is waited for, compared and copied again); an active worker changes nothing.
    Whether the run allows it (``stop_when``) is the caller's to check: see
    :func:`over_for`."""
    return _give_status(state, event.worker_id, ACTIVE, now, key, mutator)


def _give_status(
    state: PopulationState,
    worker_id: Any,
    status: str,
    now: float,
    key: np.ndarray,
    mutator: Mutator,
) -> tuple[PopulationState, Reply]:
    """One worker's status becomes ``status`` (nothing changes if it has it)."""
    i = _check_worker(state, worker_id)
    changed = {} if state.workers[i].status == status else {i: status}
    new, changes = _set_status(state, changed, now, key, mutator)
    return new, Reply(worker=new.workers[i], changes=changes)


def stop(
    state: PopulationState,
    now: float,
    key: np.ndarray,
    *,
    when: StopWhen,
    mutator: Mutator,
    added: Sequence[Checkpoint] = (),
    reported: tuple[int, int] | None = None,
    start: float | None = None,
) -> tuple[PopulationState, Changes | None]:
    """Finishes the workers that ``when`` says are done (see :class:`StopWhen`).

    ``added``: the checkpoints the event just applied recorded (its ``Changes``): an
    evaluation there counts for ``when.value`` even if the mutator then moved its
    worker on to a new generation (a copy, a ``WinnerTakeAllGenetic`` round).
    ``reported``: ``(worker_id, step)`` of the evaluation the event recorded, which
    counts for ``when.step`` likewise. ``start``: when the population started (``None``:
    read from the history, O(generations)).
    """
    history = state.history
    active = [i for i, w in enumerate(state.workers) if w.status == ACTIVE]
    if not active:
        return state, None
    over = False
    if when.seconds is not None:
        if start is None:
            start = start_time(history)
        over = now - start >= when.seconds
    if when.value is not None and not over:
        target = history.rank(when.value)
        latest = [history.latest_evaluated(w.generation_id) for w in state.workers]
        over = any(
            c is not None and c.value is not None and history.rank(c.value) <= target
            for c in (*added, *latest)
        )
    if over:
        changed = dict.fromkeys(active, FINISHED)
    elif when.step is not None:
        spent = {reported[0]} if reported is not None and reported[1] >= when.step else set()
        changed = {
            i: FINISHED
            for i in active
            if i in spent or _spent(history, state.workers[i], when.step)
        }
    else:
        changed = {}
    return _set_status(state, changed, now, key, mutator)


def stays_done(
    state: PopulationState,
    event: Eval | Ask | Missing,
    now: float,
    when: StopWhen,
    start: float | None,
) -> bool:
    """Whether a call that could wake a worker -- an evaluation from a finished or gone
    worker, any call of a gone one -- comes once the run, or that worker, is over by
    ``when``: it must not wake it (woken, the mutator decided with it -- a round played
    after the run ended -- and the run was no longer done). The run is over past
    ``when.seconds`` (``start``: when the population started), or once any evaluation
    recorded, or this one, is at least ``when.value`` (the whole history: a round that
    copied the one that reached it leaves no worker's latest evaluation there); the
    worker is, at ``when.step``. "This one" only if the controller records it: a call
    it ignores (a generation it never made, another worker's) says nothing of the run.
    O(history), only for such a call (rarely)."""
    try:
        i = _check_worker(state, event.worker_id)
        status = state.workers[i].status
        if status == ACTIVE or (status != GONE and type(event) is not Eval):
            return False  # (the usual case; only a report wakes a finished worker)
        step: int | None = None if event.step is None else _check_step(event.step)
        value = as_value(event.value) if type(event) is Eval else None
        generation_id = _as_generation_id(event.generation_id, "the call")
    except (TypeError, ValueError):
        return False  # (the event is refused)
    if not _recorded_on(state, i, generation_id, step):
        step = value = None  # (ignored: its step and value say nothing of the run)
    if step is not None and when.step is not None and step >= when.step:
        return True
    target = None if when.value is None else state.history.rank(when.value)
    if target is not None and state.history.rank(value) <= target:
        return True
    return over_for(state, i, now, when, start) is not None


def _recorded_on(
    state: PopulationState, worker_id: int, generation_id: str | None, step: int | None
) -> bool:
    """Whether a call of ``worker_id`` on ``generation_id`` at ``step`` is one the
    controller records (set_eval's checks): not a generation it never made, a kept one
    the worker does not hold, a step before the generation started or a generation
    another worker holds (mixed-up ids), which are ignored."""
    history = state.history
    if not generation_id or generation_id not in history:
        return False
    if is_kept(generation_id) and state.workers[worker_id].generation_id != generation_id:
        return False
    if step is not None and step < history.first(generation_id).step:
        return False
    return _holder(state, worker_id, generation_id) is None


def over_for(
    state: PopulationState, worker_id: int, now: float, when: StopWhen, start: float | None
) -> str | None:
    """Why ``when`` says the run, or worker ``worker_id``, is over (``None``: it is
    not): past ``when.seconds`` since ``start`` (``None``: read from the history), an
    evaluation recorded at ``when.value`` or better, the worker's ``when.step`` used (as
    its assignment shows it: a worker that a decision copied back below the budget, off
    a lineage that had spent it, has not). O(history)."""
    history = state.history
    if when.seconds is not None:
        if start is None:
            start = start_time(history)
        if now - start >= when.seconds:
            return f"its time budget ({when.seconds} s) is spent"
    budget = when.step
    if budget is not None and _spent(history, state.workers[worker_id], budget):
        return f"worker {worker_id} used its step budget ({budget} steps)"
    if when.value is None:
        return None
    target = history.rank(when.value)
    if any(history.rank(c.value) <= target for c in history.checkpoints()):
        return f"an evaluation reached its target value ({when.value})"
    return None


def _spent(history: History, worker: ActiveWorker, budget: int) -> bool:
    """Whether a worker used its step budget: it reported at or past it, or copied a
    checkpoint there (its lineage did)."""
    latest = history.latest_evaluated(worker.generation_id)
    if latest is not None and latest.step >= budget:
        return True
    return worker.step >= budget and history.first(worker.generation_id).parent is not None


def expire(
    state: PopulationState,
    now: float,
    key: np.ndarray,
    *,
    after_s: float,
    mutator: Mutator,
    seen: Mapping[int, float] | None = None,
) -> tuple[PopulationState, Changes | None]:
    """Declares ``"gone"`` every active worker not heard from for more than ``after_s``
    seconds (positive): its newest checkpoint (its last report, or the start of the
    generation it was sent to) and its last call (``seen``: worker id -> time, as the
    shell saw its calls; a worker told to wait only asks) are both older than that."""
    seen = {} if seen is None else seen
    after_s = check_number("after_s", after_s)  # (a numpy scalar: its precision, not time's)
    cutoff = now - after_s
    changed = {
        i: GONE
        for i, w in enumerate(state.workers)
        if w.status == ACTIVE
        and state.history.latest(w.generation_id).time < cutoff
        and seen.get(i, -math.inf) < cutoff
    }
    return _set_status(state, changed, now, key, mutator)


def transition(
    state: PopulationState, event: Event, now: float, key: np.ndarray, *, mutator: Mutator
) -> tuple[PopulationState, Reply]:
    """Applies one event (an :class:`Ask`, an :class:`Eval`, a :class:`Missing`, a
    :class:`Finish` or a :class:`Reactivate`)."""
    try:
        if isinstance(event, Ask):
            return ask(state, event, now, key, mutator=mutator)
        if isinstance(event, Eval):
            return set_eval(state, event, now, key, mutator=mutator)
        if isinstance(event, Missing):
            return missing(state, event, now, key, mutator=mutator)
        if isinstance(event, Finish):
            return finish(state, event, now, key, mutator=mutator)
        if isinstance(event, Reactivate):
            return reactivate(state, event, now, key, mutator=mutator)
        raise TypeError(f"unknown event type {type(event).__name__}")
    finally:
        forget_made()  # no assignment of this event is kept past it (records._LAST)
