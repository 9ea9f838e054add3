r"""Benchmarks alberta's sparse initializers against every anchor.

Times, in one process, jitted and warmed up, the minimum and median of several
runs of each method, for each matrix shape:

- `permutation`, `counter`: `alberta.sparse_init` with that method;
- `seed`: the seed's `sparse_init` (`alberta_framework`), transcribed below as
  the reference baseline; the script checks that it agrees with `permutation`;
- `dense_uniform`: `jax.random.uniform` of the same shape (random numbers alone);
- `fill`: a constant written to the whole matrix (the memory-bandwidth floor);
- `torch_original`: the PyTorch original of Elsayed et al. (`sparse_init.py`):
  LeCun-uniform values, then a Python loop of `torch.randperm` per output row;
- `torch_dense`: `torch.empty(shape).uniform_()`;
- `ell`: `alberta.sparse_init_ell` (nonzeros only), when the library has it.

The torch methods are recorded as skipped, with the reason, when torch is not
installed; `ell` likewise when alberta has no `sparse_init_ell`.

Memory, per method and shape:
- the compiled program's `memory_analysis()`: output and temporary bytes (JAX
  methods; per device for sharded runs);
- the process's peak resident memory while the method ran, minus the resident
  memory just before (after compiling): on Linux the peak is reset before each
  method through `/proc/self/clear_refs`, so the figure is that method's own;
  elsewhere it falls back to `getrusage`'s lifetime peak, which only shows a
  method that raises the process's high-water mark (recorded as a lower bound).

Sharded runs: `alberta.sharded_sparse_init` with rows split over 1, 2, 4, ...
local devices (`--num_cpu_devices` virtual devices on the CPU), showing how
time scales with devices. Virtual CPU devices share the machine's cores, so on
the CPU this shows the overhead of sharding, not a speed-up beyond the cores.

Agreement checks, which make the script exit non-zero when they fail: the seed
against `permutation`, each sharded result against the one-device matrix, and
each ELL result scattered back against the dense counter matrix.

Outputs: a table on stdout, the speed ratios of the counter method against its
targets, `--json` with every figure and the machine/JAX/device details,
`--markdown` with the tables for docs/PERFORMANCE.md, and `--plot` (time per
entry versus matrix size, log-log; memory over output per method; sharded time
versus devices). `--plot_from=a.json,b.json` redraws the plot from earlier runs
without timing anything.

Example:

  python scripts/benchmark.py --sizes=4096x4096,8192x8192,65536x1024,1024x65536 \
      --json=/tmp/benchmark.json --plot=docs/benchmark.png
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags

# JAX is imported here but its backend starts only in `main`, after
# `--num_cpu_devices` has been applied.
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import alberta

ALL_METHODS = ("fill", "dense_uniform", "counter", "permutation", "seed",
               "torch_dense", "torch_original", "ell")
_JAX_METHODS = ("fill", "dense_uniform", "counter", "permutation", "seed")
_TORCH_METHODS = ("torch_dense", "torch_original")

_SIZES = flags.DEFINE_list(
    "sizes", ["512x512", "2048x2048", "4096x4096"],
    "Matrix shapes FAN_OUTxFAN_IN, e.g. 4096x4096,65536x1024.")
_METHODS = flags.DEFINE_list(
    "methods", list(ALL_METHODS), f"Methods to time, among {ALL_METHODS}.")
_SPARSITY = flags.DEFINE_float(
    "sparsity", 0.9, "Fraction of each output unit's inputs set to zero.",
    lower_bound=0.0, upper_bound=1.0)
_ELL_SPARSITIES = flags.DEFINE_list(
    "ell_sparsities", ["0.9", "0.99"],
    "Sparsities at which `ell` is timed (against `counter` at the same one).")
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Timed runs per method and shape (after one warm-up run).",
    lower_bound=1)
_SLOW_REPEATS = flags.DEFINE_integer(
    "slow_repeats", 2,
    "Timed runs for a method whose warm-up run took over --slow_seconds.",
    lower_bound=1)
_SLOW_SECONDS = flags.DEFINE_float(
    "slow_seconds", 3.0, "Warm-up time above which --slow_repeats applies.",
    lower_bound=0.0)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", 8,
    "Virtual CPU devices (jax_num_cpu_devices); 0 keeps JAX's default.",
    lower_bound=0)
_DEVICE_COUNTS = flags.DEFINE_list(
    "device_counts", [],
    "Device counts for the sharded runs; default 1, 2, 4, ... up to all local "
    "devices. Empty with --nosharded skips them.")
_SHARDED = flags.DEFINE_bool("sharded", True, "Run the sharded timings.")
_SHARDED_METHODS = flags.DEFINE_list(
    "sharded_methods", ["counter"], "alberta methods timed sharded.")
_CHECK_SEED = flags.DEFINE_bool(
    "check_seed", True,
    "Check that `seed` and `permutation` agree (needs both in --methods).")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0,
    "torch.set_num_threads for the torch methods; 0 keeps torch's default. On "
    "a loaded machine torch's OpenMP threads can stall the per-row loop of "
    "torch_original by 10x or more: compare with --torch_threads=1.",
    lower_bound=0)
_KEY = flags.DEFINE_integer("key", 0, "PRNG seed of the key every method uses.")
_JSON = flags.DEFINE_string("json", None, "Write every figure to this file.")
_PLOT = flags.DEFINE_string("plot", None, "Write the plot to this PNG file.")
_PLOT_FROM = flags.DEFINE_list(
    "plot_from", [],
    "Benchmark nothing: draw --plot from these --json files instead, merged "
    "(a later file's figure replaces an earlier one's for the same method, "
    "shape, sparsity and device count).")
_MARKDOWN = flags.DEFINE_string(
    "markdown", None, "Write the tables as Markdown to this file (for docs/).")


def _parse_shape(text: str) -> tuple[int, int]:
  match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
  if not match:
    raise ValueError(f"bad shape {text!r}; expected FAN_OUTxFAN_IN, e.g. 4096x4096")
  shape = (int(match.group(1)), int(match.group(2)))
  if min(shape) < 1:
    raise ValueError(f"bad shape {text!r}; both dimensions must be positive")
  return shape


def _valid_sizes(sizes: Sequence[str]) -> bool:
  try:
    for s in sizes:
      _parse_shape(s)
  except ValueError:
    return False
  return bool(sizes)


flags.register_validator(
    "sizes", _valid_sizes, "--sizes must be a list of FAN_OUTxFAN_IN shapes.")
flags.register_validator(
    "methods", lambda ms: bool(ms) and all(m in ALL_METHODS for m in ms),
    f"--methods must be a non-empty list among {ALL_METHODS}.")
flags.register_validator(
    "device_counts",
    lambda cs: all(c.strip().isdigit() and int(c) > 0 for c in cs),
    "--device_counts must be positive integers.")
flags.register_validator(
    "sharded_methods",
    lambda ms: all(m in ("counter", "permutation") for m in ms),
    "--sharded_methods must be among counter, permutation.")


def _valid_sparsities(values: Sequence[str]) -> bool:
  try:
    return all(0.0 <= float(v) <= 1.0 for v in values)
  except ValueError:
    return False


flags.register_validator("ell_sparsities", _valid_sparsities,
                         "--ell_sparsities must be floats in [0, 1].")


# ----------------------------------------------------------------------------
# The baselines.


def seed_sparse_init(key, shape, sparsity=0.9, init_type="uniform"):
  """The seed's `sparse_init` (`alberta_framework`), as written in the seed.

  A faithful transcription of `shared/seed/sparse_init_seed.txt` (only the
  jaxtyping annotations dropped), kept here as the benchmark's reference
  baseline; `tests/benchmark_test.py` checks it against the tests' copy.
  """
  fan_out, fan_in = shape
  num_zeros = int(sparsity * fan_in + 0.5)  # round to nearest int

  # Split key for init and sparsity mask
  init_key, mask_key = jr.split(key)

  # LeCun-scale initialization
  scale = 1.0 / fan_in**0.5
  if init_type == "uniform":
    weights = jr.uniform(init_key, shape, dtype=jnp.float32, minval=-scale,
                         maxval=scale)
  elif init_type == "normal":
    weights = jr.normal(init_key, shape, dtype=jnp.float32) * scale
  else:
    raise ValueError(f"init_type must be 'uniform' or 'normal', got '{init_type}'")

  # Create sparsity mask: for each output neuron, zero out num_zeros inputs
  # Use vmap over output neurons with independent random permutations
  row_keys = jr.split(mask_key, fan_out)

  def make_row_mask(row_key):
    """Create a binary mask for a single output neuron."""
    perm = jr.permutation(row_key, fan_in)
    # mask[i] = 1 if perm[i] >= num_zeros, else 0
    mask = (perm >= num_zeros).astype(jnp.float32)
    return mask

  masks = jax.vmap(make_row_mask)(row_keys)  # (fan_out, fan_in)
  return weights * masks


def torch_sparse_init(tensor, sparsity, type="uniform"):  # pylint: disable=redefined-builtin
  """The 2-D branch of Elsayed et al.'s PyTorch `sparse_init.py`, as written.

  Note its zero count rounds up (`ceil`), where the seed rounds to nearest:
  one zero more per row at most, immaterial to the timing.
  """
  import torch  # pylint: disable=g-import-not-at-top
  fan_out, fan_in = tensor.shape
  num_zeros = int(math.ceil(sparsity * fan_in))
  with torch.no_grad():
    if type == "uniform":
      tensor.uniform_(-math.sqrt(1.0 / fan_in), math.sqrt(1.0 / fan_in))
    elif type == "normal":
      tensor.normal_(0, math.sqrt(1.0 / fan_in))
    else:
      raise ValueError("Unknown initialization type")
    for col_idx in range(fan_out):
      row_indices = torch.randperm(fan_in)
      zero_indices = row_indices[:num_zeros]
      tensor[col_idx, zero_indices] = 0
  return tensor


def _torch_or_reason() -> tuple[Any, str | None]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, f"torch is not importable ({e}); pip install torch to time it"
  return torch, None


# ----------------------------------------------------------------------------
# Resident memory.


class _RssProbe:
  """Peak resident memory of the process during one method's runs."""

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
    # Writing 5 resets the kernel's peak-RSS counter (VmHWM) to the current
    # RSS (Linux >= 4.0), so the next peak is this method's alone.
    try:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    except OSError:
      return False
    return _RssProbe._status("VmHWM") is not None

  @staticmethod
  def _maxrss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB else
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

  def start(self) -> None:
    gc.collect()
    self.before = self._status("VmRSS") or 0
    if self.mode == "clear_refs":
      self._reset()
    self.maxrss_before = self._maxrss()

  def stop(self) -> dict[str, Any]:
    if self.mode == "clear_refs":
      peak = self._status("VmHWM")
      delta = peak - self.before
    else:
      peak = self._maxrss()
      # The lifetime peak moved only if this method set a new one.
      delta = peak - self.before if peak > self.maxrss_before else None
    return {"rss_mode": self.mode, "rss_before_bytes": self.before,
            "rss_peak_bytes": peak, "rss_peak_delta_bytes": delta}


# ----------------------------------------------------------------------------
# Timing.


def _block(x: Any) -> None:
  if isinstance(x, jax.Array):
    x.block_until_ready()
  elif isinstance(x, (tuple, list)):
    for y in x:
      _block(y)
  elif isinstance(x, dict):
    for y in x.values():
      _block(y)


def _nbytes(x: Any) -> int:
  if isinstance(x, (tuple, list)):
    return sum(_nbytes(y) for y in x)
  if isinstance(x, dict):
    return sum(_nbytes(y) for y in x.values())
  if hasattr(x, "nbytes"):
    return int(x.nbytes)
  return int(x.numel() * x.element_size())  # a torch tensor


def _time_runs(run: Callable[[], Any], probe: _RssProbe,
               keep_output: bool) -> tuple[dict[str, Any], Any]:
  """Warm-up run, then timed runs; each output freed before the next run.

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
  repeats = _REPEATS.value if first <= _SLOW_SECONDS.value else _SLOW_REPEATS.value
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    out = run()
    _block(out)
    times.append(time.perf_counter() - t0)
    if i < repeats - 1 or not keep_output:
      del out
  memory = probe.stop()
  kept = out if keep_output else None
  return {"first_run_s": first, "times_s": times, "repeats": repeats,
          "output_bytes": output_bytes, "memory": memory}, kept


def _compiled_memory(compiled: Any) -> dict[str, Any]:
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


def _summarize(record: dict[str, Any], entries: int) -> dict[str, Any]:
  """Adds min, median, per-entry time, bandwidth and memory/output ratios."""
  times = record["times_s"]
  record["min_s"] = min(times)
  record["median_s"] = statistics.median(times)
  record["ns_per_entry_min"] = record["min_s"] / entries * 1e9
  record["ns_per_entry_median"] = record["median_s"] / entries * 1e9
  record["output_gb_per_s"] = record["output_bytes"] / record["min_s"] / 1e9
  mem = record["memory"]
  out_bytes = record["output_bytes"]
  devices = record.get("devices", 1)
  if "compiled_output_bytes" in mem and out_bytes:
    # Per device for a sharded program: compare with the device's share.
    per_device_out = out_bytes / devices
    mem["compiled_peak_over_output"] = (
        (mem["compiled_output_bytes"] + mem["compiled_temp_bytes"]) / per_device_out)
    mem["compiled_temp_over_output"] = mem["compiled_temp_bytes"] / per_device_out
  if mem.get("rss_peak_delta_bytes") is not None and out_bytes:
    mem["rss_delta_over_output"] = mem["rss_peak_delta_bytes"] / out_bytes
  return record


def _bench_jax(name: str, fn: Callable[[Any], Any], key: Any, shape, *,
               probe: _RssProbe, extra: dict[str, Any] | None = None,
               keep_output: bool = False) -> tuple[dict[str, Any], Any]:
  """Compiles `fn(key)` ahead of time, then times the compiled program."""
  record = {"method": name, "shape": list(shape), "devices": 1, "status": "ok"}
  record.update(extra or {})
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(key).compile()
  record["compile_s"] = time.perf_counter() - t0
  timing, kept = _time_runs(lambda: compiled(key), probe, keep_output)
  record.update(timing)
  record["memory"].update(_compiled_memory(compiled))
  return _summarize(record, math.prod(shape[:2])), kept


def _skipped(name: str, shape, reason: str, **extra) -> dict[str, Any]:
  record = {"method": name, "shape": list(shape), "devices": 1,
            "status": "skipped", "reason": reason}
  record.update(extra)
  return record


# ----------------------------------------------------------------------------
# The methods.


def _jax_method(name: str, shape: tuple[int, int], sparsity: float):
  scale = 1.0 / math.sqrt(shape[1])
  if name == "fill":
    # The constant comes from the key so that XLA cannot fold the output.
    return lambda k: jnp.full(shape, jr.key_data(k).ravel()[0].astype(jnp.float32))
  if name == "dense_uniform":
    return lambda k: jr.uniform(k, shape, jnp.float32, -scale, scale)
  if name == "seed":
    return lambda k: seed_sparse_init(k, shape, sparsity)
  return lambda k: alberta.sparse_init(k, shape, sparsity, method=name)


def _ell_fn() -> Callable[..., Any] | None:
  return getattr(alberta, "sparse_init_ell", None)


def _compare(a: Any, b: Any) -> dict[str, Any]:
  """Agreement of two float32 matrices: bits, and values up to zero's sign."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape or a.dtype != b.dtype:
    return {"bitwise_equal": False, "equal_up_to_zero_sign": False,
            "detail": f"{a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"}
  bitwise = bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))
  # For floats `==` holds for equal bits and for -0.0 == +0.0 only.
  values = bool(np.array_equal(a, b))
  return {"bitwise_equal": bitwise, "equal_up_to_zero_sign": values,
          "signed_zero_mismatches": int(np.sum(
              (a == 0) & (b == 0) & (np.signbit(a) != np.signbit(b))))}


def _seed_check_small(key: Any, sparsity: float) -> dict[str, Any]:
  """The seed called eagerly, as its users call it, against `permutation`.

  Under an outer `jax.jit` XLA turns the seed's `weights * mask` into a select,
  so the jitted seed writes +0.0 where the eager seed writes -0.0 (a masked
  negative weight times 0.0); alberta reproduces the eager seed. The timed,
  jitted runs are therefore compared up to the sign of zero, and these small
  eager calls check every bit. (Not under `jax.disable_jit()`: that evaluates
  the sampler's arithmetic unfused and moves uniform values by an ulp.)
  """
  results = []
  for shape in ((64, 100), (37, 1000)):
    seed = seed_sparse_init(key, shape, sparsity)
    perm = alberta.sparse_init(key, shape, sparsity, method="permutation")
    results.append({"shape": list(shape), **_compare(seed, perm)})
  return {"eager_small": results,
          "passed": all(r["bitwise_equal"] for r in results)}


# ----------------------------------------------------------------------------
# Machine details.


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
    return int(match.group(1)) * 1024 if match else None
  except OSError:
    return None


def _git_commit() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10, check=False,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def _environment(torch: Any) -> dict[str, Any]:
  devices = jax.devices()
  env = {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
      "git_commit": _git_commit(),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "cpu_model": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(
          os, "sched_getaffinity") else os.cpu_count(),
      "mem_total_bytes": _mem_total(),
      "jax": jax.__version__,
      "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
      "numpy": np.__version__,
      "alberta": alberta.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in devices],
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
      "torch": None if torch is None else torch.__version__,
      "torch_threads": None if torch is None else torch.get_num_threads(),
  }
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    env["jaxlib"] = jaxlib.__version__
  except (ImportError, AttributeError):
    pass
  return env


# ----------------------------------------------------------------------------
# Reporting.


def _mb(x: float | None) -> str:
  return "-" if x is None else f"{x / 2**20:.1f}"


def _table(records: Sequence[dict[str, Any]]) -> str:
  header = (f"{'method':<15} {'shape':>12} {'dev':>3} {'sparsity':>8} "
            f"{'min s':>9} {'median s':>9} {'ns/entry':>9} {'GB/s':>7} "
            f"{'out MB':>8} {'temp MB':>8} {'peak/out':>8} {'rss MB':>8} "
            f"{'rss/out':>7} {'runs':>4}")
  lines = [header, "-" * len(header)]
  for r in records:
    shape = "x".join(map(str, r["shape"]))
    sparsity = f"{r['sparsity']:g}" if r.get("sparsity") is not None else "-"
    if r["status"] != "ok":
      lines.append(f"{r['method']:<15} {shape:>12} {r['devices']:>3} "
                   f"{sparsity:>8} {r['status']}: {r.get('reason', '')}")
      continue
    m = r["memory"]
    peak = m.get("compiled_peak_over_output")
    rss_ratio = m.get("rss_delta_over_output")
    lines.append(
        f"{r['method']:<15} {shape:>12} {r['devices']:>3} {sparsity:>8} "
        f"{r['min_s']:>9.4f} {r['median_s']:>9.4f} "
        f"{r['ns_per_entry_min']:>9.3f} {r['output_gb_per_s']:>7.2f} "
        f"{_mb(r['output_bytes']):>8} {_mb(m.get('compiled_temp_bytes')):>8} "
        f"{'-' if peak is None else f'{peak:.3f}':>8} "
        f"{_mb(m.get('rss_peak_delta_bytes')):>8} "
        f"{'-' if rss_ratio is None else f'{rss_ratio:.2f}':>7} "
        f"{len(r['times_s']):>4}")
  return "\n".join(lines)


# (numerator, denominator, how the ratio reads, target test, target text)
_RATIO_SPECS = (
    ("permutation", "counter", "counter speed-up over permutation",
     lambda x: x >= 20, ">= 20"),
    ("seed", "counter", "counter speed-up over the seed (jitted)",
     lambda x: x >= 20, ">= 20"),
    ("torch_original", "counter", "counter speed-up over torch_original",
     lambda x: x > 1, "> 1"),
    ("counter", "dense_uniform", "counter time / dense_uniform time",
     lambda x: x <= 1.5, "<= 1.5"),
    ("counter", "fill", "counter time / fill time (bandwidth floor)",
     None, None),
)


def _ratios(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The ratios the counter method is held to, per shape, from min times."""
  by = {}
  for r in records:
    # `ell` and its dense baselines at other sparsities are compared below.
    if (r["status"] == "ok" and r["devices"] == 1 and r["method"] != "ell"
        and "role" not in r):
      by[(r["method"], tuple(r["shape"]))] = r
  shapes = []
  for r in records:
    if tuple(r["shape"]) not in shapes:
      shapes.append(tuple(r["shape"]))
  out = []
  for shape in shapes:
    for num, den, what, test, target in _RATIO_SPECS:
      a, b = by.get((num, shape)), by.get((den, shape))
      if a is None or b is None:
        continue
      ratio = a["min_s"] / b["min_s"]
      out.append({
          "shape": list(shape), "numerator": num, "denominator": den,
          "what": what, "ratio_min": ratio,
          "ratio_median": a["median_s"] / b["median_s"],
          "target": target, "met": None if test is None else bool(test(ratio)),
      })
    out.extend(_ell_ratios(records, shape))
  return out


def _compiled_peak(r: dict[str, Any]) -> int | None:
  m = r["memory"]
  if "compiled_output_bytes" not in m:
    return None
  return m["compiled_output_bytes"] + m["compiled_temp_bytes"]


def _ell_ratios(records: Sequence[dict[str, Any]],
                shape: tuple[int, int]) -> list[dict[str, Any]]:
  """`ell` against the dense `counter` matrix at the same sparsity."""
  dense = {r["sparsity"]: r for r in records
           if r["method"] == "counter" and r["status"] == "ok"
           and r["devices"] == 1 and tuple(r["shape"]) == shape}
  out = []
  for r in records:
    if (r["method"] != "ell" or r["status"] != "ok"
        or tuple(r["shape"]) != shape or r["sparsity"] not in dense):
      continue
    d = dense[r["sparsity"]]
    base = {"shape": list(shape), "numerator": "ell", "denominator": "counter",
            "sparsity": r["sparsity"], "target": None, "met": None}
    out.append({**base,
                "what": f"ell time / dense counter time, s={r['sparsity']:g}",
                "ratio_min": r["min_s"] / d["min_s"],
                "ratio_median": r["median_s"] / d["median_s"]})
    if _compiled_peak(r) and _compiled_peak(d):
      ratio = _compiled_peak(r) / _compiled_peak(d)
      out.append({**base,
                  "what": f"ell memory / dense counter memory, s={r['sparsity']:g}",
                  "ratio_min": ratio, "ratio_median": ratio,
                  "measure": "compiled output + temp bytes"})
  return out


def _ratio_table(ratios: Sequence[dict[str, Any]]) -> str:
  lines = []
  for r in ratios:
    shape = "x".join(map(str, r["shape"]))
    verdict = ("" if r["met"] is None else
               f"target {r['target']}: {'MET' if r['met'] else 'MISSED'}")
    lines.append(f"{shape:>12}  {r['what']:<44} {r['ratio_min']:>8.2f}x "
                 f"(median {r['ratio_median']:.2f}x)  {verdict}")
  return "\n".join(lines)


def _markdown(env: dict[str, Any], records: Sequence[dict[str, Any]],
              sharded: Sequence[dict[str, Any]],
              ratios: Sequence[dict[str, Any]], seed_passed: bool | None) -> str:
  """The figures as Markdown tables, for docs/PERFORMANCE.md."""

  def rows(rs):
    out = ["| method | shape | devices | sparsity | min s | median s | "
           "ns/entry | output GB/s | compiled (out+temp)/out | RSS delta/out "
           "| runs |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rs:
      shape = "x".join(map(str, r["shape"]))
      sparsity = f"{r['sparsity']:g}" if r.get("sparsity") is not None else ""
      if r["status"] != "ok":
        out.append(f"| {r['method']} | {shape} | {r['devices']} | {sparsity} | "
                   f"{r['status']}: {r.get('reason', '')} | | | | | | |")
        continue
      m = r["memory"]
      peak = m.get("compiled_peak_over_output")
      rss = m.get("rss_delta_over_output")
      out.append(
          f"| {r['method']} | {shape} | {r['devices']} | {sparsity} | "
          f"{r['min_s']:.4f} | {r['median_s']:.4f} | "
          f"{r['ns_per_entry_min']:.2f} | {r['output_gb_per_s']:.2f} | "
          f"{'' if peak is None else f'{peak:.3f}'} | "
          f"{'' if rss is None else f'{rss:.2f}'} | {len(r['times_s'])} |")
    return out

  lines = [f"Measured {env['date_utc']} on {env['cpu_model']} "
           f"({env['cpus_usable']} cores usable, "
           f"{(env['mem_total_bytes'] or 0) / 2**30:.0f} GiB), "
           f"{env['platform']}; Python {env['python']}, JAX {env['jax']} "
           f"({env['backend']}, {env['num_devices']} devices), "
           f"torch {env['torch']} ({env['torch_threads']} threads); "
           f"load average {env['loadavg_start'][0]:.2f} at start, "
           f"{env['loadavg_end'][0]:.2f} at end; commit {env['git_commit']}.",
           "", "Command:", "", "```", env["command"], "```", ""]
  lines += rows(records)
  if sharded:
    lines += ["", "Sharded (`alberta.sharded_sparse_init`, rows split over "
              "devices; compiled memory per device):", ""]
    lines += rows(sharded)
  if ratios:
    lines += ["", "Ratios, from the min times (and from the medians):", "",
              "| shape | ratio | min times | median times | target |",
              "|---|---|---:|---:|---|"]
    for r in ratios:
      verdict = ("" if r["met"] is None else
                 f"{r['target']}: {'met' if r['met'] else '**missed**'}")
      lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['what']} | "
                   f"{r['ratio_min']:.2f}x | {r['ratio_median']:.2f}x | "
                   f"{verdict} |")
  if seed_passed is not None:
    lines += ["", f"seed vs permutation check: "
              f"{'passed' if seed_passed else 'FAILED'}."]
  return "\n".join(lines) + "\n"


def _plot(path: str, records: Sequence[dict[str, Any]],
          sharded: Sequence[dict[str, Any]]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ok = [r for r in records if r["status"] == "ok"]
  labels = []
  for r in ok:
    label = r["method"] if r["method"] != "ell" else f"ell s={r['sparsity']:g}"
    if label not in labels:
      labels.append(label)

  def label_of(r):
    return r["method"] if r["method"] != "ell" else f"ell s={r['sparsity']:g}"

  n_panels = 3 if sharded else 2
  fig, axes = plt.subplots(1, n_panels, figsize=(6.5 * n_panels, 5.2))
  colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(labels)}

  ax = axes[0]
  for m in labels:
    rs = [r for r in ok if label_of(r) == m]
    square = sorted((r for r in rs if r["shape"][0] == r["shape"][1]),
                    key=lambda r: math.prod(r["shape"]))
    if square:
      ax.plot([math.prod(r["shape"]) for r in square],
              [r["ns_per_entry_min"] for r in square], "o-", color=colors[m],
              label=m)
    for r in rs:
      if r["shape"][0] == r["shape"][1]:
        continue
      marker = "^" if r["shape"][0] > r["shape"][1] else ">"
      ax.plot([math.prod(r["shape"])], [r["ns_per_entry_min"]], marker,
              color=colors[m], markersize=8,
              label=None if square else m)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("matrix entries (fan_out x fan_in)")
  ax.set_ylabel("time per entry, ns (min of runs)")
  ax.set_title("Time per entry (o square, ^ tall, > wide)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7, ncol=2, framealpha=0.6)

  ax = axes[1]
  shapes = []
  for r in ok:
    if tuple(r["shape"]) not in shapes:
      shapes.append(tuple(r["shape"]))
  shapes.sort(key=lambda shape: (math.prod(shape), shape))
  width = 0.8 / max(len(shapes), 1)
  for j, shape in enumerate(shapes):
    xs, compiled, rss = [], [], []
    for i, m in enumerate(labels):
      r = next((r for r in ok if label_of(r) == m and tuple(r["shape"]) == shape),
               None)
      if r is None:
        continue
      xs.append(i + (j - (len(shapes) - 1) / 2) * width)
      compiled.append(r["memory"].get("compiled_peak_over_output", np.nan))
      rss.append(r["memory"].get("rss_delta_over_output", np.nan))
    name = "x".join(map(str, shape))
    bars = ax.bar(xs, compiled, width * 0.9, label=f"{name} compiled")
    ax.plot(xs, rss, "k_", markersize=10,
            label="process RSS delta" if j == 0 else None)
    del bars
  ax.axhline(1.0, color="gray", lw=0.8, ls="--")
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=30, ha="right")
  ax.set_yscale("log")
  bottom, top = ax.get_ylim()
  ax.set_ylim(bottom, top * 30)  # Room for the legend above the bars.
  ax.set_ylabel("peak memory / output size")
  ax.set_title("Memory: compiled (output + temp) bars, RSS delta marks")
  ax.legend(fontsize=7, loc="upper center", ncol=3, framealpha=0.6)

  if sharded:
    ax = axes[2]
    for shape in sorted({tuple(r["shape"]) for r in sharded
                         if r["status"] == "ok"}, key=math.prod):
      for method in sorted({r["method"] for r in sharded}):
        rs = sorted((r for r in sharded if r["status"] == "ok"
                     and tuple(r["shape"]) == shape and r["method"] == method),
                    key=lambda r: r["devices"])
        if rs:
          ax.plot([r["devices"] for r in rs], [r["min_s"] for r in rs], "o-",
                  label=f"{method} {'x'.join(map(str, shape))}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices")
    ax.set_ylabel("time, s (min of runs)")
    ax.set_title(f"Sharded ({jax.default_backend()}, "
                 f"{os.cpu_count()} cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)

  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------
# Main.


def _configure_devices() -> None:
  n = _NUM_CPU_DEVICES.value
  if not n:
    return
  # An inherited --xla_force_host_platform_device_count (e.g. from the test
  # environment) would contradict jax_num_cpu_devices: ours wins.
  flags_env = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = re.sub(
      r"--xla_force_host_platform_device_count=\S*", "", flags_env).strip()
  jax.config.update("jax_num_cpu_devices", n)


def _device_counts() -> list[int]:
  available = len(jax.devices())
  if _DEVICE_COUNTS.value:
    counts = [int(c) for c in _DEVICE_COUNTS.value]
  else:
    counts = [2**i for i in range(int(math.log2(available)) + 1)]
  return [c for c in counts if c <= available]


def _bench_size(shape: tuple[int, int], methods: Sequence[str], key: Any,
                probe: _RssProbe, torch: Any, torch_reason: str | None,
                checks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                         dict[str, Any]]:
  sparsity = _SPARSITY.value
  records = []
  kept = {}
  keep = set()
  if _CHECK_SEED.value and "seed" in methods and "permutation" in methods:
    keep.add("permutation")
  if _SHARDED.value:
    keep.update(_SHARDED_METHODS.value)
  if "ell" in methods:
    keep.add("counter")
  for name in methods:
    print(f"  {name} {shape[0]}x{shape[1]} ...", flush=True)
    extra = {"sparsity": sparsity if name not in ("fill", "dense_uniform",
                                                  "torch_dense") else None}
    if name in _JAX_METHODS:
      record, out = _bench_jax(name, _jax_method(name, shape, sparsity), key,
                               shape, probe=probe, extra=extra,
                               keep_output=name in keep or name == "seed")
      if name == "seed" and "permutation" in kept:
        check = {"shape": list(shape), "against": "permutation",
                 "seed": "jitted", **_compare(out, kept["permutation"])}
        check["passed"] = check["equal_up_to_zero_sign"]
        checks.append(check)
      elif out is not None and name != "seed":
        kept[name] = out
      del out
      records.append(record)
    elif name in _TORCH_METHODS:
      if torch is None:
        records.append(_skipped(name, shape, torch_reason, **extra))
        continue
      records.append(_bench_torch(name, shape, sparsity, torch, probe, extra))
    elif name == "ell":
      records.extend(_bench_ell(shape, key, probe, kept.get("counter")))
    gc.collect()
  return records, kept


def _bench_torch(name: str, shape, sparsity: float, torch: Any,
                 probe: _RssProbe, extra: dict[str, Any]) -> dict[str, Any]:
  torch.manual_seed(_KEY.value)
  scale = 1.0 / math.sqrt(shape[1])
  if name == "torch_dense":
    run = lambda: torch.empty(shape, dtype=torch.float32).uniform_(-scale, scale)
  else:
    run = lambda: torch_sparse_init(torch.empty(shape, dtype=torch.float32),
                                    sparsity)
  record = {"method": name, "shape": list(shape), "devices": 1, "status": "ok",
            "compile_s": 0.0, **extra}
  timing, _ = _time_runs(run, probe, keep_output=False)
  record.update(timing)
  return _summarize(record, math.prod(shape))


def _bench_ell(shape, key: Any, probe: _RssProbe,
               counter_out: Any) -> list[dict[str, Any]]:
  """`alberta.sparse_init_ell` against dense `counter`, per sparsity.

  Each ELL result is also scattered (`alberta.to_dense`) and compared with the
  dense counter matrix of the same sparsity, up to the sign of zero (the ELL
  layout has no masked values, so its zeros are +0.0).
  """
  fn = _ell_fn()
  records = []
  for s in (float(v) for v in _ELL_SPARSITIES.value):
    if fn is None:
      records.append(_skipped("ell", shape, "alberta has no sparse_init_ell",
                              sparsity=s))
      continue
    try:
      record, ell = _bench_jax(
          "ell", lambda k, s=s: fn(k, shape, s, method="counter"), key, shape,
          probe=probe, extra={"sparsity": s}, keep_output=True)
    except Exception as e:  # pylint: disable=broad-except
      # An API this script does not know must not sink the whole run.
      records.append(_skipped("ell", shape, f"error: {e!r}", sparsity=s))
      continue
    records.append(record)
    dense = counter_out if s == _SPARSITY.value else None
    if s != _SPARSITY.value or counter_out is None:
      baseline, dense = _bench_jax(
          "counter", lambda k, s=s: alberta.sparse_init(k, shape, s,
                                                         method="counter"),
          key, shape, probe=probe, extra={"sparsity": s, "role": "ell_baseline"},
          keep_output=True)
      records.append(baseline)
    scattered = alberta.to_dense(ell[0], ell[1], shape)
    record["matches_dense_counter"] = _compare(scattered, dense)[
        "equal_up_to_zero_sign"]
    del ell, dense, scattered
  return records


def _bench_sharded(shape, key: Any, probe: _RssProbe, counts: Sequence[int],
                   kept: dict[str, Any]) -> list[dict[str, Any]]:
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec  # pylint: disable=g-import-not-at-top
  records = []
  for method in _SHARDED_METHODS.value:
    for n in counts:
      extra = {"sparsity": _SPARSITY.value, "devices": n}
      if shape[0] % n:
        records.append(_skipped(method, shape, f"fan_out not divisible by {n}",
                                **extra))
        continue
      print(f"  sharded {method} {shape[0]}x{shape[1]} on {n} devices ...",
            flush=True)
      mesh = Mesh(np.array(jax.devices()[:n]), ("rows",))
      sharding = NamedSharding(mesh, PartitionSpec("rows", None))
      fn = lambda k, sharding=sharding, method=method: alberta.sharded_sparse_init(
          k, shape, _SPARSITY.value, sharding=sharding, method=method)
      record, out = _bench_jax(method, fn, key, shape, probe=probe, extra=extra,
                               keep_output=method in kept)
      if method in kept:
        record["matches_single_device"] = _compare(out, kept[method])[
            "bitwise_equal"]
      del out
      records.append(record)
  return records


def _merged(paths: Sequence[str]) -> tuple[list[dict[str, Any]],
                                           list[dict[str, Any]]]:
  """Results and sharded results of several --json files, later ones winning."""
  merged = {"results": {}, "sharded": {}}
  for path in paths:
    with open(path) as f:
      result = json.load(f)
    for part, by_key in merged.items():
      for r in result[part]:
        by_key[(r["method"], tuple(r["shape"]), r.get("sparsity"),
                r["devices"])] = r
  return list(merged["results"].values()), list(merged["sharded"].values())


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _PLOT_FROM.value:
    if not _PLOT.value:
      raise app.UsageError("--plot_from needs --plot.")
    _plot(_PLOT.value, *_merged(_PLOT_FROM.value))
    print(f"wrote {_PLOT.value}")
    return
  _configure_devices()
  torch, torch_reason = (None, "not requested")
  if any(m in _TORCH_METHODS for m in _METHODS.value):
    torch, torch_reason = _torch_or_reason()
    if torch is not None and _TORCH_THREADS.value:
      torch.set_num_threads(_TORCH_THREADS.value)
  shapes = [_parse_shape(s) for s in _SIZES.value]
  methods = [m for m in ALL_METHODS if m in _METHODS.value]
  key = jr.key(_KEY.value)
  env = _environment(torch)
  env["loadavg_start"] = os.getloadavg()
  probe = _RssProbe()
  print(f"alberta benchmark: {env['backend']} ({env['num_devices']} devices, "
        f"{env['cpu_model']}, {env['cpus_usable']} cores), jax {env['jax']}, "
        f"torch {env['torch']}, load {env['loadavg_start']}", flush=True)

  checks = []
  if _CHECK_SEED.value and "seed" in methods and "permutation" in methods:
    checks.append({"what": "eager seed vs permutation, bitwise",
                   **_seed_check_small(key, _SPARSITY.value)})
  counts = _device_counts() if _SHARDED.value else []
  records, sharded = [], []
  for shape in shapes:
    size_records, kept = _bench_size(shape, methods, key, probe, torch,
                                     torch_reason, checks)
    records.extend(size_records)
    if counts:
      sharded.extend(_bench_sharded(shape, key, probe, counts, kept))
    del kept
    gc.collect()
  env["loadavg_end"] = os.getloadavg()

  ratios = _ratios(records)
  seed_passed = all(c["passed"] for c in checks) if checks else None
  print()
  print(_table(records))
  if sharded:
    print("\nSharded (alberta.sharded_sparse_init, rows split over devices; "
          "memory per device):")
    print(_table(sharded))
  if ratios:
    print("\nRatios (min times):")
    print(_ratio_table(ratios))
  if checks:
    print("\nseed vs permutation:")
    for c in checks:
      print(f"  {json.dumps(c)}")
    print(f"  => {'PASSED' if seed_passed else 'FAILED'}")
  ell_checks = [r["matches_dense_counter"] for r in records
                if "matches_dense_counter" in r]
  if ell_checks:
    print(f"\nell scattered == dense counter (up to zero sign): "
          f"{'PASSED' if all(ell_checks) else 'FAILED'} ({len(ell_checks)} checks)")
  sharded_checks = [r["matches_single_device"] for r in sharded
                    if "matches_single_device" in r]
  if sharded_checks:
    print(f"sharded == one device, bit for bit: "
          f"{'PASSED' if all(sharded_checks) else 'FAILED'} "
          f"({len(sharded_checks)} checks)")
  print(f"\nload average: start {env['loadavg_start']}, end {env['loadavg_end']}; "
        f"RSS peaks by {probe.mode}")

  if _JSON.value:
    result = {"environment": env,
              "settings": {"sizes": _SIZES.value, "methods": methods,
                           "sparsity": _SPARSITY.value,
                           "repeats": _REPEATS.value,
                           "slow_repeats": _SLOW_REPEATS.value,
                           "slow_seconds": _SLOW_SECONDS.value,
                           "device_counts": counts,
                           "sharded_methods": _SHARDED_METHODS.value,
                           "rss_mode": probe.mode},
              "results": records, "sharded": sharded, "ratios": ratios,
              "seed_check": {"passed": seed_passed, "checks": checks}}
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {_JSON.value}")
  if _MARKDOWN.value:
    with open(_MARKDOWN.value, "w") as f:
      f.write(_markdown(env, records, sharded, ratios, seed_passed))
    print(f"wrote {_MARKDOWN.value}")
  if _PLOT.value:
    _plot(_PLOT.value, records, sharded)
    print(f"wrote {_PLOT.value}")
  failed = [name for name, ok in (
      ("seed vs permutation", seed_passed is not False),
      ("ell vs dense counter", all(ell_checks)),
      ("sharded vs one device", all(sharded_checks))) if not ok]
  if failed:
    raise SystemExit(f"agreement checks failed: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main)
