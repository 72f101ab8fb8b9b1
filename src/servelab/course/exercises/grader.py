"""Grading a notebook exercise: the learner's answer always, the reference solution on request.

Why one run grades both: running each notebook a second time with the solutions applied would double
the suite's engine time. An exercise's check is a pure function of the answer and of what the notebook
already measured, so grading the reference solution right after the learner's answer, in the same cell
and against the same engine, proves the check can pass; the untouched answer proves it can fail.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import cache
from types import ModuleType
from typing import Any, TypeVar

from servelab import paths, results
from servelab.course.grading import LabCheck, raised, score, verdict
from servelab.errors import ServelabError

T = TypeVar("T")


class NotAnswered(Exception):
    """Raised by a placeholder answer (``raise NotAnswered``): the learner has not written it yet."""


@cache
def solutions_module(notebook: str) -> ModuleType:
    """``notebooks/solutions/<notebook>.py``, loaded once: the instructor copy of a notebook's answers."""
    path = paths.repo_root() / "notebooks" / "solutions" / f"{notebook}.py"
    if not path.is_file():
        raise ServelabError(f"No reference solutions for {notebook} ({path}).", "they ship with the kit's repository")
    spec = importlib.util.spec_from_file_location(f"servelab_solutions_{notebook}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solution(notebook: str, exercise: str) -> Any:
    """The reference answer to ``exercise`` of ``notebook`` (the instructor copy), by its name."""
    module = solutions_module(notebook)
    if not hasattr(module, exercise):
        raise ServelabError(f"notebooks/solutions/{notebook}.py has no {exercise!r}", "name it as the exercise")
    return getattr(module, exercise)


def _attempt(check: Callable[[T], list[LabCheck]], answer: T, exercise: str) -> list[LabCheck]:
    """Run ``check`` on ``answer``; an answer that raises is a failed check with its message, not a traceback."""
    try:
        return check(answer)
    except NotAnswered:
        return [LabCheck(f"{exercise}: answered", False, "Not written yet: replace the placeholder, then run again.")]
    except Exception as err:  # noqa: BLE001 -- the learner's code: whatever it raises is feedback, a hint
        return [raised(f"{exercise}: runs", err)]


class Grader:
    """Grades the exercises of one notebook and records them in its results file under ``exercises``."""

    def __init__(self, notebook: str, check_reference_solutions: bool = False) -> None:
        self.notebook = notebook
        self.check_reference_solutions = check_reference_solutions

    def grade(self, exercise: str, check: Callable[[T], list[LabCheck]], answer: T) -> Any:
        """Grade ``answer`` with ``check``, print the verdict and return it as a table.

        ``exercise`` names the answer in ``notebooks/solutions/<notebook>.py``. With
        ``check_reference_solutions`` the reference answer is graded too and recorded beside it.
        """
        checks = _attempt(check, answer, exercise)
        entry: dict[str, Any] = score(checks)
        if self.check_reference_solutions:
            reference = _attempt(check, solution(self.notebook, exercise), exercise)
            entry["reference"] = score(reference)
            passed = entry["reference"]["checks_passed"]
            print(f"(Reference solution for {exercise}: {passed} of {len(reference)} checks pass.)")
            for name, hint in entry["reference"]["hints"].items():
                print(f"  reference NO  {name}: {hint}")
        recorded = results.load(self.notebook).get("exercises", {}) if results.path_for(self.notebook).is_file() else {}
        results.record(self.notebook, exercises={**recorded, exercise: entry})
        return verdict(checks)
