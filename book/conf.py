"""Sphinx configuration of the course book (`make book`, `python -m servelab.course.book`).

The book is the notebooks as the test suite executed them (papermill writes them under artifacts/notebooks/),
then the labs, then docs/: ``servelab.course.book`` stages those copies and the pages listed in book/_toc.yml
into a source folder and runs Sphinx on it with this file (``-c book``). Nothing here executes a notebook:
``nb_execution_mode = "off"``. Everything the pages load is local (no CDN, no web font, no math renderer from
the web), so the book reads offline; tests/publish/test_book.py checks that in a real browser.
"""

from __future__ import annotations

project = "LLM Serving Lab"
author = "LLM Serving Lab"
copyright = "the LLM Serving Lab authors"

extensions = ["myst_nb"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# --- notebooks: outputs as the suite executed them, never re-run -----------------------------------------
nb_execution_mode = "off"
nb_merge_streams = True  # one block per stream, as Jupyter shows consecutive prints
nb_ipywidgets_js: dict[str, dict[str, str]] = {}  # no widget manager from a CDN (the notebooks have no widgets)
# MyST extensions: tables, definition lists and ```{note}``` blocks come with MyST; dollar math is left off,
# since it would need MathJax from the web and the notebooks' one displayed formula reads as written.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](#a-heading) links inside a page resolve
suppress_warnings = ["myst.header"]  # notebooks start at H1 and may jump to H3 in a "Your turn" block

# --- HTML ------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "LLM Serving Lab"
html_copy_source = True  # each page's download button serves its executed notebook or its markdown
html_show_sourcelink = False
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "use_issues_button": False,
    "use_edit_page_button": False,
    "navigation_with_keys": False,
}
