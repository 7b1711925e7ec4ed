"""Frames: the checksummed records every ``log_dir`` file is made of, and how to read them.

A frame is a little-endian ``uint32`` payload length, a ``uint32`` CRC-32 of the payload,
then the payload (one :func:`jaxpop.encoding.encode` value). :func:`read_frames` returns
the good frames of a file and decides what a bad one means, by the rules of SQLite's and
LevelDB's log recovery: damage is a *torn tail* (a write the process or machine never
finished, so never acknowledged) only where it really ends the newest file; anything
else is corruption, reported with the file and offset and never repaired.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from jaxpop import encoding

__all__ = [
    "MAX_RECORD_BYTES",
    "CorruptLogError",
    "Frame",
    "TornRecordWarning",
    "TornTail",
    "frame",
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


def _good_frame_after(data: bytes, offset: int) -> bool:
    """Whether the bad frame at ``offset`` is followed by what a torn write cannot leave
    behind: good frames, found either way below.

    * A chain of good frames from some later position to the end of the file (or to
      zero bytes only). A chain, not one frame: a torn record's own payload may hold
      bytes that look like a frame (parameters that contain a jaxpop encoding), but the
      rest of that payload does not go on as frames to the end.
    * The bad frame's own checksum matching its bytes up to a later good frame or to the
      end of the file: that record was written whole and only its length field is
      damaged (the records after it may end in a torn write of their own). A torn
      record's checksum is that of bytes never written in full, so its prefix matches
      it only by a 1-in-2**32 chance.

    Candidates are found by the encoding header every payload starts with, so this is a
    fast scan; if a hostile file makes it check more than a few times its size, it gives
    up and answers ``True`` (report corruption rather than drop data).
    """
    budget = 8 * len(data) + (1 << 20)
    payload = offset + _HEADER.size
    # the damaged frame's checksum, if it has a header and a payload that starts as one
    whole = len(data) > payload and data.startswith(_PAYLOAD_START, payload)
    crc = _HEADER.unpack_from(data, offset)[1] if whole else 0
    running, done = 0, payload  # the CRC-32 of data[payload:done]
    position = payload + 1
    while (found := data.find(_PAYLOAD_START, position)) != -1:
        start = found - _HEADER.size
        position = found + 1
        if start <= offset:
            continue
        if whole and start > payload:  # does the damaged frame end here, whole?
            running, done = zlib.crc32(data[done:start], running), start
            if running == crc and _check(data, start)[1] is None:
                return True
        while start < len(data):  # follow the chain from this candidate
            end, bad = _check(data, start)
            budget -= min(end, len(data)) - start
            if budget < 0:
                return True
            if bad is not None:
                break
            start = end
        if start >= len(data) or not any(data[start:]):
            return True
    if whole:  # the last record, whole, with a damaged length (zeros may follow it)
        running = zlib.crc32(data[done:], running)
        content = len(data.rstrip(b"\0"))
        return running == crc or (payload < content and zlib.crc32(data[payload:content]) == crc)
    return False


def _ends_file(data: bytes, end: int) -> bool:
    """Whether a bad frame claiming to end at ``end`` ends the file, as a write cut short.

    It reaches (or claims to run past) the end of the file, or only zero bytes follow it
    (a file system may extend a file with zeros in a crash).
    """
    return end >= len(data) or not any(data[end:])


def read_frames(path: str, *, newest: bool) -> tuple[list[Frame], TornTail | None]:
    """The good frames of ``path``, in order, and its torn tail if it has one.

    Reads only: a caller that may change the file cuts a torn tail off itself, once
    everything else was found good.

    Args:
      path: the file.
      newest: whether ``path`` is the newest journal segment, the only file that may end
        in a torn write (see the module docstring).

    Raises:
      CorruptLogError: any other bad frame, naming the file, the offset and the damage.
    """
    try:
        with open(path, "rb") as f:
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
            if _good_frame_after(data, offset):
                raise CorruptLogError(
                    f"{path} is corrupt: {bad} at offset {offset}, with good records after "
                    "it (a damaged record, not a torn write)"
                )
            return frames, TornTail(offset, bad)
        where = "" if newest else " (only the newest journal segment may end in a torn write)"
        raise CorruptLogError(f"{path} is corrupt: {bad} at offset {offset}{where}")
    return frames, None
