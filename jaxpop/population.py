"""The seed-compatible ``PopulationController``: a thin, thread-safe shell over the core.

The controller adds exactly four things to the pure transitions of :mod:`jaxpop.core`:
a lock (many worker threads may call it at once), a clock (``now`` for each event), a
seeded root key (each event gets its own key, see :mod:`jaxpop.keys`) and, later,
durable storage. Every decision is made by :func:`jaxpop.core.transition`.

The records ``Checkpoint`` and ``ActiveWorker`` and the state ``PopulationState`` are
re-exported here, where the seed's users look for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from jaxpop import core
from jaxpop.core import PopulationState
from jaxpop.events import Ask, Eval, Event
from jaxpop.history import History
from jaxpop.keys import root_key
from jaxpop.mutators.base import Mutator
from jaxpop.records import ActiveWorker, Checkpoint

__all__ = ["ActiveWorker", "Checkpoint", "PopulationController", "PopulationState"]

logger = logging.getLogger("jaxpop")


class PopulationController:
    """Hands out work to a population of workers and records what they report.

    Args:
      initial_population: one ``meta_params`` pytree per worker; the population size is
        its length.
      mutator: how the population changes (for example ``WinnerTakeAllGenetic``).
      log_dir: where durable state will be kept. Accepted for compatibility with the
        seed; this version keeps the state in memory only.
      seed: seeds the run's root PRNG key. Given the same seed, mutators that use their
        key (not numpy's global random state) make the same decisions for the same
        sequence of calls.
      clock: returns the current time in seconds; ``time.time`` by default. Tests pass
        a fake clock.

    All methods are safe to call from many threads at once.
    """

    def __init__(
        self,
        initial_population: Sequence[Any],
        mutator: Mutator,
        log_dir: str | None = None,
        seed: int = 0,
        *,
        clock: Callable[[], float] = time.time,
    ):
        if not isinstance(mutator, Mutator):
            raise TypeError(
                "mutator must be a jaxpop Mutator (e.g. WinnerTakeAllGenetic(...)), "
                f"got {type(mutator).__name__}"
            )
        self._mutator = mutator
        self._clock = clock
        self._lock = threading.RLock()
        self.log_dir = log_dir
        if log_dir is not None:
            logger.info("log_dir=%r: this version keeps population state in memory", log_dir)
        self._state = core.init(initial_population, mutator, key=root_key(seed), now=clock())

    # -- the seed's API -------------------------------------------------------------
    def maybe_get_worker_data(
        self,
        worker_id: int,
        generation_id: str | None,
        step: int,
        params: Any,
        meta_params: Any,
    ) -> ActiveWorker | None:
        """Returns new work for ``worker_id``, or ``None`` if it should keep going.

        ``generation_id`` is what the worker is training now (``None`` or ``""`` if it
        has nothing yet). When this returns an ``ActiveWorker``, the worker loads its
        ``params`` (``None``: fresh initialisation), trains with its ``meta_params``,
        and continues at its ``step`` under its ``generation_id``.
        """
        event = Ask(params, meta_params, worker_id, generation_id, step)
        return self._apply(event).worker

    def set_eval(
        self,
        worker_id: int,
        generation_id: str,
        step: int,
        params: Any,
        value: float,
    ) -> None:
        """Records the evaluation ``value`` (lower is better) of ``params`` at ``step``.

        Raises ``TypeError`` if ``value`` is not a real number. A NaN or infinite value
        is stored but never wins a selection. An evaluation for a generation this
        controller never made is logged as a warning and ignored.
        """
        event = Eval(params, worker_id, generation_id, step, core.as_value(value))
        self._apply(event)

    # -- read-only views ------------------------------------------------------------
    @property
    def active_workers(self) -> tuple[ActiveWorker, ...]:
        """The current assignment of every worker, indexed by worker id."""
        return self._state.workers

    @property
    def history(self) -> History:
        """Every checkpoint: ``controller.history[generation_id][step]``."""
        return self._state.history

    @property
    def state(self) -> PopulationState:
        """The whole immutable state (a snapshot; later calls do not change it)."""
        return self._state

    @property
    def mutator(self) -> Mutator:
        return self._mutator

    # -- the shell ------------------------------------------------------------------
    def _apply(self, event: Event) -> core.Reply:
        with self._lock:
            state = self._state
            new_state, reply = core.transition(
                state, event, self._clock(), core.event_key(state), mutator=self._mutator
            )
            self._state = new_state
        if reply.warning is not None:
            logger.warning(reply.warning)
        return reply
