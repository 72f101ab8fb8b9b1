"""The suite's one conftest: hooks, lane order and the servers the live tests share.

Lanes (directories): ``tests/unit`` (no server of any kind: run with ``make unit``), ``tests/live``
(real engines, Prometheus, Alertmanager, the gateway, stub servers), ``tests/notebooks`` (every
notebook through papermill, and the notebooks' conventions) and ``tests/publish`` (the course book,
built from the notebooks that lane executed, in a headless browser).

- Each run gets a SERVELAB_SESSION id, inherited by everything it starts.
- Items run lane by lane: unit, live, notebooks, publish (the book needs every notebook's executed
  copy, so it comes after them); the leftover-process test always runs last, after every notebook, so
  it sees what the whole suite left behind.
- A unit test that starts a server (anything through servelab.procs.ManagedServer) fails: move it to
  tests/live/.
- Shared servers: ``llamacpp_engine`` and ``vllm_engine`` (default options) and ``prometheus`` (a
  real Prometheus scraping only itself, for running PromQL). Each is started once, the first time a
  test asks for it, and stopped right after the last test (in run order) that asks for it, or at the
  end of the session, whichever comes first; so none of them is still running while the notebooks
  start their own engines, and the leftover test sees no process that a shared fixture holds. A test
  that needs other options (one thread, --max-num-seqs 2, a server it stops) starts its own.
- At the end: how long each notebook took (recorded by tests/notebooks/test_notebooks.py into the
  ``notebook_timings`` fixture; a table in memory, so another pytest run on the same checkout cannot
  empty it), and how often each shared server was started and for how many tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from servelab.engines.launch import Engine
    from servelab.observe.prometheus import PrometheusServer
    from servelab.procs import ManagedServer

TESTS = Path(__file__).resolve().parent
LAST = "test_no_server_process_left_behind"
LANES = {"unit": 0, "live": 1, "notebooks": 2, "publish": 3}


def _lane(item: pytest.Item) -> str | None:
    try:
        return item.path.relative_to(TESTS).parts[0]
    except ValueError:
        return None


def _rank(item: pytest.Item) -> int:
    if item.name == LAST:
        return len(LANES)
    return LANES.get(_lane(item) or "", LANES["live"])


def pytest_configure(config: pytest.Config) -> None:
    # Every kernel and server this run starts inherits the id, so the leftover test judges only them.
    os.environ.setdefault("SERVELAB_SESSION", uuid.uuid4().hex)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: file order is kept inside each lane


# --- a unit test starts no server ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def _unit_tests_start_no_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if _lane(request.node) != "unit":
        return
    from servelab.procs import ManagedServer

    def refuse(self: ManagedServer) -> ManagedServer:
        raise AssertionError(f"a unit test started a server ({self.name}): move the test to tests/live/")

    monkeypatch.setattr(ManagedServer, "start", refuse)


# --- shared servers -----------------------------------------------------------------------------


class _Shared:
    """The servers the shared fixtures hold, and after which test each one is no longer needed."""

    def __init__(self) -> None:
        self.held: dict[str, ManagedServer] = {}
        self.starts: dict[str, list[float]] = {}  # fixture name -> seconds to ready, one per start
        self.last_use: dict[str, int] = {}  # fixture name -> index of the last item that asks for it
        self.users: dict[str, int] = {}
        self.index: dict[str, int] = {}  # nodeid -> position in the run

    def plan(self, items: list[pytest.Item]) -> None:
        self.index = {item.nodeid: i for i, item in enumerate(items)}
        for i, item in enumerate(items):
            for name in SHARED:
                if name in item.fixturenames:
                    self.last_use[name] = i
                    self.users[name] = self.users.get(name, 0) + 1

    def hold(self, name: str, start: Callable[[], ManagedServer]) -> Any:
        server = start()
        self.held[name] = server
        self.starts.setdefault(name, []).append(server.ready_seconds or 0.0)
        return server

    def release(self, name: str) -> None:
        server = self.held.pop(name, None)
        if server is not None:
            server.stop()

    def release_after(self, item: pytest.Item) -> None:
        position = self.index.get(item.nodeid)
        for name in list(self.held):
            if position is None or position >= self.last_use.get(name, -1):
                self.release(name)


_SHARED = _Shared()


def pytest_collection_finish(session: pytest.Session) -> None:
    _SHARED.plan(session.items)  # after every reorder and deselection: the order tests really run in


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        _SHARED.release_after(item)


@pytest.fixture(scope="session")
def llamacpp_engine() -> Iterator[Engine]:
    """llama.cpp's server with the kit's default options, shared by every test that asks for it."""
    from servelab.engines.launch import start_llamacpp

    yield _SHARED.hold("llamacpp_engine", start_llamacpp)
    _SHARED.release("llamacpp_engine")


@pytest.fixture(scope="session")
def vllm_engine() -> Iterator[Engine]:
    """vLLM (CPU build) with the kit's default options, shared by every test that asks for it."""
    from servelab.engines.launch import start_vllm

    yield _SHARED.hold("vllm_engine", start_vllm)
    _SHARED.release("vllm_engine")


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusServer]:
    """A real Prometheus scraping only itself, no rules: enough to parse and run any PromQL."""
    from servelab.observe.prometheus import start_prometheus
    from servelab.procs import free_port

    def start() -> PrometheusServer:
        port = free_port()
        return start_prometheus({"prometheus": [f"127.0.0.1:{port}"]}, [], port=port)

    yield _SHARED.hold("prometheus", start)
    _SHARED.release("prometheus")


SHARED = ("llamacpp_engine", "vllm_engine", "prometheus")
_NOTEBOOK_TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def notebook_timings() -> dict[str, float]:
    """Seconds each notebook took in this run, by path: tests/notebooks/test_notebooks.py fills it."""
    return _NOTEBOOK_TIMINGS


# --- summary ------------------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _SHARED.starts:
        terminalreporter.section("shared servers (tests/conftest.py)")
        for name, readies in _SHARED.starts.items():
            ready = ", ".join(f"{s:.1f} s" for s in readies)
            terminalreporter.write_line(
                f"{name}: started {len(readies)}x (ready in {ready}), asked for by {_SHARED.users.get(name, 0)} tests"
            )
    if _NOTEBOOK_TIMINGS:
        terminalreporter.section("notebook run times (papermill, quick profile)")
        for name, seconds in _NOTEBOOK_TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.1f} s  {name}")
        terminalreporter.write_line(f"{sum(_NOTEBOOK_TIMINGS.values()):8.1f} s  total")
