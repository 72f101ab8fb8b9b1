"""``servelab env``: the pinned environment and its conda twin."""

from __future__ import annotations

import typer

from servelab.cli.console import console

app = typer.Typer(help="The pinned environment and its conda twin.", no_args_is_help=True)


@app.command("render")
def env_render() -> None:
    """Rewrite environment.yml's pip list from requirements/lock.txt."""
    from servelab.course import environment

    environment.write_environment_yml()
    console.print(f"wrote {environment.env_yml_path()}")


@app.command("check")
def env_check() -> None:
    """Exit 1 if environment.yml and requirements/lock.txt disagree."""
    from servelab.course import environment

    problems = environment.drift()
    for p in problems:
        console.print(f"[red]{p}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print("environment.yml matches requirements/lock.txt")
