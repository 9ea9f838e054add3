"""The benchmark's whole-network case, `--cases=sparsify` (benchlib/networks).

The parent's bookkeeping runs with a fake child: each measurement's minimum
over its processes, every ratio from the run's own figures, the Markdown
after its command. A real child (Haiku's ResNet-50, a minute or more on a
2-core machine) runs in the slow step.
"""

from tests import env  # noqa: F401

import json
import subprocess
import sys

from absl.testing import absltest

from scripts.benchlib import networks
from tests import test_utils

_SETTINGS = networks.Settings(processes=2, repeats=1)


def _fake(calls):
  """A child: the model's init 2 s first, 0.5 s steady; sparsify 3 s, 0.25 s.

  The first process of each task is slower (x2), so only a minimum over the
  processes gives these figures.
  """

  def run(task):
    calls.append(task)
    slow = 2.0 if sum(c == task for c in calls) == 1 else 1.0
    first, steady = (2.0, 0.5) if task["case"] == "model_init" else (3.0, 0.25)
    return {
        "first": {"wall": slow * first, "cpu": slow * first / 2},
        "steady": slow * steady,
        "parameters": 25557032,
        "kernels": 54,
        "kernel_zero_fraction": 0.9,
        "jax_preloaded": False,
    }

  return run


class SparsifyCaseTest(absltest.TestCase):

  def test_only_with_its_case(self):
    self.assertEqual(
        networks.measure(
            ["matrix", "mlp"], _SETTINGS, run=_fake([]), log=lambda _: None
        ),
        [],
    )

  def test_every_task_runs_in_each_process_and_keeps_the_minimum(self):
    calls = []
    records = networks.measure(
        ["sparsify"], _SETTINGS, run=_fake(calls), log=lambda _: None
    )
    self.assertLen(calls, 2 * len(networks.tasks(_SETTINGS)))
    self.assertEqual(
        [
            (t["case"], t.get("method"), t.get("jit"))
            for t in networks.tasks(_SETTINGS)
        ],
        [
            ("model_init", None, None),
            ("sparsify", "permutation", False),
            ("sparsify", "permutation", True),
            ("sparsify", "counter", False),
            ("sparsify", "counter", True),
        ],
    )
    rows = {r["measurement"]: r for r in networks.rows(records)}
    self.assertLen(rows, 3 + 4 * 3)
    self.assertEqual(rows["ResNet-50 jit(net.init), steady, s"]["value"], "0.5")
    self.assertEqual(
        rows["sparsify permutation: first call, wall s"],
        {
            "measurement": "sparsify permutation: first call, wall s",
            "value": "3",
            "ratio": "1.50x the model's init",
        },
    )
    self.assertEqual(
        rows["jit(sparsify) counter: steady, s"]["ratio"],
        "0.50x the model's init",
    )
    text = networks.markdown(
        records, {"command": "python scripts/benchmark.py --cases=sparsify"}, 2
    )
    self.assertIn(
        "```\npython scripts/benchmark.py --cases=sparsify\n```", text
    )
    self.assertIn("25.6M parameters, 54 kernels, 90.0%", text)
    self.assertIn(
        "| sparsify counter: steady, s | 0.25 | 0.50x the model's init |", text
    )
    self.assertEqual(networks.markdown([], {"command": "x"}, 2), "")

  def test_a_child_that_found_jax_imported_is_refused(self):
    def run(task):
      return {**_fake([])(task), "jax_preloaded": True}

    with self.assertRaisesRegex(RuntimeError, "imported before"):
      networks.measure(["sparsify"], _SETTINGS, run=run, log=lambda _: None)

  def test_the_benchmark_accepts_the_case(self):
    probe = (
        "import sys; sys.argv = ['benchmark.py', '--cases=sparsify'];"
        "from absl import flags; sys.path.insert(0, '.');"
        "import runpy; g = runpy.run_path('scripts/benchmark.py');"
        "flags.FLAGS(sys.argv); print(g['_cases']())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=test_utils.ROOT,
        env=test_utils.subprocess_env(),
        check=False,
    )
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    self.assertEqual(proc.stdout.strip().splitlines()[-1], "['sparsify']")

  @test_utils.slow
  def test_a_real_child_sparsifies_a_resnet50(self):
    task = {"case": "sparsify", "method": "counter", "jit": True, "repeats": 1}
    result = networks.spawn()(task)
    self.assertEqual(result["kernels"], 54)
    self.assertGreater(result["parameters"], 25_000_000)
    self.assertAlmostEqual(result["kernel_zero_fraction"], 0.9, places=3)
    self.assertFalse(result["jax_preloaded"])
    self.assertGreater(result["first"]["wall"], result["steady"])
    json.dumps(result)


if __name__ == "__main__":
  absltest.main()
