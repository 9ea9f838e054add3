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
`a_i, b_i` fresh Threefry words per row and round (see "Keys"): Dietzfelbinger's
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
4096 and 77 at `2**32 - 1`: about one more than the simpler count
`2 ceil(log2 N) + 12` for large N, and many more for tiny N, where that count
leaves fan_in 4 at a TV of 1.8e-4 (its opposite pairs `{0, 2}`, `{1, 3}` too
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
output for row `r`. So a value is a pure function of `(key, r, c)`, about 12
integer operations per element instead of Threefry's ~120, which is what makes
the whole method cheaper than `jax.random.uniform`.

Keys. Every random word of row `r` (`row_words`) is an output of one
Threefry-2x32 call under the matrix key's own two words (no key split), on
the 64-bit Threefry counters (hash inputs) `(hi, lo) = (r, j)`,
`j = 0, ..., 2R`:

    j = 0:              (s1, s2), the value hash's row words;
    j = 1 + i:          u_i = w1 2**32 + w2, and K_i = floor(u_i N / 2**64);
    j = 1 + R + i:      (a_i, b_i) = (w1, w2), round i's F_i;

for rounds `i < R = num_rounds(N)`. These hash inputs are distinct, so with
Threefry taken as a random function all these words are independent across
rows, rounds and roles, which is all the analysis above assumes. A block, the
dense generator's or the ELL path's, hashes its rows' inputs in one call, as
the contiguous column ranges of one `[rows, 2R + 1]` array, so any tiling
reads the same words. (The key itself is consumed: `jax.random.split(key)` or
`jax.random.bits(key, ...)` hash the inputs `(0, j)` too, which are row 0's;
as with any JAX function, give sparse_init a key of its own.) The rounds run
unrolled, one fused pass, on large tiles and as a loop on small ones, which
compiles faster; the integer arithmetic is the same, so the bits are too.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from alberta._src import bits

Array = jax.Array
_U32 = jnp.uint32


# The mixing rule's per-row bound: TV distance of a row's zero set from a
# uniform k-subset (see the module docstring).
_TV_BOUND_LOG2 = -13
# Above this the round's `K + n` would wrap in uint32.
_HALF = 2**31
# Tiles of at most this many elements (a 512 x 512 tile) run the rounds as a
# loop (see `permute`): it compiles in 0.1-0.2 s less per program and on one
# CPU core runs 2-3x faster than the unrolled pass, but a loop body runs on one
# thread and on an accelerator costs a pass over the tile per round. From
# 1024 x 1024 on the compile time is the same either way, so larger tiles keep
# the one fused pass, which XLA spreads over the cores.
_ROLLED_ELEMENTS = 2**18


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
  r = max(
      0,
      math.floor((-_TV_BOUND_LOG2 + math.log2(pairs)) / math.log2(den / num))
      - 2,
  )
  while pairs * num**r * 2**-_TV_BOUND_LOG2 > den**r:
    r += 1
  return r


class RowWords(NamedTuple):
  """A block's per-row Threefry words (see the module docstring, "Keys")."""

  value: tuple[Array, Array]  # `(s1, s2)`, each `[rows]`
  rounds: tuple[Array, Array, Array]  # `(K, a, b)`, each `[rows, R]`


def row_words(
    key: tuple[Array, Array], rows: Array, n: int, rounds: bool = True
) -> RowWords:
  """Every per-row word of `rows` for row length `n`: one Threefry call.

  Threefry counters `(hi, lo) = (row, j)` under the matrix's key words:
  `j = 0` gives the value words `(s1, s2)`; `j = 1 + i` gives round `i`'s
  64-bit `u` (first word high), `K_i = floor(u n / 2**64)`, in `[0, n)` with
  every value within `2**-64` of probability `1 / n` (a 32-bit `% n` would be
  off by up to `2**-32`, a per-row TV of `R n 2**-33`, not negligible at large
  `n`); `j = 1 + R + i` gives `(a_i, b_i)`. Without `rounds` only `j = 0` is
  hashed and `rounds` is empty.

  Args:
    key: the key words (`keys.key_words`).
    rows: `[rows]` uint32 global rows.
    n: the row length (fan_in).
    rounds: whether to derive the round material (`num_rounds(n)` rounds).

  Returns:
    The words, `RowWords`.
  """
  r = num_rounds(n) if rounds else 0
  j = jnp.arange(2 * r + 1, dtype=_U32)
  w1, w2 = bits.threefry_fused(key, rows[:, None], j[None, :])
  hi, lo = w1[:, 1 : r + 1], w2[:, 1 : r + 1]
  # (hi 2**32 + lo) n / 2**64: the top word of a 96-bit product.
  hi_hi, hi_lo = bits.mul_add_u64(hi, n)
  lo_hi, _ = bits.mul_add_u64(lo, n)
  ks = hi_hi + ((hi_lo + lo_hi) < hi_lo).astype(_U32)
  return RowWords((w1[:, 0], w2[:, 0]), (ks, w1[:, r + 1 :], w2[:, r + 1 :]))


def _round(
    x: Array, k: Array, kn: Array | None, a: Array, b: Array, n: int
) -> Array:
  """One swap-or-not round; `kn = k + n` is used (and valid) if `n <= 2**31`."""
  if n <= _HALF:
    t = kn - x  # K + n - x, in (0, 2n] <= 2**32
    partner = jnp.minimum(t, t - _U32(n))  # (K - x) mod n: t - n wraps if t < n
  else:
    t = k - x  # wraps (mod 2**32) when x > K
    partner = jnp.where(x > k, t + _U32(n), t)  # exact mod 2**32: result < n
  v = jnp.maximum(x, partner)  # the pair's representative
  swap = (a * v + b).astype(jnp.int32) < 0  # top bit of a*v + b mod 2**32
  return jnp.where(swap, partner, x)


def permute(
    x: Array,
    material,
    n: int,
    *,
    inverse: bool = False,
    rolled: bool | None = None,
) -> Array:
  """Applies the rows' permutations `pi_r` (or their inverses) to `x[r, :]`.

  `x` holds values in `[0, n)`, `n <= 2**32 - 1`; `material` is
  `row_words(...).rounds`. The rounds are unrolled into one elementwise pass
  (spread over the cores on large tiles) or, with `rolled` (default: tiles of
  at most `_ROLLED_ELEMENTS`), a `fori_loop` over rounds, which compiles
  faster. Both give the same bits (integer arithmetic).
  """
  ks, as_, bs = material
  n_rounds = ks.shape[1]
  kn = ks + _U32(n) if n <= _HALF else ks
  if rolled is None:
    rolled = x.size <= _ROLLED_ELEMENTS
  if not rolled or n_rounds <= 1:
    order = range(n_rounds)
    for i in (reversed(order) if inverse else order):
      x = _round(
          x,
          ks[:, i : i + 1],
          kn[:, i : i + 1],
          as_[:, i : i + 1],
          bs[:, i : i + 1],
          n,
      )
    return x

  def body(i, x):
    i = n_rounds - 1 - i if inverse else i
    k, k_n, a, b = (
        lax.dynamic_slice_in_dim(m, i, 1, axis=1) for m in (ks, kn, as_, bs)
    )
    return _round(x, k, k_n, a, b, n)

  return lax.fori_loop(0, n_rounds, body, x)


def keep_mask(
    key: tuple[Array, Array], k: int, n: int, rows: Array, cols: Array
) -> Array:
  """Boolean keep-mask of `rows[:, None]` x `cols[None, :]`: `pi_r(c) >= k`."""
  return _keep(
      row_words(key, rows, n, 0 < k < n).rounds, k, n, rows.shape[0], cols
  )


def _keep(material, k: int, n: int, n_rows: int, cols: Array) -> Array:
  if k == 0:
    return jnp.ones((n_rows, cols.shape[0]), bool)
  if k >= n:
    return jnp.zeros((n_rows, cols.shape[0]), bool)
  x = jnp.broadcast_to(cols[None, :], (n_rows, cols.shape[0]))
  return permute(x, material, n) >= _U32(k)


def hash_values(value_words: tuple[Array, Array], cols: Array) -> Array:
  """32 value bits of `(rows[i], cols[i, j])` from the rows' value words.

  `value_words` is `row_words(...).value`; `cols` is `[n_cols]` (the same
  columns for every row) or `[rows, n_cols]`.
  """
  s1, s2 = value_words
  cols = cols if cols.ndim == 2 else cols[None, :]
  return bits.avalanche(bits.avalanche(cols ^ s1[:, None]) + s2[:, None])


def block_bits(
    key: tuple[Array, Array], k: int, n: int, rows: Array, cols: Array
) -> tuple[Array, Array]:
  """`keep_mask(...)` and the value bits of a block from one Threefry call."""
  words = row_words(key, rows, n, 0 < k < n)
  return (
      _keep(words.rounds, k, n, rows.shape[0], cols),
      hash_values(words.value, cols),
  )
