"""Fixtures shared by the whole suite."""

import logging
import os
import tempfile
from collections.abc import Iterator

import pytest

from tests.kafka_fixtures import kafka, kafka_settings, secured_kafka, topic_prefix

__all__ = ["kafka", "kafka_settings", "secured_kafka", "topic_prefix"]


def pytest_configure() -> None:
    # The default state directory is the user's (~/.local/state/contactsync): a test that
    # forgets to choose one writes into a throwaway directory, never into the real home.
    os.environ.setdefault("CONTACTSYNC_STATE_DIR",
                          tempfile.mkdtemp(prefix="contactsync-test-state-"))


@pytest.fixture(autouse=True)
def _library_log_levels_restored() -> Iterator[None]:
    """A one-shot command run in process (CliRunner) quiets library loggers for good, as it
    should in its own process; here the next test gets them back as they were."""
    from contactsync.cli.common import _LIBRARIES

    levels = {name: logging.getLogger(name).level for name in _LIBRARIES}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
