"""The link record: what we know about one BC contact <-> Outlook contact pair of one user.

It is the third input of the planner (with the two sides' states) and what the link store
persists. Versions and the hash of the fields as last synced make echo suppression possible: a
side whose version or content equals what we last wrote has not changed (docs/architecture.md 4 and
5).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


def canon_bc_id(bc_id: str) -> str:
    """A BC contact id in the one form we store and compare. BC ids are GUIDs, whose case
    means nothing (a tag written by another tool, a notification's resource path may differ):
    lower case, as BC itself writes them."""
    canon = bc_id.strip().lower()
    # The same object when it is canonical already (BC writes lower case): a 100k-contact Full
    # sync keeps each id shared by its link, record and tables instead of copying it (~25 MB).
    return bc_id if canon == bc_id else canon


class LinkOrigin(StrEnum):
    BC = "bc"  # we created the Outlook contact from BC
    OUTLOOK = "outlook"  # we created the BC contact from Outlook
    MATCHED = "matched"  # both existed; linked by email (or by our BC-id property)


class SyncMode(StrEnum):
    SYNC = "sync"  # changes since the last sync, both ways
    FULL = "full"  # everything, both ways, whatever the dates say


@dataclass(frozen=True, slots=True)
class Link:
    user_id: str
    bc_id: str
    graph_id: str
    bc_etag: str = ""
    bc_modified: datetime | None = None
    graph_change_key: str = ""
    synced_hash: str = ""  # hash of the canonical fields as last written to both sides
    origin: LinkOrigin = LinkOrigin.MATCHED
    updated_at: datetime | None = None
