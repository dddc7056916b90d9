"""What the pages show, read from the store: one row per user, one user's detail.

Kept free of HTTP so the pages and their tests share it; the templates only lay it out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.store.records import AuditKind, AuditRecord, Subscription, SubscriptionService

if TYPE_CHECKING:
    from contactsync.console.backlog import Backlog

CONSOLE_ACTION = "console_action"  # the audit kind of what an admin did in the console
EXPIRING_SOON = timedelta(hours=1)  # the subscription service renews well before this
FAILED_STATUSES = frozenset({"failed", "stopped"})


@dataclass(frozen=True)
class LastRun:
    """A user's last run of one kind: when, how it went ("" when not known), and why."""

    at: datetime | None = None
    status: str = ""
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES


@dataclass(frozen=True)
class SubscriptionState:
    state: str  # active | expiring | expired | none
    expiration: datetime | None = None

    @property
    def healthy(self) -> bool:
        return self.state in ("active", "expiring")


@dataclass(frozen=True)
class UserRow:
    setup: UserSetup
    company: str
    links: int
    last_sync: LastRun
    last_full_sync: LastRun
    last_apply: LastRun
    failures: int
    subscription: SubscriptionState
    skipped: dict[str, int] = field(default_factory=dict)  # of the last kept report
    freshness: float | None = None  # the user's oldest change not yet applied, s; None: n/a

    @property
    def in_folder(self) -> int:
        """Contacts in the user's folder: the store keeps no count of the folder itself, and
        every contact the sync put there is linked, so the links are that count."""
        return self.links

    @property
    def skipped_text(self) -> str:
        return ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()) if n)

    @property
    def freshness_text(self) -> str:
        return age_text(self.freshness)

    @property
    def filter_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.setup.contact_filter.items())

    @property
    def attention(self) -> str:
        """Why this user needs an admin's look, or "" (the row then does not stand out)."""
        if self.setup.stopped_reason:
            return f"stopped: {self.setup.stopped_reason}"
        for name, run in (("Sync", self.last_sync), ("Full sync", self.last_full_sync),
                          ("near-real-time apply", self.last_apply)):
            if run.failed:
                return f"last {name} {run.status}: {run.reason}".rstrip(": ")
        if self.setup.enabled and self.subscription.state == "none":
            return "no Graph subscription: near-real-time changes from Outlook wait for a Sync"
        if self.setup.enabled and not self.subscription.healthy:
            return f"Graph subscription {self.subscription.state}: is the subscriptions role up?"
        return ""


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 1:
        return "caught up"
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def subscription_state(subs: Sequence[Subscription], now: datetime) -> SubscriptionState:
    graph = [s for s in subs if s.service is SubscriptionService.GRAPH]
    if not graph:
        return SubscriptionState("none")
    latest = max(s.expiration for s in graph)
    if latest <= now:
        return SubscriptionState("expired", latest)
    return SubscriptionState("expiring" if latest - now < EXPIRING_SOON else "active", latest)


def _last_report(store: Store, user_id: str) -> AuditRecord | None:
    found = store.audit.list_records(user_id=user_id, kind=AuditKind.RECONCILE_REPORT, limit=1)
    return found[0] if found else None


def user_row(store: Store, setup: UserSetup, company: str, results: ResultsView,
             now: datetime, freshness: float | None = None) -> UserRow:
    state = store.state.get(setup.user_id)
    report = _last_report(store, setup.user_id)
    full = results.last(setup.user_id, "full_sync")
    if full.at is None or (report is not None and report.at and report.at >= full.at):
        full = (LastRun(state.last_full_sync_at) if report is None else LastRun(
            report.at, str(report.details.get("status", "")),
            str(report.details.get("reason", ""))))
    sync = results.last(setup.user_id, "sync")
    if sync.at is None:
        sync = LastRun(state.last_sync_at)
    failures = int(report.details.get("failed", 0)) if report is not None else 0
    skipped = report.details.get("skipped", {}) if report is not None else {}
    return UserRow(
        setup=setup, company=company, links=store.links.count(setup.user_id),
        last_sync=sync, last_full_sync=full, last_apply=results.last_apply(setup.user_id),
        failures=failures,
        subscription=subscription_state(store.subscriptions.list_all(user_id=setup.user_id),
                                        now),
        skipped={str(k): int(v) for k, v in (skipped or {}).items()}, freshness=freshness,
    )


class ResultsView:
    """The newest `sync.results` per user and command kind; empty when none are followed."""

    def __init__(self, newest: Callable[[], dict[tuple[str, str], LastRun]] | None = None,
                 dry_runs: Callable[[], dict[str, dict[str, Any]]] | None = None) -> None:
        self._newest = newest or dict
        self._dry_runs = dry_runs or dict

    def last_dry_run(self, user_id: str) -> dict[str, Any] | None:
        """The newest dry run's result (its plan in numbers), or None."""
        return self._dry_runs().get(user_id)

    def last(self, user_id: str, kind: str) -> LastRun:
        return self._newest().get((user_id, kind), LastRun())

    def last_apply(self, user_id: str) -> LastRun:
        runs = [self.last(user_id, k) for k in ("bc_change", "graph_hint")]
        known = [r for r in runs if r.at is not None]
        return max(known, key=lambda r: r.at or datetime.min) if known else LastRun()


_EPOCH = datetime.min.replace(tzinfo=UTC)
SORT_KEYS: dict[str, Callable[[UserRow], Any]] = {
    "user": lambda r: r.setup.user_id.lower(),
    "mailbox": lambda r: r.setup.mailbox.lower(),
    "enabled": lambda r: r.setup.enabled,
    "last_sync": lambda r: r.last_sync.at or _EPOCH,
    "last_full_sync": lambda r: r.last_full_sync.at or _EPOCH,
    "links": lambda r: r.links,
    "in_folder": lambda r: r.in_folder,
    "failures": lambda r: r.failures,
    "subscription": lambda r: r.subscription.expiration or _EPOCH,
    "attention": lambda r: r.attention == "",
}


@dataclass(frozen=True)
class UsersPage:
    rows: list[UserRow]
    query: str
    sort: str
    descending: bool
    total: int = field(default=0)


def _age(backlog: Backlog | None, user_id: str) -> float | None:
    return backlog.user_age(user_id) if backlog is not None else None


def users_page(store: Store, company: str, results: ResultsView, *, query: str = "",
               sort: str = "user", descending: bool = False,
               backlog: Backlog | None = None) -> UsersPage:
    now = datetime.now(UTC)
    setups = store.setups.list_all()
    rows = [user_row(store, s, company, results, now, _age(backlog, s.user_id))
            for s in setups]
    needle = query.strip().lower()
    if needle:
        rows = [r for r in rows if needle in " ".join(
            (r.setup.user_id, r.setup.mailbox, r.setup.folder_name, r.filter_text)).lower()]
    sort = sort if sort in SORT_KEYS else "user"
    rows.sort(key=SORT_KEYS[sort], reverse=descending)
    return UsersPage(rows, query, sort, descending, total=len(setups))


@dataclass(frozen=True)
class Conflict:
    at: datetime | None
    bc_id: str | None
    graph_id: str | None
    fields: list[tuple[str, str, str]]  # field, BC's winning value, Outlook's losing value


def conflict_of(record: AuditRecord) -> Conflict:
    bc = record.details.get("bc", {}) or {}
    outlook = record.details.get("outlook", {}) or {}
    names = sorted(set(bc) | set(outlook))
    return Conflict(record.at, record.bc_id, record.graph_id,
                    [(n, str(bc.get(n, "")), str(outlook.get(n, ""))) for n in names])


# The planner's skip reasons (engine.actions.Reason) as an admin reads them.
SKIP_WORDS = {
    "no_email": "no email", "no_name": "no name", "not_person": "not a Person",
    "privacy_blocked": "privacy blocked", "filtered_out": "outside the filter",
    "outlook_no_name": "Outlook contact without a name",
    "outlook_no_email": "Outlook contact without an email",
    "outlook_invalid": "Outlook contact BC would refuse",
    "create_in_bc_off": "Outlook contact, creating in BC is off",
    "duplicate_email": "another Outlook contact has this email",
    "email_in_use": "the folder holds another contact with this email",
    "bc_match_not_synced": "same email as a BC contact outside the sync",
    "duplicate_bc_id": "a second Outlook contact of one BC contact",
}


@dataclass(frozen=True)
class SkippedGroup:
    """The contacts the last kept run skipped for one reason (the report names the first
    ones; `count` is all of them)."""

    reason: str
    words: str
    count: int
    contacts: list[str]

    @property
    def more(self) -> int:
        return max(0, self.count - len(self.contacts))


def skipped_groups(report: AuditRecord | None) -> list[SkippedGroup]:
    if report is None:
        return []
    counts = {str(k): int(v) for k, v in (report.details.get("skipped") or {}).items()}
    named = report.details.get("skipped_contacts") or {}
    return [SkippedGroup(reason, SKIP_WORDS.get(reason, reason.replace("_", " ")),
                         max(counts.get(reason, 0), len(named.get(reason, []))),
                         [str(c) for c in named.get(reason, [])])
            for reason in sorted(set(counts) | set(named)) if counts.get(reason) or
            named.get(reason)]


@dataclass(frozen=True)
class UserDetail:
    row: UserRow
    dry_run: dict[str, Any] | None
    reports: list[AuditRecord]
    conflicts: list[Conflict]
    trail: list[AuditRecord]
    skipped: list[SkippedGroup] = field(default_factory=list)  # of the last kept report


def user_detail(store: Store, setup: UserSetup, company: str, results: ResultsView,
                *, limit: int = 50, backlog: Backlog | None = None) -> UserDetail:
    user_id = setup.user_id
    reports = store.audit.list_records(user_id=user_id, kind=AuditKind.RECONCILE_REPORT,
                                       limit=limit)
    return UserDetail(
        row=user_row(store, setup, company, results, datetime.now(UTC),
                     _age(backlog, user_id)),
        dry_run=results.last_dry_run(user_id),
        reports=reports, skipped=skipped_groups(reports[0] if reports else None),
        conflicts=[conflict_of(r) for r in store.audit.list_records(
            user_id=user_id, kind=AuditKind.CONFLICT, limit=limit)],
        trail=store.audit.list_records(user_id=user_id, limit=limit * 2),
    )
