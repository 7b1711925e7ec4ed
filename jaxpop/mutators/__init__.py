"""Mutators: how a population changes, as pairs of pure functions.

* :class:`WinnerTakeAllGenetic` -- every round, all workers copy the best one.
* :class:`FixedSchedule` -- hyperparameters switch at fixed steps.
* :class:`BranchingSingleMachine` -- one worker alternates exploit and two-branch
  explore phases.
* :class:`PopulationBasedTraining` -- asynchronous (or synchronous) PBT: truncation /
  tournament / copy-best selection (:mod:`~jaxpop.mutators.selection`), explore in
  a declarative space (:mod:`~jaxpop.mutators.explore`).
* :class:`FirePBT` -- FIRE PBT: later sub-populations ranked by improvement rate, with
  evaluators that hand better weights over to the sub-population before.
* :class:`MultipleFrequenciesPBT` -- MF-PBT: sub-populations evolving at different
  frequencies, with asymmetric migration between them.
* :func:`PB2` -- Population Based Bandits: PBT whose explore is a time-varying GP-UCB
  bandit (:class:`PB2Explorer`, usable as ``PopulationBasedTraining(explorer=...)``).

Every built-in mutator counts its decisions and copies in one form:
:func:`decision_counts` (``mutator, state -> DecisionCounts``).

Each keeps its state in a typed record (:class:`PBTState`, :class:`WinnerTakeAllState`,
:class:`BranchingState`, :class:`FireState`, :class:`MFPBTState`; FixedSchedule's is a
tuple of phase indices). Write your own by returning a :class:`Mutator` of ``init`` and
``update`` functions.
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
from jaxpop.mutators.fire import FirePBT, FireState
from jaxpop.mutators.fixed_schedule import FixedSchedule
from jaxpop.mutators.mf_pbt import MFPBTState, MultipleFrequenciesPBT
from jaxpop.mutators.pb2 import PB2, PB2Explorer, RewardChange, reward_changes
from jaxpop.mutators.pbt import ExploitEvent, PBTState, PopulationBasedTraining, exploit_events
from jaxpop.mutators.single_worker_explore import BranchingSingleMachine, BranchingState
from jaxpop.mutators.winner_take_all_genetic import WinnerTakeAllGenetic, WinnerTakeAllState

__all__ = [
    "BranchingSingleMachine",
    "BranchingState",
    "DecisionCounts",
    "ExploitEvent",
    "FirePBT",
    "FireState",
    "FixedSchedule",
    "MFPBTState",
    "MultipleFrequenciesPBT",
    "Mutator",
    "PB2",
    "PB2Explorer",
    "PBTState",
    "PopulationBasedTraining",
    "RewardChange",
    "WinnerTakeAllGenetic",
    "WinnerTakeAllState",
    "call_mutate_fn",
    "decision_counts",
    "exploit_events",
    "explore",
    "rank_value",
    "records_config",
    "reward_changes",
    "selection",
    "start_generation",
    "takes_key",
]
