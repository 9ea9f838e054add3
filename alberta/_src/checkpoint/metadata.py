"""`alberta.json`: a checkpoint's metadata file, its schema and its digest.

The file is a JSON object: the caller's metadata (string keys), plus the
library's own fields, `RESERVED`: `format_version`, `arrays` (per array its
`shape`, `dtype`, `checksum` and, for 2-D floating arrays, `row_zeros`), the
versions that wrote it and `metadata_sha256`, the SHA-256 of the canonical
JSON of everything else. docs/CHECKPOINT.md describes every field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from alberta._src.checkpoint import digest

METADATA_FILE = "alberta.json"
# Bumped whenever the directory layout or the metadata schema changes. Version
# 2 added the per-array checksums and row-zero summaries and the metadata
# digest. Version 1 checkpoints (no checksums) are read only with verify=False.
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
DIGEST_FIELD = "metadata_sha256"
RESERVED = (
    "format_version",
    "arrays",
    "alberta_version",
    "jax_version",
    "orbax_version",
    DIGEST_FIELD,
)
_CHECKSUM_RE = re.compile(r"[0-9a-f]{16}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class ChecksumError(ValueError):
  """What a checkpoint holds is not what was saved (corrupted or edited)."""


def canonical(info: Mapping[str, Any]) -> str:
  return json.dumps(
      info, sort_keys=True, separators=(",", ":"), ensure_ascii=True
  )


def metadata_sha256(info: Mapping[str, Any]) -> str:
  """The digest `alberta.json` records of its own other fields."""
  body = {k: v for k, v in info.items() if k != DIGEST_FIELD}
  return hashlib.sha256(canonical(body).encode()).hexdigest()


def check_user_metadata(metadata: Any) -> dict[str, Any]:
  """The caller's metadata as a dict, or a clear error before any work."""
  if metadata is None:
    return {}
  if not isinstance(metadata, Mapping):
    raise TypeError(
        "metadata must be a mapping of strings to JSON values, "
        f"not {type(metadata).__name__}."
    )
  for key in metadata:
    if not isinstance(key, str):
      raise TypeError(
          f"metadata keys must be strings, got {key!r} of type "
          f"{type(key).__name__}."
      )
    if key in RESERVED:
      raise ValueError(
          f"metadata key {key!r} is reserved: alberta.json uses "
          f"{', '.join(RESERVED)} for its own fields; rename it."
      )
  try:
    canonical(metadata)
  except (TypeError, ValueError) as e:
    raise TypeError(
        "metadata must be JSON-serializable (numbers, "
        f"strings, lists, string-keyed objects): {e}"
    ) from e
  return dict(metadata)


def build(
    user: Mapping[str, Any],
    arrays: Mapping[str, Any],
    versions: Mapping[str, str],
) -> dict[str, Any]:
  """The content of `alberta.json`, as it will read back, digest included."""
  info = dict(
      user, format_version=FORMAT_VERSION, arrays=dict(arrays), **versions
  )
  # Hashed as it reads back (JSON turns tuples into lists).
  info = json.loads(canonical(info))
  info[DIGEST_FIELD] = metadata_sha256(info)
  return info


def write(path: str, info: Mapping[str, Any]) -> None:
  """Writes and fsyncs `info` as JSON at `path`."""
  with open(path, "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())


def read_bytes(checkpoint: str) -> bytes:
  """The bytes of `checkpoint`'s alberta.json, never through a link.

  Raises:
    FileNotFoundError: nothing at `checkpoint`.
    ValueError: no alberta.json (what an interrupted save leaves), or it is a
      symbolic link or not a regular file.
  """
  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(
        f"no alberta checkpoint at {checkpoint}: no such directory."
    )
  file = os.path.join(checkpoint, METADATA_FILE)
  try:
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
  except FileNotFoundError:
    raise ValueError(
        f"{checkpoint} is not a complete alberta checkpoint: it has no "
        f"{METADATA_FILE} (a save in progress or interrupted never leaves "
        "one)."
    ) from None
  except OSError as e:
    what = "a symbolic link" if os.path.islink(file) else e.strerror
    raise ValueError(
        f"{file} cannot be read: {what}; a checkpoint's "
        f"{METADATA_FILE} is a regular file."
    ) from e
  with os.fdopen(fd, "rb") as f:
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
      raise ValueError(f"{file} is not a regular file.")
    return f.read()


def parse(raw: bytes, file: str, verify: bool) -> dict[str, Any]:
  """Parses and validates the bytes of an alberta.json at `file`."""
  try:
    info = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ValueError(f"{file} is not valid JSON: {e}.") from e
  return validate(info, file, verify)


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _dtype_name(name: Any) -> np.dtype | None:
  """The dtype `name` spells exactly, if the digest reads it."""
  try:
    dtype = jnp.dtype(name) if isinstance(name, str) else None
  except (TypeError, ValueError):
    return None
  if dtype is None or dtype.name != name or digest.unreadable(dtype):
    return None
  return dtype


def _check_array(name: str, spec: Any, version: int, bad) -> None:
  where = f"arrays.{name}"
  if not isinstance(spec, dict):
    raise bad(where, f"must be an object with shape and dtype, not {spec!r}.")
  shape = spec.get("shape")
  if not isinstance(shape, list) or not all(
      _is_int(d) and d >= 0 for d in shape
  ):
    raise bad(
        f"{where}.shape",
        f"must be a list of non-negative integers, not {shape!r}.",
    )
  dtype = _dtype_name(spec.get("dtype"))
  if dtype is None:
    raise bad(
        f"{where}.dtype",
        "must name a boolean, integer or floating "
        f"dtype (e.g. 'float32'), not {spec.get('dtype')!r}.",
    )
  if version < 2:
    return
  checksum = spec.get("checksum")
  if not isinstance(checksum, str) or not _CHECKSUM_RE.fullmatch(checksum):
    raise bad(
        f"{where}.checksum",
        f"must be 16 lowercase hexadecimal digits, not {checksum!r}.",
    )
  if (
      len(shape) == 2
      and jnp.issubdtype(dtype, jnp.floating)
      and shape[0] * shape[1]
  ):
    zeros, (rows, cols) = spec.get("row_zeros"), shape
    if (
        not isinstance(zeros, dict)
        or set(zeros) != {"min", "max", "total"}
        or not all(_is_int(v) for v in zeros.values())
        or not 0 <= zeros["min"] <= zeros["max"] <= cols
        or not rows * zeros["min"] <= zeros["total"] <= rows * zeros["max"]
    ):
      raise bad(
          f"{where}.row_zeros",
          "must be {min, max, total} zero "
          f"counts consistent with shape {shape}, not {zeros!r}.",
      )


def validate(info: Any, file: str, verify: bool) -> dict[str, Any]:
  """Checks the schema (and with `verify`, the digest) of a parsed file."""

  def bad(field: str, problem: str) -> ValueError:
    return ValueError(f"{file}: field {field!r} {problem}")

  if not isinstance(info, dict):
    kind = {
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(info), "value")
    raise ValueError(f"{file} must hold a JSON object; it holds a JSON {kind}.")
  if "format_version" not in info:
    raise bad("format_version", "is missing.")
  version = info["format_version"]
  if not _is_int(version):
    raise bad("format_version", f"must be an integer, not {version!r}.")
  if version not in _READABLE_VERSIONS:
    raise ValueError(
        f"{file} has checkpoint format_version {version!r}; this alberta reads "
        f"format_version {FORMAT_VERSION} (and 1 with verify=False)."
    )
  if version < 2 and verify:
    raise ValueError(
        f"{file} has checkpoint format_version {version}, written before "
        "alberta recorded checksums, so its contents cannot be verified; "
        "pass verify=False to read it unverified, or save it again."
    )
  if "arrays" not in info:
    raise bad("arrays", "is missing.")
  arrays = info["arrays"]
  if not isinstance(arrays, dict):
    raise bad(
        "arrays",
        "must be an object of array names to specs, not "
        f"{type(arrays).__name__}.",
    )
  if not arrays:
    raise bad("arrays", "is empty: a checkpoint holds at least one array.")
  for name, spec in arrays.items():
    _check_array(name, spec, version, bad)
  if version >= 2:
    digest = info.get(DIGEST_FIELD)
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
      raise bad(
          DIGEST_FIELD,
          f"must be 64 lowercase hexadecimal digits, not {digest!r}.",
      )
    if verify and digest != metadata_sha256(info):
      raise ChecksumError(
          f"{file} does not match its own {DIGEST_FIELD}: the file was "
          "edited or corrupted after it was saved, so its metadata cannot be "
          "trusted. (verify=False reads it regardless.)"
      )
  return info
