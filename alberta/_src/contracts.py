"""What the entry points return, asserted with chex: shapes and dtypes.

Every public entry point passes its result through `returns` (or
`returns_pair`) before handing it back, as DeepMind's libraries assert their
contracts with chex. The checks read static shapes and dtypes only: outside a
trace they cost microseconds, and under `jax.jit` or `jax.vmap` they run once,
while tracing, and add nothing to the compiled program. A failure is a bug in
alberta, not in the caller's arguments (those are checked first, in
`checks`, with alberta's own messages).

chex is imported on the first call, not with `alberta`: it takes about as
long to import as the rest of alberta.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def returns(x: Any, shape: Sequence[int], dtype: Any) -> Any:
  """`x`, after asserting that it is an array of `shape` and `dtype`."""
  import chex  # pylint: disable=g-import-not-at-top

  chex.assert_shape(x, tuple(shape))
  chex.assert_type(x, dtype)
  return x


def returns_pair(
    pair: tuple[Any, Any], shape: Sequence[int], dtypes: tuple[Any, Any]
) -> tuple[Any, Any]:
  """`pair`, after asserting both arrays' `shape` and their `dtypes`."""
  import chex  # pylint: disable=g-import-not-at-top

  chex.assert_shape(pair, tuple(shape))
  chex.assert_type(pair, dtypes)
  return pair
