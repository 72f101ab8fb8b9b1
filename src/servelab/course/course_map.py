"""The README's notebook map: its learner-time and machine-time columns, generated.

Why generated: the map is where a learner decides what to open next and an instructor what fits in an
afternoon, so both times belong beside each notebook and lab. They come from the same two sources as the
facilitator guide (each opening's stated learner time, and the last clean-clone CI run's papermill
seconds in ``data/reference/measured/notebook_times.json``), and a hand-typed copy would drift from
both. :func:`refresh` rewrites only those two columns of the rows; what each row says a learner will do
stays prose written by hand. ``servelab course guide`` refreshes the map with the guide, and a unit test
fails when the committed README differs from what :func:`refresh` writes.
"""

from __future__ import annotations

import re
from pathlib import Path

from servelab.course import facilitator
from servelab.errors import ServelabError
from servelab.paths import repo_root

README = Path("README.md")
HEADER = "| # | notebook | you will | learner time | machine time |"
NOTEBOOK_PATH = re.compile(r"`((?:notebooks|labs)/[^`]+\.ipynb)`")
"""A map row names its notebook by path, in backticks (the book links it from the same match)."""


def _machine(seconds: float) -> str:
    """Seconds as a reader plans with them: "45 s" below two minutes, "9 min" above."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _cells(path: Path, times: dict[str, float]) -> tuple[str, str]:
    opening = facilitator.read_opening(repo_root() / path)
    learner = f"up to {opening.learner_min:.0f} min"
    if path.stem not in times:
        raise ServelabError(
            f"{facilitator.TIMES_FILE} has no machine time for {path.stem}",
            f"refresh data/reference/measured/{facilitator.TIMES_FILE} from a full `make test` run",
        )
    return learner, _machine(times[path.stem])


def refresh(text: str) -> str:
    """``text`` (the README) with the map's two time columns recomputed; raise if the map is missing a
    notebook or lab, or a row names none."""
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == HEADER)
    except StopIteration:
        raise ServelabError(
            f"{README} has no notebook map starting with the header {HEADER!r}",
            "restore the map's header under '## Notebook map'",
        ) from None
    times = facilitator.machine_times()["seconds"]
    seen: set[str] = set()
    i = start + 2  # past the header and its |---| line
    while i < len(lines) and lines[i].startswith("|"):
        cells = lines[i].rstrip("\n").split(" | ")
        found = NOTEBOOK_PATH.search(cells[1]) if len(cells) == 5 else None
        if not found:
            raise ServelabError(
                f"{README} map row {i + 1} is not '| # | `path.ipynb` | you will | learner | machine |'",
                "give the row five columns, the second the notebook's path in backticks",
            )
        path = Path(found.group(1))
        seen.add(path.stem)
        learner, machine = _cells(path, times)
        lines[i] = " | ".join([*cells[:3], learner, f"{machine} |"]) + "\n"
        i += 1
    missing = sorted(p.stem for p in facilitator.notebook_paths() if p.stem not in seen)
    if missing:
        raise ServelabError(f"{README}'s notebook map lacks {missing}", "add a row for each to the map")
    return "".join(lines)


def write() -> Path:
    """Rewrite the README's map in place; returns its path."""
    path = repo_root() / README
    path.write_text(refresh(path.read_text(encoding="utf-8")), encoding="utf-8")
    return path
