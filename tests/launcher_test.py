"""scripts/init_large.py end to end, as a user runs it, and its flags.

Proves, in launcher subprocesses, that the launcher's checkpoint restores to
exactly `sparse_init(jax.random.key(seed), shape, ...)` with the metadata to
recompute it and an honest report (default: counter on a 2-D mesh; slow: the
permutation method on the default mesh, chunked); that `--format=ell` saves
values and indices that scatter to the dense counter matrix, checked and
reported like it; that a flag refused by absl's validators and one refused once
JAX knows the devices each exit non-zero in one or two lines, before any work,
creating nothing; that `--help` and flags absl refuses are answered without
importing JAX or alberta; that JAX's TPU probe stays out of the log; that a
save whose writer is silent shows a progress line at its start and every 2 s
before any byte is written; that a full disk (a 256 KiB tmpfs, when running as
root) fails in one line naming `--output` and the cause, leaving nothing; that
SIGTERM (and, slow, SIGINT) during the save exits within seconds with status
143 (130), a one-line message and no traceback, leaving nothing; and (slow)
that without `--output` nothing is saved, that every bad flag is refused that
way end to end, that a run killed mid-write leaves nothing valid-looking at
`--output`, and that two processes of 4 devices each (JAX's multi-process
runtime over gloo on 127.0.0.1) save the same matrix as one.

In process (`scripts/launchlib`): that every bad flag, and every combination
only the devices rule out, is refused with a message naming it, an existing
output and a symbolic link (even with `--overwrite`) included, touching
nothing; and the save's progress lines. What the launcher's verification
catches is `alberta.verify`'s, proven in verify_test.
"""

from tests import env  # noqa: F401

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from absl.testing import absltest
from absl.testing import parameterized

import alberta
from scripts.launchlib import exits
from scripts.launchlib import options
from scripts.launchlib import report as report_lib
from scripts.launchlib import run
from tests import test_utils

_ROOT = test_utils.ROOT
_SCRIPT = os.path.join(_ROOT, "scripts", "init_large.py")
_TIMEOUT_S = 600


def _command(args: list[str]) -> list[str]:
  return [sys.executable, _SCRIPT, *args]


def _run(args: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run(
      _command(args),
      capture_output=True,
      text=True,
      env=test_utils.single_device_env(),
      cwd=_ROOT,
      timeout=_TIMEOUT_S,
      check=False,
  )


def _listing(root: str) -> list[str]:
  return sorted(
      os.path.relpath(os.path.join(d, f), root)
      for d, dirs, files in os.walk(root)
      for f in dirs + files
  )


def _assert_equals_sparse_init(
    testcase,
    matrix,
    *,
    seed,
    shape,
    sparsity,
    init_type,
    dtype,
    method,
    rounding,
):
  """Zero pattern exact; uniform values bit for bit, normal to a few ulps.

  Normal values are held to the library's contract (XLA may fuse `erf_inv`
  differently in different programs): within 4 float32 ulps, which a
  bfloat16/float16 cast can turn into one ulp of the narrow type.
  """
  expected = alberta.sparse_init(
      jax.random.key(seed),
      shape,
      sparsity,
      init_type,
      dtype=dtype,
      method=method,
      rounding=rounding,
  )
  actual = np.asarray(matrix)
  expected = np.asarray(expected)
  testcase.assertEqual(actual.dtype, expected.dtype)
  testcase.assertEqual(actual.shape, expected.shape)
  np.testing.assert_array_equal(actual == 0, expected == 0)
  np.testing.assert_array_equal(np.signbit(actual), np.signbit(expected))
  if init_type == "uniform":
    np.testing.assert_array_equal(actual, expected)
  else:
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(
        actual.astype(np.float32), expected.astype(np.float32), rtol=eps, atol=0
    )


# Bad flags (a test name, the flags after `_BASE_FLAGS`, the message), as
# absl's validators refuse them, before JAX starts. {dir}: the test's directory,
# holding `file`, a checkpoint at `checkpoint` and a symbolic link to it,
# `link` (`_bad_flag_fixtures`).
_REFUSED_BY_ABSL = (
    (
        "_shape_one_number",
        ["--shape=8192"],
        r"--shape='8192' must be ROWS,COLS",
    ),
    ("_shape_zero", ["--shape=0,8"], r"--shape='0,8' must be"),
    ("_shape_negative", ["--shape=-4,8"], r"--shape='-4,8' must be"),
    ("_shape_not_numbers", ["--shape=a,b"], r"--shape='a,b' must be"),
    ("_shape_three_numbers", ["--shape=8,8,8"], r"--shape='8,8,8' must be"),
    ("_shape_too_large", ["--shape=4294967296,1"], r"--shape='4294967296,1'"),
    ("_sparsity_above_one", ["--sparsity=1.5"], r"flag --sparsity=1.5"),
    ("_sparsity_negative", ["--sparsity=-0.25"], r"flag --sparsity=-0.25"),
    ("_sparsity_nan", ["--sparsity=nan"], r"flag --sparsity=nan"),
    ("_mesh_not_dividing_rows", ["--mesh=3"], r"--mesh=3 splits the 64 rows"),
    (
        "_mesh_not_dividing_columns",
        ["--mesh=4,5"],
        r"--mesh=4,5 splits the 48 columns",
    ),
    ("_mesh_zero", ["--mesh=0"], r"--mesh='0' must be N or A,B"),
    ("_mesh_three_axes", ["--mesh=2,2,2"], r"--mesh='2,2,2' must be N or A,B"),
    ("_init_type", ["--init_type=gaussian"], r"flag --init_type=gaussian"),
    ("_method", ["--method=sort"], r"flag --method=sort"),
    ("_rounding", ["--rounding=floor"], r"flag --rounding=floor"),
    ("_dtype_float64", ["--dtype=float64"], r"flag --dtype=float64"),
    ("_dtype_int", ["--dtype=int8"], r"flag --dtype=int8"),
    ("_seed_negative", ["--seed=-1"], r"flag --seed=-1"),
    ("_seed_above_32_bits", ["--seed=4294967296"], r"flag --seed=4294967296"),
    ("_chunk_rows_zero", ["--chunk_rows=0"], r"flag --chunk_rows=0"),
    (
        "_num_cpu_devices_zero",
        ["--num_cpu_devices=0"],
        r"flag --num_cpu_devices=0",
    ),
    (
        "_process_id_out_of_range",
        ["--num_processes=2", "--process_id=2"],
        r"--process_id=2 must be below --num_processes=2",
    ),
    (
        "_output_below_a_file",
        ["--output={dir}/file/w"],
        r"--output=\S+/file/w is not writable: .*not a directory",
    ),
    ("_output_empty", ["--output="], r"--output must not be empty"),
    (
        "_output_existing",
        ["--output={dir}/checkpoint"],
        r"--output=\S+/checkpoint: .*already exists.*--overwrite",
    ),
    (
        "_output_symbolic_link_even_with_overwrite",
        ["--output={dir}/link", "--overwrite"],
        r"--output=\S+/link: .*symbolic link",
    ),
    (
        "_report_in_missing_directory",
        ["--report={dir}/missing/r.json"],
        r"--report='\S+/missing/r.json': \S+ is not a writable directory",
    ),
    ("_format_unknown", ["--format=csr"], r"flag --format=csr"),
    (
        "_format_ell_with_column_mesh",
        ["--format=ell", "--mesh=4,2"],
        r"--mesh=4,2 splits the columns .*--format=ell",
    ),
    (
        "_format_ell_with_permutation",
        ["--format=ell", "--method=permutation"],
        r"--method=permutation cannot make --format=ell",
    ),
)

# Flags refused once JAX knows the devices (options.FlagError).
_REFUSED_WITH_THE_DEVICES = (
    (
        "_mesh_too_many_devices",
        ["--mesh=16"],
        r"--mesh=16 needs 16 devices but only 8 exist",
    ),
    (
        "_default_mesh_not_dividing_rows",
        ["--shape=60,48"],
        (
            r"--mesh defaults to all 8 devices on rows, which does not divide"
            r" the 60"
        ),
    ),
    (
        "_format_ell_without_nonzeros",
        ["--format=ell", "--sparsity=0.99"],
        r"--format=ell with --sparsity=0.99 .*zeroes all 48 columns",
    ),
)

_BASE_FLAGS = ["--shape=64,48", "--num_cpu_devices=8"]


def _bad_flag_fixtures(directory: str) -> None:
  """What the bad --output cases refuse to touch."""
  with open(os.path.join(directory, "file"), "w") as f:
    f.write("x")
  alberta.checkpoint.save(
      os.path.join(directory, "checkpoint"), jnp.ones((2, 2)), {"seed": 1}
  )
  os.symlink(
      os.path.join(directory, "checkpoint"), os.path.join(directory, "link")
  )


class LauncherTest(test_utils.TempDirMixin, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.output = os.path.join(self.dir, "w")
    self.report = os.path.join(self.dir, "report.json")

  def _assert_ok(self, proc):
    self.assertEqual(
        proc.returncode,
        0,
        msg=f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}",
    )

  def test_restore_equals_sparse_init_counter_2d_mesh_normal_bfloat16_ceil(
      self,
  ):
    self.check_restore_equals_sparse_init(
        method="counter",
        shape=(64, 48),
        mesh="4,2",
        sparsity=0.8,
        init_type="normal",
        dtype="bfloat16",
        rounding="ceil",
        seed=3,
        chunk_rows=None,
    )

  # A launcher run is a subprocess (~10 s of CPU): the other method, mesh and
  # options run in the slow step.
  @test_utils.slow
  def test_restore_equals_sparse_init_permutation_default_mesh_chunked(self):
    self.check_restore_equals_sparse_init(
        method="permutation",
        shape=(64, 40),
        mesh=None,
        sparsity=0.9,
        init_type="uniform",
        dtype="float32",
        rounding="nearest",
        seed=11,
        chunk_rows=3,
    )

  def check_restore_equals_sparse_init(
      self,
      method,
      shape,
      mesh,
      sparsity,
      init_type,
      dtype,
      rounding,
      seed,
      chunk_rows,
  ):
    args = [
        f"--shape={shape[0]},{shape[1]}",
        f"--method={method}",
        f"--sparsity={sparsity}",
        f"--init_type={init_type}",
        f"--dtype={dtype}",
        f"--rounding={rounding}",
        f"--seed={seed}",
        "--num_cpu_devices=8",
        f"--output={self.output}",
        f"--report={self.report}",
    ]
    args += [f"--mesh={mesh}"] if mesh else []
    args += [f"--chunk_rows={chunk_rows}"] if chunk_rows else []
    proc = _run(args)
    self._assert_ok(proc)
    # JAX's probe for a TPU (an INFO record on every CPU host) stays quiet.
    self.assertNotIn("Unable to initialize backend", proc.stderr)

    restored = alberta.checkpoint.restore(self.output)
    _assert_equals_sparse_init(
        self,
        restored,
        seed=seed,
        shape=shape,
        sparsity=sparsity,
        init_type=init_type,
        dtype=jnp.dtype(dtype),
        method=method,
        rounding=rounding,
    )

    info = alberta.checkpoint.restore_metadata(self.output)
    expected_info = dict(
        format="dense",
        shape=list(shape),
        sparsity=sparsity,
        init_type=init_type,
        method=method,
        rounding=rounding,
        dtype=dtype,
        seed=seed,
        zeros_per_row=alberta.num_zeros(shape[1], sparsity, rounding),
        alberta_version=alberta.__version__,
        jax_version=jax.__version__,
    )
    self.assertEqual({k: info[k] for k in expected_info}, expected_info)
    # Nothing but the checkpoint and the report beside it.
    self.assertEqual(sorted(os.listdir(self.dir)), ["report.json", "w"])

    with open(self.report) as f:
      report = json.load(f)
    mesh_shape = {"rows": 4, "cols": 2} if mesh else {"rows": 8}
    self.assertEqual(report["format"], "dense")
    self.assertEqual(report["shape"], list(shape))
    self.assertEqual(
        report["matrix_bytes"], shape[0] * shape[1] * jnp.dtype(dtype).itemsize
    )
    self.assertEqual(report["devices"], 8)
    self.assertEqual(report["processes"], 1)
    self.assertEqual(report["mesh"], mesh_shape)
    self.assertEqual(report["method"], method)
    # The exact call, method included (sparse_init's default differs).
    recompute = (
        f"alberta.sparse_init(jax.random.key({seed}), {shape}, "
        f"{sparsity!r}, {init_type!r}, dtype=jnp.{dtype}, "
        f"method={method!r}, rounding={rounding!r})"
    )
    self.assertEqual(report["recompute"], recompute)
    self.assertEqual(info["recompute"], recompute)
    self.assertIn(f"Reproduce with {recompute}.", proc.stderr)
    self.assertEqual(report["output"], self.output)
    verification = report["verification"]
    self.assertTrue(verification["passed"], msg=verification)
    self.assertEqual(
        (verification["rows_below_k"], verification["rows_above_k"]), (0, 0)
    )
    self.assertEqual(
        verification["zeros_per_row"], expected_info["zeros_per_row"]
    )
    self.assertEqual(verification["method"], method)
    self.assertEqual(
        report["chunk_rows_source"], "flag" if chunk_rows else "automatic"
    )
    for name in (
        "compile_seconds",
        "generation_seconds",
        "entries_per_second",
        "gigabytes_per_second",
        "checkpoint_bytes",
    ):
      self.assertGreater(report[name], 0, msg=name)
    self.assertIn("memory_analysis", report["memory"]["source"])
    self.assertLen(report["memory"]["per_device_peak_bytes"], 8)
    tile_bytes = (shape[0] // 8) * shape[1] * jnp.dtype(dtype).itemsize
    for peak in report["memory"]["per_device_peak_bytes"].values():
      self.assertGreaterEqual(peak, tile_bytes)

  def test_ell_restore_scatters_to_the_dense_counter_matrix(self):
    shape, sparsity, seed, rounding = (64, 40), 0.8, 7, "ceil"
    k = alberta.num_zeros(shape[1], sparsity, rounding)
    nnz = shape[1] - k
    proc = _run([
        f"--shape={shape[0]},{shape[1]}",
        "--format=ell",
        f"--sparsity={sparsity}",
        f"--rounding={rounding}",
        f"--seed={seed}",
        "--num_cpu_devices=8",
        "--mesh=4,1",
        "--chunk_rows=3",
        f"--output={self.output}",
        f"--report={self.report}",
    ])
    self._assert_ok(proc)

    # Read straight into a rows sharding, as a training job would.
    mesh = jax.make_mesh(
        (8,), ("rows",), axis_types=(jax.sharding.AxisType.Auto,)
    )
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))
    restored = alberta.checkpoint.restore(self.output, sharding=rows)
    self.assertEqual(sorted(restored), ["indices", "values"])
    values, indices = restored["values"], restored["indices"]
    self.assertEqual(values.sharding, rows)
    self.assertEqual(
        (values.shape, values.dtype), ((shape[0], nnz), jnp.float32)
    )
    self.assertEqual(
        (indices.shape, indices.dtype), ((shape[0], nnz), jnp.int32)
    )

    expected = np.asarray(
        alberta.sparse_init(
            jax.random.key(seed),
            shape,
            sparsity,
            "uniform",
            dtype=jnp.float32,
            method="counter",
            rounding=rounding,
        )
    )
    dense = np.asarray(alberta.to_dense(values, indices, shape))
    # Bit for bit, except that a scatter's zeros are +0.0 where the dense
    # matrix keeps the masked weight's sign.
    test_utils.assert_same_bits(
        dense, np.where(expected == 0, np.float32(0), expected)
    )
    # And the kept weights themselves, sign bits included.
    kept = np.take_along_axis(expected, np.asarray(indices), axis=1)
    test_utils.assert_same_bits(values, kept)
    self.assertTrue(np.all((expected != 0).sum(axis=1) == nnz))

    info = alberta.checkpoint.restore_metadata(self.output)
    self.assertEqual(info["format"], "ell")
    self.assertEqual(info["method"], "counter")
    self.assertEqual(info["zeros_per_row"], k)
    self.assertEqual(info["nonzeros_per_row"], nnz)
    self.assertEqual(
        info["recompute"],
        "alberta.sparse_init_ell(jax.random.key(7), "
        "(64, 40), 0.8, 'uniform', dtype=jnp.float32, method='counter', "
        "rounding='ceil')",
    )

    with open(self.report) as f:
      report = json.load(f)
    self.assertEqual(report["format"], "ell")
    self.assertEqual(
        report["arrays"],
        {"values": [shape[0], nnz], "indices": [shape[0], nnz]},
    )
    self.assertEqual(report["mesh"], {"rows": 4, "cols": 1})
    self.assertEqual(report["tile"], [shape[0] // 4, nnz])
    self.assertEqual(report["chunk_rows"], 3)
    self.assertEqual(report["entries"], shape[0] * nnz)
    self.assertEqual(report["matrix_bytes"], shape[0] * nnz * (4 + 4))
    verification = report["verification"]
    self.assertTrue(verification["passed"], msg=verification)
    self.assertEqual(verification["nonzeros_per_row"], nnz)
    self.assertEqual(verification["format"], "ell")
    for name in (
        "rows_unsorted",
        "rows_with_repeats",
        "indices_out_of_range",
        "nonfinite",
        "out_of_bound",
        "rows_above_k",
        "rows_below_k",
    ):
      self.assertEqual(verification[name], 0, msg=name)
    for name in (
        "compile_seconds",
        "generation_seconds",
        "entries_per_second",
        "gigabytes_per_second",
        "checkpoint_bytes",
    ):
      self.assertGreater(report[name], 0, msg=name)
    tile_bytes = (shape[0] // 4) * nnz * (4 + 4)
    for peak in report["memory"]["per_device_peak_bytes"].values():
      self.assertGreaterEqual(peak, tile_bytes)

  def test_help_prints_the_usage_and_exits_0(self):
    for flag in ("--help", "--helpfull"):
      with self.subTest(flag):
        proc = _run([flag])
        self._assert_ok(proc)
        self.assertIn("--shape", proc.stdout)
        self.assertEqual(os.listdir(self.dir), [])

  @parameterized.named_parameters(
      ("_help", ["--help"], 0, r"--shape"),
      ("_helpshort", ["--helpshort"], 0, r"--shape"),
      ("_bad_shape", ["--shape=8192"], 1, r"--shape='8192' must be ROWS,COLS"),
      ("_bad_sparsity", ["--sparsity=1.5"], 1, r"flag --sparsity=1.5"),
      ("_unknown_flag", ["--shapes=8,8"], 1, r"Unknown command line flag"),
  )
  def test_help_and_bad_flags_are_answered_without_importing_jax(
      self, argv, status, message
  ):
    # -X importtime lists every module the process imported, on stderr.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", _SCRIPT, *argv],
        capture_output=True,
        text=True,
        env=test_utils.single_device_env(),
        cwd=_ROOT,
        timeout=_TIMEOUT_S,
        check=False,
    )
    self.assertEqual(proc.returncode, status, msg=proc.stderr[-2000:])
    self.assertRegex(proc.stdout + proc.stderr, message)
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    self.assertIn("absl.flags", imported)  # The listing is there.
    for package in ("jax", "jaxlib", "alberta", "numpy", "orbax"):
      self.assertNotIn(package, imported)

  def test_backend_probe_stays_quiet(self):
    # Without JAX_PLATFORMS JAX probes for a TPU as its backends start and
    # logs the failure at INFO; the launcher filters it before that start.
    environ = test_utils.single_device_env()
    environ.pop("JAX_PLATFORMS")
    proc = subprocess.run(
        _command(["--shape=8,8", "--num_cpu_devices=2"]),
        capture_output=True,
        text=True,
        env=environ,
        cwd=_ROOT,
        timeout=_TIMEOUT_S,
        check=False,
    )
    self._assert_ok(proc)
    self.assertIn("Verification passed", proc.stderr)
    self.assertNotIn("Unable to initialize backend", proc.stderr)

  @test_utils.slow
  def test_without_output_the_matrix_is_reported_not_saved(self):
    proc = _run([
        "--shape=16,16",
        "--num_cpu_devices=8",
        "--mesh=2,4",
        f"--report={self.report}",
    ])
    self._assert_ok(proc)
    self.assertEqual(os.listdir(self.dir), ["report.json"])
    with open(self.report) as f:
      report = json.load(f)
    self.assertIsNone(report["output"])
    self.assertTrue(report["verification"]["passed"])
    self.assertIn("Verification passed", proc.stderr)

  def check_refused_before_any_work(self, bad, message, directory):
    _bad_flag_fixtures(directory)
    before = _listing(directory)
    report = os.path.join(directory, "report.json")
    # --report (written only after the work) shows that nothing ran.
    proc = _run(
        _BASE_FLAGS
        + [f"--report={report}"]
        + [a.format(dir=directory) for a in bad]
    )
    self.assertNotEqual(proc.returncode, 0)
    self.assertRegex(proc.stderr, message)
    # The error and a pointer to --helpshort: no usage text, no traceback.
    self.assertLessEqual(
        len(proc.stderr.strip().splitlines()), 2, msg=proc.stderr
    )
    self.assertNotIn("Traceback", proc.stderr)
    self.assertNotIn("Compiling", proc.stderr)
    self.assertEqual(_listing(directory), before)
    self.assertEqual(
        alberta.checkpoint.restore_metadata(
            os.path.join(directory, "checkpoint")
        )["seed"],
        1,
    )

  def test_refused_flags_end_the_launcher_in_two_lines_before_any_work(self):
    # The launcher's two ways of refusing: a validator (this one imports
    # alberta) and an error once JAX has started. Every case runs end to end
    # in the slow step, and in process below.
    cases = dict(
        (c[0], c[1:]) for c in _REFUSED_BY_ABSL + _REFUSED_WITH_THE_DEVICES
    )
    for name in ("_output_existing", "_mesh_too_many_devices"):
      with self.subTest(name):
        directory = os.path.join(self.dir, name)
        os.mkdir(directory)
        self.check_refused_before_any_work(*cases[name], directory)

  @parameterized.named_parameters(*_REFUSED_BY_ABSL, *_REFUSED_WITH_THE_DEVICES)
  @test_utils.slow
  def test_bad_flag_is_refused_by_the_launcher_before_any_work(
      self, bad, message
  ):
    self.check_refused_before_any_work(bad, message, self.dir)

  def test_full_disk_fails_in_one_line_and_leaves_nothing(self):
    if os.geteuid() != 0:
      self.skipTest("mounting a small tmpfs needs root")
    disk = os.path.join(self.dir, "disk")
    os.mkdir(disk)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", disk],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
      self.skipTest(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    self.addCleanup(subprocess.run, ["umount", disk], check=False)
    output = os.path.join(disk, "w")
    # 1 MiB of float32 at sparsity 0.5 compresses to ~0.6 MiB: too big.
    proc = _run([
        "--shape=512,512",
        "--sparsity=0.5",
        "--num_cpu_devices=8",
        f"--output={output}",
        f"--report={self.report}",
    ])
    self.assertEqual(proc.returncode, 1, msg=proc.stderr)
    errors = [
        line for line in proc.stderr.splitlines() if not line.startswith("I")
    ]  # absl's INFO lines start "I".
    self.assertLen(errors, 1, msg=proc.stderr)
    self.assertRegex(
        errors[0],
        r"^init_large.py: error: could not save "
        rf"--output={output}: .*No space left on device",
    )
    self.assertNotIn("Traceback", proc.stderr)
    self.assertEqual(os.listdir(disk), [])  # No staging, nothing at --output.
    self.assertFalse(os.path.exists(self.report))

  def test_a_slow_save_shows_progress_before_its_first_byte(self):
    # The fault: a writer that sits silent (nothing on disk) for 2.5 s
    # before the real save begins. The launcher must show that the save is
    # working from its start: a progress line at once, then one every
    # 2 s, at 0 bytes, all before the writer starts.
    wrapper = textwrap.dedent("""
        import runpy, sys, time
        from absl import logging
        import alberta
        real_save = alberta.checkpoint.save
        def slow_save(*args, **kwargs):
          time.sleep(2.5)
          logging.info("INJECTED: the writer starts.")
          return real_save(*args, **kwargs)
        alberta.checkpoint.save = slow_save
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
        """)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            wrapper,
            _SCRIPT,
            "--shape=64,48",
            "--num_cpu_devices=8",
            f"--output={self.output}",
        ],
        capture_output=True,
        text=True,
        env=test_utils.single_device_env(),
        cwd=_ROOT,
        timeout=_TIMEOUT_S,
        check=False,
    )
    self._assert_ok(proc)
    lines = proc.stderr.splitlines()
    saving = next(i for i, line in enumerate(lines) if "Saving to" in line)
    writer = next(i for i, line in enumerate(lines) if "INJECTED" in line)
    before_writer = lines[saving + 1 : writer]
    self.assertGreaterEqual(len(before_writer), 2, msg=proc.stderr)
    for line in before_writer:
      self.assertRegex(line, r"writing shards \[\.{30}\]   0%  0 B of ~")
    # The first line as the save starts, the next one interval later.
    self.assertRegex(before_writer[0], r"  0 s  0 MiB/s$")
    self.assertRegex(before_writer[1], r"  2 s  0 MiB/s$")
    self.assertRegex(lines[-1], r"Saved \S+: .* on disk")
    restored = alberta.checkpoint.restore(self.output)
    self.assertEqual(restored.shape, (64, 48))

  def test_sigterm_during_save_exits_promptly_leaving_nothing(self):
    self.check_signal_during_save(signal.SIGTERM, 143)

  @test_utils.slow
  def test_sigint_during_save_exits_promptly_leaving_nothing(self):
    self.check_signal_during_save(signal.SIGINT, 130)

  def check_signal_during_save(self, signum, status):
    # 16 MiB: the save takes about a second, so the signal, sent once the
    # launcher logs that it is saving, lands while it saves.
    proc = subprocess.Popen(
        _command([
            "--shape=2048,2048",
            "--sparsity=0.5",
            "--num_cpu_devices=8",
            f"--output={self.output}",
            f"--report={self.report}",
        ]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=test_utils.single_device_env(),
        cwd=_ROOT,
    )
    try:
      for line in proc.stderr:
        if "Saving to" in line:
          break
      else:
        self.fail("the launcher ended before saving")
      proc.send_signal(signum)
      rest = []
      reader = threading.Thread(target=lambda: rest.append(proc.stderr.read()))
      reader.start()
      # A liveness bound, not a speed one: it exits in about a second, and a
      # launcher waiting on orbax's threads would not exit at all.
      proc.wait(timeout=60)
      reader.join(timeout=60)
      rest = "".join(rest)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      proc.stderr.close()
    self.assertEqual(proc.returncode, status, msg=rest)
    self.assertNotIn("Traceback", rest)
    name = signal.Signals(signum).name
    # The save's progress lines (the first is logged as it starts) may come
    # before the signal lands; after them, only the one-line message.
    *progress, last = rest.strip().splitlines()
    for line in progress:
      self.assertIn("writing shards", line, msg=rest)
    self.assertRegex(
        last,
        rf"^init_large.py: interrupted by {name} while "
        rf"saving.*nothing was written at --output=",
    )
    self.assertFalse(os.path.lexists(self.output))
    self.assertEqual(alberta.checkpoint.stale_staging(self.output), [])
    self.assertEqual(os.listdir(self.dir), [])

  @test_utils.slow
  def test_run_killed_mid_write_leaves_nothing_valid_at_output(self):
    # Big enough that writing the shards takes seconds (random float32 values
    # hardly compress at sparsity 0.5): the kill lands while they are written.
    proc = subprocess.Popen(
        _command([
            "--shape=8192,8192",
            "--sparsity=0.5",
            "--num_cpu_devices=8",
            f"--output={self.output}",
        ]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=test_utils.single_device_env(),
        cwd=_ROOT,
    )
    try:
      deadline = time.monotonic() + _TIMEOUT_S
      while not alberta.checkpoint.stale_staging(self.output):
        self.assertIsNone(proc.poll(), msg="finished before it started writing")
        self.assertLess(time.monotonic(), deadline)
        time.sleep(0.005)
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      proc.stderr.close()
    self.assertEqual(proc.returncode, -signal.SIGKILL)

    leftovers = alberta.checkpoint.stale_staging(self.output)
    self.assertNotEmpty(leftovers)  # The kill did land mid-write.
    self.assertFalse(os.path.lexists(self.output))
    for leftover in leftovers:
      self.assertFalse(alberta.checkpoint.is_checkpoint(leftover))
    with self.assertRaisesRegex(FileNotFoundError, "no alberta checkpoint"):
      alberta.checkpoint.restore(self.output)

    # The leftovers do not block the next run, which names them.
    rerun = _run(
        ["--shape=16,16", "--num_cpu_devices=8", f"--output={self.output}"]
    )
    self._assert_ok(rerun)
    self.assertIn("Left by an interrupted save", rerun.stderr)
    _assert_equals_sparse_init(
        self,
        alberta.checkpoint.restore(self.output),
        seed=0,
        shape=(16, 16),
        sparsity=0.9,
        init_type="uniform",
        dtype=jnp.float32,
        method="counter",
        rounding="nearest",
    )

  @test_utils.slow
  def test_two_processes_save_what_one_process_saves(self):
    port = test_utils.free_port()
    two = os.path.join(self.dir, "two")
    one = os.path.join(self.dir, "one")
    common = [
        "--shape=64,48",
        "--sparsity=0.7",
        "--method=counter",
        "--seed=5",
        "--init_type=uniform",
    ]
    procs = [
        subprocess.Popen(
            _command(
                common
                + [
                    "--num_cpu_devices=4",
                    "--mesh=4,2",
                    f"--output={two}",
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                    "--report="
                    + (
                        self.report
                        if i == 0
                        else os.path.join(self.dir, "unused.json")
                    ),
                ]
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=test_utils.single_device_env(),
            cwd=_ROOT,
        )
        for i in range(2)
    ]
    outputs = test_utils.communicate_all(procs, timeout=_TIMEOUT_S)
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
      self.assertEqual(
          proc.returncode, 0, msg=f"stdout:\n{stdout}\nstderr:\n{stderr}"
      )
    with open(self.report) as f:
      report = json.load(f)
    self.assertEqual(report["processes"], 2)
    self.assertEqual(report["devices"], 8)
    self.assertEqual(report["mesh"], {"rows": 4, "cols": 2})
    self.assertTrue(report["verification"]["passed"])
    # Only process 0 writes the report.
    self.assertFalse(os.path.exists(os.path.join(self.dir, "unused.json")))
    # Each process wrote its own shards.
    self.assertLen(
        [d for d in os.listdir(two) if d.startswith("ocdbt.process_")], 2
    )

    self._assert_ok(_run(common + ["--num_cpu_devices=8", f"--output={one}"]))
    from_two = np.asarray(alberta.checkpoint.restore(two))
    from_one = np.asarray(alberta.checkpoint.restore(one))
    test_utils.assert_same_bits(from_two, from_one)
    _assert_equals_sparse_init(
        self,
        from_two,
        seed=5,
        shape=(64, 48),
        sparsity=0.7,
        init_type="uniform",
        dtype=jnp.float32,
        method="counter",
        rounding="nearest",
    )
    self.assertEqual(
        sorted(os.listdir(self.dir)), ["one", "report.json", "two"]
    )


def _parse(argv: list[str]) -> flags.FlagValues:
  """The launcher's flags parsed from `argv` in this process."""
  flag_values = flags.FlagValues()
  options.define(flag_values)
  flag_values(["init_large.py", *argv])
  return flag_values


class FlagsTest(test_utils.TempDirMixin, parameterized.TestCase):
  """The launcher's flags, parsed and checked in process."""

  @parameterized.named_parameters(*_REFUSED_BY_ABSL)
  def test_bad_flag_is_refused_before_jax_starts(self, bad, message):
    _bad_flag_fixtures(self.dir)
    before = _listing(self.dir)
    with self.assertRaisesRegex(flags.Error, message):
      _parse(_BASE_FLAGS + [a.format(dir=self.dir) for a in bad])
    self.assertEqual(_listing(self.dir), before)
    self.assertEqual(
        os.readlink(os.path.join(self.dir, "link")),
        os.path.join(self.dir, "checkpoint"),
    )

  @parameterized.named_parameters(*_REFUSED_WITH_THE_DEVICES)
  def test_flags_the_devices_rule_out_are_refused(self, bad, message):
    flag_values = _parse(_BASE_FLAGS + bad)  # Valid as far as absl can tell.
    with self.assertRaisesRegex(options.FlagError, message):
      run.Plan.from_flags(flag_values)

  @absltest.skipIf(os.geteuid() == 0, "root can write to read-only directories")
  def test_read_only_output_location_is_refused(self):
    parent = os.path.join(self.dir, "ro")
    os.mkdir(parent, 0o500)
    self.addCleanup(os.chmod, parent, 0o700)
    with self.assertRaisesRegex(flags.Error, r"--output=\S+ is not writable"):
      _parse(["--shape=16,16", f"--output={parent}/w"])
    self.assertEqual(os.listdir(parent), [])

  def test_asks_for_help_reads_absl_help_flags_before_the_separator(self):
    for argv in (
        ["--help"],
        ["-?"],
        ["--helpshort"],
        ["-helpfull"],
        ["--shape=8,8", "--help=true"],
    ):
      self.assertTrue(exits.asks_for_help(["prog", *argv]), msg=argv)
    for argv in (
        [],
        ["--shape=8,8"],
        ["--help=false"],
        ["--", "--help"],
        ["--output=help"],
    ):
      self.assertFalse(exits.asks_for_help(["prog", *argv]), msg=argv)

  def test_plan_of_valid_flags(self):
    plan = run.Plan.from_flags(
        _parse(
            _BASE_FLAGS
            + [
                "--chunk_rows=100",
                "--format=ell",
                "--mesh=4",
                "--sparsity=0.75",
                "--seed=9",
            ]
        )
    )
    self.assertEqual(
        (plan.shape, plan.zeros_per_row, plan.nnz), ((64, 48), 36, 12)
    )
    self.assertEqual(dict(plan.mesh.shape), {"rows": 4})
    self.assertEqual(plan.tile, (16, 12))
    self.assertEqual(plan.chunk_rows_used, 16)  # At most the tile's rows.
    self.assertEqual(plan.entries, 64 * 12)
    self.assertEqual(
        plan.recompute(ell=True),
        "alberta.sparse_init_ell(jax.random.key(9), "
        "(64, 48), 0.75, 'uniform', dtype=jnp.float32, method='counter', "
        "rounding='nearest')",
    )
    self.assertEqual(plan.metadata()["nonzeros_per_row"], 12)


def _wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
  """Polls `condition()` until true; a liveness bound, not a speed one."""
  deadline = time.monotonic() + timeout_s
  while not condition():
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.005)


class ProgressTest(absltest.TestCase):

  def test_save_progress_logs_at_once_and_periodically_until_it_ends(self):
    with self.assertLogs("absl", logging.INFO) as logs:
      with report_lib.SaveProgress(
          1000, estimated=True, every_s=0.02
      ) as progress:
        # Before the save has written (or reported) any byte: logged by
        # `__enter__` itself (the thread's lines may follow at once).
        self.assertNotEmpty(logs.output)
        self.assertRegex(
            logs.output[0], r"\[\.{30}\]   0%  0 B of ~1000 B  0 s"
        )
        # A slowed writer: no byte reaches the disk, the lines keep coming.
        _wait_for(lambda: len(logs.output) >= 4, "lines at 0 bytes")
        for line in logs.output[:4]:
          self.assertIn("  0 B of ~1000 B", line)
        progress.update(500, 0.0)
        _wait_for(
            lambda: "500 B of ~1000 B" in logs.output[-1],
            "a line with the bytes written",
        )
      ended = len(logs.output)
      time.sleep(0.1)  # Five intervals: no line after the save has ended.
      self.assertLen(logs.output, ended)
    self.assertRegex(logs.output[-1], r"\[#{15}\.{15}\]  50%  500 B of ~1000 B")

  def test_save_progress_stops_when_told(self):
    # The launcher's `stop_when`: a signal has come and the save is being
    # abandoned; its lines would show stale bytes and could follow the exit
    # message.
    stop = threading.Event()
    with self.assertLogs("absl", logging.INFO) as logs:
      with report_lib.SaveProgress(
          1000, estimated=True, every_s=0.02, stop_when=stop.is_set
      ):
        _wait_for(lambda: len(logs.output) >= 3, "lines before the stop")
        stop.set()
        time.sleep(0.2)  # A tick may be past its check.
        stopped = len(logs.output)
        time.sleep(0.1)  # Five intervals: no line after the stop.
        self.assertLen(logs.output, stopped)

  def test_save_progress_refuses_a_non_positive_interval(self):
    for every_s in (0, -1.0, float("nan")):
      with self.assertRaisesRegex(
          ValueError, rf"every_s must be positive, " rf"got {every_s!r}"
      ):
        report_lib.SaveProgress(1000, estimated=True, every_s=every_s)

  def test_the_bar_stops_at_99_percent_until_the_save_ends(self):
    with self.assertLogs("absl", logging.INFO) as logs:
      report_lib.progress_line(1000, estimated=True)(500, 1.0)
      report_lib.progress_line(1000, estimated=True)(5000, 2.0)
      report_lib.progress_line(2**20, estimated=False)(2**19, 1.0)
    self.assertRegex(logs.output[0], r"\[#{15}\.{15}\]  50%  500 B of ~1000 B")
    self.assertRegex(logs.output[1], r"\[#{29}\.\]  99%  4\.9 KiB of ~1000 B")
    self.assertRegex(
        logs.output[2], r" 50%  512\.0 KiB of <= 1\.0 MiB uncompressed  1 s"
    )


if __name__ == "__main__":
  absltest.main()
