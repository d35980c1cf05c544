"""Sphinx configuration; builds offline (no intersphinx fetches)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "cauldron"
author = "cauldron contributors"
copyright = "cauldron contributors"
release = version = "0.1.0"

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
exclude_patterns = ["_build"]
html_theme = "alabaster"
