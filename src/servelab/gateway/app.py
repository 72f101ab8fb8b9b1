"""The gateway's two HTTP apps: the client API (the OpenAI routes it forwards, and the liveness probe)
and the admin API (the readiness probe and the Prometheus metrics), served on separate ports.

Order of the checks on a request, cheapest first, so a refused request costs the engines nothing:
failed authentications from its address (429) -> API key (401) -> body size and read time (413, 408)
-> JSON (400) -> the fields and lengths the endpoint allows (400; an unknown model 404) -> a
quarantined request of death (400) -> the key's requests at a time and per-minute budgets (429) ->
a healthy replica soon enough (503) -> the engine's answer within the timeout (504), the engine's
refusal (400) or its failure (502).

``/health`` is the liveness probe (the process and its event loop answer), on the client port so that
it fails when the port clients use does; ``/ready`` the readiness probe (the config is loaded and the
first round of replica health checks has run). Readiness does not require a healthy engine on purpose:
if every engine is down, ready gateways still answer 503 with a clear message and ``Retry-After``,
where unready ones would leave the Service without endpoints and clients with "connection refused".

``/ready`` and ``/metrics`` need no API key (a kubelet or Prometheus has none) and show every key's
traffic and every replica's state, so they live on the admin port (``admin_port``), which a cluster
exposes to its probes and Prometheus only; the client port answers 404 for them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import httpx
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servelab.gateway.audit import AuditLog, AuditRecord
from servelab.gateway.auth import KeyRing, fingerprint
from servelab.gateway.config import GatewayConfig, KeyConfig
from servelab.gateway.errors import ClientGone, GatewayError
from servelab.gateway.metrics import GatewayMetrics
from servelab.gateway.proxy import Forwarder
from servelab.gateway.ratelimit import AuthThrottle, ConcurrencyCap, KeyLimiter
from servelab.gateway.replicas import ReplicaPool
from servelab.gateway.validate import admit_body

API_PREFIX = "/v1"


class AuditMiddleware:
    """Gives every API request a record and an ``x-request-id``, and writes the record exactly once,
    after the response is finished or abandoned (see :mod:`servelab.gateway.audit`)."""

    def __init__(self, app: ASGIApp, audit: AuditLog, metrics: GatewayMetrics) -> None:
        self.app, self.audit, self.metrics = app, audit, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        record = AuditRecord(request_id=uuid.uuid4().hex, method=scope["method"], path=scope["path"])
        on_finish: list[Callable[[], None]] = []  # undone when the response is over (a stream's too)
        scope.setdefault("state", {}).update(audit=record, on_finish=on_finish)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", record.request_id.encode())],
                }
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as err:
            record.status, record.outcome, record.error = 500, "gateway_error", f"{type(err).__name__}: {err}"
            raise
        finally:
            self.metrics.in_flight.dec()
            for undo in on_finish:
                undo()
            if record.status is None:  # nothing was sent: the client left first (nginx's 499)
                record.status, record.outcome = 499, "client_disconnected"
            record.outcome = record.outcome or ("ok" if record.status < 400 else "error")
            record.latency_s = round(time.perf_counter() - record.started, 4)
            self.metrics.observe(record)
            if not self.audit.write(record):
                self.metrics.audit_failures.inc()


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed ``limit`` bytes, or with a
    408 when it has not all arrived within ``timeout_s`` (a client trickling a byte at a time would
    otherwise hold a connection and a task for as long as it likes)."""
    too_large = GatewayError(
        413,
        (f"Request body is larger than the gateway's limit of {limit} bytes: send a shorter prompt."),
        "request_too_large",
        "too_large",
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise GatewayError(
            408,
            f"The request body did not arrive within {timeout_s:g} s: send it all at once.",
            "body_timeout",
            "body_timeout",
        ) from None
    return bytes(body)


def _invalid_json(detail: str) -> GatewayError:
    return GatewayError(
        400,
        (
            f"Request body is not valid JSON ({detail}). Send a JSON object such as "
            '{"model": "...", "prompt": "Hello", "max_tokens": 16}.'
        ),
        "invalid_json",
        "bad_request",
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong.

    Python's parser refuses integers of over 4,300 digits (ValueError) and nesting deeper than its
    recursion limit (RecursionError); both are the client's mistake, not the gateway's. ``NaN`` and
    ``Infinity``, which Python reads but JSON does not have, are refused too."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise _invalid_json("it is not UTF-8") from None
    except RecursionError:
        raise _invalid_json("nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, or an integer too long to convert
        raise _invalid_json(str(err)[:200]) from None
    if not isinstance(body, dict):
        raise GatewayError(
            400, f"Request body must be a JSON object, not a JSON {type(body).__name__}.", "invalid_json", "bad_request"
        )
    return body


def require_text(body: dict[str, Any]) -> None:
    """A 400 for a lone surrogate escape (``"\\ud800"``): valid JSON, but no text an engine can encode."""
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise _invalid_json("a string holds a lone surrogate escape such as \\ud800, which is not text") from None
    except RecursionError:
        raise _invalid_json("nested too deeply") from None


class GatewayApps(NamedTuple):
    """The two ASGI apps of one gateway, sharing its replica pool and metrics."""

    client: FastAPI  # the OpenAI API and /health, on the client port; its lifespan runs the pool
    admin: FastAPI  # /ready and /metrics, on admin_port; no lifespan of its own


def create_apps(config: GatewayConfig) -> GatewayApps:
    """The gateway's client and admin apps (``python -m servelab.gateway`` serves each on its port)."""
    metrics = GatewayMetrics()
    audit = AuditLog(config.audit_path)
    keys = KeyRing(config.all_keys())
    limiter = KeyLimiter()
    concurrency = ConcurrencyCap()
    throttle = AuthThrottle(config.auth_failures_per_minute)
    # No connection cap towards the engines: the pool's max_outstanding_per_replica is the one queue.
    # Idle connections are dropped after 2 s, before the engines' own keep-alive timeout (uvicorn: 5 s)
    # can close one just as a request is sent on it. No read timeout here: the forwarder enforces one
    # deadline over the whole request (queue, answer, every chunk), which a per-read timeout cannot.
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=config.connect_timeout_s),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=2.0),
        trust_env=False,
    )
    pool = ReplicaPool(config, client, metrics)
    forwarder = Forwarder(config, pool, client, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.stop()
            await client.aclose()
            audit.close()

    app = FastAPI(title="servelab gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AuditMiddleware, audit=audit, metrics=metrics)
    app.state.metrics = metrics  # the server counts the connections it refuses (servelab.gateway.server)

    def admit_key(request: Request, record: AuditRecord) -> KeyConfig:
        source = request.client.host if request.client else "-"
        throttle.check(source)
        authorization = request.headers.get("authorization")
        try:
            key = keys.authenticate(authorization)
        except GatewayError:
            record.key_fingerprint = fingerprint(authorization)
            throttle.failed(source)
            raise
        record.key_id = key.id
        return key

    async def guarded(request: Request, handle: Callable[[AuditRecord], Awaitable[Response]]) -> Response:
        record: AuditRecord = request.state.audit
        try:
            return await handle(record)
        except GatewayError as err:
            # An error the forwarder already described keeps that description: the message may quote the engine.
            record.outcome, record.error = err.outcome, record.error or err.message
            return err.response()
        except (ClientGone, ClientDisconnect):  # the client left before its answer was ready
            record.outcome = "client_disconnected"
            return Response(status_code=499)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.post(API_PREFIX + "/completions")
    @app.post(API_PREFIX + "/chat/completions")
    async def generate(request: Request) -> Response:
        async def handle(record: AuditRecord) -> Response:
            key = admit_key(request, record)
            body = parse_json(await read_body(request, config.max_body_bytes, config.body_timeout_s))
            record.model, record.stream = body.get("model"), body.get("stream") is True
            require_text(body)
            admitted = admit_body(
                request.url.path, body, config.models, config.default_max_tokens, config.context_tokens
            )
            record.stream = admitted.stream
            if config.audit_prompts:
                record.prompt = admitted.prompt
            concurrency.enter(key)
            request.state.on_finish.append(lambda: concurrency.leave(key))
            limiter.admit(key, admitted.cost)
            record.tokens_charged = admitted.cost
            return await forwarder.forward(
                request, admitted.content(), admitted.stream, record, key.id, admitted.max_tokens
            )

        return await guarded(request, handle)

    @app.get(API_PREFIX + "/models")
    async def models(request: Request) -> Response:
        async def handle(record: AuditRecord) -> Response:
            key = admit_key(request, record)
            limiter.admit(key, 0)
            if config.models is not None:  # known here: no replica slot for a list the config holds
                listed = [{"id": m, "object": "model", "owned_by": "servelab"} for m in config.models]
                return JSONResponse({"object": "list", "data": listed})
            concurrency.enter(key)
            request.state.on_finish.append(lambda: concurrency.leave(key))
            return await forwarder.forward(request, b"", False, record, key.id)

        return await guarded(request, handle)

    @app.api_route(API_PREFIX + "/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown(request: Request) -> Response:
        async def handle(record: AuditRecord) -> Response:
            admit_key(request, record)
            raise GatewayError(
                404,
                (
                    f"{request.method} {request.url.path} is not served by this gateway: use "
                    "/v1/completions, /v1/chat/completions or /v1/models."
                ),
                "not_found",
                "not_found",
            )

        return await guarded(request, handle)

    admin = FastAPI(title="servelab gateway admin", docs_url=None, redoc_url=None, openapi_url=None)

    @admin.get("/ready")
    async def ready() -> JSONResponse:
        replicas = {r.name: "up" if r.healthy else "down" for r in pool.replicas}
        status = 200 if pool.checked_once.is_set() else 503
        return JSONResponse({"ready": status == 200, "replicas": replicas}, status_code=status)

    @admin.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return GatewayApps(app, admin)
