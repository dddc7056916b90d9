"""The versioned envelope every topic carries, and its strict codec.

    {"event_id": "...", "type": "sync.command", "schema_version": 1,
     "occurred_at": "2026-11-25T20:00:00Z", "trace_id": "...", "payload": {...}}

`decode` never lets a bad message crash a consumer: malformed JSON, an unknown type, a schema
version newer than this code knows, or a payload that fails validation each raise one
`MessageError` subclass whose message names the field. The consumer sends such a message to the
dead-letter topic with that reason and goes on.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contactsync.schemas.messages import MESSAGE_TYPES, type_of

P = TypeVar("P", bound=BaseModel)


class MessageError(ValueError):
    """A message that cannot be read; `field` names where, when known."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class MalformedMessage(MessageError):
    pass


class UnknownMessageType(MessageError):
    pass


class UnsupportedSchemaVersion(MessageError):
    pass


class InvalidPayload(MessageError):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[P]):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    type: str
    schema_version: int = Field(ge=1)
    occurred_at: datetime = Field(default_factory=_now)
    trace_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    payload: P


def wrap(payload: P, *, trace_id: str | None = None, event_id: str | None = None) -> Envelope[P]:
    name = type_of(payload)
    _, version = MESSAGE_TYPES[name]
    extra: dict[str, Any] = {}
    if trace_id:
        extra["trace_id"] = trace_id
    if event_id:
        extra["event_id"] = event_id
    return Envelope[P](type=name, schema_version=version, payload=payload, **extra)


def encode(envelope: Envelope[Any]) -> bytes:
    return envelope.model_dump_json(by_alias=True).encode()


def decode(raw: bytes | str | None) -> Envelope[Any]:
    """Parse and validate a message; raises a `MessageError` subclass naming the problem."""
    if raw is None:
        raise MalformedMessage("the message has no value (a tombstone?)")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"the message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage("the message is not a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage("the envelope has no string field 'type'", field="type")
    if kind not in MESSAGE_TYPES:
        raise UnknownMessageType(f"unknown message type {kind!r}", field="type")
    model, supported = MESSAGE_TYPES[kind]
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MalformedMessage("'schema_version' must be an integer", field="schema_version")
    if version > supported:
        raise UnsupportedSchemaVersion(
            f"{kind} 'schema_version' {version} is newer than this worker knows ({supported})",
            field="schema_version",
        )
    try:
        return Envelope[model].model_validate(data)  # type: ignore[valid-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidPayload(
            f"invalid {kind} message: field '{where}': {first['msg']}", field=where
        ) from None
