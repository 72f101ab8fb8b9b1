"""The README map's time columns: committed copy fresh, every notebook and lab listed, bad rows refused."""

import pytest

from servelab.course import course_map, facilitator
from servelab.errors import ServelabError
from servelab.paths import repo_root


def _readme() -> str:
    return (repo_root() / course_map.README).read_text(encoding="utf-8")


def test_committed_map_times_are_what_the_generator_writes_now() -> None:
    assert _readme() == course_map.refresh(_readme()), f"the README map is stale: run `{facilitator.REGENERATE}`"


def test_a_stale_time_is_rewritten_and_the_prose_kept() -> None:
    text = _readme()
    row = next(line for line in text.splitlines() if "`notebooks/07_autoscaling_cost.ipynb`" in line)
    stale = row.rsplit(" | ", 2)[0] + " | up to 1 min | 1 s |"
    fresh = course_map.refresh(text.replace(row, stale))
    assert row in fresh and stale not in fresh


def test_a_notebook_missing_from_the_map_is_named() -> None:
    text = _readme()
    row = next(line for line in text.splitlines() if "`notebooks/09_claims_ledger.ipynb`" in line)
    with pytest.raises(ServelabError, match="09_claims_ledger"):
        course_map.refresh(text.replace(row + "\n", ""))


def test_a_row_without_a_notebook_path_is_refused() -> None:
    text = _readme().replace(
        course_map.HEADER + "\n|---|---|---|---|---|\n",
        course_map.HEADER + "\n|---|---|---|---|---|\n| x | y | z | a | b |\n",
    )
    with pytest.raises(ServelabError, match="map row"):
        course_map.refresh(text)
