"""What a population did, from its durable history: data, plots, tables, files.

A functional core and a thin plotting shell. :func:`load` reads a run's ``log_dir``
with :func:`jaxpop.storage.read_state` -- no lock, no writes, safe while the run is
live -- and :func:`build` turns the state into a :class:`Report`: one :class:`Member`
per worker, the best member, the exploit events. Pure functions turn a report into
plotted series (:func:`member_series`, :func:`best_series`), CSV rows
(:func:`history_rows`) and a JSON-ready summary (:func:`summary`). The plotting
functions (:func:`plot_hparams`, :func:`plot_scores`, :func:`plot_lineage`) draw those
series into matplotlib ``Figure`` objects, rendered with the Agg canvas (no display,
no change to pyplot's global backend); matplotlib is imported only when they run.
:func:`write_report` writes everything ``jaxpop report LOGDIR`` writes; :func:`watch`
keeps it up to date while the run goes on (``jaxpop report LOGDIR --watch``).

Definitions.

* A *member* is a worker's trajectory. The history does not record worker ids, so a
  member is the lineage (``parent`` links back to a root) ending at the worker's
  current position: the newest checkpoint of its current generation. There are as
  many members as workers; members that copied the same checkpoint share its past.
* A member's *score* is its latest evaluated checkpoint along that lineage (so a worker
  that just copied a checkpoint is scored by the checkpoint it copied).
* The *best member* has the best score: the lowest, or the highest in a run whose
  mutator has ``mode="max"`` (``History.mode``, recorded with the run). NaN and
  infinite scores rank last; ties go to the lower worker id. The *best lineage* is
  ``history.lineage`` of its scored checkpoint.
* An *exploit event* is a generation whose first checkpoint's parent lies in another
  generation (:func:`jaxpop.mutators.exploit_events`).
* *Hyperparameters* are the leaves of ``meta_params`` flattened with dotted keys
  (``{"opt": {"lr": 0.1}}`` -> ``"opt.lr"``); the plotted ones are the numeric ones.

Plotted artists carry a ``gid`` so notebooks and tests can find them: ``"member-<w>"``
for worker ``w``'s line, ``"best-lineage"``, ``"exploits"`` and ``"all-checkpoints"``.

The package's modules: :mod:`~jaxpop.report.data` (loading, members, series),
:mod:`~jaxpop.report.tables` (CSV rows, the summary), :mod:`~jaxpop.report.plots` and
:mod:`~jaxpop.report.files` (what ``jaxpop report`` writes), :mod:`~jaxpop.report.watch`
(the live view); everything public is
importable from ``jaxpop.report``.
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
from jaxpop.report.files import default_out_dir, write_report
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
from jaxpop.report.watch import Refresh, fingerprint, is_done, watch

__all__ = [
    "CSV_COLUMNS",
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
    "summary",
    "summary_renderable",
    "watch",
    "write_csv",
    "write_report",
]
