"""Sphinx configuration: the narrative docs (Markdown, via myst-parser) and the API reference (autodoc + napoleon).

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors, as in CI).
"""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "mmsb"
author = "the mmsb authors"
copyright = "the mmsb authors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "benchmarks/*.json", "benchmarks/*.txt"]

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

napoleon_numpy_docstring = True
napoleon_google_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}

html_theme = "alabaster"
html_static_path: list = []
