"""A user's page names the contacts its last Full sync skipped, with the reason, after a real
Full sync against the emulators (the report the run kept in the store)."""

from __future__ import annotations

import asyncio
import html
import re

from starlette.testclient import TestClient

from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.sync.reconcile import reconcile_user
from contactsync.sync.services import open_services
from tests.admin.test_setup_safety import USER1

MASKED = r"[^<>]+ <\w\*\*\*@[\w.]+>  \[bc=[\w-]+\]"  # "Jane Doe <j***@contoso.com>  [bc=...]"


def _skipped_rows(page: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for words, who in re.findall(r'<td class="reason">([^<]+)</td><td class="(?:who|more)">'
                                 r"([^<]+)</td>", page):
        rows.setdefault(html.unescape(words), []).append(html.unescape(who))
    return rows


def test_the_user_page_lists_each_skipped_contact_with_its_reason(
        emulated_client: TestClient, emulated_settings: Settings, store: Store):
    # Matched case-insensitively ('@'): BC cannot filter it exactly, so every contact is read
    # and those of other cities are skipped here as outside the filter.
    store.setups.add(UserSetup(user_id=USER1, mailbox=USER1,
                               contact_filter={"city": "@seattle"}))

    async def full_sync() -> str:
        async with open_services(emulated_settings, store) as services:
            line = await reconcile_user(store.setups.require(USER1), graph=services.graph,
                                        bc=services.bc, store=store, run_id="cli-skips")
        return line.status

    assert asyncio.run(full_sync()) == "ok"
    page = emulated_client.get(f"/users/{USER1}").text
    rows = _skipped_rows(page)
    assert "By the last kept run (cli-skips" in page
    for words in ("not a Person", "privacy blocked", "outside the filter"):
        named, *rest = rows.get(words) or [""]
        assert re.fullmatch(MASKED, named), f"{words!r}: {named!r} ({sorted(rows)})"
        for who in rest:  # a report names the first 100 of a reason, then counts the rest
            assert re.fullmatch(MASKED, who) or re.fullmatch(r"and \d+ more .*", who), who
    # A contact without an email is named by its name alone.
    assert rows.get("no email") and all(re.fullmatch(r"[^<>@]+  \[bc=[\w-]+\]", who)
                                        for who in rows["no email"])
    # The names go with the counts the run report kept.
    report = store.audit.list_records(user_id=USER1, kind="reconcile_report")[0].details
    assert len(rows["privacy blocked"]) == report["skipped"]["privacy_blocked"]


def test_a_user_without_a_kept_report_says_how_to_get_one(client: TestClient):
    page = client.get("/users/carol@contoso.com").text
    assert "No Full sync report kept yet: run Full sync to see which contacts it leaves out." \
        in page
