"""Forwarding one request to a replica: failover, timeouts, client disconnects, streaming, engine errors.

Rules, each tied to a failure it prevents:

- Deadlines. A non-streamed request gets ``request_timeout_s`` in all: the wait for a replica and the
  engine's answer. A stream gets ``first_chunk_timeout_s`` for the wait and its first chunk, then
  ``stream_idle_timeout_s`` between chunks and ``stream_timeout_s`` in all, so a long answer at a slow
  TPOT is not cut while a stalled one is. A hung engine then costs the client a bounded time (504,
  or an error event in the stream). Past a deadline the upstream connection is closed, which makes
  the engine stop generating for nobody (vLLM aborts the request; llama-cpp-python's server
  notices between streamed chunks).
- A client that disconnects gets the same treatment: its upstream request is closed at once instead
  of running to ``max_tokens`` for nobody. An engine that finishes a non-streamed answer anyway
  (llama-cpp-python's server; ``stops_on_disconnect: false``) keeps its replica counted busy until it
  is done, so that the next request is not queued inside a busy engine while the gateway thinks it free.
- Failover only where it is safe: a refused connection means the engine never saw the request, so
  another replica may take it (up to ``max_attempts`` in all), and the replica leaves rotation at
  once. A connection dropped after the request was sent is a keep-alive race if the replica still
  answers its health check (then another attempt is safe), and otherwise a replica that died while
  handling it: that request is never sent to another replica, and :mod:`.breaker` quarantines it,
  because a request that crashes one engine crashes the next one too.
- Once bytes of a stream have reached the client, a retry would repeat text, so the stream ends with
  an error event instead: that request is lost, and the audit log says so.
- Engine errors: a 4xx (or a 500 that is a validation error in disguise, as llama-cpp-python sends)
  reaches the client as a 400 with the engine's first line, file paths removed; any other engine
  failure is a 502 that relays nothing of the engine's internals. The audit line keeps only the
  status: engine error bodies can quote the prompt.
- Streams pass through unchanged (the raw SSE bytes); the gateway only counts the chunks that carry
  text (one token each on vLLM and llama.cpp) for the audit log.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from servelab import sse
from servelab.gateway.audit import AuditRecord
from servelab.gateway.breaker import PoisonBreaker, fingerprint
from servelab.gateway.config import GatewayConfig
from servelab.gateway.errors import ClientGone, GatewayError
from servelab.gateway.metrics import GatewayMetrics
from servelab.gateway.replicas import Lease, Replica, ReplicaPool

T = TypeVar("T")
# The engine never got the request: another replica may take it.
UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)
# The connection dropped after the request was sent: a keep-alive race, or the replica died on it.
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# What of an engine's error message may reach a client: no file paths (the GGUF's, the server's source).
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:,()]+){2,}")


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


class ReplicaHeld(Exception):
    """``error`` ended the request, but its replica stays busy (and counted) until the engine is done."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


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
        lease: Lease,
        forwarder: Forwarder,
        record: AuditRecord,
        deadline: float,
    ) -> None:
        self._upstream, self._lease, self._forwarder, self._record = upstream, lease, forwarder, record
        self._replica = lease.replica
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
        config = self._forwarder.config
        self._counter.feed(first)
        yield first
        while True:
            loop_now = asyncio.get_running_loop().time()
            idle = loop_now + config.stream_idle_timeout_s < self._deadline
            try:
                async with asyncio.timeout_at(min(self._deadline, loop_now + config.stream_idle_timeout_s)):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                self._outcome = "ok"
                return
            except TimeoutError:
                self._outcome = "timeout"
                self._record.error = "no chunk within stream_idle_timeout_s" if idle else "stream_timeout_s reached"
                why = (
                    f"the engine sent nothing for {config.stream_idle_timeout_s:g} s (the gateway's idle timeout)"
                    if idle
                    else f"the stream took longer than the gateway's timeout of {config.stream_timeout_s:g} s"
                )
                yield sse_error(f"The stream was cut: {why}.", "timeout", "timeout_error")
                return
            except httpx.HTTPError as err:
                self._outcome = "upstream_error"
                self._record.error = f"replica {self._replica.name} failed mid-stream: {type(err).__name__}"
                self._forwarder.metrics.upstream.labels(self._replica.name, "failed").inc()
                # Out of rotation before its slot is freed, or the next request in the queue goes to a dead replica.
                if not await self._forwarder.alive(self._replica):
                    await self._forwarder.pool.mark_down(self._replica, f"died mid-stream ({type(err).__name__})")
                yield sse_error(
                    f"The engine replica failed while streaming ({type(err).__name__}); this answer is "
                    "incomplete, and what was sent cannot be resumed.",
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
            self._forwarder.pool.release(self._lease)
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
        self.breaker = PoisonBreaker(config.poison_quarantine_s)
        self._held: set[asyncio.Task[None]] = set()

    async def forward(
        self, request: Request, content: bytes, stream: bool, record: AuditRecord, key_id: str, tokens: int = 1
    ) -> Response:
        """Answer ``request`` from a healthy replica, failing over only while that is safe (see the module)."""
        print_ = fingerprint(request.url.path, content)
        self.breaker.check(print_)
        loop = asyncio.get_running_loop()
        began = loop.time()
        budget_s = self.config.first_chunk_timeout_s if stream else self.config.request_timeout_s
        deadline = began + budget_s
        tried: list[Replica] = []
        errors: list[str] = []
        while len(tried) < self.config.max_attempts:
            try:
                lease = await bounded(self.pool.acquire(key_id, tried, deadline, tokens), deadline, request)
            except TimeoutError:
                raise self._timeout("waiting for a free replica", budget_s) from None
            except GatewayError:
                if not tried:
                    raise
                break  # no other healthy replica to try: report the failure we saw
            replica = lease.replica
            tried.append(replica)
            record.replica, record.attempts = replica.name, len(tried)
            record.replicas_tried = [r.name for r in tried]
            handed_over = False
            try:
                response = await self._attempt(request, lease, content, stream, record, deadline)
                handed_over = isinstance(response, RelayedStream)
                return response
            except ReplicaHeld as held:  # the replica is freed when the engine is done (see _answer)
                handed_over = True
                raise held.error from None
            except UNREACHABLE as err:
                errors.append(f"replica {replica.name}: {type(err).__name__}")
                self.metrics.upstream.labels(replica.name, "failed").inc()
                await self.pool.mark_down(replica, f"connection failed: {type(err).__name__}")
            except DROPPED as err:
                self.metrics.upstream.labels(replica.name, "failed").inc()
                errors.append(f"replica {replica.name}: {type(err).__name__}")
                if await self.alive(replica):
                    continue  # a keep-alive race: the engine is fine, another attempt is safe
                await self.pool.mark_down(replica, f"died while handling a request ({type(err).__name__})")
                self.breaker.trip(print_)
                self.metrics.replica_deaths.labels(replica.name).inc()
                record.error = f"replica {replica.name} died while handling the request ({type(err).__name__})"
                raise GatewayError(
                    502,
                    (
                        f"Engine replica {replica.name} died while handling this request. It was not sent to "
                        "another replica, and an identical request will be refused for a while: a request "
                        "that crashes one engine can crash them all. Retrying it unchanged will not help; "
                        "change the request, or report it."
                    ),
                    "replica_died",
                    "upstream_died",
                ) from None
            except httpx.HTTPError as err:  # anything else: not safe to repeat
                self.metrics.upstream.labels(replica.name, "failed").inc()
                record.error = f"replica {replica.name}: {type(err).__name__}"
                raise GatewayError(
                    502,
                    f"Engine replica {replica.name} failed ({type(err).__name__}); the request was not retried.",
                    "upstream_failed",
                    "upstream_error",
                ) from None
            finally:
                if not handed_over:
                    self.pool.release(lease)
        record.error = "; ".join(errors)
        raise GatewayError(
            502,
            (
                f"No engine replica could be reached ({record.error}). Retry after the time in Retry-After, "
                "when the health checks have caught up."
            ),
            "upstream_unreachable",
            "upstream_error",
            headers={"Retry-After": str(max(1, round(self.config.health_interval_s)))},
        )

    async def alive(self, replica: Replica) -> bool:
        """Whether a replica answers its health check now (after a dropped connection)."""
        try:
            response = await self.client.get(
                replica.url + replica.config.health_path, timeout=self.config.health_timeout_s
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _timeout(self, while_: str, budget_s: float) -> GatewayError:
        self.metrics.cancelled.labels("timeout").inc()
        return GatewayError(
            504,
            (
                f"The request took longer than the gateway's timeout of {budget_s:g} s ({while_}). "
                "Retry later, or ask for fewer tokens (max_tokens)."
            ),
            "timeout",
            "timeout",
        )

    async def _attempt(
        self, request: Request, lease: Lease, content: bytes, stream: bool, record: AuditRecord, deadline: float
    ) -> Response:
        replica = lease.replica
        upstream_request = self.client.build_request(
            request.method,
            replica.url + request.url.path,
            content=content or None,
            headers={"content-type": "application/json"} if content else None,
        )
        if not stream:
            return await self._answer(request, lease, upstream_request, record, deadline)
        try:
            upstream = await bounded(self.client.send(upstream_request, stream=True), deadline, request)
        except TimeoutError:
            raise self._timeout(f"waiting for replica {replica.name}", self._budget(stream)) from None
        except ClientGone:
            self.metrics.cancelled.labels("client_disconnected").inc()
            raise
        relayed = False
        try:
            if upstream.status_code == 200:
                chunks = upstream.aiter_raw()
                first = await bounded(anext(chunks, b""), deadline, request)
                self.metrics.upstream.labels(replica.name, "ok").inc()
                stream_deadline = deadline - self._budget(True) + self.config.stream_timeout_s  # from arrival
                relayed = True  # the stream closes the upstream response from now on
                return RelayedStream(first, chunks, upstream, lease, self, record, stream_deadline)
            body = await bounded(upstream.aread(), deadline, request)
        except TimeoutError:
            raise self._timeout(f"waiting for replica {replica.name}", self._budget(stream)) from None
        except ClientGone:
            self.metrics.cancelled.labels("client_disconnected").inc()
            raise
        finally:
            if not relayed:
                await upstream.aclose()
        raise engine_error(replica, upstream.status_code, body, record)

    async def _answer(
        self, request: Request, lease: Lease, upstream_request: httpx.Request, record: AuditRecord, deadline: float
    ) -> Response:
        """A non-streamed answer. If the client leaves or the deadline passes first, an engine that stops
        on a closed connection (vLLM) is let go; one that finishes anyway (llama-cpp-python's server)
        keeps its replica counted busy until it is done, so that no new request queues inside it."""
        replica = lease.replica
        exchange = asyncio.ensure_future(self._exchange(upstream_request))
        holds = not replica.config.stops_on_disconnect
        try:
            status, content_type, body = await bounded(
                asyncio.shield(exchange) if holds else exchange, deadline, request
            )
        except (TimeoutError, ClientGone) as err:
            if isinstance(err, ClientGone):
                self.metrics.cancelled.labels("client_disconnected").inc()
            error = (
                self._timeout(f"waiting for replica {replica.name}", self._budget(False))
                if isinstance(err, TimeoutError)
                else err
            )
            if not holds:
                raise error from None
            self._hold_until_done(exchange, lease)
            raise ReplicaHeld(error) from None
        self.metrics.upstream.labels(replica.name, "ok").inc()
        if status != 200:
            raise engine_error(replica, status, body, record)
        try:
            usage = json.loads(body).get("usage") or {}
        except (json.JSONDecodeError, AttributeError):
            usage = {}
        record.tokens_in, record.tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return Response(body, status_code=status, media_type=content_type)

    async def _exchange(self, upstream_request: httpx.Request) -> tuple[int, str, bytes]:
        upstream = await self.client.send(upstream_request, stream=True)
        try:
            body = await upstream.aread()
            return upstream.status_code, upstream.headers.get("content-type", "application/json"), body
        finally:
            await upstream.aclose()

    def _hold_until_done(self, work: asyncio.Future[Any], lease: Lease) -> None:
        """End ``lease`` only when the abandoned ``work`` ends (at most ``request_timeout_s`` more)."""

        async def wait() -> None:
            try:
                async with asyncio.timeout(self.config.request_timeout_s):
                    await work
            except (TimeoutError, httpx.HTTPError):
                work.cancel()
            finally:
                self.pool.release(lease)

        task = asyncio.create_task(wait())
        self._held.add(task)  # a reference, so the task is not garbage-collected mid-wait
        task.add_done_callback(self._held.discard)

    def _budget(self, stream: bool) -> float:
        return self.config.first_chunk_timeout_s if stream else self.config.request_timeout_s


def engine_error(replica: Replica, status: int, body: bytes, record: AuditRecord) -> GatewayError:
    """An engine's error answer as the gateway's own: a 400 for what the engine refused as invalid, a 502
    for anything else; the message without file paths, the audit line with the status only."""
    try:
        error = json.loads(body).get("error") or {}
        message = str(error.get("message", "") if isinstance(error, dict) else error)
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        message = ""
    record.error = f"replica {replica.name} answered {status}"
    first_line = _PATH.sub("<path>", message.strip().splitlines()[0] if message.strip() else "")[:300]
    if 400 <= status < 500 or "validation error" in first_line:
        code = "engine_rejected_request"
        detail = f": {first_line}" if first_line else ""
        return GatewayError(400, f"The engine refused this request{detail}", code, "engine_rejected")
    return GatewayError(
        502,
        f"Engine replica {replica.name} failed on this request (HTTP {status}); details are in the engine's log.",
        "engine_failed",
        "engine_error",
    )
