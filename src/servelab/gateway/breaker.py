"""Quarantine for requests of death: a request during which a replica died is not sent to another.

A request can crash the engine that parses it (llama-cpp-python's server segfaults on some
``grammar`` values). Retried on the next replica, it crashes that one too, and then the client's own
retry finds no replica at all. So the forwarder never retries a request once it reached a replica
that then died, and this breaker remembers the request's fingerprint (a hash of the exact body sent
and its path): the same request sent again within ``poison_quarantine_s`` is refused without
reaching any replica.

The price: a replica killed for another reason (OOM, a node drain) quarantines the request it was
serving, and clients sending byte-identical requests get a 400 until the quarantine ends. A changed
request (another prompt, seed or temperature) is never affected.
"""

from __future__ import annotations

import hashlib
import time

from servelab.gateway.errors import GatewayError


def fingerprint(path: str, content: bytes) -> str:
    """What identifies a request for the quarantine: its path and the exact bytes the engine got."""
    return hashlib.sha256(path.encode() + b"\n" + content).hexdigest()


class PoisonBreaker:
    """Fingerprints of requests that a replica died on, each until its quarantine ends."""

    def __init__(self, quarantine_s: float) -> None:
        self.quarantine_s = quarantine_s
        self._until: dict[str, float] = {}

    def trip(self, print_: str) -> None:
        """Remember a request a replica died on (a no-op when the quarantine is off)."""
        if self.quarantine_s > 0:
            now = time.monotonic()
            self._until = {k: t for k, t in self._until.items() if t > now}  # forget expired ones
            self._until[print_] = now + self.quarantine_s

    def check(self, print_: str) -> None:
        """Raise a 400 for a quarantined request, saying that sending it unchanged will not help."""
        left = self._until.get(print_, 0.0) - time.monotonic()
        if left > 0:
            raise GatewayError(
                400,
                (
                    "An engine replica died while handling an identical request, so this gateway will not "
                    f"send it to another replica for {left:.0f} s more. Retrying it unchanged will not help: "
                    "change the request (check fields such as stop, logit_bias or the prompt), or report it."
                ),
                "request_quarantined",
                "quarantined",
            )
