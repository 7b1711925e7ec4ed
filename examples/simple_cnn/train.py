"""A population of CNNs in threads, ``WinnerTakeAllGenetic`` over the log learning rate.

Each worker (default 4) trains a flax CNN with Adam on the default data set (scikit-
learn's bundled digits; ``--dataset cifar10`` for CIFAR-10 through tensorflow-datasets),
saves its parameters and optimizer state with jaxpop's Orbax store every
``--eval-every`` steps and reports the held-out validation loss with the checkpoint's
handle. Every ``--steps-per-exploit`` steps, once every worker has reported, all workers
copy the best one's checkpoint and perturb its log learning rate (the best one too: the
seed's rule, ``keep_winner=False``).

Run from the repo root::

    python -m examples.simple_cnn [--steps 1000] [--workers 4] [--log-dir runs/simple_cnn]
        [--dataset digits|cifar10]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from examples import population_cnn
from jaxpop.mutators import winner_take_all_genetic

LOG_LR_RANGE = (math.log(1e-5), math.log(1.0))


def mutate_fn(meta_params: dict[str, float], key) -> dict[str, float]:
    """Perturbs the log learning rate by a normal step of 0.5, kept inside its range."""
    step = 0.5 * float(np.random.default_rng(key).normal())
    return {"log_lr": float(np.clip(meta_params["log_lr"] + step, *LOG_LR_RANGE))}


def initial_population(n: int, rng: np.random.Generator) -> list[dict[str, float]]:
    """Learning rates spread log-uniformly over [1e-4, 3e-2]."""
    return [{"log_lr": float(v)} for v in rng.uniform(math.log(1e-4), math.log(3e-2), n)]


EXPERIMENT = population_cnn.Experiment(
    name="simple_cnn",
    initial_population=initial_population,
    mutator=lambda args: winner_take_all_genetic.WinnerTakeAllGenetic(
        mutate_fn, steps_per_exploit=args.steps_per_exploit
    ),
    optimizer_keys={"log_lr": "learning_rate"},
    optimizer_transforms={"learning_rate": jnp.exp},
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m examples.simple_cnn", description=__doc__.split("\n\n")[0]
    )
    population_cnn.add_flags(parser, steps=1000, workers=4, log_dir="runs/simple_cnn")
    parser.add_argument("--steps-per-exploit", type=int, default=100)
    return population_cnn.run(EXPERIMENT, population_cnn.parse(parser, argv))


if __name__ == "__main__":
    main()
