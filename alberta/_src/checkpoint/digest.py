"""The checksum of an array, computed where the data lives, and what it reads.

`save` records `summaries` of every array in alberta.json and `restore`
recomputes them from what it read, with the same on-device function; see
`digest` for the construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alberta._src import bits
from alberta._src import sharding

Array = jax.Array

# Per lane: a seed and a 32-bit mixer (bijections of uint32).
_LANES = ((0x243F6A88, bits.LOWBIAS32), (0x85A308D3, bits.FMIX32))


def unreadable(dtype: np.dtype) -> str | None:
  """Why `digest` cannot read arrays of `dtype` exactly, or None if it can.

  It reads boolean, integer and floating dtypes whose elements fill their
  1, 2, 4 or 8 bytes (not int4, float4 and the like, packed in a byte), in
  the machine's byte order.
  """
  if not dtype.isnative:
    return f"byte order {dtype.byteorder!r}, not the machine's"
  if jnp.issubdtype(dtype, jnp.bool_):
    width = 8
  elif jnp.issubdtype(dtype, jnp.integer):
    width = jnp.iinfo(dtype).bits
  elif jnp.issubdtype(dtype, jnp.floating):
    width = jnp.finfo(dtype).bits
  else:
    return "not a boolean, integer or floating dtype"
  if dtype.itemsize not in (1, 2, 4, 8) or width != 8 * dtype.itemsize:
    return f"{width}-bit elements stored in {dtype.itemsize} byte(s)"
  return None


def check_dtype(name: str, dtype: Any) -> np.dtype:
  """Raises unless `arrays[name]` of `dtype` can be saved and read exactly."""
  dtype = np.dtype(dtype)
  why = unreadable(dtype)
  if why:
    raise TypeError(
        f"arrays[{name!r}] has dtype {dtype.str} ({dtype.name}): {why}; "
        "alberta.checkpoint cannot checksum it. Save boolean, integer or "
        "floating arrays of 1, 2, 4 or 8 bytes per element, in native byte "
        "order."
    )
  if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
    raise TypeError(
        f"arrays[{name!r}] has dtype {dtype.name}, but jax_enable_x64 is off, "
        f"so JAX would hold it as a 32-bit {dtype.kind}-type array: other "
        "numbers than those stored. Enable it (`jax.config.update("
        "'jax_enable_x64', True)` or JAX_ENABLE_X64=1), or convert the "
        "array to a 32-bit dtype first."
    )
  return dtype


def _words(x: Array) -> list[Array]:
  """The element bit patterns as uint32 words (two for 64-bit types)."""
  if x.dtype == jnp.bool_:
    return [x.astype(jnp.uint32)]
  size = jnp.dtype(x.dtype).itemsize
  if size == 8:
    pair = lax.bitcast_convert_type(x, jnp.uint32)  # Shape x.shape + (2,).
    return [pair[..., 0], pair[..., 1]]
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
  return [lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)]


@jax.jit
def digest(x: Array) -> dict[str, Array]:
  """The checksum of `x` and, for 2-D floating `x`, its row-zero counts.

  Construction: for lane k in {0, 1}, every element contributes the term
      t_k = m_k(... m_k(m_k(m_k(s_k ^ i_0) ^ i_1) ... ^ w_0) ... ^ w_last)
  where (i_0, i_1, ...) is the element's global index (one uint32 per
  dimension), (w_0, ...) the uint32 words of its bit pattern (16- and 8-bit
  types zero-extended, 64-bit types split in two words), s_k a seed and m_k a
  32-bit mixer (`bits.avalanche`: Wellons' lowbias32 for lane 0, MurmurHash3's
  fmix32 for lane 1). The lane value is the sum of all terms mod 2**32; the
  checksum is the two lanes, 64 bits.

  Properties. The sum is exact integer arithmetic, so it does not depend on
  the order of the reduction, hence not on the sharding: XLA reduces each
  shard where it lives and all-reduces the partial sums to one replicated
  scalar; no array is gathered. For a fixed index each term is a bijection of
  the element's bits, so changing one element (any single-bit flip, any
  change to one value) changes exactly one term and therefore both lane sums,
  always. Changes to several elements (a corrupted compressed block) go
  undetected only if both lane sums collide, about 2**-64 for mixers that
  behave like random functions. Moving a value to another index changes its
  term too: the checksum is order-sensitive.

  Reference: C. Wellons, "Prospecting for Hash Functions" (2018), for
  lowbias32; A. Appleby, MurmurHash3 (2011), for fmix32.

  Args:
    x: an array of a dtype `unreadable` accepts.

  Returns:
    {"checksum": uint32[2]} plus, when `x` is 2-D floating and not empty,
    {"row_zeros": (min, max, (total_hi, total_lo))} of the zeros per row (an
    entry is a zero when it equals 0, so -0.0 counts).
  """
  words = _words(x)
  index = [lax.broadcasted_iota(jnp.uint32, x.shape, d) for d in range(x.ndim)]
  lanes = []
  for seed, mixer in _LANES:
    h = jnp.full(x.shape, seed, jnp.uint32)
    for part in index + words:
      h = bits.avalanche(h ^ part, mixer)
    lanes.append(jnp.sum(h, dtype=jnp.uint32))
  out = {"checksum": jnp.stack(lanes)}
  if x.ndim == 2 and x.size and jnp.issubdtype(x.dtype, jnp.floating):
    counts = jnp.sum(x == 0, axis=1, dtype=jnp.uint32)
    out["row_zeros"] = (counts.min(), counts.max(), bits.sum_u64(counts))
  return out


def summaries(arrays: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """`digest` of each array, as the JSON fields stored in alberta.json."""
  digests = {name: digest(a) for name, a in arrays.items()}  # All dispatched.
  out = {}
  for name, found in sharding.replicated_to_host(digests).items():
    fields = {"checksum": "".join(f"{int(w):08x}" for w in found["checksum"])}
    if "row_zeros" in found:
      low, high, total = found["row_zeros"]
      fields["row_zeros"] = {
          "min": int(low),
          "max": int(high),
          "total": bits.join_u64(*total),
      }
    out[name] = fields
  return out
