"""Fault injection for storage tests: an ``os`` stand-in that fails chosen calls.

``FaultyOS`` replaces the ``os`` module inside :mod:`jaxpop.storage.store` (and only
there, so pytest and the rest of the process are untouched). It behaves as ``os``
except for the calls a test arms: a disk that fills up after a number of bytes (writes
past it are cut short, then fail with ``ENOSPC``), or any named call failing at its
n-th use from now on.
"""

from __future__ import annotations

import errno
import os
from typing import Any


class FaultyOS:
    def __init__(self) -> None:
        self.space: int | None = None  # bytes left on the "disk"; None: unlimited
        # name -> [calls to let through, failures left (None: all), errno, exception type]
        self._armed: dict[str, list] = {}
        self.failures: list[str] = []
        self.synced: list[int] = []  # descriptors fdatasync-ed

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fail(
        self,
        name: str,
        *,
        after: int = 0,
        times: int | None = None,
        code: int = errno.EIO,
        error: type[BaseException] | None = None,
    ) -> None:
        """Makes ``os.<name>`` fail from its ``after + 1``-th call on, ``times`` times or always.

        It raises ``OSError(code)``, or ``error()`` if given (e.g. ``KeyboardInterrupt``).
        """
        self._armed[name] = [after, times, code, error]

    def heal(self) -> None:
        """No more failures; unlimited space."""
        self._armed.clear()
        self.space = None

    def _maybe_fail(self, name: str) -> None:
        armed = self._armed.get(name)
        if armed is None:
            return
        if armed[0] > 0:
            armed[0] -= 1
            return
        if armed[1] is not None:
            armed[1] -= 1
            if armed[1] == 0:
                del self._armed[name]
        self.failures.append(name)
        if armed[3] is not None:
            raise armed[3]()
        raise OSError(armed[2], f"{os.strerror(armed[2])} (injected into os.{name})")

    def write(self, fd: int, data: Any) -> int:
        self._maybe_fail("write")
        if self.space is not None:
            if self.space == 0:
                self.failures.append("write")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = bytes(data)[: self.space]  # a short write, as when the disk fills up
            self.space -= len(data)
        return os.write(fd, data)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        self._maybe_fail("open")
        return os.open(path, flags, mode, **kw)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("fsync")
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._maybe_fail("fdatasync")
        self.synced.append(fd)
        os.fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._maybe_fail("ftruncate")
        os.ftruncate(fd, length)

    def replace(self, src: Any, dst: Any, **kw: Any) -> None:
        self._maybe_fail("replace")
        os.replace(src, dst, **kw)
