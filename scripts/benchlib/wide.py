"""Wide layers: a 3-layer Haiku MLP of width 1024 to 4096 (`--cases=wide`).

The MLP's input and each of its three layers have the same width, so every
layer is a `width x width` matrix. For each width, each initializer's first
call of `jax.jit(net.init)`, split into its stages (trace, lowering, XLA
compile, the first run), and its steady state, each in a fresh process (the
minimum over `processes` of them; the reference's one, its calls take
seconds):

- `haiku_default`: Haiku's own initializer (a truncated normal);
- `sparse_permutation`, `sparse_counter`: `alberta.SparseInit(0.9)`, each
  method;
- `reference`: the reference implementation's `sparse_init`
  (`third_party/alberta_framework`) as `w_init`, traced into the same jitted
  init;
- `floor`: what the reference's construction cannot do without, in one jitted
  program: for every layer, `1 + rounds` Threefry passes over the layer
  (`rounds = shuffle.num_rounds(width)`, `alberta._src.shuffle`): the weights'
  bits and each shuffle round's sort bits, every one of which needs all of a
  row.

The targets: the default method's first call within 1.5x Haiku's at every
width, its steady state within 2.5x at 1024 and 3.5x at 2048 and 4096.

The parent runs each task through the benchmark script's `--layer_child`
(`layer.spawn`); like `layer`, this module imports only the standard library
at module level.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

CASES = ("wide",)
INITS = (
    "haiku_default",
    "sparse_permutation",
    "sparse_counter",
    "reference",
    "floor",
)
# First-call and steady-state targets of the default method, against Haiku's
# default (`width -> (first, steady)`).
TARGETS = {1024: (1.5, 2.5), 2048: (1.5, 3.5), 4096: (1.5, 3.5)}
_STEADY_CALLS = 5  # After the first call; 2 where the first took over 1 s.


@dataclasses.dataclass(frozen=True)
class Settings:
  """The wide cases' widths and repetitions (the benchmark's flags)."""

  widths: tuple[int, ...] = (1024, 2048, 4096)
  processes: int = 3  # Fresh processes per figure (the reference: 1).


def _clock() -> tuple[float, float]:
  return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
  wall, cpu = _clock()
  return {"wall": wall - start[0], "cpu": cpu - start[1]}


def _w_init(name: str) -> Any:
  """The `w_init` of the MLP's layers (None: Haiku's default)."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import alberta  # pylint: disable=g-import-not-at-top

  if name.startswith("sparse_"):
    return alberta.SparseInit(0.9, method=name[len("sparse_") :])
  if name == "reference":
    from third_party.alberta_framework import initializers  # pylint: disable=g-import-not-at-top

    def reference_init(shape, dtype):
      del dtype  # float32, as the reference draws.
      # Haiku's kernel is (in, out); the reference's matrix (fan_out, fan_in).
      return initializers.sparse_init(
          hk.next_rng_key(), (shape[1], shape[0]), 0.9
      ).T

    return reference_init
  return None


def _floor_program(width: int) -> Callable[[Any], Any]:
  """The jitted floor: `1 + rounds` hash passes over each of 3 layers."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from alberta._src import bits  # pylint: disable=g-import-not-at-top
  from alberta._src import shuffle  # pylint: disable=g-import-not-at-top

  passes = 1 + shuffle.num_rounds(width)

  def init(words):
    rows = lax.broadcasted_iota(np.uint32, (width, width), 0)
    cols = lax.broadcasted_iota(np.uint32, (width, width), 1)
    layers = []
    for layer in range(3):
      out = None
      for p in range(passes):
        b1, b2 = bits.threefry_fused(
            (words[0] + np.uint32(layer), words[1] + np.uint32(p)), rows, cols
        )
        word = lax.bitwise_xor(b1, b2)
        out = word if out is None else lax.bitwise_xor(out, word)
      layers.append(out)
    return layers

  return jax.jit(init)


def run_task(task: dict[str, Any]) -> dict[str, Any]:
  """One figure in this process: a first call's stages and the steady state."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  width = task["width"]
  if task["init"] == "floor":
    fn = _floor_program(width)
    args = (jnp.array([1, 2], jnp.uint32),)
  else:
    w_init = _w_init(task["init"])
    net = hk.transform(lambda x: hk.nets.MLP([width] * 3, w_init=w_init)(x))
    fn = jax.jit(net.init)
    args = (jax.random.key(0), jnp.ones((1, width)))
  stages = {}
  start = _clock()
  step = _clock()
  traced = fn.trace(*args)
  stages["trace"] = _since(step)["wall"]
  step = _clock()
  lowered = traced.lower()
  stages["lower"] = _since(step)["wall"]
  step = _clock()
  compiled = lowered.compile()
  stages["compile"] = _since(step)["wall"]
  step = _clock()
  jax.block_until_ready(compiled(*args))
  stages["run"] = _since(step)["wall"]
  out = {"first": _since(start), "stages": stages}
  calls = _STEADY_CALLS if stages["run"] < 1.0 else 2
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  out["steady"] = statistics.median(times)
  if task["init"] in ("sparse_permutation", "reference"):
    out["digest"] = _digest(compiled(*args))
  return out


def _digest(params: Any) -> str:
  """SHA-256 of every leaf's float32 bits, zeros of either sign as +0.0.

  The jitted reference multiplies by its mask, which XLA may turn into a
  select (+0.0 where the reference's eager product is -0.0): the reference
  check compares everything else bit for bit.
  """
  import hashlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    leaf = np.asarray(leaf, np.float32)
    digest.update(np.where(leaf == 0, np.float32(0), leaf).tobytes())
  return digest.hexdigest()


def tasks(settings: Settings) -> list[dict[str, Any]]:
  """Every measurement, as child tasks, in the report's order."""
  return [
      {"case": "wide", "init": i, "width": w}
      for w in settings.widths
      for i in INITS
  ]


def _min(a: Any, b: Any) -> Any:
  if isinstance(a, dict):
    return {k: _min(a[k], b[k]) for k in a}
  return min(a, b)


def measure(
    settings: Settings,
    run: Callable[[dict[str, Any]], dict[str, Any]],
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
  """Each task run in `settings.processes` fresh processes (the reference once).

  Returns `{"task": ..., "result": ...}` records, each figure its minimum.
  """
  records = []
  for task in tasks(settings):
    log(f"  wide {json.dumps(task)} ...")
    best = None
    for _ in range(1 if task["init"] == "reference" else settings.processes):
      result = run(task)
      best = result if best is None else _min(best, result)
    records.append({"task": task, "result": best})
  return records


def reference_agrees(records: Sequence[dict[str, Any]]) -> list[bool]:
  """Per width with both: the reference's MLP equals `SparseInit(0.9)`'s."""
  by = {(r["task"]["width"], r["task"]["init"]): r["result"] for r in records}
  return [
      by[(w, "reference")]["digest"] == by[(w, "sparse_permutation")]["digest"]
      for w, i in by
      if i == "reference" and (w, "sparse_permutation") in by
  ]


def _row(measurement: str, value: str, ratio: str = "") -> dict[str, str]:
  return {"measurement": measurement, "value": value, "ratio": ratio}


def _judged(ratio: float, target: float | None) -> str:
  text = f"{ratio:.2f}x haiku_default"
  if target is None:
    return text
  return (
      f"{text} (target <= {target}:"
      f" {'met' if ratio <= target else '**missed**'})"
  )


def rows(records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
  """The report's rows, every ratio from figures of these records."""
  by = {(r["task"]["width"], r["task"]["init"]): r["result"] for r in records}
  out = []
  for width in sorted({w for w, _ in by}):
    if (width, "reference") in by and (width, "sparse_permutation") in by:
      same = (
          by[(width, "reference")]["digest"]
          == by[(width, "sparse_permutation")]["digest"]
      )
      out.append(
          _row(
              f"MLP 3x{width}: reference vs sparse_permutation parameters",
              "same" if same else "DIFFERENT",
              "up to the sign of zero",
          )
      )
    base = by.get((width, "haiku_default"))
    if base is None:
      continue
    targets = TARGETS.get(width, (None, None))
    for init in INITS:
      res = by.get((width, init))
      if res is None:
        continue
      name = f"MLP 3x{width} {init}"
      default = init == "sparse_permutation"
      if init == "floor":
        out.append(
            _row(
                f"{name}: steady, ms",
                f"{1e3 * res['steady']:.3g}",
                _judged(res["steady"] / base["steady"], None),
            )
        )
        continue
      first = res["first"]["wall"]
      out.append(
          _row(
              f"{name}: first jit(net.init), wall s",
              f"{first:.3g}",
              _judged(
                  first / base["first"]["wall"], targets[0] if default else None
              ),
          )
      )
      st = res["stages"]
      out.append(
          _row(
              f"{name}: trace / lower / compile / run, s",
              " / ".join(
                  f"{st[k]:.2f}" for k in ("trace", "lower", "compile", "run")
              ),
          )
      )
      out.append(
          _row(
              f"{name}: steady jit(net.init), ms",
              f"{1e3 * res['steady']:.3g}",
              _judged(
                  res["steady"] / base["steady"],
                  targets[1] if default else None,
              ),
          )
      )
  return out
