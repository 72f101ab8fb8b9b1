"""``servelab preflight`` (is this machine ready for the lab?) and ``servelab course`` (the instructor's files)."""

from __future__ import annotations

import typer
from rich.table import Table

from servelab.cli.console import console

app = typer.Typer(help="Files for instructors, generated from the kit.", no_args_is_help=True)


def preflight(engines: bool = typer.Option(True, help="also start each engine and ask it once")) -> None:
    """Check the machine and both engines; exit 1 if a required check fails."""
    from servelab.course import preflight as pf

    checks = pf.run(engines=engines)
    table = Table("check", "status", "found", "fix")
    colour = {"ok": "green", "FAIL": "red", "info": "grey50"}
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.found, "" if c.ok else c.fix)
    console.print(table)
    if not pf.all_ok(checks):
        raise typer.Exit(1)


@app.command("guide")
def guide() -> None:
    """Rewrite docs/facilitator-guide.md and the README map's time columns from the notebooks' openings
    and the reference results."""
    from servelab.course import course_map, facilitator

    console.print(f"wrote {facilitator.write_markdown()}")
    console.print(f"wrote {course_map.write()} (the notebook map's times)")
