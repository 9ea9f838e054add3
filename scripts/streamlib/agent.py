"""Stream Q(lambda) on one gymnax environment, as a pure step for `lax.scan`.

Elsayed, Vasan & Mahmood (2024), Algorithm 7 (Stream Q(lambda)): epsilon-greedy
behaviour with epsilon falling linearly from `eps_start` to `eps_end` over the
first `exploration_fraction` of the steps, the Q-learning TD error on scaled
rewards and normalized observations, one ObGD step per environment step, and
the trace zeroed at episode ends and after exploratory actions (a random action
that differs from the greedy one).

The environment is stepped without gymnax's auto-reset so the normalizer sees
the terminal observation and then the reset one, as a wrapped Gym environment
would; an episode ends on termination or truncation, and neither bootstraps.
"""

from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from scripts.streamlib import normalizers
from scripts.streamlib import obgd


class AgentConfig(NamedTuple):
  """Stream Q(lambda)'s hyperparameters (the paper's values are defaults)."""

  total_steps: int
  optimizer: obgd.ObGDConfig = obgd.ObGDConfig()
  eps_start: float = 1.0
  eps_end: float = 0.01
  exploration_fraction: float = 0.2


class AgentState(NamedTuple):
  """Everything one seed's run carries from step to step."""

  params: Any
  trace: Any
  obs_stats: normalizers.RunningStats
  reward_scaler: normalizers.RewardScaler
  env_state: Any
  obs: jax.Array  # The current observation, normalized.
  key: jax.Array
  t: jax.Array  # Steps taken so far (int32).
  episode_return: jax.Array  # Raw (unscaled) return of the episode so far.


def epsilon(t: jax.Array, config: AgentConfig) -> jax.Array:
  """Epsilon at step `t` (1-based), linear then constant."""
  duration = config.exploration_fraction * config.total_steps
  slope = (config.eps_end - config.eps_start) / duration
  return jnp.maximum(config.eps_start + slope * t, config.eps_end)


def init(
    key: jax.Array, env, env_params, network: hk.Transformed
) -> AgentState:
  """Initial parameters, a zero trace, fresh statistics, a reset environment."""
  key, init_key, reset_key = jax.random.split(key, 3)
  raw_obs, env_state = env.reset_env(reset_key, env_params)
  raw_obs = raw_obs.astype(jnp.float32)
  params = network.init(init_key, raw_obs)
  obs, obs_stats = normalizers.normalize_observation(
      normalizers.init_stats(raw_obs.shape), raw_obs
  )
  return AgentState(
      params,
      obgd.init_trace(params),
      obs_stats,
      normalizers.init_reward_scaler(),
      env_state,
      obs,
      key,
      jnp.zeros((), jnp.int32),
      jnp.zeros((), jnp.float32),
  )


def step(
    state: AgentState,
    env,
    env_params,
    network: hk.Transformed,
    config: AgentConfig,
) -> tuple[AgentState, jax.Array]:
  """One environment step and one learning update.

  Returns:
    The new state and the episode's raw return if the episode ended at this
    step, NaN otherwise.
  """
  key, explore_key, action_key, step_key, reset_key = jax.random.split(
      state.key, 5
  )
  t = state.t + 1
  num_actions = env.num_actions
  q_values = network.apply(state.params, state.obs)
  greedy = jnp.argmax(q_values)
  random_action = jax.random.randint(action_key, (), 0, num_actions)
  explore = jax.random.uniform(explore_key) < epsilon(t, config)
  action = jnp.where(explore, random_action, greedy)
  nongreedy = explore & (random_action != greedy)

  raw_next, env_next, reward, terminated, _ = env.step_env(
      step_key, state.env_state, action, env_params
  )
  done = jnp.logical_or(terminated, env.is_truncated(env_next, env_params))
  reward = reward.astype(jnp.float32)
  done_f = done.astype(jnp.float32)
  next_obs, obs_stats = normalizers.normalize_observation(
      state.obs_stats, raw_next.astype(jnp.float32)
  )
  scaled_reward, reward_scaler = normalizers.scale_reward(
      state.reward_scaler, reward, done_f, config.optimizer.gamma
  )

  q_sa, grad = jax.value_and_grad(
      lambda p: network.apply(p, state.obs)[action]
  )(state.params)
  q_next = jnp.max(network.apply(state.params, next_obs))
  delta = (
      scaled_reward + config.optimizer.gamma * (1.0 - done_f) * q_next - q_sa
  )
  params, trace, _ = obgd.update(
      state.params, state.trace, grad, delta, done | nongreedy, config.optimizer
  )

  # At an episode's end: reset, and normalize (and count) the reset
  # observation as well.
  raw_reset, env_reset = env.reset_env(reset_key, env_params)
  reset_obs, reset_stats = normalizers.normalize_observation(
      obs_stats, raw_reset.astype(jnp.float32)
  )
  pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(done, x, y), a, b)
  episode_return = state.episode_return + reward
  new_state = AgentState(
      params=params,
      trace=trace,
      obs_stats=pick(reset_stats, obs_stats),
      reward_scaler=reward_scaler,
      env_state=pick(env_reset, env_next),
      obs=jnp.where(done, reset_obs, next_obs),
      key=key,
      t=t,
      episode_return=jnp.where(done, 0.0, episode_return),
  )
  return new_state, jnp.where(done, episode_return, jnp.nan)


def random_policy_step(carry, env, env_params):
  """One step of a uniform random policy: `(env_state, key, return)` carry."""
  env_state, key, episode_return = carry
  key, action_key, step_key = jax.random.split(key, 3)
  action = jax.random.randint(action_key, (), 0, env.num_actions)
  # gymnax 1.0's step: (obs, state, reward, terminated, truncated, info).
  _, env_state, reward, terminated, truncated, _ = env.step(
      step_key, env_state, action, env_params
  )
  done = jnp.logical_or(terminated, truncated)
  episode_return = episode_return + reward.astype(jnp.float32)
  ended = jnp.where(done, episode_return, jnp.nan)
  return (env_state, key, jnp.where(done, 0.0, episode_return)), ended
