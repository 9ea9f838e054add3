"""Saving and restoring generated matrices with orbax-checkpoint.

A checkpoint is a directory holding an orbax PyTree checkpoint of the arrays
(every process writes the shards it holds, in parallel) plus `alberta.json`,
the metadata needed to recompute the matrix. It is written under a hidden
staging name beside its target and renamed into place only once complete, and
`alberta.json` is written last, so a directory at the target is always a whole
checkpoint: an interrupted save leaves at most a `.NAME.alberta-tmp-*` sibling,
never anything at the target itself.

orbax-checkpoint is an optional dependency (`pip install "alberta[checkpoint]"`);
it is imported only when a checkpoint is saved or restored.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

METADATA_FILE = "alberta.json"
# Bumped whenever the directory layout or the metadata schema changes.
FORMAT_VERSION = 1
_STAGING_INFIX = ".alberta-tmp-"
_RETIRED_INFIX = ".alberta-old-"


def _orbax():
  """orbax.checkpoint, or an ImportError that says how to install it."""
  try:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "alberta.checkpoint needs orbax-checkpoint, which is not installed; "
        "install it with `pip install \"alberta[checkpoint]\"` (or "
        "`pip install orbax-checkpoint`).") from e
  return ocp


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a complete alberta checkpoint directory."""
  return os.path.isfile(os.path.join(path, METADATA_FILE))


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_output(path: str | os.PathLike[str], overwrite: bool = False) -> str:
  """Checks that a checkpoint can be saved at `path`; creates nothing.

  Args:
    path: the target directory.
    overwrite: allow replacing an existing checkpoint at `path`.

  Returns:
    `path`, absolute.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False, or it exists and
      is neither an alberta checkpoint nor an empty directory (so `overwrite`
      never deletes unrelated data).
    PermissionError: the checkpoint and its staging directory cannot be
      created beside `path`.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.lexists(path):
    if not overwrite:
      raise FileExistsError(
          f"{path} already exists; pass overwrite=True (--overwrite) to "
          f"replace it, or choose another path.")
    if not os.path.isdir(path) or not (
        is_checkpoint(path) or not os.listdir(path)):
      raise FileExistsError(
          f"{path} exists and is not an alberta checkpoint (no {METADATA_FILE}) "
          f"nor an empty directory; refusing to replace it even with "
          f"overwrite=True (--overwrite).")
  # The staging directory is created in the parent (or its nearest existing
  # ancestor, when missing parents are created), so that is what must be
  # writable. os.access alone is not enough (root, read-only mounts).
  anchor = _nearest_existing(os.path.dirname(path))
  if not os.path.isdir(anchor):
    raise PermissionError(
        f"cannot create {path}: {anchor} is not a directory.")
  if not os.access(anchor, os.W_OK | os.X_OK):
    raise PermissionError(f"cannot create {path}: {anchor} is not writable.")
  try:
    probe = os.path.join(anchor, f".alberta-probe-{os.getpid()}-{time.time_ns()}")
    os.mkdir(probe)
    os.rmdir(probe)
  except OSError as e:
    raise PermissionError(
        f"cannot create {path}: {anchor} is not writable ({e.strerror}).") from e
  return path


def _shared_token() -> str:
  """A random name suffix, the same on every process of a multi-host run."""
  words = np.frombuffer(os.urandom(8), np.uint32)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    words = np.asarray(multihost_utils.broadcast_one_to_all(words))
  return "".join(f"{int(w):08x}" for w in words)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _tree_bytes(prefix: str) -> int:
  """Bytes under every path starting with `prefix` (the staging trees)."""
  parent, stem = os.path.split(prefix)
  total = 0
  try:
    entries = [e for e in os.listdir(parent) if e.startswith(stem)]
  except OSError:
    return 0
  for entry in entries:
    for root, _, files in os.walk(os.path.join(parent, entry)):
      for f in files:
        try:
          total += os.stat(os.path.join(root, f)).st_size
        except OSError:
          pass  # Orbax renames and deletes files while it writes.
  return total


def stale_staging(path: str | os.PathLike[str]) -> list[str]:
  """Staging directories that interrupted saves to `path` left behind."""
  path = os.path.abspath(os.fspath(path))
  parent, name = os.path.split(path)
  try:
    entries = os.listdir(parent)
  except OSError:
    return []
  return sorted(
      os.path.join(parent, e) for e in entries
      if e.startswith(f".{name}{_STAGING_INFIX}") or
      e.startswith(f".{name}{_RETIRED_INFIX}"))


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())


def _array_specs(arrays: Mapping[str, Array]) -> dict[str, dict[str, Any]]:
  return {name: {"shape": list(a.shape), "dtype": jnp.dtype(a.dtype).name}
          for name, a in arrays.items()}


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
  each writes the shards it holds. Nothing appears at `path` until the whole
  checkpoint is written: it is staged beside `path` and renamed into place.

  Args:
    path: the checkpoint directory to create. Missing parents are created.
    arrays: a `jax.Array` (saved as `"matrix"`), or a mapping of names to
      arrays (e.g. an ELL matrix's `values` and `indices`).
    metadata: JSON-serializable facts about the arrays, stored in
      `alberta.json` (the launcher stores what is needed to recompute them).
    overwrite: replace an existing checkpoint at `path`. An existing path
      that is not an alberta checkpoint (or an empty directory) is never
      replaced.
    progress: called as `progress(bytes_on_disk, seconds)` every
      `progress_every_s` seconds while the shards are written (bytes of the
      whole checkpoint visible from this host, after compression).
    progress_every_s: interval between `progress` calls.

  Returns:
    `path`, absolute.

  Raises:
    FileExistsError, PermissionError: as in `check_output`.
    ImportError: orbax-checkpoint is not installed.
  """
  ocp = _orbax()
  path = check_output(path, overwrite)
  if not isinstance(arrays, Mapping):
    arrays = {"matrix": arrays}
  arrays = dict(arrays)
  from alberta import __version__  # pylint: disable=g-import-not-at-top
  info = dict(metadata or {})
  info.update(
      format_version=FORMAT_VERSION,
      arrays=_array_specs(arrays),
      alberta_version=__version__,
      jax_version=jax.__version__,
      orbax_version=getattr(ocp, "__version__", "unknown"),
  )
  json.dumps(info)  # Fail before writing anything if it is not JSON.

  parent, name = os.path.split(path)
  token = _shared_token()
  staging = os.path.join(parent, f".{name}{_STAGING_INFIX}{token}")
  if jax.process_index() == 0:
    os.makedirs(parent, exist_ok=True)
  _barrier(f"alberta_checkpoint_parent_{token}")

  done = threading.Event()
  monitor = None
  if progress is not None:
    start = time.monotonic()

    def watch():
      while not done.wait(progress_every_s):
        progress(_tree_bytes(staging), time.monotonic() - start)

    monitor = threading.Thread(target=watch, name="alberta-save-progress",
                               daemon=True)
    monitor.start()
  try:
    # Orbax writes into its own temporary directory beside `staging` and
    # renames it to `staging` once every process has finished its shards.
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(staging, arrays)
      checkpointer.wait_until_finished()
  finally:
    done.set()
    if monitor is not None:
      monitor.join()

  if jax.process_index() == 0:
    # alberta.json is what makes a directory a checkpoint, so it goes last,
    # and the rename publishes the directory whole.
    _write_json(os.path.join(staging, METADATA_FILE), info)
    retired = None
    if os.path.lexists(path):
      retired = os.path.join(parent, f".{name}{_RETIRED_INFIX}{token}")
      os.rename(path, retired)
    os.rename(staging, path)
    _fsync_dir(parent)
    if retired is not None:
      shutil.rmtree(retired, ignore_errors=True)
  _barrier(f"alberta_checkpoint_commit_{token}")
  return path


def restore_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
  """The metadata (`alberta.json`) of the checkpoint at `path`.

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: `path` is not a complete alberta checkpoint.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no alberta checkpoint at {path}: no such directory.")
  if not is_checkpoint(path):
    raise ValueError(
        f"{path} is not a complete alberta checkpoint: it has no "
        f"{METADATA_FILE} (a save in progress or interrupted never leaves one).")
  with open(os.path.join(path, METADATA_FILE)) as f:
    info = json.load(f)
  version = info.get("format_version")
  if version != FORMAT_VERSION:
    raise ValueError(
        f"{path} has checkpoint format_version {version!r}; this alberta reads "
        f"version {FORMAT_VERSION}.")
  return info


def restore(path: str | os.PathLike[str], sharding: Any = None) -> Any:
  """Reads a checkpoint saved by `save` (or `scripts/init_large.py`).

  Args:
    path: the checkpoint directory.
    sharding: a `jax.sharding.Sharding` to read the matrix straight into
      (each device reads only its own shard); None puts the whole matrix on
      the first local device. Any sharding compatible with the shape works,
      whatever the mesh the checkpoint was written from.

  Returns:
    The matrix as a `jax.Array` when the checkpoint holds one array (the
    default `"matrix"`), else a dict of the named arrays, all read with
    `sharding`. `restore_metadata(path)` gives what it was generated from.

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: `path` is not a complete alberta checkpoint.
    ImportError: orbax-checkpoint is not installed.
  """
  info = restore_metadata(path)
  ocp = _orbax()
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {
      name: jax.ShapeDtypeStruct(tuple(spec["shape"]), jnp.dtype(spec["dtype"]),
                                 sharding=sharding)
      for name, spec in info["arrays"].items()
  }
  with ocp.StandardCheckpointer() as checkpointer:
    arrays = checkpointer.restore(os.path.abspath(os.fspath(path)), target)
  if set(arrays) == {"matrix"}:
    return arrays["matrix"]
  return dict(arrays)
