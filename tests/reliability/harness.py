"""A whole deployment for reliability tests: the emulators in this process, every pipeline role
as a real subprocess (`.venv/bin/contactsync <role>`), so `kill -9` is real, a temp SQLite store
shared by all of them and the test's own Kafka topics.

What a user would see is checked from the emulators' state alone (`problems()`): each user's
folder holds exactly one contact per BC contact that should be there (Person, name, email, not
privacy-blocked, passing the user's filter), with BC's values, and nothing else; every Outlook
edit and create the test made reached BC (`Ledger`).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaConsumer, TopicPartition

from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.engine.links import SyncMode
from contactsync.engine.mapping import BC_ID_PROPERTY
from contactsync.kafka.local_broker import free_port
from contactsync.kafka.topics import DEADLETTER, ensure_topics_at, topic_name
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.records import SubscriptionService
from contactsync.sync.runner import sync_user
from tests.kafka_fixtures import role_env

ROOT = Path(__file__).resolve().parents[2]
CONTACTSYNC = str(ROOT / ".venv" / "bin" / "contactsync")
if not Path(CONTACTSYNC).exists():  # a venv elsewhere: the entry point next to this python
    CONTACTSYNC = str(Path(sys.executable).with_name("contactsync"))
FOLDER = "Business Central"
CRASHABLE = ("applier", "router", "bc-changes", "webhook")


@dataclass(frozen=True)
class User:
    mailbox: str
    bc_filter: dict[str, str]  # the setup's filter, in BC's syntax
    wants: Callable[[dict[str, Any]], bool]  # the same filter, written out by hand as the oracle


USERS = (
    User("anna@contoso.test", {}, lambda c: True),
    User("ben@contoso.test", {"city": "Seattle"}, lambda c: c.get("city") == "Seattle"),
    User("chloe@contoso.test", {"city": "Seattle|Redmond"},
         lambda c: c.get("city") in ("Seattle", "Redmond")),
)
CITIES = ("Seattle", "Redmond", "London")


def graph_config_retrying() -> GraphEmulatorConfig:
    """Graph retries a failed delivery for hours (Graph docs: receive change notifications); the
    test config keeps
    the shape (exponential backoff) over about a minute, so a restarted webhook is retried."""
    return GraphEmulatorConfig.fast(delivery_backoff_base_seconds=0.5, delivery_max_attempts=8)


def bc_config_retrying() -> BcEmulatorConfig:
    """BC's 5 attempts (60 s, 60 s, 60 s, 600 s, 6,000 s) scaled by 1/50: 1.2 s ... 120 s."""
    return BcEmulatorConfig.for_tests(retry_delay_scale=0.02)


def syncable(c: dict[str, Any]) -> bool:
    return (c.get("type") == "Person" and bool(c.get("displayName")) and bool(c.get("email"))
            and not c.get("privacyBlocked"))


def email_of(contact: dict[str, Any]) -> str:
    return str(((contact.get("emailAddresses") or [{}])[0] or {}).get("address") or "").lower()


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.25)


@dataclass
class Ledger:
    """What the test did, to tell afterwards whether anything was lost or duplicated."""

    sent: int = 0
    # Outlook edits: BC contact id -> the jobTitle the last Outlook edit set.
    outlook_edits: dict[str, str] = field(default_factory=dict)
    # Outlook creates: email -> display name.
    outlook_creates: dict[str, str] = field(default_factory=dict)
    # BC ids the stream edits in BC (never edited in Outlook afterwards).
    bc_owned: set[str] = field(default_factory=set)
    # BC edits: BC contact id -> the jobTitle the last BC edit set (BC wins: it must stay).
    bc_edits: dict[str, str] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)


class Deployment:
    """Emulators + store + role subprocesses. Use as a context manager."""

    def __init__(self, workdir: Path, bootstrap: str, *, topic_prefix: str | None = None,
                 graph_config: GraphEmulatorConfig | None = None,
                 bc_config: BcEmulatorConfig | None = None,
                 database_url: str | None = None, users: tuple[User, ...] = USERS,
                 log_level: str = "INFO") -> None:
        self.workdir = workdir
        self.bootstrap = bootstrap
        self.users = users
        self.prefix = topic_prefix or f"r{uuid.uuid4().hex[:10]}."
        self.emulators: RunningEmulators = start_emulators(
            graph_config=graph_config or graph_config_retrying(),
            bc_config=bc_config or bc_config_retrying())
        self.webhook_port = free_port()
        self.settings = Settings(
            kafka_bootstrap_servers=bootstrap, topic_prefix=self.prefix, topic_partitions=3,
            database_url=database_url or f"sqlite:///{workdir / 'state.db'}",
            kafka_data_dir=workdir / "kafka-unused",
            graph_base_url=self.emulators.graph_base_url,
            bc_base_url=self.emulators.bc_base_url, bc_company=self.emulators.bc.company_id,
            webhook_public_url=f"http://127.0.0.1:{self.webhook_port}")
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: Counter[str] = Counter()
        self.kills: list[str] = []
        self.store = Store.open(self.settings.database_url)

    # ----- life cycle -------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CONTACTSYNC_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
        env.update(role_env(s))
        env.update({
            "CONTACTSYNC_WEBHOOK_PUBLIC_URL": s.webhook_public_url,
            "CONTACTSYNC_STATE_DIR": str(self.workdir / "state"),
            "CONTACTSYNC_LOG_LEVEL": self.log_level,
            "CONTACTSYNC_CONFIG": str(self._empty_config()),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def _empty_config(self) -> Path:
        """An empty config file: roles must not read a contactsync.toml from the cwd, and a
        CONTACTSYNC_CONFIG naming a missing file is an error."""
        path = self.workdir / "none.toml"
        path.touch()
        return path

    def role_args(self, role: str) -> list[str]:
        return {
            "webhook": ["webhook", "--port", str(self.webhook_port)],
            "subscriptions": ["subscriptions", "--interval", "3"],
            "bc-changes": ["bc-changes", "--poll-interval", "3"],
            "router": ["router", "--refresh", "1"],
            "applier": ["applier"],
        }[role]

    def setup(self, contacts: int = 12, seed: int = 0) -> None:
        """Users, their setups, BC contacts across cities, the first Full sync, the topics."""
        rng = random.Random(seed)
        for user in self.users:
            self.emulators.graph.add_user(user.mailbox)
            self.store.setups.add(UserSetup(user_id=user.mailbox, mailbox=user.mailbox,
                                            contact_filter=user.bc_filter))
        for n in range(contacts):
            self.emulators.bc.create_contact({
                "displayName": f"Person {n}", "email": f"p{n}@example.com", "type": "Person",
                "city": rng.choice(CITIES), "jobTitle": "Start"})
        # Contacts that never sync: a company, one without email, a privacy-blocked one.
        self.emulators.bc.create_contact({"displayName": "Firm", "email": "firm@example.com",
                                          "type": "Company", "city": "Seattle"})
        self.emulators.bc.create_contact({"displayName": "No Mail", "type": "Person",
                                          "city": "Seattle"})
        self.emulators.bc.create_contact({"displayName": "Hidden", "email": "hid@example.com",
                                          "type": "Person", "city": "Seattle",
                                          "privacyBlocked": True})
        ensure_topics_at(self.bootstrap, self.settings)
        self.reconcile()

    def start_all(self) -> None:
        self.start_role("webhook")
        for role in ("subscriptions", "bc-changes", "router", "applier"):
            self.start_role(role)
        eventually(lambda: len(self.store.subscriptions.list_all(
            service=SubscriptionService.GRAPH)) == len(self.users)
            and self.store.subscriptions.list_all(service=SubscriptionService.BC),
            60, "a Graph subscription per user and one BC subscription")

    def start_role(self, role: str) -> None:
        self.starts[role] += 1
        log = open(self.workdir / f"{role}.{self.starts[role]}.log", "wb")  # noqa: SIM115
        self.procs[role] = subprocess.Popen(
            [CONTACTSYNC, *self.role_args(role)], env=self.env(), cwd=self.workdir,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if role == "webhook":
            eventually(self._webhook_up, 60, "the webhook answering")

    def _webhook_up(self) -> bool:
        proc = self.procs["webhook"]
        assert proc.poll() is None, f"the webhook exited: {self.log_text('webhook')[-2000:]}"
        try:
            return httpx.get(f"{self.settings.webhook_public_url}/healthz",
                             timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill9(self, role: str) -> None:
        proc = self.procs[role]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.kills.append(role)

    def assert_alive(self) -> None:
        dead = {r: p.returncode for r, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"roles exited by themselves: {dead}\n" + "\n".join(
            self.log_text(r)[-3000:] for r in dead)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def close(self) -> None:
        self.stop()
        self.store.close()
        self.emulators.stop()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self, role: str | None = None) -> str:
        pattern = f"{role}.*.log" if role else "*.log"
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob(pattern)))

    # ----- what a user sees -------------------------------------------------------------------
    def folder_id(self, mailbox: str) -> str:
        graph = self.emulators.graph
        return next(str(f.id) for f in graph.state.child_folders(graph.state.user(mailbox))
                    if f.display_name == FOLDER)

    def folder(self, mailbox: str) -> list[dict[str, Any]]:
        return self.emulators.graph.contacts(mailbox, self.folder_id(mailbox))

    def bc_contacts(self) -> list[dict[str, Any]]:
        return self.emulators.bc.contacts()

    def writes(self) -> int:
        total = 0
        for snap in (self.emulators.graph.counters_snapshot(),
                     self.emulators.bc.counters_snapshot()):
            total += sum(r["count"] for r in snap["by_route"]
                         if r["method"] in ("POST", "PATCH", "DELETE")
                         and "subscriptions" not in r["route"] and "$batch" not in r["route"])
        return total

    def quiet(self, seconds: float = 4.0, timeout: float = 120.0) -> float:
        """Wait until no write happens for `seconds`; returns when the last write was seen."""
        started = time.monotonic()
        last, since = self.writes(), time.monotonic()
        while time.monotonic() - since < seconds:
            assert time.monotonic() - started < timeout, "the pipeline never went quiet"
            time.sleep(0.3)
            now = self.writes()
            if now != last:
                last, since = now, time.monotonic()
        return since

    def problems(self, ledger: Ledger | None = None) -> list[str]:
        """Everything a user would find wrong right now; [] when both sides are as expected."""
        out: list[str] = []
        bc = self.bc_contacts()
        by_id = {c["id"]: c for c in bc}
        tombs = self.emulators.bc.tombstones()
        for user in self.users:
            expected = {c["id"]: c for c in bc if syncable(c) and user.wants(c)}
            seen: Counter[str] = Counter()
            for oc in self.folder(user.mailbox):
                bc_id = oc.get("_ext", {}).get(BC_ID_PROPERTY, "")
                if not bc_id:  # linked by email (an Outlook-born contact)
                    match = [c["id"] for c in expected.values()
                             if c["email"].lower() == email_of(oc)]
                    bc_id = match[0] if match else ""
                if bc_id not in expected:
                    why = "filtered/unsyncable" if bc_id in by_id else "deleted at " + next(
                        (str(t.get("deletedAt") or t) for t in tombs if t.get("id") == bc_id),
                        "?")
                    out.append(f"{user.mailbox}: {oc.get('displayName')!r} <{email_of(oc)}> "
                               f"should not be in the folder (BC: {why}; in Outlook since "
                               f"{oc.get('createdDateTime')}, changed "
                               f"{oc.get('lastModifiedDateTime')})")
                    continue
                seen[bc_id] += 1
                want = expected[bc_id]
                got = {"displayName": oc.get("displayName") or "",
                       "email": email_of(oc), "jobTitle": oc.get("jobTitle") or "",
                       "city": (oc.get("businessAddress") or {}).get("city") or ""}
                need = {"displayName": want["displayName"], "email": want["email"].lower(),
                        "jobTitle": want.get("jobTitle") or "", "city": want.get("city") or ""}
                if got != need:
                    out.append(f"{user.mailbox}: {want['displayName']!r} differs: "
                               f"outlook {got} vs bc {need}")
            for bc_id, n in seen.items():
                if n > 1:
                    out.append(f"{user.mailbox}: {n} contacts for BC contact "
                               f"{expected[bc_id]['displayName']!r}")
            for bc_id in expected.keys() - seen.keys():
                out.append(f"{user.mailbox}: missing {expected[bc_id]['displayName']!r}")
        if ledger is not None:
            out += self.lost(ledger)
        return out

    def lost(self, ledger: Ledger) -> list[str]:
        out: list[str] = []
        bc = self.bc_contacts()
        by_id = {c["id"]: c for c in bc}
        emails = Counter(c["email"].lower() for c in bc if c.get("email"))
        for bc_id, title in ledger.outlook_edits.items():
            got = by_id.get(bc_id, {}).get("jobTitle")
            if got != title:
                out.append(f"lost Outlook edit: BC {bc_id} jobTitle {got!r}, expected {title!r}")
        for bc_id, title in ledger.bc_edits.items():
            got = by_id.get(bc_id, {}).get("jobTitle")
            if got != title:
                out.append(f"lost BC edit: BC {bc_id} jobTitle {got!r}, expected {title!r}")
        for email, _name in ledger.outlook_creates.items():
            if emails[email] != 1:
                out.append(f"Outlook-created {email}: {emails[email]} BC contacts, expected 1")
        return out

    def duplicates(self) -> int:
        """Contacts beyond one per BC contact in any folder, and beyond one per email in BC."""
        extra = 0
        for user in self.users:
            ids = Counter(oc.get("_ext", {}).get(BC_ID_PROPERTY) or email_of(oc)
                          for oc in self.folder(user.mailbox))
            extra += sum(n - 1 for n in ids.values() if n > 1)
        emails = Counter(c["email"].lower() for c in self.bc_contacts() if c.get("email"))
        return extra + sum(n - 1 for n in emails.values() if n > 1)

    def reconcile(self) -> int:
        """Full sync of every user in this process (sync_user FULL); the writes it made."""
        before = self.writes()

        async def run() -> None:
            graph = GraphClient.create(self.settings.graph_base_url)
            bc = await BcClient.create(self.settings.bc_base_url, self.settings.bc_company)
            try:
                for setup in self.store.setups.list_all():
                    await sync_user(setup, SyncMode.FULL, graph=graph, bc=bc, store=self.store)
            finally:
                await bc.aclose()
                await graph.close()

        asyncio.run(run())
        return self.writes() - before

    def deadletters(self) -> int:
        """Messages on the dead-letter topic (end minus beginning offsets)."""
        topic = topic_name(self.settings, DEADLETTER)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            ends = consumer.end_offsets(tps)
            starts = consumer.beginning_offsets(tps)
            return sum(ends[tp] - starts[tp] for tp in tps)
        finally:
            consumer.close()

    # ----- acting as people -------------------------------------------------------------------
    def random_change(self, rng: random.Random, ledger: Ledger, step: int,
                      side: str = "") -> str:
        """One change as a person would make it, on either side (or on `side`: "bc" or
        "outlook"); returns what it was."""
        token = f"T{step}-{rng.randrange(10**6)}"
        persons = [c for c in self.bc_contacts() if syncable(c)]
        outlook_side = [c for c in persons if c["id"] not in ledger.bc_owned]
        roll = rng.random()
        if side == "bc":
            roll *= 0.52
        elif side == "outlook":
            roll = 0.52 + roll * 0.48
        ledger.sent += 1
        what = self._random_change(rng, ledger, step, token, persons, outlook_side, roll)
        ledger.timeline.append(f"{time.strftime('%H:%M:%S')} {what}")
        return what

    def _random_change(self, rng: random.Random, ledger: Ledger, step: int, token: str,
                       persons: list[dict[str, Any]], outlook_side: list[dict[str, Any]],
                       roll: float) -> str:
        bc = self.emulators.bc
        graph = self.emulators.graph
        if roll < 0.35 and persons:
            owned = [c for c in persons if c["id"] in ledger.bc_owned] or persons
            c = rng.choice(owned if rng.random() < 0.7 else persons)
            if c["id"] in ledger.outlook_edits:  # an Outlook-edited one: pick another
                c = rng.choice([p for p in persons if p["id"] not in ledger.outlook_edits]
                               or persons)
            ledger.bc_owned.add(c["id"])
            ledger.outlook_edits.pop(c["id"], None)
            ledger.bc_edits[c["id"]] = token
            change: dict[str, Any] = {"jobTitle": token}
            if rng.random() < 0.3:
                change["city"] = rng.choice(CITIES)
            bc.update_contact(c["id"], change)
            return f"bc update {c['displayName']} {change}"
        if roll < 0.45:
            n = f"{step}x{rng.randrange(10**6)}"
            bc.create_contact({"displayName": f"New {n}", "email": f"n{n}@example.com",
                               "type": "Person", "city": rng.choice(CITIES)})
            return f"bc create New {n}"
        if roll < 0.52 and len(persons) > 6:
            c = rng.choice(persons)
            bc.delete_contact(c["id"])
            ledger.outlook_edits.pop(c["id"], None)
            ledger.bc_owned.discard(c["id"])
            ledger.bc_edits.pop(c["id"], None)
            # An Outlook-born contact that reached BC and is deleted there is gone on purpose
            # (BC is master), not lost.
            ledger.outlook_creates.pop((c.get("email") or "").lower(), None)
            return f"bc delete {c['displayName']}"
        user = self.users[0]  # anna's folder holds every synced contact
        if roll < 0.85 and outlook_side:
            c = rng.choice(outlook_side)
            oc = next((o for o in self.folder(user.mailbox)
                       if o.get("_ext", {}).get(BC_ID_PROPERTY) == c["id"]
                       or email_of(o) == c["email"].lower()), None)
            if oc is None:  # not in the folder yet: a BC edit instead
                ledger.sent -= 1
                return self.random_change(rng, ledger, step, "bc")
            graph.person_update_contact(user.mailbox, oc["id"], {"jobTitle": token})
            ledger.outlook_edits[c["id"]] = token
            return f"outlook update {c['displayName']} jobTitle={token}"
        n = f"{step}o{rng.randrange(10**6)}"
        email = f"o{n}@example.com"
        graph.person_create_contact(user.mailbox, self.folder_id(user.mailbox), {
            "displayName": f"Out {n}", "givenName": "Out", "surname": n,
            "emailAddresses": [{"address": email, "name": f"Out {n}"}]})
        ledger.outlook_creates[email] = f"Out {n}"
        return f"outlook create Out {n}"

