"""Property tests of the pure core over random, worker-like event sequences.

A hypothesis strategy draws a list of abstract operations; :func:`run_ops` interprets
them as ``N`` simulated workers that follow the protocol of :mod:`jaxpop.core` (ask
with their current generation, sometimes with ``None``/``""``, a stale generation of
their own or an unknown one; train; report evaluations at increasing steps, sometimes
re-reporting a step, with occasional NaN/inf values), interleaved with garbage events
that must raise and leave the state untouched. Every transition is checked against the
properties below, for every mutator of ``tests/mutator_registry.py`` (each built-in one,
the seed-compat adapter and a no-op mutator):

1. no checkpoint is ever lost, and ``num_checkpoints`` is the real count;
2. no input (state, event, older ``History`` objects) is ever mutated;
3. assignments, replies and parent links are consistent;
4. a run is a deterministic function of its events and their ``now``;
5. a NaN/inf-scoring member never wins a ``WinnerTakeAllGenetic`` round while some
   member has a finite score.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutator_registry import MUTATORS, NAMES, branch_mutate, keyed_mutate, noop_mutator

from jaxpop import core
from jaxpop.events import Ask, Eval
from jaxpop.history import History, is_kept, kept_from
from jaxpop.keys import root_key
from jaxpop.mutators import (
    BranchingSingleMachine,
    FixedSchedule,
    WinnerTakeAllGenetic,
    decision_counts,
)
from jaxpop.records import WAITING

NAN, INF = float("nan"), float("inf")

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- snapshots ------------------------------------------------------------------------
def canon(x: Any) -> Any:
    """A deep, immutable, NaN-safe snapshot of ``x`` that compares with ``==``."""
    if x is None or isinstance(x, (bool, int, str, bytes)):
        return x
    if isinstance(x, float):
        return ("float", repr(x))
    if isinstance(x, np.ndarray):
        return ("ndarray", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, np.generic):
        return ("npscalar", x.dtype.str, x.tobytes())
    if isinstance(x, jax.Array):
        return canon(np.asarray(x))
    if isinstance(x, History):
        return ("History", x.num_checkpoints, history_contents(x))
    if dataclasses.is_dataclass(x):
        fields = dataclasses.fields(x)
        return (type(x).__name__, tuple((f.name, canon(getattr(x, f.name))) for f in fields))
    if isinstance(x, Mapping):
        return ("map", tuple(sorted((repr(k), canon(v)) for k, v in x.items())))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(canon(v) for v in x))
    if isinstance(x, complex):
        return ("complex", repr(x))
    raise TypeError(f"cannot snapshot {type(x).__name__}")


def history_contents(history: History) -> tuple:
    """``history`` as ``((ref, (value, meta_params, parent, params, time)), ...)``."""
    out = []
    for gen_id in history:
        view = history[gen_id]
        for step in view:
            c = view[step]
            assert c.ref == (gen_id, step)
            out.append(
                (c.ref, (canon(c.value), canon(c.meta_params), c.parent, canon(c.params), c.time))
            )
    return tuple(out)


def refs(history: History) -> set:
    return {(g, s) for g in history for s in history[g]}


def same_value(a: float | None, b: float | None) -> bool:
    return canon(a) == canon(b)


# -- simulated workers ----------------------------------------------------------------
@dataclasses.dataclass
class SimWorker:
    """What one worker process holds: its generation, step, params and hparams."""

    gen: str | None = None
    step: int = 0
    params: Any = None
    meta: Any = None
    past: list = dataclasses.field(default_factory=list)  # (gen, step) it held before


BAD_VALUES = ["abc", None, [1.0], {"v": 1.0}, True, np.array([1.0, 2.0]), 1 + 2j, np.array(["x"])]
BAD_WORKER_TYPES = ["0", 1.0, None, True]
BAD_STEPS = ["3", None, 1.5, [1]]

# An operation: (kind 0..99, worker, small int, finite float, special selector).
OPS = st.lists(
    st.tuples(
        st.integers(0, 99),
        st.integers(0, 15),
        st.integers(0, 7),
        st.floats(-10.0, 10.0, allow_nan=False),
        st.integers(0, 15),
    ),
    min_size=30,
    max_size=150,
)


def make_value(v: float, sel: int, a: int, allow_neg_inf: bool) -> Any:
    if sel == 0:
        return NAN
    if sel == 1:
        return INF
    if sel == 2:
        return -INF if allow_neg_inf else NAN
    if a == 7:  # other real-number types the core accepts
        return np.float32(v)
    if a == 6:
        return np.array([v])
    if a == 5:
        return int(v)
    return v


def make_garbage(a: int, w_raw: int, sim: SimWorker, w: int, n: int) -> tuple[Any, type]:
    """A call a buggy worker could make: exactly one field is invalid."""
    gen = sim.gen
    if a == 0:
        return Eval({"w": w}, -1, gen, sim.step, 1.0), ValueError
    if a == 1:
        return Ask(sim.params, sim.meta, n, gen, sim.step), ValueError
    if a == 2:
        return Eval(sim.params, n + w_raw, gen, sim.step, 1.0), ValueError
    if a == 3:
        return Eval(sim.params, w, gen, sim.step, BAD_VALUES[w_raw % len(BAD_VALUES)]), TypeError
    if a == 4:
        bad = BAD_WORKER_TYPES[w_raw % len(BAD_WORKER_TYPES)]
        return Ask(sim.params, sim.meta, bad, gen, sim.step), TypeError
    if a == 5:
        return Eval(sim.params, w, gen, BAD_STEPS[w_raw % len(BAD_STEPS)], 1.0), TypeError
    if a == 6:
        return Ask(sim.params, sim.meta, w, gen, BAD_STEPS[w_raw % len(BAD_STEPS)]), TypeError
    bad = BAD_WORKER_TYPES[w_raw % len(BAD_WORKER_TYPES)]
    return Eval(sim.params, bad, gen, sim.step, 0.5), TypeError


def next_event(kind, w, a, value, sim: SimWorker, now: float, restarts: bool) -> Ask | Eval | None:
    """The event worker ``w`` sends for operation ``kind`` (``None``: it only trains).

    With ``restarts=False`` a worker that has data never asks with ``None``, ``""``, a
    stale or an unknown generation (each of which makes it start over from its
    assignment, like a restarted worker).
    """
    if not restarts and sim.gen is not None and 55 <= kind < 71:
        kind = 30
    if 71 <= kind < 85:  # train a few steps without talking to the controller
        sim.step += 1 + a % 4
        sim.params = {"w": w, "step": sim.step}
        return None
    if kind < 30 or 85 <= kind < 90:
        if sim.gen is None:  # a real worker asks before its first evaluation
            return Ask(None, None, w, None, 0)
        if kind < 30:
            sim.step += 1 + a % 3
            sim.params = {"w": w, "step": sim.step, "t": now}
        # else: re-report the step it is at, with new params and a new value
        else:
            sim.params = {"w": w, "step": sim.step, "t": now, "again": True}
        return Eval(sim.params, w, sim.gen, sim.step, value)
    if kind < 55:
        return Ask(sim.params, sim.meta, w, sim.gen, sim.step)
    if kind < 60:
        return Ask(sim.params, sim.meta, w, None, sim.step)
    if kind < 63:
        return Ask(sim.params, sim.meta, w, "", sim.step)
    if kind < 68:
        if sim.past:  # a worker restored from an older snapshot of itself
            gen, step = sim.past[a % len(sim.past)]
            return Ask(sim.params, sim.meta, w, gen, step)
        return Ask(sim.params, sim.meta, w, sim.gen, sim.step)
    return Ask(sim.params, sim.meta, w, f"unknown-{a}", sim.step)


def adopt(sim: SimWorker, w: int, assignment) -> None:
    if sim.gen is not None and sim.gen != assignment.generation_id:
        sim.past.append((sim.gen, sim.step))
    sim.gen = assignment.generation_id
    sim.step = assignment.step
    sim.meta = assignment.meta_params
    sim.params = assignment.params if assignment.params is not None else {"w": w, "init": 0}


def run_ops(
    mutator,
    population,
    ops,
    *,
    allow_neg_inf=True,
    restarts=True,
    ranked=False,
    checker=None,
    seed=0,
):
    """Drives the core with simulated workers; returns the final state and a trace.

    The trace holds a snapshot of every reply (or raised error) and the journal holds
    every ``(event, now)`` that changed the state. With ``ranked``, every value but the
    NaN/inf ones is ``-100 * (1 + worker) - step``: the workers keep one order (the
    higher the id, the lower the value) and each one's values fall as it trains.
    """
    state = core.init(population, mutator, key=root_key(seed), now=0.0)
    if checker is not None:
        checker.start(state, mutator)
    n = state.population_size
    sims = [SimWorker() for _ in range(n)]
    trace, journal = [], []
    now = 0.0
    for kind, w_raw, a, v, sel in ops:
        now += 0.25 * (1 + a)
        w = w_raw % n
        sim = sims[w]
        if kind >= 90:
            event, error = make_garbage(a, w_raw, sim, w, n)
            snapshot, event_snapshot = canon(state), canon(event)
            with pytest.raises(error):
                core.transition(state, event, now, core.event_key(state), mutator=mutator)
            assert canon(state) == snapshot and canon(event) == event_snapshot
            trace.append(("raised", error.__name__))
            continue
        value = make_value(v, sel, a, allow_neg_inf)
        event = next_event(kind, w, a, value, sim, now, restarts)
        if event is None:
            continue
        if ranked and isinstance(event, Eval) and sel > 2:
            event = event.replace(value=-100.0 * (1 + w) - event.step)
        snapshot = canon(state) if checker is not None else None
        event_snapshot = canon(event) if checker is not None else None
        new, reply = core.transition(state, event, now, core.event_key(state), mutator=mutator)
        if checker is not None:
            checker.check(state, event, new, reply, snapshot, event_snapshot)
        if reply.worker is not None and reply.worker.status != WAITING:
            adopt(sim, w, reply.worker)  # (a held worker waits: it keeps what it has)
        if new is not state:
            journal.append((event, now))
        trace.append(canon(reply))
        state = new
    if checker is not None:
        checker.finish(state)
    return state, trace, journal


# -- the properties -------------------------------------------------------------------
def wta_score(history: History, gen: str, average: bool, steps_per_exploit: int) -> float:
    """The score WinnerTakeAllGenetic ranks by, computed independently: the values
    reported at or past the generation's interval."""
    start = history.first(gen).step + steps_per_exploit
    values = [c.value for c in history.evaluated(gen) if c.step >= start]
    if not average:
        values = values[-1:]
    if not values or not all(math.isfinite(v) for v in values):
        return INF
    return sum(values) / len(values)


def wta_ready(history: History, gen: str, steps_per_exploit: int) -> bool:
    latest = history.latest_evaluated(gen)
    return latest is not None and latest.step >= history.first(gen).step + steps_per_exploit


class Checker:
    """Checks every transition of one run against properties 1, 2, 3 and 5.

    What it may expect of the mutator it reads from the mutator itself: whether asks can
    change the state (an ``ask`` hook), whether an ask can be answered "waiting" (a
    ``holds`` function), and, for a ``WinnerTakeAllGenetic``, its rounds (property 5).
    """

    def __init__(self, *, strict_chain: bool = False):
        self.has_hook = self.wta = self.holds = None  # set by start()
        self.strict_chain = strict_chain
        self.roots: set = set()
        self.disordered: set = set()  # generations where a step was inserted mid-way
        self.old: list = []  # (History, its contents when it was current)
        self.stats = {"events": 0, "rounds": 0, "new_generations": 0, "kept": 0}

    def start(self, state, mutator):
        self.mutator = mutator
        self.has_hook = mutator.ask is not None
        self.holds = mutator.holds
        config = mutator.config or {}
        if isinstance(mutator, WinnerTakeAllGenetic) and config["steps_per_exploit"]:
            self.wta = {
                "steps_per_exploit": config["steps_per_exploit"],
                "average": config["average_over_samples"],
                "keep_winner": config["keep_winner"],
            }
        self.roots = {(w.generation_id, 0) for w in state.workers}
        self.check_state(state)

    def check(self, before, event, after, reply, snapshot, event_snapshot):
        self.stats["events"] += 1
        # 2. the inputs are untouched
        assert canon(before) == snapshot, "the transition mutated its input state"
        assert canon(event) == event_snapshot, "the transition mutated its event"
        if after is before:
            pass
        else:
            assert after.num_events == before.num_events + 1
            assert np.array_equal(after.key, before.key)
            self.old.append((before.history, dict(snapshot[1])["history"]))
        hb, ha = before.history, after.history
        # 1. nothing is lost; the count is right
        refs_b, refs_a = refs(hb), refs(ha)
        assert refs_b <= refs_a, f"checkpoints lost: {refs_b - refs_a}"
        assert ha.num_checkpoints == len(refs_a) == len(list(ha.checkpoints()))
        replaced = (event.generation_id, event.step) if isinstance(event, Eval) else None
        kept = self.check_kept(hb, after, replaced)
        for ref in refs_b:
            cb, ca = hb.get_checkpoint(*ref), ha.get_checkpoint(*ref)
            if kept is not None and cb.parent == replaced:
                # a copy of the checkpoint the eval replaced, or a later checkpoint of its
                # generation trained from it: it descends from the kept one
                assert (ca.parent, ca.step, ca.value) == (kept.ref, cb.step, cb.value)
                assert ca.params is cb.params and ca.meta_params is cb.meta_params
            elif ref == replaced:  # a re-reported step: new value and params, same place
                # (its parent: the same, unless the worker resumed from an earlier
                # checkpoint of the generation: then where it trained from)
                w = before.workers[event.worker_id]
                resumed = (
                    w.generation_id == event.generation_id
                    and event.step > w.step
                    and hb.get_checkpoint(w.generation_id, w.step) is not None
                )
                parent = cb.parent
                if parent is not None and kept_from(parent[0]) == cb.generation_id:
                    parent = (cb.generation_id, parent[1])  # (kept when its step was rerun)
                parent = (w.generation_id, w.step) if resumed else parent
                assert (ca.generation_id, ca.step, ca.parent) == (cb.generation_id, cb.step, parent)
                if parent != cb.parent:
                    self.disordered.add(ca.generation_id)  # it abandoned later checkpoints
                assert canon(ca.meta_params) == canon(cb.meta_params)
            else:
                assert ca is cb, f"checkpoint {ref} changed without being reported"
        for ref in refs_a - refs_b:
            self.check_new_checkpoint(before, event, ha, ref)
        # 3. replies agree with the new state
        if isinstance(event, Ask):
            self.check_ask(before, event, after, reply)
        else:
            self.check_eval(before, event, after, reply)
        if self.wta is not None:
            self.check_wta(before, event, after)
        self.check_state(after)

    def check_kept(self, hb: History, after, replaced) -> Any:
        """The checkpoint an eval kept for the copies of the one it replaced (the one
        checkpoint of a new kept generation: the replaced one as it was), checked; ``None``
        where it keeps none: nothing was replaced, its params stay, or nobody copied it."""
        ha = after.history
        existing = None if replaced is None else hb.get_checkpoint(*replaced)
        stored = None if replaced is None else ha.get_checkpoint(*replaced)
        copies = []
        if (
            existing is not None
            and existing.params is not None
            and stored is not existing
            and stored.params is not existing.params
            and canon(stored.params) != canon(existing.params)
        ):
            copies = [g for g in hb if hb.first(g).parent == replaced]
            copies += [c for c in hb[replaced[0]].values() if c.parent == replaced]
        new_kept = [g for g in ha if is_kept(g) and g not in hb]
        if not copies:
            assert not new_kept, f"{new_kept} kept, but nothing copied was replaced"
            return None
        (gen,) = new_kept
        assert gen.startswith(replaced[0] + "~") and list(ha[gen]) == [replaced[1]]
        kept = ha.first(gen)
        assert kept.params is existing.params and kept.meta_params is existing.meta_params
        assert (kept.parent, kept.step, kept.time) == (
            existing.parent,
            existing.step,
            existing.time,
        )
        assert same_value(kept.value, existing.value)
        assert all(w.generation_id != gen for w in after.workers)
        self.stats["kept"] += 1
        return kept

    def check_new_checkpoint(self, before, event, ha: History, ref):
        hb = before.history
        gen, step = ref
        if is_kept(gen):  # (check_kept checked it)
            return
        c = ha.get_checkpoint(*ref)
        if gen in hb:  # continues a known generation
            previous = hb.previous(gen, step)
            expected = previous.ref if previous is not None else hb.branch_point(gen)
            if isinstance(event, Eval) and (event.generation_id, event.step) == ref:
                # a report on the worker's own assignment: trained from the assignment
                assigned = before.workers[event.worker_id]
                start = (gen, assigned.step)
                if assigned.generation_id == gen and step > assigned.step and start in refs(hb):
                    expected = start
            assert c.parent == expected, f"{ref}: parent {c.parent}, expected {expected}"
            if previous is not None and expected != previous.ref:
                self.disordered.add(gen)  # the worker abandoned later checkpoints
            assert canon(c.meta_params) == canon(hb.meta_params(gen))
            if step < max(hb[gen]):
                self.disordered.add(gen)
        else:  # a new generation starts where its parent checkpoint is
            self.stats["new_generations"] += 1
            assert len(ha[gen]) == 1 and c.value is None
            parent = ha.get_checkpoint(*c.parent)
            assert parent is not None and parent.step == step and parent.generation_id != gen

    def check_ask(self, before, event, after, reply):
        w = event.worker_id
        assigned = after.workers[w]
        gen = event.generation_id
        held = reply.worker is not None and reply.worker.status == WAITING
        if held and assigned.status != WAITING:  # held until the round is decided
            self.check_held(after, w, reply)
        if gen is None or gen == "":
            assert (held or reply.worker is assigned) and reply.warning is None
        elif gen == assigned.generation_id:
            assert reply.warning is None
            if reply.worker is not None:
                self.check_held(after, w, reply)
        else:
            assert held or reply.worker is assigned
            assert (reply.warning is not None) == (gen not in before.history)
        if not self.has_hook:
            assert after.workers is before.workers
            assert after.mutator_state is before.mutator_state
            if gen == before.workers[w].generation_id and reply.worker is not None:
                self.check_held(after, w, reply)
            if gen is None or gen == "" or gen not in before.history:
                assert after is before
        if reply.worker is not None:  # the worker's new generation is its assignment
            assert reply.worker.generation_id == after.workers[w].generation_id

    def check_held(self, state, w, reply):
        """A reply to an ask with the worker's own generation holds it: only a mutator
        with ``holds`` does that, when it says so, with the assignment marked waiting."""
        assert self.holds is not None, "an ask with the current generation was answered"
        assert self.holds(state.mutator_state, state.workers, state.history, w)
        assert reply.worker.status == WAITING
        held, assigned = reply.worker, state.workers[w]
        assert (held.generation_id, held.step) == (assigned.generation_id, assigned.step)
        assert held.params is assigned.params and held.meta_params is assigned.meta_params

    def check_eval(self, before, event, after, reply):
        gen = event.generation_id
        if gen is None or gen == "" or gen not in before.history:
            assert after is before and reply.checkpoint is None and reply.warning is not None
            return
        stored = after.history.get_checkpoint(gen, event.step)
        assert reply.checkpoint is stored and reply.warning is None
        assert stored.params == event.params  # a copy (jaxpop.boundary): equal, not shared
        assert same_value(stored.value, core.as_value(event.value))

    def check_wta(self, before, event, after):
        k, average = self.wta["steps_per_exploit"], self.wta["average"]
        ha = after.history
        exploits_before = before.mutator_state.num_exploits
        exploits_after = after.mutator_state.num_exploits
        # a round starts exactly when every worker's generation is ready
        assert not all(wta_ready(ha, w.generation_id, k) for w in after.workers)
        if exploits_after == exploits_before:  # assignments may only follow their progress
            for a, b in zip(after.workers, before.workers, strict=True):
                assert a.generation_id == b.generation_id and a.step >= b.step
            return
        assert isinstance(event, Eval) and exploits_after == exploits_before + 1
        self.stats["rounds"] += 1
        old = before.workers
        assert all(wta_ready(ha, w.generation_id, k) for w in old)
        scores = [wta_score(ha, w.generation_id, average, k) for w in old]
        sources = [ha.branch_point(w.generation_id) for w in after.workers]
        assert all(w.generation_id not in before.history for w in after.workers)
        if any(math.isfinite(s) for s in scores):
            # 5. the winner is a member with the best finite score
            best = int(np.argmin(scores))
            win_gen = old[best].generation_id
            assert set(sources) == {ha.latest_evaluated(win_gen).ref}, (sources, scores)
            assert math.isfinite(wta_score(ha, win_gen, average, k))
            start = ha.first(win_gen).step + k
            values = [c.value for c in ha.evaluated(win_gen) if c.step >= start]
            assert all(math.isfinite(v) for v in (values if average else values[-1:]))
            if self.wta.get("keep_winner"):
                winner_meta = ha.latest_evaluated(win_gen).meta_params
                assert canon(after.workers[best].meta_params) == canon(winner_meta)
        else:  # nobody is finite: each worker continues (mutated) from its own checkpoint:
            # its latest save with a finite value (before it diverged), else its start (a
            # worker sent back there before) or its latest evaluation
            for w, source in zip(old, sources, strict=True):
                good = [
                    c
                    for c in ha.evaluated(w.generation_id)
                    if c.params is not None and math.isfinite(c.value)
                ]
                if good:
                    assert source == good[-1].ref
                else:
                    gen = w.generation_id
                    assert source in (ha.first(gen).ref, ha.latest_evaluated(gen).ref)

    def check_state(self, state):
        h = state.history
        # 3. every assignment exists, and an ask with it is answered with None
        for i, w in enumerate(state.workers):
            assert w.generation_id in h
            assert h.get_checkpoint(w.generation_id, w.step) is not None
            if not self.has_hook:
                probe = Ask(w.params, w.meta_params, i, w.generation_id, w.step)
                new, reply = core.ask(
                    state, probe, 0.0, core.event_key(state), mutator=self.mutator
                )
                assert new is state
                if reply.worker is not None:
                    self.check_held(state, i, reply)
        # 3. parent links: existing, within a generation to a lower step, across
        # generations only from a generation's first checkpoint; all reach a root.
        resolved = set()
        for c in h.checkpoints():
            first = h.first(c.generation_id)
            if c.parent is None:
                assert c.ref in self.roots or is_kept(c.generation_id), f"{c.ref}: no parent"
                resolved.add(c.ref)
                continue
            parent = h.get_checkpoint(*c.parent)
            assert parent is not None, f"{c.ref} has a dangling parent {c.parent}"
            if c.parent[0] == c.generation_id or kept_from(c.parent[0]) == c.generation_id:
                # (within its generation, or to a step of it that was rerun since: kept)
                assert parent.step < c.step and c is not first
            else:  # (a kept generation's one checkpoint keeps the parent it had)
                assert c is first and (parent.step == c.step or is_kept(c.generation_id))
        for c in h.checkpoints():
            path, ref = [], c.ref
            while ref not in resolved:
                assert ref not in path, f"cycle through {ref}"
                path.append(ref)
                ref = h.get_checkpoint(*ref).parent
                assert ref is not None or path[-1] in self.roots or is_kept(path[-1][0])
                if ref is None:
                    break
            resolved.update(path)
        # 3. within a generation, each checkpoint's parent is the previous step
        for gen in h:
            if gen in self.disordered and not self.strict_chain:
                continue
            steps = list(h[gen])
            for lower, upper in itertools.pairwise(steps):
                parent = h[gen][upper].parent
                if parent is not None and kept_from(parent[0]) == gen:
                    parent = (gen, parent[1])  # (the step below was rerun since: kept)
                assert parent == (gen, lower), (gen, steps, h[gen][upper].parent)

    def finish(self, state):
        # 2. every older History still holds exactly what it held (structural sharing)
        for old_history, snapshot in self.old:
            assert canon(old_history) == snapshot
            assert old_history.num_checkpoints == len(snapshot[2])


# -- the contract, over every mutator ---------------------------------------------------
def population(n: int) -> list:
    return [{"h": float(i) + 0.5} for i in range(n)]


def check_run(mutator, pop, ops, checker, *, allow_neg_inf=True, restarts=True, ranked=False):
    state, _, journal = run_ops(
        mutator,
        pop,
        ops,
        allow_neg_inf=allow_neg_inf,
        restarts=restarts,
        ranked=ranked,
        checker=checker,
    )
    if hypothesis.currently_in_test_context():  # for --hypothesis-show-statistics
        hypothesis.event(f"rounds={min(checker.stats['rounds'], 3)}")
        hypothesis.event(f"new generations={min(checker.stats['new_generations'], 3)}")
        hypothesis.event(f"a step inserted mid-generation={bool(checker.disordered)}")
    # 4. replaying the journal (the events that changed the state) rebuilds the state
    replayed = core.init(pop, mutator, key=root_key(0), now=0.0)
    for event, now in journal:
        replayed, _ = core.transition(
            replayed, event, now, core.event_key(replayed), mutator=mutator
        )
    assert canon(replayed) == canon(state)
    return state


# Every contract test runs over every mutator of tests/mutator_registry.py, each with its
# own examples (a failure names the mutator).
@pytest.mark.parametrize("name", NAMES)
@settings(SETTINGS, max_examples=25)
@given(
    k=st.integers(1, 3),
    size=st.integers(0, 2),
    restarts=st.booleans(),
    ranked=st.booleans(),
    ops=OPS,
)
def test_run_properties(name, k, size, restarts, ranked, ops):
    """Properties 1, 2, 3, 4 (journal replay) and, for WinnerTakeAllGenetic, 5."""
    spec = MUTATORS[name]
    n = spec.sizes[size % len(spec.sizes)]
    # Without restarts each generation's checkpoints chain step by step, except where
    # the mutator itself resumes a worker from an earlier step (spec.in_order).
    checker = Checker(strict_chain=not restarts and spec.in_order)
    check_run(spec.make(k), population(n), ops, checker, restarts=restarts, ranked=ranked)


@pytest.mark.parametrize("name", NAMES)
@settings(SETTINGS, max_examples=6)
@given(ops=OPS)
def test_same_events_same_run(name, ops):
    """4. the same events with the same ``now`` from the same init give the same run."""
    spec = MUTATORS[name]
    n = spec.sizes[-1]
    first, trace1, journal1 = run_ops(spec.make(2), population(n), ops)
    second, trace2, journal2 = run_ops(spec.make(2), population(n), ops)
    assert trace1 == trace2
    assert [(canon(e), t) for e, t in journal1] == [(canon(e), t) for e, t in journal2]
    assert canon(first.workers) == canon(second.workers)
    assert canon(first.mutator_state) == canon(second.mutator_state)
    assert history_contents(first.history) == history_contents(second.history)
    assert list(first.history) == list(second.history)
    assert first.num_events == second.num_events


@pytest.mark.parametrize("name", NAMES)
@settings(SETTINGS, max_examples=4)
@given(
    moves=st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 3), st.floats(-5.0, 5.0, allow_nan=False)),
        min_size=5,
        max_size=40,
    ),
)
def test_set_eval_and_ask_is_set_eval_then_ask(name, moves):
    """``PopulationController.set_eval_and_ask`` answers and records exactly what
    ``set_eval`` followed by ``maybe_get_worker_data`` for the same checkpoint would."""
    from conftest import FakeClock
    from jaxpop import PopulationController

    spec = MUTATORS[name]
    n = spec.sizes[-1]

    def run(use_report: bool):
        pop = PopulationController(population(n), spec.make(2), seed=3, clock=FakeClock())
        first = [pop.maybe_get_worker_data(i, None, 0, None, None) for i in range(n)]
        gens, steps = [d.generation_id for d in first], [d.step for d in first]
        replies = []
        for w, advance, value in moves:
            w %= n
            steps[w] += advance
            args = (w, gens[w], steps[w], f"p{w}-{steps[w]}", value)
            if use_report:
                reply = pop.set_eval_and_ask(*args)
            else:
                pop.set_eval(*args)
                reply = pop.maybe_get_worker_data(*args[:4], None)
            replies.append(canon(reply))
            if reply is not None:
                gens[w], steps[w] = reply.generation_id, reply.step
        return replies, pop.state

    replies, state = run(use_report=True)
    expected, twin = run(use_report=False)
    assert replies == expected
    assert history_contents(state.history) == history_contents(twin.history)
    assert canon(state.workers) == canon(twin.workers)
    assert canon(state.mutator_state) == canon(twin.mutator_state)
    assert state.num_events == twin.num_events


# -- one mutator's own parameters and properties ------------------------------------------
# The registry fixes each mutator's settings (test_run_properties runs them all); these
# sweep the settings of the seed's mutators, WinnerTakeAllGenetic's property 5 over all
# of its options, and FixedSchedule over arbitrary schedules.
SWEEP = settings(SETTINGS, max_examples=50)


@SWEEP
@given(
    n=st.integers(2, 4),
    k=st.integers(1, 3),
    average=st.booleans(),
    keep_winner=st.booleans(),
    restarts=st.booleans(),
    ops=OPS,
)
def test_winner_take_all_properties(n, k, average, keep_winner, restarts, ops):
    mutator = WinnerTakeAllGenetic(
        keyed_mutate, steps_per_exploit=k, average_over_samples=average, keep_winner=keep_winner
    )
    check_run(mutator, population(n), ops, Checker(strict_chain=not restarts), restarts=restarts)


@SWEEP
@given(
    n=st.integers(1, 3),
    schedule=st.dictionaries(st.integers(0, 12), st.floats(-1.0, 1.0), min_size=1, max_size=4),
    on_ask=st.booleans(),
    restarts=st.booleans(),
    ops=OPS,
)
def test_fixed_schedule_properties(n, schedule, on_ask, restarts, ops):
    mutator = FixedSchedule({step: {"h": h} for step, h in schedule.items()}, on_ask=on_ask)
    check_run(mutator, population(n), ops, Checker(strict_chain=not restarts), restarts=restarts)


@SWEEP
@given(exploit=st.integers(1, 3), explore=st.integers(1, 3), restarts=st.booleans(), ops=OPS)
def test_branching_single_machine_properties(exploit, explore, restarts, ops):
    mutator = BranchingSingleMachine(branch_mutate, exploit_steps=exploit, explore_steps=explore)
    # Even without restarts, a won "pos" branch sends the worker back to an earlier step
    # of a generation that can have later checkpoints (see the xfail test below), so
    # the per-generation chain is only checked where steps were added in order.
    check_run(mutator, population(1), ops, Checker(), restarts=restarts)


def _counts(mutator, state):
    return decision_counts(mutator, state.mutator_state)


def _held(trace) -> bool:
    return any("waiting" in repr(reply) for reply in trace)


#: What the simulated workers make each registered mutator do in one run as long as the
#: longest the contract tests draw: ``(mutator, final state, trace) -> bool``, with random
#: values or, for the names in RANKED, ranked ones (see run_ops). FixedSchedule and
#: BranchingSingleMachine (one worker) never copy another member. FirePBT's hand-over
#: needs an evaluator significantly ahead of the child (a p-value under ``p_stat``),
#: which random values almost never make.
RANKED = {"fire"}
REACHED = {
    "noop": lambda m, state, trace: state.history.num_checkpoints > len(state.workers),
    "wta": lambda m, state, trace: _counts(m, state).copies >= 3,
    "wta_jax": lambda m, state, trace: _counts(m, state).copies >= 3,
    "fixed": lambda m, state, trace: _counts(m, state).decisions >= 3,
    "fixed_on_ask": lambda m, state, trace: _counts(m, state).decisions >= 3,
    "branching": lambda m, state, trace: state.mutator_state.phase_index >= 2,
    "pbt": lambda m, state, trace: _counts(m, state).copies >= 3,
    "pbt_time": lambda m, state, trace: _counts(m, state).copies >= 3,
    "pbt_synch": lambda m, state, trace: _counts(m, state).copies >= 3,
    "pbt_synch_hold": lambda m, state, trace: _counts(m, state).copies >= 3 and _held(trace),
    "pb2": lambda m, state, trace: _counts(m, state).copies >= 3,
    "fire": lambda m, state, trace: (
        state.mutator_state.num_exploits >= 1 and state.mutator_state.num_handovers >= 1
    ),
    "mf_pbt": lambda m, state, trace: (
        state.mutator_state.num_exploits >= 1 and state.mutator_state.num_migrations >= 1
    ),
    "seed": lambda m, state, trace: (  # rounds of update, and generations of the ask hook
        state.mutator_state["rounds"] >= 1
        and len(list(state.history)) > len(state.workers) * (1 + state.mutator_state["rounds"])
    ),
}


def test_reached_covers_the_whole_registry():
    assert sorted(REACHED) == sorted(NAMES)
    assert RANKED.issubset(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_simulation_reaches_the_interesting_states(name):
    """The simulated workers do drive every mutator through its transitions."""
    rng = np.random.default_rng(0)
    ops = [
        (int(rng.integers(0, 90)), int(rng.integers(0, 16)), int(rng.integers(0, 8)), 1.0, 5)
        for _ in range(150)
    ]
    for i, op in enumerate(ops):  # scores that differ between workers
        ops[i] = (*op[:3], float(rng.normal()), int(rng.integers(0, 16)))
    spec = MUTATORS[name]
    mutator, pop = spec.make(2), population(spec.sizes[-1])
    ranked = name in RANKED
    check_run(mutator, pop, ops, Checker(), allow_neg_inf=False, ranked=ranked)
    state, trace, _ = run_ops(mutator, pop, ops, allow_neg_inf=False, ranked=ranked)
    assert REACHED[name](mutator, state, trace)


def test_old_history_objects_keep_their_contents():
    """2. structural sharing: an old History is unaffected by many later adds."""
    mutator = WinnerTakeAllGenetic(keyed_mutate, steps_per_exploit=1)
    state = core.init(population(2), mutator, key=root_key(3), now=0.0)
    saved = [(state.history, history_contents(state.history))]
    for t in range(1, 300):
        w = t % 2
        gen = state.workers[w].generation_id
        event = Eval({"t": t}, w, gen, t, float(t % 7) if t % 11 else NAN)
        state, _ = core.transition(state, event, float(t), core.event_key(state), mutator=mutator)
        if t % 37 == 0:
            saved.append((state.history, history_contents(state.history)))
    assert state.mutator_state.num_exploits > 50
    for history, contents in saved:
        assert history_contents(history) == contents


# -- bugs -----------------------------------------------------------------------------
def _wta_state_with_values(values, average=True):
    """Worker 0 reports ``values`` at steps 1, 2, ... (all counted: the interval is 1
    step); then worker 1's report of 0.5 completes the round.

    Returns the state just before worker 1's report, and that report.
    """
    mutator = WinnerTakeAllGenetic(keyed_mutate, steps_per_exploit=1, average_over_samples=average)
    state = core.init(population(2), mutator, key=root_key(0), now=0.0)
    g0, g1 = (w.generation_id for w in state.workers)
    for step, value in enumerate(values, start=1):
        event = Eval({"s": step}, 0, g0, step, value)
        state, _ = core.transition(state, event, 1.0, core.event_key(state), mutator=mutator)
    assert state.mutator_state.num_exploits == 0
    return mutator, state, Eval({}, 1, g1, 1, 0.5)


def test_wta_average_survives_plus_and_minus_inf():
    # worker 0 reports +inf then -inf (both recorded: it is not ready yet), then a
    # finite value that makes it ready and completes the round
    mutator, state, event = _wta_state_with_values([INF, -INF, 1.0])
    assert state.history.get_checkpoint(state.workers[0].generation_id, 2).value == -INF
    new, _ = core.transition(state, event, 3.0, core.event_key(state), mutator=mutator)
    assert new.mutator_state.num_exploits == 1
    # worker 1 (finite score) won: every new generation starts from its checkpoint
    assert {new.history.branch_point(w.generation_id)[0] for w in new.workers} == {
        state.workers[1].generation_id
    }


def test_wta_average_survives_a_sum_that_overflows():
    mutator, state, event = _wta_state_with_values([1e308, 1e308])
    new, _ = core.transition(state, event, 3.0, core.event_key(state), mutator=mutator)
    assert new.mutator_state.num_exploits == 1


def _apply_all(state, events, mutator):
    replies = []
    for t, event in enumerate(events, start=1):
        state, reply = core.transition(
            state, event, float(t), core.event_key(state), mutator=mutator
        )
        replies.append(reply)
    return state, replies


def test_restarted_worker_resumes_from_its_latest_checkpoint():
    mutator = noop_mutator()
    state = core.init([{"h": 1.0}], mutator, key=root_key(0), now=0.0)
    gen = state.workers[0].generation_id
    state, replies = _apply_all(
        state,
        [
            Ask(None, None, 0, None, 0),
            Eval("run1@10", 0, gen, 10, 1.0),
            Eval("run1@20", 0, gen, 20, 2.0),
            Ask("run1@25", None, 0, None, 25),  # restarted (steps 21-25 were lost)
        ],
        mutator,
    )
    # the restarted worker resumes from its latest reported checkpoint...
    resumed = replies[-1].worker
    assert (resumed.generation_id, resumed.step, resumed.params) == (gen, 20, "run1@20")
    # ...and what it trains from there descends from that checkpoint
    state, _ = _apply_all(state, [Eval("run2@25", 0, gen, 25, 0.5)], mutator)
    assert [c.ref for c in state.history.lineage(gen, 25)] == [
        (gen, 0),
        (gen, 10),
        (gen, 20),
        (gen, 25),
    ]


def test_branching_pos_winner_lineage_skips_abandoned_checkpoints():
    mutator = BranchingSingleMachine(branch_mutate, exploit_steps=2, explore_steps=1)
    state = core.init([{"h": 1.0}], mutator, key=root_key(0), now=0.0)
    g0 = state.workers[0].generation_id
    state, _ = _apply_all(
        state,
        [
            Ask(None, None, 0, None, 0),
            Eval("g0@2", 0, g0, 2, 1.0),  # the branch point: the centre trains on
            Eval("g0@3", 0, g0, 3, 5.0),  # centre done (and worst)
        ],
        mutator,
    )
    pos = state.workers[0].generation_id  # explore "pos" from (g0, 2)
    state, _ = _apply_all(
        state,
        [
            Ask("g0@3", None, 0, g0, 3),
            Eval("pos@3", 0, pos, 3, 0.0),  # pos phase done: switch to "neg"
            Eval("pos@4", 0, pos, 4, 9.0),  # kept training pos before asking
        ],
        mutator,
    )
    neg = state.workers[0].generation_id
    state, _ = _apply_all(
        state, [Ask("pos@4", None, 0, pos, 4), Eval("neg@3", 0, neg, 3, 1.0)], mutator
    )
    winner = state.workers[0]
    assert (winner.params, winner.step) == ("pos@3", 3)  # pos won: resume from (pos, 3)
    state, _ = _apply_all(
        state,
        [
            Ask("neg@3", None, 0, neg, 3),
            Eval("resumed@5", 0, winner.generation_id, 5, 0.5),  # trained from pos@3
        ],
        mutator,
    )
    lineage = [c.ref for c in state.history.lineage(winner.generation_id, 5)]
    assert (pos, 4) not in lineage, lineage


def _saved_by(history, ref) -> bool:
    """Whether a generation had sent params (or started from some) by the step ``ref``."""
    view = history[ref[0]]
    return any(view[step].params is not None for step in view if step <= ref[1])


@pytest.mark.filterwarnings("ignore:WinnerTakeAllGenetic. :RuntimeWarning")
@pytest.mark.parametrize("name", NAMES)
def test_a_copy_of_a_generation_that_evaluates_more_often_than_it_saves_gets_params(name):
    """Workers evaluate every 2 steps and send params every 6 (the others ``None``); a
    copy of a generation that had evaluated since its start but not yet saved got
    ``params=None`` deep in training ("initialise fresh parameters"), and its training
    started over. It gets the params the generation started from (FIRE tester), and the
    population still makes progress: a round shorter than the save interval sent every
    worker back to the same start, forever (WinnerTakeAllGenetic after that fix)."""
    spec = MUTATORS[name]
    mutator, size = spec.make(2), spec.sizes[-1]
    state = core.init(population(size), mutator, key=root_key(7), now=0.0)
    rng = np.random.default_rng(1)
    held = [(w.generation_id, w.step) for w in state.workers]
    copies = furthest = 0

    def apply(state, event, now):
        return core.transition(state, event, now, core.event_key(state), mutator=mutator)

    for t in range(1, 600):
        w = int(rng.integers(size))
        gen, step = held[w]
        state, reply = apply(state, Ask(None, None, w, gen, step), float(t))
        new = reply.worker
        if new is not None and new.status != "active":
            continue
        if new is not None and (new.generation_id, new.step) != (gen, step):
            parent = state.history.first(new.generation_id).parent
            if parent is not None and _saved_by(state.history, parent) and name != "seed":
                copies += 1  # (the seed's mutator copies what it chooses)
                assert new.params is not None, (t, w, new)
            gen, step = new.generation_id, new.step
        step += 1
        if step % 2 == 0:
            params = f"p{w}@{step}" if step % 6 == 0 else None
            event = Eval(params, w, gen, step, float(rng.normal()))
            state, _ = apply(state, event, t + 0.5)
        held[w] = (gen, step)
        furthest = max(furthest, step)
    if name not in ("noop", "seed"):
        assert copies > 0
    # each worker takes about 600 / size steps (half of that, fewer where the run rewinds
    # members or holds them); WinnerTakeAllGenetic's rounds shorter than the save
    # interval reached about a third of them
    share = 0.15 if name in ("pbt_time", "pbt_synch_hold") else 0.5
    assert furthest >= share * 600 / size, (name, furthest, copies)
