"""Echo suppression, decided here only (docs/architecture.md 5): a version of a contact that our
own write produced, or an older one, is not a change. The planner's rules ask these; the router
asks `outlook_echo` before it reads a delta for a notification; nothing else decides it.

Pure: a contact's versions against the link that recorded our last write or read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from contactsync.engine import mapping as m
from contactsync.engine.links import Link


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def change_key_of(etag: str) -> str:
    """`W/"<changeKey>"` (or a bare changeKey) -> the changeKey."""
    value = etag.strip()
    value = value[2:] if value.startswith("W/") else value
    return value.strip('"')


def outlook_echo(change_key: str, held: str | None) -> bool:
    """This Outlook version is the one the link recorded (`held`, its changeKey): our own
    write (or read) coming back, nothing changed since."""
    return bool(change_key) and change_key == held


def bc_echo(bc: Mapping[str, Any], link: Link) -> bool:
    """The BC contact still carries the version its link recorded (its ETag, or else its
    modified time): it has not changed since, and no content need be compared."""
    etag = m.as_text(bc.get("@odata.etag"))
    if etag and etag == link.bc_etag:
        return True
    modified = parse_time(bc.get("lastModifiedDateTime"))
    return modified is not None and modified == link.bc_modified


def bc_stale(bc: Mapping[str, Any], link: Link | None) -> bool:
    """A BC snapshot older than the version the link holds (we wrote, or already applied, a
    newer one; BC's modified time only grows): applying it would push old values back to
    Outlook, an echo write and a second one to undo it. It counts as not read."""
    held = link.bc_modified if link is not None else None
    modified = parse_time(bc.get("lastModifiedDateTime"))
    return held is not None and modified is not None and modified < held
