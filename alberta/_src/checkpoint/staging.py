"""Staging directories: where a checkpoint is written before it is published.

A save writes into one hidden directory beside its target,
`.NAME.alberta-tmp-TOKEN` (orbax writes straight into it and marks it
finished with its commit file), and `publish` renames it into place. What a
replaced checkpoint becomes while it is deleted is `.NAME.alberta-old-ID`.
Both are what `stale_staging` lists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Iterable

import jax
import numpy as np

_STAGING_INFIX = ".alberta-tmp-"
_RETIRED_INFIX = ".alberta-old-"


def shared_token() -> str:
  """A random name suffix, the same on every process of a multi-host run."""
  words = np.frombuffer(os.urandom(8), np.uint32)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    words = np.asarray(multihost_utils.broadcast_one_to_all(words))
  return "".join(f"{int(w):08x}" for w in words)


def staging_path(path: str, token: str) -> str:
  parent, name = os.path.split(path)
  return os.path.join(parent, f".{name}{_STAGING_INFIX}{token}")


def retired_path(path: str) -> str:
  """A fresh private name beside `path` for what is being deleted."""
  parent, name = os.path.split(path)
  return os.path.join(
      parent, f".{name}{_RETIRED_INFIX}{os.getpid()}-{time.time_ns()}"
  )


def remove(entry: str) -> None:
  """Deletes `entry`: a directory tree, or a file or link (never followed)."""
  try:
    st = os.lstat(entry)
  except OSError:
    return
  if stat.S_ISDIR(st.st_mode):
    shutil.rmtree(entry, ignore_errors=True)
  else:
    with contextlib.suppress(OSError):
      os.unlink(entry)


def tree_bytes(root: str) -> int:
  """Bytes of the files under `root` (which may change while it counts)."""
  total = 0
  for parent, _, files in os.walk(root):
    for f in files:
      with contextlib.suppress(OSError):  # Orbax renames files as it writes.
        total += os.lstat(os.path.join(parent, f)).st_size
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
      os.path.join(parent, e)
      for e in entries
      if e.startswith(f".{name}{_STAGING_INFIX}")
      or e.startswith(f".{name}{_RETIRED_INFIX}")
  )


def remove_staging(
    path: str | os.PathLike[str],
    *,
    keep: Iterable[str | os.PathLike[str]] = (),
    quiet_s: float = 0.5,
    timeout_s: float = 5.0,
) -> list[str]:
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
      raise ValueError(
          f"{name} must be a non-negative number of seconds, not {value!r}."
      )
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
      remove(entry)
      if entry not in removed:
        removed.append(entry)
    time.sleep(0.02)
  return removed


def discard(staging: str, ours: os.stat_result | None) -> None:
  """Removes a failed save's `staging` directory, if it is still ours.

  `ours` is the staging directory as orbax left it: an entry under the
  staging name that is not that directory (what a failed publish swapped out
  of the target and could not put back) is left alone.
  """
  try:
    st = os.lstat(staging)
  except OSError:
    return
  if ours is None or os.path.samestat(st, ours):
    remove(staging)
