"""Hyperparameter schedules: callables ``step -> meta_params``, curricula, and replay.

A schedule is a pure function of the step, like an optax schedule, returning a whole
hyperparameter pytree:

* :func:`piecewise` -- the seed's ``{step: meta_params}`` form (:class:`Piecewise`, which
  also exports to JSON / CSV; :func:`from_json`, :func:`tabulate`);
* :func:`per_leaf` -- a pytree of optax schedules and constants;
* :func:`curriculum` -- linear / cosine / step interpolation between whole dicts;
* :func:`constant`, :func:`join`, :func:`merge` -- to compose them.

Each one is jittable where its leaves are numeric. ``FixedSchedule(schedule, every=k)``
(:mod:`jaxpop.mutators.fixed_schedule`) drives workers with any of them.

:func:`from_lineage` reads the schedule a member of a population actually trained with
(default: :func:`best_final`) out of the history; ``FixedSchedule(from_lineage(h),
on_ask=True)`` replays it from scratch in a loop that asks for its data every step.
"""

from jaxpop.schedules.base import (
    Schedule,
    constant,
    host_step,
    is_traced,
    join,
    merge,
    per_leaf,
    to_host,
    tree_equal,
)
from jaxpop.schedules.curriculum import KINDS, curriculum
from jaxpop.schedules.piecewise import FORMAT, Piecewise, from_json, piecewise, tabulate
from jaxpop.schedules.replay import best_final, from_lineage

__all__ = [
    "FORMAT",
    "KINDS",
    "Piecewise",
    "Schedule",
    "best_final",
    "constant",
    "curriculum",
    "from_json",
    "from_lineage",
    "host_step",
    "is_traced",
    "join",
    "merge",
    "per_leaf",
    "piecewise",
    "tabulate",
    "to_host",
    "tree_equal",
]
