"""Explore spaces (jaxpop.mutators.explore): inside the space, probabilities, jit/vmap."""

from __future__ import annotations

import copy
import math
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxpop.mutators import explore as ex

SPACE = {
    "lr": ex.log_uniform(1e-4, 0.02),
    "wd": ex.uniform(0.0, 0.1),
    "layers": ex.randint(1, 6),
    "opt": ex.choice(["sgd", "adam", "lamb"]),
    "aug": {"strength": ex.choice([0.1, 0.2, 0.4, 0.8]), "kind": "crop"},
}
META = {
    "lr": 0.01,
    "wd": 0.05,
    "layers": 3,
    "opt": "adam",
    "aug": {"strength": 0.2, "kind": "crop"},
    "seed": 7,
}


def keys(n: int, seed: int = 0) -> np.ndarray:
    """``n`` raw host keys."""
    return np.asarray(jax.random.key_data(jax.random.split(jax.random.key(seed), n)), np.uint32)


def inside(space, meta) -> bool:
    if ex.is_space(space):
        if isinstance(space, ex.Choice):
            return any(meta == v for v in space.values)
        if isinstance(space, ex.RandInt):
            return isinstance(meta, int) and space.low <= meta < space.high
        return isinstance(meta, float) and space.low <= meta <= space.high
    if isinstance(space, dict):
        return all(inside(sub, meta[k]) for k, sub in space.items())
    return meta == space


# -- spaces -------------------------------------------------------------------------------
def test_constructors_validate():
    with pytest.raises(ValueError, match="low < high"):
        ex.uniform(1.0, 1.0)
    with pytest.raises(ValueError, match="0 < low"):
        ex.log_uniform(0.0, 1.0)
    with pytest.raises(TypeError, match="two ints"):
        ex.randint(0.5, 3)
    with pytest.raises(ValueError, match="high is excluded"):
        ex.randint(3, 3)
    with pytest.raises(ValueError, match="at least one"):
        ex.choice([])
    with pytest.raises(TypeError, match="list or tuple"):
        ex.choice("abc")
    with pytest.raises(TypeError, match="choice"):
        ex.validate_space({"lr": [0.1, 0.01]})


def test_spaces_are_immutable_plain_data():
    space = ex.uniform(0.0, 1.0)
    with pytest.raises(AttributeError):
        space.low = 2.0
    assert space == ex.uniform(0.0, 1.0) and space != ex.log_uniform(0.5, 1.0)
    assert ex.choice([1, 2]) == ex.choice((1, 2)) and hash(ex.choice([1, 2]))
    assert ex.Uniform(0.0, 1.0) != ex.LogUniform(0.0, 1.0)


# -- sample ---------------------------------------------------------------------------------
def test_sample_is_inside_the_space_and_plain_python():
    for key in keys(100):
        meta = ex.sample(key, SPACE)
        assert inside(SPACE, meta), meta
        assert type(meta["lr"]) is float and type(meta["layers"]) is int
        assert meta["aug"]["kind"] == "crop"


def test_sample_covers_the_space():
    draws = [ex.sample(k, SPACE) for k in keys(300)]
    assert {d["layers"] for d in draws} == {1, 2, 3, 4, 5}
    assert {d["opt"] for d in draws} == {"sgd", "adam", "lamb"}
    logs = np.log10([d["lr"] for d in draws])  # uniform in log: about half below 10**-2.65
    assert abs(np.mean(logs < (math.log10(1e-4) + math.log10(0.02)) / 2) - 0.5) < 0.1


# -- perturb --------------------------------------------------------------------------------
def test_perturb_multiplies_by_a_factor_and_clips():
    space = {"x": ex.uniform(0.0, 10.0)}
    results = {ex.perturb(k, space, {"x": 5.0})["x"] for k in keys(60)}
    assert results == {4.0, 6.0}
    assert {ex.perturb(k, space, {"x": 9.5})["x"] for k in keys(60)} == {9.5 * 0.8, 10.0}
    results = {
        ex.perturb(k, space, {"x": 5.0}, perturbation_factors=(0.5, 1.0, 3.0))["x"]
        for k in keys(60)
    }
    assert results == {2.5, 5.0, 10.0}


def test_perturb_choice_moves_to_a_neighbour():
    space = {"v": ex.choice([1, 2, 3, 4, 5]), "s": ex.choice(["a", "b", "c"])}
    moved = [ex.perturb(k, space, {"v": 3, "s": "b"}) for k in keys(400)]
    assert {m["v"] for m in moved} == {2, 4} and {m["s"] for m in moved} == {"a", "c"}
    assert abs(np.mean([m["v"] == 4 for m in moved]) - 0.5) < 0.08
    ends = [ex.perturb(k, space, {"v": 1, "s": "c"}) for k in keys(50)]
    assert {m["v"] for m in ends} == {2} and {m["s"] for m in ends} == {"b"}
    # a number not in the list first goes to the nearest value, then moves
    assert {ex.perturb(k, space, {"v": 4.9, "s": "a"})["v"] for k in keys(50)} == {4}


def test_perturb_choice_unknown_non_number_is_resampled():
    space = {"s": ex.choice(["a", "b", "c"])}
    assert {ex.perturb(k, space, {"s": "zzz"})["s"] for k in keys(100)} == {"a", "b", "c"}


def test_perturb_randint_always_moves_and_stays_inside():
    space = {"n": ex.randint(1, 6)}
    assert {ex.perturb(k, space, {"n": 1})["n"] for k in keys(60)} == {1, 2}
    assert {ex.perturb(k, space, {"n": 3})["n"] for k in keys(60)} == {2, 4}
    assert {ex.perturb(k, space, {"n": 5})["n"] for k in keys(60)} == {4, 5}
    assert all(type(ex.perturb(k, space, {"n": 3})["n"]) is int for k in keys(5))


finite = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    bounds=st.tuples(finite, finite).filter(lambda b: b[0] < b[1]),
    where=st.floats(-0.5, 1.5),
    seed=st.integers(0, 2**32 - 1),
    p=st.sampled_from([0.0, 0.25, 1.0]),
)
def test_explored_values_always_stay_inside_the_space(bounds, where, seed, p):
    lo, hi = bounds
    space = {
        "u": ex.uniform(lo, hi),
        "log": ex.log_uniform(1e-5, 1e-1),
        "n": ex.randint(math.floor(lo), math.floor(lo) + 3),
        "c": ex.choice([0.5, 1.0, 2.0]),
    }
    value = lo + where * (hi - lo)  # also starts outside the space
    meta = {"u": value, "log": 10 ** (-6 + 6 * where), "n": round(value), "c": 1.7}
    key = np.array([seed, 11], np.uint32)
    for out in (
        ex.explore(key, space, meta, resample_probability=p),
        ex.perturb(key, space, meta),
        ex.resample(key, space, meta, resample_probability=p),
        ex.clip(space, meta),
        ex.sample(key, space),
    ):
        assert inside(space, out), (meta, out)


# -- resample / explore ----------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_resample_probability_matches(p):
    space = {"x": ex.uniform(0.0, 1.0), "y": ex.uniform(0.0, 1.0)}
    results = [
        ex.explore(k, space, {"x": 0.5, "y": 0.5}, resample_probability=p) for k in keys(1500)
    ]
    # a perturbed value is exactly 0.4 or 0.6; a fresh draw almost never is
    fresh_x = np.array([r["x"] not in (0.4, 0.6) for r in results])
    fresh_y = np.array([r["y"] not in (0.4, 0.6) for r in results])
    assert abs(fresh_x.mean() - p) < 0.04 and abs(fresh_y.mean() - p) < 0.04
    if 0 < p < 1:  # each hyperparameter decides on its own
        assert abs(np.mean(fresh_x & fresh_y) - p * p) < 0.04


def test_resample_keeps_or_redraws():
    space = {"c": ex.choice([1, 2, 3, 4, 5, 6, 7, 8]), "x": ex.uniform(0.0, 1.0)}
    results = [
        ex.resample(k, space, {"c": 2, "x": 0.25}, resample_probability=0.5) for k in keys(800)
    ]
    kept = np.mean([r["x"] == 0.25 for r in results])
    assert abs(kept - 0.5) < 0.06
    assert {r["c"] for r in results} == set(range(1, 9))
    assert all(
        r["x"] == 0.25
        for r in (
            ex.resample(k, space, {"c": 2, "x": 0.25}, resample_probability=0.0) for k in keys(20)
        )
    )


# -- purity, structure, types -------------------------------------------------------------------
def test_pure_deterministic_and_never_mutates():
    meta = copy.deepcopy(META)
    key = keys(1)[0]
    first = ex.explore(key, SPACE, meta)
    assert meta == META
    assert ex.explore(key, SPACE, meta) == first
    assert any(ex.explore(k, SPACE, meta) != first for k in keys(5, seed=1))
    assert first["seed"] == 7  # keys the space does not name are kept
    assert first["aug"]["kind"] == "crop"
    assert first is not meta and first["aug"] is not meta["aug"]


def test_constants_are_fixed_points():
    space = {"lr": ex.uniform(0.0, 1.0), "batch": 32}
    out = ex.explore(keys(1)[0], space, {"lr": 0.5, "batch": 64})
    assert out["batch"] == 32
    assert ex.sample(keys(1)[0], space)["batch"] == 32


def test_clip_projects_onto_the_space():
    out = ex.clip(SPACE, {**META, "lr": 3.0, "wd": -1.0, "layers": 9, "aug": {"strength": 0.5}})
    assert out["lr"] == 0.02 and out["wd"] == 0.0 and out["layers"] == 5
    assert out["aug"] == {"strength": 0.4, "kind": "crop"}
    assert ex.clip(SPACE, META) == META
    with pytest.raises(ValueError, match="not one of"):
        ex.clip(SPACE, {**META, "opt": "rmsprop"})


def test_errors_name_the_value():
    with pytest.raises(KeyError, match=r"meta_params\['lr'\] is missing"):
        ex.explore(keys(1)[0], {"lr": ex.uniform(0.0, 1.0)}, {"wd": 0.1})
    with pytest.raises(TypeError, match=r"meta_params\['lr'\].*needs a number"):
        ex.perturb(keys(1)[0], {"lr": ex.uniform(0.0, 1.0)}, {"lr": "fast"})
    with pytest.raises(TypeError, match="dict"):
        ex.perturb(keys(1)[0], {"opt": {"lr": ex.uniform(0.0, 1.0)}}, {"opt": 0.1})
    with pytest.raises(ValueError, match="resample_probability"):
        ex.explore(keys(1)[0], SPACE, META, resample_probability=1.5)
    with pytest.raises(ValueError, match="perturbation_factors"):
        ex.perturb(keys(1)[0], SPACE, META, perturbation_factors=(-1.0,))


def test_numpy_values_keep_their_dtype():
    space = {"lr": ex.uniform(0.0, 1.0), "n": ex.randint(0, 10), "c": ex.choice([1.0, 2.0])}
    meta = {"lr": np.float32(0.5), "n": np.array([3, 4]), "c": np.array([1.0, 2.0], np.float32)}
    out = ex.perturb(keys(1)[0], space, meta)
    assert out["lr"].dtype == np.float32 and np.ndim(out["lr"]) == 0
    assert out["n"].dtype == meta["n"].dtype and out["n"].shape == (2,)
    assert out["c"].dtype == np.float32 and set(out["c"].tolist()) <= {1.0, 2.0}


@pytest.mark.parametrize(
    ("dtype", "top"), [(np.float32, 0.1), (np.float16, 0.3), (jnp.bfloat16, 0.1)]
)
def test_values_of_a_narrow_float_type_stay_inside_bounds_it_cannot_hold(dtype, top):
    """float32's 0.1 is 0.10000000149 (float16's 0.3 is 0.30005, bfloat16's 0.1 is
    0.1001), outside a space that ends at 0.1 (0.3): explored values, host and device,
    step inside instead."""
    space = {"lr": ex.uniform(1e-4, top)}
    low, high = np.asarray(1e-4, dtype), np.asarray(top, dtype)
    assert float(high) > top  # (the case at hand, for each type)
    host, device = [], []
    step = jax.jit(jax.vmap(lambda k, m: ex.explore(k, space, m, resample_probability=0.0)))
    for start in (high, low):
        for key in keys(40):
            host.append(ex.explore(key, space, {"lr": start[()]}, resample_probability=0.0))
        population = {"lr": jnp.full((64,), start, dtype)}
        device.append(step(jax.random.split(jax.random.key(0), 64), population))
    values = np.concatenate(
        [np.array([float(m["lr"]) for m in host])]
        + [np.asarray(d["lr"], np.float64) for d in device]
    )
    assert values.min() >= 1e-4 and values.max() <= top
    assert {type(m["lr"]) for m in host} == {type(low[()])}  # the value's own type
    assert all(d["lr"].dtype == dtype for d in device)
    # at the top, the largest value of the type below the bound is reached (clipped there)
    assert float(np.max(values)) == float(np.nextafter(high, np.asarray(0, dtype)))


def test_a_0d_array_in_a_choice_is_its_number():
    """np.array(0.9) is 0.9: clipped to itself and perturbed to its neighbour (it was
    taken for an unknown value: clip refused it, explore drew a fresh one each time)."""
    space = {"opt": ex.choice([0.0, 0.5, 0.9])}
    assert ex.clip(space, {"opt": np.array(0.9)})["opt"] == 0.9
    assert {float(ex.perturb(k, space, {"opt": np.array(0.9)})["opt"]) for k in keys(20)} == {0.5}
    # a number drawn for a value of another kind stays a number (it became the str "0")
    drawn = ex.explore(keys(1)[0], space, {"opt": np.array("a")})["opt"]
    assert float(drawn) in (0.0, 0.5, 0.9)


def test_a_str_drawn_for_a_narrower_str_array_is_not_cut():
    space = {"opt": ex.choice(["adam", "sgd"])}
    for key in keys(10):
        assert ex.explore(key, space, {"opt": np.array("x")})["opt"] in ("adam", "sgd")


def test_a_numpy_integer_scalar_stays_a_numpy_scalar():
    out = ex.perturb(keys(1)[0], {"n": ex.randint(1, 9)}, {"n": np.int32(4)})
    assert type(out["n"]) is np.int32


# -- on device: jit and vmap ----------------------------------------------------------------------
NUMERIC = {
    "lr": ex.log_uniform(1e-4, 0.02),
    "layers": ex.randint(1, 6),
    "strength": ex.choice([0.1, 0.2, 0.4, 0.8]),
}


def test_jit_applies_the_host_rule_to_the_same_uniforms(monkeypatch):
    """The two paths share every formula; only where the uniforms come from differs."""
    meta = {"lr": 0.01, "layers": 3, "strength": 0.2}
    jitted = jax.jit(lambda k, m: ex.explore(k, NUMERIC, m))
    for key in keys(8):
        leaves, _ = ex._uniform_draws(jnp.asarray(key), ((),) * len(NUMERIC))
        draws = iter([float(u) for leaf in leaves for u in leaf])
        with monkeypatch.context() as m:
            m.setattr(ex.HostRandom, "random", lambda self, d=draws: next(d))
            on_host = ex.explore(key, NUMERIC, meta)
        on_device = jitted(jnp.asarray(key), meta)
        assert on_device["layers"].dtype == jnp.int32
        assert on_device["lr"].dtype == jnp.float32
        np.testing.assert_allclose(float(on_device["lr"]), on_host["lr"], rtol=1e-5)
        assert int(on_device["layers"]) == on_host["layers"]
        np.testing.assert_allclose(float(on_device["strength"]), on_host["strength"], rtol=1e-6)


def test_vmap_over_a_population_stays_inside_and_keeps_dtypes():
    n = 512
    population = {
        "lr": jnp.full((n,), 0.019, jnp.float32),
        "layers": jnp.full((n,), 5, jnp.int32),
        "strength": jnp.full((n,), 0.8, jnp.float32),
    }
    step = jax.jit(jax.vmap(lambda k, m: ex.explore(k, NUMERIC, m, resample_probability=0.25)))
    out = step(jax.random.split(jax.random.key(0), n), population)
    assert jax.tree.map(lambda x: x.dtype, out) == jax.tree.map(lambda x: x.dtype, population)
    lr = np.asarray(out["lr"])
    assert lr.min() >= np.float32(1e-4) and lr.max() <= np.float32(0.02)
    assert np.mean(lr == np.float32(0.02)) > 0.3  # 0.019 * 1.2, clipped
    assert set(np.asarray(out["layers"]).tolist()) <= {1, 2, 3, 4, 5}
    strength = np.asarray(out["strength"])
    assert set(strength.tolist()) <= {np.float32(v) for v in (0.1, 0.2, 0.4, 0.8)}
    assert 0.6 < np.mean(strength == np.float32(0.4)) < 0.9  # the end's only neighbour


def test_a_uniform_wider_than_float32_samples_finite_values_on_device():
    # float32 holds no bound of uniform(-1e39, 1e39): the draw was -inf * (1 - u) + inf * u,
    # NaN, while the host's float64 draw is finite
    space = {"x": ex.uniform(-1e39, 1e39), "y": ex.uniform(1e38, 1e39)}
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    out = jax.jit(jax.vmap(lambda k: ex.sample(k, space)))(keys)
    big = float(np.finfo(np.float32).max)
    for name in space:
        values = np.asarray(out[name])
        assert np.isfinite(values).all() and (np.abs(values) <= big).all(), name
    assert (np.asarray(out["y"]) >= np.float32(1e38)).all()
    assert np.asarray(out["x"], np.float64).std() > 1e37  # over the range, not at one end
    # explored and clipped on device too: finite, and no overflowing constant
    meta = {"x": jnp.float32(1e38), "y": jnp.float32(3e38)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in (0.0, 1.0):
            moved = jax.jit(lambda k, m, p=p: ex.explore(k, space, m, resample_probability=p))(
                jax.random.PRNGKey(1), meta
            )
            assert all(np.isfinite(float(v)) for v in moved.values())
        nan = jnp.float32(jnp.nan)
        clipped = jax.jit(lambda m: ex.clip(space, m))({"x": nan, "y": jnp.float32(1e38)})
        assert float(clipped["x"]) == -big and 1e38 <= float(clipped["y"]) <= big


def test_sample_with_a_traced_key():
    out = jax.jit(lambda k: ex.sample(k, NUMERIC))(jax.random.key(3))
    assert float(out["lr"]) >= np.float32(1e-4) and out["layers"].dtype == jnp.int32
    with pytest.raises(TypeError, match="non-numbers"):
        jax.jit(lambda k: ex.sample(k, {"s": ex.choice(["a", "b"])}))(jax.random.key(0))


def test_nan_values_raise_on_the_host_and_are_replaced_on_device():
    space = {"lr": ex.log_uniform(1e-4, 1e-1), "w": ex.uniform(-1.0, 1.0)}
    key = jax.random.key_data(jax.random.key(0))
    for op in (
        lambda m: ex.perturb(key, space, m),
        lambda m: ex.explore(key, space, m),
        lambda m: ex.resample(key, space, m),
        lambda m: ex.clip(space, m),
    ):
        with pytest.raises(ValueError, match=r"meta_params\['lr'\] is NaN"):
            op({"lr": math.nan, "w": 0.0})
        with pytest.raises(ValueError, match=r"meta_params\['w'\] is NaN"):
            op({"lr": 0.01, "w": np.array([0.0, np.nan])})
        out = jax.jit(op)({"lr": jnp.float32(jnp.nan), "w": jnp.array([0.0, jnp.nan])})
        assert 1e-4 * 0.999 <= float(out["lr"]) <= 1e-1 * 1.001
        assert bool(jnp.all((out["w"] >= -1.0) & (out["w"] <= 1.0)))


def test_a_uniform_space_wider_than_a_float_samples_all_of_it():
    space = ex.uniform(-1e308, 1e308)
    draws = [ex.sample(np.array([0, i], np.uint32), space) for i in range(50)]
    assert all(-1e308 <= d <= 1e308 for d in draws)
    assert min(draws) < 0 < max(draws) and len(set(draws)) > 40


def test_randint_bounds_past_float64_integers_are_refused():
    with pytest.raises(ValueError, match=r"within \+-2\*\*53"):
        ex.randint(2**60, 2**60 + 10)
    assert ex.randint(-(2**53), 2**53).high == 2**53


def test_host_draws_are_a_pure_function_of_the_key_and_cover_the_space():
    meta = {"lr": 0.01, "layers": 3, "strength": 0.2}
    ks = keys(400)
    first = [ex.explore(k, NUMERIC, meta, resample_probability=1.0) for k in ks]
    assert first == [ex.explore(k, NUMERIC, meta, resample_probability=1.0) for k in ks]
    lrs = np.log([m["lr"] for m in first])
    lo, hi = np.log(1e-4), np.log(0.02)
    # uniform in log: the mean and the quartiles of 400 draws sit where they should
    assert abs(lrs.mean() - (lo + hi) / 2) < 0.1 * (hi - lo)
    assert abs(np.mean(lrs < lo + (hi - lo) / 4) - 0.25) < 0.07
    assert {m["layers"] for m in first} == {1, 2, 3, 4, 5}
    assert {m["strength"] for m in first} == {0.1, 0.2, 0.4, 0.8}


def test_host_random_is_uniform_and_reproducible():
    from jaxpop.mutators._host_random import HostRandom

    key = np.array([7, 9], np.uint32)
    a, b = HostRandom(key), HostRandom(key)
    draws = [a.random() for _ in range(4000)]
    assert draws == [b.random() for _ in range(4000)]
    assert all(0.0 <= u < 1.0 for u in draws) and abs(np.mean(draws) - 0.5) < 0.02
    assert HostRandom(key, stream=1).random() != HostRandom(key, stream=0).random()
    counts = np.bincount([HostRandom(key, s).randrange(5) for s in range(5000)], minlength=5)
    assert counts.min() > 850  # 1000 each expected
    big = HostRandom(key).uniforms((3, 100))
    assert big.shape == (3, 100) and 0.4 < big.mean() < 0.6
    with pytest.raises(ValueError):
        HostRandom(key).randrange(0)


def test_host_random_streams_are_the_hashed_key_stream_and_counter():
    """A stream's words are BLAKE2b of the key's bytes, the stream as a little-endian
    int64 and the block counter as a little-endian uint64: the same numbers in every
    version, process and platform (a run's draws do not move with the code)."""
    import hashlib
    import struct

    from jaxpop.mutators._host_random import HostRandom

    key = np.array([7, 9], np.uint32)
    for stream in (0, 3, -1, -(2**63), 2**63 - 1, np.int64(5), True):
        rng = HostRandom(key, stream=stream)
        draws = [rng.random() for _ in range(10)]  # two blocks
        words = []
        for counter in (0, 1):
            data = key.tobytes() + int(stream).to_bytes(8, "little", signed=True)
            digest = hashlib.blake2b(data + counter.to_bytes(8, "little")).digest()
            words += struct.unpack("<8Q", digest)
        assert draws == [(w >> 11) * 2.0**-53 for w in words[:10]]
    with pytest.raises(OverflowError):
        HostRandom(key, stream=2**63)


def test_infinite_or_huge_integers_clip_to_the_space_on_the_host():
    space = {"batch": ex.randint(8, 257)}
    key = keys(1)[0]
    for value, want in ((math.inf, 256), (-math.inf, 8), (1.6e308, 256)):
        assert ex.clip(space, {"batch": value}) == {"batch": want}
        assert ex.explore(key, space, {"batch": value}, resample_probability=0.0) == {"batch": want}
        assert ex.perturb(key, space, {"batch": value}) == {"batch": want}


def test_a_flat_space_decides_as_the_general_walk(monkeypatch):
    """A flat space over a dict of Python values takes a shorter path; on random spaces
    (every kind of leaf, constants, values outside the space, missing, NaN or of another
    type, which the general path decides or refuses) every operation gives what the
    general walk gives, or raises the same error."""
    import random

    rng = random.Random(0)
    kinds = [
        lambda: ex.uniform(-1.0, 2.0),
        lambda: ex.log_uniform(1e-4, 1.0),
        lambda: ex.randint(0, 9),
        lambda: ex.choice([32, 64, 128]),
        lambda: ex.choice(["adam", "sgd", None, True]),
        lambda: 0.5,  # a constant
        lambda: "name",
    ]
    values = [0.3, -5.0, 7, 1e9, 64, "sgd", "adamw", None, True, math.nan, np.float32(0.1), [1]]
    values += [10**400, math.inf]  # (an int no float holds: the general path's error)

    def outcome(op, key, space, meta):
        try:
            return ("ok", ex._apply(op, key, space, meta, 0.4, (0.8, 1.2)))
        except Exception as e:  # the same error either way
            return (type(e).__name__, str(e))

    general = ex._apply_flat
    for trial in range(600):
        space = {f"h{j}": rng.choice(kinds)() for j in range(rng.randrange(0, 4))}
        meta = {name: rng.choice(values) for name in space if rng.random() < 0.9}
        if rng.random() < 0.3:
            meta["other"] = "kept"
        key = np.array([trial, 7], np.uint32) if trial % 50 else np.array(["x", "y"])
        for op in ("perturb", "resample", "explore", "clip"):
            fast = outcome(op, key, space, meta)
            monkeypatch.setattr(ex, "_apply_flat", lambda *args: None)
            slow = outcome(op, key, space, meta)
            monkeypatch.setattr(ex, "_apply_flat", general)
            assert repr(fast) == repr(slow), (space, meta, op)  # (repr: NaN equals NaN)
            if fast[0] == "ok":
                assert [type(v) for v in fast[1].values()] == [type(v) for v in slow[1].values()]
                assert list(fast[1]) == list(slow[1])


# -- values whose dtype cannot hold the space --------------------------------------------------
@pytest.mark.parametrize(
    "space, value",
    [
        (ex.randint(0, 200), np.int8(120)),  # explored to 144: wrapped to -112
        (ex.randint(0, 300), np.array([7, 9], np.uint8)),
        (ex.choice([0.5, 1.0, 2.0]), np.int64(1)),  # 0.5 was cut to 0, not in the list
        (ex.choice([1, 2, 300]), np.uint8(2)),  # 300 wrapped to 44
        (ex.randint(0, 2**40), jnp.int32(5)),  # (without x64)
        (ex.randint(0, 200), jnp.asarray([1, 2], jnp.int8)),
        # floats hold every integer up to 2**(mantissa bits + 1) only: 999 became 1000
        (ex.randint(0, 1000), np.asarray([999.0], ml_dtypes.bfloat16)),
        (ex.randint(0, 100_000), np.float16(3.0)),  # clipped to inf
        (ex.randint(0, 2**25), jnp.asarray([1.0], jnp.float32)),
    ],
)
def test_a_dtype_that_cannot_hold_the_space_is_refused(space, value):
    for op in (
        lambda: ex.perturb(keys(1)[0], {"n": space}, {"n": value}),
        lambda: ex.clip({"n": space}, {"n": value}),
        lambda: ex.check_values({"n": space}, {"n": value}),
    ):
        with pytest.raises(ValueError, match="cannot hold every value"):
            op()


def test_a_numpy_dtype_that_holds_the_space_keeps_its_dtype():
    out = ex.perturb(
        keys(1)[0], {"n": ex.randint(0, 256)}, {"n": np.asarray([255.0], ml_dtypes.bfloat16)}
    )
    assert out["n"].dtype == ml_dtypes.bfloat16 and 0 <= float(out["n"][0]) <= 255
    out = ex.perturb(keys(1)[0], {"n": ex.randint(0, 127)}, {"n": np.int8(120)})
    assert out["n"].dtype == np.int8 and 0 <= out["n"] <= 126
    out = ex.explore(keys(1)[0], {"n": ex.choice([1.0, 2.0, 4.0])}, {"n": np.array([1, 4])})
    assert out["n"].dtype == np.int64 and set(out["n"].tolist()) <= {1, 2, 4}


def test_a_controller_refuses_an_initial_value_whose_dtype_cannot_hold_its_space():
    from jaxpop import PopulationController
    from jaxpop.mutators import MultipleFrequenciesPBT, PopulationBasedTraining

    for mutator in (
        PopulationBasedTraining(
            perturbation_interval=1, hyperparam_space={"n": ex.randint(0, 200)}
        ),
        MultipleFrequenciesPBT(t_ready=1, hyperparam_space={"n": ex.randint(0, 200)}),
    ):
        with pytest.raises(ValueError, match=r"initial_population\[0\].*int8"):
            PopulationController([{"n": np.int8(120)}] * 4, mutator)


def test_device_randint_past_2_24_stays_inside_the_space():
    # float32 arithmetic rounds 2**25 - 1 up to 2**25, which is outside [0, 2**25)
    space = {"n": ex.randint(0, 2**25)}
    value = {"n": jnp.asarray([2**25 - 1, 2**24 + 1, 3], jnp.int32)}
    key = jax.random.key(0)
    for out in (
        ex.clip(space, value),
        ex.perturb(key, space, value, perturbation_factors=(1.2,)),
        ex.resample(key, space, value, resample_probability=1.0),
        jax.jit(lambda k, v: ex.explore(k, space, v))(key, value),
    ):
        assert out["n"].dtype == jnp.int32
        assert np.all((np.asarray(out["n"]) >= 0) & (np.asarray(out["n"]) < 2**25)), out


def test_device_randint_up_to_int32_max_and_a_sample_past_it():
    space = {"seed": ex.randint(0, 2**31)}  # an int32 holds 2**31 - 1
    for op in (ex.perturb, ex.resample, ex.explore):
        out = op(jax.random.key(1), space, {"seed": jnp.int32(7)})  # (raised OverflowError)
        assert out["seed"].dtype == jnp.int32 and int(out["seed"]) >= 0
    if not jax.config.jax_enable_x64:
        with pytest.raises(ValueError, match="cannot hold every value"):
            jax.jit(lambda k: ex.sample(k, {"seed": ex.randint(0, 2**40)}))(jax.random.key(0))


def test_device_randint_past_2_24_keeps_and_draws_integers_exactly():
    """Past 2**24 float32 rounds integers: on device a value kept (clipped, or not
    resampled) stays exactly as it was, and a fresh draw reaches every integer of the
    span, not only float32's (a multiple of 128 near 2**31); in any int32 span."""
    space = {"seed": ex.randint(0, 2**31 - 1)}
    inside = jnp.asarray([123456789, 2**31 - 2, 0, 2**24 + 1], jnp.int32)
    assert np.array_equal(ex.clip(space, {"seed": inside})["seed"], inside)
    assert int(ex.clip(space, {"seed": jnp.int32(2**31 - 1)})["seed"]) == 2**31 - 2
    key = jax.random.key(0)
    kept = jax.jit(lambda k, v: ex.resample(k, space, v, resample_probability=0.0))
    assert np.array_equal(kept(key, {"seed": inside})["seed"], inside)
    value = {"seed": jnp.full(4000, 123456789, jnp.int32)}
    half = ex.resample(key, space, value, resample_probability=0.5)["seed"]
    assert 0.45 < float(np.mean(np.asarray(half) == 123456789)) < 0.55
    for span in (space["seed"], ex.randint(-(2**31), 2**31), ex.randint(2**24, 2**24 + 3)):
        keys = jax.random.split(key, 20000)
        drawn = np.asarray(jax.vmap(lambda k, sp=span: ex.sample(k, {"x": sp})["x"])(keys))
        assert drawn.dtype == np.int32
        assert drawn.min() >= span.low and drawn.max() <= span.high - 1
        if span.high - span.low > 2**24:
            assert np.mean(drawn % 128 == 0) < 0.02  # (float32's draws: all of them)
        else:
            assert set(drawn.tolist()) == {2**24, 2**24 + 1, 2**24 + 2}


def test_device_choice_of_ints_past_2_24_moves_to_the_right_neighbour():
    """A choice of ints past 2**24 stored as int32: on device its value's place in the
    list was found in float32, where neighbours round alike, so a copy holding B + 2
    always moved to B + 1 and one holding B + 1 never moved (hostile review, helper-202);
    now in-list values are found exactly, on device as on the host and in numpy arrays."""
    big = 2**25
    space = {"c": ex.choice([big, big + 1, big + 2, big + 3, big + 4])}
    keys = jax.random.split(jax.random.key(0), 400)
    for held, neighbours in ((big + 2, {big + 1, big + 3}), (big + 1, {big, big + 2})):
        value = {"c": jnp.asarray(held, jnp.int32)}
        moved = jax.jit(jax.vmap(lambda k, v=value: ex.perturb(k, space, v)["c"]))(keys)
        assert moved.dtype == jnp.int32 and set(np.asarray(moved).tolist()) == neighbours
        host = {ex.perturb(np.array([0, i], np.uint32), space, {"c": held})["c"] for i in range(40)}
        assert host == neighbours
        array = ex.perturb(np.array([0, 1], np.uint32), space, {"c": np.full(50, held, np.int32)})
        assert set(array["c"].tolist()) == neighbours
    inside = jnp.asarray([big, big + 3, big + 4], jnp.int32)
    assert np.array_equal(jax.jit(lambda v: ex.clip(space, {"c": v}))(inside)["c"], inside)
    with warnings.catch_warnings():  # (a Python int under a traced key: int32, no warning)
        warnings.simplefilter("error")
        moved = jax.jit(lambda k: ex.perturb(k, space, {"c": big + 2})["c"])(keys[0])
    assert int(moved) in {big + 1, big + 3}
    lowest = {"c": ex.choice([np.int64(-(2**63)), 0, 1])}  # (abs() of it overflows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        array = ex.perturb(np.array([0, 1], np.uint32), lowest, {"c": np.asarray([0, 1])})
    assert set(array["c"].tolist()) <= {-(2**63), 0, 1}


def test_a_float_type_that_holds_no_value_of_its_space_is_refused():
    """float16 holds none of uniform(1e5, 2e5) (inf) or log_uniform(1e-10, 1e-9) (0):
    an explored value would be outside the space, so the value is refused, on the host
    and on device (hostile review, helper-86); a space wider than the type is clamped to
    its range, as before."""
    for space in (ex.uniform(1e5, 2e5), ex.log_uniform(1e-10, 1e-9)):
        for value in (np.float16(7), jnp.float16(7), np.ones(3, np.float16)):
            with pytest.raises(ValueError, match="stored as float16"):
                ex.clip({"x": space}, {"x": value})
    assert float(ex.clip({"x": ex.uniform(0, 1e6)}, {"x": np.float16(3)})["x"]) == 3.0
    wide = ex.clip({"x": ex.uniform(-1e300, 1e300)}, {"x": np.float32(1e38)})["x"]
    assert wide.dtype == np.float32 and np.isfinite(wide)


def test_on_device_a_space_below_the_smallest_normal_number_is_refused_or_clipped_into():
    """XLA flushes float32's (and bfloat16's) subnormal numbers to 0: every value of a
    space below the smallest normal number was explored to 0, outside the space; one
    reaching below it gave some 0s (hostile review, helper-130). On the host (numpy) a
    subnormal number is kept."""
    key = np.array([0, 5], np.uint32)
    for dtype in (jnp.float32, jnp.bfloat16):
        space = {"a": ex.log_uniform(1e-44, 1e-39)}
        with pytest.raises(ValueError, match="smallest normal number"):
            ex.explore(key, space, {"a": jnp.full(4, 1e-40, dtype)})
        with pytest.raises(ValueError, match="smallest normal number"):
            jax.jit(lambda k, a, s=space: ex.explore(k, s, {"a": a}))(
                key, jnp.full(4, 1e-40, dtype)
            )
    with pytest.raises(ValueError, match="smallest normal number"):  # (a draw: all 0)
        jax.jit(lambda k, s=space: ex.sample(k, s))(key)
    space = {"a": ex.log_uniform(1e-40, 1e-30)}  # a fifth of it below float32's 1.2e-38
    negative = {"a": ex.uniform(-1e-37, -1e-40)}  # a tenth of it above -1.2e-38
    for bounds, value in ((space, 1e-35), (negative, -5e-38)):
        values = {"a": jnp.full(256, value, jnp.float32)}
        out = np.asarray(ex.explore(key, bounds, values, resample_probability=1.0)["a"])
        low, high = bounds["a"].low, bounds["a"].high
        assert (out != 0).all() and (low <= out).all() and (out <= high).all()
    host = ex.explore(key, space, {"a": np.full(256, 1e-35, np.float32)}, resample_probability=1.0)
    assert (host["a"] < np.finfo(np.float32).tiny).any()  # (kept on the host)
    # float16's subnormal numbers are float32 normals: kept on device too
    small = ex.explore(
        key, {"a": ex.log_uniform(1e-7, 1e-6)}, {"a": jnp.full(8, 3e-7, jnp.float16)}
    )
    assert (np.asarray(small["a"], np.float64) > 0).all()


def test_a_choice_of_numbers_and_strings_keeps_its_values_for_numpy_values():
    """numpy makes one dtype of [1, "a"] (strings: "1"); a numpy value of a choice of
    several kinds gets the list's own values back, and an array of strings is refused
    with a message that says so (hostile review, helper-86)."""
    key = np.array([0, 0], np.uint32)
    assert ex.clip({"c": ex.choice([1, "a"])}, {"c": np.int64(1)}) == {"c": 1}
    assert ex.clip({"c": ex.choice([1, None])}, {"c": np.int64(1)}) == {"c": 1}
    for _ in range(3):
        out = ex.perturb(key, {"o": ex.choice(["adam", 2])}, {"o": np.str_("adam")})["o"]
        assert out in ("adam", 2) and type(out) in (str, int)
        key = key + np.uint32(1)
    with pytest.raises(TypeError, match="single values only"):
        ex.perturb(key, {"o": ex.choice(["adam", "sgd"])}, {"o": np.array(["adam", "sgd"])})


def test_a_python_int_past_float64_and_a_device_bool_are_refused_clearly():
    with pytest.raises(ValueError, match="float64's range"):
        ex.check_values({"w": ex.uniform(0.0, 1e300)}, {"w": 2**1100})
    # a choice's nearest value (and +-inf's: every distance tied, the first value won)
    for value, nearest in ((10**400, 3), (-(10**400), 1), (math.inf, 3), (-math.inf, 1)):
        assert ex.clip({"w": ex.choice([1, 2, 3])}, {"w": value}) == {"w": nearest}
        assert ex.perturb(keys(1)[0], {"w": ex.choice([1, 2, 3])}, {"w": value}) == {"w": 2}
    device = ex.clip({"w": ex.choice([1, 2, 3])}, {"w": jnp.asarray([math.inf, -math.inf])})
    assert device["w"].tolist() == [3, 1]
    if not jax.config.jax_enable_x64:  # a Python int on device is an int32
        with pytest.raises(ValueError, match="cannot hold every value"):  # (OverflowError)
            jax.jit(lambda k: ex.perturb(k, {"n": ex.randint(0, 2**40)}, {"n": 5}))(
                jax.random.key(0)
            )
    with pytest.raises(TypeError, match="bool array"):  # choice([0, 1, 2]): 2 became True
        ex.perturb(jax.random.key(0), {"n": ex.choice([0, 1, 2])}, {"n": jnp.asarray([True])})
    out = ex.perturb(jax.random.key(0), {"n": ex.choice([0, 1])}, {"n": jnp.asarray([True])})
    assert out["n"].dtype == bool  # (what a bool holds)
    with pytest.raises(TypeError, match="bool array"):  # explored to True / False
        ex.perturb(jax.random.key(0), {"n": ex.randint(0, 10)}, {"n": jnp.asarray([True])})


def test_a_choice_between_tuples_explores_its_values_as_single_values():
    """choice([(64, 64), (128, 128)]) sampled a tuple, then perturb, explore, resample
    and clip took it for an array to map over and raised: a PBT run over such a space
    was accepted, then crashed at its first exploit."""
    from jaxpop import PopulationController
    from jaxpop.mutators import PopulationBasedTraining

    values = [(32, 32), (64, 64), (128, 128)]
    space = {"shape": ex.choice(values), "opt": ex.choice(["adam", ("sgd", 0.9)])}
    meta = {"shape": (64, 64), "opt": ("sgd", 0.9)}
    key = np.array([0, 7], np.uint32)
    for op in (ex.perturb, ex.explore, ex.resample, ex.clip):
        out = op(key, space, meta) if op is not ex.clip else op(space, meta)
        assert out["shape"] in values and out["opt"] in ("adam", ("sgd", 0.9))
    assert ex.perturb(key, space, meta)["shape"] in ((32, 32), (128, 128))  # a neighbour
    mixed = {**meta, "lr": np.float32(0.1)}  # (with a numpy value: the array path)
    out = ex.explore(key, {**space, "lr": ex.log_uniform(1e-4, 1.0)}, mixed)
    assert out["shape"] in values
    ragged = [("adam", (0.9, 0.999)), ("sgd", (0.9,))]  # (np.ndim of one raises)
    out = ex.perturb(
        key,
        {"opt": ex.choice(ragged), "lr": ex.log_uniform(1e-4, 1.0)},
        {"opt": ragged[0], "lr": np.float32(1e-3)},
    )
    assert out["opt"] in ragged
    pbt = PopulationBasedTraining(perturbation_interval=1, hyperparam_space=space)
    pop = PopulationController([{"shape": v, "opt": "adam"} for v in values], pbt)
    for step in range(1, 6):
        for i in range(3):
            pop.set_eval(i, pop.active_workers[i].generation_id, step, "p", float(i))
    assert pop.decision_counts.copies > 0
    assert all(w.meta_params["shape"] in values for w in pop.active_workers)


def test_a_small_negative_randint_moves_the_way_its_factor_moves_it():
    """-2 * 0.8 rounds back to -2, and the move by one went to -3 (away from zero, as
    for a factor above 1) while -3 * 0.8 went to -2: one factor, two directions."""
    space, key = {"x": ex.randint(-10, 10)}, np.array([0, 0], np.uint32)
    for x, down, up in ((-3, -2, -4), (-2, -1, -3), (-1, 0, -2), (0, -1, 1), (2, 1, 3)):
        for value in (x, np.int32(x), jnp.int32(x)):
            low = ex.perturb(key, space, {"x": value}, perturbation_factors=(0.8,))["x"]
            high = ex.perturb(key, space, {"x": value}, perturbation_factors=(1.2,))["x"]
            assert (int(low), int(high)) == (down, up), (x, type(value))


def test_under_a_traced_key_a_space_the_default_float_cannot_hold_is_refused():
    """jit-sampled uniform(1e39, 2e39) gave inf, log_uniform(1e-50, 1e-46) 0.0 and
    choice([1e39, 2.0]) inf, outside their spaces (randint was refused so already)."""
    for space in (ex.uniform(1e39, 2e39), ex.log_uniform(1e-50, 1e-46), ex.choice([1e39, 2.0])):
        with pytest.raises(ValueError, match="cannot hold every value of its space"):
            jax.jit(lambda key, s=space: ex.sample(key, {"x": s}))(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="cannot hold every value"):
        jax.jit(lambda key: ex.resample(key, {"x": ex.log_uniform(1e-50, 1e-46)}, {"x": 5e-47}))(
            jax.random.PRNGKey(0)
        )
    out = jax.jit(lambda key: ex.sample(key, {"x": ex.uniform(0.5, 2.0)}))(jax.random.PRNGKey(0))
    assert 0.5 <= float(out["x"]) <= 2.0


def test_no_space_is_an_error_not_a_constant():
    # a top-level None was taken as a constant space: explore returned None for the
    # hyperparameters, and the caller failed far away (helper-136)
    key = np.array([0, 1], np.uint32)
    for call in (
        lambda: ex.explore(key, None, {"lr": 0.1}),
        lambda: ex.perturb(key, None, {"lr": 0.1}),
        lambda: ex.resample(key, None, {"lr": 0.1}),
        lambda: ex.clip(None, {"lr": 0.1}),
        lambda: ex.sample(key, None),
    ):
        with pytest.raises(TypeError, match=r"needs a space .* got None"):
            call()
    assert ex.explore(key, {"c": None}, {"c": 1}) == {"c": None}  # (a constant inside)


def test_a_log_uniform_past_float32_draws_within_what_float32_holds():
    # exp overflowed: 63 of 64 float32 draws of log_uniform(1e30, 1e300) were float32's max
    leaf = ex.log_uniform(1e30, 1e300)
    draws = np.asarray(
        jax.vmap(lambda k: ex.sample(k, leaf))(jax.random.split(jax.random.key(0), 64))
    )
    assert draws.dtype == np.float32 and np.isfinite(draws).all()
    assert len(set(draws.tolist())) == 64 and draws.min() >= 1e30
    assert np.log10(draws).min() < 35  # (spread over 1e30 .. 3.4e38, not piled at the top)


def test_a_nan_value_of_a_numeric_choice_is_refused_on_the_host():
    """A NaN value of a numeric choice was taken as its first value (clip) or moved to
    the second (perturb), where every other space refuses NaN on the host; a NaN among
    a choice's values made host and device pick differently (helper-299)."""
    space = {"c": ex.choice([1.0, 2.0, 3.0])}
    for value in (math.nan, np.float64("nan"), np.array([1.0, np.nan])):
        with pytest.raises(ValueError, match="NaN"):
            ex.clip(space, {"c": value})
        with pytest.raises(ValueError, match="NaN"):
            ex.perturb(np.array([0, 1], np.uint32), space, {"c": value})
    with pytest.raises(ValueError, match="must not be NaN"):
        ex.choice([1.0, math.nan, 3.0])
    assert ex.clip({"c": ex.choice(["a", None])}, {"c": None}) == {"c": None}


def test_a_list_for_a_numeric_choice_is_refused_by_name():
    # (it was mapped over as an array of choices: AttributeError "'list' object has no
    # attribute 'dtype'"); a numpy array of choices is explored element by element
    space = {"c": ex.choice([0.1, 0.2, 0.3])}
    for value in ([0.1], (0.2,)):
        with pytest.raises(TypeError, match=r"chooses one number \(an array of choices"):
            ex.perturb(np.array([0, 1], np.uint32), space, {"c": value})
        with pytest.raises(TypeError, match="chooses one number"):
            ex.clip(space, {"c": value})
    out = ex.perturb(np.array([0, 1], np.uint32), space, {"c": np.array([0.1, 0.3])})
    assert set(out["c"].tolist()) <= {0.1, 0.2, 0.3}
    assert ex.clip({"c": ex.choice([[1, 2], [3]])}, {"c": [3]}) == {"c": [3]}


def test_a_host_key_that_is_not_uint32_words_is_refused():
    # (a float key was cut to ints: [0.2, 0] drew as [0.9, 0]; a (3,) key was taken)
    for key in (np.array([0.2, 0.0]), np.array([1, 2, 3], np.uint32)):
        with pytest.raises(TypeError, match="raw key"):
            ex.perturb(key, {"a": ex.uniform(0.0, 1.0)}, {"a": 0.5})
