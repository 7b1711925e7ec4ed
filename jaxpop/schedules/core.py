"""Deprecated: the schedule combinators now live in :mod:`jaxpop.schedules.base`.

Every name is re-exported unchanged; importing this module warns once with a
``DeprecationWarning`` (``jaxpop.core`` is the one core module).
"""

from __future__ import annotations

import warnings

from jaxpop.schedules.base import (
    Schedule,
    constant,
    host_step,
    is_traced,
    join,
    merge,
    per_leaf,
    to_host,
    tree_equal,
)

__all__ = [
    "Schedule",
    "constant",
    "host_step",
    "is_traced",
    "join",
    "merge",
    "per_leaf",
    "to_host",
    "tree_equal",
]

warnings.warn(
    "jaxpop.schedules.core is deprecated: import from jaxpop.schedules (or jaxpop.schedules.base)",
    DeprecationWarning,
    stacklevel=2,
)
