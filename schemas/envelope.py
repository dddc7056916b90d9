"""The versioned envelope every topic carries, and its strict codec.

    {"event_id": "...", "type": "sync.command", "schema_version": 1,
     "occurred_at": "2026-11-25T20:00:00Z", "trace_id": "...", "payload": {...}}

`decode` never lets a bad message crash a consumer: malformed JSON, an unknown type, a schema
version newer than this code knows, or a payload that fails validation each raise one
`MessageError` subclass whose message names the field. The consumer sends such a message to the
dead-letter topic with that reason and goes on.

Speed (every message is decoded once per consuming role): the text is parsed by orjson, the
type's envelope model is made once per type (`Envelope[Model]` costs a lookup per call), and
`encode` writes bytes straight from pydantic's serializer. `decode_if` lets a role that takes a
few of a topic's types skip validating the others (the subscription keeper reads every Graph
notification for its lifecycle events).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
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
    return envelope.__pydantic_serializer__.to_json(envelope, by_alias=True)


def decode(raw: bytes | str | None) -> Envelope[Any]:
    """Parse and validate a message; raises a `MessageError` subclass naming the problem."""
    data, kind = _parse(raw)
    return _validate(data, kind)


def decode_if(raw: bytes | str | None, types: Collection[str]) -> Envelope[Any] | None:
    """`decode` for a consumer that takes only `types`: a well-formed envelope of another known
    type is None, unvalidated (its own consumer validates it); anything else as `decode`."""
    data, kind = _parse(raw)
    return _validate(data, kind) if kind in types else None


def _parse(raw: bytes | str | None) -> tuple[dict[str, Any], str]:
    """The JSON object and its known type, or a MessageError."""
    if raw is None:
        raise MalformedMessage("the message has no value (a tombstone?)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # invalid UTF-8 too
        raise MalformedMessage(f"the message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage("the message is not a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage("the envelope has no string field 'type'", field="type")
    if kind not in MESSAGE_TYPES:
        raise UnknownMessageType(f"unknown message type {kind!r}", field="type")
    return data, kind


def _validate(data: dict[str, Any], kind: str) -> Envelope[Any]:
    _, supported = MESSAGE_TYPES[kind]
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MalformedMessage("'schema_version' must be an integer", field="schema_version")
    if version > supported:
        raise UnsupportedSchemaVersion(
            f"{kind} 'schema_version' {version} is newer than this worker knows ({supported})",
            field="schema_version",
        )
    try:
        return _ENVELOPES[kind].model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidPayload(
            f"invalid {kind} message: field '{where}': {first['msg']}", field=where
        ) from None


# The envelope model of each message type, made once.
_ENVELOPES: dict[str, type[Envelope[Any]]] = {
    kind: Envelope[model]  # type: ignore[valid-type]
    for kind, (model, _) in MESSAGE_TYPES.items()
}
