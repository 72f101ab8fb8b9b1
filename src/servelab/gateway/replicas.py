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
- Fair queueing: requests waiting for a replica queue per key, and a freed replica goes to the next
  key in round robin, so a key with many requests waiting delays the others by at most one of its
  requests each round, not by all of them.
- Load shedding: a request that would wait longer than its time left gets a 503 with ``Retry-After``
  at once, instead of a 504 when its timeout runs out. The wait is estimated in tokens: until the
  first running request should end, plus the ``max_tokens`` of the requests ahead of it in the round
  robin, at the seconds per token that requests have held a replica lately. Counting requests
  instead would let a few long answers make a burst of one-token requests look hopeless. The rate is
  the lowest of the last ``RATE_WINDOW`` requests, because the estimate must err towards serving: a
  one-token request with a long prompt holds a replica for its prefill and would make every token
  look slow, and shedding a request that would have made it is worse than a late 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from servelab.gateway.config import GatewayConfig, ReplicaConfig
from servelab.gateway.errors import GatewayError
from servelab.gateway.metrics import GatewayMetrics

log = logging.getLogger("servelab.gateway")
RATE_WINDOW = 16  # recent requests whose seconds per token the wait estimate takes the lowest of


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


@dataclass(eq=False)
class Lease:
    """One request's hold on a replica, from :meth:`ReplicaPool.acquire` to :meth:`ReplicaPool.release`."""

    replica: Replica
    tokens: int  # the most it may generate (max_tokens), for the wait estimate
    started: float  # loop.time()


@dataclass(eq=False)
class _Waiter:
    """One request waiting for a replica."""

    key_id: str
    exclude: frozenset[Replica]
    tokens: int
    future: asyncio.Future[Lease]


class ReplicaPool:
    """Picks a healthy replica for each request and keeps the health picture current."""

    def __init__(self, config: GatewayConfig, client: httpx.AsyncClient, metrics: GatewayMetrics) -> None:
        self.replicas = [Replica(r) for r in config.replicas]
        self._config = config
        self._client = client
        self._metrics = metrics
        self._waiting: dict[str, deque[_Waiter]] = {}  # by key id, in round-robin order
        self._leases: set[Lease] = set()
        self.recent_s_per_token: deque[float] = deque(maxlen=RATE_WINDOW)  # hold time / max_tokens
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
            self._dispatch()

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

    async def acquire(
        self, key_id: str, exclude: Iterable[Replica] = (), deadline: float | None = None, tokens: int = 1
    ) -> Lease:
        """A replica for one request of ``key_id`` that may generate ``tokens`` (counted as outstanding until
        :meth:`release`); waits in the key's queue while every healthy replica is at its cap. Raises a
        503 at once when no replica is healthy, or when the wait would outlast ``deadline``
        (``loop.time()``). The caller bounds the wait (request timeout, client disconnect) by cancelling it."""
        excluded = frozenset(exclude)
        replica = self._pick(excluded)
        if replica is not None and not self._waiting:  # a free replica and nobody ahead
            return self._take(replica, tokens)
        self._shed(key_id, deadline, excluded)
        waiter = _Waiter(key_id, excluded, max(1, tokens), asyncio.get_running_loop().create_future())
        self._waiting.setdefault(key_id, deque()).append(waiter)
        self._dispatch()
        try:
            return await waiter.future
        except BaseException:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # handed a replica just as the wait was given up
            queue = self._waiting.get(key_id)
            if queue is not None and waiter in queue:
                queue.remove(waiter)
                if not queue:
                    del self._waiting[key_id]
            raise

    def release(self, lease: Lease) -> None:
        """End a lease: the replica takes the next request, and its hold time feeds the wait estimate."""
        if lease not in self._leases:
            return  # released already
        self._leases.discard(lease)
        replica = lease.replica
        replica.outstanding -= 1
        self._metrics.outstanding.labels(replica.name).set(replica.outstanding)
        self.recent_s_per_token.append((asyncio.get_running_loop().time() - lease.started) / lease.tokens)
        self._dispatch()

    def _take(self, replica: Replica, tokens: int) -> Lease:
        replica.outstanding += 1
        self._metrics.outstanding.labels(replica.name).set(replica.outstanding)
        lease = Lease(replica, max(1, tokens), asyncio.get_running_loop().time())
        self._leases.add(lease)
        return lease

    def _dispatch(self) -> None:
        """Hand free replicas to the heads of the key queues, one key after the other."""
        progress = True
        while progress and self._waiting:
            progress = False
            for key_id in list(self._waiting):
                queue = self._waiting[key_id]
                while queue and queue[0].future.done():  # given up (timeout, client gone)
                    queue.popleft()
                served = False
                if queue:
                    waiter = queue[0]
                    try:
                        replica = self._pick(waiter.exclude)
                    except GatewayError as err:  # nothing healthy left for it
                        queue.popleft()
                        waiter.future.set_exception(err)
                        progress = True
                    else:
                        if replica is not None:
                            queue.popleft()
                            waiter.future.set_result(self._take(replica, waiter.tokens))
                            progress = served = True
                if not queue:
                    del self._waiting[key_id]
                elif served:  # to the back of the round robin
                    self._waiting[key_id] = self._waiting.pop(key_id)

    def _shed(self, key_id: str, deadline: float | None, excluded: frozenset[Replica]) -> None:
        """Refuse now a request whose estimated wait is longer than its time left."""
        cap = self._config.max_outstanding_per_replica
        usable = [r for r in self.replicas if r.healthy and r not in excluded]
        if deadline is None or not self.recent_s_per_token or cap is None or not usable:
            return
        spt = min(self.recent_s_per_token)
        now = asyncio.get_running_loop().time()
        # When a slot should free up: the earliest expected end of a running request on a usable replica.
        ends = [lease.started + lease.tokens * spt for lease in self._leases if lease.replica in usable]
        first_free_s = max(0.0, min(ends, default=now) - now)
        mine = list(self._waiting.get(key_id, ()))
        ahead = sum(w.tokens for w in mine) + sum(
            w.tokens for k, q in self._waiting.items() if k != key_id for w in list(q)[: len(mine) + 1]
        )
        wait_s = first_free_s + ahead * spt / (cap * len(usable))
        left_s = deadline - now
        if wait_s > left_s:
            raise GatewayError(
                503,
                (
                    f"The replicas are busy: this request would wait about {wait_s:.0f} s for one, longer "
                    f"than its {max(left_s, 0):.0f} s left. Retry after the time in Retry-After."
                ),
                "overloaded",
                "shed",
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )

    @property
    def any_healthy(self) -> bool:
        return any(r.healthy for r in self.replicas)
