"""The benchmark scripts run end to end at tiny sizes and report honestly.

scripts/benchmark.py (every case, the everyday path's fresh processes
included), scripts/memory_report.py and scripts/checkpoint_cost.py are run as
subprocesses at tiny sizes, as CI's smoke test and a user would run them (in
the slow step); the tests read their JSON and Markdown. The default run parses
the flags, runs one fresh-process child and tests the helper layer
(`scripts/benchlib`) in process. No timing is asserted beyond "positive":
figures on a shared machine are evidence, not contracts.
"""

from tests import env  # noqa: F401

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

import alberta
from scripts.benchlib import harness
from scripts.benchlib import layer
from scripts.benchlib import plot
from scripts.benchlib import ratios as ratios_lib
from scripts.benchlib import report
from scripts.benchlib import wide
from tests import test_utils
from third_party import alberta_framework

_ROOT = test_utils.ROOT
_BENCHMARK = os.path.join(_ROOT, "scripts", "benchmark.py")
_MEMORY_REPORT = os.path.join(_ROOT, "scripts", "memory_report.py")
_CHECKPOINT_COST = os.path.join(_ROOT, "scripts", "checkpoint_cost.py")
_SHAPES = ([64, 64], [128, 32])
_METHODS = (
    "fill",
    "dense_uniform",
    "counter",
    "permutation",
    "reference",
    "torch_dense",
    "torch_original",
)
_TORCH = importlib.util.find_spec("torch") is not None


def _run(
    script: str,
    args: list[str],
    extra_pythonpath: str | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
  env_vars = test_utils.subprocess_env(
      *([extra_pythonpath] if extra_pythonpath else [])
  )
  return subprocess.run(
      [sys.executable, script, *args],
      capture_output=True,
      text=True,
      timeout=timeout,
      env=env_vars,
      cwd=_ROOT,
      check=False,
  )


# The whole benchmark (every method and shape, and 15 fresh processes for the
# everyday path) takes ~60 s of CPU: it runs in the slow step; HelperLayerTest
# and LayerTest test its layers in process.
@test_utils.slow
class BenchmarkScriptTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.json_path = os.path.join(cls.tmp.name, "bench.json")
    cls.plot_path = os.path.join(cls.tmp.name, "bench.png")
    cls.markdown_path = os.path.join(cls.tmp.name, "bench.md")
    # Every case (the default --cases), the everyday path's at a tiny shape.
    cls.args = [
        "--shape=64,64",
        "--shape=128,32",
        "--repeats=2",
        "--num_cpu_devices=2",
        "--device_counts=1,2",
        "--ell_sparsities=0.9,0.99",
        f"--methods={','.join(_METHODS + ('ell',))}",
        "--layer_shape=64,32",
        "--layer_chunk_rows=16",
        "--fresh_processes=1",
        "--wide_widths=32",
        f"--json={cls.json_path}",
        f"--plot={cls.plot_path}",
        f"--markdown={cls.markdown_path}",
    ]
    cls.proc = _run(_BENCHMARK, cls.args)
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
    self.assertEqual(
        self.proc.returncode,
        0,
        msg=f"stdout:\n{self.proc.stdout}\nstderr:\n{self.proc.stderr}",
    )

  def _record(self, method, shape):
    # Dense baselines timed for `ell` at other sparsities carry a `role`.
    found = [
        r
        for r in self.result["results"]
        if r["method"] == method and r["shape"] == shape and "role" not in r
    ]
    self.assertLen(found, 1, msg=f"{method} at {shape}")
    return found[0]

  def test_every_method_is_recorded_at_every_shape(self):
    for shape in _SHAPES:
      for method in _METHODS:
        self._record(method, shape)

  @parameterized.parameters(
      "fill", "dense_uniform", "counter", "permutation", "reference"
  )
  def test_jax_methods_have_positive_times_and_consistent_summaries(
      self, method
  ):
    for shape in _SHAPES:
      r = self._record(method, shape)
      self.assertEqual(r["status"], "ok")
      self.assertLen(r["times_s"], 2)
      self.assertTrue(all(t > 0 for t in r["times_s"]))
      self.assertEqual(r["min_s"], min(r["times_s"]))
      self.assertBetween(r["median_s"], r["min_s"], max(r["times_s"]))
      self.assertAlmostEqual(
          r["ns_per_entry_min"], r["min_s"] / (shape[0] * shape[1]) * 1e9
      )

  @parameterized.parameters(
      "fill", "dense_uniform", "counter", "permutation", "reference"
  )
  def test_compiled_memory_counts_exactly_the_float32_output(self, method):
    for shape in _SHAPES:
      mem = self._record(method, shape)["memory"]
      self.assertEqual(mem["compiled_output_bytes"], 4 * shape[0] * shape[1])
      self.assertGreaterEqual(mem["compiled_temp_bytes"], 0)
      self.assertGreaterEqual(mem["compiled_peak_over_output"], 1.0)
      self.assertIn(mem["rss_mode"], ("clear_refs", "getrusage"))

  def test_reference_agrees_with_permutation(self):
    check = self.result["reference_check"]
    self.assertTrue(check["passed"])
    eager = [c for c in check["checks"] if "eager_small" in c]
    self.assertLen(eager, 1)
    self.assertTrue(all(c["bitwise_equal"] for c in eager[0]["eager_small"]))
    timed = [c["shape"] for c in check["checks"] if c.get("against")]
    self.assertCountEqual(timed, _SHAPES)
    self.assertIn("reference vs permutation", self.proc.stdout)

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

  def test_ell_is_timed_against_dense_counter_and_matches_it(self):
    for shape in _SHAPES:
      ell = {
          r["sparsity"]: r
          for r in self.result["results"]
          if r["method"] == "ell" and r["shape"] == shape
      }
      self.assertCountEqual(ell, [0.9, 0.99])
      for sparsity, r in ell.items():
        self.assertEqual(r["status"], "ok")
        self.assertTrue(r["matches_dense_counter"])
        self.assertGreater(r["min_s"], 0)
        # The dense baseline at the same sparsity was timed too.
        dense = [
            d
            for d in self.result["results"]
            if d["method"] == "counter"
            and d["shape"] == shape
            and d["sparsity"] == sparsity
        ]
        self.assertLen(dense, 1)
        ratios = [
            q
            for q in self.result["ratios"]
            if q["numerator"] == "ell"
            and q["shape"] == shape
            and q["sparsity"] == sparsity
        ]
        self.assertNotEmpty(ratios)

  def test_ratios_against_targets_are_reported_per_shape(self):
    ratios = {
        (tuple(r["shape"]), r["numerator"], r["denominator"]): r
        for r in self.result["ratios"]
    }
    for shape in _SHAPES:
      for pair in (
          ("reference", "permutation"),
          ("counter", "dense_uniform"),
          ("reference", "counter"),
      ):
        r = ratios[(tuple(shape), *pair)]
        self.assertGreater(r["ratio_min"], 0)
        self.assertIsInstance(r["met"], bool)
      # Informational: both methods avoid the reference's sort.
      self.assertIsNone(ratios[(tuple(shape), "permutation", "counter")]["met"])
      self.assertEqual(
          ("torch_original", "counter") in {k[1:] for k in ratios}, _TORCH
      )
      # From the main records, not from the dense baselines timed for `ell`.
      self.assertAlmostEqual(
          ratios[(tuple(shape), "permutation", "counter")]["ratio_min"],
          self._record("permutation", shape)["min_s"]
          / self._record("counter", shape)["min_s"],
      )
    self.assertIn("Ratios (min times)", self.proc.stdout)

  def test_sharded_runs_cover_device_counts_and_match_one_device(self):
    sharded = self.result["sharded"]
    got = sorted((tuple(r["shape"]), r["devices"]) for r in sharded)
    self.assertEqual(
        got, sorted((tuple(s), n) for s in _SHAPES for n in (1, 2))
    )
    for r in sharded:
      self.assertEqual(r["status"], "ok")
      self.assertTrue(r["matches_single_device"])
      # Compiled figures are per device: each holds fan_out / n rows.
      self.assertEqual(
          r["memory"]["compiled_output_bytes"],
          4 * r["shape"][0] * r["shape"][1] // r["devices"],
      )

  def test_environment_records_machine_jax_devices_and_the_command(self):
    env_ = self.result["environment"]
    self.assertEqual(env_["jax"], jax.__version__)
    self.assertEqual(env_["num_devices"], 2)
    self.assertLen(env_["devices"], 2)
    for field in (
        "date_utc",
        "cpu_model",
        "cpu_count",
        "platform",
        "backend",
        "loadavg_start",
        "loadavg_end",
    ):
      self.assertIn(field, env_)
    self.assertEqual(
        env_["command"], report.command_line("scripts/benchmark.py", self.args)
    )

  def test_markdown_starts_with_the_command_then_every_table(self):
    with open(self.markdown_path) as f:
      text = f.read()
    command = "```\n" + self.result["environment"]["command"] + "\n```\n"
    self.assertIn(command, text)
    self.assertStartsWith(text.split("\n\n", 1)[1], "Command:")
    after = text[text.index(command) + len(command) :]
    # The tables, in order: the headline, all methods, sharded, ratios.
    tables = [
        after.index(h)
        for h in (
            report.HEADLINE_HEADER,
            "| method | shape | devices |",
            "Sharded, from the same command",
            "| shape | ratio |",
        )
    ]
    self.assertEqual(tables, sorted(tables))
    for method in _METHODS:
      self.assertIn(f"| {method} | 64x64 | 1 |", after)
    self.assertIn("reference vs permutation check: passed.", after)
    # The everyday path last, after the same command again.
    last = after[after.index("reference vs permutation check") :]
    self.assertIn(report.layer_intro(1), last)
    table = last[last.index(command) + len(command) :].lstrip("\n")
    self.assertStartsWith(table, "| measurement | value | ratio |")
    # Then the wide MLP's section, after the same command again.
    table, wide_part = table.split(f"\n\n{report.wide_intro(1)}")
    self.assertLen(
        table.strip().splitlines(), 2 + len(self.result["layer_rows"])
    )
    wide_table = wide_part[wide_part.index(command) + len(command) :]
    self.assertLen(
        wide_table.strip().splitlines(), 2 + len(self.result["wide_rows"])
    )

  def test_wide_mlp_ran_each_initializer_and_matches_the_reference(self):
    self.assertEqual(
        [r["task"]["init"] for r in self.result["wide"]], list(wide.INITS)
    )
    self.assertEqual(wide.reference_agrees(self.result["wide"]), [True])
    self.assertEqual(self.result["wide_rows"], wide.rows(self.result["wide"]))

  def test_layer_cases_each_ran_once_and_chunking_kept_the_matrix(self):
    cases = [r["task"]["case"] for r in self.result["layer"]]
    self.assertEqual(
        cases,
        ["import"]
        + ["mlp"] * 8
        + ["cache"] * 3
        + ["chunk"] * 2
        + ["cores"] * 4,
    )
    self.assertEqual(layer.chunks_agree(self.result["layer"]), [True, True])
    # 2 import rows, 5 per MLP initializer, 2 per cached one, 2 per chunked
    # method, 1 per method pinned: each from this run's records.
    self.assertEqual(
        self.result["layer_rows"], layer.rows(self.result["layer"])
    )
    self.assertLen(self.result["layer_rows"], 2 + 5 * 4 + 2 * 3 + 2 * 2 + 2)
    pinned = [r for r in self.result["layer"] if r["task"].get("cores") == "1"]
    self.assertTrue(all(r["result"]["cores"] == 1 for r in pinned))

  def test_plot_is_a_png(self):
    with open(self.plot_path, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

  def test_plot_from_json_redraws_without_benchmarking(self):
    path = os.path.join(self.tmp.name, "replot.png")
    proc = _run(
        _BENCHMARK,
        [f"--plot_from={self.json_path},{self.json_path}", f"--plot={path}"],
        timeout=120,
    )
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    self.assertNotIn("Ratios", proc.stdout)  # Nothing was timed.
    with open(path, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


class BenchmarkEdgeCasesTest(parameterized.TestCase):

  def test_torch_absent_is_skipped_with_the_reason(self):
    with tempfile.TemporaryDirectory() as tmp:
      # A `torch` package that fails to import shadows the real one.
      os.makedirs(os.path.join(tmp, "torch"))
      with open(os.path.join(tmp, "torch", "__init__.py"), "w") as f:
        f.write("raise ImportError('torch hidden by the test')\n")
      json_path = os.path.join(tmp, "bench.json")
      proc = _run(
          _BENCHMARK,
          [
              "--shape=16,16",
              "--shape=8,4",
              "--repeats=1",
              "--cases=matrix",
              "--methods=fill,torch_dense,torch_original",
              f"--json={json_path}",
          ],
          extra_pythonpath=tmp,
      )
      self.assertEqual(proc.returncode, 0, msg=proc.stderr)
      with open(json_path) as f:
        result = json.load(f)
    self.assertEqual(result["settings"]["shapes"], [[16, 16], [8, 4]])
    by_method = {(r["method"], tuple(r["shape"])): r for r in result["results"]}
    self.assertEqual(by_method[("fill", (16, 16))]["status"], "ok")
    for method in ("torch_dense", "torch_original"):
      self.assertEqual(by_method[(method, (8, 4))]["status"], "skipped")
      self.assertIn(
          "torch hidden by the test", by_method[(method, (8, 4))]["reason"]
      )
    self.assertIsNone(result["environment"]["torch"])

  def test_malformed_flags_are_rejected_naming_the_flag(self):
    # One process parses each command line in turn (None: accepted).
    cases = [
        (["--shape=8,8", "--cases=layer,matrix"], None),
        (["--shape=4096"], "--shape"),
        (["--shape=0,5"], "--shape"),
        (["--shape=4096x4096"], "--shape"),
        (["--sizes=4096"], "sizes"),
        (["--methods=sort"], "--methods"),
        (["--cases=layer,io"], "--cases"),
        (["--layer_shape=8"], "--layer_shape"),
        (["--layer_chunk_rows=0"], "--layer_chunk_rows"),
        (["--wide_widths=0"], "--wide_widths"),
        (["--fresh_processes=0"], "--fresh_processes"),
        (["--cases=layer", "--plot=x.png"], "--plot"),
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _FLAG_PROBE,
            _BENCHMARK,
            json.dumps([argv for argv, _ in cases]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=test_utils.subprocess_env(),
        cwd=_ROOT,
        check=False,
    )
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    for (argv, message), error in zip(cases, errors, strict=True):
      if message is None:
        self.assertIsNone(error, msg=argv)
      else:
        self.assertIn(message, error or "", msg=argv)

  def test_deprecated_spellings_still_parse_with_a_warning(self):
    # `seed` for `reference` in --methods, --check_seed for --check_reference.
    cases = [
        ["--methods=seed,counter"],
        ["--methods=reference,counter"],
        ["--nocheck_seed"],
        ["--check_reference", "--check_seed"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _ALIAS_PROBE, _BENCHMARK, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=120,
        env=test_utils.subprocess_env(),
        cwd=_ROOT,
        check=False,
    )
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    self.assertEqual(got[0], [["counter", "reference"], True])
    self.assertEqual(got[1], got[0])
    self.assertEqual(got[2][1], False)
    self.assertIn("not both", got[3])
    self.assertIn("--methods=seed is deprecated; use reference.", proc.stderr)
    self.assertIn(
        "--check_seed is deprecated; use --check_reference.", proc.stderr
    )
    self.assertEqual(proc.stderr.count("deprecated"), 2)

  def test_a_layer_child_imports_jax_itself_and_answers_in_json(self):
    proc = _run(
        _BENCHMARK,
        [layer.CHILD_FLAG + json.dumps({"case": "import"})],
        timeout=120,
    )
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    self.assertFalse(result["jax_preloaded"])
    self.assertGreater(result["jax"]["wall"], 0)
    self.assertGreater(result["alberta_extra"]["cpu"], 0)


# Loads scripts/benchmark.py as a module (not __main__: no child dispatch) and
# parses each command line of argv[2] as its main would; prints the errors.
_FLAG_PROBE = r"""
import importlib.util, json, sys
from absl import app, flags
spec = importlib.util.spec_from_file_location("benchmark", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
errors = []
for argv in json.loads(sys.argv[2]):
  try:
    flags.FLAGS(["benchmark.py", *argv])
    bench._cases()
    errors.append(None)
  except (flags.Error, app.UsageError) as e:
    errors.append(str(e))
  flags.FLAGS.unparse_flags()
print(json.dumps(errors))
"""


# As _FLAG_PROBE, printing for each command line its methods and whether the
# reference check runs, or the error.
_ALIAS_PROBE = r"""
import importlib.util, json, sys
from absl import app, flags
spec = importlib.util.spec_from_file_location("benchmark", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
got = []
for argv in json.loads(sys.argv[2]):
  try:
    flags.FLAGS(["benchmark.py", *argv])
    got.append([bench._methods(), bench._check_reference()])
  except (flags.Error, app.UsageError) as e:
    got.append(str(e))
  flags.FLAGS.unparse_flags()
print(json.dumps(got))
"""


def _wide_record(init, width, first, steady, digest="d"):
  result = {
      "first": {"wall": first, "cpu": first},
      "stages": {
          "trace": 0.1,
          "lower": 0.1,
          "compile": first - 0.3,
          "run": 0.1,
      },
      "steady": steady,
  }
  if init in ("sparse_permutation", "reference"):
    result["digest"] = digest
  return {
      "task": {"case": "wide", "init": init, "width": width},
      "result": result,
  }


class WideTest(absltest.TestCase):

  def test_rows_judge_the_default_method_against_haiku_and_its_targets(self):
    records = [
        _wide_record("haiku_default", 2048, 1.0, 0.1),
        _wide_record("sparse_permutation", 2048, 1.4, 0.4),
        _wide_record("reference", 2048, 5.0, 4.0),
        _wide_record("floor", 2048, 0.5, 0.3),
    ]
    rows = {r["measurement"]: r for r in wide.rows(records)}
    self.assertEqual(
        rows["MLP 3x2048: reference vs sparse_permutation parameters"]["value"],
        "same",
    )
    first = rows["MLP 3x2048 sparse_permutation: first jit(net.init), wall s"]
    self.assertEqual(first["ratio"], "1.40x haiku_default (target <= 1.5: met)")
    steady = rows["MLP 3x2048 sparse_permutation: steady jit(net.init), ms"]
    self.assertEqual(steady["value"], "400")
    self.assertEqual(
        steady["ratio"], "4.00x haiku_default (target <= 3.5: **missed**)"
    )
    self.assertEqual(
        rows["MLP 3x2048 reference: steady jit(net.init), ms"]["ratio"],
        "40.00x haiku_default",
    )
    self.assertEqual(
        rows["MLP 3x2048 floor: steady, ms"]["ratio"], "3.00x haiku_default"
    )
    self.assertEqual(
        rows["MLP 3x2048 reference: trace / lower / compile / run, s"]["value"],
        "0.10 / 0.10 / 4.70 / 0.10",
    )

  def test_reference_check_fails_on_different_parameters(self):
    records = [
        _wide_record("sparse_permutation", 64, 1, 1, digest="a"),
        _wide_record("reference", 64, 1, 1, digest="b"),
    ]
    self.assertEqual(wide.reference_agrees(records), [False])

  def test_tasks_are_every_initializer_at_every_width(self):
    tasks = wide.tasks(wide.Settings(widths=(8, 16), processes=1))
    self.assertEqual(
        [(t["width"], t["init"]) for t in tasks],
        [(w, i) for w in (8, 16) for i in wide.INITS],
    )


class MemoryReportTest(absltest.TestCase):

  # A subprocess compiling every initializer: ~10 s of CPU.
  @test_utils.slow
  def test_markdown_is_the_command_then_a_row_per_initializer(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "memory.md")
      args = [
          "--shape=64,32",
          "--num_cpu_devices=2",
          "--chunk_rows=None,16,unchunked",
          f"--markdown={path}",
      ]
      proc = _run(_MEMORY_REPORT, args, timeout=300)
      self.assertEqual(proc.returncode, 0, msg=proc.stderr)
      with open(path) as f:
        text = f.read()
    command = report.command_line("scripts/memory_report.py", args)
    self.assertStartsWith(text, f"Command:\n\n```\n{command}\n```\n")
    self.assertIn(f"k = {alberta.num_zeros(32, 0.9)} zeros per row", text)
    rows = [
        line.split(" | ")
        for line in text.splitlines()
        if line.startswith("| ") and "MiB" not in line
    ]
    # reference and uniform: sharded and one device; alberta's two methods:
    # three chunks sharded and one device.
    self.assertLen(rows, 2 * 2 + 2 * (3 + 1))
    for row in rows:
      self.assertGreaterEqual(float(row[-1].rstrip(" |")), 1.0)  # peak / output
    self.assertIn(text, proc.stdout)


class CheckpointCostTest(absltest.TestCase):

  # Orbax's import and a save and four restores: ~5 s of CPU.
  @test_utils.slow
  def test_markdown_is_the_command_then_a_row_per_shape(self):
    args = ["--shape=16,16", "--shape=8,8", "--repeats=1"]
    proc = _run(_CHECKPOINT_COST, args, timeout=300)
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    command = report.command_line("scripts/checkpoint_cost.py", args)
    self.assertStartsWith(proc.stdout, f"Command:\n\n```\n{command}\n```\n")
    rows = [
        line
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and "float32" in line
    ]
    self.assertEqual(
        [r.split(" | ")[0] for r in rows], ["| 16x16 float32", "| 8x8 float32"]
    )


def _record(method, shape=(4, 8), status="ok", devices=1, **fields):
  """A benchmark record as `harness.time_jax` writes it, with given figures."""
  if status != "ok":
    return harness.skipped(method, shape, "why not", **fields)
  record = {
      "method": method,
      "shape": list(shape),
      "devices": devices,
      "status": "ok",
      "times_s": [2.0, 1.0, 3.0],
      "output_bytes": 128,
      "memory": {
          "compiled_output_bytes": 128 // devices,
          "compiled_temp_bytes": 64,
          "rss_peak_delta_bytes": None,
      },
      **fields,
  }
  return harness.summarize(record, shape[0] * shape[1])


class HelperLayerTest(parameterized.TestCase):

  def test_summary_figures_follow_from_the_times_and_bytes(self):
    r = _record("counter", devices=2)
    self.assertEqual((r["min_s"], r["median_s"]), (1.0, 2.0))
    self.assertAlmostEqual(r["ns_per_entry_min"], 1.0 / 32 * 1e9)
    self.assertAlmostEqual(
        r["memory"]["compiled_peak_over_output"], (64 + 64) / 64
    )  # per device: 128 / 2 bytes
    self.assertNotIn("rss_delta_over_output", r["memory"])

  def test_text_and_markdown_tables_say_the_same_figures(self):
    records = [
        _record("counter", sparsity=0.9),
        _record("torch_dense", status="skipped", sparsity=None),
    ]
    text = report.table(records).splitlines()
    self.assertEqual(len(text[1]), len(text[0]))  # the rule under the header
    self.assertEqual(
        text[2].split(),
        [
            "counter",
            "4x8",
            "1",
            "0.9",
            "1.0000",
            "2.0000",
            "31250000.000",
            "0.00",
            "0.0",
            "0.0",
            "1.500",
            "-",
            "-",
            "3",
        ],
    )
    self.assertEqual(
        text[3].split()[:5], ["torch_dense", "4x8", "1", "-", "skipped:"]
    )
    md = report.markdown_table(records)
    self.assertEqual(md[1], "|---|---|" + "---:|" * 9)
    self.assertEqual(
        md[2],
        "| counter | 4x8 | 1 | 0.9 | 1.0000 | 2.0000 | "
        "31250000.00 | 0.00 | 1.500 |  | 3 |",
    )
    self.assertEqual(
        md[3], "| torch_dense | 4x8 | 1 |  | skipped: why not | | | | | | |"
    )
    self.assertTrue(all(line.count("|") == md[0].count("|") for line in md))

  def test_ratios_compare_main_records_and_judge_targets(self):
    records = [
        _record("counter", sparsity=0.9),
        _record("permutation", sparsity=0.9, times_s=[30.0]),
        _record("reference", sparsity=0.9, times_s=[15.0]),
        _record("dense_uniform", times_s=[0.5]),
        # A dense baseline for `ell` must not replace the main counter.
        _record("counter", sparsity=0.99, role="ell_baseline", times_s=[100.0]),
        _record("ell", sparsity=0.99, times_s=[10.0]),
    ]
    got = {
        (r["numerator"], r["denominator"], r.get("measure")): r
        for r in ratios_lib.ratios(records)
    }
    self.assertEqual(got[("permutation", "counter", None)]["ratio_min"], 30.0)
    self.assertIsNone(got[("permutation", "counter", None)]["met"])
    # The reference-exact method is held to "no slower than the reference".
    self.assertEqual(got[("reference", "permutation", None)]["ratio_min"], 0.5)
    self.assertFalse(got[("reference", "permutation", None)]["met"])
    self.assertEqual(got[("counter", "dense_uniform", None)]["ratio_min"], 2.0)
    self.assertFalse(got[("counter", "dense_uniform", None)]["met"])
    self.assertAlmostEqual(got[("ell", "counter", None)]["ratio_min"], 0.1)
    self.assertLen(report.ratio_table(list(got.values())).splitlines(), 6)

  def test_headline_is_both_methods_against_the_reference_and_uniform_per_shape(
      self,
  ):
    big = (4096, 4096)
    records = [
        _record("permutation", times_s=[0.00017]),
        _record("reference", times_s=[0.00465]),
        _record("counter", times_s=[0.00036]),
        _record("dense_uniform", times_s=[0.00043]),
        _record("permutation", big, times_s=[1.0]),
        _record("reference", big, times_s=[7.24]),
        _record("counter", big, times_s=[0.207]),
        _record("dense_uniform", big, times_s=[0.198]),
        # Long times keep three digits without an exponent; a ratio
        # that rounds to 10.0 reads 10x.
        _record("permutation", (8, 4), times_s=[12.39]),
        _record("reference", (8, 4), times_s=[123.4]),
        _record("counter", (8, 4), times_s=[0.09999]),
        _record("dense_uniform", (8, 4), times_s=[1234.5]),
        # Neither a sharded run nor an `ell` baseline is the headline.
        _record("counter", big, devices=2, times_s=[9.0]),
        _record("counter", big, role="ell_baseline", times_s=[9.0]),
        # A shape without the reference is left out.
        _record("permutation", (8, 8)),
        _record("counter", (8, 8)),
        _record("dense_uniform", (8, 8)),
    ]
    self.assertEqual(
        report.headline_markdown(records),
        [
            report.HEADLINE_HEADER,
            "|---|---:|---:|---:|---:|---:|---:|",
            (
                "| 4 x 8 | 0.170 ms | 4.65 ms | **27x** | 0.360 ms | 0.430 ms |"
                " 0.84x |"
            ),
            (
                "| 4096 x 4096 | 1.00 s | 7.24 s | **7.2x** | 0.207 s | 0.198 s"
                " | 1.05x |"
            ),
            "| 8 x 4 | 12.4 s | 123 s | **10x** | 100.0 ms | 1234 s | 0.00x |",
        ],
    )
    self.assertEqual(report.headline_markdown(records[-3:]), [])

  @parameterized.parameters(
      ("4096,4096", (4096, 4096)), (" 65536 , 1024 ", (65536, 1024))
  )
  def test_parse_shape_reads_rows_comma_cols(self, text, shape):
    self.assertEqual(harness.parse_shape(text), shape)

  @parameterized.parameters("4096", "4096x4096", "0,5", "4,5,6", "a,b")
  def test_parse_shape_rejects_other_syntax_naming_the_text(self, text):
    with self.assertRaisesRegex(ValueError, repr(text)):
      harness.parse_shape(text)

  def test_compare_tells_bits_from_signed_zeros(self):
    a = np.array([0.0, 1.0], np.float32)
    got = harness.compare(a, np.array([-0.0, 1.0], np.float32))
    self.assertEqual(
        (
            got["bitwise_equal"],
            got["equal_up_to_zero_sign"],
            got["signed_zero_mismatches"],
        ),
        (False, True, 1),
    )
    self.assertFalse(harness.compare(a, a[:1])["equal_up_to_zero_sign"])

  def test_command_line_quotes_what_the_shell_would_split(self):
    self.assertEqual(
        report.command_line("scripts/x.py", ["--a=1", "--b=c d"]),
        "python scripts/x.py --a=1 '--b=c d'",
    )

  def test_merged_runs_let_a_later_file_win(self):
    with tempfile.TemporaryDirectory() as tmp:
      paths = []
      for i, min_s in enumerate((1.0, 2.0)):
        paths.append(os.path.join(tmp, f"{i}.json"))
        with open(paths[-1], "w") as f:
          json.dump(
              {
                  "results": [{
                      "method": "fill",
                      "shape": [4, 4],
                      "devices": 1,
                      "min_s": min_s,
                  }],
                  "sharded": [],
              },
              f,
          )
      results, sharded = plot.merged(paths)
    self.assertEqual([r["min_s"] for r in results], [2.0])
    self.assertEqual(sharded, [])


def _layer_result(task):
  """A child's answer to `task`, its figures a function of the task."""
  case = task["case"]
  if case == "import":
    return {
        "jax": {"wall": 2.0, "cpu": 1.0},
        "alberta_extra": {"wall": 0.5, "cpu": 0.25},
    }
  if case == "mlp":
    first = {"haiku_default": 2.0, "uniform": 1.0}.get(task["init"], 3.0)
    out = {"first": {"wall": first, "cpu": first / 2}}
    return {**out, "steady": first / 1e3} if task["jit"] else out
  if case == "cache":
    return {
        "cold": {"wall": 4.0, "cpu": 2.0},
        "warm": {"wall": 1.0, "cpu": 1.0},
    }
  if case == "chunk":
    return {"whole": 0.4, "host_loop": 0.2, "in_graph": 0.8, "agree": True}
  return {
      "steady": 0.3 if task["cores"] == "1" else 0.1,
      "cores": 1 if task["cores"] == "1" else 2,
  }


class LayerTest(parameterized.TestCase):
  """The everyday path's parent side, with children answered in process."""

  _SETTINGS = layer.Settings(
      shape=(64, 32), chunk_rows=16, processes=2, repeats=1
  )

  def _measure(self, cases, answer=_layer_result):
    seen = []

    def run(task):
      seen.append(task)
      return answer(task)

    return layer.measure(cases, self._SETTINGS, run, log=lambda _: None), seen

  def test_each_task_runs_in_as_many_processes_as_asked_keeping_the_minimum(
      self,
  ):
    calls = iter([{"steady": 0.5, "cores": 2}, {"steady": 0.2, "cores": 2}])
    records, seen = self._measure(
        ["cores"],
        lambda task: dict(next(calls))
        if task["method"] == "permutation" and task["cores"] == "all"
        else _layer_result(task),
    )
    self.assertEqual(
        [(t["method"], t["cores"]) for t in seen[::2]],
        [
            ("permutation", "1"),
            ("permutation", "all"),
            ("counter", "1"),
            ("counter", "all"),
        ],
    )
    self.assertLen(seen, 8)  # 4 tasks x 2 processes
    self.assertEqual(records[1]["result"], {"steady": 0.2, "cores": 2})
    self.assertTrue(all(t["shape"] == [64, 32] for t in seen))

  def test_cases_select_their_tasks_in_the_report_order(self):
    tasks = layer.tasks(["chunk", "import", "mlp", "cache"], self._SETTINGS)
    self.assertEqual(
        [t["case"] for t in tasks],
        ["import"] + ["mlp"] * 8 + ["cache"] * 3 + ["chunk"] * 2,
    )
    self.assertEqual(
        {t["chunk_rows"] for t in tasks if "chunk_rows" in t}, {16}
    )
    self.assertEqual(layer.tasks([], self._SETTINGS), [])

  def test_a_child_that_found_jax_imported_is_refused(self):
    with self.assertRaisesRegex(RuntimeError, "imported before"):
      self._measure(
          ["import"],
          lambda task: {**_layer_result(task), "jax_preloaded": True},
      )

  def test_every_ratio_comes_from_the_figures_of_the_run(self):
    records, _ = self._measure(list(layer.CASES))
    rows = {r["measurement"]: r for r in layer.rows(records)}
    self.assertLen(rows, 2 + 5 * 4 + 2 * 3 + 2 * 2 + 2)
    self.assertEqual(
        rows[
            "MLP sparse_permutation: first jit(net.init), persistent cache "
            "cold / warm, wall s"
        ],
        {
            "measurement": (
                "MLP sparse_permutation: first jit(net.init), "
                "persistent cache cold / warm, wall s"
            ),
            "value": "4 / 1",
            "ratio": "0.25x cold",
        },
    )
    self.assertEqual(rows["import alberta, extra (s)"]["ratio"], "0.25x jax")
    self.assertEqual(
        rows["MLP sparse_counter: first jit(net.init), cpu s"]["ratio"],
        "1.50x haiku_default",
    )
    self.assertEqual(
        rows["MLP uniform: steady jit(net.init), ms"]["value"], "1"
    )
    self.assertStartsWith(
        rows["counter 64x32, chunk_rows=16 at top level (ms)"]["ratio"],
        "2.00x the throughput of one piece (400.0 ms)",
    )
    self.assertEqual(
        rows["sparse_init permutation 64x32, 1 core / 2 (ms)"],
        {
            "measurement": "sparse_init permutation 64x32, 1 core / 2 (ms)",
            "value": "300.0 / 100.0",
            "ratio": "3.00x speed-up",
        },
    )
    self.assertEqual(layer.chunks_agree(records), [True, True])
    md = report.markdown_table(list(rows.values()), report.LAYER_COLUMNS)
    self.assertEqual(
        md[:2], ["| measurement | value | ratio |", "|---|---:|---|"]
    )
    self.assertLen(
        report.table(list(rows.values()), report.LAYER_COLUMNS).splitlines(),
        2 + len(rows),
    )

  @parameterized.named_parameters(
      ("cold_writes", True), ("cold_writes_not", False)
  )
  def test_the_cache_child_runs_cold_then_warm_in_one_new_directory(
      self, cold_writes
  ):
    seen = []

    def fake_spawn(script):
      self.assertEqual(script, os.path.abspath(sys.argv[0]))

      def run(task):
        seen.append(dict(task))
        directory = task["cache_dir"]
        if cold_writes and len(seen) == 1:
          with open(os.path.join(directory, "entry"), "w") as f:
            f.write("compiled")
        return {
            "first": {"wall": 3.0 / len(seen), "cpu": 1.0 / len(seen)},
            "steady": 1e-3,
        }

      return run

    task = {"case": "cache", "init": "haiku_default"}
    with mock.patch.object(layer, "spawn", fake_spawn):
      if not cold_writes:  # A cache that stays empty is not a warm run.
        with self.assertRaisesRegex(RuntimeError, "wrote no cache entry"):
          layer.run_task(task)
        self.assertLen(seen, 1)
        return
      result = layer.run_task(task)
    self.assertEqual(
        result,
        {"cold": {"wall": 3.0, "cpu": 1.0}, "warm": {"wall": 1.5, "cpu": 0.5}},
    )
    self.assertLen(seen, 2)
    self.assertEqual(seen[0], seen[1])
    self.assertEqual(
        {k: v for k, v in seen[0].items() if k != "cache_dir"},
        {"case": "mlp", "init": "haiku_default", "jit": True},
    )
    self.assertFalse(os.path.exists(seen[0]["cache_dir"]))  # Removed after.

  def test_the_child_side_imports_no_jax_before_its_task(self):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import scripts.benchlib.layer; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'jax', 'numpy', 'alberta', 'absl'}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, _ROOT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    self.assertEqual(proc.returncode, 0, msg=proc.stderr)
    self.assertEqual(proc.stdout.strip(), "[]")
    self.assertIsNone(layer.child_task(["benchmark.py", "--cases=layer"]))
    self.assertEqual(
        layer.child_task(
            ["benchmark.py", layer.CHILD_FLAG + '{"case": "import"}']
        ),
        {"case": "import"},
    )
    with self.assertRaisesRegex(ValueError, "'nope'"):
      layer.run_task({"case": "nope"})


class ReferenceCodeTest(parameterized.TestCase):

  # tests/sparse_init_test.py's ReferenceEqualityTest holds `sparse_init` to the
  # same transcription on other shapes in the default run.
  @parameterized.parameters(
      ((16, 10), 0.9, "uniform"),
      ((7, 33), 0.5, "normal"),
      ((5, 1), 0.99, "uniform"),
  )
  @test_utils.slow
  def test_reference_transcription_is_what_permutation_reproduces(
      self, shape, sparsity, init_type
  ):
    # The library's contract: the reference's zeros (signed) and uniform values
    # bit for bit, normal values within a few ulps.
    key = jax.random.key(3)
    got = alberta_framework.sparse_init(key, shape, sparsity, init_type)
    want = alberta.sparse_init(
        key, shape, sparsity, init_type, method="permutation"
    )
    test_utils.assert_same_matrix(got, want, init_type)

  # Importing torch alone takes ~4 s.
  @absltest.skipUnless(_TORCH, "needs torch")
  @test_utils.slow
  def test_torch_original_zeros_ceil_of_sparsity_per_row(self):
    import torch  # pylint: disable=g-import-not-at-top

    w = alberta_framework.torch_sparse_init(torch.empty(6, 10), 0.85)
    self.assertEqual((w == 0).sum(dim=1).tolist(), [9] * 6)  # ceil(8.5)
    self.assertLessEqual(float(w.abs().max()), 10**-0.5)


if __name__ == "__main__":
  absltest.main()
