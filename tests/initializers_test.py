"""Front ends: `alberta.SparseInit` (Haiku) and `alberta.initializers.sparse`.

Proves that inside real layers (Haiku `Linear`, `Conv1D/2D/3D`, `nets.MLP`;
Flax `Dense`, `Conv`; Equinox `Linear`, `Conv2d`) the kernel is the core
matrix laid out as `sparse_init(key, (out, fan_in)).T.reshape(shape)` for the
key the framework hands the initializer, that every output unit has exactly
`num_zeros(fan_in)` zeros, that `fan_in_axes` handles other layouts, that the
parameter dtype is the float32 result cast, and that both front ends reject
bad options when they are constructed, not when first called.
"""

from tests import env  # noqa: F401

import math
import re
import subprocess
import sys
import textwrap

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import alberta

# Every layer below has 5 output units of 27 inputs (Linear 27 -> 5; 3x3 conv
# on 3 channels; 3-tap 1-D conv on 9 channels; 3x3x3 3-D conv on 1 channel),
# so all of them share one compiled core program (~1-2 s of CPU each).
OUT = 5
FAN_IN = 27
SPARSITY = 0.9
K = 24  # num_zeros(27, 0.9) == int(24.3 + 0.5)


def haiku_first_key(rng):
  """The key Haiku's `hk.next_rng_key()` gives first inside `init(rng, ...)`.

  A layer whose `w` is its first parameter (and whose bias initializer draws
  no key) hands its `w_init` exactly this key.
  """
  return hk.transform(hk.next_rng_key).apply({}, rng)


def expected_kernel(
    key, shape, sparsity=SPARSITY, init_type="uniform", **kwargs
):
  """The design's layout rule for an `(..., in, out)` kernel."""
  fan_in = math.prod(shape[:-1])
  matrix = alberta.sparse_init(
      key, (shape[-1], fan_in), sparsity, init_type, **kwargs
  )
  return np.asarray(matrix).T.reshape(shape)


def zeros_per_output(kernel, out_axis=-1) -> np.ndarray:
  kernel = np.moveaxis(np.asarray(kernel, np.float32), out_axis, -1)
  return (kernel.reshape(-1, kernel.shape[-1]) == 0).sum(axis=0)


def assert_same_bits(actual, expected):
  actual = np.ascontiguousarray(actual)
  expected = np.ascontiguousarray(expected)
  np.testing.assert_array_equal(actual.shape, expected.shape)
  assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
  np.testing.assert_array_equal(actual.view(np.uint8), expected.view(np.uint8))


class HaikuTest(parameterized.TestCase):

  @parameterized.named_parameters(
      (
          "_linear",
          lambda init: hk.Linear(OUT, w_init=init),
          (2, FAN_IN),
          (FAN_IN, OUT),
      ),
      (
          "_conv1d",
          lambda init: hk.Conv1D(OUT, 3, w_init=init),
          (1, 8, 9),
          (3, 9, OUT),
      ),
      (
          "_conv2d",
          lambda init: hk.Conv2D(OUT, 3, w_init=init),
          (1, 6, 6, 3),
          (3, 3, 3, OUT),
      ),
      (
          "_conv3d",
          lambda init: hk.Conv3D(OUT, 3, w_init=init),
          (1, 4, 4, 4, 1),
          (3, 3, 3, 1, OUT),
      ),
  )
  def test_kernel_is_the_core_matrix_transposed(
      self, make_layer, x_shape, w_shape
  ):
    rng = jax.random.PRNGKey(17)
    f = hk.transform(lambda x: make_layer(alberta.SparseInit(SPARSITY))(x))
    x = jnp.ones(x_shape)
    params = f.init(rng, x)
    (w,) = [p["w"] for p in params.values()]
    self.assertEqual(w.shape, w_shape)
    self.assertEqual(w.dtype, jnp.float32)
    assert_same_bits(w, expected_kernel(haiku_first_key(rng), w_shape))
    np.testing.assert_array_equal(zeros_per_output(w), K)
    y = f.apply(params, None, x)
    self.assertTrue(np.all(np.isfinite(np.asarray(y))))

  def test_typed_rng_key(self):
    rng = jax.random.key(17)
    f = hk.transform(
        lambda x: hk.Linear(OUT, w_init=alberta.SparseInit(SPARSITY))(x)
    )
    w = f.init(rng, jnp.ones((1, FAN_IN)))["linear"]["w"]
    assert_same_bits(w, expected_kernel(haiku_first_key(rng), (FAN_IN, OUT)))
    # Typed and raw keys with the same words give the same kernel.
    raw = f.init(jax.random.PRNGKey(17), jnp.ones((1, FAN_IN)))["linear"]["w"]
    assert_same_bits(w, raw)

  def test_options_reach_the_core(self):
    rng = jax.random.PRNGKey(3)
    init = alberta.SparseInit(0.72, "normal", rounding="ceil")
    f = hk.transform(lambda x: hk.Linear(OUT, w_init=init)(x))
    w = f.init(rng, jnp.ones((1, FAN_IN)))["linear"]["w"]
    assert_same_bits(
        w,
        expected_kernel(
            haiku_first_key(rng), (FAN_IN, OUT), 0.72, "normal", rounding="ceil"
        ),
    )
    np.testing.assert_array_equal(zeros_per_output(w), math.ceil(0.72 * FAN_IN))

  def test_bfloat16_params_are_the_float32_kernel_cast(self):
    rng = jax.random.PRNGKey(5)
    f = hk.transform(
        lambda x: hk.Linear(OUT, w_init=alberta.SparseInit(SPARSITY))(x)
    )
    w = f.init(rng, jnp.ones((1, FAN_IN), jnp.bfloat16))["linear"]["w"]
    self.assertEqual(w.dtype, jnp.bfloat16)
    expected = expected_kernel(haiku_first_key(rng), (FAN_IN, OUT)).astype(
        jnp.bfloat16
    )
    assert_same_bits(w, expected)
    np.testing.assert_array_equal(zeros_per_output(w), K)

  def test_mlp_every_layer_has_exact_zero_counts(self):
    f = hk.transform(
        lambda x: hk.nets.MLP([OUT, OUT], w_init=alberta.SparseInit(SPARSITY))(
            x
        )
    )
    x = jnp.ones((2, FAN_IN))
    params = f.init(jax.random.PRNGKey(0), x)
    for name, fan_in in (("mlp/~/linear_0", FAN_IN), ("mlp/~/linear_1", OUT)):
      np.testing.assert_array_equal(
          zeros_per_output(params[name]["w"]),
          alberta.num_zeros(fan_in, SPARSITY),
      )
    self.assertEqual(f.apply(params, None, x).shape, (2, OUT))

  def test_fan_in_axes_picks_the_input_axes(self):
    # A (3, 4, 5) parameter whose output units are axis 1: each unit's 15
    # inputs are the (3, 5) slice, laid out as the core's row in C order.
    rng = jax.random.PRNGKey(9)
    init = alberta.SparseInit(0.5, fan_in_axes=(0, 2))
    f = hk.transform(lambda: hk.get_parameter("w", (3, 4, 5), init=init))
    w = np.asarray(f.init(rng)["~"]["w"])
    matrix = np.asarray(alberta.sparse_init(haiku_first_key(rng), (4, 15), 0.5))
    expected = np.moveaxis(matrix.reshape(4, 3, 5), 0, 1)
    assert_same_bits(w, expected)
    np.testing.assert_array_equal(
        zeros_per_output(w, out_axis=1), alberta.num_zeros(15, 0.5)
    )

  @parameterized.named_parameters(("_positive", (1,)), ("_negative", (-1,)))
  def test_fan_in_axes_for_out_in_layout_is_the_core_matrix(self, fan_in_axes):
    rng = jax.random.PRNGKey(9)
    init = alberta.SparseInit(SPARSITY, fan_in_axes=fan_in_axes)
    f = hk.transform(lambda: hk.get_parameter("w", (OUT, FAN_IN), init=init))
    w = f.init(rng)["~"]["w"]
    assert_same_bits(
        w, alberta.sparse_init(haiku_first_key(rng), (OUT, FAN_IN), SPARSITY)
    )

  def test_fan_in_axes_out_of_range_is_rejected_at_call(self):
    init = alberta.SparseInit(SPARSITY, fan_in_axes=(2,))
    f = hk.transform(lambda: hk.get_parameter("w", (OUT, FAN_IN), init=init))
    with self.assertRaisesRegex(ValueError, r"fan_in_axes.*\(2,\)"):
      f.init(jax.random.PRNGKey(0))


class FlaxTest(parameterized.TestCase):

  def recording(self, init):
    """Wraps `init` to record the key Flax hands it."""
    self.keys = []

    def wrapped(key, shape, dtype=jnp.float32):
      self.keys.append(key)
      return init(key, shape, dtype)

    return wrapped

  def test_dense_kernel_is_the_core_matrix_transposed(self):
    layer = nn.Dense(
        OUT, kernel_init=self.recording(alberta.initializers.sparse(SPARSITY))
    )
    x = jnp.ones((2, FAN_IN))
    params = layer.init(jax.random.PRNGKey(1), x)
    kernel = params["params"]["kernel"]
    (key,) = self.keys
    assert_same_bits(kernel, expected_kernel(key, (FAN_IN, OUT)))
    np.testing.assert_array_equal(zeros_per_output(kernel), K)
    self.assertEqual(layer.apply(params, x).shape, (2, OUT))

  def test_conv_kernel_has_exact_zero_counts(self):
    layer = nn.Conv(
        OUT,
        (3, 3),
        kernel_init=self.recording(alberta.initializers.sparse(SPARSITY)),
    )
    x = jnp.ones((1, 6, 6, 3))
    params = layer.init(jax.random.PRNGKey(2), x)
    kernel = params["params"]["kernel"]
    self.assertEqual(kernel.shape, (3, 3, 3, OUT))
    assert_same_bits(kernel, expected_kernel(self.keys[0], (3, 3, 3, OUT)))
    np.testing.assert_array_equal(zeros_per_output(kernel), K)
    self.assertEqual(layer.apply(params, x).shape, (1, 6, 6, OUT))

  def test_bfloat16_param_dtype(self):
    layer = nn.Dense(
        OUT,
        param_dtype=jnp.bfloat16,
        kernel_init=self.recording(alberta.initializers.sparse(SPARSITY)),
    )
    kernel = layer.init(jax.random.PRNGKey(5), jnp.ones((1, FAN_IN)))["params"][
        "kernel"
    ]
    self.assertEqual(kernel.dtype, jnp.bfloat16)
    assert_same_bits(
        kernel,
        expected_kernel(self.keys[0], (FAN_IN, OUT)).astype(jnp.bfloat16),
    )

  def test_same_key_same_kernel_as_haiku(self):
    # The two front ends share one layout rule: given the same key they give
    # the same kernel (Haiku's key is the one `hk.next_rng_key` hands it).
    rng = jax.random.PRNGKey(12)
    f = hk.transform(
        lambda: hk.get_parameter(
            "w", (3, 3, 3, OUT), init=alberta.SparseInit(SPARSITY)
        )
    )
    haiku_w = f.init(rng)["~"]["w"]
    jax_w = alberta.initializers.sparse(SPARSITY)(
        haiku_first_key(rng), (3, 3, 3, OUT)
    )
    assert_same_bits(haiku_w, jax_w)


class EquinoxTest(parameterized.TestCase):

  def test_linear_weight_replaced_with_sparse_init(self):
    key, wkey = jax.random.split(jax.random.PRNGKey(0))
    linear = eqx.nn.Linear(FAN_IN, OUT, key=key)
    self.assertEqual(linear.weight.shape, (OUT, FAN_IN))
    weight = alberta.sparse_init(wkey, linear.weight.shape, SPARSITY)
    linear = eqx.tree_at(lambda m: m.weight, linear, weight)
    # Equinox weights are (out, in): one output unit per row.
    np.testing.assert_array_equal(
        zeros_per_output(linear.weight, out_axis=0), K
    )
    x = jnp.arange(FAN_IN, dtype=jnp.float32)
    np.testing.assert_allclose(
        np.asarray(linear(x)), np.asarray(weight @ x + linear.bias), rtol=1e-6
    )

  def test_initializer_with_fan_in_axes_is_sparse_init_on_out_in(self):
    key = jax.random.PRNGKey(4)
    init = alberta.initializers.sparse(SPARSITY, fan_in_axes=(1,))
    assert_same_bits(
        init(key, (OUT, FAN_IN)),
        alberta.sparse_init(key, (OUT, FAN_IN), SPARSITY),
    )

  def test_conv2d_weight_is_the_pytorch_layout(self):
    key, wkey = jax.random.split(jax.random.PRNGKey(1))
    conv = eqx.nn.Conv2d(3, OUT, 3, key=key)
    self.assertEqual(conv.weight.shape, (OUT, 3, 3, 3))
    conv = eqx.tree_at(
        lambda m: m.weight,
        conv,
        alberta.sparse_init(wkey, conv.weight.shape, SPARSITY),
    )
    np.testing.assert_array_equal(zeros_per_output(conv.weight, out_axis=0), K)
    y = conv(jnp.ones((3, 6, 6)))
    self.assertEqual(y.shape, (OUT, 4, 4))
    self.assertTrue(np.all(np.isfinite(np.asarray(y))))


def _make_haiku(**kwargs):
  return alberta.SparseInit(**kwargs)


def _make_jax(**kwargs):
  return alberta.initializers.sparse(**kwargs)


class ConstructionTest(parameterized.TestCase):
  """Bad options fail at construction, with the argument and value named.

  Construction happens outside any `hk.transform` and no key exists yet, so an
  error here cannot come from a later call.
  """

  @parameterized.product(
      make=(_make_haiku, _make_jax),
      bad=(
          dict(name="sparsity", value=float("nan"), error=ValueError),
          dict(name="sparsity", value=float("inf"), error=ValueError),
          dict(name="sparsity", value=-0.1, error=ValueError),
          dict(name="sparsity", value=1.5, error=ValueError),
          dict(name="sparsity", value="0.9", error=TypeError),
          dict(name="sparsity", value=True, error=TypeError),
          dict(name="init_type", value="gaussian", error=ValueError),
          dict(name="method", value="sort", error=ValueError),
          dict(name="rounding", value="floor", error=ValueError),
          dict(name="fan_in_axes", value="01", error=TypeError),
          dict(name="fan_in_axes", value=(0, 0), error=ValueError),
          dict(name="fan_in_axes", value=(), error=ValueError),
          dict(name="fan_in_axes", value=(0.5,), error=TypeError),
          dict(name="fan_in_axes", value=3, error=TypeError),
      ),
  )
  def test_bad_option_fails_at_construction(self, make, bad):
    pattern = rf"{bad['name']}.*{re.escape(repr(bad['value']))}"
    with self.assertRaisesRegex(bad["error"], pattern):
      make(**{bad["name"]: bad["value"]})

  @parameterized.named_parameters(("_haiku", _make_haiku), ("_jax", _make_jax))
  def test_good_options_construct(self, make):
    for method in ("permutation", "counter"):
      for rounding in ("nearest", "ceil"):
        make(
            sparsity=0,
            init_type="normal",
            method=method,
            rounding=rounding,
            fan_in_axes=[0, -2],
        )

  def test_bad_call_arguments_are_rejected(self):
    init = alberta.initializers.sparse(SPARSITY)
    with self.assertRaisesRegex(TypeError, "dtype.*int32"):
      init(jax.random.PRNGKey(0), (FAN_IN, OUT), jnp.int32)
    with self.assertRaisesRegex(ValueError, r"shape.*\(5,\)"):
      init(jax.random.PRNGKey(0), (5,))
    with self.assertRaisesRegex(TypeError, "key"):
      init(0, (FAN_IN, OUT))


class LazyImportTest(absltest.TestCase):

  def test_import_alberta_leaves_heavy_dependencies_unimported(self):
    # A fresh interpreter: this process has imported them all already.
    script = textwrap.dedent("""
        import sys
        import alberta
        heavy = ("haiku", "orbax", "chex", "jax.experimental.sparse")
        print(sorted(m for m in heavy if m in sys.modules))
        names = set(dir(alberta))
        print(sorted(n for n in alberta.__all__ if n not in names))
        print(alberta.SparseInit.__name__, "haiku" in sys.modules)
        print(alberta.to_bcoo.__name__,
              "jax.experimental.sparse" in sys.modules)
        try:
          alberta.no_such_name
        except AttributeError as e:
          print("AttributeError", e)
        """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    self.assertEqual(out[:4], ["[]", "[]", "SparseInit True", "to_bcoo True"])
    self.assertIn("no_such_name", out[4])

  def test_lazy_attributes_are_the_defining_modules_objects(self):
    from alberta._src import ell  # pylint: disable=g-import-not-at-top
    from alberta._src import haiku_init  # pylint: disable=g-import-not-at-top

    self.assertIs(alberta.SparseInit, haiku_init.SparseInit)
    self.assertIs(alberta.sparse_init_ell, ell.sparse_init_ell)
    for name in alberta.__all__:
      self.assertIsNotNone(getattr(alberta, name), msg=name)


class ReprTest(parameterized.TestCase):

  @parameterized.parameters(
      ("alberta.SparseInit(0.9, 'uniform')",),
      (
          (
              "alberta.SparseInit(0.5, 'normal', fan_in_axes=(0, 1), "
              "method='counter', rounding='ceil')"
          ),
      ),
      ("alberta.initializers.sparse(0.9, 'uniform')",),
      ("alberta.initializers.sparse(0.8, 'normal', method='counter')",),
  )
  def test_repr_is_the_call_that_rebuilds_it(self, text):
    init = eval(text, {"alberta": alberta})  # pylint: disable=eval-used
    self.assertEqual(repr(init), text)

  def test_sparse_is_a_jax_nn_initializer(self):
    init = alberta.initializers.sparse(0.5)
    self.assertIsInstance(init, jax.nn.initializers.Initializer)
    self.assertIs(
        alberta.initializers.Initializer, jax.nn.initializers.Initializer
    )


if __name__ == "__main__":
  absltest.main()
