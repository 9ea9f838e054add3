"""Sharded, chunked and pmap generation equal `sparse_init` on one device.

The invariant: whatever the mesh (1, 2, 4, 8 devices; 4x2; 2x4), the sharding
spec (rows, columns, both, a flattened 2-D axis, replicated), the chunk size
(automatic, 1, or 37, which divides no shard here) and for `pmap`, the result
is `sparse_init(key, shape, ...)` computed on one device: the same zeros, the
same values, laid out exactly as requested, each device holding its own tile.

Each distinct (layout, method, init_type, chunk) is one compile (~1 s on a
loaded CPU), so the default run covers every mesh, most kinds of spec (rows,
columns, both, transposed axes, replicated) and every (chunk, method) pair
and distribution at least once, in six cases; every layout with every
(chunk, method) runs in the `slow` step.
"""

from tests import env  # noqa: F401

import functools
import itertools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.sharding import SingleDeviceSharding

import alberta
from alberta._src import driver
from alberta._src import sharding as sharding_lib
from tests import test_utils

# 320 rows: 40 per device on an 8-way row split, so a chunk of 37 leaves a
# ragged last chunk on every layout; 40 columns split 2, 4 or 8 ways.
_SHAPE = (320, 40)
_SPARSITY = 0.7
_SEED = 2024

_CHUNKS = (None, 1, 37)
_METHODS = ("permutation", "counter")
_INIT_TYPES = ("uniform", "normal")


def _mesh(name: str) -> Mesh:
  """Meshes by name; some in scrambled device order, so placement is tested."""
  devices = jax.devices()
  if name == "1":
    return jax.make_mesh((1,), ("x",), devices=devices[:1])
  if name == "2":
    return Mesh(np.array([devices[5], devices[2]]), ("x",))
  if name == "4":
    return Mesh(np.array([devices[i] for i in (6, 1, 3, 0)]), ("x",))
  if name == "8":
    return jax.make_mesh((8,), ("x",))
  if name == "4x2":
    return jax.make_mesh((4, 2), ("x", "y"))
  if name == "2x4":
    return Mesh(np.array(devices[::-1]).reshape(2, 4), ("x", "y"))
  raise ValueError(name)


_SPECS_1D = (P("x"), P(None, "x"), P())
_SPECS_2D = (
    P("x"),
    P(None, "x"),
    P("x", "y"),
    P(
        ("x", "y"),
    ),
    P(),
    P("y", "x"),
    P(None, ("y", "x")),
)
_LAYOUTS = tuple(
    [(m, s) for m in ("1", "2", "4", "8") for s in _SPECS_1D]
    + [(m, s) for m in ("4x2", "2x4") for s in _SPECS_2D]
)


def _case_name(mesh: str, spec: P, chunk, method: str, init_type: str) -> str:
  spec_name = (
      "".join(
          "_"
          + ("none" if e is None else "".join(e) if isinstance(e, tuple) else e)
          for e in spec
      )
      or "_replicated"
  )
  return f"_mesh{mesh}{spec_name}_chunk{chunk}_{method}_{init_type}"


def _case(mesh, spec, chunk, method, init_type):
  return dict(
      testcase_name=_case_name(mesh, spec, chunk, method, init_type),
      mesh=mesh,
      spec=spec,
      chunk_rows=chunk,
      method=method,
      init_type=init_type,
  )


# Default run: every mesh, rows, columns, both, transposed axes, replicated,
# each (chunk, method) pair; one distribution per method (two reference
# matrices), since the distribution only changes the elementwise value map.
# (A flattened 2-D axis runs in ell_test's default run, through the same
# program builder.) The slow run has every layout.
_COVERING_CASES = (
    _case("1", P(), None, "counter", "normal"),
    _case("2", P(None, "x"), 1, "counter", "normal"),
    _case("4", P("x"), 37, "counter", "normal"),
    _case("8", P("x"), None, "permutation", "uniform"),
    _case("4x2", P("x", "y"), 1, "permutation", "uniform"),
    _case("2x4", P("y", "x"), 37, "permutation", "uniform"),
)
# Slow run: every layout with every (chunk, method); the distribution only
# changes the elementwise value map, not how tiles are placed, so it alternates.
_ALL_CASES = tuple(
    _case(m, s, c, method, _INIT_TYPES[(i + j) % 2])
    for i, (m, s) in enumerate(_LAYOUTS)
    for j, (c, method) in enumerate(itertools.product(_CHUNKS, _METHODS))
)


@functools.lru_cache(maxsize=None)
def _reference(method: str, init_type: str) -> np.ndarray:
  return np.asarray(
      alberta.sparse_init(
          jax.random.key(_SEED), _SHAPE, _SPARSITY, init_type, method=method
      )
  )


class ShardedInvariantTest(parameterized.TestCase):

  def _check(self, mesh, spec, chunk_rows, method, init_type, key=None):
    sharding = NamedSharding(_mesh(mesh), spec)
    key = jax.random.key(_SEED) if key is None else key
    out = alberta.sharded_sparse_init(
        key,
        _SHAPE,
        _SPARSITY,
        init_type,
        sharding=sharding,
        method=method,
        chunk_rows=chunk_rows,
    )
    expected = _reference(method, init_type)
    self.assertEqual(out.shape, _SHAPE)
    self.assertEqual(out.dtype, jnp.float32)
    self.assertEqual(out.sharding, sharding)
    test_utils.assert_same_matrix(out, expected, init_type)
    # Every device holds the tile the requested sharding assigns to it.
    tiles = sharding.devices_indices_map(_SHAPE)
    self.assertLen(out.addressable_shards, sharding.mesh.size)
    for shard in out.addressable_shards:
      test_utils.assert_same_matrix(
          shard.data, expected[tiles[shard.device]], init_type
      )

  @parameterized.named_parameters(*_COVERING_CASES)
  def test_equals_sparse_init(self, mesh, spec, chunk_rows, method, init_type):
    self._check(mesh, spec, chunk_rows, method, init_type)

  # The mark goes under the decorator so each generated case carries it.
  @parameterized.named_parameters(*_ALL_CASES)
  @test_utils.slow
  def test_equals_sparse_init_all_combinations(
      self, mesh, spec, chunk_rows, method, init_type
  ):
    self._check(mesh, spec, chunk_rows, method, init_type)

  def test_raw_key_gives_same_matrix_as_typed_key(self):
    # The program of a typed key's case: the key's words are its argument.
    self._check(
        "4x2",
        P("x", "y"),
        1,
        "permutation",
        "uniform",
        key=jax.random.PRNGKey(_SEED),
    )

  def test_callable_under_jit_with_traced_key(self):
    sharding = NamedSharding(_mesh("8"), P("x"))
    f = jax.jit(
        lambda key: alberta.sharded_sparse_init(
            key,
            _SHAPE,
            _SPARSITY,
            "normal",
            sharding=sharding,
            method="counter",
            chunk_rows=37,
        )
    )
    out = f(jax.random.key(_SEED))
    # The outer jit owns the output and spells the spec P('x', None).
    self.assertTrue(out.sharding.is_equivalent_to(sharding, 2))
    test_utils.assert_same_matrix(
        out, _reference("counter", "normal"), "normal"
    )

  def test_bfloat16_is_float32_cast(self):
    sharding = NamedSharding(_mesh("4x2"), P(None, "x"))
    out = alberta.sharded_sparse_init(
        jax.random.key(_SEED),
        _SHAPE,
        _SPARSITY,
        "normal",
        sharding=sharding,
        dtype=jnp.bfloat16,
        method="counter",
        chunk_rows=37,
    )
    self.assertEqual(out.dtype, jnp.bfloat16)
    self.assertEqual(out.sharding, sharding)
    want = jnp.asarray(_reference("counter", "normal")).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))


class ZeroSizeTest(parameterized.TestCase):
  """A matrix without elements is a valid empty array on every mesh."""

  def test_every_2d_mesh_gives_empty_tiles_of_the_right_shape(self):
    # 8x1, 2x4, 4x2 and their transposes, rows or columns split first; a
    # jitted program would give every device the global shape instead.
    cases = 0
    for mesh_shape in ((8, 1), (1, 8), (2, 4), (4, 2)):
      mesh = jax.make_mesh(mesh_shape, ("a", "b"))
      for spec in (P("a", "b"), P("b", "a")):
        sharding = NamedSharding(mesh, spec)
        for shape in ((8, 0), (0, 8), (0, 0)):
          with self.subTest(mesh=mesh_shape, spec=str(spec), shape=shape):
            x = alberta.sharded_sparse_init(
                jax.random.key(0), shape, 0.9, sharding=sharding
            )
            self.assertEqual(x.sharding, sharding)
            for shard in x.addressable_shards:
              self.assertEqual(shard.data.shape, sharding.shard_shape(shape))
            self.assertEqual(np.asarray(x).shape, shape)
            cases += 1
    self.assertEqual(cases, 24)

  def test_the_mask_without_elements_is_empty_on_a_2d_mesh(self):
    sharding = NamedSharding(jax.make_mesh((4, 2), ("a", "b")), P("a", "b"))
    for shape in ((8, 0), (0, 8)):
      mask = alberta.sparse_mask(
          jax.random.key(0), shape, 0.9, sharding=sharding
      )
      for shard in mask.addressable_shards:
        self.assertEqual(shard.data.shape, sharding.shard_shape(shape))
      self.assertEqual(np.asarray(mask).shape, shape)

  def test_a_nonempty_matrix_is_never_built_whole_on_one_device(self):
    # Checking for a zero-size output must not allocate the output: only
    # traced zeros of the global shape, never concrete ones.
    real = jnp.zeros
    concrete = []

    def spy(shape, *args, **kwargs):
      out = real(shape, *args, **kwargs)
      if tuple(shape) == (64, 64) and not isinstance(out, jax.core.Tracer):
        concrete.append(shape)
      return out

    sharding = NamedSharding(jax.make_mesh((4, 2), ("a", "b")), P("a", "b"))
    with mock.patch.object(jnp, "zeros", spy):
      alberta.sharded_sparse_init(
          jax.random.key(0), (64, 64), 0.9, sharding=sharding
      )
    self.assertEqual(concrete, [])

  def test_ell_without_rows_or_nonzeros_is_empty_on_a_2d_mesh(self):
    sharding = NamedSharding(jax.make_mesh((4, 2), ("a", "b")), P("a"))
    for shape, sparsity in (((0, 8), 0.5), ((8, 4), 1.0)):
      values, indices = alberta.sharded_sparse_init_ell(
          jax.random.key(0),
          shape,
          sparsity,
          sharding=sharding,
          method="counter",
      )
      for x in (values, indices):
        for shard in x.addressable_shards:
          self.assertEqual(shard.data.shape, sharding.shard_shape(x.shape))
        self.assertEqual(np.asarray(x).size, 0)


class PmapTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("_all_devices", None, None, "permutation", "uniform"),
      ("_scrambled_four", (5, 2, 7, 0), 37, "counter", "normal"),
  )
  def test_device_d_holds_block_d_of_sparse_init(
      self, device_ids, chunk_rows, method, init_type
  ):
    self._check(device_ids, chunk_rows, method, init_type)

  @parameterized.named_parameters(
      ("_one_device", (3,), 37, "permutation", "normal"),
      ("_two_devices_chunk1", (6, 1), 1, "counter", "uniform"),
  )
  @test_utils.slow
  def test_device_d_holds_block_d_of_sparse_init_more(
      self, device_ids, chunk_rows, method, init_type
  ):
    self._check(device_ids, chunk_rows, method, init_type)

  def _check(self, device_ids, chunk_rows, method, init_type):
    all_devices = jax.devices()
    devices = (
        None if device_ids is None else [all_devices[i] for i in device_ids]
    )
    out = alberta.pmap_sparse_init(
        jax.random.key(_SEED),
        _SHAPE,
        _SPARSITY,
        init_type,
        devices=devices,
        method=method,
        chunk_rows=chunk_rows,
    )
    devices = jax.local_devices() if devices is None else devices
    n = len(devices)
    rows = _SHAPE[0] // n
    expected = _reference(method, init_type)
    self.assertEqual(out.shape, (n, rows, _SHAPE[1]))
    test_utils.assert_same_matrix(
        np.asarray(out).reshape(_SHAPE), expected, init_type
    )
    self.assertLen(out.addressable_shards, n)
    for shard in out.addressable_shards:
      d = shard.index[0].indices(n)[0]  # A 1-device slice is slice(None).
      self.assertEqual(shard.device, devices[d])
      test_utils.assert_same_matrix(
          shard.data[0], expected[d * rows : (d + 1) * rows], init_type
      )


class BadInputTest(parameterized.TestCase):
  """Bad arguments fail in Python, naming the argument, before any compile."""

  def setUp(self):
    super().setUp()
    # Building the jitted / pmapped program is the step before compiling:
    # reaching it with a bad argument fails the test.
    for module, builder in (
        (driver, "sharded_program"),
        (sharding_lib, "_pmap_fn"),
    ):
      patcher = mock.patch.object(
          module,
          builder,
          side_effect=AssertionError(f"{builder} reached with bad input"),
      )
      patcher.start()
      self.addCleanup(patcher.stop)
    self.key = jax.random.key(0)

  @parameterized.named_parameters(
      ("_rows_8_ways", (30, 40), "8", P("x"), r"fan_out=30.*8 parts"),
      (
          "_cols_8_ways",
          (320, 36),
          "4x2",
          P(None, ("x", "y")),
          r"fan_in=36.*8 parts",
      ),
      (
          "_rows_of_2d_split",
          (321, 40),
          "2x4",
          P("x", "y"),
          r"fan_out=321.*2 parts",
      ),
      (
          "_cols_of_2d_split",
          (320, 41),
          "4x2",
          P("x", "y"),
          r"fan_in=41.*2 parts",
      ),
  )
  def test_mesh_not_dividing_shape(self, shape, mesh, spec, message):
    sharding = NamedSharding(_mesh(mesh), spec)
    with self.assertRaisesRegex(ValueError, message):
      alberta.sharded_sparse_init(self.key, shape, sharding=sharding)

  @parameterized.named_parameters(
      ("_single_device", lambda: SingleDeviceSharding(jax.devices()[0])),
      ("_partition_spec", lambda: P("x")),
      ("_none", lambda: None),
      ("_mesh", lambda: _mesh("8")),
  )
  def test_not_a_named_sharding(self, make_sharding):
    with self.assertRaisesRegex(
        TypeError, "sharding must be a .*NamedSharding"
    ):
      alberta.sharded_sparse_init(self.key, (16, 16), sharding=make_sharding())

  def test_spec_with_more_than_two_entries(self):
    sharding = NamedSharding(_mesh("4x2"), P("x", "y", None))
    with self.assertRaisesRegex(ValueError, "names 3 dimensions"):
      alberta.sharded_sparse_init(self.key, (16, 16), sharding=sharding)

  def test_shape_not_2d(self):
    sharding = NamedSharding(_mesh("8"), P("x"))
    with self.assertRaisesRegex(ValueError, r"2-D shape.*\(16, 4, 4\)"):
      alberta.sharded_sparse_init(self.key, (16, 4, 4), sharding=sharding)
    with self.assertRaisesRegex(ValueError, r"2-D shape.*\(16, 4, 4\)"):
      alberta.pmap_sparse_init(self.key, (16, 4, 4))

  @parameterized.named_parameters(
      ("_zero", 0, ValueError),
      ("_negative", -1, ValueError),
      ("_float", 2.5, TypeError),
      ("_bool", True, TypeError),
      ("_string", "8", TypeError),
      ("_integral_float", 8.0, TypeError),
  )
  def test_bad_chunk_rows(self, chunk_rows, error):
    message = f"chunk_rows.*{chunk_rows!r}"
    sharding = NamedSharding(_mesh("8"), P("x"))
    with self.assertRaisesRegex(error, message):
      alberta.sharded_sparse_init(
          self.key, (16, 16), sharding=sharding, chunk_rows=chunk_rows
      )
    with self.assertRaisesRegex(error, message):
      alberta.pmap_sparse_init(self.key, (16, 16), chunk_rows=chunk_rows)

  @parameterized.named_parameters(("_list", []), ("_tuple", ()))
  def test_pmap_empty_devices(self, devices):
    with self.assertRaisesRegex(ValueError, r"devices must not be empty"):
      alberta.pmap_sparse_init(self.key, (16, 16), devices=devices)

  def test_pmap_fan_out_not_divisible(self):
    with self.assertRaisesRegex(ValueError, r"fan_out=30.*not divisible.*8"):
      alberta.pmap_sparse_init(self.key, (30, 16))
    with self.assertRaisesRegex(ValueError, r"fan_out=16.*not divisible.*3"):
      alberta.pmap_sparse_init(self.key, (16, 16), devices=jax.devices()[:3])

  def test_other_arguments_checked_as_in_sparse_init(self):
    sharding = NamedSharding(_mesh("8"), P("x"))
    with self.assertRaisesRegex(ValueError, "method"):
      alberta.sharded_sparse_init(
          self.key, (16, 16), sharding=sharding, method="sorted"
      )
    with self.assertRaisesRegex(TypeError, "dtype"):
      alberta.pmap_sparse_init(self.key, (16, 16), dtype=jnp.int32)
    with self.assertRaisesRegex(TypeError, "key"):
      alberta.sharded_sparse_init(42, (16, 16), sharding=sharding)


class PartitionableFlagTest(absltest.TestCase):

  def test_sharded_and_pmap_refuse_when_partitionable_is_off(self):
    key = jax.random.key(0)
    sharding = NamedSharding(_mesh("8"), P("x"))
    # Compiled first with the flag on, so a stale cache would be the failure
    # (the programs of the cases above: the same shape and arguments).
    sharded = functools.partial(
        alberta.sharded_sparse_init, key, _SHAPE, _SPARSITY, sharding=sharding
    )
    pmapped = functools.partial(
        alberta.pmap_sparse_init, key, _SHAPE, _SPARSITY
    )
    sharded()
    pmapped()
    previous = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    try:
      with self.assertRaisesRegex(RuntimeError, "jax_threefry_partitionable"):
        sharded()
      with self.assertRaisesRegex(RuntimeError, "jax_threefry_partitionable"):
        pmapped()
    finally:
      jax.config.update("jax_threefry_partitionable", previous)


if __name__ == "__main__":
  absltest.main()
