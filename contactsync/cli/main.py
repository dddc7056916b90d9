"""The `contactsync` command line: one entry point, one sub-command group per capability."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
