"""The payload of every message on the topics (docs/architecture.md "Flow").

| topic               | key                | message types                          |
|---------------------|--------------------|----------------------------------------|
| bc.notifications    | company id         | bc.notification                        |
| graph.notifications | subscription id    | graph.notification                     |
| graph.lifecycle     | subscription id    | graph.lifecycle                        |
| bc.contact.changes  | BC contact id      | bc.contact.changed                     |
| sync.commands       | user id            | sync.command                           |
| sync.results        | user id            | sync.result                            |
| deadletter          | the original key   | deadletter                             |

Notifications are hints, never data (docs/architecture.md 1): they carry what the service said,
nothing a
worker would write from. Only `bc.contact.changed` carries a snapshot, read from BC itself.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from contactsync.schemas.contacts import BcContact


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BcNotification(_Payload):
    """One item of a BC webhook notification, as received (BC docs: working with webhooks)."""

    subscription_id: str
    company_id: str = ""
    change_type: str = Field(description="created | updated | deleted | collection")
    resource: str
    last_modified: datetime | None = None
    received_at: datetime


class GraphNotification(_Payload):
    """One basic Graph change notification (Graph docs: change notifications): ids, never contact
    data."""

    subscription_id: str
    user_id: str = Field(description="Our user, resolved from the subscription by the webhook")
    change_type: str = Field(description="created | updated | deleted")
    resource: str
    contact_id: str = ""
    etag: str = ""
    received_at: datetime


class LifecycleEvent(StrEnum):
    REAUTHORIZATION_REQUIRED = "reauthorizationRequired"
    SUBSCRIPTION_REMOVED = "subscriptionRemoved"
    MISSED = "missed"


class GraphLifecycle(_Payload):
    subscription_id: str
    user_id: str
    event: LifecycleEvent
    received_at: datetime


class BcChangeKind(StrEnum):
    UPSERT = "upsert"
    DELETED = "deleted"


class BcContactChanged(_Payload):
    """A BC contact's state after a change, read from BC by the change feed."""

    company_id: str
    contact_id: str
    kind: BcChangeKind
    snapshot: BcContact | None = Field(
        default=None, description="The full contact as BC returned it; None for deletions"
    )
    last_modified: datetime | None = None

    @classmethod
    def upsert(cls, company_id: str, contact: BcContact) -> BcContactChanged:
        """The change a contact as BC returned it stands for (its modified time in UTC)."""
        modified = contact.last_modified_date_time
        if modified is not None and modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return cls(company_id=company_id, contact_id=contact.id, kind=BcChangeKind.UPSERT,
                   snapshot=contact, last_modified=modified)

    @property
    def version(self) -> str:
        """What tells this version of the contact apart: its ETag, else its modified time."""
        etag = self.snapshot.etag if self.snapshot is not None else ""
        return etag or str(self.last_modified)


_BC_CHANGE_IDS = uuid.UUID("0d7c3a52-2f0e-4b8e-9c41-6a2b1f9e7d13")  # namespace of their ids


def bc_change_event_id(change: BcContactChanged, version: str) -> str:
    """The message id of a BC change at `version` (its ETag, or its modified time). The change
    feed and the applier that made the change both publish it; one id for both makes the
    second a duplicate that the router's derived command ids and the applier recognise."""
    return uuid.uuid5(_BC_CHANGE_IDS, f"{change.company_id}\x1f{change.contact_id}\x1f"
                                      f"{change.kind}\x1f{version}").hex


class CommandKind(StrEnum):
    BC_CHANGE = "bc_change"  # one BC contact changed: plan it for this user
    GRAPH_HINT = "graph_hint"  # something changed in the user's folder: read the Graph delta
    SYNC = "sync"  # "Sync": changes since the last sync, both ways
    FULL_SYNC = "full_sync"  # "Full sync" / reconcile: everything, both ways


class SyncCommand(_Payload):
    user_id: str
    kind: CommandKind
    bc_change: BcContactChanged | None = None
    reason: str = ""
    run_id: str = Field(default="", description="Groups the commands of one reconcile run")
    dry_run: bool = False
    force: bool = Field(default=False, description="Override the mass-delete safety rail")
    expires_at: datetime | None = Field(
        default=None, description="v2: an applier that takes the command later drops it "
        "with an `expired` result instead of running it (None: no deadline)")


class ResultStatus(StrEnum):
    OK = "ok"
    STOPPED = "stopped"  # a safety rail stopped the run for this user
    FAILED = "failed"
    EXPIRED = "expired"  # v2: the command's deadline passed before an applier took it


class SyncResult(_Payload):
    user_id: str
    command_id: str
    kind: CommandKind
    run_id: str = ""
    status: ResultStatus
    dry_run: bool = False
    summary: dict[str, int] = Field(default_factory=dict)
    skipped: dict[str, int] = Field(default_factory=dict, description="count by reason")
    reason: str = ""
    duration_ms: int = 0
    plan: list[str] = Field(default_factory=list,
                            description="v2: a dry run's writes, by contact (email masked)")


class DeadLetter(_Payload):
    """An input that could not be applied, with enough context to replay it."""

    source_topic: str
    partition: int
    offset: int
    key: str | None = None
    value: str = Field(description="The original message, as text (undecodable bytes escaped)")
    reason: str
    error_type: str = ""
    attempts: int = 1
    failed_at: datetime = Field(description="When the worker gave up: the last failure")
    # v2: when the first attempt failed (v1 letters lack it: read failed_at for both).
    first_failed_at: datetime | None = None
    headers: dict[str, str] = Field(default_factory=dict)


# Message type name -> (payload model, current schema version). The envelope's `type` and
# `schema_version` select the model; a consumer refuses versions newer than it knows.
MESSAGE_TYPES: dict[str, tuple[type[BaseModel], int]] = {
    "bc.notification": (BcNotification, 1),
    "graph.notification": (GraphNotification, 1),
    "graph.lifecycle": (GraphLifecycle, 1),
    "bc.contact.changed": (BcContactChanged, 1),
    "sync.command": (SyncCommand, 2),  # v2: expires_at
    "sync.result": (SyncResult, 2),  # v2: status `expired`, a dry run's plan
    "deadletter": (DeadLetter, 2),  # v2: first_failed_at
}


def type_of(payload: BaseModel) -> str:
    for name, (model, _) in MESSAGE_TYPES.items():
        if type(payload) is model:
            return name
    raise KeyError(f"{type(payload).__name__} is not a message payload")


def payload_json_schema(name: str) -> dict[str, Any]:
    model, _ = MESSAGE_TYPES[name]
    return model.model_json_schema()
