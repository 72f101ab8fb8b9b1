"""The book's plan (servelab.course.book): which file each page shows, and the refusal to build without the
executed notebooks. Sphinx and the browser are tests/publish/test_book.py's job; nothing here builds HTML."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
import yaml

from servelab.course import book
from servelab.errors import ServelabError
from servelab.paths import repo_root

README = """# Kit

A kit for learning things.

Second paragraph.

## Notebook map

| # | notebook | you will |
|---|---|---|
| 00 | `notebooks/00_a.ipynb` | start |
| lab 01 | `labs/lab01_b.ipynb` | fix |
| 02 | `notebooks/02_not_here.ipynb` | nothing yet |

## Next
"""
TOC = """parts:
  - caption: Notebooks
    pages: ["notebooks/*.ipynb"]
  - caption: Labs
    pages: ["labs/README.md", "labs/*.ipynb"]
  - caption: Reference
    pages: ["docs/guide.md", "docs/missing.md", "docs/*.md"]
"""


def _notebook(path: Path, title: str, *, papermill: dict | None = None) -> None:
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(f"# {title}\n\nSee [the guide](../docs/guide.md).")]
    )
    if papermill is not None:
        nb.metadata["papermill"] = papermill
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    """A tiny checkout: two notebooks, a lab, the book's toc, docs; no executed copies yet."""
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "_toc.yml").write_text(TOC)
    (tmp_path / "README.md").write_text(README)
    _notebook(tmp_path / "notebooks" / "00_a.ipynb", "00 · A")
    _notebook(tmp_path / "notebooks" / "01_c.ipynb", "01 · C")
    _notebook(tmp_path / "labs" / "lab01_b.ipynb", "Lab 01 · B")
    (tmp_path / "labs" / "README.md").write_text("# Labs\n")
    (tmp_path / "docs").mkdir()
    for name in ("guide", "another"):
        (tmp_path / "docs" / f"{name}.md").write_text(f"# {name}\n")
    return tmp_path


def _execute(kit: Path) -> None:
    """Stand-ins for what the notebook lane leaves: the notebooks' copies and the lab's untouched run."""
    run = {"start_time": "2026-12-01T10:00:00.1", "exception": None}
    _notebook(kit / "artifacts/notebooks/notebooks/00_a.ipynb", "00 · A", papermill=run)
    _notebook(kit / "artifacts/notebooks/notebooks/01_c.ipynb", "01 · C", papermill={**run, "exception": True})
    _notebook(kit / "artifacts/notebooks/labs/lab01_b.starting-point.ipynb", "Lab 01 · B", papermill=run)


def test_without_the_executed_notebooks_the_book_says_to_run_the_tests_first(kit: Path) -> None:
    with pytest.raises(ServelabError) as raised:
        book.plan(kit)
    message = str(raised.value)
    assert "run `make test` first" in message and "never runs a notebook" in message
    for rel in ("notebooks/00_a.ipynb", "notebooks/01_c.ipynb", "labs/lab01_b.ipynb"):
        assert rel in message
    assert "artifacts/notebooks/labs/lab01_b.starting-point.ipynb" in message


def test_one_missing_copy_is_enough_to_refuse(kit: Path) -> None:
    _execute(kit)
    (kit / "artifacts/notebooks/notebooks/01_c.ipynb").unlink()
    with pytest.raises(ServelabError, match=r"1 notebook\(s\) have no executed copy:?[\s\S]*01_c"):
        book.plan(kit)


def test_make_book_exits_nonzero_with_the_fix(kit: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(book, "repo_root", lambda: kit)
    assert book.main(["--out", str(kit / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("make book:") and "run `make test` first" in err
    assert not (kit / "out" / "html").exists()


def test_pages_are_the_executed_copies_in_toc_order(kit: Path) -> None:
    _execute(kit)
    parts = book.plan(kit)
    assert [p.caption for p in parts] == ["Notebooks", "Labs", "Reference"]
    rels = [[str(page.rel) for page in part.pages] for part in parts]
    assert rels == [
        ["notebooks/00_a.ipynb", "notebooks/01_c.ipynb"],
        ["labs/README.md", "labs/lab01_b.ipynb"],
        ["docs/guide.md", "docs/another.md"],  # listed first, then the glob's rest; docs/missing.md skipped
    ]
    lab = parts[1].pages[1]
    assert lab.source == kit / "artifacts/notebooks/labs/lab01_b.starting-point.ipynb" and lab.executed
    assert parts[0].pages[0].source == kit / "artifacts/notebooks/notebooks/00_a.ipynb"
    assert parts[2].pages[0].source == kit / "docs/guide.md" and not parts[2].pages[0].executed


def test_stage_lays_out_the_repository_and_an_intro_from_the_readme(kit: Path) -> None:
    _execute(kit)
    parts = book.plan(kit)
    src = kit / "out" / "src"
    book.stage(parts, src, kit)
    assert (src / "labs/lab01_b.ipynb").read_bytes() == (
        kit / "artifacts/notebooks/labs/lab01_b.starting-point.ipynb"
    ).read_bytes()
    assert (src / "docs/guide.md").is_file() and (src / "labs/README.md").is_file()
    intro = (src / "index.md").read_text()
    assert intro.startswith("# Kit\n\nA kit for learning things.\n") and "Second paragraph" not in intro
    assert "| 00 | [](notebooks/00_a.ipynb) |" in intro and "| lab 01 | [](labs/lab01_b.ipynb) |" in intro
    assert "| 02 | `notebooks/02_not_here.ipynb` |" in intro  # no page, so no link
    assert "quick profile, between 2026-12-01 10:00 and 2026-12-01 10:00 UTC" in intro
    assert "stopped on an error in that run: `notebooks/01_c.ipynb`" in intro
    toctrees = intro.split("```{toctree}")[1:]
    assert [t.split("\n")[1] for t in toctrees] == [":caption: Notebooks", ":caption: Labs", ":caption: Reference"]
    assert "\nnotebooks/00_a\nnotebooks/01_c\n" in toctrees[0] and "\nlabs/README\nlabs/lab01_b\n" in toctrees[1]


def test_a_repository_file_a_page_links_to_comes_along_as_a_download(kit: Path) -> None:
    _execute(kit)
    (kit / "data").mkdir()
    (kit / "data" / "prices.yaml").write_text("a: 1\n")
    (kit / "docs" / "guide.md").write_text("# guide\n\n[prices](../data/prices.yaml), [web](https://example.org/x)\n")
    parts = book.plan(kit)
    book.stage(parts, kit / "src", kit)
    assert (kit / "src" / "data" / "prices.yaml").read_text() == "a: 1\n"


def test_stale_copies_are_named(kit: Path) -> None:
    _execute(kit)
    parts = book.plan(kit)
    assert book.stale(parts, kit) == []
    newer = kit / "notebooks" / "00_a.ipynb"
    later = (kit / "artifacts/notebooks/notebooks/00_a.ipynb").stat().st_mtime + 10
    os.utime(newer, (later, later))
    assert book.stale(parts, kit) == ["notebooks/00_a.ipynb"]


def test_the_kits_own_toc_lists_every_notebook_and_lab_first() -> None:
    """The repository's book/_toc.yml: the notebooks, then the labs, then docs/ (the order the brief of the book
    and the README's map follow)."""
    toc = yaml.safe_load((repo_root() / book.TOC).read_text())
    assert [part["pages"][-1] for part in toc["parts"]] == ["notebooks/*.ipynb", "labs/*.ipynb", "docs/*.md"]
