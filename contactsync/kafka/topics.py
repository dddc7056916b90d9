"""The topics of the pipeline (DESIGN.md "Flow") and their idempotent creation."""

from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from contactsync.settings import Settings

BC_NOTIFICATIONS = "bc.notifications"
GRAPH_NOTIFICATIONS = "graph.notifications"
BC_CONTACT_CHANGES = "bc.contact.changes"
SYNC_COMMANDS = "sync.commands"
SYNC_RESULTS = "sync.results"
DEADLETTER = "deadletter"

ALL_TOPICS = (
    BC_NOTIFICATIONS, GRAPH_NOTIFICATIONS, BC_CONTACT_CHANGES, SYNC_COMMANDS, SYNC_RESULTS,
    DEADLETTER,
)


def topic_name(settings: Settings, base: str) -> str:
    """The broker-side name: the configured prefix lets several deployments share a cluster."""
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



def ensure_topics_at(bootstrap: str, settings: Settings) -> EnsureReport:
    """`ensure_topics` with an admin client of its own, for commands and the sandbox."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return ensure_topics(admin, settings)
    finally:
        admin.close()
