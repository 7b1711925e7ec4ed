"""Crash test: SIGKILL a controller process at random moments; nothing acknowledged is lost."""

import os
import random
import re
import signal
import subprocess
import sys
import time

from jaxpop import storage

SCRIPT = os.path.join(os.path.dirname(__file__), "crash_run.py")
ACK = re.compile(r"^ACK (\S+) (\d+) (\S+)$")
KILLS = 20  # each restart imports JAX (about 2 s); tests/test_storage_faults.py covers the rest
GOAL = 400


def _start(log_dir, goal=10**9):
    return subprocess.Popen(
        [sys.executable, SCRIPT, str(log_dir), str(goal)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"},
    )


def _wait_ready(proc):
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise AssertionError(f"controller did not start: {line!r} {proc.stderr.read()}")


def _snapshot_in_flight(log_dir):
    return any(n.endswith(".tmp") for n in os.listdir(log_dir))


def _acks(text, acked):
    for line in text.splitlines():
        match = ACK.match(line)
        if match:  # a line cut by the kill does not match and was never acknowledged
            acked[(match.group(1), int(match.group(2)))] = float(match.group(3))


def test_sigkill_at_random_moments_loses_no_acknowledged_eval(tmp_path):
    rng = random.Random(1234)
    acked = {}
    during_snapshot = 0
    for kill in range(KILLS):
        proc = _start(tmp_path)
        _wait_ready(proc)
        if kill % 2:  # at a random moment: mostly during journal writes
            time.sleep(rng.uniform(0.0, 0.4))
        else:  # as soon as a snapshot is being written (or after a while)
            deadline = time.monotonic() + rng.uniform(0.2, 1.0)
            while time.monotonic() < deadline and not _snapshot_in_flight(tmp_path):
                time.sleep(0.0002)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        _acks(out, acked)
        assert proc.returncode == -signal.SIGKILL
        during_snapshot += _snapshot_in_flight(tmp_path)
    proc = _start(tmp_path, GOAL)
    _wait_ready(proc)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.rstrip().endswith("DONE")
    _acks(out, acked)

    state = storage.read_state(tmp_path)
    history = state.history
    missing = [ref for ref in acked if history.get_checkpoint(*ref) is None]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged evals lost: {missing[:5]}"
    wrong = [ref for ref, v in acked.items() if history.get_checkpoint(*ref).value != v]
    assert not wrong, wrong[:5]
    assert state.mutator_state["num_exploits"] >= GOAL
    assert len(acked) > KILLS
    print(f"{KILLS} kills, {during_snapshot} while a snapshot was being written")
    assert during_snapshot >= 1
