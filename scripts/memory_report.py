r"""Per-device memory of sparse initializers, from the compiler's accounting.

For one matrix shape split by rows over `--num_cpu_devices` virtual CPU
devices, lowers and compiles (never runs) each initializer and reads
`compiled.memory_analysis()` of its per-device program: the output bytes, the
temporary bytes (everything XLA allocates besides arguments and outputs), and
peak / output = (temp + output) / output. The initializers:

- `seed`: the seed's `sparse_init` (`tests/seed_reference.py`), jitted with
  `out_shardings` as a user would shard it, and on one device;
- `jax.random.uniform`: the dense LeCun-uniform draw alone, the same ways;
- `alberta permutation` / `alberta counter`: `alberta.sharded_sparse_init` at
  several `chunk_rows` (`None` is the automatic choice; `unchunked` is the
  whole device tile in one piece), and `alberta.sparse_init` on one device.

Prints a markdown table and, with `--output`, writes it (with the command, the
date and the JAX version) to that file.

Example:

  python scripts/memory_report.py --output=/tmp/memory.md
"""

from __future__ import annotations

import datetime
import os
import pathlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags

# The repository root, so the script runs from a checkout without installing.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

# JAX is imported here, but its backend starts only in `main`, after
# `--num_cpu_devices` has been applied.
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from alberta._src import core  # noqa: E402
from alberta._src import sharding as sharding_lib  # noqa: E402
from alberta._src.spec import make_spec  # noqa: E402
from tests.seed_reference import seed_sparse_init  # noqa: E402

_SHAPE = flags.DEFINE_list("shape", ["16384", "2048"], "fan_out,fan_in.")
_SPARSITY = flags.DEFINE_float("sparsity", 0.9, "Fraction of zeros per row.",
                               lower_bound=0.0, upper_bound=1.0)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", 8, "Virtual CPU devices; rows are split over all of them.",
    lower_bound=1)
_CHUNKS = flags.DEFINE_list(
    "chunk_rows", ["None", "16", "64", "256", "unchunked"],
    "alberta chunk sizes: 'None' (automatic), positive ints, 'unchunked'.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the markdown table here.")


def _validate_chunks(values: Sequence[str]) -> bool:
  return all(v in ("None", "unchunked") or (v.isdigit() and int(v) > 0)
             for v in values)


flags.register_validator(
    "chunk_rows", _validate_chunks,
    message="--chunk_rows entries must be 'None', 'unchunked' or positive ints.")
flags.register_validator(
    "shape", lambda v: len(v) == 2 and all(d.isdigit() and int(d) > 0 for d in v),
    message="--shape must be two positive ints, fan_out,fan_in.")

_MIB = 2**20


def _use_cpu_devices(n: int) -> None:
  # An inherited --xla_force_host_platform_device_count (e.g. from the test
  # environment) would contradict jax_num_cpu_devices: ours wins.
  os.environ["XLA_FLAGS"] = re.sub(
      r"--xla_force_host_platform_device_count=\S*", "",
      os.environ.get("XLA_FLAGS", "")).strip()
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", n)


def _stats(fn: Callable[..., Any], *args: Any) -> dict[str, int]:
  """Per-device bytes of `fn`'s compiled program (compiled, never run)."""
  analysis = fn.lower(*args).compile().memory_analysis()
  return dict(output=analysis.output_size_in_bytes,
              temp=analysis.temp_size_in_bytes,
              argument=analysis.argument_size_in_bytes)


def measure(shape: tuple[int, int], sparsity: float, n_devices: int,
            chunks: Sequence[str]) -> list[dict[str, Any]]:
  """One row per (initializer, placement, chunk): per-device bytes."""
  key = jax.random.key(0)
  key_data = jax.random.key_data(key)
  mesh = jax.make_mesh((n_devices,), ("x",))
  rows = NamedSharding(mesh, P("x"))
  placement = f"rows over {n_devices} devices"
  scale = 1.0 / shape[1]**0.5
  table = []

  def add(name, where, chunk, stats):
    table.append(dict(initializer=name, placement=where, chunk_rows=chunk,
                      **stats))

  seed = lambda k: seed_sparse_init(k, shape, sparsity)  # noqa: E731
  uniform = lambda k: jax.random.uniform(  # noqa: E731
      k, shape, jnp.float32, -scale, scale)
  for name, fn in (("seed sparse_init", seed), ("jax.random.uniform", uniform)):
    add(name, placement, "-", _stats(jax.jit(fn, out_shardings=rows), key))
    add(name, "1 device", "-", _stats(jax.jit(fn), key))

  tile_rows = shape[0] // n_devices
  for method in ("permutation", "counter"):
    spec, _ = make_spec(shape, sparsity, "uniform", method, "nearest")
    for chunk in chunks:
      chunk_rows = (None if chunk == "None" else
                    tile_rows if chunk == "unchunked" else int(chunk))
      fn = sharding_lib._sharded_fn(spec, np.dtype(np.float32), rows, chunk_rows)
      add(f"alberta {method}", placement,
          chunk if chunk in ("None", "unchunked") else str(chunk_rows),
          _stats(fn, key_data))
    add(f"alberta {method}", "1 device (sparse_init)", "None",
        _stats(core._sparse_init_2d, key, spec, np.dtype(np.float32), None))
  return table


def to_markdown(table: Sequence[dict[str, Any]]) -> str:
  lines = [
      "| initializer | placement | chunk_rows | output MiB / device "
      "| temp MiB / device | peak / output |",
      "|---|---|---|---:|---:|---:|",
  ]
  for row in table:
    peak = (row["temp"] + row["output"]) / row["output"]
    lines.append(
        f"| {row['initializer']} | {row['placement']} | {row['chunk_rows']} "
        f"| {row['output'] / _MIB:.1f} | {row['temp'] / _MIB:.2f} | {peak:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _use_cpu_devices(_NUM_CPU_DEVICES.value)
  shape = tuple(int(d) for d in _SHAPE.value)
  if shape[0] % _NUM_CPU_DEVICES.value:
    raise app.UsageError(
        f"--shape fan_out={shape[0]} is not divisible by --num_cpu_devices="
        f"{_NUM_CPU_DEVICES.value}.")
  table = measure(shape, _SPARSITY.value, _NUM_CPU_DEVICES.value,
                  _CHUNKS.value)
  text = to_markdown(table)
  print(text)
  if _OUTPUT.value:
    command = " ".join(["python", "scripts/memory_report.py", *sys.argv[1:]])
    header = (
        f"Shape {shape[0]} x {shape[1]} float32, sparsity {_SPARSITY.value}, "
        f"{_NUM_CPU_DEVICES.value} virtual CPU devices; "
        f"`{command}`, {datetime.date.today().isoformat()}, "
        f"jax {jax.__version__}.\n\n")
    pathlib.Path(_OUTPUT.value).write_text(header + text)


if __name__ == "__main__":
  app.run(main)
