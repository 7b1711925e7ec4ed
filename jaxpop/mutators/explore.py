"""Explore: declarative hyperparameter spaces and pure, keyed ways to move within them.

A space is plain data: :func:`uniform`, :func:`log_uniform`, :func:`randint` and
:func:`choice` leaves, constants, and dicts of spaces. :func:`sample`, :func:`perturb`,
:func:`resample`, :func:`explore` and :func:`clip` return new values that always lie
inside the space, as a pure function of the key: in numpy on the host, in ``jax.numpy``
inside ``jit`` / ``vmap``. ``docs/mutators.md#explore-spaces`` specifies each leaf and
operation and the host and device paths.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpop.keys import as_raw_key
from jaxpop.mutators._host_random import HostRandom

__all__ = [
    "Choice",
    "LogUniform",
    "RandInt",
    "Space",
    "Uniform",
    "choice",
    "clip",
    "explore",
    "is_space",
    "log_uniform",
    "perturb",
    "randint",
    "resample",
    "sample",
    "uniform",
    "validate_space",
]

DEFAULT_FACTORS = (0.8, 1.2)


# -- the space leaves ---------------------------------------------------------------------
class _Leaf:
    """The base of the four leaves below: ``isinstance(x, _Leaf)`` is one quick check."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class Uniform(_Leaf):
    """A float in ``[low, high]``, sampled uniformly. Build with :func:`uniform`."""

    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class LogUniform(_Leaf):
    """A float in ``[low, high]`` (``low > 0``), sampled uniformly in ``log``."""

    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class RandInt(_Leaf):
    """An integer in ``[low, high)``, sampled uniformly. Build with :func:`randint`."""

    low: int
    high: int


@dataclasses.dataclass(frozen=True)
class Choice(_Leaf):
    """One of ``values`` (a tuple), sampled uniformly. Build with :func:`choice`."""

    values: tuple
    numeric: bool = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "numeric", all(_is_number(v) for v in self.values))


Space = Uniform | LogUniform | RandInt | Choice
_Numeric = Uniform | LogUniform | RandInt


def _is_number(v: Any) -> bool:
    if type(v) is float or type(v) is int:  # the usual case, without the ABC check
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _finite_pair(name: str, low: Any, high: Any) -> tuple[float, float]:
    if not (_is_number(low) and _is_number(high)):
        raise TypeError(f"{name}(low, high) takes two numbers, got {low!r} and {high!r}")
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{name} needs finite low < high, got ({low}, {high})")
    return low, high


def uniform(low: float, high: float) -> Uniform:
    """A float hyperparameter in ``[low, high]`` (Ray Tune: ``tune.uniform``).

    >>> uniform(0, 1)
    Uniform(low=0.0, high=1.0)
    """
    return Uniform(*_finite_pair("uniform", low, high))


def log_uniform(low: float, high: float) -> LogUniform:
    """A positive float in ``[low, high]``, uniform in ``log`` (Ray Tune: ``tune.loguniform``)."""
    low, high = _finite_pair("log_uniform", low, high)
    if low <= 0:
        raise ValueError(f"log_uniform needs 0 < low, got low={low}")
    return LogUniform(low, high)


def randint(low: int, high: int) -> RandInt:
    """An integer hyperparameter in ``[low, high)`` (Ray Tune: ``tune.randint``).

    >>> clip({"layers": randint(1, 5)}, {"layers": 9})  # high is excluded
    {'layers': 4}"""
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (low, high)):
        raise TypeError(f"randint(low, high) takes two ints, got {low!r} and {high!r}")
    if not low < high:
        raise ValueError(f"randint needs low < high (high is excluded), got ({low}, {high})")
    if max(abs(int(low)), abs(int(high))) > 2**53:
        raise ValueError(
            f"randint bounds must lie within +-2**53 (where float64 still counts every "
            f"integer), got ({low}, {high})"
        )
    return RandInt(int(low), int(high))


def choice(values: Sequence[Any]) -> Choice:
    """One of ``values`` (Ray Tune: ``tune.choice``, or a list in ``hyperparam_mutations``).

    Perturbing moves to a neighbour in this order, so list ordered values in order.
    """
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise TypeError(f"choice takes a list or tuple of values, got {values!r:.80}")
    if not values:
        raise ValueError("choice needs at least one value")
    if any(_is_number(v) and v != v for v in values):  # (host and device told it apart)
        raise ValueError(
            f"choice values must not be NaN (no value is nearest one), got {values!r:.80}"
        )
    return Choice(tuple(values))


def is_space(x: Any) -> bool:
    """Whether ``x`` is a space leaf (``uniform``, ``log_uniform``, ``randint``, ``choice``).

    >>> is_space(choice([32, 64])), is_space(0.5)  # a number in a space is a constant
    (True, False)
    """
    return isinstance(x, _Leaf)


# -- walking a space ---------------------------------------------------------------------
Path = tuple[Any, ...]


def _where(path: Path) -> str:
    return "meta_params" + "".join(f"[{k!r}]" for k in path)


def _leaves(space: Any, meta: Any, path: Path, out: list) -> None:
    """Appends ``(path, leaf_space, value)`` for every space leaf, in the space's order."""
    if isinstance(space, _Leaf):
        out.append((path, space, meta))
    elif _is_mapping(space):
        meta_is_mapping = _is_mapping(meta)
        if meta is not _NO_VALUE and not meta_is_mapping:
            raise TypeError(
                f"{_where(path)} is a {type(meta).__name__}, but the space has a dict "
                f"there (keys {list(space)})"
            )
        for k, sub in space.items():
            if meta_is_mapping and k in meta:
                value = meta[k]
            elif meta is _NO_VALUE or not _has_leaves(sub):
                value = _NO_VALUE  # (a constant needs no initial value)
            else:
                raise KeyError(
                    f"{_where((*path, k))} is missing: the space explores it; add an initial "
                    "value to every worker's meta_params (or draw them with sample)"
                )
            if isinstance(sub, _Leaf):  # the first branch above, without a call
                out.append(((*path, k), sub, value))
            else:
                _leaves(sub, value, (*path, k), out)
    elif isinstance(space, (list, tuple, set, frozenset)):
        raise TypeError(
            f"the space holds a {type(space).__name__} at {_where(path)}: write choice([...]) "
            "for a choice between values (a space is a leaf or a dict of spaces)"
        )


def _is_mapping(x: Any) -> bool:
    return type(x) is dict or isinstance(x, Mapping)  # (a plain dict without the ABC check)


def _has_leaves(space: Any) -> bool:
    if isinstance(space, _Leaf):
        return True
    return isinstance(space, Mapping) and any(_has_leaves(sub) for sub in space.values())


def _rebuild(space: Any, meta: Any, new: Any) -> Any:
    """``meta`` with every space leaf replaced by ``next(new)`` and constants set."""
    if isinstance(space, _Leaf):
        return next(new)
    if _is_mapping(space):
        out = {} if meta is _NO_VALUE else dict(meta)
        for k, sub in space.items():
            if isinstance(sub, _Leaf):  # the first branch above, without a call
                out[k] = next(new)
                continue
            value = _NO_VALUE if meta is _NO_VALUE or k not in meta else meta[k]
            out[k] = _rebuild(sub, value, new)
        return out if meta is _NO_VALUE else _mapping_like(meta, out)
    return space  # a constant


def _mapping_like(meta: Any, out: dict) -> Any:
    """``out`` as a mapping of ``meta``'s type (a ``FrozenDict`` stays one): how explore
    (and PB2's bandit) rebuilds the hyperparameters it changed."""
    return out if isinstance(meta, dict) else type(meta)(out)


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


_NO_VALUE = _NoValue()


@functools.partial(jax.jit, static_argnums=1)
def _uniform_draws(
    key: jax.Array, shapes: tuple[tuple[int, ...], ...]
) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """Three uniforms in ``[0, 1)`` per element of each leaf: (resample?, sample, move);
    and each leaf's key."""
    keys = jax.random.split(key, len(shapes))
    draws = tuple(jax.random.uniform(k, (3, *s)) for k, s in zip(keys, shapes, strict=True))
    return draws, keys


#: Every integer up to this is a float32: the device's leaf formulas (float32 without
#: x64) are exact for a ``randint`` within it.
_EXACT_IN_FLOAT32 = 2**24


def _device_randint(key: jax.Array, shape: tuple[int, ...], space: RandInt, dtype: Any) -> Any:
    """Uniform integers of ``space`` as ``dtype`` (an integer type that holds them),
    exact at any span: offsets from ``low`` drawn in the unsigned type of ``dtype``'s
    width (or 32 bits), added in ``dtype`` (where the sum wraps back into the space)."""
    bits = max(8 * np.dtype(dtype).itemsize, 32)
    unsigned = jnp.uint64 if bits == 64 else jnp.uint32
    span = space.high - space.low
    if span >= 2**bits:  # every value of the width
        offset = jax.random.bits(key, shape, unsigned)
    else:
        high = np.asarray(span, unsigned)  # (a Python int past int32 is refused)
        offset = jax.random.randint(key, shape, np.asarray(0, unsigned), high, dtype=unsigned)
    return offset.astype(dtype) + jnp.asarray(space.low).astype(dtype)


def _exact_randint(
    op: str, space: RandInt, value: Any, out: Any, u: Any, key: Any, probability: float
) -> Any:
    """A ``randint`` leaf's result on device, held in an integer type, where the leaf
    formulas (float32 without x64) would round: past 2**24 a value kept is clipped, and
    a fresh one drawn (:func:`_device_randint`), in the integer type itself. A perturbed
    value stays as the formulas give it (a move of 0.8x or 1.2x, to float32's
    precision)."""
    dtype = out.dtype
    if op == "perturb" or not jnp.issubdtype(dtype, jnp.integer):
        return out
    if max(abs(space.low), abs(space.high - 1)) <= _EXACT_IN_FLOAT32:
        return out
    if op == "sample":
        return _device_randint(jax.random.fold_in(key, 1), tuple(np.shape(out)), space, dtype)
    top = space.high - 1
    if isinstance(value, int):  # (a Python int: may be past the type; clipped first)
        inside = jnp.asarray(min(max(value, space.low), top), dtype)
    else:
        inside = jnp.clip(jnp.asarray(value), space.low, top).astype(dtype)
    kept = inside if op in ("clip", "resample") else out  # (explore: the perturbed value)
    if op == "clip" or probability <= 0:
        return kept
    fresh = _device_randint(jax.random.fold_in(key, 1), tuple(np.shape(out)), space, dtype)
    return jnp.where(u[0] < probability, fresh, kept)


def _is_traced(x: Any) -> bool:
    # a numpy array (the usual host key) never is: no isinstance check for it
    return type(x) is not np.ndarray and isinstance(x, jax.core.Tracer)


_UINT32 = np.dtype(np.uint32)


def _host_key(key: Any) -> np.ndarray:
    """A raw ``uint32[2]`` key on the host, from a raw or typed key."""
    if type(key) is np.ndarray and key.dtype is _UINT32 and key.shape == (2,):  # the usual case
        return key
    if hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return as_raw_key(key)  # (a float key was cut to ints: [0.2, 0] drew as [0.9, 0])


def _on_device(key: Any, leaves: list) -> bool:
    return _is_traced(key) or any(isinstance(v, jax.Array) for _, _, v in leaves)


class _Scalars:
    """The functions the leaf formulas take from numpy, on Python numbers: the usual
    host case (scalar hyperparameters), where numpy's per-call overhead on 0-d values is
    many times the arithmetic. Same IEEE double arithmetic, same rounding (half to even)."""

    __slots__ = ()  # (no instance dict to look in first: quicker ``xp.clip``)

    @staticmethod
    def clip(x: float, low: float, high: float) -> float:
        return min(max(x, low), high)

    floor = staticmethod(math.floor)
    exp = staticmethod(math.exp)

    @staticmethod
    def round(x: float) -> float:  # np.round's: a float, infinities kept (clipped later)
        return float(round(x)) if math.isfinite(x) else x

    @staticmethod
    def sign(x: float) -> float:
        return float(x > 0) - float(x < 0)

    @staticmethod
    def where(condition: bool, a: Any, b: Any) -> Any:
        return a if condition else b


_SCALARS = _Scalars()


def _index(x: Any, xp: Any) -> Any:
    """``x`` as an index (int32 for arrays)."""
    return int(x) if xp is _SCALARS else x.astype(np.int32)


# -- one leaf ---------------------------------------------------------------------------
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _float_bounds(space: _Numeric, x: Any) -> tuple[float, float]:
    """A float space's bounds, moved inside the range of ``x``'s float dtype: a bound
    past it would become +-inf there (and ``inf - inf`` NaN). A Python float (the host's
    float64, which holds every bound) has them as they are."""
    low, high = space.low, space.high
    if low >= -_FLOAT32_MAX and high <= _FLOAT32_MAX:  # the usual case: any float holds them
        return low, high
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        return low, high
    big = float(jnp.finfo(dtype).max)
    return max(low, -big), min(high, big)


def _sample_numeric(space: _Numeric, u: Any, xp: Any) -> Any:
    if isinstance(space, Uniform):  # not low + u * (high - low): that overflows for wide spans
        low, high = _float_bounds(space, u)
        return xp.clip(low * (1 - u) + high * u, low, high)
    if isinstance(space, LogUniform):  # (within the dtype's range too: past it, exp is inf)
        low, high = _float_bounds(space, u)
        lo, hi = math.log(low), math.log(high)
        return xp.clip(xp.exp(lo + u * (hi - lo)), low, high)
    # RandInt (as floats: an int past int32, such as 2**31, cannot enter a jnp operation)
    low, top = float(space.low), float(space.high - 1)
    return xp.clip(xp.floor(low + u * float(space.high - space.low)), low, top)


def _factor(u: Any, factors: tuple[float, ...], xp: Any) -> Any:
    if xp is _SCALARS:  # the line below on a Python float, without the calls through xp
        return factors[min(max(math.floor(u * len(factors)), 0), len(factors) - 1)]
    index = _index(xp.clip(xp.floor(u * len(factors)), 0, len(factors) - 1), xp)
    return xp.asarray(factors, dtype=u.dtype)[index]


def _perturb_numeric(space: _Numeric, x: Any, u: Any, factors: tuple[float, ...], xp: Any) -> Any:
    f = _factor(u, factors, xp)
    if isinstance(space, RandInt):
        x = xp.round(x)
        moved = xp.round(x * f)
        # a small integer times 0.8 or 1.2 rounds back to itself: move by one instead, the
        # way x * f moves (away from 0 for f > 1, towards it for f < 1; 0 up for f > 1)
        step = xp.sign(f - 1.0) * xp.where(x < 0, -1.0, 1.0)
        moved = xp.where(moved == x, x + step, moved)
        return xp.clip(moved, float(space.low), float(space.high - 1))
    return xp.clip(x * f, *_float_bounds(space, x))


def _clip_numeric(space: _Numeric, x: Any, xp: Any) -> Any:
    if isinstance(space, RandInt):
        return xp.clip(xp.round(x), float(space.low), float(space.high - 1))
    return xp.clip(x, *_float_bounds(space, x))


def _nearest_index(values: Any, x: Any, xp: Any) -> Any:
    """The index of the value nearest each ``x`` (+-inf: the largest or smallest value,
    which every distance would tie)."""
    with np.errstate(invalid="ignore"):  # (inf - inf: replaced below)
        nearest = xp.argmin(xp.abs(values - x[..., None]), axis=-1)
    nearest = xp.where(x == np.inf, xp.argmax(values), nearest)
    return xp.where(x == -np.inf, xp.argmin(values), nearest).astype(np.int32)


def _neighbour(index: Any, u: Any, n: int, xp: Any) -> Any:
    """One step left or right (each with probability 1/2), reflected at the ends."""
    if xp is _SCALARS:  # the lines below on Python ints, without the calls through xp
        step = -1 if u < 0.5 else 1
        moved = index + step if 0 <= index + step < n else index - step
        return min(max(moved, 0), n - 1)
    step = xp.where(u < 0.5, -1, 1)
    moved = index + step
    moved = xp.where((moved < 0) | (moved >= n), index - step, moved)
    return _index(xp.clip(moved, 0, n - 1), xp)


def _host_choice_index(space: Choice, value: Any, path: Path) -> int | None:
    """The index of ``value`` in the list (exact match, else nearest number), or None."""
    value_is_number = _is_number(value)
    for i, v in enumerate(space.values):
        if _is_number(v) == value_is_number and v == value:
            return i
    if space.numeric and _is_number(value):  # (an int past float64 is +-inf here)
        return int(
            _nearest_index(
                np.array([_as_float(v) for v in space.values]), np.array(_as_float(value)), np
            )
        )
    return None


def _leaf(
    op: str,
    space: Space,
    value: Any,
    u: Any,
    xp: Any,
    path: Path,
    probability: float,
    factors: tuple[float, ...],
) -> Any:
    """The new value of one leaf. ``op``: sample / perturb / resample / explore / clip."""
    if isinstance(space, Choice):
        return _choice_leaf(op, space, value, u, xp, path, probability)
    if op == "sample":
        return _sample_numeric(space, u[1], xp)
    if xp is jnp and jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating):
        # a traced NaN cannot raise (host values do): a fresh draw (clip: low) replaces it
        fill = _float_bounds(space, value)[0] if u is None else _sample_numeric(space, u[1], xp)
        value = xp.where(xp.isnan(value), fill, value)
    if op == "clip":
        return _clip_numeric(space, value, xp)
    if op == "resample":
        kept = _clip_numeric(space, value, xp)
    else:  # perturb, explore
        kept = _perturb_numeric(space, value, u[2], factors, xp)
    if op == "perturb" or probability <= 0:
        return kept
    if xp is _SCALARS:  # a Python branch: the fresh value is computed only when chosen
        return _sample_numeric(space, u[1], xp) if u[0] < probability else kept
    return xp.where(u[0] < probability, _sample_numeric(space, u[1], xp), kept)


def _choice_leaf(
    op: str, space: Choice, value: Any, u: Any, xp: Any, path: Path, probability: float
) -> Any:
    n = len(space.values)
    fresh = None if u is None else _clip_index(xp.floor(u[1] * n), n, xp)
    if op == "sample":
        if xp is jnp and not space.numeric:
            raise TypeError(
                f"{_where(path)}: a choice between non-numbers ({list(space.values)!r:.80}) "
                "cannot be sampled with a traced key"
            )
        return fresh
    # element-wise over an array (or a list of numbers); a choice between non-numbers
    # takes a tuple or list as one of its values
    elementwise = xp is not _SCALARS and not _one_choice(space, value) and np.ndim(value) > 0
    if xp is jnp or elementwise:
        if not space.numeric:
            raise TypeError(
                f"{_where(path)}: a choice between non-numbers ({list(space.values)!r:.80}) "
                + (
                    "works on host values only (Python or numpy), not on jax arrays"
                    if xp is jnp
                    else "works on single values only (a Python or numpy scalar), not on "
                    f"an array of shape {np.shape(value)}"
                )
            )
        dtype = jnp.asarray(0.0).dtype if xp is jnp else np.float64
        values = xp.asarray(space.values, dtype=dtype)
        current = _nearest_index(values, xp.asarray(value, dtype=dtype), xp)
        current = _exact_choice_index(space, value, current, np.dtype(dtype), xp)
    else:
        if isinstance(value, np.ndarray):  # 0-d: its scalar (a number, as 0.9 is)
            value = value[()]
        current = _host_choice_index(space, value, path)
        if current is None:
            if op == "clip":
                raise ValueError(
                    f"{_where(path)} = {value!r:.60} is not one of the choice's values "
                    f"{list(space.values)!r:.120}"
                )
            return fresh  # an unknown value is replaced by a fresh draw
    if op == "clip":
        return current
    kept = current if op == "resample" else _neighbour(current, u[2], n, xp)
    if op == "perturb" or probability <= 0:
        return kept
    return xp.where(u[0] < probability, fresh, kept)


def _exact_choice_index(
    space: Choice, value: Any, current: Any, float_type: np.dtype, xp: Any
) -> Any:
    """``current`` (the index of the value nearest ``value`` in ``float_type``), or, for
    an integer-typed ``value`` and a choice of ints that type holds, some of which
    ``float_type`` rounds (past 2**24 in float32: neighbours looked alike, and a copy
    moved to the wrong one), the index found by exact comparison where ``value`` is one
    of the choice's values (the nearest by float where it is not)."""
    value_type = np.dtype((jnp if xp is jnp else np).asarray(value).dtype)
    if not np.issubdtype(value_type, np.integer):
        return current
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in space.values):
        return current
    # (as Python ints: abs() of numpy's lowest int64 overflows, with a warning)
    ints = [int(v) for v in space.values]
    info, exact = np.iinfo(value_type), 2 ** (np.finfo(float_type).nmant + 1)
    if not all(info.min <= v <= info.max for v in ints) or all(abs(v) <= exact for v in ints):
        return current
    matches = xp.asarray(ints, dtype=value_type) == xp.asarray(value)[..., None]
    found = xp.argmax(matches, axis=-1).astype(np.int32)
    return xp.where(matches.any(axis=-1), found, current)


def _clip_index(index: Any, n: int, xp: Any) -> Any:
    return _index(xp.clip(index, 0, n - 1), xp)


# -- turning a leaf's result into the value's own kind -----------------------------------
def _finish_scalar(space: Space, new: Any, value: Any) -> Any:
    """:func:`_finish_host` for a Python value (or none): a Python scalar."""
    if isinstance(value, np.generic):  # np.float64 and np.str_ pass for Python scalars
        return _finish_host(space, new, value)
    if isinstance(space, Choice):
        return space.values[int(new)]
    return int(new) if isinstance(space, RandInt) else float(new)


def _choice_array(space: Choice) -> np.ndarray:
    """A choice's values as one array; an array of objects where one dtype would change
    some of them (numbers with strings: ``np.asarray([1, "a"])`` makes ``"1"``)."""
    values = np.asarray(space.values)
    if values.ndim == 1 and (
        values.dtype.kind not in "US" or all(isinstance(v, str) for v in space.values)
    ):
        return values
    out = np.empty(len(space.values), dtype=object)
    for i, v in enumerate(space.values):
        out[i] = v
    return out


def _finish_host(space: Space, new: Any, value: Any) -> Any:
    if isinstance(space, Choice):
        if np.ndim(new) == 0 and not isinstance(value, (np.ndarray, np.generic)):
            return space.values[int(new)]
        values = _choice_array(space)
        out = values[new]
        if values.dtype == object:  # (values of several kinds: each as the list holds it)
            return out
        if value is _NO_VALUE or not _both_numbers(out.dtype, value.dtype):
            # the space's own values: a number drawn for a str array stays a number (not
            # "0"), a str is not cut to the value's width ("adam" in a "<U3" array)
            return out
        return out.astype(value.dtype)
    python = value is _NO_VALUE or not isinstance(value, (np.ndarray, np.generic))
    if isinstance(space, RandInt):
        if python:
            return int(new)
        out = np.asarray(new).astype(value.dtype)
        return out[()] if isinstance(value, np.generic) else out
    if python:
        return float(new)
    # (jnp.issubdtype: ml_dtypes' bfloat16 is a float too)
    dtype = value.dtype if jnp.issubdtype(value.dtype, jnp.floating) else np.dtype(np.float64)
    out = np.clip(np.asarray(new).astype(dtype), *_bounds_in(space, dtype)).astype(dtype)
    return out[()] if isinstance(value, np.generic) else out


def _bounds_in(space: _Numeric, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """A float space's ``[low, high]`` as values of ``dtype`` that lie inside it: a bound
    ``dtype`` cannot hold moves one step inwards (``uniform(0, 0.1)`` in float32 ends
    at 0.099999994, as float32's 0.1 is 0.10000000149). If no value of ``dtype`` lies
    inside, the bounds as ``dtype`` rounds them.

    >>> [float(b) for b in _bounds_in(uniform(0.0, 0.1), np.dtype(np.float32))]
    [0.0, 0.09999999403953552]
    """
    with np.errstate(over="ignore"):  # a bound past dtype's range is +-inf: moved in below
        low, high = np.asarray(space.low, dtype), np.asarray(space.high, dtype)
    inner_low, inner_high = low, high
    if float(low) < space.low:
        inner_low = np.nextafter(low, np.asarray(np.inf, dtype))
    if float(high) > space.high:
        inner_high = np.nextafter(high, np.asarray(-np.inf, dtype))
    return (inner_low, inner_high) if inner_low <= inner_high else (low, high)


def _both_numbers(a: np.dtype, b: np.dtype) -> bool:
    """Whether both are number types (``jnp.issubdtype``: bfloat16 is one too)."""
    return bool(jnp.issubdtype(a, jnp.number) and jnp.issubdtype(b, jnp.number))


def _finish_device(space: Space, new: Any, value: Any) -> Any:
    if isinstance(space, Choice):
        values = jnp.asarray(space.values)
        out = values[new]
        return out if value is _NO_VALUE else out.astype(jnp.asarray(value).dtype)
    if value is _NO_VALUE:
        dtype = jnp.asarray(0 if isinstance(space, RandInt) else 0.0).dtype
    else:
        dtype = jnp.asarray(value).dtype
        if not isinstance(space, RandInt) and not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.asarray(0.0).dtype
    if isinstance(space, RandInt):
        if not jnp.issubdtype(dtype, jnp.integer):
            return new.astype(dtype)
        # computed in float32 (without x64): past 2**24, high - 1 may round up to high
        return jnp.clip(new.astype(dtype), space.low, space.high - 1).astype(dtype)
    return jnp.clip(new.astype(dtype), *_device_bounds(space, np.dtype(dtype)))


def _device_bounds(space: _Numeric, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_bounds_in` for a computation on device, where a subnormal number is 0
    (XLA flushes those of float32, and of bfloat16 and float64, which share or pass its
    exponent range; float16's are float32 normals): a bound between 0 and the smallest
    normal number moves to it, so a flushed draw is clipped back into a space that
    excludes 0 (``log_uniform(1e-40, 1e-30)`` in float32 gave 0)."""
    low, high = _bounds_in(space, dtype)
    info = jnp.finfo(dtype)
    if info.minexp > jnp.finfo(np.float32).minexp:
        return low, high
    tiny = np.asarray(info.tiny, dtype)
    if space.low > 0 and low < tiny:
        low = tiny
    if space.high < 0 and high > -tiny:
        high = -tiny
    return low, high


def _check_device_holds(space: Space, dtype: Any, path: Path) -> None:
    """Raises a ``ValueError`` where a float space excludes 0 and holds no normal number
    of ``dtype``: on device every value there is 0 (see :func:`_device_bounds`)."""
    if not isinstance(space, (Uniform, LogUniform)) or not jnp.issubdtype(dtype, jnp.floating):
        return
    if not _device_fits(space, np.dtype(dtype)):  # (cached: read at every device explore)
        raise ValueError(
            f"{_where(path)} is stored as {np.dtype(dtype)}, whose smallest normal number "
            f"({float(jnp.finfo(dtype).tiny):.3g}) is past its space {space}: on device a "
            "number below it is 0, outside the space; store it as a wider type (float64 "
            "with x64) or rescale the hyperparameter"
        )


def _nan_message(space: Space, path: Path) -> str:
    return (
        f"{_where(path)} is NaN, which is outside its space {space}; a NaN "
        "hyperparameter usually means the run that produced it diverged"
    )


def _check_holds(space: Space, dtype: Any, path: Path) -> None:
    """Raises a ``ValueError`` where values of ``dtype`` cannot hold every value the space
    gives (``int8`` for ``randint(0, 200)``, ``int32`` for ``randint(0, 2**40)``,
    ``bfloat16`` for ``randint(0, 1000)``, an integer array for ``choice([0.5, 1.0])``):
    a result cast to ``dtype`` would wrap around, round or be cut, outside the space."""
    dtype = np.dtype(dtype)
    try:
        fits = _fits(space, dtype)
    except TypeError:  # (a choice of unhashable values: not cached)
        fits = _fits.__wrapped__(space, dtype)
    if not fits:
        raise ValueError(
            f"{_where(path)} is stored as {dtype}, which cannot hold every value of its "
            f"space {space}: an explored value would wrap around, round, be cut or become "
            "inf or 0, outside the space; store it as a wider type (an int64, a float32, "
            "or a float for a choice of fractions)"
        )


@functools.lru_cache(maxsize=256)
def _device_fits(space: _Numeric, dtype: np.dtype) -> bool:
    """Whether a float space holds a normal number of ``dtype`` (see
    :func:`_check_device_holds`). Spaces are frozen dataclasses: hashable."""
    low, high = (float(b) for b in _device_bounds(space, dtype))
    return space.low <= low <= high <= space.high


@functools.lru_cache(maxsize=256)
def _fits(space: Space, dtype: np.dtype) -> bool:
    """Whether ``dtype`` holds every value of ``space`` (see :func:`_check_holds`)."""
    if isinstance(space, RandInt):
        if jnp.issubdtype(dtype, jnp.integer):
            info = jnp.iinfo(dtype)
            return bool(info.min <= space.low and space.high - 1 <= info.max)
        if jnp.issubdtype(dtype, jnp.floating):  # every integer up to 2**(nmant + 1)
            return max(abs(space.low), abs(space.high - 1)) <= 2 ** (jnp.finfo(dtype).nmant + 1)
        return True
    if isinstance(space, Choice) and space.numeric and jnp.issubdtype(dtype, jnp.number):
        return all(_holds(dtype, v) for v in space.values)
    if isinstance(space, (Uniform, LogUniform)) and jnp.issubdtype(dtype, jnp.floating):
        # a float type holds some value of the space (a span past its range is clamped
        # to the range): float16 has none of uniform(1e5, 2e5) (they are inf) or of
        # log_uniform(1e-10, 1e-9) (they are 0)
        low, high = (float(b) for b in _bounds_in(space, dtype))
        return space.low <= low <= high <= space.high
    return True


def _holds(dtype: Any, v: Any) -> bool:
    """Whether ``dtype`` holds the number ``v`` (a float type: up to rounding)."""
    x = _as_float(v)
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return math.isfinite(x) and v == int(v) and info.min <= int(v) <= info.max
    if jnp.issubdtype(dtype, jnp.floating):
        return not math.isfinite(x) or abs(x) <= float(jnp.finfo(dtype).max)
    return True


def _as_float(v: Any) -> float:
    """``float(v)``, or +-inf for an int past float64's range."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _numeric_space(space: Space) -> bool:
    """Whether the space's values are numbers other than 0 and 1 (what a bool holds)."""
    if isinstance(space, Choice):
        return space.numeric and not all(v == 0 or v == 1 for v in space.values)
    return True


def _check_value(space: Space, value: Any, path: Path) -> None:
    if value is _NO_VALUE:
        return
    if type(value) is float or type(value) is int:  # the usual case, without numpy
        if value != value and (not isinstance(space, Choice) or space.numeric):
            # (a numeric choice mapped NaN to its first value: no value is nearest NaN)
            raise ValueError(_nan_message(space, path))
        if (  # (a choice matches its values exactly, and finds the nearest with _as_float)
            type(value) is int
            and not isinstance(space, Choice)
            and not -_FLOAT_MAX <= value <= _FLOAT_MAX
        ):
            raise ValueError(
                f"{_where(path)} = {value!r:.40} is past float64's range, where every "
                "explore computes"
            )
        return
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):  # (a tracer too: its dtype)
        _check_holds(space, value.dtype, path)
    if isinstance(value, jax.Array) and value.dtype == bool and _numeric_space(space):
        # (explored on device and cast back to bool: 2 would be True; numpy's bools are
        # refused below, or a choice gives its own values)
        raise TypeError(f"{_where(path)} is a bool array, but its space {space} needs numbers")
    numeric = _is_number(value) or (
        isinstance(value, (np.ndarray, np.generic)) and jnp.issubdtype(value.dtype, jnp.number)
    )
    if (  # (a numeric choice mapped NaN to its first value)
        isinstance(space, Choice)
        and space.numeric
        and numeric
        and not isinstance(value, jax.Array)
        and np.any(np.isnan(np.asarray(value, np.float64)))
    ):
        raise ValueError(_nan_message(space, path))
    if isinstance(space, Choice) and space.numeric and isinstance(value, (list, tuple)):
        # (mapped over as an array of choices, it failed on the list's missing dtype)
        raise TypeError(
            f"{_where(path)} = {value!r:.60} is a {type(value).__name__}, but its space "
            f"{space} chooses one number (an array of choices is a numpy array)"
        )
    if isinstance(space, Choice) or isinstance(value, jax.Array):
        return
    if numeric and np.any(np.isnan(value)):  # no move from NaN lands inside the space
        raise ValueError(_nan_message(space, path))
    if numeric:
        return
    raise TypeError(
        f"{_where(path)} = {value!r:.60} is a {type(value).__name__}, but its space "
        f"{space} needs a number"
    )


def _apply(
    op: str,
    key: Any,
    space: Any,
    meta: Any,
    probability: float = 0.0,
    factors: tuple[float, ...] = DEFAULT_FACTORS,
) -> Any:
    if space is None:  # (taken as a constant, it replaced the hyperparameters by None)
        raise TypeError(
            f"{op} needs a space (a dict of uniform / log_uniform "
            "/ randint / choice leaves and constants), got None"
        )
    if type(space) is dict and type(meta) is dict and type(key) is np.ndarray:
        flat = _apply_flat(op, key, space, meta, probability, factors)
        if flat is not None:
            return flat
    leaves: list = []
    _leaves(space, meta, (), leaves)
    for path, leaf_space, value in leaves:
        _check_value(leaf_space, value, path)
    if not _is_traced(key) and _all_python(leaves):
        new = _apply_scalars(op, key, leaves, probability, factors)
    else:
        new = _apply_arrays(op, key, leaves, probability, factors)
    return _rebuild(space, meta, iter(new))


_PYTHON_NUMBERS = (float, int)
_PYTHON_CHOICES = (float, int, str, bool, type(None))
_FLOAT_MAX = float(np.finfo(np.float64).max)


def _apply_flat(
    op: str,
    key: np.ndarray,
    space: dict,
    meta: dict,
    probability: float,
    factors: tuple[float, ...],
) -> dict | None:
    """:func:`_apply` of a flat space (a ``dict`` of leaves and constants) to a ``dict``
    of Python numbers (strings, bools or ``None`` for a choice): the usual host case,
    without walking the trees. The same draws, formulas and result as the general
    path; ``None`` for anything else (then the general path decides, or raises: every
    value is checked before any is computed)."""
    out = dict(meta)
    random = None
    for name, leaf_space in space.items():
        if not isinstance(leaf_space, (Uniform, LogUniform, RandInt, Choice)):
            if isinstance(leaf_space, (_Leaf, Mapping, list, tuple, set, frozenset)):
                return None  # nested, or not a space: the general path
            out[name] = leaf_space  # a constant
            continue
        value = meta.get(name, _NO_VALUE)
        choice = isinstance(leaf_space, Choice)
        if choice:
            if type(value) not in _PYTHON_CHOICES or value != value:
                return None  # (NaN: the general path refuses it for a numeric choice)
            x = value
        elif type(value) in _PYTHON_NUMBERS and value == value and abs(value) <= _FLOAT_MAX:
            x = float(value)
        else:
            return None  # missing, NaN, no float, or not a Python number: the general path
        u = None
        if op != "clip":
            if random is None:
                if key.dtype != np.uint32 or key.shape != (2,):
                    return None  # (the general path converts it, or says why not)
                random = HostRandom(key).random
            u = (random(), random(), random())
        try:
            result = _leaf(op, leaf_space, x, u, _SCALARS, (name,), probability, factors)
            out[name] = _finish_scalar(leaf_space, result, value)
        except (TypeError, ValueError, OverflowError):
            return None  # the general path raises, for the first value at fault
    return out


def _all_python(leaves: list) -> bool:
    """Whether every value is absent or a Python scalar: a number, or a choice's string,
    bool or ``None``."""
    for _, leaf_space, value in leaves:
        if not (
            value is _NO_VALUE
            or value is None
            or isinstance(value, (int, float, str))
            or _one_choice(leaf_space, value)
        ):
            return False
    return True


def _one_choice(space: Any, value: Any) -> bool:
    """Whether ``value`` is one value of a choice between non-numbers (a tuple, a list,
    a dict), not an array to map the choice over."""
    return (
        isinstance(space, Choice)
        and not space.numeric
        and not isinstance(value, (np.ndarray, np.generic, jax.Array))
    )


def _apply_scalars(
    op: str, key: Any, leaves: list, probability: float, factors: tuple[float, ...]
) -> list:
    """The new values of the leaves, all Python values (or none): the usual host case."""
    # hashed draws, no dispatch (see jaxpop.mutators._host_random): three per leaf, in the
    # leaves' order (the same draws as drawing them all first: the formulas draw nothing)
    random = None if op == "clip" or not leaves else HostRandom(_host_key(key)).random
    new = []
    for path, leaf_space, value in leaves:
        u = None if random is None else (random(), random(), random())
        x = value if value is _NO_VALUE or isinstance(leaf_space, Choice) else float(value)
        result = _leaf(op, leaf_space, x, u, _SCALARS, path, probability, factors)
        new.append(_finish_scalar(leaf_space, result, value))
    return new


def _apply_arrays(
    op: str, key: Any, leaves: list, probability: float, factors: tuple[float, ...]
) -> list:
    """The new values of the leaves, some numpy or jax values, or under a traced key."""
    device = _on_device(key, leaves)
    xp: Any = jnp if device else np
    shapes = tuple(
        () if v is _NO_VALUE or _one_choice(sp, v) else tuple(np.shape(v)) for _, sp, v in leaves
    )
    keys: Sequence[Any] = [None] * len(leaves)  # (each leaf's, on device)
    if op == "clip" or not leaves:
        draws: Sequence[Any] = [None] * len(leaves)
    elif device:
        draws, keys = _uniform_draws(key, shapes)
    else:  # host: hashed draws, no dispatch (see jaxpop.mutators._host_random)
        rng = HostRandom(_host_key(key))
        draws = [rng.uniforms((3, *s)) for s in shapes]
    new = []
    for (path, leaf_space, value), u, leaf_key in zip(leaves, draws, keys, strict=True):
        x = value
        if device and not hasattr(value, "dtype"):
            # a draw, or a Python number: the result is of the default int (a randint) or
            # float dtype, which must hold the space (float32 has none of uniform(1e39,
            # 2e39): every draw was inf)
            if isinstance(leaf_space, RandInt):
                _check_holds(leaf_space, jnp.asarray(0).dtype, path)
            elif isinstance(leaf_space, (Uniform, LogUniform)) or (
                isinstance(leaf_space, Choice) and leaf_space.numeric
            ):
                _check_holds(leaf_space, jnp.asarray(0.0).dtype, path)
                _check_device_holds(leaf_space, jnp.asarray(0.0).dtype, path)
        if x is not _NO_VALUE and not isinstance(leaf_space, Choice):
            x = xp.asarray(x, dtype=xp.asarray(x).dtype if device else np.float64)
            if device and not jnp.issubdtype(x.dtype, jnp.floating):
                x = x.astype(jnp.asarray(0.0).dtype)
            if device:
                _check_device_holds(leaf_space, x.dtype, path)
        result = _leaf(op, leaf_space, x, u, xp, path, probability, factors)
        finish = _finish_device if device else _finish_host
        out = finish(leaf_space, result, value)
        if device and isinstance(leaf_space, RandInt):
            out = _exact_randint(op, leaf_space, value, out, u, leaf_key, probability)
        new.append(out)
    return new


def _check_probability(p: float) -> float:
    if type(p) is float and 0.0 <= p <= 1.0:  # the usual case, checked without the ABC checks
        return p
    if _is_traced(p) or not _is_number(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"resample_probability must be a number in [0, 1], got {p!r}")
    return float(p)


def _check_factors(factors: Sequence[float]) -> tuple[float, ...]:
    factors = tuple(factors)
    if factors and _all_positive_floats(factors):
        return factors  # the usual case, checked without the ABC checks
    if not factors or not all(_is_number(f) and math.isfinite(f) and f > 0 for f in factors):
        raise ValueError(
            f"perturbation_factors must be a non-empty sequence of positive numbers, "
            f"got {factors!r}"
        )
    return tuple(float(f) for f in factors)


def _all_positive_floats(xs: tuple) -> bool:
    for x in xs:  # noqa: SIM110 (all() over a generator costs more than these checks)
        if not (type(x) is float and 0.0 < x < math.inf):
            return False
    return True


# -- the public operations ------------------------------------------------------------------
def validate_space(space: Any) -> None:
    """Raises ``TypeError`` if ``space`` is not a space (a leaf, a constant or a dict)."""
    _leaves(space, _NO_VALUE, (), [])


def sample(key: Any, space: Any) -> Any:
    """A fresh draw from ``space``: a pytree with the space's structure.

    On the host (a numpy or Python key), numbers come back as Python ``float`` /
    ``int``; with a traced key, as ``jax`` arrays (``float32`` / ``int32`` by default).

    >>> import numpy as np
    >>> space = {"lr": log_uniform(1e-4, 1e-1), "batch": choice([32, 64, 128]), "wd": 0.0}
    >>> sample(np.array([0, 0], np.uint32), space)
    {'lr': 0.0341..., 'batch': 128, 'wd': 0.0}
    """
    return _apply("sample", key, space, _NO_VALUE)


def perturb(
    key: Any,
    space: Any,
    meta_params: Any,
    *,
    perturbation_factors: Sequence[float] = DEFAULT_FACTORS,
) -> Any:
    """``meta_params`` with every value the space names moved a little, inside the space.

    A ``uniform`` / ``log_uniform`` value is multiplied by a factor drawn uniformly from
    ``perturbation_factors`` and clipped to ``[low, high]``; a ``randint`` value likewise,
    rounded, and moved by at least one in the factor's direction, then clipped to
    ``[low, high - 1]``; a ``choice`` moves to the value before or after it in the list
    (each with probability 1/2; at either end, to its only neighbour). A value not in its
    choice's list is first mapped to the nearest number in it (or, for non-numbers,
    replaced by a fresh draw). Constants are set to the constant.

    >>> import numpy as np
    >>> space = {"x": uniform(0.0, 1.0), "batch": choice([32, 64, 128])}
    >>> perturb(np.array([0, 0], np.uint32), space, {"x": 0.5, "batch": 64, "name": "a"})
    {'x': 0.4, 'batch': 128, 'name': 'a'}
    """
    factors = _check_factors(perturbation_factors)
    return _apply("perturb", key, space, meta_params, 0.0, factors)


def resample(key: Any, space: Any, meta_params: Any, *, resample_probability: float = 1.0) -> Any:
    """Each value redrawn from its space with probability ``resample_probability``.

    Values that are not redrawn are clipped to their space (see :func:`clip`).

    >>> import numpy as np
    >>> space = {"x": uniform(0.0, 1.0), "batch": choice([32, 64, 128])}
    >>> resample(np.array([0, 0], np.uint32), space, {"x": 0.5, "batch": 64},
    ...          resample_probability=0.5)
    {'x': 0.844..., 'batch': 64}
    """
    p = _check_probability(resample_probability)
    return _apply("resample", key, space, meta_params, p)


def explore(
    key: Any,
    space: Any,
    meta_params: Any,
    *,
    resample_probability: float = 0.25,
    perturbation_factors: Sequence[float] = DEFAULT_FACTORS,
) -> Any:
    """PBT's explore: each value resampled with ``resample_probability``, else perturbed.

    The draw is independent for each value (each hyperparameter, and each element of an
    array value). See :func:`perturb` and :func:`resample`.

    >>> import numpy as np
    >>> space = {"lr": log_uniform(1e-4, 1e-1), "momentum": choice([0.0, 0.9, 0.99])}
    >>> explore(np.array([0, 1], np.uint32), space, {"lr": 0.05, "momentum": 0.9})
    {'lr': 0.06, 'momentum': 0.99}
    """
    p = _check_probability(resample_probability)
    factors = _check_factors(perturbation_factors)
    return _apply("explore", key, space, meta_params, p, factors)


def check_values(space: Any, meta_params: Any) -> None:
    """Raises for a value no explore can move into the space: missing (``KeyError``),
    NaN (``ValueError``) or not a number where the space is numeric (``TypeError``).
    A value outside the space, or not in its choice's list, passes: explore clips or
    redraws it.

    >>> check_values({"lr": uniform(0.0, 1.0)}, {"lr": 5.0})  # clipped when explored
    """
    leaves: list = []
    _leaves(space, meta_params, (), leaves)
    for path, leaf_space, value in leaves:
        _check_value(leaf_space, value, path)


def clip(space: Any, meta_params: Any) -> Any:
    """``meta_params`` with every value the space names projected onto its space.

    Floats are clipped to ``[low, high]``; ``randint`` values rounded and clipped to
    ``[low, high - 1]``; a number not in its choice's list becomes the nearest one
    (a non-number not in the list raises ``ValueError``); constants are set.

    >>> space = {"lr": log_uniform(1e-4, 1e-1), "batch": choice([32, 64, 128]), "wd": 0.0}
    >>> clip(space, {"lr": 3.0, "batch": 100, "wd": 1.0})
    {'lr': 0.1, 'batch': 128, 'wd': 0.0}
    """
    return _apply("clip", None, space, meta_params)
