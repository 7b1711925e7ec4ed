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
import os
import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Literal, NamedTuple

from jaxpop import encoding
from jaxpop.core import Changes, PopulationState, redo
from jaxpop.records import ActiveWorker, Checkpoint
from jaxpop.storage.frames import CorruptLogError, Frame, frame, read_frames
from jaxpop.storage.plain import check_changes, state_from_plain, state_to_plain

__all__ = [
    "STORAGE_VERSION",
    "Durability",
    "JournalWriteError",
    "LogDirInUseError",
    "RunMismatchError",
    "Store",
    "SupersededError",
    "read_state",
]

logger = logging.getLogger("jaxpop")

#: The storage format this jaxpop writes; it reads this one and every earlier one.
#: Version 2 added the run description (population size, mutator) to snapshot headers.
STORAGE_VERSION = 2
Durability = Literal["process", "fsync"]

encoding.register_record(Checkpoint, "jaxpop.Checkpoint")
encoding.register_record(ActiveWorker, "jaxpop.ActiveWorker")
encoding.register_record(Changes, "jaxpop.Changes")

_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{8})\.jpsnap$")
_JOURNAL_RE = re.compile(r"^journal-(\d{8})\.jpjournal$")


class LogDirInUseError(RuntimeError):
    """Another live controller (in another process) holds the ``log_dir``."""


class SupersededError(RuntimeError):
    """A newer controller in this process took over this controller's ``log_dir``."""


class RunMismatchError(ValueError):
    """A ``log_dir`` holds a run started with another population size or mutator."""


class JournalWriteError(OSError):
    """A state-changing call could not be journaled (disk full, I/O error, ...).

    Nothing of that call was recorded: the journal ends at its last complete record and
    the controller's state is unchanged. ``errno`` is the failing write's.
    """


def _snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:08d}.jpsnap"


def _journal_name(seq: int) -> str:
    return f"journal-{seq:08d}.jpjournal"


def _header(kind: str, seq: int, run: Mapping[str, Any] | None = None) -> bytes:
    header: dict[str, Any] = {"kind": kind, "storage_version": STORAGE_VERSION, "seq": seq}
    if run is not None:
        header["run"] = dict(run)
    return frame(encoding.encode(header))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _decode(path: str, record: Frame) -> Any:
    try:
        return encoding.decode(record.payload)
    except ValueError as e:
        raise CorruptLogError(
            f"{path}: cannot read the record at offset {record.offset}: {e}"
        ) from e


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
    if run is not None and (type(run) is not dict or type(run.get("population_size")) is not int):
        raise CorruptLogError(f"{path}: its header's run description is damaged ({run!r:.100})")
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
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _write_snapshot(
    log_dir: str, seq: int, state: PopulationState, run: Mapping[str, Any] | None
) -> None:
    """Writes ``snapshot-{seq}`` atomically, then deletes what it makes obsolete.

    If anything fails, the temporary file is removed and no other file is touched.
    """
    with _gc_paused():
        data = _header("snapshot", seq, run) + frame(encoding.encode(state_to_plain(state)))
    final = os.path.join(log_dir, _snapshot_name(seq))
    tmp = final + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(log_dir)
    for name in os.listdir(log_dir):
        match = _SNAPSHOT_RE.match(name) or _JOURNAL_RE.match(name)
        if match and int(match.group(1)) < seq:
            os.remove(os.path.join(log_dir, name))


def _list(log_dir: str, *, repair: bool) -> tuple[list[int], list[int]]:
    snapshots, journals = [], []
    for name in os.listdir(log_dir):
        if name.endswith(".tmp"):  # an interrupted snapshot write
            if repair:
                os.remove(os.path.join(log_dir, name))
        elif match := _SNAPSHOT_RE.match(name):
            snapshots.append(int(match.group(1)))
        elif match := _JOURNAL_RE.match(name):
            journals.append(int(match.group(1)))
    return sorted(snapshots), sorted(journals)


class _Loaded(NamedTuple):
    state: PopulationState
    next_segment: int  # the number the writer's next journal segment takes
    records: int  # journal records since the snapshot
    snapshot_size: int  # checkpoints in the snapshot
    run: dict[str, Any] | None  # what the run was started with (None: storage version 1)


def _replay(path: str, state: PopulationState, record: Frame) -> PopulationState:
    changes = _decode(path, record)
    try:
        state = redo(state, check_changes(changes, state.population_size))
        for i, worker in changes.workers:
            if worker.generation_id not in state.history:
                raise ValueError(f"worker {i} is assigned to a generation with no checkpoint")
    except ValueError as e:
        raise CorruptLogError(
            f"{path}: the record at offset {record.offset} is invalid: {e}"
        ) from e
    return state


def _load(log_dir: str, *, repair: bool) -> _Loaded | None:
    snapshots, journals = _list(log_dir, repair=repair)
    if not snapshots:
        if journals:
            raise CorruptLogError(f"{log_dir} has journal segments but no snapshot to replay")
        return None
    seq = snapshots[-1]
    path = os.path.join(log_dir, _snapshot_name(seq))
    frames = read_frames(path, newest=False, repair=repair)
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
    snapshot_size, records = state.history.num_checkpoints, 0
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
        frames = read_frames(path, newest=newest, repair=repair)
        if not frames and newest:  # died (or is) creating the segment: it holds nothing
            if repair:
                os.remove(path)
            break  # its number is free again
        _check_header(path, frames, "journal", s)
        for record in frames[1:]:
            state = _replay(path, state, record)
            records += 1
        next_segment = s + 1
    return _Loaded(state, next_segment, records, snapshot_size, run)


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
    for attempt in range(attempts):
        try:
            loaded = _load(log_dir, repair=False)
        except (FileNotFoundError, CorruptLogError):
            if attempt == attempts - 1:
                raise
            continue  # a compaction replaced files under us: read the new ones
        return None if loaded is None else loaded.state
    raise AssertionError("unreachable")


def _run_differences(recorded: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """What differs between two run descriptions, one line each."""
    lines = []
    if recorded["population_size"] != run["population_size"]:
        lines.append(
            f"population size: {recorded['population_size']} in the log_dir, "
            f"{run['population_size']} now"
        )
    old, new = recorded.get("mutator") or {}, run.get("mutator") or {}
    if old.get("kind") != new.get("kind"):
        lines.append(f"mutator: {old.get('kind')} in the log_dir, {new.get('kind')} now")
    else:
        old_config, new_config = old.get("config") or {}, new.get("config") or {}
        for name in dict.fromkeys([*old_config, *new_config]):
            if old_config.get(name, "(absent)") != new_config.get(name, "(absent)"):
                was, now = old_config.get(name, "(absent)"), new_config.get(name, "(absent)")
                lines.append(f"mutator {name}: {was!r:.120} in the log_dir, {now!r:.120} now")
    return lines


def _check_run(
    log_dir: str,
    recorded: Mapping[str, Any] | None,
    run: Mapping[str, Any],
    population_size: int,
    reconfigure: bool,
) -> bool:
    """Refuses to resume a run as another; returns whether the description must be rewritten.

    ``recorded`` is ``None`` for a ``log_dir`` of storage version 1, which recorded only
    the population (of ``population_size`` workers).
    """
    if recorded is None:
        recorded = {"population_size": population_size, "mutator": run.get("mutator")}
        if not _run_differences(recorded, run):
            return True
    differences = _run_differences(recorded, run)
    if not differences:
        return False
    same_shape = recorded["population_size"] == run["population_size"] and (
        recorded.get("mutator") or {}
    ).get("kind") == (run.get("mutator") or {}).get("kind")
    if reconfigure and same_shape:
        logger.warning(
            "jaxpop: resuming %s with a reconfigured mutator: %s", log_dir, "; ".join(differences)
        )
        return True
    fix = (
        "pass reconfigure=True to resume it with the new configuration, or use another log_dir"
        if same_shape
        else "a run cannot change its population size or mutator kind: use another log_dir"
    )
    raise RunMismatchError(
        f"{log_dir} holds a run started differently:\n  " + "\n  ".join(differences) + f"\n{fix}"
    )


# The live Store of each log_dir opened by this process, by (device, inode).
_open_stores: dict[tuple[int, int], weakref.ref[Store]] = {}
_open_stores_lock = threading.Lock()


class Store:
    """The files of one ``log_dir``: lock, journal segments and snapshots.

    Args:
      log_dir: the directory (created if missing).
      durability: ``"process"`` or ``"fsync"``; see ``docs/storage.md``.
      compact_after: the minimum number of journal records between snapshots.

    A ``Store`` opened on a ``log_dir`` that another live ``Store`` of this process
    holds takes it over: the older one is closed once its write in flight (if any)
    ends, and its later calls raise :class:`SupersededError`.

    Raises:
      LogDirInUseError: a live controller in another process holds it.
    """

    def __init__(
        self, log_dir: str, *, durability: Durability = "process", compact_after: int = 1000
    ):
        if durability not in ("process", "fsync"):
            raise ValueError(f'durability must be "process" or "fsync", got {durability!r}')
        if isinstance(compact_after, bool) or not isinstance(compact_after, int):
            raise TypeError(f"compact_after must be an int, got {compact_after!r}")
        if compact_after < 1:
            raise ValueError(f"compact_after must be at least 1, got {compact_after}")
        self.log_dir = os.fspath(log_dir)
        self.durability = durability
        self.compact_after = compact_after
        self._io_lock = threading.Lock()  # appends, segment switches, closing
        self._segment: int | None = None  # the open journal segment
        self._next_segment = 0
        self._fd: int | None = None
        self._size = 0  # bytes in the open segment: where the next record starts
        self._records = 0  # journal records since the last snapshot
        self._snapshot_size = 0  # checkpoints in the last snapshot
        self._snapshot_thread: threading.Thread | None = None
        self._run: Mapping[str, Any] | None = None
        self._recorded_run: dict[str, Any] | None = None
        self._loaded = False  # whether load() found a state
        self._compaction_failing = False
        self._broken: JournalWriteError | None = None
        self._superseded = False
        self.snapshot_error: BaseException | None = None
        os.makedirs(self.log_dir, exist_ok=True)
        stat = os.stat(self.log_dir)
        key = (stat.st_dev, stat.st_ino)
        with _open_stores_lock:
            older = _open_stores.get(key)
            older = older() if older is not None else None
            if older is not None and not older.closed:
                older._supersede()
            self._lock_file = self._acquire_lock()
            _open_stores[key] = weakref.ref(self)

    def _acquire_lock(self) -> Any:
        for attempt in range(2):
            lock_file = open(os.path.join(self.log_dir, "lock"), "a+")  # noqa: SIM115
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                lock_file.seek(0)
                holder = lock_file.read().strip() or "unknown"
                lock_file.close()
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if attempt == 0 and holder == str(os.getpid()):
                    gc.collect()  # an unreachable Store of this process may still hold it
                    continue
                raise LogDirInUseError(
                    f"{self.log_dir} is in use by another live jaxpop controller (pid "
                    f"{holder}); close() it first, or give this controller another log_dir"
                ) from None
            lock_file.seek(0)
            lock_file.truncate()
            lock_file.write(str(os.getpid()))
            lock_file.flush()
            return lock_file
        raise AssertionError("unreachable")

    # -- reading ---------------------------------------------------------------------
    def load(self) -> PopulationState | None:
        """The state this ``log_dir`` holds, or ``None`` if it holds none yet.

        Repairs what a crash left: drops a torn final record (with a warning), an empty
        last segment and interrupted snapshot files.
        """
        loaded = _load(self.log_dir, repair=True)
        if loaded is None:
            return None
        self._next_segment = loaded.next_segment
        self._records, self._snapshot_size = loaded.records, loaded.snapshot_size
        self._recorded_run, self._loaded = loaded.run, True
        return loaded.state

    # -- writing ---------------------------------------------------------------------
    def start(
        self,
        state: PopulationState,
        run: Mapping[str, Any] | None = None,
        *,
        reconfigure: bool = False,
    ) -> None:
        """Starts writing: checks ``run`` against the one recorded, opens a journal segment.

        Args:
          state: the state to continue from (what :meth:`load` returned, or a fresh one).
          run: what this run is: ``{"population_size": n, "mutator": description}``, the
            description from :meth:`jaxpop.Mutator.describe` or any plain data (``None``:
            the population size of ``state`` only).
          reconfigure: accept a mutator of the recorded kind with another configuration.

        Raises:
          RunMismatchError: the ``log_dir`` holds a run started with another population
            size or mutator (or another configuration, without ``reconfigure``).
        """
        if self._segment is not None:
            raise RuntimeError("this Store was started already")
        if run is None:
            run = {"population_size": state.population_size, "mutator": None}
        self._run = dict(run)
        if not self._loaded:  # an empty log_dir
            _write_snapshot(self.log_dir, 0, state, self._run)
            self._snapshot_size = state.history.num_checkpoints
        elif _check_run(
            self.log_dir, self._recorded_run, self._run, state.population_size, reconfigure
        ):
            # record what the run continues as, before anything is appended
            _write_snapshot(self.log_dir, self._next_segment, state, self._run)
            self._records, self._snapshot_size = 0, state.history.num_checkpoints
        self._recorded_run = self._run
        self._open_segment(self._next_segment)

    def _open_segment(self, seq: int) -> None:
        """Makes ``journal-{seq}`` the open segment; on failure nothing else changes."""
        path = os.path.join(self.log_dir, _journal_name(seq))
        header = _header("journal", seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            _write_all(fd, header)
            if self.durability == "fsync":
                os.fsync(fd)
                _fsync_dir(self.log_dir)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(path)
            raise
        old, self._fd = self._fd, fd
        self._segment, self._next_segment, self._size = seq, seq + 1, len(header)
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)

    def _check_writable(self) -> None:
        if self._superseded:
            raise SupersededError(
                f"a newer controller in this process opened {self.log_dir} and took the "
                "run over; this one no longer writes there: use the newer one"
            )
        if self._fd is None:
            raise RuntimeError("this Store is closed (or was never started)")
        if self._broken is not None:
            raise JournalWriteError(
                self._broken.errno,
                f"{self.log_dir}: refusing to journal after a failed write that could not "
                f"be undone ({self._broken.strerror}); close this controller and create a "
                "new one on the same log_dir (it drops the incomplete record and resumes "
                "with every acknowledged call)",
            )

    def append(self, changes: Changes, state: PopulationState) -> None:
        """Journals ``changes`` (which produced ``state``) before returning.

        Raises:
          TypeError: the changes cannot be encoded (nothing is written).
          JournalWriteError: the record could not be written (disk full, I/O error);
            the journal is left ending at its previous record, so nothing of this call
            is recorded.
          SupersededError: a newer controller of this process took the ``log_dir``.
        """
        record = frame(encoding.encode(changes))
        with self._io_lock:
            self._check_writable()
            self._write_record(record, changes.num_events)
            self._records += 1
            if self._records >= max(self.compact_after, self._snapshot_size):
                self._compact(state)

    def _write_record(self, record: bytes, event: int) -> None:
        start = self._size
        try:
            _write_all(self._fd, record)
            if self.durability == "fsync":
                os.fdatasync(self._fd)
        except BaseException as e:
            undone = self._undo(start)
            if not isinstance(e, OSError):
                raise
            path = os.path.join(self.log_dir, _journal_name(self._segment))
            error = JournalWriteError(
                e.errno,
                f"could not journal event {event - 1} ({e.strerror or e}); it was not "
                "recorded and the controller's state is unchanged"
                + ("" if undone else "; the partial record could not be removed either"),
                path,
            )
            if not undone:
                self._broken = error
            raise error from e
        self._size = start + len(record)

    def _undo(self, size: int) -> bool:
        """Cuts the open segment back to ``size`` bytes; whether that worked."""
        try:
            os.ftruncate(self._fd, size)
            if self.durability == "fsync":
                os.fdatasync(self._fd)
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
        try:
            self._snapshot_thread = threading.Thread(
                target=self._snapshot,
                args=(self._segment, state, self._run),
                name="jaxpop-snapshot",
            )
            self._snapshot_thread.start()
        except Exception as e:  # e.g. no thread can be started: the journal has it all
            self._snapshot_thread = None
            self.snapshot_error = e
            logger.exception("jaxpop: cannot start writing a snapshot of %s", self.log_dir)

    def _snapshot(self, seq: int, state: PopulationState, run: Mapping[str, Any] | None) -> None:
        try:
            _write_snapshot(self.log_dir, seq, state, run)
        except BaseException as e:  # the journal still holds everything: log, go on
            self.snapshot_error = e
            logger.exception("jaxpop: writing snapshot %d in %s failed", seq, self.log_dir)

    def wait(self) -> None:
        """Waits for a snapshot being written in the background, if any."""
        thread = self._snapshot_thread
        if thread is not None:
            thread.join()

    def _supersede(self) -> None:
        with self._io_lock:
            self._superseded = True
        self.close()

    def close(self) -> None:
        """Waits for background work, closes the journal and releases the lock."""
        self.wait()
        with self._io_lock:
            fd, self._fd = self._fd, None
            try:
                if fd is not None:
                    os.close(fd)
            finally:
                if not self._lock_file.closed:
                    self._lock_file.close()  # releases the flock

    @property
    def closed(self) -> bool:
        return self._lock_file.closed

    @property
    def superseded(self) -> bool:
        """Whether a newer ``Store`` of this process took this one's ``log_dir`` over."""
        return self._superseded
