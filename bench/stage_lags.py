"""Where a BC change's time goes, stage by stage, from the topics themselves (BENCH_STAGES=1).

Every record carries its producer's timestamp; a BC snapshot carries BC's modified time (the
edit). So, per BC change that reached a user: edit -> snapshot published (BC's notification
delay, the webhook, the change feed's round), snapshot -> command published (router), command
-> result published (applier: reads, writes, links).
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from contactsync.kafka.topics import BC_CONTACT_CHANGES, SYNC_COMMANDS, SYNC_RESULTS, topic_name
from contactsync.schemas.envelope import decode
from contactsync.schemas.messages import BcContactChanged, CommandKind, SyncCommand, SyncResult
from contactsync.settings import Settings


def _records(bootstrap: str, topic: str) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out: list[Any] = []
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for batch in consumer.poll(timeout_ms=1000).values():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    p99 = statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]
    return f"p50 {statistics.median(values) * 1000:.0f} ms p99 {p99 * 1000:.0f} ms"


def report(bootstrap: str, settings: Settings, since: datetime) -> None:
    changes: dict[tuple[str, str], float] = {}  # (contact id, modified) -> published at
    feed: list[float] = []
    for r in _records(bootstrap, topic_name(settings, BC_CONTACT_CHANGES)):
        change = decode(r.value).payload
        if not isinstance(change, BcContactChanged) or change.last_modified is None:
            continue
        if change.last_modified < since:
            continue
        published = r.timestamp / 1000
        changes[(change.contact_id, change.last_modified.isoformat())] = published
        feed.append(published - change.last_modified.timestamp())
    commands: dict[str, float] = {}  # command event id -> routed at
    router: list[float] = []
    for r in _records(bootstrap, topic_name(settings, SYNC_COMMANDS)):
        envelope = decode(r.value)
        command = envelope.payload
        if not isinstance(command, SyncCommand) or command.kind is not CommandKind.BC_CHANGE:
            continue
        change = command.bc_change
        if change is None or change.last_modified is None:
            continue
        source = changes.get((change.contact_id, change.last_modified.isoformat()))
        if source is None:
            continue
        commands[str(envelope.event_id)] = r.timestamp / 1000
        router.append(r.timestamp / 1000 - source)
    applier: list[float] = []
    for r in _records(bootstrap, topic_name(settings, SYNC_RESULTS)):
        result = decode(r.value).payload
        if isinstance(result, SyncResult) and result.command_id in commands:
            applier.append(r.timestamp / 1000 - commands[result.command_id])
    print(f"  stages of BC changes (all rates): edit -> snapshot on the topic {_ms(feed)}; "
          f"-> command routed {_ms(router)}; -> applied and result published {_ms(applier)}")
