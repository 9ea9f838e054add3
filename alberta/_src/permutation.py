"""The seed's mask, `jax.random.permutation(row_key, fan_in) >= k`, without it.

Reproduces `alberta_framework`'s `sparse_init` tile by tile. The seed draws

    init_key, mask_key = split(key)
    weights = uniform(init_key, (fan_out, fan_in)) or normal(...)
    row_keys = split(mask_key, fan_out)
    mask[r] = permutation(row_keys[r], fan_in) >= k

Under the partitionable threefry, `split(mask_key, fan_out)[r]` is the Threefry
hash of counter `r`, and the weight bits of element `(r, c)` are the hash of
counter `r * fan_in + c`, so a block of rows needs only its own row keys and
bits.

The permutation (reference: `jax._src.random.core._shuffle`, JAX 0.10) starts
from `x = arange(n)` and runs `t = ceil(3 ln n / ln(2**32 - 1))` rounds of

    key, subkey = split(key)
    x = sort_key_val(random_bits(subkey, 32, (n,)), x)[1]     # stable

so a round moves the element at position `p` to position
`rank(p) = #{j : (b_j, j) < (b_p, p)}` (lexicographic on the round's 32 sort
bits `b` and the index: the sort is stable). Position `j` of the result is a
zero of the mask iff it holds a value `< k`. Those values start at positions
`S_0 = {0, ..., k-1}` and each round carries them to `S_{i+1} = rank_i(S_i)`,
so the zeros are `S_t`. Each `rank_i` is a bijection, so the kept positions are
likewise the image of `{k, ..., n-1}`; the construction follows whichever of
the two sets is smaller, `m = min(k, n - k)` elements per row.

For a followed element `p` with bits `b`, `rank(p) = L + E`, where
`L = #{j : b_j < b}` is a binary search for `b` in the row's sorted bits (a
plain one-operand sort, which XLA runs several times faster than the seed's
key-value sort) and `E = #{j < p : b_j = b}` counts its ties. `E = 0` unless
`b` occurs twice in the row, which the search sees (the next sorted bits equal
`b`); such elements (about `m n / 2**32` a row) are corrected exactly by a
loop that counts their ties over the whole row, a few rows per iteration, until
none is left. So the mask equals the seed's bit for bit, ties included, and
costs one sort of `n` unsigned ints, `m log n` gathers and a scatter per row
and round, instead of a key-value sort. The blocks of very large matrices are
split into a few independent row groups, which XLA:CPU runs on separate cores.

Short rows (`m n` per round up to `_COMPARE_MAX`, every Haiku-sized layer)
take a second path, `_compared_mask`, that evaluates the same `rank(p)` by
comparing `b` with the whole row, `m n` compares fused with their sum, and
marks the mask's columns by comparing them with the ranks: no sort, search,
loop or scatter, so it compiles 4-5x faster (0.5 s against 2 s for a
256 x 256 layer on the CPU) and, at these sizes, also runs faster.

Longer rows up to `m n = _SEARCH_MAX` (rows of 16384 at sparsity 0.9) take a
third, `_searched_mask`, which sorts only the `m` followed elements: each
round sorts their bits, places each of the row's `n` elements among them by a
binary search (`_places`), counts the elements at each place and takes the
prefix sum, which is each followed element's rank, in ascending order. Ties
(equal bits, which the bits alone do not order) are detected in the same pass
and the block is then searched again on (bits, position) pairs. It compiles
several times faster than the sort path and runs 1.6-2.7x faster on one core
(`default_path`); beyond, where most blocks hold a tie, the sort path is
faster. All three paths give the same mask, bit for bit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alberta._src import bits

if TYPE_CHECKING:  # `spec` imports `checks`, which imports the methods.
  from alberta._src.spec import SparseSpec

Array = jax.Array

_U32 = jnp.uint32
# At most this many row groups per block (see `_groups`).
_MAX_GROUPS = 8
_MIN_GROUP = 2**16
# Row groups only for matrices of at least this many elements (see `_groups`).
_GROUP_MIN_MATRIX = 2**28
# Rows with `min(k, n - k) * n * num_rounds(n)` up to this take
# `_compared_mask` (see `uses_compare`).
_COMPARE_MAX = 2**17
# Rows with `min(k, n - k) * n` up to this take `_searched_mask` (see
# `default_path`).
_SEARCH_MAX = 2**26


def num_rounds(n: int) -> int:
  """Sort rounds of `jax.random.permutation(key, n)`: its own static formula."""
  uint32max = np.iinfo(np.uint32).max
  return int(np.ceil(3 * np.log(max(1, n)) / np.log(uint32max)))




def _threefry(k1: Array, k2: Array, hi: Array, lo: Array) -> tuple[Array, Array]:
  """`bits.threefry_fused` with the key words given apart (they broadcast)."""
  return bits.threefry_fused((k1, k2), hi, lo)


def row_keys(mask_key: tuple[Array, Array], rows: Array) -> tuple[Array, Array]:
  """`jax.random.split(mask_key, fan_out)[rows]`, as key words.

  Hashed by the unrolled `_threefry`: the `threefry2x32_p` primitive costs a
  few tenths of a second to compile on the CPU (a rolled loop).
  """
  return _threefry(mask_key[0], mask_key[1], np.uint32(0), rows)


def _hash32(k1: Array, k2: Array, counters: Array) -> Array:
  """`jax.random.bits(key_r, 32, ...)` at `counters[r, :]`, key `r` per row.

  `k1`, `k2`: `[R]` key words; `counters`: `[R, c]` uint32 (all below 2**32).
  Partitionable threefry: the XOR of the two output words of counter `i`.
  """
  b1, b2 = _threefry(k1.reshape(-1, 1), k2.reshape(-1, 1), np.uint32(0),
                     counters)
  return lax.bitwise_xor(b1, b2)


def _split_rows(k1: Array, k2: Array):
  """`key, subkey = jax.random.split(key)` for a batch of `[R]` key words."""
  b1, b2 = _threefry(k1[:, None], k2[:, None], jnp.zeros((), _U32),
                     jnp.arange(2, dtype=_U32)[None, :])
  return (b1[:, 0], b2[:, 0]), (b1[:, 1], b2[:, 1])


def _take_rows(table: Array, idx: Array) -> Array:
  """`table[r, idx[r, s]]` as one flat gather (`idx` in bounds)."""
  n_rows, n = table.shape
  offsets = (jnp.arange(n_rows, dtype=jnp.int32) * n)[:, None]
  flat = table.reshape(-1).at[(idx + offsets).reshape(-1)]
  return flat.get(mode="promise_in_bounds").reshape(idx.shape)


def _count_below(sorted_bits: Array, query: Array) -> Array:
  """`#{j : sorted_bits[r, j] < query[r, s]}`: a branch-free binary search."""
  n = sorted_bits.shape[1]
  pos = jnp.zeros(query.shape, jnp.int32)
  step = 1 << (n.bit_length() - 1)
  while step:
    cand = pos + step
    probe = _take_rows(sorted_bits, jnp.minimum(cand, n) - 1)
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


def ranks(sorted_bits: Array, elems: Array, elem_bits: Array,
          row_bits_of: Callable[[Array], Array], tie_rows: int) -> Array:
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
    `[R, m]` int32: `#{j : (row_bits[r, j], j) < (elem_bits[r, s], elems[r, s])}`,
    the position a stable sort by `row_bits` moves element `elems[r, s]` to.
  """
  n_rows, n = sorted_bits.shape
  below = _count_below(sorted_bits, elem_bits)
  # Its bits occur twice iff the next sorted bits are equal.
  nxt = _take_rows(sorted_bits, jnp.minimum(below + 1, n - 1))
  tied = (below + 1 < n) & (nxt == elem_bits)
  tie_rows = max(1, min(tie_rows, n_rows))
  cols = jnp.arange(n, dtype=jnp.int32)

  def fix_some(carry):
    # The first `tie_rows` rows with a tied element; in each, its first one.
    rank, tied = carry
    (rows,) = jnp.nonzero(jnp.any(tied, axis=1), size=tie_rows,
                          fill_value=n_rows)
    valid = rows < n_rows
    safe = jnp.where(valid, rows, 0)
    slot = jnp.argmax(tied[safe], axis=1).astype(jnp.int32)
    elem = elems[safe, slot]
    b = elem_bits[safe, slot]
    equal_before = (row_bits_of(safe) == b[:, None]) & (cols[None, :] < elem[:, None])
    count = jnp.sum(equal_before, axis=1, dtype=jnp.int32)
    rank = rank.at[rows, slot].add(count, mode="drop")
    tied = tied.at[rows, slot].set(False, mode="drop")
    return rank, tied

  rank, _ = lax.while_loop(lambda c: jnp.any(c[1]), fix_some, (below, tied))
  return rank


def _followed_mask(k1: Array, k2: Array, n: int, k: int,
                   sort_bits: Callable[[Array, Array, Array], Array] = _hash32,
                   tie_rows: int | None = None) -> Array:
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
  elems = jnp.broadcast_to(jnp.arange(first, first + m, dtype=jnp.int32),
                           (n_rows, m))
  cols = jnp.broadcast_to(jnp.arange(n, dtype=_U32), (n_rows, n))
  if tie_rows is None:
    tie_rows = max_tie_rows(n_rows, m, n)
  key = (k1, k2)
  for _ in range(num_rounds(n)):
    key, sub = _split_rows(*key)
    sorted_bits = lax.sort(sort_bits(*sub, cols), dimension=1)
    elem_bits = sort_bits(*sub, elems.astype(_U32))

    def row_bits_of(rows, sub=sub):
      return sort_bits(sub[0][rows], sub[1][rows], cols[:rows.shape[0]])

    elems = ranks(sorted_bits, elems, elem_bits, row_bits_of, tie_rows)
  row_idx = jnp.broadcast_to(jnp.arange(n_rows, dtype=jnp.int32)[:, None],
                             elems.shape)
  base = jnp.full((n_rows, n), zeros_followed)
  return base.at[row_idx, elems].set(not zeros_followed, unique_indices=True,
                                     mode="promise_in_bounds")


# XLA:CPU splits plain reductions over more elements than this.
_REDUCE_WINDOW = 32


def _count_pairs(a: Array, b: Array) -> Array:
  """`sum(a, -1) + sum(b, -1)` (int32) of two boolean arrays, one fused pass.

  A variadic (two-operand) reduction: XLA:CPU rewrites a plain reduction
  over more than 32 elements into a reduce-window and a reduce, which
  materializes its whole (here `[R, m, n]`) input, but leaves variadic ones
  alone, fused with the compares that produce them.
  """
  zero = jnp.int32(0)

  def add(x, y):
    return x[0] + y[0], x[1] + y[1]

  sa, sb = lax.reduce((lax.convert_element_type(a, jnp.int32),
                       lax.convert_element_type(b, jnp.int32)),
                      (zero, zero), add, (a.ndim - 1,))
  return lax.add(sa, sb)


def _split_round(key: tuple[Array, Array]) -> tuple[
    Array, tuple[Array, Array], Array]:
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
  is_first_word = lax.eq(lax.broadcasted_iota(_U32, (n_rows, 2, 2), 2),
                         np.uint32(0))
  b1, b2 = _threefry(*key, np.uint32(0), which)
  split = bits.materialized(lax.select(is_first_word, b1, b2))
  key = (lax.slice(split, (0, 0, 0), (n_rows, 1, 1)),
         lax.slice(split, (0, 0, 1), (n_rows, 1, 2)))
  return split, key, lax.index_in_dim(split, 1, axis=1, keepdims=False)


def _round_sub_keys(k1: Array, k2: Array, n: int):
  """Yields each sort round's `[R, 2, 2]` split words and its `[R, 2]` subkey.

  `_split_round` for `num_rounds(n)` rounds from `[R]` row key words.
  """
  key = (k1.reshape(-1, 1, 1), k2.reshape(-1, 1, 1))
  for _ in range(num_rounds(n)):
    split, key, sub = _split_round(key)
    yield split, sub


def _round_row_bits(sub: Array, n: int,
                    sort_bits: Callable[[Array, Array, Array], Array]) -> Array:
  """A round's `[R, n]` sort bits from its `[R, 2]` subkey, computed once."""
  all_cols = lax.broadcasted_iota(_U32, (sub.shape[0], n), 1)
  return bits.materialized(sort_bits(
      lax.index_in_dim(sub, 0, axis=1, keepdims=False),
      lax.index_in_dim(sub, 1, axis=1, keepdims=False), all_cols))


def _compared_mask(k1: Array, k2: Array, n: int, k: int,
                   sort_bits: Callable[[Array, Array, Array], Array] = _hash32
                   ) -> Array:
  """`_followed_mask` by comparisons only: no sort, search, loop or scatter.

  Same arguments and result. Each round computes the ranks of the `m`
  followed elements directly from their definition,
  `rank(p) = #{j : b_j < b_p} + #{j < p : b_j = b_p}`, as one compare-and-sum
  over the row (`[R, m, n]`, fused with its reduction), ties included; the
  mask marks column `c` iff some followed element ends at rank `c` (an
  `[R, n, m]` compare and `any`). It costs `m n` comparisons per row and
  round against the sort path's `n log n`, but compiles to a handful of
  fused loops, several times faster; `mask_block` uses it for short rows
  (`uses_compare`). The hashes are computed once each (`bits.materialized`) and
  the sums are variadic reductions (`_count_pairs`), so no `[R, m, n]` array
  is ever stored.
  """
  n_rows = k1.shape[0]
  zeros_followed = k <= n - k
  m = min(k, n - k)
  first = 0 if zeros_followed else k
  elems = lax.add(lax.broadcasted_iota(jnp.int32, (n_rows, m), 1),
                  np.int32(first))
  # `[R, m, n]` operands of the rank compares: a row's bits and columns along
  # the last axis, the followed elements along the middle one.
  cols_mn = lax.broadcasted_iota(jnp.int32, (n_rows, m, n), 2)
  for i, (split, sub) in enumerate(_round_sub_keys(k1, k2, n)):
    row_bits = _round_row_bits(sub, n, sort_bits)
    if i == 0:  # The followed elements are still `first, ..., first + m - 1`.
      elem_bits = lax.slice_in_dim(row_bits, first, first + m, axis=1)
      # A constant, so the `[R, m, n]` comparison of the columns with them
      # would be one too, which XLA computes once outside a loop over chunks
      # and keeps alive through it (half the output's bytes at fan_in 1024).
      # Times ones it cannot fold, it is computed in the fused sums below.
      elems = lax.mul(elems, lax.broadcast_in_dim(
          lax.convert_element_type(bits.opaque_ones(split), jnp.int32),
          (n_rows, m), (0,)))
    else:
      elem_bits = jnp.take_along_axis(row_bits, elems, axis=1)
    row_bits = lax.broadcast_in_dim(row_bits, (n_rows, m, n), (0, 2))
    elem_bits = lax.broadcast_in_dim(elem_bits, (n_rows, m, n), (0, 1))
    elems_mn = lax.broadcast_in_dim(elems, (n_rows, m, n), (0, 1))
    elems = _count_pairs(
        lax.lt(row_bits, elem_bits),
        lax.bitwise_and(lax.eq(row_bits, elem_bits), lax.lt(cols_mn, elems_mn)))
  # Column `c` is hit iff some rank equals `c`. Up to 32 ranks, a plain `any`
  # (fused with the caller's use of the mask); beyond, in two halves.
  def rank_is_col(ranks):
    shape = (n_rows, n, ranks.shape[1])
    return lax.eq(lax.broadcast_in_dim(ranks, shape, (0, 2)),
                  lax.broadcasted_iota(jnp.int32, shape, 1))

  if m <= _REDUCE_WINDOW:
    hit = lax.reduce_or(rank_is_col(elems), (2,))
  else:
    half = -(-m // 2)
    hit = lax.gt(_count_pairs(rank_is_col(elems[:, :half]),
                              rank_is_col(elems[:, m - half:])), np.int32(0))
  return lax.ne(hit, np.bool_(zeros_followed))


def _prefix_sums(counts: Array, total: int) -> Array:
  """Inclusive prefix sums of int32 `counts` (`[R, c]`, row sums <= `total`).

  For short rows of small sums (`c**2 <= 64 total`, `total < 2**24`), a
  float32 product with a constant triangular matrix: exact for integer sums
  below 2**24, `c**2` multiply-adds a row, and one library call to compile,
  where `lax.cumsum` is a tree of reduce-windows (several loops, a tenth of a
  second of XLA:CPU compile time). Otherwise `lax.cumsum`.
  """
  c = counts.shape[1]
  if c * c > 64 * total or total >= 2**24:
    return lax.cumsum(counts, axis=1)
  tri = np.triu(np.ones((c, c), np.float32))
  sums = lax.dot(lax.convert_element_type(counts, jnp.float32), tri,
                 precision=lax.Precision.HIGHEST)
  return lax.convert_element_type(sums, jnp.int32)


def _count_queries_below(q_bits: Array, q_pos: Array, row_bits: Array
                         ) -> Array:
  """`#{s : (q_bits, q_pos)[r, s] < (row_bits[r, j], j)}` for every column `j`.

  The place of each of a row's `n` (bits, column) pairs among its `m` queries,
  sorted lexicographically by (bits, position): a branch-free binary search,
  `m.bit_length()` steps of two gathers from the `[R, m]` queries and a
  lexicographic compare. The steps are a rolled loop, compiled once: XLA:CPU
  runs every gather as a loop of its own and stores its result, so unrolled
  steps are no faster and cost their compile time each.
  """
  n_rows, n = row_bits.shape
  m = q_bits.shape[1]
  cols = lax.broadcasted_iota(jnp.int32, (n_rows, n), 1)
  first_step = 1 << (m.bit_length() - 1)

  def step(i, pos):
    cand = lax.add(pos, lax.shift_right_logical(np.int32(first_step), i))
    probe = lax.sub(lax.min(cand, np.int32(m)), np.int32(1))
    p_bits = _take_rows(q_bits, probe)
    p_pos = _take_rows(q_pos, probe)
    below = lax.bitwise_or(
        lax.lt(p_bits, row_bits),
        lax.bitwise_and(lax.eq(p_bits, row_bits), lax.lt(p_pos, cols)))
    return lax.select(lax.bitwise_and(lax.le(cand, np.int32(m)), below), cand,
                      pos)

  return lax.fori_loop(np.int32(0), np.int32(m.bit_length()), step,
                       lax.full((n_rows, n), 0, jnp.int32))


def _places(row_bits: Array, elem_bits: Array, elems: Array) -> Array:
  """`#{s : (elem_bits, elems)[r, s] < (row_bits[r, j], j)}` for every column.

  Where each of a row's `n` (bits, column) pairs falls among the followed
  elements, in their stable-sort order. By their bits alone first: a plain
  sort of the `[R, m]` bits (several times faster than sorting them with
  their positions) and a binary search with one gather a step. That is the
  answer unless two followed elements share their bits or an element's bits
  equal a followed element's other than its own (together about `m n / 2**32`
  a row), which the pass detects (each pair's bits are compared with the
  query at its place: exactly the `m` followed elements find their own); then
  the block is recomputed on (bits, position) pairs
  (`_count_queries_below`), which the rest of the time is not run.
  """
  n_rows = row_bits.shape[0]
  m = elem_bits.shape[1]
  # Places fit in 16 bits for m < 2**15: half the bytes of the search's
  # carry, the chunk's largest temporaries besides the row's bits.
  place = jnp.int16 if m < 2**15 else jnp.int32
  q_bits = lax.sort(elem_bits, dimension=1)
  pos = lax.full(row_bits.shape, 0, place)
  step = 1 << (m.bit_length() - 1)

  def search_step(i, pos):
    cand = lax.add(pos, lax.convert_element_type(
        lax.shift_right_logical(np.int32(step), i), place))
    probe = _take_rows(q_bits, lax.convert_element_type(
        lax.sub(lax.min(cand, place(m)), place(1)), jnp.int32))
    return lax.select(lax.bitwise_and(lax.le(cand, place(m)),
                                      lax.lt(probe, row_bits)), cand, pos)

  pos = lax.fori_loop(np.int32(0), np.int32(m.bit_length()), search_step, pos)
  at = _take_rows(q_bits, lax.convert_element_type(
      lax.min(pos, place(m - 1)), jnp.int32))
  found = lax.bitwise_and(lax.lt(pos, place(m)), lax.eq(at, row_bits))
  shared = lax.eq(lax.slice_in_dim(q_bits, 0, m - 1, axis=1),
                  lax.slice_in_dim(q_bits, 1, m, axis=1))
  # Per row, one fused pass each (`_count_pairs`, a variadic reduction).
  ok = lax.bitwise_and(
      lax.eq(_count_pairs(found, found), np.int32(2 * m)),
      lax.eq(_count_pairs(shared, shared), np.int32(0)))
  exact = lax.eq(_count_pairs(ok, ok), np.int32(2 * n_rows))

  def by_pairs():
    q_bits, q_pos = lax.sort((elem_bits, elems), dimension=1, is_stable=True,
                             num_keys=1)
    return lax.convert_element_type(
        _count_queries_below(q_bits, q_pos, row_bits), place)

  return lax.cond(exact, lambda: pos, by_pairs)


def _searched_mask(k1: Array, k2: Array, n: int, k: int,
                   sort_bits: Callable[[Array, Array, Array], Array] = _hash32
                   ) -> Array:
  """`_followed_mask` with no sort of the row: the row placed among the followed.

  Same arguments and result. Each round places each of the row's `n` (bits,
  column) pairs among the `m` followed elements in their stable-sort order
  (`_places`: `ins_j` of them precede element `j`), counts the elements at
  each place (a scatter-add into `m + 1` bins) and takes the prefix sum: the
  `s`-th followed element in that order has `#{j : ins_j <= s} - 1` elements
  before it, which is its stable-sort rank, ties included (a pair equals a
  followed element only where it is that element). It costs a sort of `m`
  bits, `n log2(m + 1)` gathers from an `[R, m]` table and a scatter-add of
  `n` per row and round, against the sort path's sort of `n` and its tie
  loop, and compiles to a few small loops (the search's steps are one rolled
  loop). The ranks come out ascending; the mask marks the last round's with a
  scatter.
  """
  n_rows = k1.shape[0]
  zeros_followed = k <= n - k
  m = min(k, n - k)
  first = 0 if zeros_followed else k
  elems = lax.add(lax.broadcasted_iota(jnp.int32, (n_rows, m), 1),
                  np.int32(first))
  offsets = lax.mul(lax.broadcasted_iota(jnp.int32, (n_rows, n), 0),
                    np.int32(m + 1))

  def one_round(key, elems):
    _, key, sub = _split_round(key)
    row_bits = _round_row_bits(sub, n, sort_bits)
    ins = _places(row_bits, _take_rows(row_bits, elems), elems)
    counts = jnp.zeros((n_rows * (m + 1),), jnp.int32).at[
        lax.add(lax.convert_element_type(ins, jnp.int32),
                offsets).reshape(-1)].add(
            np.int32(1), mode="promise_in_bounds").reshape(n_rows, m + 1)
    return key, lax.sub(_prefix_sums(lax.slice_in_dim(counts, 0, m, axis=1),
                                     total=n), np.int32(1))

  key = (k1.reshape(-1, 1, 1), k2.reshape(-1, 1, 1))
  for _ in range(num_rounds(n)):
    key, elems = one_round(key, elems)
  row_idx = lax.broadcasted_iota(jnp.int32, (n_rows, m), 0)
  base = jnp.full((n_rows, n), zeros_followed)
  return base.at[row_idx, elems].set(not zeros_followed, unique_indices=True,
                                     mode="promise_in_bounds")


def uses_compare(n: int, k: int) -> bool:
  """Whether `mask_block` takes `_compared_mask` for rows of `n`, `k` zeros.

  When its `m n` comparisons per row and round, `m = min(k, n - k)`, are at
  most `_COMPARE_MAX` (static). Measured on the CPU (2 cores, per row): a
  comparison costs about 0.3 ns and the sort path about 60 us at `n = 1024`
  (one round) and 240 us at `n = 2048` (two), so at the bound the compare
  path is still at least as fast, and it compiles 4-5x faster at every size.
  """
  return min(k, n - k) * n * num_rounds(n) <= _COMPARE_MAX


def default_path(n: int, k: int) -> str:
  """`mask_block`'s path for rows of `n`, `k` zeros (static).

  "compare" where `uses_compare`; else "search" while `m n`, `m = min(k,
  n - k)`, is at most `_SEARCH_MAX`; else "sort". The search path's fast
  pass holds unless some bits tie, about `m n / 2**32` times a row and round;
  then it searches the block again on (bits, position) pairs. Measured on
  the CPU (one core, per element): 26 ns against the sort path's 71 ns at
  `n = 2048`, 43 against 74 at 4096, 54 against 85 at 16384 (`m n / 2**32`
  = 0.006), but 198 against 102 at 65536 (0.1), where most blocks tie.
  """
  if uses_compare(n, k):
    return "compare"
  return "search" if min(k, n - k) * n <= _SEARCH_MAX else "sort"


_PATHS = {"compare": _compared_mask, "search": _searched_mask,
          "sort": _followed_mask}


def _groups(n_rows: int, n: int, matrix_elements: int) -> int:
  """Independent row groups of a block (static).

  XLA:CPU runs independent operations concurrently, one per core, but each
  sort on one thread: a block can be split into groups that each sort their
  own rows, enough to occupy the cores, each of at least `_MIN_GROUP`
  elements. Every group is a copy of the sort path's code, though, and each
  copy costs its compile time again (about 3 s for rows of 2048 on a 2-core
  CPU, against a run time of 0.1 s for a 512 x 2048 layer), while the
  measured gain is small (13% at 1024 x 65536, none at 4096 x 4096). So only
  matrices of at least `_GROUP_MIN_MATRIX` elements, whose generation takes
  tens of seconds, are split.
  """
  if matrix_elements < _GROUP_MIN_MATRIX:
    return 1
  cores = os.cpu_count() or 1
  return max(1, min(_MAX_GROUPS, 2 * cores, n_rows * n // _MIN_GROUP))


def mask_block(mask_key: tuple[Array, Array], spec: SparseSpec, rows: Array,
               col_start: Array | int, n_cols: int,
               path: str | None = None) -> Array:
  """Boolean keep-mask of `rows` x columns `[col_start, col_start + n_cols)`.

  `path`: "compare" (`_compared_mask`), "search" (`_searched_mask`) or "sort"
  (`_followed_mask`); default `default_path`'s choice. All give the same mask,
  bit for bit.
  """
  n, k = spec.fan_in, spec.k
  n_rows = rows.shape[0]
  if k == 0 or k == n:
    return jnp.full((n_rows, n_cols), k == 0)
  if path is None:
    path = default_path(n, k)
  if path not in _PATHS:
    raise ValueError(
        f"path must be one of {sorted(_PATHS)}, got {path!r}")
  k1, k2 = row_keys(mask_key, rows)
  followed = _PATHS[path]
  n_groups = _groups(n_rows, n, spec.fan_out * spec.fan_in)
  bounds = [n_rows * g // n_groups for g in range(n_groups + 1)]
  mask = jnp.concatenate([
      followed(k1[a:b], k2[a:b], n, k)
      for a, b in zip(bounds[:-1], bounds[1:])], axis=0)
  if n_cols != n:
    mask = lax.dynamic_slice_in_dim(mask, col_start, n_cols, axis=1)
  return mask


def value_bits(init_key: tuple[Array, Array], spec: SparseSpec, rows: Array,
               cols: Array) -> Array:
  """The seed's 32 weight bits of elements `rows[:, None]` x `cols[None, :]`.

  `bits.element_bits`'s counters, hashed by the unrolled `_threefry` (one
  fused pass on the CPU).
  """
  hi, lo = bits.mul_add_u64(rows.reshape(-1, 1), spec.fan_in,
                            cols.reshape(1, -1))
  b1, b2 = _threefry(init_key[0], init_key[1], hi, lo)
  return lax.bitwise_xor(b1, b2)
