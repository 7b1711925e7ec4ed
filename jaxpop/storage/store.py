"""The files of one ``log_dir``: a journal of changes, snapshots, and the writer's lock.

:class:`Store` appends each state-changing event's :class:`jaxpop.core.Changes` to the
newest journal segment before the controller's call returns, snapshots the state in a
background thread now and then, and on start replays the newest snapshot plus the
journal. :func:`read_state` reads a (possibly live) ``log_dir`` without writing. The
file format, the recovery rules and the failure behaviour are in ``docs/storage.md``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import operator
import os
import re
import stat
import threading
import uuid
import warnings
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np

from jaxpop import encoding
from jaxpop.core import Changes, PopulationState
from jaxpop.mutators.base import is_finite
from jaxpop.records import ActiveWorker, Checkpoint
from jaxpop.storage import run as run_lib
from jaxpop.storage.atomic import write_atomic
from jaxpop.storage.delta import delta
from jaxpop.storage.frames import (
    CorruptLogError,
    DanglingLinkError,
    Frame,
    TornRecordWarning,
    TornTail,
    frame,
    is_link,
    open_regular,
    read_first_frame,
    read_frames,
)
from jaxpop.storage.plain import redo_checked, state_from_plain, state_to_plain
from jaxpop.storage.run import RunMismatchError

__all__ = [
    "STORAGE_VERSION",
    "Durability",
    "JournalWriteError",
    "LogDirInUseError",
    "LogDirDeletedError",
    "RunMismatchError",
    "Store",
    "SupersededError",
    "check_durability",
    "read_state",
]

logger = logging.getLogger("jaxpop")

#: The storage format this jaxpop writes; it reads this one and every earlier one.
#: Version 2 added the run description (population size, mutator) to snapshot headers;
#: version 3 the direction of better values (``History.mode``) to snapshots; version 4
#: journals jaxpop's own mutator states as changes from the state before (``StateDelta``);
#: version 5 ``PBTState.missed`` and ``WinnerTakeAllState.missed`` (an older jaxpop
#: cannot build those records: it says the files are newer, not damaged); version 6
#: ``FireState.evaluation_order`` and ``MFPBTState.missed`` (the same).
STORAGE_VERSION = 6
Durability = Literal["process", "fsync"]


def check_compact_after(compact_after: Any) -> int:
    """``compact_after`` as an int >= 1 (a numpy int too), else ``TypeError`` /
    ``ValueError`` naming it."""
    if isinstance(compact_after, (bool, np.bool_)):
        raise TypeError(f"compact_after must be an int, got {compact_after!r}")
    try:
        value = operator.index(compact_after)
    except TypeError:
        raise TypeError(f"compact_after must be an int, got {compact_after!r:.40}") from None
    if value < 1:
        raise ValueError(f"compact_after must be at least 1, got {value}")
    return value


def check_durability(durability: Any) -> Durability:
    """``durability`` if it is ``"process"`` or ``"fsync"``; else ``ValueError``."""
    if not isinstance(durability, str) or durability not in ("process", "fsync"):
        raise ValueError(f'durability must be "process" or "fsync", got {durability!r:.80}')
    return "fsync" if durability == "fsync" else "process"


encoding.register_record(Checkpoint, "jaxpop.Checkpoint")
encoding.register_record(ActiveWorker, "jaxpop.ActiveWorker")
encoding.register_record(Changes, "jaxpop.Changes")

# fullmatch, ASCII digits only; names grow past 8 digits after segment 99999999
_SNAPSHOT_RE = re.compile(r"snapshot-([0-9]{8,})\.jpsnap")
_JOURNAL_RE = re.compile(r"journal-([0-9]{8,})\.jpjournal")
# an interrupted snapshot write (a plain ``.tmp``: written by an earlier jaxpop)
_SNAPSHOT_TMP_RE = re.compile(r"snapshot-[0-9]{8,}\.jpsnap\.tmp(-[0-9a-f]{32})?")


class LogDirInUseError(RuntimeError):
    """Another live controller (in another process) holds the ``log_dir``."""


class SupersededError(RuntimeError):
    """A newer controller in this process took over this controller's ``log_dir``."""


class LogDirDeletedError(RuntimeError):
    """The ``log_dir`` (or its open journal segment) was deleted while its controller
    held it: what the controller would write there is lost with it, so it writes
    nothing more; the call that found it out was not recorded, and neither is any later
    one."""


class JournalWriteError(OSError):
    """A state-changing call could not be journaled (disk full, I/O error, ...).

    Nothing of that call was recorded: the journal ends at its last complete record and
    the controller's state is unchanged. ``errno`` is the failing write's.
    """


class _Directory(NamedTuple):
    """The directory a :class:`Store` locked: every file it writes, renames or deletes
    is named relative to ``fd``, an open descriptor of that directory, so it lands there
    even if the process changes its working directory, or the directory is moved, or
    another one is made at its path."""

    path: str  # (for messages)
    fd: int

    def check(self) -> None:
        """Raises :class:`LogDirDeletedError` if the directory was deleted."""
        if os.fstat(self.fd).st_nlink == 0:
            raise LogDirDeletedError(_deleted(f"{self.path} was deleted"))


def _deleted(what: str) -> str:
    return (
        f"{what} while this controller held it; this call was not recorded, and this "
        "controller writes nothing more (it would be lost with it). Close it; a new "
        "controller on that path starts from what the path holds now"
    )


def _snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:08d}.jpsnap"


def _journal_name(seq: int) -> str:
    return f"journal-{seq:08d}.jpjournal"


def _header(kind: str, seq: int, run_id: str | None, **fields: Any) -> bytes:
    header: dict[str, Any] = {"kind": kind, "storage_version": STORAGE_VERSION, "seq": seq}
    if run_id is not None:
        header["run_id"] = run_id
    header.update((k, v) for k, v in fields.items() if v is not None)
    return frame(encoding.encode(header))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # (a file system that cannot take more, saying so with 0)
            raise OSError(errno.ENOSPC, "the file system accepted no bytes of a write")
        view = view[written:]


def _decode(path: str, record: Frame) -> Any:
    try:
        return encoding.decode(record.payload, read_only=True)  # (stored: frozen, as copy_in)
    except ValueError as e:
        raise CorruptLogError(
            f"{path}: cannot read the record at offset {record.offset}: {e}"
        ) from e


def _is_record(payload: bytes) -> bool:
    """Whether a journal frame's payload is a journal record (a torn record's parameters
    may hold a whole frame of another encoding)."""
    try:
        return type(encoding.decode(payload, read_only=True)) is Changes
    except ValueError:
        return False


def _check_header(path: str, frames: list[Frame], kind: str, seq: int) -> dict[str, Any]:
    if not frames:
        raise CorruptLogError(f"{path} is empty: it has no {kind} header")
    header = _decode(path, frames[0])
    if type(header) is not dict or header.get("kind") != kind:
        raise CorruptLogError(f"{path} is not a jaxpop {kind} file (header {header!r:.100})")
    version = header.get("storage_version")
    if type(version) is int and version > STORAGE_VERSION:
        raise CorruptLogError(
            f"{path} was written by a newer jaxpop storage format (version {version}); "
            f"this jaxpop reads versions up to {STORAGE_VERSION}: upgrade jaxpop"
        )
    if type(version) is not int or version < 1:
        raise CorruptLogError(f"{path}: its header has no valid storage version ({version!r})")
    if header.get("seq") != seq or type(header.get("seq")) is not int:
        raise CorruptLogError(f"{path}: its header says segment {header.get('seq')!r}, not {seq}")
    run = header.get("run")
    if run is not None and not run_lib.is_description(run):
        raise CorruptLogError(f"{path}: its header's run description is damaged ({run!r:.100})")
    for name in ("run_id", "first_event"):
        if name in header and type(header[name]) is not (str if name == "run_id" else int):
            raise CorruptLogError(f"{path}: its header's {name} is damaged")
    return header


_gc_pauses = 0
_gc_pause_lock = threading.Lock()
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (process-wide) while the block runs.

    Encoding a large state allocates millions of short-lived objects that survive the
    young generations while the encoding runs; on its own that triggers a full
    collection, which walks every object of the process while holding the GIL -- about
    0.2 s at 100k checkpoints, during which no controller call is answered. None of
    those objects is cyclic garbage (reference counting frees them), so nothing is lost
    by not collecting meanwhile. Nested and concurrent pauses count; the collector is
    enabled again when the last one ends, if it was enabled when the first began.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_pause_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_pause_lock:
            _gc_pauses = max(_gc_pauses - 1, 0)  # (a pause that began before a fork, in it)
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _write_snapshot(
    directory: _Directory,
    seq: int,
    state: PopulationState,
    run: Mapping[str, Any] | None,
    run_id: str | None = None,
    *,
    prune: bool = True,
) -> None:
    """Writes ``snapshot-{seq}`` atomically, then (with ``prune``) deletes what it makes
    obsolete (:func:`_prune`).

    If anything fails, the temporary file is removed and no other file is touched.
    Raises :class:`LogDirDeletedError` (before deleting anything) if the directory was
    deleted.
    """
    with _gc_paused():
        header = _header("snapshot", seq, run_id, run=None if run is None else dict(run))
        data = header + frame(encoding.encode(state_to_plain(state)))
    final = _snapshot_name(seq)
    # a new file of a name no one can know beforehand: never one put in its place
    tmp = f"{final}.tmp-{uuid.uuid4().hex}"
    directory.check()
    at = directory.fd
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o644, dir_fd=at)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final, src_dir_fd=at, dst_dir_fd=at)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp, dir_fd=at)
        raise
    os.fsync(at)
    if prune:
        _prune(directory, seq)


def _prune(directory: _Directory, seq: int) -> None:
    """Deletes the snapshots and journal segments before ``seq`` (a snapshot ``seq``
    holds what they held)."""
    directory.check()
    for name in os.listdir(directory.fd):
        match = _SNAPSHOT_RE.fullmatch(name) or _JOURNAL_RE.fullmatch(name)
        if match and int(match.group(1)) < seq:
            os.remove(name, dir_fd=directory.fd)


class _Repair(NamedTuple):
    """A change that makes a crashed ``log_dir`` whole, applied once all of it was read."""

    path: str
    torn: TornTail | None  # the torn write found there (dropped with a warning)
    remove: bool  # remove the file (else cut it at torn.offset)


class _Loaded(NamedTuple):
    state: PopulationState
    next_segment: int  # the number the writer's next journal segment takes
    records: int  # journal records since the snapshot
    snapshot_size: int  # checkpoints in the snapshot
    run: dict[str, Any] | None  # what the run was started with (None: storage version 1)
    run_id: str | None  # the run's random id (None: written before jaxpop recorded one)
    repairs: list[_Repair]


def _replay(path: str, state: PopulationState, record: Frame) -> PopulationState:
    try:
        return redo_checked(state, _decode(path, record))
    except ValueError as e:
        raise CorruptLogError(
            f"{path}: the record at offset {record.offset} is invalid: {e}"
        ) from e


def _recorded_mode(run: Mapping[str, Any] | None) -> Any:
    """The ``mode`` in a run description's mutator configuration, if it has one."""
    mutator = None if run is None else run.get("mutator")
    return None if mutator is None else mutator["config"].get("mode")


def _load(log_dir: str, dir_fd: int | None = None) -> _Loaded | None:
    """Reads a ``log_dir`` (writing nothing); what a crash left is listed in ``repairs``.

    With the cyclic garbage collector paused (:func:`_gc_paused`): decoding and
    replaying build the whole history, and the full collections that so many new
    objects set off would walk every object of the process again and again (about 15%
    of a restore at 100k checkpoints). Reference counting frees the temporaries; one
    collection of the young generations at the end ages what was read, here rather
    than in the first call answered after it (0.13 s at 100k checkpoints).
    """
    with _gc_paused():
        loaded = _read_log_dir(log_dir, dir_fd)
    if gc.isenabled():  # not while a snapshot is being encoded, nor if the user disabled it
        gc.collect(1)
    return loaded


def _check_same_run(
    log_dir: str, dir_fd: int | None, newest: str, run_id: str, names: list[str]
) -> None:
    """Raises :class:`CorruptLogError` if a file ``names`` lists (older than the newest
    snapshot, ``newest``) belongs to another run: one of the two was copied or moved in,
    and resuming from the newest snapshot would silently take the other run's state (and
    its next compaction would delete this one's files). An older file whose header cannot
    be read is left alone, as before: nothing reads it."""
    for name in names:
        path = os.path.join(log_dir, name)
        payload = read_first_frame(path, dir_fd=dir_fd)
        try:
            header = None if payload is None else encoding.decode(payload)
        except ValueError:
            continue
        other = header.get("run_id") if type(header) is dict else None
        if type(other) is str and other != run_id:
            raise CorruptLogError(
                f"{log_dir} holds files of two runs: {newest} (run id {run_id}) and {path} "
                f"(run id {other}); one of them was copied or moved here: move the other "
                "run's files out"
            )


def _read_log_dir(log_dir: str, dir_fd: int | None) -> _Loaded | None:
    """:func:`_load`'s reading: of the directory ``dir_fd`` opened, if given (a
    :class:`Store`'s, whatever ``log_dir`` names now), else of ``log_dir``."""
    snapshots, journals, repairs = [], [], []
    for name in os.listdir(log_dir if dir_fd is None else dir_fd):
        if _SNAPSHOT_TMP_RE.fullmatch(name):  # an interrupted snapshot write
            repairs.append(_Repair(os.path.join(log_dir, name), None, remove=True))
        elif match := _SNAPSHOT_RE.fullmatch(name):
            snapshots.append(int(match.group(1)))
        elif match := _JOURNAL_RE.fullmatch(name):
            journals.append(int(match.group(1)))
    snapshots.sort()
    journals.sort()
    if not snapshots:
        if journals:
            raise CorruptLogError(f"{log_dir} has journal segments but no snapshot to replay")
        return None
    seq = snapshots[-1]
    path = os.path.join(log_dir, _snapshot_name(seq))
    frames, _ = read_frames(path, newest=False, dir_fd=dir_fd)
    header = _check_header(path, frames, "snapshot", seq)
    if len(frames) != 2:
        raise CorruptLogError(f"{path} has {len(frames)} frames; a snapshot has 2")
    try:
        state = state_from_plain(_decode(path, frames[1]))
    except ValueError as e:
        raise CorruptLogError(f"{path} does not hold a population state: {e}") from e
    run = header.get("run")
    if run is not None and run["population_size"] != state.population_size:
        raise CorruptLogError(
            f"{path}: its header says {run['population_size']} workers, its state has "
            f"{state.population_size}"
        )
    if header["storage_version"] < 3 and _recorded_mode(run) == "max":  # no "mode" before 3
        state = state._with(history=state.history.with_mode("max"))
    snapshot_size, records, run_id = state.history.num_checkpoints, 0, header.get("run_id")
    if run_id is not None:  # (older files are pruned; some remain only after a crash)
        older = [_snapshot_name(s) for s in snapshots[:-1]]
        _check_same_run(
            log_dir, dir_fd, path, run_id, older + [_journal_name(s) for s in journals if s < seq]
        )
    segments = [s for s in journals if s >= seq]
    if segments and segments != list(range(seq, segments[-1] + 1)):
        raise CorruptLogError(
            f"{log_dir}: journal segments {segments} after snapshot {seq} are not "
            "consecutive; a segment is missing"
        )
    next_segment = seq
    for s in segments:
        path = os.path.join(log_dir, _journal_name(s))
        newest = s == segments[-1]
        frames, torn = read_frames(path, newest=newest, dir_fd=dir_fd, is_record=_is_record)
        if not frames and newest:  # died (or is) creating the segment: it holds nothing
            repairs.append(_Repair(path, torn, remove=True))
            break  # its number is free again
        if torn is not None:
            repairs.append(_Repair(path, torn, remove=False))
        journal = _check_header(path, frames, "journal", s)
        if None not in (run_id, journal.get("run_id")) and journal["run_id"] != run_id:
            raise CorruptLogError(
                f"{path} belongs to another run (run id {journal['run_id']}, the snapshot's "
                f"is {run_id}): it was copied or moved here"
            )
        first = journal.get("first_event")
        if first is not None and first != state.num_events:
            before = _snapshot_name(seq) if s == seq else _journal_name(s - 1)
            raise CorruptLogError(
                f"{path} starts at event {first}, but {before} ends at event "
                f"{state.num_events}: records of {before} are missing"
            )
        for record in frames[1:]:
            state = _replay(path, state, record)
            records += 1
        next_segment = s + 1
    return _Loaded(state, next_segment, records, snapshot_size, run, run_id, repairs)


def _load_live(log_dir: str, attempts: int) -> _Loaded | None:
    """:func:`_load` of a ``log_dir`` that a live controller may be compacting."""
    for attempt in range(attempts):
        try:
            return _load(log_dir)
        except (FileNotFoundError, CorruptLogError):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _repair(repairs: list[_Repair], dir_fd: int) -> None:
    """Applies ``repairs`` in the directory ``dir_fd`` opened (their paths' file names).

    Raises:
      CorruptLogError: a torn tail to cut is in a symbolic link (jaxpop writes through
        none); nothing is changed then.
    """
    for repair in repairs:  # (before any change: all or nothing)
        name = os.path.basename(repair.path)
        if repair.torn is not None and not repair.remove and is_link(name, dir_fd):
            raise CorruptLogError(
                f"{repair.path} ends in a torn record (at offset {repair.torn.offset}), which "
                "a controller cuts off, but it is a symbolic link (to "
                f"{os.path.realpath(repair.path)!r}) and jaxpop writes through no link: "
                "replace the link by a copy of the file it leads to (cp --remove-destination) "
                "and open the run again. Do not remove it: its records would be lost"
            )
    for repair in repairs:
        if repair.torn is not None:
            warnings.warn(
                f"{repair.path}: dropping a torn final record at offset {repair.torn.offset} "
                f"({repair.torn.reason}); the process writing it was interrupted, and that "
                "call was never acknowledged",
                TornRecordWarning,
                stacklevel=4,  # the caller of PopulationController(...)
            )
        name = os.path.basename(repair.path)
        if repair.remove:
            with contextlib.suppress(FileNotFoundError):
                os.remove(name, dir_fd=dir_fd)
            continue
        assert repair.torn is not None  # a repair either removes a file or cuts a torn tail
        fd = open_regular(repair.path, os.O_RDWR, dir_fd=dir_fd)
        try:
            os.ftruncate(fd, repair.torn.offset)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_state(log_dir: str | os.PathLike, *, attempts: int = 5) -> PopulationState | None:
    """The state a ``log_dir`` holds, read without the lock and without writing anything.

    For reports and monitoring of a run that may be live: the controller writing the
    ``log_dir`` is never blocked or disturbed. A record the writer has not finished (a
    torn tail at the very end of the newest segment) is left out; any other damage
    raises. If a compaction deletes files while they are being read, the read starts
    over (up to ``attempts`` times). Returns ``None`` if the directory holds no state.

    Raises:
      FileNotFoundError: ``log_dir`` does not exist.
      CorruptLogError: a file is damaged (or keeps changing under every attempt).
    """
    log_dir = os.fspath(log_dir)
    if not os.path.isdir(log_dir):
        raise FileNotFoundError(f"{log_dir} is not a directory")
    loaded = _load_live(log_dir, attempts)
    return None if loaded is None else loaded.state


# The live Store of each log_dir opened by this process, by (device, inode).
_open_stores: dict[tuple[int, int], weakref.ref[Store]] = {}
# reentrant: a controller's finalizer (closing its Store) can run in the middle of a
# newer Store's takeover, in the same thread, when the garbage collector runs there
_open_stores_lock = threading.RLock()


def _check_started(started: Any) -> None:
    """Raises unless ``started`` is ``None`` or a finite time in seconds."""
    if started is None:
        return
    if not isinstance(started, bool) and isinstance(started, float | int) and is_finite(started):
        return
    raise ValueError(f"started must be a finite time in seconds, got {started!r:.40}")


class Store:
    """The files of one ``log_dir``: lock, journal segments and snapshots.

    Use: ``store = Store(log_dir, run=...)``; ``state = store.load()`` (``None`` for an
    empty ``log_dir``); ``store.start(state)``; then ``store.append(changes, state)``
    for each state-changing event; ``store.close()``.

    Args:
      log_dir: the directory (created if missing).
      run: what this run is, ``{"population_size": n, "mutator": description}`` (the
        description from :meth:`jaxpop.Mutator.describe`, or ``None``), recorded with
        the run and compared with what the ``log_dir`` recorded when it is resumed.
        ``None``: the population size of the state passed to :meth:`start` only.
      reconfigure: accept a mutator of the recorded kind with another configuration.
      durability: ``"process"`` or ``"fsync"``; see ``docs/storage.md``.
      compact_after: the minimum number of journal records between snapshots.

    A ``Store`` opened on a ``log_dir`` that another live ``Store`` of this process
    holds takes it over (when ``run`` matches what the ``log_dir`` recorded): the older
    one is closed once its write in flight (if any) ends, and its later calls raise
    :class:`SupersededError`.

    Raises:
      LogDirInUseError: a live controller in another process holds it.
      RunMismatchError: taking over from a live ``Store`` of this process, ``run`` does
        not match the run the ``log_dir`` holds (the live one is left running).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        *,
        run: Mapping[str, Any] | None = None,
        reconfigure: bool = False,
        durability: Durability = "process",
        compact_after: int = 1000,
    ):
        durability = check_durability(durability)
        compact_after = check_compact_after(compact_after)
        if run is not None and not run_lib.is_description(run):
            raise TypeError(f"run must be a run description, got {run!r:.100}")
        # absolute: a relative path would follow the process's working directory
        self.log_dir = os.path.abspath(os.fspath(log_dir))
        self.durability = durability
        self.compact_after = compact_after
        self._run = None if run is None else dict(run)
        self._reconfigure = reconfigure
        self._io_lock = threading.Lock()  # appends, segment switches, closing
        self._loaded: _Loaded | None = None
        self._segment: int | None = None  # the open journal segment
        self._fd: int | None = None
        self._size = 0  # bytes in the open segment: where the next record starts
        self._records = 0  # journal records since the last snapshot
        self._num_events = 0  # num_events of the last record journaled (or of the start)
        # the mutator state a replay holds after the last record (or the start): the next
        # record's state is journaled as a change from it (storage.delta)
        self._mutator_state: Any = None
        self._snapshot_size = 0  # checkpoints in the last snapshot
        self._snapshot_thread: threading.Thread | None = None
        self._run_id: str | None = None
        self._started_run = False  # start() made self._run what the log_dir records
        self._broken: JournalWriteError | None = None
        self._superseded = False
        self._recorded = 0  # times start() or replace() wrote the run (see _take_over)
        self._forked = False  # this is a forked child's copy of a Store
        self._releasing = False  # _release has begun: nothing more is written
        self._pid = os.getpid()
        self._compaction_failing = False
        self.snapshot_error: BaseException | None = None
        os.makedirs(self.log_dir, exist_ok=True)
        self._lock_fd: int | None = None
        dir_fd = os.open(self.log_dir, os.O_RDONLY | os.O_DIRECTORY)
        stat = os.fstat(dir_fd)
        self._key = (stat.st_dev, stat.st_ino)
        self._dir: _Directory | None = _Directory(self.log_dir, dir_fd)
        try:
            with _open_stores_lock:
                ref = _open_stores.get(self._key)
                older = ref() if ref is not None else None
                if older is not None and not older.closed:
                    self._take_over(older)
                with _lock_fds_lock:  # (no fork between the lock and its note)
                    self._lock_fd = self._acquire_lock(dir_fd)
                _open_stores[self._key] = weakref.ref(self)
        except BaseException:
            self._dir = None
            os.close(dir_fd)
            raise

    def _take_over(self, older: Store) -> None:
        """Supersedes ``older``, the live ``Store`` of this ``log_dir`` in this process,
        unless ``run`` cannot resume the run the ``log_dir`` holds: a refused newcomer
        must not stop the live one.

        The check reads the ``log_dir`` before taking ``older``'s lock (with it held, a
        finalizer closing ``older`` in this thread would wait for itself); if ``older``
        wrote its run meanwhile (it was starting, say writing its snapshot 0), the check
        is made again.

        Raises:
          RunMismatchError: ``run`` does not match the run the ``log_dir`` holds.
        """
        while True:
            recorded = older._recorded
            if self._run is not None:
                self._check_resume(_load_live(self.log_dir, attempts=5))
            if older._supersede(recorded):
                return

    def __del__(self) -> None:
        # a Store dropped without close(): its descriptors (and with them its lock) go
        # with it, so a later Store of this process can take the log_dir. (No module
        # globals here: at interpreter exit they may be gone already.)
        try:
            if self._lock_fd is not None and not self._forked:
                self._release()
        except Exception:  # (a finalizer has no one to tell)
            pass

    def _acquire_lock(self, dir_fd: int) -> int:
        """Locks the directory ``dir_fd`` opened (an ``flock`` on a descriptor of its own;
        deleting or replacing a file cannot undo it) and writes this process's pid to
        its ``lock`` file.

        Raises:
          LogDirInUseError: another controller holds the lock.
          CorruptLogError: ``lock`` is not a regular file (a symbolic link, a FIFO, ...).
        """
        lock = os.path.join(self.log_dir, "lock")  # (opened in dir_fd by its name)
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                # a file system that cannot lock a directory (NFS emulates flock with
                # write locks): lock the lock file instead
                os.close(fd)
                fd = -1  # (closed: not again below if the next line fails)
                fd = open_regular(lock, os.O_RDWR | os.O_CREAT, dir_fd=dir_fd)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                with open(open_regular(lock, dir_fd=dir_fd)) as f:
                    holder = f.read(64).strip()
            except (OSError, CorruptLogError, ValueError):  # (ValueError: not text)
                holder = ""
            if not (holder.isascii() and holder.isdigit()):  # (a lock file replaced)
                holder = "unknown"
            who = f"another live jaxpop controller (pid {holder})"
            if holder == str(os.getpid()):
                who = f"another jaxpop controller of this process (pid {holder}) not closed"
            raise LogDirInUseError(
                f"{self.log_dir} is in use by {who}; close() it first, or give this "
                "controller another log_dir"
            ) from None
        try:  # (a regular file only: never through a link, nor into a FIFO or a device)
            with open(open_regular(lock, os.O_WRONLY | os.O_CREAT, dir_fd=dir_fd), "w") as f:
                f.truncate(0)
                f.write(str(os.getpid()))
        except BaseException:
            os.close(fd)
            raise
        _lock_fds.add(fd)  # (a forked child closes its copy: _after_fork_in_child)
        return fd

    @property
    def _directory(self) -> _Directory:
        """The locked directory (only while open: ``check_open`` comes first)."""
        assert self._dir is not None
        return self._dir

    def write_file(self, name: str, data: bytes) -> None:
        """Replaces the file ``name`` of the locked directory with ``data``, atomically
        and durably (:func:`jaxpop.storage.atomic.write_atomic`).

        Raises:
          LogDirDeletedError: the directory was deleted.
          SupersededError: a newer controller of this process took the ``log_dir``.
        """
        with self._io_lock:
            self.check_open(started=False)
            self._directory.check()
            write_atomic(name, data, dir_fd=self._directory.fd)

    def read_file(self, name: str) -> bytes | None:
        """The bytes of the file ``name`` of the locked directory, ``None`` if it has none."""
        with self._io_lock:
            self.check_open(started=False)
            try:  # (non-blocking: a FIFO there would block the open, lock held)
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=self._directory.fd)
            except FileNotFoundError:
                return None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                path = os.path.join(self.log_dir, name)
                raise OSError(
                    errno.EINVAL, f"{path} is not a regular file (remove or rename it)", path
                )
            with open(fd, "rb") as f:
                return f.read()

    def _check_resume(self, loaded: _Loaded | None) -> bool:
        """Whether the run must be recorded anew; raises if it cannot be resumed as ``run``."""
        if loaded is None or self._run is None:
            return loaded is not None and loaded.run is None
        return run_lib.check_resume(
            self.log_dir, loaded.run, self._run, loaded.state.population_size, self._reconfigure
        )

    # -- reading ---------------------------------------------------------------------
    def load(self) -> PopulationState | None:
        """The state this ``log_dir`` holds, or ``None`` if it holds none yet.

        Once everything was read and found good, repairs what a crash left: drops a torn
        final record (with a :class:`TornRecordWarning`), an empty last segment and
        interrupted snapshot files.

        Raises:
          CorruptLogError: a file is damaged (nothing is changed then).
          SupersededError: a newer ``Store`` of this process took the ``log_dir`` over.
        """
        # under the I/O lock: a newer Store taking the log_dir over (two controllers made
        # at once) closes this one's directory only between reads, never under them (its
        # descriptor's number, reused, could name another file: a repair there)
        with self._io_lock:
            self.check_open(started=False)
            self._loaded = _load(self.log_dir, self._directory.fd)
            if self._loaded is None:
                return None
            _repair(self._loaded.repairs, self._directory.fd)
            return self._loaded.state

    # -- writing ---------------------------------------------------------------------
    @property
    def started(self) -> float | None:
        """When the run began (seconds since the epoch), as the ``log_dir`` records it:
        after :meth:`load`, the recorded time (``None`` for a new ``log_dir`` or a run
        recorded without one); after :meth:`start`, the time it keeps recording."""
        run = self._run if self._started_run else self._loaded and self._loaded.run
        return None if run is None else run.get("started")

    def _refuse_a_run_not_loaded(self) -> None:
        """Raises ``FileExistsError`` if the ``log_dir`` holds a run that :meth:`load`
        did not return (it was not called): a new run there overwrote its snapshot 0,
        or wrote a second run beside it."""
        held = sorted(
            name
            for name in os.listdir(self._directory.fd)
            if _SNAPSHOT_RE.fullmatch(name) or _JOURNAL_RE.fullmatch(name)
        )
        if held:
            raise FileExistsError(
                f"{self.log_dir} holds a run ({', '.join(held[:2])}"
                f"{', ...' if len(held) > 2 else ''}): to go on with it, start() the state "
                "load() returns; for a new run, use another log_dir (or remove this run's "
                "files)"
            )

    def start(self, state: PopulationState, *, started: float | None = None) -> None:
        """Checks the run against the one recorded, then opens a journal segment.

        Args:
          state: the state to continue from (what :meth:`load` returned, or a fresh one).
          started: when the run began (seconds since the epoch), recorded with the run
            if the ``log_dir`` records no such time yet (a new run, or one recorded
            before jaxpop kept it); a recorded time is kept (see :attr:`started`).

        Raises:
          RunMismatchError: the ``log_dir`` holds a run started with another population
            size or mutator (or another configuration, without ``reconfigure``).
          FileExistsError: :meth:`load` was not called and the ``log_dir`` holds a run
            (a new run would overwrite it). Nothing is written.
          TypeError: ``state`` is not a state (``None``: what :meth:`load` returns for
            a ``log_dir`` with no run).
          ValueError, TypeError: an assignment a journal record cannot hold (nested too
            deep for one; see :func:`jaxpop.encoding.encode`). Nothing is written.
          SupersededError: a newer ``Store`` of this process took the ``log_dir`` over.
        """
        _check_started(started)
        if not isinstance(state, PopulationState):
            raise TypeError(
                f"start takes the state to continue from, got {type(state).__name__}"
                + (
                    ": load() returns None for a log_dir that holds no run yet; start "
                    "a fresh state there (vectorized.lineage_init, say)"
                    if state is None
                    else ""
                )
            )
        # a journal record nests an assignment deeper than the snapshot does: one that
        # fits only the snapshot is refused here, not at each call that journals it
        encoding.encode(Changes((), tuple(enumerate(state.workers)), None, 0, 0.0))
        with self._recording():
            self.check_open(started=False)
            if self._segment is not None:
                raise RuntimeError("this Store was started already")
            self._num_events = state.num_events
            loaded = self._loaded
            # (a resumed state may differ from the one replayed: a migrated seed run's
            # mutator state; the journal follows the replayed one until a snapshot)
            self._mutator_state = (loaded.state if loaded is not None else state).mutator_state
            self._run_id = (loaded and loaded.run_id) or uuid.uuid4().hex
            if loaded is None:  # an empty log_dir: snapshot 0 first, then its journal
                self._refuse_a_run_not_loaded()
                self._run = self._run or {"population_size": state.population_size, "mutator": None}
                self._run.pop("started", None)
                if started is not None:
                    self._run["started"] = float(started)
                self._started_run = True
                try:  # (a snapshot 0 here is this call's: the log_dir held no run)
                    _write_snapshot(self._directory, 0, state, self._run, self._run_id)
                    self._open_segment(0)
                except BaseException:  # a failure after the rename (the folder's fsync)
                    with contextlib.suppress(OSError):
                        os.remove(_snapshot_name(0), dir_fd=self._directory.fd)
                    raise
                self._snapshot_size = state.history.num_checkpoints
                return
            record = self._check_resume(loaded) or loaded.run_id is None
            self._run = dict(
                self._run
                or loaded.run
                or {
                    "population_size": loaded.state.population_size,
                    "mutator": None,
                }
            )
            self._run.pop("started", None)
            recorded = None if loaded.run is None else loaded.run.get("started")
            if recorded is not None:  # a run begins once
                self._run["started"] = recorded
            elif started is not None:  # recorded now (a run written before jaxpop kept it)
                self._run["started"] = float(started)
                record = True
            self._started_run = True
            self._records, self._snapshot_size = loaded.records, loaded.snapshot_size
            previous = _journal_name(loaded.next_segment - 1)
            # (none, or a link to none in a mirror: nothing went before, or it is obsolete)
            with contextlib.suppress(FileNotFoundError, DanglingLinkError):
                # what went before reaches the disk before what follows
                path = os.path.join(self.log_dir, previous)
                fd = open_regular(path, dir_fd=self._directory.fd, follow=True)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._open_segment(loaded.next_segment)
            if record:  # what the run continues as, before anything is appended
                try:
                    _write_snapshot(
                        self._directory, loaded.next_segment, state, self._run, self._run_id
                    )
                except BaseException:
                    self._abandon_segment()
                    raise
                self._records, self._snapshot_size = 0, state.history.num_checkpoints
                self._mutator_state = state.mutator_state

    def _open_segment(self, seq: int) -> None:
        """Makes ``journal-{seq}`` the open segment; on failure nothing else changes.

        The segment it replaces is synced first, whatever the durability: only the newest
        segment may end in a torn write, even after a machine crash.
        """
        if self._fd is not None:
            os.fdatasync(self._fd)
        directory = self._directory
        directory.check()
        name = _journal_name(seq)
        header = _header("journal", seq, self._run_id, first_event=self._num_events)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        fd = os.open(name, flags, 0o644, dir_fd=directory.fd)
        try:
            _write_all(fd, header)
            if self.durability == "fsync":
                os.fsync(fd)
                os.fsync(directory.fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(name, dir_fd=directory.fd)
            raise
        old, self._fd = self._fd, fd
        self._segment, self._size = seq, len(header)
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)

    def _abandon_segment(self) -> None:
        """Closes and removes the open segment (only ever one holding just its header)."""
        fd, self._fd = self._fd, None
        assert fd is not None and self._segment is not None  # a segment is open
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(_journal_name(self._segment), dir_fd=self._directory.fd)
        self._segment = None

    def check_open(self, *, started: bool = True) -> None:
        """Raises unless this ``Store`` may write (and, with ``started``, was started).

        Raises:
          SupersededError: a newer ``Store`` of this process took the ``log_dir`` over.
          RuntimeError: it was closed (or, with ``started``, never started).
        """
        if self._superseded:
            raise SupersededError(
                f"a newer controller in this process opened {self.log_dir} and took the "
                "run over, with everything this one acknowledged; this one no longer "
                "writes there: use the newer one"
            )
        if self._forked or self._pid != os.getpid():  # (forked before it was registered)
            raise RuntimeError(
                f"this controller belongs to process {self._pid}; a forked child cannot write "
                f"its log_dir {self.log_dir!r}: create the controller in the process that uses "
                "it (or reach it through jaxpop.distributed)"
            )
        if self._lock_fd is None or self._releasing or (started and self._fd is None):
            raise RuntimeError(f"this controller's log_dir {self.log_dir!r} was closed")

    def append(self, changes: Changes, state: PopulationState) -> None:
        """Journals ``changes`` (which produced ``state``), then compacts if it is due.

        :meth:`write` then :meth:`compact_if_due`. An exception from the second (only an
        interrupt such as ``KeyboardInterrupt`` can escape it) means the record *was*
        journaled; a caller that must know calls the two itself, as the controller does.
        """
        self.write(changes)
        self.compact_if_due(state)

    def write(self, *changes: Changes) -> None:
        """Journals ``changes`` before returning; if it raises, nothing was journaled.

        Several changes (the consecutive events of one call: a worker declared gone, the
        call's own event, the stop it triggers) are written as one append: a failed write
        journals none of them (a crash may still tear the append after its first
        records, which are then replayed on reopening).

        Raises:
          TypeError: the changes cannot be encoded (nothing is written).
          JournalWriteError: the record could not be written (disk full, I/O error);
            the journal is left ending at its previous record, so nothing of this call
            is recorded.
          SupersededError: a newer controller of this process took the ``log_dir``.
          RuntimeError: ``changes`` is not the event after the last one journaled (the
            caller lost track of what was journaled: reopen the ``log_dir``).
        """
        if not changes:
            raise TypeError("write() needs at least one Changes")
        start = self._mutator_state
        record, base = self._records_of(changes, start)  # (encoded outside the lock)
        with self._io_lock:
            if self._mutator_state is not start:  # another write or a replace came first
                record, base = self._records_of(changes, self._mutator_state)
            self.check_open()
            if self._broken is not None:
                raise JournalWriteError(
                    self._broken.errno,
                    f"{self.log_dir}: refusing to journal after a failed write that could "
                    f"not be undone ({self._broken.strerror}); close this controller and "
                    "create a new one on the same log_dir (it drops the incomplete record "
                    "and resumes with every acknowledged call)",
                )
            fd, segment = self._fd, self._segment
            assert fd is not None and segment is not None  # check_open: started
            if os.fstat(fd).st_nlink == 0:  # (on the descriptor: no path lookup per call)
                deleted = f"{self.log_dir}'s journal segment {_journal_name(segment)} was deleted"
                raise LogDirDeletedError(_deleted(deleted))
            last = self._num_events
            for c in changes:
                if c.num_events != last + 1:
                    raise RuntimeError(
                        f"{self.log_dir}: event {c.num_events - 1} cannot follow event "
                        f"{last - 1} in the journal; the journal holds events its writer "
                        "did not take (was a call interrupted?): reopen the log_dir"
                    )
                last += 1
            self._write_record(record, last, base, self._records + len(changes))

    @staticmethod
    def _records_of(changes: tuple[Changes, ...], base: Any) -> tuple[bytes, Any]:
        """The framed records of ``changes``, each mutator state written as a change from
        the one before it (the first from ``base``), and the last mutator state."""
        parts = []
        for c in changes:
            written = delta(base, c.mutator_state)
            journaled = c if written is c.mutator_state else c.with_mutator_state(written)
            parts.append(frame(encoding.encode(journaled)))
            base = c.mutator_state
        return (parts[0] if len(parts) == 1 else b"".join(parts)), base

    def compact_if_due(self, state: PopulationState) -> None:
        """Starts a compaction (new segment, background snapshot of ``state``) if due.

        ``state`` is the state after the last record written. Never raises an
        ``Exception``: a failed compaction is logged and tried again later.
        """
        with self._io_lock:  # (a superseded Store's run is the newer one's now)
            if (
                self._fd is not None
                and not self._superseded
                and self._records >= max(self.compact_after, self._snapshot_size)
            ):
                self._compact(state)

    def replace(self, state: PopulationState, *, started: float | None = None) -> None:
        """Makes ``state`` the run's whole state, durably, before returning; ``started``
        (if given): when the run it is a state of began, recorded with it.

        For a controller that installs a saved state (``load_state``): a snapshot of
        ``state`` is written with a new segment after it (synchronously), which
        supersede what the journal held; later records follow them. If it raises, the
        ``log_dir`` still holds the previous state and the journal goes on (or, if even
        undoing failed, a :class:`JournalWriteError` says the ``log_dir`` holds ``state``
        and this ``Store`` writes nothing more).

        Raises:
          TypeError: ``state`` cannot be encoded (nothing is written).
          OSError: the snapshot or its segment could not be written.
          SupersededError: a newer controller of this process took the ``log_dir``.
        """
        _check_started(started)
        with self._recording():
            self.check_open()
            self.wait()  # a background snapshot of an older segment finishes first
            assert self._segment is not None  # check_open: started
            seq, directory = self._segment + 1, self._directory
            events, self._num_events = self._num_events, state.num_events
            run = self._run
            if started is not None and run is not None:
                run = {**run, "started": float(started)}
            try:
                _write_snapshot(directory, seq, state, run, self._run_id, prune=False)
                self._open_segment(seq)  # (its header: first_event=state.num_events)
            except BaseException as e:
                self._num_events = events
                try:  # the snapshot goes, if it got in: the previous state stays the run's
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(_snapshot_name(seq), dir_fd=directory.fd)
                    os.fsync(directory.fd)
                except OSError as undo:
                    self._broken = JournalWriteError(
                        errno.EIO,
                        f"{self.log_dir} now holds the loaded state (its snapshot is in "
                        f"place, but no journal segment could follow it: {e!r}, and it "
                        f"could not be removed: {undo!r}); close this controller and "
                        "reopen the log_dir",
                    )
                    raise self._broken from e
                raise
            try:
                _prune(directory, seq)
            except Exception:  # in place; only removing what it made obsolete failed
                logger.exception("jaxpop: cleaning up %s after a snapshot failed", self.log_dir)
            self._records, self._snapshot_size = 0, state.history.num_checkpoints
            self._mutator_state = state.mutator_state
            self._run = run  # (later snapshots record the start too)
            self._broken = None  # whatever an undone write left is in an obsolete segment

    def _write_record(self, record: bytes, last: int, base: Any, records: int) -> None:
        """Appends ``record``, the frames of the events after ``self._num_events`` up to
        ``last``, and takes them: ``last`` events, ``base`` the last mutator state,
        ``records`` journal records since the snapshot.

        The record is counted inside the ``try`` whose failure cuts it back, in plain
        attribute stores (no call, where CPython would run a signal handler): an interrupt
        leaves the record either cut back and uncounted, or written and counted (counted
        behind a record on disk, the next write journaled the same event again, and the
        ``log_dir`` could not be reopened)."""
        first, start, fd = self._num_events + 1, self._size, self._fd
        taken = (start + len(record), last, base, records)
        before = (start, self._num_events, self._mutator_state, self._records)
        assert fd is not None and self._segment is not None  # check_open: started
        try:
            _write_all(fd, record)
            if self.durability == "fsync":
                os.fdatasync(fd)
            self._size, self._num_events, self._mutator_state, self._records = taken
        except BaseException as e:
            self._size, self._num_events, self._mutator_state, self._records = before
            undone = self._undo(start)
            reason = getattr(e, "strerror", None) or repr(e)
            path = os.path.join(self.log_dir, _journal_name(self._segment))
            events = f"event {last - 1}" if first == last else f"events {first - 1}-{last - 1}"
            error = JournalWriteError(
                getattr(e, "errno", None) or errno.EIO,
                f"could not journal {events} ({reason}); the controller's state is "
                + (
                    "unchanged and the call was not recorded"
                    if undone
                    else "unchanged, but its records could not be cut off the journal either: "
                    "when the log_dir is reopened an incomplete record is dropped, and "
                    "records written whole are replayed"
                ),
                path,
            )
            if not undone:  # whatever interrupted the write: nothing may follow it
                self._broken = error
            if not isinstance(e, OSError):
                raise
            raise error from e

    def _undo(self, size: int) -> bool:
        """Cuts the open segment back to ``size`` bytes; whether that worked."""
        fd = self._fd
        assert fd is not None  # only after a write to the open segment
        try:
            os.ftruncate(fd, size)
            if self.durability == "fsync":
                os.fdatasync(fd)
        except OSError:
            logger.exception("jaxpop: cannot cut %s back to its last record", self.log_dir)
            return False
        return True

    def _compact(self, state: PopulationState) -> None:
        """Starts a new segment and snapshots ``state`` in the background.

        Runs after the record was written, so it never raises: the call it ends was
        journaled. If it fails, the journal goes on in the current segment and the next
        append tries again.
        """
        if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
            return  # the previous snapshot is still being written; try again later
        assert self._segment is not None  # only after a record was written
        try:
            self._open_segment(self._segment + 1)
        except Exception:
            if not self._compaction_failing:  # once per streak, not at every append
                logger.exception(
                    "jaxpop: cannot start a new journal segment in %s; the journal goes on in %s",
                    self.log_dir,
                    _journal_name(self._segment),
                )
            self._compaction_failing = True
            return
        self._compaction_failing = False
        self._records = 0
        self._snapshot_size = state.history.num_checkpoints
        directory: _Directory | None = None
        try:
            # its own descriptor of the directory, closed when it ends: a finalizer the
            # garbage collector runs in that thread may close this Store, whose number,
            # reused, could name another folder
            directory = _Directory(self._directory.path, os.dup(self._directory.fd))
            self._snapshot_thread = threading.Thread(
                target=self._snapshot,
                args=(directory, self._segment, state, self._run, self._run_id),
                name="jaxpop-snapshot",
            )
            self._snapshot_thread.start()
        except Exception as e:  # e.g. no thread can be started: the journal has it all
            if directory is not None:  # (the thread never started: its descriptor)
                with contextlib.suppress(OSError):
                    os.close(directory.fd)
            self._snapshot_thread = None
            self.snapshot_error = e
            logger.exception("jaxpop: cannot start writing a snapshot of %s", self.log_dir)

    def _snapshot(
        self,
        directory: _Directory,
        seq: int,
        state: PopulationState,
        run: Mapping[str, Any] | None,
        run_id: str | None,
    ) -> None:
        try:
            _write_snapshot(directory, seq, state, run, run_id)
        except BaseException as e:  # the journal still holds everything: log, go on
            self.snapshot_error = e
            logger.exception("jaxpop: writing snapshot %d in %s failed", seq, self.log_dir)
        finally:
            os.close(directory.fd)

    def wait(self) -> None:
        """Waits for a snapshot being written in the background, if any."""
        thread = self._snapshot_thread
        # (not from the snapshot thread itself: a Store dropped without close() can be
        # collected there, once the thread's reference to it is the last)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _supersede(self, recorded: int) -> bool:
        """Called by the newer ``Store`` (holding ``_open_stores_lock``), which read the
        ``log_dir`` after this one had written its run ``recorded`` times: supersedes
        this one, unless it wrote its run since (then ``False``: read it again)."""
        with self._io_lock:
            if self._recorded != recorded:
                return False
            self._superseded = True
        self._release()
        return True

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        """The I/O lock held, to write the run (:meth:`start`, :meth:`replace`): counted
        when it ends, so that a newer ``Store`` that read the ``log_dir`` meanwhile checks
        its run again before it takes over (:meth:`_take_over`)."""
        with self._io_lock:
            try:
                yield
            finally:
                self._recorded += 1

    def _release(self) -> None:
        self.wait()
        with self._io_lock:  # the journal first: no compaction starts once it is closed
            fd, self._fd = self._fd, None
            self._releasing = True  # (and nothing else is done here from now: check_open)
        try:
            if fd is not None:
                os.close(fd)
        finally:
            # then a compaction started meanwhile (a call journaled just before a
            # takeover) ends, before the directory its snapshot writes through is closed
            # (its number, reused, could name another folder). Waited for without the
            # I/O lock: the snapshot thread can need it (a finalizer the garbage
            # collector runs there, closing this Store)
            self.wait()
            with self._io_lock:
                lock_fd, self._lock_fd = self._lock_fd, None
                directory, self._dir = self._dir, None
                if directory is not None:
                    os.close(directory.fd)
                if lock_fd is not None:
                    with _lock_fds_lock:  # (no fork between the close and its note)
                        if lock_fd in _lock_fds:  # (else a fork's child closed it already:
                            _lock_fds.discard(lock_fd)  # its number may be another's)
                            os.close(lock_fd)  # releases the flock

    def close(self) -> None:
        """Waits for background work, closes the journal and releases the lock."""
        self._release()
        # never waits for the registry's lock: close() runs in finalizers too, which the
        # garbage collector can run in a thread holding a Store's I/O lock (reading its
        # run, say) while a newer Store holds this lock and waits for that I/O lock: a
        # deadlock. A closed Store's entry left behind is harmless (it is closed: the
        # next Store of its log_dir takes nothing over) and goes with the next one's.
        if not _open_stores_lock.acquire(blocking=False):
            return
        try:
            current = _open_stores.get(self._key)
            if current is not None and current() is self:
                del _open_stores[self._key]
        finally:
            _open_stores_lock.release()

    @property
    def closed(self) -> bool:
        """Whether this ``Store`` released its ``log_dir`` (closed or superseded)."""
        return self._lock_fd is None

    @property
    def superseded(self) -> bool:
        """Whether a newer ``Store`` of this process took this one's ``log_dir`` over."""
        return self._superseded

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the inherited descriptors, keeping the parent's lock.

        Closing a descriptor does not release an ``flock`` while another descriptor of
        the same open file (the parent's) remains; so the lock stays the parent's, and
        goes when the parent closes it, even while this child lives on.
        """
        self._forked = True
        self._io_lock = threading.Lock()  # it may have been held by a thread at fork time
        self._snapshot_thread = None
        for fd in (self._fd, None if self._dir is None else self._dir.fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = self._dir = None  # (its lock: _after_fork_in_child)


# Every lock descriptor a Store of this process holds, with the lock that keeps a fork
# out of the moments one is taken or closed: a forked child closes its copies of them
# all (a Store in the middle of _release, or of __init__ before it is registered, would
# otherwise leave the child holding the flock after the parent closed it)
_lock_fds: set[int] = set()
_lock_fds_lock = threading.RLock()


_forking = threading.local()  # whether this thread's fork holds _lock_fds_lock


def _before_fork() -> None:
    # (bounded: a fork from a finalizer or a signal handler while the thread that holds
    # the lock waits for something the forking thread holds would otherwise never end;
    # past the bound the fork goes on, as before the lock was kept)
    _forking.held = _lock_fds_lock.acquire(timeout=1.0)


def _after_fork_in_parent() -> None:
    if getattr(_forking, "held", False):
        _forking.held = False
        _lock_fds_lock.release()


def _after_fork_in_child() -> None:
    global _open_stores_lock, _lock_fds_lock, _gc_pause_lock, _gc_pauses
    _open_stores_lock = threading.RLock()  # it may have been held by a thread at fork time
    for ref in list(_open_stores.values()):
        store = ref()
        if store is not None:
            store._forget_after_fork()
    _open_stores.clear()
    for fd in _lock_fds:  # (the parent's flocks stay the parent's: it holds its own)
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()
    _lock_fds_lock = threading.RLock()  # (held by the fork: _before_fork)
    # a pause of the garbage collector by another thread (a snapshot being encoded, a
    # run read) would never end here: the child's collector would stay off for good
    _gc_pause_lock = threading.Lock()
    if _gc_pauses:
        _gc_pauses = 0
        if _gc_was_enabled:
            gc.enable()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
