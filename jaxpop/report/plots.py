"""Report plots: matplotlib ``Figure`` objects on the Agg canvas, matplotlib imported lazily."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxpop.history import KEPT_MARK, History, is_kept
from jaxpop.report.data import Report, _series, best_series, member_series
from jaxpop.report.tables import _fmt, _printable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_HIGHLIGHT = "#d62728"
_EXPLOIT_COLOR = "0.55"
_MAX_EXPLOIT_LINES = 40  # more distinct exploit steps than this: a rug, not full lines


# -- plots ----------------------------------------------------------------------------


def _better(history: Any) -> str:
    return "higher" if history.mode == "max" else "lower"


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
    """A colour per member, each its own: tab10's nine without red (the best lineage's
    highlight) up to nine members, viridis past that (tab10 cycled, worker 9 took
    worker 0's colour)."""
    from matplotlib import colormaps

    tab10 = colormaps["tab10"]
    palette = [tab10(i) for i in range(tab10.N) if i != 3]  # red is the highlight
    if n <= len(palette):
        return palette[:n]
    viridis = colormaps["viridis"]
    return [viridis(i / max(n - 1, 1)) for i in range(n)]


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
    everything = _series(report, "all checkpoints", tuple(report.history.checkpoints()), hparam)
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


def _hparam_names(report: Report, names: str | Iterable[str] | None) -> list[str]:
    """The hyperparameters ``plot_hparams`` draws: ``names`` checked (a str is one name)."""
    if names is None:
        return list(report.hparam_names)
    chosen = [names] if isinstance(names, str) else list(names)
    for name in chosen:
        if not isinstance(name, str):
            raise TypeError(
                f"names holds {name!r} ({type(name).__name__}): pass hyperparameter "
                "names as str, such as report.hparam_names"
            )
        if name not in report.hparam_names:
            known = ", ".join(map(repr, report.hparam_names)) or "none"
            raise ValueError(f"no numeric hyperparameter {name!r} in this run; its names: {known}")
    return chosen


def plot_hparams(report: Report, names: str | Iterable[str] | None = None) -> Figure:
    """Each numeric hyperparameter over step: one panel per hyperparameter.

    In each panel: one line per member (``gid="member-<w>"``) over a wide band marking
    the best lineage (``gid="best-lineage"``), every checkpoint as a faint dot
    (``gid="all-checkpoints"``) and the exploit steps as dotted vertical lines
    (``gid="exploits"``; a rug along the bottom when there are many). ``names`` picks
    the hyperparameters, in order (default: all of ``report.hparam_names``); a single
    str is one name (``names="lr"``).

    Raises:
      TypeError: ``names`` holds something other than a str.
      ValueError: a name is not in ``report.hparam_names``.
    """
    names = _hparam_names(report, names)
    fig = _figure(10.0, 1.0 + 2.3 * max(len(names), 1))
    if not names:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no numeric hyperparameters", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        _draw_lines(ax, report, name)
        # a name is text: "$" is no math mode, a control character is shown escaped
        ax.set_ylabel(_printable(name), parse_math=False)
        ax.grid(alpha=0.3)
    _legend(axes[0], report)
    axes[-1].set_xlabel("step")
    fig.suptitle(f"hyperparameters over training ({report.population_size} members)")
    return fig


def plot_scores(report: Report, *, log_scale: bool = False) -> Figure:
    """Evaluation value over step: one line per member, the best lineage highlighted.

    Artists as in :func:`plot_hparams`. ``log_scale``: a log y axis (symmetric log if
    some value is not positive, linear only below the smallest non-zero magnitude).
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
        if finite and min(finite) > 0:
            ax.set_yscale("log")
        else:  # linear only below the smallest magnitude (matplotlib's default: 2)
            nonzero = [abs(v) for v in finite if v != 0]
            ax.set_yscale("symlog", linthresh=max(min(nonzero), 1e-100) if nonzero else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"evaluation value ({_better(report.history)} is better)")
    ax.grid(alpha=0.3)
    _legend(ax, report)
    best = report.best
    title = "evaluation over training"
    if best is not None and best.scored is not None:
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
        evaluated = [c.value for c in history.evaluated(gen)]
        values = [v for v in evaluated if v is not None and math.isfinite(v)]
        best_values.append(min(values, key=history.rank) if values else math.nan)
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
        # (a kept generation copied nothing: its parent is what its one checkpoint was
        # trained from, in the generation it was kept from)
        if parent is not None and parent[0] in spans and parent[0] != gen and not is_kept(gen):
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
    if report.best is not None and report.best_lineage:
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
        if member.generation_id in spans and member.lineage:
            row = spans[member.generation_id][0]
            at = member.lineage[-1].step  # (its position: below its generation's last step
            # when checkpoint_missing sent it back)
            ax.plot(at, row, "o", color="black", markersize=4, zorder=4)
            if report.population_size <= 16:
                ax.annotate(
                    f"w{member.worker}",
                    (at, row),
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
            label=f"best value in generation ({_better(history)} is better)",
        )
    if len(spans) <= 40:
        ax.set_yticks(  # (an id is text: a migrated seed run's may hold "$")
            range(len(spans)),
            [_row_label(gen) for gen in spans],
            fontsize="x-small",
            parse_math=False,
        )
        ax.set_ylabel("generation")
    else:
        ax.set_ylabel("generation (creation order)")
    ax.set_ylim(len(spans) - 0.5, -0.5)
    ax.autoscale(axis="x")
    ax.set_xlabel("step")
    if report.best_lineage:
        ax.legend(loc="lower left", fontsize="small")
    kept = sum(map(is_kept, spans))
    generations = f"{len(spans)} generations" + (f" ({kept} kept)" if kept else "")
    ax.set_title(f"lineage: {generations}, {len(report.exploits)} exploit events")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _row_label(generation_id: str) -> str:
    """A generation's row in the lineage plot: its id's first 8 characters; a kept
    generation's (``<generation>~<id>``) those of both parts, which tell it from the
    generation it was kept from."""
    if not is_kept(generation_id):
        return _printable(generation_id[:8])
    origin, _, own = generation_id.rpartition(KEPT_MARK)
    return _printable(f"{origin[:8]}{KEPT_MARK}{own[:4]}")


def _scalar_mappable(cmap: Any, norm: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    mappable = ScalarMappable(norm=norm, cmap=cmap)
    mappable.set_array([])
    return mappable
