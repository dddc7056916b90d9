"""`contactsync topics ensure`: the pipeline's topics, idempotently, with their retention."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from contactsync.kafka.topics import ALL_TOPICS, ensure_topics
from contactsync.settings import Settings


def _retention(admin: KafkaAdminClient, topic: str) -> int:
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": None})],
        config_filter="all",
    )
    return int(described["topic"][topic]["retention.ms"]["value"])


def test_ensure_creates_every_topic_once_with_partitions_and_retention(kafka_settings: Settings):
    admin = KafkaAdminClient(bootstrap_servers=kafka_settings.kafka_bootstrap_servers)
    try:
        first = ensure_topics(admin, kafka_settings)
        second = ensure_topics(admin, kafka_settings)
        names = [f"{kafka_settings.topic_prefix}{t}" for t in ALL_TOPICS]
        assert sorted(first.created) == sorted(names)
        assert second.created == [] and sorted(second.existing) == sorted(names)
        described = {t["name"]: t for t in admin.describe_topics(names)}
        assert all(len(described[n]["partitions"]) == 3 for n in names)
        assert _retention(admin, f"{kafka_settings.topic_prefix}deadletter") == 14 * 24 * 3600_000
        assert _retention(admin, f"{kafka_settings.topic_prefix}sync.commands") == 7 * 24 * 3600_000
    finally:
        admin.close()


def test_cli_topics_ensure_uses_configured_partitions(kafka_settings: Settings, tmp_path: Path):
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.kafka_bootstrap_servers,
        "CONTACTSYNC_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "CONTACTSYNC_TOPIC_PARTITIONS": "2",
    })
    exe = str(Path(sys.executable).parent / "contactsync")
    run = subprocess.run([exe, "topics", "ensure"], capture_output=True, text=True, env=env,
                         timeout=120, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("created") == len(ALL_TOPICS)
    again = subprocess.run([exe, "topics", "ensure"], capture_output=True, text=True, env=env,
                           timeout=120, check=False, cwd=tmp_path)
    assert again.returncode == 0 and "created" not in again.stdout
    admin = KafkaAdminClient(bootstrap_servers=kafka_settings.kafka_bootstrap_servers)
    try:
        topic = admin.describe_topics([f"{kafka_settings.topic_prefix}sync.commands"])[0]
        assert len(topic["partitions"]) == 2
    finally:
        admin.close()
