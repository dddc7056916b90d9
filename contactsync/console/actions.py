"""What an admin can do from the console; each action is audited with who did it.

Runs go through Kafka exactly as the CLI sends them: `producers.reconcile.CommandPublisher`
publishes the `sync.commands` (a Full sync is the CLI's `reconcile_command`), so console and
CLI never disagree. Dead letters are read and replayed with `contactsync dlq`'s own code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from contactsync.console.views import CONSOLE_ACTION
from contactsync.engine.bcfilter import ContactFilter, FilterError
from contactsync.schemas.setup import OutlookDeletePolicy, UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.records import AuditRecord

RUN_KINDS = {"sync": "Sync", "full_sync": "Full sync"}


def audit(store: Store, user_id: str, by: str, action: str, **details: object) -> None:
    store.audit.append(AuditRecord(user_id=user_id, kind=CONSOLE_ACTION,
                                   details={"action": action, "by": by, **details}))


def enable(settings: Settings, store: Store, user_id: str, by: str) -> str:
    """As `contactsync users enable`: a stopped setup is refused; says what the first sync
    will do."""
    from contactsync.cli.users_cmds import enable_checked

    _, plan = enable_checked(settings, store, user_id)
    audit(store, user_id, by, "enable")
    return f"enabled {user_id}. {plan}"


def disable(store: Store, user_id: str, by: str) -> str:
    store.setups.disable(user_id)
    audit(store, user_id, by, "disable")
    return f"disabled {user_id}"


def run(settings: Settings, store: Store, user_id: str, kind: str, by: str, *,
        dry_run: bool = False, force: bool = False) -> str:
    """Publish one Sync or Full sync command for the user; the applier runs it."""
    from contactsync.producers.reconcile import CommandPublisher, reconcile_command
    from contactsync.schemas.messages import CommandKind, SyncCommand
    from contactsync.sync.run_ids import new_run_id

    if not store.setups.require(user_id).enabled:
        return f"sync is disabled for {user_id}: enable it first"
    run_id = new_run_id("console")
    if kind == "full_sync":
        command = reconcile_command(user_id, run_id, dry_run=dry_run, force=force,
                                    reason="console")
    else:
        command = SyncCommand(user_id=user_id, kind=CommandKind.SYNC, reason="console",
                              run_id=run_id, dry_run=dry_run, force=force)
    publisher = CommandPublisher(settings)
    try:
        publisher.publish([command])
    finally:
        publisher.close()
    audit(store, user_id, by, kind, run_id=run_id, dry_run=dry_run, force=force)
    what = RUN_KINDS[kind] + (" (dry run)" if dry_run else "")
    return f"{what} for {user_id} published as run {run_id}; its result appears here"


@dataclass(frozen=True)
class ForcePreview:
    """What a Full sync past the mass-delete rail would do, from a dry run made just now."""

    removals: list[str]  # "remove from Outlook (reason)  Jane Doe <j***@contoso.com>  [ids]"
    totals: dict[str, int]


def force_preview(settings: Settings, store: Store, user_id: str) -> ForcePreview:
    """`contactsync sync USER --full --dry-run --force`'s own run (nothing is written)."""
    import asyncio

    from contactsync.engine.actions import DeleteFromOutlook
    from contactsync.engine.links import SyncMode
    from contactsync.sync.runner import SyncReport, sync_user
    from contactsync.sync.services import open_services

    setup = store.setups.require(user_id)

    async def dry_run() -> SyncReport:
        async with open_services(settings, store) as services:
            return await sync_user(setup, SyncMode.FULL, graph=services.graph, bc=services.bc,
                                   store=store, dry_run=True, force=True)

    report = asyncio.run(dry_run())
    s = report.summary
    removals = [line for write, line in zip(report.planned_writes, report.plan, strict=True)
                if isinstance(write, DeleteFromOutlook)]
    totals = {"create in Outlook": s.created_in_outlook, "update in Outlook": s.updated_outlook,
              "remove from Outlook": s.deleted_from_outlook, "create in BC": s.created_in_bc,
              "update in BC": s.updated_bc}
    return ForcePreview(removals, totals)


def preview_too_slow(user_id: str, seconds: float) -> str:
    """The one sentence when the preview outlasts the page's bound, with the next step."""
    return (f"the dry run that lists what it would remove did not finish within {seconds:.0f} s "
            f"(a large folder, or Graph or BC answering slowly): run `contactsync sync {user_id} "
            f"--full --dry-run --force` in a terminal to see the list, then force it there "
            f"with `contactsync sync {user_id} --full --force`")


def filter_problem(field: str, expression: str) -> str:
    """The CLI's error for one field's filter (with the caret under the bad character), or ""."""
    try:
        ContactFilter.parse({field: expression})
    except FilterError as exc:
        return str(exc)
    return ""


def _folder_of(form: dict[str, str]) -> str:
    from contactsync.sync.services import ConfigError

    folder = form.get("folder", "")
    if not folder.strip():
        raise ConfigError("the folder name is blank: name the Outlook folder, e.g. "
                          "'Business Central'")
    return folder


def _filter_of(form: dict[str, str]) -> dict[str, str]:
    """The form's one filter field (none: all contacts); FilterError (with its caret) if bad."""
    field, expression = form.get("filter_field", "").strip(), form.get("filter_expression", "")
    filters = {field: expression} if field else {}
    ContactFilter.parse(filters)
    return filters


def setup_changes(setup: UserSetup, form: dict[str, str]) -> dict[str, object]:
    """What the edit form changes in `setup` (as `users set` options would); raises with the
    CLI's sentence when a value is refused (a blank folder, a filter that does not parse)."""
    from contactsync.sync.services import ConfigError

    try:
        policy = OutlookDeletePolicy(form.get("outlook_delete", ""))
    except ValueError:
        raise ConfigError("pick what a deletion in Outlook does: "
                          f"{' or '.join(p.value for p in OutlookDeletePolicy)}") from None
    wanted: dict[str, object] = {
        "folder_name": _folder_of(form), "contact_filter": _filter_of(form),
        "create_in_bc": form.get("create_in_bc") == "on", "outlook_delete_policy": policy}
    return {name: value for name, value in wanted.items() if getattr(setup, name) != value}


SETUP_LABELS = {"folder_name": "Outlook folder", "contact_filter": "Filter",
                "create_in_bc": "Create in BC", "outlook_delete_policy": "Deleted in Outlook"}


def shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "all contacts"
    return str(value)


def change_rows(setup: UserSetup, changes: dict[str, object]) -> list[tuple[str, str, str]]:
    """(setting, now, after) for the confirmation page."""
    return [(SETUP_LABELS[name], shown(getattr(setup, name)), shown(value))
            for name, value in changes.items()]


def edit_form(setup: UserSetup) -> dict[str, str]:
    """The edit form's fields as the setup has them now."""
    field, expression = next(iter(setup.contact_filter.items()), ("", ""))
    return {"folder": setup.folder_name, "filter_field": field, "filter_expression": expression,
            "create_in_bc": "on" if setup.create_in_bc else "",
            "outlook_delete": setup.outlook_delete_policy.value}


def edit_user(settings: Settings, store: Store, user_id: str, changes: dict[str, object],
              by: str) -> str:
    """Apply confirmed `changes` with `users set`'s checks (a new filter is counted in BC,
    a folder another setup holds is refused); an exception says why not."""
    from contactsync.cli.users_cmds import set_checked
    from contactsync.sync.setup_checks import selected_sentence

    _, selected = set_checked(settings, store, user_id, changes)
    audit(store, user_id, by, "edit", changes=_jsonable(changes))
    counted = "" if selected is None else f" {selected_sentence(selected)}"
    return f"updated {user_id}: {', '.join(sorted(changes))}.{counted}"


def _jsonable(changes: dict[str, object]) -> dict[str, object]:
    return {k: str(v) if isinstance(v, OutlookDeletePolicy) else v for k, v in changes.items()}


def add_user(settings: Settings, store: Store, form: dict[str, str], by: str) -> str:
    """Add a setup from the form with the checks of `contactsync users add` (Graph knows the
    mailbox, the folder is free, the filter parses); an exception says why not."""
    from contactsync.cli.users_cmds import add_checked
    from contactsync.sync.setup_checks import selected_sentence

    mailbox = form.get("mailbox", "").strip()
    folder, filters = _folder_of(form), _filter_of(form)
    setup = UserSetup(user_id=form.get("user_id", "").strip() or mailbox, mailbox=mailbox,
                      folder_name=folder, contact_filter=filters,
                      enabled=form.get("enable") == "on")
    added, selected = add_checked(settings, store, setup)
    audit(store, added.user_id, by, "add", setup=added.model_dump(mode="json"))
    later = "" if added.enabled else "; it starts disabled: enable it on its page to sync"
    return f"added {added.user_id}. {selected_sentence(selected)}{later}"


@dataclass(frozen=True)
class DeadLetterGroup:
    reason: str
    entries: list[dict[str, object]]


def dead_letters(settings: Settings) -> list[DeadLetterGroup]:
    """The dead letters (as `contactsync dlq list` reads them), grouped by reason."""
    from contactsync.cli.dlq_cmds import load_dead_letters

    _, entries, ledger = load_dead_letters(settings)
    ledger.close()
    groups: dict[str, list[dict[str, object]]] = {}
    for entry in sorted(entries, key=lambda e: e.timestamp_ms, reverse=True):
        summary = entry.summary()
        summary["value"] = entry.letter.value if entry.letter else ""
        groups.setdefault(str(summary["reason"]), []).append(summary)
    return [DeadLetterGroup(reason, items) for reason, items in groups.items()]


def replay(settings: Settings, store: Store, by: str, *, reason: str = "",
           where: str = "") -> str:
    """Replay one dead letter (`where` = PARTITION:OFFSET) or every one of `reason` not yet
    replayed, with `contactsync dlq replay`'s code; returns what happened."""
    from contactsync.cli.dlq_cmds import load_dead_letters
    from contactsync.kafka.deadletter import replay_entries
    from contactsync.kafka.io import make_producer

    _, entries, ledger = load_dead_letters(settings)
    try:
        chosen = [e for e in entries
                  if (where and f"{e.partition}:{e.offset}" == where)
                  or (not where and e.summary()["reason"] == reason)]
        if not chosen:
            return "no such dead letter (it may have been replayed meanwhile)"
        producer = make_producer(settings, client_id="contactsync-console-replay")
        try:
            outcomes = replay_entries(chosen, ledger, producer)
        finally:
            producer.close(timeout=10)
    finally:
        ledger.close()
    counts = Counter(o.status for o in outcomes)
    for outcome in outcomes:
        if outcome.status == "replayed":
            letter = outcome.entry.letter
            audit(store, (letter.key if letter else None) or "-", by, "replay_dead_letter",
                  dead_letter=f"{outcome.entry.partition}:{outcome.entry.offset}",
                  target=outcome.target)
    return (f"{counts['replayed']} replayed, {counts['already_replayed']} already replayed, "
            f"{counts['unreadable']} unreadable")
