"""Storage under faults: failing writes, damaged and hostile files, reopening a run.

The bar everywhere: every call that returned normally is recovered on reopening; a file
damaged anywhere but at the true end of the newest journal segment is a
``CorruptLogError`` naming it, and the file is left as it was; nothing is silently lost.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import linecache
import logging
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings

import jax
import msgpack
import numpy as np
import pytest
from faults import FaultyOS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FakeClock, noop_mutator, run_python
from jaxpop import PopulationController, cli, encoding, storage
from jaxpop.core import Changes
from jaxpop.mutators import FixedSchedule, PopulationBasedTraining, WinnerTakeAllGenetic, explore
from jaxpop.records import Checkpoint
from jaxpop.storage import frames, store


def _mutate(meta, key):
    return {"h": meta["h"] + 0.3 * float(np.random.default_rng(key).normal())}


def _open(log_dir, mutator=None, n=2, **kw):
    mutator = mutator or WinnerTakeAllGenetic(_mutate, steps_per_exploit=10)
    kw.setdefault("clock", FakeClock())
    return PopulationController([{"h": 1.0 + i} for i in range(n)], mutator, log_dir, 3, **kw)


class Driver:
    """Seed-protocol workers; remembers every eval a controller acknowledged."""

    def __init__(self, n=2):
        self.gens, self.steps = [None] * n, [0] * n
        self.acked: dict[tuple[str, int], float] = {}
        self.turn = 0

    def step(self, pop):
        i, self.turn = self.turn % len(self.gens), self.turn + 1
        data = pop.maybe_get_worker_data(i, self.gens[i], self.steps[i], f"w{i}", None)
        if data is not None:
            self.gens[i], self.steps[i] = data.generation_id, data.step
        step = self.steps[i] + 5
        value = (pop.history.meta_params(self.gens[i])["h"] - 0.3) ** 2 + step * 1e-3
        pop.set_eval(i, self.gens[i], step, f"p{i}@{step}", value)
        self.steps[i] = step
        self.acked[(self.gens[i], step)] = value

    def run(self, pop, calls):
        for _ in range(calls):
            self.step(pop)

    def check(self, state):
        for ref, value in self.acked.items():
            checkpoint = state.history.get_checkpoint(*ref)
            assert checkpoint is not None, f"acknowledged eval {ref} lost"
            assert checkpoint.value == value


def _files(log_dir, prefix):
    return sorted(os.path.join(log_dir, n) for n in os.listdir(log_dir) if n.startswith(prefix))


def _frame_offsets(path):
    with open(path, "rb") as f:
        data = f.read()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 8 + struct.unpack_from("<I", data, offset)[0]
    return offsets, len(data)


def _encoded(state):
    return encoding.encode(storage.state_to_plain(state))


def _loaded(log_dir):
    """What a reopening controller's store finds (the load alone, lock and repair included)."""
    s = storage.Store(str(log_dir))
    try:
        return s.load()
    finally:
        s.close()


# -- 1. the journal: damage vs torn tails --------------------------------------------
def _journal_with_records(tmp_path, calls=12):
    pop = _open(tmp_path)
    driver = Driver()
    driver.run(pop, calls)
    pop.close()
    (path,) = _files(tmp_path, "journal-")
    return path, driver


@pytest.mark.parametrize("bit", [0, 7, 12, 25, 31])
def test_a_flipped_bit_in_a_length_field_is_corruption_not_a_torn_tail(tmp_path, bit):
    path, _ = _journal_with_records(tmp_path)
    offsets, _ = _frame_offsets(path)
    original = open(path, "rb").read()
    damaged = bytearray(original)
    target = offsets[len(offsets) // 2]
    struct.pack_into(
        "<I", damaged, target, struct.unpack_from("<I", damaged, target)[0] ^ (1 << bit)
    )
    open(path, "wb").write(bytes(damaged))
    for read in (_loaded, storage.read_state):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no torn-tail warning either
            with pytest.raises(
                storage.CorruptLogError, match=rf"{os.path.basename(path)}.*{target}"
            ):
                read(tmp_path)
    assert open(path, "rb").read() == bytes(damaged)  # left as it was


def test_random_bytes_over_the_newest_segments_header_are_corruption(tmp_path):
    path, _ = _journal_with_records(tmp_path)
    damaged = bytearray(open(path, "rb").read())
    damaged[:16] = np.random.default_rng(0).bytes(16)
    open(path, "wb").write(bytes(damaged))
    for read in (_loaded, storage.read_state):
        with pytest.raises(storage.CorruptLogError, match="good records after"):
            read(tmp_path)
    assert open(path, "rb").read() == bytes(damaged)


def test_a_damaged_last_record_of_an_older_segment_is_corruption(tmp_path):
    pop = _open(tmp_path)
    Driver().run(pop, 6)
    pop.close()
    pop = _open(tmp_path)  # a restart opens a new segment
    Driver().run(pop, 2)
    pop.close()
    older = _files(tmp_path, "journal-")[0]
    with open(older, "r+b") as f:
        f.truncate(os.path.getsize(older) - 3)
    with pytest.raises(storage.CorruptLogError, match=rf"{os.path.basename(older)}.*newest"):
        _loaded(tmp_path)


def test_a_torn_tail_is_dropped_wherever_the_write_was_cut(tmp_path):
    path, _ = _journal_with_records(tmp_path, calls=6)
    offsets, size = _frame_offsets(path)
    original = open(path, "rb").read()
    complete = _encoded(storage.read_state(tmp_path))
    # cut the journal at every byte of its last record: the record is dropped, with a
    # warning naming the offset, and everything before it is kept
    events = storage.read_state(tmp_path).num_events
    for cut in range(offsets[-1] + 1, size):
        open(path, "wb").write(original[:cut])
        assert storage.read_state(tmp_path).num_events == events - 1  # without repairing
        assert len(open(path, "rb").read()) == cut
        with pytest.warns(storage.TornRecordWarning, match=rf"offset {offsets[-1]}"):
            state = _loaded(tmp_path)
        assert os.path.getsize(path) == offsets[-1]
        assert state.num_events == events - 1
    open(path, "wb").write(original)
    assert _encoded(_loaded(tmp_path)) == complete


# -- 1. failed writes leave the journal as it was ------------------------------------
@pytest.fixture
def faulty(monkeypatch):
    fake = FaultyOS()
    monkeypatch.setattr(store, "os", fake)
    return fake


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_a_full_disk_fails_the_call_and_keeps_the_journal_whole(tmp_path, faulty, durability):
    pop = _open(tmp_path, durability=durability, compact_after=10_000)
    driver = Driver()
    driver.run(pop, 8)
    (path,) = _files(tmp_path, "journal-")
    size, state = os.path.getsize(path), pop.state
    faulty.space = 37  # the next record is cut short, then the disk is full
    with pytest.raises(storage.JournalWriteError) as info:
        driver.run(pop, 5)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert "not recorded" in str(info.value) and info.value.filename == path
    assert os.path.getsize(path) == size  # cut back to the last complete record
    assert pop.state is state  # nothing of the failed call was taken
    for _ in range(3):  # while the disk stays full, every call fails the same way
        with pytest.raises(storage.JournalWriteError):
            Driver().step(pop)
        assert os.path.getsize(path) == size
    faulty.heal()  # room again: the same controller goes on
    driver = Driver()
    driver.run(pop, 4)
    pop.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = _open(tmp_path)
    driver.check(reopened.state)
    assert _encoded(reopened.state) == _encoded(pop.state)
    reopened.close()


def test_a_write_whose_undo_fails_refuses_calls_until_reopened(tmp_path, faulty):
    pop = _open(tmp_path, compact_after=10_000)
    driver = Driver()
    driver.run(pop, 6)
    acknowledged = dict(driver.acked)
    faulty.space = 11
    faulty.fail("ftruncate")
    with pytest.raises(storage.JournalWriteError, match="could not be cut off the journal"):
        driver.run(pop, 3)
    faulty.heal()
    with pytest.raises(storage.JournalWriteError, match="refusing to journal"):
        driver.step(pop)
    pop.close()
    with pytest.warns(storage.TornRecordWarning):  # the partial record is dropped
        reopened = _open(tmp_path)
    driver.acked = acknowledged
    driver.check(reopened.state)
    assert reopened.state.num_events == pop.state.num_events
    reopened.close()


def test_a_failed_fsync_fails_the_call_and_removes_its_record(tmp_path, faulty):
    pop = _open(tmp_path, durability="fsync", compact_after=10_000)
    driver = Driver()
    driver.run(pop, 4)
    (path,) = _files(tmp_path, "journal-")
    size, state = os.path.getsize(path), pop.state
    faulty.fail("fdatasync", times=1)
    with pytest.raises(storage.JournalWriteError, match="not recorded"):
        driver.step(pop)
    assert os.path.getsize(path) == size and pop.state is state
    faulty.heal()
    driver.run(pop, 2)
    pop.close()
    driver.check(storage.read_state(tmp_path))


def test_a_failed_segment_switch_touches_no_other_file(tmp_path, faulty, caplog):
    pop = _open(tmp_path, compact_after=5)
    driver = Driver()
    driver.run(pop, 3)
    faulty.fail("open")  # the next segment cannot be created
    with caplog.at_level(logging.ERROR, logger="jaxpop"):
        driver.run(pop, 6)  # compaction fails after the record was written: calls succeed
    assert "cannot start a new journal segment" in caplog.text
    assert caplog.text.count("cannot start a new journal segment") == 1  # not at every call
    other = tmp_path / "application.txt"
    with open(other, "wb"):  # takes the lowest free descriptor number
        driver.run(pop, 3)
    assert other.read_bytes() == b""
    faulty.heal()
    driver.run(pop, 6)  # compaction works again
    pop.close()  # and close() releases the lock
    reopened = _open(tmp_path)
    driver.check(reopened.state)
    assert _encoded(reopened.state) == _encoded(pop.state)  # one record per event number
    reopened.close()


def test_a_segment_that_cannot_be_opened_at_start_fails_start_and_releases(tmp_path, faulty):
    pop = _open(tmp_path)
    Driver().run(pop, 3)
    pop.close()
    before = sorted(os.listdir(tmp_path))
    faulty.fail("write", after=0)  # the new segment's header cannot be written
    with pytest.raises(OSError):
        _open(tmp_path)
    faulty.heal()
    assert sorted(os.listdir(tmp_path)) == before  # the half-made segment is gone
    _open(tmp_path).close()


def test_a_failed_snapshot_leaves_no_temporary_file_and_loses_nothing(tmp_path, faulty):
    pop = _open(tmp_path, compact_after=4)
    driver = Driver()
    faulty.fail("replace")
    driver.run(pop, 12)
    pop._store.wait()
    assert isinstance(pop._store.snapshot_error, OSError)
    assert not [n for n in os.listdir(tmp_path) if ".jpsnap.tmp" in n]
    faulty.heal()
    pop.close()
    driver.check(storage.read_state(tmp_path))
    _open(tmp_path).close()


_TESTS = os.path.dirname(os.path.abspath(__file__))
_FILE_SIZE_LIMIT_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    sys.path.insert(0, sys.argv[2])
    from test_storage_faults import Driver, _open
    from jaxpop import storage
    pop = _open(sys.argv[1], compact_after=6)
    driver = Driver()
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    failures = 0
    for _ in range(400):
        try:
            driver.step(pop)
        except storage.JournalWriteError as e:
            assert e.errno == 27, e  # EFBIG
            failures += 1
            continue
        (gen, step), value = list(driver.acked.items())[-1]
        print("ACK", gen, step, repr(value), flush=True)
    print("FAILURES", failures, flush=True)
    """
)


def test_a_file_size_limit_in_a_child_loses_no_acknowledged_eval(tmp_path):
    log_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT_CHILD, str(log_dir), _TESTS, "4000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    acked = {}
    for line in lines:
        if line.startswith("ACK "):
            _, gen, step, value = line.split()
            acked[(gen, int(step))] = float(value)
    assert int(lines[-2].split()[1]) > 0  # the limit was hit
    assert len(acked) > 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every failed write was undone: no torn tail
        reopened = _open(log_dir)
    driver = Driver()
    driver.acked = acked
    driver.check(reopened.state)
    reopened.close()


# -- 1. restarts after an empty newest segment ------------------------------------------
@pytest.mark.parametrize("case", ["empty newest segment", "lost header after compaction"])
def test_restarting_twice_after_an_empty_newest_segment_works(tmp_path, case):
    pop = _open(tmp_path, compact_after=4)
    driver = Driver()
    driver.run(pop, 3)
    if case == "lost header after compaction":  # run until a compaction just happened
        while True:
            driver.step(pop)
            pop._store.wait()
            newest = _files(tmp_path, "journal-")[-1]
            snapshot = newest.replace("journal-", "snapshot-").replace(".jpjournal", ".jpsnap")
            if len(_frame_offsets(newest)[0]) == 1 and os.path.exists(snapshot):
                break
    pop.close()
    newest = _files(tmp_path, "journal-")[-1]
    if case == "empty newest segment":  # died creating the next segment
        seq = int(newest[-18:-10]) + 1
        open(os.path.join(tmp_path, f"journal-{seq:08d}.jpjournal"), "wb").close()
    else:  # the snapshot is there, its segment's unsynced header is not
        open(newest, "wb").close()
    for _ in range(3):
        pop = _open(tmp_path, compact_after=4)
        driver.run(pop, 2)
        pop.close()
    reopened = _open(tmp_path)
    driver.check(reopened.state)
    reopened.close()


# -- 2. hostile and damaged files -----------------------------------------------------
def _nested_ext(levels):
    inner = msgpack.packb(0)
    for _ in range(levels):
        inner = msgpack.packb([msgpack.ExtType(1, inner)])
    return encoding._HEADER + b"\x01" + inner


def _write_snapshot_payload(log_dir, payload, seq=0):
    header = frames.frame(encoding.encode({"kind": "snapshot", "storage_version": 2, "seq": seq}))
    with open(os.path.join(log_dir, f"snapshot-{seq:08d}.jpsnap"), "wb") as f:
        f.write(header + frames.frame(payload))


def test_deeply_nested_records_are_corruption_not_a_crash(tmp_path, capsys):
    for levels in (150, 400, 5000):
        with pytest.raises(ValueError, match="levels deep"):
            encoding.decode(_nested_ext(levels))
    _write_snapshot_payload(tmp_path, _nested_ext(400))
    for read in (_loaded, storage.read_state):
        with pytest.raises(storage.CorruptLogError, match=r"snapshot-00000000.*levels deep"):
            read(tmp_path)
    assert cli.main(["report", str(tmp_path)]) == 1
    assert "levels deep" in capsys.readouterr().err
    # and a deep journal record
    shutil.rmtree(tmp_path)
    pop = _open(tmp_path)
    Driver().run(pop, 2)
    pop.close()
    with open(_files(tmp_path, "journal-")[-1], "ab") as f:
        f.write(frames.frame(_nested_ext(400)) + frames.frame(encoding.encode(1)))
    with pytest.raises(storage.CorruptLogError, match="levels deep"):
        _loaded(tmp_path)


@pytest.mark.parametrize(
    "leaf",
    [
        1,
        np.float32(1.5),
        np.arange(3.0),
        jax.numpy.ones(2),
        jax.random.key(0),
        Checkpoint(None, {}, "g", None, None, 0, 0.0),
    ],
    ids=["int", "numpy scalar", "numpy array", "jax array", "jax key", "record"],
)
@pytest.mark.parametrize("stack", [1 << 20, 256 << 10], ids=["1MiB", "256KiB"])
def test_the_deepest_value_encode_accepts_decodes_in_a_thread_with_a_small_stack(leaf, stack):
    deep = leaf
    while True:  # as deep as the encoder goes
        try:
            encoding.encode((deep,))
        except ValueError:
            break
        deep = (deep,)
    data = encoding.encode(deep)
    results = []
    size = threading.stack_size(stack)
    try:
        thread = threading.Thread(target=lambda: results.append(encoding.decode(data)))
        thread.start()
        thread.join()
    finally:
        threading.stack_size(size)
    assert encoding.encode(results[0]) == data


def _good_state(tmp_path):
    pop = _open(tmp_path)
    Driver().run(pop, 4)
    pop.close()
    return pop.state


def _plain_with(state, **changes):
    plain = storage.state_to_plain(state)
    plain.update(changes)
    return plain


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda s: _plain_with(s, workers=(1, 2)), r"workers\[0\] is not an ActiveWorker"),
        (lambda s: _plain_with(s, workers=()), "workers is empty"),
        (lambda s: _plain_with(s, checkpoints=(5,)), r"checkpoints\[0\] is not a Checkpoint"),
        (
            lambda s: _plain_with(
                s, checkpoints=(s.history.first(s.workers[0].generation_id).replace(step="3"),)
            ),
            r"checkpoints\[0\].step is not an int",
        ),
        (
            lambda s: _plain_with(
                s, workers=(s.workers[0].replace(generation_id="nowhere"), s.workers[1])
            ),
            "no checkpoint",
        ),
        (lambda s: _plain_with(s, num_events=-1), "num_events"),
        (lambda s: _plain_with(s, key=np.zeros(2, np.float32)), "key"),
        (lambda s: _plain_with(s, key=np.zeros(1, np.uint32)), "key"),
        (lambda s: _plain_with(s, key=np.zeros(5, np.uint32)), "key"),
        (lambda s: _plain_with(s, num_events=2**32 + 1), "past"),
        (lambda s: {"workers": s.workers}, "is not a map"),
        (lambda s: [1, 2, 3], "is not a map"),
    ],
)
def test_an_ill_typed_snapshot_is_corruption_naming_the_file(tmp_path, bad, message):
    state = _good_state(tmp_path)
    for path in _files(tmp_path, ""):
        os.remove(path)
    _write_snapshot_payload(tmp_path, encoding.encode(bad(state)))
    for read in (_loaded, storage.read_state):
        with pytest.raises(storage.CorruptLogError, match=rf"snapshot-00000000.*{message}"):
            read(tmp_path)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda c, w: c.replace(workers=((99, w),)), "worker 99 of a population of 2"),
        (lambda c, w: c.replace(workers=((-1, w),)), r"workers\[0\]\[0\] is not an int >= 0"),
        (lambda c, w: c.replace(workers=((True, w),)), r"workers\[0\]\[0\] is not an int"),
        (lambda c, w: c.replace(workers=((0, 7),)), "is not an ActiveWorker"),
        (lambda c, w: c.replace(checkpoints=("x",)), r"checkpoints\[0\] is not a Checkpoint"),
        (lambda c, w: c.replace(workers=((0, w.replace(generation_id="z")),)), "no checkpoint"),
        (lambda c, w: {"not": "changes"}, "is not a Changes record"),
    ],
)
def test_an_ill_typed_journal_record_is_corruption_naming_the_file(tmp_path, bad, message):
    state = _good_state(tmp_path)
    path = _files(tmp_path, "journal-")[-1]
    worker = state.workers[0]
    changes = Changes((), ((0, worker),), state.mutator_state, state.num_events + 1, 1.0)
    with open(path, "ab") as f:
        f.write(frames.frame(encoding.encode(bad(changes, worker))))
    with pytest.raises(storage.CorruptLogError, match=rf"{os.path.basename(path)}.*{message}"):
        _loaded(tmp_path)
    assert _encoded(_good_state_after_removing_last(path, tmp_path)) == _encoded(state)


def _good_state_after_removing_last(path, tmp_path):
    offsets, _ = _frame_offsets(path)
    with open(path, "r+b") as f:
        f.truncate(offsets[-1])
    return _loaded(tmp_path)


# -- 3. resuming the right run ----------------------------------------------------------
def test_reopening_with_another_mutator_kind_is_refused_saying_what_differs(tmp_path):
    _open(tmp_path).close()
    pbt = PopulationBasedTraining(
        perturbation_interval=5, hyperparam_space={"h": explore.uniform(0.0, 2.0)}
    )
    for other in (pbt, FixedSchedule({0: {"h": 1.0}})):
        with pytest.raises(storage.RunMismatchError, match=r"mutator: .*WinnerTakeAllGenetic") as e:
            _open(tmp_path, other)
        assert "cannot change" in str(e.value)
        with pytest.raises(storage.RunMismatchError):  # no override for another kind
            _open(tmp_path, other, reconfigure=True)
    with pytest.raises(storage.RunMismatchError, match="population size: 2 in the log_dir, 3"):
        _open(tmp_path, n=3, reconfigure=True)
    _open(tmp_path).close()  # every refusal released the lock and changed nothing


def test_another_configuration_needs_reconfigure_and_is_then_recorded(tmp_path):
    pop = _open(tmp_path)
    driver = Driver()
    driver.run(pop, 4)
    pop.close()
    faster = WinnerTakeAllGenetic(_mutate, steps_per_exploit=5)
    with pytest.raises(
        storage.RunMismatchError, match="steps_per_exploit: 10 in the log_dir, 5 now"
    ):
        _open(tmp_path, faster)
    pop = _open(tmp_path, faster, reconfigure=True)
    driver.run(pop, 2)
    pop.close()
    _open(tmp_path, faster).close()  # the new configuration is what the log_dir records now
    with pytest.raises(storage.RunMismatchError, match="steps_per_exploit: 5 in the log_dir, 10"):
        _open(tmp_path)
    reopened = _open(tmp_path, faster)
    driver.check(reopened.state)
    reopened.close()


def test_a_log_dir_of_storage_version_1_opens_and_records_its_run(tmp_path):
    pop = _open(tmp_path)
    driver = Driver()
    driver.run(pop, 4)
    pop.close()
    for path in _files(tmp_path, ""):  # rewrite the headers as version 1 wrote them
        if path.endswith((".jpsnap", ".jpjournal")):
            records = open(path, "rb").read()
            length = struct.unpack_from("<I", records)[0]
            header = encoding.decode(records[8 : 8 + length])
            old = {"kind": header["kind"], "storage_version": 1, "seq": header["seq"]}
            open(path, "wb").write(frames.frame(encoding.encode(old)) + records[8 + length :])
    with pytest.raises(storage.RunMismatchError, match="population size"):
        _open(tmp_path, n=3)
    pop = _open(tmp_path)
    driver.run(pop, 1)
    pop.close()
    with pytest.raises(storage.RunMismatchError, match="mutator"):  # recorded now
        _open(tmp_path, FixedSchedule({0: {"h": 1.0}}))
    driver.check(storage.read_state(tmp_path))


def test_a_new_controller_in_this_process_takes_the_run_over(tmp_path):
    old = _open(tmp_path, compact_after=3)
    driver = Driver()
    driver.run(old, 7)
    new = _open(tmp_path, compact_after=3)  # a re-run notebook cell: `old` is still alive
    assert _encoded(new.state) == _encoded(old.state)
    with pytest.raises(storage.SupersededError, match="newer controller"):
        old.maybe_get_worker_data(0, None, 0, None, None)  # a call that changes nothing
    with pytest.raises(storage.SupersededError, match="newer controller"):
        driver.step(old)
    old.close()  # closing (or dropping) the old one leaves the new one's lock alone
    del old
    driver.run(new, 5)
    new.close()
    reopened = _open(tmp_path)
    driver.check(reopened.state)
    reopened.close()


def test_a_takeover_while_workers_call_the_old_controller_loses_no_acknowledged_eval(tmp_path):
    old = _open(tmp_path, n=4, compact_after=5)
    drivers = [Driver(4) for _ in range(4)]
    for i, d in enumerate(drivers):
        d.turn = i  # each thread drives one worker id
    errors = []

    def work(d):
        try:
            for _ in range(10_000):
                d.step(old)
                d.turn += 3
        except storage.SupersededError:
            pass
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(d,)) for d in drivers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(len(d.acked) for d in drivers) < 40 and not errors:
        assert time.monotonic() < deadline, "the worker threads made no progress"
        time.sleep(0.001)
    new = _open(tmp_path, n=4, compact_after=5)
    for t in threads:
        t.join()
    assert not errors, errors
    for d in drivers:
        d.check(new.state)
    new.close()


# -- 4. corruption anywhere: the acknowledged prefix, or an error -------------------------
@pytest.fixture(scope="module")
def reference_run():
    """A small run: a snapshot and three journal segments, with its state after each event."""
    root = tempfile.mkdtemp(prefix="jaxpop-reference-")
    log_dir = os.path.join(root, "run")
    driver, states = Driver(), {}
    for compact_after, calls in ((4, 10), (1000, 6), (1000, 6)):  # compaction, restarts
        pop = _open(log_dir, compact_after=compact_after)
        states[pop.state.num_events] = _encoded(pop.state)
        for _ in range(calls):
            driver.step(pop)
            states[pop.state.num_events] = _encoded(pop.state)
        pop.close()
    files = _files(log_dir, "snapshot-") + _files(log_dir, "journal-")
    assert len(files) == 4 and not files[0].endswith("-00000000.jpsnap")
    yield log_dir, files, states
    shutil.rmtree(root)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_damage_anywhere_gives_the_acknowledged_prefix_or_an_error(reference_run, data):
    log_dir, files, states = reference_run
    which = data.draw(st.integers(0, len(files) - 1), label="file")
    name = os.path.basename(files[which])
    newest = which == len(files) - 1 and name.startswith("journal-")
    offsets, size = _frame_offsets(files[which])
    kind = data.draw(st.sampled_from(["flip", "overwrite", "zero", "truncate"]), label="kind")
    start = data.draw(st.integers(0, size - 1), label="offset")
    length = 0 if kind == "truncate" else data.draw(st.integers(1, 24), label="length")
    end = size if kind == "truncate" else min(size, start + length)
    damaged_frame = max(i for i, o in enumerate(offsets) if o <= start)
    with tempfile.TemporaryDirectory() as scratch:
        copy = os.path.join(scratch, "run")
        shutil.copytree(log_dir, copy)
        path = os.path.join(copy, name)
        content = bytearray(open(path, "rb").read())
        if kind == "truncate":
            content = content[:start]
        elif kind == "flip":
            bits = data.draw(st.binary(min_size=end - start, max_size=end - start), label="bits")
            for i, b in enumerate(bits):
                content[start + i] ^= b or 0x01
        elif kind == "overwrite":
            content[start:end] = data.draw(st.binary(min_size=end - start, max_size=end - start))
        else:
            content[start:end] = bytes(end - start)
        open(path, "wb").write(bytes(content))
        unchanged = bytes(content) == open(files[which], "rb").read()
        before = {n: open(os.path.join(copy, n), "rb").read() for n in os.listdir(copy)}
        # damage that can only be a torn write: a cut, or bytes changed inside the last
        # record's payload (its length intact) of the newest segment
        must_read = newest and (kind == "truncate" or start >= offsets[-1] + 8)
        for read in ("read_state", "reopen"):  # read_state first: reopening repairs
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    state = _loaded(copy) if read == "reopen" else storage.read_state(copy)
                except storage.CorruptLogError:
                    assert not must_read, f"{read}: a torn tail taken for corruption"
                    after = {n: open(os.path.join(copy, n), "rb").read() for n in os.listdir(copy)}
                    assert after == before, f"{read}: files changed although corrupt"
                    continue
            torn = [w for w in caught if issubclass(w.category, storage.TornRecordWarning)]
            got = _encoded(state)
            assert got in states.values(), "a state that was never acknowledged"
            events = state.num_events
            if events == max(states) and not torn:
                continue  # everything there (the damage hit nothing that was needed)
            # anything shorter: only the newest segment, only from the damaged record on,
            # and only where the damage reaches the true end of the file
            assert newest and not unchanged, f"{read}: a silently shorter history"
            assert kind == "truncate" or damaged_frame == len(offsets) - 1 or end == size
            kept = damaged_frame - 1  # the records before the damaged one (less the header)
            if kind == "truncate" and start in offsets:
                kept = offsets.index(start) - 1
                assert not torn  # cut at a record boundary: a journal that simply ends there
            else:
                assert torn or read == "read_state"
            assert events == max(states) - (len(offsets) - 1 - max(kept, 0)), read


def test_reassigning_the_controller_variable_in_a_loop_resumes_every_time(tmp_path):
    # The seed's interruption pattern: `population = PopulationController(..., log_dir)`
    # again and again, the previous controller still referenced while the next is built.
    rng = np.random.default_rng(0)

    def mutate_fn(p):  # the seed's form: no key, its own randomness
        return p + float(rng.normal()) * 0.03

    mutator = WinnerTakeAllGenetic(mutate_fn, 1)
    events = 0
    for _ in range(6):
        population = PopulationController([1.0] * 3, mutator, log_dir=str(tmp_path))
        assert population.state.num_events == events
        for _ in range(4):
            for i in range(3):
                data = population.maybe_get_worker_data(i, None, 0, None, None)
                population.set_eval(i, data.generation_id, data.step + 1, None, data.meta_params**2)
        events = population.state.num_events
    assert events > 0
    population.close()


def test_a_refused_new_controller_leaves_the_live_one_running(tmp_path):
    live = _open(tmp_path)
    driver = Driver()
    driver.run(live, 3)
    for refused in (
        lambda: _open(tmp_path, WinnerTakeAllGenetic(_mutate, steps_per_exploit=5)),
        lambda: _open(tmp_path, n=3),
        lambda: _open(tmp_path, FixedSchedule({0: {"h": 1.0}})),
    ):
        with pytest.raises(storage.RunMismatchError):
            refused()
    driver.run(live, 3)  # still the writer
    live.close()
    reopened = _open(tmp_path)
    driver.check(reopened.state)
    reopened.close()


_DESCRIBE_MODULE = """
import json
import optax
from jaxpop import schedules
from jaxpop.mutators import FixedSchedule, Mutator, WinnerTakeAllGenetic

def mutate(meta):
    return meta

class Tagged(WinnerTakeAllGenetic):
    pass

def describe():
    return [
        WinnerTakeAllGenetic(mutate, steps_per_exploit=10).describe(),
        Tagged(mutate, seconds_per_exploit=2.5).describe(),
        FixedSchedule({0: {"tags": frozenset({"lr", "wd", "mom", "b1", "b2"})}}).describe(),
        Mutator(dict, mutate).describe(),
        FixedSchedule(schedules.curriculum({0: {"a": 0.0}, 9: {"a": 1.0}}, "cosine")).describe(),
        FixedSchedule(schedules.piecewise({i: {"a": i / 3} for i in range(9)})).describe(),
        FixedSchedule(
            schedules.merge(
                schedules.per_leaf({"lr": optax.cosine_decay_schedule(0.1, 100), "b": 0.9}),
                schedules.join([schedules.constant({"c": 1}), lambda s: {"c": s}], [5]),
            )
        ).describe(),
    ]

if __name__ == "__main__":
    print(json.dumps(describe()))
"""


def test_a_mutator_describes_itself_the_same_as_a_script_or_imported(tmp_path, monkeypatch):
    import importlib
    import json

    (tmp_path / "described.py").write_text(_DESCRIBE_MODULE)
    env = {**os.environ, "PYTHONHASHSEED": "7", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, str(tmp_path / "described.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    imported = importlib.import_module("described").describe()
    as_script = json.loads(out.stdout)
    assert as_script == json.loads(json.dumps(imported))  # json: tuples as lists
    assert imported[1]["kind"] == "Tagged"


def test_a_schedule_built_otherwise_is_another_configuration(tmp_path):
    """A Piecewise was described by its repr, which shows four points, and jaxpop's
    schedules (a curriculum, per_leaf, join, merge, constant) and optax's by their
    functions' names: a run resumed with another schedule went on under it silently
    (hostile review, helper-182). A run recorded that way still resumes as before."""
    import optax

    from jaxpop import schedules
    from jaxpop.storage.run import differences

    def fixed(schedule):
        return FixedSchedule(schedule, every=10)

    def nested(peak, levels=8):
        schedule = schedules.per_leaf({"h": optax.cosine_onecycle_schedule(100, peak)})
        for _ in range(levels):
            schedule = schedules.join([schedules.merge(schedule), schedule], [50])
        return schedule

    long = {i * 10: {"h": float(i)} for i in range(6)}
    ramp = {0: {"h": 0.0}, 100: {"h": 0.3}}
    for started, other in [
        (schedules.piecewise(long), schedules.piecewise({**long, 50: {"h": 9.0}})),
        (schedules.curriculum(ramp), schedules.curriculum(ramp, kind="cosine")),
        (schedules.curriculum(ramp), schedules.curriculum({**ramp, 100: {"h": 0.4}})),
        (
            schedules.per_leaf({"h": optax.linear_schedule(0.0, 1.0, 10)}),
            schedules.per_leaf({"h": optax.linear_schedule(0.0, 2.0, 10)}),
        ),
        # (past the 20 levels described before: helper-185; each level shares a schedule
        # with the next, which doubled the work a level: helper-187)
        (nested(1e-3), nested(1.0)),
    ]:
        log_dir = tmp_path / str(len(os.listdir(tmp_path)))
        PopulationController([{"h": 0.0}], fixed(started), log_dir=log_dir).close()
        PopulationController([{"h": 0.0}], fixed(started), log_dir=log_dir).close()  # the same
        with pytest.raises(storage.RunMismatchError, match="mutator schedule"):
            PopulationController([{"h": 0.0}], fixed(other), log_dir=log_dir)
    # as a run recorded before the fuller descriptions has them
    for schedule, older, otherwise in [
        (schedules.curriculum(ramp), "join.<locals>.schedule", "merge.<locals>.schedule"),
        (
            schedules.piecewise(long),
            f"Piecewise: {schedules.piecewise(long)!r}",
            f"Piecewise: {schedules.piecewise({**long, 0: {'h': 7.0}})!r}",
        ),
    ]:
        now = {"population_size": 1, "mutator": fixed(schedule).describe()}
        for recorded_as, same in ((older, True), (otherwise, False)):
            config = {**now["mutator"]["config"], "schedule": recorded_as}
            recorded = {**now, "mutator": {**now["mutator"], "config": config}}
            assert (differences(recorded, now) == []) == same


def test_only_jaxpops_objects_are_described_by_their_slots_and_a_repr_compares_once():
    """Any object with __slots__ was described by them (for a Piecewise's points): a
    pathlib.Path's lazily filled caches, its hash among them, made one path describe
    differently after use and in another process; and two new descriptions of one
    Piecewise differed where numpy's print options made their reprs differ (helper-185)."""
    import pathlib

    from jaxpop import schedules
    from jaxpop.mutators.base import _describe
    from jaxpop.storage.run import differences

    path = pathlib.Path("/data/curriculum.json")
    before = _describe(path)
    hash(path), str(path), path.parts
    assert _describe(path) == before == "PosixPath: PosixPath('/data/curriculum.json')"
    schedule = schedules.piecewise({0: {"h": np.arange(3) / 3}, 10: {"h": np.ones(3)}})
    run = {"population_size": 1, "mutator": FixedSchedule(schedule).describe()}
    with np.printoptions(precision=3):
        again = {"population_size": 1, "mutator": FixedSchedule(schedule).describe()}
    assert again != run and differences(run, again) == []


class _Ring:
    """A user's callable schedule that refers to itself (twice)."""

    def __init__(self, lr):
        self.lr, self.prev, self.next = lr, self, self

    def __call__(self, step):
        return {"lr": self.lr}


class _Slotted:
    """A user's slotted callable schedule without a repr of its own."""

    __slots__ = ("lr",)

    def __init__(self, lr):
        self.lr = lr

    def __call__(self, step):
        return {"lr": self.lr}


def test_a_config_that_refers_to_itself_or_has_slots_is_described_by_its_values(tmp_path):
    """A config object that refers to itself twice doubled describe()'s work at each
    level: past 20 levels it never finished (helper-187); a user's slotted object was
    described by its repr, the same for any values (helper-187)."""
    for make in (_Ring, _Slotted):
        log_dir = tmp_path / make.__name__
        PopulationController([{"lr": 0.1}], FixedSchedule(make(0.1)), log_dir=log_dir).close()
        PopulationController([{"lr": 0.1}], FixedSchedule(make(0.1)), log_dir=log_dir).close()
        with pytest.raises(storage.RunMismatchError, match=r"schedule\.fields"):
            PopulationController([{"lr": 0.1}], FixedSchedule(make(0.2)), log_dir=log_dir)


def test_a_config_that_holds_its_own_mutator_is_described_and_resumes(tmp_path):
    """A mutator met in its own configuration started a fresh description each time it
    was met: RecursionError (a left-alone item of the last notes). It is described in the
    description it is met in, so the object met inside itself is "<cycle>", and a
    changed configuration still shows."""

    class Holder:  # a mutate_fn that keeps the mutator it belongs to
        def __init__(self, scale):
            self.scale, self.mutator = scale, None

        def __call__(self, meta):
            return {"lr": meta["lr"] * self.scale}

    def make(scale):
        holder = Holder(scale)
        holder.mutator = WinnerTakeAllGenetic(holder, steps_per_exploit=1)
        return holder.mutator

    description = make(0.5).describe()
    assert "<cycle>" in repr(description)
    assert description == make(0.5).describe() != make(0.7).describe()
    log_dir = tmp_path / "run"
    PopulationController([{"lr": 0.1}], make(0.5), log_dir=log_dir).close()
    PopulationController([{"lr": 0.1}], make(0.5), log_dir=log_dir).close()
    with pytest.raises(storage.RunMismatchError, match=r"0\.5 in the log_dir, 0\.7 now"):
        PopulationController([{"lr": 0.1}], make(0.7), log_dir=log_dir)


def test_a_mutator_in_a_configuration_is_described_as_on_its_own():
    """The first fix described a mutator met in a configuration within the enclosing
    description's depth, so a deep configuration nested a few levels in was cut off
    ("..."): two such configurations described alike, and a run recorded before did not
    resume (helper-198); and its method's name was an attribute of SeedMutator."""
    from jaxpop.mutators import Mutator, base
    from jaxpop.seed import Mutate, SeedMutator

    def nest(x, levels):
        for _ in range(levels):
            x = [x]
        return x

    def outer(deep):
        inner = Mutator(abs, abs, config={"deep": nest(deep, base._DESCRIBE_DEPTH - 5)})
        return Mutator(abs, abs, config={"inner": nest(inner, 5)}), inner

    a, inner = outer(1)
    assert "..." not in repr(a.describe())
    assert a.describe()["config"]["inner"] == base._describe(nest(inner, 5))
    assert a.describe() != outer(2)[0].describe()
    assert Mutator.describe(SeedMutator(Mutate()))["kind"] == "SeedMutator"

    # a loop back to an object around a mutator, longer than the depth, is cut off there
    # as before ("...", not "<cycle>": helper-199); a subclass that describes itself and
    # holds itself is "<cycle>" too (it raised RecursionError)
    hole: list = []
    around = nest(hole, 59)
    hole.append(Mutator(abs, abs, config={"lr": 0.1, "x": nest(around, 50)}))
    text = repr(Mutator(abs, abs, config={"x": around}).describe())
    assert "..." in text and "<cycle>" not in text

    class Tagged(Mutator):
        def describe(self):
            return {**super().describe(), "tag": 1}

    held: list = []
    tagged = Tagged(abs, abs, config={"fn": held})
    held.append(tagged)
    assert tagged.describe()["config"]["fn"] == ("<cycle>",)


def test_a_description_does_not_depend_on_which_copy_of_an_object_is_met_first():
    """An object described once and reused (helper-187's fix) gave, met first past the
    depth limit or inside a cycle, its cut-off description everywhere: two configs that
    differed described alike, and one config in another key order differently
    (helper-188)."""
    from jaxpop.mutators import base

    class Node:
        def __init__(self, name):
            self.name, self.peer = name, None

    def nest(inner, levels):
        for _ in range(levels):
            inner = [inner]
        return inner

    for x in ([0.1], [0.9]):
        deep_first = {"a": nest(x, base._DESCRIBE_DEPTH - 2), "b": x}
        shallow_first = {"b": x, "a": nest(x, base._DESCRIBE_DEPTH - 2)}
        assert base._describe(deep_first) == base._describe(shallow_first)
    assert base._describe({"a": nest([0.1], 98), "b": [0.1]}) != base._describe(
        {"a": nest([0.9], 98), "b": [0.9]}
    )
    a, b = Node("a"), Node("b")
    a.peer, b.peer = b, a
    assert base._describe({"x": a, "y": b}) == base._describe({"y": b, "x": a})
    # a run recorded (before the description format) cut off at a depth, or nested where
    # a cycle is met now, resumes; one recorded now matches only an equal description:
    # "..." and "<cycle>" are strings a config may hold (helper-190)
    from jaxpop.storage.run import DESCRIPTION_FORMAT, _same, check_resume, describe_run

    older = True
    assert _same(("...",), ((("deep",),),), older)
    assert _same({"peer": {"t": 1}}, {"peer": "<cycle>"}, older)
    assert not _same(("...", 1), ((("deep",),), 2), older)
    assert not _same(("...",), ((("deep",),),), not older)
    assert not _same({"peer": {"t": 1}}, {"peer": "<cycle>"}, not older)
    run = describe_run(1, FixedSchedule({0: {"note": "..."}}))
    assert run["description_format"] == DESCRIPTION_FORMAT
    other = describe_run(1, FixedSchedule({0: {"note": ["x", 0.5]}}))
    with pytest.raises(storage.RunMismatchError, match=r"'\.\.\.' in the log_dir, \('x', 0\.5\)"):
        check_resume("here", run, other, 1, False)
    # a record of the older format is made anew, strict from then on
    assert check_resume("here", {**run, "description_format": 1}, run, 1, False) is True
    assert check_resume("here", run, run, 1, False) is False
    # never the other way: a run described without the format (a Store used directly)
    # rewrote a record of it, and the leniency came back (helper-191)
    keyless = {k: v for k, v in run.items() if k != "description_format"}
    assert check_resume("here", run, keyless, 1, False) is False


@pytest.mark.parametrize(("was", "now"), [(1, True), (1, 1.0), (0.0, -0.0), (True, 1.0)])
def test_a_configuration_equal_only_by_python_equality_is_another_one(tmp_path, was, now):
    """A schedule of 1 resumed as True (or 1.0; 0.0 as -0.0) was taken as the same
    configuration, and the history held both types from the resume on (hostile review,
    helper-230); a record of an older description format keeps ``==``."""
    from jaxpop.storage.run import _same, check_resume, describe_run

    PopulationController([{"h": was}], FixedSchedule({0: {"h": was}}), str(tmp_path)).close()
    with pytest.raises(storage.RunMismatchError, match=rf"{was!r} in the log_dir, {now!r} now"):
        PopulationController([{"h": now}], FixedSchedule({0: {"h": now}}), str(tmp_path))
    recorded = describe_run(1, FixedSchedule({0: {"h": was}}))
    again = describe_run(1, FixedSchedule({0: {"h": now}}))
    assert check_resume("here", {**recorded, "description_format": 1}, again, 1, False) is True
    assert _same(({"h": was},), ({"h": was},), False) and not _same((was,), (now,), False)


def test_hyperparameters_a_journal_record_cannot_hold_are_refused_at_the_start(tmp_path):
    """96 levels deep fit the snapshot, not a journal record (which nests an assignment
    two levels deeper): the run started, then every call that journaled an assignment
    failed (hostile review, helper-230)."""

    def nested(depth):
        x = 0.5
        for _ in range(depth):
            x = [x]
        return x

    depths = {}
    for depth in range(90, 101):
        log_dir = tmp_path / str(depth)
        try:
            pop = PopulationController([{"h": nested(depth)}], noop_mutator(), str(log_dir))
        except ValueError as e:
            assert "nested more than 100 levels" in str(e)
            assert not [f for f in os.listdir(log_dir) if f != "lock"]  # nothing written
            depths[depth] = "refused"
            continue
        gen = pop.maybe_get_worker_data(0, None, 0, None, None).generation_id
        pop.set_eval(0, gen, 10, "params", 0.5)  # journals the moved assignment
        pop.close()
        depths[depth] = "runs"
    assert "refused" in depths.values() and "runs" in depths.values()


def test_a_mutator_that_returns_ill_typed_records_fails_the_call_not_the_restart(tmp_path):
    from jaxpop.mutators import Mutator
    from jaxpop.mutators.base import start_generation

    def update(state, workers, history, now, key):
        latest = history.latest(workers[0].generation_id)
        if latest.value is None or state:
            return state, workers, ()
        worker, start = start_generation(latest, {"h": 0.5}, key, 0, now)
        start = start.replace(step=np.int64(start.step))  # a step computed with numpy
        return 1, (worker.replace(step=start.step), *workers[1:]), (start,)

    pop = _open(tmp_path, Mutator(lambda: 0, update))
    data = pop.maybe_get_worker_data(0, None, 0, None, None)
    with pytest.raises(ValueError, match=r"mutator\.update's new checkpoint 0\.step is not an int"):
        pop.set_eval(0, data.generation_id, 5, None, 1.0)
    pop.close()
    _open(tmp_path, Mutator(lambda: 0, update)).close()  # and nothing unreadable was written


def test_a_segment_switch_syncs_the_segment_it_leaves(tmp_path, faulty):
    pop = _open(tmp_path, compact_after=4)  # durability="process": no sync per record
    Driver().run(pop, 3)
    assert faulty.synced == []
    Driver().run(pop, 3)  # a compaction
    assert len(faulty.synced) == 1
    pop.close()


def test_an_interrupted_write_whose_undo_fails_refuses_later_calls(tmp_path, faulty):
    pop = _open(tmp_path, compact_after=10_000)
    driver = Driver()
    driver.run(pop, 4)
    acknowledged = dict(driver.acked)
    faulty.space = 9  # part of the next record is written ...
    faulty.fail("write", after=1, times=1, error=KeyboardInterrupt)  # ... then Ctrl-C
    faulty.fail("ftruncate")
    with pytest.raises(KeyboardInterrupt):
        driver.run(pop, 3)
    faulty.heal()
    with pytest.raises(storage.JournalWriteError, match="refusing to journal"):
        driver.step(pop)
    pop.close()
    with pytest.warns(storage.TornRecordWarning):
        reopened = _open(tmp_path)
    driver.acked = acknowledged
    driver.check(reopened.state)
    reopened.close()


def _interrupted_at_line(k, call):
    """Runs ``call`` with Ctrl-C (``KeyboardInterrupt``) raised at the ``k``-th line the
    store module runs in this thread (never, for ``k=0``); how many lines it ran."""
    seen = [0]

    def local(frame, event, arg):
        # (not on a ``with`` line: raised there as a with block ends, before ``__exit__``
        # is called, it leaks the lock; CPython runs a signal handler at calls, past it)
        if event == "line" and not linecache.getline(
            store.__file__, frame.f_lineno
        ).lstrip().startswith("with "):
            seen[0] += 1
            if seen[0] == k:
                raise KeyboardInterrupt
        return local

    sys.settrace(
        lambda frame, event, arg: local if frame.f_code.co_filename == store.__file__ else None
    )
    try:
        call()
    finally:
        sys.settrace(None)
    return seen[0]


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_ctrl_c_at_any_line_of_a_journaled_call_loses_no_acknowledged_call(tmp_path, durability):
    # (a Ctrl-C after the record was written, before the store counted it, made the next
    # call journal the same event again: the log_dir could not be reopened)
    lines = _interrupted_at_line(0, lambda: Driver().run(_open(tmp_path / "count"), 2))
    assert lines > 20
    for k in range(1, lines + 1):
        log_dir = tmp_path / str(k)
        driver, pop = Driver(), _open(log_dir, durability=durability)
        driver.run(pop, 1)
        with contextlib.suppress(KeyboardInterrupt):
            _interrupted_at_line(k, functools.partial(driver.step, pop))
        try:
            driver.run(pop, 2)
        except RuntimeError as e:  # the call was journaled, not taken: reopen, as it says
            assert "reopen the log_dir" in str(e)
            pop.close()
            pop = _open(log_dir, durability=durability)
            driver.run(pop, 2)
        pop.close()
        with _open(log_dir) as reopened:
            driver.check(reopened.state)


def test_a_store_taken_over_before_it_started_refuses_to_start(tmp_path):
    _open(tmp_path).close()
    first = storage.Store(tmp_path)
    state = first.load()
    second = storage.Store(tmp_path)  # takes the log_dir over
    with pytest.raises(storage.SupersededError):
        first.start(state)
    second.start(second.load())
    second.close()


def test_nothing_is_repaired_when_something_else_is_corrupt(tmp_path):
    pop = _open(tmp_path)
    Driver().run(pop, 4)
    pop.close()
    (path,) = _files(tmp_path, "journal-")
    offsets, _ = _frame_offsets(path)
    damaged = bytearray(open(path, "rb").read())
    damaged[offsets[1] + 20] ^= 0xFF  # the first record: corrupt, good records follow
    damaged += struct.pack("<II", 500, 0) + b"torn"  # and a torn tail
    open(path, "wb").write(bytes(damaged))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(storage.CorruptLogError):
            _loaded(tmp_path)
    assert open(path, "rb").read() == bytes(damaged)


def test_a_run_description_must_have_its_shape():
    for run in ("x", {"population_size": "2"}, {"population_size": 2, "mutator": "WTA"}):
        with pytest.raises(TypeError, match="run description"):
            storage.Store("/nonexistent/never-created", run=run)


def test_a_failed_reconfigured_start_records_nothing(tmp_path, faulty):
    _open(tmp_path).close()
    faster = WinnerTakeAllGenetic(_mutate, steps_per_exploit=5)
    faulty.fail("replace")  # the snapshot recording the new configuration fails
    with pytest.raises(OSError):
        _open(tmp_path, faster, reconfigure=True)
    faulty.heal()
    assert len(_files(tmp_path, "journal-")) == 1  # the segment it opened is gone
    _open(tmp_path).close()  # still the old configuration
    with pytest.raises(storage.RunMismatchError):
        _open(tmp_path, faster)


def test_an_interrupt_during_a_compaction_leaves_its_call_recorded(tmp_path, faulty):
    pop = _open(tmp_path, compact_after=4)
    driver = Driver()
    driver.run(pop, 2)
    faulty.fail("open", times=1, error=KeyboardInterrupt)  # Ctrl-C as the next segment opens
    with pytest.raises(KeyboardInterrupt):
        driver.run(pop, 20)
    assert faulty.failures == ["open"]
    driver.run(pop, 8)  # the controller took the interrupted call: no event journaled twice
    pop.close()
    reopened = _open(tmp_path)
    assert _encoded(reopened.state) == _encoded(pop.state)
    driver.check(reopened.state)
    reopened.close()


def test_a_write_that_does_not_follow_the_last_journaled_event_is_refused(tmp_path):
    pop = _open(tmp_path)
    Driver().run(pop, 2)
    state = pop.state
    changes = Changes((), (), state.mutator_state, state.num_events, 1.0)  # a repeat
    with pytest.raises(RuntimeError, match="cannot follow"):
        pop._store.write(changes)
    pop.close()
    _open(tmp_path).close()


def _renumber(log_dir, seq):
    """Rewrites a log_dir's one snapshot and one journal segment as segment ``seq``."""
    for prefix, suffix in (("snapshot-", ".jpsnap"), ("journal-", ".jpjournal")):
        (path,) = _files(log_dir, prefix)
        records = open(path, "rb").read()
        length = struct.unpack_from("<I", records)[0]
        header = {**encoding.decode(records[8 : 8 + length]), "seq": seq}
        os.remove(path)
        with open(os.path.join(log_dir, f"{prefix}{seq:08d}{suffix}"), "wb") as f:
            f.write(frames.frame(encoding.encode(header)) + records[8 + length :])


def test_segment_numbers_past_eight_digits_keep_the_run(tmp_path):
    pop = _open(tmp_path)
    driver = Driver()
    driver.run(pop, 3)
    pop.close()
    _renumber(tmp_path, 99_999_999)
    for _ in range(2):
        pop = _open(tmp_path, compact_after=2)
        driver.run(pop, 5)  # compactions into segments 100000000 and on
        pop.close()
    assert any(len(n) > len("journal-00000000.jpjournal") for n in os.listdir(tmp_path))
    reopened = _open(tmp_path)
    driver.check(reopened.state)
    assert _encoded(reopened.state) == _encoded(pop.state)
    reopened.close()


def test_other_entries_of_a_log_dir_are_left_alone_or_reported(tmp_path):
    pop = _open(tmp_path)
    Driver().run(pop, 3)
    pop.close()
    (tmp_path / "my-notes.tmp").write_text("mine")
    (tmp_path / "journal-00000000.jpjournal\n").write_text("not a segment")
    arabic_indic = "\u0660" * 7 + "\u0661"  # digits, but not ASCII ones
    (tmp_path / f"journal-{arabic_indic}.jpjournal").write_text("not a segment either")
    _open(tmp_path).close()
    assert (tmp_path / "my-notes.tmp").read_text() == "mine"
    newest = _files(tmp_path, "journal-0")[-1]
    seq = int(os.path.basename(newest)[8:16]) + 1
    os.mkdir(tmp_path / f"journal-{seq:08d}.jpjournal")
    for read in (_loaded, storage.read_state):
        with pytest.raises(storage.CorruptLogError, match="cannot be read"):
            read(tmp_path)


def test_a_torn_record_whose_params_hold_a_framed_encoding_is_still_a_torn_tail(tmp_path):
    pop = _open(tmp_path, compact_after=10_000)
    Driver().run(pop, 3)
    embedded = frames.frame(encoding.encode({"looks like": "a journal record"}))
    data = pop.maybe_get_worker_data(0, None, 0, None, None)
    pop.set_eval(0, data.generation_id, 100, embedded, 1.0)  # params: bytes with a frame
    pop.close()
    (path,) = _files(tmp_path, "journal-")
    content = open(path, "rb").read()
    at = content.rfind(embedded) + len(embedded)
    assert at < len(content)  # the record goes on after its params
    for cut, padding in ((at + 3, 0), (at, 0), (at, 64)):  # (at: just after the frame)
        open(path, "wb").write(content[:cut] + bytes(padding))  # the crash cut it there
        for read in (storage.read_state, _loaded):  # (the reader first: _loaded repairs)
            torn = pytest.warns(storage.TornRecordWarning)
            with torn if read is _loaded else contextlib.nullcontext():
                state = read(tmp_path)
            assert state.history.get_checkpoint(data.generation_id, 100) is None


def test_the_torn_tail_check_reads_each_frame_as_a_record_once(tmp_path):
    """After a bad frame, every later frame starts a chain to check, and each chain was
    decoded frame by frame again (a crafted 11 MB segment took 5 s): each frame's
    verdict is kept, so the frames are decoded once in all."""
    from jaxpop.storage import store as store_mod

    pop = _open(tmp_path, compact_after=10_000)
    Driver().run(pop, 3)
    pop.close()
    (path,) = _files(tmp_path, "journal-")
    good, _ = frames.read_frames(path, newest=True)
    records = [f.payload for f in good[1:]]
    bad = struct.pack("<II", 2**31, 12345) + encoding.PREFIX + b"x" * 10
    body = b"".join(frames.frame(records[i % len(records)]) for i in range(300))
    other = frames.frame(encoding.encode({"not": "a record"}))
    crafted = tmp_path / "crafted.jpjournal"
    crafted.write_bytes(frames.frame(good[0].payload) + bad + body + other)
    calls = []

    def is_record(payload):
        calls.append(len(payload))
        return store_mod._is_record(payload)

    with pytest.raises(frames.CorruptLogError):
        frames.read_frames(str(crafted), newest=True, is_record=is_record)
    assert 300 <= len(calls) <= 301  # (the chains' frames, each once, and the last one)


@pytest.mark.parametrize(
    "damaged, torn, padding",
    [(3, True, 0), (-2, True, 0), (-1, False, 0), (-1, False, 64), (3, False, 4096)],
)
def test_a_damaged_length_is_corruption_even_with_a_torn_record_after_it(
    tmp_path, damaged, torn, padding
):
    """A flipped bit in a record's length makes it "run past the end of the file", as a
    torn write would. Its checksum still matches its bytes up to the next record (or,
    for the last record, to the end of the file, zeros the file system added after it
    included: its own payload ends in zeros too): it was written whole, so neither it
    nor the intact records after it are dropped as a torn tail, even when the last one
    is torn (also when it is the only one after the damage)."""
    pop = _open(tmp_path, compact_after=10_000)
    driver = Driver()
    driver.run(pop, 8)
    pop.close()
    (path,) = _files(tmp_path, "journal-")
    offsets, _ = _frame_offsets(path)
    data = bytearray(open(path, "rb").read())
    data[offsets[damaged] + 3] ^= 0x40  # bit rot in the length field's high byte
    if torn:
        data = data[:-5]  # and the last record torn (the machine crashed)
    data += b"\0" * padding  # zeros a file system may leave at the end after a crash
    open(path, "wb").write(bytes(data))
    for read in (_loaded, storage.read_state):
        with pytest.raises(storage.CorruptLogError, match="runs past the end"):
            read(tmp_path)
    assert open(path, "rb").read() == bytes(data)  # nothing was cut


def test_a_journal_segment_from_another_run_is_refused(tmp_path):
    drivers = {}
    for name in ("a", "b"):  # two runs made the same way: same seed, same mutator
        pop = _open(tmp_path / name)
        drivers[name] = Driver()
        drivers[name].run(pop, 4)
        pop.close()
    (journal_b,) = _files(tmp_path / "b", "journal-")
    (journal_a,) = _files(tmp_path / "a", "journal-")
    shutil.copy(journal_b, journal_a)
    with pytest.raises(storage.CorruptLogError, match="belongs to another run"):
        _loaded(tmp_path / "a")


@pytest.mark.parametrize("damaged_older", [False, True])
def test_a_newer_snapshot_from_another_run_is_refused(tmp_path, damaged_older):
    # run a: snapshot 0 and journal 0; run b (made the same way) compacted to snapshot 1
    a = _open(tmp_path / "a", compact_after=10_000)
    driver = Driver()
    driver.run(a, 3)
    a.close()
    b = _open(tmp_path / "b", compact_after=4)
    Driver().run(b, 8)
    b.close()
    newest_b = _files(tmp_path / "b", "snapshot-")[-1]
    assert os.path.basename(newest_b) > os.path.basename(_files(tmp_path / "a", "snapshot-")[-1])
    shutil.copy(newest_b, tmp_path / "a")  # an rsync that merged two runs' folders, say
    if damaged_older:  # an older file whose header cannot be read is not read, as before
        for older in _files(tmp_path / "a", "journal-") + _files(tmp_path / "a", "snapshot-")[:-1]:
            open(older, "r+b").write(b"\xff" * 8)
        with _open(tmp_path / "a"):
            pass
        return
    for read in (_loaded, storage.read_state):
        with pytest.raises(storage.CorruptLogError, match="holds files of two runs"):
            read(tmp_path / "a")
    with pytest.raises(storage.CorruptLogError, match="holds files of two runs"):
        _open(tmp_path / "a")
    os.remove(tmp_path / "a" / os.path.basename(newest_b))  # moved out: run a is whole
    with _open(tmp_path / "a") as again:
        driver.check(again.state)


def test_an_older_file_of_the_same_run_is_no_obstacle(tmp_path):
    pop = _open(tmp_path, compact_after=4)
    driver = Driver()
    driver.run(pop, 8)
    pop.close()
    older = tmp_path / "journal-00000000.jpjournal"
    assert not older.exists()  # pruned; as a crash before the pruning would leave it:
    shutil.copy(_files(tmp_path, "snapshot-")[-1], tmp_path / "snapshot-00000000.jpsnap")
    with _open(tmp_path) as again:
        driver.check(again.state)


def test_an_older_segment_cut_at_a_record_boundary_is_named(tmp_path):
    for _ in range(2):  # two segments
        pop = _open(tmp_path)
        Driver().run(pop, 4)
        pop.close()
    older, newer = _files(tmp_path, "journal-")
    offsets, _ = _frame_offsets(older)
    with open(older, "r+b") as f:
        f.truncate(offsets[-1])  # its last record gone, cleanly
    name = os.path.basename(older)
    with pytest.raises(storage.CorruptLogError, match=rf"{os.path.basename(newer)}.*{name}"):
        _loaded(tmp_path)


def test_a_checkpoint_whose_parent_is_not_in_the_history_is_corruption(tmp_path):
    state = _good_state(tmp_path)
    path = _files(tmp_path, "journal-")[-1]
    orphan = Checkpoint(None, {"h": 1.0}, "orphan", None, ("nowhere", 3), 0, 1.0)
    changes = Changes((orphan,), (), state.mutator_state, state.num_events + 1, 1.0)
    with open(path, "ab") as f:
        f.write(frames.frame(encoding.encode(changes)))
    with pytest.raises(storage.CorruptLogError, match=r"parent .* is not in the history"):
        _loaded(tmp_path)


_OPEN_IN_A_CHILD = """
import sys
from jaxpop import storage
try:
    storage.Store(sys.argv[1]).close()
    print("opened")
except storage.LogDirInUseError as e:
    print("refused:", e)
"""


def test_deleting_the_lock_file_does_not_let_a_second_process_in(tmp_path):
    pop = _open(tmp_path)
    Driver().run(pop, 2)
    os.remove(tmp_path / "lock")
    out = run_python(_OPEN_IN_A_CHILD, str(tmp_path))
    assert out.stdout.startswith("refused:"), out.stdout + out.stderr
    pop.close()


@pytest.mark.filterwarnings("ignore:os.fork")
def test_a_forked_child_neither_keeps_the_lock_nor_writes(tmp_path):
    pop = _open(tmp_path)
    Driver().run(pop, 2)
    to_parent, to_child = os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:  # the child: its copy of the controller must refuse to write
        try:
            Driver().step(pop)
            code = 1
        except RuntimeError as e:
            code = 0 if "forked child" in str(e) else 2
        os.write(to_parent[1], b"x")
        os.read(to_child[0], 1)  # stay alive until the parent is done
        os._exit(code)
    try:
        ready, _, _ = select.select([to_parent[0]], [], [], 60)
        if not ready:  # the child hangs (a fork of a threaded process can): end it
            os.kill(child, signal.SIGKILL)
        assert ready and os.read(to_parent[0], 1) == b"x"
        pop.close()
        reopened = _open(tmp_path)  # the lock went with the parent's close
        Driver().run(reopened, 2)
        reopened.close()
    finally:
        os.write(to_child[1], b"x")
        _, status = os.waitpid(child, 0)
        for fd in (*to_parent, *to_child):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.filterwarnings("ignore:os.fork")
def test_a_child_forked_during_a_call_is_refused_not_left_waiting(tmp_path):
    """Forked while another thread's call held the controller's lock, the child's copy
    waited for good on that lock, never released in the child (helper-256)."""
    pop = _open(tmp_path)
    Driver().run(pop, 2)
    holding, release = threading.Event(), threading.Event()

    def a_call_in_flight():
        with pop._lock:  # (as a call whose mutator function is slow)
            holding.set()
            release.wait(60)

    thread = threading.Thread(target=a_call_in_flight)
    thread.start()
    assert holding.wait(10)

    def refused():
        try:
            Driver().step(pop)
            return 1
        except RuntimeError as e:
            return 0 if "forked child" in str(e) else 2

    try:
        status = _fork_and_wait(refused)  # (None: it waited for good)
    finally:
        release.set()
        thread.join()
    assert status == 0
    Driver().run(pop, 2)  # the parent goes on
    pop.close()


def _fork_and_wait(child_code, seconds=20):
    """Forks; the child runs ``child_code()`` (its exit status); the parent waits for it
    (killed past ``seconds``) and returns the status (None if it hung)."""
    child = os.fork()
    if child == 0:
        code = 3
        try:
            code = child_code()
        finally:
            os._exit(code)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    return None


def test_a_compaction_writes_through_its_own_descriptor_of_the_directory(tmp_path):
    """A finalizer the garbage collector ran in the snapshot thread closed the Store, and
    with it the directory the thread was writing through: another log_dir opened then
    got its number, and the snapshot went there, pruning that run's files (review)."""
    pop = _open(tmp_path / "a", compact_after=1)
    live = pop._store
    real_write = store._write_snapshot
    others = []

    def write(directory, seq, *args, **kwargs):
        if threading.current_thread().name == "jaxpop-snapshot" and not others:
            live.close()  # (a finalizer run here: the waits are skipped in this thread)
            others.append(None)
            others[0] = _open(tmp_path / "b")  # (a descriptor number freed: reused)
        return real_write(directory, seq, *args, **kwargs)

    store._write_snapshot = write
    try:
        Driver().run(pop, 2)
        live.wait()
    finally:
        store._write_snapshot = real_write
    assert live.snapshot_error is None
    (other,) = others
    assert sorted(os.listdir(tmp_path / "b")) == [
        "journal-00000000.jpjournal",
        "lock",
        "snapshot-00000000.jpsnap",
    ]
    Driver().run(other, 2)  # (its run intact)
    other.close()


@pytest.mark.filterwarnings("ignore:os.fork")
def test_a_child_forked_just_after_a_store_took_its_lock_does_not_keep_it(tmp_path, monkeypatch):
    """Forked after the flock was taken but before the Store was registered (or in the
    middle of its release), the child kept its copy of the locked descriptor: the
    parent's close no longer released the log_dir while the child lived (review)."""
    real_acquire = store.Store._acquire_lock
    children = []

    def acquire(self, dir_fd):
        fd = real_acquire(self, dir_fd)
        read, write = os.pipe()
        ready_read, ready_write = os.pipe()
        child = os.fork()
        if child == 0:  # (past its fork handlers) alive until the parent reopened
            os.close(write)
            os.write(ready_write, b"r")
            os.read(read, 1)
            os._exit(0)
        os.close(read)
        os.close(ready_write)
        assert os.read(ready_read, 1) == b"r"
        os.close(ready_read)
        children.append((child, write))
        return fd

    monkeypatch.setattr(store.Store, "_acquire_lock", acquire)
    opened = store.Store(tmp_path)
    monkeypatch.undo()
    try:
        opened.close()
        store.Store(tmp_path).close()  # (LogDirInUseError while the child lived)
    finally:
        for child, write in children:
            os.write(write, b"x")
            os.close(write)
            os.waitpid(child, 0)


@pytest.mark.filterwarnings("ignore:os.fork")
def test_a_store_whose_construction_a_fork_split_neither_writes_nor_closes_others_files(
    tmp_path, monkeypatch
):
    """Forked in the constructing thread after the lock was taken (a finalizer, a signal
    handler), the child's Store was registered after the fork handler closed its lock:
    it could write, and its close closed whatever reused the number (review)."""
    parent = os.getpid()
    real_acquire = store.Store._acquire_lock
    children = []

    def acquire(self, dir_fd):
        fd = real_acquire(self, dir_fd)
        child = os.fork()
        if child:
            children.append(child)
        return fd

    monkeypatch.setattr(store.Store, "_acquire_lock", acquire)
    opened = store.Store(tmp_path)
    if os.getpid() != parent:  # the child: its Store refuses; its close spares others
        code = 1
        try:
            try:
                opened.check_open(started=False)
            except RuntimeError as e:
                code = 0 if "forked child" in str(e) else 2
            other = os.open(os.devnull, os.O_RDONLY)  # (the lock's number, freed)
            opened.close()
            os.fstat(other)
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    monkeypatch.undo()
    (child,) = children
    _, status = os.waitpid(child, 0)
    opened.close()
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.filterwarnings("ignore:os.fork")
def test_a_child_forked_while_the_collector_is_paused_gets_it_back():
    """A fork while another thread paused the garbage collector (a snapshot being
    encoded, a run being read) left the child's collector off for good (review)."""
    import gc

    paused, resume = threading.Event(), threading.Event()

    def pause():
        with store._gc_paused():
            paused.set()
            resume.wait(30)

    was_enabled = gc.isenabled()
    thread = threading.Thread(target=pause)
    thread.start()
    assert paused.wait(10)
    try:
        status = _fork_and_wait(lambda: 0 if gc.isenabled() == was_enabled else 1)
    finally:
        resume.set()
        thread.join()
    assert status == 0 and gc.isenabled() == was_enabled


def test_a_store_being_closed_starts_nothing(tmp_path, monkeypatch):
    """start() between the two halves of a close (the journal closed, the directory
    not yet) wrote a snapshot and opened a journal that nothing closed (review)."""
    opened = store.Store(tmp_path)
    halfway, go_on = threading.Event(), threading.Event()
    real_wait = store.Store.wait

    def wait(self):
        real_wait(self)
        if threading.current_thread().name == "closer" and self._releasing:
            halfway.set()
            assert go_on.wait(10)

    monkeypatch.setattr(store.Store, "wait", wait)
    closer = threading.Thread(target=opened.close, name="closer")
    closer.start()
    assert halfway.wait(10)
    state = core_init_state()
    try:
        with pytest.raises(RuntimeError, match="was closed"):
            opened.start(state)
    finally:
        go_on.set()
        closer.join(10)
    assert opened.closed and opened._fd is None and os.listdir(tmp_path) == ["lock"]


def core_init_state():
    from jaxpop import core
    from jaxpop.keys import root_key

    return core.init([{"h": 1.0}], noop_mutator(), key=root_key(0), now=0.0)


def test_a_mismatch_message_shows_where_deep_configurations_differ(tmp_path):
    def pbt(high):
        space = {f"h{i}": explore.uniform(0.0, 2.0) for i in range(20)}
        space["h19"] = explore.uniform(0.0, high)
        return PopulationBasedTraining(perturbation_interval=5, hyperparam_space=space)

    def open_(mutator):  # every worker has every hyperparameter the space explores
        population = [{f"h{i}": 1.0 for i in range(20)}] * 2
        return PopulationController(population, mutator, tmp_path, 3, clock=FakeClock())

    open_(pbt(2.0)).close()
    where = r"hyperparam_space\[\d+\]\[1\]\.fields\.high: 2\.0 in the log_dir, 3\.0 now"
    with pytest.raises(storage.RunMismatchError, match=where):
        open_(pbt(3.0))


def test_a_file_system_that_cannot_lock_directories_locks_the_lock_file(tmp_path, monkeypatch):
    import fcntl
    import stat

    real_flock = fcntl.flock

    def flock(fd, operation):  # as on NFS, where flock becomes a write lock
        if stat.S_ISDIR(os.fstat(fd if isinstance(fd, int) else fd.fileno()).st_mode):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real_flock(fd, operation)

    monkeypatch.setattr(store.fcntl, "flock", flock)
    pop = _open(tmp_path)
    driver = Driver()
    driver.run(pop, 3)
    with open(tmp_path / "lock") as f, pytest.raises(BlockingIOError):
        real_flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process would be refused
    newer = _open(tmp_path)  # and a takeover in this process still works
    driver.run(newer, 2)
    newer.close()
    driver.check(storage.read_state(tmp_path))


# -- the directory a controller locked is the one it writes --------------------------
def test_a_relative_log_dir_stays_where_it_was_opened_when_the_process_moves(tmp_path, monkeypatch):
    """A notebook's ``%cd`` after opening ``"runs/x"``: compactions still write (and
    delete) in the directory that was locked, never in a same-named one elsewhere."""
    (tmp_path / "a").mkdir()
    other = tmp_path / "b" / "runs" / "x"
    first = _open(other)  # another, finished run at b/runs/x
    Driver().run(first, 3)
    first.close()
    before = {name: (other / name).read_bytes() for name in os.listdir(other) if name != "lock"}
    monkeypatch.chdir(tmp_path / "a")
    pop = _open("runs/x", compact_after=2)
    driver = Driver()
    driver.run(pop, 2)
    monkeypatch.chdir(tmp_path / "b")
    driver.run(pop, 10)  # several compactions after the move
    pop.close()
    assert {n: (other / n).read_bytes() for n in os.listdir(other) if n != "lock"} == before
    driver.check(storage.read_state(tmp_path / "a" / "runs" / "x"))


def test_a_log_dir_deleted_and_made_again_under_a_live_controller_is_not_written(tmp_path):
    """The folder of a live controller deleted and a new run started at the same path:
    the old controller refuses to write (what it wrote would be lost with the deleted
    folder) and never touches the new run's files; a folder moved away goes on where it
    is."""
    old = _open(tmp_path / "run", compact_after=3)
    Driver().run(old, 3)
    old._store.wait()  # (its snapshot written: nothing of it in flight as the folder goes)
    shutil.rmtree(tmp_path / "run")
    new = _open(tmp_path / "run", compact_after=2)  # another directory: no lock conflict
    driver = Driver()
    driver.run(new, 5)
    for call in (lambda: Driver().run(old, 1), lambda: old.finish(0)):
        with pytest.raises(storage.LogDirDeletedError, match="was deleted"):
            call()  # every call, not only the first
    old.close()
    driver.run(new, 5)
    new.close()
    driver.check(storage.read_state(tmp_path / "run"))
    # moved: the run goes on in the directory it locked, at its new path
    moved = _open(tmp_path / "moved", compact_after=2)
    driver = Driver()
    driver.run(moved, 3)
    os.rename(tmp_path / "moved", tmp_path / "elsewhere")
    driver.run(moved, 6)  # compactions included
    moved.close()
    driver.check(storage.read_state(tmp_path / "elsewhere"))
    assert not (tmp_path / "moved").exists()


def test_a_store_dropped_without_close_lets_the_next_one_in(tmp_path):
    s = storage.Store(str(tmp_path))
    s.start(_open(tmp_path / "other").state)
    del s  # never closed: its descriptors (and its lock) go with it
    s = storage.Store(str(tmp_path))
    assert s.load() is not None
    s.close()


def test_a_write_that_takes_no_bytes_fails_the_call_instead_of_spinning(tmp_path, monkeypatch):
    pop = _open(tmp_path)
    driver = Driver()
    driver.run(pop, 3)
    state = pop.state

    class NoRoom(FaultyOS):
        def write(self, fd, data):
            return 0  # as some network and FUSE file systems say "full"

    monkeypatch.setattr(store, "os", NoRoom())
    with pytest.raises(storage.JournalWriteError, match="accepted no bytes"):
        driver.run(pop, 1)
    assert pop.state is state
    monkeypatch.setattr(store, "os", os)
    driver.run(pop, 2)
    pop.close()
    driver.check(storage.read_state(tmp_path))


# -- one call, one append ------------------------------------------------------------------
def test_the_events_of_one_call_are_journaled_all_or_none(tmp_path, faulty):
    """An eval that meets the target of ``stop_when`` makes two events (the eval, the
    stop), and a call after a silence three (workers declared gone first): a full disk
    fails the call whole -- nothing of it in memory or in the files -- and the call made
    again later records all of them."""
    from jaxpop import StopWhen

    clock = FakeClock()
    pop = _open(tmp_path, stop_when=StopWhen(value=0.01), gone_after_s=60.0, clock=clock)
    driver = Driver()
    driver.run(pop, 4)
    (path,) = _files(tmp_path, "journal-")
    size, state = os.path.getsize(path), pop.state
    clock.advance(100)  # worker 1 silent: the next call declares it gone first
    gen = pop.active_workers[0].generation_id
    faulty.space = 40  # room for part of the first record only
    with pytest.raises(storage.JournalWriteError, match=r"events \d+-\d+ .* not recorded"):
        pop.set_eval(0, gen, 100, "best", 0.0)  # gone, eval, stop: three events
    assert pop.state is state and os.path.getsize(path) == size
    faulty.heal()
    pop.set_eval(0, gen, 100, "best", 0.0)
    assert [w.status for w in pop.active_workers] == ["finished", "gone"] and pop.done
    assert pop.state.num_events == state.num_events + 3
    pop.close()
    with PopulationController([{"h": 1.0}, {"h": 2.0}], pop._mutator, tmp_path, 3) as again:
        assert again.state.num_events == state.num_events + 3
        assert again.history.get_checkpoint(gen, 100).params == "best"


def test_a_torn_append_of_one_calls_events_keeps_its_whole_records(tmp_path):
    """One call's events are one append, but a crash can tear it after its first records:
    those were written whole and are replayed (each is a state the controller could be
    in), the torn one is dropped; the call itself was never acknowledged."""
    from jaxpop import StopWhen

    pop = _open(tmp_path, stop_when=StopWhen(value=0.01), compact_after=10_000)
    driver = Driver()
    driver.run(pop, 4)
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 100, "best", 0.0)  # the eval and the stop: two records at once
    pop.close()
    (path,) = _files(tmp_path, "journal-")
    offsets, _ = _frame_offsets(path)
    with open(path, "r+b") as f:
        f.truncate(offsets[-1] + 20)  # the crash cut the stop's record
    with pytest.warns(storage.TornRecordWarning):
        state = _loaded(tmp_path)
    assert state.history.get_checkpoint(gen, 100).params == "best"
    assert [w.status for w in state.workers] == ["active", "active"]  # no stop
    driver.check(state)


def test_a_store_collected_in_its_own_snapshot_thread_releases_the_log_dir(tmp_path, monkeypatch):
    """A Store dropped without close() while its background snapshot runs is collected
    in that thread, once the thread's reference to it is the last: it must not wait for
    itself, and its lock must go."""
    state = _open(tmp_path / "other").state
    writing, proceed = threading.Event(), threading.Event()
    real = store._write_snapshot

    def slow(*args, **kwargs):
        if threading.current_thread().name == "jaxpop-snapshot":
            writing.set()
            proceed.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_write_snapshot", slow)
    s = storage.Store(str(tmp_path / "run"), compact_after=1)
    s.start(state)
    s._records = 10  # a compaction is due
    s.compact_if_due(state)
    assert writing.wait(10)
    thread = s._snapshot_thread
    del s  # the snapshot thread holds the last reference
    proceed.set()
    thread.join(10)
    again = storage.Store(str(tmp_path / "run"))  # not refused: the lock went
    assert again.load() is not None
    again.close()


def test_a_store_reads_and_repairs_the_directory_it_locked(tmp_path):
    """The folder moved between locking it and loading it, and another run made at its
    path: the load reads (and repairs) the locked one, never the other."""
    pop = _open(tmp_path / "run", compact_after=10_000)
    driver = Driver()
    driver.run(pop, 4)
    pop.close()
    (path,) = _files(tmp_path / "run", "journal-")
    with open(path, "ab") as f:
        f.write(b"\x10\x00\x00")  # a torn tail to cut
    other = _open(tmp_path / "other")
    Driver().run(other, 3)
    other.close()
    s = storage.Store(str(tmp_path / "run"))
    os.rename(tmp_path / "run", tmp_path / "moved")
    os.rename(tmp_path / "other", tmp_path / "run")
    before = {n: (tmp_path / "run" / n).read_bytes() for n in os.listdir(tmp_path / "run")}
    with pytest.warns(storage.TornRecordWarning):
        state = s.load()
    s.close()
    driver.check(state)
    assert {n: (tmp_path / "run" / n).read_bytes() for n in os.listdir(tmp_path / "run")} == before
    driver.check(storage.read_state(tmp_path / "moved"))  # cut there, and whole


def test_save_and_load_state_use_the_directory_the_controller_locked(tmp_path, monkeypatch):
    """save_state's file lands in the locked directory after a chdir; once that folder is
    deleted (and a new run made at its path), save_state refuses instead of writing
    into the new run's folder, whose load_state then finds nothing."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    pop = _open("runs/x")
    Driver().run(pop, 2)
    monkeypatch.chdir(tmp_path / "b")
    pop.save_state()
    assert (tmp_path / "a" / "runs" / "x" / "population.jpstate").exists()
    assert not (tmp_path / "b" / "runs").exists()
    pop.close()
    old = _open(tmp_path / "run")
    Driver().run(old, 2)
    shutil.rmtree(tmp_path / "run")
    new = _open(tmp_path / "run")
    with pytest.raises(storage.LogDirDeletedError):
        old.save_state()
    assert new.load_state() is False  # nothing of the old run's reached it
    old.close()
    new.close()


def test_a_load_state_that_cannot_start_its_segment_leaves_the_log_dir_as_it_was(tmp_path, faulty):
    pop = _open(tmp_path, compact_after=10_000)
    driver = Driver()
    driver.run(pop, 2)
    saved = pop.serialized_state()
    driver.run(pop, 4)
    state = pop.state
    faulty.fail("open", after=1, times=1)  # the snapshot's file opens, its segment not
    with pytest.raises(OSError):
        pop.load_state(saved)
    faulty.heal()
    assert pop.state is state
    driver.run(pop, 2)  # the journal goes on
    pop.close()
    reopened = storage.read_state(tmp_path)
    driver.check(reopened)
    assert reopened.num_events > state.num_events


def test_a_torn_record_whose_params_hold_many_encodings_is_a_torn_tail(tmp_path):
    """Every embedded encoding is a candidate frame start that fails at once (its length
    runs past the end): it must not exhaust the scan's budget and be called corruption."""
    pop = _open(tmp_path, compact_after=10_000)
    Driver().run(pop, 2)
    params = [encoding.encode({"w": 0.1 + k}) for k in range(250)]
    gen = pop.active_workers[0].generation_id
    pop.set_eval(0, gen, 1000, params, 0.5)
    pop.close()
    (path,) = _files(tmp_path, "journal-")
    data = open(path, "rb").read()
    offsets, _ = _frame_offsets(path)
    last = offsets[-1]
    for cut in range(last + 1, len(data), (len(data) - last) // 40):
        open(path, "wb").write(data[:cut])
        with pytest.warns(storage.TornRecordWarning):
            assert _loaded(tmp_path).history.get_checkpoint(gen, 1000) is None


@pytest.mark.parametrize("kept", [1, 8, 16, 17])
def test_a_damaged_length_before_a_very_short_torn_record_is_corruption(tmp_path, kept):
    """The torn last record may be too short to show a payload's prefix (a header and a
    few bytes): the damaged record's checksum still matches up to where it starts."""
    pop = _open(tmp_path, compact_after=10_000)
    Driver().run(pop, 6)
    pop.close()
    (path,) = _files(tmp_path, "journal-")
    offsets, _ = _frame_offsets(path)
    data = bytearray(open(path, "rb").read())
    data[offsets[-2] + 3] ^= 0x40
    open(path, "wb").write(bytes(data[: offsets[-1] + kept]))
    with pytest.raises(storage.CorruptLogError, match="runs past the end"):
        storage.read_state(tmp_path)


def test_a_lock_file_that_cannot_be_opened_is_the_error_and_nothing_is_closed_twice(
    tmp_path, monkeypatch
):
    import fcntl
    import stat

    real_flock, real_open, opened = fcntl.flock, os.open, []

    def flock(fd, operation):  # as on NFS: no flock on a directory
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real_flock(fd, operation)

    class ReadOnlyLock(FaultyOS):
        def open(self, path, flags, mode=0o777, **kw):
            if path == "lock":  # meanwhile another thread opens a file: the freed number
                opened.append(real_open(tmp_path / "other.txt", os.O_WRONLY | os.O_CREAT))
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(store.fcntl, "flock", flock)
    monkeypatch.setattr(store, "os", ReadOnlyLock())
    monkeypatch.setattr(frames, "os", ReadOnlyLock())  # (the lock is opened by frames)
    with pytest.raises(OSError) as info:
        storage.Store(str(tmp_path / "run"))
    assert info.value.errno == errno.EROFS
    os.fstat(opened[0])  # still open: not closed by the Store's error path
    os.close(opened[0])


def test_a_store_left_open_at_interpreter_exit_exits_quietly(tmp_path):
    script = f"import jaxpop.storage as s; store = s.Store({str(tmp_path)!r})"
    result = run_python(script)
    assert result.returncode == 0 and "Exception ignored" not in result.stderr, result.stderr


def test_a_store_closed_by_a_finalizer_during_a_takeover_does_not_deadlock(tmp_path, monkeypatch):
    """The garbage collector can run a dropped controller's finalizer (which closes its
    Store) in the middle of a newer Store's takeover of the same log_dir, in the same
    thread: here forced, by closing the old Store while the takeover reads the run."""
    old = _open(tmp_path)
    Driver().run(old, 2)
    real = store._load_live

    def load_while_collected(*args, **kwargs):
        old._store.close()  # what the finalizer does
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_load_live", load_while_collected)
    done = []
    thread = threading.Thread(target=lambda: done.append(_open(tmp_path)), daemon=True)
    thread.start()
    thread.join(30)
    assert done, "the takeover deadlocked"
    done[0].close()


def test_write_all_atomic_writes_all_or_none(tmp_path, monkeypatch):
    # a folder in the way of the second of three files: the first was renamed into place
    # already when the second failed (helper-133)
    from jaxpop.storage import atomic

    paths = [str(tmp_path / name) for name in ("a", "b", "c")]
    for path in paths:
        with open(path, "wb") as f:
            f.write(b"old")
    os.remove(paths[1])
    os.mkdir(paths[1])
    with pytest.raises(IsADirectoryError, match=r"folder is in the way.*'.*b'"):
        atomic.write_all_atomic({path: b"new" for path in paths})
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]
    assert [open(p, "rb").read() for p in (paths[0], paths[2])] == [b"old", b"old"]
    os.rmdir(paths[1])
    atomic.write_all_atomic({path: b"new" for path in paths})
    assert [open(p, "rb").read() for p in paths] == [b"new"] * 3
