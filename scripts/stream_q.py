r"""Stream Q(lambda) on MinAtar with sparse or dense initialization.

The stream-x recipe (Elsayed, Vasan & Mahmood 2024, "Streaming Deep
Reinforcement Learning Finally Works") in Haiku: one environment per seed,
one update per step, no replay buffer, no target network; the ObGD optimizer,
running observation and reward normalization, LayerNorm, and the network's
kernels drawn by `alberta.SparseInit(sparsity, rounding="ceil")`.
`--sparsity=0` is the paper's dense ablation: the same LeCun-uniform draw with
no zeros, and nothing else changed.

Every seed's run is one `lax.scan`, the seeds `vmap`ped, compiled once and
run in segments so the host can show progress. After training, a uniform
random policy runs on the same environment for `--random_steps` steps as a
reference return.

  python scripts/stream_q.py --env=Breakout-MinAtar --steps=300000 --seeds=2 \
      --json=/tmp/breakout.json --plot=/tmp/breakout.png

The JSON holds the arguments, each seed's learning curve (mean episodic return
per window of steps) and every episode's end step and return, and a summary:
`final_return_mean` (each seed's mean episodic return over episodes ending in
the last 10% of the steps, averaged over seeds), `final_return_stderr`
(the standard error of that mean over seeds), `steps_per_second` (environment
steps of all seeds together per second of the training loop, compilation
excluded) and `random_return_mean`.
"""

import json
import math
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import gymnax
import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):  # Run as a file: make `scripts` importable.
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

from scripts.streamlib import agent  # pylint: disable=g-import-not-at-top
from scripts.streamlib import network  # pylint: disable=g-import-not-at-top
from scripts.streamlib import obgd  # pylint: disable=g-import-not-at-top

MINATAR = (
    "Asterix-MinAtar",
    "Breakout-MinAtar",
    "Freeway-MinAtar",
    "SpaceInvaders-MinAtar",
)

FLAGS = flags.FLAGS
flags.DEFINE_enum("env", "Breakout-MinAtar", MINATAR, "gymnax MinAtar id.")
flags.DEFINE_integer(
    "steps", 300_000, "Environment steps per seed.", lower_bound=1
)
flags.DEFINE_integer("seeds", 2, "Independent runs (vmapped).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Base PRNG seed; run i uses fold_in(seed, i).")
flags.DEFINE_float(
    "sparsity",
    0.9,
    "SparseInit sparsity of every kernel; 0 is dense LeCun-uniform.",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_float("lr", 1.0, "ObGD learning rate.", lower_bound=0.0)
flags.DEFINE_float("kappa", 2.0, "ObGD's overshooting bound.", lower_bound=0.0)
flags.DEFINE_float("gamma", 0.99, "Discount.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float(
    "lamda", 0.8, "Trace decay lambda.", lower_bound=0.0, upper_bound=1.0
)
flags.DEFINE_float(
    "exploration_fraction",
    0.2,
    "Fraction of the steps over which epsilon falls from 1 to 0.01.",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_integer(
    "segments", 100, "Scan segments (progress updates).", lower_bound=1
)
flags.DEFINE_integer(
    "curve_points", 100, "Windows of the learning curve.", lower_bound=1
)
flags.DEFINE_integer(
    "random_steps",
    100_000,
    "Steps per seed of the random policy's reference run (0: none).",
    lower_bound=0,
)
flags.DEFINE_string("json", None, "Write the results here (JSON).")
flags.DEFINE_string("plot", None, "Write the learning curves here (PNG).")
flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")

FINAL_FRACTION = 0.1


def _check_path(flag_name: str, path: str | None) -> None:
  if path is None:
    return
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise app.UsageError(
        f"--{flag_name}={path!r}: directory {directory!r} does not exist"
    )


def _segment_lengths(steps: int, segments: int) -> list[int]:
  """`steps` split into at most `segments` parts of at most two lengths."""
  length = math.ceil(steps / min(segments, steps))
  full, rest = divmod(steps, length)
  return [length] * full + ([rest] if rest else [])


class _Progress:
  """A one-line progress bar on stderr."""

  def __init__(self, total: int, label: str, enabled: bool):
    self.total, self.label, self.enabled = total, label, enabled
    self.start = self.shown = time.perf_counter()
    # On a terminal, redraw in place; in a log file, one line per 10%.
    self.tty = sys.stderr.isatty()
    self.next_fraction = 0.1

  def update(self, done: int, extra: str = "") -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    last = done >= self.total
    if self.tty and now - self.shown < 0.5 and not last:
      return
    if not self.tty and done < self.next_fraction * self.total and not last:
      return
    self.shown = now
    self.next_fraction = math.floor(10 * done / self.total + 1) / 10
    elapsed = now - self.start
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - done) / rate if rate > 0 else float("nan")
    width = 30
    filled = int(width * done / self.total)
    start = "\r" if self.tty else ""
    sys.stderr.write(
        f"{start}{self.label} [{'#' * filled}{'.' * (width - filled)}]"
        f" {done}/{self.total} {rate:,.0f} steps/s"
        f" eta {eta:,.0f} s {extra}   "
    )
    if last or not self.tty:
      sys.stderr.write("\n")
    sys.stderr.flush()


def run_agent(
    env_name: str,
    steps: int,
    seeds: int,
    seed: int,
    sparsity: float,
    config: agent.AgentConfig,
    segments: int,
    progress: bool = False,
) -> dict:
  """Trains `seeds` agents; returns episode ends, returns, timing, params."""
  env, env_params = gymnax.make(env_name)
  net = network.q_network(env.num_actions, sparsity)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
      jnp.arange(seeds)
  )
  init = jax.jit(jax.vmap(lambda k: agent.init(k, env, env_params, net)))
  state = init(keys)
  initial_params = jax.device_get(state.params)

  def segment(state, length):
    one = lambda s, _: agent.step(s, env, env_params, net, config)
    return jax.vmap(lambda s: jax.lax.scan(one, s, None, length=length))(state)

  segment = jax.jit(segment, static_argnums=1)
  lengths = _segment_lengths(steps, segments)
  compile_start = time.perf_counter()
  compiled = {
      length: segment.lower(state, length).compile() for length in set(lengths)
  }
  compile_seconds = time.perf_counter() - compile_start

  bar = _Progress(steps, f"{env_name} sparsity={sparsity:g}", progress)
  ended = []
  done_steps = 0
  start = time.perf_counter()
  for length in lengths:
    state, returns = compiled[length](state)
    returns = np.asarray(returns)  # (seeds, length); waits for the segment.
    ended.append(returns)
    done_steps += length
    finished = returns[~np.isnan(returns)]
    bar.update(
        done_steps,
        f"last returns {finished.mean():.2f}" if finished.size else "",
    )
  seconds = time.perf_counter() - start
  return dict(
      returns=np.concatenate(ended, axis=1),
      seconds=seconds,
      compile_seconds=compile_seconds,
      initial_params=initial_params,
      final_params=jax.device_get(state.params),
  )


def run_random(env_name: str, steps: int, seeds: int, seed: int) -> np.ndarray:
  """A uniform random policy's returns of episodes ending at each step.

  Returns:
    A `(seeds, steps)` array: the return of the episode ending at each step,
    NaN where none ends.
  """
  env, env_params = gymnax.make(env_name)

  def one(key):
    key, reset_key = jax.random.split(key)
    _, env_state = env.reset(reset_key, env_params)
    body = lambda c, _: agent.random_policy_step(c, env, env_params)
    _, ended = jax.lax.scan(
        body, (env_state, key, jnp.zeros(())), None, length=steps
    )
    return ended

  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed + 1), i))(
      jnp.arange(seeds)
  )
  return np.asarray(jax.jit(jax.vmap(one))(keys))


def episodes(returns: np.ndarray) -> list[dict]:
  """Each seed's episodes: 1-based end steps and returns."""
  out = []
  for row in returns:
    ends = np.flatnonzero(~np.isnan(row))
    out.append(
        dict(
            end_steps=(ends + 1).tolist(),
            returns=row[ends].astype(float).tolist(),
        )
    )
  return out


def final_returns(
    returns: np.ndarray, fraction: float = FINAL_FRACTION
) -> np.ndarray:
  """Each seed's mean return over episodes ending in the last `fraction`."""
  steps = returns.shape[1]
  tail = returns[:, steps - max(1, int(round(fraction * steps))) :]
  with np.errstate(invalid="ignore"):
    counts = np.sum(~np.isnan(tail), axis=1)
    sums = np.nansum(tail, axis=1)
  return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def learning_curves(returns: np.ndarray, points: int) -> dict:
  """Mean episodic return per window of steps, per seed (NaN: no episode)."""
  steps = returns.shape[1]
  edges = np.linspace(0, steps, min(points, steps) + 1).round().astype(int)
  curves = []
  for row in returns:
    curve = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
      window = row[lo:hi]
      window = window[~np.isnan(window)]
      curve.append(float(window.mean()) if window.size else None)
    curves.append(curve)
  return dict(window_end_steps=edges[1:].tolist(), mean_return=curves)


def summarize(returns: np.ndarray, seconds: float) -> dict:
  """The run's summary: final returns (mean, stderr, per seed) and speed."""
  finals = final_returns(returns)
  valid = finals[~np.isnan(finals)]
  stderr = (
      float(valid.std(ddof=1) / np.sqrt(valid.size)) if valid.size > 1 else None
  )
  return dict(
      final_return_mean=float(valid.mean()) if valid.size else None,
      final_return_stderr=stderr,
      final_return_per_seed=[None if np.isnan(f) else float(f) for f in finals],
      steps_per_second=returns.size / seconds,
      train_seconds=seconds,
  )


def _write_atomically(path: str, write) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".stream_q.")
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def plot(results: dict, path: str) -> None:
  """Writes the run's learning curves, each seed and their mean, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  curves = results["learning_curves"]
  x = np.asarray(curves["window_end_steps"])
  y = np.asarray(
      [[np.nan if v is None else v for v in c] for c in curves["mean_return"]],
      float,
  )
  fig, ax = plt.subplots(figsize=(6, 4))
  for row in y:
    ax.plot(x, row, color="C0", alpha=0.3, lw=0.8)
  ax.plot(x, np.nanmean(y, axis=0), color="C0", lw=2, label="mean of seeds")
  random_mean = results["summary"].get("random_return_mean")
  if random_mean is not None:
    ax.axhline(random_mean, color="gray", ls="--", label="random policy")
  args = results["args"]
  ax.set(
      xlabel="environment steps",
      ylabel="episodic return",
      title=f"{args['env']}, sparsity {args['sparsity']:g}",
  )
  ax.legend()
  fig.tight_layout()
  _write_atomically(path, lambda p: fig.savefig(p, format="png", dpi=100))
  plt.close(fig)


def run(args: dict, progress: bool = False) -> dict:
  """Trains, evaluates the random reference, and builds the results dict."""
  config = agent.AgentConfig(
      total_steps=args["steps"],
      optimizer=obgd.ObGDConfig(
          lr=args["lr"],
          gamma=args["gamma"],
          lamda=args["lamda"],
          kappa=args["kappa"],
      ),
      exploration_fraction=args["exploration_fraction"],
  )
  trained = run_agent(
      args["env"],
      args["steps"],
      args["seeds"],
      args["seed"],
      args["sparsity"],
      config,
      args["segments"],
      progress,
  )
  summary = summarize(trained["returns"], trained["seconds"])
  summary["compile_seconds"] = trained["compile_seconds"]
  if args["random_steps"]:
    random_returns = run_random(
        args["env"], args["random_steps"], args["seeds"], args["seed"]
    )
    ended = random_returns[~np.isnan(random_returns)]
    summary["random_return_mean"] = float(ended.mean()) if ended.size else None
    summary["random_episodes"] = int(ended.size)
  else:
    summary["random_return_mean"] = None
  return dict(
      args=args,
      summary=summary,
      learning_curves=learning_curves(trained["returns"], args["curve_points"]),
      episodes=episodes(trained["returns"]),
      initial_params=trained["initial_params"],
      device=str(jax.devices()[0].platform),
  )


def main(argv):
  """Trains the agent as the flags say, prints the result, writes the files."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _check_path("json", FLAGS.json)
  _check_path("plot", FLAGS.plot)
  if FLAGS.exploration_fraction * FLAGS.steps < 1:
    raise app.UsageError(
        f"--exploration_fraction={FLAGS.exploration_fraction} with "
        f"--steps={FLAGS.steps} leaves no exploration phase"
    )
  args = {
      name: FLAGS[name].value
      for name in (
          "env",
          "steps",
          "seeds",
          "seed",
          "sparsity",
          "lr",
          "kappa",
          "gamma",
          "lamda",
          "exploration_fraction",
          "segments",
          "curve_points",
          "random_steps",
      )
  }
  results = run(args, progress=FLAGS.progress)
  results.pop("initial_params")
  summary = results["summary"]
  stderr = summary["final_return_stderr"]
  print(
      f"{args['env']} sparsity={args['sparsity']:g} steps={args['steps']} "
      f"seeds={args['seeds']}: final return "
      f"{summary['final_return_mean']}"
      + (f" +- {stderr:.2f}" if stderr is not None else "")
      + f", random {summary['random_return_mean']}, "
      f"{summary['steps_per_second']:,.0f} steps/s"
  )
  if FLAGS.json:

    def write(path):
      with open(path, "w") as f:
        json.dump(results, f)

    _write_atomically(FLAGS.json, write)
  if FLAGS.plot:
    plot(results, FLAGS.plot)


if __name__ == "__main__":
  app.run(main)
