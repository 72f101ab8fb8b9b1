"""The HTTP servers: the client port and the admin port, and their limits (how many connections, and
how long a client may take to send a request).

Two uvicorn servers run in one process and one event loop, sharing the replica pool and the metrics:
the client API on ``--port``, ``/ready`` and ``/metrics`` on the config's ``admin_port``
(:mod:`servelab.gateway.app` says why). Both ports are bound before either server starts, so a port
in use is one clear error, not a gateway half up. The admin server gets the same guards as the
client one, with a cap of its own (``ADMIN_MAX_CONNECTIONS``): a flood of client connections cannot
lock out the probes and the scrape, and a flood on the admin port cannot lock out clients.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) but not a connection that never
finishes its request head: 600 half-open connections stayed open for good, and once the process ran
out of file descriptors every client was refused, the probes included, with nothing logged. So:

- ``header_timeout_s``: a connection that has not sent a complete request head this long after it
  opened (or after its last answer) is closed. The body has its own deadline (``body_timeout_s``,
  in :func:`servelab.gateway.app.read_body`).
- ``max_connections``: connections beyond it are closed as they are accepted, before they hold
  anything, and it is lowered to fit the process's file-descriptor limit (``ulimit -n``) with room
  for the upstream connections and the audit log. Requests beyond it get uvicorn's 503.
- Every refusal is counted (``gateway_refused_connections_total{listener,reason}``, listener
  ``client`` or ``admin``) and logged, the first and then every hundredth, so an attack shows in the
  log without flooding it.

In Kubernetes, the Service adds nothing here (it forwards TCP connections). An ingress or cloud load
balancer in front usually adds its own header and idle timeouts and connection caps (e.g. ingress-nginx's
``client-header-timeout``, ``client-body-timeout``, ``keep-alive``, 60 s by default) and buffers slow
bodies; the limits here still apply to what reaches the pod, and to clients inside the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Literal

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from servelab.errors import ServelabError
from servelab.gateway.app import GatewayApps
from servelab.gateway.config import GatewayConfig

log = logging.getLogger("servelab.gateway")
# File descriptors kept free for what is not a client: upstream connections, the audit log, the loop.
RESERVED_FDS = 96
# Connections the admin port holds at a time: a kubelet's probes and a few Prometheus scrapers need a handful.
ADMIN_MAX_CONNECTIONS = 16


def fitting_connections(wanted: int) -> int:
    """``wanted``, lowered (with a warning) so that that many clients, plus a full admin port, cannot
    exhaust the fd limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserved = RESERVED_FDS + ADMIN_MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY or wanted + reserved <= soft:
        return wanted
    fitted = max(1, soft - reserved)
    log.warning(
        "max_connections %d does not fit the file-descriptor limit %d (ulimit -n): using %d", wanted, soft, fitted
    )
    return fitted


def guarded_protocol(
    header_timeout_s: float, max_connections: int, on_refused: Callable[[str], None]
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a request-head timeout and a connection cap enforced at accept."""
    refused: Counter[str] = Counter()

    def refuse(reason: str, client: object) -> None:
        refused[reason] += 1
        on_refused(reason)
        if refused[reason] % 100 == 1:
            log.warning("closed a connection from %s: %s (%d so far)", client, reason, refused[reason])

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                refuse("too_many_connections", self.client)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            armed_for = self.cycle
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout, armed_for)

        def _head_timeout(self, armed_for: object) -> None:
            # Still the cycle of when the timer was armed, and it is over: no new request head came.
            idle = self.cycle is armed_for and (self.cycle is None or self.cycle.response_complete)
            if idle and not self.transport.is_closing():
                refuse("header_timeout", self.client)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def listen(host: str, port: int, what: str) -> socket.socket:
    """A listening socket on ``host:port``, or a ServelabError naming the port ``what`` is for."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as err:
        raise ServelabError(
            f"the gateway cannot listen on {host}:{port} ({what} port): {os.strerror(err.errno) if err.errno else err}",
            "stop what uses that port, or pick another (--port for clients, admin_port in the config)",
        ) from None


class _AdminServer(uvicorn.Server):
    """The admin port's server. It leaves the signals to the client server and ends when that one has:
    probes and scrapes keep working while open requests drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(apps: GatewayApps, config: GatewayConfig, host: str, port: int, log_level: str, grace_s: int) -> None:
    """Serve the client app on ``port`` and the admin app on ``config.admin_port`` until SIGTERM or Ctrl-C.

    ``grace_s``: how long open requests get to finish after SIGTERM."""
    if port == config.admin_port:
        raise ServelabError(
            f"the client port and admin_port are both {port}",
            "give admin_port in the config a port of its own: /metrics must not be on the client port",
        )
    refused = apps.client.state.metrics.refused_connections

    def guarded(
        app: FastAPI, listener: str, listen_port: int, cap: int, lifespan: Literal["on", "off"]
    ) -> uvicorn.Config:
        def on_refused(reason: str) -> None:
            refused.labels(listener, reason).inc()

        return uvicorn.Config(
            app,
            host=host,
            port=listen_port,
            lifespan=lifespan,
            log_level=log_level,
            access_log=False,
            http=guarded_protocol(config.header_timeout_s, cap, on_refused),
            limit_concurrency=cap,
            timeout_keep_alive=config.keep_alive_s,
            timeout_graceful_shutdown=grace_s,
        )

    # The client app's lifespan starts the replica pool both apps read; the admin app has none.
    client = uvicorn.Server(guarded(apps.client, "client", port, fitting_connections(config.max_connections), "on"))
    admin = _AdminServer(guarded(apps.admin, "admin", config.admin_port, ADMIN_MAX_CONNECTIONS, "off"))
    client_socket = listen(host, port, "client")
    admin_socket = listen(host, config.admin_port, "admin")

    async def run(server: uvicorn.Server, sock: socket.socket, then_stop: uvicorn.Server) -> None:
        try:
            await server.serve([sock])
        finally:  # either server ending (a signal, a failed start-up, a crash) ends the other
            then_stop.should_exit = True

    async def both() -> None:
        await asyncio.gather(run(client, client_socket, admin), run(admin, admin_socket, client))

    with asyncio.Runner(loop_factory=client.config.get_loop_factory()) as runner:
        runner.run(both())
