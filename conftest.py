"""Suite-wide hooks (repo root, so they also cover nbval's notebook items).

- Each run gets a SERVELAB_SESSION id, inherited by everything it starts.
- The leftover-process test always runs last, after every notebook, so it sees what the whole suite
  left behind.
- At the end, a table of how long each notebook took (written by tests/test_notebooks.py).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

LAST = "test_no_server_process_left_behind"
TIMINGS = Path(__file__).parent / "artifacts" / "notebook_timings.json"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.name == LAST)


def pytest_configure(config: pytest.Config) -> None:
    # Every kernel and server this run starts inherits the id, so the leftover test judges only them.
    os.environ.setdefault("SERVELAB_SESSION", uuid.uuid4().hex)


def pytest_sessionstart(session: pytest.Session) -> None:
    TIMINGS.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not TIMINGS.is_file():
        return
    timings = json.loads(TIMINGS.read_text())
    terminalreporter.section("notebook run times (papermill, quick profile)")
    for name, seconds in timings.items():
        terminalreporter.write_line(f"{seconds:8.1f} s  {name}")
    terminalreporter.write_line(f"{sum(timings.values()):8.1f} s  total")
