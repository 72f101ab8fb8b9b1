"""Lab 03's checks reject the colleague's Deployment and the classic sizing mistakes and accept the reference,
fed with runs shaped like the ones llama-server gave on this machine (no process is started here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from servelab.bench.stats import BenchResult, RequestRecord
from servelab.course.labs import sizing
from servelab.engines.failure import failure_line
from servelab.k8s import manifests
from servelab.memory.footprint import RSSSampler

ROOT = Path(__file__).resolve().parents[3]
SOLUTION = (ROOT / "labs" / "solutions" / "lab03_llamacpp_deployment.yaml").read_text()
NOTEBOOK = ROOT / "labs" / "lab03_the_pod_that_gets_oomkilled.ipynb"
# Measured on 2 cores with the kit's SmolLM2-135M Q4_1 at -c 16384: idle 489 MiB, peak 517-519 MiB under the load.
IDLE_MIB, PEAK_MIB = 489.0, 519.0
MiB = 2**20
REQUESTS = sizing.SERVICE_USERS * sizing.REQUESTS_PER_USER


def _starting_point() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "".join(c["source"]).startswith("# YOUR TURN"))
    return source.split('"""')[1]


START = _starting_point()


def _args(text: str) -> list[str]:
    return sizing.container_args(sizing.container_of(sizing.deployment_of(text)))


def _run(
    text: str,
    slots: int,
    slot_ctx: int,
    peak_mib: float = PEAK_MIB,
    answered: int = REQUESTS,
    ttft_s: float = 0.5,
    error: str | None = None,
) -> sizing.ServerRun:
    """A run of ``text``'s args as llama-server would report it: its slots, and the RSS samples and records."""
    records = [
        RequestRecord(i, start_s=0.1 * i, status="ok" if i < answered else "error", ttft_s=ttft_s, output_tokens=32)
        for i in range(REQUESTS)
    ]
    for record in records[answered:]:
        record.error = "HTTP 400: request (160 tokens) exceeds the available context size (128 tokens)"
    memory = RSSSampler(pid=0, samples=[(0.0, int(IDLE_MIB * MiB)), (1.0, int(peak_mib * MiB))])
    return sizing.ServerRun(
        args=_args(text),
        slots=slots,
        slot_ctx=slot_ctx,
        memory=memory,
        result=BenchResult(records, {}, 10.0),
        error=error,
    )


def _failed(text: str, run: sizing.ServerRun | None) -> dict[str, str]:
    return {c.name: c.hint for c in sizing.check_deployment(text, run) if not c.ok}


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


SLOTS = f"{sizing.SERVICE_USERS} slots: every user of the service is decoded at once"
CONTEXT = f"the KV cache holds {sizing.SERVICE_USERS} conversations of {sizing.SERVICE_CONTEXT_TOKENS} tokens at once"
REQUEST = "memory request covers the peak measured under load"
LIMIT = "memory limit leaves 1.25 x the peak and room for the prompt cache"
CPU = "-t matches the CPU the pod requests, under any CPU limit"
READINESS = "readiness probe is GET /health on llama-server's port"
SERVED = "llama-server starts with these flags and serves every request"


def test_the_reference_passes_every_check() -> None:
    checks = sizing.check_deployment(SOLUTION, _run(SOLUTION, slots=4, slot_ctx=8192))
    assert len(checks) == 8 and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_the_starting_point_fails_slots_memory_cpu_and_readiness_with_hints() -> None:
    failed = _failed(START, _run(START, slots=1, slot_ctx=8192, ttft_s=6.9))
    assert set(failed) == {SLOTS, REQUEST, LIMIT, CPU, READINESS}
    assert "1 slot(s)" in failed[SLOTS] and "6.9 s" in failed[SLOTS]
    assert "519 MiB" in failed[REQUEST] and "OOM-kills" in failed[LIMIT] and "8192 MiB, the default" in failed[LIMIT]
    assert "CPU limit of 2" in failed[CPU] and "tcpSocket" in failed[READINESS]
    assert all(failed.values())


def test_the_starting_point_is_the_shipped_deployment_reconfigured() -> None:
    shipped = next(
        d for d in manifests.load_documents(ROOT / "manifests/llamacpp/deployment.yaml") if d["kind"] == "Deployment"
    )
    start = sizing.deployment_of(START)
    assert start["metadata"] == shipped["metadata"] and start["spec"]["selector"] == shipped["spec"]["selector"]
    ours, theirs = sizing.container_of(start), sizing.container_of(shipped)
    assert ours["image"] == theirs["image"] and ours["volumeMounts"] == theirs["volumeMounts"]
    assert sizing.server_port(_args(START)) == ours["ports"][0]["containerPort"] == theirs["ports"][0]["containerPort"]


def test_explicit_parallel_without_kv_unified_splits_the_context() -> None:
    text = _edit(_edit(SOLUTION, "            - --kv-unified\n", ""), '"16384"', '"8192"')
    assert sizing.server_options(_args(text)).kv_unified is False  # llama-server's own default with -np given
    hint = _failed(text, _run(text, slots=4, slot_ctx=2048))[CONTEXT]
    assert "2048 tokens" in hint and "split over 4 slots" in hint


def test_a_shared_cache_too_small_for_every_user_at_once_fails() -> None:
    text = _edit(SOLUTION, '"16384"', '"8192"')
    hint = _failed(text, _run(text, slots=4, slot_ctx=8192))[CONTEXT]
    assert "8192 tokens in all" in hint and str(sizing.SERVICE_USERS * sizing.SERVICE_CONTEXT_TOKENS) in hint


def test_the_split_cache_that_is_big_enough_passes() -> None:
    text = _edit(SOLUTION, "            - --kv-unified\n", "")
    assert CONTEXT not in _failed(text, _run(text, slots=4, slot_ctx=4096))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('            - --cache-ram\n            - "256"\n', ""),  # the default, 8192 MiB, under a 1Gi limit
        ('- "256"', '- "-1"'),  # no bound at all
        ("memory: 1Gi", "memory: 640Mi"),  # no headroom over the peak
    ],
)
def test_a_limit_without_room_for_the_prompt_cache_or_headroom_fails(old: str, new: str) -> None:
    text = _edit(SOLUTION, old, new)
    assert set(_failed(text, _run(text, slots=4, slot_ctx=8192))) == {LIMIT}


def test_a_request_below_the_measured_peak_fails() -> None:
    text = _edit(SOLUTION, "memory: 640Mi", "memory: 512Mi")
    hint = _failed(text, _run(text, slots=4, slot_ctx=8192))[REQUEST]
    assert "512 MiB" in hint and "576Mi" in hint


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("memory: 1Gi", 'cpu: "1"\n              memory: 1Gi', "CPU limit of 1"),  # throttled
        ('cpu: "2"', 'cpu: "1500m"', "requests 1.5 CPU"),  # fewer CPUs guaranteed than threads
        ('            - -t\n            - "2"\n', "", "a thread per core of the node"),  # llama.cpp's default
    ],
)
def test_threads_that_do_not_fit_the_cpu_fail(old: str, new: str, said: str) -> None:
    text = _edit(SOLUTION, old, new)
    hint = _failed(text, _run(text, slots=4, slot_ctx=8192))[CPU]
    assert said in hint


def test_a_cpu_limit_at_the_thread_count_passes() -> None:
    text = _edit(SOLUTION, "memory: 1Gi", 'cpu: "2"\n              memory: 1Gi')
    assert CPU not in _failed(text, _run(text, slots=4, slot_ctx=8192))


READY = "readinessProbe:\n            httpGet:\n              path: /health\n              port: 8080"


@pytest.mark.parametrize(
    ("path", "port", "ok"), [("/v1/models", "8080", False), ("/health", "8081", False), ("/health", "http", True)]
)
def test_readiness_must_be_health_on_the_servers_port(path: str, port: str, ok: bool) -> None:
    text = _edit(SOLUTION, READY, READY.replace("/health", path).replace("8080", port))
    assert (READINESS not in _failed(text, _run(text, slots=4, slot_ctx=8192))) is ok


def test_failed_requests_fail_the_served_check_with_the_servers_error() -> None:
    hint = _failed(SOLUTION, _run(SOLUTION, slots=4, slot_ctx=8192, answered=5))[SERVED]
    assert "5 of 8" in hint and "exceeds the available context size" in hint


def test_a_server_that_refused_to_start_is_a_failed_check_quoting_its_line() -> None:
    text = _edit(SOLUTION, "- --metrics", "- --metrics=on")
    run = sizing.ServerRun(args=_args(text), error="error: invalid argument: --metrics=on")
    checks = sizing.check_deployment(text, run)
    failed = {c.name: c.hint for c in checks if not c.ok}
    assert len(checks) >= 3 and set(failed) == {SERVED} and "invalid argument: --metrics=on" in failed[SERVED]


def test_a_run_of_other_flags_is_not_graded() -> None:
    failed = _failed(SOLUTION, _run(START, slots=1, slot_ctx=8192))
    assert set(failed) == {"these flags were measured"}


def test_bad_yaml_gets_a_hint_and_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert sizing.run_manifest("spec: [unclosed") is None
    assert "Not run" in capsys.readouterr().out
    (check,) = sizing.check_deployment("spec: [unclosed", None)
    assert not check.ok and "YAML" in check.hint


def test_a_context_beyond_what_the_lab_runs_is_refused_before_starting() -> None:
    text = _edit(SOLUTION, '"16384"', '"1048576"')
    (check,) = sizing.check_deployment(text, None)
    assert not check.ok and str(sizing.MAX_CTX_TOKENS) in check.hint


def test_server_options_follow_llama_servers_own_defaults() -> None:
    bare = sizing.server_options(["-m", "/models/model.gguf", "--host", "0.0.0.0", "--port", "8080"])
    assert (bare.n_ctx, bare.parallel, bare.threads, bare.metrics, bare.extra_args) == (0, -1, None, False, [])
    given = sizing.server_options(["-t", "2", "-c", "4096", "-np", "4", "--cache-ram", "64", "--metrics"])
    assert (given.threads, given.n_ctx, given.parallel, given.kv_unified, given.metrics) == (2, 4096, 4, False, True)
    assert given.extra_args == ["--cache-ram", "64"]
    assert sizing.server_options(["--parallel", "four"]).extra_args == ["--parallel", "four"]  # llama-server refuses it


def test_cache_ram_and_port_are_read_as_llama_server_reads_them() -> None:
    assert sizing.cache_ram_mib([]) == sizing.PROMPT_CACHE_DEFAULT_MIB
    assert sizing.cache_ram_mib(["-cram", "0"]) == 0 and sizing.cache_ram_mib(["--cache-ram", "-1"]) is None
    assert sizing.server_port([]) == 8080 and sizing.server_port(["--port", "9000"]) == 9000


def test_the_error_line_is_llama_servers_first_statement_of_the_cause() -> None:
    crashed = "\n".join(
        [
            "0.00.009.461 I srv    load_model: loading model 'model.gguf'",
            "/src/llama-context.cpp:2526: GGML_ASSERT(n_outputs >= 1) failed",
            "#17 0x00005566f73ee1b1 in _start ()",
        ]
    )
    assert failure_line(crashed, "llama-server").endswith("GGML_ASSERT(n_outputs >= 1) failed")
    refused = 'error while handling argument "--parallel": stoi\n\nto show complete usage, run with -h'
    assert failure_line(refused, "llama-server") == 'error while handling argument "--parallel": stoi'


def test_the_reference_solution_is_valid_yaml_with_one_deployment() -> None:
    assert [d["kind"] for d in yaml.safe_load_all(SOLUTION)] == ["Deployment"]
