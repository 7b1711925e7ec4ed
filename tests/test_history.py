import math
import random

import pytest

from jaxpop import Checkpoint, History


def ck(gen, step, value=None, parent=None, meta=None, time=0.0, params=None):
    return Checkpoint(params, meta or {"h": 1.0}, gen, value, parent, step, time)


def test_add_is_persistent_and_shares_structure():
    h0 = History()
    h1 = h0.add(ck("a", 0))
    h2 = h1.add(ck("a", 10, 1.0, ("a", 0)))
    assert len(h0) == 0 and h0.num_checkpoints == 0
    assert list(h1["a"]) == [0] and h1.num_checkpoints == 1
    assert list(h2["a"]) == [0, 10] and h2.num_checkpoints == 2
    assert h2["a"][10].value == 1.0
    # replacing a step keeps the count and leaves the older history alone
    h3 = h2.add(ck("a", 10, 5.0, ("a", 0)))
    assert h3.num_checkpoints == 2 and h3["a"][10].value == 5.0 and h2["a"][10].value == 1.0


def test_steps_iterate_in_order_even_when_added_out_of_order():
    h = History().add_all(ck("a", s) for s in [5, 1, 9, 3, 7, 0])
    assert list(h["a"]) == [0, 1, 3, 5, 7, 9]
    assert h.latest("a").step == 9 and h.first("a").step == 0
    assert h.previous("a", 5).step == 3 and h.previous("a", 0) is None
    assert h.previous("a", 100).step == 9


def test_generations_iterate_in_creation_order():
    h = History().add_all([ck("z", 0), ck("b", 0), ck("m", 0), ck("b", 5)])
    assert list(h) == ["z", "b", "m"]
    assert "b" in h and "q" not in h
    with pytest.raises(KeyError):
        h["q"]
    assert [c.ref for c in h.checkpoints()] == [("z", 0), ("b", 0), ("b", 5), ("m", 0)]


def test_evaluated_queries_filter_by_step_and_time():
    h = History().add(ck("a", 0))
    for s in range(1, 6):
        h = h.add(ck("a", s * 10, float(s), ("a", (s - 1) * 10), time=100.0 + s))
    assert [c.step for c in h.evaluated("a")] == [10, 20, 30, 40, 50]
    assert [c.step for c in h.evaluated("a", min_step=30)] == [30, 40, 50]
    assert [c.step for c in h.evaluated("a", min_time=104.0)] == [40, 50]
    assert h.latest_evaluated("a").step == 50
    assert h.evaluated("missing") == [] and h.latest_evaluated("missing") is None
    h2 = h.add(ck("a", 60))  # unevaluated newest checkpoint
    assert h2.latest_evaluated("a").step == 50 and h2.latest("a").step == 60


def test_ancestry_and_lineage_follow_parents_to_the_root():
    h = History().add_all(
        [
            ck("root", 0),
            ck("root", 10, 1.0, ("root", 0)),
            ck("child", 10, None, ("root", 10), meta={"h": 2.0}),
            ck("child", 20, 0.5, ("child", 10), meta={"h": 2.0}),
            ck("grand", 20, None, ("child", 20), meta={"h": 3.0}),
            ck("grand", 30, 0.1, ("grand", 20), meta={"h": 3.0}),
        ]
    )
    assert h.ancestry("grand") == ["root", "child", "grand"]
    assert h.ancestry("root") == ["root"]
    assert h.branch_point("grand") == ("child", 20)
    assert [c.ref for c in h.lineage("grand")] == [
        ("root", 0),
        ("root", 10),
        ("child", 10),
        ("child", 20),
        ("grand", 20),
        ("grand", 30),
    ]
    assert [c.ref for c in h.lineage("child", 10)] == [("root", 0), ("root", 10), ("child", 10)]
    assert h.meta_params("grand") == {"h": 3.0}


def test_continuation_links_to_previous_checkpoint_or_branch_point():
    h = History().add_all([ck("a", 0), ck("b", 5, None, ("a", 0), meta={"h": 9.0})])
    c = h.continuation("b", 15, "params", 0.3, 7.0)
    assert c.parent == ("b", 5) and c.meta_params == {"h": 9.0} and c.value == 0.3
    assert h.continuation("b", 2, None, None, 0.0).parent == ("a", 0)


def test_add_rejects_non_checkpoints():
    with pytest.raises(TypeError, match="Checkpoint"):
        History().add(("a", 0))


# -- a pytree -----------------------------------------------------------------------------
def test_tree_map_over_a_state_reaches_every_checkpoints_params_and_keeps_the_layout():
    import jax
    import numpy as np

    from jaxpop import core
    from jaxpop.events import Eval
    from jaxpop.keys import root_key
    from jaxpop.mutators import explore
    from jaxpop.mutators.pbt import PopulationBasedTraining

    m = PopulationBasedTraining(
        perturbation_interval=1, hyperparam_space={"lr": explore.uniform(0.0, 1.0)}
    )
    state = core.init([{"lr": 0.1}, {"lr": 0.2}], m, key=root_key(0), now=0.0)
    for step in (1, 2):
        for w in (0, 1):
            gen = state.workers[w].generation_id
            params = {"w": np.full(3, 10.0 * w + step)}
            event = Eval(params, w, gen, step, float(w))
            state, _ = core.transition(state, event, 0.0, core.event_key(state), mutator=m)
    assert len(state.history) > 2  # worker 1 copied worker 0: a branch in the lineage

    doubled = jax.tree.map(lambda x: 2 * x if isinstance(x, np.ndarray) else x, state)
    for checkpoint, twice in zip(
        state.history.checkpoints(), doubled.history.checkpoints(), strict=True
    ):
        assert (twice.generation_id, twice.step, twice.value, twice.parent, twice.time) == (
            checkpoint.generation_id,
            checkpoint.step,
            checkpoint.value,
            checkpoint.parent,
            checkpoint.time,
        )
        if checkpoint.params is None:
            assert twice.params is None
        else:
            np.testing.assert_array_equal(twice.params["w"], 2 * checkpoint.params["w"])
    assert list(doubled.history) == list(state.history)  # creation order kept
    for gen in state.history:  # the queries read the rebuilt layout
        assert doubled.history.latest(gen).step == state.history.latest(gen).step
        assert doubled.history.first(gen).step == state.history.first(gen).step
        assert doubled.history.branch_point(gen) == state.history.branch_point(gen)
    assert doubled.history.num_checkpoints == state.history.num_checkpoints
    assert jax.tree.structure(doubled) == jax.tree.structure(state)
    arrays = [x for x in jax.tree.leaves(state.history) if isinstance(x, np.ndarray)]
    assert len(arrays) == sum(c.params is not None for c in state.history.checkpoints())


def test_history_key_paths_name_the_checkpoint_and_an_empty_history_round_trips():
    import jax

    h = History(mode="max").add(Checkpoint({"a": 1.0}, {"lr": 0.5}, "g", 0.5, None, 3, 0.0))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(h)[0]]
    assert paths == ["[('g', 3)].params['a']", "[('g', 3)].meta_params['lr']"]
    leaves, treedef = jax.tree.flatten(History(mode="max"))
    assert leaves == [] and jax.tree.unflatten(treedef, []) == History(mode="max")
    assert jax.tree.map(lambda x: x, h) == h and jax.tree.map(lambda x: x, h).mode == "max"


def _chain(history, checkpoints):
    for checkpoint in checkpoints:
        history = history.add(checkpoint)
    return history


def _layout(history):
    return [
        (gen, history[gen].steps_descending(), history.first(gen).step, history[gen].values())
        for gen in history
    ]


def test_add_all_of_steps_in_any_order_makes_what_a_chain_of_adds_makes():
    """(add_all inserted each step below a generation's newest by a walk over the steps
    above it: 5,000 checkpoints in decreasing order took 6.9 s, 20,000 took 393 s;
    hostile review, helper-178. Now sorted per generation first: 6 ms for 4,000.)"""
    steps = [5, 3, 9, 3, 0, 7, 1, 9, 2]  # (twice at 3 and at 9: the later one replaces)
    added = [ck("a" if i % 3 else "b", s, float(i), None) for i, s in enumerate(steps)]
    added += [ck("a", s, None, None) for s in range(400, 0, -1)]
    batched, chained = History().add_all(added), _chain(History(), added)
    assert batched == chained and _layout(batched) == _layout(chained)
    assert list(batched) == ["b", "a"] == list(chained)  # (created in that order)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 12])
def test_add_all_makes_the_history_a_chain_of_adds_makes(count):
    base = History(mode="max").add_all([ck("a", 0), ck("a", 4, 1.0, ("a", 0)), ck("b", 2)])
    pool = [  # new generations, steps out of order, replacements, a step below the first
        ck("c", 7, 0.5, ("a", 4)),
        ck("a", 9, 2.0, ("a", 4)),
        ck("a", 4, 3.0, ("a", 0)),
        ck("c", 3, None, ("a", 4)),
        ck("d", 0),
        ck("b", 2, 4.0),
        ck("c", 11, 0.1, ("c", 7)),
        ck("a", 1, 0.2, ("a", 0)),
        ck("e", 5, None, ("d", 0)),
        ck("d", 0, 9.0),
        ck("a", 20, 0.3, ("a", 9)),
        ck("b", 1, 0.4),
    ]
    added = pool[:count]
    batched, chained = base.add_all(iter(added)), _chain(base, added)
    assert batched == chained and batched.mode == "max"
    assert batched.num_checkpoints == chained.num_checkpoints
    assert _layout(batched) == _layout(chained)
    assert list(batched.checkpoints()) == list(chained.checkpoints())
    # what an incremental reader gets from it, as after a chain of adds
    assert batched.added_since(base) == chained.added_since(base)
    assert batched.added_since(batched) == []
    assert base.add_all(added[:1]).added_since(base) == added[:1]


def test_add_all_refuses_what_is_not_a_checkpoint_as_add_does():
    with pytest.raises(TypeError, match=r"History\.add takes a Checkpoint, got dict"):
        History().add_all([ck("a", 0), ck("a", 1), {"step": 2}, ck("a", 3)])


def test_saves_says_whether_a_generations_worker_sends_params():
    h = History().add(ck("a", 0)).add(ck("a", 10, value=1.0, parent=("a", 0)))
    assert not h.saves("a")  # params=None throughout
    assert h.add(ck("a", 15, value=0.5, parent=("a", 10), params="p15")).saves("a")
    # a copy's start holds its source's params
    h = h.add(ck("b", 10, parent=("a", 10), params="p10"))
    assert h.saves("b")
    assert h.add(ck("a", 12, parent=("a", 10), params="p12")).saves("a")
    # counted as checkpoints are replaced: params marked gone, the generation saves no more
    h = h.add(ck("c", 0, params="p0")).add(ck("c", 0))
    assert not h.saves("c")
    # and the same after a pytree round trip (a restore)
    import jax

    assert not jax.tree.map(lambda c: c, h).saves("c") and jax.tree.map(lambda c: c, h).saves("b")


def test_latest_loadable_of_a_copy_evaluated_without_params_is_its_start():
    """A copy evaluated at 15 and 20 without params (it saves less often): copying it
    gave the evaluation at 20 (``params=None``, "initialise fresh") deep in training;
    the newest checkpoint that holds params is the copy's start (FIRE tester)."""
    h = History().add(ck("a", 10, value=1.0, params="a10"))
    h = h.add(ck("b", 10, parent=("a", 10), params="a10"))
    assert h.latest_loadable("b") is None  # no evaluation yet: as before
    for step in (15, 20):
        h = h.add(ck("b", step, value=0.5, parent=("b", step - 5)))
    assert h.latest_loadable("b") == h["b"][10]
    # an evaluation with params wins, and the newest evaluation is taken where no
    # checkpoint holds params (a worker that never sends them)
    assert h.add(ck("b", 25, value=0.4, params="b25")).latest_loadable("b").step == 25
    h = History().add(ck("c", 0)).add(ck("c", 10, value=1.0)).add(ck("c", 20, value=0.5))
    assert h.latest_loadable("c").step == 20


def test_a_generation_of_thousands_of_checkpoints_pickles():
    """Its steps are a linked list, one level per step: pickle (and so a Ray client's
    ``history`` or ``state``) raised RecursionError past about 990 checkpoints."""
    import copy
    import pickle

    history = History()
    for step in range(5000):
        parent = None if step == 0 else ("g", step - 1)
        history = history.add(Checkpoint(None, {"lr": 0.1}, "g", float(step), parent, step, 0.0))
    for copied in (pickle.loads(pickle.dumps(history)), copy.deepcopy(history)):
        assert copied == history and copied.latest("g").step == 4999
        assert copied.previous("g", 100).step == 99 and len(copied.lineage("g")) == 5000
        grown = copied.add(Checkpoint(None, {"lr": 0.1}, "g", 1.0, ("g", 4999), 5000, 0.0))
        assert grown.latest("g").step == 5000 and len(grown["g"]) == 5001


def test_a_lineage_that_loops_raises_and_a_mutator_cannot_make_one():
    """A mutator's new checkpoint could name itself as parent (the core only asked for
    the parent to exist, "added with it" included): lineage then listed the checkpoint
    several times, silently."""
    from jaxpop import ActiveWorker, PopulationController
    from jaxpop.mutators.base import Mutator
    from jaxpop.records import with_replaced

    looped = History().add(Checkpoint(None, {}, "g", 1.0, ("g", 7), 7, 0.0))
    with pytest.raises(ValueError, match="cycle"):
        looped.lineage("g")

    def update(state, workers, history, now, key):
        first = Checkpoint(None, {"lr": 0.2}, "selfloop", None, ("selfloop", 7), 7, now)
        return state, workers, (first,)

    pop = PopulationController([{"lr": 0.1}], Mutator(init=lambda: (), update=update))
    gen = pop.active_workers[0].generation_id
    with pytest.raises(ValueError, match="descends from itself"):
        pop.set_eval(0, gen, 1, None, 0.5)

    def ring(state, workers, history, now, key):
        a = Checkpoint(None, {"lr": 0.2}, "a", None, ("b", 0), 0, now)
        return state, workers, (a, Checkpoint(None, {"lr": 0.3}, "b", None, ("a", 0), 0, now))

    pop = PopulationController([{"lr": 0.1}], Mutator(init=lambda: (), update=ring))
    with pytest.raises(ValueError, match="descends from itself"):
        pop.set_eval(0, pop.active_workers[0].generation_id, 1, None, 0.5)
    # a mutator sends the worker to (g, 5), copied from its own (g, 10); the worker then
    # reports step 10 again: (g, 10) was re-parented to (g, 5), closing a loop
    done = []

    def back(state, workers, history, now, key):
        w = workers[0]
        if done or w.step != 10:
            return state, workers, ()
        done.append(1)
        start = Checkpoint(
            "p5", w.meta_params, w.generation_id, None, (w.generation_id, 10), 5, now
        )
        moved = ActiveWorker("p5", w.meta_params, w.generation_id, 5)
        return state, with_replaced(workers, [(0, moved)]), (start,)

    pop = PopulationController([{"lr": 0.1}], Mutator(init=lambda: (), update=back))
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 10, "p10", 0.5)
    pop.set_eval(0, gen, 10, "p10b", 0.4)
    assert [c.step for c in pop.history.lineage(gen, 5)] == [0, 10, 5]
    assert [c.step for c in pop.history.lineage(gen, 10)] == [0, 10]
    with pytest.raises(TypeError, match="by keyword"):
        History("max")
    assert History(mode="max").mode == "max"


def test_histories_are_equal_by_contents_arrays_and_nan_values_included():
    # == raised on array params ("truth value ... ambiguous"), and a history holding a
    # NaN value was unequal to its own copy (hostile review, helper-135)
    import pickle

    import numpy as np

    h = History().add(Checkpoint({"w": np.zeros(3)}, {"lr": 0.1}, "g", 1.0, None, 10, 0.0))
    h = h.add(Checkpoint("p", {"lr": 0.1}, "g", float("nan"), None, 20, 1.0))
    assert h == pickle.loads(pickle.dumps(h)) and h == h
    other = History().add(Checkpoint({"w": np.ones(3)}, {"lr": 0.1}, "g", 1.0, None, 10, 0.0))
    assert h != other and other != History()
    changed = h.add(Checkpoint("p", {"lr": 0.1}, "g", -0.0, None, 20, 1.0))
    assert changed != h and changed.add(h.get_checkpoint("g", 20)) == h
    assert History(mode="max") != History() and History() == History()


def _loadable_by_reading_all(checkpoints):
    """History.latest_loadable and latest_finite_save by their docstrings, read from
    every checkpoint of one generation (newest first)."""
    newest = sorted(checkpoints, key=lambda c: -c.step)
    evaluated = [c for c in newest if c.value is not None]
    saves = [c for c in newest if c.params is not None]
    finite = [c for c in evaluated if c.params is not None and math.isfinite(c.value)]
    loadable = None
    if evaluated:
        loadable = next((c for c in evaluated if c.params is not None), None)
        loadable = loadable or (saves[0] if saves else evaluated[0])
    return loadable, finite[0] if finite else None


@pytest.mark.parametrize("seed", range(20))
def test_the_checkpoint_a_copy_takes_is_found_as_by_reading_every_one(seed):
    """latest_loadable and latest_finite_save skip the walk for a generation that holds
    no params (helper-196); a generation with and without saves, evaluations, NaN and
    replaced checkpoints, against reading them all."""
    rng = random.Random(seed)
    history = History()
    for _ in range(rng.randrange(1, 40)):
        step = rng.randrange(0, 30)
        value = rng.choice([None, 0.5, 1.5, math.nan, math.inf])
        params = f"p{step}" if rng.random() < [0.0, 0.1, 0.7][seed % 3] else None
        history = history.add(ck("g", step, value=value, params=params))
        expected = _loadable_by_reading_all(history["g"].values())
        assert (history.latest_loadable("g"), history.latest_finite_save("g")) == expected


def test_a_generation_that_holds_no_params_is_not_walked_to_its_root():
    """A worker that never sends params (the seed's params=None loops) and is never
    copied over: every decision walked its whole generation for a save it never made,
    O(the generation's length) per evaluation (897 us per call at 12,500 checkpoints,
    against 67 with string handles; helper-196)."""
    from jaxpop import history as history_mod

    history = History().add_all(ck("g", s, value=1.0) for s in range(1000))
    reads = []

    class Counted(dict):  # the generation's step -> checkpoint map, counting reads
        def __getitem__(self, step):
            reads.append(step)
            return super().__getitem__(step)

    gen = history._generations["g"]
    counted = gen._replace(checkpoints=Counted(gen.checkpoints.items()))
    history = history_mod._history(
        history._generations.set("g", counted), history.num_checkpoints, "min", None
    )
    assert history.latest_loadable("g").step == 999 and history.latest_finite_save("g") is None
    assert len(reads) <= 2


@pytest.mark.parametrize("seed", range(20))
def test_checkpoints_recorded_since_a_time_are_found_as_by_reading_every_one(seed):
    """evaluated(min_time=...) stops its walk where the times show nothing below can
    qualify (helper-196: a wall-clock PBT decision read the whole generation); reports
    in order, retries of the newest step, reports behind it, NaN and int times, against
    reading them all, with and without min_step."""
    rng = random.Random(seed)
    history, clock = History(), 0.0
    for _ in range(rng.randrange(1, 60)):
        clock += rng.choice([0.0, 1.0, 2.5])
        newest = history.latest("g").step if "g" in history else 0
        step = rng.choice([newest + rng.randrange(1, 4), newest, rng.randrange(0, newest + 1)])
        time = rng.choice([clock] * 8 + [clock - 5.0, math.nan, int(clock)])
        history = history.add(ck("g", step, value=rng.choice([None, 1.0, 2.0]), time=time))
        for min_time in (0.0, clock / 2, clock - 1.0, clock, clock + 1.0):
            for min_step in (None, step // 2):
                expected = [
                    c
                    for c in history["g"].values()
                    if c.value is not None
                    and c.time >= min_time
                    and (min_step is None or c.step >= min_step)
                ]
                assert history.evaluated("g", min_time=min_time, min_step=min_step) == expected


def test_a_time_window_reads_only_what_it_returns_in_a_generation_reported_in_order():
    """A generation whose worker reported step after step: the window since a time reads
    the checkpoints it returns and the one before, not the whole generation (a
    wall-clock PBT decision cost 0.75 ms at 1,000 checkpoints, 21 ms at 25,000)."""
    from jaxpop import history as history_mod

    history = History().add_all(ck("g", s, value=1.0, time=float(s)) for s in range(1000))
    reads = []

    class Counted(dict):
        def __getitem__(self, step):
            reads.append(step)
            return super().__getitem__(step)

    gen = history._generations["g"]
    assert gen.times_ordered
    counted = gen._replace(checkpoints=Counted(gen.checkpoints.items()))
    history = history_mod._history(
        history._generations.set("g", counted), history.num_checkpoints, "min", None
    )
    window = history.evaluated("g", min_time=990.0)
    assert [c.step for c in window] == list(range(990, 1000)) and len(reads) == 11
    # a report behind the newest step, recorded later, makes the order unknown: all read
    history = History().add_all(ck("g", s, value=1.0, time=float(s)) for s in range(1000))
    history = history.add(ck("g", 5, value=2.0, time=2000.0))
    assert not history._generations["g"].times_ordered
    assert [c.step for c in history.evaluated("g", min_time=995.0)] == [5, 995, 996, 997, 998, 999]


def test_a_time_window_compares_only_evaluated_checkpoints_times():
    """The walk that stops early compared every checkpoint's time, so a min_time that
    cannot be compared with a time raised where only evaluated checkpoints' times were
    compared before (an unevaluated start and min_time="x" gave []; helper-197)."""
    history = History().add(ck("g", 0, time=100.0))
    assert history.evaluated("g", min_time="x") == []
    history = history.add(ck("g", 5, value=1.0, time=101.0))
    with pytest.raises(TypeError):
        history.evaluated("g", min_time="x")


def _by_latest_afresh(history):
    """by_latest_step as a sort of every generation would give it."""
    entries = [(history.latest(g).step, i, g) for i, g in enumerate(history)]
    return sorted(entries, reverse=True)


@pytest.mark.parametrize("chunk", [2, 3, 128])
@pytest.mark.parametrize("seed", range(12))
def test_generations_by_latest_step_are_kept_along_adds_as_read_afresh(seed, chunk, monkeypatch):
    """The order by latest step that a history keeps once asked (each add moves one
    entry; chunks split as they grow) equals a sort of every generation, after new
    generations, steps past, at and below the newest, replacements, add_all batches,
    branches from older histories and pickles."""
    import pickle

    from jaxpop import history as history_mod

    monkeypatch.setattr(history_mod, "_CHUNK", chunk)
    rng = random.Random(seed)
    histories = [History()]
    for n in range(rng.randrange(40, 160)):
        history = rng.choice(histories[-3:] if rng.random() < 0.9 else histories)
        gens = list(history)
        kind = rng.random()
        if not gens or kind < 0.2:
            parent = None
            if gens:
                g = rng.choice(gens)
                parent = (g, rng.choice(history[g].keys()))
            new = ck(f"n{n}", rng.randrange(0, 50) if parent is None else parent[1], parent=parent)
            history = history.add(new)
        elif kind < 0.3:  # a batch: add_all builds it in one pass
            batch = [ck(rng.choice(gens), rng.randrange(0, 80), value=1.0) for _ in range(4)]
            history = history.add_all(batch)
        elif kind < 0.35:
            history = pickle.loads(pickle.dumps(history))
        else:
            g = rng.choice(gens)
            newest = history.latest(g).step
            step = rng.choice([newest + rng.randrange(1, 6), newest, rng.randrange(0, newest + 1)])
            history = history.add(ck(g, step, value=rng.random()))
        if rng.random() < 0.3:
            assert list(history.by_latest_step()) == _by_latest_afresh(history)
        histories.append(history)
    for history in histories:
        assert list(history.by_latest_step()) == _by_latest_afresh(history)


def test_generations_by_latest_step_are_read_once_then_kept(monkeypatch):
    """The histories adds make from one asked for its generations by latest step keep the
    order: PB2 read every generation's latest step and sorted them at every explore
    (32 ms per decision at 7,369 generations, helper-196)."""
    from jaxpop import history as history_mod

    history = History().add_all(ck(f"g{i}", 5 * (i % 7)) for i in range(500))
    assert next(history.by_latest_step()) == (30, 496, "g496")
    built = []
    original = history_mod._by_latest
    monkeypatch.setattr(history_mod, "_by_latest", lambda gens: built.append(1) or original(gens))
    for step in range(31, 231):
        history = history.add(ck(f"g{step % 500}", step, value=1.0))
        history = history.add(ck(f"c{step}", step, parent=(f"g{step % 500}", step)))
        latest = list(history.by_latest_step())[:3]
        assert latest == _by_latest_afresh(history)[:3]
    assert built == []
    assert latest[0] == (230, 699, "c230") and latest[1] == (230, 230, "g230")


@pytest.mark.parametrize(
    "field, value",
    [("step", 1.0), ("step", True), ("parent", "ab"), ("parent", "a"), ("generation_id", None)],
)
def test_a_checkpoint_whose_place_is_malformed_is_refused_by_add_and_add_all(field, value):
    # a float step replaced the checkpoint at the int step it equals; a str parent was
    # unpacked: ancestry named generation "a", lineage a root (or a TypeError naming
    # no field)
    good = Checkpoint(None, {}, "g", None, None, 1, 0.0)
    bad = good.replace(step=2, **{field: value}) if field != "step" else good.replace(step=value)
    for add in (lambda h: h.add(bad), lambda h: h.add_all([good, bad, good.replace(step=5)])):
        with pytest.raises(ValueError, match=rf"History.add\(checkpoint\).{field}"):
            add(History().add(good))
    # a value or time of another type is taken as it is (a history built by hand)
    assert History().add(good.replace(value=1, time=0)).latest("g").value == 1
