"""Replay: the schedule of hyperparameters a member of a population actually trained with.

PBT finds a schedule online: a member trains with some hyperparameters, is copied by
(or copies) another member, continues with new ones, and so on. Its parameters at the
end descend, through the checkpoints' ``parent`` links, from one root; each link was
trained with the hyperparameters of the checkpoint it leads to. :func:`from_lineage`
reads that chain back into a :class:`~jaxpop.schedules.Piecewise` schedule, so that::

    schedule = from_lineage(controller.history)          # the best final member
    replay = PopulationController([schedule(0)], FixedSchedule(schedule, on_ask=True))

trains a single fresh worker with exactly the hyperparameters the member trained with,
step by step (what Ray Tune calls PBT replay) -- provided the worker asks for its data
at every step (or at least at each of the schedule's steps), as the Quick Start loop
does. (``on_ask=True`` applies each change at the ask at its step; by default, as in the
seed, ``FixedSchedule`` applies it at the first evaluation at or past it.)

Steps count updates: the value of a schedule at step ``t`` is the ``meta_params`` of the
update that takes the parameters from step ``t`` to step ``t + 1``. A checkpoint at
step ``s`` whose parent is at step ``p`` was trained with its own ``meta_params`` for
steps ``p .. s - 1``; a generation's first checkpoint (copied, ``p == s``) trained
nothing but fixes the hyperparameters that follow it.
"""

from __future__ import annotations

import math

from jaxpop.history import History
from jaxpop.records import Checkpoint
from jaxpop.schedules.base import tree_equal
from jaxpop.schedules.piecewise import Piecewise

__all__ = ["best_final", "from_lineage"]


def best_final(history: History) -> Checkpoint:
    """The evaluated checkpoint of the best member at the end of a run.

    The *final step* is the highest step at which any checkpoint carries a finite
    value; the best final member is the evaluated checkpoint at that step with the best
    value: the lowest, or the highest when ``history.mode`` is ``"max"`` (a controller
    records its mutator's ``mode`` there); among equal values the generation created
    first wins. A NaN or infinite value never wins over a finite one (a member that
    diverged at a later step does not); only when no value is finite do they count,
    by the same rule. For a run whose workers all stop at the
    same step this is the best worker at the end (with ``BranchingSingleMachine``, the
    better branch of a final explore phase). O(number of generations), plus the
    evaluations a generation made after its last finite one.

    Raises:
      ValueError: no checkpoint in ``history`` carries a value.
    """
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


def from_lineage(
    history: History, generation_id: str | None = None, *, step: int | None = None
) -> Piecewise:
    """The piecewise schedule of hyperparameters a member trained with, root to end.

    Walks ``parent`` links from the checkpoint back to the root of its lineage. Before
    an exploit the schedule is the copied member's (its own history, recursively), from
    the exploit on the new hyperparameters'. Consecutive equal ``meta_params``
    (:func:`~jaxpop.schedules.tree_equal`) make one piece. The values are the
    ``meta_params`` objects stored in the history.

    Args:
      history: a run's history (``controller.history``, or a ``log_dir``'s via
        :func:`jaxpop.storage.read_state`).
      generation_id: the member's generation; ``None``: the best final member
        (:func:`best_final`).
      step: the checkpoint of that generation to start from; ``None``: the generation's
        latest checkpoint (with ``generation_id=None``: the best final checkpoint).

    Returns:
      A :class:`~jaxpop.schedules.Piecewise` whose first step is the root's step (0 in
      a controller's history) and whose last value is the member's own hyperparameters.

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
    if generation_id is None:
        if step is not None:
            raise ValueError("from_lineage: step= needs generation_id=")
        generation_id, step = best_final(history).ref
    elif generation_id not in history:
        raise KeyError(f"from_lineage: no generation {generation_id!r} in the history")
    chain = history.lineage(generation_id, step)
    points: list[tuple[int, object]] = []
    for i, checkpoint in enumerate(chain):
        if i > 0:
            start = chain[i - 1].step
        elif checkpoint.parent is not None:  # a parent the history no longer holds
            start = checkpoint.parent[1]
        else:
            start = checkpoint.step
        if start > checkpoint.step or (points and start < points[-1][0]):
            raise ValueError(
                f"from_lineage: the lineage of {(generation_id, step)} goes back in steps at "
                f"{checkpoint.ref} (trained from step {start}); a controller never makes one"
            )
        if points and points[-1][0] == start:  # a copy that trained nothing: replaced
            points.pop()
        if points and tree_equal(points[-1][1], checkpoint.meta_params):
            continue
        points.append((start, checkpoint.meta_params))
    return Piecewise(points)
