"""The static description of one sparse matrix, shared by every code path."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from alberta._src import checks


@dataclasses.dataclass(frozen=True)
class SparseSpec:
  """Everything about a sparse matrix except the key; hashable, so jit-static.

  Attributes:
    fan_out: number of output units (rows of the 2-D layout).
    fan_in: number of inputs of each output unit (columns).
    k: number of zeros in every row, `num_zeros(fan_in, sparsity, rounding)`.
    init_type: "uniform" (LeCun uniform) or "normal" (LeCun normal).
    method: "permutation" (the reference's algorithm) or "counter"
      (sort-free).
  """

  fan_out: int
  fan_in: int
  k: int
  init_type: str
  method: str

  @property
  def scale(self) -> float:
    """LeCun scale `1 / sqrt(fan_in)` in Python float, as in the reference."""
    return 1.0 / self.fan_in**0.5

  @property
  def shape(self) -> tuple[int, int]:
    return (self.fan_out, self.fan_in)


def make_spec(
    shape: Any, sparsity: Any, init_type: Any, method: Any, rounding: Any
) -> tuple[SparseSpec, tuple[int, ...]]:
  """Validates the arguments of a sparse-init call and builds its spec.

  Args:
    shape: `(fan_out, fan_in, *more)`; the fan-in is `prod(shape[1:])`.
    sparsity: fraction of inputs zeroed per output unit.
    init_type: "uniform" or "normal".
    method: "permutation" or "counter".
    rounding: "nearest" or "ceil".

  Returns:
    The spec of the 2-D `(fan_out, fan_in)` matrix and the validated shape.
  """
  shape = checks.check_shape(shape)
  checks.check_sparsity(sparsity)
  checks.check_init_type(init_type)
  checks.check_method(method)
  checks.check_rounding(rounding)
  fan_in = math.prod(shape[1:])
  if fan_in > checks.MAX_DIM:
    raise ValueError(f"shape has fan_in {fan_in} >= 2**32, got {shape!r}.")
  k = checks.num_zeros(fan_in, sparsity, rounding)
  return SparseSpec(shape[0], fan_in, k, init_type, method), shape
