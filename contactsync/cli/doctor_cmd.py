"""`contactsync doctor`: every check of a deployment, one line each (contactsync/doctor.py)."""

from __future__ import annotations

import asyncio
import json

import typer

from contactsync.cli.common import settings_and_logging, user_errors


def doctor(
    user: list[str] = typer.Option([], "--user", help="Check this user's mailbox (repeatable; "
                                   "default: every enabled user)"),
    write_test: bool = typer.Option(False, "--write-test", help="Also create and remove a "
                                    "contact in a scratch folder of each user's mailbox"),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of lines"),
) -> None:
    """Check settings, tokens, Graph, BC, the public webhook URL, Kafka, the database and the
    setups; exit 0 only when every check passes."""
    from contactsync.doctor import run_doctor
    from contactsync.store import Store

    settings = settings_and_logging()
    with user_errors():
        store = Store.open(settings.database_url, migrate_schema=False)
        try:
            report = asyncio.run(run_doctor(settings, store, users=list(user),
                                            write_test=write_test))
        finally:
            store.close()
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2))
    else:
        for check in report.checks:
            typer.echo(check.line())
    raise typer.Exit(0 if report.ok else 1)
