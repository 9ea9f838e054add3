"""The counter method: exact zero counts, uniform zero sets, LeCun values.

Proves for `method="counter"` that every row has exactly `num_zeros(...)`
zeros (each row's keyed swap-or-not shuffle is a bijection of `[0, fan_in)`);
that the zero set is statistically a uniform k-subset (all subsets of tiny rows
equally frequent, column and pair frequencies within binomial bounds, rows
independent of each other and of the values); that the values are LeCun
uniform / normal; and that the matrix is bit-identical whatever the chunking,
column tiling, mesh or pmap, deterministic per key and unchanged by jit / vmap.

Statistical tests use fixed keys, so each one always passes or always fails;
every bound states the probability that a correct implementation (ideal
randomness) fails it for a random key.
"""

from tests import env  # noqa: F401

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import stats

import alberta
from alberta._src import blocks
from alberta._src import counter
from alberta._src.spec import make_spec

# Every p-value bound below: a correct implementation fails it with
# probability _ALPHA (Bonferroni-corrected where several values are checked).
_ALPHA = 1e-4


def _spec(shape, sparsity, init_type="uniform", rounding="nearest"):
  return make_spec(shape, sparsity, init_type, "counter", rounding)[0]


def _rows(row_start, n_rows: int):
  return jnp.asarray(row_start, jnp.uint32) + jnp.arange(n_rows, dtype=jnp.uint32)


@functools.partial(jax.jit, static_argnames=("n_rows", "fan_in"))
def _permuted_columns(key, n_rows: int, fan_in: int, row_start=0):
  """`pi_r(c)` for rows `[row_start, +n_rows)` and all columns `c`."""
  _, mask_key = blocks.split_key(key)
  rows = _rows(row_start, n_rows)
  material = counter.round_keys(mask_key, rows, fan_in)
  cols = jnp.broadcast_to(jnp.arange(fan_in, dtype=jnp.uint32), (n_rows, fan_in))
  return counter.permute(cols, material, fan_in)


@functools.partial(jax.jit, static_argnames=("n_rows", "fan_in", "k"))
def _zero_mask_jit(key, n_rows: int, fan_in: int, k: int, row_start=0):
  _, mask_key = blocks.split_key(key)
  cols = jnp.arange(fan_in, dtype=jnp.uint32)
  return ~counter.keep_mask(mask_key, k, fan_in, _rows(row_start, n_rows), cols)


def zero_mask(key, n_rows: int, fan_in: int, k: int, row_start=0) -> np.ndarray:
  """Where `sparse_init(..., method="counter")` is masked: `bool[n_rows, fan_in]`.

  The same `counter.keep_mask` call as the block generator's;
  `test_output_zeros_are_the_mask` ties it to the public output, so the
  statistics of this mask are those of `sparse_init`'s zero set.
  """
  return np.asarray(_zero_mask_jit(key, n_rows, fan_in, k, np.uint32(row_start)))


@functools.partial(jax.jit, static_argnames=("spec",))
def _raw_values_jit(key, spec):
  init_key, _ = blocks.split_key(key)
  rows = _rows(0, spec.fan_out)
  cols = jnp.arange(spec.fan_in, dtype=jnp.uint32)
  return blocks.values_from_bits(spec, counter.value_bits(init_key, rows, cols))


def raw_values(key, spec) -> np.ndarray:
  """The dense weights before masking, float32 `[fan_out, fan_in]`."""
  # They do not depend on k: one compilation per shape and distribution.
  return np.asarray(_raw_values_jit(key, dataclasses.replace(spec, k=0)))


def binomial_two_sided_p(counts, n: int, p: float) -> np.ndarray:
  """Two-sided tail probability of each count under Binomial(n, p)."""
  counts = np.asarray(counts)
  lower = stats.binom.cdf(counts, n, p)
  upper = stats.binom.sf(counts - 1, n, p)
  return np.minimum(1.0, 2 * np.minimum(lower, upper))


def as_bits(x) -> np.ndarray:
  return np.asarray(x, np.float32).view(np.uint32)


class ZeroCountTest(parameterized.TestCase):

  @parameterized.parameters(
      (1, 8), (2, 8), (3, 8), (10, 8), (64, 8), (1024, 8), (13, 8), (127, 8),
      (257, 8), (65537, 2))
  def test_each_row_shuffle_is_a_bijection(self, fan_in, n_rows):
    # A bijection of [0, fan_in) maps exactly k columns below k, for every k.
    perm = np.asarray(_permuted_columns(jax.random.key(11), n_rows, fan_in,
                                        np.uint32(2**32 - 5)))
    np.testing.assert_array_equal(
        np.sort(perm, axis=1),
        np.broadcast_to(np.arange(fan_in, dtype=np.uint32), perm.shape))

  @parameterized.parameters((1, 16), (3, 16), (10, 16), (64, 16), (127, 16),
                            (128, 16), (1024, 4), (65537, 2))
  def test_exactly_k_zeros_per_row_for_every_sparsity_and_rounding(
      self, fan_in, n_rows):
    _, mask_key = blocks.split_key(jax.random.key(3))
    rows = _rows(np.uint32(2**31 - 1), n_rows)
    cols = jnp.arange(fan_in, dtype=jnp.uint32)
    for sparsity, rounding in itertools.product(
        (0.0, 0.1, 0.5, 0.7, 0.9, 0.99, 1.0), ("nearest", "ceil")):
      k = alberta.num_zeros(fan_in, sparsity, rounding)
      # Op by op: integer ops only, and one compilation per op shape serves
      # every k.
      keep = np.asarray(counter.keep_mask(mask_key, k, fan_in, rows, cols))
      np.testing.assert_array_equal((~keep).sum(axis=1), k,
                                    err_msg=f"{sparsity=} {rounding=}")

  @parameterized.parameters((1, 0.5, "nearest"), (3, 1.0, "nearest"),
                            (10, 0.7, "ceil"), (64, 0.9, "nearest"),
                            (127, 0.1, "ceil"), (128, 0.0, "nearest"))
  def test_output_zeros_are_the_mask(self, fan_in, sparsity, rounding):
    key = jax.random.key(3)
    shape = (16, fan_in)
    spec = _spec(shape, sparsity, rounding=rounding)
    w = np.asarray(alberta.sparse_init(key, shape, sparsity, method="counter",
                                       rounding=rounding))
    zeros = zero_mask(key, 16, fan_in, spec.k)
    np.testing.assert_array_equal(zeros.sum(axis=1), spec.k)
    # A kept weight can itself be exactly 0.0 (probability 2**-23: the
    # uniform grid contains 0), so the output's zeros are the mask plus those.
    np.testing.assert_array_equal(w == 0, zeros | (raw_values(key, spec) == 0))

  @parameterized.parameters(0.0, 1.0)
  def test_sparsity_zero_and_one_at_fan_in_65537(self, sparsity):
    w = np.asarray(alberta.sparse_init(jax.random.key(5), (2, 65537), sparsity,
                                       method="counter"))
    if sparsity == 1.0:
      self.assertTrue((w == 0).all())
    else:
      self.assertEqual(int((w == 0).sum()), int((raw_values(
          jax.random.key(5), _spec((2, 65537), 0.0)) == 0).sum()))


class ZeroSetDistributionTest(parameterized.TestCase):

  @parameterized.parameters((5, 2, 50_000), (6, 3, 60_000), (4, 1, 20_000),
                            (8, 4, 70_000))
  def test_every_k_subset_equally_frequent(self, fan_in, k, n_rows):
    zeros = zero_mask(jax.random.key(20), n_rows, fan_in, k)
    codes = (zeros.astype(np.int64) << np.arange(fan_in)).sum(axis=1)
    subsets = [sum(1 << c for c in s)
               for s in itertools.combinations(range(fan_in), k)]
    counts = np.bincount(codes, minlength=1 << fan_in)
    self.assertEqual(counts[subsets].sum(), n_rows)  # no other pattern occurs
    # Chi-square over all C(fan_in, k) subsets (>= 700 expected in each):
    # false-failure rate _ALPHA.
    self.assertGreater(stats.chisquare(counts[subsets]).pvalue, _ALPHA)

  def test_column_and_pair_frequencies_within_binomial_bounds(self):
    fan_in, k, n_rows = 64, 16, 20_000
    zeros = zero_mask(jax.random.key(21), n_rows, fan_in, k).astype(np.float64)
    # Column c is zero in each row with probability k / n, independently
    # across rows: Binomial(n_rows, k / n). Bonferroni over 64 columns.
    col = zeros.sum(axis=0)
    p_col = binomial_two_sided_p(col, n_rows, k / fan_in)
    self.assertGreater(p_col.min(), _ALPHA / fan_in)
    # Jointly, the column counts have covariance n_rows p (1 - p)
    # (I - J / n) n / (n - 1), so this statistic is chi-square with n - 1
    # degrees of freedom (normal approximation at 5000 per column): catches
    # a small bias spread over many columns. False-failure rate _ALPHA.
    p = k / fan_in
    chi2 = ((col - n_rows * p)**2).sum() / (n_rows * p * (1 - p))
    self.assertGreater(stats.chi2.sf(chi2 * (fan_in - 1) / fan_in, fan_in - 1),
                       _ALPHA)
    # Columns c != d are both zero with probability k (k-1) / (n (n-1)).
    # Bonferroni over the 2016 pairs.
    pairs = zeros.T @ zeros
    iu = np.triu_indices(fan_in, 1)
    q = k * (k - 1) / (fan_in * (fan_in - 1))
    p_pair = binomial_two_sided_p(pairs[iu], n_rows, q)
    self.assertGreater(p_pair.min(), _ALPHA / len(iu[0]))

  @parameterized.parameters((64, 16), (10, 5), (257, 128))
  def test_adjacent_rows_are_independent(self, fan_in, k):
    # For independent uniform k-subsets, |Z_r & Z_{r+1}| is
    # hypergeometric(fan_in, k, k). Chi-square over the bins expecting >= 20
    # (the rest pooled into one): false-failure rate _ALPHA.
    n_rows = 20_001
    zeros = zero_mask(jax.random.key(22), n_rows, fan_in, k, row_start=7)
    overlap = (zeros[1:] & zeros[:-1]).sum(axis=1)
    expected = stats.hypergeom(fan_in, k, k).pmf(np.arange(k + 1)) * (n_rows - 1)
    observed = np.bincount(overlap, minlength=k + 1)
    big = expected >= 20
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
      obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()
    self.assertGreater(stats.chisquare(obs, exp).pvalue, _ALPHA)

  @parameterized.parameters("uniform", "normal")
  def test_mask_is_independent_of_values(self, init_type):
    key = jax.random.key(23)
    fan_in, n_rows, sparsity = 64, 3000, 0.5
    spec = _spec((n_rows, fan_in), sparsity, init_type)
    zeros = zero_mask(key, n_rows, fan_in, spec.k)
    values = raw_values(key, spec)
    # The weights the mask removes and the ones it keeps come from the same
    # distribution: two-sample KS (96000 each), false-failure rate _ALPHA.
    self.assertGreater(
        stats.ks_2samp(values[zeros], values[~zeros]).pvalue, _ALPHA)
    # Sign and mask: 2x2 contingency chi-square, false-failure rate _ALPHA.
    table = [[np.sum(zeros & (values < 0)), np.sum(zeros & (values >= 0))],
             [np.sum(~zeros & (values < 0)), np.sum(~zeros & (values >= 0))]]
    self.assertGreater(stats.chi2_contingency(table).pvalue, _ALPHA)


class WideZeroSetProbeTest(parameterized.TestCase):
  """Bigger samples of the laws no exact argument covers (three columns on)."""

  @pytest.mark.slow
  def test_every_6_subset_of_12_columns_over_4m_rows(self):
    fan_in, k, n_rows = 12, 6, 4_000_000
    zeros = zero_mask(jax.random.key(24), n_rows, fan_in, k)
    codes = (zeros.astype(np.int64) << np.arange(fan_in)).sum(axis=1)
    counts = np.bincount(codes, minlength=1 << fan_in)
    subsets = [sum(1 << c for c in s)
               for s in itertools.combinations(range(fan_in), k)]
    self.assertEqual(counts[subsets].sum(), n_rows)
    # 924 cells of ~4300: chi-square, false-failure rate _ALPHA.
    self.assertGreater(stats.chisquare(counts[subsets]).pvalue, _ALPHA)

  @pytest.mark.slow
  def test_triple_frequencies_within_binomial_bounds(self):
    fan_in, k, n_rows = 24, 12, 2_000_000
    zeros = zero_mask(jax.random.key(25), n_rows, fan_in, k).astype(np.float32)
    p3 = k * (k - 1) * (k - 2) / (fan_in * (fan_in - 1) * (fan_in - 2))
    counts = []
    for a, b in itertools.combinations(range(fan_in), 2):
      counts.extend((zeros[:, a] * zeros[:, b]) @ zeros[:, b + 1:])
    # Each of the 2024 triples is Binomial(n_rows, p3): Bonferroni over them.
    p = binomial_two_sided_p(np.rint(counts).astype(np.int64), n_rows, p3)
    self.assertLen(p, 2024)
    self.assertGreater(p.min(), _ALPHA / len(p))


class ValueDistributionTest(parameterized.TestCase):

  @parameterized.parameters(("uniform", 100), ("normal", 100), ("uniform", 7),
                            ("normal", 4096))
  def test_kept_values_are_lecun(self, init_type, fan_in):
    key = jax.random.key(30)
    n_rows = 120_000 // fan_in
    spec = _spec((n_rows, fan_in), 0.5, init_type)
    w = np.asarray(alberta.sparse_init(key, (n_rows, fan_in), 0.5, init_type,
                                       method="counter"))
    kept = w[~zero_mask(key, n_rows, fan_in, spec.k)]
    scale = 1 / np.sqrt(fan_in)
    if init_type == "uniform":
      self.assertGreaterEqual(kept.min(), np.float32(-scale))
      self.assertLess(kept.max(), np.float32(scale))
      dist = stats.uniform(loc=-scale, scale=2 * scale)
    else:
      dist = stats.norm(scale=scale)
    # One-sample KS on ~60000 values: false-failure rate _ALPHA. (The uniform
    # values lie on a grid of 2**-23 relative spacing, far below KS's
    # resolution of ~1/sqrt(60000).)
    self.assertGreater(stats.kstest(kept, dist.cdf).pvalue, _ALPHA)

  def test_values_of_neighbouring_columns_and_rows_are_uncorrelated(self):
    key = jax.random.key(31)
    spec = _spec((512, 512), 0.0)
    v = raw_values(key, spec).astype(np.float64) * np.sqrt(3 * 512)  # unit var
    # Lag-1 correlation pooled over 512 * 511 pairs is ~N(0, 1 / pairs):
    # |z| < 4.42 fails with probability 1e-5 each (two-sided).
    for a, b in ((v[:, 1:], v[:, :-1]), (v[1:], v[:-1]),
                 (v[1:, 1:], v[:-1, :-1])):
      z = np.mean(a * b) * np.sqrt(a.size)
      self.assertLess(abs(z), 4.42)


class TilingTest(parameterized.TestCase):
  _SHAPE = (75, 33)
  _SPARSITY = 0.7

  def _whole(self, init_type="uniform"):
    return np.asarray(alberta.sparse_init(
        jax.random.key(40), self._SHAPE, self._SPARSITY, init_type,
        method="counter"))

  @parameterized.product(chunk_rows=(1, 7, 37, None),
                         init_type=("uniform", "normal"))
  def test_any_chunk_rows_gives_identical_bits(self, chunk_rows, init_type):
    spec = _spec(self._SHAPE, self._SPARSITY, init_type)
    generate = jax.jit(blocks.generate, static_argnums=(1, 3, 5, 6, 7))
    out = generate(jax.random.key(40), spec, 0, spec.fan_out, 0, spec.fan_in,
                   jnp.float32, chunk_rows)
    np.testing.assert_array_equal(as_bits(out), as_bits(self._whole(init_type)))

  def test_column_tiles_assemble_to_the_matrix(self):
    spec = _spec(self._SHAPE, self._SPARSITY)
    key = jax.random.key(40)

    @functools.partial(jax.jit, static_argnums=(1, 3))
    def tile(r0, n_rows, c0, n_cols):  # starts traced, sizes static
      return blocks.row_block(key, spec, r0, n_rows, c0, n_cols)

    # 3 x 3 tiles of 25 x 11: one compilation, the starts traced.
    out = np.block([[np.asarray(tile(r0, 25, c0, 11)) for c0 in (0, 11, 22)]
                    for r0 in (0, 25, 50)])
    np.testing.assert_array_equal(as_bits(out), as_bits(self._whole()))

  @parameterized.named_parameters(
      ("_rows_8", (8,), ("x",), P("x"), None),
      ("_cols_rows_2x4_chunked", (2, 4), ("x", "y"), P("y", "x"), 3),
      ("_rows_over_both_axes", (2, 4), ("x", "y"), P(("x", "y")), None),
      ("_replicated", (8,), ("x",), P(), 7))
  def test_sharded_equals_whole_matrix(self, mesh_shape, axes, spec, chunk_rows):
    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), axes)
    shape = (64, 48)
    out = alberta.sharded_sparse_init(
        jax.random.key(41), shape, 0.8, sharding=NamedSharding(mesh, spec),
        method="counter", chunk_rows=chunk_rows)
    want = alberta.sparse_init(jax.random.key(41), shape, 0.8, method="counter")
    np.testing.assert_array_equal(as_bits(out), as_bits(want))

  def test_pmap_equals_whole_matrix(self):
    out = alberta.pmap_sparse_init(jax.random.key(42), (64, 40), 0.9,
                                   method="counter", chunk_rows=5)
    want = alberta.sparse_init(jax.random.key(42), (64, 40), 0.9,
                               method="counter")
    np.testing.assert_array_equal(as_bits(np.asarray(out).reshape(64, 40)),
                                  as_bits(want))


class KeyTest(parameterized.TestCase):

  def test_same_key_same_matrix_typed_or_raw(self):
    shape = (32, 50)
    a = alberta.sparse_init(jax.random.key(50), shape, method="counter")
    b = alberta.sparse_init(jax.random.key(50), shape, method="counter")
    c = alberta.sparse_init(jax.random.PRNGKey(50), shape, method="counter")
    np.testing.assert_array_equal(as_bits(a), as_bits(b))
    np.testing.assert_array_equal(as_bits(a), as_bits(c))

  def test_different_keys_give_different_masks_and_values(self):
    fan_in, k, n_rows = 64, 16, 256
    za = zero_mask(jax.random.key(51), n_rows, fan_in, k)
    zb = zero_mask(jax.random.key(52), n_rows, fan_in, k)
    # Two independent uniform 16-subsets of 64 coincide with probability
    # 1 / C(64, 16) ~ 2e-15 per row.
    self.assertFalse((za == zb).all(axis=1).any())
    spec = _spec((n_rows, fan_in), 0.0)
    va = raw_values(jax.random.key(51), spec)
    vb = raw_values(jax.random.key(52), spec)
    # Equal float32 draws: probability ~2**-23 per element, ~2e-3 in all.
    self.assertLess(np.mean(va == vb), 1e-3)

  def test_jit_equals_eager(self):
    shape = (24, 30)
    f = jax.jit(lambda key: alberta.sparse_init(key, shape, 0.6, "normal",
                                                method="counter"))
    want = alberta.sparse_init(jax.random.key(53), shape, 0.6, "normal",
                               method="counter")
    np.testing.assert_array_equal(as_bits(f(jax.random.key(53))), as_bits(want))

  @parameterized.parameters("typed", "raw")
  def test_vmap_over_keys_stacks_per_key_matrices(self, key_kind):
    make = jax.random.key if key_kind == "typed" else jax.random.PRNGKey
    keys = jax.vmap(make)(jnp.arange(4))
    shape = (12, 20)
    f = lambda key: alberta.sparse_init(key, shape, 0.5, method="counter")
    out = jax.jit(jax.vmap(f))(keys)
    want = np.stack([np.asarray(f(make(i))) for i in range(4)])
    np.testing.assert_array_equal(as_bits(out), as_bits(want))


if __name__ == "__main__":
  absltest.main()
