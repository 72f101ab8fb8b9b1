"""The HTTP server's own limits: how many connections, and how long a client may take to send a request.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) but not a connection that never
finishes its request head: 600 half-open connections stayed open for good, and once the process ran
out of file descriptors every client was refused, the probes included, with nothing logged. So:

- ``header_timeout_s``: a connection that has not sent a complete request head this long after it
  opened (or after its last answer) is closed. The body has its own deadline (``body_timeout_s``,
  in :func:`servelab.gateway.app.read_body`).
- ``max_connections``: connections beyond it are closed as they are accepted, before they hold
  anything, and it is lowered to fit the process's file-descriptor limit (``ulimit -n``) with room
  for the upstream connections and the audit log. Requests beyond it get uvicorn's 503.
- Every refusal is counted (``gateway_refused_connections_total{reason}``) and logged, the first
  and then every hundredth, so an attack shows in the log without flooding it.

In Kubernetes, the Service adds nothing here (it forwards TCP connections). An ingress or cloud load
balancer in front usually adds its own header and idle timeouts and connection caps (e.g. ingress-nginx's
``client-header-timeout``, ``client-body-timeout``, ``keep-alive``, 60 s by default) and buffers slow
bodies; the limits here still apply to what reaches the pod, and to clients inside the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from collections.abc import Callable

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("servelab.gateway")
# File descriptors kept free for what is not a client: upstream connections, the audit log, the loop.
RESERVED_FDS = 96


def fitting_connections(wanted: int) -> int:
    """``wanted``, lowered (with a warning) so that that many clients cannot exhaust the fd limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted + RESERVED_FDS <= soft:
        return wanted
    fitted = max(1, soft - RESERVED_FDS)
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
