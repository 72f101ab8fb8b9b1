"""The one parser of OpenAI-style server-sent event streams, used by the load generator, the gateway
and the drills.

An OpenAI-compatible engine streams ``data: {json}`` lines separated by blank lines and ends with
``data: [DONE]``; an error after the stream has started arrives as ``data: {"error": ...}``. Lines
that are not ``data:`` (blank separators, ``: comments``, ``event:`` lines) carry nothing here.
:func:`parse_line` reads one line, :class:`Decoder` splits a raw byte stream (a proxy sees chunks
that cut lines anywhere), and :func:`chunk_text` says which text a chunk carries, so every caller
counts the same chunks as tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """One ``data:`` line: the end marker, a parsed JSON payload, or a payload that is not JSON."""

    done: bool = False
    data: dict[str, Any] | None = None
    invalid: str | None = None  # the raw payload when it does not parse as a JSON object

    @property
    def error(self) -> Any:
        """The ``error`` member of an error event, else ``None``."""
        return self.data.get("error") if self.data is not None else None


def parse_line(line: str | bytes) -> Event | None:
    """The event a line carries, or ``None`` for lines that carry none."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text.startswith("data:"):
        return None
    payload = text[5:].strip()
    if payload == "[DONE]":
        return Event(done=True)
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError:
        return Event(invalid=payload)
    return Event(data=obj) if isinstance(obj, dict) else Event(invalid=payload)


class Decoder:
    """Turns arbitrary byte chunks of a stream into events, keeping a partial last line for the next chunk."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [event for line in lines if (event := parse_line(line)) is not None]


def chunk_text(data: dict[str, Any]) -> tuple[str, str | None]:
    """The text one chunk carries (completions' ``text`` or chat's ``delta.content``; role-only chunks
    carry ``""``) and its finish reason, if any."""
    text, finish = "", None
    for choice in data.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        part = choice.get("text") or (delta.get("content") if isinstance(delta, dict) else None)
        text += part if isinstance(part, str) else ""
        finish = choice.get("finish_reason") or finish
    return text, finish


def data_line(body: dict[str, Any]) -> bytes:
    """One event, encoded: ``data: {json}`` and the blank line that ends it."""
    return b"data: " + json.dumps(body).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
