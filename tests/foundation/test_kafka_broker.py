"""The real broker: produce, consume, survive a restart with nothing lost or doubled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaAdminClient

from contactsync.kafka.io import make_consumer, make_producer
from tests.kafka_fixtures import KafkaHandle


def _create(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": 1}},
            wait_for_metadata=True,
        )
    finally:
        admin.close()


def _read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[bytes]:
    consumer = make_consumer(bootstrap, f"g-{topic}", topic)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(values) < expected:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
        # One more poll: anything beyond `expected` would be a duplicate.
        for records in consumer.poll(timeout_ms=1000).values():
            values.extend(r.value for r in records)
    finally:
        consumer.close()
    return values


def test_messages_produced_are_consumed_in_order_per_key(kafka: KafkaHandle, topic_prefix: str):
    topic = f"{topic_prefix}orders"
    _create(kafka.bootstrap, topic, partitions=3)
    producer = make_producer(kafka.bootstrap)
    for i in range(60):
        producer.send(topic, key=f"user-{i % 4}".encode(), value=f"{i % 4}:{i}".encode())
    producer.flush()
    producer.close()
    values = _read_all(kafka.bootstrap, topic, 60)
    assert len(values) == 60
    for user in range(4):
        seq = [int(v.split(b":")[1]) for v in values if v.startswith(f"{user}:".encode())]
        assert seq == sorted(seq), "one key's messages must stay in order"


def test_restart_between_sends_loses_and_duplicates_nothing(kafka: KafkaHandle, topic_prefix: str):
    topic = f"{topic_prefix}restart"
    _create(kafka.bootstrap, topic)
    producer = make_producer(kafka.bootstrap, retry_backoff_ms=200)
    first = [producer.send(topic, value=f"m{i}".encode()) for i in range(100)]
    producer.flush()
    assert all(f.is_done and f.succeeded() for f in first)

    kafka.restart()  # the same address comes back; the producer reconnects by itself

    second = [producer.send(topic, value=f"m{i}".encode()) for i in range(100, 200)]
    producer.flush(timeout=60)
    assert all(f.succeeded() for f in second)
    producer.close()

    values = _read_all(kafka.bootstrap, topic, 200)
    assert sorted(values, key=lambda v: int(v[1:])) == [f"m{i}".encode() for i in range(200)]
    assert len(values) == len(set(values)) == 200


def test_cli_up_prints_an_address_another_process_can_use_and_down_leaves_no_java(
    tmp_path: Path,
):
    exe = str(Path(sys.executable).parent / "contactsync")
    data_dir = tmp_path / "broker"
    up = subprocess.run([exe, "kafka", "up", "--data-dir", str(data_dir)],
                        capture_output=True, text=True, timeout=180, check=False)
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip().splitlines()[-1]
    assert bootstrap.startswith("127.0.0.1:")
    pid = int((data_dir / "broker.pid").read_text())
    try:
        # Another process (a fresh interpreter) uses the printed address.
        probe = subprocess.run(
            [sys.executable, "-c",
             "import sys; from kafka import KafkaAdminClient; "
             "a = KafkaAdminClient(bootstrap_servers=sys.argv[1]); a.list_topics(); print('ok')",
             bootstrap],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert probe.stdout.strip() == "ok", probe.stderr
        status = subprocess.run([exe, "kafka", "status", "--data-dir", str(data_dir)],
                                capture_output=True, text=True, timeout=30, check=False)
        assert status.returncode == 0 and bootstrap in status.stdout
        as_json = subprocess.run([exe, "kafka", "status", "--data-dir", str(data_dir), "--json"],
                                 capture_output=True, text=True, timeout=30, check=False)
        assert json.loads(as_json.stdout) == {"running": True, "pid": pid,
                                              "bootstrap": bootstrap, "data_dir": str(data_dir)}
    finally:
        down = subprocess.run([exe, "kafka", "down", "--data-dir", str(data_dir)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not Path(f"/proc/{pid}").exists(), "the broker's JVM must be gone"
    status = subprocess.run([exe, "kafka", "status", "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert status.returncode == 3 and "stopped" in status.stdout


def test_missing_java_or_maven_is_one_clear_sentence(tmp_path: Path):
    exe = str(Path(sys.executable).parent / "contactsync")
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["PATH"] = str(Path(sys.executable).parent)  # no java, no mvn
    env["XDG_CACHE_HOME"] = str(tmp_path / "empty-cache")  # nothing cached either
    assert shutil.which("java", path=env["PATH"]) is None
    result = subprocess.run([exe, "kafka", "up", "--data-dir", str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 1
    message = result.stderr.strip()
    assert message.count("\n") == 0, "one sentence, no traceback"
    assert "install" in message and "KAFKA_BOOTSTRAP_SERVERS" in message
