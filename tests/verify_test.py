"""`alberta.verify`: passes every matrix the library makes, catches corruption.

Proves that `verify` accepts the dense and ELL matrices of `sparse_init`,
`sharded_sparse_init` (8 virtual devices, rows and columns split) and
`sparse_init_ell` for both methods, both init types and every dtype; that it
rejects, with a `VerificationError` naming the check, the count and the first
row, one extra zero (counter method), one missing zero, a value beyond the
bound, a NaN or an infinity, and ELL indices that repeat, leave `[0, fan_in)`
or are out of order; that the permutation method's allowance accepts the
kept weights that round to zero by chance and no more; and that its report and
its argument errors are what they claim.
"""

from tests import env  # noqa: F401

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import alberta
from alberta._src import verify as verify_lib
from alberta._src.spec import make_spec
from tests import test_utils

_SHAPE = (64, 48)
_SPARSITY = 0.75
_K = alberta.num_zeros(_SHAPE[1], _SPARSITY)  # 36 zeros, 12 kept per row.


def _mesh_2d():
  return jax.make_mesh(
      (4, 2), ("rows", "cols"), axis_types=(jax.sharding.AxisType.Auto,) * 2
  )


def _dense_sharding():
  return jax.sharding.NamedSharding(
      _mesh_2d(), jax.sharding.PartitionSpec("rows", "cols")
  )


def _rows_sharding():
  mesh = jax.make_mesh(
      (8,), ("rows",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))


def _matrix(
    method: str,
    init_type: str = "uniform",
    sharded: bool = True,
    dtype=jnp.float32,
    seed: int = 0,
):
  key = jax.random.key(seed)
  if sharded:
    return alberta.sharded_sparse_init(
        key,
        _SHAPE,
        _SPARSITY,
        init_type,
        sharding=_dense_sharding(),
        dtype=dtype,
        method=method,
    )
  return alberta.sparse_init(
      key, _SHAPE, _SPARSITY, init_type, dtype=dtype, method=method
  )


def _ell(sharded: bool = True, init_type: str = "uniform"):
  key = jax.random.key(0)
  if sharded:
    return alberta.sharded_sparse_init_ell(
        key, _SHAPE, _SPARSITY, init_type, sharding=_rows_sharding()
    )
  return alberta.sparse_init_ell(key, _SHAPE, _SPARSITY, init_type)


def _first_where(matrix, row: int, zero: bool) -> int:
  """The first column of `row` that is (or, with zero=False, is not) zero."""
  entries = np.asarray(matrix[row]) == 0
  return int(np.argmax(entries if zero else ~entries))


class VerifyPassesTest(parameterized.TestCase):

  # The sharded matrices are test_dense_corruption's and the unsharded
  # uniform ones other tests'; the unsharded normal ones (a program each)
  # run in the slow step.
  @parameterized.parameters(
      (method, init_type, sharded)
      for method in ("counter", "permutation")
      for init_type, sharded in (
          ("uniform", True),
          ("normal", True),
          ("uniform", False),
      )
  )
  def test_library_matrix_passes(self, method, init_type, sharded):
    self.check_library_matrix_passes(method, init_type, sharded)

  @parameterized.parameters("counter", "permutation")
  @test_utils.slow
  def test_library_matrix_passes_unsharded_normal(self, method):
    self.check_library_matrix_passes(method, "normal", False)

  def check_library_matrix_passes(self, method, init_type, sharded):
    matrix = _matrix(method, init_type, sharded)
    report = alberta.verify(matrix, _SPARSITY, init_type, method=method)
    self.assertTrue(report.passed, msg=report)
    self.assertEqual(
        (report.format, report.shape, report.rows), ("dense", _SHAPE, _SHAPE[0])
    )
    self.assertEqual(report.zeros_per_row, _K)
    # Exact for both: with 768 kept weights, a chance zero has probability
    # 768 * 2**-23 < 1e-4, and these keys hold none.
    self.assertEqual(
        (report.min_zeros_per_row, report.max_zeros_per_row), (_K, _K)
    )
    self.assertEqual((report.nonfinite, report.out_of_bound), (0, 0))
    self.assertEqual(
        report.excess_zero_allowance, 0 if method == "counter" else 13
    )
    self.assertGreater(report.max_abs, 0)
    self.assertLessEqual(report.max_abs, report.value_bound)
    self.assertIsNone(report.nonzeros_per_row)

  # float32 is test_library_matrix_passes'; each dtype compiles a generator
  # and a reduction per method, so bfloat16 runs in the slow step.
  @parameterized.parameters("float16", "float64")
  def test_every_dtype_passes(self, dtype):
    self.check_every_dtype_passes(dtype)

  @parameterized.parameters("bfloat16", "float32")
  @test_utils.slow
  def test_every_dtype_passes_slow(self, dtype):
    self.check_every_dtype_passes(dtype)

  def check_every_dtype_passes(self, dtype):
    with jax.enable_x64(dtype == "float64"):
      for method in ("counter", "permutation"):
        matrix = _matrix(method, "normal", sharded=False, dtype=dtype)
        report = alberta.verify(
            matrix, _SPARSITY, "normal", method=method, dtype=dtype
        )
        self.assertTrue(report.passed, msg=report)
        self.assertEqual(report.dtype, dtype)

  @parameterized.parameters(True, False)
  def test_library_ell_arrays_pass(self, sharded):
    values, indices = _ell(sharded)
    report = alberta.verify((values, indices), _SPARSITY, shape=_SHAPE)
    self.assertTrue(report.passed, msg=report)
    self.assertEqual((report.format, report.method), ("ell", "counter"))
    self.assertEqual(report.nonzeros_per_row, _SHAPE[1] - _K)
    self.assertEqual(
        (report.min_zeros_per_row, report.max_zeros_per_row), (_K, _K)
    )
    self.assertEqual(
        (
            report.indices_out_of_range,
            report.rows_unsorted,
            report.rows_with_repeats,
        ),
        (0, 0, 0),
    )

  def test_n_dimensional_shape_is_flattened_like_sparse_init(self):
    shape = (8, 4, 6)  # fan_in 24
    matrix = alberta.sparse_init(
        jax.random.key(1), shape, 0.5, method="counter"
    )
    report = alberta.verify(matrix, 0.5, method="counter")
    self.assertTrue(report.passed, msg=report)
    self.assertEqual(report.shape, (8, 24))

  def test_report_is_json_serializable(self):
    report = alberta.verify(_ell(sharded=False), _SPARSITY, shape=_SHAPE)
    found = json.loads(json.dumps(report.as_dict()))
    self.assertTrue(found["passed"])
    self.assertEqual(found["shape"], list(_SHAPE))
    self.assertEqual(found["failures"], [])


class VerifyCatchesCorruptionTest(parameterized.TestCase):

  @parameterized.product(
      method=("counter", "permutation"), init_type=("uniform", "normal")
  )
  def test_dense_corruption(self, method, init_type):
    good = _matrix(method, init_type)
    sharding = _dense_sharding()
    bound = float(
        verify_lib.value_bound(
            make_spec(_SHAPE, _SPARSITY, init_type, method, "nearest")[0],
            jnp.float32,
        )
    )
    zero_col = _first_where(good, 5, zero=True)
    kept_col = _first_where(good, 7, zero=False)
    cases = dict(
        missing_zero=(
            good.at[5, zero_col].set(1e-3),
            r"1 row with fewer than k=36 zeros \(min 35\) " r"\(first: row 5\)",
        ),
        nan=(
            good.at[7, kept_col].set(jnp.nan),
            r"1 non-finite value \(first in row 7\)",
        ),
        inf=(
            good.at[7, kept_col].set(-jnp.inf),
            r"1 non-finite value \(first in row 7\)",
        ),
        out_of_bound=(
            good.at[7, kept_col].set(bound * 1.001),
            r"1 value above the bound .* \(max \|value\| .*, first "
            r"in row 7\)",
        ),
        # Four rows of zeros: 48 excess zeros, beyond any allowance (13).
        zeroed_rows=(
            good.at[4:8].set(0.0),
            r"4 rows with more than k=36 zeros .*first: row 4"
            if method == "counter"
            else r"48 zeros beyond k=36 per row \(in 4 rows, first: row "
            r"4; max 48 in a row\), more than the 13",
        ),
    )
    if method == "counter":
      # One extra zero: the counter method never keeps a zero weight.
      cases["extra_zero"] = (
          good.at[9, _first_where(good, 9, zero=False)].set(0.0),
          r"1 row with more than k=36 zeros \(max 37; method='counter' never "
          r"keeps a zero weight\) \(first: row 9\)",
      )
    for name, (matrix, message) in cases.items():
      with self.subTest(name):
        matrix = jax.device_put(matrix, sharding)
        with self.assertRaisesRegex(
            verify_lib.VerificationError, "failed verification: " + message
        ):
          alberta.verify(matrix, _SPARSITY, init_type, method=method)
        # The same findings without raising.
        report = alberta.verify(
            matrix, _SPARSITY, init_type, method=method, raise_on_failure=False
        )
        self.assertFalse(report.passed)
        self.assertLen(report.failures, 1, msg=report.failures)

  def test_counter_counts_one_extra_zero(self):
    good = _matrix("counter")
    matrix = good.at[9, _first_where(good, 9, zero=False)].set(0.0)
    report = alberta.verify(
        matrix, _SPARSITY, method="counter", raise_on_failure=False
    )
    self.assertEqual(
        (report.rows_above_k, report.excess_zeros, report.max_zeros_per_row),
        (1, 1, _K + 1),
    )

  def test_permutation_allowance_accepts_chance_zeros_and_no_more(self):
    good = np.array(_matrix("permutation", sharded=False))
    allowance = verify_lib.excess_zero_allowance(
        make_spec(_SHAPE, _SPARSITY, "uniform", "permutation", "nearest")[0],
        np.float32,
    )
    self.assertEqual(allowance, 13)
    # Zero the first kept weight of rows 0, 1, ...: `n` excess zeros.
    kept = [(r, _first_where(good, r, zero=False)) for r in range(_SHAPE[0])]
    for n, passed in ((1, True), (allowance, True), (allowance + 1, False)):
      with self.subTest(n=n):
        matrix = good.copy()
        for r, c in kept[:n]:
          matrix[r, c] = 0
        report = alberta.verify(
            jnp.asarray(matrix),
            _SPARSITY,
            method="permutation",
            raise_on_failure=False,
        )
        self.assertEqual(report.excess_zeros, n)
        self.assertEqual(report.rows_above_k, n)
        self.assertEqual(report.passed, passed, msg=report.failures)

  def test_ell_corruption(self):
    values, indices = _ell()
    rows = _rows_sharding()
    bound = float(
        verify_lib.value_bound(
            make_spec(_SHAPE, _SPARSITY, "uniform", "counter", "nearest")[0],
            jnp.float32,
        )
    )
    cases = dict(
        duplicate=(
            (values, indices.at[5, 1].set(indices[5, 0])),
            r"1 row with a repeated index \(first: row 5\)",
        ),
        unsorted=(
            (values, indices.at[6, 0:2].set(indices[6, 1::-1])),
            r"1 row with indices not in ascending order \(first: row " r"6\)",
        ),
        too_large=(
            (values, indices.at[9, -1].set(48)),
            r"1 index outside \[0, fan_in=48\) \(first in row 9\)",
        ),
        negative=(
            (values, indices.at[10, 0].set(-1)),
            r"1 index outside \[0, fan_in=48\) \(first in row 10\)",
        ),
        nan=(
            (values.at[7, 0].set(jnp.nan), indices),
            r"1 non-finite value \(first in row 7\)",
        ),
        out_of_bound=(
            (values.at[7, 0].set(bound * 1.001), indices),
            r"1 value above the bound",
        ),
        # A stored 0.0 is one more zero in the dense row.
        zero_value=(
            (values.at[3, 2].set(0.0), indices),
            r"1 row with more than k=36 zeros \(max 37; "
            r"method='counter'.*first: row 3",
        ),
        # A width of nnz + 1 is one zero short in every row.
        missing_zero=(
            (
                jnp.ones((64, 13)) * 0.01,
                jnp.broadcast_to(jnp.arange(13), (64, 13)),
            ),
            r"64 rows with fewer than k=36 zeros \(min 35\) "
            r"\(first: row 0\)",
        ),
    )
    for name, ((v, i), message) in cases.items():
      with self.subTest(name):
        v, i = jax.device_put(v, rows), jax.device_put(i, rows)
        with self.assertRaisesRegex(
            verify_lib.VerificationError,
            "ELL arrays of shape .* failed verification: " + message,
        ):
          alberta.verify((v, i), _SPARSITY, shape=_SHAPE)

  def test_dtype_mismatch_fails(self):
    # The float16 matrix of test_every_dtype_passes.
    matrix = _matrix("counter", "normal", sharded=False, dtype=jnp.float16)
    with self.assertRaisesRegex(
        verify_lib.VerificationError, "dtype is float16, expected float32"
    ):
      alberta.verify(matrix, _SPARSITY, method="counter", dtype=jnp.float32)

  def test_verification_error_is_a_value_error_with_the_report(self):
    good = _matrix("counter", sharded=False)
    with self.assertRaises(ValueError) as caught:
      alberta.verify(good.at[0, 0].set(jnp.nan), _SPARSITY, method="counter")
    self.assertIsInstance(caught.exception, verify_lib.VerificationError)
    self.assertEqual(caught.exception.report.nonfinite, 1)


class VerifyArgumentsTest(parameterized.TestCase):

  def test_bad_arguments_are_named(self):
    values, indices = _ell(sharded=False)
    matrix = jnp.zeros(_SHAPE)
    with self.assertRaisesRegex(ValueError, "needs shape="):
      alberta.verify((values, indices), _SPARSITY)
    with self.assertRaisesRegex(ValueError, r"\[fan_out, nnz\]"):
      alberta.verify((values, indices[:, 1:]), _SPARSITY, shape=_SHAPE)
    with self.assertRaisesRegex(ValueError, r"\[fan_out, nnz\]"):
      alberta.verify((values, indices), _SPARSITY, shape=(32, 48))
    with self.assertRaisesRegex(TypeError, "indices must be integers"):
      alberta.verify((values, values), _SPARSITY, shape=_SHAPE)
    with self.assertRaisesRegex(ValueError, "method='counter'"):
      alberta.verify(
          (values, indices), _SPARSITY, shape=_SHAPE, method="permutation"
      )
    with self.assertRaisesRegex(ValueError, r"pair, got a sequence of 3"):
      alberta.verify((values, indices, indices), _SPARSITY, shape=_SHAPE)
    with self.assertRaisesRegex(ValueError, r"shape=\(64, 40\)"):
      alberta.verify(matrix, _SPARSITY, shape=(64, 40))
    with self.assertRaisesRegex(
        TypeError, "matrix: dtype must be one of .*int32"
    ):
      alberta.verify(matrix.astype(jnp.int32), _SPARSITY)
    with self.assertRaisesRegex(TypeError, "must be an array"):
      alberta.verify(0.5, _SPARSITY)
    with self.assertRaisesRegex(ValueError, "sparsity"):
      alberta.verify(matrix, 1.5)
    with self.assertRaisesRegex(ValueError, "method"):
      alberta.verify(matrix, _SPARSITY, method="sort")

  def test_empty_matrices(self):
    report = alberta.verify(jnp.zeros((0, 10)), 0.5)
    self.assertTrue(report.passed)
    self.assertEqual(report.rows, 0)
    # A width of 0 ELL arrays at sparsity 1: every column absent.
    report = alberta.verify(
        (jnp.zeros((4, 0)), jnp.zeros((4, 0), jnp.int32)), 1.0, shape=(4, 10)
    )
    self.assertTrue(report.passed, msg=report)
    self.assertEqual(report.min_zeros_per_row, 10)
    with self.assertRaisesRegex(
        verify_lib.VerificationError,
        r"4 rows with more than k=10 zeros \(max 20",
    ):
      alberta.verify(
          (jnp.zeros((4, 0)), jnp.zeros((4, 0), jnp.int32)), 0.5, shape=(4, 20)
      )

  def test_value_bound(self):
    spec = make_spec(_SHAPE, _SPARSITY, "uniform", "counter", "nearest")[0]
    self.assertEqual(
        float(verify_lib.value_bound(spec, jnp.float32)),
        float(np.float32(1 / np.sqrt(48))),
    )
    spec = make_spec(_SHAPE, _SPARSITY, "normal", "counter", "nearest")[0]
    # sqrt(2) erfinv(1 - 2**-23) ~ 5.42 standard deviations, and a few ulps.
    normal = float(verify_lib.value_bound(spec, jnp.float32)) * np.sqrt(48)
    self.assertBetween(normal, 5.40, 5.43)


if __name__ == "__main__":
  absltest.main()
