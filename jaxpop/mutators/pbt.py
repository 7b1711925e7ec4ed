"""``PopulationBasedTraining``: the PBT paper's exploit/explore loop as a jaxpop mutator.

Population based training (Jaderberg et al. 2017, arXiv 1711.09846) lets a worker that
is doing badly copy the weights of one doing well (*exploit*) and move the copied
hyperparameters a little (*explore*). Options keep the names of Ray Tune's
``PopulationBasedTraining`` where they mean the same thing. ``docs/pbt.md`` maps every
option to Ray Tune's and specifies when a worker is ready, how it is scored and
selected, what an exploit copies, how explore moves, and the mutator's state;
:func:`exploit_events` lists every exploit from the lineage.
"""

from __future__ import annotations

import bisect
import functools
import math
import warnings
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from jaxpop import encoding
from jaxpop.history import History, check_mode, is_kept, start_time
from jaxpop.keys import split_key
from jaxpop.mutators import _views
from jaxpop.mutators import explore as explore_lib
from jaxpop.mutators import selection as selection_lib
from jaxpop.mutators._host_random import HostRandom
from jaxpop.mutators.base import (
    DecisionCounts,
    Mutator,
    MutatorResult,
    Workers,
    as_record,
    call_mutate_fn,
    caller_stacklevel,
    check_callable,
    check_factors,
    check_in_space,
    check_number,
    check_probability,
    copied_value,
    copy_source,
    evaluated_since,
    own_result,
    reads_like_a_dict,
    records_config,
    start_generation,
    takes_key,
    window_mean,
)
from jaxpop.records import ActiveWorker, Checkpoint, CheckpointRef, with_replaced
from jaxpop.types import Mode

__all__ = ["ExploitEvent", "PBTState", "PopulationBasedTraining", "exploit_events"]

_RAY_TIME_ATTRS = {"training_iteration": "step", "time_total_s": "time"}


class ExploitEvent(NamedTuple):
    """One branch of the lineage: a generation that started from another's checkpoint.

    Attributes:
      generation_id: the new generation.
      source: the checkpoint it copied, ``(generation_id, step)``.
      step: the step it started at (the source's step).
      time: when it was created.
      meta_params_before: the source checkpoint's hyperparameters (``None`` if the
        source is not in the history).
      meta_params_after: the new generation's hyperparameters.
      source_value: the value of the params copied: the source checkpoint's
        evaluation, or for the unevaluated start of another copy, the value those params
        were copied at (:func:`~jaxpop.mutators.base.copied_value`); ``None`` if none.
        A rerun that later replaced the source's params at its step leaves the copy's
        ``source`` naming a kept generation that holds the params copied
        (:func:`~jaxpop.history.is_kept`), with their value.
    """

    generation_id: str
    source: CheckpointRef
    step: int
    time: float
    meta_params_before: Any
    meta_params_after: Any
    source_value: float | None


def exploit_events(
    history: History, *, since_time: float | None = None, exclude: Container[str] = ()
) -> list[ExploitEvent]:
    """Every exploit recorded in ``history``, in the order the generations were created.

    An exploit is a generation whose first checkpoint's ``parent`` belongs to another
    generation, unless it is a kept one (:func:`~jaxpop.history.is_kept`). For
    :class:`PopulationBasedTraining` that is exactly one exploit; other mutators'
    generation changes (a schedule switching, a WinnerTakeAllGenetic round) show up the
    same way, and so does a worker moved by ``checkpoint_missing`` to an ancestor's
    checkpoint in another generation (a new generation with its own hyperparameters,
    which no mutator decided). A pure query: O(number of generations).

    Args:
      history: the run's history (``controller.history`` or ``state.history``).
      since_time: keep only events created at ``time >= since_time``.
      exclude: generation ids to leave out (say, the events already handed out).

    >>> from jaxpop import PopulationController, WinnerTakeAllGenetic
    >>> mutator = WinnerTakeAllGenetic(lambda meta: {"lr": meta["lr"] / 2}, steps_per_exploit=10)
    >>> controller = PopulationController([{"lr": 0.1}, {"lr": 0.2}], mutator)
    >>> for worker, value in [(0, 0.5), (1, 0.3)]:  # both reach step 10; worker 1 is best
    ...     generation_id = controller.active_workers[worker].generation_id
    ...     controller.set_eval(worker, generation_id, 10, f"params-{worker}", value)
    >>> [(e.step, e.source_value, e.meta_params_before, e.meta_params_after)
    ...  for e in exploit_events(controller.history)]
    [(10, 0.3, {'lr': 0.2}, {'lr': 0.1}), (10, 0.3, {'lr': 0.2}, {'lr': 0.1})]
    """
    events = []
    memo: dict[CheckpointRef, float | None] = {}
    for generation_id in history:
        first = history.first(generation_id)
        parent = first.parent
        if parent is None or parent[0] == generation_id or generation_id in exclude:
            continue
        if is_kept(generation_id):  # (the former content of a checkpoint a rerun replaced)
            continue
        if since_time is not None and first.time < since_time:
            continue
        source = history.get_checkpoint(*parent)
        events.append(
            ExploitEvent(
                generation_id=generation_id,
                source=(parent[0], parent[1]),
                step=first.step,
                time=first.time,
                meta_params_before=None if source is None else source.meta_params,
                meta_params_after=first.meta_params,
                source_value=None if source is None else copied_value(history, source, memo),
            )
        )
    return events


class PopulationBasedTraining(Mutator):
    """Population based training: asynchronous exploit and explore (PBT paper, Ray Tune).

    Args:
      perturbation_interval: how long a worker trains between decisions, in steps
        (``time_attr="step"``) or seconds (``time_attr="time"``). Ray Tune:
        ``perturbation_interval``.
      hyperparam_space: the space to explore (see :mod:`jaxpop.mutators.explore`): a
        dict of ``uniform`` / ``log_uniform`` / ``randint`` / ``choice`` leaves and
        constants; keys it does not name are copied unchanged. Ray Tune:
        ``hyperparam_mutations``.
      time_attr: ``"step"`` (the training step of the worker's evaluations) or ``"time"``
        (seconds of the controller's clock). Ray Tune: ``time_attr``
        (``"training_iteration"`` is ``"step"``).
      burn_in_period: no decision before a worker's evaluation at this step (or this
        many seconds after the population started). Ray Tune: ``burn_in_period``.
      mode: ``"min"`` (lower values are better, jaxpop's convention) or ``"max"``. Ray
        Tune: ``mode``.
      metric: how a worker's score is formed from the values its current generation
        recorded (``set_eval``) since its last decision: ``"last"`` (the latest) or
        ``"mean"``. (Ray Tune's ``metric`` names a reported field; a jaxpop worker
        sends one value.)
      selection: ``"truncation"`` (default), ``"tournament"``, ``"copy_best"`` (every
        worse worker copies the best; ``"winner_take_all"`` is its deprecated name),
        or a function ``(key, ranks) -> indices`` over the exact ranks of the whole
        population (0 best, ties equal; non-finite scores rank after every finite one,
        and workers with no score yet, ``inf``, after those) that returns, for each
        worker, the index of the one to copy (itself to keep going). See
        :mod:`jaxpop.mutators.selection`.
      quantile_fraction: for truncation: the bottom fraction copies from the top
        fraction, in ``[0, 0.5]``. Ray Tune: ``quantile_fraction``.
      resample_probability: per hyperparameter, the probability of a fresh draw from
        the space instead of a perturbation. Ray Tune: ``resample_probability``.
      perturbation_factors: a perturbed number is multiplied by one of these, drawn
        uniformly, then clipped to its space. Ray Tune: ``perturbation_factors``.
      custom_explore_fn: ``fn(meta_params) -> meta_params`` or
        ``fn(meta_params, key) -> meta_params``, applied after the space's explore (the
        result is clipped to the space). Ray Tune: ``custom_explore_fn``.
      custom_explore_fn_takes_key: whether ``custom_explore_fn`` takes the key (``True``:
        called ``fn(meta_params, key)``, or with ``key=`` if that parameter is
        keyword-only, or if ``**kwargs`` is the only place for it); ``None``
        (default): read from its signature (see :func:`jaxpop.mutators.base.takes_key`).
      explorer: ``fn(key, source, history, workers) -> meta_params``, the whole explore
        step in place of the space's perturb-or-resample: ``source`` is the copied
        checkpoint, ``history`` and ``workers`` the population as the decision sees
        it (a model-based explore, such as PB2's bandit, reads its data there). Its
        result goes through ``custom_explore_fn`` and is clipped to the space. An
        explorer with a ``prepare(population_size)`` method has it called when the
        controller starts (where :class:`~jaxpop.mutators.pb2.PB2Explorer` compiles).
      synch: wait until every worker is ready, then decide for all at once. Ray Tune:
        ``synch``.
      allow_rewind: in asynchronous mode, let a worker with a finite score copy a
        checkpoint from before the start of its current interval (by default only the
        workers whose checkpoint is at or past that step may be copied: the training a
        worker decided to keep is never undone). Synchronous rounds always copy.
      hold: with ``synch=True``, hold a worker that has reached the interval until the
        round is decided, as Ray Tune pauses its trials: its ask is answered with its
        assignment, ``status == "waiting"`` (wait, and ask again), so every worker is
        compared at its interval and none trains on only to lose that training when it
        copies. The worker loop must honour it (a seed-style loop would reload its
        params at every ask), so it is off by default.

    At least one of ``hyperparam_space``, ``custom_explore_fn`` and ``explorer`` is required.

    >>> from jaxpop import PopulationController
    >>> from jaxpop.mutators import explore
    >>> space = {"lr": explore.log_uniform(1e-4, 1e-1)}
    >>> pbt = PopulationBasedTraining(perturbation_interval=10, hyperparam_space=space)
    >>> controller = PopulationController([{"lr": 0.01}, {"lr": 0.02}], pbt, seed=0)
    >>> for worker, value in [(1, 0.5), (0, 1.0)]:  # both ready at step 10; 0 is worse
    ...     generation_id = controller.active_workers[worker].generation_id
    ...     controller.set_eval(worker, generation_id, 10, f"params-{worker}", value)
    >>> copier = controller.active_workers[0]  # copied worker 1, explored its lr
    >>> copier.params, copier.step, 1e-4 <= copier.meta_params["lr"] <= 1e-1
    ('params-1', 10, True)
    >>> controller.decision_counts
    DecisionCounts(decisions=2, copies=1)
    """

    __slots__ = ()
    #: what the recorded state is in (decision times, in steps or seconds): see
    #: :meth:`Mutator.describe`'s ``locked``
    _state_options = ("time_attr",)

    @records_config
    def __new__(
        cls,
        *,
        perturbation_interval: float,
        hyperparam_space: Any = None,
        time_attr: Literal["step", "time"] = "step",
        burn_in_period: float = 0,
        mode: Literal["min", "max"] = "min",
        metric: Literal["last", "mean"] = "last",
        selection: str | Callable[[Any, Any], Any] = "truncation",
        quantile_fraction: float = 0.25,
        resample_probability: float = 0.25,
        perturbation_factors: Sequence[float] = (0.8, 1.2),
        custom_explore_fn: Callable[..., Any] | None = None,
        synch: bool = False,
        explorer: Callable[[Any, Checkpoint, History, Workers], Any] | None = None,
        allow_rewind: bool = False,
        hold: bool = False,
        custom_explore_fn_takes_key: bool | None = None,
    ):
        config = _make_config(
            perturbation_interval,
            hyperparam_space,
            time_attr,
            burn_in_period,
            mode,
            metric,
            selection,
            quantile_fraction,
            resample_probability,
            perturbation_factors,
            custom_explore_fn,
            synch,
            explorer,
            allow_rewind,
            hold,
            custom_explore_fn_takes_key,
        )
        # (a synchronous round reads no order)
        order_by = "keys" if config.selection.ranked is not None and not config.synch else None
        views = _views.Views(functools.partial(_entry, config), _COLUMNS, order_by)
        return super().__new__(
            cls,
            init=_init,
            update=functools.partial(_update, config, views),
            prepare=functools.partial(_prepare, selection, explorer),
            mode=config.mode,
            counts=_counts,
            holds=functools.partial(_holds, views) if hold else None,
            check_population=functools.partial(check_in_space, hyperparam_space),
        )


@reads_like_a_dict
class PBTState(NamedTuple):
    """:class:`PopulationBasedTraining`'s state.

    Attributes:
      num_decisions: decisions made (a ready worker compared with the population).
      num_exploits: decisions that copied another worker's checkpoint.
      last_decision: ``{worker_id: (generation_id, step or time)}``, where each worker's
        current interval started (its last decision).
      start_time: when the population started (for a ``burn_in_period`` in seconds),
        ``None`` until it is needed.
      missed: (synchronous) the workers that were finished or gone at the last round.
        One that is back ranks last in its next round and is never copied there: its
        score was made on an interval the population has trained past (ranked as it
        was, it sent the population back there).
    """

    num_decisions: int = 0
    num_exploits: int = 0
    last_decision: Mapping[int, tuple[str, float]] = {}  # shared, so never changed in place
    start_time: float | None = None
    missed: tuple[int, ...] = ()


encoding.register_record(PBTState, "jaxpop.PBTState")


def _as_state(state: Any) -> PBTState:
    """``state`` as a :class:`PBTState` (runs recorded before it kept a dict)."""
    return as_record(PBTState, state)


def _init() -> PBTState:
    return PBTState()


def _prepare(selection: Any, explorer: Any, population_size: int) -> None:
    """Compiles what an exploit runs with a custom selection (the key split) for this
    population size, and an explorer's own ``prepare(population_size)`` if it has one
    (:class:`~jaxpop.mutators.pb2.PB2Explorer` compiles its GP fit there), so that the
    first exploit does not stall the controller for the fraction of a second XLA takes;
    the built-in selections and the explore run in plain numpy."""
    if callable(selection):
        split_key(np.zeros(2, np.uint32), population_size)
    prepare = getattr(explorer, "prepare", None)
    if callable(prepare):
        prepare(population_size)


def _holds(
    views: _views.Views, state: Any, workers: Workers, history: History, worker_id: int
) -> bool:
    """A worker waits once it is ready, until every active worker is."""
    view = views.view(_as_state(state), workers, history)
    views.keep(view)  # for the update that follows this worker's next evaluation
    return bool(view["ready"][worker_id]) and not view["ready"][view["active"]].all()


def _make_config(
    perturbation_interval: Any,
    hyperparam_space: Any,
    time_attr: Any,
    burn_in_period: Any,
    mode: Any,
    metric: Any,
    selection: Any,
    quantile_fraction: Any,
    resample_probability: Any,
    perturbation_factors: Any,
    custom_explore_fn: Any,
    synch: Any,
    explorer: Any,
    allow_rewind: Any,
    hold: Any,
    custom_explore_fn_takes_key: Any = None,
) -> _Config:
    """The constructor's arguments, checked, as a :class:`_Config`."""
    interval = check_number("perturbation_interval", perturbation_interval)
    burn_in = check_number("burn_in_period", burn_in_period, inclusive=True)
    if custom_explore_fn is not None:
        check_callable("custom_explore_fn", custom_explore_fn)
    elif custom_explore_fn_takes_key is not None:
        raise ValueError(
            "custom_explore_fn_takes_key says how to call custom_explore_fn, which was not given"
        )
    if explorer is not None:
        check_callable("explorer", explorer)
    if time_attr not in ("step", "time"):
        hint = ""
        if time_attr in _RAY_TIME_ATTRS:
            hint = f' (Ray Tune\'s "{time_attr}" is jaxpop\'s "{_RAY_TIME_ATTRS[time_attr]}")'
        raise ValueError(f'time_attr must be "step" or "time", got {time_attr!r}{hint}')
    mode = check_mode(mode)
    if metric not in ("last", "mean"):
        raise ValueError(
            f'metric must be "last" or "mean" (how each worker\'s values since its last '
            f"decision are combined into its score), got {metric!r}; a jaxpop worker "
            "reports one value with set_eval, so Ray Tune's metric name has no "
            "counterpart here"
        )
    if hyperparam_space is None and custom_explore_fn is None and explorer is None:
        raise ValueError(
            "PopulationBasedTraining needs hyperparam_space, custom_explore_fn or "
            "explorer (how an exploiting worker's hyperparameters change)"
        )
    if hyperparam_space is not None:
        explore_lib.validate_space(hyperparam_space)
    factors = check_factors(perturbation_factors)
    resample_probability = check_probability("resample_probability", resample_probability)
    for name, flag in (("synch", synch), ("allow_rewind", allow_rewind), ("hold", hold)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {flag!r:.40}")
    if hold and not synch:
        raise ValueError("hold=True holds workers for synchronous rounds: pass synch=True")
    return _Config(
        interval=interval,
        by_step=time_attr == "step",
        burn_in=burn_in,
        mode=mode,
        metric=metric,
        selection=_make_selection(selection, quantile_fraction),
        synch=bool(synch),
        allow_rewind=bool(allow_rewind),
        explore=functools.partial(
            _new_meta_params,
            hyperparam_space,
            float(resample_probability),
            factors,
            custom_explore_fn,
            custom_explore_fn is not None
            and takes_key(custom_explore_fn, 1, custom_explore_fn_takes_key),
            explorer,
        ),
    )


class _Config(NamedTuple):
    """What a :class:`PopulationBasedTraining` was built with, checked."""

    interval: float
    by_step: bool
    burn_in: float
    mode: Mode
    metric: str
    selection: _Selection
    synch: bool
    allow_rewind: bool
    # (source, keys, history, workers) -> meta_params (see _new_meta_params)
    explore: Callable[..., Any]


def _when(config: _Config, checkpoint: Checkpoint) -> float:
    return checkpoint.step if config.by_step else checkpoint.time


def _marker(config: _Config, state: PBTState, history: History, worker_id: int, generation_id: str):
    """Where the worker's current interval started: its last decision in this
    generation, or the generation's start."""
    last = state.last_decision.get(worker_id)
    if last is not None and last[0] == generation_id:
        return last[1]
    return _when(config, history.first(generation_id))


def _interval_start(
    config: _Config, state: PBTState, history: History, worker_id: int, generation_id: str
) -> int:
    """The step the worker's current interval started at (its last decision, or its
    generation's start): what it has trained since is what a copy replaces anyway."""
    marker = _marker(config, state, history, worker_id, generation_id)
    if config.by_step:
        return int(marker)
    start = history.first(generation_id)
    if marker <= start.time:  # (the interval began with the generation: at its start's
        return start.step  # step, which has no evaluation for the window below to find)
    window = history.evaluated(generation_id, min_time=marker)
    if window:
        return window[0].step
    latest = history.latest_evaluated(generation_id)
    assert latest is not None  # only asked of a worker that is ready: it has evaluated
    return latest.step


def _is_ready(
    config: _Config,
    state: PBTState,
    history: History,
    worker_id: int,
    worker: ActiveWorker,
    latest: Checkpoint | None,
) -> bool:
    """Whether an active worker whose latest evaluation is ``latest`` is ready: the
    evaluation ends an interval (and the burn-in)."""
    if latest is None:
        return False
    marker = _marker(config, state, history, worker_id, worker.generation_id)
    if _when(config, latest) - marker < config.interval:
        return False
    if not config.burn_in:
        return True
    if config.by_step:
        return latest.step >= config.burn_in
    assert state.start_time is not None  # _update sets it before any worker evaluated
    return latest.time - state.start_time >= config.burn_in


def _score(
    config: _Config, state: PBTState, history: History, worker_id: int, generation_id: str
) -> float | None:
    """The worker's score: its own, else that of the checkpoint it copied, else ``None``
    (it has never been evaluated)."""
    latest = history.latest_evaluated(generation_id)
    if latest is None:
        copied = _copied(history, generation_id)
        return None if copied is None else copied_value(history, copied)
    if config.metric == "last":
        return latest.value
    since = _marker(config, state, history, worker_id, generation_id)
    window = evaluated_since(history, generation_id, since, by_step=config.by_step)
    return window_mean([c.value for c in window or [latest] if c.value is not None])


def _new_meta_params(
    space: Any,
    resample_probability: float,
    factors: tuple[float, ...],
    custom_explore_fn: Callable[..., Any] | None,
    wants_key: bool,
    explorer: Callable[..., Any] | None,
    source: Checkpoint,
    keys: np.ndarray,
    history: History,
    workers: Workers,
) -> Any:
    """A copier's hyperparameters: the explorer's (or the space's perturb-or-resample)
    from the source's, then ``custom_explore_fn``, each clipped to the space. ``keys``:
    ``uint32[2, 2]``, the space's (or explorer's) raw key, then the function's."""
    meta = source.meta_params
    if explorer is not None:
        meta = own_result(explorer(keys[0], source, history, tuple(workers)))
        if space is not None:
            meta = explore_lib.clip(space, meta)
    elif space is not None:
        meta = explore_lib.explore(
            keys[0],
            space,
            meta,
            resample_probability=resample_probability,
            perturbation_factors=factors,
        )
    if custom_explore_fn is not None:
        meta = call_mutate_fn(custom_explore_fn, wants_key, (meta,), keys[1])
        if space is not None:
            meta = explore_lib.clip(space, meta)
    return meta


# -- the population as a decision sees it, kept between calls ---------------------------------
#: The columns of a decision's view (see :mod:`jaxpop.mutators._views`): ``keys``, the
#: score as a sort key (``-value`` under ``mode="max"``; ``inf`` for a non-finite score,
#: NaN for none); ``copy_steps``, the step of what copying the worker gives (-1: nothing);
#: ``ready``, whether it decides now; ``active``, its status.
_COLUMNS = {"keys": np.float64, "copy_steps": np.int64, "ready": bool, "active": bool}


def _entry(
    config: _Config, state: PBTState, history: History, worker_id: int, worker: ActiveWorker
) -> tuple[float, int, bool, bool]:
    # _score, _copy_source and _is_ready, sharing their reads of the history
    generation_id = worker.generation_id
    latest = history.latest_evaluated(generation_id)
    if latest is None:  # not evaluated since it started: it ranks (and is copied) as its source
        copied = _copied(history, generation_id)
        score = None if copied is None else copied_value(history, copied)
        source = copied if score is not None else None
    else:
        if config.metric == "last":
            score = latest.value
        else:
            score = _score(config, state, history, worker_id, generation_id)
        # (what copying it gives: this evaluation, if it holds params and a finite value)
        value = latest.value
        if latest.params is not None and value is not None and math.isfinite(value):
            source = latest
        else:
            source = copy_source(history, generation_id)
            if source is None:  # nothing that may be copied (saves that diverged)
                score = math.nan  # ranks as a non-finite score: last, never copied
    key = selection_lib.sort_key(score, config.mode)
    active = worker.is_active
    ready = (
        active
        and latest is not None
        and _is_ready(config, state, history, worker_id, worker, latest)
    )
    return key, -1 if source is None else source.step, ready, active


def _ranks(keys: np.ndarray) -> np.ndarray:
    """Exact ranks of sort keys: 0 best, ties equal, a non-finite score (``inf``) just
    after the worst finite one, no score (NaN) ``inf``."""
    ranks = np.full(keys.shape, np.inf)
    finite = np.isfinite(keys)
    worst = 0
    if finite.any():
        unique, inverse = np.unique(keys[finite], return_inverse=True)
        ranks[finite] = inverse
        worst = len(unique)
    ranks[np.isposinf(keys)] = worst
    return ranks


def _tiered(keys: np.ndarray) -> np.ndarray:
    """Sort keys as scores a host selection orders exactly as :func:`_ranks` (lower
    better): a non-finite score just after the worst finite one, no score last. Cheaper
    than the ranks (no ``np.unique``), for the built-in selections."""
    nonfinite = keys == np.inf
    if not nonfinite.any():
        return keys
    finite = np.isfinite(keys)
    worst = keys[finite].max() if finite.any() else 0.0
    out = keys.copy()
    out[nonfinite] = np.nextafter(worst, np.inf)
    return out


def _pool(view: _views.View) -> np.ndarray | None:
    """The active workers' ids, or ``None`` when every worker is active."""
    active = view["active"]
    return None if np.count_nonzero(active) == len(active) else active.nonzero()[0]


def _round(config: _Config, view: _views.View, key: Any, missed: tuple[int, ...]) -> np.ndarray:
    """A synchronous round: the worker each active worker copies (itself: keep going).
    The ``missed`` workers (finished or gone at the last round) rank last, as no score."""
    keys = view["keys"]
    if missed:
        keys = keys.copy()
        keys[list(missed)] = np.nan
    pool = _pool(view)
    if pool is None:
        return config.selection.round(key, keys)
    out = np.arange(len(keys))
    if pool.size:
        out[pool] = pool[config.selection.round(key, keys[pool])]
    return out


def _choose(config: _Config, view: _views.View, key: Any, i: int, min_step: int | None) -> int:
    """An asynchronous decision: the worker that worker ``i`` (active: it is ready)
    copies, compared with the active workers; itself to keep going. ``min_step``: only
    workers whose copy source is at least at this step may be copied (the built-in
    truncation and copy_best draw from those only)."""
    keys, copy_steps = view["keys"], view["copy_steps"]
    pool = _pool(view)
    ranked, order = config.selection.ranked, view.order
    if pool is None and ranked is not None and order is not None:
        chosen = ranked(key, i, order, view.place(i), copy_steps, min_step)
        if chosen is not None:
            return chosen
    position = i
    if pool is not None:
        keys, copy_steps = keys[pool], copy_steps[pool]
        position = int(np.searchsorted(pool, i))
    parents = functools.partial(_parents, copy_steps, min_step)
    chosen = config.selection.one(key, position, keys, parents)
    return chosen if pool is None else int(pool[chosen])


def _parents(copy_steps: np.ndarray, min_step: int | None) -> np.ndarray | None:
    """The workers that may be copied (``None``: all): those whose copy source is at
    ``min_step`` or later."""
    return None if min_step is None else copy_steps >= min_step


def _update(
    config: _Config,
    views: _views.Views,
    state: PBTState,
    workers: Workers,
    history: History,
    now: float,
    key: np.ndarray,
) -> MutatorResult:
    state = _as_state(state)
    if config.burn_in and not config.by_step and state.start_time is None:
        state = state._replace(start_time=start_time(history))
    view = views.view(state, workers, history)
    ready = view["ready"].nonzero()[0].tolist()
    if not ready or (config.synch and len(ready) < int(view["active"].sum())):
        views.keep(view)
        return state, workers, ()
    new_workers = list(workers)
    last_decision = dict(state.last_decision)
    new_checkpoints = []
    copiers = []
    # asynchronous decisions see the earlier ones of this update (their copies and the
    # new generations' first checkpoints, through the view); a synchronous round sees
    # the population as it was before it
    current = history
    missed = state.missed
    if config.synch:  # everyone decides in one selection
        parents = _round(config, view, key, missed)
        missed = tuple(np.flatnonzero(~view["active"]).tolist())
    for i in ready:
        gen = workers[i].generation_id
        own = history.latest_evaluated(gen)
        assert own is not None and own.value is not None  # ready: it has evaluated
        rewind_guard = not (config.synch or config.allow_rewind) and math.isfinite(own.value)
        floor = _interval_start(config, state, history, i, gen) if rewind_guard else None
        parent = int(parents[i]) if config.synch else _choose(config, view, key, i, floor)
        pool = workers if config.synch else new_workers
        source = None if parent == i else _copy_source(current, pool[parent])
        if source is None or (floor is not None and source.step < floor):
            last_decision[i] = (gen, _when(config, own))
        else:
            # streams -2, -3, ...: -1 is a synchronous round's selection
            keys = HostRandom(key, stream=-2 - i).raw_keys(2)  # the space's, the function's
            meta = config.explore(source, keys, current, new_workers)
            worker, start = start_generation(source, meta, key, i, now)
            new_workers[i] = worker
            new_checkpoints.append(start)
            if i != ready[-1]:  # the next decision here sees this one
                current = current.add(start)
            last_decision[i] = (start.generation_id, _when(config, start))
            copiers.append(i)
        if not config.synch and i != ready[-1]:  # the next decision here sees this one
            view.moved_on(state._replace(last_decision=last_decision), new_workers, current)
            view.refresh(i)
    new_state = PBTState(  # state._replace(...), without its generic machinery
        state.num_decisions + len(ready),
        state.num_exploits + len(copiers),
        last_decision,
        state.start_time,
        missed,
    )
    result = workers
    if copiers:
        result = with_replaced(workers, [(i, new_workers[i]) for i in copiers])
    if not config.synch:
        # the next call's history is made from this call's by the core's adds: label the
        # view with this call's history and the workers it returns (the next call's are
        # made from those); the deciders' entries changed (their last decision): a
        # copier's is read again when the view is next used, and one that kept going is
        # no longer ready (its interval starts at its evaluation, and with
        # metric="last" nothing else about it changed)
        view.moved_on(new_state, workers, history)
        view.reassigned(result, copiers)
        for i in ready:
            if config.metric == "last" and i not in copiers:
                view["ready"][i] = False
            else:
                view.stale.add(i)
        views.keep(view)
    return new_state, result, tuple(new_checkpoints)


def _copied(history: History, generation_id: str) -> Checkpoint | None:
    """The checkpoint a generation was copied from (``None`` for a root)."""
    parent = history.first(generation_id).parent
    if parent is None or parent[0] == generation_id:
        return None
    return history.get_checkpoint(*parent)


def _copy_source(history: History, worker: ActiveWorker) -> Checkpoint | None:
    """What copying ``worker`` gives: its generation's :func:`copy_source`, or, for a
    worker not evaluated since it copied, the checkpoint it copied."""
    source = copy_source(history, worker.generation_id)
    if source is None and history.latest_evaluated(worker.generation_id) is None:
        copied = _copied(history, worker.generation_id)
        if copied is not None and copied_value(history, copied) is not None:
            source = copied
    return source


def _counts(state: Any) -> DecisionCounts:
    state = _as_state(state)
    return DecisionCounts(state.num_decisions, state.num_exploits)


class _Selection(NamedTuple):
    """A selection over the view's sort keys (lower is better; ``inf`` for a non-finite
    score, NaN for none: see ``_COLUMNS``).

    ``one(key, i, keys, parents) -> int``: the member that member ``i`` copies (itself to
    keep going), the others keeping going; ``parents()`` gives the ``bool`` mask of the
    members that may be copied (``None``: all) and is called only when needed.
    ``round(key, keys) -> indices``: every member decides at once (a synchronous round).
    The built-in selections run on the host, member ``i`` drawing from
    ``HostRandom(key, stream=i)`` and a round from stream -1; a user function gets a raw
    key split from ``key``.
    """

    one: Callable[[Any, int, np.ndarray, Callable[[], np.ndarray | None]], int]
    round: Callable[[Any, np.ndarray], np.ndarray]
    #: ``ranked(key, i, order, entry, copy_steps, min_step) -> int | None``: ``one``
    #: from a view's sorted :attr:`~jaxpop.mutators._views.View.order` (``entry``:
    #: member ``i``'s place in it) when every member takes part; ``None`` when it cannot
    #: tell from the order (then ``one`` decides); a member whose ``copy_steps`` is
    #: below ``min_step`` may not be copied. ``ranked`` itself ``None``: not offered.
    ranked: Callable[[Any, int, list, tuple, np.ndarray, int | None], int | None] | None = None


def _make_selection(selection: Any, quantile_fraction: float) -> _Selection:
    """``selection`` (a name or a user function) as a :class:`_Selection` (of module-level
    functions: a mutator pickles, for ``multiprocessing`` as for Ray)."""
    if callable(selection):
        return _Selection(
            one=functools.partial(_custom_one, selection),
            round=functools.partial(_custom, selection, draw=-1),
        )
    if selection == "winner_take_all":
        warnings.warn(
            'selection="winner_take_all" is deprecated: the same selection is "copy_best"',
            DeprecationWarning,
            stacklevel=caller_stacklevel(),
        )
        selection = "copy_best"
    if selection not in selection_lib.HOST_SELECTIONS:
        raise ValueError(
            f"selection must be one of {sorted(selection_lib.HOST_SELECTIONS)} or a function "
            f"(key, ranks) -> indices, got {selection!r}"
        )
    select = selection_lib.HOST_SELECTIONS[selection]
    fraction = 0.0
    if selection == "truncation":
        selection_lib.num_in_quantile(4, quantile_fraction)  # validates the fraction
        fraction = selection_lib.fraction_as_float(quantile_fraction)
        select = functools.partial(select, quantile_fraction=fraction)
    round_ = functools.partial(_host_round, select)
    # one member, straight from the sort keys: the order they give (finite, then inf,
    # then NaN, ties by index) is the host twins' order of _tiered(keys)
    one: Callable[..., int]
    if selection == "truncation":  # (the fraction is truncation's alone: the others ignore it)
        one = functools.partial(_truncation_one, fraction)
        ranked = functools.partial(_truncation_ranked, fraction)
        return _Selection(one=one, round=round_, ranked=ranked)
    one = _tournament_one if selection == "tournament" else _copy_best_one
    return _Selection(one=one, round=round_)


def _custom(
    selection: Callable[[Any, Any], Any], key: Any, keys: np.ndarray, draw: int
) -> np.ndarray:
    """A user's selection over the exact ranks of the sort keys, its answer checked."""
    n = len(keys)
    chosen = np.asarray(selection(split_key(key, n)[draw], _ranks(keys)))
    if chosen.shape != (n,) or not np.issubdtype(chosen.dtype, np.integer):
        raise ValueError(
            f"selection returned {chosen.dtype}{chosen.shape} for {n} members; it "
            f"must return int indices of shape ({n},)"
        )
    if ((chosen < 0) | (chosen >= n)).any():
        raise ValueError(f"selection returned indices outside [0, {n}): {chosen}")
    return chosen


def _custom_one(selection: Callable[[Any, Any], Any], key: Any, i: int, keys, parents) -> int:
    return int(_custom(selection, key, keys, draw=i)[i])


def _host_round(select: Callable[..., np.ndarray], key: Any, keys: np.ndarray) -> np.ndarray:
    """A synchronous round of a built-in selection (drawn from stream -1). A member
    whose parent has no finite score keeps going: the built-in selections copy only
    finite-scored members (``_tiered`` gives a non-finite score a finite key just
    after the worst, which a member with no score -- one that missed the last round --
    would find better)."""
    parents = select(HostRandom(key, stream=-1), _tiered(keys))
    own = np.arange(len(keys))
    return np.where(np.isfinite(keys[parents]), parents, own)


def _truncation_one(fraction: float, key: Any, i: int, keys: np.ndarray, parents) -> int:
    k = selection_lib.quantile_size(len(keys), fraction)
    if k == 0 or not selection_lib.in_bottom(keys, i, k):
        return i
    top = selection_lib.truncation_top(keys, k, parents())
    return selection_lib.truncation_parent(HostRandom(key, stream=i), keys, top, i)


def _truncation_ranked(
    fraction: float,
    key: Any,
    i: int,
    order: list,
    entry: tuple,
    copy_steps: np.ndarray,
    min_step: int | None,
) -> int | None:
    """:func:`_truncation_one` from the sorted order of the sort keys (every member
    taking part): bisections, no pass over the population. Member ``i`` is in the
    bottom if at least ``n - k`` entries precede ``entry``; it then draws, as
    ``truncation_parent`` does, among the first ``min(k, m)`` entries, ``m`` being the
    members strictly better than it (those before its key's first place). ``None`` when
    a member may not be copied (its copy source is before ``min_step``: the top is then
    not the order's first ``k``)."""
    n = len(order)
    k = selection_lib.quantile_size(n, fraction)
    if k == 0 or bisect.bisect_left(order, entry) < n - k:
        return i
    if min_step is not None and np.count_nonzero(copy_steps < min_step):
        return None
    better = min(k, bisect.bisect_left(order, (entry[0], entry[1], -1)))
    if better == 0:
        return i
    return order[HostRandom(key, stream=i).randrange(better)][2]


def _tournament_one(key: Any, i: int, keys: np.ndarray, parents) -> int:
    return selection_lib.tournament_parent(HostRandom(key, stream=i), keys, i)


def _copy_best_one(key: Any, i: int, keys: np.ndarray, parents) -> int:
    best = selection_lib.best_member(keys, parents())
    return i if best is None or not keys[i] > keys[best] else best
