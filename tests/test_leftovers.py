"""After everything else (conftest sorts this last): no engine or server process may be left running."""

from servelab.procs import leftover_processes


def test_no_server_process_left_behind() -> None:
    left = [(p.pid, " ".join(p.cmdline())[:100]) for p in leftover_processes()]
    assert left == [], f"servers left running: {left} (stop them: make leftovers)"
