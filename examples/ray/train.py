"""The ``simple_cnn`` population on Ray: the controller and every worker are Ray actors.

The same experiment as ``python -m examples.simple_cnn`` (a population of flax CNNs,
``WinnerTakeAllGenetic`` over the log learning rate, parameters and optimizer state
saved with jaxpop's Orbax store and reported as handles), with the threads replaced by
Ray: the controller is served by :func:`jaxpop.distributed.ray.serve` as a named,
restartable actor on ``<log-dir>/population``, and each worker runs in its own
restartable Ray actor (:func:`jaxpop.distributed.ray.start_workers`), talking to the
controller through a client with the controller's own API. The driver shows progress,
collects garbage at the end and prints the same summary table.

Differences from the threaded example, each because a worker may now be restarted:

* a worker trains until its step reaches ``--steps`` (the threads train ``--steps`` past
  where a resumed run stood): a restarted worker resumes at its latest reported step and
  does only what is left;
* checkpoints are saved synchronously (``ParamStore(async_save=False)``) before they are
  reported, so a worker killed mid-save never leaves the controller a handle to a
  checkpoint that was never finished;
* each worker loads the data set and compiles its training step itself (one
  compilation per worker process; the summary counts those of the processes that
  finished, so a worker restarted after a kill counts once, and the validation
  accuracies its killed process measured are not in the summary: those checkpoints
  show none).

``--kill-after S`` kills worker 0's actor and the controller's actor once, ``S`` seconds
after the first evaluation (as a crash would: Ray restarts both; the controller resumes from its
``log_dir``, the worker from its latest report), to show the run finishing anyway.

``--target-loss L`` ends the run early, once any worker's validation loss is at most ``L``
(``jaxpop.StopWhen(value=L)``): each worker's next ask is answered status ``"finished"``
and its loop returns; the driver sees ``client.done`` and ends any worker actor still
running (:meth:`jaxpop.distributed.ray.WorkerGroup.wait` with ``until_done``).

Run from the repo root::

    python -m examples.ray [--steps 1000] [--workers 4] [--log-dir runs/ray]
        [--address auto] [--kill-after 20] [--target-loss 0.3]

Without ``--address`` (and without ``RAY_ADDRESS`` set) it starts a local Ray instance.
With ``--address`` it joins a running cluster and ships the ``jaxpop`` and ``examples``
packages to it; ``--log-dir`` must then be on storage that every node mounts at the
same path (see ``docs/ray.md``). Use a fresh ``--log-dir``: an existing one is resumed.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from tqdm import tqdm

import examples
import jaxpop
from examples import data as data_lib
from examples import population_cnn
from examples.simple_cnn.train import EXPERIMENT
from jaxpop.checkpointing import ParamStore
from jaxpop.distributed import ray as jaxpop_ray
from jaxpop.logging import Loggers
from jaxpop.storage import RunMismatchError

__all__ = ["main", "run", "train_worker"]

_GRACE_S = 30.0  # once the run is over, how long workers get to return before they are ended


def train_worker(
    worker_id: int,
    client: jaxpop_ray.PopulationClient,
    args: argparse.Namespace,
    logs: Loggers | None = None,
) -> dict[str, Any]:
    """One worker of the population, in its own Ray actor (called again after a restart).

    The threads' loop (:func:`examples.population_cnn.train_worker`) with a client for a
    controller and a synchronous store. ``logs`` is the driver's ``--log`` loggers, as
    Ray ships them (pickled): this actor's copy opens its own worker run (W&B, MLflow)
    or event file (TensorBoard) and closes it when the worker returns. Returns the
    validation accuracy of each
    checkpoint it evaluated (in this incarnation), its number of compilations and the
    data set's name (``None`` when the run was over before it began: an actor restarted
    after the end loads nothing).
    """
    slot = client.maybe_get_worker_data(worker_id, None, 0, None, None)
    if slot is not None and slot.status == "finished":  # the run is over: nothing to do
        return {"accuracies": {}, "compilations": 0, "dataset": None}
    log_dir = os.path.abspath(args.log_dir)
    dataset = data_lib.load_for_example(args.dataset, limit=args.limit)
    example_meta = EXPERIMENT.initial_population(args.workers, np.random.default_rng(args.seed))
    model = population_cnn.Model(EXPERIMENT, dataset, example_meta[0])
    logger = logs if logs is not None and len(logs) else None
    # saved before it is reported: a worker killed mid-save leaves no handle to nothing
    with ParamStore(os.path.join(log_dir, "params"), async_save=False) as store:
        try:
            accuracies = population_cnn.train_worker(
                worker_id,
                client,
                store,
                model,
                dataset,
                args,
                until_step=args.steps,
                logger=logger,
            )
        finally:
            if logger is not None:
                logger.close()
    return {"accuracies": accuracies, "compilations": model.compilations, "dataset": dataset.name}


def _init_ray(args: argparse.Namespace) -> bool:
    """Joins ``--address`` (shipping this code) or starts Ray locally; whether it started."""
    if ray.is_initialized():
        return False
    if args.address:
        py_modules = [os.path.dirname(jaxpop.__file__), os.path.dirname(examples.__file__)]
        ray.init(address=args.address, runtime_env={"py_modules": py_modules})
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:  # logical CPUs: like the threads, the workers share the cores
        cpus = max(os.cpu_count() or 1, math.ceil(args.workers * args.cpus_per_worker))
        ray.init(num_cpus=cpus, include_dashboard=False)
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the population on Ray; returns the summary (also printed)."""
    log_dir = os.path.abspath(args.log_dir)
    if args.dataset == "digits" or args.limit is not None:  # (loaded here only when small)
        dataset = data_lib.load_for_example(args.dataset, limit=args.limit)
        population_cnn.refuse_large_batches([args.batch_size], dataset, args)
    logs = population_cnn.make_loggers(args, "ray")  # made here, shipped to each worker
    started_ray = _init_ray(args)
    start = time.time()
    try:
        population = EXPERIMENT.initial_population(args.workers, np.random.default_rng(args.seed))
        with jaxpop_ray.serve(
            population,
            EXPERIMENT.mutator(args),
            log_dir=os.path.join(log_dir, "population"),
            name=args.name,
            seed=args.seed,
            stop_when=None if args.target_loss is None else jaxpop.StopWhen(args.target_loss),
        ) as client:
            group = jaxpop_ray.start_workers(
                train_worker,
                args.workers,
                args=(client, args, logs),
                num_cpus=args.cpus_per_worker,
                max_restarts=args.max_restarts,
            )
            with group:
                results = _wait(group, client, args, logs)
            logs.finish(client.state)  # the last exploits, the best member's schedule
            population_cnn.keep_loggers(logs, args.log, log_dir)  # (a rerun goes on)
            with ParamStore(os.path.join(log_dir, "params")) as store:
                # every worker is done: a save nobody reported (cut off by a kill) is garbage
                store.collect_garbage(client.state, keep_best=args.keep_best, orphan_grace_s=0)
            returned = [r for r in results if r is not None]  # None: ended at the run's end
            accuracies = {k: v for r in returned for k, v in r["accuracies"].items()}
            summary = population_cnn.summarize(client.state, accuracies)
            summary["controller_restarted"] = client.info()["restarted"]
            summary["done"] = client.done
    finally:
        logs.close()
        if started_ray:
            ray.shutdown()
    datasets = [r["dataset"] for r in returned if r["dataset"] is not None]
    summary.update(
        dataset=datasets[0] if datasets else args.dataset,
        seconds=round(time.time() - start, 1),
        compilations=sum(r["compilations"] for r in returned),
    )
    population_cnn.print_summary(summary)
    return summary


def _wait(
    group: jaxpop_ray.WorkerGroup,
    client: jaxpop_ray.PopulationClient,
    args: argparse.Namespace,
    logs: Loggers,
) -> list[Any]:
    """Waits for the workers, showing progress (and injecting faults with --kill-after),
    handing new exploits to ``logs`` every few seconds.

    Returns once every worker has returned, or once the run is over (``client.done``:
    ``--target-loss`` reached), ending the workers still running a few seconds later
    (their result: ``None``).
    """
    progress = tqdm(
        total=args.workers * args.steps, desc="ray", unit="step", disable=args.no_progress
    )
    reached = [0] * args.workers
    start = None  # when the first evaluation came in
    synced = time.monotonic()
    killed = args.kill_after is None
    while True:
        try:
            results = group.wait(timeout_s=0.5, until_done=client, grace_s=_GRACE_S)
            break
        except TimeoutError:
            pass
        for i, worker in enumerate(client.active_workers):
            reached[i] = max(reached[i], min(worker.step, args.steps))
        progress.update(sum(reached) - progress.n)
        if len(logs) and time.monotonic() - synced >= population_cnn.SYNC_EVERY_S:
            population_cnn.sync_loggers(logs, client.history, args)  # (one round trip)
            synced = time.monotonic()
        if start is None and sum(reached):
            start = time.monotonic()
        if not killed and start is not None and time.monotonic() - start >= args.kill_after:
            killed = True
            group.kill(0)
            ray.kill(client.actor, no_restart=False)
            progress.write("killed worker 0 and the controller; Ray restarts them")
    progress.update(progress.total - progress.n)
    progress.close()
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m examples.ray", description=__doc__.split("\n\n")[0]
    )
    population_cnn.add_flags(
        parser, steps=1000, workers=4, log_dir="runs/ray", steps_until=True, reconfigure=False
    )
    parser.add_argument("--steps-per-exploit", type=int, default=100)
    parser.add_argument(
        "--address", default=None, help="a Ray cluster to join (e.g. auto); default: local"
    )
    parser.add_argument("--name", default="simple_cnn", help="the controller actor's name")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument(
        "--max-restarts", type=int, default=-1, help="per worker actor (-1: always)"
    )
    parser.add_argument(
        "--target-loss",
        type=float,
        default=None,
        metavar="LOSS",
        help="end the run once any worker's validation loss is at most this (StopWhen)",
    )
    parser.add_argument(
        "--kill-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="kill worker 0 and the controller once, this long after the first evaluation",
    )
    try:
        return run(population_cnn.parse(parser, argv))
    except RunMismatchError as error:  # (serve cannot reconfigure a run: no flag helps)
        differences = "\n".join(str(error).splitlines()[:-1])  # (not its reconfigure=True)
        raise SystemExit(
            f"{differences}\nthe Ray example resumes a run only as it started: use another "
            "--log-dir"
        ) from None


if __name__ == "__main__":
    main()
