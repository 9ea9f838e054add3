"""Kernel layouts: sparse init of `(..., in, out)` Haiku/Flax kernels and more.

The core works on the reference's `(fan_out, fan_in)` matrix. A kernel has
output axes and fan-in axes; its sparse init is the core matrix of shape
`(prod(output axes), prod(fan-in axes))` laid back into the kernel, so every
output unit has exactly `num_zeros(fan_in)` zeros among its inputs. For the
Haiku/Flax layout `(..., in, out)` that is `sparse_init(key, (out, fan_in))
.T.reshape(shape)`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alberta._src import checks
from alberta._src import contracts
from alberta._src import one_device

Array = jax.Array


def check_fan_in_axes(fan_in_axes: Any) -> tuple[int, ...] | None:
  """Validates `fan_in_axes`: None, or a non-empty sequence of distinct ints."""
  if fan_in_axes is None:
    return None
  if isinstance(fan_in_axes, (str, bytes)) or not isinstance(
      fan_in_axes, Sequence
  ):
    raise TypeError(
        f"fan_in_axes must be None or a sequence of ints, got {fan_in_axes!r}."
    )
  axes = []
  for a in fan_in_axes:
    if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral):
      raise TypeError(
          f"fan_in_axes must contain only ints, got {fan_in_axes!r}."
      )
    axes.append(int(a))
  if not axes or len(set(axes)) != len(axes):
    raise ValueError(
        "fan_in_axes must be non-empty and without repeats, got"
        f" {fan_in_axes!r}."
    )
  return tuple(axes)


def check_options(
    sparsity: Any, init_type: Any, method: Any, rounding: Any
) -> Any:
  """Construction-time checks shared by `SparseInit` and `initializers.sparse`.

  Returns `sparsity` as given (a NumPy scalar keeps its type: the zero count
  is evaluated in it, see `num_zeros`).
  """
  checks.check_sparsity(sparsity)
  checks.check_init_type(init_type)
  checks.check_method(method)
  checks.check_rounding(rounding)
  return sparsity


def options_repr(init: Any) -> str:
  """`sparsity, init_type, ...` of an initializer, for its `repr`.

  Keyword arguments appear only where they differ from their defaults, so the
  text is the shortest call that rebuilds the initializer.
  """
  parts = [repr(init.sparsity), repr(init.init_type)]
  defaults = dict(fan_in_axes=None, method="permutation", rounding="nearest")
  for name, default in defaults.items():
    value = getattr(init, name)
    if value != default:
      parts.append(f"{name}={value!r}")
  return ", ".join(parts)


def fan_in_and_out_axes(
    shape: tuple[int, ...], fan_in_axes: tuple[int, ...] | None
) -> tuple[list[int], list[int]]:
  ndim = len(shape)
  if fan_in_axes is None:
    return list(range(ndim - 1)), [ndim - 1]
  axes = []
  for a in fan_in_axes:
    if not -ndim <= a < ndim:
      raise ValueError(
          f"fan_in_axes {fan_in_axes!r} out of range for a kernel of shape"
          f" {shape!r}."
      )
    axes.append(a % ndim)
  if len(set(axes)) != len(axes):
    raise ValueError(
        f"fan_in_axes {fan_in_axes!r} repeat an axis of a kernel of shape"
        f" {shape!r}."
    )
  out_axes = [a for a in range(ndim) if a not in axes]
  if not out_axes:
    raise ValueError(
        f"fan_in_axes {fan_in_axes!r} leave no output axis in shape {shape!r}."
    )
  return axes, out_axes


def sparse_kernel(
    key: Array,
    shape: Any,
    dtype: Any,
    *,
    sparsity: float,
    init_type: str,
    method: str,
    rounding: str,
    fan_in_axes: tuple[int, ...] | None,
    name: str | None = None,
) -> Array:
  """A sparse kernel of `shape` whose fan-in axes are `fan_in_axes`.

  Args:
    key: PRNG key.
    shape: kernel shape, rank >= 2.
    dtype: floating dtype of the result.
    sparsity: fraction of each output unit's inputs set to zero, as in
      `sparse_init`.
    init_type: "uniform" or "normal", as in `sparse_init`.
    method: "permutation" or "counter", as in `sparse_init`.
    rounding: the zero-count rule, as in `sparse_init`.
    fan_in_axes: the axes holding an output unit's inputs; default all but the
      last (Haiku and Flax kernels, `(..., in, out)`).
    name: the kernel's name in its model (its path), for the warning.

  Returns:
    The kernel; every output unit has exactly `num_zeros(fan_in)` zeros.

  Warns:
    UserWarning: once per kernel when `k == fan_in` (all zeros), naming the
      kernel's shape, the sparsity and the rounding.
  """
  shape = checks.check_shape(shape, min_rank=2)
  dtype = checks.check_dtype(dtype)
  axes, out_axes = fan_in_and_out_axes(shape, fan_in_axes)
  fan_in = math.prod(shape[a] for a in axes)
  n_out = math.prod(shape[a] for a in out_axes)
  what = f"kernel of shape {shape}"
  if name is not None:
    what = f"kernel {name!r} of shape {shape}"
  matrix = one_device.sparse_matrix(
      key,
      (n_out, fan_in),
      sparsity,
      init_type,
      dtype=dtype,
      method=method,
      rounding=rounding,
      chunk_rows=None,
      what=what,
  )
  order = out_axes + axes
  kernel = matrix.reshape([shape[a] for a in order])
  return contracts.returns(
      jnp.transpose(kernel, np.argsort(order)), shape, dtype
  )
