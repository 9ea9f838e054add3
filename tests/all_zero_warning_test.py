"""`k == fan_in` (all of every unit's inputs zeroed) warns once a call or layer.

Sparsity 0.9 zeroes all of fan_in 5 with the default rounding
(`int(4.5 + 0.5) == 5`) and all of fan_in 9 with "ceil": the matrix is all
zeros, as the reference's rule makes it, and one `UserWarning` naming the shape,
the sparsity and the rounding says so, pointing at the caller's line; no
other call warns.
"""

from tests import env  # noqa: F401

import warnings

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import alberta
from tests import test_utils
from third_party.alberta_framework import initializers as reference

_KEY = jax.random.key(3)


def _caught(fn):
  """`fn()`'s result and the UserWarnings it raised."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = fn()
  return out, [w for w in caught if issubclass(w.category, UserWarning)]


class AllZeroWarningTest(parameterized.TestCase):

  @parameterized.parameters(
      ((7, 5), 0.9, "nearest"),
      ((7, 9), 0.9, "ceil"),
      ((3, 2, 2), 0.9, "nearest"),
      ((4, 6), 1.0, "ceil"),
  )
  def test_sparse_init_warns_once_naming_shape_sparsity_rounding(
      self, shape, sparsity, rounding
  ):
    out, caught = _caught(
        lambda: alberta.sparse_init(_KEY, shape, sparsity, rounding=rounding)
    )
    self.assertLen(caught, 1)
    message = str(caught[0].message)
    self.assertIn(f"shape {shape}", message)
    self.assertIn(f"sparsity={sparsity}", message)
    self.assertIn(f"rounding={rounding!r}", message)
    # It points at this line's caller, not into the library.
    self.assertEqual(caught[0].filename, __file__)
    np.testing.assert_array_equal(out, 0)

  def test_the_matrix_is_the_references(self):
    out, caught = _caught(lambda: alberta.sparse_init(_KEY, (6, 5), 0.9))
    self.assertLen(caught, 1)
    test_utils.assert_same_bits(out, reference.sparse_init(_KEY, (6, 5), 0.9))

  @parameterized.parameters(
      ((7, 6), 0.9, "nearest"),
      ((7, 10), 0.9, "ceil"),
      ((0, 5), 0.9, "nearest"),
      ((7, 0), 0.9, "nearest"),
  )
  def test_no_warning_otherwise(self, shape, sparsity, rounding):
    _, caught = _caught(
        lambda: alberta.sparse_init(_KEY, shape, sparsity, rounding=rounding)
    )
    self.assertEmpty(caught)

  def test_chunked_and_sharded_warn_once_per_call(self):
    _, caught = _caught(
        lambda: alberta.sparse_init(_KEY, (64, 5), chunk_rows=3)
    )
    self.assertLen(caught, 1)
    sharding = NamedSharding(jax.make_mesh((8,), ("x",)), P("x"))
    _, caught = _caught(
        lambda: alberta.sharded_sparse_init(
            _KEY, (64, 5), sharding=sharding, chunk_rows=3
        )
    )
    self.assertLen(caught, 1)
    _, caught = _caught(lambda: alberta.sparse_mask(_KEY, (64, 5)))
    self.assertLen(caught, 1)

  def test_sparse_init_layer_warns_once_per_layer(self):
    def forward(x):
      x = hk.Linear(5, w_init=alberta.SparseInit(0.9))(x)  # fan_in 5: warns
      x = hk.Linear(6, w_init=alberta.SparseInit(0.9))(x)  # fan_in 5: warns
      return hk.Linear(2, w_init=alberta.SparseInit(0.9))(x)  # fan_in 6

    net = hk.transform(forward)
    params, caught = _caught(lambda: net.init(_KEY, jnp.ones([1, 5])))
    self.assertLen(caught, 2)
    # Through Haiku's layers, at the line that called init.
    self.assertEqual(caught[0].filename, __file__)
    self.assertIn("kernel of shape (5, 5)", str(caught[0].message))
    self.assertIn("kernel of shape (5, 6)", str(caught[1].message))
    np.testing.assert_array_equal(params["linear"]["w"], 0)

  def test_flax_style_initializer_names_the_kernel_shape(self):
    init = alberta.initializers.sparse(0.9, rounding="ceil")
    _, caught = _caught(lambda: init(_KEY, (3, 3, 1, 4)))  # fan_in 9
    self.assertLen(caught, 1)
    self.assertIn("kernel of shape (3, 3, 1, 4)", str(caught[0].message))
    self.assertIn("rounding='ceil'", str(caught[0].message))


if __name__ == "__main__":
  absltest.main()
