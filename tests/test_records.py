import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpop import ActiveWorker, Checkpoint


def test_checkpoint_is_frozen_and_replace_returns_new():
    c = Checkpoint({"w": jnp.ones(2)}, {"lr": 0.1}, "g", 1.5, None, 10, 3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.value = 2.0
    d = c.replace(value=2.0)
    assert c.value == 1.5 and d.value == 2.0 and d.params is c.params
    assert c.ref == ("g", 10)


def test_records_are_pytrees_over_params_and_meta_params():
    c = Checkpoint({"w": jnp.ones(2)}, {"lr": 0.1}, "g", 1.5, ("p", 3), 10, 3.0)
    leaves = jax.tree.leaves(c)
    assert len(leaves) == 2  # w and lr; ids, steps and values are metadata
    doubled = jax.tree.map(lambda x: x * 2, c)
    assert float(doubled.meta_params["lr"]) == pytest.approx(0.2)
    assert doubled.generation_id == "g" and doubled.parent == ("p", 3) and doubled.step == 10
    w = ActiveWorker(None, {"lr": 0.1}, "g", 0)
    assert jax.tree.leaves(w) == [0.1]


def test_check_checkpoint_accepts_and_refuses_what_it_did_before_its_fast_path():
    import numpy as np

    from jaxpop.records import check_checkpoint

    good = Checkpoint(None, {}, "g", 0.5, ("f", 3), 7, 1.0)
    for ok in (good, good.replace(value=None, parent=None), good.replace(time=2)):
        check_checkpoint(ok)  # an int time: a real number, checked field by field
    check_checkpoint(good.replace(time=np.float32(1.5)))
    bad = {
        "generation_id": "", "step": 7.0, "value": 1, "time": True,
        "parent": ("f", 3, 0),
    }  # fmt: skip
    for field, value in bad.items():
        with pytest.raises(ValueError, match=rf"c\.{field}"):
            check_checkpoint(good.replace(**{field: value}), "c")
    for parent in (("", 3), ("f", 3.0), ["f", 3]):
        with pytest.raises(ValueError, match=r"c\.parent"):
            check_checkpoint(good.replace(parent=parent), "c")
    with pytest.raises(ValueError, match="c is not a Checkpoint"):
        check_checkpoint(dataclasses.replace, "c")


def test_replaced_of_a_tuple_with_replaced_just_made_reads_only_what_it_replaced():
    """``replaced`` takes a shortcut for the tuple ``with_replaced`` just made from the
    one it is compared with; on random changes (the same record again, negative
    indices, repeats, a list base, an interleaved other tuple) it equals the full
    comparison, and the note it reads is this thread's and dropped once used."""
    import random
    import threading

    from jaxpop import records

    def full(new, old):
        return [i for i, (a, b) in enumerate(zip(new, old, strict=True)) if a is not b]

    rng = random.Random(0)
    pool = [ActiveWorker(None, {}, f"g{i}", 0) for i in range(6)]
    for _ in range(300):
        n = rng.randrange(1, 7)
        base = tuple(rng.choice(pool) for _ in range(n))
        changes = [(rng.randrange(-n, n), rng.choice(pool)) for _ in range(rng.randrange(4))]
        new = records.with_replaced(base, changes)
        if rng.random() < 0.2:  # another tuple made in between: no shortcut, same answer
            records.with_replaced(new, [(0, pool[0])])
        noted = records._LAST.made is not None and records._LAST.made[0] is new
        assert records.replaced(new, base) == full(new, base)
        assert records._LAST.made is None or not noted  # the note, used, is dropped
        assert records.replaced(new, base) == full(new, base)  # (the full comparison)
    base = [pool[0], pool[1]]  # a list may change under a note: none is taken
    new = records.with_replaced(base, [(0, pool[2])])
    base[1] = pool[3]
    assert records.replaced(new, base) == [0, 1]
    made = records.with_replaced((pool[0],), [(0, pool[1])])
    seen = []
    thread = threading.Thread(target=lambda: seen.append(records._LAST.made))
    thread.start()
    thread.join()
    assert seen == [None] and records._LAST.made[0] is made
    records.forget_made()
    assert records._LAST.made is None


def test_with_replaced_reads_each_index_once():
    from jaxpop.records import replaced, with_replaced

    class Flaky:  # an int-like whose __index__ answers 0, then 1
        answers = iter([0, 1])

        def __index__(self):
            return next(self.answers)

    a, b = ActiveWorker(None, {}, "g", 0), ActiveWorker(None, {}, "h", 0)
    base = (a, a)
    new = with_replaced(base, [(Flaky(), b)])
    assert new == (b, a) and replaced(new, base) == [0]


def test_key_helpers_take_whole_numbers_only():
    from jaxpop.keys import event_key, new_generation_id, root_key, split_key

    root = root_key(0)
    for call in (
        lambda: event_key(root, 3.7),
        lambda: event_key(root, True),
        lambda: new_generation_id(root, 1.5),
        lambda: new_generation_id(root, True),
        lambda: split_key(root, 2.0),
    ):
        with pytest.raises(TypeError, match="must be an int"):
            call()
    for num in (-1, 2**40):  # (2**40 aborted the process inside jax)
        with pytest.raises(ValueError, match="0 to 2\\*\\*31 - 1 keys"):
            split_key(root, num)
    assert (event_key(root, np.int64(3)) == event_key(root, 3)).all()
    assert new_generation_id(root, np.int32(1)) == new_generation_id(root, 1)


def test_jit_tells_apart_values_that_compare_equal_and_a_nan_equals_itself():
    # a value is static metadata, which jit compared with ==: a function jitted over a
    # checkpoint of value -0.0 returned the 0.0 of its first call; a NaN value compiled
    # again at every call, and a tree function over two copies of a NaN-valued history
    # raised (hostile review, helper-135)
    import math
    import pickle

    from jaxpop import History

    traces = []

    def double(c):
        traces.append(1)
        return c.replace(params=c.params * 2)

    g = jax.jit(double)
    for value in (np.float64(0.0), np.float64(-0.0)):  # (a float subclass)
        out = g(Checkpoint(jnp.ones(2), {"lr": 0.1}, "g", value, None, 10, np.float32(1.5)))
        assert type(out.value) is np.float64 and np.signbit(out.value) == np.signbit(value)
        assert type(out.time) is np.float32
    # a float no float64 holds (a longdouble), or a float subclass, is held as itself
    wide = np.longdouble("1.0000000000000000001")
    back = jax.tree.map(lambda x: x, Checkpoint(None, {}, "g", wide, None, 1, 0.0))
    assert back.value == wide and type(back.value) is np.longdouble
    minus = g(Checkpoint(jnp.ones(2), {}, "g", np.longdouble("-0.0"), None, 1, 0.0))
    plus = g(Checkpoint(jnp.ones(2), {}, "g", np.longdouble("0.0"), None, 1, 0.0))
    assert np.signbit(minus.value) and not np.signbit(plus.value)  # (held by its bytes)
    traces.clear()
    f = jax.jit(double)
    for value in (0.0, -0.0, math.nan, math.nan, math.nan):
        out = f(Checkpoint(jnp.ones(2), {"lr": 0.1}, "g", value, None, 10, 1.5))
        assert math.copysign(1.0, out.value) == math.copysign(1.0, value) or math.isnan(value)
        assert out.time == 1.5 and out.ref == ("g", 10)
    assert len(traces) == 3  # 0.0, -0.0, NaN: each NaN call after the first is cached
    h = History().add(Checkpoint(jnp.ones(2), {"lr": 0.1}, "g", math.nan, None, 10, 0.0))
    both = jax.tree.map(lambda a, b: a + b, h, pickle.loads(pickle.dumps(h)))
    assert math.isnan(both["g"][10].value) and float(both["g"][10].params[0]) == 2.0
    assert jax.tree_util.tree_flatten_with_path(h)[0][0][0][-1] == jax.tree_util.GetAttrKey(
        "params"
    )


def test_a_checkpoint_serializes_with_flax_as_the_flax_struct_it_was():
    from flax import serialization

    c = Checkpoint({"w": np.arange(3.0)}, {"lr": 0.1}, "g", 0.5, None, 10, 1.0)
    assert serialization.to_state_dict(c) == {
        "params": {"w": c.params["w"]},
        "meta_params": {"lr": 0.1},
    }
    back = serialization.from_bytes(c.replace(params={"w": np.zeros(3)}), serialization.to_bytes(c))
    assert back.ref == c.ref and np.array_equal(back.params["w"], c.params["w"])
