"""`estimate_stored_bytes`: a save's size on disk, measured on a sample."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from alberta._src.checkpoint import layout
from alberta._src.checkpoint import staging

Array = jax.Array


def _first_rows(x: Any, sample_bytes: int) -> np.ndarray:
  """Up to `sample_bytes` of leading rows of `x`'s first local shard."""
  if isinstance(x, jax.Array):
    x = x.addressable_shards[0].data
  if x.ndim == 0:
    return np.asarray(x).reshape(1)
  row_bytes = max(1, math.prod(x.shape[1:]) * x.dtype.itemsize)
  return np.asarray(x[: max(1, min(x.shape[0], sample_bytes // row_bytes))])


def _stored_fraction(sample: np.ndarray) -> float:
  """The bytes orbax writes for `sample`'s data, as a fraction of its own.

  The sample is saved with the very checkpointer `save` uses, into a
  temporary directory, and so is its first element alone: the difference of
  the two directories' sizes is what the other elements took, whatever
  compression and layout orbax chooses.
  """
  if sample.size == 1:
    return 1.0
  ocp = layout.orbax()
  one = sample.reshape(-1)[:1].reshape((1,) * sample.ndim)
  sizes = []
  with tempfile.TemporaryDirectory(prefix="alberta-estimate-") as scratch:
    for i, data in enumerate((sample, one)):
      directory = f"{scratch}/{i}"
      with layout.checkpointer(ocp, local=True) as checkpointer:
        checkpointer.save(directory, {"sample": data})
        checkpointer.wait_until_finished()
      sizes.append(staging.tree_bytes(directory))
  return max(0, sizes[0] - sizes[1]) / (sample.nbytes - one.nbytes)


def estimate_stored_bytes(
    arrays: Array | np.ndarray | Mapping[str, Any],
    *,
    sample_bytes: int = 4 << 20,
) -> int | None:
  """Estimates the bytes `save(path, arrays)` writes for the arrays' data.

  `save` stores arrays through orbax-checkpoint, compressed, so what a matrix
  takes on disk depends on its values: a sparse float32 matrix at sparsity
  0.9 takes about a quarter of its raw bytes, random values nearly all. This
  measures it: it saves a sample the way `save` does, in a temporary
  directory, up to `sample_bytes` of leading rows of each array's first
  shard held by this process, and scales the sample's stored fraction to the
  whole array (the zero count, hence compressibility, of alberta's matrices
  is the same in every row). It counts array data, not the few KiB of
  metadata files; for a 1 MiB matrix it is within a few percent of the
  checkpoint's size. The launcher uses it to give its progress bar an end.

  Args:
    arrays: a `jax.Array` or NumPy array, or a mapping of names to them, as
      passed to `save`.
    sample_bytes: the most bytes sampled from each array (at least one row).

  Returns:
    The estimated bytes of all arrays together, or None when it cannot be
    estimated (orbax-checkpoint is missing, or it refuses the sample).
    Arrays with no elements count 0.

  Raises:
    TypeError: an entry of `arrays` is not an array.
    ValueError: `sample_bytes` is not a positive integer.
  """
  if (
      isinstance(sample_bytes, bool)
      or not isinstance(sample_bytes, int)
      or sample_bytes <= 0
  ):
    raise ValueError(
        f"sample_bytes must be a positive integer, not {sample_bytes!r}."
    )
  if not isinstance(arrays, Mapping):
    arrays = {"matrix": arrays}
  for name, a in arrays.items():
    if not isinstance(a, (jax.Array, np.ndarray)):
      raise TypeError(
          f"arrays[{name!r}] must be a jax.Array or a NumPy "
          f"array, not {type(a).__name__}."
      )
  total = 0.0
  for a in arrays.values():
    if not a.size:
      continue
    try:
      fraction = _stored_fraction(_first_rows(a, sample_bytes))
    except Exception:  # pylint: disable=broad-exception-caught
      return None  # No orbax, or a dtype it does not store.
    total += fraction * a.size * a.dtype.itemsize
  return int(round(total))
