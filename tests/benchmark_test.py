"""scripts/benchmark.py runs end to end at tiny sizes and writes honest JSON.

The script is run as a subprocess, as CI's smoke test and a user would run it;
the tests read its JSON. No timing is asserted beyond "positive": figures on a
shared machine are evidence, not contracts.
"""

from tests import env  # noqa: F401

import ast
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

import alberta
from tests import seed_reference

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, "scripts", "benchmark.py")
_SHAPES = ([64, 64], [128, 32])
_METHODS = ("fill", "dense_uniform", "counter", "permutation", "seed",
            "torch_dense", "torch_original")
_TORCH = importlib.util.find_spec("torch") is not None
_ELL = hasattr(alberta, "sparse_init_ell")


def _run(args: list[str], extra_pythonpath: str | None = None,
         timeout: int = 300) -> subprocess.CompletedProcess:
  env_vars = dict(os.environ)
  path = [_ROOT] + ([extra_pythonpath] if extra_pythonpath else [])
  if env_vars.get("PYTHONPATH"):
    path.append(env_vars["PYTHONPATH"])
  env_vars["PYTHONPATH"] = os.pathsep.join(path)
  return subprocess.run([sys.executable, _SCRIPT, *args], capture_output=True,
                        text=True, timeout=timeout, env=env_vars, cwd=_ROOT,
                        check=False)


class BenchmarkScriptTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.json_path = os.path.join(cls.tmp.name, "bench.json")
    cls.plot_path = os.path.join(cls.tmp.name, "bench.png")
    cls.markdown_path = os.path.join(cls.tmp.name, "bench.md")
    cls.proc = _run([
        "--sizes=64x64,128x32", "--repeats=2", "--num_cpu_devices=2",
        "--device_counts=1,2", "--ell_sparsities=0.9,0.99",
        f"--methods={','.join(_METHODS + ('ell',))}",
        f"--json={cls.json_path}", f"--plot={cls.plot_path}",
        f"--markdown={cls.markdown_path}"])
    cls.result = None
    if cls.proc.returncode == 0:
      with open(cls.json_path) as f:
        cls.result = json.load(f)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def setUp(self):
    super().setUp()
    self.assertEqual(self.proc.returncode, 0,
                     msg=f"stdout:\n{self.proc.stdout}\nstderr:\n{self.proc.stderr}")

  def _record(self, method, shape):
    # Dense baselines timed for `ell` at other sparsities carry a `role`.
    found = [r for r in self.result["results"] if r["method"] == method
             and r["shape"] == shape and "role" not in r]
    self.assertLen(found, 1, msg=f"{method} at {shape}")
    return found[0]

  def test_every_method_is_recorded_at_every_shape(self):
    for shape in _SHAPES:
      for method in _METHODS:
        self._record(method, shape)

  @parameterized.parameters("fill", "dense_uniform", "counter", "permutation",
                            "seed")
  def test_jax_methods_have_positive_times_and_consistent_summaries(self, method):
    for shape in _SHAPES:
      r = self._record(method, shape)
      self.assertEqual(r["status"], "ok")
      self.assertLen(r["times_s"], 2)
      self.assertTrue(all(t > 0 for t in r["times_s"]))
      self.assertEqual(r["min_s"], min(r["times_s"]))
      self.assertBetween(r["median_s"], r["min_s"], max(r["times_s"]))
      self.assertAlmostEqual(r["ns_per_entry_min"],
                             r["min_s"] / (shape[0] * shape[1]) * 1e9)

  @parameterized.parameters("fill", "dense_uniform", "counter", "permutation",
                            "seed")
  def test_compiled_memory_counts_exactly_the_float32_output(self, method):
    for shape in _SHAPES:
      mem = self._record(method, shape)["memory"]
      self.assertEqual(mem["compiled_output_bytes"], 4 * shape[0] * shape[1])
      self.assertGreaterEqual(mem["compiled_temp_bytes"], 0)
      self.assertGreaterEqual(mem["compiled_peak_over_output"], 1.0)
      self.assertIn(mem["rss_mode"], ("clear_refs", "getrusage"))

  def test_seed_agrees_with_permutation(self):
    check = self.result["seed_check"]
    self.assertTrue(check["passed"])
    eager = [c for c in check["checks"] if "eager_small" in c]
    self.assertLen(eager, 1)
    self.assertTrue(all(c["bitwise_equal"] for c in eager[0]["eager_small"]))
    timed = [c["shape"] for c in check["checks"] if c.get("against")]
    self.assertCountEqual(timed, _SHAPES)
    self.assertIn("seed vs permutation", self.proc.stdout)

  def test_torch_methods_are_timed_or_skipped_with_a_reason(self):
    for shape in _SHAPES:
      for method in ("torch_dense", "torch_original"):
        r = self._record(method, shape)
        if _TORCH:
          self.assertEqual(r["status"], "ok")
          self.assertGreater(r["min_s"], 0)
        else:
          self.assertEqual(r["status"], "skipped")
          self.assertIn("torch", r["reason"])

  def test_ell_is_timed_against_dense_counter_or_skipped_with_a_reason(self):
    for shape in _SHAPES:
      ell = {r["sparsity"]: r for r in self.result["results"]
             if r["method"] == "ell" and r["shape"] == shape}
      self.assertCountEqual(ell, [0.9, 0.99])
      for sparsity, r in ell.items():
        if not _ELL:
          self.assertEqual(r["status"], "skipped")
          self.assertIn("sparse_init_ell", r["reason"])
          continue
        self.assertEqual(r["status"], "ok")
        self.assertTrue(r["matches_dense_counter"])
        self.assertGreater(r["min_s"], 0)
        # The dense baseline at the same sparsity was timed too.
        dense = [d for d in self.result["results"] if d["method"] == "counter"
                 and d["shape"] == shape and d["sparsity"] == sparsity]
        self.assertLen(dense, 1)
        ratios = [q for q in self.result["ratios"] if q["numerator"] == "ell"
                  and q["shape"] == shape and q["sparsity"] == sparsity]
        self.assertNotEmpty(ratios)

  def test_ratios_against_targets_are_reported_per_shape(self):
    ratios = {(tuple(r["shape"]), r["numerator"], r["denominator"]): r
              for r in self.result["ratios"]}
    for shape in _SHAPES:
      for pair in (("permutation", "counter"), ("counter", "dense_uniform"),
                   ("seed", "counter")):
        r = ratios[(tuple(shape), *pair)]
        self.assertGreater(r["ratio_min"], 0)
        self.assertIsInstance(r["met"], bool)
      self.assertEqual(
          ("torch_original", "counter") in {k[1:] for k in ratios}, _TORCH)
      # From the main records, not from the dense baselines timed for `ell`.
      self.assertAlmostEqual(
          ratios[(tuple(shape), "permutation", "counter")]["ratio_min"],
          self._record("permutation", shape)["min_s"]
          / self._record("counter", shape)["min_s"])
    self.assertIn("Ratios (min times)", self.proc.stdout)

  def test_sharded_runs_cover_device_counts_and_match_one_device(self):
    sharded = self.result["sharded"]
    got = sorted((tuple(r["shape"]), r["devices"]) for r in sharded)
    self.assertEqual(got, sorted((tuple(s), n) for s in _SHAPES for n in (1, 2)))
    for r in sharded:
      self.assertEqual(r["status"], "ok")
      self.assertTrue(r["matches_single_device"])
      # Compiled figures are per device: each holds fan_out / n rows.
      self.assertEqual(r["memory"]["compiled_output_bytes"],
                       4 * r["shape"][0] * r["shape"][1] // r["devices"])

  def test_environment_records_machine_jax_and_devices(self):
    env_ = self.result["environment"]
    self.assertEqual(env_["jax"], jax.__version__)
    self.assertEqual(env_["num_devices"], 2)
    self.assertLen(env_["devices"], 2)
    for field in ("date_utc", "command", "cpu_model", "cpu_count", "platform",
                  "backend", "loadavg_start", "loadavg_end"):
      self.assertIn(field, env_)
    self.assertIn("--sizes=64x64,128x32", env_["command"])

  def test_markdown_holds_the_command_tables_and_seed_check(self):
    with open(self.markdown_path) as f:
      text = f.read()
    self.assertIn(self.result["environment"]["command"], text)
    self.assertIn("| method | shape | devices |", text)
    for method in _METHODS:
      self.assertIn(f"| {method} | 64x64 | 1 |", text)
    self.assertIn("seed vs permutation check: passed.", text)

  def test_plot_is_a_png(self):
    with open(self.plot_path, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

  def test_plot_from_json_redraws_without_benchmarking(self):
    path = os.path.join(self.tmp.name, "replot.png")
    proc = _run([f"--plot_from={self.json_path},{self.json_path}",
                 f"--plot={path}"], timeout=120)
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    self.assertNotIn("Ratios", proc.stdout)  # Nothing was timed.
    with open(path, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


class BenchmarkEdgeCasesTest(parameterized.TestCase):

  def test_torch_absent_is_recorded_as_skipped_with_the_reason(self):
    with tempfile.TemporaryDirectory() as tmp:
      # A `torch` package that fails to import shadows the real one.
      os.makedirs(os.path.join(tmp, "torch"))
      with open(os.path.join(tmp, "torch", "__init__.py"), "w") as f:
        f.write("raise ImportError('torch hidden by the test')\n")
      json_path = os.path.join(tmp, "bench.json")
      proc = _run(["--sizes=16x16", "--repeats=1", "--nosharded",
                   "--methods=fill,torch_dense,torch_original",
                   f"--json={json_path}"], extra_pythonpath=tmp)
      self.assertEqual(proc.returncode, 0, msg=proc.stderr)
      with open(json_path) as f:
        result = json.load(f)
    by_method = {r["method"]: r for r in result["results"]}
    self.assertEqual(by_method["fill"]["status"], "ok")
    for method in ("torch_dense", "torch_original"):
      self.assertEqual(by_method[method]["status"], "skipped")
      self.assertIn("torch hidden by the test", by_method[method]["reason"])
    self.assertIsNone(result["environment"]["torch"])

  @parameterized.parameters("--sizes=4096", "--sizes=0x5", "--methods=sort")
  def test_malformed_flags_are_rejected(self, flag):
    proc = _run([flag, "--nosharded"], timeout=120)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("--", proc.stderr)

  def test_benchmark_seed_copy_matches_the_tests_transcription(self):
    # Load the function from the script's source without importing the script
    # (which would define its absl flags in this process).
    with open(_SCRIPT) as f:
      tree = ast.parse(f.read())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                and n.name == "seed_sparse_init")
    namespace = {"jax": jax, "jnp": jax.numpy, "jr": jax.random}
    exec(compile(ast.Module([func], []), _SCRIPT, "exec"), namespace)  # pylint: disable=exec-used
    for shape, sparsity, init_type in (((16, 10), 0.9, "uniform"),
                                       ((7, 33), 0.5, "normal"),
                                       ((5, 1), 0.99, "uniform")):
      key = jax.random.key(3)
      got = namespace["seed_sparse_init"](key, shape, sparsity, init_type)
      want = seed_reference.seed_sparse_init(key, shape, sparsity, init_type)
      np.testing.assert_array_equal(np.asarray(got).view(np.uint32),
                                    np.asarray(want).view(np.uint32))


if __name__ == "__main__":
  absltest.main()
