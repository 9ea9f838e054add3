"""Every public entry point asserts what it returns with chex, for free.

That each entry point's result passes through chex's shape and dtype asserts
(a spy on `chex.assert_shape` sees the returned arrays); that the asserts
leave nothing in a jitted program; and, in chex's own `variants`, that
`sparse_init` gives the same matrix eagerly, under `jit`, and per device under
`pmap`.
"""

from tests import env  # noqa: F401

from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import NamedSharding, PartitionSpec as P

import alberta

_SHAPE = (16, 12)
_KEY = jax.random.key(3)


def _mesh_rows():
  return NamedSharding(jax.make_mesh((4,), ("rows",)), P("rows"))


# name -> (call, the shapes chex must be asked about).
_ENTRY_POINTS = {
    "sparse_init": (lambda: alberta.sparse_init(_KEY, _SHAPE), [_SHAPE]),
    "sharded_sparse_init": (
        lambda: alberta.sharded_sparse_init(
            _KEY, _SHAPE, sharding=_mesh_rows()
        ),
        [_SHAPE],
    ),
    "pmap_sparse_init": (
        lambda: alberta.pmap_sparse_init(
            _KEY, _SHAPE, devices=jax.devices()[:4]
        ),
        [(4, 4, 12)],
    ),
    "sparse_init_ell": (
        lambda: alberta.sparse_init_ell(_KEY, _SHAPE),
        [(16, 1)],
    ),
    "sharded_sparse_init_ell": (
        lambda: alberta.sharded_sparse_init_ell(
            _KEY, _SHAPE, sharding=_mesh_rows()
        ),
        [(16, 1)],
    ),
    "sparse_mask": (lambda: alberta.sparse_mask(_KEY, _SHAPE), [_SHAPE]),
    "SparseInit": (
        lambda: alberta.SparseInit(0.9)((3, 4, 5), jnp.float32),
        [(3, 4, 5)],
    ),
    "initializers.sparse": (
        lambda: alberta.initializers.sparse(0.9)(_KEY, (12, 8)),
        [(12, 8)],
    ),
}


class ReturnsAreAssertedTest(parameterized.TestCase):

  @parameterized.named_parameters(
      (n.replace(".", "_"), n) for n in _ENTRY_POINTS
  )
  def test_result_passes_chex_assert_shape(self, name):
    call, shapes = _ENTRY_POINTS[name]
    seen = []
    real = chex.assert_shape

    def spy(inputs, expected_shapes, *args, **kwargs):
      seen.append(tuple(expected_shapes))
      return real(inputs, expected_shapes, *args, **kwargs)

    with mock.patch.object(chex, "assert_shape", spy):
      if name == "SparseInit":
        import haiku as hk  # pylint: disable=g-import-not-at-top

        result = hk.transform(call).init(_KEY)
      else:
        result = call()
    for shape in shapes:
      self.assertIn(shape, seen)
    for array in jax.tree.leaves(result):
      self.assertIn(tuple(array.shape), seen)

  def test_to_dense_result_passes_chex_assert_shape(self):
    values, indices = alberta.sparse_init_ell(_KEY, _SHAPE)
    with mock.patch.object(
        chex, "assert_shape", wraps=chex.assert_shape
    ) as spy:
      alberta.to_dense(values, indices, _SHAPE)
    self.assertEqual(spy.call_args.args[1], _SHAPE)

  def test_a_wrong_dtype_would_be_caught(self):
    with self.assertRaisesRegex(AssertionError, "assert_type"):
      alberta._src.contracts.returns(
          jnp.zeros(_SHAPE, jnp.float16), _SHAPE, jnp.float32
      )

  def test_asserts_add_nothing_to_a_jitted_program(self):
    text = str(jax.make_jaxpr(lambda k: alberta.sparse_mask(k, _SHAPE))(_KEY))
    self.assertNotIn("callback", text)


class VariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_sparse_init_is_the_same_with_and_without_jit(self):
    fn = self.variant(lambda key: alberta.sparse_init(key, _SHAPE, 0.75))
    chex.assert_trees_all_equal(
        fn(_KEY), alberta.sparse_init(_KEY, _SHAPE, 0.75)
    )

  @chex.variants(with_pmap=True)
  def test_sparse_init_per_device_under_pmap_is_vmap_over_keys(self):
    keys = jax.random.split(_KEY, 4)
    fn = self.variant(
        lambda key: alberta.sparse_init(key, _SHAPE, 0.75),
        n_devices=4,
        broadcast_args_to_devices=False,
        reduce_fn=None,
    )
    expected = jax.vmap(lambda key: alberta.sparse_init(key, _SHAPE, 0.75))(
        keys
    )
    chex.assert_trees_all_equal(np.asarray(fn(keys)), np.asarray(expected))


if __name__ == "__main__":
  absltest.main()
