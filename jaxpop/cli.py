"""The ``jaxpop`` command line: ``report`` and ``migrate-seed-state``.

* ``jaxpop report LOGDIR [--out DIR] [--log-scale]``, a thin shell over
  :mod:`jaxpop.report`: it reads the run without locking or writing it (safe while the
  run is live), writes the plots, ``history.csv`` and ``summary.json`` into ``--out``
  (default ``<run dir>-report``, beside the run) and prints the summary table. With
  ``--watch [--interval S] [--max-iterations N]`` it keeps doing so while the run goes
  on (:func:`jaxpop.report.watch`), refreshing the tables in place (``rich``) until
  Ctrl-C or the run is over.
* ``jaxpop migrate-seed-state DIR [--out LOGDIR] [--seed N]``, a shell over
  :func:`jaxpop.storage.migrate_seed_state`: turns learned_optimization's pickled
  ``population.state`` into a jaxpop ``log_dir`` (``DIR`` itself by default).

Exit status 0 on success, 1 when the run cannot be read or written (the message says
why), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxpop`` command."""
    top = argparse.ArgumentParser(
        prog="jaxpop", description="Population based training for JAX/Optax."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report = commands.add_parser(
        "report",
        help="plots, tables and a summary of a run's history",
        description=(
            "Read a run's durable history (never locking or writing it, so the run may "
            "be live) and write hparams.png, scores.png, lineage.png, history.csv and "
            "summary.json; print a summary table."
        ),
    )
    report.add_argument(
        "log_dir",
        type=_path,
        metavar="LOGDIR",
        help="the run's log_dir, or a directory holding exactly one run "
        "(e.g. the --log-dir of a CNN example)",
    )
    report.add_argument(
        "--out",
        type=_path,
        metavar="DIR",
        default=None,
        help="output folder (default: <run dir>-report)",
    )
    report.add_argument(
        "--log-scale", action="store_true", help="log scale for the evaluation values"
    )
    report.add_argument("--quiet", action="store_true", help="do not print the summary table")
    report.add_argument(
        "--watch",
        action="store_true",
        help="keep re-reading the run and refreshing the tables and files until Ctrl-C "
        "or the run is over (every worker finished or gone)",
    )
    report.add_argument(
        "--interval",
        type=_interval,
        default=2.0,
        metavar="S",
        help="with --watch: seconds between reads (default 2)",
    )
    report.add_argument(
        "--max-iterations",
        type=_iterations,
        default=0,
        metavar="N",
        help="with --watch: stop after N reads (default 0: no limit)",
    )
    migrate = commands.add_parser(
        "migrate-seed-state",
        help="turn learned_optimization's population.state into a jaxpop log_dir",
        description=(
            "Read DIR/population.state, the pickle learned_optimization's controller "
            "writes, without running anything from it (only the seed's records and plain "
            "data are built; anything else is refused), and write a jaxpop log_dir that "
            "a PopulationController resumes. population.state is left as it was."
        ),
    )
    migrate.add_argument(
        "src_dir",
        type=_path,
        metavar="DIR",
        help="the seed's log_dir (or its population.state file)",
    )
    migrate.add_argument(
        "--out",
        type=_path,
        metavar="LOGDIR",
        default=None,
        help="where to write the jaxpop run (default: DIR itself, so the same log_dir "
        "goes on working)",
    )
    migrate.add_argument(
        "--seed",
        type=_seed,
        default=None,
        help="seeds the jaxpop run's PRNG key (default: a random one)",
    )
    return top


def _path(text: str) -> str:
    """A file or folder argument: an empty one is a usage error (it read as a run that
    cannot be read or written, exit 1)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no file or folder")
    return text


def _interval(text: str) -> float:
    """``--interval``: seconds, positive and at most a week."""
    from jaxpop.report.watch import MAX_INTERVAL_S

    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds <= MAX_INTERVAL_S:
        raise argparse.ArgumentTypeError(
            f"must be positive and at most {MAX_INTERVAL_S} seconds (a week), got {text}"
        )
    return seconds


def _iterations(text: str) -> int:
    """``--max-iterations``: a count, at least 0."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an int: {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {count}")
    return count


def _seed(text: str) -> int:
    """``--seed``: an int a run's root key takes (told as a usage error, not blamed on
    the file being migrated)."""
    from jaxpop.keys import root_key

    try:
        seed = int(text)
        root_key(seed)
    except ValueError as e:
        why = str(e) if "seed" in str(e) else f"not an int: {text!r}"
        raise argparse.ArgumentTypeError(why) from None
    return seed


def _say(text: str, file: TextIO | None = None) -> None:
    """Prints ``text`` with its control characters escaped: a path or an error quoting
    a run's names cannot clear, retitle or recolour the terminal."""
    from jaxpop.report.tables import _printable

    print(_printable(text, lines=True), file=file)


def _report_error(args: argparse.Namespace, error: BaseException | str) -> int:
    from jaxpop import storage
    from jaxpop.storage.seed_state import holds_unmigrated_seed_run

    _say(f"jaxpop report: error: {error}", file=sys.stderr)
    for note in getattr(error, "__notes__", ()):  # (a watch says what its files hold)
        _say(f"jaxpop report: {note}", file=sys.stderr)
    # (only for a run not migrated yet: one migrated in place holds population.state too,
    # and migrating it again fails)
    if holds_unmigrated_seed_run(args.log_dir):
        _say(
            f"{args.log_dir} holds learned_optimization's {storage.SEED_STATE_FILE}: "
            f"migrate it first with `jaxpop migrate-seed-state {args.log_dir}`",
            file=sys.stderr,
        )
    return 1


def _report(args: argparse.Namespace) -> int:
    from jaxpop import report, storage

    if args.watch:
        return _watch(args)
    try:
        data = report.load(args.log_dir)
        written = report.write_report(data, args.out, log_scale=args.log_scale)
    except (
        OSError,
        ValueError,  # NotARunError, an out dir inside the run
        ImportError,  # matplotlib missing: the message names the pip command
        storage.CorruptLogError,
    ) as e:
        return _report_error(args, e)
    if not args.quiet:
        report.print_summary(report.summary(data))
        if data.best is None:
            print("no evaluation has been reported yet: the report shows what there is")
    out_dir = os.path.dirname(next(iter(written.values())))
    _say(f"wrote {', '.join(written)} to {out_dir}")
    return 0


def _status(refresh: Any, interval: float) -> str:
    """The line above the live tables: what was read, when, and how to stop."""
    now = time.strftime("%H:%M:%S")
    if refresh.report is None:
        from jaxpop.report.tables import _printable

        return f"{now}  waiting for a run: {_printable(refresh.waiting)}  (Ctrl-C to stop)"
    state = refresh.report.state
    tail = "the run is over" if refresh.done else f"every {interval:g} s, Ctrl-C to stop"
    counts = f"{state.num_events} events, {state.history.num_checkpoints} checkpoints"
    return f"{now}  {counts}  ({tail})"


class _OutputError(Exception):
    """Standard output failed while ``--watch`` printed (carried out of the watch as
    what it is, not one of the report's file errors)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _watch(args: argparse.Namespace) -> int:
    """``jaxpop report LOGDIR --watch``: refreshes until Ctrl-C or the run is over."""
    from jaxpop import report, storage
    from jaxpop.storage.seed_state import holds_unmigrated_seed_run

    if holds_unmigrated_seed_run(args.log_dir):  # (said once: the run appears when migrated)
        _say(
            f"{args.log_dir} holds learned_optimization's {storage.SEED_STATE_FILE}: migrate "
            f"it with `jaxpop migrate-seed-state {args.log_dir}` (watching for the run)",
            file=sys.stderr,
        )
    live = None
    last: dict[str, report.Report | None] = {"report": None}  # the newest read
    try:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.text import Text

        console = Console()
        if console.is_terminal and not args.quiet:
            live = Live(console=console, auto_refresh=False, transient=False)
    except ImportError:
        pass

    def show(refresh: report.Refresh) -> None:
        if refresh.report is not None:
            last["report"] = refresh.report
        status = _status(refresh, args.interval)
        if live is not None:
            body = [Text(status)]
            if refresh.report is not None:
                body.append(report.summary_renderable(report.summary(refresh.report)))
            live.update(Group(*body), refresh=True)
        elif refresh.changed or refresh.done or refresh.iteration == 1:
            try:
                print(status, flush=True)
                if refresh.changed and refresh.report is not None and not args.quiet:
                    report.print_summary(report.summary(refresh.report))
            except OSError as error:  # (out of the watch: not a file of the report's)
                raise _OutputError(error) from error

    try:
        if live is not None:
            live.start()
        try:
            data = report.watch(
                args.log_dir,
                args.out,
                interval=args.interval,
                max_iterations=args.max_iterations or None,
                log_scale=args.log_scale,
                on_refresh=show,
            )
        finally:
            if live is not None:
                live.stop()
    except KeyboardInterrupt as interrupt:
        # the newest read (the callback's may be one behind: Ctrl-C while writing)
        data = interrupt.report if isinstance(interrupt, report.WatchInterrupted) else None
        data = data or last["report"]
        print("stopped watching")
        if data is not None:  # what was read last, in the files too
            try:
                report.write_report(data, args.out, log_scale=args.log_scale)
            except (OSError, ValueError, ImportError) as e:
                return _report_error(args, e)
            except KeyboardInterrupt:  # (again: each file is whole, of this read or before)
                print(
                    "interrupted again while writing the report: its files may hold an earlier read"
                )
                return 130
    except _OutputError as e:
        return _output_failed(args, e.error)
    except (OSError, ValueError, ImportError, storage.CorruptLogError) as e:
        return _report_error(args, e)
    if data is None:
        return _report_error(args, f"no jaxpop run appeared at {args.log_dir}")
    out_dir = os.path.normpath(args.out) if args.out else report.default_out_dir(data.log_dir)
    _say(f"the report in {out_dir} is as of the run's event {data.state.num_events}")
    return 0


def _migrate_seed_state(args: argparse.Namespace) -> int:
    from jaxpop import storage

    try:
        done = storage.migrate_seed_state(args.src_dir, args.out, seed=args.seed)
    except (
        OSError,  # FileExistsError: the destination holds a jaxpop run's files
        storage.SeedStateError,
        storage.LogDirInUseError,
        storage.CorruptLogError,
        storage.RunMismatchError,
    ) as e:
        _say(f"jaxpop migrate-seed-state: error: {e}", file=sys.stderr)
        return 1
    state = done.state
    _say(
        f"migrated {done.source}: {state.population_size} workers, "
        f"{len(state.history)} generations, {state.history.num_checkpoints} checkpoints"
    )
    _say(
        f"wrote a jaxpop run to {done.log_dir}: resume it with "
        f"PopulationController(..., log_dir={done.log_dir!r}) and a population of "
        f"{state.population_size}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line with ``argv`` (default ``sys.argv[1:]``); returns the status."""
    args = parser().parse_args(argv)
    with _printable_output():
        try:
            return _run(args)
        except OSError as error:  # (the commands catch their files' errors: what is
            return _output_failed(args, error)  # left is printing's)


def _output_failed(args: argparse.Namespace, error: OSError) -> int:
    """Standard output could not be written (``| head -1`` closed it, a full disk):
    says so, unless the reader left (a broken pipe), and silences the flush at exit
    (a second traceback). The files were written before anything was printed."""
    try:  # what is left unwritten goes nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # (no file descriptor: a test's)
        pass
    if not isinstance(error, BrokenPipeError):
        print(f"jaxpop {args.command}: error: cannot write the output: {error}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _printable_output() -> Iterator[None]:
    """Standard output and error that write what their encoding cannot hold escaped
    (``\\u03b2``), not raise: a run's names (say, ``β₁``) printed to an ASCII terminal
    failed the command after its files were written."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")
            changed.append(stream)
    try:
        yield
    finally:
        for stream in changed:
            stream.reconfigure(errors="strict")


def _run(args: argparse.Namespace) -> int:
    if args.command == "report":
        return _report(args)
    if args.command == "migrate-seed-state":
        return _migrate_seed_state(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects others


if __name__ == "__main__":
    sys.exit(main())
