"""What an example's ``--log-dir`` may be, checked before anything is written there.

The CNN and RL examples keep their run in ``<log-dir>/population`` (and checkpoints in
``<log-dir>/params``); the synthetic example keeps its run in ``--log-dir`` itself. A
folder of the other kind got a second run nested inside it, and ``jaxpop report`` then
showed only one of the two.
"""

from __future__ import annotations

import argparse
import os

from jaxpop.checkpointing import check_directory
from jaxpop.report.data import NotARunError, SeveralRunsError, find_run_dir

__all__ = ["log_dir_arg", "log_dir_problem"]


def log_dir_arg(text: str) -> str:
    """The ``type=`` of a ``--log-dir`` flag: an empty path is a usage error (it wrote
    the run into the current directory), as the ``jaxpop`` command's paths."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no folder")
    return text


def log_dir_problem(log_dir: str, *, run_below: bool = True, params: bool = False) -> str | None:
    """Why ``log_dir`` cannot be an example's ``--log-dir`` (what to pass instead), or
    ``None`` when it can (a new folder, or one holding the example's own run).

    ``run_below``: the example keeps its run in ``<log-dir>/population``; else in
    ``log_dir`` itself. Runs are found as ``jaxpop report`` finds them
    (:func:`jaxpop.report.data.find_run_dir`). ``params``: it keeps checkpoints in
    ``<log-dir>/params`` (a ``ParamStore``: :func:`jaxpop.checkpointing.check_directory`).
    """
    if os.path.lexists(log_dir) and not os.path.isdir(log_dir):
        what = "a link to nothing" if os.path.islink(log_dir) else "a file"
        return f"--log-dir {log_dir} is {what}: pass a folder (a new one starts a run)"
    parent = os.path.dirname(os.path.abspath(log_dir))
    while not os.path.lexists(parent):  # (the nearest entry above that is there)
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"the log dir {log_dir} is below {parent}, which is not a folder: pass a folder"
    for name in ("population",) * run_below + ("params",) * params:
        inside = os.path.join(log_dir, name)
        if os.path.lexists(inside) and not os.path.isdir(inside):
            return f"the log dir {log_dir} holds {name}, which is not a folder: the run keeps one"
    if params:
        try:
            check_directory(os.path.abspath(os.path.join(log_dir, "params")))
        except ValueError as e:
            return f"--log-dir {log_dir}: {e}"
    try:
        run_dir = find_run_dir(log_dir)
    except SeveralRunsError:  # (runs below: the synthetic example's would go beside them)
        if run_below:
            return None
        return (
            f"--log-dir {log_dir} holds several runs (other examples' --log-dirs): this "
            "example keeps its run in --log-dir itself, beside them; use another --log-dir"
        )
    except (OSError, NotARunError):  # (none: nothing of this kind to tell)
        return None
    itself = run_dir == os.fspath(log_dir)
    if run_below and itself:
        parent = os.path.dirname(os.path.abspath(log_dir))
        if os.path.basename(os.path.abspath(log_dir)) == "population" and os.path.isdir(
            os.path.join(parent, "params")
        ):
            return (
                f"--log-dir {log_dir} is the population/ folder of a run: pass its "
                f"--log-dir, {parent}, to resume that run, or use another --log-dir"
            )
        return (
            f"--log-dir {log_dir} is itself a jaxpop run (a controller's log_dir, as the "
            "synthetic example writes): this example keeps its run in "
            "<log-dir>/population, which would nest a second run inside it; use another "
            "--log-dir"
        )
    if not run_below and not itself:
        return (
            f"--log-dir {log_dir} holds a run in {run_dir} (another example's --log-dir): "
            "this example keeps its run in --log-dir itself, beside it; use another --log-dir"
        )
    return None
