"""Forwarding one request to a replica: failover, the request timeout, client disconnects, streaming.

Rules, each tied to a failure it prevents:

- A request gets one deadline (``request_timeout_s``) covering the wait for a replica, the engine's
  answer and, for streams, every chunk. A hung engine then costs the client at most that long (504),
  not forever. Past the deadline the upstream connection is closed, which makes the engine stop
  generating for nobody (vLLM aborts the request; llama-cpp-python's server notices between streamed
  chunks).
- A client that disconnects gets the same treatment: its upstream request is closed at once instead
  of running to ``max_tokens`` for nobody.
- Failover: when a replica refuses the connection, or resets it before any byte reached the client,
  the request goes to another replica (up to ``max_attempts`` in all); a refused connection also
  takes the replica out of rotation at once (a reset may be a keep-alive race, so the active health
  check decides). Once bytes
  of a stream have reached the client, a retry would repeat text, so the stream ends with an error
  event instead: that request is lost, and the audit log says so.
- Streams pass through unchanged (the raw SSE bytes); the gateway only counts the chunks that carry
  text (one token each on vLLM and llama.cpp) for the audit log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from servelab import sse
from servelab.gateway.audit import AuditRecord
from servelab.gateway.config import GatewayConfig
from servelab.gateway.errors import ClientGone, GatewayError
from servelab.gateway.metrics import GatewayMetrics
from servelab.gateway.replicas import Replica, ReplicaPool

T = TypeVar("T")
# Failures where the engine cannot have sent the client anything yet, so another replica may answer.
# Only a refused connection proves the replica is gone; a reset may also be a keep-alive race.
UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)
RETRYABLE = (*UNREACHABLE, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def bounded(awaitable: Awaitable[T], deadline: float, request: Request) -> T:
    """``await awaitable``, but give up at ``deadline`` (``loop.time()``; TimeoutError) or when the client
    disconnects (ClientGone); the abandoned work is cancelled either way."""
    task = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_until_disconnect(request.receive))
    try:
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task in done:
        return task.result()
    if gone in done:
        raise ClientGone()
    raise TimeoutError()


class SSECounter:
    """Counts text-carrying chunks (and picks up ``usage`` if the engine sends it) in a raw SSE stream."""

    def __init__(self) -> None:
        self._decoder = sse.Decoder()
        self.tokens_out = 0
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            if event.data is None:
                continue
            self.usage = event.data.get("usage") or self.usage
            if sse.chunk_text(event.data)[0]:
                self.tokens_out += 1


def sse_error(message: str, code: str, type_: str) -> bytes:
    """An error event in the stream, the way OpenAI reports errors after a stream has started."""
    return sse.data_line({"error": {"message": message, "type": type_, "code": code}})


class RelayedStream(StreamingResponse):
    """A streamed answer passed through from a replica; on close, however it ended (done, timeout,
    client gone), it closes the upstream response, frees the replica and completes the audit record."""

    def __init__(
        self,
        first: bytes,
        chunks: AsyncIterator[bytes],
        upstream: httpx.Response,
        replica: Replica,
        forwarder: Forwarder,
        record: AuditRecord,
        deadline: float,
    ) -> None:
        self._upstream, self._replica, self._forwarder, self._record = upstream, replica, forwarder, record
        self._counter = SSECounter()
        self._deadline = deadline
        self._outcome: str | None = None
        self._relayed = self._relay(first, chunks)  # the body iterator, kept typed so that it can be closed
        super().__init__(
            self._relayed,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "text/event-stream"),
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _relay(self, first: bytes, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        self._counter.feed(first)
        yield first
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                self._outcome = "ok"
                return
            except TimeoutError:
                self._outcome = "timeout"
                yield sse_error(
                    f"The request took longer than the gateway's timeout of "
                    f"{self._forwarder.config.request_timeout_s:g} s; the stream was cut.",
                    "timeout",
                    "timeout_error",
                )
                return
            except httpx.HTTPError as err:
                self._outcome = "upstream_error"
                self._record.error = f"replica {self._replica.name} failed mid-stream: {type(err).__name__}"
                self._forwarder.metrics.upstream.labels(self._replica.name, "failed").inc()
                yield sse_error(
                    f"The engine replica failed while streaming ({type(err).__name__}); "
                    "this answer is incomplete. Retry the request.",
                    "upstream_failed_mid_stream",
                    "upstream_error",
                )
                return
            self._counter.feed(chunk)
            yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._relayed.aclose()
            await self._upstream.aclose()
            await self._forwarder.pool.release(self._replica)
            outcome = self._outcome or "client_disconnected"
            self._record.outcome = outcome
            self._record.tokens_out = self._counter.tokens_out
            if self._counter.usage:
                self._record.tokens_in = self._counter.usage.get("prompt_tokens")
            if outcome in ("timeout", "client_disconnected"):
                self._forwarder.metrics.cancelled.labels(outcome).inc()


class Forwarder:
    """Sends admitted requests to the replica pool and relays the answers."""

    def __init__(
        self, config: GatewayConfig, pool: ReplicaPool, client: httpx.AsyncClient, metrics: GatewayMetrics
    ) -> None:
        self.config, self.pool, self.client, self.metrics = config, pool, client, metrics

    async def forward(self, request: Request, content: bytes, stream: bool, record: AuditRecord) -> Response:
        """Answer ``request`` from a healthy replica, failing over when one fails before answering."""
        deadline = asyncio.get_running_loop().time() + self.config.request_timeout_s
        tried: list[Replica] = []
        last_error = ""
        while len(tried) < self.config.max_attempts:
            try:
                replica = await bounded(self.pool.acquire(tried), deadline, request)
            except TimeoutError:
                raise self._timeout("waiting for a free replica") from None
            except GatewayError:
                if not tried:
                    raise
                break  # no other healthy replica to try: report the failure we saw
            tried.append(replica)
            record.replica, record.attempts = replica.name, len(tried)
            handed_over = False
            try:
                response = await self._attempt(request, replica, content, stream, record, deadline)
                handed_over = isinstance(response, RelayedStream)
                return response
            except RETRYABLE as err:
                last_error = f"replica {replica.name}: {type(err).__name__}"
                self.metrics.upstream.labels(replica.name, "failed").inc()
                if isinstance(err, UNREACHABLE):
                    await self.pool.mark_down(replica, f"connection failed: {type(err).__name__}")
            except httpx.HTTPError as err:  # anything else: not safe to repeat
                self.metrics.upstream.labels(replica.name, "failed").inc()
                raise GatewayError(
                    502,
                    f"Replica {replica.name} failed ({type(err).__name__}: {err}).",
                    "upstream_failed",
                    "upstream_error",
                ) from None
            finally:
                if not handed_over:
                    await self.pool.release(replica)
        record.error = last_error
        raise GatewayError(
            502,
            (f"The engine replicas failed before answering ({last_error}; {len(tried)} tried). Retry the request."),
            "upstream_failed",
            "upstream_error",
        )

    def _timeout(self, while_: str) -> GatewayError:
        self.metrics.cancelled.labels("timeout").inc()
        return GatewayError(
            504,
            (
                f"The request took longer than the gateway's timeout of "
                f"{self.config.request_timeout_s:g} s ({while_}). Retry later, or ask for fewer "
                "tokens (max_tokens)."
            ),
            "timeout",
            "timeout",
        )

    async def _attempt(
        self, request: Request, replica: Replica, content: bytes, stream: bool, record: AuditRecord, deadline: float
    ) -> Response:
        upstream_request = self.client.build_request(
            request.method,
            replica.url + request.url.path,
            content=content or None,
            headers={"content-type": "application/json"} if content else None,
        )
        try:
            upstream = await bounded(self.client.send(upstream_request, stream=True), deadline, request)
        except TimeoutError:
            raise self._timeout(f"waiting for replica {replica.name}") from None
        except ClientGone:
            self.metrics.cancelled.labels("client_disconnected").inc()
            raise
        try:
            if upstream.status_code == 200 and stream:
                chunks = upstream.aiter_raw()
                first = await bounded(anext(chunks, b""), deadline, request)
                self.metrics.upstream.labels(replica.name, "ok").inc()
                return RelayedStream(first, chunks, upstream, replica, self, record, deadline)
            body = await bounded(upstream.aread(), deadline, request)
        except TimeoutError:
            await upstream.aclose()
            raise self._timeout(f"waiting for replica {replica.name}") from None
        except ClientGone:
            await upstream.aclose()
            self.metrics.cancelled.labels("client_disconnected").inc()
            raise
        except BaseException:
            await upstream.aclose()
            raise
        await upstream.aclose()
        self.metrics.upstream.labels(replica.name, "ok").inc()
        if upstream.status_code != 200:
            record.outcome = "engine_error"
            record.error = body[:300].decode(errors="replace")
        else:
            try:
                usage = json.loads(body).get("usage") or {}
            except (json.JSONDecodeError, AttributeError):
                usage = {}
            record.tokens_in, record.tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return Response(
            body, status_code=upstream.status_code, media_type=upstream.headers.get("content-type", "application/json")
        )
