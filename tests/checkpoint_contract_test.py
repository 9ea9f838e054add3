"""alberta.checkpoint's promises at their edges: refusals, damage, replacement.

Proves that `save` refuses, before writing anything, what it could not
restore exactly (64-bit arrays with x64 off, dtypes the checksum cannot read,
non-native byte orders, arrays without elements, no arrays at all) and
metadata it would misfile (non-string or reserved keys); that `overwrite`
replaces only a checkpoint (a valid `alberta.json` beside orbax's layout) or
an empty directory, never a directory that merely holds a file of that name
or a link to one; that a damaged checkpoint raises one of `restore`'s
documented errors naming the checkpoint and the file, never a bare JSON,
orbax or TensorStore exception; that a checkpoint replaced while it is read
raises `ReplacedError`, not `ChecksumError`; that `return_metadata` gives the
metadata of the arrays read; and that a full disk is told by its errno, not
by the text of an error.
"""

from tests import env  # noqa: F401

import errno
import json
import os
from unittest import mock

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import alberta
from alberta._src.checkpoint import layout as layout_lib
from alberta._src.checkpoint import write as write_lib
from tests import test_utils

_checkpoint = alberta.checkpoint


class _Dir(test_utils.TempDirMixin):

  def setUp(self):
    super().setUp()
    self.path = os.path.join(self.dir, "w")

  def assert_nothing_written(self):
    self.assertEqual(os.listdir(self.dir), [])


class SaveRefusesTest(_Dir, parameterized.TestCase):
  """What save cannot restore exactly is refused before anything is written."""

  @parameterized.named_parameters(
      ("_int64", np.array([[2**40 + 5, 7]], np.int64)),
      ("_uint64", np.array([2**63 + 1], np.uint64)),
      ("_float64", np.array([1 / 3], np.float64)),
  )
  def test_64_bit_arrays_with_x64_off_are_refused(self, array):
    # Saved, this read back as [[5, 7]] with a matching checksum.
    with self.assertRaisesRegex(TypeError, r"arrays\['matrix'\].*x64"):
      _checkpoint.save(self.path, array)
    self.assert_nothing_written()

  def test_64_bit_arrays_with_x64_on_restore_exactly_and_only_with_it(self):
    array = np.array([[2**40 + 5, 7]], np.int64)
    with jax.enable_x64(True):
      _checkpoint.save(self.path, array)
      restored = _checkpoint.restore(self.path)
      self.assertEqual(restored.dtype, jnp.int64)
      np.testing.assert_array_equal(restored, array)
    with self.assertRaisesRegex(ValueError, r"'matrix' is int64.*x64"):
      _checkpoint.restore(self.path)

  @parameterized.named_parameters(
      ("_int4", np.zeros((2, 2), ml_dtypes.int4), "4-bit"),
      ("_float4", np.zeros((2, 2), ml_dtypes.float4_e2m1fn), "4-bit"),
      ("_complex", np.zeros((2, 2), np.complex64), "not a boolean"),
      ("_big_endian", np.zeros((2, 2), ">f4"), "byte order"),
      (
          "_not_in_tensorstore",
          np.zeros((2, 2), ml_dtypes.float8_e4m3),
          "TensorStore",
      ),
  )
  def test_dtypes_the_checksum_cannot_read_are_refused(self, array, message):
    with self.assertRaisesRegex(TypeError, message):
      _checkpoint.save(self.path, array)
    self.assert_nothing_written()

  @parameterized.named_parameters(
      ("_no_arrays", {}, None, ValueError, "arrays is empty"),
      (
          "_no_elements",
          {"m": np.zeros((0, 3), np.float32)},
          None,
          ValueError,
          r"arrays\['m'\] has shape \(0, 3\), no elements",
      ),
      (
          "_name_not_a_string",
          {1: np.ones(2, np.float32)},
          None,
          TypeError,
          "array names must be non-empty strings",
      ),
      (
          "_key_not_a_string",
          np.ones(2, np.float32),
          {1: 2},
          TypeError,
          "metadata keys must be strings, got 1",
      ),
      (
          "_reserved_key",
          np.ones(2, np.float32),
          {"arrays": 1},
          ValueError,
          "metadata key 'arrays' is reserved",
      ),
      (
          "_reserved_digest",
          np.ones(2, np.float32),
          {"metadata_sha256": "x"},
          ValueError,
          "metadata key 'metadata_sha256' is reserved",
      ),
      (
          "_not_json",
          np.ones(2, np.float32),
          {"x": object()},
          TypeError,
          "JSON-serializable",
      ),
  )
  def test_bad_arrays_and_metadata_are_refused(
      self, arrays, metadata, error, message
  ):
    with self.assertRaisesRegex(error, message):
      _checkpoint.save(self.path, arrays, metadata)
    self.assert_nothing_written()

  def test_every_dtype_the_checksum_reads_round_trips(self):
    # bool, every integer and float type of 1, 2 and 4 bytes (8 with x64, in
    # the slow adversarial run).
    dtypes = [
        np.bool_,
        np.int8,
        np.uint8,
        np.int16,
        np.uint16,
        np.int32,
        np.uint32,
        np.float16,
        jnp.bfloat16,
        np.float32,
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e5m2,
    ]
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (len(dtypes), 4, 8), np.uint8)
    arrays = {}
    for i, dtype in enumerate(dtypes):
      size = np.dtype(dtype).itemsize
      bits_ = np.ascontiguousarray(np.repeat(raw[i], size, axis=1))
      arrays[np.dtype(dtype).name] = (
          (bits_ & 1).astype(np.bool_)
          if (dtype is np.bool_)
          else bits_.view(dtype)
      )
    _checkpoint.save(self.path, arrays)
    restored = _checkpoint.restore(self.path)
    for name, array in arrays.items():
      self.assertEqual(restored[name].dtype, array.dtype, msg=name)
      np.testing.assert_array_equal(
          np.asarray(restored[name]).view(np.uint8),
          array.view(np.uint8),
          err_msg=name,
      )


class OverwriteTest(_Dir, parameterized.TestCase):
  """overwrite=True replaces a checkpoint or an empty directory, only."""

  def _project(self, metadata_text='{"my": "config"}'):
    os.makedirs(os.path.join(self.path, "src"))
    with open(os.path.join(self.path, "alberta.json"), "w") as f:
      f.write(metadata_text)
    with open(os.path.join(self.path, "src", "main.py"), "w") as f:
      f.write("x")

  def _assert_project_intact(self):
    with open(os.path.join(self.path, "src", "main.py")) as f:
      self.assertEqual(f.read(), "x")

  def test_a_directory_holding_some_alberta_json_is_not_replaced(self):
    self._project()
    self.assertFalse(_checkpoint.is_checkpoint(self.path))
    with self.assertRaisesRegex(
        FileExistsError,
        rf"{self.path} exists and is not an alberta "
        r"checkpoint.*field 'format_version' is missing",
    ):
      _checkpoint.save(self.path, jnp.ones((2, 2)), overwrite=True)
    self._assert_project_intact()

  def test_a_valid_alberta_json_without_orbax_layout_is_not_replaced(self):
    other = os.path.join(self.dir, "other")
    _checkpoint.save(other, jnp.ones((2, 2)))
    with open(os.path.join(other, "alberta.json")) as f:
      self._project(f.read())
    with self.assertRaisesRegex(FileExistsError, "orbax cannot read"):
      _checkpoint.save(self.path, jnp.ones((2, 2)), overwrite=True)
    self._assert_project_intact()

  def test_a_symlinked_alberta_json_is_not_a_checkpoint(self):
    other = os.path.join(self.dir, "other")
    _checkpoint.save(other, jnp.ones((2, 2)))
    os.makedirs(os.path.join(self.path, "src"))
    with open(os.path.join(self.path, "src", "main.py"), "w") as f:
      f.write("x")
    os.symlink(
        os.path.join(other, "alberta.json"),
        os.path.join(self.path, "alberta.json"),
    )
    self.assertFalse(_checkpoint.is_checkpoint(self.path))
    with self.assertRaisesRegex(FileExistsError, "symbolic link"):
      _checkpoint.save(self.path, jnp.ones((2, 2)), overwrite=True)
    self._assert_project_intact()
    with self.assertRaisesRegex(ValueError, "symbolic link"):
      _checkpoint.restore(self.path)

  def test_a_directory_that_becomes_a_project_mid_save_is_kept(self):
    # Judged again, by the same rule, at the instant of the publish.
    _checkpoint.save(self.path, jnp.ones((2, 2)))
    publish_path = write_lib.publish.publish

    def swap_then_publish(staging, path, overwrite):
      os.rename(path, os.path.join(self.dir, "old"))
      self._project()
      publish_path(staging, path, overwrite)

    with mock.patch.object(write_lib.publish, "publish", swap_then_publish):
      with self.assertRaisesRegex(FileExistsError, "format_version"):
        _checkpoint.save(self.path, jnp.zeros((2, 2)), overwrite=True)
    self._assert_project_intact()
    self.assertCountEqual(os.listdir(self.dir), ["w", "old"])

  def test_a_checkpoint_is_replaced(self):
    _checkpoint.save(self.path, jnp.ones((2, 2)), {"n": 1})
    self.assertTrue(_checkpoint.is_checkpoint(self.path))
    _checkpoint.save(self.path, jnp.zeros((2, 2)), {"n": 2}, overwrite=True)
    self.assertEqual(_checkpoint.restore_metadata(self.path)["n"], 2)
    self.assertEqual(os.listdir(self.dir), ["w"])


def _file(path, *parts):
  """The first file under `path`/`parts` (orbax names data files at random)."""
  where = os.path.join(path, *parts)
  if os.path.isfile(where):
    return where
  return os.path.join(where, sorted(os.listdir(where))[0])


class DamageTest(_Dir, parameterized.TestCase):
  """A damaged checkpoint raises restore's documented errors, named."""

  def setUp(self):
    super().setUp()
    self.matrix = jnp.arange(48.0).reshape(6, 8)
    _checkpoint.save(self.path, self.matrix)

  @parameterized.named_parameters(
      ("_array_metadatas_not_json", ("array_metadatas", "process_0"), b"{x"),
      (
          "_array_metadatas_not_utf8",
          ("array_metadatas", "process_0"),
          b"\xff\xfe",
      ),
      (
          "_array_metadatas_no_name",
          ("array_metadatas", "process_0"),
          b'{"array_metadatas": [{"array_metadata": {}}]}',
      ),
      (
          "_array_metadatas_a_list",
          ("array_metadatas", "process_0"),
          b'{"array_metadatas": 1}',
      ),
      ("_data_file_truncated", ("d",), b""),
      ("_data_file_garbage", ("d",), b"\0" * 64),
      ("_manifest_garbage", ("manifest.ocdbt",), b"\1" * 8),
      ("_sharding_garbage", ("_sharding",), b"\1" * 8),
  )
  def test_a_damaged_file_is_a_value_error_naming_the_checkpoint(
      self, parts, content
  ):
    with open(_file(self.path, *parts), "wb") as f:
      f.write(content)
    for verify in (True, False):
      with self.assertRaises(ValueError) as caught:
        _checkpoint.restore(self.path, verify=verify)
      message = str(caught.exception)
      self.assertIn(f"{self.path}: orbax cannot read", message)
      self.assertIn(f"{parts[0]}{'/' if len(parts) > 1 else ''}", message)
      self.assertNotIsInstance(caught.exception, json.JSONDecodeError)

  def test_a_deleted_data_file_is_a_value_error(self):
    os.unlink(_file(self.path, "d"))
    with self.assertRaisesRegex(ValueError, f"{self.path}: orbax cannot read"):
      _checkpoint.restore(self.path)


class ReplacedTest(_Dir, absltest.TestCase):
  """A checkpoint replaced during a read is reported as replaced."""

  def _replace_during_restore(self, **kwargs):
    check = layout_lib.orbax_mismatch
    calls = []

    def replace_then_check(ocp, path, specs):
      # alberta.json is read; now another save publishes over it (and
      # judges the old checkpoint with this same function).
      calls.append(path)
      if len(calls) == 1:
        _checkpoint.save(
            self.path, jnp.full((6, 8), 2.0), {"n": 2}, overwrite=True
        )
      return check(ocp, path, specs)

    with mock.patch.object(layout_lib, "orbax_mismatch", replace_then_check):
      return _checkpoint.restore(self.path, **kwargs)

  def test_replaced_mid_read_is_not_corrupted(self):
    _checkpoint.save(self.path, jnp.ones((6, 8)), {"n": 1})
    for verify in (True, False):
      with self.assertRaisesRegex(
          _checkpoint.ReplacedError, f"{self.path} was replaced"
      ):
        self._replace_during_restore(verify=verify)
      _checkpoint.save(self.path, jnp.ones((6, 8)), {"n": 1}, overwrite=True)
    self.assertNotIsInstance(
        _checkpoint.ReplacedError("x"), _checkpoint.ChecksumError
    )

  def test_restore_returns_the_metadata_of_the_arrays_it_read(self):
    _checkpoint.save(self.path, jnp.ones((6, 8)), {"n": 1})
    matrix, info = _checkpoint.restore(self.path, return_metadata=True)
    self.assertEqual(info["n"], 1)
    np.testing.assert_array_equal(matrix, np.ones((6, 8)))


class InterruptedCheckTest(_Dir, absltest.TestCase):

  def test_a_kill_inside_the_writability_probe_leaves_only_staging(self):
    # A signal between the probe's mkdir and rmdir (the launcher exits at
    # once): what is left must be something remove_staging removes.
    with mock.patch.object(os, "rmdir", side_effect=KeyboardInterrupt):
      with self.assertRaises(KeyboardInterrupt):
        alberta.checkpoint.check_output(self.path)
    left = alberta.checkpoint.stale_staging(self.path)
    self.assertLen(left, 1)
    self.assertEqual(os.listdir(self.dir), [os.path.basename(left[0])])
    alberta.checkpoint.remove_staging(self.path, quiet_s=0.0, timeout_s=1.0)
    self.assert_nothing_written()


class DiskFullTest(_Dir, absltest.TestCase):

  def test_an_error_that_only_mentions_errno_28_is_not_a_full_disk(self):
    # TensorStore's text for a full disk, raised while the disk is not full:
    # the save re-raises it as it is instead of claiming ENOSPC.
    error = ValueError("RESOURCE_EXHAUSTED: [os_error_code='28'] simulated")
    with mock.patch.object(write_lib, "_write_arrays", side_effect=error):
      with self.assertRaises(ValueError) as caught:
        _checkpoint.save(self.path, jnp.ones((2, 2)))
    self.assertIs(caught.exception, error)
    self.assert_nothing_written()

  def test_an_oserror_enospc_is_a_full_disk(self):
    error = OSError(errno.ENOSPC, "No space left on device")
    with mock.patch.object(write_lib, "_write_arrays", side_effect=error):
      with self.assertRaises(OSError) as caught:
        _checkpoint.save(self.path, jnp.ones((2, 2)))
    self.assertEqual(caught.exception.errno, errno.ENOSPC)
    self.assertIn(self.path, str(caught.exception))
    self.assert_nothing_written()


if __name__ == "__main__":
  absltest.main()
