"""Durable controller state: restart equivalence, damaged files, locking, durability."""

import functools
import math
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from mutator_registry import MUTATORS, NAMES

from conftest import FakeClock, noop_mutator
from jaxpop import PopulationController, core, encoding, storage
from jaxpop.keys import root_key
from jaxpop.mutators import (
    FirePBT,
    FixedSchedule,
    MultipleFrequenciesPBT,
    PopulationBasedTraining,
    WinnerTakeAllGenetic,
    explore,
)


def _mutate(meta, key):
    return {"h": meta["h"] + 0.3 * float(np.random.default_rng(key).normal())}


def _encoded(state):
    return encoding.encode(storage.state_to_plain(state))


class Workers:
    """Simulated workers following the seed protocol; survive controller restarts."""

    def __init__(self, n):
        self.gens, self.steps = [None] * n, [0] * n

    def step(self, pop, i):
        data = pop.maybe_get_worker_data(i, self.gens[i], self.steps[i], f"w{i}", None)
        if data is not None:
            self.gens[i], self.steps[i] = data.generation_id, data.step
        self.steps[i] += 5
        h = pop.history.meta_params(self.gens[i])["h"]
        pop.set_eval(i, self.gens[i], self.steps[i], f"p{i}@{self.steps[i]}", (h - 0.3) ** 2)


def _make(kind, log_dir, clock, **kw):
    spec = MUTATORS[kind]  # the workers report every 5 steps: decide every 10
    mutator = spec.make(10)
    return PopulationController(
        [{"h": 1.0}] * spec.sizes[-1], mutator, log_dir, seed=5, clock=clock, **kw
    )


@pytest.mark.parametrize("kind", NAMES)  # every mutator of tests/mutator_registry.py
@pytest.mark.parametrize("restart_every", [1, 7, 25])
def test_restart_equivalence(tmp_path, kind, restart_every):
    n = MUTATORS[kind].sizes[-1]
    clock = FakeClock()
    reference = _make(kind, None, clock)
    workers = Workers(n)
    for t in range(60):
        clock.advance(1.0)
        workers.step(reference, t % n)

    clock = FakeClock()
    workers = Workers(n)
    pop = _make(kind, tmp_path, clock, compact_after=8)
    for t in range(60):
        if t % restart_every == 0:
            pop.close()
            pop = _make(kind, tmp_path, clock, compact_after=8)
        clock.advance(1.0)
        workers.step(pop, t % n)
    pop.close()
    restored = _make(kind, tmp_path, clock)
    assert _encoded(restored.state) == _encoded(reference.state)
    assert restored.active_workers == reference.active_workers
    restored.close()


def _journal(log_dir):
    names = sorted(n for n in os.listdir(log_dir) if n.startswith("journal-"))
    return os.path.join(log_dir, names[-1])


def _run_some(log_dir, evals=10, **kw):
    pop = PopulationController(
        [{"h": 1.0}, {"h": 2.0}], WinnerTakeAllGenetic(_mutate, 10), log_dir, **kw
    )
    workers = Workers(2)
    for t in range(evals):
        workers.step(pop, t % 2)
    return pop


def test_torn_final_record_is_dropped_with_warning_and_run_goes_on(tmp_path):
    pop = _run_some(tmp_path)
    before = _encoded(pop.state)
    pop.close()
    path = _journal(tmp_path)
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(struct.pack("<II", 500, 0) + b"partial")
    with pytest.warns(storage.TornRecordWarning, match=rf"{os.path.basename(path)}.*offset {size}"):
        pop = _run_some(tmp_path, evals=0)
    assert _encoded(pop.state) == before
    assert os.path.getsize(path) == size  # truncated at the torn record
    Workers(2).step(pop, 0)  # and the run goes on
    pop.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run_some(tmp_path, evals=0).close()


@pytest.mark.parametrize("tail", [b"\x07\x00", b"\x00" * 64])
def test_other_torn_tails(tmp_path, tail):
    pop = _run_some(tmp_path)
    before = _encoded(pop.state)
    pop.close()
    with open(_journal(tmp_path), "ab") as f:
        f.write(tail)
    with pytest.warns(storage.TornRecordWarning):
        pop = _run_some(tmp_path, evals=0)
    assert _encoded(pop.state) == before
    pop.close()


def test_checksum_mismatch_of_last_record_is_torn(tmp_path):
    pop = _run_some(tmp_path)
    pop.close()
    path = _journal(tmp_path)
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.warns(storage.TornRecordWarning, match="checksum"):
        _run_some(tmp_path, evals=0).close()


def test_corruption_inside_the_journal_raises_naming_the_file(tmp_path):
    _run_some(tmp_path).close()
    path = _journal(tmp_path)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(storage.CorruptLogError, match=os.path.basename(path)):
        _run_some(tmp_path, evals=0)
    # nothing was reset: the damaged file is still there, and the lock was released
    assert open(path, "rb").read() == bytes(data)
    with pytest.raises(storage.CorruptLogError):
        _run_some(tmp_path, evals=0)


def test_corrupt_snapshot_raises_naming_the_file(tmp_path):
    _run_some(tmp_path).close()
    path = os.path.join(tmp_path, "snapshot-00000000.jpsnap")
    data = bytearray(open(path, "rb").read())
    data[20] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(storage.CorruptLogError, match="snapshot-00000000"):
        _run_some(tmp_path, evals=0)


def _frame(obj):
    payload = encoding.encode(obj)
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_newer_storage_version_raises(tmp_path):
    _run_some(tmp_path).close()
    path = os.path.join(tmp_path, "snapshot-00000000.jpsnap")
    frames = open(path, "rb").read()
    length = struct.unpack_from("<I", frames)[0]
    header = _frame({"kind": "snapshot", "storage_version": 99, "seq": 0})
    open(path, "wb").write(header + frames[8 + length :])
    with pytest.raises(storage.CorruptLogError, match="newer jaxpop storage format"):
        _run_some(tmp_path, evals=0)


def test_newer_encoding_version_raises(tmp_path):
    _run_some(tmp_path).close()
    path = _journal(tmp_path)
    payload = bytearray(encoding.encode({"x": 1}))
    payload[9] = 9  # the encoding's version byte
    with open(path, "ab") as f:
        f.write(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
        f.write(_frame({"x": 2}))
    with pytest.raises(storage.CorruptLogError, match="newer jaxpop format version"):
        _run_some(tmp_path, evals=0)


def test_missing_segment_and_journal_without_snapshot_raise(tmp_path):
    _run_some(tmp_path, evals=4).close()
    _run_some(tmp_path, evals=4).close()  # a restart opens a new segment
    snapshot = max(n for n in os.listdir(tmp_path) if n.startswith("snapshot-"))
    journals = sorted(n for n in os.listdir(tmp_path) if n.startswith("journal-"))
    assert len(journals) >= 2
    os.remove(os.path.join(tmp_path, journals[0]))
    with pytest.raises(storage.CorruptLogError, match="missing"):
        _run_some(tmp_path, evals=0)
    os.remove(os.path.join(tmp_path, snapshot))
    with pytest.raises(storage.CorruptLogError, match="no snapshot"):
        _run_some(tmp_path, evals=0)


def test_unencodable_value_raises_type_error_before_writing(tmp_path):
    pop = _run_some(tmp_path)
    gen = pop.active_workers[0].generation_id
    size, before = os.path.getsize(_journal(tmp_path)), pop.state
    with pytest.raises(TypeError, match=r"params.*object"):
        pop.set_eval(0, gen, 1000, object(), 1.0)
    assert pop.state is before and os.path.getsize(_journal(tmp_path)) == size
    pop.set_eval(0, gen, 1000, "fine", 1.0)
    pop.close()
    with pytest.raises(TypeError, match=r"meta_params"):
        PopulationController([{"h": object()}], WinnerTakeAllGenetic(_mutate, 10), tmp_path / "x")


def test_meta_params_and_params_round_trip_exactly(tmp_path):
    meta = {
        "lr": np.float32(0.1),
        "betas": (0.9, 0.999),
        "sched": [1, 2, 3],
        "aug": {"hue": np.arange(3, dtype=np.int8), "on": True, "name": "crop"},
        "none": None,
    }
    with PopulationController([meta], FixedSchedule({5: meta}), tmp_path) as pop:
        gen = pop.active_workers[0].generation_id
        pop.set_eval(0, gen, 3, {"w": np.ones((2, 2), np.float32)}, 0.5)
        before = _encoded(pop.state)
    with PopulationController([meta], FixedSchedule({5: meta}), tmp_path) as pop:
        assert _encoded(pop.state) == before
        c = pop.history[gen][3]
        assert c.params["w"].dtype == np.float32 and c.meta_params["betas"] == (0.9, 0.999)
        assert c.meta_params["aug"]["hue"].dtype == np.int8


def test_close_or_drop_releases_the_log_dir(tmp_path):
    pop = _run_some(tmp_path)
    pop.close()
    pop.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        Workers(2).step(pop, 0)
    pop = _run_some(tmp_path, evals=0)
    del pop  # dropped without close(), as seed users do
    with _run_some(tmp_path, evals=0) as pop:
        assert pop.state.num_events > 0


_HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
open(os.path.join(sys.argv[1], "lock"), "w").write(str(os.getpid()))
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_log_dir_held_by_another_process_is_refused_naming_its_pid(tmp_path):
    _run_some(tmp_path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(storage.LogDirInUseError, match=rf"in use.*pid {holder.pid}"):
            _run_some(tmp_path, evals=0)
        (tmp_path / "lock").write_text("junk\x1b[2J")  # (replaced: the directory is locked)
        with pytest.raises(storage.LogDirInUseError, match=r"in use.*\(pid unknown\)"):
            _run_some(tmp_path, evals=0)  # (it printed the file's text as the pid)
    finally:
        holder.communicate("")
    _run_some(tmp_path, evals=0).close()  # released when that process ended


def test_population_size_must_match(tmp_path):
    _run_some(tmp_path).close()
    with pytest.raises(storage.RunMismatchError, match="population size: 2 in the log_dir, 3 now"):
        PopulationController([{"h": 1.0}] * 3, WinnerTakeAllGenetic(_mutate, 10), tmp_path)
    _run_some(tmp_path, evals=0).close()  # the failed attempt released the lock


def test_compaction_deletes_old_files_and_keeps_state(tmp_path):
    pop = _run_some(tmp_path, evals=200, compact_after=10)
    pop._store.wait()
    before = _encoded(pop.state)
    pop.close()
    names = os.listdir(tmp_path)
    snapshots = [n for n in names if n.startswith("snapshot-")]
    assert len(snapshots) == 1 and snapshots[0] != "snapshot-00000000.jpsnap"
    first = int(snapshots[0][9:17])
    assert all(int(n[8:16]) >= first for n in names if n.startswith("journal-"))
    pop = _run_some(tmp_path, evals=0)
    assert _encoded(pop.state) == before
    pop.close()


def test_fsync_durability_and_bad_options(tmp_path):
    with _run_some(tmp_path, evals=6, durability="fsync") as pop:
        before = _encoded(pop.state)
    with _run_some(tmp_path, evals=0, durability="fsync") as pop:
        assert _encoded(pop.state) == before
    with pytest.raises(ValueError, match="durability"):
        _run_some(tmp_path / "b", evals=0, durability="sometimes")
    with pytest.raises(ValueError, match="compact_after"):
        _run_some(tmp_path / "c", evals=0, compact_after=0)


def test_interrupted_snapshot_tmp_file_is_ignored(tmp_path):
    pop = _run_some(tmp_path)
    before = _encoded(pop.state)
    pop.close()
    open(os.path.join(tmp_path, "snapshot-00000009.jpsnap.tmp"), "wb").write(b"half")
    with _run_some(tmp_path, evals=0) as pop:
        assert _encoded(pop.state) == before
    assert not any(".tmp" in n for n in os.listdir(tmp_path))


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00"])
def test_segment_that_died_before_its_header_is_dropped_and_numbering_continues(tmp_path, content):
    pop = _run_some(tmp_path)
    before = _encoded(pop.state)
    pop.close()
    last = _journal(tmp_path)
    seq = int(os.path.basename(last)[8:16])
    with open(os.path.join(tmp_path, f"journal-{seq + 1:08d}.jpjournal"), "wb") as f:
        f.write(content)  # created, then killed before (or while) writing the header
    for _ in range(3):  # restart repeatedly: numbering must stay consecutive
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", storage.TornRecordWarning)
            pop = _run_some(tmp_path, evals=0)
        assert _encoded(pop.state) == before
        pop.close()


def test_read_state_never_writes_and_matches_the_controller(tmp_path):
    pop = _run_some(tmp_path)
    with open(_journal(tmp_path), "ab") as f:
        f.write(b"\x07\x00")  # a record in flight
    open(os.path.join(tmp_path, "snapshot-00000009.jpsnap.tmp"), "wb").write(b"half")
    files = {n: open(os.path.join(tmp_path, n), "rb").read() for n in os.listdir(tmp_path)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = storage.read_state(tmp_path)  # while the controller holds the lock
    assert _encoded(state) == _encoded(pop.state)
    assert {n: open(os.path.join(tmp_path, n), "rb").read() for n in os.listdir(tmp_path)} == files
    pop.close()


def test_read_state_of_missing_or_empty_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.read_state(tmp_path / "nope")
    assert storage.read_state(tmp_path) is None


def test_read_state_of_a_live_run_with_compactions(tmp_path):
    import threading

    done = threading.Event()
    seen, errors = [], []

    def reader():
        while not done.is_set():
            try:
                state = storage.read_state(tmp_path)
            except Exception as e:
                errors.append(e)
                return
            if state is not None:
                seen.append(state.num_events)

    pop = _run_some(tmp_path, evals=0, compact_after=5)
    thread = threading.Thread(target=reader)
    thread.start()
    workers = Workers(2)
    for t in range(400):
        workers.step(pop, t % 2)
    done.set()
    thread.join()
    final = pop.state.num_events
    pop.close()
    assert not errors, errors
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] <= final
    assert storage.read_state(tmp_path).num_events == final


def test_snapshots_are_encoded_with_the_cyclic_gc_paused(tmp_path, monkeypatch):
    """A large snapshot's temporaries would otherwise set off a full collection that
    stalls every controller call (0.24 s at 100k checkpoints, benchmarks/controller_overhead)."""
    import gc

    seen = []
    real_encode = encoding.encode

    def spy(value):
        seen.append(gc.isenabled())
        return real_encode(value)

    monkeypatch.setattr(encoding, "encode", spy)
    pop = PopulationController([{"h": 0.0}], WinnerTakeAllGenetic(lambda m: m, 5), tmp_path)
    gen = pop.active_workers[0].generation_id
    for step in range(1, 30):
        pop.set_eval(0, gen, step, None, float(step))
    store = pop._store
    store._compact(pop.state)  # the compaction the policy would start later
    store.wait()
    pop.close()
    assert False in seen  # the snapshot's encode ran with the collector off
    assert gc.isenabled()


def test_a_log_dir_is_read_with_the_cyclic_gc_paused(tmp_path, monkeypatch):
    """Reading builds the whole history; the full collections its objects set off cost
    about 15% of a restore at 100k checkpoints (benchmarks/controller_overhead)."""
    import gc

    pop = PopulationController([{"h": 0.0}], WinnerTakeAllGenetic(lambda m: m, 5), tmp_path)
    gen = pop.active_workers[0].generation_id
    for step in range(1, 30):
        pop.set_eval(0, gen, step, None, float(step))
    state = pop.state
    pop.close()
    seen = []
    real_redo = storage.store.redo_checked

    def spy(state, changes):
        seen.append(gc.isenabled())
        return real_redo(state, changes)

    monkeypatch.setattr(storage.store, "redo_checked", spy)
    assert storage.read_state(tmp_path).num_events == state.num_events
    again = PopulationController([{"h": 0.0}], WinnerTakeAllGenetic(lambda m: m, 5), tmp_path)
    assert again.state.history == state.history
    again.close()
    assert len(seen) == 2 * 29 and not any(seen)
    assert gc.isenabled()


def test_gc_pauses_nest_and_keep_a_disabled_collector_disabled():
    import gc

    assert gc.isenabled()
    with storage.store._gc_paused():
        with storage.store._gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still runs
    assert gc.isenabled()
    gc.disable()
    try:
        with storage.store._gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
    with pytest.raises(KeyError), storage.store._gc_paused():
        raise KeyError("boom")
    assert gc.isenabled()


def test_the_run_start_is_recorded_once_and_checked(tmp_path):
    """``Store.start(started=)`` records when the run began; a resume keeps the recorded
    time; a damaged one is refused as a damaged run description."""
    from jaxpop.storage.run import is_description

    run = {"population_size": 1, "mutator": None}
    state = core.init([{"h": 0.0}], noop_mutator(), key=root_key(0), now=0.0)
    store = storage.Store(str(tmp_path), run=run)
    assert store.load() is None and store.started is None
    for bad in (math.nan, math.inf, True, "0"):
        with pytest.raises(ValueError, match="started"):
            store.start(state, started=bad)
    store.start(state, started=5.0)
    assert store.started == 5.0
    store.close()
    again = storage.Store(str(tmp_path), run=run)
    again.load()
    assert again.started == 5.0
    again.start(state, started=99.0)  # a run begins once
    assert again.started == 5.0
    again.close()
    assert not is_description({**run, "started": math.nan})
    assert not is_description({**run, "started": 1})
    assert is_description({**run, "started": 1.0})


@pytest.mark.parametrize("compact_after", [1000, 2])
def test_a_new_run_started_without_load_never_touches_a_run_there(tmp_path, compact_after):
    """Store.start with a fresh state, load() not called, on a log_dir holding a run:
    it replaced the run's snapshot 0 and then, failing on its journal, removed it (the
    run could no longer be read); on a compacted run it wrote a second run beside it
    (helper-157). It is refused, and nothing is written; start(None), what load()
    returns for no run, names that."""
    run = {"population_size": 1, "mutator": None}

    def fresh(seed):
        return core.init([{"h": float(seed)}], noop_mutator(), key=root_key(seed), now=0.0)

    store = storage.Store(str(tmp_path), run=run, compact_after=compact_after)
    state = fresh(0)
    store.start(state)
    for step in range(1, 6):  # (compacted along the way with compact_after=2)
        gen = state.workers[0].generation_id
        state, reply = core.set_eval(
            state, core.Eval(None, 0, gen, step, 1.0), 0.0, root_key(1), mutator=noop_mutator()
        )
        store.append(reply.changes, state)
        store.compact_if_due(state)
    store.close()
    files = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    again = storage.Store(str(tmp_path), run=run, compact_after=compact_after)
    with pytest.raises(
        FileExistsError, match=r"holds a run \(.*start\(\) the state load\(\) returns"
    ):
        again.start(fresh(1))
    again.close()
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == files
    assert storage.read_state(tmp_path).num_events == state.num_events
    empty = storage.Store(str(tmp_path / "empty"), run=run)
    assert empty.load() is None
    with pytest.raises(TypeError, match=r"load\(\) returns None for a log_dir that holds no run"):
        empty.start(None)
    empty.close()


_SPACE_FOR_LOCKED = {"lr": explore.log_uniform(1e-4, 1.0)}


@pytest.mark.parametrize(
    "make, changed, option",
    [
        (
            lambda v: PopulationBasedTraining(
                perturbation_interval=10, hyperparam_space=_SPACE_FOR_LOCKED, time_attr=v
            ),
            ("time", "step"),
            "time_attr",
        ),
        (
            lambda v: MultipleFrequenciesPBT(
                t_ready=v, hyperparam_space=_SPACE_FOR_LOCKED, frequencies=(1, 2)
            ),
            (10, 20),
            "t_ready",
        ),
        (
            lambda v: FirePBT(
                perturbation_interval=5,
                sub_population_sizes=v[0],
                num_evaluators=v[1],
                max_eval_steps=10,
                hyperparam_space=_SPACE_FOR_LOCKED,
            ),
            (((2, 4), 2), ((2, 3), 3)),
            "num_evaluators, sub_population_sizes",
        ),
    ],
)
def test_reconfigure_cannot_change_what_the_mutator_state_is_recorded_in(
    tmp_path, make, changed, option
):
    """A PBT run resumed with time_attr "step" for "time" read its recorded decision
    times (seconds) as steps and never decided again; MF-PBT's round is in t_ready
    steps; FIRE's state is keyed by the workers' roles (hostile review, helper-301)."""
    before, after = changed
    n = 8
    PopulationController([{"lr": 0.01}] * n, make(before), str(tmp_path)).close()
    with pytest.raises(storage.RunMismatchError, match=f"cannot change {option}"):
        PopulationController([{"lr": 0.01}] * n, make(after), str(tmp_path), reconfigure=True)
    PopulationController([{"lr": 0.01}] * n, make(before), str(tmp_path)).close()  # (intact)


def test_reconfigure_locks_a_subclasss_state_options_and_only_real_changes(tmp_path):
    """A subclass of PBT is its own kind: the lock named PBT's kind only, and the
    subclass resumed in the other unit (helper-302); an option given in another type of
    the same value (10.0 for 10, an array for a tuple) is no change of it."""

    class MyPBT(PopulationBasedTraining):
        __slots__ = ()

    space = _SPACE_FOR_LOCKED

    def fire(sizes):
        return FirePBT(
            perturbation_interval=5,
            sub_population_sizes=sizes,
            num_evaluators=2,
            max_eval_steps=10,
            hyperparam_space=space,
        )

    def mf(t_ready):
        return MultipleFrequenciesPBT(t_ready=t_ready, hyperparam_space=space, frequencies=(1, 2))

    def pbt(time_attr):
        return MyPBT(perturbation_interval=10, hyperparam_space=space, time_attr=time_attr)

    for name, before, after, refused in (
        ("subclass", pbt("time"), pbt("step"), True),
        ("t_ready", mf(10), mf(10.0), False),
        ("sizes", fire((2, 4)), fire(np.array([2, 4])), False),
    ):
        log_dir = str(tmp_path / name)
        PopulationController([{"lr": 0.01}] * 8, before, log_dir).close()
        reopen = functools.partial(
            PopulationController, [{"lr": 0.01}] * 8, after, log_dir, reconfigure=True
        )
        if refused:
            with pytest.raises(storage.RunMismatchError, match="cannot change time_attr"):
                reopen()
        else:
            reopen().close()
