"""Replay: the schedule of hyperparameters a member of a population actually trained with.

PBT finds a schedule online: a member trains with some hyperparameters, is copied by
(or copies) another member, continues with new ones, and so on. Its parameters at the
end descend, through the checkpoints' ``parent`` links, from one root (or from a copy
that was handed no params and started fresh); each link was trained with the
hyperparameters of the checkpoint it leads to. :func:`from_lineage`
reads that chain back into a :class:`~jaxpop.schedules.Piecewise` schedule, so that::

    schedule = from_lineage(controller.state)            # the best final member
    replay = PopulationController([schedule(0)], FixedSchedule(schedule, on_ask=True))

trains a single fresh worker with exactly the hyperparameters the member trained with,
step by step (what Ray Tune calls PBT replay; a ``mode="max"`` run's replay takes
``FixedSchedule(..., mode="max")``, so that it ranks as the run did) -- provided the
worker asks for its data at every step (or at least at each of the schedule's steps),
as the Quick Start loop does. (``on_ask=True`` applies each change at the ask at its
step; by default, as in the seed, ``FixedSchedule`` applies it at the first evaluation
at or past it.)

Steps count updates: the value of a schedule at step ``t`` is the ``meta_params`` of the
update that takes the parameters from step ``t`` to step ``t + 1``. A checkpoint at
step ``s`` whose parent is at step ``p`` was trained with its own ``meta_params`` for
steps ``p .. s - 1``; a generation's first checkpoint (copied, ``p == s``) trained
nothing but fixes the hyperparameters that follow it.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

from jaxpop.history import History, kept_from
from jaxpop.records import Checkpoint
from jaxpop.schedules.base import tree_equal
from jaxpop.schedules.piecewise import Piecewise

if TYPE_CHECKING:  # (jaxpop.core imports this package)
    from jaxpop.core import PopulationState

__all__ = ["best_final", "from_lineage"]


def best_final(source: History | PopulationState) -> Checkpoint:
    """The evaluated checkpoint of the best member at the end of a run.

    Given the run's state (``controller.state``, a :class:`~jaxpop.core.PopulationState`)
    of several workers, the members are the workers: each is scored by the latest
    evaluated checkpoint of its trajectory (its generation's, else the one its
    generation copied), and the best member is the one whose score is best -- the
    lowest value, or the highest when ``history.mode`` is ``"max"``; a NaN or infinite
    score after every finite one; among equals the lowest worker id. This is the best
    member of ``jaxpop report`` and of the loggers.

    Given only a :class:`~jaxpop.history.History`, which does not say which
    generations the workers are on, or the state of a single worker, whose branches
    (``BranchingSingleMachine``) are its members, the members are taken to be the generations
    evaluated at the *final step*, the highest step at which any checkpoint carries a
    finite value: the best is the evaluated checkpoint at that step with the best value
    (among equal values the generation created first). A NaN or infinite value never
    wins over a finite one (a member that diverged at a later step does not); only when
    no value is finite do they count, by the same rule. For a run whose workers all stop
    at the same step this is the best worker at the end (with
    ``BranchingSingleMachine``, the better branch of a final explore phase); where they
    stop at different steps (asynchronous PBT, a time budget), pass the state.
    O(number of generations), plus the evaluations a generation made after its last
    finite one.

    Raises:
      ValueError: no checkpoint in ``history`` carries a value.
    """
    history, workers = _history_and_workers(source)
    if workers is not None and len(workers) > 1:
        return _best_member(history, workers)[1]
    best: Checkpoint | None = None
    best_key: tuple[bool, int, float] | None = None
    for generation_id in history:
        checkpoint = history.latest_evaluated(generation_id)
        if checkpoint is None:
            continue
        if history.rank(checkpoint.value) == math.inf:  # diverged: its last finite value
            evaluated = history.evaluated(generation_id)
            finite = [c for c in evaluated if c.value is not None and math.isfinite(c.value)]
            if finite:  # (a later NaN must not hide it: the final step is the last finite)
                checkpoint = finite[-1]
        rank = history.rank(checkpoint.value)  # inf: NaN or infinite
        key = (rank == math.inf, -checkpoint.step, rank)
        if best_key is None or key < best_key:
            best, best_key = checkpoint, key
    if best is None:
        raise ValueError(
            "the history holds no evaluated checkpoint, so there is no best member: "
            "pass generation_id= to from_lineage"
        )
    return best


def _history_and_workers(source: Any) -> tuple[History, Any]:
    """``(history, workers)`` of a run's state; ``(history, None)`` of a history."""
    if isinstance(source, History):
        return source, None
    history, workers = getattr(source, "history", None), getattr(source, "workers", None)
    if not isinstance(history, History) or not isinstance(workers, tuple):
        raise TypeError(
            f"expected a History or a run's state (controller.state), got {type(source).__name__}"
        )
    return history, workers


def _position(history: History, worker: Any) -> Checkpoint:
    """The checkpoint a worker's parameters are at: its generation's newest that holds
    params or a value. (``checkpoint_missing`` sends a worker back within its generation
    and sets aside the checkpoints of the run it left, params and value ``None``: their
    lineage is no longer its own. A worker's own ``step`` does not say where it is: a
    lineage an on-device population recorded before it moved its members did not move
    them.) Its first, if none does."""
    latest = history.latest(worker.generation_id)
    if latest.params is not None or latest.value is not None:
        return latest  # (the usual case: O(1))
    for checkpoint in reversed(history[worker.generation_id].values()):  # (one walk)
        if checkpoint.params is not None or checkpoint.value is not None:
            return checkpoint
    return history.first(worker.generation_id)


def _scored(history: History, worker: Any) -> Checkpoint | None:
    """A worker's score: the latest evaluated checkpoint along its lineage (a copy not
    evaluated yet is scored by the checkpoint it copied); ``None`` before any."""
    return next(
        (c for c in history.back_from(_position(history, worker)) if c.value is not None), None
    )


def _best_member(history: History, workers: tuple[Any, ...]) -> tuple[int, Checkpoint]:
    """:func:`best_final` of a run's state: its best worker and that worker's scored
    checkpoint (the rule ``jaxpop report`` ranks its members by)."""
    best: tuple[int, Checkpoint] | None = None
    best_key: tuple[int, float] | None = None
    for i, worker in enumerate(workers):
        if worker.generation_id not in history:
            continue  # (not in a consistent state)
        scored = _scored(history, worker)
        if scored is None:
            continue
        value = scored.value
        assert value is not None  # (evaluated)
        key = (0, history.rank(value)) if math.isfinite(value) else (1, 0.0)
        if best_key is None or key < best_key:
            best, best_key = (i, scored), key
    if best is None:
        raise ValueError(
            "no member has an evaluated checkpoint yet, so there is no best member: "
            "pass generation_id= to from_lineage"
        )
    return best


def from_lineage(
    history: History | PopulationState,
    generation_id: str | None = None,
    *,
    step: int | None = None,
) -> Piecewise:
    """The piecewise schedule of hyperparameters a member trained with, root to end.

    Walks ``parent`` links from the checkpoint back to where its parameters were
    initialised. Before an exploit the schedule is the copied member's (its own
    history, recursively), from the exploit on the new hyperparameters'. Consecutive
    equal ``meta_params`` (:func:`~jaxpop.schedules.tree_equal`) make one piece. The
    values are deep copies of the ``meta_params`` stored in the history: editing one
    changes neither the other nor the history.

    Parameters start fresh at the root, and at a copy made of an evaluation sent
    without params (``WinnerTakeAllGenetic``'s rounds before a worker's first save,
    a ``FixedSchedule`` change for a worker that never saves): its start holds
    ``params=None``, which tells the copier to initialise fresh parameters. The schedule
    then begins at that copy's step, with its hyperparameters: the steps before it
    trained parameters the member does not descend from (a replay trains the first
    value there, as before any ``Piecewise``'s first step). A copy's start whose params
    a later copy at its step holds is not such a start. (The history cannot tell a
    start whose params ``checkpoint_missing`` later marked as gone from one that never
    had any: it reads both as fresh. Nor does it record a worker that restarted after an
    evaluation sent without params, before its generation's first save: answered that
    evaluation (``params=None``), it initialised fresh parameters there, in the middle
    of its generation, and the schedule still begins at the generation's start.)

    Args:
      history: a run's history (``controller.history``, or a ``log_dir``'s via
        :func:`jaxpop.storage.read_state`), or its state (``controller.state``), which
        also says which members are the workers' (see :func:`best_final`).
      generation_id: the member's generation; ``None``: the best final member
        (:func:`best_final` of ``history``).
      step: the checkpoint of that generation to start from; ``None``: the generation's
        latest checkpoint (with ``generation_id=None``: the best final checkpoint).

    Returns:
      A :class:`~jaxpop.schedules.Piecewise` whose first step is where the member's
      parameters were initialised (the root's step, 0 in a controller's history, or a
      fresh copy's) and whose last value is the hyperparameters of the checkpoint it
      ends at (with ``generation_id=None``, the best final member's scored checkpoint:
      for a member that copied and has not evaluated since, the copied checkpoint, so
      the copy's new hyperparameters, which trained nothing yet, are not in it).

    Raises:
      KeyError: no such generation or checkpoint.
      ValueError: ``step`` without ``generation_id``; a history without evaluations and
        no ``generation_id``; or a lineage whose steps go backwards (not one a
        controller makes).

    >>> from jaxpop import PopulationController, WinnerTakeAllGenetic
    >>> mutator = WinnerTakeAllGenetic(lambda meta: {"lr": meta["lr"] / 2}, steps_per_exploit=10)
    >>> controller = PopulationController([{"lr": 0.1}, {"lr": 0.2}], mutator)
    >>> for worker, value in [(0, 0.5), (1, 0.3)]:  # at step 10 both copy worker 1
    ...     generation_id = controller.active_workers[worker].generation_id
    ...     controller.set_eval(worker, generation_id, 10, f"params-{worker}", value)
    >>> controller.set_eval(1, controller.active_workers[1].generation_id, 20, "p", 0.2)
    >>> from_lineage(controller.history)  # what the best final member trained with
    piecewise({0: {'lr': 0.2}, 10: {'lr': 0.1}})
    """
    source, (history, _) = history, _history_and_workers(history)
    if generation_id is None:
        if step is not None:
            raise ValueError("from_lineage: step= needs generation_id=")
        generation_id, step = best_final(source).ref
    elif generation_id not in history:
        raise KeyError(f"from_lineage: no generation {generation_id!r} in the history")
    chain = history.lineage(generation_id, step)
    starts = [_trained_from(chain, i) for i in range(len(chain))]
    for i, start in enumerate(starts):
        if start > chain[i].step or (i > 0 and start < starts[i - 1]):
            raise ValueError(
                f"from_lineage: the lineage of {(generation_id, step)} goes back in steps at "
                f"{chain[i].ref} (trained from step {start}); a controller never makes one"
            )
    first = _fresh_start(chain)
    points: list[tuple[int, object]] = []
    for i in range(first, len(chain)):
        checkpoint, start = chain[i], chain[i].step if i == first else starts[i]
        if points and points[-1][0] == start:  # a copy that trained nothing: replaced
            points.pop()
        if points and tree_equal(points[-1][1], checkpoint.meta_params):
            continue
        points.append((start, checkpoint.meta_params))
    # the schedule's own copies: a schedule edited in place must not change the history
    # (nor the history, the schedule)
    return Piecewise([(start, copy.deepcopy(meta_params)) for start, meta_params in points])


def _trained_from(chain: list[Checkpoint], i: int) -> int:
    """The step ``chain[i]``'s parameters were trained from: its parent's step."""
    checkpoint = chain[i]
    if i > 0:
        return chain[i - 1].step
    if checkpoint.parent is not None:  # a parent the history no longer holds
        return checkpoint.parent[1]
    return checkpoint.step


def _own(generation_id: str) -> str:
    """The generation whose training ``generation_id``'s checkpoints are: its own, or,
    for a kept generation, the one it was kept from."""
    return kept_from(generation_id) or generation_id


def _fresh_start(chain: list[Checkpoint]) -> int:
    """The index in ``chain`` where the member's parameters were last initialised afresh.

    That is a generation's first checkpoint without params (``params=None`` is what its
    worker was handed: "initialise fresh parameters"): a root, or a copy of an evaluation
    sent without params. Not one that a later checkpoint at its step holds params for
    (a copy of it holding them: it held them then). 0 if there is none.
    """
    held_at = None  # the step of the nearest later checkpoint holding params
    for i in range(len(chain) - 1, -1, -1):
        checkpoint = chain[i]
        if checkpoint.params is not None:
            held_at = checkpoint.step
            continue
        # (a kept generation, kept when a step was rerun, counts as the one it was kept
        # from: a link between the two is within one generation's training)
        parent = checkpoint.parent
        starts_generation = parent is None or _own(parent[0]) != _own(checkpoint.generation_id)
        if starts_generation and held_at != checkpoint.step:
            return i
    return 0
