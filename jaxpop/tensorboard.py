"""An optional TensorBoard hook: each worker's evaluations and hyperparameters as scalars.

One :class:`TensorBoardWriter` per worker writes into ``<log_dir>/worker-<id>``, so
TensorBoard shows one run per worker. Each :meth:`TensorBoardWriter.log_eval` writes the
evaluation value (tag ``eval/value``), any extra metrics (``eval/<name>``) and every
numeric hyperparameter, flattened with dotted keys (``hparams/<name>``, see
:func:`jaxpop.report.flatten_hparams`), at the worker's step::

    from jaxpop.tensorboard import TensorBoardWriter

    with TensorBoardWriter("runs/pbt/tensorboard", worker_id) as tb:
        ...
        population.set_eval(worker_id, gen_id, step, handle, loss)
        tb.log_eval(step, loss, meta_params, {"accuracy": acc})

Writers come from ``tensorboardX`` when it is installed (a light dependency), else from
``flax.metrics.tensorboard`` when TensorFlow is installed; otherwise creating one raises
an ``ImportError`` that names ``pip install tensorboardX``. Nothing here is imported by
the rest of jaxpop, so neither is needed to train.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any, Literal

from jaxpop.report import numeric_hparams

__all__ = ["Backend", "TensorBoardWriter", "available_backend", "writers"]

Backend = Literal["auto", "tensorboardX", "flax"]

_INSTALL_HINT = (
    "jaxpop's TensorBoard hook needs a TensorBoard writer: pip install tensorboardX "
    "(or install tensorflow to use flax.metrics.tensorboard)"
)


class _TensorBoardXWriter:
    def __init__(self, path: str):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=path)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _FlaxWriter:
    def __init__(self, path: str):
        from flax.metrics.tensorboard import SummaryWriter

        self._writer = SummaryWriter(path, auto_flush=False)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.scalar(tag, value, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _importable(backend: str) -> bool:
    try:
        if backend == "tensorboardX":
            import tensorboardX  # noqa: F401
        else:
            import flax.metrics.tensorboard  # noqa: F401  (imports tensorflow)
    except ImportError:
        return False
    return True


def available_backend(backend: Backend = "auto") -> str:
    """The writer library to use: ``"tensorboardX"`` or ``"flax"``.

    ``"auto"`` prefers tensorboardX, then flax (which needs TensorFlow).

    Raises:
      ImportError: the requested library (or, for ``"auto"``, either) is missing; the
        message names ``pip install tensorboardX``.
      ValueError: ``backend`` is not one of ``"auto"``, ``"tensorboardX"``, ``"flax"``.
    """
    if backend not in ("auto", "tensorboardX", "flax"):
        raise ValueError(f'backend must be "auto", "tensorboardX" or "flax", got {backend!r}')
    candidates = ("tensorboardX", "flax") if backend == "auto" else (backend,)
    for candidate in candidates:
        if _importable(candidate):
            return candidate
    raise ImportError(_INSTALL_HINT)


class TensorBoardWriter:
    """Writes one worker's evaluations and numeric hyperparameters as TensorBoard scalars.

    Args:
      log_dir: the TensorBoard directory of the whole population (created if missing).
      worker_id: this worker's id; events go to ``<log_dir>/worker-<worker_id>``.
      backend: ``"auto"`` (tensorboardX, else flax with TensorFlow), ``"tensorboardX"``
        or ``"flax"``; see :func:`available_backend`.

    Thread-safe; use one per worker and :meth:`close` it (or use it as a context
    manager) when the worker is done.
    """

    def __init__(self, log_dir: str | os.PathLike, worker_id: int, *, backend: Backend = "auto"):
        if isinstance(worker_id, bool) or not isinstance(worker_id, int) or worker_id < 0:
            raise ValueError(f"worker_id must be a non-negative int, got {worker_id!r}")
        self.backend = available_backend(backend)
        self.worker_id = worker_id
        self.path = os.path.join(os.fspath(log_dir), f"worker-{worker_id}")
        os.makedirs(self.path, exist_ok=True)
        factory = _TensorBoardXWriter if self.backend == "tensorboardX" else _FlaxWriter
        self._writer = factory(self.path)
        self._lock = threading.Lock()
        self._closed = False

    def log_eval(
        self,
        step: int,
        value: float,
        meta_params: Any = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Writes ``eval/value``, ``eval/<name>`` per metric and ``hparams/<name>`` per
        numeric hyperparameter of ``meta_params``, all at ``step``."""
        scalars = {"eval/value": float(value)}
        for name, metric in (metrics or {}).items():
            scalars[f"eval/{name}"] = float(metric)
        if meta_params is not None:
            scalars.update((f"hparams/{k}", v) for k, v in numeric_hparams(meta_params).items())
        self._write(step, scalars)

    def log_hparams(self, step: int, meta_params: Any) -> None:
        """Writes ``hparams/<name>`` per numeric hyperparameter, at ``step`` (for
        example when the worker switches to a new generation)."""
        self._write(step, {f"hparams/{k}": v for k, v in numeric_hparams(meta_params).items()})

    def _write(self, step: int, scalars: Mapping[str, float]) -> None:
        step = int(step)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"this TensorBoardWriter ({self.path}) is closed")
            for tag, value in scalars.items():
                self._writer.scalar(tag, value, step)  # NaN and inf as they are

    def flush(self) -> None:
        """Makes everything written so far visible to TensorBoard."""
        with self._lock:
            if not self._closed:
                self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def writers(
    log_dir: str | os.PathLike, num_workers: int, *, backend: Backend = "auto"
) -> list[TensorBoardWriter]:
    """One :class:`TensorBoardWriter` per worker id in ``range(num_workers)``."""
    return [TensorBoardWriter(log_dir, i, backend=backend) for i in range(num_workers)]
