"""Hyperparameter schedules as plain callables ``step -> meta_params``.

A schedule here is what an optax schedule is, lifted from one scalar to a whole
hyperparameter pytree: a pure function of the step. The builders in this module combine
schedules without knowing what is inside them:

* :func:`constant` -- the same ``meta_params`` at every step;
* :func:`per_leaf` -- a pytree whose leaves are scalar (optax) schedules or constants,
  e.g. ``{"learning_rate": optax.warmup_cosine_decay_schedule(...), "hue": 0.1}``;
* :func:`join` -- schedule ``i`` from ``boundaries[i - 1]`` on, counting its steps from
  there (``optax.join_schedules`` for whole pytrees);
* :func:`merge` -- the union of the dicts several schedules return.

Every schedule runs two ways. With a concrete step (a Python or numpy int, a concrete
array) it runs on the host and may return any leaves -- strings, Python numbers, the
very objects it was built from. With a traced step (inside ``jit``, ``vmap`` or
``scan``) every branch is evaluated and the result is selected with ``jnp.where``, so
the leaves must be numeric (fitting the dtype JAX holds them in) and every branch must
return the same structure; then the schedule compiles into the step, and a worker's
hyperparameters can be fed to ``optax.inject_hyperparams`` (:func:`jaxpop.hparams.set_hparams`)
without recompiling. Both place a step of any dtype exactly (a NaN on the host: refused).

Host values may be ``jax.Array`` (optax schedules return them); :func:`to_host` turns
them into Python scalars and numpy arrays, the plain data a run's journal stores.
:func:`tree_equal` says whether two hyperparameter pytrees are exactly the same.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpop.boundary import _flat
from jaxpop.types import MetaParams, Schedule

__all__ = [
    "Schedule",
    "constant",
    "host_step",
    "is_traced",
    "join",
    "merge",
    "per_leaf",
    "to_host",
    "tree_equal",
]


def is_traced(step: Any) -> bool:
    """Whether ``step`` is a tracer (the schedule runs inside ``jit``/``vmap``/``scan``)."""
    return isinstance(step, jax.core.Tracer)


def host_step(step: Any) -> int | float:
    """A concrete ``step`` as a Python number (ints stay ints, exactly).

    Accepts Python and numpy numbers and 0-d numpy or jax arrays of any real dtype
    (``bfloat16`` and ``longdouble`` too; a ``longdouble`` becomes the nearest float).

    Raises:
      TypeError: ``step`` is traced, or not a scalar real number (a bool, a complex).
      ValueError: ``step`` is NaN or infinite (it has no place among the boundaries: a
        NaN step was answered with the last segment's values).
    """
    return _host_point(step)[1]


def _host_point(step: Any) -> tuple[int, int | float]:
    """``(floor(step), host_step(step))``, the floor exact for every dtype: the piece in
    force at ``step`` is the one at its floor (boundaries are ints)."""
    if is_traced(step):
        raise TypeError("host_step got a traced step; evaluate the traced branch instead")
    if type(step) is int:
        return step, step
    if type(step) is float:
        if not math.isfinite(step):
            raise ValueError(f"a schedule's step must be finite, got {step!r}")
        return math.floor(step), step
    array = np.asarray(step)
    if isinstance(step, (bool, np.bool_)) or array.shape != () or not _real(array.dtype):
        raise TypeError(f"a schedule's step must be a scalar real number, got {step!r:.80}")
    if jnp.issubdtype(array.dtype, jnp.integer):
        return int(array), int(array)
    if not np.isfinite(array):
        raise ValueError(f"a schedule's step must be finite, got {step!r}")
    if array.dtype.itemsize <= 8:  # (as float64, exactly: bfloat16's int() wraps past 2**63)
        array = array.astype(np.float64)
    return int(np.floor(array)), float(array)  # (int() of a longdouble is exact)


def _real(dtype: Any) -> bool:
    """Whether ``dtype`` is an integer or real floating dtype (``bfloat16`` included)."""
    return dtype != np.bool_ and bool(
        jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    )


def constant(meta_params: MetaParams) -> Schedule:
    """The schedule that returns ``meta_params`` (the same object) at every step.

    >>> constant({"lr": 0.1})(12_345)
    {'lr': 0.1}
    """

    def schedule(step: Any) -> Any:
        del step
        return meta_params

    return schedule


def per_leaf(tree: Any) -> Schedule:
    """A schedule from a pytree of scalar schedules and constants.

    Each callable leaf is called with the step (any optax schedule, or another
    ``step -> value`` function); every other leaf is a constant returned as it is.

    Jittable when every leaf is (optax schedules are).

    >>> import optax
    >>> schedule = per_leaf({"learning_rate": optax.linear_schedule(0.0, 1.0, 10), "b1": 0.9})
    >>> to_host(schedule(5))  # optax returns a jax.Array; to_host makes it a float
    {'b1': 0.9, 'learning_rate': 0.5}
    """
    leaves, treedef = jax.tree.flatten(tree)

    def schedule(step: Any) -> Any:
        return jax.tree.unflatten(
            treedef, [leaf(step) if callable(leaf) else leaf for leaf in leaves]
        )

    return schedule


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules[i]`` from ``boundaries[i - 1]`` on, like ``optax.join_schedules``.

    ``schedules[0]`` runs before ``boundaries[0]`` and receives the step itself;
    ``schedules[i]`` (``i >= 1``) runs from ``boundaries[i - 1]`` up to (not including)
    ``boundaries[i]`` and receives ``step - boundaries[i - 1]``, the steps since it
    started. ``optax.join_schedules`` does the same for scalar schedules; this joins
    schedules of whole pytrees (use optax's inside :func:`per_leaf` for one scalar).

    On the host only the schedule in force is called; with a traced step all are, and
    their (numeric, same-structure) results are selected leaf by leaf. Both pick the
    same schedule for every step: a float step by its exact value (a float32
    ``16777216.0`` is before a boundary at ``16777217``), an unsigned or narrow int step
    without overflow; a boundary past what the step's dtype holds is never reached. A
    traced NaN step cannot raise: it gets the last schedule (on the host it raises).

    Raises:
      ValueError: ``len(boundaries) != len(schedules) - 1``, or the boundaries are not
        increasing ints; when called with a traced integer step, a boundary below 0.
      TypeError: when called, a step that is no real number (a bool, a complex).

    >>> decay = lambda step: {"lr": 0.1 / (1 + step)}  # counts from its own start
    >>> schedule = join([constant({"lr": 0.1}), decay], [100])
    >>> schedule(99), schedule(100), schedule(101)
    ({'lr': 0.1}, {'lr': 0.1}, {'lr': 0.05})
    """
    schedules = tuple(schedules)
    boundaries = tuple(boundaries)
    if not schedules:
        raise ValueError("join needs at least one schedule")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"join takes one boundary fewer than schedules, got {len(schedules)} schedules "
            f"and {len(boundaries)} boundaries"
        )
    for b in boundaries:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise ValueError(f"join boundaries must be ints, got {b!r}")
    boundaries = tuple(int(b) for b in boundaries)
    if any(b >= c for b, c in itertools.pairwise(boundaries)):
        raise ValueError(f"join boundaries must increase, got {list(boundaries)}")

    def schedule(step: Any) -> Any:
        if not is_traced(step):
            floor, at = _host_point(step)
            i = bisect.bisect_right(boundaries, floor)
            return schedules[i](at if i == 0 else at - boundaries[i - 1])
        step, reachable = _traced_boundaries(step, boundaries)
        outputs = [schedules[0](step)]
        outputs += [
            later(_since(step, start, boundary))
            for (_, start), boundary, later in zip(
                reachable, boundaries, schedules[1:], strict=False
            )
        ]
        _check_held_together(outputs)
        output = outputs[0]
        for (threshold, _), later_output in zip(reachable, outputs[1:], strict=True):
            output = _select(step < threshold, output, later_output)
        return output

    return schedule


def _since(step: Any, start: Any, boundary: int) -> Any:
    """The steps from ``boundary`` to a traced ``step`` at or past it, in the step's
    dtype: counted from ``start`` (the boundary as that dtype holds it), less what
    rounding moved a positive boundary (a float32 step counted from 16777217, which
    float32 holds as 16777216, was a step ahead of the host's count: a ramp a whole step
    off). A negative boundary is counted from ``start`` as it is: there ``step - start``
    is a sum that rounds, and a correction after it rounded a second time."""
    moved = boundary - int(start)
    if moved == 0 or boundary < 0:
        return step - start
    # (the barrier keeps XLA from folding the two subtractions into one of their sum,
    # which float32 rounds back to the boundary as it holds it; ``moved`` as a float:
    # ml_dtypes' bfloat16 takes no int past int64, and a rounding past 2**71 is one)
    return jax.lax.optimization_barrier(step - start) - np.asarray(float(moved), start.dtype)


def _traced_boundaries(step: Any, boundaries: Sequence[int]) -> tuple[Any, list[tuple[Any, Any]]]:
    """The boundaries a traced ``step`` can reach, as exact comparisons in its dtype.

    Returns ``step`` (an integer narrower than 32 bits widened to ``int32``) and, for
    each of the increasing int ``boundaries`` up to the last one its dtype can hold,
    ``(threshold, start)``: numpy scalars of the step's dtype such that ``step <
    threshold`` exactly when ``step < boundary`` (a float boundary is rounded up:
    ``16777217`` is ``16777218.0`` for a float32 step, which holds no value between),
    and ``start``, the boundary to count steps from (for a float step, the nearest
    float). The host path compares the exact value of a concrete step, so both agree.
    A traced NaN step cannot raise: it is below no threshold (the last piece).

    Raises:
      TypeError: the step is not of an integer or real floating dtype (a bool).
      ValueError: an integer step and a boundary below 0 (the steps counted from it
        could overflow the step's dtype).
    """
    dtype = np.dtype(jnp.result_type(step))
    if not _real(dtype):
        raise TypeError(f"a schedule's step must be a real number, got a traced {dtype} step")
    reachable: list[tuple[Any, Any]] = []
    if jnp.issubdtype(dtype, jnp.integer):
        if dtype.itemsize < 4:  # (every value fits: counting from a boundary cannot wrap)
            step, dtype = jnp.asarray(step, jnp.int32), np.dtype(np.int32)
        top = int(jnp.iinfo(dtype).max)
        for boundary in boundaries:
            if boundary > top:  # a step of this dtype never gets there (nor can hold it)
                break
            if boundary < 0:
                raise ValueError(
                    f"join: a traced {dtype} step cannot count steps from boundary "
                    f"{boundary} (below 0) without overflow; use boundaries >= 0"
                )
            exact = np.asarray(boundary, dtype)
            reachable.append((exact, exact))
        return step, reachable
    top = int(float(jnp.finfo(dtype).max))
    for boundary in boundaries:
        if boundary > top:
            break
        # the nearest float, through float64 as numpy converts an int (ml_dtypes' types
        # take none past int64); past float64's range it is below it (top bounds it)
        try:
            wide = float(boundary)
        except OverflowError:
            wide = -math.inf
        with np.errstate(over="ignore"):
            start = np.asarray(wide, dtype)
        if not np.isfinite(start):  # (-inf: no step could count from it)
            raise ValueError(
                f"join: a traced {dtype} step cannot count steps from boundary {boundary}, "
                f"below the range of {dtype}; use a wider step dtype or a boundary within it"
            )
        threshold = start
        if int(float(start)) < boundary:  # rounded down: the next float up
            threshold = np.nextafter(start, np.asarray(np.inf, dtype))
        reachable.append((threshold, start))
    return step, reachable


def merge(*schedules: Schedule) -> Schedule:
    """One schedule returning the union of the dicts that ``schedules`` return.

    E.g. ``merge(curriculum({...augmentation...}), per_leaf({"learning_rate": lr}))``.

    Raises (when called):
      TypeError: a schedule returned something other than a dict.
      ValueError: two schedules returned the same key.

    >>> merge(constant({"lr": 0.1}), constant({"hue": 0.3}))(0)
    {'lr': 0.1, 'hue': 0.3}
    """
    if not schedules:
        raise ValueError("merge needs at least one schedule")

    def schedule(step: Any) -> dict:
        out: dict = {}
        for i, part in enumerate(schedules):
            value = part(step)
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"merge: schedule {i} returned a {type(value).__name__}, not a dict"
                )
            both = sorted(set(out) & set(value), key=repr)
            if both:
                raise ValueError(f"merge: schedule {i} returns {both}, which another one does")
            out.update(value)
        return out

    return schedule


def to_host(tree: Any) -> Any:
    """``tree`` with jax arrays replaced by plain host data.

    A 0-d ``jax.Array`` becomes a Python scalar (``float``, ``int`` or ``bool``), any
    other ``jax.Array`` a numpy array; everything else (numpy values, Python numbers,
    strings, containers) is kept. The result is what a run's journal encodes.

    Raises:
      TypeError: a leaf is traced (a schedule evaluated inside ``jit`` has no host value).

    >>> import jax.numpy as jnp
    >>> to_host({"lr": jnp.float32(0.5), "w": jnp.zeros(2)})
    {'lr': 0.5, 'w': array([0., 0.], dtype=float32)}
    """

    if _flat(tree):  # (the usual result: str keys, plain values; as JAX orders them)
        return {k: tree[k] for k in sorted(tree)}

    def convert(leaf: Any) -> Any:
        if is_traced(leaf):
            raise TypeError(
                "to_host got a traced value: evaluate the schedule with a concrete step"
            )
        if isinstance(leaf, jax.Array):
            array = np.asarray(leaf)
            return array.item() if array.shape == () else array
        return leaf

    return jax.tree.map(convert, tree)


def tree_equal(a: Any, b: Any) -> bool:
    """Whether two hyperparameter pytrees are exactly the same.

    Same structure (same container types, the same dict keys in any order, keys of the
    same type and value too, ``None`` in the same places), and leaf by leaf the same
    type and value: ``1`` and ``1.0`` differ, a
    ``float32`` and a ``float64`` array differ, arrays compare by dtype, shape and
    elements, ``0.0`` and ``-0.0`` differ (``1 / x`` tells them apart), and NaN equals
    NaN (a schedule that holds a NaN is not "changing" at every step). Dicts may have
    keys of mixed types.

    >>> tree_equal({"lr": 1}, {"lr": 1.0}), tree_equal({"lr": float("nan")}, {"lr": float("nan")})
    (False, True)
    """
    kind = type(a)
    if kind is not type(b):
        return False
    if kind in _SCALARS:  # (the usual leaves: what the general path below finds, cheaply)
        if kind is float:
            return _float_equal(a, b)
        return a is None or bool(a == b)
    if kind is dict or isinstance(a, Mapping):
        if a.keys() != b.keys():
            return False
        if not (all(type(k) is str for k in a) and all(type(k) is str for k in b)):
            # keys == says equal that differ: 1, 1.0 and True; 0.0 and -0.0
            theirs = {k: k for k in b}
            if not all(type(k) is type(theirs[k]) and _leaf_equal(k, theirs[k]) for k in a):
                return False
        return all(tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tree_equal(x, y) for x, y in zip(a, b, strict=True))
    if a is None:
        return True
    leaves_a, treedef_a = jax.tree.flatten(a)
    if jax.tree_util.treedef_is_leaf(treedef_a):
        return _leaf_equal(a, b)
    leaves_b, treedef_b = jax.tree.flatten(b)  # another registered pytree node
    return treedef_a == treedef_b and all(  # type: ignore[operator]  # PyTreeDef: no stub
        tree_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True)
    )


#: Leaf types :func:`tree_equal` compares directly (JAX flattens each to itself).
_SCALARS = frozenset({float, int, bool, str, type(None)})


def _float_equal(x: float, y: Any) -> bool:
    """``x == y`` for a float, except that ``0.0`` and ``-0.0`` differ and NaN equals NaN."""
    if x == y:
        return x != 0 or math.copysign(1.0, x) == math.copysign(1.0, y)
    return math.isnan(x) and math.isnan(y)


def _leaf_equal(x: Any, y: Any) -> bool:
    if isinstance(x, np.ma.MaskedArray) or isinstance(y, np.ma.MaskedArray):
        # (np.asarray reads the data alone: two masks over the same data were equal)
        if type(x) is not type(y) or not np.array_equal(
            np.ma.getmaskarray(x), np.ma.getmaskarray(y)
        ):
            return False
        x, y = np.ma.getdata(x), np.ma.getdata(y)
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            return _leaf_equal(x.real, y.real) and _leaf_equal(x.imag, y.imag)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return bool(np.array_equal(x, y))
        if not np.array_equal(x, y, equal_nan=True):
            return False
        zeros = x == 0  # (0.0 and -0.0 compare equal: 1 / x tells them apart)
        return not zeros.any() or bool(
            np.array_equal(
                np.signbit(x[zeros].astype(np.float32)), np.signbit(y[zeros].astype(np.float32))
            )
        )
    if isinstance(x, float):
        return _float_equal(x, y)
    try:
        return bool(x == y)
    except (TypeError, ValueError):
        return x is y


def _check_held_together(outputs: Sequence[Any]) -> None:
    """Raises ``ValueError`` if the ``where`` s between the parts' outputs would hold a
    concrete value in a dtype that changes it (see :func:`_held`): the ``k``-th
    selection holds a leaf's values in JAX's promotion of the first ``k + 1`` parts'
    types. Outputs of different structures are left to :func:`_select` to refuse."""
    flat = [jax.tree.flatten(output) for output in outputs]
    if any(treedef != flat[0][1] for _, treedef in flat):  # type: ignore[operator]
        return
    paths = [
        jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(outputs[0])
    ]
    for path, column in zip(paths, zip(*(leaves for leaves, _ in flat), strict=True), strict=True):
        shapes = [np.shape(x) for x in column if is_traced(x) or _is_number(x)]
        try:
            np.broadcast_shapes(*shapes)
        except ValueError:
            raise ValueError(
                f"a traced schedule selects between its parts leaf by leaf: {path} has "
                f"shapes {shapes} in them, which do not broadcast (on the host each "
                "part's value is used as it is); give the leaf one shape to trace it"
            ) from None
        for x in column:
            _check_traceable(x)  # (its own message first: an int64 past int32, say)
        concrete = [
            (j, x)
            for j, x in enumerate(column)
            if not isinstance(x, jax.core.Tracer) and _is_number(x)
        ]
        for k in range(1, len(column) if concrete else 0):  # (at trace time only)
            try:
                dtype = jax.dtypes.result_type(*column[: k + 1])
            except TypeError:
                break  # (not numeric: _select says so)
            for j, x in concrete:
                if j <= k:
                    _held(x, dtype)


def _select(before: Any, output: Any, later: Any) -> Any:
    """Leaf by leaf ``where(before, output, later)``; explains a structure mismatch."""
    out_leaves, out_def = jax.tree.flatten(output)
    later_leaves, later_def = jax.tree.flatten(later)
    if out_def != later_def:  # type: ignore[operator]  # jaxlib has no stub for PyTreeDef
        raise TypeError(
            "with a traced step every part of a schedule must return the same structure, "
            f"got {out_def} and {later_def}"
        )
    for leaf in (*out_leaves, *later_leaves):
        _check_traceable(leaf)
    try:
        leaves = [jnp.where(before, o, n) for o, n in zip(out_leaves, later_leaves, strict=True)]
    except TypeError as err:
        raise TypeError(
            f"with a traced step a schedule's leaves must be numeric ({err}); evaluate "
            "schedules with strings or other objects on the host (a concrete step)"
        ) from err
    return jax.tree.unflatten(out_def, leaves)


def _held(leaf: Any, dtype: Any) -> np.ndarray:
    """``leaf`` in the dtype JAX's promotion of a leaf's values gives (a Python number
    takes a numpy value's narrow type), or a ``ValueError`` where that changes it: an
    integer that wraps (100000 in int8, -1 in uint32) or a finite float that overflows
    (1e10 in float16). Rounding to a narrower float is kept, as JAX does it."""
    host = np.asarray(leaf)
    with np.errstate(over="ignore", invalid="ignore"):
        held = host.astype(dtype)
    if host.dtype.kind != "c" and np.dtype(dtype).kind != "c":
        before, after = host.astype(np.float64), held.astype(np.float64)
        if jnp.issubdtype(dtype, jnp.floating):
            changed = np.isfinite(before) & ~np.isfinite(after)
        else:
            changed = (before != after) & ~(np.isnan(before) & np.isnan(after))
        if np.any(changed):
            raise ValueError(
                f"with a traced step a schedule's values of one leaf are held in one dtype "
                f"(here {np.dtype(dtype)}, JAX's promotion of their types), which cannot "
                f"hold {leaf!r:.40}: give every part's value of that leaf the same dtype"
            )
    return held


def _is_number(leaf: Any) -> bool:
    """A number or a numeric array (bools too): what a traced schedule can return."""
    if isinstance(leaf, (bool, int, float, complex)):
        return True
    dtype = getattr(leaf, "dtype", None)
    return isinstance(dtype, np.dtype) and (
        dtype == np.bool_ or bool(jnp.issubdtype(dtype, jnp.number))
    )


def _check_traceable(leaf: Any) -> None:
    """Raises ``ValueError`` if JAX would change a concrete numeric leaf under ``jit``.

    Without ``jax_enable_x64`` JAX holds an ``int64`` as ``int32`` (``2**40`` wraps to 0)
    and a ``float64`` as ``float32`` (``1e300`` becomes inf); such a value has no traced
    equivalent. Rounding a float is not refused. Other leaves (traced, ``jax.Array``,
    bools, non-numeric) pass.
    """
    if is_traced(leaf) or isinstance(leaf, (jax.Array, bool, np.bool_)):
        return
    if isinstance(leaf, (int, float)):
        array = np.asarray(leaf, np.float64 if isinstance(leaf, float) else object)
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(type(leaf)))
    else:
        try:
            array = np.asarray(leaf)
        except (TypeError, ValueError):
            return
        if not _real(array.dtype):
            return
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(array.dtype))
        if dtype == array.dtype:
            return
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        fits = bool(np.all((array >= int(info.min)) & (array <= int(info.max))))
    else:
        with np.errstate(over="ignore"):
            fits = bool(np.all(np.isfinite(array.astype(dtype)) | ~np.isfinite(array)))
    if not fits:
        raise ValueError(
            f"with a traced step a schedule's value {leaf!r:.60} does not fit in {dtype}, "
            "the dtype JAX holds it in; use a value that fits, or evaluate the schedule "
            "on the host (a concrete step)"
        )
