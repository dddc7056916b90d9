"""`contactsync users ...`: each user's setup (BC's "Contact Sync Setup" page), and validate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from contactsync.cli.common import settings_and_logging, user_errors
from contactsync.engine.bcfilter import ContactFilter
from contactsync.schemas.setup import (  # typer reads OutlookDeletePolicy
    OutlookDeletePolicy,
    UserSetup,
)

if TYPE_CHECKING:
    from contactsync.settings import Settings
    from contactsync.store import Store
    from contactsync.sync.services import Services
    from contactsync.sync.setup_checks import Mailbox

T = TypeVar("T")


def open_store(settings: Settings) -> Store:
    """contactsync.sync.services.open_store, loaded when a command runs, not at CLI start."""
    from contactsync.sync.services import open_store

    return open_store(settings)


users_app = typer.Typer(no_args_is_help=True, help="Users' sync setups.")

FilterOpt = Annotated[
    list[str] | None,
    typer.Option("--filter", help='FIELD=EXPR in BC filter syntax, e.g. "city=Seattle|Redmond"'),
]


def parse_filters(items: list[str] | None) -> dict[str, str]:
    """FIELD=EXPR options -> the setup's filter; a bad expression is a clear error."""
    filters: dict[str, str] = {}
    for item in items or []:
        field, sep, expression = item.partition("=")
        if not sep or not field.strip():
            raise typer.BadParameter(f"{item!r}: write FIELD=EXPRESSION, e.g. city=Seattle")
        filters[field.strip()] = expression
    ContactFilter.parse(filters)  # raises FilterError with the bad character marked
    return filters


def folder_name(name: str) -> str:
    """The Outlook folder's name as given; a blank one is refused (it names no folder)."""
    if not name.strip():
        raise typer.BadParameter("the folder name is blank: name the Outlook folder, e.g. "
                                 "--folder 'Business Central'", param_hint="--folder")
    return name


def _describe(setup: UserSetup) -> str:
    flt = ", ".join(f"{k}={v}" for k, v in setup.contact_filter.items()) or "(all contacts)"
    state = "stopped" if setup.stopped_reason else "enabled" if setup.enabled else "disabled"
    return (f"{setup.user_id}  mailbox={setup.mailbox}  folder={setup.folder_name!r}  {state}  "
            f"filter: {flt}  create-in-bc={setup.create_in_bc}  "
            f"outlook-delete={setup.outlook_delete_policy}")


def _with_services(settings: Settings, store: Store, check: Callable[[Services], Awaitable[T]]
                   ) -> T:
    from contactsync.sync.services import open_services

    async def run() -> T:
        async with open_services(settings, store) as services:
            return await check(services)

    return asyncio.run(run())


def add_checked(settings: Settings, store: Store, setup: UserSetup) -> tuple[UserSetup, int]:
    """Store a new setup once Graph knows its mailbox and its folder is free; returns it and
    how many BC contacts its filter selects. The admin console adds users with this too."""
    from contactsync.store import SetupExistsError
    from contactsync.sync.setup_checks import count_selected, resolve_mailbox

    if store.setups.get(setup.user_id) is not None:
        raise SetupExistsError(setup.user_id)
    store.setups.require_folder_free(setup)  # as typed: refused before any request

    async def check(services: Services) -> tuple[Mailbox, int]:
        found = await resolve_mailbox(services.graph, setup.mailbox)
        store.setups.require_folder_free(  # the same mailbox under another name
            setup.model_copy(update={"mailbox_id": found.user_id}), found.aliases)
        return found, await count_selected(services.bc, setup.contact_filter)

    found, selected = _with_services(settings, store, check)
    added = store.setups.add(setup.model_copy(update={"mailbox_id": found.user_id}),
                             aliases=found.aliases)
    return added, selected


@users_app.command("add")
def add(
    mailbox: Annotated[str, typer.Argument(help="Graph user id or userPrincipalName")],
    user_id: Annotated[
        str | None, typer.Option(help="Our id for the user (default: MAILBOX)")
    ] = None,
    folder: str = "Business Central",
    filters: FilterOpt = None,
    create_in_bc: Annotated[bool, typer.Option(help="New Outlook contacts go to BC")] = True,
    outlook_delete: OutlookDeletePolicy = OutlookDeletePolicy.RECREATE,
    enable: Annotated[bool, typer.Option(
        "--enable", help="Start syncing at once (default: disabled until `users enable`)")]
    = False,
) -> None:
    """Add a user's setup (checked against Graph and BC; disabled unless --enable)."""
    from contactsync.sync.setup_checks import selected_sentence

    settings = settings_and_logging()
    with user_errors():
        setup = UserSetup(user_id=user_id or mailbox, mailbox=mailbox,
                          folder_name=folder_name(folder), contact_filter=parse_filters(filters),
                          enabled=enable, create_in_bc=create_in_bc,
                          outlook_delete_policy=outlook_delete)
        with open_store(settings) as store:
            setup, selected = add_checked(settings, store, setup)
    typer.echo(f"added {_describe(setup)}")
    typer.echo(selected_sentence(selected))
    if not enable:
        typer.echo(f"nothing syncs yet: `contactsync users enable {setup.user_id}` says what "
                   "the first sync will do and starts syncing")


@users_app.command("list")
def list_users(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List every user's setup."""
    settings = settings_and_logging()
    with open_store(settings) as store:
        setups = store.setups.list_all()
    if as_json:
        typer.echo(json.dumps([s.model_dump(mode="json") for s in setups], indent=2))
        return
    for setup in setups:
        typer.echo(_describe(setup))
    if not setups:
        typer.echo("no users yet: contactsync users add MAILBOX")


JsonOpt = Annotated[bool, typer.Option("--json", help="The report as JSON, for scripts")]


@users_app.command("show")
def show(user: str, as_json: JsonOpt = False) -> None:
    """Show one user's setup and sync state."""
    settings = settings_and_logging()
    with user_errors(), open_store(settings) as store:
        setup = store.setups.require(user)
        state = store.state.get(user)
        links = store.links.count(user)
    if as_json:
        from contactsync.metrics import user_label

        typer.echo(json.dumps({
            "setup": setup.model_dump(mode="json"), "linked_contacts": links,
            "last_sync_at": state.last_sync_at.isoformat() if state.last_sync_at else None,
            "last_full_sync_at": (state.last_full_sync_at.isoformat()
                                  if state.last_full_sync_at else None),
            "metrics_user": user_label(setup.user_id),  # the `user` label of its series
        }, indent=2))
        return
    typer.echo(_describe(setup))
    if setup.stopped_reason:
        typer.echo(setup.stopped_reason)
    typer.echo(f"linked contacts: {links}  last sync: {state.last_sync_at or 'never'}  "
               f"last full sync: {state.last_full_sync_at or 'never'}")


@users_app.command("set")
def set_(
    user: str,
    folder: str | None = None,
    filters: FilterOpt = None,
    clear_filter: bool = False,
    create_in_bc: Annotated[bool | None, typer.Option("--create-in-bc/--no-create-in-bc")] = None,
    outlook_delete: OutlookDeletePolicy | None = None,
) -> None:
    """Change a user's setup (only the options given), checked as `users add` checks."""
    from contactsync.sync.setup_checks import selected_sentence

    settings = settings_and_logging()
    changes: dict[str, object] = {}
    with user_errors():
        if folder is not None:
            changes["folder_name"] = folder_name(folder)
        if clear_filter:
            changes["contact_filter"] = {}
        if filters:
            changes["contact_filter"] = parse_filters(filters)
        if create_in_bc is not None:
            changes["create_in_bc"] = create_in_bc
        if outlook_delete is not None:
            changes["outlook_delete_policy"] = outlook_delete
        with open_store(settings) as store:
            setup, selected = set_checked(settings, store, user, changes)
    typer.echo(f"updated {_describe(setup)}")
    if selected is not None:
        typer.echo(selected_sentence(selected))


def set_checked(settings: Settings, store: Store, user: str,
                changes: dict[str, object]) -> tuple[UserSetup, int | None]:
    """Change a setup as `users set` does: a new filter is first counted against BC (how many
    contacts it selects, returned; None when the filter is not changed), then the store
    refuses a folder another setup holds. The admin console edits setups with this too."""
    from contactsync.sync.setup_checks import count_selected

    store.setups.require(user)
    if "contact_filter" in changes:
        new_filter = dict(changes["contact_filter"])  # type: ignore[call-overload]

        async def check(services: Services) -> int:
            return await count_selected(services.bc, new_filter)

        selected = _with_services(settings, store, check)
    return store.setups.update(user, **changes), selected


@users_app.command("enable")
def enable(user: str) -> None:
    """Enable a user's sync, saying first what the first sync will do (from a dry run)."""
    settings = settings_and_logging()
    with user_errors(), open_store(settings) as store:
        enabled, plan = enable_checked(settings, store, user)
        typer.echo(f"enabled {_describe(enabled)}")
    typer.echo(plan)


def enable_checked(settings: Settings, store: Store, user: str) -> tuple[UserSetup, str]:
    """Enable a setup that is not stopped; returns it and what its first sync will do (a dry
    run). The admin console enables users with this too."""
    from contactsync.store import SetupStoppedError
    from contactsync.sync.setup_checks import first_sync_preview

    setup = store.setups.require(user)
    if setup.stopped_reason:
        raise SetupStoppedError(setup.stopped_reason)

    async def preview(services: Services) -> str:
        return await first_sync_preview(setup, services)

    plan = _with_services(settings, store, preview)
    return store.setups.enable(user), plan


@users_app.command("disable")
def disable(user: str) -> None:
    """Disable a user's sync (the setup and links are kept)."""
    settings = settings_and_logging()
    with user_errors(), open_store(settings) as store:
        typer.echo(f"disabled {_describe(store.setups.disable(user))}")


@users_app.command("remove")
def remove(user: str) -> None:
    """Remove a user's setup and links (Outlook and BC contacts are left as they are)."""
    settings = settings_and_logging()
    with user_errors(), open_store(settings) as store:
        if not store.setups.remove(user):
            from contactsync.store.records import SetupNotFoundError

            raise SetupNotFoundError(user)  # the same sentence as every command's
    typer.echo(f"removed {user}")


@users_app.command("validate")
def validate(user: str, as_json: JsonOpt = False) -> None:
    """Check the mailbox, the folder, BC access and the filter ("Validate Exchange Connection");
    a setup stopped for sharing another setup's folder fails with the reason."""
    from contactsync.sync.setup_checks import count_selected, resolve_mailbox, selected_sentence

    settings = settings_and_logging()

    async def check(store: Store, setup: UserSetup, services: Services) -> list[str]:
        found = await resolve_mailbox(services.graph, setup.mailbox)
        setup = store.setups.record_mailbox_id(setup.user_id, found.user_id)
        folders = await services.graph.list_folders(setup.mailbox)
        lines = [f"ok  mailbox {setup.mailbox}: Graph user {found.user_id}, "
                 f"{len(folders)} contact folders"]
        names = {str(f.get('displayName', '')).lower() for f in folders}
        there = setup.folder_name.lower() in names
        lines.append(f"ok  folder {setup.folder_name!r}: "
                     + ("exists" if there else "will be created by the first sync"))
        selected = await count_selected(services.bc, setup.contact_filter)
        lines.append(f"ok  Business Central company {settings.bc_company}: reachable; "
                     + selected_sentence(selected))
        return lines

    with user_errors(), open_store(settings) as store:
        setup = store.setups.require(user)
        lines = _with_services(settings, store, lambda s: check(store, setup, s))
        setup = store.setups.require(user)
        sharing = [s.user_id for s in store.setups.folder_conflicts()
                   if s.shares_folder_with == user]
    if as_json:  # a check that fails ends the command with its sentence, as without --json
        typer.echo(json.dumps({"user": user, "ok": not setup.stopped_reason,
                               "checks": [line.removeprefix("ok  ") for line in lines],
                               "sharing_folder": sharing,
                               "stopped_reason": setup.stopped_reason or None}, indent=2))
    else:
        for line in lines:
            typer.echo(line)
        if sharing:
            typer.echo(f"note: setup(s) {', '.join(sharing)} share this folder and are stopped: "
                       "give each a folder of its own or remove them")
        if setup.stopped_reason:
            typer.secho(f"error: {setup.stopped_reason}", err=True, fg=typer.colors.RED)
    if setup.stopped_reason:
        raise typer.Exit(1)
