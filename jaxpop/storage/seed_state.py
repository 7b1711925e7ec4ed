"""The seed's run directories: find its ``population.state`` and migrate it, on request.

learned_optimization's controller keeps its whole state in ``log_dir/population.state``,
a pickle. jaxpop never loads it by itself (unpickling can run any code the file names);
a controller created on such a ``log_dir`` refuses with :class:`SeedStateError`.
:func:`migrate_seed_state` (``jaxpop migrate-seed-state DIR``) reads the file with an
unpickler that builds only the seed's records, plain containers, numbers, strings and
numpy arrays, and writes a jaxpop ``log_dir`` that a controller resumes. See
``docs/storage.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import numbers
import os
import pickle
import time
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import numpy as np

from jaxpop import core, encoding
from jaxpop.core import PopulationState
from jaxpop.keys import root_key
from jaxpop.records import ActiveWorker, Checkpoint
from jaxpop.storage.plain import state_from_plain, state_to_plain
from jaxpop.storage.store import Store

__all__ = [
    "MIGRATION_FILE",
    "SEED_STATE_FILE",
    "SeedMigration",
    "SeedStateError",
    "adopt_migrated_state",
    "check_not_seed_run",
    "load_seed_state",
    "migrate_seed_state",
]

logger = logging.getLogger("jaxpop")

#: The file the seed's controller pickles its state to, in its ``log_dir``.
SEED_STATE_FILE = "population.state"
#: What :func:`migrate_seed_state` writes beside the jaxpop files: where the run came
#: from (JSON: the source path, its SHA-256, when it was migrated).
MIGRATION_FILE = "seed-migration.json"
#: Where the seed's record classes live; the only module whose classes are read.
SEED_MODULE = "learned_optimization.population.population"

# The mutator state of a migrated run until a controller resumes it with a mutator
# (migration does not know the mutator): this marker, and the seed's state beside it.
_MARKER = "jaxpop.migrated_from_seed"


class SeedStateError(ValueError):
    """A seed ``population.state`` was found where jaxpop will not read it, or cannot be
    migrated (damaged, truncated, or naming something other than plain data)."""


class SeedMigration(NamedTuple):
    """What :func:`migrate_seed_state` did.

    Attributes:
      log_dir: the jaxpop ``log_dir`` written (a controller on it resumes the run).
      source: the seed's ``population.state`` that was read.
      state: the state written there.
    """

    log_dir: str
    source: str
    state: PopulationState


# -- what the restricted unpickler builds ----------------------------------------------
class _SeedRecord:
    """The fields the seed pickled for one of its records, held as data (nothing run)."""

    kind: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]

    def __init__(self, *args: Any, **kwargs: Any):  # a pickle that calls the class
        if len(args) > len(self.fields):
            raise SeedStateError(
                f"a seed {self.kind} of {len(args)} fields (it has {len(self.fields)})"
            )
        self.__setstate__({**dict(zip(self.fields, args, strict=False)), **kwargs})

    def __setstate__(self, state: Any) -> None:
        if type(state) is tuple and len(state) == 2:  # (__dict__, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if type(state) is not dict or set(state) - set(self.fields):
            raise SeedStateError(
                f"a seed {self.kind} record holding {state!r:.100} (its fields are {self.fields})"
            )
        self.values = state

    def field(self, name: str, where: str) -> Any:
        values = getattr(self, "values", {})
        if name not in values:
            raise SeedStateError(f"{where} (a seed {self.kind}) has no {name!r} field")
        return values[name]


class _SeedCheckpoint(_SeedRecord):
    kind = "Checkpoint"
    fields = ("params", "meta_params", "generation_id", "value", "parent", "step", "time")


class _SeedActiveWorker(_SeedRecord):
    kind = "ActiveWorker"
    fields = ("params", "meta_params", "generation_id", "step")


class _SeedIntKeyDict(dict):
    """The seed's ``IntKeyDict`` (a dict of step -> Checkpoint): read as a dict."""

    def __setstate__(self, state: Any) -> None:
        if state:
            raise SeedStateError(f"a seed IntKeyDict with attributes {state!r:.100}")


# How numpy pickles arrays and scalars, taken from numpy itself (numpy 1 and 2 name
# these functions' modules differently; a file may come from either).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SCALAR = np.float64(0).__reduce__()[0]


def _numeric_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise SeedStateError(f"a numpy array or scalar of dtype {dtype!r:.60} (not plain data)")
    return dtype


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if type(spec) is not str or type(align) is not bool or type(copy) is not bool:
        raise SeedStateError(f"a numpy dtype built from {spec!r:.60} (not how numpy pickles one)")
    return _numeric_dtype(np.dtype(spec, align, copy))


class _NdarrayName:
    """``numpy.ndarray`` as a pickle names it: only :func:`_reconstruct` takes it."""


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not _NdarrayName:
        raise SeedStateError(f"an array of class {subtype!r:.60} (only numpy.ndarray is read)")
    return _RECONSTRUCT(np.ndarray, shape, typecode)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)):
        raise SeedStateError(f"a numpy array read from a {type(buffer).__name__}")
    return _FROMBUFFER(buffer, _numeric_dtype(dtype), shape, order)


def _scalar(dtype: Any, data: Any) -> Any:
    if type(data) is not bytes:
        raise SeedStateError(f"a numpy scalar built from a {type(data).__name__}")
    return _SCALAR(_numeric_dtype(dtype), data)


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    (SEED_MODULE, "Checkpoint"): _SeedCheckpoint,
    (SEED_MODULE, "ActiveWorker"): _SeedActiveWorker,
    (SEED_MODULE, "IntKeyDict"): _SeedIntKeyDict,
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _dtype,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
}


class _Unpickler(pickle.Unpickler):
    """Builds only the seed's records and plain data; any other global is refused.

    Every name a pickle refers to (classes, functions: what unpickling would import
    and call) goes through :meth:`find_class`, so a refused name is never imported.
    """

    def __init__(self, file: io.BytesIO, where: str):
        super().__init__(file)
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise SeedStateError(
                f"{self._where} refers to {module}.{name}, which a seed population state "
                "does not hold; refusing it (nothing in the file was run). Only the seed's "
                "Checkpoint, ActiveWorker and IntKeyDict, plain containers, numbers, "
                "strings and numeric numpy arrays are read"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise SeedStateError(f"{self._where} refers to an external object ({pid!r:.60})")


def _unpickle(data: bytes, where: str) -> Any:
    stream = io.BytesIO(data)
    try:
        value = _Unpickler(stream, where).load()
    except SeedStateError as e:
        if str(e).startswith(where):
            raise
        raise SeedStateError(f"{where}: refusing {e} (nothing in the file was run)") from None
    except Exception as e:  # EOFError, UnpicklingError, ... from a cut or damaged file
        raise SeedStateError(
            f"{where} is truncated or damaged: it cannot be read as the seed's pickle "
            f"({type(e).__name__}: {e})"
        ) from None
    if stream.tell() != len(data):
        raise SeedStateError(
            f"{where} is damaged: {len(data) - stream.tell()} bytes follow the pickle's end"
        )
    return value


# -- from the seed's objects to jaxpop's records ---------------------------------------
def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as jaxpop plain data (seed records become jaxpop's), or SeedStateError."""
    if depth > 100:
        raise SeedStateError(f"{where} is nested more than 100 levels deep")
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    if type(value) is np.ndarray or isinstance(value, np.generic):
        if value.dtype.kind in "biufc":
            return value
    elif type(value) in (list, tuple):
        items = [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return items if type(value) is list else tuple(items)
    elif type(value) in (dict, _SeedIntKeyDict):
        plain = {}
        for k, v in value.items():
            at = f"{where}[{k!r:.40}]"
            plain[_plain(k, at, depth + 1)] = _plain(v, at, depth + 1)
        return plain
    elif type(value) is _SeedCheckpoint:
        return _checkpoint(value, where)
    elif type(value) is _SeedActiveWorker:
        return _worker(value, where)
    raise SeedStateError(
        f"{where} is a {type(value).__name__} {value!r:.60}, which jaxpop cannot store "
        "(plain containers, numbers, strings and numeric numpy arrays only)"
    )


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise SeedStateError(f"{where} is not an int: {type(value).__name__} {value!r:.60}")
    return int(value)


def _checkpoint(record: _SeedCheckpoint, where: str) -> Checkpoint:
    value = record.field("value", where)
    if value is not None:
        try:
            value = core.as_value(value)
        except TypeError as e:
            raise SeedStateError(f"{where}.value: {e}") from None
    parent = record.field("parent", where)
    if parent is not None:
        if type(parent) not in (tuple, list) or len(parent) != 2:
            raise SeedStateError(f"{where}.parent is not (generation_id, step): {parent!r:.80}")
        if type(parent[0]) is not str:
            raise SeedStateError(f"{where}.parent[0] is not a generation id: {parent[0]!r:.60}")
        parent = (parent[0], _int(parent[1], f"{where}.parent[1]"))
    moment = record.field("time", where)
    if isinstance(moment, bool) or not isinstance(moment, numbers.Real):
        raise SeedStateError(f"{where}.time is not a number: {moment!r:.60}")
    return Checkpoint(
        params=_plain(record.field("params", where), f"{where}.params"),
        meta_params=_plain(record.field("meta_params", where), f"{where}.meta_params"),
        generation_id=record.field("generation_id", where),
        value=value,
        parent=parent,
        step=_int(record.field("step", where), f"{where}.step"),
        time=float(moment),
    )


def _worker(record: _SeedActiveWorker, where: str) -> ActiveWorker:
    return ActiveWorker(
        params=_plain(record.field("params", where), f"{where}.params"),
        meta_params=_plain(record.field("meta_params", where), f"{where}.meta_params"),
        generation_id=record.field("generation_id", where),
        step=_int(record.field("step", where), f"{where}.step"),
    )


def _history(cache: Any) -> list[Checkpoint]:
    """The seed's cache as checkpoints in creation order, with jaxpop's parent links.

    The seed gives a checkpoint it records for a running generation itself as parent;
    jaxpop links it to the generation's previous checkpoint (its first, to where it was
    copied from, as in the seed). A parent must come earlier (an earlier step of its
    generation, or an earlier generation), so lineages never loop.
    """
    if type(cache) is not dict:
        raise SeedStateError(f"the cache is a {type(cache).__name__}, not a dict of generations")
    generations: list[tuple[str, list[tuple[int, Any]]]] = []
    for gen_id, steps in cache.items():
        if type(gen_id) is not str or type(steps) not in (dict, _SeedIntKeyDict) or not steps:
            raise SeedStateError(f"cache[{gen_id!r:.60}] is not a generation's checkpoints")
        keyed = [(_int(s, f"cache[{gen_id!r}] key {s!r:.20}"), c) for s, c in steps.items()]
        generations.append((gen_id, sorted(keyed, key=lambda sc: sc[0])))
    order = {gen_id: i for i, (gen_id, _) in enumerate(generations)}
    known = {(gen_id, step) for gen_id, steps in generations for step, _ in steps}
    checkpoints = []
    for gen_id, steps in generations:
        previous = None
        for step, record in steps:
            at = f"cache[{gen_id!r}][{step}]"
            if type(record) is not _SeedCheckpoint:
                raise SeedStateError(f"{at} is a {type(record).__name__}, not a seed Checkpoint")
            c = _checkpoint(record, at)
            if c.ref != (gen_id, step):
                raise SeedStateError(f"{at} holds the checkpoint of {c.ref!r:.80}")
            parent = c.parent
            if parent == c.ref:  # the seed's "continues itself"
                parent = None if previous is None else previous.ref
            elif parent is not None:
                if parent not in known:
                    raise SeedStateError(f"{at}.parent {parent} is not in the history")
                source = order[parent[0]]
                if source > order[gen_id] or (source == order[gen_id] and parent[1] >= step):
                    raise SeedStateError(f"{at}.parent {parent} does not come before it")
            checkpoints.append(c.replace(parent=parent))
            previous = c
    return checkpoints


def _marker_state(seed_state: Any, where: str) -> dict[str, Any]:
    try:
        plain = _plain(seed_state, where)
        encoding.encode(plain)
        representable = True
    except (SeedStateError, TypeError, ValueError) as e:
        warnings.warn(
            f"{e}: the seed's mutator state is not kept (jaxpop's mutators start from "
            "their initial state anyway)",
            stacklevel=4,
        )
        plain, representable = None, False
    return {_MARKER: 1, "seed_mutator_state": plain, "representable": representable}


def _to_state(raw: Any, where: str, seed: int) -> PopulationState:
    try:
        if type(raw) is not tuple or len(raw) != 3:
            raise SeedStateError(
                "it does not hold the seed's (active_workers, cache, mutator_state) tuple "
                f"but a {type(raw).__name__}"
            )
        workers_raw, cache, mutator_state = raw
        if type(workers_raw) not in (list, tuple) or not workers_raw:
            raise SeedStateError("active_workers is not a non-empty list of workers")
        workers = []
        for i, w in enumerate(workers_raw):
            if type(w) is not _SeedActiveWorker:
                raise SeedStateError(f"active_workers[{i}] is a {type(w).__name__}")
            workers.append(_worker(w, f"active_workers[{i}]"))
        plain = {
            "workers": tuple(workers),
            "mutator_state": _marker_state(mutator_state, f"{where}: the mutator state"),
            "key": np.asarray(root_key(seed), dtype=np.uint32),
            "num_events": 0,
            "checkpoints": tuple(_history(cache)),
            "mode": "min",
        }
        state = state_from_plain(plain)  # every check a stored state passes
        encoding.encode(state_to_plain(state))  # what the snapshot will hold
    except (SeedStateError, TypeError, ValueError) as e:
        raise SeedStateError(f"{where} cannot be migrated: {e}") from None
    return state


def _source(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return os.path.join(path, SEED_STATE_FILE) if os.path.isdir(path) else path


def load_seed_state(path: str | os.PathLike, *, seed: int = 0) -> PopulationState:
    """Reads the seed's ``population.state`` as a jaxpop state, running nothing from it.

    Args:
      path: the seed's ``log_dir``, or its ``population.state`` file.
      seed: seeds the root PRNG key of the jaxpop run (the seed's state has none).

    The records become jaxpop's ``Checkpoint`` and ``ActiveWorker``: values as floats,
    steps as ints, and a checkpoint the seed gave itself as parent gets the previous
    checkpoint of its generation instead. The mutator state is a marker that a
    controller replaces when it resumes the run (see :func:`adopt_migrated_state`).
    Writes nothing.

    Raises:
      FileNotFoundError: there is no such file.
      SeedStateError: the file is truncated or damaged, refers to anything but the
        seed's records and plain data (named in the message; none of it is imported or
        run), or holds a value jaxpop cannot store.
    """
    source = _source(path)
    with open(source, "rb") as f:
        data = f.read()
    return _to_state(_unpickle(data, source), source, seed)


def migrate_seed_state(
    src_dir: str | os.PathLike, dst_log_dir: str | os.PathLike | None = None, *, seed: int = 0
) -> SeedMigration:
    """Turns the seed's ``src_dir/population.state`` into a jaxpop ``log_dir``.

    An explicit, one-time step: reads the pickle with :func:`load_seed_state` (which
    builds only the seed's records and plain data, and runs nothing from the file),
    then writes a jaxpop ``log_dir`` (a snapshot, through :class:`Store`) and
    ``seed-migration.json`` (where it came from). A ``PopulationController`` created on
    that ``log_dir`` with the run's population size resumes it: the same workers,
    generations and checkpoints; the mutator starts from its ``init()`` state (a
    seed-style ``Mutate`` gets the seed's mutator state back). ``population.state`` is
    left as it was.

    >>> migrate_seed_state("runs/seed_pbt")  # doctest: +SKIP
    SeedMigration(log_dir='runs/seed_pbt', ...)

    Args:
      src_dir: the seed's ``log_dir`` (or its ``population.state`` file).
      dst_log_dir: where to write the jaxpop run; ``None``: ``src_dir`` itself, so the
        program runs on unchanged with the same ``log_dir``.
      seed: seeds the jaxpop run's root PRNG key.

    Raises:
      FileNotFoundError: there is no ``population.state``.
      SeedStateError: it cannot be read safely or represented (see
        :func:`load_seed_state`); nothing is written.
      FileExistsError: ``dst_log_dir`` already holds a jaxpop run; nothing is written.
      storage.LogDirInUseError: a live controller holds ``dst_log_dir``.
    """
    source = _source(src_dir)
    with open(source, "rb") as f:
        data = f.read()
    state = _to_state(_unpickle(data, source), source, seed)
    if dst_log_dir is None:
        dst_log_dir = os.path.dirname(source) or "."
    dst = os.fspath(dst_log_dir)
    _refuse_existing_run(dst)
    store = Store(dst, run={"population_size": state.population_size, "mutator": None})
    try:
        if store.load() is not None:  # appeared since the look above
            _refuse_existing_run(dst)
        store.start(state)
    finally:
        store.close()
    record = {
        "source": os.path.abspath(source),
        "sha256": hashlib.sha256(data).hexdigest(),
        "migrated_at": time.time(),
        "population_size": state.population_size,
        "checkpoints": state.history.num_checkpoints,
    }
    tmp = os.path.join(dst, MIGRATION_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(dst, MIGRATION_FILE))
    logger.info("jaxpop: migrated %s to %s", source, dst)
    return SeedMigration(dst, source, state)


def _holds_jaxpop_run(log_dir: str) -> bool:
    with contextlib.suppress(OSError):
        return any(n.startswith("snapshot-") and n.endswith(".jpsnap") for n in os.listdir(log_dir))
    return False


def _refuse_existing_run(dst: str) -> None:
    if _holds_jaxpop_run(dst):
        raise FileExistsError(
            f"{dst} already holds a jaxpop run: nothing was written. Migrate into another "
            "directory, or remove that run first"
        )


# -- what a controller does with a log_dir ---------------------------------------------
def check_not_seed_run(log_dir: str | os.PathLike) -> None:
    """Refuses a ``log_dir`` that holds the seed's state but no jaxpop run.

    Called by ``PopulationController`` before it touches ``log_dir``, so a seed run is
    never silently ignored (nor a fresh run started beside it). A ``log_dir`` that was
    migrated in place holds both; then a warning says if ``population.state`` changed
    since it was migrated (the seed's program went on writing it).

    Raises:
      SeedStateError: naming the file and how to migrate it.
    """
    log_dir = os.fspath(log_dir)
    path = os.path.join(log_dir, SEED_STATE_FILE)
    if not os.path.isfile(path):
        return
    if not _holds_jaxpop_run(log_dir):
        raise SeedStateError(
            f"{log_dir} holds learned_optimization's population state ({SEED_STATE_FILE}), "
            "which jaxpop does not load: it is a pickle, and loading a pickle can run any "
            "code. To continue that run with jaxpop, migrate it once (this reads only the "
            f"seed's records and plain data, and writes a jaxpop run beside it): "
            f"`jaxpop migrate-seed-state {log_dir}` or "
            f"jaxpop.storage.migrate_seed_state({log_dir!r}). To start a fresh run "
            "instead, use another log_dir"
        )
    try:
        with open(os.path.join(log_dir, MIGRATION_FILE)) as f:
            migrated = json.load(f)["sha256"]
        with open(path, "rb") as f:
            current = hashlib.sha256(f.read()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError):
        migrated, current = None, "unknown"
    if migrated != current:
        logger.warning(
            "jaxpop: %s holds a jaxpop run and the seed's %s, which %s; the jaxpop run is "
            "resumed and %s is ignored (migrate it into another directory to use it)",
            log_dir,
            SEED_STATE_FILE,
            "was not migrated here" if migrated is None else "changed since it was migrated",
            SEED_STATE_FILE,
        )


def adopt_migrated_state(state: PopulationState, mutator: Any) -> PopulationState:
    """The state a controller resumes a migrated run with: its mutator's state filled in.

    A migrated run holds a marker as mutator state (migration does not know the
    mutator). The first controller that resumes it gives a seed-style ``Mutate`` (run
    by :class:`jaxpop.seed.SeedMutator`) the seed's mutator state, and any other mutator
    its ``init()`` state: jaxpop's built-in mutators keep other state than the seed's.
    Any other state is returned unchanged.
    """
    marker = state.mutator_state
    if type(marker) is not dict or marker.get(_MARKER) != 1:
        return state
    from jaxpop.seed import SeedMutator  # jaxpop.seed imports jaxpop.storage

    if isinstance(mutator, SeedMutator) and marker.get("representable"):
        mutator_state = marker["seed_mutator_state"]
    else:
        mutator_state = mutator.init()
        if marker.get("seed_mutator_state") is not None:
            logger.info(
                "jaxpop: resuming a run migrated from learned_optimization; the mutator "
                "starts from its initial state (the seed's mutator state is not used)"
            )
    return state._with(mutator_state=mutator_state)
