r"""The table and plot of docs/STREAMING.md from scripts/stream_q.py JSON files.

Each input is one run (one environment, one sparsity, several seeds). Prints a
Markdown table, one row per environment: each sparsity's mean final return
plus or minus its standard error over seeds, the random policy's return and
the training throughput; and with `--plot`, draws every environment's learning
curves (the seeds' mean, shaded by the standard error over seeds), one panel
per environment, one line per sparsity.

  python scripts/stream_q_report.py --plot=docs/streaming.png runs/*.json
"""

import collections
import json
import os
import sys
import warnings

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines `--plot`: when run, not on import.

  The tests import this module beside stream_q.py, which has its own `--plot`.
  """
  flags.DEFINE_string("plot", None, "Write the learning curves here (PNG).")


def load(paths: list[str]) -> dict:
  """The runs of the JSON files `paths`, by environment and sparsity."""
  runs = collections.defaultdict(dict)
  for path in paths:
    with open(path) as f:
      results = json.load(f)
    args = results["args"]
    if args["sparsity"] in runs[args["env"]]:
      raise app.UsageError(
          f"{path!r}: a second run of {args['env']} at "
          f"sparsity {args['sparsity']:g}"
      )
    runs[args["env"]][args["sparsity"]] = results
  for env, by in runs.items():
    budgets = {(r["args"]["steps"], r["args"]["seeds"]) for r in by.values()}
    if len(budgets) > 1:
      raise app.UsageError(
          f"{env}: runs of different steps x seeds "
          f"{sorted(budgets)} cannot share a row"
      )
  return runs


def _label(sparsity: float) -> str:
  return f"sparse {sparsity:g}" if sparsity else "dense"


def table(runs: dict) -> str:
  """The Markdown table of final returns: an environment a row."""
  sparsities = sorted({s for by in runs.values() for s in by}, reverse=True)
  head = (
      ["environment", "steps x seeds"]
      + [_label(s) for s in sparsities]
      + ["random policy", "env steps/s"]
  )
  lines = [
      "| " + " | ".join(head) + " |",
      "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
  ]
  for env in sorted(runs):
    by = runs[env]
    first = next(iter(by.values()))
    cells = [env, f"{first['args']['steps']:,} x {first['args']['seeds']}"]
    for s in sparsities:
      summary = by[s]["summary"] if s in by else None
      if summary is None or summary["final_return_mean"] is None:
        cells.append("-")
      else:
        cells.append(
            f"{summary['final_return_mean']:.2f} ± "
            f"{summary['final_return_stderr'] or 0:.2f}"
        )
    randoms = [
        r["summary"]["random_return_mean"]
        for r in by.values()
        if r["summary"].get("random_return_mean") is not None
    ]
    cells.append(f"{np.mean(randoms):.2f}" if randoms else "-")
    rates = [r["summary"]["steps_per_second"] for r in by.values()]
    cells.append(" / ".join(f"{r:,.0f}" for r in rates))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(runs: dict, path: str) -> None:
  """Writes the learning curves, one panel per environment, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  envs = sorted(runs)
  fig, axes = plt.subplots(
      1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False
  )
  for ax, env in zip(axes[0], envs, strict=True):
    for i, s in enumerate(sorted(runs[env], reverse=True)):
      results = runs[env][s]
      curves = results["learning_curves"]
      x = np.asarray(curves["window_end_steps"])
      y = np.asarray(
          [
              [np.nan if v is None else v for v in c]
              for c in curves["mean_return"]
          ],
          float,
      )
      with warnings.catch_warnings():  # Windows where no episode ended.
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(y, axis=0)
        stderr = np.nanstd(y, axis=0, ddof=1) / np.sqrt(
            np.sum(~np.isnan(y), axis=0)
        )
      ax.plot(x, mean, color=f"C{i}", label=_label(s))
      ax.fill_between(
          x, mean - stderr, mean + stderr, color=f"C{i}", alpha=0.25, lw=0
      )
    randoms = [
        r["summary"]["random_return_mean"]
        for r in runs[env].values()
        if r["summary"].get("random_return_mean") is not None
    ]
    if randoms:
      ax.axhline(
          np.mean(randoms), color="gray", ls="--", lw=1, label="random policy"
      )
    seeds = next(iter(runs[env].values()))["args"]["seeds"]
    ax.set(
        title=f"{env} ({seeds} seeds, ± s.e.)",
        xlabel="environment steps",
        ylabel="episodic return",
    )
    ax.legend(loc="upper left")
  fig.tight_layout()
  directory = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(directory, "." + os.path.basename(path) + ".tmp")
  fig.savefig(tmp, format="png", dpi=100)
  os.replace(tmp, path)
  plt.close(fig)


def main(argv):
  """Prints the table of the JSON files in `argv` (and plots to `--plot`)."""
  paths = argv[1:]
  if not paths:
    raise app.UsageError("give stream_q.py JSON files as arguments")
  for path in paths:
    if not os.path.isfile(path):
      raise app.UsageError(f"no such JSON file: {path!r}")
  if FLAGS.plot and not os.path.isdir(
      os.path.dirname(os.path.abspath(FLAGS.plot))
  ):
    raise app.UsageError(f"--plot={FLAGS.plot!r}: directory does not exist")
  runs = load(paths)
  print(table(runs))
  if FLAGS.plot:
    plot(runs, FLAGS.plot)
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  app.run(main)
