"""Selection functions (jaxpop.mutators.selection): exact cases, statistics, jit/vmap."""

from __future__ import annotations

import functools
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import compilations
from jaxpop.mutators.selection import (
    canonical_scores,
    copy_best,
    copy_best_host,
    num_in_quantile,
    tournament,
    truncation,
    truncation_host,
)

NAN, INF = math.nan, math.inf
KEY = np.array([0, 7], dtype=np.uint32)


def host(fn, scores, key=KEY, **kwargs):
    """Calls a selection the way a host mutator does: numpy floats and a raw key."""
    return np.asarray(fn(key, np.asarray(scores, dtype=np.float64), **kwargs)).tolist()


def many(fn, scores, num_keys=4000, **kwargs):
    """The selection for ``num_keys`` keys at once (vmapped), shape (num_keys, n)."""
    keys = jax.random.split(jax.random.key(1), num_keys)
    scores = jnp.asarray(scores, jnp.float32)
    return np.asarray(jax.vmap(lambda k: fn(k, scores, **kwargs))(keys))


# -- helpers ----------------------------------------------------------------------------
def test_canonical_scores_ranks_every_non_finite_value_last_in_both_modes():
    assert canonical_scores(jnp.array([1.0, NAN, INF, -INF])).tolist() == [1.0, INF, INF, INF]
    assert canonical_scores(jnp.array([1.0, NAN, -INF]), "max").tolist() == [-1.0, INF, INF]
    assert canonical_scores(jnp.array([3, 1])).dtype == jnp.float32
    with pytest.raises(ValueError, match="mode"):
        canonical_scores(jnp.array([1.0]), "best")


@pytest.mark.parametrize(
    ("n", "q", "k"), [(1, 0.25, 0), (2, 0.25, 1), (4, 0.25, 1), (5, 0.25, 2), (10, 0.3, 3)]
)
def test_num_in_quantile(n, q, k):
    assert num_in_quantile(n, q) == k


def test_num_in_quantile_never_overlaps_and_rejects_bad_fractions():
    assert num_in_quantile(3, 0.5) == 1
    with pytest.raises(ValueError, match="quantile_fraction"):
        num_in_quantile(4, 0.6)


# -- winner-take-all ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([3.0, 1.0, 2.0], [1, 1, 1]),
        ([1.0, 1.0, 2.0], [0, 1, 0]),  # ties with the best keep going
        ([NAN, 2.0, 1.0, INF], [2, 2, 2, 2]),
        ([-INF, 2.0, 1.0], [2, 2, 2]),  # -inf is not the best: it ranks worst
        ([5.0, 5.0, 5.0], [0, 1, 2]),
        ([NAN, INF, NAN], [0, 1, 2]),
        ([4.0], [0]),
        ([2.0, 1.0], [1, 1]),
    ],
)
def test_winner_take_all_exact(scores, expected):
    assert host(copy_best, scores) == expected


def test_winner_take_all_max_mode():
    assert host(copy_best, [3.0, 1.0, NAN], mode="max") == [0, 0, 0]


# -- truncation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scores", "kwargs", "expected"),
    [
        ([4.0, 1.0, 2.0, 3.0], {}, [1, 1, 2, 3]),
        ([4.0, 1.0, 2.0, 3.0], {"mode": "max"}, [0, 0, 2, 3]),
        ([1.0, 1.0, 1.0, 1.0], {}, [0, 1, 2, 3]),  # all equal: nobody copies
        ([1.0, 2.0, 2.0, 2.0], {}, [0, 1, 2, 0]),  # ties among the bottom: the last index
        ([NAN, 1.0, 2.0, 3.0], {}, [1, 1, 2, 3]),
        ([2.0, -INF, 1.0, 3.0], {}, [0, 2, 2, 3]),
        ([NAN, NAN, NAN, NAN], {}, [0, 1, 2, 3]),
        ([7.0], {}, [0]),
        ([2.0, 1.0], {}, [1, 1]),
        ([1.0, 1.0], {}, [0, 1]),
        ([NAN, 5.0], {}, [1, 1]),
        ([NAN, INF], {}, [0, 1]),
        ([3.0, 1.0, 2.0, 4.0], {"quantile_fraction": 0.0}, [0, 1, 2, 3]),
    ],
)
def test_truncation_exact(scores, kwargs, expected):
    for seed in range(3):
        key = np.array([seed, 1], np.uint32)
        assert host(truncation, scores, key, **kwargs) == expected


def test_truncation_bottom_copies_only_strictly_better_top_members():
    # top = {0, 1} (1.0, 2.0), bottom = {2, 3}; member 2 (2.0) ties member 1: only 0 is better
    result = many(truncation, [1.0, 2.0, 2.0, 3.0], num_keys=500, quantile_fraction=0.5)
    assert set(result[:, 2]) == {0}
    assert set(result[:, 3]) == {0, 1}
    assert (result[:, :2] == [0, 1]).all()


def test_truncation_statistics_never_copies_from_the_bottom():
    scores = [5.0, 0.0, 7.0, 1.0, 6.0, 3.0, 2.0, 4.0]  # best: 1, 3; worst: 2, 4
    result = many(truncation, scores, num_keys=4000)
    keeps = [i for i in range(8) if i not in (2, 4)]
    assert (result[:, keeps] == keeps).all()
    for worst in (2, 4):
        column = result[:, worst]
        assert set(column) == {1, 3}
        assert abs(np.mean(column == 1) - 0.5) < 0.04
    # the two bottom members draw independently
    assert 0.2 < np.mean(result[:, 2] == result[:, 4]) < 0.8


def test_truncation_non_finite_top_members_are_never_parents():
    result = many(truncation, [NAN, 1.0, INF, 2.0], num_keys=500, quantile_fraction=0.5)
    # ranks: 1, 3 top; 0, 2 bottom (non-finite) copy from {1, 3}
    assert set(result[:, 0]) == {1, 3} and set(result[:, 2]) == {1, 3}
    result = many(truncation, [NAN, 1.0, INF, NAN, 2.0, 3.0], num_keys=200, quantile_fraction=0.5)
    assert set(result[:, 0]) | set(result[:, 2]) | set(result[:, 3]) <= {1, 4, 5}


# -- tournament ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([4.0], [0]),
        ([2.0, 1.0], [1, 1]),
        ([1.0, 1.0], [0, 1]),
        ([NAN, 1.0], [1, 1]),
        ([NAN, -INF], [0, 1]),
        ([3.0, 3.0, 3.0, 3.0, 3.0], [0, 1, 2, 3, 4]),
    ],
)
def test_tournament_exact(scores, expected):
    for seed in range(3):
        assert host(tournament, scores, np.array([seed, 5], np.uint32)) == expected


def test_tournament_copy_probabilities():
    scores = [0.0, 1.0, 2.0, 3.0, 4.0]
    result = many(tournament, scores, num_keys=8000)
    for i in range(5):
        column = result[:, i]
        # copies with probability (#strictly better) / (n - 1), each better one equally
        assert abs(np.mean(column != i) - i / 4) < 0.03
        for j in range(i):
            assert abs(np.mean(column == j) - 1 / 4) < 0.03
        assert not np.any(column > i)


def test_tournament_max_mode_and_nan():
    result = many(tournament, [NAN, 1.0, 5.0], num_keys=2000, mode="max")
    assert set(result[:, 2]) == {2}  # the best never copies
    assert set(result[:, 1]) == {1, 2}
    assert set(result[:, 0]) == {1, 2}
    assert abs(np.mean(result[:, 1] == 2) - 0.5) < 0.05


# -- properties over random scores ------------------------------------------------------
score_values = st.one_of(
    st.sampled_from([NAN, INF, -INF, 0.0, 1.0]),
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
)


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(score_values, min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(["min", "max"]),
)
@example(scores=[0.0, 7.006492321624085e-45], seed=0, mode="min")  # a float32 subnormal
def test_every_selection_copies_only_strictly_better_finite_members(scores, seed, mode):
    key = np.array([seed, 3], np.uint32)
    # host scores keep their exact order on the device (selection.device_scores passes
    # ranks where float32 would not: a subnormal, which XLA flushes to zero, included)
    better = np.asarray(scores, np.float64) * (-1.0 if mode == "max" else 1.0)
    better[~np.isfinite(better)] = np.inf
    for fn in (copy_best, truncation, tournament):
        result = host(fn, scores, key, mode=mode)
        assert len(result) == len(scores)
        for i, j in enumerate(result):
            assert j == i or (np.isfinite(better[j]) and better[j] < better[i])
    n = len(scores)
    k = num_in_quantile(n, 0.25)
    ranks = np.argsort(np.argsort(better, kind="stable"), kind="stable")
    for i, j in enumerate(host(truncation, scores, key, mode=mode)):
        if j != i:
            assert ranks[i] >= n - k and ranks[j] < k


@pytest.mark.parametrize(
    "scores",
    [
        [1e39, 1.0, 2.0, 3.0],  # past float32: inf on the device, as if diverged
        [-1e39, 1.0, 2.0, -3e39],
        [1.0 + 1e-9, 1.0, 1.0 + 2e-9, 0.5],  # equal in float32
        [2e-40, 1e-40, 3e-40, 0.0],  # float32 subnormals: flushed to zero by XLA
        [NAN, 1e300, -INF, 1e-300],
        np.array([2**40, 1, 2, 2**40 + 1], np.int64),  # an int32 would wrap
        np.array([16777217, 16777216, 1, 2], np.int64),  # equal in float32
    ],
)
@pytest.mark.parametrize("mode", ["min", "max"])
def test_host_scores_float32_cannot_order_are_ranked_as_on_the_host(scores, mode):
    """The device selections order host scores exactly as the host does (by their ranks
    where float32 cannot hold the order), so a member never copies a worse one, and
    copy_best agrees with its host twin."""
    scores = np.asarray(scores)
    key = np.array([1, 2], np.uint32)
    sign = -1 if mode == "max" else 1
    as_float = scores.astype(np.float64)
    value = np.where(np.isfinite(as_float), sign * as_float, INF)  # lower is better
    for fn in (copy_best, truncation, tournament):
        parents = np.asarray(fn(key, scores, mode=mode)).tolist()
        for i, j in enumerate(parents):
            assert j == i or value[j] < value[i], (fn.__name__, parents)
    assert np.asarray(copy_best(key, scores, mode=mode)).tolist() == (
        copy_best_host(None, scores, mode=mode).tolist()
    )
    assert any(j != i for i, j in enumerate(np.asarray(copy_best(key, scores, mode=mode))))
    # a single member per distinct rank: the device's truncation copies as many as the host's
    copies = np.asarray(truncation(key, scores, mode=mode, quantile_fraction=0.5))
    host_copies = truncation_host(random.Random(0), scores, mode=mode, quantile_fraction=0.5)
    assert (copies != np.arange(4)).sum() == (host_copies != np.arange(4)).sum()


# -- jit / vmap equivalence -----------------------------------------------------------------
@pytest.mark.parametrize(
    "fn",
    [
        copy_best,
        functools.partial(truncation, quantile_fraction=0.5, mode="max"),
        tournament,
    ],
)
def test_jit_and_vmap_match_the_host_call(fn):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(8, 6)).astype(np.float32)
    scores[3, 2] = NAN
    scores[5, :] = 1.0
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(4), 8)), np.uint32)
    expected = np.array([np.asarray(fn(keys[b], scores[b])) for b in range(8)])
    jitted = jax.jit(fn)
    got_jit = np.array([np.asarray(jitted(jnp.asarray(keys[b]), scores[b])) for b in range(8)])
    got_vmap = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(keys), jnp.asarray(scores)))
    np.testing.assert_array_equal(got_jit, expected)
    np.testing.assert_array_equal(got_vmap, expected)
    assert got_vmap.dtype == np.int32
    # a typed key gives the same draws as its raw data
    typed = jax.random.wrap_key_data(jnp.asarray(keys[0]))
    np.testing.assert_array_equal(np.asarray(fn(typed, scores[0])), expected[0])


def test_selection_inside_a_jitted_population_step():
    @jax.jit
    def step(key, losses, params):
        parents = truncation(key, losses, quantile_fraction=0.25)
        return params[parents]

    params = jnp.arange(8.0) * 10
    losses = jnp.array([5.0, 0.0, 7.0, 1.0, 6.0, 3.0, 2.0, 4.0])
    out = np.asarray(step(jax.random.key(0), losses, params))
    assert out[2] in (10.0, 30.0) and out[4] in (10.0, 30.0)
    np.testing.assert_array_equal(np.delete(out, [2, 4]), np.delete(np.asarray(params), [2, 4]))


# -- where: members that take part --------------------------------------------------------
SELECTIONS = {
    "copy_best": copy_best,
    "truncation": functools.partial(truncation, quantile_fraction=0.25),
    "truncation_half": functools.partial(truncation, quantile_fraction=0.5, mode="max"),
    "tournament": tournament,
}


@pytest.mark.parametrize("name", SELECTIONS)
def test_where_all_true_decides_exactly_as_without_where(name):
    fn = SELECTIONS[name]
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = (1, 2, 5, 8)[trial % 4]  # few sizes: each compiles
        tied = (trial // 4) % 2  # every size gets ties and non-finite scores too
        scores = rng.choice([0.0, 1.0, 2.0, NAN, INF], size=n) if tied else rng.normal(size=n)
        key = np.array([trial, 11], np.uint32)
        assert host(fn, scores, key, where=np.ones(n, bool)) == host(fn, scores, key)


@pytest.mark.parametrize("name", SELECTIONS)
def test_where_is_the_selection_over_the_members_that_take_part(name):
    """With a mask, the members left out never copy and are never copied, and the others
    copy whom (and as often as) the selection over ``scores[where]`` would."""
    fn = SELECTIONS[name]
    scores = np.array([3.0, 9.0, 1.0, 0.5, 7.0, NAN, 4.0, 8.0], np.float32)
    where = np.array([1, 0, 1, 0, 1, 1, 1, 1], bool)
    inside = np.flatnonzero(where)
    masked = many(fn, scores, where=jnp.asarray(where))
    compact = inside[many(fn, scores[where])]  # back to member indices
    for i in np.flatnonzero(~where):
        assert (masked[:, i] == i).all() and not (masked[:, inside] == i).any()
    for column, i in enumerate(inside):
        assert set(masked[:, i]) == set(compact[:, column])
        for j in set(compact[:, column]):  # the same frequencies, within sampling noise
            p, q = (masked[:, i] == j).mean(), (compact[:, column] == j).mean()
            assert abs(p - q) < 0.05, (i, j, p, q)


@pytest.mark.parametrize("name", SELECTIONS)
def test_where_compiles_once_per_population_size_and_handles_empty_masks(name):
    fn = SELECTIONS[name]
    base = fn.func if isinstance(fn, functools.partial) else fn
    n = 11
    scores = np.arange(n, dtype=np.float32)[::-1]
    base.clear_cache()  # what earlier tests compiled does not count
    with compilations() as compiled:
        for count in range(n + 1):
            result = host(fn, scores, where=np.arange(n) < count)
            if count <= 1:  # nobody, or one member alone: nobody copies
                assert result == list(range(n))
            elif name == "copy_best":
                assert result == [count - 1] * (count - 1) + list(range(count - 1, n))
    assert len(compiled) == 1
    with pytest.raises(ValueError, match="where must be a bool array of shape"):
        fn(KEY, scores, where=np.ones(n - 1, bool))
    with pytest.raises(ValueError, match="where must be a bool array of shape"):
        fn(KEY, scores, where=np.ones(n, np.int32))


@pytest.mark.parametrize("fn", [copy_best, truncation, tournament])
@pytest.mark.parametrize("scores", [np.float32(1.0), np.zeros((2, 3), np.float32), np.zeros(0)])
def test_scores_that_are_not_a_vector_are_refused_naming_their_shape(fn, scores):
    key = np.array([0, 1], np.uint32)
    with pytest.raises(ValueError, match=r"scores must be a non-empty vector.*got shape"):
        fn(key, scores)


def test_a_score_of_shape_one_per_member_is_told_to_be_a_scalar():
    key = np.array([0, 1], np.uint32)
    with pytest.raises(ValueError, match=r"shape \(1,\) per member\? return a scalar"):
        truncation(key, np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError, match="vmap over populations"):
        truncation(key, np.zeros((2, 4), np.float32))


def test_complex_scores_are_refused():
    with pytest.raises(TypeError, match="real numbers"):
        copy_best(np.array([0, 1], np.uint32), np.array([1 + 1j, 2.0]))


# -- one member's decision (PBT's asynchronous path) -----------------------------------------
_SORT_KEYS = st.lists(
    st.one_of(st.sampled_from([1.0, INF, NAN]), st.integers(-20, 20).map(float)), min_size=1
)


@settings(max_examples=400, deadline=None)
@given(
    keys=_SORT_KEYS.filter(lambda k: not all(math.isnan(x) for x in k)),
    choice=st.data(),
    selection=st.sampled_from(["truncation", "tournament", "copy_best"]),
    fraction=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    with_parents=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_members_decision_equals_the_host_twins(
    keys, choice, selection, fraction, with_parents, seed
):
    """PBT decides for one member straight from its sort keys (``inf``: a non-finite
    score, NaN: none), with the per-member pieces of the host twins; the answer is the
    host twin's for that member on the tiered scores, with the same random draws."""
    from jaxpop.mutators import pbt
    from jaxpop.mutators._host_random import HostRandom
    from jaxpop.mutators.selection import HOST_SELECTIONS

    keys = np.asarray(keys, np.float64)
    n = len(keys)
    i = choice.draw(st.sampled_from([j for j in range(n) if not math.isnan(keys[j])]))
    parents = None
    if with_parents and selection != "tournament":
        parents = np.asarray(choice.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    key = np.array([seed & 0xFFFF, seed >> 16], np.uint32)
    one = pbt._make_selection(selection, fraction).one(key, i, keys, lambda: parents)
    kwargs = {"members": (i,)}
    if selection == "truncation":
        kwargs["quantile_fraction"] = fraction
    if parents is not None:
        kwargs["parents"] = parents
    twin = HOST_SELECTIONS[selection](HostRandom(key, stream=i), pbt._tiered(keys), **kwargs)
    assert one == twin[i]
    assert twin[np.arange(n) != i].tolist() == np.arange(n)[np.arange(n) != i].tolist()


@jax.jit
def _device_scores_in_jit(scores):
    """``device_scores`` traced: one jit for every example (a new one each compiled anew)."""
    from jaxpop.mutators.selection import device_scores

    return device_scores(scores, np.float32)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(
        st.one_of(
            st.sampled_from([NAN, INF, -INF, 0.0, 1.0, 1.0 + 1e-9, 1e39, -1e39, 1e-40, 2.0**30]),
            # (float64 subnormals excepted: XLA reads them as 0 in jit, numpy does not)
            st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
        ),
        min_size=1,
        max_size=6,
    )
)
@example(scores=[INF, 0.0, 1e-300])  # (a float64 normal float32 flushes to 0)
def test_device_scores_decide_alike_on_the_host_and_in_jit(scores):
    # float64 scores under x64: the host casts them where float32 orders them, else
    # ranks them; traced ones were always ranked (a custom selection saw values eagerly
    # and ranks in jit), and before that were cast (1e39 became inf)
    from jaxpop.mutators.selection import device_scores

    with jax.enable_x64(True):
        on_host = np.asarray(device_scores(np.asarray(scores), np.float32), np.float32)
        traced = _device_scores_in_jit(jnp.asarray(scores))
        assert traced.dtype == jnp.float32
        flushed = np.where(np.abs(on_host) < np.finfo(np.float32).tiny, 0, on_host)  # (as XLA)
        np.testing.assert_array_equal(np.asarray(traced), flushed)


@pytest.mark.parametrize(
    "scores",
    [
        np.array([1e-45, 0.0], np.float32),
        np.array([1e-40, 0.0], np.float32),
        np.array([1e-39, 0.0], jnp.bfloat16),
    ],
    ids=["float32 1e-45", "float32 1e-40", "bfloat16 1e-39"],
)
def test_host_subnormal_scores_of_the_device_dtype_are_ordered_as_the_host_twins_do(scores):
    """Host scores already of the device's dtype skipped the subnormal check, and numpy
    bfloat16 ones every check: the device read 1e-45 as 0 (a tie) where the host twin
    has member 0 worse, and copied nothing (review)."""
    from jaxpop.mutators.selection import copy_best, copy_best_host, device_scores, truncation

    key = jax.random.PRNGKey(0)
    ranked = np.asarray(device_scores(scores))
    assert ranked[0] > ranked[1]
    host = np.asarray(scores, np.float64)
    assert copy_best(key, scores).tolist() == copy_best_host(None, host).tolist() == [1, 1]
    assert truncation(key, scores, quantile_fraction=0.5).tolist() == [1, 1]


def test_host_scores_of_the_device_dtype_that_order_alike_are_returned_as_they_are():
    from jaxpop.mutators.selection import device_scores

    scores = np.array([3.0, 1.0, np.nan], np.float32)
    assert device_scores(scores) is scores
    widened = device_scores(np.array([3.0, 1.0], jnp.bfloat16))
    assert widened.dtype == np.float32 and widened.tolist() == [3.0, 1.0]
    # computed in bfloat16 itself: numpy's finfo knows no bfloat16 (review)
    same = device_scores(np.array([3.0, 1.0], jnp.bfloat16), jnp.bfloat16)
    assert np.asarray(same, np.float32).tolist() == [3.0, 1.0]
    ranked = device_scores(np.array([3.0, 1.0, 1.001], np.float32), jnp.bfloat16)
    assert ranked.dtype == jnp.bfloat16 and np.asarray(ranked, np.float32).tolist() == [2, 0, 1]


def test_host_selections_order_big_ints_exactly_and_refuse_what_is_no_real_number():
    """float64 made int64 scores past 2**53 ties (copy_best_host kept both, the device
    copied the better); complex scores lost their imaginary part, bools were 0 / 1 and
    strings were parsed, where the device refuses them (helper-299)."""
    rng = np.random.default_rng(0)
    scores = np.array([2**62, 2**62 + 1], np.int64)
    assert copy_best_host(rng, scores, mode="max").tolist() == [1, 1]
    assert copy_best_host(rng, scores, mode="min").tolist() == [0, 0]
    for bad in (np.array([1 + 5j, 2]), np.array([True, False]), np.array(["1", "2"])):
        with pytest.raises(TypeError, match="real numbers"):
            copy_best_host(rng, bad)
