"""`contactsync sandbox`: the README's main job, everything on this machine.

With no tenant configured it starts the local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS
names one, or it runs already: then it is used and left running), the Graph and BC emulators
seeded with contacts, three users with their own filters, and every role of the pipeline;
queues a full sync for each user, then shows a live view of the results. `--demo` edits
contacts on both sides, as people would, and the view shows them arrive. Ctrl-C (or
`--duration`) stops everything it started.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer

from contactsync.cli.common import load_sandbox_tooling, settings_and_logging, user_errors

# Kafka, the emulators, the pipeline and the store load when the sandbox runs, not at CLI start.
if TYPE_CHECKING:
    from rich.table import Table

    from contactsync.emulators.running import RunningEmulators
    from contactsync.schemas.setup import UserSetup
    from contactsync.settings import Settings
    from contactsync.store import Store

SANDBOX_PREFIX = "sandbox."
# Three people with their own filters (BC filter syntax) over the seeded cities.
SANDBOX_USERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("anna@contoso.test", {}),
    ("ben@contoso.test", {"city": "Seattle|Redmond"}),
    ("chloe@contoso.test", {"country": "DK|GB"}),
)


@dataclass
class LiveState:
    results: dict[str, dict[str, int]] = field(default_factory=dict)
    last: dict[str, str] = field(default_factory=dict)
    dead_letters: int = 0
    events: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.events = [*self.events[-9:], f"{time.strftime('%H:%M:%S')} {text}"]


def _fresh_topics(settings: Settings) -> None:
    """The emulators start empty each time, so must the sandbox's topics: messages of an
    earlier sandbox name contacts that no longer exist. Production topics are not touched."""
    from contactsync.kafka.topics import ensure_topics_at, make_admin

    admin = make_admin(settings)
    try:
        old = [t for t in admin.list_topics() if t.startswith(SANDBOX_PREFIX)]
        if old:
            admin.delete_topics(old)
            deadline = time.monotonic() + 30
            while set(old) & set(admin.list_topics()) and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        admin.close()
    ensure_topics_at(settings, settings)


def _seed_users(store: Store, emulators: RunningEmulators) -> list[UserSetup]:
    from contactsync.schemas.setup import UserSetup

    setups = []
    for mailbox, contact_filter in SANDBOX_USERS:
        emulators.graph.add_user(mailbox)
        setups.append(store.setups.add(UserSetup(user_id=mailbox, mailbox=mailbox,
                                                 contact_filter=contact_filter)))
    return setups


def _queue_full_syncs(settings: Settings, setups: list[UserSetup]) -> None:
    from contactsync.kafka.io import make_producer
    from contactsync.kafka.topics import SYNC_COMMANDS, topic_name
    from contactsync.schemas.envelope import encode, wrap
    from contactsync.schemas.messages import CommandKind, SyncCommand
    from contactsync.sync.run_ids import new_run_id

    run_id = new_run_id("sandbox")  # a reconcile run: each user's report is kept (the console)
    producer = make_producer(settings)
    try:
        for setup in setups:
            command = SyncCommand(user_id=setup.user_id, kind=CommandKind.FULL_SYNC,
                                  reason="sandbox start", run_id=run_id)
            producer.send(topic_name(settings, SYNC_COMMANDS), key=setup.user_id.encode(),
                          value=encode(wrap(command)))
        producer.flush()
    finally:
        producer.close()


def _follow_results(settings: Settings, state: LiveState,
                    stop: threading.Event) -> None:
    from contactsync.kafka.io import make_consumer
    from contactsync.kafka.topics import DEADLETTER, SYNC_RESULTS, topic_name
    from contactsync.schemas.envelope import decode

    consumer = make_consumer(settings, f"sandbox-view-{time.time_ns()}",
                             topic_name(settings, SYNC_RESULTS), topic_name(settings, DEADLETTER),
                             auto_offset_reset="latest")
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.topic.endswith(DEADLETTER):
                        state.dead_letters += 1
                        state.note("dead letter: an event could not be applied")
                        continue
                    result = decode(record.value).payload
                    totals = state.results.setdefault(result.user_id, {})
                    for key, count in result.summary.items():
                        totals[key] = totals.get(key, 0) + count
                    state.last[result.user_id] = f"{result.kind} {result.status}"
                    if result.summary.get("writes"):
                        changed = {k: v for k, v in result.summary.items()
                                   if v and k not in ("writes", "failed")}
                        state.note(f"{result.user_id}: {result.kind} -> {changed}")
    finally:
        consumer.close()


def _demo(emulators: RunningEmulators, state: LiveState, stop: threading.Event) -> None:
    """Edits as people make them: a BC edit, then an Outlook edit, every few seconds."""
    rng = random.Random(7)
    titles = ["Buyer", "Purchasing Manager", "Sales Rep", "CFO", "Engineer"]
    while not stop.wait(3.0):
        people = [c for c in emulators.bc.contacts() if c["type"] == "Person" and c["email"]]
        if people:
            who = rng.choice(people)
            title = rng.choice(titles)
            emulators.bc.update_contact(who["id"], {"jobTitle": title})
            state.note(f"BC: {who['displayName']} is now {title!r}")
        mailbox = SANDBOX_USERS[0][0]
        folders = emulators.graph.state.child_folders(emulators.graph.state.user(mailbox))
        folder = next((f for f in folders if f.display_name == "Business Central"), None)
        if folder is not None and stop.wait(1.5) is False:
            contacts = emulators.graph.contacts(mailbox, str(folder.id))
            if contacts:
                who = rng.choice(contacts)
                phone = f"+1 425 555 {rng.randint(1000, 9999)}"
                emulators.graph.person_update_contact(mailbox, who["id"], {"mobilePhone": phone})
                state.note(f"Outlook ({mailbox}): {who['displayName']} mobile {phone}")


def _view(state: LiveState) -> Table:
    from rich.table import Table

    table = Table(title="contactsync sandbox (Ctrl-C stops)", expand=True)
    for column in ("user", "last result", "created", "updated", "deleted", "conflicts"):
        table.add_column(column)
    for mailbox, _ in SANDBOX_USERS:
        totals = state.results.get(mailbox, {})
        table.add_row(
            mailbox, state.last.get(mailbox, "waiting"),
            str(totals.get("created_in_outlook", 0) + totals.get("created_in_bc", 0)),
            str(totals.get("updated_outlook", 0) + totals.get("updated_bc", 0)),
            str(totals.get("deleted_from_outlook", 0)), str(totals.get("conflicts", 0)),
        )
    table.caption = "\n".join([*state.events, f"dead letters: {state.dead_letters}"])
    return table


def sandbox(
    demo: Annotated[bool, typer.Option(help="Edit contacts on both sides, as people would")]
    = False,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: Ctrl-C)")]
    = 0.0,
    contacts: Annotated[int, typer.Option(help="BC persons to seed")] = 200,
) -> None:
    """Run the whole pipeline locally against the emulators."""
    from rich.console import Console
    from rich.live import Live

    load_sandbox_tooling("sandbox")  # the emulators and the local broker load now
    from contactsync.emulators.bc import BcEmulatorConfig
    from contactsync.emulators.bc import SeedSpec as BcSeed
    from contactsync.emulators.graph import GraphEmulatorConfig
    from contactsync.emulators.running import start_emulators
    from contactsync.http_server import free_port
    from contactsync.kafka.local_broker import LocalBroker
    from contactsync.pipeline import Pipeline
    from contactsync.store import Store

    base = settings_and_logging(one_shot=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    broker = None
    with user_errors():
        if base.kafka_bootstrap_servers:
            bootstrap = base.kafka_bootstrap_servers
        else:
            local = LocalBroker.for_settings(base)
            if local.status().running:  # an admin's own `kafka up`: used, and left running
                typer.echo("using the local Kafka broker already running (left running)")
            else:
                broker = local  # ours: stopped on the way out
                typer.echo("starting the local Kafka broker ...")
            bootstrap = local.up(progress=typer.echo)
    emulators = start_emulators(
        graph_config=GraphEmulatorConfig(allow_http_notifications=True),  # a local webhook
        bc_config=BcEmulatorConfig(notification_delay_seconds=1.0),
    )
    emulators.bc.seed(BcSeed(persons=contacts, companies=max(1, contacts // 20),
                             without_email=contacts // 50, privacy_blocked=contacts // 100))
    webhook_port = free_port()
    state_dir = base.kafka_data_dir.parent
    db = state_dir / "sandbox.db"
    state_dir.mkdir(parents=True, exist_ok=True)
    for stale in (db, db.with_name("sandbox.db-wal"), db.with_name("sandbox.db-shm")):
        stale.unlink(missing_ok=True)  # the emulators start empty: so do the links
    settings = base.model_copy(update={
        "kafka_bootstrap_servers": bootstrap,
        "graph_base_url": emulators.graph_base_url,
        "bc_base_url": emulators.bc_base_url,
        "bc_company": emulators.bc.company_id,
        "webhook_public_url": f"http://127.0.0.1:{webhook_port}",
        "database_url": f"sqlite:///{db}",
        "topic_prefix": SANDBOX_PREFIX,
    })
    _fresh_topics(settings)
    store = Store.open(settings.database_url)
    pipeline = Pipeline(settings, store, webhook_port=webhook_port, console_port=0)
    live_state = LiveState()
    helpers: list[threading.Thread] = []
    try:
        setups = _seed_users(store, emulators)
        pipeline.start()
        helpers.append(threading.Thread(target=_follow_results, daemon=True,
                                        args=(settings, live_state, stop)))
        if demo:
            helpers.append(threading.Thread(target=_demo, daemon=True,
                                            args=(emulators, live_state, stop)))
        for helper in helpers:
            helper.start()
        time.sleep(1.0)  # let the view's consumer join before the first results
        _queue_full_syncs(settings, setups)
        typer.echo(f"kafka {bootstrap} | graph {emulators.graph_base_url} | "
                   f"bc {emulators.bc_base_url} | webhook {pipeline.webhook_url}")
        typer.echo(f"console {pipeline.console_url}")
        deadline = time.monotonic() + duration if duration > 0 else None
        console = Console()
        with Live(_view(live_state), console=console, refresh_per_second=2,
                  transient=not console.is_terminal) as live:
            while not stop.wait(0.5) and not pipeline.stop_event.is_set():
                live.update(_view(live_state))
                if deadline is not None and time.monotonic() > deadline:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        pipeline.stop()
        for helper in helpers:
            helper.join(timeout=10)
        failed = pipeline.failed_roles
        _print_summary(live_state, failed, emulators)
        store.close()
        emulators.stop()
        if broker is not None:
            broker.down()
        typer.echo("stopped")
    if pipeline.failed_roles:
        raise typer.Exit(1)


def _folder_size(emulators: RunningEmulators, mailbox: str) -> int:
    state = emulators.graph.state
    for folder in state.child_folders(state.user(mailbox)):
        if folder.display_name == "Business Central":
            return len(emulators.graph.contacts(mailbox, str(folder.id)))
    return 0


def _print_summary(state: LiveState, failed: dict[str, BaseException],
                   emulators: RunningEmulators) -> None:
    """What each user ended with (read from the emulators), then what the results said."""
    for mailbox, _ in SANDBOX_USERS:
        totals = state.results.get(mailbox, {})
        typer.echo(f"{mailbox}: {_folder_size(emulators, mailbox)} contacts in the folder; "
                   f"last {state.last.get(mailbox, 'no result')}; results {totals}")
    typer.echo(f"dead letters: {state.dead_letters}")
    for name, error in failed.items():
        typer.echo(f"role {name} failed: {type(error).__name__}: {error}")
