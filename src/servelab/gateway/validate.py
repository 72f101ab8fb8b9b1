"""What the gateway forwards: an allow-list of fields per endpoint, each validated, and one effective
``max_tokens``.

Why an allow-list instead of passing the body through: every field an engine parses is attack
surface. llama-cpp-python's server segfaults on an unparsable ``grammar``; a gateway that forwards
unknown fields lets one request kill every replica it is retried on. A field outside the list is
refused with a 400 that names it, so a client learns at once instead of getting a silently
different answer.

Why strict types: llama.cpp reads ``max_tokens`` of 0, null or a negative number as "until the
context is full", and the token budget can only charge a number it understands. ``"600"``, ``600.0``
and ``true`` are not integers here, ``"false"`` is not a boolean, and the body sent to the engine is
the validated one, re-serialised: what was charged is exactly what the engine is asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servelab.gateway.errors import GatewayError

CHARS_PER_TOKEN = 4  # English text: about 4 characters per token (an estimate, charged up front)
MAX_MODEL_CHARS = 256
MAX_STOP_SEQUENCES = 4
MAX_LOGIT_BIAS = 300

Text = Annotated[str, Field(max_length=1_000_000)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,7}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]


class _Common(BaseModel):
    """Fields both endpoints take. ``strict``: no coercion of "600" to 600 or "false" to False."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    max_tokens: int | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[TokenId, Bias] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    n: Literal[1] | None = None  # several answers would multiply the cost behind one max_tokens
    user: str | None = Field(None, max_length=256)
    ignore_eos: bool | None = None  # vLLM's way to force max_tokens (benchmarks); llama-cpp-python ignores it


class CompletionRequest(_Common):
    # One prompt per request: llama-cpp-python's server answers a list of several with a 500.
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: Text | list[TextPart]


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens


SCHEMAS: dict[str, type[_Common]] = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatRequest}


@dataclass(frozen=True)
class Admitted:
    """A validated request: the body to forward and what the budget and the audit log need."""

    body: dict[str, Any]  # exactly what the engine receives
    model: str
    stream: bool
    max_tokens: int
    prompt: str

    @property
    def cost(self) -> int:
        """Worst-case tokens: estimated prompt tokens plus the most the answer may use."""
        return math.ceil(len(self.prompt) / CHARS_PER_TOKEN) + self.max_tokens

    def content(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


def _bad(message: str, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, code, "bad_request")


def _describe(err: ValidationError) -> str:
    """The first few problems, one per field, without echoing the (possibly huge) input back."""
    problems = []
    for item in err.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        problems.append(
            f"'{where}': unknown field, not forwarded by this gateway"
            if item["type"] == "extra_forbidden"
            else f"'{where}': {item['msg']}"
        )
    more = f" (and {err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "; ".join(problems) + more


def prompt_text(request: _Common) -> str:
    """The text a request sends (what the token estimate counts and the audit log may keep)."""
    if isinstance(request, ChatRequest):
        return "\n".join(
            m.content if isinstance(m.content, str) else " ".join(p.text for p in m.content) for m in request.messages
        )
    assert isinstance(request, CompletionRequest)
    return "\n".join(request.prompt) if isinstance(request.prompt, list) else request.prompt


def admit_body(
    path: str, body: dict[str, Any], models: list[str] | None, default_max_tokens: int, context_tokens: int
) -> Admitted:
    """Validate ``body`` for ``path`` and settle its one effective ``max_tokens``, or raise a 400 (404 for a
    model this gateway does not serve) that says what to change."""
    try:
        request = SCHEMAS[path].model_validate(body)
    except ValidationError as err:
        raise _bad(f"Invalid request: {_describe(err)}. See the OpenAI API reference for {path}.") from None
    if models is not None and request.model not in models:
        raise GatewayError(
            404,
            f"The model {request.model[:64]!r} is not served here; use one of {models} (GET /v1/models lists them).",
            "model_not_found",
            "bad_request",
        )
    lengths = {"max_tokens": request.max_tokens}
    if isinstance(request, ChatRequest):
        lengths["max_completion_tokens"] = request.max_completion_tokens
    given = {k: v for k, v in lengths.items() if v is not None}
    if len(set(given.values())) > 1:
        raise _bad(f"max_tokens and max_completion_tokens disagree ({given}): send one of them.")
    max_tokens = next(iter(given.values()), default_max_tokens)
    prompt = prompt_text(request)
    prompt_tokens = math.ceil(len(prompt) / CHARS_PER_TOKEN)
    if not 1 <= max_tokens <= context_tokens - prompt_tokens:
        raise _bad(
            f"max_tokens must be a whole number from 1 to {max(1, context_tokens - prompt_tokens)} "
            f"(the model's context of {context_tokens} tokens minus about {prompt_tokens} for the prompt); "
            f"got {max_tokens}.",
            "invalid_max_tokens",
        )
    forwarded = request.model_dump(exclude_unset=True, exclude={"max_completion_tokens"})
    forwarded["max_tokens"] = max_tokens
    if isinstance(forwarded.get("prompt"), list):
        forwarded["prompt"] = forwarded["prompt"][0]
    return Admitted(forwarded, request.model, request.stream, max_tokens, prompt)
