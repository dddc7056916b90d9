"""The state store (docs/architecture.md 4 and 11): setups, links, sync state, subscriptions,
audit.

SQLAlchemy 2 Core over SQLite (embedded default) or PostgreSQL (several workers). Every function
returns our own types (UserSetup, Link, the dataclasses in `records`), never database rows.
"""

from contactsync.store.db import create_db_engine, normalize_url
from contactsync.store.migrations import LATEST_VERSION, MIGRATIONS, current_version, migrate
from contactsync.store.records import (
    AuditKind,
    AuditRecord,
    FolderTakenError,
    LinkConflictError,
    SchemaTooNewError,
    SetupExistsError,
    SetupNotFoundError,
    SetupStoppedError,
    StoreError,
    Subscription,
    SubscriptionService,
    UserSyncState,
)
from contactsync.store.store import Store, Transaction
from contactsync.store.sync_state import UNSET

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "UNSET",
    "AuditKind",
    "AuditRecord",
    "FolderTakenError",
    "LinkConflictError",
    "SchemaTooNewError",
    "SetupExistsError",
    "SetupNotFoundError",
    "SetupStoppedError",
    "Store",
    "StoreError",
    "Subscription",
    "SubscriptionService",
    "Transaction",
    "UserSyncState",
    "create_db_engine",
    "current_version",
    "migrate",
    "normalize_url",
]
