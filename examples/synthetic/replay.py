"""Search with a population, then replay the schedule it found from scratch.

1. **Search**: the synthetic example (:mod:`examples.synthetic.train`) tunes the target
   of a quadratic online with ``BranchingSingleMachine``; its controller's history is
   kept in a temporary ``log_dir`` and read back with ``jaxpop.storage.read_state``.
2. **Replay**: :func:`jaxpop.schedules.from_lineage` turns the lineage of the best final
   member into the piecewise schedule of targets it actually trained with, step by step
   (explore branches that lost are not in it). A single fresh worker trains from the
   same initial parameters with ``FixedSchedule(schedule, on_ask=True)`` and asks for
   its data every step, so it trains with exactly those targets -- and, because the training step's
   noise is a function of the step, it ends with exactly the searched member's
   parameters and score, in fewer steps than the search took.

Run it from the repo root::

    python -m examples.synthetic.replay [--steps N] [--seed S] [--export DIR] [--no-progress]

``--export DIR`` writes the found schedule as ``DIR/schedule.json`` (read it back with
``jaxpop.schedules.from_json``) and ``DIR/schedule.csv``.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
from tqdm import tqdm

from examples.synthetic import train
from jaxpop import storage
from jaxpop.mutators import FixedSchedule
from jaxpop.population import PopulationController
from jaxpop.schedules import Piecewise, best_final, from_lineage

__all__ = ["main", "replay", "search"]


def search(steps: int, seed: int, progress: bool) -> Any:
    """Runs the synthetic example's search; returns its controller's history."""
    with tempfile.TemporaryDirectory() as log_dir:
        argv = ["--steps", str(steps), "--seed", str(seed), "--log-dir", log_dir]
        train.main([*argv, *([] if progress else ["--no-progress"])])
        return storage.read_state(log_dir).history


def replay(schedule: Piecewise, steps: int, seed: int, progress: bool) -> dict[str, Any]:
    """Trains one fresh worker for ``steps`` steps with ``FixedSchedule(schedule, on_ask=True)``.

    Same initial parameters and gradient noise as the search (both come from ``seed``).
    Returns the final loss, the targets used at each step and the replay's history.
    """
    init_key, noise_key = jax.random.split(jax.random.key(seed))
    train_step, traces = train.make_train_step(noise_key)
    mutator = FixedSchedule(schedule, on_ask=True)  # a change applies at the ask at its step
    with PopulationController([schedule(0)], mutator, seed=seed) as population:
        gen_id, meta_params, params, step = "", None, None, 0
        used = []
        for _ in tqdm(range(steps), unit="step", disable=not progress):
            new_data = population.maybe_get_worker_data(0, gen_id, step, params, meta_params)
            if new_data is not None:
                gen_id, meta_params = new_data.generation_id, new_data.meta_params
                params, step = new_data.params, new_data.step
                if params is None:
                    params = train.init_params(init_key)
            used.append(meta_params)
            params = train_step(params, meta_params["target"], step)
            step += 1
            if step % train.EVAL_EVERY == 0:
                population.set_eval(0, gen_id, step, params, float(train.eval_loss(params)))
        return {
            "loss": float(train.eval_loss(params)),
            "used": used,
            "generation_id": gen_id,
            "history": population.history,
            "compilations": len(traces),
        }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = train.base_parser(
        "python -m examples.synthetic.replay",
        "Search with BranchingSingleMachine, then replay the found schedule.",
    )
    parser.add_argument("--export", default=None, help="write schedule.json and schedule.csv here")
    args = parser.parse_args(argv)
    if args.steps < train.EVAL_EVERY:  # (no evaluation: nothing to replay)
        parser.error(f"--steps must be at least {train.EVAL_EVERY}, the first evaluation's step")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the search and the replay; returns both scores and the schedule."""
    args = parse_args(argv)
    progress = not args.no_progress
    print(f"== search: BranchingSingleMachine, {args.steps} steps (branches included)")
    history = search(args.steps, args.seed, progress)
    best = best_final(history)
    schedule = from_lineage(history)  # the best final member's, by default
    first, last = schedule.values[0]["target"], schedule.values[-1]["target"]
    print(
        f"best final member: generation {best.generation_id}, step {best.step}, "
        f"eval loss {best.value:.6f}"
    )
    print(
        f"its schedule (from_lineage): {len(schedule)} pieces, target {first:.4f} at step 0 "
        f"-> {last:.4f} from step {schedule.steps[-1]}"
    )
    if args.export:
        out = pathlib.Path(args.export)
        out.mkdir(parents=True, exist_ok=True)
        (out / "schedule.json").write_text(schedule.to_json())
        (out / "schedule.csv").write_text(schedule.to_csv())
        print(f"wrote {out / 'schedule.json'} and {out / 'schedule.csv'}")

    print(f"== replay: one fresh worker, FixedSchedule(from_lineage(history)), {best.step} steps")
    replayed = replay(schedule, best.step, args.seed, progress)
    same_schedule = from_lineage(replayed["history"], replayed["generation_id"]) == schedule
    same_steps = replayed["used"] == [schedule(t) for t in range(best.step)]
    print(f"search: best final member's eval loss = {best.value:.6f}")
    print(f"replay: eval loss                     = {replayed['loss']:.6f}")
    print(
        f"replay trained with the found schedule at every step: {same_steps and same_schedule}; "
        f"train_step compiled {replayed['compilations']} time(s)"
    )
    return {
        "search_loss": best.value,
        "replay_loss": replayed["loss"],
        "steps": best.step,
        "search_steps": args.steps,
        "schedule": schedule,
        "same_schedule": same_schedule,
        "same_steps": same_steps,
        "compilations": replayed["compilations"],
    }


if __name__ == "__main__":
    main()
