"""`sparsify`: every kernel of a model at once, the rest untouched.

For Haiku, Flax linen, Flax NNX and Equinox models: every selected kernel has
exactly `k` zeros per output unit along its framework's axes, every other leaf
is returned as the same object; a leaf's numbers depend on the key and its
path only (not on the tree's order or on the selection); `include` selects,
sets a per-leaf sparsity or a layout; "erk" matches a hand-computed
Erdős–Rényi-kernel allocation.
"""

from tests import env  # noqa: F401

import math
import warnings
from fractions import Fraction

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx

import alberta
from alberta._src import networks

_KEY = jax.random.key(7)


def _zeros_per_unit(kernel, layout):
  """Zeros of each output unit: the last axis ("in_out") or the first."""
  zero = np.asarray(kernel).astype(np.float32) == 0
  if layout == "in_out":
    return zero.reshape(-1, zero.shape[-1]).sum(axis=0)
  return zero.reshape(zero.shape[0], -1).sum(axis=1)


def _fan_in(shape, layout):
  return math.prod(shape[:-1]) if layout == "in_out" else math.prod(shape[1:])


def _haiku_params():
  def forward(tokens, images):
    e = hk.Embed(12, 8)(tokens)
    x = hk.Conv2D(6, 3)(images)
    x = hk.LayerNorm(-1, True, True)(x)
    x = hk.Linear(16)(hk.Flatten()(x))
    return hk.Linear(4)(jnp.concatenate([x, e.reshape(x.shape[0], -1)], -1))

  return hk.transform(forward).init(
      _KEY, jnp.zeros([2, 3], jnp.int32), jnp.ones([2, 5, 5, 3])
  )


class _FlaxCNN(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Conv(16, (3, 3))(x)
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


class _EqxModel(eqx.Module):
  embed: eqx.nn.Embedding
  conv: eqx.nn.Conv2d
  mlp: eqx.nn.MLP
  norm: eqx.nn.LayerNorm

  def __init__(self, key):
    k1, k2, k3 = jax.random.split(key, 3)
    self.embed = eqx.nn.Embedding(12, 8, key=k1)
    self.conv = eqx.nn.Conv2d(3, 6, 3, key=k2)
    self.mlp = eqx.nn.MLP(20, 4, 32, 2, key=k3)
    self.norm = eqx.nn.LayerNorm(32)


def _check(test, before, after, sparsity, kernels):
  """`kernels` (path -> layout) have exact k; every other leaf is untouched."""
  flat_before = networks.flatten(before)
  flat_after = networks.flatten(after)
  test.assertEqual(flat_before.paths, flat_after.paths)
  seen = set()
  for path, old, new in zip(
      flat_before.paths, flat_before.leaves, flat_after.leaves, strict=True
  ):
    if path in kernels:
      layout = kernels[path]
      seen.add(path)
      test.assertEqual(new.shape, old.shape, path)
      test.assertEqual(new.dtype, old.dtype, path)
      k = alberta.num_zeros(_fan_in(old.shape, layout), sparsity)
      np.testing.assert_array_equal(
          _zeros_per_unit(new, layout), k, err_msg=path
      )
    else:
      test.assertIs(new, old, path)
  test.assertEqual(seen, set(kernels))


class SelectionTest(parameterized.TestCase):

  def test_haiku_kernels_are_w(self):
    params = _haiku_params()
    out = alberta.sparsify(_KEY, params, 0.8)
    _check(
        self,
        params,
        out,
        0.8,
        {"conv2_d/w": "in_out", "linear/w": "in_out", "linear_1/w": "in_out"},
    )
    # The table, the norm and the biases are the same objects.
    self.assertIs(out["embed"]["embeddings"], params["embed"]["embeddings"])

  def test_flax_linen_kernels_and_not_batch_stats(self):
    variables = _FlaxCNN().init(_KEY, jnp.ones([1, 8, 8, 1]))
    out = alberta.sparsify(_KEY, variables, 0.7)
    _check(
        self,
        variables,
        out,
        0.7,
        {
            "params/Conv_0/kernel": "in_out",
            "params/Conv_1/kernel": "in_out",
            "params/Dense_0/kernel": "in_out",
        },
    )

  def test_flax_nnx_state(self):
    class Net(nnx.Module):

      def __init__(self, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.linear = nnx.Linear(8, 4, rngs=rngs)
        self.embed = nnx.Embed(10, 4, rngs=rngs)

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    out = alberta.sparsify(_KEY, state, 0.6)
    _check(
        self,
        state,
        out,
        0.6,
        {"conv/kernel": "in_out", "linear/kernel": "in_out"},
    )
    model = nnx.merge(graphdef, out)
    np.testing.assert_array_equal(
        _zeros_per_unit(model.linear.kernel[...], "in_out"),
        alberta.num_zeros(8, 0.6),
    )

  def test_equinox_module_weights_are_out_in_and_embedding_is_left(self):
    model = _EqxModel(_KEY)
    out = alberta.sparsify(_KEY, model, 0.9)
    self.assertIsInstance(out, _EqxModel)
    _check(
        self,
        model,
        out,
        0.9,
        {
            "conv/weight": "out_in",
            "mlp/layers/0/weight": "out_in",
            "mlp/layers/1/weight": "out_in",
            "mlp/layers/2/weight": "out_in",
        },
    )
    self.assertIs(out.embed.weight, model.embed.weight)
    self.assertIs(out.mlp.activation, model.mlp.activation)
    # The same through eqx.partition: arrays only, the rest recombined.
    arrays, static = eqx.partition(model, eqx.is_array)
    again = eqx.combine(alberta.sparsify(_KEY, arrays, 0.9), static)
    np.testing.assert_array_equal(again.conv.weight, out.conv.weight)

  def test_pytorch_style_state_dict(self):
    state = {
        "fc1": {"weight": jnp.ones((8, 20)), "bias": jnp.ones(8)},
        "fc2": {"weight": jnp.ones((4, 8)), "bias": jnp.ones(4)},
    }
    out = alberta.sparsify(_KEY, state, 0.5)
    _check(
        self, state, out, 0.5, {"fc1/weight": "out_in", "fc2/weight": "out_in"}
    )

  def test_integer_and_rank_one_leaves_named_like_kernels_are_left(self):
    tree = {
        "w": jnp.ones((4, 4), jnp.int32),
        "kernel": jnp.ones(4),
        "weight": jnp.ones((3, 3), jnp.float32),
    }
    out = alberta.sparsify(_KEY, tree, 0.5)
    _check(self, tree, out, 0.5, {"weight": "out_in"})


class KeysTest(parameterized.TestCase):

  def test_a_leaf_equals_sparse_init_under_its_path_key(self):
    params = _haiku_params()
    out = alberta.sparsify(_KEY, params, 0.8, method="counter")
    w = params["linear"]["w"]
    expected = alberta.initializers.sparse(0.8, method="counter")(
        networks.leaf_key(_KEY, "linear/w"), w.shape
    )
    np.testing.assert_array_equal(out["linear"]["w"], expected)
    model = _EqxModel(_KEY)
    weight = model.conv.weight
    np.testing.assert_array_equal(
        alberta.sparsify(_KEY, model, 0.8).conv.weight,
        alberta.sparse_init(
            networks.leaf_key(_KEY, "conv/weight"), weight.shape, 0.8
        ),
    )

  def test_independent_of_tree_order(self):
    a = {"w": jnp.ones((10, 6))}
    b = {"w": jnp.ones((12, 5))}
    first = alberta.sparsify(_KEY, {"a": a, "b": b}, 0.5)
    second = alberta.sparsify(_KEY, {"b": b, "a": a}, 0.5)
    for name in ("a", "b"):
      np.testing.assert_array_equal(first[name]["w"], second[name]["w"])
    # A list in another order moves paths: same path, same leaf.
    listed = alberta.sparsify(_KEY, [a, b], 0.5)
    np.testing.assert_array_equal(
        listed[1]["w"], alberta.sparsify(_KEY, [b, b], 0.5)[1]["w"]
    )

  def test_independent_of_the_selection(self):
    params = _haiku_params()
    everything = alberta.sparsify(_KEY, params, 0.8)
    one = alberta.sparsify(
        _KEY, params, 0.8, include=lambda path, leaf: path == "linear_1/w"
    )
    np.testing.assert_array_equal(
        one["linear_1"]["w"], everything["linear_1"]["w"]
    )
    self.assertIs(one["linear"]["w"], params["linear"]["w"])

  def test_distinct_paths_distinct_kernels(self):
    tree = {"a": {"w": jnp.ones((16, 16))}, "b": {"w": jnp.ones((16, 16))}}
    out = alberta.sparsify(_KEY, tree, 0.5)
    self.assertFalse(np.array_equal(out["a"]["w"], out["b"]["w"]))

  def test_another_key_other_kernels(self):
    tree = {"w": jnp.ones((16, 16))}
    self.assertFalse(
        np.array_equal(
            alberta.sparsify(jax.random.key(1), tree)["w"],
            alberta.sparsify(jax.random.key(2), tree)["w"],
        )
    )

  def test_jit_equals_eager_and_dtype_and_sharding_are_kept(self):
    tree = {"w": jnp.ones((9, 7), jnp.bfloat16), "b": jnp.zeros(7)}
    eager = alberta.sparsify(_KEY, tree, 0.6)
    jitted = jax.jit(lambda k, t: alberta.sparsify(k, t, 0.6))(_KEY, tree)
    self.assertEqual(eager["w"].dtype, jnp.bfloat16)
    np.testing.assert_array_equal(jitted["w"], eager["w"])
    mesh = jax.make_mesh((8,), ("x",))
    sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, "x")
    )
    placed = {"w": jax.device_put(jnp.ones((4, 16)), sharding)}
    self.assertEqual(
        alberta.sparsify(_KEY, placed, 0.5)["w"].sharding, sharding
    )


class IncludeTest(parameterized.TestCase):

  def test_per_leaf_sparsity(self):
    params = _haiku_params()
    out = alberta.sparsify(
        _KEY,
        params,
        0.8,
        include=lambda path, leaf: 0.25 if path == "linear/w" else None,
    )
    w = params["linear"]["w"]
    np.testing.assert_array_equal(
        _zeros_per_unit(out["linear"]["w"], "in_out"),
        alberta.num_zeros(_fan_in(w.shape, "in_out"), 0.25),
    )
    np.testing.assert_array_equal(
        _zeros_per_unit(out["linear_1"]["w"], "in_out"),
        alberta.num_zeros(params["linear_1"]["w"].shape[0], 0.8),
    )

  def test_a_sparsity_for_a_layer_leaves_its_bias_alone(self):
    params = _haiku_params()
    out = alberta.sparsify(
        _KEY,
        params,
        0.8,
        include=lambda path, leaf: 0.5 if path.startswith("linear/") else None,
    )
    self.assertIs(out["linear"]["b"], params["linear"]["b"])
    np.testing.assert_array_equal(
        _zeros_per_unit(out["linear"]["w"], "in_out"),
        alberta.num_zeros(params["linear"]["w"].shape[0], 0.5),
    )

  def test_false_leaves_a_kernel_alone(self):
    params = _haiku_params()
    out = alberta.sparsify(
        _KEY, params, include=lambda path, leaf: "conv" not in path and None
    )
    self.assertIs(out["conv2_d"]["w"], params["conv2_d"]["w"])
    self.assertIsNot(out["linear"]["w"], params["linear"]["w"])

  @parameterized.named_parameters(
      ("_out_in", "out_in", "out_in"),
      ("_in_out", "in_out", "in_out"),
      ("_axes", (1,), "out_in"),
      ("_pair", (0.5, "out_in"), "out_in"),
  )
  def test_layout_of_an_unnamed_leaf(self, answer, layout):
    tree = {"proj": jnp.ones((6, 10)), "other": jnp.ones((6, 10))}
    out = alberta.sparsify(
        _KEY,
        tree,
        0.5,
        include=lambda path, leaf: answer if path == "proj" else None,
    )
    np.testing.assert_array_equal(
        _zeros_per_unit(out["proj"], layout),
        alberta.num_zeros(_fan_in((6, 10), layout), 0.5),
    )
    self.assertIs(out["other"], tree["other"])

  def test_dense_general_fan_in_axes(self):
    # A (in, heads, head_dim) projection: each (head, dim) unit has `in` inputs.
    tree = {"query": {"kernel": jnp.ones((12, 2, 5))}}
    out = alberta.sparsify(
        _KEY,
        tree,
        0.5,
        include=lambda path, leaf: (0,) if "query" in path else None,
    )
    zero = np.asarray(out["query"]["kernel"]) == 0
    np.testing.assert_array_equal(zero.sum(axis=0), alberta.num_zeros(12, 0.5))

  @parameterized.named_parameters(
      (
          "_true_without_a_layout",
          lambda p, _: p == "proj" or None,
          ValueError,
          "'proj'.*layout",
      ),
      ("_unknown_layout", lambda p, _: "sideways", ValueError, "sideways"),
      ("_bad_sparsity", lambda p, _: 1.5, ValueError, r"1\.5"),
      ("_list", lambda p, _: [1], TypeError, r"\[1\]"),
      ("_rank_one", lambda p, _: p == "b" or None, ValueError, "'b'.*rank"),
      (
          "_axes_out_of_range",
          lambda p, _: (5,) if p == "proj" else None,
          ValueError,
          "'proj'",
      ),
      (
          "_integer_leaf",
          lambda p, _: "in_out" if p == "steps" else None,
          TypeError,
          "'steps'",
      ),
  )
  def test_bad_choices_are_named_before_any_work(self, include, error, regex):
    tree = {
        "proj": jnp.ones((6, 10)),
        "b": jnp.ones(6),
        "steps": jnp.ones((2, 2), jnp.int32),
    }
    with self.assertRaisesRegex(error, regex):
      alberta.sparsify(_KEY, tree, 0.5, include=include)

  @parameterized.named_parameters(
      ("_option", dict(dtype=jnp.float16), TypeError, "dtype"),
      ("_distribution", dict(distribution="er"), ValueError, "distribution"),
      ("_sparsity", dict(sparsity=2.0), ValueError, "sparsity"),
      ("_method", dict(method="sorted"), ValueError, "method"),
      ("_key", dict(key=0), TypeError, "key"),
      ("_include", dict(include="w"), TypeError, "include"),
  )
  def test_bad_arguments_are_named(self, kwargs, error, regex):
    args = dict(key=_KEY, params={"w": jnp.ones((4, 4))})
    args.update(kwargs)
    with self.assertRaisesRegex(error, regex):
      alberta.sparsify(**args)


# A small CNN's kernels (Flax layout): 3x3 conv 1 -> 8, 3x3 conv 8 -> 16, and
# a dense 256 -> 10 after a 2x2 pool of an 8x8 image.
_CNN_SHAPES = ((3, 3, 1, 8), (3, 3, 8, 16), (256, 10))


class ErkTest(parameterized.TestCase):

  def test_allocation_without_a_cap(self):
    # By hand: sizes 72, 1152, 2560 (3784 in all); sum / prod: 15/72,
    # 30/1152, 266/2560. Keep 10% of 3784 = 378.4 weights: density_l =
    # eps sum_l / prod_l with eps sum_l (prod_l sum_l / prod_l) = eps 311 =
    # 378.4, so eps = 378.4 / 311 and no density exceeds 1 (the first conv's
    # is 0.25).
    eps = Fraction(3784, 10) / 311
    expected = [
        1 - eps * Fraction(15, 72),
        1 - eps * Fraction(30, 1152),
        1 - eps * Fraction(266, 2560),
    ]
    got = networks.erk_sparsities(_CNN_SHAPES, 0.9)
    np.testing.assert_allclose(got, [float(e) for e in expected], rtol=1e-12)

  def test_allocation_caps_a_dense_layer_and_redistributes(self):
    # By hand at sparsity 0.5: keep 1892 weights. Uncapped, eps = 1892 / 311
    # gives the first conv density 1892/311 * 15/72 = 1.267 > 1: it is made
    # dense (72 weights), and the others keep 1892 - 72 = 1820 with
    # eps = 1820 / (30 + 266) = 455 / 74 (densities 0.160 and 0.639).
    eps = Fraction(455, 74)
    expected = [
        0.0,
        1 - eps * Fraction(30, 1152),
        1 - eps * Fraction(266, 2560),
    ]
    got = networks.erk_sparsities(_CNN_SHAPES, 0.5)
    np.testing.assert_allclose(got, [float(e) for e in expected], rtol=1e-12)

  @parameterized.parameters(0.5, 0.9, 0.95)
  def test_sparsify_erk_on_a_cnn_meets_the_global_sparsity(self, sparsity):
    class CNN(nn.Module):

      @nn.compact
      def __call__(self, x):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.Conv(16, (3, 3))(x)
        x = nn.avg_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))

    variables = CNN().init(_KEY, jnp.ones([1, 8, 8, 1]))
    out = alberta.sparsify(_KEY, variables, sparsity, distribution="erk")
    names = ("Conv_0", "Conv_1", "Dense_0")
    shares = networks.erk_sparsities(_CNN_SHAPES, sparsity)
    sizes = [math.prod(s) for s in _CNN_SHAPES]
    # The allocation holds the global sparsity to within one weight per layer.
    self.assertLessEqual(
        abs(
            sum(round(s * n) for s, n in zip(shares, sizes, strict=True))
            - sparsity * sum(sizes)
        ),
        len(sizes),
    )
    total_zeros = 0
    for name, shape, share in zip(names, _CNN_SHAPES, shares, strict=True):
      kernel = out["params"][name]["kernel"]
      self.assertEqual(kernel.shape, shape)
      fan_in = math.prod(shape[:-1])
      k = alberta.num_zeros(fan_in, share)
      np.testing.assert_array_equal(_zeros_per_unit(kernel, "in_out"), k)
      # Each unit's count is the nearest integer to its share of the fan-in.
      self.assertLessEqual(abs(k - share * fan_in), 0.5 + 1e-9)
      total_zeros += k * shape[-1]
      self.assertIs(
          out["params"][name]["bias"], variables["params"][name]["bias"]
      )
    # So the realized global sparsity is within half a weight per output unit.
    self.assertLessEqual(
        abs(total_zeros - sparsity * sum(sizes)),
        sum(s[-1] for s in _CNN_SHAPES) / 2,
    )

  def test_extremes_and_an_include_sparsity_left_out(self):
    np.testing.assert_array_equal(networks.erk_sparsities(_CNN_SHAPES, 0.0), 0)
    np.testing.assert_array_equal(networks.erk_sparsities(_CNN_SHAPES, 1.0), 1)
    tree = {"a": {"w": jnp.ones((30, 20))}, "b": {"w": jnp.ones((40, 20))}}
    out = alberta.sparsify(
        _KEY,
        tree,
        0.9,
        distribution="erk",
        include=lambda path, leaf: 0.1 if path == "a/w" else None,
    )
    np.testing.assert_array_equal(
        _zeros_per_unit(out["a"]["w"], "in_out"), alberta.num_zeros(30, 0.1)
    )
    # Alone in the allocation, b gets the overall sparsity.
    np.testing.assert_array_equal(
        _zeros_per_unit(out["b"]["w"], "in_out"), alberta.num_zeros(40, 0.9)
    )


class WarningTest(absltest.TestCase):

  def test_one_warning_per_all_zero_kernel_naming_its_path(self):
    tree = {
        "first": {"w": jnp.ones((5, 8))},
        "second": {"w": jnp.ones((5, 3))},
        "third": {"w": jnp.ones((20, 3))},
    }
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      out = alberta.sparsify(_KEY, tree, 0.9)
    messages = [
        str(w.message) for w in caught if issubclass(w.category, UserWarning)
    ]
    self.assertLen(messages, 2, messages)
    self.assertIn("'first/w' of shape (5, 8)", messages[0])
    self.assertIn("'second/w' of shape (5, 3)", messages[1])
    for message in messages:
      self.assertIn("sparsity=0.9", message)
      self.assertIn("rounding='nearest'", message)
    np.testing.assert_array_equal(out["first"]["w"], 0)


if __name__ == "__main__":
  absltest.main()
