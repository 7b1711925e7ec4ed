"""``jaxpop.mutators._views``: a kept view's derived entries follow their generations."""

import numpy as np

from jaxpop import ActiveWorker, Checkpoint, History
from jaxpop.mutators import _views


def _setup():
    views = _views.Views(lambda state, history, i, worker: (worker.step,), {"step": np.int64})
    history = History()
    for g in ("a", "b"):
        history = history.add(Checkpoint(None, {}, g, None, None, 0, 0.0))
    workers = (ActiveWorker(None, {}, "a", 0), ActiveWorker(None, {}, "b", 0))
    return views, history, workers


def test_a_derived_entry_is_dropped_when_its_generation_gets_a_checkpoint():
    views, history, workers = _setup()
    state = object()
    view = views.view(state, workers, history)
    assert view.derived == {}  # read afresh: nothing derived yet
    view.derived.update(a="curve of a", b="curve of b", c="curve of an ended generation")
    views.keep(view)
    history = history.add(Checkpoint(None, {}, "a", 1.0, ("a", 0), 5, 1.0))
    again = views.view(state, workers, history)
    assert again is view
    assert again.derived == {"b": "curve of b", "c": "curve of an ended generation"}
    views.keep(again)
    # a generation no worker is in now still drops its entry
    history = history.add(Checkpoint(None, {}, "c", 2.0, None, 3, 2.0))
    assert views.view(state, workers, history).derived == {"b": "curve of b"}


def test_a_view_read_afresh_derives_nothing_from_the_old_one():
    views, history, workers = _setup()
    state = object()
    view = views.view(state, workers, history)
    view.derived["b"] = "curve of b"
    views.keep(view)
    # a history not made from the view's: the view cannot follow it and is read again
    history = History().add_all(list(history.checkpoints()))
    fresh = views.view(state, workers, history)
    assert fresh is not view and fresh.derived == {}
    views.keep(view)
    assert views.view(object(), workers, history).derived == {}  # another state


def test_a_replaced_checkpoint_is_read_again_by_the_generations_started_from_it():
    """A report at a step already recorded replaces that checkpoint: the view reads
    again the workers of its generation and those whose generation started from it (an
    entry may read its generation's branch point), incrementally, not afresh; every
    entry then equals one read afresh."""

    def entry(state, history, i, worker):  # the value of the branch point, else -1
        parent = history.first(worker.generation_id).parent
        source = None if parent is None else history.get_checkpoint(*parent)
        latest = history.latest(worker.generation_id)
        return (-1.0 if source is None or source.value is None else source.value, latest.step)

    views = _views.Views(entry, {"source": np.float64, "step": np.int64})
    history = History()
    history = history.add(Checkpoint(None, {}, "a", 1.0, None, 5, 0.0))
    history = history.add(Checkpoint(None, {}, "b", None, ("a", 5), 5, 1.0))  # copied a@5
    history = history.add(Checkpoint(None, {}, "c", None, None, 0, 1.0))
    workers = tuple(ActiveWorker(None, {}, g, 5) for g in ("a", "b", "c"))
    state = object()
    view = views.view(state, workers, history)
    assert view["source"].tolist() == [-1.0, 1.0, -1.0]
    views.keep(view)
    history = history.add(Checkpoint(None, {}, "a", 7.0, None, 5, 2.0))  # a@5 replaced
    again = views.view(state, workers, history)
    assert again is view and again.touched == {0, 1} and again.added == {"a"}
    assert again["source"].tolist() == [-1.0, 7.0, -1.0]
    fresh = views.build(state, workers, history)
    for name in ("source", "step"):
        assert again[name].tolist() == fresh[name].tolist()


def _step_entry(state, history, i, worker):
    return (worker.step,)


def test_views_whose_entries_read_no_branch_point_skip_the_walk_a_replaced_add_needs(
    monkeypatch,
):
    """A report at a recorded step replaces that checkpoint: views whose entries read
    branch points walk every generation for the workers started from it; views made
    with ``reads_branch_points=False`` do not (it would cost O(population) per such
    report for nothing), and a pickled one keeps the setting."""
    import pickle

    from jaxpop.history import History as HistoryClass

    calls = []
    first = HistoryClass.first

    def counting_first(self, generation_id):
        calls.append(generation_id)
        return first(self, generation_id)

    for reads, expected in ((True, True), (False, False)):
        views = _views.Views(_step_entry, {"step": np.int64}, reads_branch_points=reads)
        views = pickle.loads(pickle.dumps(views))
        _, history, workers = _setup()
        state = object()
        views.keep(views.view(state, workers, history))
        history = history.add(Checkpoint("new params", {}, "a", 1.0, None, 0, 1.0))  # replaces
        with monkeypatch.context() as patch:
            patch.setattr(HistoryClass, "first", counting_first)
            calls.clear()
            view = views.view(state, workers, history)
        assert view.touched == {0}  # (incremental, not read afresh)
        assert bool(calls) is expected, (reads, calls)
