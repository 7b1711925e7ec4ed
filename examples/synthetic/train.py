"""The seed's synthetic example: find the one hyperparameter of a quadratic online.

The model is a small vector ``w``. Each training step is an SGD step (with a little
gradient noise) on ``0.5 * sum((w - target)**2)``, where ``target`` is the
hyperparameter, so training only ever pulls ``w`` towards ``target``. The evaluation is
``mean((w - 2.0)**2)``: it is lowest when ``target`` is 2.0, and training starts from
``target = 0.0``.

One worker follows the seed's Quick Start protocol with the seed's
``BranchingSingleMachine`` mutator. It trains ``EXPLOIT_STEPS`` steps with its current
target; then, from that checkpoint (the branch point), ``EXPLORE_STEPS`` more steps
with the same target (the centre); then, back at the branch point, ``EXPLORE_STEPS``
steps with ``target + delta`` (the ``"pos"`` branch) and, back again, with ``target -
delta`` (the ``"neg"`` branch); and it goes on from whichever of the three evaluated
best (the centre on a tie, so a target at the optimum stays there). ``delta`` shrinks
with every explore phase, so the target walks to 2.0 and settles there. The branches
see the same gradient noise (the noise is a function of the step), so they are
compared fairly.

The training step is compiled once: the target is a traced argument of the jitted
step, so a new target never recompiles it (``main`` returns the number of traces).

The loop honours the status of the controller's answers, as every jaxpop worker should:
``"waiting"`` (a synchronous round holds the worker) -- sleep briefly and ask again;
``"finished"`` (``controller.finish``, or the controller's ``stop_when``) -- stop.

Run it from the repo root::

    python -m examples.synthetic [--steps N] [--seed S] [--no-progress]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from examples.log_dirs import log_dir_arg, log_dir_problem
from jaxpop import population as pop_mod
from jaxpop.mutators import single_worker_explore

OPTIMUM = 2.0  # the target the evaluation rewards
START = 0.0  # the target training starts from
DIM = 8  # the size of w
LEARNING_RATE = 0.2
GRAD_NOISE = 0.05  # standard deviation of the gradient noise
EVAL_EVERY = 5  # report an evaluation every this many steps
EXPLOIT_STEPS = 20  # multiples of EVAL_EVERY, so that every phase ends on an evaluation
EXPLORE_STEPS = 10
DELTA = 0.5  # explore phase i tries target +/- DELTA * DELTA_DECAY**i
DELTA_DECAY = 0.8
DEFAULT_STEPS = 1000  # 20 phases (20 exploit steps, then 3 branches of 10); a second on a CPU
WAIT_S = 0.01  # how long to sleep before asking again when the controller says "waiting"


def mutate_fn(meta_params: dict[str, float], direction: str, phase_index: int) -> dict:
    """The hyperparameters of the ``direction`` branch of explore phase ``phase_index``.

    Returns a new dict: ``meta_params`` is shared with checkpoints in the history and
    must not be changed.
    """
    delta = DELTA * DELTA_DECAY**phase_index
    sign = 1.0 if direction == "pos" else -1.0
    return {**meta_params, "target": meta_params["target"] + sign * delta}


def init_params(key: jax.Array) -> jax.Array:
    """Fresh parameters: ``w`` near 0."""
    return 0.1 * jax.random.normal(key, (DIM,))


def make_train_step(noise_key: jax.Array) -> tuple[Callable[..., jax.Array], list[int]]:
    """A jitted ``train_step(w, target, step) -> w`` and a list that grows per trace."""
    traces: list[int] = []

    @jax.jit
    def train_step(w: jax.Array, target: jax.Array, step: jax.Array) -> jax.Array:
        traces.append(1)  # runs only while tracing
        noise = GRAD_NOISE * jax.random.normal(jax.random.fold_in(noise_key, step), w.shape)
        grad = (w - target) + noise  # the gradient of 0.5 * sum((w - target)**2), noisy
        return w - LEARNING_RATE * grad

    return train_step, traces


@jax.jit
def eval_loss(w: jax.Array) -> jax.Array:
    """The evaluation reported to the controller (lower is better)."""
    return jnp.mean((w - OPTIMUM) ** 2)


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options the synthetic examples share: ``--steps``, ``--seed``, ``--no-progress``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=DEFAULT_STEPS,
        help="training steps to run in all, explore branches included (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds w, the noise and the controller")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # (argparse named this function: "invalid _positive_int value")
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser(
        "python -m examples.synthetic",
        "Tune the target of a quadratic online with BranchingSingleMachine.",
    )
    parser.add_argument(
        "--log-dir", type=log_dir_arg, default=None, help="keep the controller's state here"
    )
    args = parser.parse_args(argv)
    if not -(2**63) <= args.seed < 2**63:  # (jax.random.key's: an OverflowError)
        parser.error("--seed must fit in 64 signed bits")
    problem = None if args.log_dir is None else log_dir_problem(args.log_dir, run_below=False)
    if problem is not None:
        parser.error(problem)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the example; returns what it found (see the end of this function)."""
    args = parse_args(argv)
    init_key, noise_key = jax.random.split(jax.random.key(args.seed))
    train_step, traces = make_train_step(noise_key)

    mutator = single_worker_explore.BranchingSingleMachine(
        mutate_fn, exploit_steps=EXPLOIT_STEPS, explore_steps=EXPLORE_STEPS
    )
    population = pop_mod.PopulationController(
        [{"target": START}], mutator, args.log_dir, seed=args.seed
    )

    # The seed's Quick Start worker loop, with a single worker.
    worker_id = 0
    gen_id = ""  # the generation we are training; none yet
    meta_params = None  # the hyperparameters; the population decides them
    params = None  # no parameters yet
    step = 0
    steps_run = 0  # training steps this loop ran
    initial_loss = loss = None
    with tqdm(total=args.steps, unit="step", disable=args.no_progress) as progress:
        for _ in range(args.steps):
            new_data = population.maybe_get_worker_data(
                worker_id, gen_id, step, params, meta_params
            )
            while new_data is not None and new_data.status == "waiting":  # held: ask again
                time.sleep(WAIT_S)
                new_data = population.maybe_get_worker_data(
                    worker_id, gen_id, step, params, meta_params
                )
            finished = new_data is not None and new_data.status == "finished"
            if new_data is not None:  # new work: a new branch, or the winning branch
                params = new_data.params
                meta_params = new_data.meta_params
                gen_id = new_data.generation_id
                step = new_data.step
                if params is None:
                    params = init_params(init_key)
                    initial_loss = float(eval_loss(params))
            if finished:  # the controller says the run is over: stop
                break

            params = train_step(params, meta_params["target"], step)
            step += 1
            steps_run += 1

            if step % EVAL_EVERY == 0:
                loss = float(eval_loss(params))
                population.set_eval(worker_id, gen_id, step, params, loss)
                progress.set_postfix(
                    {"target": f"{meta_params['target']:.4f}", "loss": f"{loss:.5f}"},
                    refresh=False,
                )
            progress.update()

    # Ask once more, as the next iteration would, so that a decision made by the last
    # evaluation (the winning branch of the last explore phase) is taken up.
    new_data = population.maybe_get_worker_data(worker_id, gen_id, step, params, meta_params)
    if new_data is not None:
        params, meta_params = new_data.params, new_data.meta_params
    target = float(meta_params["target"])
    final_loss = float(eval_loss(params))

    history = population.history
    best = min(  # (history.rank: a NaN or inf loss ranks last, never best)
        (c for c in history.checkpoints() if c.value is not None and math.isfinite(c.value)),
        key=lambda c: history.rank(c.value),
        default=None,
    )
    result = {
        "target": target,
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "best_target": None if best is None else float(best.meta_params["target"]),
        "best_loss": None if best is None else best.value,
        "generations": len(history),
        "checkpoints": history.num_checkpoints,
        "compilations": len(traces),
        "steps_run": steps_run,
        "status": population.active_workers[worker_id].status,
    }
    population.close()
    print(f"found target = {target:.4f}  (optimum {OPTIMUM}, started at {START})")
    initial = "not run here" if initial_loss is None else f"{initial_loss:.4f}"
    print(f"final eval loss = {final_loss:.6f}  (initial {initial})")
    if best is not None:
        print(
            f"best checkpoint: target = {result['best_target']:.4f}, eval loss = "
            f"{best.value:.6f}  (generation {best.generation_id}, step {best.step})"
        )
    print(
        f"controller.history: {result['generations']} generations, "
        f"{result['checkpoints']} checkpoints; train_step compiled {len(traces)} time(s)"
    )
    return result


if __name__ == "__main__":
    main()
