"""A real SQLite store seeded with three users, and the console app over it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from contactsync.console.app import create_console_app
from contactsync.emulators.running import RunningEmulators
from contactsync.engine.links import Link
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import AuditKind, AuditRecord, Store, Subscription, SubscriptionService
from tests.admin.test_setup_safety import seeded

CHROMIUM = "/usr/bin/chromium"  # Debian's; tests/run.sh installs it where it can
SHOTS = Path(__file__).parent / "screenshots"  # for a reviewer; ignored by git


def seed(store: Store) -> None:
    """alice: healthy, 2 links, a conflict; bob: last Full sync failed; carol: disabled."""
    now = datetime.now(UTC)
    store.setups.add(UserSetup(user_id="alice@contoso.com", mailbox="alice@contoso.com",
                               contact_filter={"city": "Seattle|Redmond"}))
    store.setups.add(UserSetup(user_id="bob@contoso.com", mailbox="bob@contoso.com"))
    store.setups.add(UserSetup(user_id="carol@contoso.com", mailbox="carol@contoso.com",
                               folder_name="Customers", enabled=False))
    store.links.upsert_many([Link("alice@contoso.com", f"bc-{n}", f"g-{n}") for n in (1, 2)])
    store.state.mark_synced("alice@contoso.com", now - timedelta(minutes=5))
    for user in ("alice@contoso.com", "bob@contoso.com"):
        store.subscriptions.upsert(Subscription(
            subscription_id=f"sub-{user}", service=SubscriptionService.GRAPH,
            resource=f"users/{user}/contacts", client_state="secret",
            expiration=now + timedelta(days=2), notification_url="https://example.test/hook",
            user_id=user))
    store.audit.append(AuditRecord(
        user_id="alice@contoso.com", kind=AuditKind.CONFLICT, bc_id="bc-1", graph_id="g-1",
        details={"reason": "conflict", "bc": {"jobTitle": "CFO", "city": "Seattle"},
                 "outlook": {"jobTitle": "Finance lead", "city": "Tacoma"}}))
    store.audit.append(AuditRecord(
        user_id="alice@contoso.com", kind=AuditKind.RECONCILE_REPORT,
        details={"run_id": "cli-1", "user_id": "alice@contoso.com", "status": "ok",
                 "created_outlook": 3, "linked": 2, "conflicts": 1,
                 "skipped": {"no_email": 4, "not_a_person": 1}}))
    store.audit.append(AuditRecord(
        user_id="bob@contoso.com", kind=AuditKind.RECONCILE_REPORT,
        details={"run_id": "cli-1", "user_id": "bob@contoso.com", "status": "failed",
                 "failed": 3, "reason": "3 contact(s) failed; first: Graph said 500"}))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'console.db'}") as opened:
        seed(opened)
        yield opened


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    settings = Settings(bc_company="CRONUS", database_url=str(store.engine.url))
    with TestClient(create_console_app(settings, store)) as test_client:
        yield test_client


@pytest.fixture
def emulators() -> Iterator[RunningEmulators]:
    """The Graph and BC emulators, seeded as `emulate --seed 200`."""
    running = seeded()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def emulated_settings(store: Store, emulators: RunningEmulators) -> Settings:
    """Settings pointing at the emulators."""
    return Settings(database_url=str(store.engine.url), graph_base_url=emulators.graph_base_url,
                    bc_base_url=emulators.bc_base_url, bc_company=emulators.bc.company_id)


@pytest.fixture
def emulated_client(emulated_settings: Settings, store: Store) -> Iterator[TestClient]:
    """The console over the emulators."""
    with TestClient(create_console_app(emulated_settings, store)) as test_client:
        yield test_client


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        try:
            yield chromium
        finally:
            chromium.close()


def type_a_bad_filter(page: Any, console_url: str, shot: str) -> None:
    """On Add user, type a filter that does not parse: the CLI's caret error appears as it
    is typed; the page's screenshot goes to SHOTS / `shot`."""
    page.goto(console_url + "/users/new")
    page.select_option("select[name=filter_field]", "city")
    page.fill("input[name=filter_expression]", "Seattle|(Redm")
    result = page.locator("[data-filter-result]")
    result.filter(has_text="^").wait_for(timeout=10_000)
    assert "Invalid filter for 'city' at character" in result.inner_text()
    page.screenshot(path=str(SHOTS / shot), full_page=True)
