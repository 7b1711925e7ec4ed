"""What a population did, from its durable history: data, plots, tables, files.

:func:`load` reads a run's ``log_dir`` (no lock, no writes: safe while it runs) and
:func:`build` makes a :class:`Report` (members, the best member, exploit events); pure
functions turn it into series, CSV rows and a summary; :func:`plot_hparams`,
:func:`plot_scores` and :func:`plot_lineage` draw matplotlib figures;
:func:`write_report` and :func:`watch` are ``jaxpop report LOGDIR [--watch]``. The
modules: :mod:`~jaxpop.report.data`, :mod:`~jaxpop.report.tables`,
:mod:`~jaxpop.report.plots`, :mod:`~jaxpop.report.files`, :mod:`~jaxpop.report.watch`;
everything public is importable from here. ``docs/report.md`` defines members, scores
and the best member, and lists what the command writes.
"""

from jaxpop.report.data import (
    Member,
    NotARunError,
    Report,
    Series,
    SeveralRunsError,
    best_series,
    build,
    find_run_dir,
    flatten_hparams,
    load,
    member_series,
    numeric_hparams,
)
from jaxpop.report.files import MAX_HPARAM_PANELS, default_out_dir, report_hparams, write_report
from jaxpop.report.plots import plot_hparams, plot_lineage, plot_scores
from jaxpop.report.tables import (
    CSV_COLUMNS,
    format_summary,
    history_rows,
    print_summary,
    summary,
    summary_renderable,
    write_csv,
)
from jaxpop.report.watch import Refresh, WatchInterrupted, fingerprint, is_done, watch

__all__ = [
    "CSV_COLUMNS",
    "MAX_HPARAM_PANELS",
    "Member",
    "NotARunError",
    "Report",
    "Refresh",
    "Series",
    "SeveralRunsError",
    "best_series",
    "build",
    "default_out_dir",
    "find_run_dir",
    "fingerprint",
    "flatten_hparams",
    "format_summary",
    "history_rows",
    "is_done",
    "load",
    "member_series",
    "numeric_hparams",
    "plot_hparams",
    "plot_lineage",
    "plot_scores",
    "print_summary",
    "report_hparams",
    "summary",
    "summary_renderable",
    "WatchInterrupted",
    "watch",
    "write_csv",
    "write_report",
]
