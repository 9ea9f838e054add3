"""The seed's mask: a `jax.random.permutation` per output unit.

Reproduces `alberta_framework`'s `sparse_init` tile by tile. The seed draws

    init_key, mask_key = split(key)
    weights = uniform(init_key, (fan_out, fan_in)) or normal(...)
    row_keys = split(mask_key, fan_out)
    mask[r] = permutation(row_keys[r], fan_in) >= k

Under the partitionable threefry, `split(mask_key, fan_out)[r]` is the Threefry
hash of counter `r`, and the weight bits of element `(r, c)` are the hash of
counter `r * fan_in + c`, so a block of rows needs only its own row keys and
bits. Each row's permutation is the seed's own `jax.random.permutation` call
(a sort per row); that sort is what the counter method avoids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from alberta._src import bits
from alberta._src.spec import SparseSpec

Array = jax.Array


def row_keys(mask_key: tuple[Array, Array], rows: Array) -> tuple[Array, Array]:
  """`jax.random.split(mask_key, fan_out)[rows]`, as key words."""
  return bits.threefry(mask_key, jnp.zeros_like(rows), rows)


def mask_block(mask_key: tuple[Array, Array], spec: SparseSpec, rows: Array,
               col_start: Array | int, n_cols: int) -> Array:
  """Boolean keep-mask of `rows` x columns `[col_start, col_start + n_cols)`."""
  k1, k2 = row_keys(mask_key, rows)

  def one_row(w1, w2):
    key = jax.random.wrap_key_data(jnp.stack([w1, w2]), impl="threefry2x32")
    return jax.random.permutation(key, spec.fan_in)

  perm = jax.vmap(one_row)(k1, k2)
  if n_cols != spec.fan_in:
    perm = lax.dynamic_slice_in_dim(perm, col_start, n_cols, axis=1)
  return perm >= spec.k


def value_bits(init_key: tuple[Array, Array], spec: SparseSpec, rows: Array,
               cols: Array) -> Array:
  """The seed's 32 weight bits of elements `rows[:, None]` x `cols[None, :]`."""
  return bits.element_bits(init_key, rows[:, None], cols[None, :], spec.fan_in)
