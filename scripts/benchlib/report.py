"""Reporting: the tables as text and as Markdown, from one column list.

A benchmark record (`harness.time_jax`, `harness.skipped`) is a dict with
`method`, `shape`, `devices`, `status` and, when timed, the times, bytes and
`memory` figures. `COLUMNS` says once how each column reads; `table` renders
them fixed-width for the terminal and `markdown_table` for docs/.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from collections.abc import Callable, Sequence
from typing import Any

_MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Column:
  """One column: its headers, width, formats and value (None: missing).

  `markdown=None` keeps the column out of the Markdown table; `md_format`
  defaults to `format`. A missing value reads `-` in text, empty in Markdown.
  Text is right-aligned unless `text_left`; Markdown unless `md_left`.
  """

  text: str
  width: int
  markdown: str | None
  value: Callable[[dict[str, Any]], Any]
  format: str = ""
  md_format: str | None = None
  text_left: bool = False
  md_left: bool = False

  def cell(self, record: dict[str, Any], markdown: bool) -> str:
    """The column's cell for `record`, formatted for Markdown or for text."""
    value = self.value(record)
    if value is None:
      return "" if markdown else "-"
    if markdown and self.md_format is not None:
      return format(value, self.md_format)
    return format(value, self.format)


def _shape(r: dict[str, Any]) -> str:
  return "x".join(map(str, r["shape"]))


def _mib(value: Any) -> float | None:
  return None if value is None else value / _MIB


# The first four identify a record, and are the only ones a skipped one has.
COLUMNS = (
    Column(
        "method",
        15,
        "method",
        lambda r: r["method"],
        text_left=True,
        md_left=True,
    ),
    Column("shape", 12, "shape", _shape, md_left=True),
    Column("dev", 3, "devices", lambda r: r["devices"]),
    Column("sparsity", 8, "sparsity", lambda r: r.get("sparsity"), "g"),
    Column("min s", 9, "min s", lambda r: r["min_s"], ".4f"),
    Column("median s", 9, "median s", lambda r: r["median_s"], ".4f"),
    Column(
        "ns/entry", 9, "ns/entry", lambda r: r["ns_per_entry_min"], ".3f", ".2f"
    ),
    Column("GB/s", 7, "output GB/s", lambda r: r["output_gb_per_s"], ".2f"),
    Column("out MB", 8, None, lambda r: _mib(r["output_bytes"]), ".1f"),
    Column(
        "temp MB",
        8,
        None,
        lambda r: _mib(r["memory"].get("compiled_temp_bytes")),
        ".1f",
    ),
    Column(
        "peak/out",
        8,
        "compiled (out+temp)/out",
        lambda r: r["memory"].get("compiled_peak_over_output"),
        ".3f",
    ),
    Column(
        "rss MB",
        8,
        None,
        lambda r: _mib(r["memory"].get("rss_peak_delta_bytes")),
        ".1f",
    ),
    Column(
        "rss/out",
        7,
        "RSS delta/out",
        lambda r: r["memory"].get("rss_delta_over_output"),
        ".2f",
    ),
    Column("runs", 4, "runs", lambda r: len(r["times_s"])),
)
_KEY_COLUMNS = 4


def _pad(text: str, column: Column) -> str:
  return (
      text.ljust(column.width) if column.text_left else text.rjust(column.width)
  )


def table(
    records: Sequence[dict[str, Any]], columns: Sequence[Column] = COLUMNS
) -> str:
  """The records as a fixed-width text table (memory in MB as well)."""
  header = " ".join(_pad(c.text, c) for c in columns)
  lines = [header, "-" * len(header)]
  for r in records:
    ok = r.get("status", "ok") == "ok"
    line = " ".join(
        _pad(c.cell(r, markdown=False), c)
        for c in (columns if ok else columns[:_KEY_COLUMNS])
    )
    if not ok:
      line += f" {r['status']}: {r.get('reason', '')}"
    lines.append(line)
  return "\n".join(lines)


def markdown_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[Column] = COLUMNS
) -> list[str]:
  """The rows as the lines of a Markdown table (only `columns.markdown`).

  A row whose `status` is not "ok" (a skipped method) fills the first four
  columns, then says its status and reason.
  """
  columns = [c for c in columns if c.markdown is not None]
  lines = [
      "| " + " | ".join(c.markdown for c in columns) + " |",
      "|" + "".join("---|" if c.md_left else "---:|" for c in columns),
  ]
  for r in rows:
    if r.get("status", "ok") == "ok":
      lines.append(
          "| " + " | ".join(c.cell(r, markdown=True) for c in columns) + " |"
      )
      continue
    cells = [c.cell(r, markdown=True) for c in columns[:_KEY_COLUMNS]]
    cells.append(f"{r['status']}: {r.get('reason', '')}")
    lines.append(
        "| " + " | ".join(cells) + " |" + " |" * (len(columns) - len(cells))
    )
  return lines


def ratio_table(ratios: Sequence[dict[str, Any]]) -> str:
  """`ratios.ratios` as text lines, each with its target's verdict."""
  lines = []
  for r in ratios:
    verdict = (
        ""
        if r["met"] is None
        else f"target {r['target']}: {'MET' if r['met'] else 'MISSED'}"
    )
    lines.append(
        f"{_shape(r):>12}  {r['what']:<44} {r['ratio_min']:>8.2f}x "
        f"(median {r['ratio_median']:.2f}x)  {verdict}"
    )
  return "\n".join(lines)


def _ratio_markdown(ratios: Sequence[dict[str, Any]]) -> list[str]:
  lines = [
      "| shape | ratio | min times | median times | target |",
      "|---|---|---:|---:|---|",
  ]
  for r in ratios:
    verdict = (
        ""
        if r["met"] is None
        else f"{r['target']}: {'met' if r['met'] else '**missed**'}"
    )
    lines.append(
        f"| {_shape(r)} | {r['what']} | {r['ratio_min']:.2f}x | "
        f"{r['ratio_median']:.2f}x | {verdict} |"
    )
  return lines


# The headline (docs/PERFORMANCE.md and the README show it as generated).
HEADLINE_HEADER = (
    "| shape | `permutation` (reference-exact, default) | the reference, "
    "jitted | reference / `permutation` | `counter` | `jax.random.uniform` | "
    "`counter` / `jax.random.uniform` |"
)


def _digits3(value: float) -> str:
  """At least three significant digits, no exponent: 0.170, 1.00, 123, 1234."""
  if value <= 0:
    return f"{value:.2f}"
  return f"{value:.{max(0, 2 - math.floor(math.log10(value)))}f}"


def _duration(seconds: float) -> str:
  return (
      f"{_digits3(seconds * 1e3)} ms"
      if seconds < 0.1
      else f"{_digits3(seconds)} s"
  )


def headline_markdown(records: Sequence[dict[str, Any]]) -> list[str]:
  """Both methods against the reference and `jax.random.uniform`, per shape.

  One device, minimum times; a shape lacking any of the four is left out.
  """
  by = {
      (r["method"], tuple(r["shape"])): r["min_s"]
      for r in records
      if r["status"] == "ok"
      and r["devices"] == 1
      and r["method"] != "ell"
      and "role" not in r
  }
  lines = [HEADLINE_HEADER, "|---|---:|---:|---:|---:|---:|---:|"]
  for shape in dict.fromkeys(tuple(r["shape"]) for r in records):
    times = [
        by.get((m, shape))
        for m in ("permutation", "reference", "counter", "dense_uniform")
    ]
    if None in times:
      continue
    perm, reference, counter, uniform = times
    speed_up = reference / perm
    lines.append(
        f"| {shape[0]} x {shape[1]} | {_duration(perm)} | "
        f"{_duration(reference)} | "
        f"**{speed_up:.{0 if round(speed_up, 1) >= 10 else 1}f}x** | "
        f"{_duration(counter)} | {_duration(uniform)} | "
        f"{counter / uniform:.2f}x |"
    )
  return lines if len(lines) > 2 else []


def run_markdown(
    env: dict[str, Any],
    records: Sequence[dict[str, Any]],
    sharded: Sequence[dict[str, Any]],
    ratios: Sequence[dict[str, Any]],
    reference_passed: bool | None,
    layer_rows: Sequence[dict[str, Any]] = (),
    processes: int = 1,
    sections: Sequence[tuple[str, Sequence[dict[str, Any]]]] = (),
) -> str:
  """A benchmark run for docs/: machine, the command, then every table.

  The everyday-path table (`layer_rows`) and each further `(intro, rows)`
  section (`LAYER_COLUMNS` rows) repeat the command above them, so that each
  part pasted on its own still names what regenerates it.
  """
  lines = [
      (
          f"Measured {env['date_utc']} on {env['cpu_model']} "
          f"({env['cpus_usable']} cores usable, "
          f"{(env['mem_total_bytes'] or 0) / 2**30:.0f} GiB), "
          f"{env['platform']}; Python {env['python']}, JAX {env['jax']} "
          f"({env['backend']}, {env['num_devices']} devices), "
          f"torch {env['torch']} ({env['torch_threads']} threads); "
          f"load average {env['loadavg_start'][0]:.2f} at start, "
          f"{env['loadavg_end'][0]:.2f} at end; commit {env['git_commit']}."
      ),
      "",
      *command_block(env["command"]),
  ]
  headline = headline_markdown(records)
  if headline:
    lines += [
        "Headline: float32, one device, minimum times:",
        "",
        *headline,
        "",
        "Every method and shape:",
        "",
    ]
  if records:
    lines += markdown_table(records)
  if sharded:
    lines += [
        "",
        (
            "Sharded, from the same command "
            "(`alberta.sharded_sparse_init`, rows split over devices; "
            "compiled memory per device):"
        ),
        "",
    ]
    lines += markdown_table(sharded)
  if ratios:
    lines += [
        "",
        "Ratios, from the same command's min times (and medians):",
        "",
    ]
    lines += _ratio_markdown(ratios)
  if reference_passed is not None:
    lines += [
        "",
        (
            "reference vs permutation check: "
            f"{'passed' if reference_passed else 'FAILED'}."
        ),
    ]
  if layer_rows:
    if records or sharded:
      lines += [
          "",
          f"{layer_intro(processes)}, from the same command:",
          "",
          *command_block(env["command"]),
      ]
    lines += markdown_table(layer_rows, LAYER_COLUMNS)
  for intro, rows in sections:
    lines += [
        "",
        f"{intro}, from the same command:",
        "",
        *command_block(env["command"]),
        *markdown_table(rows, LAYER_COLUMNS),
    ]
  return "\n".join(lines) + "\n"


def summary(
    records: Sequence[dict[str, Any]],
    sharded: Sequence[dict[str, Any]],
    ratios: Sequence[dict[str, Any]],
    checks: Sequence[dict[str, Any]],
    layer_rows: Sequence[dict[str, Any]] = (),
    processes: int = 1,
    sections: Sequence[tuple[str, Sequence[dict[str, Any]]]] = (),
) -> str:
  """A benchmark run for the terminal: tables, ratios, agreement checks."""
  out = ["", table(records)] if records else []
  if sharded:
    out += [
        "",
        (
            "Sharded (alberta.sharded_sparse_init, rows split over "
            "devices; memory per device):"
        ),
        table(sharded),
    ]
  if ratios:
    out += [
        "",
        (
            "Ratios (min times); each target is one of this project's own "
            "performance goals (docs/PERFORMANCE.md), reported as met or "
            "missed, never an error:"
        ),
        ratio_table(ratios),
    ]
  if layer_rows:
    out += ["", f"{layer_intro(processes)}:", table(layer_rows, LAYER_COLUMNS)]
  for intro, rows in sections:
    out += ["", f"{intro}:", table(rows, LAYER_COLUMNS)]
  if checks:
    out += ["", "reference vs permutation:"]
    out += [f"  {json.dumps(c)}" for c in checks]
    passed = all(c["passed"] for c in checks)
    out.append(f"  => {'PASSED' if passed else 'FAILED'}")
  for what, key, rs, blank in (
      (
          "ell scattered == dense counter (up to zero sign)",
          "matches_dense_counter",
          records,
          [""],
      ),
      (
          "sharded == one device, bit for bit",
          "matches_single_device",
          sharded,
          [],
      ),
  ):
    results = [r[key] for r in rs if key in r]
    if results:
      out += blank + [
          f"{what}: {'PASSED' if all(results) else 'FAILED'} "
          f"({len(results)} checks)"
      ]
  return "\n".join(out)


def command_line(script: str, args: Sequence[str]) -> str:
  """The command, run from the repository root, that reproduces a run."""
  return shlex.join(["python", script, *args])


def command_block(command: str) -> list[str]:
  """A Markdown paragraph naming the command, then the command fenced."""
  return ["Command:", "", "```", command, "```", ""]


# The everyday path (`layer.rows`): one figure a row, its ratio beside it.
def layer_intro(processes: int) -> str:
  """What the everyday-path table shows (`processes` fresh ones per figure)."""
  return (
      "The everyday path (import, a small Haiku MLP, its compilation "
      "cache, chunking, cores), "
      f"each figure the minimum over {processes} fresh "
      f"process{'es' if processes != 1 else ''}"
  )


def wide_intro(processes: int) -> str:
  """What the wide-MLP table shows (`processes` fresh ones per figure)."""
  return (
      "Wide layers (a 3-layer Haiku MLP, input and every layer of one "
      "width), each figure the minimum over "
      f"{processes} fresh process{'es' if processes != 1 else ''} "
      "(the reference's: one)"
  )


LAYER_COLUMNS = (
    Column(
        "measurement",
        62,
        "measurement",
        lambda r: r["measurement"],
        text_left=True,
        md_left=True,
    ),
    Column("value", 15, "value", lambda r: r["value"]),
    Column(
        "ratio", 1, "ratio", lambda r: r["ratio"], text_left=True, md_left=True
    ),
)

# scripts/memory_report.py's rows: per-device bytes of one compiled program.
MEMORY_COLUMNS = (
    Column(
        "initializer",
        20,
        "initializer",
        lambda r: r["initializer"],
        text_left=True,
        md_left=True,
    ),
    Column(
        "placement",
        24,
        "placement",
        lambda r: r["placement"],
        text_left=True,
        md_left=True,
    ),
    Column(
        "chunk_rows",
        10,
        "chunk_rows",
        lambda r: r["chunk_rows"],
        text_left=True,
        md_left=True,
    ),
    Column(
        "out MiB", 8, "output MiB / device", lambda r: r["output"] / _MIB, ".1f"
    ),
    Column(
        "temp MiB", 8, "temp MiB / device", lambda r: r["temp"] / _MIB, ".2f"
    ),
    Column(
        "peak/out",
        8,
        "peak / output",
        lambda r: (r["temp"] + r["output"]) / r["output"],
        ".2f",
    ),
)
