"""The facilitator guide: committed copy fresh, the day fits (or says it does not), every module placed."""

from __future__ import annotations

import difflib
import itertools

import pytest

from servelab.course import facilitator
from servelab.errors import ServelabError
from servelab.paths import repo_root


@pytest.fixture(scope="module")
def openings() -> list[facilitator.Opening]:
    return [facilitator.read_opening(p) for p in facilitator.notebook_paths()]


@pytest.fixture(scope="module")
def plan(openings: list[facilitator.Opening]) -> facilitator.Plan:
    return facilitator.plan(facilitator.build_modules(openings, facilitator.machine_times()))


def test_committed_guide_is_what_the_generator_writes_now() -> None:
    committed = (repo_root() / facilitator.GUIDE).read_text(encoding="utf-8")
    fresh = facilitator.markdown()
    diff = "".join(
        list(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True), "committed", "now"))[:40]
    )
    assert committed == fresh, f"{facilitator.GUIDE} is stale: run `{facilitator.REGENERATE}`\n{diff}"


def test_every_notebook_and_lab_is_in_the_plan_and_the_guide(openings: list[facilitator.Opening]) -> None:
    names = {p.stem for p in facilitator.notebook_paths()}
    assert names == set(facilitator.ORDER) == set(facilitator.NOTES)
    assert len(names) == len(openings) >= 14
    guide = (repo_root() / facilitator.GUIDE).read_text(encoding="utf-8")
    assert not [n for n in names if f"### `{n}`" not in guide]


def test_the_day_ends_by_its_end_time_with_the_cut_lines_or_says_it_overruns(plan: facilitator.Plan) -> None:
    guide = facilitator.markdown()
    end = facilitator._minutes(facilitator.DAY_END)
    if plan.fits:
        assert facilitator.end_of(plan.day) <= end
        assert "overruns" not in guide
    else:
        assert f"still overruns {facilitator.DAY_END}" in guide
    # Each cut saves time, and its end time is the schedule of every cut up to it.
    assert all(c.saves_min > 0 for c in plan.cut_lines)
    ends = [c.ends for c in plan.cut_lines]
    assert ends == sorted(ends, reverse=True)
    assert facilitator.end_of(plan.full) - sum(c.saves_min for c in plan.cut_lines) <= ends[-1]


def test_slot_is_the_larger_of_learner_and_machine_time_plus_discussion() -> None:
    opening = facilitator.Opening("x", "x", 20, None)
    assert facilitator.Module(opening, 20, 3, 5).slot_min == 25
    assert facilitator.Module(opening, 20, 31, 5).slot_min == 40  # machine-bound: 36 rounded up


def test_breaks_never_split_a_module(plan: facilitator.Plan) -> None:
    rows = plan.full
    assert [r.what for r in rows if r.module is None] == [b[1] for b in facilitator.BREAKS]
    for before, after in itertools.pairwise(rows):
        assert after.start == before.start + before.minutes


@pytest.mark.parametrize(
    ("text", "learner", "exercises"),
    [
        ("# L\n\n**Learner time:** 20–30 minutes. **Machine time:** a few seconds.", 30, None),
        ("# N\n\n**Time:** about 45 minutes for a learner; the machine works about 4 minutes.", 45, None),
        ("# N\n\n**Time:** 4 minutes of machine time. About 50 minutes for you, 30 of them for the three", 50, 30),
        (
            "# N\n\n**Time:** about 60 minutes for a learner, the exercises included (about 5, 20 and 10 minutes)",
            60,
            35,
        ),
    ],
)
def test_parse_opening_reads_both_phrasings(text: str, learner: float, exercises: float | None) -> None:
    opening = facilitator.parse_opening("nb", text)
    assert (opening.learner_min, opening.exercise_min) == (learner, exercises)


def test_an_opening_without_learner_time_fails_naming_the_notebook() -> None:
    with pytest.raises(ServelabError, match=r"07_x: its opening states no learner time") as err:
        facilitator.parse_opening("07_x", "# 07\n\n**Time:** about 3 minutes on 2 CPU cores.")
    assert "Learner time" in str(err.value) and facilitator.REGENERATE in str(err.value)


def test_a_notebook_missing_from_the_times_file_fails(openings: list[facilitator.Opening]) -> None:
    times = facilitator.machine_times()
    short = {**times, "seconds": {k: v for k, v in times["seconds"].items() if k != "05_benchmarking"}}
    with pytest.raises(ServelabError, match="05_benchmarking"):
        facilitator.build_modules(openings, short)


def test_times_file_says_where_its_figures_come_from() -> None:
    times = facilitator.machine_times()
    assert times["profile"] == "quick" and times["date"] in times["source"]
