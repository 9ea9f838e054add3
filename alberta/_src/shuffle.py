"""The reference's shuffle, followed element by element: keys, bits, two paths.

`jax.random.permutation(row_key, n)` (JAX 0.10, `jax._src.random.core._shuffle`)
runs `num_rounds(n)` stable key-value sorts of the row on fresh 32-bit sort
bits. `permutation` (its module docstring has the whole construction) follows
only the `m = min(k, n - k)` elements that make the mask through those rounds;
this module holds what every way of doing so shares (the row and round keys,
the sort bits, gathers and fused counts) and two of the ways: the sort path
(`followed_mask`: a one-operand sort, binary searches and an exact tie loop)
and the compare path (`compared_mask`: each followed element compared with the
whole row). `permutation` adds the third, the search path, and chooses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alberta._src import bits

Array = jax.Array

_U32 = jnp.uint32


def num_rounds(n: int) -> int:
  """Sort rounds of `jax.random.permutation(key, n)`: its own static formula."""
  uint32max = np.iinfo(np.uint32).max
  return int(np.ceil(3 * np.log(max(1, n)) / np.log(uint32max)))


def threefry(k1: Array, k2: Array, hi: Array, lo: Array) -> tuple[Array, Array]:
  """`bits.threefry_fused` with the key words given apart (they broadcast)."""
  return bits.threefry_fused((k1, k2), hi, lo)


def row_keys(mask_key: tuple[Array, Array], rows: Array) -> tuple[Array, Array]:
  """`jax.random.split(mask_key, fan_out)[rows]`, as key words.

  Hashed by the unrolled `threefry`: the `threefry2x32_p` primitive costs a
  few tenths of a second to compile on the CPU (a rolled loop).
  """
  return threefry(mask_key[0], mask_key[1], np.uint32(0), rows)


def hash32(k1: Array, k2: Array, counters: Array) -> Array:
  """`jax.random.bits(key_r, 32, ...)` at `counters[r, :]`, key `r` per row.

  `k1`, `k2`: `[R]` key words; `counters`: `[R, c]` uint32 Threefry counters
  (all below 2**32). Partitionable threefry: the XOR of the two output words of
  Threefry counter `i`.
  """
  b1, b2 = threefry(
      k1.reshape(-1, 1), k2.reshape(-1, 1), np.uint32(0), counters
  )
  return lax.bitwise_xor(b1, b2)


def split_rows(k1: Array, k2: Array):
  """`key, subkey = jax.random.split(key)` for a batch of `[R]` key words."""
  b1, b2 = threefry(
      k1[:, None],
      k2[:, None],
      jnp.zeros((), _U32),
      jnp.arange(2, dtype=_U32)[None, :],
  )
  return (b1[:, 0], b2[:, 0]), (b1[:, 1], b2[:, 1])


def take_rows(table: Array, idx: Array) -> Array:
  """`table[r, idx[r, s]]` as one flat gather (`idx` in bounds)."""
  n_rows, n = table.shape
  offsets = (jnp.arange(n_rows, dtype=jnp.int32) * n)[:, None]
  flat = table.reshape(-1).at[(idx + offsets).reshape(-1)]
  return flat.get(mode="promise_in_bounds").reshape(idx.shape)


def count_below(sorted_bits: Array, query: Array) -> Array:
  """`#{j : sorted_bits[r, j] < query[r, s]}`: a branch-free binary search."""
  n = sorted_bits.shape[1]
  pos = jnp.zeros(query.shape, jnp.int32)
  step = 1 << (n.bit_length() - 1)
  while step:
    cand = pos + step
    probe = take_rows(sorted_bits, jnp.minimum(cand, n) - 1)
    pos = jnp.where((cand <= n) & (probe < query), cand, pos)
    step >>= 1
  return pos


def max_tie_rows(n_rows: int, m: int, n: int) -> int:
  """Rows whose ties one correction pass handles (static).

  A followed element shares its bits with another of the row with
  probability below `n / 2**32`, so the expected number of rows with ties is
  below `mu = n_rows m n / 2**32`; the batch covers `mu + 6 sqrt(mu) + 8`
  rows, and a rarer excess is handled by further passes.
  """
  mu = n_rows * m * n / 2**32
  return int(min(n_rows, math.ceil(mu + 6 * math.sqrt(mu) + 8)))


def ranks(
    sorted_bits: Array,
    elems: Array,
    elem_bits: Array,
    row_bits_of: Callable[[Array], Array],
    tie_rows: int,
) -> Array:
  """Stable-sort ranks of elements `elems[r, s]` of each row (exact, ties too).

  Args:
    sorted_bits: `[R, n]` sort bits of each row, `row_bits`, sorted.
    elems: `[R, m]` int32 element indices (distinct within a row).
    elem_bits: `row_bits` at `elems`.
    row_bits_of: `rows -> row_bits[rows]` for `[tie_rows]` int32 rows in
      `[0, R)`; only called for rows with ties (recomputing them is cheaper
      than keeping `row_bits` alive).
    tie_rows: rows corrected per pass of the tie loop (any >= 1 is exact).

  Returns:
    `[R, m]` int32:
    `#{j : (row_bits[r, j], j) < (elem_bits[r, s], elems[r, s])}`, the
    position a stable sort by `row_bits` moves element `elems[r, s]` to.
  """
  n_rows, n = sorted_bits.shape
  below = count_below(sorted_bits, elem_bits)
  # Its bits occur twice iff the next sorted bits are equal.
  nxt = take_rows(sorted_bits, jnp.minimum(below + 1, n - 1))
  tied = (below + 1 < n) & (nxt == elem_bits)
  tie_rows = max(1, min(tie_rows, n_rows))
  cols = jnp.arange(n, dtype=jnp.int32)

  def fix_some(carry):
    # The first `tie_rows` rows with a tied element; in each, its first one.
    rank, tied = carry
    (rows,) = jnp.nonzero(
        jnp.any(tied, axis=1), size=tie_rows, fill_value=n_rows
    )
    valid = rows < n_rows
    safe = jnp.where(valid, rows, 0)
    slot = jnp.argmax(tied[safe], axis=1).astype(jnp.int32)
    elem = elems[safe, slot]
    b = elem_bits[safe, slot]
    equal_before = (row_bits_of(safe) == b[:, None]) & (
        cols[None, :] < elem[:, None]
    )
    count = jnp.sum(equal_before, axis=1, dtype=jnp.int32)
    rank = rank.at[rows, slot].add(count, mode="drop")
    tied = tied.at[rows, slot].set(False, mode="drop")
    return rank, tied

  rank, _ = lax.while_loop(lambda c: jnp.any(c[1]), fix_some, (below, tied))
  return rank


def followed_mask(
    k1: Array,
    k2: Array,
    n: int,
    k: int,
    sort_bits: Callable[[Array, Array, Array], Array] = hash32,
    tie_rows: int | None = None,
) -> Array:
  """`permutation(key_r, n) >= k` for `[R]` row key words, all `n` columns.

  Args:
    k1: `[R]` first key words of the rows.
    k2: `[R]` second key words.
    n: row length.
    k: zeros per row, `0 < k < n`.
    sort_bits: `(k1, k2, counters) -> [R, c]` uint32 sort bits of each
      round; the default is `jax.random.bits`'s. Tests pass coarser bits to
      exercise ties.
    tie_rows: rows per pass of the tie correction; default `max_tie_rows`.
  """
  n_rows = k1.shape[0]
  zeros_followed = k <= n - k
  m = min(k, n - k)
  first = 0 if zeros_followed else k
  elems = jnp.broadcast_to(
      jnp.arange(first, first + m, dtype=jnp.int32), (n_rows, m)
  )
  cols = jnp.broadcast_to(jnp.arange(n, dtype=_U32), (n_rows, n))
  if tie_rows is None:
    tie_rows = max_tie_rows(n_rows, m, n)
  key = (k1, k2)
  for _ in range(num_rounds(n)):
    key, sub = split_rows(*key)
    sorted_bits = lax.sort(sort_bits(*sub, cols), dimension=1)
    elem_bits = sort_bits(*sub, elems.astype(_U32))

    def row_bits_of(rows, sub=sub):
      return sort_bits(sub[0][rows], sub[1][rows], cols[: rows.shape[0]])

    elems = ranks(sorted_bits, elems, elem_bits, row_bits_of, tie_rows)
  row_idx = jnp.broadcast_to(
      jnp.arange(n_rows, dtype=jnp.int32)[:, None], elems.shape
  )
  base = jnp.full((n_rows, n), zeros_followed)
  return base.at[row_idx, elems].set(
      not zeros_followed, unique_indices=True, mode="promise_in_bounds"
  )


def followed_elements(
    n_rows: int, n: int, k: int
) -> tuple[bool, int, int, Array]:
  """The elements a path follows through the rounds, for rows of `n`, `k` zeros.

  The zeros start at positions `[0, k)` and the kept elements at `[k, n)`;
  a path follows whichever set is smaller, `m = min(k, n - k)` a row.

  Returns:
    `(zeros_followed, m, first, elems)`: whether the zeros are followed, `m`,
    the first followed position and the `[n_rows, m]` int32 positions
    `first, ..., first + m - 1` of every row.
  """
  zeros_followed = k <= n - k
  m = min(k, n - k)
  first = 0 if zeros_followed else k
  elems = lax.add(
      lax.broadcasted_iota(jnp.int32, (n_rows, m), 1), np.int32(first)
  )
  return zeros_followed, m, first, elems


# XLA:CPU splits plain reductions over more elements than this.
_REDUCE_WINDOW = 32


def count_pairs(a: Array, b: Array) -> Array:
  """`sum(a, -1) + sum(b, -1)` (int32) of two boolean arrays, one fused pass.

  A variadic (two-operand) reduction: XLA:CPU rewrites a plain reduction
  over more than 32 elements into a reduce-window and a reduce, which
  materializes its whole (here `[R, m, n]`) input, but leaves variadic ones
  alone, fused with the compares that produce them.
  """
  zero = jnp.int32(0)

  def add(x, y):
    return x[0] + y[0], x[1] + y[1]

  sa, sb = lax.reduce(
      (
          lax.convert_element_type(a, jnp.int32),
          lax.convert_element_type(b, jnp.int32),
      ),
      (zero, zero),
      add,
      (a.ndim - 1,),
  )
  return lax.add(sa, sb)


def split_round(
    key: tuple[Array, Array],
) -> tuple[Array, tuple[Array, Array], Array]:
  """One sort round's `key, sub = split(key)` for `[R, 1, 1]` key words.

  Returns the `[R, 2, 2]` split words, the next key's `[R, 1, 1]` words and
  the `[R, 2]` subkey. Each hash's code costs compile time (XLA:CPU compiles
  every fused loop on its own, some tens of milliseconds each), so the key
  words of a round are one `[R, 2, 2]` array (`key, sub = split(key)`, two
  words each) from one fused loop that also hashes the row keys; it is
  materialized, or the row bits' loop would recompute it for every column.
  """
  n_rows = key[0].shape[0]
  which = lax.broadcasted_iota(_U32, (n_rows, 2, 2), 1)
  is_first_word = lax.eq(
      lax.broadcasted_iota(_U32, (n_rows, 2, 2), 2), np.uint32(0)
  )
  b1, b2 = threefry(*key, np.uint32(0), which)
  split = bits.materialized(lax.select(is_first_word, b1, b2))
  key = (
      lax.slice(split, (0, 0, 0), (n_rows, 1, 1)),
      lax.slice(split, (0, 0, 1), (n_rows, 1, 2)),
  )
  return split, key, lax.index_in_dim(split, 1, axis=1, keepdims=False)


def round_sub_keys(k1: Array, k2: Array, n: int):
  """Yields each sort round's `[R, 2, 2]` split words and its `[R, 2]` subkey.

  `split_round` for `num_rounds(n)` rounds from `[R]` row key words.
  """
  key = (k1.reshape(-1, 1, 1), k2.reshape(-1, 1, 1))
  for _ in range(num_rounds(n)):
    split, key, sub = split_round(key)
    yield split, sub


def round_row_bits(
    sub: Array, n: int, sort_bits: Callable[[Array, Array, Array], Array]
) -> Array:
  """A round's `[R, n]` sort bits from its `[R, 2]` subkey, computed once."""
  all_cols = lax.broadcasted_iota(_U32, (sub.shape[0], n), 1)
  return bits.materialized(
      sort_bits(
          lax.index_in_dim(sub, 0, axis=1, keepdims=False),
          lax.index_in_dim(sub, 1, axis=1, keepdims=False),
          all_cols,
      )
  )


def compared_ranks(row_bits: Array, elem_bits: Array, elems: Array) -> Array:
  """Stable-sort ranks of the followed elements, by comparisons.

  `row_bits`: `[R, n]` sort bits; `elems`: `[R, m]` int32 positions and
  `elem_bits` their bits. `rank_s = #{j : b_j < b_s} + #{j < p_s : b_j = b_s}`
  for each followed element `p_s` with bits `b_s`, the stable sort's order,
  ties included: an `[R, m, n]` compare (a row's bits and columns along the
  last axis, the followed elements along the middle one) fused with its sum
  (`count_pairs`), never stored. Returns `[R, m]` int32, in `elems`' order.
  """
  n_rows, n = row_bits.shape
  shape = (n_rows, elems.shape[1], n)
  row = lax.broadcast_in_dim(row_bits, shape, (0, 2))
  mine = lax.broadcast_in_dim(elem_bits, shape, (0, 1))
  return count_pairs(
      lax.lt(row, mine),
      lax.bitwise_and(
          lax.eq(row, mine),
          lax.lt(
              lax.broadcasted_iota(jnp.int32, shape, 2),
              lax.broadcast_in_dim(elems, shape, (0, 1)),
          ),
      ),
  )


def compared_mask(
    k1: Array,
    k2: Array,
    n: int,
    k: int,
    sort_bits: Callable[[Array, Array, Array], Array] = hash32,
) -> Array:
  """`followed_mask` by comparisons only: no sort, search, loop or scatter.

  Same arguments and result. Each round computes the ranks of the `m`
  followed elements directly from their definition (`compared_ranks`, one
  compare-and-sum over the row, ties included); the
  mask marks column `c` iff some followed element ends at rank `c` (an
  `[R, n, m]` compare and `any`). It costs `m n` comparisons per row and
  round against the sort path's `n log n`, but compiles to a handful of
  fused loops, several times faster; `mask_block` uses it for short rows
  (`uses_compare`). The hashes are computed once each (`bits.materialized`) and
  the sums are variadic reductions (`count_pairs`), so no `[R, m, n]` array
  is ever stored.
  """
  n_rows = k1.shape[0]
  zeros_followed, m, first, elems = followed_elements(n_rows, n, k)
  for i, (split, sub) in enumerate(round_sub_keys(k1, k2, n)):
    row_bits = round_row_bits(sub, n, sort_bits)
    if i == 0:  # The followed elements are still `first, ..., first + m - 1`.
      elem_bits = lax.slice_in_dim(row_bits, first, first + m, axis=1)
      # A constant, so the `[R, m, n]` comparison of the columns with them
      # would be one too, which XLA computes once outside a loop over chunks
      # and keeps alive through it (half the output's bytes at fan_in 1024).
      # Times ones it cannot fold, it is computed in the fused sums below.
      elems = lax.mul(
          elems,
          lax.broadcast_in_dim(
              lax.convert_element_type(bits.opaque_ones(split), jnp.int32),
              (n_rows, m),
              (0,),
          ),
      )
    else:
      elem_bits = jnp.take_along_axis(row_bits, elems, axis=1)
    elems = compared_ranks(row_bits, elem_bits, elems)

  # Column `c` is hit iff some rank equals `c`. Up to 32 ranks, a plain `any`
  # (fused with the caller's use of the mask); beyond, in two halves.
  def rank_is_col(ranks):
    shape = (n_rows, n, ranks.shape[1])
    return lax.eq(
        lax.broadcast_in_dim(ranks, shape, (0, 2)),
        lax.broadcasted_iota(jnp.int32, shape, 1),
    )

  if m <= _REDUCE_WINDOW:
    hit = lax.reduce_or(rank_is_col(elems), (2,))
  else:
    half = -(-m // 2)
    hit = lax.gt(
        count_pairs(
            rank_is_col(elems[:, :half]), rank_is_col(elems[:, m - half :])
        ),
        np.int32(0),
    )
  return lax.ne(hit, np.bool_(zeros_followed))
