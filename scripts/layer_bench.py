r"""Small-layer and threading benchmark: every measurement in a fresh process.

Measures, each in its own subprocess (so compile caches and imports start
cold), the minimum over `--repeats` runs of:

* import time: `import jax`, then the extra time of `import alberta`;
* a 4-layer Haiku MLP (64 -> 256 -> 256 -> 256 -> 4): the first call of
  `jax.jit(net.init)` (trace + compile + run), its steady state, and the first
  eager `net.init`, with `w_init` = `SparseInit(0.9)` (permutation, counter),
  Haiku's default, and a plain `jax.random.uniform` initializer;
* chunked against unchunked generation of an 8192 x 1024 matrix
  (`chunk_rows=1024` by the top-level host loop and by the in-graph loop,
  against one piece), both methods;
* `sparse_init(key, (8192, 1024))` pinned to one core against all cores.

Ratios are computed from the numbers of this one run. Wall and process CPU
time are both reported; on a busy machine CPU time is the steadier of the two.

Usage:
  python scripts/layer_bench.py [--repeats=3] [--markdown]
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_REPEATS = flags.DEFINE_integer("repeats", 3, "runs per measurement (min).")
_MARKDOWN = flags.DEFINE_bool("markdown", False, "print a Markdown table.")
_CHILD = flags.DEFINE_string("child", None, "internal: run one measurement.")

_INITS = ("sparse_permutation", "sparse_counter", "haiku_default", "uniform")
_METHODS = ("permutation", "counter")
_SHAPE = (8192, 1024)


def _clock():
  return time.perf_counter(), time.process_time()


def _since(start):
  wall, cpu = _clock()
  return {"wall": wall - start[0], "cpu": cpu - start[1]}


def _steady(fn, n=20):
  """Median seconds per call of `fn` after one warm-up call."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn())
  times = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return sorted(times)[n // 2]


def _child_import():
  start = _clock()
  import jax  # pylint: disable=g-import-not-at-top,unused-import
  jax_time = _since(start)
  start = _clock()
  import alberta  # pylint: disable=g-import-not-at-top,unused-import
  return {"jax": jax_time, "alberta_extra": _since(start)}


def _mlp(init_name):
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import alberta  # pylint: disable=g-import-not-at-top
  if init_name.startswith("sparse_"):
    w_init = alberta.SparseInit(0.9, method=init_name[len("sparse_"):])
  elif init_name == "uniform":
    def w_init(shape, dtype):
      scale = 1.0 / shape[0]**0.5
      return jax.random.uniform(hk.next_rng_key(), shape, dtype, -scale, scale)
  else:
    w_init = None
  net = hk.transform(
      lambda x: hk.nets.MLP([256, 256, 256, 4], w_init=w_init)(x))
  return net, jax.random.key(0), jnp.ones((1, 64))


def _child_mlp_jit(init_name):
  import jax  # pylint: disable=g-import-not-at-top
  net, key, x = _mlp(init_name)
  init = jax.jit(net.init)
  start = _clock()
  jax.block_until_ready(init(key, x))
  return {"first": _since(start), "steady": _steady(lambda: init(key, x))}


def _child_mlp_eager(init_name):
  import jax  # pylint: disable=g-import-not-at-top
  net, key, x = _mlp(init_name)
  start = _clock()
  jax.block_until_ready(net.init(key, x))
  return {"first": _since(start)}


def _child_chunk(method):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from alberta._src import blocks  # pylint: disable=g-import-not-at-top
  from alberta._src.spec import make_spec  # pylint: disable=g-import-not-at-top
  rows, cols = _SHAPE
  spec, _ = make_spec(_SHAPE, 0.9, "uniform", method, "nearest")
  key = jax.random.key(0)

  def in_graph(chunk):
    return jax.jit(lambda k: blocks.generate(k, spec, 0, rows, 0, cols,
                                             jnp.float32, chunk))

  whole, fori = in_graph(rows), in_graph(1024)
  return {
      "whole": _steady(lambda: whole(key), 5),
      "host_loop": _steady(lambda: blocks.generate_host_loop(
          key, spec, 0, rows, 0, cols, jnp.float32, 1024), 5),
      "fori_loop": _steady(lambda: fori(key), 5),
  }


def _child_cores(method_and_cores):
  method, cores = method_and_cores.split(":")
  if cores == "1":  # before XLA sizes its thread pool
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  import jax  # pylint: disable=g-import-not-at-top
  import alberta  # pylint: disable=g-import-not-at-top
  key = jax.random.key(0)
  return {"steady": _steady(lambda: alberta.sparse_init(
      key, _SHAPE, method=method), 5), "cores": len(os.sched_getaffinity(0))}


_CHILDREN = {"import": _child_import, "mlp_jit": _child_mlp_jit,
             "mlp_eager": _child_mlp_eager, "chunk": _child_chunk,
             "cores": _child_cores}


def _run(task):
  """Min over repeats of each number of one child measurement."""
  best = None
  for _ in range(_REPEATS.value):
    out = subprocess.run([sys.executable, __file__, f"--child={task}"],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    best = result if best is None else _min(best, result)
  return best


def _min(a, b):
  if isinstance(a, dict):
    return {k: _min(a[k], b[k]) for k in a}
  return min(a, b)


def _rows():
  """(measurement, value, ratio) rows of the report."""
  rows = []
  imp = _run("import")
  rows.append(("import jax (s)", f"{imp['jax']['wall']:.2f}", ""))
  rows.append(("import alberta, extra (s)",
               f"{imp['alberta_extra']['wall']:.2f}",
               f"{imp['alberta_extra']['wall'] / imp['jax']['wall']:.2f}x jax"))
  jit = {name: _run(f"mlp_jit:{name}") for name in _INITS}
  eager = {name: _run(f"mlp_eager:{name}") for name in _INITS}
  base_jit, base_eager = jit["haiku_default"], eager["haiku_default"]
  for name in _INITS:
    for label, value, base in (
        ("first jit(net.init), wall", jit[name]["first"]["wall"],
         base_jit["first"]["wall"]),
        ("first jit(net.init), cpu", jit[name]["first"]["cpu"],
         base_jit["first"]["cpu"]),
        ("steady jit(net.init), ms", 1e3 * jit[name]["steady"],
         1e3 * base_jit["steady"]),
        ("eager net.init, wall", eager[name]["first"]["wall"],
         base_eager["first"]["wall"]),
        ("eager net.init, cpu", eager[name]["first"]["cpu"],
         base_eager["first"]["cpu"])):
      rows.append((f"MLP {name}: {label}", f"{value:.3g}",
                   f"{value / base:.2f}x haiku_default"))
  for method in _METHODS:
    c = _run(f"chunk:{method}")
    for kind in ("host_loop", "fori_loop"):
      rows.append((f"{method} 8192x1024, chunk 1024 by {kind} (ms)",
                   f"{1e3 * c[kind]:.1f}",
                   f"{c['whole'] / c[kind]:.2f}x unchunked throughput "
                   f"({1e3 * c['whole']:.1f} ms)"))
  for method in _METHODS:
    one, every = _run(f"cores:{method}:1"), _run(f"cores:{method}:all")
    rows.append((f"sparse_init {method} 8192x1024, 1 core vs "
                 f"{every['cores']} (ms)",
                 f"{1e3 * one['steady']:.1f} / {1e3 * every['steady']:.1f}",
                 f"{one['steady'] / every['steady']:.2f}x speed-up"))
  return rows


def main(argv):
  del argv
  if _CHILD.value:
    kind, _, arg = _CHILD.value.partition(":")
    result = _CHILDREN[kind](arg) if arg else _CHILDREN[kind]()
    print(json.dumps(result))
    return
  rows = _rows()
  if _MARKDOWN.value:
    print("| measurement | value | ratio |\n|---|---|---|")
    for row in rows:
      print("| " + " | ".join(row) + " |")
  else:
    width = max(len(r[0]) for r in rows)
    for name, value, ratio in rows:
      print(f"{name:<{width}}  {value:>14}  {ratio}")


if __name__ == "__main__":
  app.run(main)
