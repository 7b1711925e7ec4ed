"""TensorBoard: one event directory per worker, plus one for the population's events.

:class:`TensorBoardWriter` writes one worker's evaluations (``eval/value``,
``eval/<metric>``) and numeric hyperparameters (``hparams/<name>``) as scalars into
``<log_dir>/worker-<id>``, so TensorBoard shows one run per worker.
:class:`TensorBoardLogger` is the :class:`~jaxpop.logging.RunLogger`: a writer per worker
opened on first use, and ``<log_dir>/population`` for the exploits (a running count and
a text line each) and the best member (its value, and its schedule as a text table and
as ``jaxpop.schedules`` JSON).

Writers come from ``tensorboardX`` when it is installed, else from
``flax.metrics.tensorboard`` when TensorFlow is; otherwise creating one raises an
``ImportError`` naming ``pip install tensorboardX``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from jaxpop.core import check_step
from jaxpop.logging.base import (
    BestMember,
    check_worker_id,
    clean_name,
    exploit_record,
    renamed,
    schedule_records,
    table,
    worker_scalars,
)
from jaxpop.mutators import ExploitEvent
from jaxpop.report.data import numeric_hparams
from jaxpop.schedules import tree_equal

__all__ = ["Backend", "TensorBoardLogger", "TensorBoardWriter", "available_backend", "writers"]

Backend = Literal["auto", "tensorboardX", "flax"]

_log = logging.getLogger("jaxpop")
_INSTALL_HINT = (
    "jaxpop's TensorBoard hook needs a TensorBoard writer: pip install tensorboardX "
    "(or install tensorflow to use flax.metrics.tensorboard)"
)


class _TensorBoardXWriter:
    """An event file in tensorboardX's format, written in the calling thread.

    (``tensorboardX.SummaryWriter`` writes from a thread of its own: when a write fails
    there -- a full disk -- that thread dies, its queue fills and the next call blocks
    for good, the training loop with it.) Each record goes to the OS as it is written
    (unbuffered: a killed process loses none of it); :meth:`close` also syncs it to
    disk. A failed write raises here, and the file is cut back to its last whole
    record (TensorBoard stops reading a file at a torn record, and what follows must
    not be lost with it), so the next write goes on in the same file: a full disk
    leaves one file, not one per failed call. Only where the cut fails does the next
    write start a new event file.

    The file is made here, its version record written if the disk takes it: if not,
    the writer is kept all the same and its first write starts it again (a writer not
    made at a full disk left an empty file per call)."""

    def __init__(self, path: str):
        self._path = path
        self._file: io.FileIO | None = None
        self._size = 0  # bytes of the file's whole records
        self._open()
        with contextlib.suppress(OSError):  # (raised by the first write, made next)
            self._append(_version_event())

    def _open(self) -> None:
        # a suffix of its own: another writer on this directory (a restarted worker,
        # another process, this one after a failed write) started in the same second
        # must not reuse the file name
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
            f".{os.getpid()}.{secrets.token_hex(3)}"
        )
        self._file = open(os.path.join(self._path, name), "xb", buffering=0)  # noqa: SIM115
        self._size = 0

    def _write(self, event: Any) -> None:
        if self._file is None:  # the last write failed, and so did cutting its record
            self._open()
        if self._size == 0:  # a new file, or its first record failed: it starts again
            self._append(_version_event())
        self._append(event)

    def _append(self, event: Any) -> None:
        file = self._file
        assert file is not None
        record = _record(event.SerializeToString())
        try:
            done = 0
            while done < len(record):  # (a write may take part: a full disk the rest)
                written = file.write(memoryview(record)[done:])
                if not written:
                    raise OSError(errno.EIO, f"no byte written to {file.name}")
                done += written
        except BaseException:
            self._cut()
            raise
        self._size += len(record)

    def _cut(self) -> None:
        """Cuts the file back to its whole records after a failed write, or, failing
        that, forgets it (closing it as far as it can)."""
        try:
            assert self._file is not None
            os.ftruncate(self._file.fileno(), self._size)
            self._file.seek(self._size)
        except OSError:
            self._drop()

    def _event(self, summary: Any, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self._write(Event(summary=summary, wall_time=time.time(), step=step))

    def _drop(self) -> None:
        """Forgets the current event file after a failure (closing it as far as it can)."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        self._event(Summary(value=[Summary.Value(tag=tag, simple_value=value)]), step)

    def text(self, tag: str, text: str, step: int) -> None:
        from tensorboardX.summary import text as text_summary

        summary = text_summary(tag, text)
        summary.value[0].tag = tag  # (not tensorboardX's "<tag>/text_summary": flax's tag)
        self._event(summary, step)

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except BaseException:
                self._drop()
                raise

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.flush()
                os.fsync(file.fileno())
            finally:
                file.close()


def _version_event() -> Any:
    """The event that starts every event file."""
    from tensorboardX.proto.event_pb2 import Event

    return Event(wall_time=time.time(), file_version="brain.Event:2")


def _record(data: bytes) -> bytes:
    """``data`` framed as a TFRecord: its length, the length's masked CRC, the data and
    its masked CRC (what TensorBoard reads)."""
    from tensorboardX.record_writer import masked_crc32c

    header = struct.pack("<Q", len(data))
    crc = struct.pack("<I", masked_crc32c(header))
    return header + crc + data + struct.pack("<I", masked_crc32c(data))


_INVALID_TAG_CHARACTERS = re.compile(r"[^-/\w.]")


def _clean_tag(tag: str) -> str:
    """``tag`` as TensorBoard cleans it: a character other than letters, digits,
    ``_ - . /`` as ``_``, no leading ``/``."""
    return _INVALID_TAG_CHARACTERS.sub("_", tag).lstrip("/")


def _tag(name: str) -> str:
    """``name`` as a TensorBoard tag: itself if valid, else cleaned and ending in a hash
    of it (:func:`~jaxpop.logging.base.clean_name`)."""
    return clean_name(name, _clean_tag)


def _clean_tags(scalars: Mapping[str, float]) -> dict[str, float]:
    """``scalars`` under their tags (:func:`_tag`)."""
    return renamed(scalars, _tag)


def _float32(value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _float32_changes(value: float) -> bool:
    """Whether TensorBoard's 32-bit float shows ``value`` as another number entirely: a
    finite value as an infinity, a non-zero one as 0, an integer as another integer
    (rounding a fraction is no change). An int is taken as the float it is written as."""
    value = float(value)  # (int.is_integer exists only from Python 3.12)
    shown = _float32(value)
    if not math.isfinite(value) or shown == value:
        return False
    return math.isinf(shown) or shown == 0.0 or (value.is_integer() and abs(value) <= 2**53)


class _FlaxWriter:
    def __init__(self, path: str):
        from flax.metrics.tensorboard import SummaryWriter

        self._writer = SummaryWriter(path, auto_flush=False)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self._writer.text(tag, text, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _importable(backend: str) -> bool:
    try:
        if backend == "tensorboardX":
            import tensorboardX  # noqa: F401
        else:
            import flax.metrics.tensorboard  # noqa: F401  (imports tensorflow)
    except ImportError:
        return False
    return True


def available_backend(backend: Backend = "auto") -> Backend:
    """The writer library to use: ``"tensorboardX"`` or ``"flax"``.

    ``"auto"`` prefers tensorboardX, then flax (which needs TensorFlow).

    Raises:
      ImportError: the requested library (or, for ``"auto"``, either) is missing; the
        message names ``pip install tensorboardX``.
      ValueError: ``backend`` is not one of ``"auto"``, ``"tensorboardX"``, ``"flax"``.
    """
    if backend not in ("auto", "tensorboardX", "flax"):
        raise ValueError(f'backend must be "auto", "tensorboardX" or "flax", got {backend!r}')
    candidates: tuple[Backend, ...] = ("tensorboardX", "flax") if backend == "auto" else (backend,)
    for candidate in candidates:
        if _importable(candidate):
            return candidate
    raise ImportError(_INSTALL_HINT)


class _EventDir:
    """One TensorBoard event directory: scalars and text, thread-safe, closed once."""

    def __init__(self, path: str, backend: Backend = "auto"):
        self.backend = available_backend(backend)
        self.path = path
        os.makedirs(self.path, exist_ok=True)
        factory = _TensorBoardXWriter if self.backend == "tensorboardX" else _FlaxWriter
        self._writer = factory(self.path)
        self._lock = threading.Lock()
        self._closed = False
        self._warned: set[str] = set()  # tags warned about (float32)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes each ``tag: value`` of ``scalars`` at ``step`` (NaN and inf as they are)
        and hands them to the OS before it returns.

        Tags are cleaned as TensorBoard cleans them (see :func:`_clean_tags`). TensorBoard
        keeps a scalar as a 32-bit float: a value it would show as another number (a
        finite one as inf, a tiny one as 0, an integer as another) is written all the
        same, with a warning (once per tag) on the ``jaxpop`` logger."""
        step = check_step(step)
        with self._lock:
            self._check_open()
            for tag, value in _clean_tags(scalars).items():
                if tag not in self._warned and _float32_changes(value):
                    self._warned.add(tag)
                    _log.warning(
                        "jaxpop: TensorBoard stores %s as a 32-bit float: %r is shown as %r "
                        "(%s; warned once per tag)",
                        tag,
                        value,
                        _float32(value),
                        self.path,
                    )
                self._writer.scalar(tag, value, step)
            self._writer.flush()

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Writes a text summary (markdown) under ``tag`` at ``step`` and hands it to the OS."""
        with self._lock:
            self._check_open()
            self._writer.text(tag, text, check_step(step))
            self._writer.flush()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} ({self.path}) is closed")

    def flush(self) -> None:
        """Hands everything written so far to the OS (each call already has)."""
        with self._lock:
            if not self._closed:
                self._writer.flush()

    def close(self) -> None:
        """Flushes, syncs and closes the event file. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TensorBoardWriter(_EventDir):
    """Writes one worker's evaluations and numeric hyperparameters as TensorBoard scalars.

    Args:
      log_dir: the TensorBoard directory of the whole population (created if missing).
      worker_id: this worker's id; events go to ``<log_dir>/worker-<worker_id>``.
      backend: ``"auto"`` (tensorboardX, else flax with TensorFlow), ``"tensorboardX"``
        or ``"flax"``; see :func:`available_backend`.

    Thread-safe; use one per worker and :meth:`close` it (or use it as a context
    manager) when the worker is done.
    """

    def __init__(self, log_dir: str | os.PathLike, worker_id: int, *, backend: Backend = "auto"):
        self.worker_id = check_worker_id(worker_id)
        super().__init__(os.path.join(os.fspath(log_dir), f"worker-{worker_id}"), backend)

    def log_eval(
        self,
        step: int,
        value: float,
        meta_params: Any = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Writes ``eval/value``, ``eval/<name>`` per metric and ``hparams/<name>`` per
        numeric hyperparameter of ``meta_params``, all at ``step``."""
        self.log_scalars(step, worker_scalars(value, meta_params, metrics))

    def log_hparams(self, step: int, meta_params: Any) -> None:
        """Writes ``hparams/<name>`` per numeric hyperparameter, at ``step`` (for
        example when the worker switches to a new generation)."""
        scalars = {f"hparams/{k}": v for k, v in numeric_hparams(meta_params).items()}
        self.log_scalars(step, scalars)


def writers(
    log_dir: str | os.PathLike, num_workers: int, *, backend: Backend = "auto"
) -> list[TensorBoardWriter]:
    """One :class:`TensorBoardWriter` per worker id in ``range(num_workers)``."""
    return [TensorBoardWriter(log_dir, i, backend=backend) for i in range(num_workers)]


def _markdown(columns: list[str], data: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        text = "" if v is None else f"{v:.5g}" if isinstance(v, float) else str(v)
        # (a "|" would split the cell, a line break end the row: "relu|gelu" in two columns)
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in data]
    return "\n".join(lines)


class TensorBoardLogger:
    """A :class:`~jaxpop.logging.RunLogger` writing TensorBoard event files.

    Args:
      log_dir: the population's TensorBoard directory: workers write to
        ``worker-<id>`` below it (as :class:`TensorBoardWriter`), the population's
        events to ``population``. View with ``tensorboard --logdir LOG_DIR``.
      backend: see :func:`available_backend` (checked here, so a missing library fails
        before training starts).

    What it writes: per worker, the scalars of :meth:`TensorBoardWriter.log_eval`; in
    ``population``, ``exploits/count`` (how many so far, at each exploit's step), a text
    line per exploit under ``exploits`` at the exploit's number (1, 2, ...: its source,
    training step, and the hyperparameters before and after), and at the end
    ``best/value`` and the text ``best/schedule`` (a table and the ``jaxpop.schedules``
    JSON). Thread-safe; picklable (a copy opens its own writers).
    """

    def __init__(self, log_dir: str | os.PathLike, *, backend: Backend = "auto"):
        # (absolute: a pickled copy, in a Ray actor started elsewhere, writes here too)
        self.log_dir = os.path.abspath(os.fspath(log_dir))
        self.backend = available_backend(backend)
        self._writers: dict[int, TensorBoardWriter] = {}
        self._population: _EventDir | None = None
        self._exploits = 0
        self._lock = threading.Lock()
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        return {"log_dir": self.log_dir, "backend": self.backend, "exploits": self._exploits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["log_dir"], backend=state["backend"])  # type: ignore[misc]
        self._exploits = state["exploits"]

    def _writer(self, worker_id: int) -> TensorBoardWriter:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"this TensorBoardLogger ({self.log_dir}) is closed")
            if worker_id not in self._writers:
                self._writers[worker_id] = TensorBoardWriter(
                    self.log_dir, worker_id, backend=self.backend
                )
            return self._writers[worker_id]

    def _population_writer(self) -> _EventDir:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"this TensorBoardLogger ({self.log_dir}) is closed")
            if self._population is None:
                self._population = _EventDir(os.path.join(self.log_dir, "population"), self.backend)
            return self._population

    def log_worker(
        self,
        worker_id: int,
        step: int,
        value: float,
        hparams: Any = None,
        *,
        metrics: Mapping[str, float] | None = None,
        generation_id: str | None = None,
    ) -> None:
        """Writes the worker's scalars at ``step`` (see :meth:`TensorBoardWriter.log_eval`)."""
        self._writer(check_worker_id(worker_id)).log_eval(step, value, hparams, metrics)

    def log_exploit(self, event: ExploitEvent) -> None:
        """Counts the exploit (``exploits/count``) and writes it as a text line."""
        writer = self._population_writer()
        with self._lock:
            self._exploits += 1
            count = self._exploits
        row = exploit_record(event)
        changes = [  # (tree_equal: a NaN that stayed NaN, or an array, did not change)
            f"{k[len('after.') :]}: {row.get('before.' + k[len('after.') :])} -> {v}"
            for k, v in row.items()
            if k.startswith("after.") and not tree_equal(row.get("before." + k[len("after.") :]), v)
        ]
        text = (
            f"generation `{event.generation_id}` copied `{event.source[0]}` at step "
            f"{event.source[1]} (value {event.source_value}); " + ("; ".join(changes) or "same")
        )
        writer.log_scalars(event.step, {"exploits/count": float(count)})
        # (the line at the exploit's number: TensorBoard keeps one record per step and
        # drops those past a step written later; a round's exploits share their step)
        writer.log_text(count, "exploits", text)

    def log_best(self, best: BestMember) -> None:
        """Writes ``best/value`` and the text ``best/schedule`` at the best step."""
        writer = self._population_writer()
        step = best.checkpoint.step
        writer.log_scalars(step, {"best/value": float(best.value)})
        try:
            document = best.schedule.to_json(indent=1)
        except (TypeError, ValueError) as e:
            document = json.dumps({"error": str(e)})
        text = (
            f"best member: worker {best.worker}, generation `{best.checkpoint.generation_id}`, "
            f"step {step}, value {best.value}\n\n"
            + _markdown(*table(schedule_records(best.schedule)))
            + "\n\n```json\n"
            + document
            + "\n```"
        )
        writer.log_text(step, "best/schedule", text)

    def flush(self) -> None:
        """Hands everything written so far to the OS (each call already has)."""
        with self._lock:
            writers = [*self._writers.values(), *([self._population] if self._population else [])]
        for writer in writers:
            writer.flush()

    def close(self) -> None:
        """Closes every event file this logger opened, even when one fails (its error is
        raised after the others are closed). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writers = [*self._writers.values(), *([self._population] if self._population else [])]
        error: Exception | None = None
        for writer in writers:
            try:
                writer.close()
            except Exception as e:  # the others are closed all the same
                error = error or e
        if error is not None:
            raise error
