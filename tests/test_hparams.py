"""Online hyperparameters (jaxpop.hparams): set inside jit, never recompile, same numbers."""

from __future__ import annotations

import decimal
import fractions
import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax.training import train_state
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import compilations
from jaxpop.hparams import (
    as_traced,
    find_hparam_states,
    get_hparams,
    make_optimizer,
    select_hparams,
    set_hparams,
)

RTOL = 2e-5


# -- a small MLP and helpers ---------------------------------------------------------------
def init_mlp(key: jax.Array, sizes=(8, 16, 4)) -> dict:
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        key, sub = jax.random.split(key)
        params[f"w{i}"] = jax.random.normal(sub, (n_in, n_out)) / math.sqrt(n_in)
        params[f"b{i}"] = jnp.zeros(n_out)
    return params


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    n = len(params) // 2
    for i in range(n):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            x = jnp.tanh(x)
    return jnp.mean((x - y) ** 2)


def batch(seed: int = 0, n: int = 32) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, 8)), jax.random.normal(ky, (n, 4))


def counted_jit(fn, **jit_kwargs):
    """``jax.jit(fn)`` and a list that grows by one each time ``fn`` is traced."""
    traces: list[int] = []

    def traced(*args, **kwargs):
        traces.append(1)
        return fn(*args, **kwargs)

    return jax.jit(traced, **jit_kwargs), traces


def jit_counting(fn):
    """``jax.jit(fn)`` that counts its traces (``.traces``, one entry each) and its XLA
    compilations (``.compiles``), through public APIs."""
    jitted, traces = counted_jit(fn)

    def call(*args, **kwargs):
        with compilations() as compiled:
            out = jitted(*args, **kwargs)
        call.compiles += len(compiled)
        return out

    call.traces, call.compiles = traces, 0
    return call


def warm_state(tx, params, steps: int = 3):
    """An optimizer state after a few updates (non-trivial moments and counts)."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    for i in range(steps):
        grads = jax.grad(loss_fn)(params, *batch(100 + i))
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def assert_trees_close(a, b, rtol=RTOL):
    """Elementwise close, with an absolute slack of 1e-6 of the largest reference value.

    A jitted and an eager Adam step fuse differently, so an element that is tiny next
    to the rest (a near-cancelling moment) can differ in its last bits relative to
    itself while agreeing to float32 precision relative to the update's scale.
    """
    assert jax.tree.structure(a) == jax.tree.structure(b)
    scale = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-6 * scale)


def make_update_step(tx):
    """A jitted update that sets ``hparams`` first, with a trace counter.

    It takes the gradients as an argument, so that the reference computes its update
    from the very same gradients (Adam divides by sqrt(nu): a gradient computed by a
    differently fused program can differ by an ulp and the update by much more).
    """

    def update(params, opt_state, grads, hparams):
        return tx.update(grads, set_hparams(opt_state, hparams), params)

    return counted_jit(update)


PARAMS = init_mlp(jax.random.key(0))


# -- one compile, many values --------------------------------------------------------------
def test_learning_rate_changes_100_times_compile_once():
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3})

    def train_step(params, opt_state, x, y, lr):
        opt_state = set_hparams(opt_state, {"learning_rate": lr})
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    step, traces = counted_jit(train_step)
    params, opt_state = PARAMS, tx.init(PARAMS)
    x, y = batch()
    lrs = np.geomspace(1e-4, 1e-1, 100)
    for i, lr in enumerate(lrs):
        # values of every Python type: as_traced makes the step's argument one aval
        value = [float(lr), np.float64(lr), jnp.asarray(lr), np.float32(lr)][i % 4]
        params, opt_state = step(params, opt_state, x, y, as_traced(value))
        assert float(get_hparams(opt_state)["learning_rate"]) == pytest.approx(lr, rel=1e-6)
    assert len(traces) == 1


def test_set_outside_jit_with_any_python_type_compiles_once():
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3})

    def train_step(params, opt_state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    step, traces = counted_jit(train_step)
    params, opt_state = PARAMS, tx.init(PARAMS)
    x, y = batch()
    for i, lr in enumerate(np.geomspace(1e-4, 1e-1, 100)):
        value = [float(lr), np.float64(lr), jnp.asarray(lr), np.float32(lr), 1][i % 5]
        opt_state = set_hparams(opt_state, {"learning_rate": value})  # eagerly, on the host
        params, opt_state = step(params, opt_state, x, y)
    assert len(traces) == 1


def test_updates_use_the_new_learning_rate():
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3})
    params, state = warm_state(tx, PARAMS)
    step, traces = make_update_step(tx)
    x, y = batch(7)
    grads = jax.grad(loss_fn)(params, x, y)
    for lr in (1e-5, 3e-3, 0.1, 1.0):
        lr32 = jnp.float32(lr)
        updates, new_state = step(params, state, grads, {"learning_rate": lr32})
        ref_updates, ref_inner = optax.adam(lr32).update(grads, state.inner_state, params)
        assert_trees_close(updates, ref_updates)
        assert_trees_close(new_state.inner_state, ref_inner)
        assert new_state.hyperparams["learning_rate"] == lr32
    assert len(traces) == 1


def test_adam_betas_and_lr_any_values_one_compile():
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999})
    params, state = warm_state(tx, PARAMS)
    step, traces = make_update_step(tx)
    x, y = batch(3)
    grads = jax.grad(loss_fn)(params, x, y)

    @settings(max_examples=25, deadline=None, database=None)
    @given(
        lr=st.floats(1e-5, 1.0),
        b1=st.floats(0.0, 0.99),
        b2=st.floats(0.5, 0.9999),
    )
    def check(lr, b1, b2):
        hp = {k: jnp.float32(v) for k, v in {"learning_rate": lr, "b1": b1, "b2": b2}.items()}
        updates, _ = step(params, state, grads, hp)
        ref, _ = optax.adam(hp["learning_rate"], b1=hp["b1"], b2=hp["b2"]).update(
            grads, state.inner_state, params
        )
        assert_trees_close(updates, ref, rtol=1e-4)

    check()
    assert len(traces) == 1


def test_inside_chain():
    tx = optax.chain(
        optax.clip_by_global_norm(0.5), make_optimizer(optax.adam, {"learning_rate": 1e-3})
    )
    params, state = warm_state(tx, PARAMS)
    step, traces = make_update_step(tx)
    x, y = batch(5)
    grads = jax.grad(loss_fn)(params, x, y)
    for lr in (1e-4, 0.02, 0.5):
        lr32 = jnp.float32(lr)
        updates, new_state = step(params, state, grads, {"learning_rate": lr32})
        ref_tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(lr32))
        ref, _ = ref_tx.update(grads, (state[0], state[1].inner_state), params)
        assert_trees_close(updates, ref)
        assert get_hparams(new_state)["learning_rate"] == lr32
    assert len(traces) == 1
    assert [path for path, _ in find_hparam_states(state)] == ["[1]"]


def test_inside_multisteps():
    inner = make_optimizer(optax.adam, {"learning_rate": 1e-3})
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    params, state = warm_state(tx, PARAMS, steps=4)
    step, traces = make_update_step(tx)
    x, y = batch(9)
    grads = jax.grad(loss_fn)(params, x, y)
    for lr in (1e-4, 0.05):
        lr32 = jnp.float32(lr)
        ref_tx = optax.MultiSteps(optax.adam(lr32), every_k_schedule=2)
        ref_state = state._replace(inner_opt_state=state.inner_opt_state.inner_state)
        s = state
        for _ in range(2):  # the second call applies the accumulated step
            updates, s = step(params, s, grads, {"learning_rate": lr32})
            ref, ref_state = ref_tx.update(grads, ref_state, params)
            assert_trees_close(updates, ref)
        assert any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))
        assert get_hparams(s)["learning_rate"] == lr32
    assert len(traces) == 1


def test_nested_multisteps_chain_and_train_state():
    adam = make_optimizer(optax.adam, {"learning_rate": 1e-3, "b1": 0.9})
    tx = optax.MultiSteps(optax.chain(optax.clip(1.0), adam), every_k_schedule=3)
    ts = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=tx)
    assert [p for p, _ in find_hparam_states(ts.opt_state)] == [".inner_opt_state[1]"]
    assert [p for p, _ in find_hparam_states(ts)] == [".opt_state.inner_opt_state[1]"]

    ts2 = set_hparams(ts, {"learning_rate": 0.2, "b1": 0.5})  # the whole TrainState
    assert isinstance(ts2, train_state.TrainState)
    assert ts2.tx is tx and ts2.step == ts.step
    hp = get_hparams(ts2)
    assert hp["learning_rate"] == jnp.float32(0.2) and hp["b1"] == jnp.float32(0.5)
    assert get_hparams(ts)["learning_rate"] == jnp.float32(1e-3)  # untouched

    def train_step(ts, lr):
        ts = ts.replace(opt_state=set_hparams(ts.opt_state, {"learning_rate": lr}))
        return ts.apply_gradients(grads=jax.grad(loss_fn)(ts.params, *batch()))

    train, traces = counted_jit(train_step)
    for lr in (0.1, 0.01, 0.001, 0.0001):
        ts = train(ts, jnp.float32(lr))
        assert get_hparams(ts)["learning_rate"] == jnp.float32(lr)
    # one trace; jit's C++ cache keeps a 2nd entry because TrainState.create's step is
    # a Python int (0) and later an array, so jit's cache would hold 2 entries here
    assert len(traces) == 1


def test_inject_inside_inject_and_multi_transform():
    def outer(scale):
        return optax.chain(make_optimizer(optax.sgd, {"learning_rate": 0.1}), optax.scale(scale))

    tx = optax.inject_hyperparams(outer)(scale=2.0)
    state = tx.init(PARAMS)
    assert [p for p, _ in find_hparam_states(state)] == ["", ".inner_state[0]"]
    new = set_hparams(state, {"scale": 3.0, "learning_rate": 0.5})
    # sgd's momentum=None is not a number: optax bakes it in, it cannot be set online
    assert set(get_hparams(new)) == {"scale", "learning_rate"}
    assert get_hparams(new)["learning_rate"] == jnp.float32(0.5)
    assert get_hparams(new)["scale"] == jnp.float32(3.0)

    labels = {k: ("a" if k.startswith("w") else "b") for k in PARAMS}
    mt = optax.multi_transform(
        {
            "a": make_optimizer(optax.adam, {"learning_rate": 1e-3}),
            "b": make_optimizer(optax.sgd, {"learning_rate": 1e-2}),
        },
        labels,
    )
    ms = mt.init(PARAMS)
    assert len(find_hparam_states(ms)) == 2
    with pytest.raises(ValueError, match="held by two injected states"):
        get_hparams(ms)
    both = set_hparams(ms, {"learning_rate": 0.3})  # written into every holder
    assert all(
        s.hyperparams["learning_rate"] == jnp.float32(0.3) for _, s in find_hparam_states(both)
    )
    only_adam = set_hparams(ms, {"b1": 0.5})
    (_, a), (_, b) = find_hparam_states(only_adam)
    assert a.hyperparams["b1"] == jnp.float32(0.5) and "b1" not in b.hyperparams


def test_deprecated_inject_state_class():
    tx = make_optimizer(optax.sgd, {"learning_rate": 0.1})
    s = tx.init(PARAMS)
    old = optax.InjectHyperparamsState(s.count, s.hyperparams, s.inner_state)
    new = set_hparams(old, {"learning_rate": 0.2})
    assert isinstance(new, optax.InjectHyperparamsState)
    assert get_hparams(new)["learning_rate"] == jnp.float32(0.2)


# -- values: dtype, weak type, no mutation -------------------------------------------------
def test_written_values_keep_dtype_and_strong_type_and_nothing_is_mutated():
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3}, b2=0.99, hyperparam_dtype=jnp.bfloat16)
    state = tx.init(PARAMS)
    before = dict(state.hyperparams)
    hp_dict = state.hyperparams
    for value in (0.5, np.float64(0.5), jnp.float32(0.5), np.array(0.5), 1):
        new = set_hparams(state, {"learning_rate": value})
        lr = new.hyperparams["learning_rate"]
        assert lr.dtype == jnp.bfloat16 and not jax.typeof(lr).weak_type
        assert new.hyperparams is not hp_dict
    assert state.hyperparams is hp_dict and state.hyperparams == before
    assert jax.tree.map(jax.typeof, set_hparams(state, {"b1": 0.3})) == jax.tree.map(
        jax.typeof, state
    )


def test_weak_integer_hyperparameter_stays_weak_no_retrace():
    tx = optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=1)  # a Python int
    state = tx.init(PARAMS)
    assert jax.typeof(state.hyperparams["max_norm"]).weak_type

    @jit_counting
    def step(state, max_norm):
        state = set_hparams(state, {"max_norm": max_norm})
        return tx.update(jax.grad(loss_fn)(PARAMS, *batch()), state, PARAMS)

    for max_norm in (2, np.int64(3), jnp.int32(4), 5):
        _, state = step(state, as_traced(max_norm, jnp.int32))
        assert int(get_hparams(state)["max_norm"]) == int(max_norm)
    assert len(step.traces) == 1 and step.compiles == 1
    with pytest.raises(TypeError, match="round it"):
        set_hparams(state, {"max_norm": 2.5})


# -- errors ---------------------------------------------------------------------------------
def test_unknown_name_raises_key_error_listing_names():
    state = make_optimizer(optax.adam, {"learning_rate": 1e-3}).init(PARAMS)
    with pytest.raises(KeyError, match=r"lr.*available.*b1.*learning_rate"):
        set_hparams(state, {"lr": 0.1})
    with pytest.raises(KeyError):
        jax.jit(lambda s: set_hparams(s, {"beta1": 0.5}))(state)


def test_shape_mismatch_raises_value_error():
    state = make_optimizer(optax.adam, {"learning_rate": 1e-3}).init(PARAMS)
    with pytest.raises(ValueError, match=r"'learning_rate' has shape \(\), .*\(3,\)"):
        set_hparams(state, {"learning_rate": jnp.ones(3)})


def test_no_inject_state_raises():
    state = optax.adam(1e-3).init(PARAMS)
    with pytest.raises(ValueError, match="no injected hyperparameters"):
        set_hparams(state, {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="no injected hyperparameters"):
        get_hparams(state)
    assert find_hparam_states(state) == []


def test_scheduled_hyperparameter_cannot_be_set():
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=optax.linear_schedule(0.1, 0.0, 10))
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="follow a schedule"):
        set_hparams(state, {"learning_rate": 0.5})
    assert get_hparams(set_hparams(state, {"b1": 0.5}))["b1"] == jnp.float32(0.5)


# -- a population of stacked states under vmap ---------------------------------------------
def test_vmapped_population():
    members = 4
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3})
    params = jax.vmap(init_mlp)(jax.random.split(jax.random.key(1), members))
    states = jax.vmap(tx.init)(params)
    lrs = jnp.asarray([1e-4, 1e-3, 1e-2, 1e-1], jnp.float32)

    new = jax.vmap(set_hparams)(states, {"learning_rate": lrs})
    np.testing.assert_array_equal(get_hparams(new)["learning_rate"], lrs)
    np.testing.assert_array_equal(jax.vmap(get_hparams)(new)["learning_rate"], lrs)
    same = set_hparams(states, {"learning_rate": lrs})  # the stacked form, without vmap
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new, same))
    with pytest.raises(ValueError, match="shape"):
        set_hparams(states, {"learning_rate": 0.1})  # no broadcasting

    def member_step(p, s, grads, lr):
        s = set_hparams(s, {"learning_rate": lr})
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, updates

    step, traces = counted_jit(jax.vmap(member_step))
    grad_fn = jax.jit(jax.vmap(jax.grad(loss_fn), in_axes=(0, None, None)))
    x, y = batch(11)
    p, s = params, states
    rng = np.random.default_rng(0)
    for _ in range(10):
        lrs = jnp.asarray(10.0 ** rng.uniform(-4, -1, members), jnp.float32)
        grads = grad_fn(p, x, y)
        p_new, s_new, updates = step(p, s, grads, lrs)
        for i in range(members):
            pi, si, gi, ui = jax.tree.map(lambda a, i=i: a[i], (p, s, grads, updates))
            ref, _ = optax.adam(lrs[i]).update(gi, si.inner_state, pi)
            assert_trees_close(ui, ref)
        p, s = p_new, s_new
    assert len(traces) == 1


# -- make_optimizer / select_hparams --------------------------------------------------------
def test_make_optimizer_takes_signature_names_by_default():
    meta = {"learning_rate": 0.1, "b1": 0.8, "aug_strength": 0.3, "label_smoothing": 0.1}
    hp = get_hparams(make_optimizer(optax.adam, meta).init(PARAMS))
    assert hp["learning_rate"] == jnp.float32(0.1) and hp["b1"] == jnp.float32(0.8)
    assert "aug_strength" not in hp and "label_smoothing" not in hp
    assert all(v.dtype == jnp.float32 for v in hp.values())


def test_make_optimizer_keys_transforms_fixed_static():
    keys, transforms = {"log_lr": "learning_rate", "wd": "weight_decay"}, {"learning_rate": jnp.exp}
    meta = {"log_lr": math.log(0.01), "wd": 1e-4, "aug": 0.5}
    tx = make_optimizer(
        optax.adamw,
        meta,
        keys=keys,
        transforms=transforms,
        static_args=("mask",),
        b2=0.99,
        mask=lambda p: {k: k.startswith("w") for k in p},
    )
    state = tx.init(PARAMS)
    hp = get_hparams(state)
    assert float(hp["learning_rate"]) == pytest.approx(0.01, rel=1e-6)
    assert hp["weight_decay"] == jnp.float32(1e-4) and hp["b2"] == jnp.float32(0.99)
    assert "mask" not in hp

    # in the step: the same keys and transforms on traced meta-parameters
    @jit_counting
    def step(state, meta):
        return set_hparams(state, select_hparams(meta, keys, transforms))

    for log_lr in (-3.0, -5.0, -7.0):
        state = step(state, as_traced({**meta, "log_lr": log_lr}))
        assert float(get_hparams(state)["learning_rate"]) == pytest.approx(math.exp(log_lr), 1e-6)
    assert len(step.traces) == 1 and step.compiles == 1


def test_make_optimizer_errors():
    with pytest.raises(TypeError, match=r"callable.*static_args"):
        make_optimizer(optax.adamw, {"learning_rate": 0.1}, mask=lambda p: p)
    with pytest.raises(TypeError, match="mu_dtype"):
        make_optimizer(optax.adam, {"learning_rate": 0.1}, mu_dtype=jnp.float32)
    assert make_optimizer(
        optax.adam, {"learning_rate": 0.1}, mu_dtype=jnp.float32, static_args="mu_dtype"
    ).init(PARAMS)
    with pytest.raises(ValueError, match="both"):
        make_optimizer(optax.adam, {"learning_rate": 0.1}, learning_rate=0.2)
    with pytest.raises(TypeError, match=r"no parameter.*'lr'"):
        make_optimizer(optax.adam, {"learning_rate": 0.1}, keys=["learning_rate"], lr=0.1)
    with pytest.raises(KeyError, match="log_lr"):
        make_optimizer(optax.adam, {"lr": 0.1}, keys={"log_lr": "learning_rate"})
    with pytest.raises(KeyError, match="transforms"):
        make_optimizer(
            optax.adam, {"lr": 0.1}, keys={"lr": "learning_rate"}, transforms={"b1": abs}
        )
    with pytest.raises(ValueError, match="same argument"):
        select_hparams({"a": 1, "b": 2}, {"a": "learning_rate", "b": "learning_rate"})


def test_make_optimizer_writes_what_set_hparams_would():
    # 1e39 was stored as inf (set_hparams refuses it), hyperparam_dtype=int8 made every
    # rate 0, and a float16 array argument stayed float16
    with pytest.raises(ValueError, match="overflows its dtype float32"):
        make_optimizer(optax.adam, learning_rate=1e39)
    with pytest.raises(ValueError, match="overflows its dtype float32"):
        make_optimizer(optax.adam, {"learning_rate": np.array([1e39])})
    with pytest.raises(TypeError, match="hyperparam_dtype"):
        make_optimizer(optax.adam, learning_rate=1e-3, hyperparam_dtype=jnp.int8)
    half = make_optimizer(optax.adam, learning_rate=jnp.asarray(0.1, jnp.float16))
    assert get_hparams(half.init(PARAMS))["learning_rate"].dtype == jnp.float32
    kept = get_hparams(make_optimizer(optax.adam, learning_rate=math.inf).init(PARAMS))
    assert kept["learning_rate"] == math.inf  # an explicit inf, as set_hparams keeps it
    with pytest.raises(ValueError, match="overflows its dtype float16"):  # (a bfloat16 too)
        make_optimizer(
            optax.adam, learning_rate=jnp.asarray(1e38, jnp.bfloat16), hyperparam_dtype=jnp.float16
        )
    with pytest.raises(TypeError, match="hyperparam_dtype"):
        make_optimizer(optax.adam, learning_rate=1e-3, hyperparam_dtype=jnp.complex64)
    # a non-zero value float32 cannot hold was written as 0 (a subnormal: see
    # test_a_subnormal_hyperparameter_is_refused)
    with pytest.raises(ValueError, match="underflows its dtype float32"):
        make_optimizer(optax.adam, learning_rate=1e-46)
    state = make_optimizer(optax.adam, learning_rate=1e-30).init(PARAMS)
    with pytest.raises(ValueError, match="underflows its dtype float32"):
        set_hparams(state, {"learning_rate": 1e-46})
    # a vmapped population's traced rates are not read (they cannot be), only cast
    rates = jax.vmap(
        lambda lr: get_hparams(make_optimizer(optax.adam, {"learning_rate": lr}).init(PARAMS))
    )(jnp.array([1e-3, 1e-2]))["learning_rate"]
    np.testing.assert_allclose(rates, [1e-3, 1e-2])


def test_make_optimizer_injects_numpy_scalars():
    """optax injects only ints, floats and arrays: a numpy scalar learning rate (read
    from a config) was baked in, so set_hparams could never change it."""
    meta = {"learning_rate": np.float32(0.1), "b1": ml_dtypes.bfloat16(0.5)}
    state = make_optimizer(
        optax.adamw, meta, weight_decay=np.int64(0), nesterov=np.bool_(True)
    ).init(PARAMS)
    hp = get_hparams(state)
    assert {"learning_rate", "b1", "weight_decay"} <= set(hp)
    assert hp["learning_rate"] == jnp.float32(0.1) and hp["b1"] == 0.5
    assert hp["weight_decay"].dtype == jnp.float32  # an int where adamw takes a float
    assert "nesterov" not in hp  # a bool is baked in, numpy's too
    assert float(get_hparams(set_hparams(state, {"learning_rate": 0.2}))["learning_rate"]) == (
        pytest.approx(0.2)
    )


def test_bf16_params_hparams_stay_float32():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    meta = {"learning_rate": 1e-3, "b2": 0.999}
    # optax's own default: hyperparameters take the parameters' dtype, b2 rounds to 1
    naive = optax.inject_hyperparams(optax.adam)(**meta).init(params)
    assert naive.hyperparams["b2"].dtype == jnp.bfloat16 and float(naive.hyperparams["b2"]) == 1.0

    tx = make_optimizer(optax.adam, meta, mu_dtype="float32")
    state = tx.init(params)
    assert get_hparams(state)["b2"] == jnp.float32(0.999)

    @jit_counting
    def step(params, state, lr):
        state = set_hparams(state, {"learning_rate": lr})
        grads = jax.grad(lambda p: loss_fn(p, *batch()).astype(jnp.float32))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for lr in (1e-3, 2e-3, 3e-3):
        params, state = step(params, state, lr)
    assert len(step.traces) == 1 and step.compiles == 1
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))


# -- augmentation strengths ------------------------------------------------------------------
def augment(images: jax.Array, strengths: dict) -> jax.Array:
    """Brightness shift and contrast scaling, strengths as traced arguments."""
    mean = jnp.mean(images, axis=(-3, -2, -1), keepdims=True)
    images = (images - mean) * (1.0 + strengths["contrast"]) + mean
    return images + strengths["brightness"]


MIXED_VALUES = [0.1, np.float64(0.2), np.float32(0.3), jnp.asarray(0.4), 1, np.array(0.5)]


def test_augmentation_strengths_as_traced_never_recompile():
    step, traces = counted_jit(augment)
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    for i, value in enumerate(MIXED_VALUES * 3):
        strengths = as_traced({"brightness": value, "contrast": MIXED_VALUES[i % 5]})
        out = step(images, strengths)
        expected = augment(images, {k: float(v) for k, v in strengths.items()})
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert len(traces) == 1

    # the pitfall: the same values as they come (weak Python scalars, numpy, jnp arrays)
    raw, raw_traces = counted_jit(augment)
    for value in MIXED_VALUES:
        raw(images, {"brightness": value, "contrast": value})
    assert len(raw_traces) > 1


def test_as_traced_dtype_and_errors():
    tree = {"a": 0.5, "b": [np.float64(1.0), 2], "c": np.ones(3), "d": None}
    out = as_traced(tree)
    leaves = jax.tree.leaves(out)
    assert len(leaves) == 4 and out["d"] is None
    assert all(x.dtype == jnp.float32 and not jax.typeof(x).weak_type for x in leaves)
    images = jnp.ones((2, 4, 4, 3), jnp.bfloat16)
    assert augment(images, as_traced({"brightness": 0.1, "contrast": 0.2})).dtype == jnp.float32
    bf = as_traced({"brightness": 0.1, "contrast": 0.2}, dtype=jnp.bfloat16)
    assert augment(images, bf).dtype == jnp.bfloat16
    with pytest.raises(TypeError, match=r"\['kind'\].*not a number"):
        as_traced({"lr": 0.1, "kind": "adam"})


def test_set_hparams_refuses_values_the_cast_would_change():
    import optax

    from jaxpop import hparams as hp

    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    state = opt.init({"w": jnp.zeros(3)})
    # an int64 past int32 into a float hyperparameter is its float (it was cut to int32
    # first: 3e9 became -1.29e9, 2**62 became 0)
    for big in (np.int64(3_000_000_000), np.int64(2**62), 3_000_000_000, np.uint64(2**63)):
        written = hp.get_hparams(hp.set_hparams(state, {"learning_rate": big}))
        assert float(written["learning_rate"]) == float(np.float32(int(big)))
    with pytest.raises(TypeError, match="imaginary part would be dropped"):
        hp.set_hparams(state, {"learning_rate": 1e-3 + 2j})
    with pytest.raises(TypeError, match="imaginary part would be dropped"):
        jax.jit(hp.set_hparams)(state, {"learning_rate": jnp.complex64(1e-3)})
    with pytest.raises(ValueError, match="overflows its dtype float32"):
        hp.set_hparams(state, {"learning_rate": 1e300})
    assert (
        float(hp.get_hparams(hp.set_hparams(state, {"learning_rate": 3e38}))["learning_rate"])
        > 1e38
    )
    inf = hp.set_hparams(state, {"learning_rate": float("inf")})  # an explicit inf is kept
    assert not np.isfinite(float(hp.get_hparams(inf)["learning_rate"]))
    # as_traced refuses what set_hparams refuses (it gave inf, or wrapped)
    for big in (1e39, 10**39, 2**200):
        with pytest.raises(ValueError, match=r"\['lr'\] = .* outside the range of float32"):
            as_traced({"lr": big})
    with pytest.raises(ValueError, match="outside the range of int32"):
        as_traced({"n": 2**40}, jnp.int32)
    with pytest.raises(ValueError, match="outside its dtype int32"):
        as_traced({"n": np.int64(2**40)}, jnp.int32)
    with pytest.raises(TypeError, match="imaginary part"):
        as_traced({"lr": 1 + 2j})
    kept = as_traced({"a": math.inf, "b": -(2**31), "c": True, "d": 3e38})  # all fit
    assert float(kept["a"]) == math.inf and float(kept["d"]) == pytest.approx(3e38)
    assert int(as_traced(-(2**31), jnp.int32)) == -(2**31)
    # an int outside an int hyperparameter's range wrapped silently (2**40 into int32: 0)
    counted = optax.inject_hyperparams(optax.adafactor)(learning_rate=1e-3, decay_offset=3)
    state = counted.init({"w": jnp.zeros(3)})
    assert hp.get_hparams(state)["decay_offset"].dtype == jnp.int32
    for big in (2**40, np.int64(2**40), -(2**31) - 1, np.array(2**33, np.uint64)):
        with pytest.raises(ValueError, match="outside its dtype int32"):
            hp.set_hparams(state, {"decay_offset": big})
    assert (
        int(hp.get_hparams(hp.set_hparams(state, {"decay_offset": 2**31 - 1}))["decay_offset"])
        == 2**31 - 1
    )


def test_a_float_argument_written_as_an_int_can_be_set_to_a_float_later():
    """``weight_decay=0``, ``learning_rate=1``: injected as floats, so PBT can move them;
    a size optax reads in Python (adafactor's min_dim_size_to_factor) is baked in, and
    other int arguments (apply_every's k) stay injected."""
    tx = make_optimizer(optax.adamw, {"learning_rate": 1}, weight_decay=0)
    state = tx.init({"w": jnp.ones(3)})
    assert {k: get_hparams(state)[k].dtype for k in ("learning_rate", "weight_decay")} == {
        "learning_rate": jnp.float32,
        "weight_decay": jnp.float32,
    }
    state = set_hparams(state, {"weight_decay": 1e-4, "learning_rate": 0.5})
    assert float(get_hparams(state)["weight_decay"]) == pytest.approx(1e-4)
    # an argument whose default is an int is a size optax reads in Python: baked in, so
    # a jitted update works (injected, it was a TracerBoolConversionError inside optax)
    params = {"w": jnp.ones((4, 300))}
    for fixed in ({}, {"min_dim_size_to_factor": 64}):
        factored = make_optimizer(optax.adafactor, {"learning_rate": 1}, **fixed)
        state = factored.init(params)
        assert "min_dim_size_to_factor" not in get_hparams(state)
        jax.jit(lambda s, t=factored: t.update(params, s, params))(state)
    lbfgs = make_optimizer(optax.lbfgs, {"learning_rate": 0.1})
    assert "memory_size" not in get_hparams(lbfgs.init(params))
    every = make_optimizer(optax.apply_every, k=2)  # an int a user may set online
    state = set_hparams(every.init(params), {"k": 3})
    assert int(get_hparams(state)["k"]) == 3
    for seeded in ({"key": 0},):  # an int by its type hint (ArrayLike): a PRNG seed
        noisy = make_optimizer(optax.noisy_sgd, learning_rate=0.1, **seeded)
        params = {"w": jnp.ones(3)}
        noisy.update(params, noisy.init(params), params)  # (a float seed would raise)


def test_as_traced_to_an_integer_dtype_refuses_what_it_would_cut():
    # 0.7 was written as 0, 2.9 as 2, inf and NaN as INT_MIN
    for value in (0.7, np.float64(2.9), np.array([1.0, np.inf]), np.array(np.nan), math.inf):
        with pytest.raises(ValueError, match="whole number"):
            as_traced({"a": value}, dtype=jnp.int32)
    # a whole numpy float outside the dtype wrapped (2**40 to INT_MIN, 300 to 44 in int8)
    for value, dtype in ((np.float64(2**40), jnp.int32), (np.array([300.0]), jnp.int8)):
        with pytest.raises(ValueError, match="outside its dtype"):
            as_traced({"a": value}, dtype=dtype)
    with jax.enable_x64(True):  # 2**63 compared equal to int64's top, 2**63 - 1, in float64
        for value, dtype in ((np.float64(2.0**63), jnp.int64), (np.array([2.0**64]), jnp.uint64)):
            with pytest.raises(ValueError, match="outside its dtype"):
                as_traced({"a": value}, dtype=dtype)
    out = as_traced({"a": 3.0, "b": np.array([1.0, -2.0]), "c": np.int64(4), "d": 5}, jnp.int32)
    assert {k: v.tolist() for k, v in out.items()} == {"a": 3, "b": [1, -2], "c": 4, "d": 5}
    assert all(v.dtype == jnp.int32 for v in out.values())


def test_a_bool_is_no_number_for_a_float_hyperparameter_and_a_number_no_bool():
    # set_hparams(learning_rate=True) wrote 1.0, make_optimizer(learning_rate=True)
    # injected a bool learning rate, and as_traced(0.5, bool) gave True
    state = make_optimizer(optax.adam, learning_rate=1e-3).init(PARAMS)
    for flag in (True, np.bool_(False), np.array(True)):
        with pytest.raises(TypeError, match="got a bool"):
            set_hparams(state, {"learning_rate": flag})
    for flag in (True, np.array(True), jnp.asarray(False)):
        with pytest.raises(TypeError, match="got a bool"):
            make_optimizer(optax.adam, learning_rate=flag)
    assert (
        get_hparams(make_optimizer(optax.sgd, learning_rate=0.1, nesterov=True).init(PARAMS))
        is not None
    )
    for bad in (0.5, 2, np.float32(0.5), np.array([0.0, 0.25])):
        with pytest.raises(ValueError, match="not 0 or 1"):
            as_traced(bad, bool)
    assert as_traced({"a": 1.0, "b": 0, "c": True}, bool) == {
        "a": jnp.asarray(True),
        "b": jnp.asarray(False),
        "c": jnp.asarray(True),
    }
    assert float(as_traced(True)) == 1.0  # (a flag fed as a float stays lossless)
    # an injected bool takes 0 and 1, not 0.5
    inject = optax.inject_hyperparams(lambda flag, learning_rate: optax.sgd(learning_rate))
    flagged = inject(flag=jnp.asarray(True), learning_rate=0.1).init(PARAMS)
    assert not get_hparams(set_hparams(flagged, {"flag": 0}))["flag"]
    with pytest.raises(ValueError, match="not 0 or 1"):
        set_hparams(flagged, {"flag": 0.5})


def test_as_traced_refuses_a_python_float_that_underflows_to_zero():
    # (a numpy float and set_hparams were refused; a Python float was written as 0)
    for value, dtype in ((1e-46, jnp.float32), (1e-8, jnp.float16), (-1e-46, jnp.float32)):
        with pytest.raises(ValueError, match="underflows"):
            as_traced({"x": value}, dtype)
    with pytest.raises(ValueError, match="to a subnormal"):  # (XLA computes with it as 0)
        as_traced({"x": 1e-40})
    # a float16 subnormal is kept: XLA computes float16 in float32 on the host
    assert float(as_traced({"x": 1e-7}, jnp.float16)["x"]) == pytest.approx(1e-7, rel=0.2)
    assert float(as_traced({"x": 0.0})["x"]) == 0.0


def test_text_is_no_number_for_as_traced_nor_make_optimizer():
    # numpy parses text: "False" became True, "1e39" inf (past the range check), and a
    # learning rate read from a config as "1e-3" was baked in, to fail at the update
    for leaf in ("False", "0", b"1", np.str_("1e39"), np.array("1e39"), np.array([b"0.5"])):
        with pytest.raises(TypeError, match="not a number"):
            as_traced({"flag": leaf}, jnp.bool_)
        with pytest.raises(TypeError, match="not a number"):
            as_traced({"x": leaf})
    with pytest.raises(TypeError, match=r"learning_rate.*float.*str.*text"):
        make_optimizer(optax.adam, {"learning_rate": "1e-3"})
    for value in (1e-3 + 0j, np.complex64(1e-3)):
        with pytest.raises(TypeError, match=r"learning_rate.*float.*complex"):
            make_optimizer(optax.adam, {"learning_rate": value})


def test_a_numpy_scalar_of_any_width_is_injected():
    # .item() kept a longdouble a longdouble, which optax baked in (set_hparams then
    # found no learning_rate)
    for value in (np.longdouble(1e-3), np.float16(1e-3), ml_dtypes.bfloat16(1e-3)):
        state = make_optimizer(optax.adam, {"learning_rate": value}).init({"w": jnp.zeros(2)})
        assert "learning_rate" in get_hparams(state)
        state = set_hparams(state, {"learning_rate": 0.5})
        assert float(get_hparams(state)["learning_rate"]) == 0.5
        state = set_hparams(state, {"learning_rate": np.longdouble("0.25")})
        assert float(get_hparams(state)["learning_rate"]) == 0.25
        for outside in ("1e400", "1e-400"):  # (past float64: inf and 0 were written)
            with pytest.raises(ValueError, match="outside float64's range"):
                set_hparams(state, {"learning_rate": np.longdouble(outside)})


def test_a_default_the_hyperparameter_dtype_cannot_hold_is_refused():
    # adam's eps=1e-8, left to optax, was injected as 0 in float16: a parameter with no
    # gradient got NaN updates
    with pytest.raises(ValueError, match=r"adam: the default eps .*underflows.*pass eps="):
        make_optimizer(optax.adam, {"learning_rate": 1e-3}, hyperparam_dtype=jnp.float16)
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3}, eps=1e-4, hyperparam_dtype=jnp.float16)
    params = {"w": jnp.zeros(3)}
    updates, _ = tx.update({"w": jnp.array([1.0, 0.0, 0.0])}, tx.init(params), params)
    assert np.isfinite(np.asarray(updates["w"])).all()
    # float32 (the default) holds adam's defaults
    make_optimizer(optax.adam, {"learning_rate": 1e-3}, hyperparam_dtype=jnp.float32)
    # bfloat16 rounds b2=0.999 to 1: every update was NaN (hostile review, helper-182)
    with pytest.raises(ValueError, match=r"adam: the default b2 = 0.999 is 1 in bfloat16.*b2="):
        make_optimizer(optax.adam, {"learning_rate": 1e-3}, hyperparam_dtype=jnp.bfloat16)
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3}, b2=0.99, hyperparam_dtype=jnp.bfloat16)
    updates, _ = tx.update({"w": jnp.array([1.0, 0.0, 0.0])}, tx.init(params), params)
    assert np.isfinite(np.asarray(updates["w"])).all()


def test_set_hparams_takes_a_python_int_past_64_bits_as_the_float_it_is():
    state = make_optimizer(optax.adam, {"learning_rate": 1e-3}).init({"w": jnp.zeros(2)})
    written = get_hparams(set_hparams(state, {"learning_rate": 2**70}))["learning_rate"]
    assert written.dtype == jnp.float32 and float(written) == float(np.float32(2.0**70))
    for value in (2**200, 2**2000):  # (it raised OverflowError naming int32)
        with pytest.raises(ValueError, match=r"learning_rate.*overflows its dtype float32"):
            set_hparams(state, {"learning_rate": value})
    tx = make_optimizer(optax.contrib.muon, {"learning_rate": 1e-3}, ns_steps=5)
    state = tx.init({"w": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"'ns_steps' = .* is outside its dtype"):
        set_hparams(state, {"ns_steps": 2**70})


@pytest.mark.parametrize(
    ("optimizer_fn", "name", "value"),
    [
        (optax.scale_by_rss, "initial_accumulator_value", 0.5),
        (optax.scale_by_rms, "initial_scale", 0.5),
        (optax.scale_by_stddev, "initial_scale", 0.5),
        (optax.scale_by_yogi, "initial_accumulator_value", 0.5),
        (optax.scale_by_distance_over_gradients, "reps_rel", 0.5),
        (optax.rprop, "learning_rate", 0.5),
        (optax.contrib.dowg, "init_estim_sq_dist", 0.5),
        (optax.contrib.cocob, "eps", 0.5),
        (optax.noisy_sgd, "key", 3),
    ],
)
def test_arguments_optax_reads_only_at_init_are_baked_in(optimizer_fn, name, value):
    # (helper-305: injected, get_hparams showed a written value that changed no update)
    with pytest.raises(ValueError, match=f"reads {name!r} only when its state is made"):
        make_optimizer(optimizer_fn, {name: value})
    fixed = (
        {"learning_rate": 0.1}
        if name != "learning_rate"
        and optimizer_fn
        in (
            optax.rprop,
            optax.noisy_sgd,
            optax.contrib.dowg,
        )
        else {}
    )
    tx = make_optimizer(optimizer_fn, **fixed, **{name: value})
    params = {"w": jnp.linspace(0.1, 1.0, 4)}
    state = tx.init(params)
    assert name not in get_hparams(state)
    jax.jit(tx.update)(params, state, params)  # (baked in: the update runs)


def test_sizes_optax_reads_in_python_are_baked_in_so_the_first_jitted_update_runs():
    # (helper-305: mechanize's range(num_betas), lookahead's "if sync_period < 1" failed
    # on a traced value)
    params = {"w": jnp.ones(3)}
    tx = make_optimizer(optax.contrib.mechanize, base_optimizer=optax.sgd(0.1))
    jax.jit(tx.update)(params, tx.init(params), params)
    both = optax.LookaheadParams(params, params)
    tx = make_optimizer(
        optax.lookahead, fast_optimizer=optax.sgd(0.1), sync_period=5, slow_step_size=0.5
    )
    jax.jit(lambda s: tx.update(params, s, both))(tx.init(both))


def test_a_nan_hyperparameter_is_refused_wherever_it_is_written():
    # (helper-305: accepted, the first step made every parameter NaN)
    state = make_optimizer(optax.adam, {"learning_rate": 1e-3}).init({"w": jnp.zeros(2)})
    for name in ("learning_rate", "b2"):
        with pytest.raises(ValueError, match=f"hyperparameter '{name}' is NaN"):
            set_hparams(state, {name: math.nan})
    with pytest.raises(ValueError, match="is NaN"):
        set_hparams(state, {"learning_rate": np.float16("nan")})
    with pytest.raises(ValueError, match="is NaN"):
        make_optimizer(optax.adam, {"learning_rate": math.nan})
    with pytest.raises(ValueError, match="is NaN"):
        make_optimizer(optax.adam, {"learning_rate": 1e-3}, b2=math.nan)
    with pytest.raises(ValueError, match=r"leaf \['aug'\]\[1\] is NaN"):
        as_traced({"aug": np.array([0.5, np.nan])})
    for dtype in (jnp.float32, None):
        with pytest.raises(ValueError, match=r"leaf \['aug'\] is NaN"):
            as_traced({"aug": math.nan}, dtype=dtype)
    for value in (math.nan, np.array(math.nan)):
        with pytest.raises(ValueError, match="'learning_rate' is NaN"):
            make_optimizer(optax.adam, {"learning_rate": value}, hyperparam_dtype=None)
    written = set_hparams(state, {"learning_rate": math.inf})  # (inf: a bound, say)
    assert get_hparams(written)["learning_rate"] == math.inf


def test_keys_of_mixed_types_get_the_key_error_naming_them():
    state = make_optimizer(optax.adam, {"learning_rate": 1e-3}).init({"w": jnp.zeros(2)})
    with pytest.raises(KeyError, match=r"no injected hyperparameter named \[1\]"):
        set_hparams(state, {1: 0.1, "learning_rate": 0.2})
    with pytest.raises(KeyError, match=r"meta_params has no \['x'\]"):
        select_hparams({1: 0.0, "lr": 1.0}, ["x"])


def test_a_float64_hyperparam_dtype_without_x64_is_float32_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tx = make_optimizer(optax.adam, {"learning_rate": 1e-3}, hyperparam_dtype=jnp.float64)
        hps = get_hparams(tx.init({"w": jnp.zeros(2)}))
    assert {v.dtype for v in hps.values()} == {jax.dtypes.canonicalize_dtype(jnp.float64)}


def test_as_traced_checks_a_subclass_of_float_or_int_as_its_plain_value():
    """A float subclass (a YAML loader's) skipped every check: 1e39 became inf, 2.5 was
    cut to 2 in int32, 1e-46 became 0; an IntEnum out of range raised OverflowError
    (helper-159)."""
    import enum

    class Loaded(float):
        pass

    class Big(enum.IntEnum):
        HUGE = 2**40

    for leaf, dtype in [
        (Loaded(1e39), jnp.float32),
        (Loaded(1e-46), jnp.float32),
        (Loaded(2.5), jnp.int32),
        (Big.HUGE, jnp.int32),
    ]:
        with pytest.raises(ValueError, match=r"as_traced: leaf \['x'\]"):
            as_traced({"x": leaf}, dtype)
    assert as_traced({"x": Loaded(0.5)})["x"].dtype == jnp.float32
    assert float(as_traced({"x": Big.HUGE})["x"]) == 2.0**40  # (float32 holds it)


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="the 64-bit dtypes are 32-bit without x64")
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype")
@pytest.mark.parametrize(
    "leaf, dtype",
    [
        (1e300, jnp.float64),
        (1e-300, jnp.float64),
        (np.int64(2**40), jnp.int64),
        (np.uint64(2**32 + 5), jnp.uint64),
        (2**40, jnp.int64),
    ],
)
def test_as_traced_checks_a_64_bit_dtype_as_the_32_bits_it_is_without_x64(leaf, dtype):
    """Without x64, JAX makes a float64 array float32 (int64 int32): the values were
    checked against the 64-bit range, then came back inf, 0 or wrapped (5 for 2**32 + 5)
    with only JAX's dtype warning (hostile review, helper-182)."""
    with pytest.raises(ValueError, match="as_traced"):
        as_traced({"a": leaf}, dtype)
    assert float(as_traced({"a": 0.5}, jnp.float64)["a"]) == 0.5


def test_set_hparams_on_a_stacked_population_keeps_an_integer_weak_as_vmap_does():
    """A weakly typed integer stayed weak only when it was a scalar: set_hparams on a
    stacked population made it strong, and the jitted step traced again (vmap of
    set_hparams kept it weak; hostile review, helper-182)."""
    tx = make_optimizer(optax.apply_every, k=2)  # an int hyperparameter
    states = jax.vmap(lambda _: tx.init({"w": jnp.zeros(3)}))(jnp.arange(4))
    traces = []

    @jax.jit
    def step(states):
        traces.append(1)
        return jax.vmap(tx.update)({"w": jnp.ones((4, 3))}, states)[1]

    states = step(states)
    k = jnp.array([1, 2, 3, 4])
    stacked, mapped = set_hparams(states, {"k": k}), jax.vmap(set_hparams)(states, {"k": k})
    assert jax.typeof(get_hparams(stacked)["k"]) == jax.typeof(get_hparams(mapped)["k"])
    assert jax.typeof(get_hparams(stacked)["k"]).weak_type
    assert get_hparams(stacked)["k"].tolist() == [1, 2, 3, 4]
    step(mapped), step(stacked)
    assert len(traces) == 1


def test_a_rate_below_1_that_the_dtype_rounds_to_1_is_refused_given_or_set():
    """The default b2=0.999 was refused in bfloat16 (it is 1 there: every update NaN),
    but the same value passed explicitly, or written by set_hparams (a PBT explore of
    b1 or b2 near 1), was stored as 1 without a word (hostile review, helper-205)."""
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(ValueError, match=r"adam: b2 = 0.999 is 1 in bfloat16.*0.99609375.*b2="):
        make_optimizer(optax.adam, learning_rate=1e-3, b2=0.999, hyperparam_dtype=jnp.bfloat16)
    tx = make_optimizer(optax.adam, learning_rate=1e-3, b2=0.99, hyperparam_dtype=jnp.bfloat16)
    state = tx.init(params)
    for name in ("b1", "b2"):
        with pytest.raises(ValueError, match=rf"hyperparameter '{name}' = 0.9999 is 1 in bfloat16"):
            set_hparams(state, {name: 0.9999})
    stacked = jax.vmap(tx.init)({"w": jnp.ones((2, 3), jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"'b1'\[1\] = 0.9999 is 1 in bfloat16"):  # (a member)
        set_hparams(stacked, {"b1": np.array([0.5, 0.9999])})
    deep = jax.vmap(jax.vmap(tx.init))({"w": jnp.ones((2, 2, 3), jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"'b1'\[1\]\[1\] = 0.9999"):  # (its index, not a flat one)
        set_hparams(deep, {"b1": np.array([[0.5, 0.5], [0.5, 0.9999]])})
    # decay rates of other names too: muon's adam_b2, signum's beta (helper-208)
    with pytest.raises(ValueError, match=r"muon: adam_b2 = 0\.999 is 1 in bfloat16"):
        make_optimizer(
            optax.contrib.muon, learning_rate=0.1, adam_b2=0.999, hyperparam_dtype=jnp.bfloat16
        )
    with pytest.raises(ValueError, match=r"signum: beta = 0\.9999 is 1 in bfloat16"):
        make_optimizer(optax.signum, learning_rate=0.1, beta=0.9999, hyperparam_dtype=jnp.bfloat16)
    # a name means one thing for every optimizer, given or set (helper-209: an exception by
    # default, in make_optimizer only, refused in set_hparams what make_optimizer took)
    og_fn, bf16 = optax.optimistic_gradient_descent, jnp.bfloat16
    og = make_optimizer(og_fn, learning_rate=0.1, hyperparam_dtype=bf16)
    with pytest.raises(ValueError, match=r"beta = 0\.9999 is 1 in bfloat16"):
        make_optimizer(og_fn, learning_rate=0.1, beta=0.9999, hyperparam_dtype=bf16)
    with pytest.raises(ValueError, match=r"'beta' = 0\.9999 is 1 in bfloat16"):
        set_hparams(og.init(params), {"beta": 0.9999})
    with pytest.raises(ValueError, match="has shape"):  # (the shape first, then the rate)
        set_hparams(deep, {"b1": np.array([0.5, 0.5, 0.5, 0.9999])})
    # adafactor's decay_rate is an exponent (1 - t**-decay_rate), fine at 1: not refused
    ada = make_optimizer(
        optax.adafactor, learning_rate=0.1, decay_rate=0.9999, hyperparam_dtype=jnp.bfloat16
    )
    assert float(get_hparams(ada.init(params))["decay_rate"]) == 1.0
    # only decay rates: a learning rate (or a negative value) near 1 is rounded as before
    # (helper-207: every float near 1 was refused)
    sgd = make_optimizer(optax.sgd, learning_rate=0.999, hyperparam_dtype=jnp.bfloat16)
    assert float(get_hparams(sgd.init(params))["learning_rate"]) == 1.0
    assert float(get_hparams(set_hparams(state, {"learning_rate": -0.999}))["learning_rate"]) == -1
    kept = set_hparams(state, {"b2": 0.99609375, "learning_rate": 1.0, "eps": -0.0})
    updates, _ = tx.update({"w": jnp.full(3, 0.5, jnp.bfloat16)}, kept, params)
    assert np.isfinite(np.asarray(updates["w"], np.float32)).all()
    # float32 (the default) holds them: nothing refused
    set_hparams(make_optimizer(optax.adam, learning_rate=1e-3).init(params), {"b2": 0.9999})


def test_a_traced_bool_for_a_float_hyperparameter_is_refused_as_a_concrete_one():
    """A concrete bool was refused, a traced one written as 1.0 (helper-205)."""
    state = make_optimizer(optax.adam, learning_rate=0.1).init({"w": jnp.ones(3)})
    for call in (lambda s, v: set_hparams(s, {"learning_rate": v}),):
        with pytest.raises(TypeError, match="got a bool"):
            call(state, jnp.array(True))
        with pytest.raises(TypeError, match="got a bool"):
            jax.jit(call)(state, jnp.array(True))


def test_an_integer_array_for_a_float_argument_is_stored_as_a_float():
    """A Python int for a float argument (weight_decay=0) was stored as a float, a 0-d
    integer array (or a vmapped population's ints) as int32, where set_hparams could
    never write a float again (helper-205)."""
    params = {"w": jnp.ones(3)}
    for zero in (0, np.int64(0), np.array(0), jnp.array(0), np.array(0, np.uint8)):
        tx = make_optimizer(optax.adamw, {"learning_rate": 1e-3, "weight_decay": zero})
        state = tx.init(params)
        assert get_hparams(state)["weight_decay"].dtype == jnp.float32, zero
        assert get_hparams(set_hparams(state, {"weight_decay": 1e-4}))["weight_decay"] > 0

    def init(wd):
        return make_optimizer(optax.adamw, {"learning_rate": 1e-3, "weight_decay": wd}).init(params)

    stacked = jax.vmap(init)(jnp.array([0, 1]))
    assert get_hparams(stacked)["weight_decay"].dtype == jnp.float32
    # checked as the Python int is: an overflow refused (inf was written), an int64 read
    # whole (it was cut to int32 first; helper-207)
    for big in (70000, np.array(70000)):
        with pytest.raises(ValueError, match="overflows its dtype float16"):
            make_optimizer(optax.sgd, learning_rate=big, hyperparam_dtype=jnp.float16)
    for f_min in (-(2**32) - 5, np.array(-(2**32) - 5)):
        held = get_hparams(make_optimizer(optax.polyak_sgd, f_min=f_min).init(params))["f_min"]
        assert float(held) == float(np.float32(-(2**32) - 5)), f_min
    tx = make_optimizer(optax.sgd, {"learning_rate": 0.1}, momentum=np.array(0))  # (int or float)
    assert get_hparams(tx.init(params))["momentum"].dtype == jnp.int32  # as momentum=0 stays


def test_galores_rank_is_read_in_python_and_a_default_is_checked_by_name():
    """galore's rank, injected, failed init ("rank must be an int"); a custom default
    near 1 that is no decay rate by name was refused, where the same value given was
    taken (helper-210)."""
    params = {"w": jnp.ones((8, 8))}
    tx = make_optimizer(optax.contrib.galore, learning_rate=0.1)
    state = tx.init(params)
    jax.jit(tx.update)({"w": jnp.ones((8, 8))}, state, params)
    assert "rank" not in get_hparams(state)

    def my_sgd(learning_rate: float, keep: float = 0.9999):
        return optax.sgd(learning_rate * keep)

    kept = make_optimizer(my_sgd, learning_rate=0.1, hyperparam_dtype=jnp.bfloat16)
    assert float(get_hparams(kept.init(params))["keep"]) == 1.0


def test_a_callable_default_is_baked_in_not_taken_for_a_schedule():
    """adafactor's dtype_momentum=jnp.float32 default was injected as a schedule: init
    failed (unhashable) once momentum was given, and get_hparams listed it (helper-205)."""
    params = {"w": jnp.ones((4, 130))}
    for kwargs in ({}, {"momentum": 0.9}):
        state = make_optimizer(optax.adafactor, learning_rate=0.1, **kwargs).init(params)
        assert "dtype_momentum" not in get_hparams(state)
        assert ("momentum" in get_hparams(state)) == bool(kwargs)


def test_a_subnormal_hyperparameter_is_refused():
    # XLA flushes a float32 (bfloat16, float64) subnormal to 0 when it computes: Adam's
    # eps=1e-39 gave NaN updates where a gradient is 0, and 1e-40 written by
    # set_hparams with x64 on was stored as 0
    for build in (
        lambda: make_optimizer(optax.adam, learning_rate=1e-3, eps=1e-39),
        lambda: make_optimizer(optax.adam, learning_rate=1e-40),
        lambda: make_optimizer(
            optax.adam, learning_rate=1e-3, eps=1e-39, hyperparam_dtype=jnp.bfloat16, b2=0.99
        ),
    ):
        with pytest.raises(ValueError, match=r"to a subnormal .* XLA computes with as 0"):
            build()
    state = make_optimizer(optax.adam, learning_rate=1e-3).init(PARAMS)
    for value in (1e-40, -1e-40, np.float32(1e-40), np.array(1e-45)):
        with pytest.raises(ValueError, match="to a subnormal"):
            set_hparams(state, {"eps": value})
    # the smallest normal float32 is kept as it is
    tiny = float(jnp.finfo(jnp.float32).tiny)
    assert float(get_hparams(set_hparams(state, {"eps": tiny}))["eps"]) == tiny
    # float16 subnormals stay (computed in float32 on the host: the same value)
    half = make_optimizer(optax.sgd, learning_rate=1e-7, hyperparam_dtype=jnp.float16)
    assert float(get_hparams(half.init(PARAMS))["learning_rate"]) > 0


def test_as_traced_checks_a_decay_rate_by_its_name():
    # the documented step converts meta_params with as_traced and writes them with
    # set_hparams inside jit, where a traced value cannot be checked: b2=0.99999999
    # became 1.0 in float32 and every parameter NaN
    with pytest.raises(ValueError, match=r"as_traced: leaf \['b2'\] = 0.99999999 is 1 in float32"):
        as_traced({"log_lr": -7.0, "b2": 0.99999999})
    with pytest.raises(ValueError, match="is 1 in bfloat16"):
        as_traced({"opt": {"b1": np.float64(0.999)}}, jnp.bfloat16)
    with pytest.raises(ValueError, match="is 1 in float32"):
        as_traced({"momentum": np.array([0.9, 0.99999999])})
    # a rate the dtype holds, another name rounded to 1, and 1 itself pass
    out = as_traced({"b2": 0.999, "aug": 0.99999999, "b1": 1.0})
    assert float(out["aug"]) == 1.0 and float(out["b1"]) == 1.0


def test_set_hparams_names_the_hyperparameter_of_a_value_that_is_not_a_number():
    # jax's own errors named none ("None is not a valid value for jnp.array")
    state = make_optimizer(optax.adam, learning_rate=1e-3).init(PARAMS)
    for value in (None, "0.1", {"x": 0.1}, np.datetime64("2020-01-01"), [0.1, [0.2]]):
        with pytest.raises(TypeError, match="hyperparameter 'learning_rate'"):
            set_hparams(state, {"learning_rate": value})


def test_make_optimizer_takes_a_whole_float_for_an_int_argument_and_refuses_others():
    # muon's ns_steps=5.0 (a PBT perturb of a count) was injected as a float and the
    # first jitted update failed in fori_loop
    import optax.contrib

    muon = optax.contrib.muon
    params = {"w": jnp.ones((4, 3))}
    grads = {"w": jnp.full((4, 3), 0.1)}
    for steps in (5.0, np.float64(5.0), np.array(5.0), jnp.asarray(5.0), 5):
        tx = make_optimizer(muon, {"learning_rate": 0.1, "ns_steps": steps})
        state = tx.init(params)
        jax.jit(tx.update)(grads, state, params)
        assert int(get_hparams(state)["ns_steps"]) == 5
    for steps in (5.5, math.nan, math.inf):
        with pytest.raises(TypeError, match="argument 'ns_steps' is an int"):
            make_optimizer(muon, {"learning_rate": 0.1, "ns_steps": steps})

    # an argument with no hint and an int default takes a float as before (a user's
    # own optimizer: it was refused, helper-246)
    def my_sgd(learning_rate, weight_decay=0):
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate))

    tx = make_optimizer(my_sgd, {"learning_rate": 0.1, "weight_decay": 1e-4})
    assert float(get_hparams(tx.init(params))["weight_decay"]) == pytest.approx(1e-4)
    # an argument that takes floats too is not cut (sgd's momentum: an ArrayLike, None)
    tx = make_optimizer(optax.sgd, learning_rate=0.1, momentum=0.5)
    assert float(get_hparams(tx.init(params))["momentum"]) == 0.5


def test_a_0d_bool_array_flag_is_baked_in():
    # nesterov=np.array(True) was injected, and the first jitted update failed on a
    # traced flag (TracerBoolConversionError)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    for flag in (np.array(True), jnp.array(True), np.array(False)):
        tx = make_optimizer(optax.sgd, {"learning_rate": 0.1}, momentum=0.9, nesterov=flag)
        state = tx.init(PARAMS)
        assert "nesterov" not in get_hparams(state)
        jax.jit(tx.update)(grads, state, PARAMS)
    with pytest.raises(TypeError, match="traced bool"):
        jax.vmap(
            lambda flag: make_optimizer(
                optax.sgd, {"learning_rate": 0.1}, momentum=0.9, nesterov=flag
            ).init(PARAMS)
        )(jnp.array([True, False]))


def test_a_flag_given_as_a_number_or_text_is_refused():
    # nesterov=1 (a config's) was injected as an int and the first jitted update failed
    # on the traced flag; nesterov="False" was baked in as True
    for flag in (1, 0, np.float32(1.0), 1.0, "False", np.array(1)):
        with pytest.raises(TypeError, match="argument 'nesterov' is a flag"):
            make_optimizer(optax.sgd, {"learning_rate": 0.1}, momentum=0.9, nesterov=flag)
    for flag in (True, np.bool_(False)):
        tx = make_optimizer(optax.sgd, {"learning_rate": 0.1}, momentum=0.9, nesterov=flag)
        assert "nesterov" not in get_hparams(tx.init(PARAMS))


def test_a_float_argument_given_as_a_fraction_decimal_or_list_is_refused():
    # left out of the injected hyperparameters, and the first update failed with
    # "unsupported operand type(s) for *: 'Fraction' and 'DynamicJaxprTracer'"
    for value in (fractions.Fraction(1, 10), decimal.Decimal("0.1"), [0.1], (0.1,)):
        with pytest.raises(TypeError, match="argument 'learning_rate' is a float"):
            make_optimizer(optax.adam, {"learning_rate": value})


def test_as_traced_with_dtype_none_checks_each_leaf_against_its_own_dtype():
    # dtype=None (the docs' advice for a meta_params holding an int) skipped every check:
    # b2=0.999999999 became 1.0 (every update NaN) and 1e39 inf; the arrays were weakly
    # typed, so a float64 explored next traced the step again
    with pytest.raises(ValueError, match="is 1 in float32"):
        as_traced({"b2": 0.999999999, "ns_steps": 5}, dtype=None)
    with pytest.raises(ValueError, match="outside the range of float32"):
        as_traced({"aug": 1e39, "ns_steps": 5}, dtype=None)
    with pytest.raises(ValueError, match="outside the range of int32"):
        as_traced({"ns_steps": 2**40}, dtype=None)
    out = as_traced({"b2": 0.99, "ns_steps": 5, "flag": True}, dtype=None)
    assert [(x.dtype, x.weak_type) for x in (out["b2"], out["ns_steps"], out["flag"])] == [
        (jnp.float32, False),
        (jnp.int32, False),
        (jnp.bool_, False),
    ]
    traces = []

    @jax.jit
    def step(meta):
        traces.append(1)
        return meta["b2"] * meta["ns_steps"]

    step(as_traced({"b2": 0.99, "ns_steps": 5}, dtype=None))
    step(as_traced({"b2": np.float64(0.9), "ns_steps": np.int64(3)}, dtype=None))
    assert len(traces) == 1


def test_as_traced_checks_a_rate_in_a_list_and_a_decimal_or_fraction():
    # a list's elements were named by their index, not "b2": [0.9, 0.9999] became
    # [0.9, 1.0] in float16; Decimal("1e39") became inf
    with pytest.raises(ValueError, match=r"leaf \['b2'\]\[1\] = 0.9999 is 1 in float16"):
        as_traced({"b2": [0.9, 0.9999]}, dtype=jnp.float16)
    with pytest.raises(ValueError, match="outside the range of float32"):
        as_traced({"aug": decimal.Decimal("1e39")})
    assert float(as_traced({"aug": fractions.Fraction(1, 4)})["aug"]) == 0.25


def test_a_mask_whose_default_is_true_is_no_flag():
    # lars's weight_decay_mask=True (hinted MaskOrFn) was taken for a flag: a pytree mask
    # was refused ("pass True or False")
    params = {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}
    tx = make_optimizer(optax.lars, learning_rate=0.1, weight_decay_mask={"w": True, "b": False})
    state = tx.init(params)
    jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)


@pytest.mark.parametrize(
    "leaf",
    [
        decimal.Decimal("1e400"),
        decimal.Decimal("1e-400"),
        fractions.Fraction(1, 10**400),
        fractions.Fraction(10**400),
        decimal.Decimal("sNaN"),
    ],
)
def test_as_traced_names_a_decimal_or_fraction_that_no_float_holds(leaf):
    # converted first: Decimal("1e400") became inf and 1e-400 0, unchecked; the others
    # raised errors that named no leaf
    for dtype in (jnp.float32, None):
        with pytest.raises(ValueError, match=r"as_traced: leaf \['lr'\]"):
            as_traced({"lr": leaf}, dtype)


def test_as_traced_with_dtype_none_takes_a_typed_key_as_it_is():
    key = jax.random.key(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (np.result_type(key) warned, deprecated)
        out = as_traced({"key": key, "lr": 0.1}, dtype=None)
    assert out["key"].dtype == key.dtype and out["lr"].dtype == jnp.float32


def test_an_unhinted_parameter_with_a_bool_default_is_a_flag():
    # (flags were read from the hint alone for a moment: a user's unhinted nesterov=1
    # failed in the first jitted update again, and "False" was True)
    def my_sgd(learning_rate, momentum=0.9, nesterov=False):
        return optax.sgd(learning_rate, momentum, nesterov)

    for flag in (1, "False"):
        with pytest.raises(TypeError, match="argument 'nesterov' is a flag"):
            make_optimizer(my_sgd, {"learning_rate": 0.1}, nesterov=flag)
    make_optimizer(my_sgd, {"learning_rate": 0.1}, nesterov=True)


def test_an_argument_optax_reads_only_at_init_is_baked_in_and_refused_from_meta_params():
    # momo's lower_bound (kept in MomoState.lb at init): set_hparams wrote 0.5, read it
    # back, and the update went on with 0.0
    import optax.contrib

    tx = make_optimizer(optax.contrib.momo, learning_rate=1.0, lower_bound=0.5)
    state = tx.init(PARAMS)
    assert "lower_bound" not in get_hparams(state)
    with pytest.raises(KeyError, match="lower_bound"):
        set_hparams(state, {"lower_bound": 0.1})
    for fn, name in (
        (optax.contrib.momo, "lower_bound"),
        (optax.adagrad, "initial_accumulator_value"),
    ):
        with pytest.raises(ValueError, match=f"reads '{name}' only when its state is made"):
            make_optimizer(fn, {"learning_rate": 0.1, name: 0.5})


def test_momo_adapting_its_lower_bound_keeps_it_injected():
    # (with adapt_lower_bound=True momo reads the injected lower_bound at every update:
    # the init-only rule refused a hyperparameter that worked, helper-276)
    import optax.contrib

    for adapts in (True, np.bool_(True), np.array(True), jnp.array(True)):
        tx = make_optimizer(
            optax.contrib.momo, {"lower_bound": 0.0}, learning_rate=1.0, adapt_lower_bound=adapts
        )
        state = set_hparams(tx.init(PARAMS), {"lower_bound": 5.0})
        assert float(get_hparams(state)["lower_bound"]) == 5.0
