"""The one console every command prints to, and the one way a command fails: the error's own fix, exit 1."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

from servelab.errors import ServelabError

console = Console()


def fail(err: ServelabError) -> NoReturn:
    """Print a learner-facing error (what went wrong and the fix) instead of a traceback, and exit 1."""
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(1)
