"""Measuring: shapes and devices, timing, resident and compiled memory.

Also the shapes' flags (`parse_shape`, `flag_shapes`) and `compare`, the
agreement of two matrices; `machine` describes the machine.

Nothing here starts JAX's backend at import: `use_cpu_devices` must run before
the first `jax.devices()`.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from scripts.benchlib import layer


def parse_shape(text: str) -> tuple[int, int]:
  """`"ROWS,COLS"` (fan_out, fan_in), e.g. "4096,4096", as two positive ints."""
  match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", text)
  if not match:
    raise ValueError(f"bad shape {text!r}; expected ROWS,COLS, e.g. 4096,4096")
  shape = (int(match.group(1)), int(match.group(2)))
  if min(shape) < 1:
    raise ValueError(f"bad shape {text!r}; both dimensions must be positive")
  return shape


def all_valid(parse: Callable[[str], Any], values: Any) -> bool:
  """Whether `parse` takes each of `values` (None: none) without ValueError."""
  try:
    return all(parse(v) is not None for v in values or ())
  except ValueError:
    return False


def use_cpu_devices(n: int, cpu_only: bool = False) -> None:
  """`n` virtual CPU devices (and, with `cpu_only`, no other backend)."""
  # An inherited --xla_force_host_platform_device_count (e.g. from the test
  # environment) would contradict jax_num_cpu_devices: ours wins.
  os.environ["XLA_FLAGS"] = layer.without_forced_devices(
      os.environ.get("XLA_FLAGS", "")
  )
  if cpu_only:
    jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", n)


class RssProbe:
  """Peak resident memory of the process during one method's runs.

  On Linux the kernel's peak (VmHWM) is reset before each method through
  `/proc/self/clear_refs`, so the peak is that method's own. Elsewhere it falls
  back to `getrusage`'s lifetime peak, which shows a method only when it raises
  the process's high-water mark (a lower bound; `None` otherwise).
  """

  def __init__(self):
    self.mode = "clear_refs" if self._reset() else "getrusage"

  @staticmethod
  def _status(field: str) -> int | None:
    try:
      with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
      return None
    return int(match.group(1)) * 1024 if match else None

  @staticmethod
  def _reset() -> bool:
    # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    try:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    except OSError:
      return False
    return RssProbe._status("VmHWM") is not None

  @staticmethod
  def _maxrss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB else
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

  def start(self) -> None:
    """Starts: collects garbage, notes the RSS, resets the peak if it can."""
    gc.collect()
    self.before = self._status("VmRSS") or 0
    if self.mode == "clear_refs":
      self._reset()
    self.maxrss_before = self._maxrss()

  def stop(self) -> dict[str, Any]:
    """Ends it: the mode, the RSS before, the peak and their difference."""
    if self.mode == "clear_refs":
      peak = self._status("VmHWM")
      delta = peak - self.before
    else:
      peak = self._maxrss()
      delta = peak - self.before if peak > self.maxrss_before else None
    return {
        "rss_mode": self.mode,
        "rss_before_bytes": self.before,
        "rss_peak_bytes": peak,
        "rss_peak_delta_bytes": delta,
    }


@dataclasses.dataclass(frozen=True)
class Repeats:
  """Timed runs per method; `slow` of them if the warm-up took over `slow_s`."""

  normal: int = 5
  slow: int = 2
  slow_s: float = 3.0


def _block(x: Any) -> None:
  for leaf in jax.tree.leaves(x):
    if isinstance(leaf, jax.Array):
      leaf.block_until_ready()


def _nbytes(x: Any) -> int:
  if isinstance(x, (tuple, list)):
    return sum(_nbytes(y) for y in x)
  if hasattr(x, "nbytes"):
    return int(x.nbytes)
  return int(x.numel() * x.element_size())  # a torch tensor


def time_runs(
    run: Callable[[], Any],
    probe: RssProbe,
    repeats: Repeats,
    keep_output: bool = False,
) -> tuple[dict[str, Any], Any]:
  """One warm-up run, then timed runs, each output freed before the next.

  With `keep_output` the last run's output is returned (for the agreement
  checks); it is alive only after its run, so it adds nothing to the peak.
  """
  probe.start()
  t0 = time.perf_counter()
  out = run()
  _block(out)
  first = time.perf_counter() - t0
  output_bytes = _nbytes(out)
  del out
  n = repeats.normal if first <= repeats.slow_s else repeats.slow
  times = []
  for i in range(n):
    t0 = time.perf_counter()
    out = run()
    _block(out)
    times.append(time.perf_counter() - t0)
    if i < n - 1 or not keep_output:
      del out
  memory = probe.stop()
  return (
      {
          "first_run_s": first,
          "times_s": times,
          "repeats": n,
          "output_bytes": output_bytes,
          "memory": memory,
      },
      out if keep_output else None,
  )


def compiled_memory(compiled: Any) -> dict[str, Any]:
  """Bytes of a compiled program (per device), or why the backend gave none."""
  try:
    stats = compiled.memory_analysis()
  except Exception as e:  # pylint: disable=broad-except
    return {"compiled_error": repr(e)}
  if stats is None:
    return {"compiled_error": "memory_analysis() returned None"}
  return {
      "compiled_output_bytes": int(stats.output_size_in_bytes),
      "compiled_temp_bytes": int(stats.temp_size_in_bytes),
      "compiled_argument_bytes": int(stats.argument_size_in_bytes),
      "compiled_alias_bytes": int(stats.alias_size_in_bytes),
  }


def summarize(record: dict[str, Any], entries: int) -> dict[str, Any]:
  """Adds min, median, per-entry time, bandwidth and memory/output ratios."""
  times = record["times_s"]
  record["min_s"] = min(times)
  record["median_s"] = statistics.median(times)
  record["ns_per_entry_min"] = record["min_s"] / entries * 1e9
  record["ns_per_entry_median"] = record["median_s"] / entries * 1e9
  record["output_gb_per_s"] = record["output_bytes"] / record["min_s"] / 1e9
  mem, out_bytes = record["memory"], record["output_bytes"]
  if "compiled_output_bytes" in mem and out_bytes:
    # Per device for a sharded program: compare with the device's share.
    per_device = out_bytes / record.get("devices", 1)
    peak = mem["compiled_output_bytes"] + mem["compiled_temp_bytes"]
    mem["compiled_peak_over_output"] = peak / per_device
    mem["compiled_temp_over_output"] = mem["compiled_temp_bytes"] / per_device
  if mem.get("rss_peak_delta_bytes") is not None and out_bytes:
    mem["rss_delta_over_output"] = mem["rss_peak_delta_bytes"] / out_bytes
  return record


def time_jax(
    name: str,
    fn: Callable[[Any], Any],
    key: Any,
    shape: tuple[int, int],
    probe: RssProbe,
    repeats: Repeats,
    keep_output: bool = False,
    **extra: Any,
) -> tuple[dict[str, Any], Any]:
  """Compiles `fn(key)` ahead of time, then times the compiled program."""
  record = {
      "method": name,
      "shape": list(shape),
      "devices": 1,
      "status": "ok",
      **extra,
  }
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(key).compile()
  record["compile_s"] = time.perf_counter() - t0
  timing, kept = time_runs(lambda: compiled(key), probe, repeats, keep_output)
  record.update(timing)
  record["memory"].update(compiled_memory(compiled))
  return summarize(record, math.prod(shape)), kept


def skipped(
    name: str, shape: tuple[int, int], reason: str, **extra: Any
) -> dict[str, Any]:
  """The record of a method that was not timed, with the reason."""
  return {
      "method": name,
      "shape": list(shape),
      "devices": 1,
      "status": "skipped",
      "reason": reason,
      **extra,
  }


def compare(a: Any, b: Any) -> dict[str, Any]:
  """Agreement of two float32 matrices: bits, and values up to zero's sign."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape or a.dtype != b.dtype:
    return {
        "bitwise_equal": False,
        "equal_up_to_zero_sign": False,
        "detail": f"{a.shape}/{a.dtype} vs {b.shape}/{b.dtype}",
    }
  # For floats `==` holds for equal bits and for -0.0 == +0.0 only.
  return {
      "bitwise_equal": bool(
          np.array_equal(a.view(np.uint32), b.view(np.uint32))
      ),
      "equal_up_to_zero_sign": bool(np.array_equal(a, b)),
      "signed_zero_mismatches": int(
          np.sum((a == 0) & (b == 0) & (np.signbit(a) != np.signbit(b)))
      ),
  }
