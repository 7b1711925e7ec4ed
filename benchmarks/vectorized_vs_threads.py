"""The same population trained as N controller threads vs one vectorized population.

Both modes train ``--members`` members (default 8 and 16) of the same model for the same
``--steps`` steps each on the same data (the examples' default digits set, batches of
``--batch-size``, member ``i`` drawing from ``np.random.default_rng([seed, i])``), with
Adam over a per-member log learning rate, an evaluation on the held-out split every
``--eval-every`` steps and winner-take-all PBT (every member but the best copies the
best and perturbs its log learning rate by ``0.5 * normal``, clipped):

* ``threads``: ``examples.population_cnn``'s own worker loop (``train_worker``) in ``N``
  threads with a :class:`jaxpop.PopulationController` (``WinnerTakeAllGenetic``,
  journal in a temporary log dir) and Orbax checkpoints through
  :class:`jaxpop.checkpointing.ParamStore`: every evaluation saves ``(params,
  opt_state)``, every exploit restores the parent's checkpoint. The model is
  ``examples.population_cnn.Model`` with ``examples.simple_cnn``'s experiment.
* ``vectorized``: :mod:`jaxpop.vectorized`: one jitted ``vmap_train_step`` (one batch
  per member) and, every ``--eval-every`` steps, one jitted round that evaluates every
  member and runs ``exploit_explore`` on device; the host records the lineage with
  ``vectorized.record`` (no snapshot inside the timed loop; its cost is reported apart).

Two models: the examples' CNN (``examples.cnn.CNN``) and a small MLP on the flattened
8x8 digits (64-128-10). Reported per model and size:

* member steps per second of the whole population (``members x steps / wall time``,
  evaluations, checkpoints, exploits and lineage bookkeeping included) and the ratio;
* the cost of one exploit round: ``vectorized``: the jitted ``exploit_explore``
  (gather along the member axis + explore) on the population; ``threads``: every
  member's checkpoint saved with the ``ParamStore`` (async, then waited for) and the
  ``N - 1`` copying members' restored from the winner's handle. Best of ``--repeats``.
* for reference, one ``save_snapshot`` of the stacked population (what
  ``examples/vectorized`` writes per round for resumption).

Compile time is excluded: every jitted function (and one Orbax save/restore) is called
once before anything is timed. The machine may be shared: compare the ratios.

Usage (from the repo root)::

    python benchmarks/vectorized_vs_threads.py [--members 8 16] [--steps 60]
        [--models cnn mlp] [--eval-every 20]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples import data as data_lib
from examples import population_cnn
from examples.cnn import MODELS, accuracy, cross_entropy
from examples.simple_cnn import train as simple_cnn
from jaxpop import PopulationController
from jaxpop import vectorized as vz
from jaxpop.checkpointing import ParamStore
from jaxpop.hparams import make_optimizer
from jaxpop.keys import root_key
from jaxpop.mutators import explore

LOG_LR_RANGE = simple_cnn.LOG_LR_RANGE
SPACE = {"log_lr": explore.uniform(*LOG_LR_RANGE)}


# -- (a) threads: examples.population_cnn's worker loop, controller, Orbax -----------------------
def _thread_model(name: str, dataset, example_meta) -> population_cnn.Model:
    """``population_cnn.Model`` of ``examples.simple_cnn``'s experiment, network by name."""
    net = MODELS[name](num_classes=dataset.num_classes)
    return population_cnn.Model(simple_cnn.EXPERIMENT, dataset, example_meta, net=net)


def _worker_args(members: int, steps: int, eval_every: int, batch_size: int, seed: int):
    return argparse.Namespace(
        workers=members,
        steps=steps,
        eval_every=eval_every,
        steps_per_exploit=eval_every,
        batch_size=batch_size,
        seed=seed,
        keep_best=4,
        gc_every=8,
    )


def _warm_up_threads(model: population_cnn.Model, dataset, population, batch_size, tmp) -> list:
    """Compiles the jitted functions and runs Orbax once; returns ``N`` fresh states."""
    states = [model.init(jax.random.key(i)) for i in range(len(population))]
    images, labels = dataset.train_images[:batch_size], dataset.train_labels[:batch_size]
    hp = model.experiment.traced(population[0])
    state, loss = model.train_step(states[0], images, labels, hp, jax.random.key(0))
    jax.block_until_ready((state, loss, model.evaluate(state)))
    with ParamStore(os.path.join(tmp, "warm")) as store:
        handle = store.save("warm", 0, state)
        store.wait()
        jax.block_until_ready(store.restore(handle, model.abstract_state))
    return states


def run_threads(model_name, dataset, members, steps, eval_every, batch_size, seed, repeats):
    population = simple_cnn.initial_population(members, np.random.default_rng(seed))
    model = _thread_model(model_name, dataset, population[0])
    args = _worker_args(members, steps, eval_every, batch_size, seed)
    with tempfile.TemporaryDirectory() as tmp:
        states = _warm_up_threads(model, dataset, population, batch_size, tmp)
        compiled = model.compilations
        start = time.perf_counter()
        with (
            ParamStore(os.path.join(tmp, "params")) as store,
            PopulationController(
                population,
                simple_cnn.EXPERIMENT.mutator(args),
                os.path.join(tmp, "population"),
                seed=seed,
            ) as controller,
        ):
            common.in_threads(
                functools.partial(population_cnn.train_worker, until_step=steps),
                members,
                controller,
                store,
                model,
                dataset,
                args,
            )
            store.wait()
            seconds = time.perf_counter() - start
            history = controller.history
            exploits = sum(1 for gen in history if history.branch_point(gen) is not None)
        recompiled = model.compilations - compiled

        # one exploit round as host mode does it: N saves, N - 1 restores of the winner
        with ParamStore(os.path.join(tmp, "exploit")) as store:
            rounds = iter(range(1, 1 << 30))

            def exploit_round():
                step = next(rounds)
                handles = [store.save(f"m{i}", step, s) for i, s in enumerate(states)]
                store.wait()
                for _ in range(members - 1):
                    jax.block_until_ready(store.restore(handles[0], model.abstract_state))

            exploit_s = common.best_of(exploit_round, repeats)
    return {
        "steps_per_s": members * steps / seconds,
        "seconds": seconds,
        "exploit_events": exploits,
        "recompilations": recompiled,
        "exploit_ms": 1e3 * exploit_s,
    }


# -- (b) vectorized: jaxpop.vectorized ------------------------------------------------------------
def _to_optimizer(hparams):
    return {"learning_rate": jnp.exp(hparams["log_lr"])}


def _winner_take_all(key, scores):
    """Every member's parent is the best one (which therefore keeps going)."""
    del key
    best = jnp.argmin(jnp.where(jnp.isfinite(scores), scores, jnp.inf))
    return jnp.full(scores.shape, best, jnp.int32)


def _perturb(key, space, hparams):
    """``simple_cnn.mutate_fn`` on the stacked hparams: log lr + 0.5 * normal, clipped."""
    del space
    log_lr = hparams["log_lr"]
    step = 0.5 * jax.random.normal(key, log_lr.shape, log_lr.dtype)
    return {"log_lr": jnp.clip(log_lr + step, *LOG_LR_RANGE)}


class _VectorModel:
    """The jitted population functions of one model (compare examples/vectorized)."""

    def __init__(self, model: str, dataset, members: int, initial_log_lr):
        self.net = MODELS[model](num_classes=dataset.num_classes)
        self.tx = make_optimizer(optax.adam, {"learning_rate": 1e-3})
        self.val_images = jnp.asarray(dataset.val_images)
        self.val_labels = jnp.asarray(dataset.val_labels)
        self.compilations = 0
        hparams = {"log_lr": jnp.asarray(initial_log_lr, jnp.float32)}
        self.init = jax.jit(
            functools.partial(
                vz.init,
                init_fn=self._init_member,
                space=SPACE,
                num_members=members,
                hparams=hparams,
                optimizer_hparams=_to_optimizer,
            )
        )
        self.train_step = jax.jit(self._train_step)
        self.eval_exploit = jax.jit(self._eval_exploit)
        self.exploit = jax.jit(self._exploit)

    def _init_member(self, key):
        params = self.net.init(key, self.val_images[:1])
        return {"params": params, "opt_state": self.tx.init(params)}

    def _member_step(self, state, batch, hparams):
        del hparams  # already written into the optimizer state
        images, labels = batch

        def loss_fn(params):
            return cross_entropy(self.net.apply(params, images), labels)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        return {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
        }, loss

    def _train_step(self, pop, batch):
        self.compilations += 1  # runs only while tracing
        return vz.vmap_train_step(self._member_step, per_member_batch=True)(pop, batch)

    def _evaluate(self, params):
        logits = self.net.apply(params, self.val_images)
        return cross_entropy(logits, self.val_labels), accuracy(logits, self.val_labels)

    def _exploit(self, pop, scores):
        self.compilations += 1
        return vz.exploit_explore(
            pop,
            scores,
            space=SPACE,
            selection=_winner_take_all,
            explore=_perturb,
            optimizer_hparams=_to_optimizer,
        )

    def _eval_exploit(self, pop):
        losses, _ = jax.vmap(self._evaluate)(pop.train_state["params"])
        new, exploit = self._exploit(pop, losses)
        return new, exploit, losses


def run_vectorized(model_name, dataset, members, steps, eval_every, batch_size, seed, repeats):
    initial = simple_cnn.initial_population(members, np.random.default_rng(seed))
    model = _VectorModel(model_name, dataset, members, [m["log_lr"] for m in initial])
    key = root_key(seed)
    streams = [
        data_lib.batches(
            dataset.train_images,
            dataset.train_labels,
            batch_size,
            np.random.default_rng([seed, i]),
        )
        for i in range(members)
    ]

    def next_batch():
        images, labels = zip(*(next(s) for s in streams), strict=True)
        return np.stack(images), np.stack(labels)

    # warm up: compile init, the step and the evaluate + exploit round
    pop = model.init(key)
    warm, _ = model.train_step(pop, next_batch())
    jax.block_until_ready(model.eval_exploit(warm))
    compiled = model.compilations

    start = time.perf_counter()
    pop = model.init(key)
    lineage = vz.lineage_init(pop, key, now=time.time())
    exploits = 0
    for s in range(steps):
        pop, _ = model.train_step(pop, next_batch())
        if (s + 1) % eval_every == 0:
            step = int(pop.step)
            pop, exploit, losses = model.eval_exploit(pop)
            lineage, _ = vz.record(lineage, losses, step=step, now=time.time(), exploit=exploit)
            exploits += int(np.sum(np.asarray(exploit.copied)))
    jax.block_until_ready(pop)
    seconds = time.perf_counter() - start
    recompiled = model.compilations - compiled

    scores = jnp.arange(members, dtype=jnp.float32)

    def exploit_round():
        jax.block_until_ready(model.exploit(pop, scores))

    exploit_s = common.best_of(exploit_round, repeats)
    with tempfile.TemporaryDirectory() as tmp, ParamStore(tmp) as store:

        def snapshot():
            vz.save_snapshot(store, pop, name=f"snap{time.perf_counter_ns()}")
            store.wait()

        snapshot_s = common.best_of(snapshot, repeats)
    return {
        "steps_per_s": members * steps / seconds,
        "seconds": seconds,
        "exploit_events": exploits,
        "recompilations": recompiled,
        "exploit_ms": 1e3 * exploit_s,
        "snapshot_ms": 1e3 * snapshot_s,
    }


def measure(model, dataset, members, steps, eval_every, batch_size, seed, repeats) -> dict:
    setting = (model, dataset, members, steps, eval_every, batch_size, seed, repeats)
    threads = run_threads(*setting)
    vec = run_vectorized(*setting)
    return {
        "model": model,
        "members": members,
        "steps": steps,
        "eval_every": eval_every,
        "threads_steps_per_s": threads["steps_per_s"],
        "vectorized_steps_per_s": vec["steps_per_s"],
        "step_speedup": vec["steps_per_s"] / threads["steps_per_s"],
        "threads_seconds": threads["seconds"],
        "vectorized_seconds": vec["seconds"],
        "threads_exploit_events": threads["exploit_events"],
        "vectorized_exploit_events": vec["exploit_events"],
        "threads_recompilations": threads["recompilations"],
        "vectorized_recompilations": vec["recompilations"],
        "exploit_ms_checkpoint": threads["exploit_ms"],
        "exploit_ms_vectorized": vec["exploit_ms"],
        "exploit_speedup": threads["exploit_ms"] / vec["exploit_ms"],
        "snapshot_ms_vectorized": vec["snapshot_ms"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=common.positive_int, nargs="+", default=[8, 16])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(MODELS))
    parser.add_argument(
        "--steps", type=common.positive_int, default=60, help="training steps per member"
    )
    parser.add_argument(
        "--eval-every", type=common.positive_int, default=20, help="steps between exploits"
    )
    parser.add_argument("--batch-size", type=common.positive_int, default=64)
    parser.add_argument(
        "--repeats", type=common.positive_int, default=3, help="timings of an exploit round"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(*args.members, args.steps, args.eval_every, args.batch_size, args.repeats) < 1:
        parser.error("--members, --steps, --eval-every, --batch-size, --repeats must be >= 1")
    dataset = data_lib.load("digits", seed=args.seed)
    rows = [
        measure(
            k, dataset, m, args.steps, args.eval_every, args.batch_size, args.seed, args.repeats
        )
        for k in args.models
        for m in args.members
    ]
    result = {
        "benchmark": "vectorized_vs_threads",
        **common.environment(),
        "dataset": dataset.name,
        "batch_size": args.batch_size,
        "compile_time": "excluded (warm-up calls before timing)",
        "rows": rows,
    }
    print(json.dumps(result))
    print()
    header = (
        f"{'model':>5}  {'members':>7}  {'threads steps/s':>15}  {'vec steps/s':>11}  "
        f"{'ratio':>6}  {'exploit ckpt ms':>15}  {'exploit vec ms':>14}  {'ratio':>6}  "
        f"{'snapshot ms':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:>5}  {r['members']:>7}  {r['threads_steps_per_s']:>15.0f}  "
            f"{r['vectorized_steps_per_s']:>11.0f}  {r['step_speedup']:>6.2f}  "
            f"{r['exploit_ms_checkpoint']:>15.1f}  {r['exploit_ms_vectorized']:>14.2f}  "
            f"{r['exploit_speedup']:>6.0f}  {r['snapshot_ms_vectorized']:>11.1f}"
        )
    print(
        f"\nsteps/s: member steps per second of the whole population ({args.steps} steps per "
        f"member, evaluation + exploit every {args.eval_every}, batch {args.batch_size}, "
        f"digits), compile time excluded. ratio = vectorized / threads. exploit ckpt: N Orbax "
        f"saves + N-1 restores; exploit vec: jitted exploit_explore (gather + explore), best of "
        f"{args.repeats}. snapshot: one save_snapshot of the stacked population (not in the "
        f"timed loop). devices {', '.join(result['devices'])}; {result['machine']}."
    )
    return result


if __name__ == "__main__":
    main()
