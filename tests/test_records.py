import dataclasses

import jax
import jax.numpy as jnp
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


@pytest.mark.parametrize("scan_up_to", [0, 96])
def test_replaced_of_tuples_made_by_with_replaced_equals_comparing_every_entry(
    scan_up_to, monkeypatch
):
    """``replaced`` follows the tuples ``with_replaced`` made instead of comparing every
    entry (past ``_SCAN_UP_TO`` entries); over random chains (mixed with plain tuples,
    put-backs of an old entry, several at once, chains longer than it remembers) its
    answer is the full compare's."""
    import random
    from itertools import compress
    from operator import is_not

    from jaxpop import records
    from jaxpop.records import replaced, with_replaced

    monkeypatch.setattr(records, "_SCAN_UP_TO", scan_up_to)

    def full(new, old):
        return list(compress(range(len(new)), map(is_not, new, old)))

    for seed in range(200):
        rng = random.Random(seed)
        n = rng.randrange(1, 12)
        tuples = [tuple(object() for _ in range(n))]
        for _ in range(rng.randrange(1, 9)):
            base = rng.choice(tuples[-3:])
            changes = [
                (rng.randrange(n), rng.choice([object(), *base, *tuples[0]]))
                for _ in range(rng.randrange(0, 4))
            ]
            if rng.random() < 0.2:  # built by hand: no record of how
                items = list(base)
                for i, x in changes:
                    items[i] = x
                tuples.append(tuple(items))
            else:
                tuples.append(with_replaced(base, changes))
        for new in tuples:
            for old in tuples:
                assert replaced(new, old) == full(new, old), seed
    with pytest.raises(ValueError, match="cannot compare 2 assignments with 3"):
        replaced((1, 2), (1, 2, 3))
