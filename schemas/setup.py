"""A user's sync setup: the "Contact Sync with Office 365" setup page, one per user."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class OutlookDeletePolicy(StrEnum):
    """What to do when a synced contact is deleted in Outlook (BC is master: never delete BC)."""

    RECREATE = "recreate"  # BC's behaviour: the next sync puts it back
    UNLINK = "unlink"  # forget the link; the contact stays out of this folder


class UserSetup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(
        min_length=1, description="Our id for the user (the mailbox UPN by default)"
    )
    mailbox: str = Field(min_length=1, description="Graph user id or userPrincipalName")
    folder_name: str = Field(default="Business Central", min_length=1, max_length=255)
    # Field name (BC API property, e.g. "city") -> expression in BC filter syntax.
    contact_filter: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    create_in_bc: bool = Field(
        default=True, description="New Outlook contacts with name and email are created in BC"
    )
    outlook_delete_policy: OutlookDeletePolicy = OutlookDeletePolicy.RECREATE
    # Safety rail: a run that would remove more than this share (and more than the floor) of the
    # user's folder stops and reports instead.
    max_delete_share: float = Field(default=0.10, ge=0, le=1)
    max_delete_floor: int = Field(default=20, ge=0)
