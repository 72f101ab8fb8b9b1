"""Errors the gateway answers with, in OpenAI's error shape so that SDKs show the message.

``{"error": {"message": ..., "type": ..., "code": ...}}`` is what the OpenAI API (and vLLM) send;
the ``openai`` SDK raises e.g. ``RateLimitError`` for a 429 and prints ``message``. Each error also
carries the ``outcome`` the audit log and the metrics record, one word per way a request can end.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

# OpenAI's error "type" for each status the gateway itself produces.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class GatewayError(Exception):
    """A request the gateway answers itself, without (or instead of) an engine's answer."""

    def __init__(
        self, status: int, message: str, code: str, outcome: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.outcome = outcome
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "error"), "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The client closed its connection while the gateway was still waiting on its behalf."""
