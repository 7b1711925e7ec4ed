"""A vectorized population over 2 processes (``jax.distributed`` on CPU) equals 1 process.

Runs ``tests/multihost_run.py`` three times: once as 1 process with 4 CPU devices (the
reference, uninterrupted), then as 2 processes with 2 CPU devices each (gloo collectives,
a coordinator on a free local port) that are SIGKILLed after round 4, then as 2 fresh
processes that resume from the journal and the last collective snapshot (round 3). The
8 members are sharded over the 4 devices either way; every exploit copies members
across the processes. ``docs/multihost.md`` describes the launch on a real cluster.

Every result is compared bit for bit: the programs are the same SPMD programs over the
same 4-device mesh, the per-member arithmetic is local to a device and the only
cross-device traffic (the gather of the scores for selection, the exploit gather) moves
values without arithmetic, so nothing can round differently.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpop import multihost, storage

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
    # less (the same in every run, so the comparisons hold)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    return env


def _start(out: str, env: dict[str, str], *args: str) -> list[subprocess.Popen]:
    """Starts the 2 processes; each one's output goes to ``out/log-<id>.txt``."""
    os.makedirs(out, exist_ok=True)
    port = str(_free_port())
    procs = []
    for i in range(2):
        with open(os.path.join(out, f"log-{i}.txt"), "a") as log:  # a file never fills up
            command = [sys.executable, SCRIPT, out, "--processes", "2", "--process-id", str(i)]
            procs.append(
                subprocess.Popen(
                    [*command, "--port", port, *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)


def _finish(out: str, procs: list[subprocess.Popen]) -> None:
    """Waits for both processes to exit 0 (or kills them after TIMEOUT_S)."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(procs)
        pytest.fail("a process of the 2-process run hung:\n" + _tails(out, procs))
    finally:
        _kill(procs)
    if any(p.returncode != 0 for p in procs):
        pytest.fail("a process of the 2-process run failed:\n" + _tails(out, procs))


def _tails(out: str, procs: list[subprocess.Popen]) -> str:
    """The end of each process's output."""
    tails = []
    for i, p in enumerate(procs):
        with open(os.path.join(out, f"log-{i}.txt")) as f:
            tails.append(f"--- process {i} (rc {p.returncode}):\n{f.read()[-3000:]}")
    return "\n".join(tails)


def _rounds(out: str) -> list[dict]:
    with open(os.path.join(out, "rounds.jsonl")) as f:
        return [json.loads(line) for line in f]


def _result(out: str) -> tuple[dict, dict[str, np.ndarray]]:
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    with np.load(os.path.join(out, "result.npz")) as leaves:
        return result, dict(leaves)


def test_two_processes_equal_one_and_resume_after_both_are_killed(tmp_path):
    env = _env()
    one, two = str(tmp_path / "one"), str(tmp_path / "two")

    # the reference: 1 process, 4 devices, uninterrupted
    proc = subprocess.run(
        [sys.executable, SCRIPT, one, "--processes", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _rounds(one)
    assert [r["round"] for r in reference] == list(range(ROUNDS))

    # 2 processes, SIGKILLed (both) once round 4 is done: the journal and the last
    # snapshot hold round 3, round 4 is lost
    procs = _start(two, env, "--stop-after", str(STOP_AFTER))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not all(os.path.exists(os.path.join(two, f"stopped-{i}")) for i in range(2)):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                _kill(procs)
                pytest.fail("the 2-process run stopped before round 4:\n" + _tails(two, procs))
            time.sleep(0.1)
    finally:
        _kill(procs)
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    before = _rounds(two)
    assert [r["round"] for r in before] == list(range(STOP_AFTER + 1))

    # 2 fresh processes resume from the journal and the collective snapshot
    _finish(two, _start(two, env, "--resume"))
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
