"""Sphinx configuration of alberta's API reference (built from the docstrings).

Build it, warnings as errors, and run its `>>>` examples, from the repository
root:

  python -m sphinx -W -b html docs/api /tmp/alberta-api
  python -m sphinx -W -b doctest docs/api /tmp/alberta-api-doctest
"""

import os
import sys

sys.path.insert(
    0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
)

import alberta  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

project = "alberta"
author = "The alberta authors"
copyright = "The alberta authors"  # pylint: disable=redefined-builtin
release = alberta.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.napoleon",
]

# Google-style docstrings, as in haiku, optax and chex.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
# A class shows its constructor's arguments too.
autoclass_content = "both"
autodoc_default_options = {"members": False, "show-inheritance": False}
# Names are documented where the user imports them, not in `alberta._src`.
add_module_names = True

# Every `>>>` example runs with these names, as a user's session would.
doctest_global_setup = """
import jax
import jax.numpy as jnp
import numpy as np
import alberta
"""

html_theme = "alabaster"
html_title = f"alberta {release}"
exclude_patterns = ["_build"]
nitpicky = False

# The docstrings quote code in single backticks, as Markdown does.
default_role = "code"
