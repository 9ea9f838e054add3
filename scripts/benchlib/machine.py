"""The machine, the software and the devices a benchmark run measured on."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from typing import Any

import jax
import numpy as np

import alberta


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _mem_total() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      match = re.search(r"MemTotal:\s+(\d+) kB", f.read())
  except OSError:
    return None
  return int(match.group(1)) * 1024 if match else None


def _git_commit() -> str | None:
  try:
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def environment(command: str, torch_timed: bool = False) -> dict[str, Any]:
  """The machine, the software and the devices a run measured on.

  Args:
    command: the command line that made the run.
    torch_timed: whether the run timed torch: torch's version and thread
      count are then recorded, else None.

  Returns:
    The run's environment record.
  """
  import jaxlib  # pylint: disable=g-import-not-at-top

  if torch_timed:
    import torch  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  usable = (
      len(os.sched_getaffinity(0))
      if hasattr(os, "sched_getaffinity")
      else os.cpu_count()
  )
  return {
      "date_utc": (
          datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"
          )
      ),
      "command": command,
      "git_commit": _git_commit(),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "cpu_model": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "cpus_usable": usable,
      "mem_total_bytes": _mem_total(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "numpy": np.__version__,
      "alberta": alberta.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in devices],
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
      "torch": torch.__version__ if torch_timed else None,
      "torch_threads": torch.get_num_threads() if torch_timed else None,
  }
