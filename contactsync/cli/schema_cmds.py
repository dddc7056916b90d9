"""`contactsync schemas export|check`: the JSON Schema files of every message and contract."""

from __future__ import annotations

import typer

schemas_app = typer.Typer(no_args_is_help=True, help="JSON Schemas of the topic messages.")


@schemas_app.command()
def export() -> None:
    """Regenerate schemas/json/*.schema.json from the pydantic models."""
    from contactsync.schemas.export import SCHEMA_DIR, write_all

    for name in write_all():
        typer.echo(f"wrote {SCHEMA_DIR.name}/{name}")


@schemas_app.command()
def check() -> None:
    """Exit 1 when the schema files differ from the models."""
    from contactsync.schemas.export import stale_files

    stale = stale_files()
    if stale:
        typer.echo("stale: " + ", ".join(stale) + " (run `contactsync schemas export`)")
        raise typer.Exit(1)
    typer.echo("schemas are up to date")
