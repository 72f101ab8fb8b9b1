"""``servelab preflight`` (is this machine ready for the lab?) and ``servelab course`` (the instructor's files:
the facilitator guide, the glossary links every notebook carries, and the diagrams the notebooks draw)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from servelab.cli.console import console, fail
from servelab.errors import ServelabError

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

    try:
        console.print(f"wrote {facilitator.write_markdown()}")
        console.print(f"wrote {course_map.write()} (the notebook map's times)")
    except ServelabError as err:
        fail(err)


@app.command("glossary")
def glossary(
    paths: list[Path] = typer.Argument(None, help="notebooks or labs (default: every one under notebooks/ and labs/)"),
    fix: bool = typer.Option(False, "--fix", help="insert the missing first-use links and drop repeated ones"),
) -> None:
    """Check that every notebook links each docs/glossary.md term on its first use; exit 1 if one does not."""
    from servelab.course import glossary as gl

    problems = gl.glossary_problems(gl.glossary_path().read_text(encoding="utf-8"))
    for problem in problems:
        console.print(f"{gl.GLOSSARY}: {problem}", markup=False, soft_wrap=True)
    notebooks = paths or gl.notebook_paths()
    left = []
    if fix:
        table = Table("notebook", "links inserted", "repeated links removed", "paths corrected")
        for path in notebooks:
            result = gl.fix_notebook(path)
            table.add_row(path.name, str(result.inserted), str(result.unlinked), str(result.repathed))
            left += result.left
        console.print(table)
        console.print("markdown cells changed through nbformat; run `ruff format` on the notebooks before committing")
    else:
        left = [p for path in notebooks for p in gl.check_notebook(path)]
    if left:
        table = Table("notebook", "cell", "problem", "text", "anchor")
        for p in left:
            table.add_row(p.path.name, str(p.cell), p.kind, Text(p.text), f"#{p.anchor}")
        console.print(table)
        if not fix:
            console.print(f"`{gl.FIX_COMMAND}` inserts the missing links; an unknown anchor needs a person")
    if problems or left:
        raise typer.Exit(1)
    if not fix:
        console.print(f"every term of {gl.GLOSSARY} is linked on its first use in {len(notebooks)} notebooks")


@app.command("diagrams")
def diagrams(
    out: Path = typer.Option(Path("build") / "diagrams", help="folder for the SVG files"),
) -> None:
    """Render every docs/diagrams/*.dot to SVG with Graphviz's dot, and say which notebooks show each."""
    from servelab.course import diagrams as dg

    try:
        written = dg.render_all(out)
    except ServelabError as err:
        fail(err)
    shown = dg.where_shown()
    table = Table("diagram", "svg", "shown in")
    for path in written:
        notebooks = ", ".join(p.name for p in shown.get(path.stem, []))
        table.add_row(path.stem, str(path), notebooks or "[red]no notebook[/]")
    console.print(table)
