"""The dtype contract: accepted dtypes, exact zero counts in each, refusals.

Proves that `method="counter"` gives exactly `k` zeros in every row in every
accepted dtype (float16, bfloat16, float32, float64), at sizes where a plain
cast to float16 does round kept weights to zero; that its value map never
gives 0 (checked on all 2**23 grid points) while keeping the LeCun bound and
distribution; that the guarded cast turns exactly the flushed weights into the
smallest subnormal, signed; that the permutation method's float32 output is
the reference's; and that every public entry point refuses every other dtype
with a TypeError naming it, before any work.
"""

from tests import env  # noqa: F401

import functools
import math
import re
from unittest import mock

import haiku as hk
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
from alberta._src import bits
from alberta._src import blocks
from alberta._src import checks
from alberta._src import ell
from alberta._src import methods
from alberta._src.spec import make_spec
from tests import test_utils
from third_party.alberta_framework.initializers import (
    sparse_init as reference_sparse_init,
)

# A plain float32 -> float16 cast rounds |w| <= 2**-25 to zero. For LeCun
# uniform weights that is a fraction 2**-25 / scale = 2**-17 of them at
# fan_in 2**16 (scale 2**-8); for LeCun normal, 52 of the 2**23 grid points
# (|u| <= 2**-17 / (scale sqrt(pi / 2))), 6.2e-6. The flush rate grows with
# sqrt(fan_in), so a long row gets the power from few entries: 48 x 65536 at
# sparsity 0.25 keeps 2.36M weights, ~18 (uniform) and ~15 (normal) of which
# a plain cast flushes; `test_plain_cast_would_flush_here` checks that it
# flushes at least 3 for these keys (Poisson(15) < 3 has probability 1e-4),
# so the exact-count tests below have power.
FLUSH_SHAPE = (48, 65536)
FLUSH_SPARSITY = 0.25
FLUSH_K = 16384
FLUSH_KEYS = {"uniform": 0, "normal": 0}

REFUSED = (
    ("_float8_e4m3fn", jnp.float8_e4m3fn, "float8_e4m3fn"),
    ("_float8_e5m2", jnp.float8_e5m2, "float8_e5m2"),
    ("_float4_e2m1fn", jnp.float4_e2m1fn, "float4_e2m1fn"),
    ("_float8_e8m0fnu", jnp.float8_e8m0fnu, "float8_e8m0fnu"),
    ("_float8_by_name", "float8_e4m3fn", "float8_e4m3fn"),
    ("_int32", jnp.int32, "int32"),
    ("_bool", jnp.bool_, "bool"),
    ("_complex64", jnp.complex64, "complex64"),
    # A float type the contract names, in the other byte order.
    ("_big_endian_float32", np.dtype(">f4"), "'>f4'"),
    ("_big_endian_by_name", ">f2", "'>f2'"),
)


@functools.lru_cache(maxsize=None)
def _counter_matrix(init_type: str, dtype_name: str) -> np.ndarray:
  return np.asarray(
      alberta.sparse_init(
          jax.random.key(FLUSH_KEYS[init_type]),
          FLUSH_SHAPE,
          FLUSH_SPARSITY,
          init_type,
          dtype=dtype_name,
          method="counter",
      )
  )


def counter_matrix(init_type: str, dtype) -> np.ndarray:
  """The counter method's matrix at `FLUSH_SHAPE`, computed once per dtype."""
  return _counter_matrix(init_type, jnp.dtype(dtype).name)


class ExactZeroCountTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("_uniform", "uniform"), ("_normal", "normal")
  )
  def test_plain_cast_would_flush_here(self, init_type):
    f32 = counter_matrix(init_type, jnp.float32)
    plain = f32.astype(np.float16)
    flushed = (f32 != 0) & (plain == 0)
    self.assertGreaterEqual(int(flushed.sum()), 3)
    self.assertGreater(
        int((test_utils.zeros_per_row(plain) > FLUSH_K).sum()), 0
    )

  @parameterized.named_parameters(
      ("_float16_uniform", jnp.float16, "uniform"),
      ("_float16_normal", jnp.float16, "normal"),
      ("_bfloat16_normal", jnp.bfloat16, "normal"),
      ("_float32_uniform", jnp.float32, "uniform"),
      ("_float32_normal", jnp.float32, "normal"),
  )
  def test_exactly_k_zeros_in_every_row(self, dtype, init_type):
    out = counter_matrix(init_type, dtype)
    self.assertEqual(out.dtype, jnp.dtype(dtype))
    np.testing.assert_array_equal(test_utils.zeros_per_row(out), FLUSH_K)

  def test_exactly_k_zeros_in_float64(self):
    # float64 flushes nothing the float32 values hold, so a short row does:
    # its programs are compiled anew under x64.
    shape = (FLUSH_SHAPE[0], 1024)
    with jax.enable_x64(True):
      out = alberta.sparse_init(
          jax.random.key(FLUSH_KEYS["uniform"]),
          shape,
          FLUSH_SPARSITY,
          dtype=jnp.float64,
          method="counter",
      )
      self.assertEqual(out.dtype, jnp.float64)
      np.testing.assert_array_equal(
          test_utils.zeros_per_row(out), alberta.num_zeros(1024, FLUSH_SPARSITY)
      )

  def test_ell_values_in_float16_are_never_zero(self):
    # The ELL path shares the value map and the guarded cast.
    values, _ = alberta.sparse_init_ell(
        jax.random.key(FLUSH_KEYS["uniform"]),
        FLUSH_SHAPE,
        FLUSH_SPARSITY,
        "uniform",
        dtype=jnp.float16,
    )
    self.assertEqual(values.shape, (FLUSH_SHAPE[0], FLUSH_SHAPE[1] - FLUSH_K))
    self.assertEqual(int((np.asarray(values) == 0).sum()), 0)

  @parameterized.named_parameters(
      ("_uniform", "uniform"), ("_normal", "normal")
  )
  def test_float16_is_the_float32_cast_except_flushed_weights(self, init_type):
    f32 = counter_matrix(init_type, jnp.float32)
    f16 = counter_matrix(init_type, jnp.float16)
    plain = f32.astype(np.float16)
    flushed = (f32 != 0) & (plain == 0)
    tiny = np.float16(2**-24)
    test_utils.assert_same_bits(
        f16, np.where(flushed, np.copysign(tiny, f32).astype(np.float16), plain)
    )

  def test_bfloat16_is_the_float32_cast_exactly(self):
    # No generated weight is small enough for bfloat16 to flush (>= 2**-39).
    f32 = counter_matrix("normal", jnp.float32)
    bf16 = counter_matrix("normal", jnp.bfloat16)
    test_utils.assert_same_bits(bf16, jnp.asarray(f32).astype(jnp.bfloat16))


class CastNonzeroTest(parameterized.TestCase):

  def test_flushed_values_become_the_signed_smallest_subnormal(self):
    x = np.array(
        [
            2**-25,
            -(2**-25),
            2**-26,
            -(2**-40),
            1e-30,
            0.0,
            -0.0,
            2**-25 * 1.0000001,
            3e-8,
            2**-24,
            -1.0,
            65504.0,
        ],
        np.float32,
    )
    want = np.array(
        [
            2**-24,
            -(2**-24),
            2**-24,
            -(2**-24),
            2**-24,
            0.0,
            -0.0,
            2**-24,
            2**-24,
            2**-24,
            -1.0,
            65504.0,
        ],
        np.float16,
    )
    for fn in (bits.cast_nonzero, jax.jit(bits.cast_nonzero, static_argnums=1)):
      got = np.asarray(fn(jnp.asarray(x), jnp.float16))
      self.assertEqual(got.dtype, np.float16)
      test_utils.assert_same_bits(got, want)

  def test_bfloat16_keeps_zeros_and_rounds_the_rest(self):
    x = np.array([2**-39, -(2**-39), 0.0, -0.0, 0.3, -5.25], np.float32)
    got = np.asarray(bits.cast_nonzero(jnp.asarray(x), jnp.bfloat16))
    want = np.asarray(jnp.asarray(x).astype(jnp.bfloat16))
    test_utils.assert_same_bits(got, want)
    np.testing.assert_array_equal(
        np.signbit(got.astype(np.float32)), np.signbit(x)
    )

  # The matrices of ExactZeroCountTest.
  @parameterized.parameters(
      (jnp.float32, "uniform"),
      (jnp.float16, "uniform"),
      (jnp.bfloat16, "normal"),
  )
  def test_masked_zeros_keep_their_sign(self, dtype, init_type):
    out = counter_matrix(init_type, dtype)
    zeros = out.astype(np.float32) == 0
    self.assertTrue(np.signbit(out.astype(np.float32))[zeros].any())
    self.assertFalse(np.signbit(out.astype(np.float32))[zeros].all())


class OpenIntervalTest(parameterized.TestCase):
  """The counter method's bit maps on every one of the 2**23 grid points."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    m = np.arange(2**23, dtype=np.uint32)
    cls.m = m
    # The top 23 bits select the point; the low 9 bits must not matter.
    cls.bits = jnp.asarray(
        (m << 9) | (m * 2654435761 & 0x1FF).astype(np.uint32)
    )

  def test_unit_map_is_the_odd_grid(self):
    u = np.asarray(jax.jit(bits.bits_to_open_unit)(self.bits))
    odd = 2 * self.m.astype(np.int64) + 1 - 2**23
    np.testing.assert_array_equal(u.astype(np.float64), odd * 2.0**-23)
    self.assertEqual(int((u == 0).sum()), 0)

  @parameterized.parameters(1, 10, 1023, 4096, 2**32 - 1)
  def test_uniform_is_never_zero_and_inside_the_bound(self, fan_in):
    spec, _ = make_spec((1, fan_in), 0.0, "uniform", "counter", "nearest")
    w = np.asarray(
        jax.jit(methods.values_from_bits, static_argnums=0)(spec, self.bits)
    )
    bound = np.float32(1 / math.sqrt(fan_in))
    self.assertEqual(int((w == 0).sum()), 0)
    self.assertLess(float(np.abs(w).max()), bound)
    # Symmetric: point m and point 2**23 - 1 - m are negatives.
    np.testing.assert_array_equal(w, -w[::-1])

  def test_normal_is_never_zero_finite_and_symmetric(self):
    spec, _ = make_spec((1, 4096), 0.0, "normal", "counter", "nearest")
    w = np.asarray(
        jax.jit(methods.values_from_bits, static_argnums=0)(spec, self.bits)
    )
    self.assertEqual(int((w == 0).sum()), 0)
    self.assertTrue(np.isfinite(w).all())
    np.testing.assert_array_equal(w, -w[::-1])
    # Monotonic in the grid point: the normal quantile function.
    self.assertTrue((np.diff(w) >= 0).all())

  def test_counter_maps_are_nonzero_where_the_reference_gives_zero(self):
    # The reference's uniform map gives exactly 0.0 where its unit float is 0.5,
    # i.e. for top bits m = 2**22 (any low bits): probability 2**-23. The
    # counter maps give nonzero weights there, uniform and normal.
    b = jnp.asarray(np.array([2**22 << 9, (2**22 << 9) | 0x1FF], np.uint32))
    reference_u = np.asarray(
        jax.jit(bits.bits_to_uniform, static_argnums=(1, 2))(b, -0.125, 0.125)
    )
    np.testing.assert_array_equal(reference_u, 0.0)
    for init_type in ("uniform", "normal"):
      spec, _ = make_spec((1, 64), 0.0, init_type, "counter", "nearest")
      w = np.asarray(
          jax.jit(methods.values_from_bits, static_argnums=0)(spec, b)
      )
      self.assertTrue((w != 0).all(), w)


class DistributionTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("_uniform", "uniform", stats.uniform(loc=-1, scale=2).cdf),
      ("_normal", "normal", stats.norm.cdf),
  )
  def test_kept_values_follow_lecun_distribution(self, init_type, cdf):
    # Fixed key: always passes or always fails. For ideal randomness the KS
    # test rejects with probability 1e-4; the grid (steps of 2**-22 of the
    # unit interval) moves the CDF by < 1e-6, far below the KS threshold
    # ~1.3e-3 at n = 48 * 49152 (the float32 matrices of ExactZeroCountTest).
    fan_in = FLUSH_SHAPE[1]
    w = counter_matrix(init_type, jnp.float32)
    kept = w[w != 0].astype(np.float64)
    self.assertLen(kept, FLUSH_SHAPE[0] * (fan_in - FLUSH_K))
    scale = 1 / math.sqrt(fan_in)
    if init_type == "uniform":
      self.assertLess(float(np.abs(kept).max()), float(np.float32(scale)))
    self.assertGreater(stats.kstest(kept / scale, cdf).pvalue, 1e-4)

  # The reference runs eagerly (a compilation per op); tests/sparse_init_test.py
  # checks the float32 output against the reference in the default run.
  @test_utils.slow
  def test_permutation_float32_is_the_reference(self):
    # The guarded cast is the identity in float32 (tests/sparse_init_test.py
    # checks the reference on many more shapes, normal values included).
    key = jax.random.key(23)
    out = np.asarray(alberta.sparse_init(key, (16, 50), 0.7))
    want = np.asarray(reference_sparse_init(key, (16, 50), 0.7))
    test_utils.assert_same_bits(out, want)


def _no_work():
  """Makes any generation (dense or ELL) fail the test if it is reached."""
  fail = AssertionError("work started before the dtype check")
  return mock.patch.multiple(
      blocks, generate=mock.Mock(side_effect=fail)
  ), mock.patch.object(ell, "generate", mock.Mock(side_effect=fail))


class RefusedDtypeTest(parameterized.TestCase):
  """Every entry point raises a TypeError naming the dtype, before any work."""

  def assert_refused(self, call, shown):
    dense_patch, ell_patch = _no_work()
    pattern = (
        r"dtype must be one of float16, bfloat16, float32,"
        rf" float64.*{re.escape(shown)}"
    )
    with dense_patch, ell_patch, self.assertRaisesRegex(TypeError, pattern):
      call()

  def setUp(self):
    super().setUp()
    self.key = jax.random.key(0)
    mesh = Mesh(np.array(jax.devices()[:2]), ("x",))
    self.sharding = NamedSharding(mesh, P("x"))

  @parameterized.named_parameters(*REFUSED)
  def test_sparse_init(self, dtype, shown):
    for method in ("permutation", "counter"):
      self.assert_refused(
          lambda method=method: alberta.sparse_init(
              self.key, (8, 16), 0.5, dtype=dtype, method=method
          ),
          shown,
      )

  @parameterized.named_parameters(*REFUSED)
  def test_sparse_init_ell(self, dtype, shown):
    self.assert_refused(
        lambda: alberta.sparse_init_ell(self.key, (8, 16), 0.5, dtype=dtype),
        shown,
    )

  @parameterized.named_parameters(*REFUSED)
  def test_sharded_sparse_init(self, dtype, shown):
    self.assert_refused(
        lambda: alberta.sharded_sparse_init(
            self.key, (8, 16), 0.5, sharding=self.sharding, dtype=dtype
        ),
        shown,
    )

  @parameterized.named_parameters(*REFUSED)
  def test_sharded_sparse_init_ell(self, dtype, shown):
    self.assert_refused(
        lambda: alberta.sharded_sparse_init_ell(
            self.key, (8, 16), 0.5, sharding=self.sharding, dtype=dtype
        ),
        shown,
    )

  @parameterized.named_parameters(*REFUSED)
  def test_pmap_sparse_init(self, dtype, shown):
    self.assert_refused(
        lambda: alberta.pmap_sparse_init(
            self.key, (8, 16), 0.5, devices=jax.devices()[:2], dtype=dtype
        ),
        shown,
    )

  @parameterized.named_parameters(*REFUSED)
  def test_initializers_sparse(self, dtype, shown):
    init = alberta.initializers.sparse(0.5)
    self.assert_refused(lambda: init(self.key, (16, 8), dtype), shown)

  @parameterized.named_parameters(*REFUSED)
  def test_haiku_sparse_init_at_call(self, dtype, shown):
    init = alberta.SparseInit(0.5)  # Constructing it takes no dtype.
    f = hk.transform(lambda: init((16, 8), dtype))
    self.assert_refused(lambda: f.init(self.key), shown)

  def test_accepted_dtypes_are_exactly_four(self):
    self.assertEqual(
        checks.DTYPES, ("float16", "bfloat16", "float32", "float64")
    )
    for name in checks.DTYPES[:3]:
      self.assertEqual(checks.check_dtype(name), np.dtype(jnp.dtype(name)))
      self.assertEqual(
          checks.check_dtype(jnp.dtype(name)), np.dtype(jnp.dtype(name))
      )
    with jax.enable_x64(True):
      self.assertEqual(checks.check_dtype(jnp.float64), np.float64)


if __name__ == "__main__":
  absltest.main()
