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
the leaves must be numeric and every branch must return the same structure; then the
schedule compiles into the step, and a worker's hyperparameters can be fed to
``optax.inject_hyperparams`` (:func:`jaxpop.hparams.set_hparams`) without recompiling.

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
    """A concrete ``step`` as a Python number (ints stay ints).

    Raises:
      TypeError: ``step`` is traced, or not a scalar number.
      ValueError: ``step`` is NaN or infinite (it has no place among the boundaries: a
        NaN step was answered with the last segment's values).
    """
    if is_traced(step):
        raise TypeError("host_step got a traced step; evaluate the traced branch instead")
    if type(step) is int:
        return step
    if isinstance(step, float):
        value: int | float = float(step)
    else:
        array = np.asarray(step)
        if array.shape != () or array.dtype.kind not in "iuf" or isinstance(step, bool):
            raise TypeError(f"a schedule's step must be a scalar number, got {step!r:.80}")
        value = array.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a schedule's step must be finite, got {step!r}")
    return value


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
    their (numeric, same-structure) results are selected leaf by leaf.

    Raises:
      ValueError: ``len(boundaries) != len(schedules) - 1``, or the boundaries are not
        increasing ints.

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
            at = host_step(step)
            i = bisect.bisect_right(boundaries, at)
            return schedules[i](at if i == 0 else at - boundaries[i - 1])
        output = schedules[0](step)
        dtype = jnp.result_type(step)
        integer = jnp.issubdtype(dtype, jnp.integer)
        reach = jnp.iinfo(dtype).max if integer else math.inf
        for boundary, later in zip(boundaries, schedules[1:], strict=True):
            if boundary > reach:  # a traced int32 step never gets there (nor can hold it)
                break
            start: int | float = boundary if integer else float(boundary)  # (no int32 parse)
            output = _select(step < start, output, later(step - start))
        return output

    return schedule


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

    Same structure (same container types, same dict keys in any order, ``None`` in the
    same places), and leaf by leaf the same type and value: ``1`` and ``1.0`` differ, a
    ``float32`` and a ``float64`` array differ, arrays compare by dtype, shape and
    elements, and NaN equals NaN (a schedule that holds a NaN is not "changing" at every
    step). Dicts may have keys of mixed types.

    >>> tree_equal({"lr": 1}, {"lr": 1.0}), tree_equal({"lr": float("nan")}, {"lr": float("nan")})
    (False, True)
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(tree_equal(a[k], b[k]) for k in a)
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


def _leaf_equal(x: Any, y: Any) -> bool:
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        inexact = jnp.issubdtype(x.dtype, jnp.inexact)
        return bool(np.array_equal(x, y, equal_nan=inexact))
    if isinstance(x, float):
        return x == y or (math.isnan(x) and math.isnan(y))
    try:
        return bool(x == y)
    except (TypeError, ValueError):
        return x is y


def _select(before: Any, output: Any, later: Any) -> Any:
    """Leaf by leaf ``where(before, output, later)``; explains a structure mismatch."""
    out_leaves, out_def = jax.tree.flatten(output)
    later_leaves, later_def = jax.tree.flatten(later)
    if out_def != later_def:  # type: ignore[operator]  # jaxlib has no stub for PyTreeDef
        raise TypeError(
            "with a traced step every part of a schedule must return the same structure, "
            f"got {out_def} and {later_def}"
        )
    try:
        leaves = [jnp.where(before, o, n) for o, n in zip(out_leaves, later_leaves, strict=True)]
    except TypeError as err:
        raise TypeError(
            f"with a traced step a schedule's leaves must be numeric ({err}); evaluate "
            "schedules with strings or other objects on the host (a concrete step)"
        ) from err
    return jax.tree.unflatten(out_def, leaves)
