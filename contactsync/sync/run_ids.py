"""Reconcile run ids, without the rest of producers.reconcile (Kafka): `reconcile --inline`
names its run with this too, and loads no Kafka client for it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def new_run_id(origin: str, at: datetime | None = None, *, unique: bool = True) -> str:
    """`scheduled-20261126T020000Z` for a slot (deterministic), `cli-...-1a2b3c` on demand."""
    stamp = (at or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{origin}-{stamp}" + (f"-{uuid.uuid4().hex[:6]}" if unique else "")
