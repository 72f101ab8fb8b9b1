"""The pool of engine replicas: health checks, load balancing, failover.

- Active health checks: a background task asks every replica's health path every
  ``health_interval_s`` (with ``health_timeout_s``); ``unhealthy_after`` failures in a row take it out
  of rotation, one success brings it back.
- Passive health checks: a replica that refuses a connection is taken out at once, without waiting for
  the next round, and the request goes to another replica (it had sent nothing yet).
- Least outstanding requests, ties broken round robin: an engine that answers one request at a time
  (llama.cpp) or a replica slowed by long prompts gets fewer new requests than plain round robin would
  send it.
- ``max_outstanding_per_replica``: with a cap, requests beyond it wait in the gateway instead of in
  the engine's queue. A queue in the gateway survives a replica's death (those requests go to the
  other replica); a queue inside the engine dies with it. For vLLM, which batches, set the cap at
  or above its useful batch size; for llama.cpp's one-at-a-time server, 1 or 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from servelab.gateway.config import GatewayConfig, ReplicaConfig
from servelab.gateway.errors import GatewayError
from servelab.gateway.metrics import GatewayMetrics

log = logging.getLogger("servelab.gateway")


@dataclass(eq=False)
class Replica:
    """One upstream engine and what the gateway knows about it now."""

    config: ReplicaConfig
    healthy: bool = False
    outstanding: int = 0
    failures: int = 0
    changed_at: float = 0.0  # time.time() of the last change of ``healthy``

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def url(self) -> str:
        return self.config.url


class ReplicaPool:
    """Picks a healthy replica for each request and keeps the health picture current."""

    def __init__(self, config: GatewayConfig, client: httpx.AsyncClient, metrics: GatewayMetrics) -> None:
        self.replicas = [Replica(r) for r in config.replicas]
        self._config = config
        self._client = client
        self._metrics = metrics
        self._changed = asyncio.Condition()
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        self.checked_once = asyncio.Event()
        for replica in self.replicas:
            metrics.replica_up.labels(replica.name).set(0)
            metrics.outstanding.labels(replica.name).set(0)

    async def start(self) -> None:
        """Run one round of health checks now, then keep checking in the background."""
        await self.check_all()
        self.checked_once.set()
        self._task = asyncio.create_task(self._loop(), name="replica-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.health_interval_s)
            await self.check_all()

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(r) for r in self.replicas))

    async def _check(self, replica: Replica) -> None:
        try:
            response = await self._client.get(
                replica.url + replica.config.health_path, timeout=self._config.health_timeout_s
            )
            ok, reason = response.status_code == 200, f"health check answered {response.status_code}"
        except httpx.HTTPError as err:
            ok, reason = False, f"health check failed: {type(err).__name__}"
        if ok:
            replica.failures = 0
            await self._set(replica, True, "health check passed")
        else:
            replica.failures += 1
            if replica.failures >= self._config.unhealthy_after:
                await self._set(replica, False, reason)

    async def mark_down(self, replica: Replica, reason: str) -> None:
        """Passive check: take a replica out now (it refused a connection)."""
        replica.failures = max(replica.failures, self._config.unhealthy_after)
        await self._set(replica, False, reason)

    async def _set(self, replica: Replica, healthy: bool, reason: str) -> None:
        if replica.healthy != healthy:
            replica.healthy, replica.changed_at = healthy, time.time()
            self._metrics.replica_up.labels(replica.name).set(int(healthy))
            log.warning("replica %s is now %s (%s)", replica.name, "UP" if healthy else "DOWN", reason)
            async with self._changed:
                self._changed.notify_all()

    def _pick(self, exclude: Iterable[Replica]) -> Replica | None:
        """The healthy replica with the fewest outstanding requests (round robin among equals), or None
        when every healthy one is at its cap. Raises a 503 when no replica is healthy."""
        excluded = set(exclude)
        healthy = [r for r in self.replicas if r.healthy and r not in excluded]
        if not healthy:
            down = ", ".join(r.name for r in self.replicas if not r.healthy) or "none"
            raise GatewayError(
                503,
                (f"No healthy engine replica to send this request to (down: {down}). Retry shortly."),
                "no_healthy_replica",
                "no_replica",
                headers={"Retry-After": str(max(1, round(self._config.health_interval_s)))},
            )
        cap = self._config.max_outstanding_per_replica
        free = [r for r in healthy if cap is None or r.outstanding < cap]
        if not free:
            return None
        n = len(self.replicas)
        chosen = min(free, key=lambda r: (r.outstanding, (self.replicas.index(r) - self._next) % n))
        self._next = (self.replicas.index(chosen) + 1) % n
        return chosen

    async def acquire(self, exclude: Iterable[Replica] = ()) -> Replica:
        """A replica for one request (counted as outstanding until :meth:`release`); waits while every
        healthy replica is at its cap. The caller bounds the wait (request timeout, client disconnect)."""
        exclude = list(exclude)
        async with self._changed:
            while (replica := self._pick(exclude)) is None:
                await self._changed.wait()
            replica.outstanding += 1
        self._metrics.outstanding.labels(replica.name).set(replica.outstanding)
        return replica

    async def release(self, replica: Replica) -> None:
        # Count first, so the books stay right even if this task is cancelled while waiting for the lock.
        replica.outstanding -= 1
        self._metrics.outstanding.labels(replica.name).set(replica.outstanding)
        async with self._changed:
            self._changed.notify_all()

    @property
    def any_healthy(self) -> bool:
        return any(r.healthy for r in self.replicas)
