"""Who a dry run's planned writes concern: "Jane Doe <j***@contoso.com>", not an opaque id.

The name comes from the write itself where it carries one (a create, an update of Outlook),
else from the contacts the run read (a delete carries only the Outlook id). Emails are masked
as the logs mask them (contactsync.logs): a plan is pasted into tickets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contactsync.engine.actions import (
    Action,
    CreateInBc,
    CreateInOutlook,
    DeleteFromOutlook,
    Skip,
    UpdateBc,
    UpdateOutlook,
)
from contactsync.engine.compact import ContentNotRead
from contactsync.engine.mapping import graph_email
from contactsync.logs import redact_text


def _email(contact: Mapping[str, Any]) -> str:
    email = contact.get("email")
    if email:
        return str(email)
    addresses = contact.get("emailAddresses")
    if isinstance(addresses, Sequence) and addresses:  # dicts, or compact records (.get too)
        get = getattr(addresses[0], "get", None)
        return str(get("address") or "") if get is not None else ""
    return ""


def label(contact: Mapping[str, Any]) -> str:
    """'Display Name <m***@domain>' (or whichever of the two is known)."""
    try:
        name = str(contact.get("displayName") or "").strip()
        email = redact_text(_email(contact))
    except ContentNotRead:  # a full sync's stub of an unchanged contact: no name kept
        name, email = "", redact_text(graph_email(contact))
    if name and email:
        return f"{name} <{email}>"
    return name or (f"<{email}>" if email else "")


def _ids(action: Action) -> tuple[str, str]:
    return str(getattr(action, "bc_id", "") or ""), str(getattr(action, "graph_id", "") or "")


def plan_lines(writes: Sequence[Action], read: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per planned write: what it does, to whom, and the ids to look it up."""
    wanted = {i for action in writes for i in _ids(action) if i}
    known = {str(c.get("id")): c for c in read if str(c.get("id")) in wanted}
    lines = []
    for action in writes:
        bc_id, graph_id = _ids(action)
        carried: Mapping[str, Any] = {}
        if isinstance(action, CreateInOutlook | UpdateOutlook | CreateInBc):
            carried = action.fields
        elif isinstance(action, UpdateBc):
            carried = action.changes
        who = label(carried) or label(known.get(bc_id, {})) or label(known.get(graph_id, {}))
        ids = " ".join(f"{side}={i}" for side, i in (("bc", bc_id), ("outlook", graph_id)) if i)
        verb = _VERBS.get(type(action), type(action).__name__)
        if isinstance(action, DeleteFromOutlook):
            verb += f" ({action.reason})"
        lines.append(f"{verb:<28} {who or '(no name)'}  [{ids}]")
    return lines


SKIPPED_LISTED = 100  # contacts named per reason in a run's report; the counts say the rest


def skipped_contacts(actions: Iterable[Action], read: Iterable[Mapping[str, Any]],
                     ) -> dict[str, list[str]]:
    """The contacts a run skipped, by reason: 'Jane Doe <j***@contoso.com>  [bc=...]'."""
    skips = [a for a in actions if isinstance(a, Skip)]
    if not skips:
        return {}
    wanted = {i for skip in skips for i in _ids(skip) if i}
    known = {str(c.get("id")): c for c in read if str(c.get("id")) in wanted}
    named: dict[str, list[str]] = {}
    for skip in skips:
        listed = named.setdefault(str(skip.reason), [])
        if len(listed) < SKIPPED_LISTED:
            bc_id, graph_id = _ids(skip)
            who = label(known.get(bc_id, {})) or label(known.get(graph_id, {}))
            ids = " ".join(f"{side}={i}" for side, i in (("bc", bc_id), ("outlook", graph_id))
                           if i)
            listed.append(f"{who or '(no name)'}  [{ids}]")
    return dict(sorted(named.items()))


_VERBS: dict[type, str] = {
    CreateInOutlook: "create in Outlook",
    UpdateOutlook: "update in Outlook",
    DeleteFromOutlook: "remove from Outlook",
    CreateInBc: "create in BC",
    UpdateBc: "update in BC",
}
