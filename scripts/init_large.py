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

JAX and alberta are imported in `main`, after the flags are parsed: a bad flag
is refused at once, in one line, and the device count is set before JAX
starts. Only alberta's public API is used.

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
import time
from collections.abc import Sequence

from absl import flags
from absl import logging

# The repository root, for `scripts.launchlib`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# JAX and alberta are imported in `main`, after the flags are checked.
from scripts.launchlib import devices  # noqa: E402
from scripts.launchlib import exits  # noqa: E402
from scripts.launchlib import options  # noqa: E402
from scripts.launchlib import report as report_lib  # noqa: E402
from scripts.launchlib import run  # noqa: E402

FLAGS = flags.FLAGS
options.define(FLAGS)
flags.adopt_module_key_flags(options)  # --helpshort lists them.

# Saves shorter than this show no progress line.
_PROGRESS_EVERY_S = 2.0


def main(argv: Sequence[str]) -> int:
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
  jax = devices.start_jax(FLAGS)
  import alberta  # pylint: disable=g-import-not-at-top

  plan = run.Plan.from_flags(jax, alberta, FLAGS)
  lead = jax.process_index() == 0
  if FLAGS.output is not None:
    stale = alberta.checkpoint.stale_staging(FLAGS.output)
    interrupts.watch_output(FLAGS.output, stale)
    for path in stale if lead else ():
      logging.warning("Left by an interrupted save (safe to delete): %s", path)
  plan.log(jax)

  interrupts.phase = "compiling"
  compiled, compile_s = plan.compile(jax, alberta)
  interrupts.phase = "generating"
  arrays, generate_s = plan.generate(jax, compiled)
  interrupts.phase = "verifying"
  checked, verify_s = plan.verify(alberta, arrays)
  memory = report_lib.peak_memory(jax, compiled)
  report_lib.log_memory(memory)
  report = plan.report(jax, alberta, arrays, compile_s=compile_s,
                       generate_s=generate_s, checked=checked,
                       verify_s=verify_s, memory=memory)

  status = 0
  if not checked.passed:
    logging.error("Not saving a matrix that failed verification.")
    status = exits.FAILED
  elif FLAGS.output is not None:
    report.update(_save(alberta, plan, arrays, interrupts, lead))
  if FLAGS.report is not None and lead:
    report_lib.write_report(FLAGS.report, report)
    logging.info("Report written to %s.", FLAGS.report)
  return status


def _save(alberta, plan: run.Plan, arrays, interrupts: exits.Interrupts,
          lead: bool) -> dict[str, object]:
  """Saves the arrays at --output; the report's fields, or exits on failure."""
  raw = report_lib.nbytes(arrays)
  # A sample compressed as orbax does: the progress bar's end.
  estimate = alberta.checkpoint.estimate_stored_bytes(arrays) if lead else None
  interrupts.phase = "saving"
  logging.info("Saving to %s%s.", FLAGS.output,
               f" (~{report_lib.size(estimate)} on disk)" if estimate else "")
  # After a failed write, tensorstore's threads still call back into orbax's
  # closed event loop: their tracebacks only with --verbosity=1.
  sys.unraisablehook = exits.quiet_unraisablehook
  start = time.perf_counter()
  try:
    path = alberta.checkpoint.save(
        FLAGS.output, arrays,  # {"matrix"}, or {"values", "indices"}.
        metadata=plan.metadata(), overwrite=FLAGS.overwrite,
        progress=(report_lib.progress_line(estimate or raw, bool(estimate))
                  if lead else None),
        progress_every_s=_PROGRESS_EVERY_S)
  except Exception as e:  # pylint: disable=broad-except
    # One line; the traceback (and orbax's log) only when asked for.
    if logging.get_verbosity() >= 1:
      logging.exception("The save failed:")
    # The save removes its staging on failure, but orbax's threads may
    # still write into it: removed again until they have stopped.
    interrupts.remove_staging()
    exits.stderr(exits.save_failed(FLAGS.output, e))
    exits.exit_now(exits.FAILED)
  sys.unraisablehook = sys.__unraisablehook__
  interrupts.phase = "finishing"
  save_s = time.perf_counter() - start
  on_disk = report_lib.tree_bytes(path)
  logging.info("Saved %s: %s on disk (%.1f%% of the raw arrays) in %.2f s.",
               path, report_lib.size(on_disk), 100 * on_disk / raw, save_s)
  return dict(output=path, save_seconds=save_s, checkpoint_bytes=on_disk)


if __name__ == "__main__":
  exits.run(main)
