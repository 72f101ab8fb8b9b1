"""Per-key budgets of requests and tokens per minute, kept by the ``limits`` library.

Why ``limits`` and not a hand-made token bucket: its moving-window strategy is tested, takes a
``cost`` (tokens) per hit, says when the window frees up (``Retry-After``), and swaps its in-memory
storage for Redis with one line (``RedisStorage``) when several gateway replicas must share budgets.
With in-memory storage each gateway pod keeps its own counts, so with N pods a key can use up to
N times its budget: say so to users, or use shared storage.

Tokens are charged when the request is admitted, before any engine works on it: the prompt's estimated
tokens (about 4 characters per token for English text) plus ``max_tokens``, the most the answer can
use. Charging the worst case up front is what lets the gateway refuse a request before it costs GPU
time; the audit log records the tokens really used.
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from servelab.gateway.config import KeyConfig
from servelab.gateway.errors import GatewayError

CHARS_PER_TOKEN = 4


def prompt_text(body: dict[str, Any]) -> str:
    """The text a completions or chat request sends (what the audit log keeps when prompts are on)."""
    if "messages" in body:
        parts = []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(str(content or ""))
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    return "\n".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)


def max_output_tokens(body: dict[str, Any]) -> int:
    """``max_tokens`` (or OpenAI's newer ``max_completion_tokens``) times ``n`` answers."""
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    n = body.get("n", 1)
    return int(value) * (int(n) if isinstance(n, int) and n > 0 else 1) if isinstance(value, int) else 0


def estimate_tokens(body: dict[str, Any]) -> int:
    """Worst-case tokens of a request: estimated prompt tokens plus the most the answer may use."""
    return math.ceil(len(prompt_text(body)) / CHARS_PER_TOKEN) + max_output_tokens(body)


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
