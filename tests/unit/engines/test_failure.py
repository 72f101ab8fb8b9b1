"""An engine's own reason for not starting, read from its log by one rule per engine kind (no process runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from servelab.engines.failure import failure_line, logged_failure, start_failure
from servelab.engines.kinds import EngineKind
from servelab.errors import ServelabError
from servelab.procs import ServerStartError

# vLLM's engine core failing through its logger: a warning that names an error in passing, the root cause,
# then the API server's re-raise that points back at it (the shape of lab 04's recorded log).
LOGGED = """\
(APIServer pid=17891) WARNING 12-01 19:13:47 [system_utils.py:255] Found ulimit of 20000: this can cause fd \
limit errors like `OSError: [Errno 24] Too many open files`.
(EngineCore pid=17993) ERROR 12-01 19:14:32 [core.py:1510]     raise ValueError(
(EngineCore pid=17993) ERROR 12-01 19:14:32 [core.py:1510] ValueError: To serve at least one request (0.09 GiB \
KV cache is needed).
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}
"""
# pydantic refusing a setting: its own header line first, then vLLM's message with pydantic's suffix.
PYDANTIC = """\
pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
  Value error, User-specified max_model_len (16384) is greater than the derived max_model_len. [type=value_error, \
input_value=ArgsKwargs((), {}), input_type=ArgsKwargs]
    For further information visit https://errors.pydantic.dev/2.14/v/value_error
"""
# A traceback the engine core printed itself: no logger header, so the process tag stays.
PRINTED = """\
(EngineCore pid=812) ValueError: To serve at least one request with the models's max seq len (8192)
Traceback (most recent call last):
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
CRASHED = """\
0.00.009.461 I srv    load_model: loading model 'model.gguf'
/src/llama-context.cpp:2526: GGML_ASSERT(n_outputs >= 1) failed
#17 0x00005566f73ee1b1 in _start ()
"""


def test_vllms_root_cause_is_quoted_from_labs_02_and_04_logs_alike() -> None:
    # Each log trips a simpler rule: the last line stating an error carries the logger's header in LOGGED,
    # and the first "XError: " line is pydantic's header in PYDANTIC and the re-raise in PRINTED.
    assert failure_line(LOGGED, "vllm") == "ValueError: To serve at least one request (0.09 GiB KV cache is needed)."
    assert failure_line(PYDANTIC, "vllm") == (
        "Value error, User-specified max_model_len (16384) is greater than the derived max_model_len."
    )
    assert failure_line(PRINTED, "vllm").startswith("(EngineCore pid=812) ValueError: To serve at least one")


def test_a_python_engine_with_no_stated_error_gives_its_last_line() -> None:
    assert failure_line("INFO starting\nKilled\n\n", "llamacpp") == "Killed"
    assert failure_line("", "vllm") == "(an empty log)"


def test_llama_server_gives_the_first_line_stating_the_cause() -> None:
    assert failure_line(CRASHED, "llama-server") == "/src/llama-context.cpp:2526: GGML_ASSERT(n_outputs >= 1) failed"
    refused = 'error while handling argument "--parallel": stoi\n\nto show complete usage, run with -h'
    assert failure_line(refused, "llama-server") == 'error while handling argument "--parallel": stoi'
    assert failure_line("main: loading\nmain: exiting\n", "llama-server") == "main: exiting"


def test_a_failed_start_is_read_from_the_whole_log_it_names(tmp_path: Path) -> None:
    log = tmp_path / "llama-server.log"
    log.write_text("build: b11312\nerror: invalid argument: --no-mmap\n" + "#1 0x0 in frame ()\n" * 100)
    err = ServerStartError("llama-server (cpu) exited with code 1.", "read it", log, timed_out=False)
    assert start_failure(err, "llama-server") == "error: invalid argument: --no-mmap"
    assert logged_failure(tmp_path / "gone.log", "vllm") == f"(no log at {tmp_path / 'gone.log'})"


@pytest.mark.parametrize("kind", ["vllm", "llama-server"])
def test_an_error_before_the_server_ran_is_the_kits_own_problem(kind: EngineKind) -> None:
    err = ServelabError("The vLLM copy of the model is not prepared.", "servelab model prepare")
    assert start_failure(err, kind) == "The vLLM copy of the model is not prepared."
