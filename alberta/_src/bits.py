"""Random bits addressed by global coordinates: Threefry of an element's index.

`jax.random` (with `jax_threefry_partitionable`, the default since JAX 0.5)
derives the bits of element `i` of a flat array from one Threefry-2x32 call on
its 64-bit index `i` (the Threefry counter), split into two uint32 words. So
any element, row key or tile of the reference's arrays can be computed on its
own from its global index; this module does exactly that, without building the
rest of the array.

It also holds the maps from bits to weights: the reference's (`bits_to_uniform`,
`bits_to_normal`, `jax.random`'s own) and the counter method's, which draw from
an open interval so that a kept weight is never 0; and `cast_nonzero`, the cast
to the output dtype that never rounds a kept weight to zero.

The arithmetic is written in `lax` operations rather than `jnp` operators: the
same graph, traced several times faster. A small layer's first call is mostly
tracing and compiling these hashes (a hash is ~120 operations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

_U32 = jnp.uint32


def check_partitionable() -> None:
  """Raises if `jax_threefry_partitionable` is off.

  With the flag off, `jax.random` lays out its bits differently (one long
  stream of Threefry counters split in halves), so rebuilding a tile from its
  global indices would silently give other numbers than the reference. Refuse
  instead.
  """
  if not jax.config.jax_threefry_partitionable:
    raise RuntimeError(
        "alberta reproduces jax.random's bits tile by tile, which requires "
        "jax.config.jax_threefry_partitionable=True (the JAX default); it is "
        "False in this process. Re-enable it with "
        "jax.config.update('jax_threefry_partitionable', True)."
    )


def _broadcast_u32(*xs) -> list[Array]:
  """`jnp.broadcast_arrays` of `xs` as uint32, in `lax` operations."""
  xs = [
      lax.convert_element_type(x, _U32)
      if getattr(x, "dtype", None) != _U32
      else x
      for x in xs
  ]
  shape = lax.broadcast_shapes(*(np.shape(x) for x in xs))
  out = []
  for x in xs:
    x_shape = np.shape(x)
    if x_shape != shape:
      lead = len(shape) - len(x_shape)
      x = lax.broadcast_in_dim(x, shape, tuple(range(lead, len(shape))))
    out.append(x)
  return out


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry_fused(
    k: tuple[Array, Array], hi: Array, lo: Array
) -> tuple[Array, Array]:
  """`threefry`, written out as elementwise operations (the same words).

  Threefry-2x32 with 20 rounds and a key injection every 4 (Salmon et al.,
  SC 2011), as `threefry2x32_p`. On the CPU that primitive is lowered to a
  rolled 5-step loop over whole arrays, which XLA can neither fuse with its
  neighbours nor compile quickly (a few tenths of a second per call site);
  unrolled, the hash is ~100 elementwise integer operations that fuse into one
  pass. Key words and the hashed words `hi`, `lo` (the Threefry counter)
  broadcast against each other.
  """
  return _threefry_rounds(*_broadcast_u32(k[0], k[1], hi, lo))


@jax.jit
def _threefry_rounds(
    k1: Array, k2: Array, hi: Array, lo: Array
) -> tuple[Array, Array]:
  """`threefry_fused` of four uint32 operands of one shape.

  Jitted so that each shape is traced once per process, and only once lowered
  into a program: a layer's init hashes two `[fan_out, fan_in]` arrays, and a
  network's layers often share their shapes. XLA inlines the call, so the
  compiled program is the same as without the jit.
  """
  add, xor = lax.add, lax.bitwise_xor
  ks = (k1, k2, xor(xor(k1, k2), np.uint32(0x1BD11BDA)))
  x0 = add(hi, ks[0])
  x1 = add(lo, ks[1])
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = add(x0, x1)
      x1 = lax.bitwise_or(
          lax.shift_left(x1, np.uint32(r)),
          lax.shift_right_logical(x1, np.uint32(32 - r)),
      )
      x1 = xor(x0, x1)
    x0 = add(x0, ks[(i + 1) % 3])
    x1 = add(add(x1, ks[(i + 2) % 3]), np.uint32(i + 1))
  return x0, x1


def materialized(x: Array) -> Array:
  """`x` (uint32, `[R, ...]`, `R >= 1`), computed once before its consumers.

  XLA counts integer adds and shifts as cheap and fuses a whole hash (~100
  operations, or a chain of them) into every consumer of its result: a hash
  whose words feed four fusions is compiled, and run, four times, and one
  broadcast into an `[R, m, n]` compare would be recomputed `m` times. An
  optimization barrier does not stop it (the CPU pipeline removes barriers
  before fusion). A division by a divisor that is 1 but not a compile-time
  constant is an operation XLA does not duplicate, so `x` is computed in a
  fusion of its own and its consumers read it.
  """
  one = lax.broadcast_in_dim(opaque_ones(x), x.shape, (0,))
  return lax.div(x, one)


def opaque_ones(x: Array) -> Array:
  """`[R]` uint32 ones that XLA cannot tell are ones, from `x` (`[R, ...]`).

  `(x[r, 0, ...] >> 31) | 1`: XLA does not fold it to a constant, so what is
  divided or multiplied by it depends on `x`'s data. `materialized` divides by
  it; `permutation` multiplies a constant by it so that XLA does not compute
  the constant once, outside a loop, and keep it alive through the loop.
  """
  first = lax.slice(x.reshape(x.shape[0], -1), (0, 0), (x.shape[0], 1))
  return lax.bitwise_or(
      lax.shift_right_logical(first, np.uint32(31)), np.uint32(1)
  ).reshape(x.shape[0])


def mul_add_u64(a: Array, b: int, c: Array | int = 0) -> tuple[Array, Array]:
  """`a * b + c` as 64-bit `(hi, lo)` uint32 words, for uint32 `a`, `c`.

  `b` is a static Python int below 2**32. XLA has no 32x32->64 multiply when
  x64 is off, so the product is assembled from 16-bit limbs; every partial
  product fits in uint32 and carries are recovered by unsigned comparison.
  """
  if not 0 <= b < 2**32:
    raise ValueError(f"multiplier must be in [0, 2**32), got {b}")
  a = lax.convert_element_type(a, _U32)
  add, mul, lt = lax.add, lax.mul, lax.lt
  shl, shr = lax.shift_left, lax.shift_right_logical

  def u32(v):
    return lax.convert_element_type(v, _U32)

  a_lo, a_hi = lax.bitwise_and(a, np.uint32(0xFFFF)), shr(a, np.uint32(16))
  b_lo, b_hi = np.uint32(b & 0xFFFF), np.uint32(b >> 16)
  ll = mul(a_lo, b_lo)
  lh = mul(a_lo, b_hi)
  hl = mul(a_hi, b_lo)
  hh = mul(a_hi, b_hi)
  mid = add(lh, hl)
  mid_carry = u32(lt(mid, lh))
  lo = add(ll, shl(mid, np.uint32(16)))
  lo_carry = u32(lt(lo, ll))
  hi = add(
      add(add(hh, shr(mid, np.uint32(16))), shl(mid_carry, np.uint32(16))),
      lo_carry,
  )
  if isinstance(c, int) and c == 0:
    return hi, lo
  return add_u64(*_broadcast_u32(hi, lo, c))


def add_u64(hi: Array, lo: Array, c: Array) -> tuple[Array, Array]:
  """`(hi, lo) + c` as 64-bit `(hi, lo)` uint32 words (mod 2**64)."""
  total = lax.add(lo, c)
  return lax.add(hi, lax.convert_element_type(lax.lt(total, lo), _U32)), total


def sum_u64(values: Array) -> tuple[Array, Array]:
  """The exact sum of a uint32 array's elements as 64-bit `(hi, lo)` words.

  Exact integer arithmetic (below 2**64 terms' worth), so the result does not
  depend on the order of the reduction, hence not on the sharding.
  """
  values = values.reshape(-1)
  return lax.reduce(
      (jnp.zeros_like(values), values),
      (_U32(0), _U32(0)),
      lambda a, b: add_u64(lax.add(a[0], b[0]), a[1], b[1]),
      (0,),
  )


def join_u64(hi: int | np.integer, lo: int | np.integer) -> int:
  """The Python int of 64-bit `(hi, lo)` words read back to the host."""
  return int(hi) << 32 | int(lo)


# The shifts and odd multipliers of a 32-bit xorshift-multiply mixer:
# C. Wellons' "lowbias32" (hash prospector, 2018) and A. Appleby's
# MurmurHash3 fmix32 (2011). Each is a bijection of uint32.
LOWBIAS32 = (16, 0x7FEB352D, 15, 0x846CA68B, 16)
FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)


def avalanche(x: Array, mixer: tuple[int, ...] = LOWBIAS32) -> Array:
  """`x ^= x >> s1; x *= m1; x ^= x >> s2; x *= m2; x ^= x >> s3` on uint32."""
  s1, m1, s2, m2, s3 = mixer
  x = x ^ (x >> s1)
  x = x * _U32(m1)
  x = x ^ (x >> s2)
  x = x * _U32(m2)
  return x ^ (x >> s3)


def bits_to_unit_float(bits: Array) -> Array:
  """Maps uint32 bits to float32 in [0, 1) as `jax.random.uniform` does."""
  mantissa = lax.bitwise_or(
      lax.shift_right_logical(bits, np.uint32(9)),
      np.float32(1.0).view(np.uint32),
  )
  return lax.sub(
      lax.bitcast_convert_type(mantissa, jnp.float32), np.float32(1.0)
  )


def bits_to_uniform(bits: Array, minval: float, maxval: float) -> Array:
  """`jax.random.uniform(key, ..., float32, minval, maxval)` from its bits."""
  lo = np.float32(minval)
  width = np.float32(maxval) - lo  # float32, as the traced difference would be.
  floats = bits_to_unit_float(bits)
  return lax.max(lo, lax.add(lax.mul(floats, width), lo))


# The contract on normal values: within this many float32 ulps of the
# reference's `jax.random.normal` for the same bits. XLA may fuse `erf_inv`'s
# arithmetic differently in different programs; measured on the CPU, 0 ulps
# against the reference under `jit` and at most 1 against it run op by op.
NORMAL_MAX_ULPS = 2


def bits_to_normal(bits: Array) -> Array:
  """`jax.random.normal(key, ..., float32)` from its bits."""
  lo = np.nextafter(np.float32(-1.0), np.float32(0.0), dtype=np.float32)
  u = bits_to_uniform(bits, lo, 1.0)
  return jnp.float32(np.sqrt(2)) * lax.erf_inv(u)


# The counter method's grid: 2**23 odd multiples of 2**-23, symmetric about 0.
_OPEN_BITS = 23


def bits_to_open_unit(bits: Array) -> Array:
  """Maps uint32 bits to float32 in the open interval (-1, 1), never 0.

  With `m = bits >> 9` (the top 23 bits, as `jax.random.uniform` uses), the
  value is `(2 m + 1 - 2**23) * 2**-23`: the midpoints of 2**23 equal cells of
  [-1, 1], i.e. exactly uniform on the grid of odd multiples of 2**-23 between
  `-(1 - 2**-23)` and `1 - 2**-23`. The odd integer has at most 23 bits, so the
  int-to-float conversion and the power-of-two scaling are exact; the grid is
  symmetric (mean exactly 0) and does not contain 0.
  """
  odd = lax.convert_element_type((bits >> 9) << 1, jnp.int32) - jnp.int32(
      2**_OPEN_BITS - 1
  )
  return lax.convert_element_type(odd, jnp.float32) * jnp.float32(
      2.0**-_OPEN_BITS
  )


def bits_to_open_uniform(bits: Array, scale: float) -> Array:
  """Uniform float32 weights in the open interval `(-scale, scale)`, never 0.

  `bits_to_open_unit(bits) * float32(scale)`, one rounding: the 2**23-point
  grid of `bits_to_open_unit` scaled. Every product is nonzero (at least
  `2**-23 * scale >= 2**-39` for `scale >= 2**-16`, i.e. any fan-in below
  2**32) and strictly below `float32(scale)` in magnitude, since
  `(1 - 2**-23) * scale` rounds to at most the float32 below `scale`.
  """
  return bits_to_open_unit(bits) * jnp.float32(scale)


def bits_to_open_normal(bits: Array) -> Array:
  """Standard normal float32 values, never 0: `sqrt(2) erf_inv(u)`.

  `u = bits_to_open_unit(bits)`, the symmetric 2**23-point grid in (-1, 1)
  without 0, so the result is the normal quantile at the grid's points: never 0
  (`sqrt(2) erf_inv(u)` is about `1.25 u` near 0, so at least ~1.5e-7), finite
  (the extreme `|u| = 1 - 2**-23` gives +-5.29) and symmetric.
  """
  return jnp.float32(np.sqrt(2)) * lax.erf_inv(bits_to_open_unit(bits))


def cast_nonzero(values: Array, dtype) -> Array:
  """`values.astype(dtype)`, except that no nonzero value becomes zero.

  A nonzero value that the cast rounds to zero becomes the smallest subnormal
  of `dtype` (2**-24 for float16) with the value's sign; every other value,
  zeros of either sign included, is the plain cast. From float32 that happens
  only in float16, to `|w| <= 2**-25` (half its smallest subnormal, which
  rounds to even, i.e. to 0). bfloat16 has float32's exponent range, so only
  float32 subnormals could round to zero, and XLA already reads those as zero
  (no generated weight is one: they are at least 2**-39 in magnitude). Since
  masked weights are +-0.0 before the cast, kept weights stay nonzero and
  masked ones keep their sign. For a `dtype` that holds every
  value of `values.dtype` (float32 to float32 or float64) it is the plain cast.

  Args:
    values: the float32 tile or ELL values.
    dtype: the output dtype, one `checks.check_dtype` accepts.

  Returns:
    The values in `dtype`.
  """
  dtype = jnp.dtype(dtype)
  cast = values.astype(dtype)
  tiny = jnp.finfo(dtype).smallest_subnormal
  if tiny <= jnp.finfo(values.dtype).smallest_subnormal:
    return cast
  flushed = (values != 0) & (cast == 0)
  tiny = jnp.asarray(tiny, dtype)
  return jnp.where(flushed, jnp.where(jnp.signbit(values), -tiny, tiny), cast)
