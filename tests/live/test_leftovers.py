"""After everything else (conftest sorts this last): no engine or server this run started may be left running."""

import os

from servelab.procs import SESSION_VAR, leftover_processes


def test_no_server_process_left_behind() -> None:
    left = [(p.pid, " ".join(p.cmdline())[:100]) for p in leftover_processes(session=os.environ[SESSION_VAR])]
    assert left == [], f"servers left running: {left} (stop them: make leftovers)"
