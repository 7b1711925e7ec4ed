"""A population trained as one vmapped step vs a Python loop of per-member steps.

A small MLP (two hidden layers of 256) and the examples' CNN (``examples.cnn.CNN``),
Adam with injected hyperparameters, on batches of 64 digits-sized images (8x8x1, random
data), for populations of ``--members`` (default 8 and 16). Two ways to train the
whole population one step:

* ``vectorized``: one jitted ``jaxpop.vectorized.vmap_train_step`` over the stacked
  population;
* ``loop``: a Python loop calling one jitted single-member step per member (what ``N``
  workers in one process do, without the controller).

And two ways to run one exploit round in which the worst quarter copies from the best:

* ``vectorized``: one jitted ``jaxpop.vectorized.exploit_explore`` (on-device gather);
* ``checkpoint``: what host mode does per exploit: every member's ``(params,
  opt_state)`` saved with ``jaxpop.checkpointing.ParamStore`` (synchronous Orbax save)
  and each copying member's restored from its parent's handle.

Each measurement is called once before timing (compilation) and then timed ``--repeats``
times; the best is reported (the machine may be shared: compare ratios). ``steps/s``
counts member steps (``members x population steps``) per second.

Usage (from the repo root)::

    python benchmarks/vectorized_step.py [--members 8 16] [--steps 20] [--repeats 3]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import common
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.cnn import CNN, cross_entropy
from jaxpop import vectorized as vz
from jaxpop.checkpointing import ParamStore
from jaxpop.hparams import make_optimizer
from jaxpop.keys import root_key
from jaxpop.mutators import explore, selection

SPACE = {"learning_rate": explore.log_uniform(1e-4, 1e-2)}


class MLP(nn.Module):
    """Flattened image, two hidden layers of 256."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for _ in range(2):
            x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


MODELS = {"cnn": CNN(), "mlp": MLP()}
NET = MODELS["cnn"]
TX = make_optimizer(optax.adam, {"learning_rate": 1e-3})


def _init(key):
    params = NET.init(key, jnp.zeros((1, 8, 8, 1)))
    return {"params": params, "opt_state": TX.init(params)}


def _step(state, batch, hparams):
    del hparams  # already in the optimizer state
    images, labels = batch

    def loss_fn(params):
        return cross_entropy(NET.apply(params, images), labels)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss


def measure(model: str, members: int, steps: int, repeats: int) -> dict:
    global NET
    NET = MODELS[model]
    rng = np.random.default_rng(0)
    batch = (
        jnp.asarray(rng.uniform(size=(64, 8, 8, 1)).astype(np.float32)),
        jnp.asarray(rng.integers(0, 10, 64).astype(np.int32)),
    )
    pop = vz.init(root_key(0), _init, SPACE, members)
    pop_step = jax.jit(vz.vmap_train_step(_step))
    one_step = jax.jit(_step)
    states = [jax.tree.map(lambda x, i=i: x[i], pop.train_state) for i in range(members)]
    hps = [jax.tree.map(lambda x, i=i: x[i], pop.hparams) for i in range(members)]

    def vectorized():
        p = pop
        for _ in range(steps):
            p, loss = pop_step(p, batch)
        loss.block_until_ready()

    def loop():
        s = list(states)
        for _ in range(steps):
            for i in range(members):
                s[i], loss = one_step(s[i], batch, hps[i])
        loss.block_until_ready()

    t_vec, t_loop = common.best_of(vectorized, repeats), common.best_of(loop, repeats)

    scores = jnp.arange(members, dtype=jnp.float32)
    exploit = jax.jit(
        functools.partial(
            vz.exploit_explore,
            space=SPACE,
            selection=functools.partial(selection.truncation, quantile_fraction=0.25),
        )
    )
    parents = np.asarray(selection.truncation(root_key(1), scores))

    def on_device():
        new, _ = exploit(pop, scores, root_key(1))
        jax.block_until_ready(new)

    with tempfile.TemporaryDirectory() as tmp, ParamStore(tmp, async_save=False) as store:
        like = jax.eval_shape(lambda: states[0])

        def checkpoint():
            handles = [store.save(f"m{i}", 0, s) for i, s in enumerate(states)]
            for i, p in enumerate(parents):
                if p != i:
                    jax.block_until_ready(store.restore(handles[p], like))

        t_exp_dev = common.best_of(on_device, repeats)
        t_exp_ckpt = common.best_of(checkpoint, repeats)
    return {
        "model": model,
        "members": members,
        "steps": steps,
        "vectorized_steps_per_s": members * steps / t_vec,
        "loop_steps_per_s": members * steps / t_loop,
        "step_speedup": t_loop / t_vec,
        "exploit_ms_vectorized": 1e3 * t_exp_dev,
        "exploit_ms_checkpoint": 1e3 * t_exp_ckpt,
        "exploit_speedup": t_exp_ckpt / t_exp_dev,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = [measure(k, m, args.steps, args.repeats) for k in args.models for m in args.members]
    result = {"benchmark": "vectorized_step", **common.environment(), "rows": rows}
    print(json.dumps(result))
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
