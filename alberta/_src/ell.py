"""ELL output: every row's nonzero weights and their columns, never the zeros.

With the counter method, element `(r, c)` is kept iff `pi_r(c) >= k`, where
`pi_r` is row `r`'s keyed swap-or-not shuffle of `[0, fan_in)`. Its kept
columns are therefore exactly the preimages `pi_r^{-1}(j)` of the ranks
`j = k, ..., fan_in - 1`: running the shuffle's rounds backwards on those
`nnz = fan_in - k` ranks lists them directly, at the cost of the dense method
per *kept* element. A sort over the `nnz` columns of each row puts them in
ascending order, and each value is the dense method's pure function of
`(key, r, c)` (`counter.hash_values`, `methods.values_from_bits`), so scattering
the ELL arrays gives `sparse_init(..., method="counter")` bit for bit, zeros
aside (a scatter writes +0.0 where the dense matrix keeps the sign of the
masked weight). Time and memory are O(fan_out * nnz), not O(fan_out * fan_in).

The permutation method (the reference's) has no such inverse: its mask comes
from a sort of each whole row, so it is refused here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse
from jax.sharding import NamedSharding, PartitionSpec

from alberta._src import bits
from alberta._src import checks
from alberta._src import contracts
from alberta._src import counter
from alberta._src import driver
from alberta._src import keys
from alberta._src import methods
from alberta._src.spec import SparseSpec

Array = jax.Array
_U32 = jnp.uint32

# Column indices are int32, the index type of `jax.experimental.sparse`.
_MAX_FAN_IN = 2**31 - 1


def nnz(spec: SparseSpec) -> int:
  """Nonzeros per row: `fan_in - k`."""
  return spec.fan_in - spec.k


def _check_method(spec: SparseSpec, name: str) -> None:
  """Raises unless the ELL layout can hold `spec` (`driver.prepare`'s hook)."""
  if spec.method != "counter":
    raise ValueError(
        f"{name} needs method='counter', got method={spec.method!r}: the "
        "permutation method's mask comes from sorting a random permutation of "
        "each whole row, so its nonzero columns cannot be listed without "
        "building the row. Use method='counter' (the same distribution, "
        "other numbers), or sparse_init(..., method='permutation') for the "
        "reference's dense matrix."
    )
  if spec.fan_in > _MAX_FAN_IN:
    raise ValueError(
        f"{name} stores column indices as int32, so fan_in must be below "
        f"2**31, got fan_in={spec.fan_in}."
    )


@functools.partial(jax.jit, static_argnames=("spec", "n_rows"))
def nonzero_block(
    key: Array, spec: SparseSpec, row_start: Array | int, n_rows: int
) -> tuple[Array, Array]:
  """The kept weights of rows `[row_start, +n_rows)` and their columns.

  Args:
    key: the matrix's PRNG key (typed or raw threefry key).
    spec: the matrix; its method must be "counter".
    row_start: first global row; may be traced.
    n_rows: number of rows (static).

  Returns:
    `(values, indices)`: float32 and int32 `[n_rows, nnz]`, the columns of each
    row ascending, `values[i, j]` the dense matrix's weight at
    `(row_start + i, indices[i, j])`.
  """
  rows = jnp.asarray(row_start, _U32) + jnp.arange(n_rows, dtype=_U32)
  n = spec.fan_in
  # The dense tile's words (`counter.block_bits`): one Threefry call.
  words = counter.row_words(keys.key_words(key), rows, n, spec.k > 0)
  if spec.k == 0:
    cols = jnp.broadcast_to(jnp.arange(n, dtype=_U32), (n_rows, n))
  else:
    ranks = jnp.broadcast_to(
        jnp.arange(spec.k, n, dtype=_U32), (n_rows, nnz(spec))
    )
    cols = jnp.sort(
        counter.permute(ranks, words.rounds, n, inverse=True), axis=1
    )
  values = methods.values_from_bits(
      spec, counter.hash_values(words.value, cols)
  )
  return values, cols.astype(jnp.int32)


def _temp_bytes_per_row(spec: SparseSpec) -> int:
  """Temporary bytes per generated row, from `memory_analysis()` (x1.2).

  The shuffle and the value hash fuse into one pass; what remains is the
  buffer the sort works in (4 bytes a kept element) and the round words.
  """
  return 5 * nnz(spec) + 32 * max(counter.num_rounds(spec.fan_in), 1)


def _block(
    key: Array,
    spec: SparseSpec,
    row_start: Array | int,
    n_rows: int,
    col_start: Array | int,
    n_cols: int,
    dtype: Any,
) -> tuple[Array, Array]:
  del col_start, n_cols  # A row's nonzeros are a whole ELL row.
  values, indices = nonzero_block(key, spec, row_start, n_rows)
  return bits.cast_nonzero(values, dtype), indices


def _empty(
    spec: SparseSpec, n_rows: int, n_cols: int, dtype: Any
) -> tuple[Array, Array]:
  del n_cols
  return (
      jnp.zeros((n_rows, nnz(spec)), dtype),
      jnp.zeros((n_rows, nnz(spec)), jnp.int32),
  )


def _out_bytes_per_row(spec: SparseSpec, n_cols: int, dtype: Any) -> int:
  del n_cols
  return nnz(spec) * (jnp.dtype(dtype).itemsize + 4)


def _temp_fraction(spec: SparseSpec) -> float:
  # The per-row sort's buffer grows with the chunk, as in the permutation
  # method.
  del spec
  return 1 / 8


# The ELL arrays: `(values, indices)`, each `[n_rows, nnz]`; no column tiles.
ELL = driver.Layout(
    block=_block,
    empty=_empty,
    out_bytes_per_row=_out_bytes_per_row,
    temp_bytes_per_row=_temp_bytes_per_row,
    temp_fraction=_temp_fraction,
    outputs=2,
)


def default_chunk_rows(spec: SparseSpec, n_rows: int, dtype: jnp.dtype) -> int:
  """The default chunk: temporaries a small fraction of the ELL arrays."""
  return driver.default_chunk_rows(ELL, spec, n_rows, spec.fan_in, dtype)


def generate(
    key: Array,
    spec: SparseSpec,
    row_start: Array | int,
    n_rows: int,
    dtype: jnp.dtype,
    chunk_rows: int | None = None,
) -> tuple[Array, Array]:
  """The ELL arrays of rows `[row_start, +n_rows)`, `chunk_rows` at a time."""
  return driver.generate(
      ELL, key, spec, row_start, n_rows, 0, spec.fan_in, dtype, chunk_rows
  )


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _sparse_init_ell_2d(
    key: Array, spec: SparseSpec, dtype: jnp.dtype, chunk_rows: int | None
) -> tuple[Array, Array]:
  return generate(key, spec, 0, spec.fan_out, dtype, chunk_rows)


def sparse_init_ell(
    key: Array,
    shape: Any,
    sparsity: float = 0.9,
    init_type: str = "uniform",
    *,
    dtype: Any = jnp.float32,
    method: str = "counter",
    rounding: str = "nearest",
) -> tuple[Array, Array]:
  """`sparse_init(..., method="counter")` in the ELL layout, zeros never built.

  Row `r` of the matrix has `nnz = fan_in - num_zeros(fan_in, sparsity,
  rounding)` nonzero weights; this returns them and their column indices,
  each row's columns ascending. Time and memory are O(fan_out * nnz): at
  sparsity 0.99 a hundredth of the dense matrix (plus as much again for the
  indices), generated in chunks so that temporaries stay small.

  Scattering the result (`to_dense`) gives exactly `sparse_init(key, shape,
  sparsity, init_type, dtype=dtype, method="counter", rounding=rounding)`,
  except that every zero is +0.0 (the dense matrix keeps the masked weight's
  sign on its zeros).

  Args:
    key: a threefry PRNG key, `jax.random.key(...)` or
      `jax.random.PRNGKey(...)`.
    shape: `(fan_out, fan_in)`, or `(fan_out, *rest)` with fan-in `prod(rest)`;
      the indices then address the flattened fan-in (row-major over `rest`).
    sparsity: fraction of each output unit's inputs that are zero, in [0, 1].
    init_type: "uniform" (LeCun uniform) or "normal" (LeCun normal).
    dtype: floating dtype of the values (generated in float32 and cast).
    method: must be "counter"; "permutation" raises a ValueError (its mask
      needs each whole row).
    rounding: the zero-count rule, "nearest" (the reference) or "ceil" (the
      paper).

  Returns:
    `(values, indices)`, `dtype` and int32 arrays of shape `[fan_out, nnz]`.

  Raises:
    ValueError: `method="permutation"`, a fan-in of 2**31 or more, or an
      argument `sparse_init` would also reject.

  Examples:
    >>> key = jax.random.key(0)
    >>> values, indices = alberta.sparse_init_ell(key, (64, 100), 0.9)
    >>> values.shape, indices.dtype   # 100 - 90 nonzeros a row
    ((64, 10), dtype('int32'))
    >>> dense = alberta.to_dense(values, indices, (64, 100))
    >>> bool((dense == alberta.sparse_init(key, (64, 100), 0.9,
    ...                                    method="counter")).all())
    True
  """
  spec, _, dtype, _ = driver.prepare(
      "sparse_init_ell",
      key,
      shape,
      sparsity,
      init_type,
      method,
      rounding,
      dtype,
      check_spec=_check_method,
  )
  if spec.fan_out == 0 or nnz(spec) == 0:
    return _empty(spec, spec.fan_out, spec.fan_in, dtype)
  return contracts.returns_pair(
      _sparse_init_ell_2d(key, spec, dtype, None),
      (spec.fan_out, nnz(spec)),
      (dtype, jnp.int32),
  )


def sharded_sparse_init_ell(
    key: Array,
    shape: Sequence[int],
    sparsity: float = 0.9,
    init_type: str = "uniform",
    *,
    sharding: NamedSharding,
    dtype: Any = jnp.float32,
    method: str = "counter",
    rounding: str = "nearest",
    chunk_rows: int | None = None,
) -> tuple[Array, Array]:
  """`sparse_init_ell` as two global arrays whose rows are split over devices.

  Each device generates only its own rows, `chunk_rows` at a time written in
  place (None: chosen from the tile size), so per-device memory is its share
  of the ELL arrays plus one chunk's temporaries. The result equals
  `sparse_init_ell(key, shape, ...)` exactly, whatever the mesh or chunking.

  Args:
    key: a threefry PRNG key, the same on every process.
    shape: `(fan_out, fan_in)`.
    sparsity: fraction of each output unit's inputs that are zero, as in
      `sparse_init_ell`.
    init_type: "uniform" or "normal", as in `sparse_init_ell`.
    dtype: floating dtype of the values, as in `sparse_init_ell`.
    method: must be "counter", as in `sparse_init_ell`.
    rounding: the zero-count rule, as in `sparse_init_ell`.
    sharding: a `NamedSharding` whose `PartitionSpec` splits at most axis 0
      (the rows), e.g. `PartitionSpec("x")` or `PartitionSpec(("x", "y"))`; a
      row's nonzeros are a whole ELL row, so the columns cannot be split.
    chunk_rows: rows generated per step on each device; None: automatic.

  Returns:
    `(values, indices)`, `[fan_out, nnz]` global arrays laid out as `sharding`.

  Raises:
    ValueError: the spec splits axis 1, or the mesh does not divide `fan_out`,
      or an argument `sparse_init_ell` would also reject.
    TypeError: `sharding` is not a `NamedSharding`, or `chunk_rows` is not an
      int.
  """
  spec, shape, dtype, chunk_rows = driver.prepare(
      "sharded_sparse_init_ell",
      key,
      shape,
      sparsity,
      init_type,
      method,
      rounding,
      dtype,
      chunk_rows,
      two_d=True,
      check_spec=_check_method,
  )
  # Before `tile_layout`, so that a column split is named as such even where
  # the mesh would not divide fan_in either.
  partition = tuple(getattr(sharding, "spec", ()))
  if len(partition) == 2 and partition[1] not in (None, ()):
    rows_only = PartitionSpec(
        partition[0] if partition[0] not in (None, ()) else partition[1]
    )
    raise ValueError(
        "sharded_sparse_init_ell splits rows only, but the PartitionSpec "
        f"{sharding.spec} splits axis 1 (the columns): the ELL arrays are "
        "[fan_out, nnz] and the nonzeros of a row belong together. Split the "
        f"rows instead, e.g. {rows_only}."
    )
  driver.tile_layout(shape, sharding)
  return contracts.returns_pair(
      driver.sharded(ELL, key, spec, dtype, sharding, chunk_rows),
      (spec.fan_out, nnz(spec)),
      (dtype, jnp.int32),
  )


@functools.partial(jax.jit, static_argnames=("fan_in", "ascending"))
def _index_faults(
    indices: Array, fan_in: int, ascending: bool
) -> tuple[Array, Array, Array, Array, Array]:
  """The first out-of-range index, and the first row not strictly ascending.

  Returns `(row, col, value)` of the first index outside `[0, fan_in)` in
  row-major order (row -1 if none), then the first row whose indices are not
  strictly ascending (with `ascending`) or that repeats an index (without,
  after sorting a copy), and that row's first offending position (-1 if none).
  """
  bad = indices < 0
  if fan_in <= jnp.iinfo(indices.dtype).max:
    bad = bad | (indices >= fan_in)
  row_bad = jnp.any(bad, axis=1)
  row = jnp.argmax(row_bad)
  col = jnp.argmax(bad[row])
  value = indices[row, col]
  if indices.shape[1] < 2:  # One index per row is in order and distinct.
    return jnp.where(jnp.any(row_bad), row, -1), col, value, -1, 0
  ordered = indices if ascending else jnp.sort(indices, axis=1)
  wrong = ordered[:, 1:] <= ordered[:, :-1]
  wrong_row = jnp.argmax(jnp.any(wrong, axis=1))
  return (
      jnp.where(jnp.any(row_bad), row, -1),
      col,
      value,
      jnp.where(jnp.any(wrong), wrong_row, -1),
      jnp.argmax(wrong[wrong_row]),
  )


def _check_ell(
    values: Any, indices: Any, shape: Any, name: str, ascending: bool
) -> tuple[int, ...]:
  """Validates ELL arrays for `to_dense` / `to_bcoo`, before any work.

  Shapes and dtypes always. The index values too when they are concrete: each
  in `[0, fan_in)`, distinct within its row, and (`ascending`) strictly
  ascending. Under a trace (`jax.jit`, `vmap`, ...) the values are unknown
  and cannot be checked: there an index `>= fan_in` is dropped by the
  scatter of `to_dense` and a negative one wraps around (NumPy indexing),
  while `to_bcoo` keeps both as given, so the two disagree. Check traced
  arrays before the trace, or with `alberta.verify`.

  Returns:
    `shape` as a tuple of ints (`checks.check_shape`).
  """
  shape = checks.check_shape(shape)
  fan_out, fan_in = shape[0], math.prod(shape[1:])
  if not (hasattr(values, "shape") and hasattr(values, "dtype")):
    raise TypeError(
        f"{name}: values must be an array, got {type(values).__name__}."
    )
  if not (hasattr(indices, "shape") and hasattr(indices, "dtype")):
    raise TypeError(
        f"{name}: indices must be an array, got {type(indices).__name__}."
    )
  if (
      values.ndim != 2
      or values.shape != indices.shape
      or values.shape[0] != fan_out
  ):
    raise ValueError(
        f"{name}: values and indices must both be [fan_out, nnz] with "
        f"fan_out={fan_out} from shape {shape!r}; got {values.shape} and "
        f"{indices.shape}."
    )
  if values.shape[1] > fan_in:
    raise ValueError(
        f"{name}: {values.shape[1]} nonzeros per row do not fit in "
        f"fan_in={fan_in} of shape {shape!r}."
    )
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(
        f"{name}: indices must be integers, got dtype {indices.dtype}."
    )
  if indices.size == 0 or isinstance(indices, jax.core.Tracer):
    return shape
  row, col, value, wrong_row, wrong_col = (
      int(v)
      for v in jax.device_get(
          _index_faults(indices, fan_in=fan_in, ascending=ascending)
      )
  )
  if row >= 0:
    raise ValueError(
        f"{name}: indices[{row}, {col}] = {value} is outside [0, "
        f"fan_in={fan_in}) of shape {shape!r}."
    )
  if wrong_row >= 0:
    found = jax.device_get(indices[wrong_row]).tolist()
    if ascending:
      raise ValueError(
          f"{name}: indices must be strictly ascending within each row, but "
          f"row {wrong_row} has indices[{wrong_row}, {wrong_col + 1}] = "
          f"{found[wrong_col + 1]} after {found[wrong_col]}."
      )
    raise ValueError(
        f"{name}: indices must be distinct within each row, but row "
        f"{wrong_row} repeats {sorted(found)[wrong_col]}."
    )
  return shape


def to_dense(values: Array, indices: Array, shape: Sequence[int]) -> Array:
  """The dense matrix of ELL arrays: `values` scattered at `indices`.

  Args:
    values: `[fan_out, nnz]` weights.
    indices: `[fan_out, nnz]` column indices (into the flattened fan-in), in
      `[0, fan_in)` and distinct within each row.
    shape: the dense shape, `(fan_out, fan_in)` or `(fan_out, *rest)`.

  Returns:
    An array of `shape` and `values.dtype`, +0.0 wherever no value is given.

  Raises:
    ValueError: the shapes do not fit together, or (concrete indices only:
      under `jax.jit` their values are unknown and not checked) an index is
      outside `[0, fan_in)` or repeated within its row; the message names the
      offending index and value.
    TypeError: `indices` are not integers.
  """
  shape = _check_ell(values, indices, shape, "to_dense", ascending=False)
  return contracts.returns(
      _scatter(values, indices, shape), shape, values.dtype
  )


# `to_dense` and `to_bcoo` build their arrays in one compiled program each:
# called eagerly, op by op, they would compile every operation on its own.
@functools.partial(jax.jit, static_argnames=("shape",))
def _scatter(values: Array, indices: Array, shape: tuple[int, ...]) -> Array:
  fan_out, fan_in = shape[0], math.prod(shape[1:])
  rows = jnp.arange(fan_out, dtype=indices.dtype)[:, None]
  dense = jnp.zeros((fan_out, fan_in), values.dtype)
  dense = dense.at[rows, indices].set(values, unique_indices=True)
  return dense.reshape(shape)


def to_bcoo(
    values: Array, indices: Array, shape: Sequence[int]
) -> jsparse.BCOO:
  """The ELL arrays as a `jax.experimental.sparse.BCOO` matrix of `shape`.

  A plain (unbatched) BCOO with `fan_out * nnz` stored entries, sorted and
  unique, so it transposes, multiplies (`bcoo @ x`, `x @ bcoo.T`) and goes
  through `jax.experimental.sparse.sparsify` like any BCOO.

  Args:
    values: `[fan_out, nnz]` weights.
    indices: `[fan_out, nnz]` column indices (into the flattened fan-in), in
      `[0, fan_in)` and strictly ascending within each row, as
      `sparse_init_ell` returns them (the BCOO is declared sorted and unique).
    shape: the dense shape, `(fan_out, fan_in)` or `(fan_out, *rest)`.

  Returns:
    The BCOO matrix; `.todense()` equals `to_dense(values, indices, shape)`.

  Raises:
    ValueError: the shapes do not fit together, or (concrete indices only:
      under `jax.jit` their values are unknown and not checked) an index is
      outside `[0, fan_in)` or a row is not strictly ascending; the message
      names the offending index and value.
    TypeError: `indices` are not integers.
  """
  shape = _check_ell(values, indices, shape, "to_bcoo", ascending=True)
  return jsparse.BCOO(
      _bcoo_arrays(values, indices, shape),
      shape=shape,
      indices_sorted=True,
      unique_indices=True,
  )


@functools.partial(jax.jit, static_argnames=("shape",))
def _bcoo_arrays(
    values: Array, indices: Array, shape: tuple[int, ...]
) -> tuple[Array, Array]:
  """`to_bcoo`'s data and `[fan_out * nnz, len(shape)]` coordinates."""
  indices = indices.astype(jnp.int32)
  rows = jnp.broadcast_to(
      jnp.arange(shape[0], dtype=jnp.int32)[:, None], indices.shape
  )
  coords = (rows,) + tuple(jnp.unravel_index(indices, shape[1:]))
  coords = jnp.stack([c.astype(jnp.int32) for c in coords], axis=-1)
  return values.reshape(-1), coords.reshape(-1, len(shape))
