"""Writing a whole file atomically and durably: readers see the old file or the new one."""

from __future__ import annotations

import contextlib
import os
import uuid

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replaces ``path`` with ``data``: never a part of it, even after a crash.

    Writes a temporary file with a unique name in the same directory, flushes it to
    disk, renames it over ``path`` and flushes the directory. If anything fails, the
    temporary file is removed and ``path`` is left as it was.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> write_atomic(path, b"{}")
    >>> open(path, "rb").read()
    b'{}'
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
