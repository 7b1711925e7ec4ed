"""A controller with 4 worker threads on a log_dir, printing each acknowledged eval.

Run by tests/test_crash.py, which SIGKILLs it at random moments and restarts it.
Usage: python crash_run.py LOG_DIR GOAL_EXPLOITS
Prints ``READY pid`` once the controller is up, ``ACK gen step value`` after each
``set_eval`` returned, and ``DONE`` when the population made GOAL_EXPLOITS exploits.

``python crash_run.py --serve`` imports jaxpop once and then, for each ``LOG_DIR GOAL``
line on stdin, forks a fresh process that runs the above (its lines on the same stdout)
and prints ``EXIT code`` when that process ended (``-9``: SIGKILLed). Importing JAX is
most of a fresh interpreter's start; forking before any JAX computation (no JAX thread
exists yet) skips it, so the test can kill and restart the controller many times.
"""

import os
import sys
import threading
import time
import traceback

import numpy as np

from jaxpop import PopulationController
from jaxpop.mutators import WinnerTakeAllGenetic

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def mutate(meta, key):
    return {"h": meta["h"] + 0.2 * float(np.random.default_rng(key).normal())}


def run(log_dir: str, goal: int) -> None:
    pop = PopulationController(
        [{"h": 1.0 + i} for i in range(4)],
        WinnerTakeAllGenetic(mutate, steps_per_exploit=10),
        log_dir,
        seed=0,
        compact_after=8,
    )
    say(f"READY {os.getpid()}")
    done = threading.Event()

    def worker(i: int) -> None:
        gen, step, meta = None, 0, None
        while not done.is_set():
            data = pop.maybe_get_worker_data(i, gen, step, f"w{i}-{step}", meta)
            if data is not None:
                gen, step, meta = data.generation_id, data.step, data.meta_params
            step += 5
            value = (meta["h"] - 0.3) ** 2
            pop.set_eval(i, gen, step, f"params-{gen}-{step}", value)
            say(f"ACK {gen} {step} {value!r}")
            if pop.state.mutator_state.num_exploits >= goal:
                done.set()
            time.sleep(0.002)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pop.close()
    say("DONE")


def serve() -> None:
    for line in sys.stdin:
        log_dir, goal = line.split()
        pid = os.fork()
        if pid == 0:  # the child: one controller process, never back in this loop
            code = 0
            try:
                run(log_dir, int(goal))
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        say(f"\nEXIT {code}")  # on a line of its own, even after a line cut by the kill


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        run(sys.argv[1], int(sys.argv[2]))
