"""Carries out a plan: writes to Graph and BC, then records links and audit rows.

A plan is a list of groups, one per contact pair (engine/actions.py). Groups are independent:
one that fails is reported with its reason and the others go on. Creates in Outlook of all
groups go out together through `$batch` (20 per request), and so do the updates in Outlook that
are a group's first write (when there are at least two: one stays a plain PATCH); everything
else runs group by group, a few groups at a time (the clients' request budgets pace the
services), each group's writes in the plan's order.

Idempotent when stopped at any point and run again (docs/architecture.md 9): an Outlook contact we
created carries our BC-id tag, so the next run finds it instead of creating it twice; a BC contact
created from Outlook is found again by email. Link and audit rows are written in one
transaction per chunk of groups, after the writes they describe.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contactsync.clients.bc import BcClient
from contactsync.clients.errors import CREDENTIAL_FAILURES, Conflict, NotFound, ServiceError
from contactsync.clients.graph import ContactUpdate, GraphClient, UpdateResult
from contactsync.engine import mapping as m
from contactsync.engine.actions import (
    Action,
    Audit,
    CreateInBc,
    CreateInOutlook,
    DeleteFromOutlook,
    DropLink,
    SaveLink,
    Skip,
    UpdateBc,
    UpdateOutlook,
)
from contactsync.engine.echoes import parse_time
from contactsync.engine.links import Link, canon_bc_id
from contactsync.engine.synced import bc_side, outlook_side, synced_text
from contactsync.store import Store
from contactsync.store.records import AuditKind, AuditRecord

FLUSH_EVERY = 500  # groups per link/audit transaction: bounds what a crash can leave unrecorded
PARALLEL_GROUPS = 8
# Fewer updates than this go one PATCH each: a batch of one costs more than the PATCH.
BULK_UPDATES_FROM = 2
_WRITES = (CreateInOutlook, UpdateOutlook, DeleteFromOutlook, CreateInBc, UpdateBc)
# (side "bc" | "outlook", the contact a write answered, its BC id): the near-real-time path
# keeps these as the newest versions it knows (sync/near_real_time.py).
WriteHook = Callable[[str, Mapping[str, Any], str], None]


@dataclass(frozen=True)
class Failure:
    bc_id: str
    graph_id: str
    reason: str
    # The contact written moved on (412) or went (404) since the version planned from (a
    # read, or the link's synced content): read that pair afresh and plan it again.
    conflict: bool = False


@dataclass
class ExecutionReport:
    writes: Counter[str] = field(default_factory=Counter)  # by action kind
    failures: list[Failure] = field(default_factory=list)
    field_issues: list[str] = field(default_factory=list)  # fields BC would reject, left out
    links_saved: int = 0
    links_dropped: int = 0
    audited: int = 0


@dataclass
class _GroupState:
    """Ids, versions and contacts a group's writes returned, to complete its SaveLink."""

    bc_id: str = ""
    graph_id: str = ""
    graph_change_key: str = ""
    bc_etag: str = ""
    bc_modified: datetime | None = None
    # The sides the group's writes answered, as a link row keeps them (engine/synced.py; not
    # the whole answers: a chunk holds 500 groups); None: not written, the plan's side is kept.
    bc_kept: dict[str, Any] | None = None
    outlook_kept: dict[str, Any] | None = None


@dataclass(frozen=True)
class _SentUpdate:
    """A group's UpdateOutlook sent in bulk, and what Graph answered it."""

    action: UpdateOutlook
    result: UpdateResult

    def answer(self) -> Mapping[str, Any]:
        """The updated contact; a failed item raises its error, as the single PATCH would."""
        if self.result.error is not None:
            raise self.result.error
        return self.result.contact or {}


@dataclass
class _Records:
    saves: list[Link] = field(default_factory=list)
    # (user id, canonical BC id) -> the content kept with the saved link (engine/synced.py)
    contents: dict[tuple[str, str], str] = field(default_factory=dict)
    drops: list[str] = field(default_factory=list)
    audits: list[AuditRecord] = field(default_factory=list)


class Executor:
    def __init__(
        self,
        *,
        graph: GraphClient,
        bc: BcClient,
        store: Store,
        user_id: str,
        mailbox: str,
        folder_id: str,
        on_written: WriteHook | None = None,
    ) -> None:
        self.graph, self.bc, self.store = graph, bc, store
        self.user_id, self.mailbox, self.folder_id = user_id, mailbox, folder_id
        self.on_written = on_written
        self.report = ExecutionReport()

    async def run(self, groups: Sequence[tuple[Action, ...]]) -> ExecutionReport:
        for start in range(0, len(groups), FLUSH_EVERY):
            await self._run_chunk(groups[start : start + FLUSH_EVERY])
        return self.report

    async def _run_chunk(self, chunk: Sequence[tuple[Action, ...]]) -> None:
        records = _Records()
        created = await self._create_in_outlook(chunk)
        to_update = _bulk_updates(chunk)
        # The groups that do not wait for the batched updates run meanwhile.
        updating = asyncio.ensure_future(self._update_in_outlook(to_update))
        gate = asyncio.Semaphore(PARALLEL_GROUPS)

        async def one(index: int, group: tuple[Action, ...]) -> None:
            sent = (await updating)[index] if index in to_update else None
            async with gate:
                await self._run_group(group, created.get(index), records, sent)

        await asyncio.gather(*(one(i, g) for i, g in enumerate(chunk)))
        self._flush(records)

    # --- Outlook creates, in bulk -------------------------------------------------------------
    async def _create_in_outlook(
        self, chunk: Sequence[tuple[Action, ...]]
    ) -> dict[int, _GroupState | Failure]:
        to_create = [
            (i, a) for i, g in enumerate(chunk) for a in g if isinstance(a, CreateInOutlook)
        ]
        results: dict[int, _GroupState | Failure] = {}
        if to_create:
            created = await self.graph.create_contacts(
                self.mailbox, self.folder_id, [(a.bc_id, a.fields) for _, a in to_create]
            )
            for (index, action), result in zip(to_create, created, strict=True):
                if result.ok and result.contact is not None:
                    self._written("outlook", result.contact, action.bc_id)
                    self.report.writes["created_in_outlook"] += 1
                    results[index] = _GroupState(
                        graph_id=str(result.contact["id"]),
                        graph_change_key=m.graph_change_key(result.contact),
                        outlook_kept=outlook_side(result.contact, action.bc_id),
                        bc_kept=_created_from(action),
                    )
                else:
                    results[index] = Failure(action.bc_id, "", _reason(result.error))
        return results

    # --- Outlook updates that open a group, in bulk --------------------------------------------
    async def _update_in_outlook(
        self, to_update: Mapping[int, UpdateOutlook]
    ) -> dict[int, _SentUpdate]:
        """Send the updates through `$batch`; each group applies its answer when it runs."""
        if not to_update:
            return {}
        answers = await self.graph.update_contacts(self.mailbox, [
            ContactUpdate(a.graph_id, a.fields, a.if_match, a.bc_id) for a in to_update.values()])
        return {index: _SentUpdate(action, answer)
                for (index, action), answer in zip(to_update.items(), answers, strict=True)}

    # --- one pair ---------------------------------------------------------------------------
    async def _run_group(
        self,
        group: tuple[Action, ...],
        created: _GroupState | Failure | None,
        records: _Records,
        sent: _SentUpdate | None = None,
    ) -> None:
        if isinstance(created, Failure):
            self.report.failures.append(created)
            return
        state = created or _GroupState()
        pending = _Records()
        try:
            for action in group:
                if sent is not None and action is sent.action:
                    self._outlook_updated(state, sent.action, sent.answer())
                    continue
                await self._apply(action, state, pending)
        except CREDENTIAL_FAILURES:
            raise  # the credential's failure, not this pair's: the whole run waits for it
        except ServiceError as exc:
            bc_id, graph_id = _ids_of(group)
            self.report.failures.append(
                Failure(bc_id, graph_id, _reason(exc),
                        conflict=isinstance(exc, (Conflict, NotFound)))
            )
            return  # its link stays as it was: the next run plans the pair again
        records.saves.extend(pending.saves)
        records.contents.update(pending.contents)
        records.drops.extend(pending.drops)
        records.audits.extend(pending.audits)

    async def _apply(self, action: Action, state: _GroupState, pending: _Records) -> None:
        if isinstance(action, UpdateOutlook):
            result = await self.graph.update_contact(
                self.mailbox, action.graph_id, action.fields, if_match=action.if_match,
                bc_id=action.bc_id,
            )
            self._outlook_updated(state, action, result)
        elif isinstance(action, DeleteFromOutlook):
            await self.graph.delete_contact(self.mailbox, action.graph_id, if_match=action.if_match)
            self.report.writes["deleted_from_outlook"] += 1
        elif isinstance(action, CreateInBc):
            result = await self.bc.create_contact(dict(action.fields))
            self._bc_written(state, result)
            self._written("bc", result, str(result.get("id", "")))
            state.bc_id = str(result["id"])
            self.report.writes["created_in_bc"] += 1
            self._note_issues(action.issues)
        elif isinstance(action, UpdateBc):
            result = await self.bc.update_contact(action.bc_id, dict(action.changes), action.etag)
            self._bc_written(state, result)
            self._written("bc", result, action.bc_id)
            self.report.writes["updated_bc"] += 1
            self._note_issues(action.issues)
        elif isinstance(action, SaveLink):
            link = _completed(action.link, state)
            pending.saves.append(link)
            content = _content(action, state)
            if content is not None:
                pending.contents[(link.user_id, canon_bc_id(link.bc_id))] = content
        elif isinstance(action, DropLink):
            pending.drops.append(action.bc_id)
        elif isinstance(action, Audit):
            pending.audits.append(AuditRecord(
                user_id=self.user_id, kind=_audit_kind(action), bc_id=action.bc_id,
                graph_id=action.graph_id,
                details={"reason": str(action.reason), "outlook": dict(action.outlook_values),
                         "bc": dict(action.bc_values)},
            ))
        elif isinstance(action, Skip):
            pass  # counted by the plan's summary
        # CreateInOutlook ran in bulk before the group; NeedsRead and FindInOutlook are reads
        # the runner did before the plan came here (one left is the next run's).

    def _outlook_updated(
        self, state: _GroupState, action: UpdateOutlook, result: Mapping[str, Any]
    ) -> None:
        state.graph_change_key = m.graph_change_key(result)
        state.outlook_kept = outlook_side(result, action.bc_id)
        self._written("outlook", result, action.bc_id)
        self.report.writes["updated_outlook"] += 1

    def _written(self, side: str, contact: Mapping[str, Any], bc_id: str) -> None:
        if self.on_written is not None:
            self.on_written(side, contact, bc_id)

    def _bc_written(self, state: _GroupState, result: Mapping[str, Any]) -> None:
        state.bc_kept = bc_side(result)
        state.bc_etag = m.as_text(result.get("@odata.etag"))
        state.bc_modified = parse_time(result.get("lastModifiedDateTime"))

    def _note_issues(self, issues: Sequence[m.FieldIssue]) -> None:
        self.report.field_issues.extend(f"{i.field}: {i.reason}" for i in issues)

    # --- records ----------------------------------------------------------------------------
    def _flush(self, records: _Records) -> None:
        if not (records.saves or records.drops or records.audits):
            return
        with self.store.transaction() as tx:
            if records.drops:
                tx.links.delete_many(self.user_id, records.drops)
            if records.saves:
                tx.links.upsert_many(records.saves, records.contents)
            if records.audits:
                tx.audit.append_many(records.audits)
        self.report.links_saved += len(records.saves)
        self.report.links_dropped += len(records.drops)
        self.report.audited += len(records.audits)


def _completed(link: Link, state: _GroupState) -> Link:
    """Fill the ids and versions the planner left empty with what the writes returned."""
    return dataclasses.replace(
        link,
        bc_id=link.bc_id or state.bc_id,
        graph_id=link.graph_id or state.graph_id,
        graph_change_key=link.graph_change_key or state.graph_change_key,
        bc_etag=link.bc_etag or state.bc_etag,
        bc_modified=link.bc_modified or state.bc_modified,
    )


def _content(save: SaveLink, state: _GroupState) -> str | None:
    """Each side as this group's write answered it, else as the plan saw it."""
    bc, outlook = state.bc_kept, state.outlook_kept
    planned_bc, planned_outlook = save.sides
    if bc is None and planned_bc is not None:
        bc = bc_side(planned_bc)
    if outlook is None and planned_outlook is not None:
        outlook = outlook_side(planned_outlook)
    return synced_text(bc, outlook)


def _created_from(create: CreateInOutlook) -> dict[str, Any] | None:
    """The BC side of a create in Outlook: the contact its body is built from."""
    body = create.fields
    return bc_side(body.source) if isinstance(body, m.GraphBodyFromBc) else None


def _bulk_updates(chunk: Sequence[tuple[Action, ...]]) -> dict[int, UpdateOutlook]:
    """Each group's update in Outlook that is its first write (so the order of a group's writes
    stays the plan's), by group index; none when fewer than BULK_UPDATES_FROM."""
    found = {i: a for i, g in enumerate(chunk) if isinstance(a := _first_write(g), UpdateOutlook)}
    return found if len(found) >= BULK_UPDATES_FROM else {}


def _first_write(group: tuple[Action, ...]) -> Action | None:
    return next((a for a in group if isinstance(a, _WRITES)), None)


def _ids_of(group: tuple[Action, ...]) -> tuple[str, str]:
    bc_id = graph_id = ""
    for action in group:
        bc_id = bc_id or str(getattr(action, "bc_id", "") or "")
        graph_id = graph_id or str(getattr(action, "graph_id", "") or "")
        if isinstance(action, SaveLink):
            bc_id, graph_id = bc_id or action.link.bc_id, graph_id or action.link.graph_id
    return bc_id, graph_id


def _audit_kind(action: Audit) -> str:
    return AuditKind.CONFLICT if action.reason == "conflict" else AuditKind.DUPLICATE


def _reason(error: ServiceError | None) -> str:
    if error is None:
        return "unknown failure"
    return f"{type(error).__name__}: {error}"
