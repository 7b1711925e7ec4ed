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
