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
    mailbox_id: str = Field(
        default="", description="Graph's id of the mailbox's user, resolved by `users add` "
        "('' when not resolved): one mailbox is one identity whatever alias names it"
    )
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
    # Set by the store, never by hand: a setup stored before one folder could belong to only
    # one setup, that shares its folder with an earlier setup (this one's user id), is stopped.
    shares_folder_with: str = Field(
        default="", description="The earlier setup whose Outlook folder this one shares: "
        "while set, this setup is stopped and never synced"
    )

    @property
    def stopped_reason(self) -> str:
        """Why this setup may not sync although it may be enabled ('' when nothing stops it)."""
        if not self.shares_folder_with:
            return ""
        return (
            f"setup {self.user_id!r} is stopped: it shares folder {self.folder_name!r} of "
            f"mailbox {self.mailbox} with setup {self.shares_folder_with!r}, and two setups "
            f"in one folder delete each other's contacts; give it a folder of its own "
            f"(contactsync users set {self.user_id} --folder NAME) or remove it"
        )

    @property
    def syncs(self) -> bool:
        """Enabled, and not stopped: the pipeline and the commands may sync it."""
        return self.enabled and not self.shares_folder_with
