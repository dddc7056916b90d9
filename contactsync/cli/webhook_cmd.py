"""`contactsync webhook`: the notification endpoint in the foreground (uvicorn).

Subscriptions (and their clientState secrets) come from the state store (settings.database_url);
Kafka from the settings. Graph requires HTTPS: run it behind a TLS-terminating proxy.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from contactsync.cli.common import settings_and_logging, user_errors

# uvicorn's own logging config gives its loggers handlers of their own, past the redaction
# configure_logging puts on the root handler (an "Exception in ASGI application" traceback can
# hold a mailbox). Without it, its lines propagate to the root and are redacted.
UVICORN_LOGGING: dict[str, Any] = {"log_config": None, "log_level": "warning",
                                   "access_log": False}


def webhook(
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 8080,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on")] = "127.0.0.1",
) -> None:
    """Receive Graph and Business Central notifications and publish them to Kafka."""
    settings = settings_and_logging(one_shot=False)
    # Imported here: the web stack is not loaded for every other command.
    import uvicorn

    from contactsync.health import register_role_checks
    from contactsync.producers.webhook import StoreRegistry, create_webhook_app
    from contactsync.store import Store

    with user_errors():
        store = Store.open(settings.database_url)
        try:
            # Kafka's readiness is the webhook's producer's own (producers/webhook/health.py).
            register_role_checks(None, store)
            app = create_webhook_app(settings, StoreRegistry(store))
            uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=5,
                        **UVICORN_LOGGING)
        finally:
            store.close()
