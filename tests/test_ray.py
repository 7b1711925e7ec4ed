"""jaxpop.distributed.ray on a local Ray instance: parity, restarts, retries, errors.

One ``ray.init(num_cpus=2)`` is shared by the whole module (Ray takes seconds to start).
Every test names its actors after itself, so a failed test leaves nothing in the way of
the next.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
import time
import types
import warnings

import numpy as np
import pytest

ray = pytest.importorskip(
    "ray", reason="jaxpop.distributed.ray needs Ray: pip install 'jaxpop[ray]'"
)

from conftest import assert_is_a_controller  # noqa: E402
from jaxpop import PopulationController, storage  # noqa: E402
from jaxpop.distributed import ray as jaxpop_ray  # noqa: E402
from jaxpop.mutators import Mutator, WinnerTakeAllGenetic  # noqa: E402

# this module's functions run inside Ray actors, which cannot import tests/ by name
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_session():
    started = not ray.is_initialized()
    if started:
        with warnings.catch_warnings():
            # Ray starts its processes with fork + exec, which JAX (imported by earlier
            # tests) warns about; exec replaces the child at once, so it is harmless here
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _mutate(meta, key):
    return {"lr": float(meta["lr"] * np.exp(0.5 * np.random.default_rng(key).normal()))}


def _wta(steps_per_exploit: int = 2) -> WinnerTakeAllGenetic:
    return WinnerTakeAllGenetic(_mutate, steps_per_exploit=steps_per_exploit)


def _population(n: int) -> list[dict[str, float]]:
    return [{"lr": 0.01 * (i + 1)} for i in range(n)]


class _Ticks:
    """A clock that moves half a second per reading: the same times in both controllers."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def _loss(worker_id: int, step: int) -> float:
    return float((worker_id * 7 + step * 3) % 5) + 1.0 / step


# -- parity -----------------------------------------------------------------------------
def _script(pop) -> list:
    """A fixed event sequence (asks, evals, exploits, a resync, errors); what came back."""
    out: list = []
    gens: list = [None] * 3
    steps = [0] * 3
    for _ in range(4):
        for i in range(3):
            data = pop.maybe_get_worker_data(i, gens[i], steps[i], f"h{i}-{steps[i]}", None)
            out.append(data)
            if data is not None:
                gens[i], steps[i] = data.generation_id, data.step
            for k in range(2 if i else 3):  # worker 0 runs ahead
                steps[i] += 1
                args = (i, gens[i], steps[i], f"h{i}-{steps[i]}", _loss(i, steps[i]))
                if i == 2 and k == 1:  # worker 2 ends each round with report (eval + ask)
                    data = pop.set_eval_and_ask(*args)
                    out.append(data)
                    if data is not None:
                        gens[i], steps[i] = data.generation_id, data.step
                else:
                    pop.set_eval(*args)
    out.append(pop.maybe_get_worker_data(1, "never-made", 5, None, None))  # resync
    pop.set_eval(2, "never-made", 5, None, 1.0)  # ignored
    for call in (
        lambda: pop.maybe_get_worker_data(3, None, 0, None, None),
        lambda: pop.set_eval(0, gens[0], 1, None, "nan?"),
        lambda: pop.set_eval(0, gens[0], 1.5, None, 1.0),
        lambda: pop.set_eval_and_ask(0, gens[0], 1, None, [1.0]),
    ):
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        out.append((type(info.value), str(info.value)))
    pop.finish(1)
    out.append(pop.active_workers[1].status)
    pop.reactivate(1)
    out.append(pop.active_workers)
    return out


def test_client_matches_the_in_process_controller(ray_session, tmp_path):
    assert_is_a_controller(jaxpop_ray.PopulationClient)
    local = PopulationController(_population(3), _wta(), seed=7, clock=_Ticks())
    expected = _script(local)
    with jaxpop_ray.serve(
        _population(3), _wta(), log_dir=tmp_path, name="parity", seed=7, clock=_Ticks()
    ) as client:
        assert _script(client) == expected
        state, want = client.state, local.state
        assert list(state.history.checkpoints()) == list(want.history.checkpoints())
        assert state.workers == want.workers and state.num_events == want.num_events
        assert state.mutator_state == want.mutator_state and state.mutator_state.num_exploits
        np.testing.assert_array_equal(state.key, want.key)
        assert client.history.num_checkpoints == want.history.num_checkpoints
        assert isinstance(client.mutator, WinnerTakeAllGenetic)
        assert client.log_dir == str(tmp_path) and client.info()["restarted"] is False
    # the owning client closed the controller and released log_dir: it holds the same run
    with PopulationController(_population(3), _wta(), tmp_path) as reopened:
        assert list(reopened.history.checkpoints()) == list(want.history.checkpoints())
    with pytest.raises(jaxpop_ray.ControllerUnavailableError, match=r"shut down|not coming back"):
        _ = client.active_workers


# -- workers and restarts ---------------------------------------------------------------
def _train(worker_id, client_or_name, total, eval_every=5, pause=0.01, stop=()):
    """A fake training loop with the seed's protocol; what it saw and had acknowledged.

    ``stop``: the workers that return when an ask is answered status ``"finished"``
    (the others train on)."""
    if isinstance(client_or_name, str):
        client = jaxpop_ray.connect(client_or_name, wait_s=10)
    else:
        client = client_or_name
    generation_id, step, handle, first_step, acked = None, 0, None, None, []
    while step < total:
        data = client.maybe_get_worker_data(worker_id, generation_id, step, handle, None)
        if worker_id in stop and data is not None and data.status == "finished":
            break
        if data is not None:
            generation_id, step, handle = data.generation_id, data.step, data.params
            first_step = step if first_step is None else first_step
        time.sleep(pause)
        step += 1
        if step % eval_every == 0:
            handle, value = f"w{worker_id}-{generation_id}-{step}", _loss(worker_id, step)
            client.set_eval(worker_id, generation_id, step, handle, value)
            acked.append((generation_id, step, value))
    return {"first_step": first_step, "step": step, "acked": acked, "done_at": time.time()}


def _wait_until(predicate, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_worker_restarts_and_resumes_its_slot(ray_session, tmp_path):
    with jaxpop_ray.serve(_population(2), _wta(50), log_dir=tmp_path, name="kill-worker") as client:
        group = jaxpop_ray.start_workers(
            _train, 2, args=("kill-worker", 150), num_cpus=0.5, max_restarts=2
        )
        with group:
            _wait_until(lambda: client.active_workers[0].step >= 20)
            group.kill(0)  # ray.kill(actor, no_restart=False)
            results = group.wait(timeout_s=120)
        assert results[0]["first_step"] >= 20  # resumed from its latest report, not from 0
        assert results[1]["first_step"] == 0
        assert all(r["step"] >= 150 for r in results)
        history = client.history
        for result in results:
            for generation_id, step, value in result["acked"]:
                assert history.get_checkpoint(generation_id, step).value == value


def test_a_killed_controller_resumes_from_log_dir_and_loses_no_acknowledged_eval(
    ray_session, tmp_path
):
    with jaxpop_ray.serve(
        _population(2), _wta(20), log_dir=tmp_path, name="kill-controller", timeout_s=60
    ) as client:
        first = client.info()
        with jaxpop_ray.start_workers(_train, 2, args=(client, 150), num_cpus=0.5) as group:
            _wait_until(lambda: client.active_workers[0].step >= 30)
            ray.kill(client.actor, no_restart=False)
            results = group.wait(timeout_s=120)
        info = client.info()
        assert info["restarted"] and info["pid"] != first["pid"]
        assert info["resumed_at_event"] > 0  # it found the run in log_dir
        assert info["started_at"] < min(r["done_at"] for r in results)  # killed mid-run
        history = client.history
        acked = [a for r in results for a in r["acked"]]
        assert len(acked) >= 150 // 5  # (an exploit may move a worker ahead)
        for generation_id, step, value in acked:
            assert history.get_checkpoint(generation_id, step).value == value
        assert all(r["step"] >= 150 for r in results)
        assert client.state.mutator_state.num_exploits >= 1


def test_workers_end_when_the_controller_says_the_run_is_done(ray_session, tmp_path):
    from jaxpop import StopWhen

    budget = StopWhen(step=20)  # a worker is done once it reported step 20
    with jaxpop_ray.serve(
        _population(2), _wta(50), log_dir=tmp_path, name="done", stop_when=budget
    ) as client:
        assert client.done is False
        # worker 0's loop honours status "finished"; worker 1's would train forever
        group = jaxpop_ray.start_workers(
            _train, 2, args=(client, 10**9), kwargs={"stop": (0,)}, num_cpus=0.5
        )
        with group:
            results = group.wait(timeout_s=60, until_done=client, grace_s=0.5)
        assert results[0]["step"] == 20  # returned at its first ask past the budget
        assert results[1] is None and group.ended == {1}  # ended by the group
        assert client.done and [w.status for w in client.state.workers] == ["finished"] * 2
        with pytest.raises(ValueError, match="used its step budget"):
            client.reactivate(0)  # (it would be finished again at once)
        with pytest.raises(ray.exceptions.RayActorError):  # ended for good, not restarted
            ray.get(group.actors[1].run.remote(_train, 1, (client, 1), {}), timeout=30)


def _slow_restart_mutator(marker: str, seconds: float) -> Mutator:
    """A mutator whose ``init`` (run when a controller is built) sleeps once ``marker`` exists."""

    def init():
        if os.path.exists(marker):
            time.sleep(seconds)
        return ()

    return Mutator(init=init, update=lambda s, w, h, now, key: (s, w, ()))


def test_connect_waits_for_a_controller_still_starting_until_wait_s(ray_session, tmp_path):
    # (connect learns its run from the controller: a worker started with the controller,
    # whose name is there before it answers, got only timeout_s for its start,
    # helper-310)
    marker = str(tmp_path / "slow")
    open(marker, "w").close()  # (its start takes 3 s, past the worker's 1 s timeout_s)
    mutator = _slow_restart_mutator(marker, 3.0)
    served: list = []
    start = threading.Thread(
        target=lambda: served.append(
            jaxpop_ray.serve(_population(2), mutator, log_dir=tmp_path / "run", name="starting")
        )
    )
    start.start()
    try:
        worker = jaxpop_ray.connect("starting", timeout_s=1.0, wait_s=60)
        assert worker.timeout_s == 1.0 and worker.log_dir == str(tmp_path / "run")
    finally:
        start.join()
        served[0].shutdown()


def test_seconds_given_as_a_timedelta_are_refused():
    # (a timedelta64 is a numpy integer: its count of ns was taken as seconds; no Ray)
    for check in (
        lambda t: jaxpop_ray._check_seconds(t, "wait_s"),
        jaxpop_ray._check_timeout,
    ):
        with pytest.raises(TypeError, match="number of seconds"):
            check(np.timedelta64(5, "s"))


def test_connect_to_a_controller_that_never_answers_names_its_own_timeouts(monkeypatch):
    # (its message said timeout_s=None, the learning call's, helper-312; no Ray needed)
    class Actor:
        def __getattr__(self, name):
            return types.SimpleNamespace(remote=lambda *args: object())

    def get(ref, timeout=None):
        time.sleep(min(timeout, 5.0))
        raise ray.exceptions.GetTimeoutError("no answer")

    monkeypatch.setattr(jaxpop_ray.ray, "get_actor", lambda name, namespace=None: Actor())
    monkeypatch.setattr(jaxpop_ray.ray, "get", get)
    with pytest.raises(jaxpop_ray.ControllerUnavailableError, match=r"wait_s=0\.0, timeout_s=0\.2"):
        jaxpop_ray.connect("silent", timeout_s=0.2)


def test_a_call_during_a_restart_waits_and_succeeds_or_times_out_clearly(ray_session, tmp_path):
    marker = str(tmp_path / "slow")
    mutator = _slow_restart_mutator(marker, 2.0)  # (past the impatient client's 1 s)
    with jaxpop_ray.serve(
        _population(2), mutator, log_dir=tmp_path / "run", name="slow-restart"
    ) as client:
        generation_id = client.maybe_get_worker_data(0, None, 0, None, None).generation_id
        client.set_eval(0, generation_id, 10, "h", 0.5)
        before = list(client.history.checkpoints())
        impatient = jaxpop_ray.connect("slow-restart", timeout_s=1.0)
        open(marker, "w").close()
        ray.kill(client.actor, no_restart=False)
        with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="within 1"):
            while not impatient.info()["restarted"]:  # until a call lands in the restart
                pass
        start = time.monotonic()
        assert list(client.history.checkpoints()) == before  # waits for the new incarnation
        assert time.monotonic() - start > 0.5
        assert client.info()["restarted"]
        assert client.active_workers[0].step == 10  # its assignment followed its report


def test_a_restart_that_found_the_lock_taken_goes_on_once_it_is_free(ray_session, tmp_path):
    """A restarted controller whose lock stayed taken past lock_timeout_s answered every
    call with LogDirInUseError, for good, also once the lock was free (hostile test)."""
    with jaxpop_ray.serve(
        _population(2), _wta(), log_dir=tmp_path, name="relock", lock_timeout_s=0.5
    ) as client:
        gen = client.maybe_get_worker_data(0, None, 0, None, None).generation_id
        holder = None
        ray.kill(client.actor, no_restart=False)
        deadline = time.monotonic() + 30
        while holder is None:  # take the dead incarnation's lock before the new one does
            try:
                holder = PopulationController(_population(2), _wta(), tmp_path)
            except storage.LogDirInUseError:
                assert time.monotonic() < deadline
        time.sleep(1.5)  # past the new incarnation's lock_timeout_s
        with pytest.raises(storage.LogDirInUseError):
            client.set_eval(0, gen, 5, "p5", 0.5)
        holder.close()
        client.set_eval(0, gen, 5, "p5", 0.5)  # the lock is tried again
        assert client.history.get_checkpoint(gen, 5).value == 0.5


def test_a_served_controller_lives_on_when_the_driver_drops_its_client(ray_session, tmp_path):
    """Ray ended the actor as soon as serve()'s client was dropped (the driver kept
    the name, and workers connect by it), not with the driver (hostile test)."""
    import gc

    name = jaxpop_ray.serve(_population(2), _wta(), log_dir=tmp_path, name="dropped").name
    gc.collect()
    worker = jaxpop_ray.connect(name)
    assert worker.maybe_get_worker_data(0, None, 0, None, None) is not None
    worker.shutdown()
    with pytest.raises(jaxpop_ray.ControllerUnavailableError):
        jaxpop_ray.connect(name)


def test_errors_are_loud(ray_session, tmp_path):
    # the controller cannot take a log_dir another live controller holds
    with PopulationController(_population(2), _wta(), tmp_path) as holder:
        with pytest.raises(storage.LogDirInUseError):
            jaxpop_ray.serve(
                _population(2), _wta(), log_dir=tmp_path, name="held", lock_timeout_s=0.5
            )
        holder.set_eval(0, holder.active_workers[0].generation_id, 1, None, 1.0)
    with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="no controller actor"):
        jaxpop_ray.connect("held")  # serve ended the actor that failed to start
    with pytest.raises(ValueError, match="log_dir"):
        jaxpop_ray.serve(_population(2), _wta(), log_dir="", name="x")
    with pytest.raises(TypeError, match="Mutator"):
        jaxpop_ray.serve(_population(2), object(), log_dir=tmp_path, name="x")
    # a second serve under a taken name; a controller that dies for good fails fast
    with jaxpop_ray.serve(
        _population(2), _wta(), log_dir=tmp_path, name="once", max_restarts=0
    ) as client:
        assert client.info()["resumed_at_event"] == 1  # holder's run, resumed
        with pytest.raises(ValueError, match="already exists"):
            jaxpop_ray.serve(_population(2), _wta(), log_dir=tmp_path / "b", name="once")
        ray.kill(client.actor, no_restart=False)
        start = time.monotonic()
        with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="not coming back"):
            while True:
                _ = client.active_workers
        assert time.monotonic() - start < 30


def test_a_client_never_follows_its_name_to_another_run(ray_session, tmp_path):
    """The controller is shut down and another run is served under the same name on
    another log_dir: an old client switched to it, and its evals were acknowledged
    while in neither run (hostile test). A new serve on the same log_dir is the run."""
    a = jaxpop_ray.serve(_population(2), _wta(), log_dir=tmp_path / "a", name="run")
    worker = jaxpop_ray.connect("run")
    gen = worker.maybe_get_worker_data(0, None, 0, None, None).generation_id  # (pins the run)
    a.shutdown()
    b = jaxpop_ray.serve(_population(2), _wta(), log_dir=tmp_path / "b", name="run", seed=1)
    with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="now serves another run"):
        worker.set_eval(0, gen, 5, "ckpt", 0.5)
    b.shutdown()
    with jaxpop_ray.serve(_population(2), _wta(), log_dir=tmp_path / "a", name="run"):
        worker.set_eval(0, gen, 5, "ckpt", 0.5)  # its own run again: it goes on
        assert worker.history[gen][5].value == 0.5
    # a client that has made no call yet knows its run too (helper-309: it learned the
    # run at its first call, so it took whatever run the name held by then); and a client
    # that never learned its run (built by hand) takes no other actor under its name
    a = jaxpop_ray.serve(_population(2), _wta(), log_dir=tmp_path / "a2", name="run")
    fresh = jaxpop_ray.connect("run")
    unlearned = jaxpop_ray.PopulationClient(a.actor, "run", a.namespace)
    assert fresh.log_dir == str(tmp_path / "a2")
    ray.kill(a.actor, no_restart=True)
    with jaxpop_ray.serve(_population(2), _wta(), log_dir=tmp_path / "b2", name="run") as b:
        for client, match in ((fresh, "now serves another run"), (unlearned, "connect to it")):
            with pytest.raises(jaxpop_ray.ControllerUnavailableError, match=match):
                client.maybe_get_worker_data(0, None, 0, None, None)
        assert b.history.num_checkpoints == 2  # (the roots: nothing of theirs landed)


def test_serve_passes_rays_own_option_errors_through(ray_session, tmp_path):
    """Every ValueError of Ray's options was reported as "a Ray actor named ... already
    exists" (hostile test)."""
    for options in ({"max_restarts": -2}, {"num_cpus": -1}):
        with pytest.raises(ValueError) as raised:
            jaxpop_ray.serve(_population(2), _wta(), log_dir=tmp_path, name="opt", **options)
        assert "already exists" not in str(raised.value)
    with pytest.raises(ValueError, match="timeout_s"):  # refused before any actor exists
        jaxpop_ray.serve(
            _population(2), _wta(), log_dir=tmp_path, name="det", detached=True, timeout_s=0
        )
    with pytest.raises(jaxpop_ray.ControllerUnavailableError):
        jaxpop_ray.connect("det")


def test_actor_options_may_not_set_what_serve_and_start_workers_set(ray_session, tmp_path):
    # (helper-309: actor_options={"name": ...} took the actor's name, and connect(name)
    # found nothing under the name serve was given)
    for key in ("name", "namespace", "max_restarts", "max_task_retries", "lifetime"):
        with pytest.raises(ValueError, match=f"may not set \\['{key}'\\]"):
            jaxpop_ray.serve(
                _population(2), _wta(), log_dir=tmp_path, name="opt", actor_options={key: 1}
            )
    with pytest.raises(ValueError, match=r"may not set \['name'\]: start_workers sets"):
        jaxpop_ray.start_workers(_exits, 1, actor_options={"name": "w"})
    with pytest.raises(jaxpop_ray.ControllerUnavailableError):
        jaxpop_ray.connect("opt")  # (nothing was started)


async def _a_coroutine(worker_id):
    return worker_id


def test_a_worker_function_that_is_a_coroutine_function_is_an_error(ray_session):
    # (helper-309: "cannot pickle 'coroutine' object", and its body never ran)
    with pytest.raises(jaxpop_ray.WorkerError, match=r"coroutine function") as info:
        jaxpop_ray.run_workers(_a_coroutine, 1, timeout_s=60, num_cpus=0)
    assert isinstance(info.value.__cause__, TypeError)


def _exits(worker_id):
    sys.exit(3)


def test_a_worker_function_that_calls_sys_exit_is_an_error_not_a_restart(ray_session):
    """Ray took ``SystemExit`` for a crash and restarted the worker forever."""
    with pytest.raises(jaxpop_ray.WorkerError, match=r"sys.exit\(3\)"):
        jaxpop_ray.run_workers(_exits, 1, timeout_s=60, num_cpus=0)


def _yields(worker_id):
    yield worker_id  # (progress, say)
    time.sleep(3600)


def test_a_worker_function_that_is_a_generator_is_an_error(ray_session):
    """Ray streamed a generator's values: the group's result was the first one, and the
    function stopped at its first yield, silently (hostile review, helper-168)."""
    with pytest.raises(jaxpop_ray.WorkerError, match=r"is a generator") as info:
        jaxpop_ray.run_workers(_yields, 1, timeout_s=60, num_cpus=0)
    assert isinstance(info.value.__cause__, TypeError)


@ray.remote
class _NotAController:
    def ping(self):
        return "pong"


def test_a_name_held_by_another_kind_of_actor_is_unavailable_not_an_attribute_error(
    ray_session,
):
    """(the client's first call raised "'ActorHandle' object has no attribute 'info'";
    connect now asks the actor for its run before it returns)"""
    other = _NotAController.options(name="not-a-controller", namespace="jaxpop").remote()
    try:
        with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="not a jaxpop controller"):
            jaxpop_ray.connect("not-a-controller")
    finally:
        ray.kill(other)


def _start_then_wait(worker_id, started, release):
    open(started, "w").close()
    while not os.path.exists(release):
        time.sleep(0.05)
    return worker_id


def _slow_copy(release, meta):
    """Busy until ``release`` exists (30 s at most); ``release + "-busy"`` says it began."""
    open(f"{release}-busy", "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return meta


def test_waiting_until_the_run_is_done_keeps_its_timeout_while_the_controller_is_busy(
    ray_session, tmp_path
):
    """Asking whether the run was over took the client's own timeout (120 s by default):
    wait(timeout_s=...) overran its deadline by as long as the controller was busy (in a
    mutator, restarting, waiting for its lock; hostile review, helper-168)."""
    idle = str(tmp_path / "idle")
    mutator = WinnerTakeAllGenetic(functools.partial(_slow_copy, idle), steps_per_exploit=1)
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with jaxpop_ray.serve(_population(1), mutator, log_dir=tmp_path, name="busy") as client:
        group = jaxpop_ray.start_workers(_sleep_forever, 1, num_cpus=0)
        ending = jaxpop_ray.start_workers(_start_then_wait, 1, args=(started, release), num_cpus=0)
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(started) and time.monotonic() < deadline:
                time.sleep(0.05)  # (its actor is up before the controller is made busy)
            gen = client.maybe_get_worker_data(0, None, 0, None, None).generation_id
            busy = threading.Thread(target=client.set_eval, args=(0, gen, 1, "p", 1.0))
            busy.start()  # the controller is in the mutator until the file "idle" exists
            _wait_until(lambda: os.path.exists(f"{idle}-busy"))
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                group.wait(timeout_s=0.5, until_done=client)
            assert time.monotonic() - started < 3.0
            # a worker that ends while the wait asks the busy controller: its result, not
            # "still running" (helper-173)
            threading.Timer(0.5, lambda: open(release, "w").close()).start()
            assert ending.wait(timeout_s=2.0, until_done=client) == [0]
            open(idle, "w").close()
            busy.join()
        finally:
            open(idle, "w").close()
            group.shutdown()
            ending.shutdown()


def _ask_then_hang(worker_id, client):
    client.maybe_get_worker_data(worker_id, None, 0, None, None)
    time.sleep(10_000)  # a training step that never returns: it calls no more


def test_waiting_until_done_ends_a_run_whose_workers_all_stopped_calling(ray_session, tmp_path):
    """A spent time budget, or workers silent past gone_after_s, counted only at a
    worker's call: with every worker hung the run was never over and wait(until_done)
    waited for ever (helper-219). It polls the controller, which applies its clock."""
    from jaxpop import StopWhen

    for name, options in (
        ("budget", {"stop_when": StopWhen(seconds=1.0)}),
        ("silent", {"gone_after_s": 1.0}),
    ):
        # (one worker, hung: every worker of the run; each worker actor is a process start)
        with jaxpop_ray.serve(
            _population(1), _wta(100), log_dir=tmp_path / name, name=name, **options
        ) as client:
            group = jaxpop_ray.start_workers(_ask_then_hang, 1, args=(client,), num_cpus=0)
            try:
                started = time.monotonic()
                assert group.wait(60, until_done=client, grace_s=0.2) == [None]
                assert time.monotonic() - started < 30 and group.ended == {0}
                statuses = {w.status for w in client.active_workers}
                assert statuses == ({"finished"} if name == "budget" else {"gone"})
            finally:
                group.shutdown()


def test_a_wait_that_times_out_says_the_workers_are_still_running(ray_session, tmp_path):
    """A poll begun a moment before the deadline got no answer in time: the wait said
    "the controller did not say whether the run is over" though it answered at once
    (helper-219)."""
    with jaxpop_ray.serve(_population(1), _wta(), log_dir=tmp_path, name="answers") as client:
        group = jaxpop_ray.start_workers(_sleep_forever, 1, num_cpus=0)
        try:
            for _ in range(6):
                with pytest.raises(TimeoutError, match=r"still running after 0.5 s"):
                    group.wait(0.5, until_done=client)
            # a wait shorter than the poll interval still asks once (the first fix never
            # asked: a run over waited for ever in a loop of short waits, helper-220)
            for short in (0.001, 0.003):  # (shorter than an answer takes: helper-226)
                with pytest.raises(TimeoutError, match=rf"still running after {short} s"):
                    group.wait(short, until_done=client)
            client.finish(0)
            assert group.wait(0.15, until_done=client, grace_s=0) == [None]
            assert group.ended == {0}
        finally:
            group.shutdown()


def _times_ten(worker_id):
    return worker_id * 10


def test_waiting_until_done_says_what_happened_to_the_controller(ray_session, tmp_path):
    """helper-172, on the previous fix: a wait whose results were all in raised
    TimeoutError when little time was left (it asked the controller first); a controller
    dead for good was a TimeoutError "at the timeout", at once; a client whose dead
    controller's name another kind of actor took raised a bare AttributeError."""
    with jaxpop_ray.serve(
        _population(2), _wta(10), log_dir=tmp_path, name="dies", max_restarts=0, timeout_s=10
    ) as client:
        group = jaxpop_ray.start_workers(_times_ten, 2, num_cpus=0)
        ray.get(list(group._refs))  # every worker has returned
        assert group.wait(0.001, until_done=client) == [0, 10]
        group = jaxpop_ray.start_workers(_sleep_forever, 1, num_cpus=0)
        try:
            assert not client.done
            ray.kill(client._actor, no_restart=True)  # gone for good
            started = time.monotonic()
            with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="not coming back"):
                group.wait(30, until_done=client)
            assert time.monotonic() - started < 20
        finally:
            group.shutdown()
        other = _NotAController.options(name="dies", namespace="jaxpop").remote()
        try:
            ray.get(other.ping.remote(), timeout=30)
            with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="not a jaxpop"):
                _ = client.done
        finally:
            ray.kill(other)


class _TwoArgError(Exception):
    """An exception Ray cannot rebuild on the driver (its ``__init__`` takes two)."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def _fail_on_one(worker_id, release, error=KeyError):
    if worker_id == 1:
        raise KeyError("boom") if error is KeyError else _TwoArgError("boom", 2)
    while not os.path.exists(release):
        time.sleep(0.05)
    return worker_id


def test_a_failing_worker_function_raises_and_ends_the_group(ray_session, tmp_path):
    release = str(tmp_path / "release")
    group = jaxpop_ray.start_workers(_fail_on_one, 2, args=(release,), num_cpus=0.5)
    with pytest.raises(jaxpop_ray.WorkerError, match="boom") as info:
        group.wait(timeout_s=60)
    assert info.value.worker_id == 1 and isinstance(info.value.__cause__, KeyError)
    with pytest.raises(ray.exceptions.RayActorError):  # worker 0 was ended, not left waiting
        ray.get(group.actors[0].run.remote(_fail_on_one, 0, (release,), {}), timeout=30)
    with pytest.raises(ValueError, match="num_workers"):
        jaxpop_ray.start_workers(_fail_on_one, 0)
    # an exception Ray cannot rebuild: its raw UnserializableException, the others running
    group = jaxpop_ray.start_workers(_fail_on_one, 2, args=(release, None), num_cpus=0.5)
    with pytest.raises(jaxpop_ray.WorkerError, match="worker 1 failed") as info:
        group.wait(timeout_s=60)
    assert info.value.worker_id == 1
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(group.actors[0].run.remote(_fail_on_one, 0, (release,), {}), timeout=30)


def test_clients_travel_and_concurrent_calls_are_serialized(ray_session, tmp_path):
    # (two worker actors: each start imports jaxpop, seconds of the suite's time)
    with jaxpop_ray.serve(_population(2), _wta(10), log_dir=tmp_path, name="travel") as client:
        results = jaxpop_ray.run_workers(
            _train, 2, args=(client, 30), kwargs={"pause": 0.0}, num_cpus=0.25
        )
        assert [r["first_step"] for r in results] == [0, 0]
        assert all(r["step"] >= 30 for r in results)
        state = client.state
        for i, result in enumerate(results):
            for generation_id, step, _ in result["acked"]:
                checkpoint = state.history.get_checkpoint(generation_id, step)
                assert checkpoint.params.startswith(f"w{i}-")
        errors = []

        def ask():
            try:
                for _ in range(20):
                    client.maybe_get_worker_data(0, None, 0, None, None)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors


def test_the_ray_example_survives_a_worker_and_a_controller_kill(ray_session, tmp_path):
    from examples.ray import train
    from jaxpop import report

    argv = ["--steps", "150", "--workers", "2", "--eval-every", "10", "--steps-per-exploit", "30"]
    argv += ["--cpus-per-worker", "0.5", "--kill-after", "0.5", "--name", "example"]
    argv += ["--batch-size", "16"]  # cheaper steps; 150 still outlast the kill by far
    summary = train.main([*argv, "--log-dir", str(tmp_path), "--no-progress"])
    assert math.isfinite(summary["best"]["val_loss"]) and summary["exploit_events"] >= 1
    assert summary["controller_restarted"]  # --kill-after killed it mid-run
    data = report.load(tmp_path)  # the run in <log-dir>/population
    assert data.history.num_checkpoints == summary["checkpoints"]
    kept = {str(tmp_path / "params" / n) for n in os.listdir(tmp_path / "params")}
    assert {w.params for w in data.state.workers} <= kept  # what workers load survives


def test_a_ray_example_worker_started_after_the_run_is_over_loads_nothing():
    import argparse

    from examples.ray import train
    from jaxpop.records import ActiveWorker

    class Over:  # a controller whose run is over: every ask says "finished"
        def maybe_get_worker_data(self, worker_id, *args):
            return ActiveWorker("p", {"lr": 0.1}, "g", 20, status="finished")

    result = train.train_worker(0, Over(), argparse.Namespace())  # reads no flag at all
    assert result == {"accuracies": {}, "compilations": 0, "dataset": None}


def _sleep_forever(worker_id):
    time.sleep(3600)


def _exits_at_step_10(s, workers, history, now, key):
    if any(c.step >= 10 for c in history.checkpoints()):
        raise SystemExit(3)
    return s, workers, ()


def test_a_mutator_that_calls_sys_exit_is_an_error_not_a_restart_loop(ray_session, tmp_path):
    # (Ray restarted the actor, the client sent the call again, and it exited again, until
    # the client's timeout said the controller was unavailable)
    from jaxpop.mutators import Mutator

    mutator = Mutator(init=lambda: 0, update=_exits_at_step_10)
    with jaxpop_ray.serve(
        _population(2), mutator, log_dir=tmp_path, name="exits", timeout_s=30
    ) as client:
        gen = client.maybe_get_worker_data(0, None, 0, None, None).generation_id
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"set_eval called sys.exit\(3\)"):
            client.set_eval(0, gen, 10, "p10", 0.5)
        assert time.monotonic() - started < 20
        assert not client.info()["restarted"]
        assert client.history.get_checkpoint(gen, 10) is None  # nothing recorded


def test_a_start_that_fails_part_way_leaves_no_worker_running(ray_session):
    # (worker 0 was started and ran on, with no group to wait on or stop it)
    def wait_gone(name):  # (ray.kill is asynchronous)
        deadline = time.monotonic() + 30
        while True:
            try:
                ray.get_actor(name, namespace=jaxpop_ray.DEFAULT_NAMESPACE)
            except ValueError:
                return
            assert time.monotonic() < deadline, f"{name} is still alive"
            time.sleep(0.1)

    blocker = jaxpop_ray.start_workers(_sleep_forever, 2, name="clash", num_cpus=0)
    blocker.kill(0, restart=False)  # clash-worker-1 still holds its name
    try:
        wait_gone("clash-worker-0")
        with pytest.raises(Exception, match="clash-worker-1"):
            jaxpop_ray.start_workers(_sleep_forever, 2, name="clash", num_cpus=0)
        wait_gone("clash-worker-0")  # the new worker 0 was ended
    finally:
        blocker.shutdown()


@pytest.mark.parametrize(
    "bad", [-1, math.nan, math.inf, None, True, "5", pytest.param(10**400, id="10**400")]
)
def test_seconds_arguments_are_refused_before_anything_starts(bad, tmp_path):
    """(grace_s=None failed inside the wait, after the workers had started; NaN waited
    forever in connect; a timeout_s of inf raised OverflowError in WorkerGroup.wait, and
    True was one second; 10**400 raised an OverflowError naming no argument)"""
    with pytest.raises((TypeError, ValueError), match="grace_s"):
        jaxpop_ray.run_workers(_sleep_forever, 2, grace_s=bad)  # (Ray not touched)
    with pytest.raises((TypeError, ValueError), match="wait_s"):
        jaxpop_ray.connect("nobody", wait_s=bad)
    with pytest.raises((TypeError, ValueError), match="lock_timeout_s"):
        jaxpop_ray.serve(
            _population(2), _wta(10), log_dir=tmp_path, name="never", lock_timeout_s=bad
        )
    if bad is not None and bad is not math.inf:
        with pytest.raises((TypeError, ValueError), match="start_timeout_s"):
            jaxpop_ray.serve(
                _population(2), _wta(10), log_dir=tmp_path, name="never", start_timeout_s=bad
            )
    empty = jaxpop_ray.WorkerGroup([], [], 0)
    assert empty.wait(math.inf) == [] and empty.wait(None) == []
    if bad is not None and bad is not math.inf:
        with pytest.raises((TypeError, ValueError), match="timeout_s"):
            empty.wait(bad)


@pytest.mark.parametrize(
    "timeout_s, expected",
    [(None, None), (math.inf, None), (2, 2.0), (0.5, 0.5), (1e9, 1e9), (np.float32(2), 2.0)]
    + [(bad, ValueError) for bad in (0, -1.0, math.nan, 1e300, -math.inf, 10**400)]
    + [(bad, TypeError) for bad in (True, np.bool_(True), "5", np.array([1.0]))],
)
def test_timeouts_are_seconds_or_forever(timeout_s, expected):
    """``inf`` or ``1e300`` passed, then every call failed with an OverflowError; ``True``
    meant one second (hostile test)."""
    if isinstance(expected, type):
        with pytest.raises(expected, match="timeout_s"):
            jaxpop_ray._check_timeout(timeout_s)
    else:
        assert jaxpop_ray._check_timeout(timeout_s) == expected


def test_the_start_is_waited_for_apart_from_the_call_timeout(ray_session, tmp_path):
    """serve's first call, which waits for the actor's process to start and import
    jaxpop, counted against the per-call timeout_s: a timeout_s shorter than a start
    (a second, on a busy node) failed every serve."""
    with jaxpop_ray.serve(
        _population(2), _wta(), log_dir=tmp_path / "a", name="quick-calls", timeout_s=1.0
    ) as client:
        assert client.timeout_s == 1.0
        assert client.maybe_get_worker_data(0, None, 0, None, None).step == 0
    with pytest.raises(jaxpop_ray.ControllerUnavailableError, match=r"start_timeout_s=0\.01"):
        jaxpop_ray.serve(
            _population(2), _wta(), log_dir=tmp_path / "b", name="slow-start", start_timeout_s=0.01
        )


def test_checkpoint_missing_takes_a_param_stores_exists(ray_session, tmp_path):
    """The documented way out of a missing checkpoint, checkpoint_missing(...,
    exists=store.exists), pickles the store to the controller's actor: it could not be
    pickled, and the worker crashed (a hostile test)."""
    from jaxpop.checkpointing import ParamStore

    with ParamStore(tmp_path / "params", async_save=False) as store:
        kept = store.save("g", 1, {"w": np.ones(2)})
        with jaxpop_ray.serve(
            _population(1), _wta(100), log_dir=tmp_path / "run", name="exists"
        ) as client:
            gen = client.maybe_get_worker_data(0, None, 0, None, None).generation_id
            client.set_eval(0, gen, 1, kept, 1.0)
            client.set_eval(0, gen, 2, kept + "-gone", 0.5)
            moved = client.checkpoint_missing(0, gen, 2, exists=store.exists)
            assert (moved.params, moved.step) == (kept, 1)  # back to the one that exists


def test_a_restart_that_finds_no_run_in_its_log_dir_is_an_error(ray_session, tmp_path):
    """A controller Ray restarted where its log_dir holds no run (another node, a local
    path) started a new run: the acknowledged evaluations were gone and the workers'
    next reports went into it (a hostile test, helper-122)."""
    with jaxpop_ray.serve(
        _population(2), _wta(100), log_dir=tmp_path / "run", name="moved", timeout_s=60
    ) as client:
        gen = client.maybe_get_worker_data(0, None, 0, None, None).generation_id
        client.set_eval(0, gen, 1, "ckpt-1", 1.0)
        os.rename(tmp_path / "run", tmp_path / "elsewhere")  # (the new node sees none)
        ray.kill(client.actor, no_restart=False)
        deadline = time.monotonic() + 60
        with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="holds no run"):
            while time.monotonic() < deadline:  # (the old process, until the kill lands)
                client.set_eval(0, gen, 2, "ckpt-2", 0.5)
                time.sleep(0.1)
        assert not (tmp_path / "run").exists()
        # served again where its log_dir is, under the name the actor that found no run
        # kept (it was refused: "already exists"; helper-123)
        os.rename(tmp_path / "elsewhere", tmp_path / "run")
        with jaxpop_ray.serve(
            _population(2), _wta(100), log_dir=tmp_path / "run", name="moved"
        ) as again:
            assert again.history.get_checkpoint(gen, 1) is not None


def test_a_controller_killed_while_first_built_starts_its_run(ray_session, tmp_path):
    """Killed before it wrote anything (nothing acknowledged), its restart found no run
    and serve failed with "holds no run" (helper-123)."""
    marker = tmp_path / "building"

    def init():
        if not marker.exists():  # (the first incarnation is slow to build, and dies)
            marker.touch()
            time.sleep(30)
        return 0

    def kill_while_building():
        while not marker.exists():
            time.sleep(0.05)
        time.sleep(0.5)
        ray.kill(ray.get_actor("early", namespace=jaxpop_ray.DEFAULT_NAMESPACE), no_restart=False)

    threading.Thread(target=kill_while_building, daemon=True).start()
    with jaxpop_ray.serve(
        _population(2),
        Mutator(init=init, update=lambda s, w, h, now, key: (s, w, ())),
        log_dir=tmp_path / "run",
        name="early",
        timeout_s=60,
    ) as client:
        assert client.info()["restarted"]
        assert client.maybe_get_worker_data(0, None, 0, None, None).status == "active"


def test_a_controller_dead_for_good_or_never_built_fails_fast(ray_session, tmp_path):
    """A connect() client of a controller whose restarts were used up retried for its
    whole timeout, and serving the run again was refused (the dead actor kept the
    name); a controller whose mutator its actor cannot import, or whose mutator calls
    sys.exit while it is built, blocked serve for timeout_s and blamed a restart (a
    hostile test, helper-122)."""
    owner = jaxpop_ray.serve(
        _population(2), _wta(), log_dir=tmp_path / "a", name="dead", max_restarts=0
    )
    other = jaxpop_ray.connect("dead", timeout_s=60)
    other.maybe_get_worker_data(0, None, 0, None, None)
    ray.kill(owner.actor, no_restart=False)
    start = time.monotonic()
    with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="not coming back"):
        while time.monotonic() - start < 60:  # (the old process, until the kill lands)
            other.maybe_get_worker_data(0, None, 0, None, None)
            time.sleep(0.1)
    assert time.monotonic() - start < 30
    with jaxpop_ray.serve(_population(2), _wta(), log_dir=tmp_path / "a", name="dead") as again:
        assert again.maybe_get_worker_data(0, None, 0, None, None).status == "active"
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / "only_here.py").write_text("def mutate(meta, key):\n    return meta\n")
    sys.path.insert(0, str(tmp_path / "hidden"))
    try:
        import only_here

        start = time.monotonic()
        with pytest.raises(jaxpop_ray.ControllerUnavailableError, match="could not be built"):
            jaxpop_ray.serve(
                _population(2),
                WinnerTakeAllGenetic(only_here.mutate, steps_per_exploit=2),
                log_dir=tmp_path / "b",
                name="unbuildable",
                timeout_s=60,
            )
        assert time.monotonic() - start < 30
    finally:
        sys.path.remove(str(tmp_path / "hidden"))
        sys.modules.pop("only_here", None)

    def leave():
        sys.exit("bad config")

    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"sys.exit\('bad config'\)"):
        jaxpop_ray.serve(
            _population(2),
            Mutator(init=leave, update=lambda s, w, h, now, key: (s, w, ())),
            log_dir=tmp_path / "c",
            name="exits",
            timeout_s=60,
        )
    assert time.monotonic() - start < 30


def test_shutdown_ends_a_controller_stuck_in_its_mutator(ray_session, tmp_path, monkeypatch):
    """shutdown() waited for the controller's close for timeout_s (forever with None)
    while a call hung in the mutator (a hostile test, helper-122)."""

    stuck = tmp_path / "stuck"

    def hang(s, workers, history, now, key):
        if any(c.value == 13.0 for c in history.checkpoints()):
            stuck.touch()
            time.sleep(10**6)
        return s, workers, ()

    monkeypatch.setattr(jaxpop_ray, "_CLOSE_WAIT_S", 1.0)
    client = jaxpop_ray.serve(
        _population(2),
        Mutator(init=lambda: 0, update=hang),
        log_dir=tmp_path,
        name="stuck",
        timeout_s=None,
    )
    gen = client.maybe_get_worker_data(0, None, 0, None, None).generation_id

    def stuck_call():
        with contextlib.suppress(Exception):  # (ended by the shutdown)
            client.set_eval(0, gen, 1, "h", 13.0)

    threading.Thread(target=stuck_call, daemon=True).start()
    _wait_until(stuck.exists)  # (the call is in the mutator)
    start = time.monotonic()
    client.shutdown()
    assert time.monotonic() - start < 20
