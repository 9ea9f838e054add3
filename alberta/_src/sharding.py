"""Sharded, chunked and pmap generation of large matrices.

Each device computes only its own tile with `blocks.generate`, from the tile's
global coordinates (`driver.sharded_program`): no device builds the matrix, no
device talks to another, and the result is bit-identical to `sparse_init` on
one device whatever the mesh, the sharding, the chunk size or the number of
processes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from alberta._src import blocks
from alberta._src import contracts
from alberta._src import driver
from alberta._src import keys
from alberta._src.spec import SparseSpec

Array = jax.Array


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
    sparsity: fraction of each output unit's inputs set to zero, as in
      `sparse_init`.
    init_type: "uniform" or "normal", as in `sparse_init`.
    dtype: floating dtype of the result, as in `sparse_init`.
    method: "permutation" or "counter", as in `sparse_init`.
    rounding: the zero-count rule, as in `sparse_init`.
    sharding: a `NamedSharding` whose `PartitionSpec` has at most two entries.
    chunk_rows: rows generated per step on each device; None: automatic.

  Returns:
    The matrix, a global array with exactly `sharding`.

  Examples:
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> mesh = jax.make_mesh((len(jax.devices()),), ("rows",))
    >>> w = alberta.sharded_sparse_init(
    ...     jax.random.key(0), (64, 32),
    ...     sharding=NamedSharding(mesh, P("rows")))
    >>> bool((w == alberta.sparse_init(jax.random.key(0), (64, 32))).all())
    True
  """
  spec, shape, dtype, chunk_rows = driver.prepare(
      "sharded_sparse_init",
      key,
      shape,
      sparsity,
      init_type,
      method,
      rounding,
      dtype,
      chunk_rows,
      two_d=True,
  )
  driver.tile_layout(shape, sharding)
  return contracts.returns(
      driver.sharded(blocks.DENSE, key, spec, dtype, sharding, chunk_rows),
      shape,
      dtype,
  )


@functools.lru_cache(maxsize=64)
def _pmap_fn(
    spec: SparseSpec,
    dtype: np.dtype,
    devices: tuple[Any, ...],
    chunk_rows: int | None,
):
  rows = spec.fan_out // len(devices)

  def local(index, key_data):
    start = jnp.asarray(index, jnp.uint32) * np.uint32(rows)
    return blocks.generate(
        key_data, spec, start, rows, 0, spec.fan_in, dtype, chunk_rows
    )

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
    sparsity: fraction of each output unit's inputs set to zero, as in
      `sparse_init`.
    init_type: "uniform" or "normal", as in `sparse_init`.
    dtype: floating dtype of the result, as in `sparse_init`.
    method: "permutation" or "counter", as in `sparse_init`.
    rounding: the zero-count rule, as in `sparse_init`.
    devices: the devices; default `jax.local_devices()`.
    chunk_rows: rows generated per step on each device; None: automatic.

  Returns:
    `[n_devices, fan_out // n_devices, fan_in]`; device `d` holds rows
    `[d * fan_out // n_devices, (d + 1) * fan_out // n_devices)`.
  """
  spec, shape, dtype, chunk_rows = driver.prepare(
      "pmap_sparse_init",
      key,
      shape,
      sparsity,
      init_type,
      method,
      rounding,
      dtype,
      chunk_rows,
      two_d=True,
  )
  devices = tuple(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError(f"devices must not be empty, got {devices!r}.")
  repeated = list(
      dict.fromkeys(str(d) for i, d in enumerate(devices) if d in devices[:i])
  )
  if repeated:
    raise ValueError(
        "devices must be distinct: each gets its own block of rows, but "
        f"{', '.join(repeated)} {'appears' if len(repeated) == 1 else 'appear'}"
        f" more than once in devices={list(devices)!r}."
    )
  if spec.fan_out % len(devices):
    raise ValueError(
        f"fan_out={spec.fan_out} of shape {shape!r} is not divisible by the "
        f"number of devices, {len(devices)}."
    )
  index = np.arange(len(devices), dtype=np.int32)
  return contracts.returns(
      _pmap_fn(spec, dtype, devices, chunk_rows)(index, keys.key_array(key)),
      (len(devices), spec.fan_out // len(devices), spec.fan_in),
      dtype,
  )


def replicated_to_host(tree: Any) -> Any:
  """NumPy copies of a pytree of replicated arrays (e.g. a jit's reductions).

  Every process reads its own local copy, so this works on each process of
  a multi-host run and gathers nothing.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
