"""What every benchmark script shares: the best-of-N timer and the environment record.

Each script imports it as ``common`` (``python benchmarks/<name>.py`` puts this folder
first on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
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
