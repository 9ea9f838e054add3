"""`sparse`: the `jax.nn.initializers`-style factory (Flax, Equinox)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.nn.initializers import Initializer

from alberta._src import layouts


class _Sparse:
  """A sparse initializer, `init(key, shape, dtype=jnp.float32)`; `sparse`'s."""

  def __init__(
      self,
      sparsity: float,
      init_type: str,
      fan_in_axes: tuple[int, ...] | None,
      method: str,
      rounding: str,
  ):
    self.sparsity = sparsity
    self.init_type = init_type
    self.fan_in_axes = fan_in_axes
    self.method = method
    self.rounding = rounding

  def __call__(
      self, key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32
  ) -> jax.Array:
    return layouts.sparse_kernel(
        key,
        shape,
        dtype,
        sparsity=self.sparsity,
        init_type=self.init_type,
        method=self.method,
        rounding=self.rounding,
        fan_in_axes=self.fan_in_axes,
    )

  def __repr__(self) -> str:
    return f"alberta.initializers.sparse({layouts.options_repr(self)})"


def sparse(
    sparsity: float = 0.9,
    init_type: str = "uniform",
    *,
    fan_in_axes: Sequence[int] | None = None,
    method: str = "permutation",
    rounding: str = "nearest",
) -> Initializer:
  """Builds a sparse initializer `init(key, shape, dtype=jnp.float32)`.

  Same distribution and layout rule as `SparseInit`: for a Flax kernel
  `(..., in, out)` every output unit (last axis) has exactly
  `num_zeros(prod(shape[:-1]), sparsity, rounding)` zeros. Equinox's weights
  are `(out, in, ...)`, the other way round: with the default `fan_in_axes`
  this would zero along the wrong axis. For a whole Equinox model use
  `alberta.sparsify`, which knows that layout; for one weight pass
  `fan_in_axes=tuple(range(1, weight.ndim))`, or call `sparse_init` directly.
  A kernel whose zero count is its whole fan-in is all zeros and raises one
  `UserWarning` naming its shape, the sparsity and the rounding.

  Args:
    sparsity: fraction of each output unit's inputs set to zero, in [0, 1].
    init_type: "uniform" (LeCun uniform) or "normal" (LeCun normal).
    fan_in_axes: the axes holding an output unit's inputs; default all but
      the last.
    method: "permutation" (the reference's numbers) or "counter" (sort-free).
    rounding: zero-count rule, "nearest" (the reference) or "ceil" (the paper).

  Returns:
    The initializer, a `jax.nn.initializers.Initializer`. Arguments are
    checked here, before it is ever called.

  Examples:
    >>> init = alberta.initializers.sparse(0.9)
    >>> kernel = init(jax.random.key(0), (64, 32))   # (in, out), as Flax's
    >>> np.unique((kernel == 0).sum(axis=0)).tolist()   # per output unit
    [58]
    >>> import flax.linen as nn
    >>> dense = nn.Dense(256, kernel_init=alberta.initializers.sparse(0.9))
    >>> params = dense.init(jax.random.key(0), jnp.ones([1, 64]))
    >>> params["params"]["kernel"].shape
    (64, 256)
  """
  sparsity = layouts.check_options(sparsity, init_type, method, rounding)
  return _Sparse(
      sparsity,
      init_type,
      layouts.check_fan_in_axes(fan_in_axes),
      method,
      rounding,
  )
