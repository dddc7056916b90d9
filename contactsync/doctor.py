"""`contactsync doctor`: is this deployment ready for a real tenant? One line per check, each
either ok or the cause and the fix, in the order an admin sets things up:

    settings     the service URLs, the company and the credential's variables are set
    token graph  the credential gets a token for Graph, then for BC (`token bc`)
    graph U      the user's mailbox answers and its folder is readable (--write-test: a contact
                 created and removed in a scratch folder)
    bc           the company resolves, its contacts are readable, BC offers webhooks on them
    public url   CONTACTSYNC_WEBHOOK_PUBLIC_URL is https (loopback excepted) and the webhook
                 behind it answers a validation handshake
    kafka        a broker answers within seconds and every topic exists
    database     the state store's schema is the one this code expects
    setups       no two setups share one folder of one mailbox

A check that needs one which failed is skipped with the reason. Nothing here writes, except
--write-test's scratch contact.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import httpx

from contactsync.clients.bc import BcClient, is_loopback_url
from contactsync.clients.errors import ServiceError
from contactsync.clients.graph import GraphClient
from contactsync.credentials import SharedCredential, build_credential
from contactsync.settings import ConfigError, Settings
from contactsync.store import Store

SCRATCH_FOLDER = "contactsync doctor"
KAFKA_TIMEOUT_MS = 5000
HTTP_TIMEOUT_S = 10.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _check(report: Report, name: str, run: Callable[[], Awaitable[str]]) -> bool:
    """Run one check; its line is ok with what it saw, or the failure's sentence."""
    try:
        detail = await run()
    except Exception as exc:  # a diagnosis: every failure is a line, never a traceback
        report.checks.append(Check(name, False, _why(exc)))
        return False
    report.checks.append(Check(name, True, detail))
    return True


def _skip(report: Report, name: str, because: str) -> None:
    report.checks.append(Check(name, False, f"skipped: {because}"))


def check_settings(settings: Settings) -> SharedCredential | None:
    missing = settings.missing_tenant()
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set: set "
                          f"{'it' if len(missing) == 1 else 'them'} to your tenant's values")
    return build_credential(settings)


async def run_doctor(settings: Settings, store: Store, *, users: list[str],
                     write_test: bool = False) -> Report:
    report = Report()
    credential: SharedCredential | None = None
    try:
        credential = check_settings(settings)
    except ConfigError as exc:
        report.checks.append(Check("settings", False, _why(exc)))
        settings_ok = False
    else:
        report.checks.append(Check("settings", True, "complete" + (
            f" (credential: {credential.kind})" if credential else " (no token: emulators)")))
        settings_ok = True
    # The store first (the users' checks read it), its lines where an admin expects them.
    database = Report()
    schema_ok = await _check(database, "database",
                             lambda: asyncio.to_thread(check_database, store))
    try:
        if settings_ok:
            await _services(report, settings, store, credential,
                            users if schema_ok else None, write_test)
        else:
            for name in ("token", "graph", "bc"):
                _skip(report, name, "the settings are incomplete")
        await _check(report, "public url", lambda: check_public_url(settings))
        await _check(report, "kafka", lambda: asyncio.to_thread(check_kafka, settings))
        report.checks += database.checks
        if schema_ok:
            await _check(report, "setups", lambda: asyncio.to_thread(check_setups, store))
        else:
            _skip(report, "setups", "the database schema is not current")
    finally:
        if credential is not None:
            await credential.close()
    return report


async def _services(report: Report, settings: Settings, store: Store,
                    credential: SharedCredential | None, users: list[str] | None,
                    write_test: bool) -> None:
    """Tokens, then Graph for `users` (every enabled one when empty; None: the store cannot
    be read), then BC."""
    tokens_ok = True
    for scope, name in ((settings.graph_scope, "graph"), (settings.bc_scope, "bc")):
        async def token(scope: str = scope) -> str:
            if credential is None:
                return "none needed (loopback emulator)"
            await credential.get_token(scope)
            return f"{credential.kind} credential accepted"

        tokens_ok = await _check(report, f"token {name}", token) and tokens_ok
    if not tokens_ok:
        _skip(report, "graph", "no token")
        _skip(report, "bc", "no token")
        return
    graph = GraphClient.create(settings.graph_base_url, credential,
                               scopes=(settings.graph_scope,))
    try:
        if users is None:
            _skip(report, "graph", "the database schema is not current")
            setups = []
        elif users:
            setups = [store.setups.require(u) for u in users]
        else:
            setups = store.setups.list_all(enabled=True)
            if not setups:
                report.checks.append(Check("graph", True, "no user set up yet: nothing to "
                                                          "read (`contactsync users add` one)"))
        for setup in setups:
            await _check(report, f"graph {setup.user_id}",
                         partial(check_mailbox, graph, setup.mailbox, setup.folder_name,
                                 write_test))
    finally:
        await graph.close()
    await _check(report, "bc", lambda: check_bc(settings, credential))


async def check_mailbox(graph: GraphClient, mailbox: str, folder_name: str,
                        write_test: bool) -> str:
    folders = await graph.list_folders(mailbox)
    folder = next((f for f in folders if str(f.get("displayName", "")).casefold()
                   == folder_name.casefold()), None)
    if folder is None:
        seen = f"mailbox readable, folder {folder_name!r} created by the first sync"
    else:
        await graph.list_contacts(mailbox, str(folder["id"]), select=["id"])
        seen = f"mailbox and folder {folder_name!r} readable"
    if write_test:
        scratch = await graph.find_or_create_folder(mailbox, SCRATCH_FOLDER)
        marker = f"doctor-{secrets.token_hex(4)}"
        try:
            created = await graph.create_contact(mailbox, scratch, marker, {
                "givenName": "contactsync", "surname": "doctor",
                "emailAddresses": [{"address": f"{marker}@doctor.invalid"}]})
            await graph.delete_contact(mailbox, str(created["id"]))
        except ServiceError as exc:
            raise ServiceError(f"could not create and remove a contact in {SCRATCH_FOLDER!r} "
                               f"({_why(exc)}): grant the app Contacts.ReadWrite with admin "
                               "consent, for this mailbox", service="graph") from None
        seen += f"; a contact created and removed in {SCRATCH_FOLDER!r}"
    return seen


async def check_bc(settings: Settings, credential: SharedCredential | None) -> str:
    bc = await BcClient.create(settings.bc_base_url, settings.bc_company, credential,
                               scope=settings.bc_scope)
    try:
        await bc.list_contacts("type eq 'Person'", page_size=1)
        webhooks = await bc.webhook_supported()
    finally:
        await bc.aclose()
    if not webhooks:
        raise ServiceError(
            f"company {bc.company_id} resolved and contacts readable, but BC offers no webhooks "
            "on contacts (webhookSupportedResources): changes are found by polling; update the "
            "BC environment to a version that lists contacts", service="bc")
    return f"company {bc.company_id} resolved, contacts readable, webhooks on contacts offered"


async def check_public_url(settings: Settings) -> str:
    url = settings.webhook_public_url.rstrip("/")
    if not url:
        raise ConfigError("CONTACTSYNC_WEBHOOK_PUBLIC_URL not set: set it to the https URL "
                          "where Graph and BC reach `contactsync webhook` (ingress or tunnel)")
    if not url.startswith("https://") and not is_loopback_url(url):
        raise ConfigError(f"CONTACTSYNC_WEBHOOK_PUBLIC_URL={url} is not https: Graph sends "
                          "notifications to https URLs only; put a TLS ingress or tunnel in "
                          "front of the webhook")
    token = f"doctor-{secrets.token_hex(8)}"
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
            answer = await client.post(f"{url}/webhooks/graph",
                                       params={"validationToken": token})
    except httpx.HTTPError as exc:
        raise ConfigError(f"{url} did not answer ({type(exc).__name__}): start `contactsync "
                          "webhook` (or `run`) behind it and check the ingress") from None
    if answer.status_code != 200 or answer.text != token:
        raise ConfigError(f"{url}/webhooks/graph answered HTTP {answer.status_code} to a "
                          "validation handshake: point the URL at `contactsync webhook`")
    return f"{url} answers Graph's validation handshake"


def check_kafka(settings: Settings) -> str:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from contactsync.kafka.io import resolve_bootstrap
    from contactsync.kafka.topics import topic_specs

    bootstrap = resolve_bootstrap(settings)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=KAFKA_TIMEOUT_MS,
                                 bootstrap_timeout_ms=KAFKA_TIMEOUT_MS,
                                 client_id="contactsync-doctor")
    except KafkaError as exc:
        raise ConfigError(f"no Kafka broker answers at {bootstrap} ({type(exc).__name__}): "
                          "start it or set KAFKA_BOOTSTRAP_SERVERS") from None
    try:
        present = set(admin.list_topics())
    finally:
        admin.close()
    missing = [spec.name for spec in topic_specs(settings) if spec.name not in present]
    if missing:
        raise ConfigError(f"topics missing at {bootstrap}: {', '.join(missing)}: run "
                          "`contactsync topics ensure`")
    return f"{bootstrap} answers, every topic present"


def check_database(store: Store) -> str:
    from contactsync.store.migrations import LATEST_VERSION, current_version

    with store.engine.connect() as conn:
        version = current_version(conn)
    if version != LATEST_VERSION:
        raise ConfigError(f"the state store is at schema version {version}, this code expects "
                          f"{LATEST_VERSION}: run `contactsync users list` (or any role) once "
                          "with this version: the store creates or upgrades its schema at start")
    return f"schema version {version} (current)"


def check_setups(store: Store) -> str:
    """No two setups share one folder of one mailbox: their syncs would fight over it. The
    store refuses a second one since schema 3; older pairs are kept, the later one stopped
    (`store.setups.folder_conflicts`)."""
    stopped = store.setups.folder_conflicts()
    if stopped:
        pairs = "; ".join(f"{s.user_id} shares folder {s.folder_name!r} of {s.mailbox} with "
                          f"{s.shares_folder_with}" for s in stopped)
        raise ConfigError(f"{pairs}, so it is stopped: give it another folder (`contactsync "
                          "users set USER --folder NAME`) or remove it")
    return f"{len(store.setups.list_all())} setups, each with a folder of its own"
