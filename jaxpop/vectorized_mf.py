"""MF-PBT on the vectorized population: sub-populations are slices of the member axis.

:func:`mf_pbt_round` is one round of Multiple-Frequencies PBT (Doulazmi et al. 2025,
arXiv 2506.03225) as a pure, jittable function of a
:class:`jaxpop.vectorized.VectorizedPopulation`: :func:`jaxpop.mutators.mf_pbt.plan`
decides on device, :func:`jaxpop.vectorized.exploit_explore` copies and explores, and
the :class:`~jaxpop.vectorized.Exploit` it returns goes to
:func:`jaxpop.vectorized.record` for the host lineage, as for PBT rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpop import vectorized
from jaxpop.mutators import explore as explore_lib
from jaxpop.mutators import mf_pbt
from jaxpop.mutators import selection as selection_lib

__all__ = ["mf_pbt_round"]


def mf_pbt_round(
    pop: vectorized.VectorizedPopulation,
    scores: jax.Array,
    round_index: Any,
    key: jax.Array | None = None,
    *,
    frequencies: Sequence[int] = (1, 10, 25, 50),
    space: Any,
    mode: selection_lib.Mode = "min",
    perturbation_factors: Sequence[float] = (0.8, 1.25),
    resample_probability: float = 0.0,
    optimizer_hparams: vectorized.OptimizerHparams | None = None,
    is_key: Callable[[Any, jax.Array], bool] | None = None,
) -> tuple[vectorized.VectorizedPopulation, vectorized.Exploit]:
    """One MF-PBT round after ``round_index`` rounds of ``t_ready`` steps (from 1).

    Members ``[k * n, (k + 1) * n)`` are sub-population ``k``, which evolves when
    ``round_index % frequencies[k] == 0`` (:func:`jaxpop.mutators.mf_pbt.evolving`);
    :func:`jaxpop.mutators.mf_pbt.plan` says who copies whose weights and
    hyperparameters. Pure and jittable (``frequencies``, ``mode`` and the explore options
    static; ``round_index`` may be traced), so one compiled step serves every round.

    Args:
      pop: the population; its size a multiple of ``len(frequencies)``, at least 4
        members per sub-population.
      scores: ``(N,)``, the members' evaluations (better per ``mode``; non-finite rank
        last and are never copied). Stored as ``pop.scores``.
      round_index: the round just completed, counting from 1.
      key: a PRNG key; ``None``: split ``pop.key``.
      frequencies: each sub-population's evolution period in rounds, strictly
        increasing (the paper's ``delta_k``; default theirs).
      space: the explore space of the hyperparameters.
      mode: ``"min"`` or ``"max"``.
      perturbation_factors, resample_probability: the explore step for the bottom
        bracket's copies (migrants are not explored); defaults the paper's.
      optimizer_hparams, is_key: as for :func:`jaxpop.vectorized.exploit_explore`.

    Returns:
      ``(population, exploit)`` as :func:`jaxpop.vectorized.exploit_explore` returns them.
    """
    frequencies = mf_pbt.check_frequencies(frequencies)
    vectorized.check_space_given(space, pop, "mf_pbt_round")
    if np.shape(scores) != (pop.size,):
        raise ValueError(
            f"mf_pbt_round needs one score per member, shape ({pop.size},); got {np.shape(scores)}"
        )
    mf_pbt.check_layout(pop.size, frequencies)
    ranks = selection_lib.canonical_scores(selection_lib.device_scores(scores), mode)
    decided = mf_pbt.plan(
        ranks,
        mf_pbt.evolving(round_index, frequencies),
        num_sub_populations=len(frequencies),
    )

    def select(key: jax.Array, scores: jax.Array) -> jax.Array:
        del key, scores
        return decided.parents

    def explore(key: jax.Array, space: Any, inherited: Any) -> Any:
        explored = explore_lib.explore(
            key,
            space,
            inherited,
            resample_probability=resample_probability,
            perturbation_factors=tuple(perturbation_factors),
        )
        # a migrant's hyperparameters as they are, inside the space (as every copy)
        migrated = explore_lib.clip(
            space,
            {name: jnp.take(pop.hparams[name], decided.hparams_from, axis=0) for name in inherited},
        )
        return {
            name: jnp.where(
                decided.explore,
                explored[name],
                jnp.asarray(migrated[name], jnp.result_type(explored[name])),
            )
            for name in inherited
        }  # (in the explored dtype: exploit_explore refuses to truncate floats into ints)

    return vectorized.exploit_explore(
        pop,
        scores,
        key,
        space=space,
        selection=select,
        explore=explore,
        optimizer_hparams=optimizer_hparams,
        is_key=is_key,
    )
