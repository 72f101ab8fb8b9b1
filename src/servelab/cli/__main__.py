"""``python -m servelab.cli``: the ``servelab`` command where the console script is not on PATH (a kernel's
``sys.executable``, as notebook 07 runs it)."""

from servelab.cli import app

app()
