"""The kit's one-home mechanisms: the SSE parser, the coroutine runner, the tool finder, Kubernetes
quantities, and the seed's cost claims as data. Each test can fail: it feeds the case that a second,
drifted copy of the mechanism used to get wrong."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from servelab import aio, binaries, sse
from servelab.course import preflight
from servelab.engines import device
from servelab.errors import ServelabError
from servelab.k8s import quantity
from servelab.k8s.autoscale import HPASpec
from servelab.planning import cost

# --- one SSE parser ---------------------------------------------------------------------------------


def test_parse_line_tells_done_data_error_and_noise_apart() -> None:
    assert sse.parse_line("") is None and sse.parse_line(": keep-alive") is None
    assert sse.parse_line("event: message") is None
    assert sse.parse_line("data: [DONE]") == sse.Event(done=True)
    event = sse.parse_line(b'data: {"choices": [{"text": "Hi"}]}')
    assert event is not None and event.data == {"choices": [{"text": "Hi"}]} and event.error is None
    error = sse.parse_line('data: {"error": {"message": "boom"}}')
    assert error is not None and error.error == {"message": "boom"}
    invalid = sse.parse_line("data: {not json")
    assert invalid is not None and invalid.data is None and invalid.invalid == "{not json"
    assert sse.parse_line("data: [1, 2]") == sse.Event(invalid="[1, 2]")  # JSON, but not an event object


def test_decoder_rejoins_lines_cut_anywhere() -> None:
    stream = sse.data_line({"choices": [{"text": "a"}]}) + sse.data_line({"choices": [{"text": "b"}]}) + sse.DONE
    decoder = sse.Decoder()
    events = [event for i in range(0, len(stream), 7) for event in decoder.feed(stream[i : i + 7])]
    assert [sse.chunk_text(e.data)[0] for e in events if e.data] == ["a", "b"] and events[-1].done


def test_chunk_text_reads_completions_and_chat_and_skips_role_only_chunks() -> None:
    assert sse.chunk_text({"choices": [{"text": "x", "finish_reason": None}]}) == ("x", None)
    assert sse.chunk_text({"choices": [{"delta": {"content": "y"}, "finish_reason": "length"}]}) == ("y", "length")
    assert sse.chunk_text({"choices": [{"delta": {"role": "assistant"}}]}) == ("", None)
    assert sse.chunk_text({"choices": [{"text": 5}, "junk"], "usage": {}}) == ("", None)


# --- one coroutine runner -----------------------------------------------------------------------------


def test_run_sync_works_with_and_without_a_running_loop() -> None:
    async def answer(stop: threading.Event) -> str:
        await asyncio.sleep(0)
        return "no stop" if not stop.is_set() else "stopped"

    assert aio.run_sync(answer) == "no stop"

    async def inside_a_loop() -> str:  # what a Jupyter cell is: a loop already runs
        return aio.run_sync(answer)

    assert asyncio.run(inside_a_loop()) == "no stop"


# --- one tool finder ----------------------------------------------------------------------------------


def test_find_accepts_every_name_of_a_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(
        binaries.shutil, "which", lambda name: "/usr/bin/x" if name == "prometheus-alertmanager" else None
    )
    monkeypatch.setattr(binaries.sys, "executable", str(tmp_path / "python"))
    assert binaries.find("alertmanager") == "/usr/bin/x"
    assert binaries.find("prometheus") is None
    with pytest.raises(ServelabError, match="apt-get install prometheus"):
        binaries.require("promtool")
    with pytest.raises(ServelabError, match="not a tool the kit knows"):
        binaries.find("grafana")


def test_find_looks_beside_this_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "promtool").write_text("")
    monkeypatch.setattr(binaries.shutil, "which", lambda name: None)
    monkeypatch.setattr(binaries.sys, "executable", str(tmp_path / "python"))
    assert binaries.find("promtool") == str(tmp_path / "promtool")


def test_preflight_checks_every_tool_the_notebooks_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(binaries.shutil, "which", lambda name: f"/bin/{name}" if name != "kubectl" else None)
    monkeypatch.setattr(binaries.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(binaries, "llamacpp_bin_dir", lambda: tmp_path / "llama.cpp")
    checks = {c.name.split(" (")[0]: c for c in preflight.check_tools()}
    llama = {"llama-server", "llama-bench", "llama-perplexity"}
    assert set(checks) == {"prometheus", "promtool", "alertmanager / prometheus-alertmanager", "kubectl", *llama}
    assert checks["alertmanager / prometheus-alertmanager"].ok and not checks["kubectl"].ok
    assert "kubectl" in checks["kubectl"].fix
    # llama.cpp's programs are looked for only where `make setup` compiles them, never on PATH.
    assert not any(checks[t].ok for t in llama) and all("make setup" in checks[t].fix for t in llama)


# --- one quantity parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"), [("200m", 0.2), ("10", 10.0), (10, 10.0), ("1Ki", 1024.0), ("2M", 2e6), ("1e3", 1000.0)]
)
def test_quantities_parse_as_kubernetes_does(text: str | int, value: float) -> None:
    assert quantity.parse(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["1Gb", "8 Gi", "1gi", "ten", ""])
def test_malformed_quantities_are_refused_with_examples(text: str) -> None:
    assert not quantity.is_quantity(text)
    with pytest.raises(ServelabError, match="512Mi"):
        quantity.parse(text)


def test_a_containers_resources_read_as_numbers_or_none_whatever_their_shape() -> None:
    resources = {"requests": {"memory": "512Mi", "cpu": "1500m"}, "limits": {"memory": "1Gb"}}
    assert quantity.memory_mib(resources, "requests") == 512.0
    assert quantity.resource(resources, "requests", "cpu") == pytest.approx(1.5)
    assert quantity.memory_mib(resources, "limits") is None  # malformed: the manifest checks report it
    assert quantity.memory_mib({"requests": "2Gi"}, "requests") is None and quantity.memory_mib(None, "limits") is None


def test_hpa_target_reads_any_quantity(tmp_path: Path) -> None:
    hpa = tmp_path / "hpa.yaml"
    hpa.write_text(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: x}\n"
        "spec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: x}\n  maxReplicas: 4\n"
        "  metrics:\n  - type: Pods\n    pods:\n      metric: {name: q}\n"
        "      target: {type: AverageValue, averageValue: 1500m}\n"
    )
    assert HPASpec.from_manifest(hpa).target == pytest.approx(1.5)


# --- the seed's cost claims are read, not retyped -----------------------------------------------------


def test_every_seed_lever_claim_is_used_by_a_lever() -> None:
    claims = cost.load_seed_claims()
    offer = cost.load_prices().offer("A100")
    rows = [{"concurrency": 1, "output_token_throughput": 10.0}, {"concurrency": 8, "output_token_throughput": 40.0}]
    ladder = [
        {"level": "F16", "decode_tok_s": 10.0, "file_mib": 100},
        {"level": "Q8_0", "decode_tok_s": 15.0, "file_mib": 50},
    ]
    levers = [
        cost.batching_lever(rows, "test"),
        cost.quantization_lever(ladder, "Q8_0", "test"),
        cost.spot_lever(offer, 0.1),
        cost.prefix_cache_lever(0.5, 0.2, "test"),
    ]
    used = {lever.claim.quote for lever in levers if lever.claim}
    assert used == {c.quote for c in claims.levers.values()}
    steps = cost.waterfall(1.0, levers)
    assert steps["seed_saving"].tolist() == [
        claims.levers[k].saving for k in ("batching", "quantization", "spot", "cache")
    ]
    with pytest.raises(ServelabError, match="no claim"):
        cost.seed_lever_claim("free lunch")


# --- errors that name a real fix ----------------------------------------------------------------------


def test_cuda_with_the_cpu_build_names_a_real_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "gpu_names", lambda timeout=10.0: ["NVIDIA H100"])
    monkeypatch.setattr(device, "vllm_build", lambda: "cpu")
    with pytest.raises(ServelabError, match="CUDA build") as err:
        device.resolve_device("cuda")
    assert err.value.fix and "pip install vllm" in err.value.fix and "VLLM_BUILD" not in str(err.value)
