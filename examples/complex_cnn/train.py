"""Many hyperparameters at once, evolved against validation loss by wall-clock rounds.

Each worker's ``meta_params`` hold the log learning rate, Adam's ``b1`` and ``b2``,
label smoothing, the strengths of four photometric augmentations (hue, saturation,
contrast, brightness; hue and saturation act on colour images only, so on the
grayscale default data set they are carried but change nothing) and the batch size.
Every ``--seconds-per-exploit`` seconds, once each worker has reported, the workers
copy the best one (lowest validation loss) and perturb every hyperparameter (the best
one too: the seed's rule, ``keep_winner=False``): continuous ones by a factor of 0.8 or
1.2 (or a shift, for values near 1 such as ``b2``), clipped to their range; the batch
size moves to a neighbouring choice. All numeric hyperparameters reach the compiled
step as arrays, so they never recompile it; the batch size changes array shapes, so the
step compiles once per batch size in ``BATCH_SIZES``.

Run from the repo root::

    python -m examples.complex_cnn [--steps 600] [--workers 4] [--log-dir runs/complex_cnn]
        [--dataset digits|cifar10] [--seconds-per-exploit 10]
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

BATCH_SIZES = (32, 64, 128)
#: name -> (low, high) of each continuous hyperparameter.
RANGES = {
    "log_lr": (math.log(1e-5), math.log(1.0)),
    "b1": (0.5, 0.99),
    "b2": (0.9, 0.9999),
    "label_smoothing": (0.0, 0.3),
    "hue": (0.0, 0.5),
    "saturation": (0.0, 0.9),
    "contrast": (0.0, 0.9),
    "brightness": (0.0, 0.5),
}


def mutate_fn(meta_params: dict[str, Any], key) -> dict[str, Any]:
    """Perturbs every hyperparameter, keeping each inside its range."""
    rng = np.random.default_rng(key)
    out = {}
    for name, (low, high) in RANGES.items():
        value = meta_params[name]
        if name in ("log_lr", "b1", "b2"):  # shift: log-scale or close to 1
            span = high - low
            value = value + rng.choice((-0.1, 0.1)) * span
        else:
            value = value * rng.choice((0.8, 1.2)) if value > 0 else rng.uniform(0, 0.1 * high)
        out[name] = float(np.clip(value, low, high))
    index = BATCH_SIZES.index(meta_params["batch_size"]) + int(rng.choice((-1, 1)))
    out["batch_size"] = BATCH_SIZES[int(np.clip(index, 0, len(BATCH_SIZES) - 1))]
    return out


def initial_population(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Each hyperparameter drawn uniformly from its range (the learning rate from 1e-4 to
    3e-2, log-uniformly; the batch size from the choices)."""
    members = []
    for _ in range(n):
        meta = {name: float(rng.uniform(low, high)) for name, (low, high) in RANGES.items()}
        meta["log_lr"] = float(rng.uniform(math.log(1e-4), math.log(3e-2)))
        meta["batch_size"] = int(rng.choice(BATCH_SIZES))
        members.append(meta)
    return members


EXPERIMENT = population_cnn.Experiment(
    name="complex_cnn",
    initial_population=initial_population,
    mutator=lambda args: winner_take_all_genetic.WinnerTakeAllGenetic(
        mutate_fn, seconds_per_exploit=args.seconds_per_exploit
    ),
    optimizer_keys={"log_lr": "learning_rate", "b1": "b1", "b2": "b2"},
    optimizer_transforms={"learning_rate": jnp.exp},
    augmentation_keys=("hue", "saturation", "contrast", "brightness"),
    batch_size=lambda meta, args: int(meta["batch_size"]),
    largest_batch_size=lambda args: max(BATCH_SIZES),  # (mutate_fn moves it up to that)
    label_smoothing_key="label_smoothing",
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m examples.complex_cnn", description=__doc__.split("\n\n")[0]
    )
    population_cnn.add_flags(
        parser, steps=600, workers=4, log_dir="runs/complex_cnn", batch_size=False
    )
    parser.add_argument("--seconds-per-exploit", type=float, default=10.0)
    return population_cnn.run(EXPERIMENT, population_cnn.parse(parser, argv))


if __name__ == "__main__":
    main()
