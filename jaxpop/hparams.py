"""Online hyperparameters: change them inside a jitted training step without recompiling.

A hyperparameter carried as an array is data, not part of the compiled program, so PBT
can change it every step for free. :func:`make_optimizer` builds an
``optax.inject_hyperparams`` optimizer; :func:`set_hparams` / :func:`get_hparams` write
and read its values in any optimizer state (chains, ``MultiSteps``, train states,
vmapped populations); :func:`select_hparams` maps ``meta_params`` to optimizer
arguments; :func:`as_traced` makes other hyperparameters arrays. ``docs/hparams.md``
shows a worker's step and explains the weak-type pitfall and optax's quirks.
"""

from __future__ import annotations

import contextlib
import decimal
import fractions
import functools
import inspect
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Keys",
    "as_traced",
    "find_hparam_states",
    "get_hparams",
    "make_optimizer",
    "select_hparams",
    "set_hparams",
]

#: Which meta-parameters become optimizer arguments: names kept as they are, or a mapping
#: ``{meta-parameter name: optimizer argument name}``.
Keys: TypeAlias = Iterable[str] | Mapping[str, str]

_INJECT_STATES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


def _is_inject_state(x: Any) -> bool:
    return isinstance(x, _INJECT_STATES)


def _sorted(names: Iterable[Any]) -> list[Any]:
    """``names`` in order for a message, sorted by ``repr``: keys of mixed types (an int
    and a str) do not compare."""
    return sorted(names, key=repr)


def select_hparams(
    meta_params: Mapping[str, Any],
    keys: Keys,
    transforms: Mapping[str, Callable[[Any], Any]] | None = None,
) -> dict[str, Any]:
    """The optimizer arguments that ``meta_params`` holds, renamed and transformed.

    Args:
      meta_params: a worker's hyperparameters, e.g. ``{"log_lr": -7.0, "aug": 0.3}``.
      keys: the entries to take -- an iterable of names (kept as they are) or a mapping
        ``{meta-parameter name: optimizer argument name}``, e.g.
        ``{"log_lr": "learning_rate"}``. Entries not named are ignored.
      transforms: functions applied to the selected values, keyed by *optimizer
        argument* name, e.g. ``{"learning_rate": jnp.exp}``. Use ``jnp`` functions so
        that the same call works on traced values inside ``jit``.

    Returns:
      A new dict ``{optimizer argument name: value}``.

    Raises:
      KeyError: a key is not in ``meta_params``, or a transform names no selected
        argument.
      ValueError: two keys map to the same optimizer argument.

    >>> import jax.numpy as jnp
    >>> select_hparams({"log_lr": 0.0, "aug": 0.3}, {"log_lr": "learning_rate"},
    ...                {"learning_rate": jnp.exp})
    {'learning_rate': Array(1., dtype=float32, weak_type=True)}
    """
    if isinstance(keys, str):
        keys = (keys,)
    mapping = dict(keys) if isinstance(keys, Mapping) else {k: k for k in keys}
    missing = [k for k in mapping if k not in meta_params]
    if missing:
        raise KeyError(f"meta_params has no {missing}; it holds {_sorted(meta_params)}")
    targets = list(mapping.values())
    if len(set(targets)) != len(targets):
        raise ValueError(f"keys map two meta-parameters to the same argument: {mapping}")
    transforms = dict(transforms or {})
    stray = _sorted(set(transforms) - set(targets))
    if stray:
        raise KeyError(
            f"transforms for {stray}, which keys does not select; selected: {_sorted(targets)}"
        )
    out = {}
    for meta_name, arg_name in mapping.items():
        value = meta_params[meta_name]
        if arg_name in transforms:
            value = transforms[arg_name](value)
        out[arg_name] = value
    return out


def make_optimizer(
    optimizer_fn: Callable[..., optax.GradientTransformation],
    meta_params: Mapping[str, Any] | None = None,
    *,
    keys: Keys | None = None,
    transforms: Mapping[str, Callable[[Any], Any]] | None = None,
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = jnp.float32,
    **fixed: Any,
) -> optax.GradientTransformationExtraArgs:
    """``optax.inject_hyperparams(optimizer_fn, ...)(**arguments)``, with explicit arguments.

    The optimizer is called with ``select_hparams(meta_params, keys, transforms)`` plus
    the ``fixed`` keyword arguments. Every numeric argument, fixed or not (but those
    named below), lands in the state's ``hyperparams`` (with dtype ``hyperparam_dtype``;
    a Python int too, such as
    ``weight_decay=0``, where the optimizer takes a float: a float default or a type
    hint that admits ``float`` and not ``int``; ``seed=0`` stays an int, and so does
    ``momentum=0`` for ``optax.sgd``, whose hint admits both: write ``0.0``; an
    integer array, a vmapped population's included, likewise; numpy scalars, and a 0-d
    bool array for a flag, are taken as the Python numbers they hold; a whole float for
    an argument hinted as taking an int (muon's ``ns_steps=5.0``, from a PBT perturb) as
    that int; a callable default the call leaves to optax, such
    as adafactor's ``dtype_momentum``, is baked in),
    so :func:`set_hparams` can change it later without recompiling; arguments named in
    ``static_args``, booleans, and the sizes optax reads in Python (adafactor's
    ``min_dim_size_to_factor`` and ``decay_offset``, lbfgs's ``memory_size``, galore's
    ``rank``: injected, a jitted update fails) unless ``meta_params`` gives them, are
    baked in, and so are the arguments optax copies into its state at ``init`` (momo's
    ``lower_bound``, adagrad's ``initial_accumulator_value``, ...: a written value would
    change nothing), which ``meta_params`` may not give.

    Args:
      optimizer_fn: an optax optimizer factory, e.g. ``optax.adam``, ``optax.adamw``.
      meta_params: initial values, e.g. a worker's ``meta_params``; may hold entries
        that are not optimizer arguments (augmentation strengths, ...).
      keys: which ``meta_params`` entries are optimizer arguments (see
        :func:`select_hparams`). ``None``: the entries whose names are parameters of
        ``optimizer_fn``'s signature.
      transforms: functions applied to selected values, keyed by optimizer argument,
        e.g. ``{"learning_rate": jnp.exp}`` with ``keys={"log_lr": "learning_rate"}``.
      static_args: arguments that are neither numbers to inject nor schedules, e.g.
        AdamW's ``mask`` or ``mu_dtype=jnp.float32`` (both callables).
      hyperparam_dtype: dtype of every floating hyperparameter; the default ``float32``
        keeps e.g. ``b2=0.999`` exact with ``bfloat16`` parameters (optax's own default
        uses the parameters' dtype). ``None``: optax's behaviour.
      **fixed: further optimizer arguments, e.g. ``weight_decay=1e-4``, ``nesterov=True``.

    Returns:
      The optimizer, an ``optax.GradientTransformationExtraArgs`` whose state is an
      ``optax.InjectStatefulHyperparamsState``.

    Raises:
      TypeError: an argument is not a parameter of ``optimizer_fn``, or is callable and
        not listed in ``static_args`` (optax would take it for a schedule; build
        scheduled optimizers with ``optax.inject_hyperparams`` directly -- their
        scheduled values cannot be set online anyway); or ``keys`` is ``None`` and
        ``optimizer_fn`` takes ``**kwargs``; or a float argument is text, complex, a
        ``Fraction``, a ``Decimal`` or a list; or an int argument (hinted so:
        :func:`_numeric_parameters`) is a float that is not whole; or a flag (a bool
        default, or a ``bool`` hint) is not a bool (``nesterov=1``, ``"False"``) or is
        a traced one.
      ValueError: an argument is given both by ``meta_params`` and ``fixed``, or by
        ``meta_params`` where optax reads it only at ``init``; or a
        value ``hyperparam_dtype`` cannot hold (it overflows, or underflows to 0 or to a
        subnormal XLA computes with as 0, or a
        decay rate below 1 rounds to 1), the defaults left to optax included (adam's
        ``eps=1e-8`` in ``float16``, its ``b2=0.999`` in ``bfloat16``).

    >>> import jax.numpy as jnp, optax
    >>> tx = make_optimizer(optax.adam, {"learning_rate": 1e-3, "aug": 0.3}, b1=0.5)
    >>> sorted(get_hparams(tx.init({"w": jnp.zeros(2)})))  # "aug" is not adam's
    ['b1', 'b2', 'eps', 'eps_root', 'learning_rate']
    """
    static_args = (static_args,) if isinstance(static_args, str) else tuple(static_args)
    meta_params = {} if meta_params is None else meta_params
    if hyperparam_dtype is not None and not jnp.issubdtype(hyperparam_dtype, jnp.floating):
        raise TypeError(
            f"hyperparam_dtype is the dtype of the floating hyperparameters: a floating "
            f"dtype (or None), got {hyperparam_dtype!r}"
        )
    parameters = inspect.signature(optimizer_fn).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if keys is None:
        if open_ended:
            raise TypeError(
                f"{_name(optimizer_fn)} takes **kwargs: pass keys= to say which "
                "meta_params entries are its arguments"
            )
        keys = [k for k in meta_params if k in parameters]
    selected = select_hparams(meta_params, keys, transforms)
    both = sorted(set(selected) & set(fixed))
    if both:
        raise ValueError(f"{both} given both by meta_params and as fixed arguments")
    arguments = {**fixed, **selected}
    if not open_ended:
        unknown = _sorted(set(arguments) - set(parameters))
        if unknown:
            raise TypeError(
                f"{_name(optimizer_fn)} has no parameter {unknown}; it takes {list(parameters)}"
            )
    floats, ints, flags = _numeric_parameters(optimizer_fn, parameters)
    # sizes optax reads in Python: injected, each is an array and a jitted update fails
    # deep in optax; baked in unless meta_params gives them
    read_in_python = [n for n in _READ_IN_PYTHON if n in parameters and n not in selected]
    # arguments optax copies into its own state at init (momo's lower_bound): injected, a
    # value set_hparams wrote would be read back but never used; baked in, and refused
    # where meta_params gives them (a perturbed value would change nothing)
    where = (getattr(optimizer_fn, "__module__", ""), getattr(optimizer_fn, "__qualname__", ""))
    read_at_init = _READ_AT_INIT.get(where, ())
    adapts = _concrete_flag("adapt_lower_bound", arguments.get("adapt_lower_bound", False))
    if isinstance(adapts, (bool, np.bool_)) and adapts:  # (momo reads lower_bound each update)
        read_at_init = tuple(n for n in read_at_init if n != "lower_bound")
    for name in read_at_init:
        if name in selected:
            raise ValueError(
                f"{_name(optimizer_fn)} reads {name!r} only when its state is made (optax "
                "keeps a copy in the state): set_hparams could never change it; pass it as "
                "a fixed argument, not in meta_params"
            )
    read_in_python += [n for n in read_at_init if n in parameters]
    # a callable default (adafactor's dtype_momentum=jnp.float32) that the call leaves to
    # optax: injected, optax would take it for a schedule (and init fail once another
    # argument, momentum, is given): baked in as the optimizer's own
    callable_defaults = [
        n
        for n, p in parameters.items()
        if n not in arguments and p.default is not inspect.Parameter.empty and callable(p.default)
    ]
    baked = [*read_in_python, *callable_defaults]
    static_args = (*static_args, *[n for n in baked if n not in static_args])
    for name, value in list(arguments.items()):
        value = arguments[name] = _concrete_flag(name, value)
        if isinstance(value, np.generic):
            # optax injects int, float and arrays only: a numpy scalar (np.float32(0.1)
            # read from a config) would be baked in, and never change online (.item()
            # keeps a longdouble a longdouble; bfloat16's kind is "V")
            if value.dtype == bool:
                value = arguments[name] = bool(value)
            elif jnp.issubdtype(value.dtype, jnp.integer):
                value = arguments[name] = int(value)
            elif jnp.issubdtype(value.dtype, jnp.floating):
                value = arguments[name] = float(value)
        if name in flags and name not in static_args and not isinstance(value, (bool, type(None))):
            # optax would inject a number (a config's 1) and the first jitted update fail
            # on the traced flag; text ("False") would be baked in as True
            raise TypeError(
                f"argument {name!r} is a flag, got {type(value).__name__}: {value!r:.40}; "
                "pass True or False"
            )
        if name in floats and name not in static_args and isinstance(value, _NOT_FLOATS):
            # optax would bake it in, and the first update fail far from here (a Fraction
            # or a list too: not injected, then "unsupported operand type(s)")
            hint = " (a number read as text? convert it with float())" * isinstance(value, str)
            raise TypeError(
                f"argument {name!r} is a float, got {type(value).__name__}: {value!r:.40}{hint}"
            )
        kind = getattr(getattr(value, "dtype", None), "kind", None)  # (an array's)
        is_bool = isinstance(value, (bool, np.bool_)) or kind == "b"
        if is_bool and name in floats and name not in static_args:
            raise TypeError(
                f"argument {name!r} is a float, got a bool (it would be injected as a "
                "bool, and set_hparams could never write a float there)"
            )
        if name in ints and name not in static_args:
            value = arguments[name] = _as_int_argument(name, value)
        if type(value) is int and name in floats and name not in static_args:
            # a float written as an int (weight_decay=0): injected as an int, it could
            # never be set to a float
            arguments[name] = float(value)
        elif kind in ("i", "u") and name in floats and name not in static_args:
            # an integer array (np.array(0), or a vmapped population's ints, traced) as
            # the Python int above: a float (a host one as float64, which holds an int64
            # jnp.asarray would cut to int32, and is checked below as a float is)
            if isinstance(value, jax.core.Tracer):
                arguments[name] = value.astype(
                    jnp.result_type(float) if hyperparam_dtype is None else hyperparam_dtype
                )
            else:
                arguments[name] = np.asarray(value).astype(np.float64)
        if callable(value) and name not in static_args:
            raise TypeError(
                f"argument {name!r} is callable, so optax.inject_hyperparams would treat "
                f"it as a schedule: list it in static_args=(..., {name!r}) (a mask, a "
                "dtype), or build a scheduled optimizer with optax.inject_hyperparams"
            )
        value = arguments[name]
        injected_float = name not in static_args and _is_float(value)
        if hyperparam_dtype is None and injected_float and not isinstance(value, jax.core.Tracer):
            _check_not_nan(np.asarray(value), f"hyperparameter {name!r}")  # (as below)
        if hyperparam_dtype is not None and injected_float:
            # as set_hparams writes it later: an overflow refused (1e39 was stored as
            # inf), an array in hyperparam_dtype too (a float16 array stayed float16)
            held = jax.dtypes.canonicalize_dtype(hyperparam_dtype)  # (float32 without x64)
            if not isinstance(value, jax.core.Tracer):  # (a vmapped population's: unread)
                _check_cast(np.asarray(value), held, name)
                if name in _DECAY_RATES:
                    advice = f"pass {name}= a value {held} holds, or a wider hyperparam_dtype"
                    _check_rate(np.asarray(value), held, f"{_name(optimizer_fn)}: {name}", advice)
            if not isinstance(value, float):
                arguments[name] = jnp.asarray(value, held)
    canonical = None  # (float64 without x64 is float32: optax warned once per value)
    if hyperparam_dtype is not None:
        _check_defaults(optimizer_fn, parameters, arguments, static_args, hyperparam_dtype)
        canonical = jax.dtypes.canonicalize_dtype(hyperparam_dtype)
    inject = optax.inject_hyperparams(
        optimizer_fn, static_args=static_args, hyperparam_dtype=canonical
    )
    return inject(**arguments)


def _check_defaults(
    optimizer_fn: Callable[..., Any],
    parameters: Mapping[str, inspect.Parameter],
    arguments: Mapping[str, Any],
    static_args: tuple[str, ...],
    hyperparam_dtype: Any,
) -> None:
    """Refuses a float default the optimizer's call leaves to optax that
    ``hyperparam_dtype`` cannot hold: optax injects the defaults too, cast (adam's
    ``eps=1e-8`` is 0 in float16, and a parameter with no gradient gets NaN updates;
    its ``b2=0.999`` is 1 in bfloat16, and every update is NaN)."""
    held = jax.dtypes.canonicalize_dtype(hyperparam_dtype)
    for name, parameter in parameters.items():
        default = parameter.default
        if type(default) is not float or name in arguments or name in static_args:
            continue
        advice = f"pass {name}= a value {held} holds, or a wider hyperparam_dtype"
        try:
            _check_cast(np.asarray(default), held, name, label=f"the default {name}")
        except ValueError as err:
            raise ValueError(f"{_name(optimizer_fn)}: {err}: {advice}") from None
        if name in _DECAY_RATES:  # (as an explicit one is: by name)
            label = f"{_name(optimizer_fn)}: the default {name}"
            _check_rate(np.asarray(default), held, label, advice)


#: optax's decay rates, by name (adam's and lion's ``b1``, ``b2``, ademamix's ``b3``,
#: prodigy's ``beta3``, muon's ``adam_b1``, ``adam_b2`` and ``beta``, signum's and momo's
#: ``beta``, rmsprop's ``decay``, adadelta's ``rho``, a ``momentum``): at 1 they never
#: decay (adam's ``b2=1``: every update NaN). Not adafactor's ``decay_rate``: an
#: exponent, fine at 1. (A name means the same for every optimizer: optimistic gradient
#: descent's ``beta``, default 1, is refused near 1 too, where the dtype rounds it.)
_DECAY_RATES = frozenset(
    {"b1", "b2", "b3", "beta", "beta3", "adam_b1", "adam_b2", "decay", "rho", "momentum"}
)


def _check_rate(host: np.ndarray, dtype: Any, label: str, advice: str) -> None:
    """Refuses a concrete rate strictly between 0 and 1 that ``dtype`` rounds to 1: a
    decay that never decays (adam's ``b2=0.999`` is 1 in bfloat16, and every update is
    NaN). ``advice`` ends the message."""
    if not (jnp.issubdtype(dtype, jnp.floating) and jnp.issubdtype(host.dtype, jnp.floating)):
        return
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero((host > 0) & (host < 1) & (host.astype(dtype).astype(np.float64) == 1))
    if bad.size:
        # (the first member that rounds, by its index in the population's shape)
        at = "".join(f"[{i}]" for i in np.unravel_index(bad[0], host.shape))
        value = host.reshape(-1)[bad[0]].item()
        below = float(np.nextafter(np.asarray(1, dtype), np.asarray(0, dtype)))
        raise ValueError(
            f"{label}{at} = {value!r} is 1 in {jnp.dtype(dtype)}: a decay rate that would "
            f"never decay (adam's b2 at 1: every update NaN); the closest below 1 that "
            f"{jnp.dtype(dtype)} holds is {below}: {advice}"
        )


def _is_float(value: Any) -> bool:
    """Whether an optimizer argument is a floating number or array (what optax injects
    with ``hyperparam_dtype``)."""
    if type(value) is float:
        return True
    return isinstance(value, (np.ndarray, jax.Array)) and jnp.issubdtype(value.dtype, jnp.floating)


#: what a float argument is never given as (optax would bake it in, not inject it)
_NOT_FLOATS = (
    str,
    bytes,
    complex,
    np.complexfloating,
    decimal.Decimal,
    fractions.Fraction,
    list,
    tuple,
)

#: ``(module, name) -> arguments`` an optax optimizer copies into its state at ``init``
#: and never reads again: injected, a value :func:`set_hparams` wrote would change nothing
_READ_AT_INIT: dict[tuple[str, str], tuple[str, ...]] = {
    ("optax._src.alias", "adagrad"): ("initial_accumulator_value",),
    ("optax._src.alias", "rmsprop"): ("initial_scale",),
    ("optax._src.alias", "rprop"): ("learning_rate",),  # (each step size starts there)
    ("optax._src.alias", "noisy_sgd"): ("key", "seed"),
    ("optax.transforms._adding", "add_noise"): ("key", "seed"),
    ("optax._src.transform", "scale_by_rss"): ("initial_accumulator_value",),
    ("optax._src.transform", "scale_by_rms"): ("initial_scale",),
    ("optax._src.transform", "scale_by_stddev"): ("initial_scale",),
    ("optax._src.transform", "scale_by_yogi"): ("initial_accumulator_value",),
    ("optax._src.transform", "scale_by_rprop"): ("learning_rate",),
    ("optax._src.transform", "scale_by_distance_over_gradients"): ("reps_rel",),
    ("optax.contrib._dog", "dowg"): ("init_estim_sq_dist",),
    ("optax.contrib._cocob", "cocob"): ("eps",),
    ("optax.contrib._cocob", "scale_by_cocob"): ("eps",),
    ("optax.contrib._dadapt_adamw", "dadapt_adamw"): ("estim_lr0",),
    ("optax.contrib._prodigy", "prodigy"): ("estim_lr0",),
    ("optax.contrib._momo", "momo"): ("lower_bound",),  # (unless adapt_lower_bound=True)
    ("optax.contrib._momo", "momo_adam"): ("lower_bound",),
}

#: optax arguments its optimizers read in Python (a shape test, a ``range``): never
#: injected unless ``meta_params`` gives them (adafactor's, lbfgs's, galore's ``rank``:
#: injected, ``init`` failed, "rank must be an int"; mechanize's ``num_betas`` and
#: lookahead's ``sync_period``: the first jitted update failed)
_READ_IN_PYTHON = (
    "min_dim_size_to_factor",
    "decay_offset",
    "memory_size",
    "rank",
    "num_betas",
    "sync_period",
)


def _concrete_flag(name: str, value: Any) -> Any:
    """``value`` as a Python bool if it is a 0-d bool array (``nesterov=np.array(True)``:
    optax bakes in a bool but injects an array, and the first jitted update fails on a
    traced flag), else as it is; a traced one is refused (a flag chooses the code)."""
    if isinstance(value, (np.ndarray, jax.Array)) and value.dtype == bool and not value.ndim:
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"argument {name!r} is a traced bool: a flag chooses the optimizer's "
                "code and is baked in, so it must be concrete (a Python bool)"
            )
        return bool(value)
    return value


def _numeric_parameters(
    optimizer_fn: Callable[..., Any], parameters: Mapping[str, Any]
) -> tuple[set[str], set[str], set[str]]:
    """The parameters of ``optimizer_fn`` that take floats, those that take ints, and
    its flags (hinted ``bool`` or ``bool | None``, or a bool default without a hint),
    from their type hints (each read once) and defaults.

    Floats and not ints: a float default, or a hint that admits ``float`` but not
    ``int`` (``learning_rate: ScalarOrSchedule``); not ``seed: int`` nor ``key:
    ArrayLike`` (an int is a key). Ints: a hint that admits ``int``, with an int default
    (not a bool: muon's ``ns_steps: ArrayLike = 5``) or without ``float`` and a float
    default; never one whose hint admits ``float`` but not ``int`` (``weight_decay:
    float = 0``), nor one without a hint, whose int default says nothing of what it
    takes (``def my_adamw(learning_rate, weight_decay=0)``)."""
    namespace = getattr(inspect.unwrap(optimizer_fn), "__globals__", {})
    floats, ints, flags = set(), set(), set()
    for name, parameter in parameters.items():
        hint = _hint(parameter.annotation, namespace)
        admitted = (hint, *typing.get_args(hint))
        default, takes_float, takes_int = parameter.default, float in admitted, int in admitted
        if type(default) is float or (takes_float and not takes_int):
            floats.add(name)
        # (an int default, not a bool: muon's ns_steps, hinted as an ArrayLike)
        if takes_int and (type(default) is int or (not takes_float and type(default) is not float)):
            ints.add(name)
        # (by the hint where there is one: lars's weight_decay_mask=True takes a mask too)
        hinted = typing.get_args(hint) or (hint,)
        unhinted = hint is None or hint is inspect.Parameter.empty
        if (unhinted and type(default) is bool) or (
            bool in hinted and all(t is bool or t is type(None) for t in hinted)
        ):
            flags.add(name)
    return floats, ints, flags


def _hint(annotation: Any, namespace: dict[str, Any]) -> Any:
    """A parameter's type hint, a postponed (string) one evaluated as
    ``typing.get_type_hints`` does; ``None`` where it cannot be."""
    if not isinstance(annotation, str):  # (optax writes postponed annotations)
        return annotation
    try:
        return eval(annotation, namespace)
    except Exception:
        return None


def _as_int_argument(name: str, value: Any) -> Any:
    """An int argument given as a whole float (``5.0``, a PBT perturb of a count) as
    the int it holds; ``TypeError`` for another float (optax would inject it as a float,
    and the first jitted update fail, or run with a count cut); other values as they are
    (a traced one unread)."""
    if type(value) is float or (
        isinstance(value, (np.ndarray, jax.Array))
        and not isinstance(value, jax.core.Tracer)
        and not value.ndim
        and jnp.issubdtype(value.dtype, jnp.floating)
    ):
        number = float(value)
        if not (math.isfinite(number) and number.is_integer()):
            raise TypeError(f"argument {name!r} is an int, got {value!r:.40}")
        return int(number)
    return value


def find_hparam_states(opt_state: Any) -> list[tuple[str, Any]]:
    """Every injected-hyperparameter state in ``opt_state``, with its path.

    Searches any pytree (tuples of ``optax.chain``, ``MultiStepsState``, a flax
    ``TrainState``, dicts, ...) and the ``inner_state`` of each injected state.

    Returns:
      ``[(path, state), ...]`` in pytree order; ``path`` is a ``jax.tree_util.keystr``
      such as ``"[1]"`` or ``".inner_opt_state"``; ``state`` is an
      ``optax.InjectStatefulHyperparamsState`` (or the deprecated
      ``optax.InjectHyperparamsState``).

    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(optax.clip(1.0), make_optimizer(optax.sgd, learning_rate=0.1))
    >>> [path for path, _ in find_hparam_states(tx.init({"w": jnp.zeros(2)}))]
    ['[1]']
    """
    found: list[tuple[str, Any]] = []

    def visit(prefix: tuple, tree: Any) -> None:
        leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_inject_state)
        for path, leaf in leaves:
            if _is_inject_state(leaf):
                full = prefix + tuple(path)
                found.append((jax.tree_util.keystr(full), leaf))
                visit((*full, jax.tree_util.GetAttrKey("inner_state")), leaf.inner_state)

    visit((), opt_state)
    return found


def get_hparams(opt_state: Any) -> dict[str, jax.Array]:
    """The injected hyperparameters held in ``opt_state``, as a new dict.

    Works on a stacked population of states too (each value then has the leading
    member axis), and inside ``jit`` / ``vmap``.

    Raises:
      ValueError: ``opt_state`` holds no injected state, or two injected states hold
        the same name (e.g. both branches of ``optax.multi_transform``): read them one
        by one with :func:`find_hparam_states`.

    >>> import jax.numpy as jnp, optax
    >>> state = make_optimizer(optax.sgd, learning_rate=0.5).init({"w": jnp.zeros(2)})
    >>> get_hparams(state)
    {'learning_rate': Array(0.5, dtype=float32)}
    """
    states = _require_states(opt_state)
    out: dict[str, jax.Array] = {}
    where: dict[str, str] = {}
    for path, state in states:
        for name, value in state.hyperparams.items():
            if name in out:
                raise ValueError(
                    f"hyperparameter {name!r} is held by two injected states, at "
                    f"{where[name] or '<top>'} and {path or '<top>'}; read them one by one "
                    "with find_hparam_states"
                )
            out[name], where[name] = value, path
    return out


def set_hparams(opt_state: Any, new_hparams: Mapping[str, Any]) -> Any:
    """``opt_state`` with the hyperparameters in ``new_hparams`` replaced.

    Each name is written into every injected state that holds it (so one learning rate
    drives both branches of an ``optax.multi_transform``). Each value is written as
    ``jnp.asarray(value, dtype=old.dtype)`` -- a Python float, a numpy float64 or a
    traced value all give the same strongly typed array the state already held, so a
    jitted step never sees a new abstract value (a weakly typed integer stays weak).
    Nothing is mutated: the states on the path are rebuilt with ``_replace``.

    Works outside and inside ``jit``, and under ``vmap``: for a population of states
    stacked along a leading member axis, ``jax.vmap(set_hparams)(states, {"b1": b1s})``
    or, equivalently, ``set_hparams(states, {"b1": b1s})`` with ``b1s`` of shape
    ``(members,)``.

    Args:
      opt_state: any pytree holding injected states (see :func:`find_hparam_states`).
      new_hparams: ``{name: value}``; each value has the shape of the value it replaces
        (no broadcasting) and a numeric type.

    Returns:
      The new state, of the same structure, shapes and dtypes.

    Raises:
      ValueError: no injected state; a shape differs from the stored one; a name
        follows a schedule (optax recomputes it at every update, a written value would
        be ignored); or a value the stored dtype would change: one that overflows it
        (1e39 in float32) or underflows it to 0 (1e-46) or to a subnormal (1e-40, which
        XLA computes with as 0), a decay rate (``b1``, ``b2``,
        ...) below 1 it rounds to 1 (0.9999 in bfloat16), an integer outside it, a
        number other than 0 or 1 for a bool.
      KeyError: a name is held by no injected state; the message lists the names held.
      TypeError: a value that is not a number (``None``, text); a floating value for
        an integer hyperparameter, or a bool (concrete or traced) for a number.

    >>> import jax.numpy as jnp, optax
    >>> state = make_optimizer(optax.adam, learning_rate=1e-3).init({"w": jnp.zeros(2)})
    >>> state = set_hparams(state, {"learning_rate": 0.25})  # a Python float ...
    >>> get_hparams(state)["learning_rate"]  # ... stored as the float32 it replaces
    Array(0.25, dtype=float32)
    """
    states = _require_states(opt_state)
    new_hparams = dict(new_hparams)
    held = {name for _, state in states for name in state.hyperparams}
    unknown = _sorted(set(new_hparams) - held)
    if unknown:
        raise KeyError(f"no injected hyperparameter named {unknown}; available: {_sorted(held)}")
    for path, state in states:
        scheduled = sorted(set(new_hparams) & set(getattr(state, "hyperparams_states", {})))
        if scheduled:
            raise ValueError(
                f"hyperparameters {scheduled} (at {path or '<top>'}) follow a schedule, "
                "which optax re-evaluates at every update: a written value would be "
                "ignored. Build the optimizer with constants to set them online."
            )

    def rewrite(state: Any) -> Any:
        hyperparams = dict(state.hyperparams)
        for name, value in new_hparams.items():
            if name in hyperparams:
                hyperparams[name] = _cast_like(hyperparams[name], value, name)
        return state._replace(
            hyperparams=hyperparams, inner_state=_map_states(rewrite, state.inner_state)
        )

    return _map_states(rewrite, opt_state)


_NUMBERS = (float, int, complex)  # (a subclass of one is taken as it)
_PLAIN = (bool, *_NUMBERS)


def as_traced(tree: Any, dtype: Any = jnp.float32) -> Any:
    """``tree`` with every leaf converted to a ``jnp`` array of ``dtype`` (``None``: each
    leaf's own, as ``jnp.asarray`` gives it: a Python float's float32, an int's int32).

    For values fed to a jitted function as arguments (augmentation strengths, label
    smoothing, the ``meta_params`` a worker gets): Python floats, numpy scalars and
    arrays of any dtype all become the same strongly typed abstract value, so changing
    them -- or their Python type -- never retraces. Works on traced leaves too.

    Raises:
      TypeError: a leaf is not numeric (or complex, for a real ``dtype``); the message
        names its path.
      ValueError: a host leaf's value is one ``dtype`` cannot hold (``1e39`` in
        float32, ``1e-40`` (a subnormal, which XLA computes with as 0), ``2**40`` in
        int32, ``0.7``, NaN in any dtype, inf in an integer dtype, ``0.5`` in bool), as
        :func:`set_hparams` refuses it; or a leaf named as a decay rate (``b1``,
        ``b2``, ...: the names :func:`set_hparams` knows) below 1 that ``dtype`` rounds
        to 1. A value traced inside ``jit`` cannot be checked, so the rates a jitted
        step writes with :func:`set_hparams` are checked here, by name. (A
        ``jax.Array`` leaf is converted unchecked: reading it back would wait for the
        device.)

    >>> import numpy as np
    >>> as_traced({"aug": 0.5, "smoothing": np.float64(0.125)})
    {'aug': Array(0.5, dtype=float32), 'smoothing': Array(0.125, dtype=float32)}
    """

    # the values are checked against the dtype the array gets: float64 is float32, and
    # int64 int32, without jax_enable_x64 (JAX warns, and converts to those); with
    # dtype=None, each leaf's own (a Python float's float32, an int's int32)
    fixed = None if dtype is None else _target(jax.dtypes.canonicalize_dtype(dtype))

    def convert(path: tuple, leaf: Any) -> jax.Array:
        # host values are checked as set_hparams checks them; a jax array is not read
        # back (that would wait for the device)
        kind = type(leaf)
        if kind not in _PLAIN and isinstance(leaf, _NUMBERS) and not isinstance(leaf, np.generic):
            # a subclass (a YAML loader's float, an IntEnum): checked as its plain value
            plain: Any = next(t for t in _NUMBERS if isinstance(leaf, t))
            leaf = plain(leaf)
            kind = type(leaf)
        elif isinstance(leaf, (decimal.Decimal, fractions.Fraction)):
            leaf, kind = _exact_float(leaf, _where(path)), float  # (then checked as one)
        held, bounds, integer, to_bool, rates, tiny = fixed or _target(_own_dtype(leaf))
        if isinstance(leaf, (str, bytes)):  # (numpy would parse "False" as True)
            raise TypeError(
                f"as_traced: leaf {_where(path)} = {leaf!r:.40} is a {kind.__name__}, not a number"
            )
        if integer and (kind is float or isinstance(leaf, (np.ndarray, np.generic))):
            _check_whole(np.asarray(leaf), held, _where(path))
        if kind is float or kind is int:  # the usual case: no numpy
            if kind is float and (leaf != leaf or (leaf != 0 and abs(leaf) < tiny)):  # (NaN)
                _check_cast(np.asarray(leaf), held, "", label=f"as_traced: leaf {_where(path)}")
            if bounds is not None and not bounds[0] <= leaf <= bounds[1]:
                if kind is float and bounds[2] and not math.isfinite(leaf):
                    return jnp.asarray(leaf, dtype=held)  # an explicit inf stays
                raise ValueError(
                    f"as_traced: leaf {_where(path)} = {leaf!r:.40} is outside the range "
                    f"of {held}; it would be written as another value"
                )
        elif kind is complex or isinstance(leaf, (np.ndarray, np.generic)):
            host = np.asarray(leaf)
            if host.dtype.kind in "US":  # (numpy parses text: "False" is True)
                raise TypeError(
                    f"as_traced: leaf {_where(path)} holds text ({host.dtype}): not a number"
                )
            if host.dtype.kind in "biufc":
                _check_cast(host, held, _where(path), label=f"as_traced: leaf {_where(path)}")
        if rates and _leaf_name(path) in _DECAY_RATES and not isinstance(leaf, jax.Array):
            # (a rate set_hparams writes traced inside jit is not checked there: the
            # value is checked here, where it is still on the host)
            _check_rate(
                np.asarray(leaf),
                held,
                f"as_traced: leaf {_where(path)}",
                "pass a wider dtype=, or keep the rate in the range it holds",
            )
        if to_bool and kind is not bool:
            _check_truth(leaf, f"as_traced: leaf {_where(path)}")
        try:
            return jnp.asarray(leaf, dtype=held)  # (strongly typed, dtype=None too)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"as_traced: leaf {_where(path)} = {leaf!r} is not a number ({err})"
            ) from err

    return jax.tree_util.tree_map_with_path(convert, tree)


class _Target(NamedTuple):
    """What :func:`as_traced` checks a leaf against: the dtype its array gets."""

    dtype: Any  # (canonical; None: unknown, then nothing is checked)
    bounds: tuple[float, float, bool] | None  # (see _bounds)
    integer: bool
    to_bool: bool
    rates: bool  # (a float dtype: decay rates are checked)
    tiny: float  # below a float dtype's normal range a number may round to 0


@functools.lru_cache(maxsize=32)
def _target(held: Any) -> _Target:
    bounds = _bounds(held)
    floating = bounds is not None and bounds[2]
    return _Target(
        held,
        bounds,
        bounds is not None and not bounds[2],
        held is not None and held.kind == "b",
        floating,
        float(jnp.finfo(held).tiny) if floating else 0.0,
    )


def _exact_float(leaf: decimal.Decimal | fractions.Fraction, where: str) -> float:
    """``leaf`` as a float, or ``ValueError`` naming it where the float is another value
    (``Decimal("1e400")`` is inf, ``Fraction(1, 10**400)`` 0) or there is none."""
    try:
        number = float(leaf)
    except (OverflowError, ValueError) as err:  # (Fraction(10**400), Decimal("sNaN"))
        raise ValueError(f"as_traced: leaf {where} = {leaf!r:.40} has no float: {err}") from None
    finite = not isinstance(leaf, decimal.Decimal) or leaf.is_finite()
    if finite and (math.isinf(number) or (number == 0 and leaf != 0)):
        raise ValueError(
            f"as_traced: leaf {where} = {leaf!r:.40} is outside the range of a float; it "
            f"would be written as {number}"
        )
    return number


def _own_dtype(leaf: Any) -> Any:
    """The dtype ``jnp.asarray(leaf)`` gives (canonical: float32 for a Python float or a
    float64, int32 for an int), ``None`` if it has none."""
    kind = type(leaf)
    own: Any
    if kind is bool or kind is int or kind is float or kind is complex:
        own = np.dtype(
            {bool: np.bool_, int: np.int64, float: np.float64, complex: np.complex128}[kind]
        )
    else:
        own = getattr(leaf, "dtype", None)
        if own is not None and not isinstance(own, np.dtype):
            return None  # (a typed PRNG key's: converted as it is)
        if own is None:
            try:
                own = np.result_type(leaf)
            except (TypeError, ValueError):
                return None
    if own.kind in "biufc" or jnp.issubdtype(own, jnp.inexact):  # (bfloat16's kind is "V")
        return jax.dtypes.canonicalize_dtype(own)
    return None


def _check_truth(leaf: Any, label: str) -> None:
    """Refuses a host number a bool would change: anything but 0 and 1 (0.5 is True)."""
    if isinstance(leaf, jax.Array):
        return  # (not read back: that would wait for the device)
    try:
        host = np.asarray(leaf)
    except (TypeError, ValueError):
        return  # (not a number: the conversion says so)
    if host.dtype.kind in "iufc" and not np.all((host == 0) | (host == 1)):
        raise ValueError(
            f"{label} = {host.tolist()!r:.60} is not 0 or 1, which bool would make True or False"
        )


def _check_whole(host: np.ndarray, dtype: Any, where: str) -> None:
    """Refuses a float value an integer ``dtype`` would cut (``0.7`` to ``0``, NaN or inf
    to ``INT_MIN``)."""
    if host.dtype.kind == "f" or (
        host.dtype.kind == "V" and jnp.issubdtype(host.dtype, jnp.floating)
    ):
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(host) & (np.floor(host) == host)
        if not np.all(whole):
            raise ValueError(
                f"as_traced: leaf {where} = {host.tolist()!r:.60} is not a whole number, "
                f"which {jnp.dtype(dtype)} would cut; round it first"
            )


def _require_states(opt_state: Any) -> list[tuple[str, Any]]:
    states = find_hparam_states(opt_state)
    if not states:
        raise ValueError(
            f"no injected hyperparameters in this {type(opt_state).__name__}: build the "
            "optimizer with make_optimizer(...) or optax.inject_hyperparams(...)(...)"
        )
    return states


def _map_states(fn: Callable[[Any], Any], tree: Any) -> Any:
    """Applies ``fn`` to the outermost injected states in ``tree``."""
    return jax.tree_util.tree_map(
        lambda x: fn(x) if _is_inject_state(x) else x, tree, is_leaf=_is_inject_state
    )


def _cast_like(old: Any, value: Any, name: str) -> jax.Array:
    """``value`` as an array of ``old``'s shape and dtype (integers: and weak type).

    Floats are always written strongly typed: that is what optax's update returns, so a
    jitted step sees the same abstract state before and after an update. A weakly typed
    integer (a Python ``int`` argument, which optax passes through unchanged) stays weak.
    """
    old_type = jax.typeof(old)
    host = None  # (a concrete value's host array)
    if not isinstance(value, jax.core.Tracer):  # concrete: check what the cast would lose
        host = _host_number(value, name)
        if host.dtype == object and isinstance(value, int):  # (past 64 bits)
            value = host = _wide_int(value, old_type.dtype, name)
        elif host.dtype.kind in "fc" and host.dtype.itemsize > 8 * (1 + (host.dtype.kind == "c")):
            # a longdouble, which jax cannot read: as the float64 it rounds to (checked next)
            value = host = _as_float64(host, name)
        if host.dtype == bool and old_type.dtype != bool:
            raise TypeError(
                f"hyperparameter {name!r} is {old_type.dtype}, got a bool (it would be "
                "written as 1 or 0)"
            )
        _check_cast(host, old_type.dtype, name)
        if old_type.dtype == bool:
            _check_truth(host, f"hyperparameter {name!r}")
        if host.dtype.kind in "iu" and jnp.issubdtype(old_type.dtype, jnp.inexact):
            value = host.astype(old_type.dtype)  # (jnp.asarray first cuts int64 to int32)
    value = jnp.asarray(value)
    if value.dtype == bool and old_type.dtype != bool:  # (a traced one too: 1.0 was written)
        raise TypeError(
            f"hyperparameter {name!r} is {old_type.dtype}, got a bool (it would be written "
            "as 1 or 0)"
        )
    if jnp.issubdtype(value.dtype, jnp.complexfloating) and not jnp.issubdtype(
        old_type.dtype, jnp.complexfloating
    ):
        raise TypeError(
            f"hyperparameter {name!r} is {old_type.dtype}, got a complex value; its "
            "imaginary part would be dropped"
        )
    if value.shape != old_type.shape:
        raise ValueError(
            f"hyperparameter {name!r} has shape {old_type.shape}, got a value of shape "
            f"{value.shape}"
        )
    if name in _DECAY_RATES and host is not None:  # (after the shape: its index in it)
        _check_rate(host, old_type.dtype, f"hyperparameter {name!r}", "write one it holds")
    if jnp.issubdtype(old_type.dtype, jnp.inexact):
        return jnp.asarray(value, dtype=old_type.dtype)
    if jnp.issubdtype(value.dtype, jnp.inexact):
        raise TypeError(
            f"hyperparameter {name!r} is {old_type.dtype}, got a {value.dtype} value; "
            "round it first (as_traced makes every leaf float32 unless given dtype=None, "
            "which keeps an int an int)"
        )
    if old_type.weak_type:
        # (full_like takes a scalar: a stacked population's array is filled element by
        # element, as vmap(set_hparams) fills it, and stays weak as it does)
        fill = jax.lax.full_like
        for _ in range(value.ndim):
            fill = jax.vmap(fill)
        return fill(old, value)
    return jnp.asarray(value, dtype=old_type.dtype)


def _host_number(value: Any, name: str) -> np.ndarray:
    """A concrete value as a numpy array, or a ``TypeError`` naming the hyperparameter
    for one that is not a number (``None``, text, a dict: jax's own error named none)."""
    try:
        host = np.asarray(value)
    except (TypeError, ValueError) as err:  # (a ragged list, say)
        raise TypeError(f"hyperparameter {name!r}: {value!r:.40} is not a number ({err})") from None
    numeric = host.dtype.kind in "biufc" or jnp.issubdtype(host.dtype, jnp.floating)
    if not numeric and not (host.dtype == object and isinstance(value, int)):
        raise TypeError(
            f"hyperparameter {name!r} takes a number (or an array of numbers), got "
            f"{type(value).__name__}: {value!r:.40}"
        )
    return host


def _as_float64(host: np.ndarray, name: str) -> np.ndarray:
    """A longdouble (or its complex) as float64 (complex128), or a ``ValueError`` where
    that cast overflows or underflows it to 0."""
    wide = np.float64 if host.dtype.kind == "f" else np.complex128
    with np.errstate(over="ignore", under="ignore"):
        out = host.astype(wide)
    if np.any(np.isfinite(host) & ~np.isfinite(out)) or np.any((host != 0) & (out == 0)):
        raise ValueError(
            f"hyperparameter {name!r} = {host!s:.40} is outside float64's range, where "
            "jax reads it: it would be written as inf or 0"
        )
    return out


def _wide_int(value: int, dtype: Any, name: str) -> np.ndarray:
    """A Python int no 64-bit integer holds, as the float64 a float ``dtype`` is cast
    from (checked next); for an integer ``dtype``, or past float64, a ``ValueError``."""
    if jnp.issubdtype(dtype, jnp.inexact):
        with contextlib.suppress(OverflowError):
            return np.asarray(float(value))
        problem = "overflows"
    else:
        problem = "is outside"
    raise ValueError(
        f"hyperparameter {name!r} = {value!r:.40} {problem} its dtype {jnp.dtype(dtype)}"
    )


def _where(path: tuple) -> str:
    return jax.tree_util.keystr(path) or "<top>"


def _leaf_name(path: tuple) -> Any:
    """The name a leaf has in its container (a dict key, an attribute), or ``None``; a
    leaf of a list or tuple has its container's (``{"b2": [0.9, 0.99]}``: two rates)."""
    for entry in reversed(path):
        name = getattr(entry, "key", getattr(entry, "name", None))
        if name is not None:
            return name
    return None


@functools.lru_cache(maxsize=32)
def _bounds(dtype: Any) -> tuple[float, float, bool] | None:
    """The range of a real ``dtype`` (and whether it is a float one, which holds
    infinities), ``None`` for another one (or ``None``)."""
    if dtype is None:
        return None
    if jnp.issubdtype(dtype, jnp.floating):
        big = float(jnp.finfo(dtype).max)
        return -big, big, True
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return int(info.min), int(info.max), False
    return None


def _check_not_nan(host: np.ndarray, label: str) -> None:
    """Refuses a NaN in a concrete float (or complex) value, naming the first one's index."""
    if host.dtype.kind in "fc" or jnp.issubdtype(host.dtype, jnp.floating):  # (bfloat16: "V")
        nan = np.argwhere(np.isnan(host))  # (a 0-d host: shape (1, 0) if NaN)
        if len(nan):
            at = "".join(f"[{int(i)}]" for i in nan[0])  # (none for a scalar)
            raise ValueError(
                f"{label}{at} is NaN: every update computed with it would be NaN, and so "
                "would the parameters it is applied to"
            )


def _check_cast(host: np.ndarray, dtype: Any, name: str, *, label: str | None = None) -> None:
    """Refuses a concrete value that a cast to ``dtype`` would turn into another value:
    a complex into a real type, a finite float that overflows it (1e300 in float32) or
    a non-zero one that underflows it to zero (1e-46 in float32) or to a subnormal XLA
    flushes to zero (1e-40 in float32: :func:`_subnormal_below`), or an integer outside
    an integer type's range (2**40 in int32 wraps to 0). ``label``
    names the value in the messages (default: the hyperparameter ``name``)."""
    label = f"hyperparameter {name!r}" if label is None else label
    _check_not_nan(host, label)
    if host.dtype.kind in "iu" and jnp.issubdtype(dtype, jnp.integer) and host.size:
        low, high, _ = _bounds(dtype)  # type: ignore[misc]  # (an integer dtype has them)
        if int(host.min()) < low or int(host.max()) > high:
            raise ValueError(
                f"{label} = {host.tolist()!r:.60} is outside its dtype "
                f"{jnp.dtype(dtype)} ([{low}, {high}]); it would wrap around"
            )
    if jnp.issubdtype(host.dtype, jnp.floating) and jnp.issubdtype(dtype, jnp.integer):
        with np.errstate(invalid="ignore"):
            finite = host[np.isfinite(host)].astype(np.float64)
        low, high, _ = _bounds(dtype)  # type: ignore[misc]  # (an integer dtype has them)
        # (high + 1 in float64 is exact; high itself may round up: 2**63 - 1 to 2**63)
        if finite.size and (finite.min() < low or finite.max() >= float(high + 1)):
            raise ValueError(
                f"{label} = {host.tolist()!r:.60} is outside its dtype "
                f"{jnp.dtype(dtype)} ([{low}, {high}]); it would wrap around"
            )
    if host.dtype.kind == "c" and not jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"{label} is {dtype}, got a complex value; its imaginary part would be dropped"
        )
    if jnp.issubdtype(dtype, jnp.inexact) and (
        host.dtype.kind in "iu" or jnp.issubdtype(host.dtype, jnp.floating)  # (bfloat16: "V")
    ):
        with np.errstate(over="ignore", under="ignore"):
            cast = host.astype(dtype)
        finite = np.isfinite(host)
        wide = cast.astype(np.float64)
        if np.any(finite & ~np.isfinite(wide)):
            raise ValueError(
                f"{label} = {host.tolist()!r:.60} overflows its dtype "
                f"{jnp.dtype(dtype)}; it would be written as inf"
            )
        if np.any((host != 0) & (wide == 0)):
            raise ValueError(
                f"{label} = {host.tolist()!r:.60} underflows its dtype "
                f"{jnp.dtype(dtype)}; it would be written as 0"
            )
        tiny = _subnormal_below(dtype)
        if tiny and np.any((wide != 0) & (np.abs(wide) < tiny)):
            raise ValueError(
                f"{label} = {host.tolist()!r:.60} underflows its dtype "
                f"{jnp.dtype(dtype)} to a subnormal (below {tiny:g}), which XLA computes "
                "with as 0"
            )


@functools.lru_cache(maxsize=32)
def _subnormal_below(dtype: Any) -> float:
    """The smallest normal number of a floating ``dtype`` whose subnormals XLA flushes to
    zero when it computes (float32, bfloat16, float64: a comparison ``> 0`` is false, a
    division by one gives inf); 0.0 for another dtype. float16 is exempt: XLA computes
    it in float32 on the host, where its subnormals are normal."""
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.dtype(dtype) == jnp.float16:
        return 0.0
    return float(jnp.finfo(dtype).tiny)


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
