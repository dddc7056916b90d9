"""The console's pages over a real store: what an admin sees."""

from __future__ import annotations

import re

from starlette.testclient import TestClient


def _row(html: str, user: str) -> str:
    match = re.search(rf'<tr class="[^"]*" data-user="{re.escape(user)}">.*?</tr>', html, re.S)
    assert match, f"no row for {user}"
    return match.group(0)


def test_users_page_lists_every_setup_with_its_counts(client: TestClient):
    page = client.get("/users")
    assert page.status_code == 200
    alice = _row(page.text, "alice@contoso.com")
    assert 'class="num links">2<' in alice
    assert "city=Seattle|Redmond" in alice and "CRONUS" in alice
    assert "active, until" in alice
    assert "3 of 3 user(s)" in page.text
    carol = _row(page.text, "carol@contoso.com")
    assert "Customers" in carol and '<td class="enabled">no</td>' in carol


def test_a_failed_user_stands_out(client: TestClient):
    page = client.get("/users").text
    bob = _row(page, "bob@contoso.com")
    assert bob.startswith('<tr class="attention"')
    assert "last Full sync failed: 3 contact(s) failed; first: Graph said 500" in bob
    assert 'class="num failures">3<' in bob
    assert _row(page, "alice@contoso.com").startswith('<tr class=""')


def test_search_and_sort(client: TestClient):
    found = client.get("/users", params={"q": "customers"}).text
    assert "1 of 3 user(s)" in found and "carol@contoso.com" in found
    assert "alice@contoso.com" not in found
    by_links = client.get("/users", params={"sort": "links", "desc": "1"}).text
    order = re.findall(r'data-user="([^"]+)"', by_links)
    assert order[0] == "alice@contoso.com"
    by_failures = client.get("/users", params={"sort": "failures", "desc": "1"}).text
    assert re.findall(r'data-user="([^"]+)"', by_failures)[0] == "bob@contoso.com"


def test_user_detail_shows_runs_trail_and_both_sides_of_a_conflict(client: TestClient):
    page = client.get("/users/alice@contoso.com")
    assert page.status_code == 200
    text = page.text
    assert "cli-1" in text and "no_email: 4, not_a_person: 1" in text
    conflict = re.search(r'<section class="conflict">.*?</section>', text, re.S)
    assert conflict
    sides = conflict.group(0)
    assert re.search(r"<td>jobTitle</td><td class=\"bc\">CFO</td>"
                     r"<td class=\"outlook\">Finance lead</td>", sides)
    assert re.search(r"<td>city</td><td class=\"bc\">Seattle</td>"
                     r"<td class=\"outlook\">Tacoma</td>", sides)
    assert "Audit trail" in text and "reconcile_report" in text


def test_unknown_user_is_a_sentence_not_a_traceback(client: TestClient):
    page = client.get("/users/nobody@contoso.com")
    assert page.status_code == 404
    assert "There is no such user: pick one from the Users page." in page.text


def test_pages_escape_what_users_typed(client: TestClient, store):
    from contactsync.schemas.setup import UserSetup

    store.setups.add(UserSetup(user_id="x", mailbox="<script>alert(1)</script>"))
    page = client.get("/users").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_an_enabled_user_without_a_live_subscription_stands_out(client: TestClient, store):
    from datetime import UTC, datetime, timedelta

    from contactsync.store import Subscription, SubscriptionService

    store.setups.enable("carol@contoso.com")
    carol = _row(client.get("/users").text, "carol@contoso.com")
    assert carol.startswith('<tr class="attention"') and "no Graph subscription" in carol
    store.subscriptions.upsert(Subscription(
        subscription_id="sub-carol", service=SubscriptionService.GRAPH,
        resource="users/carol/contacts", client_state="secret",
        expiration=datetime.now(UTC) - timedelta(minutes=1),
        notification_url="https://example.test/hook", user_id="carol@contoso.com"))
    carol = _row(client.get("/users").text, "carol@contoso.com")
    assert "Graph subscription expired: is the subscriptions role up?" in carol
