"""The benchmark's figure, from one run's records or merged `--json` runs."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

# `suite.METHOD_ALIASES`, without importing JAX: deprecated name -> name.
_METHOD_ALIASES = {"seed": "reference"}


def merged(
    paths: Sequence[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """Results and sharded results of several --json files, later ones winning.

  A later file's record replaces an earlier one's for the same method, shape,
  sparsity and device count. A method under a deprecated name (`seed`, see
  `suite.METHOD_ALIASES`) is read as its current one (`reference`).
  """
  by_part = {"results": {}, "sharded": {}}
  for path in paths:
    with open(path) as f:
      result = json.load(f)
    for part, by_key in by_part.items():
      for r in result[part]:
        r = {**r, "method": _METHOD_ALIASES.get(r["method"], r["method"])}
        by_key[
            (r["method"], tuple(r["shape"]), r.get("sparsity"), r["devices"])
        ] = r
  return list(by_part["results"].values()), list(by_part["sharded"].values())


def _label(r: dict[str, Any]) -> str:
  return r["method"] if r["method"] != "ell" else f"ell s={r['sparsity']:g}"


def plot(
    path: str,
    records: Sequence[dict[str, Any]],
    sharded: Sequence[dict[str, Any]],
    backend: str,
) -> None:
  """Writes the benchmark's figure to `path` (PNG).

  Panels: time per entry against matrix entries, log-log (o square, ^ tall,
  > wide); compiled peak / output per method and shape (bars) with the RSS
  delta / output (marks); with sharded records, time against devices on
  `backend`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ok = [r for r in records if r["status"] == "ok"]
  labels = list(dict.fromkeys(_label(r) for r in ok))

  n_panels = 3 if sharded else 2
  fig, axes = plt.subplots(1, n_panels, figsize=(6.5 * n_panels, 5.2))
  colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(labels)}

  ax = axes[0]
  for m in labels:
    rs = [r for r in ok if _label(r) == m]
    square = sorted(
        (r for r in rs if r["shape"][0] == r["shape"][1]),
        key=lambda r: math.prod(r["shape"]),
    )
    if square:
      ax.plot(
          [math.prod(r["shape"]) for r in square],
          [r["ns_per_entry_min"] for r in square],
          "o-",
          color=colors[m],
          label=m,
      )
    for r in rs:
      if r["shape"][0] == r["shape"][1]:
        continue
      marker = "^" if r["shape"][0] > r["shape"][1] else ">"
      ax.plot(
          [math.prod(r["shape"])],
          [r["ns_per_entry_min"]],
          marker,
          color=colors[m],
          markersize=8,
          label=None if square else m,
      )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("matrix entries (fan_out x fan_in)")
  ax.set_ylabel("time per entry, ns (min of runs)")
  ax.set_title("Time per entry (o square, ^ tall, > wide)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7, ncol=2, framealpha=0.6)

  ax = axes[1]
  shapes = sorted(
      {tuple(r["shape"]) for r in ok},
      key=lambda shape: (math.prod(shape), shape),
  )
  width = 0.8 / max(len(shapes), 1)
  for j, shape in enumerate(shapes):
    xs, compiled, rss = [], [], []
    for i, m in enumerate(labels):
      r = next(
          (r for r in ok if _label(r) == m and tuple(r["shape"]) == shape), None
      )
      if r is None:
        continue
      xs.append(i + (j - (len(shapes) - 1) / 2) * width)
      compiled.append(r["memory"].get("compiled_peak_over_output", np.nan))
      rss.append(r["memory"].get("rss_delta_over_output", np.nan))
    name = "x".join(map(str, shape))
    ax.bar(xs, compiled, width * 0.9, label=f"{name} compiled")
    ax.plot(
        xs,
        rss,
        "k_",
        markersize=10,
        label="process RSS delta" if j == 0 else None,
    )
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
    for shape in sorted(
        {tuple(r["shape"]) for r in sharded if r["status"] == "ok"},
        key=math.prod,
    ):
      for method in sorted({r["method"] for r in sharded}):
        rs = sorted(
            (
                r
                for r in sharded
                if r["status"] == "ok"
                and tuple(r["shape"]) == shape
                and r["method"] == method
            ),
            key=lambda r: r["devices"],
        )
        if rs:
          ax.plot(
              [r["devices"] for r in rs],
              [r["min_s"] for r in rs],
              "o-",
              label=f"{method} {'x'.join(map(str, shape))}",
          )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices")
    ax.set_ylabel("time, s (min of runs)")
    ax.set_title(f"Sharded ({backend}, {os.cpu_count()} cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)

  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
