r"""Builds a large sparse matrix over every device, verifies it and saves it.

Each device, on each host, computes only its own shard of the matrix with
`alberta.sharded_sparse_init`; the result equals
`alberta.sparse_init(jax.random.key(seed), shape, ...)` whatever the mesh or
the number of hosts. The launcher then checks it with a sharded reduction
(zeros per row, finiteness, value bound), reports time, throughput and memory,
and, with `--output`, saves it with orbax-checkpoint for a training job to
`alberta.checkpoint.restore`.

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
is refused at once, and the device count is set before JAX starts.
"""

from __future__ import annotations

import functools
import json
import logging as py_logging
import math
import os
import resource
import time
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging

_SHAPE = flags.DEFINE_string(
    "shape", "8192,8192", "Matrix shape ROWS,COLS = (fan_out, fan_in).")
_SPARSITY = flags.DEFINE_float(
    "sparsity", 0.9, "Fraction of each row's entries set to zero.",
    lower_bound=0.0, upper_bound=1.0)
_INIT_TYPE = flags.DEFINE_enum(
    "init_type", "uniform", ["uniform", "normal"],
    "LeCun uniform or LeCun normal values.")
_ROUNDING = flags.DEFINE_enum(
    "rounding", "nearest", ["nearest", "ceil"],
    "Zero-count rule: nearest (the seed code) or ceil (the paper).")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16", "float16"],
    "Element type; values are generated in float32 and cast.")
_METHOD = flags.DEFINE_enum(
    "method", "counter", ["counter", "permutation"],
    "Mask method: counter (sort-free, fast) or permutation (the seed's).")
_FORMAT = flags.DEFINE_enum(
    "format", "dense", ["dense", "ell"],
    "Output layout: dense (the whole matrix, zeros included) or ell (each "
    "row's fan_in - k nonzero values and their ascending column indices, "
    "two [ROWS, fan_in - k] arrays; the zeros are never built). ell needs "
    "--method=counter and a mesh that splits rows only.")
_SEED = flags.DEFINE_integer(
    "seed", 0, "The key is jax.random.key(seed). Limited to [0, 2**32): with "
    "64-bit mode off, JAX keeps only a seed's low 32 bits.",
    lower_bound=0, upper_bound=2**32 - 1)
_MESH = flags.DEFINE_string(
    "mesh", None, "Device mesh: N (rows split over N devices) or A,B (rows "
    "over A, columns over B). Default: every device on rows.")
_CHUNK_ROWS = flags.DEFINE_integer(
    "chunk_rows", None, "Rows generated per step on each device, as in "
    "sharded_sparse_init; default: chosen from the tile's memory.",
    lower_bound=1)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", None, "On the CPU platform, the number of virtual "
    "devices (laptops and tests). Ignored by GPU and TPU backends.",
    lower_bound=1)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Checkpoint directory to save to. Without it the matrix "
    "is generated, verified and reported, not saved.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing --output (only an alberta "
    "checkpoint or an empty directory is ever replaced).")
_REPORT = flags.DEFINE_string(
    "report", None, "Write a machine-readable JSON report to this file.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0, for "
    "jax.distributed.initialize.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: number of processes.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's index.", lower_bound=0)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() even without the "
    "three flags above, letting JAX detect a managed cluster (Cloud TPU, "
    "SLURM, Open MPI, GKE).")

# Saves shorter than this show no progress line.
_PROGRESS_EVERY_S = 2.0
# The false-failure rate of the excess-zero check in `verify`.
_EXCESS_ZERO_FAILURE_RATE = 1e-9


def _parse_ints(text: str, flag: str, counts: Sequence[int]) -> tuple[int, ...]:
  """`text` as comma-separated positive ints, or a ValidationError."""
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    values = ()
  if len(values) not in counts or any(v <= 0 for v in values):
    wanted = " or ".join({1: "N", 2: "ROWS,COLS" if flag == "shape" else "A,B"}[c]
                         for c in counts)
    raise flags.ValidationError(
        f"--{flag}={text!r} must be {wanted}, positive integers.")
  return values


@flags.validator("shape", message="--shape is invalid")
def _check_shape(value: str) -> bool:
  shape = _parse_ints(value, "shape", (2,))
  if max(shape) >= 2**32:
    raise flags.ValidationError(
        f"--shape={value!r}: dimensions must be below 2**32.")
  return True


@flags.validator("sparsity", message="--sparsity must be in [0, 1], not NaN")
def _check_sparsity(value: float) -> bool:
  return not math.isnan(value)  # NaN passes the flag's own range check.


@flags.validator("mesh", message="--mesh is invalid")
def _check_mesh(value: str | None) -> bool:
  if value is not None:
    _parse_ints(value, "mesh", (1, 2))
  return True


@flags.multi_flags_validator(["shape", "mesh"], message="--mesh is invalid")
def _check_mesh_divides_shape(values: dict[str, Any]) -> bool:
  if values["mesh"] is None:
    return True  # The default mesh is checked once the devices are known.
  shape = _parse_ints(values["shape"], "shape", (2,))
  mesh = _parse_ints(values["mesh"], "mesh", (1, 2))
  for dim, size, parts in zip(("rows", "columns"), shape, mesh):
    if size % parts:
      raise flags.ValidationError(
          f"--mesh={values['mesh']} splits the {size} {dim} of "
          f"--shape={values['shape']} into {parts} parts, which does not "
          f"divide them.")
  return True


@flags.multi_flags_validator(["format", "mesh"], message="--mesh is invalid")
def _check_ell_mesh(values: dict[str, Any]) -> bool:
  if values["format"] != "ell" or values["mesh"] is None:
    return True
  mesh = _parse_ints(values["mesh"], "mesh", (1, 2))
  if len(mesh) == 2 and mesh[1] > 1:
    raise flags.ValidationError(
        f"--mesh={values['mesh']} splits the columns over {mesh[1]} devices, "
        f"but --format=ell keeps each row's nonzeros whole on one device: "
        f"split the rows only (e.g. --mesh={mesh[0]}).")
  return True


@flags.multi_flags_validator(["format", "method"],
                             message="--method is invalid")
def _check_ell_method(values: dict[str, Any]) -> bool:
  if values["format"] == "ell" and values["method"] != "counter":
    raise flags.ValidationError(
        f"--method={values['method']} cannot make --format=ell: the "
        f"permutation method's zeros come from sorting each whole row, so "
        f"its nonzeros cannot be listed without building the dense row. Use "
        f"--method=counter (the default) or --format=dense.")
  return True


@flags.multi_flags_validator(["output", "overwrite"],
                             message="--output is invalid")
def _check_output(values: dict[str, Any]) -> bool:
  if values["output"] is None:
    return True
  if not values["output"]:
    raise flags.ValidationError("--output must not be empty.")
  # Imported here: the other flags are checked without starting JAX.
  from alberta._src import checkpoint  # pylint: disable=g-import-not-at-top
  try:
    checkpoint.check_output(values["output"], values["overwrite"])
  except FileExistsError as e:
    raise flags.ValidationError(f"--output={values['output']}: {e}") from e
  except PermissionError as e:
    raise flags.ValidationError(
        f"--output={values['output']} is not writable: {e}") from e
  return True


@flags.validator("report", message="--report is invalid")
def _check_report(value: str | None) -> bool:
  if value is None:
    return True
  parent = os.path.dirname(os.path.abspath(value)) if value else ""
  if not value or os.path.isdir(value):
    raise flags.ValidationError(f"--report={value!r} must name a file.")
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise flags.ValidationError(
        f"--report={value!r}: {parent} is not a writable directory.")
  return True


@flags.multi_flags_validator(["num_processes", "process_id"],
                             message="--process_id is invalid")
def _check_process_id(values: dict[str, Any]) -> bool:
  n, i = values["num_processes"], values["process_id"]
  if n is not None and i is not None and i >= n:
    raise flags.ValidationError(
        f"--process_id={i} must be below --num_processes={n}.")
  return True


def _initialize_jax():
  """Configures and starts JAX (and its multi-process runtime); returns jax."""
  import jax  # pylint: disable=g-import-not-at-top

  if _NUM_CPU_DEVICES.value is not None:
    # Must precede the first backend use; it overrides XLA_FLAGS' count.
    jax.config.update("jax_num_cpu_devices", _NUM_CPU_DEVICES.value)
  multi = (_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _DISTRIBUTED.value or any(v is not None for v in multi):
    # Cross-process collectives on the CPU need an implementation; gloo ships
    # with jaxlib (and is jax 0.10's default; older versions had none).
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("Starting JAX's multi-process runtime (coordinator %s, "
                 "%s processes, process %s).", *multi)
    jax.distributed.initialize(coordinator_address=multi[0],
                               num_processes=multi[1], process_id=multi[2])
  return jax


def _make_mesh(jax, shape: tuple[int, int]):
  """The `--mesh` (default: every device on rows), or an app.UsageError."""
  devices = jax.devices()
  if _MESH.value is None:
    mesh_shape = (len(devices),)
    if shape[0] % len(devices):
      raise app.UsageError(
          f"--mesh defaults to all {len(devices)} devices on rows, which does "
          f"not divide the {shape[0]} rows of --shape={_SHAPE.value}; pass "
          f"--mesh (e.g. --mesh=N with N dividing {shape[0]}) or another "
          f"--shape.")
  else:
    mesh_shape = tuple(int(v) for v in _MESH.value.split(","))
  needed = math.prod(mesh_shape)
  if needed > len(devices):
    raise app.UsageError(
        f"--mesh={_MESH.value} needs {needed} devices but only {len(devices)} "
        f"exist ({devices[0].platform}; on the CPU, --num_cpu_devices sets "
        f"their number).")
  if needed < len(devices) and jax.process_count() > 1:
    raise app.UsageError(
        f"--mesh={_MESH.value} uses {needed} of the {len(devices)} devices; "
        f"a multi-process run must use them all.")
  names = ("rows", "cols")[:len(mesh_shape)]
  mesh = jax.make_mesh(mesh_shape, names,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names),
                       devices=devices[:needed])
  # ELL arrays are split by rows only (the validators refuse a column split;
  # a "cols" axis of size 1 just replicates).
  split = names[:1] if _FORMAT.value == "ell" else names
  return mesh, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*split))


def value_bound(jax, spec, dtype) -> Any:
  """The largest |weight| the generator can produce, in `dtype`.

  Uniform values lie in `[-scale, scale)`; normal values are the sampler's
  `sqrt(2) erfinv(u)` at its most extreme input times `scale`. Rounding is
  monotonic, so the bound computed in float32 and cast holds in `dtype`.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from alberta._src import bits  # pylint: disable=g-import-not-at-top

  scale = jnp.float32(spec.scale)
  if spec.init_type == "uniform":
    bound = scale
  else:
    extremes = jnp.asarray(np.array([0, 2**32 - 1], np.uint32))
    bound = jnp.max(jnp.abs(jax.jit(bits.bits_to_normal)(extremes))) * scale
  # A host value: every process of a multi-host run passes it identically.
  return np.asarray(jnp.asarray(bound, jnp.float32).astype(dtype))


def excess_zero_allowance(spec, dtype_name: str) -> int:
  """How many kept weights may round to exactly zero, at a 1e-9 false alarm.

  A kept weight is zero by chance: uniform float32 values sit on a grid of
  2**-23 steps that contains 0 (probability 2**-23), and float16 also flushes
  |w| < 2**-25 to zero (probability below 2**-25 / scale for either
  init_type). With `n` kept weights the count is a sum of independent
  Bernoullis of mean `lam <= n p`, and Bernstein's inequality bounds
  P(count >= lam + t) by exp(-t**2 / (2 (lam + t / 3))) = 1e-9 at the `t` used.
  """
  p = 2.0**-23
  if dtype_name == "float16":
    p += 2.0**-25 / spec.scale
  lam = spec.fan_out * (spec.fan_in - spec.k) * p
  c = math.log(1 / _EXCESS_ZERO_FAILURE_RATE)
  return int(lam + c / 3 + math.sqrt(c * c / 9 + 2 * c * lam))


def _row_stats(w, bound, k: int):
  """Per-matrix counts from one pass: a variadic reduction along the rows.

  Per row, in one read of the tile: zeros, non-finite entries, finite entries
  above `bound`, and the largest finite |w|. The row results (sharded like the
  rows, reduced across column shards by XLA) are then summed to scalars.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  u32 = jnp.uint32
  magnitude = jnp.abs(w)
  finite = jnp.isfinite(w)
  operands = ((w == 0).astype(u32), (~finite).astype(u32),
              (finite & (magnitude > bound)).astype(u32),
              jnp.where(finite, magnitude, 0).astype(jnp.float32))
  zeros, nonfinite, over, largest = lax.reduce(
      operands, (u32(0), u32(0), u32(0), jnp.float32(0)),
      lambda a, b: (a[0] + b[0], a[1] + b[1], a[2] + b[2], lax.max(a[3], b[3])),
      (1,))
  return dict(
      rows_below_k=jnp.sum(zeros < k, dtype=u32),
      rows_above_k=jnp.sum(zeros > k, dtype=u32),
      excess_zeros=jnp.sum(jnp.maximum(zeros, k) - k, dtype=u32),
      nonfinite=jnp.sum(nonfinite, dtype=u32),
      out_of_bound=jnp.sum(over, dtype=u32),
      max_abs=jnp.max(largest))


def verify(jax, matrix, spec, dtype_name: str) -> dict[str, Any]:
  """Checks the matrix with one sharded reduction; returns the findings.

  Every row must hold at least `k` zeros (the mask), and the zeros beyond `k`
  must be few enough to be kept weights that rounded to zero
  (`excess_zero_allowance`): exactly `k` per row is the mask's guarantee, not
  the matrix's, since a kept uniform weight is exactly 0 with probability
  2**-23 (about one in a 8192 x 8192 matrix at sparsity 0.9). Every value must
  be finite and within `value_bound`. Only scalars leave the devices.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  bound = value_bound(jax, spec, matrix.dtype)
  stats = jax.jit(_row_stats, static_argnums=2)(matrix, bound, spec.k)
  # Replicated scalars: every process reads its own copy.
  found = {name: np.asarray(v.addressable_data(0)).item()
           for name, v in stats.items()}
  allowance = excess_zero_allowance(spec, dtype_name)
  found.update(
      zeros_per_row=spec.k,
      excess_zero_allowance=allowance,
      value_bound=float(np.asarray(bound, np.float32)),
  )
  found["passed"] = (found["rows_below_k"] == 0 and found["nonfinite"] == 0 and
                     found["out_of_bound"] == 0 and
                     found["excess_zeros"] <= allowance)
  return found


def _ell_row_stats(values, indices, bound, fan_in: int):
  """`_row_stats` for ELL arrays: one pass over each row's nonzeros.

  Per row: column indices outside `[0, fan_in)`, neighbours not strictly
  ascending (rows are whole on one device, so this is local), non-finite
  values, finite values above `bound`, values exactly 0.0, and the largest
  finite |value|; then summed to scalars.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  u32 = jnp.uint32
  magnitude = jnp.abs(values)
  finite = jnp.isfinite(values)
  operands = ((~finite).astype(u32),
              (finite & (magnitude > bound)).astype(u32),
              (values == 0).astype(u32),
              jnp.where(finite, magnitude, 0).astype(jnp.float32),
              ((indices < 0) | (indices >= fan_in)).astype(u32))
  nonfinite, over, zero_values, largest, out_of_range = lax.reduce(
      operands, (u32(0), u32(0), u32(0), jnp.float32(0), u32(0)),
      lambda a, b: (a[0] + b[0], a[1] + b[1], a[2] + b[2],
                    lax.max(a[3], b[3]), a[4] + b[4]),
      (1,))
  not_ascending = jnp.any(indices[:, 1:] <= indices[:, :-1], axis=1)
  return dict(
      rows_not_ascending=jnp.sum(not_ascending, dtype=u32),
      indices_out_of_range=jnp.sum(out_of_range, dtype=u32),
      zero_values=jnp.sum(zero_values, dtype=u32),
      nonfinite=jnp.sum(nonfinite, dtype=u32),
      out_of_bound=jnp.sum(over, dtype=u32),
      max_abs=jnp.max(largest, initial=jnp.float32(0)))


def verify_ell(jax, values, indices, spec, dtype_name: str) -> dict[str, Any]:
  """Checks ELL arrays with one sharded reduction; returns the findings.

  Each row must list `nnz = fan_in - k` columns (the arrays' width), all in
  `[0, fan_in)` and strictly ascending, hence distinct: exactly `k` zeros per
  row in the dense matrix. Every value must be finite and within
  `value_bound`. A kept value is exactly 0.0 with probability about 2**-23
  (the same event `verify` allows for as excess zeros), so those are only
  counted, and fail the check only beyond `excess_zero_allowance` (a 1e-9
  false alarm): a values array that is mostly zeros is still caught. Only
  scalars leave the devices.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  width = spec.fan_in - spec.k
  bound = value_bound(jax, spec, values.dtype)
  stats = jax.jit(_ell_row_stats, static_argnums=3)(values, indices, bound,
                                                    spec.fan_in)
  found = {name: np.asarray(v.addressable_data(0)).item()
           for name, v in stats.items()}
  allowance = excess_zero_allowance(spec, dtype_name)
  found.update(
      zeros_per_row=spec.k,
      nonzeros_per_row=width,
      shapes_ok=(tuple(values.shape) == tuple(indices.shape) ==
                 (spec.fan_out, width)),
      excess_zero_allowance=allowance,
      value_bound=float(np.asarray(bound, np.float32)),
  )
  found["passed"] = (found["shapes_ok"] and found["rows_not_ascending"] == 0 and
                     found["indices_out_of_range"] == 0 and
                     found["nonfinite"] == 0 and found["out_of_bound"] == 0 and
                     found["zero_values"] <= allowance)
  return found


def _compressed_fraction(matrix) -> float | None:
  """The fraction of its raw bytes the matrix takes in orbax's format.

  Orbax stores arrays as zarr chunks compressed with zstd (level 1), through
  tensorstore. Writing a few MiB of this process's first shard that way to an
  in-memory store predicts the checkpoint's size to a few percent, which is
  what lets the progress bar have an end. None if that fails.
  """
  try:
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorstore as ts  # pylint: disable=g-import-not-at-top

    shard = matrix.addressable_shards[0].data
    row_bytes = max(1, shard.shape[1] * shard.dtype.itemsize)
    sample = np.asarray(shard[:max(1, min(shard.shape[0], (4 << 20) // row_bytes))])
    context = ts.Context()
    store = ts.open(
        {"driver": "zarr", "kvstore": "memory://",
         "metadata": {"compressor": {"id": "zstd", "level": 1}}},
        create=True, context=context, dtype=ts.dtype(sample.dtype.name),
        shape=sample.shape,
        chunk_layout=ts.ChunkLayout(chunk_shape=sample.shape)).result()
    store.write(sample).result()
    kvstore = ts.KvStore.open("memory://", context=context).result()
    stored = sum(len(kvstore.read(key).result().value)
                 for key in kvstore.list().result() if not key.startswith(b"."))
    return stored / sample.nbytes if stored else None
  except Exception:  # pylint: disable=broad-except
    return None  # Only the progress bar's scale depends on it.


def _peak_memory(jax, compiled) -> dict[str, Any]:
  """Per-device peak memory: the runtime's counters, else XLA's estimate."""
  stats = {str(d.id): d.memory_stats() for d in jax.local_devices()}
  host_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  if all(s and "peak_bytes_in_use" in s for s in stats.values()):
    return dict(source="device.memory_stats() peak_bytes_in_use",
                per_device_peak_bytes={d: s["peak_bytes_in_use"]
                                       for d, s in stats.items()},
                host_peak_rss_bytes=host_peak)
  analysis = compiled.memory_analysis()
  per_device = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return dict(
      source=("compiled.memory_analysis() of the generation program "
              "(arguments + output + temporaries); this platform has no "
              "device memory counters"),
      per_device_peak_bytes={d: per_device for d in stats},
      host_peak_rss_bytes=host_peak)


def _size(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
    n /= 1024
  return ""


def _progress_line(bytes_on_disk: int, seconds: float, expected_bytes: int,
                   estimated: bool) -> None:
  """Logs a progress bar of the checkpoint's bytes on disk.

  Orbax compresses the shards, so the final size is `expected_bytes`, an
  estimate from a sample (or, when `estimated` is False, the uncompressed
  size, which the bar never reaches). The bar stops at 99% until the save
  completes.
  """
  width = 30
  fraction = min(bytes_on_disk / max(expected_bytes, 1), 0.99)
  filled = int(width * fraction)
  rate = bytes_on_disk / max(seconds, 1e-9) / 2**20
  logging.info("writing shards [%s%s] %3d%%  %s of %s%s  %.0f s  %.0f MiB/s",
               "#" * filled, "." * (width - filled), int(100 * fraction),
               _size(bytes_on_disk), "~" if estimated else "<= ",
               _size(expected_bytes) + ("" if estimated else " uncompressed"),
               seconds, rate)


class _QuietOrbax:
  """Drops orbax's INFO lines (dozens per save) from the absl log; keeps warnings."""

  def filter(self, record) -> bool:
    return (record.levelno >= py_logging.WARNING or
            f"{os.sep}orbax{os.sep}" not in record.pathname)


def _write_report(path: str, report: dict[str, Any]) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # On the logger: absl's handler forwards records past its own filters.
  logging.get_absl_logger().addFilter(_QuietOrbax())
  jax = _initialize_jax()
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import alberta  # pylint: disable=g-import-not-at-top
  from alberta._src import blocks  # pylint: disable=g-import-not-at-top
  from alberta._src import checkpoint  # pylint: disable=g-import-not-at-top
  from alberta._src import ell as ell_lib  # pylint: disable=g-import-not-at-top
  from alberta._src import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from alberta._src.spec import make_spec  # pylint: disable=g-import-not-at-top

  lead = jax.process_index() == 0
  ell = _FORMAT.value == "ell"
  shape = tuple(int(v) for v in _SHAPE.value.split(","))
  dtype = jnp.dtype(_DTYPE.value)
  mesh, sharding = _make_mesh(jax, shape)
  spec, _ = make_spec(shape, _SPARSITY.value, _INIT_TYPE.value, _METHOD.value,
                      _ROUNDING.value)
  _, (tile_rows, tile_cols) = sharding_lib.tile_layout(shape, sharding)
  nnz = spec.fan_in - spec.k
  if ell and nnz == 0:
    # Nothing to list, and orbax cannot save zero-size arrays.
    raise app.UsageError(
        f"--format=ell with --sparsity={_SPARSITY.value} (--rounding="
        f"{_ROUNDING.value}) zeroes all {spec.fan_in} columns of every row: "
        f"the ELL arrays would be empty. Use --format=dense or a lower "
        f"--sparsity.")
  if ell:
    tile_cols = nnz  # A device holds [tile_rows, nnz] values and indices.
  chunk_rows = _CHUNK_ROWS.value
  if chunk_rows is None:
    chunk_rows_used = (
        ell_lib.default_chunk_rows(spec, tile_rows, dtype) if ell else
        blocks.default_chunk_rows(spec, tile_rows, tile_cols, dtype))
  else:
    chunk_rows_used = min(chunk_rows, tile_rows)
  if _OUTPUT.value is not None and lead:
    for stale in checkpoint.stale_staging(_OUTPUT.value):
      logging.warning("Left by an interrupted save (safe to delete): %s", stale)

  devices = jax.devices()
  logging.info(
      "process %d of %d: %d local of %d %s devices (%s); mesh %s; tile %dx%d "
      "per device, %d rows per chunk.", jax.process_index(),
      jax.process_count(), jax.local_device_count(), len(devices),
      devices[0].platform, devices[0].device_kind, dict(mesh.shape), tile_rows,
      tile_cols, chunk_rows_used)
  if lead:
    logging.info("Matrix %dx%d %s, sparsity %g (%d zeros per row, rounding %s), "
                 "%s values, method %s, seed %d, format %s%s.", *shape,
                 dtype.name, _SPARSITY.value, spec.k, _ROUNDING.value,
                 _INIT_TYPE.value, _METHOD.value, _SEED.value, _FORMAT.value,
                 f" ({nnz} nonzeros per row)" if ell else "")

  # Compiled ahead of time so compilation and generation are timed apart. The
  # key goes in as its raw uint32[2] words: a NumPy value every process
  # passes identically, which multi-process jit reads as replicated.
  generate = jax.jit(
      functools.partial(
          alberta.sharded_sparse_init_ell if ell else alberta.sharded_sparse_init,
          shape=shape, sparsity=_SPARSITY.value, init_type=_INIT_TYPE.value,
          sharding=sharding, dtype=dtype, method=_METHOD.value,
          rounding=_ROUNDING.value, chunk_rows=chunk_rows),
      out_shardings=(sharding, sharding) if ell else sharding)
  key_data = np.asarray(jax.random.key_data(jax.random.key(_SEED.value)))
  logging.info("Compiling.")
  start = time.perf_counter()
  compiled = generate.lower(key_data).compile()
  compile_s = time.perf_counter() - start
  logging.info("Compiled in %.2f s. Generating.", compile_s)
  start = time.perf_counter()
  result = compiled(key_data)
  jax.block_until_ready(result)
  generate_s = time.perf_counter() - start
  if ell:
    # What is stored: fan_out * nnz values and as many int32 column indices.
    arrays = dict(values=result[0], indices=result[1])
    entries = shape[0] * nnz
  else:
    arrays = dict(matrix=result)
    entries = shape[0] * shape[1]
  raw_bytes = sum(a.size * a.dtype.itemsize for a in arrays.values())
  logging.info("Generated in %.3f s: %.3g %s/s, %.3g GB/s.", generate_s,
               entries / generate_s, "nonzeros" if ell else "entries",
               raw_bytes / generate_s / 1e9)

  logging.info("Verifying.")
  start = time.perf_counter()
  if ell:
    verification = verify_ell(jax, arrays["values"], arrays["indices"], spec,
                              dtype.name)
  else:
    verification = verify(jax, arrays["matrix"], spec, dtype.name)
  verify_s = time.perf_counter() - start
  (logging.info if verification["passed"] else logging.error)(
      "Verification %s in %.2f s: %s", "passed" if verification["passed"]
      else "FAILED", verify_s, verification)
  memory = _peak_memory(jax, compiled)
  logging.info("Peak memory per device (%s): %s; host peak RSS %.2f GiB.",
               memory["source"], {d: _size(b) for d, b in
                                  memory["per_device_peak_bytes"].items()},
               memory["host_peak_rss_bytes"] / 2**30)

  report = dict(
      format=_FORMAT.value, shape=list(shape),
      arrays={name: list(a.shape) for name, a in arrays.items()},
      entries=entries, dtype=dtype.name, sparsity=_SPARSITY.value,
      init_type=_INIT_TYPE.value, method=_METHOD.value,
      rounding=_ROUNDING.value, seed=_SEED.value, zeros_per_row=spec.k,
      platform=devices[0].platform, device_kind=devices[0].device_kind,
      devices=len(devices), processes=jax.process_count(),
      mesh=dict(mesh.shape), tile=[tile_rows, tile_cols],
      chunk_rows=chunk_rows_used,
      chunk_rows_source="flag" if chunk_rows is not None else "automatic",
      compile_seconds=compile_s, generation_seconds=generate_s,
      entries_per_second=entries / generate_s,
      gigabytes_per_second=raw_bytes / generate_s / 1e9,
      matrix_bytes=raw_bytes, verification=verification,
      verification_seconds=verify_s, memory=memory, output=None,
      alberta_version=alberta.__version__, jax_version=jax.__version__)

  status = 0
  if not verification["passed"]:
    logging.error("Not saving a matrix that failed verification.")
    status = 1
  elif _OUTPUT.value is not None:
    fractions = ({name: _compressed_fraction(a) for name, a in arrays.items()}
                 if lead else {})
    fraction = None
    if fractions and all(fractions.values()):
      fraction = sum(fractions[name] * a.size * a.dtype.itemsize
                     for name, a in arrays.items()) / raw_bytes
    expected = int(raw_bytes * fraction) if fraction else raw_bytes
    logging.info("Saving to %s%s.", _OUTPUT.value,
                 f" (~{_size(expected)} on disk)" if fraction else "")
    start = time.perf_counter()
    recompute_args = (
        f"(jax.random.key({_SEED.value}), {shape}, {_SPARSITY.value!r}, "
        f"{_INIT_TYPE.value!r}, dtype=jnp.{dtype.name}, "
        f"method={_METHOD.value!r}, rounding={_ROUNDING.value!r})")
    metadata = dict(
        format=_FORMAT.value, shape=list(shape), sparsity=_SPARSITY.value,
        init_type=_INIT_TYPE.value, method=_METHOD.value,
        rounding=_ROUNDING.value, dtype=dtype.name, seed=_SEED.value,
        zeros_per_row=spec.k)
    if ell:
      metadata.update(
          nonzeros_per_row=nnz,
          recompute=f"alberta.sparse_init_ell{recompute_args}",
          dense=(f"alberta.to_dense(values, indices, {shape}) equals "
                 f"alberta.sparse_init{recompute_args} (zeros as +0.0)"))
    else:
      metadata.update(recompute=f"alberta.sparse_init{recompute_args}")
    path = checkpoint.save(
        _OUTPUT.value, arrays,  # {"matrix"}, or {"values", "indices"}.
        metadata=metadata,
        overwrite=_OVERWRITE.value,
        progress=(functools.partial(_progress_line, expected_bytes=expected,
                                    estimated=fraction is not None)
                  if lead else None),
        progress_every_s=_PROGRESS_EVERY_S)
    save_s = time.perf_counter() - start
    on_disk = sum(os.path.getsize(os.path.join(root, f))
                  for root, _, files in os.walk(path) for f in files)
    logging.info("Saved %s: %s on disk (%.1f%% of the raw arrays) in %.2f s.",
                 path, _size(on_disk), 100 * on_disk / raw_bytes, save_s)
    report.update(output=path, save_seconds=save_s, checkpoint_bytes=on_disk)

  if _REPORT.value is not None and lead:
    _write_report(_REPORT.value, report)
    logging.info("Report written to %s.", _REPORT.value)
  return status


if __name__ == "__main__":
  app.run(main)
