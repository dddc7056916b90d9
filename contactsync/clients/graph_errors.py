"""Graph failures -> the client error tree, in one function (`graph_failure`).

Used for whole responses, for the inner responses of a `$batch`, and for transport exceptions,
so the engine and executor never see HTTP, httpx or kiota types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from contactsync.clients.errors import (
    ServiceError,
    ServiceUnavailable,
    SyncStateExpired,
    error_for_status,
    parse_retry_after,
    request_url,
)

SERVICE = "graph"
# "Use delta query to track changes" (learn.microsoft.com/graph/delta-query-overview, "Token
# duration"): an expired token is "a 40X-series error with error codes such as syncStateNotFound"
# (410, 400 and 404 are all seen); resyncRequired asks for the same fresh start.
_EXPIRED_CODES = {"syncstatenotfound", "resyncrequired"}

def _error_fields(body: Any) -> tuple[str, str]:
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            return str(err.get("code") or ""), str(err.get("message") or "")
    return "", ""


def graph_failure(
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    exc: BaseException | None = None,
    delta: bool = False,
) -> ServiceError:
    """Map a failed response (status, headers, parsed JSON body) or a transport exception."""
    if exc is not None:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            # The request never reached Graph: safe to repeat even a create.
            return ServiceUnavailable(f"{type(exc).__name__}", service=SERVICE, code="NotSent",
                                      url=request_url(exc))
        if isinstance(exc, httpx.TimeoutException):
            return ServiceUnavailable("timeout", service=SERVICE, code="Timeout",
                                      url=request_url(exc))
        return ServiceUnavailable(f"{type(exc).__name__}", service=SERVICE, code="TransportError",
                                  url=request_url(exc))
    assert status is not None
    code, message = _error_fields(body)
    if (400 <= status < 500 and code.lower() in _EXPIRED_CODES) or (status == 410 and delta):
        return SyncStateExpired(message or "delta token expired", service=SERVICE,
                                status=status, code=code)
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    if status == 424:
        # A whole `$batch` failed (learn.microsoft.com/graph/throttling, "Throttling and
        # batching"), or an inner request whose dependency failed: worth retrying, and as
        # ambiguous as a 5xx (part of it may have run), so creates are looked up first.
        return ServiceUnavailable(message or "failed dependency", service=SERVICE, status=status,
                                  code=code or "FailedDependency",
                                  retry_after=parse_retry_after(lower.get("retry-after")))
    return error_for_status(status, message, service=SERVICE, code=code,
                            retry_after=lower.get("retry-after"))
