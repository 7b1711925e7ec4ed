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
