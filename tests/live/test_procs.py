"""ManagedServer: readiness, failure messages and clean stops, with real child processes."""

import sys
import time

import psutil
import pytest

from servelab.procs import ManagedServer, ServerStartError, free_port, leftover_processes


def _http_server(tmp_path, port: int) -> ManagedServer:
    return ManagedServer(
        "http.server",
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        port=port,
        log_path=tmp_path / "srv.log",
        ready_path="/",
    )


def test_start_ready_stop_leaves_nothing(tmp_path) -> None:
    port = free_port()
    with _http_server(tmp_path, port).start() as server:
        assert server.wait_ready(timeout=30) < 30
        pid = server.process.pid
        assert psutil.pid_exists(pid)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not [p for p in leftover_processes() if p.pid == pid]


def test_children_of_the_server_are_stopped_too(tmp_path) -> None:
    script = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "import http.server as h; "
        "h.test(HandlerClass=h.SimpleHTTPRequestHandler, port=int(sys.argv[1]), bind='127.0.0.1')"
    )
    port = free_port()
    server = ManagedServer(
        "parent", [sys.executable, "-c", script, str(port)], port=port, log_path=tmp_path / "p.log", ready_path="/"
    ).start()
    server.wait_ready(timeout=30)
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert children, "the test server should have started a child"
    server.stop()
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_a_server_that_exits_fails_fast_with_its_log(tmp_path) -> None:
    server = ManagedServer(
        "broken",
        [sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"],
        port=free_port(),
        log_path=tmp_path / "b.log",
    ).start()
    began = time.perf_counter()
    with pytest.raises(ServerStartError) as err:
        server.wait_ready(timeout=60)
    assert time.perf_counter() - began < 10
    assert "exited with code 3" in str(err.value) and "boom: bad flag" in str(err.value)
    assert err.value.log_path == server.log_path and not err.value.timed_out


def test_a_server_that_never_gets_ready_times_out_and_is_stopped(tmp_path) -> None:
    server = ManagedServer(
        "silent",
        [sys.executable, "-c", "import time; print('waiting'); time.sleep(600)"],
        port=free_port(),
        log_path=tmp_path / "s.log",
    ).start()
    with pytest.raises(ServerStartError, match="not ready after 2 s") as err:
        server.wait_ready(timeout=2)
    assert not server.running
    assert err.value.log_path == server.log_path and err.value.timed_out


def test_leftovers_are_scoped_to_a_session(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SERVELAB_SESSION", "other-run")
    port = free_port()
    with _http_server(tmp_path, port).start() as server:
        server.wait_ready(timeout=30)
        assert [p for p in leftover_processes(session="other-run") if p.pid == server.process.pid]
        assert not [p for p in leftover_processes(session="this-run") if p.pid == server.process.pid]
