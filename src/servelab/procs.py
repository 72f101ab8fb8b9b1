"""Server processes that cannot outlive the notebook that started them.

Every server the kit starts (engines, later Prometheus and the gateway) goes through
:class:`ManagedServer`: it runs in its own process group, writes its log to a file, is waited for
with a timeout, and is stopped as a whole group by ``stop()``, by ``with`` on exit, by an ``atexit``
hook when the kernel shuts down, and by the kernel's death (``PR_SET_PDEATHSIG``) if it is killed.
Each child carries ``SERVELAB_MANAGED=<owner pid>`` in its environment so that
:func:`leftover_processes` can find any that escaped.

In a notebook a start prints how long it has waited and where the log is every
:data:`PROGRESS_EVERY_S` seconds (vLLM takes most of a minute on a CPU, and silence reads as a hang),
and a cell run again stops the servers its earlier run left running before it starts new ones, so a
re-run never leaves a second engine holding the cores. :func:`stop_all` stops everything this kernel
started.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Required, Self, TypedDict

import httpx
import psutil
import yaml

from servelab.errors import ServelabError
from servelab.paths import results_dir

MARKER = "SERVELAB_MANAGED"
SESSION_VAR = "SERVELAB_SESSION"
_LIVE: set[ManagedServer] = set()
PROGRESS_EVERY_S = 10.0
"""A start that is not ready prints one line this often: elapsed seconds and the log's path."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def current_cell() -> tuple[str, int] | None:
    """The notebook cell running now and which run of it: ``(cell, execution count)``; None outside IPython.

    The cell is JupyterLab's ``cellId`` (sent with each execute request), else the cell's source, which
    is what identifies a cell where the front end sends no id (papermill, a console).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None:
        return None
    kernel = getattr(shell, "kernel", None)
    parent = kernel.get_parent() if kernel is not None and hasattr(kernel, "get_parent") else {}
    cell_id = (parent or {}).get("metadata", {}).get("cellId")
    inputs = shell.user_ns.get("_ih") or [""]
    return (f"id:{cell_id}" if cell_id else f"source:{inputs[-1]}", int(shell.execution_count))


def _die_with_parent() -> Callable[[], object] | None:
    """A hook for the child before exec: ask Linux to SIGTERM it if the kernel that started it dies.

    libc is looked up here, in the parent: between fork and exec the child should only make the
    ``prctl`` call itself (loading a library there can deadlock a threaded parent). ``None`` where
    there is no glibc (no parent-death signal there).
    """
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_command(command: Sequence[str], timeout_s: float, what: str, fix: str) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion with a deadline, output captured as text; the caller judges the exit code.

    A tool that runs past ``timeout_s`` is killed and becomes a :class:`ServelabError` naming ``what``
    took too long and ``fix``, so no notebook cell waits on a hung tool.
    """
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ServelabError(f"{what} did not finish in {timeout_s:.0f} s", fix) from None


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    if not path.is_file():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class ServerStartError(ServelabError):
    """A managed server that did not become ready, with what a caller needs to say why in the server's words.

    ``log_path`` is the server's whole log, so a caller reads the line that states the cause from it instead
    of parsing this message; ``timed_out`` tells a server still not ready at the deadline (stopped then) from
    one that exited by itself.
    """

    def __init__(self, problem: str, fix: str, log_path: Path, *, timed_out: bool) -> None:
        super().__init__(problem, fix)
        self.log_path = log_path
        self.timed_out = timed_out


class ServerArgs(TypedDict, total=False):
    """:class:`ManagedServer`'s constructor arguments, for subclasses that pass them on as ``**kwargs``."""

    name: Required[str]
    command: Required[Sequence[str]]
    port: Required[int]
    log_path: Required[Path]
    ready_path: str
    env: Mapping[str, str] | None
    host: str


class ManagedServer:
    """An HTTP server process started, awaited and stopped as one process group."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        log_path: Path,
        ready_path: str = "/health",
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.command = list(command)
        self.port = port
        self.host = host
        self.log_path = log_path
        self.ready_path = ready_path
        self.env = {**os.environ, **(env or {}), MARKER: str(os.getpid())}
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.ready_seconds: float | None = None
        self.cell: tuple[str, int] | None = None  # the notebook cell (and its run) that launched it

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ManagedServer:
        """Launch the process (not yet ready: call :meth:`wait_ready`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
            # PR_SET_PDEATHSIG has no Popen option; the hook makes only that one libc call (see _die_with_parent).
            preexec_fn=_die_with_parent(),  # noqa: PLW1509
        )
        log.close()
        _LIVE.add(self)
        return self

    def wait_ready(self, timeout: float, poll: float = 0.5) -> float:
        """Block until ``ready_path`` answers 200; return the seconds from start to ready.

        Fails fast, with the log's tail, when the process exits; stops it when the timeout passes. Either
        way the error is a :class:`ServerStartError` that names the log.
        """
        assert self.process is not None and self.started_at is not None, "start() first"
        deadline = self.started_at + timeout
        next_report = self.started_at + PROGRESS_EVERY_S
        with httpx.Client(timeout=5.0) as client:
            while time.perf_counter() < deadline:
                if time.perf_counter() >= next_report:
                    waited = time.perf_counter() - self.started_at
                    log = self.log_path
                    print(f"  {self.name}: not ready after {waited:.0f} s (at most {timeout:.0f}); log: {log}")
                    next_report += PROGRESS_EVERY_S
                if self.process.poll() is not None:
                    self._forget()
                    raise ServerStartError(
                        f"{self.name} exited with code {self.process.returncode} before it was ready. "
                        f"Last lines of {self.log_path}:\n{tail(self.log_path)}",
                        "read the log above; `servelab preflight` checks the usual causes",
                        self.log_path,
                        timed_out=False,
                    )
                try:
                    if client.get(self.url + self.ready_path).status_code == 200:
                        self.ready_seconds = time.perf_counter() - self.started_at
                        return self.ready_seconds
                except httpx.TransportError:
                    pass
                time.sleep(poll)
        self.stop()
        raise ServerStartError(
            f"{self.name} was not ready after {timeout:.0f} s. Last lines of {self.log_path}:\n{tail(self.log_path)}",
            "raise the ready timeout parameter, or check the log for what it was doing",
            self.log_path,
            timed_out=True,
        )

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after ``grace`` seconds."""
        if self.process is None:
            return
        pid = self.process.pid
        group = [p for p in _group_members(pid)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        _, alive = psutil.wait_procs(group, timeout=max(1.0, grace / 3))
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=5)
        self._forget()

    def _forget(self) -> None:
        _LIVE.discard(self)

    def launch(self, ready_timeout: float) -> Self:
        """Start and wait until ready: the one way the kit brings up any server it runs.

        A server that does not get there is stopped and leaves nothing behind (:meth:`_cleanup`). In a
        notebook, the servers an earlier run of the same cell left running are stopped first, and named.
        """
        self.cell = current_cell()
        if self.cell is not None:
            for earlier in [s for s in _LIVE if s.cell is not None and s.cell[0] == self.cell[0]]:
                if earlier.cell != self.cell and earlier.running:
                    print(f"This cell started {earlier.name} at {earlier.url} when it last ran: stopping it first.")
                    earlier.stop()
        self.start()
        try:
            self.wait_ready(ready_timeout)
        except ServelabError:
            self._cleanup()
            raise
        return self

    def _cleanup(self) -> None:
        """What a server that never became ready leaves behind; subclasses with scratch files remove them."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} {self.url} {state}>"


class ScratchServer(ManagedServer):
    """A server whose config and data live in a throw-away folder, ``results/<kind>-<port>/``.

    Prometheus and Alertmanager both work this way in the kit: the folder is made fresh by
    :func:`scratch_folder` (a stale one of an earlier run on the same port is removed first), and
    deleted again when the server stops, or when it never became ready, unless ``keep_files``.
    The log lives outside it, in ``results/logs/``, and stays.
    """

    def __init__(self, workdir: Path, config_path: Path, keep_files: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workdir = workdir
        self.config_path = config_path
        self.keep_files = keep_files

    def stop(self, grace: float = 15.0) -> None:
        """Stop the process group, then delete the scratch folder (unless ``keep_files``); the log stays."""
        super().stop(grace)
        self._cleanup()

    def _cleanup(self) -> None:
        if not self.keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)


def scratch_folder(
    kind: str, port: int, config_name: str, config: Mapping[str, Any], written_by: str
) -> tuple[Path, Path]:
    """Make ``results/<kind>-<port>/`` afresh with an empty ``data/`` and ``config`` as YAML in ``config_name``.

    Returns ``(folder, config file)``; the file's first line says which function wrote it.
    """
    workdir = results_dir() / f"{kind}-{port}"
    shutil.rmtree(workdir, ignore_errors=True)  # a stale folder of an earlier run on this port
    (workdir / "data").mkdir(parents=True)
    config_path = workdir / config_name
    config_path.write_text(
        f"# written by {written_by}; deleted on stop()\n" + yaml.safe_dump(dict(config), sort_keys=False)
    )
    return workdir, config_path


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return members


def stop_all(quiet: bool = False) -> list[str]:
    """Stop every server this process started and has not stopped yet (engines, Prometheus, Alertmanager,
    gateways); return what was stopped, each as ``"name url"``, and print it unless ``quiet``.

    The "stop everything" of a notebook's last cell, and the ``atexit`` backstop when the kernel ends."""
    stopped = []
    for server in list(_LIVE):
        was_running = server.running
        server.stop(grace=5.0)
        if was_running:
            stopped.append(f"{server.name} {server.url}")
    if not quiet:
        print("Stopped: " + "; ".join(stopped) if stopped else "Nothing this kernel started is running.")
    return stopped


def leftover_processes(session: str | None = None) -> list[psutil.Process]:
    """Processes on this machine that a servelab server started and nobody stopped.

    With ``session``, only those whose environment carries ``SESSION_VAR=session``: a test run sets
    it once, every kernel and server it starts inherits it, and servers of other runs are not counted.
    """
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            env = proc.environ()
            if MARKER in env and (session is None or env.get(SESSION_VAR) == session):
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def stop_processes(found: Sequence[psutil.Process], grace: float = 10.0) -> None:
    """SIGTERM each process, then SIGKILL those still running after ``grace`` seconds: for servers another
    kernel or terminal started (:func:`leftover_processes`), which this process holds no handle of."""
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(found), timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


atexit.register(stop_all, quiet=True)
