"""How fast can the *harness* go? Its ceiling, measured against a stub server that answers instantly.

A load generator is itself a program on the same (here: 2-core) machine. If an engine's measured
throughput comes near the harness's own ceiling, the figure says more about the client than about the
engine. :func:`measure_client_ceiling` starts a tiny Starlette app (in a
:class:`~servelab.procs.ManagedServer` subprocess) that streams ``max_tokens`` canned chunks with no
model behind them, drives it with the real harness, and reports requests/s and chunks/s.

This stub is NOT an engine and NOT a stand-in for one: its figures are an upper bound for the client,
nothing else. On a small machine the stub shares the CPU with the client, so the ceiling is a
conservative (low) estimate.

Run the stub alone with ``python -m servelab.bench.overhead --port 8123``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from servelab import sse
from servelab.paths import logs_dir
from servelab.procs import ManagedServer, free_port

STUB_MODEL = "instant-stub-not-an-engine"
LABEL = "client ceiling: servelab.bench against an instant stub server (not an engine)"


def build_app() -> Any:
    """The stub: ``/v1/models``, and streamed ``/v1/completions`` and ``/v1/chat/completions``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": STUB_MODEL, "object": "model"}]})

    async def complete(request: Request) -> StreamingResponse:
        body = await request.json()
        chat = request.url.path.endswith("/chat/completions")
        n = int(body.get("max_tokens") or 16)
        if chat:
            chunk = {
                "object": "chat.completion.chunk",
                "model": STUB_MODEL,
                "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}],
            }
        else:
            chunk = {
                "object": "text_completion",
                "model": STUB_MODEL,
                "choices": [{"index": 0, "text": " tok", "finish_reason": None}],
            }
        line = sse.data_line(chunk)
        usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": n + 8}
        tail = (
            sse.data_line({"choices": [], "usage": usage})
            if (body.get("stream_options") or {}).get("include_usage")
            else b""
        )

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(n):
                yield line
            yield tail + sse.DONE

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/completions", complete, methods=["POST"]),
            Route("/v1/chat/completions", complete, methods=["POST"]),
        ]
    )


def start_stub_server(ready_timeout: float = 30.0) -> ManagedServer:
    """Start the stub on a free loopback port and wait until it answers."""
    port = free_port()
    server = ManagedServer(
        name="instant stub server (client-ceiling test, not an engine)",
        command=[sys.executable, "-m", "servelab.bench.overhead", "--port", str(port)],
        port=port,
        log_path=logs_dir() / f"bench-stub-{port}-{int(time.time())}.log",
        ready_path="/v1/models",
    )
    return server.launch(ready_timeout)


def measure_client_ceiling(
    concurrency: int = 16,
    num_requests: int = 400,
    chunks: int = 32,
    endpoint: str = "completions",
    progress: bool = False,
) -> dict[str, Any]:
    """Requests/s and chunks/s the harness reaches when the server costs nothing.

    Keep ``num_requests`` modest on a shared machine: a few hundred take a few seconds.
    """
    from servelab.bench.loadgen import run_benchmark
    from servelab.bench.workload import fixed_workload

    workload = fixed_workload(input_tokens=8, output_tokens=chunks, engine_kind="openai")
    with start_stub_server() as server:
        result = run_benchmark(
            server.url + "/v1",
            STUB_MODEL,
            workload,
            concurrency=concurrency,
            num_requests=num_requests,
            warmup=concurrency,
            timeout_s=30.0,
            endpoint=endpoint,
            progress=progress,
        )
    s = result.summary
    return {
        "label": LABEL,
        "concurrency": concurrency,
        "chunks_per_request": chunks,
        "requests": s["requests"],
        "ok": s["ok"],
        "duration_s": s["duration_s"],
        "requests_per_s": s["request_throughput"],
        "chunks_per_s": s["output_token_throughput"],
        "itl_p50_s": s["itl_p50_s"],
        "ttft_p50_s": s["ttft_p50_s"],
    }


def _serve(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Instant streaming stub for measuring the bench client.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    _serve()
