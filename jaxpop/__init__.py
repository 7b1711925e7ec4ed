"""jaxpop: population based training and online hyperparameter adjustment for JAX.

The seed-compatible surface::

    from jaxpop import population as pop_mod
    from jaxpop.mutators import winner_take_all_genetic

    mutator = winner_take_all_genetic.WinnerTakeAllGenetic(mutate_fn, steps_per_exploit=100)
    population = pop_mod.PopulationController([{"log_lr": -9.2}] * 2, mutator)
"""

from jaxpop import core, encoding, hparams, keys, schedules, storage, vectorized
from jaxpop.core import PopulationState, StopWhen
from jaxpop.events import Ask, Eval
from jaxpop.history import GenerationView, History
from jaxpop.mutators import (
    BranchingSingleMachine,
    FixedSchedule,
    Mutator,
    PopulationBasedTraining,
    WinnerTakeAllGenetic,
)
from jaxpop.population import Controller, PopulationController
from jaxpop.records import ActiveWorker, Checkpoint

__version__ = "0.1.0"

__all__ = [
    "ActiveWorker",
    "Ask",
    "BranchingSingleMachine",
    "Checkpoint",
    "Controller",
    "Eval",
    "FixedSchedule",
    "GenerationView",
    "History",
    "Mutator",
    "PopulationController",
    "PopulationBasedTraining",
    "PopulationState",
    "StopWhen",
    "WinnerTakeAllGenetic",
    "core",
    "encoding",
    "hparams",
    "keys",
    "schedules",
    "storage",
    "vectorized",
]
