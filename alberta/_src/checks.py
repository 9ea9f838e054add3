"""The zero-count rule and the argument checks every entry point shares.

Every public function validates its arguments here, in plain Python, before any
tracing or compilation, so a bad argument fails fast with a message that names
the argument and the value it was given.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

INIT_TYPES = ("uniform", "normal")
ROUNDINGS = ("nearest", "ceil")
# The mask methods' names; `methods.METHODS` holds one implementation each.
METHOD_NAMES = ("permutation", "counter")

# Threefry counters (hash inputs) are 64-bit (two uint32 words) and row /
# column indices are uint32.
MAX_DIM = 2**32 - 1


def check_sparsity(sparsity: Any) -> float:
  """Returns `sparsity` as a Python float, or raises if it is not in [0, 1]."""
  if isinstance(sparsity, (bool, np.bool_)) or not isinstance(
      sparsity, numbers.Real
  ):
    raise TypeError(
        f"sparsity must be a real number in [0, 1], got {sparsity!r} "
        f"of type {type(sparsity).__name__}."
    )
  value = float(sparsity)
  if not math.isfinite(value) or not 0.0 <= value <= 1.0:
    raise ValueError(
        f"sparsity must be a real number in [0, 1], got {sparsity!r}."
    )
  return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
  """Raises unless `value` is one of the strings in `choices`."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
  return value


def check_init_type(init_type: Any) -> str:
  return check_choice("init_type", init_type, INIT_TYPES)


def check_method(method: Any) -> str:
  return check_choice("method", method, METHOD_NAMES)


def check_rounding(rounding: Any) -> str:
  return check_choice("rounding", rounding, ROUNDINGS)


def check_shape(
    shape: Any, *, min_rank: int = 2, name: str = "shape"
) -> tuple[int, ...]:
  """Returns `shape` as a tuple of non-negative Python ints, or raises."""
  if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
    raise TypeError(f"{name} must be a sequence of integers, got {shape!r}.")
  dims = []
  for d in shape:
    if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
      raise TypeError(
          f"{name} must contain only integers, got {shape!r} "
          f"(element {d!r} of type {type(d).__name__})."
      )
    if d < 0:
      raise ValueError(
          f"{name} must not have negative dimensions, got {shape!r}."
      )
    if d > MAX_DIM:
      raise ValueError(f"{name} dimensions must be below 2**32, got {shape!r}.")
    dims.append(int(d))
  if len(dims) < min_rank:
    raise ValueError(
        f"{name} must have rank >= {min_rank} (fan_out, fan_in, ...), "
        f"got {shape!r} of rank {len(dims)}."
    )
  return tuple(dims)


# The output dtypes: each holds every generated weight without flushing it to
# zero (`bits.cast_nonzero` guards float16's few tiny ones). float8 and float4
# types would turn many kept weights into zeros (or, without a zero, NaNs).
DTYPES = ("float16", "bfloat16", "float32", "float64")


def check_dtype(dtype: Any) -> np.dtype:
  """Returns `dtype` as a canonical NumPy dtype, or raises.

  Accepts exactly float16, bfloat16, float32 and float64 (given as a type, a
  NumPy dtype or a name) in native byte order; everything else (float8 and
  float4 types, integers, bool, complex, a non-native byte order such as
  '>f4') is a TypeError naming the dtype. Without `jax_enable_x64`,
  float64 is truncated to float32 with a warning, as `jax.numpy` does.
  """
  accepted = ", ".join(DTYPES)
  try:
    dt = jnp.dtype(dtype)
  except TypeError as e:
    raise TypeError(
        f"dtype must be one of {accepted}, got {dtype!r}, which is not a dtype."
    ) from e
  if not dt.isnative:
    raise TypeError(
        f"dtype must be one of {accepted} in the machine's byte order, got "
        f"{dtype!r} (byte order {dt.byteorder!r}); pass {dt.name!r}, or use "
        "dtype.newbyteorder('=')."
    )
  if dt.name not in DTYPES:
    shown = repr(dtype) if dt.name in repr(dtype) else f"{dtype!r} ({dt.name})"
    raise TypeError(
        f"dtype must be one of {accepted}, got {shown}; narrower floats "
        "(float8, float4 types) would round kept weights to zero and break "
        "the exact zero count per output unit."
    )
  # Without jax_enable_x64, JAX has no float64 arrays: truncate to float32 and
  # warn, as jax.random and jax.numpy do, instead of failing the dtype assert.
  canonical = jax.dtypes.canonicalize_dtype(dt)
  if canonical != dt:
    warnings.warn(
        f"dtype {dt} requested but not available, truncated to {canonical}; "
        f"set jax_enable_x64 (e.g. `with jax.enable_x64(True):`) for {dt}.",
        UserWarning,
        stacklevel=3,
    )
  return np.dtype(canonical)


def num_zeros(fan_in: int, sparsity: float, rounding: str = "nearest") -> int:
  """The number of inputs zeroed per output unit.

  Args:
    fan_in: number of inputs of each output unit.
    sparsity: fraction of the inputs to zero, in [0, 1].
    rounding: "nearest" is the reference's (`alberta_framework`'s)
      `int(sparsity * fan_in + 0.5)`; "ceil" is the paper's and its PyTorch
      code's `math.ceil(sparsity * fan_in)`. Each is evaluated in the
      arithmetic of `sparsity`'s own type, exactly as those codes evaluate
      it when given the same argument: a Python float (or NumPy float64) in
      binary64, so for example `num_zeros(100, 0.07, "ceil") == 8` because
      `0.07 * 100 == 7.000000000000001` (while `0.7 * 10 == 7.0` exactly, so
      `num_zeros(10, 0.7, "ceil") == 7`); a NumPy float32 or float16 scalar
      in its own precision, so `num_zeros(5, np.float32(0.9)) == 5` (the
      float32 product rounds to 4.5) while `num_zeros(5, 0.8999999761581421)
      == 4`.

  Returns:
    The zero count `k`, an int in [0, fan_in].

  Raises:
    TypeError: `fan_in` is not an integer or `sparsity` not a real number.
    ValueError: `fan_in` is negative, `sparsity` is outside [0, 1], or the
      expression overflows `sparsity`'s type (a float16 scalar times a
      fan_in above 65504).

  Examples:
    >>> alberta.num_zeros(128, 0.9)
    115
    >>> (alberta.num_zeros(100, 0.55, "nearest"),
    ...  alberta.num_zeros(100, 0.55, "ceil"))
    (55, 56)
  """
  if isinstance(fan_in, (bool, np.bool_)) or not isinstance(
      fan_in, numbers.Integral
  ):
    raise TypeError(f"fan_in must be an integer, got {fan_in!r}.")
  if fan_in < 0:
    raise ValueError(f"fan_in must be non-negative, got {fan_in!r}.")
  value = check_sparsity(sparsity)
  check_rounding(rounding)
  fan_in = int(fan_in)
  # A NumPy float scalar keeps its type through `sparsity * fan_in + 0.5`
  # (NEP 50: the Python int is cast to it), as in the reference.
  product = sparsity if isinstance(sparsity, np.floating) else value
  with np.errstate(over="raise"):
    try:
      product = product * fan_in
      k = int(product + 0.5) if rounding == "nearest" else math.ceil(product)
    except (FloatingPointError, OverflowError) as e:
      raise ValueError(
          f"sparsity={sparsity!r} is a {type(sparsity).__name__} scalar, in "
          "whose arithmetic the zero count's sparsity * fan_in overflows at "
          f"fan_in={fan_in}; pass sparsity as a Python float."
      ) from e
  return min(int(k), fan_in)


def check_chunk_rows(chunk_rows: Any) -> int | None:
  """`chunk_rows` must be None or a positive int."""
  if chunk_rows is None:
    return None
  if isinstance(chunk_rows, (bool, np.bool_)) or not isinstance(
      chunk_rows, numbers.Integral
  ):
    raise TypeError(
        f"chunk_rows must be None or a positive int, got {chunk_rows!r}."
    )
  if chunk_rows <= 0:
    raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}.")
  return int(chunk_rows)


# Frames of these packages are the library's or the framework's that called
# it (a Haiku module calling `SparseInit`, a jitted function being traced).
_LIBRARY_PACKAGES = ("alberta", "haiku", "flax", "equinox", "jax", "optax")


def user_stacklevel() -> int:
  """`warnings.warn`'s stacklevel of the innermost frame of the user's code.

  The first frame, from the caller of this function outwards, whose module is
  in none of `_LIBRARY_PACKAGES`: a warning then points at the user's line
  whichever public function, and through however many of the library's or
  the framework's layers, raised it.
  """
  frame, level = sys._getframe(1), 1  # pylint: disable=protected-access
  while (
      frame.f_back is not None
      and frame.f_globals.get("__name__", "").split(".")[0] in _LIBRARY_PACKAGES
  ):
    frame, level = frame.f_back, level + 1
  return level


def warn_if_all_zero(
    what: str, fan_out: int, fan_in: int, k: int, sparsity: float, rounding: str
) -> None:
  """Warns (a `UserWarning`) when every input of every output unit is zeroed.

  `k == fan_in` makes a (non-empty) matrix all zeros: with
  sparsity 0.9 and the default rounding that is already fan_in 5
  (`int(4.5 + 0.5) == 5`), and with `"ceil"` every fan_in up to 9. The
  matrix is still the one asked for (the rule is the reference's and the
  paper's); the warning says so once per call.

  Args:
    what: the array, e.g. "shape (4, 5)" or "kernel 'mlp/w' of shape (5, 4)".
    fan_out: the matrix's number of output units (rows).
    fan_in: the matrix's number of inputs per output unit (columns).
    k: the zero count per output unit.
    sparsity: the sparsity that gave `k`.
    rounding: the rounding rule that gave `k`.
  """
  if fan_out == 0 or fan_in == 0 or k != fan_in:
    return
  warnings.warn(
      f"sparse init of {what} zeroes all {fan_in} inputs of every output "
      f"unit: num_zeros({fan_in}, sparsity={sparsity!r}, "
      f"rounding={rounding!r}) == fan_in, so the result is all zeros. Lower "
      "the sparsity to keep some inputs.",
      UserWarning,
      stacklevel=user_stacklevel(),
  )
