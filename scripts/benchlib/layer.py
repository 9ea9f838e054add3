"""The everyday path, each measurement in a fresh process (`--cases=layer`).

Four groups of cases, each measurement the minimum over `processes` fresh
processes (so that imports and compile caches start cold), wall and process
CPU time both kept (on a busy machine CPU time is the steadier):

- `import`: `import jax`, then the extra time of `import alberta`;
- `mlp`: a 4-layer Haiku MLP (64 -> 256 -> 256 -> 256 -> 4), the first call of
  `jax.jit(net.init)` (trace, compile, run), its steady state, and the first
  eager `net.init` (another process), with `w_init` = `SparseInit(0.9)`
  (permutation, counter), Haiku's default and a plain `jax.random.uniform`;
- `cache`: that first `jax.jit(net.init)` with JAX's persistent compilation
  cache on, in a new cache directory (cold: it compiles and writes the cache)
  and then in another process reading the same directory (warm), for
  `SparseInit(0.9)` (both methods) and Haiku's default; each such pair is one
  child, which runs the two as processes of their own;
- `chunk`: `alberta.sparse_init(key, shape, method=m, chunk_rows=c)` at top
  level (a host loop of one program per chunk) and inside `jax.jit` (a loop in
  the graph), against `chunk_rows=shape[0]` (one piece), both methods; the
  three matrices must agree bit for bit;
- `cores`: `alberta.sparse_init(key, shape, method=m)` pinned to one core
  (`os.sched_setaffinity` before JAX starts) against every usable core.

The parent (`measure`) re-invokes the benchmark script with
`--layer_child=<JSON task>`; the script hands that to `run_child` before it
imports anything else. This module therefore imports only the standard library
at module level: the children import JAX themselves, after pinning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

CASES = ("import", "mlp", "cache", "chunk", "cores")
INITS = ("sparse_permutation", "sparse_counter", "haiku_default", "uniform")
CACHE_INITS = ("sparse_permutation", "sparse_counter", "haiku_default")
METHODS = ("permutation", "counter")
CHILD_FLAG = "--layer_child="
_MLP_STEADY_CALLS = 20


@dataclasses.dataclass(frozen=True)
class Settings:
  """The layer cases' sizes and repetitions (the benchmark's flags)."""

  shape: tuple[int, int] = (8192, 1024)
  chunk_rows: int = 1024
  processes: int = 3  # Fresh processes per measurement; the minimum is kept.
  repeats: int = 5  # Steady-state calls (median) in `chunk` and `cores`.


def _clock() -> tuple[float, float]:
  return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
  wall, cpu = _clock()
  return {"wall": wall - start[0], "cpu": cpu - start[1]}


def _steady(fn: Callable[[], Any], n: int) -> float:
  """Median seconds per call of `fn` after one warm-up call."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.block_until_ready(fn())
  times = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _child_import(task: dict[str, Any]) -> dict[str, Any]:
  del task
  preloaded = "jax" in sys.modules  # The parent refuses a warm import.
  start = _clock()
  # The two imports are what is timed; their names go unused.
  import jax  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import

  jax_time = _since(start)
  start = _clock()
  import alberta  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import

  return {
      "jax": jax_time,
      "alberta_extra": _since(start),
      "jax_preloaded": preloaded,
  }


def enable_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache in `directory`, every program cached.

  The settings docs/PERFORMANCE.md and the README give; before any compile.
  """
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _child_mlp(task: dict[str, Any]) -> dict[str, Any]:
  """The MLP's first `jit(net.init)` and steady state, or first eager init.

  With `task["cache_dir"]`, JAX's persistent compilation cache is on there.
  """
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import alberta  # pylint: disable=g-import-not-at-top

  if task.get("cache_dir"):
    enable_compilation_cache(task["cache_dir"])
  name = task["init"]
  if name.startswith("sparse_"):
    w_init = alberta.SparseInit(0.9, method=name[len("sparse_") :])
  elif name == "uniform":

    def w_init(shape, dtype):
      scale = 1.0 / shape[0] ** 0.5
      return jax.random.uniform(hk.next_rng_key(), shape, dtype, -scale, scale)

  else:
    w_init = None  # Haiku's default.
  net = hk.transform(
      lambda x: hk.nets.MLP([256, 256, 256, 4], w_init=w_init)(x)
  )
  key, x = jax.random.key(0), jnp.ones((1, 64))
  init = jax.jit(net.init) if task["jit"] else net.init
  start = _clock()
  jax.block_until_ready(init(key, x))
  out = {"first": _since(start)}
  if task["jit"]:
    out["steady"] = _steady(lambda: init(key, x), _MLP_STEADY_CALLS)
  return out


def _child_cache(task: dict[str, Any]) -> dict[str, Any]:
  """The MLP's first `jit(net.init)`, cold then warm persistent cache.

  Two processes of their own (this one has its in-memory caches), sharing a
  new cache directory; the cold one must have written to it.
  """
  import tempfile  # pylint: disable=g-import-not-at-top

  run = spawn(os.path.abspath(sys.argv[0]))
  with tempfile.TemporaryDirectory(prefix="alberta_cache_") as directory:
    mlp = {
        "case": "mlp",
        "init": task["init"],
        "jit": True,
        "cache_dir": directory,
    }
    cold = run(mlp)["first"]
    if not os.listdir(directory):
      raise RuntimeError(f"{task}: the cold run wrote no cache entry")
    warm = run(mlp)["first"]
  return {"cold": cold, "warm": warm}


def _child_chunk(task: dict[str, Any]) -> dict[str, Any]:
  """Chunked by the host loop and in the graph, against one piece."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import alberta  # pylint: disable=g-import-not-at-top

  shape, method = tuple(task["shape"]), task["method"]
  chunk, key = task["chunk_rows"], jax.random.key(0)
  in_graph = jax.jit(
      lambda k: alberta.sparse_init(k, shape, method=method, chunk_rows=chunk)
  )
  runs = {
      "whole": lambda: alberta.sparse_init(
          key, shape, method=method, chunk_rows=shape[0]
      ),
      "host_loop": lambda: alberta.sparse_init(
          key, shape, method=method, chunk_rows=chunk
      ),
      "in_graph": lambda: in_graph(key),
  }
  out = {name: _steady(run, task["repeats"]) for name, run in runs.items()}
  bits = [np.asarray(run()).view(np.uint32) for run in runs.values()]
  out["agree"] = all(np.array_equal(bits[0], b) for b in bits[1:])
  return out


def _child_cores(task: dict[str, Any]) -> dict[str, Any]:
  if task["cores"] == "1":  # Before XLA sizes its thread pool.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  import jax  # pylint: disable=g-import-not-at-top
  import alberta  # pylint: disable=g-import-not-at-top

  key, shape = jax.random.key(0), tuple(task["shape"])
  return {
      "steady": _steady(
          lambda: alberta.sparse_init(key, shape, method=task["method"]),
          task["repeats"],
      ),
      "cores": len(os.sched_getaffinity(0)),
  }


_CHILDREN = {
    "import": _child_import,
    "mlp": _child_mlp,
    "cache": _child_cache,
    "chunk": _child_chunk,
    "cores": _child_cores,
}


def child_task(argv: Sequence[str]) -> dict[str, Any] | None:
  """The task of a `--layer_child=<JSON>` argument in `argv`, if any."""
  for arg in argv[1:]:
    if arg.startswith(CHILD_FLAG):
      return json.loads(arg[len(CHILD_FLAG) :])
  return None


def run_task(task: dict[str, Any]) -> dict[str, Any]:
  """Runs one measurement in this process (a child's whole work)."""
  if task.get("case") not in _CHILDREN:
    raise ValueError(
        f"unknown layer case {task.get('case')!r} in {task}; "
        f"expected one of {sorted(_CHILDREN)}"
    )
  return _CHILDREN[task["case"]](task)


def without_forced_devices(xla_flags: str) -> str:
  """`XLA_FLAGS` less any --xla_force_host_platform_device_count."""
  return re.sub(
      r"--xla_force_host_platform_device_count=\S*", "", xla_flags
  ).strip()


def child_env() -> dict[str, str]:
  """The parent's environment, less any forced count of CPU devices."""
  return {
      **os.environ,
      "XLA_FLAGS": without_forced_devices(os.environ.get("XLA_FLAGS", "")),
  }


def spawn(script: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
  """Runs a task in a fresh `python script --layer_child=<task>` process."""

  def run(task: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, script, CHILD_FLAG + json.dumps(task)],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    if proc.returncode:
      raise RuntimeError(f"layer child {task} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])

  return run


def _min(a: Any, b: Any) -> Any:
  if isinstance(a, dict):
    return {k: _min(a[k], b[k]) for k in a}
  return min(a, b)


def tasks(cases: Sequence[str], settings: Settings) -> list[dict[str, Any]]:
  """Every measurement of `cases`, as child tasks, in the report's order."""
  shape, repeats = list(settings.shape), settings.repeats
  out = []
  if "import" in cases:
    out.append({"case": "import"})
  if "mlp" in cases:
    out += [
        {"case": "mlp", "init": i, "jit": j}
        for j in (True, False)
        for i in INITS
    ]
  if "cache" in cases:
    out += [{"case": "cache", "init": i} for i in CACHE_INITS]
  if "chunk" in cases:
    out += [
        {
            "case": "chunk",
            "method": m,
            "shape": shape,
            "repeats": repeats,
            "chunk_rows": settings.chunk_rows,
        }
        for m in METHODS
    ]
  if "cores" in cases:
    out += [
        {
            "case": "cores",
            "method": m,
            "cores": c,
            "shape": shape,
            "repeats": repeats,
        }
        for m in METHODS
        for c in ("1", "all")
    ]
  return out


def measure(
    cases: Sequence[str],
    settings: Settings,
    run: Callable[[dict[str, Any]], dict[str, Any]],
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
  """Each task of `cases` run `settings.processes` times: its minimum figures.

  Returns `{"task": ..., "result": ...}` records; `run` runs one task (in a
  fresh process: `spawn`). The minimum of booleans is their `and`.
  """
  return measure_tasks(tasks(cases, settings), settings.processes, run, log)


def measure_tasks(
    task_list: Sequence[dict[str, Any]],
    processes: int,
    run: Callable[[dict[str, Any]], dict[str, Any]],
    log: Callable[[str], None] = print,
    what: str = "layer",
) -> list[dict[str, Any]]:
  """Each task run `processes` times by `run`: its minimum figures (`measure`).

  Refuses a result whose child found JAX already imported.
  """
  records = []
  for task in task_list:
    log(f"  {what} {json.dumps(task)} ...")
    best = None
    for _ in range(processes):
      result = run(task)
      if result.pop("jax_preloaded", False):
        raise RuntimeError(f"{task}: JAX was imported before the child began")
      best = result if best is None else _min(best, result)
    records.append({"task": task, "result": best})
  return records


def _row(measurement: str, value: str, ratio: str = "") -> dict[str, str]:
  return {"measurement": measurement, "value": value, "ratio": ratio}


def _key(task: dict[str, Any]) -> tuple[Any, ...]:
  return tuple(task.get(k) for k in ("case", "init", "jit", "method", "cores"))


def rows(records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
  """The report's rows, every ratio from figures of these records."""
  by = {_key(r["task"]): r["result"] for r in records}
  get = lambda **task: by.get(_key(task))  # noqa: E731
  out = []
  imp = get(case="import")
  if imp:
    out.append(_row("import jax (s)", f"{imp['jax']['wall']:.2f}"))
    out.append(
        _row(
            "import alberta, extra (s)",
            f"{imp['alberta_extra']['wall']:.2f}",
            f"{imp['alberta_extra']['wall'] / imp['jax']['wall']:.2f}x jax",
        )
    )
  jit = {i: get(case="mlp", init=i, jit=True) for i in INITS}
  eager = {i: get(case="mlp", init=i, jit=False) for i in INITS}
  if all(jit.values()) and all(eager.values()):
    figures = (
        ("first jit(net.init), wall s", lambda i: jit[i]["first"]["wall"]),
        ("first jit(net.init), cpu s", lambda i: jit[i]["first"]["cpu"]),
        ("steady jit(net.init), ms", lambda i: 1e3 * jit[i]["steady"]),
        ("eager net.init, wall s", lambda i: eager[i]["first"]["wall"]),
        ("eager net.init, cpu s", lambda i: eager[i]["first"]["cpu"]),
    )
    for i in INITS:
      for label, value in figures:
        out.append(
            _row(
                f"MLP {i}: {label}",
                f"{value(i):.3g}",
                f"{value(i) / value('haiku_default'):.2f}x haiku_default",
            )
        )
  for i in CACHE_INITS:
    cache = get(case="cache", init=i)
    if not cache:
      continue
    for clock in ("wall", "cpu"):
      cold, warm = cache["cold"][clock], cache["warm"][clock]
      out.append(
          _row(
              f"MLP {i}: first jit(net.init), persistent cache cold / warm, "
              f"{clock} s",
              f"{cold:.3g} / {warm:.3g}",
              f"{warm / cold:.2f}x cold",
          )
      )
  for r in records:
    task, res = r["task"], r["result"]
    if task["case"] != "chunk":
      continue
    where = f"{task['method']} {task['shape'][0]}x{task['shape'][1]}"
    for kind, label in (("host_loop", "top level"), ("in_graph", "jax.jit")):
      out.append(
          _row(
              f"{where}, chunk_rows={task['chunk_rows']} at {label} (ms)",
              f"{1e3 * res[kind]:.1f}",
              f"{res['whole'] / res[kind]:.2f}x the throughput of one piece "
              f"({1e3 * res['whole']:.1f} ms)",
          )
      )
  for method in METHODS:
    one, every = get(case="cores", method=method, cores="1"), get(
        case="cores", method=method, cores="all"
    )
    if one and every:
      shape = next(
          r["task"]["shape"] for r in records if r["task"]["case"] == "cores"
      )
      out.append(
          _row(
              f"sparse_init {method} {shape[0]}x{shape[1]}, 1 core / "
              f"{every['cores']} (ms)",
              f"{1e3 * one['steady']:.1f} / {1e3 * every['steady']:.1f}",
              f"{one['steady'] / every['steady']:.2f}x speed-up",
          )
      )
  return out


def chunks_agree(records: Sequence[dict[str, Any]]) -> list[bool]:
  """Each `chunk` record's check: its three matrices equal bit for bit."""
  return [r["result"]["agree"] for r in records if r["task"]["case"] == "chunk"]
