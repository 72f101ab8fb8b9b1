"""Lab 04's checks reject the colleague's engine and the classic mistakes, and accept the reference.

Runs are fabricated as :func:`kv_sizing.run_service` records them (the live run is in tests/notebooks):
the harness's records, the /metrics timeline, the preemption count and the blocks vLLM reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
import yaml

from servelab.bench.stats import BenchResult, RequestRecord
from servelab.course.labs import kv_sizing
from servelab.course.labs.kv_sizing import PREEMPTIONS, RUNNING, USAGE, WAITING, Service, ServiceRun
from servelab.engines.failure import failure_line
from servelab.errors import ServelabError
from servelab.procs import ServerStartError

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOK = ROOT / "labs" / "lab04_the_server_that_preempts.ipynb"
SOLUTION = yaml.safe_load((ROOT / "labs" / "solutions" / "lab04_vllm_kv.yaml").read_text())
# SmolLM2-135M in float32 on vLLM's CPU build: 2 x 30 layers x 3 KV heads x 64 x 4 bytes, blocks of 128 tokens.
SERVICE = Service(device="cpu", dtype="float32", bytes_per_token=46080.0, block_size=128)
# What vLLM logged when it refused 8 blocks for max_model_len 2048 (results/logs/vllm-*.log, trimmed).
REFUSED_LOG = """\
(APIServer pid=17891) WARNING 12-01 19:13:47 [system_utils.py:255] Found ulimit of 20000 and failed to \
automatically increase with error current limit exceeds maximum limit. This can cause fd limit errors like \
`OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n
(EngineCore pid=17993) ERROR 12-01 19:14:32 [core.py:1510]     raise ValueError(
(EngineCore pid=17993) ERROR 12-01 19:14:32 [core.py:1510] ValueError: To serve at least one request with the \
model's max seq len (2048), (0.09 GiB KV cache is needed, which is larger than the available KV cache memory \
(0.04 GiB). Based on the available memory, the estimated maximum model length is 896.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}
"""


def _colleague() -> dict[str, Any]:
    """The notebook's own starting settings (its YOUR TURN cell, run as written)."""
    cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.source.startswith("# YOUR TURN"))
    scope: dict[str, Any] = {}
    exec(cell.source, scope)
    return scope["my_settings"]


def _run(
    settings: dict[str, Any], preemptions: float = 0, tokens: int = 32, failed: int = 0, **peaks: float
) -> ServiceRun:
    """A run with these records and these /metrics peaks (``running``, ``waiting``, ``usage``)."""
    names = {"running": RUNNING, "waiting": WAITING, "usage": USAGE}
    seen = {RUNNING: 4.0, WAITING: 0.0, USAGE: 0.75} | {names[k]: v for k, v in peaks.items()}
    records = [RequestRecord(i, 0.0, "ok", ttft_s=1.0, e2e_s=5.0, output_tokens=tokens) for i in range(4 - failed)]
    records += [RequestRecord(4 - failed + i, 0.0, "error", error="HTTP 400") for i in range(failed)]
    timeline = pd.DataFrame(
        [
            {"t": 0.0, RUNNING: 0.0, WAITING: 4.0, USAGE: 0.0, PREEMPTIONS: 3.0},
            {"t": 0.5, **seen, PREEMPTIONS: 3.0 + preemptions},
        ]
    )
    return ServiceRun(
        dict(settings),
        result=BenchResult(records, {}, duration_s=10.0),
        timeline=timeline,
        preemptions=preemptions,
        reported_blocks=settings["kv_blocks"],
    )


def _failed(settings: dict[str, Any], run: ServiceRun | None) -> dict[str, str]:
    checks = kv_sizing.check_sizing(settings, run, SERVICE)
    assert all(c.hint.strip() for c in checks if not c.ok)
    return {c.name: c.hint for c in checks if not c.ok}


def _named(failed: dict[str, str], start: str) -> str:
    (hint,) = [h for name, h in failed.items() if name.startswith(start)]
    return hint


def test_the_colleagues_engine_preempts_and_admits_more_than_its_cache_holds() -> None:
    colleague = _colleague()
    assert colleague == {"kv_blocks": 9, "max_num_seqs": 128, "max_model_len": 1024}
    failed = _failed(colleague, _run(colleague, preemptions=1, waiting=1, usage=1.0))
    assert len(failed) == 2
    preempted = _named(failed, "nobody is preempted")
    assert "preempted 1 time" in preempted and "peaked at 100%" in preempted
    assert "4 x 3 = 12 blocks" in preempted and "had 9" in preempted and "so 8 for sequences" in preempted
    assert "128 x 8 = 1024 blocks" in _named(failed, "no load the engine admits")


def test_the_reference_passes_on_a_clean_run_and_the_exact_minimum_passes_too() -> None:
    assert _failed(SOLUTION, _run(SOLUTION)) == {}
    exact = {"kv_blocks": 13, "max_num_seqs": 4, "max_model_len": 384}  # 4 x 3 blocks, plus vLLM's null block
    assert _failed(exact, _run(exact, usage=1.0)) == {}


def test_forgetting_the_block_vllm_keeps_back_is_seen_in_the_run() -> None:
    settings = {"kv_blocks": 12, "max_num_seqs": 4, "max_model_len": 384}
    failed = _failed(settings, _run(settings, preemptions=1, usage=1.0))
    assert "so 11 for sequences" in _named(failed, "nobody is preempted")
    assert "12 blocks, and the cache has 11" in _named(failed, "no load the engine admits")


def test_too_short_a_max_model_len_cuts_answers() -> None:
    settings = {"kv_blocks": 13, "max_num_seqs": 4, "max_model_len": 256}
    hint = _named(_failed(settings, _run(settings, tokens=16)), "every user gets a whole answer")
    assert "lengths [16]" in hint and "240 + 32 = 272" in hint and "max_model_len=256" in hint
    assert "every user gets" in next(iter(_failed(SOLUTION, _run(SOLUTION, failed=1))))


def test_buying_blocks_instead_of_capping_the_engine_is_waste() -> None:
    settings = {"kv_blocks": 65, "max_num_seqs": 4, "max_model_len": 2048}  # safe, but 64 blocks for 12 of use
    failed = _failed(settings, _run(settings))
    assert list(failed) == ["no more than 2x the blocks the service's sequences can fill"]
    assert "64 blocks" in failed[next(iter(failed))] and "against the 12" in failed[next(iter(failed))]


def test_a_batch_cap_below_the_users_makes_them_queue() -> None:
    settings = {"kv_blocks": 7, "max_num_seqs": 2, "max_model_len": 384}
    hint = _named(_failed(settings, _run(settings, running=2, waiting=2)), "all 4 users are decoded at once")
    assert "At most 2 of the 4 users" in hint and "max_num_seqs=2" in hint


def test_an_engine_that_refuses_to_start_quotes_its_own_error_line() -> None:
    line = failure_line(REFUSED_LOG, "vllm")
    assert line.startswith("ValueError: To serve at least one request")
    settings = {"kv_blocks": 8, "max_num_seqs": 4, "max_model_len": 2048}
    failed = _failed(settings, ServiceRun(settings, start_error=line))
    assert line in failed["vLLM starts with these settings"]
    assert "needs 16 blocks" in failed["vLLM starts with these settings"]
    assert len(failed) == 5 and "Not measured" in failed["nobody is preempted (vllm:num_preemptions_total stays at 0)"]


def test_a_refused_start_is_recorded_with_the_line_of_the_log_its_error_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "vllm.log"
    log.write_text(REFUSED_LOG)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ServerStartError("vLLM (cpu) exited with code 1 before it was ready.", "read it", log, timed_out=False)

    monkeypatch.setattr(kv_sizing, "start_vllm", refuse)
    settings = {"kv_blocks": 8, "max_num_seqs": 4, "max_model_len": 2048}
    run = kv_sizing.run_service(settings, SERVICE)
    assert run is not None and run.start_error == failure_line(REFUSED_LOG, "vllm") and run.result is None


def test_bad_settings_and_a_stale_run_get_one_clear_row() -> None:
    for bad in ({**SOLUTION, "kv_blocks": "17"}, {**SOLUTION, "blocks": 17}, {**SOLUTION, "max_num_seqs": True}):
        (row,) = kv_sizing.check_sizing(bad, None, SERVICE)
        assert not row.ok and "fix:" in row.hint
    (row,) = kv_sizing.check_sizing(SOLUTION, None, SERVICE)
    assert "run the cell above" in row.hint
    (row,) = kv_sizing.check_sizing(SOLUTION, _run(_colleague()), SERVICE)  # settings changed, engine not rerun
    assert not row.ok and "after changing the settings" in row.hint


def test_the_cache_is_capped_at_the_labs_memory_budget() -> None:
    assert SERVICE.max_blocks == 182  # what vLLM reported for 1 GiB in float32 (notebook 02's recorded /metrics)
    with pytest.raises(ServelabError, match="more than the lab's 1 GiB"):
        kv_sizing.validate({**SOLUTION, "kv_blocks": 183}, SERVICE)
    assert kv_sizing.run_service({**SOLUTION, "kv_blocks": 183}, SERVICE) is None  # refused before any start


def test_engine_options_pass_the_three_numbers_to_vllm() -> None:
    options = kv_sizing.engine_options(SOLUTION, SERVICE)
    assert (options.max_model_len, options.max_num_seqs) == (512, 4)
    assert options.extra_args == ["--num-gpu-blocks-override", "17"]
