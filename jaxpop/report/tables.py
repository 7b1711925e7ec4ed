"""Report tables: the history as CSV rows, the JSON-ready summary and its printed form."""

from __future__ import annotations

import csv
import datetime
import math
from collections.abc import Mapping
from typing import Any, TextIO

from jaxpop.history import History
from jaxpop.report.data import Report, _Names, hparam_columns, with_hparams

#: The fixed leading columns of ``history.csv``; flattened hyperparameters follow.
CSV_COLUMNS = ("generation_id", "parent_generation", "parent_step", "step", "time", "value")


# -- tables: CSV rows and the summary -------------------------------------------------
def history_rows(history: History) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)``: one row per checkpoint, in history order.

    Columns are :data:`CSV_COLUMNS` then every flattened hyperparameter (the union
    over all checkpoints, in first-seen order; one named like a fixed column gets the
    prefix ``hparams.``; a column is one leaf in every row, even where a key holding a
    dot joins two leaves' names: see :func:`~jaxpop.report.flatten_hparams`); a missing
    entry is ``None``.
    """
    checkpoints = list(history.checkpoints())
    rows = []
    for checkpoint in checkpoints:
        parent = checkpoint.parent
        rows.append(
            {
                "generation_id": checkpoint.generation_id,
                "parent_generation": None if parent is None else parent[0],
                "parent_step": None if parent is None else parent[1],
                "step": checkpoint.step,
                "time": checkpoint.time,
                "value": checkpoint.value,
            }
        )
    names, rows = with_hparams(rows, [c.meta_params for c in checkpoints])
    columns = [*CSV_COLUMNS, *names]
    return columns, [{column: row.get(column) for column in columns} for row in rows]


def write_csv(history: History, file: TextIO) -> int:
    """Writes :func:`history_rows` as CSV to ``file``; returns the number of rows."""
    columns, rows = history_rows(history)
    writer = csv.DictWriter(file, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return len(rows)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": strict JSON has no such numbers
    return value


def _json_hparams(meta_params: Any, names: _Names) -> dict[str, Any]:
    return {k: _json_number(v) for k, v in names.flatten(meta_params).items()}


def summary(report: Report) -> dict[str, Any]:
    """The run at a glance, as JSON-ready plain data (what ``summary.json`` holds).

    Non-finite values appear as the strings ``"nan"``, ``"inf"``, ``"-inf"``; ``best``
    is ``None`` while nothing is evaluated.
    """
    history = report.history
    # (a history built by hand, or migrated, may hold a time no clock gave: inf, NaN)
    times = [t for c in history.checkpoints() if _finite_number(t := c.time)]
    names = report._names
    best = report.best
    scored = None if best is None else best.scored
    return {
        "log_dir": report.log_dir,
        "population_size": report.population_size,
        "mode": history.mode,
        "num_checkpoints": history.num_checkpoints,
        "num_generations": len(history),
        "num_evaluations": report.num_evaluations,
        "num_exploit_events": len(report.exploits),
        "best": None
        if best is None or scored is None
        else {
            "worker": best.worker,
            "generation_id": scored.generation_id,
            "step": scored.step,
            "value": _json_number(best.value),
            "hyperparameters": _json_hparams(scored.meta_params, names),
            "current_generation_id": best.generation_id,
            "current_hyperparameters": _json_hparams(best.meta_params, names),
        },
        "wall_clock": {
            "start": min(times) if times else None,
            "end": max(times) if times else None,
            "seconds": max(times) - min(times) if times else 0.0,
        },
        "members": [
            {
                "worker": m.worker,
                "status": m.status,
                "generation_id": m.generation_id,
                "step": m.step,
                "value": _json_number(m.value),
                "value_step": None if m.scored is None else m.scored.step,
                # those the value was scored with (the current ones while it has none)
                "hyperparameters": _json_hparams(
                    m.meta_params if m.scored is None else m.scored.meta_params, names
                ),
                "current_hyperparameters": _json_hparams(m.meta_params, names),
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
    try:
        utc = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    except (ValueError, OSError, OverflowError):  # a clock not in seconds since 1970
        return f"{seconds:.6g}"
    return utc.strftime("%Y-%m-%d %H:%M:%S UTC")


#: control characters (C0, DEL, C1) and the bidirectional formatting ones (which reorder
#: what a line shows) as escapes: a run's strings reach a terminal
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    c: f"\\u{c:04x}" for c in _BIDI
}


_CONTROL_BUT_LINES = {c: e for c, e in _CONTROL.items() if c not in (0x09, 0x0A)}


def _printable(text: str, *, lines: bool = False) -> str:
    """``text`` with control characters escaped (``"\\x1b"``): a value from a run's
    data cannot clear, recolour or rewrite the terminal the report is printed on.
    ``lines``: newlines and tabs are kept (a message of several lines)."""
    return text.translate(_CONTROL_BUT_LINES if lines else _CONTROL)


def _overview_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The overview table's (name, value) rows, printable."""
    return [(k, _printable(v)) for k, v in _overview(info)]


def _overview(info: Mapping[str, Any]) -> list[tuple[str, str]]:
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
                ", ".join(f"{k} = {_fmt(v)}" for k, v in best["hyperparameters"].items()) or "-",
            ),
        ]
    rows.append(
        (
            "wall-clock span",
            f"{_fmt_time(clock['start'])} .. {_fmt_time(clock['end'])} ({clock['seconds']:.1f} s)",
        )
    )
    return rows


#: What the members table's marks mean (printed under it).
_MEMBER_MARKS = (
    "* best; ~ trains with other hyperparameters since that value was scored (a copy or "
    "a new generation: summary.json's current_hyperparameters)"
)


_FIXED = 6  # the members table's columns before the hyperparameters
_NUMBER_WIDTH = 13  # numbers up to this wide are never folded: every float _fmt writes


def _is_number(text: str) -> bool:
    """Whether a cell is a number no wider than ``_NUMBER_WIDTH`` (a wider one, an
    integer of 14 digits or more, would crowd the table out at 80 columns: it may
    fold)."""
    if len(text) > _NUMBER_WIDTH:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def _member_rows(info: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The members table: each value with the hyperparameters it was scored with."""
    names = list(dict.fromkeys(k for m in info["members"] for k in m["hyperparameters"]))
    best = info["best"]
    fixed = ["worker", "status", "value", "at step", "step", "generation"]
    # a hyperparameter named as a column here or in history.csv ("step", "time") is
    # named as history.csv names it (hparams.step, hparams.step:2, ...)
    columns = hparam_columns(names, {*CSV_COLUMNS, *fixed})
    header = [*fixed, *(columns[k] for k in names)]
    rows = [
        [
            f"{m['worker']}"
            f"{' *' if best is not None and best['worker'] == m['worker'] else ''}"
            f"{' ~' if m['current_hyperparameters'] != m['hyperparameters'] else ''}",
            m["status"],
            _fmt(m["value"]),
            _fmt(m["value_step"]),
            _fmt(m["step"]),
            m["generation_id"],
            *(_fmt(m["hyperparameters"].get(k)) for k in names),
        ]
        for m in info["members"]
    ]
    return [_printable(h) for h in header], [[_printable(c) for c in r] for r in rows]


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
    lines.append(_MEMBER_MARKS)
    return "\n".join(lines)


def summary_renderable(info: Mapping[str, Any], *, title: str = "jaxpop report") -> Any:
    """The :func:`summary` as ``rich`` tables (a ``rich.console.Group``): what
    :func:`print_summary` prints and ``jaxpop report --watch`` refreshes.

    Raises:
      ImportError: ``rich`` is not installed.
    """
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    overview = Table(title=title, show_header=False)
    overview.add_column(style="bold")
    overview.add_column(overflow="fold")  # (a value is a word of its own: see members)
    for key, value in _overview_rows(info):
        overview.add_row(key, Text(value))  # Text: no markup is read from the data
    header, rows = _member_rows(info)
    names, fixed = header[_FIXED:], header[:_FIXED]
    # (collapsed padding: one space between columns, not two; with two, a value of 12
    # characters among the hyperparameters had no room at 80 columns, and was cropped)
    members = Table(
        title="members", caption=_MEMBER_MARKS, box=box.SIMPLE_HEAD, collapse_padding=True
    )
    for i, name in enumerate(fixed):
        if name == "generation":  # (an id may fold onto two lines)
            members.add_column(name, overflow="fold", min_width=8)
            continue
        # never cut (a cut number reads as another one: 1000 as "1…")
        width = max(len(name), *(len(row[i]) for row in rows)) if rows else len(name)
        members.add_column(name, justify="right", no_wrap=True, min_width=width)
    # the hyperparameters as "name = value" in one column, which wraps between them: a
    # column each would be cut to nothing at 80 columns with a dozen of them. A word
    # wider than the column is folded: the value is a word of its own, and the column
    # as wide as a number's (a learning rate folded as "0.0001" and "2346")
    values = [v for row in rows for v in row[_FIXED:]]
    widest = max((len(v) + 1 for v in values if _is_number(v)), default=1)
    members.add_column("hyperparameters", overflow="fold", min_width=widest)
    for row in rows:
        hparams = ", ".join(f"{k} = {v}" for k, v in zip(names, row[_FIXED:], strict=True))
        members.add_row(*map(Text, row[:_FIXED]), Text(hparams))
    return Group(overview, members)


def print_summary(info: Mapping[str, Any], file: TextIO | None = None) -> None:
    """Prints the :func:`summary` as tables: with ``rich`` if installed, else plain."""
    try:
        from rich.console import Console

        renderable = summary_renderable(info)
    except ImportError:
        print(format_summary(info), file=file)
        return
    Console(file=file).print(renderable)
