r"""Tries alberta.checkpoint as a hostile user and a hostile machine would.

Every case must end in the saved numbers or one of the documented errors
(FileNotFoundError, PermissionError, FileExistsError, TypeError, ValueError,
and ChecksumError and ReplacedError among the ValueErrors, OSError ENOSPC),
and must never lose a file it had no right to touch. The cases:

* damage: every file of a dense and of an ELL checkpoint, `--flips` single-bit
  flips each at random offsets, truncated to 0, 1, half and all but one of its
  bytes, and deleted; each copy restored with `verify=True` (the saved
  numbers or a ValueError naming the checkpoint) and `verify=False` (whose
  other numbers are counted: unverified, as documented);
* kills: a saver overwriting one checkpoint again and again, SIGKILLed
  `--kills` times at a random instant: the target is then always a whole
  checkpoint that restores to one of the saves, and a user directory beside
  it is untouched;
* races: `--racers` processes saving with overwrite to one path and as many
  reading it with `restore(..., return_metadata=True)`, for `--race_s`
  seconds: every read is the matrix its metadata names, or ReplacedError;
  and as many savers racing without overwrite for one new path: exactly one
  wins;
* links: a link, a dangling link, a link to a checkpoint and a linked
  `alberta.json` at the target (refused, nothing followed or changed), a
  link appearing mid-save, a checkpoint restored through a link;
* dtypes: every NumPy and ml_dtypes type, native and swapped byte order,
  with x64 off and on: saved and restored bit for bit, or refused before
  anything is written.

Prints one line per group and the total; exits 1 on any violation:

  python scripts/checkpoint_campaign.py --flips=30 --kills=40 --race_s=30
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging

import jax
import ml_dtypes
import numpy as np

import alberta

_FLIPS = flags.DEFINE_integer("flips", 30, "Bit flips per file.")
_KILLS = flags.DEFINE_integer("kills", 40, "SIGKILLs of a saver.")
_RACERS = flags.DEFINE_integer("racers", 2, "Savers and readers per race.")
_RACE_S = flags.DEFINE_float("race_s", 20.0, "Seconds each race runs.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random choices.")
_CHILD = flags.DEFINE_string("child", None, "Internal: saver|reader|claim.")
_TARGET = flags.DEFINE_string("target", None, "Internal: the child's path.")

_DOCUMENTED = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    TypeError,
    ValueError,
)
_SHAPE = (64, 48)


def matrix(seed: int) -> jax.Array:
  """The matrix of `seed`: `sparse_init` of `_SHAPE` at sparsity 0.9."""
  return alberta.sparse_init(jax.random.key(seed), _SHAPE, 0.9)


class Tally:
  """Outcomes by group, and the violations found."""

  def __init__(self):
    self.counts = collections.defaultdict(collections.Counter)
    self.violations: list[str] = []

  def add(self, group: str, outcome: str) -> None:
    """Counts one case of `group` with `outcome`."""
    self.counts[group][outcome] += 1

  def violate(self, group: str, what: str) -> None:
    """Counts and records a violation of `group`, described by `what`."""
    self.add(group, "VIOLATION")
    self.violations.append(f"{group}: {what}")

  def total(self) -> int:
    """The number of cases counted, over every group."""
    return sum(sum(c.values()) for c in self.counts.values())


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, dict) or isinstance(b, dict):
    return (
        isinstance(a, dict)
        and isinstance(b, dict)
        and set(a) == set(b)
        and all(_same(a[k], b[k]) for k in a)
    )
  a, b = np.asarray(a), np.asarray(b)
  return (
      a.dtype == b.dtype
      and a.shape == b.shape
      and a.view(np.uint8).tobytes() == b.view(np.uint8).tobytes()
  )


def _restore_case(
    tally: Tally, group: str, path: str, expected: Any, verify: bool
) -> None:
  try:
    restored = alberta.checkpoint.restore(path, verify=verify)
  except _DOCUMENTED as e:
    if isinstance(e, ValueError) and path not in str(e):
      tally.violate(group, f"{type(e).__name__} not naming {path}: {e}")
    else:
      tally.add(group, type(e).__name__)
  except Exception as e:  # pylint: disable=broad-exception-caught
    tally.violate(group, f"undocumented {type(e).__name__}: {e}")
  else:
    if _same(restored, expected):
      tally.add(group, "identical")
    elif verify:
      tally.violate(group, "verified restore returned other numbers")
    else:
      tally.add(group, "other numbers, unverified")


def damage(tally: Tally, work: str, rng: random.Random) -> None:
  """Bit flips, truncations and deletions of every file of two checkpoints."""
  dense = matrix(1)
  values, indices = alberta.sparse_init_ell(
      jax.random.key(2), _SHAPE, 0.9, method="counter"
  )
  for kind, arrays in (
      ("dense", dense),
      ("ell", {"values": values, "indices": indices}),
  ):
    original = os.path.join(work, kind)
    alberta.checkpoint.save(original, arrays, {"kind": kind})
    files = sorted(
        os.path.relpath(os.path.join(root, f), original)
        for root, _, names in os.walk(original)
        for f in names
    )
    for name in files:
      size = os.path.getsize(os.path.join(original, name))
      edits = [
          ("flip", rng.randrange(max(size, 1)), rng.randrange(8))
          for _ in range(_FLIPS.value if size else 0)
      ]
      edits += [
          ("truncate", n, 0)
          for n in sorted({0, 1, size // 2, size - 1})
          if 0 <= n < size
      ]
      edits.append(("delete", 0, 0))
      for edit, offset, bit in edits:
        copy = os.path.join(work, "copy")
        shutil.copytree(original, copy)
        file = os.path.join(copy, name)
        if edit == "delete":
          os.unlink(file)
        else:
          with open(file, "r+b") as f:
            data = bytearray(f.read())
            if edit == "flip":
              data[offset] ^= 1 << bit
            else:
              del data[offset:]
            f.seek(0)
            f.truncate()
            f.write(data)
        for verify in (True, False):
          _restore_case(
              tally, f"damage ({kind}, verify={verify})", copy, arrays, verify
          )
        shutil.rmtree(copy)


def _child(role: str, target: str) -> subprocess.Popen[str]:
  return subprocess.Popen(
      [sys.executable, __file__, f"--child={role}", f"--target={target}"],
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
  )


def _user_directory(work: str, name: str) -> str:
  """A directory of user data (`data.txt`) that no save may touch."""
  path = os.path.join(work, name)
  os.mkdir(path)
  with open(os.path.join(path, "data.txt"), "w") as f:
    f.write("data")
  return path


def kills(tally: Tally, work: str, rng: random.Random) -> None:
  """A saver SIGKILLed at random instants never breaks the target."""
  target = os.path.join(work, "killed")
  alberta.checkpoint.save(target, matrix(0), {"seed": 0})
  precious = _user_directory(work, "precious")
  for _ in range(_KILLS.value):
    proc = _child("saver", target)
    proc.stdout.readline()  # "ready": JAX started, one save done.
    time.sleep(rng.uniform(0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
      restored, info = alberta.checkpoint.restore(target, return_metadata=True)
    except Exception as e:  # pylint: disable=broad-exception-caught
      tally.violate("kills", f"the target does not restore: {e!r}")
      continue
    if not _same(restored, matrix(info["seed"])):
      tally.violate("kills", f"seed {info['seed']} restored other numbers")
    elif os.listdir(precious) != ["data.txt"]:
      tally.violate("kills", "the user directory beside it changed")
    else:
      tally.add("kills", "whole checkpoint")
    alberta.checkpoint.remove_staging(target, quiet_s=0, timeout_s=1)


def _saver(target: str) -> None:
  for i in range(10**6):
    seed = (os.getpid() % 1000) * 1000 + i % 3
    alberta.checkpoint.save(
        target, matrix(seed), {"seed": seed}, overwrite=True
    )
    if i == 0:
      print("ready", flush=True)


def _reader(target: str) -> None:
  outcomes = collections.Counter()
  deadline = time.monotonic() + _RACE_S.value
  while time.monotonic() < deadline:
    try:
      restored, info = alberta.checkpoint.restore(target, return_metadata=True)
    except alberta.checkpoint.ReplacedError:
      outcomes["ReplacedError"] += 1
    except _DOCUMENTED as e:
      outcomes[f"VIOLATION {type(e).__name__}: {e}"] += 1
    except Exception as e:  # pylint: disable=broad-exception-caught
      outcomes[f"VIOLATION undocumented {type(e).__name__}: {e}"] += 1
    else:
      same = _same(restored, matrix(info["seed"]))
      outcomes["identical" if same else "VIOLATION other numbers"] += 1
  for outcome, n in outcomes.items():
    print(f"{n}\t{outcome}", flush=True)


def _claim(target: str) -> None:
  try:
    alberta.checkpoint.save(target, matrix(os.getpid()), {"seed": os.getpid()})
    print("won", flush=True)
  except FileExistsError:
    print("lost", flush=True)


def races(tally: Tally, work: str) -> None:
  """Concurrent savers and readers of one path; savers racing for a new one."""
  target = os.path.join(work, "raced")
  alberta.checkpoint.save(target, matrix(0), {"seed": 0})
  savers = [_child("saver", target) for _ in range(_RACERS.value)]
  readers = [_child("reader", target) for _ in range(_RACERS.value)]
  for reader in readers:
    for line in reader.communicate()[0].splitlines():
      n, outcome = line.split("\t", 1)
      for _ in range(int(n)):
        if outcome.startswith("VIOLATION"):
          tally.violate("races (reads)", outcome)
        else:
          tally.add("races (reads)", outcome)
  for saver in savers:
    saver.send_signal(signal.SIGKILL)
    saver.wait()
  alberta.checkpoint.remove_staging(target, quiet_s=0, timeout_s=1)
  new = os.path.join(work, "claimed")
  claims = [_child("claim", new) for _ in range(2 * _RACERS.value)]
  results = [c.communicate()[0].strip() for c in claims]
  if results.count("won") == 1 and results.count("lost") == len(claims) - 1:
    tally.add("races (claims)", "exactly one won")
  else:
    tally.violate("races (claims)", f"outcomes {results}")


def links(tally: Tally, work: str) -> None:
  """Links at or inside the target are refused and never followed."""
  checkpoint = os.path.join(work, "linked-checkpoint")
  alberta.checkpoint.save(checkpoint, matrix(5), {"seed": 5})
  user = _user_directory(work, "user")
  snapshot = lambda: {p: sorted(os.listdir(p)) for p in (checkpoint, user)}
  before = snapshot()

  def refused(name: str, target: str, **kwargs) -> None:
    try:
      alberta.checkpoint.save(target, matrix(6), overwrite=True, **kwargs)
    except FileExistsError:
      outcome = "refused"
    except Exception as e:  # pylint: disable=broad-exception-caught
      tally.violate(f"links ({name})", f"{type(e).__name__}: {e}")
      return
    else:
      tally.violate(f"links ({name})", "saved through a link")
      return
    if snapshot() != before or alberta.checkpoint.stale_staging(target):
      tally.violate(f"links ({name})", "something changed")
    else:
      tally.add(f"links ({name})", outcome)

  for name, points_to in (
      ("to a directory", user),
      ("to a checkpoint", checkpoint),
      ("dangling", os.path.join(work, "nowhere")),
  ):
    link = os.path.join(work, "link")
    os.symlink(points_to, link)
    refused(name, link)
    os.unlink(link)
  project = os.path.join(work, "project")
  os.mkdir(project)
  os.symlink(
      os.path.join(checkpoint, "alberta.json"),
      os.path.join(project, "alberta.json"),
  )
  shutil.copytree(os.path.join(checkpoint, "d"), os.path.join(project, "d"))
  refused("alberta.json linked", project)
  mid = os.path.join(work, "mid")
  refused(
      "appearing mid-save",
      mid,
      progress=lambda *_: os.path.lexists(mid) or os.symlink(user, mid),
      progress_every_s=1e-4,
  )
  link = os.path.join(work, "read-link")
  os.symlink(checkpoint, link)
  _restore_case(tally, "links (restore through a link)", link, matrix(5), True)


def _dtypes() -> list[np.dtype]:
  names = [
      "bool",
      "int8",
      "uint8",
      "int16",
      "uint16",
      "int32",
      "uint32",
      "int64",
      "uint64",
      "float16",
      "float32",
      "float64",
      "complex64",
      "complex128",
  ]
  found = [np.dtype(n) for n in names]
  found += [
      np.dtype(getattr(ml_dtypes, n))
      for n in dir(ml_dtypes)
      if isinstance(getattr(ml_dtypes, n), type)
      and issubclass(getattr(ml_dtypes, n), np.generic)
  ]
  return found + [d.newbyteorder() for d in found if d.itemsize > 1]


def dtypes(tally: Tally, work: str) -> None:
  """Every dtype: restored bit for bit, or refused before writing."""
  rng = np.random.default_rng(0)
  for x64 in (False, True):
    with jax.enable_x64(x64):
      for dtype in _dtypes():
        group = f"dtypes (x64={x64})"
        raw = rng.integers(0, 256, (4, 8 * dtype.itemsize), np.uint8)
        array = raw.view(dtype) if dtype.kind != "b" else raw[:, :8] & 1 == 1
        path = os.path.join(work, "dtype")
        try:
          alberta.checkpoint.save(path, array)
        except (TypeError, ValueError) as e:
          if os.listdir(work):
            tally.violate(group, f"{dtype.str} refused after writing")
          else:
            tally.add(group, f"refused ({type(e).__name__})")
          continue
        _restore_case(tally, group, path, array, True)
        shutil.rmtree(path)


def main(argv: Sequence[str]) -> int:
  """Runs every group and reports; the exit status (1: a violation).

  With `--child`, runs that child (saver, reader or claim) on `--target`.
  """
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save at INFO.
  if _CHILD.value:
    {"saver": _saver, "reader": _reader, "claim": _claim}[_CHILD.value](
        _TARGET.value
    )
    return 0
  rng = random.Random(_SEED.value)
  tally = Tally()
  groups: list[tuple[str, Callable[[Tally, str], None]]] = [
      ("damage", lambda t, w: damage(t, w, rng)),
      ("kills", lambda t, w: kills(t, w, rng)),
      ("races", races),
      ("links", links),
      ("dtypes", dtypes),
  ]
  for name, run in groups:
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
      run(tally, work)
    print(f"{name}: {time.monotonic() - start:.0f} s", flush=True)
  for group, counts in sorted(tally.counts.items()):
    print(f"{group}: {sum(counts.values())} cases, {dict(counts)}")
  print(f"{tally.total()} cases, {len(tally.violations)} violations.")
  for violation in tally.violations:
    print("VIOLATION", violation)
  return 1 if tally.violations else 0


if __name__ == "__main__":
  app.run(main)
