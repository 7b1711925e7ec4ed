"""What the benchmark scripts share: the best-of-N timer, worker threads that fail
loudly, the environment record, the file system a figure was measured on and the
parsing of comma separated sizes.

Each script imports it as ``common`` (``python benchmarks/<name>.py`` puts this folder
first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Calls ``fn`` once untimed (compilation, warm-up), then ``repeats`` times; returns
    the fastest call's seconds (the least disturbed on a shared machine)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def in_threads(fn: Callable[..., Any], n: int, *args: Any) -> tuple[list[Any], float]:
    """Runs ``fn(i, *args)`` for ``i`` in ``range(n)``, each in its own thread (named
    ``worker-i``); returns their results and the seconds until the last one ended.

    Raises the first worker's exception, if any, once all have ended: a figure is never
    computed from workers that died.
    """
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n

    def target(i: int) -> None:
        try:
            results[i] = fn(i, *args)
        except BaseException as error:
            errors[i] = error

    threads = [threading.Thread(target=target, args=(i,), name=f"worker-{i}") for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for i, error in enumerate(errors):
        if error is not None:
            raise RuntimeError(f"worker {i} of {n} failed") from error
    return results, seconds


def environment(*modules: ModuleType) -> dict[str, Any]:
    """Where a figure was measured: Python, the machine, JAX's backend and devices, and
    the ``__version__`` of jaxpop, jax and each module given."""
    import jax

    import jaxpop

    versions = {m.__name__.split(".")[0]: getattr(m, "__version__", "unknown") for m in modules}
    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs",
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "versions": {"jaxpop": jaxpop.__version__, "jax": jax.__version__, **versions},
    }


def filesystem_of(path: str) -> str:
    """The device and type of the file system that holds ``path`` (Linux), for the record
    of a figure that depends on its disk."""
    path, best = os.path.realpath(path), ("", "unknown", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, kind = line.split()[:3]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[0]):
                    best = (mount, kind, device)
    except OSError:
        return path
    return f"{path} ({best[1]} on {best[2]})" if best[2] else path


def positive_int(text: str) -> int:
    """An argparse ``type``: a positive int (``0``, a negative or a non-int is a usage
    error naming the flag, not a traceback or an empty result later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value


def int_list(
    parser: argparse.ArgumentParser, flag: str, text: str, allow_empty: bool = False
) -> list[int]:
    """``"1000,100"`` -> ``[100, 1000]``: sorted, without repeats, all positive (else
    ``parser.error`` names ``flag``)."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        parser.error(f"{flag} must be comma separated ints, got {text!r}")
    if (not values and not allow_empty) or (values and values[0] <= 0):
        parser.error(f"{flag} must be positive")
    return values
