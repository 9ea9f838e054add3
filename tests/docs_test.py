"""The README's code and the docstring examples run as written.

A newcomer copies the README's snippets in order, so its ```python blocks run
here in order in one namespace (a block may use what an earlier one defined),
in a fresh working directory, after the launcher commands the snippets depend
on have made their checkpoints. The sizes meant for a pod are the only thing
changed: `_SMALLER` shrinks them to fit the test machine, and a test checks
that every replacement still matches the README, so the table cannot go stale.

The default run makes the launcher commands' checkpoints in this process
instead (`alberta.sparse_init` / `sparse_init_ell` with the commands' flags,
saved with `alberta.checkpoint.save`: two JAX subprocesses cost more than all
the snippets together); the slow step runs the commands themselves.

The public docstrings' `>>>` examples run as doctests, with the names the API
reference's doctest build gives them (`alberta`, `jax`, `jnp`, `np`).
"""

from tests import env  # noqa: F401

import doctest
import inspect
import os
import pathlib
import re
import shlex
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized

import alberta
from tests import test_utils

_ROOT = pathlib.Path(__file__).absolute().parent.parent
_README = _ROOT / "README.md"

# Sizes written for big machines, shrunk for a 2-core test machine: every key
# must occur in the README (checked), so a rewrite cannot leave this behind.
_SMALLER = {
    "(65536, 65536)": "(512, 512)",
    "--shape=16384,16384": "--shape=256,256",
    "(4096, 4096)": "(256, 256)",
    "[batch, 4096]": "[batch, 256]",
    "jnp.ones((8, 4096))": "jnp.ones((8, 256))",
}
# Paths the README's launcher commands write and its snippets read.
_PATHS = ("/tmp/w16k", "/tmp/w_ell")


def _blocks(text: str, language: str) -> list[str]:
  return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def _readme(tmp: str) -> str:
  text = _README.read_text()
  for big, small in _SMALLER.items():
    text = text.replace(big, small)
  for path in _PATHS:
    text = text.replace(path, os.path.join(tmp, os.path.basename(path)))
  return text


def _commands(text: str) -> list[str]:
  """The launcher commands of the README's ```sh blocks, continuations joined."""
  commands = []
  for block in _blocks(text, "sh"):
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
      line = line.split("#", 1)[0].strip()
      if line.startswith("python scripts/init_large.py") and "--output=" in line:
        if "--coordinator_address" not in line:  # several hosts: not here
          commands.append(line)
  return commands


# The launcher flags `_save_in_process` reproduces (others fail the test, so
# that a new README command cannot be silently misread); `--num_cpu_devices`
# and `--report` change nothing the snippets read.
_IN_PROCESS_FLAGS = ("shape", "sparsity", "format", "output", "report",
                     "num_cpu_devices")


def _save_in_process(command: str) -> None:
  """Saves what a README launcher command saves, without starting it.

  The launcher's matrix is `alberta.sparse_init(jax.random.key(seed), shape,
  sparsity, method="counter")` (its default method and seed), or with
  `--format=ell` that of `sparse_init_ell`, saved as `"matrix"` or as
  `"values"` and `"indices"`; the metadata holds the fields the snippets read.
  """
  import jax  # pylint: disable=g-import-not-at-top
  flags = dict(re.findall(r"--(\w+)=(\S+)", command))
  unknown = sorted(set(flags) - set(_IN_PROCESS_FLAGS))
  if unknown:
    raise ValueError(f"README command with flags {unknown} the default test "
                     f"cannot reproduce in process: {command}")
  shape = tuple(int(d) for d in flags.get("shape", "8192,8192").split(","))
  sparsity = float(flags.get("sparsity", 0.9))
  key = jax.random.key(0)
  if flags.get("format", "dense") == "ell":
    values, indices = alberta.sparse_init_ell(key, shape, sparsity)
    arrays = {"values": values, "indices": indices}
  else:
    arrays = {"matrix": alberta.sparse_init(key, shape, sparsity,
                                            method="counter")}
  alberta.checkpoint.save(flags["output"], arrays, metadata=dict(
      shape=list(shape), sparsity=sparsity, method="counter", seed=0,
      format=flags.get("format", "dense")))


def _doctests(name: str, obj) -> list[doctest.DocTest]:
  """The `>>>` examples of `obj`'s docstring (and its methods'), as doctests."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # The names docs/api/conf.py's `doctest_global_setup` gives the reference.
  globs = dict(alberta=alberta, jax=jax, jnp=jnp, np=np)
  finder = doctest.DocTestFinder(exclude_empty=True)
  return [t for t in finder.find(obj, name, globs=globs) if t.examples]


def _public_objects():
  modules = (alberta, alberta.initializers, alberta.checkpoint)
  for module in modules:
    for name in module.__all__:
      obj = getattr(module, name)
      if inspect.ismodule(obj):
        continue
      yield f"{module.__name__}.{name}", obj


class ReadmeTest(test_utils.TempDirMixin, absltest.TestCase):

  def test_every_size_replacement_still_matches_the_readme(self):
    text = _README.read_text()
    for big in list(_SMALLER) + list(_PATHS):
      with self.subTest(big):
        self.assertIn(big, text)

  def test_python_blocks_run_in_order(self):
    text = _readme(self.dir)
    commands = _commands(text)
    self.assertNotEmpty(commands)
    for command in commands:
      _save_in_process(command)
    self.run_python_blocks(text)

  @test_utils.slow
  def test_python_blocks_run_in_order_after_the_launcher(self):
    text = _readme(self.dir)
    for command in _commands(text):
      argv = shlex.split(command)
      argv[0] = sys.executable
      result = subprocess.run(argv, cwd=_ROOT, capture_output=True, text=True,
                              check=False, timeout=600)
      self.assertEqual(result.returncode, 0,
                       f"{command}\n{result.stdout}\n{result.stderr}")
    self.run_python_blocks(text)

  def run_python_blocks(self, text: str) -> None:
    """Runs the ```python blocks of `text` in order, in one namespace."""
    blocks = _blocks(text, "python")
    self.assertNotEmpty(blocks)
    namespace = {"__name__": "__readme__"}
    cwd = os.getcwd()
    os.chdir(self.dir)
    try:
      for i, block in enumerate(blocks):
        with self.subTest(block=i):
          try:
            exec(compile(block, f"README.md python block {i}", "exec"),  # pylint: disable=exec-used
                 namespace)
          except Exception as e:  # pylint: disable=broad-except
            self.fail(f"README python block {i} failed: {e!r}\n{block}")
    finally:
      os.chdir(cwd)
      # The README turns on the persistent compilation cache: not for the
      # tests that follow in this process.
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_compilation_cache_dir", None)


_NETWORKS_SECTION = "## Whole networks and training"
_FRAMEWORKS = ("haiku", "flax", "equinox")


def _section(text: str, heading: str) -> str:
  """The text of `heading`'s section, up to the next heading of its level."""
  start = text.index(heading + "\n")
  end = text.find("\n## ", start + len(heading))
  return text[start:end if end >= 0 else len(text)]


class NetworksSectionTest(absltest.TestCase):
  """The README's whole-network examples, one per framework, each on its own.

  The examples are read from the README (its "Whole networks and training"
  section), never copied here; each must run alone, in a fresh namespace, as
  a reader who copies just that one would run it (the in-order run above
  runs them with everything before them).
  """

  def test_one_example_per_framework_each_runs_alone(self):
    blocks = _blocks(_section(_README.read_text(), _NETWORKS_SECTION),
                     "python")
    self.assertLen(blocks, len(_FRAMEWORKS))
    for framework, block in zip(_FRAMEWORKS, blocks):
      with self.subTest(framework):
        self.assertIn(f"import {framework}", block)
        self.assertIn("alberta.sparsify(", block)
        namespace = {"__name__": "__readme__"}
        exec(compile(block, f"README.md {framework} example", "exec"),  # pylint: disable=exec-used
             namespace)

  def test_no_jax_initializer_is_offered_for_equinox_weights(self):
    # `initializers.sparse` zeroes along the wrong axis of an Equinox (out,
    # in) weight unless given fan_in_axes: the README must not pair them.
    for block in _blocks(_README.read_text(), "python"):
      if "eqx" in block:
        self.assertNotIn("initializers.sparse", block)


def _headline_table(text: str) -> list[str]:
  """The lines of the benchmark's headline table in a Markdown text."""
  # Imported here: scripts/benchlib imports no JAX, but the path is the root's.
  from scripts.benchlib import report  # pylint: disable=g-import-not-at-top
  lines = text.splitlines()
  start = lines.index(report.HEADLINE_HEADER)
  end = start
  while end < len(lines) and lines[end].startswith("|"):
    end += 1
  return lines[start:end]


class PerformanceFiguresTest(absltest.TestCase):
  """The README quotes the documented benchmark run, not figures of its own."""

  def test_readme_headline_is_docs_performance_headline(self):
    readme = _headline_table(_README.read_text())
    docs = _headline_table((_ROOT / "docs" / "PERFORMANCE.md").read_text())
    self.assertGreater(len(docs), 2)
    self.assertEqual(readme, docs)


class DocstringExampleTest(parameterized.TestCase):
  """The `>>>` examples of the public docstrings, as the API reference shows.

  The reference's doctest build (`sphinx -b doctest`, in CI's slow step) runs
  the same examples; this runs them in the default suite.
  """

  def test_public_objects_with_examples_exist(self):
    self.assertNotEmpty([n for n, o in _public_objects() if _doctests(n, o)])

  @parameterized.named_parameters(
      (name.replace(".", "_"), name, obj) for name, obj in _public_objects())
  def test_examples_run(self, name, obj):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in _doctests(name, obj):
      result = runner.run(test, out=lambda text: self.fail(text))
      self.assertEqual(result.failed, 0, msg=test.name)


if __name__ == "__main__":
  absltest.main()
