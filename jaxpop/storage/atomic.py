"""Writing a whole file atomically and durably (readers see the old file or the new one),
flushing a finished folder to disk, and undoing the folders a failed write made."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Mapping

__all__ = [
    "missing_dirs",
    "remove_dirs",
    "sync_dir",
    "sync_tree",
    "write_all_atomic",
    "write_atomic",
]


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
    tmp = _write_temporary(path, data, dir_fd=dir_fd)
    try:
        os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp, dir_fd=dir_fd)
        raise
    if dir_fd is not None:
        os.fsync(dir_fd)
        return
    sync_dir(os.path.dirname(path) or ".")


def write_all_atomic(files: Mapping[str, bytes]) -> None:
    """Replaces each ``path`` in ``files`` with its data, as :func:`write_atomic` does,
    and all of them or none: every file is written to a temporary name and flushed
    first; if one of those writes fails (a full disk), or a path is a folder, every
    temporary file is removed, every path is left as it was, and the ``OSError`` names
    the file. Then all are renamed into place and their folders flushed (a crash, or a
    rename that fails for another reason, say a file busy on some systems, may leave
    some renamed: each file whole).

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_all_atomic({os.path.join(folder, n): b"1" for n in ("a", "b")})
    >>> sorted(os.listdir(folder))
    ['a', 'b']
    """
    written: list[tuple[str, str]] = []  # (temporary, path)
    try:
        for path, data in files.items():
            if os.path.isdir(path):  # (found before anything is renamed)
                raise IsADirectoryError(errno.EISDIR, "a folder is in the way", path)
            try:
                written.append((_write_temporary(path, data), path))
            except OSError as error:
                raise OSError(error.errno, error.strerror, path) from error
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise
    for folder in dict.fromkeys(os.path.dirname(path) or "." for path in files):
        sync_dir(folder)


def _write_temporary(path: str, data: bytes, *, dir_fd: int | None = None) -> str:
    """Writes ``data`` to a new temporary file beside ``path`` and flushes it; returns its
    name (removed again if the write fails)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        with open(os.open(tmp, flags, 0o644, dir_fd=dir_fd), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp, dir_fd=dir_fd)
        raise
    return tmp


def sync_dir(path: str | os.PathLike) -> None:
    """Flushes a folder's entries (the names in it) to disk."""
    _fsync(os.fspath(path), directory=True)


def sync_tree(path: str | os.PathLike) -> None:
    """Flushes a finished folder to disk: every file and folder under ``path``, ``path``
    itself and the folder that holds it (where a rename put it). Raises the first
    ``OSError`` (a folder that cannot be listed included).

    >>> import tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> os.makedirs(os.path.join(folder, "item"))
    >>> write_atomic(os.path.join(folder, "item", "data"), b"x")
    >>> sync_tree(folder)
    """
    path = os.fspath(path)

    def fail(error: OSError) -> None:
        raise error

    for folder, _, files in os.walk(path, onerror=fail):
        for name in files:
            _fsync(os.path.join(folder, name), directory=False)
        sync_dir(folder)  # (its entries: those files and sub-folders)
    sync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync(path: str, *, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def missing_dirs(path: str | os.PathLike) -> list[str]:
    """The folders ``os.makedirs(path)`` would make, as real paths, outermost first: each
    prefix of ``path`` as written (``a/b/../c`` makes ``a``, ``a/b`` and ``a/c``) whose
    real path is not there (``new/../existing`` names ``existing``, which is). Taken
    before a write, for :func:`remove_dirs` to undo them if it fails."""
    prefixes = []
    head = os.fspath(path)
    while head and head not in prefixes:
        prefixes.append(head)
        head = os.path.dirname(head)
    missing = {os.path.realpath(p) for p in prefixes}
    missing = {p for p in missing if not os.path.exists(p)}
    return sorted(missing, key=lambda p: p.count(os.sep))


def remove_dirs(made: list[str]) -> None:
    """Removes the folders :func:`missing_dirs` listed, innermost first, each only if it
    is empty (a folder something else wrote into stays)."""
    for directory in reversed(made):
        with contextlib.suppress(OSError):  # (never made, or not empty)
            os.rmdir(directory)
