"""The library's source tree: no import cycle, no public-looking dead code.

Read from the source with `ast`, without importing anything: the modules of
`alberta/_src` import one another without a cycle (a cycle makes import order
matter and hides a layer that belongs elsewhere), and every public-looking
(not underscored) top-level function or class of `alberta/_src` is used by the
library or the scripts, not only by the tests.
"""

import ast
import collections
import pathlib

from absl.testing import absltest

_ROOT = pathlib.Path(__file__).absolute().parent.parent
_SRC = _ROOT / "alberta" / "_src"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(_ROOT).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The modules of `modules` that `path` imports (at any depth of its code)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      # `from package import module` imports the module (the package's
      # __init__ has already run, but that is the package's own import).
      names = [
          f"{node.module}.{a.name}"
          if f"{node.module}.{a.name}" in modules
          else node.module
          for a in node.names
      ]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


def import_graph() -> dict[str, set[str]]:
  paths = {_module_name(p): p for p in _SRC.rglob("*.py")}
  modules = set(paths)
  return {
      name: _imports(path, modules) - {name} for name, path in paths.items()
  }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` as a list of modules, or None."""
  state = {}  # name -> "open" while on the stack, "done" after.
  stack = []

  def visit(name):
    state[name] = "open"
    stack.append(name)
    for dep in sorted(graph.get(name, ())):
      if state.get(dep) == "open":
        return stack[stack.index(dep) :] + [dep]
      if dep not in state:
        cycle = visit(dep)
        if cycle:
          return cycle
    stack.pop()
    state[name] = "done"
    return None

  for name in sorted(graph):
    if name not in state:
      cycle = visit(name)
      if cycle:
        return cycle
  return None


def _references(paths) -> collections.Counter:
  """How often each name is used (loaded, an attribute, imported by name)."""
  refs = collections.Counter()
  for path in paths:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Name):
        refs[node.id] += 1
      elif isinstance(node, ast.Attribute):
        refs[node.attr] += 1
      elif isinstance(node, ast.ImportFrom):
        refs.update(a.name for a in node.names)
      elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        refs[node.value] += 1  # e.g. a lazily imported name in a table
  return refs


class SourceTreeTest(absltest.TestCase):

  def test_alberta_src_has_no_import_cycle(self):
    self.assertIsNone(find_cycle(import_graph()))

  def test_the_cycle_finder_finds_a_cycle(self):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    self.assertEqual(find_cycle(graph), ["a", "b", "c", "a"])
    self.assertIsNone(find_cycle({"a": {"b"}, "b": set()}))

  def test_public_looking_definitions_are_used_outside_the_tests(self):
    users = [
        *(_ROOT / "alberta").rglob("*.py"),
        *(_ROOT / "scripts").rglob("*.py"),
    ]
    refs = _references(users)
    unused = []
    for path in sorted(_SRC.rglob("*.py")):
      for node in ast.parse(path.read_text()).body:
        if (
            isinstance(node, (ast.FunctionDef, ast.ClassDef))
            and not node.name.startswith("_")
            and not refs[node.name]
        ):
          unused.append(f"{path.relative_to(_ROOT)}: {node.name}")
    self.assertEmpty(
        unused,
        "only the tests (or nothing) use these; move "
        "them to the tests or remove them",
    )

  def test_method_names_match_the_methods(self):
    from alberta._src import checks  # pylint: disable=g-import-not-at-top
    from alberta._src import methods  # pylint: disable=g-import-not-at-top

    self.assertEqual(checks.METHOD_NAMES, tuple(methods.METHODS))


if __name__ == "__main__":
  absltest.main()
