"""A population of small models in one jitted round: PBT over learning rate and contrast.

All ``--workers`` members (default 16) live stacked on the device as one
``jaxpop.vectorized.VectorizedPopulation``. One compiled call per round
(``jaxpop.vectorized.round_fn``, jitted with the population donated) trains every member
``--eval-every`` steps with ``jax.vmap`` inside a ``jax.lax.scan`` (the same mini-batches,
each member its own augmentation draw), evaluates every member on the held-out split,
and lets truncation selection copy the best quarter's parameters and optimizer state
into the worst quarter by a gather along the member axis, with explored
hyperparameters -- one dispatch per round, no host round trip per step, no checkpoint
per exploit. The host records the lineage in the same history as the threaded examples
(journaled under ``--log-dir``), with an Orbax snapshot of the stacked population every
round, and resumes from both when restarted on the same ``--log-dir``. With several
devices the member axis is sharded over as many of them as divide ``--workers`` evenly
(``gcd(workers, devices)``). The round compiles once per length: once, when ``--steps``
is a multiple of ``--eval-every`` (else a shorter last round compiles again).

Run from the repo root::

    python -m examples.vectorized [--steps 500] [--workers 16] [--log-dir runs/vectorized]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from examples import data as data_lib
from examples import population_cnn
from examples.cnn import MODELS, accuracy, augment, cross_entropy
from jaxpop import storage
from jaxpop import vectorized as vz
from jaxpop.checkpointing import DamagedCheckpointError, ParamStore, UnknownCheckpointFormatError
from jaxpop.hparams import make_optimizer
from jaxpop.keys import root_key
from jaxpop.mutators import explore, selection

__all__ = ["SPACE", "main"]

#: The explored hyperparameters: log learning rate and contrast augmentation strength.
SPACE = {
    "log_lr": explore.uniform(math.log(1e-4), math.log(3e-2)),
    "contrast": explore.uniform(0.0, 0.8),
}


def _to_optimizer(hparams):
    return {"learning_rate": jnp.exp(hparams["log_lr"])}


class _Model:
    """The jitted functions of the example on one data set."""

    def __init__(self, dataset: data_lib.Dataset, args: argparse.Namespace, mesh):
        self.net = MODELS[args.model](num_classes=dataset.num_classes)
        self.tx = make_optimizer(optax.adam, {"learning_rate": 1e-3})
        self.sample = jnp.asarray(dataset.val_images[:1])
        self.val = (jnp.asarray(dataset.val_images), jnp.asarray(dataset.val_labels))
        self.mesh = mesh
        self.compilations = 0
        self.selection = functools.partial(selection.truncation, quantile_fraction=0.25)
        self.init = functools.partial(
            vz.init,
            init_fn=self._init_member,
            space=SPACE,
            num_members=args.workers,
            optimizer_hparams=_to_optimizer,
        )
        self._rounds: dict[int, Any] = {}
        # XLA:CPU runs vmapped convolutions inside a scan's loop several times slower
        # than the same steps unrolled (benchmarks/vectorized_step.py)
        self.unroll = args.model == "cnn" and jax.default_backend() == "cpu"

    def round(self, steps: int):
        """The jitted round of ``steps`` training steps (compiled once per length)."""
        if steps not in self._rounds:
            one_round = vz.round_fn(
                self._member_step,
                self._evaluate,
                steps_per_round=steps,
                space=SPACE,
                selection=self.selection,
                optimizer_hparams=_to_optimizer,
                mesh=self.mesh,
                unroll=self.unroll,
            )

            def traced(pop, batches, val):
                self.compilations += 1  # runs only while tracing
                return one_round(pop, batches, val)

            self._rounds[steps] = jax.jit(traced, donate_argnums=0)
        return self._rounds[steps]

    def _init_member(self, key: jax.Array) -> dict[str, Any]:
        init_key, aug_key = jax.random.split(key)
        params = self.net.init(init_key, self.sample)
        return {"params": params, "opt_state": self.tx.init(params), "key": aug_key}

    def _member_step(self, state, batch, hparams):
        images, labels = batch
        key, aug_key = jax.random.split(state["key"])
        images = augment(images, aug_key, {"contrast": hparams["contrast"]})

        def loss_fn(params):
            return cross_entropy(self.net.apply(params, images), labels)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "key": key}, loss

    def _evaluate(self, state, hparams, val):
        del hparams
        images, labels = val
        logits = self.net.apply(state["params"], images)
        return cross_entropy(logits, labels), accuracy(logits, labels)


def _mesh(workers: int):
    devices = jax.devices()
    usable = math.gcd(workers, len(devices))
    return vz.member_mesh(devices[:usable]) if usable > 1 else None


def _resume(log, store, model, pop):
    """The lineage and population a previous run left in the log dir, or ``None``."""
    lineage = log.load()
    if lineage is None:
        return None
    workers = int(pop.generation.shape[0])  # (this command's --workers)
    if lineage.population_size != workers:
        raise SystemExit(
            f"the run in this --log-dir has {lineage.population_size} members, not "
            f"--workers {workers}: rerun with --workers {lineage.population_size}, or use "
            "another --log-dir"
        )
    latest = lineage.history.latest(lineage.workers[0].generation_id)
    if not isinstance(latest.params, str):
        return None
    try:
        pop = vz.restore_snapshot(store, latest.params, jax.eval_shape(lambda: pop), model.mesh)
    except (DamagedCheckpointError, UnknownCheckpointFormatError):
        raise  # (not a flag to change: its message says which file, and how)
    except ValueError as error:  # (its arrays' shapes are another model's, or images')
        raise SystemExit(
            f"the snapshot in this --log-dir does not fit this population (another "
            f"--model or --dataset?): rerun with the run's flags, or use another --log-dir "
            f"({error})"
        ) from None
    return lineage, pop


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the population; returns the summary (also printed)."""
    dataset = data_lib.load_for_example(args.dataset, limit=args.limit)
    population_cnn.refuse_large_batches([args.batch_size], dataset, args)
    model = _Model(dataset, args, _mesh(args.workers))
    start = time.time()
    key = root_key(args.seed)
    pop = model.init(key)
    if model.mesh is not None:
        pop = vz.shard(pop, model.mesh)
    accuracies: dict = {}
    journal = os.path.join(args.log_dir, "population")
    # another example's run, by what its workers train with (before its size is advised)
    population_cnn.refuse_another_examples_run(journal, vz.member_hparams(pop.hparams, 0))
    log = storage.Store(journal, run=vz.run_description(args.workers))
    logs = population_cnn.make_loggers(args, "vectorized")
    with logs, ParamStore(os.path.join(args.log_dir, "params")) as store:
        resumed = _resume(log, store, model, pop)
        if resumed is None:
            lineage = vz.lineage_init(pop, key, now=time.time())
        else:
            lineage, pop = resumed
        try:
            log.start(lineage)
        except storage.RunMismatchError as error:  # (a traceback says no more)
            raise SystemExit(str(error)) from None
        done = int(pop.step)
        progress = tqdm(
            total=args.workers * args.steps,
            initial=args.workers * min(done, args.steps),
            desc="vectorized",
            unit="step",
            disable=args.no_progress,
        )
        while int(pop.step) < args.steps:
            step0 = int(pop.step)
            steps = min(args.eval_every, args.steps - step0)
            # one seeded stream per round, so a resumed run sees the same batches
            rng = np.random.default_rng([args.seed, step0])
            batches = data_lib.batches(
                dataset.train_images, dataset.train_labels, args.batch_size, rng
            )
            stacked = jax.tree.map(lambda *b: np.stack(b), *itertools.islice(batches, steps))
            pop, result = model.round(steps)(pop, stacked, model.val)
            handle = vz.save_snapshot(store, pop)  # written while the round is logged
            lineage, changes = vz.record(lineage, result, now=time.time(), params=handle)
            step = int(result.step)
            accs = np.asarray(result.evaluation)
            losses = np.asarray(result.scores)
            for i, gen_index in enumerate(np.asarray(result.exploit.old_generation)):
                gen = vz.generation_id(lineage.key, int(gen_index))  # (the run's key)
                accuracies[(gen, step)] = float(accs[i])
                if len(logs):
                    hparams = lineage.history.meta_params(gen)
                    metrics = {"accuracy": float(accs[i])}
                    value = float(losses[i])
                    logs.log_worker(i, step, value, hparams, metrics=metrics, generation_id=gen)
            population_cnn.sync_loggers(logs, lineage.history, args)  # (and keeps them)
            # (a NaN loss, a diverged member, is never shown as the best)
            best = 0 if np.isnan(losses).all() else int(np.nanargmin(losses))
            progress.update(args.workers * steps)
            progress.set_postfix(
                val_loss=f"{float(losses[best]):.3f}",
                acc=f"{float(accs[best]):.3f}",
                copied=int(np.sum(np.asarray(result.exploit.copied))),
            )
            # the journal names the snapshot only once it is finalized: a crash before
            # then resumes from the round before, whose snapshot is whole
            store.wait()
            log.append(changes, lineage)
            if (step // args.eval_every) % args.gc_every == 0:
                store.collect_garbage(lineage, keep_best=args.keep_best)
        progress.close()
        store.wait()
        # every save of this run is settled and recorded: what no history holds (a save
        # a killed earlier run never finished, its temporary directory) goes too
        store.collect_garbage(lineage, keep_best=args.keep_best, orphan_grace_s=0)
        log.close()
        logs.finish(lineage)  # the last exploits, the best member's schedule
        population_cnn.keep_loggers(logs, args.log, args.log_dir)  # (a rerun goes on)
    summary = population_cnn.summarize(lineage, accuracies)
    summary.update(
        dataset=dataset.name,
        seconds=round(time.time() - start, 1),
        compilations=model.compilations,
    )
    population_cnn.print_summary(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m examples.vectorized", description=__doc__.split("\n\n")[0]
    )
    population_cnn.add_flags(
        parser,
        steps=500,
        workers=16,
        log_dir="runs/vectorized",
        steps_until=True,
        reconfigure=False,
    )
    parser.add_argument(
        "--model",
        default="mlp",
        choices=sorted(MODELS),
        help="mlp (default: vmaps well on CPU) or cnn (vmapped convolutions are slow on "
        "XLA:CPU, see benchmarks/vectorized_vs_threads.py; fine on GPU/TPU)",
    )
    args = population_cnn.parse(parser, argv, worker_keys=False)  # (its key: root_key(seed))
    try:
        return run(args)
    except KeyboardInterrupt:  # (a traceback said nothing of resuming)
        print(
            "interrupted: rerun the same command (the same --log-dir) to resume from the "
            "last snapshot",
            file=sys.stderr,
        )
        if argv is None:  # run as a program: end it here (the store and loggers are closed)
            # a Ctrl-C that cut an XLA compilation short (the population's first build,
            # or the step's) left it running, and the interpreter's teardown then crashed
            # (a segmentation fault after the line above; the run was fine)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise SystemExit(130) from None  # (the status of a SIGINT)


if __name__ == "__main__":
    main()
