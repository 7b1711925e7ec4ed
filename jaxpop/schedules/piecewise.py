"""Piecewise-constant schedules: the seed's ``{step: meta_params}`` form, as a callable.

``piecewise({0: a, 10: b, 30: c})`` returns ``a`` below step 10, ``b`` for ``10 <= step <
30`` and ``c`` from 30 on (jittable with numeric leaves). It is the form a replayed
schedule takes (:func:`jaxpop.schedules.from_lineage`) and the one that is exported:
:meth:`Piecewise.to_json` / :func:`from_json` round-trip exactly, :meth:`Piecewise.to_csv`
writes a table, :func:`tabulate` turns any schedule into one.
``docs/schedules.md#the-json-document`` specifies the JSON document.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import numbers
import operator
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxpop.schedules.base import (
    Schedule,
    _check_traceable,
    _held,
    _host_point,
    _is_number,
    _traced_boundaries,
    is_traced,
    join,
    to_host,
    tree_equal,
)

__all__ = ["FORMAT", "Piecewise", "from_json", "piecewise", "tabulate"]

#: The ``"format"`` field of an exported schedule.
FORMAT = "jaxpop.schedules.piecewise"
_VERSION = 1
_TAG = "__jaxpop__"


class Piecewise:
    """A piecewise-constant schedule: ``values[i]`` from ``steps[i]`` on.

    Build one with :func:`piecewise`. Before ``steps[0]`` it returns ``values[0]``; past
    the last step, the last value. Its steps and values cannot be reassigned (the value
    trees themselves are the objects it was built with: ``FixedSchedule`` copies them);
    two are ``==`` when their steps are equal and their values are
    :func:`~jaxpop.schedules.tree_equal`.

    Attributes:
      steps: the change points, increasing ints ``>= 0``.
      values: the ``meta_params`` in force from each change point.
    """

    __slots__ = ("__weakref__", "steps", "values")
    steps: tuple[int, ...]
    values: tuple[Any, ...]

    def __init__(self, points: Mapping[int, Any] | Iterable[tuple[int, Any]]):
        steps, values = _check_points(points)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "values", values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Piecewise schedule is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled as its points (unpickling by attribute would meet __setattr__)
        return (Piecewise, (self.items(),))

    def __call__(self, step: Any) -> Any:
        if is_traced(step):
            return self._traced(step)
        i = bisect.bisect_right(self.steps, _host_point(step)[0])
        return self.values[max(i - 1, 0)]

    def _traced(self, step: Any) -> Any:
        """One ``searchsorted`` over the change points and one gather per leaf (a chain of
        ``where`` took ~20 s to compile for 4,000 points)."""
        step, reachable = _traced_boundaries(step, self.steps[1:])
        if len(self.values) == 1:
            for leaf in jax.tree.leaves(self.values[0]):
                _check_traceable(leaf)
            return self.values[0]
        if any(is_traced(leaf) for leaf in jax.tree.leaves(self.values)):
            # values traced themselves (a Piecewise built inside jit or vmap): selected
            # by a chain of where's, as join does
            return join([_constant(v) for v in self.values], self.steps[1:])(step)
        treedef, tables = _stack(self.values)  # (read at each trace: values are live objects)
        if reachable:
            thresholds = np.stack([threshold for threshold, _ in reachable])
            index = jnp.searchsorted(thresholds, step, side="right")
            if jnp.issubdtype(thresholds.dtype, jnp.floating):  # NaN: the last piece
                index = jnp.where(jnp.isnan(step), len(reachable), index)
        else:  # (no change point within the step's dtype)
            index = jnp.zeros(jnp.shape(step), jnp.int32)
        leaves = []
        for table, weak in tables:
            leaf = jnp.asarray(table)[index]
            # (a Python number's weak type, as a where between them keeps: for a scalar step)
            weak = weak and leaf.ndim == 0
            leaves.append(lax.full_like(table.dtype.type(0).item(), leaf) if weak else leaf)
        return jax.tree.unflatten(treedef, leaves)

    def items(self) -> list[tuple[int, Any]]:
        """``[(step, meta_params), ...]`` in step order."""
        return list(zip(self.steps, self.values, strict=True))

    def as_dict(self) -> dict[int, Any]:
        """``{step: meta_params}`` (the seed's form, for ``FixedSchedule``)."""
        return dict(self.items())

    def __len__(self) -> int:
        return len(self.steps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Piecewise):
            return NotImplemented
        return self.steps == other.steps and all(
            tree_equal(a, b) for a, b in zip(self.values, other.values, strict=True)
        )

    def __hash__(self) -> int:  # consistent with ==; lets jax.jit take a Piecewise
        return hash(self.steps)

    def __repr__(self) -> str:
        shown = ", ".join(f"{s}: {v!r}" for s, v in self.items()[:4])
        more = f", ... ({len(self)} points)" if len(self) > 4 else ""
        return f"piecewise({{{shown}{more}}})"

    # -- export ---------------------------------------------------------------------
    def to_json(self, indent: int | None = None) -> str:
        """The schedule as a JSON document (``docs/schedules.md#the-json-document``);
        :func:`from_json` reads it back exactly.

        Raises:
          TypeError: a value holds something the format cannot represent (the message
            says where).
        """
        points = [
            [step, _to_jsonable(value, f"values[{i}]")]
            for i, (step, value) in enumerate(self.items())
        ]
        document = {"format": FORMAT, "version": _VERSION, "points": points}
        return json.dumps(document, indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        """The schedule as CSV text: a ``step`` column, then one column per leaf.

        Leaf columns are named by their path (``opt.learning_rate``, ``betas.0``), in
        order of first appearance; a value without that leaf leaves the cell empty.
        Numbers are written exactly (``repr``), arrays as JSON lists.

        Raises:
          ValueError: two leaves of one value are named alike (``{"opt.lr": ..., "opt":
            {"lr": ...}}``): one column would hold either (use :meth:`to_json`).
        """
        rows: list[tuple[int, dict[str, str]]] = []
        columns: dict[str, None] = {}  # an ordered set
        for step, value in self.items():
            row = {}
            for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
                name = _path_name(path)
                if name in row:
                    raise ValueError(
                        f"to_csv: two hyperparameters of the value at step {step} are both "
                        f"named {name!r} as a column; write the schedule with to_json"
                    )
                columns.setdefault(name, None)
                row[name] = _csv_cell(leaf)
            rows.append((step, row))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", *columns])
        for step, row in rows:
            writer.writerow([step, *(row.get(name, "") for name in columns)])
        return out.getvalue()

    @staticmethod
    def from_json(text: str | bytes) -> Piecewise:
        """Same as :func:`from_json`."""
        return from_json(text)


def piecewise(points: Mapping[int, Any] | Iterable[tuple[int, Any]]) -> Piecewise:
    """A piecewise-constant schedule from ``{step: meta_params}`` or ``(step, meta)`` pairs.

    Raises:
      ValueError: no points, a step that is not an int ``>= 0``, or a repeated step.

    >>> schedule = piecewise({0: {"lr": 0.1}, 10: {"lr": 0.01}})
    >>> schedule(9), schedule(10)
    ({'lr': 0.1}, {'lr': 0.01})
    >>> schedule.to_json()[:63]
    '{"format": "jaxpop.schedules.piecewise", "version": 1, "points"'
    """
    return Piecewise(points)


def tabulate(schedule: Schedule, stop: int, *, start: int = 0, every: int = 1) -> Piecewise:
    """``schedule`` sampled at the multiples of ``every`` below ``stop``, from ``start``
    on, as a :class:`Piecewise`: its value at ``start`` is the sample at the latest
    multiple at or below it.

    Values go through :func:`~jaxpop.schedules.to_host`; a sample equal to the previous
    one (:func:`~jaxpop.schedules.tree_equal`) adds no point. The result is the
    hyperparameters a ``FixedSchedule(schedule, every=every)`` worker trains with, from
    ``start`` up to ``stop``, once the schedule has applied: given a mapping or a
    ``Piecewise`` whose first point is past 0, such a worker trains with its initial
    hyperparameters until the first grid point at or past that point, where the table
    holds the first point's values from ``start`` on, as the ``Piecewise`` does.

    >>> tabulate(lambda step: {"lr": 0.1 if step < 5 else 0.05}, 10)
    piecewise({0: {'lr': 0.1}, 5: {'lr': 0.05}})
    """
    if isinstance(every, bool) or not isinstance(every, (int, numbers.Integral)) or every <= 0:
        raise ValueError(f"every must be a positive int, got {every!r}")
    steps = []
    for name, value in (("start", start), ("stop", stop)):
        # (int() cut start=0.5 to 0: the table began at a step not asked for)
        try:
            if isinstance(value, (bool, np.bool_)):
                raise TypeError
            steps.append(operator.index(value))  # (an int, or an integer array's scalar)
        except TypeError:
            raise TypeError(f"{name} must be an int (a step), got {value!r}") from None
    start, stop = steps
    if stop <= start:
        raise ValueError(f"tabulate needs start < stop, got start={start}, stop={stop}")
    points: list[tuple[int, Any]] = []
    every = int(every)
    first = start // every * every  # (a FixedSchedule's sample in force at start)
    samples = [(start, first), *((g, g) for g in range(first + every, stop, every))]
    for step, sampled in samples:
        value = to_host(schedule(sampled))
        if not points or not tree_equal(points[-1][1], value):
            points.append((step, value))
    return Piecewise(points)


def from_json(text: str | bytes) -> Piecewise:
    """Reads a schedule written by :meth:`Piecewise.to_json`.

    Raises:
      ValueError: not such a document (wrong ``format``, unknown ``version``, a
        malformed value); the message says what.

    >>> schedule = piecewise({0: {"lr": 0.1, "b": (0.9, 0.999)}, 9: {"lr": float("nan"), "b": ()}})
    >>> from_json(schedule.to_json()) == schedule  # tuples and NaN come back exactly
    True
    """
    try:
        document = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"not a JSON schedule: {err}") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f'not a jaxpop schedule: expected "format": "{FORMAT}"')
    if type(document.get("version")) is not int or document.get("version") != _VERSION:
        raise ValueError(
            f"schedule format version {document.get('version')!r} is not supported "
            f"(this jaxpop reads version {_VERSION})"
        )
    points = document.get("points")
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise ValueError('"points" must be a list of [step, value] pairs')
    try:
        return Piecewise([(step, _from_jsonable(value)) for step, value in points])
    except RecursionError:
        raise ValueError("a schedule value is nested too deeply to read") from None


# -- helpers ----------------------------------------------------------------------------
# what to_json never writes, refused as it is read (json takes the last of duplicate keys,
# and NaN, Infinity or 1e400 as floats: a damaged document read as another schedule)
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"not a schedule document: the key {twice[0]!r:.40} appears twice")
    return document


def _no_constant(name: str) -> float:
    raise ValueError(f"not a schedule document: {name} (to_json writes no such number)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a schedule document: {text:.40} is past a float's range")
    return value


def _check_points(
    points: Mapping[int, Any] | Iterable[tuple[int, Any]],
) -> tuple[tuple[int, ...], tuple[Any, ...]]:
    if isinstance(points, Piecewise):
        return points.steps, points.values
    if isinstance(points, Mapping):
        pairs = list(points.items())
    elif isinstance(points, (str, bytes)) or not isinstance(points, Iterable):
        raise ValueError(
            f"a piecewise schedule takes a {{step: meta_params}} mapping, got {points!r:.80}"
        )
    else:
        pairs = list(points)
        if not all(isinstance(p, tuple | list) and len(p) == 2 for p in pairs):
            raise ValueError("a piecewise schedule takes (step, meta_params) pairs")
    if not pairs:
        raise ValueError("a piecewise schedule needs at least one {step: meta_params} point")
    for step, _ in pairs:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"schedule steps must be ints >= 0, got {step!r}")
    pairs = sorted(((int(s), v) for s, v in pairs), key=lambda p: p[0])
    steps = tuple(s for s, _ in pairs)
    if len(set(steps)) != len(steps):
        raise ValueError(f"schedule steps must be distinct, got {list(steps)}")
    return steps, tuple(v for _, v in pairs)


def _constant(value: Any) -> Schedule:
    return lambda step: value


def _stack(values: tuple[Any, ...]) -> tuple[Any, list[tuple[np.ndarray, bool]]]:
    """Leaf by leaf, its values at every point stacked (a numpy array), and whether JAX
    types it weakly (Python numbers), as a ``where`` between them would.

    Raises:
      TypeError: the values differ in structure, or a leaf is not numeric.
      ValueError: a value JAX cannot hold (an int64 past int32 without x64).
    """
    treedef = jax.tree.structure(values[0])
    rows = []
    for value in values:
        leaves, other = jax.tree.flatten(value)
        if other != treedef:  # type: ignore[operator]  # jaxlib has no stub for PyTreeDef
            raise TypeError(
                "with a traced step every part of a schedule must return the same "
                f"structure, got {treedef} and {other}"
            )
        rows.append(leaves)
    tables = []
    columns = zip(*rows, strict=True)  # leaf by leaf, its value at every point
    for column in columns:
        for leaf in column:
            if not _is_number(leaf):
                raise TypeError(
                    f"with a traced step a schedule's leaves must be numeric, got {leaf!r:.60}; "
                    "evaluate schedules with strings or other objects on the host (a "
                    "concrete step)"
                )
            _check_traceable(leaf)
        dtype, weak = jax.dtypes.result_type(*column, return_weak_type_flag=True)
        arrays = [_held(leaf, dtype) for leaf in column]
        try:
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
        except ValueError as err:
            raise TypeError(
                f"with a traced step a schedule's values must broadcast together: {err}"
            ) from None
        table = np.stack([np.broadcast_to(a, shape) for a in arrays])
        tables.append((table, bool(weak) and shape == ()))
    return treedef, tables


_FLOAT_BITS = struct.Struct(">d")  # a NaN's 64 bits, as hex in the document


def _to_jsonable(x: Any, where: str) -> Any:
    if x is None or type(x) is bool or type(x) is str:  # (a str subclass: refused below)
        return x
    if type(x) is int:
        return x
    if type(x) is float:
        if math.isfinite(x):
            return x
        if x != x:  # a NaN's sign and payload, kept exactly (its repr is just "nan")
            return {_TAG: "float", "value": "nan", "bits": _FLOAT_BITS.pack(x).hex()}
        return {_TAG: "float", "value": repr(x)}
    if type(x) is list:
        return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if type(x) is tuple:
        return {_TAG: "tuple", "items": [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(x)]}
    if type(x) is dict:
        if all(type(k) is str for k in x) and _TAG not in x:
            return {k: _to_jsonable(v, f"{where}[{k!r}]") for k, v in x.items()}
        items = [
            [_to_jsonable(k, f"{where} key {k!r}"), _to_jsonable(v, f"{where}[{k!r}]")]
            for k, v in x.items()
        ]
        for k, (written, _) in zip(x, items, strict=True):
            if type(k) is not str and _hashable(_from_jsonable(written)) != k:
                # (NaN, or a tuple holding one: read back, no key is equal to it)
                raise TypeError(f"{where}: a dict key that is read back unequal ({k!r:.40})")
        return {_TAG: "dict", "items": items}
    if isinstance(x, np.ma.MaskedArray):  # (its mask would be dropped: masked values back)
        raise TypeError(f"{where}: cannot export a masked array to JSON; fill it first")
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        array = np.asarray(x)
        floating = jnp.issubdtype(array.dtype, jnp.floating)  # bfloat16 & co. too
        if not (floating or jnp.issubdtype(array.dtype, jnp.integer) or array.dtype == bool) or (
            floating and array.dtype.itemsize > 8  # (longdouble: float64 would round it)
        ):
            raise TypeError(f"{where}: cannot export an array of dtype {array.dtype} to JSON")
        exact = array.astype(np.float64) if floating else array  # widening: exact
        flat = [_to_jsonable(v, where) for v in exact.reshape(-1).tolist()]
        if isinstance(x, np.generic):
            return {_TAG: "scalar", "dtype": array.dtype.name, "value": flat[0]}
        return {
            _TAG: "ndarray",
            "dtype": array.dtype.name,
            "shape": list(array.shape),
            "data": flat,
        }
    raise TypeError(
        f"{where}: cannot export a {type(x).__name__} to JSON ({x!r:.60}); use numbers, "
        "strings, None, lists, tuples, dicts and numeric numpy arrays"
    )


def _from_jsonable(x: Any) -> Any:
    if isinstance(x, list):
        return [_from_jsonable(v) for v in x]
    if not isinstance(x, dict):
        return x
    tag = x.get(_TAG)
    if tag is None:
        return {k: _from_jsonable(v) for k, v in x.items()}
    try:
        if tag == "tuple":
            return tuple(_from_jsonable(v) for v in _list(x["items"]))
        if tag == "dict":
            items = [
                (_hashable(_from_jsonable(k)), _from_jsonable(v)) for k, v in _list(x["items"])
            ]
            read = dict(items)
            if len(read) != len(items):  # (the last one was taken)
                raise ValueError("a dict's items hold one key twice")
            return read
        if tag == "float":  # (what to_json writes for a float that is not finite)
            if "bits" in x:
                (value,) = _FLOAT_BITS.unpack(bytes.fromhex(x["bits"]))
                if x.get("value") != "nan" or value == value:
                    raise ValueError(f"bits {x['bits']!r} are not those of a NaN")
                return value
            if x["value"] not in ("inf", "-inf", "nan"):  # ("nan" without bits: older files)
                raise ValueError(
                    f"a float is written here only as inf, -inf or NaN, got {x['value']!r}"
                )
            return float(x["value"])
        if tag in ("ndarray", "scalar"):
            if type(x["dtype"]) is not str:  # (np.dtype(None) is float64)
                raise ValueError(f"dtype {x['dtype']!r:.40} is not a dtype's name")
            dtype = np.dtype(x["dtype"])
            if not (
                jnp.issubdtype(dtype, jnp.floating)
                or jnp.issubdtype(dtype, jnp.integer)
                or dtype == np.bool_
            ):  # (what to_json writes: numbers and bools, never objects or strings)
                raise ValueError(f"an array of dtype {dtype} is not a schedule value")
            if tag == "scalar":
                return _elements([x["value"]], dtype)[0][()]
            shape = _list(x["shape"])
            if not all(type(n) is int and n >= 0 for n in shape):  # (None or -1 reshaped it)
                raise ValueError(f"shape {shape!r:.40} is not a list of sizes")
            return _elements(_list(x["data"]), dtype).reshape(shape)
    except (KeyError, TypeError, ValueError, OverflowError, struct.error) as err:
        raise ValueError(f"malformed {tag!r} value in a schedule: {err}") from err
    raise ValueError(f"unknown {_TAG} tag {tag!r} in a schedule")


def _list(items: Any) -> list:
    if type(items) is not list:
        raise TypeError(f"expected a list, got {type(items).__name__}: {items!r:.40}")
    return items


def _elements(items: list, dtype: np.dtype) -> np.ndarray:
    """An array's elements as to_json writes them for ``dtype``, or a ``ValueError``: JSON
    bools for bool, ints for an integer dtype (in its range), numbers for a floating one
    (finite ones finite in it; inf and NaN tagged): never a string, nor a value the
    dtype would change other than by rounding."""
    values = [_from_jsonable(v) for v in items]
    if dtype == np.bool_:
        kinds: tuple[type, ...] = (bool,)
    elif jnp.issubdtype(dtype, jnp.integer):
        kinds = (int,)
    else:
        kinds = (int, float)
    for v in values:
        if type(v) not in kinds:
            raise ValueError(f"{v!r:.40} is not an element of a {dtype} array")
    wide = np.asarray(values, dtype=np.float64 if dtype != np.bool_ else np.bool_)
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.asarray(values, dtype=object).astype(dtype)
    if jnp.issubdtype(dtype, jnp.integer) and any(
        int(a) != v for a, v in zip(array.tolist(), values, strict=True)
    ):
        raise ValueError(f"{values!r:.60} is outside the range of {dtype}")
    if jnp.issubdtype(dtype, jnp.floating) and np.any(
        np.isfinite(wide) & ~np.isfinite(array.astype(np.float64))
    ):
        raise ValueError(f"{values!r:.60} overflows {dtype}")
    return array


def _hashable(key: Any) -> Any:
    if isinstance(key, list):  # a tuple key decodes as a tuple already; lists cannot be keys
        raise ValueError(f"a dict key cannot be a list: {key!r}")
    return key


def _path_name(path: tuple) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return ".".join(parts) or "value"


def _csv_cell(leaf: Any) -> str:
    leaf = to_host(leaf)
    if isinstance(leaf, np.ndarray):
        return json.dumps(leaf.tolist())
    if isinstance(leaf, np.generic):
        leaf = leaf.item()
    if isinstance(leaf, float):
        return repr(leaf)
    return str(leaf)
