"""A safe, versioned, plain-data encoding for jaxpop's records, journals and histories.

:func:`encode` and :func:`decode` round-trip plain Python values, numpy and jax arrays
and records registered with :func:`register_record` exactly (same types, same values,
same bits). Built on MessagePack; unlike pickle, decoding never runs code or builds an
unregistered class. ``docs/encoding.md`` lists the values supported and specifies the
wire format (``FORMAT_VERSION`` 1) and the errors.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np

__all__ = ["FORMAT_VERSION", "PREFIX", "decode", "encode", "record_name", "register_record"]

#: The version of the wire format ``encode`` writes; ``decode`` reads versions up to it.
FORMAT_VERSION: int = 1

_MAGIC = b"jaxpop"
_HEADER = b"\x93\xc4\x06" + _MAGIC  # fixarray(3), bin8 of length 6, "jaxpop"
#: The 9 bytes every encoding starts with (whatever its version).
PREFIX: bytes = _HEADER

_EXT_TUPLE = 1
_EXT_NDARRAY = 2
_EXT_NPSCALAR = 3
_EXT_JAXARRAY = 4
_EXT_JAXKEY = 5
_EXT_RECORD = 6

_MAX_DEPTH = 100
_MAX_BIN = 2**32 - 1024  # MessagePack's bin/ext limit is 2**32 - 1, less the triple's header
_INT_MIN = -(2**63)
_INT_END = 2**64  # exclusive
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"

# msgpack decodes an ext of type -1 (a timestamp) of 4, 8 or 12 bytes into a
# ``msgpack.Timestamp`` without asking the ext hook. Every such ext contains one of these
# byte pairs (fixext 4 or fixext 8, or an ext 8/16/32 whose length ends in 4, 8 or 12,
# followed by the type byte 0xff); decode looks for timestamps only when one is present.
_TIMESTAMP_MARKERS = (b"\xd6\xff", b"\xd7\xff", b"\x04\xff", b"\x08\xff", b"\x0c\xff")

_FIX = (
    "Convert it to a numpy array or a plain Python type (None, bool, int, float, str, "
    "bytes, list, tuple, dict), or register its class with "
    "jaxpop.encoding.register_record(cls, name)."
)


def _supported_dtypes() -> dict[str, np.dtype]:
    names = [
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    ]
    dtypes = {name: np.dtype(name) for name in names}
    ml_names = [
        "bfloat16",
        "float8_e3m4",
        "float8_e4m3",
        "float8_e4m3b11fnuz",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float6_e2m3fn",
        "float6_e3m2fn",
        "float4_e2m1fn",
        "int1",
        "int2",
        "int4",
        "uint1",
        "uint2",
        "uint4",
        "bcomplex32",
        "complex32",
    ]
    for name in ml_names:
        scalar_type = getattr(ml_dtypes, name, None)
        if scalar_type is not None:
            dtype = np.dtype(scalar_type)
            if dtype.name == name:
                dtypes[name] = dtype
    return dtypes


#: dtype name on the wire -> native-byte-order numpy dtype.
_DTYPES: dict[str, np.dtype] = _supported_dtypes()


def _narrow_limits() -> dict[np.dtype, int]:
    """How many byte values a dtype of fewer than 8 bits stores its values as: 2 for
    bool, ``2**bits`` for ml_dtypes' narrow types (their bits are a byte's lowest)."""
    out = {np.dtype(np.bool_): 2}
    for dtype in _DTYPES.values():
        if dtype.itemsize == 1 and dtype.kind == "V":  # (ml_dtypes' own types)
            info = ml_dtypes.iinfo(dtype) if "int" in dtype.name else ml_dtypes.finfo(dtype)
            if info.bits < 8:
                out[dtype] = 2**info.bits
    return out


_NARROW_LIMITS = _narrow_limits()


def _canonical(data: bytes, dtype: np.dtype) -> bytes:
    """The bytes of an array of ``dtype`` as numpy writes its values: a narrow dtype's
    array made from other bytes (``np.frombuffer(b"\\x02", bool)``, a ``view``) holds a
    byte numpy reads as a value but never writes (2 reads True): a bool byte other than
    0 is 1, a narrow type's high bits are cleared, so equal values encode alike. Other
    dtypes' bytes, and canonical ones (checked without a copy), are returned as they
    are."""
    limit = _NARROW_LIMITS.get(dtype)
    if limit is None or not data:
        return data
    octets = np.frombuffer(data, np.uint8)
    if int(octets.max()) < limit:
        return data
    return (octets != 0 if limit == 2 else octets & (limit - 1)).astype(np.uint8).tobytes()


#: dtype -> (wire name, whether the data must be byte-swapped to little-endian).
_DTYPE_INFO: dict[np.dtype, tuple[str, bool]] = {}


_PACKERS = threading.local()  # (a Packer per thread: a snapshot encodes in the background)
#: a packing longer than this drops its Packer: msgpack keeps a Packer's buffer at its
#: largest size, which would hold a large encoding's memory for the thread's life
_KEEP_PACKER_BYTES = 1 << 20


def _packb(obj: Any) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True, strict_types=True)``, with this thread's
    reused ``Packer`` (a record packs every tuple and record inside it on its own: a
    new ``Packer`` for each cost more than the packing)."""
    packer = getattr(_PACKERS, "packer", None)
    if packer is None:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True, strict_types=True)
    try:
        out = packer.pack(obj)
    except BaseException:
        # (msgpack empties the buffer of a failed pack itself; a new Packer does not
        # depend on it)
        _PACKERS.packer = None
        raise
    if len(out) > _KEEP_PACKER_BYTES:
        _PACKERS.packer = None
    return out


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    """``msgpack.ExtType(code, data)`` without its argument checks (``code`` is one of
    the ``_EXT_*`` and ``data`` bytes, always)."""
    return tuple.__new__(msgpack.ExtType, (code, data))


# --------------------------------------------------------------------------- registry

_T = TypeVar("_T", bound=type)

_RECORD_CLASSES: dict[str, type] = {}
_RECORD_NAMES: dict[type, str] = {}
_RECORD_FIELDS: dict[type, tuple[str, ...]] = {}


def register_record(cls: _T, name: str) -> _T:
    """Let ``encode``/``decode`` handle instances of ``cls``, stored under ``name``.

    ``cls`` must be a dataclass (typically a ``flax.struct.dataclass``) or a
    ``typing.NamedTuple`` class. Its instances are written as ``name`` plus a map of
    their fields; ``decode`` rebuilds them by calling ``cls(**fields)``, and only for
    names registered here, so decoding can never construct any other class.

    ``name`` is part of the stored data: keep it stable across versions of your code
    (for example ``"mylib.TrainState"``). Registering the same class under the same
    name again does nothing.

    Args:
      cls: the dataclass or NamedTuple class.
      name: the stable name to store its instances under (a non-empty str).

    Returns:
      ``cls``, unchanged.

    Raises:
      TypeError: ``cls`` is not a dataclass or NamedTuple class, or ``name`` is not a str.
      ValueError: ``name`` is empty, already names a different class, or ``cls`` is
        already registered under a different name.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_record expects a class, got {cls!r}")
    if dataclasses.is_dataclass(cls):
        fields = tuple(f.name for f in dataclasses.fields(cls) if f.init)
    elif issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple):
        fields = tuple(cls._fields)  # type: ignore[attr-defined]
    else:
        raise TypeError(
            f"register_record expects a dataclass (such as a flax.struct.dataclass) or a "
            f"NamedTuple class, got {_type_name(cls)}"
        )
    if not isinstance(name, str):
        raise TypeError(f"a record name must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError("a record name must not be empty")
    existing = _RECORD_CLASSES.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"the record name {name!r} is already registered for {_type_name(existing)}; "
            f"cannot register {_type_name(cls)} under it too"
        )
    existing_name = _RECORD_NAMES.get(cls)
    if existing_name is not None and existing_name != name:
        raise ValueError(
            f"{_type_name(cls)} is already registered under the name {existing_name!r}; "
            f"cannot register it under {name!r} too"
        )
    _RECORD_CLASSES[name] = cls
    _RECORD_NAMES[cls] = name
    _RECORD_FIELDS[cls] = fields
    _ENCODERS[cls] = _record_encoder(name, fields)
    return cls


def record_name(cls: type) -> str | None:
    """The name ``cls`` is registered under (:func:`register_record`), or ``None``.

    >>> record_name(dict) is None
    True
    """
    return _RECORD_NAMES.get(cls)


# --------------------------------------------------------------------------- encoding

_PLAIN = frozenset({type(None), bool, float, str, bytes})

_INDEX, _ITEM, _KEY, _FIELD = range(4)


class _EncodeError(Exception):
    """Raised inside the encoder; collects the path while it unwinds."""

    def __init__(self, value: Any, reason: str, fix: str = _FIX, too_deep: bool = False):
        super().__init__(reason)
        self.value = value
        self.reason = reason
        self.fix = fix
        self.too_deep = too_deep
        self.path: list[tuple[int, Any]] = []  # innermost segment first

    def public(self) -> Exception:
        where = _format_path(self.path[::-1])
        where = f"at {where}" if where else "at the top level"
        if self.too_deep:
            return ValueError(f"cannot encode the value {where}: {self.reason}")
        return TypeError(
            f"cannot encode the value {where} (type {_type_name(type(self.value))}): "
            f"{self.reason}. {self.fix}"
        )


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_path(segments: list[tuple[int, Any]]) -> str:
    if len(segments) > 24:
        segments = [*segments[:12], (-1, None), *segments[-12:]]
    parts = []
    for kind, seg in segments:
        if kind == _INDEX:
            parts.append(f"[{seg}]")
        elif kind == _ITEM:
            parts.append(f"[{_short_repr(seg)}]")
        elif kind == _KEY:
            parts.append(f"<dict key {_short_repr(seg)}>")
        elif kind == _FIELD:
            parts.append(f".{seg}" if parts else seg)
        else:
            parts.append("...")
    return "".join(parts)


def _type_name(t: type) -> str:
    module = getattr(t, "__module__", None)
    qualname = getattr(t, "__qualname__", repr(t))
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


def _too_deep(value: Any) -> _EncodeError:
    return _EncodeError(
        value,
        f"it is nested more than {_MAX_DEPTH} levels deep (does it contain a reference cycle?)",
        too_deep=True,
    )


def _wire(x: Any, depth: int) -> Any:
    """``x`` as plain msgpack-native data (ExtType for tuples, arrays and records)."""
    t = type(x)
    if t in _PLAIN:
        return x
    encoder = _ENCODERS.get(t)
    if encoder is None:
        encoder = _find_encoder(x)
    return encoder(x, depth)


def _wire_int(x: int, depth: int) -> int:
    if _INT_MIN <= x < _INT_END:
        return x
    raise _EncodeError(
        x,
        "the int is outside the 64-bit range [-2**63, 2**64 - 1]",
        "Store it as a str or a float, or split it into smaller ints.",
    )


def _wire_list(x: list | tuple, depth: int) -> list:
    depth += 1
    if depth > _MAX_DEPTH:
        raise _too_deep(x)
    out: list[Any] = []
    append = out.append
    for i, v in enumerate(x):
        t = type(v)
        if t in _PLAIN or (t is int and _INT_MIN <= v < _INT_END):  # (_wire's, inline)
            append(v)
            continue
        try:
            append(_wire(v, depth))
        except _EncodeError as e:
            e.path.append((_INDEX, i))
            raise
    return out


def _wire_tuple(x: tuple, depth: int) -> msgpack.ExtType:
    return _ext(_EXT_TUPLE, _packb(_wire_list(x, depth)))


def _wire_dict(x: dict, depth: int) -> dict:
    depth += 1
    if depth > _MAX_DEPTH:
        raise _too_deep(x)
    out = {}
    for k, v in x.items():
        t = type(k)
        if t is str or (t is int and _INT_MIN <= k < _INT_END):
            k2 = k
        else:
            try:
                k2 = _wire(k, depth)
            except _EncodeError as e:
                e.path.append((_KEY, k))
                raise
        t = type(v)
        if t in _PLAIN or (t is int and _INT_MIN <= v < _INT_END):
            out[k2] = v
            continue
        try:
            out[k2] = _wire(v, depth)
        except _EncodeError as e:
            e.path.append((_ITEM, k))
            raise
    if len(out) != len(x):
        raise _EncodeError(
            x,
            "two of its keys have the same encoding (tuple keys containing NaN?)",
            "Use keys that are equal exactly when their encodings are.",
        )
    return out


def _dtype_info(dtype: np.dtype) -> tuple[str, bool] | None:
    info = _DTYPE_INFO.get(dtype)
    if info is not None or dtype.fields is not None or dtype.subdtype is not None:
        return info
    native = dtype.newbyteorder("=")
    ref = _DTYPES.get(native.name)
    if ref is None or ref != native:
        return None
    swap = dtype.itemsize > 1 and (
        dtype.byteorder == ">" or (dtype.byteorder == "=" and not _LITTLE_ENDIAN_HOST)
    )
    info = _DTYPE_INFO[dtype] = (native.name, swap)
    return info


def _array_triple(a: np.ndarray, value: Any) -> bytes:
    info = _dtype_info(a.dtype)
    if info is None:
        raise _EncodeError(
            value,
            f"dtype {a.dtype} is not supported (only bool, integer, floating and complex "
            f"dtypes, including ml_dtypes types such as bfloat16, can be encoded)",
            "Convert it to a supported dtype, or to plain Python values.",
        )
    if a.nbytes > _MAX_BIN:
        raise _EncodeError(
            value,
            f"the array holds {a.nbytes} bytes; an encoded array holds at most {_MAX_BIN}",
            "Split it into smaller arrays.",
        )
    name, swap = info
    if swap:
        a = a.astype(a.dtype.newbyteorder("<"))
    return _packb([name, list(a.shape), _canonical(a.tobytes(), a.dtype)])


def _wire_ndarray(x: np.ndarray, depth: int) -> msgpack.ExtType:
    return _ext(_EXT_NDARRAY, _array_triple(x, x))


def _wire_npscalar(x: np.generic, depth: int) -> msgpack.ExtType:
    return _ext(_EXT_NPSCALAR, _array_triple(np.asarray(x), x))


def _wire_jax(x: jax.Array, depth: int) -> msgpack.ExtType:
    try:
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = str(jax.random.key_impl(x))
            data = np.asarray(jax.random.key_data(x))
            key_data = _ext(_EXT_NDARRAY, _array_triple(data, x))
            return _ext(_EXT_JAXKEY, _packb([impl, key_data]))
        host = np.asarray(x)
    except _EncodeError:
        raise
    except Exception as e:
        raise _EncodeError(
            x,
            f"could not copy the jax array to the host ({type(e).__name__}: {e}); a value "
            f"traced inside jit/vmap/grad cannot be encoded",
            "Encode concrete values, outside of jax transformations.",
        ) from None
    return _ext(_EXT_JAXARRAY, _array_triple(host, x))


def _record_encoder(name: str, fields: tuple[str, ...]) -> Callable[[Any, int], Any]:
    def encode_record(x: Any, depth: int) -> msgpack.ExtType:
        depth += 1
        if depth > _MAX_DEPTH:
            raise _too_deep(x)
        out = {}
        for field in fields:
            v = getattr(x, field)
            t = type(v)
            if t in _PLAIN or (t is int and _INT_MIN <= v < _INT_END):
                out[field] = v
                continue
            try:
                out[field] = _wire(v, depth)
            except _EncodeError as e:
                e.path.append((_FIELD, field))
                raise
        return _ext(_EXT_RECORD, _packb([name, out]))

    return encode_record


def _find_encoder(x: Any) -> Callable[[Any, int], Any]:
    """The encoder for a type not yet in ``_ENCODERS`` (cached), or an ``_EncodeError``."""
    t = type(x)
    encoder: Callable[[Any, int], Any]
    if isinstance(x, np.generic):
        encoder = _wire_npscalar
    elif isinstance(x, jax.Array):
        encoder = _wire_jax
    else:
        raise _EncodeError(x, _unsupported_reason(x))
    _ENCODERS[t] = encoder
    return encoder


def _unsupported_reason(x: Any) -> str:
    t = type(x)
    if dataclasses.is_dataclass(x):
        return "it is an instance of a dataclass that is not registered"
    if isinstance(x, tuple) and hasattr(t, "_fields"):
        return "it is an instance of a NamedTuple class that is not registered"
    if isinstance(x, np.ndarray):
        return "subclasses of numpy.ndarray are not supported"
    for base in (bool, int, float, str, bytes, list, tuple, dict):
        if isinstance(x, base):
            return (
                f"it is a subclass of {base.__name__}; only the exact built-in types "
                f"are encoded, so that they decode as the same type"
            )
    return "values of this type are not supported"


#: exact type -> encoder(value, depth) returning msgpack-native data.
_ENCODERS: dict[type, Callable[[Any, int], Any]] = {
    int: _wire_int,
    list: _wire_list,
    tuple: _wire_tuple,
    dict: _wire_dict,
    np.ndarray: _wire_ndarray,
}


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as bytes in jaxpop's versioned plain-data format.

    ``docs/encoding.md`` lists the values supported and specifies the format.

    >>> import numpy as np
    >>> data = encode({"lr": 0.1, "steps": (1, 2), "w": np.arange(3, dtype=np.int8)})
    >>> data[:10].hex(" ")  # the header: a 3-array, "jaxpop", format version 1
    '93 c4 06 6a 61 78 70 6f 70 01'
    >>> decode(data)
    {'lr': 0.1, 'steps': (1, 2), 'w': array([0, 1, 2], dtype=int8)}

    Args:
      obj: the value to encode.

    Returns:
      The encoding, starting with the jaxpop header and ``FORMAT_VERSION``.

    Raises:
      TypeError: some value inside ``obj`` cannot be encoded; the message names where it
        sits (for example ``meta_params['opt'][2]``), its type, and how to fix it.
      ValueError: ``obj`` is nested more than 100 levels deep, contains a reference
        cycle, or has a part (an array, a tuple, a record) over MessagePack's 4 GiB limit.
    """
    try:
        wire = obj if type(obj) in _PLAIN else _wire(obj, 0)
        return _packb([_MAGIC, FORMAT_VERSION, wire])
    except _EncodeError as e:
        raise e.public() from None
    except RecursionError:
        raise ValueError(
            "cannot encode the value: it is nested too deeply for Python's recursion limit"
        ) from None
    except UnicodeEncodeError as e:  # (a str msgpack cannot write as UTF-8)
        path = _bad_str_path(obj, ())
        where = f"at {_format_path(list(path))}" if path else "at the top level"
        raise TypeError(
            f"cannot encode the value {where} (type str): it holds a character UTF-8 cannot "
            f"encode ({e.reason}, a lone surrogate from os.fsdecode say). Convert it: store "
            "the bytes, or the text with os.fsencode(...).decode('utf-8', 'replace')."
        ) from None
    except ValueError as e:  # MessagePack's size limits: 2**32 - 1 bytes per bin or ext
        raise ValueError(f"cannot encode the value: {e}") from e


def _bad_str_path(x: Any, path: tuple) -> tuple | None:
    """The path to the first str (value or key) in ``x`` that UTF-8 cannot encode, through
    dicts, lists, tuples and records' fields; ``None`` if none is found there."""
    if isinstance(x, str):
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(x, dict):
        for k, v in x.items():
            if _bad_str_path(k, ()) is not None:
                return (*path, (_KEY, k))
            found = _bad_str_path(v, (*path, (_ITEM, k)))
            if found is not None:
                return found
        return None
    if isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            found = _bad_str_path(v, (*path, (_INDEX, i)))
            if found is not None:
                return found
        return None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _bad_str_path({f.name: getattr(x, f.name) for f in dataclasses.fields(x)}, path)
    return None


# --------------------------------------------------------------------------- decoding


class _DecodeError(Exception):
    """Raised inside the decoder; turned into a ``ValueError`` by ``decode``."""


# How many tuple and record exts enclose the value being decoded, per thread. Each ext is
# decoded by a nested unpack called from the hook; ``msgpack.unpackb`` keeps its ~50 kB
# parse stack on the C stack, so a few hundred nested exts in a hostile file would
# overflow it and crash the process. Past ``c_levels`` levels an ``Unpacker`` (parse
# stack on the heap, about 3x slower per ext) is used instead, and past ``_MAX_DEPTH``
# levels (the most the encoder writes) decoding stops.
class _Nesting(threading.local):
    depth = 0
    c_levels = 8  # set by decode() from the thread stack size in force
    read_only = False  # set by decode(..., read_only=True) for the value it decodes


_nesting = _Nesting()
_C_STACK_LEVELS = 8  # unpackb levels for the default thread stack (8 MiB on Linux)
_C_STACK_LEVEL_BYTES = 128 * 1024  # one unpackb level (~55 kB) with room to spare


def _c_stack_levels() -> int:
    """How many nested ``unpackb`` calls the stack can take, from the stack size in force.

    A program that made its threads' stacks small (``threading.stack_size``) decodes
    with fewer of them; the main thread and default threads get ``_C_STACK_LEVELS``.
    """
    size = threading.stack_size()
    if size == 0 or size >= (_C_STACK_LEVELS + 1) * _C_STACK_LEVEL_BYTES:
        return _C_STACK_LEVELS
    return max(1, size // _C_STACK_LEVEL_BYTES - 1)


# The exts that are levels of the encoder's depth count (tuples and records; lists and
# dicts are native containers parsed without recursion); arrays and keys are leaves.
_NESTING_EXTS = frozenset({_EXT_TUPLE, _EXT_RECORD})


def _unpack(data: bytes | memoryview) -> Any:
    if _nesting.depth < _nesting.c_levels:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=False, ext_hook=_ext_hook
        )
    unpacker = msgpack.Unpacker(
        None,
        raw=False,
        use_list=True,
        strict_map_key=False,
        ext_hook=_ext_hook,
        max_buffer_size=max(len(data), 1),
    )
    unpacker.feed(data)
    try:
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise _DecodeError("an extension value is truncated") from None
    if unpacker.tell() != len(data):
        raise msgpack.ExtraData(obj, b"")
    return obj


def _unpack_list(data: bytes, what: str, length: int | None = None) -> list:
    items = _unpack(data)
    if type(items) is not list or (length is not None and len(items) != length):
        expected = "an array" if length is None else f"an array of {length} elements"
        raise _DecodeError(f"the data of a {what} is not {expected}")
    return items


def _read_array(data: bytes) -> np.ndarray:
    name, shape, raw = _unpack_list(data, "numpy array", 3)
    dtype = _DTYPES.get(name) if type(name) is str else None
    if dtype is None:
        raise _DecodeError(f"unsupported array dtype {_short_repr(name)}")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise _DecodeError(f"invalid array shape {_short_repr(shape)}")
    if type(raw) is not bytes:
        raise _DecodeError("array data is not a bin")
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise _DecodeError(
            f"array data has {len(raw)} bytes, but a {name} array of shape {tuple(shape)} "
            f"needs {math.prod(shape) * dtype.itemsize}"
        )
    raw = _canonical(raw, dtype)  # (a file an older jaxpop wrote may hold others)
    wire_dtype = dtype if dtype.itemsize == 1 else dtype.newbyteorder("<")
    # astype copies: the result is writable (unless asked otherwise) and in native order.
    array = np.frombuffer(raw, dtype=wire_dtype).reshape(shape).astype(dtype)
    if _nesting.read_only:
        array.flags.writeable = False
    return array


def _read_npscalar(data: bytes) -> np.generic:
    a = _read_array(data)
    if a.ndim:
        raise _DecodeError("a numpy scalar has a non-empty shape")
    return a[()]  # type: ignore[return-value]  # numpy stubs: an array; for 0-d, a scalar


def _read_jax_array(data: bytes) -> jax.Array:
    return jnp.asarray(_read_array(data))


def _read_jax_key(data: bytes) -> jax.Array:
    impl, key_data = _unpack_list(data, "jax PRNG key", 2)
    if type(impl) is not str or type(key_data) is not np.ndarray:
        raise _DecodeError("a jax PRNG key is not [impl name, key data array]")
    try:
        return jax.random.wrap_key_data(jnp.asarray(key_data), impl=impl)
    except Exception as e:
        raise _DecodeError(
            f"cannot rebuild a jax PRNG key of implementation {_short_repr(impl)}: "
            f"{type(e).__name__}: {e}"
        ) from None


def _read_record(data: bytes) -> Any:
    name, fields = _unpack_list(data, "record", 2)
    if type(name) is not str or type(fields) is not dict:
        raise _DecodeError("a record is not [name, map of fields]")
    cls = _RECORD_CLASSES.get(name)
    if cls is None:
        raise _DecodeError(
            f"the data contains a record named {name!r}, and no class is registered under "
            f"that name (only registered classes are ever constructed); import the module "
            f"that calls jaxpop.encoding.register_record(cls, {name!r}) before decoding"
        )
    known = _RECORD_FIELDS[cls]
    unknown = [k for k in fields if type(k) is not str or k not in known]
    if unknown:
        raise _DecodeError(
            f"the record {name!r} ({_type_name(cls)}) has no field(s) "
            f"{', '.join(_short_repr(k) for k in unknown)}"
        )
    try:
        return cls(**fields)
    except Exception as e:
        raise _DecodeError(
            f"cannot rebuild the record {name!r} ({_type_name(cls)}): {type(e).__name__}: {e}"
        ) from None


_EXT_READERS: dict[int, Callable[[bytes], Any]] = {
    _EXT_TUPLE: lambda data: tuple(_unpack_list(data, "tuple")),
    _EXT_NDARRAY: _read_array,
    _EXT_NPSCALAR: _read_npscalar,
    _EXT_JAXARRAY: _read_jax_array,
    _EXT_JAXKEY: _read_jax_key,
    _EXT_RECORD: _read_record,
}


def _ext_hook(code: int, data: bytes) -> Any:
    reader = _EXT_READERS.get(code)
    if reader is None:
        raise _DecodeError(f"unknown extension type {code}")
    if code not in _NESTING_EXTS:  # an array or key: at most two unpacks below, no deeper
        return reader(data)
    nesting = _nesting
    depth = nesting.depth + 1
    if depth > _MAX_DEPTH:
        raise _DecodeError(f"it is nested more than {_MAX_DEPTH} levels deep")
    nesting.depth = depth
    try:
        return reader(data)
    finally:
        nesting.depth = depth - 1


def _reject_timestamps(obj: Any) -> None:
    """Raise if a msgpack ``Timestamp`` (never written by jaxpop) hides in ``obj``."""
    stack = [obj]
    while stack:
        x = stack.pop()
        t = type(x)
        if t is list or t is tuple:
            stack.extend(x)
        elif t is dict:
            stack.extend(x.keys())
            stack.extend(x.values())
        elif t is msgpack.Timestamp:
            raise _DecodeError("the data contains a msgpack timestamp (ext type -1)")
        elif t in _RECORD_FIELDS:
            stack.extend(getattr(x, f) for f in _RECORD_FIELDS[t])


def _read_header(data: bytes) -> int:
    """Check the header; return the payload's offset."""
    if data[:9] != _HEADER:
        if not data:
            raise ValueError("not jaxpop-encoded data: the input is empty")
        if len(data) < len(_HEADER) and _HEADER.startswith(data):
            raise ValueError("truncated jaxpop data: it ends inside the header")
        seed = (
            "; it starts as a pickle does: a state of learned_optimization's controller "
            "(population.state) is migrated by `python -m jaxpop migrate-seed-state DIR`"
            if data[:1] == b"\x80"  # (pickle protocol 2 and later)
            else ""
        )
        raise ValueError(
            "not jaxpop-encoded data: it does not start with the jaxpop header "
            f"(msgpack [b'jaxpop', version, payload]){seed}"
        )
    if len(data) < 10:
        raise ValueError("truncated jaxpop data: it ends inside the header")
    first = data[9]
    if first < 0x80:
        version, offset = first, 10
    else:
        width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(first)
        if width is None:
            raise ValueError("corrupt jaxpop data: the format version is not an unsigned int")
        if len(data) < 10 + width:
            raise ValueError("truncated jaxpop data: it ends inside the header")
        version, offset = int.from_bytes(data[10 : 10 + width], "big"), 10 + width
    if version > FORMAT_VERSION:
        raise ValueError(
            f"this data was written by a newer jaxpop format version {version} (this "
            f"version of jaxpop reads format versions up to {FORMAT_VERSION}); upgrade "
            f"jaxpop to read it"
        )
    if version < 1:
        raise ValueError(f"corrupt jaxpop data: invalid format version {version}")
    return offset


def decode(data: bytes | bytearray | memoryview, *, read_only: bool = False) -> Any:
    """Decode bytes written by :func:`encode`.

    Never runs code named by the data: it builds only plain values, numpy/jax arrays of
    supported dtypes, and instances of classes registered with :func:`register_record`
    (calling their constructors with the decoded fields).

    Args:
      data: the encoding.
      read_only: make the decoded numpy arrays read-only (as a controller keeps what it
        stores: a journal's records are decoded so); else they are fresh and writable.

    Returns:
      The decoded value.

    Raises:
      ValueError: ``data`` is not a complete, valid jaxpop encoding: a wrong header,
        a newer format version, truncated, trailing or corrupt data, an unregistered
        record name, an unsupported dtype, ...
      TypeError: ``data`` is not bytes-like.
    """
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"decode expects bytes, got {type(data).__name__}")
        data = bytes(data)
    offset = _read_header(data)
    if _nesting.depth == 0:  # not a decode nested in a record's constructor
        _nesting.c_levels = _c_stack_levels()
    outer_read_only = _nesting.read_only
    _nesting.read_only = read_only or outer_read_only
    try:
        obj = _unpack(memoryview(data)[offset:])
        if any(marker in data for marker in _TIMESTAMP_MARKERS):
            _reject_timestamps(obj)
    except _DecodeError as e:
        raise ValueError(f"invalid jaxpop data: {e}") from None
    except msgpack.ExtraData:
        raise ValueError("invalid jaxpop data: unexpected bytes after the encoded value") from None
    except MemoryError:
        raise
    except Exception as e:
        raise ValueError(f"truncated or corrupt jaxpop data ({type(e).__name__}: {e})") from e
    finally:
        _nesting.read_only = outer_read_only
    return obj
