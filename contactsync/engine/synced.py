"""A pair's content as last synced, kept in its link row (links.synced_content), so that the
near-real-time path can answer "what does the other side hold?" without a read after a
restart (sync/near_real_time.py). Pure: contacts in, a small JSON text out, and back.

A side kept here is that side's contact at the version the link records, as far as the
planner and the mapping read it:
- BC: its values of the synced fields (engine/fields.py), its type and privacy flag, and the
  filterable properties it carried (a user's filter is evaluated on them), with its ETag.
- Outlook: its changeKey, our BC-id tag if it carries it, and what an update keeps of
  Outlook's own: every email address, every business phone, the categories (a push rewrites
  those lists whole, so they must be the contact's, never guessed). Its mapped fields are
  BC's as synced: a push overwrites every one of them.

A contact made from it is "unchanged since we synced it"; the planner writes to it only with
If-Match on that version, so a side that did change answers 412 and the pair is read afresh
(plan_loop.replan_conflicts). A side that is not kept (a link saved before this column, a
stub of a full sync, a version that does not match) is read as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from contactsync.engine import mapping as m
from contactsync.engine.bcfilter import FILTERABLE_FIELDS
from contactsync.engine.compact import ContentNotRead
from contactsync.engine.fields import FIELDS
from contactsync.engine.links import Link

Contact = Mapping[str, Any]

# BC: the synced fields' properties, eligibility, and what a filter may name.
BC_KEPT: Final[tuple[str, ...]] = tuple(dict.fromkeys(
    [*(p for f in FIELDS for p in f.bc), "type", "privacyBlocked", *FILTERABLE_FIELDS]))
# Outlook: the lists an update keeps part of (mapping.graph_fields_from_canonical's `existing`).
OUTLOOK_LISTS: Final[tuple[str, ...]] = ("emailAddresses", "businessPhones", "categories")
_ETAG: Final = "@odata.etag"


def _plain(value: Any) -> Any:
    """A compact record's nested values (records, tuples) as JSON's dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def bc_side(bc: Contact) -> dict[str, Any] | None:
    """What is kept of a BC contact (None without an ETag: nothing to write against)."""
    etag = m.as_text(bc.get(_ETAG))
    if not etag:
        return None
    kept = {key: bc[key] for key in BC_KEPT if key in bc}
    kept[_ETAG] = etag
    return kept


def outlook_side(outlook: Contact, bc_id: str = "") -> dict[str, Any] | None:
    """What is kept of an Outlook contact; `bc_id`: the tag a write of ours just put on it (a
    PATCH answer leaves the tag out)."""
    try:
        key = m.graph_change_key(outlook)
        kept = {name: _plain(outlook.get(name) or []) for name in OUTLOOK_LISTS}
        kept["tag"] = bc_id or m.bc_id_of(outlook)
    except ContentNotRead:  # a full sync's stub: not the whole contact
        return None
    if not key:
        return None
    kept["changeKey"] = key
    return kept


def synced_text(bc: dict[str, Any] | None, outlook: dict[str, Any] | None) -> str | None:
    """The text kept in the link row for the two sides as kept (`bc_side`, `outlook_side`;
    None: unknown); None when neither is known."""
    content = {name: side for name, side in (("bc", bc), ("outlook", outlook))
               if side is not None}
    return orjson.dumps(content).decode() if content else None


def _loaded(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        content = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return content if isinstance(content, dict) else {}


def bc_at_link(link: Link, text: str | None,
               filter_fields: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The BC contact as last synced, at the link's ETag; None when not kept, kept at another
    version, or when the user's filter names a property it does not hold (read it then)."""
    kept = _loaded(text).get("bc")
    if not isinstance(kept, dict) or not link.bc_etag or kept.get(_ETAG) != link.bc_etag:
        return None
    if any(name not in kept for name in filter_fields):
        return None
    contact = dict(kept)
    contact["id"] = link.bc_id
    if link.bc_modified is not None:
        contact["lastModifiedDateTime"] = link.bc_modified.isoformat()
    return contact


def outlook_at_link(link: Link, text: str | None) -> dict[str, Any] | None:
    """The Outlook contact as last synced, at the link's changeKey: BC's synced values in
    Outlook's shape with Outlook's own lists and tag; None when not kept or at another version."""
    content = _loaded(text)
    kept, bc = content.get("outlook"), content.get("bc")
    if not isinstance(kept, dict) or not isinstance(bc, dict):
        return None
    key = link.graph_change_key
    if not key or kept.get("changeKey") != key:
        return None
    contact = m.graph_fields_from_canonical(m.canonical_from_bc(bc), link.bc_id)
    for name in OUTLOOK_LISTS:
        contact[name] = kept.get(name) or []
    tag = m.as_text(kept.get("tag"))
    contact["singleValueExtendedProperties"] = (
        [{"id": m.BC_ID_PROPERTY, "value": tag}] if tag else [])
    contact.update({"id": link.graph_id, "changeKey": key, _ETAG: f'W/"{key}"'})
    return contact
