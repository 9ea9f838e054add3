"""The launcher's flags: their definitions and the checks made before JAX.

`define` declares every flag of `scripts/init_large.py` on a `FlagValues` and
registers the checks that need no JAX (shapes, the mesh against the shape,
`--format=ell`'s combinations, the output and report paths), so a bad flag is
refused at once, in one line, by absl. What needs the devices (the default
mesh, the number of devices, the number of nonzeros per row) raises
`FlagError` once JAX has started (`devices`, `run`); the launcher reports it
in the same form (`exits.flag_error`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags


class FlagError(Exception):
  """A flag combination found invalid once JAX knows the devices."""


def parse_ints(text: str, flag: str, counts: Sequence[int]) -> tuple[int, ...]:
  """`text` as comma-separated positive ints, or a ValidationError."""
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    values = ()
  if len(values) not in counts or any(v <= 0 for v in values):
    names = {1: "N", 2: "ROWS,COLS" if flag == "shape" else "A,B"}
    wanted = " or ".join(names[c] for c in counts)
    raise flags.ValidationError(
        f"--{flag}={text!r} must be {wanted}, positive integers."
    )
  return values


# Each check returns what is wrong (None: nothing), or raises
# flags.ValidationError through parse_ints; `_raising` makes it a validator.


def _check_shape(value: str) -> str | None:
  if max(parse_ints(value, "shape", (2,))) >= 2**32:
    return f"--shape={value!r}: dimensions must be below 2**32."
  return None


def _check_sparsity(value: float) -> str | None:
  # NaN passes the flag's own range check.
  return "--sparsity must be in [0, 1], not NaN" if math.isnan(value) else None


def _check_mesh(value: str | None) -> str | None:
  if value is not None:
    parse_ints(value, "mesh", (1, 2))
  return None


def _check_mesh_divides_shape(values: dict[str, Any]) -> str | None:
  if values["mesh"] is None:
    return None  # The default mesh is checked once the devices are known.
  shape = parse_ints(values["shape"], "shape", (2,))
  mesh = parse_ints(values["mesh"], "mesh", (1, 2))
  # A one-number mesh (--mesh=N) splits the rows only: zip stops there.
  for dim, size, parts in zip(("rows", "columns"), shape, mesh, strict=False):
    if size % parts:
      return (
          f"--mesh={values['mesh']} splits the {size} {dim} of "
          f"--shape={values['shape']} into {parts} parts, which does not "
          "divide them."
      )
  return None


def _check_ell_mesh(values: dict[str, Any]) -> str | None:
  if values["format"] != "ell" or values["mesh"] is None:
    return None
  mesh = parse_ints(values["mesh"], "mesh", (1, 2))
  if len(mesh) == 2 and mesh[1] > 1:
    return (
        f"--mesh={values['mesh']} splits the columns over {mesh[1]} "
        "devices, but --format=ell keeps each row's nonzeros whole on "
        f"one device: split the rows only (e.g. --mesh={mesh[0]})."
    )
  return None


def _check_ell_method(values: dict[str, Any]) -> str | None:
  if values["format"] == "ell" and values["method"] != "counter":
    return (
        f"--method={values['method']} cannot make --format=ell: the "
        "permutation method's zeros come from sorting each whole row, so "
        "its nonzeros cannot be listed without building the dense row. "
        "Use --method=counter (the default) or --format=dense."
    )
  return None


def _check_output(values: dict[str, Any]) -> str | None:
  if values["output"] is None:
    return None
  if not values["output"]:
    return "--output must not be empty."
  # Imported here: the other flags are checked without starting JAX.
  import alberta  # pylint: disable=g-import-not-at-top

  try:
    # Refuses an existing path without --overwrite, and a symbolic link, a
    # file or a non-checkpoint directory even with it.
    alberta.checkpoint.check_output(values["output"], values["overwrite"])
  except FileExistsError as e:
    return f"--output={values['output']}: {e}"
  except PermissionError as e:
    return f"--output={values['output']} is not writable: {e}"
  return None


def _check_report(value: str | None) -> str | None:
  if value is None:
    return None
  parent = os.path.dirname(os.path.abspath(value)) if value else ""
  if not value or os.path.isdir(value):
    return f"--report={value!r} must name a file."
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    return f"--report={value!r}: {parent} is not a writable directory."
  return None


def _check_process_id(values: dict[str, Any]) -> str | None:
  n, i = values["num_processes"], values["process_id"]
  if n is not None and i is not None and i >= n:
    return f"--process_id={i} must be below --num_processes={n}."
  return None


def _raising(check: Callable[[Any], str | None]) -> Callable[[Any], bool]:
  def validate(value: Any) -> bool:
    problem = check(value)
    if problem:
      raise flags.ValidationError(problem)
    return True

  return validate


# (flags, check, message) in the order absl runs them: the first failing one
# is reported.
_VALIDATORS = (
    ("shape", _check_shape, "--shape is invalid"),
    ("sparsity", _check_sparsity, "--sparsity is invalid"),
    ("mesh", _check_mesh, "--mesh is invalid"),
    (("shape", "mesh"), _check_mesh_divides_shape, "--mesh is invalid"),
    (("format", "mesh"), _check_ell_mesh, "--mesh is invalid"),
    (("format", "method"), _check_ell_method, "--method is invalid"),
    (("output", "overwrite"), _check_output, "--output is invalid"),
    ("report", _check_report, "--report is invalid"),
    (
        ("num_processes", "process_id"),
        _check_process_id,
        "--process_id is invalid",
    ),
)


def define(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the launcher's flags on `flag_values` and registers the checks."""
  flags.DEFINE_string(
      "shape",
      "8192,8192",
      "Matrix shape ROWS,COLS = (fan_out, fan_in).",
      flag_values=flag_values,
  )
  flags.DEFINE_float(
      "sparsity",
      0.9,
      "Fraction of each row's entries set to zero.",
      lower_bound=0.0,
      upper_bound=1.0,
      flag_values=flag_values,
  )
  flags.DEFINE_enum(
      "init_type",
      "uniform",
      ["uniform", "normal"],
      "LeCun uniform or LeCun normal values.",
      flag_values=flag_values,
  )
  flags.DEFINE_enum(
      "rounding",
      "nearest",
      ["nearest", "ceil"],
      "Zero-count rule: nearest (the reference) or ceil (the paper).",
      flag_values=flag_values,
  )
  flags.DEFINE_enum(
      "dtype",
      "float32",
      ["float32", "bfloat16", "float16"],
      "Element type; values are generated in float32 and cast.",
      flag_values=flag_values,
  )
  flags.DEFINE_enum(
      "method",
      "counter",
      ["counter", "permutation"],
      "Mask method: counter (sort-free, fast) or permutation (the "
      "reference's). Note that alberta.sparse_init's own default is "
      "permutation: the log and the report spell out the exact call, method "
      "included, that reproduces the matrix.",
      flag_values=flag_values,
  )
  flags.DEFINE_enum(
      "format",
      "dense",
      ["dense", "ell"],
      "Output layout: dense (the whole matrix, zeros included) or ell (each "
      "row's fan_in - k nonzero values and their ascending column indices, "
      "two [ROWS, fan_in - k] arrays; the zeros are never built). ell needs "
      "--method=counter and a mesh that splits rows only.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "seed",
      0,
      "The key is jax.random.key(seed). Limited to [0, 2**32): with "
      "64-bit mode off, JAX keeps only a seed's low 32 bits.",
      lower_bound=0,
      upper_bound=2**32 - 1,
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "mesh",
      None,
      "Device mesh: N (rows split over N devices) or A,B (rows "
      "over A, columns over B). Default: every device on rows.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "chunk_rows",
      None,
      "Rows generated per step on each device, as in "
      "sharded_sparse_init; default: chosen from the tile's memory.",
      lower_bound=1,
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "num_cpu_devices",
      None,
      "On the CPU platform, the number of virtual "
      "devices (laptops and tests). Ignored by GPU and TPU backends.",
      lower_bound=1,
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "output",
      None,
      "Checkpoint directory to save to. Without it the matrix "
      "is generated, verified and reported, not saved.",
      flag_values=flag_values,
  )
  flags.DEFINE_bool(
      "overwrite",
      False,
      "Replace an existing --output (only an alberta "
      "checkpoint or an empty directory is ever replaced, never a symbolic "
      "link).",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "report",
      None,
      "Write a machine-readable JSON report to this file.",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "coordinator_address",
      None,
      "Multi-host: HOST:PORT of process 0, for jax.distributed.initialize.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "num_processes",
      None,
      "Multi-host: number of processes.",
      lower_bound=1,
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "process_id",
      None,
      "Multi-host: this process's index.",
      lower_bound=0,
      flag_values=flag_values,
  )
  flags.DEFINE_bool(
      "distributed",
      False,
      "Call jax.distributed.initialize() even without "
      "the three flags above, letting JAX detect a managed cluster (Cloud "
      "TPU, SLURM, Open MPI, GKE).",
      flag_values=flag_values,
  )
  for names, check, message in _VALIDATORS:
    if isinstance(names, str):
      flags.register_validator(
          names, _raising(check), message=message, flag_values=flag_values
      )
    else:
      flags.register_multi_flags_validator(
          list(names), _raising(check), message=message, flag_values=flag_values
      )


def shape(flag_values: flags.FlagValues = flags.FLAGS) -> tuple[int, int]:
  """`--shape` as (ROWS, COLS); the validators have checked it."""
  rows, cols = parse_ints(flag_values.shape, "shape", (2,))
  return rows, cols
