"""`keep_zeros`: a sparse initialization's zeros stay zero through training.

100 jitted steps of Adam on a Haiku MLP (keep_zeros before Adam) and on a
Flax CNN (after Adam): every kernel zero is still exactly zero, while the
kernels' other weights and the biases (which start at zero) have moved. The
masks are packed bits in the state; the selection is `sparsify`'s.
"""

from tests import env  # noqa: F401

import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

import alberta

_KEY = jax.random.key(11)
_STEPS = 100


def _train(loss, params, tx, batches):
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(loss)(params, *batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for batch in batches:
    params, state = step(params, state, batch)
  return params, state


def _batches(x_shape, y_dim, seed):
  keys = jax.random.split(jax.random.key(seed), _STEPS)
  return [
      (
          jax.random.normal(k, x_shape),
          jax.random.normal(jax.random.fold_in(k, 1), (x_shape[0], y_dim)),
      )
      for k in keys
  ]


class KeepZerosTest(parameterized.TestCase):

  def assert_zeros_kept_and_rest_moved(self, before, after, kernels, biases):
    """Kernel zeros are still zero; kept weights and zero biases moved.

    At high sparsity some units reach the output through no kept weight (a
    dead end of the sparse graph: at 0.9, a 3-unit output layer on 64 inputs
    keeps at most 18 of them) and never get a gradient; the shapes and
    sparsities here leave none, so nearly everything else must move.
    """
    flat = jax.tree_util.tree_flatten_with_path(before)[0]
    for (path, w0), w1 in zip(flat, jax.tree.leaves(after), strict=True):
      name = jax.tree_util.keystr(path)
      w0, w1 = np.asarray(w0), np.asarray(w1)
      if any(name.endswith(k) for k in kernels):
        zero = w0 == 0
        self.assertGreater(zero.mean(), 0.4, name)
        np.testing.assert_array_equal(w1[zero], 0, err_msg=name)
        self.assertGreater((w1[~zero] != w0[~zero]).mean(), 0.95, name)
      elif any(name.endswith(b) for b in biases):
        np.testing.assert_array_equal(w0, 0, err_msg=name)
        self.assertGreater((w1 != 0).mean(), 0.95, name)
    last_bias = np.asarray(jax.tree.leaves(after)[-2])
    self.assertTrue((last_bias != 0).all(), last_bias)

  def test_haiku_mlp_before_adam(self):
    def forward(x):
      # tanh: no unit is dead on every batch, so every kept weight gets a
      # gradient.
      return hk.nets.MLP([64, 64, 32], activation=jnp.tanh)(x)

    net = hk.without_apply_rng(hk.transform(forward))
    params = alberta.sparsify(_KEY, net.init(_KEY, jnp.ones([1, 16])), 0.8)

    def loss(params, x, y):
      return jnp.mean((net.apply(params, x) - y) ** 2)

    tx = optax.chain(alberta.keep_zeros(), optax.adam(1e-2))
    trained, _ = _train(loss, params, tx, _batches((32, 16), 32, 0))
    self.assert_zeros_kept_and_rest_moved(params, trained, ["['w']"], ["['b']"])

  def test_flax_cnn_after_adamw(self):
    class CNN(nn.Module):

      @nn.compact
      def __call__(self, x):
        x = jnp.tanh(nn.Conv(8, (3, 3))(x))
        x = jnp.tanh(nn.Conv(8, (3, 3))(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))

    model = CNN()
    params = model.init(_KEY, jnp.ones([1, 6, 6, 2]))["params"]
    params = alberta.sparsify(_KEY, params, 0.8, method="counter")

    def loss(params, x, y):
      return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

    # Weight decay too: a zero weight decays to zero.
    tx = optax.chain(optax.adamw(1e-2, weight_decay=1e-2), alberta.keep_zeros())
    trained, _ = _train(loss, params, tx, _batches((16, 6, 6, 2), 3, 1))
    self.assert_zeros_kept_and_rest_moved(
        params, trained, ["['kernel']"], ["['bias']"]
    )

  def test_without_it_the_zeros_fill_in(self):
    # The paper's method: init-only; the first update fills the zeros in.
    params = alberta.sparsify(_KEY, {"w": jnp.ones((8, 4))}, 0.5)
    tx = optax.adam(1e-2)
    grads = {"w": jnp.ones((8, 4))}
    updates, _ = tx.update(grads, tx.init(params), params)
    self.assertTrue((optax.apply_updates(params, updates)["w"] != 0).all())

  def test_masks_are_packed_bits_of_the_selected_kernels(self):
    params = {
        "layer": {
            "w": alberta.sparse_init(_KEY, (20, 7), 0.5).T,
            "b": jnp.zeros(20),
        }
    }
    state = alberta.keep_zeros().init(params)
    packed = state.masks["layer"]["w"]
    self.assertEqual(packed.dtype, jnp.uint8)
    self.assertEqual(packed.shape, (math_ceil_div(7 * 20, 8),))
    np.testing.assert_array_equal(
        np.unpackbits(np.asarray(packed), count=140).reshape(7, 20),
        np.asarray(params["layer"]["w"]) != 0,
    )
    self.assertEqual(state.masks["layer"]["b"].shape, (0,))

  def test_include_selects_as_sparsify_does(self):
    params = {
        "a": {"w": jnp.zeros((3, 4))},
        "b": {"w": jnp.zeros((3, 4))},
        "proj": jnp.zeros((3, 4)),
    }
    tx = alberta.keep_zeros(
        include=lambda path, leaf: (
            "in_out" if path == "proj" else path != "b/w" and None
        )
    )
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params))
    np.testing.assert_array_equal(updates["a"]["w"], 0)
    np.testing.assert_array_equal(updates["proj"], 0)
    np.testing.assert_array_equal(updates["b"]["w"], 1)

  def test_bad_include_and_mismatched_updates_are_named(self):
    with self.assertRaisesRegex(TypeError, "include"):
      alberta.keep_zeros(include=0.5)
    tx = alberta.keep_zeros()
    state = tx.init({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})
    with self.assertRaisesRegex(ValueError, "keep_zeros"):
      tx.update({"w": jnp.ones((2, 2))}, state)


def math_ceil_div(a, b):
  return -(-a // b)


if __name__ == "__main__":
  absltest.main()
