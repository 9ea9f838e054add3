"""The sort-free mask: a keyed swap-or-not shuffle evaluated elementwise.

Element `(r, c)` is zero iff `pi_r(c) < k`, where `pi_r` is a pseudo-random
permutation of `[0, fan_in)` private to row `r`. Because `pi_r` is a bijection,
every row has exactly `k` zeros, whatever the shape, and because it is
evaluated per element from `(key, r, c)` alone, any tile of the matrix can be
built on its own, with no sort and no per-row state beyond a few words.

Why swap-or-not (Hoang, Morris & Rogaway, CRYPTO 2012) rather than a Feistel
network: it permutes `[0, N)` for *any* N directly. A Feistel network permutes
a power-of-two (or square) domain and needs cycle-walking to restrict it to
`[0, N)`; elementwise on an accelerator that is a data-dependent loop whose
length is set by the unluckiest element of the whole matrix (tens of walks at
a few million elements). Swap-or-not is a fixed sequence of rounds; round `i`
maps

    x -> x' = (K_i - x) mod N   if F_i(max(x, x')) == 1,   else x stays,

with `K_i` uniform in `[0, N)`. `{x, x'}` is an unordered pair fixed by the
round, and both members see the same bit, so each round is an involution and
the composition a permutation; running the rounds backwards inverts it (the
ELL path uses that to list a row's nonzero columns directly).

Round function. `F_i(v)` is the top bit of `a_i * v + b_i mod 2**32`, with
`a_i, b_i` fresh Threefry words per row and round: Dietzfelbinger's
multiply-add-shift family, exactly pairwise independent over `v < 2**32`
(Dietzfelbinger 1996, Thm. 3), at three integer operations per element.
Flipping the top bit of `b_i` complements every bit, so the bits' law is
symmetric under complement, and a complement-symmetric, pairwise uniform law
of three bits is uniform: the bits of any three representatives are exactly
independent fair coins. In a round the images of three columns depend on the
bits of at most three pairs, so the joint law of `(pi_r(c), pi_r(d),
pi_r(e))`, hence every column's, pair's and triple's zero frequency, is
exactly that of swap-or-not with a truly random round function (Threefry
taken as ideal). From four columns on the bits are not independent (`F_i` is
a rotation sequence, not a random function) and the round function itself
enters the law.

Rounds. Take two elements at positions `x != y` and a round with fair bits.
If `x + y = K (mod N)` (probability 1/N) they form one swap pair: exchanged
or not, they keep the same two positions. If `2x = 2y = K`, possible only for
even N and `y = x + N/2` (probability 1/N for such a pair), both are fixed
points and nothing moves. Otherwise they lie in different pairs, whose
decisions are independent fair coins, and exactly one of them moves with
probability 1/2 (a fixed point never moves; the other element then moves with
probability 1/2): the pair is split, its offset re-drawn from `K`. So a round
leaves a pair unsplit with probability `1/2 + 1/(2N)`, and `1/2 + 1/N` for
the pairs N/2 apart of even N. With `p_N` the larger of those (and `1/2` for
N = 2, whose single pair is exchanged with probability 1/2 in every round
with K = 1, after which the law is exactly uniform), `num_rounds(N)` is the
least `R` with `C(N, 2) p_N**R <= 2**-13`: a union bound over pairs on the
chance that some pair was never split, the per-row TV target. It is a design
rule, not a theorem about the k-subset law (a split pair's offset is only
nearly uniform, and "every pair split" is not shown to make the set
uniform). It gives 13 rounds at N = 2, 38 at 4, 27 at 8, 33 at 1024, 37 at
4096 and 77 at `2**32 - 1`: about one more than the former
`2 ceil(log2 N) + 12` for large N, and many more for tiny N, where that count
left fan_in 4 at a TV of 1.8e-4 (its opposite pairs `{0, 2}`, `{1, 3}` too
rare), above the target.

What is exact and what is tested. `K = floor(u N / 2**64)` of a 64-bit
Threefry word `u`, so each value's probability is within `2**-64` of `1/N`
and the `R` rounds add at most `R N 2**-65` to any TV. For fan_in 2..8,
`tests/counter_test.py` computes the zero set's law exactly, from this `K` law
and the joint law of `F` over all `(a, b)` (counted, not sampled), and checks
that its TV from a uniform k-subset is below `2**-13` for every k at
`num_rounds`. Wider rows rest on the rule above and on sampled probes of the
k-subset law (all subsets of small rows, column, pair and triple frequencies,
overlaps of adjacent rows); docs/COUNTER.md records the exact distances and
what the probes measured.

Sizes. The shuffle permutes `[0, N)` for every `N <= 2**32 - 1`: the partner
`(K - x) mod N` is computed as `K + N - x` (which fits in 32 bits) for
`N <= 2**31`, and with a wrap-aware compare-and-add above.

Values. The weight of `(r, c)` comes from 32 bits of a keyed integer hash of
the column (two rounds of a 32-bit avalanche mixer) under 64 bits of Threefry
output for row `r`. That is a counter-based generator: a pure function of
`(key, r, c)`, about 12 integer operations per element instead of Threefry's
~120, which is what makes the whole method cheaper than `jax.random.uniform`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from alberta._src import bits

Array = jax.Array
_U32 = jnp.uint32


# The mixing rule's per-row bound: TV distance of a row's zero set from a
# uniform k-subset (see the module docstring).
_TV_BOUND_LOG2 = -13
# Above this the round's `K + n` would wrap in uint32.
_HALF = 2**31


@functools.lru_cache(maxsize=None)
def num_rounds(n: int) -> int:
  """Swap-or-not rounds for a domain of `n` elements (see module docstring).

  The smallest `R` with `C(n, 2) p**R <= 2**-13`, where `p` is the largest
  chance that a round leaves a pair of elements unsplit: `1/2 + 1/(2n)` for
  odd `n`, `1/2 + 1/n` for even `n` (the pairs `n/2` apart), `1/2` for
  `n = 2`. Decided in exact integer arithmetic.
  """
  if n <= 1:
    return 0
  pairs = n * (n - 1) // 2
  # C(n,2) (num / den)**R <= 2**-13  <=>  C(n,2) num**R 2**13 <= den**R.
  if n == 2:
    num, den = 1, 2
  elif n % 2:
    num, den = n + 1, 2 * n
  else:
    num, den = n + 2, 2 * n
  r = max(0, math.floor((-_TV_BOUND_LOG2 + math.log2(pairs))
                        / math.log2(den / num)) - 2)
  while pairs * num**r * 2**-_TV_BOUND_LOG2 > den**r:
    r += 1
  return r


def round_keys(mask_key: tuple[Array, Array], rows: Array, n: int):
  """Per-row round material: `K` (in [0, n)), `a` and `b`, each `[rows, R]`.

  Word pairs come from Threefry on counters `(row, 2i)` and `(row, 2i + 1)`
  under the mask key, so they are independent across rows and rounds. `K` is
  `floor(u n / 2**64)` of a 64-bit word `u`: every value has probability
  within `2**-64` of `1 / n` (a 32-bit `% n` would be off by up to `2**-32`,
  summing to a per-row TV of `R n 2**-33`, which is not negligible at large
  `n`).
  """
  r = num_rounds(n)
  j = jnp.arange(2 * r, dtype=_U32)
  w1, w2 = bits.threefry(mask_key, rows[:, None], j[None, :])
  hi, lo = w1[:, 0::2], w2[:, 1::2]
  # (hi 2**32 + lo) n / 2**64: the top word of a 96-bit product.
  hi_hi, hi_lo = bits.mul_add_u64(hi, n)
  lo_hi, _ = bits.mul_add_u64(lo, n)
  ks = hi_hi + ((hi_lo + lo_hi) < hi_lo).astype(_U32)
  return ks, w2[:, 0::2], w1[:, 1::2]


def _round(x: Array, k: Array, kn: Array | None, a: Array, b: Array,
           n: int) -> Array:
  """One swap-or-not round; `kn` is `k + n`, used (and valid) when `n <= 2**31`."""
  if n <= _HALF:
    t = kn - x                             # K + n - x, in (0, 2n] <= 2**32
    partner = jnp.minimum(t, t - _U32(n))  # (K - x) mod n: t - n wraps if t < n
  else:
    t = k - x                              # wraps (mod 2**32) when x > K
    partner = jnp.where(x > k, t + _U32(n), t)  # exact mod 2**32: result < n
  v = jnp.maximum(x, partner)              # the pair's representative
  swap = (a * v + b).astype(jnp.int32) < 0  # top bit of a*v + b mod 2**32
  return jnp.where(swap, partner, x)


def permute(x: Array, material, n: int, *, inverse: bool = False) -> Array:
  """Applies the rows' permutations `pi_r` (or their inverses) to `x[r, :]`.

  `x` holds values in `[0, n)`, `n <= 2**32 - 1`; `material` is `round_keys`'s.
  """
  ks, as_, bs = material
  kn = ks + _U32(n) if n <= _HALF else None
  order = range(ks.shape[1])
  for i in (reversed(order) if inverse else order):
    x = _round(x, ks[:, i:i + 1], None if kn is None else kn[:, i:i + 1],
               as_[:, i:i + 1], bs[:, i:i + 1], n)
  return x


def keep_mask(mask_key: tuple[Array, Array], k: int, n: int, rows: Array,
              cols: Array) -> Array:
  """Boolean keep-mask of `rows[:, None]` x `cols[None, :]`: `pi_r(c) >= k`."""
  if k == 0:
    return jnp.ones((rows.shape[0], cols.shape[0]), bool)
  if k >= n:
    return jnp.zeros((rows.shape[0], cols.shape[0]), bool)
  material = round_keys(mask_key, rows, n)
  x = jnp.broadcast_to(cols[None, :], (rows.shape[0], cols.shape[0]))
  return permute(x, material, n) >= _U32(k)


def _mix(x: Array) -> Array:
  # A 32-bit avalanche finalizer ("lowbias32", C. Wellons' hash prospector).
  x = x ^ (x >> 16)
  x = x * _U32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * _U32(0x846CA68B)
  return x ^ (x >> 16)


def value_bits(init_key: tuple[Array, Array], rows: Array, cols: Array) -> Array:
  """32 value bits of element `(rows[i], cols[i, j])`: a hash keyed by row bits.

  `cols` is `[n_cols]` (the same columns for every row) or `[rows, n_cols]`.
  """
  s1, s2 = bits.threefry(init_key, jnp.zeros_like(rows), rows)
  cols = cols if cols.ndim == 2 else cols[None, :]
  return _mix(_mix(cols ^ s1[:, None]) + s2[:, None])
