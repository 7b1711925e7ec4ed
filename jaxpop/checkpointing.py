"""An Orbax parameter store for population workers, with garbage collection by reachability.

A worker saves its parameters with :meth:`ParamStore.save`, which returns a *handle* (the
checkpoint's path, a ``str``) to pass to the controller as ``params``; a worker assigned
a handle loads it with :meth:`ParamStore.restore`; :meth:`ParamStore.collect_garbage`
deletes only checkpoints that nothing can load again. ``docs/checkpoints.md`` describes
the layout on disk, asynchronous saves, threads and processes, and the collection policy.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import concurrent.futures.thread  # (its exit hook first: _close_at_exit runs before it)
import contextlib
import dataclasses
import errno
import fnmatch
import functools
import heapq
import json
import logging
import math
import numbers
import operator
import os
import re
import secrets
import shutil
import stat
import struct
import sys
import threading
import time
import traceback
import weakref
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from jax.experimental import multihost_utils

from jaxpop import multihost
from jaxpop.core import PopulationState
from jaxpop.history import History
from jaxpop.storage.atomic import sync_dir, sync_tree
from jaxpop.storage.store import Durability, check_durability

if TYPE_CHECKING:
    from jaxpop.population import Controller

__all__ = [
    "FORMAT",
    "CheckpointSaveError",
    "DamagedCheckpointError",
    "GarbageReport",
    "MissingCheckpointError",
    "ParamStore",
    "UnknownCheckpointFormatError",
    "check_directory",
    "retained_handles",
]

#: The format written in each checkpoint's ``meta`` item. Version 2 adds checksums
#: (``crc32``) of the ``meta`` item and of each array leaf's data; version 1 checkpoints
#: (without them) are still read, unverified.
FORMAT = "jaxpop.param_store/2"
_FORMAT_1 = "jaxpop.param_store/1"

logger = logging.getLogger("jaxpop")

# Orbax's suffix for a checkpoint that is still being written (atomicity_types.TMP_DIR_SUFFIX).
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_TRASH_PREFIX = ".trash-"
_NAME_RE = re.compile(r"(?P<gen>[A-Za-z0-9-]*)_step(?P<step>-?[0-9]+)_(?P<nonce>[0-9a-f]{16})")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9-]")
_STATE, _META = "state", "meta"

# Orbax numbers save operations with process-global counters, so two saves running at
# once in one process (even through different Checkpointer objects) interfere: saves
# are serialized behind this lock.
_ORBAX_SAVE_LOCK = threading.Lock()

#: The stores not closed yet (weakly: one dropped unclosed is no one's to finish).
_OPEN_STORES: weakref.WeakSet = weakref.WeakSet()


def _close_at_exit() -> None:
    """Finishes the pending saves of the stores a program left open as the interpreter
    exits: run before ``concurrent.futures`` stops taking work (exit hooks of
    ``threading`` run last registered first), which Orbax's own saving needs; without
    it such a save failed, the interpreter hung on it, and its checkpoint was lost."""
    for store in list(_OPEN_STORES):
        if store._forked():
            continue  # (a forked child's copy: its saves are the parent's to finish)
        store._closed_at_exit = True  # (a save after this says so)
        try:
            store.close()
        except Exception as error:  # (reported; the others still close)
            print(f"jaxpop: {store!r} could not finish at exit: {error}", file=sys.stderr)


_register_at_exit = getattr(threading, "_register_atexit", None)  # (CPython 3.9+)
if _register_at_exit is not None:
    with contextlib.suppress(RuntimeError):  # (imported by a thread left after exit)
        _register_at_exit(_close_at_exit)
#: Whether this process wrote or read a checkpoint (TensorStore's threads started), and
#: whether it was forked from one that had: TensorStore aborts the process (SIGABRT) at
#: its first use in such a child, so such a child is refused a save or restore.
_TENSORSTORE_USED = False
_FORKED_AFTER_USE = False


def _after_fork_in_child() -> None:
    """A forked child finishes none of its parent's saves: they leave its bookkeeping
    (their futures would never settle here, and a restore of one would wait forever),
    and the save lock, which a parent's save may have held, is a new one."""
    global _REGISTRY, _ORBAX_SAVE_LOCK, _FORKED_AFTER_USE
    _OPEN_STORES.clear()
    _REGISTRY = _Registry()
    _ORBAX_SAVE_LOCK = threading.Lock()
    _FORKED_AFTER_USE = _FORKED_AFTER_USE or _TENSORSTORE_USED


def _mark_tensorstore_used() -> None:
    """Called right before Orbax reads or writes: a child forked from here on is refused."""
    global _TENSORSTORE_USED
    _TENSORSTORE_USED = True


def _refuse_if_forked_after_use() -> None:
    """Refuses a save or restore in a child forked after its parent used TensorStore
    (TensorStore would abort the process)."""
    if _FORKED_AFTER_USE:
        raise RuntimeError(
            "this process was forked from one that had saved or restored checkpoints: "
            "TensorStore (which Orbax writes and reads with) aborts in such a process. "
            "Start processes that save or restore with multiprocessing's 'spawn' or "
            "'forkserver' start method (or fork before the first save or restore)"
        )


class MissingCheckpointError(FileNotFoundError):
    """A handle names no complete checkpoint; ``.handle`` is the handle."""

    def __init__(self, handle: str, reason: str):
        self.message = f"no checkpoint at handle {handle!r}: {reason}"
        super().__init__(errno.ENOENT, self.message, handle)
        self.handle = handle

    def __str__(self) -> str:
        return self.message


class DamagedCheckpointError(ValueError):
    """A checkpoint on disk is damaged: a part of it lost, unreadable, or not what was
    saved (its message says "is damaged"). A ``ValueError``, as a target that does not
    fit is: catch this one to tell the two apart."""


class UnknownCheckpointFormatError(ValueError):
    """A checkpoint this jaxpop cannot read, though it is whole: a newer ParamStore
    format, or leaves of a dtype this jax does not know (its ``meta`` item matches its
    checksum). Not damage: keep it, and read it with the version that wrote it."""


class CheckpointSaveError(RuntimeError):
    """A background save failed; ``.handles`` names the checkpoints that were not saved."""

    def __init__(self, failures: Mapping[str, BaseException]):
        self.handles = tuple(failures)
        details = "; ".join(f"{h!r}: {type(e).__name__}: {e}" for h, e in failures.items())
        super().__init__(f"{len(failures)} checkpoint save(s) failed: {details}")


@dataclasses.dataclass(frozen=True)
class GarbageReport:
    """What one :meth:`ParamStore.collect_garbage` did.

    Attributes:
      deleted: the handles whose checkpoints were deleted.
      retained: checkpoints kept because the policy retains them.
      unreported: checkpoints kept because no history has recorded them (yet).
      busy: checkpoints kept because a save or restore of them was in progress.
    """

    deleted: tuple[str, ...]
    retained: int
    unreported: int
    busy: int


class _Registry:
    """Process-wide bookkeeping shared by every store: saves in flight, restores, deletes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.saving: dict[str, concurrent.futures.Future] = {}  # handle -> its save
        # handle -> why its save failed, as text: the exception's traceback holds the
        # frames of the save, the host copy of its arrays with them (kept for good)
        self.failed: dict[str, str] = {}
        self.reading: Counter[str] = Counter()  # handle -> restores in progress
        self.deleting: set[str] = set()


_REGISTRY = _Registry()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _registry_key(path: str, create: bool = False) -> str:
    """The name the registry knows a checkpoint by: the device and inode of its directory
    and its name, symlinks resolved (the checkpoint's own name too), so two stores on one
    directory (one through a symlink or a bind mount) see each other's saves, restores
    and deletes; the resolved path where the directory does not exist. ``create``: a
    save's, which first creates a directory removed since its store was opened, so its
    key is the one a restore finds (a directory it cannot create fails the write, at
    ``wait()``). Handles themselves keep the path their store was given (a link may
    resolve differently on other hosts)."""
    if create:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    real = os.path.realpath(path)
    try:
        info = os.stat(os.path.dirname(real))
    except OSError:
        return real
    return f"{info.st_dev}:{info.st_ino}/{os.path.basename(real)}"


# -- leaves --------------------------------------------------------------------------
def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def _encode_value(leaf: bool | int | float | str) -> dict[str, Any]:
    """A Python scalar leaf as JSON, by its base type (an ``IntEnum`` is stored, and
    restored, as its int)."""
    if isinstance(leaf, bool):
        return {"kind": "value", "type": "bool", "value": bool(leaf)}
    if isinstance(leaf, int):
        return {"kind": "value", "type": "int", "value": int(leaf)}
    if isinstance(leaf, float):  # hex keeps every float exact, inf included
        spec = {"kind": "value", "type": "float", "value": float(leaf).hex()}
        if leaf != leaf:  # hex writes every NaN "nan": its sign and payload beside it
            spec["bits"] = f"{_BITS.unpack(_FLOAT.pack(leaf))[0]:016x}"  # (earlier jaxpop: "nan")
        return spec
    return {"kind": "value", "type": "str", "value": str.__str__(leaf)}


_FLOAT, _BITS = struct.Struct("<d"), struct.Struct("<Q")


def _decode_value(spec: Mapping[str, Any]) -> Any:
    if spec["type"] == "float":
        if isinstance(spec["value"], str) and spec["value"].startswith("nan:"):
            # (a NaN as two development commits wrote it: its bits after "nan:")
            spec = {**spec, "value": "nan", "bits": spec["value"][4:]}
        value = float.fromhex(spec["value"])
        if value != value and "bits" in spec:
            bits = int(spec["bits"], 16)
            if not 0 <= bits < 2**64:
                raise ValueError(f"the bits of a NaN, {spec['bits']!r:.40}, are not 64 bits")
            value = _FLOAT.unpack(_BITS.pack(bits))[0]
            if value == value:
                raise ValueError(f"the bits {spec['bits']!r:.40} are not a NaN's")
        return value
    return {"bool": bool, "int": int, "str": str}[spec["type"]](spec["value"])


def _crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's data: its elements' bytes in C order, little-endian (the
    order Orbax writes), so a copy of any layout or byte order has the same one."""
    data = np.ascontiguousarray(array).reshape(-1)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return zlib.crc32(data.view(np.uint8).data)


def _meta_crc32(meta: Mapping[str, Any]) -> int:
    """CRC-32 of a ``meta`` item's JSON without its own ``crc32`` (canonical: sorted
    keys, so it is the same after a JSON round trip)."""
    body = {k: v for k, v in meta.items() if k != "crc32"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _with_checksums(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray | jax.Array]
) -> dict[str, Any]:
    """``meta`` with the ``crc32`` of each array leaf held whole here, and its own.
    (An array spread over several processes has none: no process holds its data.)"""
    leaves = []
    for spec in meta["leaves"]:
        array = arrays.get(spec.get("key")) if spec["kind"] == "array" else None
        leaves.append({**spec, "crc32": _crc32(array)} if isinstance(array, np.ndarray) else spec)
    out = {**meta, "leaves": leaves}
    out["crc32"] = _meta_crc32(out)
    return out


@functools.cache
def _storable(dtype: np.dtype) -> bool:
    """Whether TensorStore writes arrays of ``dtype`` (it refuses uint4, float6 and
    ``longdouble``, among others: such a save failed only in the background)."""
    try:
        ts.dtype(dtype)
    except (TypeError, ValueError):
        return False
    return True


def _flatten(pytree: Any) -> tuple[dict[str, np.ndarray | jax.Array], list[dict[str, Any]]]:
    """Host copies of the array leaves (keyed ``a<i>``; arrays spread over several
    processes are kept as they are) and a spec of every leaf."""
    flat, _ = jax.tree_util.tree_flatten_with_path(pytree)
    for _, leaf in flat:  # start every device-to-host copy before waiting for any
        if (
            isinstance(leaf, jax.Array)
            and leaf.is_fully_addressable
            and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        ):
            leaf.copy_to_host_async()
    arrays, specs = {}, []
    for i, (path, leaf) in enumerate(flat):
        where = jax.tree_util.keystr(path)
        if not _is_array(leaf) and isinstance(leaf, (bool, int, float, str)):
            specs.append({"path": where, **_encode_value(leaf)})
            continue
        if not _is_array(leaf):
            raise TypeError(
                f"cannot save leaf {where or '<root>'} of type {type(leaf).__name__}: "
                "leaves must be arrays (jax or numpy), or Python bool, int, float or str"
            )
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise TypeError(
                f"cannot save leaf {where or '<root>'}: it is a typed PRNG key; save "
                "jax.random.key_data(key) and rebuild it with jax.random.wrap_key_data"
            )
        dtype = np.dtype(leaf.dtype)
        if dtype.kind in "OUSMm" or (  # fail here, not later in the background
            dtype.kind == "V" and not jnp.issubdtype(dtype, jnp.number)  # (bfloat16 is V)
        ):
            raise TypeError(
                f"cannot save leaf {where or '<root>'}: its dtype {leaf.dtype} is not numeric "
                "(object, string, datetime and structured arrays are not parameters)"
            )
        if isinstance(leaf, np.ma.MaskedArray):  # (its mask would be dropped)
            raise TypeError(
                f"cannot save leaf {where or '<root>'}: a masked array; save its data and "
                "its mask as two leaves (np.ma.getdata, np.ma.getmaskarray)"
            )
        # (in native byte order: the data is read back so, and jax has no other)
        spec = {"path": where, "shape": list(leaf.shape), "dtype": str(_native(leaf.dtype))}
        if leaf.size == 0:  # (kept in meta: any dtype)
            specs.append({**spec, "kind": "empty"})
            continue
        if not _storable(dtype):
            raise TypeError(
                f"cannot save leaf {where or '<root>'}: its dtype {dtype} is not one "
                "TensorStore (Orbax's storage) can write; cast it to one it can (a wider "
                "or signed type: uint4 to int8, say)"
            )
        # a jax array is immutable: np.asarray gives a host copy, or (on CPU) a view that
        # keeps its buffer alive; a numpy array may be overwritten later: copy it. An
        # array spread over several processes stays as it is: Orbax writes each
        # process's shards from that process (a collective save, see ParamStore.save)
        key = f"a{i}"
        if isinstance(leaf, jax.Array):
            arrays[key] = leaf if not leaf.is_fully_addressable else np.asarray(leaf)
        else:
            arrays[key] = np.array(leaf)
        specs.append({**spec, "kind": "array", "key": key})
    return arrays, specs


def _same_run(a: PopulationState, b: PopulationState) -> bool:
    """Whether ``a`` and ``b`` are states of one run, from positive evidence: the same
    key, and a handle recorded at the same checkpoint in both histories (a handle's
    name holds a random nonce: two runs of one seed share keys and generation ids, never
    handles). The workers' latest handles are compared first; the whole history only
    when none matches (one was replaced, or lost). Without any handle: one run."""
    if not np.array_equal(a.key, b.key):
        return False
    older, newer = (a, b) if a.num_events <= b.num_events else (b, a)
    recorded = False
    for worker in older.workers:
        source = older.history.latest_loadable(worker.generation_id)
        if source is not None and isinstance(source.params, str):
            recorded = True
            if _recorded_in(newer.history, source):
                return True
    for checkpoint in older.history.checkpoints():
        if isinstance(checkpoint.params, str):
            recorded = True
            if _recorded_in(newer.history, checkpoint):
                return True
    return not recorded


def _recorded_in(history: History, checkpoint: Any) -> bool:
    there = history.get_checkpoint(checkpoint.generation_id, checkpoint.step)
    return there is not None and there.params == checkpoint.params


def _sharding(target_leaf: Any) -> jax.sharding.Sharding | None:
    """Where a restored leaf goes: ``None`` (host numpy) for a numpy target leaf, or
    one of a dtype no ``jax.Array`` holds here (64-bit without ``jax_enable_x64``: a jax
    array would narrow it, silently wrapping the integers); else the target leaf's
    sharding, or the default device."""
    if isinstance(target_leaf, (np.ndarray, np.generic)):
        return None
    dtype = getattr(target_leaf, "dtype", None)
    if dtype is not None and jax.dtypes.canonicalize_dtype(dtype) != dtype:
        return None
    sharding = getattr(target_leaf, "sharding", None)
    if isinstance(getattr(sharding, "mesh", None), jax.sharding.AbstractMesh):
        # (jax.eval_shape under an explicit mesh gives one: it names no devices)
        raise TypeError(
            f"a target leaf's sharding ({sharding}) is on an abstract mesh, which names no "
            "devices to restore onto: give the target concrete shardings, e.g. "
            "ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, s.sharding.spec))"
        )
    if isinstance(sharding, jax.sharding.Sharding):
        return sharding
    device = jax.config.jax_default_device  # type: ignore[attr-defined]  # set at run time
    if not isinstance(device, jax.Device):
        device = jax.devices(device)[0] if isinstance(device, str) else jax.devices()[0]
    return jax.sharding.SingleDeviceSharding(device)


def _like(target_leaf: Any, value: Any) -> Any:
    """``value`` as the kind of array ``target_leaf`` is (numpy, or jax on its sharding;
    weakly typed if the target is, a scalar or an array: a jitted function it is passed
    to then does not trace again, and computes as it did with the original)."""
    sharding = _sharding(target_leaf)
    if sharding is None:
        # (a numpy scalar target gets a numpy scalar: a 0-d array is another type; a
        # big-endian target its byte order)
        out = np.asarray(value).astype(target_leaf.dtype, copy=False)
        return out[()] if isinstance(target_leaf, np.generic) else out
    if _weakly_typed(target_leaf) and _can_be_weak(value.dtype):
        host = np.asarray(value)
        weak = jnp.asarray(host.item()) if host.shape == () else None  # (device_put keeps
        # it weak; through a Python number, a signaling NaN came back quiet: bits checked)
        if weak is not None and weak.dtype == value.dtype and _same_bits(weak, host):
            value = weak
        elif weak is None or weak.dtype == value.dtype:
            # no public constructor: an identity compiled for a weakly typed input
            spec = jax.ShapeDtypeStruct(np.shape(value), value.dtype, weak_type=True)
            return _weak_identity(spec, sharding)(value)
    if isinstance(value, jax.Array) and value.sharding == sharding:
        return value
    return jax.device_put(value, sharding)


def _same_bits(array: Any, host: np.ndarray) -> bool:
    return np.asarray(array).tobytes() == host.tobytes()


def _can_be_weak(dtype: Any) -> bool:
    """Whether arrays of ``dtype`` can be weakly typed: those a Python int, float or
    complex becomes (``int32``, ``float32``, ``complex64``, or their 64-bit kin under
    x64)."""
    canonical = jax.dtypes.canonicalize_dtype
    return dtype in (canonical(np.int64), canonical(np.float64), canonical(np.complex128))


@functools.lru_cache(maxsize=64)
def _weak_identity(spec: jax.ShapeDtypeStruct, sharding: Any) -> Any:
    """An identity on ``spec`` whose result is weakly typed, on ``sharding``."""
    abstract = jax.ShapeDtypeStruct(spec.shape, spec.dtype, weak_type=True, sharding=sharding)
    return jax.jit(lambda v: v).lower(abstract).compile()


def _weakly_typed(leaf: Any) -> bool:
    """Whether a target leaf (an array or a ``jax.ShapeDtypeStruct``) is weakly typed."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return bool(leaf.weak_type)
    return isinstance(leaf, jax.Array) and bool(jax.typeof(leaf).weak_type)


def _value_as(handle: str, spec: Mapping[str, Any], value: Any, dtype: np.dtype) -> np.ndarray:
    """A saved Python scalar as a 0-d array of the target's ``dtype``, only if that keeps
    its kind and value: a float into a floating dtype (rounded to it; not one it
    overflows, nor underflows to 0), an int into an integer one it fits or a floating
    one that holds it exactly (257 is 256 in bfloat16), a bool into ``bool``; anything
    else is a ``ValueError``, as for an array leaf whose dtype is not the saved one."""
    if dtype == np.bool_:
        fits = type(value) is bool
    elif jnp.issubdtype(dtype, jnp.inexact):
        fits = type(value) in (int, float)
    elif jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        fits = type(value) is int and int(info.min) <= value <= int(info.max)
    else:
        fits = False
    out = None
    if fits:
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                out = np.asarray(value, dtype)
        except OverflowError:
            out = None
        # (a float past the dtype's range comes back inf, or NaN in float8: not kept)
        if out is not None and math.isfinite(value) and not np.isfinite(out.astype(np.float64)):
            out = None
        elif out is not None and jnp.issubdtype(dtype, jnp.inexact):
            back = out.astype(np.complex128 if out.dtype.kind == "c" else np.float64).item()
            if (type(value) is int and back != value) or (value != 0 and back == 0):
                out = None  # (an int rounded: 2**24 + 1 in float32; a float gone to 0)
    if out is None:
        raise ValueError(
            f"checkpoint {handle!r} holds the {type(value).__name__} {value!r:.40} at "
            f"{spec['path'] or '<root>'}, but the target asks for {dtype} there"
        )
    return out


_SPEC_FIELDS = {"array": ("shape", "dtype", "key"), "empty": ("shape", "dtype"), "value": ()}


def _leaf_specs(handle: str, meta: Any) -> list[dict[str, Any]]:
    """The leaf specs of a checkpoint's ``meta`` item, checked: its format, its checksum
    (format 2), and the form of each spec (what format 1, without a checksum, needs); a
    :class:`DamagedCheckpointError` (or not a ParamStore one) otherwise."""
    found = meta.get("format") if isinstance(meta, Mapping) else None
    version = re.fullmatch(
        r"jaxpop\.param_store/([0-9]{1,9})", found if isinstance(found, str) else ""
    )
    if (
        version is not None
        and int(version[1]) > 2
        and "crc32" in meta
        and meta["crc32"] != _meta_crc32({**meta, "format": FORMAT})
    ):  # (a newer jaxpop's version, whose checks this one cannot run; not a version
        # digit damaged in a format-2 checkpoint, whose checksum then still holds)
        raise UnknownCheckpointFormatError(
            f"{handle!r} is a checkpoint of format {found!r:.80}, which this jaxpop does not "
            f"read (it reads {FORMAT!r}): read it with the jaxpop that wrote it"
        )
    if found not in (FORMAT, _FORMAT_1):
        raise DamagedCheckpointError(
            f"{handle!r} is not a checkpoint of format {FORMAT!r} (found {found!r:.80}): it "
            "is damaged, or not a ParamStore checkpoint"
        )
    if found == FORMAT and meta.get("crc32") != _meta_crc32(meta):
        raise DamagedCheckpointError(
            f"checkpoint {handle!r} is damaged: its meta item does not match its checksum"
        )
    specs = meta.get("leaves")
    try:
        if type(specs) is not list:
            raise TypeError("no list of leaves")
        for spec in specs:
            if not isinstance(spec["path"], str):
                raise TypeError(f"a path of type {type(spec['path']).__name__}")
            for name in _SPEC_FIELDS[spec["kind"]]:
                spec[name]  # a KeyError if it is missing
            if spec["kind"] == "value":
                _decode_value(spec)
            else:
                jnp.dtype(spec["dtype"])
                for n in spec["shape"]:
                    operator.index(n)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if found == FORMAT:  # (its checksum held: whole, but not readable here)
            raise UnknownCheckpointFormatError(
                f"checkpoint {handle!r} describes leaves this jaxpop and jax cannot read "
                f"(a dtype a newer jax has?): {type(e).__name__}: {e!s:.80}"
            ) from e
        raise DamagedCheckpointError(
            f"checkpoint {handle!r} is damaged: its meta item does not describe its leaves "
            f"({type(e).__name__}: {e!s:.80})"
        ) from e
    return specs


# TensorStore's status codes (its ValueErrors' first word) of a failure a good checkpoint
# can meet too: the machine, not the files
_NOT_DAMAGE_CODES = (
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "ABORTED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
)


def _is_damage(error: Exception) -> bool:
    """Whether reading a checkpoint's arrays failed for a part of it gone or unreadable.

    The target was checked against the (checksummed) meta item before, and Orbax is
    asked for exactly what that describes, so an error about what it reads is about its
    files: Orbax's ``KeyError``, ``FileNotFoundError``, ``ValueError`` or ``TypeError``
    (a metadata file that does not parse, or disagrees), or TensorStore's bare
    ``Exception`` or ``ValueError`` (``DATA_LOSS``, ...). Not damage: TensorStore's
    codes of the machine's trouble (out of memory, ...), and any other exception type.
    """
    if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError, KeyError)):
        return True  # (a folder where a file was, or the reverse: damage too)
    if type(error) is Exception:
        return True
    return isinstance(error, (ValueError, TypeError)) and not str(error).startswith(
        _NOT_DAMAGE_CODES
    )


def _native(dtype: Any) -> np.dtype:
    """``dtype`` in native byte order (``>f4`` is ``float32``)."""
    return np.dtype(jnp.dtype(dtype)).newbyteorder("=")


def _spec_dtype(spec: Mapping[str, Any]) -> np.dtype:
    """A saved leaf's dtype, native (a save made before dtypes were recorded so could
    say ``>f4``: its data is read back native all the same)."""
    return _native(spec["dtype"])


def _check_leaf(handle: str, spec: Mapping[str, Any], target_leaf: Any) -> None:
    shape, dtype = getattr(target_leaf, "shape", None), getattr(target_leaf, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(
            f"checkpoint {handle!r} holds an array at {spec['path'] or '<root>'} "
            f"({spec['dtype']}{spec['shape']}), but the target has a "
            f"{type(target_leaf).__name__} there; pass arrays or jax.ShapeDtypeStructs"
        )
    if tuple(shape) != tuple(spec["shape"]) or _native(dtype) != _spec_dtype(spec):
        raise ValueError(
            f"checkpoint {handle!r} holds {spec['dtype']}{list(spec['shape'])} at "
            f"{spec['path'] or '<root>'}, but the target asks for "
            f"{jnp.dtype(dtype)}{list(shape)}"
        )


def _agreed_nonce() -> str:
    """A random checkpoint nonce drawn by process 0 and broadcast to every process
    (collective: every process calls it)."""
    drawn = np.frombuffer(secrets.token_bytes(8), np.uint8).astype(np.int32)
    agreed = multihost_utils.broadcast_one_to_all(drawn)
    return bytes(np.asarray(agreed, np.uint8).tolist()).hex()


# -- the retention policy ------------------------------------------------------------
def _mutator_references(obj: Any, history: History, out: set[str], depth: int = 0) -> None:
    """Adds the handles of the checkpoints that ``obj`` (a mutator's state) names."""
    if depth > 64:
        return
    if isinstance(obj, Mapping):
        for value in obj.values():
            _mutator_references(value, history, out, depth + 1)
    elif isinstance(obj, (tuple, list)):
        if (
            len(obj) == 2
            and isinstance(obj[0], str)
            and isinstance(obj[1], numbers.Integral)
            and not isinstance(obj[1], bool)
        ):
            checkpoint = history.get_checkpoint(obj[0], int(obj[1]))
            if checkpoint is not None and isinstance(checkpoint.params, str):
                out.add(checkpoint.params)
        for value in obj:
            _mutator_references(value, history, out, depth + 1)


def _check_keep_best(keep_best: Any) -> None:
    if isinstance(keep_best, bool) or not isinstance(keep_best, numbers.Integral):
        raise TypeError(f"keep_best must be an int, got {type(keep_best).__name__}")
    if keep_best < 0:
        raise ValueError(f"keep_best must be >= 0, got {keep_best}")


def retained_handles(state: PopulationState, *, keep_best: int = 1) -> frozenset[str]:
    """The handles the garbage collection policy keeps for ``state``.

    The ``params`` (when they are ``str`` handles) of: (a) every active worker; (b) the
    latest checkpoint, the latest evaluated checkpoint, the latest loadable one, the
    latest save with a finite value and the first checkpoint of every live generation
    (one that some active worker is on); (c) the ``keep_best`` distinct handles with the
    best evaluated values in the whole history (by ``history.rank``: the lowest, or
    the highest when ``history.mode`` is ``"max"``; NaN and infinite values rank last;
    ties go to the earlier in history order); (d) every checkpoint that the mutator's
    state names by a ``(generation_id, step)`` pair, at any depth of its dicts, lists
    and tuples.
    Pure: it reads ``state`` and nothing else. Costs one pass over the history when
    ``keep_best > 0``.
    """
    _check_keep_best(keep_best)
    history = state.history
    out: set[str] = set()

    def add(params: Any) -> None:
        if isinstance(params, str):
            out.add(params)

    for worker in state.workers:
        add(worker.params)
        if worker.generation_id in history:
            add(history.latest(worker.generation_id).params)
            for copied in (  # what a worker reloads, and what an exploit would copy
                history.latest_evaluated(worker.generation_id),
                history.latest_loadable(worker.generation_id),
                # where a worker that diverged goes back to (WinnerTakeAllGenetic)
                history.latest_finite_save(worker.generation_id),
                history.first(worker.generation_id),
            ):
                if copied is not None:
                    add(copied.params)
    if keep_best > 0:
        best_rank: dict[str, float] = {}
        for checkpoint in history.checkpoints():
            if checkpoint.value is None or not isinstance(checkpoint.params, str):
                continue
            rank = history.rank(checkpoint.value)
            if checkpoint.params not in best_rank or rank < best_rank[checkpoint.params]:
                best_rank[checkpoint.params] = rank
        out.update(heapq.nsmallest(int(keep_best), best_rank, key=best_rank.__getitem__))
    _mutator_references(state.mutator_state, history, out)
    return frozenset(out)


def _check_has_state(obj: Any) -> None:
    """``_as_state``'s TypeError, without reading ``state`` (on a client, a round trip)."""
    if not hasattr(type(obj), "state") and "state" not in getattr(obj, "__dict__", {}):
        _as_state(obj)


def _as_state(state_or_controller: PopulationState | Controller) -> PopulationState:
    state = getattr(state_or_controller, "state", state_or_controller)
    if not isinstance(state, PopulationState):
        raise TypeError(
            "collect_garbage takes a PopulationState or a PopulationController (or a "
            "jaxpop.distributed.ray.PopulationClient), got "
            f"{type(state_or_controller).__name__}"
        )
    return state


# -- the store -----------------------------------------------------------------------
def _newest_mtime(path: str) -> float:
    """The newest modification time of ``path`` and everything below it (what a save
    still running writes to); a part removed meanwhile, or unreadable, is skipped."""
    newest = os.stat(path).st_mtime
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # (gone meanwhile, or unreadable: its own time counted)
            continue
        for entry in entries:
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
            except OSError:
                continue
    return newest


def _is_dir(path: str) -> bool:
    """Whether ``path`` is a directory: ``False`` only when it is not there (nothing at
    the path, or a file on the way); any other error (permission denied, an I/O error,
    a stale NFS handle) is raised, never read as "missing": a checkpoint read as
    missing is marked so in the history, and its lineage stepped back."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # (ValueError: a NUL byte)
        return False
    except OSError as error:
        if error.errno in (errno.ENAMETOOLONG, errno.ELOOP):  # (no such checkpoint)
            return False
        raise


def _raise_if_unreadable(path: str) -> None:
    """Raises the ``OSError`` (permission denied, say) that keeps a folder or file of the
    checkpoint at ``path`` from being read: Orbax reports an unreadable item folder as a
    missing item, which would read as damage (and a good checkpoint be given up)."""

    def fail(error: OSError) -> None:
        if not isinstance(error, (FileNotFoundError, NotADirectoryError)):
            raise error

    for folder, _, files in os.walk(path, onerror=fail):
        for name in files:
            try:
                with open(os.path.join(folder, name), "rb"):
                    pass
            except OSError as error:
                fail(error)


def _write(handle: str, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Writes one checkpoint with Orbax (the checksums here, not in ``save``: its caller
    does not wait for them)."""
    items = {_META: ocp.args.JsonSave(_with_checksums(meta, arrays))}
    if arrays:  # Orbax refuses an empty item
        items[_STATE] = ocp.args.StandardSave(arrays)
    with _ORBAX_SAVE_LOCK:
        _mark_tensorstore_used()
        ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(handle, ocp.args.Composite(**items))


_GROUP = getattr(builtins, "BaseExceptionGroup", None)  # (Python 3.11+)


def _without_frames(error: BaseException) -> BaseException:
    """``error`` with the local variables of its traceback's finished frames cleared, and
    those of every error it chains to (causes, contexts, an exception group's members):
    they hold the arrays a failed save was writing, and the error is kept until
    ``wait()`` raises it."""
    seen: set[int] = set()
    pending: list[Any] = [error]
    while pending:
        chained = pending.pop()
        if not isinstance(chained, BaseException) or id(chained) in seen:
            continue
        seen.add(id(chained))
        traceback.clear_frames(chained.__traceback__)
        pending += [chained.__cause__, chained.__context__]
        if _GROUP is not None and isinstance(chained, _GROUP):
            pending += chained.exceptions
    return error


def check_directory(path: str) -> str:
    """``path`` (absolute), or ``ValueError`` for a directory Orbax cannot save under: it
    would write there and report success, but the checkpoint could not be restored (a
    glob character class such as ``run[lr=0.1]``, a backslash, a name not UTF-8).
    :class:`ParamStore` checks its directory so; call it to check a path up front.

    >>> check_directory("/tmp/runs/lr-0.1")
    '/tmp/runs/lr-0.1'
    """
    # a component a glob pattern does not match itself: one holding a "[...]" class
    if not all(fnmatch.fnmatchcase(part, part) for part in path.split(os.sep)):
        raise ValueError(
            f"ParamStore's directory {path!r} holds a '[...]': Orbax finds a save's files "
            "by a glob pattern, which reads it as a character class, so saves would be "
            "finalized without their data; choose a directory without brackets"
        )
    if "\\" in path:
        raise ValueError(
            f"ParamStore's directory {path!r} holds a backslash, which TensorStore reads as "
            "a path separator (a save's data would be written elsewhere); choose a "
            "directory without one"
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"ParamStore's directory {path!r} is not valid UTF-8, which TensorStore cannot "
            "write under; choose a directory whose name is"
        ) from None
    return path


class ParamStore:
    """Saves and restores population workers' pytrees with Orbax; deletes unreachable ones.

    Args:
      directory: where the checkpoints live (created if missing). Handles are absolute
        paths inside it.
      async_save: ``True`` (default): ``save`` returns once the leaves are copied to
        host memory and writes them in the background; ``False``: ``save`` returns once
        the checkpoint is finalized (and raises if the save failed).
      max_pending: at most this many saves may be queued or running; a further
        ``save`` blocks until one finishes.
      durability: ``"process"`` (default): a save is finalized once Orbax renamed it into
        place (the files reach the operating system; a machine crash soon after may
        leave it damaged or missing, which a restore reports); ``"fsync"``: also once
        every file and folder of it, and the store's directory, is flushed to disk,
        so a save ``wait()`` saw finish survives a power loss (in a program of several
        processes, process 0 flushes a collective save). A flush that fails fails the
        save, which is removed (it reads as missing; a warning names one that could not
        be). With ``async_save``, a handle passed to ``set_eval`` before ``wait()`` may
        name a save not yet on disk. As the controller's
        ``durability``: a journal flushed to disk is worth most with checkpoints that are.

    ``docs/checkpoints.md`` describes the layout, the threading rules and the garbage
    collection policy. Call :meth:`close` (or use the store as a context manager) to
    finish pending saves and stop the background thread.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        async_save: bool = True,
        max_pending: int = 8,
        durability: Durability = "process",
    ):
        self.durability = check_durability(durability)
        if isinstance(max_pending, bool) or not isinstance(max_pending, (int, numbers.Integral)):
            raise TypeError(f"max_pending must be an int, got {type(max_pending).__name__}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._directory = check_directory(os.path.abspath(os.fsdecode(directory)))
        os.makedirs(self._directory, exist_ok=True)
        if self.durability == "fsync":  # (its entry, if it was just made)
            sync_dir(os.path.dirname(self._directory))
        self._resolved = os.path.realpath(self._directory)  # where its path leads now
        self.async_save = bool(async_save)
        self._max_pending = int(max_pending)
        self._slots = threading.BoundedSemaphore(self._max_pending)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="jaxpop-param-store"
        )
        self._lock = threading.Lock()
        self._mine: dict[str, concurrent.futures.Future] = {}  # this store's saves in flight
        self._failed: dict[str, BaseException] = {}  # failures not yet raised by wait()
        self._closed = False
        self._gc_lock = threading.Lock()
        self._seen: set[str] = set()  # names a history recorded at an earlier collection
        self._newest: PopulationState | None = None  # the newest state a collection was shown
        self._pid = os.getpid()  # the process it belongs to
        self._closed_at_exit = False
        _OPEN_STORES.add(self)

    @property
    def directory(self) -> str:
        """The absolute path of the store's directory."""
        return self._directory

    # -- saving ----------------------------------------------------------------------
    def save(self, generation_id: str, step: int, pytree: Any) -> str:
        """Saves ``pytree`` as ``(generation_id, step)``; returns its handle (a path).

        Raises ``TypeError`` for a leaf that is not an array or a Python scalar or
        string (before anything is written). With ``async_save`` the checkpoint is
        finalized later (see :meth:`wait`); without it, a failed save raises
        :class:`CheckpointSaveError` here.

        In a program of several processes (``jax.process_count() > 1``, after
        ``jax.distributed.initialize``) a save is *collective*: every process calls it,
        in the same order, with a store on the same shared directory and the same
        ``generation_id``, ``step`` and tree structure. Each process writes the shards
        of the arrays that live on its devices (arrays sharded over the processes stay
        on device, nothing is gathered); arrays each process holds whole (numpy, or
        ``jax.Array``\\ s on one process's devices) are taken to be equal everywhere
        and are written by process 0. Every process gets the same handle. Such a save
        runs in the calling thread and returns once it is finalized, whatever
        ``async_save`` says (Orbax synchronizes the processes with collectives that
        must be issued in program order).
        """
        if not isinstance(generation_id, str):
            raise TypeError(f"generation_id must be a str, got {type(generation_id).__name__}")
        if isinstance(step, bool) or not isinstance(step, (int, numbers.Integral)):
            raise TypeError(f"step must be an int, got {type(step).__name__}: {step!r}")
        step = int(step)
        if not -(2**63) <= step < 2**63:  # (its digits went into a file name too long)
            raise ValueError(
                f"step must fit in 64 bits (a controller's are [0, 2**63)), got {step}"
            )
        self._check_process()
        self._check_directory()
        _refuse_if_forked_after_use()
        collective = jax.process_count() > 1
        if collective:
            multihost._refuse_alone("ParamStore.save (with several processes)")
        arrays, specs = _flatten(pytree)
        nonce = _agreed_nonce() if collective else secrets.token_hex(8)
        name = f"{_UNSAFE_RE.sub('-', generation_id)[:64]}_step{step}_{nonce}"
        handle = os.path.join(self._directory, name)
        meta = {
            "format": FORMAT,
            "generation_id": generation_id,
            "step": step,
            "time": time.time(),
            "leaves": specs,
        }
        future: concurrent.futures.Future = concurrent.futures.Future()
        # a synchronous save's failure is raised here, to its caller only (kept for
        # wait(), another thread's wait could take it first, and this save return)
        sync = collective or not self.async_save
        self._slots.acquire()
        try:
            with self._lock:
                if self._closed:
                    when = " at interpreter exit" if self._closed_at_exit else ""
                    raise RuntimeError(f"this ParamStore ({self._directory}) was closed{when}")
                key = _registry_key(handle, create=True)
                with _REGISTRY.lock:  # registered before any file of it can exist
                    _REGISTRY.saving[key] = future
                self._mine[handle] = future
                if not collective:
                    # (in a box _run empties: the pool's frames, which a failure's
                    # traceback keeps through f_back, then do not hold the arrays)
                    job = (handle, key, [arrays], meta, future, not sync)
                    self._executor.submit(self._run, *job)
        except BaseException as e:
            if handle in self._mine:  # (raised here: never again by wait())
                self._settle(handle, key, future, e, False)
            else:
                self._slots.release()
            raise
        if collective:
            self._run(handle, key, [arrays], meta, future, False)
        if sync:
            concurrent.futures.wait([future])
            error = future.exception()
            if error is not None:
                raise CheckpointSaveError({handle: error}) from error
        return handle

    def _run(
        self,
        handle: str,
        key: str,
        box: list[dict[str, np.ndarray | jax.Array]],
        meta: dict[str, Any],
        future: concurrent.futures.Future,
        keep: bool,
    ) -> None:
        """The background job: writes one checkpoint (the arrays in ``box``, taken out),
        then settles its future. A failure is kept until ``wait()`` (``keep``; else its
        synchronous ``save`` raises it): nothing of it may hold the arrays."""
        error = None
        try:
            _write(handle, box.pop(), meta)
            if self.durability == "fsync":
                self._flush(handle, collective=jax.process_count() > 1)
        except BaseException as e:
            shutil.rmtree(handle + _TMP_SUFFIX, ignore_errors=True)
            error = _without_frames(e)
        self._settle(handle, key, future, error, keep)

    def _flush(self, handle: str, *, collective: bool) -> None:
        """Flushes a finished checkpoint to disk (``durability="fsync"``); one that could
        not be is removed (a save that failed is missing, never half durable). A
        collective save is flushed by process 0, which tells every process how it went
        (a collective call, as the save: all of them return, or all raise)."""
        error: BaseException | None = None
        if not collective or jax.process_index() == 0:
            try:
                sync_tree(handle)
            except BaseException as e:
                error = e
                try:
                    self._delete(handle)
                except OSError as gone_wrong:  # (the flush's error is the one to raise)
                    logger.warning(
                        "jaxpop: checkpoint %s could not be flushed to disk (%s) nor removed "
                        "(%s): it stays, and may not survive a machine crash",
                        handle,
                        e,
                        gone_wrong,
                    )
        if collective:
            failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
            if error is None and int(failed):
                error = OSError(errno.EIO, f"process 0 could not flush checkpoint {handle} to disk")
        if error is not None:
            raise error

    def _settle(
        self,
        handle: str,
        key: str,
        future: concurrent.futures.Future,
        error: BaseException | None,
        keep: bool,
    ) -> None:
        """Records the outcome of a save (a failure for ``wait()`` if ``keep``), then
        wakes whoever waits for it."""
        with _REGISTRY.lock:
            _REGISTRY.saving.pop(key, None)
            if error is not None:
                _REGISTRY.failed[key] = f"{type(error).__name__}: {error}"
        with self._lock:
            self._mine.pop(handle, None)
            if error is not None and keep:
                self._failed[handle] = error
        self._slots.release()
        if error is None:
            future.set_result(handle)
        else:
            future.set_exception(error)

    def _check_directory(self) -> None:
        """Refuses to go on when the store's path leads to another directory than the
        one it opened (a symlink such as ``latest`` pointed at another run): it would
        read this run's handles as missing there, save into that run, and collect it.
        (The same path removed and made again is the same directory.)"""
        if os.path.realpath(self._directory) != self._resolved:
            raise RuntimeError(
                f"this ParamStore's directory {self._directory} now leads to another "
                "directory than the one it opened (a symlink on the way pointed "
                "elsewhere?): open a ParamStore on the run's own directory"
            )

    def _forked(self) -> bool:
        """Whether this is a forked child's copy of the store (it has no background
        thread: a save would never be written, a wait never end)."""
        return self._pid != os.getpid()

    def _check_process(self) -> None:
        """Refuses to save or wait in a forked child (see :meth:`_forked`)."""
        if self._forked():
            raise RuntimeError(
                f"this ParamStore ({self._directory}) was opened in process {self._pid}, "
                "not in this one (a forked child): open a new ParamStore here (a child "
                "forked after its parent saved or restored cannot save or restore at all: "
                "start it with the 'spawn' or 'forkserver' method)"
            )

    def wait(self) -> None:
        """Blocks until every save of this store is finalized.

        Raises :class:`CheckpointSaveError` naming the saves that failed since the last
        ``wait`` (each failure is raised once).
        """
        self._check_process()
        with self._lock:
            futures = list(self._mine.values())
        concurrent.futures.wait(futures)  # (settled after their bookkeeping)
        with self._lock:  # every failure since the last wait, of these saves or earlier
            failures, self._failed = self._failed, {}
        if failures:
            raise CheckpointSaveError(failures) from next(iter(failures.values()))

    wait_until_finished = wait

    @property
    def num_pending(self) -> int:
        """How many of this store's saves are queued or running."""
        with self._lock:
            return len(self._mine)

    # -- restoring -------------------------------------------------------------------
    def restore(self, handle: str, target: Any) -> Any:
        """Loads the checkpoint ``handle`` into the structure of ``target``.

        Args:
          handle: what :meth:`save` returned (any store's, any directory).
          target: the structure to restore: a pytree of arrays or
            ``jax.ShapeDtypeStruct``\\ s (for example ``jax.eval_shape(init_fn)``) with the
            saved leaf paths, shapes and dtypes. Each array comes back as a numpy array
            where the target has a numpy array (or a dtype no ``jax.Array`` holds: 64-bit
            without ``jax_enable_x64``), else as a ``jax.Array`` on the target
            leaf's sharding (or the default device). In a program of several
            processes a restore is collective, like a save: every process calls it,
            and a target leaf with a sharding over all processes' devices (a
            ``NamedSharding`` on a global mesh) comes back sharded that way, each
            process reading only its own shards.

        Each array's data is checked against the CRC-32 recorded when it was saved (read
        to host memory, checked, then placed on the target's devices), and the leaves'
        description against its own: a checkpoint damaged on disk is an error, never
        other values. Arrays spread over several processes are read straight onto their
        devices, unchecked (no process holds their data whole).

        Raises:
          MissingCheckpointError: no complete checkpoint at ``handle`` (deleted by
            garbage collection, never finished, or a wrong path).
          OSError: the checkpoint cannot be read now (permission denied, an I/O error):
            raised as it is, never taken for a missing one.
          DamagedCheckpointError: the checkpoint is damaged (a part of it lost,
            unreadable, or not what was saved; a ``ValueError``).
          UnknownCheckpointFormatError: the checkpoint is whole but this version cannot
            read it (a newer format, a dtype this jax lacks; a ``ValueError``).
          ValueError: the target's structure, shapes or dtypes differ from the saved ones.
          TypeError: a target leaf's sharding is on an abstract mesh (``jax.eval_shape``
            under an explicit mesh gives one; a plain ``Mesh`` gives no sharding, and
            the leaf comes back on the default device).
        """
        if not isinstance(handle, str):
            raise TypeError(
                f"handle must be a str (what ParamStore.save returned), got "
                f"{type(handle).__name__}: {handle!r:.80}"
                + ("; None means: initialise fresh parameters" if handle is None else "")
            )
        if not handle.strip():
            raise ValueError(
                f"handle {handle!r} is empty; pass what ParamStore.save returned "
                "(an empty path would read the current directory)"
            )
        if "\0" in handle:  # (os.path raised "embedded null byte", a ValueError)
            raise MissingCheckpointError(handle, "no path holds a NUL character")
        if jax.process_count() > 1:
            multihost._refuse_alone("ParamStore.restore (with several processes)")
        self._check_directory()
        _refuse_if_forked_after_use()
        path = self._located(handle)
        key = _registry_key(path)
        with _REGISTRY.lock:
            pending = _REGISTRY.saving.get(key)
        if pending is not None:
            concurrent.futures.wait([pending])
        with _REGISTRY.lock:
            error = _REGISTRY.failed.get(key)
        if error is not None:
            raise MissingCheckpointError(handle, f"its save failed ({error})")
        with _REGISTRY.lock:
            if key in _REGISTRY.deleting:
                raise MissingCheckpointError(handle, "it was deleted by garbage collection")
            _REGISTRY.reading[key] += 1
        try:
            return self._read(handle, path, target)
        finally:
            with _REGISTRY.lock:
                _REGISTRY.reading[key] -= 1
                if not _REGISTRY.reading[key]:
                    del _REGISTRY.reading[key]

    def exists(self, handle: str) -> bool:
        """Whether ``restore(handle, ...)`` can find a checkpoint (now, or once its save
        in this process finishes).

        False for a handle whose directory is gone or unfinished, whose save failed, or
        that garbage collection is deleting, and for a path no save makes (one whose
        name is not a checkpoint's). What ``checkpoint_missing(..., exists=)`` takes.
        """
        if not isinstance(handle, str):
            raise TypeError(f"handle must be a str, got {type(handle).__name__}: {handle!r:.80}")
        if not handle.strip() or "\0" in handle or self._name_in_directory(handle) is None:
            return False  # (nothing save makes: a store's folder, or a part of a checkpoint)
        self._check_directory()
        path = self._located(handle)
        key = _registry_key(path)
        with _REGISTRY.lock:
            if key in _REGISTRY.failed or key in _REGISTRY.deleting:
                return False
            if key in _REGISTRY.saving:
                return True
        return _is_dir(path)

    def _missing(self, handle: str, path: str) -> MissingCheckpointError:
        if _is_dir(path + _TMP_SUFFIX):
            reason = (
                "its save has not finished: it is still running in another process, or "
                "it was interrupted"
            )
        else:
            reason = (
                "the directory does not exist (it was deleted by garbage collection, its "
                "save never finished, or the handle is wrong)"
            )
        return MissingCheckpointError(handle, reason)

    def _read(self, handle: str, path: str, target: Any) -> Any:
        if not _is_dir(path):
            raise self._missing(handle, path)
        checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        _mark_tensorstore_used()
        try:
            meta = checkpointer.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore()))[
                _META
            ]
        except (
            FileNotFoundError,
            ValueError,
            KeyError,
            IsADirectoryError,
            NotADirectoryError,
        ) as e:
            if not _is_dir(path):
                raise self._missing(handle, path) from e
            _raise_if_unreadable(path)
            raise DamagedCheckpointError(
                f"{handle!r} is damaged, or not a jaxpop ParamStore checkpoint: {e}"
            ) from e
        specs = _leaf_specs(handle, meta)
        flat, treedef = jax.tree_util.tree_flatten_with_path(target)
        paths = [jax.tree_util.keystr(p) for p, _ in flat]
        saved = [spec["path"] for spec in specs]
        if paths != saved:
            in_target, in_saved = set(paths), set(saved)
            missing = [p for p in saved if p not in in_target][:5]
            extra = [p for p in paths if p not in in_saved][:5]
            raise ValueError(
                f"the target's structure differs from checkpoint {handle!r} "
                f"({len(saved)} saved leaves, {len(paths)} in the target); saved but not "
                f"in the target: {missing}; in the target but not saved: {extra}"
                + ("" if missing or extra else "; the leaves are in a different order")
            )
        abstract, checked = {}, set()
        for spec, (_, leaf) in zip(specs, flat, strict=True):
            if spec["kind"] != "value":
                _check_leaf(handle, spec, leaf)
            if spec["kind"] == "array":
                # read to the host where the data is checked (then placed: _like), else
                # (an array spread over several processes) straight onto its devices
                sharding = _sharding(leaf)
                if "crc32" in spec and (sharding is None or sharding.is_fully_addressable):
                    sharding = None
                    checked.add(spec["key"])
                abstract[spec["key"]] = jax.ShapeDtypeStruct(
                    tuple(spec["shape"]), _spec_dtype(spec), sharding=sharding
                )
        arrays = {}
        if abstract:
            try:
                arrays = checkpointer.restore(
                    path, ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                )[_STATE]
            except Exception as e:
                if not _is_dir(path):
                    raise self._missing(handle, path) from e
                if not _is_damage(e):  # out of memory, say: the checkpoint may be fine
                    raise
                _raise_if_unreadable(path)
                # (TensorStore's messages hold its whole spec: cut short)
                raise DamagedCheckpointError(
                    f"checkpoint {handle!r} is damaged: {str(e)[:200]}..."
                ) from e
        leaves = []
        for spec, (_, leaf) in zip(specs, flat, strict=True):
            if spec["kind"] == "array":
                # one leaf at a time: its host copy is freed once it is placed
                array = arrays.pop(spec["key"])
                if spec["key"] in checked and _crc32(np.asarray(array)) != spec["crc32"]:
                    raise DamagedCheckpointError(
                        f"checkpoint {handle!r} is damaged: the data of leaf "
                        f"{spec['path'] or '<root>'} does not match its checksum"
                    )
                leaves.append(_like(leaf, array))
            elif spec["kind"] == "empty":
                leaves.append(_like(leaf, np.zeros(spec["shape"], _spec_dtype(spec))))
            else:
                value = _decode_value(spec)
                if _is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct):
                    if tuple(leaf.shape) != ():
                        raise ValueError(
                            f"checkpoint {handle!r} holds a {type(value).__name__} at "
                            f"{spec['path'] or '<root>'}, but the target has an array of "
                            f"shape {tuple(leaf.shape)} there"
                        )
                    value = _like(leaf, _value_as(handle, spec, value, jnp.dtype(leaf.dtype)))
                elif type(leaf) in (bool, int, float, str) and type(value) is not type(leaf):
                    raise ValueError(
                        f"checkpoint {handle!r} holds a {type(value).__name__} at "
                        f"{spec['path'] or '<root>'}, but the target has a "
                        f"{type(leaf).__name__} there"
                    )
                leaves.append(value)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    # -- listing and garbage collection ----------------------------------------------
    def handles(self) -> list[str]:
        """The handles of the complete checkpoints in the directory, sorted."""
        return sorted(os.path.join(self._directory, n) for n in self._scan()[0])

    def _scan(self) -> tuple[list[str], list[str], list[str]]:
        """Names of complete checkpoints, unfinished (tmp) ones and trash."""
        complete, unfinished, trash = [], [], []
        with os.scandir(self._directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(_TRASH_PREFIX):
                    trash.append(name)
                elif name.endswith(_TMP_SUFFIX):
                    if _NAME_RE.fullmatch(name[: -len(_TMP_SUFFIX)]):
                        unfinished.append(name)
                elif _NAME_RE.fullmatch(name) and entry.is_dir(follow_symlinks=False):
                    complete.append(name)
        return complete, unfinished, trash

    def _name_in_directory(self, handle: str) -> str | None:
        """The checkpoint name ``handle`` has in this directory (see :meth:`_located`),
        or ``None`` for a path that names no checkpoint: a collection keeps the
        checkpoint of that name here while the handle is retained, and deletes it once
        recorded and no longer retained (a name of another directory's save is none of
        this one's: names carry a random nonce)."""
        name = os.path.basename(os.path.normpath(handle))
        return name if _NAME_RE.fullmatch(name) else None

    def _located(self, handle: str) -> str:
        """The path ``handle`` is read at: the checkpoint of its name in this store's
        directory, when there is one; else the handle's own path. Handles are absolute
        paths, and a run's folder may be moved or copied (renamed, to another machine,
        its old path reused by a new run): names carry a random nonce, so a checkpoint
        of that name here is the same save, and one of another store's is never
        mistaken for this one's. A handle's path that cannot be read (permission
        denied, an I/O error) raises: it may be a live store's, never read as gone."""
        path = os.path.abspath(handle)
        parent, name = os.path.split(path)
        if parent == self._directory or not _NAME_RE.fullmatch(name):
            return path
        here = os.path.join(self._directory, name)
        return here if _is_dir(here) else path

    def _elsewhere(self, handle: str) -> bool:
        """Whether another store's directory holds ``handle``'s checkpoint (a
        checkpoint this one does not hold, and never did, moved or copied here). An
        error other than "not there" is raised: a collection then deletes nothing."""
        parent = os.path.dirname(os.path.abspath(handle))
        if parent == self._directory or not _is_dir(handle):
            return False
        return not os.path.samefile(parent, self._directory)

    def _delete(self, path: str) -> bool:
        """Renames ``path`` into the trash, then removes it; ``False`` if it was gone."""
        trash = os.path.join(
            self._directory, f"{_TRASH_PREFIX}{os.path.basename(path)}-{secrets.token_hex(4)}"
        )
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _finished_lineages(self, state: PopulationState, on_disk: set[str]) -> set[str]:
        """Per worker, the newest checkpoint of its lineage in this directory whose save
        has finished: what it goes back to if a newer save (still running when the
        collection looks) fails or its process is killed. (Its newest is usually the one
        found, at no cost.)"""
        history, out = state.history, set()
        for worker in state.workers:
            if worker.generation_id not in history:
                continue
            for checkpoint in history.back_from(history.latest(worker.generation_id)):
                params = checkpoint.params
                if isinstance(params, str):
                    name = self._name_in_directory(params)
                    if name is None:
                        break  # (not a checkpoint's path)
                    if name in on_disk:
                        out.add(name)
                        break
                    if self._elsewhere(params):
                        break  # another store's lineage from here on
        return out

    def collect_garbage(
        self,
        state_or_controller: PopulationState | Controller,
        *,
        keep_best: int = 1,
        keep: Iterable[str] = (),
        orphan_grace_s: float | None = None,
    ) -> GarbageReport:
        """Deletes the checkpoints that nothing can load any more (``docs/checkpoints.md``).

        Args:
          state_or_controller: a ``PopulationState`` or a :class:`jaxpop.Controller`
            (a ``PopulationController`` or a Ray ``PopulationClient``; its ``state`` is
            read once, when this collection holds the store's lock, so it is the newest
            state). Give the population whose history holds this store's handles.
          keep_best: also keep this many best evaluated checkpoints of the history.
          keep: more handles to keep.
          orphan_grace_s: delete checkpoints that no history has recorded once they are
            this many seconds old (by directory modification time; an unfinished save's
            by its newest write, so one still running in another process is kept while
            it writes); ``None`` (default): never. Must be well above the longest delay
            between a ``save`` and its ``set_eval``, and the longest pause in a save's
            writes.

        Returns a :class:`GarbageReport`. Safe to call from any thread, concurrently with
        saves and restores.
        """
        if not isinstance(state_or_controller, PopulationState):  # read under the lock
            _check_has_state(state_or_controller)
        if isinstance(orphan_grace_s, (bool, np.bool_, np.timedelta64)) or not isinstance(
            orphan_grace_s, (numbers.Real, type(None))
        ):  # (a timedelta64 counts its unit, and failed late, at the first unfinished save)
            raise TypeError(f"orphan_grace_s must be seconds or None, got {orphan_grace_s!r:.40}")
        if orphan_grace_s is not None and not orphan_grace_s >= 0:
            raise ValueError(f"orphan_grace_s must be >= 0 or None, got {orphan_grace_s}")
        _check_keep_best(keep_best)
        keep = set((keep,) if isinstance(keep, str) else keep)
        with self._gc_lock:
            self._check_directory()
            # A controller's state is read under the lock (the newest one); an older state
            # than one shown before (a caller that read it before another collection ran)
            # also keeps what the newest retains, which this store may have seen recorded.
            state = _as_state(state_or_controller)
            newest = self._newest
            retained_set = set(retained_handles(state, keep_best=keep_best)) | keep
            if newest is None or not _same_run(state, newest):
                # another run (or the first): what an earlier one recorded is not this
                # one's to delete, and what it retains stays (this collection too)
                if newest is not None:
                    retained_set |= retained_handles(newest, keep_best=keep_best)
                self._newest = newest = state
                self._seen = set()
            elif state.num_events >= newest.num_events:
                self._newest = newest = state
            if newest is not state:
                retained_set |= retained_handles(newest, keep_best=keep_best)
            retained = {n for h in retained_set if (n := self._name_in_directory(h))}
            complete, unfinished, trash = self._scan()
            on_disk = set(complete)
            for shown in (state,) if newest is state else (state, newest):
                retained |= self._finished_lineages(shown, on_disk)
            recorded = set()
            for checkpoint in state.history.checkpoints():
                params = checkpoint.params
                if not isinstance(params, str):
                    continue
                # the cheap test first: this runs once per checkpoint in the history
                # (a handle written with a trailing separator names its folder too)
                name = params.rpartition(os.sep)[2] or self._name_in_directory(params)
                if name in on_disk and self._name_in_directory(params) is not None:
                    recorded.add(name)
            self._seen = (self._seen | recorded) & on_disk
            now = time.time()
            kept_retained = kept_unreported = busy = 0
            deleted = []
            for name in sorted(on_disk) + unfinished:
                path = os.path.join(self._directory, name)
                is_tmp = name.endswith(_TMP_SUFFIX)
                if not is_tmp and name in retained:
                    kept_retained += 1
                    continue
                key = _registry_key(path[: -len(_TMP_SUFFIX)] if is_tmp else path)
                if (is_tmp or name not in self._seen) and not (
                    is_tmp and key in _REGISTRY.failed  # (its save failed here: left over)
                ):
                    try:
                        age = now - os.stat(path).st_mtime
                        if is_tmp and orphan_grace_s is not None and age >= orphan_grace_s:
                            # (a save running in another process writes below its folder,
                            # whose own time is its start's: aged by its newest write)
                            age = now - _newest_mtime(path)
                    except FileNotFoundError:
                        continue
                    if orphan_grace_s is None or age < orphan_grace_s:
                        kept_unreported += 1
                        continue
                with _REGISTRY.lock:
                    if key in _REGISTRY.saving or _REGISTRY.reading.get(key):
                        busy += 1
                        continue
                    if key in _REGISTRY.deleting:  # another store is deleting it
                        continue
                    _REGISTRY.deleting.add(key)
                try:
                    if self._delete(path) and not is_tmp:
                        deleted.append(path)
                finally:
                    with _REGISTRY.lock:
                        _REGISTRY.deleting.discard(key)
                self._seen.discard(name)
            for name in trash:  # left by a collection that was interrupted
                shutil.rmtree(os.path.join(self._directory, name), ignore_errors=True)
        return GarbageReport(tuple(deleted), kept_retained, kept_unreported, busy)

    # -- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        """Finishes pending saves and stops the background thread. Idempotent.

        Raises :class:`CheckpointSaveError` if a save failed (and was not yet raised).
        Restoring still works after ``close``.
        """
        with self._lock:
            self._closed = True
        _OPEN_STORES.discard(self)
        if self._forked():
            return  # (its saves are the parent's to finish)
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> ParamStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ParamStore({self._directory!r}, async_save={self.async_save}, "
            f"durability={self.durability!r})"
        )

    def __reduce__(self) -> tuple[Any, tuple[str, bool, int, Durability]]:
        # a copy (in another process: a Ray actor's checkpoint_missing(exists=store.exists))
        # is a store on the same directory; the saves in flight stay this one's
        if type(self) is not ParamStore:  # (a copy would lose what the subclass changes)
            raise TypeError(
                f"a {type(self).__name__} (a ParamStore subclass) pickles only with a "
                "__reduce__ of its own"
            )
        self._check_directory()  # (a path now leading elsewhere: the copy would go there)
        args = (self._directory, self.async_save, self._max_pending, self.durability)
        return _reopened, args


def _reopened(
    directory: str, async_save: bool, max_pending: int, durability: Durability = "process"
) -> ParamStore:
    """An unpickled :class:`ParamStore`: a new store on ``directory``, which must exist
    where it is unpickled (a store made there would read every checkpoint as missing)."""
    if not _is_dir(directory):
        raise FileNotFoundError(
            errno.ENOENT,
            f"a ParamStore was unpickled in a process that does not see its directory "
            f"{directory} (on another machine, without the shared filesystem?)",
            directory,
        )
    return ParamStore(
        directory, async_save=async_save, max_pending=max_pending, durability=durability
    )
