"""The course's diagrams (servelab.course.diagrams): every source under docs/diagrams/ is drawn by the real
Graphviz and shown by some notebook, and a machine without Graphviz still runs the notebooks."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from typer.testing import CliRunner

from servelab import binaries
from servelab.cli import app
from servelab.course import diagrams, glossary
from servelab.errors import ServelabError

# What the course teaches with a picture (issue 15), each in the notebook of its topic.
TAUGHT = {
    "request_path": "08_production_practices.ipynb",
    "paged_kv_blocks": "04_quantization_paged_attention.ipynb",
    "alerting_pipeline": "06_monitoring_alerting.ipynb",
    "hpa_loop": "07_autoscaling_cost.ipynb",
}


@pytest.fixture(scope="module")
def dot() -> str:
    """The real dot; without it the tests error with the install command (no silent skip)."""
    found = binaries.find("dot")
    if found is None:
        pytest.fail(f"Graphviz's dot is not installed: {diagrams.INSTALL}", pytrace=False)
    return found


@pytest.mark.parametrize("name", diagrams.names())
def test_every_source_renders_to_svg_named_after_its_file(name: str, dot: str) -> None:
    svg = diagrams.render(name)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    # dot writes the graph's name as the SVG's title: the book's test finds a page's diagram by it
    assert f"<title>{name}</title>" in svg, f"docs/diagrams/{name}.dot: name its graph `digraph {name}`"


def test_every_diagram_is_shown_by_a_notebook_and_every_one_shown_exists() -> None:
    shown, sources = diagrams.where_shown(), set(diagrams.names())
    assert set(TAUGHT) <= sources
    assert set(shown) == sources, f"notebooks show diagrams with no source: {set(shown) - sources}"
    orphans = [name for name, notebooks in shown.items() if not notebooks]
    assert not orphans, f"sources no notebook shows (add a `diagrams.show(...)` cell or delete them): {orphans}"
    for name, notebook in TAUGHT.items():
        assert notebook in [p.name for p in shown[name]], f"{name} is not shown in {notebook}"


def test_no_notebook_draws_a_diagram_another_way() -> None:
    """One way to draw: a Mermaid block renders in JupyterLab but not in the offline book."""
    for path in glossary.notebook_paths():
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            assert "```mermaid" not in cell.source, f"{path.name} cell {i}: draw it from docs/diagrams/ instead"


def test_shown_in_reads_the_show_calls_of_code_cells_only(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell('In markdown, `diagrams.show("not_a_call")` is only text.'),
            nbformat.v4.new_code_cell("%matplotlib inline\nfrom servelab.course import diagrams\n\ndiagrams.show('a')"),
            nbformat.v4.new_code_cell('diagrams.show("b")  # and again\ndiagrams.show( "a" )'),
        ]
    )
    nbformat.write(nb, tmp_path / "x.ipynb")
    assert diagrams.shown_in(tmp_path / "x.ipynb") == ["a", "b", "a"]


def test_show_displays_the_svg(monkeypatch: pytest.MonkeyPatch, dot: str) -> None:
    import IPython.display

    displayed: list[object] = []
    monkeypatch.setattr(IPython.display, "display", displayed.append)
    diagrams.show("hpa_loop")
    (svg,) = displayed
    assert isinstance(svg, IPython.display.SVG) and "<title>hpa_loop</title>" in svg.data
    assert svg._repr_svg_().startswith("<svg")  # what Jupyter stores as image/svg+xml: the element, no prologue


def test_show_without_dot_prints_the_fix_and_goes_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no dot on it
    assert binaries.find("dot") is None
    diagrams.show("request_path")  # no exception: a missing picture must not fail the cell
    (line,) = capsys.readouterr().out.splitlines()
    assert "docs/diagrams/request_path.dot" in line and "apt-get install graphviz" in line
    with pytest.raises(ServelabError, match="apt-get install graphviz"):
        diagrams.render("request_path")  # the renderer itself says why it cannot draw


def test_an_unknown_diagram_lists_the_known_ones() -> None:
    with pytest.raises(ServelabError, match=r"no diagram 'request-path'[\s\S]*pick one of .*request_path"):
        diagrams.show("request-path")


def test_a_broken_source_is_an_error_with_dots_reason(tmp_path: Path, dot: str) -> None:
    (tmp_path / diagrams.DIAGRAMS).mkdir(parents=True)
    (tmp_path / diagrams.DIAGRAMS / "broken.dot").write_text("digraph broken { a -> }\n")
    with pytest.raises(ServelabError, match=r"dot could not draw .*broken\.dot[\s\S]*syntax error"):
        diagrams.render("broken", tmp_path)


def test_the_cli_renders_every_diagram_into_a_folder(tmp_path: Path, dot: str) -> None:
    result = CliRunner().invoke(app, ["course", "diagrams", "--out", str(tmp_path / "svg")])
    assert result.exit_code == 0, result.output
    written = sorted(p.stem for p in (tmp_path / "svg").glob("*.svg"))
    assert written == diagrams.names()
    assert "no notebook" not in result.output
