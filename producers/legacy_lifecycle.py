"""The upgrade to `graph.lifecycle`: lifecycle events an older webhook left on
`graph.notifications` are still acted on (docs/architecture.md "Topics and their contracts").

Older releases published lifecycle events to `graph.notifications`, and the subscription keeper
read that whole topic to find them. Now they have a topic of their own and the keeper reads only
that one. Whatever its group had not yet read of the old topic at the upgrade is drained once,
when the keeper starts, before its worker joins the group: from the group's committed offset to
the end at that moment, lifecycle events acted on, change notifications skipped undecoded. The
offset is then committed with `DRAINED` as its metadata, and a partition so marked is never read
again: a keeper that restarted would otherwise re-read every change since its last start.

A partition the group never committed on (a new deployment) has nothing to drain. A drain that
fails (Graph or the store away) commits nothing, logs why and is tried at the next start; acting
on an event twice is harmless (the keeper ignores events for subscriptions it already replaced).
Upgrade the webhook before the keeper, so that no old webhook writes after the drain; the keeper's
regular pass recreates a removed subscription and renews an expiring one in any case.
Remove this module one release after `graph.lifecycle` came in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from contactsync.kafka.io import make_consumer
from contactsync.kafka.topics import GRAPH_NOTIFICATIONS, group_name, topic_name
from contactsync.logs import get_logger
from contactsync.schemas.envelope import MessageError, decode_if
from contactsync.schemas.messages import GraphLifecycle
from contactsync.settings import Settings

DRAINED = "lifecycle drained to graph.lifecycle"
POLL_MS = 500
DRAIN_TIMEOUT_S = 60.0


def _log() -> Any:
    return get_logger("contactsync.subscriptions")


def drain_old_lifecycle(settings: Settings, group: str,
                        act: Callable[[GraphLifecycle], object]) -> int:
    """Act on the lifecycle events `group` left unread on `graph.notifications`; how many."""
    consumer = make_consumer(settings, group_name(settings, group), enable_auto_commit=False,
                             client_id=f"contactsync-{group}-drain")
    try:
        ends = _pending(consumer, topic_name(settings, GRAPH_NOTIFICATIONS))
        if not ends:
            return 0
        acted = _read(consumer, ends, act)
        consumer.commit({tp: OffsetAndMetadata(end, DRAINED, -1) for tp, end in ends.items()})
    except Exception as exc:  # the broker, Graph or the store away: the next start tries again
        _log().warning("lifecycle events on graph.notifications not drained yet; the next start "
                       "of the subscriptions role tries again", error=str(exc))
        return 0
    finally:
        consumer.close(autocommit=False)
    if acted:
        _log().info("lifecycle events drained from graph.notifications", events=acted)
    return acted


def _pending(consumer: KafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    """The partitions with something left to drain, assigned at their committed offsets; each
    partition's end offset now, where the drain stops."""
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic)
                                                           or ())]
    committed = {tp: consumer.committed(tp, metadata=True) for tp in partitions}
    starts = {tp: c.offset for tp, c in committed.items()
              if c is not None and c.offset >= 0 and c.metadata != DRAINED}
    ends: dict[TopicPartition, int] = consumer.end_offsets(list(starts)) if starts else {}
    consumer.assign(list(starts))
    for tp, start in starts.items():
        consumer.seek(tp, start)
    return ends


def _read(consumer: KafkaConsumer, ends: dict[TopicPartition, int],
          act: Callable[[GraphLifecycle], object]) -> int:
    acted = 0
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while left := [tp for tp, end in ends.items() if consumer.position(tp) < end]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"graph.notifications unread after {DRAIN_TIMEOUT_S:.0f} s")
        for tp, records in consumer.poll(timeout_ms=POLL_MS).items():
            for record in records:
                if tp not in left or record.offset >= ends[tp]:
                    continue  # written after the drain began: the new webhook's, not ours
                try:
                    envelope = decode_if(record.value, ("graph.lifecycle",))
                except MessageError:
                    continue  # the router dead-letters it
                if envelope is not None:
                    act(envelope.payload)
                    acted += 1
    return acted
