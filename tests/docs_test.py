"""The documentation's code runs as written.

Every ```python block of README.md and docs/*.md runs on its own, in a fresh
Python process with the CPU's one device (a block that wants more devices says
so itself, as a reader's script would) and an empty working directory, at the
size it shows: a newcomer can copy any one of them. Blocks that are
measurements rather than examples (they say `# slow snippet:` and why) run in
the slow step. The README's launcher commands run as written in the slow step.

The public docstrings' `>>>` examples run as doctests, with the names the API
reference's doctest build gives them (`alberta`, `jax`, `jnp`, `np`).
"""

from tests import env  # noqa: F401

import concurrent.futures
import doctest
import inspect
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized

import alberta
from tests import test_utils

_ROOT = pathlib.Path(__file__).absolute().parent.parent
_README = _ROOT / "README.md"
_DOCS = (_README, *sorted((_ROOT / "docs").glob("*.md")))
_SLOW_MARK = "# slow snippet:"
_SNIPPET_TIMEOUT_S = 600


def _blocks(text: str, language: str) -> list[str]:
  return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def _snippets(slow: bool) -> list[tuple[str, str]]:
  """`(name, code)` of every ```python block of the docs, fast or slow."""
  found = []
  for path in _DOCS:
    for i, code in enumerate(_blocks(path.read_text(), "python")):
      if (_SLOW_MARK in code) == slow:
        found.append((f"{path.relative_to(_ROOT)} python block {i}", code))
  return found


def _run_snippet(code: str) -> subprocess.CompletedProcess:
  with tempfile.TemporaryDirectory() as cwd:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=test_utils.single_device_env(),
        capture_output=True,
        text=True,
        timeout=_SNIPPET_TIMEOUT_S,
        check=False,
    )


def _commands(text: str) -> list[str]:
  """Launcher commands of the README's ```sh blocks, continuations joined."""
  commands = []
  for block in _blocks(text, "sh"):
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
      line = line.split("#", 1)[0].strip()
      if line.startswith("python scripts/init_large.py"):
        if "--coordinator_address" not in line:  # several hosts: not here
          commands.append(line)
  return commands


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


class SnippetTest(absltest.TestCase):

  def check_snippets_run_alone(self, snippets):
    self.assertNotEmpty(snippets)
    # Two at a time: each is a process of its own, mostly JAX's startup.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      results = list(pool.map(lambda s: _run_snippet(s[1]), snippets))
    for (name, code), result in zip(snippets, results, strict=True):
      with self.subTest(name):
        self.assertEqual(
            result.returncode,
            0,
            f"{name} failed on its own:\n{code}\n{result.stderr[-3000:]}",
        )

  def test_every_python_block_runs_alone(self):
    self.check_snippets_run_alone(_snippets(slow=False))

  @test_utils.slow
  def test_every_slow_python_block_runs_alone(self):
    self.check_snippets_run_alone(_snippets(slow=True))

  def test_snippet_runner_reports_a_failing_block(self):
    result = _run_snippet("import alberta\nalberta.sparse_init(key, (4, 4))")
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("NameError", result.stderr)

  @test_utils.slow
  def test_readme_launcher_commands_run(self):
    commands = _commands(_README.read_text())
    self.assertNotEmpty(commands)
    with tempfile.TemporaryDirectory() as tmp:
      for command in commands:
        argv = shlex.split(command.replace("/tmp/", tmp + "/"))
        argv[0] = sys.executable
        result = subprocess.run(
            argv,
            cwd=_ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        self.assertEqual(
            result.returncode, 0, f"{command}\n{result.stdout}\n{result.stderr}"
        )


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
      (name.replace(".", "_"), name, obj) for name, obj in _public_objects()
  )
  def test_examples_run(self, name, obj):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in _doctests(name, obj):
      result = runner.run(test, out=lambda text: self.fail(text))
      self.assertEqual(result.failed, 0, msg=test.name)


if __name__ == "__main__":
  absltest.main()
