"""Where a population's story goes: TensorBoard, Weights & Biases, MLflow.

One small interface, :class:`RunLogger` (per-worker evaluations, each exploit, the best
member and its schedule), with three implementations: :class:`TensorBoardLogger`,
:class:`WandbLogger` (one W&B run per worker, grouped) and :class:`MlflowLogger` (a
parent run with a nested run per worker). :func:`make_loggers` builds several behind
one :class:`Loggers`; a training loop calls ``log_worker`` after each evaluation, the
driver calls ``sync(history)`` now and then and ``finish(state)`` at the end::

    from jaxpop.logging import make_loggers

    logs = make_loggers(["wandb", "mlflow"], log_dir="runs/pbt", name="pbt")
    ...  # in each worker, after population.set_eval(...):
    logs.log_worker(worker_id, step, loss, meta_params, metrics={"accuracy": acc})
    ...  # in the driver, every few seconds and at the end:
    logs.sync(controller.history)
    logs.finish(controller.state)  # the best member, its schedule; closes

Each library is optional and imported only when its logger is made: ``pip install
'jaxpop[wandb]'``, ``'jaxpop[mlflow]'`` (TensorBoard: ``'jaxpop[report]'`` or
``tensorboardX``); a missing one raises an ``ImportError`` naming the extra. The rest
of jaxpop never imports this package. See ``docs/logging.md``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

from jaxpop.logging.base import (
    BestMember,
    ExploitFeed,
    Loggers,
    RunLogger,
    best_member,
    check_errors,
    exploit_record,
    lineage_records,
    schedule_records,
)
from jaxpop.logging.mlflow import MlflowLogger
from jaxpop.logging.tensorboard import TensorBoardLogger, TensorBoardWriter
from jaxpop.logging.wandb import WandbLogger

__all__ = [
    "BACKENDS",
    "BestMember",
    "ExploitFeed",
    "Loggers",
    "MlflowLogger",
    "RunLogger",
    "TensorBoardLogger",
    "TensorBoardWriter",
    "WandbLogger",
    "best_member",
    "exploit_record",
    "lineage_records",
    "make_loggers",
    "parse_backends",
    "schedule_records",
]

#: The names :func:`make_loggers` takes.
BACKENDS = ("tensorboard", "wandb", "mlflow")


def parse_backends(names: str | Iterable[str] | None) -> list[str]:
    """Backend names as a list without repeats; a string may hold several, comma separated.

    >>> parse_backends("wandb,mlflow")
    ['wandb', 'mlflow']
    >>> parse_backends(["tensorboard", "wandb", "tensorboard"])
    ['tensorboard', 'wandb']

    Raises:
      ValueError: a name not in :data:`BACKENDS`.
      TypeError: ``names`` is not a string or an iterable of strings.
    """
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for item in names:
        if not isinstance(item, str):
            raise TypeError(f"logger names are strings, got {item!r}")
        for name in (n.strip() for n in item.split(",")):
            if name not in BACKENDS:
                raise ValueError(f"unknown logger {name!r}: choose from {', '.join(BACKENDS)}")
            if name not in out:
                out.append(name)
    return out


def make_loggers(
    names: str | Iterable[str] | None,
    *,
    log_dir: str | os.PathLike | None = None,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    tensorboard: Mapping[str, Any] | None = None,
    wandb: Mapping[str, Any] | None = None,
    mlflow: Mapping[str, Any] | None = None,
    errors: str = "raise",
) -> Loggers:
    """The loggers ``names`` (see :func:`parse_backends`) behind one :class:`Loggers`.

    Args:
      names: any of ``"tensorboard"``, ``"wandb"``, ``"mlflow"``.
      log_dir: where local files go: TensorBoard's to ``<log_dir>/tensorboard``, W&B's
        to ``<log_dir>/wandb``. (MLflow writes where its tracking URI says.)
      name: the population's name: the W&B group is ``<name>-<time>-<random>`` and the
        MLflow parent run is called ``name``.
      config: the population's config (say, the command line): W&B config and MLflow
        params.
      tensorboard, wandb, mlflow: more arguments for :class:`TensorBoardLogger`,
        :class:`WandbLogger`, :class:`MlflowLogger` (they win over the ones above).
      errors: ``"raise"`` or ``"warn"``: what a backend's failure does (see
        :class:`Loggers`).

    >>> make_loggers([])
    Loggers([])

    Raises:
      ValueError: an unknown name, or TensorBoard without ``log_dir``.
      ImportError: a backend's library is missing (the message names the extra).
    """
    check_errors(errors)  # (before any backend starts a run)
    loggers: list[RunLogger] = []
    for backend in parse_backends(names):
        if backend == "tensorboard":
            options = dict(tensorboard or {})
            if "log_dir" not in options:
                if log_dir is None:
                    raise ValueError("the TensorBoard logger needs log_dir")
                options["log_dir"] = os.path.join(os.fspath(log_dir), "tensorboard")
            loggers.append(TensorBoardLogger(**options))
        elif backend == "wandb":
            # (random: two populations started in one second share no group)
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            options = {
                "group": None if name is None else f"{name}-{stamp}",
                "dir": None if log_dir is None else os.fspath(log_dir),
                "config": config,
                **(wandb or {}),
            }
            loggers.append(WandbLogger(**options))
        else:
            options = {"name": name, "config": config, **(mlflow or {})}
            loggers.append(MlflowLogger(**options))
    return Loggers(loggers, errors=errors)
