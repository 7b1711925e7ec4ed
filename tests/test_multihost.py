"""A vectorized population over 2 processes (``jax.distributed`` on CPU) equals 1 process.

Runs ``tests/multihost_run.py`` three times: once as 1 process with 4 CPU devices (the
reference, uninterrupted), then as 2 processes with 2 CPU devices each (gloo collectives,
a coordinator on a free local port) that are SIGKILLed after round 4, then as 2 fresh
processes that resume from the journal and the last collective snapshot (round 3). The
8 members are sharded over the 4 devices either way; every exploit copies members
across the processes. ``docs/multihost.md`` describes the launch on a real cluster.
Every process is a fresh one, forked by ``multihost_run.py --serve`` (which imported
JAX once, before any JAX call) instead of a new interpreter each.

Every result is compared bit for bit: the programs are the same SPMD programs over the
same 4-device mesh, the per-member arithmetic is local to a device and the only
cross-device traffic (the gather of the scores for selection, the exploit gather) moves
values without arithmetic, so nothing can round differently.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpop import multihost, storage
from jaxpop import vectorized as vz

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_run.py")
ROUNDS, STOP_AFTER, PER_PROCESS = 6, 4, 4  # members 0-3 on process 0, 4-7 on process 1
TIMEOUT_S = 240  # per launch: a hang fails the test instead of blocking it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    # the script sets the devices; compiling is most of each run on 2 cores: optimize
    # less, with the faster-compiling elemental emitters (the same in every run, so the
    # comparisons hold)
    flags = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    return env


class _Launcher:
    """``multihost_run.py --serve``: imports JAX once and forks every process the test
    launches (each a fresh process that configures JAX and joins its run itself)."""

    def __init__(self, tmp_path):
        with open(tmp_path / "launcher.txt", "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, SCRIPT, "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=_env(),
            )
        self.lines: queue.Queue = queue.Queue()
        self.pids: list[int] = []  # the last launch's processes
        self.running: set[int] = set()  # those not reaped yet
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.split())
        self.lines.put(None)

    def _next(self, timeout: float) -> list[str]:
        line = self.lines.get(timeout=max(0.0, timeout))
        if line is None:
            raise AssertionError("the launcher ended")
        return line

    def start(self, out: str, commands: list[list[str]]) -> list[int]:
        """Starts one process per command; each one's output goes to ``out/log-<i>.txt``."""
        os.makedirs(out, exist_ok=True)
        launch = [[os.path.join(out, f"log-{i}.txt"), c] for i, c in enumerate(commands)]
        self.proc.stdin.write(json.dumps(launch) + "\n")
        self.proc.stdin.flush()
        word, *pids = self._next(TIMEOUT_S)
        assert word == "PIDS", (word, pids)
        self.pids = [int(p) for p in pids]
        self.running = set(self.pids)
        return self.pids

    def exits(self, count: int, deadline: float) -> dict[int, int]:
        """Process index to exit code (``-9``: SIGKILLed), for ``count`` processes;
        ``queue.Empty`` at ``deadline``."""
        codes = {}
        while len(codes) < count:
            word, i, code = self._next(deadline - time.monotonic())
            assert word == "EXIT", word
            codes[int(i)] = int(code)
            self.running.discard(self.pids[int(i)])  # reaped: its pid may be reused
        return codes

    def kill(self) -> None:
        for pid in sorted(self.running):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _two(out: str, *args: str) -> list[list[str]]:
    """The command lines of the 2 processes, with a coordinator on a free local port."""
    port = str(_free_port())
    base = [out, "--processes", "2", "--port", port, *args]
    return [[*base, "--process-id", str(i)] for i in range(2)]


def _finish(launcher: _Launcher, out: str) -> None:
    """Waits for the launched processes to exit 0 (or kills them after TIMEOUT_S)."""
    count = len(launcher.running)
    try:
        codes = launcher.exits(count, time.monotonic() + TIMEOUT_S)
    except queue.Empty:
        launcher.kill()
        pytest.fail("a process hung:\n" + _tails(out, count))
    if any(codes.values()):
        pytest.fail(f"a process failed ({codes}):\n" + _tails(out, count))


def _tails(out: str, count: int) -> str:
    """The end of each process's output."""
    tails = []
    for i in range(count):
        with open(os.path.join(out, f"log-{i}.txt")) as f:
            tails.append(f"--- process {i}:\n{f.read()[-3000:]}")
    return "\n".join(tails)


def _rounds(out: str) -> list[dict]:
    with open(os.path.join(out, "rounds.jsonl")) as f:
        return [json.loads(line) for line in f]


def _result(out: str) -> tuple[dict, dict[str, np.ndarray]]:
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    with np.load(os.path.join(out, "result.npz")) as leaves:
        return result, dict(leaves)


@pytest.fixture
def launcher(tmp_path):
    launcher = _Launcher(tmp_path)
    yield launcher
    launcher.close()


def test_two_processes_equal_one_and_resume_after_both_are_killed(tmp_path, launcher):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")

    # the reference: 1 process, 4 devices, uninterrupted
    launcher.start(one, [[one, "--processes", "1"]])
    _finish(launcher, one)
    reference = _rounds(one)
    assert [r["round"] for r in reference] == list(range(ROUNDS))

    # 2 processes, SIGKILLed (both) once round 4 is done: the journal holds round 4,
    # the last snapshot round 3 (the resumed run reruns round 4 from it, unrecorded)
    launcher.start(two, _two(two, "--stop-after", str(STOP_AFTER)))
    deadline = time.monotonic() + TIMEOUT_S
    while not all(os.path.exists(os.path.join(two, f"stopped-{i}")) for i in range(2)):
        if not launcher.lines.empty() or time.monotonic() > deadline:  # one ended (or hung)
            launcher.kill()
            pytest.fail("the 2-process run stopped before round 4:\n" + _tails(two, 2))
        time.sleep(0.1)
    launcher.kill()
    assert launcher.exits(2, time.monotonic() + 30) == {0: -signal.SIGKILL, 1: -signal.SIGKILL}
    killed = storage.read_state(os.path.join(two, "log"))
    assert killed.num_events == STOP_AFTER + 1 and vz.latest_snapshot(killed) is not None
    before = _rounds(two)
    assert [r["round"] for r in before] == list(range(STOP_AFTER + 1))

    # 2 fresh processes resume from the journal and the collective snapshot
    launcher.start(two, _two(two, "--resume"))
    _finish(launcher, two)
    after = _rounds(two)[len(before) :]
    assert [r["round"] for r in after] == list(range(STOP_AFTER, ROUNDS))

    # process 0 held members 0-3; every copy's parent was on the other process
    for r in before + after:
        assert r["held_by_lead"] == list(range(PER_PROCESS))
        copies = [i for i, c in enumerate(r["copied"]) if c]
        assert copies, r
        assert all(r["parents"][i] // PER_PROCESS != i // PER_PROCESS for i in copies), r

    # each round of the 2-process runs equals the 1-process round, bit for bit
    for r in before + after:
        ref = reference[r["round"]]
        assert (r["scores"], r["parents"], r["copied"]) == (
            ref["scores"],
            ref["parents"],
            ref["copied"],
        )

    # the resumed run ends where the uninterrupted one does: population and lineage
    got, got_leaves = _result(two)
    want, want_leaves = _result(one)
    assert got == want
    assert got["num_generations"] > 8 + ROUNDS  # two copies per round
    assert sorted(got_leaves) == sorted(want_leaves)
    for name, leaf in want_leaves.items():
        np.testing.assert_array_equal(got_leaves[name], leaf, err_msg=name)

    # the journal (written by process 0 alone) holds the whole lineage; each snapshot
    # was written by both processes (one OCDBT subdirectory per process)
    journaled = storage.read_state(os.path.join(two, "log"))
    assert [c.generation_id for c in journaled.history.checkpoints()] == [
        c[0] for c in got["lineage"]
    ]
    snapshots = [h for h in os.listdir(os.path.join(two, "params")) if not h.startswith(".")]
    assert len(snapshots) == ROUNDS // 2  # rounds 1, 3, 5
    state = os.path.join(two, "params", snapshots[0], "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state))


def test_in_one_process_the_helpers_are_plain_host_copies():
    assert multihost.is_lead_process()
    tree = {"scores": jnp.arange(4.0), "host": np.ones(2), "label": "x", "none": None}
    out = multihost.to_host(tree)
    assert isinstance(out["scores"], np.ndarray) and isinstance(out["host"], np.ndarray)
    np.testing.assert_array_equal(out["scores"], np.arange(4.0))
    assert out["label"] == "x" and out["none"] is None
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    value = {"handle": "/shared/params/vectorized_step8_0123", "round": 3, "x": None}
    assert multihost.broadcast_from_lead(value) == value
    with pytest.raises(TypeError, match="JSON data"):
        multihost.broadcast_from_lead(np.zeros(2))
    for changed in ({0: "a"}, {"a": [{None: 1}]}, [{True: 2}]):  # ({0: 'a'} became {'0': 'a'})
        with pytest.raises(TypeError, match="would arrive as a str"):
            multihost.broadcast_from_lead(changed)
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(TypeError, match="JSON data"):
        multihost.broadcast_from_lead(cycle)
    # a surrogate pair came back as one code point (helper-212); a lone surrogate (a
    # name os.fsdecode made of undecodable bytes) and any real text arrive as sent
    for pair in ("\ud83d\ude00", {"k\udbff\udc00": 1}, ["x", {"a": "\ud800\udfff!"}]):
        with pytest.raises(TypeError, match="surrogate pair"):
            multihost.broadcast_from_lead(pair)
    for text in ("\udcff", "a\udcffb\ud800", "\udc00\ud800", "é😀", {"\udce9": ["\ud83d"]}):
        assert multihost.broadcast_from_lead(text) == text


def test_a_value_the_lead_cannot_send_is_an_error_on_every_process_not_a_hang(monkeypatch):
    """Process 0 with a value that is not JSON data still takes part in the collective
    (it sends size -1, then raises); another process receives -1 and raises too,
    instead of waiting forever for a broadcast that never comes. Numpy scalars are
    sent as numbers."""
    from jax.experimental import multihost_utils

    sent = []

    def broadcast(x):  # process 0's side of the collective, recorded
        sent.append(np.asarray(x).tolist())
        return x

    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    deep: list = []
    for _ in range(100_000):  # (json.dumps raises RecursionError)
        deep = [deep]
    # (a longdouble's item() is a longdouble: json asked for a number forever)
    for bad in ({"handle": object()}, {"x": np.longdouble(1.5)}, deep):
        with pytest.raises(TypeError, match="JSON data"):
            multihost.broadcast_from_lead(bad)
        assert sent == [-1]  # it took part: the others learn of the error
        sent.clear()
    assert multihost.broadcast_from_lead({"step": np.int64(5), "x": np.float32(0.5)}) == {
        "step": 5,
        "x": 0.5,
    }
    monkeypatch.setattr(multihost, "is_lead_process", lambda: False)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: np.asarray(-1))
    with pytest.raises(TypeError, match="process 0's value is not JSON data"):
        multihost.broadcast_from_lead(None)


def test_a_failure_on_process_0_alone_ends_both_processes_at_once(tmp_path, launcher):
    """Process 0's failure in what it does alone (recording a round) left process 1
    waiting in its next collective, and process 0 in JAX's shutdown barrier, until the
    distributed timeout (5 minutes; helper-157). Through multihost.on_lead both end
    with the error at once. (And --resume on a log_dir with no run starts one: the
    documented resume failed on load() returning None.)"""
    out = str(tmp_path / "fails")
    launcher.start(out, _two(out, "--resume", "--fail-at", "1"))
    started = time.monotonic()
    try:
        codes = launcher.exits(2, started + 90)
    except queue.Empty:
        launcher.kill()
        pytest.fail("a process waited on:\n" + _tails(out, 2))
    assert codes[0] != 0 and codes[1] != 0, codes
    logs = _tails(out, 2)
    assert "--fail-at 1: process 0 fails recording round 1" in logs
    assert "process 0 failed in on_lead(main.<locals>.record)" in logs
    assert [r["round"] for r in _rounds(out)] == [0]
    assert storage.read_state(os.path.join(out, "log")).num_events == 1


def test_on_lead_runs_on_process_0_only_and_tells_the_others_of_a_failure(monkeypatch):
    calls = []
    assert multihost.on_lead(lambda x, y=0: calls.append((x, y)) or "done", 1, y=2) == "done"
    assert calls == [(1, 2)]
    with pytest.raises(ZeroDivisionError):  # (one process: the broadcast is its own)
        multihost.on_lead(lambda: 1 / 0)
    sent = []

    class Unprintable(Exception):
        def __str__(self):
            raise ValueError("no str")

    def unprintable():
        raise Unprintable

    real = multihost.broadcast_from_lead
    monkeypatch.setattr(multihost, "broadcast_from_lead", lambda v: sent.append(v) or real(v))
    with pytest.raises(Unprintable):  # (its message failed before the broadcast: helper-161)
        multihost.on_lead(unprintable)
    assert sent == ["Unprintable"]  # the others still hear of it
    monkeypatch.setattr(multihost, "is_lead_process", lambda: False)
    monkeypatch.setattr(multihost, "broadcast_from_lead", lambda v: "KeyError: 'lr'")

    def record():
        calls.append("ran")

    with pytest.raises(RuntimeError, match=r"process 0 failed in on_lead\(.*record\): KeyError"):
        multihost.on_lead(record)
    assert calls == [(1, 2)]  # not run on another process
    monkeypatch.setattr(multihost, "broadcast_from_lead", lambda v: None)
    assert multihost.on_lead(record) is None and calls == [(1, 2)]


def test_a_collective_call_inside_on_lead_is_refused(monkeypatch, tmp_path):
    """on_lead's fn runs on process 0 alone: a collective there (a broadcast, even a
    helper's) was paired with on_lead's own broadcast on the other processes: a wrong
    value there (a handle read as None: the run started over), then a hang (hostile
    review, helper-277). Refused on process 0, so every process hears of it."""
    from jaxpop.checkpointing import ParamStore

    sent = []
    real = multihost.broadcast_from_lead
    monkeypatch.setattr(multihost, "broadcast_from_lead", lambda v: sent.append(v) or real(v))

    def helper_that_broadcasts():
        return real(None)

    refused = r"broadcast_from_lead is collective .* inside on_lead\(.*resume\)"

    def resume():
        helper_that_broadcasts()
        return "/shared/params/vectorized_step8_abc"

    with pytest.raises(RuntimeError, match=refused):
        multihost.on_lead(resume)
    assert len(sent) == 1 and "RuntimeError: broadcast_from_lead is collective" in sent[0]
    with pytest.raises(RuntimeError, match="on_lead is collective"):
        multihost.on_lead(lambda: multihost.on_lead(lambda: 1))
    local = multihost.on_lead(lambda: multihost.to_host({"a": jnp.ones(2)}))  # (not collective)
    np.testing.assert_array_equal(local["a"], np.ones(2))
    monkeypatch.setattr(multihost, "_spans_processes", lambda leaf: True)
    sharded = "to_host of arrays sharded over processes is collective"
    with pytest.raises(RuntimeError, match=sharded):
        multihost.on_lead(lambda: multihost.to_host({"a": jnp.ones(2)}))
    monkeypatch.undo()
    store = ParamStore(str(tmp_path / "params"), async_save=False)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(RuntimeError, match=r"ParamStore.save \(with several processes\)"):
        multihost.on_lead(lambda: store.save("g", 1, {"w": np.ones(2)}))
    with pytest.raises(RuntimeError, match=r"ParamStore.restore \(with several processes\)"):
        multihost.on_lead(lambda: store.restore("/nowhere/x", {"w": np.ones(2)}))
    monkeypatch.undo()
    # after on_lead (its fn failed or not), collectives are this thread's again
    assert multihost.broadcast_from_lead("after") == "after"
    assert multihost.on_lead(lambda: "fine") == "fine"


def test_on_lead_sends_a_message_holding_a_surrogate_pair_as_text(monkeypatch):
    """A failure whose message held a surrogate pair (a name quoted in it) could not be
    sent: the other processes got "process 0's value is not JSON data" instead of the
    error (helper-277)."""
    sent = []
    real = multihost.broadcast_from_lead
    monkeypatch.setattr(multihost, "broadcast_from_lead", lambda v: sent.append(v) or real(v))

    def fails(message):
        def fn():
            raise ValueError(message)

        return fn

    with pytest.raises(ValueError):
        multihost.on_lead(fails("bad name \ud83d\ude00"))
    with pytest.raises(ValueError):
        multihost.on_lead(fails("pair \ud83d\ude00, lone \udcff"))
    assert sent == ["ValueError: bad name 😀", "ValueError: pair \\ud83d\\ude00, lone \\udcff"]


def test_to_host_returns_copies():
    host = np.ones(2)
    out = multihost.to_host({"host": host, "device": jnp.ones(2)})
    assert out["host"] is not host
    out["host"][0] = out["device"][0] = 5.0  # (a device array's view was read-only)
    assert host[0] == 1.0


def test_on_lead_raises_process_0s_own_error_when_telling_the_others_fails_too(monkeypatch):
    """A process died while process 0's fn failed: the broadcast's network error took the
    place of fn's (helper-212). Now fn's error is raised, its own context kept, with a
    note naming the broadcast's (Python 3.11+); fn's success with a failed broadcast
    still raises the broadcast's error."""

    def lost(value):
        raise RuntimeError("Gloo all-reduce failed: Connection closed by peer")

    monkeypatch.setattr(multihost, "broadcast_from_lead", lost)

    def journal():
        try:
            raise KeyError("inner")
        except KeyError:
            raise OSError("No space left on device") from None

    with pytest.raises(OSError, match="No space left") as raised:
        multihost.on_lead(journal)
    assert isinstance(raised.value.__context__, KeyError)  # (fn's, not the broadcast's)
    assert raised.value.__suppress_context__
    if sys.version_info >= (3, 11):
        assert any("Gloo all-reduce failed" in note for note in raised.value.__notes__)
    with pytest.raises(RuntimeError, match="Gloo"):
        multihost.on_lead(lambda: "fine")


@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (-1, ValueError), (2**31, ValueError), (2.7, TypeError), (True, TypeError)],
)
def test_initialize_cpu_refuses_a_bad_device_count_before_touching_jax(monkeypatch, bad, error):
    calls = []
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(a))
    with pytest.raises(error, match="local_devices"):
        multihost.initialize_cpu("localhost:1", 1, 0, local_devices=bad)
    assert calls == []
    multihost.initialize_cpu("localhost:1", 1, 0, local_devices=np.int64(2))  # an integer
    assert ("jax_num_cpu_devices", 2) in calls


@pytest.mark.parametrize(
    "args, error, match",
    [
        (("localhost", 2, 0), ValueError, "host:port"),
        (("localhost:0", 2, 0), ValueError, "host:port"),
        (("localhost:1", 2, 2), ValueError, r"process_id must be in \[0, 2\)"),
        (("localhost:1", 2, -1), ValueError, "process_id"),
        (("localhost:1", 0, 0), ValueError, "num_processes"),
        (("localhost:1", 2, True), TypeError, "process_id"),
        (("localhost:1", 2, 0, 2.5), TypeError, "initialization_timeout"),
        (("localhost:1", 2, 0, -1), ValueError, "initialization_timeout"),
        (("localhost:\uff12\uff13\uff14\uff15\uff16", 2, 0), ValueError, "host:port"),
        (("localhost:²", 2, 0), ValueError, "host:port"),  # (a bare int() error)
    ],
)
def test_initialize_cpu_checks_every_argument_before_touching_jax(monkeypatch, args, error, match):
    # (an address without a port was an IndexError, a fractional timeout a nanobind
    # TypeError, a bool process id taken; JAX's config had changed first: helper-250)
    calls = []
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(a))
    address, count, pid, *timeout = args
    kwargs = {"initialization_timeout": timeout[0]} if timeout else {}
    with pytest.raises(error, match=match):
        multihost.initialize_cpu(address, count, pid, **kwargs)
    assert calls == []


def _recorded_jax_calls(monkeypatch) -> list:
    """JAX's config updates and distributed initialize, recorded instead of made."""
    calls: list = []
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(a))
    return calls


def _refused_while_held(held: socket.socket) -> int:
    """``held`` listening on a free port, which process 0's initialize_cpu refuses."""
    held.bind(("", 0))
    held.listen()
    port = held.getsockname()[1]
    with pytest.raises(OSError, match=f"port {port} .* cannot be listened on"):
        multihost.initialize_cpu(f"localhost:{port}", 2, 0)
    return port


def test_initialize_cpu_says_the_coordinators_port_is_taken(monkeypatch):
    # JAX's coordinator ended process 0 with SIGSEGV on a port another program held
    calls = _recorded_jax_calls(monkeypatch)
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as held:
        port = _refused_while_held(held)
        assert calls == []
        multihost.initialize_cpu(f"localhost:{port}", 2, 1)  # (process 1 only connects)
    assert calls


def test_initialize_cpu_checks_the_port_where_ipv6_is_disabled(monkeypatch):
    """A kernel without IPv6 (EAFNOSUPPORT for an AF_INET6 socket, though Python was
    built with it): the port check itself failed process 0 (helper-277)."""
    import errno

    calls = _recorded_jax_calls(monkeypatch)
    real = socket.socket

    def no_ipv6(family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", no_ipv6)
    with real(socket.AF_INET) as held:
        port = _refused_while_held(held)
    assert calls == []
    multihost.initialize_cpu(f"localhost:{port}", 2, 0)  # free again: checked, then joined
    assert calls
