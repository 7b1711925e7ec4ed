"""A population of CNN workers in threads: what the ``simple_cnn`` and ``complex_cnn`` share.

Each worker (:func:`train_worker`, also what ``examples.ray`` runs in Ray actors) asks
the controller for its data, loads the parameters it names (an Orbax checkpoint handle,
or ``None`` for a fresh start), trains with the hyperparameters it names, and every
``eval_every`` steps evaluates on the held-out split, saves ``(params, opt_state)`` with
the Orbax store and reports the validation loss with the handle; the report's answer
says whether to go on or to load other work. Hyperparameters reach the compiled training step as
arrays (``jaxpop.hparams``): the step compiles once (per batch size) however often they
change.

An :class:`Experiment` says what differs between examples: the hyperparameters, how
they map to the optimizer and augmentation, how they mutate, which mutator decides.

``--log tensorboard wandb mlflow`` (any of them) sends each evaluation, each exploit and
the best member's schedule there through :mod:`jaxpop.logging`: the workers call
``log_worker`` after each report, the driver calls ``sync`` every few seconds (the new
exploits) and ``finish`` at the end (the best member and its schedule).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging
import math
import os
import pickle
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm import tqdm

from examples import data as data_lib
from examples.cnn import CNN, accuracy, augment, cross_entropy
from examples.log_dirs import log_dir_arg, log_dir_problem
from examples.tables import cell, print_table
from jaxpop import Controller, PopulationController, PopulationState, report
from jaxpop.checkpointing import (
    DamagedCheckpointError,
    MissingCheckpointError,
    ParamStore,
    UnknownCheckpointFormatError,
)
from jaxpop.hparams import as_traced, make_optimizer, select_hparams, set_hparams
from jaxpop.logging import BACKENDS, Loggers, RunLogger, parse_backends
from jaxpop.logging import make_loggers as make_run_loggers
from jaxpop.logging.mlflow import resolve_tracking_uri
from jaxpop.mutators.base import Mutator
from jaxpop.storage import RunMismatchError
from jaxpop.storage.atomic import write_atomic

__all__ = [
    "Experiment",
    "Model",
    "RunFlagsError",
    "TrainState",
    "add_flags",
    "data_streams",
    "keep_loggers",
    "make_loggers",
    "refuse_large_batches",
    "run",
    "summarize",
    "sync_loggers",
    "train_worker",
]

SYNC_EVERY_S = 2.0  # how often the driver hands new exploits to the loggers
LOGGERS_FILE = "loggers.pickle"  # in --log-dir: the loggers a rerun goes on with


class RunFlagsError(ValueError):
    """The run in ``--log-dir`` was started with other flags than this command's: its
    checkpoints do not fit the model (the message says which flag to check)."""


@struct.dataclass
class TrainState:
    """What a worker checkpoints: the model parameters and the optimizer state."""

    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What one example decides.

    Attributes:
      name: shown in the progress bar.
      initial_population: ``n -> [meta_params] * n`` (one per worker).
      mutator: ``args -> Mutator``.
      optimizer_keys: ``{meta_params name: optax.adam argument}``.
      optimizer_transforms: e.g. ``{"learning_rate": jnp.exp}`` for a log learning rate.
      augmentation_keys: the ``meta_params`` entries that are augmentation strengths.
      batch_size: ``(meta_params, args) -> int``.
      largest_batch_size: ``args -> int``, the largest batch a member may come to train
        with (an explore may move a batch size past the initial ones); ``None``: the
        initial members' largest.
      label_smoothing_key: the ``meta_params`` entry holding label smoothing, if any.
    """

    name: str
    initial_population: Callable[[int, np.random.Generator], list[dict[str, Any]]]
    mutator: Callable[[argparse.Namespace], Mutator]
    optimizer_keys: Mapping[str, str]
    optimizer_transforms: Mapping[str, Callable[[Any], Any]] = dataclasses.field(
        default_factory=dict
    )
    augmentation_keys: tuple[str, ...] = ()
    batch_size: Callable[[Mapping[str, Any], argparse.Namespace], int] = lambda meta, args: (
        args.batch_size
    )
    largest_batch_size: Callable[[argparse.Namespace], int] | None = None
    label_smoothing_key: str | None = None

    def traced(self, meta_params: Mapping[str, Any]) -> dict[str, jax.Array]:
        """The numeric hyperparameters the compiled step reads, as float32 arrays."""
        names = [*self.optimizer_keys, *self.augmentation_keys]
        if self.label_smoothing_key is not None:
            names.append(self.label_smoothing_key)
        return as_traced({k: meta_params[k] for k in names})


class Model:
    """The jitted functions of one experiment on one data set, shared by all threads.

    ``net``: the flax module to train (default: the examples' CNN for the data set).
    """

    def __init__(
        self,
        experiment: Experiment,
        dataset: data_lib.Dataset,
        example_meta: Mapping[str, Any],
        net: Any = None,
    ):
        self.experiment = experiment
        self.net = CNN(num_classes=dataset.num_classes) if net is None else net
        self.tx = make_optimizer(
            optax.adam,
            example_meta,
            keys=experiment.optimizer_keys,
            transforms=experiment.optimizer_transforms,
        )
        self.val_images = jnp.asarray(dataset.val_images)
        self.val_labels = jnp.asarray(dataset.val_labels)
        self.compilations = 0
        self.train_step = jax.jit(self._train_step)
        self.evaluate = jax.jit(self._evaluate)
        self.init = jax.jit(self._init)
        self.abstract_state = jax.eval_shape(self._init, jax.random.key(0))

    def _init(self, key: jax.Array) -> TrainState:
        params = self.net.init(key, self.val_images[:1])
        return TrainState(params, self.tx.init(params))

    def _train_step(self, state, images, labels, hp, key) -> tuple[TrainState, jax.Array]:
        self.compilations += 1  # runs only while tracing
        ex = self.experiment
        opt_state = set_hparams(
            state.opt_state, select_hparams(hp, ex.optimizer_keys, ex.optimizer_transforms)
        )
        if ex.augmentation_keys:
            images = augment(images, key, {k: hp[k] for k in ex.augmentation_keys})
        smoothing = hp[ex.label_smoothing_key] if ex.label_smoothing_key else 0.0

        def loss_fn(params):
            return cross_entropy(self.net.apply(params, images), labels, smoothing)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = self.tx.update(grads, opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    def _evaluate(self, state: TrainState) -> tuple[jax.Array, jax.Array]:
        logits = self.net.apply(state.params, self.val_images)
        return cross_entropy(logits, self.val_labels), accuracy(logits, self.val_labels)


def train_worker(
    worker_id: int,
    controller: Controller,
    store: ParamStore,
    model: Model,
    dataset: data_lib.Dataset,
    args: argparse.Namespace,
    *,
    until_step: int,
    progress: tqdm | None = None,
    logger: RunLogger | None = None,
    stop: threading.Event | None = None,
) -> dict[tuple[str, int], float]:
    """One worker of the population, until its step reaches ``until_step`` (or ``stop``
    is set: another worker failed, and the run ends).

    ``controller`` is a :class:`jaxpop.PopulationController` (threads) or a
    :class:`jaxpop.distributed.ray.PopulationClient` (Ray), both a
    :class:`jaxpop.Controller`: the loop is the same. It asks
    for this worker's slot once, then calls the controller once per evaluation:
    ``report`` records the checkpoint and says whether to switch to other work. Worker 0
    also collects the store's garbage every ``args.gc_every`` evaluations. With a
    ``logger`` (:mod:`jaxpop.logging`) each evaluation is logged: the validation loss,
    the accuracy and the hyperparameters, at the step. Its batches and key come from
    :func:`data_streams`, seeded by the step it starts at (a resumed run draws new
    batches). Returns the validation accuracy of each checkpoint it evaluated.
    """
    accuracies: dict[tuple[str, int], float] = {}
    reached = until_step - args.steps  # the progress bar counts steps towards until_step
    data = controller.maybe_get_worker_data(worker_id, None, 0, None, None)
    while data is not None and data.status == "waiting":  # restarted inside a round
        if stop is not None and stop.is_set():
            return accuracies
        time.sleep(0.01)
        held = data
        data = controller.maybe_get_worker_data(
            worker_id, held.generation_id, held.step, held.params, held.meta_params
        ) or held.replace(status="active")  # (None: the round kept it; load it and go on)
    if data is not None and data.status == "finished":  # restarted after the run ended
        return accuracies
    rng, key = data_streams(args.seed, worker_id, 0 if data is None else data.step)
    while True:
        if data is not None:
            generation_id, meta, step = data.generation_id, data.meta_params, data.step
            if data.params is None:
                key, init_key = jax.random.split(key)
                state = model.init(init_key)
            else:  # copied from a checkpoint; the new hyperparameters go in below
                try:
                    state = store.restore(data.params, model.abstract_state)
                except MissingCheckpointError:  # gone: the controller sends a way out
                    data = controller.checkpoint_missing(
                        worker_id, generation_id, step, exists=store.exists
                    )
                    continue
                except UnknownCheckpointFormatError:
                    raise  # (whole, but not this jaxpop's to read: kept, and the run stops)
                except DamagedCheckpointError as error:  # (a machine crash's, say)
                    # back to an older save, as for a missing one: the damaged one stays
                    # damaged, and a rerun would load it again and fail the same way
                    print(
                        f"worker {worker_id}: {error}; going back to an older save", file=sys.stderr
                    )
                    data = controller.checkpoint_missing(
                        worker_id, generation_id, step, exists=store.exists
                    )
                    continue
                except ValueError as error:  # (its shapes are another data set's images')
                    raise RunFlagsError(
                        "the checkpoints in this --log-dir do not fit this model (another "
                        "--dataset?): rerun with the run's flags, or use another --log-dir "
                        f"({error})"
                    ) from None
            hp = model.experiment.traced(meta)
            batch_size = model.experiment.batch_size(meta, args)
            batches = data_lib.batches(dataset.train_images, dataset.train_labels, batch_size, rng)
            data = None
        if step >= until_step or (stop is not None and stop.is_set()):
            return accuracies
        images, labels = next(batches)
        key, step_key = jax.random.split(key)
        state, _ = model.train_step(state, images, labels, hp, step_key)
        step += 1
        if progress is not None and step > reached:  # not again after a copy rewinds it
            progress.update(min(step, until_step) - reached)
            reached = min(step, until_step)
        if step % args.eval_every == 0 or step == until_step:
            loss, acc = (float(x) for x in model.evaluate(state))
            handle = store.save(generation_id, step, state)
            data = controller.set_eval_and_ask(worker_id, generation_id, step, handle, loss)
            if logger is not None:
                logger.log_worker(
                    worker_id,
                    step,
                    loss,
                    meta,
                    metrics={"accuracy": acc},
                    generation_id=generation_id,
                )
            while data is not None and data.status == "waiting":  # a synchronous round
                if stop is not None and stop.is_set():
                    return accuracies
                time.sleep(0.01)
                data = controller.maybe_get_worker_data(
                    worker_id, generation_id, step, handle, meta
                )
            if data is not None and data.status == "finished":  # StopWhen: the run is over
                accuracies[(generation_id, step)] = acc
                return accuracies
            accuracies[(generation_id, step)] = acc
            if progress is not None:
                progress.set_postfix(worker=worker_id, val_loss=f"{loss:.3f}", acc=f"{acc:.3f}")
            if worker_id == 0 and (step // args.eval_every) % args.gc_every == 0:
                store.collect_garbage(controller, keep_best=args.keep_best)  # bounded disk
            # done -- unless the report sent it back to a copy below the end (a round it
            # trained past was decided meanwhile): it trains that copy to the end too, so
            # every member ends evaluated at until_step, none on an untrained copy
            if step >= until_step and (data is None or data.step >= until_step):
                return accuracies


def data_streams(seed: int, worker_id: int, step: int) -> tuple[np.random.Generator, jax.Array]:
    """The batches' generator and the JAX key (initialisation, augmentation) of a worker
    that starts at ``step``: a fresh run's (``step`` 0) are those of ``(seed,
    worker_id)``; a resumed run's also depend on the step it resumes at, so it goes on
    with batches it has not drawn (it replayed the fresh run's first ones)."""
    key = jax.random.key(seed * 1009 + worker_id)
    if step == 0:
        return np.random.default_rng([seed, worker_id]), key
    return np.random.default_rng([seed, worker_id, step]), jax.random.fold_in(key, step)


def add_flags(
    parser: argparse.ArgumentParser,
    *,
    steps: int,
    workers: int,
    log_dir: str,
    batch_size: bool = True,
    steps_until: bool = False,
    reconfigure: bool = True,
):
    """The flags every CNN example takes (``--batch-size`` only with ``batch_size``: an
    example whose hyperparameters hold the batch size has none; ``steps_until``: its
    workers train until their step reaches ``--steps``, not ``--steps`` more;
    ``--reconfigure`` only with ``reconfigure``: an example that runs the controller
    with :func:`run`)."""
    more = "this many more steps than where it stands (a rerun on the same --log-dir goes on)"
    until = "until its step reaches this (a rerun on the same --log-dir finishes what is left)"
    parser.add_argument(
        "--steps",
        type=int,
        default=steps,
        help=f"each worker trains {until if steps_until else more}",
    )
    parser.add_argument("--workers", type=int, default=workers, help="population size")
    parser.add_argument(
        "--log-dir",
        type=log_dir_arg,
        default=log_dir,
        help="controller state (in <log-dir>/population) and checkpoints",
    )
    parser.add_argument("--dataset", default="digits", choices=data_lib.DATASETS)
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="cifar10 only: images read from its train split (a tenth held out for validation)",
    )
    if batch_size:
        parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--keep-best", type=int, default=4, help="checkpoints kept by GC")
    parser.add_argument("--gc-every", type=int, default=8, help="evaluations between GCs")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the hyperparameters, the initialisation and the batches (a resumed "
        "worker's batches also by the step it resumes at: it draws new ones), not the "
        "train/validation split, which stays fixed (a run resumed with another seed "
        "validates on the same images)",
    )
    parser.add_argument("--no-progress", action="store_true")
    if reconfigure:
        parser.add_argument(
            "--reconfigure",
            action="store_true",
            help="resume a --log-dir's run with other mutator settings (say another "
            "exploit interval); without it that is refused",
        )
    parser.add_argument(
        "--log",
        nargs="+",
        action="extend",
        default=[],
        choices=BACKENDS,
        metavar="BACKEND",
        help="also log each evaluation, each exploit and the best member's schedule to "
        "tensorboard (<log-dir>/tensorboard), wandb (one run per worker in a group; "
        "WANDB_MODE=offline works offline) and/or mlflow (a parent run with a nested run "
        "per worker; MLFLOW_TRACKING_URI, default sqlite:///<log-dir>/mlflow.db); "
        "several allowed",
    )
    parser.add_argument(
        "--tensorboard", action="store_true", help="the same as --log tensorboard (deprecated)"
    )


def make_loggers(args: argparse.Namespace, name: str) -> Loggers:
    """The loggers ``--log`` names (:func:`jaxpop.logging.make_loggers`), for population
    ``name``, with the command line as their config; on a rerun on the same
    ``--log-dir``, the loggers of the run before (:func:`keep_loggers`).

    Files go under ``--log-dir`` (as an absolute path: Ray actors may start elsewhere):
    TensorBoard's to ``tensorboard/``, W&B's to ``wandb/``; MLflow's to
    ``MLFLOW_TRACKING_URI`` when set, else to ``sqlite:///<log-dir>/mlflow.db``. A
    backend's failure is logged as a warning and the run goes on (``errors="warn"``).
    """
    log_dir = os.path.abspath(args.log_dir)
    kept = _kept_loggers(log_dir, args.log)
    if kept is not None:
        return kept
    mlflow: dict[str, Any] = {}
    if "mlflow" in args.log and not os.environ.get("MLFLOW_TRACKING_URI"):
        if importlib.util.find_spec("sqlalchemy") is None:
            raise SystemExit(
                "--log mlflow: the default store, sqlite:///<log-dir>/mlflow.db, needs the "
                "full mlflow package (pip install 'jaxpop[mlflow]'); or set "
                "MLFLOW_TRACKING_URI (a tracking server, or a file: store with "
                "MLFLOW_ALLOW_FILE_STORE=true)"
            )
        os.makedirs(log_dir, exist_ok=True)
        mlflow["tracking_uri"] = f"sqlite:///{os.path.join(log_dir, 'mlflow.db')}"
    # a logging failure (a full disk, a service down) is a warning: training goes on
    logs = make_run_loggers(
        args.log, log_dir=log_dir, name=name, config=vars(args), mlflow=mlflow, errors="warn"
    )
    keep_loggers(logs, args.log, log_dir)
    return logs


def keep_loggers(logs: Loggers, backends: Sequence[str], log_dir: str) -> None:
    """Keeps ``logs`` (a pickle, ``<log_dir>/loggers.pickle``) for a rerun on the same
    ``log_dir``: it logs no exploit a run before it logged (TensorBoard's
    ``exploits/count`` went 1..8, then 1..12 again), to the same W&B group and MLflow
    parent run. Beside them: the backends, the absolute ``log_dir`` and the
    ``MLFLOW_TRACKING_URI`` (a relative path in it made absolute) they were made for
    (:func:`_kept_loggers` starts new ones where these changed). Called when they are
    made and after each sync that logged something; a failure to write it is a warning
    (the run goes on; a rerun may log again what was logged since the last write, never
    less)."""
    if not backends:
        return
    log_dir = os.path.abspath(log_dir)
    path = os.path.join(log_dir, LOGGERS_FILE)
    kept = {
        "backends": list(backends),
        "loggers": logs,
        "log_dir": log_dir,
        "tracking_uri": _tracking_uri(),
    }
    try:
        os.makedirs(log_dir, exist_ok=True)
        write_atomic(path, pickle.dumps(kept))
    except OSError as error:
        logging.getLogger("jaxpop").warning(
            "jaxpop: could not keep the loggers in %s: %s", path, error
        )


def _unreadable(path: str, error: Exception) -> str:
    """Why the loggers kept in ``path`` cannot be read, and what to do."""
    settings = sorted(set(re.findall(r"\b(?:MLFLOW|WANDB)_[A-Z0-9_]+", str(error))))
    if isinstance(error, ImportError):
        cause = (
            "a package the run before logged with is missing: install it (pip install "
            "'jaxpop[mlflow]' or 'jaxpop[wandb]', as the error says), or "
        )
    elif settings:
        cause = (
            f"set {', '.join(settings)} as the run before had it (for a file: MLflow "
            "store, MLFLOW_ALLOW_FILE_STORE=true), or "
        )
    elif isinstance(error, (EOFError, pickle.UnpicklingError)):
        cause = "the file is torn: "
    else:
        cause = (
            "run with the packages and environment settings the run before had "
            "(MLFLOW_TRACKING_URI, MLFLOW_ALLOW_FILE_STORE=true for a file: store, "
            "WANDB_*), or "
        )
    return (
        f"--log: cannot read the loggers of the run before ({path}: {error!r}); {cause}"
        "delete the file to start new ones (they log the run's exploits again)"
    )


def _tracking_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` (``None`` when unset), a relative path in it made absolute
    as :class:`~jaxpop.logging.MlflowLogger` makes it (the same string from another
    working directory is another store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return resolve_tracking_uri(uri) if uri else None


def _is_kept(kept: Any) -> bool:
    """Whether ``kept`` is what :func:`keep_loggers` pickles (from any jaxpop version)."""
    return (
        isinstance(kept, dict)
        and isinstance(kept.get("backends"), list)
        and all(isinstance(b, str) for b in kept["backends"])
        and isinstance(kept.get("loggers"), Loggers)
        and isinstance(kept.get("log_dir", ""), str)
        and isinstance(kept.get("tracking_uri", ""), str | None)
    )


def _kept_log_dir(kept: Mapping[str, Any]) -> str | None:
    """The ``--log-dir`` the kept loggers were made for: as kept beside them, or, in a
    pickle from before it was, the folder above the one a kept logger writes to
    (TensorBoard's ``<log-dir>/tensorboard``, W&B's ``<log-dir>/wandb``)."""
    if "log_dir" in kept:
        return kept["log_dir"]
    for logger in getattr(kept["loggers"], "loggers", ()):
        folder = getattr(logger, "log_dir", None)  # (TensorBoardLogger's)
        if folder is None:  # (WandbLogger's)
            folder = getattr(logger, "_options", {}).get("dir")
        if isinstance(folder, str) and os.path.basename(folder) in ("tensorboard", "wandb"):
            return os.path.dirname(os.path.abspath(folder))
    return None


def _same_dir(kept: str | None, log_dir: str) -> bool:
    if kept == log_dir:
        return True
    try:  # (the same directory through another path: a link)
        return kept is not None and os.path.samefile(kept, log_dir)
    except OSError:  # (gone: the folder was moved)
        return False


def _kept_loggers(log_dir: str, backends: Sequence[str]) -> Loggers | None:
    """The loggers :func:`keep_loggers` kept in ``log_dir`` for ``backends``; ``None``
    when there are none, or, with a note on stderr, when they were made for other
    backends (in any order, the same), another folder (``log_dir`` copied or moved:
    they would log into the original's), or another ``MLFLOW_TRACKING_URI``."""
    path = os.path.join(log_dir, LOGGERS_FILE)
    if not backends or not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            kept = pickle.load(f)
    except Exception as error:  # (a library gone, a setting unset, a torn file)
        raise SystemExit(_unreadable(path, error)) from None
    if not _is_kept(kept):  # (another program's pickle: a TypeError deep in reading it)
        raise SystemExit(
            f"--log: {path} is not the loggers an example keeps (it holds a "
            f"{type(kept).__name__}); delete the file to start new ones (they log the run's "
            "exploits again), and pass --log-dir only folders you trust: the file is "
            "loaded with pickle, which runs code"
        )
    uri, kept_dir = _tracking_uri(), _kept_log_dir(kept)
    if set(kept["backends"]) != set(backends):
        why = f"the run before logged to {' '.join(kept['backends'])}"
    elif kept_dir is None:
        why = "an older jaxpop kept them without the --log-dir they were made for"
    elif not _same_dir(kept_dir, log_dir):
        why = (
            f"they were made for --log-dir {kept_dir}: a copied or moved folder; "
            "they would log into that run's"
        )
    elif "mlflow" in backends and kept.get("tracking_uri") != uri:
        why = (
            f"they were made for MLFLOW_TRACKING_URI={kept['tracking_uri'] or '(unset)'}, "
            f"now {uri or '(unset)'}"
        )
    else:
        return kept["loggers"]
    print(
        f"--log {' '.join(backends)}: new loggers ({why}); the run's exploits are logged again",
        file=sys.stderr,
    )
    return None


def sync_loggers(logs: Loggers, history: Any, args: argparse.Namespace) -> None:
    """Hands the new exploits of ``history`` to ``logs`` and keeps the loggers for a
    rerun (:func:`keep_loggers`) when there were some."""
    if len(logs) and logs.sync(history):
        keep_loggers(logs, args.log, os.path.abspath(args.log_dir))


def _join(
    threads: Sequence[threading.Thread],
    logs: Loggers,
    controller: Controller,
    args: argparse.Namespace,
) -> None:
    """Waits for ``threads``, handing new exploits to ``logs`` every few seconds."""
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=SYNC_EVERY_S)
            sync_loggers(logs, controller.history, args)


def run(experiment: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """Trains the population; returns the summary (also printed)."""
    dataset = data_lib.load_for_example(args.dataset, limit=args.limit)  # (the split is the data's)
    population = experiment.initial_population(args.workers, np.random.default_rng(args.seed))
    refuse_another_examples_run(os.path.join(args.log_dir, "population"), population[0])
    sizes = [experiment.batch_size(m, args) for m in population]
    if experiment.largest_batch_size is not None:
        sizes.append(experiment.largest_batch_size(args))
    refuse_large_batches(sizes, dataset, args)
    model = Model(experiment, dataset, population[0])
    accuracies: dict = {}
    logs = make_loggers(args, experiment.name)
    start = time.time()
    try:
        with (
            logs,  # closed however the run ends
            ParamStore(os.path.join(args.log_dir, "params")) as store,
            PopulationController(
                population,
                experiment.mutator(args),
                os.path.join(args.log_dir, "population"),
                seed=args.seed,
                reconfigure=args.reconfigure,
            ) as controller,
        ):
            progress = tqdm(
                total=args.workers * args.steps,
                desc=experiment.name,
                unit="step",
                disable=args.no_progress,
            )
            # each worker trains --steps more steps than where it stands (a resumed run goes on)
            until = [w.step + args.steps for w in controller.active_workers]

            failed: dict[int, BaseException] = {}
            stop = threading.Event()  # set when a worker fails: the others end too

            def work(i: int) -> None:
                try:
                    accuracies.update(
                        train_worker(
                            i,
                            controller,
                            store,
                            model,
                            dataset,
                            args,
                            until_step=until[i],
                            progress=progress,
                            logger=logs if len(logs) else None,
                            stop=stop,
                        )
                    )
                except BaseException as error:  # the run fails (a thread's error would not)
                    # the others stop too (a round would wait for this one forever); nothing
                    # is journaled for it, so a resumed run trains it again
                    failed[i] = error
                    stop.set()

            threads = [
                threading.Thread(target=work, args=(i,), name=f"worker-{i}")
                for i in range(args.workers)
            ]
            for t in threads:
                t.start()
            try:
                _join(threads, logs, controller, args)
            except KeyboardInterrupt:  # the workers end at their next step; all is journaled
                stop.set()
                for t in threads:
                    while t.is_alive():
                        # (another Ctrl-C waits too: each worker is one step from its end)
                        with contextlib.suppress(KeyboardInterrupt):
                            t.join()
                progress.close()
                if not failed:  # (a worker's failure first: it is what ended the run)
                    print(
                        "interrupted: rerun the same command (the same --log-dir) to go on: "
                        "each worker trains --steps more steps from where it stopped",
                        file=sys.stderr,
                    )
                    raise SystemExit(130) from None  # (the status of a SIGINT)
            if failed:
                i = min(failed)
                if isinstance(failed[i], RunFlagsError):  # (a traceback says no more)
                    raise SystemExit(str(failed[i])) from None
                raise RuntimeError(f"worker {i} failed: {failed[i]!r}") from failed[i]
            logs.finish(controller.state)  # the last exploits, the best member's schedule
            keep_loggers(logs, args.log, os.path.abspath(args.log_dir))  # (a rerun goes on)
            progress.close()
            store.wait()
            # every save of this run is settled and recorded: what no history holds (a save
            # a killed earlier run never reported, its temporary directory) goes too
            store.collect_garbage(controller.state, keep_best=args.keep_best, orphan_grace_s=0)
            summary = summarize(controller.state, accuracies)
    except RunMismatchError as error:  # (a traceback says no more, and names no flag)
        hint = ""
        if "reconfigure=True" in str(error) and not args.reconfigure:
            hint = "\n(on the command line: --reconfigure)"
        raise SystemExit(f"{error}{hint}") from None
    summary.update(
        dataset=dataset.name,
        seconds=round(time.time() - start, 1),
        compilations=model.compilations,
    )
    print_summary(summary)
    return summary


def refuse_another_examples_run(log_dir: str, meta_params: Mapping[str, Any]) -> None:
    """Exits when ``log_dir`` holds a run whose workers train with other hyperparameters
    (another example's): its refusal named only the mutators' settings, and
    ``--reconfigure`` resumed it here, rewrote its record and failed on a missing
    hyperparameter (helper-218). Read without its lock, as ``jaxpop report`` reads."""
    from jaxpop import storage

    try:
        state = storage.read_state(log_dir)
    except (OSError, storage.CorruptLogError):
        return  # (the controller says what is wrong with it)
    if state is None:
        return
    names = sorted(meta_params)
    for worker in state.workers:
        meta = worker.meta_params
        theirs = sorted(meta) if isinstance(meta, Mapping) else None
        if theirs != names:
            what = f"the hyperparameters {theirs}" if theirs is not None else repr(meta)[:60]
            raise SystemExit(
                f"{os.path.dirname(log_dir) or '.'} holds another example's run: its workers "
                f"train with {what}, this example with {names}; use another --log-dir"
            )


def refuse_large_batches(
    batch_sizes: Sequence[int], dataset: data_lib.Dataset, args: argparse.Namespace
) -> None:
    """Exits, before any worker starts, when a batch is larger than the training set
    (each worker failed with a traceback)."""
    largest, images = max(batch_sizes), len(dataset.train_images)
    if largest > images:
        remedies = ["a smaller --batch-size"] if hasattr(args, "batch_size") else []
        remedies += ["a larger --limit"] if dataset.name == "cifar10" else []
        raise SystemExit(
            f"a batch of {largest} images is larger than the training set ({images} images "
            f"of {dataset.name}): pass {' or '.join(remedies)}"
        )


def summarize(state: PopulationState, accuracies: Mapping) -> dict[str, Any]:
    """Best member, every member's score and the exploit count, as ``jaxpop report``.

    A member's score is its latest evaluated checkpoint along its lineage
    (:class:`jaxpop.report.Member`), shown with the hyperparameters *that checkpoint*
    trained with (not the member's current ones, which a copy has just mutated); the
    best member is :func:`jaxpop.report.build`'s.
    """
    built = report.build(state)
    members = []
    for member in built.members:
        scored = member.scored
        meta = member.meta_params if scored is None else scored.meta_params
        members.append(
            {
                "worker": member.worker,
                "generation": member.generation_id if scored is None else scored.generation_id,
                "step": None if scored is None else scored.step,
                "val_loss": math.inf if scored is None else scored.value,
                "val_accuracy": None if scored is None else accuracies.get(scored.ref),
                "meta_params": {k: v if isinstance(v, int) else float(v) for k, v in meta.items()},
                # it copied (or started a generation) since that value was scored
                "moved_on": scored is not None and scored.generation_id != member.generation_id,
            }
        )
    best = None if built.best is None else members[built.best.worker]
    return {
        "members": members,
        "best": best,
        "exploit_events": len(built.exploits),
        "generations": len(built.history),
        "checkpoints": built.history.num_checkpoints,
    }


def print_summary(summary: Mapping[str, Any]) -> None:
    """Prints the summary as a small table."""
    keys = list(summary["members"][0]["meta_params"])
    header = ["worker", "val_loss", "val_acc", "step", *keys]
    rows = [
        [
            f"{m['worker']}{' *' if m is summary['best'] else ''}"
            f"{' ~' if m.get('moved_on') else ''}",
            cell(m["val_loss"]),
            cell(m["val_accuracy"]),
            cell(m["step"]),
            *(cell(m["meta_params"][k]) for k in keys),
        ]
        for m in summary["members"]
    ]
    print_table(header, rows)
    if any(m.get("moved_on") for m in summary["members"]):
        print(
            "~ copied, or started a new generation, since that value was scored (`jaxpop "
            "report` shows the hyperparameters of both)"
        )
    best = summary["best"]
    if best is not None:
        print(
            f"best: worker {best['worker']}, val loss {best['val_loss']:.4f} at step "
            f"{best['step']}, val accuracy {cell(best['val_accuracy'])}, trained with "
            f"hyperparameters {best['meta_params']}"
        )
    print(
        f"{summary['exploit_events']} exploit events (generations copied from a checkpoint), "
        f"{summary['generations']} generations, "
        f"{summary['checkpoints']} checkpoints on {summary['dataset']} in "
        f"{summary['seconds']} s; train step compiled {summary['compilations']} time(s)"
    )


def largest_seed(workers: int) -> int:
    """The largest ``--seed`` whose worker keys (worker ``i``'s: ``seed * 1009 + i``,
    :func:`data_streams`) an int64 holds."""
    return (2**63 - workers) // 1009


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, worker_keys: bool = True
) -> argparse.Namespace:
    """The examples' flags, checked. ``worker_keys``: the example makes worker keys from
    the seed (:func:`largest_seed`; the vectorized example takes its key from
    ``root_key(seed)``, any seed below 2**64)."""
    args = parser.parse_args(argv)
    if min(args.workers, args.steps, args.eval_every, args.gc_every) < 1:
        parser.error("--workers, --steps, --eval-every and --gc-every must be positive")
    if getattr(args, "batch_size", 1) < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be positive")
    if args.limit is not None and args.dataset != "cifar10":  # (it was ignored)
        parser.error(f"--limit must be left out with --dataset {args.dataset}: it reads cifar10")
    if args.seed < 0 or args.keep_best < 0:
        parser.error("--seed and --keep-best must be at least 0")
    most = largest_seed(args.workers)
    if worker_keys and args.seed > most:
        parser.error(f"--seed must be at most {most} with --workers {args.workers}")
    elif args.seed >= 2**64:
        parser.error("--seed must be below 2**64")
    if getattr(args, "steps_per_exploit", 1) < 1:  # (simple_cnn, the Ray example)
        parser.error("--steps-per-exploit must be positive")
    seconds = getattr(args, "seconds_per_exploit", 1.0)  # (complex_cnn)
    if not (0 < seconds < float("inf")):
        parser.error(f"--seconds-per-exploit must be a positive number of seconds, got {seconds}")
    problem = log_dir_problem(args.log_dir, params=True)  # (before anything is written there)
    if problem is not None:
        parser.error(problem)
    args.log = parse_backends([*args.log, *(["tensorboard"] * args.tensorboard)])
    return args
