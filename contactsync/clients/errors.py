"""One exception tree for both services (Graph and Business Central), beneath the project's
error root (`contactsync.errors`: ContactsyncError > ServiceError > RetryableError >
ServiceUnavailable are defined there and re-exported here).

    ServiceError                      every failure talking to Graph or BC
    ├── RetryableError                worth trying again later (the executor retries, then DLQ)
    │   ├── Throttled                 429; .retry_after seconds
    │   ├── ServiceUnavailable        5xx, timeouts, connection errors; .retry_after if sent
    │   │   └── TokenUnavailable      no token for now: Entra unreachable or answering 5xx
    ├── NotFound                      404 (and Graph 410 on a single item)
    ├── Conflict                      412 precondition failed / 409: the version moved on
    ├── Unauthorized                  401/403: credentials refused or missing
    │   └── CredentialRejected        Entra refused our credential (expired secret, no consent),
    │                                 or a service answered 401 to our token: the role pauses
    │                                 its work instead of failing commands
    ├── Invalid                       400/413/422: our request is wrong; never retried
    └── SyncStateExpired              Graph delta 410 syncStateNotFound: start the delta over

Clients map status codes to these in one place each, so the engine and the executor never look
at HTTP. Every error carries the service, the HTTP status and the service's error code and
message (never a token or a request body), and where the transport failed, the URL.
"""

from __future__ import annotations

import email.utils
import time

from contactsync.errors import (
    RetryableError as RetryableError,
)
from contactsync.errors import (
    ServiceError as ServiceError,
)
from contactsync.errors import (
    ServiceUnavailable as ServiceUnavailable,
)
from contactsync.errors import (
    server_retry_after as server_retry_after,
)


class Throttled(RetryableError):
    def __init__(
        self,
        message: str,
        *,
        retry_after: float = 1.0,
        service: str = "",
        status: int | None = 429,
        code: str = "",
    ) -> None:
        super().__init__(message, service=service, status=status, code=code)
        self.retry_after = retry_after


class TokenUnavailable(ServiceUnavailable):
    """Getting a token failed for a reason that passes by itself (Entra unreachable or 5xx)."""

    credential = True  # past the retry budget the worker pauses, the records stay

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no token available"


class NotFound(ServiceError):
    pass


class Conflict(ServiceError):
    pass


class Unauthorized(ServiceError):
    pass


class CredentialRejected(Unauthorized):
    """Entra refused the credential: nothing works until an admin fixes it. The message is one
    sentence naming what to set; work waiting for a token stays unconsumed meanwhile."""

    credential = True

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the Azure credential was refused"


# Failures of the credential, not of the command at hand: never a contact's or a command's fault.
CREDENTIAL_FAILURES = (TokenUnavailable, CredentialRejected)


class Invalid(ServiceError):
    pass


class SyncStateExpired(ServiceError):
    pass


DEFAULT_RETRY_AFTER = 1.0
CONSENT_HINTS = {"bc": ", and that BC's Microsoft Entra Applications card lists it, enabled"}


def request_url(exc: BaseException) -> str:
    """The URL (without query) of an httpx error's request, or "" when it has none."""
    try:
        url = exc.request.url  # type: ignore[attr-defined]  # httpx raises if not set
    except (AttributeError, RuntimeError):
        return ""
    return str(url.copy_with(query=None, fragment=None))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: integer, decimal (Graph's docs show `2.128`) or an
    HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_status(
    status: int, message: str, *, service: str, code: str = "", retry_after: str | None = None
) -> ServiceError:
    """The status ladder both services share; each client handles its own special cases
    (Graph's delta 410) before calling this."""
    if status == 429:
        seconds = parse_retry_after(retry_after) or DEFAULT_RETRY_AFTER
        return Throttled(message or "throttled", retry_after=seconds, service=service,
                         status=status, code=code)
    kind: type[ServiceError]
    if status == 408 or status >= 500:
        return ServiceUnavailable(message or "service unavailable", service=service,
                                  status=status, code=code,
                                  retry_after=parse_retry_after(retry_after))
    if status in (404, 410):
        kind, default = NotFound, "not found"
    elif status in (409, 412):
        # 412: a stale If-Match; BC's runtime may answer 409 for the same, and 409 also means
        # a duplicate key. Either way: re-read before writing again.
        kind, default = Conflict, "version conflict"
    elif status == 401:
        # Our token, not this request: every request would get the same. The worker pauses.
        return CredentialRejected(
            f"{service} refused our token (HTTP 401{f' {code}' if code else ''}: "
            f"{message or 'unauthorized'}): check the app's {service} permission and its admin "
            f"consent{CONSENT_HINTS.get(service, '')}", service=service, status=status, code=code)
    elif status == 403:
        kind, default = Unauthorized, "not authorized"
    elif 400 <= status < 500:
        kind, default = Invalid, f"request refused ({status})"
    else:
        kind, default = ServiceError, f"HTTP {status}"
    return kind(message or default, service=service, status=status, code=code)
