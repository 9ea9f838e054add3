"""`SparseInit`: the Haiku initializer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from alberta._src import layouts


class SparseInit(hk.initializers.Initializer):
  """Sparse initialization (Elsayed, Vasan & Mahmood 2024) for Haiku kernels.

  LeCun-scale weights, uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in))` (or
  normal with that standard deviation), with exactly
  `num_zeros(fan_in, sparsity, rounding)` of every output unit's inputs set to
  zero, the zero set uniform among all such subsets.

  For a kernel of shape `(..., in, out)` (`hk.Linear`, `hk.Conv1D/2D/3D`) the
  fan-in is `prod(shape[:-1])` and the result is
  `sparse_init(hk.next_rng_key(), (out, fan_in)).T.reshape(shape)`, so with the
  default method it is the reference's matrix for that key.

  When `num_zeros(fan_in, sparsity, rounding) == fan_in` (sparsity 0.9 at
  fan_in 5 with "nearest", at any fan_in up to 9 with "ceil"), the kernel is
  all zeros, as the reference's rule makes it, and each such kernel raises one
  `UserWarning` naming its shape, the sparsity and the rounding.

  Examples:
    >>> import haiku as hk
    >>> def forward(x):
    ...   return hk.nets.MLP([256, 256, 4], w_init=alberta.SparseInit(0.9))(x)
    >>> params = hk.transform(forward).init(
    ...     jax.random.key(0), jnp.ones([1, 64]))
    >>> w = params["mlp/~/linear_0"]["w"]   # (in, out): 64 inputs, 256 units
    >>> np.unique((w == 0).sum(axis=0)).tolist()
    [58]
  """

  def __init__(
      self,
      sparsity: float = 0.9,
      init_type: str = "uniform",
      *,
      fan_in_axes: Sequence[int] | None = None,
      method: str = "permutation",
      rounding: str = "nearest",
  ):
    """Constructs the initializer; every argument is checked here.

    Args:
      sparsity: fraction of each output unit's inputs set to zero, in [0, 1].
      init_type: "uniform" (LeCun uniform) or "normal" (LeCun normal).
      fan_in_axes: as in `hk.initializers.VarianceScaling`: the axes holding an
        output unit's inputs; default all but the last.
      method: "permutation" (the reference's numbers) or "counter"
        (sort-free).
      rounding: zero-count rule, "nearest" (the reference) or "ceil" (the
        paper).
    """
    self.sparsity = layouts.check_options(sparsity, init_type, method, rounding)
    self.init_type = init_type
    self.fan_in_axes = layouts.check_fan_in_axes(fan_in_axes)
    self.method = method
    self.rounding = rounding

  def __repr__(self) -> str:
    return f"alberta.SparseInit({layouts.options_repr(self)})"

  def __call__(
      self, shape: Sequence[int], dtype: Any = jnp.float32
  ) -> jax.Array:
    return layouts.sparse_kernel(
        hk.next_rng_key(),
        shape,
        dtype,
        sparsity=self.sparsity,
        init_type=self.init_type,
        method=self.method,
        rounding=self.rounding,
        fan_in_axes=self.fan_in_axes,
    )
