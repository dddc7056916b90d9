"""The console in a real browser (Debian's Chromium, headless, driven by Playwright) against a
real `contactsync console` process, the real broker and a seeded store. Screenshots of each
page go to tests/console/screenshots/ (not committed) for a reviewer to look at."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contactsync.kafka.deadletter import DeadLetterSink
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import DEADLETTER, SYNC_COMMANDS, ensure_topics_at, topic_name
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from tests.console.conftest import CHROMIUM, SHOTS, seed, type_a_bad_filter
from tests.kafka_fixtures import role_env
from tests.pipeline.test_dlq_cli import Failed

EXE = str(Path(sys.executable).parent / "contactsync")

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="no /usr/bin/chromium: `apt-get install -y chromium` (tests/run.sh "
                              "does it where it can)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def console_url(kafka_settings: Settings, tmp_path: Path) -> Iterator[str]:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    with Store.open(kafka_settings.database_url) as store:
        seed(store)
    producer = make_producer(kafka_settings.kafka_bootstrap_servers)
    try:
        DeadLetterSink(producer, topic_name(kafka_settings, DEADLETTER)).send(
            Failed(topic_name(kafka_settings, SYNC_COMMANDS), 0, 7, b"bob@contoso.com",
                   b'{"broken": ', []),
            reason="not a message", error_type="MalformedMessage", attempts=3)
    finally:
        producer.close(timeout=5)
    port = _free_port()
    proc = subprocess.Popen([EXE, "console", "--port", str(port)], cwd=tmp_path,
                            env={**os.environ, **role_env(kafka_settings)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):  # until it listens
            try:
                httpx.get(url + "/health", timeout=10)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_an_admin_walks_through_the_console(console_url: str, browser, kafka_settings: Settings):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())

    # Users: every seeded user with its counts; the failed one stands out.
    page.goto(console_url + "/users")
    assert page.locator('tr[data-user="alice@contoso.com"] td.links').inner_text() == "2"
    bob = page.locator('tr[data-user="bob@contoso.com"]')
    assert "attention" in (bob.get_attribute("class") or "")
    assert "Graph said 500" in bob.locator("td.why").inner_text()
    page.screenshot(path=str(SHOTS / "users-1280.png"), full_page=True)

    # Live: a user added meanwhile appears without a reload.
    with Store.open(kafka_settings.database_url) as store:
        store.setups.add(UserSetup(user_id="erin@contoso.com", mailbox="erin@contoso.com"))
    page.wait_for_selector('tr[data-user="erin@contoso.com"]', timeout=20_000)

    # A conflict made on both sides: BC's kept values beside Outlook's lost ones.
    page.click("text=alice@contoso.com")
    sides = page.locator("section.conflict table.sides")
    assert sides.locator("td.bc").all_inner_texts() == ["Seattle", "CFO"]
    assert sides.locator("td.outlook").all_inner_texts() == ["Tacoma", "Finance lead"]
    page.screenshot(path=str(SHOTS / "user-detail.png"), full_page=True)

    # Add a user with a bad filter: the CLI's caret error appears as it is typed.
    type_a_bad_filter(page, console_url, "add-user-bad-filter.png")

    # An action posted without the page's token is refused.
    status = page.evaluate("""url => fetch(url + '/users/alice@contoso.com/act', {method: 'POST',
        headers: {'Content-Type': 'application/x-www-form-urlencoded'},
        body: 'action=disable&confirmed=yes'}).then(r => r.status)""", console_url)
    assert status == 403

    # A dead letter appears; replaying it clears it.
    page.goto(console_url + "/deadletters")
    row = page.locator("table.letters tbody tr").first
    assert "bob@contoso.com" in row.inner_text()
    assert row.locator("td.replayed").inner_text() == "no"
    page.screenshot(path=str(SHOTS / "dead-letters.png"), full_page=True)
    row.locator("input[name=confirmed]").check()
    row.locator("button", has_text="Replay").click()
    page.wait_for_selector("text=1 replayed, 0 already replayed", timeout=30_000)
    assert page.locator("table.letters td.replayed").inner_text() == "yes"

    page.goto(console_url + "/health")
    # broker and store fine; erin (added above) holds no Graph subscription yet; credentials
    # and lag are known where the roles run, not in a standalone console
    assert page.locator("td.status").all_inner_texts() == ["ok", "ok", "failing", "n/a", "n/a"]
    assert "1 without one" in page.locator("table.health").inner_text()
    page.screenshot(path=str(SHOTS / "health.png"), full_page=True)

    # A phone's width: the page fits, wide tables scroll inside their box.
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(console_url + "/users")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone.screenshot(path=str(SHOTS / "users-phone.png"), full_page=True)
