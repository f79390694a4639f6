"""Sphinx configuration of the nnmjax documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(``pip install -e ".[docs]"``). Offline: no intersphinx, optional dependencies mocked.
"""
import os
import sys

sys.path.insert(0, os.path.abspath("_ext"))
sys.path.insert(0, os.path.abspath(".."))

import nnmjax  # noqa: E402

project = "nnmjax"
author = "nnmjax contributors"
release = nnmjax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
    "config_reference",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "audit/*.json"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Optional dependencies are never imported by the docs build.
autodoc_mock_imports = ["torch", "tensorflow", "tensorflow_datasets", "byzfl"]
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
# jaxtyping annotations render as written (``Real[ArrayLike, 'n d']``), not expanded
autodoc_type_aliases = {name: name for name in ("Array", "ArrayLike", "PRNGKeyArray")}
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # NamedTuple fields are documented once, in the class

try:
    import furo  # noqa: F401
    html_theme = "furo"
except ImportError:  # pragma: no cover
    html_theme = "alabaster"
html_title = f"nnmjax {release}"
html_static_path = []
