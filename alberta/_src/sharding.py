"""Sharded, chunked and pmap generation of large matrices.

Each device computes only its own tile with `blocks.generate`, from the tile's
global coordinates: no device builds the matrix, no device talks to another,
and the result is bit-identical to `sparse_init` on one device whatever the
mesh, the sharding, the chunk size or the number of processes.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from alberta._src import blocks
from alberta._src import checks
from alberta._src.checks import check_chunk_rows
from alberta._src.spec import SparseSpec, make_spec

Array = jax.Array


def _key_array(key: Array) -> Array:
  """The key as a uint32[2] array, which any jit or pmap can take replicated."""
  if isinstance(key, jax.core.Tracer):
    return jax.random.key_data(key) if jnp.issubdtype(
        key.dtype, jax.dtypes.prng_key) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key, np.uint32)


def _axis_names(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  if isinstance(entry, (tuple, list)):
    return tuple(entry)
  return (entry,)


def tile_layout(shape: tuple[int, int], sharding: Any) -> tuple[
    tuple[tuple[str, ...], tuple[str, ...]], tuple[int, int]]:
  """Mesh axes splitting rows and columns, and the per-device tile shape.

  Raises:
    TypeError: `sharding` is not a `NamedSharding`.
    ValueError: the spec names more than two dimensions, or a dimension is not
      divisible by the number of devices splitting it.
  """
  if not isinstance(sharding, NamedSharding):
    raise TypeError(
        f"sharding must be a jax.sharding.NamedSharding, got {sharding!r}.")
  spec = tuple(sharding.spec)
  if len(spec) > 2:
    raise ValueError(
        f"sharding spec {sharding.spec} names {len(spec)} dimensions; the "
        f"matrix has 2 (fan_out, fan_in).")
  spec = spec + (None,) * (2 - len(spec))
  names = tuple(_axis_names(e) for e in spec)
  tile = []
  for dim, size, axes in zip(("fan_out", "fan_in"), shape, names):
    parts = math.prod(sharding.mesh.shape[a] for a in axes)
    if size % parts:
      raise ValueError(
          f"sharding {sharding.spec} over mesh {dict(sharding.mesh.shape)} splits "
          f"{dim}={size} into {parts} parts, which does not divide it; shape "
          f"{shape!r} must be divisible by the mesh along each split dimension.")
    tile.append(size // parts)
  return names, (tile[0], tile[1])


@functools.lru_cache(maxsize=64)
def _sharded_fn(spec: SparseSpec, dtype: np.dtype, sharding: NamedSharding,
                chunk_rows: int | None):
  names, (tile_rows, tile_cols) = tile_layout(spec.shape, sharding)

  def local(key_data):
    # Global offsets in uint32: a tile may start at row 2**31 or beyond.
    row_index = jax.lax.axis_index(names[0]) if names[0] else 0
    col_index = jax.lax.axis_index(names[1]) if names[1] else 0
    return blocks.generate(
        key_data, spec, jnp.asarray(row_index, jnp.uint32) * np.uint32(tile_rows),
        tile_rows, jnp.asarray(col_index, jnp.uint32) * np.uint32(tile_cols),
        tile_cols, dtype, chunk_rows)

  mapped = jax.shard_map(local, mesh=sharding.mesh, in_specs=PartitionSpec(),
                         out_specs=PartitionSpec(*names), check_vma=False)
  return jax.jit(mapped, out_shardings=sharding)


def sharded_sparse_init(
    key: Array,
    shape: Sequence[int],
    sparsity: float = 0.9,
    init_type: str = "uniform",
    *,
    sharding: NamedSharding,
    dtype: Any = jnp.float32,
    method: str = "permutation",
    rounding: str = "nearest",
    chunk_rows: int | None = None,
) -> Array:
  """`sparse_init` as a global `jax.Array` laid out as `sharding`.

  Every device computes only its own tile (rows and/or columns split over a
  1-D or 2-D mesh, or replicated), `chunk_rows` rows at a time written in place,
  so per-device memory is its tile plus one chunk's temporaries; with
  `chunk_rows=None` the chunk is chosen from the tile size. The result equals
  `sparse_init(key, shape, ...)` exactly, whatever the mesh or chunking, on one
  host or many.

  Args:
    key: a threefry PRNG key, the same on every process.
    shape: `(fan_out, fan_in)`.
    sparsity, init_type, dtype, method, rounding: as in `sparse_init`.
    sharding: a `NamedSharding` whose spec has at most two entries.
    chunk_rows: rows generated per step on each device; None: automatic.

  Returns:
    The matrix, a global array with exactly `sharding`.
  """
  checks.check_key(key)
  spec, shape = make_spec(shape, sparsity, init_type, method, rounding)
  if len(shape) != 2:
    raise ValueError(
        f"sharded_sparse_init takes a 2-D shape (fan_out, fan_in), got {shape!r}; "
        f"reshape the result for other layouts.")
  dtype = checks.check_dtype(dtype)
  chunk_rows = check_chunk_rows(chunk_rows)
  tile_layout(shape, sharding)
  return _sharded_fn(spec, dtype, sharding, chunk_rows)(_key_array(key))


@functools.lru_cache(maxsize=64)
def _pmap_fn(spec: SparseSpec, dtype: np.dtype, devices: tuple[Any, ...],
             chunk_rows: int | None):
  rows = spec.fan_out // len(devices)

  def local(index, key_data):
    start = jnp.asarray(index, jnp.uint32) * np.uint32(rows)
    return blocks.generate(key_data, spec, start, rows, 0, spec.fan_in, dtype,
                           chunk_rows)

  return jax.pmap(local, in_axes=(0, None), devices=devices)


def pmap_sparse_init(
    key: Array,
    shape: Sequence[int],
    sparsity: float = 0.9,
    init_type: str = "uniform",
    *,
    devices: Sequence[Any] | None = None,
    dtype: Any = jnp.float32,
    method: str = "permutation",
    rounding: str = "nearest",
    chunk_rows: int | None = None,
) -> Array:
  """`sparse_init` split by rows over `devices` with `jax.pmap`.

  Args:
    key: a threefry PRNG key.
    shape: `(fan_out, fan_in)`, `fan_out` divisible by the number of devices.
    sparsity, init_type, dtype, method, rounding: as in `sparse_init`.
    devices: the devices; default `jax.local_devices()`.
    chunk_rows: rows generated per step on each device; None: automatic.

  Returns:
    `[n_devices, fan_out // n_devices, fan_in]`; device `d` holds rows
    `[d * fan_out // n_devices, (d + 1) * fan_out // n_devices)`.
  """
  checks.check_key(key)
  spec, shape = make_spec(shape, sparsity, init_type, method, rounding)
  if len(shape) != 2:
    raise ValueError(
        f"pmap_sparse_init takes a 2-D shape (fan_out, fan_in), got {shape!r}.")
  dtype = checks.check_dtype(dtype)
  chunk_rows = check_chunk_rows(chunk_rows)
  devices = tuple(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError(f"devices must not be empty, got {devices!r}.")
  repeated = list(dict.fromkeys(
      str(d) for i, d in enumerate(devices) if d in devices[:i]))
  if repeated:
    raise ValueError(
        f"devices must be distinct: each gets its own block of rows, but "
        f"{', '.join(repeated)} {'appears' if len(repeated) == 1 else 'appear'}"
        f" more than once in devices={list(devices)!r}.")
  if spec.fan_out % len(devices):
    raise ValueError(
        f"fan_out={spec.fan_out} of shape {shape!r} is not divisible by the "
        f"number of devices, {len(devices)}.")
  index = np.arange(len(devices), dtype=np.int32)
  return _pmap_fn(spec, dtype, devices, chunk_rows)(index, _key_array(key))
