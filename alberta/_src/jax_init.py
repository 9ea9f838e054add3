"""`sparse`: the `jax.nn.initializers`-style factory (Flax, Equinox)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from alberta._src import kernels


class Initializer(Protocol):
  """The `jax.nn.initializers` calling convention."""

  def __call__(self, key: jax.Array, shape: Sequence[int],
               dtype: Any = jnp.float32) -> jax.Array:
    ...


def sparse(sparsity: float = 0.9, init_type: str = "uniform", *,
           fan_in_axes: Sequence[int] | None = None,
           method: str = "permutation", rounding: str = "nearest") -> Initializer:
  """Builds a sparse initializer `init(key, shape, dtype=jnp.float32)`.

  Same distribution and layout rule as `SparseInit`: for a Flax kernel
  `(..., in, out)` every output unit (last axis) has exactly
  `num_zeros(prod(shape[:-1]), sparsity, rounding)` zeros. For Equinox's
  `(out, in)` weights pass `fan_in_axes=(1,)`, or call `sparse_init` directly.

  Example::

    nn.Dense(256, kernel_init=alberta.initializers.sparse(0.9))

  Args:
    sparsity: fraction of each output unit's inputs set to zero, in [0, 1].
    init_type: "uniform" (LeCun uniform) or "normal" (LeCun normal).
    fan_in_axes: the axes holding an output unit's inputs; default all but
      the last.
    method: "permutation" (the seed's numbers) or "counter" (sort-free).
    rounding: zero-count rule, "nearest" (the seed) or "ceil" (the paper).

  Returns:
    The initializer. Arguments are checked here, before it is ever called.
  """
  sparsity = kernels.check_options(sparsity, init_type, method, rounding)
  fan_in_axes = kernels.check_fan_in_axes(fan_in_axes)

  def init(key: jax.Array, shape: Sequence[int],
           dtype: Any = jnp.float32) -> jax.Array:
    return kernels.sparse_kernel(
        key, shape, dtype, sparsity=sparsity, init_type=init_type,
        method=method, rounding=rounding, fan_in_axes=fan_in_axes)

  return init
