r"""Benchmarks alberta's sparse initializers against every anchor.

Times, in one process, compiled ahead of time and warmed up, the minimum and
median of several runs of each method, for each `--shape=ROWS,COLS`:

- `permutation`, `counter`: `alberta.sparse_init` with that method;
- `reference`: the reference implementation's `sparse_init`
  (`third_party/alberta_framework`, the code `permutation` reproduces bit for
  bit), jitted; `seed` is a deprecated spelling of `reference`;
- `dense_uniform`: `jax.random.uniform` of the same shape (random numbers
  alone);
- `fill`: a constant written to the whole matrix (the memory-bandwidth floor);
- `torch_original`: Elsayed et al.'s PyTorch original
  (`third_party/alberta_framework`), a Python loop of `torch.randperm` per row;
- `torch_dense`: `torch.empty(shape).uniform_()`;
- `ell`: `alberta.sparse_init_ell` (nonzeros only) at each `--ell_sparsities`,
  against dense `counter` at the same sparsity.

These are the `matrix` cases; `sharded` adds the sharded runs below.

Torch methods are recorded as skipped, with the reason, without torch.

Memory, per method and shape: the compiled program's `memory_analysis()`
(output and temporary bytes; per device for sharded runs) and the process's
peak resident memory during the method's runs minus the resident memory before
(`scripts/benchlib/harness.py` says how). Sharded runs: rows split over each
of `--device_counts` devices (1 and all) with `alberta.sharded_sparse_init`
(`--num_cpu_devices` virtual CPU devices share the cores: on the CPU this
shows sharding's overhead).

The everyday path (`--cases=layer`, i.e. `import,mlp,cache,chunk,cores`;
`scripts/benchlib/layer.py` says what each measures): import time, a small
Haiku MLP's init (also with a cold and a warm persistent compilation cache),
chunked against unchunked generation and one core against all at
`--layer_shape`, each figure the minimum over `--fresh_processes` processes,
each of which is this script run again with `--layer_child`. The `wide` case
(`scripts/benchlib/wide.py`): a 3-layer Haiku MLP of each `--wide_widths`
width, Haiku's default, both methods and the reference as `w_init`, first call
(by stage) and steady state, beside the floor of the reference's construction.

Agreement checks, which make the script exit non-zero when they fail: the
reference against `permutation` (eager at small shapes, bit for bit; jitted at
each timed shape, up to the sign of zero, which XLA's select changes), each
sharded result against the one-device matrix, each ELL result scattered back
against the dense counter matrix, the chunked matrices against the one-piece
one.

Outputs: tables on stdout, with every ratio (from this run's figures);
`--json` (every figure, machine, JAX, devices), `--markdown` (the tables for
docs/PERFORMANCE.md, each part after the command that regenerates it),
`--plot`. `--plot_from=a.json,b.json --plot=FILE` redraws the plot from
earlier runs. `--cases` selects groups of cases; the default, every case at
the default shapes, is the run docs/PERFORMANCE.md shows:

  python scripts/benchmark.py --json=/tmp/bench/run.json \
      --markdown=/tmp/bench/run.md --plot=docs/benchmark.png

A quick look at two shapes, without the fresh processes:

  python scripts/benchmark.py --cases=matrix,sharded --shape=4096,4096 \
      --shape=65536,1024 --markdown=/tmp/benchmark.md
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Sequence

# The repository root, for `scripts.benchlib` and `third_party`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from scripts.benchlib import layer  # noqa: E402  (imports no JAX)
from scripts.benchlib import networks  # noqa: E402  (imports no JAX)
from scripts.benchlib import wide  # noqa: E402  (imports no JAX)

if __name__ == "__main__" and (_TASK := layer.child_task(sys.argv)):
  # A fresh-process measurement: before anything here imports JAX.
  print(
      json.dumps(
          (
              wide.run_task
              if _TASK.get("case") in wide.CASES
              else layer.run_task
          )(_TASK)
      )
  )
  sys.exit(0)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

# JAX's backend starts only in `main`, after `--num_cpu_devices` is applied.
import jax  # noqa: E402

from scripts.benchlib import harness  # noqa: E402
from scripts.benchlib import machine  # noqa: E402
from scripts.benchlib import plot  # noqa: E402
from scripts.benchlib import ratios as ratios_lib  # noqa: E402
from scripts.benchlib import report  # noqa: E402
from scripts.benchlib import suite  # noqa: E402

ALL_METHODS = suite.ALL_METHODS
METHOD_ALIASES = suite.METHOD_ALIASES
ALL_CASES = ("matrix", "sharded", *layer.CASES, *wide.CASES, *networks.CASES)
# The documented run: every case but `sparsify`, whose ResNet-50 children take
# minutes and whose table comes from a run of its own (`--cases=sparsify`).
_GROUPS = {
    "layer": layer.CASES,
    "all": tuple(c for c in ALL_CASES if c not in networks.CASES),
}

_CASES = flags.DEFINE_list(
    "cases",
    ["all"],
    f"Groups of cases among {ALL_CASES}; 'layer' is "
    f"{','.join(layer.CASES)}, 'all' (the documented run) every one but "
    f"{','.join(networks.CASES)}, which runs on its own.",
)
_SHAPE = flags.DEFINE_multi_string(
    "shape",
    ["256,128", "4096,4096", "65536,1024", "1024,65536"],
    "Matrix shape ROWS,COLS (fan_out, fan_in); repeat for several.",
)
_METHODS = flags.DEFINE_list(
    "methods",
    list(ALL_METHODS),
    f"Methods to time, among {ALL_METHODS} "
    f"(deprecated spellings: {', '.join(METHOD_ALIASES)}).",
)
_SPARSITY = flags.DEFINE_float(
    "sparsity",
    0.9,
    "Fraction of zeros per row.",
    lower_bound=0.0,
    upper_bound=1.0,
)
_ELL_SPARSITIES = flags.DEFINE_list(
    "ell_sparsities", ["0.9", "0.99"], "Sparsities at which `ell` is timed."
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Timed runs after a warm-up.", lower_bound=1
)
_SLOW_REPEATS = flags.DEFINE_integer(
    "slow_repeats",
    2,
    "Timed runs when the warm-up took over --slow_seconds.",
    lower_bound=1,
)
_SLOW_SECONDS = flags.DEFINE_float(
    "slow_seconds", 3.0, "See --slow_repeats.", lower_bound=0.0
)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices",
    8,
    "Virtual CPU devices; 0 keeps JAX's default.",
    lower_bound=0,
)
_DEVICE_COUNTS = flags.DEFINE_list(
    "device_counts",
    [],
    "Sharded runs' device counts; default 1 and all local devices.",
)
_SHARDED = flags.DEFINE_bool(
    "sharded", True, "--nosharded: leave the sharded case out of --cases."
)
_SHARDED_METHODS = flags.DEFINE_list(
    "sharded_methods", ["counter"], "alberta methods timed sharded."
)
_CHECK_REFERENCE = flags.DEFINE_bool(
    "check_reference", True, "Check that `reference` and `permutation` agree."
)
_CHECK_SEED = flags.DEFINE_bool(
    "check_seed", None, "Deprecated spelling of --check_reference."
)
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads",
    0,
    "torch.set_num_threads; 0 keeps torch's default. On a "
    "loaded machine torch's threads can stall torch_original 10x: try 1.",
    lower_bound=0,
)
_LAYER_SHAPE = flags.DEFINE_string(
    "layer_shape", "8192,1024", "ROWS,COLS of the chunk and cores cases."
)
_LAYER_CHUNK_ROWS = flags.DEFINE_integer(
    "layer_chunk_rows", 1024, "chunk_rows of the chunk case.", lower_bound=1
)
_WIDE_WIDTHS = flags.DEFINE_list(
    "wide_widths",
    ["1024", "2048", "4096"],
    "Widths of the wide case's 3-layer MLP (input and every layer).",
)
_FRESH_PROCESSES = flags.DEFINE_integer(
    "fresh_processes",
    3,
    "Processes per layer measurement (min kept).",
    lower_bound=1,
)
_KEY = flags.DEFINE_integer("key", 0, "PRNG seed of the key every method uses.")
_JSON = flags.DEFINE_string("json", None, "Write every figure to this file.")
_PLOT = flags.DEFINE_string("plot", None, "Write the plot to this PNG file.")
_PLOT_FROM = flags.DEFINE_list(
    "plot_from",
    [],
    "Time nothing: draw --plot from these --json files, a "
    "later file's figure replacing an earlier one's.",
)
_MARKDOWN = flags.DEFINE_string(
    "markdown", None, "Write the command and the tables as Markdown here."
)


flags.register_validator(
    "shape",
    lambda v: bool(v) and harness.all_valid(harness.parse_shape, v),
    "--shape must be ROWS,COLS, positive ints.",
)
flags.register_validator(
    "cases",
    lambda cs: bool(cs) and all(c in ALL_CASES or c in _GROUPS for c in cs),
    f"--cases must be a non-empty list among {ALL_CASES}, layer, all.",
)
flags.register_validator(
    "layer_shape",
    lambda v: harness.all_valid(harness.parse_shape, [v]),
    "--layer_shape must be ROWS,COLS, positive ints.",
)
flags.register_validator(
    "wide_widths",
    lambda ws: bool(ws) and all(w.isdigit() and int(w) > 0 for w in ws),
    "--wide_widths must be positive integers.",
)
flags.register_validator(
    "methods",
    lambda ms: bool(ms)
    and all(m in ALL_METHODS or m in METHOD_ALIASES for m in ms),
    f"--methods must be a non-empty list among {ALL_METHODS}.",
)
flags.register_validator(
    "device_counts",
    lambda cs: all(c.isdigit() and int(c) > 0 for c in cs),
    "--device_counts must be positive integers.",
)
flags.register_validator(
    "sharded_methods",
    lambda ms: set(ms) <= {"counter", "permutation"},
    "--sharded_methods must be among counter, permutation.",
)
flags.register_validator(
    "ell_sparsities",
    lambda v: harness.all_valid(
        lambda s: float(s) if 0 <= float(s) <= 1 else None, v
    ),
    "--ell_sparsities must be floats in [0, 1].",
)


def _cases() -> list[str]:
  """--cases with its groups spelled out, in `ALL_CASES` order (checked)."""
  chosen = set()
  for c in _CASES.value:
    chosen.update(_GROUPS.get(c, (c,)))
  if not _SHARDED.value:
    chosen.discard("sharded")
  if _PLOT.value and not chosen & {"matrix", "sharded"}:
    raise app.UsageError(
        "--plot draws the matrix and sharded cases; --cases has neither."
    )
  return [c for c in ALL_CASES if c in chosen]


def _methods() -> list[str]:
  """--methods in `ALL_METHODS` order; a deprecated spelling is warned of."""
  chosen = set()
  for m in _METHODS.value:
    if m in METHOD_ALIASES:
      logging.warning(
          "--methods=%s is deprecated; use %s.", m, METHOD_ALIASES[m]
      )
    chosen.add(METHOD_ALIASES.get(m, m))
  return [m for m in ALL_METHODS if m in chosen]


def _check_reference() -> bool:
  """--check_reference, or the deprecated --check_seed (warned); not both."""
  if not _CHECK_SEED.present:
    return _CHECK_REFERENCE.value
  if _CHECK_REFERENCE.present:
    raise app.UsageError(
        "Give --check_reference or its deprecated spelling --check_seed, not "
        "both."
    )
  logging.warning("--check_seed is deprecated; use --check_reference.")
  return _CHECK_SEED.value


def _torch_unavailable() -> str | None:
  """Why torch cannot be timed, or None: it imports (--torch_threads set)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return f"torch is not importable ({e}); pip install torch to time it"
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  return None


def main(argv: Sequence[str]) -> None:
  """Runs the cases the flags select and reports them (or redraws a plot)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _PLOT_FROM.value:
    if not _PLOT.value:
      raise app.UsageError("--plot_from needs --plot.")
    plot.plot(
        _PLOT.value,
        *plot.merged(_PLOT_FROM.value),
        backend=jax.default_backend(),
    )
    print(f"wrote {_PLOT.value}")
    return
  shapes = [harness.parse_shape(s) for s in _SHAPE.value]
  cases = _cases()
  if _NUM_CPU_DEVICES.value:
    harness.use_cpu_devices(_NUM_CPU_DEVICES.value)
  methods = _methods()
  check_reference = _check_reference()
  torch_skipped = "not requested"
  if "matrix" in cases and {"torch_dense", "torch_original"} & set(methods):
    torch_skipped = _torch_unavailable()
  env = machine.environment(
      report.command_line("scripts/benchmark.py", sys.argv[1:]),
      torch_timed=torch_skipped is None,
  )
  env["loadavg_start"] = os.getloadavg()
  probe = harness.RssProbe()
  print(
      f"alberta benchmark ({','.join(cases)}): {env['backend']} "
      f"({env['num_devices']} devices, {env['cpu_model']}, "
      f"{env['cpus_usable']} cores), jax {env['jax']}, torch {env['torch']}, "
      f"load {env['loadavg_start']}",
      flush=True,
  )

  settings = suite.Settings(
      key=jax.random.key(_KEY.value),
      sparsity=_SPARSITY.value,
      ell_sparsities=tuple(float(v) for v in _ELL_SPARSITIES.value),
      sharded_methods=tuple(
          _SHARDED_METHODS.value if "sharded" in cases else ()
      ),
      check_reference=check_reference,
      torch_seed=_KEY.value,
      repeats=harness.Repeats(
          _REPEATS.value, _SLOW_REPEATS.value, _SLOW_SECONDS.value
      ),
  )
  available = len(jax.devices())
  counts = [int(c) for c in _DEVICE_COUNTS.value] or sorted({1, available})
  counts = [c for c in counts if c <= available] if "sharded" in cases else []
  checks = []
  if (
      "matrix" in cases
      and check_reference
      and {"reference", "permutation"} <= set(methods)
  ):
    checks.append(suite.reference_check_small(settings.key, _SPARSITY.value))
  records, sharded = suite.bench_shapes(
      shapes,
      methods if "matrix" in cases else [],
      counts,
      settings,
      probe,
      torch_skipped,
      checks,
  )
  layer_settings = layer.Settings(
      harness.parse_shape(_LAYER_SHAPE.value),
      _LAYER_CHUNK_ROWS.value,
      _FRESH_PROCESSES.value,
      _REPEATS.value,
  )
  layer_records = layer.measure(
      cases, layer_settings, layer.spawn(os.path.abspath(__file__))
  )
  layer_rows = layer.rows(layer_records)
  wide_records = (
      wide.measure(
          wide.Settings(
              tuple(int(w) for w in _WIDE_WIDTHS.value), _FRESH_PROCESSES.value
          ),
          layer.spawn(os.path.abspath(__file__)),
      )
      if "wide" in cases
      else []
  )
  wide_rows = wide.rows(wide_records)
  sections = (
      [(report.wide_intro(_FRESH_PROCESSES.value), wide_rows)]
      if wide_rows
      else []
  )
  # `--cases=sparsify`: a whole ResNet-50 (scripts/benchlib/networks.py).
  network_records = networks.measure(
      cases, networks.Settings(_FRESH_PROCESSES.value, _REPEATS.value)
  )
  env["loadavg_end"] = os.getloadavg()

  ratios = ratios_lib.ratios(records)
  reference_passed = all(c["passed"] for c in checks) if checks else None
  tables = (records, sharded, ratios)
  print(
      report.summary(
          *tables, checks, layer_rows, _FRESH_PROCESSES.value, sections
      )
  )
  if network_records:
    print(networks.summary(network_records, _FRESH_PROCESSES.value))
  print(
      f"\nload average: start {env['loadavg_start']}, end "
      f"{env['loadavg_end']}; RSS peaks by {probe.mode}"
  )

  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(
          {
              "environment": env,
              "settings": {
                  "cases": cases,
                  "shapes": [list(s) for s in shapes],
                  "methods": methods,
                  "sparsity": _SPARSITY.value,
                  "repeats": _REPEATS.value,
                  "slow_repeats": _SLOW_REPEATS.value,
                  "slow_seconds": _SLOW_SECONDS.value,
                  "device_counts": counts,
                  "sharded_methods": _SHARDED_METHODS.value,
                  "layer": {
                      "shape": list(layer_settings.shape),
                      "chunk_rows": layer_settings.chunk_rows,
                      "fresh_processes": layer_settings.processes,
                  },
                  "wide_widths": [int(w) for w in _WIDE_WIDTHS.value],
                  "rss_mode": probe.mode,
              },
              "results": records,
              "sharded": sharded,
              "ratios": ratios,
              "layer": layer_records,
              "layer_rows": layer_rows,
              "wide": wide_records,
              "wide_rows": wide_rows,
              "sparsify": network_records,
              "reference_check": {"passed": reference_passed, "checks": checks},
          },
          f,
          indent=1,
      )
    print(f"wrote {_JSON.value}")
  if _MARKDOWN.value:
    with open(_MARKDOWN.value, "w") as f:
      f.write(
          report.run_markdown(
              env,
              *tables,
              reference_passed,
              layer_rows,
              _FRESH_PROCESSES.value,
              sections,
          )
      )
      f.write(networks.markdown(network_records, env, _FRESH_PROCESSES.value))
    print(f"wrote {_MARKDOWN.value}")
  if _PLOT.value:
    plot.plot(_PLOT.value, records, sharded, backend=env["backend"])
    print(f"wrote {_PLOT.value}")
  failed = [
      name
      for name, ok in (
          ("reference vs permutation", all(c["passed"] for c in checks)),
          (
              "ell vs dense counter",
              all(
                  r["matches_dense_counter"]
                  for r in records
                  if "matches_dense_counter" in r
              ),
          ),
          (
              "sharded vs one device",
              all(
                  r["matches_single_device"]
                  for r in sharded
                  if "matches_single_device" in r
              ),
          ),
          ("chunked vs one piece", all(layer.chunks_agree(layer_records))),
          (
              "wide MLP reference vs permutation",
              all(wide.reference_agrees(wide_records)),
          ),
      )
      if not ok
  ]
  if failed:
    raise SystemExit(f"agreement checks failed: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main)
