r"""Benchmarks alberta's sparse initializers against every anchor.

Times, in one process, compiled ahead of time and warmed up, the minimum and
median of several runs of each method, for each `--shape=ROWS,COLS`:

- `permutation`, `counter`: `alberta.sparse_init` with that method;
- `seed`: the seed's `sparse_init` (`third_party/alberta_framework`), jitted;
- `dense_uniform`: `jax.random.uniform` of the same shape (random numbers
  alone);
- `fill`: a constant written to the whole matrix (the memory-bandwidth floor);
- `torch_original`: Elsayed et al.'s PyTorch original
  (`third_party/alberta_framework`), a Python loop of `torch.randperm` per row;
- `torch_dense`: `torch.empty(shape).uniform_()`;
- `ell`: `alberta.sparse_init_ell` (nonzeros only) at each `--ell_sparsities`,
  against dense `counter` at the same sparsity.

Torch methods are recorded as skipped, with the reason, without torch.

Memory, per method and shape: the compiled program's `memory_analysis()`
(output and temporary bytes; per device for sharded runs) and the process's
peak resident memory during the method's runs minus the resident memory before
(`scripts/benchlib/harness.py` says how). Sharded runs: rows split over 1, 2,
4, ... devices with `alberta.sharded_sparse_init` (`--num_cpu_devices` virtual
CPU devices share the cores: on the CPU this shows sharding's overhead).

Agreement checks, which make the script exit non-zero when they fail: the seed
against `permutation` (eager at small shapes, bit for bit; jitted at each timed
shape, up to the sign of zero, which XLA's select changes), each sharded result
against the one-device matrix, each ELL result scattered back against the dense
counter matrix.

Outputs: tables on stdout, with the counter method's ratios against its targets;
`--json` (every figure, machine, JAX, devices), `--markdown` (the tables for
docs/PERFORMANCE.md after the command that regenerates them), `--plot`.
`--plot_from=a.json,b.json --plot=FILE` redraws the plot from earlier runs.

Example:

  python scripts/benchmark.py --shape=4096,4096 --shape=65536,1024 \
      --json=/tmp/benchmark.json --markdown=/tmp/benchmark.md --plot=/tmp/b.png
"""

from __future__ import annotations

import gc
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence

from absl import app
from absl import flags

# The repository root, for `scripts.benchlib` and `third_party`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# JAX's backend starts only in `main`, after `--num_cpu_devices` is applied.
import jax  # noqa: E402

from scripts.benchlib import harness  # noqa: E402
from scripts.benchlib import plot  # noqa: E402
from scripts.benchlib import ratios as ratios_lib  # noqa: E402
from scripts.benchlib import report  # noqa: E402
from scripts.benchlib import suite  # noqa: E402

ALL_METHODS = suite.ALL_METHODS

_SHAPE = flags.DEFINE_multi_string(
    "shape", ["512,512", "2048,2048", "4096,4096"],
    "Matrix shape ROWS,COLS (fan_out, fan_in); repeat for several.")
_SIZES = flags.DEFINE_list(
    "sizes", None, "Deprecated: ROWSxCOLS,... (use --shape=ROWS,COLS).")
_METHODS = flags.DEFINE_list("methods", list(ALL_METHODS),
                             f"Methods to time, among {ALL_METHODS}.")
_SPARSITY = flags.DEFINE_float("sparsity", 0.9, "Fraction of zeros per row.",
                               lower_bound=0.0, upper_bound=1.0)
_ELL_SPARSITIES = flags.DEFINE_list(
    "ell_sparsities", ["0.9", "0.99"], "Sparsities at which `ell` is timed.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs after a warm-up.",
                                lower_bound=1)
_SLOW_REPEATS = flags.DEFINE_integer(
    "slow_repeats", 2, "Timed runs when the warm-up took over --slow_seconds.",
    lower_bound=1)
_SLOW_SECONDS = flags.DEFINE_float("slow_seconds", 3.0, "See --slow_repeats.",
                                   lower_bound=0.0)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", 8, "Virtual CPU devices; 0 keeps JAX's default.",
    lower_bound=0)
_DEVICE_COUNTS = flags.DEFINE_list(
    "device_counts", [], "Sharded runs' device counts; default 1, 2, 4, ... "
    "up to all local devices.")
_SHARDED = flags.DEFINE_bool("sharded", True, "Run the sharded timings.")
_SHARDED_METHODS = flags.DEFINE_list("sharded_methods", ["counter"],
                                     "alberta methods timed sharded.")
_CHECK_SEED = flags.DEFINE_bool(
    "check_seed", True, "Check that `seed` and `permutation` agree.")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "torch.set_num_threads; 0 keeps torch's default. On a "
    "loaded machine torch's threads can stall torch_original 10x: try 1.",
    lower_bound=0)
_KEY = flags.DEFINE_integer("key", 0, "PRNG seed of the key every method uses.")
_JSON = flags.DEFINE_string("json", None, "Write every figure to this file.")
_PLOT = flags.DEFINE_string("plot", None, "Write the plot to this PNG file.")
_PLOT_FROM = flags.DEFINE_list(
    "plot_from", [], "Time nothing: draw --plot from these --json files, a "
    "later file's figure replacing an earlier one's.")
_MARKDOWN = flags.DEFINE_string(
    "markdown", None, "Write the command and the tables as Markdown here.")


def _all_parse(parse, values) -> bool:
  try:
    return all(parse(v) is not None for v in values or ())
  except ValueError:
    return False


flags.register_validator("shape", lambda v: bool(v) and _all_parse(
    harness.parse_shape, v), "--shape must be ROWS,COLS, positive ints.")
flags.register_validator("sizes", lambda v: _all_parse(
    lambda s: harness.parse_shape(s.lower().replace("x", ",")), v),
                         "--sizes must be ROWSxCOLS shapes.")
flags.register_validator(
    "methods", lambda ms: bool(ms) and all(m in ALL_METHODS for m in ms),
    f"--methods must be a non-empty list among {ALL_METHODS}.")
flags.register_validator(
    "device_counts", lambda cs: all(c.isdigit() and int(c) > 0 for c in cs),
    "--device_counts must be positive integers.")
flags.register_validator(
    "sharded_methods", lambda ms: set(ms) <= {"counter", "permutation"},
    "--sharded_methods must be among counter, permutation.")
flags.register_validator(
    "ell_sparsities", lambda v: _all_parse(
        lambda s: float(s) if 0 <= float(s) <= 1 else None, v),
    "--ell_sparsities must be floats in [0, 1].")


def _shapes() -> list[tuple[int, int]]:
  if _SIZES.value is None:
    return [harness.parse_shape(s) for s in _SHAPE.value]
  if flags.FLAGS["shape"].present:
    raise app.UsageError("Give --shape or the deprecated --sizes, not both.")
  return [harness.parse_shape(s.lower().replace("x", ","))
          for s in _SIZES.value]


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _PLOT_FROM.value:
    if not _PLOT.value:
      raise app.UsageError("--plot_from needs --plot.")
    plot.plot(_PLOT.value, *plot.merged(_PLOT_FROM.value),
              backend=jax.default_backend())
    print(f"wrote {_PLOT.value}")
    return
  shapes = _shapes()
  if _NUM_CPU_DEVICES.value:
    harness.use_cpu_devices(_NUM_CPU_DEVICES.value)
  methods = [m for m in ALL_METHODS if m in _METHODS.value]
  torch, torch_reason = None, "not requested"
  if {"torch_dense", "torch_original"} & set(methods):
    try:
      import torch  # pylint: disable=g-import-not-at-top
      if _TORCH_THREADS.value:
        torch.set_num_threads(_TORCH_THREADS.value)
    except ImportError as e:
      torch_reason = (f"torch is not importable ({e}); pip install torch to "
                      "time it")
  key = jax.random.key(_KEY.value)
  env = harness.environment(
      report.command_line("scripts/benchmark.py", sys.argv[1:]), torch)
  env["loadavg_start"] = os.getloadavg()
  probe = harness.RssProbe()
  print(f"alberta benchmark: {env['backend']} ({env['num_devices']} devices, "
        f"{env['cpu_model']}, {env['cpus_usable']} cores), jax {env['jax']}, "
        f"torch {env['torch']}, load {env['loadavg_start']}", flush=True)

  settings = suite.Settings(
      key=key, sparsity=_SPARSITY.value,
      ell_sparsities=tuple(float(v) for v in _ELL_SPARSITIES.value),
      sharded_methods=tuple(_SHARDED_METHODS.value if _SHARDED.value else ()),
      check_seed=_CHECK_SEED.value, torch_seed=_KEY.value,
      repeats=harness.Repeats(_REPEATS.value, _SLOW_REPEATS.value,
                              _SLOW_SECONDS.value))
  checks = []
  if _CHECK_SEED.value and {"seed", "permutation"} <= set(methods):
    checks.append(suite.seed_check_small(key, _SPARSITY.value))
  available = len(jax.devices())
  counts = ([int(c) for c in _DEVICE_COUNTS.value] or
            [2**i for i in range(int(math.log2(available)) + 1)])
  counts = [c for c in counts if c <= available] if _SHARDED.value else []
  records, sharded = [], []
  for shape in shapes:
    shape_records, kept = suite.bench_shape(shape, methods, settings, probe,
                                            torch, torch_reason, checks)
    records.extend(shape_records)
    if counts:
      sharded.extend(suite.bench_sharded(shape, settings, probe, counts, kept))
    del kept
    gc.collect()
  env["loadavg_end"] = os.getloadavg()

  ratios = ratios_lib.ratios(records)
  seed_passed = all(c["passed"] for c in checks) if checks else None
  print(report.summary(records, sharded, ratios, checks))
  print(f"\nload average: start {env['loadavg_start']}, end "
        f"{env['loadavg_end']}; RSS peaks by {probe.mode}")

  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({
          "environment": env,
          "settings": {"shapes": [list(s) for s in shapes], "methods": methods,
                       "sparsity": _SPARSITY.value, "repeats": _REPEATS.value,
                       "slow_repeats": _SLOW_REPEATS.value,
                       "slow_seconds": _SLOW_SECONDS.value,
                       "device_counts": counts,
                       "sharded_methods": _SHARDED_METHODS.value,
                       "rss_mode": probe.mode},
          "results": records, "sharded": sharded, "ratios": ratios,
          "seed_check": {"passed": seed_passed, "checks": checks}},
                f, indent=1)
    print(f"wrote {_JSON.value}")
  if _MARKDOWN.value:
    with open(_MARKDOWN.value, "w") as f:
      f.write(report.run_markdown(env, records, sharded, ratios, seed_passed))
    print(f"wrote {_MARKDOWN.value}")
  if _PLOT.value:
    plot.plot(_PLOT.value, records, sharded, backend=env["backend"])
    print(f"wrote {_PLOT.value}")
  failed = [name for name, field, rs in (
      ("seed vs permutation", "passed", checks),
      ("ell vs dense counter", "matches_dense_counter", records),
      ("sharded vs one device", "matches_single_device", sharded))
            if not all(r[field] for r in rs if field in r)]
  if failed:
    raise SystemExit(f"agreement checks failed: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main)
