"""`sparse_mask` is `sparse_init`'s zero set, on every path, without values.

The mask must be `False` exactly where the matrix is zero, for both methods,
both distributions and every dtype, whole, chunked (in the graph and as the
matrix's host loop) and sharded over the suite's 8 CPU devices; every row has
exactly `k` `False` entries; and no weight bits are drawn (the value
generators are replaced by ones that fail).

The reference's method keeps a uniform weight that is exactly 0.0 with
probability 2**-23 per weight: there the matrix has an extra zero and the
mask says "kept". The comparisons allow that one way only, and assert that
it happens at most once in these matrices (~2.6e4 weights each: a false
failure probability below 1e-5 per matrix).
"""

from tests import env  # noqa: F401

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import alberta
from alberta._src import counter
from alberta._src import permutation

# 320 rows (40 per device on 8), fan_in 83: rows of a prime length.
_SHAPE = (320, 83)
_SPARSITY = 0.7
_KEY = 31


def _assert_mask_of(test, mask, matrix, method):
  mask = np.asarray(mask)
  zero = np.asarray(matrix).astype(np.float32) == 0
  test.assertEqual(mask.dtype, np.bool_)
  test.assertEqual(mask.shape, zero.shape)
  if method == "counter":
    np.testing.assert_array_equal(mask, ~zero)
  else:
    # Not kept => zero, always; zero => not kept, but for the reference's rare
    # exact 0.0 weights.
    np.testing.assert_array_equal(zero[~mask], True)
    test.assertLessEqual(int((zero & mask).sum()), 1)
  fan_in = int(np.prod(zero.shape[1:]))
  k = alberta.num_zeros(fan_in, _SPARSITY)
  np.testing.assert_array_equal(
      (~mask).reshape(mask.shape[0], -1).sum(axis=1), k
  )


class SparseMaskTest(parameterized.TestCase):

  @parameterized.product(
      method=("permutation", "counter"),
      init_type=("uniform", "normal"),
      dtype=("float32", "bfloat16", "float16"),
  )
  def test_equals_the_zero_set_of_sparse_init(self, method, init_type, dtype):
    key = jax.random.key(_KEY)
    mask = alberta.sparse_mask(key, _SHAPE, _SPARSITY, method=method)
    matrix = alberta.sparse_init(
        key, _SHAPE, _SPARSITY, init_type, dtype=dtype, method=method
    )
    _assert_mask_of(self, mask, matrix, method)

  @parameterized.parameters("permutation", "counter")
  def test_chunked_is_the_whole_mask_and_the_chunked_matrix_zero_set(
      self, method
  ):
    key = jax.random.key(_KEY)
    whole = alberta.sparse_mask(key, _SHAPE, _SPARSITY, method=method)
    # 37 rows divides neither 320 nor a shard: a shifted last chunk.
    chunked = alberta.sparse_mask(
        key, _SHAPE, _SPARSITY, method=method, chunk_rows=37
    )
    np.testing.assert_array_equal(chunked, whole)
    # The matrix's chunked path at top level is its host loop.
    matrix = alberta.sparse_init(
        key, _SHAPE, _SPARSITY, method=method, chunk_rows=37
    )
    _assert_mask_of(self, chunked, matrix, method)

  @parameterized.parameters(
      ("permutation", ("x", None), (8,)),
      ("counter", ("x", "y"), (4, 2)),
      ("counter", (None, "x"), (1,)),
  )
  def test_sharded_is_laid_out_and_equals_sparse_init(
      self, method, spec, mesh_shape
  ):
    names = ("x", "y")[: len(mesh_shape)]
    mesh = jax.make_mesh(
        mesh_shape, names, devices=jax.devices()[: int(np.prod(mesh_shape))]
    )
    sharding = NamedSharding(mesh, P(*spec))
    key = jax.random.key(_KEY)
    shape = (_SHAPE[0], 84)  # fan_in divisible by the column split too
    mask = alberta.sparse_mask(
        key, shape, _SPARSITY, method=method, sharding=sharding, chunk_rows=7
    )
    self.assertEqual(mask.sharding, sharding)
    matrix = alberta.sharded_sparse_init(
        key, shape, _SPARSITY, method=method, sharding=sharding
    )
    np.testing.assert_array_equal(
        mask, alberta.sparse_mask(key, shape, _SPARSITY, method=method)
    )
    zero = np.asarray(matrix) == 0
    if method == "counter":
      np.testing.assert_array_equal(np.asarray(mask), ~zero)
    else:
      np.testing.assert_array_equal(zero[~np.asarray(mask)], True)

  @parameterized.parameters("permutation", "counter")
  def test_draws_no_weight_bits(self, method):
    def refuse(*args, **kwargs):
      raise AssertionError("a weight's bits were drawn")

    key = jax.random.key(_KEY + 1)
    expected = (
        np.asarray(alberta.sparse_init(key, (24, 10), 0.5, method=method)) != 0
    )
    with mock.patch.object(
        permutation, "value_bits", refuse
    ), mock.patch.object(counter, "hash_values", refuse):
      mask = alberta.sparse_mask(key, (24, 10), 0.5, method=method)
    if method == "counter":
      np.testing.assert_array_equal(mask, expected)
    else:
      np.testing.assert_array_equal(expected[~np.asarray(mask)], False)

  def test_conv_layout_is_the_2d_mask_reshaped(self):
    key = jax.random.key(3)
    mask = alberta.sparse_mask(key, (16, 3, 3, 3), 0.5, method="counter")
    self.assertEqual(mask.shape, (16, 3, 3, 3))
    np.testing.assert_array_equal(
        mask.reshape(16, 27),
        alberta.sparse_mask(key, (16, 27), 0.5, method="counter"),
    )

  @parameterized.parameters(0.0, 1.0)
  def test_extremes(self, sparsity):
    key = jax.random.key(0)
    mask = alberta.sparse_mask(key, (4, 6), sparsity)
    np.testing.assert_array_equal(mask, sparsity == 0.0)

  def test_raw_and_typed_keys_agree(self):
    mask = alberta.sparse_mask(jax.random.key(5), (8, 20), 0.5)
    np.testing.assert_array_equal(
        mask, alberta.sparse_mask(jax.random.PRNGKey(5), (8, 20), 0.5)
    )

  def test_empty_shape(self):
    self.assertEqual(
        alberta.sparse_mask(jax.random.key(0), (0, 5)).shape, (0, 5)
    )

  @parameterized.named_parameters(
      ("_sparsity", dict(sparsity=1.5), ValueError, "sparsity"),
      ("_method", dict(method="sorted"), ValueError, "method"),
      ("_rounding", dict(rounding="floor"), ValueError, "rounding"),
      ("_chunk_rows", dict(chunk_rows=0), ValueError, "chunk_rows"),
      ("_key", dict(key=3), TypeError, "key"),
  )
  def test_bad_arguments_are_named(self, kwargs, error, name):
    args = dict(key=jax.random.key(0), shape=(4, 4))
    args.update(kwargs)
    with self.assertRaisesRegex(error, name):
      alberta.sparse_mask(**args)

  def test_sharded_needs_two_dims(self):
    mesh = jax.make_mesh((8,), ("x",))
    with self.assertRaisesRegex(ValueError, "sparse_mask takes a 2-D shape"):
      alberta.sparse_mask(
          jax.random.key(0), (8, 2, 2), sharding=NamedSharding(mesh, P("x"))
      )

  def test_under_jit(self):
    key = jax.random.key(4)
    jitted = jax.jit(lambda k: alberta.sparse_mask(k, (40, 30), 0.8))(key)
    np.testing.assert_array_equal(
        jitted, alberta.sparse_mask(key, (40, 30), 0.8)
    )
    self.assertEqual(jitted.dtype, jnp.bool_)


if __name__ == "__main__":
  absltest.main()
