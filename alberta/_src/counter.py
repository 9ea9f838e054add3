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
multiply-add-shift family, which is exactly pairwise independent over
`v < 2**32` (Dietzfelbinger 1996, Thm. 3). So in every round the swap decisions
of any two pairs are independent fair coins, which is what the mixing argument
below uses, at three integer operations per element.

Rounds. After a round with ideal bits, an element has jumped to a uniformly
random partner `K_i - x` with probability 1/2; once an element (or one member
of a pair) has jumped, its position (their offset) is uniform. The chance that
some element of a row never jumped in `R` rounds is at most `N 2**-R`, and that
some pair was never split at most `N**2 2**-(R+1)`. `R = 2 ceil(log2 N) + 12`
makes the latter at most `2**-13` per row before counting the randomness of
the `K_i`.

What pairwise independence buys exactly, and what is checked empirically. In
one round the images of two columns depend on the bits of at most two pairs,
which multiply-add-shift makes independent fair coins; so the joint law of
`(pi_r(c), pi_r(d))`, hence every column's and every pair's zero frequency, is
exactly that of swap-or-not with a truly random round function. Laws of three
or more columns are not covered (`F_i` is a rotation sequence, not a random
function), so `tests/counter_test.py` checks the k-subset law directly:
chi-square over all subsets of rows of 4 to 8 columns, column and pair
frequencies, hypergeometric overlaps of adjacent rows. With the rounds cut to
8 those tests fail (fan_in 8, k 4); from 10 on they pass, and wider probes
(all 924 6-subsets of 12 columns over 4M rows, triples of 24 columns over 2M
rows, column and block counts at fan_in 65537) pass at the rounds used here:
18 at fan_in 8, ten more than where the tests fail, and more for wider rows.

Values. The weight of `(r, c)` comes from 32 bits of a keyed integer hash of
the column (two rounds of a 32-bit avalanche mixer) under 64 bits of Threefry
output for row `r`. That is a counter-based generator: a pure function of
`(key, r, c)`, about 12 integer operations per element instead of Threefry's
~120, which is what makes the whole method cheaper than `jax.random.uniform`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from alberta._src import bits

Array = jax.Array
_U32 = jnp.uint32


def num_rounds(n: int) -> int:
  """Swap-or-not rounds for a domain of `n` elements (see module docstring)."""
  if n <= 1:
    return 0
  return 2 * math.ceil(math.log2(n)) + 12


def round_keys(mask_key: tuple[Array, Array], rows: Array, n: int):
  """Per-row round material: `K` (in [0, n)), `a` and `b`, each `[rows, R]`.

  Word pairs come from Threefry on counters `(row, 2i)` and `(row, 2i + 1)`
  under the mask key, so they are independent across rows and rounds.
  """
  r = num_rounds(n)
  j = jnp.arange(2 * r, dtype=_U32)
  w1, w2 = bits.threefry(mask_key, rows[:, None], j[None, :])
  # `% n` is biased by at most n / 2**32: below 2**-15 for any n < 2**17.
  return w1[:, 0::2] % _U32(n), w2[:, 0::2], w1[:, 1::2]


def _round(x: Array, k_plus_n: Array, a: Array, b: Array, n: int) -> Array:
  t = k_plus_n - x                       # K + n - x, in (0, 2n)
  partner = jnp.minimum(t, t - _U32(n))  # (K - x) mod n: t - n wraps when t < n
  v = jnp.maximum(x, partner)            # the pair's representative
  swap = (a * v + b).astype(jnp.int32) < 0  # top bit of a*v + b mod 2**32
  return jnp.where(swap, partner, x)


def permute(x: Array, material, n: int, *, inverse: bool = False) -> Array:
  """Applies the rows' permutations `pi_r` (or their inverses) to `x[r, :]`."""
  ks, as_, bs = material
  kn = ks + _U32(n)
  order = range(ks.shape[1])
  for i in (reversed(order) if inverse else order):
    x = _round(x, kn[:, i:i + 1], as_[:, i:i + 1], bs[:, i:i + 1], n)
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
