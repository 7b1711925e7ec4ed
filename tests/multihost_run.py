"""One process of a vectorized PBT run over 4 CPU devices, for tests/test_multihost.py.

Usage::

    python multihost_run.py OUT --processes 1                      # 1 process, 4 devices
    python multihost_run.py OUT --processes 2 --process-id I --port P [--stop-after R]
    python multihost_run.py OUT --processes 2 --process-id I --port P --resume
    python multihost_run.py --serve                                # the test's launcher

8 members (a tiny MLP, Adam with injected learning rate and b1, a PRNG key per
member) sharded over the mesh of all 4 devices: with 2 processes, process 0 holds
members 0-3 and process 1 members 4-7. Each round trains 2 steps, evaluates, and runs
truncation selection (bottom quarter copies the top quarter) on scores biased so that
every copy's parent lives on the other process. A snapshot (collective ParamStore save)
every ``--snapshot-every`` rounds; process 0 records lineage and journals every round at
once, so after a kill the journal may hold rounds past the newest snapshot: a resumed
run reruns them from it without recording them again. What process 0 does alone runs
through ``multihost.on_lead``; ``--fail-at R`` makes it fail in round ``R`` (both
processes must then end with an error, not wait for a collective's timeout).

Process 0 writes ``OUT/rounds.jsonl`` (one line per round), and at the end
``OUT/result.json`` (lineage) and ``OUT/result.npz`` (the final population's leaves).
With ``--stop-after R`` every process writes ``OUT/stopped-<id>`` after round ``R`` and
waits to be killed. ``--resume`` continues from the journal and its latest snapshot
(a log_dir with no run yet: a new run).

``--serve`` imports JAX and jaxpop once, before any JAX computation (no JAX thread or
backend exists yet), then reads launches from stdin, one JSON line each: a list of
``[log_file, [argument, ...]]``, one per process. It forks a fresh process for each
(output to its log file; it configures JAX and joins the run as the command line
would), prints ``PIDS pid ...``, then ``EXIT i code`` as process ``i`` ends (``-9``:
SIGKILLed). Importing is half of each process's start on 2 cores: the test pays it once.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpop import multihost, storage
from jaxpop import vectorized as vz
from jaxpop.checkpointing import ParamStore
from jaxpop.hparams import make_optimizer
from jaxpop.keys import root_key
from jaxpop.mutators import explore, selection

ROUNDS = 6
STEPS_PER_ROUND = 2
N = 8


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--processes", type=int, choices=(1, 2), required=True)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--snapshot-every", type=int, default=2)
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fail-at", type=int, default=None, help="process 0 fails at round R")
    return p.parse_args(argv)


def setup(args: argparse.Namespace) -> None:
    """Configures JAX's devices and joins the run: before any other JAX call."""
    if args.processes == 1:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", 4)
    else:
        multihost.initialize_cpu(
            f"localhost:{args.port}",
            args.processes,
            args.process_id,
            local_devices=2,
            initialization_timeout=60,
        )
    optimizer()


SPACE = {"log_lr": explore.uniform(-4.0, -1.0), "b1": explore.uniform(0.5, 0.95)}


@functools.cache
def optimizer() -> optax.GradientTransformation:
    """Adam with injected learning rate and b1. Made by ``setup`` (it runs on the JAX
    backend, which must not start before ``setup`` configures it), outside any trace."""
    return make_optimizer(
        optax.adam,
        {"log_lr": -3.0, "b1": 0.9},
        keys={"log_lr": "learning_rate", "b1": "b1"},
        transforms={"learning_rate": jnp.exp},
    )


def to_optimizer(h):
    """Hyperparameters to the optimizer's arguments."""
    return {"learning_rate": jnp.exp(h["log_lr"]), "b1": h["b1"]}


def init_member(key):
    """One member: a 4-8-3 MLP, its Adam state and its own PRNG key (which an exploit
    refreshes in each copy)."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "w1": jax.random.uniform(k1, (4, 8), minval=-1.0, maxval=1.0),
        "b1": jnp.zeros(8),
        "w2": jax.random.uniform(k2, (8, 3), minval=-1.0, maxval=1.0),
        "b2": jnp.zeros(3),
    }
    return {"params": params, "opt_state": optimizer().init(params), "key": jax.random.key_data(k3)}


def loss_fn(params, x, y):
    """Mean squared error of the MLP."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def train_step(state, batch, hparams):
    """One member's step (the hyperparameters are in the optimizer state already)."""
    del hparams
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], *batch)
    updates, opt_state = optimizer().update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {**state, "params": params, "opt_state": opt_state}, loss


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch of a step: a function of the step only, so a resumed run sees the same."""
    rng = np.random.default_rng(step)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    return x, np.tanh(x[:, :3] * 0.7).astype(np.float32)


EVAL = batch(10_000)


def bias(r: int) -> np.ndarray:
    """Score offsets of round ``r``: one half of the members is ranked below the other,
    alternating, so the bottom quarter (copiers) and the top quarter (parents) lie on
    different processes."""
    low_half = np.arange(N) < N // 2
    return np.where(low_half if r % 2 == 0 else ~low_half, 10.0, 0.0).astype(np.float32)


def make_pop(key):
    """The population before training."""
    return vz.init(key, init_member, SPACE, N, optimizer_hparams=to_optimizer)


STEP = vz.vmap_train_step(train_step)


@functools.partial(jax.jit, static_argnames="mesh")
def pbt_round(pop, xs, ys, offsets, mesh):
    """Trains ``STEPS_PER_ROUND`` steps, evaluates, exploits and explores."""
    pop = jax.lax.fori_loop(0, STEPS_PER_ROUND, lambda t, p: STEP(p, (xs[t], ys[t]))[0], pop)
    losses = jax.vmap(loss_fn, in_axes=(0, None, None))(pop.train_state["params"], *EVAL)
    scores = losses + offsets
    pop, exploit = vz.exploit_explore(
        pop,
        scores,
        space=SPACE,
        selection=functools.partial(selection.truncation, quantile_fraction=0.25),
        optimizer_hparams=to_optimizer,
    )
    return vz.constrain(pop, mesh), scores, exploit


def strip(lineage) -> list:
    """The lineage as comparable plain data."""
    return [
        [c.generation_id, c.step, c.value, list(c.parent) if c.parent else None, c.meta_params]
        for c in lineage.history.checkpoints()
    ]


def main(args: argparse.Namespace) -> None:
    out = args.out
    lead = multihost.is_lead_process()
    assert jax.device_count() == 4, jax.devices()
    mesh = vz.member_mesh()
    key = root_key(0)
    like = jax.eval_shape(make_pop, key)
    params = ParamStore(os.path.join(out, "params"), async_save=False)
    recorded = 0  # the rounds the journal holds: run again from the snapshot, not recorded
    log = lineage = None  # process 0's
    # what process 0 does alone goes through multihost.on_lead: a failure there is an
    # error on every process, not a wait in the next collective until its timeout

    def open_log():  # (a log_dir in use: LogDirInUseError on every process at once)
        nonlocal log
        log = storage.Store(os.path.join(out, "log"), run=vz.run_description(N))

    multihost.on_lead(open_log)

    def resume():
        nonlocal lineage
        lineage = log.load()
        if lineage is None:  # no run recorded yet (the first attempt ended before start)
            return None
        log.start(lineage)
        return [vz.latest_snapshot(lineage), lineage.num_events]

    found = None
    if args.resume:
        found = multihost.broadcast_from_lead(multihost.on_lead(resume))
    handle, recorded = found if found is not None else (None, 0)
    if handle is not None:
        pop = vz.restore_snapshot(params, handle, like, mesh)
    else:
        pop = jax.jit(make_pop, out_shardings=vz.shardings(like, mesh))(key)
    if found is None:  # a new run (a --resume that found none starts one too)
        light = multihost.to_host(pop.replace(train_state=None))

        def begin():
            nonlocal lineage
            lineage = vz.lineage_init(light, key, now=0.0)
            log.start(lineage)

        multihost.on_lead(begin)
    start = int(pop.step) // STEPS_PER_ROUND
    shards = pop.scores.addressable_shards
    held = sorted(i for s in shards for i in range(N)[s.index[0]])

    def record(r, scores_h, exploit_h, handle):
        nonlocal lineage
        if r == args.fail_at:
            raise RuntimeError(f"--fail-at {r}: process 0 fails recording round {r}")
        if r >= recorded:
            lineage, changes = vz.record(
                lineage,
                scores_h,
                step=int(exploit_h.step),
                now=float(r + 1),
                exploit=exploit_h,
                params=handle,
            )
            log.append(changes, lineage)
        else:  # a round the journal holds, run again from the snapshot: the same
            step = int(exploit_h.step)
            gens = [vz.generation_id(key, int(g)) for g in exploit_h.old_generation]
            journaled = [lineage.history.get_checkpoint(g, step).value for g in gens]
            assert journaled == np.asarray(scores_h, np.float64).tolist(), (r, journaled)
        line = {
            "round": r,
            "scores": scores_h.tolist(),
            "parents": exploit_h.parents.tolist(),
            "copied": exploit_h.copied.tolist(),
            "held_by_lead": held,
        }
        with open(os.path.join(out, "rounds.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")

    for r in range(start, args.rounds):
        steps = range(r * STEPS_PER_ROUND, (r + 1) * STEPS_PER_ROUND)
        xs = np.stack([batch(t)[0] for t in steps])
        ys = np.stack([batch(t)[1] for t in steps])
        pop, scores, exploit = pbt_round(pop, xs, ys, bias(r), mesh)
        scores_h, exploit_h = multihost.to_host((scores, exploit))
        handle = None
        if (r + 1) % args.snapshot_every == 0:
            handle = vz.save_snapshot(params, pop)  # collective, finalized on return
        multihost.on_lead(record, r, scores_h, exploit_h, handle)
        if args.stop_after is not None and r == args.stop_after:
            with open(os.path.join(out, f"stopped-{jax.process_index()}"), "w") as f:
                f.write(str(r))
            time.sleep(600)  # until killed
            sys.exit(3)

    whole = multihost.to_host(pop)
    params.close()
    if lead:
        log.close()
        flat, _ = jax.tree_util.tree_flatten_with_path(whole)
        np.savez(
            os.path.join(out, "result.npz"),
            **{jax.tree_util.keystr(p): np.asarray(x) for p, x in flat},
        )
        result = {
            "lineage": strip(lineage),
            "workers": [w.generation_id for w in lineage.workers],
            "num_generations": int(whole.num_generations),
            "step": int(whole.step),
        }
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f)


def serve() -> None:
    """Forks the processes of each launch read from stdin (the module docstring)."""
    for line in sys.stdin:
        pids = []
        for log, argv in json.loads(line):
            pid = os.fork()
            if pid == 0:  # the child: one process of the run, never back in this loop
                code = 0
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                try:
                    args = parse(argv)
                    setup(args)
                    main(args)
                    if args.processes > 1:  # what exiting does (atexit), before os._exit
                        jax.distributed.shutdown()
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:
                    traceback.print_exc()
                    code = 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            pids.append(pid)
        say("PIDS " + " ".join(map(str, pids)))
        for _ in pids:
            pid, status = os.waitpid(-1, 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            say(f"EXIT {pids.index(pid)} {code}")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        ARGS = parse(sys.argv[1:])
        setup(ARGS)
        main(ARGS)
