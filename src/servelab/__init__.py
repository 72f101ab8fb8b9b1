"""LLM Serving Lab: shared code that every notebook, lab, test and CLI command calls.

Notebooks tell the story; this package does the work, so nothing is copied between notebooks.
"""

__version__ = "0.1.0"
