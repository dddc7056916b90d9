"""`contactsync db upgrade|status`: the state store's schema, for operators.

Every command still migrates the store when it opens it; `db upgrade` lets a deployment do it
once, before the roles start (a Job, a one-shot compose service), and `db status` says where
the store is and whether it is current.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from contactsync.cli.common import settings_and_logging, user_errors

db_app = typer.Typer(no_args_is_help=True, help="The state store (SQLite or PostgreSQL).")

Json = Annotated[bool, typer.Option("--json", help="The report as JSON")]


def _status(url: str) -> dict[str, Any]:
    from contactsync.store import Store
    from contactsync.store.migrations import LATEST_VERSION, MIGRATIONS, current_version

    with Store.open(url, migrate_schema=False) as store, store.engine.connect() as conn:
        current = current_version(conn)
        where = store.engine.url.render_as_string(hide_password=True)
    return {
        "database": where,
        "version": current,
        "latest": LATEST_VERSION,
        "current": current == LATEST_VERSION,
        "pending": [{"version": m.version, "description": m.description}
                    for m in MIGRATIONS if m.version > current],
    }


@db_app.command()
def status(as_json: Json = False) -> None:
    """Where the store is, its schema version, and the migrations it lacks."""
    settings = settings_and_logging()
    with user_errors():
        report = _status(settings.database_url)
    if as_json:
        typer.echo(json.dumps(report))
        return
    state = "current" if report["current"] else f"{len(report['pending'])} migration(s) pending"
    typer.echo(f"{report['database']}: schema version {report['version']} of "
               f"{report['latest']} ({state})")
    for step in report["pending"]:
        typer.echo(f"  pending {step['version']}: {step['description']}")
    if report["pending"]:
        typer.echo("`contactsync db upgrade` applies them")


@db_app.command()
def upgrade(as_json: Json = False) -> None:
    """Apply the migrations the store lacks (safe to run again; concurrent runs wait)."""
    from contactsync.store import Store
    from contactsync.store.migrations import migrate

    settings = settings_and_logging()
    with user_errors():
        with Store.open(settings.database_url, migrate_schema=False) as store:
            applied = migrate(store.engine)
        report = _status(settings.database_url)
    if as_json:
        typer.echo(json.dumps({**report, "applied": applied}))
        return
    if applied:
        typer.echo(f"applied {', '.join(map(str, applied))}; "
                   f"{report['database']} is at schema version {report['version']}")
    else:
        typer.echo(f"{report['database']} is current (schema version {report['version']})")
