"""Hyperparameter changes inside a jitted training step: injected vs rebuilt optimizer.

One Adam training step of an MLP (784-1024-256-10, about 1.07M float32 parameters,
batch 128, random data) on the CPU, timed per step over N steps, in five modes:

* ``inject_fixed``: ``make_optimizer(optax.adam, ...)``; the step takes the
  hyperparameters as an argument (``as_traced``) and writes them with ``set_hparams``
  inside ``jit``; the same values every step;
* ``inject_changing``: the same jitted step, a new learning rate and ``b1`` every step
  (the host-side ``as_traced`` conversion is inside the timed loop);
* ``inject_set_on_host``: a new learning rate every step written by ``set_hparams``
  eagerly on the host, then a jitted step that does not know about hyperparameters;
* ``naive_fixed``: the naive design: the step builds ``optax.adam(lr)`` from a Python
  float (a static argument of ``jit``, which is what closing over it amounts to); the
  same lr every step, so the compiled step is reused;
* ``naive_changing``: the naive design with a new lr every step: each step retraces and
  recompiles (and jit's cache keeps every compiled version).

Timing: each mode has its own ``jax.jit`` object. Each loop runs its steps back to back
(jax dispatches asynchronously) and waits for the last result. Every mode is called once
before timing (``compile_ms``: that first call, which traces and compiles). The other
loops run ``--repeats`` times, interleaved in a rotating order; ``ms/step`` is the best
loop's time divided by its steps, ``median`` the median loop's (the machine may be
shared: compare ratios rather than absolute times). ``naive_changing`` is one loop of
``--naive-steps`` learning rates never seen before, each one a compilation. ``traces``
counts how often the mode's step function was traced over the whole run (a Python side
effect in the traced function), ``cache`` is its ``jitted._cache_size()`` at the end.

Usage (from the repo root)::

    python benchmarks/hparam_update.py [--steps 50] [--repeats 10] [--naive-steps 10]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpop.hparams import as_traced, make_optimizer, set_hparams

SIZES = (784, 1024, 256, 10)
BATCH = 128
MODES = ("inject_fixed", "inject_changing", "inject_set_on_host", "naive_fixed", "naive_changing")


def init_mlp(key: jax.Array) -> dict[str, jax.Array]:
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
        key, sub = jax.random.split(key)
        params[f"w{i}"] = jax.random.normal(sub, (n_in, n_out)) * (2.0 / n_in) ** 0.5
        params[f"b{i}"] = jnp.zeros(n_out)
    return params


def loss_fn(params: dict[str, jax.Array], x: jax.Array, labels: jax.Array) -> jax.Array:
    n = len(params) // 2
    for i in range(n):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()


def counted_jit(fn: Callable, **kwargs: Any) -> tuple[Callable, list[int]]:
    traces: list[int] = []

    def traced(*args, **kw):
        traces.append(1)
        return fn(*args, **kw)

    return jax.jit(traced, **kwargs), traces


def build_steps() -> dict[str, Any]:
    """The optimizer and, per mode, its own jitted step with its trace counter."""
    tx = make_optimizer(optax.adam, {"learning_rate": 1e-3, "b1": 0.9})

    def inject_step(params, opt_state, x, labels, hparams):
        opt_state = set_hparams(opt_state, hparams)
        grads = jax.grad(loss_fn)(params, x, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def plain_step(params, opt_state, x, labels):
        grads = jax.grad(loss_fn)(params, x, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def naive_step(params, opt_state, x, labels, lr):
        grads = jax.grad(loss_fn)(params, x, labels)
        updates, opt_state = optax.adam(lr).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return {
        "tx": tx,
        "inject_fixed": counted_jit(inject_step),
        "inject_changing": counted_jit(inject_step),
        "inject_set_on_host": counted_jit(plain_step),
        "naive_fixed": counted_jit(naive_step, static_argnames="lr"),
        "naive_changing": counted_jit(naive_step, static_argnames="lr"),
    }


def lr_stream(seed: int):
    """An endless stream of learning rates, none repeated."""
    rng = np.random.default_rng(seed)
    while True:
        yield float(10.0 ** rng.uniform(-4, -2))


def run_loop(mode: str, steps: dict, state: dict, n: int, lrs) -> float:
    """Runs ``n`` steps of ``mode`` from ``state``; returns seconds, updates ``state``."""
    params, x, labels = state["params"], state["x"], state["labels"]
    step = steps[mode][0]
    opt_state = state["inject_state" if mode.startswith("inject") else "naive_state"]
    t0 = time.perf_counter()
    if mode == "inject_fixed":
        hp = state["fixed_hp"]
        for _ in range(n):
            params, opt_state = step(params, opt_state, x, labels, hp)
    elif mode == "inject_changing":
        for _ in range(n):
            lr = next(lrs)
            hp = as_traced({"learning_rate": lr, "b1": 0.85 + lr})
            params, opt_state = step(params, opt_state, x, labels, hp)
    elif mode == "inject_set_on_host":
        for _ in range(n):
            opt_state = set_hparams(opt_state, {"learning_rate": next(lrs)})
            params, opt_state = step(params, opt_state, x, labels)
    elif mode in ("naive_fixed", "naive_changing"):
        for _ in range(n):
            lr = 1e-3 if mode == "naive_fixed" else next(lrs)
            params, opt_state = step(params, opt_state, x, labels, lr=lr)
    else:
        raise ValueError(mode)
    jax.block_until_ready((params, opt_state))
    elapsed = time.perf_counter() - t0
    state["params"] = params
    state["inject_state" if mode.startswith("inject") else "naive_state"] = opt_state
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=common.positive_int, default=50, help="steps per timed loop"
    )
    parser.add_argument("--repeats", type=common.positive_int, default=10)
    parser.add_argument(
        "--naive-steps", type=common.positive_int, default=10, help="recompiling steps"
    )
    args = parser.parse_args()
    started = time.perf_counter()

    steps = build_steps()
    params = init_mlp(jax.random.key(0))
    kx, ky = jax.random.split(jax.random.key(1))
    state = {
        "params": params,
        "x": jax.random.normal(kx, (BATCH, SIZES[0])),
        "labels": jax.random.randint(ky, (BATCH,), 0, SIZES[-1]),
        "inject_state": steps["tx"].init(params),
        "naive_state": optax.adam(1e-3).init(params),
        "fixed_hp": as_traced({"learning_rate": 1e-3, "b1": 0.9}),
    }
    n_params = sum(p.size for p in jax.tree.leaves(params))
    lrs = lr_stream(0)

    compile_ms = {}
    for mode in MODES:  # the first call of each design compiles it
        compile_ms[mode] = 1e3 * run_loop(mode, steps, state, 1, lrs)

    per_step: dict[str, list[float]] = {m: [] for m in MODES}
    timed_modes = [m for m in MODES if m != "naive_changing"]
    for repeat in range(args.repeats):
        shift = repeat % len(timed_modes)  # rotate the order: no mode always goes first
        for mode in timed_modes[shift:] + timed_modes[:shift]:
            seconds = run_loop(mode, steps, state, args.steps, lrs)
            per_step[mode].append(seconds / args.steps)
    seconds = run_loop("naive_changing", steps, state, args.naive_steps, lrs)
    per_step["naive_changing"].append(seconds / args.naive_steps)
    best = {m: min(v) for m, v in per_step.items()}
    median = {m: statistics.median(v) for m, v in per_step.items()}

    rows = []
    for mode in MODES:
        jitted, traces = steps[mode]
        rows.append(
            {
                "mode": mode,
                "ms_per_step": round(1e3 * best[mode], 3),
                "median_ms": round(1e3 * median[mode], 3),
                "vs_inject_fixed": round(best[mode] / best["inject_fixed"], 3),
                "steps": args.naive_steps if mode == "naive_changing" else args.steps,
                "compile_ms": round(compile_ms[mode], 1),
                "traces": len(traces),
                "cache": jitted._cache_size(),
            }
        )
    result = {
        "benchmark": "hparam_update",
        "model": "mlp " + "-".join(map(str, SIZES)),
        "params": int(n_params),
        "batch": BATCH,
        "steps": args.steps,
        "repeats": args.repeats,
        "naive_steps": args.naive_steps,
        "results": rows,
        "changing_vs_fixed": round(best["inject_changing"] / best["inject_fixed"], 3),
        "naive_changing_vs_inject_changing": round(
            best["naive_changing"] / best["inject_changing"], 1
        ),
        "seconds": round(time.perf_counter() - started, 2),
        **common.environment(optax),
    }
    print(json.dumps(result, separators=(",", ":")))
    print_table(result)


def print_table(result: dict) -> None:
    print()
    print(
        f"One Adam step, {result['model']} ({result['params']:,} params), batch "
        f"{result['batch']}, {result['backend']}; traces/cache: over the whole run"
    )
    header = (
        f"{'mode':<20} {'ms/step':>9} {'median':>8} {'x fixed':>8} {'steps':>6} {'compile ms':>11} "
        f"{'traces':>7} {'cache':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in result["results"]:
        print(
            f"{r['mode']:<20} {r['ms_per_step']:>9.3f} {r['median_ms']:>8.3f} "
            f"{r['vs_inject_fixed']:>8.2f} "
            f"{r['steps']:>6} {r['compile_ms']:>11.1f} {r['traces']:>7} {r['cache']:>6}"
        )
    print()
    print(
        f"changing hparams every step / never: {result['changing_vs_fixed']:.2f}x; "
        f"naive rebuild with a new lr each step / injected: "
        f"{result['naive_changing_vs_inject_changing']:.1f}x "
        f"({result['seconds']:.1f} s in all)"
    )


if __name__ == "__main__":
    main()
