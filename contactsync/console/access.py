"""Who may use the console, and the CSRF token every form carries.

Without an identity provider configured the console is open, and only on loopback (the
sandbox, an admin's own machine): the CLI refuses to listen anywhere else.
CSRF: a double-submit token. A random token lives in a SameSite=Strict, HttpOnly cookie and is
repeated in each form's hidden field; a POST whose field does not match the cookie is refused.
A page on another site can neither read the cookie nor set it, so it cannot forge the field.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from starlette.requests import Request
from starlette.responses import Response

CSRF_COOKIE = "contactsync_csrf"
CSRF_FIELD = "csrf"
OPEN_ADMIN = "local admin (open console on loopback)"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_reason(host: str, identity_configured: bool, option: str = "--host") -> str | None:
    """Why the console must not listen on `host`, in one sentence; None when it may."""
    if is_loopback(host) or identity_configured:
        return None
    return (f"the console has no sign-in configured, so it only listens on loopback: "
            f"use {option} 127.0.0.1 (and an SSH tunnel or a proxy) instead of {host}")


def who(request: Request) -> str:
    """The person acting, for the audit record."""
    return str(getattr(request.state, "user", "") or OPEN_ADMIN)


def csrf_token(request: Request) -> str:
    """The request's token (from its cookie), or a new one `remember_csrf` will set."""
    token = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", "")
    if not token:
        token = secrets.token_urlsafe(32)
        request.state.new_csrf = token
    return token


def remember_csrf(request: Request, response: Response) -> None:
    new = getattr(request.state, "new_csrf", "")
    if new:
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")


def csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get(CSRF_FIELD, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), sent.encode())
