"""The audit log: one JSON line per request that reached the API, written once, appended only.

What a line holds: time, request id, key id (never the raw key; an unknown key only as a short
fingerprint), method and path, model, stream or not, HTTP status, ``outcome`` (one word: ok,
client_disconnected, timeout, rate_limited, ...), tokens in and out, latency, the replica and how
many replicas were tried, the tokens the rate limiter charged, an error message if any, and the prompt
only when ``audit_prompts`` is on (prompts may hold personal data; logging them is a decision, not a
default).

Why "exactly once" holds: the gateway's ASGI middleware creates the record when a request arrives
and writes it in a ``finally`` after the response has been sent or abandoned, whatever happened in
between. Each line goes out in a single ``write`` on a file opened with ``O_APPEND``, so lines never
interleave and nothing earlier in the file is ever rewritten. With ``path="-"`` lines go to stdout,
which in Kubernetes is the pod's log, collected by the cluster's log pipeline.

Why every text field is cleaned and cut: the line must be writable whatever a client sent. A lone
surrogate (valid JSON, ``"\\ud800"``) cannot be encoded as UTF-8 and once made the writer raise after
the answer was sent, leaving no line; it becomes U+FFFD here. A 250 KB ``model`` string would make a
250 KB line, for a refused request too; each field keeps at most ``FIELD_CHARS`` characters (the
prompt ``PROMPT_CHARS``) and says how much it dropped. A line that still cannot be written is logged
as an error and counted (``gateway_audit_write_failures_total``): a silent gap is the one thing an
audit log must not have.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("servelab.gateway")
FIELD_CHARS = 300
PROMPT_CHARS = 4000
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean(value: Any, limit: int = FIELD_CHARS) -> Any:
    """``value`` safe for a bounded UTF-8 line: strings without lone surrogates and at most ``limit``
    characters; anything else that is not a plain JSON scalar becomes its (cleaned) ``repr``."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [clean(v, limit) for v in value[:8]]
    text = _SURROGATE.sub("\ufffd", value if isinstance(value, str) else repr(value))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


@dataclass
class AuditRecord:
    """What the gateway learned about one request; filled in as the request goes."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter, repr=False)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    key_id: str | None = None
    key_fingerprint: str | None = None
    model: str | None = None
    stream: bool | None = None
    status: int | None = None
    outcome: str | None = None
    tokens_charged: int | None = None  # what the rate limiter charged at admission (prompt estimate + max_tokens)
    tokens_in: int | None = None  # as the engine reported (usage.prompt_tokens); streams may not report it
    tokens_out: int | None = None
    latency_s: float | None = None
    replica: str | None = None  # the replica that answered, or the last one tried
    replicas_tried: list[str] = field(default_factory=list)
    attempts: int = 0
    error: str | None = None
    prompt: str | None = None

    def line(self) -> dict[str, Any]:
        """The JSON object written to the log (``started`` is a clock reading, not a time: left out)."""
        data = {k: clean(v, PROMPT_CHARS if k == "prompt" else FIELD_CHARS) for k, v in asdict(self).items()}
        data.pop("started")
        if data["prompt"] is None:
            data.pop("prompt")
        return data


class AuditLog:
    """Append-only JSONL writer (a file path, or ``"-"`` for stdout)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path == "-":
            self._fd = sys.stdout.fileno()
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def write(self, record: AuditRecord) -> bool:
        """Append the record's line; on failure log an error naming the request and return False."""
        try:
            data = (json.dumps(record.line(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            os.write(self._fd, data)
        except Exception:  # the caller counts it; the line's absence must not be silent
            log.exception("AUDIT LINE LOST for request %s (%s %s)", record.request_id, record.method, record.path)
            return False
        return True

    def close(self) -> None:
        if self.path != "-":
            os.close(self._fd)


def read_audit(path: Path | str) -> list[dict[str, Any]]:
    """Every line of an audit log, parsed (for notebooks and tests)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
