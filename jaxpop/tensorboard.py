"""Deprecated: the TensorBoard writer now lives in :mod:`jaxpop.logging.tensorboard`.

Every name this module had is re-exported unchanged (:class:`TensorBoardWriter`,
:func:`writers`, :func:`available_backend`, ``Backend``), so code written against it
keeps working; importing it warns once with a ``DeprecationWarning``. New code uses
``jaxpop.logging`` (:class:`jaxpop.logging.TensorBoardLogger`, or
``jaxpop.logging.make_loggers(["tensorboard"], ...)``), which also logs exploits and the
best member.
"""

from __future__ import annotations

import warnings

from jaxpop.logging.tensorboard import Backend, TensorBoardWriter, available_backend, writers

__all__ = ["Backend", "TensorBoardWriter", "available_backend", "writers"]

warnings.warn(
    "jaxpop.tensorboard is deprecated: import TensorBoardWriter from "
    "jaxpop.logging.tensorboard, or use jaxpop.logging.make_loggers(['tensorboard'], ...)",
    DeprecationWarning,
    stacklevel=2,
)
