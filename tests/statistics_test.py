"""Statistics of `sparse_init`'s output, for both methods.

Proves the distribution the docstrings promise, for `method="permutation"`
(the reference's) and `method="counter"` alike, through the public API: exactly
`num_zeros` zeros per output unit; LeCun-uniform values inside
`[-1/sqrt(fan_in), 1/sqrt(fan_in))`; kept values distributed as U(-s, s) or
N(0, s^2) (Kolmogorov-Smirnov) at several fan-ins; zero sets uniform among all
k-subsets (all subsets of tiny rows equally frequent; column and pair
frequencies within binomial bounds); rows independent of each other; the mask
independent of the values; neighbouring values uncorrelated; different keys
giving different, independent masks and the same key the same matrix.

`StatisticsSuite` holds the tests; `PermutationStatisticsTest` and
`CounterStatisticsTest` run all of them, with the same samples and the same
bounds. The default run checks each property on one sample; the `slow` step
adds bigger samples (all k-subsets at fan_in 4 to 8 over 20000-70000 rows),
the KS test at fan_in 7, 100 and 4096, and adjacent-row independence at
fan_in 10 and 257. What only the counter method has (its shuffle's bijection
and round rule, the exact law of its zero set, tiling) is in
`tests/counter_test.py`.

Every test uses fixed keys, so it is deterministic; the bounds are chosen so
that, had the key been drawn at random, a correct implementation would fail
with the probability stated beside each bound. Every p-value threshold is
`test_utils.ALPHA` = 1e-4, i.e. a 1e-4 false-failure rate per statistical
assertion (Bonferroni-corrected where several values are checked at once).
"""

from tests import env  # noqa: F401

import functools
import itertools
import math

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from scipy import stats

import alberta
from tests import test_utils

ALPHA = test_utils.ALPHA

# One matrix serves most tests (each new shape / zero count compiles a
# program, ~1-2 s of CPU; a new key does not): 512 output units of 400 inputs,
# half of them zero, so 102400 kept values and 200 zeros per row.
FAN_OUT, FAN_IN, SPARSITY = 512, 400, 0.5
K = 200


@functools.lru_cache(maxsize=None)
def _draw(method, init_type, seed, shape, sparsity, rounding) -> np.ndarray:
  out = np.asarray(
      alberta.sparse_init(
          jax.random.key(seed),
          shape,
          sparsity,
          init_type,
          method=method,
          rounding=rounding,
      )
  )
  out.flags.writeable = False  # shared by the tests that draw it
  return out


def draw(
    method,
    init_type="uniform",
    seed=0,
    shape=(FAN_OUT, FAN_IN),
    sparsity=SPARSITY,
    rounding="nearest",
) -> np.ndarray:
  """`sparse_init`'s matrix, computed once per argument tuple (read-only)."""
  return _draw(method, init_type, seed, tuple(shape), sparsity, rounding)


def sparsity_for(fan_in: int, k: int) -> float:
  """The sparsity that gives `k` zeros of `fan_in` under "nearest" rounding."""
  sparsity = k / fan_in
  assert alberta.num_zeros(fan_in, sparsity) == k, (fan_in, k)
  return sparsity


def zero_mask(matrix: np.ndarray) -> np.ndarray:
  """The masked positions.

  A kept weight is never exactly 0.0 with the counter method (its values come
  from an open interval) and is 0.0 with probability about 2**-23 per element
  with the permutation method, so for a fixed key `== 0` is the mask; the
  tests that use it check the exact zero count per row, which a stray zero
  would break.
  """
  return matrix == 0


def column_uniformity_pvalue(mask: np.ndarray) -> float:
  """P-value of "each row's zero set is a uniform k-subset" from column counts.

  A row's 0/1 indicator vector with exactly k ones among n has covariance
  p(1-p) n/(n-1) (I - J/n), p = k/n. Summed over m independent rows the
  column counts c have mean m p and that covariance times m, of rank n-1, so
  T = |c - m p|^2 (n-1) / (m p (1-p) n) is asymptotically chi-square with
  n-1 degrees of freedom (Pearson's statistic, corrected for the
  fixed-k-per-row constraint). It catches a small bias spread over many
  columns.
  """
  m, n = mask.shape
  k = int(mask[0].sum())
  p = k / n
  counts = mask.sum(axis=0)
  t = ((counts - m * p) ** 2).sum() * (n - 1) / (m * p * (1 - p) * n)
  return float(stats.chi2.sf(t, n - 1))


class StatisticsSuite(metaclass=parameterized.TestGeneratorMetaclass):
  """The statistical contract of `sparse_init(..., method=self.METHOD)`.

  A mixin: the two TestCases below run it, one per method. (The metaclass
  expands the parameterized tests here, once, for both.)
  """

  METHOD: str

  def draw(self, *args, **kwargs) -> np.ndarray:
    return draw(self.METHOD, *args, **kwargs)

  # --- Zero counts. ----------------------------------------------------------

  @parameterized.named_parameters(
      ("_half_uniform", (FAN_OUT, FAN_IN), SPARSITY, "uniform", "nearest"),
      ("_half_normal", (FAN_OUT, FAN_IN), SPARSITY, "normal", "nearest"),
      ("_conv_layout", (16, 8, 3, 3), 0.9, "uniform", "ceil"),
  )
  def test_every_output_unit_has_exactly_k_zeros(
      self, shape, sparsity, init_type, rounding
  ):
    self.check_every_output_unit_has_exactly_k_zeros(
        shape, sparsity, init_type, rounding
    )

  # Shapes no other test draws (a program each).
  @parameterized.named_parameters(
      ("_ceil_wide", (33, 1001), 0.99, "uniform", "ceil"),
      ("_nearest_narrow", (300, 7), 0.1, "normal", "nearest"),
  )
  @test_utils.slow
  def test_every_output_unit_has_exactly_k_zeros_at_other_shapes(
      self, shape, sparsity, init_type, rounding
  ):
    self.check_every_output_unit_has_exactly_k_zeros(
        shape, sparsity, init_type, rounding
    )

  def check_every_output_unit_has_exactly_k_zeros(
      self, shape, sparsity, init_type, rounding
  ):
    out = self.draw(
        init_type, seed=1, shape=shape, sparsity=sparsity, rounding=rounding
    )
    fan_in = math.prod(shape[1:])
    np.testing.assert_array_equal(
        test_utils.zeros_per_row(out),
        alberta.num_zeros(fan_in, sparsity, rounding),
    )

  # --- Values. ---------------------------------------------------------------

  def test_uniform_values_inside_the_lecun_bound(self):
    out = self.draw("uniform", seed=2)
    # Both methods draw U(-scale, scale) in float32 with scale =
    # 1/sqrt(fan_in) rounded to float32; the permutation method's
    # jax.random.uniform clamps below at -scale and its largest value is
    # scale - 2 ulp(scale), the counter's values lie on an open grid inside.
    # This bound is exact: its false-failure rate is 0.
    scale = np.float32(1.0 / math.sqrt(FAN_IN))
    self.assertTrue(np.all(out >= -scale), out.min())
    self.assertTrue(np.all(out < scale), out.max())
    # And the bound is reached in spirit: with 102400 kept values the extreme
    # ones lie within 1e-3 * scale of the ends; P(max < scale(1 - 1e-3)) is
    # (1 - 5e-4)**102400 ~ 1e-22.
    kept = out[~zero_mask(out)]
    self.assertGreater(kept.max(), scale * (1 - 1e-3))
    self.assertLess(kept.min(), -scale * (1 - 1e-3))

  @parameterized.named_parameters(
      # 512 x 400: 102400 kept values.
      ("_uniform_fan_in_400", "uniform", FAN_IN, FAN_OUT, 3),
      ("_normal_fan_in_400", "normal", FAN_IN, FAN_OUT, 4),
  )
  def test_kept_values_are_lecun(self, init_type, fan_in, n_rows, seed):
    self.check_kept_values_are_lecun(init_type, fan_in, n_rows, seed)

  @parameterized.named_parameters(
      # ~60000 kept values at small, medium and large fan-in.
      ("_uniform_fan_in_100", "uniform", 100, 1200, 30),
      ("_normal_fan_in_100", "normal", 100, 1200, 30),
      ("_uniform_fan_in_7", "uniform", 7, 120_000 // 7, 30),
      ("_normal_fan_in_4096", "normal", 4096, 120_000 // 4096, 30),
  )
  @test_utils.slow
  def test_kept_values_are_lecun_at_other_fan_ins(
      self, init_type, fan_in, n_rows, seed
  ):
    self.check_kept_values_are_lecun(init_type, fan_in, n_rows, seed)

  def check_kept_values_are_lecun(self, init_type, fan_in, n_rows, seed):
    # The mask and the values come from independent halves of `split(key)`
    # (see test_mask_is_independent_of_values), so the kept values are an
    # i.i.d. sample of the value distribution.
    out = self.draw(init_type, seed=seed, shape=(n_rows, fan_in), sparsity=0.5)
    kept = out[~zero_mask(out)].astype(np.float64)
    self.assertLen(kept, n_rows * (fan_in - alberta.num_zeros(fan_in, 0.5)))
    scale = 1.0 / math.sqrt(fan_in)
    if init_type == "uniform":
      self.assertGreaterEqual(kept.min(), np.float32(-scale))
      self.assertLess(kept.max(), np.float32(scale))
      dist = stats.uniform(loc=-scale, scale=2 * scale)
    else:
      dist = stats.norm(scale=scale)
    # One-sample KS: false-failure rate ALPHA. (The values lie on a grid of
    # 2**-23 relative spacing, far below KS's resolution of ~1/sqrt(60000).)
    result = stats.kstest(kept, dist.cdf)
    self.assertGreater(result.pvalue, ALPHA, result)

  def test_kstest_has_power_against_wrong_scale(self):
    # The test above could not pass a sampler off by 5% in scale: with
    # 102400 values the KS distance is ~0.0135 (expected max of
    # |Phi(x) - Phi(x / 1.05)| ~ 0.0115 plus noise), p ~ 1e-16.
    out = self.draw("normal", seed=4)
    kept = out[~zero_mask(out)].astype(np.float64)
    result = stats.kstest(kept, "norm", args=(0.0, 1.05 / math.sqrt(FAN_IN)))
    self.assertLess(result.pvalue, ALPHA, result)

  def test_values_of_neighbouring_columns_and_rows_are_uncorrelated(self):
    # Sparsity 0: the values before masking (the program of
    # test_mask_is_independent_of_values, another key).
    v = self.draw("uniform", seed=31, sparsity=0.0)
    v = v.astype(np.float64) * np.sqrt(3 * FAN_IN)  # unit variance
    # Lag-1 correlation pooled over ~2e5 pairs is ~N(0, 1 / pairs):
    # |z| < 4.42 fails with probability 1e-5 each (two-sided).
    for a, b in (
        (v[:, 1:], v[:, :-1]),
        (v[1:], v[:-1]),
        (v[1:, 1:], v[:-1, :-1]),
    ):
      z = np.mean(a * b) * np.sqrt(a.size)
      self.assertLess(abs(z), 4.42)

  @parameterized.named_parameters(
      ("_uniform", "uniform"), ("_normal", "normal")
  )
  def test_mask_is_independent_of_values(self, init_type):
    out = self.draw(init_type, seed=23)
    zeros = zero_mask(out)
    np.testing.assert_array_equal(zeros.sum(axis=1), K)
    # Sparsity 0 gives the values before masking: the kept ones are the
    # output's, bit for bit.
    values = self.draw(init_type, seed=23, sparsity=0.0)
    test_utils.assert_same_bits(values[~zeros], out[~zeros])
    # The weights the mask removes and the ones it keeps come from the same
    # distribution: two-sample KS (102400 each), false-failure rate ALPHA.
    self.assertGreater(
        stats.ks_2samp(values[zeros], values[~zeros]).pvalue, ALPHA
    )
    # Sign and mask: 2x2 contingency chi-square, false-failure rate ALPHA.
    table = [
        [np.sum(zeros & (values < 0)), np.sum(zeros & (values >= 0))],
        [np.sum(~zeros & (values < 0)), np.sum(~zeros & (values >= 0))],
    ]
    self.assertGreater(stats.chi2_contingency(table).pvalue, ALPHA)

  # --- Zero sets. ------------------------------------------------------------

  def test_every_k_subset_equally_frequent(self):
    # 5 inputs, 2 zeros: each row's zero set is one of C(5, 2) = 10 subsets.
    self.check_every_k_subset_equally_frequent(5, 2, 8000, seed=7)

  @parameterized.parameters(
      (5, 2, 50_000), (6, 3, 60_000), (4, 1, 20_000), (8, 4, 70_000)
  )
  @test_utils.slow
  def test_every_k_subset_equally_frequent_in_big_samples(
      self, fan_in, k, n_rows
  ):
    self.check_every_k_subset_equally_frequent(fan_in, k, n_rows, seed=20)

  def check_every_k_subset_equally_frequent(self, fan_in, k, n_rows, seed):
    zeros = zero_mask(
        self.draw(
            seed=seed, shape=(n_rows, fan_in), sparsity=sparsity_for(fan_in, k)
        )
    )
    codes = (zeros.astype(np.int64) << np.arange(fan_in)).sum(axis=1)
    subsets = [
        sum(1 << c for c in s) for s in itertools.combinations(range(fan_in), k)
    ]
    counts = np.bincount(codes, minlength=1 << fan_in)
    self.assertEqual(counts[subsets].sum(), n_rows)  # no other pattern occurs
    # Rows are independent, so the subset counts are multinomial: Pearson
    # chi-square over all C(fan_in, k) subsets (>= 700 expected in each),
    # false-failure rate ALPHA.
    result = stats.chisquare(counts[subsets])
    self.assertGreater(result.pvalue, ALPHA, result)

  @parameterized.named_parameters(
      # 399 degrees of freedom.
      ("_many_inputs", (FAN_OUT, FAN_IN), SPARSITY, 5),
      # Few inputs, many rows: 8000 rows of 5 inputs, 2 zeros each (the
      # program of test_every_k_subset_equally_frequent); 4 degrees of
      # freedom.
      ("_few_inputs", (8000, 5), 0.4, 6),
  )
  def test_zero_positions_uniform_across_inputs(self, shape, sparsity, seed):
    # Corrected Pearson chi-square on column counts: false-failure rate ALPHA.
    mask = zero_mask(self.draw(seed=seed, shape=shape, sparsity=sparsity))
    self.assertGreater(column_uniformity_pvalue(mask), ALPHA)

  def test_column_and_pair_frequencies_within_binomial_bounds(self):
    # The matrix of test_adjacent_rows_are_independent(64, 16).
    fan_in, k, n_rows = 64, 16, 20_001
    zeros = zero_mask(
        self.draw(
            seed=21, shape=(n_rows, fan_in), sparsity=sparsity_for(fan_in, k)
        )
    )
    # Column c is zero in each row with probability k / n, independently
    # across rows: Binomial(n_rows, k / n). Bonferroni over 64 columns.
    col = zeros.sum(axis=0)
    p_col = test_utils.binomial_two_sided_p(col, n_rows, k / fan_in)
    self.assertGreater(p_col.min(), ALPHA / fan_in)
    # Jointly: the corrected chi-square above (normal approximation at ~5000
    # per column), false-failure rate ALPHA.
    self.assertGreater(column_uniformity_pvalue(zeros), ALPHA)
    # Columns c != d are both zero with probability k (k-1) / (n (n-1)).
    # Bonferroni over the 2016 pairs.
    zeros = zeros.astype(np.float64)
    pairs = zeros.T @ zeros
    iu = np.triu_indices(fan_in, 1)
    q = k * (k - 1) / (fan_in * (fan_in - 1))
    p_pair = test_utils.binomial_two_sided_p(pairs[iu], n_rows, q)
    self.assertGreater(p_pair.min(), ALPHA / len(iu[0]))

  def test_rows_are_independent(self):
    # Zero sets of independent rows overlap hypergeometrically:
    # overlap ~ Hypergeom(N=400, K=200, n=200), mean 100, variance 25.06.
    # The 256 disjoint row pairs (0,1), (2,3), ... are independent, so their
    # summed overlap is ~normal; two-sided z-test, false-failure rate ALPHA
    # (|z| < 3.89). Identical or complementary rows would give |z| ~ 300.
    mask = zero_mask(self.draw(seed=8))
    overlaps = (mask[0::2] & mask[1::2]).sum(axis=1)
    dist = stats.hypergeom(FAN_IN, K, K)
    z = (overlaps.sum() - len(overlaps) * dist.mean()) / math.sqrt(
        len(overlaps) * dist.var()
    )
    self.assertLess(abs(z), stats.norm.isf(ALPHA / 2), z)
    # No two rows of the matrix share a zero set: P(any of the C(512, 2)
    # pairs equal) < 512**2 / C(400, 200) ~ 1e-114.
    self.assertLen({row.tobytes() for row in mask}, FAN_OUT)

  def test_adjacent_rows_are_independent(self):
    self.check_adjacent_rows_are_independent(64, 16)

  @parameterized.parameters((10, 5), (257, 128))
  @test_utils.slow
  def test_adjacent_rows_are_independent_at_other_fan_ins(self, fan_in, k):
    self.check_adjacent_rows_are_independent(fan_in, k)

  def check_adjacent_rows_are_independent(self, fan_in, k):
    # For independent uniform k-subsets, |Z_r & Z_{r+1}| is
    # hypergeometric(fan_in, k, k). Chi-square over the bins expecting >= 20
    # (the rest pooled into one): false-failure rate ALPHA.
    n_rows = 20_001
    zeros = zero_mask(
        self.draw(
            seed=22, shape=(n_rows, fan_in), sparsity=sparsity_for(fan_in, k)
        )
    )
    np.testing.assert_array_equal(zeros.sum(axis=1), k)
    overlap = (zeros[1:] & zeros[:-1]).sum(axis=1)
    expected = stats.hypergeom(fan_in, k, k).pmf(np.arange(k + 1)) * (
        n_rows - 1
    )
    observed = np.bincount(overlap, minlength=k + 1)
    big = expected >= 20
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
      obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()
    self.assertGreater(stats.chisquare(obs, exp).pvalue, ALPHA)

  # --- Keys. -----------------------------------------------------------------

  def test_different_keys_give_different_independent_masks(self):
    # 20 keys, (16, 100) with 90 zeros per row: two keys' masks coincide with
    # probability C(100, 90)**-16 ~ 1e-207.
    masks = [
        zero_mask(self.draw(seed=100 + i, shape=(16, 100), sparsity=0.9))
        for i in range(20)
    ]
    self.assertLen({m.tobytes() for m in masks}, 20)
    # And they are independent: the row-wise overlap of key 0's and key 1's
    # masks, 16 rows ~ Hypergeom(100, 90, 90) each (mean 81, var 0.818);
    # two-sided z-test, false-failure rate ALPHA.
    overlaps = (masks[0] & masks[1]).sum(axis=1)
    dist = stats.hypergeom(100, 90, 90)
    z = (overlaps.sum() - 16 * dist.mean()) / math.sqrt(16 * dist.var())
    self.assertLess(abs(z), stats.norm.isf(ALPHA / 2), z)

  def test_different_keys_give_different_rows_and_values(self):
    # Shapes other tests compile too.
    fan_in, k, n_rows = 64, 16, 20_001
    shape, sparsity = (n_rows, fan_in), sparsity_for(fan_in, k)
    za = zero_mask(self.draw(seed=51, shape=shape, sparsity=sparsity))
    zb = zero_mask(self.draw(seed=52, shape=shape, sparsity=sparsity))
    # Two independent uniform 16-subsets of 64 coincide with probability
    # 1 / C(64, 16) ~ 2e-15 per row, ~5e-11 for any of the rows.
    self.assertFalse((za == zb).all(axis=1).any())
    va = self.draw(seed=51, sparsity=0.0)
    vb = self.draw(seed=52, sparsity=0.0)
    # Equal float32 draws: probability ~2**-23 per element, far below 1e-3
    # on average (exceeding it: probability < 1e-100).
    self.assertLess(np.mean(va == vb), 1e-3)

  def test_same_key_same_matrix_typed_or_raw(self):
    # Not through the cache: three separate calls (the shape of
    # test_different_keys_give_different_independent_masks).
    def call(key):
      return alberta.sparse_init(key, (16, 100), 0.9, method=self.METHOD)

    a = call(jax.random.key(9))
    b = call(jax.random.key(9))
    c = call(jax.random.PRNGKey(9))
    np.testing.assert_array_equal(test_utils.as_bits(a), test_utils.as_bits(b))
    np.testing.assert_array_equal(test_utils.as_bits(a), test_utils.as_bits(c))


class ColumnStatisticTest(absltest.TestCase):
  """The column statistic itself: it has power (one mask suffices)."""

  def test_column_statistic_has_power(self):
    # The statistic is not vacuous: the same counts with one input's zeros
    # moved to another (a biased mask: 200 rows changed) give p < ALPHA
    # (T ~ 33 on 4 degrees of freedom, p ~ 1e-6).
    mask = zero_mask(draw("permutation", seed=6, shape=(8000, 5), sparsity=0.4))
    biased = mask.copy()
    rows = np.flatnonzero(biased[:, 0] & ~biased[:, 1])[:200]
    biased[rows, 0], biased[rows, 1] = False, True
    self.assertLess(column_uniformity_pvalue(biased), ALPHA)


class PermutationStatisticsTest(StatisticsSuite, parameterized.TestCase):
  METHOD = "permutation"


class CounterStatisticsTest(StatisticsSuite, parameterized.TestCase):
  METHOD = "counter"


if __name__ == "__main__":
  absltest.main()
