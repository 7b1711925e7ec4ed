"""The seed's run directories: find its ``population.state`` and migrate it, on request.

learned_optimization's controller keeps its whole state in ``log_dir/population.state``,
a pickle. jaxpop never loads it by itself (unpickling can run any code the file names);
a controller created on such a ``log_dir`` refuses with :class:`SeedStateError`.
:func:`migrate_seed_state` (``jaxpop migrate-seed-state DIR``) reads the file with an
unpickler that builds only the seed's records, plain containers, numbers, strings and
numpy arrays, after a walk over the pickle's opcodes bounds what it may cost, and writes
a jaxpop ``log_dir`` that a controller resumes. See ``docs/storage.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import numbers
import os
import pickle
import pickletools
import reprlib
import time
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, cast

import numpy as np

from jaxpop import core, encoding
from jaxpop.boundary import check_sortable_keys
from jaxpop.core import PopulationState
from jaxpop.history import KEPT_MARK, is_kept
from jaxpop.keys import new_generation_id, root_key
from jaxpop.records import ActiveWorker, Checkpoint
from jaxpop.storage.atomic import missing_dirs, remove_dirs, write_atomic
from jaxpop.storage.frames import CorruptLogError, open_regular
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


# -- bounded error messages -------------------------------------------------------------
class _BoundedRepr(reprlib.Repr):
    """reprlib's bounded repr, also for dict and list subclasses, huge ints and records.

    A file's values may be huge (shared references make a few bytes stand for a
    structure of any size): an error message shows a few levels and items of them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, _SeedRecord):
            return f"<a seed {x.kind}>"
        if isinstance(x, _Refused):
            return f"<{x.why}>"
        if type(x) is int and x.bit_length() > 64:
            return f"<an int of {x.bit_length()} bits>"
        if isinstance(x, (bytes, bytearray)) and len(x) > self.maxstring:
            return repr(x[: self.maxstring]) + "..."
        for base in (dict, list, tuple, set, frozenset):
            if isinstance(x, base):
                return getattr(self, f"repr_{base.__name__}")(x, level)
        return super().repr1(x, level)


_short = _BoundedRepr().repr


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
                f"a seed {self.kind} record holding {_short(state)} (its fields are {self.fields})"
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
            raise SeedStateError(f"a seed IntKeyDict with attributes {_short(state)}")


# numpy's objects are never given a state from the file: a dtype's state sets its flags
# (a dtype of ints that claims to hold objects makes numpy read the ints as pointers).
# The file's dtypes and arrays are read into these stand-ins, whose states are checked,
# and numpy builds from the checked values.
_DTYPE_STATE_TAIL = (None, None, None, -1, -1, 0)  # how numpy pickles a numeric dtype


class _Unstorable(SeedStateError):
    """A well-formed value jaxpop cannot store (an object array): the reader goes on,
    holding a :class:`_Refused` in its place, so :func:`_plain` names where it sits (and
    one in the mutator state is dropped with that state, not fatal)."""


class _Refused:
    """Stands for a value read as :class:`_Unstorable`; nothing of it is built."""

    def __init__(self, why: str):
        self.why = why

    def __setstate__(self, state: Any) -> None:  # (a file must not write its message)
        raise SeedStateError(f"a state given to a refused value: {_short(state)}")


class _Dtype:
    """A numeric numpy dtype as a pickle describes it: ``numpy.dtype(spec)``, then its
    byte order from the state the pickle gives it. Another dtype is only ``refused``
    (why), and never given a state."""

    refused: str | None = None

    def __init__(self, spec: Any, align: Any = False, copy: Any = True):
        if type(spec) is not str or type(align) is not bool or type(copy) is not bool:
            raise SeedStateError(
                f"a numpy dtype built from {_short(spec)} (not how numpy pickles one)"
            )
        try:
            self._base: np.dtype | None = _numeric_dtype(np.dtype(spec, align, True))
        except _Unstorable as e:
            self._base, self.refused = None, str(e)
        self.dtype: np.dtype | None = None

    def __setstate__(self, state: Any) -> None:
        if self.refused is not None:
            return  # (its state, an object dtype's flags, is never used)
        base = getattr(self, "_base", None)
        if (
            base is None
            or type(state) is not tuple
            or len(state) != 8
            or state[0] != 3
            or state[1] not in ("<", ">", "|", "=")
            or state[2:] != _DTYPE_STATE_TAIL
        ):
            raise SeedStateError(f"a numpy dtype with the state {_short(state)}")
        self.dtype = base.newbyteorder(state[1]) if state[1] in "<>" else base


def _numeric_dtype(dtype: Any) -> np.dtype:
    if type(dtype) is _Dtype:
        if dtype.refused is not None:
            raise _Unstorable(dtype.refused)
        dtype = dtype.dtype
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        raise _Unstorable(f"a numpy array or scalar of dtype {_short(dtype)} (not plain data)")
    return dtype


class _Array:
    """A numpy array as a pickle describes it; built from its state once that is checked
    (or ``refused``: why, for one of a dtype jaxpop cannot store)."""

    array: np.ndarray | None = None
    refused: str | None = None

    def __setstate__(self, state: Any) -> None:
        if type(state) is not tuple or len(state) != 5 or state[0] != 1:
            raise SeedStateError(f"a numpy array with the state {_short(state)}")
        _, shape, dtype, fortran, raw = state
        if type(fortran) is not bool:
            raise SeedStateError(f"a numpy array with the state {_short(state)}")
        try:
            self.array = _array(raw, dtype, shape, "F" if fortran else "C")
        except _Unstorable as e:
            self.refused = str(e)


def _array_of(value: _Array, where: str) -> np.ndarray:
    """The numpy array a reader's ``_Array`` holds, or the SeedStateError saying where
    it sits and why it has none."""
    if value.refused is not None:
        raise SeedStateError(f"{where} is {value.refused}")
    if value.array is None:
        raise SeedStateError(f"{where} is a numpy array without its data")
    return value.array


def _array(raw: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    dtype = _numeric_dtype(dtype)
    if (
        type(shape) is not tuple
        or any(type(n) is not int or n < 0 for n in shape)
        or order not in ("C", "F")
    ):
        raise SeedStateError(f"a numpy array of shape {_short(shape)}, order {_short(order)}")
    if type(raw) not in (bytes, bytearray) or len(raw) != math.prod(shape) * dtype.itemsize:
        raise SeedStateError(f"a numpy array of shape {shape} whose data is not that size")
    if not raw:
        return np.zeros(shape, dtype)
    return np.frombuffer(raw, dtype).reshape(shape, order=order).copy()


class _NdarrayName:
    """``numpy.ndarray`` as a pickle names it: only :func:`_reconstruct` takes it."""


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _Array:
    if subtype is not _NdarrayName or shape != (0,) or typecode != b"b":
        raise SeedStateError(
            f"an array made as {_short((subtype, shape, typecode))} (not how numpy pickles one)"
        )
    return _Array()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    made = _Array()
    try:
        made.array = _array(buffer, dtype, shape, order)
    except _Unstorable as e:
        made.refused = str(e)
    return made


def _scalar(dtype: Any, data: Any) -> Any:
    try:
        dtype = _numeric_dtype(dtype)
    except _Unstorable as e:
        return _Refused(str(e))
    if type(data) is not bytes or len(data) != dtype.itemsize:
        raise SeedStateError(f"a numpy scalar built from {_short(data)}")
    return _SCALAR(dtype, data)


_SCALAR = np.float64(0).__reduce__()[0]  # numpy 1 and 2 name its module differently

#: What a pickled ``jax.Array`` records about its abstract value, besides its numpy data.
_JAX_AVAL_FIELDS = frozenset({"weak_type", "named_shape"})


def _jax_array(fun: Any, args: Any, array_state: Any, aval_state: Any) -> _Array:
    """A pickled ``jax.Array`` (what a jitted loss gives ``set_eval``, and the seed's own
    example passes it): jax pickles its numpy value (``fun(*args)`` given
    ``array_state``) and its weak type; read as that numpy array."""
    if (
        fun is not _reconstruct
        or type(args) is not tuple
        or len(args) != 3
        or type(aval_state) is not dict
        or not set(aval_state) <= _JAX_AVAL_FIELDS
    ):
        raise SeedStateError(
            f"a jax array made as {_short((fun, args, aval_state))} (not how jax pickles one)"
        )
    made = _reconstruct(*args)
    made.__setstate__(array_state)
    return made


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    (SEED_MODULE, "Checkpoint"): _SeedCheckpoint,
    (SEED_MODULE, "ActiveWorker"): _SeedActiveWorker,
    (SEED_MODULE, "IntKeyDict"): _SeedIntKeyDict,
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _Dtype,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    ("jax._src.array", "_reconstruct_array"): _jax_array,
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
                f"{self._where} refers to {module[:100]}.{name[:100]}, which a seed "
                "population state does not hold; refusing it (nothing in the file was "
                "run). Only the seed's Checkpoint, ActiveWorker and IntKeyDict, plain "
                "containers, numbers, strings and numeric numpy and jax arrays are read"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise SeedStateError(f"{self._where} refers to an external object ({_short(pid)})")


# -- what the pickle would cost, before anything is built -------------------------------
#: A file may expand to at most this many values, plus _BUDGET_PER_BYTE per byte of it
#: (a str, bytes or array counts one per 64 bytes): shared references let a few bytes
#: of pickle stand for a structure of any size, which unpickling (a dict hashes its
#: keys), migrating and storing would each build out in full. The seed's own files
#: expand by far less (one checkpoint's meta_params shared by its generation's).
_MIN_BUDGET = 100_000
_BUDGET_PER_BYTE = 16


class _Value:
    """One value on the stack of :func:`_check_opcodes`: how much it expands to, how it
    was made: "data" (a container), "leaf" (a number, str or bytes), "global" (a class
    or function the file names), "made" (a call's result: the only thing a BUILD may
    give a state), and whether it is ``sealed``: referred to (put in a container, passed
    to a call, fetched from the memo), so its size has been counted where it is used and
    it may no longer grow."""

    __slots__ = ("how", "sealed", "size")

    def __init__(self, size: int, how: str = "data"):
        self.size, self.how, self.sealed = size, how, False


_LEAF = _Value(1, "leaf")  # every small leaf (never grown: filling a leaf is refused)

# What each opcode does to the stack, for _check_opcodes; the most frequent first.
_OPCODE_KINDS: dict[str, str] = {
    **dict.fromkeys(("BINPUT", "LONG_BINPUT", "PUT"), "put"),
    "MEMOIZE": "memoize",
    **dict.fromkeys(("BINGET", "LONG_BINGET", "GET"), "get"),
    **dict.fromkeys(("APPEND", "SETITEM"), "fill"),
    **dict.fromkeys(("APPENDS", "SETITEMS", "ADDITEMS"), "fill_mark"),
    "MARK": "mark",
    **dict.fromkeys(("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"), "empty"),
    **dict.fromkeys(("TUPLE1", "TUPLE2", "TUPLE3"), "tuple"),
    **dict.fromkeys(("LIST", "TUPLE", "DICT", "FROZENSET"), "collect"),
    **dict.fromkeys(("NONE", "NEWTRUE", "NEWFALSE"), "leaf"),
    **dict.fromkeys(("GLOBAL", "STACK_GLOBAL"), "global"),
    # (a name from copyreg's extension registry: the C unpickler may take it from its
    # process-wide cache without asking find_class; the seed's files never hold one)
    **dict.fromkeys(("EXT1", "EXT2", "EXT4"), "extension"),
    **dict.fromkeys(("REDUCE", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ"), "call"),
    "BUILD": "build",
    "POP": "pop",
    "POP_MARK": "pop_mark",
    "DUP": "dup",
    **dict.fromkeys(("PROTO", "FRAME", "READONLY_BUFFER"), "skip"),
    "STOP": "stop",
}


def _check_opcodes(data: bytes, where: str) -> None:
    """Walks the pickle's opcodes, building nothing, and refuses it if it would expand
    past the budget, hash keys past the budget, give a state to (BUILD) or fill anything
    but an object it made, fill a container it already referred to (its size was counted
    where it was used: filling it later would expand every use uncounted), put a value
    at a memo slot past the next one (the C unpickler allocates every slot up to it),
    name a class through copyreg's extension registry, or call something it did not
    name. Python's pickler writes none of these for acyclic data, which the seed's is.

    Raises:
      SeedStateError: naming what was refused.
    """
    budget = _MIN_BUDGET + _BUDGET_PER_BYTE * len(data)
    stack: list[_Value] = []
    marks: list[list[_Value]] = []  # the stacks below each MARK
    memo: dict[Any, _Value] = {}
    hashed = 0  # what dicts and sets hash: their keys' sizes

    def refuse(what: str) -> SeedStateError:
        return SeedStateError(f"{where} {what}; refusing it (nothing in the file was run)")

    def too_big() -> SeedStateError:
        return refuse(
            f"expands to more than {budget} values through shared references (at most "
            f"{_BUDGET_PER_BYTE} per byte of the file are read): a hostile or damaged file"
        )

    def fill(target: _Value, size: int, keys: int = 0) -> None:
        nonlocal hashed
        if target.how in ("global", "leaf"):
            raise refuse("changes a value that is not a container or an object it made")
        if target.sealed:
            raise refuse(
                "fills a container after referring to it (a cycle, or values added to "
                "one already counted where it is used)"
            )
        target.size += size
        hashed += keys
        if target.size > budget or hashed > budget:
            raise too_big()

    def sizes(values: list[_Value]) -> int:
        """What ``values`` expand to, now that they are used (sealed)."""
        total = 0
        for value in values:
            value.sealed = True
            total += value.size
        return total

    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            kind = _OPCODE_KINDS.get(name)
            if kind == "put" or kind == "memoize":
                if kind == "put" and cast(int, arg) > len(memo):
                    raise refuse(f"puts a value at memo slot {arg} of {len(memo)} made")
                memo[len(memo) if kind == "memoize" else arg] = stack[-1]
            elif kind == "get":
                value = memo[arg]
                value.sealed = True
                stack.append(value)
            elif kind is None and opcode.arg is not None and not opcode.stack_before:
                if name == "PERSID":
                    raise refuse("refers to an external object (PERSID)")
                if type(arg) is int and not -(2**63) <= arg < 2**64:
                    raise refuse(f"holds {_short(arg)}, which jaxpop cannot store")
                if isinstance(arg, (str, bytes, bytearray)) and len(arg) >= 64:
                    stack.append(_Value(1 + len(arg) // 64, "leaf"))
                else:
                    stack.append(_LEAF)
            elif kind == "fill":
                size = sizes([stack.pop()])
                if name == "APPEND":
                    fill(stack[-1], size)
                else:
                    key = sizes([stack.pop()])
                    fill(stack[-1], size + key, key)
            elif kind == "fill_mark":
                items, stack = stack, marks.pop()
                keys = items if name == "ADDITEMS" else items[0::2] if name == "SETITEMS" else []
                fill(stack[-1], sizes(items), sizes(keys))
            elif kind == "mark":
                marks.append(stack)
                stack = []
            elif kind == "empty":
                stack.append(_Value(1))
            elif kind == "tuple":
                stack.append(_Value(1))
                fill(stack[-1], sizes([stack.pop(-2) for _ in range(int(name[-1]))]))
            elif kind == "collect":
                items, stack = stack, marks.pop()
                stack.append(_Value(1))
                keys = items[0::2] if name == "DICT" else items if name == "FROZENSET" else []
                fill(stack[-1], sizes(items), sizes(keys))
            elif kind == "leaf":
                stack.append(_LEAF)
            elif kind == "extension":
                raise refuse(f"names a class by an extension code ({name} {arg})")
            elif kind == "global":
                if name == "STACK_GLOBAL":
                    del stack[-2:]
                stack.append(_Value(1, "global"))
            elif kind == "call":
                if name in ("INST", "OBJ"):
                    args, stack = stack, marks.pop()
                    called = args.pop(0) if name == "OBJ" else _Value(1, "global")
                else:
                    args = [stack.pop() for _ in range(2 if name == "NEWOBJ_EX" else 1)]
                    called = stack.pop()
                if called.how != "global":
                    raise refuse("calls something that is not a class or function it names")
                stack.append(_Value(1, "made"))
                fill(stack[-1], sizes(args))
            elif kind == "build":
                state = stack.pop()
                if stack[-1].how != "made":
                    raise refuse("gives a state to something it did not make (BUILD)")
                fill(stack[-1], sizes([state]))
            elif kind == "pop":
                if stack:
                    stack.pop()
                else:
                    stack = marks.pop()
            elif kind == "pop_mark":
                stack = marks.pop()
            elif kind == "dup":
                stack[-1].sealed = True
                stack.append(stack[-1])
            elif kind == "stop":
                break
            elif kind != "skip":
                raise refuse(f"uses the opcode {name}, which this reader does not take")
    except SeedStateError:
        raise
    except (IndexError, KeyError):  # an empty stack, no mark, a memo entry never made
        raise refuse("is damaged: its opcodes do not fit together") from None
    except Exception as e:  # ValueError from a cut or damaged opcode stream
        raise SeedStateError(
            f"{where} is truncated or damaged: it cannot be read as the seed's pickle "
            f"({type(e).__name__}: {_short(str(e))})"
        ) from None


def _unpickle(data: bytes, where: str) -> Any:
    _check_opcodes(data, where)
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
            f"({type(e).__name__}: {_short(str(e))})"
        ) from None
    if stream.tell() != len(data):
        raise SeedStateError(
            f"{where} is damaged: {len(data) - stream.tell()} bytes follow the pickle's end"
        )
    return value


# -- from the seed's objects to jaxpop's records ---------------------------------------
def _plain(value: Any, where: str, memo: dict[int, Any], depth: int = 0) -> Any:
    """``value`` as jaxpop plain data (seed records become jaxpop's), or SeedStateError.

    ``memo`` maps the id of each container already converted to its conversion, so a
    value the file refers to many times is converted once (and shared, as in the file).
    """
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    if id(value) in memo:
        return memo[id(value)]
    if depth > 100:
        raise SeedStateError(f"{where} is nested more than 100 levels deep")
    if type(value) is _Array:
        plain: Any = _array_of(value, where)
    elif type(value) is _Refused:
        raise SeedStateError(f"{where} is {value.why}")
    elif isinstance(value, np.generic) and value.dtype.kind in "biufc":
        plain = value
    elif type(value) in (list, tuple):
        items = [_plain(v, f"{where}[{i}]", memo, depth + 1) for i, v in enumerate(value)]
        plain = items if type(value) is list else tuple(items)
    elif type(value) in (dict, _SeedIntKeyDict):
        plain = {}
        for k, v in value.items():
            at = f"{where}[{_short(k)}]"
            plain[_plain(k, at, memo, depth + 1)] = _plain(v, at, memo, depth + 1)
    elif type(value) is _SeedCheckpoint:
        plain = _checkpoint(value, where, memo, depth + 1)
    elif type(value) is _SeedActiveWorker:
        plain = _worker(value, where, memo, depth + 1)
    else:
        raise SeedStateError(
            f"{where} is a {type(value).__name__} {_short(value)}, which jaxpop cannot store "
            "(plain containers, numbers, strings and numeric numpy arrays only)"
        )
    memo[id(value)] = plain
    return plain


def _step(value: Any, where: str) -> int:
    """A step as an int in ``[0, 2**63)``, as a controller takes it from a worker (a
    whole float such as ``5.0`` too: the seed kept what its worker sent); one it would
    have refused live (a bool, ``5.5``, a step outside the range: a worker there could
    never report again) is refused."""
    if type(value) is _Refused:
        raise SeedStateError(f"{where} is {value.why}")
    if type(value) is _Array:  # (a 0-d array: taken as a controller takes it)
        value = _array_of(value, where)
    try:
        return core.check_step(value)
    except TypeError:
        raise SeedStateError(
            f"{where} is not an int: {type(value).__name__} {_short(value)}"
        ) from None
    except ValueError as e:
        raise SeedStateError(f"{where}: {e}") from None


def _checkpoint(
    record: _SeedCheckpoint, where: str, memo: dict[int, Any], depth: int = 0
) -> Checkpoint:
    value = record.field("value", where)
    if type(value) is _Array:  # a numpy array (0-d or one element), as set_eval takes
        value = _array_of(value, f"{where}.value")
    elif type(value) is _Refused:
        raise SeedStateError(f"{where}.value is {value.why}")
    if value is not None:
        try:
            value = core.as_value(value)
        except TypeError as e:
            raise SeedStateError(f"{where}.value: {e}") from None
    parent = record.field("parent", where)
    if parent is not None:
        if type(parent) not in (tuple, list) or len(parent) != 2:
            raise SeedStateError(f"{where}.parent is not (generation_id, step): {_short(parent)}")
        if type(parent[0]) is not str:
            raise SeedStateError(f"{where}.parent[0] is not a generation id: {_short(parent[0])}")
        parent = (parent[0], _step(parent[1], f"{where}.parent[1]"))
    moment = record.field("time", where)
    if isinstance(moment, bool) or not isinstance(moment, numbers.Real):
        raise SeedStateError(f"{where}.time is not a number: {_short(moment)}")
    if not math.isfinite(moment):  # (a clock gives none: a damaged file; report failed)
        raise SeedStateError(f"{where}.time is not a finite number of seconds: {moment!r}")
    return Checkpoint(
        params=_plain(record.field("params", where), f"{where}.params", memo, depth),
        meta_params=_plain(record.field("meta_params", where), f"{where}.meta_params", memo, depth),
        generation_id=record.field("generation_id", where),
        value=value,
        parent=parent,
        step=_step(record.field("step", where), f"{where}.step"),
        time=float(moment),
    )


def _worker(
    record: _SeedActiveWorker, where: str, memo: dict[int, Any], depth: int = 0
) -> ActiveWorker:
    return ActiveWorker(
        params=_plain(record.field("params", where), f"{where}.params", memo, depth),
        meta_params=_plain(record.field("meta_params", where), f"{where}.meta_params", memo, depth),
        generation_id=record.field("generation_id", where),
        step=_step(record.field("step", where), f"{where}.step"),
    )


def _history(cache: Any, memo: dict[int, Any], where: str) -> list[Checkpoint]:
    """The seed's cache as checkpoints in creation order, with jaxpop's parent links.

    The seed gives a checkpoint it records for a running generation itself as parent;
    jaxpop links it to the generation's previous checkpoint (its first, to where it was
    copied from, as in the seed). A parent must come earlier (an earlier step of its
    generation, or an earlier generation), so lineages never loop. Every checkpoint of a
    generation takes its first one's hyperparameters (a warning names the steps that
    recorded others).
    """
    if type(cache) is not dict:
        raise SeedStateError(f"the cache is a {type(cache).__name__}, not a dict of generations")
    generations: list[tuple[str, list[tuple[int, Any]]]] = []
    for gen_id, steps in cache.items():
        if type(gen_id) is not str or type(steps) not in (dict, _SeedIntKeyDict) or not steps:
            raise SeedStateError(f"cache[{_short(gen_id)}] is not a generation's checkpoints")
        keyed = [
            (_step(s, f"cache[{_short(gen_id)}] key {_short(s)}"), c) for s, c in steps.items()
        ]
        generations.append((gen_id, sorted(keyed, key=lambda sc: sc[0])))
    order = {gen_id: i for i, (gen_id, _) in enumerate(generations)}
    known = {(gen_id, step) for gen_id, steps in generations for step, _ in steps}
    checkpoints = []
    for gen_id, steps in generations:
        previous = first = None
        retold: list[int] = []  # steps recorded with other hyperparameters than the first's
        for step, record in steps:
            at = f"cache[{_short(gen_id)}][{step}]"
            if type(record) is not _SeedCheckpoint:
                raise SeedStateError(f"{at} is a {type(record).__name__}, not a seed Checkpoint")
            c = _checkpoint(record, at, memo)
            if c.ref != (gen_id, step):
                raise SeedStateError(f"{at} holds the checkpoint of {_short(c.ref)}")
            if first is None:
                first = c
            elif not core.same_hparams(c.meta_params, first.meta_params):
                # the seed's ask recorded the hyperparameters the worker passed (None in
                # its quick start) at a step of an older generation; its set_eval, and
                # jaxpop, take the generation's: its first checkpoint's
                c = c.replace(meta_params=first.meta_params)
                retold.append(step)
            parent = c.parent
            if parent == c.ref:  # the seed's "continues itself"
                parent = None if previous is None else previous.ref
            elif parent is not None:
                if parent not in known:
                    raise SeedStateError(f"{at}.parent {_short(parent)} is not in the history")
                source = order[parent[0]]
                if source > order[gen_id] or (source == order[gen_id] and parent[1] >= step):
                    raise SeedStateError(f"{at}.parent {_short(parent)} does not come before it")
            checkpoints.append(c.replace(parent=parent))
            previous = c
        if retold:
            assert first is not None  # (retold holds steps after the first)
            warnings.warn(
                f"{where}: cache[{_short(gen_id)}] records other hyperparameters at steps "
                f"{_short(retold)} than at its first, {_short(first.meta_params)} (the "
                "seed's ask recorded those the worker passed): they are migrated with the "
                "generation's own",
                stacklevel=4,
            )
    return checkpoints


def _marker_state(seed_state: Any, where: str, memo: dict[int, Any]) -> dict[str, Any]:
    """The marker a migrated run holds as mutator state, with the seed's state if jaxpop
    can store it. If not, the run is still migrated (deliberately: jaxpop's mutators do
    not use the seed's state, and the rest of the run is intact), with a warning, and a
    seed-style ``Mutate`` resumes from its ``init()``."""
    try:
        plain = _plain(seed_state, where, memo)
        encoding.encode(plain)
        representable = True
    except (SeedStateError, TypeError, ValueError) as e:
        warnings.warn(
            f"{e}: the seed's mutator state is not kept; the run is migrated without it, "
            "and the mutator that resumes it starts from its init() state",
            stacklevel=4,
        )
        plain, representable = None, False
    return {_MARKER: 1, "seed_mutator_state": plain, "representable": representable}


def _own_generations(state: PopulationState, where: str) -> PopulationState:
    """``state`` with each worker jaxpop would not take on its generation moved to a new
    generation of its own, started at its step with its hyperparameters, with a warning
    naming it: a worker whose hyperparameters are not its generation's (a seed
    ``Mutate`` could send a worker other ones; the seed kept recording its
    generation's), one at a step before its generation's first checkpoint (its reports
    would be dropped as stale), and all but one of the workers on one generation (the
    seed recorded their reports there, each replacing the other's). That one, the
    keeper, is the one whose params the checkpoint at its step holds (the report the
    seed kept), else the first. jaxpop records what a worker trains with, never changes
    a generation's hyperparameters and records one worker's reports per generation."""
    history, workers = state.history, list(state.workers)

    def fits(worker: ActiveWorker) -> bool:
        gen = worker.generation_id
        return worker.step >= history.first(gen).step and core.same_hparams(
            worker.meta_params, history.meta_params(gen)
        )

    def reported(worker: ActiveWorker) -> bool:  # (the seed kept its report at its step)
        at = history.get_checkpoint(worker.generation_id, worker.step)
        return at is not None and _same_handle(at.params, worker.params)

    keepers: dict[str, int] = {}  # generation -> the worker that keeps it
    for i, worker in enumerate(workers):
        gen = worker.generation_id
        if fits(worker) and (
            gen not in keepers or (reported(worker) and not reported(workers[keepers[gen]]))
        ):
            keepers[gen] = i
    for i, worker in enumerate(workers):
        gen, step = worker.generation_id, worker.step
        if keepers.get(gen) == i:
            continue
        # the newest checkpoint of its lineage before its step, or at it holding its
        # params (a start at its parent's step stands for the parent's params)
        at = history.get_checkpoint(gen, step) or history.previous(gen, step)
        parent = next(
            (
                c
                for c in history.back_from(at or history.first(gen))
                if c.step < step or (c.step == step and _same_handle(c.params, worker.params))
            ),
            None,
        )
        index = i
        while (new := new_generation_id(state.key, index)) in history:
            index += len(workers)  # (ids of the migration's own, never the run's events')
        start = Checkpoint(
            worker.params,
            worker.meta_params,
            new,
            None,
            None if parent is None else parent.ref,
            step,
            history.first(gen).time if parent is None else parent.time,
        )
        recorded, first = history.meta_params(gen), history.first(gen).step
        history = history.add(start)
        workers[i] = worker.replace(generation_id=new)
        if not core.same_hparams(worker.meta_params, recorded):
            why = (
                f"holds the hyperparameters {_short(worker.meta_params)}, not those of its "
                f"generation {_short(gen)} ({_short(recorded)}), which the seed kept recording"
            )
        elif step < first:
            why = (
                f"is at step {step} of generation {_short(gen)}, before its first checkpoint "
                f"(step {first}), where its reports would be dropped as stale"
            )
        else:
            keeper = keepers[gen]
            why = (
                f"is on generation {_short(gen)}, which active_workers[{keeper}] holds too "
                "(the seed recorded both workers' reports there, each replacing the other's"
                + ("; the one at its step is the other's)" if reported(workers[keeper]) else ")")
            )
        warnings.warn(
            f"{where}: active_workers[{i}] {why}: it goes on in a new generation {new!r}, "
            f"started at its step {step} with its own hyperparameters",
            stacklevel=4,
        )
    return state._with(history=history, workers=tuple(workers))


def _same_handle(a: Any, b: Any) -> bool:
    """Whether two params are the same stored ones: the same object, or equal names of
    them (paths, keys)."""
    return a is b or (isinstance(a, (str, bytes)) and type(a) is type(b) and a == b)


def _to_state(raw: Any, where: str, key: np.ndarray) -> PopulationState:
    try:
        if type(raw) is not tuple or len(raw) != 3:
            raise SeedStateError(
                "it does not hold the seed's (active_workers, cache, mutator_state) tuple "
                f"but a {type(raw).__name__}"
            )
        workers_raw, cache, mutator_state = raw
        if type(workers_raw) not in (list, tuple) or not workers_raw:
            raise SeedStateError("active_workers is not a non-empty list of workers")
        workers: list[ActiveWorker] = []
        memo: dict[int, Any] = {}
        for i, w in enumerate(workers_raw):
            if type(w) is not _SeedActiveWorker:
                raise SeedStateError(f"active_workers[{i}] is a {type(w).__name__}")
            workers.append(_worker(w, f"active_workers[{i}]", memo))
        plain = {
            "workers": tuple(workers),
            "mutator_state": _marker_state(mutator_state, f"{where}: the mutator state", memo),
            "key": key,
            "num_events": 0,
            "checkpoints": tuple(_history(cache, memo, where)),
            "mode": "min",
        }
        state = _own_generations(state_from_plain(plain), where)  # every check a stored
        encoding.encode(state_to_plain(state))  # state passes; what the snapshot will hold
        # (a live controller refuses these where they enter: migrated, the run failed at
        # its first exploit, on every retry)
        for i, worker in enumerate(state.workers):
            check_sortable_keys(worker.meta_params, f"active_workers[{i}].meta_params")
        for checkpoint in state.history.checkpoints():
            at = f"cache[{_short(checkpoint.generation_id)}][{checkpoint.step}].meta_params"
            check_sortable_keys(checkpoint.meta_params, at)
        for generation_id in state.history:
            if is_kept(generation_id):  # (the seed's ids are uuid4 strings)
                raise SeedStateError(
                    f"cache[{_short(generation_id)}]: a generation id holding {KEPT_MARK!r} "
                    "names a kept generation in jaxpop (jaxpop.history.is_kept), which no "
                    "worker holds and no exploit counts"
                )
    except (SeedStateError, TypeError, ValueError) as e:
        raise SeedStateError(f"{where} cannot be migrated: {e}") from None
    return state


def _source(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return os.path.join(path, SEED_STATE_FILE) if os.path.isdir(path) else path


def load_seed_state(path: str | os.PathLike, *, seed: int | None = None) -> PopulationState:
    """Reads the seed's ``population.state`` as a jaxpop state, running nothing from it.

    Args:
      path: the seed's ``log_dir``, or its ``population.state`` file.
      seed: seeds the root PRNG key of the jaxpop run (the seed's state has none);
        ``None`` (default): a random one (see :class:`jaxpop.PopulationController`).

    The records become jaxpop's ``Checkpoint`` and ``ActiveWorker``: values as floats,
    steps as ints, and a checkpoint the seed gave itself as parent gets the previous
    checkpoint of its generation instead. The mutator state is a marker that a
    controller replaces when it resumes the run (see :func:`adopt_migrated_state`).
    Writes nothing.

    Raises:
      FileNotFoundError: there is no such file.
      SeedStateError: the file is no regular file (a FIFO, a device, a link to nothing),
        is truncated or damaged, refers to anything but the
        seed's records and plain data (named in the message; none of it is imported or
        run), would expand past :data:`_MIN_BUDGET` plus :data:`_BUDGET_PER_BYTE` values
        per byte of it (shared references), gives a state to anything it did not make,
        or holds a value jaxpop cannot store in a record (one in the mutator state is
        dropped with a warning instead: see :func:`_marker_state`).
    """
    key = root_key(seed)  # (a bad seed is the caller's, not the file's)
    source = _source(path)
    data = _read(source)
    return _to_state(_unpickle(data, source), source, key)


def _read(source: str) -> bytes:
    """The bytes of the seed's file: a regular one (a FIFO there hung the reader, and
    ``/dev/zero`` filled its memory)."""
    try:
        fd = open_regular(source, follow=True)
    except CorruptLogError as e:  # ("<source> cannot be read as a jaxpop file: <why>")
        why = str(e).removeprefix(f"{source} cannot be read as a jaxpop file: ")
        raise SeedStateError(f"{source} cannot be migrated: {why}") from None
    with open(fd, "rb") as f:
        return f.read()


def migrate_seed_state(
    src_dir: str | os.PathLike,
    dst_log_dir: str | os.PathLike | None = None,
    *,
    seed: int | None = None,
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
      seed: seeds the jaxpop run's root PRNG key (``None``: a random one).

    Raises:
      FileNotFoundError: there is no ``population.state``.
      SeedStateError: it is no regular file, or cannot be read safely or represented
        (see :func:`load_seed_state`); nothing is written.
      FileExistsError: ``dst_log_dir`` already holds a jaxpop run; nothing is written.
      storage.LogDirInUseError: a live controller holds ``dst_log_dir``.
    """
    key = root_key(seed)  # (a bad seed is the caller's, not the file's)
    source = _source(src_dir)
    data = _read(source)
    state = _to_state(_unpickle(data, source), source, key)
    if dst_log_dir is None:
        dst_log_dir = os.path.dirname(source) or "."
    dst = os.fspath(dst_log_dir)
    # every file by the path Store takes ("new/../out" is "out", made without "new")
    where = os.path.abspath(dst)
    _refuse_existing_run(where, source)
    made_dirs, lock = missing_dirs(where), os.path.join(where, "lock")
    made_lock = not os.path.exists(lock)
    store = Store(where, run={"population_size": state.population_size, "mutator": None})
    record = {
        "source": os.path.abspath(source),
        "sha256": hashlib.sha256(data).hexdigest(),
        "migrated_at": time.time(),
        "population_size": state.population_size,
        "checkpoints": state.history.num_checkpoints,
    }
    record_path = os.path.join(where, MIGRATION_FILE)
    writing = done = False
    try:
        if store.load() is not None:  # appeared since the look above
            _refuse_existing_run(where, source)
        # the record first: a migration killed once its snapshot is in place is complete,
        # with its record (a controller there names population.state as migrated); one
        # killed before leaves a record and no run, which a controller refuses (the seed
        # run is still to migrate) and the next migration replaces
        writing = True  # (from here the record may be in place: write_atomic can fail
        # after its rename, syncing the folder)
        write_atomic(record_path, json.dumps(record, indent=1).encode())
        store.start(state)
        done = True
    finally:
        if writing and not done:  # (store.start removes what it wrote when it fails)
            # this call's record, the lock held (one there before, a run appeared beside,
            # is another migration's: it stays)
            with contextlib.suppress(OSError):
                os.remove(record_path)
        store.close()
        if not done:  # leave no trace: the lock file the Store wrote, the folders it made
            if made_lock:
                with contextlib.suppress(OSError):
                    os.remove(lock)
            remove_dirs(made_dirs)
    logger.info("jaxpop: migrated %s to %s", source, dst)
    return SeedMigration(dst, source, state)


def holds_unmigrated_seed_run(log_dir: str | os.PathLike) -> bool:
    """Whether ``log_dir`` holds the seed's ``population.state`` and no jaxpop run
    (one migrated in place holds both)."""
    log_dir = os.fspath(log_dir)
    return os.path.isfile(os.path.join(log_dir, SEED_STATE_FILE)) and not _holds_jaxpop_run(log_dir)


def _holds_jaxpop_run(log_dir: str) -> bool:
    """Whether ``log_dir`` holds a jaxpop run's files (a snapshot or a journal segment)."""
    with contextlib.suppress(OSError):
        return any(
            (n.startswith("snapshot-") and n.endswith(".jpsnap"))
            or (n.startswith("journal-") and n.endswith(".jpjournal"))
            for n in os.listdir(log_dir)
        )
    return False


def _refuse_existing_run(dst: str, source: str) -> None:
    """Refuses a destination that holds a jaxpop run, or another seed run (a
    ``population.state`` other than ``source``: a controller there would resume the
    migrated run and ignore it)."""
    if _holds_jaxpop_run(dst):
        raise FileExistsError(
            f"{dst} already holds a jaxpop run (its snapshot or journal files): nothing "
            "was written. Migrate into another directory, or remove that run first"
        )
    other = os.path.join(dst, SEED_STATE_FILE)
    if os.path.lexists(other) and not _same_file(other, source):
        raise FileExistsError(
            f"{dst} holds another seed run ({other}), which a controller there would "
            "ignore once this one is migrated: nothing was written. Migrate into another "
            "directory"
        )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# -- what a controller does with a log_dir ---------------------------------------------
_MAX_RECORD_BYTES = 1 << 20  # far more than a seed-migration.json holds


def check_not_seed_run(log_dir: str | os.PathLike) -> None:
    """Refuses a ``log_dir`` that holds the seed's state but no jaxpop run (or the record
    of a migration into it, ``seed-migration.json``, and no run: one that did not finish).

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
        if os.path.lexists(os.path.join(log_dir, MIGRATION_FILE)) and not _holds_jaxpop_run(
            log_dir
        ):  # (written before the run: a migration into log_dir stopped between them)
            raise SeedStateError(
                f"{log_dir} holds {MIGRATION_FILE} and no jaxpop run: a migration into it "
                "did not finish; run it again (`jaxpop migrate-seed-state SRC --out "
                f"{log_dir}`), or remove {MIGRATION_FILE} to start a fresh run here"
            )
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
    try:  # (regular files only: a FIFO there hung the controller, /dev/zero filled memory)
        record = os.path.join(log_dir, MIGRATION_FILE)
        with open(open_regular(record, follow=True), "rb") as f:
            migrated = json.loads(f.read(_MAX_RECORD_BYTES))["sha256"]
        digest = hashlib.sha256()
        with open(open_regular(path, follow=True), "rb") as f:
            while chunk := f.read(1 << 20):  # (in pieces: it may be large)
                digest.update(chunk)
        current = digest.hexdigest()
    except (OSError, ValueError, KeyError, TypeError, RecursionError, CorruptLogError):
        migrated, current = None, "unknown"  # (RecursionError: a record nested deep)
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
        if isinstance(mutator, SeedMutator):
            logger.warning(
                "jaxpop: resuming a run migrated from learned_optimization whose mutator "
                "state jaxpop could not store (the migration said why); %s starts from "
                "its init() state",
                mutator.describe()["kind"],
            )
        elif marker.get("seed_mutator_state") is not None:
            logger.info(
                "jaxpop: resuming a run migrated from learned_optimization; the mutator "
                "starts from its initial state (the seed's mutator state is not used)"
            )
    return state._with(mutator_state=mutator_state)
