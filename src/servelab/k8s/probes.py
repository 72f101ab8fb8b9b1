"""What a kubelet's probes would see: which port a probe calls, which port the server listens on, and the
status a path answers. Notebook 02's exercise and lab 02 grade probes by asking a real server these.

Why here and not in each checker: a probe that names its port by name, a ``--port=N`` flag, and the
kubelet's defaults for an unset field are Kubernetes' rules, the same for every check that reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from servelab.k8s import docs

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
PROBE_DEFAULTS = {"periodSeconds": 10, "failureThreshold": 3, "initialDelaySeconds": 0}  # Kubernetes' defaults
VLLM_DEFAULT_PORT = 8000  # vllm serve's --port default


def listen_port(container: Mapping[str, Any], default: int = VLLM_DEFAULT_PORT) -> int | None:
    """The port the server listens on: ``--port N`` or ``--port=N`` in the container's command or args,
    else ``default``; None when the flag's value is not a number."""
    words = [str(w) for w in docs.listing(container.get("command")) + docs.listing(container.get("args"))]
    for i, word in enumerate(words):
        if word == "--port" and i + 1 < len(words):
            return int(words[i + 1]) if words[i + 1].isdigit() else None
        if word.startswith("--port="):
            value = word.split("=", 1)[1]
            return int(value) if value.isdigit() else None
    return default


def probe_port(probe: Mapping[str, Any], container: Mapping[str, Any]) -> int | None:
    """The container port an httpGet probe calls: a number, or the name of one of the container's ports."""
    port = docs.get(probe, "httpGet.port")
    if isinstance(port, int):
        return port
    for entry in docs.listing(container.get("ports")):
        if isinstance(entry, dict) and entry.get("name") == port and isinstance(entry.get("containerPort"), int):
            return int(entry["containerPort"])
    return int(port) if isinstance(port, str) and port.isdigit() else None


def http_status(url: str) -> str:
    """The status code ``url`` answers, as a probe would get it, or why there was no answer."""
    try:
        return str(httpx.get(url, timeout=5).status_code)
    except httpx.HTTPError as err:
        return f"no answer ({type(err).__name__})"
