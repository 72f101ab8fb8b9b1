"""ManagedServer: readiness, failure messages and clean stops, with real child processes."""

import sys
import time

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

from servelab import procs
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


def test_a_slow_start_prints_its_progress_and_log(tmp_path, monkeypatch, capsys) -> None:
    """A learner waiting on vLLM sees time pass and where the log is, not silence."""
    monkeypatch.setattr(procs, "PROGRESS_EVERY_S", 0.5)
    port = free_port()
    script = f"import time, runpy, sys; time.sleep(2); sys.argv = ['http.server', '{port}', '--bind', '127.0.0.1']; "
    script += "runpy.run_module('http.server', run_name='__main__')"
    log = tmp_path / "s.log"
    server = ManagedServer("slow", [sys.executable, "-c", script], port=port, log_path=log, ready_path="/")
    with server.launch(ready_timeout=30):
        said = capsys.readouterr().out
    lines = [line for line in said.splitlines() if "slow: not ready after" in line]
    assert len(lines) >= 2 and str(log) in lines[0] and "(at most 30)" in lines[0], said


def test_running_a_cell_again_stops_the_server_its_earlier_run_started(tmp_path) -> None:
    """In a real kernel: the same cell run twice leaves one server, and says it stopped the first one;
    another cell's server is left alone; stop_all() then stops both and names them. (A kernel of its own:
    stop_all() in this process would stop the servers other live tests share.)"""
    start = (
        "import sys\nfrom servelab.procs import ManagedServer, free_port\n"
        "port = free_port()\n"
        f"server = ManagedServer('http.server', [sys.executable, '-m', 'http.server', str(port), '--bind', "
        f"'127.0.0.1'], port=port, log_path=__import__('pathlib').Path({str(tmp_path)!r}) / f'{{port}}.log', "
        "ready_path='/').launch(30)\nprint('pid', server.process.pid)"
    )
    other = start.replace("server =", "other =").replace("server.process", "other.process")
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(start), nbformat.v4.new_code_cell(other), nbformat.v4.new_code_cell(start)]
    )
    client = NotebookClient(notebook, timeout=120, kernel_name="python3")
    with client.setup_kernel():
        pids = []
        for index, cell in [(0, notebook.cells[0]), (1, notebook.cells[1]), (0, notebook.cells[0])]:
            client.execute_cell(cell, index)
            text = "".join(o.get("text", "") for o in cell.outputs)
            pids.append(int(text.split("pid ")[-1]))
        said = "".join(o.get("text", "") for o in notebook.cells[0].outputs)
        alive = [psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids]
        notebook.cells.append(nbformat.v4.new_code_cell("from servelab.procs import stop_all\nstopped = stop_all()"))
        client.execute_cell(notebook.cells[3], 3)
        notebook.cells.append(nbformat.v4.new_code_cell("stop_all()"))
        client.execute_cell(notebook.cells[4], 4)
    stopped = "".join(o.get("text", "") for o in notebook.cells[3].outputs)
    again = "".join(o.get("text", "") for o in notebook.cells[4].outputs)
    assert "This cell started http.server at" in said and "when it last ran: stopping it first." in said, said
    assert alive == [False, True, True], (pids, alive)
    assert stopped.startswith("Stopped: http.server http://127.0.0.1:") and stopped.count("http.server") == 2, stopped
    assert "Nothing this kernel started is running." in again, again
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
