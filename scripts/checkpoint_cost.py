r"""Measures what checksum verification adds to `alberta.checkpoint.restore`.

For each `--shape=ROWS,COLS`, saves a sparse float32 matrix once, then
restores it `--repeats` times with `verify=True` and with `verify=False`,
alternating the two so that load drifts hit both alike, after one untimed
warm-up of each (which compiles the checksum function). The difference of the
medians is the verification's cost. Prints the command, then a Markdown table
of medians (for docs/CHECKPOINT.md):

  python scripts/checkpoint_cost.py --shape=1024,1024 --shape=2048,2048 \
      --shape=4096,4096 --repeats=7

Every restore is checked to return the saved matrix bit for bit. Only public
names (`alberta.sparse_init`, `alberta.checkpoint`) are used.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging

# The repository root, for `scripts.benchlib`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import alberta  # noqa: E402
from scripts.benchlib import harness  # noqa: E402
from scripts.benchlib import report  # noqa: E402

_SHAPE = flags.DEFINE_multi_string(
    "shape",
    ["1024,1024", "2048,2048", "4096,4096"],
    "Matrix shape ROWS,COLS (fan_out, fan_in); repeat for several.",
)
_SPARSITY = flags.DEFINE_float(
    "sparsity",
    0.9,
    "Fraction of zeros per row.",
    lower_bound=0.0,
    upper_bound=1.0,
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Timed restores of each kind.", lower_bound=1
)


flags.register_validator(
    "shape",
    lambda v: bool(v) and harness.all_valid(harness.parse_shape, v),
    "--shape must be ROWS,COLS, positive ints.",
)


def _timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


def restore_times(
    shape: tuple[int, int], sparsity: float, repeats: int
) -> dict[bool, list[float]]:
  """Seconds of each timed restore, by `verify`, after one warm-up of each."""
  matrix = alberta.sparse_init(jax.random.key(0), shape, sparsity)
  expected = np.asarray(matrix).view(np.uint32)
  times = {False: [], True: []}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "w")
    alberta.checkpoint.save(path, matrix)
    for i in range(repeats + 1):
      for verify in (False, True):
        seconds, restored = _timed(
            lambda v=verify: alberta.checkpoint.restore(path, verify=v)
        )
        if not np.array_equal(np.asarray(restored).view(np.uint32), expected):
          raise AssertionError(
              f"restore(verify={verify}) of {shape} differs "
              "from the saved matrix"
          )
        if i:  # The first round warms up (compiles) both.
          times[verify].append(seconds)
  return times


def main(argv: Sequence[str]) -> None:
  """Prints the table of restore times, without and with verification."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  shapes = [harness.parse_shape(s) for s in _SHAPE.value]
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save and restore.
  device = jax.devices()[0]
  lines = report.command_block(
      report.command_line("scripts/checkpoint_cost.py", sys.argv[1:])
  )
  lines += [
      (
          f"Device: {device.platform} {device.device_kind}; jax "
          f"{jax.__version__}; sparsity {_SPARSITY.value}; median of "
          f"{_REPEATS.value} restores each."
      ),
      "",
      (
          "| matrix | bytes | restore, verify=False | restore, verify=True "
          "| added |"
      ),
      "|---|---:|---:|---:|---:|",
  ]
  print("\n".join(lines), flush=True)
  for shape in shapes:
    times = restore_times(shape, _SPARSITY.value, _REPEATS.value)
    off, on = (statistics.median(times[v]) for v in (False, True))
    print(
        f"| {shape[0]}x{shape[1]} float32 | "
        f"{4 * shape[0] * shape[1] / 2**20:.3g} MiB | {off * 1e3:.0f} ms | "
        f"{on * 1e3:.0f} ms | {(on - off) * 1e3:+.0f} ms "
        f"({(on / off - 1) * 100:+.0f}%) |",
        flush=True,
    )


if __name__ == "__main__":
  app.run(main)
