"""API-key authentication: ``Authorization: Bearer <key>`` looked up by its SHA-256 hash.

The raw key is hashed at once and never stored, logged or put in a metric label; the audit log gets
the key's configured id, or for an unknown key a short fingerprint (the first 12 hex digits of its
hash), enough to see that one wrong key is being tried again and again without revealing it.
"""

from __future__ import annotations

from collections.abc import Iterable

from servelab.gateway.config import KeyConfig, hash_key
from servelab.gateway.errors import GatewayError

FINGERPRINT_CHARS = 12


def fingerprint(authorization: str | None) -> str | None:
    """A short, non-reversible tag of the key in a header (for the audit line of a refused key)."""
    _, _, raw = (authorization or "").partition(" ")
    return hash_key(raw.strip())[:FINGERPRINT_CHARS] if raw.strip() else None


class KeyRing:
    """The configured keys, by hash."""

    def __init__(self, keys: Iterable[KeyConfig]) -> None:
        self._by_hash = {k.sha256: k for k in keys}

    def authenticate(self, authorization: str | None) -> KeyConfig:
        """The key a request's ``Authorization`` header carries; a 401 for a missing or unknown key."""
        if not authorization:
            raise GatewayError(
                401,
                "Missing API key: send the header 'Authorization: Bearer <your key>'.",
                "missing_api_key",
                "unauthorized",
            )
        scheme, _, raw = authorization.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise GatewayError(
                401, "Malformed Authorization header: expected 'Bearer <your key>'.", "invalid_api_key", "unauthorized"
            )
        key = self._by_hash.get(hash_key(raw.strip()))
        if key is None:
            raise GatewayError(
                401, "Unknown API key: check the key you were given, or ask for one.", "invalid_api_key", "unauthorized"
            )
        return key
