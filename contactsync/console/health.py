"""The Health page's checks, and the one sentence a failure shows on a page."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from contactsync.settings import Settings
from contactsync.store import Store

BROKER_TIMEOUT_MS = 5000  # a page must not hang on a broker that is down


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def sentence(exc: BaseException) -> str:
    """A failure as the CLI words it (one sentence, secrets redacted)."""
    from contactsync.cli.common import _known_failure
    from contactsync.logs import redact_secrets

    known = _known_failure(exc) if isinstance(exc, Exception) else None
    return redact_secrets(known or f"{type(exc).__name__}: {exc}")


def store_check(store: Store) -> Check:
    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        users = len(store.setups.list_all())
    except Exception as exc:
        return Check("Store", False, sentence(exc))
    return Check("Store", True, f"{store!r}: reachable, {users} user setup(s)")


def broker_check(settings: Settings) -> Check:
    try:
        from kafka import KafkaConsumer

        from contactsync.kafka.io import resolve_bootstrap

        bootstrap = resolve_bootstrap(settings)
        consumer = KafkaConsumer(bootstrap_servers=bootstrap,
                                 request_timeout_ms=BROKER_TIMEOUT_MS + 1000,
                                 api_version_auto_timeout_ms=BROKER_TIMEOUT_MS,
                                 client_id="contactsync-console-health")
        try:
            mine = sorted(t for t in consumer.topics() if t.startswith(settings.topic_prefix))
        finally:
            consumer.close()
    except Exception as exc:
        return Check("Kafka broker", False, sentence(exc))
    return Check("Kafka broker", True, f"{bootstrap}: reachable, {len(mine)} topic(s) of ours")


def checks(settings: Settings, store: Store) -> list[Check]:
    return [broker_check(settings), store_check(store)]
