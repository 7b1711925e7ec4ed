"""The type aliases jaxpop's modules share: one name for each idea a signature takes.

Annotations only: nothing here is checked at run time, and the modules that used these
names first (``jaxpop.records.CheckpointRef``, ``jaxpop.history.Mode``, ...) re-export them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # only for the quoted aliases below: jaxpop.records imports this module
    from jaxpop.records import ActiveWorker, Checkpoint

__all__ = [
    "CheckpointRef",
    "GenerationId",
    "MetaParams",
    "Mode",
    "MutatorResult",
    "MutatorState",
    "Params",
    "PyTree",
    "RawKey",
    "Schedule",
    "WorkerId",
    "Workers",
]

#: Anything ``jax.tree`` walks: arrays in nested dicts, lists, tuples, dataclasses.
PyTree: TypeAlias = Any
#: A member's model parameters: a pytree, or a handle to saved ones (a ``ParamStore`` path).
Params: TypeAlias = Any
#: A member's hyperparameters: any pytree (``{"lr": 0.1}``), the same structure for all.
MetaParams: TypeAlias = Any
#: A mutator's state, saved with a run: plain data (numbers, str, tuples, dicts, numpy
#: arrays) or a record registered with ``jaxpop.encoding`` (``PBTState``, ...).
MutatorState: TypeAlias = Any
#: A raw PRNG key: ``numpy.uint32`` of shape ``(2,)`` (``jaxpop.keys``), for jax or numpy.
RawKey: TypeAlias = npt.NDArray[np.uint32]
#: A worker's index in the population: ``0 <= worker_id < population_size``.
WorkerId: TypeAlias = int
#: A generation's id (one incarnation of hyperparameters): a non-empty str.
GenerationId: TypeAlias = str
#: A reference to one checkpoint in the history: ``(generation_id, step)``.
CheckpointRef: TypeAlias = tuple[GenerationId, int]
#: Which values are better: ``"min"`` (lower, jaxpop's default) or ``"max"`` (higher).
Mode: TypeAlias = Literal["min", "max"]
#: ``step -> meta_params``: a hyperparameter schedule (``jaxpop.schedules``).
Schedule: TypeAlias = Callable[[Any], MetaParams]
#: Every worker's assignment, indexed by worker id (a string at run time, see above).
Workers: TypeAlias = "tuple[ActiveWorker, ...]"
#: What a mutator's ``update`` and ``ask`` return: ``(new_state, new_workers, new_checkpoints)``.
MutatorResult: TypeAlias = "tuple[MutatorState, Workers, Sequence[Checkpoint]]"
