"""A controller with 4 worker threads on a log_dir, printing each acknowledged eval.

Run by tests/test_crash.py, which SIGKILLs it at random moments and restarts it.
Usage: python crash_run.py LOG_DIR GOAL_EXPLOITS
Prints ``READY`` once the controller is up, ``ACK gen step value`` after each
``set_eval`` returned, and ``DONE`` when the population made GOAL_EXPLOITS exploits.
"""

import sys
import threading
import time

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


def main() -> None:
    log_dir, goal = sys.argv[1], int(sys.argv[2])
    pop = PopulationController(
        [{"h": 1.0 + i} for i in range(4)],
        WinnerTakeAllGenetic(mutate, steps_per_exploit=10),
        log_dir,
        seed=0,
        compact_after=8,
    )
    say("READY")
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
            if pop.state.mutator_state["num_exploits"] >= goal:
                done.set()
            time.sleep(0.002)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pop.close()
    say("DONE")


if __name__ == "__main__":
    main()
