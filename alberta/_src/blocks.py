"""The block generator: any tile of the matrix from its global coordinates.

Every dense entry point (whole matrix, chunked, sharded, pmap) calls
`row_block`; a tile depends only on the key and its global row and column
range, so results are bit-identical whatever the tiling.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alberta._src import bits
from alberta._src import driver
from alberta._src import keys
from alberta._src.methods import METHODS
from alberta._src.spec import SparseSpec

Array = jax.Array
_U32 = jnp.uint32


# Jitted even when called on its own: op-by-op, `bits_to_uniform`'s multiply-add
# is rounded twice, while under jit (as inside `jax.random.uniform`) XLA fuses
# it into one FMA, so an eager tile would differ from the reference by an ulp.
@functools.partial(jax.jit, static_argnames=("spec", "n_rows", "n_cols"))
def row_block(
    key: Array,
    spec: SparseSpec,
    row_start: Array | int,
    n_rows: int,
    col_start: Array | int = 0,
    n_cols: int | None = None,
) -> Array:
  """Rows `[row_start, +n_rows)` x columns `[col_start, +n_cols)`, float32.

  Args:
    key: the matrix's PRNG key (typed or raw threefry key).
    spec: the matrix.
    row_start: first global row; may be traced.
    n_rows: number of rows (static).
    col_start: first global column; may be traced.
    n_cols: number of columns (static); default all `fan_in`.

  Returns:
    The float32 tile, equal to the same slice of the whole matrix.
  """
  bits.check_partitionable()
  n_cols = spec.fan_in if n_cols is None else n_cols
  rows = lax.add(
      lax.convert_element_type(row_start, _U32), lax.iota(_U32, n_rows)
  )
  method = METHODS[spec.method]
  keep, value_bits = method.tile_bits(
      keys.key_words(key), spec, rows, col_start, n_cols
  )
  values = method.values(spec, value_bits)
  # The reference multiplies by a 0/1 mask, so a masked negative weight is
  # -0.0.
  # Under jit XLA rewrites that multiply into a select (+0.0); spell it out.
  sign = lax.bitwise_and(
      lax.bitcast_convert_type(values, _U32), np.uint32(0x80000000)
  )
  return lax.select(keep, values, lax.bitcast_convert_type(sign, jnp.float32))


def _block(
    key: Array,
    spec: SparseSpec,
    row_start: Array | int,
    n_rows: int,
    col_start: Array | int,
    n_cols: int,
    dtype: Any,
) -> Array:
  return bits.cast_nonzero(
      row_block(key, spec, row_start, n_rows, col_start, n_cols), dtype
  )


def _empty(spec: SparseSpec, n_rows: int, n_cols: int, dtype: Any) -> Array:
  del spec
  return jnp.zeros((n_rows, n_cols), dtype)


def _out_bytes_per_row(spec: SparseSpec, n_cols: int, dtype: Any) -> int:
  del spec
  return n_cols * jnp.dtype(dtype).itemsize


def _temp_bytes_per_row(spec: SparseSpec) -> int:
  return METHODS[spec.method].temp_bytes_per_row(spec)


def _temp_fraction(spec: SparseSpec) -> float:
  return METHODS[spec.method].temp_fraction


# The dense matrix: `row_block`'s tiles cast to the output dtype; a chunk's
# temporaries are its method's.
DENSE = driver.Layout(
    block=_block,
    empty=_empty,
    out_bytes_per_row=_out_bytes_per_row,
    temp_bytes_per_row=_temp_bytes_per_row,
    temp_fraction=_temp_fraction,
)


def default_chunk_rows(
    spec: SparseSpec, n_rows: int, n_cols: int, dtype: jnp.dtype
) -> int:
  """The default chunk of a dense `[n_rows, n_cols]` tile."""
  return driver.default_chunk_rows(DENSE, spec, n_rows, n_cols, dtype)


def host_loop_chunk_rows(
    spec: SparseSpec, n_rows: int, n_cols: int, dtype: jnp.dtype
) -> int:
  """The default chunk of `generate_host_loop`.

  Where a chunk is a finished tile before it is copied into the output
  (`Method.separate_tile`), the tile's bytes count against the budget with
  its temporaries.
  """
  return driver.default_chunk_rows(
      DENSE,
      spec,
      n_rows,
      n_cols,
      dtype,
      chunk_is_temporary=METHODS[spec.method].separate_tile,
  )


@functools.lru_cache(maxsize=64)
def _chunk_program(
    spec: SparseSpec, n_cols: int, dtype: jnp.dtype, chunk_rows: int
):
  """The jitted step of `generate_host_loop`.

  `(out, chunk, key, row, col, start) -> (out, chunk)`. Writes the chunk of
  global rows `[row, +chunk_rows)` at `start` of the donated `out`. Without
  `Method.separate_tile` the generation is fused into the in-place update and
  `chunk` is None. With it, the chunk is generated into `chunk` (donated,
  `[chunk_rows, n_cols]`) by a fusion of its own, which XLA:CPU spreads over
  the cores, and then copied into `out` by the same program: one chunk is
  alive at a time, its buffer reused, and each step waits for the previous
  one through its donated arguments, not on the host.
  """

  def tile(key, row, col):
    return generate(key, spec, row, chunk_rows, col, n_cols, dtype, chunk_rows)

  if not METHODS[spec.method].separate_tile:
    return jax.jit(
        lambda out, chunk, key, row, col, start: (
            _write(out, tile(key, row, col), start),
            chunk,
        ),
        donate_argnums=0,
    )

  def step(out, chunk, key, row, col, start):
    del chunk  # Its buffer holds the new chunk (donated, kept).
    new = tile(key, row, col)
    return _write(out, new, start), new

  return jax.jit(step, donate_argnums=(0, 1), keep_unused=True)


def _write(out: Array, tile: Array, start: Array) -> Array:
  """`out` with `tile` written at row `start`."""
  return lax.dynamic_update_slice_in_dim(out, tile, start, axis=0)


def generate_host_loop(
    key: Array,
    spec: SparseSpec,
    row_start: int,
    n_rows: int,
    col_start: int,
    n_cols: int,
    dtype: jnp.dtype,
    chunk_rows: int | None = None,
) -> Array:
  """`generate` for a concrete key at top level, as a host loop of programs.

  Same tile, bit for bit: a tile is a pure function of its coordinates, so
  chunks at any starts (`driver.chunk_starts`) assemble the same matrix. Each
  chunk is written into the output buffer in place (the buffer is donated) by
  its own jitted program (`_chunk_program`), which XLA:CPU spreads over every
  core, where the in-graph `fori_loop` of `generate` runs its body on one
  thread. Memory is the output plus one chunk's temporaries (and the chunk
  itself where it is generated apart; `host_loop_chunk_rows` counts both).

  Args:
    key: the matrix's PRNG key, concrete (not traced).
    spec: the matrix.
    row_start: the tile's first global row (an int).
    n_rows: the tile's number of rows.
    col_start: the tile's first global column (an int).
    n_cols: the tile's number of columns.
    dtype: the output dtype.
    chunk_rows: rows per chunk; None: `host_loop_chunk_rows`.

  Returns:
    The `[n_rows, n_cols]` tile, equal to `generate`'s.
  """
  if n_rows == 0 or n_cols == 0:
    return jnp.zeros((n_rows, n_cols), dtype)
  if chunk_rows is None:
    chunk_rows = host_loop_chunk_rows(spec, n_rows, n_cols, dtype)
  chunk_rows = min(chunk_rows, n_rows)
  step = _chunk_program(spec, n_cols, jnp.dtype(dtype), chunk_rows)
  out = jnp.zeros((n_rows, n_cols), dtype)
  col = np.uint32(col_start)
  # The chunk's own buffer, where it is generated apart: donated to each step,
  # which generates the next chunk into it.
  chunk = (
      jnp.zeros((chunk_rows, n_cols), dtype)
      if METHODS[spec.method].separate_tile
      else None
  )
  for start in driver.chunk_starts(n_rows, chunk_rows):
    out, chunk = step(
        out, chunk, key, np.uint32(row_start + start), col, np.uint32(start)
    )
  return out


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _matrix_in_one_program(
    key: Array, spec: SparseSpec, dtype: jnp.dtype, chunk_rows: int | None
) -> Array:
  return generate(key, spec, 0, spec.fan_out, 0, spec.fan_in, dtype, chunk_rows)


def generate_matrix(
    key: Array, spec: SparseSpec, dtype: jnp.dtype, chunk_rows: int | None
) -> Array:
  """The whole `spec.shape` matrix on one device: the chunk policy.

  One program whose chunks (if any) are a loop in the graph, unless the
  matrix is chunked and the key is concrete (outside any trace): then a host
  loop of programs (`generate_host_loop`), each of which XLA:CPU spreads over
  every core, where an in-graph loop runs its body on one thread. Under a
  trace (`jit`, `vmap`) the chunks stay in the caller's graph.

  Args:
    key: the matrix's PRNG key, concrete or traced.
    spec: the matrix.
    dtype: the output dtype.
    chunk_rows: rows per chunk; None: `default_chunk_rows` (in the graph) or
      `host_loop_chunk_rows` (a host loop).

  Returns:
    The `spec.shape` matrix in `dtype`.
  """
  decided = (
      chunk_rows
      if chunk_rows is not None
      else default_chunk_rows(spec, spec.fan_out, spec.fan_in, dtype)
  )
  if decided < spec.fan_out and driver.at_top_level(key):
    return generate_host_loop(
        key, spec, 0, spec.fan_out, 0, spec.fan_in, dtype, chunk_rows
    )
  return _matrix_in_one_program(key, spec, dtype, chunk_rows)


def generate(
    key: Array,
    spec: SparseSpec,
    row_start: Array | int,
    n_rows: int,
    col_start: Array | int,
    n_cols: int,
    dtype: jnp.dtype,
    chunk_rows: int | None = None,
) -> Array:
  """A `[n_rows, n_cols]` tile in `dtype`, built `chunk_rows` rows at a time."""
  return driver.generate(
      DENSE, key, spec, row_start, n_rows, col_start, n_cols, dtype, chunk_rows
  )
