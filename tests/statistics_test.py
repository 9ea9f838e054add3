"""Statistics of `sparse_init` with the seed's method (`method="permutation"`).

Proves the distribution the docstrings promise: exactly `num_zeros` zeros per
output unit; LeCun-uniform values inside `[-1/sqrt(fan_in), 1/sqrt(fan_in))`;
kept values distributed as U(-s, s) or N(0, s^2) (Kolmogorov-Smirnov); zero
positions uniform across inputs (chi-square on per-column counts) and uniform
among all k-subsets; rows independent of each other; different keys giving
different masks.

Every test uses fixed keys, so it is deterministic; the bounds are chosen so
that, had the key been drawn at random, a correct implementation would fail
with the probability stated beside each bound. Every p-value threshold is
ALPHA = 1e-4, i.e. a 1e-4 false-failure rate per statistical assertion.
"""

from tests import env  # noqa: F401

import math

import jax
import numpy as np
import scipy.stats
from absl.testing import absltest
from absl.testing import parameterized

import alberta

# A test statistic beyond its 1 - ALPHA quantile fails the test: a correct
# implementation fails each such assertion with probability ALPHA.
ALPHA = 1e-4

# One matrix serves most tests (each new shape / zero count compiles a
# program, ~1-2 s of CPU): 512 output units of 400 inputs, half of them zero,
# so 102400 kept values and 200 zeros per row.
FAN_OUT, FAN_IN, SPARSITY = 512, 400, 0.5
K = 200


def draw(init_type="uniform", seed=0, shape=(FAN_OUT, FAN_IN), sparsity=SPARSITY,
         **kwargs) -> np.ndarray:
  return np.asarray(alberta.sparse_init(jax.random.key(seed), shape, sparsity,
                                        init_type, **kwargs))


def zero_mask(matrix: np.ndarray) -> np.ndarray:
  """The masked positions.

  A kept uniform (or normal) value is exactly 0.0 with probability about
  2**-23 per element, so for a fixed key `== 0` is the mask; the exact
  zero-count tests below would catch a stray one.
  """
  return matrix == 0


def column_uniformity_pvalue(mask: np.ndarray) -> float:
  """P-value of "each row's zero set is a uniform k-subset" from column counts.

  A row's 0/1 indicator vector with exactly k ones among n has covariance
  p(1-p) n/(n-1) (I - J/n), p = k/n. Summed over m independent rows the
  column counts c have mean m p and that covariance times m, of rank n-1, so
  T = |c - m p|^2 (n-1) / (m p (1-p) n) is asymptotically chi-square with
  n-1 degrees of freedom (Pearson's statistic, corrected for the
  fixed-k-per-row constraint).
  """
  m, n = mask.shape
  k = int(mask[0].sum())
  p = k / n
  counts = mask.sum(axis=0)
  t = ((counts - m * p) ** 2).sum() * (n - 1) / (m * p * (1 - p) * n)
  return float(scipy.stats.chi2.sf(t, n - 1))


class ZeroCountTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("_half_uniform", (FAN_OUT, FAN_IN), SPARSITY, "uniform", "nearest"),
      ("_half_normal", (FAN_OUT, FAN_IN), SPARSITY, "normal", "nearest"),
      ("_ceil_wide", (33, 1001), 0.99, "uniform", "ceil"),
      ("_nearest_narrow", (300, 7), 0.1, "normal", "nearest"),
      ("_conv_layout", (16, 8, 3, 3), 0.9, "uniform", "ceil"),
  )
  def test_every_output_unit_has_exactly_k_zeros(self, shape, sparsity, init_type,
                                                 rounding):
    out = draw(init_type, seed=1, shape=shape, sparsity=sparsity, rounding=rounding)
    fan_in = math.prod(shape[1:])
    counts = zero_mask(out.reshape(shape[0], fan_in)).sum(axis=1)
    np.testing.assert_array_equal(counts, alberta.num_zeros(fan_in, sparsity, rounding))


class ValueDistributionTest(absltest.TestCase):

  def test_uniform_values_inside_the_lecun_bound(self):
    out = draw("uniform", seed=2)
    # The seed draws U(-scale, scale) in float32 with scale = 1/sqrt(fan_in)
    # rounded to float32; jax.random.uniform clamps below at -scale and its
    # largest value is scale - 2 ulp(scale), so the float32 interval is
    # half-open. This bound is exact: its false-failure rate is 0.
    scale = np.float32(1.0 / math.sqrt(FAN_IN))
    self.assertTrue(np.all(out >= -scale), out.min())
    self.assertTrue(np.all(out < scale), out.max())
    # And the bound is reached in spirit: with 102400 kept values the extreme
    # ones lie within 1e-3 * scale of the ends; P(max < scale(1 - 1e-3)) is
    # (1 - 5e-4)**102400 ~ 1e-22.
    kept = out[~zero_mask(out)]
    self.assertGreater(kept.max(), scale * (1 - 1e-3))
    self.assertLess(kept.min(), -scale * (1 - 1e-3))

  def test_uniform_kept_values_are_lecun_uniform(self):
    # The mask is drawn from `mask_key` and the values from `init_key`, two
    # independent halves of `split(key)`, so the kept values are an i.i.d.
    # sample of the value distribution. KS false-failure rate: ALPHA.
    out = draw("uniform", seed=3)
    kept = out[~zero_mask(out)].astype(np.float64)
    self.assertLen(kept, FAN_OUT * (FAN_IN - K))
    scale = 1.0 / math.sqrt(FAN_IN)
    result = scipy.stats.kstest(kept, "uniform", args=(-scale, 2 * scale))
    self.assertGreater(result.pvalue, ALPHA, result)

  def test_normal_kept_values_are_lecun_normal(self):
    # The values before masking are not observable through the public API;
    # since the mask is independent of the values (see above), the kept
    # values are an i.i.d. N(0, 1/fan_in) sample. KS false-failure rate: ALPHA.
    out = draw("normal", seed=4)
    kept = out[~zero_mask(out)].astype(np.float64)
    self.assertLen(kept, FAN_OUT * (FAN_IN - K))
    result = scipy.stats.kstest(kept, "norm", args=(0.0, 1.0 / math.sqrt(FAN_IN)))
    self.assertGreater(result.pvalue, ALPHA, result)

  def test_kstest_has_power_against_wrong_scale(self):
    # The test above could not pass a sampler off by 5% in scale: with
    # 102400 values the KS distance is ~0.0135 (expected max of
    # |Phi(x) - Phi(x / 1.05)| ~ 0.0115 plus noise), p ~ 1e-16 for this key.
    out = draw("normal", seed=4)
    kept = out[~zero_mask(out)].astype(np.float64)
    result = scipy.stats.kstest(kept, "norm", args=(0.0, 1.05 / math.sqrt(FAN_IN)))
    self.assertLess(result.pvalue, ALPHA, result)


class MaskDistributionTest(absltest.TestCase):

  def test_zero_positions_uniform_across_inputs(self):
    # Corrected Pearson chi-square on column counts, 399 degrees of freedom:
    # false-failure rate ALPHA.
    mask = zero_mask(draw("uniform", seed=5))
    self.assertGreater(column_uniformity_pvalue(mask), ALPHA)

  def test_zero_positions_uniform_across_few_inputs(self):
    # Few inputs, many rows: 8000 rows of 10 inputs, 3 zeros each; 9 degrees
    # of freedom. False-failure rate ALPHA.
    mask = zero_mask(draw("uniform", seed=6, shape=(8000, 10), sparsity=0.3))
    self.assertGreater(column_uniformity_pvalue(mask), ALPHA)

  def test_column_statistic_has_power(self):
    # The statistic is not vacuous: the same counts with one input's zeros
    # moved to another (a biased mask) give p < ALPHA.
    mask = zero_mask(draw("uniform", seed=6, shape=(8000, 10), sparsity=0.3))
    biased = mask.copy()
    rows = np.flatnonzero(biased[:, 0] & ~biased[:, 1])[:200]
    biased[rows, 0], biased[rows, 1] = False, True
    self.assertLess(column_uniformity_pvalue(biased), ALPHA)

  def test_zero_set_uniform_among_all_k_subsets(self):
    # 5 inputs, 2 zeros: each row's zero set is one of C(5, 2) = 10 subsets,
    # each with probability 1/10. Rows are independent, so the subset counts
    # over 8000 rows are multinomial: Pearson chi-square, 9 degrees of
    # freedom, false-failure rate ALPHA.
    mask = zero_mask(draw("uniform", seed=7, shape=(8000, 5), sparsity=0.4))
    np.testing.assert_array_equal(mask.sum(axis=1), 2)
    codes = mask.astype(np.int64) @ (1 << np.arange(5))
    _, counts = np.unique(codes, return_counts=True)
    self.assertLen(counts, math.comb(5, 2))
    result = scipy.stats.chisquare(counts)
    self.assertGreater(result.pvalue, ALPHA, result)

  def test_rows_are_independent(self):
    # Zero sets of independent rows overlap hypergeometrically:
    # overlap ~ Hypergeom(N=400, K=200, n=200), mean 100, variance 25.06.
    # The 256 disjoint row pairs (0,1), (2,3), ... are independent, so their
    # summed overlap is ~normal; two-sided z-test, false-failure rate ALPHA
    # (|z| < 3.89). Identical or complementary rows would give |z| ~ 300.
    mask = zero_mask(draw("uniform", seed=8))
    overlaps = (mask[0::2] & mask[1::2]).sum(axis=1)
    dist = scipy.stats.hypergeom(FAN_IN, K, K)
    z = (overlaps.sum() - len(overlaps) * dist.mean()) / math.sqrt(
        len(overlaps) * dist.var())
    self.assertLess(abs(z), scipy.stats.norm.isf(ALPHA / 2), z)
    # No two rows of the matrix share a zero set: P(any of the C(512, 2)
    # pairs equal) < 512**2 / C(400, 200) ~ 1e-114.
    self.assertLen({row.tobytes() for row in mask}, FAN_OUT)


class KeyTest(absltest.TestCase):

  def test_different_keys_give_different_masks(self):
    # 20 keys, (16, 100) with 90 zeros per row: two keys' masks coincide with
    # probability C(100, 90)**-16 ~ 1e-207.
    masks = [zero_mask(draw("uniform", seed=100 + i, shape=(16, 100), sparsity=0.9))
             for i in range(20)]
    self.assertLen({m.tobytes() for m in masks}, 20)
    # And they are independent: the row-wise overlap of key 0's and key 1's
    # masks, 16 rows ~ Hypergeom(100, 90, 90) each (mean 81, var 0.818);
    # two-sided z-test, false-failure rate ALPHA.
    overlaps = (masks[0] & masks[1]).sum(axis=1)
    dist = scipy.stats.hypergeom(100, 90, 90)
    z = (overlaps.sum() - 16 * dist.mean()) / math.sqrt(16 * dist.var())
    self.assertLess(abs(z), scipy.stats.norm.isf(ALPHA / 2), z)

  def test_same_key_same_matrix(self):
    np.testing.assert_array_equal(draw("uniform", seed=9).view(np.uint32),
                                  draw("uniform", seed=9).view(np.uint32))


if __name__ == "__main__":
  absltest.main()
