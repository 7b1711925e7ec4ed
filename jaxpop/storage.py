"""Durable controller state: an append-only journal of changes plus occasional snapshots.

A ``log_dir`` holds::

    lock                        flock-ed by the one live controller that writes here
    snapshot-00000042.jpsnap    the whole state as of the start of journal segment 42
    journal-00000042.jpjournal  one record per state-changing event since then
    journal-00000043.jpjournal  ...

Every event that changes the state is appended to the newest journal segment *before*
the controller's call returns, as the event's :class:`jaxpop.core.Changes` (plain data:
what was added and reassigned, never an instruction to run code). On start, the newest
snapshot is loaded and every journal segment from its number on is replayed with
:func:`jaxpop.core.redo`, so the restored state equals the one the controller had
acknowledged, key and mutator state included.

**Compaction policy.** When the records journaled since the last snapshot reach
``max(compact_after, number of checkpoints the last snapshot held)``, the controller
starts a new journal segment and writes a snapshot of the (immutable) state in a
background thread: encode, write to a temporary file, fsync, rename, fsync the
directory; only then are older segments and snapshots deleted. A snapshot costs
O(history) and comes at most once per O(history) events, so the cost per event stays
constant; start-up reads one snapshot plus at most that many journal records, so it is
O(history) too.

**File format** (``STORAGE_VERSION`` 1). Every file is a sequence of frames: a
little-endian ``uint32`` payload length, a ``uint32`` CRC-32 of the payload, then the
payload, which is one :func:`jaxpop.encoding.encode` value (so every payload also carries
the encoding's format version). The first frame of every file is a header
``{"kind": "journal" | "snapshot", "storage_version": 1, "seq": n}``. A journal's further
frames are ``Changes`` records; a snapshot has one more frame: ``{"workers",
"mutator_state", "key", "num_events", "checkpoints"}``, with the checkpoints in history
order.

**Damage.** A frame at the end of the newest journal segment that is incomplete, fails
its checksum or is followed only by zero bytes is a *torn* write (the process or
machine died mid-append): it is dropped with a warning naming the file and offset and
the file is truncated there. Any other bad frame, a bad snapshot, a missing segment or
a file written by a newer storage version raises :class:`CorruptLogError` naming the
file: a damaged log is never silently replaced by a fresh population.

**Durability.** ``"process"``: each record reaches the operating system (one
``write``) before the call returns, so killing the controller process loses nothing it
acknowledged; a machine crash may lose the last records. ``"fsync"``: each record is
also ``fsync``-ed (``fdatasync``), so it survives a machine crash; this costs one disk
flush per state-changing call.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import re
import struct as _struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from typing import Any, Literal

from jaxpop import encoding
from jaxpop.core import Changes, PopulationState, redo
from jaxpop.history import History
from jaxpop.records import ActiveWorker, Checkpoint

__all__ = [
    "STORAGE_VERSION",
    "CorruptLogError",
    "Durability",
    "LogDirInUseError",
    "Store",
    "TornRecordWarning",
    "read_state",
    "state_from_plain",
    "state_to_plain",
]

logger = logging.getLogger("jaxpop")

STORAGE_VERSION = 1
Durability = Literal["process", "fsync"]

encoding.register_record(Checkpoint, "jaxpop.Checkpoint")
encoding.register_record(ActiveWorker, "jaxpop.ActiveWorker")
encoding.register_record(Changes, "jaxpop.Changes")

_FRAME = _struct.Struct("<II")
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{8})\.jpsnap$")
_JOURNAL_RE = re.compile(r"^journal-(\d{8})\.jpjournal$")


class CorruptLogError(RuntimeError):
    """A file of a ``log_dir`` is damaged or unreadable; the message names it."""


class LogDirInUseError(RuntimeError):
    """Another live controller holds the ``log_dir``."""


class TornRecordWarning(UserWarning):
    """The last journal record was incompletely written and has been dropped."""


def _snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:08d}.jpsnap"


def _journal_name(seq: int) -> str:
    return f"journal-{seq:08d}.jpjournal"


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _header(kind: str, seq: int) -> bytes:
    return _frame(encoding.encode({"kind": kind, "storage_version": STORAGE_VERSION, "seq": seq}))


def state_to_plain(state: PopulationState) -> dict[str, Any]:
    """The whole state as plain data (what a snapshot stores)."""
    return {
        "workers": state.workers,
        "mutator_state": state.mutator_state,
        "key": state.key,
        "num_events": state.num_events,
        "checkpoints": tuple(state.history.checkpoints()),
    }


def state_from_plain(plain: dict[str, Any]) -> PopulationState:
    """Inverse of :func:`state_to_plain`."""
    return PopulationState(
        workers=tuple(plain["workers"]),
        mutator_state=plain["mutator_state"],
        key=plain["key"],
        history=History().add_all(plain["checkpoints"]),
        num_events=plain["num_events"],
    )


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


def _read_frames(
    path: str, *, allow_torn_tail: bool, repair: bool = True
) -> list[tuple[int, bytes]]:
    """Returns ``(offset, payload)`` of each frame; handles a torn tail (see module doc).

    With ``repair=False`` a torn tail is skipped silently and the file is left as it is
    (a reader of a live run sees the writer's record in flight that way).
    """
    with open(path, "rb") as f:
        data = f.read()
    frames, offset = [], 0
    while offset < len(data):
        bad = None
        if len(data) - offset < _FRAME.size:
            bad = "an incomplete frame header"
        else:
            length, crc = _FRAME.unpack_from(data, offset)
            end = offset + _FRAME.size + length
            if length == 0:
                bad = "an empty frame"
            elif end > len(data):
                bad = f"a frame of {length} bytes that runs past the end of the file"
            elif zlib.crc32(data[offset + _FRAME.size : end]) != crc:
                bad = "a checksum mismatch"
        if bad is None:
            frames.append((offset, data[offset + _FRAME.size : end]))
            offset = end
            continue
        torn = bad.startswith(("an incomplete", "a frame of")) or not any(data[end:])
        if allow_torn_tail and torn and not repair:
            return frames
        if allow_torn_tail and torn:
            warnings.warn(
                f"{path}: dropping a torn final record at offset {offset} ({bad}); the "
                "process writing it was interrupted, and that call was never acknowledged",
                TornRecordWarning,
                stacklevel=4,
            )
            with open(path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
            return frames
        raise CorruptLogError(f"{path} is corrupt: {bad} at offset {offset}")
    return frames


def _decode(path: str, offset: int, payload: bytes) -> Any:
    try:
        return encoding.decode(payload)
    except ValueError as e:
        raise CorruptLogError(f"{path}: cannot read the record at offset {offset}: {e}") from e


def _check_header(path: str, frames: list[tuple[int, bytes]], kind: str, seq: int) -> None:
    if not frames:
        raise CorruptLogError(f"{path} is empty: it has no {kind} header")
    header = _decode(path, *frames[0])
    if not isinstance(header, dict) or header.get("kind") != kind:
        raise CorruptLogError(f"{path} is not a jaxpop {kind} file (header {header!r:.100})")
    version = header.get("storage_version")
    if not isinstance(version, int) or version > STORAGE_VERSION:
        raise CorruptLogError(
            f"{path} was written by a newer jaxpop storage format (version {version}); "
            f"this jaxpop reads versions up to {STORAGE_VERSION}: upgrade jaxpop"
        )
    if header.get("seq") != seq:
        raise CorruptLogError(f"{path}: its header says segment {header.get('seq')}, not {seq}")


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


def _write_snapshot(log_dir: str, seq: int, state: PopulationState) -> None:
    """Writes ``snapshot-{seq}`` atomically, then deletes what it makes obsolete."""
    with _gc_paused():
        data = _header("snapshot", seq) + _frame(encoding.encode(state_to_plain(state)))
    final = os.path.join(log_dir, _snapshot_name(seq))
    tmp = final + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
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


def _load(log_dir: str, *, repair: bool) -> tuple[PopulationState, int, int, int] | None:
    """``(state, last segment, records since the snapshot, snapshot size)`` or ``None``."""
    snapshots, journals = _list(log_dir, repair=repair)
    if not snapshots:
        if journals:
            raise CorruptLogError(f"{log_dir} has journal segments but no snapshot to replay")
        return None
    seq = snapshots[-1]
    path = os.path.join(log_dir, _snapshot_name(seq))
    frames = _read_frames(path, allow_torn_tail=False)
    _check_header(path, frames, "snapshot", seq)
    if len(frames) != 2:
        raise CorruptLogError(f"{path} has {len(frames)} frames; a snapshot has 2")
    plain = _decode(path, *frames[1])
    try:
        state = state_from_plain(plain)
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptLogError(f"{path} does not hold a population state: {e}") from e
    snapshot_size, records = state.history.num_checkpoints, 0
    segments = [s for s in journals if s >= seq]
    if segments and segments != list(range(seq, segments[-1] + 1)):
        raise CorruptLogError(
            f"{log_dir}: journal segments {segments} after snapshot {seq} are not "
            "consecutive; a segment is missing"
        )
    for s in segments:
        path = os.path.join(log_dir, _journal_name(s))
        last = s == segments[-1]
        frames = _read_frames(path, allow_torn_tail=last, repair=repair)
        if not frames and last:  # died (or is) creating the segment: it holds nothing
            if repair:
                os.remove(path)
            segments.pop()
            break
        _check_header(path, frames, "journal", s)
        for offset, payload in frames[1:]:
            changes = _decode(path, offset, payload)
            if not isinstance(changes, Changes):
                raise CorruptLogError(f"{path}: the record at offset {offset} is not Changes")
            try:
                state = redo(state, changes)
            except ValueError as e:
                raise CorruptLogError(f"{path}, offset {offset}: {e}") from e
            records += 1
    return state, max([seq, *segments]), records, snapshot_size


def read_state(log_dir: str | os.PathLike, *, attempts: int = 5) -> PopulationState | None:
    """The state a ``log_dir`` holds, read without the lock and without writing anything.

    For reports and monitoring of a run that may be live: the controller writing the
    ``log_dir`` is never blocked or disturbed. A record the writer has not finished is
    left out; if a compaction deletes files while they are being read, the read starts
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
        return None if loaded is None else loaded[0]
    raise AssertionError("unreachable")


class Store:
    """The files of one ``log_dir``: lock, journal segments and snapshots.

    Args:
      log_dir: the directory (created if missing).
      durability: ``"process"`` or ``"fsync"``; see the module docstring.
      compact_after: the minimum number of journal records between snapshots.

    Raises:
      LogDirInUseError: another live controller (in this or another process) holds it.
    """

    def __init__(
        self, log_dir: str, *, durability: Durability = "process", compact_after: int = 1000
    ):
        if durability not in ("process", "fsync"):
            raise ValueError(f'durability must be "process" or "fsync", got {durability!r}')
        if compact_after < 1:
            raise ValueError(f"compact_after must be at least 1, got {compact_after}")
        self.log_dir = os.fspath(log_dir)
        self.durability = durability
        self.compact_after = compact_after
        os.makedirs(self.log_dir, exist_ok=True)
        self._lock_file = open(os.path.join(self.log_dir, "lock"), "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            self._lock_file.close()
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LogDirInUseError(
                f"{self.log_dir} is in use by another live jaxpop controller (pid {holder}); "
                "close() it first, or give this controller another log_dir"
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()
        self._segment: int | None = None
        self._fd: int | None = None
        self._records = 0  # journal records since the last snapshot
        self._snapshot_size = 0  # checkpoints in the last snapshot
        self._snapshot_thread: threading.Thread | None = None
        self.snapshot_error: BaseException | None = None

    # -- reading ---------------------------------------------------------------------
    def load(self) -> PopulationState | None:
        """The state this ``log_dir`` holds, or ``None`` if it holds none yet.

        Repairs what a crash left: drops a torn final record (with a warning), an empty
        last segment and interrupted snapshot files.
        """
        loaded = _load(self.log_dir, repair=True)
        if loaded is None:
            return None
        state, self._segment, self._records, self._snapshot_size = loaded
        return state

    # -- writing ---------------------------------------------------------------------
    def start(self, state: PopulationState) -> None:
        """Opens a fresh journal segment; writes a first snapshot into an empty log_dir."""
        if self._segment is None:
            _write_snapshot(self.log_dir, 0, state)
            self._snapshot_size = state.history.num_checkpoints
            self._segment = 0
            self._open_segment(0)
        else:
            self._open_segment(self._segment + 1)

    def _open_segment(self, seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = os.path.join(self.log_dir, _journal_name(seq))
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment = seq
        _write_all(self._fd, _header("journal", seq))
        if self.durability == "fsync":
            os.fsync(self._fd)
            _fsync_dir(self.log_dir)

    def append(self, changes: Changes, state: PopulationState) -> None:
        """Journals ``changes`` (which produced ``state``) before returning.

        Raises ``TypeError`` naming the offending value, without writing anything, if
        the changes cannot be encoded.
        """
        if self._fd is None:
            raise RuntimeError("this Store is closed (or was never started)")
        frame = _frame(encoding.encode(changes))
        _write_all(self._fd, frame)
        if self.durability == "fsync":
            os.fdatasync(self._fd)
        self._records += 1
        if self._records >= max(self.compact_after, self._snapshot_size):
            self._compact(state)

    def _compact(self, state: PopulationState) -> None:
        if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
            return  # the previous snapshot is still being written; try again later
        self._open_segment(self._segment + 1)
        self._records = 0
        self._snapshot_size = state.history.num_checkpoints
        self._snapshot_thread = threading.Thread(
            target=self._snapshot, args=(self._segment, state), name="jaxpop-snapshot"
        )
        self._snapshot_thread.start()

    def _snapshot(self, seq: int, state: PopulationState) -> None:
        try:
            _write_snapshot(self.log_dir, seq, state)
        except BaseException as e:  # the journal still holds everything: log, go on
            self.snapshot_error = e
            logger.exception("jaxpop: writing snapshot %d in %s failed", seq, self.log_dir)

    def wait(self) -> None:
        """Waits for a snapshot being written in the background, if any."""
        if self._snapshot_thread is not None:
            self._snapshot_thread.join()

    def close(self) -> None:
        """Waits for background work, closes the journal and releases the lock."""
        self.wait()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._lock_file.closed:
            self._lock_file.close()  # releases the flock

    @property
    def closed(self) -> bool:
        return self._lock_file.closed
