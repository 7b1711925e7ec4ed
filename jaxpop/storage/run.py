"""What a run is: its population size and mutator, recorded in a ``log_dir`` and compared.

A run description is plain data, ``{"population_size": n, "mutator": description}``,
where the description comes from :meth:`jaxpop.Mutator.describe` (``None``: not known,
as for a ``Store`` used directly), ``"description_format"`` (:data:`DESCRIPTION_FORMAT`,
absent from runs recorded before it) and, in a ``log_dir``, ``"started"``: when the run
began (a time budget counts from it; never compared). Snapshots record it;
:func:`check_resume` refuses to resume a run as another one. An option the mutator
gained after a run started (absent from the recorded configuration) matches when it is
left at its default.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DESCRIPTION_FORMAT",
    "RunMismatchError",
    "check_resume",
    "describe_run",
    "differences",
    "is_description",
]

#: How ``Mutator.describe()`` describes configurations. A run description without it
#: was recorded by an older jaxpop, which described some objects by less (a schedule by
#: its function's name, a ``Piecewise`` by its repr, a deep structure cut off at a
#: depth): such a record matches what the fuller description stands for (as it matched
#: before), a record with it only an equal description.
DESCRIPTION_FORMAT = 2

logger = logging.getLogger("jaxpop")

Run = Mapping[str, Any]


class RunMismatchError(ValueError):
    """A ``log_dir`` holds a run started with another population size or mutator."""


def describe_run(population_size: int, mutator: Any) -> dict[str, Any]:
    """The description of a run of ``population_size`` workers driven by ``mutator``."""
    return {
        "population_size": population_size,
        "mutator": mutator.describe(),
        "description_format": DESCRIPTION_FORMAT,
    }


def is_description(run: Any) -> bool:
    """Whether ``run`` has the shape of a run description."""
    if type(run) is not dict or type(run.get("population_size")) is not int:
        return False
    started = run.get("started", 0.0)  # (when the run began: recorded, never compared)
    if type(started) is not float or not math.isfinite(started):
        return False
    mutator = run.get("mutator")
    return mutator is None or (
        type(mutator) is dict
        and type(mutator.get("kind")) is str
        and type(mutator.get("config")) is dict
    )


def differences(recorded: Run, run: Run, *, recorded_in: str = "in the log_dir") -> list[str]:
    """What differs between two descriptions, one line each (a mutator ``None`` matches
    any); ``recorded_in`` says where ``recorded`` was read, in the lines."""
    lines = []
    if recorded["population_size"] != run["population_size"]:
        lines.append(
            f"population size: {recorded['population_size']} {recorded_in}, "
            f"{run['population_size']} now"
        )
    old, new = recorded.get("mutator"), run.get("mutator")
    if old is None or new is None:
        return lines
    if old["kind"] != new["kind"]:
        lines.append(f"mutator: {old['kind']} {recorded_in}, {new['kind']} now")
        return lines
    older = recorded.get("description_format") != DESCRIPTION_FORMAT
    defaults = new.get("defaults") or {}
    for name in dict.fromkeys([*old["config"], *new["config"]]):
        was, now = old["config"].get(name, _ABSENT), new["config"].get(name, _ABSENT)
        renamed = _RENAMED_VALUES.get((new["kind"], name))
        if renamed is not None and type(was) is str and type(now) is str:
            was, now = renamed.get(was, was), renamed.get(now, now)
        if was is _ABSENT and name in defaults and defaults[name] == now:
            continue  # an option added since the run started, left at its default
        if not _same(was, now, older):
            where, was, now = _first_difference(was, now, name, older)
            lines.append(f"mutator {where}: {was!r:.120} {recorded_in}, {now!r:.120} now")
    return lines


_ABSENT = "(absent)"

#: (mutator kind, option) -> {deprecated value: its current name}: a run started with
#: either name resumes with the other.
_RENAMED_VALUES: dict[tuple[str, str], dict[Any, Any]] = {
    ("PopulationBasedTraining", "selection"): {"winner_take_all": "copy_best"},
}


def _same(was: Any, now: Any, older: bool) -> bool:
    """Whether a recorded value describes what ``now`` does. ``older``: recorded before
    :data:`DESCRIPTION_FORMAT`, where a description was a name or a repr (a jaxpop or
    optax schedule's closure, a ``Piecewise``), or cut off at a depth (``"..."``, also
    where an object met inside itself is a ``"<cycle>"`` now): such a record matches
    the fuller description now given where that name or repr does, and anything where
    it was cut off (as it matched before: upgrading jaxpop refuses no resume)."""
    if was == now and (older or _exactly(was, now)):
        return True
    if older and (was == "..." or now == "<cycle>"):
        return True
    if older and type(was) is str and type(now) is dict:
        return was in (now.get("function"), now.get("older"))
    if type(was) is dict and type(now) is dict and was.keys() == now.keys():
        # ("older", the repr, only matches a run recorded by it: the fields say more, and
        # a repr may change with numpy's print options)
        keys = [k for k in was if not (k == "older" and "fields" in was)]
        return all(_same(was[k], now[k], older) for k in keys)
    if type(was) is tuple and type(now) is tuple and len(was) == len(now):
        return all(_same(a, b, older) for a, b in zip(was, now, strict=True))
    return False


def _exactly(was: Any, now: Any) -> bool:
    """Whether two equal descriptions are the same: ``==`` takes ``True`` for ``1`` and
    ``1.0``, and ``0.0`` for ``-0.0``, where a run given one journals the other's type or
    sign from the resume on (for a description recorded by an older jaxpop, ``==`` is
    kept: upgrading refuses no resume)."""
    if type(was) is not type(now):
        return False
    if type(was) is float:
        return math.copysign(1.0, was) == math.copysign(1.0, now)
    if type(was) is dict:
        return all(_exactly(v, now[k]) for k, v in was.items())
    if type(was) is tuple:
        return all(map(_exactly, was, now))
    return True


def _first_difference(a: Any, b: Any, where: str, older: bool) -> tuple[str, Any, Any]:
    """The innermost place where two described values differ (so a message shows it)."""
    if type(a) is dict and type(b) is dict:
        for k in dict.fromkeys([*a, *b]):
            x, y = a.get(k, _ABSENT), b.get(k, _ABSENT)
            if not _same(x, y, older):
                return _first_difference(x, y, f"{where}.{k}", older)
    if type(a) is tuple and type(b) is tuple and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if not _same(x, y, older):
                return _first_difference(x, y, f"{where}[{i}]", older)
    return where, a, b


def _locked_changes(recorded: Run, run: Run) -> list[str]:
    """The options the new description names as ``locked`` (those its mutator's recorded
    state is in: PBT's ``time_attr``, MF-PBT's ``t_ready``, FIRE's layout; a subclass's
    too) whose values differ, compared as values (``10`` and ``10.0``, a tuple and an
    array of the same numbers are the same option)."""
    old, new = recorded.get("mutator"), run.get("mutator")
    if old is None or new is None or old["kind"] != new["kind"]:
        return []
    return [
        name
        for name in sorted(new.get("locked") or ())
        if name in old["config"]
        and _plain(old["config"][name]) != _plain(new["config"].get(name, _ABSENT))
    ]


def _plain(value: Any) -> Any:
    """A described option as a value: an array as its values, a list as a tuple."""
    if type(value) is dict and set(value) == {"array", "shape", "values"}:
        value = value["values"]
    if type(value) in (list, tuple):
        return tuple(_plain(v) for v in value)
    return value


def check_resume(
    log_dir: str,
    recorded: Run | None,
    run: Run,
    population_size: int,
    reconfigure: bool,
    *,
    recorded_in: str = "in the log_dir",
    elsewhere: str = "use another log_dir",
) -> bool:
    """Refuses to resume the run ``log_dir`` holds as ``run``; says whether to record ``run``.

    Args:
      log_dir: for messages.
      recorded: the description the ``log_dir`` holds, ``None`` if it has none (storage
        version 1, which recorded only the state, of ``population_size`` workers).
      run: what the run is resumed as.
      population_size: the stored state's population size.
      reconfigure: accept another configuration of the same mutator kind.
      recorded_in, elsewhere: for messages: where ``recorded`` was read, and what to do
        instead (for a saved state: ``"in the saved state"``, and load another).

    Returns:
      Whether ``run`` should be recorded (it says more than, or differs from, what is).

    Raises:
      RunMismatchError: another population size or mutator kind, or another
        configuration without ``reconfigure``; the message lists what differs.
    """
    known = recorded or {"population_size": population_size, "mutator": None}
    lines = differences(known, run, recorded_in=recorded_in)
    if not lines:  # (a record of an older description format is made anew: strict from now;
        # never the other way, by a run described without the format: a Store used directly)
        current = run.get("description_format") == DESCRIPTION_FORMAT
        return (
            recorded is None
            or (recorded.get("mutator") is None and run["mutator"] is not None)
            or (current and recorded.get("description_format") != DESCRIPTION_FORMAT)
        )
    same_kind = known["population_size"] == run["population_size"] and not any(
        line.startswith("mutator:") for line in lines
    )
    locked = _locked_changes(known, run) if same_kind else []
    if reconfigure and same_kind and not locked:
        logger.warning("jaxpop: resuming %s reconfigured: %s", log_dir, "; ".join(lines))
        return True
    if locked:
        fix = (
            f"a run cannot change {', '.join(locked)}: its mutator's recorded state is in "
            f"their units (or layout), which another value would misread: {elsewhere}"
        )
    elif same_kind:
        fix = f"pass reconfigure=True to resume it with the new configuration, or {elsewhere}"
    else:
        fix = f"a run cannot change its population size or mutator kind: {elsewhere}"
    raise RunMismatchError(
        f"{log_dir} holds a run started differently:\n  " + "\n  ".join(lines) + f"\n{fix}"
    )
