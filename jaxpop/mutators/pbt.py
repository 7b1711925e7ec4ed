"""``PopulationBasedTraining``: the PBT paper's exploit/explore loop as a jaxpop mutator.

Population based training (Jaderberg et al. 2017, arXiv 1711.09846) trains a population
of workers and, now and then, lets a worker that is doing badly copy the weights of one
that is doing well (*exploit*) and move the copied hyperparameters a little (*explore*).
This mutator implements it with the option names of Ray Tune's ``PopulationBasedTraining``
where they mean the same thing (``docs/pbt.md`` maps every option).

When a worker decides. A worker is *ready* when its latest evaluation, in its current
generation, lies at least ``perturbation_interval`` steps (``time_attr="step"``) or
seconds (``time_attr="time"``) after its last decision -- the start of its current
generation, or the last time it was ready and kept going -- and, with a
``burn_in_period``, when that evaluation is at least ``burn_in_period`` steps into
training (or seconds after the population started).

What it decides. Asynchronous (the default): a ready worker is compared, at once, with
the latest scores of the other workers -- it never waits for a straggler. Each worker's
score is its latest value (``metric="last"``) or the mean of its values since its last
decision (``metric="mean"``). A worker that has just copied keeps, until it reports
its own, the score of the checkpoint it copied (as Ray Tune keeps a copied trial's last
score). The ``selection`` (truncation by default, see
:mod:`jaxpop.mutators.selection`) is taken over the *whole* population and says whether
the ready worker copies a better one: a worker that has never reported ranks below all
the others (and is never copied), so a quantile always counts every worker and, while
some have not reported yet, the bottom is theirs -- the first reporters of a run copy
nobody, instead of the worse of the first two copying the better and so on down a
cascade. (A worker that never reports keeps its bottom place until it is finished or
declared gone.) In asynchronous mode a worker never copies a checkpoint at
an earlier step than its own latest evaluation (the others' latest checkpoints may be
older than its own, and the copy would throw its newer training away) unless its own
score is not finite (there is nothing to lose) or ``allow_rewind=True``. Synchronous
(``synch=True``): nothing happens until *every* worker is ready; then all decide
together from one selection. Decisions run in
numpy on the host (:data:`jaxpop.mutators.selection.HOST_SELECTIONS`), a few
microseconds each.

Exploit and explore. A worker that copies member ``j`` gets ``j``'s latest evaluated
checkpoint (its ``params`` -- the pytree or handle stored there -- and its ``step``) and
starts a new generation whose first checkpoint's ``parent`` is exactly that checkpoint,
with new hyperparameters: the checkpoint's ``meta_params`` explored in
``hyperparam_space`` (perturbed, or resampled with ``resample_probability``; see
:mod:`jaxpop.mutators.explore`), then passed to ``custom_explore_fn`` if given, then
clipped to the space. The new hyperparameters are in the new generation's
``meta_params``: a worker that restores the copied checkpoint's optimizer state writes
them into it (``jaxpop.hparams.set_hparams``), so a restored checkpoint can never bring
the parent's old hyperparameters back. A ready worker that does not copy keeps training
its generation; only its decision marker moves.

State (plain data, journaled with the run)::

    {"num_exploits": int, "num_decisions": int,
     "last_decision": {worker_id: (generation_id, step_or_time)},
     "start_time": float | None}

Exploits are first-class in the history: :func:`exploit_events` lists every one from
the lineage (which generation copied which checkpoint, hyperparameters before and
after, step and time).
"""

from __future__ import annotations

import functools
import math
import numbers
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from jaxpop.history import History, check_mode
from jaxpop.keys import split_key
from jaxpop.mutators import explore as explore_lib
from jaxpop.mutators import selection as selection_lib
from jaxpop.mutators._subpopulations import dense_ranks
from jaxpop.mutators.base import (
    DecisionCounts,
    Mutator,
    MutatorResult,
    Workers,
    call_mutate_fn,
    check_callable,
    check_number,
    records_config,
    start_generation,
    takes_key,
)
from jaxpop.records import ActiveWorker, Checkpoint, CheckpointRef

__all__ = ["ExploitEvent", "PopulationBasedTraining", "exploit_events"]

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
      source_value: the source checkpoint's evaluation (``None`` if it has none).
    """

    generation_id: str
    source: CheckpointRef
    step: int
    time: float
    meta_params_before: Any
    meta_params_after: Any
    source_value: float | None


def exploit_events(history: History, *, since_time: float | None = None) -> list[ExploitEvent]:
    """Every exploit recorded in ``history``, in the order the generations were created.

    An exploit is a generation whose first checkpoint's ``parent`` belongs to another
    generation. For :class:`PopulationBasedTraining` that is exactly one exploit; other
    mutators' generation changes (a schedule switching, a winner-take-all round) show up
    the same way. A pure query: O(number of generations).

    Args:
      history: the run's history (``controller.history`` or ``state.history``).
      since_time: keep only events created at ``time >= since_time``.
    """
    events = []
    for generation_id in history:
        first = history.first(generation_id)
        parent = first.parent
        if parent is None or parent[0] == generation_id:
            continue
        if since_time is not None and first.time < since_time:
            continue
        source = history.get_checkpoint(*parent)
        events.append(
            ExploitEvent(
                generation_id=generation_id,
                source=tuple(parent),
                step=first.step,
                time=first.time,
                meta_params_before=None if source is None else source.meta_params,
                meta_params_after=first.meta_params,
                source_value=None if source is None else source.value,
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
      time_attr: ``"step"`` (the training step the worker reports) or ``"time"``
        (seconds of the controller's clock). Ray Tune: ``time_attr``
        (``"training_iteration"`` is ``"step"``).
      burn_in_period: no decision before a worker's evaluation at this step (or this
        many seconds after the population started). Ray Tune: ``burn_in_period``.
      mode: ``"min"`` (lower values are better, jaxpop's convention) or ``"max"``. Ray
        Tune: ``mode``.
      metric: how a worker's score is formed from the values its current generation
        reported since its last decision: ``"last"`` (the latest) or ``"mean"``. (Ray
        Tune's ``metric`` names a reported field; a jaxpop worker reports one value.)
      selection: ``"truncation"`` (default), ``"tournament"``, ``"winner_take_all"``,
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
      explorer: ``fn(key, source, history, workers) -> meta_params``, the whole explore
        step in place of the space's perturb-or-resample: ``source`` is the copied
        checkpoint, ``history`` and ``workers`` the population as the decision sees
        it (a model-based explore, such as PB2's bandit, reads its data there). Its
        result goes through ``custom_explore_fn`` and is clipped to the space.
      synch: wait until every worker is ready, then decide for all at once. Ray Tune:
        ``synch``.
      allow_rewind: in asynchronous mode, let a worker with a finite score copy a
        checkpoint at an earlier step than its own latest evaluation (by default such a
        copy is skipped: the worker keeps going). Synchronous rounds always copy.
      hold: with ``synch=True``, hold a worker that has reached the interval until the
        round is decided, as Ray Tune pauses its trials: its ask is answered with its
        assignment, ``status == "waiting"`` (wait, and ask again), so every worker is
        compared at its interval and none trains on only to lose that training when it
        copies. The worker loop must honour it (a seed-style loop would reload its
        params at every ask), so it is off by default.

    At least one of ``hyperparam_space``, ``custom_explore_fn`` and ``explorer`` is required.
    """

    __slots__ = ()

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
    ):
        interval = check_number("perturbation_interval", perturbation_interval)
        burn_in = check_number("burn_in_period", burn_in_period, inclusive=True)
        if custom_explore_fn is not None:
            check_callable("custom_explore_fn", custom_explore_fn)
        if explorer is not None:
            check_callable("explorer", explorer)
        if time_attr not in ("step", "time"):
            hint = ""
            if time_attr in _RAY_TIME_ATTRS:
                hint = f' (Ray Tune\'s "{time_attr}" is jaxpop\'s "{_RAY_TIME_ATTRS[time_attr]}")'
            raise ValueError(f'time_attr must be "step" or "time", got {time_attr!r}{hint}')
        check_mode(mode)
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
        factors = tuple(perturbation_factors)
        if not factors or not all(
            isinstance(f, numbers.Real) and math.isfinite(f) and f > 0 for f in factors
        ):
            raise ValueError(f"perturbation_factors must be positive numbers, got {factors!r}")
        if not isinstance(resample_probability, numbers.Real) or not (
            0 <= resample_probability <= 1
        ):
            raise ValueError(
                f"resample_probability must be in [0, 1], got {resample_probability!r}"
            )
        if not isinstance(allow_rewind, (bool, np.bool_)):
            raise TypeError(f"allow_rewind must be a bool, got {allow_rewind!r:.40}")
        if not isinstance(hold, (bool, np.bool_)):
            raise TypeError(f"hold must be a bool, got {hold!r:.40}")
        if hold and not synch:
            raise ValueError("hold=True holds workers for synchronous rounds: pass synch=True")
        select = _make_selection(selection, quantile_fraction)
        wants_key = custom_explore_fn is not None and takes_key(custom_explore_fn, 1)
        by_step = time_attr == "step"

        def init() -> dict:
            return {"num_exploits": 0, "num_decisions": 0, "last_decision": {}, "start_time": None}

        def t_of(checkpoint: Checkpoint) -> float:
            return checkpoint.step if by_step else checkpoint.time

        def marker(state: dict, history: History, worker_id: int, generation_id: str):
            last = state["last_decision"].get(worker_id)
            if last is not None and last[0] == generation_id:
                return last[1]
            return t_of(history.first(generation_id))

        def is_ready(state: dict, history: History, worker_id: int, worker: ActiveWorker) -> bool:
            latest = history.latest_evaluated(worker.generation_id)
            if latest is None:
                return False
            if t_of(latest) - marker(state, history, worker_id, worker.generation_id) < interval:
                return False
            if burn_in:
                since = latest.step if by_step else latest.time - state["start_time"]
                if since < burn_in:
                    return False
            return True

        def score(state: dict, history: History, worker_id: int, generation_id: str):
            """The worker's score: its own, else that of the checkpoint it copied, else
            ``None`` (it has never reported)."""
            latest = history.latest_evaluated(generation_id)
            if latest is None:
                copied = _copied(history, generation_id)
                return None if copied is None else copied.value
            if metric == "last":
                return latest.value
            since = marker(state, history, worker_id, generation_id)
            window = (
                history.evaluated(generation_id, min_step=since)
                if by_step
                else history.evaluated(generation_id, min_time=since)
            ) or [latest]
            values = [c.value for c in window]
            if not all(map(math.isfinite, values)):
                return math.nan
            return math.fsum(v / len(values) for v in values)

        def compare(state, history, workers, key, draw: int, parents=None) -> np.ndarray:
            """Selection over the whole population: the member each worker copies.

            The population is the active workers (finished and gone ones take no part).
            ``draw``: the deciding worker, or -1 for all. ``parents``: ``worker ->
            bool``, whether the deciding worker may copy it (the built-in truncation and
            winner-take-all draw from those only).
            """
            pool = [i for i, w in enumerate(workers) if w.is_active]
            members, scores = [], []
            for p, i in enumerate(pool):
                s = score(state, history, i, workers[i].generation_id)
                if s is not None:
                    members.append(p)
                    scores.append(s)
            out = np.arange(len(workers))
            if not pool:
                return out
            ranks = _population_ranks(len(pool), members, scores, mode)
            accept = None if parents is None else (lambda p: parents(pool[p]))
            chosen = select(key, -1 if draw < 0 else pool.index(draw), ranks, accept)
            out[pool] = np.asarray(pool)[chosen]
            return out

        def not_behind(history, workers, own: Checkpoint) -> Callable[[int], bool]:
            """Whether the owner of ``own`` can copy a worker without losing training."""

            def accept(j: int) -> bool:
                source = _copy_source(history, workers[j])
                return source is not None and source.step >= own.step

            return accept

        def new_meta_params(source: Checkpoint, space_key, fn_key, history, workers) -> Any:
            meta = source.meta_params
            if explorer is not None:
                meta = explorer(space_key, source, history, workers)
                if hyperparam_space is not None:
                    meta = explore_lib.clip(hyperparam_space, meta)
            elif hyperparam_space is not None:
                meta = explore_lib.explore(
                    space_key,
                    hyperparam_space,
                    meta,
                    resample_probability=resample_probability,
                    perturbation_factors=factors,
                )
            if custom_explore_fn is not None:
                meta = call_mutate_fn(custom_explore_fn, wants_key, (meta,), fn_key)
                if hyperparam_space is not None:
                    meta = explore_lib.clip(hyperparam_space, meta)
            return meta

        def update(
            state: Any, workers: Workers, history: History, now: float, key: np.ndarray
        ) -> MutatorResult:
            if burn_in and not by_step and state["start_time"] is None:
                state = {**state, "start_time": _start_time(history)}
            ready = [
                i for i, w in enumerate(workers) if w.is_active and is_ready(state, history, i, w)
            ]
            num_active = sum(w.is_active for w in workers)
            if not ready or (synch and len(ready) < num_active):
                return state, workers, ()
            n = len(workers)
            keys = None  # split only for an exploit: most decisions keep going
            new_workers = list(workers)
            last_decision = dict(state["last_decision"])
            new_checkpoints = []
            num_exploits = 0
            # asynchronous decisions see the earlier ones of this update: their copies and
            # the new generations' first checkpoints; a synchronous round sees the
            # population as it was before it
            current = history
            if synch:  # draw -1: everyone decides in one selection
                parents = compare(state, history, workers, key, -1)
            for i in ready:
                gen = workers[i].generation_id
                own = history.latest_evaluated(gen)
                if not synch:
                    eligible = None
                    if not allow_rewind and math.isfinite(own.value):
                        eligible = not_behind(current, new_workers, own)
                    parents = compare(
                        {**state, "last_decision": last_decision},
                        current,
                        new_workers,
                        key,
                        i,
                        eligible,
                    )
                parent = int(parents[i])
                pool = workers if synch else new_workers
                source = None if parent == i else _copy_source(current, pool[parent])
                rewinds = source is not None and source.step < own.step
                if source is None or (
                    rewinds and not (synch or allow_rewind) and math.isfinite(own.value)
                ):
                    last_decision[i] = (gen, t_of(own))
                    continue
                if keys is None:
                    keys = split_key(key, 2 * n)
                meta = new_meta_params(source, keys[i], keys[n + i], current, tuple(new_workers))
                worker, start = start_generation(source, meta, key, i, now)
                new_workers[i] = worker
                new_checkpoints.append(start)
                current = current.add(start)
                last_decision[i] = (start.generation_id, t_of(start))
                num_exploits += 1
            new_state = {
                **state,
                "num_exploits": state["num_exploits"] + num_exploits,
                "num_decisions": state["num_decisions"] + len(ready),
                "last_decision": last_decision,
            }
            return new_state, tuple(new_workers), tuple(new_checkpoints)

        def prepare(population_size: int) -> None:
            """Compiles what an exploit runs (the key split, the built-in selection, the
            explore draws) for this population size, so that the first exploit does not
            stall the controller for the fraction of a second XLA takes."""
            key = np.zeros(2, np.uint32)
            split_key(key, 2 * population_size)
            if hyperparam_space is not None:
                explore_lib.explore(
                    key,
                    hyperparam_space,
                    explore_lib.sample(key, hyperparam_space),
                    resample_probability=resample_probability,
                    perturbation_factors=factors,
                )

        def holds(state: dict, workers: Workers, history: History, worker_id: int) -> bool:
            """A worker waits once it is ready, until every active worker is."""
            worker = workers[worker_id]
            if not (worker.is_active and is_ready(state, history, worker_id, worker)):
                return False
            return not all(
                is_ready(state, history, i, w) for i, w in enumerate(workers) if w.is_active
            )

        return super().__new__(
            cls,
            init,
            update,
            None,
            prepare,
            mode=mode,
            counts=_counts,
            holds=holds if hold else None,
        )


def _population_ranks(
    n: int, members: Sequence[int], scores: Sequence[float], mode: str
) -> np.ndarray:
    """Exact ranks of all ``n`` workers: ``members`` by their ``scores`` (0 best, ties
    equal, non-finite just after the worst finite one), the others ``inf``."""
    ranks = [math.inf] * n
    scored = dense_ranks(scores, mode).tolist()
    worst = max((r for r in scored if r != math.inf), default=-1.0)
    for i, r in zip(members, scored, strict=True):
        ranks[i] = r if r != math.inf else worst + 1
    return np.asarray(ranks)


def _copied(history: History, generation_id: str) -> Checkpoint | None:
    """The checkpoint a generation was copied from (``None`` for a root)."""
    parent = history.first(generation_id).parent
    if parent is None or parent[0] == generation_id:
        return None
    return history.get_checkpoint(*parent)


def _copy_source(history: History, worker: ActiveWorker) -> Checkpoint | None:
    """What copying ``worker`` gives: its generation's latest loadable checkpoint, or, for
    a worker that has not reported since it copied, the checkpoint it copied."""
    source = history.latest_loadable(worker.generation_id)
    if source is None:
        copied = _copied(history, worker.generation_id)
        if copied is not None and copied.value is not None:
            source = copied
    return source


def _counts(state: dict) -> DecisionCounts:
    return DecisionCounts(state["num_decisions"], state["num_exploits"])


def _start_time(history: History) -> float:
    """When the population started: the earliest first checkpoint of any generation."""
    return min(history.first(g).time for g in history)


def _make_selection(selection: Any, quantile_fraction: float) -> Callable[..., np.ndarray]:
    """``(key, draw, ranks, parents) -> indices`` over the whole population.

    ``draw`` is the deciding worker (an asynchronous decision: the others keep going),
    or -1 for a synchronous round, where everyone decides. The built-in selections run
    on the host with a ``random.Random`` seeded by ``(key, draw)``; a user function gets
    a raw key split from ``key``.
    """
    if callable(selection):

        def custom(key: Any, draw: int, ranks: np.ndarray, parents: Any = None) -> np.ndarray:
            n = len(ranks)
            chosen = np.asarray(selection(split_key(key, n)[draw], ranks))
            if chosen.shape != (n,) or not np.issubdtype(chosen.dtype, np.integer):
                raise ValueError(
                    f"selection returned {chosen.dtype}{chosen.shape} for {n} members; it "
                    f"must return int indices of shape ({n},)"
                )
            if ((chosen < 0) | (chosen >= n)).any():
                raise ValueError(f"selection returned indices outside [0, {n}): {chosen}")
            return chosen

        return custom
    if selection not in selection_lib.HOST_SELECTIONS:
        raise ValueError(
            f"selection must be one of {sorted(selection_lib.HOST_SELECTIONS)} or a function "
            f"(key, ranks) -> indices, got {selection!r}"
        )
    select = selection_lib.HOST_SELECTIONS[selection]
    if selection == "truncation":
        selection_lib.num_in_quantile(4, quantile_fraction)  # validates the fraction
        select = functools.partial(select, quantile_fraction=float(quantile_fraction))

    takes_parents = selection in ("truncation", "winner_take_all")

    def builtin(key: Any, draw: int, ranks: np.ndarray, parents: Any = None) -> np.ndarray:
        # an int seed: random.Random takes it as it is (no hashing), so draws are the
        # same in every process, and seeding costs a few microseconds
        rng = random.Random((int(key[0]) << 32 | int(key[1])) * 65_537 + draw)
        members = None if draw < 0 else (draw,)
        if takes_parents and parents is not None:
            return select(rng, ranks, parents=parents, members=members)
        return select(rng, ranks, members=members)

    return builtin
