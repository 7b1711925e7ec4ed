"""Tests of the fused round (jaxpop.vectorized.round_fn), the step given to member steps,
and the ways to start a vectorized population (init from given keys and hyperparameters)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_vectorized import (
    SPACE,
    STEP,
    TraceCounter,
    batch,
    compilations,
    init_fn,
    make_pop,
    member,
    to_optimizer,
    train_step,
)

from jaxpop import PopulationBasedTraining, core
from jaxpop import vectorized as vz
from jaxpop.keys import root_key
from jaxpop.mutators import explore, selection
from jaxpop.vectorized_mf import mf_pbt_round

N = 8
K = 3
SELECT = functools.partial(selection.truncation, quantile_fraction=0.25)
EVAL_DATA = batch(99)


def evaluate(state, hparams, data):
    """One member's validation loss on ``data``, and its mean prediction as an extra."""
    del hparams
    x, y = data
    pred = jnp.tanh(x @ state["params"]["w"] + state["params"]["b"])
    return jnp.mean((pred - y) ** 2), jnp.mean(pred)


def stacked(batches):
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def round_batches(r):
    return [batch(r * K + t) for t in range(K)]


ROUND = jax.jit(
    vz.round_fn(
        train_step,
        evaluate,
        steps_per_round=K,
        space=SPACE,
        selection=SELECT,
        optimizer_hparams=to_optimizer,
    ),
    donate_argnums=0,
)
EVALUATE = jax.jit(jax.vmap(evaluate, in_axes=(0, 0, None)))
EXPLOIT = jax.jit(
    functools.partial(
        vz.exploit_explore, space=SPACE, selection=SELECT, optimizer_hparams=to_optimizer
    )
)


def lineage_rows(state):
    return (
        [
            (c.generation_id, c.step, c.value, c.parent, c.meta_params, c.time)
            for c in state.history.checkpoints()
        ],
        state.workers,
        state.num_events,
    )


def assert_same_population(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_a_fused_round_gives_the_population_and_lineage_of_the_step_by_step_path():
    stepwise, fused = make_pop(), make_pop()
    lineage_a = vz.lineage_init(stepwise, root_key(0), now=0.0)
    lineage_b = vz.lineage_init(fused, root_key(0), now=0.0)
    for r in range(4):
        batches = round_batches(r)
        losses = []
        for b in batches:
            stepwise, loss = STEP(stepwise, b)
            losses.append(loss)
        scores, means = EVALUATE(stepwise.train_state, stepwise.hparams, EVAL_DATA)
        at = int(stepwise.step)
        stepwise, exploit = EXPLOIT(stepwise, scores)
        lineage_a, changes_a = vz.record(lineage_a, scores, step=at, now=1.0 + r, exploit=exploit)

        fused, result = ROUND(fused, stacked(batches), EVAL_DATA)
        lineage_b, changes_b = vz.record(lineage_b, result, now=1.0 + r)

        assert_same_population(fused, stepwise)
        assert_same_population(result.exploit, exploit)
        np.testing.assert_array_equal(result.scores, scores)
        np.testing.assert_array_equal(result.evaluation, means)
        np.testing.assert_array_equal(result.metrics, np.stack(losses))  # (K, N)
        assert int(result.step) == at == (r + 1) * K
        assert changes_b == changes_a
    assert lineage_rows(lineage_b) == lineage_rows(lineage_a)
    assert int(fused.num_generations) > N  # members were copied along the way


def test_the_fused_round_compiles_once_across_rounds_and_updates_in_place():
    counted = TraceCounter(
        vz.round_fn(
            train_step,
            evaluate,
            steps_per_round=K,
            space=SPACE,
            selection=selection.tournament,
            optimizer_hparams=to_optimizer,
        )
    )
    fused = jax.jit(counted, donate_argnums=0)
    pop = make_pop()
    old = pop
    pop, _ = fused(pop, stacked(round_batches(0)), EVAL_DATA)
    # donated: the population passed in was updated in place, its buffers are gone
    assert old.train_state["params"]["w"].is_deleted()
    seen = {float(pop.hparams["log_lr"][0])}
    with compilations() as compiled:
        for r in range(1, 20):
            pop, _ = fused(pop, stacked(round_batches(r % 4)), EVAL_DATA)
            seen.add(float(pop.hparams["log_lr"][0]))
    assert counted.count == 1
    assert compiled == []
    assert len(seen) > 1 and int(pop.num_generations) > N
    assert int(pop.step) == 20 * K


def test_a_data_function_draws_each_steps_batch_on_device_from_the_population_key():
    def draw(key, step, data):
        x = jax.random.normal(key, (16, 4)) + data
        return x, jnp.tanh(x[:, :3] * 0.7)

    fused = jax.jit(
        vz.round_fn(
            train_step,
            evaluate,
            steps_per_round=K,
            space=SPACE,
            selection=SELECT,
            optimizer_hparams=to_optimizer,
            data_fn=draw,
        ),
        donate_argnums=0,
    )
    stepwise, pop = make_pop(), make_pop()
    for _ in range(2):
        # the documented rule: split pop.key once per round; step t draws with
        # fold_in(data_key, t); then exploit_explore splits the population key again
        own_key, data_key = jax.random.split(stepwise.key)
        stepwise = stepwise.replace(key=own_key)
        for _ in range(K):
            b = draw(jax.random.fold_in(data_key, stepwise.step), stepwise.step, 0.5)
            stepwise, _ = STEP(stepwise, b)
        scores, _ = EVALUATE(stepwise.train_state, stepwise.hparams, EVAL_DATA)
        stepwise, _ = EXPLOIT(stepwise, scores)
        pop, _ = fused(pop, jnp.float32(0.5), EVAL_DATA)
    # drawn inside the compiled round, the batches may be fused into the step, which
    # changes the last bits (not the decisions)
    np.testing.assert_array_equal(pop.generation, stepwise.generation)
    np.testing.assert_array_equal(pop.key, stepwise.key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), pop, stepwise)


def test_two_copies_of_one_parent_draw_different_data_and_noise():
    """After an exploit, copies of one parent hold the same weights and hyperparameters,
    yet their next steps see different augmentation noise and different batches."""

    def noisy_step(state, b, hparams):
        key, noise_key = jax.random.split(state["key"])
        noise = jax.random.normal(noise_key, ())
        new, loss = train_step(state, (b[0] + 0.1 * noise, b[1]), hparams)
        return {**new, "key": key}, {"noise": noise, "data": jnp.sum(b[0]), "loss": loss}

    def draw(key, step, data):
        del step, data
        x = jax.random.normal(key, (16, 4))
        return x, jnp.tanh(x[:, :3] * 0.7)

    def with_keys(seed):
        pop = make_pop(seed)
        keys = jax.random.key_data(jax.random.split(jax.random.key(seed), N))
        return pop.replace(train_state={**pop.train_state, "key": keys})

    def run(is_key):
        fused = jax.jit(
            vz.round_fn(
                noisy_step,
                evaluate,
                steps_per_round=K,
                space=SPACE,
                selection=selection.copy_best,
                explore=lambda key, space, hparams: hparams,  # copies keep the parent's
                optimizer_hparams=to_optimizer,
                is_key=is_key,
                data_fn=draw,
                per_member_batch=True,
            )
        )
        pop, first = fused(with_keys(0), None, EVAL_DATA)
        copies = np.flatnonzero(np.asarray(first.exploit.copied))
        parent = int(first.exploit.parents[copies[0]])
        assert len(copies) == N - 1 and set(np.asarray(first.exploit.parents)) == {parent}
        # the copies are their parent's weights and hyperparameters, bit for bit
        for i in copies:
            jax.tree.map(
                np.testing.assert_array_equal,
                member(pop.train_state["params"], int(i)),
                member(pop.train_state["params"], parent),
            )
            for name in SPACE:
                assert float(pop.hparams[name][i]) == float(pop.hparams[name][parent])
        pop, second = fused(pop, None, EVAL_DATA)
        return copies, second.metrics, second.scores

    copies, metrics, scores = run(vz.is_key_leaf)
    noise = np.asarray(metrics["noise"])[:, copies]  # (K, copies)
    data = np.asarray(metrics["data"])[:, copies]
    for step in range(K):
        assert len(set(noise[step].tolist())) == len(copies)  # every copy its own noise
        assert len(set(data[step].tolist())) == len(copies)  # and its own batch
    # so they diverged: the round's evaluation (before its exploit) tells them apart
    assert len(set(np.asarray(scores)[copies].tolist())) == len(copies)

    # the control: were the keys copied as they are, the copies would share one stream
    copies, metrics, _ = run(lambda path, leaf: False)
    noise = np.asarray(metrics["noise"])[:, copies]
    assert all(len(set(noise[step].tolist())) == 1 for step in range(K))


def test_a_custom_exploit_runs_inside_the_round_mf_pbt():
    frequencies = (1, 2)

    def mf_exploit(pop, scores):
        return mf_pbt_round(
            pop,
            scores,
            pop.step // K,
            frequencies=frequencies,
            space=SPACE,
            optimizer_hparams=to_optimizer,
        )

    fused = jax.jit(
        vz.round_fn(train_step, evaluate, steps_per_round=K, exploit=mf_exploit),
        donate_argnums=0,
    )
    mf = jax.jit(
        functools.partial(
            mf_pbt_round, frequencies=frequencies, space=SPACE, optimizer_hparams=to_optimizer
        )
    )
    stepwise, pop = make_pop(), make_pop()
    for r in range(1, 4):
        for b in round_batches(r):
            stepwise, _ = STEP(stepwise, b)
        scores, _ = EVALUATE(stepwise.train_state, stepwise.hparams, EVAL_DATA)
        stepwise, exploit = mf(stepwise, scores, r)
        pop, result = fused(pop, stacked(round_batches(r)), EVAL_DATA)
        assert_same_population(pop, stepwise)
        assert_same_population(result.exploit, exploit)


def test_round_fn_refuses_bad_arguments():
    with pytest.raises(TypeError, match="space="):
        vz.round_fn(train_step, evaluate, steps_per_round=K)
    with pytest.raises(ValueError, match="at least 1"):
        vz.round_fn(train_step, evaluate, steps_per_round=0, space=SPACE)
    with pytest.raises(TypeError, match="steps_per_round must be an int"):
        vz.round_fn(train_step, evaluate, steps_per_round=2.0, space=SPACE)
    with pytest.raises(TypeError, match="steps_per_round must be an int"):
        vz.round_fn(train_step, evaluate, steps_per_round=np.bool_(True), space=SPACE)
    vz.round_fn(train_step, evaluate, steps_per_round=np.int64(K), space=SPACE)  # numpy's int
    fused = vz.round_fn(train_step, evaluate, steps_per_round=K, space=SPACE)
    with pytest.raises(ValueError, match=r"leading axis of 3"):
        fused(make_pop(), stacked([batch(0), batch(1)]), EVAL_DATA)  # 2 batches, K = 3
    _, result = jax.jit(fused)(make_pop(), stacked(round_batches(0)), EVAL_DATA)
    lineage = vz.lineage_init(make_pop(), root_key(0), now=0.0)
    with pytest.raises(TypeError, match="RoundResult and an exploit"):
        vz.record(lineage, result, now=1.0, exploit=result.exploit)
    with pytest.raises(TypeError, match="step="):
        vz.record(lineage, result.scores, now=1.0)


def test_the_member_step_gets_the_population_step_when_asked():
    def step_with_t(state, b, hparams, t):
        new, loss = train_step(state, b, hparams)
        return new, (loss, t)

    lifted = jax.jit(vz.vmap_train_step(step_with_t, with_step=True))
    pop = make_pop()
    plain = make_pop()
    for t in range(3):
        pop, (loss, seen) = lifted(pop, batch(t))
        plain, plain_loss = STEP(plain, batch(t))
        np.testing.assert_array_equal(seen, np.full(N, t))
        np.testing.assert_array_equal(loss, plain_loss)
    # inside a fused round the step keeps counting across rounds
    fused = jax.jit(
        vz.round_fn(
            step_with_t,
            evaluate,
            steps_per_round=K,
            space=SPACE,
            optimizer_hparams=to_optimizer,
            with_step=True,
        )
    )
    for r in range(2):
        pop, result = fused(pop, stacked(round_batches(r)), EVAL_DATA)
        start = 3 + r * K
        np.testing.assert_array_equal(
            result.metrics[1], np.repeat(np.arange(start, start + K)[:, None], N, axis=1)
        )


def test_plain_init_is_one_compiled_program():
    with compilations() as compiled:
        pop = vz.init(root_key(0), init_fn, SPACE, N, optimizer_hparams=to_optimizer)
        jax.block_until_ready(pop)
    assert len(compiled) == 1  # not one per operation
    assert_same_population(pop, make_pop())  # the same as init under jit


def test_init_from_a_host_runs_keys_and_initial_population_starts_identical():
    key = root_key(5)
    host_keys = jax.random.split(jax.random.key(11), N)  # whatever the host run uses
    population = [{"log_lr": -4.0 + 0.25 * i, "b1": 0.5 + 0.0625 * i} for i in range(N)]
    pop = vz.init(
        key, init_fn, member_keys=host_keys, hparams=population, optimizer_hparams=to_optimizer
    )
    assert pop.size == N
    host_init = jax.jit(init_fn)
    for i in range(N):
        jax.tree.map(
            np.testing.assert_array_equal,
            member(pop.train_state["params"], i),
            host_init(host_keys[i])["params"],
        )
        assert vz.member_hparams(pop.hparams, i) == population[i]
    # the lineage is the one core.init starts a host-mode run with
    mutator = PopulationBasedTraining(perturbation_interval=K, hyperparam_space=SPACE)
    host = core.init(population, mutator, key=key, now=0.0)
    lineage = vz.lineage_init(pop, key, now=0.0)
    assert lineage.workers == host.workers
    assert list(lineage.history.checkpoints()) == list(host.history.checkpoints())

    # and the other way round: init's own keys, for a host run to start like it
    sampled = vz.init(key, init_fn, SPACE, N, optimizer_hparams=to_optimizer)
    again = vz.init(
        key, init_fn, SPACE, member_keys=vz.init_keys(key, N), optimizer_hparams=to_optimizer
    )
    assert_same_population(again, sampled)
    jax.tree.map(
        np.testing.assert_array_equal,
        member(sampled.train_state["params"], 3),
        host_init(vz.init_keys(key, N)[3])["params"],
    )


def test_init_refuses_member_counts_that_disagree():
    with pytest.raises(ValueError, match="different member counts"):
        vz.init(root_key(0), init_fn, SPACE, N, member_keys=vz.init_keys(root_key(0), N - 1))
    with pytest.raises(ValueError, match=r"hparams\['lr'\] has shape \(\), want \(N,\)"):
        vz.init(root_key(0), init_fn, hparams={"lr": 0.1})
    with pytest.raises(TypeError, match="explore space"):
        vz.init(root_key(0), init_fn, num_members=N)
    with pytest.raises(TypeError, match="num_members"):
        vz.init(root_key(0), init_fn, SPACE)
    with pytest.raises(ValueError, match="names"):
        vz.init(root_key(0), init_fn, hparams=[{"lr": 0.1}, {"b1": 0.5}])
    for key in ([0.5, 1.5], np.array([True, False])):  # (cast, [0.5, 1.5] was [0, 1])
        with pytest.raises(TypeError, match="a raw key is an array of uint32"):
            vz.init(key, init_fn, SPACE, N)


def test_the_vectorized_example_compiles_its_round_once(tmp_path):
    from examples.vectorized import train as example

    argv = ["--steps", "30", "--workers", "4", "--eval-every", "10", "--no-progress"]
    argv += ["--batch-size", "16"]  # what is checked does not depend on it
    summary = example.main([*argv, "--log-dir", str(tmp_path)])
    assert summary["compilations"] == 1
    assert summary["exploit_events"] >= 1


def test_an_eval_fn_may_return_its_score_and_aux_as_a_list_or_a_tuple():
    space = {"lr": explore.uniform(0.1, 0.5)}

    def step(state, batch, hparams):
        return state - hparams["lr"] * state, jnp.sum(state)

    results = []
    for pack in (tuple, list):

        def evaluate(state, hparams, data, pack=pack):
            return pack((jnp.sum(state), jnp.max(state)))

        pop = vz.init(root_key(0), lambda k: jax.random.normal(k, (3,)), space, 4)
        round_ = jax.jit(vz.round_fn(step, evaluate, steps_per_round=1, space=space))
        _, result = round_(pop, jnp.zeros((1,)))
        assert result.scores.shape == (4,) and result.evaluation.shape == (4,)
        results.append((np.asarray(result.scores), np.asarray(result.evaluation)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_an_eval_fn_that_returns_no_score_per_member_is_told_what_to_return():
    # a 1- or 3-tuple failed unpacking, a dict of metrics in float(), and a complex score
    # was silently cut to its real part
    space = {"lr": explore.uniform(0.1, 0.5)}
    pop = vz.init(root_key(0), lambda k: jax.random.normal(k, (3,)), space, 4)

    def step(state, batch, hparams):
        return state - hparams["lr"] * state, jnp.sum(state)

    answers = {
        "a sequence of 1": lambda s, h, _: (jnp.sum(s),),
        "a sequence of 3": lambda s, h, _: (jnp.sum(s), 1.0, 2.0),
        "got dict": lambda s, h, _: {"loss": jnp.sum(s)},
        "got complex64": lambda s, h, _: jnp.sum(s) + 1j,
        r"float32\[4, 3\]": lambda s, h, _: s,
    }
    for message, evaluate in answers.items():
        round_ = jax.jit(vz.round_fn(step, evaluate, steps_per_round=1, space=space))
        with pytest.raises(TypeError, match=message):
            round_(pop, jnp.zeros((1,)))

    # an exploit of one's own takes the scores it wants (two objectives per member, say)
    def by_first_objective(pop, scores):
        return vz.exploit_explore(pop, scores[:, 0], space=space)

    round_ = vz.round_fn(step, lambda s, h, _: s[:2], steps_per_round=1, exploit=by_first_objective)
    _, result = jax.jit(round_)(pop, jnp.zeros((1,)))
    assert result.scores.shape == (4, 2)


def test_init_refuses_a_nested_space():
    with pytest.raises(TypeError, match=r"flat.*space\['opt'\] is a dict"):
        vz.init(root_key(0), init_fn, {"opt": {"lr": explore.uniform(0.1, 0.5)}}, N)
    with pytest.raises(TypeError, match=r"space\['lrs'\] is a list"):
        vz.init(root_key(0), init_fn, {"lrs": [explore.uniform(0.1, 0.5)] * 2}, N)
    with pytest.raises(TypeError, match="a dict"):
        vz.init(root_key(0), init_fn, [explore.uniform(0.1, 0.5)], N)


def test_weakly_typed_initial_hparams_do_not_make_the_round_trace_twice():
    # hparams made from a Python number are weakly typed; the first exploit stored its
    # explored values strongly typed, so the jitted round traced a second time
    space = {"lr": explore.uniform(0.1, 0.5)}
    traces = []

    def step(state, batch, hparams):
        traces.append(1)
        return state - hparams["lr"] * batch, jnp.sum(state)

    weak = jax.vmap(lambda i: 0.25)(jnp.arange(4))
    assert jax.typeof(weak).weak_type
    pop = vz.init(root_key(0), lambda k: jnp.ones(2), space, hparams={"lr": weak})
    assert not jax.typeof(pop.hparams["lr"]).weak_type
    round_ = jax.jit(vz.round_fn(step, lambda s, h, _: jnp.sum(s), steps_per_round=2, space=space))
    for _ in range(3):
        pop, _ = round_(pop, jnp.ones(2))
    assert len(traces) == 1
