"""What the store returns besides `UserSetup` and `Link`, and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from contactsync.errors import ContactsyncError


class StoreError(ContactsyncError):  # the project's error root (contactsync.errors)
    """Base of the store's own errors."""


class SetupExistsError(StoreError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"a setup for user {user_id!r} already exists")
        self.user_id = user_id


class SetupNotFoundError(StoreError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"no setup for user {user_id!r}")
        self.user_id = user_id


class FolderTakenError(StoreError):
    """A setup would sync an Outlook folder another setup already syncs."""

    def __init__(self, folder_name: str, mailbox: str, holder: str) -> None:
        super().__init__(
            f"folder {folder_name!r} of mailbox {mailbox} already belongs to setup {holder!r}: "
            "two setups in one folder delete each other's contacts; choose another --folder, "
            f"or change that setup (contactsync users show {holder})"
        )
        self.holder = holder


class SetupStoppedError(StoreError):
    """The setup may not sync: it shares its folder with an earlier setup."""


class LinkConflictError(StoreError):
    """A write would link one Outlook contact to two BC contacts of the same user."""


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer contactsync than this one."""


@dataclass(frozen=True, slots=True)
class UserSyncState:
    """Where a user's sync stands. Empty (all None) until the first sync."""

    user_id: str
    delta_link: str | None = None  # Graph delta link of the user's folder
    last_sync_at: datetime | None = None
    last_full_sync_at: datetime | None = None
    updated_at: datetime | None = None


class SubscriptionService(StrEnum):
    GRAPH = "graph"
    BC = "bc"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A webhook subscription we hold at Graph (per user) or BC (per company)."""

    subscription_id: str
    service: SubscriptionService
    resource: str
    # The shared secret every notification must echo back: kept out of repr (and so of logs).
    client_state: str = field(repr=False)
    expiration: datetime
    notification_url: str
    user_id: str | None = None
    company: str | None = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        if not (self.user_id or self.company):
            raise ValueError("a subscription belongs to a user_id or a company")


class AuditKind(StrEnum):
    """The kinds the sync writes; `AuditRecord.kind` accepts any other string too."""

    CONFLICT = "conflict"  # both sides changed; BC won, the Outlook version is in details
    DUPLICATE = "duplicate"
    RECONCILE_REPORT = "reconcile_report"
    SKIPPED = "skipped"
    DELETE_RAIL = "delete_rail"  # a run stopped by the delete safety rail


@dataclass(frozen=True, slots=True)
class AuditRecord:
    user_id: str
    kind: str
    bc_id: str | None = None
    graph_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None  # None: the store stamps the time of writing
    id: int | None = None  # given by the store
