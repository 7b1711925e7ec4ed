"""Per-worker facts a host mutator keeps between calls, brought up to date from changes.

A host decision reads a few facts about every worker (its score, whether it is ready,
what copying it would give). Reading them from the history for every worker at every
call costs O(population) Python work per evaluation; a :class:`Views` cache keeps them
in numpy columns and, at the next call, recomputes only the workers that changed: those
whose assignment was replaced and those whose generation got a checkpoint
(:meth:`jaxpop.history.History.added_since`), and, for a checkpoint that replaced one,
also those whose generation started from it. Anything it cannot follow exactly (a
history not made from the last one, another state) is read again from scratch, so a
view always equals one built afresh and the mutator stays a pure function of its
arguments. An entry may read its worker's generation and the checkpoint that
generation started from, no other.
"""

from __future__ import annotations

import bisect
import functools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxpop.history import History
from jaxpop.records import ActiveWorker, Checkpoint, replaced

__all__ = ["View", "Views", "order_entry"]

#: ``(state, history, worker_id, worker) -> one value per column``. It may read the
#: state, the worker, the checkpoints of the worker's generation and the checkpoint that
#: generation started from (its branch point), nothing else of the history: those are
#: what a view follows (anything else is read when needed, outside the view).
EntryFn = Callable[[Any, History, int, ActiveWorker], Sequence[Any]]


def order_entry(key: float, worker_id: int) -> tuple[int, float, int]:
    """A worker's place in :attr:`View.order`: by sort key (lower first), a key of
    ``inf`` after every finite one and NaN after those, ties by worker id: the order of a
    stable ``np.argsort`` of the column.

    >>> sorted([order_entry(math.nan, 0), order_entry(math.inf, 1), order_entry(0.5, 2)])
    [(0, 0.5, 2), (1, 0.0, 1), (2, 0.0, 0)]
    """
    if key != key:
        return (2, 0.0, worker_id)
    if key == math.inf:
        return (1, 0.0, worker_id)
    return (0, float(key), worker_id)


def _reads_replaced(history: History, ref: Any, replaced: set) -> bool:
    """Whether a copy started from ``ref`` reads a checkpoint in ``replaced`` for its
    score: ``ref``, or, while ``ref`` is the unevaluated start of another copy, what that
    copied, up the lineage (the walk of :func:`jaxpop.mutators.base.copied_value`: a
    copy of a copy ranks by the value of the first evaluated checkpoint up its chain)."""
    seen = 0
    while ref is not None and seen <= len(history):
        if ref in replaced:
            return True
        checkpoint = history.get_checkpoint(*ref)
        if checkpoint is None or checkpoint.value is not None:
            return False
        parent = checkpoint.parent
        if (
            parent is None
            or parent[0] == ref[0]
            or parent[1] != ref[1]
            or ref[1] != history.first(ref[0]).step
        ):
            return False
        ref, seen = parent, seen + 1
    return False


class View:
    """The columns of one ``(state, workers, history)``: ``view["name"][worker_id]``."""

    __slots__ = (
        "_arrays",
        "_entry",
        "_ordered",
        "_places",
        "_rows",
        "added",
        "added_checkpoints",
        "by_generation",
        "columns",
        "derived",
        "history",
        "memo",
        "order",
        "stale",
        "state",
        "touched",
        "workers",
    )

    def __init__(
        self,
        entry: EntryFn,
        state: Any,
        workers: Sequence[ActiveWorker],
        history: History,
        rows: np.ndarray,
        by_generation: dict[str, tuple[int, ...]],
    ):
        self._entry = entry
        self.state = state
        self.workers = tuple(workers)
        self.history = history
        # one record per worker, a field per column: an entry is written in one
        # assignment (a column is a view of its field)
        self._rows = rows
        self.columns = {name: rows[name] for name in rows.dtype.names or ()}
        self._arrays = tuple(self.columns.values())
        self.by_generation = by_generation
        #: workers whose entries are out of date: refreshed before the view is next read
        self.stale: set[int] = set()
        #: the workers whose entries were read again when the view was last brought up to
        #: date (their assignment was replaced, their generation got a checkpoint, or they
        #: were stale); ``None`` for a view read afresh (any worker may have changed)
        self.touched: set[int] | None = None
        #: ``generation_id -> value``: what a mutator derived from one generation's
        #: checkpoints (a curve, say) and keeps with the view: an entry is dropped when its
        #: generation gets a checkpoint, and a view read afresh starts with none. The
        #: mutator bounds its size.
        self.derived: dict[str, Any] = {}
        #: the generations that got a checkpoint when the view was last brought up to
        #: date; ``None`` for a view read afresh
        self.added: set[str] | None = None
        #: the checkpoints behind :attr:`added`, in the order they were added; ``None``
        #: for a view read afresh
        self.added_checkpoints: list[Checkpoint] | None = None
        #: what else a mutator keeps with the view (a view read afresh starts with none);
        #: the mutator keeps it up to date from :attr:`touched` and :attr:`added`
        self.memo: dict[Any, Any] = {}
        #: with ``Views(..., order_by=name)``: every worker's :func:`order_entry` of that
        #: column, sorted (kept so by :meth:`refresh`): a worker's place, or the k best,
        #: found by bisection instead of a sort at every decision; else ``None``
        self.order: list[tuple[int, float, int]] | None = None
        self._ordered: int | None = None
        self._places: list[tuple[int, float, int]] = []  # each worker's entry in order

    def sort_by(self, column: int) -> None:
        """Keeps :attr:`order` for the ``column``-th column from now on."""
        values = self._arrays[column].tolist()
        self._places = [order_entry(k, i) for i, k in enumerate(values)]
        self.order = sorted(self._places)
        self._ordered = column

    def place(self, worker_id: int) -> tuple[int, float, int]:
        """The worker's :func:`order_entry` in :attr:`order` (kept only with an order)."""
        return self._places[worker_id]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def refresh(self, worker_id: int) -> None:
        """Recomputes one worker's entry from the view's state, workers and history."""
        values = self._entry(self.state, self.history, worker_id, self.workers[worker_id])
        if self._ordered is not None:
            old, new = self._places[worker_id], order_entry(values[self._ordered], worker_id)
            if old != new:
                order = self.order
                assert order is not None
                del order[bisect.bisect_left(order, old)]
                bisect.insort(order, new)
                self._places[worker_id] = new
        self._rows[worker_id] = tuple(values)

    def reassigned(self, workers: Sequence[ActiveWorker], changed: Sequence[int]) -> None:
        """Re-labels the view with ``workers``, which differ from its own at the indices
        ``changed`` (those entries become :attr:`stale`)."""
        by_generation, old = self.by_generation, self.workers
        for i in changed:
            before, after = old[i].generation_id, workers[i].generation_id
            if before != after:
                ids = by_generation.pop(before)
                if ids != (i,):  # a generation no worker is in is dropped: the dict stays small
                    by_generation[before] = tuple([j for j in ids if j != i])
                by_generation[after] = (*by_generation.get(after, ()), i)
        self.stale.update(changed)
        self.workers = tuple(workers)

    def moved_on(self, state: Any, workers: Sequence[ActiveWorker], history: History) -> None:
        """Re-labels the view as that of ``(state, workers, history)``: the caller has
        refreshed every entry that differs, or added it to :attr:`stale`."""
        self.state, self.workers, self.history = state, tuple(workers), history


class Views:
    """A cache of :class:`View` s, one per recent mutator state.

    Args:
      entry: ``(state, history, worker_id, worker) -> values``, one per column (what it
        may read: see ``EntryFn``).
      columns: the columns' names and numpy dtypes, in ``entry``'s order.
      order_by: a float column the views keep sorted in :attr:`View.order`.
      reads_branch_points: whether ``entry`` reads the checkpoint its worker's generation
        started from; ``False`` spares the walk over every generation that finds the
        workers to read again when such a checkpoint is replaced.
    """

    # views kept: a controller needs one. Each holds its history (and so the params it
    # references) until newer calls push it out, so keep few: a dropped run's history is
    # freed by the next run's second call, or with the mutator
    _SIZE = 2
    _LIMIT = 64  # adds followed from one view to the next; past that, read afresh

    def __init__(
        self,
        entry: EntryFn,
        columns: Mapping[str, Any],
        order_by: str | None = None,
        *,
        reads_branch_points: bool = True,
    ):
        self._entry = entry
        self._reads_branch_points = reads_branch_points
        self._columns = dict(columns)
        self._dtype = np.dtype(list(self._columns.items()), align=True)
        self._order_by = order_by
        self._ordered = None if order_by is None else list(self._columns).index(order_by)
        self._views: dict[int, View] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        # a pickled mutator (Ray, multiprocessing) starts with an empty cache
        return (
            functools.partial(Views, reads_branch_points=self._reads_branch_points),
            (self._entry, self._columns, self._order_by),
        )

    def view(self, state: Any, workers: Sequence[ActiveWorker], history: History) -> View:
        """The view of ``(state, workers, history)``, the caller's to change.

        A cached view is taken out of the cache and brought up to date in place (no
        copy): only the caller holds it until it :meth:`keep` s it again, so a
        concurrent call with the same state reads afresh rather than share it.
        """
        with self._lock:
            old = self._views.pop(id(state), None)
        if old is None or old.state is not state or len(workers) != len(old.workers):
            return self.build(state, workers, history)
        added = history.added_since(old.history, limit=self._LIMIT)
        if added is None:
            return self.build(state, workers, history)
        old_history = old.history
        generations = {checkpoint.generation_id for checkpoint in added}
        replaced_refs = set()
        if self._reads_branch_points and (
            history.num_checkpoints - old_history.num_checkpoints != len(added)
        ):
            # an add replaced a checkpoint (each other add counts one more): find which
            refs: set[tuple[str, int]] = set()
            for checkpoint in added:
                ref = (checkpoint.generation_id, checkpoint.step)
                if ref in refs or old_history.get_checkpoint(*ref) is not None:
                    replaced_refs.add(ref)
                refs.add(ref)
        changed = replaced(workers, old.workers)
        if changed:
            old.reassigned(workers, changed)
        touched, old.stale = old.stale, set()
        by_generation, derived = old.by_generation, old.derived
        for generation_id in generations:
            touched.update(by_generation.get(generation_id, ()))
            if derived:
                derived.pop(generation_id, None)
        if replaced_refs:
            # a replaced checkpoint is also read by the workers whose generation started
            # from it (a worker not evaluated since it copied ranks by its source's value),
            # or from the unevaluated start of a copy of it, and so on up the lineage
            for generation_id, ids in by_generation.items():
                if _reads_replaced(history, history.first(generation_id).parent, replaced_refs):
                    touched.update(ids)
        old.moved_on(state, workers, history)
        for i in touched:
            old.refresh(i)
        old.touched = touched
        old.added = generations
        old.added_checkpoints = added
        return old

    def keep(self, view: View) -> None:
        """Remembers ``view`` for the next call with its state."""
        with self._lock:
            self._views.pop(id(view.state), None)
            self._views[id(view.state)] = view
            while len(self._views) > self._SIZE:
                del self._views[next(iter(self._views))]

    def build(self, state: Any, workers: Sequence[ActiveWorker], history: History) -> View:
        """The view of ``(state, workers, history)`` read afresh: O(population)."""
        n = len(workers)
        by_generation: dict[str, tuple[int, ...]] = {}
        for i, worker in enumerate(workers):
            by_generation[worker.generation_id] = (*by_generation.get(worker.generation_id, ()), i)
        rows = np.zeros(n, self._dtype)
        view = View(self._entry, state, workers, history, rows, by_generation)
        for i in range(n):
            view.refresh(i)
        if self._ordered is not None:
            view.sort_by(self._ordered)
        return view
