"""Saving and restoring generated matrices with orbax-checkpoint.

A checkpoint is a directory holding an orbax PyTree checkpoint of the arrays
(every process writes the shards it holds, in parallel) plus `alberta.json`,
the metadata needed to recompute the matrix and, per array, a checksum of its
contents. docs/CHECKPOINT.md describes the format in full.

Writing. The checkpoint is written under a hidden staging name beside its
target, `.NAME.alberta-tmp-TOKEN` (orbax first writes into
`.NAME.alberta-tmp-TOKEN.orbax-checkpoint-tmp` and renames it), `alberta.json`
goes in last, and the whole directory is then published at the target by one
rename. An interrupted or failed save removes its staging directories before
it re-raises (a killed process leaves them; `stale_staging` lists them, and
`remove_staging` removes what orbax's threads still write after a failure); a
directory at the target is always a whole checkpoint.

Commit protocol. `check_output`'s rules (nothing is replaced without
`overwrite`; with it, only an alberta checkpoint or an empty directory; never a
symbolic link or a file) are checked before any work, and enforced again,
atomically, at the instant of the rename, so a directory or file that appears
at the target while the arrays are written is never replaced:

* Without `overwrite`: `renameat2(staging, target, RENAME_NOREPLACE)` (Linux
  3.15+, through ctypes): the kernel refuses with EEXIST if anything, even a
  dangling symbolic link, exists at the target at that instant. Of two savers
  racing for one new path exactly one wins; the other raises FileExistsError
  and removes its staging directory.
* With `overwrite`: the staging directory is first renamed with
  RENAME_NOREPLACE (the target is still absent: done). Otherwise it is
  swapped with the target by `renameat2(..., RENAME_EXCHANGE)`, one atomic
  step, and what was swapped out (now under the private staging name, where
  nobody else looks) is inspected without following links: an empty
  directory is removed with `rmdir` (which itself refuses, atomically, a
  directory that is no longer empty), a directory holding `alberta.json` is
  retired and deleted, and anything else (a non-checkpoint directory, a file,
  a symbolic link) is swapped straight back by a second RENAME_EXCHANGE and
  FileExistsError is raised. Only what was at the target at the instant of
  the swap is ever judged or deleted, so there is no check-then-act window.
  The one thing no rename scheme can rule out is a process that still holds
  an old checkpoint directory open writing into it while it is deleted.
* Where renameat2 is missing (not Linux, old libc) or the filesystem refuses
  the flags (EINVAL, ENOSYS), a portable fallback keeps the same guarantees
  except for a window that can only lose an empty directory: the target name
  is reserved with `mkdir` (atomic, fails on anything there, links included)
  and the staging directory renamed over that reservation (POSIX rename
  replaces only an empty directory and fails on a non-empty one, a file or a
  link). With `overwrite` the existing entry is first renamed aside (a link
  moves as a link), judged there as above, and put back with a no-replace
  move if it may not be replaced. A third party who deletes the reservation
  and puts an empty directory in its place during the microseconds between
  mkdir and rename would see that empty directory replaced; nothing holding
  data can be.

SIGINT is deferred (handled once the commit is done) during the few renames
of the commit, so Ctrl-C cannot strand a swapped-out directory under a
staging name.

Multi-host: every process writes its shards; process 0 alone writes
`alberta.json` and commits, then broadcasts the outcome, so the other
processes raise when the commit failed instead of returning success.

Integrity: see `_digest`. `save` records a 64-bit checksum of every array,
computed on device shard by shard (no array is gathered to the host), and,
for 2-D floating arrays, the minimum, maximum and total of the per-row zero
counts; `alberta.json` itself carries a SHA-256 of its own content.
`restore` validates `alberta.json`, checks that its shapes and dtypes are
what orbax stored (never casting), and recomputes the checksums of what it
read with the same on-device function; any disagreement raises.

orbax-checkpoint is an optional dependency (`pip install "alberta[checkpoint]"`);
it is imported only when a checkpoint is saved or restored.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import math
import os
import re
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

METADATA_FILE = "alberta.json"
# Bumped whenever the directory layout or the metadata schema changes. Version
# 2 added the per-array checksums and row-zero summaries and the metadata
# digest. Version 1 checkpoints (no checksums) are read only with verify=False.
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_STAGING_INFIX = ".alberta-tmp-"
_RETIRED_INFIX = ".alberta-old-"
_METADATA_DIGEST = "metadata_sha256"
_CHECKSUM_RE = re.compile(r"[0-9a-f]{16}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class ChecksumError(ValueError):
  """What a checkpoint holds is not what was saved (corrupted or edited)."""


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

  `save` enforces the same rules again, atomically, when it commits.

  Args:
    path: the target directory.
    overwrite: allow replacing an existing checkpoint at `path`.

  Returns:
    `path`, absolute.

  Raises:
    FileExistsError: `path` is a symbolic link (never replaced, nor its
      target written), or `path` exists and `overwrite` is False, or it
      exists and is neither an alberta checkpoint nor an empty directory (so
      `overwrite` never deletes unrelated data).
    PermissionError: the checkpoint and its staging directory cannot be
      created beside `path`.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.islink(path):
    raise FileExistsError(
        f"{path} is a symbolic link (to {os.readlink(path)}); refusing to "
        f"save there, with or without overwrite=True (--overwrite): a "
        f"checkpoint never replaces a link nor writes through it. Pass the "
        f"link's target itself, or remove the link.")
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


# --------------------------------------------------------------------------
# Checksums, computed where the data lives.

# Per lane: seed, then the xorshift-multiply mixer's shifts and multipliers.
# Lane 0 is Wellons' "lowbias32", lane 1 MurmurHash3's fmix32; both are
# bijections of uint32 (xorshifts and odd multipliers are invertible).
_LANES = ((0x243F6A88, 16, 0x7FEB352D, 15, 0x846CA68B, 16),
          (0x85A308D3, 16, 0x85EBCA6B, 13, 0xC2B2AE35, 16))


def _mix(h: Array, lane: tuple[int, ...]) -> Array:
  _, s1, m1, s2, m2, s3 = lane
  h = h ^ (h >> s1)
  h = h * jnp.uint32(m1)
  h = h ^ (h >> s2)
  h = h * jnp.uint32(m2)
  return h ^ (h >> s3)


def _words(x: Array) -> list[Array]:
  """The element bit patterns as uint32 words (two for 64-bit types)."""
  if x.dtype == jnp.bool_:
    return [x.astype(jnp.uint32)]
  size = jnp.dtype(x.dtype).itemsize
  if size == 8:
    pair = lax.bitcast_convert_type(x, jnp.uint32)  # Shape x.shape + (2,).
    return [pair[..., 0], pair[..., 1]]
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
  return [lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)]


def _add64(a: tuple[Array, Array], b: tuple[Array, Array]):
  lo = a[0] + b[0]
  return lo, a[1] + b[1] + (lo < a[0]).astype(jnp.uint32)


def _sum64(values: Array) -> tuple[Array, Array]:
  """The exact sum of a uint32 vector as (low, high) uint32 words."""
  return lax.reduce((values, jnp.zeros_like(values)),
                    (jnp.uint32(0), jnp.uint32(0)), _add64, (0,))


@jax.jit
def _digest(x: Array) -> dict[str, Array]:
  """The checksum of `x` and, for 2-D floating `x`, its row-zero counts.

  Construction: for lane k in {0, 1}, every element contributes the term
      t_k = m_k(... m_k(m_k(m_k(s_k ^ i_0) ^ i_1) ... ^ w_0) ... ^ w_last)
  where (i_0, i_1, ...) is the element's global index (one uint32 per
  dimension), (w_0, ...) the uint32 words of its bit pattern (16- and 8-bit
  types zero-extended, 64-bit types split in two words), s_k a seed and m_k a
  32-bit mixer (Wellons' lowbias32 for lane 0, MurmurHash3's fmix32 for
  lane 1). The lane value is the sum of all terms mod 2**32; the checksum is
  the two lanes, 64 bits.

  Properties. The sum is exact integer arithmetic, so it does not depend on
  the order of the reduction, hence not on the sharding: XLA reduces each
  shard where it lives and all-reduces the partial sums to one replicated
  scalar; no array is gathered. For a fixed index each term is a bijection of
  the element's bits, so changing one element (any single-bit flip, any
  change to one value) changes exactly one term and therefore both lane sums,
  always. Changes to several elements (a corrupted compressed block) go
  undetected only if both lane sums collide, about 2**-64 for mixers that
  behave like random functions. Moving a value to another index changes its
  term too: the checksum is order-sensitive.

  Reference: C. Wellons, "Prospecting for Hash Functions" (2018), for
  lowbias32; A. Appleby, MurmurHash3 (2011), for fmix32.

  Args:
    x: an array of a boolean, integer or floating dtype of 1, 2, 4 or 8 bytes.

  Returns:
    {"checksum": uint32[2]} plus, when `x` is 2-D floating and not empty,
    {"row_zeros": uint32[4]} = minimum and maximum zeros per row (an entry is
    a zero when it equals 0, so -0.0 counts) and the total as (low, high)
    32-bit words.
  """
  words = _words(x)
  index = [lax.broadcasted_iota(jnp.uint32, x.shape, d) for d in range(x.ndim)]
  lanes = []
  for lane in _LANES:
    h = jnp.full(x.shape, lane[0], jnp.uint32)
    for part in index + words:
      h = _mix(h ^ part, lane)
    lanes.append(jnp.sum(h, dtype=jnp.uint32))
  out = {"checksum": jnp.stack(lanes)}
  if x.ndim == 2 and x.size and jnp.issubdtype(x.dtype, jnp.floating):
    counts = jnp.sum(x == 0, axis=1, dtype=jnp.uint32)
    lo, hi = _sum64(counts)
    out["row_zeros"] = jnp.stack([counts.min(), counts.max(), lo, hi])
  return out


def _host(x: Array) -> np.ndarray:
  # The outputs are replicated; reading one local copy works on every
  # process of a multi-host run.
  if isinstance(x, jax.Array):
    x = x.addressable_data(0)
  return np.asarray(x)


def _summaries(arrays: Mapping[str, Array]) -> dict[str, dict[str, Any]]:
  """`_digest` of each array, as the JSON fields stored in alberta.json."""
  digests = {name: _digest(a) for name, a in arrays.items()}  # All dispatched.
  out = {}
  for name, digest in digests.items():
    lanes = _host(digest["checksum"])
    fields = {"checksum": "".join(f"{int(w):08x}" for w in lanes)}
    if "row_zeros" in digest:
      lo_min, lo_max, lo, hi = (int(v) for v in _host(digest["row_zeros"]))
      fields["row_zeros"] = {"min": lo_min, "max": lo_max,
                             "total": (hi << 32) | lo}
    out[name] = fields
  return out


def _summable(dtype: np.dtype) -> bool:
  """Whether `_digest` takes arrays of `dtype` (bool, integer, floating)."""
  return (dtype.itemsize in (1, 2, 4, 8) and
          any(jnp.issubdtype(dtype, kind)
              for kind in (jnp.bool_, jnp.integer, jnp.floating)))


def _checkable(name: str, dtype: Any) -> None:
  dtype = jnp.dtype(dtype)
  if not _summable(dtype):
    raise TypeError(
        f"arrays[{name!r}] has dtype {dtype.name}, which alberta.checkpoint "
        f"cannot checksum; save boolean, integer or floating arrays of 1, 2, "
        f"4 or 8 bytes per element.")


# --------------------------------------------------------------------------
# alberta.json.


def _canonical(info: Mapping[str, Any]) -> str:
  return json.dumps(info, sort_keys=True, separators=(",", ":"),
                    ensure_ascii=True)


def _metadata_sha256(info: Mapping[str, Any]) -> str:
  body = {k: v for k, v in info.items() if k != _METADATA_DIGEST}
  return hashlib.sha256(_canonical(body).encode()).hexdigest()


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _known_dtype(name: Any) -> bool:
  if not isinstance(name, str):
    return False
  try:
    dtype = jnp.dtype(name)
  except TypeError:
    return False
  return dtype.name == name and _summable(dtype)


def _validate(info: Any, file: str, verify: bool) -> dict[str, Any]:
  """Checks the schema of a parsed alberta.json; returns it."""

  def bad(field: str, problem: str) -> ValueError:
    return ValueError(f"{file}: field {field!r} {problem}")

  if not isinstance(info, dict):
    kind = {list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(info), "value")
    raise ValueError(f"{file} must hold a JSON object; it holds a JSON {kind}.")
  if "format_version" not in info:
    raise bad("format_version", "is missing.")
  version = info["format_version"]
  if not _is_int(version):
    raise bad("format_version", f"must be an integer, not {version!r}.")
  if version not in _READABLE_VERSIONS:
    raise ValueError(
        f"{file} has checkpoint format_version {version!r}; this alberta reads "
        f"format_version {FORMAT_VERSION} (and 1 with verify=False).")
  if version < 2 and verify:
    raise ValueError(
        f"{file} has checkpoint format_version {version}, written before "
        f"alberta recorded checksums, so its contents cannot be verified; "
        f"pass verify=False to read it unverified, or save it again.")
  if "arrays" not in info:
    raise bad("arrays", "is missing.")
  arrays = info["arrays"]
  if not isinstance(arrays, dict):
    raise bad("arrays", f"must be an object of array names to specs, not "
              f"{type(arrays).__name__}.")
  if not arrays:
    raise bad("arrays", "is empty: a checkpoint holds at least one array.")
  for name, spec in arrays.items():
    where = f"arrays.{name}"
    if not isinstance(spec, dict):
      raise bad(where, f"must be an object with shape and dtype, not {spec!r}.")
    shape = spec.get("shape")
    if (not isinstance(shape, list) or
        not all(_is_int(d) and d >= 0 for d in shape)):
      raise bad(f"{where}.shape", f"must be a list of non-negative integers, "
                f"not {shape!r}.")
    dtype = spec.get("dtype")
    if not _known_dtype(dtype):
      raise bad(f"{where}.dtype", f"must name a boolean, integer or floating "
                f"dtype (e.g. 'float32'), not {dtype!r}.")
    if version < 2:
      continue
    checksum = spec.get("checksum")
    if not isinstance(checksum, str) or not _CHECKSUM_RE.fullmatch(checksum):
      raise bad(f"{where}.checksum", f"must be 16 lowercase hexadecimal "
                f"digits, not {checksum!r}.")
    if (len(shape) == 2 and jnp.issubdtype(jnp.dtype(dtype), jnp.floating) and
        shape[0] * shape[1]):
      zeros = spec.get("row_zeros")
      rows, cols = shape
      if (not isinstance(zeros, dict) or set(zeros) != {"min", "max", "total"}
          or not all(_is_int(v) for v in zeros.values()) or
          not 0 <= zeros["min"] <= zeros["max"] <= cols or
          not rows * zeros["min"] <= zeros["total"] <= rows * zeros["max"]):
        raise bad(f"{where}.row_zeros", f"must be {{min, max, total}} zero "
                  f"counts consistent with shape {shape}, not {zeros!r}.")
  if version >= 2:
    digest = info.get(_METADATA_DIGEST)
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
      raise bad(_METADATA_DIGEST, f"must be 64 lowercase hexadecimal digits, "
                f"not {digest!r}.")
    if verify and digest != _metadata_sha256(info):
      raise ChecksumError(
          f"{file} does not match its own {_METADATA_DIGEST}: the file was "
          f"edited or corrupted after it was saved, so its metadata cannot be "
          f"trusted. (verify=False reads it regardless.)")
  return info


# --------------------------------------------------------------------------
# Staging, cleanup and commit.


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


def _broadcast_status(status: int) -> int:
  if jax.process_count() == 1:
    return status
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.asarray(multihost_utils.broadcast_one_to_all(
      np.int32(status))))


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


def remove_staging(path: str | os.PathLike[str], *,
                   keep: Iterable[str | os.PathLike[str]] = (),
                   quiet_s: float = 0.5, timeout_s: float = 5.0) -> list[str]:
  """Removes the staging entries beside `path` until no new one appears.

  For a process whose save to `path` failed or was abandoned while orbax's
  background threads may still be writing: `save` removes its staging before
  it raises, but a thread that was mid-write can recreate a directory after
  that, and orbax's writes cannot be cancelled. This lists `stale_staging(path)`
  again and again, removing every entry not in `keep` (a directory tree; a
  file or symbolic link is unlinked, never followed), until none has appeared
  for `quiet_s` seconds or `timeout_s` seconds have passed; the caller then
  typically exits, which stops those threads. `path` itself is never touched.
  Call it only when no other process is saving to `path`: their staging
  entries look the same.

  Args:
    path: the checkpoint target whose staging entries to remove.
    keep: entries to leave in place, e.g. what `stale_staging(path)` listed
      before this process's save started (earlier killed saves' leftovers).
    quiet_s: how long no entry may have appeared before it stops.
    timeout_s: the most it waits in all.

  Returns:
    The removed entries (absolute paths), in the order first removed.

  Raises:
    ValueError: `quiet_s` or `timeout_s` is negative or not a number.
  """
  for name, value in (("quiet_s", quiet_s), ("timeout_s", timeout_s)):
    if not value >= 0:  # Also refuses NaN.
      raise ValueError(f"{name} must be a non-negative number of seconds, "
                       f"not {value!r}.")
  keep = frozenset(os.path.abspath(os.fspath(k)) for k in keep)
  removed = []
  start = quiet_since = time.monotonic()
  while time.monotonic() - start < timeout_s:
    ours = [p for p in stale_staging(path) if p not in keep]
    if ours:
      quiet_since = time.monotonic()
    elif time.monotonic() - quiet_since >= quiet_s:
      break
    for entry in ours:
      if os.path.isdir(entry) and not os.path.islink(entry):
        shutil.rmtree(entry, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.unlink(entry)
      if entry not in removed:
        removed.append(entry)
    time.sleep(0.02)
  return removed


def _discard_staging(staging: str, ours: os.stat_result | None) -> None:
  """Removes `staging` and orbax's temporary directories beside it.

  `ours` is the staging directory as orbax left it: an entry under the
  staging name that is not that directory (what a failed commit swapped out
  of the target and could not put back) is left alone.
  """
  parent, stem = os.path.split(staging)
  try:
    entries = [e for e in os.listdir(parent) if e.startswith(stem)]
  except OSError:
    return
  for entry in entries:
    full = os.path.join(parent, entry)
    try:
      st = os.lstat(full)
    except OSError:
      continue
    if full == staging and ours is not None and not os.path.samestat(st, ours):
      continue
    if stat.S_ISDIR(st.st_mode):
      shutil.rmtree(full, ignore_errors=True)
    else:
      with contextlib.suppress(OSError):
        os.unlink(full)


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


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


class _Unsupported(Exception):
  """renameat2 or the requested flag is not available here."""


_renameat2_fn: Any = None


def _renameat2(src: str, dst: str, flags: int) -> None:
  """renameat2(2); raises _Unsupported where libc or the filesystem lack it."""
  global _renameat2_fn
  if _renameat2_fn is None:
    fn = False
    try:
      libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
      fn = getattr(libc, "renameat2", False)
      if fn:
        fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                       ctypes.c_char_p, ctypes.c_uint)
        fn.restype = ctypes.c_int
    except OSError:
      fn = False
    _renameat2_fn = fn
  if not _renameat2_fn:
    raise _Unsupported("libc has no renameat2")
  if _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                   flags) == 0:
    return
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
    raise _Unsupported(os.strerror(err))
  raise OSError(err, os.strerror(err), src, None, dst)


def _move_noreplace_portable(src: str, dst: str) -> None:
  """Renames `src` to `dst`; FileExistsError if anything holds `dst`.

  Without renameat2: a directory moves over an empty directory reserved with
  mkdir (see the module docstring); anything else is hard-linked (link(2)
  never replaces) and then unlinked.
  """
  if not stat.S_ISDIR(os.lstat(src).st_mode):
    os.link(src, dst, follow_symlinks=False)
    os.unlink(src)
    return
  os.mkdir(dst)  # FileExistsError on anything there, links included.
  reserved = os.lstat(dst)
  try:
    os.rename(src, dst)
  except OSError as e:
    with contextlib.suppress(OSError):
      if os.path.samestat(os.lstat(dst), reserved):
        os.rmdir(dst)
    if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR,
                   errno.EISDIR):
      raise FileExistsError(errno.EEXIST, "File exists", dst) from e
    raise


def _move_noreplace(src: str, dst: str) -> None:
  try:
    _renameat2(src, dst, _RENAME_NOREPLACE)
  except _Unsupported:
    _move_noreplace_portable(src, dst)


def _replaceable(path: str) -> bool:
  """Whether `path` (not followed) may be replaced: removes it if so.

  An empty directory is removed with rmdir, which refuses atomically if it
  is no longer empty; a directory holding alberta.json is renamed to a
  retired name and deleted. Anything else is left as it is.
  """
  st = os.lstat(path)
  if not stat.S_ISDIR(st.st_mode):
    return False
  try:
    os.rmdir(path)
    return True
  except OSError as e:
    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
      raise
  if not os.path.isfile(os.path.join(path, METADATA_FILE)):
    return False
  parent, name = os.path.split(path)
  retired = os.path.join(
      parent, f".{name}{_RETIRED_INFIX}{os.getpid()}-{time.time_ns()}")
  os.rename(path, retired)
  shutil.rmtree(retired, ignore_errors=True)
  return True


def _refused(path: str) -> FileExistsError:
  return FileExistsError(
      f"{path} exists and is not an alberta checkpoint (no {METADATA_FILE}) "
      f"nor an empty directory: it appeared or changed while the checkpoint "
      f"was being written. It was left untouched; nothing was saved.")


def _taken(path: str) -> FileExistsError:
  return FileExistsError(
      f"{path} appeared while the checkpoint was being written (another save "
      f"to the same path, or another program); it was left untouched and "
      f"nothing was saved. Pass overwrite=True (--overwrite) to replace a "
      f"checkpoint, or choose another path.")


def _commit(staging: str, path: str, overwrite: bool) -> None:
  """Publishes `staging` at `path` by the protocol in the module docstring."""
  try:
    _move_noreplace(staging, path)
    return
  except FileExistsError:
    if not overwrite:
      raise _taken(path) from None
  if os.path.islink(path):
    raise FileExistsError(
        f"{path} became a symbolic link while the checkpoint was being "
        f"written; it was left untouched and nothing was saved.")
  try:
    _renameat2(staging, path, _RENAME_EXCHANGE)
  except _Unsupported:
    _commit_portable_overwrite(staging, path)
    return
  except FileNotFoundError:
    # The target vanished between the two renames: nothing to replace.
    _commit(staging, path, overwrite=False)
    return
  # What was at `path` is now under the staging name; our checkpoint is at
  # `path`.
  try:
    replaceable = _replaceable(staging)
  except OSError:
    replaceable = False
  if not replaceable:
    try:
      _renameat2(staging, path, _RENAME_EXCHANGE)
    except OSError as e:
      raise OSError(
          f"{path} was not an alberta checkpoint nor an empty directory when "
          f"the checkpoint was committed, and putting it back failed "
          f"({e.strerror}); it is now at {staging} and the new checkpoint "
          f"at {path}.") from e
    raise _refused(path)


def _commit_portable_overwrite(staging: str, path: str) -> None:
  """The overwrite commit without renameat2 (see the module docstring)."""
  parent, name = os.path.split(path)
  aside = os.path.join(
      parent, f".{name}{_RETIRED_INFIX}{os.getpid()}-{time.time_ns()}")
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    _commit(staging, path, overwrite=False)
    return
  replaceable = False
  with contextlib.suppress(OSError):
    replaceable = _replaceable(aside)
  if not replaceable:
    try:
      _move_noreplace_portable(aside, path)
    except OSError as e:
      raise OSError(
          f"{path} was not an alberta checkpoint nor an empty directory when "
          f"the checkpoint was committed, and putting it back failed "
          f"({e.strerror}); it is now at {aside}.") from e
    raise _refused(path)
  try:
    _move_noreplace_portable(staging, path)
  except FileExistsError:
    raise _taken(path) from None


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
  """Holds SIGINT (Ctrl-C) until the block ends, then handles it."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  try:
    previous = signal.signal(signal.SIGINT,
                             lambda signum, frame: received.append(frame))
  except ValueError:  # Not the main interpreter.
    yield
    return
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
      previous(signal.SIGINT, received[0])
    elif received and previous == signal.SIG_DFL:
      raise KeyboardInterrupt


def _is_enospc(error: BaseException | None) -> bool:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    text = str(error)
    if ("No space left on device" in text or
        "os_error_code='28'" in text):
      return True
    error = error.__cause__ or error.__context__
  return False


def _write_arrays(ocp: Any, staging: str, arrays: Mapping[str, Array],
                  progress: Callable[[int, float], None] | None,
                  progress_every_s: float) -> None:
  """Writes the arrays with orbax into `staging`, reporting progress.

  With `progress`, orbax runs in a worker thread and `progress` in the
  calling thread, so whatever `progress` raises (or a Ctrl-C) stops the save
  here. Orbax's writes cannot be cancelled: the worker is waited for before
  the exception propagates, so the cleanup that follows removes everything
  it wrote (a second Ctrl-C stops the wait).
  """

  def write():
    with ocp.StandardCheckpointer() as checkpointer:
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
      progress(_tree_bytes(staging), time.monotonic() - start)
  except BaseException:
    with contextlib.suppress(BaseException):
      worker.join()
    raise
  if failure:
    raise failure[0]


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
  checkpoint is written: it is staged beside `path` and renamed into place by
  the commit protocol of the module docstring, which re-checks the rules of
  `check_output` atomically at that instant. Any failure (including a full
  disk and KeyboardInterrupt) removes the staging directories before it
  propagates.

  Args:
    path: the checkpoint directory to create. Missing parents are created.
    arrays: a `jax.Array` (saved as `"matrix"`), or a mapping of names to
      arrays (e.g. an ELL matrix's `values` and `indices`), of boolean,
      integer or floating dtypes.
    metadata: JSON-serializable facts about the arrays, stored in
      `alberta.json` (the launcher stores what is needed to recompute them).
    overwrite: replace an existing checkpoint at `path`. An existing path
      that is not an alberta checkpoint (or an empty directory) is never
      replaced, nor is a symbolic link.
    progress: called as `progress(bytes_on_disk, seconds)` every
      `progress_every_s` seconds while the shards are written (bytes of the
      whole checkpoint visible from this host, after compression), in the
      calling thread; an exception it raises aborts the save.
    progress_every_s: interval between `progress` calls.

  Returns:
    `path`, absolute.

  Raises:
    FileExistsError: as in `check_output`, checked first and again at the
      commit (something appeared at `path` meanwhile, e.g. a concurrent save).
    PermissionError: as in `check_output`.
    OSError: the disk filled up (errno ENOSPC, the message names `path`).
    TypeError: an array's dtype cannot be checksummed, or `metadata` is not
      JSON-serializable.
    ImportError: orbax-checkpoint is not installed.
  """
  ocp = _orbax()
  path = check_output(path, overwrite)
  if not isinstance(arrays, Mapping):
    arrays = {"matrix": arrays}
  arrays = dict(arrays)
  for name, a in arrays.items():
    _checkable(name, a.dtype)
  from alberta import __version__  # pylint: disable=g-import-not-at-top
  info = dict(metadata or {})
  json.dumps(info)  # Fail before any work if it is not JSON.
  summaries = _summaries(arrays)
  info.update(
      format_version=FORMAT_VERSION,
      arrays={name: {"shape": [int(d) for d in a.shape],
                     "dtype": jnp.dtype(a.dtype).name, **summaries[name]}
              for name, a in arrays.items()},
      alberta_version=__version__,
      jax_version=jax.__version__,
      orbax_version=getattr(ocp, "__version__", "unknown"),
  )
  info.pop(_METADATA_DIGEST, None)
  # Hashed as it will read back (JSON turns tuples into lists, keys into
  # strings).
  info = json.loads(_canonical(info))
  info[_METADATA_DIGEST] = _metadata_sha256(info)

  lead = jax.process_index() == 0
  parent, name = os.path.split(path)
  token = _shared_token()
  staging = os.path.join(parent, f".{name}{_STAGING_INFIX}{token}")
  if lead:
    os.makedirs(parent, exist_ok=True)
  _barrier(f"alberta_checkpoint_parent_{token}")

  def fail(error: BaseException, ours: os.stat_result | None):
    if lead:
      _discard_staging(staging, ours)
    if _is_enospc(error):
      raise OSError(
          errno.ENOSPC,
          f"cannot save the checkpoint at {path}: No space left on device "
          f"(nothing was saved; the partial checkpoint was removed)") from error
    raise error

  try:
    # Orbax writes into its own temporary directory beside `staging` and
    # renames it to `staging` once every process has finished its shards.
    _write_arrays(ocp, staging, arrays, progress, progress_every_s)
  except BaseException as e:  # pylint: disable=broad-exception-caught
    fail(e, None)

  # Every process is past orbax's final barrier. Process 0 writes
  # alberta.json (what makes a directory a checkpoint, so it goes last) and
  # commits; the others learn the outcome from its broadcast.
  status, error, ours = 0, None, None
  if lead:
    try:
      ours = os.lstat(staging)
      _write_json(os.path.join(staging, METADATA_FILE), info)
      with _sigint_deferred():
        _commit(staging, path, overwrite)
      _fsync_dir(parent)
    except BaseException as e:  # pylint: disable=broad-exception-caught
      error = e
      status = (1 if isinstance(e, FileExistsError) else
                2 if _is_enospc(e) else 3)
  status = _broadcast_status(status)
  if error is not None:
    fail(error, ours)
  if status == 1:
    raise FileExistsError(
        f"{path}: process 0 could not commit the checkpoint: something "
        f"appeared at the path while it was being written (see process 0's "
        f"error); nothing was saved.")
  if status == 2:
    raise OSError(errno.ENOSPC,
                  f"cannot save the checkpoint at {path}: No space left on "
                  f"device (on process 0; nothing was saved)")
  if status:
    raise RuntimeError(
        f"{path}: process 0 failed to commit the checkpoint (see its error); "
        f"nothing was saved.")
  return path


def _first_rows(x: Any, sample_bytes: int) -> np.ndarray:
  """Up to `sample_bytes` of leading rows of `x`'s first local shard."""
  if isinstance(x, jax.Array):
    x = x.addressable_shards[0].data
  if x.ndim == 0:
    return np.asarray(x).reshape(1)
  row_bytes = max(1, math.prod(x.shape[1:]) * x.dtype.itemsize)
  return np.asarray(x[:max(1, min(x.shape[0], sample_bytes // row_bytes))])


def _stored_fraction(sample: np.ndarray) -> float | None:
  """What orbax's compression leaves of `sample`'s bytes, as a fraction."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  context = ts.Context()
  store = ts.open(
      {"driver": "zarr", "kvstore": "memory://",
       "metadata": {"compressor": {"id": "zstd", "level": 1}}},
      create=True, context=context, dtype=ts.dtype(sample.dtype.name),
      shape=sample.shape,
      chunk_layout=ts.ChunkLayout(chunk_shape=sample.shape)).result()
  store.write(sample).result()
  kvstore = ts.KvStore.open("memory://", context=context).result()
  stored = sum(len(kvstore.read(key).result().value)
               for key in kvstore.list().result() if not key.startswith(b"."))
  return stored / sample.nbytes if stored else None


def estimate_stored_bytes(arrays: Array | np.ndarray | Mapping[str, Any], *,
                          sample_bytes: int = 4 << 20) -> int | None:
  """Estimates the bytes `save(path, arrays)` writes for the arrays' data.

  `save` stores arrays through orbax-checkpoint, compressed with zstd
  (level 1, through tensorstore), so what a matrix takes on disk depends on
  its values: a sparse float32 matrix at sparsity 0.9 takes about a quarter
  of its raw bytes, random values nearly all. This compresses a sample the
  same way in memory, without writing a file: up to `sample_bytes` of
  leading rows of each array's first shard held by this process, and scales
  the sample's compressed fraction to the whole array (the zero count, hence
  compressibility, of alberta's matrices is the same in every row). It counts
  array data, not the few KiB of metadata files; for a 1 MiB matrix it is
  within a few percent of the checkpoint's size. The launcher uses it to give
  its progress bar an end.

  Args:
    arrays: a `jax.Array` or NumPy array, or a mapping of names to them, as
      passed to `save`.
    sample_bytes: the most bytes sampled from each array (at least one row).

  Returns:
    The estimated bytes of all arrays together, or None when it cannot be
    estimated (tensorstore, installed with orbax-checkpoint, is missing or
    refuses the dtype). Arrays with no elements count 0.

  Raises:
    TypeError: an entry of `arrays` is not an array.
    ValueError: `sample_bytes` is not a positive integer.
  """
  if not _is_int(sample_bytes) or sample_bytes <= 0:
    raise ValueError(f"sample_bytes must be a positive integer, not "
                     f"{sample_bytes!r}.")
  if not isinstance(arrays, Mapping):
    arrays = {"matrix": arrays}
  for name, a in arrays.items():
    if not isinstance(a, (jax.Array, np.ndarray)):
      raise TypeError(f"arrays[{name!r}] must be a jax.Array or a NumPy "
                      f"array, not {type(a).__name__}.")
  total = 0.0
  for a in arrays.values():
    if not a.size:
      continue
    try:
      fraction = _stored_fraction(_first_rows(a, sample_bytes))
    except Exception:  # pylint: disable=broad-exception-caught
      return None  # No tensorstore, or a dtype it does not store.
    if fraction is None:
      return None
    total += fraction * a.size * a.dtype.itemsize
  return int(round(total))


# --------------------------------------------------------------------------
# Reading.


def restore_metadata(path: str | os.PathLike[str], *,
                     verify: bool = True) -> dict[str, Any]:
  """The metadata (`alberta.json`) of the checkpoint at `path`, validated.

  Args:
    path: the checkpoint directory.
    verify: check `alberta.json` against its own SHA-256 and refuse format
      version 1 (which has no checksums). With False, a version-1 checkpoint
      is read and an edited file accepted, as long as its schema is valid.

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: `path` is not a complete alberta checkpoint, or its
      `alberta.json` is not valid JSON or misses or mistypes a field (the
      message names the file and the field).
    ChecksumError: (a ValueError) `alberta.json` does not match its digest.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no alberta checkpoint at {path}: no such directory.")
  if not is_checkpoint(path):
    raise ValueError(
        f"{path} is not a complete alberta checkpoint: it has no "
        f"{METADATA_FILE} (a save in progress or interrupted never leaves one).")
  file = os.path.join(path, METADATA_FILE)
  try:
    with open(file, "rb") as f:
      info = json.loads(f.read().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{file} is not valid JSON: {e}.") from e
  return _validate(info, file, verify)


def _check_against_orbax(ocp: Any, path: str,
                         specs: Mapping[str, Mapping[str, Any]]) -> None:
  """alberta.json's arrays must be exactly what orbax stored: no casts."""
  file = os.path.join(path, METADATA_FILE)
  try:
    tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    stored = {name: (tuple(m.shape), jnp.dtype(m.dtype).name)
              for name, m in dict(tree).items()}
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise ValueError(
        f"{path}: orbax cannot read the checkpoint's array metadata "
        f"({type(e).__name__}: {e}); the checkpoint is damaged.") from e
  if set(stored) != set(specs):
    raise ValueError(
        f"{file}: field 'arrays' lists {sorted(specs)}, but the checkpoint "
        f"stores {sorted(stored)}.")
  for name, spec in specs.items():
    shape, dtype = stored[name]
    if tuple(spec["shape"]) != shape:
      raise ValueError(
          f"{file}: field 'arrays.{name}.shape' is {spec['shape']}, but the "
          f"checkpoint stores shape {list(shape)}.")
    if spec["dtype"] != dtype:
      raise ValueError(
          f"{file}: field 'arrays.{name}.dtype' is {spec['dtype']!r}, but the "
          f"checkpoint stores {dtype!r} (it is never cast).")


def restore(path: str | os.PathLike[str], sharding: Any = None, *,
            verify: bool = True) -> Any:
  """Reads a checkpoint saved by `save` (or `scripts/init_large.py`).

  Args:
    path: the checkpoint directory.
    sharding: a `jax.sharding.Sharding` to read the matrix straight into
      (each device reads only its own shard); None puts the whole matrix on
      the first local device. Any sharding compatible with the shape works,
      whatever the mesh the checkpoint was written from.
    verify: recompute every array's checksum (and row-zero summary) on device
      from what was read and compare with `alberta.json`, and check
      `alberta.json` against its digest. False skips both (and reads format
      version 1); the schema and the shapes and dtypes orbax stored are
      checked either way.

  Returns:
    The matrix as a `jax.Array` when the checkpoint holds one array (the
    default `"matrix"`), else a dict of the named arrays, all read with
    `sharding`. `restore_metadata(path)` gives what it was generated from.

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: `path` is not a complete alberta checkpoint, its
      `alberta.json` is malformed or disagrees with what orbax stored.
    ChecksumError: (a ValueError) an array read back is not the array saved;
      the message names the checkpoint and the array.
    ImportError: orbax-checkpoint is not installed.
  """
  path = os.path.abspath(os.fspath(path))
  info = restore_metadata(path, verify=verify)
  ocp = _orbax()
  specs = info["arrays"]
  _check_against_orbax(ocp, path, specs)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {
      name: jax.ShapeDtypeStruct(tuple(spec["shape"]), jnp.dtype(spec["dtype"]),
                                 sharding=sharding)
      for name, spec in specs.items()
  }
  with ocp.StandardCheckpointer() as checkpointer:
    arrays = dict(checkpointer.restore(path, target))
  if verify:
    found = _summaries(arrays)
    for name, spec in specs.items():
      if found[name]["checksum"] != spec["checksum"]:
        raise ChecksumError(
            f"{path}: array {name!r} read back with checksum "
            f"{found[name]['checksum']}, but {METADATA_FILE} records "
            f"{spec['checksum']}: the checkpoint's data is corrupted.")
      if found[name].get("row_zeros") != spec.get("row_zeros"):
        raise ChecksumError(
            f"{path}: array {name!r} read back with row zero counts "
            f"{found[name].get('row_zeros')}, but {METADATA_FILE} records "
            f"{spec.get('row_zeros')}: the checkpoint's data is corrupted.")
  if set(arrays) == {"matrix"}:
    return arrays["matrix"]
  return arrays
