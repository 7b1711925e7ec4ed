"""Crash test: SIGKILL a controller process at random moments; nothing acknowledged is lost."""

import contextlib
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
# each controller is a fresh process forked by one server that imported JAX once
# (tests/crash_run.py --serve); tests/test_storage_faults.py covers the rest
KILLS = 20
GOAL = 400
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"}


def _snapshot_in_flight(log_dir):
    return any(".jpsnap.tmp" in n for n in os.listdir(log_dir))


def _acks(lines, acked):
    for line in lines:
        match = ACK.match(line)
        if match:  # a line cut by the kill does not match and was never acknowledged
            acked[(match.group(1), int(match.group(2)))] = float(match.group(3))


def _lines_until_exit(stdout):
    """The controller's remaining lines, and its exit code from the server's ``EXIT``."""
    lines = []
    for line in stdout:
        if line.startswith("EXIT "):
            return lines, int(line.split()[1])
        lines.append(line.rstrip("\n"))
    raise AssertionError(f"the server ended: {lines[-5:]}")


def _kill(pid):
    """SIGKILLs the controller, unless it ended already (then its exit code says how)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_ready(stdout, errors):
    """The controller's pid, from its first line ``READY pid``."""
    line = stdout.readline()
    if not line.startswith("READY "):
        raise AssertionError(f"controller did not start: {line!r} {errors.read_text()}")
    return int(line.split()[1])


def test_sigkill_at_random_moments_loses_no_acknowledged_eval(tmp_path):
    rng = random.Random(1234)
    log_dir, errors = tmp_path / "log", tmp_path / "stderr.txt"
    log_dir.mkdir()
    acked = {}
    during_snapshot = 0
    with open(errors, "w") as err:
        server = subprocess.Popen(
            [sys.executable, SCRIPT, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=ENV,
        )
    pid = None
    try:
        for kill in range(KILLS):
            server.stdin.write(f"{log_dir} {10**9}\n")
            server.stdin.flush()
            pid = _wait_ready(server.stdout, errors)
            if kill % 2:  # at a random moment: mostly during journal writes
                time.sleep(rng.uniform(0.0, 0.4))
            else:  # as soon as a snapshot is being written (or after a while)
                deadline = time.monotonic() + rng.uniform(0.2, 1.0)
                while time.monotonic() < deadline and not _snapshot_in_flight(log_dir):
                    time.sleep(0.0002)
            _kill(pid)
            lines, code = _lines_until_exit(server.stdout)
            pid = None
            _acks(lines, acked)
            assert code == -signal.SIGKILL, errors.read_text()
            during_snapshot += _snapshot_in_flight(log_dir)
    finally:
        if pid is not None:  # a failed check: end the controller the server started
            _kill(pid)
        server.stdin.close()
        server.wait(timeout=30)
    # the last run in a fresh interpreter, as a controller is started after a crash
    proc = subprocess.run(
        [sys.executable, SCRIPT, str(log_dir), str(GOAL)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("READY ") and proc.stdout.rstrip().endswith("DONE")
    _acks(proc.stdout.splitlines(), acked)

    state = storage.read_state(log_dir)
    history = state.history
    missing = [ref for ref in acked if history.get_checkpoint(*ref) is None]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged evals lost: {missing[:5]}"
    wrong = [ref for ref, v in acked.items() if history.get_checkpoint(*ref).value != v]
    assert not wrong, wrong[:5]
    assert state.mutator_state.num_exploits >= GOAL
    assert len(acked) > KILLS
    print(f"{KILLS} kills, {during_snapshot} while a snapshot was being written")
    assert during_snapshot >= 1
