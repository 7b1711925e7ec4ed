"""Which search, for which run: eight searches on three tasks of known character.

Every method trains a population of ``--population`` workers (16) for the same number
of steps each, so every method spends the same total training steps; what differs is
only how the population's hyperparameters (and weights) change on the way.

**Methods.** ``random``: the workers' initial hyperparameters, drawn from the space, never
changed (random search at equal budget; every other method except ``grid`` starts from
the same draw, seed for seed). ``grid``: a fixed grid over the space (``k`` points per
hyperparameter, geometrically spaced, ``k ** d <= population``; left-over workers repeat
grid points). ``wta``: :class:`~jaxpop.mutators.WinnerTakeAllGenetic` (every round, all
copy the best and explore). ``pbt_trunc`` / ``pbt_tourn``:
:class:`~jaxpop.mutators.PopulationBasedTraining`, asynchronous, ``selection=
"truncation"`` / ``"tournament"``. ``pb2``: :func:`~jaxpop.mutators.PB2`. ``fire``:
:class:`~jaxpop.mutators.FirePBT`, two sub-populations and ``population // 4``
evaluators (they train too, out of the same budget), ``max_eval_steps`` a quarter of
the run. ``mf_pbt``: :class:`~jaxpop.mutators.MultipleFrequenciesPBT`,
``min(4, population // 4)`` sub-populations; its frequencies are the paper's
``(1, 10, 25, 50)`` scaled by ``rounds / 100`` (at least one apart; a run of 100
rounds gets the paper's values), so the slowest sub-population first evolves half-way
through. Every decision interval is the task's ``interval`` (rounds: ``steps /
interval``); every other option is the mutator's default.

**Tasks.**

* ``moving`` -- the best hyperparameter moves: the PBT toy of Ray Tune's docs
  (``benchmarks/pbt_toy.py``: the learning rate that makes progress climbs from 0.001 to
  0.01 and falls back as the score grows), ``lr`` in ``uniform(1e-4, 0.02)``, one
  evaluation per step, interval 5. Score: the chosen worker's score (higher is better).
  A fixed rate can be right for part of the run only, so a search that adapts should win.
* ``trap`` -- a greedy trap: SGD on a noisy quadratic (Zhang et al. 2019, "Which
  algorithmic choices matter at which batch sizes?"). ``D = 16`` directions with
  curvatures ``h`` from 1 down to 1e-3 and gradient noise ``c * h``; each direction's
  expected squared distance follows ``m <- (1 - lr h)^2 m + lr^2 c h`` exactly (the
  expected dynamics of SGD, computed in closed form over a chunk of steps), starting at
  ``1 / h`` (every direction holds the same loss), and the loss is ``sum(h m) / 2``.
  **Mechanism**: the noise floor of the stiff directions is proportional to ``lr``, so
  *lowering* the learning rate lowers the loss within a few steps -- while the flat
  directions, which need a large rate for many steps, stall. Whoever is judged on the
  loss a short interval ahead comes to prefer the smaller rate once the fast early
  progress is over (the "short-horizon bias" of Wu et al. 2018; at the very start a
  larger rate still wins): greedy decisions decay the rate far too early,
  and the final loss ends up above that of the best *fixed* rate, which is in turn well
  above that of a large rate decayed late. ``lr`` in ``log_uniform(1e-3, 1.9)``,
  evaluation every 5 steps with 5% log-normal noise, interval 25. Score: the chosen
  worker's exact expected loss (lower is better).
* ``digits`` -- a real model: the examples' MLP (``examples.cnn.MLP``, one hidden layer
  of 128) on the offline digits set (``examples.data``), SGD with momentum 0.9 and
  weight decay, ``lr`` in ``log_uniform(1e-3, 0.5)``, ``wd`` in
  ``log_uniform(1e-5, 1e-1)``, batches of 32, validation accuracy every 25 steps on a
  fixed 20% of the training split, interval 50. Members train together under
  ``jax.vmap``. Score: the chosen worker's accuracy on the held-out test split (the
  examples' validation split, never seen by any search; higher is better).

**Protocol.** Every method, ``random`` and ``grid`` included (with a mutator that never
changes anything), runs through :class:`~jaxpop.PopulationController` in simulated
rounds: each worker asks (``maybe_get_worker_data``; a new assignment loads the copied
checkpoint and its hyperparameters), then the whole population trains one chunk, then
the workers report (``set_eval``, the checkpoint's ``params`` being the member's weights
and optimizer state) in a new random order each round, so asynchronous decisions see
some workers a chunk behind. The controller's clock counts rounds. At the end the
worker whose last reported value is best is chosen (all workers, FIRE's evaluators
included) and its score is the run's.

**Reported** per task and method over ``--seeds`` seeds: median and interquartile range
of the final score; wall time per run (median; training included); controller overhead
per call (median over seeds of the time inside ``maybe_get_worker_data`` and
``set_eval``, divided by the calls); the copy rate (``controller.decision_counts``,
copies over decisions, pooled over seeds; none for ``random`` and ``grid``). Timings on
a shared machine are noisy: compare within a run.

Usage (from the repo root)::

    python benchmarks/search_quality.py [--seeds 10] [--population 16]
        [--tasks moving,trap,digits] [--methods random,grid,...]
        [--moving-steps 500] [--trap-steps 1000] [--digits-steps 1000] [--quick]

``--quick``: 2 seeds and tiny runs (a smoke test, not a result). Prints one JSON line,
then a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import common
import jax
import jax.numpy as jnp
import numpy as np
from pbt_toy import train_iteration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples import data as data_lib
from examples.cnn import MLP, accuracy, cross_entropy
from jaxpop import PopulationController
from jaxpop.keys import root_key, split_key
from jaxpop.mutators import (
    PB2,
    FirePBT,
    MultipleFrequenciesPBT,
    Mutator,
    PopulationBasedTraining,
    WinnerTakeAllGenetic,
    explore,
)


# -- tasks ------------------------------------------------------------------------------
class Moving:
    """The PBT toy: the learning rate that makes progress moves as the score grows."""

    name = "moving"
    mode = "max"
    space: ClassVar[dict[str, Any]] = {"lr": explore.uniform(1e-4, 0.02)}
    report_every = 1
    interval = 5

    def __init__(self, steps: int):
        self.steps = steps

    def start(self, seed: int, n: int) -> dict[str, Any]:
        rngs = [np.random.default_rng([seed, 7, i]) for i in range(n)]
        return {"score": [0.0] * n, "rngs": rngs}

    def load(self, pop: dict[str, Any], i: int, params: Any) -> None:
        pop["score"][i] = params

    def train(self, pop: dict[str, Any], hparams: list[dict[str, float]]) -> np.ndarray:
        score = pop["score"]
        for i, (h, rng) in enumerate(zip(hparams, pop["rngs"], strict=True)):
            for _ in range(self.report_every):
                score[i] = train_iteration(score[i], h["lr"], rng)
        return np.asarray(score)

    def checkpoint(self, pop: dict[str, Any], i: int) -> Any:
        return pop["score"][i]

    def test(self, pop: dict[str, Any], i: int) -> float:
        return pop["score"][i]


class Trap:
    """SGD on a noisy quadratic: lowering the rate pays now and costs later."""

    name = "trap"
    mode = "min"
    space: ClassVar[dict[str, Any]] = {"lr": explore.log_uniform(1e-3, 1.9)}
    report_every = 5
    interval = 25
    curvatures = np.logspace(0.0, -3.0, 16)
    gradient_noise = 0.1
    eval_noise = 0.05

    def __init__(self, steps: int):
        self.steps = steps

    def start(self, seed: int, n: int) -> dict[str, Any]:
        m = np.tile(1.0 / self.curvatures, (n, 1))
        return {"m": m, "rng": np.random.default_rng([seed, 11])}

    def load(self, pop: dict[str, Any], i: int, params: Any) -> None:
        pop["m"] = pop["m"].copy()  # checkpoints hold rows of the old array
        pop["m"][i] = params

    def _loss(self, m: np.ndarray) -> np.ndarray:
        return 0.5 * (m @ self.curvatures)

    def train(self, pop: dict[str, Any], hparams: list[dict[str, float]]) -> np.ndarray:
        lr = np.asarray([h["lr"] for h in hparams])[:, None]
        h, k = self.curvatures, self.report_every
        a = (1.0 - lr * h) ** 2
        pop["m"] = a**k * pop["m"] + lr**2 * self.gradient_noise * h * (1 - a**k) / (1 - a)
        noise = np.exp(self.eval_noise * pop["rng"].standard_normal(len(hparams)))
        return self._loss(pop["m"]) * noise

    def checkpoint(self, pop: dict[str, Any], i: int) -> Any:
        return pop["m"][i]

    def test(self, pop: dict[str, Any], i: int) -> float:
        return float(self._loss(pop["m"][i]))


class Digits:
    """The examples' MLP on digits; members train together under ``jax.vmap``."""

    name = "digits"
    mode = "max"
    space: ClassVar[dict[str, Any]] = {
        "lr": explore.log_uniform(1e-3, 0.5),
        "wd": explore.log_uniform(1e-5, 1e-1),
    }
    report_every = 25
    interval = 50
    batch_size = 32
    momentum = 0.9

    def __init__(self, steps: int):
        self.steps = steps
        ds = data_lib.load("digits", seed=0)
        x = ds.train_images.reshape(len(ds.train_images), -1)
        cut = len(x) // 5  # the split is already shuffled
        self.x_val, self.y_val = jnp.asarray(x[:cut]), jnp.asarray(ds.train_labels[:cut])
        self.x_train, self.y_train = jnp.asarray(x[cut:]), jnp.asarray(ds.train_labels[cut:])
        self.x_test = jnp.asarray(ds.val_images.reshape(len(ds.val_images), -1))
        self.y_test = jnp.asarray(ds.val_labels)
        self.model = MLP()
        self._init = jax.jit(jax.vmap(lambda k: self.model.init(k, self.x_train[:1])))
        self._chunk = jax.jit(jax.vmap(self._member_chunk))
        self._accuracy = jax.jit(self._member_accuracy)

    def _member_chunk(self, params, velocity, lr, wd, key):
        def loss(p, idx):
            return cross_entropy(self.model.apply(p, self.x_train[idx]), self.y_train[idx])

        def step(carry, k):
            p, v = carry
            idx = jax.random.randint(k, (self.batch_size,), 0, len(self.x_train))
            g = jax.grad(loss)(p, idx)
            v = jax.tree.map(lambda v, g, p: self.momentum * v + g + wd * p, v, g, p)
            return (jax.tree.map(lambda p, v: p - lr * v, p, v), v), None

        keys = jax.random.split(key, self.report_every)
        (params, velocity), _ = jax.lax.scan(step, (params, velocity), keys)
        val = accuracy(self.model.apply(params, self.x_val), self.y_val)
        return params, velocity, val

    def _member_accuracy(self, params):
        return accuracy(self.model.apply(params, self.x_test), self.y_test)

    def start(self, seed: int, n: int) -> dict[str, Any]:
        params = self._init(jax.random.split(jax.random.key(seed), n))
        leaves, treedef = jax.tree.flatten((params, jax.tree.map(jnp.zeros_like, params)))
        return {
            "leaves": [np.asarray(x) for x in leaves],
            "treedef": treedef,
            "key": jax.random.key(seed + 100_000),
            "round": 0,
        }

    def load(self, pop: dict[str, Any], i: int, params: Any) -> None:
        pop["leaves"] = [np.array(x) for x in pop["leaves"]]  # checkpoints hold old rows
        for leaf, row in zip(pop["leaves"], params, strict=True):
            leaf[i] = row

    def train(self, pop: dict[str, Any], hparams: list[dict[str, float]]) -> np.ndarray:
        n = len(hparams)
        params, velocity = jax.tree.unflatten(pop["treedef"], pop["leaves"])
        lr = jnp.asarray([h["lr"] for h in hparams], jnp.float32)
        wd = jnp.asarray([h["wd"] for h in hparams], jnp.float32)
        keys = jax.random.split(jax.random.fold_in(pop["key"], pop["round"]), n)
        params, velocity, val = self._chunk(params, velocity, lr, wd, keys)
        pop["leaves"] = [np.asarray(x) for x in jax.tree.leaves((params, velocity))]
        pop["round"] += 1
        return np.asarray(val, np.float64)

    def checkpoint(self, pop: dict[str, Any], i: int) -> Any:
        return tuple(leaf[i] for leaf in pop["leaves"])

    def test(self, pop: dict[str, Any], i: int) -> float:
        params, _ = jax.tree.unflatten(pop["treedef"], [leaf[i] for leaf in pop["leaves"]])
        return float(self._accuracy(params))


TASKS: dict[str, type] = {"moving": Moving, "trap": Trap, "digits": Digits}


# -- methods ----------------------------------------------------------------------------
def _keep(state: Any, workers: Any, history: Any, now: float, key: Any) -> Any:
    return state, workers, ()


def unchanged(mode: str) -> Mutator:
    """A mutator that never changes a worker (random search, grid)."""
    return Mutator(init=dict, update=_keep, mode=mode)


def random_points(space: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` hyperparameter draws from ``space`` (the same for every method of a seed)."""
    return [explore.sample(key, space) for key in split_key(root_key(seed + 50_000), n)]


def grid_points(space: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """``k`` geometrically spaced values per hyperparameter, ``k ** d <= n``; the
    left-over workers repeat grid points in order."""
    names = sorted(space)
    k = max(1, math.floor(n ** (1 / len(names)) + 1e-9))
    axes = [np.geomspace(space[name].low, space[name].high, k) for name in names]
    points = [dict(zip(names, map(float, p), strict=True)) for p in itertools.product(*axes)]
    return [points[i % len(points)] for i in range(n)]


def mf_frequencies(rounds: int, count: int) -> tuple[int, ...]:
    """MF-PBT's ``(1, 10, 25, 50)`` scaled to ``rounds / 100``, strictly increasing."""
    out: list[int] = []
    for f in (1, 10, 25, 50)[:count]:
        out.append(max(round(f * rounds / 100), out[-1] + 1 if out else 1))
    return tuple(out)


def make_mutator(method: str, task: Any, n: int) -> Mutator:
    """The mutator of ``method`` for ``task`` with ``n`` workers."""
    space, mode, interval = task.space, task.mode, task.interval
    if method in ("random", "grid"):
        return unchanged(mode)
    if method == "wta":

        def mutate(meta: dict, key: np.ndarray) -> dict:
            return explore.explore(key, space, meta)

        return WinnerTakeAllGenetic(mutate, steps_per_exploit=interval)
    if method in ("pbt_trunc", "pbt_tourn"):
        selection = "truncation" if method == "pbt_trunc" else "tournament"
        return PopulationBasedTraining(
            perturbation_interval=interval, hyperparam_space=space, mode=mode, selection=selection
        )
    if method == "pb2":
        return PB2(perturbation_interval=interval, hyperparam_space=space, mode=mode)
    if method == "fire":
        evaluators = n // 4
        first = (n - evaluators + 1) // 2
        return FirePBT(
            perturbation_interval=interval,
            sub_population_sizes=(first, n - evaluators - first),
            num_evaluators=evaluators,
            max_eval_steps=max(1, task.steps // 4),
            hyperparam_space=space,
            mode=mode,
        )
    if method == "mf_pbt":
        rounds = task.steps // interval
        return MultipleFrequenciesPBT(
            t_ready=interval,
            frequencies=mf_frequencies(rounds, min(4, n // 4)),
            hyperparam_space=space,
            mode=mode,
        )
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


METHODS = ("random", "grid", "wta", "pbt_trunc", "pbt_tourn", "pb2", "fire", "mf_pbt")


# -- one run ----------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _best(values: list[float], mode: str) -> int:
    """The index of the best value; NaN ranks last."""
    sign = 1.0 if mode == "max" else -1.0
    ranked = [sign * v if math.isfinite(v) else -math.inf for v in values]
    return int(np.argmax(ranked))


def run_one(task: Any, method: str, seed: int, n: int) -> dict[str, Any]:
    """One run of ``method`` on ``task``: the final score, wall time and controller costs."""
    start = time.perf_counter()
    mutator = make_mutator(method, task, n)
    # WinnerTakeAllGenetic minimises: it is told -value on a task that maximises
    sign = -1.0 if mutator.mode != task.mode else 1.0
    initial = grid_points(task.space, n) if method == "grid" else random_points(task.space, n, seed)
    clock = _Clock()
    controller = PopulationController(initial, mutator, seed=seed, clock=clock)
    pop = task.start(seed, n)
    order = np.random.default_rng([seed, 31337])
    gen: list[str | None] = [None] * n
    step = [0] * n
    meta: list[Any] = [None] * n
    handle: list[Any] = [None] * n
    last = [math.nan] * n
    in_controller, calls = 0.0, 0
    for r in range(task.steps // task.report_every):
        clock.now = float(r)
        for i in range(n):
            t0 = time.perf_counter()
            data = controller.maybe_get_worker_data(i, gen[i], step[i], handle[i], meta[i])
            in_controller += time.perf_counter() - t0
            calls += 1
            if data is not None:
                gen[i], step[i], meta[i] = data.generation_id, data.step, data.meta_params
                if data.params is not None:
                    task.load(pop, i, data.params)
        values = task.train(pop, meta)
        for i in order.permutation(n):
            i = int(i)
            step[i] += task.report_every
            handle[i] = task.checkpoint(pop, i)
            last[i] = float(values[i])
            t0 = time.perf_counter()
            controller.set_eval(i, gen[i], step[i], handle[i], sign * last[i])
            in_controller += time.perf_counter() - t0
            calls += 1
    chosen = _best(last, task.mode)
    out = {
        "score": task.test(pop, chosen),
        "wall_s": time.perf_counter() - start,
        "overhead_us": in_controller / calls * 1e6,
        "decisions": None,
        "copies": None,
    }
    if mutator.counts is not None:
        counts = controller.decision_counts
        out["decisions"], out["copies"] = counts.decisions, counts.copies
    controller.close()
    return out


# -- the benchmark ----------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and quartiles of the scores, median costs, the pooled copy rate."""
    scores = [r["score"] for r in runs]
    q1, median, q3 = (float(q) for q in np.percentile(scores, [25, 50, 75]))
    out: dict[str, Any] = {
        "median": median,
        "q1": q1,
        "q3": q3,
        "scores": [round(s, 5) for s in scores],
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "overhead_us_per_call": statistics.median(r["overhead_us"] for r in runs),
        "decisions": None,
        "copies": None,
        "copy_rate": None,
    }
    if runs[0]["decisions"] is not None:
        decisions = sum(r["decisions"] for r in runs)
        copies = sum(r["copies"] for r in runs)
        out.update(
            decisions=decisions / len(runs),
            copies=copies / len(runs),
            copy_rate=copies / decisions if decisions else None,
        )
    return out


def run(
    tasks: dict[str, Any], methods: list[str], seeds: int, n: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """``{task: {method: summary}}`` over seeds ``0 .. seeds - 1``."""
    results: dict[str, Any] = {}
    for name, task in tasks.items():
        results[name] = {}
        run_one(task, methods[0], 0, n)  # compile the task (and warm up) outside the timings
        for method in methods:
            runs = [run_one(task, method, seed, n) for seed in range(seeds)]
            results[name][method] = summarise(runs)
            row = results[name][method]
            log(f"{name:<7} {method:<10} median {row['median']:.4g}  {row['wall_s']:.1f} s/run")
    return results


def _fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def print_table(result: dict[str, Any]) -> None:
    """The readable form of ``result``."""
    cfg = result["config"]
    print()
    print(
        f"final score over {cfg['seeds']} seeds, population {cfg['population']}, equal "
        f"training steps per worker (median [interquartile range])"
    )
    header = (
        f"{'task':<8} {'method':<10} {'median':>9} {'[q1, q3]':>21} {'wall/run':>9} "
        f"{'us/call':>8} {'copies':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, rows in result["results"].items():
        t = cfg["tasks"][name]
        print(f"{name}: {t['steps']} steps, {t['better']} is better")
        for method, row in rows.items():
            iqr = f"[{_fmt(row['q1'])}, {_fmt(row['q3'])}]"
            copies = "-" if row["copy_rate"] is None else f"{100 * row['copy_rate']:.0f}%"
            print(
                f"{'':<8} {method:<10} {_fmt(row['median']):>9} {iqr:>21} "
                f"{row['wall_s']:8.2f}s {row['overhead_us_per_call']:8.0f} {copies:>7}"
            )
    print()
    print(
        "wall/run: one run, training included (median over seeds); us/call: time inside\n"
        "maybe_get_worker_data and set_eval per call (median over seeds); copies: copies\n"
        "per decision (controller.decision_counts), pooled over seeds."
    )


FULL = {"seeds": 10, "moving_steps": 500, "trap_steps": 1000, "digits_steps": 1000}
QUICK = {"seeds": 2, "moving_steps": 40, "trap_steps": 150, "digits_steps": 200}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    # (None: the default, or --quick's; a value given explicitly wins over --quick's)
    parser.add_argument(
        "--seeds", type=common.positive_int, default=None, help=f"default {FULL['seeds']}"
    )
    parser.add_argument("--population", type=common.positive_int, default=16)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    for task in ("moving", "trap", "digits"):
        default = FULL[f"{task}_steps"]
        parser.add_argument(f"--{task}-steps", type=int, default=None, help=f"default {default}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 seeds, tiny runs: a smoke test (options given explicitly are kept)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.population < 8 or args.population % 4:
        parser.error("--population must be a multiple of 4, at least 8 (MF-PBT's layout)")
    methods = [m for m in args.methods.split(",") if m]
    if not methods:
        parser.error(f"--methods names no method; choose from {','.join(METHODS)}")
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; choose from {','.join(METHODS)}")
    steps = {"moving": args.moving_steps, "trap": args.trap_steps, "digits": args.digits_steps}
    tasks = {}
    for name in (t for t in args.tasks.split(",") if t):
        if name not in TASKS:
            parser.error(f"unknown task {name!r}; choose from {','.join(TASKS)}")
        tasks[name] = TASKS[name](steps[name])
        if steps[name] % tasks[name].report_every or steps[name] < 2 * tasks[name].interval:
            parser.error(
                f"--{name}-steps must be a multiple of {tasks[name].report_every} and at least "
                f"{2 * tasks[name].interval}"
            )
    if not tasks:
        parser.error(f"--tasks names no task; choose from {','.join(TASKS)}")

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    start = time.perf_counter()
    results = run(tasks, methods, args.seeds, args.population, log)
    result = {
        "benchmark": "search_quality",
        "config": {
            "seeds": args.seeds,
            "population": args.population,
            "quick": args.quick,
            "methods": methods,
            "tasks": {
                name: {
                    "steps": t.steps,
                    "report_every": t.report_every,
                    "interval": t.interval,
                    "better": "higher" if t.mode == "max" else "lower",
                    "space": {k: [type(s).__name__, s.low, s.high] for k, s in t.space.items()},
                }
                for name, t in tasks.items()
            },
        },
        "results": results,
        "seconds": time.perf_counter() - start,
        **common.environment(),
    }
    print(json.dumps(result))
    print_table(result)


if __name__ == "__main__":
    main()
