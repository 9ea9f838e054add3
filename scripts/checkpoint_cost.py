"""Measures what checksum verification adds to `alberta.checkpoint.restore`.

For each size, saves a sparse float32 matrix once, then restores it
`--repeats` times with `verify=True` and with `verify=False`, alternating the
two so that load drifts hit both alike, after one untimed warm-up of each
(which compiles the checksum function). Also times the checksum alone on the
restored array. Prints a Markdown table of medians:

  python scripts/checkpoint_cost.py --sizes=1024,2048,4096 --repeats=5

Every restore is checked to return the saved matrix bit for bit.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top

import alberta  # pylint: disable=g-import-not-at-top
from alberta._src import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top


_SIZES = flags.DEFINE_list(
    "sizes", ["1024", "2048", "4096"],
    "Comma-separated N for N x N float32 matrices.")
_SPARSITY = flags.DEFINE_float("sparsity", 0.9, "Fraction of zeros per row.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed restores of each kind.",
                                lower_bound=1)


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start, out


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save and restore.

  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind}; jax "
        f"{jax.__version__}; sparsity {_SPARSITY.value}; median of "
        f"{_REPEATS.value} restores each\n")
  print("| matrix | bytes | restore, verify=False | restore, verify=True | "
        "added | checksum alone |")
  print("|---|---|---|---|---|---|")
  for n in (int(s) for s in _SIZES.value):
    matrix = alberta.sparse_init(jax.random.key(0), (n, n), _SPARSITY.value)
    expected = np.asarray(matrix).view(np.uint32)
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "w")
      alberta.checkpoint.save(path, matrix)
      times = {True: [], False: []}
      for i in range(_REPEATS.value + 1):
        for verify in (False, True):
          seconds, restored = _timed(
              lambda v=verify: alberta.checkpoint.restore(path, verify=v))
          assert np.array_equal(np.asarray(restored).view(np.uint32), expected)
          if i:  # The first round warms up (compiles) both.
            times[verify].append(seconds)
      digest = []
      for _ in range(_REPEATS.value):
        seconds, _ = _timed(lambda: checkpoint_lib._digest(restored))
        digest.append(seconds)
    off, on = (statistics.median(times[v]) for v in (False, True))
    print(f"| {n}x{n} float32 | {matrix.nbytes / 2**20:.3g} MiB | "
          f"{off * 1e3:.0f} ms | {on * 1e3:.0f} ms | "
          f"{(on - off) * 1e3:+.0f} ms ({(on / off - 1) * 100:+.0f}%) | "
          f"{statistics.median(digest) * 1e3:.1f} ms |")


if __name__ == "__main__":
  app.run(main)
