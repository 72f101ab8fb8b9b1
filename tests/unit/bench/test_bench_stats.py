"""The benchmark's arithmetic and plumbing, checked without any server (runs in a few seconds)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from servelab.bench import (
    BenchResult,
    RequestRecord,
    arrival_offsets,
    dataset_workload,
    fixed_workload,
    inter_arrival_times,
    length_forcing_body,
    random_workload,
    run_benchmark,
    run_benchmark_async,
    summarize,
)
from servelab.bench.loadgen import _gap_stream, send_request
from servelab.bench.stats import bootstrap_interval, goodput_knee, percentile_label, resolves, spread
from servelab.bench.workload import Request, load_dataset
from servelab.errors import ServelabError
from servelab.procs import free_port


def ok(
    index: int,
    ttft: float,
    tpot: float | None = None,
    e2e: float | None = None,
    tokens: int = 10,
    itl: list[float] | None = None,
) -> RequestRecord:
    return RequestRecord(
        index=index,
        start_s=float(index),
        status="ok",
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=e2e if e2e is not None else ttft + 1.0,
        output_tokens=tokens,
        input_tokens=5,
        itl_s=itl or [],
    )


def test_ttft_itl_tpot_e2e_from_known_timestamps() -> None:
    rec = RequestRecord.from_timestamps(3, sent=10.0, chunk_times=[10.5, 10.6, 10.8, 11.1], end=11.1, run_start=9.0)
    assert rec.start_s == pytest.approx(1.0)
    assert rec.ttft_s == pytest.approx(0.5)
    assert rec.itl_s == pytest.approx([0.1, 0.2, 0.3])
    assert rec.e2e_s == pytest.approx(1.1)
    assert rec.output_tokens == 4  # counted from chunks when the server sends no usage
    assert rec.tpot_s == pytest.approx((1.1 - 0.5) / 3)


def test_tpot_uses_usage_token_count_and_is_none_below_two_tokens() -> None:
    rec = RequestRecord.from_timestamps(0, 0.0, [0.2, 0.6], 0.6, output_tokens=5)  # 2 chunks, 5 tokens
    assert rec.tpot_s == pytest.approx((0.6 - 0.2) / 4)
    single = RequestRecord.from_timestamps(0, 0.0, [0.2], 0.2)
    assert single.output_tokens == 1 and single.tpot_s is None and single.itl_s == []


def test_percentiles_are_numpy_linear_over_ok_requests() -> None:
    ttfts = [0.1 * i for i in range(1, 11)]
    records = [ok(i, t, tpot=t / 10) for i, t in enumerate(ttfts)]
    s = summarize(records, duration_s=5.0)
    assert s["ttft_mean_s"] == pytest.approx(np.mean(ttfts))
    for p in (50, 90, 99):
        assert s[f"ttft_p{p}_s"] == pytest.approx(np.percentile(ttfts, p))
        assert s[f"tpot_p{p}_s"] == pytest.approx(np.percentile(np.array(ttfts) / 10, p))
    assert s["ttft_p50_s"] == pytest.approx(0.55)  # linear interpolation between 0.5 and 0.6


def test_itl_is_pooled_over_every_gap_of_every_request() -> None:
    records = [ok(0, 0.1, itl=[0.01, 0.02]), ok(1, 0.1, itl=[0.03, 0.04, 0.05, 0.06])]
    s = summarize(records, duration_s=1.0)
    assert s["itl_mean_s"] == pytest.approx(np.mean([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]))
    assert s["itl_p50_s"] == pytest.approx(0.035)


def test_throughputs() -> None:
    records = [ok(i, 0.1, tokens=20) for i in range(4)]
    s = summarize(records, duration_s=2.0)
    assert s["request_throughput"] == pytest.approx(2.0)
    assert s["output_token_throughput"] == pytest.approx(40.0)
    assert s["total_token_throughput"] == pytest.approx((4 * 5 + 80) / 2.0)


def test_failures_are_counted_and_excluded_from_latency_but_not_from_goodput_fraction() -> None:
    records = [
        ok(0, 0.1, tpot=0.01),
        ok(1, 0.2, tpot=0.02),
        RequestRecord(2, 2.0, "error", error="HTTP 500: boom"),
        RequestRecord(3, 3.0, "timeout", ttft_s=5.0, e2e_s=9.0, output_tokens=3, error="no complete answer"),
    ]
    s = summarize(records, duration_s=4.0)
    assert (s["requests"], s["ok"], s["errors"], s["timeouts"]) == (4, 2, 1, 1)
    assert s["ttft_p99_s"] <= 0.2  # the timed-out request's 5 s is not a latency sample
    assert s["output_tokens_total"] == 20
    assert s["goodput_fraction"] == pytest.approx(0.5)
    assert s["first_error"] == "HTTP 500: boom"


def test_goodput_under_an_slo() -> None:
    records = [
        ok(0, ttft=0.1, tpot=0.01),  # meets both
        ok(1, ttft=0.5, tpot=0.01),  # TTFT too slow
        ok(2, ttft=0.1, tpot=0.05),  # TPOT too slow
        ok(3, ttft=0.2, tpot=None, tokens=1),  # one token: only TTFT applies
        RequestRecord(4, 4.0, "error", error="x"),
    ]
    s = summarize(records, duration_s=2.0, slo_ttft_s=0.25, slo_tpot_s=0.02)
    assert s["goodput"] == pytest.approx(2 / 2.0)
    assert s["goodput_fraction"] == pytest.approx(2 / 5)
    result = BenchResult(records, {}, 2.0)
    assert result.summarize(slo_ttft_s=1.0)["goodput_fraction"] == pytest.approx(4 / 5)


def test_poisson_arrivals_have_the_asked_rate() -> None:
    gaps = inter_arrival_times(2000, request_rate=5.0, burstiness=1.0, seed=1)
    assert gaps.mean() == pytest.approx(0.2, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)  # exponential: CV 1
    offsets = arrival_offsets(5, 5.0, seed=1)
    assert offsets[0] == 0.0 and np.all(np.diff(offsets) >= 0)
    assert np.array_equal(inter_arrival_times(10, 5.0, seed=3), inter_arrival_times(10, 5.0, seed=3))
    # the schedule a run uses is the one arrival_offsets shows for the same seed
    run_gaps = _gap_stream(5.0, 0.5, seed=4, block=7)
    assert np.allclose([next(run_gaps) for _ in range(20)], inter_arrival_times(20, 5.0, 0.5, seed=4))


def test_burstiness_changes_the_variance_not_the_rate() -> None:
    bursty = inter_arrival_times(4000, 5.0, burstiness=0.25, seed=2)
    smooth = inter_arrival_times(4000, 5.0, burstiness=4.0, seed=2)
    for gaps in (bursty, smooth):
        assert gaps.mean() == pytest.approx(0.2, rel=0.1)
    assert bursty.std() / bursty.mean() == pytest.approx(2.0, rel=0.15)  # CV = 1/sqrt(shape)
    assert smooth.std() / smooth.mean() == pytest.approx(0.5, rel=0.15)
    assert np.all(inter_arrival_times(3, float("inf")) == 0)


def test_save_and_load_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = [
        RequestRecord.from_timestamps(0, 1.0, [1.2, 1.3, 1.5], 1.5, run_start=1.0, input_tokens=7, max_tokens=3),
        RequestRecord(1, 0.5, "timeout", error="no complete answer within 1 s", client_queue_s=0.25),
    ]
    result = BenchResult(records, {"model": "m", "concurrency": 2}, 3.0, slo_ttft_s=0.5)
    paths = result.save(tmp_path, "run1")
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["ok"] == 1 and doc["summary"]["timeouts"] == 1
    assert doc["config"]["concurrency"] == 2
    frame = result.to_dataframe()
    assert list(frame["status"]) == ["ok", "timeout"] and len(paths["csv"].read_text().splitlines()) == 3
    back = BenchResult.load(tmp_path, "run1")
    assert back.records[0].itl_s == pytest.approx(records[0].itl_s)
    assert back.records[0].tpot_s == pytest.approx(records[0].tpot_s)
    assert back.records[1].ttft_s is None and back.records[1].client_queue_s == 0.25
    for key in ("requests", "ok", "timeouts", "ttft_p50_s", "tpot_mean_s", "itl_p99_s", "goodput"):
        assert back.summary[key] == pytest.approx(result.summary[key])
    assert "1 ok" in result.report() and "1 timeouts" in result.report()


def test_workloads_are_seeded_and_force_full_length_per_engine() -> None:
    assert length_forcing_body("vllm") == {"ignore_eos": True}
    assert length_forcing_body("llama-server") == {"ignore_eos": True}
    assert length_forcing_body("llamacpp") == {"logit_bias": {"2": -100}}
    assert length_forcing_body("openai") == {}
    wl = fixed_workload(input_tokens=100, output_tokens=16, engine_kind="llamacpp")
    first, again = wl.take(3, seed=5), wl.take(3, seed=5)
    assert [r.prompt for r in first] == [r.prompt for r in again]
    assert len({r.prompt for r in first}) == 3  # distinct prompts: no prefix-cache shortcut
    for r in first:
        assert r.max_tokens == 16 and r.extra_body == {"logit_bias": {"2": -100}}
        assert 90 <= r.input_tokens <= 110
    body = first[0].body("m", "chat")
    assert body["messages"][0]["content"] == first[0].prompt and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    ranged = random_workload((10, 20), (5, 8), engine_kind="vllm").take(30)
    assert all(5 <= r.max_tokens <= 8 and 8 <= r.input_tokens <= 22 for r in ranged)
    assert ranged[0].extra_body == {"ignore_eos": True}
    with pytest.raises(ServelabError):
        fixed_workload(engine_kind="tgi")  # type: ignore[arg-type]
    with pytest.raises(ServelabError):
        random_workload((50, 10))


def test_shipped_dataset() -> None:
    rows = load_dataset()
    assert 50 <= len(rows) <= 80
    assert all(row["prompt"].strip() and row["output_tokens"] > 0 for row in rows)
    requests = dataset_workload(engine_kind="vllm").take(len(rows))
    lengths = [r.input_tokens for r in requests]
    assert min(lengths) < 20 and max(lengths) > 200  # a real spread, short questions to long instructions
    assert len({r.prompt for r in requests}) == len(rows)  # one pass covers every prompt once
    assert all(r.max_tokens == 7 for r in dataset_workload(output_tokens=7).take(5))


def _mock_client(body: bytes, status: int = 200) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _sse(*objs: object) -> bytes:
    return "".join(f"data: {json.dumps(o)}\n\n" for o in objs).encode() + b"data: [DONE]\n\n"


def test_stream_parsing_completions_chat_usage_and_errors() -> None:
    req = Request("hi", 3, input_tokens=2)

    async def go() -> list[RequestRecord]:
        out = []
        text = _sse(
            *({"choices": [{"text": t, "finish_reason": None}]} for t in ("a", "b", "c")),
            {"choices": [{"text": "", "finish_reason": "length"}]},
        )
        async with _mock_client(text) as c:
            out.append((await send_request(c, "http://x/v1/completions", "m", req, "completions", 5))[0])
        chat = _sse(
            {"choices": [{"delta": {"role": "assistant"}}]},
            *({"choices": [{"delta": {"content": t}}]} for t in ("a", "b")),
            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}},
        )
        async with _mock_client(chat) as c:
            out.append((await send_request(c, "http://x/v1/chat/completions", "m", req, "chat", 5))[0])
        async with _mock_client(b'{"error": "no such model"}', status=404) as c:
            out.append((await send_request(c, "http://x/v1/completions", "m", req, "completions", 5))[0])
        async with _mock_client(_sse({"error": {"message": "overloaded"}})) as c:
            out.append((await send_request(c, "http://x/v1/completions", "m", req, "completions", 5))[0])
        return out

    plain, chat, http_error, stream_error = asyncio.run(go())
    assert plain.status == "ok" and plain.output_tokens == 3 and plain.input_tokens == 2
    assert plain.finish_reason == "length" and len(plain.itl_s) == 2
    assert chat.status == "ok" and chat.output_tokens == 3 and chat.input_tokens == 9  # usage wins
    assert len(chat.itl_s) == 1  # the role-only chunk is not a token
    assert http_error.status == "error" and "404" in http_error.error
    assert stream_error.status == "error" and "overloaded" in stream_error.error


def test_nothing_listening_fails_fast_with_the_fix() -> None:
    port = free_port()
    started = time.perf_counter()
    with pytest.raises(ServelabError, match="unreachable"):
        run_benchmark(f"http://127.0.0.1:{port}/v1", "m", fixed_workload(8, 4), num_requests=5, progress=False)
    # without the health check, consecutive refused connections end the run
    with pytest.raises(ServelabError, match=r"stopped accepting connections .3 connections refused in a row"):
        asyncio.run(
            run_benchmark_async(
                f"http://127.0.0.1:{port}/v1",
                "m",
                fixed_workload(8, 4),
                concurrency=2,
                num_requests=50,
                warmup=0,
                progress=False,
                health_check=False,
            )
        )
    assert time.perf_counter() - started < 10


def test_sync_wrapper_works_inside_a_running_event_loop() -> None:
    """Jupyter runs cells inside an event loop; run_benchmark must still work there."""

    async def notebook_cell() -> None:
        run_benchmark(f"http://127.0.0.1:{free_port()}/v1", "m", fixed_workload(8, 4), num_requests=1, progress=False)

    with pytest.raises(ServelabError, match="unreachable"):
        asyncio.run(notebook_cell())


def test_bad_arguments_say_what_to_do() -> None:
    wl = fixed_workload(8, 4)
    for kwargs in ({"num_requests": None}, {"concurrency": 0}, {"request_rate": -1.0}, {"endpoint": "embed"}):
        with pytest.raises(ServelabError):
            run_benchmark("http://127.0.0.1:1/v1", "m", wl, progress=False, **kwargs)


def test_shared_prefix_workload_starts_every_prompt_with_one_text() -> None:
    wl = fixed_workload(input_tokens=32, output_tokens=8, engine_kind="vllm", shared_prefix_tokens=100)
    first, other_seed = wl.take(3, seed=1), wl.take(2, seed=2)
    prefix = first[0].prompt.split("\n\n")[0]
    assert all(r.prompt.startswith(prefix + "\n\n") for r in first + other_seed)  # the same text for any seed
    assert len({r.prompt for r in first}) == 3  # distinct questions after it
    assert all(125 <= r.input_tokens <= 140 for r in first)
    assert wl.describe()["shared_prefix_tokens"] == 100
    with pytest.raises(ServelabError, match="shared_prefix_tokens"):
        fixed_workload(shared_prefix_tokens=-1)


def test_nothing_listening_ends_quickly() -> None:
    started = time.perf_counter()
    with pytest.raises(ServelabError, match="unreachable"):
        run_benchmark(
            f"http://127.0.0.1:{free_port()}/v1",
            "smollm2-135m-instruct",
            fixed_workload(16, 16, engine_kind="llamacpp"),
            concurrency=2,
            num_requests=6,
            progress=False,
        )
    assert time.perf_counter() - started < 10


def test_every_metric_reports_its_sample_size() -> None:
    records = [RequestRecord.from_timestamps(i, 0.0, [0.1, 0.2, 0.3], 0.3) for i in range(5)]
    s = summarize(records, 1.0)
    assert (s["ttft_n"], s["tpot_n"], s["e2e_n"], s["itl_n"]) == (5, 5, 5, 10)
    assert s["ttft_p50_s"] is not None  # the existing keys stay as they were


def test_a_p99_of_fewer_than_100_samples_is_labelled_as_the_max() -> None:
    assert not resolves(99, 99) and resolves(99, 100) and resolves(50, 2)
    assert percentile_label("TTFT", 99, [8, 16]) == "TTFT p99 (n=8-16: max of n)"
    assert percentile_label("TTFT", 50, 8) == "TTFT p50 (n=8)"
    assert percentile_label("E2E", 99, [50, 200]) == "E2E p99 (n=50-200: max of n where n<100)"


def test_bootstrap_interval_brackets_the_percentile_and_is_reproducible() -> None:
    values = [float(v) for v in range(1, 201)]
    lo, hi = bootstrap_interval(values, 50)
    assert lo < 100.5 < hi
    assert bootstrap_interval(values, 50) == (lo, hi)
    assert bootstrap_interval([], 99) is None


def test_spread_of_repeated_runs() -> None:
    s = spread([9.0, 10.0, 11.0])
    assert s["n"] == 3 and s["min"] == 9.0 and s["max"] == 11.0
    assert abs(s["relative_range"] - 0.2) < 1e-12
    assert spread([])["n"] == 0


def test_goodput_knee_is_the_level_with_the_most_requests_within_the_slo() -> None:
    assert goodput_knee([1, 2, 4, 8], [0.5, 0.9, 1.2, 0.4]) == 4
    assert goodput_knee([1, 2, 4], [0.5, 0.9, 0.9]) == 2  # a tie: the lower load does the same useful work
    assert goodput_knee([1, 2], [0.0, 0.0]) is None
