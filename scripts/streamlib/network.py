"""The stream-x Q-network for MinAtar, in Haiku, with `alberta.SparseInit`.

Conv(16, 3x3, VALID) -> LayerNorm -> LeakyReLU -> flatten -> Linear(128)
-> LayerNorm -> LeakyReLU -> Linear(actions). The LayerNorms normalize each
sample's whole activation tensor and have no learned scale or offset. Every
kernel is drawn by `alberta.SparseInit(sparsity, rounding="ceil")` (the paper's
rounding), biases are zero. `sparsity=0` is the same LeCun-uniform draw with
no zeros: the paper's dense ablation, differing only in the initializer's
sparsity.
"""

import haiku as hk
import jax
import jax.numpy as jnp

import alberta

HIDDEN = 128
CHANNELS = 16


def q_network(num_actions: int, sparsity: float) -> hk.Transformed:
  """`init(key, obs)` / `apply(params, None, obs)` of one `(H, W, C)` input."""

  def forward(obs: jax.Array) -> jax.Array:
    w_init = alberta.SparseInit(sparsity, rounding="ceil")
    layer_norm = lambda axis: hk.LayerNorm(
        axis=axis, create_scale=False, create_offset=False
    )
    x = obs.astype(jnp.float32)[None]
    x = hk.Conv2D(
        CHANNELS, 3, padding="VALID", w_init=w_init, b_init=jnp.zeros
    )(x)
    x = jax.nn.leaky_relu(layer_norm((1, 2, 3))(x))
    x = hk.Flatten()(x)
    x = hk.Linear(HIDDEN, w_init=w_init, b_init=jnp.zeros)(x)
    x = jax.nn.leaky_relu(layer_norm(-1)(x))
    return hk.Linear(num_actions, w_init=w_init, b_init=jnp.zeros)(x)[0]

  return hk.without_apply_rng(hk.transform(forward))
