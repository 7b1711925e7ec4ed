"""The immutable records a population is made of: ``Checkpoint`` and ``ActiveWorker``.

Both are frozen dataclasses and pytrees (``ActiveWorker`` a ``flax.struct.dataclass``).
Their ``params`` and ``meta_params`` are pytree children (so ``jax.tree.map`` reaches the
arrays inside them); the bookkeeping fields (ids, steps, values, times) are static
metadata. Records are frozen: "updating" one
means ``record.replace(field=new_value)``, which returns a new record.
"""

from __future__ import annotations

import dataclasses
import numbers
import struct as struct_module
import threading
from collections.abc import Iterable, Sequence
from itertools import compress
from operator import index, is_not
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import numpy as np
from flax import serialization, struct

from jaxpop.types import CheckpointRef, GenerationId, MetaParams, Params

__all__ = [
    "ACTIVE",
    "FINISHED",
    "GONE",
    "STATUSES",
    "WAITING",
    "ActiveWorker",
    "Checkpoint",
    "CheckpointRef",
    "check_active_worker",
    "check_checkpoint",
    "check_place",
    "replaced",
    "with_replaced",
]

_T = TypeVar("_T")

#: A worker's ``status``: training, done (``controller.finish``), or silent too long.
ACTIVE, FINISHED, GONE = "active", "finished", "gone"
STATUSES = (ACTIVE, FINISHED, GONE)
#: Only in a reply, never stored: the worker must wait (``Mutator.holds``) and ask again.
WAITING = "waiting"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One saved point of one generation: its parameters, hyperparameters and score.

    Attributes:
      params: the model parameters at ``step`` -- a pytree for in-memory use, or a
        handle (for example a path to an Orbax checkpoint). ``None`` when unknown.
      meta_params: the hyperparameters this generation trains with (any pytree).
      generation_id: the generation (one incarnation of hyperparameters) it belongs to.
      value: the evaluation reported for it (lower is better, unless the run's
        ``History.mode`` is ``"max"``), or ``None`` for a
        checkpoint that was recorded without an evaluation (a generation's starting
        point, or a worker's last parameters when it was reassigned). A NaN or infinite
        value is stored as reported but always ranks worst in every selection.
      parent: the checkpoint this one was trained from, ``(generation_id, step)``: the
        previous checkpoint of the same generation, or, for a generation's first
        checkpoint, the checkpoint it was copied from (``None`` for a root of the
        initial population). Following ``parent`` gives the lineage graph.
      step: the training step of ``params``.
      time: when the controller recorded it (seconds since the epoch).
    """

    params: Params
    meta_params: MetaParams
    generation_id: GenerationId
    value: float | None
    parent: CheckpointRef | None
    step: int
    time: float

    def replace(self, **changes: Any) -> Checkpoint:
        """A new checkpoint with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    @property
    def ref(self) -> CheckpointRef:
        """This checkpoint's ``(generation_id, step)``."""
        return (self.generation_id, self.step)


# A pytree of ``params`` and ``meta_params``; the other fields are its static metadata,
# which ``jit`` compares with ``==`` to find a compiled function: a float there is held
# by its bits, so 0.0 and -0.0 are two (a jitted function returned the first's) and a
# NaN equals itself (each call compiled again; a tree function over two copies raised)
_FLOAT, _BITS = struct_module.Struct("<d"), struct_module.Struct("<Q")
_PARAMS, _META = jax.tree_util.GetAttrKey("params"), jax.tree_util.GetAttrKey("meta_params")


#: the float types held by their bits: each a float64 exactly (a longdouble is held by its
#: bytes, a float subclass of one's own as itself)
_BY_BITS = frozenset({float, np.float64, np.float32, np.float16})


def _exact(x: Any) -> Any:
    if type(x) in _BY_BITS:
        return ("f", type(x), _BITS.unpack(_FLOAT.pack(x))[0])
    if isinstance(x, np.floating):  # (a longdouble: its own bytes)
        return ("b", type(x), x.tobytes())
    return ("", type(x), x)


def _inexact(held: Any) -> Any:
    how, kind, x = held
    if how == "b":
        return np.frombuffer(x, kind)[0]
    if how != "f":
        return x
    value = _FLOAT.unpack(_BITS.pack(x))[0]
    return value if kind is float else kind(value)


def _checkpoint_aux(c: Checkpoint) -> tuple[Any, ...]:
    return (c.generation_id, _exact(c.value), c.parent, c.step, _exact(c.time))


def _checkpoint_unflatten(aux: tuple[Any, ...], children: Any) -> Checkpoint:
    generation_id, value, parent, step, time = aux
    params, meta_params = children
    return Checkpoint(
        params, meta_params, generation_id, _inexact(value), parent, step, _inexact(time)
    )


jax.tree_util.register_pytree_with_keys(
    Checkpoint,
    lambda c: (((_PARAMS, c.params), (_META, c.meta_params)), _checkpoint_aux(c)),
    _checkpoint_unflatten,
    flatten_func=lambda c: ((c.params, c.meta_params), _checkpoint_aux(c)),
)
# flax.serialization reads it as it read the flax struct it was: its two children
serialization.register_serialization_state(
    Checkpoint,
    lambda c: {
        "params": serialization.to_state_dict(c.params),
        "meta_params": serialization.to_state_dict(c.meta_params),
    },
    lambda c, state: c.replace(
        params=serialization.from_state_dict(c.params, state["params"], name="params"),
        meta_params=serialization.from_state_dict(
            c.meta_params, state["meta_params"], name="meta_params"
        ),
    ),
)


@struct.dataclass
class ActiveWorker:
    """What one worker should be training now.

    A worker that receives an ``ActiveWorker`` loads ``params`` (``None``: initialise
    fresh parameters), trains with ``meta_params``, reports its evaluations under
    ``generation_id`` and continues counting from ``step``.

    ``status`` is ``"active"``, ``"finished"`` (the worker said it is done:
    ``controller.finish``) or ``"gone"`` (it has not been heard from, by a report or an
    ask, for the controller's ``gone_after_s``). Mutators leave finished and gone
    workers out: they are never copied and never waited for; their checkpoints stay in
    the history. A new report from such a worker (not the repeat of one recorded) makes
    it active again, and so does any call of a gone one.
    """

    params: Params
    meta_params: MetaParams
    generation_id: GenerationId = struct.field(pytree_node=False)
    step: int = struct.field(pytree_node=False)
    status: str = struct.field(pytree_node=False, default="active")

    if TYPE_CHECKING:  # struct.dataclass adds it at run time; type checkers can't see that

        def replace(self, **changes: Any) -> ActiveWorker: ...

    @property
    def is_active(self) -> bool:
        return self.status == ACTIVE


# A hot-path constructor (each report moves its worker): the ``__init__`` of a frozen
# dataclass sets each field through ``object.__setattr__``; filling the new instance's
# ``__dict__`` in field order builds the same record in a third of the time. (Not for
# checkpoints: a history keeps every one, and a filled ``__dict__`` takes 64 more bytes.)
def _active_worker(
    params: Params, meta_params: MetaParams, generation_id: GenerationId, step: int, status: str
) -> ActiveWorker:
    """``ActiveWorker(params, meta_params, generation_id, step, status)``."""
    w = object.__new__(ActiveWorker)
    fields = w.__dict__
    fields["params"] = params
    fields["meta_params"] = meta_params
    fields["generation_id"] = generation_id
    fields["step"] = step
    fields["status"] = status
    return w


def _with_status(w: ActiveWorker, status: str) -> ActiveWorker:
    """``w.replace(status=status)``."""
    return _active_worker(w.params, w.meta_params, w.generation_id, w.step, status)


def _bad(where: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{where} is not {what}: {type(value).__name__} {value!r:.80}")


def _check_int(value: Any, where: str) -> None:
    if type(value) is not int:
        raise _bad(where, "an int", value)


def _check_generation_id(value: Any, where: str) -> None:
    if type(value) is not str or not value:
        raise _bad(where, "a generation id (a non-empty str)", value)


def _well_formed(c: Checkpoint) -> bool:
    """Whether ``check_checkpoint`` passes ``c``, in one expression (a restore checks
    every checkpoint); ``False`` when in doubt, and the field by field checks decide."""
    parent = c.parent
    return (
        type(c.generation_id) is str
        and c.generation_id != ""
        and type(c.step) is int
        and (c.value is None or type(c.value) is float)
        and type(c.time) is float
        and (
            parent is None
            or (
                type(parent) is tuple
                and len(parent) == 2
                and type(parent[0]) is str
                and parent[0] != ""
                and type(parent[1]) is int
            )
        )
    )


def check_checkpoint(c: Any, where: str = "checkpoint") -> None:
    """Raises ``ValueError`` naming the field if ``c`` is not a well-formed :class:`Checkpoint`.

    What a controller stores and journals, and what storage accepts when it reads a
    file back: the same rules on both sides, so nothing written is refused later.
    """
    if type(c) is Checkpoint and _well_formed(c):  # the common case: no message to build
        return
    if type(c) is not Checkpoint:
        raise _bad(where, "a Checkpoint", c)
    check_place(c, where)
    if c.value is not None and type(c.value) is not float:
        raise _bad(f"{where}.value", "None or a float", c.value)
    if isinstance(c.time, bool) or not isinstance(c.time, numbers.Real):
        raise _bad(f"{where}.time", "a real number", c.time)


def check_place(c: Checkpoint, where: str = "checkpoint") -> None:
    """Raises ``ValueError`` naming the field unless ``c``'s place in a history is well
    formed: its generation id, step and parent link (what :class:`~jaxpop.History`
    indexes and walks by; a float step would replace the int one it equals)."""
    _check_generation_id(c.generation_id, f"{where}.generation_id")
    _check_int(c.step, f"{where}.step")
    if c.parent is not None:
        if type(c.parent) is not tuple or len(c.parent) != 2:
            raise _bad(f"{where}.parent", "a (generation_id, step) tuple", c.parent)
        _check_generation_id(c.parent[0], f"{where}.parent[0]")
        _check_int(c.parent[1], f"{where}.parent[1]")


def _well_formed_worker(w: Any) -> bool:
    """Whether ``check_active_worker`` passes ``w``, in one expression; ``False`` when in
    doubt, and the field by field checks decide."""
    return (
        type(w) is ActiveWorker
        and type(w.generation_id) is str
        and w.generation_id != ""
        and type(w.step) is int
        and type(w.status) is str
        and w.status in STATUSES
    )


def check_active_worker(w: Any, where: str = "worker") -> None:
    """Raises ``ValueError`` naming the field if ``w`` is not a well-formed ActiveWorker."""
    if _well_formed_worker(w):  # the common case: no message to build
        return
    if type(w) is not ActiveWorker:
        raise _bad(where, "an ActiveWorker", w)
    _check_generation_id(w.generation_id, f"{where}.generation_id")
    _check_int(w.step, f"{where}.step")
    if w.status not in STATUSES or type(w.status) is not str:
        raise _bad(f"{where}.status", f"one of {STATUSES}", w.status)


class _LastMade(threading.local):
    """This thread's latest :func:`with_replaced`: ``(new, base, indices)``, or ``None``."""

    made: tuple[tuple[Any, ...], Sequence[Any], list[int]] | None = None


# what lets replaced() of a tuple with_replaced just made read only the indices it
# replaced (an event's comparisons of the population's assignments would otherwise cost
# O(population) each): one entry per thread, checked by identity, dropped when used or
# by forget_made() (the core calls it after every event and every redo, so none of the
# core's assignments outlives its event here)
_LAST = _LastMade()


def forget_made() -> None:
    """Drops this thread's note of its latest :func:`with_replaced` (see ``_LAST``)."""
    _LAST.made = None


def replaced(new: Sequence[Any], old: Sequence[Any]) -> list[int]:
    """The indices where ``new`` holds another object than ``old`` (compared by identity,
    in C: records are immutable, so an unchanged assignment is the same object).

    When ``new`` is the tuple :func:`with_replaced` just made from ``old`` in this
    thread, only the indices it replaced are compared: O(changes), not O(len(new)).

    >>> a, b = ActiveWorker(None, {}, "g", 0), ActiveWorker(None, {}, "g", 0)
    >>> replaced((a, a, b), (a, b, b))
    [1]
    >>> base = (a, a, a)
    >>> replaced(with_replaced(base, [(2, b), (0, a)]), base)  # the shortcut: 2 and 0 read
    [2]
    """
    if len(new) != len(old):
        raise ValueError(f"cannot compare {len(new)} assignments with {len(old)}")
    if new is old:
        return []
    made = _LAST.made
    if made is not None and made[0] is new and made[1] is old:
        _LAST.made = None
        indices = made[2]
        if len(indices) == 1:  # the usual case
            i = indices[0]
            return [i] if new[i] is not old[i] else []
        return sorted({i for i in indices if new[i] is not old[i]})
    return list(compress(range(len(new)), map(is_not, new, old)))


def with_replaced(base: tuple[_T, ...], changes: Iterable[tuple[int, _T]]) -> tuple[_T, ...]:
    """``base`` with ``base[i]`` replaced by ``record`` for each ``(i, record)``: a new tuple.

    For a tuple ``base``, this thread keeps a note of the result, ``base`` and the
    indices (for :func:`replaced`) until it is used, the next call replaces it, or
    :func:`forget_made` drops it; so both tuples live until then.

    >>> a, b = ActiveWorker(None, {}, "g", 0), ActiveWorker(None, {}, "g", 1)
    >>> new = with_replaced((a, a, a), [(2, b)])
    >>> new[2] is b, replaced(new, (a, a, a))
    (True, [2])
    """
    items = list(base)
    n = len(items)
    indices = []
    for i, record in changes:
        i = index(i)  # (once: an index's __index__ may answer otherwise a second time)
        items[i] = record
        indices.append(i + n if i < 0 else i)
    new = tuple(items)
    if type(base) is tuple:  # (a list could change under the note)
        _LAST.made = (new, base, indices)
    return new
