"""The seed's extension points: ``Mutate``, ``IntKeyDict``, ``make_gen_id``, saved states.

Code written for ``learned_optimization.population`` subclasses :class:`Mutate` and
edits a mutable cache of checkpoints in place. :class:`SeedMutator` runs such a subclass
as a pure jaxpop :class:`~jaxpop.mutators.base.Mutator`: each call gets a private
mutable copy of the history, and what it added there becomes the call's new
checkpoints. :func:`state_to_bytes` and :func:`state_from_bytes` are the format of the
controller's ``serialized_state`` / ``save_state`` / ``load_state``. All of these are
re-exported by :mod:`jaxpop.population`, where the seed's users look for them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import reprlib
import uuid
import weakref
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxpop import encoding
from jaxpop.boundary import _IMMUTABLE, copy_in, copy_out
from jaxpop.core import as_value
from jaxpop.history import History
from jaxpop.mutators.base import Mutator
from jaxpop.records import ActiveWorker, Checkpoint, _with_status
from jaxpop.storage import run as run_lib  # (jaxpop.storage registers the records)
from jaxpop.storage.atomic import write_atomic
from jaxpop.storage.plain import state_from_plain, state_to_plain
from jaxpop.types import GenerationId, MutatorState

__all__ = [
    "STATE_FILE",
    "GenerationID",
    "IntKeyDict",
    "Mutate",
    "MutateState",
    "SeedMutator",
    "make_gen_id",
    "read_state_file",
    "state_from_bytes",
    "state_to_bytes",
    "write_state_file",
]

#: A generation's id (the seed's alias).
GenerationID = GenerationId
#: A seed-style mutator's state (the seed's alias): in jaxpop, plain data that
#: :func:`jaxpop.encoding.encode` can store.
MutateState = MutatorState
#: The file ``save_state`` writes in a ``log_dir`` (the seed's was ``population.state``,
#: a pickle; this one holds jaxpop's safe encoding).
STATE_FILE = "population.jpstate"
_STATE_FORMAT = "jaxpop.population_state"
_STATE_VERSION = 2  # 2: the payload's SHA-256 is checked before the payload is decoded


def make_gen_id() -> GenerationID:
    """A fresh, random generation id (a uuid4 string), for seed-style mutators.

    >>> len(make_gen_id())
    36
    """
    return str(uuid.uuid4())


class IntKeyDict(dict):
    """A dict keyed by step whose ``keys()``, ``values()`` and ``items()`` are sorted lists.

    The seed's cache holds one per generation, so ``steps.values()[-1]`` is the latest
    checkpoint.

    >>> steps = IntKeyDict({10: "b", 0: "a"})
    >>> steps.keys()[0], steps.values()[-1], steps.items()
    (0, 'b', [(0, 'a'), (10, 'b')])
    """

    def keys(self) -> list[Any]:  # type: ignore[override]
        return sorted(super().keys())

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[k] for k in self.keys()]

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(k, self[k]) for k in self.keys()]


class Mutate:
    """The seed's base class for a mutator, edited in place; run by :class:`SeedMutator`.

    Subclass it as for the seed and pass an instance to ``PopulationController``:

    * ``init()`` returns the initial state.
    * ``update(state, current_workers, cache)`` runs after every evaluation, and
      after a worker's status changes (``finish``, a worker declared gone, a stop: the
      workers left must go on without it; jaxpop's own, ``status`` tells). ``cache``
      maps each generation id to an :class:`IntKeyDict` of ``step -> Checkpoint``; add a
      generation with ``cache[gen_id] = IntKeyDict()`` and its starting checkpoint with
      ``cache[gen_id][step] = Checkpoint(...)``. Return ``(state, workers)``, one
      ``ActiveWorker`` per worker (``current_workers`` itself to change nothing).
    * ``get_worker_data(active_workers, cache, worker_id, generation_id, step, params,
      meta_params)`` runs when a worker asks for its data and returns the workers
      (the base class returns ``active_workers``); it may add to ``cache`` too. For a
      worker that asks with ``step=None`` it gets the step the controller resolved
      (the worker's assigned step in its own generation, the latest recorded for
      another ``generation_id``, else the assigned step), never ``None``.

    What jaxpop adds to the seed's rules: the cache is a private copy, and only *adding*
    checkpoints is allowed (deleting or replacing one, or a generation, raises); every
    worker must be assigned to a generation with a checkpoint, at or after its first
    one (a step before it, where its reports would be dropped as stale, raises); a
    generation id may not hold ``"~"`` (the mark of a kept generation,
    ``docs/protocol.md#eval``; ``make_gen_id()`` never makes one); the state must be plain
    data (numbers, strings, tuples, lists, dicts, numpy arrays, ``Checkpoint`` and
    ``ActiveWorker`` records; an :class:`IntKeyDict` in it is stored, and comes back, as
    a plain dict sorted by key) and each call gets its own copy of it (so keep it small:
    handles such as paths, not parameter pytrees). Keep everything a run needs after a
    restart in the state, not on the instance: the instance is built anew when a run is
    resumed in another process.

    Such a mutator may read the clock and draw random ids (``make_gen_id()``) as the
    seed's do: a durable run replays from its journal, which records what each call
    changed, never by running the mutator again.
    """

    def __init__(self) -> None:
        pass

    def init(self) -> MutateState:
        """The initial state (``None`` unless overridden)."""
        return None

    def update(
        self,
        state: MutateState,
        current_workers: Sequence[ActiveWorker],
        cache: MutableMapping[GenerationID, MutableMapping[int, Checkpoint]],
    ) -> tuple[MutateState, Sequence[ActiveWorker]]:
        """Runs after every evaluation; returns ``(state, workers)``."""
        raise NotImplementedError(f"{type(self).__name__} must define update()")

    def get_worker_data(
        self,
        active_workers: Sequence[ActiveWorker],
        cache: MutableMapping[GenerationID, MutableMapping[int, Checkpoint]],
        worker_id: int,
        generation_id: GenerationID | None,
        step: int | None,
        params: Any,
        meta_params: Any,
    ) -> Sequence[ActiveWorker]:
        """Runs when a worker asks for its data; returns the workers."""
        del cache, worker_id, generation_id, step, params, meta_params
        return active_workers


def _private(checkpoint: Checkpoint, metas: dict[int, Any]) -> Checkpoint:
    """A copy of a stored checkpoint for a seed-style mutator: the same record with a
    fresh ``meta_params`` container around the same leaves (see
    :func:`jaxpop.boundary.copy_out`), one per stored ``meta_params`` object
    (``metas``: id -> copy; a generation's checkpoints share theirs); ``params`` (a
    handle, or read-only arrays) shared."""
    meta = checkpoint.meta_params
    if type(meta) in _IMMUTABLE:
        return checkpoint  # nothing in it to edit
    copied = metas.get(id(meta))
    if copied is None:
        copied = metas[id(meta)] = copy_out(meta)
    copy = object.__new__(Checkpoint)
    copy.__dict__.update(checkpoint.__dict__)
    copy.__dict__["meta_params"] = copied
    return copy


def _edited(copy: ActiveWorker, stored: ActiveWorker) -> bool:
    """Whether a mutator edited its copy of an assignment's ``meta_params`` in place:
    another structure, or another object at some leaf (the copy shares its leaves)."""
    copied, copied_def = jax.tree.flatten(copy.meta_params)
    leaves, treedef = jax.tree.flatten(stored.meta_params)
    if copied_def != treedef:  # type: ignore[operator]  # (PyTreeDef defines !=)
        return True
    return any(a is not b for a, b in zip(copied, leaves, strict=True))


def _private_worker(worker: ActiveWorker) -> ActiveWorker:
    """:func:`_private` for an assignment."""
    w = worker
    if type(w.meta_params) in _IMMUTABLE:
        return w
    return ActiveWorker(w.params, copy_out(w.meta_params), w.generation_id, w.step, w.status)


class _Cache(MutableMapping):
    """A mutable ``generation_id -> IntKeyDict`` over a :class:`History`, copied lazily.

    A generation is copied into an :class:`IntKeyDict` the first time it is read, so a
    call costs what the mutator reads, not the size of the history. Its checkpoints are
    copies with a fresh ``meta_params`` container (:func:`_private`): a mutator that
    edits one in place edits its copy, never the history.
    """

    def __init__(self, history: History):
        self._history = history
        self._copies: dict[Any, Any] = {}  # generations read or set, in that order
        self._deleted: set[Any] = set()
        self._given: dict[Any, Checkpoint] = {}  # ref -> the copy handed out
        self._metas: dict[int, Any] = {}  # id of a stored meta_params -> its copy

    def __getitem__(self, generation_id: Any) -> Any:
        steps = self._copies.get(generation_id)
        if steps is not None:
            return steps
        if generation_id in self._deleted or generation_id not in self._history:
            raise KeyError(generation_id)
        view, given = self._history[generation_id], self._given
        steps = IntKeyDict()
        for s in view:
            steps[s] = given[(generation_id, s)] = _private(view[s], self._metas)
        self._copies[generation_id] = steps
        return steps

    def __setitem__(self, generation_id: Any, steps: Any) -> None:
        self._deleted.discard(generation_id)
        self._copies[generation_id] = steps

    def __delitem__(self, generation_id: Any) -> None:
        if generation_id not in self:
            raise KeyError(generation_id)
        self._copies.pop(generation_id, None)
        self._deleted.add(generation_id)

    def __contains__(self, generation_id: object) -> bool:
        if generation_id in self._copies:
            return True
        return generation_id not in self._deleted and generation_id in self._history

    def __iter__(self) -> Iterator[Any]:
        known = [g for g in self._history if g not in self._deleted]
        return iter(known + [g for g in self._copies if g not in self._history])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"<cache of {len(self)} generations>"

    def handed_out(self) -> Iterator[Checkpoint]:
        """The copies of stored checkpoints the mutator was given (their ``params`` are
        the stored objects)."""
        return iter(self._given.values())

    def added(self, who: str) -> list[Checkpoint]:
        """The checkpoints added to the copy, in order; raises on anything else."""
        for generation_id in self._deleted:
            if generation_id in self._history:
                raise ValueError(
                    f"{who} deleted generation {generation_id!r} from the cache; jaxpop's "
                    "history only grows, so a mutator may add generations and checkpoints "
                    "but never delete them"
                )
        added = []
        for generation_id, steps in self._copies.items():
            if not isinstance(steps, Mapping):
                raise TypeError(
                    f"{who} set cache[{generation_id!r}] to a {type(steps).__name__}; "
                    "it must be an IntKeyDict of step -> Checkpoint"
                )
            known = generation_id in self._history
            view = self._history[generation_id] if known else {}
            for step in view:
                if step not in steps:
                    raise ValueError(
                        f"{who} deleted the checkpoint ({generation_id!r}, {step}) from the "
                        "cache; a mutator may add checkpoints but never delete them"
                    )
                if steps[step] is not self._given.get((generation_id, step), view[step]):
                    raise ValueError(
                        f"{who} replaced the checkpoint ({generation_id!r}, {step}) in the "
                        "cache; a mutator may add checkpoints but never replace them"
                    )
            for step in sorted(steps, key=_step_order):
                if step in view:
                    continue
                checkpoint = steps[step]
                where = f"cache[{generation_id!r}][{step!r}]"
                if type(checkpoint) is not Checkpoint:
                    raise TypeError(
                        f"{who} put a {type(checkpoint).__name__} at {where}; "
                        "it must be a Checkpoint"
                    )
                if checkpoint.ref != (generation_id, step):
                    raise ValueError(
                        f"{who} put the checkpoint {checkpoint.ref!r} at {where}; a "
                        "checkpoint's generation_id and step must be its keys in the cache"
                    )
                added.append(_plain_numbers(checkpoint))
        refs = {c.ref for c in added}
        for c in added:
            if type(c.parent) is not tuple or len(c.parent) != 2:
                continue  # None, or malformed: the core refuses the latter by name
            if c.parent == c.ref:
                raise ValueError(
                    f"{who} added the checkpoint {c.ref!r} with itself as its parent; a "
                    "parent is the checkpoint it was trained or copied from"
                )
            if self._history.get_checkpoint(*c.parent) is None and c.parent not in refs:
                raise ValueError(
                    f"{who} added the checkpoint {c.ref!r} whose parent {c.parent!r} is not "
                    "in the history; a parent must be a recorded checkpoint (or None)"
                )
        return added


def _step_order(step: Any) -> tuple[int, Any]:
    """Sorts steps numerically, and anything else (refused later) after them."""
    return (0, int(step)) if isinstance(step, int) or _numpy_int(step) else (1, repr(step))


def _numpy_int(x: Any) -> bool:
    """Whether ``x`` is a numpy integer (not a ``timedelta64``, which numpy files there)."""
    return isinstance(x, np.integer) and not isinstance(x, np.timedelta64)


def _plain_numbers(checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` with a numpy integer step (and parent step) as an int and a
    number value as a float, as the controller's own calls take them (a seed mutator
    that picks a checkpoint with ``np.argmin`` hands numpy ones; the records refused
    them)."""
    changes: dict[str, Any] = {}
    if _numpy_int(checkpoint.step):
        changes["step"] = int(checkpoint.step)
    parent = checkpoint.parent
    if type(parent) is tuple and len(parent) == 2 and _numpy_int(parent[1]):
        changes["parent"] = (parent[0], int(parent[1]))
    value = checkpoint.value
    if value is not None and type(value) is not float:
        with contextlib.suppress(TypeError, ValueError):  # (the records refuse it by name)
            changes["value"] = as_value(value)
    return checkpoint.replace(**changes) if changes else checkpoint


def _without_int_key_dicts(value: Any, depth: int = 0) -> Any:
    """``value`` with each :class:`IntKeyDict` in its containers a plain dict (by key)."""
    t = type(value)
    if depth > 100 or t not in (IntKeyDict, dict, list, tuple):
        return value  # too deep: encode refuses it by name
    if t is IntKeyDict:
        try:
            items = value.items()
        except TypeError:  # keys that do not sort: as they were inserted
            items = list(dict.items(value))
        return {k: _without_int_key_dicts(v, depth + 1) for k, v in items}
    if t is dict:
        new = {k: _without_int_key_dicts(v, depth + 1) for k, v in value.items()}
        return value if all(new[k] is v for k, v in value.items()) else new
    items = [_without_int_key_dicts(v, depth + 1) for v in value]
    if all(a is b for a, b in zip(items, value, strict=True)):
        return value
    return items if t is list else tuple(items)


def _plain_copy(state: Any, who: str) -> tuple[Any, bytes]:
    """A fresh copy of a mutator's ``state`` and its encoding; ``TypeError`` if not plain."""
    try:
        data = encoding.encode(_without_int_key_dicts(state))
    except (TypeError, ValueError) as e:
        raise type(e)(
            f"{who} returned a state jaxpop cannot store: {e} A mutator's state must be "
            "plain data (numbers, strings, tuples, lists, dicts, numpy arrays, Checkpoint "
            "and ActiveWorker records); keep other objects on the mutator itself"
        ) from None
    return encoding.decode(data), data


# What each live Mutate instance was described as when first wrapped, by its id (the
# entry goes when the instance does).
_first_descriptions: dict[int, dict[str, Any]] = {}


class SeedMutator(Mutator):
    """A seed-style :class:`Mutate` run as a pure jaxpop :class:`Mutator`.

    ``PopulationController`` wraps a ``Mutate`` in one itself; build one to use a seed
    mutator with the core or the tools that take a ``Mutator``. Each call hands the
    ``Mutate`` a private mutable copy of the history (and of its state), then returns
    ``(new_state, new_workers, new_checkpoints)`` from what it added, or raises
    ``ValueError`` / ``TypeError`` naming what jaxpop cannot represent: a deleted or
    replaced checkpoint or generation, the wrong number of workers, a worker assigned
    to a generation with no checkpoint, a state that is not plain data.

    :meth:`describe` gives the ``Mutate`` subclass's name and its instance attributes
    as they were when this instance was *first* wrapped, so a ``log_dir`` refuses to
    resume the run with a mutator of another kind or configuration. A seed-style
    mutator may edit its own attributes as it runs (the seed's ``FixedSchedule`` deletes
    the entries of ``self._schedule`` it applied): wrapping the same instance again (a
    new controller on the same ``log_dir`` in one process, the seed's way to resume)
    describes it as it was first, and so does a new instance built with the same
    arguments in another process, so both resume the run.

    >>> class Keep(Mutate):
    ...     def update(self, state, current_workers, cache):
    ...         return state, current_workers
    >>> SeedMutator(Keep()).describe()
    {'kind': 'Keep', 'config': {}}
    """

    mutate: Mutate

    def __new__(cls, mutate: Mutate) -> SeedMutator:
        if not isinstance(mutate, Mutate):
            raise TypeError(
                f"SeedMutator wraps a jaxpop.population.Mutate, got {type(mutate).__name__}"
            )
        name = type(mutate).__name__

        def init() -> Any:
            return _plain_copy(mutate.init(), f"{name}.init()")[0]

        def update(state, workers, history, now, key):
            del now, key  # a seed mutator reads the clock and draws its ids itself
            state_in, data_in = _plain_copy(state, f"{name}.update")
            cache, given = _Cache(history), [_private_worker(w) for w in workers]
            result = mutate.update(state_in, list(given), cache)
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                raise TypeError(
                    f"{name}.update must return (state, workers), got {type(result).__name__}"
                )
            new_state, data = _plain_copy(result[0], f"{name}.update")
            if data == data_in:
                new_state = state  # unchanged: keep the stored object
            who = f"{name}.update"
            new_workers, added = _result(workers, given, result[1], cache, history, who)
            return new_state, new_workers, added

        def get_worker_data(state, workers, history, ask, now, key):
            del now, key
            cache, given = _Cache(history), [_private_worker(w) for w in workers]
            result = mutate.get_worker_data(
                list(given),
                cache,
                ask.worker_id,
                ask.generation_id,
                ask.step,
                ask.params,
                ask.meta_params,
            )
            who = f"{name}.get_worker_data"
            new_workers, added = _result(workers, given, result, cache, history, who)
            return state, new_workers, added

        overridden = type(mutate).get_worker_data is not Mutate.get_worker_data
        config = dict(vars(mutate))
        self = super().__new__(
            cls, init, update, get_worker_data if overridden else None, config=config
        )
        description = _first_descriptions.get(id(mutate))
        if description is None:  # frozen now: the instance may change later
            description = Mutator.describe(self)
            description["kind"] = type(mutate).__qualname__
            _first_descriptions[id(mutate)] = description
            weakref.finalize(mutate, _first_descriptions.pop, id(mutate), None)
        self.__dict__.update(mutate=mutate, _description=description)
        return self

    def describe(self) -> dict[str, Any]:
        """The ``Mutate`` subclass's name and its attributes when first wrapped, as plain,
        comparable data."""
        return copy.deepcopy(self.__dict__["_description"])


def _result(
    workers: tuple[ActiveWorker, ...],
    given: Sequence[ActiveWorker],
    returned: Any,
    cache: _Cache,
    history: History,
    who: str,
) -> tuple[tuple[ActiveWorker, ...], list[Checkpoint]]:
    """The workers and new checkpoints of one call, checked as the seed's rules allow.
    ``given``: the copies of ``workers`` the mutator was handed (one returned as it was
    stands for the stored assignment)."""
    if not isinstance(returned, (list, tuple)):
        raise TypeError(
            f"{who} returned {type(returned).__name__} for the workers; return a list with "
            "one ActiveWorker per worker"
        )
    if len(returned) != len(workers):
        raise ValueError(
            f"{who} returned {len(returned)} workers for a population of {len(workers)}; "
            "return one ActiveWorker per worker (current_workers itself to change nothing)"
        )
    added = cache.added(who)
    new_generations = {c.generation_id for c in added}
    returned = list(returned)
    for i, worker in enumerate(returned):
        if worker is given[i]:
            if _edited(worker, workers[i]):
                raise ValueError(
                    f"{who} edited worker {i}'s meta_params in place; jaxpop's records do "
                    "not change once made (the history holds them): return a new "
                    "ActiveWorker with the new meta_params instead"
                )
            returned[i] = workers[i]  # unchanged: the stored assignment
            continue
        if worker is workers[i]:
            continue
        if type(worker) is not ActiveWorker:
            raise TypeError(f"{who} returned a {type(worker).__name__} for worker {i}")
        if _numpy_int(worker.step):  # (as the controller's calls take a step)
            returned[i] = worker = worker.replace(step=int(worker.step))
        if worker.status != workers[i].status:
            # a seed mutator knows no status (it makes ActiveWorkers with the default,
            # "active", or hands a worker another's): each keeps its own, so a finished
            # or gone worker stays so until a call of its own
            returned[i] = worker = _with_status(worker, workers[i].status)
        gen = worker.generation_id
        if gen not in new_generations and (not isinstance(gen, str) or gen not in history):
            raise ValueError(
                f"{who} assigned worker {i} to generation {gen!r}, which has no checkpoint; "
                "add its starting checkpoint to the cache first: "
                "cache[gen_id] = IntKeyDict(); cache[gen_id][step] = Checkpoint(...)"
            )
    if not added and all(a is b for a, b in zip(returned, workers, strict=True)):
        return workers, added  # the same tuple: nothing changed
    return _owned(workers, returned, added, history, cache)


def _owned(
    workers: tuple[ActiveWorker, ...],
    returned: list[ActiveWorker],
    added: list[Checkpoint],
    history: History,
    cache: _Cache,
) -> tuple[tuple[ActiveWorker, ...], list[Checkpoint]]:
    """The new assignments and checkpoints with the controller's own copies of their
    ``meta_params`` and ``params`` (:func:`jaxpop.boundary.copy_in`), as the built-in
    mutators' results: a seed mutator keeps its objects and may edit them later. A
    value stored already (the params of a checkpoint it was handed, by the cache or
    in a worker) is shared, not copied again; one object copied once (a new
    generation's start and its worker share theirs)."""
    copies: dict[int, Any] = {}
    stored = {id(w.params) for w in workers} | {id(w.meta_params) for w in workers}
    stored.update(id(c.params) for c in cache.handed_out())

    def own(value: Any) -> Any:
        if type(value) in _IMMUTABLE or id(value) in stored:
            return value
        mine = copies.get(id(value))
        if mine is None:
            mine = copies[id(value)] = copy_in(value)
        return mine

    def stored_at(ref: Any) -> None:
        if isinstance(ref, tuple) and len(ref) == 2:
            known = history.get_checkpoint(*ref)
            if known is not None:
                stored.update((id(known.params), id(known.meta_params)))

    for c in added:
        stored_at(c.parent)
    owned = [c.replace(params=own(c.params), meta_params=own(c.meta_params)) for c in added]
    for i, w in enumerate(returned):
        if w is not workers[i]:
            stored_at((w.generation_id, w.step))
            returned[i] = w.replace(params=own(w.params), meta_params=own(w.meta_params))
    return tuple(returned), owned


# -- saved states (serialized_state / save_state / load_state) ---------------------------
_STATE_KEYS = {"format", "version", "sha256", "payload"}


def state_to_bytes(state: Any, run: Mapping[str, Any]) -> bytes:
    """A population state and its run description, in jaxpop's safe encoding.

    ``run`` is ``{"population_size": n, "mutator": description}``, as a ``log_dir``
    records it; :func:`state_from_bytes` reads both back. The state and the run are
    encoded as a payload kept beside its SHA-256, which is checked before the payload
    is decoded: damaged bytes are refused, never read as another state.
    """
    payload = encoding.encode({"run": dict(run), "state": state_to_plain(state)})
    return encoding.encode(
        {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "sha256": hashlib.sha256(payload).digest(),
            "payload": payload,
        }
    )


def state_from_bytes(data: Any, where: str = "the state") -> tuple[Any, dict[str, Any]]:
    """``(state, run)`` from :func:`state_to_bytes`'s output, every field checked.

    Raises:
      TypeError: ``data`` is not bytes.
      ValueError: ``data`` is not a complete, undamaged saved state; the message starts
        with ``where`` and says what is wrong.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{where} must be bytes, got {type(data).__name__}")
    try:
        outer = encoding.decode(data)
        if type(outer) is not dict or outer.get("format") != _STATE_FORMAT:
            raise ValueError("it is not a saved population state")
        if outer.get("version") != _STATE_VERSION:
            raise ValueError(
                f"it has version {_short(outer.get('version'))}; this jaxpop reads version "
                f"{_STATE_VERSION} (save the state again with this jaxpop)"
            )
        payload = outer.get("payload")
        if set(outer) != _STATE_KEYS or type(payload) is not bytes:
            raise ValueError("it is not a saved population state")
        if hashlib.sha256(payload).digest() != outer["sha256"]:
            raise ValueError("it is damaged: its SHA-256 does not match its contents")
        plain = encoding.decode(payload)
        if type(plain) is not dict or set(plain) != {"run", "state"}:
            raise ValueError("its contents are not a run and a state")
        if not run_lib.is_description(plain["run"]):
            raise ValueError(f"its run description is invalid: {_short(plain['run'])}")
        state = state_from_plain(plain["state"])
        if state.population_size != plain["run"]["population_size"]:
            raise ValueError("its run description and its state disagree on the size")
    except ValueError as e:
        raise ValueError(f"{where} is not a valid jaxpop population state: {e}") from None
    return state, plain["run"]


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 60, 60
_short = _repr.repr  # a bounded repr, for values read from a file


def write_state_file(log_dir: str, data: bytes) -> str:
    """Writes ``data`` to ``log_dir/STATE_FILE`` atomically (and durably); returns the path.

    A reader sees the previous file or the new one, whole, never a part.
    """
    path = os.path.join(log_dir, STATE_FILE)
    write_atomic(path, data)
    return path


def read_state_file(log_dir: str) -> bytes | None:
    """The bytes of ``log_dir/STATE_FILE``, or ``None`` if there is none."""
    try:
        with open(os.path.join(log_dir, STATE_FILE), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
