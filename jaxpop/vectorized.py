"""A whole population in one compiled step: stacked members, exploit and explore on device.

A :class:`VectorizedPopulation` holds all ``N`` members' training states stacked along
a leading member axis: :func:`init` builds it, :func:`vmap_train_step` lifts a
single-member step to it, :func:`exploit_explore` copies and explores on device, and
:func:`round_fn` runs a whole PBT round as one jitted call. :func:`lineage_init` and
:func:`record` keep the lineage in a host :class:`~jaxpop.history.History`, as in host
mode; :func:`member_mesh` / :func:`shard` spread the members over devices.
``docs/vectorized.md`` is the guide.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpop.core import Changes, PopulationState, check_events_left, check_step
from jaxpop.history import History, check_mode
from jaxpop.hparams import _DECAY_RATES, _check_cast, _check_rate, find_hparam_states, set_hparams
from jaxpop.keys import as_raw_key, new_generation_id
from jaxpop.mutators import explore as explore_lib
from jaxpop.mutators import selection as selection_lib
from jaxpop.mutators.base import check_in_space, check_number
from jaxpop.records import ActiveWorker, Checkpoint
from jaxpop.types import GenerationId, Mode, RawKey

__all__ = [
    "AXIS",
    "Exploit",
    "RoundResult",
    "VectorizedPopulation",
    "constrain",
    "exploit_explore",
    "generation_id",
    "init",
    "init_keys",
    "is_key_leaf",
    "latest_snapshot",
    "lineage_init",
    "member_hparams",
    "member_mesh",
    "record",
    "restore_snapshot",
    "round_fn",
    "run_description",
    "save_snapshot",
    "shard",
    "shardings",
    "vmap_train_step",
    "write_hparams",
]

#: The default name of the mesh axis the members are sharded over.
AXIS = "members"

#: ``hparams -> {optimizer argument: value}``, e.g. ``lambda h: {"learning_rate":
#: jnp.exp(h["log_lr"])}``. ``None``: the entries whose names the optimizer state holds.
OptimizerHparams = Callable[[Mapping[str, jax.Array]], Mapping[str, jax.Array]]


@struct.dataclass
class VectorizedPopulation:
    """A population of ``N`` members stacked along a leading axis.

    Attributes:
      train_state: the members' training states (params, optimizer state with injected
        hyperparameters, any extra state such as a PRNG key or batch statistics), every
        leaf with leading axis ``N``.
      hparams: ``{name: array of shape (N,)}``, the hyperparameters each member trains
        with (optimizer arguments and any others, e.g. augmentation strengths).
      scores: ``float32[N]``, the latest evaluation of each member, as the evaluation
        gave it (ranked by the selection's mode: lower is better under ``"min"``,
        higher under ``"max"``); ``inf`` before the first.
      generation: ``int32[N]``, each member's generation index: the initial members
        hold ``0..N-1`` and each copy takes the next free index; index ``g`` is the
        jaxpop generation id ``new_generation_id(root_key, g)`` (:func:`generation_id`).
      num_generations: ``int32[]``, generation indices handed out so far.
      step: ``int32[]``, training steps taken by the population.
      key: raw ``uint32[2]`` PRNG key of the population's own randomness.
    """

    train_state: Any
    hparams: dict[str, jax.Array]
    scores: jax.Array
    generation: jax.Array
    num_generations: jax.Array
    step: jax.Array
    key: jax.Array

    if TYPE_CHECKING:  # struct.dataclass adds it at run time; type checkers can't see that

        def replace(self, **changes: Any) -> VectorizedPopulation: ...

    @property
    def size(self) -> int:
        """The number of members ``N``."""
        return int(self.scores.shape[0])


@struct.dataclass
class Exploit:
    """What one :func:`exploit_explore` changed, for the host to record.

    Attributes:
      parents: ``int32[N]``, the member each member copied (itself when it kept going).
      copied: ``bool[N]``, which members copied another member.
      old_generation: ``int32[N]``, each member's generation index before the exploit.
      generation: ``int32[N]``, each member's generation index after it.
      hparams: ``{name: (N,)}``, the hyperparameters after it.
      step: ``int32[]``, the population's step when it happened.
    """

    parents: jax.Array
    copied: jax.Array
    old_generation: jax.Array
    generation: jax.Array
    hparams: dict[str, jax.Array]
    step: jax.Array


@struct.dataclass
class RoundResult:
    """What one round of :func:`round_fn` returns for the host.

    :func:`record` takes it as it is (``record(lineage, result, now=...)``).

    Attributes:
      scores: ``float32[N]``, the evaluation the exploit ranked (by the selection's
        mode: lower is better under the default ``"min"``).
      exploit: the :class:`Exploit` that followed the evaluation; ``exploit.step`` is
        the population's step at the evaluation.
      metrics: what the member train step returned, every leaf with leading axes
        ``(K, N)`` (steps of the round, members).
      evaluation: what the evaluation returned besides the score (leading axis ``N``),
        or ``None``.
    """

    scores: jax.Array
    exploit: Exploit
    metrics: Any
    evaluation: Any = None

    @property
    def step(self) -> jax.Array:
        """The population's step at the evaluation (``int32[]``)."""
        return self.exploit.step


# -- hyperparameters in the optimizer state --------------------------------------------------
def _optimizer_values(
    train_state: Any, hparams: Mapping[str, Any], optimizer_hparams: OptimizerHparams | None
) -> dict[str, Any]:
    if optimizer_hparams is not None:
        return dict(optimizer_hparams(hparams))
    held = {name for _, s in find_hparam_states(train_state) for name in s.hyperparams}
    return {k: v for k, v in hparams.items() if k in held}


def write_hparams(
    train_state: Any,
    hparams: Mapping[str, jax.Array],
    optimizer_hparams: OptimizerHparams | None = None,
) -> Any:
    """``train_state`` (stacked or single) with ``hparams`` written into its injected states.

    ``optimizer_hparams`` maps ``hparams`` to optimizer arguments (see
    :data:`OptimizerHparams`); by default the entries whose names an injected state holds
    are written as they are. A state without injected hyperparameters is returned as is.
    """
    values = _optimizer_values(train_state, hparams, optimizer_hparams)
    return set_hparams(train_state, values) if values else train_state


def _write_copies(
    train_state: Any,
    hparams: Mapping[str, jax.Array],
    optimizer_hparams: OptimizerHparams | None,
    copied: jax.Array,
) -> Any:
    """:func:`write_hparams` for the members that ``copied`` only: a member that keeps
    going keeps its optimizer state whole, whatever its train step wrote there. Warns
    (while tracing) as :func:`init` does when nothing would be written: a round that
    forgot the ``optimizer_hparams`` its ``init`` was given would leave every copy
    training with its parent's values."""
    if optimizer_hparams is None:
        _warn_if_none_written(train_state, hparams, stacklevel=4)
    written = write_hparams(train_state, hparams, optimizer_hparams)

    def select(new: Any, old: Any) -> Any:
        if new is old:  # (a leaf write_hparams did not touch)
            return old
        mask = copied.reshape(copied.shape + (1,) * (jnp.ndim(new) - 1))
        return jnp.where(mask, new, old)

    return jax.tree.map(select, written, train_state)


# -- initialisation and the vmapped step ------------------------------------------------------
def _as_space_dtypes(hparams: dict[str, jax.Array], space: Any) -> dict[str, jax.Array]:
    """Given hyperparameters in the dtype a draw from ``space`` has (float32, int32):
    integers written where the space samples floats (``-4`` for ``-4.0``) would truncate
    every explored value, and a narrower dtype (int8, bfloat16, bool) would be refused
    (an int8 cannot hold 200) or round it. A 32-bit or wider one, or a float for an integer space,
    stays."""
    if not isinstance(space, Mapping):
        return hparams
    out = dict(hparams)
    for k, v in hparams.items():
        if k not in space:
            continue
        leaf = space[k]
        try:  # what a draw of this entry gives (constants and nested spaces: skipped)
            want = jax.eval_shape(
                lambda key, leaf=leaf: explore_lib.sample(key, leaf), jax.random.key(0)
            )
        except Exception:
            continue
        if not isinstance(want, jax.ShapeDtypeStruct) or want.dtype == v.dtype:
            continue
        # (below 32 bits: under x64 a draw is float64, and a float32 model's float32
        # hparams stay float32)
        narrower = v.dtype.itemsize < min(want.dtype.itemsize, 4)
        if jnp.issubdtype(want.dtype, jnp.inexact):  # an int (or bool) converted, too
            widen = narrower or not jnp.issubdtype(v.dtype, jnp.inexact)
        else:  # (a float given for an integer space stays a float; a bool is widened)
            widen = narrower and (jnp.issubdtype(v.dtype, jnp.integer) or v.dtype == bool)
        if widen:
            out[k] = v.astype(want.dtype)
    return out


def init_keys(key: jax.Array, num_members: int) -> jax.Array:
    """The keys :func:`init` gives ``init_fn``: ``uint32[num_members, 2]``, one per member.

    Use them to start a host-mode run whose worker ``i`` initialises exactly as member
    ``i`` of ``init(key, ...)`` does (or pass host-mode keys to :func:`init` as
    ``member_keys``).

    >>> from jaxpop.keys import root_key
    >>> init_keys(root_key(0), 4).shape
    (4, 2)
    """
    member_key = jax.random.split(_raw(key), 3)[0]
    return jax.random.split(member_key, num_members)


def init(
    key: jax.Array,
    init_fn: Callable[[jax.Array], Any],
    space: Any = None,
    num_members: int | None = None,
    *,
    hparams: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    member_keys: jax.Array | None = None,
    optimizer_hparams: OptimizerHparams | None = None,
) -> VectorizedPopulation:
    """``num_members`` fresh members: ``init_fn`` on one key each, hparams from ``space``.

    A plain call is one compiled program that initialises the members one after the
    other (``jax.lax.map``), so it costs about one compilation of ``init_fn`` instead
    of dispatching every operation of ``N`` initialisations one by one; the call may
    also be made inside ``jit`` or ``jax.eval_shape``. ``key`` is a raw ``uint32[2]``
    key (or a typed one, stored as its raw data).

    To start from the same state as a host-mode run, pass that run's per-member init
    keys as ``member_keys`` and its initial population (a list of ``meta_params``) as
    ``hparams``: member ``i``'s train state is then ``jax.jit(init_fn)(member_keys[i])``
    bit for bit (an ``init_fn`` run op by op, outside ``jit``, may differ in the last
    bits) and its hyperparameters are ``hparams[i]`` (stored as float32 / int32 arrays,
    or 64-bit ones under x64: a value they cannot hold, an int past int32 or a float
    float32 would make inf or 0, is refused, as are values ``space`` cannot explore).

    Args:
      key: the population's key; the member keys (:func:`init_keys`), the
        hyperparameter draws and the population's own key derive from it.
      init_fn: ``key -> train_state`` of one member (params and optimizer state built
        with :func:`jaxpop.hparams.make_optimizer` or ``optax.inject_hyperparams``).
      space: an explore space (a ``dict``) to sample each member's hparams from; may
        be ``None`` when ``hparams`` is given.
      num_members: ``N``; may be left out when ``member_keys`` or ``hparams`` is given.
      hparams: given initial hyperparameters instead of sampling: ``{name: (N,)}``, or
        one ``{name: number}`` per member (a host-mode initial population).
      member_keys: ``N`` keys (raw ``uint32[N, 2]`` or typed ``(N,)``), member ``i``
        initialised with ``init_fn(member_keys[i])``; default :func:`init_keys`.
      optimizer_hparams: see :func:`write_hparams`.

    >>> import jax.numpy as jnp
    >>> from jaxpop.keys import root_key
    >>> pop = init(root_key(0), lambda k: {"w": jnp.zeros(3)}, hparams=[{"lr": 0.5}, {"lr": 0.25}])
    >>> pop.size, pop.hparams["lr"].tolist()
    (2, [0.5, 0.25])
    """
    _check_flat_space(space)
    _check_raw(key)  # (here: inside jit, a list of floats is a list of tracers)
    if hparams is not None and not isinstance(hparams, Mapping):
        hparams = _stack_members(hparams)
    if hparams is not None:
        hparams = _as_space_dtypes({k: _as_array(k, v) for k, v in hparams.items()}, space)
        _check_no_nan(hparams)
    elif isinstance(space, Mapping):  # (drawn from it: its constants too)
        _check_space_constants(space)
    else:
        raise TypeError(
            "init needs an explore space to sample the hyperparameters from, or the "
            "initial hyperparameters: init(key, init_fn, space, n) or init(key, init_fn, "
            "hparams=[{...} for each member])"
        )
    counts = {}
    if num_members is not None:
        counts["num_members"] = int(check_number("num_members", num_members, integer=True))
    if member_keys is not None:
        member_keys = _as_member_keys(member_keys)
        counts["len(member_keys)"] = int(jnp.shape(member_keys)[0])
    for name, value in (hparams or {}).items():
        if value.ndim != 1:
            raise ValueError(f"hparams[{name!r}] has shape {value.shape}, want (N,)")
        counts[f"len(hparams[{name!r}])"] = int(value.shape[0])
    if not counts:
        raise TypeError("init needs num_members (or member_keys or hparams to count them)")
    n = next(iter(counts.values()))
    if any(count != n for count in counts.values()):
        raise ValueError(f"init got different member counts: {counts}")
    if hparams is not None:
        _check_in_space(space, hparams)
    build = functools.partial(
        _init, init_fn=init_fn, space=space, num_members=n, optimizer_hparams=optimizer_hparams
    )
    pop = jax.jit(build)(key, member_keys, hparams)
    if hparams is not None and optimizer_hparams is None:  # (as the space's, in _init)
        held = _rate_dtypes(pop.train_state)
        for name in sorted(held.keys() & hparams.keys()):
            if not isinstance(hparams[name], jax.core.Tracer):  # (init inside jit: unread)
                for dtype in held[name]:
                    label = f"init: hparams[{name!r}]"
                    _check_rate(np.asarray(hparams[name]), dtype, label, _RATE_ADVICE)
    return pop


def _as_array(name: str, values: Any, where: str = "hparams") -> jax.Array:
    """Given initial ``values`` of a hyperparameter as a JAX array, refusing a value the
    cast to JAX's dtype would change (an int past int32 wraps around without x64, a
    float past float32 would be inf, a tiny one 0), as ``set_hparams`` does; values
    being traced (``init`` inside ``jit``) and JAX arrays are taken as they are.
    ``where`` names them in the messages (``space``: a space's constant)."""
    if isinstance(values, jax.Array):
        return values
    host = np.asarray(values)
    if host.dtype.kind in "biuf":
        dtype = jax.dtypes.canonicalize_dtype(host.dtype)
        _check_cast(host, dtype, name, label=f"{where}[{name!r}]")
        return jnp.asarray(host, dtype)
    if not jnp.issubdtype(host.dtype, jnp.number):  # (bfloat16's kind is "V")
        raise TypeError(
            f"{where}[{name!r}] holds values of dtype {host.dtype} ({host.ravel()[:1]!r:.40}"
            "...): on device a hyperparameter is an array of numbers"
        )
    return jnp.asarray(host)


def _check_in_space(space: Any, hparams: Mapping[str, Any]) -> None:
    """Raises as host mode's controller does for an initial population ``space`` cannot
    explore (a name it explores missing, a value of the wrong kind): the first exploit
    would fail, after a round of training. Values being traced are not checked."""
    if space is None or any(isinstance(v, jax.core.Tracer) for v in hparams.values()):
        return
    n = len(next(iter(hparams.values()))) if hparams else 0
    check_in_space(space, [member_hparams(hparams, i) for i in range(n)], "hparams")


def _check_no_nan(hparams: Mapping[str, Any]) -> None:
    """Raises for a NaN initial hyperparameter, as host mode's ``core.init`` does (no
    explore moves a NaN into its space, and it would be written into the optimizer);
    values being traced (``init`` inside ``jit``) are not checked."""
    for name, value in hparams.items():
        if isinstance(value, jax.core.Tracer) or not jnp.issubdtype(value.dtype, jnp.inexact):
            continue
        nan = np.flatnonzero(np.isnan(np.asarray(value, np.float64)))
        if nan.size:
            raise ValueError(
                f"hparams[{name!r}][{int(nan[0])}] is NaN, which no explore moves into a "
                "space (it usually means the run that produced it diverged)"
            )


def _stack_members(members: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """``[{name: number}] * N`` as ``{name: (N,)}`` (every member with the same names)."""
    members = list(members)
    if not members:
        raise ValueError("hparams is an empty list: give one {name: value} per member")
    names = sorted(members[0])
    for i, m in enumerate(members):
        if sorted(m) != names:
            raise ValueError(f"hparams[{i}] has names {sorted(m)}, hparams[0] has {names}")
    return {k: np.asarray([m[k] for m in members]) for k in names}


def _check_flat_space(space: Any) -> None:
    """A ``TypeError`` unless ``space`` is ``None`` or a flat dict: the population's
    hyperparameters are ``{name: (N,)}``, one array per name."""
    if space is None:
        return
    if not isinstance(space, Mapping):
        raise TypeError(
            f"a vectorized population's space is a dict {{name: space}}, got {type(space).__name__}"
        )
    for name, leaf in space.items():
        if isinstance(leaf, (Mapping, list, tuple)):
            raise TypeError(
                f"a vectorized population's hyperparameters are flat, {{name: (N,)}}: "
                f"space[{name!r}] is a {type(leaf).__name__}; give each hyperparameter its "
                f"own name (e.g. '{name}.lr')"
            )
        if isinstance(leaf, explore_lib.Choice) and not leaf.numeric:
            raise TypeError(
                f"space[{name!r}] is {leaf}, a choice between non-numbers: on device a "
                "hyperparameter is an array of numbers; choose between numbers instead "
                "(choice([0, 1]) for a bool, read as h > 0 in the train step; an index "
                "into a tuple of options for strings)"
            )


_RATE_ADVICE = "keep the space below it, or make the optimizer with a wider hyperparam_dtype"


def _check_space_rates(
    train_state: Any,
    hparams: Mapping[str, Any],
    space: Any,
    optimizer_hparams: OptimizerHparams | None,
    who: str,
) -> None:
    """Refuses, while tracing, a decay rate (adam's ``b2``, ...) that ``space`` can give
    below 1 where it is stored, or where an injected state of the optimizer holds it, as 1
    (``0.9999`` in bfloat16): the optimizer would train with a rate that never decays
    (NaN updates) while the lineage records the value drawn. Host mode's ``set_hparams``
    refuses such a value; a traced one cannot be checked where it is written, so the
    space is. A space that reaches 1 admits 1 and is not checked; rates written through
    ``optimizer_hparams`` are not either (what reaches the optimizer is its function's)."""
    if optimizer_hparams is not None or not isinstance(space, Mapping):
        return
    held = _rate_dtypes(train_state)
    for name in sorted(held.keys() & space.keys() & hparams.keys()):
        stored = jnp.result_type(hparams[name])
        for value in _values_below_one(space[name], stored):
            label = f"{who}: space[{name!r}] ({space[name]}) gives a value"
            for dtype in (stored, *held[name]):
                _check_rate(value, dtype, label, _RATE_ADVICE)


def _rate_dtypes(train_state: Any) -> dict[str, list[Any]]:
    """Each decay rate the optimizer injects (``hparams._DECAY_RATES``): the dtypes of the
    injected states that hold it (a chain of optimizers may hold it in several)."""
    held: dict[str, list[Any]] = {}
    for _, state in find_hparam_states(train_state):
        for name, value in state.hyperparams.items():
            if name in _DECAY_RATES:
                held.setdefault(name, []).append(jnp.result_type(value))
    return held


def _values_below_one(leaf: Any, stored: Any) -> list[np.ndarray]:
    """The values below 1 of ``leaf`` (a space, or a constant) that decide whether a rate
    stored as ``stored`` is held as 1 somewhere, as float64 0-d arrays: a uniform's
    largest draw (its draws are in ``stored``, clipped to its bounds), a choice's values
    and a constant as given (stored, they are rounded). Empty for a space that reaches 1
    (it admits 1) or a dtype that is no float."""
    if not jnp.issubdtype(stored, jnp.floating):
        return []
    if isinstance(leaf, (explore_lib.Uniform, explore_lib.LogUniform)):
        if leaf.high >= 1:
            return []
        top = np.asarray(leaf.high, stored)
        if top > leaf.high:  # (rounded up: the draws are clipped below it)
            top = np.nextafter(top, np.asarray(0, stored))
        return [np.asarray(top, np.float64)] if top >= leaf.low else []
    if isinstance(leaf, explore_lib.Choice):
        candidates = list(leaf.values) if leaf.numeric else []
    elif isinstance(leaf, explore_lib._Leaf):
        return []  # (randint: no rate)
    else:
        candidates = [leaf]
    values = []
    for value in candidates:
        try:
            number = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            continue
        if number.ndim == 0 and 0 < number < 1:
            values.append(number)
    return values


def _check_space_constants(space: Any) -> None:
    """Refuses a constant of ``space`` that members drawn from it could not hold: not a
    number (JAX's "'adam' is not a valid JAX type"), or one their dtype would change
    (``1e39`` stored as inf), as given hyperparameters are refused."""
    for name, leaf in space.items():
        if isinstance(leaf, (explore_lib._Leaf, jax.Array)):
            continue
        if isinstance(leaf, (str, bytes)) or leaf is None:
            raise TypeError(
                f"space[{name!r}] is the constant {leaf!r:.40}: on device a hyperparameter "
                "is an array of numbers; keep it out of the space (or pass hparams=)"
            )
        _as_array(name, [leaf], "space")


def _warn_if_none_written(
    train_state: Any, hparams: Mapping[str, Any], stacklevel: int = 2
) -> None:
    """Warns when the train state injects hyperparameters and none of ``hparams`` is one
    of them: by default nothing is then written into the optimizer (a space of
    ``log_lr`` for an optimizer made with ``keys={"log_lr": "learning_rate"}``), and the
    lineage records values the optimizer never used."""
    held = {name for _, s in find_hparam_states(train_state) for name in s.hyperparams}
    if held and hparams and not held.intersection(hparams):
        warnings.warn(
            f"none of the population's hyperparameters {sorted(hparams)} is one the "
            f"optimizer state injects {sorted(held)}, so with optimizer_hparams=None none "
            "is written into the optimizer: pass optimizer_hparams, a function from the "
            "hyperparameters to optimizer arguments (e.g. lambda h: {'learning_rate': "
            "jnp.exp(h['log_lr'])}), or optimizer_hparams=lambda h: {} where the train "
            "step reads them itself",
            UserWarning,
            stacklevel=stacklevel,
        )


def _init(
    key: jax.Array,
    member_keys: jax.Array | None,
    hparams: Mapping[str, jax.Array] | None,
    *,
    init_fn: Callable[[jax.Array], Any],
    space: Any,
    num_members: int,
    optimizer_hparams: OptimizerHparams | None,
) -> VectorizedPopulation:
    key = _raw(key)
    member_key, hparam_key, own_key = jax.random.split(key, 3)
    if member_keys is None:
        member_keys = jax.random.split(member_key, num_members)
    # One member at a time (jax.lax.map, not vmap): the same program as a jitted
    # ``init_fn`` of one member, bit for bit, and on XLA:CPU a third of the compile time
    # of the vmapped initialisers (random draws); it runs once, so its speed is moot.
    train_state = jax.lax.map(init_fn, member_keys)
    if hparams is None:
        hparams = jax.vmap(lambda k: explore_lib.sample(k, space))(
            jax.random.split(hparam_key, num_members)
        )
    # strongly typed, as exploit_explore's explored values are (a weak one would make
    # the first round's exploit change the population's types: a second trace)
    hparams = {k: jnp.asarray(v, jnp.asarray(v).dtype) for k, v in hparams.items()}
    _check_space_rates(train_state, hparams, space, optimizer_hparams, "init")
    if optimizer_hparams is None:
        _warn_if_none_written(train_state, hparams)
    return VectorizedPopulation(
        train_state=write_hparams(train_state, hparams, optimizer_hparams),
        hparams=hparams,
        scores=jnp.full((num_members,), jnp.inf, jnp.float32),
        generation=jnp.arange(num_members, dtype=jnp.int32),
        num_generations=jnp.asarray(num_members, jnp.int32),
        step=jnp.asarray(0, jnp.int32),
        key=own_key,
    )


def vmap_train_step(
    train_step: Callable[..., tuple[Any, Any]],
    *,
    per_member_batch: bool = False,
    with_step: bool = False,
) -> Callable[[VectorizedPopulation, Any], tuple[VectorizedPopulation, Any]]:
    """Lifts a single-member ``train_step(state, batch, hparams) -> (state, metrics)``.

    The result, ``(population, batch) -> (population, metrics)``, runs every member's
    step with ``jax.vmap`` and advances ``population.step``; ``metrics`` gain the leading
    member axis. With ``per_member_batch`` every leaf of ``batch`` has a leading member
    axis; otherwise all members see the same batch. With ``with_step`` the member step
    is called ``train_step(state, batch, hparams, step)``, ``step`` the population's
    step before this one (an ``int32`` scalar, the same for every member), for
    step-dependent data, schedules or objectives. Jit the result (once: changing
    hyperparameters never retraces). Per-member randomness (augmentation, dropout)
    comes from a key the user keeps in the member's train state.

    >>> import jax.numpy as jnp
    >>> from jaxpop.keys import root_key
    >>> pop = init(root_key(0), lambda k: jnp.zeros(()), hparams={"lr": jnp.ones(2)})
    >>> step = vmap_train_step(lambda s, b, h, t: (s + h["lr"] * t, t), with_step=True)
    >>> pop, _ = step(pop, None)
    >>> pop, seen = step(pop, None)
    >>> pop.train_state.tolist(), seen.tolist(), int(pop.step)
    ([1.0, 1.0], [1, 1], 2)
    """
    batch_axis = 0 if per_member_batch else None
    if with_step:
        step_all = jax.vmap(train_step, in_axes=(0, batch_axis, 0, None))
    else:
        step_all = jax.vmap(train_step, in_axes=(0, batch_axis, 0))

    @functools.wraps(train_step)
    def population_step(pop: VectorizedPopulation, batch: Any) -> tuple[VectorizedPopulation, Any]:
        args = (pop.train_state, batch, pop.hparams) + ((pop.step,) if with_step else ())
        train_state, metrics = step_all(*args)
        return pop.replace(train_state=train_state, step=pop.step + 1), metrics

    return population_step


# -- exploit and explore ----------------------------------------------------------------------
def is_key_leaf(path: Any, leaf: jax.Array) -> bool:
    """Whether a stacked train-state leaf is a PRNG key, for :func:`exploit_explore`.

    A typed key array (``jax.random.key``, one or more keys per member) always is. A raw
    key array (``uint32[N, ..., 2]``: keys of jax's default implementation, one or more
    per member, say one per environment) is when its name in the train state is
    ``"key"`` or ``"rng"`` (``state["key"]``, ``state.rng``). Pass another ``is_key`` to
    ``exploit_explore`` to mark keys stored under other names.
    """
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return True
    last = path[-1] if path else None
    name = getattr(last, "key", None) or getattr(last, "name", None)
    raw_shape = tuple(jax.random.key_data(jax.random.key(0)).shape)
    return (
        name in ("key", "rng")
        and leaf.dtype == jnp.uint32
        and leaf.ndim >= 1 + len(raw_shape)
        and tuple(leaf.shape[leaf.ndim - len(raw_shape) :]) == raw_shape
    )


def _refresh_keys(
    state: Any, copied: jax.Array, index: jax.Array, is_key: Callable[[Any, jax.Array], bool]
) -> Any:
    """Each key of a copied member (all of them, if it has several) folded in with the
    member's new generation index."""

    def fold(keys: jax.Array, i: jax.Array) -> jax.Array:  # one member's keys, any shape
        flat = keys.reshape(-1)
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(flat, i).reshape(keys.shape)

    def refresh(path: Any, leaf: Any) -> Any:
        if not isinstance(leaf, jax.Array) or leaf.ndim == 0 or not is_key(path, leaf):
            return leaf
        typed = jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        keys = leaf if typed else jax.random.wrap_key_data(leaf)
        fresh = jax.vmap(fold)(keys, index.astype(jnp.uint32))
        old_data, new_data = jax.random.key_data(keys), jax.random.key_data(fresh)
        mask = copied.reshape(copied.shape + (1,) * (old_data.ndim - 1))
        data = jnp.where(mask, new_data, old_data)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf)) if typed else data

    return jax.tree_util.tree_map_with_path(refresh, state)


def _check_score_kind(scores: Any, who: str) -> None:
    """Refuses masked scores (a member's hidden value was recorded, or ranked) and times
    (a timedelta64's count of its unit was taken as the score), as ``set_eval`` does."""
    if np.ma.isMaskedArray(scores) and np.ma.getmaskarray(scores).any():
        raise ValueError(f"{who}: a score is masked (no value): {scores!r:.80}")
    dtype = scores.dtype if hasattr(scores, "dtype") else np.asarray(scores).dtype
    if dtype.kind in ("m", "M"):
        raise TypeError(f"{who} needs real-number scores, got {dtype} scores")


def exploit_explore(
    pop: VectorizedPopulation,
    scores: jax.Array,
    key: jax.Array | None = None,
    *,
    space: Any,
    selection: selection_lib.SelectionFn = selection_lib.truncation,
    explore: Callable[[jax.Array, Any, Any], Any] = explore_lib.explore,
    optimizer_hparams: OptimizerHparams | None = None,
    is_key: Callable[[Any, jax.Array], bool] | None = None,
) -> tuple[VectorizedPopulation, Exploit]:
    """One PBT round on device: copy from the parents, explore the copies' hparams.

    Pure and jittable; the arrays keep their shapes and dtypes, so a jitted step that
    calls it compiles once however the hyperparameters change.

    Args:
      pop: the population.
      scores: ``(N,)``, lower is better (for ``mode="max"`` bind it in ``selection``);
        non-finite scores rank worst. Stored as ``pop.scores``. Without x64, host
        scores passed into a ``jit`` of your own are converted by JAX on the way in,
        float64 to float32 and int64 to int32, which wraps past 2**31 without a word:
        pass float32 scores (or call this function outside your ``jit``).
      key: a PRNG key; ``None``: split ``pop.key`` (and advance it).
      space: the explore space of the hyperparameters (see
        :mod:`jaxpop.mutators.explore`).
      selection: ``(key, scores) -> int32[N]`` parents, e.g.
        ``functools.partial(selection.truncation, quantile_fraction=0.2)``.
      explore: ``(key, space, hparams) -> hparams``, applied elementwise to the stacked
        hyperparameters (default :func:`jaxpop.mutators.explore.explore`; pass e.g.
        ``functools.partial(explore.perturb, perturbation_factors=(0.5, 2.0))``). A
        function of one's own must return the hyperparameters it is given, each of its
        shape (else a ``TypeError`` / ``ValueError``); with a ``space`` its result is
        projected onto it (:func:`jaxpop.mutators.explore.clip`), as host PBT does.
      optimizer_hparams: see :func:`write_hparams`.
      is_key: ``(path, leaf) -> bool``, which train-state leaves are PRNG keys (see
        below); default :func:`is_key_leaf`.

    Returns:
      ``(population, exploit)``: members with ``parents[i] != i`` hold a copy of their
      parent's train state (params, optimizer state, extra state), the parent's
      hyperparameters explored, and a new generation index; the others are unchanged.
      A copy does not repeat its parent's random stream: each PRNG key leaf of a copied
      member is its parent's key folded in with the member's new generation index, so
      copies differ from their parent and from each other.
    """
    if _explores_a_space(explore):
        check_space_given(space, pop, "exploit_explore")
    own_key = pop.key
    if key is None:
        own_key, key = jax.random.split(pop.key)
    select_key, explore_key = jax.random.split(_raw(key))
    # scores that float32 cannot order (past 3.4e38, or distinct but equal in float32:
    # from the host, or float64 under x64) reach the selection as their ranks;
    # pop.scores stores the float32 values
    if np.shape(scores) != (pop.size,):
        raise ValueError(
            f"exploit_explore needs one score per member, shape ({pop.size},); got "
            f"{np.shape(scores)}"
        )
    _check_score_kind(scores, "exploit_explore")
    # (a list's dtype as numpy reads it: jnp.asarray raised OverflowError past int32)
    kind = scores.dtype if hasattr(scores, "dtype") else np.asarray(scores).dtype
    if kind == jnp.bool_:  # (as the host refuses bools)
        raise TypeError("exploit_explore needs scores that are numbers, got bools")
    if not (jnp.issubdtype(kind, jnp.integer) or jnp.issubdtype(kind, jnp.floating)):
        raise TypeError(f"exploit_explore needs real-number scores, got {kind} scores")
    ordered = jnp.asarray(selection_lib.device_scores(scores, np.float32), jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    n = pop.size
    members = jnp.arange(n, dtype=jnp.int32)
    parents = jnp.asarray(selection(select_key, ordered), jnp.int32)
    copied = parents != members

    # (dtypes are static: this raises while tracing; whatever explores, mf_pbt_round's too)
    _check_space_rates(pop.train_state, pop.hparams, space, optimizer_hparams, "exploit_explore")
    gathered = jax.tree.map(lambda x: jnp.take(x, parents, axis=0), pop.train_state)
    inherited = jax.tree.map(lambda x: jnp.take(x, parents, axis=0), pop.hparams)
    # (no hyperparameters: nothing to explore, and no space needed)
    explored = explore(explore_key, space, inherited) if inherited else {}
    if inherited and not _explores_a_space(explore):
        explored = _checked_explored(explored, inherited, space)
    for k, v in inherited.items():  # (dtypes are static: this raises while tracing)
        if jnp.issubdtype(jnp.result_type(explored[k]), jnp.inexact) and not jnp.issubdtype(
            v.dtype, jnp.inexact
        ):
            raise TypeError(
                f"hyperparameter {k!r} is stored as {v.dtype}, but its explore space gives "
                f"{jnp.result_type(explored[k])} values, which storing would truncate: "
                f"initialise it with floats (e.g. {{{k!r}: -4.0}}, not -4), or give init "
                "the space too"
            )
    hparams = {
        k: jnp.where(copied, jnp.asarray(explored[k], v.dtype), pop.hparams[k])
        for k, v in inherited.items()
    }
    new_index = pop.num_generations + jnp.cumsum(copied, dtype=jnp.int32) - 1
    generation = jnp.where(copied, new_index, pop.generation)
    gathered = _refresh_keys(gathered, copied, new_index, is_key or is_key_leaf)
    new_pop = pop.replace(
        train_state=_write_copies(gathered, hparams, optimizer_hparams, copied),
        hparams=hparams,
        scores=scores,
        generation=generation,
        num_generations=pop.num_generations + jnp.sum(copied, dtype=jnp.int32),
        key=own_key,
    )
    exploit = Exploit(parents, copied, pop.generation, generation, hparams, pop.step)
    return new_pop, exploit


def round_fn(
    train_step: Callable[..., tuple[Any, Any]],
    eval_fn: Callable[[Any, Mapping[str, jax.Array], Any], Any],
    *,
    steps_per_round: int,
    space: Any = None,
    selection: selection_lib.SelectionFn = selection_lib.truncation,
    explore: Callable[[jax.Array, Any, Any], Any] = explore_lib.explore,
    optimizer_hparams: OptimizerHparams | None = None,
    is_key: Callable[[Any, jax.Array], bool] | None = None,
    exploit: Callable[[VectorizedPopulation, jax.Array], tuple[VectorizedPopulation, Exploit]]
    | None = None,
    data_fn: Callable[[jax.Array, jax.Array, Any], Any] | None = None,
    per_member_batch: bool = False,
    with_step: bool = False,
    mesh: Mesh | None = None,
    axis: str = AXIS,
    unroll: int | bool = 1,
) -> Callable[..., tuple[VectorizedPopulation, RoundResult]]:
    """A whole PBT round as one pure function: ``K`` steps, the evaluation, the exploit.

    The result, ``round(pop, data, eval_data=None) -> (pop, RoundResult)``, runs
    ``steps_per_round`` (``K``) training steps of every member in a ``jax.lax.scan``,
    evaluates every member, and calls :func:`exploit_explore` on the scores (with
    ``key=None``: the key is split from ``pop.key``). Jit it once with
    ``jax.jit(round, donate_argnums=0)``: a round is then one dispatch and the
    population's buffers are updated in place (do not use a population after passing
    it). It computes what ``K`` calls of the jitted :func:`vmap_train_step`, the
    evaluation and :func:`exploit_explore` compute (bit for bit on CPU, tested; another
    compiler may fuse the loop differently and change the last bits).

    The data of the ``K`` steps is either

    * ``data`` itself, a pytree whose leaves have a leading axis ``K`` (step ``t`` trains
      on ``data[t]``; ``(K, N, ...)`` with ``per_member_batch``), or
    * with ``data_fn``, drawn on device: step ``t`` trains on ``data_fn(key, step,
      data)``, ``data`` whatever the round is given (e.g. the training set, kept on the
      device), ``step`` the population's step and ``key`` a fresh key of that step
      (``pop.key`` is split once per round for them). With ``per_member_batch`` it is
      called once per member, with keys that differ between members, so two copies of
      one parent draw different data.

    Args:
      train_step: the member step, as for :func:`vmap_train_step`.
      eval_fn: ``(state, hparams, eval_data) -> score`` or ``(score, aux)`` (a tuple
        or a list; ``aux`` comes back as ``RoundResult.evaluation``) of one
        member (vmapped; ``eval_data`` is the round's third argument, shared by all
        members). Lower scores are better, as for :func:`exploit_explore`.
      steps_per_round: ``K``.
      space, selection, explore, optimizer_hparams, is_key: as for
        :func:`exploit_explore`.
      exploit: ``(pop, scores) -> (pop, Exploit)`` instead of :func:`exploit_explore`
        with the arguments above, e.g. an MF-PBT round (round index ``pop.step //
        steps_per_round``).
      data_fn: ``(key, step, data) -> batch``, see above.
      per_member_batch, with_step: as for :func:`vmap_train_step`.
      mesh: the member mesh to keep the population sharded over (see :func:`constrain`).
      axis: the mesh axis the members are sharded over (as :func:`member_mesh`'s).
      unroll: ``jax.lax.scan``'s ``unroll`` (``True``: all ``K`` steps inlined). Measured
        on XLA:CPU, a vmapped convolutional net ran 3-9x slower per step inside the
        scan's loop than dispatched step by step, and unrolled a little faster than step
        by step; dense nets ran fastest in the loop (``benchmarks/vectorized_step.py``).

    >>> import jax, jax.numpy as jnp
    >>> from jaxpop.keys import root_key
    >>> from jaxpop.mutators import explore
    >>> space = {"lr": explore.uniform(0.1, 0.5)}
    >>> pop = init(root_key(0), lambda k: jnp.ones(()), space, 4)
    >>> step = lambda s, b, h: (s - h["lr"] * b * s, s)
    >>> fused = jax.jit(round_fn(step, lambda s, h, _: s, steps_per_round=3, space=space),
    ...                 donate_argnums=0)
    >>> pop, result = fused(pop, jnp.ones(3))
    >>> int(pop.step), result.metrics.shape, result.scores.shape
    (3, (3, 4), (4,))
    """
    if isinstance(steps_per_round, (bool, np.bool_)) or not isinstance(
        steps_per_round, numbers.Integral
    ):
        raise TypeError(f"steps_per_round must be an int, got {steps_per_round!r}")
    steps_per_round = int(steps_per_round)  # (a numpy integer too)
    if steps_per_round < 1:
        raise ValueError(f"steps_per_round must be at least 1, got {steps_per_round}")
    one_score_each = exploit is None  # (an exploit of one's own may take other scores)
    if exploit is None:
        if space is None:
            raise TypeError(
                "round_fn needs the explore space (space=...) for exploit_explore, or an "
                "exploit=(pop, scores) -> (pop, Exploit) of its own"
            )
        exploit = functools.partial(
            exploit_explore,
            space=space,
            selection=selection,
            explore=explore,
            optimizer_hparams=optimizer_hparams,
            is_key=is_key,
        )
    step_all = vmap_train_step(train_step, per_member_batch=per_member_batch, with_step=with_step)
    eval_all = jax.vmap(eval_fn, in_axes=(0, 0, None))
    k = steps_per_round

    def train(pop: VectorizedPopulation, batch: Any) -> tuple[VectorizedPopulation, Any]:
        pop, metrics = step_all(pop, batch)
        return constrain(pop, mesh, axis), metrics

    def one_round(
        pop: VectorizedPopulation, data: Any, eval_data: Any = None
    ) -> tuple[VectorizedPopulation, RoundResult]:
        if data_fn is None:
            _check_steps(data, k)
            pop, metrics = jax.lax.scan(train, pop, data, unroll=unroll)
        else:
            own_key, data_key = jax.random.split(pop.key)
            members = jnp.arange(pop.scores.shape[0], dtype=jnp.uint32)

            def draw(pop: VectorizedPopulation, _: None) -> tuple[VectorizedPopulation, Any]:
                step_key = jax.random.fold_in(data_key, pop.step)
                if per_member_batch:
                    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, members)
                    batch = jax.vmap(data_fn, in_axes=(0, None, None))(keys, pop.step, data)
                else:
                    batch = data_fn(step_key, pop.step, data)
                return train(pop, batch)

            pop, metrics = jax.lax.scan(
                draw, pop.replace(key=own_key), None, length=k, unroll=unroll
            )
        evaluated = eval_all(pop.train_state, pop.hparams, eval_data)
        scores, aux = _scores_and_aux(evaluated, pop.size if one_score_each else None)
        pop, exploited = exploit(pop, scores)  # (in their dtype: float64 ones are ranked)
        scores = jnp.asarray(scores, jnp.float32)
        return constrain(pop, mesh, axis), RoundResult(scores, exploited, metrics, aux)

    return one_round


def _scores_and_aux(evaluated: Any, n: int | None) -> tuple[jax.Array, Any]:
    """``eval_fn``'s answers as an array of scores (in their dtype) and its aux, or a
    ``TypeError`` that says what an ``eval_fn`` returns; with ``n``, one real score per
    member, ``(n,)``."""
    paired = isinstance(evaluated, (tuple, list))  # (a score is one number a member)
    if paired and len(evaluated) != 2:
        raise TypeError(
            f"eval_fn returned a sequence of {len(evaluated)}; it returns a score, or a "
            "pair (score, aux)"
        )
    scores, aux = evaluated if paired else (evaluated, None)
    if n is None:
        return jnp.asarray(scores), aux
    dtype = getattr(scores, "dtype", None)
    if dtype is None or jnp.shape(scores) != (n,) or jnp.issubdtype(dtype, jnp.complexfloating):
        got = type(scores).__name__ if dtype is None else f"{dtype}{list(jnp.shape(scores))}"
        raise TypeError(
            f"eval_fn must return one real score per member (a number), or (score, aux); "
            f"got {got} for the {n} members (a dict of metrics: return (metric, metrics))"
        )
    return jnp.asarray(scores), aux


def _check_steps(data: Any, steps: int) -> None:
    """``ValueError`` unless every leaf of ``data`` has a leading axis of ``steps``."""
    leaves = jax.tree_util.tree_leaves_with_path(data)
    if not leaves:
        raise ValueError(
            "the round got no data: pass the batches of its steps stacked along a leading "
            "axis, or build the round with data_fn=(key, step, data) -> batch"
        )
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if not shape or shape[0] != steps:
            raise ValueError(
                f"data{jax.tree_util.keystr(path)} has shape {shape}: a round of "
                f"steps_per_round={steps} takes the batches of its steps stacked along a "
                f"leading axis of {steps}"
            )


# -- sharding the member axis -----------------------------------------------------------------
def member_mesh(devices: Sequence[jax.Device] | None = None, axis: str = AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: all), with ``Auto`` axis type.

    ``Auto`` lets XLA place the exploit gather and the selection's sort across devices by
    itself (``jax.make_mesh``'s default ``Explicit`` axes need explicit reshards).
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis,))


def shardings(pop: Any, mesh: Mesh, axis: str = AXIS) -> Any:
    """The ``NamedSharding`` of each leaf of ``pop``: member axis over ``axis``.

    ``pop`` is a :class:`VectorizedPopulation` (its counters and key are replicated) or
    any pytree whose leaves all have the member axis first (e.g. an :class:`Exploit`'s
    arrays, per-member metrics); scalar leaves are replicated.

    Raises:
      ValueError: a member axis the mesh axis does not divide (JAX would replicate or
        pad it, and recompile the round as the layout changes).
    """
    split, whole = NamedSharding(mesh, P(axis)), NamedSharding(mesh, P())
    devices = mesh.shape[axis]

    def leaf(x: Any) -> NamedSharding:
        if jnp.ndim(x) == 0:
            return whole
        if jnp.shape(x)[0] % devices:
            raise ValueError(
                f"a population of {jnp.shape(x)[0]} members cannot be split evenly over "
                f"the {devices} devices of the mesh axis {axis!r} (a leaf of shape "
                f"{jnp.shape(x)}): use a number of members divisible by {devices}, or a "
                "mesh over fewer devices (vz.member_mesh(jax.devices()[:k]))"
            )
        return split

    if isinstance(pop, VectorizedPopulation):
        return pop.replace(
            train_state=jax.tree.map(leaf, pop.train_state),
            hparams=jax.tree.map(leaf, pop.hparams),
            scores=split,
            generation=split,
            num_generations=whole,
            step=whole,
            key=whole,
        )
    return jax.tree.map(leaf, pop)


def shard(pop: Any, mesh: Mesh, axis: str = AXIS) -> Any:
    """``pop`` placed on ``mesh`` with :func:`shardings` (``N`` divisible by the axis size)."""
    return jax.device_put(pop, shardings(pop, mesh, axis))


def constrain(pop: Any, mesh: Mesh | None, axis: str = AXIS) -> Any:
    """Inside ``jit``: keeps ``pop`` sharded like :func:`shardings` (no-op for ``None``).

    Call it on a population a jitted step returns, so that an exploit gather does not
    leave it replicated and the next call does not retrace.
    """
    if mesh is None:
        return pop
    return jax.lax.with_sharding_constraint(pop, shardings(pop, mesh, axis))


# -- host-side lineage ------------------------------------------------------------------------
def generation_id(root_key: RawKey, index: int) -> GenerationId:
    """The jaxpop generation id of generation index ``index`` in the run of ``root_key``."""
    raw = _raw(root_key) if _is_typed(root_key) else root_key
    return new_generation_id(as_raw_key(raw, "root_key"), int(index))


def member_hparams(hparams: Mapping[str, Any], member: int) -> dict[str, float | int | bool]:
    """Member ``member``'s hyperparameters as plain Python numbers (journal-safe): a
    bool, an int or a float, as its dtype is."""
    return {name: _plain(np.asarray(values)[[member]])[0] for name, values in hparams.items()}


#: The mutator kind a vectorized population's journal records (:func:`run_description`).
VECTORIZED_KIND = "jaxpop.vectorized"


def run_description(population_size: int) -> dict[str, Any]:
    """What a vectorized population's journal records as its run:
    ``storage.Store(log_dir, run=vz.run_description(n))``.

    It names the population size and the kind ``"jaxpop.vectorized"``, so a
    ``PopulationController`` opened on that ``log_dir`` refuses it (a run recorded with
    no description was taken over by a controller, which recorded its own mutator there
    and failed on the population's params), and the population resumed with another
    size is refused too. A journal recorded without one takes it at its next start.

    >>> run_description(8)["mutator"]
    {'kind': 'jaxpop.vectorized', 'config': {}}
    """
    from jaxpop.storage.run import DESCRIPTION_FORMAT

    size = check_number("population_size", population_size, integer=True)
    return {
        "population_size": int(size),
        "mutator": {"kind": VECTORIZED_KIND, "config": {}},
        "description_format": DESCRIPTION_FORMAT,
    }


def lineage_init(
    pop: VectorizedPopulation,
    root_key: RawKey,
    *,
    now: float,
    params: Any = None,
    mode: Mode = "min",
) -> PopulationState:
    """The host lineage of a fresh population: one root generation per member.

    Like :func:`jaxpop.core.init`: worker ``i`` holds generation ``generation_id(root_key,
    i)`` at ``pop.step`` with its hyperparameters, and the history holds each
    generation's first checkpoint (no value, no parent). ``params``: the handle of a
    snapshot of ``pop``, or ``None``. ``mode``: which scores are better, as the
    ``selection`` of :func:`exploit_explore` ranks them (``"max"``: higher), recorded
    in the history for garbage collection, replay and reports.
    """
    # (a typed key too, as init takes one)
    root_key = as_raw_key(_raw(root_key) if _is_typed(root_key) else root_key, "root_key")
    step = int(pop.step)
    generation = np.asarray(pop.generation)
    workers, history = [], History(mode=check_mode(mode))
    for i in range(pop.size):
        meta = member_hparams(pop.hparams, i)
        gen_id = generation_id(root_key, int(generation[i]))
        workers.append(ActiveWorker(params, meta, gen_id, step))
        history = history.add(Checkpoint(params, meta, gen_id, None, None, step, now))
    return PopulationState(tuple(workers), (), root_key, history, 0)


def record(
    state: PopulationState,
    scores: Any,
    *,
    step: int | None = None,
    now: float,
    exploit: Exploit | None = None,
    params: Any = None,
) -> tuple[PopulationState, Changes]:
    """Records one evaluation round (and the exploit that followed it) in the lineage.

    Pure host function. Each member's evaluation becomes a checkpoint of its current
    generation at ``step`` with value ``scores[i]``; then, for each member that
    ``exploit`` says copied another, a new generation starts from the parent's
    checkpoint just recorded (as :func:`jaxpop.mutators.base.start_generation` does in
    host mode), with the member's new hyperparameters. Every member's assignment moves
    to ``step`` and ``params`` (the report's current step, what a resume stands on).

    Args:
      state: the lineage (from :func:`lineage_init` or a previous ``record``).
      scores: ``(N,)``, the scores ``exploit_explore`` was given (host or device array);
        or a :class:`RoundResult`, which brings its scores, exploit and step.
      step: the step of the evaluation (taken from a ``RoundResult``): the
        population's step as a rule, or a count of one's own (the RL example records
        environment steps); ``exploit.step`` is not compared with it.
      now: the time to record.
      exploit: what :func:`exploit_explore` returned, or ``None`` for an evaluation
        without exploit.
      params: the handle recorded as every new checkpoint's ``params`` (a snapshot of
        the stacked population, see :func:`save_snapshot`), or ``None``.

    Returns:
      ``(state, changes)``; ``changes`` is what :class:`jaxpop.storage.Store` journals.
    """
    if isinstance(scores, RoundResult):
        if exploit is not None:
            raise TypeError("record got a RoundResult and an exploit: its exploit is recorded")
        step = int(scores.step) if step is None else step
        scores, exploit = scores.scores, scores.exploit
    if step is None:
        raise TypeError("record needs step= (the population's step of the evaluation)")
    check_events_left(state)  # (before anything: a round past the last event is refused)
    step = check_step(step if isinstance(step, int) else np.asarray(step).item())
    _check_score_kind(scores, "record")
    scores = np.asarray(scores, np.float64)
    n = state.population_size
    if scores.shape != (n,):
        raise ValueError(
            f"record takes one score per member: shape ({n},), got shape {scores.shape}"
        )
    arrays = _check_follows(state, step, exploit)
    history, added = state.history, []
    evaluated: list[Checkpoint] = []
    for worker, score in zip(state.workers, scores.tolist(), strict=True):
        checkpoint = history.continuation(worker.generation_id, step, params, score, now)
        history = history.add(checkpoint)
        added.append(checkpoint)
        evaluated.append(checkpoint)
    # every member stands at this round's checkpoint now (its assignment follows its
    # progress, as a host worker's follows its reports): the report's current step,
    # and the snapshot a collection keeps for it, are this round's
    workers = [
        ActiveWorker(params, w.meta_params, w.generation_id, step, w.status) for w in state.workers
    ]
    changed = list(enumerate(workers))
    if exploit is not None:
        parents, copied, generation = arrays["parents"], arrays["copied"], arrays["generation"]
        for i in np.flatnonzero(copied):
            if not 0 <= int(parents[i]) < n:  # (a custom selection's: unchecked on device)
                raise ValueError(
                    f"exploit.parents[{int(i)}] is {int(parents[i])}, not a member of a "
                    f"population of {n}: a selection must return member indices in "
                    f"[0, {n}) (on device, an index outside reads NaN and zeros)"
                )
            parent = evaluated[int(parents[i])]
            meta = member_hparams(exploit.hparams, int(i))
            gen_id = generation_id(state.key, int(generation[i]))
            start = Checkpoint(params, meta, gen_id, None, parent.ref, step, now)
            history = history.add(start)
            added.append(start)
            workers[i] = ActiveWorker(params, meta, gen_id, step)
            changed[i] = (int(i), workers[i])
        _check_kept_hparams(state, exploit, copied)
        _check_copies_rank(history, scores, parents, copied)
    num_events = state.num_events + 1
    new_state = PopulationState(tuple(workers), state.mutator_state, state.key, history, num_events)
    changes = Changes(tuple(added), tuple(changed), state.mutator_state, num_events, now)
    return new_state, changes


def _check_follows(
    state: PopulationState, step: int, exploit: Exploit | None
) -> dict[str, np.ndarray]:
    """Raises unless this round follows the last one ``state`` recorded: each member's
    generation before the exploit is the one the lineage holds (a round exploited and
    not recorded, or recorded twice, journaled copies that never happened and missed
    ones that did), and the step is past each member's newest evaluation. Returns the
    exploit's per-member arrays on the host (none without an exploit)."""
    n = state.population_size
    history = state.history
    for i, worker in enumerate(state.workers):
        latest = history.latest(worker.generation_id)
        if step < latest.step or (step == latest.step and latest.value is not None):
            raise ValueError(
                f"record at step {step}, but member {i}'s generation already has "
                f"{'an evaluation' if latest.value is not None else 'a checkpoint'} at step "
                f"{latest.step}: rounds are recorded once each, in order"
            )
    if exploit is None:
        return {}
    arrays = {
        name: np.asarray(getattr(exploit, name))
        for name in ("parents", "copied", "old_generation", "generation")
    }
    for name, array in arrays.items():
        if array.shape != (n,):
            raise ValueError(f"exploit.{name} has shape {array.shape}, not ({n},): one per member")
    for i, (worker, old) in enumerate(
        zip(state.workers, arrays["old_generation"].tolist(), strict=True)
    ):
        if generation_id(state.key, int(old)) != worker.generation_id:
            raise ValueError(
                f"the exploit does not follow the lineage: member {i} was generation "
                f"{old} before it, but the lineage holds it on another (a round "
                "exploited and not recorded, or recorded twice?); record every round "
                "once, in order"
            )
    return arrays


def _check_kept_hparams(state: PopulationState, exploit: Exploit, copied: np.ndarray) -> None:
    """Raises when the exploit changed the hyperparameters of a member that copied no one
    (a custom ``exploit=``'s): the lineage would go on recording the old ones, which the
    member no longer trains with. Compared as the lineage records them
    (:func:`member_hparams`: a bool, an int or a float each, NaN equal to NaN)."""
    host = {name: _plain(np.asarray(values)) for name, values in exploit.hparams.items()}
    kept = np.flatnonzero(~copied.astype(bool)).tolist()
    for i in kept:
        old = state.workers[i].meta_params
        if set(old) == set(host) and all(_same_plain(old[k], v[i]) for k, v in host.items()):
            continue
        new = member_hparams(exploit.hparams, i)
        raise ValueError(
            f"the exploit changed member {i}'s hyperparameters ({old!r:.60} -> "
            f"{new!r:.60}) without a copy (exploit.copied[{i}] is False): the lineage "
            "would record values the member does not train with. A member whose "
            f"hyperparameters change starts a new generation: set copied[{i}] with "
            f"parents[{i}] = {i} (a copy of itself) and a new generation index"
        )


def _plain(values: np.ndarray) -> list[Any]:
    """An array's values as the lineage records them (:func:`member_hparams`): Python
    bools, ints or floats, as its dtype is (one ``tolist`` for all)."""
    if values.dtype == bool or np.issubdtype(values.dtype, np.integer):
        return values.tolist()
    return values.astype(np.float64).tolist()  # (bfloat16 too: its kind is "V")


def _same_plain(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b or (a != a and b != b))


def _check_copies_rank(
    history: History, scores: np.ndarray, parents: np.ndarray, copied: np.ndarray
) -> None:
    """Warns when every copy of a round took a parent whose score ranks below the
    copier's under the lineage's mode: the selection ranked the other way (its mode
    is not the lineage's, say a selection left at "min" for accuracies)."""
    copiers = np.flatnonzero(copied).tolist()
    if not copiers:
        return
    rank = history.rank
    if all(rank(scores[int(parents[i])]) > rank(scores[i]) for i in copiers):
        warnings.warn(
            f"every copy of this round took a member scoring worse than the copier under "
            f"the lineage's mode {history.mode!r} (member {copiers[0]} copied member "
            f"{int(parents[copiers[0]])}): is the selection's mode the lineage's "
            "(lineage_init(..., mode=...))? Or did it see other scores (int64 scores "
            "passed into a jit wrap around as int32)?",
            stacklevel=3,
        )


def latest_snapshot(lineage: PopulationState) -> Any:
    """The snapshot handle of the newest round :func:`record` gave one (``None``: none).

    Where a run resumes whose journal may hold rounds past its newest snapshot (one
    that snapshots every few rounds, or whose process died between two appends): it
    restores this snapshot and runs the rounds after it again, recording only those the
    journal does not hold (``docs/multihost.md``). Follows member 0's lineage back from
    its newest checkpoint: O(rounds since that snapshot).
    """
    history = lineage.history
    newest = history.latest(lineage.workers[0].generation_id)
    return next((c.params for c in history.back_from(newest) if c.params is not None), None)


def save_snapshot(store: Any, pop: VectorizedPopulation, *, name: str = "vectorized") -> str:
    """Saves the stacked population with a :class:`jaxpop.checkpointing.ParamStore`.

    Returns the handle; pass it as ``params`` to :func:`record` so the lineage points to
    it, and call ``store.wait()`` before relying on it.

    A population sharded over several processes (``jax.distributed``) is saved
    collectively: every process calls ``save_snapshot`` at the same point with a store on
    the same shared directory; each writes the members on its own devices, nothing is
    gathered, the save is finalized when it returns and every process gets the same
    handle (see :mod:`jaxpop.multihost`).
    """
    return store.save(name, int(pop.step), pop)  # a replicated scalar: read locally


def restore_snapshot(
    store: Any,
    handle: str,
    like: VectorizedPopulation,
    mesh: Mesh | None = None,
    axis: str = AXIS,
) -> VectorizedPopulation:
    """Loads a snapshot saved by :func:`save_snapshot` into the structure of ``like``.

    ``like`` may be abstract (``jax.eval_shape`` of the :func:`init` call). With ``mesh``
    the arrays come back sharded over it, the member axis over its axis ``axis`` (as
    :func:`shardings`). With several processes, ``mesh`` (over all processes' devices)
    is required and the restore is collective: every process calls it, and reads only
    the members on its own devices.
    """
    if mesh is None and jax.process_count() > 1:
        raise ValueError(
            f"restore_snapshot in a program of {jax.process_count()} processes needs the "
            "mesh the population is sharded over (mesh=vz.member_mesh()): without it "
            "every process would load the whole population onto its own device"
        )
    # (a weakly typed leaf, a Python number init_fn returned, comes back weak: else the
    # resumed run would promote where the uninterrupted one did not)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, weak_type=jax.typeof(x).weak_type),
        like,
    )
    if mesh is not None:
        target = jax.tree.map(
            lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s, weak_type=t.weak_type),
            target,
            shardings(like, mesh, axis),
        )
    return store.restore(handle, target)


def _is_typed(key: Any) -> bool:
    return hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def check_space_given(space: Any, pop: VectorizedPopulation, who: str) -> None:
    """A ``TypeError`` naming ``who`` if the population has hyperparameters to explore
    and ``space`` is ``None``."""
    if space is None and pop.hparams:
        raise TypeError(
            f"{who} needs the explore space (space=...) of the hyperparameters "
            f"{sorted(pop.hparams)}"
        )


def _checked_explored(explored: Any, inherited: dict[str, Any], space: Any) -> Any:
    """A custom explore's result, checked as it is stored: the hyperparameters it was
    given (a missing key failed as a bare ``KeyError``), each of their shape (a scalar
    was broadcast: every copy given member 0's value), and, with a space, projected onto
    it (:func:`jaxpop.mutators.explore.clip`, as host PBT does: ``h * 100`` was stored
    past the space's bounds). A constant of the space may come back as a scalar, or
    for a key the population does not hold (what jaxpop's own explores give)."""
    constants = (
        {k for k, v in space.items() if not explore_lib.is_space(v)}
        if isinstance(space, Mapping)
        else set()
    )
    if not isinstance(explored, Mapping) or not (
        set(inherited) <= set(explored) <= set(inherited) | constants
    ):
        got = sorted(explored) if isinstance(explored, Mapping) else type(explored).__name__
        raise TypeError(
            f"explore must return the hyperparameters it was given, a dict of "
            f"{sorted(inherited)}; got {got}"
        )
    explored = {k: explored[k] for k in inherited}
    for k, v in inherited.items():  # (shapes are static: this raises while tracing)
        shape = jnp.shape(explored[k])
        if shape != v.shape and not (k in constants and shape == ()):
            raise ValueError(
                f"explore returned hyperparameter {k!r} of shape {shape}, given {v.shape} "
                "(one value per member)"
            )
    if space is None:
        return explored
    clipped = explore_lib.clip(space, explored)
    return {k: clipped[k] for k in inherited}


def _explores_a_space(explore: Any) -> bool:
    """Whether ``explore`` is jaxpop's (or a ``functools.partial`` of one), which reads
    the space; a function of one's own may need none."""
    while isinstance(explore, functools.partial):
        explore = explore.func
    return getattr(explore, "__module__", None) == explore_lib.__name__


def _raw(key: Any) -> jax.Array:
    """A raw ``uint32[2]`` key from a raw or a typed key (a float or bool array is no
    key: cast, ``[0.5, 1.5]`` would silently be the key ``[0, 1]``)."""
    if _is_typed(key):
        data = jax.random.key_data(key)
        if data.shape[-1:] != (2,):  # (rbg, unsafe_rbg: 4 words)
            raise TypeError(
                f"a typed key must be a threefry one (jax.random.key(seed)), got one of "
                f"{jax.random.key_impl(key)}; or pass a raw key (its key_data)"
            )
        return data
    _check_raw(key)
    return jnp.asarray(key, jnp.uint32)


def _as_member_keys(keys: Any) -> Any:
    """``init``'s ``member_keys`` checked: ``N`` typed threefry keys (shape ``(N,)``),
    or raw integer ones (shape ``(N, 2)``, a nested list too, as ``uint32``); a
    ``TypeError`` saying what was given instead (a single key, a flat list, floats)."""
    if _is_typed(keys):
        if jnp.ndim(keys) != 1:
            raise TypeError(
                f"member_keys are N typed keys, shape (N,): got shape {jnp.shape(keys)} "
                "(one key for the population is key=; jax.random.split(key, N) gives N)"
            )
        _raw(keys)  # (refuses rbg keys, as key= does)
        return keys
    if not isinstance(keys, jax.Array):  # (a list, a numpy array)
        keys = np.asarray(keys)
    if not jnp.issubdtype(keys.dtype, jnp.integer):
        raise TypeError(f"member_keys are N raw keys, integers, got dtype {keys.dtype}")
    words = _raw_words()
    if jnp.ndim(keys) != 2 or jnp.shape(keys)[1] != words:
        raise TypeError(
            f"member_keys are N raw keys, shape (N, {words}) (or N typed keys, shape "
            f"(N,)): got shape {jnp.shape(keys)}"
        )
    return keys if isinstance(keys, jax.Array) else jnp.asarray(keys.astype(np.uint32))


def _raw_words() -> int:
    """The words of a raw key of the default PRNG: 2 for threefry, jaxpop's; 4 under
    ``jax_default_prng_impl="rbg"``."""
    return 4 if "rbg" in str(jax.config.jax_default_prng_impl) else 2  # type: ignore[attr-defined]


def _check_raw(key: Any) -> None:
    """A ``TypeError`` for a raw key that is not integers (read without a jax operation:
    an eager one would compile)."""
    if _is_typed(key):
        return
    dtype = getattr(key, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(key).dtype
        except Exception:  # (a list of tracers: jax says what is wrong when it is used)
            return
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"a raw key is an array of uint32 (shape (2,)), got {dtype}")
    shape = np.shape(key)
    words = _raw_words()
    if not shape or shape[-1] != words:  # (an int seed passed as the key, say)
        raise TypeError(
            f"a raw key is an array of uint32 of shape ({words},), the default PRNG's "
            f"(jaxpop.keys.root_key(seed) under threefry), got one of shape {shape}"
        )
