"""Running a population beyond one process.

:mod:`jaxpop.distributed.ray` (extra ``jaxpop[ray]``) serves a ``PopulationController``
as a restartable Ray actor, gives every process of the cluster a client with the
controller's synchronous API, and runs workers as restartable Ray actors::

    from jaxpop.distributed import ray as jaxpop_ray

    initial = [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-2}, {"lr": 3e-2}]  # one per worker
    client = jaxpop_ray.serve(initial, mutator, log_dir="/shared/run", name="pbt")
    results = jaxpop_ray.run_workers(train, 4, args=(client,))

(An in-process controller that already exists is served with
:func:`jaxpop.distributed.courier.start_courier_server`.)

Nothing is imported here, so ``import jaxpop.distributed`` works without Ray installed.
"""

__all__: list[str] = []
