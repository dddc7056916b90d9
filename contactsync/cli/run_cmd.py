"""`contactsync run`: every role of the pipeline in one process, against the configured tenant.

Kafka is the one KAFKA_BOOTSTRAP_SERVERS names (the Maven-jar local broker is development tooling:
`contactsync kafka up` starts one and prints its address); the store defaults to SQLite. For the
whole thing against the emulators, use `contactsync sandbox`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from contactsync.cli.common import MetricsPort, settings_and_logging, stop_on_signals, user_errors
from contactsync.roles import ALL_ROLES  # the pipeline, Kafka and the store load in run()


def run(
    roles: Annotated[str, typer.Option(help="Comma-separated roles to run")] = ",".join(ALL_ROLES),
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The webhook's port")] = 8080,
    metrics_port: MetricsPort = None,
    console_port: Annotated[int | None, typer.Option(
        "--console-port", min=1, max=65535,
        help="Serve the admin console on this port (off unless given)")] = None,
    console_host: Annotated[str, typer.Option(
        "--console-host", help="The console's interface (loopback unless sign-in is set)")]
    = "127.0.0.1",
) -> None:
    """Run the pipeline's roles (webhook, subscriptions, bc-changes, router, applier, reconcile)."""
    from contactsync.credentials import check_credential_settings
    from contactsync.kafka.io import resolve_bootstrap
    from contactsync.kafka.topics import ensure_topics_at
    from contactsync.pipeline import Pipeline
    from contactsync.store import Store
    from contactsync.sync.services import ConfigError

    settings = settings_and_logging(one_shot=False)
    stop = stop_on_signals()
    chosen = tuple(r.strip() for r in roles.split(",") if r.strip())
    with user_errors():
        unknown = sorted(set(chosen) - set(ALL_ROLES))
        if unknown:
            raise ConfigError(f"unknown roles {unknown}; roles: {', '.join(ALL_ROLES)}")
        if console_port is not None:
            _check_console_access(console_host, console_port)
        if "reconcile" in chosen:  # a bad schedule is one sentence now, not a failed role
            from contactsync.producers.reconcile import parse_schedule

            parse_schedule(settings.reconcile_schedule)
        if settings.uses_emulators:
            raise ConfigError("no tenant configured: set CONTACTSYNC_GRAPH_BASE_URL and "
                              "CONTACTSYNC_BC_BASE_URL, or run `contactsync sandbox`")
        check_credential_settings(settings)  # one sentence now, not a failed role per role
        resolve_bootstrap(settings)  # none configured: one sentence now, not a failed role
        ensure_topics_at(settings, settings)
        store = Store.open(settings.database_url)
    pipeline = Pipeline(settings, store, roles=chosen, webhook_host=host, webhook_port=port,
                        metrics_port=metrics_port, console_port=console_port,
                        console_host=console_host)
    try:
        with user_errors():
            pipeline.start()
        typer.echo(f"running {', '.join(chosen)}; Ctrl-C stops them")
        if pipeline.console_url:
            typer.echo(f"console on {pipeline.console_url}")
        while not stop.wait(0.5) and not pipeline.stop_event.is_set():
            pass
    finally:
        pipeline.stop()
        store.close()
    for name, error in pipeline.failed_roles.items():
        typer.echo(f"role {name} failed: {type(error).__name__}: {error}", err=True)
    if pipeline.failed_roles:
        raise typer.Exit(1)


def _check_console_access(host: str, port: int) -> None:
    """The same rule as `contactsync console` (without sign-in, loopback only), and a port
    another program holds is one sentence now, not a failed start of every role."""
    import socket

    from contactsync.console.access import refuse_reason
    from contactsync.console.signin import SignInSettings
    from contactsync.sync.services import ConfigError

    sign_in = SignInSettings()
    reason = sign_in.problem() or refuse_reason(host, identity_configured=sign_in.configured,
                                                   option="--console-host")
    if reason:
        raise ConfigError(reason)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ConfigError(f"the console cannot listen on {host}:{port} ({exc.strerror}): "
                              "choose another --console-port") from None
