"""The launcher's flags once parsed: validation, JAX's start, the mesh.

`register_validators` checks everything that can be checked without JAX
(shapes, the mesh against the shape, `--format=ell`'s combinations, the
output and report paths), so a bad flag is refused at once, in one line, by
absl. What needs the devices (the default mesh, the number of devices, the
number of nonzeros per row) raises `FlagError` once JAX has started; the
launcher reports it in the same form (`exits.flag_error`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from absl import flags
from absl import logging


class FlagError(Exception):
  """A flag combination found invalid once JAX knows the devices."""


def parse_ints(text: str, flag: str, counts: Sequence[int]) -> tuple[int, ...]:
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


def _check_shape(value: str) -> bool:
  shape = parse_ints(value, "shape", (2,))
  if max(shape) >= 2**32:
    raise flags.ValidationError(
        f"--shape={value!r}: dimensions must be below 2**32.")
  return True


def _check_mesh(value: str | None) -> bool:
  if value is not None:
    parse_ints(value, "mesh", (1, 2))
  return True


def _check_mesh_divides_shape(values: dict[str, Any]) -> bool:
  if values["mesh"] is None:
    return True  # The default mesh is checked once the devices are known.
  shape = parse_ints(values["shape"], "shape", (2,))
  mesh = parse_ints(values["mesh"], "mesh", (1, 2))
  for dim, size, parts in zip(("rows", "columns"), shape, mesh):
    if size % parts:
      raise flags.ValidationError(
          f"--mesh={values['mesh']} splits the {size} {dim} of "
          f"--shape={values['shape']} into {parts} parts, which does not "
          f"divide them.")
  return True


def _check_ell_mesh(values: dict[str, Any]) -> bool:
  if values["format"] != "ell" or values["mesh"] is None:
    return True
  mesh = parse_ints(values["mesh"], "mesh", (1, 2))
  if len(mesh) == 2 and mesh[1] > 1:
    raise flags.ValidationError(
        f"--mesh={values['mesh']} splits the columns over {mesh[1]} devices, "
        f"but --format=ell keeps each row's nonzeros whole on one device: "
        f"split the rows only (e.g. --mesh={mesh[0]}).")
  return True


def _check_ell_method(values: dict[str, Any]) -> bool:
  if values["format"] == "ell" and values["method"] != "counter":
    raise flags.ValidationError(
        f"--method={values['method']} cannot make --format=ell: the "
        f"permutation method's zeros come from sorting each whole row, so "
        f"its nonzeros cannot be listed without building the dense row. Use "
        f"--method=counter (the default) or --format=dense.")
  return True


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


def _check_process_id(values: dict[str, Any]) -> bool:
  n, i = values["num_processes"], values["process_id"]
  if n is not None and i is not None and i >= n:
    raise flags.ValidationError(
        f"--process_id={i} must be below --num_processes={n}.")
  return True


def _check_sparsity(value: float) -> bool:
  return not math.isnan(value)  # NaN passes the flag's own range check.


# (flags, check, message) in the order absl runs them: the first failing one
# is reported.
_VALIDATORS = (
    ("shape", _check_shape, "--shape is invalid"),
    ("sparsity", _check_sparsity, "--sparsity must be in [0, 1], not NaN"),
    ("mesh", _check_mesh, "--mesh is invalid"),
    (("shape", "mesh"), _check_mesh_divides_shape, "--mesh is invalid"),
    (("format", "mesh"), _check_ell_mesh, "--mesh is invalid"),
    (("format", "method"), _check_ell_method, "--method is invalid"),
    (("output", "overwrite"), _check_output, "--output is invalid"),
    ("report", _check_report, "--report is invalid"),
    (("num_processes", "process_id"), _check_process_id,
     "--process_id is invalid"),
)


def register_validators(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Registers the checks above; call once the launcher's flags are defined."""
  for names, check, message in _VALIDATORS:
    if isinstance(names, str):
      flags.register_validator(names, check, message=message,
                               flag_values=flag_values)
    else:
      flags.register_multi_flags_validator(list(names), check, message=message,
                                           flag_values=flag_values)


def shape(flag_values: flags.FlagValues = flags.FLAGS) -> tuple[int, int]:
  """`--shape` as (ROWS, COLS); the validators have checked it."""
  rows, cols = parse_ints(flag_values.shape, "shape", (2,))
  return rows, cols


def start_jax(flag_values: flags.FlagValues = flags.FLAGS):
  """Configures and starts JAX (and its multi-process runtime); returns jax."""
  import jax  # pylint: disable=g-import-not-at-top

  f = flag_values
  if f.num_cpu_devices is not None:
    # Must precede the first backend use; it overrides XLA_FLAGS' count.
    jax.config.update("jax_num_cpu_devices", f.num_cpu_devices)
  multi = (f.coordinator_address, f.num_processes, f.process_id)
  if f.distributed or any(v is not None for v in multi):
    # Cross-process collectives on the CPU need an implementation; gloo ships
    # with jaxlib (and is jax 0.10's default; older versions had none).
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("Starting JAX's multi-process runtime (coordinator %s, "
                 "%s processes, process %s).", *multi)
    jax.distributed.initialize(coordinator_address=multi[0],
                               num_processes=multi[1], process_id=multi[2])
  return jax


def make_mesh(jax, flag_values: flags.FlagValues = flags.FLAGS):
  """The `--mesh` (default: every device on rows) and the output sharding.

  Returns:
    (mesh, sharding): a `jax.sharding.Mesh` with axes "rows" (and "cols"),
    and the `NamedSharding` of the output (rows only for `--format=ell`).

  Raises:
    FlagError: the default mesh does not divide the rows, the mesh needs more
      devices than exist, or a multi-process run leaves devices out.
  """
  f = flag_values
  devices = jax.devices()
  rows = shape(f)[0]
  if f.mesh is None:
    mesh_shape = (len(devices),)
    if rows % len(devices):
      raise FlagError(
          f"--mesh defaults to all {len(devices)} devices on rows, which does "
          f"not divide the {rows} rows of --shape={f.shape}; pass "
          f"--mesh (e.g. --mesh=N with N dividing {rows}) or another "
          f"--shape.")
  else:
    mesh_shape = parse_ints(f.mesh, "mesh", (1, 2))
  needed = math.prod(mesh_shape)
  if needed > len(devices):
    raise FlagError(
        f"--mesh={f.mesh} needs {needed} devices but only {len(devices)} "
        f"exist ({devices[0].platform}; on the CPU, --num_cpu_devices sets "
        f"their number).")
  if needed < len(devices) and jax.process_count() > 1:
    raise FlagError(
        f"--mesh={f.mesh} uses {needed} of the {len(devices)} devices; "
        f"a multi-process run must use them all.")
  names = ("rows", "cols")[:len(mesh_shape)]
  mesh = jax.make_mesh(mesh_shape, names,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names),
                       devices=devices[:needed])
  # ELL arrays are split by rows only (the validators refuse a column split;
  # a "cols" axis of size 1 just replicates).
  split = names[:1] if f.format == "ell" else names
  return mesh, jax.sharding.NamedSharding(mesh,
                                          jax.sharding.PartitionSpec(*split))
