"""Parameter store throughput: MB/s of saving and restoring a ~10M-parameter CNN pytree.

The pytree is the parameters of a small CNN, float32: four 3x3 convolutions (3 -> 64 ->
128 -> 256 -> 512 channels) and two dense layers (4096 -> 2048 -> 10), with biases:
9,962,122 parameters, 39.8 MB in 12 arrays, as ``jax.Array``\\ s on the default device.

Timed, each ``--repeats`` times after one untimed warm-up, every save into a fresh
checkpoint of one :class:`jaxpop.checkpointing.ParamStore` on ``--tmpdir``:

* ``sync``: ``ParamStore(async_save=False).save`` -- returns once the checkpoint is
  finalized (written and atomically renamed into place);
* ``sync_fsync``: the same with ``durability="fsync"`` (every file and folder of the
  checkpoint flushed to disk before ``save`` returns), timed alternating with ``sync``;
* ``async``: ``ParamStore(async_save=True).save`` then ``wait()``; ``blocked`` is what
  ``save`` itself took (the caller's training step waits only for that: the host copy of
  the arrays), ``total`` is until ``wait()`` returned (durable);
* ``async_burst``: ``--burst`` async saves issued back to back, then ``wait()``; the
  sustained rate when saves queue up (``blocked`` is per save);
* ``restore``: ``ParamStore.restore(handle, jax.eval_shape(...))`` into jax arrays;
* ``orbax_*``: the same tree with plain ``ocp.StandardCheckpointer`` (``save`` +
  ``wait_until_finished``, ``restore`` with the abstract tree), for reference.

Figures are medians over the repeats (``min`` also in the JSON); MB/s = 1e6 bytes of
array data per second. Usage (from the repo root)::

    python benchmarks/param_store.py [--repeats 5] [--burst 4] [--tmpdir DIR]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxpop.checkpointing import ParamStore

_CONVS = [(3, 64), (64, 128), (128, 256), (256, 512)]
_DENSE = [(4096, 2048), (2048, 10)]


def make_params(seed: int = 0) -> dict:
    """The CNN's parameters: ``conv{i}`` and ``dense{i}``, each a kernel and a bias."""
    key = jax.random.PRNGKey(seed)
    params = {}
    shapes = [(f"conv{i}", (3, 3, cin, cout)) for i, (cin, cout) in enumerate(_CONVS)]
    shapes += [(f"dense{i}", (din, dout)) for i, (din, dout) in enumerate(_DENSE)]
    for name, shape in shapes:
        key, sub = jax.random.split(key)
        params[name] = {
            "kernel": jax.random.normal(sub, shape, jnp.float32) * 0.01,
            "bias": jnp.zeros((shape[-1],), jnp.float32),
        }
    return jax.block_until_ready(params)


def _stats(times: list[float], nbytes: int) -> dict:
    median = statistics.median(times)
    return {
        "median_s": round(median, 5),
        "min_s": round(min(times), 5),
        "mb_per_s": round(nbytes / 1e6 / median, 1),
    }


def run(repeats: int, burst: int, tmpdir: str) -> dict:
    params = make_params()
    abstract = jax.eval_shape(lambda: params)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
    num_params = sum(x.size for x in jax.tree.leaves(params))
    root = tempfile.mkdtemp(prefix="param_store_bench_", dir=tmpdir)
    results: dict = {}
    try:
        sync_store = ParamStore(os.path.join(root, "sync"), async_save=False)
        fsync_store = ParamStore(os.path.join(root, "fsync"), async_save=False, durability="fsync")
        async_store = ParamStore(os.path.join(root, "async"), max_pending=max(burst, 1))
        handle = sync_store.save("warmup", 0, params)
        jax.block_until_ready(sync_store.restore(handle, abstract))

        fsync_store.save("warmup", 0, params)
        times: dict[str, list[float]] = {"sync": [], "sync_fsync": []}
        for i in range(repeats):  # (alternating: the disk's state drifts)
            for name, store in (("sync", sync_store), ("sync_fsync", fsync_store)):
                start = time.perf_counter()
                store.save(name, i, params)
                times[name].append(time.perf_counter() - start)
        results["sync"] = _stats(times["sync"], nbytes)
        results["sync_fsync"] = _stats(times["sync_fsync"], nbytes)
        fsync_store.close()

        blocked, totals = [], []
        for i in range(repeats):
            start = time.perf_counter()
            handle = async_store.save("async", i, params)
            blocked.append(time.perf_counter() - start)
            async_store.wait()
            totals.append(time.perf_counter() - start)
        results["async"] = {
            **_stats(totals, nbytes),
            "blocked_median_ms": round(1e3 * statistics.median(blocked), 2),
            "blocked_max_ms": round(1e3 * max(blocked), 2),
        }

        blocked, totals = [], []
        for i in range(repeats):
            start = time.perf_counter()
            for j in range(burst):
                t = time.perf_counter()
                async_store.save("burst", i * burst + j, params)
                blocked.append(time.perf_counter() - t)
            async_store.wait()
            totals.append(time.perf_counter() - start)
        results["async_burst"] = {
            **_stats(totals, nbytes * burst),
            "saves": burst,
            "blocked_median_ms": round(1e3 * statistics.median(blocked), 2),
            "blocked_max_ms": round(1e3 * max(blocked), 2),
        }

        restores = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(async_store.restore(handle, abstract))
            restores.append(time.perf_counter() - start)
        results["restore"] = _stats(restores, nbytes)
        restored = async_store.restore(handle, abstract)
        exact = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True)
        )
        sync_store.close()
        async_store.close()

        checkpointer = ocp.StandardCheckpointer()
        blocked, totals = [], []
        for i in range(repeats + 1):
            path = os.path.join(root, "orbax", str(i))
            start = time.perf_counter()
            checkpointer.save(path, params)
            saved = time.perf_counter()
            checkpointer.wait_until_finished()
            if i:  # the first is the warm-up
                blocked.append(saved - start)
                totals.append(time.perf_counter() - start)
        results["orbax_save"] = {
            **_stats(totals, nbytes),
            "blocked_median_ms": round(1e3 * statistics.median(blocked), 2),
            "blocked_max_ms": round(1e3 * max(blocked), 2),
        }
        restores = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(checkpointer.restore(path, abstract))
            restores.append(time.perf_counter() - start)
        results["orbax_restore"] = _stats(restores, nbytes)
        checkpointer.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "param_store",
        "params": num_params,
        "mb": round(nbytes / 1e6, 2),
        "arrays": len(jax.tree.leaves(params)),
        "repeats": repeats,
        "burst": burst,
        "exact_round_trip": exact,
        "results": results,
        # jaxpop's store against plain Orbax on the same tree, in the same run (medians)
        "ratios": {
            "sync_save_over_orbax_save": _ratio(results["sync"], results["orbax_save"]),
            "restore_over_orbax_restore": _ratio(results["restore"], results["orbax_restore"]),
        },
        **common.environment(ocp),
    }


def _ratio(ours: dict, orbax: dict) -> float:
    return round(ours["median_s"] / orbax["median_s"], 2)


def print_table(result: dict) -> None:
    print()
    print(
        f"param store: {result['params']:,} float32 parameters ({result['mb']} MB, "
        f"{result['arrays']} arrays), median of {result['repeats']} repeats, "
        f"backend {result['backend']}, {result['machine']}"
    )
    header = f"{'operation':<14}{'total ms':>10}{'MB/s':>9}{'blocked ms':>12}{'blocked max':>13}"
    print(header)
    print("-" * len(header))
    for name, fig in result["results"].items():
        blocked = fig.get("blocked_median_ms")
        blocked_max = fig.get("blocked_max_ms")
        blocked = "" if blocked is None else f"{blocked:.2f}"
        blocked_max = "" if blocked_max is None else f"{blocked_max:.2f}"
        print(
            f"{name:<14}{1e3 * fig['median_s']:>10.1f}{fig['mb_per_s']:>9.1f}"
            f"{blocked:>12}{blocked_max:>13}"
        )
    print()
    print(
        "total: until the checkpoint is finalized (saves) or the arrays are on the device "
        "(restores);\nblocked: what the caller's save() call took (for async saves, the "
        f"host copy only); async_burst: {result['burst']} saves back to back, total for all."
        f"\nexact round trip: {result['exact_round_trip']}"
    )
    ratios = result["ratios"]
    print(
        f"against plain Orbax (median time over its median): sync save "
        f"{ratios['sync_save_over_orbax_save']:.2f}x, restore "
        f"{ratios['restore_over_orbax_restore']:.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=common.positive_int, default=5)
    parser.add_argument("--burst", type=common.positive_int, default=4)
    parser.add_argument("--tmpdir", default=None, help="where to write (default: system tmp)")
    args = parser.parse_args(argv)
    result = run(args.repeats, args.burst, args.tmpdir)
    print(json.dumps(result, separators=(",", ":")))
    print_table(result)


if __name__ == "__main__":
    main()
