"""contactsync: two-way contact sync between Business Central and Outlook.

Every command reads its settings from CONTACTSYNC_* variables (and KAFKA_BOOTSTRAP_SERVERS) and
an optional contactsync.toml; see README.md.

Exit codes: 0 ok, 1 error (one sentence says what to do), 2 bad command line,
3 some contacts failed or a safety rail stopped a run.
"""

from __future__ import annotations

from typing import Annotated

import typer

from contactsync.cli import (
    audit_cmd,
    console_cmd,
    db_cmds,
    dlq_cmds,
    doctor_cmd,
    emulate_cmd,
    kafka_cmds,
    reconcile_cmd,
    role_cmds,
    run_cmd,
    sandbox_cmd,
    schema_cmds,
    sync_cmd,
    users_cmds,
    webhook_cmd,
)
from contactsync.cli.common import ErrorFrame

# No local variables in crash tracebacks: they would print secrets, tokens and contacts.
# ErrorFrame: every command's failures end as one sentence and exit code 1 (cli/common.py).
app = typer.Typer(cls=ErrorFrame, no_args_is_help=True, add_completion=False, help=__doc__,
                  pretty_exceptions_show_locals=False)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"contactsync {version('contactsync')}")
        raise typer.Exit()


@app.callback()
def main(
    _version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit",
    )] = False,
) -> None:
    pass


app.add_typer(kafka_cmds.kafka_app, name="kafka")
app.add_typer(kafka_cmds.topics_app, name="topics")
app.add_typer(schema_cmds.schemas_app, name="schemas")
app.add_typer(users_cmds.users_app, name="users")
app.command()(sandbox_cmd.sandbox)
app.command()(emulate_cmd.emulate)
app.add_typer(dlq_cmds.dlq_app, name="dlq")
app.add_typer(db_cmds.db_app, name="db")
app.command()(webhook_cmd.webhook)
app.command()(sync_cmd.sync)
app.command()(role_cmds.router)
app.command()(role_cmds.applier)
app.command(name="bc-changes")(role_cmds.bc_changes)
app.command()(role_cmds.subscriptions)
app.command()(run_cmd.run)
app.command()(reconcile_cmd.reconcile)
app.command()(audit_cmd.audit)
app.command()(console_cmd.console)
app.command()(doctor_cmd.doctor)
