"""The ELL output: the counter method's nonzeros without the zeros.

Proves that scattering `sparse_init_ell`'s `(values, indices)` gives
`sparse_init(..., method="counter")` bit for bit (zeros aside: a scatter writes
+0.0) for many shapes, sparsities (0 and 1 included), both distributions and
roundings, chunked and sharded over 8 devices; that indices are ascending and
in range; that `to_bcoo` is the same matrix and multiplies like it; that the
compiled program's memory is the ELL arrays plus a bounded chunk; and that bad
arguments (the permutation method, a column split) fail with clear errors.
"""

from tests import env  # noqa: F401

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.experimental import sparse as jsparse
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import alberta
from alberta._src import ell
from alberta._src.spec import make_spec
from tests import test_utils

# Bit patterns with -0.0 read as +0.0: the ELL arrays carry no zeros, so a
# dense matrix scattered from them has only +0.0 where the library's has -0.0.
as_bits = test_utils.as_bits_unsigned_zero


def check_ell_layout(test, values, indices, fan_out, fan_in, k, dtype):
  nnz = fan_in - k
  test.assertEqual(values.shape, (fan_out, nnz))
  test.assertEqual(indices.shape, (fan_out, nnz))
  test.assertEqual(values.dtype, dtype)
  test.assertEqual(indices.dtype, jnp.int32)
  indices = np.asarray(indices)
  if indices.size:
    test.assertGreaterEqual(indices.min(), 0)
    test.assertLess(indices.max(), fan_in)
    # Strictly ascending: sorted and distinct.
    test.assertTrue((np.diff(indices, axis=1) > 0).all())


# Each case compiles its own programs: the default run has the edges (a 1x1
# matrix, no zeros, no nonzeros, an N-D shape), both distributions, a long
# sparse row, and a "ceil" rounding that differs from "nearest" (0.99 * 64);
# the slow run the other shapes.
_DENSE_CASES = (
    ("_1x1_ceil", (1, 1), 0.5, "normal", "ceil"),
    ("_sparsity_0", (16, 10), 0.0, "uniform", "nearest"),
    ("_sparsity_1", (16, 10), 1.0, "normal", "nearest"),
    ("_64_uniform_099", (33, 64), 0.99, "uniform", "ceil"),
    ("_1000_sparse", (40, 1000), 0.99, "uniform", "nearest"),
    ("_4d_conv", (6, 3, 2, 5), 0.6, "normal", "nearest"),
)
_DENSE_SLOW_CASES = (
    ("_1x1", (1, 1), 0.5, "uniform", "nearest"),
    ("_fan_in_1", (7, 1), 0.3, "uniform", "nearest"),
    ("_10_ceil", (16, 10), 0.7, "uniform", "ceil"),
    ("_64_normal", (33, 64), 0.9, "normal", "nearest"),
    ("_prime_257", (9, 257), 0.5, "normal", "ceil"),
    ("_1000_dense", (40, 1000), 0.1, "normal", "nearest"),
    ("_65537", (2, 65537), 0.9, "uniform", "nearest"),
)


class EllEqualsDenseTest(parameterized.TestCase):

  @parameterized.named_parameters(*_DENSE_CASES)
  def test_scatter_equals_dense_counter_matrix(
      self, shape, sparsity, init_type, rounding
  ):
    self._check(shape, sparsity, init_type, rounding)

  @parameterized.named_parameters(*_DENSE_SLOW_CASES)
  @test_utils.slow
  def test_scatter_equals_dense_counter_matrix_more(
      self, shape, sparsity, init_type, rounding
  ):
    self._check(shape, sparsity, init_type, rounding)

  def _check(self, shape, sparsity, init_type, rounding):
    key = jax.random.key(60)
    values, indices = alberta.sparse_init_ell(
        key, shape, sparsity, init_type, rounding=rounding
    )
    spec, _ = make_spec(shape, sparsity, init_type, "counter", rounding)
    check_ell_layout(
        self, values, indices, spec.fan_out, spec.fan_in, spec.k, jnp.float32
    )
    dense = alberta.sparse_init(
        key, shape, sparsity, init_type, method="counter", rounding=rounding
    )
    np.testing.assert_array_equal(
        as_bits(alberta.to_dense(values, indices, shape)), as_bits(dense)
    )
    # The values carry their own signs: bit for bit, no zero normalized.
    rows = np.arange(spec.fan_out)[:, None]
    test_utils.assert_same_bits(
        values, np.asarray(dense).reshape(spec.shape)[rows, indices]
    )

  def test_low_precision_values_are_the_dense_values(self):
    # float16: the guarded cast, which flushes no kept weight to zero.
    self._check_low_precision(jnp.float16)

  @test_utils.slow
  def test_low_precision_values_are_the_dense_values_bfloat16(self):
    self._check_low_precision(jnp.bfloat16)

  def _check_low_precision(self, dtype):
    key = jax.random.key(61)
    values, indices = alberta.sparse_init_ell(key, (24, 50), 0.8, dtype=dtype)
    self.assertEqual(values.dtype, dtype)
    dense = alberta.sparse_init(
        key, (24, 50), 0.8, dtype=dtype, method="counter"
    )
    np.testing.assert_array_equal(
        as_bits(alberta.to_dense(values, indices, (24, 50))), as_bits(dense)
    )

  @parameterized.parameters((0, 10, 0.5), (5, 0, 0.5), (5, 10, 1.0))
  def test_empty_rows_or_matrix(self, fan_out, fan_in, sparsity):
    values, indices = alberta.sparse_init_ell(
        jax.random.key(0), (fan_out, fan_in), sparsity
    )
    k = alberta.num_zeros(fan_in, sparsity)
    check_ell_layout(self, values, indices, fan_out, fan_in, k, jnp.float32)
    self.assertEqual(values.size, 0)
    np.testing.assert_array_equal(
        alberta.to_dense(values, indices, (fan_out, fan_in)),
        np.zeros((fan_out, fan_in), np.float32),
    )

  def test_jit_and_vmap_over_keys(self):
    shape = (12, 30)
    keys = jax.random.split(jax.random.key(62), 3)
    f = lambda key: alberta.sparse_init_ell(key, shape, 0.7, "normal")
    values, indices = jax.jit(jax.vmap(f))(keys)
    for i in range(3):
      want_v, want_i = f(keys[i])
      np.testing.assert_array_equal(indices[i], want_i)
      np.testing.assert_array_equal(as_bits(values[i]), as_bits(want_v))

  def test_other_key_other_columns(self):
    # The "_1000_sparse" case's matrix (its program), under other keys.
    a = alberta.sparse_init_ell(jax.random.key(63), (40, 1000), 0.99)
    c = alberta.sparse_init_ell(jax.random.key(64), (40, 1000), 0.99)
    # Two independent uniform 10-subsets of 1000 columns coincide with
    # probability 1 / C(1000, 10) ~ 4e-24 per row.
    self.assertFalse((np.asarray(a[1]) == np.asarray(c[1])).all(axis=1).any())

  @test_utils.slow
  def test_raw_key_same_arrays_as_typed_key(self):
    # A raw key is another program signature (a uint32[2] argument).
    a = alberta.sparse_init_ell(jax.random.key(63), (40, 1000), 0.99)
    b = alberta.sparse_init_ell(jax.random.PRNGKey(63), (40, 1000), 0.99)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(as_bits(a[0]), as_bits(b[0]))


class ChunkingAndMemoryTest(parameterized.TestCase):

  def test_any_chunk_rows_gives_identical_arrays(self):
    self._check(37)  # 75 rows: a ragged last chunk

  @parameterized.parameters(1, 7, None)
  @test_utils.slow
  def test_any_chunk_rows_gives_identical_arrays_more(self, chunk_rows):
    self._check(chunk_rows)

  def _check(self, chunk_rows):
    spec, _ = make_spec((75, 40), 0.7, "uniform", "counter", "nearest")
    key = jax.random.key(65)
    gen = jax.jit(ell.generate, static_argnums=(1, 3, 4, 5))
    values, indices = gen(
        key, spec, np.uint32(2**31 - 30), 75, jnp.float32, chunk_rows
    )
    want_v, want_i = ell.nonzero_block(key, spec, np.uint32(2**31 - 30), 75)
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_array_equal(as_bits(values), as_bits(want_v))

  def test_small_output_is_one_chunk_large_is_chunked(self):
    small, _ = make_spec((64, 64), 0.9, "uniform", "counter", "nearest")
    self.assertEqual(ell.default_chunk_rows(small, 64, jnp.float32), 64)
    big, _ = make_spec((16384, 16384), 0.9, "uniform", "counter", "nearest")
    chunk = ell.default_chunk_rows(big, 16384, jnp.float32)
    self.assertLess(chunk, 16384)
    self.assertGreater(chunk, 0)

  def test_compiled_memory_is_the_output_plus_a_small_chunk(self):
    self._check_memory(0.99)

  @test_utils.slow
  def test_compiled_memory_is_the_output_plus_a_small_chunk_0_9(self):
    self._check_memory(0.9)

  def _check_memory(self, sparsity):
    # Compiled only, not run: 16384 x 16384 is 1 GiB dense in float32.
    n = 16384
    spec, _ = make_spec((n, n), sparsity, "uniform", "counter", "nearest")
    nnz = ell.nnz(spec)
    mem = (
        ell._sparse_init_ell_2d.lower(  # pylint: disable=protected-access
            jax.random.key(0), spec, jnp.dtype(jnp.float32), None
        )
        .compile()
        .memory_analysis()
    )
    if mem is None:
      self.skipTest("this backend reports no memory analysis")
    output = n * nnz * (4 + 4)
    # The two arrays (and XLA's few-byte tuple of pointers to them).
    self.assertBetween(mem.output_size_in_bytes, output, output + 64)
    # Temporaries: one chunk, within the policy's 1/8 of the output (plus a
    # page of bookkeeping).
    self.assertLessEqual(mem.temp_size_in_bytes, output / 8 + 2**16)
    # And far below the dense matrix: at 0.99, < 1/40 of its 1 GiB.
    peak = mem.output_size_in_bytes + mem.temp_size_in_bytes
    self.assertLess(peak, (n * n * 4) * (1 - sparsity) * 2.5)


class ShardedEllTest(parameterized.TestCase):
  _SHAPE = (64, 100)
  _SPARSITY = 0.7

  # The program builder is the dense layout's too (sharding_test runs every
  # kind of spec): the default run has a row split in chunks over two axes
  # and one unchunked over eight devices.
  @parameterized.named_parameters(
      ("_rows_over_8", (8,), ("x",), P("x"), None),
      ("_rows_over_both_axes", (2, 4), ("x", "y"), P(("x", "y")), 5),
  )
  def test_equals_sparse_init_ell_and_dense(
      self, mesh_shape, axes, spec, chunk_rows
  ):
    self._check(mesh_shape, axes, spec, chunk_rows)

  @parameterized.named_parameters(
      ("_rows_over_8_chunked", (8,), ("x",), P("x", None), 3),
      ("_rows_over_one_axis_of_two", (2, 4), ("x", "y"), P("y"), None),
      ("_replicated", (8,), ("x",), P(), 7),
  )
  @test_utils.slow
  def test_equals_sparse_init_ell_and_dense_more(
      self, mesh_shape, axes, spec, chunk_rows
  ):
    self._check(mesh_shape, axes, spec, chunk_rows)

  def _check(self, mesh_shape, axes, spec, chunk_rows):
    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), axes)
    sharding = NamedSharding(mesh, spec)
    key = jax.random.key(66)
    values, indices = alberta.sharded_sparse_init_ell(
        key,
        self._SHAPE,
        self._SPARSITY,
        "normal",
        sharding=sharding,
        chunk_rows=chunk_rows,
    )
    self.assertEqual(values.sharding, sharding)
    self.assertEqual(indices.sharding, sharding)
    want_v, want_i = alberta.sparse_init_ell(
        key, self._SHAPE, self._SPARSITY, "normal"
    )
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_array_equal(as_bits(values), as_bits(want_v))
    dense = alberta.sparse_init(
        key, self._SHAPE, self._SPARSITY, "normal", method="counter"
    )
    np.testing.assert_array_equal(
        as_bits(alberta.to_dense(values, indices, self._SHAPE)), as_bits(dense)
    )

  def test_each_device_holds_its_rows(self):
    # The program of the "_rows_over_8" case.
    mesh = Mesh(np.array(jax.devices()), ("x",))
    values, _ = alberta.sharded_sparse_init_ell(
        jax.random.key(67),
        self._SHAPE,
        self._SPARSITY,
        "normal",
        sharding=NamedSharding(mesh, P("x")),
    )
    want, _ = alberta.sparse_init_ell(
        jax.random.key(67), self._SHAPE, self._SPARSITY, "normal"
    )
    for shard in values.addressable_shards:
      self.assertEqual(shard.data.shape, (8, 30))
      np.testing.assert_array_equal(
          as_bits(shard.data), as_bits(np.asarray(want)[shard.index])
      )

  @parameterized.parameters(((64, 10), 1.0), ((0, 10), 0.5), ((64, 0), 0.5))
  def test_empty_arrays_keep_the_sharding(self, shape, sparsity):
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("x",)), P("x"))
    values, indices = alberta.sharded_sparse_init_ell(
        jax.random.key(0), shape, sparsity, sharding=sharding
    )
    k = alberta.num_zeros(shape[1], sparsity)
    check_ell_layout(self, values, indices, shape[0], shape[1], k, jnp.float32)
    self.assertEqual(values.sharding, sharding)
    self.assertEqual(indices.sharding, sharding)

  @parameterized.named_parameters(
      ("_columns", P(None, "x")),
      ("_rows_and_columns", P("x", "y")),
      ("_columns_not_dividing", P(None, ("x", "y"))),
  )
  def test_column_split_is_refused(self, spec):
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("x", "y"))
    with self.assertRaisesRegex(ValueError, "splits rows only"):
      alberta.sharded_sparse_init_ell(
          jax.random.key(0), (64, 99), 0.5, sharding=NamedSharding(mesh, spec)
      )

  def test_other_bad_arguments(self):
    mesh = Mesh(np.array(jax.devices()), ("x",))
    sharding = NamedSharding(mesh, P("x"))
    key = jax.random.key(0)
    with self.assertRaisesRegex(ValueError, "does not divide"):
      alberta.sharded_sparse_init_ell(key, (60, 10), sharding=sharding)
    with self.assertRaisesRegex(TypeError, "NamedSharding"):
      alberta.sharded_sparse_init_ell(key, (64, 10), sharding=jax.devices()[0])
    with self.assertRaisesRegex(ValueError, "2-D shape"):
      alberta.sharded_sparse_init_ell(key, (64, 2, 5), sharding=sharding)
    with self.assertRaisesRegex(ValueError, "chunk_rows"):
      alberta.sharded_sparse_init_ell(
          key, (64, 10), sharding=sharding, chunk_rows=0
      )
    with self.assertRaisesRegex(ValueError, "method='counter'"):
      alberta.sharded_sparse_init_ell(
          key, (64, 10), sharding=sharding, method="permutation"
      )


class ArgumentTest(parameterized.TestCase):

  def test_permutation_method_is_refused_with_a_reason(self):
    with self.assertRaisesRegex(ValueError, "method='counter'.*whole row"):
      alberta.sparse_init_ell(jax.random.key(0), (4, 10), method="permutation")

  @parameterized.named_parameters(
      ("_sparsity", dict(sparsity=1.5), ValueError, "sparsity"),
      ("_init_type", dict(init_type="xavier"), ValueError, "init_type"),
      ("_method", dict(method="sorted"), ValueError, "method"),
      ("_rounding", dict(rounding="floor"), ValueError, "rounding"),
      ("_dtype", dict(dtype=jnp.int32), TypeError, "dtype"),
      ("_shape", dict(shape=(4,)), ValueError, "rank"),
  )
  def test_bad_arguments_as_in_sparse_init(self, kwargs, error, pattern):
    args = dict(shape=(4, 10)) | kwargs
    with self.assertRaisesRegex(error, pattern):
      alberta.sparse_init_ell(jax.random.key(0), **args)

  def test_bad_key(self):
    with self.assertRaisesRegex(TypeError, "key"):
      alberta.sparse_init_ell(42, (4, 10))

  def test_fan_in_beyond_int32_indices(self):
    with self.assertRaisesRegex(ValueError, "int32"):
      alberta.sparse_init_ell(jax.random.key(0), (1, 2**16, 2**15 + 1))

  def test_mismatched_ell_arrays(self):
    values = jnp.zeros((4, 3))
    with self.assertRaisesRegex(ValueError, r"\[fan_out, nnz\]"):
      alberta.to_dense(values, jnp.zeros((4, 2), jnp.int32), (4, 10))
    with self.assertRaisesRegex(ValueError, r"\[fan_out, nnz\]"):
      alberta.to_bcoo(values, jnp.zeros((4, 3), jnp.int32), (5, 10))
    with self.assertRaisesRegex(ValueError, "do not fit"):
      alberta.to_dense(values, jnp.zeros((4, 3), jnp.int32), (4, 2))
    with self.assertRaisesRegex(TypeError, "integers"):
      alberta.to_dense(values, values, (4, 10))


class BcooTest(parameterized.TestCase):

  # The specs of two EllEqualsDenseTest cases, whose programs are compiled.
  @parameterized.parameters(
      ((40, 1000), 0.99, "uniform"), ((6, 3, 2, 5), 0.6, "normal")
  )
  def test_bcoo_is_the_dense_matrix(self, shape, sparsity, init_type):
    values, indices = alberta.sparse_init_ell(
        jax.random.key(70), shape, sparsity, init_type
    )
    mat = alberta.to_bcoo(values, indices, shape)
    self.assertIsInstance(mat, jsparse.BCOO)
    self.assertEqual(mat.shape, tuple(shape))
    self.assertEqual(mat.nse, values.size)
    np.testing.assert_array_equal(
        as_bits(mat.todense()),
        as_bits(alberta.to_dense(values, indices, shape)),
    )

  def test_sparse_matmul_equals_dense_matmul(self):
    shape = (40, 1000)
    values, indices = alberta.sparse_init_ell(jax.random.key(71), shape, 0.99)
    w_sparse = alberta.to_bcoo(values, indices, shape)
    w_dense = alberta.to_dense(values, indices, shape)
    x = jax.random.normal(jax.random.key(72), (5, 1000))
    layer = jax.jit(lambda w, x: x @ w.T)  # a Linear layer's y = x W^T
    np.testing.assert_allclose(
        layer(w_sparse, x), x @ w_dense.T, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        w_sparse @ x.T, w_dense @ x.T, rtol=1e-5, atol=1e-6
    )

  def test_to_dense_and_to_bcoo_under_jit(self):
    shape = (16, 20)
    values, indices = alberta.sparse_init_ell(jax.random.key(73), shape, 0.5)
    dense = jax.jit(alberta.to_dense, static_argnums=2)(values, indices, shape)
    bcoo = jax.jit(alberta.to_bcoo, static_argnums=2)(values, indices, shape)
    np.testing.assert_array_equal(as_bits(bcoo.todense()), as_bits(dense))


if __name__ == "__main__":
  absltest.main()
