"""`contactsync audit`: what the sync decided on its own, for an admin to review.

    audit [--user U] [--kind conflict|adopted|delete_rail|reconcile_report|duplicate]
          [--since 2026-12-01 | 3d | 12h] [--limit N] [--json]

- conflict: both sides changed, BC won; BC's values and the Outlook version that lost, side
  by side, field by field.
- adopted: a BC contact and an Outlook contact existed unlinked with the same email; they
  were linked and BC's values won (what Outlook held is shown as for a conflict).
- delete_rail: a run the mass-delete safety rail stopped, and why.
- reconcile_report: a reconcile run's line for the user.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from contactsync.cli.common import settings_and_logging

if TYPE_CHECKING:
    from contactsync.store.records import AuditRecord

ADOPTED = "adopted"  # shown for `duplicate` records whose reason is duplicate_found
_DUPLICATE = "duplicate"
_ADOPTION_REASON = "duplicate_found"
# Stored kinds (contactsync.store.records.AuditKind; that package loads SQLAlchemy at --help).
CONFLICT, DELETE_RAIL, RECONCILE_REPORT = "conflict", "delete_rail", "reconcile_report"
_AGO = re.compile(r"(\d+)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO date or time (UTC when it has no zone), or an age such as `3d`, `12h`, `30m`."""
    age = _AGO.fullmatch(text.strip().lower())
    if age:
        amount, unit = int(age.group(1)), _UNITS[age.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: write a date (2026-12-01), a time "
                                 "(2026-12-01T08:00) or an age (3d, 12h, 30m)",
                                 param_hint="--since") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def shown_kind(record: AuditRecord) -> str:
    if record.kind == _DUPLICATE and record.details.get("reason") == _ADOPTION_REASON:
        return ADOPTED
    return str(record.kind)


def _as_json(record: AuditRecord) -> dict[str, Any]:
    return {"at": record.at.isoformat() if record.at else None, "user_id": record.user_id,
            "kind": shown_kind(record), "bc_id": record.bc_id, "graph_id": record.graph_id,
            "details": record.details}


def _side_by_side(details: dict[str, Any]) -> list[str]:
    """One line per field: BC's value (kept) and Outlook's (lost)."""
    bc, outlook = details.get("bc") or {}, details.get("outlook") or {}
    fields = list(dict.fromkeys([*outlook, *bc]))
    if not fields:
        return []
    width = max(len(f) for f in fields)
    lines = [f"    {'field':<{width}}  {'BC (kept)':<30}  Outlook (lost)"]
    for name in fields:
        kept = str(bc.get(name, "")) if bc else "(BC contact gone)"
        lines.append(f"    {name:<{width}}  {kept:<30}  {outlook.get(name, '')}")
    return lines


def _lines(record: AuditRecord) -> list[str]:
    when = record.at.strftime("%Y-%m-%d %H:%M:%S") if record.at else "?"
    kind = shown_kind(record)
    head = f"{when}  {record.user_id}  {kind}"
    details = record.details
    if kind in (CONFLICT, ADOPTED, _DUPLICATE):
        head += f"  bc={record.bc_id} outlook={record.graph_id}"
        if kind == _DUPLICATE:
            head += f"  ({details.get('reason', '')})"
        return [head, *_side_by_side(details)]
    if kind == DELETE_RAIL:
        return [f"{head}  {details.get('reason', '')}"]
    if kind == RECONCILE_REPORT:
        return [f"{head}  run {details.get('run_id', '')}: {details.get('status', '')}"
                f"{'  ' + str(details['reason']) if details.get('reason') else ''}"]
    return [f"{head}  {json.dumps(details, default=str)}"]


def audit(
    user: Annotated[str | None, typer.Option("--user", "-u", help="One user's records")] = None,
    kind: Annotated[str | None, typer.Option(
        help="conflict | adopted | delete_rail | reconcile_report | duplicate")] = None,
    since: Annotated[str | None, typer.Option(
        help="From a date, a time (UTC) or an age: 2026-12-01, 3d, 12h")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="The records as JSON")] = False,
) -> None:
    """Conflicts (BC's values and the Outlook version that lost), adoptions, rail stops."""
    from contactsync.sync.services import open_store

    start = parse_since(since) if since else None
    settings = settings_and_logging()
    stored_kind = _DUPLICATE if kind == ADOPTED else kind
    with open_store(settings) as store:
        if user is not None:
            store.setups.require(user)  # a typo is "no setup for user", as everywhere
        records = store.audit.list_records(user_id=user, kind=stored_kind, since=start,
                                           limit=limit)
    if kind == ADOPTED:
        records = [r for r in records if shown_kind(r) == ADOPTED]
    if as_json:
        typer.echo(json.dumps([_as_json(r) for r in records], indent=2, default=str))
        return
    if not records:
        typer.echo("no audit records" + (f" of kind {kind}" if kind else "")
                   + (f" for {user}" if user else "") + (f" since {since}" if since else ""))
    for record in records:
        for line in _lines(record):
            typer.echo(line)
