"""Running a population beyond one process.

:mod:`jaxpop.distributed.ray` (extra ``jaxpop[ray]``) serves a ``PopulationController``
as a restartable Ray actor, gives every process of the cluster a client with the
controller's synchronous API, and runs workers as restartable Ray actors::

    from jaxpop.distributed import ray as jaxpop_ray

    client = jaxpop_ray.serve(population, mutator, log_dir="/shared/run", name="pbt")
    results = jaxpop_ray.run_workers(train, 4, args=(client,))

Nothing is imported here, so ``import jaxpop.distributed`` works without Ray installed.
"""

__all__: list[str] = []
