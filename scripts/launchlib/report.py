"""The launcher's output besides the log's steps: sizes, progress, the report.

The save's progress lines, per-device peak memory, and the JSON report
file, written atomically.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from absl import logging
import jax


def size(n: float) -> str:
  """`n` bytes for humans: 512 B, 1.5 KiB, ..., GiB."""
  if n < 1024:
    return f"{n} B"
  for unit in ("KiB", "MiB"):
    n /= 1024
    if n < 1024:
      return f"{n:.1f} {unit}"
  return f"{n / 1024:.1f} GiB"


def nbytes(arrays: dict[str, Any]) -> int:
  """The arrays' raw (uncompressed) bytes."""
  return sum(a.size * a.dtype.itemsize for a in arrays.values())


def tree_bytes(path: str) -> int:
  """Bytes of every file under `path`."""
  return sum(
      os.path.getsize(os.path.join(root, f))
      for root, _, files in os.walk(path)
      for f in files
  )


def progress_line(expected_bytes: int, estimated: bool):
  """A `save` progress callback logging a bar of the bytes on disk.

  Orbax compresses the shards, so the final size is `expected_bytes`, an
  estimate from a sample (or, when `estimated` is False, the uncompressed
  size, which the bar never reaches). The bar stops at 99% until the save
  completes.
  """

  def progress(bytes_on_disk: int, seconds: float) -> None:
    width = 30
    fraction = min(bytes_on_disk / max(expected_bytes, 1), 0.99)
    filled = int(width * fraction)
    rate = bytes_on_disk / max(seconds, 1e-9) / 2**20
    logging.info(
        "writing shards [%s%s] %3d%%  %s of %s%s  %.0f s  %.0f MiB/s",
        "#" * filled,
        "." * (width - filled),
        int(100 * fraction),
        size(bytes_on_disk),
        "~" if estimated else "<= ",
        size(expected_bytes) + ("" if estimated else " uncompressed"),
        seconds,
        rate,
    )

  return progress


class SaveProgress:
  """The save's progress lines: one at once, then one every `every_s` seconds.

  `alberta.checkpoint.save` measures the bytes on disk only while orbax
  writes, and it first computes the arrays' checksums, so none of its
  `progress` calls may come for seconds. Entered as a context manager around
  the save, this logs a `progress_line` as the save starts (0 bytes, 0 s) and
  then, from a daemon thread, one every `every_s` seconds of the save, with
  the bytes of the latest `update` (0 until the first) and the seconds since
  the save started, until the block exits. Pass `update` as the save's
  `progress` callback.

  Args:
    expected_bytes: the end of the bar, as in `progress_line`.
    estimated: whether `expected_bytes` is an estimate, as in `progress_line`.
    every_s: seconds between lines; positive.
    clock: the seconds clock the elapsed time is read from.
    stop_when: once true, no further line (the launcher's: a signal has come,
      and the save is being abandoned; its lines would show stale bytes and
      could follow the exit message).
  """

  def __init__(
      self,
      expected_bytes: int,
      estimated: bool,
      every_s: float,
      clock: Callable[[], float] = time.monotonic,
      stop_when: Callable[[], bool] = lambda: False,
  ):
    if not every_s > 0:
      raise ValueError(f"every_s must be positive, got {every_s!r}.")
    self._line = progress_line(expected_bytes, estimated)
    self._every_s = every_s
    self._clock = clock
    self._stop_when = stop_when
    self._bytes = 0
    self._start = 0.0
    self._done = threading.Event()
    self._thread: threading.Thread | None = None

  def update(self, bytes_on_disk: int, seconds: float) -> None:
    """Records the bytes on disk; `save`'s `progress` callback."""
    del seconds  # Counted from the save's start here, not from its writes.
    self._bytes = bytes_on_disk

  def __enter__(self) -> SaveProgress:
    self._start = self._clock()
    self._line(0, 0.0)
    self._thread = threading.Thread(
        target=self._tick, daemon=True, name="init-large-save-progress"
    )
    self._thread.start()
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self._done.set()
    self._thread.join()

  def _tick(self) -> None:
    ticks = 1
    while not self._done.wait(
        max(0.0, self._start + ticks * self._every_s - self._clock())
    ):
      if self._stop_when():
        return
      self._line(self._bytes, self._clock() - self._start)
      ticks += 1


def peak_memory(compiled: jax.stages.Compiled) -> dict[str, Any]:
  """Per-device peak memory: the runtime's counters, else XLA's estimate."""
  stats = {str(d.id): d.memory_stats() for d in jax.local_devices()}
  host_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  if all(s and "peak_bytes_in_use" in s for s in stats.values()):
    return dict(
        source="device.memory_stats() peak_bytes_in_use",
        per_device_peak_bytes={
            d: s["peak_bytes_in_use"] for d, s in stats.items()
        },
        host_peak_rss_bytes=host_peak,
    )
  analysis = compiled.memory_analysis()
  per_device = (
      analysis.argument_size_in_bytes
      + analysis.output_size_in_bytes
      + analysis.temp_size_in_bytes
      - analysis.alias_size_in_bytes
  )
  return dict(
      source=(
          "compiled.memory_analysis() of the generation program "
          "(arguments + output + temporaries); this platform has no "
          "device memory counters"
      ),
      per_device_peak_bytes={d: per_device for d in stats},
      host_peak_rss_bytes=host_peak,
  )


def log_memory(memory: dict[str, Any]) -> None:
  """Logs `peak_memory`'s figures in one line."""
  logging.info(
      "Peak memory per device (%s): %s; host peak RSS %.2f GiB.",
      memory["source"],
      {d: size(b) for d, b in memory["per_device_peak_bytes"].items()},
      memory["host_peak_rss_bytes"] / 2**30,
  )


def write_report(path: str, report: dict[str, Any]) -> None:
  """Writes `report` as JSON at `path`, atomically (a temporary, renamed)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
