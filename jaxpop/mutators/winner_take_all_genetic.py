"""``WinnerTakeAllGenetic``: every round, all workers copy the best one and mutate.

Each worker trains its generation for ``steps_per_exploit`` steps (or
``seconds_per_exploit`` seconds). Once *every* worker has reported an evaluation past
that point, the workers are compared by the values their current generation reported
from that point on (their mean, or the latest one), and every worker starts a new
generation from the winner's latest evaluated checkpoint with
``mutate_fn(winner_meta_params)`` -- the winner too, unless ``keep_winner=True``.

This is the seed's simplified form of population based training; see
:mod:`jaxpop.mutators` for asynchronous, truncation and tournament variants.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np

from jaxpop import encoding
from jaxpop.history import History, check_mode
from jaxpop.keys import split_key
from jaxpop.mutators import _views
from jaxpop.mutators.base import (
    DecisionCounts,
    Mutator,
    MutatorResult,
    Workers,
    as_record,
    call_mutate_fn,
    check_callable,
    check_number,
    evaluated_since,
    last_good,
    rank_value,
    reads_like_a_dict,
    records_config,
    start_generation,
    takes_key,
    window_mean,
)
from jaxpop.records import Checkpoint

__all__ = ["WinnerTakeAllGenetic", "WinnerTakeAllState"]


class WinnerTakeAllGenetic(Mutator):
    """Winner-take-all genetic mutator (the seed's, by name, arguments and behaviour).

    Args:
      mutate_fn: ``mutate_fn(meta_params) -> meta_params``, or
        ``mutate_fn(meta_params, key) -> meta_params`` to receive a raw PRNG key (see
        :func:`jaxpop.mutators.base.takes_key` for how the two are told apart, and
        ``mutate_fn_takes_key`` to say it). Gets a copy of the winner's
        hyperparameters.
      steps_per_exploit: a worker is ready once it reports an evaluation at least this
        many steps after its generation started. A round copies only a save made at or
        past the interval (it never sends the population back behind the interval it
        just trained): if the best worker evaluates more often than it saves
        (``params=None`` in between), the round waits for its first evaluation past the
        interval that holds params and copies from there. Once the best worker has
        reported twice past its interval, the latest a whole interval past it, without
        one (it saves only on improvement, or has stopped saving), the round copies the
        best-scoring worker that saved past its interval (or never sends params), with a
        ``RuntimeWarning``; if no worker with a finite score has, it waits for the
        first that does, the workers training on (a population whose finite workers all
        save only on improvement has no round while none improves). A save whose value
        is not finite is never copied to the population. A worker that never sends
        params is copied from its latest evaluation, and the copiers initialise fresh
        parameters, as in the seed; a generation that has not saved *yet* reads the
        same, so a worker that saves should save at least once per interval (counted
        from each generation's start), or its rounds start the copiers fresh.
      seconds_per_exploit: a worker is ready once it reports an evaluation at least this
        many seconds after its generation started. Give exactly one of the two.
      average_over_samples: score each worker by the mean of the values its current
        generation reported at or past its interval (``True``) or by the latest one
        (``False``). Values from before the interval (the first steps after a copy,
        still settling) are not counted.
      keep_winner: the winner continues with its hyperparameters unchanged (on a new
        generation from its own checkpoint) instead of a mutation of them, so the best
        configuration found so far is always still being trained. Default ``False``:
        every worker, the winner included, gets ``mutate_fn`` of the winner's
        hyperparameters, as in the seed.
      mode: ``"min"`` (lower values are better, as in the seed) or ``"max"``.
      mutate_fn_takes_key: whether ``mutate_fn`` takes the key (``True``: it is called
        ``mutate_fn(meta_params, key)``, or with ``key=`` if that parameter is
        keyword-only, or if ``**kwargs`` is the only place for it); ``None``
        (default): read from its signature.

    A finished or gone worker (``ActiveWorker.status``) is left out of the rounds: they
    no longer wait for it, it is never the winner, and it keeps its assignment. Back
    (a report of its own), it takes part in the next round, ranked after every worker
    that took part in the last one: it is never that round's winner (its scores were
    made on a generation the population has trained past) and copies the winner.

    Differences from the seed, on purpose: a NaN or infinite score ranks last, so such a
    worker never wins (the seed's ``argmin`` would pick a NaN); if every worker's score
    is non-finite, nobody is copied and each worker mutates its own hyperparameters,
    from its own latest save with a finite value (from before it diverged), else from
    its save past the interval (which the round waits for, as for a best worker's: one
    that has waited out a second interval without goes back to its latest save).
    The state (:class:`WinnerTakeAllState`) counts the rounds, the decisions (one per
    worker per round) and the copies (workers that started from another worker's
    checkpoint); :func:`jaxpop.mutators.decision_counts` reads the last two.
    """

    __slots__ = ()

    @records_config
    def __new__(
        cls,
        mutate_fn: Callable[..., Any],
        steps_per_exploit: int | None = None,
        seconds_per_exploit: float | None = None,
        average_over_samples: bool = True,
        *,
        keep_winner: bool = False,
        mode: Literal["min", "max"] = "min",
        mutate_fn_takes_key: bool | None = None,
    ):
        if (steps_per_exploit is None) == (seconds_per_exploit is None):
            raise ValueError(
                "WinnerTakeAllGenetic needs exactly one of steps_per_exploit and "
                "seconds_per_exploit (how long each worker trains between exploits), got "
                f"steps_per_exploit={steps_per_exploit!r}, seconds_per_exploit="
                f"{seconds_per_exploit!r}"
            )
        check_callable("mutate_fn", mutate_fn)
        if steps_per_exploit is not None:
            steps_per_exploit = check_number("steps_per_exploit", steps_per_exploit, integer=True)
        if seconds_per_exploit is not None:
            seconds_per_exploit = check_number("seconds_per_exploit", seconds_per_exploit)
        for name, flag in (
            ("average_over_samples", average_over_samples),
            ("keep_winner", keep_winner),
        ):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}: {flag!r:.40}")
        config = _Config(
            mutate_fn,
            takes_key(mutate_fn, 1, mutate_fn_takes_key),
            steps_per_exploit,
            seconds_per_exploit,
            bool(average_over_samples),
            bool(keep_winner),
            check_mode(mode),
        )
        # which workers are past their interval, their scores and saves, kept between
        # calls: a round's check costs O(workers that changed), not O(population) history
        # reads per evaluation (nor while a round waits for its winner's save)
        columns = {
            "ready": bool,
            "active": bool,
            "score": float,
            "saved_past": bool,
            "good_past": bool,
            "never_saves": bool,
        }
        views = _views.Views(functools.partial(_entry, config), columns)
        return super().__new__(
            cls, _init, functools.partial(_update, config, views), counts=_counts, mode=config.mode
        )


@reads_like_a_dict
class WinnerTakeAllState(NamedTuple):
    """:class:`WinnerTakeAllGenetic`'s state: rounds played, decisions (one per worker
    per round), copies (workers that started from another worker's checkpoint), and the
    workers that were finished or gone at the last round (``missed``: one that is back
    is never the winner of its next round, whose winner it copies: its scores were made
    on a generation the population has trained past)."""

    num_exploits: int = 0
    num_decisions: int = 0
    num_copies: int = 0
    missed: tuple[int, ...] = ()


encoding.register_record(WinnerTakeAllState, "jaxpop.WinnerTakeAllState")


class _Config(NamedTuple):
    mutate_fn: Callable[..., Any]
    wants_key: bool
    steps_per_exploit: int | None
    seconds_per_exploit: float | None
    average_over_samples: bool
    keep_winner: bool
    mode: Literal["min", "max"]


def _as_state(state: Any) -> WinnerTakeAllState:
    """``state`` as a record (runs recorded before it kept a dict; the oldest only
    ``num_exploits``)."""
    return as_record(WinnerTakeAllState, state)


def _init() -> WinnerTakeAllState:
    return WinnerTakeAllState()


def _since(config: _Config, history: History, generation_id: str) -> tuple[float, bool]:
    """Where a generation's interval ends: a step (``True``) or a time (``False``)."""
    start = history.first(generation_id)
    if config.steps_per_exploit is not None:
        return start.step + config.steps_per_exploit, True
    assert config.seconds_per_exploit is not None  # the constructor asks for one of them
    return start.time + config.seconds_per_exploit, False


def _counted(config: _Config, history: History, generation_id: str) -> list[float]:
    """The values a generation reported once its interval had passed, by step."""
    since, by_step = _since(config, history, generation_id)
    window = evaluated_since(history, generation_id, since, by_step=by_step)
    return [c.value for c in window if c.value is not None]


def _saved_past(config: _Config, history: History, generation_id: str) -> tuple[bool, bool]:
    """Whether the generation has an evaluation past its interval that holds params
    (its latest such); and one with a finite value too (:func:`_copied_from`: a save of
    a worker that has diverged is never copied to the population)."""
    since, by_step = _since(config, history, generation_id)

    def past(source: Checkpoint | None) -> bool:
        if source is None or source.params is None or source.value is None:
            return False
        return (source.step if by_step else source.time) >= since

    latest = history.latest_loadable(generation_id)
    if latest is None or latest.params is None or latest.value is None:
        return False, False  # no evaluation holds params (History.latest_loadable)
    if math.isfinite(latest.value):  # its latest finite save (no walk: the usual case)
        saved = past(latest)
        return saved, saved
    return past(latest), past(history.latest_finite_save(generation_id))


def _copied_from(history: History, generation_id: str) -> Checkpoint:
    """What a round copies from the winner's generation: its latest save with a finite
    value, else (a worker that never sends params) its latest loadable checkpoint."""
    source = history.latest_finite_save(generation_id) or history.latest_loadable(generation_id)
    assert source is not None  # every generation starts with a loadable checkpoint
    return source


def _waited_out(config: _Config, history: History, generation_id: str) -> bool:
    """Whether the generation has reported twice past its interval, the latest a whole
    interval past it, without a save there: a round stops waiting for its save (it saves
    only on improvement, has stopped saving, or never saves and holds a copied start)."""
    since, by_step = _since(config, history, generation_id)
    latest = history.latest_evaluated(generation_id)
    length = config.steps_per_exploit if by_step else config.seconds_per_exploit
    assert latest is not None and length is not None  # a ready generation has evaluated
    return (latest.step if by_step else latest.time) >= since + length and (
        len(_counted(config, history, generation_id)) >= 2
    )


def _winner(
    config: _Config,
    history: History,
    workers: Workers,
    view: _views.View,
    order: np.ndarray,
    eligible: int,
) -> int | None:
    """The worker a round copies, ``None`` while it waits (``order``: the live workers,
    best score first, some finite; its first ``eligible`` may win: the others missed
    the last round). A round copies a save made at or past its
    generation's interval with a finite value, or the evaluation of a worker that never
    sends params: the best-scoring worker's, once it has one; after it has waited out a
    second interval without (it saves only on improvement, has stopped saving, or never
    saves and holds a copied start), the best-scoring finite worker that has one. A
    round that copied a save from before the interval sent the whole population back
    (often to the start it had just trained from: with saves rarer than two intervals,
    for good)."""
    best = int(order[0])
    if view["good_past"][best] or view["never_saves"][best]:
        return best
    generation_id = workers[best].generation_id
    if not _waited_out(config, history, generation_id):
        return None
    others = order[1:eligible]
    copyable = view["good_past"][others] | view["never_saves"][others]
    saved = others[copyable & np.isfinite(view["score"][others])]
    if saved.size:
        warnings.warn(_BEST_DID_NOT_SAVE, RuntimeWarning, stacklevel=3)
        return int(saved[0])
    warnings.warn(_NO_SAVE_PAST_INTERVAL, RuntimeWarning, stacklevel=3)
    return None  # the round waits (and the workers keep training)


_ADVICE = (
    "(send params with an evaluation at or past each interval, or make the interval the "
    "save interval)"
)
_BEST_DID_NOT_SAVE = (
    "WinnerTakeAllGenetic: a round's best worker saved no params at or past its interval "
    "in two intervals; the round copies the best-scoring worker that did, or that never "
    "sends params " + _ADVICE
)
_NO_SAVE_PAST_INTERVAL = (
    "WinnerTakeAllGenetic: no worker with a finite score has saved params at or past its "
    "interval and the round's best worker has trained two intervals without; the round "
    "waits for the first such save, the workers training on " + _ADVICE
)


def _score(config: _Config, values: list[float]) -> float:
    if not values:
        return math.inf
    value = window_mean(values) if config.average_over_samples else values[-1]
    return rank_value(value, config.mode)


def _entry(config: _Config, state: Any, history: History, worker_id: int, worker: Any) -> tuple:
    """Whether the worker is ready (it has a value past its interval); whether it is
    active; its score; whether it saved past its interval, and with a finite value;
    whether it never sends params (a copy's start counts as sending them)."""
    generation_id = worker.generation_id
    values = _counted(config, history, generation_id)
    saved_past, good_past = _saved_past(config, history, generation_id)
    return (
        bool(values),
        worker.is_active,
        _score(config, values),
        saved_past,
        good_past,
        not history.saves(generation_id),
    )


def _update(
    config: _Config,
    views: _views.Views,
    state: Any,
    workers: Workers,
    history: History,
    now: float,
    key: np.ndarray,
) -> MutatorResult:
    state = _as_state(state)
    view = views.view(state, workers, history)
    active = view["active"]  # not finished or gone
    # the round ends when every active worker is past its interval (and one is active)
    if (not view["ready"].all() and (active > view["ready"]).any()) or not active.any():
        views.keep(view)
        return state, workers, ()
    live = np.flatnonzero(active)
    order = live[np.argsort(view["score"][live], kind="stable")]  # ties go to the first
    eligible = len(order)  # those that may win: back after missing the last round, not
    if state.missed:
        behind = np.isin(order, state.missed)
        eligible = int(np.count_nonzero(~behind)) or eligible
        order = np.concatenate([order[~behind], order[behind]])
    if not math.isinf(view["score"][order[0]]):
        best = _winner(config, history, workers, view, order, eligible)
        waits = best is None
    else:
        # no worker that may win has a finite score: nobody is copied, each worker mutates its own
        # hyperparameters from its own latest save with a finite value (before it
        # diverged), else from its save past the interval, which the round waits for;
        # one that has waited out a second interval without (it stopped saving) goes
        # back to its latest save
        best = None
        unsaved = live[~(view["saved_past"] | view["never_saves"])[live]].tolist()
        waits = not all(_waited_out(config, history, workers[i].generation_id) for i in unsaved)
    if waits:
        views.keep(view)
        return state, workers, ()
    mutate_fn, wants_key = config.mutate_fn, config.wants_key
    keys = split_key(key, len(workers)) if wants_key else [key] * len(workers)
    new_workers, new_checkpoints, copies = list(workers), [], 0
    for i in live.tolist():
        if best is None:  # its own latest save with a finite value: back before it diverged
            generation_id = workers[i].generation_id
            source = last_good(history, generation_id) or history.latest_loadable(generation_id)
        else:
            source = _copied_from(history, workers[best].generation_id)
        assert source is not None  # every generation starts with a loadable checkpoint
        copies += best is not None and i != best
        meta = source.meta_params
        if not (config.keep_winner and i == best):
            meta = call_mutate_fn(mutate_fn, wants_key, (meta,), keys[i])
        new_workers[i], start = start_generation(source, meta, key, i, now)
        new_checkpoints.append(start)
    new_state = WinnerTakeAllState(
        state.num_exploits + 1,
        state.num_decisions + len(live),
        state.num_copies + copies,
        tuple(np.flatnonzero(~active).tolist()),
    )
    return new_state, tuple(new_workers), tuple(new_checkpoints)


def _counts(state: Any) -> DecisionCounts:
    state = _as_state(state)
    return DecisionCounts(state.num_decisions, state.num_copies)
