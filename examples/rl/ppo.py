"""PPO for one agent on a gymnax environment, as pure functions of arrays.

One agent's training state is a dict ``{"params", "opt_state", "env_state", "obs",
"episode_return", "key"}``; :meth:`Agent.train_step` runs one PPO update on it (a
rollout of ``num_steps`` steps in ``num_envs`` environments, GAE, then
``update_epochs`` passes of clipped-surrogate minibatch updates), all under ``jit``
with ``lax.scan``. Hyperparameters arrive as arrays: the learning rate lives in the
``optax.inject_hyperparams`` optimizer state, and the entropy coefficient, clip range
and GAE lambda are the ``hparams`` the loss reads, so a population changes them without
recompiling. ``jaxpop.vectorized`` vmaps these functions over the members.

The state's ``"key"`` is a raw ``uint32[2]`` PRNG key under the name ``"key"``, which
:func:`jaxpop.vectorized.is_key_leaf` recognises: a member that copies another gets a
fresh key, so it does not replay its parent's actions and environment noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpop.hparams import make_optimizer
from jaxpop.mutators import explore

__all__ = ["CONFIGS", "ActorCritic", "Agent", "EnvConfig", "gae"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """How PPO is set up for one environment.

    Attributes:
      env: the gymnax environment id.
      defaults: the fixed default hyperparameters (``--fixed``), by name.
      space: the explore space PBT samples and perturbs the hyperparameters in.
      num_envs: parallel environments per agent.
      num_steps: rollout length per update (an update sees ``num_envs * num_steps``
        environment steps).
      num_minibatches: minibatches per epoch.
      update_epochs: passes over each rollout.
      gamma: discount.
      reward_scale: rewards are multiplied by it for learning (returns are reported
        unscaled).
      vf_coef: value-loss coefficient.
      max_grad_norm: global gradient-norm clip.
      hidden: width of the two hidden layers of the actor and of the critic.
      total_steps: default environment steps per agent.
      interval: default environment steps per agent between PBT rounds.
    """

    env: str
    defaults: Mapping[str, float]
    space: Mapping[str, Any]
    num_envs: int = 16
    num_steps: int = 32
    num_minibatches: int = 4
    update_epochs: int = 4
    gamma: float = 0.99
    reward_scale: float = 1.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    total_steps: int = 102_400
    interval: int = 10_240

    @property
    def steps_per_update(self) -> int:
        """Environment steps one PPO update collects, per agent."""
        return self.num_envs * self.num_steps


#: The environments the example knows, by gymnax id.
CONFIGS: dict[str, EnvConfig] = {
    "CartPole-v1": EnvConfig(
        env="CartPole-v1",
        # the usual PPO defaults for CartPole (constant learning rate)
        defaults={"learning_rate": 2.5e-4, "ent_coef": 0.01, "clip_eps": 0.2, "gae_lambda": 0.95},
        space={
            "learning_rate": explore.log_uniform(1e-4, 3e-3),
            "ent_coef": explore.log_uniform(1e-4, 0.05),
            "clip_eps": explore.uniform(0.1, 0.4),
            "gae_lambda": explore.uniform(0.8, 0.99),
        },
    ),
    "Pendulum-v1": EnvConfig(
        env="Pendulum-v1",
        defaults={"learning_rate": 3e-4, "ent_coef": 1e-4, "clip_eps": 0.2, "gae_lambda": 0.95},
        space={
            "learning_rate": explore.log_uniform(1e-4, 3e-3),
            "ent_coef": explore.log_uniform(1e-5, 1e-2),
            "clip_eps": explore.uniform(0.1, 0.4),
            "gae_lambda": explore.uniform(0.8, 0.99),
        },
        gamma=0.95,
        reward_scale=0.1,
        total_steps=512_000,
        interval=20_480,
    ),
}


class ActorCritic(nn.Module):
    """Separate tanh MLPs for the policy and the value.

    Returns ``(policy, value)``: ``policy`` is the action logits (discrete) or the
    Gaussian mean (continuous); a continuous policy's log standard deviation is the
    state-independent parameter ``log_std``.
    """

    action_dim: int
    continuous: bool = False
    hidden: int = 64

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        def mlp(x: jax.Array, out: int, scale: float) -> jax.Array:
            for _ in range(2):
                x = nn.Dense(self.hidden, kernel_init=nn.initializers.orthogonal(math.sqrt(2)))(x)
                x = jnp.tanh(x)
            return nn.Dense(out, kernel_init=nn.initializers.orthogonal(scale))(x)

        policy = mlp(obs, self.action_dim, 0.01)
        value = mlp(obs, 1, 1.0)[..., 0]
        if self.continuous:  # created here so that init makes it
            self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return policy, value


def _ppo_optimizer(learning_rate: float, max_grad_norm: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate, eps=1e-5)
    )


def gae(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    last_value: jax.Array,
    gamma: float,
    lam: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimates and value targets of a ``(time, env)`` rollout.

    ``rewards[t]`` already holds any bootstrap for a truncated episode;
    ``dones[t]`` ends the episode after step ``t`` (the next value is then not used).

    Returns:
      ``(advantages, targets)``, both shaped like ``rewards``; ``targets = advantages +
      values``.
    """
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    live = 1.0 - dones
    deltas = rewards + gamma * next_values * live - values

    def back(carry: jax.Array, x: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, alive = x
        advantage = delta + gamma * lam * alive * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(back, jnp.zeros_like(last_value), (deltas, live), reverse=True)
    return advantages, advantages + values


class Agent:
    """PPO on one gymnax environment: the single-agent functions a population vmaps.

    Args:
      config: the environment's :class:`EnvConfig`.
    """

    def __init__(self, config: EnvConfig):
        self.config = config
        self.env, self.env_params = gymnax.make(config.env)
        space = self.env.action_space(self.env_params)
        self.continuous = not hasattr(space, "n")
        if self.continuous:
            self.action_dim = int(np.prod(space.shape))
            self.action_low = float(np.min(space.low))
            self.action_high = float(np.max(space.high))
        else:
            self.action_dim = int(space.n)
        self.obs_shape = tuple(self.env.observation_space(self.env_params).shape)
        self.net = ActorCritic(self.action_dim, self.continuous, config.hidden)
        self.tx = make_optimizer(
            _ppo_optimizer,
            {"learning_rate": config.defaults["learning_rate"]},
            max_grad_norm=config.max_grad_norm,
        )

    @property
    def episode_length(self) -> int:
        """The environment's time limit."""
        return int(self.env_params.max_steps_in_episode)

    # -- the policy -------------------------------------------------------------------
    def _init_params(self, key: jax.Array) -> Any:
        return self.net.init(key, jnp.zeros(self.obs_shape, jnp.float32))

    def _noise(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """The noise :meth:`_sample` turns into actions, for ``shape`` draws."""
        if self.continuous:
            return jax.random.normal(key, (*shape, self.action_dim))
        return jax.random.gumbel(key, (*shape, self.action_dim))

    def _sample(self, params: Any, policy: jax.Array, noise: jax.Array) -> jax.Array:
        """A Gaussian action, or a categorical one by the Gumbel-max trick."""
        if self.continuous:
            return policy + jnp.exp(params["params"]["log_std"]) * noise
        return jnp.argmax(policy + noise, axis=-1)

    def _log_prob_entropy(
        self, params: Any, policy: jax.Array, action: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        if self.continuous:
            log_std = params["params"]["log_std"]
            z = (action - policy) * jnp.exp(-log_std)
            log_prob = jnp.sum(-0.5 * z**2 - log_std - 0.5 * _LOG_2PI, axis=-1)
            entropy = jnp.sum(log_std + 0.5 * (1.0 + _LOG_2PI)) * jnp.ones(policy.shape[:-1])
            return log_prob, entropy
        log_p = jax.nn.log_softmax(policy)
        log_prob = jnp.take_along_axis(log_p, action[..., None].astype(jnp.int32), -1)[..., 0]
        entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
        return log_prob, entropy

    def _greedy(self, policy: jax.Array) -> jax.Array:
        return policy if self.continuous else jnp.argmax(policy, axis=-1)

    def _env_action(self, action: jax.Array) -> jax.Array:
        if self.continuous:
            return jnp.clip(action, self.action_low, self.action_high)
        return action

    # -- one agent's state ---------------------------------------------------------------
    def init(self, key: jax.Array) -> dict[str, Any]:
        """A fresh agent: network, optimizer state, ``num_envs`` reset environments, key."""
        param_key, env_key, key = jax.random.split(key, 3)
        params = self._init_params(param_key)
        reset = jax.vmap(self.env.reset, in_axes=(0, None))
        obs, env_state = reset(jax.random.split(env_key, self.config.num_envs), self.env_params)
        return {
            "params": params,
            "opt_state": self.tx.init(params),
            "env_state": env_state,
            "obs": obs,
            "episode_return": jnp.zeros(self.config.num_envs, jnp.float32),
            "key": key,
        }

    def rollout(self, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        """``num_steps`` steps of the agent's policy in its environments.

        Returns ``(state, trajectory)``: the state with the environments, observations,
        running episode returns and key advanced; the trajectory's arrays are shaped
        ``(num_steps, num_envs, ...)``: ``obs``, ``action``, ``log_prob``, ``value``,
        ``reward`` (raw), ``terminated``, ``truncated``, ``final_obs`` (the observation
        a step reached, before any automatic reset), ``completed`` (the return of the
        episode that ended at the step, else 0).
        """
        cfg = self.config
        params = state["params"]
        step_envs = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))
        # all the rollout's random draws at once (cheaper to compile than one per step)
        key, noise_key, env_key = jax.random.split(state["key"], 3)
        noise = self._noise(noise_key, (cfg.num_steps, cfg.num_envs))
        env_keys = jax.random.split(env_key, cfg.num_steps * cfg.num_envs)
        env_keys = env_keys.reshape((cfg.num_steps, cfg.num_envs, *env_keys.shape[1:]))

        def one(carry: tuple, draws: tuple) -> tuple[tuple, dict[str, jax.Array]]:
            env_state, obs, episode_return = carry
            noise, env_keys = draws
            policy, value = self.net.apply(params, obs)
            action = self._sample(params, policy, noise)
            log_prob, _ = self._log_prob_entropy(params, policy, action)
            next_obs, env_state, reward, terminated, truncated, info = step_envs(
                env_keys, env_state, self._env_action(action), self.env_params
            )
            reward = reward.astype(jnp.float32)
            done = jnp.logical_or(terminated, truncated)
            episode_return = episode_return + reward
            completed = jnp.where(done, episode_return, 0.0)
            step = {
                "obs": obs,
                "action": action,
                "log_prob": log_prob,
                "value": value,
                "reward": reward,
                "terminated": terminated.astype(jnp.float32),
                "truncated": truncated.astype(jnp.float32),
                "final_obs": info["final_observation"],
                "completed": completed,
            }
            episode_return = jnp.where(done, 0.0, episode_return)
            return (env_state, next_obs, episode_return), step

        carry = (state["env_state"], state["obs"], state["episode_return"])
        (env_state, obs, episode_return), trajectory = jax.lax.scan(one, carry, (noise, env_keys))
        state = {**state, "env_state": env_state, "obs": obs, "episode_return": episode_return}
        return {**state, "key": key}, trajectory

    def _loss(
        self, params: Any, batch: dict[str, jax.Array], hparams: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        policy, value = self.net.apply(params, batch["obs"])
        log_prob, entropy = self._log_prob_entropy(params, policy, batch["action"])
        ratio = jnp.exp(log_prob - batch["log_prob"])
        advantage = batch["advantage"]
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        eps = hparams["clip_eps"]
        surrogate = jnp.minimum(ratio * advantage, jnp.clip(ratio, 1 - eps, 1 + eps) * advantage)
        policy_loss = -surrogate.mean()
        value_loss = 0.5 * jnp.mean((value - batch["target"]) ** 2)
        entropy = entropy.mean()
        loss = policy_loss + self.config.vf_coef * value_loss - hparams["ent_coef"] * entropy
        return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}

    def train_step(
        self, state: dict[str, Any], batch: Any, hparams: Mapping[str, jax.Array]
    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        """One PPO update: rollout, GAE, ``update_epochs`` passes of minibatch updates.

        ``batch`` is unused (the agent collects its own data); ``hparams`` holds
        ``ent_coef``, ``clip_eps`` and ``gae_lambda`` (the learning rate is read from the
        optimizer state). Metrics: ``return_sum`` and ``episodes`` of the episodes that
        ended during the rollout, and the last minibatch's losses and entropy.
        """
        del batch
        cfg = self.config
        state, traj = self.rollout(state)
        params = state["params"]
        # a truncated (not terminated) episode is bootstrapped from the state it reached
        _, final_value = self.net.apply(params, traj["final_obs"])
        cut = traj["truncated"] * (1.0 - traj["terminated"])
        rewards = traj["reward"] * cfg.reward_scale + cfg.gamma * final_value * cut
        dones = jnp.maximum(traj["terminated"], traj["truncated"])
        _, last_value = self.net.apply(params, state["obs"])
        advantage, target = gae(
            rewards, traj["value"], dones, last_value, cfg.gamma, hparams["gae_lambda"]
        )
        data = {
            "obs": traj["obs"],
            "action": traj["action"],
            "log_prob": traj["log_prob"],
            "advantage": advantage,
            "target": target,
        }
        size = cfg.num_steps * cfg.num_envs
        data = jax.tree.map(lambda x: x.reshape((size, *x.shape[2:])), data)
        key, epoch_key = jax.random.split(state["key"])
        orders = jax.vmap(lambda k: jax.random.permutation(k, size))(
            jax.random.split(epoch_key, cfg.update_epochs)
        )
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)

        def minibatch(carry: tuple, batch: dict[str, jax.Array]) -> tuple[tuple, dict]:
            params, opt_state = carry
            (_, aux), grads = grad_fn(params, batch, hparams)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), aux

        def epoch(carry: tuple, order: jax.Array) -> tuple[tuple, dict]:
            shuffled = jax.tree.map(
                lambda x: x[order].reshape((cfg.num_minibatches, -1, *x.shape[1:])), data
            )
            return jax.lax.scan(minibatch, carry, shuffled)

        (params, opt_state), aux = jax.lax.scan(epoch, (params, state["opt_state"]), orders)
        state = {**state, "params": params, "opt_state": opt_state, "key": key}
        ended = jnp.maximum(traj["terminated"], traj["truncated"])
        metrics = {
            "return_sum": jnp.sum(traj["completed"]),
            "episodes": jnp.sum(ended),
            **jax.tree.map(lambda x: x[-1, -1], aux),
        }
        return state, metrics

    def evaluate(self, params: Any, key: jax.Array, num_episodes: int) -> jax.Array:
        """Mean return of ``num_episodes`` episodes of the greedy policy (mean action).

        Each episode runs from its own reset to the time limit, without automatic
        resets; steps after it terminated do not count.
        """
        reset = jax.vmap(self.env.reset, in_axes=(0, None))
        obs, env_state = reset(jax.random.split(key, num_episodes), self.env_params)
        # step_env: the transition only (no reset); the classic-control ones draw nothing
        step_envs = jax.vmap(self.env.step_env, in_axes=(None, 0, 0, None))

        def one(carry: tuple, _: None) -> tuple[tuple, None]:
            env_state, obs, total, alive = carry
            policy, _ = self.net.apply(params, obs)
            action = self._env_action(self._greedy(policy))
            obs, env_state, reward, terminated, _ = step_envs(
                key, env_state, action, self.env_params
            )
            total = total + alive * reward
            alive = alive * (1.0 - terminated)
            return (env_state, obs, total, alive), None

        start = (env_state, obs, jnp.zeros(num_episodes), jnp.ones(num_episodes))
        (_, _, total, _), _ = jax.lax.scan(one, start, None, length=self.episode_length)
        return total.mean()
