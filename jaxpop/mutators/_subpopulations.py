"""Small pieces the sub-population mutators (FIRE PBT, MF-PBT) share.

Argument checks that name the argument, exact host ranks, a member's score for ranking
(its own latest value, or the value it copied until it reports one), and the explore step
over a declarative space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxpop.history import History
from jaxpop.mutators import explore as explore_lib
from jaxpop.mutators.base import check_number, copied_value
from jaxpop.types import MetaParams, RawKey

__all__ = [
    "check_population_size",
    "check_sizes",
    "dense_ranks",
    "explore_meta",
    "member_score",
]


def check_sizes(name: str, sizes: Any, *, minimum: int) -> tuple[int, ...]:
    """``sizes`` (a sequence, or a 1-d numpy or jax array) as a tuple of ints, each at
    least ``minimum``, or a clear error."""
    if getattr(sizes, "ndim", None) == 1 and hasattr(sizes, "tolist"):
        sizes = sizes.tolist()
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(
            f"{name} must be a sequence of ints, got {type(sizes).__name__}: {sizes!r:.40}"
        )
    out = tuple(
        int(check_number(f"{name}[{i}]", s, minimum=minimum, inclusive=True, integer=True))
        for i, s in enumerate(sizes)
    )
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


def check_population_size(kind: str, expected: int, got: int, layout: str) -> None:
    """Raises ``ValueError`` when a controller's population does not fit the layout."""
    if got != expected:
        raise ValueError(
            f"{kind} needs a population of {expected} workers ({layout}), got {got}; "
            "pass one initial meta_params per worker"
        )


def dense_ranks(values: Sequence[float | None], mode: str) -> np.ndarray:
    """Exact ordinal ranks as float32: 0 for the best, ties equal, ``inf`` for ``None``,
    NaN and infinities (they rank last and are never copied).

    >>> dense_ranks([2.0, None, 1.0, 2.0], "min").tolist()
    [1.0, inf, 0.0, 1.0]
    """
    sign = -1.0 if mode == "max" else 1.0
    keys = [None if v is None or not math.isfinite(v) else sign * v for v in values]
    order = {v: i for i, v in enumerate(sorted({k for k in keys if k is not None}))}
    return np.asarray([math.inf if k is None else order[k] for k in keys], dtype=np.float32)


def member_score(history: History, generation_id: str) -> float | None:
    """A member's score for ranking: its generation's latest value; before its first
    report, the value of the checkpoint it started from (what it copied), so a member
    that just copied keeps its place instead of dropping out of the ranking."""
    latest = history.latest_evaluated(generation_id)
    if latest is not None:
        return latest.value
    parent = history.branch_point(generation_id)
    source = None if parent is None else history.get_checkpoint(*parent)
    return None if source is None else copied_value(history, source)


def explore_meta(
    key: RawKey,
    space: Any,
    meta_params: MetaParams,
    *,
    resample_probability: float,
    perturbation_factors: tuple[float, ...],
) -> Any:
    """The explore step: each value the space names resampled with
    ``resample_probability``, else perturbed by one of ``perturbation_factors``, inside
    the space (:func:`jaxpop.mutators.explore.explore`)."""
    return explore_lib.explore(
        key,
        space,
        meta_params,
        resample_probability=resample_probability,
        perturbation_factors=perturbation_factors,
    )
