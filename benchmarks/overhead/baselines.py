"""The controllers jaxpop is compared with: the seed's design, minimally, in plain Python.

``DictController`` keeps the state in a dict of dicts, a list and a lock, changed in
place; ``SeedPickleController`` adds the seed's storage (pickle the whole state, rewrite
one file, on every event).
"""

from __future__ import annotations

import copy
import math
import os
import pickle  # the seed's storage design: the baseline that jaxpop's storage replaces
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np


class _Checkpoint(NamedTuple):
    params: Any
    meta_params: Any
    generation_id: str
    value: float | None
    parent: tuple[str, int] | None
    step: int
    time: float


class _Worker(NamedTuple):
    params: Any
    meta_params: Any
    generation_id: str
    step: int


class DictController:
    """The seed's controller, minimally: a dict of dicts, a list, a lock, in place.

    Same protocol and same winner-take-all rule as jaxpop's ``WinnerTakeAllGenetic``
    (score: the mean of the values the worker's current generation reported at or past
    its interval; every worker gets ``mutate_fn`` of the winner's hyperparameters and
    starts a new generation from the winner's latest evaluated checkpoint). No
    randomness, no validation, no warnings, no snapshots.
    """

    def __init__(
        self,
        initial_population: Sequence[Any],
        mutate_fn: Callable[[Any], Any],
        steps_per_exploit: int,
    ):
        self._lock = threading.Lock()
        self._mutate_fn = mutate_fn
        self._steps_per_exploit = steps_per_exploit
        self._num_ids = 0
        self.history: dict[str, dict[int, _Checkpoint]] = {}
        self.workers: list[_Worker] = []
        self.num_checkpoints = 0
        self.num_exploits = 0
        now = time.time()
        for meta_params in initial_population:
            gen = self._new_id()
            self.history[gen] = {0: _Checkpoint(None, meta_params, gen, None, None, 0, now)}
            self.workers.append(_Worker(None, meta_params, gen, 0))
            self.num_checkpoints += 1

    def clone(self) -> DictController:
        """An independent copy (the checkpoints themselves are immutable and shared)."""
        new = copy.copy(self)
        new._lock = threading.Lock()
        new.history = {gen: dict(steps) for gen, steps in self.history.items()}
        new.workers = list(self.workers)
        return new

    def shape(self) -> dict[str, int]:
        """History size, generations and exploit rounds (as ``driver.controller_shape``)."""
        return {
            "checkpoints": self.num_checkpoints,
            "generations": len(self.history),
            "exploit_rounds": self.num_exploits,
        }

    def _new_id(self) -> str:
        self._num_ids += 1
        return f"{self._num_ids:016x}"

    def _append(self, steps: dict, generation_id: str, step: int, params, value) -> None:
        """A new checkpoint at ``step``, after the generation's last one."""
        last = steps[next(reversed(steps))]
        parent = (generation_id, last.step)
        steps[step] = _Checkpoint(
            params, last.meta_params, generation_id, value, parent, step, time.time()
        )
        self.num_checkpoints += 1

    def maybe_get_worker_data(self, worker_id, generation_id, step, params, meta_params):
        with self._lock:
            worker = self.workers[worker_id]
            if not generation_id:
                return worker
            if generation_id == worker.generation_id:
                return None
            steps = self.history.get(generation_id)
            if steps is not None and step not in steps:  # keep the worker's last params
                self._append(steps, generation_id, step, params, None)
            return worker

    def set_eval(self, worker_id, generation_id, step, params, value):
        value = float(value)
        with self._lock:
            steps = self.history.get(generation_id)
            if steps is None:
                return
            old = steps.get(step)
            if old is None:
                self._append(steps, generation_id, step, params, value)
            else:
                steps[step] = old._replace(params=params, value=value, time=time.time())
            self._update()

    @staticmethod
    def _latest_evaluated(steps: dict[int, _Checkpoint]) -> _Checkpoint | None:
        for step in reversed(steps):
            if steps[step].value is not None:
                return steps[step]
        return None

    def _update(self) -> None:
        latest = []
        for worker in self.workers:
            steps = self.history[worker.generation_id]
            checkpoint = self._latest_evaluated(steps)
            if checkpoint is None or checkpoint.step < next(iter(steps)) + self._steps_per_exploit:
                return
            latest.append(checkpoint)
        scores = []
        for worker in self.workers:
            steps = self.history[worker.generation_id]
            since = next(iter(steps)) + self._steps_per_exploit
            values = [c.value for c in steps.values() if c.value is not None and c.step >= since]
            mean = math.fsum(values) / len(values)
            scores.append(mean if math.isfinite(mean) else math.inf)
        best = int(np.argmin(scores))
        winner, now = latest[best], time.time()
        for i in range(len(self.workers)):
            meta_params = self._mutate_fn(winner.meta_params)
            gen = self._new_id()
            parent = (winner.generation_id, winner.step)
            start = _Checkpoint(winner.params, meta_params, gen, None, parent, winner.step, now)
            self.history[gen] = {winner.step: start}
            self.workers[i] = _Worker(winner.params, meta_params, gen, winner.step)
        self.num_checkpoints += len(self.workers)
        self.num_exploits += 1


class SeedPickleController(DictController):
    """The seed's storage design: pickle the whole state, rewrite one file, on every event.

    ``save`` does what the seed's ``save_state`` did: pickle ``(workers, history,
    mutator state)``, write it to a fresh temporary file in ``log_dir`` and rename that
    over ``population.state`` (no fsync). It runs after every call that changes the
    state (a ``set_eval``; an ask that stores the worker's last params). With
    ``compare_on_ask`` every ask also pickles the state twice, as the seed did around
    its mutator's ``get_worker_data`` hook to see whether anything changed (for
    winner-take-all nothing does). Saving is off while ``log_dir`` is ``None`` (to build
    a history quickly: the state is the same). Single-threaded use only (the save runs
    outside the lock; the seed's ran inside, which costs the same here).
    """

    log_dir: str | None = None
    compare_on_ask = False
    STATE_FILE = "population.state"

    def state_bytes(self) -> bytes:
        return pickle.dumps((self.workers, self.history, self.num_exploits, self._num_ids))

    def save(self) -> None:
        if self.log_dir is None:
            return
        content = self.state_bytes()
        tmp = os.path.join(self.log_dir, f"population_tmp_{uuid.uuid4()}.state")
        with open(tmp, "wb") as f:
            f.write(content)
        os.replace(tmp, os.path.join(self.log_dir, self.STATE_FILE))

    @classmethod
    def load(cls, log_dir: str) -> tuple[Any, ...]:
        """What the seed's ``load_state`` did: read the file and unpickle it."""
        with open(os.path.join(log_dir, cls.STATE_FILE), "rb") as f:
            return pickle.loads(f.read())

    def maybe_get_worker_data(self, worker_id, generation_id, step, params, meta_params):
        if self.compare_on_ask and self.log_dir is not None:
            before, after = self.state_bytes(), self.state_bytes()
            if before != after:
                self.save()
        num_checkpoints = self.num_checkpoints
        worker = super().maybe_get_worker_data(worker_id, generation_id, step, params, meta_params)
        if self.num_checkpoints != num_checkpoints:
            self.save()
        return worker

    def set_eval(self, worker_id, generation_id, step, params, value):
        if generation_id not in self.history:
            return
        super().set_eval(worker_id, generation_id, step, params, value)
        self.save()
