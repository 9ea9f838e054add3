"""The block generator: any tile of the matrix from its global coordinates.

Every entry point (whole matrix, chunked, sharded, pmap, ELL) calls
`row_block`; a tile depends only on the key and its global row and column
range, so results are bit-identical whatever the tiling.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alberta._src import bits
from alberta._src import counter
from alberta._src import permutation
from alberta._src.spec import SparseSpec

Array = jax.Array
_U32 = jnp.uint32

# Below this many output bytes a tile is generated in one piece: chunking a
# small matrix costs loop overhead and saves a negligible amount of memory.
_UNCHUNKED_BYTES = 4 * 2**20
# Chunks are sized so that their temporaries stay below a fraction of the
# output tile (and below an absolute cap): memory is "the output + a little".
# The permutation method's temporaries grow with every element of a chunk, so
# it gets a tight share. The counter method's are only its per-row round words
# (a fifth of the output at fan_in 1024, less for longer rows); it gets a
# wider share so that most tiles run as one fused pass, which on the CPU is
# also twice as fast (a loop body runs on one thread).
_TEMP_FRACTION = {"permutation": 1 / 8, "counter": 1 / 4}
_TEMP_CAP_BYTES = 256 * 2**20


def _temp_bytes_per_row(spec: SparseSpec) -> int:
  """Temporary bytes per generated row, from `memory_analysis()` (x1.2).

  The permutation method generates and sorts whole rows, whatever the column
  tile: measured 18-20 bytes an element with one sort round (fan_in <= 1625),
  24-29 with two (fan_in 2048-65536), its 32-bit sort bits, their sorted copy
  and the weight bits; the counter method is one fused elementwise pass whose
  only temporaries are its per-row round words.
  """
  if spec.method == "permutation":
    return (14 + 10 * permutation.num_rounds(spec.fan_in)) * spec.fan_in
  return 32 * max(counter.num_rounds(spec.fan_in), 1)


def split_key(key: Array):
  """Key words of `(init_key, mask_key) = jax.random.split(key)`.

  The permutation method's (the seed's) keys; the counter method uses the
  key's own words (`counter.row_words`).
  """
  return bits.split2(bits.key_words(key))


def values_from_bits(spec: SparseSpec, value_bits: Array) -> Array:
  """The float32 weights of `spec`'s distribution from 32 random bits each.

  The permutation method uses the seed's maps (`jax.random.uniform` on
  `[-scale, scale)`, `jax.random.normal` times `scale`), bit-exact with the
  seed; they can give an exact 0.0 (probability 2**-23 each), which the seed
  then keeps. The counter method draws from the open interval instead:
  `u = (2 m + 1 - 2**23) 2**-23` for the top 23 bits `m`, exactly uniform on
  that symmetric 2**23-point grid in (-1, 1) that excludes 0, and the weight is
  `u * scale` (uniform) or `sqrt(2) erf_inv(u) * scale` (normal), never 0.

  Shared by the dense tiles and the ELL path, so both give the same number for
  the same bits.
  """
  scale = jnp.float32(spec.scale)
  if spec.method == "permutation":
    if spec.init_type == "uniform":
      return bits.bits_to_uniform(value_bits, -spec.scale, spec.scale)
    return bits.bits_to_normal(value_bits) * scale
  if spec.init_type == "uniform":
    return bits.bits_to_open_uniform(value_bits, spec.scale)
  return bits.bits_to_open_normal(value_bits) * scale


# Jitted even when called on its own: op-by-op, `bits_to_uniform`'s multiply-add
# is rounded twice, while under jit (as inside `jax.random.uniform`) XLA fuses
# it into one FMA, so an eager tile would differ from the seed by an ulp.
@functools.partial(jax.jit, static_argnames=("spec", "n_rows", "n_cols"))
def row_block(key: Array, spec: SparseSpec, row_start: Array | int, n_rows: int,
              col_start: Array | int = 0, n_cols: int | None = None) -> Array:
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
  rows = jnp.asarray(row_start, _U32) + jnp.arange(n_rows, dtype=_U32)
  cols = jnp.asarray(col_start, _U32) + jnp.arange(n_cols, dtype=_U32)
  if spec.method == "permutation":
    init_key, mask_key = split_key(key)
    values = values_from_bits(
        spec, permutation.value_bits(init_key, spec, rows, cols))
    keep = permutation.mask_block(mask_key, spec, rows, col_start, n_cols)
  else:
    # No key split: all of a row's words come from one Threefry call.
    keep, value_bits = counter.block_bits(bits.key_words(key), spec.k,
                                          spec.fan_in, rows, cols)
    values = values_from_bits(spec, value_bits)
  # The seed multiplies by a 0/1 mask, so a masked negative weight is -0.0.
  # Under jit XLA rewrites that multiply into a select (+0.0); spell it out.
  return jnp.where(keep, values, jnp.copysign(jnp.float32(0), values))


def chunk_rows_for(n_rows: int, out_bytes: int, temp_bytes_per_row: int,
                   temp_fraction: float) -> int:
  """Equal chunks whose temporaries stay below `temp_fraction` of the output.

  The whole tile when that fits. Otherwise the fewest chunks that fit, of
  equal size, so the shifted last chunk of `fill_rows` redoes almost nothing.
  """
  if out_bytes <= _UNCHUNKED_BYTES or n_rows <= 1:
    return max(n_rows, 1)
  budget = min(out_bytes * temp_fraction, _TEMP_CAP_BYTES)
  most = int(max(1, budget // temp_bytes_per_row))
  if most >= n_rows:
    return n_rows
  n_chunks = math.ceil(n_rows / most)
  return math.ceil(n_rows / n_chunks)


def default_chunk_rows(spec: SparseSpec, n_rows: int, n_cols: int,
                       dtype: jnp.dtype) -> int:
  """The default chunk of a dense `[n_rows, n_cols]` tile."""
  out_bytes = n_rows * n_cols * jnp.dtype(dtype).itemsize
  return chunk_rows_for(n_rows, out_bytes, _temp_bytes_per_row(spec),
                        _TEMP_FRACTION[spec.method])


def fill_rows(block: Callable[[Array | int, int], Any], n_rows: int,
              chunk_rows: int, empty: Any) -> Any:
  """Builds `n_rows` rows as `block(start, n)`, `chunk_rows` rows at a time.

  Chunks are written in place into `empty` (a pytree of `[n_rows, ...]`
  buffers, matching `block`'s output) by a `fori_loop`, so temporaries are
  bounded by one chunk. When `chunk_rows` does not divide `n_rows`, the last
  chunk is shifted back to end at the edge and recomputes a few rows of its
  predecessor (identically: a tile is a pure function of its coordinates)
  instead of compiling a second, ragged shape. Row offsets are uint32, so
  tiles of up to `2**32 - 1` rows (the shape limit) do not overflow. `start`
  is passed to `block` as a traced uint32.
  """
  chunk_rows = min(chunk_rows, n_rows)
  if chunk_rows == n_rows:
    return block(0, n_rows)

  def body(i, out):
    start = jnp.minimum(i * _U32(chunk_rows), _U32(n_rows - chunk_rows))
    tile = block(start, chunk_rows)
    return jax.tree.map(
        lambda o, t: lax.dynamic_update_slice_in_dim(o, t, start, axis=0),
        out, tile)

  return lax.fori_loop(_U32(0), _U32(math.ceil(n_rows / chunk_rows)), body,
                       empty)


def chunk_starts(n_rows: int, chunk_rows: int) -> list[int]:
  """First rows of the chunks of `fill_rows`, the last one shifted back."""
  chunk_rows = min(chunk_rows, n_rows)
  return [min(i * chunk_rows, n_rows - chunk_rows)
          for i in range(math.ceil(n_rows / chunk_rows))]


def at_top_level(*args: Any) -> bool:
  """True when no transformation is tracing `args` or the current call.

  Then jitted programs can be dispatched one after another from Python (a host
  loop); under `jit`, `shard_map`, `eval_shape` or `vmap` of these arguments
  the work has to stay in the caller's graph.
  """
  if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args)):
    return False
  # Under jit (even of unrelated arguments), new constants are tracers too.
  return not isinstance(lax.full((), 0, _U32), jax.core.Tracer)


# How `generate_host_loop` writes a chunk, per method (measured at 8192 x 1024
# on a 2-core CPU, one core against two): the counter method's chunk is a
# plain elementwise program, which XLA:CPU spreads over the cores only when it
# is not fused into the dynamic-update-slice that writes it (a fused in-place
# update runs on one thread): as a separate program 1.5-2.2x faster on two
# cores than on one, fused 1.0-1.3x. The permutation method's chunk is
# dominated by its sorts; fused into the write it is 1.7x faster on two cores
# than on one, and as a separate program it is 1.7x slower than fused.
_SEPARATE_TILE = {"permutation": False, "counter": True}


def host_loop_chunk_rows(spec: SparseSpec, n_rows: int, n_cols: int,
                         dtype: jnp.dtype) -> int:
  """The default chunk of `generate_host_loop`.

  Where a chunk is a finished tile before it is copied into the output
  (`_SEPARATE_TILE`), the tile's bytes count against the budget with its
  temporaries.
  """
  if not _SEPARATE_TILE[spec.method]:
    return default_chunk_rows(spec, n_rows, n_cols, dtype)
  itemsize = jnp.dtype(dtype).itemsize
  return chunk_rows_for(n_rows, n_rows * n_cols * itemsize,
                        _temp_bytes_per_row(spec) + n_cols * itemsize,
                        _TEMP_FRACTION[spec.method])


@functools.lru_cache(maxsize=64)
def _chunk_program(spec: SparseSpec, n_cols: int, dtype: jnp.dtype,
                   chunk_rows: int):
  """The jitted step of `generate_host_loop`, `(out, key, row, col, start)`.

  Writes the chunk of global rows `[row, +chunk_rows)` at `start` of the
  donated `out`: fused into the in-place update, or generated as a finished
  tile by a program of its own and then copied (`_SEPARATE_TILE`).
  """
  def tile(key, row, col):
    return generate(key, spec, row, chunk_rows, col, n_cols, dtype, chunk_rows)

  if not _SEPARATE_TILE[spec.method]:
    fused = jax.jit(
        lambda out, key, row, col, start: lax.dynamic_update_slice_in_dim(
            out, tile(key, row, col), start, axis=0), donate_argnums=0)
    return fused
  separate = jax.jit(tile)

  def step(out, key, row, col, start):
    out = _write_rows(out, separate(key, row, col), start)
    # Wait for the copy, so that no second tile is ever alive.
    return out.block_until_ready()

  return step


@functools.partial(jax.jit, donate_argnums=0)
def _write_rows(out: Array, tile: Array, start: Array) -> Array:
  """`out` with `tile` written at row `start`, in place (`out` is donated)."""
  return lax.dynamic_update_slice_in_dim(out, tile, start, axis=0)


def generate_host_loop(key: Array, spec: SparseSpec, row_start: int,
                       n_rows: int, col_start: int, n_cols: int,
                       dtype: jnp.dtype, chunk_rows: int | None = None) -> Array:
  """`generate` for a concrete key at top level, as a host loop of programs.

  Same tile, bit for bit: a tile is a pure function of its coordinates, so
  chunks at any starts (`chunk_starts`) assemble the same matrix. Each chunk
  is written into the output buffer in place (the buffer is donated) by its
  own jitted program (`_chunk_program`), which XLA:CPU spreads over every
  core, where the in-graph `fori_loop` of `generate` runs its body on one
  thread. Memory is the output plus one chunk's temporaries (and the chunk
  itself where it is generated apart; `host_loop_chunk_rows` counts both).

  Args:
    key: the matrix's PRNG key, concrete (not traced).
    spec: the matrix.
    row_start, col_start: the tile's first global row and column (ints).
    n_rows, n_cols: the tile's shape.
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
  for start in chunk_starts(n_rows, chunk_rows):
    out = step(out, key, np.uint32(row_start + start), col, np.uint32(start))
  return out


def generate(key: Array, spec: SparseSpec, row_start: Array | int, n_rows: int,
             col_start: Array | int, n_cols: int, dtype: jnp.dtype,
             chunk_rows: int | None = None) -> Array:
  """A `[n_rows, n_cols]` tile in `dtype`, built `chunk_rows` rows at a time."""
  if n_rows == 0 or n_cols == 0:
    return jnp.zeros((n_rows, n_cols), dtype)
  if chunk_rows is None:
    chunk_rows = default_chunk_rows(spec, n_rows, n_cols, dtype)

  def block(start, n):
    tile = row_block(key, spec, row_start + start, n, col_start, n_cols)
    return bits.cast_nonzero(tile, dtype)

  return fill_rows(block, n_rows, chunk_rows, jnp.zeros((n_rows, n_cols), dtype))
