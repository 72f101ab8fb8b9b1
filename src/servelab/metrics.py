"""Read an engine's Prometheus ``/metrics`` page into Python, with prometheus-client's own parser.

Notebooks use it to show the real metric names an engine exports (vLLM's ``vllm:`` families), and
tests use it to check that every metric an alert rule or the HPA names really exists.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from servelab.errors import ServelabError


def scrape(url: str, timeout: float = 10.0) -> str:
    """The raw exposition text of ``url`` (e.g. ``engine.url + "/metrics"``)."""
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as err:
        raise ServelabError(f"could not scrape {url}: {err}", "is the server running? (engine.running)") from None
    return response.text


def families(text: str, prefix: str = "") -> dict[str, str]:
    """``{family name: type}`` for every metric family whose name starts with ``prefix``."""
    return {f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith(prefix)}


def samples(text: str, prefix: str = "") -> list[tuple[str, dict[str, str], float]]:
    """Every sample as ``(sample name, labels, value)``; histogram buckets keep their ``_bucket`` name."""
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text)
            if f.name.startswith(prefix) for s in f.samples]

