"""Test environment: 8 virtual CPU devices, set before JAX starts.

Every test module imports this first (`from tests import env`), so the suite
sees the same devices under pytest, under Bazel and when a module is run alone.
"""

import os

NUM_CPU_DEVICES = 8

_flag = f"--xla_force_host_platform_device_count={NUM_CPU_DEVICES}"
if "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""
):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " " + _flag
  ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
