"""The console of a running `contactsync sandbox` (the emulators, the real broker, every role of
the pipeline) in a real browser: Debian's Chromium, headless, driven by Playwright. Everything
happens as an admin and the people would do it: the sandbox's own first Full syncs, edits in
BC and in Outlook through the emulators, a Graph outage. Screenshots of each page go to
tests/console/screenshots/ (ignored by git) for a reviewer to look at."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.console.conftest import CHROMIUM, SHOTS, type_a_bad_filter
from tests.kafka_fixtures import KafkaHandle

EXE = str(Path(sys.executable).parent / "contactsync")
USERS = ("anna@contoso.test", "ben@contoso.test", "chloe@contoso.test")
PERSONS = 100  # the sandbox seeds 2 without an email, 1 privacy blocked, 5 companies
WAIT_MS = 120_000  # bounds each wait for the pipeline (not a timing assertion)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="no /usr/bin/chromium: `apt-get install -y chromium` (tests/run.sh "
                              "does it where it can)"),
]


@dataclass
class Sandbox:
    console: str  # http://127.0.0.1:PORT
    graph: str  # the Graph emulator's root (its /_emulator admin API)
    bc: str  # the BC emulator's root
    output: list[str]

    def bc_contacts(self) -> list[dict[str, object]]:
        return list(httpx.get(f"{self.bc}/_emulator/contacts", timeout=30).json()["value"])


def _root(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture
def sandbox(kafka: KafkaHandle, tmp_path: Path) -> Iterator[Sandbox]:
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
               CONTACTSYNC_STATE_DIR=str(tmp_path), CONTACTSYNC_LOG_LEVEL="WARNING",
               PYTHONUNBUFFERED="1")
    for var in ("CONTACTSYNC_GRAPH_BASE_URL", "CONTACTSYNC_BC_BASE_URL", "AZURE_CLIENT_ID",
                "CONTACTSYNC_DATABASE_URL", "CONTACTSYNC_TOPIC_PREFIX"):
        env.pop(var, None)
    proc = subprocess.Popen([EXE, "sandbox", "--contacts", str(PERSONS)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    found: dict[str, str] = {}
    for line in proc.stdout:  # until it printed where everything listens
        lines.append(line)
        services = re.search(r"\| graph (\S+) \| bc (\S+) \|", line)
        if services:
            found.update(graph=_root(services.group(1)), bc=_root(services.group(2)))
        console = re.match(r"console (http://127\.0\.0\.1:\d+)/", line)
        if console:
            found["console"] = console.group(1)
            break
    # The rest is drained, so the sandbox never blocks on a full pipe.
    drain = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    drain.start()
    try:
        assert {"graph", "bc", "console"} <= set(found), "".join(lines)[-3000:]
        yield Sandbox(found["console"], found["graph"], found["bc"], lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()
        drain.join(timeout=10)


def _cell(page, user: str, column: str) -> str:
    return str(page.locator(f'tr[data-user="{user}"] td.{column}').inner_text())


def test_an_admin_watches_and_repairs_the_sandbox_in_the_console(sandbox: Sandbox, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())
    SHOTS.mkdir(exist_ok=True)

    # Users: the sandbox's three users, each with the counts of its first Full sync (the page
    # updates itself as the results arrive).
    page.goto(sandbox.console + "/users")
    for user in USERS:  # synced, and Outlook's changes come as they happen (a subscription)
        page.wait_for_function(
            """user => { const row = `tr[data-user="${user}"]`;
                         const links = document.querySelector(`${row} td.links`);
                         const sub = document.querySelector(`${row} td.subscription`);
                         return links && Number(links.innerText) > 0
                                && sub.innerText.startsWith('active'); }""",
            arg=user, timeout=WAIT_MS)
    contacts = sandbox.bc_contacts()
    synced = [c for c in contacts if c["type"] == "Person" and c["email"]
              and not c["privacyBlocked"]]
    assert int(_cell(page, "anna@contoso.test", "links")) == len(synced)  # no filter: all
    assert 0 < int(_cell(page, "ben@contoso.test", "links")) < len(synced)  # Seattle|Redmond
    page.wait_for_function(
        """() => document.querySelector('tr[data-user="anna@contoso.test"] td.skipped')
                 .innerText.includes('no_email')""", timeout=WAIT_MS)
    assert _cell(page, "anna@contoso.test", "skipped") == (
        "no_email 2, not_person 5, privacy_blocked 1")
    page.screenshot(path=str(SHOTS / "sandbox-users.png"), full_page=True)

    # User detail: the contacts the Full sync skipped, by name (email masked), with why.
    page.click("text=anna@contoso.test")
    skipped = page.locator("table.skipped")
    without_email = [c for c in contacts if c["type"] == "Person" and not c["email"]]
    reasons = skipped.locator('tr[data-reason="no_email"] td.who').all_inner_texts()
    assert sorted(r.split(" [bc=")[0] for r in reasons) == sorted(
        str(c["displayName"]) for c in without_email)
    blocked = skipped.locator('tr[data-reason="privacy_blocked"] td.who').inner_text()
    assert re.fullmatch(r"[^<>]+ <\w\*\*\*@[\w.]+> +\[bc=[\w-]+\]", blocked), blocked
    assert "privacy blocked" in skipped.inner_text() and "not a Person" in skipped.inner_text()

    # A conflict made on both sides: BC's kept value beside Outlook's lost one.
    who = synced[0]
    outlook = _outlook_contact(sandbox, "anna@contoso.test", str(who["email"]))
    httpx.patch(f"{sandbox.bc}/_emulator/contacts/{who['id']}",
                json={"jobTitle": "Chief Buyer"}, timeout=30).raise_for_status()
    httpx.patch(f"{sandbox.graph}/_emulator/users/anna@contoso.test/contacts/{outlook}",
                json={"jobTitle": "Head of Purchasing"}, timeout=30).raise_for_status()
    sides = page.locator("section.conflict table.sides tr", has_text="job_title")
    sides.first.wait_for(timeout=WAIT_MS)
    assert sides.first.locator("td.bc").inner_text() == "Chief Buyer"
    assert sides.first.locator("td.outlook").inner_text() == "Head of Purchasing"
    page.screenshot(path=str(SHOTS / "sandbox-user-detail.png"), full_page=True)

    # Adding a user with a bad filter: the CLI's caret error appears as it is typed.
    type_a_bad_filter(page, sandbox.console, "sandbox-add-user-bad-filter.png")

    # An action without the session's token (another site, or no session at all) is refused.
    stranger = browser.new_context().new_page()
    stranger.goto(sandbox.console + "/health")
    status = stranger.evaluate("""url => fetch(url + '/users/ben@contoso.test/act', {
        method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
        body: 'action=disable&confirmed=yes'}).then(r => r.status)""", sandbox.console)
    assert status == 403
    page.goto(sandbox.console + "/users")
    assert _cell(page, "ben@contoso.test", "enabled") == "yes"

    # Graph is down for chloe's mailbox: her Sync is retried, then dead-lettered.
    httpx.post(f"{sandbox.graph}/_emulator/faults", json={
        "kind": "status", "status": 503, "count": 10_000, "route": "chloe"},
        timeout=30).raise_for_status()
    page.goto(sandbox.console + "/users/chloe@contoso.test/confirm?action=sync")
    page.click("button.primary")
    page.wait_for_selector("text=Sync for chloe@contoso.test published as run", timeout=30_000)
    letter = page.locator("table.letters tbody tr", has_text="chloe@contoso.test")
    for _ in range(40):  # the applier's retry budget first (a minute): reload until it lands
        page.goto(sandbox.console + "/deadletters")
        if letter.count():
            break
        page.wait_for_timeout(5_000)
    assert letter.count() == 1, page.inner_text("main")
    assert letter.locator("td.replayed").inner_text() == "no"
    assert "gave up after" in page.inner_text("main")
    page.screenshot(path=str(SHOTS / "sandbox-dead-letters.png"), full_page=True)

    # Graph is back: replaying the dead letter runs chloe's Sync, and it goes through.
    httpx.delete(f"{sandbox.graph}/_emulator/faults", timeout=30).raise_for_status()
    letter.locator("input[name=confirmed]").check()
    letter.locator("button", has_text="Replay").click()
    page.wait_for_selector("text=1 replayed, 0 already replayed", timeout=30_000)
    assert letter.locator("td.replayed").inner_text() == "yes"
    page.goto(sandbox.console + "/users/chloe@contoso.test")
    page.locator("dd.last-sync .status.ok").wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(SHOTS / "sandbox-after-replay.png"), full_page=True)

    # Health: the same sources as /readyz and /metrics, the roles running in the sandbox.
    page.goto(sandbox.console + "/health")
    table = page.locator("table.health")
    assert table.locator("tr", has_text="Kafka broker").locator("td.status").inner_text() == "ok"
    assert table.locator("tr", has_text="Store").locator("td.status").inner_text() == "ok"
    assert table.locator("tr", has_text="Consumer lag: applier").count() == 1
    page.screenshot(path=str(SHOTS / "sandbox-health.png"), full_page=True)


def _outlook_contact(sandbox: Sandbox, mailbox: str, email: str) -> str:
    """The id of the contact with `email` in the mailbox's Business Central folder."""
    folders = httpx.get(f"{sandbox.graph}/v1.0/users/{mailbox}/contactFolders",
                        headers={"Authorization": "Bearer sandbox"}, timeout=30)
    folders.raise_for_status()
    folder = next(f["id"] for f in folders.json()["value"]
                  if f["displayName"] == "Business Central")
    listed = httpx.get(f"{sandbox.graph}/_emulator/users/{mailbox}/contactFolders/{folder}/"
                       "contacts", timeout=30).json()["value"]
    return str(next(c["id"] for c in listed
                    if any(a.get("address", "").lower() == email.lower()
                           for a in c.get("emailAddresses", []))))
