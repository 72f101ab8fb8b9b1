"""The exercise grader: a wrong, unwritten or crashing answer is a failed check with a hint, never a
traceback; the reference solution is graded beside it only when asked; both land in the results file."""

from __future__ import annotations

from pathlib import Path

import pytest

from servelab import results
from servelab.course import exercises
from servelab.course.exercises import grader
from servelab.course.grading import LabCheck

NOTEBOOK = "99_exercise_test"


def _check(answer: object) -> list[LabCheck]:
    value = answer() if callable(answer) else answer
    return [LabCheck("is 42", value == 42, f"got {value!r}; the answer is a number")]


def _not_yet() -> int:
    raise exercises.NotAnswered


def _crashes() -> int:
    return 1 // 0


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVELAB_RESULTS", str(tmp_path))
    monkeypatch.setattr(grader, "solution", lambda notebook, exercise: 42)
    results.reset(NOTEBOOK)


@pytest.mark.parametrize(
    ("answer", "hint"), [(41, "got 41"), (_not_yet, "Not written yet"), (_crashes, "ZeroDivisionError")]
)
def test_a_wrong_answer_fails_with_a_hint_and_the_reference_passes(
    answer: object, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    table = exercises.Grader(NOTEBOOK, check_reference_solutions=True).grade("answer", _check, answer)
    entry = results.load(NOTEBOOK)["exercises"]["answer"]
    assert entry["checks_passed"] == 0 and hint in next(iter(entry["hints"].values()))
    assert entry["reference"]["checks_passed"] == entry["reference"]["checks_total"] == 1
    assert "NO" in set(table["passed"]) and "Not yet" in capsys.readouterr().out


def test_without_the_parameter_only_the_learner_is_graded_and_exercises_accumulate() -> None:
    grading = exercises.Grader(NOTEBOOK)
    grading.grade("first", _check, 42)
    grading.grade("second", _check, 7)
    recorded = results.load(NOTEBOOK)["exercises"]
    assert recorded["first"]["checks_passed"] == 1 and "reference" not in recorded["first"]
    assert recorded["second"]["failed"] == ["is 42"]


def test_a_missing_solution_file_says_where_it_belongs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    with pytest.raises(Exception, match=r"No reference solutions for 99_exercise_test"):
        exercises.solution(NOTEBOOK, "answer")
