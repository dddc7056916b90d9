"""The tables as the code queries them today (SQLAlchemy Core).

The schema itself is created and changed only by the steps in `migrations.py`; a test checks
that the migrated database has exactly these tables, columns and indexes. A change here needs
a new migration step there.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from contactsync.store.types import JsonType, UtcDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(naming_convention=NAMING_CONVENTION)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

user_setups = Table(
    "user_setups",
    metadata,
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
    Column("mailbox_id", String, nullable=False, server_default=""),
    # The folder's identity: Graph's user id (else the mailbox as typed) and the folder name,
    # both lower-cased, as Outlook matches folder names and Graph matches UPNs.
    Column("mailbox_key", String, nullable=False, server_default=""),
    Column("folder_key", String(255), nullable=False, server_default=""),
    Column("shares_folder_with", String),
    # One folder of one mailbox belongs to at most one setup. Only setups stored before this
    # key existed may share one: they carry `shares_folder_with` and are stopped.
    Index("uq_user_setups_folder", "mailbox_key", "folder_key", unique=True,
          sqlite_where=text("shares_folder_with IS NULL"),
          postgresql_where=text("shares_folder_with IS NULL")),
)

# A user's links go with the user's setup (ON DELETE CASCADE): without a setup they mean nothing.
links = Table(
    "links",
    metadata,
    Column(
        "user_id",
        String,
        ForeignKey("user_setups.user_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("bc_id", String, primary_key=True),
    Column("graph_id", String, nullable=False),
    Column("bc_etag", String, nullable=False),
    Column("bc_modified", UtcDateTime),
    Column("graph_change_key", String, nullable=False),
    Column("synced_hash", String, nullable=False),
    Column("origin", String(16), nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # Both sides as last synced (engine/synced.py; JSON text), NULL when not known. Read only
    # by the near-real-time path for the ids a change touches, never with a user's links.
    Column("synced_content", Text),
    # One Outlook contact is linked to at most one BC contact per user.
    UniqueConstraint("user_id", "graph_id"),
    # The router asks "which users hold a link to this BC contact?".
    Index(None, "bc_id"),
)

user_sync_state = Table(
    "user_sync_state",
    metadata,
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

company_watermarks = Table(
    "company_watermarks",
    metadata,
    Column("company", String, primary_key=True),
    Column("watermark", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# No foreign key to user_setups: a subscription outlives a removed setup until it is deleted
# at Graph/BC, and BC subscriptions belong to a company, not a user.
subscriptions = Table(
    "subscriptions",
    metadata,
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

# The audit log outlives the setups it talks about: no foreign key.
audit_records = Table(
    "audit_records",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("user_id", String, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("bc_id", String),
    Column("graph_id", String),
    Column("details", JsonType, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Index(None, "user_id", "kind", "at"),
    Index(None, "kind", "at"),
)

