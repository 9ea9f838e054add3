"""`alberta.sparse_init` and `alberta.num_zeros`: the core contract.

Proves that with the defaults `sparse_init` is the reference's `sparse_init`
(`third_party/alberta_framework`, run eagerly as written) for the same key: zero
pattern and uniform values bit for bit, normal values within a few ulps, over
tiny, 1 x N, N x 1, prime and larger shapes, sparsities from 0 to 1, both
distributions and both key kinds. Then the rest of the contract: N-D shapes are
the 2-D matrix reshaped, the two rounding rules, dtypes (generated in float32,
then cast), `jax.jit` and `jax.vmap` over keys, zero-size shapes, the accepted
methods, and bad arguments failing with a message that names the argument and
the value, before any work is done.
"""

from tests import env  # noqa: F401

import functools
import itertools
import math
import re
import warnings
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import alberta
from alberta._src import blocks
from tests import test_utils
from third_party.alberta_framework.initializers import (
    sparse_init as reference_sparse_init,
)

KEY_FNS = {"typed": jax.random.key, "raw": jax.random.PRNGKey}

# Each distinct (shape, zero count, init type, dtype, key kind) compiles its
# own XLA program (~1-2 s of CPU each), so the tests below share one small
# matrix wherever the point is not the shape itself: 0.72 of 10 inputs gives 7
# zeros under "nearest" and 8 under "ceil".
SHAPE = (16, 10)
SPARSITY = 0.72

# Tiny, 1 x N, N x 1, primes, the reference's docstring example, a wide and a
# large one (fan-in > 1625: two sort rounds). The reference runs eagerly, so
# each new shape costs it a compilation of every op (~1-3 s of CPU), and the
# library a program: the quick set is the four pairs of init type and key kind
# (`test_default_arguments_are_the_references` is uniform with a typed key),
# with sparsity 1 and 0, an N x 1 shape, and one and two sort rounds. The slow
# set crosses every shape with both init types and both key kinds (sparsity
# rotating), sweeps all sparsities and runs `SPOT_REFERENCE_CASES`, four more
# combinations of shape, sparsity, init type and key kind.
REFERENCE_SHAPES = (
    (1, 1),
    (5, 1),
    (1, 7),
    (2, 3),
    (7, 13),
    (128, 10),
    (31, 97),
    (2, 1700),
    (3, 5000),
    (300, 2000),
    (211, 5),
)
SPARSITIES = (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)
QUICK_REFERENCE_CASES = (
    ((1, 1), 1.0, "uniform", "raw"),
    ((5, 1), 0.0, "normal", "typed"),
    ((2, 1700), 0.99, "normal", "raw"),
)
SPOT_REFERENCE_CASES = (
    ((1, 7), 0.5, "normal", "raw"),
    ((7, 13), 0.1, "uniform", "typed"),
    ((128, 10), 0.9, "uniform", "typed"),
    ((3, 5000), 0.99, "uniform", "raw"),
)


def _case(shape, sparsity, init_type, key_kind, seed):
  return dict(
      testcase_name=f"_{shape[0]}x{shape[1]}_{sparsity}_{init_type}_{key_kind}",
      shape=shape,
      sparsity=sparsity,
      init_type=init_type,
      key_kind=key_kind,
      seed=seed,
  )


def _quick_reference_cases():
  return [_case(*c, seed=i) for i, c in enumerate(QUICK_REFERENCE_CASES)]


def _slow_reference_cases():
  """Every shape with both init types and both key kinds.

  A full product with the six sparsities would compile ~240 programs; instead
  the sparsity rotates with the case index so that every shape meets several
  sparsities, and `test_sparsity_sweep_matches_reference` covers all
  sparsities on two shapes.
  """
  cases = []
  for i, (shape, init_type, kind) in enumerate(
      itertools.product(
          REFERENCE_SHAPES, ("uniform", "normal"), ("typed", "raw")
      )
  ):
    sparsity = SPARSITIES[(i + i // 4) % len(SPARSITIES)]
    cases.append(_case(shape, sparsity, init_type, kind, seed=100 + i))
  for i, c in enumerate(SPOT_REFERENCE_CASES):
    case = _case(*c, seed=len(QUICK_REFERENCE_CASES) + i)
    case["testcase_name"] += "_spot"
    cases.append(case)
  return cases


def assert_matches_reference(actual, expected, init_type: str) -> None:
  """The reference's float32 matrix: zeros (with their signs) and values.

  The reference multiplies by a 0/1 mask, so its masked negative weights are
  -0.0; `assert_same_matrix` holds the library to that too. Normal values may
  differ by a couple of ulps: XLA fuses `erf_inv` differently in the eager
  reference and in the library's jitted program (the reference differs from its
  own jitted run the same way).
  """
  assert np.asarray(actual).dtype == np.float32, np.asarray(actual).dtype
  test_utils.assert_same_matrix(actual, expected, init_type)


class ReferenceEqualityTest(parameterized.TestCase):

  def check_against_reference(self, shape, sparsity, init_type, key_kind, seed):
    key = KEY_FNS[key_kind](seed)
    actual = alberta.sparse_init(key, shape, sparsity, init_type)
    expected = reference_sparse_init(key, shape, sparsity, init_type)
    assert_matches_reference(actual, expected, init_type)
    np.testing.assert_array_equal(
        test_utils.zeros_per_row(actual), alberta.num_zeros(shape[1], sparsity)
    )

  @parameterized.named_parameters(*_quick_reference_cases())
  def test_matches_reference(self, **case):
    self.check_against_reference(**case)

  @parameterized.named_parameters(*_slow_reference_cases())
  @test_utils.slow
  def test_matches_reference_on_every_shape(self, **case):
    self.check_against_reference(**case)

  @parameterized.named_parameters(
      ("_7x13_uniform_typed", (7, 13), "uniform", "typed"),
      ("_7x13_normal_raw", (7, 13), "normal", "raw"),
      ("_128x10_uniform_raw", (128, 10), "uniform", "raw"),
  )
  @test_utils.slow
  def test_sparsity_sweep_matches_reference(self, shape, init_type, key_kind):
    for sparsity in SPARSITIES:
      with self.subTest(sparsity=sparsity):
        self.check_against_reference(
            shape, sparsity, init_type, key_kind, seed=1234
        )

  @parameterized.named_parameters(
      ("_float32_fan_in_5", np.float32(0.9), (3, 5)),
      ("_float32_fan_in_15", np.float32(0.9), (3, 15)),
      ("_float32_fan_in_25", np.float32(0.9), (3, 25)),
      ("_float16_fan_in_25", np.float16(0.9), (3, 25)),
      ("_float16_fan_in_15", np.float16(0.7), (3, 15)),
  )
  def test_numpy_scalar_sparsity_gives_the_reference_matrix(
      self, sparsity, shape
  ):
    # The reference evaluates int(sparsity * fan_in + 0.5) in the scalar's own
    # type: np.float32(0.9) * 5 rounds to 4.5 in float32, so 5 zeros a row,
    # where float(np.float32(0.9)) * 5 + 0.5 < 5 in binary64.
    self.check_against_reference(shape, sparsity, "uniform", "typed", seed=0)
    self.assertEqual(
        alberta.num_zeros(shape[1], sparsity), int(sparsity * shape[1] + 0.5)
    )
    self.assertEqual(alberta.num_zeros(5, np.float32(0.9)), 5)

  def test_a_numpy_scalar_whose_arithmetic_overflows_is_refused(self):
    with self.assertRaisesRegex(ValueError, r"float16 scalar.*fan_in=70000"):
      alberta.num_zeros(70000, np.float16(0.9))

  def test_default_arguments_are_the_references(self):
    # The reference's docstring example with the reference's defaults (0.9,
    # uniform) and the reference's rounding ("nearest"): 9 zeros in every row.
    key = jax.random.key(42)
    out = alberta.sparse_init(key, (128, 10))
    assert_matches_reference(
        out, reference_sparse_init(key, (128, 10)), "uniform"
    )
    np.testing.assert_array_equal(test_utils.zeros_per_row(out), 9)


class NumZerosTest(parameterized.TestCase):

  @parameterized.named_parameters(
      # 0.07 * 100 == 7.000000000000001 in binary64: ceil rounds it up.
      ("_0.07_of_100", 100, 0.07, 7, 8),
      # 0.1 * 3 == 0.30000000000000004.
      ("_0.1_of_3", 3, 0.1, 0, 1),
      # But 0.7 * 10 == 7.0 exactly in binary64, so both rules give 7.
      ("_0.7_of_10", 10, 0.7, 7, 7),
      ("_0.72_of_10", 10, 0.72, 7, 8),
      # Exactly half: "nearest" rounds half up, like the reference's + 0.5.
      ("_half_of_3", 3, 0.5, 2, 2),
      ("_0.65_of_10", 10, 0.65, 7, 7),
      ("_0.9_of_10", 10, 0.9, 9, 9),
      ("_0.99_of_7", 7, 0.99, 7, 7),
      ("_0.01_of_7", 7, 0.01, 0, 1),
      ("_none", 13, 0.0, 0, 0),
      ("_all", 13, 1.0, 13, 13),
      ("_empty_fan_in", 0, 0.5, 0, 0),
  )
  def test_known_values(self, fan_in, sparsity, nearest, ceil):
    self.assertEqual(alberta.num_zeros(fan_in, sparsity), nearest)
    self.assertEqual(alberta.num_zeros(fan_in, sparsity, "nearest"), nearest)
    self.assertEqual(alberta.num_zeros(fan_in, sparsity, "ceil"), ceil)

  def test_rules_are_the_references_and_the_papers_in_binary64(self):
    for fan_in in range(0, 70):
      for sparsity in np.linspace(0.0, 1.0, 41).tolist() + [
          0.07,
          0.1,
          0.3,
          0.7,
          0.9,
      ]:
        self.assertEqual(
            alberta.num_zeros(fan_in, sparsity, "nearest"),
            int(sparsity * fan_in + 0.5),
        )
        self.assertEqual(
            alberta.num_zeros(fan_in, sparsity, "ceil"),
            math.ceil(sparsity * fan_in),
        )

  def test_returns_python_int(self):
    self.assertIs(type(alberta.num_zeros(10, 0.5)), int)
    self.assertIs(
        type(alberta.num_zeros(np.int64(10), np.float32(0.5), "ceil")), int
    )

  @parameterized.named_parameters(
      ("_nearest", "nearest", 7), ("_ceil", "ceil", 8)
  )
  def test_rounding_sets_the_zero_count_of_every_row(self, rounding, k):
    out = alberta.sparse_init(
        jax.random.key(0), SHAPE, SPARSITY, rounding=rounding
    )
    np.testing.assert_array_equal(test_utils.zeros_per_row(out), k)

  def test_ceil_keeps_the_reference_values_and_adds_zeros(self):
    # The rounding rule only moves the mask threshold: the kept values and the
    # permutations are the same, so the "ceil" zeros are a superset, one more
    # per row here.
    key = jax.random.key(3)
    nearest = np.asarray(alberta.sparse_init(key, SHAPE, SPARSITY))
    ceil = np.asarray(
        alberta.sparse_init(key, SHAPE, SPARSITY, rounding="ceil")
    )
    self.assertTrue(np.all((ceil == 0) >= (nearest == 0)))
    np.testing.assert_array_equal(
        test_utils.zeros_per_row(ceil) - test_utils.zeros_per_row(nearest), 1
    )
    kept = ceil != 0
    np.testing.assert_array_equal(ceil[kept], nearest[kept])

  @parameterized.named_parameters(
      ("_negative_fan_in", -1, 0.5, "nearest", ValueError, r"fan_in.*-1"),
      ("_float_fan_in", 2.5, 0.5, "nearest", TypeError, r"fan_in.*2\.5"),
      ("_bool_fan_in", True, 0.5, "nearest", TypeError, r"fan_in.*True"),
      ("_bad_sparsity", 10, 1.5, "nearest", ValueError, r"sparsity.*1\.5"),
      ("_bad_rounding", 10, 0.5, "floor", ValueError, r"rounding.*floor"),
  )
  def test_bad_arguments(self, fan_in, sparsity, rounding, error, pattern):
    with self.assertRaisesRegex(error, pattern):
      alberta.num_zeros(fan_in, sparsity, rounding)


class ShapeTest(parameterized.TestCase):

  # Each N-D shape flattens to `SHAPE`, so its 2-D program is the one the
  # other tests compile.
  @parameterized.named_parameters(
      ("_conv2d_out_in_kh_kw_uniform", (16, 5, 1, 2), "uniform"),
      ("_conv2d_out_in_kh_kw_normal", (16, 5, 1, 2), "normal"),
      ("_rank5_with_ones", (16, 2, 1, 5, 1), "uniform"),
  )
  def test_nd_shape_is_the_2d_matrix_reshaped(self, shape, init_type):
    key = jax.random.key(11)
    fan_in = math.prod(shape[1:])
    nd = np.asarray(alberta.sparse_init(key, shape, SPARSITY, init_type))
    flat = np.asarray(
        alberta.sparse_init(key, (shape[0], fan_in), SPARSITY, init_type)
    )
    self.assertEqual(nd.shape, shape)
    test_utils.assert_same_bits(nd, flat.reshape(shape))
    # The fan-in of an output unit is all of its trailing axes together.
    np.testing.assert_array_equal(
        test_utils.zeros_per_row(nd), alberta.num_zeros(fan_in, SPARSITY)
    )

  def test_shape_may_be_a_list_or_numpy_ints(self):
    key = jax.random.key(0)
    expected = np.asarray(alberta.sparse_init(key, SHAPE, SPARSITY))
    for shape in (list(SHAPE), tuple(np.int64(d) for d in SHAPE)):
      out = alberta.sparse_init(key, shape, SPARSITY)
      self.assertEqual(out.shape, SHAPE)
      np.testing.assert_array_equal(np.asarray(out), expected)

  @parameterized.named_parameters(
      ("_no_rows", (0, 5)),
      ("_no_inputs", (5, 0)),
      ("_nothing", (0, 0)),
      ("_nd_zero_inside", (3, 0, 4)),
      ("_nd_no_rows", (0, 2, 3)),
  )
  def test_zero_size_shape_gives_empty_array(self, shape):
    key = jax.random.key(0)
    for dtype in (jnp.float32, jnp.bfloat16):
      out = alberta.sparse_init(key, shape, 0.5, dtype=dtype)
      self.assertEqual(out.shape, shape)
      self.assertEqual(out.dtype, jnp.dtype(dtype))
      jitted = jax.jit(
          lambda k, dtype=dtype: alberta.sparse_init(k, shape, dtype=dtype)
      )(key)
      self.assertEqual(jitted.shape, shape)
      self.assertEqual(jitted.dtype, jnp.dtype(dtype))
    batched = jax.vmap(lambda k: alberta.sparse_init(k, shape))(
        jax.random.split(key, 3)
    )
    self.assertEqual(batched.shape, (3, *shape))


class DtypeTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("_bfloat16_uniform", jnp.bfloat16, "uniform"),
      ("_bfloat16_by_name", "bfloat16", "uniform"),
      ("_float16_normal", jnp.float16, "normal"),
  )
  def test_low_precision_is_the_float32_result_cast(self, dtype, init_type):
    key = jax.random.key(9)
    out = alberta.sparse_init(key, SHAPE, SPARSITY, init_type, dtype=dtype)
    ref = alberta.sparse_init(key, SHAPE, SPARSITY, init_type)
    self.assertEqual(out.dtype, jnp.dtype(dtype))
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(ref.astype(dtype))
    )
    # Casting keeps every masked zero; a kept weight would flush to zero in
    # float16 only below 2**-25 (probability ~1e-7 each), and this key has none.
    np.testing.assert_array_equal(test_utils.zeros_per_row(out), 7)

  def test_float64_under_x64_is_the_float32_result_widened(self):
    key = jax.random.key(9)
    ref = np.asarray(alberta.sparse_init(key, SHAPE, SPARSITY, "normal"))
    with jax.enable_x64(True):
      out = alberta.sparse_init(
          key, SHAPE, SPARSITY, "normal", dtype=jnp.float64
      )
      self.assertEqual(out.dtype, jnp.float64)
      np.testing.assert_array_equal(np.asarray(out), ref.astype(np.float64))

  def test_float64_without_x64_is_float32_with_a_warning(self):
    # JAX's own convention (jax.random, jax.numpy): without jax_enable_x64 a
    # requested float64 is truncated to float32, with a UserWarning.
    self.assertFalse(jax.config.jax_enable_x64)
    key = jax.random.key(9)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      out = alberta.sparse_init(key, SHAPE, SPARSITY, dtype=jnp.float64)
    self.assertEqual(out.dtype, jnp.float32)
    self.assertTrue(
        any("float64" in str(w.message) for w in caught),
        [str(w.message) for w in caught],
    )
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(alberta.sparse_init(key, SHAPE, SPARSITY))
    )


class TransformTest(parameterized.TestCase):

  # Each compiles a program of its own; in the default run
  # `test_vmap_over_typed_keys_stacks_per_key_results` compares a jitted
  # (and vmapped) program with the eager one.
  @parameterized.named_parameters(
      ("_uniform", "uniform"), ("_normal", "normal")
  )
  @test_utils.slow
  def test_jit_equals_eager(self, init_type):
    key = jax.random.key(21)
    init = functools.partial(
        alberta.sparse_init, shape=SHAPE, sparsity=SPARSITY, init_type=init_type
    )
    test_utils.assert_same_bits(jax.jit(init)(key), init(key))

  def test_vmap_over_typed_keys_stacks_per_key_results(self):
    self.check_vmap_over_keys("typed")

  # A vmapped program compiles in ~5 s of CPU, so the raw-key variant runs in
  # the slow step (raw and typed keys meet the same `keys.key_words`).
  @test_utils.slow
  def test_vmap_over_raw_keys_stacks_per_key_results(self):
    self.check_vmap_over_keys("raw")

  def check_vmap_over_keys(self, key_kind):
    # Normal values: the ones a different fusion under jit could change.
    keys = jax.random.split(KEY_FNS[key_kind](8), 5)
    init = functools.partial(
        alberta.sparse_init, shape=SHAPE, sparsity=SPARSITY, init_type="normal"
    )
    batched = np.asarray(jax.jit(jax.vmap(init))(keys))
    self.assertEqual(batched.shape, (5, *SHAPE))
    for i in range(5):
      # A raw key and the typed key wrapping the same words give one matrix.
      key = (
          keys[i] if key_kind == "typed" else jax.random.wrap_key_data(keys[i])
      )
      test_utils.assert_same_bits(batched[i], init(key))
    # Each key its own mask: no two batch members share a zero pattern.
    patterns = {(batched[i] == 0).tobytes() for i in range(5)}
    self.assertLen(patterns, 5)


class MethodTest(parameterized.TestCase):

  def test_counter_method_is_accepted_and_keeps_the_zero_count(self):
    out = alberta.sparse_init(
        jax.random.key(1), SHAPE, SPARSITY, method="counter", rounding="ceil"
    )
    self.assertEqual(out.shape, SHAPE)
    self.assertEqual(out.dtype, jnp.float32)
    np.testing.assert_array_equal(test_utils.zeros_per_row(out), 8)
    bound = np.float32(1 / math.sqrt(SHAPE[1]))
    self.assertTrue(np.all(np.abs(np.asarray(out)) <= bound))

  def test_permutation_is_the_default_method(self):
    key = jax.random.key(1)
    np.testing.assert_array_equal(
        np.asarray(alberta.sparse_init(key, SHAPE, SPARSITY)),
        np.asarray(
            alberta.sparse_init(key, SHAPE, SPARSITY, method="permutation")
        ),
    )


class ChexBoundaryTest(absltest.TestCase):
  """The core checks its generator's output with chex, at trace time only."""

  def test_wrong_shape_from_the_generator_is_caught(self):
    with mock.patch.object(
        blocks,
        "generate_matrix",
        return_value=jnp.zeros((SHAPE[0], SHAPE[1] + 1)),
    ):
      with self.assertRaisesRegex(AssertionError, "assert_shape"):
        alberta.sparse_init(jax.random.key(0), SHAPE, SPARSITY)

  def test_wrong_dtype_from_the_generator_is_caught(self):
    with mock.patch.object(
        blocks, "generate_matrix", return_value=jnp.zeros(SHAPE, jnp.float16)
    ):
      with self.assertRaisesRegex(AssertionError, "assert_type"):
        alberta.sparse_init(jax.random.key(0), SHAPE, SPARSITY)

  def test_asserts_cost_nothing_under_jit(self):
    # Shape and dtype asserts are static: the jitted program contains no
    # host callback or runtime check, only the generator's own ops.
    jaxpr = jax.make_jaxpr(lambda k: alberta.sparse_init(k, SHAPE, SPARSITY))(
        jax.random.key(0)
    )
    text = str(jaxpr)
    self.assertNotIn("callback", text)
    self.assertNotIn("debug", text)


def _no_work():
  """Makes any call of the one-device generator fail the test."""
  return mock.patch.object(
      blocks,
      "generate_matrix",
      side_effect=AssertionError("work started before the check"),
  )


class BadInputTest(parameterized.TestCase):
  """Each bad argument raises a ValueError or TypeError naming it and its value.

  The compiled generator is patched to fail if reached, so each error is
  proven to come from the argument checks, before any tracing or work.
  """

  def assert_rejected(self, error, pattern, **overrides):
    kwargs = dict(key=jax.random.key(0), shape=(4, 8), sparsity=0.5)
    kwargs.update(overrides)
    with _no_work(), self.assertRaisesRegex(error, pattern):
      alberta.sparse_init(**kwargs)

  @parameterized.named_parameters(
      ("_nan", float("nan"), ValueError),
      ("_inf", float("inf"), ValueError),
      ("_minus_inf", float("-inf"), ValueError),
      ("_negative", -0.1, ValueError),
      ("_above_one", 1.5, ValueError),
      ("_string", "0.9", TypeError),
      ("_bool", True, TypeError),
      ("_numpy_bool", np.bool_(False), TypeError),
      ("_none", None, TypeError),
      ("_complex", 0.5j, TypeError),
      ("_numpy_nan", np.float32("nan"), ValueError),
  )
  def test_bad_sparsity(self, sparsity, error):
    self.assert_rejected(
        error, rf"sparsity.*{re.escape(repr(sparsity))}", sparsity=sparsity
    )

  @parameterized.named_parameters(
      ("_rank0", (), ValueError),
      ("_rank1", (5,), ValueError),
      ("_negative_rows", (-1, 4), ValueError),
      ("_negative_inputs", (3, -2), ValueError),
      ("_negative_nd", (3, 2, -2), ValueError),
      ("_float_dim", (3, 2.0), TypeError),
      ("_string_dim", (3, "4"), TypeError),
      ("_bool_dim", (3, True), TypeError),
      ("_none_dim", (None, 4), TypeError),
      ("_not_a_sequence", 12, TypeError),
      ("_string", "34", TypeError),
      ("_none", None, TypeError),
  )
  def test_bad_shape(self, shape, error):
    self.assert_rejected(
        error, rf"shape.*{re.escape(repr(shape))}", shape=shape
    )

  def test_huge_fan_in_is_rejected(self):
    # Row/column indices are uint32: a fan-in of 2**32 cannot be addressed.
    self.assert_rejected(
        ValueError, r"fan_in.*4294967296", shape=(1, 2**16, 2**16)
    )

  @parameterized.named_parameters(
      ("_init_type", "init_type", "gaussian"),
      ("_init_type_case", "init_type", "Uniform"),
      ("_init_type_none", "init_type", None),
      ("_method", "method", "sort"),
      ("_method_none", "method", None),
      ("_rounding", "rounding", "floor"),
      ("_rounding_int", "rounding", 1),
  )
  def test_unknown_choice(self, name, value):
    self.assert_rejected(
        ValueError, rf"{name}.*{re.escape(repr(value))}", **{name: value}
    )

  @parameterized.named_parameters(
      ("_int32", jnp.int32, "int32"),
      ("_uint8_string", "uint8", "uint8"),
      ("_bool", jnp.bool_, "bool"),
      ("_complex", jnp.complex64, "complex64"),
      ("_not_a_dtype", "floaty", "floaty"),
  )
  def test_non_float_dtype(self, dtype, shown):
    self.assert_rejected(TypeError, rf"dtype.*{shown}", dtype=dtype)

  @parameterized.named_parameters(
      ("_python_int", 0, TypeError, r"key.*\b0\b"),
      ("_none", None, TypeError, r"key.*None"),
      (
          "_float_array",
          jnp.zeros((2,), jnp.float32),
          TypeError,
          r"key.*float32",
      ),
      ("_numpy_float", np.zeros((2,), np.float64), TypeError, r"key.*float64"),
      ("_int_array", jnp.zeros((2,), jnp.int32), TypeError, r"key.*int32"),
      ("_wrong_length", jnp.zeros((4,), jnp.uint32), TypeError, r"key.*\(4,\)"),
      ("_key_batch", "batch", ValueError, r"key.*\(3,\)"),
      ("_rbg_impl", "rbg", ValueError, r"key.*rbg"),
  )
  def test_bad_key(self, key, error, pattern):
    if isinstance(key, str) and key == "batch":
      key = jax.random.split(jax.random.key(0), 3)
    elif isinstance(key, str) and key == "rbg":
      key = jax.random.key(0, impl="rbg")
    self.assert_rejected(error, pattern, key=key)

  def test_errors_are_raised_under_jit_at_trace_time(self):
    with _no_work(), self.assertRaisesRegex(ValueError, "sparsity.*1.5"):
      jax.jit(lambda k: alberta.sparse_init(k, (4, 8), 1.5))(jax.random.key(0))

  def test_good_arguments_reach_the_generator(self):
    # The patch above is meaningful: a valid call does reach it.
    with _no_work(), self.assertRaisesRegex(AssertionError, "work started"):
      alberta.sparse_init(jax.random.key(0), (4, 8), 0.5)


if __name__ == "__main__":
  absltest.main()
