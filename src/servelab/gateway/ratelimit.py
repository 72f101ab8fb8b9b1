"""Per-key budgets: requests and tokens per minute (kept by the ``limits`` library), requests at a time,
and failed authentications per source address.

Why ``limits`` and not a hand-made token bucket: its moving-window strategy is tested, takes a
``cost`` (tokens) per hit, says when the window frees up (``Retry-After``), and swaps its in-memory
storage for Redis with one line (``RedisStorage``) when several gateway replicas must share budgets.
With in-memory storage each gateway pod keeps its own counts, so with N pods a key can use up to
N times its budget: say so to users, or use shared storage.

Tokens are charged when the request is admitted, before any engine works on it: the prompt's estimated
tokens plus the validated ``max_tokens`` (:mod:`servelab.gateway.validate`), the most the answer can
use and exactly what the engine is asked for. Charging the worst case up front is what lets the
gateway refuse a request before it costs GPU time; the audit log records the tokens really used.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from servelab.gateway.config import KeyConfig
from servelab.gateway.errors import GatewayError


class KeyLimiter:
    """Admits a request if its key has both a request and enough tokens left in the last minute."""

    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    @staticmethod
    def _items(key: KeyConfig) -> tuple[RateLimitItem, RateLimitItem]:
        return RateLimitItemPerMinute(key.requests_per_minute), RateLimitItemPerMinute(key.tokens_per_minute)

    def admit(self, key: KeyConfig, tokens: int) -> None:
        """Charge one request and ``tokens`` tokens to ``key``, or raise a 429 with ``Retry-After``.

        Both budgets are tested before either is charged, so a refused request costs nothing.
        """
        requests_item, tokens_item = self._items(key)
        if tokens > key.tokens_per_minute:
            raise GatewayError(
                400,
                (
                    f"This request may use up to {tokens} tokens (prompt + max_tokens), more than "
                    f"your whole budget of {key.tokens_per_minute} tokens per minute: lower "
                    "max_tokens or shorten the prompt."
                ),
                "request_over_token_budget",
                "too_many_tokens",
            )
        for item, cost, what in ((requests_item, 1, "requests"), (tokens_item, tokens, "tokens")):
            if not self._limiter.test(item, key.id, cost=cost):
                raise self._refusal(key, item, what, cost)
        self._limiter.hit(requests_item, key.id)
        self._limiter.hit(tokens_item, key.id, cost=tokens)

    def _refusal(self, key: KeyConfig, item: RateLimitItem, what: str, cost: int) -> GatewayError:
        stats = self._limiter.get_window_stats(item, key.id)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        budget = key.requests_per_minute if what == "requests" else key.tokens_per_minute
        needed = "" if what == "requests" else f" (this request needs {cost}, {stats.remaining} left)"
        return GatewayError(
            429,
            (
                f"Rate limit reached for key '{key.id}': {budget} {what} per minute{needed}. "
                f"Retry after {retry_after} s."
            ),
            f"rate_limit_{what}",
            "rate_limited",
            headers={"Retry-After": str(retry_after)},
        )


class ConcurrencyCap:
    """At most ``key.max_concurrent`` requests of one key in the gateway at a time (waiting or running).

    Why a cap besides the per-minute budgets: a key well within its request budget can still hold every
    replica with a few long answers, and the others wait behind it. Over the cap a request gets a 429
    at once (as OpenAI's and Anthropic's concurrency limits do), not a place in the queue.
    """

    def __init__(self) -> None:
        self._running: dict[str, int] = {}

    def enter(self, key: KeyConfig) -> None:
        """Count one more request of ``key`` (undone by :meth:`leave`), or raise a 429."""
        running = self._running.get(key.id, 0)
        if running >= key.max_concurrent:
            raise GatewayError(
                429,
                (
                    f"Key '{key.id}' already has {running} requests in progress, its limit: wait for one "
                    "to finish, then send the next."
                ),
                "concurrency_limit",
                "rate_limited",
                headers={"Retry-After": "1"},
            )
        self._running[key.id] = running + 1

    def leave(self, key: KeyConfig) -> None:
        self._running[key.id] -= 1

    def running(self, key_id: str) -> int:
        return self._running.get(key_id, 0)


class AuthThrottle:
    """Refuses a source address with a 429 after ``per_minute`` failed authentications in a minute.

    Without it, guessing keys is free and every guess writes an audit line: 20,000 wrong keys wrote
    8.4 MB. Behind a load balancer the source is its address unless the proxy's client-address header
    is trusted (uvicorn's ``--forwarded-allow-ips``); then it is the client's.
    """

    def __init__(self, per_minute: int) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._item = RateLimitItemPerMinute(per_minute)

    def check(self, source: str) -> None:
        """Raise a 429 when ``source`` has used up its failures for this minute."""
        if not self._limiter.test(self._item, source):
            stats = self._limiter.get_window_stats(self._item, source)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
            raise GatewayError(
                429,
                f"Too many failed authentications from this address; retry after {retry_after} s with a valid key.",
                "auth_throttled",
                "auth_throttled",
                headers={"Retry-After": str(retry_after)},
            )

    def failed(self, source: str) -> None:
        self._limiter.hit(self._item, source)
