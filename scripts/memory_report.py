r"""Per-device memory of sparse initializers, from the compiler's accounting.

For one `--shape=ROWS,COLS` split by rows over `--num_cpu_devices` virtual CPU
devices, lowers and compiles (never runs) each initializer and reads
`compiled.memory_analysis()` of its per-device program: the output bytes, the
temporary bytes (everything XLA allocates besides arguments and outputs), and
peak / output = (temp + output) / output. The initializers:

- `reference`: the reference implementation's `sparse_init`
  (`third_party/alberta_framework`, the code `permutation` reproduces), jitted
  with `out_shardings` as a user would shard it, and on one device;
- `jax.random.uniform`: the dense LeCun-uniform draw alone, the same ways;
- `alberta permutation` / `alberta counter`: `alberta.sharded_sparse_init` at
  several `chunk_rows` (`None` is the automatic choice; `unchunked` is the
  whole device tile in one piece), and `alberta.sparse_init` on one device,
  each inside `jax.jit` as a user would call them.

Prints the command that regenerates the table, the settings and the table as
Markdown (for docs/MEMORY.md); `--markdown=FILE` writes the same text there.

For example:

  python scripts/memory_report.py --shape=16384,2048 --markdown=/tmp/memory.md
"""

from __future__ import annotations

import datetime
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags

# The repository root, for `scripts.benchlib` and `third_party`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# JAX's backend starts only in `main`, after `--num_cpu_devices` is applied.
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import alberta  # noqa: E402
from scripts.benchlib import harness  # noqa: E402
from scripts.benchlib import report  # noqa: E402
from third_party import alberta_framework  # noqa: E402

_SHAPE = flags.DEFINE_string(
    "shape", "16384,2048", "Matrix shape ROWS,COLS (fan_out, fan_in)."
)
_SPARSITY = flags.DEFINE_float(
    "sparsity",
    0.9,
    "Fraction of zeros per row.",
    lower_bound=0.0,
    upper_bound=1.0,
)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices",
    8,
    "Virtual CPU devices; rows are split over all.",
    lower_bound=1,
)
_CHUNKS = flags.DEFINE_list(
    "chunk_rows",
    ["None", "16", "64", "256", "unchunked"],
    "alberta chunk sizes: 'None' (automatic), positive ints, 'unchunked'.",
)
_MARKDOWN = flags.DEFINE_string(
    "markdown", None, "Write the command, settings and table here."
)


flags.register_validator(
    "chunk_rows",
    lambda values: all(
        v in ("None", "unchunked") or (v.isdigit() and int(v) > 0)
        for v in values
    ),
    message=(
        "--chunk_rows entries must be 'None', 'unchunked' or positive ints."
    ),
)
flags.register_validator(
    "shape",
    lambda v: harness.all_valid(harness.parse_shape, [v]),
    message="--shape must be ROWS,COLS, positive ints.",
)


def _stats(fn: Callable[[Any], Any], key: Any, **jit_kwargs) -> dict[str, int]:
  """Per-device bytes of `jax.jit(fn)`'s program (compiled, never run)."""
  analysis = jax.jit(fn, **jit_kwargs).lower(key).compile().memory_analysis()
  return dict(
      output=analysis.output_size_in_bytes,
      temp=analysis.temp_size_in_bytes,
      argument=analysis.argument_size_in_bytes,
  )


def measure(
    shape: tuple[int, int],
    sparsity: float,
    n_devices: int,
    chunks: Sequence[str],
) -> list[dict[str, Any]]:
  """One row per (initializer, placement, chunk): per-device bytes."""
  key = jax.random.key(0)
  rows = NamedSharding(jax.make_mesh((n_devices,), ("x",)), P("x"))
  placement = f"rows over {n_devices} devices"
  scale = 1.0 / shape[1] ** 0.5
  table = []

  def add(name, where, chunk, stats):
    table.append(
        dict(initializer=name, placement=where, chunk_rows=chunk, **stats)
    )

  reference = lambda k: alberta_framework.sparse_init(  # noqa: E731
      k, shape, sparsity
  )
  uniform = lambda k: jax.random.uniform(  # noqa: E731
      k, shape, jnp.float32, -scale, scale
  )
  for name, fn in (
      ("reference sparse_init", reference),
      ("jax.random.uniform", uniform),
  ):
    add(name, placement, "-", _stats(fn, key, out_shardings=rows))
    add(name, "1 device", "-", _stats(fn, key))

  tile_rows = shape[0] // n_devices
  for method in ("permutation", "counter"):
    for chunk in chunks:
      chunk_rows = (
          None
          if chunk == "None"
          else tile_rows
          if chunk == "unchunked"
          else int(chunk)
      )

      def sharded(k, m=method, c=chunk_rows):
        return alberta.sharded_sparse_init(
            k, shape, sparsity, sharding=rows, method=m, chunk_rows=c
        )

      add(
          f"alberta {method}",
          placement,
          chunk if chunk in ("None", "unchunked") else str(chunk_rows),
          _stats(sharded, key),
      )
    add(
        f"alberta {method}",
        "1 device (sparse_init)",
        "None",
        _stats(
            lambda k, m=method: alberta.sparse_init(
                k, shape, sparsity, method=m
            ),
            key,
        ),
    )
  return table


def main(argv: Sequence[str]) -> None:
  """Prints the memory table (and writes it to `--markdown`)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  harness.use_cpu_devices(_NUM_CPU_DEVICES.value, cpu_only=True)
  shape = harness.parse_shape(_SHAPE.value)
  if shape[0] % _NUM_CPU_DEVICES.value:
    raise app.UsageError(
        f"--shape fan_out={shape[0]} is not divisible by --num_cpu_devices="
        f"{_NUM_CPU_DEVICES.value}."
    )
  table = measure(shape, _SPARSITY.value, _NUM_CPU_DEVICES.value, _CHUNKS.value)
  k = alberta.num_zeros(shape[1], _SPARSITY.value)
  lines = report.command_block(
      report.command_line("scripts/memory_report.py", sys.argv[1:])
  )
  lines += [
      (
          f"Shape {shape[0]} x {shape[1]} float32, sparsity "
          f"{_SPARSITY.value} (k = {k} zeros per row), "
          f"{_NUM_CPU_DEVICES.value} virtual CPU devices; "
          f"{datetime.date.today().isoformat()}, jax {jax.__version__}."
      ),
      "",
  ]
  lines += report.markdown_table(table, report.MEMORY_COLUMNS)
  text = "\n".join(lines) + "\n"
  print(text)
  if _MARKDOWN.value:
    pathlib.Path(_MARKDOWN.value).write_text(text)


if __name__ == "__main__":
  app.run(main)
