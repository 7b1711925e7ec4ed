"""Hyperparameter schedules. For now, fixed step schedules are the ``FixedSchedule`` mutator
(:mod:`jaxpop.mutators.fixed_schedule`); schedule callables and replay come next.
"""

__all__: list[str] = []
