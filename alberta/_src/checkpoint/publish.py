"""Publishing a finished staging directory at its target, replacing nothing.

`check_output`'s rules (nothing is replaced without `overwrite`; with it, only
an alberta checkpoint or an empty directory; never a symbolic link or a file)
are checked before any work, and enforced again, atomically, at the instant
of the rename, so a directory or file that appears at the target while the
arrays are written is never replaced:

* Without `overwrite`: `renameat2(staging, target, RENAME_NOREPLACE)` (Linux
  3.15+, through ctypes): the kernel refuses with EEXIST if anything, even a
  dangling symbolic link, exists at the target at that instant. Of two savers
  racing for one new path exactly one wins; the other raises FileExistsError.
* With `overwrite`: the staging directory is first renamed with
  RENAME_NOREPLACE (the target is still absent: done). Otherwise it is
  swapped with the target by `renameat2(..., RENAME_EXCHANGE)`, one atomic
  step, and what was swapped out (now under the private staging name, where
  nobody else looks) is judged without following links by
  `layout.not_replaceable`: an empty directory is removed with `rmdir` (which
  itself refuses, atomically, a directory that is no longer empty), a
  checkpoint is retired and deleted, and anything else is swapped straight
  back by a second RENAME_EXCHANGE and FileExistsError names why. Only what
  was at the target at the instant of the swap is ever judged or deleted.
  The one thing no rename scheme can rule out is a process that still holds
  an old checkpoint directory open writing into it while it is deleted.
* Where renameat2 is missing (not Linux, old libc) or the filesystem refuses
  the flags (EINVAL, ENOSYS), a portable fallback keeps the same guarantees
  except for a window that can only lose an empty directory: the target name
  is reserved with `mkdir` (atomic, fails on anything there, links included)
  and the staging directory renamed over that reservation (POSIX rename
  replaces only an empty directory). With `overwrite` the existing entry is
  first renamed aside (a link moves as a link), judged there as above, and
  put back with a no-replace move if it may not be replaced. A third party
  who deletes the reservation and puts an empty directory in its place
  during the microseconds between mkdir and rename would see that empty
  directory replaced; nothing holding data can be.

SIGINT is deferred (handled once the publish is done) during its renames, so
Ctrl-C cannot strand a swapped-out directory under a staging name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

from alberta._src.checkpoint import layout
from alberta._src.checkpoint import staging as staging_lib

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


class Unsupported(Exception):
  """renameat2 or the requested flag is not available here."""


_renameat2_fn: Any = None


def renameat2(src: str, dst: str, flags: int) -> None:
  """Linux's renameat2 system call; Unsupported where libc or the FS lack it."""
  global _renameat2_fn
  if _renameat2_fn is None:
    fn = False
    try:
      libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
      fn = getattr(libc, "renameat2", False)
      if fn:
        fn.argtypes = (
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint,
        )
        fn.restype = ctypes.c_int
    except OSError:
      fn = False
    _renameat2_fn = fn
  if not _renameat2_fn:
    raise Unsupported("libc has no renameat2")
  if (
      _renameat2_fn(
          _AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags
      )
      == 0
  ):
    return
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
    raise Unsupported(os.strerror(err))
  raise OSError(err, os.strerror(err), src, None, dst)


def _move_noreplace_portable(src: str, dst: str) -> None:
  """Renames `src` to `dst`; FileExistsError if anything holds `dst`.

  Without renameat2: a directory moves over an empty directory reserved with
  mkdir; anything else is hard-linked (link(2) never replaces) and then
  unlinked.
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
    if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
      raise FileExistsError(errno.EEXIST, "File exists", dst) from e
    raise


def _move_noreplace(src: str, dst: str) -> None:
  try:
    renameat2(src, dst, _RENAME_NOREPLACE)
  except Unsupported:
    _move_noreplace_portable(src, dst)


def _retire(path: str) -> str | None:
  """Removes `path` (not followed) if it may be replaced; else says why not.

  An empty directory is removed with rmdir, which refuses atomically if it
  is no longer empty; a checkpoint is renamed to a retired name and deleted.
  """
  try:
    os.rmdir(path)
    return None
  except OSError:
    pass
  try:
    why = layout.not_replaceable(path)
  except OSError as e:
    return f"it could not be inspected ({e.strerror})"
  if why is None:
    retired = staging_lib.retired_path(path)
    os.rename(path, retired)
    staging_lib.remove(retired)
  return why


def _refused(path: str, why: str) -> FileExistsError:
  return FileExistsError(
      f"{path} exists and may not be replaced ({why}): it appeared or changed "
      "while the checkpoint was being written, so it is not an alberta "
      "checkpoint nor an empty directory. It was left untouched; nothing was "
      "saved."
  )


def _taken(path: str) -> FileExistsError:
  return FileExistsError(
      f"{path} appeared while the checkpoint was being written (another save "
      "to the same path, or another program); it was left untouched and "
      "nothing was saved. Pass overwrite=True (--overwrite) to replace a "
      "checkpoint, or choose another path."
  )


def publish(staging: str, path: str, overwrite: bool) -> None:
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
        "written; it was left untouched and nothing was saved."
    )
  try:
    renameat2(staging, path, _RENAME_EXCHANGE)
  except Unsupported:
    _publish_portable_overwrite(staging, path)
    return
  except FileNotFoundError:
    # The target vanished between the two renames: nothing to replace.
    publish(staging, path, overwrite=False)
    return
  # What was at `path` is now under the staging name; ours is at `path`.
  _retire_or_put_back(
      staging, path, lambda: renameat2(staging, path, _RENAME_EXCHANGE)
  )


def _retire_or_put_back(
    aside: str, path: str, put_back: Callable[[], None]
) -> None:
  """Deletes what was moved from `path` to `aside`, or puts it back, raising."""
  why = _retire(aside)
  if why is None:
    return
  try:
    put_back()
  except OSError as e:
    raise OSError(
        f"{path} could not be replaced ({why}), and putting it back failed "
        f"({e.strerror}); it is now at {aside}."
    ) from e
  raise _refused(path, why)


def _publish_portable_overwrite(staging: str, path: str) -> None:
  """The overwrite publish without renameat2 (see the module docstring)."""
  aside = staging_lib.retired_path(path)
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    publish(staging, path, overwrite=False)
    return
  _retire_or_put_back(
      aside, path, lambda: _move_noreplace_portable(aside, path)
  )
  try:
    _move_noreplace_portable(staging, path)
  except FileExistsError:
    raise _taken(path) from None


def fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
  """Holds SIGINT (Ctrl-C) until the block ends, then handles it."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  try:
    previous = signal.signal(
        signal.SIGINT, lambda signum, frame: received.append(frame)
    )
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
