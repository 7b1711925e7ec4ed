"""The sections of ``benchmarks/controller_overhead.py``, one module each (``memory``,
``durable``, ``seed``, ``decisions``), and what they share: the worker loop that drives a
controller (``driver``) and the plain-Python controllers jaxpop is compared with
(``baselines``)."""
