"""``FixedSchedule``: drive every worker's hyperparameters with a fixed schedule.

``FixedSchedule({0: a, 10: b, 30: c})`` trains with ``a`` from step 0, ``b`` from step 10
and ``c`` from step 30 (the seed's form; a :class:`jaxpop.schedules.Piecewise`, such as a
schedule replayed with :func:`jaxpop.schedules.from_lineage`, works the same way).
``FixedSchedule(schedule, every=k)`` takes any schedule callable ``step -> meta_params``
(:mod:`jaxpop.schedules`: per-leaf optax schedules, curricula, ...) and re-evaluates it
at the multiples of ``k``. Each change starts a new generation from the worker's
parameters at the step where it happened, so the history shows exactly which
hyperparameters trained which steps.
"""

from __future__ import annotations

import bisect
import functools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxpop.boundary import copy_in
from jaxpop.events import Ask
from jaxpop.history import History, Mode, check_mode
from jaxpop.mutators import _views
from jaxpop.mutators.base import (
    DecisionCounts,
    Mutator,
    MutatorResult,
    Workers,
    own_result,
    records_config,
    start_generation,
)
from jaxpop.records import FINISHED, ActiveWorker, Checkpoint, with_replaced
from jaxpop.schedules.base import to_host, tree_equal
from jaxpop.schedules.piecewise import Piecewise

__all__ = ["FixedSchedule"]


class FixedSchedule(Mutator):
    """Changes every worker's hyperparameters on a fixed schedule.

    Args:
      schedule: a ``{step: meta_params}`` mapping or a
        :class:`~jaxpop.schedules.Piecewise` (its change points are its steps), or any
        schedule callable ``step -> meta_params``.
      every: for a callable, how often it is re-evaluated: at steps ``0, every,
        2 * every, ...`` (default 1, every step). Given with a mapping or a ``Piecewise``,
        they are evaluated on that grid too (a change point takes effect at the first
        grid point at or past it; before the first one, the initial entry holds).

      on_ask: also apply a change when a worker *asks* for its data at or past its
        step (see below), not only when it reports an evaluation there.
      mode: which evaluation values are better, ``"min"`` (lower, the default) or
        ``"max"``. The schedule decides nothing by them; the run records it
        (``History.mode``), so the report's best member, ``StopWhen(value=...)`` and
        checkpointing's ``keep_best`` rank as they should: replaying a ``mode="max"``
        run's schedule, pass ``mode="max"``.

    A change takes effect when a worker reports an evaluation at or past the change's
    step, as in the seed: that checkpoint becomes the start of a new generation with the
    scheduled ``meta_params``, which the worker receives at its next ask. So with
    ``{0: a, 10: b}`` a worker that evaluates at every step trains step 10 to 11 with
    ``b``. A worker that evaluates rarely gets the change at its next evaluation; with
    ``on_ask=True`` it gets it at the first ask at or past the step instead (its
    parameters at that step start the new generation), which replays a schedule exactly
    in a loop that asks at every step but evaluates now and then. If a worker skips
    past several change points at once, it gets the latest of them. Keys may be ints or
    strings of ints (``{"10": b}``, which the seed read with ``int``).

    * Change points (a mapping or a ``Piecewise``): until the first one a worker trains
      with its initial population entry; every change point passed starts a generation
      (the seed's behaviour).
    * A callable: at the latest multiple ``g`` of ``every`` at or below the worker's
      step, the worker gets ``to_host(schedule(g))`` (jax arrays become Python scalars
      or numpy arrays, the plain data the journal stores), and a new generation only
      when that differs (:func:`jaxpop.schedules.tree_equal`) from the hyperparameters
      it has. Start workers with ``to_host(schedule(0))`` as their population entry to
      avoid a generation at step 0 (``schedule(0)`` itself may be a jax array, which
      is not the plain value the worker is compared with). Each grid point a worker
      passes updates the mutator state (with a ``log_dir``, one small journal record),
      so a coarser ``every`` costs less.

    A worker sent back to an earlier step (``checkpoint_missing``: the params it saved
    later are gone) is sent back in the schedule too: at its next ask or evaluation it
    gets the entry in force at that step (a new generation there, if that differs from
    the hyperparameters it was sent back with), so the steps it trains again are
    trained as scheduled.

    The schedule's values are copied as they enter (a mapping's or a ``Piecewise``'s
    when the mutator is made, a callable's as it returns them), so editing them
    afterwards changes nothing recorded.

    Differences from the seed, on purpose: the schedule itself is never modified; the
    progress (how many change points -- or grid points -- each worker has passed) lives
    in the mutator state, a tuple with one int per worker, so a restored run continues
    exactly.

    An evaluation sent without params (a worker that evaluates more often than it saves)
    cannot start a generation: the worker would be told to initialise fresh parameters.
    With ``on_ask=True`` the change is left to the worker's next ask, which brings its
    params; otherwise it waits for the worker's next evaluation with params if the
    worker saves (its generation holds params already, as ``docs/protocol.md`` reads
    "saves"), and a worker that never sends params gets it at the evaluation, and
    initialises fresh parameters, as a copier of such a worker does. So does a worker
    that saves, at a change before its generation's first save: nothing tells it from
    one that never will (the seed started every such change from ``params=None``);
    ``on_ask=True`` keeps its params. (A grid point passed meanwhile is
    counted then too, changed or not.) A finished worker gets no change (it trains
    nothing; a new generation would make it active again): a report of its own makes it
    active, and the change applies then.

    >>> from jaxpop import PopulationController
    >>> mutator = FixedSchedule({0: {"lr": 0.1}, 10: {"lr": 0.01}})
    >>> controller = PopulationController([{"lr": 0.1}], mutator)
    >>> worker = controller.maybe_get_worker_data(0, None, 0, None, None)
    >>> new = controller.set_eval_and_ask(0, worker.generation_id, 10, "params-10", 0.8)
    >>> new.params, new.meta_params, new.step  # from step 10: a new generation, lr 0.01
    ('params-10', {'lr': 0.01}, 10)
    """

    __slots__ = ()

    @records_config
    def __new__(
        cls,
        schedule: Mapping[int, Any] | Callable[[Any], Any],
        every: int | None = None,
        *,
        on_ask: bool = False,
        mode: Mode = "min",
    ):
        due, value_at, compare = _plan(schedule, every)
        if not isinstance(on_ask, (bool, np.bool_)):
            raise TypeError(f"on_ask must be a bool, got {type(on_ask).__name__}: {on_ask!r:.40}")
        mode = check_mode(mode)

        config = _Config(due, value_at, compare, bool(on_ask))
        views = _views.Views(functools.partial(_entry, config), _COLUMNS, reads_branch_points=False)
        return super().__new__(
            cls,
            tuple,
            functools.partial(_update, config, views),
            # (asks also send back in the schedule a worker that was sent back in steps)
            functools.partial(_ask, config, views),
            counts=_counts,
            mode=mode,
        )


class _Config(NamedTuple):
    due: Callable[[int], int]  # how many schedule points are passed at a step
    value_at: Callable[[int], Any]  # the meta_params of the i-th point (from 1), or _INITIAL
    compare: bool  # skip a point whose value equals the current one
    on_ask: bool  # asks apply changes too (an eval without params leaves its change to them)


def _advance(
    config: _Config,
    state: tuple[int, ...],
    workers: Workers,
    history: History,
    worker_id: int,
    at: Checkpoint,
    now: float,
    key: np.ndarray,
    *,
    on_ask: bool = False,
) -> MutatorResult:
    """Moves ``worker_id`` to the schedule entry in force at ``at.step`` (``on_ask``: an
    update of a mutator whose asks apply changes too): one past points it has not passed
    yet, or, for a worker sent back to an earlier step (``checkpoint_missing``), one
    before points it had passed."""
    passed = state[worker_id] if worker_id < len(state) else 0
    index = config.due(at.step)
    back = index < passed
    if (
        index == passed
        or (back and at.step < workers[worker_id].step)  # a stale ask, behind the worker
        or _waits(history, at, on_ask)
        or workers[worker_id].status == FINISHED
    ):
        # (a finished worker trains nothing: the change waits for a report of its own,
        # which makes it active again; its new generation would have made it active)
        return state, workers, ()
    new_state = list(state) + [0] * (worker_id + 1 - len(state))
    new_state[worker_id] = index
    meta_params = config.value_at(index) if index else _INITIAL
    if meta_params is _INITIAL:  # before the first change point: what the lineage had
        if not back:
            return tuple(new_state), workers, ()  # (what the worker has had all along)
        meta_params = _lineage_hparams(history, at)
    else:
        meta_params = own_result(meta_params)
    if (config.compare or back) and tree_equal(meta_params, at.meta_params):
        return tuple(new_state), workers, ()
    new_checkpoints = []
    if history.get_checkpoint(at.generation_id, at.step) is None:
        new_checkpoints.append(at)
    worker, start = start_generation(at, meta_params, key, worker_id, now)
    new_checkpoints.append(start)
    new_workers = with_replaced(workers, [(worker_id, worker)])
    return tuple(new_state), new_workers, tuple(new_checkpoints)


def _lineage_hparams(history: History, at: Checkpoint) -> Any:
    """The hyperparameters the lineage trained with from ``at``, for a worker sent back
    there before the schedule's first point: those of the checkpoint it was sent back
    to, the parent of a generation started at its parent's step (``checkpoint_missing``
    starts one with the worker's later hyperparameters), else ``at``'s own. (A worker
    sent back to the very start of a generation a copy began takes the copy source's:
    the history does not tell the two kinds of start apart.)"""
    first = history.first(at.generation_id)
    parent = first.parent
    if parent is None or not parent[1] == at.step == first.step:
        return at.meta_params
    if parent[0] != at.generation_id and parent[0] in history:
        return history.meta_params(parent[0])
    return at.meta_params


def _waits(history: History, at: Checkpoint, on_ask: bool) -> bool:
    """Whether a change due at ``at`` waits: ``at`` is an evaluation sent without params
    (past its generation's start), so a generation started there would hand the worker
    ``params=None`` ("initialise fresh parameters"). It waits for the worker's next
    checkpoint with params, if the worker saves, or (``on_ask``) for its next ask, which
    brings them. A worker that never sends params gets it there, and initialises fresh
    parameters, as a copier of such a worker does."""
    gen = at.generation_id
    if at.params is not None or at.step <= history.first(gen).step:
        return False
    return on_ask or history.saves(gen)


#: The column of a worker's view (see :mod:`jaxpop.mutators._views`): ``due``, whether a
#: schedule point it has not passed lies at or before the step it evaluated at, or it
#: was sent back before one it had passed. An update looks at those workers only:
#: O(changes) per evaluation, not O(population).
_COLUMNS = {"due": bool}


def _entry(
    config: _Config, state: tuple[int, ...], history: History, worker_id: int, worker: ActiveWorker
) -> tuple[bool]:
    passed = state[worker_id] if worker_id < len(state) else 0
    index = config.due(worker.step)
    if index <= passed:  # (nothing new; or sent back: its next ask or evaluation says)
        return (index < passed,)
    # a point passed only at an evaluation of the worker's own: an assignment that is
    # not one (a root, a generation's start) is where the worker was sent, and it may
    # have trained past it since (another worker's evaluation sent it back there, fresh)
    at = history.get_checkpoint(worker.generation_id, worker.step)
    return (at is not None and at.value is not None,)


def _update(
    config: _Config,
    views: _views.Views,
    state: tuple[int, ...],
    workers: Workers,
    history: History,
    now: float,
    key: np.ndarray,
) -> MutatorResult:
    view = views.view(state, workers, history)
    due = view["due"].nonzero()[0].tolist()
    if not due:  # the usual case
        views.keep(view)
        return state, workers, ()
    new_state, new_workers, new_history = state, workers, history
    new_checkpoints: list[Checkpoint] = []
    for worker_id in due:
        # where the worker is (its assignment follows its evaluations, and is always
        # recorded): not a later step a run it abandoned left behind
        worker = workers[worker_id]
        gen = worker.generation_id
        at = new_history.get_checkpoint(gen, worker.step) or new_history.latest(gen)
        new_state, new_workers, added = _advance(
            config,
            new_state,
            new_workers,
            new_history,
            worker_id,
            at,
            now,
            key,
            on_ask=config.on_ask,
        )
        if worker_id != due[-1]:  # (the next one here sees these; the core adds them)
            new_history = new_history.add_all(added)
        new_checkpoints.extend(added)
    _follow(views, view, new_state, workers, new_workers, history, due)
    return new_state, new_workers, tuple(new_checkpoints)


def _follow(
    views: _views.Views,
    view: _views.View,
    state: tuple[int, ...],
    workers: Workers,
    new_workers: Workers,
    history: History,
    looked_at: Sequence[int],
) -> None:
    """Labels ``view`` (of ``workers`` and ``history``) with the state and workers a call
    returns and keeps it for the next call: the core's adds make the next call's history
    from ``history``, so the new generations' workers are read again then; the workers
    ``looked_at`` are read again too (their progress in the state may have moved)."""
    view.moved_on(state, workers, history)
    changed = [i for i in looked_at if new_workers[i] is not workers[i]]
    if changed:
        view.reassigned(new_workers, changed)
    view.stale.update(looked_at)
    views.keep(view)


def _ask(
    config: _Config,
    views: _views.Views,
    state: tuple[int, ...],
    workers: Workers,
    history: History,
    ask: Ask,
    now: float,
    key: np.ndarray,
) -> MutatorResult:
    worker_id = ask.worker_id
    assigned = workers[worker_id]
    if not config.on_ask:
        # only a worker sent back before a schedule point it had passed: it gets the
        # entry in force there before it trains again (the usual ask: nothing to do)
        passed = state[worker_id] if worker_id < len(state) else 0
        if config.due(assigned.step) >= passed:
            return state, workers, ()
        at = history.get_checkpoint(assigned.generation_id, assigned.step)
    elif ask.generation_id == assigned.generation_id:
        at = history.get_checkpoint(ask.generation_id, ask.step) or history.continuation(
            ask.generation_id, ask.step, ask.params, None, now
        )
        if at.params is None and ask.params is not None:
            # an evaluation sent without params: the ask brings the worker's params at
            # that step (the new generation's start holds them; the history's stays)
            at = at.replace(params=ask.params)
    else:  # the worker is about to receive its assignment: schedule from there
        at = history.get_checkpoint(assigned.generation_id, assigned.step)
    at = at or history.latest(assigned.generation_id)
    new_state, new_workers, added = _advance(
        config, state, workers, history, worker_id, at, now, key
    )
    if new_state is not state:  # the next update follows this state, not a fresh one
        _follow(
            views,
            views.view(state, workers, history),
            new_state,
            workers,
            new_workers,
            history,
            (worker_id,),
        )
    return new_state, new_workers, added


def _counts(state: tuple[int, ...]) -> DecisionCounts:
    """One decision per schedule point each worker is past (a worker sent back before
    one counts it no more); a schedule never copies."""
    return DecisionCounts(sum(state), 0)


def _plan(
    schedule: Any, every: int | None
) -> tuple[Callable[[int], int], Callable[[int], Any], bool]:
    """``(due, value_at, compare)``: how many points are passed at a step, the value of
    the ``index``-th point (counting from 1), and whether to skip unchanged values."""
    if isinstance(schedule, Mapping) and not isinstance(schedule, Piecewise):
        if not schedule:
            raise ValueError("FixedSchedule takes a non-empty {step: meta_params} mapping, got {}")
        # (pairs: "10" and 10 clash; the values copied: the schedule is as given)
        pairs = [(_step_key(k), copy_in(v, where=f"schedule[{k!r}]")) for k, v in schedule.items()]
        try:
            schedule = Piecewise(pairs)
        except ValueError as err:
            raise ValueError(f"FixedSchedule: {err}") from None
    elif isinstance(schedule, Piecewise):  # (its value trees are the caller's objects)
        schedule = Piecewise(
            [(k, copy_in(v, where=f"schedule[{k!r}]")) for k, v in schedule.items()]
        )
    if every is None and isinstance(schedule, Piecewise):
        # (module-level functions, bound with partial: a FixedSchedule pickles)
        due = functools.partial(_points_passed, schedule.steps)
        return due, functools.partial(_point, schedule.values), False
    if not callable(schedule):
        raise ValueError(
            "FixedSchedule takes a {step: meta_params} mapping or a schedule callable "
            f"step -> meta_params, got {schedule!r:.80}"
        )
    every = 1 if every is None else every
    if isinstance(every, bool) or not isinstance(every, (int, numbers.Integral)) or every <= 0:
        raise ValueError(f"FixedSchedule every must be a positive int, got {every!r}")
    every = int(every)
    return (
        functools.partial(_periods_passed, every),
        functools.partial(_at_period, schedule, every),
        True,
    )


def _points_passed(steps: Sequence[int], step: int) -> int:
    return bisect.bisect_right(steps, step)


def _point(values: Sequence[Any], index: int) -> Any:
    return values[index - 1]


#: What a schedule gives before its first change point: the worker's initial entry.
_INITIAL = object()


def _periods_passed(every: int, step: int) -> int:
    return step // every + 1


def _at_period(schedule: Callable[[int], Any], every: int, index: int) -> Any:
    step = (index - 1) * every
    if isinstance(schedule, Piecewise) and step < schedule.steps[0]:
        return _INITIAL  # (called, a Piecewise gives its first value before its first step)
    return to_host(schedule(step))


def _step_key(key: Any) -> Any:
    """A schedule key as a step: the seed read its keys with ``int(k)``, so ``"10"`` is 10."""
    if isinstance(key, str):
        try:
            return int(key)
        except ValueError:
            raise ValueError(
                f"FixedSchedule: a schedule key must be a step (an int, or a string of one "
                f"such as '10'), got {key!r:.40}"
            ) from None
    return key
