"""The seed's `sparse_init`, transcribed from `shared/seed/sparse_init_seed.txt`.

Kept verbatim in its algorithm (only the jaxtyping annotations dropped) as the
reference that `method="permutation"` must reproduce.
"""

import jax
import jax.numpy as jnp
import jax.random as jr


def seed_sparse_init(key, shape, sparsity=0.9, init_type="uniform"):
  fan_out, fan_in = shape
  num_zeros = int(sparsity * fan_in + 0.5)  # round to nearest int

  # Split key for init and sparsity mask
  init_key, mask_key = jr.split(key)

  # LeCun-scale initialization
  scale = 1.0 / fan_in**0.5
  if init_type == "uniform":
    weights = jr.uniform(init_key, shape, dtype=jnp.float32, minval=-scale,
                         maxval=scale)
  elif init_type == "normal":
    weights = jr.normal(init_key, shape, dtype=jnp.float32) * scale
  else:
    raise ValueError(f"init_type must be 'uniform' or 'normal', got '{init_type}'")

  # Create sparsity mask: for each output neuron, zero out num_zeros inputs
  row_keys = jr.split(mask_key, fan_out)

  def make_row_mask(row_key):
    perm = jr.permutation(row_key, fan_in)
    mask = (perm >= num_zeros).astype(jnp.float32)
    return mask

  masks = jax.vmap(make_row_mask)(row_keys)  # (fan_out, fan_in)
  return weights * masks
