"""Starting JAX for the launcher, and the device mesh of `--mesh`.

Importing this module imports JAX but starts none of its backends: the
launcher imports it once absl has checked the flags, and `start_jax` then
configures JAX before anything uses a device.
"""

from __future__ import annotations

import logging as py_logging
import math

from absl import flags
from absl import logging
import jax

from scripts.launchlib import exits
from scripts.launchlib import options


def start_jax(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Configures JAX and starts its multi-process runtime, if asked for.

  Must run before anything uses a device: the CPU device count and the
  multi-process runtime cannot change once a backend has started.

  Args:
    flag_values: the parsed flags (`--num_cpu_devices`, `--distributed`,
      `--coordinator_address`, `--num_processes`, `--process_id`).
  """
  # Before the first backend use: the backend probe logs as it starts.
  py_logging.getLogger("jax._src.xla_bridge").addFilter(
      exits.QuietBackendProbe()
  )
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
    logging.info(
        "Starting JAX's multi-process runtime (coordinator %s, "
        "%s processes, process %s).",
        *multi,
    )
    jax.distributed.initialize(
        coordinator_address=multi[0],
        num_processes=multi[1],
        process_id=multi[2],
    )


def make_mesh(
    flag_values: flags.FlagValues = flags.FLAGS,
) -> tuple[jax.sharding.Mesh, jax.sharding.NamedSharding]:
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
  rows = options.shape(f)[0]
  if f.mesh is None:
    mesh_shape = (len(devices),)
    if rows % len(devices):
      raise options.FlagError(
          f"--mesh defaults to all {len(devices)} devices on rows, which does "
          f"not divide the {rows} rows of --shape={f.shape}; pass "
          f"--mesh (e.g. --mesh=N with N dividing {rows}) or another "
          "--shape."
      )
  else:
    mesh_shape = options.parse_ints(f.mesh, "mesh", (1, 2))
  needed = math.prod(mesh_shape)
  if needed > len(devices):
    raise options.FlagError(
        f"--mesh={f.mesh} needs {needed} devices but only {len(devices)} "
        f"exist ({devices[0].platform}; on the CPU, --num_cpu_devices sets "
        "their number)."
    )
  if needed < len(devices) and jax.process_count() > 1:
    raise options.FlagError(
        f"--mesh={f.mesh} uses {needed} of the {len(devices)} devices; "
        "a multi-process run must use them all."
    )
  names = ("rows", "cols")[: len(mesh_shape)]
  mesh = jax.make_mesh(
      mesh_shape,
      names,
      axis_types=(jax.sharding.AxisType.Auto,) * len(names),
      devices=devices[:needed],
  )
  # ELL arrays are split by rows only (the validators refuse a column split;
  # a "cols" axis of size 1 just replicates).
  split = names[:1] if f.format == "ell" else names
  return mesh, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(*split)
  )
