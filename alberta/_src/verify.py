"""Checks that a matrix (dense or ELL) is what `sparse_init` promises.

`verify` reads a generated matrix once, where it lives (one jitted reduction
over a possibly sharded `jax.Array`; only scalars come back to the host), and
checks the contract of `sparse_init` / `sparse_init_ell`:

* zeros per row: every row of the dense matrix holds `k = num_zeros(fan_in,
  sparsity, rounding)` zeros. With `method="counter"` that is exact: that
  method never keeps a weight of 0.0. With `method="permutation"` (the
  reference's) a kept weight is exactly 0.0 with probability about 2**-23
  (uniform float32 values lie on a grid that contains 0), so a row holds *at
  least* `k` zeros and the extras, summed over the matrix, must stay within
  `excess_zero_allowance` (a false alarm of 1e-9 on a correct matrix);
* values: finite, and `|w| <= value_bound` (the largest weight the generator
  can produce in that dtype);
* ELL arrays (`values, indices`, each `[fan_out, nnz]`): every index in
  `[0, fan_in)` and each row's indices strictly ascending (hence distinct);
  the dense zeros of a row are then its `fan_in - nnz` absent columns plus any
  stored 0.0 values, held to the same zero-count rule.

A failure raises `VerificationError` (a `ValueError`) whose message lists every
violated check with its count and the first offending row; the report is its
`report` attribute.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alberta._src import bits
from alberta._src import checks
from alberta._src import sharding
from alberta._src.spec import SparseSpec, make_spec

Array = jax.Array

# The probability that `verify` rejects a correct permutation-method matrix
# because too many kept weights rounded to exactly zero.
EXCESS_ZERO_FALSE_ALARM_RATE = 1e-9
# Slack on the normal bound, in float32 ulps: XLA may fuse `erf_inv`
# differently in different programs, moving a value by up to
# `bits.NORMAL_MAX_ULPS`; four times that, so that no platform's fusion makes
# `verify` reject a correct matrix (a wrong one is off by far more).
_NORMAL_BOUND_SLACK_ULPS = 4 * bits.NORMAL_MAX_ULPS


class VerificationError(ValueError):
  """A matrix failed `verify`; `report` holds every finding."""

  def __init__(self, message: str, report: "VerificationReport"):
    super().__init__(message)
    self.report = report


@dataclasses.dataclass(frozen=True)
class VerificationReport:
  """What `verify` found; `passed` iff `failures` is empty.

  Attributes:
    format: "dense" or "ell".
    shape: the dense matrix's `(fan_out, fan_in)`.
    method: the mask method the zero-count rule was taken from.
    dtype: the values' dtype name.
    rows: rows checked (`fan_out`).
    zeros_per_row: `k`, the zeros every row must hold.
    min_zeros_per_row, max_zeros_per_row: the fewest and most zeros in a row
      of the dense matrix (for ELL: absent columns plus stored 0.0 values).
    rows_below_k, rows_above_k: rows with fewer / more than `k` zeros.
    excess_zeros: zeros beyond `k`, summed over the rows.
    excess_zero_allowance: how many excess zeros are accepted: 0 for the
      counter method, else chance's bound at a 1e-9 false-alarm rate.
    nonfinite: NaN or infinite values.
    out_of_bound: finite values with `|w| > value_bound`.
    value_bound: the largest |weight| the generator can produce, in `dtype`.
    max_abs: the largest finite |value| found.
    nonzeros_per_row: ELL only: the arrays' width `nnz`; None for dense.
    indices_out_of_range: ELL only: indices outside `[0, fan_in)`.
    rows_unsorted: ELL only: rows whose indices decrease somewhere.
    rows_with_repeats: ELL only: rows with two equal neighbouring indices (in
      a sorted row, exactly the rows with a repeated index).
    failures: one message per violated check; empty when `passed`.
  """

  format: str
  shape: tuple[int, int]
  method: str
  dtype: str
  rows: int
  zeros_per_row: int
  min_zeros_per_row: int
  max_zeros_per_row: int
  rows_below_k: int
  rows_above_k: int
  excess_zeros: int
  excess_zero_allowance: int
  nonfinite: int
  out_of_bound: int
  value_bound: float
  max_abs: float
  nonzeros_per_row: int | None = None
  indices_out_of_range: int | None = None
  rows_unsorted: int | None = None
  rows_with_repeats: int | None = None
  failures: tuple[str, ...] = ()

  @property
  def passed(self) -> bool:
    return not self.failures

  def as_dict(self) -> dict[str, Any]:
    """The fields and `passed`, JSON-serializable."""
    found = dataclasses.asdict(self)
    found["shape"] = list(self.shape)
    found["failures"] = list(self.failures)
    found["passed"] = self.passed
    return found


def value_bound(spec: SparseSpec, dtype: Any) -> np.ndarray:
  """The largest |weight| the generator can produce for `spec`, in `dtype`.

  Uniform weights lie in `[-scale, scale)` (float32 `scale = 1 /
  sqrt(fan_in)`). Normal weights are `sqrt(2) erfinv(u) * scale` at the
  sampler's most extreme `u` (its input bits all zeros or all ones), plus a
  few float32 ulps for the different ways XLA may fuse `erf_inv`. Values are
  generated in float32 and cast, and rounding is monotonic, so the float32
  bound cast to `dtype` holds in `dtype`. A host scalar of `dtype`.
  """
  scale = np.float32(spec.scale)
  if spec.init_type == "uniform":
    bound = scale
  else:
    extremes = np.array([0, 2**32 - 1], np.uint32)
    normal = np.asarray(jax.jit(bits.bits_to_normal)(extremes))
    bound = np.float32(np.max(np.abs(normal)) * scale)
    for _ in range(_NORMAL_BOUND_SLACK_ULPS):
      bound = np.nextafter(bound, np.float32(np.inf), dtype=np.float32)
  return np.asarray(np.asarray(bound, np.float32).astype(dtype))


def excess_zero_allowance(spec: SparseSpec, dtype: Any) -> int:
  """How many kept weights of a permutation-method matrix may be exactly 0.

  A kept weight is zero by chance: uniform float32 values sit on a grid of
  2**-23 steps that contains 0 (probability 2**-23; a narrower dtype's cast
  never flushes a kept weight to zero, it keeps the smallest subnormal). With
  `n = fan_out * (fan_in - k)` kept weights the count is a sum of independent
  Bernoullis of mean `lam <= n p`, and Bernstein's inequality bounds
  P(count >= lam + t) by exp(-t**2 / (2 (lam + t / 3))), which is
  `EXCESS_ZERO_FALSE_ALARM_RATE` (1e-9) at the `t` used. The counter method
  never keeps a zero: its allowance is 0.
  """
  if spec.method == "counter":
    return 0
  del dtype  # The cast keeps kept weights nonzero in every accepted dtype.
  p = 2.0**-23
  lam = spec.fan_out * (spec.fan_in - spec.k) * p
  c = math.log(1 / EXCESS_ZERO_FALSE_ALARM_RATE)
  return int(lam + c / 3 + math.sqrt(c * c / 9 + 2 * c * lam))


def _first(row_flags: Array) -> Array:
  """The first row where `row_flags` holds, or -1."""
  return jnp.where(jnp.any(row_flags), jnp.argmax(row_flags), -1).astype(
      jnp.int32
  )


@functools.partial(jax.jit, static_argnames=("fan_in", "check_indices"))
def _stats(
    values: Array,
    indices: Array | None,
    bound: Array,
    k: Array,
    *,
    fan_in: int,
    check_indices: bool,
) -> dict[str, Any]:
  """Every check of a `[rows, width]` block of values in one pass per row.

  A dense matrix is the case `width == fan_in` without indices. Per row, one
  variadic reduction counts the zero values, non-finite values and finite
  values above `bound`, and finds the largest finite |value|; the row's dense
  zeros are its zero values plus its `fan_in - width` absent columns. ELL
  indices add out-of-range counts and neighbour comparisons (local when a
  row is whole on one device). The per-row results, sharded like the rows,
  are then reduced to scalars, replicated on every device.
  """
  u32 = jnp.uint32
  magnitude = jnp.abs(values)
  finite = jnp.isfinite(values)
  operands = (
      (values == 0).astype(u32),
      (~finite).astype(u32),
      (finite & (magnitude > bound)).astype(u32),
      jnp.where(finite, magnitude, 0).astype(jnp.float32),
  )
  zeros, nonfinite, over, largest = lax.reduce(
      operands,
      (u32(0), u32(0), u32(0), jnp.float32(0)),
      lambda a, b: (a[0] + b[0], a[1] + b[1], a[2] + b[2], lax.max(a[3], b[3])),
      (1,),
  )
  zeros = zeros + u32(fan_in - values.shape[1])
  k = k.astype(u32)
  excess = jnp.maximum(zeros, k) - k
  stats = dict(
      min_zeros=jnp.min(zeros),
      max_zeros=jnp.max(zeros),
      rows_below_k=jnp.sum(zeros < k, dtype=u32),
      first_below_k=_first(zeros < k),
      rows_above_k=jnp.sum(zeros > k, dtype=u32),
      first_above_k=_first(zeros > k),
      excess_zeros=bits.sum_u64(excess),
      nonfinite=bits.sum_u64(nonfinite),
      first_nonfinite=_first(nonfinite > 0),
      out_of_bound=bits.sum_u64(over),
      first_out_of_bound=_first(over > 0),
      max_abs=jnp.max(largest),
  )
  if check_indices:
    out_of_range = indices < 0
    if fan_in <= jnp.iinfo(indices.dtype).max:
      out_of_range = out_of_range | (indices >= fan_in)
    bad = jnp.sum(out_of_range, axis=1, dtype=u32)
    unsorted = jnp.any(indices[:, 1:] < indices[:, :-1], axis=1)
    repeats = jnp.any(indices[:, 1:] == indices[:, :-1], axis=1)
    stats.update(
        indices_out_of_range=bits.sum_u64(bad),
        first_out_of_range=_first(bad > 0),
        rows_unsorted=jnp.sum(unsorted, dtype=u32),
        first_unsorted=_first(unsorted),
        rows_with_repeats=jnp.sum(repeats, dtype=u32),
        first_repeat=_first(repeats),
    )
  return stats


def _host(stats: dict[str, Any]) -> dict[str, Any]:
  """The scalars on the host; a `bits.sum_u64` pair becomes one exact int."""
  local = sharding.replicated_to_host(stats)
  return {
      name: bits.join_u64(*value) if isinstance(value, tuple) else value.item()
      for name, value in local.items()
  }


def _n(count: int, noun: str, plural: str | None = None) -> str:
  """`count` and `noun`, plural unless `count` is 1."""
  return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _rows(count: int, what: str, first: int) -> str:
  return f"{_n(count, 'row')} {what} (first: row {first})"


def _is_ell(matrix: Any) -> bool:
  return isinstance(matrix, (tuple, list))


def verify(
    matrix: Array | tuple[Array, Array],
    sparsity: float = 0.9,
    init_type: str = "uniform",
    *,
    shape: Sequence[int] | None = None,
    method: str | None = None,
    rounding: str = "nearest",
    dtype: Any = None,
    raise_on_failure: bool = True,
) -> VerificationReport:
  """Checks a `sparse_init` matrix, or the ELL pair of `sparse_init_ell`.

  The arguments are those of the call that made the matrix; the matrix is
  read once where it lives (a sharded `jax.Array` stays sharded, each device
  reducing its own rows) and only scalars reach the host. The checks and the
  zero-count rule are those of the module docstring: exactly `k` zeros per
  row for `method="counter"`; at least `k`, with extras within
  `excess_zero_allowance` (1e-9 false alarms), for `method="permutation"`;
  finite values within `value_bound`; for ELL, indices in `[0, fan_in)` and
  strictly ascending in each row.

  Args:
    matrix: the dense matrix, `[fan_out, fan_in]` or `[fan_out, *rest]`; or a
      `(values, indices)` pair of `[fan_out, nnz]` arrays (ELL).
    sparsity: as given to `sparse_init`.
    init_type: "uniform" or "normal", as given to `sparse_init`.
    shape: the dense shape; required for ELL (its fan-in is not in the
      arrays), optional for a dense matrix (then it must match).
    method: "permutation" or "counter", as given to `sparse_init`; None:
      `sparse_init`'s default, "permutation", for a dense matrix, and
      "counter" (the only method `sparse_init_ell` has) for ELL arrays.
    rounding: "nearest" or "ceil", as given to `sparse_init`.
    dtype: the dtype the matrix must have; None: whatever it has.
    raise_on_failure: raise `VerificationError` on a failed check (default);
      False returns the report either way.

  Returns:
    The `VerificationReport`.

  Raises:
    VerificationError: a check failed (and `raise_on_failure`); its message
      names each failed check, its count and its first row, and its `report`
      attribute holds the findings.
    ValueError, TypeError: an argument `sparse_init` would reject, arrays that
      are not floating (values) and integer (indices), or shapes that do not
      fit together.

  Examples:
    >>> w = alberta.sparse_init(jax.random.key(0), (64, 32), 0.9)
    >>> alberta.verify(w, 0.9, "uniform").passed
    True
  """
  ell = _is_ell(matrix)
  if ell:
    if len(matrix) != 2:
      raise ValueError(
          "matrix must be a dense array or a (values, indices) pair, got a "
          f"sequence of {len(matrix)} items."
      )
    values, indices = matrix
    if shape is None:
      raise ValueError(
          "verify needs shape=(fan_out, fan_in) for ELL arrays: their width "
          "is nnz, not the matrix's fan_in."
      )
    for name, array in (("values", values), ("indices", indices)):
      if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(array).__name__}.")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
      raise TypeError(f"indices must be integers, got dtype {indices.dtype}.")
  else:
    values, indices = matrix, None
    if not hasattr(values, "shape") or not hasattr(values, "dtype"):
      raise TypeError(
          "matrix must be an array or a (values, indices) pair, got "
          f"{type(values).__name__}."
      )
    if shape is None:
      shape = tuple(values.shape)
  if method is None:
    method = "counter" if ell else "permutation"
  spec, shape = make_spec(shape, sparsity, init_type, method, rounding)
  if ell and spec.method != "counter":
    raise ValueError(
        "ELL arrays come only from method='counter' (sparse_init_ell has no "
        f"other), got method={method!r}."
    )
  try:
    checks.check_dtype(values.dtype)
  except TypeError as e:
    raise TypeError(f"{'values' if ell else 'matrix'}: {e}") from None
  if ell:
    if (
        values.ndim != 2
        or tuple(values.shape) != tuple(indices.shape)
        or values.shape[0] != spec.fan_out
        or values.shape[1] > spec.fan_in
    ):
      raise ValueError(
          "values and indices must both be [fan_out, nnz] with "
          f"fan_out={spec.fan_out} and nnz <= fan_in={spec.fan_in} from shape "
          f"{shape!r}; got {tuple(values.shape)} and {tuple(indices.shape)}."
      )
  elif tuple(values.shape) != shape:
    raise ValueError(
        f"matrix has shape {tuple(values.shape)}, but shape={shape!r}."
    )
  failures = []
  if dtype is not None:
    dtype = checks.check_dtype(dtype)
    if values.dtype != dtype:
      failures.append(f"dtype is {values.dtype.name}, expected {dtype.name}")

  bound = value_bound(spec, values.dtype)
  allowance = excess_zero_allowance(spec, values.dtype)
  width = values.shape[1] if ell else spec.fan_in
  common = dict(
      format="ell" if ell else "dense",
      shape=spec.shape,
      method=spec.method,
      dtype=jnp.dtype(values.dtype).name,
      rows=spec.fan_out,
      zeros_per_row=spec.k,
      excess_zero_allowance=allowance,
      value_bound=float(np.asarray(bound, np.float32)),
  )
  if ell:
    common.update(nonzeros_per_row=width)
  if spec.fan_out == 0 or width == 0:
    # Nothing stored: each row's zeros are its absent columns.
    zeros = spec.fan_in - width
    found = dict(
        min_zeros=zeros,
        max_zeros=zeros,
        rows_below_k=spec.fan_out if zeros < spec.k else 0,
        first_below_k=0,
        rows_above_k=spec.fan_out if zeros > spec.k else 0,
        first_above_k=0,
        excess_zeros=spec.fan_out * max(zeros - spec.k, 0),
        nonfinite=0,
        out_of_bound=0,
        max_abs=0.0,
    )
    if spec.fan_out == 0:
      found.update(min_zeros=0, max_zeros=0)
    if ell:
      found.update(indices_out_of_range=0, rows_unsorted=0, rows_with_repeats=0)
  else:
    if not ell:
      values = values.reshape(spec.fan_out, spec.fan_in)
    found = _host(
        _stats(
            values,
            indices,
            bound,
            np.uint32(spec.k),
            fan_in=spec.fan_in,
            check_indices=ell,
        )
    )

  k = spec.k
  if found["rows_below_k"]:
    failures.append(
        _rows(
            found["rows_below_k"],
            f"with fewer than k={k} zeros (min {found['min_zeros']})",
            found["first_below_k"],
        )
    )
  if spec.method == "counter":
    if found["rows_above_k"]:
      failures.append(
          _rows(
              found["rows_above_k"],
              f"with more than k={k} zeros (max "
              f"{found['max_zeros']}; method='counter' never keeps a zero "
              "weight)",
              found["first_above_k"],
          )
      )
  elif found["excess_zeros"] > allowance:
    failures.append(
        f"{_n(found['excess_zeros'], 'zero')} beyond k={k} per row (in "
        f"{_n(found['rows_above_k'], 'row')}, first: row "
        f"{found['first_above_k']}; "
        f"max {found['max_zeros']} in a row), more than the {allowance} that "
        "kept weights rounding to zero explain at a "
        f"{EXCESS_ZERO_FALSE_ALARM_RATE:g} false-alarm rate"
    )
  if found["nonfinite"]:
    failures.append(
        f"{_n(found['nonfinite'], 'non-finite value')} (first in "
        f"row {found['first_nonfinite']})"
    )
  if found["out_of_bound"]:
    failures.append(
        f"{_n(found['out_of_bound'], 'value')} above the bound "
        f"{common['value_bound']:.9g} in magnitude (max |value| "
        f"{found['max_abs']:.9g}, first in row {found['first_out_of_bound']})"
    )
  if ell:
    if found["indices_out_of_range"]:
      failures.append(
          f"{_n(found['indices_out_of_range'], 'index', 'indices')} outside "
          f"[0, fan_in={spec.fan_in}) (first in row "
          f"{found['first_out_of_range']})"
      )
    if found["rows_unsorted"]:
      failures.append(
          _rows(
              found["rows_unsorted"],
              "with indices not in ascending order",
              found["first_unsorted"],
          )
      )
    if found["rows_with_repeats"]:
      failures.append(
          _rows(
              found["rows_with_repeats"],
              "with a repeated index",
              found["first_repeat"],
          )
      )

  report = VerificationReport(
      min_zeros_per_row=int(found["min_zeros"]),
      max_zeros_per_row=int(found["max_zeros"]),
      rows_below_k=int(found["rows_below_k"]),
      rows_above_k=int(found["rows_above_k"]),
      excess_zeros=int(found["excess_zeros"]),
      nonfinite=int(found["nonfinite"]),
      out_of_bound=int(found["out_of_bound"]),
      max_abs=float(found["max_abs"]),
      indices_out_of_range=found.get("indices_out_of_range"),
      rows_unsorted=found.get("rows_unsorted"),
      rows_with_repeats=found.get("rows_with_repeats"),
      failures=tuple(failures),
      **common,
  )
  if failures and raise_on_failure:
    kind = "ELL arrays" if ell else "matrix"
    raise VerificationError(
        f"{kind} of shape {tuple(spec.shape)} failed verification: "
        + "; ".join(failures)
        + ".",
        report,
    )
  return report
