"""Curricula: interpolate between whole hyperparameter dicts over step ranges.

``curriculum({0: {"hue": 0.0, "crop": 0.0}, 5_000: {"hue": 0.3, "crop": 0.2}})`` ramps
augmentation strength up over the first 5,000 steps and holds it there. Between two
consecutive points each numeric leaf follows the segment's ``kind``: ``"linear"`` (the
values of ``optax.linear_schedule``), ``"cosine"`` (half a cosine, as
``optax.cosine_decay_schedule`` of the difference, shifted) or ``"step"`` (hold the
first value until the next point). A ramp never leaves the range between its two ends
(counted from its start: optax's arithmetic, counted from the end, rounds a small start
away on long segments). Before the first point the first dict applies, from the last
point on the last one. Numeric leaves are interpolated as float32 (ints too, never
wrapped); other leaves, and leaves equal at both ends, are held as given.
``docs/schedules.md`` specifies the types, the infinite and NaN ends, and what ``jit``
refuses.

Jittable when every leaf is numeric: evaluate it with a traced step inside the
training step. On the host, only the segment in force is evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxpop.schedules.base import Schedule, constant, is_traced, join, tree_equal
from jaxpop.schedules.piecewise import Piecewise

__all__ = ["KINDS", "curriculum"]

#: The interpolations a curriculum segment can follow.
KINDS = ("linear", "cosine", "step")


def curriculum(
    points: Mapping[int, Any] | Iterable[tuple[int, Any]],
    kind: str | Sequence[str] = "linear",
) -> Schedule:
    """A schedule that moves between the ``meta_params`` of ``points``.

    Args:
      points: ``{step: meta_params}`` or ``(step, meta_params)`` pairs; every
        ``meta_params`` has the same structure (same keys, same nesting).
      kind: ``"linear"``, ``"cosine"`` or ``"step"`` for every segment, or one per
        segment (``len(points) - 1`` of them).

    Raises:
      ValueError: bad steps (see :func:`jaxpop.schedules.piecewise`), structures that
        differ, an unknown kind / the wrong number of kinds, or a ramp with a finite end
        (or difference of ends) past the range of its float dtype.

    >>> from jaxpop.schedules import to_host
    >>> ramp = curriculum({0: {"hue": 0.0}, 100: {"hue": 0.3}})  # linear, then held
    >>> to_host(ramp(50)), to_host(ramp(1_000))
    ({'hue': 0.15...}, {'hue': 0.3})
    >>> curriculum({0: {"hue": 0.0}, 100: {"hue": 0.3}}, kind="step")(99)
    {'hue': 0.0}
    """
    table = Piecewise(points)
    # 8-bit floats take part in no implicit promotion (a ramp's float32 with a held
    # float8, under jit): such leaves are held and ramped as float32
    steps, values = table.steps, [_widen_float8s(v) for v in table.values]
    if isinstance(kind, str):
        kinds: tuple[Any, ...] = (kind,) * (len(steps) - 1)
    elif isinstance(kind, Iterable):
        kinds = tuple(kind)
    else:
        raise TypeError(
            f"curriculum: kind must be one of {list(KINDS)} or a sequence of them (one per "
            f"segment), got {type(kind).__name__}"
        )
    if len(kinds) != len(steps) - 1:
        raise ValueError(
            f"curriculum: {len(steps)} points make {len(steps) - 1} segments, got "
            f"{len(kinds)} kinds"
        )
    unknown = [k for k in kinds if not isinstance(k, str) or k not in KINDS]
    if unknown:
        raise ValueError(f"curriculum: unknown kind {unknown!r:.80}; use one of {list(KINDS)}")
    treedef = jax.tree.structure(values[0])
    for step, value in zip(steps[1:], values[1:], strict=True):
        if jax.tree.structure(value) != treedef:  # type: ignore[operator]  # PyTreeDef: no stub
            raise ValueError(
                f"curriculum: the point at step {step} has structure "
                f"{jax.tree.structure(value)}, the first point {treedef}; every point "
                "must name the same hyperparameters"
            )
    segments = [
        _segment(values[i], values[i + 1], (steps[i], steps[i + 1]), kinds[i])
        for i in range(len(steps) - 1)
    ]
    _check_ints_held_exactly(steps, values, kinds)
    return join([constant(values[0]), *segments, constant(values[-1])], steps)


def _check_ints_held_exactly(steps: Sequence[int], values: Sequence[Any], kinds: Any) -> None:
    """Refuses an int that a float32 cannot hold exactly, in a leaf some segment ramps:
    under ``jit`` every part of such a leaf comes back in the ramp's float32 (the parts
    are chosen with ``jnp.where``), so 16,777,217 held before the first point came back
    as 16,777,216 while the host gave it as given."""
    flat = [jax.tree_util.tree_flatten_with_path(v)[0] for v in values]
    for j, (path, _) in enumerate(flat[0]):
        column = [leaves[j][1] for leaves in flat]
        ramped = any(
            kinds[i] != "step"
            and _numeric(column[i])
            and _numeric(column[i + 1])
            and not tree_equal(column[i], column[i + 1])
            for i in range(len(kinds))
        )
        for step, x in zip(steps, column, strict=True) if ramped else ():
            if _integer(x) and not _float32_exact(x):
                raise ValueError(
                    f"curriculum: {jax.tree_util.keystr(path)} is {x!r:.40} at step {step}, "
                    "an int a float32 does not hold exactly, in a leaf a segment ramps "
                    "(under jit the ramp's float32 holds it, rounded): use smaller ints, or "
                    'kind="step" for its segments'
                )


def _integer(x: Any) -> bool:
    if isinstance(x, bool | np.bool_):
        return False
    dtype = getattr(x, "dtype", None)
    return isinstance(x, int) or (dtype is not None and jnp.issubdtype(dtype, jnp.integer))


def _float32_exact(x: Any) -> bool:
    """Whether every element of an int leaf is a float32 exactly (an array compared
    whole; one past 2**53, which a float64 rounds too, element by element)."""
    if isinstance(x, int):
        elements: Any = [x]
    else:
        array = np.asarray(x)
        wide = array.astype(np.float64)
        beyond = np.abs(wide) >= 2**53  # (2**53 + 1 is 2**53 in a float64)
        if not np.array_equal(array[~beyond].astype(np.float32), wide[~beyond]):
            return False
        elements = array[beyond].tolist()
    for element in elements:
        try:
            if int(np.float32(element)) != int(element):
                return False
        except (OverflowError, ValueError):  # (past float32: inf)
            return False
    return True


def _segment(start: Any, end: Any, at: tuple[int, int], kind: str) -> Schedule:
    """The schedule of one segment, from step ``at[0]`` to ``at[1]``, counting steps from
    its start."""
    start_leaves, treedef = jax.tree_util.tree_flatten_with_path(start)
    end_leaves = jax.tree.leaves(end)
    leaf_fns = [
        _leaf_schedule(a, b, at, kind, jax.tree_util.keystr(path))
        for (path, a), b in zip(start_leaves, end_leaves, strict=True)
    ]

    def schedule(step: Any) -> Any:
        return jax.tree.unflatten(treedef, [fn(step) for fn in leaf_fns])

    return schedule


def _leaf_schedule(
    a: Any, b: Any, at: tuple[int, int], kind: str, where: str
) -> Callable[[Any], Any]:
    if kind == "step" or not (_numeric(a) and _numeric(b)) or tree_equal(a, b):
        return lambda step: a  # (held: its shape may change at the next point)
    try:
        np.broadcast_shapes(np.shape(a), np.shape(b))
    except ValueError:
        raise ValueError(
            f"curriculum: {where} has shape {np.shape(a)} at step {at[0]} and "
            f"{np.shape(b)} at step {at[1]}; a ramp between them needs one shape (or "
            'shapes that broadcast), or kind="step" to hold each'
        ) from None
    a, b = _ramp_end(a), _ramp_end(b)
    ramp = _ramp(a, b, at[1] - at[0], kind)
    if _finite(a) and _finite(b):
        with np.errstate(over="ignore"):
            difference = np.subtract(np.asarray(a), np.asarray(b), dtype=jnp.result_type(a, b))
        if not _finite(difference):
            raise ValueError(
                f"curriculum: a ramp from {a!r:.40} to {b!r:.40} computes their difference, "
                f"which is past the range of {difference.dtype}; use smaller values"
            )

    return ramp


def _ramp(a: Any, b: Any, length: int, kind: str) -> Callable[[Any], Any]:
    """``a`` to ``b`` over ``length`` steps (both ends already as :func:`_ramp_end`):
    ``a + (b - a) * w``, ``w`` the share of the way done, ``step / length`` (linear) or
    ``sin(pi / 2 * step / length) ** 2`` (cosine: optax's half cosine
    ``(1 - cos(pi * step / length)) / 2``, without its cancellation near 0), the result
    kept between the ends, and the start exactly at step 0 (where ``inf - inf`` would
    be NaN). Counted from the start, not as optax's ``(a - b) * (1 - w) + b``: once
    ``1 - w`` rounds to 1 (a cosine segment of 10,000 steps, a linear one of 2**24) that
    gives ``(a - b) + b``, which rounds a small start away or past itself (1e-8 to 1
    gave 0.0 at step 1). Two Python floats give a weakly typed value, as the held values
    around the ramp are (a ``bfloat16`` computation scaled by it stays one)."""
    dtype = jnp.result_type(a, b)
    weak = type(a) is float and type(b) is float  # (ints were made float32 arrays)
    # (copies, read-only: what a call returns is never these arrays themselves)
    start, end = np.array(a, dtype), np.array(b, dtype)
    with np.errstate(invalid="ignore", over="ignore"):  # (inf - inf: NaN, as it is)
        way = np.array(np.subtract(np.asarray(b), np.asarray(a)), dtype)  # (the ends' precision)
    low, high = np.array(np.minimum(start, end)), np.array(np.maximum(start, end))
    # from an infinite start to a finite end the line stays at the start (start + way
    # computes inf - inf)
    held = np.array(np.isinf(start) & np.isfinite(end))
    shape = np.broadcast_shapes(start.shape, end.shape)
    for array in (start, end, way, low, high, held):
        array.flags.writeable = False
    try:
        span = float(length)
    except OverflowError:  # (past float64: any step short of it is 0 of the way)
        span = math.inf
    largest = float(np.finfo(dtype).max)
    span_held = dtype.type(span) if span <= largest else None  # (the ramp's float, if it fits)
    half_pi = dtype.type(np.pi / 2)
    zero = dtype.type(0).item()

    def weakly(value: Any) -> Any:  # (a scalar, as Piecewise keeps a Python number's type)
        return lax.full_like(zero, value) if weak and jnp.ndim(value) == 0 else value

    def along(xp: Any, share: Any) -> Any:  # (xp: jnp traced, np on the host)
        return xp.clip(xp.where(held, start, start + way * share), low, high)

    def ramp(step: Any) -> Any:
        if is_traced(step):
            done = jnp.clip(jnp.asarray(step, dtype) / span, 0, 1)
            if kind == "cosine":
                done = jnp.sin(jnp.pi / 2 * done) ** 2
            return weakly(jnp.where(step <= 0, start, along(jnp, done)))
        # a concrete step (on the host, or a Python number inside a trace): the same
        # operations in numpy, one JAX call at the end instead of one per operation
        # (under jit XLA may fuse the multiply-add: the last bit may differ, as it did
        # with optax's arithmetic)
        if step <= 0:
            at = np.broadcast_to(start, shape)
        else:
            if isinstance(step, int) and step >= 2**31:
                # a Python int past int32 (of any size): its share, exactly
                share = np.asarray(min(step / length, 1.0), dtype)
            elif span_held is None or not step <= largest:
                # a segment or step past the ramp's float (float32: 3.4e38): in float64
                share = np.asarray(min(float(step) / span, 1.0), dtype)
            else:
                share = np.clip(np.asarray(step, dtype) / span_held, 0, 1)
            if kind == "cosine":  # (XLA's sin: numpy's differs in the last bit now and then)
                with jax.ensure_compile_time_eval():  # (a value, even inside a trace)
                    share = np.asarray(jnp.sin(half_pi * share)) ** 2
            with np.errstate(invalid="ignore", over="ignore"):
                at = along(np, share)
        return weakly(at) if weak else jnp.asarray(at)

    return ramp


def _ramp_end(x: Any) -> Any:
    """A numeric end of a ramp as the ramp computes with it.

    An int (a Python int of any size, a numpy integer scalar or array) becomes a
    float32 array: in integer arithmetic the ramp wrapped around (``int32``, or an
    ``int64`` held as ``int32`` without x64). So does a float narrower than float32
    (``float16``, ``bfloat16``): on the host the ramp computed in it, under ``jit`` in
    float32. A float32 or float64 is kept as it is.

    Raises:
      ValueError: a finite end that the ramp's float dtype (float32 for an int; the
        dtype JAX holds a float in) cannot represent (``2**200``, ``1e300``).
    """
    kind = np.asarray(x).dtype
    integer = isinstance(x, int) or jnp.issubdtype(kind, jnp.integer)
    narrow = not integer and jnp.issubdtype(kind, jnp.floating) and kind.itemsize < 4
    try:
        exact = np.asarray(x, np.float64)
    except OverflowError:  # a Python int past float64
        exact = np.asarray(math.inf)
    dtype = np.dtype(np.float32 if integer or narrow else jax.dtypes.canonicalize_dtype(kind))
    with np.errstate(over="ignore"):
        held = exact.astype(dtype)
    if np.any(np.isfinite(exact) != np.isfinite(held)) or (integer and not _finite(exact)):
        raise ValueError(
            f"curriculum: {x!r:.60} is past the range of {dtype}, which a ramp from or to "
            'it computes in; use a smaller value, or kind="step" (which holds values)'
        )
    return held if integer or narrow else x


def _finite(x: Any) -> bool:
    """Whether every element of a numeric leaf is finite."""
    return bool(np.all(np.isfinite(np.asarray(x, np.float64))))


def _is_float8(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize == 1


def _widen_float8s(value: Any) -> Any:
    """``value`` with its 8-bit float leaves as float32 (``value`` itself if it has none)."""
    if not any(_is_float8(leaf) for leaf in jax.tree.leaves(value)):
        return value
    return jax.tree.map(lambda x: x.astype(np.float32) if _is_float8(x) else x, value)


def _numeric(leaf: Any) -> bool:
    if isinstance(leaf, bool | np.bool_):
        return False
    if isinstance(leaf, int | float):
        return True
    dtype = getattr(leaf, "dtype", None)  # (jnp.issubdtype: bfloat16 and float8 too)
    return dtype is not None and bool(
        jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    )
