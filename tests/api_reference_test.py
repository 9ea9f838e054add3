"""The API reference (docs/api, built by Sphinx) documents every public name.

The reference is built from the docstrings with warnings as errors, and its
`>>>` examples run, in CI's slow step (`sphinx-build -W`); this checks, in the
default suite and without Sphinx, that no public name is left out of it.
"""

from tests import env  # noqa: F401

import inspect
import pathlib
import re

from absl.testing import absltest

import alberta

_API = (
    pathlib.Path(__file__).absolute().parent.parent / "docs" / "api" / "api.rst"
)

# The modules whose `__all__` is the public surface.
_MODULES = (alberta, alberta.initializers, alberta.checkpoint)


def _documented() -> set[str]:
  """`module.name` for every object directive of api.rst."""
  names = set()
  module = None
  for line in _API.read_text().splitlines():
    current = re.match(r"\.\. (?:currentmodule|automodule):: (\S+)", line)
    if current:
      module = current.group(1)
      names.add(module)
      continue
    directive = re.match(
        r"\.\. (?:auto(?:function|class|exception|data)|py:\w+):: (\S+)", line
    )
    if directive:
      names.add(f"{module}.{directive.group(1)}")
  return names


class ApiReferenceTest(absltest.TestCase):

  def test_every_public_name_is_documented(self):
    documented = _documented()
    for module in _MODULES:
      for name in module.__all__:
        obj = getattr(module, name)
        qualified = (
            obj.__name__
            if inspect.ismodule(obj)
            else f"{module.__name__}.{name}"
        )
        with self.subTest(qualified):
          self.assertIn(qualified, documented)

  def test_every_documented_name_is_public(self):
    public = {m.__name__ for m in _MODULES} | {
        f"{m.__name__}.{n}" for m in _MODULES for n in m.__all__
    }
    self.assertEmpty(_documented() - public)


if __name__ == "__main__":
  absltest.main()
