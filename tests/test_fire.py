"""FirePBT (jaxpop.mutators.fire): improvement-rate fitness, evaluators and hand-over."""

from __future__ import annotations

import doctest
import math
import random

import numpy as np
import pytest

from conftest import SimulatedWorkers, apply, fresh_state
from jaxpop import PopulationController, core, encoding, schedules, storage
from jaxpop import report as reports
from jaxpop.events import Ask, Eval, Finish, Missing
from jaxpop.history import History
from jaxpop.mutators import _subpopulations, decision_counts, fire
from jaxpop.mutators import explore as ex
from jaxpop.mutators.base import copy_source
from jaxpop.mutators.fire import (
    Curve,
    Evaluation,
    FirePBT,
    FireState,
    evaluator_verdict,
    fire_fitness,
    improvement,
    overlap,
)

SPACE = {"lr": ex.log_uniform(1e-4, 1.0)}


def make(**kwargs) -> FirePBT:
    options = {
        "perturbation_interval": 1000,  # no member decisions unless a test wants them
        "sub_population_sizes": (2, 2),
        "num_evaluators": 1,
        "max_eval_steps": 1000,
        "hyperparam_space": SPACE,
        "mode": "max",
    }
    options.update(kwargs)
    return FirePBT(**options)


def population(m, n):
    return fresh_state([{"lr": 0.01 * (i + 1)} for i in range(n)], m)


def report(state, m, worker, step, value, now=1.0):
    gen = state.workers[worker].generation_id
    state, _ = apply(state, Eval(f"w{worker}@{step}", worker, gen, step, float(value)), now, m)
    return state


def report_no_params(state, m, worker, step, value):
    """:func:`report` of an evaluation sent without params (nothing saved)."""
    gen = state.workers[worker].generation_id
    return apply(state, Eval(None, worker, gen, step, value), 1.0, m)[0]


def _evaluated_before_any_save(m, n):
    """P1 members 0 and 1 and member 2 evaluate, none saving: an evaluator takes member
    2 from a fresh start (nothing in the run saves yet)."""
    state = population(m, n)
    state = report_no_params(state, m, 0, 10, 0.0)
    for j in range(3):
        state = report_no_params(state, m, 1, 10 * (j + 1), 0.10 + 0.01 * j)
    return report_no_params(state, m, 2, 5, 0.05)


def test_module_examples_run():
    assert doctest.testmod(fire).failed == 0
    assert doctest.testmod(_subpopulations).failed == 0


# -- the improvement-rate comparison, on hand-made curves -----------------------------------
def test_curves_are_compared_where_they_reach_the_same_performance():
    ahead_but_slow = Curve.of([(0, 5.0), (10, 5.1), (20, 5.2), (30, 5.3)])
    behind_but_fast = Curve.of([(0, 3.0), (10, 5.0), (20, 7.0), (30, 9.0)])
    # aligned where the fast one reaches 5.0 (its step 10) and the slow one starts
    assert overlap(behind_but_fast, ahead_but_slow) == fire.Overlap(10, 0, 20)
    assert improvement(behind_but_fast, ahead_but_slow) == pytest.approx(9.0 - 5.2)
    assert improvement(ahead_but_slow, behind_but_fast) == pytest.approx(-(9.0 - 5.2))
    # by raw score the slow one wins; by improvement rate the fast one does
    assert fire_fitness([ahead_but_slow, behind_but_fast]) == pytest.approx([-3.8, 3.8])


def test_curves_that_never_meet_are_ranked_by_the_gap_between_them():
    low = Curve.of([(0, 1.0), (10, 2.0)])
    high = Curve.of([(0, 3.0), (10, 3.5)])
    assert overlap(low, high) is None and overlap(high, low) is None
    assert improvement(high, low) == 1.0 and improvement(low, high) == -1.0


def test_fitness_needs_two_points_and_a_diverged_curve_ranks_last():
    good = Curve.of([(0, 1.0), (10, 2.0)])
    diverged = Curve.of([(0, 1.0), (10, math.nan)])
    single = Curve.of([(0, 9.0)])
    fitness = fire_fitness([good, diverged, single, None])
    assert fitness[0] == 0.0 and math.isnan(fitness[1]) and fitness[2:] == [None, None]


def test_fitness_from_the_kept_matrix_equals_fitness_computed_afresh():
    """The memo recomputes only the rows and columns of the curves that changed since a
    sub-population's last fitness; over random changes (a new curve, none, one point, a
    diverged one, the same again) its fitness equals the definition's exactly."""
    rng = np.random.default_rng(0)

    def random_curve():
        kind = rng.integers(6)
        if kind == 0:
            return None
        points = [
            (int(s), float(v)) for s, v in zip(range(0, 50, 10), rng.normal(size=5), strict=True)
        ]
        if kind == 1:
            return Curve.of(points[:1])
        if kind == 2:
            points[-1] = (points[-1][0], math.nan)
        return Curve.of(points[: int(rng.integers(2, 6))])

    def fitness_afresh(curves):  # the definition, one member at a time (as reprs)
        ok = [c is not None and len(c) >= 2 and np.all(np.isfinite(c.values)) for c in curves]
        out = []
        for i, c in enumerate(curves):
            if c is None or len(c) < 2:
                out.append(None)
            elif not ok[i]:
                out.append("nan")
            else:
                others = [improvement(c, d) for j, d in enumerate(curves) if ok[j] and j != i]
                out.append(repr(math.fsum(others)))
        return out

    memo = fire._Memo()
    # two sub-populations, each with its own matrix, asked in turn at random; now and
    # then a sub-population's curves go back to earlier ones (a kept fitness)
    now = {slot: [random_curve() for _ in range(7)] for slot in (0, 7)}
    seen: list[list] = []
    for _ in range(120):
        slot = int(rng.choice([0, 7]))
        curves = now[slot]
        if seen and rng.random() < 0.15:
            curves[:] = seen[int(rng.integers(len(seen)))]
        else:
            for i in rng.choice(7, size=int(rng.integers(1, 4)), replace=False):
                curves[i] = random_curve()
        seen.append(list(curves))
        keys = tuple(None if c is None else fire._digest(c) for c in curves)
        got = memo.fitness(curves, keys, slot)
        assert [None if x is None else repr(x) for x in got] == fitness_afresh(curves)
        order = [fire.selection_lib.sort_key(x, "max") for x in got]  # (NaN for none)
        assert memo.sort_keys(curves, keys, slot).tobytes() == np.array(order).tobytes()
    assert len(memo._matrices) == 2


def test_fitness_near_the_float_range_is_the_exact_sum_rounded():
    """Improvements between values near +-1.8e308 overflow a float: a member's fitness is
    still its exact sum of improvements, correctly rounded (+-inf only when that sum is
    beyond a float's range), never an error from summing inf and -inf."""
    from fractions import Fraction

    big, huge = 1e308, 1.7e308
    a = Curve.of([(2, -big), (12, big)])
    b = Curve.of([(14, -huge), (24, 0.0), (34, -huge), (44, big)])
    c = Curve.of([(8, -big), (18, -big), (28, 1.0), (38, -big)])
    d = Curve.of([(12, -huge), (22, huge)])
    curves = [a, b, c, d]
    # a's improvements over c and d are beyond a float's range, one each way
    assert improvement(a, c) == math.inf and improvement(a, d) == -math.inf

    def exact(i, j):  # the two values improvement() compares, as exact fractions
        ours, theirs = fire._compared(curves[i], curves[j])
        return Fraction(ours) - Fraction(theirs)

    fitness = fire_fitness(curves)
    for i in range(4):
        total = sum(exact(i, j) for j in range(4) if j != i)
        if abs(total) > Fraction(np.finfo(np.float64).max):
            assert fitness[i] == (math.inf if total > 0 else -math.inf), i
        else:
            assert fitness[i] == float(total), i
    assert math.isfinite(fitness[0])  # (about 3e307)
    # the same from a kept matrix, after a curve changed
    memo = fire._Memo()
    keys = tuple(fire._digest(x) for x in curves)
    memo.fitness(curves, keys, 0)
    curves[3] = Curve.of([(0, -huge), (10, 0.0)])
    changed = (*keys[:3], fire._digest(curves[3]))
    assert memo.fitness(curves, changed, 0) == fire_fitness(curves)


def test_the_verdict_follows_the_papers_criteria():
    child = Curve.of([(10 * j, 1.0 + 0.1 * j) for j in range(12)])
    same = Curve.of([(10 * j, 1.0 + 0.1 * j) for j in range(12)])
    faster = Curve.of([(10 * j, 1.0 + j) for j in range(12)])
    slower = Curve.of([(10 * j, 1.0 + 0.01 * j) for j in range(12)])
    kwargs = {"max_eval_steps": 200, "p_stat": 0.01}
    assert evaluator_verdict(faster, child, 110, **kwargs) == "success"
    assert (
        evaluator_verdict(
            faster.__class__(faster.steps[:6], faster.values[:6]), child, 50, **kwargs
        )
        == "continue"
    )  # 5 wins of 6 are not yet significant
    assert evaluator_verdict(same, child, 110, **kwargs) == "stop"  # hopeless: p = 1 > 0.46
    # 7 wins of 12 (p = 0.387): not significant, not hopeless yet (the bar is 0.46)
    mixed = [0.0] + [0.05] * 7 + [-0.05] * 4
    coin = Curve.of([(10 * j, 1.0 + 0.1 * j + mixed[j]) for j in range(12)])
    assert evaluator_verdict(coin, child, 110, **kwargs) == "continue"
    assert evaluator_verdict(coin, child, 190, **kwargs) == "stop"  # the bar fell to 0.06
    assert evaluator_verdict(slower, child, 110, **kwargs) == "stop"  # hopeless: p = 1
    assert evaluator_verdict(same, child, 200, **kwargs) == "stop"  # max_eval_steps passed
    diverged = Curve.of([(0, 1.0), (10, math.inf)])
    assert evaluator_verdict(diverged, child, 10, **kwargs) == "stop"


def test_max_eval_steps_ends_only_an_evaluation_whose_curve_does_not_overlap():
    kwargs = {"max_eval_steps": 200, "p_stat": 0.01}
    child = Curve.of([(10 * j, 1.0 + 0.1 * j + (10.0 if j == 5 else 0.0)) for j in range(20)])
    # from the same start, above the child at 18 of 20 points (p = 0.0002), but the
    # child's spike is higher: significant, no improvement yet. Past max_eval_steps it
    # goes on (the bar has fallen to p_stat), where the old hard limit stopped it
    close = Curve.of([(10 * j, 1.0 + 0.1 * j + (0.05 if j else 0.0)) for j in range(20)])
    assert fire.binomial_p_value(close, child) < 0.01 and improvement(close, child) < 0
    assert evaluator_verdict(close, child, 250, **kwargs) == "continue"
    # ... up to twice max_eval_steps: jaxpop's bound (by the quoted rules it went on for
    # good, holding its evaluator and the queue: helper-248)
    assert evaluator_verdict(close, child, 399, **kwargs) == "continue"
    assert evaluator_verdict(close, child, 400, **kwargs) == "stop"
    # a curve that never reaches the child's first value stops at max_eval_steps ...
    behind = Curve.of([(10 * j, 0.1 + 0.01 * j) for j in range(12)])
    assert evaluator_verdict(behind, child, 199, **kwargs) == "continue"
    assert evaluator_verdict(behind, child, 200, **kwargs) == "stop"
    # ... and so does one too short to compare
    assert evaluator_verdict(Curve.of([(0, 5.0)]), child, 200, **kwargs) == "stop"


# -- the mutator: later sub-populations are ranked by improvement rate ----------------------------
def _improvement_rate_run():
    """P1 = 0, 1; P2 = 2, 3; evaluators 4, 5. Member 2 leads P2 by score, but member 3's
    weights improve faster from equal performance (its evaluator's curve)."""
    m = make(num_evaluators=2, perturbation_interval=10, quantile_fraction=0.5)
    state = population(m, 6)
    gens = [w.generation_id for w in state.workers]
    state = report(state, m, 0, 5, 0.5)
    state = report(state, m, 1, 5, 0.6)  # the best of P1: the evaluators' child
    state = report(state, m, 2, 5, 0.9)  # P2's best by score ...
    state = report(state, m, 3, 5, 0.3)
    tasks = state.mutator_state.evaluations
    assert {e: (t.member, t.child) for e, t in tasks.items()} == {4: (2, 1), 5: (3, 1)}
    # each evaluator trains its member's weights with the child's hyperparameters
    assert state.workers[4].meta_params == state.workers[1].meta_params
    assert state.history.branch_point(state.workers[4].generation_id) == (gens[2], 5)
    for step, (slow, fast) in zip(
        (10, 15, 20), ((0.91, 0.6), (0.92, 0.9), (0.93, 1.2)), strict=True
    ):
        state = report(state, m, 4, step, slow)  # ... but member 2's weights improve slowly
        state = report(state, m, 5, step, fast)  # and member 3's fast, from 0.9 on
    state = report(state, m, 3, 15, 0.35)  # member 3 ready: the better by FIRE fitness
    assert state.workers[3].generation_id == gens[3]
    return m, state, gens


def test_a_later_sub_population_ranks_by_improvement_rate_not_by_score():
    m, state, gens = _improvement_rate_run()
    state = report(state, m, 2, 15, 0.95)  # member 2 ready: still the best by score
    w = state.workers[2]
    assert w.generation_id != gens[2]  # yet it copies member 3
    assert state.history.branch_point(w.generation_id) == (gens[3], 15)
    assert state.mutator_state.num_exploits == 1


def test_p1_ranks_by_the_tasks_score():
    m = make(perturbation_interval=10, quantile_fraction=0.5)
    state = population(m, 5)
    gens = [w.generation_id for w in state.workers]
    state = report(state, m, 1, 10, 2.0)
    state = report(state, m, 0, 10, 1.0)  # worse (mode="max"): copies member 1
    assert state.history.branch_point(state.workers[0].generation_id) == (gens[1], 10)


def test_truncation_within_a_sub_population_follows_its_rule_on_random_keys():
    """``fire._truncation`` against the rule stated plainly: among the members with a
    key (NaN: none), ordered by key then id, one of the last ``k`` copies one of the
    first ``k`` strictly better than it, drawn uniformly in that order; a member
    without a key copies no one."""
    from jaxpop.mutators._host_random import HostRandom

    rng = np.random.default_rng(0)
    checked = copies = 0
    for trial in range(300):
        n = int(rng.integers(1, 48))  # (a ranking of more than 32 keys is sorted by numpy)
        keys = rng.choice([0.0, 0.5, 1.0, -2.0, np.inf, np.nan], n)  # many ties
        keys = np.where(rng.random(n) < 0.4, rng.normal(size=n), keys)
        fraction = float(rng.choice([0.1, 0.25, 0.5]))
        key = np.array([trial, 7], np.uint32)
        for me in np.flatnonzero(keys == keys).tolist():
            better = _candidates_by_rule(keys, me, fraction)
            expected = None
            if better is not None:
                expected = better[HostRandom(key).randrange(len(better))]
            assert fire._truncation(key, keys, me, fraction) == expected, (trial, me)
            checked += 1
            copies += expected is not None
        for me in np.flatnonzero(keys != keys).tolist():
            assert fire._truncation(key, keys, me, fraction) is None
    assert checked > 3000 and copies > 300  # both outcomes, many times


def test_a_later_sub_population_member_copies_by_the_rule_over_its_own_keys(monkeypatch):
    """A ready member of a later sub-population decides by truncation over its own
    sub-population's sort keys, counted from the sub-population's first member: along
    random scripts, with made-up keys (ties, infinities, members without one), what it
    may copy is what the rule over those keys gives (:func:`_candidates_by_rule`).
    (Every member with an evaluation is taken as ready: between two events none is, an
    update decides for each one that is.)"""
    config = {
        "perturbation_interval": 1,
        "sub_population_sizes": (3, 7, 6),
        "num_evaluators": 2,
        "quantile_fraction": 0.5,
    }
    rng = np.random.default_rng(3)
    draw, drawn = fire._draw, []
    monkeypatch.setattr(
        fire, "_draw", lambda key, better: drawn.append(list(better)) or draw(key, better)
    )
    checked = copies = 0
    for _, t, state, m, view in _views_along_random_scripts(config, "min", seeds=6):
        memo, cfg = m.update.keywords["memo"], m.update.keywords["config"]
        fire._Scored.bring_up_to_date(view, cfg.num_members)
        for members in cfg.sub_populations[1:]:
            n = len(members)
            keys = rng.choice([0.0, -0.0, 1.0, -1.0, np.inf, np.nan], n)
            keys = np.where(rng.random(n) < 0.4, rng.normal(size=n), keys)
            keys.setflags(write=False)  # (as the memo's)
            evaluated = [
                i
                for i in members
                if state.workers[i].is_active
                and state.history.latest_evaluated(state.workers[i].generation_id) is not None
            ]
            for member in evaluated:
                key = np.array([t, member], np.uint32)
                args = (state.mutator_state, state.workers, state.history, 0.0, key, memo, view)
                drawn.clear()
                with monkeypatch.context() as patch:  # (the scripts' updates read their own)
                    patch.setattr(fire, "_sort_keys", lambda step, config, ms, k=keys: k)
                    patch.setattr(
                        fire, "_ready", lambda c, d, h, i, w: h.latest_evaluated(w.generation_id)
                    )
                    fire._decide(fire._Step(*args), cfg, member)
                me = member - members.start
                expected = None
                if not math.isnan(keys[me]):
                    expected = _candidates_by_rule(keys, me, cfg.quantile_fraction)
                assert (drawn[0] if drawn else None) == expected, (t, member)
                checked += 1
                copies += expected is not None
        m.update.keywords["views"].keep(view)
    assert checked > 200 and copies > 50


# -- evaluators: hand-over, stopping, the queue ------------------------------------------------
def _handover_run(evaluator_values):
    """P1 member 1 improves slowly for 12 reports; P2 member 2 is then evaluated with
    member 1's hyperparameters, the evaluator reporting ``evaluator_values``."""
    m = make()
    state = population(m, 5)
    state = report(state, m, 0, 10, 0.0)
    for j in range(12):
        state = report(state, m, 1, 10 * (j + 1), 0.10 + 0.01 * j)
    state = report(state, m, 2, 5, 0.05)
    assert state.mutator_state.evaluations[4].child == 1
    for j, value in enumerate(evaluator_values):
        state = report(state, m, 4, 5 + 10 * (j + 1), value)
    return m, state


def test_an_evaluator_that_improves_faster_hands_its_weights_over_to_the_child():
    m, state = _handover_run([0.10 + 0.1 * j for j in range(10)])  # 9 wins of 10: not yet
    assert state.mutator_state.num_handovers == 0
    before = state
    evaluator_gen = state.workers[4].generation_id
    child_meta = state.workers[1].meta_params
    state = report(state, m, 4, 115, 1.1)  # 10 wins of 11: p < 0.01
    s = state.mutator_state
    assert s.num_handovers == 1
    child = state.workers[1]
    # the child continues from the evaluator's latest checkpoint, with its own
    # hyperparameters (those the evaluator trained with)
    assert state.history.branch_point(child.generation_id) == (evaluator_gen, 115)
    assert child.meta_params == child_meta and child.step == 115 and child.params == "w4@115"
    assert s.curves[1] == (evaluator_gen, child.generation_id)  # its curve goes on
    # the evaluated member keeps training its own weights; the evaluator moves on
    assert state.workers[2].generation_id == before.workers[2].generation_id
    assert state.workers[4].generation_id != evaluator_gen
    # ... in the same update, to member 2 again, with the child that just took the weights
    # over (P1's best now, its curve the evaluator's: one it has although its generation
    # started in this update)
    assert s.evaluations[4].member == 2 and s.evaluations[4].child == 1
    assert decision_counts(m, s) == (1, 1)


def test_a_hopeless_evaluation_stops_and_the_evaluator_takes_the_next_member():
    _, state = _handover_run([0.10, 0.10])  # never better than the child: p = 1
    s = state.mutator_state
    assert s.num_handovers == 0 and s.num_evaluations == 2 and s.num_decisions == 1
    assert s.evaluations[4].member == 2  # member 3 has no evaluation: 2 again


def test_an_evaluator_waits_for_a_members_first_save_in_a_run_that_saves():
    """A member that evaluated before its first save was given to an evaluator with no
    weights to load: it trained from scratch, and its curve was taken for the member's
    fitness (hostile review, helper-286). It waits for the member's save."""
    m = make(mode="max")
    state = population(m, 5)
    state = report(state, m, 0, 10, 0.0)
    for j in range(3):
        state = report(state, m, 1, 10 * (j + 1), 0.10 + 0.01 * j)
    gen = state.workers[2].generation_id
    state, _ = apply(state, Eval(None, 2, gen, 5, 0.05), 1.0, m)  # (evaluated, not saved)
    assert state.mutator_state.evaluations == {}
    state = report(state, m, 2, 10, 0.06)  # its first save
    task = state.mutator_state.evaluations[4]
    assert task.member == 2 and state.workers[4].params == "w2@10"


def test_an_evaluation_from_no_weights_ends_once_its_member_has_some():
    """A run whose workers never sent params evaluates from fresh starts (every copy is
    one); once the member sends params, that evaluation no longer measures its weights:
    it ends, and the member is evaluated again from them."""
    m = make(mode="max")
    state = _evaluated_before_any_save(m, 5)
    first = state.mutator_state.evaluations[4]
    assert first.member == 2 and state.workers[4].params is None  # (nothing saves yet)
    assert state.mutator_state.evaluated[2][1] == first.generation
    state = report(state, m, 2, 15, 0.06)  # the member saves
    state = report_no_params(state, m, 4, 15, 0.2)  # the evaluator reports: its evaluation is void
    again = state.mutator_state.evaluations[4]
    assert again.generation != first.generation and state.workers[4].params == "w2@15"
    assert state.mutator_state.evaluated[2][1] == again.generation  # (not the void one's)


def test_a_void_evaluation_leaves_no_fitness_behind():
    """An evaluation begun from no weights, ended once its member saved: its curve, a
    network not the member's, stayed the member's fitness until another evaluation of
    it replaced it (here the evaluator moves on to a member never evaluated)."""
    m = make(mode="max", sub_population_sizes=(2, 3))
    state = _evaluated_before_any_save(m, 6)
    first = state.mutator_state.evaluations[5]
    assert first.member == 2
    state = report(state, m, 2, 15, 0.06)  # member 2 saves
    state = report(state, m, 3, 15, 0.07)  # member 3, never evaluated, saves
    state = report_no_params(state, m, 5, 15, 0.2)  # the evaluation of 2 is void: ended
    assert state.mutator_state.evaluations[5].member == 3
    assert 2 not in state.mutator_state.evaluated


def test_in_a_run_where_only_some_workers_save_the_others_are_not_evaluated():
    """A member whose worker never sends params, in a run whose other workers do: an
    evaluator has nothing of it to load (from scratch it would measure a network not
    the member's); it is evaluated once it saves."""
    m = make(mode="max")
    state = population(m, 5)
    state = report(state, m, 0, 10, 0.0)
    for j in range(3):
        state = report(state, m, 1, 10 * (j + 1), 0.10 + 0.01 * j)
    for step in (5, 15, 25):
        state = report_no_params(state, m, 2, step, 0.05)
        state = report_no_params(state, m, 3, step, 0.05)
    assert state.mutator_state.evaluations == {}
    state = report(state, m, 3, 35, 0.06)  # member 3 saves: it is evaluated
    assert state.mutator_state.evaluations[4].member == 3


def test_the_evaluators_queue_takes_the_member_evaluated_longest_ago():
    m = make(sub_population_sizes=(2, 3), num_evaluators=1, max_eval_steps=20)
    state = population(m, 6)
    state = report(state, m, 1, 10, 1.0)
    for member in (2, 3, 4):
        state = report(state, m, member, 10, 1.0)
    assert state.mutator_state.evaluations[5].member == 2  # never evaluated: lowest id
    state = report(state, m, 5, 30, 1.0)  # 20 steps without success: stops
    assert state.mutator_state.evaluations[5].member == 3
    state = report(state, m, 5, 35, 1.0)
    assert state.mutator_state.evaluations[5].member == 4
    assert state.mutator_state.last_evaluation == {2: 10, 3: 10, 4: 10}


def test_the_evaluators_queue_goes_by_when_an_evaluation_started_not_by_its_step():
    """Ordered by the step their last evaluation started, a fast worker's member
    (evaluated at a high step) waited until every slower one passed that step: one 100
    times faster was evaluated twice against a slow one's 298 times (helper-248). The
    queue follows the order the evaluations started in."""
    m = make(sub_population_sizes=(2, 3), num_evaluators=1, max_eval_steps=20)
    state = population(m, 6)  # P1 0, 1; P2 2, 3, 4; evaluator 5
    state = report(state, m, 1, 10, 1.0)
    for member, step in ((2, 10), (3, 1000), (4, 10)):  # member 3's worker is fast
        state = report(state, m, member, step, 1.0)
    taken = []
    for _ in range(6):  # each evaluation stops after 20 steps: the next one starts
        task = state.mutator_state.evaluations[5]
        taken.append(task.member)
        state = report(state, m, 5, task.step + 20, 1.0)
    assert taken == [2, 3, 4, 2, 3, 4]  # (by step: 2, 3, 4, 2, 2, 2: 4 ties 2, by id)
    assert state.mutator_state.last_evaluation == {2: 10, 3: 1000, 4: 10}


def test_a_run_recorded_before_the_evaluation_order_takes_its_members_first_by_step():
    """A FireState journaled before ``evaluation_order`` (decoded with none): its members
    were evaluated before any the resumed run evaluates, and keep their order by step."""
    m = make(sub_population_sizes=(2, 3), num_evaluators=1, max_eval_steps=20)
    state = population(m, 6)
    state = report(state, m, 1, 10, 1.0)
    for member, step in ((2, 10), (3, 1000), (4, 10)):
        state = report(state, m, member, step, 1.0)
    for _ in range(2):
        state = report(state, m, 5, state.mutator_state.evaluations[5].step + 20, 1.0)
    fs = state.mutator_state
    assert fs.evaluations[5].member == 4 and fs.evaluation_order == {2: 1, 3: 2, 4: 3}
    plain = {name: getattr(fs, name) for name in fs._fields if name != "evaluation_order"}
    old = encoding.decode(encoding.encode(fire.FireState(**plain)))
    assert old.evaluation_order == {}
    state = state._with(mutator_state=old)
    state = report(state, m, 5, fs.evaluations[5].step + 20, 1.0)  # 2 next (by step)
    assert state.mutator_state.evaluations[5].member == 2
    assert state.mutator_state.evaluation_order == {2: 1}
    state = report(state, m, 5, state.mutator_state.evaluations[5].step + 20, 1.0)
    assert state.mutator_state.evaluations[5].member == 4  # at step 10: before 3's 1000


def test_a_member_handed_weights_over_counts_as_just_evaluated_in_the_queue():
    # a hand-over (counted as a copy) left the child's place in the evaluators' queue
    # where its old weights' evaluation had put it (hostile review, helper-139)
    m = make(sub_population_sizes=(2, 2, 2), num_evaluators=1, max_eval_steps=100, p_stat=0.5)
    s = population(m, 7)  # P1 0, 1; P2 2, 3; P3 4, 5; evaluator 6
    s = report(s, m, 0, 10, 1.0)
    s = report(s, m, 2, 10, 0.10)  # the evaluator takes P2's member 2
    s = report(s, m, 4, 5, 0.0)
    for j, step in enumerate((20, 30, 40, 50)):
        s = report(s, m, 2, step, 0.11 + 0.01 * j)
    s = report(s, m, 6, 15, 0.0)
    s = report(s, m, 6, 110, 0.0)  # stops; takes P3's member 4, child 2
    assert (s.mutator_state.evaluations[6].member, s.mutator_state.evaluations[6].child) == (4, 2)
    for k in (1, 2):
        s = report(s, m, 6, 5 + 10 * k, 0.1 + 0.3 * k)  # better than the child: hand-over
    assert s.mutator_state.num_handovers == 1
    assert s.mutator_state.last_evaluation[2] == s.workers[2].step == 25
    for bad in (0, -0.1, math.nan, 1.5, "0.5", None, True):  # (it said [0, 1] for all but 0)
        with pytest.raises((ValueError, TypeError), match=r"p_stat must be .*in \(0, 1\]"):
            make(p_stat=bad)


def test_evaluators_assigned_in_one_update_take_the_child_that_is_best_after_each_other():
    # three evaluators sharing a child go idle at once (the child finishes); the queue
    # is P3's member 6, then P2's best member 2 (taken for a new evaluation: no fitness
    # until its evaluator reports twice), then P3's member 5, whose child must be P2's
    # best *now* -- member 3 -- not member 2 as it was at the start of the update
    m = make(sub_population_sizes=(2, 3, 2), num_evaluators=3, max_eval_steps=100)
    state = population(m, 10)  # P1 = 0, 1; P2 = 2, 3, 4; P3 = 5, 6; evaluators 7, 8, 9
    state = report(state, m, 0, 10, 0.5)
    state = report(state, m, 1, 10, 0.1)  # P1's best: member 0
    for worker, step, value in ((2, 10, 0.3), (5, 10, 0.3), (3, 20, 0.2), (4, 20, 0.2)):
        state = report(state, m, worker, step, value)
    state = report(state, m, 8, 20, 0.0)
    state = report(state, m, 8, 110, 0.0)  # hopeless: evaluator 8 takes member 4
    state = report(state, m, 6, 10, 0.3)  # P3's member 6 waits, never evaluated
    state = report(state, m, 7, 15, 1.0)
    state = report(state, m, 7, 20, 2.0)  # member 2's weights improve fast ...
    state = report(state, m, 9, 25, 1.0)
    state = report(state, m, 9, 30, 1.1)  # ... member 3's slowly: 2 is P2's best
    tasks = state.mutator_state.evaluations
    assert {e: (t.member, t.child) for e, t in tasks.items()} == {7: (2, 0), 8: (4, 0), 9: (3, 0)}
    state, _ = apply(state, Finish(0), 2.0, m)  # their child is done: all three idle
    tasks = state.mutator_state.evaluations
    assert {e: (t.member, t.child) for e, t in tasks.items()} == {7: (6, 2), 8: (2, 1), 9: (5, 3)}
    assert state.workers[9].meta_params == state.workers[3].meta_params


def test_an_evaluation_whose_child_copies_someone_stops():
    m = make(perturbation_interval=10, quantile_fraction=0.5)
    state = population(m, 5)
    state = report(state, m, 1, 5, 1.0)
    state = report(state, m, 0, 5, 0.5)
    state = report(state, m, 2, 5, 1.0)
    first = state.mutator_state.evaluations[4]
    assert (first.member, first.child) == (2, 1)
    state = report(state, m, 0, 10, 3.0)  # P1: member 0 is now the best ...
    state = report(state, m, 1, 10, 1.0)  # ... and member 1, the child, copies it
    state = report(state, m, 4, 15, 1.0)  # the evaluator's next report: its child is gone
    s = state.mutator_state
    assert s.num_handovers == 0 and s.num_decisions == 3 and s.num_evaluations == 2
    assert (s.evaluations[4].member, s.evaluations[4].child) == (2, 0)


# -- finished and gone workers (ActiveWorker.status) ------------------------------------
def test_a_finished_member_is_never_copied_nor_chosen_as_the_child():
    m = make(perturbation_interval=10, quantile_fraction=0.5)
    state = population(m, 5)  # P1 = 0, 1; P2 = 2, 3; evaluator 4
    gens = [w.generation_id for w in state.workers]
    state = report(state, m, 0, 5, 3.0)  # P1's best ...
    state = report(state, m, 1, 5, 1.0)
    state, reply = apply(state, Finish(0), 1.0, m)  # ... is done
    assert reply.worker.status == "finished"
    state = report(state, m, 2, 5, 1.0)  # the evaluator takes member 2 ...
    task = state.mutator_state.evaluations[4]
    assert (task.member, task.child) == (2, 1)  # ... with the best *active* member of P1
    assert state.workers[4].meta_params == state.workers[1].meta_params
    state = report(state, m, 1, 15, 1.0)  # member 1 ready, the worst of P1 by score
    assert state.workers[1].generation_id == gens[1]  # alone in P1: copies nobody
    assert state.workers[0].status == "finished" and state.workers[0].generation_id == gens[0]
    assert state.mutator_state.num_exploits == 0


def test_a_finished_member_of_a_later_sub_population_is_not_copied():
    m, state, gens = _improvement_rate_run()
    state, _ = apply(state, Finish(3), 1.0, m)  # member 3, the fastest improver, is done
    assert 5 not in state.mutator_state.evaluations  # its evaluation ended at once
    state = report(state, m, 2, 15, 0.95)  # member 2 ready: alone in P2 now
    assert state.workers[2].generation_id == gens[2]
    assert state.mutator_state.num_exploits == 0
    assert state.workers[3].status == "finished" and state.workers[3].generation_id == gens[3]


def test_an_evaluation_ends_when_its_child_finishes_and_never_hands_over_to_it():
    m, state = _handover_run([0.10 + 0.1 * j for j in range(10)])  # 9 wins of 10: not yet
    child_gen = state.workers[1].generation_id
    state, _ = apply(state, Finish(1), 2.0, m)  # the child is done
    s = state.mutator_state
    assert s.num_decisions == 1 and s.num_handovers == 0  # stopped at once
    assert all(task.child != 1 for task in s.evaluations.values())
    state = report(state, m, 4, 115, 1.1)  # what would have won the hand-over
    assert state.workers[1].status == "finished" and state.workers[1].generation_id == child_gen
    assert state.mutator_state.num_handovers == 0


def test_finished_or_gone_workers_neither_evaluate_nor_are_evaluated():
    m = make(num_evaluators=2)  # P1 = 0, 1; P2 = 2, 3; evaluators 4, 5
    state = population(m, 6)
    gens = [w.generation_id for w in state.workers]
    state, _ = apply(state, Finish(5), 1.0, m)  # evaluator 5 is done before it starts
    for member in (1, 2, 3):
        state = report(state, m, member, 10, 1.0)
    s = state.mutator_state
    assert {e: t.member for e, t in s.evaluations.items()} == {4: 2}  # never evaluator 5
    assert state.workers[5].status == "finished" and state.workers[5].generation_id == gens[5]
    # member 2 stops reporting and is declared gone: its evaluation ends, 3 goes next
    for worker, step in ((0, 10), (1, 20), (3, 20), (4, 15)):
        state = report(state, m, worker, step, 1.0, now=100.0)
    state, changes = core.expire(state, 120.0, np.array([1, 2], np.uint32), after_s=50.0, mutator=m)
    assert [w.status for w in state.workers][2:] == ["gone", "active", "active", "finished"]
    assert changes is not None
    assert {e: t.member for e, t in state.mutator_state.evaluations.items()} == {4: 3}
    assert state.workers[2].generation_id == gens[2]


# -- arguments -----------------------------------------------------------------------------------
def test_hostile_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="perturbation_interval"):
        make(perturbation_interval=math.nan)
    with pytest.raises(TypeError, match="perturbation_interval"):
        make(perturbation_interval=True)
    with pytest.raises(ValueError, match="at least two sub-populations"):
        make(sub_population_sizes=(4,))
    with pytest.raises(ValueError, match=r"sub_population_sizes\[1\]"):
        make(sub_population_sizes=(4, 1))
    with pytest.raises(TypeError, match="sub_population_sizes"):
        make(sub_population_sizes=4)
    with pytest.raises(TypeError, match=r"sub_population_sizes\[0\]"):
        make(sub_population_sizes=(True, 2))
    with pytest.raises(ValueError, match="num_evaluators must be at most the 2"):
        make(num_evaluators=3)
    with pytest.raises(ValueError, match="num_evaluators"):
        make(num_evaluators=0)
    with pytest.raises(ValueError, match="max_eval_steps"):
        make(max_eval_steps=math.inf)
    with pytest.raises(ValueError, match="p_stat"):
        make(p_stat=math.nan)
    with pytest.raises(TypeError, match="p_stat"):
        make(p_stat=True)
    with pytest.raises(ValueError, match="no p-value is below 0"):
        make(p_stat=0.0)  # no evaluation could ever hand over
    make(p_stat=1.0)
    curve = Curve.of([(0, 1.0), (10, 2.0)])
    with pytest.raises(ValueError, match="max_eval_steps > 0"):
        evaluator_verdict(curve, curve, 10, max_eval_steps=0, p_stat=0.01)
    with pytest.raises(ValueError, match="p_stat in"):
        evaluator_verdict(curve, curve, 10, max_eval_steps=10, p_stat=math.nan)
    with pytest.raises(ValueError, match="at least one point"):
        improvement(Curve.of([]), curve)
    with pytest.raises(ValueError, match="quantile_fraction"):
        make(quantile_fraction=0.7)
    with pytest.raises(ValueError, match="mode"):
        make(mode="best")
    with pytest.raises(ValueError, match="a population of 5 workers"):
        PopulationController([{"lr": 0.1}] * 4, make())


# -- through PopulationController: journal, resume, replay, report -------------------------------
def simulated_workers(n: int) -> SimulatedWorkers:
    """Simulated workers in a greedy trap: a large learning rate gains fast early, a
    small one more later."""
    return SimulatedWorkers(n, lambda q, lr: lr * (1.0 - q) * (1.0 - 0.5 * q / lr**0.25))


def _fingerprint(pop):
    checkpoints = [
        (c.generation_id, c.step, c.value, c.parent, c.meta_params)
        for c in pop.history.checkpoints()
    ]
    return checkpoints, pop.state.mutator_state


def test_a_resumed_run_continues_exactly_like_an_uninterrupted_one(tmp_path):
    population_ = [{"lr": float(lr)} for lr in np.geomspace(0.01, 0.3, 10)]
    m = make(
        perturbation_interval=10,
        sub_population_sizes=(4, 4),
        num_evaluators=2,
        max_eval_steps=40,
        p_stat=0.1,
    )
    runs = {}
    for name, splits in (("whole", (40,)), ("resumed", (17, 23))):
        workers = simulated_workers(10)
        for rounds in splits:
            log_dir = str(tmp_path / name)
            with PopulationController(
                population_, m, log_dir=log_dir, clock=lambda: 0.0, seed=0
            ) as pop:
                workers.run(pop, rounds)
                runs[name] = _fingerprint(pop)
    assert runs["resumed"] == runs["whole"]
    state = runs["whole"][1]
    assert isinstance(state, FireState) and state.num_evaluations > 2
    assert state.num_exploits > 0 and state.num_decisions > state.num_exploits
    assert all(isinstance(t, Evaluation) for t in state.evaluations.values())
    # the journal holds the typed state; replay and report read the run
    stored = storage.read_state(str(tmp_path / "resumed"))
    assert stored.mutator_state == state
    assert encoding.decode(encoding.encode(state)) == state
    data = reports.load(str(tmp_path / "resumed"))
    assert len(data.members) == 10 and data.best is not None
    schedule = schedules.from_lineage(stored.history, data.best.generation_id)
    assert schedule(0) == data.best.lineage[0].meta_params


def _finished_or_expired(state, m, rng, t, w, kind):
    """The random scripts' rarest events: worker ``w`` finishes (``kind < 0.03``), or
    the workers silent past 4 or 15 s are declared gone."""
    if kind < 0.03:
        return apply(state, Finish(w), float(t), m)[0]
    after = rng.choice([4.0, 15.0])
    return core.expire(state, float(t), core.event_key(state), after_s=after, mutator=m)[0]


def _random_event(state, m, rng, t):
    """One random event of a hostile script, applied: mostly reports (some NaN, some
    again at a step already reported: a replaced checkpoint), and asks, reports for a
    generation the worker has left, finishes, missing checkpoints (branch-backs) and
    expiries."""
    w = rng.randrange(len(state.workers))
    worker = state.workers[w]
    kind = rng.random()
    if kind < 0.06:
        return _finished_or_expired(state, m, rng, t, w, kind)
    if kind < 0.09 and worker.params is not None:  # (None: nothing to load)
        event = Missing(w, worker.generation_id, worker.step)
        return apply(state, event, float(t), m)[0]
    if kind < 0.14:
        event = Ask(float(t), worker.meta_params, w, worker.generation_id, worker.step)
        return apply(state, event, float(t), m)[0]
    generation, step = worker.generation_id, worker.step + rng.choice([1, 1, 2])
    if kind < 0.2:  # the same step again
        step = worker.step
    elif kind < 0.25:  # a generation the worker has left (or its own)
        left = [g for g in state.history if g != generation]
        if left:
            generation = rng.choice(left)
            step = state.history.latest(generation).step + rng.choice([0, 1])
    value = math.nan if rng.random() < 0.03 else rng.random() + step * rng.random()
    return apply(state, Eval(float(t), w, generation, step, value), float(t), m)[0]


def _views_along_random_scripts(config: dict, mode: str, seeds: int = 16, n_events: int = 60):
    """``(seed, t, state, mutator, view)`` after every event of random scripts of
    :func:`_random_event`: the view the next update would start from (keep it again
    with ``views.keep``, as an update does)."""
    import random

    config = {**config, "max_eval_steps": 4, "mode": mode}
    n = sum(config["sub_population_sizes"]) + config["num_evaluators"]
    for seed in range(seeds):
        rng = random.Random(seed)
        m = FirePBT(hyperparam_space=SPACE, **config)
        views = m.update.keywords["views"]
        state = population(m, n)
        for t in range(n_events):
            state = _random_event(state, m, rng, t)
            yield seed, t, state, m, views.view(state.mutator_state, state.workers, state.history)


def _random_run(
    config: dict, seed: int, n_events: int = 60, *, shared: bool = False, repickle: int = 0
) -> list:
    """The states of a random script of :func:`_random_event`. ``shared``: the mutator
    serves another script at the same time, event by event; ``repickle``: every that many
    events the mutator is replaced by a pickled copy of itself (0: never)."""
    import pickle
    import random

    rng, other_rng = random.Random(seed), random.Random(seed + 1000)
    m = FirePBT(hyperparam_space=SPACE, **config)
    n = sum(config["sub_population_sizes"]) + config["num_evaluators"]
    state = other = population(m, n)
    states = []
    for t in range(n_events):
        if repickle and t % repickle == repickle - 1:
            m = pickle.loads(pickle.dumps(m))
        state = _random_event(state, m, rng, t)
        states.append(state)
        if shared:
            other = _random_event(other, m, other_rng, t)
    return states


@pytest.mark.parametrize("mode", ["min", "max"])
def test_p1s_best_from_the_kept_order_is_the_best_read_by_sorting(mode, monkeypatch):
    """P1's best member (the child of an evaluation) is found in the view's order of
    P1's keys; after every event of random hostile scripts (hand-overs make members
    whose curve runs over several generations) it is the member the sorting path picks
    from P1's keys and curves read afresh."""
    config = {"perturbation_interval": 1, "sub_population_sizes": (4, 3), "num_evaluators": 3}
    order_of = fire._order
    checked = several = 0
    for _, _, state, m, view in _views_along_random_scripts(config, mode, seeds=24):
        memo, cfg = m.update.keywords["memo"], m.update.keywords["config"]
        fire._Scored.bring_up_to_date(view, cfg.num_members)
        p1 = cfg.sub_populations[0]
        step = fire._Step(state.mutator_state, state.workers, state.history, 0.0, None, memo, view)
        ranked = fire._best(step, cfg, p1)
        with monkeypatch.context() as patch:
            patch.setattr(fire, "_order", lambda step, members: None)
            fresh = fire._Step(
                state.mutator_state, state.workers, state.history, 0.0, None, memo, view
            )
            assert fire._best(fresh, cfg, p1) == ranked
        assert order_of(step, p1) is not None
        checked += ranked is not None
        several += any(view["curve"][p1.start : p1.stop] == -1)
        m.update.keywords["views"].keep(view)
    assert checked > 100 and several > 10


def test_the_evaluators_lazy_queue_lists_what_a_full_reading_lists(monkeypatch):
    """The evaluators' queue is ordered first and reads each member's checkpoint only
    when reached; after every event of random hostile scripts, all of it equals the
    queue read in full: the active members of P2 .. Pn not being evaluated that have a
    checkpoint that may be copied (``copy_source``), never evaluated first, then by their
    latest evaluation's start, then by id; and taking its first member reads only the
    checkpoints of the active members ordered before it, and its own, that the view
    does not say have no evaluation."""
    config = {"perturbation_interval": 1, "sub_population_sizes": (3, 4, 3), "num_evaluators": 3}
    reads = []
    read = History.latest_loadable
    monkeypatch.setattr(History, "latest_loadable", lambda h, g: reads.append(g) or read(h, g))
    checked = skipped = 0
    for _, _, state, m, view in _views_along_random_scripts(config, "min"):
        memo, cfg = m.update.keywords["memo"], m.update.keywords["config"]
        fire._Scored.bring_up_to_date(view, cfg.num_members)
        fs, workers = state.mutator_state, state.workers
        step = fire._Step(fs, workers, state.history, 0.0, None, memo, view)
        busy = {task.member for task in fs.evaluations.values()}
        last, sequence = fs.last_evaluation, fs.evaluation_order
        assert set(sequence) == set(last)  # (a run of this version: each one is listed)
        ordered = sorted(
            (j for j in range(cfg.sizes[0], cfg.num_members) if j not in busy),
            key=lambda j: (j in last, sequence.get(j, 0), j),
        )
        sources = {j: copy_source(state.history, workers[j].generation_id) for j in ordered}
        expected = [
            (j, sources[j]) for j in ordered if workers[j].is_active and sources[j] is not None
        ]
        assert list(fire._queue(step, cfg)) == expected
        reads.clear()
        first = next(iter(fire._queue(step, cfg)), None)
        assert first == (expected[0] if expected else None)
        if expected:
            before = ordered[: ordered.index(first[0]) + 1]
            # (a member the view says has no evaluation is not read: nothing to load)
            possible = [j for j in before if workers[j].is_active and view["curve"][j] != 0]
            assert reads == [workers[j].generation_id for j in possible]
            checked += 1
            skipped += len(possible) < len([j for j in before if workers[j].is_active])
        m.update.keywords["views"].keep(view)
    assert checked > 100 and skipped > 10


@pytest.mark.parametrize(
    "config",
    [
        {"perturbation_interval": 2, "sub_population_sizes": (3, 3), "num_evaluators": 2},
        {"perturbation_interval": 1, "sub_population_sizes": (4, 3, 3), "num_evaluators": 3},
    ],
)
def test_the_evaluation_curves_kept_with_the_view_are_those_read_afresh(config):
    """Each member's evaluation curve (what its fitness is computed from) is kept with
    the view and read again only where something changed; after every event of random
    hostile scripts, the kept curves of every later sub-population, as the next update
    would read them, equal the curves read from the state afresh."""
    checked = 0
    for seed, t, state, m, view in _views_along_random_scripts(config, "max"):
        views, memo, cfg = (m.update.keywords[k] for k in ("views", "memo", "config"))
        fresh_view = views.build(state.mutator_state, state.workers, state.history)
        for name, column in fresh_view.columns.items():  # the kept columns, too
            np.testing.assert_array_equal(view[name], column, err_msg=f"{name} {seed} {t}")
        fire._Scored.bring_up_to_date(view, cfg.num_members)
        step = fire._Step(state.mutator_state, state.workers, state.history, 0.0, None, memo, view)
        for start in fire._starts(cfg)[1:]:
            members = cfg.sub_population(start)
            curves, digests = step.scored.curves(step, cfg, members)
            for member, curve, digest in zip(members, curves, digests, strict=True):
                evaluated = state.mutator_state.evaluated.get(member)
                worker = state.workers[member]
                if (
                    evaluated is None
                    or not worker.is_active
                    or (evaluated[0] != worker.generation_id)
                ):
                    assert curve is None and digest is None, (seed, t, member)
                    continue
                fresh = fire._curve(state.history, (evaluated[1],), cfg.mode)
                assert curve is not None, (seed, t, member)
                assert curve.steps.tolist() == fresh.steps.tolist(), (seed, t, member)
                np.testing.assert_array_equal(curve.values, fresh.values, (seed, t, member))
                assert digest == fire._digest(fresh), (seed, t, member)
                checked += 1
        views.keep(view)
    assert checked > 100


@pytest.mark.parametrize("mode", ["min", "max"])
def test_the_judged_curves_kept_with_the_view_are_those_read_afresh(mode, monkeypatch):
    """The curves an evaluator's report compares (its evaluation's, the child's, over
    several generations after a hand-over) are kept with the view and grow by the points
    reported since; after every event of random hostile scripts (NaN values, reports
    again at a step, reports for a generation left, branch-backs), each one as the next
    update would read it equals the curve read from the history afresh, and most were
    brought up to date by appending (helper-196: each report rebuilt both curves, O(their
    length))."""
    config = {"perturbation_interval": 1, "sub_population_sizes": (3, 3), "num_evaluators": 2}
    appended, read = [], []
    append, curve_of = fire._Growing.append, fire._curve
    monkeypatch.setattr(
        fire._Growing, "append", lambda self, *a: appended.append(1) or append(self, *a)
    )
    monkeypatch.setattr(fire, "_curve", lambda *a: read.append(1) or curve_of(*a))
    checked = 0
    for seed, t, state, m, view in _views_along_random_scripts(config, mode, n_events=120):
        views, memo, cfg = (m.update.keywords[k] for k in ("views", "memo", "config"))
        fire._Scored.bring_up_to_date(view, cfg.num_members)
        fire._Curves.bring_up_to_date(view, cfg.mode)
        step = fire._Step(state.mutator_state, state.workers, state.history, 0.0, None, memo, view)
        for task in state.mutator_state.evaluations.values():
            for generations in ((task.generation,), fire._curve_generations(step, task.child)):
                kept = fire._Curves.curve(step, generations, cfg.mode)
                fresh = curve_of(state.history, generations, cfg.mode)
                assert kept.steps.tolist() == fresh.steps.tolist(), (seed, t, generations)
                np.testing.assert_array_equal(kept.values, fresh.values, (seed, t))
                assert not kept.values.flags.writeable
                checked += 1
        views.keep(view)
    assert checked > 300 and len(appended) > 100 and len(read) < checked


@pytest.mark.parametrize(
    "config",
    [
        {"perturbation_interval": 2, "sub_population_sizes": (3, 3), "num_evaluators": 2},
        {"perturbation_interval": 1, "sub_population_sizes": (4, 3, 3), "num_evaluators": 3},
    ],
)
def test_decisions_from_kept_readiness_and_remembered_fitness_equal_fresh_ones(config, monkeypatch):
    """FirePBT asks only the members its kept view says are ready, reads P1's scores and
    which members have a curve of their own from it, judges only the evaluations whose
    workers it read again, and remembers curves, fitness and its ranking by the curves'
    contents; on
    random hostile scripts (:func:`_random_event`; the mutator shared with another
    script, or pickled now and then) every state equals that of a mutator that asks every
    member, judges every evaluation and computes every score, curve and fitness anew."""
    config = {**config, "max_eval_steps": 4, "mode": "max"}
    to_judge = fire._to_judge

    def judge_all(config, state, touched, size):  # every evaluator at work
        return to_judge(config, state, None, size)

    for seed in range(12):
        # some runs share their mutator with another script, some pickle it now and then
        kept = _random_run(config, seed, shared=seed % 2 == 1, repickle=7 * (seed % 3 == 0))
        with monkeypatch.context() as patch:
            # every member is asked whether it decides and has a curve (-1), every score and
            # fitness computed anew
            patch.setattr(
                fire,
                "_entry",
                lambda config, s, h, i, w: (
                    i < config.num_members,
                    0.0,
                    -1,
                    w.is_active,
                    math.nan,
                    h.saves(w.generation_id),
                ),
            )
            patch.setattr(fire, "_order", lambda step, members: None)  # P1's keys afresh

            def keys_afresh(values, mode):  # sort keys: lower is better, NaN for no score
                keys = []
                for v in values:
                    if v is None:
                        keys.append(math.nan)
                    else:
                        keys.append((-v if mode == "max" else v) if math.isfinite(v) else math.inf)
                return np.array(keys)

            def member_keys(step, config, members):
                return keys_afresh(
                    [
                        _subpopulations.member_score(step.history, step.workers[m].generation_id)
                        if step.workers[m].is_active
                        else None
                        for m in members
                    ],
                    config.mode,
                )

            def evaluation_curves(self, step, config, members):
                entries = [fire._evaluation_entry(step, config, m) for m in members]
                return [None if e is None else e[1] for e in entries], (None,) * len(members)

            patch.setattr(fire, "_member_keys", member_keys)
            patch.setattr(fire._Scored, "curves", evaluation_curves)
            patch.setattr(
                fire._Memo,
                "sort_keys",
                lambda self, curves, keys, slot: keys_afresh(fire_fitness(curves), "max"),
            )

            def curve_afresh(step, generation, mode):
                return fire._curve(step.history, (generation,), mode), None

            patch.setattr(fire, "_evaluation_curve", curve_afresh)
            judged_afresh = staticmethod(
                lambda step, gens, mode: fire._curve(step.history, gens, mode)
            )
            patch.setattr(fire._Curves, "curve", judged_afresh)  # (the judged curves afresh)
            patch.setattr(fire, "_to_judge", judge_all)
            # rankings of the fitness read afresh
            patch.setattr(fire._Memo, "ranking", lambda self, keys: fire._ranking(keys))
            fresh = _random_run(config, seed)
        for t, (a, b) in enumerate(zip(kept, fresh, strict=True)):
            assert (a.workers, a.mutator_state) == (b.workers, b.mutator_state), (seed, t)
            assert a.history == b.history, (seed, t)
    assert kept[-1].mutator_state.num_evaluations > 0


@pytest.mark.parametrize(
    "config",
    [
        {"perturbation_interval": 2, "sub_population_sizes": (5, 3), "num_evaluators": 2},
        {"perturbation_interval": 1, "sub_population_sizes": (4, 3, 3), "num_evaluators": 3},
    ],
)
def test_p1_truncation_from_the_kept_order_equals_truncation_over_keys_read_afresh(config):
    """A P1 decision ranks its member by bisection in the view's kept order of P1's keys;
    after every event of random hostile scripts, for every P1 member and several
    fractions, what it may copy from the kept order equals what truncation over the
    members' scores read afresh gives."""
    checked = copies = 0
    for seed, t, state, m, view in _views_along_random_scripts(config, "min"):
        views, memo, cfg = (m.update.keywords[k] for k in ("views", "memo", "config"))
        fire._Scored.bring_up_to_date(view, cfg.num_members)
        step = fire._Step(state.mutator_state, state.workers, state.history, 0.0, None, memo, view)
        p1 = cfg.sub_populations[0]
        order = fire._order(step, p1)
        assert order is not None
        keys = np.array(
            [
                _score_key_afresh(state, cfg, member)
                if state.workers[member].is_active
                else math.nan
                for member in p1
            ]
        )
        for member in p1:
            entry = view.place(member)
            assert (entry[0] == fire._NO_SCORE[0]) == math.isnan(keys[member]), (seed, t)
            if math.isnan(keys[member]):
                continue
            for fraction in (0.25, 0.5):
                kept = fire._ranked_candidates(order, entry, fraction)
                fresh = _candidates_by_rule(keys, member, fraction)
                assert kept == fresh, (seed, t, member, fraction)
                checked += 1
                copies += kept is not None
        # a P1 member that started a generation in the update has a key the order
        # does not hold yet: P1's decisions then read the keys
        source = state.history.first(state.workers[0].generation_id)
        step.key = np.array([seed, t], np.uint32)
        step.start(0, 0, source, source.meta_params)
        assert fire._order(step, p1) is None
        views.keep(view)
    assert checked > 500 and copies > 50


def _candidates_by_rule(keys, me, fraction):
    """Truncation's rule stated plainly: among the members with a key (NaN: none),
    ordered by key then id, one of the last ``k`` may copy those of the first ``k``
    strictly better than it (``None``: none, or not in the last ``k``)."""
    from jaxpop.mutators import selection

    ranked = sorted((k, i) for i, k in enumerate(keys.tolist()) if k == k)
    size = selection.quantile_size(len(ranked), fraction)
    place = ranked.index((keys[me], me))
    better = [i for k, i in ranked[:size] if k < keys[me]]
    return better if size and place >= len(ranked) - size and better else None


def _score_key_afresh(state, config, member) -> float:
    score = _subpopulations.member_score(state.history, state.workers[member].generation_id)
    return fire.selection_lib.sort_key(score, config.mode)


def test_rows_asked_together_are_compared_a_few_at_a_time(monkeypatch):
    """The memo's rows are compared in batches of at most ``_BLOCK_ELEMENTS`` padded
    elements (rows x columns x points: the arrays of one block), whatever the curves'
    length, and each row is still ``improvement()`` one by one."""
    rng = np.random.default_rng(3)
    curves = [
        Curve(np.arange(n, dtype=np.int64) * 7, np.cumsum(rng.normal(size=n)))
        for n in rng.integers(2, 60, size=30)
    ]
    asked = [(i, [j for j in range(30) if j > i]) for i in range(29)]
    shapes = []
    block = fire._improvement_block

    def recorded(rows, others):
        shapes.append((len(rows), len(others), max(len(c) for c in (*rows, *others))))
        return block(rows, others)

    monkeypatch.setattr(fire, "_BLOCK_ELEMENTS", 2000)
    monkeypatch.setattr(fire, "_improvement_block", recorded)
    got = fire._improvement_rows(curves, asked)
    assert len(shapes) > 3 and all(r * c * p <= 2000 or r == 1 for r, c, p in shapes)
    for (i, others), row in zip(asked, got, strict=True):
        want = [improvement(curves[i], curves[j]) for j in others]
        assert np.asarray(row).tobytes() == np.asarray(want, np.float64).tobytes()


def test_improvements_at_once_are_the_improvements_one_by_one():
    """A fitness row (:func:`improvements`), or several (``_improvement_block``), is
    computed at once over padded curves; on random curves (ties, plateaus, signed zeros,
    curves that never meet, one point or many, a curve far longer than the others, steps
    near 2**63, values near the float range whose differences overflow) every number is
    ``improvement(a, b)`` to the bit, and ``improvement(b, a)`` is ``0.0 -
    improvement(a, b)`` to the bit."""
    rng = np.random.default_rng(5)
    pool = [0.0, -0.0, 1.0, -1.0, 2.5, 1e308, -1e308, 1.7e308, -1.7e308, 3.0]

    def random_curve():
        n = int(rng.choice([1, 2, 3, 5, 8, 200])) if rng.random() < 0.1 else int(rng.integers(1, 7))
        steps = np.sort(rng.choice(10**6, size=n, replace=False)).astype(np.int64)
        if rng.random() < 0.2:  # steps near the largest a step may be
            steps = steps + (2**63 - 1 - 10**6)
        if rng.random() < 0.5:
            values = rng.choice(pool, size=n)
        else:
            values = np.round(rng.normal(size=n), int(rng.integers(0, 3)))
        return Curve(steps, values.astype(np.float64))

    def bits(x):
        return np.asarray(x, np.float64).tobytes()

    checked = 0
    for _ in range(400):
        a = random_curve()
        others = [random_curve() for _ in range(int(rng.integers(1, 9)))]
        got = fire.improvements(a, others)
        assert bits(got) == bits([improvement(a, b) for b in others])
        for b, value in zip(others, got, strict=True):
            assert bits(improvement(b, a)) == bits(0.0 - value)
        checked += len(others)
    assert checked > 1000
    for _ in range(200):  # several rows at once, as the memo asks them
        rows = [random_curve() for _ in range(int(rng.integers(1, 6)))]
        others = [random_curve() for _ in range(int(rng.integers(1, 9)))]
        got = fire._improvement_block(rows, others)
        assert bits(got) == bits([[improvement(a, b) for b in others] for a in rows])
    assert fire._improvement_block([], [random_curve()]).shape == (0, 1)
    assert fire.improvements(random_curve(), []).shape == (0,)
    with pytest.raises(ValueError, match="at least one point"):
        fire.improvements(random_curve(), [Curve(np.zeros(0, np.int64), np.zeros(0))])


def test_a_fitness_past_a_float_ranks_first_and_a_long_curves_p_value_is_quick():
    # _row_sum gives inf for a sum of improvements past a float: its sort key was inf,
    # "non-finite: last", and the best member copied a diverging one (helper-248)
    assert fire._fitness_key(math.inf) < fire._fitness_key(1e308) < fire._fitness_key(0.0)
    assert fire._fitness_key(-math.inf) > fire._fitness_key(-1e308)
    assert fire._fitness_key(-math.inf) < fire._fitness_key(math.nan)
    assert math.isnan(fire._fitness_key(None))  # (no fitness: last, after NaN's inf)
    # the exact binomial tail took seconds past a few thousand aligned points (52 s at
    # 20,000); past _EXACT_TRIALS it is scipy's, the same to float64's precision
    rng = np.random.default_rng(0)
    for n in (fire._EXACT_TRIALS, fire._EXACT_TRIALS + 1, 20_000):
        steps = np.arange(n) * 10
        a = Curve(steps, np.cumsum(rng.normal(size=n)))
        b = Curve(steps, np.cumsum(rng.normal(size=n)))
        shared = fire.overlap(a, b)
        in_a = fire._window(a, shared.a_start, shared.length)
        at = np.searchsorted(b.steps, shared.b_start + a.steps[in_a] - shared.a_start, "right") - 1
        wins, trials = int(np.sum(a.values[in_a] > b.values[at])), int(in_a.sum())
        exact = sum(math.comb(trials, j) for j in range(wins, trials + 1)) / 2**trials
        assert fire.binomial_p_value(a, b) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def _copy_chain_event(state, m, rng, t, nosave):
    """A random event of a run whose workers save now and then (or never: ``nosave``),
    report missing params, finish, go silent: copies of copies' unevaluated starts form."""
    w = rng.randrange(len(state.workers))
    worker = state.workers[w]
    kind = rng.random()
    if kind < 0.06:
        return _finished_or_expired(state, m, rng, t, w, kind)
    if kind < 0.15 and worker.params is not None:
        return apply(state, Missing(w, worker.generation_id, worker.step), float(t), m)[0]
    if kind < 0.2:
        ask = Ask(float(t), worker.meta_params, w, worker.generation_id, worker.step)
        return apply(state, ask, float(t), m)[0]
    step = worker.step + rng.choice([1, 1, 2])
    if kind < 0.25:
        step = worker.step  # (a step reported again: its checkpoint replaced)
    params = None if (w in nosave or rng.random() < 0.5) else f"p{w}@{t}"
    value = rng.random() + step * rng.random()
    return apply(state, Eval(params, w, worker.generation_id, step, value), float(t), m)[0]


@pytest.mark.parametrize(
    "config, seed, events",
    [  # (seeds whose scripts replace a checkpoint a copy of a copy ranks by)
        ({"perturbation_interval": 2, "sub_population_sizes": (3, 3), "num_evaluators": 2}, 28, 40),
        (
            {"perturbation_interval": 1, "sub_population_sizes": (4, 3, 3), "num_evaluators": 3},
            33,
            45,
        ),
    ],
)
def test_the_kept_view_rereads_a_copy_of_a_copy_whose_source_was_replaced(config, seed, events):
    """A copy of a copy ranks by the value of its source's source (the middle copy's start
    has none); when that checkpoint was replaced (a step reported again), the kept view
    re-read only the copies started right from it: P1 ranked a member by the old value
    until it reported again, and a resumed run (a view built afresh) decided otherwise
    (helper-292). Each state's kept view equals one built afresh."""
    rng = random.Random(seed)
    nosave = set(rng.sample(range(6), rng.choice([0, 2, 6])))
    m = FirePBT(hyperparam_space=SPACE, max_eval_steps=4, mode="max", **config)
    views = m.update.keywords["views"]
    state = population(m, sum(config["sub_population_sizes"]) + config["num_evaluators"])
    for t in range(events):
        try:
            state = _copy_chain_event(state, m, rng, t, nosave)
        except ValueError:  # (a refused event: the script goes on)
            continue
        view = views.view(state.mutator_state, state.workers, state.history)
        fresh = views.build(state.mutator_state, state.workers, state.history)
        for name, column in fresh.columns.items():
            assert np.array_equal(view[name], column, equal_nan=True), (name, t)
        views.keep(view)
