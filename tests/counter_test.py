"""The counter method: its shuffle, its zero set's exact law, its tiling.

Proves for `method="counter"` that every row has exactly `num_zeros(...)`
zeros for every sparsity and rounding (each row's keyed swap-or-not shuffle is
a bijection of `[0, fan_in)`), and that the public output's zeros are that
mask; that the round function is the one the docs state and the zero set's
law at fan_in 2..8, computed exactly from it, is within 2**-13 of uniform
(with bigger samples of wider rows in the slow step); and that the matrix is
bit-identical whatever the chunking, column tiling, mesh or pmap, and
unchanged by jit / vmap.

The statistics of the output that both methods promise (uniform zero sets,
independent rows, LeCun values, keys) are tested for both in
`tests/statistics_test.py`.

Statistical tests use fixed keys, so each one always passes or always fails;
every bound states the probability that a correct implementation (ideal
randomness) fails it for a random key.
"""

from tests import env  # noqa: F401

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import stats

import alberta
from alberta._src import blocks
from alberta._src import counter
from alberta._src import keys
from alberta._src import methods
from alberta._src.spec import make_spec
from tests import test_utils

# Every p-value bound below: a correct implementation fails it with
# probability ALPHA (Bonferroni-corrected where several values are checked).
ALPHA = test_utils.ALPHA


def _spec(shape, sparsity, init_type="uniform", rounding="nearest"):
  return make_spec(shape, sparsity, init_type, "counter", rounding)[0]


def _rows(row_start, n_rows: int):
  return jnp.asarray(row_start, jnp.uint32) + jnp.arange(
      n_rows, dtype=jnp.uint32
  )


@functools.partial(jax.jit, static_argnames=("n_rows", "fan_in"))
def _permuted_columns(key, n_rows: int, fan_in: int, row_start=0):
  """`pi_r(c)` for rows `[row_start, +n_rows)` and all columns `c`."""
  mask_key = keys.key_words(key)
  rows = _rows(row_start, n_rows)
  material = test_utils.round_keys(mask_key, rows, fan_in)
  cols = jnp.broadcast_to(
      jnp.arange(fan_in, dtype=jnp.uint32), (n_rows, fan_in)
  )
  return counter.permute(cols, material, fan_in)


@functools.partial(jax.jit, static_argnames=("n_rows", "fan_in", "k"))
def _zero_mask_jit(key, n_rows: int, fan_in: int, k: int, row_start=0):
  mask_key = keys.key_words(key)
  cols = jnp.arange(fan_in, dtype=jnp.uint32)
  return ~counter.keep_mask(mask_key, k, fan_in, _rows(row_start, n_rows), cols)


@functools.partial(jax.jit, static_argnames=("n_rows", "fan_in", "ks"))
def _zero_counts_jit(key, row_start, n_rows: int, fan_in: int, ks):
  mask_key = keys.key_words(key)
  rows = _rows(row_start, n_rows)
  cols = jnp.arange(fan_in, dtype=jnp.uint32)
  return jnp.stack([
      (~counter.keep_mask(mask_key, k, fan_in, rows, cols)).sum(
          axis=1, dtype=jnp.int32
      )
      for k in ks
  ])


def zero_counts(key, row_start, n_rows: int, fan_in: int, ks) -> np.ndarray:
  """Zeros per row of `keep_mask` for each k of `ks`: `int32[len(ks), n_rows]`.

  One program for every k (the shuffle is computed once, compared with each).
  """
  return np.asarray(
      _zero_counts_jit(key, np.uint32(row_start), n_rows, fan_in, tuple(ks))
  )


def zero_mask(key, n_rows: int, fan_in: int, k: int, row_start=0) -> np.ndarray:
  """Where `sparse_init(..., method="counter")` masks: `bool[n_rows, fan_in]`.

  The same `counter.keep_mask` call as the block generator's;
  `test_output_zeros_are_the_mask` ties it to the public output, so the
  statistics of this mask are those of `sparse_init`'s zero set.
  """
  return np.asarray(
      _zero_mask_jit(key, n_rows, fan_in, k, np.uint32(row_start))
  )


@functools.partial(jax.jit, static_argnames=("spec",))
def _raw_values_jit(key, spec):
  init_key = keys.key_words(key)
  rows = _rows(0, spec.fan_out)
  cols = jnp.arange(spec.fan_in, dtype=jnp.uint32)
  return methods.values_from_bits(
      spec, test_utils.counter_value_bits(init_key, rows, cols)
  )


def raw_values(key, spec) -> np.ndarray:
  """The dense weights before masking, float32 `[fan_out, fan_in]`."""
  # They do not depend on k: one compilation per shape and distribution.
  return np.asarray(_raw_values_jit(key, dataclasses.replace(spec, k=0)))


# --- The exact law of a row's zero set, for tiny fan_in. ---------------------
#
# A round draws K from 64 Threefry bits and its swap bits F(v) = top bit of
# a v + b mod 2**32 from (a, b) uniform over 2**64 (Threefry taken as ideal:
# rounds independent, words uniform). For n <= 8 columns both laws are
# computed exactly below, and the zero set's law by propagating a distribution
# over subsets (bitmasks of n bits) through the rounds.

_M32, _H32 = 1 << 32, 1 << 31


def _pattern_counts_over_b(a: int, n: int) -> dict[int, int]:
  """For fixed `a`: how many `b < 2**32` give each pattern `sum F(v) << v`.

  As `b` grows, `F(v)` turns on at `b = 2**31 - a v` and off at `b = -a v`
  (mod 2**32): a sweep over those 2n breakpoints counts every pattern.
  """
  c = [(a * v) % _M32 for v in range(n)]
  pattern = sum(1 << v for v in range(n) if c[v] >= _H32)  # at b = 0
  events = sorted(
      [((_H32 - c[v]) % _M32, v) for v in range(n)]
      + [((_M32 - c[v]) % _M32, v) for v in range(n)]
  )
  counts, pos = {}, 0
  for p, v in events:
    if p > pos:
      counts[pattern] = counts.get(pattern, 0) + p - pos
      pos = p
    if p:  # a breakpoint at b = 0 is already in the initial pattern
      pattern ^= 1 << v
  counts[pattern] = counts.get(pattern, 0) + _M32 - pos
  return counts


@functools.lru_cache(maxsize=None)
def exact_round_bit_counts(n: int) -> tuple[int, ...]:
  """Number of `(a, b)` in `[0, 2**32)**2` giving each n-bit pattern of F.

  The sweep's breakpoints move linearly with `a` and change order only where
  `a d = 0 or 2**31 (mod 2**32)` for some `d = v - w` in `[1, n)`. Between
  consecutive such `a` every count is an exact linear function of `a`
  (checked at the midpoint), so its sum over the interval is the trapezoid.
  """
  cuts = {0, _M32}
  for d in range(1, n):
    for j in range(2 * d + 1):
      q, r = divmod(j * _H32, d)
      cuts.update((q, q + 1) if r == 0 else (q + 1,))
  cuts = sorted(c for c in cuts if c <= _M32)
  total = np.zeros(1 << n, dtype=object)

  def counts(a):
    out = np.zeros(1 << n, dtype=object)
    for pattern, count in _pattern_counts_over_b(a, n).items():
      out[pattern] = count
    return out

  for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
    first, last = counts(lo), counts(hi - 1)
    if hi - lo >= 3:
      mid = (lo + hi - 1) // 2
      assert (
          (counts(mid) - first) * (hi - 1 - lo) == (last - first) * (mid - lo)
      ).all(), (n, lo, hi)
    total += (first + last) * (hi - lo)
  assert all(t % 2 == 0 for t in total)
  total //= 2
  assert total.sum() == 1 << 64
  return tuple(int(t) for t in total)


def exact_k_law(n: int) -> np.ndarray:
  """P(K = j) for `K = floor(u n / 2**64)`, `u` uniform in `[0, 2**64)`."""
  edges = [-(-(j << 64) // n) for j in range(n + 1)]
  return np.diff(np.array(edges, dtype=object)).astype(np.float64) / 2.0**64


def round_kernel(n: int, bit_law: np.ndarray, k_law: np.ndarray) -> np.ndarray:
  """`T[A, B]`: the probability that a round maps set `A` to `B` (bitmasks)."""
  size = 1 << n
  masks = np.arange(size)
  member = (masks[:, None] >> np.arange(n)) & 1  # [set, x]
  patterns = np.arange(1 << n)
  kernel = np.zeros(size * size)
  for k_value in range(n):
    x = np.arange(n)
    partner = (k_value - x) % n
    swap = (patterns[:, None] >> np.maximum(x, partner)) & 1  # [pattern, x]
    image = np.where(swap == 1, partner, x)  # round's map
    moved = np.zeros((1 << n, size), np.int64)  # [pattern, set]
    for i in range(n):
      moved |= member[None, :, i] << image[:, i : i + 1]
    kernel += np.bincount(
        (masks[None, :] * size + moved).ravel(),
        weights=np.repeat(k_law[k_value] * bit_law, size),
        minlength=size**2,
    )
  return kernel.reshape(size, size)


def zero_set_tv(n: int, k: int, rounds: int, kernel: np.ndarray) -> float:
  """TV distance of `pi([0, k))` after `rounds` rounds from a uniform k-subset.

  The zero set `pi^{-1}([0, k))` runs the same i.i.d. involutive rounds in the
  opposite order, so it has the same law.
  """
  law = np.zeros(1 << n)
  law[(1 << k) - 1] = 1
  for _ in range(rounds):
    law = law @ kernel
  popcount = np.array([bin(m).count("1") for m in range(1 << n)])
  return 0.5 * np.abs(law - (popcount == k) / math.comb(n, k)).sum()


@functools.partial(jax.jit, static_argnames=("n_rows",))
def _opposite_pairs_at_fan_in_4(key, row_start, n_rows: int):
  """Rows whose zero set (k = 2 of 4) is {0, 2} or {1, 3}; and all zeros."""
  mask_key = keys.key_words(key)
  zeros = ~counter.keep_mask(
      mask_key, 2, 4, _rows(row_start, n_rows), jnp.arange(4, dtype=jnp.uint32)
  )
  opposite = (zeros[:, 0] & zeros[:, 2]) | (zeros[:, 1] & zeros[:, 3])
  return opposite.sum(dtype=jnp.int32), zeros.sum(dtype=jnp.int32)


def opposite_pair_z(key, n_rows: int, chunk: int = 2**22) -> float:
  """z-score of the opposite-pair count at fan_in 4, k 2 (1/3 if uniform)."""
  opposite = 0
  for start in range(0, n_rows, chunk):
    o, z = _opposite_pairs_at_fan_in_4(key, np.uint32(start), chunk)
    assert int(z) == 2 * chunk
    opposite += int(o)
  return (opposite - n_rows / 3) / np.sqrt(n_rows * 2 / 9)


class ZeroCountTest(parameterized.TestCase):

  # Each fan-in compiles a program: tiny ones, a power of two, odd ones and
  # one past 2**16 here, the rest in the slow step.
  @parameterized.parameters(
      (1, 8), (2, 8), (3, 8), (64, 8), (127, 8), (65537, 2)
  )
  def test_each_row_shuffle_is_a_bijection(self, fan_in, n_rows):
    self.check_each_row_shuffle_is_a_bijection(fan_in, n_rows)

  @parameterized.parameters((10, 8), (1024, 8), (13, 8), (257, 8))
  @test_utils.slow
  def test_each_row_shuffle_is_a_bijection_at_other_fan_ins(
      self, fan_in, n_rows
  ):
    self.check_each_row_shuffle_is_a_bijection(fan_in, n_rows)

  def check_each_row_shuffle_is_a_bijection(self, fan_in, n_rows):
    # A bijection of [0, fan_in) maps exactly k columns below k, for every k.
    perm = np.asarray(
        _permuted_columns(
            jax.random.key(11), n_rows, fan_in, np.uint32(2**32 - 5)
        )
    )
    np.testing.assert_array_equal(
        np.sort(perm, axis=1),
        np.broadcast_to(np.arange(fan_in, dtype=np.uint32), perm.shape),
    )

  @parameterized.parameters(
      (1, 16), (3, 16), (10, 16), (64, 16), (127, 16), (128, 16)
  )
  def test_exactly_k_zeros_per_row_for_every_sparsity_and_rounding(
      self, fan_in, n_rows
  ):
    self.check_exactly_k_zeros_per_row(fan_in, n_rows)

  # test_each_row_shuffle_is_a_bijection covers these fan-ins in the default
  # run (a bijection puts exactly k columns below every k).
  @parameterized.parameters((1024, 4), (65537, 2))
  @test_utils.slow
  def test_exactly_k_zeros_per_row_at_large_fan_in(self, fan_in, n_rows):
    self.check_exactly_k_zeros_per_row(fan_in, n_rows)

  def check_exactly_k_zeros_per_row(self, fan_in, n_rows):
    cases = list(
        itertools.product(
            (0.0, 0.1, 0.5, 0.7, 0.9, 0.99, 1.0), ("nearest", "ceil")
        )
    )
    ks = [
        alberta.num_zeros(fan_in, sparsity, rounding)
        for sparsity, rounding in cases
    ]
    counts = zero_counts(jax.random.key(3), 2**31 - 1, n_rows, fan_in, ks)
    for (sparsity, rounding), k, count in zip(cases, ks, counts, strict=True):
      np.testing.assert_array_equal(
          count, k, err_msg=f"{sparsity=} {rounding=}"
      )

  @parameterized.parameters(
      (10, 0.7, "ceil"), (64, 0.9, "nearest"), (127, 0.1, "ceil")
  )
  def test_output_zeros_are_the_mask(self, fan_in, sparsity, rounding):
    self.check_output_zeros_are_the_mask(fan_in, sparsity, rounding)

  # k = n or 0 (no shuffle) and fan_in 1: three more programs each.
  @parameterized.parameters(
      (1, 0.5, "nearest"), (3, 1.0, "nearest"), (128, 0.0, "nearest")
  )
  @test_utils.slow
  def test_output_zeros_are_the_mask_at_the_edges(
      self, fan_in, sparsity, rounding
  ):
    self.check_output_zeros_are_the_mask(fan_in, sparsity, rounding)

  def check_output_zeros_are_the_mask(self, fan_in, sparsity, rounding):
    key = jax.random.key(3)
    shape = (16, fan_in)
    spec = _spec(shape, sparsity, rounding=rounding)
    w = np.asarray(
        alberta.sparse_init(
            key, shape, sparsity, method="counter", rounding=rounding
        )
    )
    zeros = zero_mask(key, 16, fan_in, spec.k)
    np.testing.assert_array_equal(zeros.sum(axis=1), spec.k)
    # A kept weight can itself be exactly 0.0 (probability 2**-23: the
    # uniform grid contains 0), so the output's zeros are the mask plus those.
    np.testing.assert_array_equal(w == 0, zeros | (raw_values(key, spec) == 0))

  @parameterized.parameters(0.0, 1.0)
  def test_sparsity_zero_and_one_at_fan_in_65537(self, sparsity):
    w = np.asarray(
        alberta.sparse_init(
            jax.random.key(5), (2, 65537), sparsity, method="counter"
        )
    )
    if sparsity == 1.0:
      self.assertTrue((w == 0).all())
    else:
      self.assertEqual(
          int((w == 0).sum()),
          int(
              (raw_values(jax.random.key(5), _spec((2, 65537), 0.0)) == 0).sum()
          ),
      )


class ExactZeroSetLawTest(parameterized.TestCase):
  """The zero set's exact law at fan_in 2..8, from the round function itself."""

  @parameterized.parameters(range(2, 9))
  def test_round_bits_are_exactly_3_wise_uniform(self, n):
    counts = np.array(exact_round_bit_counts(n), dtype=object)
    patterns = np.arange(1 << n)
    for width in (1, 2, 3):
      for cols in itertools.combinations(range(n), min(width, n)):
        code = sum(((patterns >> c) & 1) << i for i, c in enumerate(cols))
        marginal = [counts[code == j].sum() for j in range(1 << len(cols))]
        self.assertEqual(marginal, [(1 << 64) >> len(cols)] * (1 << len(cols)))
    if n >= 4:  # ... and not 4-wise: the round function matters from 4 on.
      self.assertGreater(len(set(counts)), 1)

  def test_model_round_is_counter_round(self):
    rng = np.random.default_rng(0)
    ns = (2, 5, 8)
    inputs = []
    for n in ns:
      k_value = rng.integers(0, n, 64, dtype=np.uint32)
      a, b = rng.integers(0, 2**32, (2, 64), dtype=np.uint32)
      inputs.append((k_value, a, b))

    @jax.jit
    def permute_all(inputs):  # One program for the three row lengths.
      return [
          counter.permute(
              jnp.broadcast_to(jnp.arange(n, dtype=jnp.uint32), (64, n)),
              tuple(w[:, None] for w in words),
              n,
          )
          for n, words in zip(ns, inputs, strict=True)
      ]

    for n, (k_value, a, b), got in zip(
        ns, inputs, permute_all(inputs), strict=True
    ):
      got = np.asarray(got)
      want = np.stack([
          test_utils.counter_model_round(
              np.arange(n), k_value[i], a[i], b[i], n
          )
          for i in range(64)
      ])
      np.testing.assert_array_equal(got, want)

  def test_k_law_is_round_keys_k(self):
    # round_keys' K is floor(u n / 2**64) of u = (w1, w2) at counter (r, 1 + i).
    n, rows = 7, jnp.arange(3, dtype=jnp.uint32)

    @jax.jit
    def ks_and_words(key):  # One program, not op by op.
      mask_key = keys.key_words(key)
      j = jnp.arange(1, counter.num_rounds(n) + 1, dtype=jnp.uint32)
      return (
          test_utils.round_keys(mask_key, rows, n)[0],
          test_utils.threefry(mask_key, rows[:, None], j[None, :]),
      )

    ks, (w1, w2) = ks_and_words(jax.random.key(4))
    ks, w1, w2 = np.asarray(ks), np.asarray(w1), np.asarray(w2)
    for r, i in itertools.product(range(3), range(ks.shape[1])):
      u = (int(w1[r, i]) << 32) | int(w2[r, i])
      self.assertEqual(int(ks[r, i]), (u * n) >> 64)

  @parameterized.parameters(range(2, 9))
  def test_zero_set_law_within_bound_at_every_k(self, n):
    kernel = round_kernel(
        n,
        np.array(exact_round_bit_counts(n), np.float64) / 2.0**64,
        exact_k_law(n),
    )
    rounds = counter.num_rounds(n)
    for k in range(1, n):
      # Exact up to float64 rounding (~1e-15): no false-failure rate.
      self.assertLess(zero_set_tv(n, k, rounds, kernel), 2.0**-13, msg=f"{k=}")

  def test_sixteen_rounds_were_too_few_at_fan_in_4(self):
    # The old round count at fan_in 4: the opposite pairs {0, 2}, {1, 3} were
    # too rare, TV 1.8e-4, which sampling 2.4e8 rows measured too.
    kernel = round_kernel(
        4,
        np.array(exact_round_bit_counts(4), np.float64) / 2.0**64,
        exact_k_law(4),
    )
    self.assertBetween(zero_set_tv(4, 2, 16, kernel), 1.8e-4, 1.82e-4)


class WideZeroSetProbeTest(parameterized.TestCase):
  """Bigger samples of the laws no exact argument covers (three columns on)."""

  @test_utils.slow
  def test_every_6_subset_of_12_columns_over_4m_rows(self):
    fan_in, k, n_rows = 12, 6, 4_000_000
    zeros = zero_mask(jax.random.key(24), n_rows, fan_in, k)
    codes = (zeros.astype(np.int64) << np.arange(fan_in)).sum(axis=1)
    counts = np.bincount(codes, minlength=1 << fan_in)
    subsets = [
        sum(1 << c for c in s) for s in itertools.combinations(range(fan_in), k)
    ]
    self.assertEqual(counts[subsets].sum(), n_rows)
    # 924 cells of ~4300: chi-square, false-failure rate ALPHA.
    self.assertGreater(stats.chisquare(counts[subsets]).pvalue, ALPHA)

  @test_utils.slow
  def test_triple_frequencies_within_binomial_bounds(self):
    fan_in, k, n_rows = 24, 12, 2_000_000
    zeros = zero_mask(jax.random.key(25), n_rows, fan_in, k).astype(np.float32)
    p3 = k * (k - 1) * (k - 2) / (fan_in * (fan_in - 1) * (fan_in - 2))
    counts = []
    for a, b in itertools.combinations(range(fan_in), 2):
      counts.extend((zeros[:, a] * zeros[:, b]) @ zeros[:, b + 1 :])
    # Each of the 2024 triples is Binomial(n_rows, p3): Bonferroni over them.
    p = test_utils.binomial_two_sided_p(
        np.rint(counts).astype(np.int64), n_rows, p3
    )
    self.assertLen(p, 2024)
    self.assertGreater(p.min(), ALPHA / len(p))

  @test_utils.slow
  def test_opposite_pairs_at_fan_in_4_over_2_28_rows(self):
    # Under the exact law at num_rounds(4) the opposite pairs {0, 2}, {1, 3}
    # are a fraction 1/3 of rows to within 6e-9, so the count is
    # Binomial(2**28, 1/3): |z| < 3.89 fails with probability 1e-4. With the
    # former 16 rounds the fraction was 1.8e-4 short, a mean z of -6.3, which
    # this bound catches with probability 0.99.
    self.assertLess(abs(opposite_pair_z(jax.random.key(26), 2**28)), 3.89)


class TilingTest(parameterized.TestCase):
  _SHAPE = (75, 33)
  _SPARSITY = 0.7

  def _whole(self, init_type="uniform"):
    return np.asarray(
        alberta.sparse_init(
            jax.random.key(40),
            self._SHAPE,
            self._SPARSITY,
            init_type,
            method="counter",
        )
    )

  # Ragged last chunks (75 = 10 * 7 + 5 = 2 * 37 + 1), each distribution once;
  # every pair, chunks of one row and the default in the slow step.
  @parameterized.parameters((7, "uniform"), (37, "normal"))
  def test_any_chunk_rows_gives_identical_bits(self, chunk_rows, init_type):
    self.check_any_chunk_rows_gives_identical_bits(chunk_rows, init_type)

  @parameterized.product(
      chunk_rows=(1, 7, 37, None), init_type=("uniform", "normal")
  )
  @test_utils.slow
  def test_any_chunk_rows_gives_identical_bits_slow(
      self, chunk_rows, init_type
  ):
    self.check_any_chunk_rows_gives_identical_bits(chunk_rows, init_type)

  def check_any_chunk_rows_gives_identical_bits(self, chunk_rows, init_type):
    spec = _spec(self._SHAPE, self._SPARSITY, init_type)
    generate = jax.jit(blocks.generate, static_argnums=(1, 3, 5, 6, 7))
    out = generate(
        jax.random.key(40),
        spec,
        0,
        spec.fan_out,
        0,
        spec.fan_in,
        jnp.float32,
        chunk_rows,
    )
    test_utils.assert_same_bits(out, self._whole(init_type))

  def test_column_tiles_assemble_to_the_matrix(self):
    spec = _spec(self._SHAPE, self._SPARSITY)
    key = jax.random.key(40)

    @functools.partial(jax.jit, static_argnums=(1, 3))
    def tile(r0, n_rows, c0, n_cols):  # starts traced, sizes static
      return blocks.row_block(key, spec, r0, n_rows, c0, n_cols)

    # 3 x 3 tiles of 25 x 11: one compilation, the starts traced.
    out = np.block([
        [np.asarray(tile(r0, 25, c0, 11)) for c0 in (0, 11, 22)]
        for r0 in (0, 25, 50)
    ])
    test_utils.assert_same_bits(out, self._whole())

  # Rows and columns split, chunked; tests/sharding_test.py runs every mesh
  # for both methods, and the other layouts here run in the slow step.
  def test_sharded_equals_whole_matrix(self):
    self.check_sharded_equals_whole_matrix((2, 4), ("x", "y"), P("y", "x"), 3)

  @parameterized.named_parameters(
      ("_rows_8", (8,), ("x",), P("x"), None),
      ("_rows_over_both_axes", (2, 4), ("x", "y"), P(("x", "y")), None),
      ("_replicated", (8,), ("x",), P(), 7),
  )
  @test_utils.slow
  def test_sharded_equals_whole_matrix_other_layouts(
      self, mesh_shape, axes, spec, chunk_rows
  ):
    self.check_sharded_equals_whole_matrix(mesh_shape, axes, spec, chunk_rows)

  def check_sharded_equals_whole_matrix(
      self, mesh_shape, axes, spec, chunk_rows
  ):
    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), axes)
    shape = (64, 48)
    out = alberta.sharded_sparse_init(
        jax.random.key(41),
        shape,
        0.8,
        sharding=NamedSharding(mesh, spec),
        method="counter",
        chunk_rows=chunk_rows,
    )
    want = alberta.sparse_init(jax.random.key(41), shape, 0.8, method="counter")
    test_utils.assert_same_bits(out, want)

  # tests/sharding_test.py runs pmap for both methods in the default run.
  @test_utils.slow
  def test_pmap_equals_whole_matrix(self):
    out = alberta.pmap_sparse_init(
        jax.random.key(42), (64, 40), 0.9, method="counter", chunk_rows=5
    )
    want = alberta.sparse_init(
        jax.random.key(42), (64, 40), 0.9, method="counter"
    )
    test_utils.assert_same_bits(np.asarray(out).reshape(64, 40), want)


class TransformTest(parameterized.TestCase):
  """jit and vmap over keys leave the matrix as it is."""

  # test_vmap_over_keys_stacks_per_key_matrices compares a jitted program
  # (normal values) with the eager one in the default run.
  @test_utils.slow
  def test_jit_equals_eager(self):
    shape = (24, 30)
    f = jax.jit(
        lambda key: alberta.sparse_init(
            key, shape, 0.6, "normal", method="counter"
        )
    )
    want = alberta.sparse_init(
        jax.random.key(53), shape, 0.6, "normal", method="counter"
    )
    test_utils.assert_same_bits(f(jax.random.key(53)), want)

  def test_vmap_over_keys_stacks_per_key_matrices(self):
    self.check_vmap_over_keys_stacks_per_key_matrices("typed")

  # Raw keys compile programs of their own; they meet the same key words.
  @test_utils.slow
  def test_vmap_over_raw_keys_stacks_per_key_matrices(self):
    self.check_vmap_over_keys_stacks_per_key_matrices("raw")

  def check_vmap_over_keys_stacks_per_key_matrices(self, key_kind):
    make = jax.random.key if key_kind == "typed" else jax.random.PRNGKey
    key_batch = jax.vmap(make)(jnp.arange(4))
    shape = (12, 20)
    f = lambda key: alberta.sparse_init(
        key, shape, 0.5, "normal", method="counter"
    )
    out = jax.jit(jax.vmap(f))(key_batch)
    want = np.stack([np.asarray(f(make(i))) for i in range(4)])
    test_utils.assert_same_bits(out, want)


if __name__ == "__main__":
  absltest.main()
