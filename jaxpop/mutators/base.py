"""The mutator interface: a pair of pure functions, like optax's ``GradientTransformation``.

A :class:`Mutator` decides how a population changes. ``init()`` returns its state (plain
data). ``update(state, workers, history, now, key)`` runs after every evaluation and
returns ``(new_state, new_workers, new_checkpoints)``: the assignment of every worker and
the checkpoints to add to the history (typically the starting point of each new
generation). The optional ``ask(state, workers, history, ask, now, key)`` hook runs when
a worker asks for its data and returns the same triple. Neither ever
mutates its inputs; everything a mutator needs to continue after a restart lives in its
state.

This module also holds the small pieces every mutator shares: calling a user's
mutation function with or without a key, ranking scores, and starting a new
generation from a checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import math
import numbers
import re
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import jax
import numpy as np

from jaxpop.boundary import copy_in, private_copy
from jaxpop.events import Ask
from jaxpop.history import History, Mode, check_mode
from jaxpop.keys import new_generation_id
from jaxpop.mutators import explore as explore_lib
from jaxpop.mutators import selection as selection_lib
from jaxpop.records import ACTIVE, ActiveWorker, Checkpoint, CheckpointRef, _active_worker
from jaxpop.types import MetaParams, MutatorResult, MutatorState, RawKey, Workers

__all__ = [
    "AskFn",
    "DecisionCounts",
    "Mutator",
    "MutatorResult",
    "UpdateFn",
    "start_generation",
    "call_mutate_fn",
    "check_callable",
    "check_number",
    "decision_counts",
    "evaluated_since",
    "is_finite",
    "own_result",
    "rank_value",
    "as_record",
    "reads_like_a_dict",
    "records_config",
    "takes_key",
    "window_mean",
]


class DecisionCounts(NamedTuple):
    """How often a mutator decided, and how often a decision copied another member.

    A *decision* is one worker at one decision point (a ready PBT worker, each worker
    of a WinnerTakeAllGenetic round, a branch comparison); a *copy* is a decision that
    started the worker from a checkpoint of another member's lineage (an exploit). The
    same form for every mutator, so the copy rate of two searches can be compared.
    """

    decisions: int
    copies: int

    @property
    def copy_rate(self) -> float:
        """``copies / decisions`` (NaN before the first decision)."""
        return self.copies / self.decisions if self.decisions else math.nan


def decision_counts(mutator: Mutator, state: Any) -> DecisionCounts:
    """``mutator``'s :class:`DecisionCounts` in its ``state`` (``controller.state.mutator_state``).

    Raises:
      TypeError: the mutator does not count its decisions (``counts`` is ``None``).
    """
    if mutator.counts is None:
        raise TypeError(
            f"{type(mutator).__name__} does not count its decisions (its counts is None): "
            "give it counts=lambda state: DecisionCounts(decisions, copies) read from its "
            "state (jaxpop.mutators.DecisionCounts)"
        )
    return mutator.counts(state)


class UpdateFn(Protocol):
    """A mutator's ``update``: runs after every evaluation is recorded.

    Gets the mutator's state, every worker's assignment (the evaluating worker's already
    moved to its new step), the history (holding the new evaluation), the time and the
    event's raw key; returns ``(new_state, new_workers, new_checkpoints)``. Returning
    the very same state and workers and no checkpoints means "nothing changed".
    """

    def __call__(
        self, state: MutatorState, workers: Workers, history: History, now: float, key: RawKey
    ) -> MutatorResult: ...


class AskFn(Protocol):
    """A mutator's ``ask`` hook: runs when a worker asks for its data.

    As :class:`UpdateFn`, with the :class:`jaxpop.Ask` event; the controller answers
    from the assignment it returns.
    """

    def __call__(
        self,
        state: MutatorState,
        workers: Workers,
        history: History,
        ask: Ask,
        now: float,
        key: RawKey,
    ) -> MutatorResult: ...


class Mutator(NamedTuple):
    """A mutator: ``init``, ``update`` and an optional ``ask`` hook.

    Attributes:
      init: ``() -> state``. The state must be plain data (numbers, strings, tuples,
        dicts, numpy arrays) so that it can be saved and restored with the run.
      update: called after every evaluation is recorded; see :class:`UpdateFn`.
      ask: called when a worker asks for its data, before the controller answers from
        the (possibly new) assignment, and when ``checkpoint_missing`` sends a worker
        elsewhere (as the ask at its new assignment); see :class:`AskFn`. ``None``: no
        hook. (Called
        ``get_worker_data`` before; that keyword and attribute still work, with a
        ``DeprecationWarning``.)
      prepare: ``(population_size) -> None``, called once by a controller when it starts
        (or resumes), before any worker is answered: warm-up work that would otherwise
        stall the first decision, such as compiling the jitted functions ``update``
        runs. It changes no state and its result is ignored. ``None``: nothing to do.
      config: how the mutator was built (its constructor's arguments by name), or
        ``None``. A controller with a ``log_dir`` records :meth:`describe` with the run
        and refuses to resume it with a mutator that describes itself differently.
        Subclasses get it from :func:`records_config`.
      mode: which evaluation values are better, ``"min"`` (lower) or ``"max"``
        (higher). A controller records it with the run (``History.mode``), so garbage
        collection, replay and reports rank values the way this mutator does.
      counts: ``state -> DecisionCounts``, how many decisions the mutator made and how
        many of them were copies, read from its state (:func:`decision_counts`).
        ``None``: it does not count.
      holds: ``(state, workers, history, worker_id) -> bool``, whether a worker must
        wait before training on (a synchronous round it has reached is not decided
        yet). Its ask on its current generation is then answered with its assignment,
        ``status == "waiting"``: wait, and ask again. ``None``: never.
      check_population: ``(initial_population) -> None``, called by
        :func:`jaxpop.core.check_population` when a run starts afresh (not when it
        resumes: the stored state wins) with the initial ``meta_params``; raises
        a clear error for one the mutator could never work with (a NaN where it
        explores: copying that worker would fail at every later decision). ``None``:
        every population is accepted.
    """

    init: Callable[[], Any]
    update: UpdateFn
    ask: AskFn | None = None
    prepare: Callable[[int], None] | None = None
    config: Mapping[str, Any] | None = None
    mode: Mode = "min"
    counts: Callable[[Any], DecisionCounts] | None = None
    holds: Callable[[Any, Workers, History, int], bool] | None = None
    check_population: Callable[[Sequence[MetaParams]], None] | None = None

    def describe(self) -> dict[str, Any]:
        """This mutator's kind and configuration as plain, comparable data.

        The kind and callables are given by their qualified names (without the module,
        which differs between a script run directly and imported), arrays by their
        values (or a digest, when large), sets sorted, other objects by their fields or
        their repr, so two mutators built the same way, in this process or another,
        describe themselves the same. Without a ``config``, the functions' names stand
        for it.

        >>> from jaxpop.mutators import WinnerTakeAllGenetic
        >>> description = WinnerTakeAllGenetic(abs, steps_per_exploit=10).describe()
        >>> description["kind"]
        'WinnerTakeAllGenetic'
        >>> description["config"]["mutate_fn"], description["config"]["steps_per_exploit"]
        ('abs', 10)
        """
        describing = _describing()  # (a mutator met again inside itself is "<cycle>")
        describing[id(self)] = describing.get(id(self), 0) + 1
        try:
            return self._own_description()
        finally:
            describing[id(self)] -= 1
            if not describing[id(self)]:
                del describing[id(self)]

    def _own_description(self) -> dict[str, Any]:
        kind = _name(type(self))
        if self.config is None:
            # prepare decides nothing; the ask hook keeps its earlier name here, so runs
            # recorded before the rename resume
            functions = zip(("init", "update", "get_worker_data"), self[:3], strict=True)
            parts = {name: fn for name, fn in functions if fn is not None}
        else:
            parts = {str(k): v for k, v in self.config.items()}
        config = {name: _describe(value) for name, value in parts.items()}
        if self.mode != "min":  # (as a plain str: np.str_("max") is taken, and journaled)
            config.setdefault("mode", check_mode(self.mode))
        description = {"kind": kind, "config": config}
        locked = getattr(type(self), "_state_options", ())
        if locked:  # (a subclass's too): options its recorded state is in, which even
            # reconfigure=True cannot change (jaxpop.storage.run)
            description["locked"] = list(locked)
        defaults = _defaults(type(self), config)
        if defaults:  # a run recorded before an option existed resumes with its default
            description["defaults"] = defaults
        return description

    @property
    def get_worker_data(self) -> AskFn | None:
        """Deprecated name of :attr:`ask`."""
        warnings.warn(
            "Mutator.get_worker_data is deprecated: the hook is Mutator.ask",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.ask

    def __reduce__(self) -> tuple[Any, ...]:
        # The seed mutators subclass this tuple with a ``__new__`` that takes *their*
        # arguments, so the default (``cls.__new__(cls, *fields)``) cannot rebuild them;
        # rebuild from the fields instead (pickle, cloudpickle, Ray, multiprocessing).
        return _rebuild_mutator, (type(self), tuple(self)), getattr(self, "__dict__", None)


def _rebuild_mutator(cls: type[Mutator], fields: tuple[Any, ...]) -> Mutator:
    return tuple.__new__(cls, fields)


_new_mutator = Mutator.__new__
_NOT_GIVEN = object()


def _new_mutator_accepting_old_names(
    cls: type[Mutator], *args: Any, get_worker_data: Any = _NOT_GIVEN, **kwargs: Any
) -> Mutator:
    if get_worker_data is not _NOT_GIVEN:
        warnings.warn(
            "Mutator(get_worker_data=...) is deprecated: pass the hook as ask=...",
            DeprecationWarning,
            stacklevel=2,
        )
        if "ask" in kwargs or len(args) > 2:
            raise TypeError("Mutator got the ask hook twice (as ask and get_worker_data)")
        kwargs["ask"] = get_worker_data
    return _new_mutator(cls, *args, **kwargs)


# a NamedTuple's __new__ cannot be defined in its body; set after, it keeps the old keyword
Mutator.__new__ = staticmethod(_new_mutator_accepting_old_names)  # type: ignore[assignment]


_M = TypeVar("_M", bound=Callable[..., Mutator])


_R = TypeVar("_R")


def as_record(record: type[_R], state: Any) -> _R:
    """``state`` as a ``record`` (a mutator's state ``NamedTuple``): itself, or, for a run
    recorded when the state was a dict, the record of the fields the dict holds (the
    others at their defaults)."""
    if type(state) is record:
        return state
    fields: tuple[str, ...] = record._fields  # type: ignore[attr-defined]
    return record(**{k: state[k] for k in fields if k in state})


def reads_like_a_dict(record: type[_R]) -> type[_R]:
    """Decorates a mutator's state record (a ``NamedTuple``) to still read as the dict
    the state was before it: ``state["name"]``, ``state.get``, ``"name" in state``,
    ``keys``, ``dict(state)``, each with a ``DeprecationWarning`` naming the attribute.
    """
    name = record.__name__

    def warn(key: str) -> None:
        warnings.warn(
            f'{name}["{key}"] is deprecated: the state is a record, read state.{key}',
            DeprecationWarning,
            stacklevel=3,
        )

    def getitem(self: Any, key: Any) -> Any:
        if isinstance(key, str):
            warn(key)
            if key not in self._fields:
                raise KeyError(key)
            return getattr(self, key)
        return tuple.__getitem__(self, key)

    def get(self: Any, key: str, default: Any = None) -> Any:
        warn(key)
        return getattr(self, key) if key in self._fields else default

    def contains(self: Any, key: Any) -> bool:
        if isinstance(key, str):
            warn(key)
            return key in self._fields
        return tuple.__contains__(self, key)

    def keys(self: Any) -> tuple[str, ...]:
        warnings.warn(
            f"{name}.keys() is deprecated: the state is a record, read its attributes "
            "(or _asdict())",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._fields

    for attr, fn in (("__getitem__", getitem), ("get", get), ("__contains__", contains)):
        fn.__name__ = attr
        setattr(record, attr, fn)
    record.keys = keys  # type: ignore[attr-defined]
    return record


def records_config(new: _M) -> _M:
    """Decorates a :class:`Mutator` subclass's ``__new__`` to record its arguments.

    The mutator it returns has ``config`` set to the arguments it was called with, by
    name, defaults included; :meth:`Mutator.describe` reads them.
    """
    signature = inspect.signature(new)

    @functools.wraps(new)
    def with_config(cls: type, *args: Any, **kwargs: Any) -> Mutator:
        if new.__module__.startswith("jaxpop."):
            # a built-in constructor (a user's subclass's too) reads an iterator given
            # for a sequence (a generator of factors, say) once, in its checks: recorded
            # as it was, a run resumed with other values could not tell. Its values are
            # passed and recorded instead (a user's own constructor may read one lazily:
            # passed as given)
            args = tuple(_values(a) for a in args)
            kwargs = {k: _values(v) for k, v in kwargs.items()}
        mutator = new(cls, *args, **kwargs)
        bound = signature.bind(cls, *args, **kwargs)
        bound.apply_defaults()
        arguments = list(bound.arguments.items())[1:]  # without cls
        return mutator._replace(config=dict(arguments))

    return with_config  # type: ignore[return-value]


def _values(argument: Any) -> Any:
    """An iterator's values as a tuple (a callable one, a mock say, is a function)."""
    if isinstance(argument, Iterator) and not callable(argument):
        return tuple(argument)
    return argument


def _defaults(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """The described defaults of the constructor arguments in ``config``."""
    try:
        parameters = inspect.signature(cls.__new__).parameters  # records_config's wrapped
    except (TypeError, ValueError):
        return {}
    return {
        name: _describe(p.default)
        for name, p in parameters.items()
        if name in config and p.default is not inspect.Parameter.empty
    }


def _name(obj: Any) -> str:
    """A class's or function's qualified name, without its module (which differs between
    a script run directly, ``__main__``, and the same file imported)."""
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or "?"


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ARRAY_VALUES_LIMIT = 64  # larger arrays are described by a digest of their bytes
_REPR_LIMIT = 200  # longer reprs are described by a digest too
# deeper structures are cut off (configurations are shallow, but a schedule built of
# schedules takes about three levels a combinator)
_DESCRIBE_DEPTH = 100


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]


def _describe(value: Any, depth: int = 0, memo: dict[Any, Any] | None = None) -> Any:
    """``value`` as plain data that compares equal for equal configurations.

    ``memo``: what one description has described so far, by ``id`` (each object kept
    alive with it): an object met inside itself is ``"<cycle>"`` (a config that refers
    to itself twice doubled the work at each level), and one met again is described
    once (a schedule shared by two others) where that gives what describing it there
    would: if its description is whole (one cut off past the depth, ``"..."``, or
    holding a ``"<cycle>"`` depends on where it was met) and fits below the depth
    there."""
    if memo is None:
        memo = {_PARTS_CUT: 0, _DEEPEST: 0}
    memo[_DEEPEST] = max(memo[_DEEPEST], depth)
    if depth > _DESCRIBE_DEPTH:
        memo[_PARTS_CUT] += 1
        return "..."
    t = type(value)
    if value is None or t in (bool, str, bytes):
        return value
    if t is int:
        return value if -(2**63) <= value < 2**63 else str(value)
    if t is float:
        return value if math.isfinite(value) else repr(value)
    known = memo.get(id(value))
    if known is not None:
        if known[1] is _BEING_DESCRIBED:
            memo[_PARTS_CUT] += 1
            return _CYCLE
        _, described, height = known
        if depth + height <= _DESCRIBE_DEPTH:
            memo[_DEEPEST] = max(memo[_DEEPEST], depth + height)
            return described
    memo[id(value)] = (value, _BEING_DESCRIBED, 0)
    cut, deepest = memo[_PARTS_CUT], memo[_DEEPEST]
    memo[_DEEPEST] = depth
    described = _describe_object(value, depth + 1, memo)
    height = memo[_DEEPEST] - depth
    memo[_DEEPEST] = max(deepest, memo[_DEEPEST])
    if memo[_PARTS_CUT] == cut:
        memo[id(value)] = (value, described, height)
    else:  # (not whole: described again where it is met again)
        del memo[id(value)]
    return described


_BEING_DESCRIBED = object()
_CYCLE = "<cycle>"
_PARTS_CUT = "parts cut"  # memo keys: descriptions cut off or cycles met so far, and
_DEEPEST = "deepest"  # the deepest level the description has reached
_DESCRIBING = threading.local()  # .ids: id -> count of the mutators being described


def _describing() -> dict[int, int]:
    """This thread's mutators being described (``Mutator.describe``), by ``id``."""
    ids = getattr(_DESCRIBING, "ids", None)
    if ids is None:
        ids = _DESCRIBING.ids = {}
    return ids


def _describe_object(value: Any, depth: int, memo: dict[Any, Any]) -> Any:
    """:func:`_describe` of anything but ``None``, a bool, a str, bytes, an int or a float."""
    t = type(value)
    if isinstance(value, Mutator):
        # described as on its own (from depth 0, each part afresh); met inside its own
        # description, "<cycle>" (and what holds that is not reused elsewhere: where it
        # is met decides)
        if id(value) in _describing():
            memo[_PARTS_CUT] += 1
            return _CYCLE
        described = value.describe()
        if _CYCLE in repr(described):
            memo[_PARTS_CUT] += 1
        return described
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            field.name: _describe(getattr(value, field.name), depth, memo)
            for field in dataclasses.fields(value)
        }
        return {"type": _name(t), "fields": fields}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        fields = {f: _describe(getattr(value, f), depth, memo) for f in value._fields}
        return {"type": _name(t), "fields": fields}
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v, depth, memo) for v in value)
    if isinstance(value, (set, frozenset)):  # iteration order depends on the hash seed
        return {"set": tuple(sorted((_describe(v, depth, memo) for v in value), key=repr))}
    if isinstance(value, Mapping):
        items = [(_describe(k, depth, memo), _describe(v, depth, memo)) for k, v in value.items()]
        return tuple(sorted(items, key=lambda kv: repr(kv[0])))
    if isinstance(value, functools.partial):
        return {
            "partial": _describe(value.func, depth, memo),
            "args": _describe(value.args, depth, memo),
            "keywords": _describe(value.keywords, depth, memo),
        }
    if inspect.ismethod(value):  # its object may hold configuration
        return {"method": _name(value), "of": _describe(value.__self__, depth, memo)}
    if inspect.isfunction(value) and value.__closure__ and _builds_schedules(value):
        # (a schedule of jaxpop's or optax's: what it was built from is its configuration)
        contents = [_cell_contents(cell) for cell in value.__closure__]
        return {"function": _name(value), "closure": _compact(_describe(contents, depth, memo))}
    if callable(value) and hasattr(value, "__qualname__"):
        return _name(value)
    if hasattr(value, "__array__") and hasattr(value, "dtype"):
        try:
            if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
                value = jax.random.key_data(value)
            array = np.asarray(value)
        except Exception:  # an array-like numpy cannot read: described by its repr below
            array = None
        if array is not None and array.ndim == 0:
            return _describe(array.item(), depth, memo)  # np.int64(10) is 10
        if array is not None:
            if array.size <= _ARRAY_VALUES_LIMIT:
                values = _describe(array.tolist(), depth, memo)
            else:
                values = _digest(np.ascontiguousarray(array).tobytes())
            return {"array": str(array.dtype), "shape": array.shape, "values": values}
    if hasattr(value, "__dict__") and not isinstance(value, type):  # e.g. a callable object
        return {"type": _name(t), "fields": _describe(dict(vars(value)), depth, memo)}
    # a slotted object by its slots: jaxpop's and optax's (a Piecewise: its points, not
    # its repr's few), and one whose repr says nothing of it; another by its own repr (a
    # pathlib.Path fills slots of caches as it is used, its hash among them)
    slots = _slots(t) if _builds_schedules(t) or t.__repr__ is object.__repr__ else ()
    if slots and not isinstance(value, type):
        fields = {name: getattr(value, name) for name in slots if hasattr(value, name)}
        fields = _compact(_describe(fields, depth, memo))
        return {"type": _name(t), "fields": fields, "older": _text(value)}
    return _text(value)


def _text(value: Any) -> str:
    """``value`` described by its type's name and its repr (a digest past a length)."""
    text = _ADDRESS.sub("", repr(value))
    if len(text) > _REPR_LIMIT:
        text = f"{text[:_REPR_LIMIT]}... {_digest(text.encode())}"
    return f"{_name(type(value))}: {text}"


def _compact(described: Any) -> Any:
    """A description too long to keep whole as a digest of its text (equal descriptions
    print alike: they are plain data)."""
    text = repr(described)
    return _digest(text.encode()) if len(text) > _REPR_LIMIT else described


def _slots(cls: type) -> tuple[str, ...]:
    """The data slots of ``cls`` and its bases (not ``__weakref__`` / ``__dict__``)."""
    names: list[str] = []
    for klass in cls.__mro__:
        declared = klass.__dict__.get("__slots__", ())
        for name in (declared,) if isinstance(declared, str) else declared:
            if name not in ("__weakref__", "__dict__") and name not in names:
                names.append(name)
    return tuple(names)


def _builds_schedules(obj: Any) -> bool:
    """Whether a function or class is defined in jaxpop or optax (whose closures and
    slotted objects are schedules, built from numbers and other schedules; a user's
    closure is described by its name, any other object by its fields or its repr)."""
    return (getattr(obj, "__module__", None) or "").split(".")[0] in ("jaxpop", "optax")


def _cell_contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # (an empty cell)
        return None


def caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning issued by the calling function at the
    first caller outside jaxpop (a constructor reached through another, ``PB2`` through
    ``PopulationBasedTraining``, warns at the user's line all the same)."""
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "jaxpop":
        frame, level = frame.f_back, level + 1
    return level


def check_probability(name: str, value: Any) -> float:
    """``value`` if it is a real number in ``[0, 1]`` (not a bool), else a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    probability = float(value)
    if not 0.0 <= probability <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return probability


def check_factors(factors: Any) -> tuple[float, ...]:
    """``perturbation_factors`` (any iterable of numbers but a str: a tuple, a list, a
    1-d array, a generator) as a tuple of positive, finite floats."""
    array = isinstance(factors, np.ndarray)
    iterable = factors.ndim == 1 if array else isinstance(factors, Iterable)
    if isinstance(factors, (str, bytes, Mapping)) or not iterable:
        raise TypeError(f"perturbation_factors must be a sequence of numbers, got {factors!r:.40}")
    out = tuple(f.item() if isinstance(f, np.generic) else f for f in factors)
    if not out or not all(
        not isinstance(f, bool)
        and isinstance(f, numbers.Real)
        and math.isfinite(f)
        and float(f) > 0
        for f in out
    ):
        raise ValueError(f"perturbation_factors must be positive numbers, got {out!r}")
    return tuple(float(f) for f in out)


def check_in_space(
    space: Any, population: Sequence[MetaParams], what: str = "initial_population"
) -> None:
    """Raises the error :func:`jaxpop.mutators.explore.check_values` raises for a
    member's ``meta_params`` (a NaN, a value of the wrong kind or none, where ``space``
    explores), naming the member as ``what[i]``. ``space=None``: nothing to check."""
    if space is None:
        return
    for i, meta_params in enumerate(population):
        try:
            explore_lib.check_values(space, meta_params)
        except (KeyError, TypeError, ValueError) as error:  # (a KeyError: a missing one)
            message = error.args[0] if error.args else type(error).__name__
            raise type(error)(f"{what}[{i}]: {message}") from None


def check_number(
    name: str, value: Any, *, minimum: float = 0.0, inclusive: bool = False, integer: bool = False
) -> Any:
    """``value`` if it is a finite real number above ``minimum``, as a Python ``int`` (any
    integral value; required if ``integer``) or ``float``.

    For mutator constructors: a bool, a string or ``None`` is a ``TypeError``; NaN, an
    infinity, a fraction where an int is due, or a number not above ``minimum`` (or below
    it, if ``inclusive``) is a ``ValueError``. Both messages name the argument. A numpy
    scalar comes back as Python's number: ``np.float32(60.0)`` added to a time of 1.7e9
    would compute in float32 (the 60 s rounded away), ``np.float16`` overflow to inf.

    >>> check_number("steps_per_exploit", 10, integer=True)
    10
    >>> check_number("seconds_per_exploit", np.float32(60.0))
    60.0
    """
    noun = "int" if integer else "number"
    # (np.timedelta64 is a numpy integer: a count of its unit, ns say, taken as seconds)
    if isinstance(value, (bool, np.bool_, np.timedelta64)) or not isinstance(value, numbers.Real):
        article = "an" if integer else "a"
        raise TypeError(
            f"{name} must be {article} {noun}, got {type(value).__name__}: {value!r:.40}"
        )
    # (typeshed's numbers.Real has no __int__; every Real type does)
    if not is_finite(value) or (integer and value != int(value)):  # type: ignore[call-overload]
        raise ValueError(
            f"{name} must be a finite {noun} (within float64's range), got {value!r:.40}"
        )
    if value < minimum or (value == minimum and not inclusive):
        above = "positive" if minimum == 0 else f"> {minimum:g}"
        raise ValueError(
            f"{name} must be {f'>= {minimum:g}' if inclusive else above}, got {value!r}"
        )
    if integer or isinstance(value, numbers.Integral):
        return int(value)  # type: ignore[call-overload]
    return float(value)


def is_finite(value: Any) -> bool:
    """``math.isfinite``, ``False`` for an int past float64's range (which it raises on)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_callable(name: str, value: Any) -> Callable[..., Any]:
    """``value`` if it is callable, else a ``TypeError`` naming the argument."""
    if not callable(value):
        raise TypeError(f"{name} must be a function, got {type(value).__name__}: {value!r:.40}")
    return value


def takes_key(fn: Callable[..., Any], num_args: int, given: bool | None = None) -> bool:
    """Whether a user's mutation function wants a PRNG key after its ``num_args`` arguments.

    A function receives the key when its signature has a parameter named ``key`` (by
    name when it is keyword-only: ``def f(meta_params, *, key)``, or a
    ``functools.partial`` that binds an argument before it by keyword), or has
    ``num_args + 1`` or more positional parameters without defaults. Otherwise it is
    called without one (the seed's form, which may draw from numpy's global random
    state). A signature that takes the rest as ``*args`` says neither: a decorator's
    wrapper without ``functools.wraps`` (``def wrapper(*args, **kwargs)``) is read
    through the function it wraps (the one function its closure holds), by the name
    of its parameters only (a wrapper may pass on more arguments than it gets): one
    named ``key`` gets the key; one that takes no more than ``num_args`` arguments is
    the seed's form. Where that cannot tell, the seed's form, with a warning.

    ``given``: the answer, when the caller was told it (a mutator's
    ``mutate_fn_takes_key`` or ``custom_explore_fn_takes_key``): ``True`` or ``False``
    is returned as it is, the signature unread (any other value: ``TypeError``);
    ``None`` (the default) reads the signature.

    >>> takes_key(lambda meta, key: meta, 1), takes_key(lambda meta: meta, 1)
    (True, False)
    >>> takes_key(lambda *args: args[0], 1, given=True)
    True
    """
    if given is not None:
        if not isinstance(given, (bool, np.bool_)):
            raise TypeError(
                f"whether the function takes a key must be True, False or None (read "
                f"from its signature), got {type(given).__name__}: {given!r:.40}"
            )
        return bool(given)
    verdict = _wants_key(fn, num_args, through=False, seen=set())
    if verdict is None:
        warnings.warn(
            f"{getattr(fn, '__qualname__', type(fn).__name__)} takes *args: jaxpop cannot "
            "tell whether it wants a PRNG key, and calls it without one (the seed's form); "
            "name a parameter 'key' to be given one, and make a decorator's wrapper show "
            "the function it wraps (functools.wraps, or functools.update_wrapper(self, fn) "
            "in a class), or tell the mutator (mutate_fn_takes_key=True or False; "
            "custom_explore_fn_takes_key for PopulationBasedTraining)",
            stacklevel=caller_stacklevel(),
        )
        return False
    return verdict


def _wants_key(
    fn: Any, num_args: int, *, through: bool, seen: set[int], by_name: bool = True
) -> bool | None:
    """:func:`takes_key` of ``fn`` (``through``: reached through a wrapper, whose arity
    says nothing; ``by_name``: the wrappers on the way pass keywords on); ``None`` where
    its signature cannot tell."""
    seen.add(id(fn))
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: the seed's form
        return False
    positional = _positional(params)
    if any(p.name == "key" for p in positional):
        return True
    if any(p.name == "key" and p.kind is inspect.Parameter.KEYWORD_ONLY for p in params):
        return True if by_name else None  # (None: a wrapper could not pass it by name)
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    if len(required) > num_args:
        return None if through else True
    if not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return False
    wrapped = _wrapped(fn)
    if wrapped is None or id(wrapped) in seen:
        return None
    by_name = by_name and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return _wants_key(wrapped, num_args, through=True, by_name=by_name, seen=seen)


def _wrapped(fn: Any) -> Callable[..., Any] | None:
    """The function a wrapper that takes ``*args`` passes them on to: a partial's, or
    the one function (not a class, not a builtin) a decorator's wrapper closes over;
    ``None`` if there is no such one."""
    if isinstance(fn, functools.partial):
        return fn.func
    closure = getattr(getattr(fn, "__func__", fn), "__closure__", None) or ()
    found = []
    for cell in closure:
        with contextlib.suppress(ValueError):  # (an empty cell)
            inner = cell.cell_contents
            if callable(inner) and not isinstance(inner, (type, types.BuiltinFunctionType)):
                found.append(inner)
    return found[0] if len(found) == 1 and found[0] is not fn else None


def call_mutate_fn(
    fn: Callable[..., Any], wants_key: bool, args: tuple[Any, ...], key: RawKey
) -> Any:
    """Calls ``fn(*args, key)`` if ``wants_key`` else ``fn(*args)``.

    The first argument (the ``meta_params`` to mutate) is passed as the function's own
    copy (:func:`jaxpop.boundary.private_copy`: fresh containers, writable copies of its
    numpy arrays, deep copies of other leaves), so a function that edits its argument
    in place (``p["lr"] *= 2``, as the seed's do) works, and cannot corrupt the
    checkpoints in the history that share it.
    """
    args = (private_copy(args[0]), *args[1:])
    if not wants_key:
        return own_result(fn(*args))
    return own_result(fn(*args, key=key) if _key_by_name(fn, len(args)) else fn(*args, key))


def own_result(tree: Any) -> Any:
    """What a user's function returned, as the mutator's own: fresh containers and
    read-only copies of numpy arrays (:func:`jaxpop.boundary.copy_in`), so the function
    may keep and edit those; other objects (a choice between objects, say) stay the
    objects it returned, their identity included."""
    return copy_in(tree)


#: ``fn -> (num_args, _key_by_name(fn, num_args))``, held only as long as ``fn`` is
#: (read at every call).
_KEY_BY_NAME: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _key_by_name(fn: Callable[..., Any], num_args: int) -> bool:
    """Whether ``fn`` takes the key by name after ``num_args`` arguments: its ``key``
    parameter is keyword-only, or it has none and no room for another positional
    argument but takes ``**kwargs`` (a function said to take a key); read through the
    wrappers that take ``*args`` (see :func:`takes_key`)."""
    try:
        known, answer = _KEY_BY_NAME[fn]
        if known == num_args:
            return answer
    except (KeyError, TypeError):  # (TypeError: not weakly referable, or unhashable)
        pass
    by_name, seen = False, set()
    inner: Callable[..., Any] | None = fn
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        try:
            params = inspect.signature(inner).parameters
        except (TypeError, ValueError):
            break
        if "key" in params:
            by_name = params["key"].kind is inspect.Parameter.KEYWORD_ONLY
            break
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break  # (a key by name could not pass this wrapper)
        if not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values()):
            # only **kwargs can take it where the positional parameters are all taken
            by_name = len(_positional(params.values())) <= num_args
            break
        inner = _wrapped(inner)
    with contextlib.suppress(TypeError):
        _KEY_BY_NAME[fn] = (num_args, by_name)
    return by_name


def _positional(params: Iterable[inspect.Parameter]) -> list[inspect.Parameter]:
    """The parameters an argument can be passed to by position (not ``*args``)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in params if p.kind in kinds]


def evaluated_since(
    history: History, generation_id: str, since: float, *, by_step: bool
) -> list[Checkpoint]:
    """A generation's evaluated checkpoints from ``since`` on (a step if ``by_step``, else
    a time), by step: the window a score is formed over."""
    if by_step:
        return history.evaluated(generation_id, min_step=since)
    return history.evaluated(generation_id, min_time=since)


def window_mean(values: Sequence[float]) -> float:
    """The mean of a window of evaluations, NaN if any is not finite (a worker that
    diverged inside its window never wins on average): the values over their count,
    summed exactly (``math.fsum``): within an ulp of the exact mean for values of one
    sign (with mixed signs, within about 1e-16 of their mean magnitude); a window of
    equal values averages to that value.

    >>> window_mean([1.0, 2.0, 3.0]), window_mean([1.0, float("inf")])
    (2.0, nan)
    """
    if not all(map(math.isfinite, values)):
        return math.nan
    low, high = min(values), max(values)
    if low == high:  # (equal values: n * round(v / n) may not be v, and a tie was lost)
        return float(low)
    # each v / n rounded (in float64: a numpy float32 would divide in float32), then
    # summed exactly, in C (an exact mean rounded once costs several times more, on
    # every report of a window)
    n = len(values)
    return math.fsum(float(v) / n for v in values)


def last_good(history: History, generation_id: str) -> Checkpoint | None:
    """The generation's latest save with a finite value; else its start, if that holds
    params copied at a finite value; else ``None``."""
    good = history.latest_finite_save(generation_id)
    if good is not None:
        return good
    start = history.first(generation_id)
    value = copied_value(history, start) if start.params is not None else None
    return start if value is not None and math.isfinite(value) else None


def copy_source(history: History, generation_id: str) -> Checkpoint | None:
    """What copying a generation gives: :meth:`History.latest_loadable`, unless that is
    a save whose value is not finite (params saved once its worker diverged, as a later
    evaluation without params ranks it well): then :func:`last_good`, which may be
    ``None`` (nothing that may be copied). ``None`` too before any evaluation."""
    source = history.latest_loadable(generation_id)
    if source is None or source.params is None or source.value is None:
        return source
    if math.isfinite(source.value):
        return source
    return last_good(history, generation_id)


def nothing_to_copy(history: History, generation_id: str) -> bool:
    """Whether an evaluated generation has nothing that may be copied (its saves all
    diverged: :func:`copy_source` is ``None``), so it ranks as a non-finite score.
    O(1) for a generation that never saves: it is copied from its evaluation."""
    return history.saves(generation_id) and copy_source(history, generation_id) is None


def copied_value(
    history: History, checkpoint: Checkpoint, memo: dict[CheckpointRef, float | None] | None = None
) -> float | None:
    """The value a copy of ``checkpoint`` ranks with until it reports its own: the
    checkpoint's value, or, for the unevaluated start of another copy (whose params it
    holds), the value of what that copy copied, and so on up the lineage.

    ``memo``: a dict shared by calls on the same ``history``, which then read each link
    of a chain of such copies once (reading every generation of a long chain was
    quadratic in its length)."""
    walked: list[CheckpointRef] = []
    value: float | None
    seen = 0
    while checkpoint.value is None and seen < len(history):
        if memo is not None and checkpoint.ref in memo:
            value = memo[checkpoint.ref]
            break
        walked.append(checkpoint.ref)
        parent = checkpoint.parent
        found = None
        # not a copy, or not a generation's start at its source's step (it holds params
        # of its own: a kept generation's start, say, of a save trained from its parent)
        if (
            parent is not None
            and parent[0] != checkpoint.generation_id
            and parent[1] == checkpoint.step
            and checkpoint.step == history.first(checkpoint.generation_id).step
        ):
            found = history.get_checkpoint(*parent)
        if found is None:
            value = None
            break
        checkpoint, seen = found, seen + 1
    else:
        value = checkpoint.value
    if memo is not None:
        memo.update(dict.fromkeys(walked, value))
    return value


def rank_value(value: float | None, mode: str = "min") -> float:
    """A score to minimise: ``None``, NaN and +-inf all become ``inf`` (rank last); a
    finite value is negated under ``mode="max"`` (higher is better)."""
    return math.inf if value is None else selection_lib.sort_key(value, mode)


def start_generation(
    parent: Checkpoint, meta_params: MetaParams, key: RawKey, index: int, now: float
) -> tuple[ActiveWorker, Checkpoint]:
    """Starts a new generation from ``parent`` with ``meta_params``.

    Returns the worker assignment (load ``parent.params``, continue from
    ``parent.step``) and the new generation's first checkpoint, whose ``parent`` is
    ``parent`` and whose ``value`` is ``None``. The generation id is derived from
    ``(key, index)``.
    """
    generation_id = new_generation_id(key, index)
    worker = _active_worker(parent.params, meta_params, generation_id, parent.step, ACTIVE)
    start = Checkpoint(
        params=parent.params,
        meta_params=meta_params,
        generation_id=generation_id,
        value=None,
        parent=parent.ref,
        step=parent.step,
        time=now,
    )
    return worker, start
