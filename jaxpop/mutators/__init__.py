"""Mutators: how a population changes, as pairs of pure functions.

* :class:`WinnerTakeAllGenetic` -- every round, all workers copy the best one.
* :class:`FixedSchedule` -- hyperparameters switch at fixed steps.
* :class:`BranchingSingleMachine` -- one worker alternates exploit and two-branch
  explore phases.

Write your own by returning a :class:`Mutator` of ``init`` and ``update`` functions.
"""

from jaxpop.mutators.base import Mutator, call_mutate_fn, rank_value, start_generation, takes_key
from jaxpop.mutators.fixed_schedule import FixedSchedule
from jaxpop.mutators.single_worker_explore import BranchingSingleMachine
from jaxpop.mutators.winner_take_all_genetic import WinnerTakeAllGenetic

__all__ = [
    "BranchingSingleMachine",
    "FixedSchedule",
    "Mutator",
    "WinnerTakeAllGenetic",
    "call_mutate_fn",
    "rank_value",
    "start_generation",
    "takes_key",
]
