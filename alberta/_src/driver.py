"""The driver layer: every entry point's argument checks, chunks and programs.

An output layout (`Layout`: the dense matrix, `blocks.DENSE`, or the ELL
arrays, `ell.ELL`) says how to generate a block of rows and what its output
and temporaries cost per row. This module does the rest, once for every
layout: the argument prelude of the public functions (`prepare`), the chunk
policy (`default_chunk_rows`), the in-place chunk loop (`generate`,
`fill_rows`) and the sharded program (`sharded_program`), in which each device
computes only its own tile from the tile's global coordinates: no device
builds the matrix, no device talks to another, and the result is
bit-identical to the one-device result whatever the mesh, the sharding, the
chunk size or the number of processes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from alberta._src import checks
from alberta._src import keys
from alberta._src.spec import SparseSpec, make_spec

Array = jax.Array
_U32 = jnp.uint32


class Call(NamedTuple):
  """A public call's validated arguments (`prepare`)."""

  spec: SparseSpec
  shape: tuple[int, ...]
  dtype: np.dtype
  chunk_rows: int | None


def prepare(
    name: str,
    key: Any,
    shape: Any,
    sparsity: Any,
    init_type: Any,
    method: Any,
    rounding: Any,
    dtype: Any,
    chunk_rows: Any = None,
    *,
    two_d: bool = False,
    check_spec: Callable[[SparseSpec, str], None] | None = None,
    what: str | None = None,
) -> Call:
  """Validates a public call's arguments, in plain Python, before any work.

  In this order: the key, the matrix arguments (`make_spec`), `check_spec`
  (a layout's own condition on the spec), the rank when `two_d`, the dtype
  and `chunk_rows`, so a call with several bad arguments always names the
  same one. Then, for valid arguments that zero every input of every output
  unit (`k == fan_in`), one `UserWarning` (`checks.warn_if_all_zero`).

  Args:
    name: the public function, named in the errors raised here.
    key: the call's `key`.
    shape: the call's `shape`.
    sparsity: the call's `sparsity`.
    init_type: the call's `init_type`.
    method: the call's `method`.
    rounding: the call's `rounding`.
    dtype: the call's `dtype`.
    chunk_rows: the call's `chunk_rows`.
    two_d: whether `shape` must be `(fan_out, fan_in)`.
    check_spec: `(spec, name)`, raises if the layout cannot hold `spec`.
    what: the array as the warning names it; default "shape {shape}".

  Returns:
    `Call(spec, shape, dtype, chunk_rows)`: the spec, the validated shape, the
    canonical dtype and `chunk_rows` (None or a positive int).
  """
  keys.check_key(key)
  spec, shape = make_spec(shape, sparsity, init_type, method, rounding)
  if check_spec is not None:
    check_spec(spec, name)
  if two_d and len(shape) != 2:
    raise ValueError(
        f"{name} takes a 2-D shape (fan_out, fan_in), got {shape!r}; pass "
        "(fan_out, prod(shape[1:])) and reshape the result for other layouts."
    )
  call = Call(
      spec,
      shape,
      checks.check_dtype(dtype),
      checks.check_chunk_rows(chunk_rows),
  )
  checks.warn_if_all_zero(
      what or f"shape {shape}",
      spec.fan_out,
      spec.fan_in,
      spec.k,
      sparsity,
      rounding,
  )
  return call


@dataclasses.dataclass(frozen=True)
class Layout:
  """How rows of a matrix are generated and stored.

  Attributes:
    block: `(key, spec, row_start, n_rows, col_start, n_cols, dtype)` -> the
      rows `[row_start, +n_rows)` (columns `[col_start, +n_cols)` where the
      layout has column tiles), a pytree of `[n_rows, ...]` arrays; the starts
      may be traced uint32.
    empty: `(spec, n_rows, n_cols, dtype)` -> the pytree of zero arrays of
      that shape, the buffers the chunks are written into.
    out_bytes_per_row: `(spec, n_cols, dtype)` -> output bytes per row.
    temp_bytes_per_row: `spec` -> temporary bytes per generated row.
    temp_fraction: `spec` -> the share of the output that a chunk's
      temporaries may take.
    outputs: the number of arrays in the pytree (1: a bare array).
  """

  block: Callable[..., Any]
  empty: Callable[[SparseSpec, int, int, Any], Any]
  out_bytes_per_row: Callable[[SparseSpec, int, Any], int]
  temp_bytes_per_row: Callable[[SparseSpec], int]
  temp_fraction: Callable[[SparseSpec], float]
  outputs: int = 1


# Below this many output bytes a tile is generated in one piece: chunking a
# small matrix costs loop overhead and saves a negligible amount of memory.
_UNCHUNKED_BYTES = 4 * 2**20
# Chunks are sized so that their temporaries stay below a fraction of the
# output tile (the layout's `temp_fraction`) and below an absolute cap:
# memory is "the output + a little".
_TEMP_CAP_BYTES = 256 * 2**20


def chunk_rows_for(
    n_rows: int, out_bytes: int, temp_bytes_per_row: int, temp_fraction: float
) -> int:
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


def default_chunk_rows(
    layout: Layout,
    spec: SparseSpec,
    n_rows: int,
    n_cols: int,
    dtype: Any,
    *,
    chunk_is_temporary: bool = False,
) -> int:
  """The default chunk of an `[n_rows, n_cols]` tile of `layout`.

  With `chunk_is_temporary` (a chunk generated apart before it is copied into
  the output), the chunk's own bytes count with its temporaries.
  """
  per_row = layout.out_bytes_per_row(spec, n_cols, dtype)
  temp = layout.temp_bytes_per_row(spec)
  if chunk_is_temporary:
    temp += per_row
  return chunk_rows_for(
      n_rows, n_rows * per_row, temp, layout.temp_fraction(spec)
  )


def fill_rows(
    block: Callable[[Array | int, int], Any],
    n_rows: int,
    chunk_rows: int,
    empty: Any,
) -> Any:
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
        out,
        tile,
    )

  return lax.fori_loop(
      _U32(0), _U32(math.ceil(n_rows / chunk_rows)), body, empty
  )


def chunk_starts(n_rows: int, chunk_rows: int) -> list[int]:
  """First rows of the chunks of `fill_rows`, the last one shifted back."""
  chunk_rows = min(chunk_rows, n_rows)
  return [
      min(i * chunk_rows, n_rows - chunk_rows)
      for i in range(math.ceil(n_rows / chunk_rows))
  ]


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


def generate(
    layout: Layout,
    key: Array,
    spec: SparseSpec,
    row_start: Array | int,
    n_rows: int,
    col_start: Array | int,
    n_cols: int,
    dtype: Any,
    chunk_rows: int | None = None,
) -> Any:
  """`layout`'s rows `[row_start, +n_rows)` in `dtype`, `chunk_rows` at a time.

  None: `default_chunk_rows`. Empty outputs are returned as zeros, unbuilt.
  """
  empty = layout.empty(spec, n_rows, n_cols, dtype)
  if n_rows == 0 or any(leaf.size == 0 for leaf in jax.tree.leaves(empty)):
    return empty
  if chunk_rows is None:
    chunk_rows = default_chunk_rows(layout, spec, n_rows, n_cols, dtype)

  def block(start, n):
    return layout.block(
        key, spec, row_start + start, n, col_start, n_cols, dtype
    )

  return fill_rows(block, n_rows, chunk_rows, empty)


def _axis_names(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  if isinstance(entry, (tuple, list)):
    return tuple(entry)
  return (entry,)


def tile_layout(
    shape: tuple[int, int], sharding: Any
) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], tuple[int, int]]:
  """Mesh axes splitting rows and columns, and the per-device tile shape.

  Raises:
    TypeError: `sharding` is not a `NamedSharding`.
    ValueError: the sharding's `PartitionSpec` names more than two dimensions,
      or a dimension is not divisible by the number of devices splitting it.
  """
  if not isinstance(sharding, NamedSharding):
    raise TypeError(
        f"sharding must be a jax.sharding.NamedSharding, got {sharding!r}."
    )
  partition = tuple(sharding.spec)
  if len(partition) > 2:
    raise ValueError(
        f"sharding's PartitionSpec {sharding.spec} names {len(partition)} "
        "dimensions; the matrix has 2 (fan_out, fan_in)."
    )
  partition = partition + (None,) * (2 - len(partition))
  names = tuple(_axis_names(e) for e in partition)
  tile = []
  for dim, size, axes in zip(("fan_out", "fan_in"), shape, names, strict=True):
    parts = math.prod(sharding.mesh.shape[a] for a in axes)
    if size % parts:
      raise ValueError(
          f"sharding {sharding.spec} over mesh {dict(sharding.mesh.shape)}"
          f" splits {dim}={size} into {parts} parts, which does not divide it;"
          f" shape {shape!r} must be divisible by the mesh along each split"
          " dimension."
      )
    tile.append(size // parts)
  return names, (tile[0], tile[1])


def sharded(
    layout: Layout,
    key: Any,
    spec: SparseSpec,
    dtype: np.dtype,
    sharding: NamedSharding,
    chunk_rows: int | None,
) -> Any:
  """`layout`'s arrays of the whole matrix, laid out as `sharding`.

  Arrays with no elements are placed, not generated: a jitted program lays
  out zero-size outputs with the global shape on every device (JAX 0.10),
  while `jax.device_put` gives each device its own, empty, tile.
  """
  empty = functools.partial(
      layout.empty, spec, spec.fan_out, spec.fan_in, dtype
  )
  # The outputs' shapes alone: building them here would allocate the whole
  # matrix on one device.
  if any(
      math.prod(leaf.shape) == 0
      for leaf in jax.tree.leaves(jax.eval_shape(empty))
  ):
    return jax.device_put(empty(), sharding)
  return sharded_program(layout, spec, dtype, sharding, chunk_rows)(
      keys.key_array(key)
  )


@functools.lru_cache(maxsize=64)
def sharded_program(
    layout: Layout,
    spec: SparseSpec,
    dtype: np.dtype,
    sharding: NamedSharding,
    chunk_rows: int | None,
):
  """The jitted program `key_array -> layout's arrays laid out as sharding`.

  Each device generates its own tile (`generate`), at the global offsets of
  its position on the mesh, `chunk_rows` rows at a time. Called with
  `keys.key_array(key)`, replicated.
  """
  names, (tile_rows, tile_cols) = tile_layout(spec.shape, sharding)

  def local(key_data):
    # Global offsets in uint32: a tile may start at row 2**31 or beyond.
    row_index = lax.axis_index(names[0]) if names[0] else 0
    col_index = lax.axis_index(names[1]) if names[1] else 0
    return generate(
        layout,
        key_data,
        spec,
        jnp.asarray(row_index, _U32) * np.uint32(tile_rows),
        tile_rows,
        jnp.asarray(col_index, _U32) * np.uint32(tile_cols),
        tile_cols,
        dtype,
        chunk_rows,
    )

  def each(x):
    return x if layout.outputs == 1 else (x,) * layout.outputs

  mapped = jax.shard_map(
      local,
      mesh=sharding.mesh,
      in_specs=PartitionSpec(),
      out_specs=each(PartitionSpec(*names)),
      check_vma=False,
  )
  return jax.jit(mapped, out_shardings=each(sharding))
