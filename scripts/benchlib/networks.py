"""Whole networks (`--cases=sparsify`): `alberta.sparsify` on a ResNet-50.

The parameter tree is Haiku's `hk.nets.ResNet50(1000)` (25.6M parameters, 54
kernels: 53 convolutions and the 2048 x 1000 logits layer), initialized on a
1 x 32 x 32 x 3 image: its parameters do not depend on the image size, and a
small image keeps the model's own forward pass (which `init` runs) from
dominating the comparison. Each measurement runs in a fresh process (JAX's
caches cold), `processes` times, the minimum kept; wall and process CPU time
both:

- `model_init`: the model's own `jax.jit(net.init)`, first call (trace,
  compile, run) and steady state (median of `repeats` calls);
- `sparsify`: `alberta.sparsify(key, params, 0.9, method=m)` on that tree,
  eagerly (one cached program per kernel shape) and as one `jax.jit`ted
  program, first call and steady state, both methods.

A child is this module run as `python -m scripts.benchlib.networks
--sparsify_child=<JSON task>` from the repository root; the module imports
only the standard library (and `layer`, which imports no JAX) at module level.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from scripts.benchlib import layer
from scripts.benchlib import report

CASES = ("sparsify",)
METHODS = ("permutation", "counter")
CHILD_FLAG = "--sparsify_child="
SPARSITY = 0.9
_ROOT = pathlib.Path(__file__).resolve().parents[2]
_IMAGE = (1, 32, 32, 3)


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the network cases are measured."""

  processes: int = 3  # Fresh processes per measurement; the minimum is kept.
  repeats: int = 5  # Steady-state calls (median).


def _resnet50():
  """`(net, key, image)`: Haiku's ResNet-50 transform and its inputs."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  net = hk.transform_with_state(
      lambda x: hk.nets.ResNet50(1000)(x, is_training=True)
  )
  return net, jax.random.key(0), jnp.ones(_IMAGE)


def _kernels(params: Any) -> list[Any]:
  """The ResNet's kernels (Haiku's `w`), the leaves `sparsify` replaces."""
  import jax  # pylint: disable=g-import-not-at-top

  return [
      leaf
      for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
      if getattr(path[-1], "key", None) == "w"
  ]


def _first_and_steady(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top

  start = layer._clock()  # pylint: disable=protected-access
  jax.block_until_ready(fn())
  first = layer._since(start)  # pylint: disable=protected-access
  steady = layer._steady(fn, repeats)  # pylint: disable=protected-access
  return {"first": first, "steady": steady}


def run_task(task: dict[str, Any]) -> dict[str, Any]:
  """One measurement, in this (fresh) process."""
  preloaded = "jax" in sys.modules
  net, key, image = _resnet50()
  import jax  # pylint: disable=g-import-not-at-top

  init = jax.jit(net.init)
  if task["case"] == "model_init":
    out = _first_and_steady(lambda: init(key, image), task["repeats"])
  elif task["case"] == "sparsify":
    import alberta  # pylint: disable=g-import-not-at-top

    params, _ = jax.block_until_ready(init(key, image))
    method = task["method"]

    def sparsify(k, p):
      return alberta.sparsify(k, p, SPARSITY, method=method)

    if task["jit"]:
      sparsify = jax.jit(sparsify)
    out = _first_and_steady(lambda: sparsify(key, params), task["repeats"])
    kernels = _kernels(sparsify(key, params))
    out["kernels"] = len(kernels)
    out["kernel_zero_fraction"] = float(
        sum((w == 0).sum() for w in kernels) / sum(w.size for w in kernels)
    )
  else:
    raise ValueError(f"unknown sparsify case {task['case']!r} in {task}")
  params, _ = init(key, image)
  out["parameters"] = int(sum(x.size for x in jax.tree.leaves(params)))
  out["jax_preloaded"] = preloaded
  return out


def spawn() -> Callable[[dict[str, Any]], dict[str, Any]]:
  """Runs a task in a fresh process, from the repository root."""

  def run(task: dict[str, Any]) -> dict[str, Any]:
    env = layer.child_env()
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_ROOT), env.get("PYTHONPATH")) if p
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.benchlib.networks",
            CHILD_FLAG + json.dumps(task),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=_ROOT,
        check=False,
    )
    if proc.returncode:
      raise RuntimeError(
          f"sparsify child {task} failed:\n{proc.stderr[-4000:]}"
      )
    return json.loads(proc.stdout.strip().splitlines()[-1])

  return run


def tasks(settings: Settings) -> list[dict[str, Any]]:
  """Every measurement, as child tasks, in the report's order."""
  out = [{"case": "model_init", "repeats": settings.repeats}]
  out += [
      {"case": "sparsify", "method": m, "jit": j, "repeats": settings.repeats}
      for m in METHODS
      for j in (False, True)
  ]
  return out


def measure(
    cases: Sequence[str],
    settings: Settings,
    run: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
  """`tasks`, each run `settings.processes` times, minimum kept.

  Returns [] without "sparsify" in `cases`.
  """
  if "sparsify" not in cases:
    return []
  return layer.measure_tasks(
      tasks(settings), settings.processes, run or spawn(), log, what="sparsify"
  )


def rows(records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
  """The table's rows (`report.LAYER_COLUMNS`), ratios to the model's init."""
  by = {
      (r["task"]["case"], r["task"].get("method"), r["task"].get("jit")): r[
          "result"
      ]
      for r in records
  }
  model = by.get(("model_init", None, None))
  if model is None:
    return []
  out = [
      {
          "measurement": "ResNet-50 jit(net.init), first call, wall s",
          "value": f"{model['first']['wall']:.3g}",
          "ratio": "",
      },
      {
          "measurement": "ResNet-50 jit(net.init), first call, cpu s",
          "value": f"{model['first']['cpu']:.3g}",
          "ratio": "",
      },
      {
          "measurement": "ResNet-50 jit(net.init), steady, s",
          "value": f"{model['steady']:.3g}",
          "ratio": "",
      },
  ]
  for method in METHODS:
    for jit in (False, True):
      res = by.get(("sparsify", method, jit))
      if res is None:
        continue
      what = f"{'jit(sparsify)' if jit else 'sparsify'} {method}"
      for label, value, base in (
          ("first call, wall s", res["first"]["wall"], model["first"]["wall"]),
          ("first call, cpu s", res["first"]["cpu"], model["first"]["cpu"]),
          ("steady, s", res["steady"], model["steady"]),
      ):
        out.append({
            "measurement": f"{what}: {label}",
            "value": f"{value:.3g}",
            "ratio": f"{value / base:.2f}x the model's init",
        })
  return out


def intro(records: Sequence[dict[str, Any]], processes: int) -> str:
  """What the table shows."""
  sizes = next(
      (r["result"] for r in records if r["task"]["case"] == "sparsify"), None
  )
  what = ""
  if sizes:
    zero = 100 * sizes["kernel_zero_fraction"]
    what = (
        f" ({sizes['parameters'] / 1e6:.1f}M parameters, "
        f"{sizes['kernels']} kernels, {zero:.1f}% of their weights zero "
        "after sparsify)"
    )
  return (
      f"`alberta.sparsify(key, params, {SPARSITY})` on Haiku's ResNet-50"
      f"{what}, against the model's own `jax.jit(net.init)` on a "
      f"{'x'.join(map(str, _IMAGE))} image; each figure the minimum over "
      f"{processes} fresh process{'es' if processes != 1 else ''}"
  )


def summary(records: Sequence[dict[str, Any]], processes: int) -> str:
  """The table for the terminal."""
  return "\n".join([
      "",
      f"{intro(records, processes)}:",
      report.table(rows(records), report.LAYER_COLUMNS),
  ])


def markdown(
    records: Sequence[dict[str, Any]], env: dict[str, Any], processes: int
) -> str:
  """The table for docs/, after the command that regenerates it; "" if none."""
  if not records:
    return ""
  lines = [
      "",
      f"{intro(records, processes)}, from the same command:",
      "",
      *report.command_block(env["command"]),
      *report.markdown_table(rows(records), report.LAYER_COLUMNS),
  ]
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
  """Runs the task of a `CHILD_FLAG` argument and prints its result as JSON."""
  for arg in argv[1:]:
    if arg.startswith(CHILD_FLAG):
      print(json.dumps(run_task(json.loads(arg[len(CHILD_FLAG) :]))))
      return
  raise SystemExit(
      f"usage: python -m scripts.benchlib.networks {CHILD_FLAG}<JSON task>"
  )


if __name__ == "__main__":
  main(sys.argv)
