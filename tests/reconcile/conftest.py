"""Reconcile tests reuse the sync tests' world: both emulators, a store, clients, one user."""

from collections.abc import Iterator

import pytest

from contactsync.logs import configure_logging
from tests.sync.conftest import emulators, world

__all__ = ["emulators", "world"]


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> Iterator[None]:
    """Logs go to stderr, never into a command's stdout (its JSON) when the CLI is invoked
    in process while roles log in other threads. The CLI points them at the runner's stream,
    closed after each invocation: point them back after, or the next log line fails."""
    configure_logging("WARNING", "json")
    yield
    configure_logging()
