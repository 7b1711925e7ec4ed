"""The cost of running a population on Ray: call latency, and PBT against Ray Tune's PBT.

**Latency.** Round-trip time of ``maybe_get_worker_data``, ``set_eval`` and ``report``
with 1 and 8 concurrent workers, each making ``--calls`` calls of each kind (asking with
its current generation, reporting new steps), timed call by call in the worker:

* ``in_process``: a ``PopulationController`` on a ``log_dir`` (``durability="process"``)
  shared by worker threads of one process;
* ``ray``: the same controller served by :func:`jaxpop.distributed.ray.serve`, each
  worker in its own Ray actor (:func:`jaxpop.distributed.ray.start_workers`) calling it
  through a :class:`~jaxpop.distributed.ray.PopulationClient`;
* ``ray_noop``: a Ray actor method that does nothing, called the same way: Ray's floor.

Median and 99th percentile of each call, in microseconds; the mutator never changes
anything (only the transport and the controller's bookkeeping are measured). For the
Ray modes also the CPU time one call costs: in the calling workers (their process time
over their calls) and in the callee (the actor's process time over the run).

**PBT on the toy problem** (``benchmarks/pbt_toy.py``: population 4, ``--iterations``
per worker, perturbation interval 5, the same explore space and rules), side by side
in one Ray session:

* ``jaxpop_ray``: jaxpop's asynchronous ``PopulationBasedTraining`` served on Ray (with a
  ``log_dir``), 4 worker actors; a worker trains 5 iterations (the perturbation
  interval), then makes one ``report`` call (its score is its "checkpoint": the
  ``params`` it reports), which also answers whether it copies another worker;
* ``jaxpop_ray_seed_loop``: the same with the seed's loop: every iteration an ask and
  a ``set_eval`` (two round trips per iteration);
* ``jaxpop_threads``: the seed's loop in 4 threads around an in-process controller on a
  ``log_dir`` (no Ray in the loop). With an objective of microseconds, threads that
  called the controller only every 5 iterations would each run to the end within one
  interpreter time slice, with no population to speak of; the journal write of every
  ``set_eval`` lets them take turns;
* ``ray_tune``: Ray Tune's ``PopulationBasedTraining`` (``time_attr="training_iteration"``)
  over a function trainable that reports every iteration and saves a checkpoint (its
  score, as JSON) every 5, with Tune's default loggers; ``CheckpointConfig(num_to_keep=4)``
  and ``reuse_actors=True`` (what Tune recommends for PBT). Its "exploits" count the
  trials restarted from a checkpoint.

Both run 4 workers/trials at once with 0.5 CPU each. Reported: wall-clock time of the
run (from starting the controller or ``Tuner.fit`` to the last result, actor start-up
included), iterations run (a worker that copies another resumes at the copied step, so
a run may take more or fewer than 4 x ``--iterations``), exploits, the final best score
(the best last score of any worker), and the **overhead per training iteration** =
(time - time spent in the objective) / iterations, over three spans: the whole run
(the definition of ``pbt_toy.py``), *steady*: from the first training iteration of any
worker to the end (start-up excluded), and *all running*: while every worker (trial)
runs, from the last one's first iteration to the first one's last report (start-up and
tail excluded; only the iterations reported inside it count).

Reference (the issue, Ray 2.60 on this class of machine): ``ray.init(num_cpus=2)`` 2-3 s;
an actor round trip about 0.7 ms; Ray Tune's PBT on this problem about 17 ms of overhead
per iteration (about 440 trial restarts per run, 0.1-0.5 s each).

Usage (from the repo root; needs ``pip install "ray[default,tune]"``)::

    python benchmarks/ray_overhead.py [--calls 2000] [--iterations 500] [--seeds 1]
        [--sections latency,pbt] [--methods jaxpop_ray,jaxpop_ray_seed_loop,...]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import common
import numpy as np
import ray
import ray.cloudpickle

from jaxpop import PopulationController
from jaxpop.distributed import ray as jaxpop_ray
from jaxpop.mutators.base import Mutator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pbt_toy

ray.cloudpickle.register_pickle_by_value(pbt_toy)  # Ray workers cannot import benchmarks/

CONCURRENCY = (1, 8)


def _noop_mutator() -> Mutator:
    return Mutator(init=lambda: (), update=lambda s, w, h, now, key: (s, w, ()))


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    values = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"median_us": float(np.median(values)), "p99_us": float(np.percentile(values, 99))}


# -- latency ----------------------------------------------------------------------------
def _call_loop(worker_id: int, controller: Any, calls: int) -> dict[str, list[int]]:
    """``calls`` times ask, set_eval, report; each call's duration in nanoseconds."""
    clock = time.perf_counter_ns
    data = controller.maybe_get_worker_data(worker_id, None, 0, None, None)
    generation_id, step = data.generation_id, data.step
    asks, evals, reports = [], [], []
    for _ in range(calls):
        t0 = clock()
        controller.maybe_get_worker_data(worker_id, generation_id, step, None, None)
        t1 = clock()
        step += 1
        controller.set_eval(worker_id, generation_id, step, f"h{step}", 1.0 / step)
        t2 = clock()
        step += 1
        controller.set_eval_and_ask(worker_id, generation_id, step, f"h{step}", 1.0 / step)
        t3 = clock()
        asks.append(t1 - t0)
        evals.append(t2 - t1)
        reports.append(t3 - t2)
    return {"ask": asks, "eval": evals, "report": reports}


class _Noop:
    def call(self, *args: Any) -> None:
        return None

    def cpu_s(self) -> float:
        return time.process_time()


def _noop_loop(worker_id: int, actor: Any, calls: int) -> dict[str, list[int]]:
    clock = time.perf_counter_ns
    samples = []
    for i in range(3 * calls):
        t0 = clock()
        ray.get(actor.call.remote(worker_id, i))
        samples.append(clock() - t0)
    return {"call": samples}


def _summarize(runs: list[dict[str, list[int]]], seconds: float) -> dict[str, Any]:
    merged: dict[str, list[int]] = {}
    for run in runs:
        for name, samples in run.items():
            merged.setdefault(name, []).extend(samples)
    out = {name: _percentiles(samples) for name, samples in merged.items()}
    out["calls_per_s"] = sum(len(s) for s in merged.values()) / seconds
    return out


def latency(calls: int) -> dict[str, Any]:
    """``{mode: {concurrency: summary}}``."""
    results: dict[str, Any] = {"in_process": {}, "ray": {}, "ray_noop": {}}
    for n in CONCURRENCY:
        with tempfile.TemporaryDirectory() as log_dir:
            with PopulationController([{}] * n, _noop_mutator(), log_dir) as controller:
                _call_loop(0, controller, 100)  # warm up
                runs, seconds = common.in_threads(_call_loop, n, controller, calls)
            results["in_process"][n] = _summarize(runs, seconds)
        with (
            tempfile.TemporaryDirectory() as log_dir,
            jaxpop_ray.serve([{}] * n, _noop_mutator(), log_dir=log_dir, name="latency") as client,
        ):
            _call_loop(0, client, 100)  # warm up from the driver
            callee_cpu = client.info()["cpu_s"]
            group = jaxpop_ray.start_workers(
                _timed, n, args=(_call_loop, client, calls), num_cpus=0.1
            )
            with group:
                timed = group.wait()
            callee_cpu = client.info()["cpu_s"] - callee_cpu
            results["ray"][n] = _summarize_timed(timed, callee_cpu)
        actor = ray.remote(_Noop).options(num_cpus=0).remote()
        callee_cpu = ray.get(actor.cpu_s.remote())
        with jaxpop_ray.start_workers(
            _timed, n, args=(_noop_loop, actor, calls), num_cpus=0.1
        ) as group:
            timed = group.wait()
        callee_cpu = ray.get(actor.cpu_s.remote()) - callee_cpu
        results["ray_noop"][n] = _summarize_timed(timed, callee_cpu)
        ray.kill(actor)
    return results


def _timed(worker_id: int, fn: Any, *args: Any) -> dict[str, Any]:
    """Runs ``fn`` in a worker actor, timing it (wall and this process's CPU time)."""
    start, cpu = time.time(), time.process_time()
    run = fn(worker_id, *args)
    return {"run": run, "start": start, "end": time.time(), "cpu_s": time.process_time() - cpu}


def _summarize_timed(timed: list[dict[str, Any]], callee_cpu_s: float) -> dict[str, Any]:
    """:func:`_summarize`, plus the CPU time one call costs the callers and the callee."""
    runs = [t["run"] for t in timed]
    calls = sum(len(samples) for run in runs for samples in run.values())
    return _summarize(runs, _span(timed)) | {
        "caller_cpu_us_per_call": sum(t["cpu_s"] for t in timed) / calls * 1e6,
        "callee_cpu_us_per_call": callee_cpu_s / calls * 1e6,
    }


def _span(timed: list[dict[str, Any]]) -> float:
    return max(t["end"] for t in timed) - min(t["start"] for t in timed)


# -- PBT: jaxpop on Ray -----------------------------------------------------------------
def _pbt_worker(
    worker_id: int, client: Any, iterations: int, seed: int, report_every: int
) -> dict[str, Any]:
    """Trains ``report_every`` iterations between two reports (its score is its "params").

    ``report_every=1``: the seed's loop, ask and ``set_eval`` every iteration (two round
    trips). Otherwise one ``report`` (eval and ask, one round trip) every
    ``report_every`` iterations.
    """
    rng = np.random.default_rng([seed, worker_id])
    data = client.maybe_get_worker_data(worker_id, None, 0, None, None)
    start = time.time()  # its first iteration: after the first call (the connection)
    score, marks = 0.0, []
    while True:
        if data is not None:
            generation_id, step, meta = data.generation_id, data.step, data.meta_params
            score = 0.0 if data.params is None else data.params
        if step >= iterations:
            break
        count, in_objective = 0, 0.0
        for _ in range(min(report_every, iterations - step)):
            t0 = time.perf_counter()
            score = pbt_toy.train_iteration(score, meta["lr"], rng)
            in_objective += time.perf_counter() - t0
            step += 1
            count += 1
        if report_every == 1:
            client.set_eval(worker_id, generation_id, step, score, score)
            data = client.maybe_get_worker_data(worker_id, generation_id, step, score, meta)
        else:
            data = client.set_eval_and_ask(worker_id, generation_id, step, score, score)
        marks.append((worker_id, time.time(), count, in_objective))
    return {"score": score, "start": start, "marks": marks}


def pbt_jaxpop(iterations: int, seed: int, report_every: int) -> dict[str, Any]:
    population = [{"lr": pbt_toy.INITIAL_LR}] * pbt_toy.POPULATION
    with tempfile.TemporaryDirectory() as log_dir:
        start = time.perf_counter()
        with jaxpop_ray.serve(
            population, pbt_toy.pbt(), log_dir=log_dir, name="pbt", seed=seed
        ) as client:
            runs = jaxpop_ray.run_workers(
                _pbt_worker,
                pbt_toy.POPULATION,
                args=(client, iterations, seed, report_every),
                num_cpus=0.5,
            )
            wall = time.perf_counter() - start
            exploits = client.state.mutator_state.num_exploits
    return _pbt_row(runs, wall, exploits)


def pbt_threads(iterations: int, seed: int, report_every: int) -> dict[str, Any]:
    """The same workers as threads around an in-process controller (for reference)."""
    population = [{"lr": pbt_toy.INITIAL_LR}] * pbt_toy.POPULATION
    with tempfile.TemporaryDirectory() as log_dir:
        start = time.perf_counter()
        with PopulationController(population, pbt_toy.pbt(), log_dir, seed=seed) as controller:
            runs, _ = common.in_threads(
                _pbt_worker, pbt_toy.POPULATION, controller, iterations, seed, report_every
            )
            wall = time.perf_counter() - start
            exploits = controller.state.mutator_state.num_exploits
    return _pbt_row(runs, wall, exploits)


def _pbt_row(runs: list[dict[str, Any]], wall: float, exploits: int) -> dict[str, Any]:
    starts = {i: r["start"] for i, r in enumerate(runs)}
    marks = [mark for r in runs for mark in r["marks"]]
    return _overheads(wall, starts, marks) | {
        "final_best": max(r["score"] for r in runs),
        "exploits": exploits,
    }


Mark = tuple[Any, float, int, float]  # (worker or trial, when, iterations, objective s)


def _overheads(wall: float, starts: dict[Any, float], marks: list[Mark]) -> dict[str, Any]:
    """Overhead per iteration: over the whole run (``wall`` s), from the first iteration
    on, and while every worker runs (from the last one's first iteration to the first
    one's last report: no start-up, no tail). ``starts``: each worker's first iteration;
    ``marks``: each report, with the iterations and the objective time since the last.
    """
    count = sum(m[2] for m in marks)
    objective = sum(m[3] for m in marks)
    last = {}
    for source, when, _, _ in marks:
        last[source] = max(last.get(source, 0.0), when)
    steady = max(last.values()) - min(starts.values())
    begin, end = max(starts.values()), min(last.values())
    inside = [m for m in marks if begin < m[1] <= end]
    inside_count = sum(m[2] for m in inside)
    return {
        "wall_s": wall,
        "iterations": count,
        "overhead_ms_per_iteration": (wall - objective) / count * 1e3,
        "steady_overhead_ms_per_iteration": (steady - objective) / count * 1e3,
        "all_running_s": end - begin,
        "all_running_overhead_ms_per_iteration": (
            (end - begin - sum(m[3] for m in inside)) / inside_count * 1e3
            if inside_count
            else math.nan
        ),
    }


# -- PBT: Ray Tune ----------------------------------------------------------------------
def _tune_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    score, step, restored = 0.0, 0, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # an exploit (or a pause) restarted this trial
        restored = 1
        with (
            checkpoint.as_directory() as directory,
            open(os.path.join(directory, "state.json")) as f,
        ):
            score, step = json.load(f)
    trial = tune.get_context().get_trial_id()
    rng = np.random.default_rng([config["seed"], step, *trial.encode()])
    while step < config["iterations"]:
        t0 = time.perf_counter()
        score = pbt_toy.train_iteration(score, config["lr"], rng)
        objective = time.perf_counter() - t0
        step += 1
        metrics = {
            "score": score,
            "step": step,
            "objective_s": objective,
            "restored": restored,
            "end": time.time(),
        }
        restored = 0
        if step % pbt_toy.INTERVAL == 0:
            with tempfile.TemporaryDirectory() as directory:
                with open(os.path.join(directory, "state.json"), "w") as f:
                    json.dump([score, step], f)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


def pbt_tune(iterations: int, seed: int) -> dict[str, Any]:
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    class Count(tune.Callback):
        def __init__(self) -> None:
            self.starts: dict[str, float] = {}
            self.marks: list[Mark] = []
            self.restores = 0

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            began = result["end"] - result["objective_s"]
            self.starts[trial.trial_id] = min(self.starts.get(trial.trial_id, began), began)
            self.marks.append((trial.trial_id, result["end"], 1, result["objective_s"]))
            self.restores += result["restored"]

    counter = Count()
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",
        metric="score",
        mode="max",
        perturbation_interval=pbt_toy.INTERVAL,
        hyperparam_mutations={
            "lr": tune.uniform(pbt_toy.SPACE["lr"].low, pbt_toy.SPACE["lr"].high)
        },
        quantile_fraction=pbt_toy.QUANTILE,
        resample_probability=pbt_toy.RESAMPLE,
        perturbation_factors=pbt_toy.FACTORS,
    )
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            tune.with_resources(_tune_trainable, {"cpu": 0.5}),
            param_space={"lr": pbt_toy.INITIAL_LR, "seed": seed, "iterations": iterations},
            tune_config=tune.TuneConfig(
                num_samples=pbt_toy.POPULATION, scheduler=scheduler, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name="pbt_toy",
                storage_path=storage,
                stop={"training_iteration": iterations},
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
                callbacks=[counter],
            ),
        )
        start = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - start
    best = grid.get_best_result(metric="score", mode="max", scope="last")
    return _overheads(wall, counter.starts, counter.marks) | {
        "final_best": float(best.metrics["score"]),
        "exploits": counter.restores,  # trial restarts from a checkpoint
    }


PBT_METHODS: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "jaxpop_ray": functools.partial(pbt_jaxpop, report_every=pbt_toy.INTERVAL),
    "jaxpop_ray_seed_loop": functools.partial(pbt_jaxpop, report_every=1),
    "jaxpop_threads": functools.partial(pbt_threads, report_every=1),
    "ray_tune": pbt_tune,
}


def pbt(iterations: int, seeds: int, methods: list[str]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name in methods:
        runs = [PBT_METHODS[name](iterations, seed) for seed in range(seeds)]
        rows[name] = {
            key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "exploits"
        }
        rows[name]["exploits"] = statistics.fmean(r["exploits"] for r in runs)
        rows[name]["finals"] = [round(r["final_best"], 1) for r in runs]
    if "ray_tune" in rows:
        tune = rows["ray_tune"]
        rows["ratios"] = {
            name: {
                "overhead_per_iteration_tune_over_jaxpop": tune["overhead_ms_per_iteration"]
                / row["overhead_ms_per_iteration"],
                "steady_overhead_per_iteration_tune_over_jaxpop": tune[
                    "steady_overhead_ms_per_iteration"
                ]
                / row["steady_overhead_ms_per_iteration"],
                "all_running_overhead_per_iteration_tune_over_jaxpop": tune[
                    "all_running_overhead_ms_per_iteration"
                ]
                / row["all_running_overhead_ms_per_iteration"],
                "wall_clock_tune_over_jaxpop": tune["wall_s"] / row["wall_s"],
                "final_best_jaxpop_over_tune": row["final_best"] / tune["final_best"],
            }
            for name, row in rows.items()
            if name != "ray_tune"
        }
    return rows


# -- output -----------------------------------------------------------------------------
def print_table(result: dict[str, Any]) -> None:
    if "latency" in result:
        print()
        print(f"round-trip latency, {result['config']['calls']} calls of each kind per worker (us)")
        header = (
            f"{'mode':<11} {'workers':>7} {'call':<6} {'median':>9} {'p99':>9} {'calls/s':>9} "
            f"{'CPU/call: callers':>17} {'callee':>7}"
        )
        print(header)
        print("-" * len(header))
        for mode, by_n in result["latency"].items():
            for n, row in by_n.items():
                cpu = ""
                if "caller_cpu_us_per_call" in row:
                    cpu = (
                        f" {row['caller_cpu_us_per_call']:17.0f} "
                        f"{row['callee_cpu_us_per_call']:7.0f}"
                    )
                for call in ("ask", "eval", "report", "call"):
                    if call in row:
                        print(
                            f"{mode:<11} {n:>7} {call:<6} {row[call]['median_us']:9.1f} "
                            f"{row[call]['p99_us']:9.1f} {row['calls_per_s']:9.0f}{cpu}"
                        )
    if "pbt" in result:
        rows = result["pbt"]
        print()
        print(
            f"PBT toy problem, population {pbt_toy.POPULATION}, "
            f"{result['config']['iterations']} iterations per worker, "
            f"{result['config']['seeds']} seed(s) (medians)"
        )
        header = (
            f"{'method':<20} {'final best':>10} {'wall s':>7} {'iterations':>10} "
            f"{'overhead/iter':>13} {'steady':>10} {'all running':>11} {'exploits':>8}"
        )
        print(header)
        print("-" * len(header))
        for name, row in rows.items():
            if name == "ratios":
                continue
            print(
                f"{name:<20} {row['final_best']:10.1f} {row['wall_s']:7.1f} "
                f"{row['iterations']:10.0f} {row['overhead_ms_per_iteration']:10.3f} ms "
                f"{row['steady_overhead_ms_per_iteration']:7.3f} ms "
                f"{row['all_running_overhead_ms_per_iteration']:8.3f} ms {row['exploits']:8.0f}"
            )
        for name, ratios in rows.get("ratios", {}).items():
            print(
                f"Ray Tune / {name}: overhead per iteration "
                f"{ratios['overhead_per_iteration_tune_over_jaxpop']:.1f}x (steady "
                f"{ratios['steady_overhead_per_iteration_tune_over_jaxpop']:.1f}x, all running "
                f"{ratios['all_running_overhead_per_iteration_tune_over_jaxpop']:.1f}x), "
                f"wall clock "
                f"{ratios['wall_clock_tune_over_jaxpop']:.1f}x; final best {name} / Tune "
                f"{ratios['final_best_jaxpop_over_tune']:.2f}"
            )
        print(
            "overhead/iter: (wall clock - time in the objective) / iterations run; steady: "
            "the same from the first training iteration on (start-up excluded); all running: "
            "the same while every worker or trial runs (no start-up, no tail). "
            "Ray Tune's exploits: trials restarted from a checkpoint."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--sections", default="latency,pbt")
    parser.add_argument("--methods", default=",".join(PBT_METHODS), help="PBT methods to run")
    parser.add_argument("--verbose", action="store_true", help="show the Ray workers' logs")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=args.verbose)
    init_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "benchmark": "ray_overhead",
        "config": {
            "calls": args.calls,
            "iterations": args.iterations,
            "seeds": args.seeds,
            "report_every": pbt_toy.INTERVAL,
        },
        "ray_init_s": init_s,
    }
    try:
        if "latency" in sections:
            result["latency"] = latency(args.calls)
        if "pbt" in sections:
            result["pbt"] = pbt(args.iterations, args.seeds, args.methods.split(","))
    finally:
        ray.shutdown()
    result.update(
        seconds=time.perf_counter() - start,
        **common.environment(ray),
    )
    print(json.dumps(result))
    print_table(result)


if __name__ == "__main__":
    main()
