"""OpenAI's error body for every failure: ``{"error": {"message", "type", "param", "code"}}``.

Anything the client or the model did is a 4xx with a message naming the problem; only a fault
of the server itself is a 500.
"""

from __future__ import annotations

from typing import Any, Optional

from starlette.responses import JSONResponse

__all__ = ["APIError", "invalid", "error_response", "error_body"]


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def invalid(param: str, message: str, code: Optional[str] = "invalid_value") -> APIError:
    """A 400 for one request field."""
    return APIError(400, message, param=param, code=code)


def error_body(message: str, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers)
