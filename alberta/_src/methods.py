"""The two mask methods behind one interface, selected by name from `METHODS`.

A method turns a tile's coordinates into its keep-mask and its weights' 32
random bits (`Method.tile_bits`), or into the keep-mask alone, without the
weights' bits (`Method.tile_mask`), maps the bits to float32 weights
(`Method.values`), and tells the chunk policy what its temporaries cost
(`Method.temp_bytes_per_row`, `Method.temp_fraction`) and how the host loop
writes a chunk (`Method.separate_tile`). "permutation" is the reference's
algorithm (`permutation.py`), "counter" the sort-free one (`counter.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax import lax

from alberta._src import bits
from alberta._src import counter
from alberta._src import keys
from alberta._src import permutation
from alberta._src import shuffle

if TYPE_CHECKING:
  from alberta._src.spec import SparseSpec

Array = jax.Array
_U32 = jnp.uint32

# `(key words, spec, rows, col_start, n_cols) -> (keep, value_bits)`.
TileBits = Callable[
    [tuple[Array, Array], "SparseSpec", Array, "Array | int", int],
    tuple[Array, Array],
]
# `(key words, spec, rows, col_start, n_cols) -> keep`.
TileMask = Callable[
    [tuple[Array, Array], "SparseSpec", Array, "Array | int", int], Array
]


@dataclasses.dataclass(frozen=True)
class Method:
  """One mask method's part of the block generator.

  Attributes:
    tile_bits: `(words, spec, rows, col_start, n_cols) -> (keep, value_bits)`
      for the key's words (`keys.key_words`), `[n_rows]` uint32 global rows
      and columns `[col_start, +n_cols)` (`col_start` may be traced): the
      boolean keep-mask and the uint32 value bits, both `[n_rows, n_cols]`.
    values: `(spec, value_bits) -> float32 weights` of `spec`'s distribution.
    temp_bytes_per_row: `spec -> bytes` of temporaries per generated row,
      from `memory_analysis()` (x1.2), for the chunk policy.
    temp_fraction: the share of a tile's output bytes its chunk's temporaries
      may take.
    separate_tile: whether `blocks.generate_host_loop` generates each chunk
      into a buffer of its own (a fusion apart) and then copies it in place
      (True), or fuses the generation into the in-place write (False).
    tile_mask: `(words, spec, rows, col_start, n_cols) -> keep`, the keep-mask
      of `tile_bits` for the same arguments, bit for bit, at the cost of the
      mask alone: no value bits are drawn.
  """

  tile_bits: TileBits
  values: Callable[["SparseSpec", Array], Array]
  temp_bytes_per_row: Callable[["SparseSpec"], int]
  temp_fraction: float
  separate_tile: bool
  tile_mask: TileMask


def _columns(col_start: Array | int, n_cols: int) -> Array:
  return lax.add(
      lax.convert_element_type(col_start, _U32), lax.iota(_U32, n_cols)
  )


def _permutation_tile_bits(words, spec, rows, col_start, n_cols):
  """Bits as the reference splits them: `init_key, mask_key = split(key)`."""
  init_key, mask_key = keys.split2(words)
  value_bits = permutation.value_bits(
      init_key, spec, rows, _columns(col_start, n_cols)
  )
  return (
      permutation.mask_block(mask_key, spec, rows, col_start, n_cols),
      value_bits,
  )


def _permutation_tile_mask(words, spec, rows, col_start, n_cols):
  """`_permutation_tile_bits`' mask: the same `mask_key`, no weight bits."""
  _, mask_key = keys.split2(words)
  return permutation.mask_block(mask_key, spec, rows, col_start, n_cols)


def _permutation_values(spec: SparseSpec, value_bits: Array) -> Array:
  """The reference's maps, bit-exact with the reference.

  `jax.random.uniform` on `[-scale, scale)`, `jax.random.normal` times
  `scale`; they can give an exact 0.0 (probability 2**-23 each), which the
  reference then keeps.
  """
  if spec.init_type == "uniform":
    return bits.bits_to_uniform(value_bits, -spec.scale, spec.scale)
  return bits.bits_to_normal(value_bits) * jnp.float32(spec.scale)


def _permutation_temp_bytes_per_row(spec: SparseSpec) -> int:
  """Whole rows, generated and ranked whatever the column tile.

  Measured 18-20 bytes an element with one sort round (fan_in <= 1625),
  24-29 with two (fan_in 2048-65536) on the sort and compare paths: the
  32-bit sort bits, their sorted copy and the weight bits. The search path
  (`permutation.default_path`) keeps each element's place among the followed
  ones (16 bits) and the search's carry besides: 21 bytes with one round,
  27.5 with two.
  """
  rounds = shuffle.num_rounds(spec.fan_in)
  if permutation.default_path(spec.fan_in, spec.k) == "search":
    return (16 + 10 * rounds) * spec.fan_in
  return (14 + 10 * rounds) * spec.fan_in


def _counter_tile_bits(words, spec, rows, col_start, n_cols):
  """No key split: all of a row's words come from one Threefry call."""
  return counter.block_bits(
      words, spec.k, spec.fan_in, rows, _columns(col_start, n_cols)
  )


def _counter_tile_mask(words, spec, rows, col_start, n_cols):
  """`counter.keep_mask`: the round words alone, not the value words."""
  return counter.keep_mask(
      words, spec.k, spec.fan_in, rows, _columns(col_start, n_cols)
  )


def _counter_values(spec: SparseSpec, value_bits: Array) -> Array:
  """Weights from the open interval, never 0.

  `u = (2 m + 1 - 2**23) 2**-23` for the top 23 bits `m`, exactly uniform on
  that symmetric 2**23-point grid in (-1, 1) that excludes 0, and the weight
  is `u * scale` (uniform) or `sqrt(2) erf_inv(u) * scale` (normal).
  """
  if spec.init_type == "uniform":
    return bits.bits_to_open_uniform(value_bits, spec.scale)
  return bits.bits_to_open_normal(value_bits) * jnp.float32(spec.scale)


def _counter_temp_bytes_per_row(spec: SparseSpec) -> int:
  """One fused elementwise pass: the only temporaries are its round words."""
  return 32 * max(counter.num_rounds(spec.fan_in), 1)


# Temporary fractions: chunks are sized so that their temporaries stay below a
# fraction of the output tile (and below an absolute cap): memory is "the
# output + a little". The permutation method's temporaries grow with every
# element of a chunk, so it gets a tight share. The counter method's are only
# its per-row round words (a fifth of the output at fan_in 1024, less for
# longer rows); it gets a wider share so that most tiles run as one fused pass,
# which on the CPU is also twice as fast (a loop body runs on one thread).
#
# Separate tiles: how `blocks.generate_host_loop` writes a chunk (measured at
# 8192 x 1024 on a 2-core CPU, one core against two): the counter method's
# chunk is a plain elementwise program, which XLA:CPU spreads over the cores
# only when it is not fused into the dynamic-update-slice that writes it (a
# fused in-place update runs on one thread): generated apart 1.5-2.2x faster
# on two cores than on one, fused 1.0-1.3x. Apart, it is also an output of the
# step (into a donated buffer), so XLA cannot fuse it into the write and the
# step is one program: 0.92x the throughput of one piece, against 0.80-0.87x
# for a program per chunk and one per copy. The permutation method's chunk is
# dominated by its sorts; fused into the write it is 1.7x faster on two cores
# than on one, and as a separate program it is 1.7x slower than fused.
METHODS = {
    "permutation": Method(
        _permutation_tile_bits,
        _permutation_values,
        _permutation_temp_bytes_per_row,
        temp_fraction=1 / 8,
        separate_tile=False,
        tile_mask=_permutation_tile_mask,
    ),
    "counter": Method(
        _counter_tile_bits,
        _counter_values,
        _counter_temp_bytes_per_row,
        temp_fraction=1 / 4,
        separate_tile=True,
        tile_mask=_counter_tile_mask,
    ),
}


def values_from_bits(spec: SparseSpec, value_bits: Array) -> Array:
  """The float32 weights of `spec`'s distribution from 32 random bits each.

  `spec.method`'s map (`Method.values`). Shared by the dense tiles and the ELL
  path, so both give the same number for the same bits.
  """
  return METHODS[spec.method].values(spec, value_bits)
