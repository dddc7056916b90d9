"""The Kafka runtime's own failure: a broker that cannot be used as configured."""

from __future__ import annotations

from contactsync.errors import ContactsyncError


class BrokerError(ContactsyncError, RuntimeError):
    """Kafka cannot be used as configured (no broker, refused security settings, missing
    topics), or the local development broker could not be fetched, started or stopped; the
    message says what to do."""
