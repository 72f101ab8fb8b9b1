"""Why an engine did not start, or died, in its own words: the one line of its log that states the cause.

Each engine kind states its cause in its own way, so each gets one rule:

- vLLM and llama-cpp-python are Python servers: the cause is the last line of the log that states an
  error (an exception's ``XError: ...``, pydantic's ``Value error, ...``). The lines after it are the API
  server's re-raise that only says "see root cause above", which is skipped. vLLM's logger header
  (process, level, time, source) and pydantic's ``[type=...]`` suffix are dropped, as they are not the
  engine's words.
- llama.cpp's native llama-server states the cause first and its consequences after it ("exiting due to
  model loading error", a crash's backtrace), so the cause is the first line that says error or failed.

Either rule falls back to the log's last line, where nothing states an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from servelab.engines.kinds import EngineKind
from servelab.errors import ServelabError
from servelab.procs import ServerStartError

_STATED = re.compile(r"\b\w*(error|exception)\b\s*[:,]", re.IGNORECASE)
_WRAPPER = "see root cause above"  # vLLM's API server re-raising an engine core failure logged earlier
_LOGGER_HEADER = re.compile(r"^(\(\w+ pid=\d+\) )?[A-Z]+ \d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \[[^\]]+\] ")
_PYDANTIC_TAIL = re.compile(r"\s*\[type=.*\]$")
_NATIVE_STATED = re.compile(r"\berror\b|GGML_ASSERT|\bfailed\b|^\S+ E ", re.IGNORECASE)
EMPTY = "(an empty log)"


def _python_failure(lines: list[str]) -> str:
    stated = [line for line in lines if _STATED.search(line) and _WRAPPER not in line.lower()]
    line = (stated or lines or [EMPTY])[-1]
    return _PYDANTIC_TAIL.sub("", _LOGGER_HEADER.sub("", line))


def _native_failure(lines: list[str]) -> str:
    return next((line for line in lines if _NATIVE_STATED.search(line)), lines[-1] if lines else EMPTY)


_RULES: dict[EngineKind, Callable[[list[str]], str]] = {
    "vllm": _python_failure,
    "llamacpp": _python_failure,
    "llama-server": _native_failure,
}


def failure_line(log_text: str, kind: EngineKind) -> str:
    """The line of an engine's log that states why it stopped, by ``kind``'s rule (see the module docstring)."""
    return _RULES[kind]([line.strip() for line in log_text.splitlines() if line.strip()])


def logged_failure(log_path: Path, kind: EngineKind) -> str:
    """:func:`failure_line` of the whole log file: a crash's backtrace can be long, and follows the cause."""
    if not log_path.is_file():
        return f"(no log at {log_path})"
    return failure_line(log_path.read_text(errors="replace"), kind)


def start_failure(err: ServelabError, kind: EngineKind) -> str:
    """Why an engine's start raised ``err``: its log's cause when the server ran (a :class:`ServerStartError`),
    else the kit's own problem (no model, no binary, a setting refused before anything ran)."""
    if isinstance(err, ServerStartError):
        return logged_failure(err.log_path, kind)
    return err.problem
