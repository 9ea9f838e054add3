"""`sparse_init`: the whole matrix on one device."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alberta._src import blocks
from alberta._src import contracts
from alberta._src import driver

Array = jax.Array


def sparse_init(
    key: Array,
    shape: Any,
    sparsity: float = 0.9,
    init_type: str = "uniform",
    *,
    dtype: Any = jnp.float32,
    method: str = "permutation",
    rounding: str = "nearest",
    chunk_rows: int | None = None,
) -> Array:
  """A sparsely initialized weight matrix (Elsayed, Vasan & Mahmood, 2024).

  LeCun-scale weights, uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in))` or normal
  with standard deviation `1/sqrt(fan_in)`, then for every output unit exactly
  `k = num_zeros(fan_in, sparsity, rounding)` of its inputs set to zero, the
  zero set uniform among all k-subsets.

  With the defaults the result equals `alberta_framework`'s `sparse_init` for
  the same key: zero pattern and uniform values bit for bit, normal values
  within 2 float32 ulps (XLA may fuse the normal sampler's arithmetic
  differently in different programs; measured: bit for bit against the
  reference under `jit`, 1 ulp against it run op by op).

  Args:
    key: a threefry PRNG key, `jax.random.key(...)` or
      `jax.random.PRNGKey(...)`.
    shape: `(fan_out, fan_in)`, or `(fan_out, *rest)` with fan-in
      `prod(rest)` (e.g. PyTorch's conv layout `(out, in, kh, kw)`); the result
      is the 2-D matrix reshaped.
    sparsity: fraction of each output unit's inputs set to zero, in [0, 1].
    init_type: "uniform" (LeCun uniform) or "normal" (LeCun normal).
    dtype: floating dtype of the result; values are generated in float32 and
      cast, so a bfloat16 result is the float32 result rounded.
    method: "permutation" reproduces the reference (a sorted random
      permutation per output unit); "counter" is the sort-free, tile-local
      method: same guarantees (exactly k zeros, uniform zero set), other
      numbers; faster on long rows, about as fast on short ones
      (docs/PERFORMANCE.md).
    rounding: the zero-count rule, "nearest" (the reference) or "ceil" (the
      paper).
    chunk_rows: rows generated per step, so that temporaries stay bounded by
      one chunk's; None: the whole matrix at once when its temporaries are a
      small fraction of it, else chunks sized so. Outside any trace each chunk
      is a program of its own that writes its rows into the result in place
      (and uses every core); under `jit` or `vmap` the chunks are a loop in
      the caller's graph. The result does not depend on it.

  Returns:
    An array of `shape` and `dtype`.

  Warns:
    UserWarning: once per call when `k == fan_in`: every output unit's inputs
      are all zeroed (sparsity 0.9 does that at fan_in 5 with "nearest", at
      every fan_in up to 9 with "ceil"). The result is still that all-zero
      matrix, as the reference's rule gives it.

  Examples:
    >>> w = alberta.sparse_init(jax.random.key(0), (256, 128), sparsity=0.9)
    >>> w.shape, w.dtype
    ((256, 128), dtype('float32'))
    >>> np.unique((w == 0).sum(axis=1)).tolist()   # k zeros in every row
    [115]
    >>> bool(jnp.abs(w).max() < 1 / jnp.sqrt(128))
    True
  """
  return sparse_matrix(
      key,
      shape,
      sparsity,
      init_type,
      dtype=dtype,
      method=method,
      rounding=rounding,
      chunk_rows=chunk_rows,
  )


def sparse_matrix(
    key: Array,
    shape: Any,
    sparsity: Any,
    init_type: Any,
    *,
    dtype: Any,
    method: Any,
    rounding: Any,
    chunk_rows: Any,
    what: str | None = None,
) -> Array:
  """`sparse_init`, whose `k == fan_in` warning names `what` (a kernel)."""
  spec, shape, dtype, chunk_rows = driver.prepare(
      "sparse_init",
      key,
      shape,
      sparsity,
      init_type,
      method,
      rounding,
      dtype,
      chunk_rows,
      what=what,
  )
  if spec.fan_out == 0 or spec.fan_in == 0:
    return contracts.returns(jnp.zeros(shape, dtype), shape, dtype)
  out = blocks.generate_matrix(key, spec, dtype, chunk_rows)
  return contracts.returns(out, spec.shape, dtype).reshape(shape)
