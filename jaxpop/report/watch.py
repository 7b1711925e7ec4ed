"""A live view: re-read a running population every few seconds and refresh its report.

:func:`watch` is the loop behind ``jaxpop report LOGDIR --watch``: it reads the run with
:func:`~jaxpop.report.load` (no lock, no writes: the run is never disturbed), rewrites
the report files whenever something changed, and calls back with each read, until the
run is over (:func:`is_done`), ``max_iterations`` reads have been made, or the caller
interrupts it (Ctrl-C). The files are rewritten at most every ``write_every`` seconds
(drawing the plots takes about a second) and once more at the end. No service is
involved: everything is the run's own files.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from jaxpop.core import PopulationState
from jaxpop.mutators.base import is_finite
from jaxpop.report.data import NotARunError, Report, SeveralRunsError, load
from jaxpop.report.files import write_report

__all__ = ["Refresh", "WatchInterrupted", "fingerprint", "is_done", "watch"]


class Refresh(NamedTuple):
    """One read of a watched run.

    Attributes:
      iteration: how many reads so far (1 for the first).
      report: what was read (``None`` while the run is not there yet).
      changed: whether it differs from the previous read.
      done: whether the run is over (:func:`is_done`); the last refresh.
      waiting: why there is no report yet (``None`` once there is one).
      written: the files rewritten this time (``{}``: none, the run did not change or
        they were rewritten less than ``write_every`` seconds ago).
    """

    iteration: int
    report: Report | None
    changed: bool
    done: bool
    waiting: str | None
    written: dict[str, str]


class WatchInterrupted(KeyboardInterrupt):
    """The ``KeyboardInterrupt`` (Ctrl-C) that ended a :func:`watch`, with the newest
    report it read as :attr:`report` (``None`` if none): an interrupt while the files
    are written, or before the ``on_refresh`` callback saw the read, leaves them behind
    that read. Caught by ``except KeyboardInterrupt`` as any Ctrl-C."""

    def __init__(self, report: Report | None):
        super().__init__()
        self.report = report


MAX_INTERVAL_S = 7 * 24 * 3600  #: the longest ``interval`` between two reads


def is_done(state: PopulationState) -> bool:
    """Whether a run is over: it has workers and none is active (each finished or gone),
    as :attr:`jaxpop.PopulationController.done` says."""
    return bool(state.workers) and not any(w.is_active for w in state.workers)


def fingerprint(report: Report) -> tuple[Any, ...]:
    """What changes whenever the run records anything, and tells two runs apart: ``(run
    dir, root key, events, checkpoints, time, latest)``: ``time`` the time the newest of
    the workers' latest checkpoints was recorded, ``latest`` each worker's latest
    checkpoint (generation, step, value). Another run that replaced the run in the same
    folder differs by its key, its values or its times, even at as many events (runs
    of one seed on a fixed clock were taken for one: the files kept the first).
    O(population), not O(history)."""
    history = report.history
    latest = [
        history.latest(w.generation_id) for w in report.state.workers if w.generation_id in history
    ]
    times = [c.time for c in latest]
    newest = max(times) if times else None
    # (a NaN value compared equal to itself: a run holding one is not "changed" at each read)
    checkpoints = tuple(
        (c.generation_id, c.step, "nan" if c.value != c.value else c.value) for c in latest
    )
    state = report.state
    return (
        report.log_dir,
        state.key.tobytes(),
        state.num_events,
        history.num_checkpoints,
        newest,
        checkpoints,
    )


def _write_before_raising(
    error: Exception, last: Report, out_dir: str | os.PathLike | None, log_scale: bool, due: bool
) -> None:
    """As a watch ends by ``error``: writes ``last``'s report if ``due`` (the files hold
    an older read), and notes on ``error`` (``__notes__``) which event the files hold, or
    why they could not be written."""
    note = f"the report files hold the run as of its event {last.state.num_events}"
    try:
        if due:
            write_report(last, out_dir, log_scale=log_scale)
    except Exception as write_error:  # (the read's error is the one to raise)
        note = f"writing the newest report read failed too: {type(write_error).__name__}: "
        note += str(write_error)
    _add_note(error, note)


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)`` (Python 3.10 has no add_note: the attribute it writes,
    which the CLI prints)."""
    error.__notes__ = [*getattr(error, "__notes__", ()), note]  # type: ignore[attr-defined]


def watch(
    log_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    interval: float = 2.0,
    write_every: float | None = None,
    max_iterations: int | None = None,
    log_scale: bool = False,
    on_refresh: Callable[[Refresh], None] | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Report | None:
    """Re-reads the run at ``log_dir`` every ``interval`` seconds and keeps its report
    up to date in ``out_dir`` (see :func:`~jaxpop.report.write_report`).

    While the directory holds no run yet (missing, empty, not written yet) it waits for
    one. Each read calls ``on_refresh`` with a :class:`Refresh`. The files (plots take
    a second or so to draw) are rewritten when the run changed (:func:`fingerprint`),
    at most every ``write_every`` seconds (default: ``max(interval, 10)``), and always
    after the last read: they then hold the newest report read, even if the run was
    gone at that last read (a folder moved away). ``sleep`` and ``clock`` default to
    ``time.sleep`` and ``time.monotonic``. Returns the newest report read (``None`` if
    none) once the run is over, or after ``max_iterations`` reads. A
    ``KeyboardInterrupt`` (Ctrl-C) propagates to the caller as a
    :class:`WatchInterrupted`, which holds the newest report read: the files may hold
    an older one, for the caller to write as ``jaxpop report --watch`` does (a subclass
    of ``KeyboardInterrupt`` that ``on_refresh`` or ``sleep`` raises propagates as it
    is). A read that raises (below) ends the watch too: the files first take the newest
    report read, if they do not hold it yet.

    Raises:
      TypeError: ``interval`` or ``write_every`` is not a number (a bool included), or
        ``max_iterations`` not a whole number.
      ValueError: ``interval`` is not positive, ``write_every`` or ``max_iterations``
        is negative; or ``out_dir`` lies inside the run (see
        :func:`~jaxpop.report.write_report`).
      SeveralRunsError: ``log_dir`` holds several runs.
      jaxpop.storage.CorruptLogError: a file of the run is damaged.
      ImportError: matplotlib is missing (the plots need it).
    """
    for name, value in (("interval", interval), ("write_every", write_every)):
        if isinstance(value, bool) or not (
            isinstance(value, numbers.Real) or (value is None and name == "write_every")
        ):
            raise TypeError(f"{name} must be a number of seconds, got {value!r:.40}")
    if max_iterations is not None:  # (2.5 made 3 reads, True one, NaN never stopped)
        whole = isinstance(max_iterations, numbers.Real) and not isinstance(max_iterations, bool)
        if not whole or not is_finite(max_iterations) or max_iterations != int(max_iterations):
            raise TypeError(
                f"max_iterations must be a whole number or None, got {max_iterations!r:.40}"
            )
        max_iterations = int(max_iterations)
    if not 0 < interval <= MAX_INTERVAL_S:  # (time.sleep overflows on inf or 1e300)
        raise ValueError(
            f"interval must be a positive number of seconds, at most {MAX_INTERVAL_S} (a "
            f"week), got {interval!r}"
        )
    write_every = max(interval, 10.0) if write_every is None else write_every
    if not write_every >= 0:
        raise ValueError(f"write_every must be >= 0 seconds, got {write_every!r}")
    if max_iterations is not None and max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0 (0: no limit), got {max_iterations!r}")
    sleep = time.sleep if sleep is None else sleep
    clock = time.monotonic if clock is None else clock
    newest: list[Report | None] = [None]  # the newest report read, for an interrupt
    try:
        return _watch(
            log_dir,
            out_dir,
            interval,
            write_every,
            max_iterations,
            log_scale,
            on_refresh,
            sleep,
            clock,
            newest,
        )
    except KeyboardInterrupt as interrupt:
        if type(interrupt) is not KeyboardInterrupt:  # (a caller's own kind: theirs)
            raise
        raise WatchInterrupted(newest[0]) from interrupt


def _watch(
    log_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    interval: float,
    write_every: float,
    max_iterations: int | None,
    log_scale: bool,
    on_refresh: Callable[[Refresh], None] | None,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    newest: list[Report | None],
) -> Report | None:
    """:func:`watch`'s loop, its arguments checked; ``newest[0]``: the newest report
    read, kept up to date for an interrupt."""
    last: Report | None = None
    last_seen = seen = written_seen = None  # fingerprints: the newest read, this read's
    written_at = -math.inf
    written_events: int | None = None  # the event of the read the files hold
    iteration = 0
    while True:
        iteration += 1
        waiting, written, changed, done = None, {}, False, False
        try:
            data = load(log_dir)
        except Exception as e:
            if isinstance(e, (FileNotFoundError, NotARunError)) and not isinstance(
                e, SeveralRunsError
            ):  # not there yet: wait for it
                data, waiting = None, str(e)
            else:  # the watch ends here: the files first take the newest report read
                if last is not None:
                    _write_before_raising(e, last, out_dir, log_scale, last_seen != written_seen)
                raise
        final = max_iterations is not None and 0 < max_iterations <= iteration
        if data is not None:
            now_seen = fingerprint(data)
            last, last_seen, done = data, now_seen, is_done(data.state)
            newest[0] = last
            changed, seen = now_seen != seen, now_seen
        else:  # (a run read before and gone now has changed too)
            changed, seen = seen is not None, None
        # the newest report read, if the files do not hold it: at the end (even when the
        # run is gone at that read), else when read and write_every has passed
        due = done or final or (data is not None and clock() - written_at >= write_every)
        if due and last is not None and last_seen != written_seen:
            try:
                written = write_report(last, out_dir, log_scale=log_scale)
            except Exception as e:  # (a full disk: the files are whole, but of which read?)
                held = "none of this watch's reads"
                if written_events is not None:
                    held = f"the run as of its event {written_events}"
                failed = f"writing its event {last.state.num_events} failed"
                _add_note(e, f"the report files hold {held} ({failed})")
                raise
            written_seen, written_at = last_seen, clock()
            written_events = last.state.num_events
        if on_refresh is not None:
            on_refresh(Refresh(iteration, data, changed, done, waiting, written))
        if done or final:
            return last
        sleep(interval)
