"""llama.cpp's native server, the program manifests/llamacpp deploys, started and served through servelab."""

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from servelab import binaries
from servelab.engines import llamacpp_build
from servelab.engines.launch import Engine, LlamaServerOptions, llama_server_command, start_engine, start_llama_server
from servelab.errors import ServelabError
from servelab.observe import metrics

pytestmark = pytest.mark.engines
SLOTS = 8
# The samples the kit's llama.cpp alerts and dashboards will read (tools/server/README.md, "/metrics").
ALERTED_FAMILIES = (
    "llamacpp:requests_processing",
    "llamacpp:requests_deferred",
    "llamacpp:prompt_tokens_total",
    "llamacpp:tokens_predicted_total",
    "llamacpp:prompt_seconds_total",
    "llamacpp:tokens_predicted_seconds_total",
    "llamacpp:n_decode_total",
    "llamacpp:n_busy_slots_per_decode",
)


@pytest.fixture(scope="module")
def server() -> Iterator[Engine]:
    """One native server for this file, with 8 slots, started the way the CLI starts engines."""
    with start_engine("llama-server", options=LlamaServerOptions(parallel=SLOTS)) as engine:
        yield engine


def _run(*args: str) -> str:
    done = subprocess.run(
        [binaries.require("llama-server"), *args], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout + done.stderr


def test_the_binary_is_the_pinned_build() -> None:
    """What `make setup` compiled is the build manifests/llamacpp deploys (server-b<build>)."""
    assert llamacpp_build.pinned().version_mark in _run("--version")


def test_every_flag_the_kit_passes_is_one_the_server_knows() -> None:
    help_text = _run("--help")
    command = llama_server_command("llama-server", "m.gguf", "m", 8080, LlamaServerOptions())
    unknown = [flag for flag in command if flag.startswith("--") and flag not in help_text]
    assert not unknown, unknown


def test_it_answers_a_completion(server: Engine) -> None:
    reply = server.complete("The capital of France is", max_tokens=8)
    assert reply["choices"][0]["text"].strip()
    assert reply["usage"]["completion_tokens"] >= 1 and reply["model"] == server.served_model


def test_it_streams_a_chat(server: Engine) -> None:
    client = server.openai_client()
    stream = client.chat.completions.create(
        model=server.served_model,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(chunks) > 2 and text.strip() and finish in (["stop"], ["length"])


def test_health_and_slots_answer(server: Engine) -> None:
    health = httpx.get(server.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    slots = httpx.get(server.url + "/slots", timeout=10).json()
    assert len(slots) == SLOTS and {s["id"] for s in slots} == set(range(SLOTS))


def test_metrics_export_the_families_the_kit_alerts_on(server: Engine) -> None:
    server.complete("Count to three:", max_tokens=4)
    exported = {name for name, _, _ in metrics.samples(metrics.scrape(server.url + "/metrics"))}
    missing = [name for name in ALERTED_FAMILIES if name not in exported]
    assert not missing, sorted(exported)
    totals = metrics.totals(server.url + "/metrics", ["llamacpp:tokens_predicted_total"])
    assert totals["llamacpp:tokens_predicted_total"] >= 4


def _one(server: Engine, i: int) -> int:
    body = {"prompt": f"Story {i}: once upon a time", "n_predict": 32, "ignore_eos": True, "temperature": 0}
    reply = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    return int(reply["usage"]["completion_tokens"])


def test_parallel_slots_decode_eight_users_together(server: Engine) -> None:
    """Continuous batching: 8 concurrent requests share decode steps, where 8 serial ones take one each.

    Not a speed bound: on 2 shared cores this 135M model gained only 1.2-1.6x from batching 8 (noisy),
    so the test checks the batching itself, from the server's own busy-slots gauge.
    """
    serial = [_one(server, i) for i in range(SLOTS)]
    with ThreadPoolExecutor(SLOTS) as pool:
        parallel = list(pool.map(lambda i: _one(server, i), range(SLOTS)))
    assert serial == parallel == [32] * SLOTS  # ignore_eos + n_predict force the length
    busy = metrics.totals(server.url + "/metrics", ["llamacpp:n_busy_slots_per_decode"])
    assert busy["llamacpp:n_busy_slots_per_decode"] > 1.2, busy  # the average over every decode since start


def test_the_harness_forces_and_counts_full_length_answers(server: Engine) -> None:
    """The kit's benchmark on the native server: ignore_eos makes every answer as long as asked, and the
    client's token count equals the server's own (llamacpp:tokens_predicted_total) for the same requests."""
    from servelab.bench import fixed_workload, run_benchmark

    before = metrics.totals(server.url + "/metrics", ["llamacpp:tokens_predicted_total"])
    result = run_benchmark(
        server.base_url,
        server.served_model,
        fixed_workload(32, 24, engine_kind=server.kind),
        concurrency=2,
        num_requests=4,
        warmup=0,
        progress=False,
    )
    after = metrics.totals(server.url + "/metrics", ["llamacpp:tokens_predicted_total"])
    assert [r.output_tokens for r in result.records] == [24] * 4
    predicted = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    assert predicted == result.summary["output_tokens_total"] == 96


def test_a_missing_model_file_is_refused_before_anything_starts() -> None:
    began = time.perf_counter()
    with pytest.raises(ServelabError) as err:
        start_llama_server(model="/no/such/model.gguf")
    assert "does not exist" in err.value.problem and err.value.fix
    assert time.perf_counter() - began < 5


def test_a_file_that_is_not_a_gguf_fails_fast_with_the_server_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"this is not a GGUF file" * 100)
    began = time.perf_counter()
    with pytest.raises(ServelabError) as err:
        start_llama_server(model=str(broken), ready_timeout=60)
    assert "exited with code" in err.value.problem and "gguf" in err.value.problem.lower()
    assert err.value.fix and time.perf_counter() - began < 30
