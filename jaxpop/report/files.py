"""Report files: everything ``jaxpop report LOGDIR`` writes, beside the run, never in it."""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from jaxpop.mutators.base import caller_stacklevel
from jaxpop.report.data import Report, _numeric_of, load, numeric_hparams
from jaxpop.report.plots import plot_hparams, plot_lineage, plot_scores
from jaxpop.report.tables import summary, write_csv
from jaxpop.storage.atomic import missing_dirs, remove_dirs, write_all_atomic

if TYPE_CHECKING:
    pass

#: A magnitude past which matplotlib's axis layout may overflow (a span of two values of
#: opposite signs near a float's largest, 1.8e308, is no float)
_NEAR_FLOAT_LIMIT = 1e300


# -- files ----------------------------------------------------------------------------
def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory + os.sep)


def default_out_dir(run_dir: str) -> str:
    """Where ``jaxpop report`` writes by default: ``<run dir>-report``, beside the run
    (``.`` or ``..`` named by its absolute path: ``.-report`` would lie inside it)."""
    path = os.path.normpath(run_dir)
    if os.path.basename(path) in (os.curdir, os.pardir):
        path = os.path.abspath(path)
    return path + "-report"


#: the most hyperparameters ``hparams.png`` shows: a panel each, past a few dozen the
#: figure is too tall to read, and slow to draw (300 took 107 s and 915 MB)
MAX_HPARAM_PANELS = 24


def report_hparams(report: Report) -> list[str]:
    """The hyperparameters :func:`write_report` draws in ``hparams.png``: every one of
    ``report.hparam_names`` when they are at most :data:`MAX_HPARAM_PANELS`; else that
    many, those that took more than one value in the run first (in the run's order), with
    a ``RuntimeWarning`` saying how many were left out (``plot_hparams(report, names)``
    draws any).
    """
    names = list(report.hparam_names)
    if len(names) <= MAX_HPARAM_PANELS:
        return names
    history = report.history
    values = [_numeric_of(report, history.first(g).meta_params) for g in history]
    first: dict[str, float] = {}
    varying = set()
    for numbers in values:
        for name, number in numbers.items():
            seen = first.setdefault(name, number)
            if not (seen == number or (seen != seen and number != number)):
                varying.add(name)
    chosen = [n for n in names if n in varying] + [n for n in names if n not in varying]
    chosen = chosen[:MAX_HPARAM_PANELS]
    warnings.warn(
        f"hparams.png shows {MAX_HPARAM_PANELS} of the run's {len(names)} numeric "
        "hyperparameters (those that changed first); history.csv holds them all, and "
        "jaxpop.report.plot_hparams(report, names) draws any",
        RuntimeWarning,
        stacklevel=caller_stacklevel(),
    )
    return [n for n in names if n in chosen]


def write_report(
    log_dir: str | os.PathLike | Report,
    out_dir: str | os.PathLike | None = None,
    *,
    log_scale: bool = False,
) -> dict[str, str]:
    """Writes ``history.csv``, ``summary.json``, ``hparams.png``, ``scores.png`` and
    ``lineage.png`` into ``out_dir``; returns ``{file name: path}``.

    A plot matplotlib cannot draw (values whose range is past a float's, near
    +-1.8e308) is left out with a ``RuntimeWarning``; the data files are always written.
    (A plot that fails without such values raises: no known limit explains it.)

    ``log_dir`` is a run directory (or its parent, see :func:`find_run_dir`) or an
    already loaded :class:`Report`. ``out_dir`` defaults to :func:`default_out_dir`
    and is created if needed; it may not lie inside the run's directory, which is never
    written to. The files are written to temporary names and renamed into place, all
    or none (:func:`jaxpop.storage.atomic.write_all_atomic`): a write that fails (a
    full disk) leaves the folder as it was (a folder made for it is removed again) and its
    ``OSError`` names the file.
    """
    report = log_dir if isinstance(log_dir, Report) else load(log_dir)
    if out_dir is None:
        if not report.log_dir:
            raise ValueError("out_dir is required for a report built from a state")
        out_dir = default_out_dir(report.log_dir)
    out_dir = os.fspath(out_dir)
    if report.log_dir and _inside(out_dir, report.log_dir):
        raise ValueError(
            f"out_dir {out_dir} lies inside the run's directory {report.log_dir}; the "
            "report never writes there: choose another out_dir"
        )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):  # (before any drawing)
        raise NotADirectoryError(
            f"out_dir {out_dir} is a file: the report writes its files into a folder"
        )
    contents: dict[str, bytes] = {}
    text = io.StringIO()
    write_csv(report.history, text)
    contents["history.csv"] = text.getvalue().encode()
    contents["summary.json"] = (
        json.dumps(summary(report), indent=2, allow_nan=False) + "\n"
    ).encode()
    undrawn = []
    for name, make in (
        ("hparams.png", lambda: plot_hparams(report, report_hparams(report))),
        ("scores.png", lambda: plot_scores(report, log_scale=log_scale)),
        ("lineage.png", lambda: plot_lineage(report)),
    ):
        buffer = io.BytesIO()
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # (said below if it fails)
                make().savefig(buffer, format="png", dpi=110)
        except (ValueError, OverflowError) as error:
            # matplotlib cannot lay out an axis whose span is past a float (values near
            # +-1.8e308): the data files are written, the plot is not; a failure with
            # no such value is no known limit of matplotlib's, and is not hidden
            if not _near_float_limit(report):
                raise
            warnings.warn(
                f"{name} was not drawn: matplotlib failed ({type(error).__name__}: {error}), "
                "as it does for values whose range is past a float's (near +-1.8e308); "
                "history.csv and summary.json hold the data",
                RuntimeWarning,
                stacklevel=2,
            )
            undrawn.append(name)
            continue
        contents[name] = buffer.getvalue()
    # all the files or none (a full disk leaves the earlier report as it was, and no
    # folder made for it)
    written = {name: os.path.join(out_dir, name) for name in contents}
    missing = missing_dirs(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        write_all_atomic({written[name]: data for name, data in contents.items()})
    except BaseException:
        remove_dirs(missing)
        raise
    for name in undrawn:  # an earlier report's plot is not this run's
        stale = os.path.join(out_dir, name)
        if os.path.exists(stale):
            os.remove(stale)
    return written


def _near_float_limit(report: Report) -> bool:
    """Whether a value or a numeric hyperparameter of the run has a finite magnitude
    past :data:`_NEAR_FLOAT_LIMIT`."""
    history = report.history
    values = [c.value for c in history.checkpoints() if c.value is not None]
    for generation_id in history:
        values += numeric_hparams(history.first(generation_id).meta_params).values()
    return any(math.isfinite(v) and abs(v) > _NEAR_FLOAT_LIMIT for v in values)
