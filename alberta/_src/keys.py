"""The PRNG key: its check, its two uint32 words, the reference's key split.

Every entry point takes a threefry2x32 key, typed (`jax.random.key`) or raw
(`jax.random.PRNGKey`, uint32[2]); both read as the same two words, so they
give the same matrix. The permutation method splits the key's words as
`jax.random.split` does, as the reference code splits the key (`split2`); the
counter method hashes under the key's own words.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alberta._src import bits

Array = jax.Array

_U32 = jnp.uint32


def check_key(key: Any) -> None:
  """Raises unless `key` is a threefry2x32 PRNG key (typed or raw uint32[2])."""
  dtype = getattr(key, "dtype", None)
  shape = getattr(key, "shape", None)
  if dtype is None or shape is None:
    raise TypeError(
        "key must be a JAX PRNG key (jax.random.key or jax.random.PRNGKey), "
        f"got {key!r} of type {type(key).__name__}."
    )
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    impl = str(jax.random.key_impl(key))
    if shape != ():
      raise ValueError(
          "key must be a single PRNG key of shape (), got a key array of shape"
          f" {shape}; use jax.vmap to map over several keys."
      )
    if "threefry2x32" not in impl:
      raise ValueError(
          f"key must use the threefry2x32 PRNG implementation, got {impl!r}."
      )
    return
  if dtype != np.uint32 or tuple(shape) != (2,):
    raise TypeError(
        "key must be a JAX PRNG key (jax.random.key or jax.random.PRNGKey),"
        f" got an array of dtype {dtype} and shape {tuple(shape)}."
    )
  default_impl = str(jax.config.jax_default_prng_impl)
  if "threefry" not in default_impl:
    raise ValueError(
        "a raw uint32[2] key is read with the default PRNG implementation, "
        f"which is {default_impl!r}; alberta needs threefry2x32."
    )


def key_array(key: Array) -> Array:
  """The key as a uint32[2] array, which any jit or pmap can take replicated."""
  if isinstance(key, jax.core.Tracer):
    return (
        jax.random.key_data(key)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        else key
    )
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key, np.uint32)


def key_words(key: Array) -> tuple[Array, Array]:
  """The two uint32 words of a threefry key, typed or raw."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  key = lax.convert_element_type(key, _U32)
  return (
      lax.index_in_dim(key, 0, keepdims=False),
      lax.index_in_dim(key, 1, keepdims=False),
  )


def split2(k: tuple[Array, Array]):
  """`jax.random.split(key)` as key words: `(first, second)`."""
  # Unrolled: a loop-lowered Threefry costs a few tenths of a second to compile.
  # Materialized: each of the two keys feeds its own fusions, and XLA would
  # copy the hash into every one of them. `[2, 2]`: hash input (the Threefry
  # counter 0 or 1), then word.
  b1, b2 = bits.threefry_fused(k, np.uint32(0), lax.iota(_U32, 2))
  words = bits.materialized(
      lax.concatenate([b1.reshape(2, 1), b2.reshape(2, 1)], 1)
  ).reshape(4)
  w = [lax.index_in_dim(words, i, keepdims=False) for i in range(4)]
  return (w[0], w[1]), (w[2], w[3])
