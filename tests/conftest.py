"""Fixtures shared by the whole suite."""

import os
import tempfile

from tests.kafka_fixtures import kafka, kafka_settings, secured_kafka, topic_prefix

__all__ = ["kafka", "kafka_settings", "secured_kafka", "topic_prefix"]


def pytest_configure() -> None:
    # The default state directory is the user's (~/.local/state/contactsync): a test that
    # forgets to choose one writes into a throwaway directory, never into the real home.
    os.environ.setdefault("CONTACTSYNC_STATE_DIR",
                          tempfile.mkdtemp(prefix="contactsync-test-state-"))
