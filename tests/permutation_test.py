"""The permutation method's sort-free mask equals the seed's sorted one.

`permutation.mask_block` follows the `min(k, n - k)` zeros (or kept inputs)
of each row through the rounds of `jax.random.permutation`'s sort-based
shuffle instead of sorting (key, index) pairs. Proves, bit for bit:

- the mask equals `jax.random.permutation(row_key, n) >= k` (the seed's own
  code, kept here as `sorted_mask`) for one- and two-round row lengths (the
  boundary is n = 1625 / 1626), k in {0, 1, m - 1, n - 1, n}, sparsity 0.5,
  column tiles and several row groups;
- with ties: the sort bits are injectable, and coarse bits (16 or 2 values,
  or all equal) make almost every followed element tied, far more than one
  correction pass handles, against a key-value-sort shuffle with the same
  bits (itself checked against the seed's permutation with the real bits);
- `ranks` on crafted arrays equals the stable argsort ranks of numpy;
- all of the above for both of `mask_block`'s paths, the sort path
  (`_followed_mask`) and the compare path (`_compared_mask`, short rows), and
  either side of the static bound that picks between them.
"""

from tests import env  # noqa: F401

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest
from absl.testing import parameterized
from jax import lax

from alberta._src import bits
from alberta._src import permutation
from alberta._src.spec import SparseSpec

_U32 = jnp.uint32


def sorted_mask(mask_key, spec, rows, col_start, n_cols):
  """The former implementation: the seed's `jax.random.permutation` per row."""
  k1, k2 = permutation.row_keys(mask_key, rows)

  def one_row(w1, w2):
    key = jax.random.wrap_key_data(jnp.stack([w1, w2]), impl="threefry2x32")
    return jax.random.permutation(key, spec.fan_in)

  perm = jax.vmap(one_row)(k1, k2)
  perm = lax.dynamic_slice_in_dim(perm, col_start, n_cols, axis=1)
  return perm >= spec.k


def shuffle_mask(k1, k2, n, k, sort_bits):
  """`jax.random.permutation`'s shuffle (`_shuffle`) with injectable bits."""
  n_rows = k1.shape[0]
  x = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (n_rows, n))
  cols = jnp.broadcast_to(jnp.arange(n, dtype=_U32), (n_rows, n))
  key = (k1, k2)
  for _ in range(permutation.num_rounds(n)):
    key, sub = permutation._split_rows(*key)
    _, x = lax.sort_key_val(sort_bits(*sub, cols), x, dimension=1)
  return x >= k


@functools.partial(jax.jit, static_argnames=("spec", "n_cols", "fn"))
def _mask(key_data, spec, row_start, col_start, n_cols, fn):
  rows = row_start + jnp.arange(spec.fan_out, dtype=_U32)
  return fn(bits.key_words(key_data), spec, rows, col_start, n_cols)


# `mask_block` with each path forced, and with its own choice.
_PATHS = {
    "default": permutation.mask_block,
    "sort": functools.partial(permutation.mask_block, path="sort"),
    "compare": functools.partial(permutation.mask_block, path="compare"),
}


def _both(spec, seed, row_start=0, col_start=0, n_cols=None, path="default"):
  n_cols = spec.fan_in if n_cols is None else n_cols
  key_data = jax.random.key_data(jax.random.key(seed))
  args = (key_data, spec, jnp.uint32(row_start), jnp.int32(col_start), n_cols)
  return (np.asarray(_mask(*args, fn=_PATHS[path])),
          np.asarray(_mask(*args, fn=sorted_mask)))


def _spec(n_rows, n, k):
  return SparseSpec(n_rows, n, k, "uniform", "permutation")


# (rows, n, k): one round up to n = 1625, two from 1626; k at the edges, in
# the middle, and either side of n / 2 (zeros followed vs kept followed).
QUICK_CASES = ((9, 1, 0), (9, 1, 1), (16, 7, 3), (16, 7, 4), (40, 1625, 1),
               (40, 1626, 1625), (24, 1626, 813), (64, 1000, 900))
SLOW_CASES = tuple(
    (rows, n, k) for rows, n in ((33, 2), (50, 100), (30, 1625), (30, 1626),
                                 (12, 5000))
    for k in sorted({0, 1, n // 2 - 1, n // 2, n // 2 + 1, n - 1, n}))


def _with_paths(cases):
  return tuple(case + (path,) for case in cases for path in ("sort", "compare"))


class SeedMaskTest(parameterized.TestCase):

  @parameterized.parameters(*_with_paths(QUICK_CASES))
  def test_equals_sorted_mask(self, rows, n, k, path):
    new, old = _both(_spec(rows, n, k), seed=n + k, row_start=5, path=path)
    np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal((~new).sum(axis=1), k)

  @parameterized.parameters(*_with_paths(SLOW_CASES))
  @pytest.mark.slow
  def test_equals_sorted_mask_slow(self, rows, n, k, path):
    new, old = _both(_spec(rows, n, k), seed=3 * n + k, row_start=1000,
                     path=path)
    np.testing.assert_array_equal(new, old)

  @parameterized.parameters(
      # m n rounds <= _COMPARE_MAX = 2**17 either side of the bound: one round
      # at n = 1024 (m = 128 | 129), two rounds at n = 2048 (m = 32 | 33),
      # zeros or kept inputs followed.
      (1024, 128, True), (1024, 129, False), (1024, 1024 - 128, True),
      (1024, 1024 - 129, False), (2048, 32, True), (2048, 33, False),
      (2048, 2048 - 32, True))
  def test_default_path_at_the_bound_equals_sorted_mask(self, n, k,
                                                        compare):
    self.assertEqual(permutation.uses_compare(n, k), compare)
    new, old = _both(_spec(6, n, k), seed=n - k, row_start=77)
    np.testing.assert_array_equal(new, old)

  def test_small_layers_take_the_compare_path(self):
    # Haiku-sized layers at sparsity 0.9 and 0.5 compile without a sort.
    for n, k in ((64, 58), (256, 230), (1024, 922), (256, 128)):
      self.assertTrue(permutation.uses_compare(n, k), (n, k))
    self.assertFalse(permutation.uses_compare(8192, 7373))

  def test_bad_path_is_rejected(self):
    with self.assertRaisesRegex(ValueError, "path.*'bogus'"):
      permutation.mask_block(bits.key_words(jax.random.key(0)),
                             _spec(2, 8, 3), jnp.arange(2, dtype=_U32), 0, 8,
                             path="bogus")

  @parameterized.parameters("sort", "compare")
  def test_column_tile_equals_sorted_mask(self, path):
    new, old = _both(_spec(20, 1700, 850), seed=4, col_start=300, n_cols=700,
                     path=path)
    self.assertEqual(new.shape, (20, 700))
    np.testing.assert_array_equal(new, old)

  @parameterized.parameters("sort", "compare")
  def test_row_groups_equal_sorted_mask(self, path):
    # 600 x 1024 = 2.3 * 2**18 elements: more than one independent group.
    spec = _spec(600, 1024, 922)
    self.assertGreater(permutation._groups(600, 1024), 1)
    new, old = _both(spec, seed=8, path=path)
    np.testing.assert_array_equal(new, old)


def _coarse_bits(shift):
  """The real sort bits with the low `shift` bits dropped: many ties."""
  def sort_bits(k1, k2, counters):
    return permutation._hash32(k1, k2, counters) >> _U32(shift)
  return sort_bits


def _zero_bits(k1, k2, counters):
  del k1, k2
  return jnp.zeros(counters.shape, _U32)


class TiedBitsTest(parameterized.TestCase):

  def row_keys(self, n_rows, seed):
    key = bits.key_words(jax.random.key(seed))
    return permutation.row_keys(key, jnp.arange(n_rows, dtype=_U32))

  def test_shuffle_reference_is_the_seeds_permutation(self):
    # With the real bits the reference shuffle is jax.random.permutation.
    k1, k2 = self.row_keys(8, seed=1)
    for n in (50, 1700):
      ref = jax.jit(shuffle_mask, static_argnums=(2, 3, 4))(
          k1, k2, n, n // 3, permutation._hash32)
      spec = _spec(8, n, n // 3)
      seed = sorted_mask(bits.key_words(jax.random.key(1)), spec,
                         jnp.arange(8, dtype=_U32), 0, n)
      np.testing.assert_array_equal(np.asarray(ref), np.asarray(seed))

  @parameterized.named_parameters(
      # 16 distinct values in a row of 300: every element tied, one pass per
      # row and tied element (tie_rows=1), k < n / 2 and k > n / 2.
      ("_16_values_zeros", 12, 300, 40, 28, 1),
      ("_16_values_kept", 12, 300, 250, 28, 1),
      # 2 values and two rounds; a few rows per pass.
      ("_2_values_two_rounds", 6, 1700, 800, 31, 4),
      ("_2_values_two_rounds_kept", 6, 1700, 1000, 31, 4),
  )
  def test_tied_bits_equal_stable_sort_shuffle(self, n_rows, n, k, shift,
                                               tie_rows):
    k1, k2 = self.row_keys(n_rows, seed=n + k)
    sort_bits = _coarse_bits(shift)
    ref = np.asarray(jax.jit(shuffle_mask, static_argnums=(2, 3, 4))(
        k1, k2, n, k, sort_bits))
    new = jax.jit(permutation._followed_mask, static_argnums=(2, 3, 4, 5))(
        k1, k2, n, k, sort_bits, tie_rows)
    compared = jax.jit(permutation._compared_mask, static_argnums=(2, 3, 4))(
        k1, k2, n, k, sort_bits)
    np.testing.assert_array_equal(np.asarray(new), ref)
    np.testing.assert_array_equal(np.asarray(compared), ref)
    np.testing.assert_array_equal((~ref).sum(axis=1), k)

  @parameterized.parameters(
      # One and two rounds; k at the edges and m - 1 (m = min(k, n - k)).
      (40, 1), (40, 39), (40, 13), (40, 27), (1700, 1), (1700, 1699),
      (1700, 849))
  def test_compare_path_with_ties_at_edge_k(self, n, k):
    k1, k2 = self.row_keys(7, seed=k)
    sort_bits = _coarse_bits(29)  # 8 values: nearly every element tied
    ref = jax.jit(shuffle_mask, static_argnums=(2, 3, 4))(k1, k2, n, k,
                                                          sort_bits)
    new = jax.jit(permutation._compared_mask, static_argnums=(2, 3, 4))(
        k1, k2, n, k, sort_bits)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(ref))

  @parameterized.parameters("sort", "compare")
  def test_all_bits_equal_is_the_identity(self, path):
    # Every key equal: a stable sort keeps the order, so the zeros are the
    # first k positions.
    k1, k2 = self.row_keys(5, seed=0)
    if path == "sort":
      new = jax.jit(permutation._followed_mask, static_argnums=(2, 3, 4, 5))(
          k1, k2, 64, 20, _zero_bits, 2)
    else:
      new = jax.jit(permutation._compared_mask, static_argnums=(2, 3, 4))(
          k1, k2, 64, 20, _zero_bits)
    np.testing.assert_array_equal(np.asarray(new),
                                  np.broadcast_to(np.arange(64) >= 20, (5, 64)))


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
        np.int32)
    elem_bits = np.take_along_axis(row_bits, elems, axis=1)
    order = np.argsort(row_bits, axis=1, kind="stable")
    rank_of = np.empty_like(order)
    np.put_along_axis(rank_of, order, np.arange(n)[None, :], axis=1)
    expected = np.take_along_axis(rank_of, elems, axis=1)

    table = jnp.asarray(row_bits)
    got = jax.jit(permutation.ranks, static_argnums=(3, 4))(
        jnp.sort(table, axis=1), jnp.asarray(elems), jnp.asarray(elem_bits),
        lambda rows: table[rows], tie_rows)
    np.testing.assert_array_equal(np.asarray(got), expected)

  def test_tie_rows_bound_covers_the_expected_ties(self):
    # mu = 65536 * 102 * 1024 / 2**32 ~ 1.6 rows with ties expected: the
    # bound leaves room for mu + 6 sqrt(mu) + 8.
    self.assertEqual(permutation.max_tie_rows(65536, 102, 1024), 18)
    self.assertEqual(permutation.max_tie_rows(4, 2, 10), 4)


if __name__ == "__main__":
  absltest.main()
