"""The events a worker sends: ``Ask`` (for its data), ``Eval`` (a score), ``Missing``
(its checkpoint is gone) and ``Finish`` (it is done); and ``Reactivate`` (a finished
worker trains on), which the program driving the run sends.

Events are immutable records of exactly what a worker said. The pure transitions in
:mod:`jaxpop.core` consume them, and durable storage can journal and replay them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import struct

from jaxpop.types import GenerationId, MetaParams, Params, WorkerId

__all__ = ["Ask", "Eval", "Event", "Finish", "Missing", "Reactivate"]


@struct.dataclass
class Ask:
    """``maybe_get_worker_data(worker_id, generation_id, step, params, meta_params)``."""

    params: Params
    meta_params: MetaParams
    worker_id: WorkerId = struct.field(pytree_node=False)
    generation_id: GenerationId | None = struct.field(pytree_node=False)
    step: int = struct.field(pytree_node=False)


@struct.dataclass
class Eval:
    """``set_eval(worker_id, generation_id, step, params, value)``; ``value`` is a float."""

    params: Params
    worker_id: WorkerId = struct.field(pytree_node=False)
    generation_id: GenerationId | None = struct.field(pytree_node=False)
    step: int = struct.field(pytree_node=False)
    value: float = struct.field(pytree_node=False)


@struct.dataclass
class Missing:
    """``checkpoint_missing(worker_id, generation_id, step, exists=...)``: the worker could
    not load the ``params`` of its assignment at ``(generation_id, step)``.

    ``exists``: ``params -> bool``, whether the params of a checkpoint can still be
    loaded (``ParamStore.exists``), so the controller skips those that are gone too;
    ``None``: it assumes only the assignment's are.
    """

    worker_id: WorkerId = struct.field(pytree_node=False)
    generation_id: GenerationId = struct.field(pytree_node=False)
    step: int = struct.field(pytree_node=False)
    exists: Callable[[Any], bool] | None = struct.field(pytree_node=False, default=None)


@struct.dataclass
class Finish:
    """``finish(worker_id)``: the worker is done; the population stops waiting for it."""

    worker_id: WorkerId = struct.field(pytree_node=False)


@struct.dataclass
class Reactivate:
    """``reactivate(worker_id)``: a finished (or gone) worker takes part again."""

    worker_id: WorkerId = struct.field(pytree_node=False)


Event = Ask | Eval | Missing | Finish | Reactivate


# Hot-path constructors for the controller (one event per call): the ``__init__`` of a
# frozen dataclass sets each field through ``object.__setattr__``; filling the new
# instance's ``__dict__`` in field order builds the same event in a third of the time.
def _ask(
    params: Params,
    meta_params: MetaParams,
    worker_id: WorkerId,
    generation_id: GenerationId | None,
    step: int,
) -> Ask:
    """``Ask(params, meta_params, worker_id, generation_id, step)``."""
    event = object.__new__(Ask)
    fields = event.__dict__
    fields["params"] = params
    fields["meta_params"] = meta_params
    fields["worker_id"] = worker_id
    fields["generation_id"] = generation_id
    fields["step"] = step
    return event


def _eval(
    params: Params, worker_id: WorkerId, generation_id: GenerationId | None, step: int, value: float
) -> Eval:
    """``Eval(params, worker_id, generation_id, step, value)``."""
    event = object.__new__(Eval)
    fields = event.__dict__
    fields["params"] = params
    fields["worker_id"] = worker_id
    fields["generation_id"] = generation_id
    fields["step"] = step
    fields["value"] = value
    return event
