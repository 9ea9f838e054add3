"""The reference's mask `permutation(row_key, fan_in) >= k`, without permuting.

Reproduces `alberta_framework`'s `sparse_init` tile by tile, which draws

    init_key, mask_key = split(key)
    weights = uniform(init_key, (fan_out, fan_in)) or normal(...)
    row_keys = split(mask_key, fan_out)
    mask[r] = permutation(row_keys[r], fan_in) >= k

Under the partitionable threefry, `split(mask_key, fan_out)[r]` is the hash of
Threefry counter `r`, and the weight bits of element `(r, c)` are the hash of
Threefry counter `r * fan_in + c`, so a block of rows needs only its own row
keys and bits.

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
plain one-operand sort, which XLA runs several times faster than the
reference's key-value sort) and `E = #{j < p : b_j = b}` counts its ties.
`E = 0` unless `b` occurs twice in the row, which the search sees (the next
sorted bits equal `b`); such elements (about `m n / 2**32` a row) are corrected
exactly by a loop that counts their ties over the whole row, a few rows per
iteration, until none is left. So the mask equals the reference's bit for bit,
ties included, and costs one sort of `n` unsigned ints, `m log n` gathers and a
scatter per row and round, instead of a key-value sort. The blocks of very
large matrices are split into a few independent row groups, which XLA:CPU runs
on separate cores.

Short rows (`m n` per round up to `_COMPARE_MAX`, every Haiku-sized layer)
take a second path, `shuffle.compared_mask`, that evaluates the same `rank(p)`
by comparing `b` with the whole row, `m n` compares fused with their sum, and
marks the mask's columns by comparing them with the ranks: no sort, search,
loop or scatter, so it compiles 4-5x faster (0.5 s against 2 s for a
256 x 256 layer on the CPU) and, at these sizes, also runs faster.

Longer rows up to `m n = _SEARCH_MAX` (rows of 25905 at sparsity 0.9) take a
third, `_searched_mask`, which sorts only the `m` followed elements: each
round sorts their bits, places each of the row's `n` elements among them by a
binary search (`_places`), counts the elements at each place and takes the
prefix sum, which is each followed element's rank, in ascending order. Ties
(equal bits, which the bits alone do not order) are detected in the same pass,
row by row, and only those rows are ranked again, by comparisons. It compiles
several times faster than the sort path and runs 1.6-2.7x faster on one core
(`default_path`); beyond, where most blocks hold a tie, the sort path is
faster. All three paths give the same mask, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alberta._src import bits
from alberta._src import shuffle

if TYPE_CHECKING:  # `spec` imports `checks`, which imports the methods.
  from alberta._src.spec import SparseSpec

Array = jax.Array

_U32 = jnp.uint32
# At most this many row groups per block (see `_groups`).
_MAX_GROUPS = 8
_MIN_GROUP = 2**16
# Row groups only for matrices of at least this many elements (see `_groups`).
_GROUP_MIN_MATRIX = 2**28
# Rows with `min(k, n - k) * n * shuffle.num_rounds(n)` up to this take
# `shuffle.compared_mask` (see `uses_compare`).
_COMPARE_MAX = 2**17
# Rows with `min(k, n - k) * n` up to this take `_searched_mask` (see
# `default_path`).
_SEARCH_MAX = 2**26


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
  sums = lax.dot(
      lax.convert_element_type(counts, jnp.float32),
      tri,
      precision=lax.Precision.HIGHEST,
  )
  return lax.convert_element_type(sums, jnp.int32)


# `_places` compares each element with at most this many pivots.
_MAX_PIVOTS = 32


def _pivot_stride(m: int) -> int:
  """Sorted followed bits per pivot of `_places` for `m` followed (static).

  The smallest power of two of at least 16 that leaves at most `_MAX_PIVOTS`
  pivots; 0 (no pivots, the search from the start) for `m < 32`. Measured on
  the CPU (a 3-layer Haiku MLP's steady `jit(net.init)`, 2 cores): strides 8
  and 16 take the same time, 8% below the plain binary search at width 2048
  (`m = 205`) and 13% at 4096 (`m = 410`).
  """
  if m < 32:
    return 0
  stride = 16
  while m // stride > _MAX_PIVOTS:
    stride *= 2
  return stride


def _places(row_bits: Array, elem_bits: Array) -> tuple[Array, Array]:
  """Where each of a row's `n` elements falls among the followed, by bits.

  `ins[r, j] = #{s : elem_bits[r, s] < row_bits[r, j]}`: a plain sort of the
  `[R, m]` followed bits (several times faster than sorting them with their
  positions), then two stages. First each element is compared with every
  `stride`-th sorted bits (`_pivot_stride`), at most 32 compares fused with
  their sum and no gather, which places it within one stride; then a
  branch-free binary search with one gather a step finishes within it,
  `log2(stride)` steps instead of `log2(m + 1)`, rolled into one loop
  (XLA:CPU runs every gather as a loop of its own and stores its result, so
  unrolled steps are no faster and cost their compile time each).

  Returns:
    `(ins, exact)`: `ins` (int16 while `m < 2**15`, else int32) and an `[R]`
    bool, whether the row's bits alone order it as the stable sort does: no
    two followed elements share their bits and no other element's bits equal
    a followed element's (each element's bits are compared with the followed
    bits at its place: exactly the `m` followed elements find their own).
    Either happens about `m n / 2**32` times a row.
  """
  m = elem_bits.shape[1]
  # Places fit in 16 bits for m < 2**15: half the bytes of the search's
  # carry, the chunk's largest temporaries besides the row's bits.
  place = jnp.int16 if m < 2**15 else jnp.int32
  q_bits = lax.sort(elem_bits, dimension=1)
  stride = _pivot_stride(m)
  if stride:
    # `q_bits[:, stride - 1]`, `q_bits[:, 2 stride - 1]`, ...: the element
    # lies after the `c` of them below its bits, and before the next one.
    n_pivots = m // stride
    pivots = lax.slice(
        q_bits,
        (0, stride - 1),
        (q_bits.shape[0], n_pivots * stride),
        (1, stride),
    )
    shape = row_bits.shape + (n_pivots,)
    below = lax.lt(
        lax.broadcast_in_dim(pivots, shape, (0, 2)),
        lax.broadcast_in_dim(row_bits, shape, (0, 1)),
    )
    # At most `_MAX_PIVOTS` = 32 terms: a plain reduction, fused with the
    # compares (see `shuffle.count_pairs` for longer ones).
    c = lax.reduce(
        lax.convert_element_type(below, jnp.int32), np.int32(0), lax.add, (2,)
    )
    pos = lax.convert_element_type(lax.mul(c, np.int32(stride)), place)
    step = stride // 2
  else:
    pos = lax.full(row_bits.shape, 0, place)
    step = 1 << (m.bit_length() - 1)

  def search_step(i, pos):
    cand = lax.add(
        pos,
        lax.convert_element_type(
            lax.shift_right_logical(np.int32(step), i), place
        ),
    )
    probe = shuffle.take_rows(
        q_bits,
        lax.convert_element_type(
            lax.sub(lax.min(cand, place(m)), place(1)), jnp.int32
        ),
    )
    return lax.select(
        lax.bitwise_and(lax.le(cand, place(m)), lax.lt(probe, row_bits)),
        cand,
        pos,
    )

  pos = lax.fori_loop(
      np.int32(0), np.int32(step.bit_length()), search_step, pos
  )
  at = shuffle.take_rows(
      q_bits, lax.convert_element_type(lax.min(pos, place(m - 1)), jnp.int32)
  )
  found = lax.bitwise_and(lax.lt(pos, place(m)), lax.eq(at, row_bits))
  shared = lax.eq(
      lax.slice_in_dim(q_bits, 0, m - 1, axis=1),
      lax.slice_in_dim(q_bits, 1, m, axis=1),
  )
  # Per row, one fused pass each (`shuffle.count_pairs`, a variadic reduction).
  exact = lax.bitwise_and(
      lax.eq(shuffle.count_pairs(found, found), np.int32(2 * m)),
      lax.eq(shuffle.count_pairs(shared, shared), np.int32(0)),
  )
  return pos, exact


def _exact_ranks(row_bits: Array, elems: Array) -> Array:
  """`shuffle.compared_ranks` of `[T, m]` positions `elems` in `[T, n]` rows."""
  return shuffle.compared_ranks(
      row_bits, shuffle.take_rows(row_bits, elems), elems
  )


def _searched_mask(
    k1: Array,
    k2: Array,
    n: int,
    k: int,
    sort_bits: Callable[[Array, Array, Array], Array] = shuffle.hash32,
) -> Array:
  """`shuffle.followed_mask` without sorting the row: placed among the followed.

  Same arguments and result. Each round places each of the row's `n` elements
  among the `m` followed elements' sorted bits (`_places`: `ins_j` of them
  have smaller bits than element `j`), counts the elements at each place (a
  scatter-add into `m + 1` bins) and takes the prefix sum: the `s`-th followed
  element in that order has `#{j : ins_j <= s} - 1` elements before it, which
  is its stable-sort rank when no bits tie with it. The rows where some do
  (`_places`' flag, about `m n / 2**32` a row and round) are then ranked
  exactly by comparisons (`_exact_ranks`, `m n` of them), one row per pass of
  a loop that runs as many times as there are such rows, so the mask equals
  the reference's bit for bit, ties included. It costs a sort of `m` bits,
  per element at most 32 compares with pivots and `log2(stride)` gathers
  from an `[R, m]` table (`_places`), and a scatter-add of `n` per row and
  round, against the sort path's sort of `n`, and compiles to a few small
  loops. The fast pass gives the ranks in
  ascending order, the exact one in the followed elements' order: only their
  set matters to the next round and to the mask, which marks the last
  round's with a scatter.
  """
  n_rows = k1.shape[0]
  zeros_followed, m, _, elems = shuffle.followed_elements(n_rows, n, k)
  offsets = lax.mul(
      lax.broadcasted_iota(jnp.int32, (n_rows, n), 0), np.int32(m + 1)
  )

  def one_round(key, elems):
    _, key, sub = shuffle.split_round(key)
    row_bits = shuffle.round_row_bits(sub, n, sort_bits)
    ins, exact = _places(row_bits, shuffle.take_rows(row_bits, elems))
    counts = (
        jnp.zeros((n_rows * (m + 1),), jnp.int32)
        .at[
            lax.add(lax.convert_element_type(ins, jnp.int32), offsets).reshape(
                -1
            )
        ]
        .add(np.int32(1), mode="promise_in_bounds")
        .reshape(n_rows, m + 1)
    )
    ranks = lax.sub(
        _prefix_sums(lax.slice_in_dim(counts, 0, m, axis=1), total=n),
        np.int32(1),
    )

    def fix_row(carry):
      # The first row left whose bits tie: its ranks by comparisons.
      ranks, todo, left = carry
      r = lax.convert_element_type(jnp.argmax(todo), jnp.int32)
      fixed = _exact_ranks(
          lax.dynamic_slice_in_dim(row_bits, r, 1),
          lax.dynamic_slice_in_dim(elems, r, 1),
      )
      return (
          lax.dynamic_update_slice_in_dim(ranks, fixed, r, 0),
          lax.dynamic_update_slice_in_dim(todo, np.zeros(1, bool), r, 0),
          lax.sub(left, np.int32(1)),
      )

    # The count of rows left, carried: the loop's condition is one compare
    # (an `any` of the flags would be a reduction, compiled on its own).
    left = lax.sub(
        np.int32(n_rows),
        shuffle.count_pairs(exact, lax.full_like(exact, False)),
    )
    ranks, _, _ = lax.while_loop(
        lambda c: lax.gt(c[2], np.int32(0)),
        fix_row,
        (ranks, lax.bitwise_not(exact), left),
    )
    return key, ranks

  key = (k1.reshape(-1, 1, 1), k2.reshape(-1, 1, 1))
  for _ in range(shuffle.num_rounds(n)):
    key, elems = one_round(key, elems)
  row_idx = lax.broadcasted_iota(jnp.int32, (n_rows, m), 0)
  base = jnp.full((n_rows, n), zeros_followed)
  return base.at[row_idx, elems].set(
      not zeros_followed, unique_indices=True, mode="promise_in_bounds"
  )


def uses_compare(n: int, k: int) -> bool:
  """Whether `mask_block` takes `shuffle.compared_mask` for `n`, `k` zeros.

  When its `m n` comparisons per row and round, `m = min(k, n - k)`, are at
  most `_COMPARE_MAX` (static). Measured on the CPU (2 cores, per row): a
  comparison costs about 0.3 ns and the sort path about 60 us at `n = 1024`
  (one round) and 240 us at `n = 2048` (two), so at the bound the compare
  path is still at least as fast, and it compiles 4-5x faster at every size.
  """
  return min(k, n - k) * n * shuffle.num_rounds(n) <= _COMPARE_MAX


def default_path(n: int, k: int) -> str:
  """`mask_block`'s path for rows of `n`, `k` zeros (static).

  "compare" where `uses_compare`; else "search" while `m n`, `m = min(k,
  n - k)`, is at most `_SEARCH_MAX`; else "sort". The search path's fast
  pass holds unless some bits tie, about `m n / 2**32` times a row and round;
  such rows are ranked again by `m n` comparisons each. Measured on
  the CPU (one core, per element): 26 ns against the sort path's 71 ns at
  `n = 2048`, 43 against 74 at 4096, 54 against 85 at 16384 (`m n / 2**32`
  = 0.006), but 198 against 102 at 65536 (0.1), where most blocks tie.
  """
  if uses_compare(n, k):
    return "compare"
  return "search" if min(k, n - k) * n <= _SEARCH_MAX else "sort"


_PATHS = {
    "compare": shuffle.compared_mask,
    "search": _searched_mask,
    "sort": shuffle.followed_mask,
}


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
  # At most one group a row: a chunk of a few rows (a small `chunk_rows`, a
  # many-device sharding's tile) has no empty group.
  return max(1, min(_MAX_GROUPS, 2 * cores, n_rows, n_rows * n // _MIN_GROUP))


def mask_block(
    mask_key: tuple[Array, Array],
    spec: SparseSpec,
    rows: Array,
    col_start: Array | int,
    n_cols: int,
    path: str | None = None,
) -> Array:
  """Boolean keep-mask of `rows` x columns `[col_start, col_start + n_cols)`.

  `path`: "compare" (`shuffle.compared_mask`), "search" (`_searched_mask`) or
  "sort" (`shuffle.followed_mask`); default `default_path`'s choice. All give
  the same mask, bit for bit.
  """
  n, k = spec.fan_in, spec.k
  n_rows = rows.shape[0]
  if k == 0 or k == n:
    return jnp.full((n_rows, n_cols), k == 0)
  if path is None:
    path = default_path(n, k)
  if path not in _PATHS:
    raise ValueError(f"path must be one of {sorted(_PATHS)}, got {path!r}")
  k1, k2 = shuffle.row_keys(mask_key, rows)
  followed = _PATHS[path]
  n_groups = _groups(n_rows, n, spec.fan_out * spec.fan_in)
  bounds = [n_rows * g // n_groups for g in range(n_groups + 1)]
  mask = jnp.concatenate(
      [
          followed(k1[a:b], k2[a:b], n, k)
          for a, b in zip(bounds[:-1], bounds[1:], strict=True)
      ],
      axis=0,
  )
  if n_cols != n:
    mask = lax.dynamic_slice_in_dim(mask, col_start, n_cols, axis=1)
  return mask


def value_bits(
    init_key: tuple[Array, Array], spec: SparseSpec, rows: Array, cols: Array
) -> Array:
  """The reference's 32 weight bits of elements `rows[:, None] x cols[None, :]`.

  `jax.random.bits`' Threefry counters for a `(fan_out, fan_in)` array
  (`row * fan_in + col`), hashed by the unrolled `shuffle.threefry` (one fused
  pass on the CPU).
  """
  hi, lo = bits.mul_add_u64(
      rows.reshape(-1, 1), spec.fan_in, cols.reshape(1, -1)
  )
  b1, b2 = shuffle.threefry(init_key[0], init_key[1], hi, lo)
  return lax.bitwise_xor(b1, b2)
