"""A PBT population on one device: a fused round vs a dispatch per step, and vs a loop.

Three models on batches of 64 digits-sized images (8x8x1, random data), Adam with
injected hyperparameters, populations of ``--members`` (default 8 and 16):

* ``tiny``: an MLP 64-32-10, where launching work costs more than the work;
* ``mlp`` and ``cnn``: the examples' models (``examples.cnn.MLP``, ``examples.cnn.CNN``).

**Rounds.** One PBT round is ``--steps-per-round`` (``K``) training steps of every
member, an evaluation on 256 held-out images, an exploit/explore (truncation, the worst
quarter copies the best) and fetching what ``jaxpop.vectorized.record`` needs to the
host. Two ways to run it, both jitted with the population donated:

* ``fused``: one call of ``jaxpop.vectorized.round_fn`` per round (a ``lax.scan`` over
  the ``K`` steps, the evaluation and the exploit in one program), and ``unrolled``, the
  same with the scan unrolled (``unroll=True``);
* ``per-step``: ``K`` calls of the jitted ``jaxpop.vectorized.vmap_train_step``, then one
  jitted evaluation + ``exploit_explore`` (what the example did before the fused round).

Both report member steps per second (``members x K x rounds / seconds``) and the peak
memory per member of their compiled programs (XLA's memory analysis: arguments +
outputs - donated aliases + temporaries; the larger of the two programs for
``per-step``). Where the backend reports device memory (``memory_stats()``, GPU/TPU)
each row also gives the device's peak bytes in use divided by the members; every row
runs in its own process so that this peak is the row's own.

**Steps and exploits, one at a time** (as before): one jitted ``vmap_train_step`` vs a
Python loop of one jitted single-member step per member (``vectorized`` / ``loop``), and
one jitted ``exploit_explore`` vs what host mode does per exploit (every member's state
saved with ``jaxpop.checkpointing.ParamStore``, each copying member's restored).

Each measurement is called once before timing (compilation) and then timed
``--repeats`` times; the best is reported (the machine may be shared: compare ratios
within a run; the three ways to run rounds take turns, so they share the load).

Usage (from the repo root)::

    python benchmarks/vectorized_step.py [--models tiny mlp cnn] [--members 8 16]
        [--steps-per-round 10] [--rounds 5] [--steps 20] [--repeats 3]

Prints one JSON line, then the tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.cnn import CNN, MLP, cross_entropy
from jaxpop import vectorized as vz
from jaxpop.checkpointing import ParamStore
from jaxpop.hparams import make_optimizer
from jaxpop.keys import root_key
from jaxpop.mutators import explore, selection

SPACE = {"learning_rate": explore.log_uniform(1e-4, 1e-2)}
SELECTION = functools.partial(selection.truncation, quantile_fraction=0.25)
TX = make_optimizer(optax.adam, {"learning_rate": 1e-3})


class TinyMLP(nn.Module):
    """The flattened image, one hidden layer of 32."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


MODELS: dict[str, Callable[[], nn.Module]] = {"tiny": TinyMLP, "mlp": MLP, "cnn": CNN}


def _member_fns(net: nn.Module) -> tuple[Callable, Callable, Callable]:
    """``init(key)``, ``step(state, batch, hparams)`` and ``evaluate(state, hparams, val)``
    of one member of ``net``."""

    def init(key: jax.Array) -> dict[str, Any]:
        params = net.init(key, jnp.zeros((1, 8, 8, 1)))
        return {"params": params, "opt_state": TX.init(params)}

    def step(state: dict[str, Any], batch: Any, hparams: Any) -> tuple[dict[str, Any], Any]:
        del hparams  # already in the optimizer state
        images, labels = batch

        def loss_fn(params: Any) -> jax.Array:
            return cross_entropy(net.apply(params, images), labels)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state}, loss

    def evaluate(state: dict[str, Any], hparams: Any, val: Any) -> jax.Array:
        del hparams
        images, labels = val
        return cross_entropy(net.apply(state["params"], images), labels)

    return init, step, evaluate


def _images(rng: np.random.Generator, *shape: int) -> tuple[jax.Array, jax.Array]:
    return (
        jnp.asarray(rng.uniform(size=(*shape, 8, 8, 1)).astype(np.float32)),
        jnp.asarray(rng.integers(0, 10, shape).astype(np.int32)),
    )


def _program_bytes(jitted: Any, *args: Any) -> int:
    """Peak bytes of ``jitted``'s compiled program for ``args`` (XLA's memory analysis)."""
    stats = jitted.lower(*args).compile().memory_analysis()
    if stats is None:
        return 0
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )


def _device_peak_bytes() -> int | None:
    """The device's peak bytes in use so far, where the backend reports it."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else stats["peak_bytes_in_use"]


def _best_of_interleaved(
    runs: dict[str, Callable[[Any], Any]], pop: Any, repeats: int
) -> dict[str, float]:
    """Like ``common.best_of`` for several ways to run the same work, taking turns (on a
    shared machine each sees the same load); each call gets a fresh copy of ``pop``
    (``run`` donates it), made before the clock starts. The first call compiles."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats + 1):
        for name, run in runs.items():
            fresh = jax.block_until_ready(jax.tree.map(jnp.copy, pop))
            start = time.perf_counter()
            run(fresh)
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def measure_rounds(
    model: str, members: int, steps_per_round: int, rounds: int, repeats: int
) -> dict[str, Any]:
    """Fused vs per-step rounds of ``members`` members of ``model``."""
    init, step, evaluate = _member_fns(MODELS[model]())
    rng = np.random.default_rng(0)
    batches = _images(rng, steps_per_round, 64)  # leaves (K, 64, ...)
    val = _images(rng, 256)
    pop = vz.init(root_key(0), init, SPACE, members)

    def fused_round(unroll: int | bool) -> Any:
        return jax.jit(
            vz.round_fn(
                step,
                evaluate,
                steps_per_round=steps_per_round,
                space=SPACE,
                selection=SELECTION,
                unroll=unroll,
            ),
            donate_argnums=0,
        )

    fused, unrolled = fused_round(1), fused_round(True)
    one_step = jax.jit(vz.vmap_train_step(step), donate_argnums=0)
    evaluate_all = jax.vmap(evaluate, in_axes=(0, 0, None))

    def eval_exploit(p: vz.VectorizedPopulation, val: Any) -> tuple[Any, Any]:
        scores = evaluate_all(p.train_state, p.hparams, val)
        p, exploit = vz.exploit_explore(p, scores, space=SPACE, selection=SELECTION)
        return p, (scores, exploit)

    eval_exploit = jax.jit(eval_exploit, donate_argnums=0)
    per_batch = [jax.tree.map(lambda x, t=t: x[t], batches) for t in range(steps_per_round)]

    def run_fused(p: vz.VectorizedPopulation, fused: Any = fused) -> None:
        for _ in range(rounds):
            p, result = fused(p, batches, val)
            jax.device_get((result.scores, result.exploit))  # what record reads

    def run_per_step(p: vz.VectorizedPopulation) -> None:
        for _ in range(rounds):
            for b in per_batch:
                p, _ = one_step(p, b)
            p, fetched = eval_exploit(p, val)
            jax.device_get(fetched)

    best = _best_of_interleaved(
        {
            "per_step": run_per_step,
            "fused": run_fused,
            "unrolled": functools.partial(run_fused, fused=unrolled),
        },
        pop,
        repeats,
    )
    t_fused, t_unrolled, t_step = best["fused"], best["unrolled"], best["per_step"]
    fused_bytes = _program_bytes(fused, pop, batches, val)
    step_bytes = max(
        _program_bytes(one_step, pop, per_batch[0]), _program_bytes(eval_exploit, pop, val)
    )
    peak = _device_peak_bytes()
    member_steps = members * steps_per_round * rounds
    return {
        "fused_steps_per_s": member_steps / t_fused,
        "per_step_steps_per_s": member_steps / t_step,
        "fused_speedup": t_step / t_fused,
        "unrolled_steps_per_s": member_steps / t_unrolled,
        "unrolled_speedup": t_step / t_unrolled,
        "fused_bytes_per_member": fused_bytes / members,
        "per_step_bytes_per_member": step_bytes / members,
        "device_peak_bytes_per_member": None if peak is None else peak / members,
    }


def measure_steps(model: str, members: int, steps: int, repeats: int) -> dict[str, Any]:
    """One vmapped step vs a loop of single-member steps; exploit on device vs checkpoints."""
    init, step, _ = _member_fns(MODELS[model]())
    batch = _images(np.random.default_rng(0), 64)
    pop = vz.init(root_key(0), init, SPACE, members)
    pop_step = jax.jit(vz.vmap_train_step(step))
    one_step = jax.jit(step)
    states = [jax.tree.map(lambda x, i=i: x[i], pop.train_state) for i in range(members)]
    hps = [jax.tree.map(lambda x, i=i: x[i], pop.hparams) for i in range(members)]

    def vectorized() -> None:
        p = pop
        for _ in range(steps):
            p, loss = pop_step(p, batch)
        loss.block_until_ready()

    def loop() -> None:
        s = list(states)
        for _ in range(steps):
            for i in range(members):
                s[i], loss = one_step(s[i], batch, hps[i])
        loss.block_until_ready()

    t_vec, t_loop = common.best_of(vectorized, repeats), common.best_of(loop, repeats)

    scores = jnp.arange(members, dtype=jnp.float32)
    exploit = jax.jit(functools.partial(vz.exploit_explore, space=SPACE, selection=SELECTION))
    parents = np.asarray(SELECTION(root_key(1), scores))

    def on_device() -> None:
        new, _ = exploit(pop, scores, root_key(1))
        jax.block_until_ready(new)

    with tempfile.TemporaryDirectory() as tmp, ParamStore(tmp, async_save=False) as store:
        like = jax.eval_shape(lambda: states[0])

        def checkpoint() -> None:
            handles = [store.save(f"m{i}", 0, s) for i, s in enumerate(states)]
            for i, p in enumerate(parents):
                if p != i:
                    jax.block_until_ready(store.restore(handles[p], like))

        t_exp_dev = common.best_of(on_device, repeats)
        t_exp_ckpt = common.best_of(checkpoint, repeats)
    return {
        "vectorized_steps_per_s": members * steps / t_vec,
        "loop_steps_per_s": members * steps / t_loop,
        "step_speedup": t_loop / t_vec,
        "exploit_ms_vectorized": 1e3 * t_exp_dev,
        "exploit_ms_checkpoint": 1e3 * t_exp_ckpt,
        "exploit_speedup": t_exp_ckpt / t_exp_dev,
    }


def measure(model: str, members: int, args: argparse.Namespace) -> dict[str, Any]:
    """One row: the rounds first (so the device's peak memory is theirs), then the rest."""
    row: dict[str, Any] = {
        "model": model,
        "members": members,
        "steps_per_round": args.steps_per_round,
        "rounds": args.rounds,
        "steps": args.steps,
    }
    row.update(measure_rounds(model, members, args.steps_per_round, args.rounds, args.repeats))
    row.update(measure_steps(model, members, args.steps, args.repeats))
    return row


def _row_in_subprocess(model: str, members: int, argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *argv, "--row", model, str(members)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"row {model} x {members} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.0f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=common.positive_int, nargs="+", default=[8, 16])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps-per-round", type=common.positive_int, default=10, help="K")
    parser.add_argument(
        "--rounds", type=common.positive_int, default=5, help="rounds per timed run"
    )
    parser.add_argument(
        "--steps", type=common.positive_int, default=20, help="steps per timed step run"
    )
    parser.add_argument("--repeats", type=common.positive_int, default=3)
    parser.add_argument("--row", nargs=2, metavar=("MODEL", "MEMBERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row is not None:  # one row, in a process of its own
        row = measure(args.row[0], int(args.row[1]), args)
        print(json.dumps(row))
        return row
    shared = [
        f"--steps-per-round={args.steps_per_round}",
        f"--rounds={args.rounds}",
        f"--steps={args.steps}",
        f"--repeats={args.repeats}",
    ]
    rows = [_row_in_subprocess(k, m, shared) for k in args.models for m in args.members]
    result = {"benchmark": "vectorized_step", **common.environment(), "rows": rows}
    print(json.dumps(result))
    print()
    header = (
        f"{'model':>5}  {'members':>7}  {'K':>3}  {'per-step steps/s':>16}  "
        f"{'fused steps/s':>13}  {'ratio':>6}  {'unrolled':>8}  {'ratio':>6}  "
        f"{'KiB/member fused':>16}  {'per-step':>8}  {'device peak':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:>5}  {r['members']:>7}  {r['steps_per_round']:>3}  "
            f"{r['per_step_steps_per_s']:>16.0f}  {r['fused_steps_per_s']:>13.0f}  "
            f"{r['fused_speedup']:>6.2f}  {r['unrolled_steps_per_s']:>8.0f}  "
            f"{r['unrolled_speedup']:>6.2f}  {_kib(r['fused_bytes_per_member']):>16}  "
            f"{_kib(r['per_step_bytes_per_member']):>8}  "
            f"{_kib(r['device_peak_bytes_per_member']):>11}"
        )
    print()
    header = (
        f"{'model':>5}  {'members':>7}  {'vec steps/s':>11}  {'loop steps/s':>12}  {'ratio':>6}  "
        f"{'exploit vec ms':>14}  {'exploit ckpt ms':>15}  {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:>5}  {r['members']:>7}  {r['vectorized_steps_per_s']:>11.0f}  "
            f"{r['loop_steps_per_s']:>12.0f}  {r['step_speedup']:>6.2f}  "
            f"{r['exploit_ms_vectorized']:>14.2f}  {r['exploit_ms_checkpoint']:>15.1f}  "
            f"{r['exploit_speedup']:>6.0f}"
        )
    return result


if __name__ == "__main__":
    main()
