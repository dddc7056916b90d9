"""Messages on the topics: versioned envelopes, and bad input refused with a typed error."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from kafka import KafkaAdminClient

from contactsync.kafka.io import make_consumer, make_producer
from contactsync.schemas.contacts import BcContact
from contactsync.schemas.envelope import (
    InvalidPayload,
    MalformedMessage,
    MessageError,
    UnknownMessageType,
    UnsupportedSchemaVersion,
    decode,
    decode_if,
    encode,
    wrap,
)
from contactsync.schemas.messages import BcChangeKind, BcContactChanged, CommandKind, SyncCommand
from tests.kafka_fixtures import KafkaHandle


def _change() -> BcContactChanged:
    return BcContactChanged(
        company_id="c1",
        contact_id="k1",
        kind=BcChangeKind.UPSERT,
        snapshot=BcContact.model_validate(
            {"id": "k1", "displayName": "Ada Lovelace", "email": "ada@example.com",
             "type": "Person", "@odata.etag": 'W/"1"'}
        ),
        last_modified=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
    )


def test_round_trip_keeps_every_field_and_the_wire_names():
    envelope = wrap(SyncCommand(user_id="u1", kind=CommandKind.BC_CHANGE, bc_change=_change()))
    raw = encode(envelope)
    assert b'"displayName":"Ada Lovelace"' in raw and b'"@odata.etag"' in raw
    back = decode(raw)
    assert back.type == "sync.command" and back.schema_version == 2
    assert back.event_id == envelope.event_id and back.trace_id == envelope.trace_id
    assert back.payload == envelope.payload


def test_decode_if_validates_only_the_types_a_consumer_takes():
    """A role that takes a few of a topic's types (the subscription keeper: lifecycle events
    among Graph notifications) gets None for the others without validating them; what it
    takes is decoded as `decode` does, and a bad message is refused all the same."""
    command = encode(wrap(SyncCommand(user_id="u1", kind=CommandKind.SYNC)))
    not_ours = b'{"type": "sync.result", "schema_version": 2, "payload": {"bogus": 1}}'
    assert decode_if(not_ours, {"sync.command"}) is None
    back = decode_if(command, {"sync.command"})
    assert back is not None and back.payload.user_id == "u1"
    with pytest.raises(InvalidPayload):
        decode_if(not_ours, {"sync.result"})
    with pytest.raises(UnknownMessageType):
        decode_if(b'{"type": "contact.exploded", "payload": {}}', {"sync.command"})
    with pytest.raises(MalformedMessage):
        decode_if(b"{not json", {"sync.command"})


@pytest.mark.parametrize(
    ("raw", "error", "field"),
    [
        (b"{not json", MalformedMessage, ""),
        (b"[1, 2]", MalformedMessage, ""),
        (None, MalformedMessage, ""),
        (b'{"type": "contact.exploded", "schema_version": 1, "payload": {}}',
         UnknownMessageType, "type"),
        (b'{"type": "sync.command", "schema_version": 9, "payload": {}}',
         UnsupportedSchemaVersion, "schema_version"),
        (b'{"type": "sync.command", "schema_version": "1", "payload": {}}',
         MalformedMessage, "schema_version"),
        (b'{"type": "sync.command", "schema_version": 1, "payload": {"kind": "sync"}}',
         InvalidPayload, "payload.user_id"),
        (b'{"type": "sync.command", "schema_version": 1, '
         b'"payload": {"user_id": "u", "kind": "explode"}}', InvalidPayload, "payload.kind"),
    ],
)
def test_bad_messages_raise_a_typed_error_naming_the_field(raw, error, field):
    with pytest.raises(error) as caught:
        decode(raw)
    assert caught.value.field == field
    if field:
        assert field.split(".")[-1] in str(caught.value)


def test_a_malformed_message_on_a_topic_is_rejected_and_the_next_one_still_read(
    kafka: KafkaHandle, topic_prefix: str
):
    topic = f"{topic_prefix}commands"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}},
                        wait_for_metadata=True)
    admin.close()
    producer = make_producer(kafka.bootstrap)
    good = wrap(SyncCommand(user_id="u1", kind=CommandKind.SYNC))
    producer.send(topic, key=b"u1", value=b"\xff\xfe garbage")
    producer.send(topic, key=b"u1", value=encode(good))
    producer.flush()
    producer.close()

    consumer = make_consumer(kafka.bootstrap, "g-envelope", topic)
    accepted, rejected = [], []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(accepted) + len(rejected) < 2:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                try:
                    accepted.append(decode(record.value))
                except MessageError as exc:
                    rejected.append(exc)
    consumer.close()
    assert [type(e) for e in rejected] == [MalformedMessage]
    assert [e.event_id for e in accepted] == [good.event_id]
