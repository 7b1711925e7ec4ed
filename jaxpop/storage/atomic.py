"""Writing a whole file atomically and durably: readers see the old file or the new one."""

from __future__ import annotations

import contextlib
import os
import uuid

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, data: bytes, *, dir_fd: int | None = None) -> None:
    """Replaces ``path`` with ``data``: never a part of it, even after a crash.

    Writes a temporary file with a unique name in the same directory, flushes it to
    disk, renames it over ``path`` and flushes the directory. If anything fails, the
    temporary file is removed and ``path`` is left as it was. ``dir_fd``: ``path`` is a
    file name in the directory this descriptor opened.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> write_atomic(path, b"{}")
    >>> open(path, "rb").read()
    b'{}'
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        with open(os.open(tmp, flags, 0o644, dir_fd=dir_fd), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp, dir_fd=dir_fd)
        raise
    if dir_fd is not None:
        os.fsync(dir_fd)
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
