"""`save`: orbax writes the arrays into a staging directory; it is published."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from alberta._src.checkpoint import digest
from alberta._src.checkpoint import layout
from alberta._src.checkpoint import metadata as metadata_lib
from alberta._src.checkpoint import publish
from alberta._src.checkpoint import staging as staging_lib

Array = jax.Array


def _disk_full(error: BaseException, directory: str) -> bool:
  """Whether `error` came from a full disk, told by errno ENOSPC.

  An OSError in the exception chain carries its errno; TensorStore reports
  its write errors as text only, so then the filesystem is asked: a 1 MiB
  allocation beside the failed save that fails with ENOSPC says it is full.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return error.errno == errno.ENOSPC
    error = error.__cause__ or error.__context__
  try:
    with tempfile.TemporaryFile(dir=directory) as probe:
      os.posix_fallocate(probe.fileno(), 0, 1 << 20)
  except OSError as e:
    return e.errno == errno.ENOSPC
  return False


def _write_arrays(
    ocp: Any,
    staging: str,
    arrays: Mapping[str, Any],
    progress: Callable[[int, float], None] | None,
    progress_every_s: float,
) -> None:
  """Writes the arrays with orbax into `staging`, reporting progress.

  With `progress`, orbax runs in a worker thread and `progress` in the
  calling thread, so whatever `progress` raises (or a Ctrl-C) stops the save
  here. Orbax's writes cannot be cancelled: the worker is waited for before
  the exception propagates, so the cleanup that follows removes everything
  it wrote (a second Ctrl-C stops the wait).
  """

  def write():
    with layout.checkpointer(ocp) as checkpointer:
      checkpointer.save(staging, dict(arrays))
      checkpointer.wait_until_finished()

  if progress is None:
    write()
    return
  failure = []

  def run():
    try:
      write()
    except BaseException as e:  # pylint: disable=broad-exception-caught
      failure.append(e)

  worker = threading.Thread(target=run, name="alberta-save-write", daemon=True)
  start = time.monotonic()
  worker.start()
  try:
    while True:
      worker.join(progress_every_s)
      if not worker.is_alive():
        break
      progress(staging_lib.tree_bytes(staging), time.monotonic() - start)
  except BaseException:
    with contextlib.suppress(BaseException):
      worker.join()
    raise
  if failure:
    raise failure[0]


def _check_storable(name: str, dtype: Any) -> None:
  """Raises unless TensorStore, which writes orbax's arrays, has `dtype`."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  try:
    ts.dtype(dtype.name)
  except ValueError as e:
    raise TypeError(
        f"arrays[{name!r}] has dtype {dtype.name}, which TensorStore (what "
        f"orbax writes arrays with) cannot store ({e})."
    ) from e


def _check_arrays(arrays: Any) -> dict[str, Any]:
  if not isinstance(arrays, Mapping):
    arrays = {"matrix": arrays}
  if not arrays:
    raise ValueError("arrays is empty: a checkpoint holds at least one array.")
  for name, a in arrays.items():
    if not isinstance(name, str) or not name or "/" in name:
      raise TypeError(
          f"array names must be non-empty strings without '/', got {name!r}."
      )
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
      raise TypeError(
          f"arrays[{name!r}] must be a jax.Array or a NumPy "
          f"array, not {type(a).__name__}."
      )
    _check_storable(name, digest.check_dtype(name, a.dtype))
    if not a.size:
      raise ValueError(
          f"arrays[{name!r}] has shape {tuple(a.shape)}, no elements: orbax "
          "cannot store an array without elements; save the shape in "
          "metadata instead."
      )
  return dict(arrays)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)


def _broadcast(status: int) -> int:
  """Process 0's `status` on every process."""
  if jax.process_count() == 1:
    return status
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return int(np.asarray(multihost_utils.broadcast_one_to_all(np.int32(status))))


def save(
    path: str | os.PathLike[str],
    arrays: Array | Mapping[str, Array],
    metadata: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, float], None] | None = None,
    progress_every_s: float = 2.0,
) -> str:
  """Saves arrays and their metadata as a checkpoint directory at `path`.

  Every process of a multi-host run must call this with the same arguments;
  each writes the shards it holds. Orbax writes the arrays into one staging
  directory beside `path`, `alberta.json` goes in last, and the directory is
  then published at `path` by the no-replace rename of
  `alberta._src.checkpoint.publish`, which re-checks the rules of
  `check_output` atomically at that instant. Any failure (including a full
  disk and KeyboardInterrupt) removes the staging directory before it
  propagates. Everything `save` refuses, it refuses before writing anything.

  Args:
    path: the checkpoint directory to create. Missing parents are created.
    arrays: a `jax.Array` (saved as `"matrix"`), or a non-empty mapping of
      names to arrays (e.g. an ELL matrix's `values` and `indices`): boolean,
      integer or floating dtypes of 1, 2, 4 or 8 bytes per element in native
      byte order; 64-bit ones only with `jax_enable_x64` on.
    metadata: JSON-serializable facts about the arrays, under string keys
      other than alberta.json's own (`metadata.RESERVED`), stored in
      `alberta.json` (the launcher stores what is needed to recompute them).
    overwrite: replace an existing checkpoint (see `is_checkpoint`) or empty
      directory at `path`. Nothing else is ever replaced.
    progress: called as `progress(bytes_on_disk, seconds)` every
      `progress_every_s` seconds while the shards are written (bytes of the
      staging directory visible from this host, after compression), in the
      calling thread; an exception it raises aborts the save.
    progress_every_s: interval between `progress` calls.

  Returns:
    `path`, absolute.

  Raises:
    FileExistsError: as in `check_output`, checked first and again at the
      publish (something appeared at `path` meanwhile, e.g. a concurrent
      save).
    PermissionError: as in `check_output`.
    OSError: the disk filled up (errno ENOSPC, the message names `path`).
    TypeError: an array's dtype cannot be saved exactly (see above), an
      array name is not a string, or `metadata` is not a mapping of strings
      to JSON values.
    ValueError: `arrays` is empty or holds an array without elements (orbax
      stores none), or `metadata` uses a reserved key.
    ImportError: orbax-checkpoint is not installed.
  """
  ocp = layout.orbax()
  path = layout.check_output(path, overwrite)
  arrays = _check_arrays(arrays)
  user = metadata_lib.check_user_metadata(metadata)
  from alberta import __version__  # pylint: disable=g-import-not-at-top

  summaries = digest.summaries(arrays)
  info = metadata_lib.build(
      user,
      {
          name: {
              "shape": [int(d) for d in a.shape],
              "dtype": digest.check_dtype(name, a.dtype).name,
              **summaries[name],
          }
          for name, a in arrays.items()
      },
      dict(
          alberta_version=__version__,
          jax_version=jax.__version__,
          orbax_version=getattr(ocp, "__version__", "unknown"),
      ),
  )

  lead = jax.process_index() == 0
  parent = os.path.dirname(path)
  token = staging_lib.shared_token()
  staging = staging_lib.staging_path(path, token)
  if lead:
    os.makedirs(parent, exist_ok=True)
  _barrier(f"alberta_checkpoint_parent_{token}")

  def fail(error: BaseException, ours: os.stat_result | None):
    full = lead and _disk_full(error, parent)
    if lead:
      staging_lib.discard(staging, ours)
    if full:
      raise OSError(
          errno.ENOSPC,
          f"cannot save the checkpoint at {path}: No space left on device "
          "(nothing was saved; the partial checkpoint was removed)",
      ) from error
    raise error

  try:
    _write_arrays(ocp, staging, arrays, progress, progress_every_s)
  except BaseException as e:  # pylint: disable=broad-exception-caught
    fail(e, None)

  # Every process is past orbax's final barrier. Process 0 writes
  # alberta.json (what makes a directory a checkpoint, so it goes last) and
  # publishes; the others learn the outcome from its broadcast.
  status, error, ours = 0, None, None
  if lead:
    try:
      ours = os.lstat(staging)
      metadata_lib.write(
          os.path.join(staging, metadata_lib.METADATA_FILE), info
      )
      with publish.sigint_deferred():
        publish.publish(staging, path, overwrite)
      publish.fsync_dir(parent)
    except BaseException as e:  # pylint: disable=broad-exception-caught
      error = e
      status = (
          1
          if isinstance(e, FileExistsError)
          else 2
          if _disk_full(e, parent)
          else 3
      )
  status = _broadcast(status)
  if error is not None:
    fail(error, ours)
  if status == 2:
    raise OSError(
        errno.ENOSPC,
        f"cannot save the checkpoint at {path}: No space left on "
        "device (on process 0; nothing was saved)",
    )
  if status == 1:
    raise FileExistsError(
        f"{path}: process 0 could not commit the checkpoint: something "
        "appeared at the path while it was being written (see process 0's "
        "error); nothing was saved."
    )
  if status:
    raise RuntimeError(
        f"{path}: process 0 failed to commit the checkpoint (see its error); "
        "nothing was saved."
    )
  return path
