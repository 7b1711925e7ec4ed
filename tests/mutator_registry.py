"""Every mutator jaxpop ships, in one list, for the contract tests (issue 18, item 6).

As optax's ``alias_test.py`` lists every optimizer once and runs the same tests over all
of them, :data:`REGISTRY` lists every mutator once -- each built-in one, the options
that change how one decides (FixedSchedule on ask; PBT by the clock, in synchronous
rounds, with ``hold``), the seed-compat adapter (:class:`jaxpop.seed.SeedMutator` around
a seed-style ``Mutate``) and a no-op baseline -- with settings small enough for property
tests. The contract tests in ``test_properties.py``, ``test_schedules.py`` and
``test_storage.py`` parametrize over all of it. A test that applies to only some
mutators filters by a declared capability of :class:`MutatorSpec` and says why; none
leaves a mutator out by omission. Add a new mutator here and every contract test runs it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import numpy as np

from conftest import noop_mutator
from jaxpop.mutators import (
    PB2,
    BranchingSingleMachine,
    FirePBT,
    FixedSchedule,
    MultipleFrequenciesPBT,
    Mutator,
    PopulationBasedTraining,
    WinnerTakeAllGenetic,
    explore,
)
from jaxpop.records import ActiveWorker, Checkpoint
from jaxpop.seed import IntKeyDict, Mutate, SeedMutator

#: The hyperparameter space of every explore-based mutator: the tests' populations are
#: ``{"h": float}`` dicts.
H_SPACE = {"h": explore.uniform(-10.0, 10.0)}


@dataclasses.dataclass(frozen=True)
class MutatorSpec:
    """One registered mutator.

    Attributes:
      name: the id the tests are parametrized with.
      make: ``interval -> Mutator``, a fresh mutator that decides every ``interval``
        (>= 1) steps of a worker's training (PBT's ``perturbation_interval``,
        WinnerTakeAllGenetic's ``steps_per_exploit``, ...; PBT by the clock every
        ``2 * interval`` seconds); each test picks it.
      sizes: the population sizes it takes, smallest first (a test draws one, or takes
        the largest): FirePBT and MF-PBT need a fixed layout of sub-populations,
        BranchingSingleMachine exactly one worker.
      in_order: a capability: without restarted workers, every generation's checkpoints
        chain step by step (each one's parent is the step before it).
        BranchingSingleMachine lacks it: a won "pos" branch resumes from an earlier step
        of a generation that has later checkpoints.
    """

    name: str
    make: Callable[[int], Mutator]
    sizes: tuple[int, ...]
    in_order: bool = True


# -- the mutation functions of the mutators that take one --------------------------------
def keyed_mutate(meta, key):
    return {"h": meta["h"] + 0.1 * float(np.random.default_rng(key).normal())}


def jax_keyed_mutate(meta, key):
    return {"h": meta["h"] + 0.1 * float(jax.random.normal(key))}


def branch_mutate(meta, direction, phase_index, key):
    delta = 0.1 * (1.0 + float(np.random.default_rng(key).random()))
    return {"h": meta["h"] + (delta if direction == "pos" else -delta), "phase": phase_index}


# -- the seed-compat adapter: a seed-style Mutate, as the seed writes them -----------------
class SeedCopyBest(Mutate):
    """A seed-style mutator (edits the cache in place), run by ``SeedMutator``.

    ``update``: once every worker's generation has an evaluation ``interval`` steps past
    its start, every worker starts a new generation from the best latest evaluation
    (finite values first), its ``h`` shifted by its index. ``get_worker_data``: a worker
    that asks with no generation (a restarted worker) starts a new generation from the
    latest checkpoint of its assignment, its ``h`` halved.

    The seed's own mutators name a new generation ``make_gen_id()`` (a uuid) and stamp
    it ``time.time()``; this one derives both from the cache (the number of generations
    is a fresh id), so that a run is a function of its events, as the determinism
    contracts require of every mutator they run.
    """

    def __init__(self, interval):
        self._interval = interval

    def init(self):
        return {"rounds": 0}

    def update(self, state, current_workers, cache):
        latest = []
        for worker in current_workers:
            steps = cache[worker.generation_id]
            evaluated = [c for c in steps.values() if c.value is not None]
            if not evaluated or evaluated[-1].step < steps.keys()[0] + self._interval:
                return state, current_workers
            latest.append(evaluated[-1])
        best = min(latest, key=lambda c: (not math.isfinite(c.value), c.value))
        new_workers = []
        for i in range(len(current_workers)):
            meta = {"h": best.meta_params["h"] + 0.1 * i}
            new_workers.append(_start(cache, best, meta))
        return {"rounds": state["rounds"] + 1}, new_workers

    def get_worker_data(
        self, active_workers, cache, worker_id, generation_id, step, params, meta_params
    ):
        if generation_id is not None:
            return active_workers
        worker = active_workers[worker_id]
        start = cache[worker.generation_id].values()[-1]
        workers = list(active_workers)
        workers[worker_id] = _start(cache, start, {"h": start.meta_params["h"] / 2})
        return workers


def _start(cache, source, meta):
    """Adds a new generation starting at ``source`` with ``meta`` to ``cache``; returns
    the worker assigned to it."""
    gen = f"seed-{len(cache)}"
    cache[gen] = IntKeyDict()
    cache[gen][source.step] = Checkpoint(
        params=source.params,
        meta_params=meta,
        generation_id=gen,
        value=None,
        parent=(source.generation_id, source.step),
        step=source.step,
        time=source.time,
    )
    return ActiveWorker(source.params, meta, gen, source.step)


def _schedule(k):
    return {0: {"h": 0.0}, k: {"h": 1.0}, 3 * k: {"h": 2.0}}


# -- the registry --------------------------------------------------------------------------
REGISTRY: tuple[MutatorSpec, ...] = (
    MutatorSpec("noop", lambda k: noop_mutator(), (1, 2, 3)),
    MutatorSpec("wta", lambda k: WinnerTakeAllGenetic(keyed_mutate, steps_per_exploit=k), (2, 3)),
    MutatorSpec(
        "wta_jax",  # a mutate function drawing with the jax key it gets
        lambda k: WinnerTakeAllGenetic(jax_keyed_mutate, steps_per_exploit=k, keep_winner=True),
        (2,),
    ),
    MutatorSpec("fixed", lambda k: FixedSchedule(_schedule(k)), (1, 2)),
    MutatorSpec("fixed_on_ask", lambda k: FixedSchedule(_schedule(k), on_ask=True), (1, 2)),
    MutatorSpec(
        "branching",
        lambda k: BranchingSingleMachine(branch_mutate, exploit_steps=k, explore_steps=k),
        (1,),
        in_order=False,
    ),
    MutatorSpec(
        "pbt",
        lambda k: PopulationBasedTraining(
            perturbation_interval=k, hyperparam_space=H_SPACE, quantile_fraction=0.5
        ),
        (2, 3, 4),
    ),
    MutatorSpec(
        "pbt_time",  # decides by the clock (each event's ``now``), may copy a rewound member
        lambda k: PopulationBasedTraining(
            perturbation_interval=2 * k,
            time_attr="time",
            burn_in_period=k,
            hyperparam_space=H_SPACE,
            quantile_fraction=0.5,
            allow_rewind=True,
        ),
        (2, 3),
    ),
    MutatorSpec(
        "pbt_synch",
        lambda k: PopulationBasedTraining(
            perturbation_interval=k,
            hyperparam_space=H_SPACE,
            synch=True,
            metric="mean",
            selection="tournament",
            mode="max",
        ),
        (2, 3),
    ),
    MutatorSpec(
        "pbt_synch_hold",  # a ready worker's ask is answered "waiting" until the round
        lambda k: PopulationBasedTraining(
            perturbation_interval=k,
            hyperparam_space=H_SPACE,
            synch=True,
            hold=True,
            selection="copy_best",
        ),
        (2, 3),
    ),
    MutatorSpec(
        "pb2",  # few observations before the bandit decides, and a small GP
        lambda k: PB2(
            perturbation_interval=k,
            hyperparam_space=H_SPACE,
            quantile_fraction=0.5,
            min_observations=2,
            window=16,
            num_candidates=16,
            num_local=8,
        ),
        (2, 3),
    ),
    MutatorSpec(
        "fire",
        lambda k: FirePBT(
            perturbation_interval=k,
            sub_population_sizes=(2, 2),
            num_evaluators=1,
            max_eval_steps=3 * k,
            hyperparam_space=H_SPACE,
        ),
        (5,),
    ),
    MutatorSpec(
        "mf_pbt",
        lambda k: MultipleFrequenciesPBT(t_ready=k, hyperparam_space=H_SPACE, frequencies=(1, 2)),
        (8,),
    ),
    MutatorSpec("seed", lambda k: SeedMutator(SeedCopyBest(k)), (1, 2, 3)),
)

#: :data:`REGISTRY` by name.
MUTATORS: dict[str, MutatorSpec] = {spec.name: spec for spec in REGISTRY}
NAMES: list[str] = [spec.name for spec in REGISTRY]
