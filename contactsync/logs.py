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
from typing import Any, TextIO, cast

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


# Secret values the process holds (the Kafka SASL password, ...): masked wherever they appear,
# also inside a library's own message, which no key name would give away.
_known_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask `value` in every log line from now on (values shorter than 4 would mask noise)."""
    if len(value) >= 4:
        _known_secrets.add(value)


def redact_secrets(text: str) -> str:
    """Known secrets, bearer tokens and JWT-shaped strings out of a text (e-mails kept)."""
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
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


class CurrentStderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was configured: a
    command run inside another (a test's CliRunner, an embedding tool) swaps stderr and closes
    its copy afterwards, and a handler holding that copy would fail on every later line."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog (and the stdlib loggers it shares a stream with) once per process."""
    out = stream or CurrentStderr()
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, out)),
        cache_logger_on_first_use=False,
    )
    # Libraries (kafka-python, httpx, azure, uvicorn) log through the stdlib: their lines go
    # through the same processors, so they come out as our JSON (or console) lines, with the
    # logger's name, and redacted like ours (a library's line can hold a URL with a mailbox,
    # a header, or its own configuration).
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries' chatter stays at WARNING
    for noisy in ("kafka", "httpx", "httpcore", "azure", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python's event-loop timing notes ("Task ran for 0.118s") are for its developers:
    # on a busy host they flood the log with nothing an operator can act on.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


def get_logger(name: str = "contactsync", **context: Any) -> Any:
    """A lazy logger: it takes the configuration in force when it logs, not when it was made,
    so a module-level logger created before `configure_logging` still redacts."""
    return structlog.get_logger(name, **context)
