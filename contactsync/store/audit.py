"""The audit log: conflicts (with the Outlook version that lost), duplicates, reports, skips."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from contactsync.store.base import Repository, utcnow
from contactsync.store.records import AuditRecord
from contactsync.store.tables import audit_records

_COLUMNS = (
    audit_records.c.user_id,
    audit_records.c.kind,
    audit_records.c.bc_id,
    audit_records.c.graph_id,
    audit_records.c.details,
    audit_records.c.at,
    audit_records.c.id,
)


def _to_params(record: AuditRecord, now: datetime) -> dict[str, Any]:
    return {
        "user_id": record.user_id,
        "kind": str(record.kind),
        "bc_id": record.bc_id,
        "graph_id": record.graph_id,
        "details": record.details,
        "at": record.at or now,
    }


class AuditRepository(Repository):
    def append(self, record: AuditRecord) -> AuditRecord:
        """Write one record; returns it with its id and time."""
        params = _to_params(record, utcnow())
        with self._writing() as conn:
            new_id = conn.execute(
                audit_records.insert().values(params).returning(audit_records.c.id)
            ).scalar_one()
        return dataclasses.replace(record, at=params["at"], id=int(new_id))

    def append_many(self, records: Iterable[AuditRecord]) -> int:
        """Write many records in one executemany; returns how many."""
        now = utcnow()
        params = [_to_params(record, now) for record in records]
        if params:
            with self._writing() as conn:
                conn.execute(audit_records.insert(), params)
        return len(params)

    def list_records(
        self,
        *,
        user_id: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """The newest records first, matching every filter given."""
        query = (
            select(*_COLUMNS)
            .order_by(audit_records.c.at.desc(), audit_records.c.id.desc())
            .limit(limit)
        )
        if user_id is not None:
            query = query.where(audit_records.c.user_id == user_id)
        if kind is not None:
            query = query.where(audit_records.c.kind == str(kind))
        if since is not None:
            query = query.where(audit_records.c.at >= since)
        with self._reading() as conn:
            return [AuditRecord(*row) for row in conn.execute(query)]
