"""What a checkpoint is, and which targets a save may take.

A checkpoint is a directory whose `alberta.json` is a regular file that
parses and validates and whose orbax layout holds exactly the arrays it
lists, with their shapes and dtypes. `not_a_checkpoint` says why a path is
not one; `check_output` and the publish's judgment of what it swapped out
use that one rule, so `overwrite` replaces only a checkpoint or an empty
directory.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from alberta._src.checkpoint import metadata
from alberta._src.checkpoint import staging


def orbax() -> Any:
  """orbax.checkpoint, or an ImportError that says how to install it."""
  try:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "alberta.checkpoint needs orbax-checkpoint, which is not installed; "
        'install it with `pip install "alberta[checkpoint]"` (or '
        "`pip install orbax-checkpoint`)."
    ) from e
  return ocp


def checkpointer(ocp: Any, local: bool = False) -> Any:
  """The orbax checkpointer every save, restore and estimate uses.

  It writes straight into the directory it is given and marks it finished
  with its commit file (no temporary directory of its own): alberta's staging
  directory is the one staging layer, published by `publish`.

  Args:
    ocp: orbax.checkpoint.
    local: for what one process does alone (read metadata, measure a
      sample): orbax then synchronizes with no other process.
  """
  options = {}
  if local:
    me = jax.process_index()
    options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}
    )
  return ocp.StandardCheckpointer(
      temporary_path_class=ocp.path.atomicity.CommitFileTemporaryPath, **options
  )


# What orbax reads of a checkpoint (its data store: manifest.ocdbt and d/).
ORBAX_FILES = "_METADATA, _sharding, array_metadatas/, manifest.ocdbt, d/"


def orbax_mismatch(ocp: Any, path: str, specs: Mapping[str, Any]) -> None:
  """Raises unless orbax stores exactly `specs`' arrays (never a cast).

  Raises:
    ValueError: orbax cannot read its metadata (the files named), or it
      stores other arrays, shapes or dtypes than alberta.json lists.
  """
  file = os.path.join(path, metadata.METADATA_FILE)
  try:
    with checkpointer(ocp, local=True) as reader:
      tree = reader.metadata(path).item_metadata.tree
    stored = {
        name: (tuple(m.shape), jnp.dtype(m.dtype).name)
        for name, m in dict(tree).items()
    }
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise ValueError(
        f"{path}: orbax cannot read the checkpoint's array metadata (from "
        f"{ORBAX_FILES}) ({type(e).__name__}: {e}); the checkpoint is "
        "damaged."
    ) from e
  if set(stored) != set(specs):
    raise ValueError(
        f"{file}: field 'arrays' lists {sorted(specs)}, but the checkpoint "
        f"stores {sorted(stored)}."
    )
  for name, spec in specs.items():
    shape, dtype = stored[name]
    if tuple(spec["shape"]) != shape:
      raise ValueError(
          f"{file}: field 'arrays.{name}.shape' is {spec['shape']}, but the "
          f"checkpoint stores shape {list(shape)}."
      )
    if spec["dtype"] != dtype:
      raise ValueError(
          f"{file}: field 'arrays.{name}.dtype' is {spec['dtype']!r}, but the "
          f"checkpoint stores {dtype!r} (it is never cast)."
      )


def not_a_checkpoint(path: str) -> str | None:
  """Why `path` is not a complete alberta checkpoint; None when it is."""
  try:
    info = metadata.parse(
        metadata.read_bytes(path),
        os.path.join(path, metadata.METADATA_FILE),
        verify=False,
    )
    orbax_mismatch(orbax(), path, info["arrays"])
  except (OSError, ValueError, ImportError) as e:
    return str(e)
  return None


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a complete alberta checkpoint directory.

  That is: its `alberta.json` is a regular file that parses and validates,
  and orbax's layout beside it holds exactly the arrays it lists.
  """
  return not_a_checkpoint(os.path.abspath(os.fspath(path))) is None


def not_replaceable(path: str) -> str | None:
  """Why `overwrite` may not replace `path` (not followed); None if it may."""
  st = os.lstat(path)
  if stat.S_ISLNK(st.st_mode):
    return f"it is a symbolic link (to {os.readlink(path)})"
  if not stat.S_ISDIR(st.st_mode):
    return "it is a file, not a directory"
  if not os.listdir(path):
    return None
  why = not_a_checkpoint(path)
  return None if why is None else f"it is not an alberta checkpoint: {why}"


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_output(path: str | os.PathLike[str], overwrite: bool = False) -> str:
  """Checks that a checkpoint can be saved at `path`; creates nothing.

  `save` enforces the same rules again, atomically, when it publishes.

  Args:
    path: the target directory.
    overwrite: allow replacing an existing checkpoint (or empty directory)
      at `path`.

  Returns:
    `path`, absolute.

  Raises:
    FileExistsError: `path` is a symbolic link (never replaced, nor its
      target written), or `path` exists and `overwrite` is False, or it
      exists and is neither an alberta checkpoint (see `is_checkpoint`) nor
      an empty directory, so `overwrite` never deletes unrelated data; the
      message names the path and what made it not a checkpoint.
    PermissionError: the checkpoint and its staging directory cannot be
      created beside `path`.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.islink(path):
    raise FileExistsError(
        f"{path} is a symbolic link (to {os.readlink(path)}); refusing to "
        "save there, with or without overwrite=True (--overwrite): a "
        "checkpoint never replaces a link nor writes through it. Pass the "
        "link's target itself, or remove the link."
    )
  if os.path.lexists(path):
    if not overwrite:
      raise FileExistsError(
          f"{path} already exists; pass overwrite=True (--overwrite) to "
          "replace it, or choose another path."
      )
    why = not_replaceable(path)
    if why:
      raise FileExistsError(
          f"{path} exists and is not an alberta checkpoint nor an empty "
          f"directory ({why}); refusing to replace it even with "
          "overwrite=True (--overwrite)."
      )
  # The staging directory is created in the parent (or its nearest existing
  # ancestor, when missing parents are created), so that is what must be
  # writable. os.access alone is not enough (root, read-only mounts).
  anchor = _nearest_existing(os.path.dirname(path))
  if not os.path.isdir(anchor):
    raise PermissionError(f"cannot create {path}: {anchor} is not a directory.")
  if not os.access(anchor, os.W_OK | os.X_OK):
    raise PermissionError(f"cannot create {path}: {anchor} is not writable.")
  # Beside `path`, the probe takes a name `stale_staging` lists, so that a
  # process killed between its mkdir and rmdir leaves nothing that
  # `remove_staging` (the launcher's, on a signal) does not remove.
  if anchor == os.path.dirname(path):
    probe = staging.retired_path(path)
  else:
    probe = os.path.join(
        anchor, f".alberta-probe-{os.getpid()}-{time.time_ns()}"
    )
  try:
    os.mkdir(probe)
    os.rmdir(probe)
  except OSError as e:
    raise PermissionError(
        f"cannot create {path}: {anchor} is not writable ({e.strerror})."
    ) from e
  return path
