"""`contactsync console`: the admin console in the browser (uvicorn), over the store and Kafka."""

from __future__ import annotations

from typing import Annotated

import typer

from contactsync.cli.common import settings_and_logging, user_errors
from contactsync.cli.webhook_cmd import UVICORN_LOGGING


def console(
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 8070,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on")] = "127.0.0.1",
) -> None:
    """The admin console: users, their runs, conflicts, dead letters, health; and actions."""
    from contactsync.console.access import refuse_reason
    from contactsync.console.signin import SignInSettings

    sign_in = SignInSettings()
    # Without sign-in the console is open, so only on loopback.
    reason = sign_in.problem() or refuse_reason(host, identity_configured=sign_in.configured)
    if reason:
        typer.secho(f"error: {reason}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    settings = settings_and_logging()
    import uvicorn

    from contactsync.console.app import create_console_app
    from contactsync.console.results import ResultsFeed
    from contactsync.store import Store

    with user_errors():
        store = Store.open(settings.database_url)
        feed = ResultsFeed(settings)
        try:
            feed.start()
            access = ("Entra ID sign-in" if sign_in.configured
                      else "open: no sign-in, loopback only")
            typer.echo(f"console on http://{host}:{port}/ ({access})")
            uvicorn.run(create_console_app(settings, store, feed.view(), sign_in), host=host,
                        port=port, timeout_graceful_shutdown=5, proxy_headers=True,
                        **UVICORN_LOGGING)
        finally:
            feed.stop()
            store.close()
