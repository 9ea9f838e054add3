"""`restore` and `restore_metadata`: reading a checkpoint back, or raising.

Every failure reaches the caller as one of the documented exceptions, naming
the checkpoint and the file: FileNotFoundError (nothing there), ValueError
(not a complete checkpoint, malformed or damaged files; orbax's, TensorStore's
and JSON's own errors are wrapped in it), `ChecksumError` (a ValueError: the
numbers read are not those saved) and `ReplacedError` (a ValueError: another
save replaced, or someone removed, the checkpoint while it was read).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from alberta._src.checkpoint import digest
from alberta._src.checkpoint import layout
from alberta._src.checkpoint import metadata as metadata_lib

_FILE = metadata_lib.METADATA_FILE


class ReplacedError(ValueError):
  """The checkpoint was replaced (or removed) while it was being read."""


def restore_metadata(
    path: str | os.PathLike[str], *, verify: bool = True
) -> dict[str, Any]:
  """The metadata (`alberta.json`) of the checkpoint at `path`, validated.

  This reads `alberta.json` alone, without comparing it with the arrays
  beside it. For the metadata of the very arrays restored (the same save,
  verified together), use `restore(path, return_metadata=True)`.

  Args:
    path: the checkpoint directory.
    verify: check `alberta.json` against its own SHA-256 and refuse format
      version 1 (which has no checksums). With False, a version-1 checkpoint
      is read and an edited file accepted, as long as its schema is valid.

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: `path` is not a complete alberta checkpoint, or its
      `alberta.json` is a symbolic link, is not valid JSON or misses or
      mistypes a field (the message names the file and the field).
    ChecksumError: (a ValueError) `alberta.json` does not match its digest.
  """
  path = os.path.abspath(os.fspath(path))
  return metadata_lib.parse(
      metadata_lib.read_bytes(path), os.path.join(path, _FILE), verify
  )


def _identity(path: str) -> tuple[int, int] | None:
  try:
    st = os.stat(path)
  except OSError:
    return None
  return st.st_dev, st.st_ino


def _changed(path: str, identity: tuple[int, int] | None, raw: bytes) -> bool:
  """Whether `path` is no longer the directory whose alberta.json was `raw`."""
  if _identity(path) != identity:
    return True  # A publish renames a new directory into place.
  try:
    return metadata_lib.read_bytes(path) != raw
  except (OSError, ValueError):
    return True


def _read(
    ocp: Any, path: str, specs: dict[str, Any], sharding: Any, verify: bool
) -> dict[str, Any]:
  """The arrays as orbax reads them, checked against `specs`."""
  layout.orbax_mismatch(ocp, path, specs)
  target = {
      name: jax.ShapeDtypeStruct(
          tuple(spec["shape"]), jnp.dtype(spec["dtype"]), sharding=sharding
      )
      for name, spec in specs.items()
  }
  try:
    with layout.checkpointer(ocp) as checkpointer:
      arrays = dict(checkpointer.restore(path, target))
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise ValueError(
        f"{path}: orbax cannot read the checkpoint's arrays (from "
        f"{layout.ORBAX_FILES}) ({type(e).__name__}: {e}); the checkpoint is "
        "damaged."
    ) from e
  if not verify:
    return arrays
  found = digest.summaries(arrays)
  for name, spec in specs.items():
    for field in ("checksum", "row_zeros"):
      if found[name].get(field) != spec.get(field):
        raise metadata_lib.ChecksumError(
            f"{path}: array {name!r} read back with {field} "
            f"{found[name].get(field)}, but {_FILE} records "
            f"{spec.get(field)}: the checkpoint's data is corrupted."
        )
  return arrays


def restore(
    path: str | os.PathLike[str],
    sharding: Any = None,
    *,
    verify: bool = True,
    return_metadata: bool = False,
) -> Any:
  """Reads a checkpoint saved by `save` (or `scripts/init_large.py`).

  Args:
    path: the checkpoint directory.
    sharding: a `jax.sharding.Sharding` to read the matrix straight into
      (each device reads only its own shard); None puts the whole matrix on
      the first local device. Any sharding compatible with the shape works,
      whatever the mesh the checkpoint was written from.
    verify: recompute every array's checksum (and row-zero summary) on device
      from what was read and compare with `alberta.json`, and check
      `alberta.json` against its digest: what is returned is then the saved
      numbers. False skips both (and reads format version 1) and returns
      UNVERIFIED numbers: a corrupted data file can decode to other numbers
      without any error. The schema and the shapes and dtypes orbax stored
      are checked either way.
    return_metadata: also return the `alberta.json` the arrays were read and
      verified against (one read: the same save's metadata).

  Returns:
    The matrix as a `jax.Array` when the checkpoint holds one array (the
    default `"matrix"`), else a dict of the named arrays, all read with
    `sharding`; with `return_metadata`, a pair (that, metadata).

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: `path` is not a complete alberta checkpoint, its
      `alberta.json` is malformed or disagrees with what orbax stored, orbax
      cannot read a file of it (the message names the checkpoint and the
      files), or it holds 64-bit arrays and `jax_enable_x64` is off.
    ChecksumError: (a ValueError) an array read back is not the array saved;
      the message names the checkpoint and the array.
    ReplacedError: (a ValueError) the checkpoint was replaced or removed
      while it was read (read it again).
    ImportError: orbax-checkpoint is not installed.
  """
  path = os.path.abspath(os.fspath(path))
  identity = _identity(path)
  raw = metadata_lib.read_bytes(path)
  info = metadata_lib.parse(raw, os.path.join(path, _FILE), verify)
  specs = info["arrays"]
  for name, spec in specs.items():
    if jnp.dtype(spec["dtype"]).itemsize == 8 and not jax.config.jax_enable_x64:
      raise ValueError(
          f"{os.path.join(path, _FILE)}: array {name!r} is {spec['dtype']}, "
          "which JAX holds only with jax_enable_x64 on (else as 32 bits: "
          "other numbers); enable it to restore this checkpoint."
      )
  ocp = layout.orbax()
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    arrays = _read(ocp, path, specs, sharding, verify)
  except ValueError as e:
    if _changed(path, identity, raw):
      raise ReplacedError(
          f"{path} was replaced or removed while it was being read (another "
          "save published a new checkpoint there); read it again. "
          f"({type(e).__name__}: {e})"
      ) from e
    raise
  if not verify and _changed(path, identity, raw):
    raise ReplacedError(
        f"{path} was replaced or removed while it was being read (another "
        "save published a new checkpoint there); read it again."
    )
  result = arrays["matrix"] if set(arrays) == {"matrix"} else arrays
  return (result, info) if return_metadata else result
