"""The seed's server helpers (``start_courier_server``, ``get_courier_client``) on Ray.

A seed program serves its controller with ``start_courier_server`` and its workers
reach it with ``get_courier_client``; here they run unchanged on a local Ray instance
(``ray.init(num_cpus=2)``, shared by the module, as in ``test_ray.py``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from conftest import run_python
from jaxpop import population as population_mod
from jaxpop import storage
from jaxpop.mutators import WinnerTakeAllGenetic


def test_uniquify_server_name_is_the_seeds():
    name = population_mod.uniquify_server_name("/runs/a", "population_controller")
    assert name.endswith("__population_controller") and len(name) == 20 + 2 + 21
    assert name == population_mod.uniquify_server_name("/runs/a", "population_controller")
    assert name != population_mod.uniquify_server_name("/runs/b", "population_controller")
    # a path as bytes or a PathLike, and a folder name that is no UTF-8 (an
    # AttributeError and a UnicodeEncodeError: hostile review, helper-252)
    path = pathlib.Path("/runs/a")
    for same in (b"/runs/a", path):
        assert population_mod.uniquify_server_name(same, "population_controller") == name
    odd = os.fsdecode(b"/runs/caf\xe9")
    named = population_mod.uniquify_server_name(odd, "c")
    assert named == population_mod.uniquify_server_name(b"/runs/caf\xe9", "c")
    with pytest.raises(TypeError, match="shared_str"):
        population_mod.uniquify_server_name(3, "c")


def test_futures_of_a_property_are_refused_without_making_the_call():
    """``client.futures.history``: reading the property through the client was the remote
    call itself, made and waited for, before "no method" (helper-295)."""
    from jaxpop.distributed.courier import _Futures

    calls = []

    class Client:
        @property
        def history(self):
            calls.append("history")

        def set_eval(self, *args):
            return ("set_eval", args)

    futures = _Futures(Client())
    with pytest.raises(AttributeError, match="no method 'history'"):
        futures.history  # noqa: B018
    assert calls == []
    assert futures.set_eval(1, 2).result(timeout=30) == ("set_eval", (1, 2))


def test_join_takes_a_numpy_timeout_as_seconds(monkeypatch):
    """Join added a np.float16 timeout to time.monotonic() in float16: past 65504 s of
    uptime the deadline was inf, ``inf < inf`` false, and Join returned False at once
    (helper-254). A server whose actor is alive, stopped from another thread."""
    from jaxpop.distributed import courier

    real = time.monotonic
    monkeypatch.setattr(courier.time, "monotonic", lambda: real() + 1e5)  # a day up
    server = object.__new__(courier.CourierServer)
    server._stopped = threading.Event()
    server._actor_gone = lambda: False
    stopper = threading.Timer(0.2, server._stopped.set)
    stopper.start()
    assert server.Join(np.float16(5.0))
    stopper.join()
    for bad, error in (
        (True, TypeError),
        ("1", TypeError),
        (-1.0, ValueError),
        (math.nan, ValueError),
    ):
        with pytest.raises(error, match="timeout"):
            server.Join(bad)
    assert server.Join(0) and server.Join(math.inf)  # (stopped: at once)


def test_without_ray_the_helpers_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    controller = population_mod.PopulationController([{"lr": 0.1}], _wta())
    with pytest.raises(ImportError, match=r'pip install "jaxpop\[ray\]"'):
        population_mod.start_courier_server("population", controller)
    with pytest.raises(ImportError, match=r"jaxpop\[ray\]"):
        population_mod.get_courier_client("population")
    controller.set_eval(
        0, controller.active_workers[0].generation_id, 1, None, 1.0
    )  # still its own


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip(
        "ray", reason="the courier helpers need Ray: pip install 'jaxpop[ray]'"
    )
    # this module's functions run inside Ray actors, which cannot import tests/ by name
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _mutate(meta):
    return {"lr": meta["lr"] * 0.7}


def _slow_mutate(began, meta):
    open(began, "w").close()
    time.sleep(10)  # (a mutator busy past the server's close wait)
    return meta


def _wta() -> WinnerTakeAllGenetic:
    return WinnerTakeAllGenetic(_mutate, steps_per_exploit=4)


def _resumed_once_free(log_dir: str) -> population_mod.PopulationController:
    """The run in ``log_dir`` resumed in this process, once a dead actor's process has
    released its lock (as it exits)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return population_mod.PopulationController(
                [{"lr": 0.1}, {"lr": 0.2}], _wta(), log_dir=log_dir
            )
        except storage.LogDirInUseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _train_one(worker_id: int, server_name: str, steps: int = 12) -> list[str]:
    """A worker written for the seed (its complex_cnn example's loop); its generations."""
    population = population_mod.get_courier_client(server_name)
    meta_params = gen_id = state_path = None
    step, generations = 0, []
    for _ in range(steps):
        new_data = population.maybe_get_worker_data(
            worker_id, gen_id, step, state_path, meta_params
        )
        if new_data:
            state_path, meta_params = new_data.params, new_data.meta_params
            gen_id, step = new_data.generation_id, new_data.step
            generations.append(gen_id)
        if step % 2 == 0:
            state_path = f"{worker_id}/{step}__{gen_id}.model"
            loss = abs(meta_params["lr"] - 0.05) + 1.0 / (1 + step)
            population.set_eval(
                worker_id, generation_id=gen_id, step=step, params=state_path, value=loss
            )
        step += 1
    return generations


def _run_threads(fn, n: int, *args) -> list:
    results: list = [None] * n
    errors: list = []

    def run(i):
        try:
            results[i] = fn(i, *args)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def test_a_seed_program_with_threads_runs_through_the_server(ray_session):
    population = population_mod.PopulationController([{"lr": 0.1}, {"lr": 0.01}], _wta())
    server = population_mod.start_courier_server("seed-threads", population)
    try:
        assert os.path.isdir(server.log_dir)  # the in-memory state, now durable there
        generations = _run_threads(_train_one, 2, "seed-threads")
        assert all(generations)
        history = server.client.history
        assert len(history) > 2  # the population exploited, on the server
        assert {w.generation_id for w in server.client.active_workers} <= set(history)
        # the in-process controller was handed over: it refuses to diverge
        gen = population.active_workers[0].generation_id
        with pytest.raises(storage.SupersededError, match="get_courier_client"):
            population.set_eval(0, gen, 2, None, 1.0)
        assert len(population.history) == 2  # its views: the state it handed over
        with pytest.raises(ValueError, match="running already"):
            population_mod.start_courier_server("seed-threads", population)
        with pytest.raises(ValueError, match="handed over to the server 'seed-threads'"):
            population_mod.start_courier_server("seed-threads-again", population)
    finally:
        server.Stop()
    assert not os.path.exists(server.log_dir) and server.Join(timeout=1)
    from jaxpop.distributed.ray import ControllerUnavailableError

    with pytest.raises(ControllerUnavailableError):
        population_mod.get_courier_client("seed-threads", wait_s=0)


def test_a_controller_with_a_log_dir_is_served_there_to_other_processes(ray_session, tmp_path):
    from jaxpop.distributed import ray as jaxpop_ray

    log_dir = str(tmp_path)
    population = population_mod.PopulationController(
        [{"lr": 0.1}, {"lr": 0.01}], _wta(), log_dir=log_dir
    )
    name = population_mod.uniquify_server_name(log_dir, "population_controller")
    with population_mod.start_courier_server(name, population) as server:
        assert server.log_dir == log_dir
        # worker 0 in a Ray worker process, worker 1 in a thread of this one
        group = jaxpop_ray.start_workers(_train_one, 1, args=(name,), num_cpus=1)
        _run_threads(lambda i, n: _train_one(1, n), 1, name)
        group.wait(timeout_s=120)
        client = population_mod.get_courier_client(name)
        future = client.futures.maybe_get_worker_data(1, None, 0, None, None)
        assert future.result(timeout=60) == client.active_workers[1]
        assert not server.Join(timeout=0.1)  # still serving
        checkpoints = list(client.history.checkpoints())
    assert server.Join(timeout=1)
    # the served run is in log_dir: a new controller resumes it
    with population_mod.PopulationController([{}, {}], _wta(), log_dir=log_dir) as resumed:
        assert list(resumed.history.checkpoints()) == checkpoints


def test_the_served_controller_keeps_the_controllers_stop_and_gone_settings(ray_session):
    """A controller built with ``stop_when`` and ``gone_after_s`` is served with them:
    the run ends on the server as it would in-process (the served one used to drop
    them, and a run that met its target never ended)."""
    from jaxpop import StopWhen

    population = population_mod.PopulationController(
        [{"lr": 0.1}, {"lr": 0.01}],
        _wta(),
        stop_when=StopWhen(step=20, value=0.1),
        gone_after_s=3600.0,
    )
    with population_mod.start_courier_server("courier-settings", population) as server:
        client = server.client
        gen = client.active_workers[0].generation_id
        client.set_eval(0, gen, 30, None, 0.01)  # the target value: the run is over
        assert client.done
        reply = client.maybe_get_worker_data(0, gen, 30, None, None)
        assert reply is not None and reply.status == "finished"


def test_a_controller_whose_clock_cannot_be_sent_is_served_with_time_time(ray_session, caplog):
    """A clock the actor cannot receive (it holds a lock) is replaced by the actor's
    time.time with a warning; the controller is served (it used to fail and, with a
    log_dir, be left closed)."""
    import time as time_mod

    class LockedClock:
        def __init__(self):
            self.lock = threading.Lock()

        def __call__(self):
            with self.lock:
                return time_mod.time()

    population = population_mod.PopulationController([{"lr": 0.1}], _wta(), clock=LockedClock())
    with population_mod.start_courier_server("courier-clock", population) as server:
        gen = server.client.active_workers[0].generation_id
        server.client.set_eval(0, gen, 1, None, 0.5)
        assert server.client.history[gen][1].value == 0.5
    assert "clock cannot be sent" in caplog.text


@pytest.mark.parametrize("old_client_follows", [True, False])
def test_stopping_a_dead_server_leaves_the_run_served_again_on_its_directory(
    ray_session, caplog, old_client_follows
):
    """A served controller without a log_dir runs from a temporary directory. Its actor
    dies for good, and the run is served again there, as the client's error advises:
    the old server's ``Stop`` then ends neither the new actor (which the old client
    follows by the name) nor removes the directory the new one runs on."""
    from jaxpop.distributed.ray import ControllerUnavailableError

    name = f"served-again-{old_client_follows}"
    population = population_mod.PopulationController([{"lr": 0.1}, {"lr": 0.2}], _wta())
    old = population_mod.start_courier_server(name, population)
    client = population_mod.get_courier_client(name, timeout_s=30)
    gen = client.maybe_get_worker_data(0, None, 0, None, None).generation_id
    client.set_eval(0, gen, 1, "p1", 0.5)
    ray_session.kill(old.client.actor, no_restart=True)
    deadline = time.monotonic() + 60
    with pytest.raises(ControllerUnavailableError, match="serve it again on the same log_dir"):
        while time.monotonic() < deadline:  # (the old process, until the kill lands)
            client.set_eval(0, gen, 2, "p2", 0.4)
            time.sleep(0.1)
    resumed = _resumed_once_free(old.log_dir)
    new = population_mod.start_courier_server(name, resumed)
    try:
        if old_client_follows:  # (it finds the new actor by the name: the same run)
            assert old.client.history.get_checkpoint(gen, 1) is not None
        new.client.set_eval(0, gen, 3, "p3", 0.3)
        with caplog.at_level(logging.WARNING, logger="jaxpop"):
            start = time.monotonic()
            old.Stop()
        # (at once: the run served again holds the directory for good, nothing to wait for)
        assert time.monotonic() - start < 5
        assert "not removing" in caplog.text and os.path.isdir(new.log_dir)
        assert new.client.history.get_checkpoint(gen, 3) is not None  # still serving
    finally:
        new.Stop()
        shutil.rmtree(new.log_dir, ignore_errors=True)


def test_a_server_that_does_not_start_leaves_the_given_log_dir_as_it_was(ray_session, tmp_path):
    """A controller without a log_dir, served on a given one with an option the server
    refuses: the state written there is removed, so serving again there works."""
    (tmp_path / "notes.txt").write_text("the user's own file")
    population = population_mod.PopulationController([{"lr": 0.1}, {"lr": 0.2}], _wta())
    with pytest.raises(ValueError, match="timeout_s"):
        population_mod.start_courier_server(
            "served-after-a-failure", population, log_dir=tmp_path, timeout_s=-1
        )
    assert os.listdir(tmp_path) == ["notes.txt"]
    with population_mod.start_courier_server(
        "served-after-a-failure", population, log_dir=tmp_path
    ) as server:
        assert server.client.active_workers == population.active_workers
    # the folders made above it too, and through a missing one and ".." as Store takes it
    fresh = tmp_path / "n4" / ".." / "made" / "deeper" / "run"  # (reviews)
    another = population_mod.PopulationController([{"lr": 0.3}], _wta())
    with pytest.raises(ValueError, match="timeout_s"):
        population_mod.start_courier_server(
            "served-after-a-failure", another, log_dir=fresh, timeout_s=-1
        )
    assert not (tmp_path / "made").exists() and not (tmp_path / "n4").exists()


@pytest.mark.parametrize("shut_down", [False, True])
def test_a_server_not_stopped_removes_its_directory_at_exit(ray_session, shut_down):
    """The seed's usage ends the process without Stop(): the exit hook ran before
    ray.init's, while the actor still held its lock, and left the temporary directory
    (a hostile test, helper-122)."""
    code = (
        "import sys, ray\n"
        "ray.init(address=sys.argv[1], log_to_driver=False)  # (this test's cluster)\n"
        "from jaxpop import PopulationController, WinnerTakeAllGenetic, population\n"
        "pop = PopulationController([{'h': 0.0}], WinnerTakeAllGenetic(lambda m: m, "
        "steps_per_exploit=2))\n"
        "server = population.start_courier_server('exit-test', pop)\n"
        "print(server.log_dir, flush=True)\n"
        + ("ray.shutdown()\n" if shut_down else "")  # (Ray ended the actor: no call)
    )
    done = run_python(code, ray_session.get_runtime_context().gcs_address, timeout=180)
    assert done.returncode == 0, done.stderr
    log_dir = done.stdout.split()[-1]
    assert "jaxpop-courier" in log_dir and not os.path.exists(log_dir), done.stderr
    assert "at exit failed" not in done.stderr


def test_a_server_whose_actor_died_for_good_is_joined_and_served_again(ray_session, tmp_path):
    """Ray keeps a dead actor's name until it is killed: Join never returned, and
    start_courier_server under the name said "running already", the way out the dead
    server's client advises refused (hostile review, helper-141)."""
    name = "died-for-good"
    log_dir = str(tmp_path / "run")
    population = population_mod.PopulationController(
        [{"lr": 0.1}, {"lr": 0.2}], _wta(), log_dir=log_dir
    )
    old = population_mod.start_courier_server(name, population, max_restarts=0)
    start = time.monotonic()
    with pytest.raises(ValueError, match="running already"):  # (at once: it is alive)
        population_mod.start_courier_server(
            name, population_mod.PopulationController([{"lr": 0.1}], _wta())
        )
    assert time.monotonic() - start < 5
    client = population_mod.get_courier_client(name, timeout_s=30)
    gen = client.maybe_get_worker_data(0, None, 0, None, None).generation_id
    client.set_eval(0, gen, 1, "p1", 0.5)
    os.kill(client.info()["pid"], signal.SIGKILL)
    start = time.monotonic()
    assert old.Join(timeout=30) and time.monotonic() - start < 20
    resumed = _resumed_once_free(log_dir)
    new = population_mod.start_courier_server(name, resumed)
    try:
        assert new.client.history.get_checkpoint(gen, 1) is not None
        assert not new.Join(timeout=1.5)  # (alive: Join waits)
    finally:
        new.Stop()
        old.Stop()


def test_a_state_that_cannot_be_written_leaves_the_given_log_dir_as_it_was(ray_session, tmp_path):
    """A failed write (params the journal cannot encode) left a lock file in the log_dir
    given, and made it where there was none (hostile review, helper-141)."""
    import pathlib

    population = population_mod.PopulationController([{"lr": 0.1}, {"lr": 0.2}], _wta())
    gen = population.active_workers[0].generation_id
    population.set_eval(0, gen, 1, pathlib.Path("/ckpt/0/1"), 0.5)  # (in memory: taken)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    for target in (tmp_path / "new", existing):
        with pytest.raises(TypeError, match="cannot encode"):
            population_mod.start_courier_server("unwritable", population, log_dir=str(target))
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(existing)) == ["notes.txt"]
    population.set_eval(0, gen, 2, "/ckpt/0/2", 0.4)  # (still the caller's)


def test_stopping_a_busy_server_removes_its_directory(ray_session, caplog, tmp_path):
    """Its actor, killed while busy in its mutator, still held the temporary directory's
    lock when Stop looked: the directory was left, with a warning that a run was served
    again there (hostile review, helper-141)."""
    began = tmp_path / "busy"
    population = population_mod.PopulationController(
        [{"lr": 0.1}, {"lr": 0.2}],
        WinnerTakeAllGenetic(functools.partial(_slow_mutate, str(began)), steps_per_exploit=4),
    )
    # (Stop waits timeout_s for the busy controller to close, then kills it)
    server = population_mod.start_courier_server("busy", population, timeout_s=1.0)
    client = population_mod.get_courier_client("busy", timeout_s=30)
    g0 = client.maybe_get_worker_data(0, None, 0, None, None).generation_id
    g1 = client.maybe_get_worker_data(1, None, 0, None, None).generation_id
    client.set_eval(0, g0, 4, "a", 0.5)
    client.futures.set_eval_and_ask(1, g1, 4, "b", 0.3)  # the round: 10 s in the mutator
    deadline = time.monotonic() + 60
    while not began.exists():  # (until the call is in the mutator)
        assert time.monotonic() < deadline, "the round never began"
        time.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        server.Stop()
    assert not os.path.exists(server.log_dir) and "not removing" not in caplog.text
