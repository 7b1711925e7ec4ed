"""Mutators: how a population changes, as pairs of pure functions.

* :class:`WinnerTakeAllGenetic` -- every round, all workers copy the best one.
* :class:`FixedSchedule` -- hyperparameters switch at fixed steps.
* :class:`BranchingSingleMachine` -- one worker alternates exploit and two-branch
  explore phases.
* :class:`PopulationBasedTraining` -- asynchronous (or synchronous) PBT: truncation /
  tournament / winner-take-all selection (:mod:`~jaxpop.mutators.selection`), explore in
  a declarative space (:mod:`~jaxpop.mutators.explore`).

Every built-in mutator counts its decisions and copies in one form:
:func:`decision_counts` (``mutator, state -> DecisionCounts``).

Write your own by returning a :class:`Mutator` of ``init`` and ``update`` functions.
"""

from jaxpop.mutators import explore, selection
from jaxpop.mutators.base import (
    DecisionCounts,
    Mutator,
    call_mutate_fn,
    decision_counts,
    rank_value,
    records_config,
    start_generation,
    takes_key,
)
from jaxpop.mutators.fixed_schedule import FixedSchedule
from jaxpop.mutators.pbt import ExploitEvent, PopulationBasedTraining, exploit_events
from jaxpop.mutators.single_worker_explore import BranchingSingleMachine
from jaxpop.mutators.winner_take_all_genetic import WinnerTakeAllGenetic

__all__ = [
    "BranchingSingleMachine",
    "DecisionCounts",
    "ExploitEvent",
    "FixedSchedule",
    "Mutator",
    "PopulationBasedTraining",
    "WinnerTakeAllGenetic",
    "call_mutate_fn",
    "decision_counts",
    "exploit_events",
    "explore",
    "rank_value",
    "records_config",
    "selection",
    "start_generation",
    "takes_key",
]
