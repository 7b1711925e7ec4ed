"""The controller under real threads: the seed's Quick Start, a stress test, convergence."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time

import numpy as np
import pytest

from jaxpop import PopulationController
from jaxpop.history import is_kept
from jaxpop.mutators import WinnerTakeAllGenetic


def run_in_threads(target, num_threads: int, timeout: float = 60.0) -> list[BaseException]:
    """Runs ``target(i)`` in ``num_threads`` threads started together; returns their errors.

    Fails the test if a thread has not finished within ``timeout`` seconds.
    """
    errors: list[BaseException] = []
    barrier = threading.Barrier(num_threads)

    def main(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as e:  # reported by the test, not swallowed
            errors.append(e)

    threads = [threading.Thread(target=main, args=(i,), daemon=True) for i in range(num_threads)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still running after {timeout} s: {alive}"
    return errors


def check_history_invariants(controller: PopulationController) -> None:
    """Assignments exist, the checkpoint count is right, parent links are sound."""
    state = controller.state
    history = state.history
    for w in state.workers:
        assert w.generation_id in history
        assert history.get_checkpoint(w.generation_id, w.step) is not None
    checkpoints = list(history.checkpoints())
    assert history.num_checkpoints == len(checkpoints)
    assert history.num_checkpoints == sum(len(history[g]) for g in history)
    roots = set()
    for c in checkpoints:
        first = history.first(c.generation_id)
        if c.parent is None:
            assert c is first and c.step == 0
            roots.add(c.ref)
            continue
        parent = history.get_checkpoint(*c.parent)
        assert parent is not None, f"{c.ref} has a dangling parent {c.parent}"
        if c.parent[0] == c.generation_id:
            assert parent.step < c.step and c is not first
        else:  # (a kept generation's one checkpoint keeps the parent it had)
            assert c is first and (parent.step == c.step or is_kept(c.generation_id))
    assert len([r for r in roots if not is_kept(r[0])]) == state.population_size
    reaches_root = set(roots)
    for c in checkpoints:
        path, ref = [], c.ref
        while ref not in reaches_root:
            assert ref not in path and ref is not None, f"{c.ref}: broken lineage {path}"
            path.append(ref)
            ref = history.get_checkpoint(*ref).parent
        reaches_root.update(path)


# -- (a) the seed's Quick Start, with only the import prefix changed -------------------
def test_seed_quick_start_runs_in_two_threads():
    from jaxpop import population as pop_mod
    from jaxpop.mutators import winner_take_all_genetic

    # First we define how we want the population to be mutated.
    # Let's just randomly perturb it.
    def mutate_fn(hparams):
        return {"log_lr": hparams["log_lr"] + np.random.normal() * 0.1}

    # Select a mutator. This mutator does a population wide selection every 100 steps.
    mutator = winner_take_all_genetic.WinnerTakeAllGenetic(mutate_fn, steps_per_exploit=100)

    # Construct the PopulationController which manages the population
    population = pop_mod.PopulationController([{"log_lr": np.log(1e-4)} for i in range(2)], mutator)

    # Cheap stand-ins for a model: params is a float that decays at rate lr.
    def init_params():
        return 1.0

    def train_model_one_step(params, hparams):
        time.sleep(0)  # a real step releases the GIL; let the other worker run
        return params * (1.0 - min(0.5, 100.0 * math.exp(hparams["log_lr"])))

    def loss_fn(params):
        return params**2

    reported = {0: set(), 1: set()}
    max_iterations = 1500  # the seed's loop runs forever

    def worker(worker_id):
        # Now, on each worker, we train a model.
        gen_id = ""  # The generation we are currently training. No generation at init.
        hparams = None  # The initial hparams -- these will be determined by the population
        params = None  # No initial parameter values.
        step = 0

        for _ in range(max_iterations):
            # Get the current set of parameters and hparams to work on. (The seed passes
            # an undefined `meta_params` here; the worker's hparams is what it means.)
            new_data = population.maybe_get_worker_data(worker_id, gen_id, step, params, hparams)
            # If this is non-None then we obtained some new hparams and params to work with.
            if new_data:
                params = new_data.params
                hparams = new_data.meta_params
                gen_id = new_data.generation_id
                step = new_data.step
                if params is None:
                    params = init_params()

            # Train the model one step
            params = train_model_one_step(params, hparams)
            step += 1  # accumulate step counter.

            # every 10 steps, send back an evaluation.
            if step % 10 == 0:
                loss = loss_fn(params)
                population.set_eval(worker_id, gen_id, step, params, loss)
                reported[worker_id].add(gen_id)

    errors = run_in_threads(worker, 2, timeout=20.0)
    assert not errors, errors
    assert population.state.mutator_state.num_exploits > 0
    history = population.history
    for worker_id in (0, 1):
        evaluated = [c for g in reported[worker_id] for c in history.evaluated(g)]
        assert evaluated, f"no evaluated checkpoint of worker {worker_id} in the history"
    assert reported[0].isdisjoint(reported[1])
    check_history_invariants(population)


# -- (b) 16 threads hammering one controller ------------------------------------------
@pytest.fixture
def fast_thread_switching():
    """Makes the interpreter switch threads every few microseconds, not every 5 ms."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


def test_sixteen_threads_hammering_one_controller(caplog, fast_thread_switching):
    caplog.set_level(logging.ERROR, logger="jaxpop")  # resyncs log a warning each
    num_workers, calls_per_thread = 16, 400

    def mutate(meta, key):
        return {"h": meta["h"] + 0.1 * float(np.random.default_rng(key).normal())}

    controller = PopulationController(
        [{"h": float(i)} for i in range(num_workers)],
        WinnerTakeAllGenetic(mutate, steps_per_exploit=4),
        seed=7,
    )
    lock = threading.Lock()
    reports = []  # ((worker, call), generation, step, value) of every eval of a known generation
    bogus_reports = []  # (generation, step) reported under a generation nobody made
    failures = []  # bad calls that did not raise what they should
    counts = []  # per thread: {"ask": n, "eval": n, "bad": n}

    def expect_raise(error, fn, *args):
        try:
            fn(*args)
        except error:
            return
        except Exception as e:  # the wrong error escaped
            failures.append((fn.__name__, args, repr(e)))
            return
        failures.append((fn.__name__, args, "did not raise"))

    def worker(w):
        rng = np.random.default_rng(1000 + w)
        count = {"ask": 0, "eval": 0, "bad": 0}
        gen, step, params, meta = None, 0, None, None
        for i in range(calls_per_thread):
            if i % 3 == 0:
                time.sleep(0)  # let the other workers in
            r = rng.random()
            if gen is None or r < 0.45:  # ask with the current generation (None at first)
                reply = controller.maybe_get_worker_data(w, gen, step, params, meta)
            elif r < 0.50:  # a restarted worker
                reply = controller.maybe_get_worker_data(w, None, step, params, meta)
            elif r < 0.53:  # a worker that lost track of its generation
                reply = controller.maybe_get_worker_data(w, f"bogus-{w}", step, None, None)
            elif r < 0.85:  # train and report; sometimes re-report the same step
                step += 0 if r > 0.82 else int(rng.integers(1, 4))
                params = {"w": w, "step": step, "i": i}
                value = float(rng.normal())
                if rng.random() < 0.05:
                    value = float(rng.choice([math.nan, math.inf]))
                controller.set_eval(w, gen, step, params, value)
                with lock:
                    reports.append(((w, i), gen, step, value))
                count["eval"] += 1
                continue
            elif r < 0.88:  # an eval under a generation the controller never made
                controller.set_eval(w, f"bogus-{w}-{i}", step, params, 1.0)
                with lock:
                    bogus_reports.append((f"bogus-{w}-{i}", step))
                continue
            elif r < 0.93:  # train without reporting
                step += 1
                params = {"w": w, "step": step, "i": i}
                continue
            else:  # bad calls, which must raise and change nothing
                count["bad"] += 1
                choice = int(rng.integers(0, 5))
                if choice == 0:
                    expect_raise(
                        ValueError, controller.set_eval, num_workers, gen, step, params, 1.0
                    )
                elif choice == 1:
                    expect_raise(
                        ValueError, controller.maybe_get_worker_data, -1, gen, step, params, meta
                    )
                elif choice == 2:
                    expect_raise(TypeError, controller.set_eval, w, gen, step, params, "low")
                elif choice == 3:
                    expect_raise(TypeError, controller.set_eval, w, gen, step, params, None)
                else:
                    expect_raise(
                        TypeError, controller.maybe_get_worker_data, str(w), gen, step, params, meta
                    )
                continue
            count["ask"] += 1
            if reply is not None:
                gen, step, meta = reply.generation_id, reply.step, reply.meta_params
                params = reply.params if reply.params is not None else {"w": w, "init": True}
        with lock:
            counts.append(count)

    start = time.monotonic()
    errors = run_in_threads(worker, num_workers, timeout=60.0)
    elapsed = time.monotonic() - start
    assert not errors, errors
    assert not failures, failures
    assert len(counts) == num_workers
    total = {k: sum(c[k] for c in counts) for k in counts[0]}
    assert total["bad"] > 0 and total["eval"] > 1000 and total["ask"] > 1000, total
    state = controller.state
    history = state.history
    assert state.mutator_state.num_exploits > 0
    check_history_invariants(controller)
    # Every eval is in the history at its (generation, step), with the value of the last
    # report of that step (only its own worker ever reports on a generation).
    last = {}
    owner = {}
    for (w, _), gen, step, value in sorted(reports, key=lambda r: r[0]):
        last[(gen, step)] = value
        assert owner.setdefault(gen, w) == w, f"generation {gen} reported by two workers"
    for (gen, step), value in last.items():
        checkpoint = history.get_checkpoint(gen, step)
        assert checkpoint is not None, f"eval at {(gen, step)} was lost"
        assert repr(checkpoint.value) == repr(value), ((gen, step), checkpoint.value, value)
    for ref in bogus_reports:
        assert ref[0] not in history
    # the controller is still consistent and usable
    for w, assigned in enumerate(state.workers):
        assert controller.maybe_get_worker_data(w, assigned.generation_id, 0, None, None) is None
        assert controller.maybe_get_worker_data(w, None, 0, None, None) == assigned
    assert elapsed < 30.0, elapsed


# -- (c) the population converges -------------------------------------------------------
def test_winner_take_all_converges_in_threads():
    """score = h**2 from h = 1.0: the population moves h toward 0."""

    def mutate(meta, key):
        return {"h": meta["h"] + 0.1 * float(np.random.default_rng(key).normal())}

    controller = PopulationController(
        [{"h": 1.0} for _ in range(3)], WinnerTakeAllGenetic(mutate, steps_per_exploit=5), seed=0
    )
    target_rounds, time_limit = 80, 15.0
    stop = threading.Event()
    start = time.monotonic()

    def worker(w):
        gen, step, params, meta = None, 0, None, None
        while not stop.is_set() and time.monotonic() - start < time_limit:
            reply = controller.maybe_get_worker_data(w, gen, step, params, meta)
            if reply is not None:
                gen, step, params, meta = (
                    reply.generation_id,
                    reply.step,
                    reply.params,
                    reply.meta_params,
                )
            time.sleep(0)  # one training step
            step += 1
            params = step
            if step % 5 == 0:
                controller.set_eval(w, gen, step, params, meta["h"] ** 2)
                if controller.state.mutator_state.num_exploits >= target_rounds:
                    stop.set()

    errors = run_in_threads(worker, 3, timeout=time_limit + 5.0)
    assert not errors, errors
    rounds = controller.state.mutator_state.num_exploits
    assert rounds >= 30, f"only {rounds} rounds in {time_limit} s"
    best = min(abs(w.meta_params["h"]) for w in controller.active_workers)
    assert best < 0.5, (best, rounds)
    values = [c.value for c in controller.history.checkpoints() if c.value is not None]
    assert min(values) < 0.25
    check_history_invariants(controller)
