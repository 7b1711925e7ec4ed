"""A population of small models in one jitted step: PBT over learning rate and contrast.

All ``--workers`` members (default 16) live stacked on the device as one
``jaxpop.vectorized.VectorizedPopulation``; one compiled step trains them all with
``jax.vmap`` (the same mini-batch, each member its own augmentation draw). Every
``--eval-every`` steps one compiled round evaluates every member on the held-out split,
and truncation selection copies the best quarter's parameters and optimizer state into
the worst quarter by a gather along the member axis, with explored hyperparameters --
no host round trip, no checkpoint per exploit. The host records the lineage in the same
history as the threaded examples (journaled under ``--log-dir``), with an Orbax snapshot
of the stacked population every round, and resumes from both when restarted on the same
``--log-dir``. With several devices the member axis is sharded over all of them.

Run from the repo root::

    python -m examples.vectorized [--steps 500] [--workers 16] [--log-dir runs/vectorized]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
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
from jaxpop.checkpointing import ParamStore
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
        self.val_images = jnp.asarray(dataset.val_images)
        self.val_labels = jnp.asarray(dataset.val_labels)
        self.mesh = mesh
        self.compilations = 0
        self.selection = functools.partial(selection.truncation, quantile_fraction=0.25)
        self.init = jax.jit(
            functools.partial(
                vz.init,
                init_fn=self._init_member,
                space=SPACE,
                num_members=args.workers,
                optimizer_hparams=_to_optimizer,
            )
        )
        self.train_step = jax.jit(self._train_step)
        self.eval_exploit = jax.jit(self._eval_exploit)

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

    def _train_step(self, pop: vz.VectorizedPopulation, batch):
        self.compilations += 1  # runs only while tracing
        pop, losses = vz.vmap_train_step(self._member_step)(pop, batch)
        return vz.constrain(pop, self.mesh), losses

    def _evaluate(self, params):
        logits = self.net.apply(params, self.val_images)
        return cross_entropy(logits, self.val_labels), accuracy(logits, self.val_labels)

    def _eval_exploit(self, pop: vz.VectorizedPopulation):
        self.compilations += 1
        losses, accs = jax.vmap(self._evaluate)(pop.train_state["params"])
        new, exploit = vz.exploit_explore(
            pop,
            losses,
            space=SPACE,
            selection=self.selection,
            optimizer_hparams=_to_optimizer,
        )
        return vz.constrain(new, self.mesh), exploit, losses, accs


def _mesh(workers: int):
    devices = jax.devices()
    usable = math.gcd(workers, len(devices))
    return vz.member_mesh(devices[:usable]) if usable > 1 else None


def _resume(log, store, model, pop):
    """The lineage and population a previous run left in the log dir, or ``None``."""
    lineage = log.load()
    if lineage is None:
        return None
    latest = lineage.history.latest(lineage.workers[0].generation_id)
    if not isinstance(latest.params, str):
        return None
    pop = vz.restore_snapshot(store, latest.params, jax.eval_shape(lambda: pop), model.mesh)
    return lineage, pop


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the population; returns the summary (also printed)."""
    dataset = data_lib.load(args.dataset, seed=args.seed, limit=args.limit)
    model = _Model(dataset, args, _mesh(args.workers))
    start = time.time()
    key = root_key(args.seed)
    pop = model.init(key)
    if model.mesh is not None:
        pop = vz.shard(pop, model.mesh)
    accuracies: dict = {}
    log = storage.Store(os.path.join(args.log_dir, "population"))
    with ParamStore(os.path.join(args.log_dir, "params")) as store:
        resumed = _resume(log, store, model, pop)
        if resumed is None:
            lineage = vz.lineage_init(pop, key, now=time.time())
        else:
            lineage, pop = resumed
        log.start(lineage)
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
            # one seeded stream per round, so a resumed run sees the same batches
            rng = np.random.default_rng([args.seed, step0])
            batches = data_lib.batches(
                dataset.train_images, dataset.train_labels, args.batch_size, rng
            )
            for _ in range(min(args.eval_every, args.steps - step0)):
                pop, _ = model.train_step(pop, next(batches))
                progress.update(args.workers)
            step = int(pop.step)
            pop, exploit, losses, accs = model.eval_exploit(pop)
            handle = vz.save_snapshot(store, pop)
            lineage, changes = vz.record(
                lineage, losses, step=step, now=time.time(), exploit=exploit, params=handle
            )
            log.append(changes, lineage)
            for i, gen_index in enumerate(np.asarray(exploit.old_generation)):
                accuracies[(vz.generation_id(key, int(gen_index)), step)] = float(accs[i])
            best = int(np.argmin(np.asarray(losses)))
            progress.set_postfix(
                val_loss=f"{float(losses[best]):.3f}",
                acc=f"{float(accs[best]):.3f}",
                copied=int(np.sum(np.asarray(exploit.copied))),
            )
            store.collect_garbage(lineage, keep_best=args.keep_best)
        progress.close()
        store.wait()
        log.close()
    summary = population_cnn.summarize(lineage, accuracies)
    summary.update(
        dataset=dataset.name,
        seconds=round(time.time() - start, 1),
        compilations=model.compilations,
    )
    population_cnn.print_summary(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    population_cnn.add_flags(parser, steps=500, workers=16, log_dir="runs/vectorized")
    parser.add_argument(
        "--model",
        default="mlp",
        choices=sorted(MODELS),
        help="mlp (default: vmaps well on CPU) or cnn (vmapped convolutions are slow on "
        "XLA:CPU, see benchmarks/vectorized_vs_threads.py; fine on GPU/TPU)",
    )
    return run(population_cnn.parse(parser, argv))


if __name__ == "__main__":
    main()
