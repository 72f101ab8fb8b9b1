"""Drills that make the gateway's practices visible with real engines: a replica killed under load,
a burst of concurrent requests, a client that hangs up mid-stream.

Notebook 08 and tests/live/test_gateway.py run the same drills, so what the notebook shows is what the
tests assert. Each drill talks to the gateway over HTTP like any client would; the only thing it does
behind the gateway's back is kill an engine process (that is the failure being drilled).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from servelab import sse
from servelab.aio import run_sync
from servelab.bench import length_forcing_body
from servelab.engines.launch import Engine
from servelab.errors import ServelabError
from servelab.gateway.launch import Gateway
from servelab.observe.metrics import samples


@dataclass
class Call:
    """One request of a drill: when it started and ended (seconds from the drill's start), how it ended."""

    start_s: float
    end_s: float
    ok: bool
    status: int | None
    request_id: str | None
    error: str | None = None


async def _stream_once(client: httpx.AsyncClient, url: str, body: dict[str, Any], t0: float) -> Call:
    """One streamed completion; ok only with status 200, no error event and a final ``[DONE]``."""
    start = time.perf_counter() - t0
    status, request_id, error, done = None, None, None, False
    try:
        async with client.stream("POST", url, json=body) as response:
            status, request_id = response.status_code, response.headers.get("x-request-id")
            if status != 200:
                error = (await response.aread()).decode(errors="replace")[:200]
            else:
                async for line in response.aiter_lines():
                    event = sse.parse_line(line)
                    if event is not None and event.done:
                        done = True
                    elif event is not None and event.error is not None:
                        error = str(
                            event.error.get("message", event.error) if isinstance(event.error, dict) else event.error
                        )
    except httpx.HTTPError as err:
        error = f"{type(err).__name__}: {err}"
    ok = status == 200 and done and error is None
    return Call(start, time.perf_counter() - t0, ok, status, request_id, error if not ok else None)


def replica_up(gateway: Gateway) -> dict[str, bool]:
    """What the gateway believes about each replica now (its ``gateway_replica_up`` gauge)."""
    text = httpx.get(gateway.admin_url + "/metrics", timeout=5).text
    return {labels["replica"]: value == 1 for name, labels, value in samples(text, "gateway_replica_up")}


def kill_engine(engine: Engine) -> None:
    """SIGKILL an engine's whole process group: a crash, not a graceful stop (no draining, no goodbye)."""
    if engine.process is None or engine.process.poll() is not None:
        raise ServelabError(f"{engine.name} is not running, so it cannot be killed", "start the engine first")
    os.killpg(engine.process.pid, signal.SIGKILL)


@dataclass
class FailoverReport:
    """What a client saw while a replica died: the figures notebook 08 records."""

    requests: int
    ok: int
    failed: int
    kill_at_s: float
    noticed_at_s: float | None  # when the gateway's health check had marked the victim down
    in_flight_at_kill: int
    in_flight_lost: int  # in flight at the kill and failed
    failed_after_notice: int  # started after the gateway noticed and still failed: should be 0
    calls: list[Call]

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "calls"}


def failover_drill(
    gateway: Gateway,
    victim: Engine,
    victim_name: str,
    model: str,
    api_key: str,
    concurrency: int = 6,
    duration_s: float = 8.0,
    kill_at_s: float = 3.0,
    max_tokens: int = 24,
) -> FailoverReport:
    """Stream completions through the gateway with ``concurrency`` users for ``duration_s`` seconds and
    SIGKILL ``victim`` at ``kill_at_s``; then count what was lost and when the gateway noticed."""
    if not 0 < kill_at_s < duration_s:
        raise ServelabError(
            f"kill_at_s={kill_at_s} must lie inside the run (0, {duration_s})", "e.g. duration_s=8, kill_at_s=3"
        )

    async def drill() -> FailoverReport:
        url = gateway.base_url + "/completions"
        body = {
            "model": model,
            "prompt": "Write a short story about a robot.",
            "max_tokens": max_tokens,
            "stream": True,
            "temperature": 0,
            **length_forcing_body(victim.kind),
        }  # every answer full length
        calls: list[Call] = []
        noticed: list[float] = []
        t0 = time.perf_counter()
        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(
            headers=headers, timeout=60, trust_env=False, limits=httpx.Limits(max_connections=None)
        ) as client:

            async def user() -> None:
                while time.perf_counter() - t0 < duration_s:
                    calls.append(await _stream_once(client, url, body, t0))

            async def saboteur() -> None:
                await asyncio.sleep(kill_at_s)
                kill_engine(victim)
                while time.perf_counter() - t0 < duration_s + 30:
                    up = await asyncio.to_thread(replica_up, gateway)
                    if not up.get(victim_name, True):
                        noticed.append(time.perf_counter() - t0)
                        return
                    await asyncio.sleep(0.05)

            await asyncio.gather(saboteur(), *(user() for _ in range(concurrency)))
        in_flight = [c for c in calls if c.start_s <= kill_at_s < c.end_s]
        notice = noticed[0] if noticed else None
        return FailoverReport(
            requests=len(calls),
            ok=sum(c.ok for c in calls),
            failed=sum(not c.ok for c in calls),
            kill_at_s=kill_at_s,
            noticed_at_s=notice,
            in_flight_at_kill=len(in_flight),
            in_flight_lost=sum(not c.ok for c in in_flight),
            failed_after_notice=sum(not c.ok for c in calls if notice is not None and c.start_s > notice),
            calls=sorted(calls, key=lambda c: c.start_s),
        )

    return run_sync(lambda _stop: drill())


def burst(
    gateway: Gateway, model: str, api_key: str, n: int = 200, max_tokens: int = 2, timeout_s: float = 120.0
) -> list[Call]:
    """``n`` streamed completions sent all at once; returns each call (with the ``x-request-id`` the
    gateway gave it, to match against the audit log)."""

    async def go() -> list[Call]:
        body = {"model": model, "prompt": "Hello", "max_tokens": max_tokens, "stream": True, "temperature": 0}
        async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            trust_env=False,
            limits=httpx.Limits(max_connections=None),
        ) as client:
            t0 = time.perf_counter()
            return list(
                await asyncio.gather(
                    *(_stream_once(client, gateway.base_url + "/completions", body, t0) for _ in range(n))
                )
            )

    return run_sync(lambda _stop: go())


def wait_for_audit(gateway: Gateway, request_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The audit line of one request (written when the gateway has finished with it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in gateway.audit_lines():
            if line["request_id"] == request_id:
                return line
        time.sleep(0.05)
    raise ServelabError(
        f"no audit line for request {request_id} after {timeout_s:g} s", f"read the gateway's log: {gateway.log_path}"
    )


def hang_up_mid_stream(
    gateway: Gateway, replicas: dict[str, Engine], model: str, api_key: str, max_tokens: int = 400, read_chunks: int = 8
) -> dict[str, Any]:
    """Start a long stream through the gateway, read a few chunks, hang up; then time how soon the
    replica that served it answers a 1-token request directly. Without cancellation it would first
    finish the abandoned answer (``max_tokens`` tokens for nobody)."""
    kind = next(iter(replicas.values())).kind
    body = {
        "model": model,
        "prompt": "Write a long story about the sea.",
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
        **length_forcing_body(kind),
    }  # full length unless cancelled
    arrivals: list[float] = []
    with httpx.stream(
        "POST", gateway.base_url + "/completions", json=body, timeout=60, headers={"Authorization": f"Bearer {api_key}"}
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            event = sse.parse_line(line)
            if event is not None and event.data is not None and sse.chunk_text(event.data)[0]:
                arrivals.append(time.perf_counter())  # a chunk that carries text: one token's arrival
            if len(arrivals) >= read_chunks:
                break
    audit = wait_for_audit(gateway, request_id)
    engine = replicas[audit["replica"]]
    t = time.perf_counter()
    engine.complete("Hi", max_tokens=1, timeout=120)
    per_token = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if len(arrivals) > 1 else float("nan")
    return {
        "request_id": request_id,
        "replica": audit["replica"],
        "chunks_read": len(arrivals),
        "seconds_per_token": round(per_token, 4),
        # what finishing the answer for nobody would have cost that replica
        "abandoned_generation_s": round((max_tokens - len(arrivals)) * per_token, 1),
        "replica_free_after_s": round(time.perf_counter() - t, 3),
        "audit_outcome": audit["outcome"],
        "audit_tokens_out": audit["tokens_out"],
    }


def latency_pairs(
    gateway: Gateway, engine: Engine, model: str, api_key: str, n: int = 20, max_tokens: int = 1
) -> list[dict[str, float]]:
    """The same small completion ``n`` times straight to ``engine`` and ``n`` times through the gateway,
    interleaved (alternating which goes first), so that the machine's drift and noise hit both sides
    alike; the gateway's overhead is the median of the pairwise differences."""
    body = {"model": model, "prompt": "Hello", "max_tokens": max_tokens, "temperature": 0}
    pairs = []
    with (
        httpx.Client(timeout=60, trust_env=False) as direct,
        httpx.Client(timeout=60, trust_env=False, headers={"Authorization": f"Bearer {api_key}"}) as via,
    ):
        sides = {"direct_s": (direct, engine.base_url), "gateway_s": (via, gateway.base_url)}
        for i in range(n):
            row = {}
            for side in ("direct_s", "gateway_s") if i % 2 == 0 else ("gateway_s", "direct_s"):
                client, base = sides[side]
                began = time.perf_counter()
                client.post(base + "/completions", json=body).raise_for_status()
                row[side] = time.perf_counter() - began
            pairs.append(row)
    return pairs
