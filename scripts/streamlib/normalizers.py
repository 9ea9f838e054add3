"""Running observation normalization and reward scaling, one sample at a time.

Welford's algorithm keeps a running mean and the sum of squared deviations
`p`; the variance is the unbiased `p / (n - 1)` (1 before the second sample).
Observations are normalized elementwise with the statistics *including* the
current one. Rewards are divided by the running standard deviation of a
discounted return trace `u <- gamma * (1 - done) * u + r`, without centering
(Elsayed, Vasan & Mahmood 2024, Algorithms 5 and 6).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

EPSILON = 1e-8


class RunningStats(NamedTuple):
  """Welford's running statistics of a stream of arrays of one shape."""

  mean: jax.Array
  p: jax.Array  # Sum of squared deviations from the running mean.
  count: jax.Array  # Samples seen (float32: exact up to 2**24).


def init_stats(shape=()) -> RunningStats:
  """Statistics of no sample yet, for arrays of `shape`."""
  return RunningStats(
      jnp.zeros(shape, jnp.float32),
      jnp.zeros(shape, jnp.float32),
      jnp.zeros((), jnp.float32),
  )


def update_stats(stats: RunningStats, x: jax.Array) -> RunningStats:
  """The statistics with one more sample `x`."""
  count = stats.count + 1.0
  mean = stats.mean + (x - stats.mean) / count
  p = stats.p + (x - stats.mean) * (x - mean)
  return RunningStats(mean, p, count)


def variance(stats: RunningStats) -> jax.Array:
  """The unbiased sample variance; 1 while fewer than two samples are seen."""
  return jnp.where(
      stats.count < 2.0,
      jnp.ones_like(stats.p),
      stats.p / jnp.maximum(stats.count - 1.0, 1.0),
  )


def normalize_observation(
    stats: RunningStats, obs: jax.Array
) -> tuple[jax.Array, RunningStats]:
  """Adds `obs` to the statistics, then standardizes it with them."""
  stats = update_stats(stats, obs)
  return (obs - stats.mean) / jnp.sqrt(variance(stats) + EPSILON), stats


class RewardScaler(NamedTuple):
  """The discounted return trace and its running statistics."""

  stats: RunningStats
  trace: jax.Array


def init_reward_scaler() -> RewardScaler:
  """A scaler with a zero return trace and no sample yet."""
  return RewardScaler(init_stats(), jnp.zeros((), jnp.float32))


def scale_reward(
    scaler: RewardScaler, reward: jax.Array, done: jax.Array, gamma: float
) -> tuple[jax.Array, RewardScaler]:
  """Divides `reward` by the running standard deviation of the return trace."""
  trace = scaler.trace * gamma * (1.0 - done) + reward
  stats = update_stats(scaler.stats, trace)
  return reward / jnp.sqrt(variance(stats) + EPSILON), RewardScaler(
      stats, trace
  )
