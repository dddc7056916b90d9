"""`contactsync users ...`: each user's setup (BC's "Contact Sync Setup" page), and validate."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer

from contactsync.cli.common import settings_and_logging, user_errors
from contactsync.engine.bcfilter import ContactFilter
from schemas.setup import OutlookDeletePolicy, UserSetup  # typer reads OutlookDeletePolicy

if TYPE_CHECKING:
    from contactsync.settings import Settings
    from contactsync.store import Store


def open_store(settings: Settings) -> Store:
    """contactsync.sync.services.open_store, loaded when a command runs, not at CLI start."""
    from contactsync.sync.services import open_store

    return open_store(settings)


users_app = typer.Typer(no_args_is_help=True, help="Users' sync setups.")

FilterOpt = Annotated[
    list[str] | None,
    typer.Option("--filter", help="FIELD=EXPR in BC filter syntax, e.g. city='Seattle|Redmond'"),
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


def _describe(setup: UserSetup) -> str:
    flt = ", ".join(f"{k}={v}" for k, v in setup.contact_filter.items()) or "(all contacts)"
    state = "enabled" if setup.enabled else "disabled"
    return (f"{setup.user_id}  mailbox={setup.mailbox}  folder={setup.folder_name!r}  {state}  "
            f"filter: {flt}  create-in-bc={setup.create_in_bc}  "
            f"outlook-delete={setup.outlook_delete_policy}")


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
    enabled: bool = True,
) -> None:
    """Add a user's setup."""
    settings = settings_and_logging()
    with user_errors():
        setup = UserSetup(user_id=user_id or mailbox, mailbox=mailbox, folder_name=folder,
                          contact_filter=parse_filters(filters), enabled=enabled,
                          create_in_bc=create_in_bc, outlook_delete_policy=outlook_delete)
        with open_store(settings) as store:
            store.setups.add(setup)
    typer.echo(f"added {_describe(setup)}")


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


@users_app.command("show")
def show(user: str) -> None:
    """Show one user's setup and sync state."""
    settings = settings_and_logging()
    with user_errors(), open_store(settings) as store:
        setup = store.setups.require(user)
        state = store.state.get(user)
        links = store.links.count(user)
    typer.echo(_describe(setup))
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
    """Change a user's setup (only the options given)."""
    settings = settings_and_logging()
    changes: dict[str, object] = {}
    if folder is not None:
        changes["folder_name"] = folder
    if clear_filter:
        changes["contact_filter"] = {}
    if filters:
        changes["contact_filter"] = parse_filters(filters)
    if create_in_bc is not None:
        changes["create_in_bc"] = create_in_bc
    if outlook_delete is not None:
        changes["outlook_delete_policy"] = outlook_delete
    with user_errors(), open_store(settings) as store:
        setup = store.setups.update(user, **changes)
    typer.echo(f"updated {_describe(setup)}")


@users_app.command("enable")
def enable(user: str) -> None:
    """Enable a user's sync."""
    settings = settings_and_logging()
    with user_errors(), open_store(settings) as store:
        typer.echo(f"enabled {_describe(store.setups.enable(user))}")


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
            raise typer.BadParameter(f"no setup for user {user!r}")
    typer.echo(f"removed {user}")


@users_app.command("validate")
def validate(user: str) -> None:
    """Check mailbox access, the folder and BC access ("Validate Exchange Connection")."""
    from contactsync.sync.services import open_services

    settings = settings_and_logging()

    async def check() -> list[str]:
        lines = []
        with open_store(settings) as store:
            setup = store.setups.require(user)
            async with open_services(settings, store) as services:
                folders = await services.graph.list_folders(setup.mailbox)
                lines.append(f"ok  mailbox {setup.mailbox}: {len(folders)} contact folders")
                names = {str(f.get('displayName', '')).lower() for f in folders}
                there = setup.folder_name.lower() in names
                lines.append(f"ok  folder {setup.folder_name!r}: "
                             + ("exists" if there else "will be created by the first sync"))
                contacts = await services.bc.list_contacts("type eq 'Person'", page_size=1)
                lines.append(f"ok  Business Central company {settings.bc_company}: reachable"
                             f" ({'has' if contacts else 'no'} person contacts)")
        return lines

    with user_errors():
        for line in asyncio.run(check()):
            typer.echo(line)
