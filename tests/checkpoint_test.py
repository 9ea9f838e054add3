"""alberta.checkpoint: atomic orbax checkpoints of matrices and their metadata.

Proves that a saved matrix restores bit for bit onto one device or straight
into another sharding than it was written from; that the metadata round-trips
with the versions added; that an existing path is refused without
`overwrite`, replaced with it, and never replaced when it is not a checkpoint;
that unwritable targets are refused before anything is written; that a
directory without `alberta.json` (what an interrupted save leaves) does not
restore; and that `import alberta` works without orbax while saving then
names the missing package.
"""

from tests import env  # noqa: F401

import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import NamedSharding, PartitionSpec

import alberta
from alberta._src import checkpoint as checkpoint_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mesh(shape, names):
  return jax.make_mesh(shape, names,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def _matrix(dtype=jnp.float32):
  sharding = NamedSharding(_mesh((4, 2), ("rows", "cols")),
                           PartitionSpec("rows", "cols"))
  return alberta.sharded_sparse_init(
      jax.random.key(7), (32, 24), 0.75, sharding=sharding, dtype=dtype,
      method="counter")


def _bits(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32)


class CheckpointTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    # Not self.create_tempdir(): that needs absl flags, which pytest never parses.
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name
    self.path = os.path.join(self.dir, "w")

  @parameterized.named_parameters(
      ("_float32", jnp.float32), ("_bfloat16", jnp.bfloat16),
      ("_float16", jnp.float16))
  def test_restore_onto_one_device_is_bit_identical(self, dtype):
    matrix = _matrix(dtype)
    alberta.checkpoint.save(self.path, matrix, {"seed": 7})
    restored = alberta.checkpoint.restore(self.path)
    self.assertIsInstance(restored, jax.Array)
    self.assertEqual(restored.dtype, jnp.dtype(dtype))
    self.assertEqual(restored.sharding,
                     jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    np.testing.assert_array_equal(_bits(restored), _bits(matrix))

  def test_restore_into_another_sharding_reads_each_shard_there(self):
    matrix = _matrix()
    alberta.checkpoint.save(self.path, matrix)
    by_rows = NamedSharding(_mesh((8,), ("rows",)), PartitionSpec("rows"))
    restored = alberta.checkpoint.restore(self.path, sharding=by_rows)
    self.assertEqual(restored.sharding, by_rows)
    np.testing.assert_array_equal(_bits(restored), _bits(matrix))
    for shard in restored.addressable_shards:
      np.testing.assert_array_equal(_bits(shard.data),
                                    _bits(np.asarray(matrix)[shard.index]))

  def test_metadata_round_trips_with_versions_and_array_specs(self):
    alberta.checkpoint.save(self.path, _matrix(jnp.bfloat16),
                            {"seed": 7, "method": "counter"})
    info = alberta.checkpoint.restore_metadata(self.path)
    self.assertEqual(info["seed"], 7)
    self.assertEqual(info["method"], "counter")
    self.assertEqual(info["alberta_version"], alberta.__version__)
    self.assertEqual(info["jax_version"], jax.__version__)
    self.assertEqual(info["format_version"], checkpoint_lib.FORMAT_VERSION)
    spec = info["arrays"]["matrix"]
    self.assertEqual((spec["shape"], spec["dtype"]), ([32, 24], "bfloat16"))
    self.assertRegex(spec["checksum"], r"^[0-9a-f]{16}$")
    # sparsity 0.75 of 24 columns: 18 zeros in every row.
    self.assertEqual(spec["row_zeros"], {"min": 18, "max": 18, "total": 576})

  def test_named_arrays_restore_as_a_dict(self):
    values = jnp.arange(12, dtype=jnp.float32).reshape(4, 3)
    indices = jnp.arange(12, dtype=jnp.int32).reshape(4, 3)
    alberta.checkpoint.save(self.path, {"values": values, "indices": indices})
    restored = alberta.checkpoint.restore(self.path)
    self.assertEqual(set(restored), {"values", "indices"})
    np.testing.assert_array_equal(restored["values"], values)
    np.testing.assert_array_equal(restored["indices"], indices)
    self.assertEqual(restored["indices"].dtype, jnp.int32)

  def test_existing_path_is_refused_without_overwrite_and_kept(self):
    alberta.checkpoint.save(self.path, _matrix(), {"seed": 1})
    with self.assertRaisesRegex(FileExistsError, "overwrite"):
      alberta.checkpoint.save(self.path, jnp.zeros((2, 2)), {"seed": 2})
    self.assertEqual(alberta.checkpoint.restore_metadata(self.path)["seed"], 1)
    self.assertEqual(sorted(os.listdir(self.dir)), ["w"])

  def test_overwrite_replaces_a_checkpoint_and_leaves_no_staging(self):
    alberta.checkpoint.save(self.path, _matrix(), {"seed": 1})
    alberta.checkpoint.save(self.path, jnp.ones((2, 3)), {"seed": 2},
                            overwrite=True)
    self.assertEqual(alberta.checkpoint.restore_metadata(self.path)["seed"], 2)
    np.testing.assert_array_equal(alberta.checkpoint.restore(self.path),
                                  np.ones((2, 3)))
    self.assertEqual(sorted(os.listdir(self.dir)), ["w"])

  def test_overwrite_never_replaces_a_directory_that_is_not_a_checkpoint(self):
    os.mkdir(self.path)
    with open(os.path.join(self.path, "precious.txt"), "w") as f:
      f.write("data")
    with self.assertRaisesRegex(FileExistsError, "not an alberta checkpoint"):
      alberta.checkpoint.save(self.path, jnp.ones((2, 2)), overwrite=True)
    self.assertEqual(os.listdir(self.path), ["precious.txt"])

  def test_overwrite_fills_an_empty_directory(self):
    os.mkdir(self.path)
    alberta.checkpoint.save(self.path, jnp.ones((2, 2)), overwrite=True)
    self.assertTrue(checkpoint_lib.is_checkpoint(self.path))

  def test_missing_parents_are_created(self):
    path = os.path.join(self.dir, "a", "b", "w")
    alberta.checkpoint.save(path, jnp.ones((2, 2)))
    np.testing.assert_array_equal(alberta.checkpoint.restore(path),
                                  np.ones((2, 2)))

  def test_a_path_below_a_file_is_refused_before_writing(self):
    blocker = os.path.join(self.dir, "file")
    with open(blocker, "w") as f:
      f.write("x")
    with self.assertRaisesRegex(PermissionError, "not a directory"):
      alberta.checkpoint.save(os.path.join(blocker, "w"), jnp.ones((2, 2)))
    self.assertEqual(os.listdir(self.dir), ["file"])

  @absltest.skipIf(os.geteuid() == 0, "root can write to read-only directories")
  def test_a_read_only_parent_is_refused_before_writing(self):
    parent = os.path.join(self.dir, "ro")
    os.mkdir(parent, 0o500)
    self.addCleanup(os.chmod, parent, 0o700)
    with self.assertRaisesRegex(PermissionError, "not writable"):
      alberta.checkpoint.save(os.path.join(parent, "w"), jnp.ones((2, 2)))
    self.assertEqual(os.listdir(parent), [])

  def test_nothing_at_path_fails_cleanly(self):
    with self.assertRaisesRegex(FileNotFoundError, "no alberta checkpoint"):
      alberta.checkpoint.restore(self.path)
    with self.assertRaises(FileNotFoundError):
      alberta.checkpoint.restore_metadata(self.path)

  def test_a_directory_without_metadata_does_not_restore(self):
    # What an interrupted save leaves in its staging directory: orbax's
    # shards, but no alberta.json.
    alberta.checkpoint.save(self.path, jnp.ones((2, 2)))
    os.remove(os.path.join(self.path, checkpoint_lib.METADATA_FILE))
    with self.assertRaisesRegex(ValueError, "not a complete alberta checkpoint"):
      alberta.checkpoint.restore(self.path)

  def test_another_format_version_is_refused(self):
    alberta.checkpoint.save(self.path, jnp.ones((2, 2)))
    meta = os.path.join(self.path, checkpoint_lib.METADATA_FILE)
    with open(meta) as f:
      info = json.load(f)
    info["format_version"] = checkpoint_lib.FORMAT_VERSION + 1
    with open(meta, "w") as f:
      json.dump(info, f)
    with self.assertRaisesRegex(ValueError, "format_version"):
      alberta.checkpoint.restore(self.path)

  def test_metadata_that_is_not_json_fails_before_writing(self):
    with self.assertRaises(TypeError):
      alberta.checkpoint.save(self.path, jnp.ones((2, 2)), {"key": object()})
    self.assertEqual(os.listdir(self.dir), [])

  def test_stale_staging_lists_only_this_targets_leftovers(self):
    for name in (".w.alberta-tmp-1", ".w.alberta-tmp-2.orbax-checkpoint-tmp",
                 ".ww.alberta-tmp-3", "w2"):
      os.mkdir(os.path.join(self.dir, name))
    self.assertEqual(
        [os.path.basename(p) for p in checkpoint_lib.stale_staging(self.path)],
        [".w.alberta-tmp-1", ".w.alberta-tmp-2.orbax-checkpoint-tmp"])

  def test_without_orbax_saving_names_the_missing_package(self):
    with mock.patch.dict(sys.modules, {"orbax": None, "orbax.checkpoint": None}):
      with self.assertRaisesRegex(ImportError, r"alberta\[checkpoint\]"):
        alberta.checkpoint.save(self.path, jnp.ones((2, 2)))
    self.assertEqual(os.listdir(self.dir), [])

  def test_import_alberta_does_not_import_orbax(self):
    code = ("import sys; sys.modules['orbax'] = None; "
            "sys.modules['orbax.checkpoint'] = None; import alberta; "
            "print(alberta.checkpoint.restore.__name__)")
    env_vars = dict(os.environ, PYTHONPATH=_ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=env_vars, cwd=_ROOT, timeout=120,
                          check=False)
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    self.assertEqual(proc.stdout.strip(), "restore")


if __name__ == "__main__":
  absltest.main()
