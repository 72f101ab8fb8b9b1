"""Reading parsed Kubernetes documents safely: a manifest under review may have any shape, so every
lookup answers ``None`` or an empty value instead of raising on a missing key or a wrong type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Doc = dict[str, Any]


def identity(doc: Doc) -> tuple[str, str]:
    name = doc.get("metadata", {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    return str(doc.get("kind", "?")), str(name or "?")


def namespace(doc: Doc) -> str:
    return str(get(doc, "metadata.namespace") or "default")


def get(doc: Any, dotted: str) -> Any:
    """``doc["a"]["b"]`` for ``"a.b"``, or None when any step is missing or not a mapping."""
    for key in dotted.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def mapping(value: Any) -> Doc:
    return value if isinstance(value, dict) else {}


def listing(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def json_path(parts: Iterable[str | int]) -> str:
    """``["spec", "containers", 0, "image"]`` -> ``"spec.containers[0].image"``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
