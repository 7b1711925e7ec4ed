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
:func:`write_report` writes everything ``jaxpop report LOGDIR`` writes.

Definitions.

* A *member* is a worker's trajectory. The history does not record worker ids, so a
  member is the lineage (``parent`` links back to a root) ending at the worker's
  current position: the newest checkpoint of its current generation. There are as
  many members as workers; members that copied the same checkpoint share its past.
* A member's *score* is its latest evaluated checkpoint along that lineage (so a worker
  that just copied a checkpoint is scored by the checkpoint it copied).
* The *best member* has the lowest score (NaN and infinite last, ties to the lower
  worker id); the *best lineage* is ``history.lineage`` of its scored checkpoint.
* An *exploit event* is a generation whose first checkpoint's parent lies in another
  generation (:func:`jaxpop.mutators.exploit_events`).
* *Hyperparameters* are the leaves of ``meta_params`` flattened with dotted keys
  (``{"opt": {"lr": 0.1}}`` -> ``"opt.lr"``); the plotted ones are the numeric ones.

Plotted artists carry a ``gid`` so notebooks and tests can find them: ``"member-<w>"``
for worker ``w``'s line, ``"best-lineage"``, ``"exploits"`` and ``"all-checkpoints"``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

import jax
import numpy as np

from jaxpop import storage
from jaxpop.core import PopulationState
from jaxpop.history import History
from jaxpop.mutators import ExploitEvent, exploit_events
from jaxpop.records import Checkpoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CSV_COLUMNS",
    "Member",
    "NotARunError",
    "Report",
    "Series",
    "best_series",
    "build",
    "default_out_dir",
    "find_run_dir",
    "flatten_hparams",
    "format_summary",
    "history_rows",
    "load",
    "member_series",
    "numeric_hparams",
    "plot_hparams",
    "plot_lineage",
    "plot_scores",
    "print_summary",
    "summary",
    "write_csv",
    "write_report",
]

#: The fixed leading columns of ``history.csv``; flattened hyperparameters follow.
CSV_COLUMNS = ("generation_id", "parent_generation", "parent_step", "step", "time", "value")

_RUN_FILE_PREFIXES = (("snapshot-", ".jpsnap"), ("journal-", ".jpjournal"))
_SEARCH_DEPTH = 2  # how far below LOGDIR to look for a run
_MAX_ARRAY_LEAF = 16  # larger arrays in meta_params are not hyperparameter columns
_HIGHLIGHT = "#d62728"
_EXPLOIT_COLOR = "0.55"
_MAX_EXPLOIT_LINES = 40  # more distinct exploit steps than this: a rug, not full lines


class NotARunError(ValueError):
    """A directory that holds no jaxpop run (or several); the message says what to pass."""


# -- locating and loading a run -------------------------------------------------------
def _is_run_dir(path: str) -> bool:
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(n.startswith(p) and n.endswith(s) for n in names for p, s in _RUN_FILE_PREFIXES)


def _subdirs(path: str) -> list[str]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return []
    return [
        e.path for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
    ]


def find_run_dir(path: str | os.PathLike) -> str:
    """The jaxpop run directory ``path`` names: ``path`` itself, or its one run below.

    A run directory holds ``snapshot-*.jpsnap`` (or journal) files: the ``log_dir`` of a
    ``PopulationController``. The CNN examples keep it in ``<log-dir>/population``, so
    a parent directory that holds exactly one run (within two levels) names that run.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      NotADirectoryError: ``path`` is a file.
      NotARunError: ``path`` is empty, holds no run, or holds several.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: pass the log_dir of a jaxpop run")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{path} is a file: pass the log_dir (a directory) of a run")
    if _is_run_dir(path):
        return path
    hint = (
        "a run's directory is the log_dir given to PopulationController and holds "
        "snapshot-*.jpsnap files (the CNN examples write it to <log-dir>/population)"
    )
    if not os.listdir(path):
        raise NotARunError(f"{path} is empty: no jaxpop run has been written there yet; {hint}")
    runs, frontier = [], [path]
    for _ in range(_SEARCH_DEPTH):
        frontier = [d for parent in frontier for d in _subdirs(parent)]
        runs.extend(d for d in frontier if _is_run_dir(d))
        frontier = [d for d in frontier if d not in runs]
    if not runs:
        raise NotARunError(f"{path} is not a jaxpop run and holds none; {hint}")
    if len(runs) > 1:
        raise NotARunError(
            f"{path} holds {len(runs)} jaxpop runs ({', '.join(runs)}); pass one of them"
        )
    return runs[0]


def load(log_dir: str | os.PathLike) -> Report:
    """Reads the run at ``log_dir`` (see :func:`find_run_dir`) into a :class:`Report`.

    Never takes the run's lock and never writes to it, so it is safe while the run is
    live: a record being written is left out.

    Raises:
      FileNotFoundError, NotADirectoryError, NotARunError: see :func:`find_run_dir`.
      jaxpop.storage.CorruptLogError: a file of the run is damaged.
    """
    run_dir = find_run_dir(log_dir)
    state = storage.read_state(run_dir)
    if state is None:  # its files vanished between the two looks
        raise NotARunError(f"{run_dir} holds no jaxpop state (no snapshot)")
    return build(state, run_dir)


# -- hyperparameters as flat columns --------------------------------------------------
def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _scalar(leaf: Any) -> Any:
    """A leaf as a plain Python scalar (or ``None`` if it is not one)."""
    if isinstance(leaf, bool | np.bool_):
        return bool(leaf)
    if isinstance(leaf, numbers.Integral):
        return int(leaf)
    if isinstance(leaf, numbers.Real):
        return float(leaf)
    if isinstance(leaf, str):
        return leaf
    return None


def flatten_hparams(meta_params: Any) -> dict[str, Any]:
    """``meta_params`` as ``{dotted key: scalar}``, in the pytree's leaf order.

    Dict keys, sequence indices and dataclass fields join with ``"."``; a bare scalar
    is named ``"value"``. Numbers become Python ``int``/``float``/``bool``, strings stay;
    arrays of up to 16 elements become one entry per element (a size-1 array one
    entry under its own key); larger arrays and other leaves are left out.
    """
    flat: dict[str, Any] = {}
    leaves, _ = jax.tree_util.tree_flatten_with_path(meta_params)
    for path, leaf in leaves:
        name = ".".join(_key_name(p) for p in path) or "value"
        value = _scalar(leaf)
        if value is not None:
            flat[name] = value
            continue
        if hasattr(leaf, "dtype") and hasattr(leaf, "size") and leaf.size <= _MAX_ARRAY_LEAF:
            array = np.asarray(leaf)
            if array.dtype.kind not in "biuf":
                continue
            if array.size == 1:
                flat[name] = array.reshape(()).item()
            else:
                for i, item in enumerate(array.reshape(-1).tolist()):
                    flat[f"{name}.{i}"] = item
    return flat


def numeric_hparams(meta_params: Any) -> dict[str, float]:
    """The numeric entries of :func:`flatten_hparams`, as floats (bools as 0/1)."""
    return {k: float(v) for k, v in flatten_hparams(meta_params).items() if not isinstance(v, str)}


# -- the report data ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One worker's trajectory.

    Attributes:
      worker: the worker id.
      generation_id: the worker's current generation.
      step: the worker's current step.
      meta_params: the worker's current hyperparameters.
      lineage: the checkpoints its parameters descend from, root first, ending at its
        current position (the newest checkpoint of its current generation).
      scored: its latest evaluated checkpoint along ``lineage`` (``None``: none yet).
    """

    worker: int
    generation_id: str
    step: int
    meta_params: Any
    lineage: tuple[Checkpoint, ...]
    scored: Checkpoint | None

    @property
    def value(self) -> float | None:
        """The member's score: ``scored.value``."""
        return None if self.scored is None else self.scored.value


@dataclasses.dataclass(frozen=True, eq=False)
class Report:
    """Everything the report shows, computed from one read of a run's state.

    Attributes:
      log_dir: the run directory it was read from (``""`` if built from a state).
      state: the population state read.
      members: one per worker, by worker id.
      best: the best member (``None`` while nothing is evaluated).
      best_lineage: ``history.lineage`` of the best member's scored checkpoint.
      exploits: every exploit event, in the order the generations were created.
      hparam_names: the numeric hyperparameter names (union over all checkpoints).
    """

    log_dir: str
    state: PopulationState
    members: tuple[Member, ...]
    best: Member | None
    best_lineage: tuple[Checkpoint, ...]
    exploits: tuple[ExploitEvent, ...]
    hparam_names: tuple[str, ...]

    @property
    def history(self) -> History:
        return self.state.history

    @property
    def population_size(self) -> int:
        return self.state.population_size

    @property
    def num_evaluations(self) -> int:
        return sum(1 for c in self.history.checkpoints() if c.value is not None)


def _rank(value: float | None) -> tuple[int, float]:
    if value is None:
        return (2, 0.0)
    return (0, value) if math.isfinite(value) else (1, 0.0)


def _member(history: History, worker_id: int, worker: Any) -> Member:
    generation_id = worker.generation_id
    # a worker's generation is always in a consistent history; if not, report the rest
    lineage = tuple(history.lineage(generation_id)) if generation_id in history else ()
    scored = next((c for c in reversed(lineage) if c.value is not None), None)
    return Member(worker_id, generation_id, worker.step, worker.meta_params, lineage, scored)


def build(state: PopulationState, log_dir: str = "") -> Report:
    """The :class:`Report` of ``state`` (pure: reads nothing, writes nothing)."""
    history = state.history
    members = tuple(_member(history, i, w) for i, w in enumerate(state.workers))
    scored = [m for m in members if m.scored is not None]
    best = min(scored, key=lambda m: (_rank(m.value), m.worker)) if scored else None
    best_lineage = (
        () if best is None else tuple(history.lineage(best.scored.generation_id, best.scored.step))
    )
    names: dict[str, None] = {}
    for generation_id in history:
        for name in numeric_hparams(history.first(generation_id).meta_params):
            names.setdefault(name)
    return Report(
        log_dir=log_dir,
        state=state,
        members=members,
        best=best,
        best_lineage=best_lineage,
        exploits=tuple(exploit_events(history)),
        hparam_names=tuple(names),
    )


class Series(NamedTuple):
    """One plotted line: ``values[i]`` at ``steps[i]`` (float arrays, NaN where absent)."""

    label: str
    steps: np.ndarray
    values: np.ndarray


def _series(label: str, checkpoints: Sequence[Checkpoint], hparam: str | None) -> Series:
    if hparam is None:
        points = [(c.step, c.value) for c in checkpoints if c.value is not None]
    else:
        points = [
            (c.step, numeric_hparams(c.meta_params).get(hparam, math.nan)) for c in checkpoints
        ]
    steps = np.asarray([p[0] for p in points], dtype=np.float64)
    values = np.asarray([p[1] for p in points], dtype=np.float64)
    return Series(label, steps, values)


def member_series(report: Report, hparam: str | None = None) -> list[Series]:
    """One :class:`Series` per member along its lineage (label ``"worker <w>"``).

    ``hparam=None``: its evaluated checkpoints' values; otherwise the hyperparameter
    ``hparam`` at every checkpoint (a copy shows as a jump at the copy step).
    """
    return [_series(f"worker {m.worker}", m.lineage, hparam) for m in report.members]


def best_series(report: Report, hparam: str | None = None) -> Series | None:
    """The best lineage as a :class:`Series` (see :func:`member_series`), or ``None``."""
    if report.best is None:
        return None
    return _series(f"best: worker {report.best.worker}", report.best_lineage, hparam)


# -- tables: CSV rows and the summary -------------------------------------------------
def history_rows(history: History) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)``: one row per checkpoint, in history order.

    Columns are :data:`CSV_COLUMNS` then every flattened hyperparameter (the union
    over all checkpoints, in first-seen order; one named like a fixed column gets the
    prefix ``hparams.``); a missing entry is ``None``.
    """
    rows, names = [], {}
    for checkpoint in history.checkpoints():
        parent = checkpoint.parent
        row = {
            "generation_id": checkpoint.generation_id,
            "parent_generation": None if parent is None else parent[0],
            "parent_step": None if parent is None else parent[1],
            "step": checkpoint.step,
            "time": checkpoint.time,
            "value": checkpoint.value,
        }
        hparams = flatten_hparams(checkpoint.meta_params)
        for name in hparams:
            names.setdefault(name)
        rows.append((row, hparams))
    column = {n: f"hparams.{n}" if n in CSV_COLUMNS else n for n in names}
    out = []
    for row, hparams in rows:
        for name in names:
            row[column[name]] = hparams.get(name)
        out.append(row)
    return [*CSV_COLUMNS, *column.values()], out


def write_csv(history: History, file: TextIO) -> int:
    """Writes :func:`history_rows` as CSV to ``file``; returns the number of rows."""
    columns, rows = history_rows(history)
    writer = csv.DictWriter(file, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return len(rows)


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": strict JSON has no such numbers
    return value


def _json_hparams(meta_params: Any) -> dict[str, Any]:
    return {k: _json_number(v) for k, v in flatten_hparams(meta_params).items()}


def summary(report: Report) -> dict[str, Any]:
    """The run at a glance, as JSON-ready plain data (what ``summary.json`` holds).

    Non-finite values appear as the strings ``"nan"``, ``"inf"``, ``"-inf"``; ``best``
    is ``None`` while nothing is evaluated.
    """
    history = report.history
    times = [c.time for c in history.checkpoints()]
    best = report.best
    return {
        "log_dir": report.log_dir,
        "population_size": report.population_size,
        "num_checkpoints": history.num_checkpoints,
        "num_generations": len(history),
        "num_evaluations": report.num_evaluations,
        "num_exploit_events": len(report.exploits),
        "best": None
        if best is None
        else {
            "worker": best.worker,
            "generation_id": best.scored.generation_id,
            "step": best.scored.step,
            "value": _json_number(best.value),
            "hyperparameters": _json_hparams(best.scored.meta_params),
            "current_generation_id": best.generation_id,
            "current_hyperparameters": _json_hparams(best.meta_params),
        },
        "wall_clock": {
            "start": min(times) if times else None,
            "end": max(times) if times else None,
            "seconds": max(times) - min(times) if times else 0.0,
        },
        "members": [
            {
                "worker": m.worker,
                "generation_id": m.generation_id,
                "step": m.step,
                "value": _json_number(m.value),
                "value_step": None if m.scored is None else m.scored.step,
                "hyperparameters": _json_hparams(m.meta_params),
            }
            for m in report.members
        ],
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    utc = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return utc.strftime("%Y-%m-%d %H:%M:%S UTC")


def _overview_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    best, clock = info["best"], info["wall_clock"]
    rows = [
        ("log_dir", info["log_dir"] or "-"),
        ("population size", str(info["population_size"])),
        ("checkpoints", str(info["num_checkpoints"])),
        ("evaluations", str(info["num_evaluations"])),
        ("generations", str(info["num_generations"])),
        ("exploit events", str(info["num_exploit_events"])),
    ]
    if best is None:
        rows.append(("best member", "none yet: no evaluation has been reported"))
    else:
        rows += [
            (
                "best member",
                f"worker {best['worker']} (generation {best['generation_id']}, "
                f"step {best['step']})",
            ),
            ("best value", _fmt(best["value"])),
            (
                "its hyperparameters",
                ", ".join(f"{k}={_fmt(v)}" for k, v in best["hyperparameters"].items()) or "-",
            ),
        ]
    rows.append(
        (
            "wall-clock span",
            f"{_fmt_time(clock['start'])} .. {_fmt_time(clock['end'])} ({clock['seconds']:.1f} s)",
        )
    )
    return rows


def _member_rows(info: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = list(dict.fromkeys(k for m in info["members"] for k in m["hyperparameters"]))
    best = info["best"]
    header = ["worker", "value", "at step", "step", "generation", *names]
    rows = [
        [
            f"{m['worker']}{' *' if best is not None and best['worker'] == m['worker'] else ''}",
            _fmt(m["value"]),
            _fmt(m["value_step"]),
            _fmt(m["step"]),
            m["generation_id"],
            *(_fmt(m["hyperparameters"].get(k)) for k in names),
        ]
        for m in info["members"]
    ]
    return header, rows


def format_summary(info: Mapping[str, Any]) -> str:
    """The :func:`summary` as plain-text tables (what is printed without ``rich``)."""
    lines = []
    overview = _overview_rows(info)
    width = max(len(k) for k, _ in overview)
    lines += [f"{k.ljust(width)}  {v}" for k, v in overview]
    header, rows = _member_rows(info)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("")
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("-" * len(lines[-1]))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def print_summary(info: Mapping[str, Any], file: TextIO | None = None) -> None:
    """Prints the :func:`summary` as tables: with ``rich`` if installed, else plain."""
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        print(format_summary(info), file=file)
        return
    console = Console(file=file)
    overview = Table(title="jaxpop report", show_header=False)
    overview.add_column(style="bold")
    overview.add_column()
    for key, value in _overview_rows(info):
        overview.add_row(key, Text(value))  # Text: no markup is read from the data
    console.print(overview)
    header, rows = _member_rows(info)
    members = Table(title="members (* best)")
    for name in header:
        members.add_column(name, justify="left" if name == "generation" else "right")
    for row in rows:
        members.add_row(*map(Text, row))
    console.print(members)


# -- plots ----------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    """A new figure on the Agg canvas (pyplot's global state is never touched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "jaxpop's report plots need matplotlib: pip install matplotlib "
            "(or pip install 'jaxpop[report]')"
        ) from e
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _member_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    if n <= 10:
        palette = [c for i, c in enumerate(cmap.colors) if i != 3]  # red is the highlight
        return [palette[i % len(palette)] for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _mark_exploits(ax: Any, report: Report) -> None:
    """Dotted lines at the exploit steps; a rug along the bottom when there are many."""
    steps = sorted({e.step for e in report.exploits})
    if steps:
        ax.vlines(
            steps,
            0,
            1 if len(steps) <= _MAX_EXPLOIT_LINES else 0.04,
            transform=ax.get_xaxis_transform(),
            colors=_EXPLOIT_COLOR,
            linestyles=":",
            linewidth=0.8,
            label="exploit",
            gid="exploits",
            zorder=0,
        )


def _draw_lines(ax: Any, report: Report, hparam: str | None) -> None:
    """Members' lines over the best lineage's wide band, every checkpoint faintly behind."""
    everything = _series("all checkpoints", tuple(report.history.checkpoints()), hparam)
    keep = np.isfinite(everything.values)
    ax.scatter(
        everything.steps[keep],
        everything.values[keep],
        s=6,
        color="0.75",
        label="all checkpoints",
        gid="all-checkpoints",
        zorder=1,
    )
    series = member_series(report, hparam)
    for member, line, color in zip(
        report.members, series, _member_colors(len(series)), strict=True
    ):
        ax.plot(
            line.steps,
            line.values,
            color=color,
            linewidth=1.2,
            alpha=0.85,
            marker="." if len(line.steps) <= 1 else None,
            label=line.label,
            gid=f"member-{member.worker}",
            zorder=2,
        )
    best = best_series(report, hparam)
    if best is not None:
        ax.plot(
            best.steps,
            best.values,
            color=_HIGHLIGHT,
            linewidth=6.0,
            alpha=0.4,
            solid_capstyle="round",
            marker="o" if len(best.steps) <= 1 else None,
            label=best.label,
            gid="best-lineage",
            zorder=1.5,
        )
    _mark_exploits(ax, report)


def _legend(ax: Any, report: Report) -> None:
    if report.population_size <= 10:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def plot_hparams(report: Report, names: Iterable[str] | None = None) -> Figure:
    """Each numeric hyperparameter over step: one panel per hyperparameter.

    In each panel: one line per member (``gid="member-<w>"``) over a wide band marking
    the best lineage (``gid="best-lineage"``), every checkpoint as a faint dot
    (``gid="all-checkpoints"``) and the exploit steps as dotted vertical lines
    (``gid="exploits"``; a rug along the bottom when there are many). ``names`` picks
    the hyperparameters (default: all).
    """
    names = list(report.hparam_names if names is None else names)
    fig = _figure(10.0, 1.0 + 2.3 * max(len(names), 1))
    if not names:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no numeric hyperparameters", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        _draw_lines(ax, report, name)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    _legend(axes[0], report)
    axes[-1].set_xlabel("step")
    fig.suptitle(f"hyperparameters over training ({report.population_size} members)")
    return fig


def plot_scores(report: Report, *, log_scale: bool = False) -> Figure:
    """Evaluation value over step: one line per member, the best lineage highlighted.

    Artists as in :func:`plot_hparams`. ``log_scale``: a log y axis (symmetric log if
    some value is not positive).
    """
    fig = _figure(10.0, 5.0)
    ax = fig.add_subplot()
    _draw_lines(ax, report, None)
    if report.num_evaluations == 0:
        ax.text(
            0.5,
            0.5,
            "no evaluation has been reported yet",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    if log_scale:
        values = [c.value for c in report.history.checkpoints() if c.value is not None]
        finite = [v for v in values if math.isfinite(v)]
        ax.set_yscale("log" if finite and min(finite) > 0 else "symlog")
    ax.set_xlabel("step")
    ax.set_ylabel("evaluation value (lower is better)")
    ax.grid(alpha=0.3)
    _legend(ax, report)
    best = report.best
    title = "evaluation over training"
    if best is not None:
        title += f" (best: worker {best.worker}, {_fmt(best.value)} at step {best.scored.step})"
    ax.set_title(title)
    return fig


def _generation_spans(history: History) -> dict[str, tuple[int, int, int]]:
    """``generation_id -> (row, first step, last step)``, rows in creation order."""
    return {
        gen: (row, history.first(gen).step, history.latest(gen).step)
        for row, gen in enumerate(history)
    }


def plot_lineage(report: Report) -> Figure:
    """The genealogy as a timeline: which generation was copied from which checkpoint.

    One row per generation (creation order, top to bottom), a horizontal segment over
    its steps colored by its best value; a line from each parent checkpoint to the
    child's start (``gid="links"``); the best lineage in red (``gid="best-lineage"``);
    each worker's current position as a labelled dot.
    """
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    history = report.history
    spans = _generation_spans(history)
    height = min(2.0 + 0.22 * len(spans), 16.0)
    fig = _figure(10.0, height)
    ax = fig.add_subplot()
    best_values = []
    for gen in spans:
        values = [c.value for c in history.evaluated(gen) if math.isfinite(c.value)]
        best_values.append(min(values) if values else math.nan)
    finite = [v for v in best_values if math.isfinite(v)]
    cmap = colormaps["viridis"]
    norm = Normalize(min(finite), max(finite)) if finite else None
    colors = ["0.7" if norm is None or not math.isfinite(v) else cmap(norm(v)) for v in best_values]
    segments = [[(first, row), (last, row)] for row, first, last in spans.values()]
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=3.0, gid="generations"))
    ax.scatter([s[0][0] for s in segments], [s[0][1] for s in segments], s=9, c=colors, zorder=2)
    links = []
    for gen, (row, first, _) in spans.items():
        parent = history.branch_point(gen)
        if parent is not None and parent[0] in spans and parent[0] != gen:
            links.append([(parent[1], spans[parent[0]][0]), (first, row)])
    if links:
        ax.add_collection(
            LineCollection(links, colors="0.45", linewidths=0.8, gid="links", zorder=1)
        )
        ax.scatter(
            [link[1][0] for link in links],
            [link[1][1] for link in links],
            marker=">",
            s=14,
            color="0.45",
            zorder=2,
        )
    if report.best_lineage:
        points = [(c.step, spans[c.generation_id][0]) for c in report.best_lineage]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            color=_HIGHLIGHT,
            linewidth=1.8,
            label=f"best lineage (worker {report.best.worker})",
            gid="best-lineage",
            zorder=3,
        )
    for member in report.members:
        if member.generation_id in spans:
            row, _, last = spans[member.generation_id]
            ax.plot(last, row, "o", color="black", markersize=4, zorder=4)
            if report.population_size <= 16:
                ax.annotate(
                    f"w{member.worker}",
                    (last, row),
                    textcoords="offset points",
                    xytext=(4, 2),
                    fontsize="x-small",
                )
    if norm is not None:
        mappable = _scalar_mappable(cmap, norm)
        fig.colorbar(
            mappable,
            ax=ax,
            shrink=min(1.0, 6.0 / height),
            label="best value in generation (lower is better)",
        )
    if len(spans) <= 40:
        ax.set_yticks(range(len(spans)), [gen[:8] for gen in spans], fontsize="x-small")
        ax.set_ylabel("generation")
    else:
        ax.set_ylabel("generation (creation order)")
    ax.set_ylim(len(spans) - 0.5, -0.5)
    ax.autoscale(axis="x")
    ax.set_xlabel("step")
    if report.best_lineage:
        ax.legend(loc="lower left", fontsize="small")
    ax.set_title(f"lineage: {len(spans)} generations, {len(report.exploits)} exploit events")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _scalar_mappable(cmap: Any, norm: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    mappable = ScalarMappable(norm=norm, cmap=cmap)
    mappable.set_array([])
    return mappable


# -- files ----------------------------------------------------------------------------
def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory + os.sep)


def default_out_dir(run_dir: str) -> str:
    """Where ``jaxpop report`` writes by default: ``<run dir>-report``, beside the run."""
    return os.path.normpath(run_dir) + "-report"


def write_report(
    log_dir: str | os.PathLike | Report,
    out_dir: str | os.PathLike | None = None,
    *,
    log_scale: bool = False,
) -> dict[str, str]:
    """Writes ``hparams.png``, ``scores.png``, ``lineage.png``, ``history.csv`` and
    ``summary.json`` into ``out_dir``; returns ``{file name: path}``.

    ``log_dir`` is a run directory (or its parent, see :func:`find_run_dir`) or an
    already loaded :class:`Report`. ``out_dir`` defaults to :func:`default_out_dir`
    and is created if needed; it may not lie inside the run's directory, which is never
    written to. Each file is written to a temporary name and renamed into place.
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
    os.makedirs(out_dir, exist_ok=True)
    written: dict[str, str] = {}

    def put(name: str, data: bytes) -> None:
        path = os.path.join(out_dir, name)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
        written[name] = path

    for name, make in (
        ("hparams.png", lambda: plot_hparams(report)),
        ("scores.png", lambda: plot_scores(report, log_scale=log_scale)),
        ("lineage.png", lambda: plot_lineage(report)),
    ):
        buffer = io.BytesIO()
        make().savefig(buffer, format="png", dpi=110)
        put(name, buffer.getvalue())
    text = io.StringIO()
    write_csv(report.history, text)
    put("history.csv", text.getvalue().encode())
    put("summary.json", (json.dumps(summary(report), indent=2, allow_nan=False) + "\n").encode())
    return written
