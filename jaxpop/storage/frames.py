"""Frames: the checksummed records every ``log_dir`` file is made of, and how to read them.

A frame is a little-endian ``uint32`` payload length, a ``uint32`` CRC-32 of the payload,
then the payload (one :func:`jaxpop.encoding.encode` value). :func:`read_frames` returns
the good frames of a file and decides what a bad one means, by the rules of SQLite's and
LevelDB's log recovery: damage is a *torn tail* (a write the process or machine never
finished, so never acknowledged) only where it really ends the newest file; anything
else is corruption, reported with the file and offset and never repaired.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

from jaxpop import encoding

__all__ = [
    "MAX_RECORD_BYTES",
    "CorruptLogError",
    "Frame",
    "TornRecordWarning",
    "TornTail",
    "DanglingLinkError",
    "frame",
    "is_link",
    "open_regular",
    "read_first_frame",
    "read_frames",
]

_HEADER = struct.Struct("<II")
#: The largest payload a frame can hold (its length is a ``uint32``).
MAX_RECORD_BYTES = 2**32 - 1
# Every payload starts with the encoding's header; a valid frame begins 8 bytes before.
_PAYLOAD_START = encoding.PREFIX


class CorruptLogError(RuntimeError):
    """A file of a ``log_dir`` is damaged or unreadable; the message names it."""


class TornRecordWarning(UserWarning):
    """The last journal record was incompletely written and has been dropped."""


class Frame(NamedTuple):
    """One good frame: where it starts in its file, and its payload."""

    offset: int
    payload: bytes


class TornTail(NamedTuple):
    """A torn write at the end of a file: where the good frames end, and the damage."""

    offset: int
    reason: str


def frame(payload: bytes) -> bytes:
    """``payload`` framed: length, CRC-32, payload."""
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(
            f"a record of {len(payload)} bytes is over the {MAX_RECORD_BYTES}-byte limit of "
            "a log_dir frame; with a log_dir, pass small handles (paths) as params"
        )
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _check(data: bytes, offset: int) -> tuple[int, str | None]:
    """``(end, None)`` for a good frame at ``offset``, else ``(end it claims, why bad)``."""
    if len(data) - offset < _HEADER.size:
        return len(data), "an incomplete frame header"
    length, crc = _HEADER.unpack_from(data, offset)
    end = offset + _HEADER.size + length
    if length == 0:
        return end, "an empty frame"
    if end > len(data):
        return end, f"a frame of {length} bytes that runs past the end of the file"
    if zlib.crc32(data[offset + _HEADER.size : end]) != crc:
        return end, "a checksum mismatch"
    return end, None


def _chain_to_end(
    data: bytes, offset: int, is_record: Callable[[bytes], bool] | None = None
) -> bool:
    """Whether good frames follow the bad frame at ``offset``: a chain of them, from some
    later position to the end of the file (or to zero bytes only), each a record
    (``is_record(payload)``; ``None``: any good frame is).

    A chain, not one frame: a torn record's own payload may hold bytes that look like a
    frame (parameters that contain a jaxpop encoding), but the rest of that payload does
    not go on as frames to the end -- unless the write was cut just where such a frame
    ends, which ``is_record`` tells from the file's own records. Candidates are found by
    the encoding header every payload starts with, so this is a fast scan; if a hostile
    file makes it check more than a few times its size, it gives up and answers
    ``True`` (report corruption rather than drop data).
    """
    budget = 8 * len(data) + (1 << 20)
    content = len(data.rstrip(b"\0"))  # past it, zeros only (once, not per candidate)
    records: dict[int, bool] = {}  # frame start -> is_record (chains share their tails)
    position = offset + _HEADER.size + 1
    while (found := data.find(_PAYLOAD_START, position)) != -1:
        start = found - _HEADER.size
        position = found + 1
        if start <= offset:
            continue
        all_records = True  # (whether every good frame of the chain is a record)
        while start < len(data):  # follow the chain from this candidate
            end, bad = _check(data, start)
            # what the check cost: its checksum's bytes (none for a header that is bad
            # on its own, such as one running past the end of the file)
            budget -= _HEADER.size + (end - start if end <= len(data) else 0)
            if budget < 0:
                return True
            if bad is not None:
                break
            if is_record is not None:
                known = records.get(start)
                if known is None:  # (each frame decoded once, however many chains reach it)
                    known = records[start] = is_record(data[start + _HEADER.size : end])
                if not known:
                    all_records = False
                    break
            start = end
        if all_records and start >= content:
            return True
    return False


#: How many zero bytes a whole last record may end in (its own, not the file system's)
#: for :func:`_whole_with_damaged_length` to find where it ends among trailing zeros.
_OWN_ZEROS = 4096


def _whole_with_damaged_length(data: bytes, offset: int) -> bool:
    """Whether the bad frame at ``offset`` was written whole and only its length field is
    damaged (a flipped bit makes it "run past the end of the file"): its checksum matches
    its bytes up to where a later frame starts, or up to the end of the file (or of its
    content, if zeros follow). A torn record's checksum is that of bytes never written
    in full: a prefix matches it only by a 1-in-2**32 chance at each place tried. The
    records after a damaged one may end in a torn write of their own; one CRC-32 over
    the file in all, at most :data:`_OWN_ZEROS` more steps at its end.
    """
    payload = offset + _HEADER.size
    if len(data) <= payload or not data.startswith(_PAYLOAD_START, payload):
        return False  # no payload that starts as every payload does: no record there
    crc = _HEADER.unpack_from(data, offset)[1]
    running, done = 0, payload  # the CRC-32 of data[payload:done]
    position = payload + 1
    while (found := data.find(_PAYLOAD_START, position)) != -1:
        start = found - _HEADER.size
        position = found + 1
        if start > done:
            running, done = zlib.crc32(data[done:start], running), start
            if running == crc:
                return True
    # the end: of the file; of a torn record too short to show the prefix every payload
    # starts with (a header and a few bytes); or of the record's own zeros before those
    # a file system may add after a crash. Every place from the first of them on.
    short = _HEADER.size + len(_PAYLOAD_START)
    last = max(done, len(data.rstrip(b"\0")) - short)
    running = zlib.crc32(data[done:last], running)
    for place in range(last, min(len(data), last + short + _OWN_ZEROS) + 1):
        if running == crc:
            return True
        running = zlib.crc32(data[place : place + 1], running)
    return False


def _ends_file(data: bytes, end: int) -> bool:
    """Whether a bad frame claiming to end at ``end`` ends the file, as a write cut short.

    It reaches (or claims to run past) the end of the file, or only zero bytes follow it
    (a file system may extend a file with zeros in a crash).
    """
    return end >= len(data) or not any(data[end:])


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)

# what refuses os.open with O_NOFOLLOW | O_NONBLOCK, by its errno
_OPEN_ERRORS = {
    errno.ELOOP: "a symbolic link",
    errno.EISDIR: "a directory",  # (opened to write)
    errno.ENXIO: "a FIFO or a device",  # (a FIFO with no reader, opened to write)
}


def open_regular(
    path: str, flags: int = os.O_RDONLY, *, dir_fd: int | None = None, follow: bool = False
) -> int:
    """A descriptor of the regular file ``path`` (its file name in the directory
    ``dir_fd`` opened, if given), opened with ``flags`` (and mode ``0o644`` if it creates
    it).

    Anything else in its place is refused, without blocking on it: a FIFO or a device
    would hang the reader (holding the ``log_dir``'s lock) or feed it bytes without end
    (``/dev/zero``). A symbolic link is refused too, unless ``follow`` (a read only: a
    mirror of a run made of links, ``cp -rs``, reads as the run), where the file it
    leads to must be regular: jaxpop never cuts or writes a file outside the ``log_dir``
    through one.

    Raises:
      CorruptLogError: ``path`` is not a regular file (a symbolic link, unless
        ``follow``; a directory, a FIFO, a device or a socket); the message names it.
        :class:`DanglingLinkError` for a link to nothing.
      OSError: it cannot be opened (``FileNotFoundError`` if it is missing).
    """
    name = path if dir_fd is None else os.path.basename(path)
    nofollow = 0 if follow else os.O_NOFOLLOW
    try:  # (non-blocking: opening a FIFO waits for its other end)
        fd = os.open(name, flags | nofollow | os.O_NONBLOCK, 0o644, dir_fd=dir_fd)
    except FileNotFoundError:
        if follow and is_link(name, dir_fd):
            raise DanglingLinkError(_not_regular(path, "a symbolic link to nothing")) from None
        raise
    except OSError as e:
        kind = _OPEN_ERRORS.get(e.errno or 0)
        if kind is None:
            raise
        if follow and e.errno == errno.ELOOP:
            kind = "a loop of symbolic links"
        raise CorruptLogError(_not_regular(path, kind)) from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((k for is_kind, k in _KINDS if is_kind(mode)), "something else")
        raise CorruptLogError(_not_regular(path, kind))
    return fd


class DanglingLinkError(CorruptLogError):
    """A file of a ``log_dir`` is a symbolic link to nothing (:func:`open_regular`)."""


def is_link(name: str, dir_fd: int | None = None) -> bool:
    """Whether ``name`` (in the directory ``dir_fd`` opened, if given) is a symbolic link."""
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _not_regular(path: str, kind: str) -> str:
    follow = " (jaxpop writes through no link in a log_dir)" if kind == "a symbolic link" else ""
    return (
        f"{path} cannot be read as a jaxpop file: it is not a regular file but {kind}"
        f"{follow}; remove or rename it"
    )


def read_first_frame(path: str, *, dir_fd: int | None = None) -> bytes | None:
    """The payload of ``path``'s first frame (its header), reading only that; ``None``
    if it has no good first frame or cannot be read.

    Raises:
      CorruptLogError: ``path`` is not a regular file (:func:`open_regular`; a link to
        nothing reads as a missing file: ``None``).
    """
    try:
        with open(open_regular(path, dir_fd=dir_fd, follow=True), "rb") as f:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return None
            length, crc = _HEADER.unpack(head)
            payload = f.read(length)
    except (OSError, DanglingLinkError):
        return None
    if not length or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return payload


def read_frames(
    path: str,
    *,
    newest: bool,
    dir_fd: int | None = None,
    is_record: Callable[[bytes], bool] | None = None,
) -> tuple[list[Frame], TornTail | None]:
    """The good frames of ``path``, in order, and its torn tail if it has one.

    Reads only: a caller that may change the file cuts a torn tail off itself, once
    everything else was found good.

    Args:
      path: the file.
      newest: whether ``path`` is the newest journal segment, the only file that may end
        in a torn write (see the module docstring).
      dir_fd: a descriptor of the directory to open the file name of ``path`` in
        (``None``: open ``path`` itself).
      is_record: whether a good frame's payload is one of the file's records (``None``:
        any is): only records after a bad frame make it damage rather than a torn tail.

    Raises:
      CorruptLogError: any other bad frame, naming the file, the offset and the damage;
        or ``path`` is not a regular file (:func:`open_regular`).
    """
    try:
        with open(open_regular(path, dir_fd=dir_fd, follow=True), "rb") as f:
            data = f.read()
    except (IsADirectoryError, PermissionError) as e:  # not FileNotFoundError: see read_state
        raise CorruptLogError(f"{path} cannot be read as a jaxpop file: {e}") from e
    frames, offset = [], 0
    while offset < len(data):
        end, bad = _check(data, offset)
        if bad is None:
            frames.append(Frame(offset, data[offset + _HEADER.size : end]))
            offset = end
            continue
        if newest and _ends_file(data, end):
            # A damaged length field also makes a frame "run past the end", but then the
            # records after it are still there: only a tail with none is torn.
            if _chain_to_end(data, offset, is_record) or _whole_with_damaged_length(data, offset):
                raise CorruptLogError(
                    f"{path} is corrupt: {bad} at offset {offset}, with good records after "
                    "it (a damaged record, not a torn write)"
                )
            return frames, TornTail(offset, bad)
        where = "" if newest else " (only the newest journal segment may end in a torn write)"
        raise CorruptLogError(f"{path} is corrupt: {bad} at offset {offset}{where}")
    return frames, None
