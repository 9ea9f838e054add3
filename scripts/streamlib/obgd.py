"""ObGD: gradient steps along an eligibility trace, bounded not to overshoot.

Elsayed, Vasan & Mahmood (2024), Algorithm 3. With `z` the accumulating trace
of the gradient of the prediction (here `q(s, a)`) and `delta` the TD error,

    z     <- gamma * lambda * z + grad q(s, a)
    M     =  kappa * lr * max(|delta|, 1) * ||z||_1
    alpha =  lr / M   if M > 1   else   lr
    w     <- w + alpha * delta * z

so one update never moves `q(s, a)`, to first order, by more than
`|delta| / kappa` (when `|delta| >= 1`). The trace is zeroed after the step
when `reset` is true (an episode end or an exploratory action, as Watkins's
Q(lambda) requires).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = Any


class ObGDConfig(NamedTuple):
  """ObGD's hyperparameters (the paper's values are the defaults)."""

  lr: float = 1.0
  gamma: float = 0.99
  lamda: float = 0.8
  kappa: float = 2.0


def init_trace(params: Params) -> Params:
  """A zero eligibility trace shaped like `params`."""
  return jax.tree.map(jnp.zeros_like, params)


def effective_step_size(
    trace: Params, delta: jax.Array, config: ObGDConfig
) -> jax.Array:
  """ObGD's step size `alpha` for the trace, already decayed and accumulated."""
  z_l1 = sum(jnp.sum(jnp.abs(z)) for z in jax.tree.leaves(trace))
  bound = config.kappa * config.lr * jnp.maximum(jnp.abs(delta), 1.0) * z_l1
  return jnp.where(bound > 1.0, config.lr / bound, config.lr)


def update(
    params: Params,
    trace: Params,
    grad: Params,
    delta: jax.Array,
    reset: jax.Array,
    config: ObGDConfig,
) -> tuple[Params, Params, jax.Array]:
  """One ObGD step.

  Args:
    params: the network's parameters.
    trace: the eligibility trace before this step.
    grad: the gradient of the prediction `q(s, a)` with respect to `params`.
    delta: the TD error (a scalar).
    reset: whether to zero the trace after the step (a boolean scalar).
    config: the hyperparameters.

  Returns:
    `(params, trace, alpha)`: the new parameters, the new trace (zero if
    `reset`), and the step size used.
  """
  decay = config.gamma * config.lamda
  trace = jax.tree.map(lambda z, g: decay * z + g, trace, grad)
  alpha = effective_step_size(trace, delta, config)
  params = jax.tree.map(lambda w, z: w + alpha * delta * z, params, trace)
  trace = jax.tree.map(lambda z: jnp.where(reset, jnp.zeros_like(z), z), trace)
  return params, trace, alpha
