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
    # a replaced checkpoint: the view cannot follow it and is read again
    history = history.add(Checkpoint(None, {}, "b", 3.0, None, 0, 1.0))
    fresh = views.view(state, workers, history)
    assert fresh is not view and fresh.derived == {}
    views.keep(view)
    assert views.view(object(), workers, history).derived == {}  # another state
