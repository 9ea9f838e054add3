r"""Builds a large sparse matrix over every device, verifies it and saves it.

Each device, on each host, computes only its own shard of the matrix with
`alberta.sharded_sparse_init`; the result equals
`alberta.sparse_init(jax.random.key(seed), shape, ...)` whatever the mesh or
the number of hosts. The launcher then checks it with `alberta.verify` (one
sharded reduction: zeros per row, finiteness, value bound), reports time,
throughput, memory and the exact `alberta.sparse_init(...)` call that
reproduces it, and, with `--output`, saves it with orbax-checkpoint for a
training job to `alberta.checkpoint.restore`.

With `--format=ell` it never builds the zeros: each device lists its rows'
`fan_in - k` nonzero values and their ascending column indices with
`alberta.sharded_sparse_init_ell` (rows split over the devices), checks them
(columns in range and strictly ascending, values finite and bounded) and saves
both arrays; `alberta.to_dense(values, indices, shape)` of the restored pair
equals the dense counter-method matrix.

One host (all local devices on rows; a laptop gets 8 virtual CPU devices):

  python scripts/init_large.py --num_cpu_devices=8 --output=/tmp/w

Two hosts (run on each, with its own --process_id):

  python scripts/init_large.py --shape=65536,65536 --output=/shared/w \
      --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0

JAX and alberta (and the launcher's modules that use them, `devices`, `run`
and `report`) are imported in `main`, once absl has checked the flags:
`--help` and a bad flag are answered at once, in one line, without importing
JAX. The device count and the multi-process runtime are then set before any
backend starts. Only alberta's public API is used.

Failures. A save that fails (a full disk, a vanished directory) prints one
line naming `--output` and the cause and exits 1; `--verbosity=1` adds the
traceback and orbax's own log. SIGINT (Ctrl-C) or SIGTERM stops the run with a
one-line message, exit status 130 or 143: a save in progress is abandoned and
its hidden staging directory removed, so nothing appears at `--output`. If the
writes that are already in flight do not end within a few seconds, the
staging directory is removed and the process exits anyway.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from absl import flags
from absl import logging

# The repository root, for `scripts.launchlib`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Neither imports JAX; the modules that do are imported in `_main`.
from scripts.launchlib import exits  # noqa: E402
from scripts.launchlib import options  # noqa: E402

FLAGS = flags.FLAGS
options.define(FLAGS)
flags.adopt_module_key_flags(options)  # --helpshort lists them.


def main(argv: Sequence[str]) -> int:
  """Runs the launcher; the exit status, a flag error or interrupt included."""
  interrupts = exits.Interrupts()
  interrupts.install()
  try:
    return _main(argv, interrupts)
  except options.FlagError as e:
    exits.flag_error(e)
  except KeyboardInterrupt:
    interrupts.exit()
  return exits.FAILED


def _main(argv: Sequence[str], interrupts: exits.Interrupts) -> int:
  """Starts JAX, generates, verifies, saves and reports; the exit status."""
  if len(argv) > 1:
    raise options.FlagError(f"unexpected arguments: {' '.join(argv[1:])}")
  # On the logger: absl's handler forwards records past its own filters.
  logging.get_absl_logger().addFilter(exits.QuietOrbax())
  interrupts.phase = "starting JAX"
  # Only now, with the flags checked: these import JAX and alberta.
  import jax  # pylint: disable=g-import-not-at-top
  import alberta  # pylint: disable=g-import-not-at-top
  from scripts.launchlib import devices  # pylint: disable=g-import-not-at-top
  from scripts.launchlib import report as report_lib  # pylint: disable=g-import-not-at-top
  from scripts.launchlib import run  # pylint: disable=g-import-not-at-top

  devices.start_jax(FLAGS)
  plan = run.Plan.from_flags(FLAGS)
  lead = jax.process_index() == 0
  if FLAGS.output is not None:
    stale = alberta.checkpoint.stale_staging(FLAGS.output)
    interrupts.watch_output(FLAGS.output, stale)
    for path in stale if lead else ():
      logging.warning("Left by an interrupted save (safe to delete): %s", path)
  plan.log()

  interrupts.phase = "compiling"
  compiled, compile_s = plan.compile()
  interrupts.phase = "generating"
  arrays, generate_s = plan.generate(compiled)
  interrupts.phase = "verifying"
  checked, verify_s = plan.verify(arrays)
  memory = report_lib.peak_memory(compiled)
  report_lib.log_memory(memory)
  report = plan.report(
      arrays,
      compile_s=compile_s,
      generate_s=generate_s,
      checked=checked,
      verify_s=verify_s,
      memory=memory,
  )

  status = 0
  if not checked.passed:
    logging.error("Not saving a matrix that failed verification.")
    status = exits.FAILED
  elif FLAGS.output is not None:
    report.update(
        plan.save(
            arrays,
            FLAGS.output,
            overwrite=FLAGS.overwrite,
            interrupts=interrupts,
            lead=lead,
        )
    )
  if FLAGS.report is not None and lead:
    report_lib.write_report(FLAGS.report, report)
    logging.info("Report written to %s.", FLAGS.report)
  return status


if __name__ == "__main__":
  exits.run(main)
