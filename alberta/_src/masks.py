"""`sparse_mask`: the keep-mask of `sparse_init`, without its values.

A third output layout of the driver (`MASK`, beside the dense matrix and the
ELL arrays): each tile is its method's `Method.tile_mask`, the mask its
`tile_bits` returns for the same coordinates, computed from the mask's own
words only. So the mask is a pure function of the key and the global
coordinates like the matrix, the same on every path (whole, chunked,
sharded), and equal to the matrix's zero set.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding

from alberta._src import bits
from alberta._src import blocks
from alberta._src import contracts
from alberta._src import driver
from alberta._src import keys
from alberta._src.methods import METHODS
from alberta._src.spec import SparseSpec

Array = jax.Array
_U32 = jnp.uint32
# The mask takes no init_type; the spec's is unused (no values are drawn).
_NO_VALUES = "uniform"


def _block(
    key: Array,
    spec: SparseSpec,
    row_start: Array | int,
    n_rows: int,
    col_start: Array | int,
    n_cols: int,
    dtype: Any,
) -> Array:
  del dtype  # Always bool.
  bits.check_partitionable()
  rows = lax.add(
      lax.convert_element_type(row_start, _U32), lax.iota(_U32, n_rows)
  )
  return METHODS[spec.method].tile_mask(
      keys.key_words(key), spec, rows, col_start, n_cols
  )


def _empty(spec: SparseSpec, n_rows: int, n_cols: int, dtype: Any) -> Array:
  del spec, dtype
  return jnp.zeros((n_rows, n_cols), bool)


def _out_bytes_per_row(spec: SparseSpec, n_cols: int, dtype: Any) -> int:
  del spec, dtype
  return n_cols


# The keep-mask, `[n_rows, n_cols]` bool: `True` where the matrix keeps a
# weight. Chunked as the dense matrix is: the method's temporaries, which
# count the value bits too, are an upper bound on the mask's.
MASK = dataclasses.replace(
    blocks.DENSE,
    block=_block,
    empty=_empty,
    out_bytes_per_row=_out_bytes_per_row,
)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _mask_2d(key: Array, spec: SparseSpec, chunk_rows: int | None) -> Array:
  return driver.generate(
      MASK,
      key,
      spec,
      0,
      spec.fan_out,
      0,
      spec.fan_in,
      np.dtype(bool),
      chunk_rows,
  )


def sparse_mask(
    key: Array,
    shape: Sequence[int],
    sparsity: float = 0.9,
    *,
    method: str = "permutation",
    rounding: str = "nearest",
    chunk_rows: int | None = None,
    sharding: NamedSharding | None = None,
) -> Array:
  """The boolean keep-mask of `sparse_init` (`True` = kept), without values.

  `sparse_mask(key, shape, sparsity, method=m, rounding=r)` is `False`
  exactly where `sparse_init(key, shape, sparsity, init_type, method=m,
  rounding=r)` zeroes a weight, for either `init_type` and any dtype, on every
  path: whole, chunked, sharded. (With the reference's method a kept uniform
  weight can itself be exactly 0.0, with probability 2**-23 each, as in the
  reference; the
  mask says "kept" there.) Every output unit has exactly
  `num_zeros(fan_in, sparsity, rounding)` `False` entries. Only the mask's
  random bits are drawn, not the weights': it costs the mask alone, and needs
  one byte per entry.

  Examples:
    >>> key = jax.random.key(0)
    >>> mask = alberta.sparse_mask(key, (256, 128), 0.9)
    >>> w = alberta.sparse_init(key, (256, 128), 0.9)
    >>> bool(((w != 0) == mask).all())
    True
    >>> np.unique(mask.sum(axis=1)).tolist()   # 128 - num_zeros(128, 0.9) kept
    [13]

  Args:
    key: a threefry PRNG key, `jax.random.key(...)` or
      `jax.random.PRNGKey(...)`.
    shape: `(fan_out, fan_in)`, or `(fan_out, *rest)` with fan-in `prod(rest)`
      as in `sparse_init`; with `sharding`, `(fan_out, fan_in)`.
    sparsity: fraction of each output unit's inputs that are zero, in [0, 1].
    method: "permutation" (the reference's) or "counter", as in
      `sparse_init`.
    rounding: the zero-count rule, "nearest" (the reference) or "ceil" (the
      paper).
    chunk_rows: rows generated per step, as in `sparse_init`; the result does
      not depend on it.
    sharding: a `NamedSharding` (a `PartitionSpec` of at most two entries):
      the mask as a global array laid out so, each device computing only its
      own tile, as `sharded_sparse_init` does the matrix. None: one array on
      the default device.

  Returns:
    A bool array of `shape` (with `sharding`, laid out as `sharding`).

  Warns:
    UserWarning: once per call when `k == fan_in`: every entry is `False`.
  """
  name = "sparse_mask"
  spec, shape, _, chunk_rows = driver.prepare(
      name,
      key,
      shape,
      sparsity,
      _NO_VALUES,
      method,
      rounding,
      jnp.float32,
      chunk_rows,
      two_d=sharding is not None,
  )
  if sharding is not None:
    driver.tile_layout(shape, sharding)
    mask = driver.sharded(MASK, key, spec, np.dtype(bool), sharding, chunk_rows)
  elif spec.fan_out == 0 or spec.fan_in == 0:
    mask = jnp.zeros(shape, bool)
  else:
    mask = _mask_2d(key, spec, chunk_rows).reshape(shape)
  return contracts.returns(mask, shape, bool)
