"""A small, explicit schema-migration runner.

`schema_version` holds one row per applied step. `MIGRATIONS` is the ordered list of steps;
each is a function that changes the schema with the connection it is given. `migrate()` runs
at open: it applies the steps the database lacks, all in one transaction, and does nothing when
the database is current.

Two processes starting at once: on PostgreSQL the transaction first takes an advisory lock, so
the second waits, then sees the first's work and finds nothing to do (DDL is transactional
there). On SQLite the transaction begins IMMEDIATE, which serialises writers the same way.

Steps are frozen history: each defines the tables as they were when it was written, never by
importing `tables.py` (which shows the schema as of today). A schema change is a new step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    inspect,
    select,
    text,
)

from contactsync.store.records import SchemaTooNewError
from contactsync.store.tables import NAMING_CONVENTION, schema_version
from contactsync.store.types import JsonType, UtcDateTime

# pg_advisory_xact_lock key: "contsync" as a big-endian 64-bit integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"contsync", "big")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_core(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "user_setups",
        md,
        Column("user_id", String, primary_key=True),
        Column("mailbox", String, nullable=False),
        Column("folder_name", String(255), nullable=False),
        Column("contact_filter", JsonType, nullable=False),
        Column("enabled", Boolean, nullable=False),
        Column("create_in_bc", Boolean, nullable=False),
        Column("outlook_delete_policy", String(16), nullable=False),
        Column("max_delete_share", Float, nullable=False),
        Column("max_delete_floor", Integer, nullable=False),
        Column("created_at", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
    )
    user_fk = ForeignKey("user_setups.user_id", ondelete="CASCADE")
    Table(
        "links",
        md,
        Column("user_id", String, user_fk, primary_key=True),
        Column("bc_id", String, primary_key=True),
        Column("graph_id", String, nullable=False),
        Column("bc_etag", String, nullable=False),
        Column("bc_modified", UtcDateTime),
        Column("graph_change_key", String, nullable=False),
        Column("synced_hash", String, nullable=False),
        Column("origin", String(16), nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        UniqueConstraint("user_id", "graph_id"),
        Index(None, "bc_id"),
    )
    Table(
        "user_sync_state",
        md,
        Column(
            "user_id",
            String,
            ForeignKey("user_setups.user_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("delta_link", Text),
        Column("last_sync_at", UtcDateTime),
        Column("last_full_sync_at", UtcDateTime),
        Column("updated_at", UtcDateTime, nullable=False),
    )
    Table(
        "company_watermarks",
        md,
        Column("company", String, primary_key=True),
        Column("watermark", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
    )
    md.create_all(conn)


def _v2_subscriptions_audit_dedupe(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "subscriptions",
        md,
        Column("subscription_id", String, primary_key=True),
        Column("service", String(16), nullable=False),
        Column("user_id", String),
        Column("company", String),
        Column("resource", Text, nullable=False),
        Column("client_state", Text, nullable=False),
        Column("expiration", UtcDateTime, nullable=False),
        Column("notification_url", Text, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        Index(None, "service", "user_id"),
        Index(None, "expiration"),
    )
    Table(
        "audit_records",
        md,
        Column(
            "id",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("user_id", String, nullable=False),
        Column("kind", String(64), nullable=False),
        Column("bc_id", String),
        Column("graph_id", String),
        Column("details", JsonType, nullable=False),
        Column("at", UtcDateTime, nullable=False),
        Index(None, "user_id", "kind", "at"),
        Index(None, "kind", "at"),
    )
    Table(
        "processed_events",
        md,
        Column("consumer_group", String, primary_key=True),
        Column("event_id", String, primary_key=True),
        Column("processed_at", UtcDateTime, nullable=False),
        Index(None, "processed_at"),
    )
    md.create_all(conn)


def _v3_one_setup_per_folder(conn: Connection) -> None:
    """Each setup's folder identity, and the key that gives a folder to one setup only.

    A store may already hold setups sharing a folder (a case variant of the mailbox, or the
    same mailbox under another user id): the earliest keeps the folder, each later one is
    marked as sharing it (stopped, never synced) and reported by `users validate`."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    setups = Table(
        "user_setups", md,
        Column("user_id", String, primary_key=True),
        Column("mailbox", String, nullable=False),
        Column("folder_name", String(255), nullable=False),
        Column("created_at", UtcDateTime, nullable=False),
        Column("mailbox_id", String, nullable=False, server_default=""),
        Column("mailbox_key", String, nullable=False, server_default=""),
        Column("folder_key", String(255), nullable=False, server_default=""),
        Column("shares_folder_with", String),
    )
    for ddl in ("mailbox_id VARCHAR NOT NULL DEFAULT ''",
                "mailbox_key VARCHAR NOT NULL DEFAULT ''",
                "folder_key VARCHAR(255) NOT NULL DEFAULT ''",
                "shares_folder_with VARCHAR"):
        conn.execute(text(f"ALTER TABLE user_setups ADD COLUMN {ddl}"))
    rows = conn.execute(select(setups.c.user_id, setups.c.mailbox, setups.c.folder_name)
                        .order_by(setups.c.created_at, setups.c.user_id)).all()
    holders: dict[tuple[str, str], str] = {}
    for user_id, mailbox, folder_name in rows:
        key = (mailbox.lower(), folder_name.lower())  # as setups.folder_identity did then
        holder = holders.setdefault(key, user_id)
        conn.execute(setups.update().where(setups.c.user_id == user_id).values(
            mailbox_key=key[0], folder_key=key[1],
            shares_folder_with=None if holder == user_id else holder))
    Index("uq_user_setups_folder", setups.c.mailbox_key, setups.c.folder_key, unique=True,
          sqlite_where=text("shares_folder_with IS NULL"),
          postgresql_where=text("shares_folder_with IS NULL")).create(conn)


def _v4_drop_processed_events(conn: Connection) -> None:
    """Processed event ids were written by nothing and read by nothing: every effect of the
    pipeline is idempotent by itself (docs/architecture.md, decision 9)."""
    conn.execute(text("DROP TABLE IF EXISTS processed_events"))  # its index goes with it


def _v5_link_synced_content(conn: Connection) -> None:
    """The content as last synced beside each link's versions: the near-real-time path answers
    a read from it after a restart. Links saved before have none (NULL) and are read."""
    conn.execute(text("ALTER TABLE links ADD COLUMN synced_content TEXT"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "user setups, links, sync state, company watermarks", _v1_core),
    Migration(2, "subscriptions, audit records, processed events", _v2_subscriptions_audit_dedupe),
    Migration(3, "one setup per Outlook folder of a mailbox", _v3_one_setup_per_folder),
    Migration(4, "no processed events table (never read)", _v4_drop_processed_events),
    Migration(5, "links keep the content as last synced", _v5_link_synced_content),
)
LATEST_VERSION = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The schema version of the database behind `conn`; 0 for an empty database."""
    if not inspect(conn).has_table(schema_version.name):
        return 0
    return int(
        conn.execute(select(func.coalesce(func.max(schema_version.c.version), 0))).scalar_one()
    )


def migrate(engine: Engine, *, target: int = LATEST_VERSION) -> list[int]:
    """Bring the schema up to `target`; return the versions applied (empty when current)."""
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"target must be within 0..{LATEST_VERSION}, not {target}")
    with engine.begin() as conn:  # one transaction; SQLite: BEGIN IMMEDIATE (see db.py)
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        schema_version.create(conn, checkfirst=True)
        current = current_version(conn)
        if current > LATEST_VERSION:
            raise SchemaTooNewError(
                f"the database is at schema version {current}; this code knows up to "
                f"{LATEST_VERSION}: upgrade contactsync"
            )
        applied: list[int] = []
        for step in MIGRATIONS:
            if current < step.version <= target:
                step.apply(conn)
                conn.execute(
                    schema_version.insert().values(
                        version=step.version,
                        description=step.description,
                        applied_at=datetime.now(UTC),
                    )
                )
                applied.append(step.version)
        return applied
