"""A population of PPO agents on a gymnax environment, trained as one program with PBT.

All ``--members`` agents (default 8) live stacked on the device as one
``jaxpop.vectorized.VectorizedPopulation``: one compiled round runs every agent's PPO
updates with ``jax.vmap`` (each agent its own environments, rollouts and key) for
``--interval`` environment steps per agent, then scores each agent by the mean return
of the episodes it finished in that round. Truncation selection then copies the best
quarter's networks, optimizer states and environments into the worst quarter, with
explored learning rate, entropy coefficient, clip range and GAE lambda -- on device,
with no recompilation (the hyperparameters are arrays). The host records the lineage
in a jaxpop history under ``--logdir`` (``jaxpop report LOGDIR`` reads it). At the end
every agent's greedy policy is evaluated on fresh episodes.

``--fixed`` trains the same agents (same seed: same initial networks and environments)
with the environment's default hyperparameters and no exploit, for comparison.

Run from the repo root::

    python -m examples.rl [--env CartPole-v1|Pendulum-v1] [--members 8]
        [--total-steps N] [--fixed] [--logdir runs/rl/cartpole-v1-pbt]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from examples.log_dirs import log_dir_arg, log_dir_problem
from examples.rl.ppo import CONFIGS, Agent, EnvConfig
from examples.tables import cell, print_table
from jaxpop import storage
from jaxpop import vectorized as vz
from jaxpop.keys import root_key
from jaxpop.mutators import selection
from jaxpop.storage.atomic import write_atomic

__all__ = ["Population", "main", "population", "run"]


class Population:
    """The jitted functions of a population of ``num_members`` PPO agents.

    Args:
      config: the environment's configuration.
      num_members: the population size.
      updates_per_round: PPO updates per agent between two evaluations.
      fixed: train with ``config.defaults`` for every agent and never exploit.
      quantile: the fraction of the population that copies (and is copied) each round.
      eval_episodes: episodes per agent in :meth:`evaluate`.
      fast_compile: compile with XLA's backend optimisations off: on CPU about half
        the compile time and three times the run time, for short runs such as tests.
    """

    def __init__(
        self,
        config: EnvConfig,
        num_members: int,
        updates_per_round: int,
        *,
        fixed: bool = False,
        quantile: float = 0.25,
        eval_episodes: int = 16,
        fast_compile: bool = False,
    ):
        self.config = config
        self.agent = Agent(config)
        self.num_members = num_members
        self.updates_per_round = updates_per_round
        hparams = None
        if fixed:
            hparams = {
                name: jnp.full((num_members,), value, jnp.float32)
                for name, value in config.defaults.items()
            }
        options = {"xla_backend_optimization_level": 0} if fast_compile else None
        jit = functools.partial(jax.jit, compiler_options=options)
        self.init = jit(
            functools.partial(
                vz.init,
                init_fn=self.agent.init,
                space=config.space,
                num_members=num_members,
                hparams=hparams,
            )
        )
        self.train_round = jit(self._train_round)
        self.exploit = jit(
            functools.partial(
                vz.exploit_explore,
                space=config.space,
                selection=functools.partial(
                    selection.truncation, quantile_fraction=quantile, mode="max"
                ),
            )
        )
        self.evaluate = jit(
            jax.vmap(functools.partial(self.agent.evaluate, num_episodes=eval_episodes))
        )

    @property
    def steps_per_round(self) -> int:
        """Environment steps per agent in one round."""
        return self.updates_per_round * self.config.steps_per_update

    def _train_round(
        self, pop: vz.VectorizedPopulation
    ) -> tuple[vz.VectorizedPopulation, jax.Array]:
        """``updates_per_round`` PPO updates of every agent; returns the agents' scores.

        An agent's score is the mean return of the episodes it finished in the round; an
        agent that finished none scores the mean return its running episodes have
        collected so far (not their returns: the episodes go on).
        """
        step = vz.vmap_train_step(self.agent.train_step)
        pop, metrics = jax.lax.scan(
            lambda p, _: step(p, None), pop, None, length=self.updates_per_round
        )
        episodes = metrics["episodes"].sum(axis=0)
        finished = metrics["return_sum"].sum(axis=0) / jnp.maximum(episodes, 1.0)
        running = pop.train_state["episode_return"].mean(axis=-1)
        return pop, jnp.where(episodes > 0, finished, running)

    def eval_keys(self, seed: int) -> jax.Array:
        """One evaluation key per agent (the same for every call with ``seed``)."""
        return jax.random.split(jax.random.PRNGKey(seed), self.num_members)


def population(
    env: str,
    num_members: int,
    updates_per_round: int,
    *,
    fixed: bool = False,
    quantile: float = 0.25,
    eval_episodes: int = 16,
    fast_compile: bool = False,
) -> Population:
    """The :class:`Population` of these settings, built once per process.

    Runs with the same settings (a test and its example run) share its compiled
    functions.
    """
    return _population(
        env, num_members, updates_per_round, fixed, quantile, eval_episodes, fast_compile
    )


@functools.lru_cache(maxsize=8)
def _population(
    env: str,
    num_members: int,
    updates_per_round: int,
    fixed: bool,
    quantile: float,
    eval_episodes: int,
    fast_compile: bool,
) -> Population:
    return Population(
        CONFIGS[env],
        num_members,
        updates_per_round,
        fixed=fixed,
        quantile=quantile,
        eval_episodes=eval_episodes,
        fast_compile=fast_compile,
    )


def _updates_per_round(config: EnvConfig, interval: int | None) -> int:
    """PPO updates per round: ``interval`` (default: the environment's) in whole updates."""
    interval = config.interval if interval is None else interval
    return max(1, round(interval / config.steps_per_update))


def _steps_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``--total-steps`` for the round length, or ``None``: a total of
    one round or less ran a whole round and never exploited (the last round is
    evaluated as it is), and a total between rounds was rounded up (976x the request
    with a large interval)."""
    config = CONFIGS[args.env]
    total = config.total_steps if args.total_steps is None else args.total_steps
    update = config.steps_per_update
    per_round = _updates_per_round(config, args.interval) * update
    least = 1 if args.fixed else 2
    if total >= least * per_round and total % per_round == 0:
        return None
    below = max(least, total // per_round) * per_round
    return (
        "--total-steps must be a whole number of rounds"
        + ("" if args.fixed else ", at least two (PBT exploits between rounds)")
        + f": a round is {per_round} environment steps per agent here (--interval "
        f"rounded to whole PPO updates of {update}); {below} or {below + per_round}, say"
    )


def _default_logdir(args: argparse.Namespace) -> str:
    return os.path.join("runs", "rl", f"{args.env.lower()}-{'fixed' if args.fixed else 'pbt'}")


def _open_log(logdir: str, overwrite: bool, members: int) -> storage.Store:
    path = os.path.join(logdir, "population")
    if os.path.isdir(path):
        try:  # (read as jaxpop report reads it: no lock taken, nothing written)
            held = storage.read_state(path) is not None
        except storage.CorruptLogError as e:
            if not overwrite:
                raise SystemExit(
                    f"{logdir} holds a damaged run ({e}); pass --overwrite to replace it"
                ) from None
            held = True
        if held and not overwrite:
            raise SystemExit(
                f"{logdir} already holds a run; pass --overwrite to replace it, or another --logdir"
            )
        if held:  # replaced under its lock: a run another process still writes never is
            try:
                old = storage.Store(path)
            except storage.LogDirInUseError as e:
                raise SystemExit(f"{logdir}: {e}") from None
            except storage.CorruptLogError:  # (its lock is no regular file: none holds it)
                old = None
            try:
                shutil.rmtree(path)
            finally:
                if old is not None:
                    old.close()
    with contextlib.suppress(FileNotFoundError):  # (the replaced run's: not this one's)
        os.remove(os.path.join(logdir, "summary.json"))
    return storage.Store(path, run=vz.run_description(members))


def print_summary(summary: dict[str, Any]) -> None:
    """Prints every agent's returns and hyperparameters, then the population's."""
    names = list(summary["members"][0]["hparams"])
    header = ["member", "generation", "eval_return", "train_return", *names]
    rows = [
        [
            str(m["member"]),
            str(m["generation"]),
            cell(m["eval_return"]),
            cell(m["train_return"]),
            *(cell(m["hparams"][k]) for k in names),
        ]
        for m in summary["members"]
    ]
    print_table(header, rows)
    print(
        f"{summary['env']} ({summary['mode']}): greedy return over {summary['eval_episodes']} "
        f"episodes per agent after {summary['env_steps']} environment steps per agent: "
        f"population mean {summary['mean_return']:.1f}, best {summary['best_return']:.1f} "
        f"(initial policies: mean {summary['initial_return']:.1f}); "
        f"{summary['exploit_events']} exploits in {summary['rounds']} rounds, "
        f"{summary['seconds']} s"
    )
    print(f"lineage: jaxpop report {summary['logdir']}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the population; returns the summary (also written to
    ``LOGDIR/summary.json``, and printed unless ``--quiet``)."""
    start = time.time()
    problem = _steps_problem(args)
    if problem is not None:
        raise ValueError(problem)
    config = CONFIGS[args.env]
    updates = _updates_per_round(config, args.interval)
    fns = population(
        args.env,
        args.members,
        updates,
        fixed=args.fixed,
        quantile=args.quantile,
        eval_episodes=args.eval_episodes,
        fast_compile=args.fast_compile,
    )
    total = config.total_steps if args.total_steps is None else args.total_steps
    rounds = max(1, total // fns.steps_per_round)  # (parse: a whole number, at least two)
    logdir = args.logdir or _default_logdir(args)
    log = _open_log(logdir, args.overwrite, args.members)
    try:
        key = root_key(args.seed)
        pop = fns.init(key)
        eval_keys = fns.eval_keys(args.seed + 1)
        initial = np.asarray(fns.evaluate(pop.train_state["params"], eval_keys))
        lineage = vz.lineage_init(pop, key, now=time.time(), mode="max")
        log.start(lineage)
        exploits = 0
        for r in range(1, rounds + 1):
            pop, scores = fns.train_round(pop)
            env_steps = r * fns.steps_per_round
            exploit = None
            if not args.fixed and r < rounds:  # the last round is evaluated as it is
                pop, exploit = fns.exploit(pop, scores)
                exploits += int(np.sum(np.asarray(exploit.copied)))
            lineage, changes = vz.record(
                lineage, scores, step=env_steps, now=time.time(), exploit=exploit
            )
            log.append(changes, lineage)
            if not args.quiet and (r % max(1, rounds // 10) == 0 or r == rounds):
                s = np.asarray(scores)
                print(
                    f"round {r}/{rounds}, {env_steps} steps per agent: training return "
                    f"mean {s.mean():.1f}, best {s.max():.1f}",
                    flush=True,
                )
    finally:
        log.close()
    final = np.asarray(fns.evaluate(pop.train_state["params"], eval_keys))
    scores = np.asarray(scores)
    generation = np.asarray(pop.generation)
    members = [
        {
            "member": i,
            "generation": int(generation[i]),
            "eval_return": float(final[i]),
            "train_return": float(scores[i]),
            "hparams": vz.member_hparams(pop.hparams, i),
        }
        for i in range(args.members)
    ]
    summary = {
        "env": args.env,
        "mode": "fixed defaults" if args.fixed else "PBT",
        "members": members,
        "env_steps": rounds * fns.steps_per_round,
        "rounds": rounds,
        "eval_episodes": args.eval_episodes,
        "mean_return": float(final.mean()),
        "best_return": float(final.max()),
        "initial_return": float(initial.mean()),
        "exploit_events": exploits,
        "logdir": logdir,
        "seconds": round(time.time() - start, 1),
    }
    # (whole or not at all)
    write_atomic(os.path.join(logdir, "summary.json"), json.dumps(summary, indent=1).encode())
    if not args.quiet:
        print_summary(summary)
    return summary


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m examples.rl``."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.rl", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--env", default="CartPole-v1", choices=sorted(CONFIGS))
    parser.add_argument("--members", type=int, default=8, help="population size")
    parser.add_argument(
        "--total-steps",
        type=int,
        default=None,
        help="environment steps per agent (default: the environment's: 102400 for CartPole, "
        "512000 for Pendulum)",
    )
    parser.add_argument(
        "--interval",
        type=int,
        default=None,
        help="environment steps per agent between PBT rounds (default: the environment's)",
    )
    parser.add_argument(
        "--fixed",
        action="store_true",
        help="the same agents with the default hyperparameters and no PBT",
    )
    parser.add_argument("--quantile", type=float, default=0.25, help="truncation fraction")
    parser.add_argument("--eval-episodes", type=int, default=16, help="per agent, at the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fast-compile",
        action="store_true",
        help="XLA backend optimisations off: compiles in about half the time, runs about 3x "
        "slower (for short runs)",
    )
    parser.add_argument(
        "--logdir",
        "--log-dir",
        dest="logdir",
        type=log_dir_arg,
        default=None,
        help="where the lineage goes (default runs/rl/<env>-<mode>, lowercased)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --logdir")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    config = CONFIGS[args.env]
    total = config.total_steps if args.total_steps is None else args.total_steps
    if min(args.members, args.eval_episodes, total) < 1:  # (0 was once taken as unset)
        parser.error("--members, --eval-episodes and --total-steps must be positive")
    update = config.steps_per_update
    if args.interval is not None and args.interval < update:
        parser.error(
            f"--interval must be at least one PPO update, {update} environment steps for "
            f"{args.env} (it is rounded to whole updates)"
        )
    problem = _steps_problem(args)
    if problem is not None:
        parser.error(problem)
    if not -(2**31) <= args.seed < 2**63 - 1:  # (the evaluation's seed is seed + 1, an int64)
        parser.error("--seed must be in [-2**31, 2**63 - 1)")
    if not 0.0 <= args.quantile <= 0.5:
        parser.error("--quantile must be in [0, 0.5]")
    if not args.fixed and selection.num_in_quantile(args.members, args.quantile) < 1:
        # (a run that can never exploit, reported as PBT: a random-hyperparameter baseline)
        parser.error(
            f"--members {args.members} with --quantile {args.quantile} copies no member: "
            "PBT's --members must be at least 2 and its --quantile above 0 (for training "
            "without exploits pass --fixed)"
        )
    problem = log_dir_problem(args.logdir or _default_logdir(args))
    if problem is not None:
        parser.error(problem)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the example with ``argv`` (default: the command line)."""
    return run(parse(argv))


if __name__ == "__main__":
    main()
