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

import functools
import json
import logging as py_logging
import math
import os
import resource
import shutil
import signal
import socket
import sys
import threading
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
    "Mask method: counter (sort-free, fast) or permutation (the seed's). "
    "Note that alberta.sparse_init's own default is permutation: the log and "
    "the report spell out the exact call, method included, that reproduces "
    "the matrix.")
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
    "checkpoint or an empty directory is ever replaced, never a symbolic "
    "link).")
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
# After SIGINT or SIGTERM, how long the save may take to abandon its writes
# and remove its staging directory before the launcher does it and exits.
_INTERRUPT_GRACE_S = 3.0
# Removing a failed or abandoned save's staging: done once nothing has
# reappeared for _QUIET_S (orbax's threads may still write), at most _CLEANUP_S.
_QUIET_S = 0.5
_CLEANUP_S = 5.0
# Exit status of a failed verification, save or flag.
_FAILED = 1


class _FlagError(Exception):
  """A flag combination found invalid once JAX knows the devices."""


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
  import alberta  # pylint: disable=g-import-not-at-top
  try:
    # Refuses an existing path without --overwrite, and a symbolic link, a
    # file or a non-checkpoint directory even with it.
    alberta.checkpoint.check_output(values["output"], values["overwrite"])
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
  """The `--mesh` (default: every device on rows), or a _FlagError."""
  devices = jax.devices()
  if _MESH.value is None:
    mesh_shape = (len(devices),)
    if shape[0] % len(devices):
      raise _FlagError(
          f"--mesh defaults to all {len(devices)} devices on rows, which does "
          f"not divide the {shape[0]} rows of --shape={_SHAPE.value}; pass "
          f"--mesh (e.g. --mesh=N with N dividing {shape[0]}) or another "
          f"--shape.")
  else:
    mesh_shape = tuple(int(v) for v in _MESH.value.split(","))
  needed = math.prod(mesh_shape)
  if needed > len(devices):
    raise _FlagError(
        f"--mesh={_MESH.value} needs {needed} devices but only {len(devices)} "
        f"exist ({devices[0].platform}; on the CPU, --num_cpu_devices sets "
        f"their number).")
  if needed < len(devices) and jax.process_count() > 1:
    raise _FlagError(
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
  """Drops orbax's records from the absl log unless --verbosity >= 1.

  Orbax logs dozens of INFO lines per save, and a failed save as ERROR records
  with tracebacks from several of its threads; the launcher reports a failure
  itself, in one line.
  """

  def filter(self, record) -> bool:
    return (f"{os.sep}orbax{os.sep}" not in record.pathname or
            logging.get_verbosity() >= 1)


def _write_report(path: str, report: dict[str, Any]) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _stderr(line: str) -> None:
  sys.stderr.write(f"{os.path.basename(sys.argv[0])}: {line}\n")
  sys.stderr.flush()


def _exit_now(status: int) -> None:
  """Flushes the logs and exits without waiting for other threads.

  Orbax leaves non-daemon threads (and an asyncio loop) behind after a failed
  or abandoned save, which would hold the interpreter's exit and print
  tracebacks while it shuts down.
  """
  for handler in py_logging.getLogger().handlers + [
      logging.get_absl_handler()]:
    try:
      handler.flush()
    except Exception:  # pylint: disable=broad-except
      pass
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


class _Interrupts:
  """SIGINT and SIGTERM: a one-line message, no staging left, exit 128 + N.

  Both signals raise KeyboardInterrupt in the main thread (SIGTERM through
  whatever handles SIGINT at that moment, so a save that defers Ctrl-C during
  its final renames defers SIGTERM too). `alberta.checkpoint.save` then waits
  for its in-flight writes, removes its staging directory and re-raises, and
  `main` calls `exit`. The main thread may be busy in XLA or waiting for
  orbax's writes for long, though: a watcher thread, woken by the signal
  itself (`signal.set_wakeup_fd`), calls `exit` after `_INTERRUPT_GRACE_S`
  seconds (or at a second signal), removing the staging directories this run
  created. Exiting is `os._exit`: orbax's threads are not waited for.
  """

  def __init__(self):
    self.signum: int | None = None
    self.phase = "starting"
    self.output: str | None = None
    self.output_existed = False
    self._stale: frozenset[str] = frozenset()
    self._lock = threading.Lock()

  def install(self) -> None:
    """Must run in the main thread, before the work starts."""
    signal.signal(signal.SIGINT, self._on_sigint)
    signal.signal(signal.SIGTERM, self._on_sigterm)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    self._sockets = (reader, writer)  # Kept open for the process's life.
    threading.Thread(target=self._watch, args=(reader,), daemon=True,
                     name="init-large-interrupts").start()

  def watch_output(self, output: str, stale: Sequence[str]) -> None:
    """Staging directories of `output` not in `stale` are this run's."""
    self.output = output
    self.output_existed = os.path.lexists(output)
    self._stale = frozenset(stale)

  def _on_sigint(self, signum, frame) -> None:
    del frame
    if self.signum is None:
      self.signum = signum
    raise KeyboardInterrupt

  def _on_sigterm(self, signum, frame) -> None:
    if self.signum is None:
      self.signum = signum
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
      handler(signal.SIGINT, frame)
    else:
      raise KeyboardInterrupt

  def _watch(self, reader: socket.socket) -> None:
    deadline = None
    while True:
      reader.settimeout(None if deadline is None else
                        max(0.0, deadline - time.monotonic()))
      try:
        received = reader.recv(64)
      except socket.timeout:
        self.exit(forced="its in-flight work did not stop in time")
        return
      signums = [b for b in received if b in (signal.SIGINT, signal.SIGTERM)]
      if not signums:
        continue
      if self.signum is None:
        self.signum = signums[0]
      if deadline is not None or len(signums) > 1:
        self.exit(forced="a second signal")  # Stop waiting.
        return
      deadline = time.monotonic() + _INTERRUPT_GRACE_S

  def remove_staging(self) -> list[str]:
    """Removes the staging directories this run created; returns them.

    Orbax's threads may still be writing (after a failure, the save's own
    cleanup can race with them): keeps removing until nothing has reappeared
    for `_QUIET_S`, for at most `_CLEANUP_S`; the caller then exits, which
    stops those threads.
    """
    if self.output is None:
      return []
    import alberta  # pylint: disable=g-import-not-at-top
    removed = []
    deadline = time.monotonic() + _CLEANUP_S
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
      ours = [p for p in alberta.checkpoint.stale_staging(self.output)
              if p not in self._stale]
      if ours:
        quiet_since = time.monotonic()
      elif time.monotonic() - quiet_since >= _QUIET_S:
        break
      for path in ours:
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path, ignore_errors=True)
        else:
          try:
            os.unlink(path)
          except OSError:
            pass
        if path not in removed:
          removed.append(path)
      time.sleep(0.02)
    return removed

  def exit(self, forced: str | None = None) -> None:
    """Prints what happened and exits with 128 + the signal's number.

    Args:
      forced: why the watcher exits without the main thread, if it does.
    """
    if not self._lock.acquire(blocking=forced is None):
      return  # The main thread is already exiting.
    signum = self.signum or signal.SIGINT
    name = signal.Signals(signum).name
    self.remove_staging()
    if self.output is None:
      outcome = "nothing saved"
    elif os.path.lexists(self.output) and not self.output_existed:
      # The signal came during the commit's renames: the save completed.
      outcome = f"the checkpoint at --output={self.output} is complete"
    elif self.phase == "saving":
      outcome = (f"the save was abandoned and its staging removed; nothing "
                 f"was written at --output={self.output}")
    else:
      outcome = f"nothing was written at --output={self.output}"
    _stderr(f"interrupted by {name} while {self.phase}"
            f"{f' (exiting at once: {forced})' if forced else ''}; {outcome}.")
    _exit_now(128 + signum)


def _quiet_unraisablehook(unraisable) -> None:
  """Prints an exception no caller could catch only at --verbosity >= 1."""
  if logging.get_verbosity() >= 1:
    sys.__unraisablehook__(unraisable)


def _cause(error: BaseException) -> str:
  """One line: an OSError's message and path, else the error's first line."""
  if isinstance(error, OSError) and error.strerror:
    text = error.strerror
    if error.filename and str(error.filename) not in text:
      text += f": {error.filename}"
  else:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= 500 else text[:497] + "..."


def main(argv: Sequence[str]) -> int:
  interrupts = _Interrupts()
  interrupts.install()
  try:
    return _main(argv, interrupts)
  except _FlagError as e:
    _stderr(f"error: {e}")
    _stderr("Pass --helpshort or --helpfull to see help on flags.")
    _exit_now(_FAILED)
  except KeyboardInterrupt:
    interrupts.exit()
  return _FAILED


def _main(argv: Sequence[str], interrupts: _Interrupts) -> int:
  if len(argv) > 1:
    raise _FlagError(f"unexpected arguments: {' '.join(argv[1:])}")
  # On the logger: absl's handler forwards records past its own filters.
  logging.get_absl_logger().addFilter(_QuietOrbax())
  interrupts.phase = "starting JAX"
  jax = _initialize_jax()
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import alberta  # pylint: disable=g-import-not-at-top

  lead = jax.process_index() == 0
  ell = _FORMAT.value == "ell"
  shape = tuple(int(v) for v in _SHAPE.value.split(","))
  dtype = jnp.dtype(_DTYPE.value)
  mesh, sharding = _make_mesh(jax, shape)
  k = alberta.num_zeros(shape[1], _SPARSITY.value, _ROUNDING.value)
  nnz = shape[1] - k
  if ell and nnz == 0:
    # Nothing to list, and orbax cannot save zero-size arrays.
    raise _FlagError(
        f"--format=ell with --sparsity={_SPARSITY.value} (--rounding="
        f"{_ROUNDING.value}) zeroes all {shape[1]} columns of every row: "
        f"the ELL arrays would be empty. Use --format=dense or a lower "
        f"--sparsity.")
  mesh_shape = tuple(mesh.shape.values())
  tile_rows = shape[0] // mesh_shape[0]
  tile_cols = (nnz if ell else  # A device holds [tile_rows, nnz] of each.
               shape[1] // (mesh_shape[1] if len(mesh_shape) > 1 else 1))
  chunk_rows = _CHUNK_ROWS.value
  chunk_rows_used = None if chunk_rows is None else min(chunk_rows, tile_rows)
  if _OUTPUT.value is not None:
    stale = alberta.checkpoint.stale_staging(_OUTPUT.value)
    interrupts.watch_output(os.path.abspath(_OUTPUT.value), stale)
    if lead:
      for path in stale:
        logging.warning("Left by an interrupted save (safe to delete): %s",
                        path)

  # The exact call that reproduces the matrix: the launcher's --method
  # default (counter) is not sparse_init's (permutation).
  args = (f"(jax.random.key({_SEED.value}), {shape}, {_SPARSITY.value!r}, "
          f"{_INIT_TYPE.value!r}, dtype=jnp.{dtype.name}, "
          f"method={_METHOD.value!r}, rounding={_ROUNDING.value!r})")
  recompute = f"alberta.sparse_init{args}"
  recompute_ell = f"alberta.sparse_init_ell{args}" if ell else None

  devices = jax.devices()
  logging.info(
      "process %d of %d: %d local of %d %s devices (%s); mesh %s; tile %dx%d "
      "per device, %s rows per chunk.", jax.process_index(),
      jax.process_count(), jax.local_device_count(), len(devices),
      devices[0].platform, devices[0].device_kind, dict(mesh.shape), tile_rows,
      tile_cols, chunk_rows_used or "automatic")
  if lead:
    logging.info("Matrix %dx%d %s, sparsity %g (%d zeros per row, rounding %s), "
                 "%s values, method %s, seed %d, format %s%s.", *shape,
                 dtype.name, _SPARSITY.value, k, _ROUNDING.value,
                 _INIT_TYPE.value, _METHOD.value, _SEED.value, _FORMAT.value,
                 f" ({nnz} nonzeros per row)" if ell else "")
    if ell:
      logging.info("Reproduce with %s; to_dense of it equals %s.",
                   recompute_ell, recompute)
    else:
      logging.info("Reproduce with %s.", recompute)

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
  interrupts.phase = "compiling"
  start = time.perf_counter()
  compiled = generate.lower(key_data).compile()
  compile_s = time.perf_counter() - start
  logging.info("Compiled in %.2f s. Generating.", compile_s)
  interrupts.phase = "generating"
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
  interrupts.phase = "verifying"
  start = time.perf_counter()
  checked = alberta.verify(
      (arrays["values"], arrays["indices"]) if ell else arrays["matrix"],
      _SPARSITY.value, _INIT_TYPE.value, shape=shape, method=_METHOD.value,
      rounding=_ROUNDING.value, dtype=dtype, raise_on_failure=False)
  verify_s = time.perf_counter() - start
  if checked.passed:
    logging.info("Verification passed in %.2f s: %d rows of %d zeros each, "
                 "values finite, max |w| %.6g <= bound %.6g%s.", verify_s,
                 checked.rows, checked.zeros_per_row, checked.max_abs,
                 checked.value_bound,
                 ", indices in range and ascending" if ell else "")
  else:
    logging.error("Verification FAILED in %.2f s: %s.", verify_s,
                  "; ".join(checked.failures))
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
      rounding=_ROUNDING.value, seed=_SEED.value, zeros_per_row=k,
      recompute=recompute_ell or recompute,
      platform=devices[0].platform, device_kind=devices[0].device_kind,
      devices=len(devices), processes=jax.process_count(),
      mesh=dict(mesh.shape), tile=[tile_rows, tile_cols],
      chunk_rows=chunk_rows_used,
      chunk_rows_source="flag" if chunk_rows is not None else "automatic",
      compile_seconds=compile_s, generation_seconds=generate_s,
      entries_per_second=entries / generate_s,
      gigabytes_per_second=raw_bytes / generate_s / 1e9,
      matrix_bytes=raw_bytes, verification=checked.as_dict(),
      verification_seconds=verify_s, memory=memory, output=None,
      alberta_version=alberta.__version__, jax_version=jax.__version__)
  if ell:
    report.update(dense_equivalent=recompute)

  status = 0
  if not checked.passed:
    logging.error("Not saving a matrix that failed verification.")
    status = _FAILED
  elif _OUTPUT.value is not None:
    fractions = ({name: _compressed_fraction(a) for name, a in arrays.items()}
                 if lead else {})
    fraction = None
    if fractions and all(fractions.values()):
      fraction = sum(fractions[name] * a.size * a.dtype.itemsize
                     for name, a in arrays.items()) / raw_bytes
    expected = int(raw_bytes * fraction) if fraction else raw_bytes
    interrupts.phase = "saving"
    logging.info("Saving to %s%s.", _OUTPUT.value,
                 f" (~{_size(expected)} on disk)" if fraction else "")
    start = time.perf_counter()
    metadata = dict(
        format=_FORMAT.value, shape=list(shape), sparsity=_SPARSITY.value,
        init_type=_INIT_TYPE.value, method=_METHOD.value,
        rounding=_ROUNDING.value, dtype=dtype.name, seed=_SEED.value,
        zeros_per_row=k, recompute=recompute_ell or recompute)
    if ell:
      metadata.update(
          nonzeros_per_row=nnz,
          dense=(f"alberta.to_dense(values, indices, {shape}) equals "
                 f"{recompute} (zeros as +0.0)"))
    # After a failed write, tensorstore's threads still call back into
    # orbax's closed event loop; the errors, which nothing can catch, are
    # printed as "unraisable" tracebacks: shown only with --verbosity=1.
    sys.unraisablehook = _quiet_unraisablehook
    try:
      path = alberta.checkpoint.save(
          _OUTPUT.value, arrays,  # {"matrix"}, or {"values", "indices"}.
          metadata=metadata,
          overwrite=_OVERWRITE.value,
          progress=(functools.partial(_progress_line, expected_bytes=expected,
                                      estimated=fraction is not None)
                    if lead else None),
          progress_every_s=_PROGRESS_EVERY_S)
    except Exception as e:  # pylint: disable=broad-except
      # One line; the traceback (and orbax's log) only when asked for.
      if logging.get_verbosity() >= 1:
        logging.exception("The save failed:")
      # The save removes its staging on failure, but orbax's threads may
      # still write into it: removed again until they have stopped.
      interrupts.remove_staging()
      line = f"error: could not save --output={_OUTPUT.value}: {_cause(e)}"
      if logging.get_verbosity() < 1:
        line += " [--verbosity=1 shows the traceback]"
      _stderr(line)
      _exit_now(_FAILED)
    sys.unraisablehook = sys.__unraisablehook__
    interrupts.phase = "finishing"
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
