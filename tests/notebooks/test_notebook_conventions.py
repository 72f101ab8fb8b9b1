"""Every notebook and lab follows the kit's conventions, so learners, papermill and the tests can rely on them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("labs/**/*.ipynb")])


def _nb(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_there_are_notebooks() -> None:
    assert any(p.parent.name == "notebooks" for p in NOTEBOOKS) and any(p.parent.name == "labs" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    """Outputs are stripped (clean diffs, no stale numbers), except the cells marked NBVAL_CHECK_OUTPUT, whose
    committed output tests/notebooks/test_notebooks.py compares with what each run prints."""
    for i, cell in enumerate(_nb(path).cells):
        if cell.cell_type != "code":
            continue
        assert not cell.get("execution_count"), f"cell {i} has an execution count: clear outputs before committing"
        if "NBVAL_CHECK_OUTPUT" not in cell.source:
            assert not cell.get("outputs"), f"cell {i} has outputs: clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_with_a_profile(path: Path) -> None:
    cells = [c for c in _nb(path).cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters' (papermill)"
    assigned = {
        t.id
        for node in ast.parse(cells[0].source).body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    assert "profile" in assigned
    for node in ast.parse(cells[0].source).body:  # plain literals only: papermill overrides them
        assert isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.List, ast.UnaryOp)), (
            f"parameters cell: keep to plain literal assignments ({ast.unparse(node)[:60]})"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_opens_with_objectives_time_prerequisites_and_closes_with_summary(path: Path) -> None:
    cells = _nb(path).cells
    opening = cells[0].source.lower()
    closing = " ".join(c.source for c in cells[-2:] if c.cell_type == "markdown").lower()
    assert cells[0].cell_type == "markdown" and opening.startswith("# ")
    for word in ("objectives", "time", "prerequisites"):
        assert word in opening, f"the first cell should state the {word}"
    assert "summary" in closing and "what to try next" in closing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_numbered_name(path: Path) -> None:
    assert path.stem[:2].isdigit() or (path.stem.startswith("lab") and path.stem[3:5].isdigit())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_checked_cells_commit_the_text_they_are_checked_against(path: Path) -> None:
    """A cell marked NBVAL_CHECK_OUTPUT with no committed output would be compared with nothing; its output
    must be plain text (a stream or text/plain), which a run can reproduce exactly."""
    for i, cell in enumerate(_nb(path).cells):
        if cell.cell_type != "code" or "NBVAL_CHECK_OUTPUT" not in cell.source:
            continue
        assert cell.get("outputs"), f"cell {i} is marked NBVAL_CHECK_OUTPUT but commits no output to compare"
        for out in cell.outputs:
            assert out.output_type == "stream" or (
                out.output_type in ("execute_result", "display_data") and set(out.data) == {"text/plain"}
            ), f"cell {i}: commit only text output ({out.output_type})"


EXERCISE_NOTEBOOKS = [p for p in NOTEBOOKS if p.parent.name == "notebooks" and "01" <= p.name[:2] <= "08"]


@pytest.mark.parametrize("path", EXERCISE_NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_are_graded_with_reference_solutions_outside_the_notebook(path: Path) -> None:
    """Each exercise cell grades through the one Grader, under a name its solutions file defines, and the
    parameters cell can switch on grading the reference solutions (what the notebook test does)."""
    cells = _nb(path).cells
    parameters = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    assert "check_reference_solutions = False" in parameters.source
    graded = [
        node.args[0].value
        for cell in cells
        if cell.cell_type == "code"
        for node in ast.walk(ast.parse(cell.source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "grade"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]
    assert len(graded) >= 2, f"{len(graded)} graded exercises"
    solutions = ROOT / "notebooks" / "solutions" / f"{path.stem}.py"
    tree = ast.parse(solutions.read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)} | {
        t.id
        for n in tree.body
        if isinstance(n, ast.Assign | ast.AnnAssign)
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Name)
    }
    assert set(graded) <= defined, f"solutions missing from {solutions.name}: {set(graded) - defined}"
    assert not any(
        re.search(r"(import|from)\s+\S*solutions|solutions/", c.source) for c in cells if c.cell_type == "code"
    ), "the learner's notebook never imports its solutions: the Grader loads them only when asked"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_last_code_cell_stops_everything_the_notebook_started(path: Path) -> None:
    """One "stop everything" cell, the same in every notebook: engines, Prometheus, Alertmanager, gateways."""
    code = [c for c in _nb(path).cells if c.cell_type == "code"]
    calls = [
        node
        for node in ast.walk(ast.parse(code[-1].source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "stop_all"
    ]
    assert calls, "end with a code cell that calls servelab.procs.stop_all()"


_FILE_CALLS = {"Path", "open", "read_text", "read_csv", "safe_load_file"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_files_are_found_from_the_repository_root_not_the_working_directory(path: Path) -> None:
    """A relative path in a cell depends on the kernel's working directory (the notebook's folder in JupyterLab,
    anything in a script): the package resolves files from the repository root (servelab.paths, solution_text)."""
    relative = []
    for cell in _nb(path).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in _FILE_CALLS:
                relative += [
                    arg.value
                    for arg in node.args
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("/")
                ]
    assert not relative, f"relative paths {relative}: use servelab.paths (repo_root, data_path) or labs.solution_text"
