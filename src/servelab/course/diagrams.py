"""The course's diagrams: Graphviz sources under ``docs/diagrams/``, drawn in the notebook that teaches each.

Why Graphviz sources and not pictures: a diagram is then text that anyone can change and review in a diff,
and a notebook draws it from the same file every time. :func:`show` renders a source with ``dot -Tsvg`` and
displays the SVG, so the executed notebook carries the picture and the book, made from the executed
notebooks, shows it without a step of its own (nothing is loaded from the web, unlike a Mermaid block).

``dot`` is an OS tool (the ``graphviz`` package, which ``make os-tools`` installs as root on Debian), found
like every other one by :func:`servelab.binaries.find` (on PATH or beside this Python). Where
it is missing, :func:`show` prints one line saying how to install it and where the source is, and the
notebook goes on: a diagram is not worth a failed cell. A source that ``dot`` rejects is an error, though,
with dot's own message. A source's graph is named like its file (``digraph request_path`` in
``request_path.dot``): the SVG's ``<title>`` then says which diagram a page shows.
``servelab course diagrams`` renders them all into a folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import nbformat

from servelab import binaries
from servelab.course.glossary import notebook_paths
from servelab.errors import ServelabError
from servelab.paths import repo_root
from servelab.procs import run_command

DIAGRAMS = Path("docs") / "diagrams"
DOT_TIMEOUT_S = 30  # a diagram renders in well under a second
INSTALL = binaries.TOOLS["dot"].install
_SHOW = re.compile(r"""\bdiagrams\.show\(\s*["']([\w-]+)["']""")


def diagrams_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / DIAGRAMS


def names(root: Path | None = None) -> list[str]:
    """Every diagram, by its source's name (``docs/diagrams/<name>.dot``)."""
    return sorted(path.stem for path in diagrams_dir(root).glob("*.dot"))


def source(name: str, root: Path | None = None) -> Path:
    """The Graphviz source of ``name``; a name with no source is an error that lists the ones there are."""
    path = diagrams_dir(root) / f"{name}.dot"
    if not path.is_file():
        raise ServelabError(f"no diagram {name!r}: {path} does not exist", f"pick one of {names(root)}")
    return path


def render(name: str, root: Path | None = None) -> str:
    """The SVG of diagram ``name``, drawn by ``dot``; an error when ``dot`` is missing or rejects the source."""
    path = source(name, root)
    dot = binaries.find("dot")
    if dot is None:
        raise ServelabError(f"Graphviz's `dot` is not installed; it draws {path}", f"install it: {INSTALL}")
    done = run_command([dot, "-Tsvg", str(path)], DOT_TIMEOUT_S, f"dot -Tsvg {path}", f"check {path} with `dot`")
    if done.returncode != 0 or "<svg" not in done.stdout:
        raise ServelabError(
            f"dot could not draw {path} (exit {done.returncode}): {done.stderr.strip()[-1000:]}",
            f"fix the Graphviz source {path}",
        )
    return done.stdout


def show(name: str) -> None:
    """Display diagram ``name`` in the notebook as SVG; without ``dot``, say how to install it and go on."""
    from IPython.display import SVG, display

    path = source(name)
    if binaries.find("dot") is None:
        print(f"(diagram {path.relative_to(repo_root())} not drawn: Graphviz's `dot` is missing; {INSTALL})")
        return
    display(SVG(data=render(name)))


def shown_in(notebook: Path) -> list[str]:
    """The diagrams a notebook's code cells show, in order (the ``diagrams.show("<name>")`` calls)."""
    cells = nbformat.read(notebook, as_version=4).cells
    return [name for cell in cells if cell.cell_type == "code" for name in _SHOW.findall(cell.source)]


def render_all(out: Path, root: Path | None = None) -> list[Path]:
    """Write every diagram as ``out/<name>.svg``; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names(root):
        target = out / f"{name}.svg"
        target.write_text(render(name, root), encoding="utf-8")
        written.append(target)
    return written


def where_shown(notebooks: Iterable[Path] | None = None, root: Path | None = None) -> dict[str, list[Path]]:
    """For every diagram, the notebooks that show it (default: every notebook and lab); an empty list is a
    source no notebook draws, and a name without a source is a notebook's call that would fail."""
    found: dict[str, list[Path]] = {name: [] for name in names(root)}
    for notebook in notebook_paths(root) if notebooks is None else notebooks:
        for name in dict.fromkeys(shown_in(notebook)):
            found.setdefault(name, []).append(notebook)
    return found
