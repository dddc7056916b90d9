"""The image's own scripts (deploy/bin), run here as the image runs them: the entrypoint turns
secret files into variables before the role starts, and the HEALTHCHECK reports the role's
/readyz in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from contactsync.kafka.local_broker import free_port
from contactsync.kafka.topics import ensure_topics_at, topic_specs
from contactsync.settings import Settings
from tests.kafka_fixtures import role_env
from tests.pipeline.test_end_to_end import eventually

BIN = Path(__file__).resolve().parents[2] / "deploy" / "bin"


def image_env(**extra: str) -> dict[str, str]:
    """The image's PATH: its scripts and the installed `contactsync`."""
    path = f"{BIN}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, **extra}


def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BIN / "contactsync-healthcheck")],
                          env=image_env(CONTACTSYNC_HEALTH_PORT=str(port)),
                          capture_output=True, text=True, timeout=30, check=False)


def test_the_healthcheck_fails_in_one_line_when_the_role_does_not_answer():
    port = free_port()
    result = healthcheck(port)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"http://127.0.0.1:{port}/readyz: ")


@pytest.mark.kafka
def test_a_role_started_by_the_entrypoint_reads_its_secret_files_and_turns_healthy(
        kafka_settings: Settings, tmp_path: Path):
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    # Compose mounts each secret as a file named after its variable; here the broker address
    # comes only from such a file: without it the role could not reach Kafka and be ready.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = role_env(kafka_settings)
    (secrets / "KAFKA_BOOTSTRAP_SERVERS").write_text(env.pop("KAFKA_BOOTSTRAP_SERVERS"))
    (secrets / "not-a-variable.pem").write_text("left alone")
    port = free_port()
    launch_env = image_env(**env, CONTACTSYNC_SECRETS_DIR=str(secrets),
                           CONTACTSYNC_STATE_DIR=str(tmp_path / "state"))
    launch_env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    role = subprocess.Popen(["sh", str(BIN / "contactsync-entrypoint"), "router",
                             "--metrics-port", str(port)], env=launch_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def healthy() -> bool:
            assert role.poll() is None, role.stderr.read().decode() if role.stderr else ""
            return healthcheck(port).returncode == 0

        eventually(healthy, timeout=60, what="the router's HEALTHCHECK")
    finally:
        role.terminate()
        role.wait(timeout=30)


@pytest.mark.kafka
def test_the_setup_migrates_a_new_store_and_creates_the_topics(kafka_settings: Settings,
                                                               tmp_path: Path):
    env = image_env(**{**role_env(kafka_settings),
                       "CONTACTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"},
                    CONTACTSYNC_SECRETS_DIR=str(tmp_path / "no-secrets"))
    for _ in range(2):  # compose restarts it on failure, a Job retries it: safe to run again
        setup = subprocess.run(["sh", str(BIN / "contactsync-setup")], env=env,
                               capture_output=True, text=True, timeout=120, check=False)
        assert setup.returncode == 0, setup.stdout + setup.stderr
    status = subprocess.run(["contactsync", "db", "status", "--json"], env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(status.stdout)["current"] is True
    admin = KafkaAdminClient(bootstrap_servers=kafka_settings.kafka_bootstrap_servers)
    try:
        present = set(admin.list_topics())
    finally:
        admin.close()
    assert {spec.name for spec in topic_specs(kafka_settings)} <= present
