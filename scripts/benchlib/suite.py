"""The benchmark's methods and what it runs at each shape.

Every JAX method is compiled ahead of time and timed by `harness.time_jax`;
the torch methods by `harness.time_runs`. The reference code (the reference
implementation's `sparse_init`, which `permutation` reproduces, and Elsayed et
al.'s PyTorch original) comes from `third_party/alberta_framework`.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import alberta
from scripts.benchlib import harness
from third_party.alberta_framework import sparse_init as reference_sparse_init
from third_party.alberta_framework import torch_sparse_init

ALL_METHODS = (
    "fill",
    "dense_uniform",
    "counter",
    "permutation",
    "reference",
    "torch_dense",
    "torch_original",
    "ell",
)
JAX_METHODS = ("fill", "dense_uniform", "counter", "permutation", "reference")
# Deprecated `--methods` spellings, accepted for one release: old -> new.
METHOD_ALIASES = {"seed": "reference"}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every method runs with (the benchmark's flags)."""

  key: Any
  sparsity: float = 0.9
  ell_sparsities: tuple[float, ...] = (0.9, 0.99)
  sharded_methods: tuple[str, ...] = ("counter",)  # Empty: no sharded runs.
  check_reference: bool = True
  torch_seed: int = 0
  repeats: harness.Repeats = harness.Repeats()


def jax_method(name: str, shape: tuple[int, int], sparsity: float):
  """The function of a key that JAX method `name` times."""
  scale = 1.0 / math.sqrt(shape[1])
  if name == "fill":
    # The constant comes from the key so that XLA cannot fold the output.
    return lambda k: jnp.full(
        shape, jax.random.key_data(k).ravel()[0].astype(jnp.float32)
    )
  if name == "dense_uniform":
    return lambda k: jax.random.uniform(k, shape, jnp.float32, -scale, scale)
  if name == "reference":
    return lambda k: reference_sparse_init(k, shape, sparsity)
  return lambda k: alberta.sparse_init(k, shape, sparsity, method=name)


def _torch_run(
    name: str, shape: tuple[int, int], sparsity: float, seed: int
) -> Callable[[], Any]:
  """The call that torch method `name` times (torch seeded with `seed`)."""
  # torch is optional: imported only once the caller found it importable.
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  if name == "torch_dense":
    scale = 1.0 / math.sqrt(shape[1])
    return lambda: torch.empty(shape, dtype=torch.float32).uniform_(
        -scale, scale
    )
  return lambda: torch_sparse_init(
      torch.empty(shape, dtype=torch.float32), sparsity
  )


def reference_check_small(key: Any, sparsity: float) -> dict[str, Any]:
  """The eager reference, as its users call it, against `permutation`, bitwise.

  Under `jax.jit` XLA turns the reference's `weights * mask` into a select
  writing +0.0 where the eager reference (and alberta) write -0.0, so the
  timed, jitted runs are compared up to the sign of zero and these eager ones
  bit for bit.
  """
  results = [
      {
          "shape": list(shape),
          **harness.compare(
              reference_sparse_init(key, shape, sparsity),
              alberta.sparse_init(key, shape, sparsity, method="permutation"),
          ),
      }
      for shape in ((64, 100), (37, 1000))
  ]
  return {
      "what": "eager reference vs permutation, bitwise",
      "eager_small": results,
      "passed": all(r["bitwise_equal"] for r in results),
  }


def bench_shapes(
    shapes: Sequence[tuple[int, int]],
    methods: Sequence[str],
    counts: Sequence[int],
    settings: Settings,
    probe: harness.RssProbe,
    torch_skipped: str | None,
    checks: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """`methods` (`bench_shape`), then sharded on `counts`, at each shape.

  `torch_skipped` is why the torch methods are skipped, or None if torch
  imports and they are timed.

  Returns the records and the sharded records; either part may be empty (no
  methods, no counts). Each sharded result is checked against the one-device
  result of the same method, when that method was among `methods`.
  """
  records, sharded = [], []
  for shape in shapes:
    shape_records, kept = bench_shape(
        shape, methods, settings, probe, torch_skipped, checks
    )
    records.extend(shape_records)
    if counts:
      sharded.extend(bench_sharded(shape, settings, probe, counts, kept))
    del kept
    gc.collect()
  return records, sharded


def bench_shape(
    shape: tuple[int, int],
    methods: Sequence[str],
    settings: Settings,
    probe: harness.RssProbe,
    torch_skipped: str | None,
    checks: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Every method at one shape: records, and the outputs kept for checks.

  The torch methods are timed when `torch_skipped` is None, else recorded as
  skipped for that reason.

  Appends the jitted reference's agreement with `permutation` to `checks`.
  """
  sparsity, key, repeats = settings.sparsity, settings.key, settings.repeats
  records, kept = [], {}
  keep = set(settings.sharded_methods)
  if settings.check_reference and {"reference", "permutation"} <= set(methods):
    keep.add("permutation")
  if "ell" in methods:
    keep.add("counter")
  for name in methods:
    print(f"  {name} {shape[0]}x{shape[1]} ...", flush=True)
    dense = name in ("fill", "dense_uniform", "torch_dense")
    extra = {"sparsity": None if dense else sparsity}
    if name in JAX_METHODS:
      record, out = harness.time_jax(
          name,
          jax_method(name, shape, sparsity),
          key,
          shape,
          probe,
          repeats,
          keep_output=name in keep or name == "reference",
          **extra,
      )
      if name == "reference" and "permutation" in kept:
        check = {
            "shape": list(shape),
            "against": "permutation",
            "reference": "jitted",
            **harness.compare(out, kept["permutation"]),
        }
        checks.append({**check, "passed": check["equal_up_to_zero_sign"]})
      elif out is not None and name != "reference":
        kept[name] = out
      del out
      records.append(record)
    elif name == "ell":
      records.extend(_bench_ell(shape, settings, probe, kept.get("counter")))
    elif torch_skipped is not None:
      records.append(harness.skipped(name, shape, torch_skipped, **extra))
    else:
      timing, _ = harness.time_runs(
          _torch_run(name, shape, sparsity, settings.torch_seed), probe, repeats
      )
      records.append(
          harness.summarize(
              {
                  "method": name,
                  "shape": list(shape),
                  "devices": 1,
                  "status": "ok",
                  "compile_s": 0.0,
                  **extra,
                  **timing,
              },
              math.prod(shape),
          )
      )
    gc.collect()
  return records, kept


def _bench_ell(
    shape: tuple[int, int],
    settings: Settings,
    probe: harness.RssProbe,
    counter_out: Any,
) -> list[dict[str, Any]]:
  """`alberta.sparse_init_ell` against dense `counter`, per sparsity.

  Each ELL result is scattered back (`alberta.to_dense`) and compared with the
  dense counter matrix of its sparsity, up to the sign of zero (ELL's are +0).
  """
  key, repeats, records = settings.key, settings.repeats, []
  for s in settings.ell_sparsities:
    record, ell = harness.time_jax(
        "ell",
        lambda k, s=s: alberta.sparse_init_ell(k, shape, s, method="counter"),
        key,
        shape,
        probe,
        repeats,
        keep_output=True,
        sparsity=s,
    )
    records.append(record)
    dense = counter_out if s == settings.sparsity else None
    if dense is None:
      baseline, dense = harness.time_jax(
          "counter",
          lambda k, s=s: alberta.sparse_init(k, shape, s, method="counter"),
          key,
          shape,
          probe,
          repeats,
          keep_output=True,
          sparsity=s,
          role="ell_baseline",
      )
      records.append(baseline)
    record["matches_dense_counter"] = harness.compare(
        alberta.to_dense(*ell, shape), dense
    )["equal_up_to_zero_sign"]
    del ell, dense
  return records


def bench_sharded(
    shape: tuple[int, int],
    settings: Settings,
    probe: harness.RssProbe,
    counts: Sequence[int],
    kept: dict[str, Any],
) -> list[dict[str, Any]]:
  """`alberta.sharded_sparse_init`, rows over each count of devices.

  Each result is compared bit for bit with the one-device output in `kept`.
  """
  key, repeats, sparsity, records = (
      settings.key,
      settings.repeats,
      settings.sparsity,
      [],
  )
  for method in settings.sharded_methods:
    for n in counts:
      extra = {"sparsity": sparsity, "devices": n}
      if shape[0] % n:
        records.append(
            harness.skipped(
                method, shape, f"fan_out not divisible by {n}", **extra
            )
        )
        continue
      print(
          f"  sharded {method} {shape[0]}x{shape[1]} on {n} devices ...",
          flush=True,
      )
      sharding = jax.sharding.NamedSharding(
          jax.sharding.Mesh(np.array(jax.devices()[:n]), ("rows",)),
          jax.sharding.PartitionSpec("rows", None),
      )
      fn = lambda k, sh=sharding, m=method: alberta.sharded_sparse_init(
          k, shape, sparsity, sharding=sh, method=m
      )
      record, out = harness.time_jax(
          method,
          fn,
          key,
          shape,
          probe,
          repeats,
          keep_output=method in kept,
          **extra,
      )
      if method in kept:
        record["matches_single_device"] = harness.compare(out, kept[method])[
            "bitwise_equal"
        ]
      del out
      records.append(record)
  return records
