"""`contactsync dlq list|replay` as a user runs them (subprocess), against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from kafka import KafkaConsumer, TopicPartition

from contactsync.kafka.deadletter import DeadLetterSink
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import DEADLETTER, SYNC_COMMANDS, ensure_topics_at, topic_name
from contactsync.settings import Settings

pytestmark = pytest.mark.kafka


class Failed(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@pytest.fixture
def settings(kafka_settings: Settings) -> Settings:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    return kafka_settings


def _cli(settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CONTACTSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONTACTSYNC_LOG_FORMAT": "json",
    })
    exe = str(Path(sys.executable).parent / "contactsync")
    return subprocess.run([exe, "dlq", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False, cwd=cwd)


def _source_records(settings: Settings, expect: int, timeout: float = 10) -> list:
    topic = topic_name(settings, SYNC_COMMANDS)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=500).values():  # duplicates would show here
            records.extend(batch)
        return records
    finally:
        consumer.close()


def test_list_and_replay_each_dead_letter_once(settings: Settings, tmp_path: Path):
    source = topic_name(settings, SYNC_COMMANDS)
    failed = [
        Failed(source, 0, 10, b"user-a", b'{"broken": ', [("trace", b"t-a")]),
        Failed(source, 1, 20, b"user-b", b"\xff\xfe not utf-8", []),
        Failed(source, 2, 30, None, b"{}", [("h", b"\x00\x01")]),
    ]
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        sink = DeadLetterSink(producer, topic_name(settings, DEADLETTER))
        for number, record in enumerate(failed):
            sink.send(record, reason=f"reason {number} for jane@contoso.com",
                      error_type="MalformedMessage", attempts=1)
    finally:
        producer.close(timeout=5)

    listed = _cli(settings, tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert len(entries) == 3
    by_offset = {e["source_offset"]: e for e in entries}
    assert by_offset[10]["source_topic"] == source and by_offset[10]["key"] == "user-a"
    assert by_offset[20]["source_partition"] == 1 and by_offset[30]["key"] is None
    assert by_offset[10]["reason"] == "reason 0 for j***@contoso.com"  # e-mail masked
    assert not any(e["replayed"] for e in entries)

    table = _cli(settings, tmp_path, "list", "--limit", "2")
    assert table.returncode == 0 and "REASON" in table.stdout
    assert "1 older not shown" in table.stdout

    first = by_offset[10]
    one = _cli(settings, tmp_path, "replay", "--offset",
               f"{first['dlq_partition']}:{first['dlq_offset']}")
    assert one.returncode == 0, one.stderr
    assert "1 replayed" in one.stdout

    rest = _cli(settings, tmp_path, "replay", "--all")
    assert rest.returncode == 0, rest.stderr
    assert "2 replayed, 1 already replayed" in rest.stdout

    again = _cli(settings, tmp_path, "replay", "--all")
    assert again.returncode == 0 and "0 replayed, 3 already replayed" in again.stdout

    records = _source_records(settings, expect=3)
    assert len(records) == 3  # each once
    replayed = {r.key: r for r in records}
    assert replayed[b"user-a"].value == b'{"broken": '
    assert replayed[b"user-b"].value == b"\xff\xfe not utf-8"  # byte for byte
    assert replayed[None].value == b"{}"
    headers = dict(replayed[None].headers)
    assert headers["h"] == b"\x00\x01" and "contactsync.replayed-from" in headers
    assert dict(replayed[b"user-a"].headers)["trace"] == b"t-a"

    after = json.loads(_cli(settings, tmp_path, "list", "--json").stdout)
    assert all(e["replayed"] for e in after)


def test_replay_needs_a_selection_and_a_known_offset(settings: Settings, tmp_path: Path):
    assert _cli(settings, tmp_path, "replay").returncode == 2
    missing = _cli(settings, tmp_path, "replay", "--offset", "0:999")
    assert missing.returncode == 2 and "no dead letter" in missing.stderr
    empty = _cli(settings, tmp_path, "list")
    assert empty.returncode == 0 and "no dead letters" in empty.stdout


def test_replay_ledger_remembers_out_of_order_replays(settings: Settings):
    from contactsync.kafka.deadletter import ReplayLedger, replay_group

    topic = topic_name(settings, DEADLETTER)
    ledger = ReplayLedger(settings.kafka_bootstrap_servers, replay_group(settings), topic)
    try:
        ledger.load([0])
        ledger.mark(0, 5)
        ledger.mark(0, 3)
    finally:
        ledger.close()
    reloaded = ReplayLedger(settings.kafka_bootstrap_servers, replay_group(settings), topic)
    try:
        reloaded.load([0])
        assert [reloaded.is_replayed(0, o) for o in range(7)] == [
            False, False, False, True, False, True, False]
        for offset in (0, 1, 2, 4):
            reloaded.mark(0, offset)
        assert all(reloaded.is_replayed(0, o) for o in range(6))
    finally:
        reloaded.close()
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                             group_id=replay_group(settings), enable_auto_commit=False)
    try:
        committed = consumer.committed(TopicPartition(topic, 0), metadata=True)
        assert (committed.offset, committed.metadata) == (6, "[]")
    finally:
        consumer.close(autocommit=False)
