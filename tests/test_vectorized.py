"""Tests of jaxpop.vectorized: the stacked population, exploit/explore on device, lineage."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import BACKEND_COMPILE, TraceCounter, compilations  # noqa: F401 (re-exported)
from jaxpop import encoding, storage
from jaxpop import vectorized as vz
from jaxpop.checkpointing import ParamStore
from jaxpop.hparams import get_hparams, make_optimizer
from jaxpop.keys import root_key
from jaxpop.mutators import explore, selection

N = 8
SPACE = {"log_lr": explore.uniform(-5.0, -1.0), "b1": explore.uniform(0.5, 0.95)}
TX = make_optimizer(
    optax.adam,
    {"log_lr": -3.0, "b1": 0.9},
    keys={"log_lr": "learning_rate", "b1": "b1"},
    transforms={"learning_rate": jnp.exp},
)


def to_optimizer(h):
    return {"learning_rate": jnp.exp(h["log_lr"]), "b1": h["b1"]}


def init_fn(key):
    k1, k2 = jax.random.split(key)
    params = {"w": jax.random.normal(k1, (4, 3)) * 0.5, "b": jax.random.normal(k2, (3,)) * 0.1}
    return {"params": params, "opt_state": TX.init(params)}


def train_step(state, batch, hparams):
    x, y = batch

    def loss_fn(params):
        return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss


def batch(i, members=None):
    rng = np.random.default_rng(i)
    shape = (16,) if members is None else (members, 16)
    x = rng.normal(size=(*shape, 4)).astype(np.float32)
    return x, np.tanh(x[..., :3] * 0.7).astype(np.float32)


_INIT = jax.jit(
    functools.partial(
        vz.init, init_fn=init_fn, space=SPACE, num_members=N, optimizer_hparams=to_optimizer
    )
)  # one jitted function: compiled once for every test here


def make_pop(seed=0):
    return _INIT(root_key(seed))


STEP = jax.jit(vz.vmap_train_step(train_step))
EXPLOIT = jax.jit(
    functools.partial(
        vz.exploit_explore,
        space=SPACE,
        selection=functools.partial(selection.truncation, quantile_fraction=0.25),
        optimizer_hparams=to_optimizer,
    )
)


def member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def test_init_shapes_and_hparams_in_optimizer():
    pop = make_pop()
    assert pop.size == N
    assert all(v.shape == (N,) for v in pop.hparams.values())
    np.testing.assert_array_equal(pop.generation, np.arange(N))
    assert int(pop.num_generations) == N and int(pop.step) == 0
    held = get_hparams(pop.train_state["opt_state"])
    np.testing.assert_allclose(held["learning_rate"], np.exp(pop.hparams["log_lr"]), rtol=1e-6)
    np.testing.assert_allclose(held["b1"], pop.hparams["b1"])
    assert len(set(np.asarray(pop.hparams["log_lr"]).tolist())) == N  # different draws
    w = np.asarray(pop.train_state["params"]["w"])
    assert not np.allclose(w[0], w[1])  # different keys


def test_init_stores_given_hparams_as_the_space_draws_them_and_checks_its_arguments():
    # an int8 randint(0, 300) hyperparameter perturbed from 100 by 2.0 saturated at 127;
    # bfloat16 rounded the floats: given hparams are stored as a draw is (int32, float32)
    space = {"n": explore.randint(0, 300), "x": explore.uniform(0.0, 1.0)}
    given = {"n": np.full(4, 100, np.int8), "x": np.full(4, 0.3, jnp.bfloat16)}
    pop = vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, space, hparams=given)
    assert (pop.hparams["n"].dtype, pop.hparams["x"].dtype) == (jnp.int32, jnp.float32)
    doubled, ex = vz.exploit_explore(
        pop,
        jnp.arange(4.0),
        space=space,
        selection=functools.partial(selection.truncation, quantile_fraction=0.5),
        explore=functools.partial(explore.perturb, perturbation_factors=(2.0,)),
    )
    assert np.asarray(ex.copied).tolist() == [False, False, True, True]
    assert np.asarray(doubled.hparams["n"]).tolist() == [100, 100, 200, 200]
    # under x64 a draw is float64 / int64, but float32 and int32 stay (a float32 model's
    # hparams stay float32): only dtypes below 32 bits are widened
    with jax.enable_x64(True):
        given = {"n": np.full(4, 100, np.int32), "x": np.full(4, 0.3, np.float32)}
        kept = vz.init(
            root_key(0), lambda k: {"w": jnp.zeros(2, jnp.float32)}, space, hparams=given
        )
        assert (kept.hparams["n"].dtype, kept.hparams["x"].dtype) == (jnp.int32, jnp.float32)
    # a float given for an integer space stays a float (nothing to truncate)
    floats = vz.init(
        root_key(0),
        lambda k: {"w": jnp.zeros(2)},
        space,
        hparams={"n": np.full(4, 3.0), "x": np.full(4, 0.5)},
    )
    assert jnp.issubdtype(floats.hparams["n"].dtype, jnp.floating)
    for bad, error in ((2.7, ValueError), (True, TypeError), (0, ValueError), (-1, ValueError)):
        with pytest.raises(error, match="num_members"):
            vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, space, bad)
    for scores in (jnp.arange(5.0), jnp.arange(3.0), jnp.float32(1.0)):
        with pytest.raises(ValueError, match="one score per member"):
            vz.exploit_explore(pop, scores, space=space)


@pytest.mark.parametrize("per_member", [False, True])
def test_vmap_equals_single_member_runs(per_member):
    pop = make_pop()
    single = jax.jit(train_step)
    step = (
        STEP if not per_member else jax.jit(vz.vmap_train_step(train_step, per_member_batch=True))
    )
    states = [member(pop.train_state, i) for i in range(N)]
    for t in range(5):
        b = batch(t, N if per_member else None)
        pop, losses = step(pop, b)
        for i in range(N):
            bi = member(b, i) if per_member else b
            states[i], loss = single(states[i], bi, member(pop.hparams, i))
            np.testing.assert_allclose(losses[i], loss, rtol=1e-5, atol=1e-6)
    assert int(pop.step) == 5
    for i in range(N):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
            member(pop.train_state, i),
            states[i],
        )


def test_exploit_copies_parent_state_exactly_and_writes_hparams():
    pop = make_pop()
    for t in range(3):
        pop, _ = STEP(pop, batch(t))
    scores = jnp.arange(N, dtype=jnp.float32)[::-1]  # member N-1 is best
    wta = jax.jit(
        functools.partial(
            vz.exploit_explore,
            space=SPACE,
            selection=selection.copy_best,
            optimizer_hparams=to_optimizer,
        )
    )
    new, ex = wta(pop, scores, root_key(1))
    best = N - 1
    np.testing.assert_array_equal(ex.parents, np.full(N, best))
    np.testing.assert_array_equal(ex.copied, np.arange(N) != best)
    for i in range(N):
        # params and the optimizer's moments and count are the parent's, bit for bit
        old_best = member(pop.train_state, best)
        got = member(new.train_state, i)
        jax.tree.map(np.testing.assert_array_equal, got["params"], old_best["params"])
        np.testing.assert_array_equal(
            got["opt_state"].inner_state[0].mu["w"], old_best["opt_state"].inner_state[0].mu["w"]
        )
        np.testing.assert_array_equal(got["opt_state"].count, old_best["opt_state"].count)
    # the best keeps its hparams; the copies explore from the best's
    for k in SPACE:
        assert float(new.hparams[k][best]) == float(pop.hparams[k][best])
        assert not np.allclose(new.hparams[k][:best], pop.hparams[k][best])
        lo, hi = SPACE[k].low, SPACE[k].high
        assert np.all((new.hparams[k] >= lo - 1e-6) & (new.hparams[k] <= hi + 1e-6))
    held = get_hparams(new.train_state["opt_state"])
    np.testing.assert_allclose(held["learning_rate"], np.exp(new.hparams["log_lr"]), rtol=1e-6)
    np.testing.assert_allclose(held["b1"], new.hparams["b1"])
    np.testing.assert_array_equal(new.generation, [8, 9, 10, 11, 12, 13, 14, 7])
    assert int(new.num_generations) == 15
    np.testing.assert_array_equal(new.scores, scores)


def test_host_scores_past_float32_are_selected_in_their_host_order():
    """Called outside jit with float64 scores, exploit_explore hands the selection the
    host order: 1e39 is the best in "max" mode, not inf (a diverged run)."""
    scores = np.array([1e39, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    pick = functools.partial(selection.copy_best, mode="max")
    with pytest.warns(RuntimeWarning, match="overflow"):  # pop.scores is float32: inf
        new, ex = vz.exploit_explore(make_pop(), scores, root_key(3), space=SPACE, selection=pick)
    np.testing.assert_array_equal(ex.parents, [0] * N)
    assert float(new.scores[0]) == np.inf


def test_members_that_keep_going_are_untouched():
    pop = make_pop()
    scores = jnp.zeros(N)  # all tied: nobody copies
    new, ex = EXPLOIT(pop, scores, root_key(3))
    assert not np.any(ex.copied)
    jax.tree.map(np.testing.assert_array_equal, new.train_state, pop.train_state)
    jax.tree.map(np.testing.assert_array_equal, new.hparams, pop.hparams)


def test_init_warns_when_no_hyperparameter_reaches_the_optimizer():
    """A space of ``log_lr`` for an optimizer made with ``keys={"log_lr":
    "learning_rate"}`` and no ``optimizer_hparams``: nothing was written into the
    optimizer, every member trained at init_fn's rate, and the lineage recorded rates
    never used, silently (round tester)."""
    space = {"log_lr": explore.uniform(-5.0, -1.0)}
    with pytest.warns(UserWarning, match=r"none of the population's hyperparameters \['log_lr'\]"):
        pop = vz.init(root_key(0), init_fn, space, 4)
    lr = np.asarray(get_hparams(pop.train_state["opt_state"])["learning_rate"])
    np.testing.assert_allclose(lr, np.exp(-3.0), rtol=1e-6)  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # written: no warning
        pop = vz.init(root_key(0), init_fn, space, 4, optimizer_hparams=to_optimizer_lr)
        vz.init(root_key(0), init_fn, SPACE, 4)  # b1 is written by name
        vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, space, 4)  # no optimizer
    lr = np.asarray(get_hparams(pop.train_state["opt_state"])["learning_rate"])
    np.testing.assert_allclose(lr, np.exp(np.asarray(pop.hparams["log_lr"])), rtol=1e-6)


def test_a_round_that_forgot_optimizer_hparams_warns():
    """``init`` was given ``optimizer_hparams`` but the round was not: every copy would
    keep training with its parent's learning rate while the lineage records its explored
    one. exploit_explore (and so round_fn and mf_pbt_round) warns as init does, while
    tracing (hostile review, helper-87); with the mapping it is silent."""
    space = {"log_lr": explore.uniform(-5.0, -1.0)}
    pop = vz.init(root_key(0), init_fn, space, 4, optimizer_hparams=to_optimizer_lr)
    scores = jnp.arange(4.0)
    with pytest.warns(UserWarning, match=r"none of the population's hyperparameters \['log_lr'\]"):
        vz.exploit_explore(pop, scores, root_key(1), space=space)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new, ex = vz.exploit_explore(
            pop, scores, root_key(1), space=space, optimizer_hparams=to_optimizer_lr
        )
    assert np.any(ex.copied)
    lr = np.asarray(get_hparams(new.train_state["opt_state"])["learning_rate"])
    np.testing.assert_allclose(lr, np.exp(np.asarray(new.hparams["log_lr"])), rtol=1e-6)


def test_init_refuses_a_nan_hyperparameter_and_record_an_out_of_range_parent():
    """Host mode refuses a NaN initial hyperparameter; so does init (it was written into
    the optimizer). A selection's parent outside the population reads NaN on device;
    record says so instead of an IndexError (hostile review, helper-87)."""
    with pytest.raises(ValueError, match=r"hparams\['log_lr'\]\[1\] is NaN"):
        vz.init(root_key(0), init_fn, SPACE, hparams={"log_lr": [-3.0, np.nan], "b1": [0.9] * 2})
    pop = vz.init(root_key(0), init_fn, SPACE, 4, optimizer_hparams=to_optimizer_lr)
    lineage = vz.lineage_init(pop, root_key(0), now=0.0)
    scores = jnp.arange(4.0)
    _, exploit = vz.exploit_explore(
        pop,
        scores,
        root_key(1),
        space=SPACE,
        optimizer_hparams=to_optimizer_lr,
        selection=lambda key, s: jnp.asarray([4, 1, 2, 3]),
    )
    with pytest.raises(ValueError, match=r"exploit.parents\[0\] is 4, not a member"):
        vz.record(lineage, scores, step=1, now=0.0, exploit=exploit)


def to_optimizer_lr(h):
    return {"learning_rate": jnp.exp(h["log_lr"])}


def test_members_that_keep_going_keep_the_optimizer_hparams_their_step_wrote():
    """A train step that moves the learning rate held in the optimizer state (a decay
    of its own): the members that keep going keep it; only the copies get their
    explored hyperparameters written (every member's was overwritten)."""
    from jaxpop.hparams import set_hparams

    pop = make_pop()
    halved = set_hparams(
        pop.train_state["opt_state"],
        {"learning_rate": get_hparams(pop.train_state["opt_state"])["learning_rate"] / 2},
    )
    pop = pop.replace(train_state={**pop.train_state, "opt_state": halved})
    new, ex = EXPLOIT(pop, jnp.arange(N, dtype=jnp.float32), root_key(3))
    copied = np.asarray(ex.copied)
    assert copied.any() and not copied.all()
    lr = np.asarray(get_hparams(new.train_state["opt_state"])["learning_rate"])
    held = np.asarray(get_hparams(halved)["learning_rate"])
    np.testing.assert_array_equal(lr[~copied], held[~copied])
    np.testing.assert_allclose(
        lr[copied], np.exp(np.asarray(new.hparams["log_lr"]))[copied], rtol=1e-6
    )
    jax.tree.map(
        np.testing.assert_array_equal, member(new.train_state, 0), member(pop.train_state, 0)
    )


def test_key_none_advances_population_key():
    pop = make_pop()
    new, _ = EXPLOIT(pop, jnp.arange(N, dtype=jnp.float32))
    assert not np.array_equal(new.key, pop.key)


def test_no_recompilation_over_50_rounds():
    def round_(pop, b):
        pop, losses = vz.vmap_train_step(train_step)(pop, b)
        return vz.exploit_explore(
            pop, losses, space=SPACE, selection=selection.tournament, optimizer_hparams=to_optimizer
        )

    counted = TraceCounter(round_)
    fn = jax.jit(counted)
    pop = make_pop()
    pop, _ = fn(pop, batch(0))
    seen = {float(pop.hparams["log_lr"][0])}
    with compilations() as compiled:
        for t in range(1, 50):
            pop, _ = fn(pop, batch(t % 4))
            seen.add(float(pop.hparams["log_lr"][0]))
    assert counted.count == 1
    assert compiled == []  # rounds 2..50 reuse the first round's executable
    assert len(seen) > 1  # the hyperparameters did change
    assert int(pop.num_generations) > N


def test_lineage_records_and_journal(tmp_path):
    pop = make_pop()
    lineage = vz.lineage_init(pop, root_key(0), now=1.0)
    assert len(lineage.history) == N
    log = storage.Store(str(tmp_path / "log2"))
    log.start(lineage)
    for r in range(3):
        for t in range(2):
            pop, losses = STEP(pop, batch(t))
        scores = losses
        step = int(pop.step)
        pop, ex = EXPLOIT(pop, scores)
        lineage, changes = vz.record(lineage, scores, step=step, now=2.0 + r, exploit=ex)
        log.append(changes, lineage)
    log.close()
    history = lineage.history
    assert len(history) == int(pop.num_generations)
    # workers follow the device generation indices
    for i, w in enumerate(lineage.workers):
        assert w.generation_id == vz.generation_id(root_key(0), int(pop.generation[i]))
        assert w.meta_params == vz.member_hparams(pop.hparams, i)
    # every copied member's generation starts from its parent's evaluated checkpoint
    ex_parents, ex_old = np.asarray(ex.parents), np.asarray(ex.old_generation)
    for i in np.flatnonzero(np.asarray(ex.copied)):
        first = history.first(lineage.workers[i].generation_id)
        parent_gen = vz.generation_id(root_key(0), int(ex_old[ex_parents[i]]))
        assert first.parent == (parent_gen, int(pop.step))
        assert history[parent_gen][int(pop.step)].value is not None
    # durable storage and the plain encoding work unchanged
    plain = encoding.decode(encoding.encode(storage.state_to_plain(lineage)))
    again = storage.state_from_plain(plain)
    assert list(again.history.checkpoints()) == list(history.checkpoints())
    loaded = storage.read_state(str(tmp_path / "log2"))
    assert list(loaded.history.checkpoints()) == list(history.checkpoints())
    assert loaded.workers == lineage.workers


def test_a_journal_that_records_its_run_as_vectorized_is_not_taken_over(tmp_path):
    """A vectorized population journaled without a run description was taken over by a
    PopulationController on the same log_dir (another example's): it recorded its own
    mutator there and failed on the population's params (helper-218). With
    run_description the controller is refused; an older journal takes it at its next
    start, and the population resumed with another size is refused too."""
    from jaxpop import PopulationController
    from jaxpop.mutators import WinnerTakeAllGenetic

    def controller(path):
        mutator = WinnerTakeAllGenetic(lambda meta: meta, steps_per_exploit=10)
        return PopulationController([{"lr": 0.1}] * N, mutator, str(path))

    lineage = vz.lineage_init(make_pop(), root_key(0), now=1.0)
    for path, described in ((tmp_path / "new", True), (tmp_path / "old", False)):
        log = storage.Store(str(path), run=vz.run_description(N) if described else None)
        log.start(lineage)
        log.close()
        if not described:  # (an older journal: its next start records the description)
            log = storage.Store(str(path), run=vz.run_description(N))
            assert log.load() is not None
            log.start(lineage)
            log.close()
        with pytest.raises(storage.RunMismatchError, match=r"jaxpop\.vectorized in the log_dir"):
            controller(path)
    other = storage.Store(str(tmp_path / "new"), run=vz.run_description(N + 1))
    with pytest.raises(storage.RunMismatchError, match="population size"):
        other.load()
        other.start(lineage)
    other.close()
    for bad in (0, -1, 2.5, True):
        with pytest.raises((TypeError, ValueError), match="population_size"):
            vz.run_description(bad)


def test_latest_snapshot_is_the_newest_round_recorded_with_a_handle():
    """A journal may hold rounds past its newest snapshot (a run that snapshots every
    few rounds, a crash between two appends): the resume took the newest round's params,
    ``None``, and could not restore (docs/multihost.md's recipe)."""
    pop = make_pop()
    lineage = vz.lineage_init(pop, root_key(0), now=1.0)
    assert vz.latest_snapshot(lineage) is None
    for r in range(4):
        pop, losses = STEP(pop, batch(r))
        step = int(pop.step)
        pop, ex = EXPLOIT(pop, -np.arange(N, dtype=np.float32) if r % 2 else losses)
        handle = f"snapshot@{step}" if r == 1 else None
        lineage, _ = vz.record(lineage, losses, step=step, now=2.0 + r, exploit=ex, params=handle)
        assert vz.latest_snapshot(lineage) == (None if r < 1 else "snapshot@2")
    assert int(np.asarray(ex.copied).sum()) > 0  # (member 0's lineage crossed copies)


def test_every_member_stands_at_the_newest_round_recorded():
    """A member no round copied kept the step and snapshot handle of its last copy:
    `jaxpop report` showed it at an old step (hostile review, helper-180)."""
    from jaxpop import report

    pop = make_pop()
    lineage = vz.lineage_init(pop, root_key(0), now=1.0)
    for r in range(3):
        pop, losses = STEP(pop, batch(r))
        step = int(pop.step)
        pop, ex = EXPLOIT(pop, losses) if r == 0 else (pop, None)  # copies in round 0 only
        handle = f"snapshot@{step}"
        lineage, changes = vz.record(
            lineage, losses, step=step, now=2.0 + r, exploit=ex, params=handle
        )
        assert [(w.step, w.params) for w in lineage.workers] == [(step, handle)] * N
        assert len(changes.workers) == N  # (journaled: a resume stands there too)
    assert {m.step for m in report.build(lineage).members} == {step}


def test_resume_from_snapshot_continues_identically(tmp_path):
    def run(pop, lineage, rounds, start, store=None, snapshot_at=None):
        handle = None
        for r in range(start, rounds):
            for t in range(2):
                pop, losses = STEP(pop, batch(r * 2 + t))
            step = int(pop.step)
            pop, ex = EXPLOIT(pop, losses)
            params = None
            if r == snapshot_at:
                handle = params = vz.save_snapshot(store, pop)
            lineage, _ = vz.record(
                lineage, losses, step=step, now=float(r), exploit=ex, params=params
            )
            if r == snapshot_at:
                saved = encoding.encode(storage.state_to_plain(lineage))
                return pop, lineage, handle, saved
        return pop, lineage, handle, None

    pop0 = make_pop()
    lineage0 = vz.lineage_init(pop0, root_key(0), now=0.0)
    with ParamStore(tmp_path / "params", async_save=False) as store:
        full_pop, full_lineage, _, _ = run(pop0, lineage0, 5, 0)
        _, _, handle, saved = run(pop0, lineage0, 5, 0, store, snapshot_at=2)
        like = jax.eval_shape(lambda: pop0)
        pop = vz.restore_snapshot(store, handle, like)
        lineage = storage.state_from_plain(encoding.decode(saved))
        pop, lineage, _, _ = run(pop, lineage, 5, 3)
    jax.tree.map(np.testing.assert_array_equal, pop, full_pop)

    def strip(state):
        return [
            (c.generation_id, c.step, c.value, c.parent, c.meta_params)
            for c in state.history.checkpoints()
        ]

    assert strip(lineage) == strip(full_lineage)
    assert [w.generation_id for w in lineage.workers] == [
        w.generation_id for w in full_lineage.workers
    ]


def test_a_weakly_typed_leaf_comes_back_weak_so_a_resumed_run_computes_alike(tmp_path):
    # a Python number from init_fn is weakly typed: bfloat16 weights times it stay
    # bfloat16. Restored strong, the resumed run computed in float32 (other values) and
    # the fused round refused its own carry
    space = {"lr": explore.uniform(0.1, 0.5)}

    def init_fn(key):
        return {"w": jax.random.normal(key, (3,)).astype(jnp.bfloat16), "scale": 1.0}

    def train_step(state, batch, hparams):
        w = (
            state["w"] * state["scale"]
            - (hparams["lr"] * batch).astype(state["w"].dtype) * state["w"]
        )
        return {"w": w, "scale": state["scale"]}, jnp.sum(w).astype(jnp.float32)

    pop = vz.init(root_key(0), init_fn, space, 4)
    assert jax.typeof(pop.train_state["scale"]).weak_type
    with ParamStore(tmp_path, async_save=False) as store:
        handle = vz.save_snapshot(store, pop)
        restored = vz.restore_snapshot(store, handle, jax.eval_shape(lambda: pop))
        scalar = vz.restore_snapshot(store, handle, pop)  # a concrete like, too
    for leaf in (restored.train_state["scale"], scalar.train_state["scale"]):
        assert jax.typeof(leaf).weak_type and leaf.shape == (4,)
    step = jax.jit(vz.vmap_train_step(train_step))
    a, b = pop, restored
    for t in range(3):
        a, _ = step(a, jnp.float32(1.0 + t))
        b, _ = step(b, jnp.float32(1.0 + t))
    assert b.train_state["w"].dtype == jnp.bfloat16
    jax.tree.map(np.testing.assert_array_equal, b, a)
    rounds = jax.jit(
        vz.round_fn(
            train_step,
            lambda s, h, _: jnp.sum(s["w"]).astype(jnp.float32),
            steps_per_round=2,
            space=space,
        )
    )
    jax.tree.map(
        np.testing.assert_array_equal, rounds(restored, jnp.ones(2)), rounds(pop, jnp.ones(2))
    )


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import functools, json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {tests!r})
    import test_vectorized as t
    from jaxpop import vectorized as vz
    from jaxpop.keys import root_key
    from jaxpop.mutators import selection
    assert jax.device_count() == 4, jax.devices()
    mesh = vz.member_mesh()

    def round_(pop, b, mesh):
        pop, losses = vz.vmap_train_step(t.train_step)(pop, b)
        pop, ex = vz.exploit_explore(pop, losses, space=t.SPACE,
            selection=selection.tournament, optimizer_hparams=t.to_optimizer)
        return vz.constrain(pop, mesh), ex

    def go(mesh):
        pop = t.make_pop()
        if mesh is not None:
            pop = vz.shard(pop, mesh)
        counted = t.TraceCounter(functools.partial(round_, mesh=mesh))
        fn = jax.jit(counted)
        pop, ex = fn(pop, t.batch(0))
        with t.compilations() as compiled:
            for r in range(1, 6):
                pop, ex = fn(pop, t.batch(r))
        return pop, counted.count + len(compiled)

    single, n1 = go(None)
    sharded, n4 = go(mesh)
    w = sharded.train_state["params"]["w"]
    out = dict(
        devices=len(w.sharding.device_set),
        spec=str(w.sharding.spec),
        cache=[n1, n4],
        generations=[int(single.num_generations), int(sharded.num_generations)],
        max_diff=max(float(jnp.max(jnp.abs(a - b))) for a, b in
                     zip(jax.tree.leaves(single), jax.tree.leaves(sharded))),
        same_generation=bool(np.array_equal(single.generation, sharded.generation)),
    )

    def fused(mesh):  # the fused round keeps the population sharded over the mesh
        evaluate = lambda state, hparams, b: jnp.mean(state["params"]["w"] ** 2)
        fn = jax.jit(vz.round_fn(t.train_step, evaluate, steps_per_round=2, space=t.SPACE,
                                 optimizer_hparams=t.to_optimizer, mesh=mesh),
                     donate_argnums=0)
        pop = t.make_pop() if mesh is None else vz.shard(t.make_pop(), mesh)
        for r in range(3):
            batches = jax.tree.map(lambda *x: np.stack(x), t.batch(2 * r), t.batch(2 * r + 1))
            pop, result = fn(pop, batches)
        return pop

    plain, spread = fused(None), fused(mesh)
    out["fused_spec"] = str(spread.train_state["params"]["w"].sharding.spec)
    out["fused_max_diff"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                                zip(jax.tree.leaves(plain), jax.tree.leaves(spread)))
    out["fused_same_generation"] = bool(np.array_equal(plain.generation, spread.generation))
    # a ParamStore restore onto the mesh: read to the host, checked, then placed
    import tempfile
    from jaxpop.checkpointing import ParamStore
    with ParamStore(tempfile.mkdtemp(), async_save=False) as store:
        back = store.restore(store.save("g", 0, sharded), sharded)
    out["restored_same"] = all(a.sharding == b.sharding and bool((a == b).all()) for a, b in
                               zip(jax.tree.leaves(back), jax.tree.leaves(sharded)))
    # a snapshot restored onto a mesh whose axis has another name (helper-157: restore
    # took the axis "members", which the mesh did not have)
    named = vz.member_mesh(axis="pop")
    on_pop = vz.shard(sharded, named, axis="pop")
    with ParamStore(tempfile.mkdtemp(), async_save=False) as store:
        handle = vz.save_snapshot(store, on_pop)
        back = vz.restore_snapshot(store, handle, jax.eval_shape(lambda: on_pop), named, "pop")
    out["restored_on_axis"] = all(
        a.sharding == b.sharding and bool((a == b).all())
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(on_pop)))
    # a fused round on that mesh (round_fn constrained to the axis "members": it failed
    # while tracing, helper-241)
    evaluate = lambda state, hparams, b: jnp.mean(state["params"]["w"] ** 2)
    on_axis = jax.jit(vz.round_fn(t.train_step, evaluate, steps_per_round=1, space=t.SPACE,
                                  optimizer_hparams=t.to_optimizer, mesh=named, axis="pop"))
    after, _ = on_axis(on_pop, jax.tree.map(lambda x: x[None], t.batch(0)))
    out["round_on_axis"] = str(after.train_state["params"]["w"].sharding.spec)
    # 6 members over 4 devices: refused (the round replicated them, recompiling)
    pop6 = vz.init(root_key(0), t.init_fn, t.SPACE, 6, optimizer_hparams=t.to_optimizer)
    evaluate = lambda state, hparams, b: jnp.mean(state["params"]["w"] ** 2)
    uneven = jax.jit(vz.round_fn(t.train_step, evaluate, steps_per_round=1, space=t.SPACE,
                                 optimizer_hparams=t.to_optimizer, mesh=mesh))
    try:
        uneven(pop6, jax.tree.map(lambda x: x[None], t.batch(0)))
        out["uneven"] = "ran"
    except ValueError as e:
        out["uneven"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


def test_sharded_equals_unsharded_on_4_cpu_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    script = _SHARDED_SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out["devices"] == 4
    assert "members" in out["spec"]
    assert out["cache"] == [1, 1]  # traced once; rounds 2..6 never compiled again
    assert out["generations"][0] == out["generations"][1] > N
    assert out["same_generation"]
    assert out["max_diff"] < 1e-5
    assert "members" in out["fused_spec"]
    assert out["fused_same_generation"]
    assert out["fused_max_diff"] < 1e-5
    assert out["restored_same"]
    assert out["restored_on_axis"]
    assert "pop" in out["round_on_axis"]
    assert "6 members cannot be split evenly over the 4 devices" in out["uneven"]


@pytest.mark.parametrize("count", [N - 1, N + 1])
def test_record_refuses_a_score_count_other_than_the_population(count):
    lineage = vz.lineage_init(make_pop(), root_key(0), now=1.0)
    with pytest.raises(ValueError, match=rf"one score per member: shape \({N},\)"):
        vz.record(lineage, np.zeros(count), step=1, now=2.0)


def test_masked_and_time_scores_are_refused_as_set_eval_refuses_them():
    # (helper-316: record took a masked member's hidden 0.0, the best loss, and
    # timedelta64 scores as their counts; exploit_explore ranked the masked one)
    pop = make_pop()
    lineage = vz.lineage_init(pop, root_key(0), now=1.0)
    masked = np.ma.masked_array(np.arange(N, dtype=float), mask=[True] + [False] * (N - 1))
    for function in (
        lambda s: vz.record(lineage, s, step=1, now=2.0),
        lambda s: vz.exploit_explore(pop, s, root_key(1), space=SPACE),
    ):
        with pytest.raises(ValueError, match="a score is masked"):
            function(masked)
        for times in (np.arange(N).astype("m8[s]"), list(np.arange(N).astype("m8[s]"))):
            with pytest.raises(TypeError, match="real-number scores, got timedelta64"):
                function(times)
    vz.record(lineage, np.ma.masked_array(np.arange(N, dtype=float)), step=1, now=2.0)


def test_members_with_several_keys_get_all_of_them_fresh_when_they_copy():
    """One key per environment (say, in RL): typed ``(N, E)`` and raw ``uint32[N, E, 2]``
    under ``"key"``; a copier's keys all differ from its parent's and from each other."""
    space = {"lr": explore.uniform(0.1, 0.5)}
    scores = jnp.array([0.0, 1.0, 2.0, 3.0])  # member 0 is best (lower is better)

    def init_fn(k):
        typed = jax.random.split(jax.random.wrap_key_data(k), 3)
        return {"w": jnp.zeros(2), "env": typed, "key": jax.random.key_data(typed)}

    pop = vz.init(root_key(0), init_fn, space, 4)
    new, ex = vz.exploit_explore(
        pop, scores, root_key(1), space=space, selection=selection.copy_best
    )
    assert np.asarray(ex.copied).tolist() == [False, True, True, True]
    typed = np.asarray(jax.random.key_data(new.train_state["env"]))
    raw = np.asarray(new.train_state["key"])
    np.testing.assert_array_equal(typed, raw)  # the same rule for both kinds
    keys = {tuple(k) for k in typed.reshape(-1, 2)}
    assert len(keys) == 4 * 3  # no two keys of the population alike
    before = np.asarray(jax.random.key_data(pop.train_state["env"]))
    np.testing.assert_array_equal(typed[0], before[0])  # the best keeps its own


def test_integer_hyperparameters_for_a_float_space_are_never_truncated():
    """``-4`` written for ``-4.0``: with the space, init stores floats; without it, the
    first exploit refuses (storing explored floats as integers would truncate them)."""
    space = {"log_lr": explore.uniform(-6.0, -1.0), "batch": explore.randint(1, 9), "net": "cnn"}
    given = [{"log_lr": -4, "batch": 3}, {"log_lr": -3, "batch": 4}]  # (a constant: skipped)
    pop = vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, space, hparams=given)
    assert pop.hparams["log_lr"].dtype == jnp.float32 and pop.hparams["batch"].dtype == jnp.int32
    new, _ = vz.exploit_explore(
        pop, jnp.array([1.0, 0.0]), root_key(1), space=space, selection=selection.copy_best
    )
    assert new.hparams["log_lr"][0] != jnp.round(new.hparams["log_lr"][0])  # a float again
    bare = vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, hparams=given)
    with pytest.raises(TypeError, match="'log_lr' is stored as int32"):
        vz.exploit_explore(
            bare, jnp.array([1.0, 0.0]), root_key(1), space=space, selection=selection.copy_best
        )


def test_copies_get_fresh_distinct_prng_keys_instead_of_their_parents():
    pop = make_pop()
    keys = jax.random.split(jax.random.key(3), N)
    state = {
        **pop.train_state,
        "key": jax.random.key_data(keys),  # raw keys, found by name
        "aug": {"rng": keys},  # typed keys, found by dtype
        "seed": jax.random.key_data(keys),  # raw keys under another name
    }
    pop = pop.replace(train_state=state)
    scores = jnp.arange(N, dtype=jnp.float32)[::-1]  # the last member is best
    wta = jax.jit(
        functools.partial(
            vz.exploit_explore,
            space=SPACE,
            selection=selection.copy_best,
            optimizer_hparams=to_optimizer,
        )
    )
    new, ex = wta(pop, scores, root_key(1))
    copied = np.asarray(ex.copied)
    assert copied.sum() == N - 1
    raw = np.asarray(new.train_state["key"])
    typed = np.asarray(jax.random.key_data(new.train_state["aug"]["rng"]))
    old = np.asarray(jax.random.key_data(keys))
    for fresh in (raw, typed):
        assert len({tuple(k) for k in fresh}) == N  # no two members share a stream
        np.testing.assert_array_equal(fresh[~copied], old[~copied])  # the best keeps its own
        assert not any((fresh[i] == old[N - 1]).all() for i in np.flatnonzero(copied))
    np.testing.assert_array_equal(raw, typed)  # the same rule for both kinds
    # a leaf not marked as a key is copied as it is, unless is_key says otherwise
    np.testing.assert_array_equal(np.asarray(new.train_state["seed"])[copied][0], old[N - 1])

    def is_key(path, leaf):
        return vz.is_key_leaf(path, leaf) or "seed" in jax.tree_util.keystr(path)

    marked, _ = jax.jit(
        functools.partial(
            vz.exploit_explore,
            space=SPACE,
            selection=selection.copy_best,
            optimizer_hparams=to_optimizer,
            is_key=is_key,
        )
    )(pop, scores, root_key(1))
    np.testing.assert_array_equal(np.asarray(marked.train_state["seed"]), raw)


def test_lineage_init_and_generation_id_take_the_typed_key_init_takes():
    typed = jax.random.wrap_key_data(jnp.asarray(root_key(0)))
    pop = make_pop()
    a, b = vz.lineage_init(pop, typed, now=1.0), vz.lineage_init(pop, root_key(0), now=1.0)
    assert a.workers == b.workers and np.array_equal(a.key, b.key)
    assert list(a.history.checkpoints()) == list(b.history.checkpoints())
    assert vz.generation_id(typed, 3) == vz.generation_id(root_key(0), 3)
    # a typed key of another implementation is no threefry key: said so, not JAX's shape error
    with pytest.raises(TypeError, match="threefry"):
        vz.init(jax.random.key(0, impl="rbg"), init_fn, SPACE, 2)
    # a raw key that is not uint32[2] integers, as core.init says (floats were cut to
    # ints: another key's ids; a negative word wrapped; helper-280)
    for bad, error in ((np.array([0.5, 7.9]), TypeError), (np.array([-1, 7]), ValueError)):
        with pytest.raises(error, match="root_key"):
            vz.generation_id(bad, 0)
        with pytest.raises(error, match="root_key"):
            vz.lineage_init(pop, bad, now=1.0)


def test_bool_initial_values_of_an_integer_space_are_widened():
    # kept as bools, every explored integer was stored as True / False
    space = {"layers": explore.randint(0, 10)}
    pop = vz.init(
        root_key(0), lambda k: jnp.zeros(()), space, hparams={"layers": np.array([True, False] * 2)}
    )
    assert pop.hparams["layers"].dtype == jnp.asarray(0).dtype  # (int32; int64 under x64)
    new, ex = vz.exploit_explore(
        pop,
        jnp.arange(4.0),
        space=space,
        explore=functools.partial(explore.resample, resample_probability=1.0),
    )
    assert new.hparams["layers"].dtype == pop.hparams["layers"].dtype
    assert np.asarray(ex.copied).any()
    assert not set(np.asarray(new.hparams["layers"])[np.asarray(ex.copied)].tolist()) <= {0, 1}


def test_init_refuses_given_hparams_that_jax_would_change_or_no_exploit_could_use():
    # 5e9 was stored as 705032704 (int32 wrap-around), 1e39 as inf and 1e-46 as 0, in the
    # optimizer and the lineage; a name the space explores, missing, failed at the
    # first exploit, after a round of training (host mode refuses it at the start)
    f = lambda k: {"w": jnp.zeros(2)}  # noqa: E731
    for given, match in (
        ([{"t": 5_000_000_000}, {"t": 1}], "outside its dtype int32"),
        ({"t": np.array([2**40, 1])}, "outside its dtype int32"),
        ([{"x": 1e39}, {"x": 1.0}], "overflows its dtype float32"),
        ([{"x": 1e-46}, {"x": 1.0}], "underflows its dtype float32"),
    ):
        with pytest.raises(ValueError, match=match):
            vz.init(root_key(0), f, hparams=given)
    space = {"lr": explore.uniform(0.0, 1.0), "wd": explore.uniform(0.0, 1.0)}
    with pytest.raises(KeyError, match=r"hparams\[0\]: meta_params\['wd'\] is missing"):
        vz.init(root_key(0), f, space, hparams=[{"lr": 0.1}, {"lr": 0.2}])
    with pytest.raises(ValueError, match=r"has shape \(\), want \(N,\)"):  # (checked first)
        vz.init(root_key(0), f, space, hparams={"lr": 0.1, "wd": 0.1})
    # what float32 / int32 hold is stored; a subnormal, which XLA computes with as 0, not
    with pytest.raises(ValueError, match="to a subnormal"):
        vz.init(root_key(0), f, hparams=[{"t": 3, "x": 1e-40}, {"t": 2, "x": 0.0}])
    pop = vz.init(root_key(0), f, hparams=[{"t": 3, "x": 1e-30}, {"t": 2**31 - 1, "x": 0.0}])
    assert np.asarray(pop.hparams["t"]).tolist() == [3, 2**31 - 1]
    assert np.asarray(pop.hparams["x"]).tolist()[1] == 0.0


def test_bool_hparams_are_recorded_as_bools_in_the_lineage():
    # member_hparams made every non-integer dtype a float: the lineage (and its journal)
    # recorded 1.0 where host mode records True
    pop = vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, hparams=[{"b": True}, {"b": False}])
    state = vz.lineage_init(pop, root_key(0), now=0.0)
    assert [w.meta_params["b"] for w in state.workers] == [True, False]
    assert all(type(w.meta_params["b"]) is bool for w in state.workers)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # (pop.scores)
def test_float64_scores_under_x64_are_ranked_exactly_in_and_out_of_jit():
    # a concrete float64 jax array skipped device_scores and was cast to float32: 1e39
    # became inf (diverged) and the best member was copied over; traced float64 scores
    # (in jit, in a fused round) were cast too, and scores float32 cannot tell apart tied
    space = {"lr": explore.uniform(0.1, 0.5)}
    best_first = functools.partial(selection.truncation, mode="max")
    with jax.enable_x64(True):
        pop = vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, space, 4)
        key = jnp.asarray([0, 1], jnp.uint32)
        for scores in (
            np.array([1e39, 5.0, 3.0, 1.0]),
            jnp.asarray([1e39, 5.0, 3.0, 1.0]),
            jnp.asarray([1.0 + 3e-9, 1.0 + 2e-9, 1.0 + 1e-9, 1.0]),
        ):
            exploit = functools.partial(vz.exploit_explore, space=space, selection=best_first)
            for run in (exploit, jax.jit(exploit)):
                _, ex = run(pop, scores, key)
                assert np.asarray(ex.copied).tolist() == [False, False, False, True]
                assert int(ex.parents[3]) == 0
        # the same in a fused round: eval_fn's float64 scores reach the selection whole
        values = jnp.asarray([1.0 + 3e-9, 1.0 + 2e-9, 1.0 + 1e-9, 1.0])
        fused = vz.round_fn(
            lambda s, b, h: (s, 0.0),
            lambda s, h, e: s["v"],
            steps_per_round=1,
            space=space,
            selection=best_first,
        )
        pop = vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, space, 4)
        pop = pop.replace(train_state={**pop.train_state, "v": values})
        _, result = jax.jit(fused)(pop, jnp.zeros(1))
        assert np.asarray(result.exploit.copied).tolist() == [False, False, False, True]
        assert result.scores.dtype == jnp.float32


def test_record_refuses_a_round_that_does_not_follow_the_lineage():
    """record journaled whatever exploit it got: a round exploited and not recorded
    left copies out of the lineage and branched later copies from the wrong generation;
    a round recorded twice, a step going back and a negative step were taken (a hostile
    test, helper-121)."""
    pop = vz.init(root_key(0), init_fn, SPACE, 4, optimizer_hparams=to_optimizer_lr)
    lineage = vz.lineage_init(pop, root_key(0), now=0.0)
    exploit = functools.partial(vz.exploit_explore, space=SPACE, optimizer_hparams=to_optimizer_lr)
    scores = jnp.arange(4.0)  # (member 3 copies member 0, mode "min")
    pop, first = exploit(pop, scores, root_key(1))
    assert np.asarray(first.copied).any()
    pop, second = exploit(pop, scores, root_key(2))
    with pytest.raises(ValueError, match="does not follow the lineage"):
        vz.record(lineage, scores, step=2, now=0.0, exploit=second)  # (first not recorded)
    recorded, _ = vz.record(lineage, scores, step=1, now=0.0, exploit=first)
    for step, ex in ((1, second), (0, second)):  # recorded twice; a step going back
        with pytest.raises(ValueError, match="recorded once each, in order"):
            vz.record(recorded, scores, step=step, now=0.0, exploit=ex)
    with pytest.raises(ValueError, match=r"step must be .* \[0, 2\*\*63\)"):
        vz.record(lineage, scores, step=-2147483648, now=0.0)  # (an int32 step wrapped)
    short = first.replace(copied=first.copied[:3])
    with pytest.raises(ValueError, match=r"exploit.copied has shape \(3,\)"):
        vz.record(lineage, scores, step=1, now=0.0, exploit=short)
    vz.record(recorded, scores, step=2, now=0.0, exploit=second)  # in order: fine


def test_record_warns_when_the_selection_ranks_against_the_lineage():
    """A selection left at mode "min" for accuracies copied the worst member over the
    best, and a lineage made with mode="max" recorded it without a word (a hostile
    test, helper-121)."""
    pop = vz.init(root_key(0), init_fn, SPACE, 4, optimizer_hparams=to_optimizer_lr)
    accuracies = jnp.asarray([0.9, 0.5, 0.6, 0.1])
    _, ex = vz.exploit_explore(
        pop, accuracies, root_key(1), space=SPACE, optimizer_hparams=to_optimizer_lr
    )
    lineage = vz.lineage_init(pop, root_key(0), now=0.0, mode="max")
    with pytest.warns(UserWarning, match="is the selection's mode the lineage's"):
        vz.record(lineage, accuracies, step=1, now=0.0, exploit=ex)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vz.record(
            vz.lineage_init(pop, root_key(0), now=0.0), accuracies, step=1, now=0.0, exploit=ex
        )


def test_hyperparameters_on_device_are_numbers():
    """A choice between bools passed init and failed at the first round; strings failed
    inside init with JAX's internal error; complex scores were ranked by their real
    part (a hostile test, helper-121)."""
    for space in ({"flag": explore.choice([False, True])}, {"opt": explore.choice(["a", "b"])}):
        with pytest.raises(TypeError, match="a choice between non-numbers"):
            vz.init(root_key(0), init_fn, space, 2)
    with pytest.raises(TypeError, match="on device a hyperparameter is an array of numbers"):
        vz.init(root_key(0), init_fn, hparams={"opt": ["adam", "sgd"]})
    pop = vz.init(
        root_key(0), init_fn, hparams={"flag": [True, False]}, optimizer_hparams=lambda h: {}
    )  # (no space: kept)
    assert pop.hparams["flag"].dtype == jnp.bool_
    pop = vz.init(root_key(0), init_fn, SPACE, 2)
    with pytest.raises(TypeError, match="real-number scores, got complex"):
        vz.exploit_explore(pop, np.asarray([5j, 2.0]), root_key(1), space=SPACE)


def test_exploit_explore_says_what_is_wrong_with_its_space_key_and_scores():
    # they failed with "'NoneType' object is not subscriptable", jax's "invalid PRNG key
    # data" and an OverflowError from a dtype check (hostile review, helper-130)
    from jaxpop.vectorized_mf import mf_pbt_round

    hparams = {"lr": np.linspace(0.1, 0.8, 8).astype(np.float32)}
    pop = vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, hparams=hparams)
    space = {"lr": explore.uniform(0.0, 1.0)}
    scores = jnp.arange(8.0)
    with pytest.raises(TypeError, match=r"needs the explore space \(space=...\).*\['lr'\]"):
        vz.exploit_explore(pop, scores, space=None)
    with pytest.raises(TypeError, match="needs the explore space"):
        mf_pbt_round(pop, scores, 1, frequencies=(1, 2), space=None)
    with pytest.raises(TypeError, match="needs the explore space"):
        vz.exploit_explore(pop, scores, space=None, explore=functools.partial(explore.perturb))
    # a population with no hyperparameters needs no space (helper-138: explore raised)
    bare = vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, hparams={}, num_members=8)
    _, exploit = vz.exploit_explore(bare, scores, space=None)
    assert (np.asarray(exploit.parents) != np.arange(8)).any()
    _, exploit = mf_pbt_round(bare, scores, 1, frequencies=(1, 2), space=None)
    # an explore of one's own may need no space (helper-133: it was refused)
    halve = lambda key, space, hparams: {k: v / 2 for k, v in hparams.items()}  # noqa: E731
    new, _ = vz.exploit_explore(pop, scores, space=None, explore=halve)
    assert np.isclose(float(new.hparams["lr"][-1]), float(hparams["lr"][0]) / 2)
    for key in (5, np.uint32(5), np.zeros(3, np.uint32), np.zeros(4, np.uint32)):
        with pytest.raises(TypeError, match=r"raw key .* of shape \(2,\)"):
            vz.exploit_explore(pop, scores, key, space=space)
    # a list of Python ints past int32: ranked as the host ranks them (the worst two,
    # members 0 and 7, copy the best two)
    _, exploit = vz.exploit_explore(pop, [2**40, *range(7)], space=space)
    parents = np.asarray(exploit.parents)
    assert set(parents[[0, 7]]) <= {1, 2} and (parents[1:7] == np.arange(1, 7)).all()


def test_record_refuses_an_exploit_that_changed_hyperparameters_without_a_copy():
    """A custom exploit= that changed a member's hyperparameters and copied no one was
    recorded with the old ones: the lineage named values the member no longer trained
    with (helper-241). A change marked as a copy of itself starts a generation."""
    pop = vz.init(root_key(0), init_fn, SPACE, 4, optimizer_hparams=to_optimizer_lr)
    lineage = vz.lineage_init(pop, root_key(0), now=0.0)
    scores = jnp.arange(4.0)
    _, ex = vz.exploit_explore(
        pop, scores, root_key(1), space=SPACE, optimizer_hparams=to_optimizer_lr
    )
    halved = {**ex.hparams, "log_lr": ex.hparams["log_lr"] - 1.0}
    kept = np.flatnonzero(~np.asarray(ex.copied))[0]
    with pytest.raises(
        ValueError, match=f"changed member {kept}'s hyperparameters .* without a copy"
    ):
        vz.record(lineage, scores, step=1, now=0.0, exploit=ex.replace(hparams=halved))
    nothing_copied = ex.replace(copied=jnp.zeros(4, bool), parents=jnp.arange(4))
    with pytest.raises(ValueError, match="changed member 0's hyperparameters"):
        vz.record(lineage, scores, step=1, now=0.0, exploit=nothing_copied.replace(hparams=halved))
    # every member a copy of itself, with new generation indices: each starts a generation
    own = nothing_copied.replace(
        hparams=halved, copied=jnp.ones(4, bool), generation=jnp.arange(4, 8, dtype=jnp.int32)
    )
    recorded, _ = vz.record(lineage, scores, step=1, now=0.0, exploit=own)
    for i, worker in enumerate(recorded.workers):
        assert worker.meta_params == vz.member_hparams(halved, i)
        assert recorded.history.first(worker.generation_id).parent == (
            lineage.workers[i].generation_id,
            1,
        )
    # an exploit that changes nothing for those who kept going is recorded as before
    vz.record(lineage, scores, step=1, now=0.0, exploit=ex)
    # a hyperparameter added for one who kept going: said so (a numpy error before)
    added = {**ex.hparams, "k": jnp.full(4, 3, jnp.int32)}
    with pytest.raises(ValueError, match="without a copy"):
        vz.record(lineage, scores, step=1, now=0.0, exploit=ex.replace(hparams=added))


def test_record_takes_a_kept_nan_hyperparameter_of_any_float_dtype_as_unchanged():
    # bfloat16's kind is "V": its NaN was taken as a change without a copy (helper-246)
    for dtype in (jnp.float32, jnp.float16, jnp.bfloat16):
        x = {"x": jnp.asarray([1.0, 2.0, 3.0], dtype)}  # (read by no optimizer: none written)
        pop = vz.init(root_key(0), init_fn, hparams=x, optimizer_hparams=lambda h: {})
        lineage = vz.lineage_init(pop, root_key(0), now=0.0)
        nan = jnp.asarray([jnp.nan, 2.0, 3.0], dtype)  # (a custom exploit's, kept at NaN)
        workers = tuple(
            w.replace(meta_params=vz.member_hparams({"x": nan}, i))
            for i, w in enumerate(lineage.workers)
        )
        lineage = lineage._with(workers=workers)
        exploit = vz.Exploit(
            parents=jnp.arange(3),
            copied=jnp.zeros(3, bool),
            old_generation=pop.generation,
            generation=pop.generation,
            hparams={"x": nan},
            step=pop.step,
        )
        vz.record(lineage, jnp.arange(3.0), step=1, now=0.0, exploit=exploit)


def test_init_says_what_is_wrong_with_member_keys():
    # a nested list raised IndexError inside jax.lax.map, a single typed key IndexError
    # while counting the members (helper-241)
    f = lambda key: {"w": jax.random.normal(key, (2,))}  # noqa: E731
    space = {"lr": explore.uniform(0.01, 0.5)}
    listed = vz.init(root_key(1), f, space, member_keys=[[0, 1], [2, 3]])
    arrayed = vz.init(root_key(1), f, space, member_keys=np.array([[0, 1], [2, 3]], np.uint32))
    np.testing.assert_array_equal(listed.train_state["w"], arrayed.train_state["w"])
    for keys, match in (
        (jax.random.key(0), r"N typed keys, shape \(N,\): got shape \(\)"),
        (jnp.zeros((3,), jnp.uint32), r"shape \(N, 2\) .* got shape \(3,\)"),
        (jnp.zeros((3, 4), jnp.uint32), r"got shape \(3, 4\)"),
        (np.zeros((3, 2)), "integers"),
        (jax.random.split(jax.random.key(0, impl="rbg"), 3), "threefry"),
    ):
        with pytest.raises(TypeError, match=match):
            vz.init(root_key(1), f, space, member_keys=keys)


def _adam_state(dtype):
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3, "b2": 0.99}, hyperparam_dtype=dtype)
    return lambda k: {"params": {"w": jnp.zeros(3)}, "opt": tx.init({"w": jnp.zeros(3)})}


def test_a_decay_rate_the_optimizers_dtype_holds_as_1_is_refused_while_tracing():
    # a space drawing b2 up to 0.9999 for an optimizer of bfloat16 hyperparameters: the
    # optimizer trained with b2 = 1 (NaN params) while the lineage recorded 0.9988
    # (host mode's set_hparams refuses the value; traced, it was cast unchecked)
    bad = {"b2": explore.uniform(0.98, 0.9999)}
    with pytest.raises(ValueError, match=r"init: space\['b2'\] .* gives a value"):
        vz.init(root_key(0), _adam_state(jnp.bfloat16), bad, 4)
    with pytest.raises(ValueError, match=r"init: hparams\['b2'\]\[1\] = 0.9998.* is 1 in bfloat16"):
        vz.init(root_key(0), _adam_state(jnp.bfloat16), hparams={"b2": [0.99, 0.9999]})
    good = {"b2": explore.uniform(0.98, 0.99)}
    pop = vz.init(root_key(0), _adam_state(jnp.bfloat16), good, 4)
    with pytest.raises(ValueError, match=r"exploit_explore: space\[.b2.\] .* gives a value"):
        vz.exploit_explore(pop, jnp.arange(4.0), root_key(1), space=bad)
    # float32 hyperparameters hold the space (and a choice of values below 1 is read too)
    vz.init(root_key(0), _adam_state(jnp.float32), bad, 4)
    with pytest.raises(ValueError, match="is 1 in bfloat16"):
        vz.init(root_key(0), _adam_state(jnp.bfloat16), {"b2": explore.choice([0.9, 0.9995])}, 4)


def test_a_space_constant_members_cannot_hold_is_refused_as_given_hparams_are():
    # 1e39 was stored (and recorded) as inf, 1e-46 as 0; a str failed inside vmap with
    # "'cnn' is not a valid JAX type"
    lr = explore.uniform(0.1, 0.5)
    for constant, error in ((1e39, "overflows"), (1e-46, "underflows"), (2**31, "outside")):
        with pytest.raises(ValueError, match=rf"space\['c'\] = .* {error}"):
            vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, {"lr": lr, "c": constant}, 2)
    with pytest.raises(TypeError, match=r"space\['net'\] is the constant 'cnn'"):
        vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, {"lr": lr, "net": "cnn"}, 2)
    pop = vz.init(root_key(0), lambda k: {"w": jnp.zeros(2)}, {"lr": lr, "c": 3, "d": 0.5}, 2)
    assert pop.hparams["c"].tolist() == [3, 3] and pop.hparams["d"].tolist() == [0.5, 0.5]


def test_the_rate_check_reads_every_injected_state_admits_1_and_covers_mf_rounds():
    # a chain of a bfloat16 and a float32 adam was checked against the last state's
    # dtype only; a space reaching 1 was refused under x64 alone (it admits 1); a
    # choice stored as bfloat16 was rounded before the check; mf_pbt_round's explore was
    # not checked at all
    def chained(first, second):
        make = functools.partial(make_optimizer, optax.adam, {"learning_rate": 1e-3, "b2": 0.99})
        tx = optax.chain(make(hyperparam_dtype=first), make(hyperparam_dtype=second))
        return lambda k: {"w": jnp.zeros(3), "opt": tx.init({"w": jnp.zeros(3)})}

    bad = {"b2": explore.uniform(0.98, 0.9999)}
    for order in ((jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16)):
        with pytest.raises(ValueError, match="is 1 in bfloat16"):
            vz.init(root_key(0), chained(*order), bad, 4)
    vz.init(root_key(0), _adam_state(jnp.float32), {"b2": explore.uniform(0.9, 1.0)}, 4)
    pop = vz.init(root_key(0), _adam_state(jnp.bfloat16), hparams={"b2": [0.98, 0.98]})
    with pytest.raises(ValueError, match=r"0\.9995 is 1 in bfloat16"):
        vz.exploit_explore(pop, jnp.arange(2.0), space={"b2": explore.choice([0.98, 0.9995])})
    from jaxpop import vectorized_mf

    good = vz.init(root_key(0), _adam_state(jnp.bfloat16), {"b2": explore.uniform(0.98, 0.99)}, 4)
    with pytest.raises(ValueError, match="is 1 in bfloat16"):
        vectorized_mf.mf_pbt_round(
            good, jnp.arange(4.0), 1, root_key(1), space=bad, frequencies=(1,)
        )


def test_a_custom_explores_result_is_checked_and_projected_onto_the_space():
    """A custom explore's result was stored as it came (helper-299): ``h * 100`` past the
    space's bounds, a scalar broadcast to every copy, a missing key a bare KeyError."""
    pop = make_pop()
    scores = jnp.arange(float(pop.size))  # (the last members copy the first ones)
    times_100 = lambda key, space, h: {k: v * 100 for k, v in h.items()}  # noqa: E731
    new, ex = vz.exploit_explore(pop, scores, space=SPACE, explore=times_100)
    copied = np.asarray(ex.copied)
    assert copied.any()
    for name, dimension in SPACE.items():
        values = np.asarray(new.hparams[name])[copied]
        assert ((values >= dimension.low) & (values <= dimension.high)).all(), name
    for bad, error, match in (
        (lambda key, space, h: {k: v[0] for k, v in h.items()}, ValueError, "shape"),
        (lambda key, space, h: {"log_lr": h["log_lr"]}, TypeError, "hyperparameters it was"),
        (lambda key, space, h: [h], TypeError, "a dict of"),
    ):
        with pytest.raises(error, match=match):
            vz.exploit_explore(pop, scores, space=SPACE, explore=bad)


@pytest.mark.filterwarnings("ignore:none of the population's hyperparameters")
def test_a_custom_explore_wrapping_jaxpops_may_give_the_spaces_constants_as_scalars():
    """A wrapper around jaxpop's explore gives a space's constant as a scalar, or for a
    key the population does not hold: the first version of the check refused both
    (helper-300)."""
    space = {"a": explore.uniform(0.0, 1.0), "wd": 0.0}
    wrapped = lambda k, s, h: explore.perturb(k, s, h, perturbation_factors=(0.5, 2.0))  # noqa: E731
    scores = jnp.arange(4.0)
    for given in (None, {"a": jnp.full(4, 0.5)}):
        pop = vz.init(root_key(0), init_fn, space, 4, hparams=given)
        new, _ = vz.exploit_explore(pop, scores, space=space, explore=wrapped)
        assert set(new.hparams) == set(pop.hparams)
        if "wd" in new.hparams:
            assert np.asarray(new.hparams["wd"]).tolist() == [0.0] * 4
        a = np.asarray(new.hparams["a"])
        assert ((a >= 0.0) & (a <= 1.0)).all()
