"""consumers/applier: one user at a time, in order (docs/architecture.md "Flow", decisions 1, 2, 7,
9).

    sync.commands (key user id) --> Applier --> Graph / BC writes, links
                                        +--> sync.results (key user id)
                                        +--> bc.contact.changes (what its BC writes left)

A poll's records are one group; they are split by user (the key). Within a user the commands
run in offset order, different users side by side (`handle`), and consecutive `bc_change` /
`graph_hint` commands coalesce into ONE `apply_changes`: their BC snapshots merge (the last
one per contact id wins) and a single Graph delta read answers every hint. A `sync` /
`full_sync` command runs `sync_user` (with its dry_run and force) where it stands in that
order.

Every command gets one `SyncResult` (ok / stopped by the safety rail / failed with a reason /
expired: its deadline passed before the applier took it, so it is not run late); the handler
returns them and the worker publishes them, committing only once the broker acked them. A
coalesced segment's counts go on its first command's result; the others carry its status with
zero counts (summing results never counts one write twice). An Outlook change taken to BC
is published as the BC change it made (BC's answer, the feed's message id), for the other
users holding the contact: they get it without waiting for BC's notification (decision 2).
A setup stopped for sharing
another's folder gets `stopped` results. An unknown or disabled user yields a failed result (no
retry, no dead letter). A `RetryableError` from the services propagates: the Worker retries the
group, then dead-letters it. A non-retryable service error (a mailbox that does not exist,
refused credentials, ...) fails the command's result and the stream goes on.

The Graph and BC clients are async: the applier runs them on its `Bridge` (one event loop,
created in the worker's thread), with the clients opened once on it (`open_services`) and reused
across batches; `close` (called by `run` on the way out, in that same thread) closes them and
the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from contactsync import metrics, tracing
from contactsync.clients.errors import (
    CREDENTIAL_FAILURES,
    RetryableError,
    ServiceError,
)
from contactsync.credential_health import CREDENTIAL_PAUSE_S, when_credential_works
from contactsync.engine.bcfilter import FilterError
from contactsync.engine.links import SyncMode
from contactsync.engine.planner import BcSnapshot
from contactsync.errors import StoreUnavailable
from contactsync.kafka.bridge import Bridge
from contactsync.kafka.publish import Outgoing, Publish, carrying
from contactsync.kafka.topics import BC_CONTACT_CHANGES, SYNC_COMMANDS, SYNC_RESULTS, topic_name
from contactsync.kafka.worker import RetryPolicy, Worker, WorkRecord, build_worker
from contactsync.logs import get_logger
from contactsync.schemas.contacts import BcContact
from contactsync.schemas.messages import (
    BcChangeKind,
    BcContactChanged,
    CommandKind,
    ResultStatus,
    SyncCommand,
    SyncResult,
    bc_change_event_id,
)
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.sync.reconcile import record_report
from contactsync.sync.runner import Sessions, SyncReport, apply_changes, sync_user
from contactsync.sync.services import Services, open_services

GROUP_ID = "contactsync-applier"
APPLY_SPAN = "applier apply"
TOPICS = (SYNC_COMMANDS,)
UNKNOWN_USER = "unknown user"
NEAR_REAL_TIME = (CommandKind.BC_CHANGE, CommandKind.GRAPH_HINT)
# A full sync of a large folder can take minutes: allow it between two polls.
MAX_POLL_INTERVAL_MS = 15 * 60 * 1000
FINISHED_REMEMBERED = 10_000
PLAN_LINES_IN_RESULT = 500  # ~50 kB: well under the broker's 1 MB message limit

T = TypeVar("T")


def _log() -> Any:
    return get_logger("contactsync.applier")


@dataclass
class _Command:
    record: WorkRecord
    command: SyncCommand

    @property
    def event_id(self) -> str:
        return str(self.record.envelope.event_id)

    @property
    def trace_id(self) -> str:
        return str(self.record.envelope.trace_id)


@dataclass
class _Outcome:
    status: ResultStatus
    reason: str = ""
    summary: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    duration_ms: int = 0
    plan: list[str] = field(default_factory=list)  # a dry run's writes, by contact
    bc_written: list[dict[str, Any]] = field(default_factory=list)  # BC's answers to our writes

    def merged(self) -> _Outcome:
        """The outcome of a command applied in the run of its segment's first command: its
        status and reason, but no counts (those are the first command's), so that adding up
        a merged batch's results counts each write once, not once per command."""
        return _Outcome(self.status, self.reason, dict.fromkeys(self.summary, 0))


def merge_bc_changes(commands: Sequence[SyncCommand]) -> BcSnapshot | None:
    """The commands' BC changes as one snapshot: per contact id the last change wins."""
    latest: dict[str, tuple[bool, dict[str, Any] | None]] = {}
    for command in commands:
        change = command.bc_change
        if command.kind is not CommandKind.BC_CHANGE or change is None:
            continue
        if change.kind is BcChangeKind.DELETED:
            latest.pop(change.contact_id, None)  # keep insertion order = order of last change
            latest[change.contact_id] = (True, None)
        elif change.snapshot is not None:
            latest.pop(change.contact_id, None)
            latest[change.contact_id] = (False, change.snapshot.model_dump(mode="json",
                                                                           by_alias=True))
    if not latest:
        return None
    contacts = [snap for deleted, snap in latest.values() if not deleted and snap is not None]
    deleted_ids = [cid for cid, (deleted, _) in latest.items() if deleted]
    return BcSnapshot.changes(contacts, deleted_ids)


def outcome_of(report: SyncReport) -> _Outcome:
    """A run's report as a result: stopped by the rail, failed pairs, or ok."""
    summary = {k: v for k, v in dataclasses.asdict(report.summary).items()
               if isinstance(v, int) and not isinstance(v, bool)}
    summary["failed"] = report.failed
    if report.execution is not None:
        summary["writes"] = sum(report.execution.writes.values())
    skipped = dict(report.summary.skipped)
    duration_ms = int(report.duration_s * 1000)
    if report.stop is not None:
        return _Outcome(ResultStatus.STOPPED, str(report.stop), summary, skipped, duration_ms,
                        _plan_in_result(report.plan))
    if report.failed:
        assert report.execution is not None
        first = report.execution.failures[0]
        reason = f"{report.failed} contact(s) failed; first: {first.reason}"
        return _Outcome(ResultStatus.FAILED, reason, summary, skipped, duration_ms)
    return _Outcome(ResultStatus.OK, "", summary, skipped, duration_ms,
                    _plan_in_result(report.plan))


def _plan_in_result(plan: list[str]) -> list[str]:
    """A dry run's plan, cut to fit a message (a full sync's can name 100,000 contacts)."""
    if len(plan) <= PLAN_LINES_IN_RESULT:
        return plan
    more = len(plan) - PLAN_LINES_IN_RESULT
    return [*plan[:PLAN_LINES_IN_RESULT], f"... and {more} more (`sync --dry-run` lists all)"]


class Applier:
    """The applier role: `handle` is the Worker's handler; `run` polls until stopped.

    `services_factory` (tests, embedding) replaces `open_services(settings, store)`; it is
    entered once on the applier's own event loop.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        services_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._services_factory = services_factory or (lambda: open_services(settings, store))
        self._results_topic = topic_name(settings, SYNC_RESULTS)
        self._changes_topic = topic_name(settings, BC_CONTACT_CHANGES)
        self.bridge = Bridge()
        self._stack: AsyncExitStack | None = None
        self._services: Services | None = None
        self.published = 0  # results published, for logs and tests
        self._sessions = Sessions()  # each user's folder id and known versions, between runs
        # Event ids whose results were acked: a poll retried after a failure skips them.
        self._finished: OrderedDict[str, None] = OrderedDict()

    # --- the role ---

    def build_worker(self, *, retry: RetryPolicy | None = None,
                     credential_pause: float = CREDENTIAL_PAUSE_S, **consumer_overrides: Any
                     ) -> Worker:
        consumer_overrides.setdefault("max_poll_interval_ms", MAX_POLL_INTERVAL_MS)
        return build_worker(self.settings, GROUP_ID, TOPICS, self.handle, group_by=by_topic,
                            retry=retry, credential_pause=credential_pause,
                            **consumer_overrides)

    def run(self, stop: threading.Event, worker: Worker | None = None) -> None:
        """Open the services first (a missing tenant fails here, not as dead letters; a refused
        credential is waited for), then poll until `stop` is set; everything is closed in this
        thread on the way out."""
        try:
            pause = worker.credential_pause if worker is not None else CREDENTIAL_PAUSE_S
            if when_credential_works(self._services_now, stop, pause) is None:
                return
            worker = worker or self.build_worker()
            try:
                worker.run(stop)
            finally:
                worker.close()
        finally:
            self.close()

    def close(self) -> None:
        """Close the clients, then the loop (in the thread that made them)."""
        try:
            if self._stack is not None and self.bridge.open:
                self.bridge.run(self._stack.aclose())
        finally:
            self._stack = None
            self._services = None
            self.bridge.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.bridge.run(coro)

    def _services_now(self) -> Services:
        if self._services is None:
            stack = AsyncExitStack()

            async def enter() -> Services:
                services: Services = await stack.enter_async_context(self._services_factory())
                return services

            self._services = self._run(enter())
            self._stack = stack
        return self._services

    # --- applying ---

    def handle(self, records: Sequence[WorkRecord]) -> Publish | None:
        """One poll's commands, each user's in offset order; returns their results.

        Users are independent: their near-real-time segments of one "wave" (the first segment
        of every user, then the second, ...) run concurrently on the loop, so one user's reads
        and writes wait on the network while another's go out. A retried poll skips the
        commands whose results were already acked (a failure half way still publishes the
        results of the work done: the error carries them)."""
        commands = [_Command(r, r.payload) for r in records if isinstance(r.payload, SyncCommand)
                    and str(r.envelope.event_id) not in self._finished]
        if not commands:
            return None
        sent: list[tuple[_Command, Outgoing]] = []
        changes: list[Outgoing] = []  # BC contacts our writes changed, for the other users
        try:
            chains: list[tuple[UserSetup, list[list[_Command]]]] = []
            for user_id, user_commands in _by_user(self._drop_expired(commands, sent)):
                setup = self._setup_or_refuse(user_id, user_commands, sent)
                if setup is not None:
                    chains.append((setup, _segments(user_commands)))
            for wave in range(max((len(segments) for _, segments in chains), default=0)):
                self._apply_wave([(setup, segments[wave]) for setup, segments in chains
                                  if wave < len(segments)], sent, changes)
        except OperationalError as exc:  # the database is away or locked: worth retrying
            raise carrying(StoreUnavailable(f"state store unavailable: {exc}"),
                           self._results(sent, changes)) from exc
        except Exception as exc:
            carrying(exc, self._results(sent, changes))  # the work done so far still goes out
            raise
        return self._results(sent, changes)

    def _results(self, sent: list[tuple[_Command, Outgoing]],
                 changes: list[Outgoing]) -> Publish:
        """The results to publish, and the BC changes our writes made; once every one is
        acked, the commands count as finished."""

        def acked() -> None:
            self._remember_finished(c for c, _ in sent)
            self.published += len(sent)

        return Publish([*(message for _, message in sent), *changes], then=acked)

    def _drop_expired(self, commands: list[_Command],
                      sent: list[tuple[_Command, Outgoing]]) -> list[_Command]:
        """Commands past their deadline get an `expired` result instead of running late."""
        now = datetime.now(UTC)
        live = []
        for c in commands:
            deadline = c.command.expires_at
            if deadline is None or deadline > now:
                live.append(c)
                continue
            _log().warning("command expired before it was taken", user_id=c.command.user_id,
                           kind=str(c.command.kind), expired_at=deadline.isoformat())
            reason = (f"the command expired at {deadline:%Y-%m-%d %H:%M:%S} UTC before an "
                      "applier took it; nothing was done: ask again")
            sent.append((c, self._send(c, _Outcome(ResultStatus.EXPIRED, reason))))
        return live

    def _setup_or_refuse(self, user_id: str, commands: list[_Command],
                         sent: list[tuple[_Command, Outgoing]]) -> UserSetup | None:
        setup = self.store.setups.get(user_id)
        if setup is not None and setup.enabled and setup.stopped_reason:
            _log().warning("commands for a stopped setup", user_id=user_id,
                           commands=len(commands), reason=setup.stopped_reason)
            for c in commands:
                sent.append((c, self._send(c, _Outcome(ResultStatus.STOPPED,
                                                       setup.stopped_reason))))
            return None
        if setup is None or not setup.enabled:
            reason = UNKNOWN_USER if setup is None else f"{UNKNOWN_USER}: sync is disabled"
            _log().warning("commands for an unknown or disabled user", user_id=user_id,
                           commands=len(commands))
            for c in commands:
                sent.append((c, self._send(c, _Outcome(ResultStatus.FAILED, reason))))
            return None
        return setup

    def _apply_wave(self, wave: list[tuple[UserSetup, list[_Command]]],
                    sent: list[tuple[_Command, Outgoing]], changes: list[Outgoing]) -> None:
        """Near-real-time segments of different users concurrently, then every segment's
        outcome in turn (those that raised last, so the others' results still go out)."""
        # What each segment's side-by-side run answered (None: it runs on its own below).
        ran_together: list[SyncReport | BaseException | None] = [None] * len(wave)
        together = [i for i, (_, seg) in enumerate(wave)
                    if seg[0].command.kind in NEAR_REAL_TIME and not seg[0].command.dry_run]
        concurrent = [wave[i] for i in together]
        if len(concurrent) > 1:
            services = self._services_now()

            async def side_by_side() -> list[SyncReport | BaseException]:
                return await asyncio.gather(*(tracing.traced(
                    APPLY_SPAN, apply_changes(
                        setup, graph=services.graph, bc=services.bc, store=self.store,
                        bc_changes=merge_bc_changes([c.command for c in seg]),
                        read_outlook_delta=any(
                            c.command.kind is CommandKind.GRAPH_HINT for c in seg),
                        sessions=self._sessions),
                    parent=seg[0].record.headers, attributes=_span_attributes(setup, seg))
                    for setup, seg in concurrent), return_exceptions=True)

            reports = self._run(side_by_side())
            for i, report in zip(together, reports, strict=True):
                ran_together[i] = report
        for i in sorted(range(len(wave)),
                        key=lambda i: isinstance(ran_together[i], BaseException)):
            setup, segment = wave[i]
            outcome = self._apply_segment(setup, segment, ran_together[i])
            for i, c in enumerate(segment):
                sent.append((c, self._send(c, outcome if i == 0 else outcome.merged())))
            changes.extend(self._bc_changes(outcome.bc_written, segment[0].trace_id))

    def _remember_finished(self, commands: Iterable[_Command]) -> None:
        for c in commands:
            self._finished[c.event_id] = None
        while len(self._finished) > FINISHED_REMEMBERED:
            self._finished.popitem(last=False)

    def _apply_segment(self, setup: UserSetup, segment: list[_Command],
                       ran_together: SyncReport | BaseException | None = None) -> _Outcome:
        if ran_together is not None:  # applied side by side, in its own span
            return self._apply_segment_traced(setup, segment, ran_together)
        with tracing.span(APPLY_SPAN, parent=segment[0].record.headers,
                          attributes=_span_attributes(setup, segment)):
            return self._apply_segment_traced(setup, segment, None)

    def _apply_segment_traced(self, setup: UserSetup, segment: list[_Command],
                              ran_together: SyncReport | BaseException | None) -> _Outcome:
        first = segment[0].command
        started = time.perf_counter()
        try:
            if first.kind in NEAR_REAL_TIME:
                if first.dry_run:  # a dry-run near-real-time command stands alone
                    return _Outcome(ResultStatus.FAILED,
                                    "dry_run applies to sync and full_sync commands only")
                report = self._apply_changes(setup, [c.command for c in segment], ran_together)
            else:
                mode = SyncMode.FULL if first.kind is CommandKind.FULL_SYNC else SyncMode.SYNC
                services = self._services_now()
                report = self._run(sync_user(setup, mode, graph=services.graph, bc=services.bc,
                                             store=self.store, dry_run=first.dry_run,
                                             force=first.force, sessions=self._sessions))
                if first.kind is CommandKind.FULL_SYNC and first.run_id:  # a reconcile run
                    record_report(self.store, report.line(), first.run_id)
        except (RetryableError, *CREDENTIAL_FAILURES):
            # The Worker retries the whole group, then dead-letters it; a credential failure
            # pauses the Worker instead, the commands left on the topic.
            raise
        except (ServiceError, FilterError) as exc:
            # Deterministic: retrying cannot help; the result says why and the stream goes on.
            _log().warning("command failed", user_id=setup.user_id, kind=str(first.kind),
                           error=str(exc))
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, FilterError):
                reason = f"invalid filter: {reason}"
            return _Outcome(ResultStatus.FAILED, reason,
                            duration_ms=int((time.perf_counter() - started) * 1000))
        outcome = outcome_of(report)
        outcome.bc_written = report.bc_written
        if outcome.status is ResultStatus.OK and not first.dry_run:
            metrics.USER_LAST_SUCCESS.labels(metrics.user_label(setup.user_id)).set(time.time())
        _log().info("applied", user_id=setup.user_id, kind=str(first.kind),
                    commands=len(segment), status=str(outcome.status), reason=outcome.reason,
                    **{k: v for k, v in outcome.summary.items() if v})
        return outcome

    def _apply_changes(self, setup: UserSetup, commands: list[SyncCommand],
                       ran_together: SyncReport | BaseException | None) -> SyncReport:
        if isinstance(ran_together, BaseException):
            raise ran_together  # mapped to an outcome (or retried) as if raised here
        if ran_together is not None:
            return ran_together
        services = self._services_now()
        bc_changes = merge_bc_changes(commands)
        hint = any(c.kind is CommandKind.GRAPH_HINT for c in commands)
        return self._run(apply_changes(setup, graph=services.graph, bc=services.bc,
                                       store=self.store, bc_changes=bc_changes,
                                       read_outlook_delta=hint, sessions=self._sessions))

    # --- results ---

    def _bc_changes(self, written: list[dict[str, Any]], trace_id: str) -> list[Outgoing]:
        """BC contacts as our writes left them (an Outlook change taken to BC), published as
        the change feed publishes a BC change, with the feed's own message id: the other users
        holding the contact get it now, not after BC's notification (up to 30 s on a real
        tenant) and the feed's next round; the feed's copy that follows is the same message,
        recognised downstream as a duplicate (decision 2). A write BC answered without a
        usable contact is left to the feed."""
        out = []
        company_id = self._services_now().bc.company_id
        for raw in written:
            try:
                change = BcContactChanged.upsert(company_id, BcContact.model_validate(raw))
            except ValidationError:
                continue
            out.append(Outgoing(self._changes_topic, change.contact_id, change,
                                trace_id=trace_id,
                                event_id=bc_change_event_id(change, change.version)))
        return out

    def _send(self, c: _Command, outcome: _Outcome) -> Outgoing:
        result = SyncResult(
            user_id=c.command.user_id, command_id=c.event_id, kind=c.command.kind,
            run_id=c.command.run_id, status=outcome.status, dry_run=c.command.dry_run,
            summary=outcome.summary, skipped=outcome.skipped, reason=outcome.reason,
            duration_ms=outcome.duration_ms, plan=outcome.plan,
        )
        return Outgoing(self._results_topic, c.command.user_id, result, trace_id=c.trace_id)


def _span_attributes(setup: UserSetup, segment: list[_Command]) -> dict[str, str | int]:
    return {"contactsync.user": metrics.user_label(setup.user_id),
            "contactsync.command": str(segment[0].command.kind),
            "contactsync.commands": len(segment)}


def by_topic(record: WorkRecord) -> Hashable:
    """A whole poll is one group: its users run side by side (`Applier.handle`)."""
    return record.topic


def _by_user(commands: list[_Command]) -> list[tuple[str, list[_Command]]]:
    """Commands by user id (the key groups them already; the payload's user id decides)."""
    users: dict[str, list[_Command]] = {}
    for c in commands:
        users.setdefault(c.command.user_id, []).append(c)
    return list(users.items())


def _segments(commands: list[_Command]) -> list[list[_Command]]:
    """Runs of consecutive near-real-time commands coalesce; sync / full_sync (and a dry-run
    near-real-time command, which is refused) stand alone."""

    def coalescible(c: _Command) -> bool:
        return c.command.kind in NEAR_REAL_TIME and not c.command.dry_run

    segments: list[list[_Command]] = []
    for c in commands:
        if coalescible(c) and segments and coalescible(segments[-1][0]):
            segments[-1].append(c)
        else:
            segments.append([c])
    return segments
