"""What BUILD's globs cannot guarantee by themselves.

BUILD declares its targets from globs (every `scripts/*.py` a `py_binary`,
every `tests/*_test.py` a `py_test`), so a new module needs no entry there.
What is left to check: BUILD still evaluates to those targets, every entry of
its hand-written size table names an existing test module and a
valid value, and under Bazel the tests (and the subprocesses they start with
`sys.executable`) import `alberta` from the runfiles tree, i.e. the targets'
deps are complete rather than the source tree leaking in. BUILD files are
Python-compatible here, so a tiny Starlark stand-in evaluates it without Bazel.
"""

from tests import env  # noqa: F401

import os
import pathlib
import subprocess
import sys

from absl.testing import absltest

import alberta

# Under Bazel this is the runfiles copy of the repository (`__file__` is not
# resolved, so the symlinks are not followed back to the source tree); under
# pytest it is the checkout.
_ROOT = pathlib.Path(__file__).absolute().parent.parent
_UNDER_BAZEL = "TEST_SRCDIR" in os.environ

_TEST_SIZES = ("small", "medium", "large", "enormous")


def _glob(include, exclude=(), allow_empty=True):
  """Bazel's glob() for the top-level package (there are no subpackages)."""
  del allow_empty
  found = set()
  for pattern in include:
    found.update(p for p in _ROOT.glob(pattern) if p.is_file())
  for pattern in exclude:
    found.difference_update(_ROOT.glob(pattern))
  return sorted(str(p.relative_to(_ROOT)) for p in found)


def _patterns_used() -> list[str]:
  """Every pattern BUILD passes to glob(), include and exclude alike."""
  patterns = []

  def recording_glob(include, exclude=(), allow_empty=True):
    patterns.extend(include)
    patterns.extend(exclude)
    return _glob(include, exclude, allow_empty)

  _evaluate_build(recording_glob)
  return patterns


def _evaluate_build(glob=_glob) -> tuple[dict[str, dict], dict]:
  """Runs BUILD with stand-ins for the Bazel functions; targets and globals."""
  targets = {}

  def rule(**attrs):
    targets[attrs["name"]] = attrs

  names = {
      kind: rule for kind in ("filegroup", "py_binary", "py_library", "py_test")
  }
  names.update(
      package=lambda **kwargs: None, glob=glob, __builtins__={"len": len}
  )
  code = compile((_ROOT / "BUILD").read_text(), "BUILD", "exec")
  # One namespace: BUILD's list comprehensions see the rules as globals.
  exec(code, names)  # pylint: disable=exec-used
  return targets, names


class BuildFileTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.targets, cls.names = _evaluate_build()

  def test_every_test_module_and_script_is_a_target(self):
    for path in _glob(["tests/*_test.py"]) + _glob(["scripts/*.py"]):
      with self.subTest(path):
        target = self.targets.get(pathlib.Path(path).stem)
        self.assertIsNotNone(target, f"{path} has no target")
        self.assertEqual(target["srcs"], [path])

  def test_size_table_names_existing_tests(self):
    tests = {pathlib.Path(p).stem for p in _glob(["tests/*_test.py"])}
    for name, size in self.names["_TEST_SIZES"].items():
      with self.subTest(name):
        self.assertIn(
            name,
            tests,
            "BUILD's _TEST_SIZES names a test that no longer exists",
        )
        self.assertIn(size, _TEST_SIZES, name)

  def test_every_glob_pattern_matches_a_file(self):
    # A pattern left behind by a removed file is dead weight in BUILD.
    for pattern in _patterns_used():
      with self.subTest(pattern):
        self.assertNotEmpty(_glob([pattern]))

  def test_helper_modules_are_in_libraries(self):
    libraries = [
        t
        for t in self.targets.values()
        if t["name"]
        in (
            "alberta",
            "alberta_framework",
            "benchlib",
            "launchlib",
            "streamlib",
            "test_utils",
        )
    ]
    in_libraries = {s for t in libraries for s in t["srcs"]}
    helpers = _glob([
        "alberta/**/*.py",
        "scripts/benchlib/*.py",
        "scripts/launchlib/*.py",
        "scripts/streamlib/*.py",
        "third_party/alberta_framework/*.py",
    ]) + _glob(["tests/*.py"], exclude=["tests/*_test.py", "tests/conftest.py"])
    self.assertEmpty(sorted(set(helpers) - in_libraries))

  @absltest.skipUnless(_UNDER_BAZEL, "checks the Bazel runfiles tree")
  def test_alberta_is_imported_from_the_runfiles_tree(self):
    # The runfiles entry is a symlink into the source tree; the path Python
    # imported through must still be the runfiles one, or BUILD's deps are
    # not what the test ran with.
    self.assertStartsWith(
        os.path.abspath(alberta.__file__),
        os.path.abspath(os.environ["TEST_SRCDIR"]),
    )

  @absltest.skipUnless(_UNDER_BAZEL, "checks the Bazel runfiles tree")
  def test_subprocess_with_sys_executable_imports_alberta_and_jax(self):
    # What the multi-process launcher tests rely on: a child started with the
    # parent's interpreter and environment finds alberta (from the runfiles)
    # and the third-party packages (from the interpreter's site-packages).
    code = (
        "from tests import env; import alberta, jax, haiku; "
        "print(alberta.__file__); print(len(jax.devices()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    self.assertEqual(result.returncode, 0, result.stderr)
    alberta_file, num_devices = result.stdout.split()
    self.assertStartsWith(
        os.path.abspath(alberta_file),
        os.path.abspath(os.environ["TEST_SRCDIR"]),
    )
    self.assertEqual(int(num_devices), env.NUM_CPU_DEVICES)


if __name__ == "__main__":
  absltest.main()
