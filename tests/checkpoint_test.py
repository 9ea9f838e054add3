"""alberta.checkpoint: atomic orbax checkpoints of matrices and their metadata.

Proves that a saved matrix restores bit for bit onto one device or straight
into another sharding than it was written from; that the metadata round-trips
with the versions added; that an existing path is refused without
`overwrite`, replaced with it, and never replaced when it is not a checkpoint;
that unwritable targets are refused before anything is written; that a
directory without `alberta.json` (what an interrupted save leaves) does not
restore; and that `import alberta` works without orbax while saving then
names the missing package.

At the edges: that whatever appears at the target while a save runs (a
directory, a file, a link, a checkpoint replaced by user data) survives
untouched and the save raises, with both the renameat2 commit and its
portable fallback; that of two processes saving to one new path exactly one
succeeds; that a symbolic link is never a target; that a full disk, an
interrupt or an exception mid-save leave nothing behind; that the checksum is
sharding-independent and changes with every single-bit change of an element;
that bit flips anywhere in a checkpoint's files either raise or restore the
identical matrix, never other numbers; and that each malformed `alberta.json`
is refused with the file and the field named.
"""

from tests import env  # noqa: F401

import collections
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import NamedSharding, PartitionSpec

import alberta
from alberta._src import bits
from alberta._src.checkpoint import digest as digest_lib
from alberta._src.checkpoint import metadata as metadata_lib
from alberta._src.checkpoint import publish as publish_lib
from tests import test_utils

_ROOT = test_utils.ROOT


def _mesh(shape, names):
  return jax.make_mesh(
      shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names)
  )


def _matrix(dtype=jnp.float32):
  sharding = NamedSharding(
      _mesh((4, 2), ("rows", "cols")), PartitionSpec("rows", "cols")
  )
  return alberta.sharded_sparse_init(
      jax.random.key(7),
      (32, 24),
      0.75,
      sharding=sharding,
      dtype=dtype,
      method="counter",
  )


class _CheckpointDirMixin(test_utils.TempDirMixin):
  """`self.dir`, a fresh temporary directory; `self.path`, absent "w" in it."""

  def setUp(self):
    super().setUp()
    self.path = os.path.join(self.dir, "w")


class CheckpointTest(_CheckpointDirMixin, parameterized.TestCase):

  @parameterized.named_parameters(
      ("_float32", jnp.float32),
      ("_bfloat16", jnp.bfloat16),
      ("_float16", jnp.float16),
  )
  def test_restore_onto_one_device_is_bit_identical(self, dtype):
    matrix = _matrix(dtype)
    alberta.checkpoint.save(self.path, matrix, {"seed": 7})
    restored = alberta.checkpoint.restore(self.path)
    self.assertIsInstance(restored, jax.Array)
    self.assertEqual(restored.dtype, jnp.dtype(dtype))
    self.assertEqual(
        restored.sharding,
        jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
    )
    test_utils.assert_same_bits(restored, matrix)

  def test_restore_into_another_sharding_reads_each_shard_there(self):
    matrix = _matrix()
    alberta.checkpoint.save(self.path, matrix)
    by_rows = NamedSharding(_mesh((8,), ("rows",)), PartitionSpec("rows"))
    restored = alberta.checkpoint.restore(self.path, sharding=by_rows)
    self.assertEqual(restored.sharding, by_rows)
    test_utils.assert_same_bits(restored, matrix)
    for shard in restored.addressable_shards:
      test_utils.assert_same_bits(shard.data, np.asarray(matrix)[shard.index])

  def test_metadata_round_trips_with_versions_and_array_specs(self):
    alberta.checkpoint.save(
        self.path, _matrix(jnp.bfloat16), {"seed": 7, "method": "counter"}
    )
    info = alberta.checkpoint.restore_metadata(self.path)
    self.assertEqual(info["seed"], 7)
    self.assertEqual(info["method"], "counter")
    self.assertEqual(info["alberta_version"], alberta.__version__)
    self.assertEqual(info["jax_version"], jax.__version__)
    self.assertEqual(info["format_version"], metadata_lib.FORMAT_VERSION)
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
    alberta.checkpoint.save(
        self.path, jnp.ones((2, 3)), {"seed": 2}, overwrite=True
    )
    self.assertEqual(alberta.checkpoint.restore_metadata(self.path)["seed"], 2)
    np.testing.assert_array_equal(
        alberta.checkpoint.restore(self.path), np.ones((2, 3))
    )
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
    self.assertTrue(alberta.checkpoint.is_checkpoint(self.path))

  def test_missing_parents_are_created(self):
    path = os.path.join(self.dir, "a", "b", "w")
    alberta.checkpoint.save(path, jnp.ones((2, 2)))
    np.testing.assert_array_equal(
        alberta.checkpoint.restore(path), np.ones((2, 2))
    )

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
    os.remove(os.path.join(self.path, metadata_lib.METADATA_FILE))
    with self.assertRaisesRegex(
        ValueError, "not a complete alberta checkpoint"
    ):
      alberta.checkpoint.restore(self.path)

  def test_another_format_version_is_refused(self):
    alberta.checkpoint.save(self.path, jnp.ones((2, 2)))
    meta = os.path.join(self.path, metadata_lib.METADATA_FILE)
    with open(meta) as f:
      info = json.load(f)
    info["format_version"] = metadata_lib.FORMAT_VERSION + 1
    with open(meta, "w") as f:
      json.dump(info, f)
    with self.assertRaisesRegex(ValueError, "format_version"):
      alberta.checkpoint.restore(self.path)

  def test_metadata_that_is_not_json_fails_before_writing(self):
    with self.assertRaises(TypeError):
      alberta.checkpoint.save(self.path, jnp.ones((2, 2)), {"key": object()})
    self.assertEqual(os.listdir(self.dir), [])

  def test_stale_staging_lists_only_this_targets_leftovers(self):
    for name in (
        ".w.alberta-tmp-1",
        ".w.alberta-tmp-2.orbax-checkpoint-tmp",
        ".ww.alberta-tmp-3",
        "w2",
    ):
      os.mkdir(os.path.join(self.dir, name))
    self.assertEqual(
        [
            os.path.basename(p)
            for p in alberta.checkpoint.stale_staging(self.path)
        ],
        [".w.alberta-tmp-1", ".w.alberta-tmp-2.orbax-checkpoint-tmp"],
    )

  def test_without_orbax_saving_names_the_missing_package(self):
    with mock.patch.dict(
        sys.modules, {"orbax": None, "orbax.checkpoint": None}
    ):
      with self.assertRaisesRegex(ImportError, r"alberta\[checkpoint\]"):
        alberta.checkpoint.save(self.path, jnp.ones((2, 2)))
    self.assertEqual(os.listdir(self.dir), [])

  def test_import_alberta_does_not_import_orbax(self):
    code = (
        "import sys; sys.modules['orbax'] = None; "
        "sys.modules['orbax.checkpoint'] = None; import alberta; "
        "print(alberta.checkpoint.restore.__name__)"
    )
    env_vars = dict(os.environ, PYTHONPATH=_ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env_vars,
        cwd=_ROOT,
        timeout=120,
        check=False,
    )
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    self.assertEqual(proc.stdout.strip(), "restore")


def _edit_metadata(path, edit, redigest=False):
  """Rewrites `path`'s alberta.json as `edit(info)` returns or leaves it."""
  meta = os.path.join(path, metadata_lib.METADATA_FILE)
  with open(meta) as f:
    info = json.load(f)
  result = edit(info)
  info = info if result is None else result
  if redigest:
    info["metadata_sha256"] = metadata_lib.metadata_sha256(info)
  if not isinstance(info, str):
    info = json.dumps(info)
  with open(meta, "wb") as f:  # A str result is raw text (\udcXX: a byte).
    f.write(info.encode("utf-8", "surrogateescape"))


def _no_renameat2(*args):
  del args
  raise publish_lib.Unsupported("simulated: no renameat2 here")


# Runs of every race test: the renameat2 commit, then its portable fallback.
_COMMITS = (("_renameat2", False), ("_portable", True))


class CommitRaceTest(_CheckpointDirMixin, parameterized.TestCase):
  """Whatever appears at the target during a save is never replaced."""

  def _portable(self, portable):
    if portable:
      patcher = mock.patch.object(publish_lib, "renameat2", _no_renameat2)
      patcher.start()
      self.addCleanup(patcher.stop)

  def _save_while(self, appear, **kwargs):
    """Saves to self.path; `appear()` runs from the progress callback."""
    calls = []

    def progress(unused_bytes, unused_seconds):
      if not calls:
        appear()
      calls.append(1)

    try:
      alberta.checkpoint.save(
          self.path,
          _matrix(),
          {"seed": 2},
          progress=progress,
          progress_every_s=1e-4,
          **kwargs,
      )
    finally:
      # The injection did happen mid-save (else the test proves nothing).
      self.assertNotEmpty(calls)

  def _user_directory(self):
    os.mkdir(self.path)
    with open(os.path.join(self.path, "precious.txt"), "w") as f:
      f.write("data")

  def _user_file(self):
    with open(self.path, "w") as f:
      f.write("data")

  def _assert_user_directory(self):
    self.assertFalse(os.path.islink(self.path))
    self.assertEqual(os.listdir(self.path), ["precious.txt"])
    with open(os.path.join(self.path, "precious.txt")) as f:
      self.assertEqual(f.read(), "data")

  @parameterized.named_parameters(*_COMMITS)
  def test_a_directory_appearing_without_overwrite_is_kept(self, portable):
    self._portable(portable)
    with self.assertRaisesRegex(FileExistsError, "appeared while"):
      self._save_while(self._user_directory)
    self._assert_user_directory()
    self.assertEqual(os.listdir(self.dir), ["w"])  # No staging left.

  @parameterized.named_parameters(*_COMMITS)
  def test_an_empty_directory_appearing_without_overwrite_is_kept(
      self, portable
  ):
    self._portable(portable)
    with self.assertRaisesRegex(FileExistsError, "appeared while"):
      self._save_while(lambda: os.mkdir(self.path))
    self.assertEqual(os.listdir(self.path), [])
    self.assertEqual(os.listdir(self.dir), ["w"])

  @parameterized.named_parameters(*_COMMITS)
  def test_a_file_appearing_is_kept_with_or_without_overwrite(self, portable):
    self._portable(portable)
    for overwrite in (False, True):
      with self.assertRaises(FileExistsError):
        self._save_while(self._user_file, overwrite=overwrite)
      with open(self.path) as f:
        self.assertEqual(f.read(), "data")
      self.assertEqual(os.listdir(self.dir), ["w"])
      os.remove(self.path)

  @parameterized.named_parameters(*_COMMITS)
  def test_a_directory_appearing_with_overwrite_is_kept(self, portable):
    self._portable(portable)
    with self.assertRaisesRegex(FileExistsError, "not an alberta checkpoint"):
      self._save_while(self._user_directory, overwrite=True)
    self._assert_user_directory()
    self.assertEqual(os.listdir(self.dir), ["w"])

  @parameterized.named_parameters(*_COMMITS)
  def test_a_checkpoint_replaced_by_user_data_mid_save_is_kept(self, portable):
    self._portable(portable)
    alberta.checkpoint.save(self.path, jnp.ones((2, 2)), {"seed": 1})

    def replace_with_user_data():
      shutil.rmtree(self.path)
      self._user_directory()

    with self.assertRaisesRegex(FileExistsError, "not an alberta checkpoint"):
      self._save_while(replace_with_user_data, overwrite=True)
    self._assert_user_directory()
    self.assertEqual(os.listdir(self.dir), ["w"])

  @parameterized.named_parameters(*_COMMITS)
  def test_a_link_appearing_with_overwrite_is_kept(self, portable):
    self._portable(portable)
    elsewhere = os.path.join(self.dir, "elsewhere")
    os.mkdir(elsewhere)
    with self.assertRaisesRegex(FileExistsError, "symbolic link"):
      self._save_while(lambda: os.symlink(elsewhere, self.path), overwrite=True)
    self.assertEqual(os.readlink(self.path), elsewhere)
    self.assertEqual(os.listdir(elsewhere), [])
    self.assertEqual(sorted(os.listdir(self.dir)), ["elsewhere", "w"])

  @parameterized.named_parameters(*_COMMITS)
  def test_an_empty_directory_filled_after_the_check_is_kept(self, portable):
    # Empty when save starts (replaceable), holds a file at the commit.
    self._portable(portable)
    os.mkdir(self.path)

    def fill():
      with open(os.path.join(self.path, "precious.txt"), "w") as f:
        f.write("data")

    with self.assertRaisesRegex(FileExistsError, "not an alberta checkpoint"):
      self._save_while(fill, overwrite=True)
    self._assert_user_directory()
    self.assertEqual(os.listdir(self.dir), ["w"])

  @parameterized.named_parameters(*_COMMITS)
  def test_a_directory_appearing_just_before_the_rename_is_kept(self, portable):
    # The narrowest window: after alberta.json is written, before the commit.
    self._portable(portable)
    write_json = metadata_lib.write

    def write_then_appear(path, obj):
      write_json(path, obj)
      self._user_directory()

    with mock.patch.object(metadata_lib, "write", write_then_appear):
      for overwrite in (False, True):
        with self.assertRaises(FileExistsError):
          alberta.checkpoint.save(
              self.path, jnp.ones((2, 2)), overwrite=overwrite
          )
        self._assert_user_directory()
        self.assertEqual(os.listdir(self.dir), ["w"])
        shutil.rmtree(self.path)

  @parameterized.named_parameters(*_COMMITS)
  def test_overwrite_replaces_checkpoints_and_empty_directories(self, portable):
    self._portable(portable)
    alberta.checkpoint.save(self.path, jnp.ones((2, 2)), {"seed": 1})
    alberta.checkpoint.save(
        self.path, jnp.zeros((2, 3)), {"seed": 2}, overwrite=True
    )
    self.assertEqual(alberta.checkpoint.restore_metadata(self.path)["seed"], 2)
    np.testing.assert_array_equal(
        alberta.checkpoint.restore(self.path), np.zeros((2, 3))
    )
    shutil.rmtree(self.path)
    os.mkdir(self.path)
    alberta.checkpoint.save(
        self.path, jnp.ones((2, 2)), {"seed": 3}, overwrite=True
    )
    self.assertEqual(alberta.checkpoint.restore_metadata(self.path)["seed"], 3)
    self.assertEqual(os.listdir(self.dir), ["w"])

  @parameterized.named_parameters(
      ("_dangling", False), ("_to_a_directory", True)
  )
  def test_a_symbolic_link_is_never_a_target(self, to_directory):
    target = os.path.join(self.dir, "real")
    if to_directory:
      alberta.checkpoint.save(target, jnp.ones((2, 2)), {"seed": 1})
    os.symlink(target, self.path)
    before = sorted(os.listdir(self.dir))
    for overwrite in (False, True):
      with self.assertRaisesRegex(FileExistsError, "symbolic link"):
        alberta.checkpoint.save(
            self.path, jnp.zeros((2, 2)), overwrite=overwrite
        )
      self.assertEqual(os.readlink(self.path), target)
      self.assertEqual(sorted(os.listdir(self.dir)), before)
    if to_directory:
      self.assertEqual(alberta.checkpoint.restore_metadata(target)["seed"], 1)

  # Two JAX processes (seconds of start-up each): in the slow step. The
  # default run keeps the commit's part of the guarantee: whatever appears at
  # the target mid-save, as the winner's commit does, makes the loser raise
  # and leave nothing (test_a_directory_appearing_without_overwrite_is_kept).
  @test_utils.slow
  def test_two_processes_saving_to_one_path_exactly_one_succeeds(self):
    # Each process waits, mid-write (from its progress callback), until both
    # are writing: both passed the initial check, so the commit decides.
    code = textwrap.dedent("""
        import os, sys, time
        from tests import env
        import jax, jax.numpy as jnp
        import alberta
        i, path, flags = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        x = jax.random.normal(jax.random.key(i), (64, 48)) + i
        def progress(unused_bytes, unused_seconds):
          # Here this process has passed the initial check and is writing.
          open(os.path.join(flags, f"ready{i}"), "w").close()
          deadline = time.monotonic() + 60
          while len(os.listdir(flags)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        alberta.checkpoint.save(path, x, {"writer": i}, progress=progress,
                                progress_every_s=0.001)
        """)
    flags = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, flags)
    env_vars = dict(os.environ, PYTHONPATH=_ROOT)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i), self.path, flags],
            env=env_vars,
            cwd=_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = test_utils.communicate_all(procs, timeout=300)
    codes = [proc.returncode for proc in procs]
    self.assertEqual(sorted(codes), [0, 1], msg=outputs)
    loser = codes.index(1)
    # Normally the commit decides ("appeared while"); a loser that reached no
    # progress call before the winner committed is refused by the initial
    # check instead ("already exists"). Either way: one clear error, nothing
    # left behind.
    self.assertRegex(
        outputs[loser][1],
        rf"FileExistsError: {self.path} " "(appeared while|already exists)",
    )
    self.assertEqual(os.listdir(self.dir), ["w"])  # The loser left nothing.
    winner = codes.index(0)
    self.assertEqual(
        alberta.checkpoint.restore_metadata(self.path)["writer"], winner
    )
    expected = jax.random.normal(jax.random.key(winner), (64, 48)) + winner
    test_utils.assert_same_bits(alberta.checkpoint.restore(self.path), expected)

  @test_utils.slow
  def test_a_failed_commit_on_process_0_fails_every_process(self):
    # Two JAX processes save one sharded matrix; a user directory appears at
    # the target while they write. Process 0 refuses to commit, and process
    # 1 learns it from process 0's broadcast instead of returning success.
    code = textwrap.dedent("""
        import os, sys
        import jax
        i, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        jax.config.update("jax_num_cpu_devices", 4)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2,
                                   process_id=i)
        import alberta
        from jax.sharding import NamedSharding, PartitionSpec
        mesh = jax.make_mesh((8,), ("rows",),
                             axis_types=(jax.sharding.AxisType.Auto,))
        x = alberta.sharded_sparse_init(
            jax.random.key(1), (64, 48), 0.5, method="counter",
            sharding=NamedSharding(mesh, PartitionSpec("rows")))
        def appear(unused_bytes, unused_seconds):
          os.makedirs(os.path.join(path, "user"), exist_ok=True)
        try:
          alberta.checkpoint.save(path, x, progress=appear if i == 0 else None,
                                  progress_every_s=1e-4)
        except FileExistsError as e:
          print("REFUSED", e)
          sys.exit(3)
        """)
    port = test_utils.free_port()
    env_vars = dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS="cpu")
    env_vars.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i), str(port), self.path],
            env=env_vars,
            cwd=_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = test_utils.communicate_all(procs, timeout=600)
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
      self.assertEqual(proc.returncode, 3, msg=f"{stdout}\n{stderr}")
      self.assertIn(f"REFUSED {self.path}", stdout)
    self.assertIn("process 0 could not commit", outputs[1][0])
    self.assertEqual(os.listdir(self.dir), ["w"])
    self.assertEqual(os.listdir(self.path), ["user"])


class FailureCleanupTest(_CheckpointDirMixin, parameterized.TestCase):
  """A save that fails or is interrupted leaves nothing behind."""

  @parameterized.named_parameters(
      ("_interrupt", KeyboardInterrupt), ("_error", RuntimeError)
  )
  def test_an_exception_from_progress_removes_the_staging(self, error):
    calls = []

    def progress(unused_bytes, unused_seconds):
      calls.append(1)
      raise error("stop")

    with self.assertRaises(error):
      alberta.checkpoint.save(
          self.path, _matrix(), progress=progress, progress_every_s=1e-4
      )
    self.assertLen(calls, 1)
    self.assertEqual(os.listdir(self.dir), [])

  def test_a_full_disk_while_writing_metadata_is_one_clear_error(self):
    def full(path, obj):
      del obj
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    with mock.patch.object(metadata_lib, "write", full):
      with self.assertRaises(OSError) as caught:
        alberta.checkpoint.save(self.path, jnp.ones((4, 4)))
    self.assertEqual(caught.exception.errno, errno.ENOSPC)
    self.assertIn(self.path, str(caught.exception))
    self.assertIn("No space left on device", str(caught.exception))
    self.assertNotIn("\n", str(caught.exception))
    self.assertEqual(os.listdir(self.dir), [])

  def test_a_full_disk_while_writing_shards_is_one_clear_error(self):
    if os.geteuid() != 0:
      self.skipTest("mounting a small tmpfs needs root")
    mount = os.path.join(self.dir, "small")
    os.mkdir(mount)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mount],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
      self.skipTest(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    self.addCleanup(subprocess.run, ["umount", mount], check=False)
    path = os.path.join(mount, "w")
    # 1 MiB of random float32, which hardly compresses: 4x the space.
    matrix = jax.random.normal(jax.random.key(0), (512, 512))
    with self.assertRaises(OSError) as caught:
      alberta.checkpoint.save(path, matrix)
    self.assertEqual(caught.exception.errno, errno.ENOSPC)
    self.assertIn(path, str(caught.exception))
    self.assertIn("No space left on device", str(caught.exception))
    self.assertNotIn("\n", str(caught.exception))
    self.assertEqual(os.listdir(mount), [])


class ChecksumTest(_CheckpointDirMixin, parameterized.TestCase):
  """The checksum and restore's verification."""

  def test_the_checksum_does_not_depend_on_the_sharding(self):
    matrix = _matrix()
    expected = digest_lib.summaries({"m": matrix})
    for mesh_shape, spec in (
        ((8,), PartitionSpec("r")),
        ((8,), PartitionSpec(None, "r")),
        ((2, 4), PartitionSpec("r", "c")),
    ):
      names = ("r", "c")[: len(mesh_shape)]
      sharded = jax.device_put(
          matrix, NamedSharding(_mesh(mesh_shape, names), spec)
      )
      self.assertEqual(digest_lib.summaries({"m": sharded}), expected)
    self.assertEqual(digest_lib.summaries({"m": np.asarray(matrix)}), expected)

  @parameterized.named_parameters(
      ("_float32", np.float32),
      ("_float16", np.float16),
      ("_bfloat16", jnp.bfloat16),
      ("_int32", np.int32),
      ("_uint8", np.uint8),
  )
  def test_every_single_bit_flip_changes_the_checksum(self, dtype):
    values = np.random.default_rng(0).normal(size=(3, 5)) * 50
    x = np.asarray(values, dtype)
    width = x.dtype.itemsize * 8
    unsigned = np.dtype(f"uint{width}")
    original = digest_lib.summaries({"x": x})["x"]["checksum"]
    seen = {original}
    for index in np.ndindex(x.shape):
      for bit in range(width):
        flipped = x.copy()
        flipped.view(unsigned)[index] ^= unsigned.type(1 << bit)
        seen.add(digest_lib.summaries({"x": flipped})["x"]["checksum"])
    # Every flip gives a checksum unlike the original and every other flip.
    self.assertLen(seen, 1 + x.size * width)

  def test_swapping_two_elements_changes_the_checksum(self):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    swapped = x.copy()
    swapped[0, 1], swapped[2, 3] = x[2, 3], x[0, 1]
    self.assertNotEqual(
        digest_lib.summaries({"x": x}), digest_lib.summaries({"x": swapped})
    )

  def test_float64_arrays_have_checksums_over_both_words(self):
    with jax.enable_x64(True):
      x = jnp.asarray(np.linspace(-1, 1, 12).reshape(3, 4), jnp.float64)
      base = digest_lib.summaries({"x": x})["x"]["checksum"]
      low = np.asarray(x).copy()
      low.view(np.uint64)[1, 1] ^= np.uint64(1)
      high = np.asarray(x).copy()
      high.view(np.uint64)[1, 1] ^= np.uint64(1 << 62)
      others = {
          digest_lib.summaries({"x": y})["x"]["checksum"] for y in (low, high)
      }
      self.assertLen(others | {base}, 3)
      alberta.checkpoint.save(self.path, x)
      restored = alberta.checkpoint.restore(self.path)
      self.assertEqual(restored.dtype, jnp.float64)
      np.testing.assert_array_equal(restored, x)

  def test_the_row_zero_total_is_exact_beyond_32_bits(self):
    counts = jax.device_put(
        np.full(16, 2**31 - 1, np.uint32),
        NamedSharding(_mesh((8,), ("r",)), PartitionSpec("r")),
    )
    hi, lo = jax.jit(bits.sum_u64)(counts)
    self.assertEqual((int(hi) << 32) | int(lo), 16 * (2**31 - 1))

  def test_restore_reads_sharded_and_verifies(self):
    matrix = _matrix()
    alberta.checkpoint.save(self.path, matrix)
    by_rows = NamedSharding(_mesh((8,), ("rows",)), PartitionSpec("rows"))
    restored = alberta.checkpoint.restore(self.path, sharding=by_rows)
    test_utils.assert_same_bits(restored, matrix)

  @parameterized.named_parameters(
      ("_checksum", "checksum"), ("_row_zeros", "row_zeros")
  )
  def test_a_recorded_summary_unlike_the_data_raises(self, field):
    alberta.checkpoint.save(self.path, _matrix())

    def edit(info):
      spec = info["arrays"]["matrix"]
      if field == "checksum":
        spec["checksum"] = f"{int(spec['checksum'], 16) ^ 1:016x}"
      else:
        spec["row_zeros"]["total"] -= 1
        spec["row_zeros"]["min"] -= 1

    _edit_metadata(self.path, edit, redigest=True)
    with self.assertRaisesRegex(
        alberta.checkpoint.ChecksumError, rf"{self.path}: array 'matrix'"
    ):
      alberta.checkpoint.restore(self.path)
    test_utils.assert_same_bits(
        alberta.checkpoint.restore(self.path, verify=False), _matrix()
    )

  def _flip_sweep(self, flips, seed):
    """Restores `flips` single-bit-flipped copies; returns how each ended."""
    matrix = np.asarray(alberta.sparse_init(jax.random.key(3), (64, 48), 0.7))
    alberta.checkpoint.save(self.path, matrix, {"seed": 3})
    files = sorted(
        os.path.relpath(os.path.join(root, f), self.path)
        for root, _, names in os.walk(self.path)
        for f in names
    )
    rng = np.random.default_rng(seed)
    outcomes = collections.Counter()
    for i in range(flips):
      name = files[i % len(files)]  # Every file, in turn.
      copy = os.path.join(self.dir, "copy")
      shutil.copytree(self.path, copy)
      with open(os.path.join(copy, name), "r+b") as f:
        data = bytearray(f.read())
        offset = int(rng.integers(len(data)))
        data[offset] ^= 1 << int(rng.integers(8))
        f.seek(0)
        f.write(data)
      try:
        restored = alberta.checkpoint.restore(copy)
      except alberta.checkpoint.ChecksumError as e:
        # An array's checksum, or alberta.json's own digest.
        outcomes["checksum" if "array '" in str(e) else "alberta.json"] += 1
      except Exception as e:  # pylint: disable=broad-exception-caught
        outcomes[
            "alberta.json" if metadata_lib.METADATA_FILE in str(e) else "orbax"
        ] += 1
      else:
        # Never other numbers: the flip was harmless (unread bytes).
        test_utils.assert_same_bits(
            restored, matrix, err_msg=f"flip in {name} at {offset}"
        )
        outcomes["identical"] += 1
      shutil.rmtree(copy)
    print(f"{flips} single-bit flips over {len(files)} files: {dict(outcomes)}")
    return outcomes

  def test_bit_flips_raise_or_restore_the_identical_matrix(self):
    outcomes = self._flip_sweep(200, seed=0)
    self.assertEqual(sum(outcomes.values()), 200)
    # Some flips decode to other numbers without orbax noticing; only the
    # checksum catches those: 13 to 20 of 200 in runs here (orbax names its
    # data files at random, so which flip lands where varies a little).
    self.assertGreater(outcomes["checksum"], 0)

  @test_utils.slow
  def test_many_bit_flips_raise_or_restore_the_identical_matrix(self):
    outcomes = self._flip_sweep(2000, seed=1)
    self.assertGreater(outcomes["checksum"], 0)


class RemoveStagingTest(_CheckpointDirMixin, absltest.TestCase):
  """remove_staging: this run's staging goes, whatever else is there stays."""

  def _writer(self, staging):
    """A thread recreating `staging`, as orbax's writes can; stop with set()."""
    stop = threading.Event()
    wrote = threading.Event()

    def write():
      while not stop.is_set():
        try:
          os.makedirs(os.path.join(staging, "d"), exist_ok=True)
        except FileNotFoundError:
          continue  # Removed between the two mkdirs: again.
        wrote.set()
        time.sleep(0.002)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    self.addCleanup(thread.join)
    self.addCleanup(stop.set)
    wrote.wait()
    return stop, thread

  def test_only_unkept_staging_entries_are_removed_and_links_not_followed(self):
    os.mkdir(self.path)  # The target itself is never touched.
    outside = os.path.join(self.dir, "outside")
    os.makedirs(os.path.join(outside, "data"))
    entries = {
        name: os.path.join(self.dir, name)
        for name in (
            ".w.alberta-tmp-1",
            ".w.alberta-tmp-2.orbax-checkpoint-tmp",
            ".w.alberta-old-3",
            ".w.alberta-tmp-4",
            ".ww.alberta-tmp-5",
        )
    }
    for name, entry in entries.items():
      if name == ".w.alberta-tmp-4":
        os.symlink(outside, entry)
      else:
        os.makedirs(os.path.join(entry, "shard"))
    removed = alberta.checkpoint.remove_staging(
        self.path, keep=[entries[".w.alberta-tmp-1"]], quiet_s=0
    )
    self.assertEqual(
        removed,
        [
            entries[".w.alberta-old-3"],
            entries[".w.alberta-tmp-2.orbax-checkpoint-tmp"],
            entries[".w.alberta-tmp-4"],
        ],
    )
    self.assertEqual(
        sorted(os.listdir(self.dir)),
        [".w.alberta-tmp-1", ".ww.alberta-tmp-5", "outside", "w"],
    )
    self.assertEqual(os.listdir(outside), ["data"])  # Through the link: kept.
    self.assertEqual(
        alberta.checkpoint.remove_staging(self.path, quiet_s=0.01),
        [entries[".w.alberta-tmp-1"]],
    )

  def test_what_a_writer_recreates_is_removed_until_it_stops(self):
    staging = os.path.join(self.dir, ".w.alberta-tmp-9")
    stop, thread = self._writer(staging)
    # The writer stops while removal goes on; nothing it wrote survives.
    threading.Timer(0.1, stop.set).start()
    removed = alberta.checkpoint.remove_staging(
        self.path, quiet_s=0.2, timeout_s=60
    )
    thread.join()
    self.assertEqual(removed, [staging])
    self.assertEqual(os.listdir(self.dir), [])

  def test_a_writer_that_never_stops_is_given_up_on_at_the_timeout(self):
    staging = os.path.join(self.dir, ".w.alberta-tmp-9")
    self._writer(staging)
    # Returns although the entry keeps reappearing (quiet_s is never reached).
    self.assertEqual(
        alberta.checkpoint.remove_staging(self.path, quiet_s=60, timeout_s=0.1),
        [staging],
    )

  def test_bad_durations_are_refused(self):
    for kwargs in ({"quiet_s": -1}, {"timeout_s": float("nan")}):
      name = next(iter(kwargs))
      with self.assertRaisesRegex(ValueError, f"{name} must be a non-negative"):
        alberta.checkpoint.remove_staging(self.path, **kwargs)


class EstimateStoredBytesTest(_CheckpointDirMixin, absltest.TestCase):
  """estimate_stored_bytes: what save writes, predicted from a sample."""

  def test_the_estimate_is_close_to_what_save_writes(self):
    # 90% zeros, uniform values elsewhere, as a sparse matrix has; rows on
    # 8 devices (the estimate samples the first shard).
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, (256, 512)).astype(np.float32)
    matrix = jax.device_put(
        np.where(rng.random((256, 512)) < 0.9, np.float32(0), values),
        NamedSharding(_mesh((8,), ("rows",)), PartitionSpec("rows")),
    )
    estimate = alberta.checkpoint.estimate_stored_bytes(matrix)
    alberta.checkpoint.save(self.path, matrix)
    on_disk = sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(self.path)
        for f in files
    )
    # ~120 KiB on disk, ~2% of it metadata files; the estimate is within a
    # few percent of the data (fixed seed: deterministic).
    self.assertBetween(estimate, 0.9 * on_disk, 1.1 * on_disk)
    self.assertLess(estimate, matrix.nbytes / 3)
    # Named arrays add up (each measured on its own: orbax's file names and
    # hence its index sizes vary by a few bytes between saves).
    both = alberta.checkpoint.estimate_stored_bytes({"a": matrix, "b": matrix})
    self.assertAlmostEqual(both, 2 * estimate, delta=estimate / 1000)

  def test_the_estimate_follows_compressibility(self):
    estimate = alberta.checkpoint.estimate_stored_bytes
    zeros = np.zeros((64, 64), np.float32)
    noise = np.random.default_rng(0).integers(0, 2**32, (64, 64), np.uint32)
    self.assertLess(estimate(zeros), zeros.nbytes / 100)
    self.assertGreater(estimate(noise), 0.99 * noise.nbytes)
    self.assertEqual(estimate({"empty": jnp.zeros((0, 3))}), 0)
    self.assertIsNotNone(estimate(jnp.ones((4, 4), jnp.bfloat16)))
    # One row (at least) is sampled however small sample_bytes is.
    self.assertGreater(estimate(noise, sample_bytes=1), 0.99 * noise.nbytes)

  def test_without_orbax_there_is_no_estimate(self):
    with mock.patch.dict(sys.modules, {"orbax.checkpoint": None}):
      self.assertIsNone(alberta.checkpoint.estimate_stored_bytes(jnp.ones(4)))

  def test_bad_arguments_are_named(self):
    for sample_bytes in (0, -1, 1.5, True):
      with self.assertRaisesRegex(
          ValueError, "sample_bytes must be a positive"
      ):
        alberta.checkpoint.estimate_stored_bytes(
            jnp.ones(4), sample_bytes=sample_bytes
        )
    with self.assertRaisesRegex(
        TypeError, r"arrays\['a'\] must be a jax.Array"
    ):
      alberta.checkpoint.estimate_stored_bytes({"a": [1.0, 2.0]})


class MetadataValidationTest(_CheckpointDirMixin, parameterized.TestCase):
  """A malformed alberta.json names the file and the field."""

  def setUp(self):
    super().setUp()
    alberta.checkpoint.save(self.path, _matrix(), {"seed": 7})
    self.meta = os.path.join(self.path, metadata_lib.METADATA_FILE)

  def _spec(self, info):
    return info["arrays"]["matrix"]

  @parameterized.named_parameters(
      ("_not_json", lambda i: "{not json", "is not valid JSON"),
      (
          "_a_list",
          lambda i: [i],
          "must hold a JSON object; it holds a JSON array",
      ),
      (
          "_a_string",
          lambda i: '"x"',
          "must hold a JSON object; it holds a JSON string",
      ),
      (
          "_null",
          lambda i: "null",
          "must hold a JSON object; it holds a JSON null",
      ),
      ("_not_utf8", lambda i: "\udcff", "is not valid JSON"),
      (
          "_no_version",
          lambda i: i.pop("format_version") and None,
          "'format_version' is missing",
      ),
      (
          "_version_text",
          lambda i: i.update(format_version="2"),
          "'format_version' must be an integer",
      ),
      ("_no_arrays", lambda i: i.pop("arrays") and None, "'arrays' is missing"),
      (
          "_arrays_list",
          lambda i: i.update(arrays=[1]),
          "'arrays' must be an object",
      ),
      ("_arrays_empty", lambda i: i.update(arrays={}), "'arrays' is empty"),
      (
          "_entry_not_object",
          lambda i: i["arrays"].update(matrix=[32, 24]),
          "'arrays.matrix' must be an object",
      ),
      (
          "_no_shape",
          lambda i: i["arrays"]["matrix"].pop("shape") and None,
          "'arrays.matrix.shape' must be a list",
      ),
      (
          "_negative_shape",
          lambda i: i["arrays"]["matrix"].update(shape=[-32, 24]),
          "'arrays.matrix.shape' must be a list of non-negative integers",
      ),
      (
          "_float_shape",
          lambda i: i["arrays"]["matrix"].update(shape=[32.0, 24]),
          "'arrays.matrix.shape'",
      ),
      (
          "_shape_text",
          lambda i: i["arrays"]["matrix"].update(shape="32,24"),
          "'arrays.matrix.shape'",
      ),
      (
          "_no_dtype",
          lambda i: i["arrays"]["matrix"].pop("dtype") and None,
          "'arrays.matrix.dtype' must name",
      ),
      (
          "_unknown_dtype",
          lambda i: i["arrays"]["matrix"].update(dtype="float33"),
          "'arrays.matrix.dtype' must name",
      ),
      (
          "_complex_dtype",
          lambda i: i["arrays"]["matrix"].update(dtype="complex64"),
          "'arrays.matrix.dtype' must name",
      ),
      (
          "_no_checksum",
          lambda i: i["arrays"]["matrix"].pop("checksum") and None,
          "'arrays.matrix.checksum' must be 16 lowercase hexadecimal",
      ),
      (
          "_short_checksum",
          lambda i: i["arrays"]["matrix"].update(checksum="abc"),
          "'arrays.matrix.checksum'",
      ),
      (
          "_checksum_number",
          lambda i: i["arrays"]["matrix"].update(checksum=12345),
          "'arrays.matrix.checksum'",
      ),
      (
          "_no_row_zeros",
          lambda i: i["arrays"]["matrix"].pop("row_zeros") and None,
          "'arrays.matrix.row_zeros'",
      ),
      (
          "_row_zeros_beyond_shape",
          lambda i: i["arrays"]["matrix"]["row_zeros"].update(max=25),
          "'arrays.matrix.row_zeros'",
      ),
      (
          "_no_digest",
          lambda i: i.pop("metadata_sha256") and None,
          "'metadata_sha256' must be 64",
      ),
  )
  def test_malformed_metadata_is_refused(self, edit, message):
    _edit_metadata(self.path, edit)
    for verify in (True, False):
      with self.assertRaisesRegex(ValueError, message) as caught:
        alberta.checkpoint.restore(self.path, verify=verify)
      self.assertIn(self.meta, str(caught.exception))
      self.assertNotIsInstance(
          caught.exception, alberta.checkpoint.ChecksumError
      )
      with self.assertRaisesRegex(ValueError, message):
        alberta.checkpoint.restore_metadata(self.path, verify=verify)

  def test_edited_metadata_fails_its_digest_unless_unverified(self):
    _edit_metadata(self.path, lambda i: i.update(seed=8))
    with self.assertRaisesRegex(
        alberta.checkpoint.ChecksumError, rf"{self.meta} does not match its own"
    ):
      alberta.checkpoint.restore(self.path)
    self.assertEqual(
        alberta.checkpoint.restore_metadata(self.path, verify=False)["seed"], 8
    )

  @parameterized.named_parameters(
      (
          "_dtype",
          lambda i: i["arrays"]["matrix"].update(dtype="int32"),
          r"'arrays.matrix.dtype' is 'int32', but the checkpoint stores"
          r" 'float32' "
          r"\(it is never cast\)",
      ),
      (
          "_shape",
          lambda i: i["arrays"]["matrix"].update(shape=[32, 48]),
          r"'arrays.matrix.shape' is \[32, 48\], but the checkpoint stores"
          r" shape "
          r"\[32, 24\]",
      ),
      (
          "_names",
          lambda i: i["arrays"].update(values=i["arrays"].pop("matrix")),
          (
              r"'arrays' lists \['values'\], but the checkpoint stores"
              r" \['matrix'\]"
          ),
      ),
  )
  def test_metadata_unlike_what_orbax_stored_is_never_a_cast(
      self, edit, message
  ):
    for verify in (True, False):
      # Digest recomputed: only the comparison with orbax can catch it.
      _edit_metadata(self.path, edit, redigest=True)
      with self.assertRaisesRegex(ValueError, message):
        alberta.checkpoint.restore(self.path, verify=verify)
      shutil.rmtree(self.path)
      alberta.checkpoint.save(self.path, _matrix(), {"seed": 7})

  def test_format_version_1_reads_only_unverified(self):
    def to_v1(info):
      info["format_version"] = 1
      del info["metadata_sha256"]
      for spec in info["arrays"].values():
        del spec["checksum"], spec["row_zeros"]

    _edit_metadata(self.path, to_v1)
    with self.assertRaisesRegex(ValueError, "format_version 1.*verify=False"):
      alberta.checkpoint.restore(self.path)
    test_utils.assert_same_bits(
        alberta.checkpoint.restore(self.path, verify=False), _matrix()
    )


if __name__ == "__main__":
  absltest.main()
