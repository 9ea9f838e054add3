"""The ratios the two methods are held to, from a benchmark's records.

Each ratio compares two methods' min (and median) times at one shape, one
device; `ell` is compared with the dense `counter` matrix at its own sparsity,
in time and in compiled memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# (numerator, denominator, how the ratio reads, target test, target text).
# The targets are the project's own goals for each method (the permutation
# method never slower than the reference it reproduces; the counter method far
# faster than it, and near `jax.random.uniform`'s cost): the benchmark reports
# each as met or missed and never fails on one.
SPECS = (
    (
        "reference",
        "permutation",
        "permutation speed-up over the reference (jitted), same numbers",
        lambda x: x >= 1,
        ">= 1",
    ),
    ("permutation", "counter", "counter speed-up over permutation", None, None),
    (
        "reference",
        "counter",
        "counter speed-up over the reference (jitted)",
        lambda x: x >= 20,
        ">= 20",
    ),
    (
        "torch_original",
        "counter",
        "counter speed-up over torch_original",
        lambda x: x > 1,
        "> 1",
    ),
    (
        "counter",
        "dense_uniform",
        "counter time / dense_uniform time",
        lambda x: x <= 1.5,
        "<= 1.5",
    ),
    (
        "counter",
        "fill",
        "counter time / fill time (bandwidth floor)",
        None,
        None,
    ),
)


def ratios(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Every ratio of `SPECS` and of `ell`, per shape in the records' order."""
  by = {}
  for r in records:
    # `ell` and its dense baselines at other sparsities are compared below.
    if (
        r["status"] == "ok"
        and r["devices"] == 1
        and r["method"] != "ell"
        and "role" not in r
    ):
      by[(r["method"], tuple(r["shape"]))] = r
  shapes = list(dict.fromkeys(tuple(r["shape"]) for r in records))
  out = []
  for shape in shapes:
    for num, den, what, test, target in SPECS:
      a, b = by.get((num, shape)), by.get((den, shape))
      if a is None or b is None:
        continue
      ratio = a["min_s"] / b["min_s"]
      out.append({
          "shape": list(shape),
          "numerator": num,
          "denominator": den,
          "what": what,
          "ratio_min": ratio,
          "ratio_median": a["median_s"] / b["median_s"],
          "target": target,
          "met": None if test is None else bool(test(ratio)),
      })
    out.extend(_ell_ratios(records, shape))
  return out


def _compiled_peak(r: dict[str, Any]) -> int | None:
  m = r["memory"]
  if "compiled_output_bytes" not in m:
    return None
  return m["compiled_output_bytes"] + m["compiled_temp_bytes"]


def _ell_ratios(
    records: Sequence[dict[str, Any]], shape: tuple[int, int]
) -> list[dict[str, Any]]:
  """`ell` against the dense `counter` matrix at the same sparsity."""
  dense = {
      r["sparsity"]: r
      for r in records
      if r["method"] == "counter"
      and r["status"] == "ok"
      and r["devices"] == 1
      and tuple(r["shape"]) == shape
  }
  out = []
  for r in records:
    if (
        r["method"] != "ell"
        or r["status"] != "ok"
        or tuple(r["shape"]) != shape
        or r["sparsity"] not in dense
    ):
      continue
    d = dense[r["sparsity"]]
    base = {
        "shape": list(shape),
        "numerator": "ell",
        "denominator": "counter",
        "sparsity": r["sparsity"],
        "target": None,
        "met": None,
    }
    out.append({
        **base,
        "what": f"ell time / dense counter time, s={r['sparsity']:g}",
        "ratio_min": r["min_s"] / d["min_s"],
        "ratio_median": r["median_s"] / d["median_s"],
    })
    if _compiled_peak(r) and _compiled_peak(d):
      ratio = _compiled_peak(r) / _compiled_peak(d)
      what = f"ell memory / dense counter memory, s={r['sparsity']:g}"
      out.append({
          **base,
          "what": what,
          "ratio_min": ratio,
          "ratio_median": ratio,
          "measure": "compiled output + temp bytes",
      })
  return out
