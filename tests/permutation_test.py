"""The permutation method's sort-free mask equals the reference's sorted one.

`permutation.mask_block` follows the `min(k, n - k)` zeros (or kept inputs)
of each row through the rounds of `jax.random.permutation`'s sort-based
shuffle instead of sorting (key, index) pairs. Proves, bit for bit:

- the mask equals `jax.random.permutation(row_key, n) >= k` (the reference's
  own code, kept here as `reference_permutations`) for one- and two-round row
  lengths (the boundary is n = 1625 / 1626), k in {0, 1, m - 1, n - 1, n},
  sparsity 0.5, column tiles and several row groups;
- with ties: the sort bits are injectable, and coarse bits (16 or 2 values,
  or all equal) make almost every followed element tied, far more than one
  correction pass handles, against a key-value-sort shuffle with the same
  bits (itself checked against the reference's permutation with the real bits);
- `ranks` on crafted arrays equals the stable argsort ranks of numpy;
- all of the above for each of `mask_block`'s paths, the sort path
  (`_followed_mask`), the compare path (`_compared_mask`, short rows) and the
  search path (`_searched_mask`, the default for longer rows), and either side
  of the static bounds that pick between them;
- the search path's fast pass (bits alone) runs, and its result stands, when
  no bits tie (rows of 2048 and 4096 against the reference's permutations, a
  chunked, a sharded and a pmap matrix against the reference's), and its exact
  pass on (bits, position) pairs runs and agrees whenever they do.

Each distinct (rows, n, k, path) compiles its own program (the sort path
several seconds of CPU), so the default run keeps one case per property and
shares the reference's permutations (`reference_permutations`, computed once
per key, rows and n) between cases that differ only in k or in the column tile;
the `slow` step runs the full grid (every k edge at n = 2, 100, 1625, 1626,
5000) and the cases the default run leaves out.
"""

from tests import env  # noqa: F401

import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import alberta
from alberta._src import keys
from alberta._src import permutation
from alberta._src import shuffle
from alberta._src.spec import SparseSpec
from tests import test_utils
from third_party.alberta_framework.initializers import (
    sparse_init as reference_sparse_init,
)

_U32 = jnp.uint32


@functools.partial(jax.jit, static_argnames=("n_rows", "n"))
def _reference_permutations(key_data, row_start, n_rows, n):
  rows = row_start + jnp.arange(n_rows, dtype=_U32)
  k1, k2 = shuffle.row_keys(keys.key_words(key_data), rows)

  def one_row(w1, w2):
    key = jax.random.wrap_key_data(jnp.stack([w1, w2]), impl="threefry2x32")
    return jax.random.permutation(key, n)

  return jax.vmap(one_row)(k1, k2)


@functools.lru_cache(maxsize=None)
def reference_permutations(
    seed: int, row_start: int, n_rows: int, n: int
) -> np.ndarray:
  """The reference's `jax.random.permutation(row_key, n)` per row (read-only).

  Rows `[row_start, row_start + n_rows)` of `jax.random.key(seed)`'s mask
  key: the former implementation, whose mask is `perm >= k` (and a column
  tile its slice), so one permutation serves every k and tile. Computed once
  per argument tuple.
  """
  key_data = jax.random.key_data(jax.random.key(seed))
  perm = np.asarray(
      _reference_permutations(key_data, jnp.uint32(row_start), n_rows, n)
  )
  perm.flags.writeable = False
  return perm


@functools.partial(jax.jit, static_argnums=(2, 3))
def reference_shuffle(k1, k2, n, sort_bits):
  """`jax.random.permutation`'s shuffle (`_shuffle`) with injectable bits.

  The permutation of each row; its mask for k zeros is
  `reference_shuffle(...) >= k`.
  """
  n_rows = k1.shape[0]
  x = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (n_rows, n))
  cols = jnp.broadcast_to(jnp.arange(n, dtype=_U32), (n_rows, n))
  key = (k1, k2)
  for _ in range(shuffle.num_rounds(n)):
    key, sub = shuffle.split_rows(*key)
    _, x = lax.sort_key_val(sort_bits(*sub, cols), x, dimension=1)
  return x


@functools.partial(jax.jit, static_argnames=("spec", "n_cols", "fn"))
def _mask(key_data, spec, row_start, col_start, n_cols, fn):
  rows = row_start + jnp.arange(spec.fan_out, dtype=_U32)
  return fn(keys.key_words(key_data), spec, rows, col_start, n_cols)


# `mask_block` with each path forced, and with its own choice.
_PATHS = {
    "default": permutation.mask_block,
    "sort": functools.partial(permutation.mask_block, path="sort"),
    "compare": functools.partial(permutation.mask_block, path="compare"),
    "search": functools.partial(permutation.mask_block, path="search"),
}


def _both(spec, seed, row_start=0, col_start=0, n_cols=None, path="default"):
  """The masks of `mask_block` on `path` and `perm >= k`, sliced alike."""
  n_cols = spec.fan_in if n_cols is None else n_cols
  key_data = jax.random.key_data(jax.random.key(seed))
  args = (key_data, spec, jnp.uint32(row_start), jnp.int32(col_start), n_cols)
  perm = reference_permutations(seed, row_start, spec.fan_out, spec.fan_in)
  return (
      np.asarray(_mask(*args, fn=_PATHS[path])),
      perm[:, col_start : col_start + n_cols] >= spec.k,
  )


def _spec(n_rows, n, k):
  return SparseSpec(n_rows, n, k, "uniform", "permutation")


# (rows, n, k): k = 0 and n; a short row; one round up to n = 1625 with one
# zero followed, two from 1626 with one kept input followed (k = n - 1,
# sharing the reference's permutations with the column tile's k = n / 2 below).
# Many kept inputs followed through the sort path: TiedBitsTest's
# `_16_values_kept` (and the slow cases).
QUICK_CASES = (
    (9, 1, 0),
    (9, 1, 1),
    (16, 7, 3),
    (40, 1625, 1),
    (40, 1626, 1625),
)
# Every k edge at one and two rounds, either side of n / 2, and the default
# run's former cases.
SLOW_CASES = tuple(
    (rows, n, k)
    for rows, n in ((33, 2), (50, 100), (30, 1625), (30, 1626), (12, 5000))
    for k in sorted({0, 1, n // 2 - 1, n // 2, n // 2 + 1, n - 1, n})
) + ((24, 1626, 813), (64, 1000, 900), (16, 7, 4))
# m n rounds <= _COMPARE_MAX = 2**17 either side of the bound: one round at
# n = 1024 (m = 128 | 129), two rounds at n = 2048 (m = 32 | 33), zeros or
# kept inputs followed; (n, k, takes the compare path).
BOUND_CASES = (
    (1024, 128, True),
    (1024, 129, False),
    (1024, 1024 - 128, True),
    (1024, 1024 - 129, False),
    (2048, 32, True),
    (2048, 33, False),
    (2048, 2048 - 32, True),
)
# The reference's mask key and first row of the tests below, one per row length,
# so that the cases of one length share the reference's permutations.
_ROW_START = 5


def _with_paths(cases):
  return tuple(
      case + (path,) for case in cases for path in ("sort", "compare", "search")
  )


class ReferenceMaskTest(parameterized.TestCase):

  def check_equals_sorted_mask(self, rows, n, k, path, seed, row_start):
    new, old = _both(
        _spec(rows, n, k), seed=seed, row_start=row_start, path=path
    )
    np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal((~new).sum(axis=1), k)

  @parameterized.parameters(*_with_paths(QUICK_CASES))
  def test_equals_sorted_mask(self, rows, n, k, path):
    self.check_equals_sorted_mask(
        rows, n, k, path, seed=n, row_start=_ROW_START
    )

  @parameterized.parameters(*_with_paths(SLOW_CASES))
  @test_utils.slow
  def test_equals_sorted_mask_slow(self, rows, n, k, path):
    self.check_equals_sorted_mask(rows, n, k, path, seed=3 * n, row_start=1000)

  def test_bound_between_the_paths(self):
    for n, k, compare in BOUND_CASES:
      self.assertEqual(permutation.uses_compare(n, k), compare, (n, k))

  # The default path below the bound (its sort side is the sort path's
  # cases); the other sides in the slow step.
  @parameterized.parameters(*BOUND_CASES[:1])
  def test_default_path_at_the_bound_equals_sorted_mask(self, n, k, compare):
    self.check_default_path_equals_sorted_mask(n, k, compare)

  @parameterized.parameters(*BOUND_CASES[1:])
  @test_utils.slow
  def test_default_path_at_the_bound_equals_sorted_mask_slow(
      self, n, k, compare
  ):
    self.check_default_path_equals_sorted_mask(n, k, compare)

  def check_default_path_equals_sorted_mask(self, n, k, compare):
    self.assertEqual(permutation.uses_compare(n, k), compare)
    new, old = _both(_spec(6, n, k), seed=n, row_start=77)
    np.testing.assert_array_equal(new, old)

  def test_default_path_by_row_length(self):
    # Sparsity 0.9: compare up to m n rounds = 2**17, search up to m n =
    # 2**26 (rows of 16384), sort beyond.
    for n, k, path in (
        (256, 230, "compare"),
        (1024, 922, "compare"),
        (1626, 1463, "search"),
        (2048, 1843, "search"),
        (4096, 3686, "search"),
        (16384, 14746, "search"),
        (32768, 29491, "sort"),
        (65536, 58982, "sort"),
    ):
      self.assertEqual(permutation.default_path(n, k), path, (n, k))

  def test_small_layers_take_the_compare_path(self):
    # Haiku-sized layers at sparsity 0.9 and 0.5 compile without a sort.
    for n, k in ((64, 58), (256, 230), (1024, 922), (256, 128)):
      self.assertTrue(permutation.uses_compare(n, k), (n, k))
    self.assertFalse(permutation.uses_compare(8192, 7373))

  def test_bad_path_is_rejected(self):
    with self.assertRaisesRegex(ValueError, "path.*'bogus'"):
      permutation.mask_block(
          keys.key_words(jax.random.key(0)),
          _spec(2, 8, 3),
          jnp.arange(2, dtype=_U32),
          0,
          8,
          path="bogus",
      )

  # Tiling and row groups happen around either path (a slice of its mask,
  # one call per group): the compare path here, the sort path in the slow
  # step.
  def test_column_tile_equals_sorted_mask(self):
    self.check_column_tile_equals_sorted_mask("compare")

  def test_row_groups_equal_sorted_mask(self):
    self.check_row_groups_equal_sorted_mask("compare")

  def test_column_tile_on_the_search_path(self):
    self.check_column_tile_equals_sorted_mask("search")

  @test_utils.slow
  def test_column_tile_and_row_groups_on_the_sort_path(self):
    self.check_column_tile_equals_sorted_mask("sort")
    self.check_row_groups_equal_sorted_mask("sort")

  @test_utils.slow
  def test_row_groups_on_the_search_path(self):
    self.check_row_groups_equal_sorted_mask("search")

  @parameterized.parameters("sort", "compare", "search")
  @test_utils.slow
  def test_more_row_groups_equal_sorted_mask(self, path):
    # 600 x 1024 = 9.4 * 2**16 elements: as many groups as the cores allow
    # (row groups are for matrices of 2**28 elements and more: forced here).
    with mock.patch.object(permutation, "_GROUP_MIN_MATRIX", 0):
      self.assertGreater(permutation._groups(600, 1024, 600 * 1024), 1)
      self.check_equals_sorted_mask(600, 1024, 922, path, seed=8, row_start=0)

  def check_column_tile_equals_sorted_mask(self, path):
    # Two rounds, half the row zero: the rows of (40, 1626, 1625) above.
    new, old = _both(
        _spec(40, 1626, 813),
        seed=1626,
        row_start=_ROW_START,
        col_start=300,
        n_cols=700,
        path=path,
    )
    self.assertEqual(new.shape, (40, 700))
    np.testing.assert_array_equal(new, old)

  def check_row_groups_equal_sorted_mask(self, path):
    # 132 x 1000 = 2.01 * 2**16 elements: two independent groups; one round,
    # 100 kept inputs followed (row groups are for matrices of 2**28
    # elements and more: forced here).
    with mock.patch.object(permutation, "_GROUP_MIN_MATRIX", 0):
      self.assertGreater(permutation._groups(132, 1000, 132 * 1000), 1)
      self.check_equals_sorted_mask(132, 1000, 900, path, seed=8, row_start=0)

  @parameterized.parameters(1, 2, 3)
  def test_no_more_row_groups_than_rows(self, n_rows):
    # A chunk of a few rows of a matrix split into groups (a small
    # `chunk_rows`, or a many-device sharding's tile): one group a row at
    # most, never an empty one.
    with mock.patch.object(
        permutation, "_GROUP_MIN_MATRIX", 0
    ), mock.patch.object(permutation, "_MIN_GROUP", 1):
      self.assertBetween(permutation._groups(n_rows, 1000, 2**30), 1, n_rows)
      self.check_equals_sorted_mask(
          n_rows, 1000, 900, "search", seed=8, row_start=0
      )

  def test_one_row_chunks_of_a_matrix_with_row_groups(self):
    # 256 x 2**20 (2**28 elements, row groups) in chunks of one row: traced
    # (not run) with the real group policy.
    out = jax.eval_shape(
        lambda key: alberta.sparse_init(key, (256, 2**20), 0.9, chunk_rows=1),
        jax.random.key(0),
    )
    self.assertEqual(out.shape, (256, 2**20))

  def test_no_row_groups_below_the_matrix_size(self):
    self.assertEqual(permutation._groups(132, 1000, 2**28 - 1), 1)
    self.assertGreater(permutation._groups(132, 1000, 2**28), 1)


@functools.lru_cache(maxsize=None)
def _coarse_bits(shift):
  """The real sort bits with the low `shift` bits dropped: many ties.

  One function per shift (cached), so the programs compiled for it are
  shared between tests.
  """

  def sort_bits(k1, k2, counters):
    return shuffle.hash32(k1, k2, counters) >> _U32(shift)

  return sort_bits


def _zero_bits(k1, k2, counters):
  del k1, k2
  return jnp.zeros(counters.shape, _U32)


_followed_mask = jax.jit(shuffle.followed_mask, static_argnums=(2, 3, 4, 5))
_compared_mask = jax.jit(shuffle.compared_mask, static_argnums=(2, 3, 4))
_searched_mask = jax.jit(permutation._searched_mask, static_argnums=(2, 3, 4))


def _row_keys(n_rows, seed, row_start=0):
  key = keys.key_words(jax.random.key(seed))
  return shuffle.row_keys(key, row_start + jnp.arange(n_rows, dtype=_U32))


@functools.lru_cache(maxsize=None)
def tied_shuffle(n_rows: int, n: int, shift: int) -> np.ndarray:
  """`reference_shuffle` with `_coarse_bits(shift)`: rows `[0, n_rows)`, key n.

  Computed once per argument tuple (read-only); the mask for k zeros is
  `tied_shuffle(...) >= k`.
  """
  perm = np.asarray(
      reference_shuffle(*_row_keys(n_rows, seed=n), n, _coarse_bits(shift))
  )
  perm.flags.writeable = False
  return perm


class TiedBitsTest(parameterized.TestCase):

  @parameterized.parameters((8, 50, 0), (40, 1626, _ROW_START))
  def test_reference_shuffle_with_real_bits_is_jax_random_permutation(
      self, n_rows, n, row_start
  ):
    # With the real bits the reference shuffle is jax.random.permutation, at
    # one and two rounds (the second the rows of ReferenceMaskTest's cases).
    ref = reference_shuffle(*_row_keys(n_rows, n, row_start), n, shuffle.hash32)
    np.testing.assert_array_equal(
        np.asarray(ref), reference_permutations(n, row_start, n_rows, n)
    )

  def check_tied_bits_equal_stable_sort_shuffle(
      self, n_rows, n, k, shift, tie_rows
  ):
    k1, k2 = _row_keys(n_rows, seed=n)
    sort_bits = _coarse_bits(shift)
    ref = tied_shuffle(n_rows, n, shift) >= k
    new = _followed_mask(k1, k2, n, k, sort_bits, tie_rows)
    compared = _compared_mask(k1, k2, n, k, sort_bits)
    searched = _searched_mask(k1, k2, n, k, sort_bits)
    np.testing.assert_array_equal(np.asarray(new), ref)
    np.testing.assert_array_equal(np.asarray(compared), ref)
    np.testing.assert_array_equal(np.asarray(searched), ref)
    np.testing.assert_array_equal((~ref).sum(axis=1), k)

  @parameterized.named_parameters(
      # 16 distinct values in a row of 300: every element tied, one pass per
      # row and tied element (tie_rows=1), k < n / 2 and k > n / 2.
      ("_16_values_zeros", 12, 300, 40, 28, 1),
      ("_16_values_kept", 12, 300, 250, 28, 1),
      # 2 values and two rounds; a few rows per pass.
      ("_2_values_two_rounds", 6, 1700, 800, 31, 4),
  )
  def test_tied_bits_equal_stable_sort_shuffle(self, *case):
    self.check_tied_bits_equal_stable_sort_shuffle(*case)

  @parameterized.named_parameters(
      ("_2_values_two_rounds_kept", 6, 1700, 1000, 31, 4),
  )
  @test_utils.slow
  def test_tied_bits_equal_stable_sort_shuffle_slow(self, *case):
    self.check_tied_bits_equal_stable_sort_shuffle(*case)

  def check_compare_path_with_ties(self, n, k):
    k1, k2 = _row_keys(7, seed=n)
    sort_bits = _coarse_bits(29)  # 8 values: nearly every element tied
    new = _compared_mask(k1, k2, n, k, sort_bits)
    np.testing.assert_array_equal(np.asarray(new), tied_shuffle(7, n, 29) >= k)

  @parameterized.parameters(
      # One and two rounds; k at the edges and m - 1 (m = min(k, n - k)).
      (40, 1),
      (40, 39),
      (40, 13),
      (40, 27),
      (1700, 1),
      (1700, 1699),
  )
  def test_compare_path_with_ties_at_edge_k(self, n, k):
    self.check_compare_path_with_ties(n, k)

  # Two rounds and half the row followed: as test_tied_bits_equal_stable_...
  # _2_values_two_rounds, which runs the compare path too.
  @parameterized.parameters((1700, 849))
  @test_utils.slow
  def test_compare_path_with_ties_at_middle_k(self, n, k):
    self.check_compare_path_with_ties(n, k)

  @parameterized.parameters("sort", "compare", "search")
  def test_all_bits_equal_is_the_identity(self, path):
    # Every key equal: a stable sort keeps the order, so the zeros are the
    # first k positions.
    k1, k2 = _row_keys(5, seed=0)
    if path == "sort":
      new = _followed_mask(k1, k2, 64, 20, _zero_bits, 2)
    elif path == "compare":
      new = _compared_mask(k1, k2, 64, 20, _zero_bits)
    else:
      new = _searched_mask(k1, k2, 64, 20, _zero_bits)
    np.testing.assert_array_equal(
        np.asarray(new), np.broadcast_to(np.arange(64) >= 20, (5, 64))
    )


def _exact_rows(fn, *args):
  """`fn(*args)` and how many rows the search path ranked by comparisons."""
  calls = []
  exact = permutation._exact_ranks

  def counted(*a):
    jax.debug.callback(lambda: calls.append(1))
    return exact(*a)

  with mock.patch.object(permutation, "_exact_ranks", counted):
    out = np.asarray(jax.block_until_ready(fn(*args)))
  return out, len(calls)


def _rows_with_ties(row_bits: np.ndarray, followed: np.ndarray) -> int:
  """Rows where a followed element's bits equal another element's."""
  tied = 0
  for bits_r in row_bits:
    equal = bits_r[followed][:, None] == bits_r[None, :]
    equal[np.arange(len(followed)), followed] = False  # Itself.
    tied += bool(equal.any())
  return tied


class SearchPathTest(parameterized.TestCase):
  """The search path's fast pass (bits alone) and its exact rows."""

  @parameterized.parameters((24, 2048, 1843), (12, 4096, 410))
  def test_fast_pass_equals_the_reference_without_ties(self, rows, n, k):
    # Real bits, two rounds, zeros or kept inputs followed: m n / 2**32 < 4e-4
    # ties a row and round, and none in these rows (the count below says
    # so), so the bits-alone pass decides every round.
    k1, k2 = _row_keys(rows, seed=n, row_start=_ROW_START)
    fn = jax.jit(permutation._searched_mask, static_argnums=(2, 3))
    new, exact_rows = _exact_rows(fn, k1, k2, n, k)
    self.assertEqual(exact_rows, 0)
    np.testing.assert_array_equal(
        new, reference_permutations(n, _ROW_START, rows, n) >= k
    )

  @parameterized.named_parameters(
      # 4096 values in rows of 2048: ties between the row and the followed
      # elements in most rows; 2 values: every bit ties.
      ("_some_ties", 8, 2048, 1843, 20),
      ("_two_values", 4, 300, 40, 31),
  )
  def test_exact_rows_agree_with_ties(self, rows, n, k, shift):
    k1, k2 = _row_keys(rows, seed=n)
    fn = jax.jit(
        functools.partial(
            permutation._searched_mask, sort_bits=_coarse_bits(shift)
        ),
        static_argnums=(2, 3),
    )
    new, exact_rows = _exact_rows(fn, k1, k2, n, k)
    self.assertGreater(exact_rows, 0)
    self.assertLessEqual(exact_rows, rows * shuffle.num_rounds(n))
    np.testing.assert_array_equal(new, tied_shuffle(rows, n, shift) >= k)

  def test_only_rows_with_ties_are_ranked_again(self):
    # One round (n <= 1625), 2**20 bit values: about a quarter of the rows
    # hold a tie with a followed element. Exactly those are ranked again.
    rows, n, k, shift = 32, 1600, 1440, 12
    k1, k2 = _row_keys(rows, seed=7)
    sort_bits = _coarse_bits(shift)
    _, _, sub = shuffle.split_round(
        (k1.reshape(-1, 1, 1), k2.reshape(-1, 1, 1))
    )
    row_bits = np.asarray(shuffle.round_row_bits(sub, n, sort_bits))
    expected = _rows_with_ties(row_bits, np.arange(k, n))
    self.assertBetween(expected, 1, rows - 1)
    fn = jax.jit(
        functools.partial(permutation._searched_mask, sort_bits=sort_bits),
        static_argnums=(2, 3),
    )
    new, exact_rows = _exact_rows(fn, k1, k2, n, k)
    self.assertEqual(exact_rows, expected)
    ref = np.asarray(reference_shuffle(k1, k2, n, sort_bits)) >= k
    np.testing.assert_array_equal(new, ref)

  def test_followed_elements_tied_with_each_other(self):
    # Two followed elements with the same bits and no other tie: the bits
    # alone would give both the same place; the pass sees it.
    def sort_bits(k1, k2, counters):
      del k1, k2
      # Elements 0 and 1 (the followed ones, k = 2) share bits 7; the rest
      # are distinct and larger.
      return jnp.where(counters < 2, _U32(7), counters + _U32(100))

    k1, k2 = _row_keys(3, seed=0)
    fn = jax.jit(
        functools.partial(permutation._searched_mask, sort_bits=sort_bits),
        static_argnums=(2, 3),
    )
    new, exact_rows = _exact_rows(fn, k1, k2, 10, 2)
    self.assertEqual(exact_rows, 3 * shuffle.num_rounds(10))
    # Every round's sort keeps elements 0 and 1 first: they stay the zeros.
    np.testing.assert_array_equal(
        new, np.broadcast_to(np.arange(10) >= 2, (3, 10))
    )

  @parameterized.parameters(
      # A product with a triangular matrix (c**2 <= 64 total), a cumsum (c**2
      # too large, or sums past float32's exact integers).
      (5, 40, 40),
      (3, 9, 1),
      (2, 3, 2**24),
  )
  def test_prefix_sums_are_cumulative_sums(self, n_rows, c, total):
    rng = np.random.default_rng(c)
    counts = rng.integers(0, max(1, total // c), (n_rows, c)).astype(np.int32)
    counts[:, -1] = total - counts[:, :-1].sum(axis=1)  # Sums up to `total`.
    got = jax.jit(permutation._prefix_sums, static_argnums=1)(counts, total)
    np.testing.assert_array_equal(np.asarray(got), np.cumsum(counts, axis=1))

  @parameterized.parameters((None, 1), (16, 8))
  def test_chunked_sharded_and_pmap_equal_the_reference(
      self, chunk_rows, devices
  ):
    # 64 x 2048 at sparsity 0.9 takes the search path; the matrix is the
    # reference's whether built whole, in chunks of 16 rows, over 8 devices or
    # by pmap.
    shape, key = (64, 2048), jax.random.key(11)
    self.assertEqual(permutation.default_path(2048, 1843), "search")
    want = np.asarray(reference_sparse_init(key, shape, 0.9))
    if devices == 1:
      got = alberta.sparse_init(key, shape, 0.9, chunk_rows=chunk_rows)
    else:
      sharding = NamedSharding(jax.make_mesh((devices,), ("x",)), P("x"))
      got = alberta.sharded_sparse_init(
          key, shape, 0.9, sharding=sharding, chunk_rows=chunk_rows
      )
      pmapped = alberta.pmap_sparse_init(key, shape, 0.9)
      test_utils.assert_same_matrix(
          np.asarray(pmapped).reshape(shape), want, "uniform"
      )
    test_utils.assert_same_matrix(np.asarray(got), want, "uniform")


class RanksTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("_distinct", 2**32, 7, 1),
      ("_many_ties", 5, 7, 1),
      ("_many_ties_wide_pass", 3, 7, 16),
      ("_extremes", 2, 0, 3),
  )
  def test_ranks_are_stable_argsort_ranks(self, n_values, seed, tie_rows):
    rng = np.random.default_rng(seed)
    n_rows, n, m = 9, 40, 13
    row_bits = rng.integers(0, n_values, (n_rows, n), dtype=np.uint64)
    if n_values == 2:  # Values at both ends of the uint32 range.
      row_bits = row_bits * np.uint64(2**32 - 1)
    row_bits = row_bits.astype(np.uint32)
    elems = np.stack([rng.permutation(n)[:m] for _ in range(n_rows)]).astype(
        np.int32
    )
    elem_bits = np.take_along_axis(row_bits, elems, axis=1)
    order = np.argsort(row_bits, axis=1, kind="stable")
    rank_of = np.empty_like(order)
    np.put_along_axis(rank_of, order, np.arange(n)[None, :], axis=1)
    expected = np.take_along_axis(rank_of, elems, axis=1)

    table = jnp.asarray(row_bits)
    got = jax.jit(shuffle.ranks, static_argnums=(3, 4))(
        jnp.sort(table, axis=1),
        jnp.asarray(elems),
        jnp.asarray(elem_bits),
        lambda rows: table[rows],
        tie_rows,
    )
    np.testing.assert_array_equal(np.asarray(got), expected)

  def test_tie_rows_bound_covers_the_expected_ties(self):
    # mu = 65536 * 102 * 1024 / 2**32 ~ 1.6 rows with ties expected: the
    # bound leaves room for mu + 6 sqrt(mu) + 8.
    self.assertEqual(shuffle.max_tie_rows(65536, 102, 1024), 18)
    self.assertEqual(shuffle.max_tie_rows(4, 2, 10), 4)


if __name__ == "__main__":
  absltest.main()
