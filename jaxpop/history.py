"""The immutable lineage store: ``generation_id -> step -> Checkpoint``.

``History`` is a persistent map. ``history.add(checkpoint)`` returns a new ``History``
that shares all untouched structure with the old one (an ``immutables.Map`` of
generations, each an ``immutables.Map`` of steps plus a linked list of its steps in
descending order), so one event costs O(log n) time and memory however long the run has
been (a checkpoint added below its generation's newest step costs O(the steps above it)
instead, rebuilding that part of the list: rare, a report behind the worker's own), and
every older ``History`` stays valid and unchanged.

Reading it is like reading a nested dict: ``history[generation_id][step]`` is a
``Checkpoint``; iterating ``history`` gives generation ids in creation order, and
iterating ``history[generation_id]`` gives its steps in increasing order. The queries
that mutators, reports and replay need (latest checkpoint, evaluated checkpoints since a
step or time, lineage back to the root) are methods.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import immutables
import jax

from jaxpop.records import Checkpoint, _well_formed, check_place
from jaxpop.types import CheckpointRef, Mode

__all__ = ["KEPT_MARK", "GenerationView", "History", "Mode", "check_mode", "is_kept", "kept_from"]


def check_mode(mode: Any) -> Mode:
    """``"min"`` or ``"max"`` (a ``str`` subclass such as ``np.str_`` read from a
    config array too, returned as the plain ``str``), else a ``ValueError`` saying so."""
    if not isinstance(mode, str) or mode not in ("min", "max"):
        raise ValueError(
            f'mode must be "min" (lower values are better) or "max" (higher are better), '
            f"got {mode!r:.40}"
        )
    return "max" if mode == "max" else "min"


# in a kept generation's id, "<the generation it was kept from>~<a fresh id>": no id
# that new_generation_id or the seed (uuid4 strings) makes holds it
KEPT_MARK = "~"


def is_kept(generation_id: str) -> bool:
    """Whether a generation only keeps the former content of a checkpoint that a rerun
    replaced, for the generations copied from it and its own generation's later
    checkpoints trained from it (``docs/protocol.md#eval``): one checkpoint, no worker,
    and no exploit of its own."""
    return KEPT_MARK in generation_id


def kept_from(generation_id: str) -> str | None:
    """The generation a kept generation (:func:`is_kept`) was kept from; ``None`` for
    one that is not kept. A checkpoint whose parent is in a kept generation of its own
    generation's was trained from a step of its generation that was rerun since.

    >>> kept_from("a1b2~c3d4"), kept_from("a1b2")
    ('a1b2', None)
    """
    return generation_id.split(KEPT_MARK, 1)[0] if KEPT_MARK in generation_id else None


# A generation's steps, newest first, as a persistent linked list: ``(step, rest)``.
_Steps = tuple[int, Any] | None


def _insert_descending(steps: _Steps, step: int) -> _Steps:
    """Returns ``steps`` with ``step`` inserted; O(1) when ``step`` is the newest."""
    if steps is None or step > steps[0]:
        return (step, steps)
    newer = []
    while steps is not None and steps[0] > step:
        newer.append(steps[0])
        steps = steps[1]
    result: _Steps = (step, steps)
    for s in reversed(newer):
        result = (s, result)
    return result


class _Generation(NamedTuple):  # a tuple: built at every add, cheaper than a dataclass
    checkpoints: immutables.Map  # step -> Checkpoint
    steps: _Steps  # descending
    first_step: int
    order: int  # creation order among generations (not "index": a tuple method)
    with_params: int  # how many of its checkpoints hold params (History.saves)
    # whether its checkpoints' times never decrease with the step (all finite): then a
    # walk down from the newest for those recorded since a time stops at the first one
    # before it (History.evaluated). False where unknown (a pickle from before it)
    times_ordered: bool = False


_BATCH = 3  # add_all of this many checkpoints or more builds in one pass
_NO_CHECKPOINTS: immutables.Map = immutables.Map()  # immutable: new generations share it


def _check_added(checkpoint: Any) -> None:
    """``TypeError`` for what is no Checkpoint, ``ValueError`` for one whose place in a
    history is malformed (a float step replaced the int one it equals; a str parent was
    unpacked as one); a value or time of another type is taken as it is."""
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"History.add takes a Checkpoint, got {type(checkpoint).__name__}")
    check_place(checkpoint, "History.add(checkpoint)")


def _put(generations: Any, checkpoint: Any) -> tuple[_Generation, bool]:
    """``checkpoint``'s generation once it holds ``checkpoint``, and whether that replaced
    a checkpoint at its step; ``generations`` (a map or a map mutation) is only read."""
    if not (type(checkpoint) is Checkpoint and _well_formed(checkpoint)):
        _check_added(checkpoint)
    return _put_checked(generations, checkpoint)


def _put_checked(generations: Any, checkpoint: Checkpoint) -> tuple[_Generation, bool]:
    """:func:`_put` of a checkpoint already checked."""
    step = checkpoint.step
    holds = checkpoint.params is not None
    time = checkpoint.time
    gen = generations.get(checkpoint.generation_id)
    if gen is None:
        checkpoints = _NO_CHECKPOINTS.set(step, checkpoint)
        ordered = _finite(time)
        new = _Generation(checkpoints, (step, None), step, len(generations), holds, ordered)
        return new, False
    checkpoints, steps, first_step, order, with_params, ordered = gen
    assert steps is not None  # (a generation holds a checkpoint)
    old = checkpoints.get(step)
    if old is not None:
        with_params += holds - (old.params is not None)
        # (the newest replaced: ordered if not before the one below it; else unknown)
        below = steps[1]
        ordered = (
            ordered
            and step == steps[0]
            and _finite(time)
            and (below is None or time >= checkpoints[below[0]].time)
        )
        new = _Generation(
            checkpoints.set(step, checkpoint), steps, first_step, order, with_params, ordered
        )
        return new, True
    # (a new newest step: ordered if not before the newest so far; one below it: unknown)
    ordered = ordered and step > steps[0] and _finite(time) and time >= checkpoints[steps[0]].time
    steps = _insert_descending(steps, step)
    first_step = min(step, first_step)
    new = _Generation(
        checkpoints.set(step, checkpoint), steps, first_step, order, with_params + holds, ordered
    )
    return new, False


def _finite(time: Any) -> bool:
    return type(time) is float and time - time == 0.0  # (not NaN or inf, nor another type)


def _flat_steps(steps: _Steps) -> tuple[int, ...]:
    """A generation's steps (descending) as a flat tuple."""
    out = []
    while steps is not None:
        out.append(steps[0])
        steps = steps[1]
    return tuple(out)


def _linked_steps(flat: tuple[int, ...]) -> _Steps:
    """:func:`_flat_steps` undone."""
    steps: _Steps = None
    for step in reversed(flat):
        steps = (step, steps)
    return steps


def _step_below(gen: _Generation, step: int) -> int | None:
    """The generation's highest step below ``step``, or ``None``."""
    node = gen.steps
    while node is not None and node[0] >= step:
        node = node[1]
    return None if node is None else node[0]


# -- generations by latest step, kept along adds (History.by_latest_step) ---------------------
#: An entry of the index: ``(latest step, creation order, generation id)``.
_Entry = tuple[int, int, str]
_CHUNK = 256  # entries per chunk when built; a chunk past twice this splits in two


class _ByLatest(NamedTuple):
    """Every generation's :data:`_Entry`, ascending, in sorted chunks: moving one entry
    copies one chunk and the tables (O(generations / _CHUNK + _CHUNK)), so each history
    keeps its own index and the one it was made from stays valid."""

    chunks: tuple[tuple[_Entry, ...], ...]
    firsts: tuple[_Entry, ...]  # each chunk's first entry


def _entry(gen: _Generation, generation_id: str) -> _Entry:
    assert gen.steps is not None  # (a generation holds a checkpoint)
    return (gen.steps[0], gen.order, generation_id)


def _by_latest(generations: Any) -> _ByLatest:
    """The index of ``generations`` read afresh: O(generations log generations)."""
    entries = sorted(_entry(gen, gid) for gid, gen in generations.items())
    chunks = tuple(tuple(entries[i : i + _CHUNK]) for i in range(0, len(entries), _CHUNK))
    return _ByLatest(chunks, tuple(chunk[0] for chunk in chunks))


def _moved(index: _ByLatest, old: _Entry | None, new: _Entry) -> _ByLatest:
    """``index`` with the entry ``old`` (``None``: a new generation) replaced by ``new``."""
    chunks, firsts = index.chunks, index.firsts
    if not chunks:
        return _ByLatest(((new,),), (new,))
    c = max(bisect.bisect_right(firsts, new) - 1, 0)  # the chunk ``new`` goes in
    o = -1 if old is None else bisect.bisect_right(firsts, old) - 1  # and ``old``'s
    if old is not None and o == c:  # (the usual move: a latest step grows in its chunk)
        entries = list(chunks[c])
        del entries[bisect.bisect_left(entries, old)]
    else:
        if old is not None:  # out of its chunk (dropped if it empties), then into c
            entries = list(chunks[o])
            del entries[bisect.bisect_left(entries, old)]
            if entries:
                chunks = (*chunks[:o], tuple(entries), *chunks[o + 1 :])
                firsts = (*firsts[:o], entries[0], *firsts[o + 1 :])
            else:
                chunks, firsts = chunks[:o] + chunks[o + 1 :], firsts[:o] + firsts[o + 1 :]
            if not chunks:
                return _ByLatest(((new,),), (new,))
            c = max(bisect.bisect_right(firsts, new) - 1, 0)
        entries = list(chunks[c])
    bisect.insort(entries, new)
    parts: tuple[tuple[_Entry, ...], ...]
    heads: tuple[_Entry, ...]
    if len(entries) > 2 * _CHUNK:
        half = len(entries) // 2
        parts, heads = (tuple(entries[:half]), tuple(entries[half:])), (entries[0], entries[half])
    else:
        parts, heads = (tuple(entries),), (entries[0],)
    if len(parts) == 1 and heads[0] == firsts[c]:  # (the usual case: the same first entry)
        return _ByLatest((*chunks[:c], *parts, *chunks[c + 1 :]), firsts)
    return _ByLatest(
        (*chunks[:c], *parts, *chunks[c + 1 :]), (*firsts[:c], *heads, *firsts[c + 1 :])
    )


def _history(
    generations: Any, num_checkpoints: int, mode: Mode, made_from: Any, by_latest: Any = None
) -> History:
    """``History(generations, num_checkpoints, mode, made_from, by_latest)`` for a
    ``mode`` already checked, built by filling ``__dict__``: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__`` and checks the mode, at
    every event's add."""
    history = object.__new__(History)
    fields = history.__dict__
    fields["_generations"] = generations
    fields["num_checkpoints"] = num_checkpoints
    fields["mode"] = mode
    fields["_made_from"] = made_from
    fields["_by_latest"] = by_latest
    return history


class GenerationView(Mapping[int, Checkpoint]):
    """Read-only ``step -> Checkpoint`` mapping of one generation, iterated by step.

    As the seed's ``IntKeyDict``, ``keys()``, ``values()`` and ``items()`` are lists
    sorted by step: ``history[gen].values()[-1]`` is the generation's latest checkpoint.
    """

    __slots__ = ("_generation", "generation_id")

    def __init__(self, generation_id: str, generation: _Generation):
        self.generation_id = generation_id
        self._generation = generation

    def __getitem__(self, step: int) -> Checkpoint:
        return self._generation.checkpoints[step]

    def __contains__(self, step: object) -> bool:
        return step in self._generation.checkpoints

    def __len__(self) -> int:
        return len(self._generation.checkpoints)

    def __iter__(self) -> Iterator[int]:
        return iter(self.steps_descending()[::-1])

    def keys(self) -> list[int]:  # type: ignore[override]
        """The steps in increasing order, as a list (the seed's ``IntKeyDict``'s)."""
        return self.steps_descending()[::-1]

    def values(self) -> list[Checkpoint]:  # type: ignore[override]
        """The checkpoints by increasing step, as a list: ``values()[-1]`` is the latest."""
        checkpoints = self._generation.checkpoints
        return [checkpoints[step] for step in self.keys()]

    def items(self) -> list[tuple[int, Checkpoint]]:  # type: ignore[override]
        """``(step, checkpoint)`` pairs by increasing step, as a list."""
        checkpoints = self._generation.checkpoints
        return [(step, checkpoints[step]) for step in self.keys()]

    def steps_descending(self) -> list[int]:
        """The generation's steps, newest first."""
        out = []
        node = self._generation.steps
        while node is not None:
            out.append(node[0])
            node = node[1]
        return out

    def __repr__(self) -> str:
        return f"GenerationView({self.generation_id!r}, steps={list(self)})"


@dataclasses.dataclass(frozen=True, eq=False)
class History(Mapping[str, GenerationView]):
    """Persistent ``generation_id -> step -> Checkpoint`` store with lineage queries.

    Build one with ``History()`` (or ``History(mode="max")``) and grow it with
    :meth:`add`; never mutate it.

    A pytree: its children are its checkpoints (key path ``[(generation_id, step)]``),
    whose ``params`` and ``meta_params`` are pytrees in turn, so ``jax.tree.map`` over a
    history (or a :class:`jaxpop.core.PopulationState`) reaches every checkpoint's
    arrays and keeps the layout; ids, steps, values and times are static.

    >>> import jax
    >>> from jaxpop.records import Checkpoint
    >>> h = History().add(Checkpoint(1.0, {"lr": 0.1}, "g", 0.5, None, 10, 0.0))
    >>> jax.tree.leaves(h)
    [1.0, 0.1]
    >>> jax.tree.map(lambda x: 2 * x, h)["g"][10].params
    2.0

    Attributes:
      mode: which values are better in this run, ``"min"`` (lower) or ``"max"``
        (higher). A controller sets it from its mutator (``PopulationBasedTraining(...,
        mode="max")``) and storage records it with the run, so everything that ranks a
        history's values -- :meth:`rank`, garbage collection's ``keep_best``,
        :func:`jaxpop.schedules.best_final`, ``jaxpop report`` -- ranks them the same way.
      num_checkpoints: how many checkpoints it holds.
    """

    _generations: immutables.Map = dataclasses.field(default_factory=immutables.Map)
    num_checkpoints: int = 0
    mode: Mode = "min"
    # how this history was made: (a weak reference to the history it was added to, the
    # checkpoint added), for :meth:`added_since`; never pickled, never compared
    _made_from: Any = dataclasses.field(default=None, repr=False, compare=False)
    # the generations by latest step (a _ByLatest), once by_latest_step was asked of this
    # history or one it was made from by adds (each add keeps it); never pickled
    _by_latest: Any = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self._generations, immutables.Map):  # History("max")
            raise TypeError(
                f"History() takes its mode by keyword: History(mode={self._generations!r}); "
                "build a history with add/add_all"
            )
        object.__setattr__(self, "mode", check_mode(self.mode))  # (a str subclass: str)

    def __getstate__(self) -> dict[str, Any]:
        # each generation's steps as a flat tuple: the linked list nests one level per
        # step, which pickle follows by recursion (a generation of ~1000 checkpoints
        # raised RecursionError: a Ray client could not fetch such a history)
        generations = {
            generation_id: (*gen[:1], _flat_steps(gen.steps), *gen[2:])
            for generation_id, gen in self._generations.items()
        }
        return {"generations": generations, "num_checkpoints": self.num_checkpoints,
                "mode": self.mode}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        flat = state.pop("generations", None)
        if flat is not None:  # (older pickles hold "_generations" as they are)
            state["_generations"] = immutables.Map(
                {
                    generation_id: _Generation(gen[0], _linked_steps(gen[1]), *gen[2:])
                    for generation_id, gen in flat.items()
                }
            )
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_made_from", None)
        object.__setattr__(self, "_by_latest", None)

    def rank(self, value: float | None) -> float:
        """A sort key for ``value`` under :attr:`mode`: smaller is better.

        ``value`` for ``"min"``, ``-value`` for ``"max"``; ``None``, NaN and infinities
        are ``inf`` (they rank last in either mode).
        """
        if value is None or not math.isfinite(value):
            return math.inf
        return -value if self.mode == "max" else value

    # -- building -------------------------------------------------------------------
    def add(self, checkpoint: Checkpoint) -> History:
        """Returns a history that also holds ``checkpoint`` (replacing one at its step).

        The first checkpoint added for a generation fixes its place in the creation
        order. Costs O(log n) (O(steps above it) for a checkpoint below its generation's
        newest step); ``self`` is unchanged.
        """
        generations = self._generations
        gen, replaced = _put(generations, checkpoint)
        generation_id = checkpoint.generation_id
        by_latest = self._by_latest
        if by_latest is not None:
            old = generations.get(generation_id)
            before = None if old is None else _entry(old, generation_id)
            after = _entry(gen, generation_id)
            if before != after:  # (its latest step moved)
                by_latest = _moved(by_latest, before, after)
        return _history(
            generations.set(generation_id, gen),
            self.num_checkpoints if replaced else self.num_checkpoints + 1,
            self.mode,
            (weakref.ref(self), checkpoint),
            by_latest,
        )

    def added_since(self, base: History, limit: int = 16) -> list[Checkpoint] | None:
        """The checkpoints :meth:`add` gave ``base`` to make this history, oldest first.

        ``None`` if this history was not made from ``base`` by at most ``limit`` adds
        (or ``base`` is gone). An incremental reader -- a mutator that keeps a view of
        the population between calls -- updates its view from these instead of reading
        the whole history again. O(number of adds), never more than ``limit``.
        """
        added: list[Checkpoint] = []
        history: History | None = self
        while history is not base:
            if history is None or history._made_from is None or len(added) == limit:
                return None
            made_from, checkpoint = history._made_from
            added.append(checkpoint)
            history = made_from()
        added.reverse()
        return added

    def with_mode(self, mode: Mode) -> History:
        """The same checkpoints, ranked under ``mode``."""
        return self if mode == self.mode else History(self._generations, self.num_checkpoints, mode)

    def continuation(
        self, generation_id: str, step: int, params: Any, value: float | None, time: float
    ) -> Checkpoint:
        """A new checkpoint that continues ``generation_id`` at ``step`` (not yet added).

        It carries the generation's ``meta_params``, and its ``parent`` is the
        generation's previous checkpoint (or, below the generation's first step, the
        generation's branch point).
        """
        # previous(), branch_point() and meta_params() from one lookup of the generation
        gen = self._generations.get(generation_id)
        if gen is None:
            raise KeyError(generation_id)
        below = _step_below(gen, step)
        parent = gen.checkpoints[gen.first_step].parent if below is None else (generation_id, below)
        meta_params = gen.checkpoints[gen.steps[0]].meta_params
        return Checkpoint(params, meta_params, generation_id, value, parent, step, time)

    def add_all(self, checkpoints) -> History:
        """Returns a history that also holds every checkpoint in ``checkpoints``.

        The history :meth:`add` makes of one after the other, built in one pass (a
        restore adds a whole snapshot at once).
        """
        if not isinstance(checkpoints, (list, tuple)):
            checkpoints = list(checkpoints)
        if len(checkpoints) < _BATCH:
            history = self
            for checkpoint in checkpoints:
                history = history.add(checkpoint)
            return history
        generations, count = self._generations.mutate(), self.num_checkpoints
        # each generation's steps in increasing order (a step below a generation's newest
        # costs a walk over the steps above it: checkpoints in decreasing order were
        # quadratic); generations in the order they first appear, a step given twice in
        # the order given (the later one replaces the earlier), as add after add makes
        first: dict[str, int] = {}
        for checkpoint in checkpoints[:-1]:
            if not (type(checkpoint) is Checkpoint and _well_formed(checkpoint)):
                _check_added(checkpoint)  # (as add says it, before the sort by step)
            first.setdefault(checkpoint.generation_id, len(first))
        batch = sorted(checkpoints[:-1], key=lambda c: (first[c.generation_id], c.step))
        for checkpoint in batch:
            gen, replaced = _put_checked(generations, checkpoint)
            generations[checkpoint.generation_id] = gen
            count += 0 if replaced else 1
        # the last one through add, as at the end of a chain of adds (added_since)
        return History(generations.finish(), count, self.mode).add(checkpoints[-1])

    # -- Mapping over generations ----------------------------------------------------
    def __getitem__(self, generation_id: str) -> GenerationView:
        gen = self._generations.get(generation_id)
        if gen is None:
            raise KeyError(generation_id)
        return GenerationView(generation_id, gen)

    def __contains__(self, generation_id: object) -> bool:
        return generation_id in self._generations

    def __len__(self) -> int:
        return len(self._generations)

    def __iter__(self) -> Iterator[str]:
        """Generation ids in the order they were created."""
        items = sorted(self._generations.items(), key=lambda kv: kv[1].order)
        return iter([gen_id for gen_id, _ in items])

    def __eq__(self, other: object) -> bool:
        """Equal by contents, like a dict of its generations (in any order), each
        checkpoint compared field by field, its params and hyperparameters as
        :func:`jaxpop.schedules.tree_equal` compares them: arrays by dtype, shape and
        elements (``==`` raised on arrays), NaN equal to NaN (a copy of a history that
        holds one was unequal to it), ``0.0`` and ``-0.0`` apart."""
        if not isinstance(other, History):
            return NotImplemented
        if self.mode != other.mode:
            return False
        if self._generations is other._generations:
            return True
        if self.num_checkpoints != other.num_checkpoints or self.keys() != other.keys():
            return False
        from jaxpop.schedules.base import tree_equal  # (jaxpop.schedules imports this module)

        for generation_id, generation in self._generations.items():
            theirs = other._generations[generation_id].checkpoints
            mine = generation.checkpoints
            if len(mine) != len(theirs):
                return False
            for step, checkpoint in mine.items():
                their = theirs.get(step)
                if checkpoint is not their and not (
                    their is not None
                    and type(checkpoint) is type(their)
                    and (checkpoint.generation_id, checkpoint.step, checkpoint.parent)
                    == (their.generation_id, their.step, their.parent)
                    and tree_equal(
                        (checkpoint.value, checkpoint.time, checkpoint.meta_params),
                        (their.value, their.time, their.meta_params),
                    )
                    and tree_equal(checkpoint.params, their.params)
                ):
                    return False
        return True

    __hash__ = None  # type: ignore[assignment]  # equal by contents, like a dict

    def __repr__(self) -> str:
        mode = "" if self.mode == "min" else f", mode={self.mode!r}"
        return f"History(generations={len(self)}, checkpoints={self.num_checkpoints}{mode})"

    # -- queries ---------------------------------------------------------------------
    def get_checkpoint(self, generation_id: str, step: int) -> Checkpoint | None:
        """The checkpoint at ``(generation_id, step)``, or ``None``."""
        gen = self._generations.get(generation_id)
        return None if gen is None else gen.checkpoints.get(step)

    def checkpoints(self) -> Iterator[Checkpoint]:
        """Every checkpoint, generation by generation (creation order), by step."""
        for gen_id in self:
            view = self[gen_id]
            for step in view:
                yield view[step]

    def first(self, generation_id: str) -> Checkpoint:
        """The generation's lowest-step checkpoint (its starting point). O(1)."""
        gen = self._generations.get(generation_id)
        if gen is None:
            raise KeyError(generation_id)
        return gen.checkpoints[gen.first_step]

    def latest(self, generation_id: str) -> Checkpoint:
        """The generation's checkpoint with the highest step. O(1)."""
        gen = self._generations.get(generation_id)
        if gen is None:
            raise KeyError(generation_id)
        return gen.checkpoints[gen.steps[0]]

    def by_latest_step(self) -> Iterator[tuple[int, int, str]]:
        """``(latest step, creation order, generation id)`` of every generation, the
        latest step first (on a tie, the later-created first); the creation order is an
        int that orders generations as ``iter(history)`` does.

        The first call reads every generation (O(g log g) for g generations); the
        histories :meth:`add` makes from this one keep the order up to date (each add
        costs O(g / 256 + 256) more from then on), so a reader that stops after the
        first few -- PB2's window of recent reward changes -- pays for those only.
        """
        index = self._by_latest
        if index is None:
            index = _by_latest(self._generations)
            object.__setattr__(self, "_by_latest", index)  # (the same for every reader)
        for chunk in reversed(index.chunks):
            yield from reversed(chunk)

    def meta_params(self, generation_id: str) -> Any:
        """The hyperparameters of a generation (those of its latest checkpoint)."""
        return self.latest(generation_id).meta_params

    def previous(self, generation_id: str, step: int) -> Checkpoint | None:
        """The generation's checkpoint with the highest step below ``step``, or ``None``."""
        gen = self._generations.get(generation_id)
        if gen is None:
            return None
        below = _step_below(gen, step)
        return None if below is None else gen.checkpoints[below]

    def evaluated(
        self,
        generation_id: str,
        *,
        min_step: float | None = None,
        min_time: float | None = None,
    ) -> list[Checkpoint]:
        """Checkpoints of a generation that carry a value, in increasing step order.

        Args:
          generation_id: the generation to look in (an unknown id gives ``[]``).
          min_step: keep only checkpoints with ``step >= min_step``. The walk starts at
            the newest step and stops at ``min_step``, so the cost is the number of
            checkpoints returned, not the generation's length.
          min_time: keep only checkpoints recorded at ``time >= min_time``. Where the
            generation's times never decrease with the step (a worker's own reports), the
            walk stops at the first one recorded before it, so this too costs the
            checkpoints returned.
        """
        gen = self._generations.get(generation_id)
        if gen is None:
            return []
        out = []
        node = gen.steps
        stops = min_time is not None and gen.times_ordered
        while node is not None and (min_step is None or node[0] >= min_step):
            checkpoint = gen.checkpoints[node[0]]
            if checkpoint.value is None:  # (its time is not compared: it is not kept)
                pass
            elif min_time is None or checkpoint.time >= min_time:
                out.append(checkpoint)
            elif stops:  # (every one below was recorded before it)
                break
            node = node[1]
        out.reverse()
        return out

    def latest_evaluated(self, generation_id: str) -> Checkpoint | None:
        """The generation's highest-step checkpoint that carries a value, or ``None``."""
        gen = self._generations.get(generation_id)
        if gen is None:
            return None
        node = gen.steps
        while node is not None:
            checkpoint = gen.checkpoints[node[0]]
            if checkpoint.value is not None:
                return checkpoint
            node = node[1]
        return None

    def latest_finite_save(self, generation_id: str) -> Checkpoint | None:
        """The generation's highest-step evaluated checkpoint that holds params and a
        finite value (a save from before its worker diverged), or ``None``."""
        gen = self._generations.get(generation_id)
        if gen is None or not gen.with_params:  # (none holds params: no walk to the root)
            return None
        node = gen.steps
        while node is not None:
            checkpoint = gen.checkpoints[node[0]]
            value = checkpoint.value
            if checkpoint.params is not None and value is not None and math.isfinite(value):
                return checkpoint
            node = node[1]
        return None

    def latest_loadable(self, generation_id: str) -> Checkpoint | None:
        """The checkpoint an exploit copies from ``generation_id``.

        The highest-step evaluated checkpoint whose ``params`` is not ``None`` (a worker
        may evaluate more often than it saves, reporting ``params=None`` in between). If
        no evaluated checkpoint has params, the newest checkpoint that has (a copy's
        start, which holds its source's params, for a copy that has evaluated but not
        saved since); if none has, the latest evaluated one, whose copier then
        initialises fresh parameters (as with the seed's ``params=None`` loops).
        ``None`` if the generation has no evaluation. Which one is copied, the lineage
        records as the new generation's parent.
        """
        gen = self._generations.get(generation_id)
        if gen is None:
            return None
        if not gen.with_params:  # the walk below would find no save: stop at the latest
            return self.latest_evaluated(generation_id)  # evaluation, not at the root
        node = gen.steps
        latest = saved = None
        while node is not None:
            checkpoint = gen.checkpoints[node[0]]
            if checkpoint.params is not None:
                if checkpoint.value is not None:
                    return checkpoint
                saved = saved or checkpoint
            elif checkpoint.value is not None:
                latest = latest or checkpoint
            node = node[1]
        return latest if latest is None or saved is None else saved

    def saves(self, generation_id: str) -> bool:
        """Whether any checkpoint of the generation holds params (a copy's start holds
        its source's): its worker sends them. ``False`` for the generation of a worker
        that never does (``params=None`` throughout). O(1)."""
        return self._generations[generation_id].with_params > 0

    def branch_point(self, generation_id: str) -> CheckpointRef | None:
        """Where a generation was copied from: its first checkpoint's parent."""
        return self.first(generation_id).parent

    def ancestry(self, generation_id: str) -> list[str]:
        """Generation ids from the root of the lineage down to ``generation_id``."""
        chain = [generation_id]
        seen = {generation_id}
        ref = self.branch_point(generation_id)
        while ref is not None and ref[0] in self._generations:
            if ref[0] in seen:
                raise ValueError(f"the lineage of {generation_id!r} has a cycle at {ref!r}")
            chain.append(ref[0])
            seen.add(ref[0])
            ref = self.branch_point(ref[0])
        chain.reverse()
        return chain

    def lineage(self, generation_id: str, step: int | None = None) -> list[Checkpoint]:
        """Every checkpoint the parameters at ``(generation_id, step)`` descend from.

        Follows ``parent`` links back to the root and returns the chain root first,
        ending with the checkpoint itself (``step=None``: the generation's latest).
        """
        checkpoint = (
            self.latest(generation_id) if step is None else self.get_checkpoint(generation_id, step)
        )
        if checkpoint is None:
            raise KeyError((generation_id, step))
        chain = list(self.back_from(checkpoint))
        chain.reverse()
        return chain

    def back_from(self, checkpoint: Checkpoint) -> Iterator[Checkpoint]:
        """``checkpoint``, then its parent, its parent's parent, ... (newest first),
        lazily: to the root, or to a parent the history does not hold.

        Raises:
          ValueError: the parents loop (a lineage longer than the history).
        """
        for _ in range(self.num_checkpoints + 1):
            yield checkpoint
            parent = checkpoint.parent
            found = None if parent is None else self.get_checkpoint(*parent)
            if found is None:
                return
            checkpoint = found
        raise ValueError(f"the lineage of {checkpoint.ref!r} has a cycle")


# -- a pytree: its checkpoints are the children -------------------------------------------------
def start_time(history: History) -> float:
    """When the population started: the earliest first checkpoint of a generation
    (O(generations))."""
    return min(history.first(g).time for g in history)


def _flatten_with_keys(history: History) -> tuple[list[tuple[Any, Checkpoint]], tuple]:
    children: list[tuple[Any, Checkpoint]] = []
    layout: list[tuple[str, tuple[int, ...]]] = []
    for generation_id in history:
        view = history[generation_id]
        steps = tuple(view)
        layout.append((generation_id, steps))
        children.extend(
            (jax.tree_util.DictKey((generation_id, step)), view[step]) for step in steps
        )
    return children, (history.mode, tuple(layout))


def _unflatten(aux: tuple, children: Any) -> History:
    """The same layout holding ``children`` (whatever a tree function made of them)."""
    mode, layout = aux
    children = iter(children)
    generations: immutables.MapMutation[str, _Generation] = immutables.Map().mutate()
    count = 0
    for index, (generation_id, steps) in enumerate(layout):
        checkpoints = immutables.Map({step: next(children) for step in steps})
        descending: _Steps = None
        for step in steps:  # increasing: the list ends up newest first
            descending = (step, descending)
        with_params = sum(getattr(c, "params", None) is not None for c in checkpoints.values())
        generations[generation_id] = _Generation(
            checkpoints, descending, steps[0], index, with_params
        )
        count += len(steps)
    return History(generations.finish(), count, mode)


def _flatten(history: History) -> tuple[list[Checkpoint], tuple]:
    keyed, aux = _flatten_with_keys(history)
    return [checkpoint for _, checkpoint in keyed], aux


jax.tree_util.register_pytree_with_keys(
    History, _flatten_with_keys, _unflatten, flatten_func=_flatten
)
