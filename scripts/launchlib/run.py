"""One launcher run: what it generates, logs, saves as metadata and reports.

`Plan` turns the parsed flags and the devices into the run: the matrix's
shape and options, the mesh, the program that generates it, the exact
`alberta.sparse_init(...)` call that reproduces it, the checkpoint's metadata
and the JSON report's fields; `Plan.save` writes the checkpoint.

Importing this module imports JAX and alberta (no backend starts): the
launcher imports it once absl has checked the flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
from typing import Any

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import alberta
from scripts.launchlib import devices
from scripts.launchlib import exits
from scripts.launchlib import options
from scripts.launchlib import report as report_lib

# Seconds between the save's progress lines, the first at its start.
PROGRESS_EVERY_S = 2.0
# Seconds between the save's measurements of the bytes on disk.
_BYTES_EVERY_S = 0.25


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run generates: the flags' matrix on the devices' mesh."""

  shape: tuple[int, int]
  sparsity: float
  init_type: str
  method: str
  rounding: str
  dtype: Any  # A NumPy dtype.
  seed: int
  format: str
  chunk_rows: int | None  # --chunk_rows; None: chosen by the library.
  zeros_per_row: int
  mesh: Any
  sharding: Any

  @classmethod
  def from_flags(cls, flag_values: flags.FlagValues = flags.FLAGS) -> Plan:
    """The run of the parsed flags; an `options.FlagError` if there is none."""
    f = flag_values
    shape = options.shape(f)
    mesh, sharding = devices.make_mesh(f)
    k = alberta.num_zeros(shape[1], f.sparsity, f.rounding)
    if f.format == "ell" and k == shape[1]:
      # Nothing to list, and orbax cannot save zero-size arrays.
      raise options.FlagError(
          f"--format=ell with --sparsity={f.sparsity} (--rounding="
          f"{f.rounding}) zeroes all {shape[1]} columns of every row: the ELL "
          "arrays would be empty. Use --format=dense or a lower --sparsity."
      )
    return cls(
        shape=shape,
        sparsity=f.sparsity,
        init_type=f.init_type,
        method=f.method,
        rounding=f.rounding,
        dtype=jnp.dtype(f.dtype),
        seed=f.seed,
        format=f.format,
        chunk_rows=f.chunk_rows,
        zeros_per_row=k,
        mesh=mesh,
        sharding=sharding,
    )

  @property
  def ell(self) -> bool:
    """Whether the matrix is written as ELL arrays (`--format=ell`)."""
    return self.format == "ell"

  @property
  def nnz(self) -> int:
    """The nonzeros per row, `fan_in - zeros_per_row`."""
    return self.shape[1] - self.zeros_per_row

  @property
  def tile(self) -> tuple[int, int]:
    """The [rows, columns] of each array one device holds."""
    mesh_shape = tuple(self.mesh.shape.values())
    cols = (
        self.nnz
        if self.ell
        else self.shape[1] // (mesh_shape[1] if len(mesh_shape) > 1 else 1)
    )
    return self.shape[0] // mesh_shape[0], cols

  @property
  def chunk_rows_used(self) -> int | None:
    """`chunk_rows` capped at a tile's rows; None: automatic."""
    return (
        None if self.chunk_rows is None else min(self.chunk_rows, self.tile[0])
    )

  def recompute(self, ell: bool = False) -> str:
    """The exact call that reproduces the matrix (or, `ell`, its ELL pair).

    The launcher's --method default (counter) is not sparse_init's
    (permutation): the method is always spelled out.
    """
    return (
        f"alberta.sparse_init{'_ell' if ell else ''}("
        f"jax.random.key({self.seed}), {self.shape}, {self.sparsity!r}, "
        f"{self.init_type!r}, dtype=jnp.{self.dtype.name}, "
        f"method={self.method!r}, rounding={self.rounding!r})"
    )

  def log(self) -> None:
    """Logs the devices and mesh (every process) and the matrix (process 0)."""
    devices = jax.devices()
    logging.info(
        "process %d of %d: %d local of %d %s devices (%s); mesh %s; tile "
        "%dx%d per device, %s rows per chunk.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        len(devices),
        devices[0].platform,
        devices[0].device_kind,
        dict(self.mesh.shape),
        *self.tile,
        self.chunk_rows_used or "automatic",
    )
    if jax.process_index():
      return
    logging.info(
        "Matrix %dx%d %s, sparsity %g (%d zeros per row, rounding %s), %s "
        "values, method %s, seed %d, format %s%s.",
        *self.shape,
        self.dtype.name,
        self.sparsity,
        self.zeros_per_row,
        self.rounding,
        self.init_type,
        self.method,
        self.seed,
        self.format,
        f" ({self.nnz} nonzeros per row)" if self.ell else "",
    )
    if self.ell:
      logging.info(
          "Reproduce with %s; to_dense of it equals %s.",
          self.recompute(ell=True),
          self.recompute(),
      )
    else:
      logging.info("Reproduce with %s.", self.recompute())

  def compile(self) -> tuple[jax.stages.Compiled, float]:
    """The generation program compiled ahead of time, and the seconds taken.

    The key goes in as its raw uint32[2] words: a NumPy value every process
    passes identically, which multi-process jit reads as replicated.
    """
    generate = jax.jit(
        functools.partial(
            alberta.sharded_sparse_init_ell
            if self.ell
            else alberta.sharded_sparse_init,
            shape=self.shape,
            sparsity=self.sparsity,
            init_type=self.init_type,
            sharding=self.sharding,
            dtype=self.dtype,
            method=self.method,
            rounding=self.rounding,
            chunk_rows=self.chunk_rows,
        ),
        out_shardings=(self.sharding,) * 2 if self.ell else self.sharding,
    )
    logging.info("Compiling.")
    start = time.perf_counter()
    compiled = generate.lower(self.key_data()).compile()
    seconds = time.perf_counter() - start
    logging.info("Compiled in %.2f s. Generating.", seconds)
    return compiled, seconds

  def key_data(self) -> np.ndarray:
    """The raw uint32[2] words of `jax.random.key(seed)`."""
    return np.asarray(jax.random.key_data(jax.random.key(self.seed)))

  def generate(
      self, compiled: jax.stages.Compiled
  ) -> tuple[dict[str, Any], float]:
    """Runs the program: {"matrix"} or {"values", "indices"}, and seconds."""
    start = time.perf_counter()
    result = compiled(self.key_data())
    jax.block_until_ready(result)
    seconds = time.perf_counter() - start
    arrays = (
        dict(values=result[0], indices=result[1])
        if self.ell
        else dict(matrix=result)
    )
    logging.info(
        "Generated in %.3f s: %.3g %s/s, %.3g GB/s.",
        seconds,
        self.entries / seconds,
        "nonzeros" if self.ell else "entries",
        report_lib.nbytes(arrays) / seconds / 1e9,
    )
    return arrays, seconds

  @property
  def entries(self) -> int:
    """Entries stored: every one, or (ELL) the nonzeros."""
    return self.shape[0] * (self.nnz if self.ell else self.shape[1])

  def verify(self, arrays: dict[str, Any]) -> tuple[Any, float]:
    """`alberta.verify` of the arrays, logged; the result and seconds."""
    logging.info("Verifying.")
    start = time.perf_counter()
    checked = alberta.verify(
        (arrays["values"], arrays["indices"]) if self.ell else arrays["matrix"],
        self.sparsity,
        self.init_type,
        shape=self.shape,
        method=self.method,
        rounding=self.rounding,
        dtype=self.dtype,
        raise_on_failure=False,
    )
    seconds = time.perf_counter() - start
    if checked.passed:
      logging.info(
          "Verification passed in %.2f s: %d rows of %d zeros each, "
          "values finite, max |w| %.6g <= bound %.6g%s.",
          seconds,
          checked.rows,
          checked.zeros_per_row,
          checked.max_abs,
          checked.value_bound,
          ", indices in range and ascending" if self.ell else "",
      )
    else:
      logging.error(
          "Verification FAILED in %.2f s: %s.",
          seconds,
          "; ".join(checked.failures),
      )
    return checked, seconds

  def _facts(self) -> dict[str, Any]:
    return dict(
        format=self.format,
        shape=list(self.shape),
        sparsity=self.sparsity,
        init_type=self.init_type,
        method=self.method,
        rounding=self.rounding,
        dtype=self.dtype.name,
        seed=self.seed,
        zeros_per_row=self.zeros_per_row,
        recompute=self.recompute(ell=self.ell),
    )

  def metadata(self) -> dict[str, Any]:
    """What the checkpoint's alberta.json records to recompute the arrays."""
    info = self._facts()
    if self.ell:
      info.update(
          nonzeros_per_row=self.nnz,
          dense=(
              f"alberta.to_dense(values, indices, {self.shape}) equals "
              f"{self.recompute()} (zeros as +0.0)"
          ),
      )
    return info

  def report(
      self,
      arrays: dict[str, Any],
      *,
      compile_s: float,
      generate_s: float,
      checked: Any,
      verify_s: float,
      memory: dict[str, Any],
  ) -> dict[str, Any]:
    """The JSON report's fields, before the save adds its own."""
    devices = jax.devices()
    raw = report_lib.nbytes(arrays)
    report = dict(
        self._facts(),
        arrays={name: list(a.shape) for name, a in arrays.items()},
        entries=self.entries,
        platform=devices[0].platform,
        device_kind=devices[0].device_kind,
        devices=len(devices),
        processes=jax.process_count(),
        mesh=dict(self.mesh.shape),
        tile=list(self.tile),
        chunk_rows=self.chunk_rows_used,
        chunk_rows_source="automatic" if self.chunk_rows is None else "flag",
        compile_seconds=compile_s,
        generation_seconds=generate_s,
        entries_per_second=self.entries / generate_s,
        gigabytes_per_second=raw / generate_s / 1e9,
        matrix_bytes=raw,
        verification=checked.as_dict(),
        verification_seconds=verify_s,
        memory=memory,
        output=None,
        alberta_version=alberta.__version__,
        jax_version=jax.__version__,
    )
    if self.ell:
      report.update(dense_equivalent=self.recompute())
    return report

  def save(
      self,
      arrays: dict[str, Any],
      output: str,
      *,
      overwrite: bool,
      interrupts: exits.Interrupts,
      lead: bool,
  ) -> dict[str, Any]:
    """Saves the arrays and `metadata()` at `output`, logging its progress.

    Process 0 (`lead`) logs a progress line as the save starts and one every
    `PROGRESS_EVERY_S` seconds until it ends (`report.SaveProgress`). A
    failed save is reported in one line and ends the process
    (`exits.FAILED`).

    Returns:
      The report's fields of the save: `output`, `save_seconds` and
      `checkpoint_bytes`.
    """
    raw = report_lib.nbytes(arrays)
    # A sample compressed as orbax does: the progress bar's end.
    estimate = (
        alberta.checkpoint.estimate_stored_bytes(arrays) if lead else None
    )
    interrupts.phase = "saving"
    logging.info(
        "Saving to %s%s.",
        output,
        f" (~{report_lib.size(estimate)} on disk)" if estimate else "",
    )
    # After a failed write, tensorstore's threads still call back into orbax's
    # closed event loop: their tracebacks only with --verbosity=1.
    sys.unraisablehook = exits.quiet_unraisablehook
    # Process 0's progress lines, from the save's start; the save reports the
    # bytes on disk to them every _BYTES_EVERY_S seconds while it writes.
    progress = (
        report_lib.SaveProgress(
            estimate or raw,
            bool(estimate),
            PROGRESS_EVERY_S,
            stop_when=lambda: interrupts.signum is not None,
        )
        if lead
        else contextlib.nullcontext()
    )
    start = time.perf_counter()
    try:
      with progress:
        path = alberta.checkpoint.save(
            output,
            arrays,  # {"matrix"}, or {"values", "indices"}.
            metadata=self.metadata(),
            overwrite=overwrite,
            progress=progress.update if lead else None,
            progress_every_s=_BYTES_EVERY_S,
        )
    except Exception as e:  # pylint: disable=broad-except
      # One line; the traceback (and orbax's log) only when asked for.
      if logging.get_verbosity() >= 1:
        logging.exception("The save failed:")
      # The save removes its staging on failure, but orbax's threads may
      # still write into it: removed again until they have stopped.
      interrupts.remove_staging()
      exits.stderr(exits.save_failed(output, e))
      exits.exit_now(exits.FAILED)
    sys.unraisablehook = sys.__unraisablehook__
    interrupts.phase = "finishing"
    save_s = time.perf_counter() - start
    on_disk = report_lib.tree_bytes(path)
    logging.info(
        "Saved %s: %s on disk (%.1f%% of the raw arrays) in %.2f s.",
        path,
        report_lib.size(on_disk),
        100 * on_disk / raw,
        save_s,
    )
    return dict(output=path, save_seconds=save_s, checkpoint_bytes=on_disk)
