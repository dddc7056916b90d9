"""The topics of the pipeline (docs/architecture.md "Flow") and their idempotent creation."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from contactsync.kafka.errors import BrokerError
from contactsync.settings import Settings

if TYPE_CHECKING:
    from contactsync.kafka.io import KafkaTarget

BC_NOTIFICATIONS = "bc.notifications"
GRAPH_NOTIFICATIONS = "graph.notifications"
GRAPH_LIFECYCLE = "graph.lifecycle"
BC_CONTACT_CHANGES = "bc.contact.changes"
SYNC_COMMANDS = "sync.commands"
SYNC_RESULTS = "sync.results"
DEADLETTER = "deadletter"

ALL_TOPICS = (
    BC_NOTIFICATIONS, GRAPH_NOTIFICATIONS, GRAPH_LIFECYCLE, BC_CONTACT_CHANGES, SYNC_COMMANDS,
    SYNC_RESULTS, DEADLETTER,
)


def topic_name(settings: Settings, base: str) -> str:
    """The broker-side name: the configured prefix lets several deployments share a cluster."""
    return f"{settings.topic_prefix}{base}"


def group_name(settings: Settings, base: str) -> str:
    """A consumer group's broker-side name: prefixed like the topics it reads."""
    return f"{settings.topic_prefix}{base}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    retention_ms: int


def topic_specs(settings: Settings) -> list[TopicSpec]:
    specs = []
    for base in ALL_TOPICS:
        # The dead-letter topic keeps its messages longer: a person has to look at them.
        retention = (
            settings.deadletter_retention_ms if base == DEADLETTER else settings.topic_retention_ms
        )
        specs.append(TopicSpec(topic_name(settings, base), settings.topic_partitions,
                               settings.topic_replication, retention))
    return specs


@dataclass(frozen=True)
class EnsureReport:
    created: list[str]
    existing: list[str]
    retention_updated: list[str]


def ensure_topics(admin: KafkaAdminClient, settings: Settings) -> EnsureReport:
    """Create missing topics and align retention of existing ones; safe to run again and again.

    Partition counts of existing topics are never changed here: adding partitions would move
    keys between partitions and break per-user ordering for messages in flight.
    """
    specs = topic_specs(settings)
    present = set(admin.list_topics())
    missing = [s for s in specs if s.name not in present]
    if missing:
        admin.create_topics(
            {
                s.name: {
                    "num_partitions": s.partitions,
                    "replication_factor": s.replication,
                    "configs": {"retention.ms": str(s.retention_ms)},
                }
                for s in missing
            },
            wait_for_metadata=True,
            raise_errors=False,  # a concurrent creator may win the race; checked below
        )
    existing = [s for s in specs if s.name in present]
    updated = _align_retention(admin, existing)
    after = set(admin.list_topics())
    absent = [s.name for s in specs if s.name not in after]
    if absent:
        raise RuntimeError(f"could not create topics: {', '.join(absent)}")
    return EnsureReport([s.name for s in missing], [s.name for s in existing], updated)


def _align_retention(admin: KafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    if not specs:
        return []
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name, {"retention.ms": None})
                 for s in specs]
    # kafka-python 3: {"topic": {name: {config key: {"value": ..., ...}}}}
    described = admin.describe_configs(resources, config_filter="all")
    current = {
        name: str(configs.get("retention.ms", {}).get("value"))
        for name, configs in described.get("topic", {}).items()
    }
    changed = [s for s in specs if current.get(s.name) != str(s.retention_ms)]
    if changed:
        admin.alter_configs([
            ConfigResource(ConfigResourceType.TOPIC, s.name, {"retention.ms": str(s.retention_ms)})
            for s in changed
        ])
    return [s.name for s in changed]



def make_admin(target: KafkaTarget, **overrides: Any) -> KafkaAdminClient:
    """An admin client, connected: a broker that cannot be reached or refuses the login is a
    BrokerError in one sentence within seconds (kafka-python itself retries for 30 s)."""
    from contactsync.kafka.io import client_config, connect

    return connect(KafkaAdminClient, target, **{**client_config(target), **overrides})


def ensure_topics_at(target: KafkaTarget, settings: Settings) -> EnsureReport:
    """`ensure_topics` with an admin client of its own, for commands and the sandbox."""
    admin = make_admin(target)
    try:
        return ensure_topics(admin, settings)
    finally:
        admin.close()


def leaderless(admin: KafkaAdminClient, topics: Sequence[str]) -> list[str]:
    """The topics (of `topics`) missing, or with a partition that has no leader yet."""
    described = admin.describe_topics(list(topics))
    found = {t["name"]: t["partitions"] for t in described if not t.get("error_code")}
    return [name for name in topics
            if not found.get(name)
            or any(p["error_code"] or p["leader_id"] < 0 for p in found[name])]


def await_topics(settings: Settings, bases: Sequence[str], timeout: float = 30.0) -> None:
    """Block until every partition of these pipeline topics has a leader serving it, so roles
    starting right after `topics ensure` (or a broker restart) do not meet NotLeaderForPartition
    or "No partition metadata" on their first requests. Missing topics after `timeout`: one
    clear error naming the command that creates them."""
    from contactsync.kafka.io import make_consumer

    names = [topic_name(settings, base) for base in bases]
    admin = make_admin(settings)
    try:
        deadline = time.monotonic() + timeout
        while waiting := leaderless(admin, names):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the Kafka topics {', '.join(waiting)} are missing or have no partition "
                    f"leader after {timeout:.0f} s: run `contactsync topics ensure` with the "
                    "same settings"
                )
            time.sleep(0.2)
        partitions = [TopicPartition(t["name"], p["partition_index"])
                      for t in admin.describe_topics(names) for p in t["partitions"]]
    finally:
        admin.close()
    # The metadata names a leader before that broker serves as one (a produce then fails with
    # NotLeaderForPartition): the end offsets, which only the serving leader answers, prove it.
    consumer = make_consumer(settings, None, client_id="contactsync-start")
    try:
        consumer.end_offsets(partitions)
    finally:
        consumer.close(autocommit=False)
