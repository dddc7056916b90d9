"""structlog set-up: JSON when not on a terminal, readable on one; secrets never reach a log.

The redaction processor runs last before rendering, over every event dict (nested too):
- values under keys that name a secret (token, secret, password, authorization, client_state,
  validation_token, ...) become "***";
- bearer tokens and JWT-shaped strings inside any text become "***";
- e-mail addresses are masked to their first character and domain (j***@contoso.com), so a log
  can still be correlated without holding the address.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "***"
_SECRET_KEY = re.compile(
    r"(secret|token|password|passwd|authorization|api[_-]?key|client[_-]?state|clientstate|"
    r"credential|cookie|signature)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_EMAIL = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")


def redact_secrets(text: str) -> str:
    """Bearer tokens and JWT-shaped strings out of a text (e-mail addresses kept)."""
    text = _BEARER.sub(f"Bearer {REDACTED}", text)
    return _JWT.sub(REDACTED, text)


def redact_text(text: str) -> str:
    return _EMAIL.sub(r"\1***@\2", redact_secrets(text))


def redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = redact_value(key, event_dict[key])
    return event_dict


def _redact_record(record: logging.LogRecord) -> bool:
    """A stdlib logging filter: the record's formatted message, redacted (always kept)."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: leave it to logging's own error path
        return True
    record.msg, record.args = redact_text(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    return True


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog (and the stdlib loggers it shares a stream with) once per process."""
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the stdlib; keep their chatter at WARNING and on the same stream.
    logging.basicConfig(level=logging.WARNING, stream=out, force=True)
    # Their lines bypass structlog, so they get the same redaction (a library's warning can
    # hold a URL with a mailbox in it, or a header).
    for handler in logging.getLogger().handlers:
        handler.addFilter(_redact_record)
    for noisy in ("kafka", "httpx", "httpcore", "azure", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str = "contactsync", **context: Any) -> Any:
    """A lazy logger: it takes the configuration in force when it logs, not when it was made,
    so a module-level logger created before `configure_logging` still redacts."""
    return structlog.get_logger(name, **context)
