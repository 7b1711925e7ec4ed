"""What a log_dir may hold in place of its files (links, FIFOs), the event limit, and a
takeover of a controller that is still starting."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import warnings

import numpy as np
import pytest

from conftest import FakeClock
from jaxpop import PopulationController, StopWhen, encoding, storage
from jaxpop.mutators import WinnerTakeAllGenetic
from jaxpop.storage import store


def _mutate(meta, key):
    return {"h": meta["h"] + 0.3 * float(np.random.default_rng(key).normal())}


def _open(log_dir, n=2, **kw):
    mutator = WinnerTakeAllGenetic(_mutate, steps_per_exploit=10)
    kw.setdefault("clock", FakeClock())
    return PopulationController([{"h": 1.0 + i} for i in range(n)], mutator, log_dir, 3, **kw)


def _evals(pop, steps):
    gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
    for step in steps:
        pop.set_eval(0, gen, step, f"p@{step}", float(step))
    return gen


def _encoded(state):
    return encoding.encode(storage.state_to_plain(state))


def _files(log_dir, prefix):
    return sorted(n for n in os.listdir(log_dir) if n.startswith(prefix))


def _within(seconds, fn):
    """What ``fn()`` raised (``None`` if nothing); fails the test if it does not return
    within ``seconds`` (a daemon thread: a hung open or read cannot hold up pytest)."""
    outcome = []

    def call():
        try:
            fn()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{fn} did not return within {seconds} s"
    return outcome[0]


# -- 1. links are never followed when writing -----------------------------------------
def test_a_symlink_planted_as_the_lock_file_is_refused_and_its_target_left_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's data\n")
    log_dir = tmp_path / "run"
    log_dir.mkdir()
    os.symlink(victim, log_dir / "lock")
    with pytest.raises(storage.CorruptLogError, match=r"lock .*not a regular file but a symbolic"):
        _open(log_dir)
    assert victim.read_text() == "someone else's data\n"
    os.remove(log_dir / "lock")
    _open(log_dir).close()  # nothing else was changed: the run starts once it is gone


def test_a_symlink_at_a_snapshots_temporary_name_is_neither_written_nor_kept(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's data\n")
    log_dir = tmp_path / "run"
    pop = _open(log_dir, compact_after=1)
    for seq in range(1, 12):  # every name a snapshot of the next compactions could take
        os.symlink(victim, log_dir / f"snapshot-{seq:08d}.jpsnap.tmp")
    _evals(pop, range(5, 30, 5))
    before = _encoded(pop.state)
    pop.close()
    assert victim.read_text() == "someone else's data\n"
    (snapshot,) = [n for n in _files(log_dir, "snapshot-") if n.endswith(".jpsnap")]
    assert snapshot != "snapshot-00000000.jpsnap" and not os.path.islink(log_dir / snapshot)
    with _open(log_dir) as reopened:  # the planted names are removed (not their target)
        assert _encoded(reopened.state) == before
    assert not [n for n in os.listdir(log_dir) if ".tmp" in n]
    assert victim.read_text() == "someone else's data\n"


@pytest.mark.parametrize("suffix", [".tmp", ".tmp-" + "0123456789abcdef" * 2])
def test_an_interrupted_snapshots_temporary_file_of_either_naming_is_removed(tmp_path, suffix):
    pop = _open(tmp_path)
    _evals(pop, [5, 10])
    before = _encoded(pop.state)
    pop.close()
    (tmp_path / f"snapshot-00000009.jpsnap{suffix}").write_bytes(b"half")
    assert _encoded(storage.read_state(tmp_path)) == before  # (reading removes nothing)
    assert (tmp_path / f"snapshot-00000009.jpsnap{suffix}").exists()
    with _open(tmp_path) as reopened:
        assert _encoded(reopened.state) == before
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


# -- 2. a FIFO, a device or a link in place of a file is refused, not read ------------
@pytest.mark.parametrize("which", ["journal", "snapshot", "older journal", "lock"])
def test_a_fifo_in_place_of_a_file_is_refused_instead_of_hanging(tmp_path, which):
    pop = _open(tmp_path, compact_after=2)
    _evals(pop, range(5, 30, 5))
    pop.close()
    snapshot = _files(tmp_path, "snapshot-")[-1]
    seq = int(snapshot[9:17])
    name = {
        "journal": _files(tmp_path, "journal-")[-1],
        "snapshot": snapshot,
        "older journal": f"journal-{seq - 1:08d}.jpjournal",  # (read for its run id only)
        "lock": "lock",
    }[which]
    if (tmp_path / name).exists():
        os.remove(tmp_path / name)
    os.mkfifo(tmp_path / name)
    message = rf"{name} cannot be read as a jaxpop file: it is not a regular file but a FIFO"
    reads = [lambda: _open(tmp_path)]
    if which != "lock":  # (read_state does not lock)
        reads.append(lambda: storage.read_state(tmp_path, attempts=2))
    for read in reads:
        error = _within(10, read)
        assert isinstance(error, storage.CorruptLogError), error
        assert re.search(message, str(error)), error
    os.remove(tmp_path / name)
    if which == "lock":  # the refused controller left the log_dir unlocked
        _open(tmp_path).close()


@pytest.mark.parametrize(
    ("target", "kind"), [("fifo", "a FIFO"), ("missing", "a symbolic link to nothing")]
)
def test_a_symlink_in_place_of_a_journal_segment_is_refused_naming_it(tmp_path, target, kind):
    """A link read is followed only to a regular file (one to a FIFO hung the reader,
    one to ``/dev/zero`` read until memory ran out); a dangling one is named."""
    pop = _open(tmp_path)
    _evals(pop, [5, 10])
    pop.close()
    journal = tmp_path / _files(tmp_path, "journal-")[-1]
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    os.remove(journal)
    if target == "fifo":
        os.mkfifo(outside)
    os.symlink(outside, journal)
    message = rf"{journal.name} cannot be read as a jaxpop file: .* but {kind}"
    for read in (lambda: _open(tmp_path), lambda: storage.read_state(tmp_path, attempts=2)):
        error = _within(10, read)
        assert isinstance(error, storage.CorruptLogError), error
        assert re.search(message, str(error)) and str(tmp_path) in str(error), error
    assert os.path.islink(journal)  # nothing was repaired or removed


def test_a_run_mirrored_as_links_reads_as_the_run(tmp_path):
    """Reads follow a link to a regular file: a mirror made of links (``cp -rs``, a
    git-annex or DVC cache) read as the run before the reads refused links (review);
    a controller on it goes on, writing its own files (none through a link)."""
    run, mirror = tmp_path / "run", tmp_path / "mirror"
    pop = _open(run)
    _evals(pop, [5, 10])
    before = _encoded(pop.state)
    pop.close()
    mirror.mkdir()
    for name in os.listdir(run):
        if name != "lock":
            os.symlink(run / name, mirror / name)
    assert _encoded(storage.read_state(mirror)) == before
    with _open(mirror) as reopened:
        assert _encoded(reopened.state) == before


def test_a_linked_segment_with_a_torn_tail_is_refused_saying_not_to_remove_it(tmp_path):
    """The cut of a torn tail goes through no link: the error said the segment "cannot
    be read" and to remove it, which lost its acknowledged records (review); it is
    refused before any other repair, with the file the link leads to (review)."""
    run, mirror = tmp_path / "run", tmp_path / "mirror"
    pop = _open(run)
    _evals(pop, [5, 10])
    pop.close()
    segment = _files(run, "journal-")[-1]
    with open(run / segment, "ab") as f:
        f.write(b"\x10\x00\x00\x00torn")  # a torn final write
    target = (run / segment).read_bytes()
    mirror.mkdir()
    for name in os.listdir(run):
        if name != "lock":
            os.symlink(os.path.relpath(run / name, mirror), mirror / name)
    interrupted = mirror / ("snapshot-00000000.jpsnap.tmp-" + "ab" * 16)  # a repair too
    interrupted.write_bytes(b"half a snapshot")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "dropping a torn record": nothing is dropped)
        error = _within(10, lambda: _open(mirror))
    assert isinstance(error, storage.CorruptLogError), error
    assert re.search(r"ends in a torn record .* Do not remove it", str(error)), error
    assert repr(str(run / segment)) in str(error)  # where the link leads, not the link text
    assert os.path.islink(mirror / segment) and (run / segment).read_bytes() == target
    assert interrupted.exists()  # nothing changed


def test_a_dangling_link_to_the_segment_before_an_empty_one_opens(tmp_path):
    """A segment emptied by a crash is removed, and the one before it, obsolete, was
    synced through a dangling link in a mirror: the controller refused a run that
    read_state reads (review)."""
    run, mirror = tmp_path / "run", tmp_path / "mirror"
    pop = _open(run, compact_after=2)
    _evals(pop, [5, 10, 15])
    pop.close()
    files = sorted(os.listdir(run))
    n = int(_files(run, "snapshot-")[-1][len("snapshot-") : -len(".jpsnap")])
    mirror.mkdir()
    for name in files:
        if name != "lock":
            os.symlink(run / name, mirror / name)
    segment = f"journal-{n:08d}.jpjournal"
    os.remove(mirror / segment)
    (mirror / segment).write_bytes(b"")  # the controller died creating it
    previous = f"journal-{n - 1:08d}.jpjournal"
    assert previous not in files
    os.symlink(run / previous, mirror / previous)  # compacted away: it dangles
    expected = storage.read_state(mirror, attempts=1).num_events
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _open(mirror) as reopened:
            assert reopened.state.num_events == expected


def test_a_link_loop_and_a_dangling_link_to_an_obsolete_file_read_as_they_are(tmp_path):
    run, mirror = tmp_path / "run", tmp_path / "mirror"
    pop = _open(run, compact_after=2)
    _evals(pop, [5, 10, 15])
    pop.close()
    mirror.mkdir()
    for name in os.listdir(run):
        if name != "lock":
            os.symlink(run / name, mirror / name)
    old = "snapshot-00000000.jpsnap"  # compacted away: a link to it leads nowhere
    assert old not in os.listdir(run)
    os.symlink(run / old, mirror / old)
    assert storage.read_state(mirror).num_events == storage.read_state(run).num_events
    newest = _files(mirror, "journal-")[-1]
    os.remove(mirror / newest)
    os.symlink(mirror / newest, mirror / newest)  # a link to itself
    with pytest.raises(storage.CorruptLogError, match=r"a loop of symbolic links"):
        storage.read_state(mirror, attempts=1)


@pytest.mark.parametrize("record", ["fifo", "nested"])
def test_a_fifo_as_the_migration_record_does_not_hang_the_controller(tmp_path, caplog, record):
    """check_not_seed_run opened seed-migration.json with a plain open: a FIFO there
    hung the controller, a link to /dev/zero filled memory (review)."""
    from jaxpop.storage import seed_state

    _open(tmp_path).close()
    (tmp_path / seed_state.SEED_STATE_FILE).write_bytes(b"the seed's state")
    if record == "fifo":
        os.mkfifo(tmp_path / seed_state.MIGRATION_FILE)
    else:  # (json raised RecursionError, which failed the controller: review)
        (tmp_path / seed_state.MIGRATION_FILE).write_text("[" * 100_000)
    with caplog.at_level("WARNING", logger="jaxpop"):
        assert _within(10, lambda: _open(tmp_path).close()) is None
    assert "was not migrated here" in caplog.text


# -- 3. the last event a run can number ------------------------------------------------
def _at_event(pop, num_events):
    """``pop`` with its state moved to ``num_events`` (through ``load_state``)."""
    outer = encoding.decode(pop.serialized_state())
    plain = encoding.decode(outer["payload"])
    plain["state"]["num_events"] = num_events
    payload = encoding.encode(plain)
    digest = hashlib.sha256(payload).digest()
    assert pop.load_state(encoding.encode({**outer, "payload": payload, "sha256": digest}))


def test_the_last_of_2_32_events_is_journaled_and_reopens_and_the_next_is_refused(tmp_path):
    pop = _open(tmp_path)
    _at_event(pop, 2**32 - 1)
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 5, "p@5", 1.0)  # event 2**32 - 1, the last: acknowledged
    assert pop.state.num_events == 2**32
    pop.close()
    with _open(tmp_path) as reopened:
        assert reopened.state.num_events == 2**32
        assert reopened.history.get_checkpoint(gen, 5).value == 1.0
        files = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
        with pytest.raises(ValueError, match=r"this run has used all 2\*\*32 events"):
            reopened.set_eval(0, gen, 10, "p@10", 2.0)
        # (a call that changes nothing is answered: a restart's ask of its assignment)
        assert reopened.maybe_get_worker_data(1, None, 0, None, None).step == 0
        assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == files
        assert reopened.state.num_events == 2**32
    assert storage.read_state(tmp_path).num_events == 2**32
    # stop_when takes a key after every call and when a run opens: it opens (it
    # raised, and so did the last event taken with it: review)
    with _open(tmp_path, stop_when=StopWhen(step=1000)) as reopened:
        assert reopened.state.num_events == 2**32


def test_a_vectorized_round_past_the_last_event_is_refused_before_it_is_journaled(tmp_path):
    """vectorized.record counted past the last event, and the journal took it: the
    log_dir could no longer be opened (review)."""
    from jaxpop import vectorized

    with _open(tmp_path) as pop:
        state = pop.state._with(num_events=2**32)
    with pytest.raises(ValueError, match=r"this run has used all 2\*\*32 events"):
        vectorized.record(state, np.zeros(2), step=5, now=1.0)


# -- 4. a takeover of a controller that is still starting -----------------------------
def _slow_first_snapshot(monkeypatch):
    """Makes the thread named "live" write its snapshots slowly; the Event is set once
    it is writing one."""
    real, writing = store._write_snapshot, threading.Event()

    def slow(*args, **kwargs):
        if threading.current_thread().name == "live":
            writing.set()
            time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_write_snapshot", slow)
    return writing


def _start_live(tmp_path, monkeypatch):
    writing, live = _slow_first_snapshot(monkeypatch), []
    thread = threading.Thread(target=lambda: live.append(_open(tmp_path)), name="live")
    thread.start()
    assert writing.wait(10)  # the live controller is writing its snapshot 0 now
    return thread, live


def test_a_newcomer_refused_while_the_live_controller_starts_leaves_it_running(
    tmp_path, monkeypatch
):
    thread, live = _start_live(tmp_path, monkeypatch)
    with pytest.raises(storage.RunMismatchError, match="population"):
        _open(tmp_path, n=3)  # another population size: refused before taking over
    thread.join()
    (pop,) = live
    _evals(pop, [5, 10])  # still the writer
    state = pop.state
    pop.close()
    assert _encoded(storage.read_state(tmp_path)) == _encoded(state)


def test_a_newcomer_takes_over_a_controller_loading_its_run_only_once_it_has_read_it(
    tmp_path, monkeypatch
):
    """Two controllers made at once on one log_dir: the newer one closed the older's
    directory while the older read and repaired the run through it (AssertionError,
    EBADF, or ENOTDIR from a reused descriptor, where a repair could remove another
    folder's files: helper-256). The older now finishes reading, then is superseded."""
    with _open(tmp_path) as pop:
        _evals(pop, [5, 10])
        state = pop.state
    real, reading = store._load, threading.Event()

    def slow(*args, **kwargs):
        loaded = real(*args, **kwargs)
        if threading.current_thread().name == "live":
            reading.set()
            time.sleep(0.3)  # (the newer one takes over meanwhile)
        return loaded

    monkeypatch.setattr(store, "_load", slow)
    opened = []

    def open_live():
        try:
            opened.append(_open(tmp_path))
        except Exception as e:  # superseded before it started, or (before) broken
            opened.append(e)

    thread = threading.Thread(target=open_live, name="live")
    thread.start()
    assert reading.wait(10)
    newer = _open(tmp_path)
    thread.join()
    (older,) = opened
    if isinstance(older, PopulationController):  # (it started first: superseded since)
        with pytest.raises(storage.SupersededError):
            older.maybe_get_worker_data(0, None, 0, None, None)
    else:
        assert isinstance(older, storage.SupersededError), repr(older)
    assert _encoded(newer.state) == _encoded(state)
    newer.close()


def test_closing_a_store_never_waits_for_the_registry_lock(tmp_path):
    """close() runs in finalizers, which the garbage collector can run in a thread that
    holds a Store's I/O lock (reading its run) while a newer Store of that log_dir holds
    the registry's lock and waits for that I/O lock: both waited for good (review)."""
    opened = store.Store(tmp_path)
    holding, release = threading.Event(), threading.Event()

    def hold_the_registry():
        with store._open_stores_lock:
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_registry, daemon=True)
    holder.start()
    assert holding.wait(10)
    closer = threading.Thread(target=opened.close, daemon=True)
    closer.start()
    closer.join(10)
    closed_in_time = not closer.is_alive()
    release.set()
    holder.join(10)
    assert closed_in_time and opened.closed
    store.Store(tmp_path).close()  # (its entry, left behind, takes nothing over)


def test_a_store_taken_over_lets_a_compaction_it_started_finish_first(tmp_path, monkeypatch):
    """A compaction started between _release's wait and its I/O lock (a call journaled
    just before a takeover) wrote its snapshot through the directory descriptor after it
    was closed (and, reused, could name another folder: review)."""
    pop = _open(tmp_path, compact_after=1)
    gen = _evals(pop, [5])
    live = pop._store
    first_wait, in_compaction = threading.Event(), threading.Event()
    real_wait, real_write = store.Store.wait, store._write_snapshot
    closed_under_it = []

    def wait(self):
        real_wait(self)
        if threading.current_thread().name == "closer" and not first_wait.is_set():
            first_wait.set()
            assert in_compaction.wait(10)  # the compaction starts now, lock not yet taken

    def write(directory, seq, *args, **kwargs):
        if threading.current_thread().name == "jaxpop-snapshot":
            in_compaction.set()
            time.sleep(0.3)  # (the closer takes the lock meanwhile)
            closed_under_it.append(live._dir is None)
        return real_write(directory, seq, *args, **kwargs)

    monkeypatch.setattr(store.Store, "wait", wait)
    monkeypatch.setattr(store, "_write_snapshot", write)
    closer = threading.Thread(target=live.close, name="closer")
    closer.start()
    assert first_wait.wait(10)
    live._records = max(live.compact_after, live._snapshot_size)  # (a compaction is due)
    live.compact_if_due(pop.state)
    closer.join(10)
    assert not closer.is_alive() and closed_under_it == [False]
    monkeypatch.undo()
    with _open(tmp_path) as reopened:
        assert reopened.history.get_checkpoint(gen, 5) is not None


def test_a_store_waits_for_its_snapshot_thread_without_holding_its_io_lock(tmp_path, monkeypatch):
    """Joined under the I/O lock, a snapshot thread whose garbage collection ran a
    finalizer closing the same Store waited for that lock: a deadlock (review)."""
    pop = _open(tmp_path)
    _evals(pop, [5])
    held = []
    real_wait = store.Store.wait

    def wait(self):
        held.append(self._io_lock.locked())
        real_wait(self)

    monkeypatch.setattr(store.Store, "wait", wait)
    pop.close()
    assert held and not any(held)


def test_a_newcomer_that_matches_takes_over_a_controller_that_was_starting(tmp_path, monkeypatch):
    thread, live = _start_live(tmp_path, monkeypatch)
    newer = _open(tmp_path)
    thread.join()
    (old,) = live
    with pytest.raises(storage.SupersededError):
        old.maybe_get_worker_data(0, None, 0, None, None)
    _evals(newer, [5, 10])
    state = newer.state
    newer.close()
    assert _encoded(storage.read_state(tmp_path)) == _encoded(state)
