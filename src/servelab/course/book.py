"""The course as a static HTML book (`make book`), made from the notebooks the test suite executed.

The test suite runs every notebook and lab through papermill and keeps the executed copies under
``artifacts/notebooks/`` (``tests/notebooks/test_notebooks.py``). The book shows exactly those outputs:
it never executes a notebook, and it stops, saying to run ``make test`` first, when a copy is missing.

How a build goes: ``book/_toc.yml`` lists the pages in order (the notebooks, then the labs, then docs/);
:func:`plan` finds each page's file (a notebook's executed copy, a lab's untouched run, a markdown file as
committed); :func:`stage` lays them out under a source folder with the repository's own layout (so links
between pages, such as the labs README's, resolve as they do on GitHub) plus an ``index.md`` made from the
README's opening and its notebook map; :func:`build` runs Sphinx on it with ``book/conf.py`` (myst-nb,
``nb_execution_mode = "off"``, sphinx-book-theme; nothing loaded from the web).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from servelab.course import course_map
from servelab.errors import ServelabError
from servelab.paths import repo_root

BOOK = Path("book")
TOC = BOOK / "_toc.yml"
ARTIFACTS = Path("artifacts") / "notebooks"  # where tests/notebooks/test_notebooks.py has papermill write
DEFAULT_OUT = Path("build") / "book"
SPHINX_TIMEOUT_S = 600  # about 15 s on 2 cores
RUN_FIRST = "run `make test` first: its notebook lane executes every notebook and lab into artifacts/notebooks/"
_LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


@dataclass(frozen=True)
class Page:
    """One page of the book: ``rel`` is its place (the repository's path), ``source`` the file shown there."""

    rel: Path
    source: Path

    @property
    def executed(self) -> bool:
        return self.rel.suffix == ".ipynb"


@dataclass(frozen=True)
class Part:
    caption: str
    pages: tuple[Page, ...]


@dataclass
class Built:
    """What :func:`build` made: the HTML folder, its pages, how long Sphinx took, and what it warned about."""

    html: Path
    parts: list[Part]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


def executed_copy(rel: Path, root: Path) -> Path:
    """Where the test suite leaves a notebook's executed copy; a lab's page is its untouched run, as a
    learner first opens it (checks failing with their hints), not the run with the reference solution."""
    base = root / ARTIFACTS / rel
    if rel.parts[0] == "labs":
        return base.with_name(f"{rel.stem}.starting-point.ipynb")
    return base


def _expand(pattern: str, root: Path) -> list[Path]:
    if any(ch in pattern for ch in "*?["):
        return sorted(p.relative_to(root) for p in root.glob(pattern) if p.is_file())
    return [Path(pattern)] if (root / pattern).is_file() else []


def plan(root: Path | None = None) -> list[Part]:
    """The book's parts and pages from book/_toc.yml; raise, listing every notebook whose executed copy is
    missing, rather than build a book with a page missing or a page without its outputs."""
    root = root or repo_root()
    toc = yaml.safe_load((root / TOC).read_text())
    parts: list[Part] = []
    seen: set[Path] = set()
    missing: list[str] = []
    for entry in toc["parts"]:
        pages = []
        for pattern in entry["pages"]:
            for rel in _expand(pattern, root):
                if rel in seen:
                    continue
                seen.add(rel)
                source = executed_copy(rel, root) if rel.suffix == ".ipynb" else root / rel
                if not source.is_file():
                    missing.append(f"{rel} (expected {source.relative_to(root)})")
                pages.append(Page(rel, source))
        if pages:
            parts.append(Part(entry["caption"], tuple(pages)))
    if missing:
        raise ServelabError(
            f"{len(missing)} notebook(s) have no executed copy, and the book shows only what the test suite "
            "executed (it never runs a notebook itself):\n    " + "\n    ".join(missing),
            RUN_FIRST,
        )
    if not any(page.executed for part in parts for page in part.pages):
        raise ServelabError(f"{TOC} lists no notebook", "list notebooks/*.ipynb in its first part")
    return parts


def stale(parts: Sequence[Part], root: Path | None = None) -> list[str]:
    """Executed copies older than the notebook they were run from: the page shows an earlier version."""
    root = root or repo_root()
    return [
        str(page.rel)
        for part in parts
        for page in part.pages
        if page.executed and page.source.stat().st_mtime < (root / page.rel).stat().st_mtime
    ]


def _papermill(path: Path) -> dict:
    meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
    return meta if isinstance(meta, dict) else {}


def _opening(readme: str) -> str:
    """The README's first paragraph (after its title)."""
    body = readme.split("\n## ", 1)[0].split("\n", 1)[1].strip()
    return body.split("\n\n", 1)[0].strip()


def _map(readme: str, pages: set[Path]) -> str:
    """The README's notebook map, each notebook's path turned into a link to its page, which Sphinx writes as
    the page's title (a path with no page stays as it is)."""
    match = re.search(r"^## Notebook map\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    if not match:
        return ""
    table = [line for line in match.group(1).splitlines() if line.startswith("|")]

    def link(found: re.Match[str]) -> str:
        rel = Path(found.group(1))
        return f"[]({rel})" if rel in pages else found.group(0)

    return "\n".join(course_map.NOTEBOOK_PATH.sub(link, line) for line in table)


def intro(parts: Sequence[Part], root: Path | None = None) -> str:
    """The book's first page: the README's opening, where the outputs come from, the notebook map, and the
    table of contents (one toctree per part)."""
    root = root or repo_root()
    readme = (root / "README.md").read_text()
    executed = [page for part in parts for page in part.pages if page.executed]
    runs = {page.rel: _papermill(page.source) for page in executed}
    starts = sorted(str(m["start_time"])[:16].replace("T", " ") for m in runs.values() if m.get("start_time"))
    when = f", between {starts[0]} and {starts[-1]} UTC" if starts else ""
    failed = [f"`{rel}`" for rel, meta in runs.items() if meta.get("exception")]
    title = readme.split("\n", 1)[0].lstrip("# ").strip()
    lines = [
        f"# {title}",
        "",
        _opening(readme),
        "",
        "```{note}",
        "This book is the course as the test suite last ran it: every output on these pages is the one papermill "
        f"recorded when `make test` executed the notebook (quick profile{when}); nothing was re-run to build the "
        "book. Labs are shown untouched, as a learner first opens them: their checks fail, each with its hint.",
        "```",
        "",
    ]
    if failed:
        lines += ["```{warning}", f"These notebooks stopped on an error in that run: {', '.join(failed)}.", "```", ""]
    table = _map(readme, {page.rel for page in executed})
    if table:
        lines += ["## Notebook map", "", table, ""]
    for part in parts:
        lines += ["```{toctree}", f":caption: {part.caption}", ":hidden:", ""]
        lines += [str(page.rel.with_suffix("")) for page in part.pages]
        lines += ["```", ""]
    return "\n".join(lines)


def _linked_files(text: str, rel: Path, root: Path) -> list[Path]:
    """Repository files a page links to by a relative path (they become the book's download links)."""
    found = []
    for target, _ in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("/"):
            continue
        path = (root / rel.parent / target).resolve()
        if path.is_file() and path.is_relative_to(root):
            found.append(path.relative_to(root))
    return found


def _markdown_of(page: Page) -> str:
    if not page.executed:
        return page.source.read_text()
    cells = json.loads(page.source.read_text()).get("cells", [])
    return "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "markdown")


def stage(parts: Sequence[Part], src: Path, root: Path | None = None) -> None:
    """Lay the pages out under ``src`` (emptied first) with the repository's layout, plus ``index.md`` and
    the repository files that pages link to."""
    root = (root or repo_root()).resolve()
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    placed = set()
    for part in parts:
        for page in part.pages:
            (src / page.rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(page.source, src / page.rel)
            placed.add(page.rel)
    for part in parts:
        for page in part.pages:
            for rel in _linked_files(_markdown_of(page), page.rel, root):
                if rel not in placed and rel.suffix not in (".md", ".ipynb"):
                    (src / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(root / rel, src / rel)
                    placed.add(rel)
    (src / "index.md").write_text(intro(parts, root))


def build(out: Path | None = None, *, root: Path | None = None, jobs: str = "1") -> Built:
    """Stage the book under ``out/src`` and build its HTML into ``out/html`` (both replaced); raise when an
    executed copy is missing or Sphinx fails. Sphinx's warnings are returned and kept in out/warnings.txt."""
    root = root or repo_root()
    out = (out or root / DEFAULT_OUT).resolve()
    parts = plan(root)
    src, html, log = out / "src", out / "html", out / "warnings.txt"
    stage(parts, src, root)
    if html.exists():
        shutil.rmtree(html)
    for stale_dir in (out / "doctrees", out / "jupyter_execute"):
        shutil.rmtree(stale_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(root / BOOK), "-q", "-j", jobs]
    cmd += ["-d", str(out / "doctrees"), "-w", str(log), "--keep-going", str(src), str(html)]
    began = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=out, capture_output=True, text=True, check=False, timeout=SPHINX_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ServelabError(
            f"Sphinx did not build the book within {SPHINX_TIMEOUT_S} s", f"see {log}; the staged sources are in {src}"
        ) from None
    seconds = time.perf_counter() - began
    warnings = [line for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if done.returncode != 0 or not (html / "index.html").is_file():
        raise ServelabError(
            f"Sphinx could not build the book (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}",
            f"see {log}; the staged sources are under {src}",
        )
    return Built(html, parts, seconds, warnings, stale(parts, root))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.course.book", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("-j", "--jobs", default="1", help="Sphinx's parallel jobs (default 1)")
    args = parser.parse_args(argv)
    try:
        built = build(args.out, jobs=args.jobs)
    except ServelabError as err:
        print(f"make book: {err}", file=sys.stderr)
        return 2
    pages = sum(len(part.pages) for part in built.parts)
    print(f"built the book: {pages} pages in {built.seconds:.1f} s -> {built.html / 'index.html'}")
    if built.stale:
        print(f"note: {len(built.stale)} page(s) show an executed copy older than its notebook ({RUN_FIRST}):")
        print("\n".join(f"  {rel}" for rel in built.stale))
    if built.warnings:
        print(f"{len(built.warnings)} Sphinx warning(s), in {built.html.parent / 'warnings.txt'}:")
        print("\n".join(f"  {line}" for line in built.warnings[:20]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
