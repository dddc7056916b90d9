"""BC's OData error shape: `{"error": {"code": "...", "message": "..."}}`.

Codes and messages follow BC's error-code table (dev-itpro "Error Codes"): e.g.
`Application_StringExceededLength` for a too-long value, `BadRequest_InvalidToken` for a missing
concurrency token, `Request_EntityChanged` for a stale one."""

from __future__ import annotations

import json

from starlette.responses import Response


class ODataError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def not_found(what: str) -> ODataError:
    return ODataError(404, "BadRequest_NotFound", f"The {what} does not exist.")


def bad_request(message: str, code: str = "BadRequest") -> ODataError:
    return ODataError(400, code, message)
