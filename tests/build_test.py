"""The Bazel BUILD file declares every test module, script and library file.

`bazel test //...` only runs the test modules that BUILD names, so a new
`tests/*_test.py` without a `py_test` would silently never run under Bazel.
These tests evaluate BUILD with a tiny Starlark stand-in (BUILD files are
Python-compatible here) and compare its targets with the files on disk; they
take well under a second and need no Bazel. Under Bazel they also check that
the test, and any subprocess it starts with `sys.executable` (as the launcher
tests do), imports `alberta` from the runfiles tree, i.e. that the targets'
`deps` are complete rather than the source tree leaking in.
"""

from tests import env  # noqa: F401

import ast
import dataclasses
import os
import pathlib
import subprocess
import sys
from typing import Any

from absl.testing import absltest
from absl.testing import parameterized

import alberta

# Under Bazel this is the runfiles copy of the repository (`__file__` is not
# resolved, so the symlinks are not followed back to the source tree); under
# pytest it is the checkout.
_ROOT = pathlib.Path(__file__).absolute().parent.parent
_UNDER_BAZEL = "TEST_SRCDIR" in os.environ

_TEST_SIZES = ("small", "medium", "large", "enormous")
_TEST_TIMEOUTS = ("short", "moderate", "long", "eternal")
_RULES = ("filegroup", "py_binary", "py_library", "py_test", "sh_binary",
          "sh_test", "test_suite")
_IGNORED_CALLS = ("exports_files", "licenses", "load", "package")


@dataclasses.dataclass(frozen=True)
class Target:
  """One rule instance from BUILD."""
  kind: str
  attrs: dict[str, Any]

  @property
  def name(self) -> str:
    return self.attrs["name"]

  @property
  def srcs(self) -> list[str]:
    return list(self.attrs.get("srcs", []))

  @property
  def main(self) -> str:
    """The file Bazel runs for a py_binary/py_test: `main`, else `<name>.py`."""
    main = self.attrs.get("main")
    if main is None:
      main = self.name + ".py"
    matches = [s for s in self.srcs if s == main or s.endswith("/" + main)]
    return matches[0] if len(matches) == 1 else ""

  def labels(self, attr: str) -> set[str]:
    return {_normalize_label(label) for label in self.attrs.get(attr, [])}


def _normalize_label(label: str) -> str:
  """`//:x`, `:x` and `x` all name target x of the top-level package."""
  for prefix in ("//:", ":"):
    if label.startswith(prefix):
      return label[len(prefix):]
  return label


def _glob(include: list[str], exclude: tuple[str, ...] = (),
          allow_empty: bool = True) -> list[str]:
  """Bazel's glob() for the top-level package (there are no subpackages)."""
  del allow_empty
  found = set()
  for pattern in include:
    found.update(p for p in _ROOT.glob(pattern) if p.is_file())
  for pattern in exclude:
    found.difference_update(_ROOT.glob(pattern))
  return sorted(str(p.relative_to(_ROOT)) for p in found)


def _evaluate_build(path: pathlib.Path) -> list[Target]:
  """Runs BUILD with stand-ins for the Bazel functions it calls."""
  targets = []

  def rule(kind):
    def record(**attrs):
      targets.append(Target(kind, attrs))
    return record

  names = {kind: rule(kind) for kind in _RULES}
  names.update({call: lambda *args, **kwargs: None for call in _IGNORED_CALLS})
  names["glob"] = _glob
  # Unknown functions raise NameError: extend _RULES rather than guess.
  code = compile(path.read_text(), str(path), "exec")
  exec(code, {"__builtins__": {}}, names)  # pylint: disable=exec-used
  return targets


def _first_party_uses(path: pathlib.Path) -> set[str]:
  """First-party modules a file imports or names (`alberta`, `scripts.x`...).

  Besides imports, a string naming a script file (`"init_large.py"`,
  `"scripts/init_large.py"`) counts as a use of `scripts.init_large`: the tests
  that run a script as a subprocess find it by path, so it must be in their
  runfiles.
  """
  scripts = {p.stem for p in _ROOT.glob("scripts/*.py")}
  modules = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      modules.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      modules.add(node.module)
      modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      name = node.value.removeprefix("scripts/").removesuffix(".py")
      if node.value.endswith(".py") and name in scripts:
        modules.add(f"scripts.{name}")
  return {m for m in modules if m.split(".")[0] in ("alberta", "scripts",
                                                    "tests")}


def _snippet(kind: str, path: str, size: str = "") -> str:
  name = pathlib.Path(path).stem
  size_line = f'    size = "{size}",\n' if size else ""
  return (f'{kind}(\n    name = "{name}",\n{size_line}'
          f'    srcs = ["{path}"],\n    deps = [...],\n)')


class BuildFileTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.targets = _evaluate_build(_ROOT / "BUILD")
    cls.by_name = {t.name: t for t in cls.targets}

  def _targets(self, kind: str) -> list[Target]:
    return [t for t in self.targets if t.kind == kind]

  def test_target_names_are_unique(self):
    names = [t.name for t in self.targets]
    self.assertCountEqual(names, set(names))

  def test_every_test_module_has_a_py_test(self):
    on_disk = set(_glob(["tests/*_test.py"]))
    declared = {t.main for t in self._targets("py_test")}
    missing = sorted(on_disk - declared)
    self.assertEmpty(
        missing, "test modules without a py_test in BUILD (bazel test would "
        "skip them); add:\n\n" + "\n\n".join(
            _snippet("py_test", m, "medium") for m in missing))

  def test_every_py_test_runs_an_existing_module_named_like_it(self):
    for target in self._targets("py_test"):
      with self.subTest(target.name):
        self.assertEqual(target.srcs, [f"tests/{target.name}.py"])
        self.assertTrue((_ROOT / target.srcs[0]).is_file(),
                        f"{target.srcs[0]} is gone: remove //:{target.name}")

  def test_every_script_has_a_py_binary(self):
    on_disk = {s for s in _glob(["scripts/*.py"])
               if not s.endswith("__init__.py")}
    declared = {t.main for t in self._targets("py_binary")}
    missing = sorted(on_disk - declared)
    self.assertEmpty(missing, "scripts without a py_binary in BUILD; add:\n\n"
                     + "\n\n".join(_snippet("py_binary", m) for m in missing))
    for target in self._targets("py_binary"):
      with self.subTest(target.name):
        self.assertTrue(target.main, f"//:{target.name} has no main file")
        self.assertTrue((_ROOT / target.main).is_file(),
                        f"{target.main} is gone: remove //:{target.name}")

  def test_library_holds_every_alberta_module(self):
    self.assertEqual(set(self.by_name["alberta"].srcs),
                     set(_glob(["alberta/**/*.py"])))

  def test_libraries_hold_every_helper_module_of_tests(self):
    helpers = {s for s in _glob(["tests/*.py"])
               if not s.endswith(("_test.py", "conftest.py"))}
    in_libraries = {s for t in self._targets("py_library") for s in t.srcs
                    if s.startswith("tests/")}
    self.assertEqual(in_libraries, helpers)

  def test_tests_have_a_valid_size_timeout_and_shard_count(self):
    for target in self._targets("py_test"):
      with self.subTest(target.name):
        self.assertIn(target.attrs.get("size", "medium"), _TEST_SIZES)
        if "timeout" in target.attrs:
          self.assertIn(target.attrs["timeout"], _TEST_TIMEOUTS)
        self.assertGreater(target.attrs.get("shard_count", 1), 0)

  def _providers(self, path: str) -> set[str]:
    """Libraries that bring `path` into the runfiles, directly or by a dep."""
    libraries = self._targets("py_library")
    direct = {t.name for t in libraries if path in t.srcs}
    return direct | {t.name for t in libraries if t.labels("deps") & direct}

  def test_targets_depend_on_the_first_party_code_they_use(self):
    # Bazel would fail these too, but only after a build; this names the
    # missing dependency at once.
    for target in self._targets("py_test") + self._targets("py_binary"):
      deps = target.labels("deps") | target.labels("data")
      for module in sorted(_first_party_uses(_ROOT / target.main)):
        parts = module.split(".")
        path = "/".join(parts[:2]) + ".py" if len(parts) > 1 else ""
        if parts[0] == "alberta":
          needed = {"alberta"}
        elif parts[0] == "tests" and len(parts) == 1:
          needed = self._providers("tests/__init__.py")
        elif parts[0] == "tests" and self._providers(path):
          needed = self._providers(path)
        elif parts[0] == "tests" and (_ROOT / path).exists():
          # Another test module: its file must be in the runfiles.
          needed = {path}
        elif parts[0] == "scripts" and len(parts) > 1:
          needed = {parts[1]}
        else:
          continue
        if target.name in needed:  # A script naming its own file.
          continue
        with self.subTest(f"{target.name} uses {module}"):
          self.assertTrue(deps & needed, f"//:{target.name} uses {module}: "
                          f"add one of {sorted(needed)} to its deps (data for "
                          "a file it runs)")

  @absltest.skipUnless(_UNDER_BAZEL, "checks the Bazel runfiles tree")
  def test_alberta_is_imported_from_the_runfiles_tree(self):
    # The runfiles entry is a symlink into the source tree; the path Python
    # imported through must still be the runfiles one, or BUILD's deps are
    # not what the test ran with.
    self.assertStartsWith(os.path.abspath(alberta.__file__),
                          os.path.abspath(os.environ["TEST_SRCDIR"]))

  @absltest.skipUnless(_UNDER_BAZEL, "checks the Bazel runfiles tree")
  def test_subprocess_with_sys_executable_imports_alberta_and_jax(self):
    # What the multi-process launcher tests rely on: a child started with the
    # parent's interpreter and environment finds alberta (from the runfiles)
    # and the third-party packages (from the interpreter's site-packages).
    code = ("from tests import env; import alberta, jax, haiku; "
            "print(alberta.__file__); print(len(jax.devices()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, check=False, timeout=240)
    self.assertEqual(result.returncode, 0, result.stderr)
    alberta_file, num_devices = result.stdout.split()
    self.assertStartsWith(os.path.abspath(alberta_file),
                          os.path.abspath(os.environ["TEST_SRCDIR"]))
    self.assertEqual(int(num_devices), env.NUM_CPU_DEVICES)


if __name__ == "__main__":
  absltest.main()
