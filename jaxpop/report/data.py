"""Report data: locating and loading a run, hyperparameters as columns, members and series.

Pure functions of a run's state; see :mod:`jaxpop.report` for the definitions.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

from jaxpop import storage
from jaxpop.core import PopulationState
from jaxpop.history import History
from jaxpop.mutators import ExploitEvent, exploit_events
from jaxpop.records import Checkpoint
from jaxpop.schedules.replay import _best_member, _position

if TYPE_CHECKING:
    pass

_RUN_FILE_PREFIXES = (("snapshot-", ".jpsnap"), ("journal-", ".jpjournal"))
_SEARCH_DEPTH = 2  # how far below LOGDIR to look for a run
_MAX_ARRAY_LEAF = 16  # larger arrays in meta_params are not hyperparameter columns


class NotARunError(ValueError):
    """A directory that holds no jaxpop run (or several); the message says what to pass."""


class SeveralRunsError(NotARunError):
    """A directory that holds several jaxpop runs: pass one of them."""


# -- locating and loading a run -------------------------------------------------------
def _is_run_dir(path: str) -> bool:
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(n.startswith(p) and n.endswith(s) for n in names for p, s in _RUN_FILE_PREFIXES)


def _subdirs(path: str) -> list[str]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return []
    return [
        e.path for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
    ]


def find_run_dir(path: str | os.PathLike) -> str:
    """The jaxpop run directory ``path`` names: ``path`` itself, or its one run below.

    A run directory holds ``snapshot-*.jpsnap`` (or journal) files: the ``log_dir`` of a
    ``PopulationController``. The CNN examples keep it in ``<log-dir>/population``, so
    a parent directory that holds exactly one run (within two levels) names that run.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      NotADirectoryError: ``path`` is a file.
      NotARunError: ``path`` is empty, holds no run, or holds several
        (:class:`SeveralRunsError`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: pass the log_dir of a jaxpop run")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{path} is a file: pass the log_dir (a directory) of a run")
    if _is_run_dir(path):
        return path
    hint = (
        "a run's directory is the log_dir given to PopulationController and holds "
        "snapshot-*.jpsnap files (the CNN examples write it to <log-dir>/population)"
    )
    if not os.listdir(path):
        raise NotARunError(f"{path} is empty: no jaxpop run has been written there yet; {hint}")
    runs: list[str] = []
    frontier = [path]
    for _ in range(_SEARCH_DEPTH):
        frontier = [d for parent in frontier for d in _subdirs(parent)]
        runs.extend(d for d in frontier if _is_run_dir(d))
        frontier = [d for d in frontier if d not in runs]
    if not runs:
        raise NotARunError(f"{path} is not a jaxpop run and holds none; {hint}")
    if len(runs) > 1:
        raise SeveralRunsError(
            f"{path} holds {len(runs)} jaxpop runs ({', '.join(runs)}); pass one of them"
        )
    return runs[0]


def load(log_dir: str | os.PathLike) -> Report:
    """Reads the run at ``log_dir`` (see :func:`find_run_dir`) into a :class:`Report`.

    Never takes the run's lock and never writes to it, so it is safe while the run is
    live: a record being written is left out.

    Raises:
      FileNotFoundError, NotADirectoryError, NotARunError: see :func:`find_run_dir`.
      jaxpop.storage.CorruptLogError: a file of the run is damaged.
    """
    run_dir = find_run_dir(log_dir)
    state = storage.read_state(run_dir)
    if state is None:  # its files vanished between the two looks
        raise NotARunError(f"{run_dir} holds no jaxpop state (no snapshot)")
    return build(state, run_dir)


# -- hyperparameters as flat columns --------------------------------------------------
def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _scalar(leaf: Any) -> Any:
    """A leaf as a plain Python scalar (or ``None`` if it is not one)."""
    if isinstance(leaf, bool | np.bool_):
        return bool(leaf)
    if isinstance(leaf, numbers.Integral):
        return int(leaf)
    if isinstance(leaf, numbers.Real):
        return float(leaf)
    if isinstance(leaf, str):
        return leaf
    return None


def _number_kind(dtype: Any) -> str | None:
    """``"b"``, ``"i"`` or ``"f"`` for a bool, integer or real floating dtype, else ``None``.

    ml_dtypes' ``bfloat16``, ``float8_*``, ``float4_*`` and ``int4``/``uint4`` count
    (numpy's ``dtype.kind`` calls most of them ``"V"``); a JAX PRNG key's does not.
    """
    if dtype == np.bool_:
        return "b"
    if jax.dtypes.issubdtype(dtype, np.integer):
        return "i"
    if jax.dtypes.issubdtype(dtype, np.floating):
        return "f"
    return None


def _array_items(leaf: Any, kind: str) -> list[Any]:
    """The elements of an array ``leaf`` of number kind ``kind`` as Python scalars."""
    array = np.asarray(leaf).reshape(-1)
    if kind == "f":  # float64 first: a bfloat16's or a longdouble's item is no float
        return array.astype(np.float64).tolist()
    if kind == "b":
        return array.astype(bool).tolist()
    return (array if array.dtype.kind in "iu" else array.astype(np.int64)).tolist()


def flatten_hparams(meta_params: Any) -> dict[str, Any]:
    """``meta_params`` as ``{dotted key: scalar}``, in the pytree's leaf order.

    Dict keys, sequence indices and dataclass fields join with ``"."``; a bare scalar
    is named ``"value"``. Numbers become Python ``int``/``float``/``bool`` (the
    ml_dtypes ``bfloat16`` and ``float8_*`` a ``float``, ``int4`` an ``int``), strings
    stay; arrays of up to 16 elements become one entry per element (a size-1 array one
    entry under its own key); larger arrays and other leaves (a JAX PRNG key, for one)
    are left out. Two leaves whose names join the same (a key holding a dot) are both
    kept, the later one as ``name:2``.

    >>> import jax.numpy as jnp
    >>> flatten_hparams({"lr": jnp.asarray(0.5, jnp.bfloat16), "opt": {"betas": (0.9, 1)}})
    {'lr': 0.5, 'opt.betas.0': 0.9, 'opt.betas.1': 1}
    """
    return _Names().flatten(meta_params)


def _entries(meta_params: Any) -> list[tuple[str, tuple[tuple[str, int], int], Any]]:
    """``(name, where, scalar)`` per entry of :func:`flatten_hparams`, in its order;
    ``where`` (the leaf's path as text, how many leaves before it print the same -- two
    NaN keys --, and the element of an array) tells apart two leaves whose names join
    the same."""
    out = []
    leaves, _ = jax.tree_util.tree_flatten_with_path(meta_params)
    printed: dict[str, int] = {}
    for path, leaf in leaves:
        name = ".".join(_key_name(p) for p in path) if path else "value"
        text = jax.tree_util.keystr(path)
        printed[text] = printed.get(text, -1) + 1
        where = (text, printed[text])
        value = _scalar(leaf)
        if value is not None:
            out.append((name, (where, -1), value))
            continue
        if not (hasattr(leaf, "dtype") and hasattr(leaf, "size")) or leaf.size > _MAX_ARRAY_LEAF:
            continue
        try:
            kind = _number_kind(leaf.dtype)
            if kind is None:
                continue
            items = _array_items(leaf, kind)
        except (TypeError, ValueError):  # a dtype or an array-like numpy cannot read
            continue  # (a pandas categorical, a jax.ShapeDtypeStruct): left out
        if len(items) == 1:
            out.append((name, (where, -1), items[0]))
        else:
            out += [(f"{name}.{i}", (where, i), item) for i, item in enumerate(items)]
    return out


class _Names:
    """The names :func:`flatten_hparams` gives, kept across trees: a leaf keeps the
    name it was first given, so a column means one leaf throughout a run (where a key
    holding a dot makes two leaves' names join the same, which one is ``name:2`` would
    otherwise depend on which others a tree holds)."""

    def __init__(self) -> None:
        self._of: dict[tuple[tuple[str, int], int], str] = {}  # where -> name
        self._taken: set[str] = set()

    def flatten(self, meta_params: Any) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for name, where, value in _entries(meta_params):
            key = self._of.get(where)
            if key is None:
                # a name taken already gets :2, :3, ... so no value is dropped (a
                # character every logging backend takes in a name, MLflow's included)
                key, n = name, 1
                while key in self._taken:
                    n += 1
                    key = f"{name}:{n}"
                self._of[where] = key
                self._taken.add(key)
            flat[key] = value
        return flat

    def numeric(self, meta_params: Any) -> dict[str, float]:
        """:meth:`flatten`'s numeric entries, as :func:`numeric_hparams` gives them."""
        return _as_floats(self.flatten(meta_params))


def with_hparams(
    rows: Sequence[Mapping[str, Any]], meta_params: Sequence[Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    """``rows`` with each one's hyperparameters (``meta_params[i]``'s, for ``rows[i]``)
    as flat columns after its own: ``(the hyperparameter columns, the rows)``.

    A column is one leaf in every row (the names given across the trees, as the
    report's: see :func:`flatten_hparams`), in first-seen order; a hyperparameter named
    like one of the rows' own columns is ``hparams.<name>`` (then ``hparams.<name>:2``,
    ... past one taken): every value keeps a column of its own.

    >>> with_hparams([{"step": 0, "value": 0.5}], [0.1])  # a bare scalar is "value"
    (['hparams.value'], [{'step': 0, 'value': 0.5, 'hparams.value': 0.1}])
    """
    leaf_names = _Names()
    flat = [leaf_names.flatten(tree) for tree in meta_params]
    names = list(dict.fromkeys(name for entries in flat for name in entries))
    column = hparam_columns(names, {key for row in rows for key in row})
    out = [
        {**row, **{column[name]: value for name, value in entries.items()}}
        for row, entries in zip(rows, flat, strict=True)
    ]
    return [column[name] for name in names], out


def hparam_columns(names: Sequence[str], own: Collection[str]) -> dict[str, str]:
    """``name -> column`` for hyperparameters shown beside the columns ``own``: a name
    that is one of those is ``hparams.<name>`` (``hparams.<name>:2``, ... past one taken).

    >>> hparam_columns(["step", "hparams.step", "lr"], {"step", "value"})
    {'step': 'hparams.step:2', 'hparams.step': 'hparams.step', 'lr': 'lr'}
    """
    used = set(own) | {name for name in names if name not in own}
    column = {}
    for name in names:
        key = name
        if name in own:
            key, n = f"hparams.{name}", 1
            while key in used:
                n += 1
                key = f"hparams.{name}:{n}"
            used.add(key)
        column[name] = key
    return column


def _float(number: int | float) -> float:
    """``float(number)``; an int past a float's range is an infinity of its sign."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def numeric_hparams(meta_params: Any) -> dict[str, float]:
    """The numeric entries of :func:`flatten_hparams`, as floats (bools as 0/1, an int
    past a float's range as an infinity of its sign)."""
    return _as_floats(flatten_hparams(meta_params))


def _as_floats(flat: dict[str, Any]) -> dict[str, float]:
    return {k: _float(v) for k, v in flat.items() if not isinstance(v, str)}


# -- the report data ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One worker's trajectory.

    Attributes:
      worker: the worker id.
      generation_id: the worker's current generation.
      step: the worker's current step.
      meta_params: the worker's current hyperparameters.
      lineage: the checkpoints its parameters descend from, root first, ending at its
        current position (the newest checkpoint of its current generation that holds
        params or a value).
      scored: its latest evaluated checkpoint along ``lineage`` (``None``: none yet).
      status: the worker's ``ActiveWorker.status``: ``"active"``, ``"finished"`` or
        ``"gone"``.
    """

    worker: int
    generation_id: str
    step: int
    meta_params: Any
    lineage: tuple[Checkpoint, ...]
    scored: Checkpoint | None
    status: str = "active"

    @property
    def value(self) -> float | None:
        """The member's score: ``scored.value``."""
        return None if self.scored is None else self.scored.value


@dataclasses.dataclass(frozen=True, eq=False)
class Report:
    """Everything the report shows, computed from one read of a run's state.

    Attributes:
      log_dir: the run directory it was read from (``""`` if built from a state).
      state: the population state read.
      members: one per worker, by worker id.
      best: the best member (``None`` while nothing is evaluated).
      best_lineage: ``history.lineage`` of the best member's scored checkpoint.
      exploits: every exploit event, in the order the generations were created.
      hparam_names: the numeric hyperparameter names (union over all generations).
    """

    log_dir: str
    state: PopulationState
    members: tuple[Member, ...]
    best: Member | None
    best_lineage: tuple[Checkpoint, ...]
    exploits: tuple[ExploitEvent, ...]
    hparam_names: tuple[str, ...]
    # the run's hyperparameter names (a column is one leaf throughout: see _Names)
    _names: _Names = dataclasses.field(default_factory=_Names, repr=False)
    # id(meta_params) -> (meta_params, its numeric hyperparameters): see _numeric_of
    _numeric: dict[int, tuple[Any, dict[str, float]]] = dataclasses.field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def history(self) -> History:
        return self.state.history

    @property
    def population_size(self) -> int:
        return self.state.population_size

    @property
    def num_evaluations(self) -> int:
        return sum(1 for c in self.history.checkpoints() if c.value is not None)


def _member(history: History, worker_id: int, worker: Any) -> Member:
    generation_id = worker.generation_id
    # a worker's generation is always in a consistent history; if not, report the rest
    lineage: tuple[Checkpoint, ...] = ()
    if generation_id in history:
        lineage = tuple(reversed(list(history.back_from(_position(history, worker)))))
    scored = next((c for c in reversed(lineage) if c.value is not None), None)
    return Member(
        worker_id, generation_id, worker.step, worker.meta_params, lineage, scored, worker.status
    )


def build(state: PopulationState, log_dir: str = "") -> Report:
    """The :class:`Report` of ``state`` (pure: reads nothing, writes nothing).

    >>> from jaxpop import PopulationController, WinnerTakeAllGenetic
    >>> mutator = WinnerTakeAllGenetic(lambda meta: {"lr": meta["lr"] / 2}, steps_per_exploit=10)
    >>> controller = PopulationController([{"lr": 0.1}, {"lr": 0.2}], mutator)
    >>> for worker, value in [(0, 0.5), (1, 0.3)]:
    ...     generation_id = controller.active_workers[worker].generation_id
    ...     controller.set_eval(worker, generation_id, 10, f"params-{worker}", value)
    >>> report = build(controller.state)  # both copied worker 1's checkpoint: a tie, 0 wins
    >>> report.best.worker, report.best.value, report.best.scored.meta_params, len(report.exploits)
    (0, 0.3, {'lr': 0.2}, 2)
    """
    history = state.history
    members = tuple(_member(history, i, w) for i, w in enumerate(state.workers))
    try:  # (the rule jaxpop.schedules.best_final and the loggers rank members by)
        best: Member | None = members[_best_member(history, state.workers)[0]]
    except ValueError:  # nothing evaluated yet
        best = None
    best_lineage = (
        () if best is None or best.scored is None else tuple(history.lineage(*best.scored.ref))
    )
    run_names = _Names()  # (every generation named in creation order, as the CSV is)
    names: dict[str, None] = {}
    for generation_id in history:
        for name in run_names.numeric(history.first(generation_id).meta_params):
            names.setdefault(name)
    return Report(
        log_dir=log_dir,
        state=state,
        members=members,
        best=best,
        best_lineage=best_lineage,
        exploits=tuple(exploit_events(history)),
        hparam_names=tuple(names),
        _names=run_names,
    )


class Series(NamedTuple):
    """One plotted line: ``values[i]`` at ``steps[i]`` (float arrays, NaN where absent)."""

    label: str
    steps: np.ndarray
    values: np.ndarray


def _numeric_of(report: Report, meta_params: Any) -> dict[str, float]:
    """:func:`numeric_hparams` of ``meta_params`` under the run's names, flattened once per
    object for ``report`` (a plot of k hyperparameters over n checkpoints flattens n
    times, not k * n).

    The memo holds ``meta_params`` itself, so its ``id`` stays its own; the dict
    returned is shared: read it, never change it.
    """
    entry = report._numeric.get(id(meta_params))
    if entry is None:
        entry = (meta_params, report._names.numeric(meta_params))
        report._numeric[id(meta_params)] = entry
    return entry[1]


def _series(
    report: Report, label: str, checkpoints: Sequence[Checkpoint], hparam: str | None
) -> Series:
    if hparam is None:
        points = [(c.step, c.value) for c in checkpoints if c.value is not None]
    else:
        points = [
            (c.step, _numeric_of(report, c.meta_params).get(hparam, math.nan)) for c in checkpoints
        ]
    steps = np.asarray([p[0] for p in points], dtype=np.float64)
    values = np.asarray([p[1] for p in points], dtype=np.float64)
    return Series(label, steps, values)


def member_series(report: Report, hparam: str | None = None) -> list[Series]:
    """One :class:`Series` per member along its lineage (label ``"worker <w>"``).

    ``hparam=None``: its evaluated checkpoints' values; otherwise the hyperparameter
    ``hparam`` at every checkpoint (a copy shows as a jump at the copy step).
    """
    return [_series(report, f"worker {m.worker}", m.lineage, hparam) for m in report.members]


def best_series(report: Report, hparam: str | None = None) -> Series | None:
    """The best lineage as a :class:`Series` (see :func:`member_series`), or ``None``."""
    if report.best is None:
        return None
    return _series(report, f"best: worker {report.best.worker}", report.best_lineage, hparam)
